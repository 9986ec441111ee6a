//! `make demo`: a local, real Kubernetes control plane with log-socket running against it.
//!
//! Starts etcd + kube-apiserver (from `make test-env`), installs the FlowTap and
//! logging-operator CRDs, applies `examples/flow.yaml` and `examples/flowtap-persistent.yaml`,
//! runs `log-socket run`, and prints the commands to look at it. Ctrl-C stops everything.

#[path = "../tests/support/control_plane.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod control_plane;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = repo.join("target/demo");
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;

    eprintln!(
        "demo: starting etcd and kube-apiserver {} ...",
        control_plane::K8S_VERSION
    );
    // Started from the main thread, which lives until the end: the processes die with it.
    let cp = control_plane::start(&base)?;
    cp.wait_ready(Duration::from_secs(90)).await?;
    let lo = repo.join("tests/fixtures/logging-operator");
    let mut crds = vec![repo.join("crds/flowtap.yaml")];
    crds.extend(
        ["flows", "clusterflows", "outputs", "clusteroutputs"]
            .iter()
            .map(|k| lo.join(format!("logging.banzaicloud.io_{k}.yaml"))),
    );
    cp.install_crds(&crds).await?;
    let kubectl = control_plane::kubectl_path(cp.assets.as_deref());
    for example in ["examples/flow.yaml", "examples/flowtap-persistent.yaml"] {
        let status = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["apply", "-f"])
            .arg(repo.join(example))
            .status()
            .map_err(|e| format!("run {}: {e}", kubectl.display()))?;
        if !status.success() {
            return Err(format!("kubectl apply -f {example} failed"));
        }
    }
    let kubeconfig = base.join("kubeconfig");
    std::fs::copy(&cp.kubeconfig, &kubeconfig).map_err(|e| e.to_string())?;

    // Ingest credentials for this run only, as a Secret would provide them in a cluster.
    let credentials = base.join("ingest-credentials");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    std::fs::write(&credentials, format!("fluentd:demo-{}-{nanos}\n", std::process::id()))
        .map_err(|e| e.to_string())?;

    let service_bin = sibling_binary("log-socket")?;
    let mut service = tokio::process::Command::new(&service_bin)
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--ingest-credentials")
        .arg(&credentials)
        .args([
            "--ingest-addr",
            "127.0.0.1:10000",
            "--api-addr",
            "127.0.0.1:10001",
            "--health-addr",
            "127.0.0.1:10002",
        ])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {}: {e}", service_bin.display()))?;

    let k = kubeconfig.display();
    eprintln!(
        "\ndemo: log-socket is running against a local control plane. In another terminal:\n\
         \n  kubectl --kubeconfig {k} get flowtaps -A\
         \n  {} --kubeconfig {k} taps -A\
         \n  curl -s http://127.0.0.1:10002/readyz\n\
         \nPress Ctrl-C to stop; everything started here stops with it.\n",
        sibling_binary("k8stail")?.display()
    );

    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("demo: stopping"),
        status = service.wait() => eprintln!("demo: log-socket exited ({status:?}); stopping"),
    }
    // SIGTERM first, as Kubernetes would, so the service shuts down gracefully.
    if let Some(pid) = service.id() {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), service.wait())
        .await
        .is_err()
    {
        let _ = service.start_kill();
        let _ = service.wait().await;
    }
    control_plane::teardown();
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&credentials);
    Ok(())
}

/// The binaries of this package sit next to the example's own target directory.
fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/local-cluster -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .ok_or("cannot locate the target directory")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not built; run `cargo build --bins` first (make demo does)",
            bin.display()
        ))
    }
}
