//! TLS for the ingest and API ports: certificates from files (cert-manager friendly), reloaded
//! when the files change, optional client-certificate verification (mTLS) for ingest, and a
//! generator for a small CA with server and client certificates (`log-socket certs`).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

/// Files a TLS endpoint is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to (mTLS); none: no client certs.
    pub client_ca: Option<PathBuf>,
}

/// Whether the peer of a TLS connection presented a certificate that verified against the
/// client CA. Inserted into every request's extensions by [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCertificate(pub bool);

/// A server configuration that follows its files.
#[derive(Debug)]
pub struct ReloadingConfig {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

fn stamp(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    let paths = [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()];
    paths
        .iter()
        .map(|p| {
            p.and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            // Connections without a certificate are let through TLS so ingest can answer them
            // with a clear 401 (and count them); certificates that do not verify fail the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certificate {} and key {} do not fit: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl ReloadingConfig {
    /// Load the files; errors name the file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<Arc<ReloadingConfig>, String> {
        let config = build(&files)?;
        Ok(Arc::new(ReloadingConfig {
            stamp: Mutex::new(stamp(&files)),
            current: RwLock::new(Arc::new(config)),
            files,
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap().clone()
    }

    /// Reload when a file changed; a broken new file keeps the old configuration in use.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.files);
        {
            let mut last = self.stamp.lock().unwrap();
            if *last == now {
                return Ok(false);
            }
            *last = now;
        }
        let config = build(&self.files)?;
        *self.current.write().unwrap() = Arc::new(config);
        Ok(true)
    }

    /// Check the files every `interval` until `stop` completes.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(interval);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.reload_if_changed() {
                    Ok(true) => tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::error!("TLS certificate not reloaded, the previous one stays in use: {e}"),
                },
                _ = &mut stop => break,
            }
        }
    }
}

/// Serve a warp filter on `listener`, over TLS when `tls` is given, until `shutdown` completes;
/// connections in flight get a graceful HTTP shutdown, WebSocket connections (already
/// upgraded) are left to their tasks. Request headers must arrive within `header_timeout`
/// (warp's own server sets no such limit, so a client trickling headers held its connection).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ReloadingConfig>>,
    filter: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Records are small frames written as they come: no Nagle delay behind an unacked one.
        let _ = tcp.set_nodelay(true);
        let service = warp::service(filter.clone());
        let stop = stop_rx.clone();
        let done = done_tx.clone();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let _done = done;
                    serve_connection(tcp, None, service, header_timeout, stop).await
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
                    serve_connection(tls, Some(PeerCertificate(verified)), service, header_timeout, stop).await
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await;
}

/// HTTP/1.1 on one connection (with upgrades, for WebSockets) until it ends or `stop` flips.
async fn serve_connection<IO, S>(
    io: IO,
    peer: Option<PeerCertificate>,
    service: S,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
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
        _ = crate::until_true(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// What `log-socket certs` writes.
pub const GENERATED: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
];

/// Create a CA and, signed by it, a server certificate for `dns_names` (plus `localhost` and
/// 127.0.0.1) and a client certificate (for fluentd), valid for `days`, as PEM files in `dir`.
/// Existing files are not overwritten.
pub fn generate(dir: &Path, dns_names: &[String], days: u32) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let paths: Vec<PathBuf> = GENERATED.iter().map(|f| dir.join(f)).collect();
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(format!("{} exists; choose an empty directory", existing.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| e.to_string();
    let now = time::OffsetDateTime::now_utc();
    let validity = |p: &mut CertificateParams| {
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(i64::from(days));
    };

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name.push(DnType::CommonName, "log-socket CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let mut names: Vec<String> = dns_names.to_vec();
    for extra in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let server_key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(names.clone()).map_err(err)?;
    server.distinguished_name.push(DnType::CommonName, names[0].clone());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server);
    let server_cert = server.signed_by(&server_key, &issuer).map_err(err)?;

    let client_key = KeyPair::generate().map_err(err)?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    client.distinguished_name.push(DnType::CommonName, "fluentd");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client);
    let client_cert = client.signed_by(&client_key, &issuer).map_err(err)?;

    let contents = [
        ca_cert.pem(),
        ca_key.serialize_pem(),
        server_cert.pem(),
        server_key.serialize_pem(),
        client_cert.pem(),
        client_key.serialize_pem(),
    ];
    for (path, pem) in paths.iter().zip(contents) {
        write_private(path, &pem)?;
    }
    Ok(paths)
}

fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Keys must not be readable by others; certificates do not mind.
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_as_server_and_mtls_configs() {
        let dir = std::env::temp_dir().join(format!("log-socket-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        generate(&dir, &["log-socket.logging.svc".into()], 30).unwrap();
        let files = TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: Some(dir.join("ca.crt")),
        };
        let config = ReloadingConfig::load(files).unwrap();
        assert!(!config.reload_if_changed().unwrap(), "nothing changed");
        let again = generate(&dir, &["x".into()], 1).unwrap_err();
        assert!(again.contains("exists"), "{again}");
        let bad = TlsFiles {
            cert: dir.join("ca.key"),
            key: dir.join("server.key"),
            client_ca: None,
        };
        assert!(ReloadingConfig::load(bad).unwrap_err().contains("ca.key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
