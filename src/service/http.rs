//! The one HTTP accept loop of the service, used by every port (ingest, API, health): HTTP/1.1
//! with upgrades (WebSockets), TLS when configured, and a bound on how long request headers may
//! take (warp's own server sets none, so a client trickling headers could hold a connection).

use super::tls::ReloadingConfig;
use crate::auth::ingest::PeerCertificate;
use crate::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use warp::filters::BoxedFilter;

/// One port of the service: its bound socket, its routes, and TLS when configured.
pub struct Port {
    pub listener: TcpListener,
    pub tls: Option<Arc<ReloadingConfig>>,
    pub routes: BoxedFilter<(warp::reply::Response,)>,
}

/// Limits and intervals every port shares.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Request headers must arrive within this time, else the connection is closed.
    pub header_timeout: Duration,
    /// How often TLS files are checked for changes.
    pub tls_reload_interval: Duration,
}

/// Serve `port` until `shutdown` is cancelled; connections in flight then get a graceful HTTP
/// shutdown (bounded to 30 s), WebSocket connections (already upgraded) are left to their
/// tasks. A TLS port reloads its certificate when the files change.
pub async fn serve(port: Port, timing: Timing, shutdown: Shutdown) {
    let Port { listener, tls, routes } = port;
    let watcher = tls
        .clone()
        .map(|config| tokio::spawn(config.watch(timing.tls_reload_interval, shutdown.clone().cancelled_owned())));
    let connections = Shutdown::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Records are small frames written as they come: no Nagle delay behind an unacked one.
        let _ = tcp.set_nodelay(true);
        let service = warp::service(routes.clone());
        let stop = connections.clone();
        let done = done_tx.clone();
        let header_timeout = timing.header_timeout;
        match &tls {
            None => {
                tokio::spawn(async move {
                    let _done = done;
                    serve_connection(tcp, remote, None, service, header_timeout, stop).await
                });
            }
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
                tokio::spawn(async move {
                    let _done = done;
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    let verified = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    serve_connection(
                        tls,
                        remote,
                        Some(PeerCertificate(verified)),
                        service,
                        header_timeout,
                        stop,
                    )
                    .await
                });
            }
        }
    }
    connections.cancel();
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await;
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
}

/// HTTP/1.1 on one connection (with upgrades, for WebSockets) until it ends or `stop` is cancelled.
async fn serve_connection<IO, S>(
    io: IO,
    remote: std::net::SocketAddr,
    peer: Option<PeerCertificate>,
    service: S,
    header_timeout: Duration,
    stop: Shutdown,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<hyper::Request<hyper::body::Incoming>, Response = warp::reply::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        req.extensions_mut().insert(crate::auth::limit::PeerAddr(remote));
        let mut service = service.clone();
        async move { service.call(req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
