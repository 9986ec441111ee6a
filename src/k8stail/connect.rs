//! Opening a listener WebSocket: through the API server's service proxy with the kubeconfig's
//! credentials (the default), or straight to `--server`.

use super::{Scheme, TailArgs};
use crate::k8s::client;
use crate::protocol::SUBPROTOCOL;
use crate::{Error, Result};
use http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::StatusCode;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Any byte stream a WebSocket runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum Refusal {
    /// Worth another try later: the network, a restarting service, 5xx, 429.
    Transient(String),
    /// Trying again will not help: 4xx with the reason.
    Final(String),
}

/// How to reach the service.
pub enum Route {
    /// Through the API server: `{prefix}/flow/NS/NAME`.
    Proxy { client: kube::Client, prefix: String },
    /// Straight to the service.
    Direct {
        /// `ws://host:port` or `wss://host:port` plus any path prefix.
        base: String,
        host: String,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

impl Route {
    /// Where the route goes, for messages.
    pub fn describe(&self) -> String {
        match self {
            Route::Proxy { prefix, .. } => format!("the API server's service proxy ({prefix})"),
            Route::Direct { base, .. } => base.clone(),
        }
    }

    /// Open the listener WebSocket at `path_and_query` (`/flow/NS/NAME?...`).
    pub async fn connect(&self, path_and_query: &str, token: &str) -> Result<Ws, Refusal> {
        match self {
            Route::Proxy { client, prefix } => proxy_connect(client, &format!("{prefix}{path_and_query}"), token).await,
            Route::Direct { base, host, port, tls } => {
                let url = format!("{base}{path_and_query}");
                direct_connect(&url, host, *port, tls.clone(), token).await
            }
        }
    }
}

/// The route and the token to present, from the flags and the kubeconfig.
pub async fn route(kube: &super::KubeArgs, args: &TailArgs) -> Result<(Route, String)> {
    if let Some(server) = &args.server {
        let route = direct_route(server, args.ca_file.as_deref(), args.insecure_skip_tls_verify)?;
        let token = match &args.token {
            Some(t) => t.clone(),
            None => {
                let config = client::config(kube.kubeconfig.as_deref(), kube.context.as_deref())
                    .await
                    .map_err(|e| {
                        Error::Usage(format!("--server needs a token: pass --token or K8STAIL_TOKEN ({e})"))
                    })?;
                kubeconfig_token(&config).await?
            }
        };
        return Ok((route, token));
    }
    let mut config = client::config(kube.kubeconfig.as_deref(), kube.context.as_deref()).await?;
    // k8stail retries with its own backoff and says why; kube's silent retries would hide a
    // 503 ("no endpoints available") behind a hang.
    config.default_retry = false;
    let token = match &args.token {
        Some(t) => t.clone(),
        None => kubeconfig_token(&config).await?,
    };
    let scheme = match args.service_scheme {
        Scheme::Http => {
            eprintln!("k8stail: WARNING: --service-scheme http: the API server forwards your token to the log-socket pod over plain HTTP, readable on the pod network; serve the listener API over TLS (the chart's default) and drop this flag");
            "http"
        }
        Scheme::Https => "https",
    };
    let prefix = format!(
        "/api/v1/namespaces/{}/services/{scheme}:{}:{}/proxy",
        args.service_namespace, args.service, args.port
    );
    let client = kube::Client::try_from(config).map_err(|e| Error::kube_config("the client configuration", e))?;
    Ok((Route::Proxy { client, prefix }, token))
}

/// The bearer token kube's client would send for this kubeconfig (static, from a file, or
/// from an exec plugin), asked of kube's own auth layer so every method kubectl knows works.
async fn kubeconfig_token(config: &kube::Config) -> Result<String> {
    use kube::client::ConfigExt;
    use tower::{Layer, ServiceExt};
    let no_token = || {
        Error::Usage(
            "your kubeconfig has no bearer token to show log-socket (client certificates cannot be forwarded): pass --token, e.g. --token \"$(kubectl create token NAME -n NAMESPACE)\"".into(),
        )
    };
    let layer = config
        .auth_layer()
        .map_err(|e| Error::kube_config("the kubeconfig's user", e))?
        .ok_or_else(no_token)?;
    let capture = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
        Ok::<_, tower::BoxError>(http::Response::new(
            req.headers().get(http::header::AUTHORIZATION).cloned(),
        ))
    });
    let header = layer
        .layer(capture)
        .oneshot(http::Request::new(kube::client::Body::empty()))
        .await
        .map_err(|e| Error::kube_config("the kubeconfig's token source (file or exec plugin)", e))?;
    header
        .body()
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned)
        .ok_or_else(no_token)
}

/// Whether `host` is this machine (a name or address that cannot leave it).
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn direct_route(server: &str, ca_file: Option<&Path>, insecure: bool) -> Result<Route> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "--server {server:?}: {why}; write e.g. https://logs.example.com or http://127.0.0.1:10001"
        ))
    };
    let (tls, rest) = if let Some(rest) = server.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = server.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("the URL must start with http:// or https://"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = path.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad("the port is not a number"))?)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let tls = if tls {
        Some(Arc::new(client_tls(ca_file, insecure)?))
    } else {
        if insecure || ca_file.is_some() {
            return Err(Error::Usage(
                "--ca-file and --insecure-skip-tls-verify only apply to an https:// --server".into(),
            ));
        }
        None
    };
    if tls.is_none() && !is_loopback(host) {
        eprintln!("k8stail: WARNING: your token goes to {host} over plain HTTP: anyone on the path can read it (and the stream); use https:// (the service's --api-tls-self-signed or --api-tls-cert)");
    }
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    Ok(Route::Direct {
        base: format!("{scheme}://{authority}{path}"),
        host: host.to_owned(),
        port,
        tls,
    })
}

fn client_tls(ca_file: Option<&Path>, insecure: bool) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?;
    if insecure {
        eprintln!("k8stail: WARNING: --insecure-skip-tls-verify: the server's certificate is not checked; anyone on the path can read the stream and your token");
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth());
    }
    let bundle = match ca_file {
        Some(path) => path.to_owned(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(Into::into)
            .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&bundle)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Usage(format!("cannot read CA certificates from {}: {e}", bundle.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Usage(format!("no CA certificate found in {}", bundle.display())));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `--insecure-skip-tls-verify`: accept any certificate, still checking the handshake signature.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Classify an HTTP answer that is not the WebSocket upgrade.
fn refusal(status: StatusCode, body: &[u8], via_proxy: bool) -> Refusal {
    let text = String::from_utf8_lossy(body);
    // The API server answers its own refusals with a metav1.Status.
    let reason = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.lines().next().unwrap_or_default().trim().to_owned());
    let hint = match status.as_u16() {
        401 => " (the token was not accepted: is it expired? pass --token to use another)",
        403 if via_proxy && reason.contains("services/proxy") => {
            " (reaching log-socket through the API server needs `get` on services/proxy of its Service; ask for that, or use --server)"
        }
        404 if via_proxy && reason.contains("services") => {
            " (is log-socket installed there? set --service-namespace / --service, or use --server)"
        }
        _ => "",
    };
    let message = format!("{} {}{hint}", status.as_u16(), reason);
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Refusal::Transient(message)
    } else {
        Refusal::Final(message)
    }
}

async fn proxy_connect(client: &kube::Client, uri: &str, token: &str) -> Result<Ws, Refusal> {
    use http_body_util::BodyExt;
    let key = generate_key();
    let request = http::Request::get(uri)
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_VERSION, "13")
        .header(SEC_WEBSOCKET_KEY, &key)
        .header(SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        // The service proxy strips `Authorization`; this one reaches log-socket.
        .header("X-Authorization", token)
        // ... and the query string of an upgrade (kubernetes/kubernetes#77142): the options
        // travel in a header too.
        .header(
            crate::protocol::OPTIONS_HEADER,
            uri.split_once('?').map_or("", |(_, q)| q),
        )
        .body(kube::client::Body::empty())
        .map_err(|e| Refusal::Final(e.to_string()))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| Refusal::Transient(format!("cannot reach the API server: {e}")))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(refusal(status, &body, true));
    }
    let accept = response
        .headers()
        .get(http::header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(Refusal::Final(
            "the WebSocket upgrade was answered with a wrong key".into(),
        ));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| Refusal::Transient(format!("the WebSocket upgrade failed: {e}")))?;
    let io: Box<dyn Io> = Box::new(hyper_util::rt::TokioIo::new(upgraded));
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, None).await)
}

async fn direct_connect(
    url: &str,
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: &str,
) -> Result<Ws, Refusal> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Refusal::Final(format!("{url}: {e}")))?;
    let headers = request.headers_mut();
    headers.insert(SEC_WEBSOCKET_PROTOCOL, http::HeaderValue::from_static(SUBPROTOCOL));
    headers.insert(
        "x-authorization",
        http::HeaderValue::from_str(token)
            .map_err(|_| Refusal::Final("the token is not a valid header value".into()))?,
    );
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| Refusal::Transient(format!("cannot connect to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| Refusal::Final(format!("{host}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Refusal::Final(format!("TLS with {host}:{port} failed: {e}")))?;
            Box::new(stream)
        }
        None => Box::new(tcp),
    };
    match tokio_tungstenite::client_async(request, io).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(refusal(
            response.status(),
            response.body().as_deref().unwrap_or_default(),
            false,
        )),
        Err(e) => Err(Refusal::Transient(format!(
            "WebSocket handshake with {host}:{port} failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_become_websocket_routes() {
        let base = |s: &str| match direct_route(s, None, false).unwrap() {
            Route::Direct { base, host, port, .. } => (base, host, port),
            _ => unreachable!(),
        };
        assert_eq!(
            base("http://127.0.0.1:10001"),
            ("ws://127.0.0.1:10001".into(), "127.0.0.1".into(), 10001)
        );
        assert_eq!(
            base("http://logs.example.com/tail/"),
            ("ws://logs.example.com/tail".into(), "logs.example.com".into(), 80)
        );
        assert_eq!(base("http://[::1]:9000").1, "::1");
        assert!(direct_route("logs.example.com", None, false).is_err());
        assert!(direct_route("http://x:notaport", None, false).is_err());
        assert!(
            direct_route("http://x", None, true).is_err(),
            "insecure only applies to https"
        );
    }

    #[test]
    fn refusals_say_what_to_do_and_whether_to_retry() {
        let status = br#"{"kind":"Status","message":"services \"log-socket\" not found","code":404}"#;
        match refusal(StatusCode::NOT_FOUND, status, true) {
            Refusal::Final(m) => assert!(m.contains("not found") && m.contains("--service-namespace"), "{m}"),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            refusal(StatusCode::SERVICE_UNAVAILABLE, b"no endpoints available", true),
            Refusal::Transient(_)
        ));
        match refusal(StatusCode::UNAUTHORIZED, b"unauthorized: token rejected\n", false) {
            Refusal::Final(m) => assert!(m.starts_with("401 unauthorized: token rejected (the token"), "{m}"),
            r => panic!("{r:?}"),
        }
    }
}
