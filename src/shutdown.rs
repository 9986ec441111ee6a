//! One shutdown signal per process.
//!
//! A [`Shutdown`] (tokio-util's `CancellationToken`) is created once by the binary (or a test)
//! and cloned into every server and background task; `shutdown.cancelled()` is the future each
//! waits on. Child tokens order the stop: the service cancels the listeners' token only after
//! ingest has drained, so what was accepted is delivered before the close frame.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Completes on Ctrl-C or SIGTERM (what Kubernetes sends to stop a pod).
pub async fn signal() {
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

/// A [`Shutdown`] that is triggered by Ctrl-C or SIGTERM.
pub fn on_signal() -> Shutdown {
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        trigger.cancel();
    });
    shutdown
}
