//! The relay under bench on its own runtime, the fluentd-shaped records it is fed, and the
//! clients that post them (keep-alive HTTP/1.1) and listen (WebSocket, as k8stail does),
//! checking the sequence numbers so that nothing is lost silently.

use futures::StreamExt;
use log_socket::auth::{Authorizer, IngestAuth, StaticTokens};
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use log_socket::service::{Service, Sockets};
use log_socket::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const TOKEN: &str = "bench-token";
pub const AUTH: &str = "Basic Zmx1ZW50ZDpzM2NyZXQ="; // fluentd:s3cret
pub const BATCH: usize = 500;

pub struct Bench {
    pub ingest: SocketAddr,
    pub api: SocketAddr,
    pub stop: Shutdown,
    pub done: tokio::task::JoinHandle<()>,
}

/// The relay's own runtime: 2 worker threads named `relay`, so the CPU they use can be told
/// apart from the load generator's and the listeners' (the `client` threads), which share the
/// same 2 cores as they would on a 2-core node.
pub fn relay_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("relay")
            .enable_all()
            .build()
            .unwrap()
    })
}

pub async fn relay(config: RelayConfig, authorizer: Arc<dyn Authorizer>) -> Bench {
    relay_with(config, authorizer, IngestAuth::basic("fluentd", "s3cret"), None).await
}

/// A relay on the embedded bus, or on the nats bus at `nats_url`.
pub async fn relay_with(
    config: RelayConfig,
    authorizer: Arc<dyn Authorizer>,
    ingest_auth: IngestAuth,
    nats_url: Option<&str>,
) -> Bench {
    // One token stands for every listener of the bench: no per-user cap.
    let config = RelayConfig {
        max_listeners_per_user: usize::MAX,
        ..config
    };
    // Bound here, registered with the relay's runtime inside its task.
    let bind = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };
    let (ingest_std, api_std) = (bind(), bind());
    let (ingest, api) = (ingest_std.local_addr().unwrap(), api_std.local_addr().unwrap());
    let parts = Parts {
        authenticator: Arc::new(StaticTokens::parse(&format!("{TOKEN},bench\n")).unwrap()),
        authorizer,
        sessions: Arc::new(NoSessions),
        ingest_auth,
    };
    let stop = Shutdown::new();
    let stopped = stop.clone();
    let url = nats_url.map(str::to_owned);
    let done = relay_runtime().spawn(async move {
        let sockets = Sockets::plain(
            TcpListener::from_std(ingest_std).unwrap(),
            TcpListener::from_std(api_std).unwrap(),
        );
        let mut relay = log_socket::relay::Relay::new(config);
        if let Some(url) = url {
            // Connected on the relay's runtime, so the NATS client's CPU counts as the relay's.
            let options = log_socket::relay::bus::nats::NatsOptions {
                url,
                max_age: Duration::from_secs(3600),
                keys: Some(testkit::nats::bus_keys()),
                ..Default::default()
            };
            let bus = log_socket::relay::bus::nats::NatsBus::connect(&options, relay.config.replay, Default::default())
                .await
                .unwrap();
            relay.bus = log_socket::relay::bus::Bus::Nats(Arc::new(bus));
        }
        let _ = Service::with_relay(relay, parts).run(sockets, stopped).await;
    });
    Bench {
        ingest,
        api,
        stop,
        done,
    }
}

impl Bench {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

pub fn big_queues() -> RelayConfig {
    RelayConfig {
        listener_queue: 2_000_000,
        ..RelayConfig::default()
    }
}

/// A containerd-shaped record as fluentd emits it (about 0.6 KB), varied by `n`; `message`
/// starts with the send time in nanoseconds for latency measurements.
pub fn record(n: u64, sent_ns: u64, policy: &str) -> String {
    let pod = format!("web-7d9c8b6f5-{:05x}", n % 37);
    format!(
        r#"{{"time":"2025-03-14T09:26:53.589793238Z","stream":"stdout","logtag":"F","message":"{sent_ns} GET /api/cart/{n} 200 12ms","kubernetes":{{"pod_name":"{pod}","namespace_name":"shop","pod_id":"0b6f7c1e-3c2a-4a57-9d0e-{:012x}","labels":{{"app":"web","pod-template-hash":"7d9c8b6f5","rbac/policy":"{policy}"}},"host":"worker-{}","pod_ip":"10.244.1.{}","container_name":"web","docker_id":"4f1c2a9e0b7d{:052x}","container_hash":"docker.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31","container_image":"docker.io/library/nginx:1.27"}},"kubernetes_namespace":{{"name":"shop","labels":{{"kubernetes.io/metadata.name":"shop"}}}}}}"#,
        n % 37,
        n % 3,
        n % 250,
        n % 37
    )
}

pub fn batch(start: u64, len: usize, sent_ns: u64, deny_every_other: bool) -> Vec<u8> {
    let mut body = String::with_capacity(len * 700);
    body.push('[');
    for i in 0..len as u64 {
        if i > 0 {
            body.push(',');
        }
        let policy = if deny_every_other && (start + i) % 2 == 1 {
            "deny"
        } else {
            "allow"
        };
        body.push_str(&record(start + i, sent_ns, policy));
    }
    body.push(']');
    body.into_bytes()
}

/// The batch with a field of `chars` random hex digits added to each record (which LZ4 cannot
/// compress), so that records compress about as much as real logs instead of 20×.
pub fn add_noise(body: Vec<u8>, chars: usize, seed: u64) -> Vec<u8> {
    if chars == 0 {
        return body;
    }
    let mut x = seed | 1;
    let text = String::from_utf8(body).unwrap();
    let mut out = String::with_capacity(text.len() + text.len() / 600 * (chars + 12));
    for (i, part) in text.split(r#""stream":"stdout","#).enumerate() {
        if i > 0 {
            out.push_str(r#""stream":"stdout","trace":""#);
            for _ in 0..chars {
                // xorshift64: cheap, and enough to defeat LZ4.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(char::from_digit((x & 15) as u32, 16).unwrap());
            }
            out.push_str("\",");
        }
        out.push_str(part);
    }
    out.into_bytes()
}

/// One keep-alive HTTP/1.1 connection to ingest.
pub struct Poster {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Poster {
    pub async fn new(addr: SocketAddr) -> Poster {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Poster {
            stream,
            buf: vec![0; 4096],
        }
    }

    pub async fn post(&mut self, path: &str, body: &[u8]) -> u16 {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nAuthorization: {AUTH}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await.unwrap();
        self.stream.write_all(body).await.unwrap();
        // Read one response: headers, then Content-Length bytes.
        let mut got = 0;
        loop {
            let n = self.stream.read(&mut self.buf[got..]).await.unwrap();
            assert!(n > 0, "ingest closed the connection");
            got += n;
            let text = String::from_utf8_lossy(&self.buf[..got]);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if got >= end + 4 + len {
                    return text[9..12].parse().unwrap();
                }
            }
        }
    }
}

/// What a listener saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub records: u64,
    pub bytes: u64,
    /// Sequence numbers that were skipped without a `dropped` frame announcing them.
    pub silent_gaps: u64,
    pub dropped: u64,
    pub denied: u64,
    pub latencies_ns: Vec<u64>,
}

pub fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Post every (path, body) job over two keep-alive connections taking turns, each answered 200.
/// Each batch is numbered as a whole, so interleaving keeps every tap's numbering continuous.
pub async fn post_on_two_connections(ingest: SocketAddr, jobs: Vec<(String, Arc<Vec<u8>>)>) {
    let jobs = Arc::new(jobs);
    let senders: Vec<_> = (0..2)
        .map(|c| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut p = Poster::new(ingest).await;
                for (path, body) in jobs.iter().skip(c).step_by(2) {
                    assert_eq!(p.post(path, body).await, 200);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
}

/// Connect a listener and read until `want` records (or `stop`), checking the numbering.
pub async fn listen(
    api: SocketAddr,
    path: String,
    want: u64,
    origin: Instant,
    measure_latency: bool,
    slow: Option<Duration>,
    ready: Arc<AtomicU64>,
) -> Seen {
    let mut req = format!("ws://{api}{path}").into_client_request().unwrap();
    req.headers_mut().insert("x-authorization", TOKEN.parse().unwrap());
    req.headers_mut()
        .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
    let stream = TcpStream::connect(api).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // Idle listeners (no `want`) read little: a small buffer, so their RSS is the relay's.
    let config = (want == u64::MAX)
        .then(|| tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 << 10));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, config)
        .await
        .unwrap();
    ready.fetch_add(1, Ordering::SeqCst);
    let mut seen = Seen::default();
    let mut last_seq = 0u64;
    // Skipped sequence numbers; at the end every one must be explained by a `dropped` or a
    // `denied` notice (denials are aggregated once a second, so they may come later).
    let mut skipped = 0u64;
    while seen.records + seen.dropped < want {
        let Some(Ok(msg)) = ws.next().await else { break };
        let Message::Text(text) = msg else { continue };
        let t = text.as_str();
        if let Some(rest) = t.strip_prefix(r#"{"type":"record","seq":"#) {
            let end = rest.find(',').unwrap();
            let seq: u64 = rest[..end].parse().unwrap();
            // The nats bus numbers records `stream sequence × 2^20 + position`: a batch starts
            // at position 0 of a higher stream sequence.
            const BATCH: u32 = log_socket::relay::bus::nats::BATCH_BITS;
            let next_batch = seq >> BATCH > last_seq >> BATCH && seq & ((1 << BATCH) - 1) == 0;
            if last_seq != 0 && !next_batch {
                skipped += seq - last_seq - 1;
            }
            last_seq = seq;
            seen.records += 1;
            seen.bytes += t.len() as u64;
            if measure_latency {
                let m = t.find(r#""message":""#).unwrap() + 11;
                let sent: u64 = t[m..m + t[m..].find(' ').unwrap()].parse().unwrap();
                seen.latencies_ns.push(now_ns(origin).saturating_sub(sent));
            }
            if let Some(pause) = slow {
                tokio::time::sleep(pause).await;
            }
        } else if t.contains(r#""type":"dropped""#) {
            let v: serde_json::Value = serde_json::from_str(t).unwrap();
            seen.dropped += v["count"].as_u64().unwrap_or(0);
        } else if t.contains(r#""type":"denied""#) {
            let v: serde_json::Value = serde_json::from_str(t).unwrap();
            seen.denied += v["count"].as_u64().unwrap_or(0);
        }
    }
    // Denied records take sequence numbers too; wait for their (aggregated) notices.
    let deadline = Instant::now() + Duration::from_secs(3);
    while skipped > seen.dropped + seen.denied && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(r#""type":"denied""#) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                seen.denied += v["count"].as_u64().unwrap_or(0);
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            _ => break,
        }
    }
    seen.silent_gaps = skipped.saturating_sub(seen.dropped + seen.denied);
    seen
}

/// A listener that reads until it is aborted, without measuring.
pub fn idle_listener(
    api: SocketAddr,
    path: String,
    origin: Instant,
    ready: &Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(listen(api, path, u64::MAX, origin, false, None, ready.clone()))
}

pub async fn wait_ready(ready: &AtomicU64, n: u64) {
    while ready.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Attach happens right after the upgrade; give the relay a moment to register them all.
    tokio::time::sleep(Duration::from_millis(50)).await;
}
