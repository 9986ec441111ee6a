//! A real NATS server with JetStream (Debian's `nats-server`, 2.9) on loopback, with its store
//! in a temporary directory; stopped (and its store kept for a restart) on drop.
//!
//! Where it comes from: `$LOG_SOCKET_NATS_SERVER` (`make test` sets it to the one
//! `tests/test-env.sh` extracts into the test cache), else `nats-server` on PATH or in /usr/sbin
//! (`apt-get install nats-server`). Without one a test says it is skipped; under `CI=true`
//! it fails.

use crate::child::DieWithParent;
use crate::poll::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server command, or `None` (after saying why) when there is none and this is not CI.
pub fn command() -> Option<PathBuf> {
    if let Some(cmd) = std::env::var_os("LOG_SOCKET_NATS_SERVER").filter(|c| !c.is_empty()) {
        return Some(PathBuf::from(cmd));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        crate::skip::skipped(
            "no nats-server: run tests/test-env.sh (make test does) and set LOG_SOCKET_NATS_SERVER, or apt-get install nats-server",
        );
    }
    found
}

/// A running nats-server.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    /// A configuration file's text and the environment it reads (see [`Nats::start_with`]).
    config: Option<(String, Vec<(String, String)>)>,
}

impl Nats {
    /// Start one on a free loopback port, storing JetStream data under `dir`.
    pub fn start(dir: &Path) -> Option<Nats> {
        command()?;
        let port = free_port();
        let mut nats = Nats {
            child: None,
            port,
            dir: dir.to_owned(),
            config: None,
        };
        nats.restart();
        Some(nats)
    }

    /// [`Nats::start`] with the configuration `config` (its `store_dir` and ports replaced by
    /// the test's) and environment `env` (the variables it names, e.g. passwords).
    pub fn start_with(dir: &Path, config: &str, env: &[(&str, &str)]) -> Option<Nats> {
        command()?;
        let mut nats = Nats {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            config: Some((
                config.to_owned(),
                env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            )),
        };
        nats.restart();
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Start it (again: same port, same store) and wait until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .unwrap();
        let mut cmd = Command::new(command().unwrap());
        if let Some((config, env)) = &self.config {
            let store = self.dir.join("store");
            let text = config
                .lines()
                .filter(|l| !l.trim_start().starts_with("http_port") && !l.trim_start().starts_with("port"))
                .map(|l| match l.trim_start().starts_with("store_dir") {
                    true => format!("  store_dir: {:?}", store.display().to_string()),
                    false => l.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            let file = self.dir.join("nats.conf");
            std::fs::write(&file, text).unwrap();
            cmd.arg("-c").arg(file).envs(env.iter().map(|(k, v)| (k, v)));
        } else {
            cmd.args(["-js", "-sd"]).arg(self.dir.join("store"));
        }
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // The server dies with the test.
            .die_with_parent();
        self.child = Some(cmd.spawn().expect("start nats-server"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it (SIGTERM; its store stays for [`Nats::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The key the test relays seal bus messages with (every relay of a test shares it).
pub const TEST_BUS_KEY: &str = "test-bus-key-0123456789abcdef0123456789abcdef";

/// [`TEST_BUS_KEY`] as the relays load it.
pub fn bus_keys() -> std::sync::Arc<log_socket::relay::bus::seal::BusKeys> {
    static KEYS: std::sync::OnceLock<std::sync::Arc<log_socket::relay::bus::seal::BusKeys>> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| std::sync::Arc::new(log_socket::relay::bus::seal::BusKeys::from_keys(&[TEST_BUS_KEY]).unwrap()))
        .clone()
}
