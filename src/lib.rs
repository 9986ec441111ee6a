//! log-socket: watch, live in a terminal, exactly what a logging-operator Flow emits.
//!
//! The library holds everything; `src/bin/log-socket.rs` (the in-cluster service) and
//! `src/bin/k8stail.rs` (the CLI) are thin wrappers around it.

pub mod auth;
pub mod cli;
pub mod config;
pub mod crd;
#[doc(hidden)]
pub mod fuzz;
pub mod health;
pub mod kubeauth;
pub mod kubeclient;
pub mod logging;
pub mod metrics;
pub mod operator;
pub mod rbac;
pub mod relay;
pub mod service;
pub mod tls;

/// Every error log-socket reports. Messages are written for the person running the command:
/// they say what went wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot load Kubernetes credentials: {0} (set --kubeconfig or KUBECONFIG, or run in a pod with a service account)")]
    KubeConfig(String),

    /// The FlowTap CRD is missing from the cluster.
    #[error("the FlowTap CRD (flowtaps.logsocket.dev) is not installed in this cluster: install it with `log-socket crd | kubectl apply -f -` or `kubectl apply -f crds/flowtap.yaml`")]
    CrdMissing,

    /// The API server refused a request for lack of permission.
    #[error("permission denied: {what}; {hint}")]
    Forbidden { what: String, hint: String },

    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Settings that cannot work together or a file they name is unusable.
    #[error("{0}")]
    Config(String),

    /// A FlowTap could not be reconciled (retried).
    #[error("reconcile failed: {0}")]
    Reconcile(String),

    /// The command line cannot work as given (exit code 2).
    #[error("{0}")]
    Usage(String),

    /// A listener stream could not be opened or ended with an error.
    #[error("{0}")]
    Stream(String),

    /// Writing to stdout failed (other than the reader going away).
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

/// Result with log-socket's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Completes once the flag is true (or its sender is gone): the shutdown signal shared by the
/// servers of one process.
pub async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The watch::Ref guard is dropped right here; it must not live across an await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Set up `tracing` output on stderr.
pub fn init_tracing(level: &str, format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over the configured level so a developer can turn on one module's debug logs.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}
