//! A relay under test on loopback, and talking to it over real sockets as fluentd (HTTP POST)
//! and listeners (WebSocket) do; [`Service`], the `log-socket` binary as a child process.

use crate::poll::eventually_within;
use futures::StreamExt;
use log_socket::auth::ingest_keys::{basic_authorization, IngestKeys};
use log_socket::auth::IngestAuth;
use log_socket::relay::http::Parts;
use log_socket::relay::{Relay, RelayConfig};
// `Service` below is the service *binary* run as a child process; this is the library one.
use log_socket::service::{Service as InProcess, Sockets};
use log_socket::shutdown::Shutdown;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

pub const WAIT: Duration = Duration::from_secs(20);
// base64("fluentd:s3cret")
pub const INGEST_AUTH: &str = "Basic Zmx1ZW50ZDpzM2NyZXQ=";

pub struct TestRelay {
    /// Ingest takes per-flow credentials signed with [`test_keys`] (cluster mode), not the
    /// shared `INGEST_AUTH`.
    pub per_flow: bool,
    pub ingest: SocketAddr,
    pub api: SocketAddr,
    pub relay: Arc<Relay>,
    /// Cancel to stop the service; `done` completes once it has stopped.
    pub stop: Shutdown,
    pub done: tokio::task::JoinHandle<()>,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Plain sockets on loopback port 0.
pub async fn loopback_sockets() -> Sockets {
    let ingest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Sockets::plain(ingest, api)
}

/// Start a relay on loopback port 0 with these parts.
pub async fn start_relay(config: RelayConfig, parts: Parts) -> TestRelay {
    start_relay_on(loopback_sockets().await, config, parts)
}

/// Start a relay on these sockets (e.g. with TLS) with these parts.
pub fn start_relay_on(sockets: Sockets, config: RelayConfig, parts: Parts) -> TestRelay {
    start_service_on(sockets, InProcess::relay(config, parts))
}

/// Run `service` on these sockets, as the binary does.
pub fn start_service_on(sockets: Sockets, service: InProcess) -> TestRelay {
    let (ingest_addr, api_addr) = (sockets.ingest.local_addr().unwrap(), sockets.api.local_addr().unwrap());
    let stop = Shutdown::new();
    let relay = service.relay_handle();
    let running = stop.clone();
    let done = tokio::spawn(async move { service.run(sockets, running).await.expect("the service runs") });
    TestRelay {
        per_flow: false,
        ingest: ingest_addr,
        api: api_addr,
        relay,
        stop,
        done,
    }
}

/// The ingest credentials test relays expect (`INGEST_AUTH` sends them).
pub fn ingest_auth() -> IngestAuth {
    IngestAuth::basic("fluentd", "s3cret")
}

/// The server key of cluster-mode test services.
pub const TEST_KEY: &str = "test-key-0123456789abcdef0123456789abcdef";

pub fn test_keys() -> Arc<IngestKeys> {
    static KEYS: std::sync::OnceLock<Arc<IngestKeys>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Arc::new(IngestKeys::from_keys(&[TEST_KEY]).unwrap()))
        .clone()
}

/// The `Authorization` header of the per-flow credential for an ingest path (`/flow/NS/NAME`).
pub fn flow_auth(path: &str) -> String {
    let (user, password) = test_keys().credential(path.trim_start_matches('/'));
    basic_authorization(&user, &password)
}

/// A raw HTTP/1.1 request, as fluentd's Net::HTTP would send it; returns (status, body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    request_on(s, method, path, headers, body).await
}

/// A raw HTTP/1.1 request on an open connection (e.g. a TLS stream).
pub async fn request_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Whether `/readyz` on `health` answers 200 now; a refused or reset connection (a service
/// still starting) is "not yet", never a failure.
pub async fn ready(health: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(health).await else {
        return false;
    };
    let asked = s
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    asked.is_ok() && matches!(read, Ok(Ok(_))) && buf.starts_with(b"HTTP/1.1 200")
}

pub async fn post(r: &TestRelay, path: &str, body: &str) -> (u16, String) {
    let auth = match r.per_flow {
        true => flow_auth(path),
        false => INGEST_AUTH.to_owned(),
    };
    request(
        r.ingest,
        "POST",
        path,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

pub fn record(pod: &str, message: &str) -> Value {
    json!({
        "time": "2025-03-14T09:26:53.589793238Z", "stream": "stdout", "logtag": "F",
        "message": message,
        "kubernetes": {"pod_name": pod, "namespace_name": "shop", "container_name": "app",
                       "labels": {"app": "web"}},
    })
}

pub fn array(records: &[Value]) -> String {
    serde_json::to_string(records).unwrap()
}

pub async fn connect(r: &TestRelay, path: &str, token: &str) -> Ws {
    try_connect(r, path, token)
        .await
        .unwrap_or_else(|e| panic!("connect {path}: {e}"))
        .0
}

/// Connect and read the `status` frame.
pub async fn try_connect(r: &TestRelay, path: &str, token: &str) -> Result<(Ws, Value), String> {
    try_connect_at(r.api, path, token).await
}

/// [`try_connect`] to the API port at `api`.
pub async fn try_connect_at(api: SocketAddr, path: &str, token: &str) -> Result<(Ws, Value), String> {
    let r = Api { api };
    let mut req = format!("ws://{}{path}", r.api).into_client_request().unwrap();
    req.headers_mut().insert("x-authorization", token.parse().unwrap());
    req.headers_mut()
        .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
    let stream = TcpStream::connect(r.api).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => format!(
                "{} {}",
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            ),
            e => e.to_string(),
        })?;
    assert_eq!(resp.headers()["sec-websocket-protocol"], "logsocket.v1");
    let status = next(&mut ws).await;
    assert_eq!(status["type"], "status", "{status}");
    assert_eq!(status["state"], "listening", "{status}");
    Ok((ws, status))
}

struct Api {
    api: SocketAddr,
}

/// Next JSON frame, except tap `status` frames (which come whenever the FlowTap changes; see
/// [`next_any`]). Pings are answered by tungstenite and skipped.
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let f = next_any(ws).await;
        if !(f["type"] == "status" && f["state"] == "tap") {
            return f;
        }
    }
}

/// Next JSON frame, whatever it is.
pub async fn next_any(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => {
                return json!({"type": "closed", "frame": c.map(|c| (u16::from(c.code), c.reason.to_string()))})
            }
            _ => continue,
        }
    }
}

/// Collect record frames until one whose message is `marker` arrives.
pub async fn records_until(ws: &mut Ws, marker: &str) -> Vec<Value> {
    let mut out = vec![];
    loop {
        let f = next(ws).await;
        if f["type"] == "record" && f["record"]["message"] == marker {
            return out;
        }
        out.push(f);
    }
}

/// Post a marker record to a tap and return what arrived before it.
pub async fn drain(r: &TestRelay, ws: &mut Ws, path: &str) -> Vec<Value> {
    let marker = format!("marker-{}", rand_suffix());
    assert_eq!(post(r, path, &array(&[record("m", &marker)])).await.0, 200);
    records_until(ws, &marker).await
}

pub fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn messages(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "record")
        .map(|f| f["record"]["message"].as_str().unwrap().to_owned())
        .collect()
}

/// A `log-socket run` process under test. Its stderr is read while it runs: a full pipe would
/// block its logging, and with it its exit.
pub struct Service {
    pub child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
}

impl Service {
    /// Spawn `cmd` with stderr piped and collected.
    pub fn spawn(cmd: &mut tokio::process::Command) -> Service {
        let mut child = cmd
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the service");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s).await;
            s
        });
        Service { child, stderr }
    }

    /// Wait until its health port answers `/readyz` with 200 (15 s at most, else fail).
    pub async fn wait_ready(&self, health: SocketAddr) {
        eventually_within("the service to become ready", Duration::from_secs(15), || async {
            ready(health).await.then_some(())
        })
        .await
    }

    /// Send SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id().unwrap() as i32, libc::SIGTERM);
        }
    }

    /// Wait for the exit (at most 20 s, then kill it and fail with its log), and return that it
    /// succeeded and what it logged.
    pub async fn exited_cleanly(mut self) -> String {
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "the service did not stop within {WAIT:?}:\n{}",
                    self.stderr.await.unwrap()
                );
            }
        };
        let stderr = self.stderr.await.unwrap();
        assert!(status.success(), "{status:?}\n{stderr}");
        stderr
    }
}
