//! TLS for the ingest and API ports: certificates from files (cert-manager friendly), reloaded
//! when the files change, and optional client-certificate verification (mTLS) for ingest.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

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

/// A server configuration that follows its files.
#[derive(Debug)]
pub struct ReloadingConfig {
    /// None for a certificate made in memory (nothing to reload).
    files: Option<TlsFiles>,
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
            files: Some(files),
        }))
    }

    /// A certificate for `dns_names` made now, in memory, signed by itself (`--api-tls-self-signed`):
    /// the API server's service proxy encrypts its hop to the pod with it (it does not verify
    /// the pod's certificate, whoever signed it).
    pub fn self_signed(dns_names: &[String]) -> Result<Arc<ReloadingConfig>, String> {
        let mut names = dns_names.to_vec();
        names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "log-socket (self-signed at start)");
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(ReloadingConfig {
            stamp: Mutex::new(vec![]),
            current: RwLock::new(Arc::new(config)),
            files: None,
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap().clone()
    }

    /// Reload when a file changed; a broken new file keeps the old configuration in use.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let now = stamp(files);
        {
            let mut last = self.stamp.lock().unwrap();
            if *last == now {
                return Ok(false);
            }
            *last = now;
        }
        let config = build(files)?;
        *self.current.write().unwrap() = Arc::new(config);
        Ok(true)
    }

    /// Check the files every `interval` until `stop` completes.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        let Some(files) = self.files.clone() else {
            // Made in memory: nothing to follow.
            return stop.await;
        };
        let mut tick = tokio::time::interval(interval);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.reload_if_changed() {
                    Ok(true) => tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::error!("TLS certificate not reloaded, the previous one stays in use: {e}"),
                },
                _ = &mut stop => break,
            }
        }
    }
}
