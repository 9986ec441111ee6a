//! TLS on the relay's ports: mTLS ingest, wss listeners, and certificates reloaded from files.

use log_socket::auth::{AllowAll, IngestAuth, StaticTokens};
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use log_socket::service::tls::{ReloadingConfig, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use testkit::poll::eventually_within;
use testkit::relay::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn certs(name: &str) -> PathBuf {
    let d = dir(name);
    log_socket::service::certs::generate(&d, &["log-socket.test.svc".into()], 2).unwrap();
    d
}

/// A TLS client trusting `ca_dir`'s CA, presenting `client`'s certificate if given.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca_dir: &Path,
    client: Option<&Path>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(d) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(d.join("client.crt"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(d.join("client.key")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

async fn start_tls(ingest_certs: &Path, api_certs: &Path) -> TestRelay {
    let mut sockets = loopback_sockets().await;
    sockets.ingest_tls = Some(
        ReloadingConfig::load(TlsFiles {
            cert: ingest_certs.join("server.crt"),
            key: ingest_certs.join("server.key"),
            client_ca: Some(ingest_certs.join("ca.crt")),
        })
        .unwrap(),
    );
    sockets.api_tls = Some(
        ReloadingConfig::load(TlsFiles {
            cert: api_certs.join("server.crt"),
            key: api_certs.join("server.key"),
            client_ca: None,
        })
        .unwrap(),
    );
    sockets.tls_reload_interval = Duration::from_millis(100);
    let parts = Parts {
        authenticator: Arc::new(StaticTokens::parse("tok-alice,alice\n").unwrap()),
        authorizer: Arc::new(AllowAll),
        sessions: Arc::new(NoSessions),
        // mTLS alone identifies fluentd here.
        ingest_auth: IngestAuth::insecure().and_client_cert(),
    };
    start_relay_on(sockets, RelayConfig::default(), parts)
}

async fn wss(r: &TestRelay, ca: &Path, path: &str) -> tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>> {
    let stream = tls_connect(r.api, ca, None).await.expect("TLS to the API port");
    let mut req = format!("wss://localhost{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("x-authorization", "tok-alice".parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("WebSocket over TLS");
    ws
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn ingest_over_mtls_takes_records_only_from_clients_with_a_certificate_from_its_ca() {
    let good = certs("mtls");
    let other = certs("mtls-other");
    let r = start_tls(&good, &good).await;
    let mut ws = wss(&r, &good, "/flow/shop/web").await;
    assert_eq!(next_json(&mut ws).await["type"], "status");

    let body = json!([{"message": "from fluentd"}]).to_string();
    let anonymous = tls_connect(r.ingest, &good, None)
        .await
        .expect("TLS without a client certificate");
    let (code, reply) = request_on(anonymous, "POST", "/flow/shop/web", &[], body.as_bytes()).await;
    assert_eq!(code, 401, "{reply}");
    assert!(reply.contains("ClientCertificate"), "{reply}");

    let forged = tls_connect(r.ingest, &good, Some(&other)).await;
    let refused = match forged {
        Err(_) => true,
        // TLS 1.3 reports a rejected client certificate on the first read.
        Ok(mut s) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let head = format!(
                "POST /flow/shop/web HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.is_err() || buf.is_empty()
        }
    };
    assert!(refused, "a certificate from another CA is refused");

    let fluentd = tls_connect(r.ingest, &good, Some(&good)).await.expect("mTLS");
    let (code, reply) = request_on(fluentd, "POST", "/flow/shop/web", &[], body.as_bytes()).await;
    assert_eq!(code, 200, "{reply}");
    let record = next_json(&mut ws).await;
    assert_eq!(
        record["record"]["message"], "from fluentd",
        "only the mTLS record arrived first"
    );

    let plain = request(r.ingest, "POST", "/flow/shop/web", &[], body.as_bytes()).await;
    assert_ne!(plain.0, 200, "no plain-text fallback on a TLS port");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let live = certs("reload-live");
    let first = certs("reload-first");
    let renewed = certs("reload-renewed");
    for f in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(first.join(f), live.join(f)).unwrap();
    }
    let r = start_tls(&live, &live).await;
    tls_connect(r.api, &first, None)
        .await
        .expect("the first certificate is served");

    // What cert-manager does on renewal: new files in place.
    for f in ["server.crt", "server.key"] {
        std::fs::copy(renewed.join(f), live.join(f)).unwrap();
    }
    eventually_within("the renewed certificate is served", Duration::from_secs(15), || async {
        tls_connect(r.api, &renewed, None).await.ok().map(|_| ())
    })
    .await;
    assert!(tls_connect(r.api, &first, None).await.is_err(), "the old one is not");
    let mut ws = wss(&r, &renewed, "/flow/shop/web").await;
    assert_eq!(next_json(&mut ws).await["type"], "status");
}
