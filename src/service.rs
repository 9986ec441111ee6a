//! The `log-socket run` service.
//!
//! For now it verifies its access to the cluster (the FlowTap CRD is installed and readable)
//! and serves the health endpoints until shutdown; the relay and the FlowTap controller plug in
//! here.

use crate::crd::FlowTap;
use crate::health::{self, Readiness};
use crate::kubeclient::explain;
use crate::{Error, Result};
use kube::api::{Api, ListParams};
use std::future::Future;
use tokio::net::TcpListener;

/// Run the service on an already bound health listener until `shutdown` completes.
///
/// Taking a bound listener (rather than an address) lets tests bind port 0.
pub async fn run(
    health_listener: TcpListener,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let ready = Readiness::default();
    let tap_count = check_cluster_access(&client).await?;
    match health_listener.local_addr() {
        Ok(addr) => tracing::info!(health = %addr, flowtaps = tap_count, "log-socket ready"),
        Err(_) => tracing::info!(flowtaps = tap_count, "log-socket ready"),
    }
    ready.set(true);
    warp::serve(health::routes(ready))
        .incoming(health_listener)
        .graceful(shutdown)
        .run()
        .await;
    tracing::info!("log-socket stopped");
    Ok(())
}

/// Check the FlowTap CRD is installed and the service may read FlowTaps; returns how many exist.
pub async fn check_cluster_access(client: &kube::Client) -> Result<usize> {
    let taps: Api<FlowTap> = Api::all(client.clone());
    match taps.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items.len()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::CrdMissing),
        Err(e) => Err(explain(
            e,
            "log-socket must be allowed to list flowtaps.logsocket.dev in all namespaces (see config/ for its ClusterRole)",
        )),
    }
}

/// Bind the health listener, naming the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Completes on Ctrl-C or SIGTERM (what Kubernetes sends to stop a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
