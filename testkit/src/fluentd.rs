//! The real fluentd (the client the relay serves in production), run as a child process.
//!
//! Where it comes from, in order: `$LOG_SOCKET_FLUENTD` (a command, e.g.
//! `../shared/tools/fluentd`, which `.ci/run` sets), then `fluentd` on PATH (`gem install fluentd
//! -v 1.16.11`). Without one, a fluentd test says it is skipped and why; under CI (`CI=true`) a
//! missing fluentd fails instead.

use crate::child::DieWithParent;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The fluentd command: `$LOG_SOCKET_FLUENTD`, else `fluentd` on PATH, else `None`.
pub fn find() -> Option<Command> {
    if let Some(cmd) = std::env::var_os("LOG_SOCKET_FLUENTD").filter(|c| !c.is_empty()) {
        return Some(Command::new(cmd));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fluentd").is_file()))
        .unwrap_or(false);
    on_path.then(|| Command::new("fluentd"))
}

/// The fluentd command, or `None` (after saying why) when there is none and this is not CI.
pub fn command() -> Option<Command> {
    if let Some(cmd) = find() {
        return Some(cmd);
    }
    crate::skip::skipped("no fluentd: set LOG_SOCKET_FLUENTD to a fluentd 1.16 command or put fluentd 1.16 on PATH");
    None
}

/// A running fluentd; killed (and its process group) on drop.
pub struct Fluentd {
    child: Child,
    pub dir: PathBuf,
}

impl Fluentd {
    /// Start fluentd with `config` (written to `dir/fluent.conf`); its log goes to `dir/fluentd.log`.
    /// `None` when there is no fluentd here (see [`command`]).
    pub fn start(dir: &Path, config: &str) -> Option<Fluentd> {
        let mut cmd = command()?;
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("fluent.conf");
        std::fs::write(&conf, config).unwrap();
        // Appended: a pipeline restarts fluentd in the same directory and keeps every run's log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("fluentd.log"))
            .unwrap();
        use std::os::unix::process::CommandExt;
        cmd.arg("-c")
            .arg(&conf)
            .arg("--no-supervisor")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            // A test or demo that dies (a panic, SIGKILL) takes its fluentd along.
            .die_with_parent();
        let child = cmd
            // Ruby's GC lets RSS grow by up to 128 MiB of freed-but-unswept strings before a
            // full collection (its oldmalloc limit), tap or no tap; bounded to 16 MB so RSS
            // follows what fluentd holds, which the tests measure.
            .env("RUBY_GC_MALLOC_LIMIT_MAX", "16000000")
            .env("RUBY_GC_OLDMALLOC_LIMIT", "16000000")
            .env("RUBY_GC_OLDMALLOC_LIMIT_MAX", "16000000")
            .spawn()
            .expect("start fluentd");
        Some(Fluentd {
            child,
            dir: dir.to_owned(),
        })
    }

    /// `fluentd --dry-run` on `config` (written to `dir/dry-run.conf`): `Some(Ok(()))` when
    /// fluentd accepts it, `Some(Err(its output))` when not, `None` without a fluentd.
    pub fn dry_run(dir: &Path, config: &str) -> Option<Result<(), String>> {
        let mut cmd = command()?;
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("dry-run.conf");
        std::fs::write(&conf, config).unwrap();
        let out = cmd
            .arg("--dry-run")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .expect("run fluentd --dry-run");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(if out.status.success() { Ok(()) } else { Err(text) })
    }

    /// What fluentd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fluentd.log")).unwrap_or_default()
    }

    /// Whether fluentd is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// The process id (fluentd runs without its supervisor: one Ruby process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The chunk files fluentd gave up on (`<root_dir>/backup`), as paths.
    pub fn backups(&self) -> Vec<PathBuf> {
        backups(&self.dir)
    }

    /// Stop with SIGTERM (fluentd flushes what it holds), then SIGKILL after `grace`. Async:
    /// the relay fluentd flushes to may run on the same runtime and must keep answering.
    pub async fn stop(&mut self, grace: Duration) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let start = std::time::Instant::now();
        while start.elapsed() < grace {
            if !self.running() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Fluentd {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
        }
    }
}

/// A `<system>` section keeping fluentd's files (buffers, backups) under `dir/root`.
pub fn system(dir: &Path) -> String {
    format!(
        "<system>\n  root_dir {}\n  log_level info\n</system>\n",
        dir.join("root").display()
    )
}

/// The chunk files fluentd with [`system`]`(dir)` gave up on (`<root_dir>/backup`), as paths.
pub fn backups(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = vec![];
    walk(&dir.join("root/backup"), &mut out);
    out
}
