//! A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests and `make demo`.
//!
//! Binaries come from `KUBEBUILDER_ASSETS` or the cache filled by `tests/test-env.sh`.
//! With `LOG_SOCKET_TEST_KUBECONFIG` set, an existing cluster (kind, k3d, ...) is used instead.
//!
//! The processes are started by a thread that lives as long as the process and are marked with
//! `PR_SET_PDEATHSIG`, so they die with the test binary even when it is killed; on a normal exit
//! (tests passed or failed) an `atexit` hook stops the API server first, then etcd (the other
//! order makes the API server hang), and removes the data directory.

use crate::child::DieWithParent;
use crate::poll::free_port;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use serde::Deserialize as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Version of the API server the tests run (what `tests/test-env.sh` builds).
pub const K8S_VERSION: &str = "1.20.2";

/// A running (or borrowed) cluster: where its kubeconfig is and how to reach it.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// kubeconfig with cluster-admin rights, CA verification on.
    pub kubeconfig: PathBuf,
    /// Directory of the binaries (kubectl among them, when present).
    pub assets: Option<PathBuf>,
    /// Data directory (logs, certificates) of a control plane started here.
    pub run_dir: Option<PathBuf>,
}

static APISERVER_PID: AtomicI32 = AtomicI32::new(0);
static ETCD_PID: AtomicI32 = AtomicI32::new(0);
static RUN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Find the directory holding kube-apiserver and etcd.
pub fn assets_dir() -> Result<PathBuf, String> {
    let complete = |d: &Path| d.join("kube-apiserver").is_file() && d.join("etcd").is_file();
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) {
        if complete(&dir) {
            return Ok(dir);
        }
    }
    let cache = std::env::var_os("LOG_SOCKET_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("log-socket")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/log-socket")))
        .unwrap_or_else(|| PathBuf::from(".cache/log-socket"))
        .join(format!("k8s-{K8S_VERSION}"));
    if complete(&cache) {
        return Ok(cache);
    }
    Err(format!(
        "no kube-apiserver and etcd found in KUBEBUILDER_ASSETS or {}; run `make test-env` \
         (tests/test-env.sh) once to build them, or set LOG_SOCKET_TEST_KUBECONFIG to use an existing cluster",
        cache.display()
    ))
}

/// The CRDs a log-socket control plane needs: FlowTap (as committed) and logging-operator's five
/// (the test copies, without what API server 1.20 rejects; see their SOURCE.md).
pub fn crd_files(repo: &Path) -> Vec<PathBuf> {
    let mut files = vec![repo.join("crds/flowtap.yaml")];
    let lo = repo.join("tests/fixtures/logging-operator");
    for kind in ["flows", "clusterflows", "outputs", "clusteroutputs", "loggings"] {
        files.push(lo.join(format!("logging.banzaicloud.io_{kind}.yaml")));
    }
    files
}

/// The kubectl the tests use: the one in the assets directory, else the one on PATH.
pub fn kubectl_path(assets: Option<&Path>) -> PathBuf {
    if let Some(k) = assets.map(|a| a.join("kubectl")).filter(|k| k.exists()) {
        return k;
    }
    PathBuf::from("kubectl")
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // A process group of its own: a terminal's Ctrl-C reaches the demo and the service, which
    // still need the API server to unregister; the control plane goes last, at teardown.
    cmd.process_group(0);
    // Killed if this thread's process dies, whatever the way (see the module docs).
    cmd.die_with_parent();
    cmd.spawn().map_err(|e| format!("start {:?}: {e}", cmd.get_program()))
}

fn stop_pid(pid: i32, grace: Duration) {
    if pid <= 0 {
        return;
    }
    // SAFETY: plain syscalls on a child pid that this process started and has not reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            let mut status = 0;
            let r = libc::waitpid(pid, &mut status, libc::WNOHANG);
            if r == pid || r < 0 {
                return;
            }
            if Instant::now() > deadline {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Freeze (SIGSTOP) or resume (SIGCONT) the API server started by this process: to clients it
/// looks like an API server that stopped answering, as in an outage or a partition.
pub fn pause_apiserver(paused: bool) {
    let pid = APISERVER_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signalling a child this process started.
        unsafe {
            libc::kill(pid, if paused { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }
}

/// Stop the control plane started by this process: API server first, then etcd.
pub fn teardown() {
    stop_pid(APISERVER_PID.swap(0, Ordering::SeqCst), Duration::from_secs(5));
    stop_pid(ETCD_PID.swap(0, Ordering::SeqCst), Duration::from_secs(5));
    if let Some(dir) = RUN_DIR.lock().ok().and_then(|mut d| d.take()) {
        if std::env::var_os("LOG_SOCKET_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

extern "C" fn teardown_at_exit() {
    teardown();
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Start etcd and kube-apiserver in a new directory under `base`. Blocking; call it from a thread
/// that outlives the control plane (see the module docs).
pub fn start(base: &Path) -> Result<ControlPlane, String> {
    let assets = assets_dir()?;
    let run = base.join(format!("control-plane-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let certs = run.join("certs");
    std::fs::create_dir_all(&certs).map_err(|e| format!("create {}: {e}", certs.display()))?;
    *RUN_DIR.lock().unwrap() = Some(run.clone());
    // SAFETY: registering a plain extern "C" fn with no captured state.
    unsafe {
        libc::atexit(teardown_at_exit);
    }

    // Service-account signing key, for TokenRequest (real ServiceAccount tokens).
    let key = certs.join("sa.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("run openssl (install it: apt-get install openssl): {e}"))?;
    if !status.success() {
        return Err("openssl genrsa failed".into());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let token = format!("admin-{}-{nanos}", std::process::id());
    std::fs::write(
        certs.join("tokens.csv"),
        format!("{token},admin,admin,system:masters\n"),
    )
    .map_err(|e| e.to_string())?;

    let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let mut etcd = Command::new(assets.join("etcd"));
    etcd.arg("--data-dir")
        .arg(run.join("etcd"))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"))
        .arg("--unsafe-no-fsync");
    let etcd = spawn(etcd, &run.join("etcd.log"))?;
    ETCD_PID.store(etcd.id() as i32, Ordering::SeqCst);

    let mut api = Command::new(assets.join("kube-apiserver"));
    api.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={api_port}"))
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--cert-dir={}", certs.display()))
        .arg(format!("--service-account-key-file={}", key.display()))
        .arg(format!("--service-account-signing-key-file={}", key.display()))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg(format!("--token-auth-file={}", certs.join("tokens.csv").display()))
        .arg("--authorization-mode=RBAC")
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--insecure-port=0");
    let apiserver = spawn(api, &run.join("apiserver.log"))?;
    APISERVER_PID.store(apiserver.id() as i32, Ordering::SeqCst);
    // The pids are reaped by `teardown`; the Child handles are not needed any more.
    std::mem::forget((etcd, apiserver));

    // The API server writes its self-signed serving certificate (leaf + CA) at start-up; the
    // kubeconfig trusts exactly that, so TLS is verified as it would be against a real cluster.
    let crt = certs.join("apiserver.crt");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crt.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "kube-apiserver did not start:\n{}",
                log_tail(&run.join("apiserver.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let kubeconfig = run.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: test, cluster: {{server: \"https://127.0.0.1:{api_port}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: admin, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: admin, namespace: default}}}}]\n\
             current-context: test\n",
            crt.display()
        ),
    )
    .map_err(|e| e.to_string())?;

    Ok(ControlPlane {
        kubeconfig,
        assets: Some(assets),
        run_dir: Some(run),
    })
}

impl ControlPlane {
    /// Borrow the cluster named by `LOG_SOCKET_TEST_KUBECONFIG`, if set.
    pub fn from_env() -> Option<ControlPlane> {
        std::env::var_os("LOG_SOCKET_TEST_KUBECONFIG").map(|k| ControlPlane {
            kubeconfig: PathBuf::from(k),
            assets: assets_dir().ok(),
            run_dir: None,
        })
    }

    /// kube client configuration with the admin credentials.
    pub async fn config(&self) -> kube::Config {
        let file = Kubeconfig::read_from(&self.kubeconfig).expect("readable kubeconfig");
        kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .expect("valid kubeconfig")
    }

    /// A new admin client, on the caller's tokio runtime.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).expect("client from kubeconfig")
    }

    /// Wait until the API server serves requests and the `default` namespace exists.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let client = self.client().await;
            match Api::<Namespace>::all(client).get("default").await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let log = self
            .run_dir
            .as_ref()
            .map(|d| log_tail(&d.join("apiserver.log")))
            .unwrap_or_default();
        Err(format!("API server not ready after {timeout:?}: {last}\n{log}"))
    }

    /// Apply CRD manifests (server-side apply, without CEL rules) and wait until each is
    /// Established.
    pub async fn install_crds(&self, files: &[PathBuf]) -> Result<(), String> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let params = PatchParams::apply("log-socket-tests").force();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let mut value = serde_json::Value::deserialize(doc).map_err(|e| format!("{}: {e}", file.display()))?;
                if value.is_null() {
                    continue;
                }
                // CEL rules (1.25+) are unknown to the 1.20 test server, whose server-side apply
                // refuses them; the rules themselves are not what these tests exercise.
                without_cel(&mut value);
                let name = value["metadata"]["name"]
                    .as_str()
                    .ok_or_else(|| format!("{}: CRD without a name", file.display()))?
                    .to_owned();
                api.patch(&name, &params, &Patch::Apply(&value))
                    .await
                    .map_err(|e| format!("apply CRD {name} from {}: {e}", file.display()))?;
                let established = await_condition(api.clone(), &name, conditions::is_crd_established());
                tokio::time::timeout(Duration::from_secs(30), established)
                    .await
                    .map_err(|_| format!("CRD {name} not Established after 30s"))?
                    .map_err(|e| format!("waiting for CRD {name}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Remove every `x-kubernetes-validations` (CEL) from a CRD's schema.
pub fn without_cel(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(without_cel);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_cel),
        _ => {}
    }
}
