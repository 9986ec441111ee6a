//! Documentation commands run as a user pastes them: the `sh` block under a heading of a
//! Markdown file (read from the file, so a test fails when the documented commands stop
//! working), one `bash` per command with the block's `export`s before it, against the test
//! cluster (`KUBECONFIG`), with kubectl, helm, the built binaries and a `docker` stand-in on
//! PATH.

use crate::cluster;
use std::path::{Path, PathBuf};

/// The commands of the first `sh` block after `heading` in `file` (relative to the
/// repository): lines joined where they end in `\`, comments and blank lines left out.
pub fn commands(file: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(cluster::repo().join(file)).unwrap();
    let section = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("{file} has no heading {heading}"))..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("{file}: no sh block under {heading}"));
    let mut commands = vec![];
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// A shell as a user's terminal: PATH with the tools, the `export`s seen so far.
pub struct Terminal {
    pub dir: PathBuf,
    path: String,
    exports: Vec<String>,
}

impl Terminal {
    /// Tools in `dir/bin` first: kubectl, helm, k8stail and log-socket as built, and a
    /// `docker` that records its arguments in `dir/docker.log` and succeeds (no engine here).
    pub fn new(dir: &Path) -> Terminal {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let assets = cluster::env().assets.clone().expect("the test control plane's assets");
        let docker = bin.join("docker");
        std::fs::write(
            &docker,
            format!("#!/bin/sh\necho \"$*\" >> {}\n", dir.join("docker.log").display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kubectl = crate::control_plane::kubectl_path(Some(&assets));
        let built = cluster::bin("k8stail");
        let dirs = [
            bin,
            kubectl.parent().unwrap().to_owned(),
            assets,
            built.parent().unwrap().to_owned(),
        ];
        let path = std::env::var("PATH").unwrap_or_default();
        let path = format!(
            "{}:{path}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        );
        // A working copy of the repository's top level (links), so what the commands write
        // (`> values.yaml`) lands here, not in the repository.
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        for entry in std::fs::read_dir(cluster::repo()).unwrap().flatten() {
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            let _ = std::os::unix::fs::symlink(entry.path(), work.join(&name));
        }
        Terminal {
            dir: dir.to_owned(),
            path,
            exports: vec![],
        }
    }

    /// `command` as `bash -c` in a working copy of the repository (its files linked), after the
    /// exports so far; an `export` line is remembered for the next ones.
    pub fn command(&mut self, command: &str) -> tokio::process::Command {
        let mut script = String::from("set -euo pipefail\n");
        for e in &self.exports {
            script.push_str(e);
            script.push('\n');
        }
        script.push_str(command);
        if command.starts_with("export ") {
            self.exports.push(command.to_owned());
        }
        let helm = self.dir.join("helm");
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(self.dir.join("work"))
            .env("PATH", &self.path)
            .env("KUBECONFIG", &cluster::env().kubeconfig)
            .env("HELM_CACHE_HOME", helm.join("cache"))
            .env("HELM_CONFIG_HOME", helm.join("config"))
            .env("HELM_DATA_HOME", helm.join("data"))
            .env_remove("K8STAIL_TOKEN")
            .kill_on_drop(true);
        cmd
    }

    /// Run `command` to the end; its stdout, or a panic with what it printed.
    pub async fn run(&mut self, command: &str) -> String {
        let out = self.command(command).output().await.unwrap();
        assert!(
            out.status.success(),
            "`{command}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the `docker` stand-in was asked, one line per call.
    pub fn docker_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("docker.log")).unwrap_or_default()
    }
}
