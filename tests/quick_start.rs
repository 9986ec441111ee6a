//! The README's quick start, pasted in order into a fresh cluster (this test binary's own real
//! API server): its commands are read from the README, not copied here, so the test fails
//! when they stop working. What the README assumes is there first: logging-operator (its CRDs
//! and the stand-in, testkit/src/logging_operator.rs), the Flow `default/web` (examples/flow.yaml)
//! and its fluentd (the real one, testkit/src/pipeline.rs). `docker` is a stand-in that
//! records what it was asked to build; the Deployment helm creates is run by
//! testkit/src/deployment.rs, as controllers and a kubelet would.

use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::cluster;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The commands of the README's quick start: the first `sh` block after its heading, lines
/// joined where they end in `\`, comments and blank lines left out.
fn quick_start_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(cluster::repo().join("README.md")).unwrap();
    let section = &readme[readme.find("## Quick start").expect("the README has a quick start")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the quick start has an sh block");
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

/// A directory for PATH with kubectl, helm, k8stail, and a `docker` that records its
/// arguments in `docker.log` and succeeds (no engine here; the image is never pulled either).
fn tools(dir: &Path) -> String {
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
    let kubectl = testkit::control_plane::kubectl_path(Some(&assets));
    let k8stail = cluster::bin("k8stail");
    let dirs: Vec<PathBuf> = vec![
        bin,
        kubectl.parent().unwrap().to_owned(),
        assets.clone(),
        k8stail.parent().unwrap().to_owned(),
    ];
    let path = std::env::var("PATH").unwrap_or_default();
    format!(
        "{}:{path}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    )
}

/// `bash -c` with the README's environment lines so far (its `export`s) before `command`.
fn shell(command: &str, exports: &[String], path: &str) -> tokio::process::Command {
    let mut script = String::from("set -euo pipefail\n");
    for e in exports {
        script.push_str(e);
        script.push('\n');
    }
    script.push_str(command);
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(cluster::repo())
        .env("PATH", path)
        .env("KUBECONFIG", &cluster::env().kubeconfig)
        .env("HELM_CACHE_HOME", cluster::tempdir("quick-start-helm").join("cache"))
        .env("HELM_CONFIG_HOME", cluster::tempdir("quick-start-helm").join("config"))
        .env("HELM_DATA_HOME", cluster::tempdir("quick-start-helm").join("data"))
        .env_remove("K8STAIL_TOKEN")
        .kill_on_drop(true);
    cmd
}

/// What the Flow's pods write, as fluentd's `sample` source (logging-operator's fluentd gets
/// them from fluent-bit, enriched with their pod's metadata).
fn source() -> String {
    let record = |n: u32| {
        serde_json::json!({
            "message": format!("GET /cart/{n} 200"),
            "stream": "stdout",
            "kubernetes": {
                "namespace_name": "default", "pod_name": "web-7d9f8b6c5-x2x9z",
                "container_name": "nginx", "labels": {"app": "web"}, "host": "node-1"
            }
        })
    };
    format!(
        "<source>\n  @type sample\n  tag kubernetes.var.log.containers.web_default_nginx.log\n  rate 5\n  sample {}\n</source>\n",
        serde_json::Value::from((0..10).map(record).collect::<Vec<_>>())
    )
}

#[tokio::test]
async fn the_readme_quick_start_pasted_into_a_fresh_cluster_ends_with_records_on_screen() {
    if testkit::fluentd::find().is_none() {
        testkit::skip::skipped("no fluentd: the quick start's records come from the real fluentd");
        return;
    }
    let client = cluster::client().await;
    let dir = cluster::tempdir("quick-start");
    let path = tools(&dir);

    // What the README assumes: logging-operator with a Flow default/web, and its fluentd.
    let _logging_operator = testkit::logging_operator::start(&client, "default").await;
    let (ok, _, err) = cluster::kubectl(&["apply", "-f", "examples/flow.yaml"]);
    assert!(ok, "{err}");

    let commands = quick_start_commands();
    assert!(
        commands.iter().any(|c| c.starts_with("helm install")) && commands.iter().any(|c| c.starts_with("k8stail")),
        "the quick start installs with helm and tails with k8stail: {commands:#?}"
    );
    let mut exports = vec![];
    let mut pod = None;
    let mut pipeline = None;
    let mut tail = None;
    for command in &commands {
        if command.starts_with("export ") {
            exports.push(command.clone());
            continue;
        }
        if command.starts_with("k8stail ") {
            let mut child = shell(command, &exports, &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let stderr = child.stderr.take().unwrap();
            // A new tap: logging-operator's check and fluentd's reload first (the stand-ins'
            // delays here); the README says what to expect.
            let first = tokio::time::timeout(Duration::from_secs(120), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("GET /cart/") {
                        return Some(line);
                    }
                }
                None
            })
            .await;
            let mut err = String::new();
            if !matches!(first, Ok(Some(_))) {
                let _ = child.start_kill();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut err).await;
                panic!("`{command}` showed no record within 120 s: {first:?}\nstderr: {err}");
            }
            let line = first.unwrap().unwrap();
            assert!(
                line.starts_with("web-7d9f8b6c5-x2x9z nginx "),
                "pod, container, message: {line}"
            );
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            tail = Some((child, stderr));
            continue;
        }
        let out = shell(command, &exports, &path).output().await.unwrap();
        assert!(
            out.status.success(),
            "`{command}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if command.starts_with("kubectl get flowtaps") {
            let table = String::from_utf8_lossy(&out.stdout);
            assert!(
                // An ephemeral tap, `flow-web`, with alice's session.
                table.lines().any(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.len() > 4 && (cells[0], cells[2], cells[3], cells[4]) == ("default", "Flow", "web", "1")
                }),
                "{table}"
            );
        }
        if command.starts_with("helm install") {
            // The controllers and the kubelet: the release's pod runs, then the Flow's fluentd.
            let running = testkit::deployment::run(&client, "log-socket", "log-socket").await;
            let flow = testkit::pipeline::FlowId {
                kind: "Flow",
                namespace: "default".into(),
                name: "web".into(),
            };
            pipeline = testkit::pipeline::Pipeline::start(
                client.clone(),
                &dir.join("fluentd"),
                flow,
                source(),
                Duration::from_millis(500),
            )
            .await;
            assert!(pipeline.is_some(), "fluentd started");
            pod = Some(running);
        }
    }
    let (mut child, stderr) = tail.expect("the quick start ran k8stail");
    let pod = pod.expect("the quick start installed log-socket");

    // The image the README built is the one the Deployment runs.
    let built = std::fs::read_to_string(dir.join("docker.log")).unwrap_or_default();
    assert!(
        built
            .lines()
            .any(|l| l.starts_with("build ") && l.contains(&format!("-t {} ", pod.image))),
        "the Deployment runs the image the quick start built ({}): {built}",
        pod.image
    );
    assert!(built.lines().any(|l| l == format!("push {}", pod.image)), "{built}");

    let _ = child.start_kill();
    let _ = child.wait().await;
    let mut err = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut err).await;
    assert!(
        !err.contains("withheld"),
        "the quick start's user sees every record: {err}"
    );
    if let Some(p) = pipeline {
        p.stop().await;
    }
    pod.stop().await.unwrap();
}
