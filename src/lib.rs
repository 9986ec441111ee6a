//! log-socket: watch, live in a terminal, exactly what a logging-operator Flow emits.
//!
//! The tree reads as the architecture:
//!
//! ```text
//! fluentd ──POST──▶ relay::http::ingest ─▶ relay (taps, replay) ─▶ relay::http::listen ──WebSocket──▶ k8stail
//!                         ▲ auth::ingest            ▲ auth (who, what)         protocol (frames) ▲
//!            operator: FlowTap ─▶ Output + Flow ref (k8s::logging)      k8stail::connect (API proxy)
//! ```
//!
//! The source map, floor by floor, is docs/development.md ("Layout"); each module's own `//!`
//! says its job and what it must not do. `src/bin/` holds three thin binaries over this library.

pub mod auth;
pub mod backoff;
pub mod config_file;
pub mod duration;
pub mod k8s;
pub mod k8stail;
pub mod key_file;
pub mod operator;
pub mod protocol;
pub mod relay;
pub mod service;
pub mod shutdown;
pub mod telemetry;

/// Every error log-socket reports. Messages are written for the person running the command:
/// they say what went wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot load Kubernetes credentials from {from}: {source} (set --kubeconfig or KUBECONFIG, or run in a pod with a service account)")]
    KubeConfig {
        /// Where they were looked for.
        from: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

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

    /// A FlowTap could not be reconciled (retried by the controller).
    #[error("reconcile failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// A flow's output list changed under every attempt to edit it (retried by the controller).
    #[error("the flow {flow} kept changing while its outputs were edited; will retry")]
    FlowKeptChanging { flow: String },

    /// A generated output is still named by a flow, so it cannot go yet (retried).
    #[error("the output {output} is still named by a flow; it is removed once no flow names it (retrying)")]
    OutputStillNamed { output: String },

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

impl Error {
    /// Credentials from `from` could not be loaded or used.
    pub fn kube_config(from: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::KubeConfig {
            from: from.into(),
            source: source.into(),
        }
    }
}

/// Result with log-socket's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
