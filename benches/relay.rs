//! `make bench` (`cargo bench --bench relay`): the relay over real loopback sockets, measured
//! against the physical limits of the same machine in the same run. Prints a table; asserts
//! nothing about time. See BENCHMARKS.md for results and how to read them.
//!
//! Every workload runs the relay in this process, on its own runtime (2 worker threads named
//! `relay`, so their CPU time can be told apart), sharing the machine's cores with the load
//! generator and the listeners (the `client` runtime), posts fluentd-shaped batches over
//! HTTP/1.1 keep-alive connections, and reads WebSocket frames as k8stail does, checking the
//! sequence numbers so that nothing is lost silently.
//!
//! Parts: `memory`, `control-plane`, `filters`, `fluentd`, `throughput`, `latency` (all by
//! default); `one` (only the single-listener throughput) and `parse` (only the record parser)
//! are for profiling.

#[path = "../tests/support/control_plane.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod control_plane;
#[path = "../tests/support/fluentd.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod fluentd;
#[path = "../tests/support/logging_operator.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod logging_operator;
#[path = "../tests/support/nats.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod nats;
#[path = "../tests/support/render.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod render;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use futures::StreamExt;
use log_socket::auth::labels::LabelPolicy;
use log_socket::auth::{AllowAll, Authorizer, IngestAuth, StaticTokens};
use log_socket::relay::http::Parts;
use log_socket::relay::record;
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

const TOKEN: &str = "bench-token";
const AUTH: &str = "Basic Zmx1ZW50ZDpzM2NyZXQ="; // fluentd:s3cret
const BATCH: usize = 500;

struct Bench {
    ingest: SocketAddr,
    api: SocketAddr,
    stop: Shutdown,
    done: tokio::task::JoinHandle<()>,
}

/// The relay's own runtime: 2 worker threads named `relay`, so the CPU they use can be told
/// apart from the load generator's and the listeners' (the `client` threads), which share the
/// same 2 cores as they would on a 2-core node.
fn relay_runtime() -> &'static tokio::runtime::Runtime {
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

async fn relay(config: RelayConfig, authorizer: Arc<dyn Authorizer>) -> Bench {
    relay_with(config, authorizer, IngestAuth::basic("fluentd", "s3cret"), None).await
}

/// A relay on the embedded bus, or on the nats bus at `nats_url`.
async fn relay_with(
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
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

fn big_queues() -> RelayConfig {
    RelayConfig {
        listener_queue: 2_000_000,
        ..RelayConfig::default()
    }
}

/// A containerd-shaped record as fluentd emits it (about 0.6 KB), varied by `n`; `message`
/// starts with the send time in nanoseconds for latency measurements.
fn record(n: u64, sent_ns: u64, policy: &str) -> String {
    let pod = format!("web-7d9c8b6f5-{:05x}", n % 37);
    format!(
        r#"{{"time":"2025-03-14T09:26:53.589793238Z","stream":"stdout","logtag":"F","message":"{sent_ns} GET /api/cart/{n} 200 12ms","kubernetes":{{"pod_name":"{pod}","namespace_name":"shop","pod_id":"0b6f7c1e-3c2a-4a57-9d0e-{:012x}","labels":{{"app":"web","pod-template-hash":"7d9c8b6f5","rbac/policy":"{policy}"}},"host":"worker-{}","pod_ip":"10.244.1.{}","container_name":"web","docker_id":"4f1c2a9e0b7d{:052x}","container_hash":"docker.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31","container_image":"docker.io/library/nginx:1.27"}},"kubernetes_namespace":{{"name":"shop","labels":{{"kubernetes.io/metadata.name":"shop"}}}}}}"#,
        n % 37,
        n % 3,
        n % 250,
        n % 37
    )
}

fn batch(start: u64, len: usize, sent_ns: u64, deny_every_other: bool) -> Vec<u8> {
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
fn add_noise(body: Vec<u8>, chars: usize, seed: u64) -> Vec<u8> {
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
struct Poster {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Poster {
    async fn new(addr: SocketAddr) -> Poster {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Poster {
            stream,
            buf: vec![0; 4096],
        }
    }

    async fn post(&mut self, path: &str, body: &[u8]) -> u16 {
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
struct Seen {
    records: u64,
    bytes: u64,
    /// Sequence numbers that were skipped without a `dropped` frame announcing them.
    silent_gaps: u64,
    dropped: u64,
    denied: u64,
    latencies_ns: Vec<u64>,
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Post every (path, body) job over two keep-alive connections taking turns, each answered 200.
/// Each batch is numbered as a whole, so interleaving keeps every tap's numbering continuous.
async fn post_on_two_connections(ingest: SocketAddr, jobs: Vec<(String, Arc<Vec<u8>>)>) {
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
async fn listen(
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
fn idle_listener(
    api: SocketAddr,
    path: String,
    origin: Instant,
    ready: &Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(listen(api, path, u64::MAX, origin, false, None, ready.clone()))
}

async fn wait_ready(ready: &AtomicU64, n: u64) {
    while ready.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Attach happens right after the upgrade; give the relay a moment to register them all.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

struct Throughput {
    records_per_s: f64,
    mb_per_s: f64,
    delivered_per_s: f64,
    silent_gaps: u64,
    dropped: u64,
    /// CPU per record in, in µs: the relay's threads, and everything else in this process.
    relay_cpu_us: f64,
    client_cpu_us: f64,
}

/// Post `total` records to `flows` flows (round-robin), with `per_flow` listeners each, as fast
/// as two keep-alive connections allow; time until every listener has every record.
async fn throughput(
    config: RelayConfig,
    authorizer: Arc<dyn Authorizer>,
    flows: usize,
    per_flow: usize,
    total: u64,
    deny_half: bool,
) -> Throughput {
    throughput_on(None, config, authorizer, flows, per_flow, total, deny_half, 0).await
}

/// [`throughput`] on the embedded bus, or on the nats bus at `nats_url`, with `noise` random
/// characters added to each record (see [`add_noise`]).
#[allow(clippy::too_many_arguments)] // the bench's knobs, named at each call
async fn throughput_on(
    nats_url: Option<&str>,
    config: RelayConfig,
    authorizer: Arc<dyn Authorizer>,
    flows: usize,
    per_flow: usize,
    total: u64,
    deny_half: bool,
    noise: usize,
) -> Throughput {
    let b = relay_with(config, authorizer, IngestAuth::basic("fluentd", "s3cret"), nats_url).await;
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let per_flow_records = total / flows as u64;
    let mut listeners = vec![];
    for f in 0..flows {
        for _ in 0..per_flow {
            listeners.push(tokio::spawn(listen(
                b.api,
                format!("/flow/shop/web{f}"),
                if deny_half {
                    per_flow_records / 2
                } else {
                    per_flow_records
                },
                origin,
                false,
                None,
                ready.clone(),
            )));
        }
    }
    wait_ready(&ready, (flows * per_flow) as u64).await;
    let batches: Vec<Vec<u8>> = (0..(per_flow_records as usize).div_ceil(BATCH))
        .map(|i| {
            let b = batch(
                (i * BATCH) as u64,
                BATCH.min(per_flow_records as usize - i * BATCH),
                0,
                deny_half,
            );
            add_noise(b, noise, i as u64)
        })
        .collect();
    let body_bytes: u64 = batches.iter().map(|b| b.len() as u64).sum::<u64>() * flows as u64;
    let batches: Vec<Arc<Vec<u8>>> = batches.into_iter().map(Arc::new).collect();
    let jobs = (0..flows)
        .flat_map(|f| {
            batches
                .iter()
                .map(move |body| (format!("/flow/shop/web{f}"), body.clone()))
        })
        .collect();
    let cpu_before = cpu_by_side();
    let start = Instant::now();
    post_on_two_connections(b.ingest, jobs).await;
    let mut gaps = 0;
    let mut dropped = 0;
    for l in listeners {
        let seen = l.await.unwrap();
        gaps += seen.silent_gaps;
        dropped += seen.dropped;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = cpu_by_side();
    b.stop().await;
    Throughput {
        relay_cpu_us: (cpu_after.0 - cpu_before.0) * 1e6 / total as f64,
        client_cpu_us: (cpu_after.1 - cpu_before.1) * 1e6 / total as f64,
        records_per_s: total as f64 / secs,
        mb_per_s: body_bytes as f64 / secs / 1e6,
        delivered_per_s: (total * per_flow as u64) as f64 / secs,
        silent_gaps: gaps,
        dropped,
    }
}

/// Ingest records/s into one flow with `listeners` listeners attached, each with a 1000-character
/// `grep` when `filtered` (alternatives that match no record: the listeners only filter).
async fn ingest_with_listeners(listeners: usize, filtered: bool, total: u64) -> f64 {
    let b = relay(big_queues(), Arc::new(AllowAll)).await;
    let words: Vec<String> = (0..143).map(|i| format!("zq{i:04}")).collect();
    let regex = words.join("|");
    assert!(regex.len() >= 1000);
    let path = match filtered {
        true => format!("/flow/shop/web?grep={}", regex.replace('|', "%7C")),
        false => "/flow/shop/web".to_owned(),
    };
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..listeners)
        .map(|_| idle_listener(b.api, path.clone(), origin, &ready))
        .collect();
    wait_ready(&ready, listeners as u64).await;
    let batches: Vec<Vec<u8>> = (0..(total as usize).div_ceil(BATCH))
        .map(|i| batch((i * BATCH) as u64, BATCH, 0, false))
        .collect();
    let jobs = batches
        .into_iter()
        .map(|body| ("/flow/shop/web".to_owned(), Arc::new(body)))
        .collect();
    let start = Instant::now();
    post_on_two_connections(b.ingest, jobs).await;
    let secs = start.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    b.stop().await;
    total as f64 / secs
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

/// Open-loop load at `rate` records/s for a second of warm-up and then `secs`: batches are sent
/// on a fixed schedule, and latency counts from the scheduled time, so a stalled relay cannot
/// hide its stall (no coordinated omission).
async fn latency(rate: u64, secs: u64, with_slow_listener: bool) -> Latency {
    let b = relay(RelayConfig::default(), Arc::new(AllowAll)).await;
    let hiccups = Hiccups::start();
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let total = rate * (secs + 1);
    let fast = tokio::spawn(listen(
        b.api,
        "/flow/shop/web".into(),
        total,
        origin,
        true,
        None,
        ready.clone(),
    ));
    let slow = with_slow_listener.then(|| {
        // Reads at about 1 % of the offered rate.
        let pause = Duration::from_nanos(1_000_000_000 / (rate / 100).max(1));
        tokio::spawn(listen(
            b.api,
            "/flow/shop/web".into(),
            u64::MAX,
            origin,
            false,
            Some(pause),
            ready.clone(),
        ))
    });
    wait_ready(&ready, if with_slow_listener { 2 } else { 1 }).await;
    // Batches of 100 (or fewer at low rates) every `interval`.
    let per_batch = (rate / 100).clamp(1, 100);
    let interval = Duration::from_nanos(1_000_000_000 * per_batch / rate);
    let batches = total / per_batch;
    let mut posters = vec![
        Poster::new(b.ingest).await,
        Poster::new(b.ingest).await,
        Poster::new(b.ingest).await,
        Poster::new(b.ingest).await,
    ];
    let (tx, rx) = async_channel(posters.len());
    // Several connections, so one slow response does not delay the next scheduled batch.
    let mut workers = vec![];
    for mut p in posters.drain(..) {
        let rx = rx.clone();
        workers.push(tokio::spawn(async move {
            while let Ok((n, scheduled_ns)) = rx.recv().await {
                let body = batch(n * per_batch, per_batch as usize, scheduled_ns, false);
                p.post("/flow/shop/web", &body).await;
            }
        }));
    }
    // The schedule runs on its own thread with the OS's sleep: tokio's timer has a 1 ms
    // resolution, which would add up to 1 ms of the load generator's own to every latency.
    let scheduler = std::thread::spawn(move || {
        let start = Instant::now();
        for n in 0..batches {
            let due = start + interval * n as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let scheduled = (due - origin).as_nanos() as u64;
            tx.blocking_send((n, scheduled)).unwrap();
        }
    });
    for w in workers {
        w.await.unwrap();
    }
    tokio::task::spawn_blocking(move || scheduler.join().unwrap())
        .await
        .unwrap();
    let mut seen = fast.await.unwrap();
    let hiccups = hiccups.stop();
    let rss = rss_kb();
    if let Some(s) = slow {
        s.abort();
    }
    b.stop().await;
    // The first second warms up (fresh connections, heap, buffers): reported as its worst
    // case, and left out of the percentiles, which describe the steady state.
    let warm_up = (rate as usize).min(seen.latencies_ns.len());
    let first_second_max = seen.latencies_ns[..warm_up].iter().max().copied().unwrap_or(0) as f64 / 1e6;
    let mut l = seen.latencies_ns.split_off(warm_up);
    l.sort_unstable();
    Latency {
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
        p999: percentile(&l, 0.999),
        first_second_max,
        received: seen.records,
        rss_kb: rss,
        stalls: hiccups,
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    first_second_max: f64,
    received: u64,
    rss_kb: u64,
    /// The machine's own p99 and p99.9 wake-up delay during the run (see [`Hiccups`]).
    stalls: (f64, f64),
}

/// The machine's own stalls while a part runs: a thread that only sleeps 1 ms at a time and
/// records how late it wakes. Whatever delays it (the hypervisor, the scheduler, other threads)
/// delays the relay the same way, so it is the floor under the relay's tail latency.
struct Hiccups {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl Hiccups {
    fn start() -> Hiccups {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late_ns = vec![];
            while !flag.load(Ordering::Relaxed) {
                let before = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                late_ns.push(before.elapsed().as_nanos().saturating_sub(1_000_000) as u64);
            }
            late_ns
        });
        Hiccups { stop, thread }
    }

    /// p99 and p99.9 of the wake-up delays, in ms.
    fn stop(self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut late = self.thread.join().unwrap();
        late.sort_unstable();
        (percentile(&late, 0.99), percentile(&late, 0.999))
    }
}

/// A small multi-consumer channel over tokio's mpsc (one receiver shared behind a mutex).
fn async_channel(cap: usize) -> (tokio::sync::mpsc::Sender<(u64, u64)>, SharedRx) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap * 4);
    (tx, SharedRx(Arc::new(tokio::sync::Mutex::new(rx))))
}

#[derive(Clone)]
struct SharedRx(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(u64, u64)>>>);

impl SharedRx {
    async fn recv(&self) -> Result<(u64, u64), ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

/// Resident memory of this process, in KiB.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The machine's CPU counters (steal, total) from /proc/stat, to tell how much time the
/// hypervisor took from this VM during a part: tail latencies on a shared VM follow it.
fn cpu_counters() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

fn steal_since(before: (u64, u64)) -> f64 {
    let after = cpu_counters();
    100.0 * after.0.saturating_sub(before.0) as f64 / (after.1.saturating_sub(before.1)).max(1) as f64
}

/// CPU time the whole process has used (all threads, user + system), in seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU time used so far by this process's threads, in seconds: (the relay's threads, all
/// others: load generator, listeners, the bench itself). From /proc/self/task/*/schedstat,
/// which counts nanoseconds on a CPU per thread. Exited threads are not counted, so take both
/// readings while the same threads live.
fn cpu_by_side() -> (f64, f64) {
    let (mut relay, mut other) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        if comm.trim_end() == "relay" {
            relay += ns;
        } else {
            other += ns;
        }
    }
    (relay as f64 / 1e9, other as f64 / 1e9)
}

/// A receiver on a fresh loopback port that reads and discards `bytes` (or until EOF).
async fn sink(bytes: u64) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
    });
    (addr, rx)
}

/// Write `bytes` to `s` in 64 KiB chunks.
async fn send_chunks(s: &mut TcpStream, bytes: u64) {
    let chunk = vec![7u8; 64 << 10];
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
}

/// Raw loopback TCP: one sender writing 64 KiB chunks, one receiver reading. MB/s.
async fn raw_tcp(bytes: u64) -> f64 {
    let (addr, rx) = sink(bytes).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    send_chunks(&mut s, bytes).await;
    rx.await.unwrap();
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Raw loopback TCP through a forwarder (sender → forwarder → receiver), in MB/s: what a
/// relay that only copies bytes from its ingest socket to one listener socket could reach here.
/// Also the CPU time it took per byte (seconds, all threads).
async fn raw_forward(bytes: u64) -> (f64, f64) {
    let (out_addr, rx) = sink(bytes).await;
    let inp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let in_addr = inp.local_addr().unwrap();
    let fwd = tokio::spawn(async move {
        let (mut from, _) = inp.accept().await.unwrap();
        let mut to = TcpStream::connect(out_addr).await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = from.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            to.write_all(&buf[..n]).await.unwrap();
        }
    });
    let mut s = TcpStream::connect(in_addr).await.unwrap();
    let (start, cpu) = (Instant::now(), cpu_secs());
    send_chunks(&mut s, bytes).await;
    drop(s);
    rx.await.unwrap();
    fwd.await.unwrap();
    let mbs = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    (mbs, (cpu_secs() - cpu) / bytes as f64)
}

/// How fast `parse` reads the same batch of `BATCH` records, repeated for `records` records,
/// on one core: (records/s, MB/s). `parse` gets the body and its text, and returns how many
/// records it read.
fn parse_rate(records: u64, parse: impl Fn(&bytes::Bytes, &str) -> usize) -> (f64, f64) {
    let body = bytes::Bytes::from(batch(0, BATCH, 0, false));
    let text = std::str::from_utf8(&body).unwrap();
    let rounds = records / BATCH as u64;
    let start = Instant::now();
    for _ in 0..rounds {
        assert_eq!(parse(&body, text), BATCH);
    }
    let secs = start.elapsed().as_secs_f64();
    (
        (BATCH as u64 * rounds) as f64 / secs,
        (body.len() as u64 * rounds) as f64 / secs / 1e6,
    )
}

/// serde_json validation of the same batches without building anything (`IgnoredAny`): the
/// least a relay that checks its input must spend, in MB/s on one core.
fn json_validate(records: u64) -> f64 {
    parse_rate(records, |body, _| {
        serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body)
            .unwrap()
            .len()
    })
    .1
}

/// The relay's own record parser (validation and the fields routing needs, one pass), in MB/s
/// on one core.
fn relay_parse(records: u64) -> f64 {
    parse_rate(records, |body, _| record::parse_batch(body).unwrap().len()).1
}

/// The reference parser the relay falls back to, in MB/s on one core.
fn reference_parse(records: u64) -> f64 {
    parse_rate(records, |body, text| {
        record::parse_batch_checked(body, text).unwrap().len()
    })
    .1
}

/// serde_json parse of the same batches into values: records/s and MB/s on one core.
fn json_parse(records: u64) -> (f64, f64) {
    parse_rate(records, |body, _| {
        serde_json::from_slice::<Vec<serde_json::Value>>(body).unwrap().len()
    })
}

/// Idle listeners: RSS growth per listener.
async fn idle_listeners(n: u64) -> (u64, u64) {
    let b = relay(RelayConfig::default(), Arc::new(AllowAll)).await;
    let before = rss_kb();
    let ready = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let listeners: Vec<_> = (0..n)
        .map(|i| idle_listener(b.api, format!("/flow/shop/idle{}", i % 10), origin, &ready))
        .collect();
    wait_ready(&ready, n).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kb();
    for l in listeners {
        l.abort();
    }
    b.stop().await;
    (before, after)
}

/// RSS with `taps` taps whose replay buffers are full.
async fn full_replay(taps: u64) -> (u64, u64) {
    let b = relay(RelayConfig::default(), Arc::new(AllowAll)).await;
    let before = rss_kb();
    let ready = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let mut ls = vec![];
    for t in 0..taps {
        ls.push(tokio::spawn(listen(
            b.api,
            format!("/flow/shop/r{t}"),
            2000,
            origin,
            false,
            None,
            ready.clone(),
        )));
    }
    wait_ready(&ready, taps).await;
    let body = batch(0, BATCH, 0, false);
    let mut p = Poster::new(b.ingest).await;
    for t in 0..taps {
        for _ in 0..4 {
            p.post(&format!("/flow/shop/r{t}"), &body).await;
        }
    }
    for l in ls {
        l.await.unwrap();
    }
    let after = rss_kb();
    b.stop().await;
    (before, after)
}

fn main() {
    // RUST_LOG=log_socket=debug shows what the relay and the controller do during a run.
    if std::env::var_os("RUST_LOG").is_some() {
        log_socket::telemetry::init_tracing("warn", log_socket::telemetry::LogFormat::Text);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!("log-socket relay benchmark: {cpus} CPUs ({model}), 2 tokio workers, loopback\n");
    let rec_len = record(1, 0, "allow").len();
    println!("record: {rec_len} bytes (containerd-shaped), batches of {BATCH} as a JSON array\n");

    // `cargo bench --bench relay -- latency memory` runs only those parts.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let part = |name: &str| only.is_empty() || only.iter().any(|o| o == name);

    // 6. Memory, first, before the other workloads grow the heap.
    if part("memory") {
        let (before, after) = idle_listeners(1000).await;
        println!(
            "1000 idle listeners: RSS {:.0} → {:.0} MiB (+{:.1} KiB per listener, client side included)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after.saturating_sub(before)) as f64 / 1000.0
        );
        let (before, after) = full_replay(100).await;
        println!(
            "100 taps with full replay buffers (1000 records each, about 0.7 MB per tap): RSS {:.0} → {:.0} MiB\n",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    // 7. The control plane, against the real API server (needs `make test-env`).
    if part("control-plane") {
        let result = control_plane_bench(5).await;
        // Stopped now, not at exit: an idle API server still takes CPU from the parts below.
        control_plane::teardown();
        if let Err(e) = result {
            println!("control plane: failed ({e})\n");
        }
    }
    // Listener filters never run on the ingest path: ingest with 100 listeners each holding a
    // 1000-character regex (matching nothing, so the listeners only filter), against one.
    if part("filters") {
        let total = 200_000;
        let alone = ingest_with_listeners(1, false, total).await;
        let plain = ingest_with_listeners(100, false, total).await;
        let regex = ingest_with_listeners(100, true, total).await;
        println!("| ingest, {total} records in batches of {BATCH} | records/s | vs one listener |\n|---|---|---|");
        println!("| one listener, no filter | {alone:.0} | 1.00 |");
        println!(
            "| 100 listeners, no filter (each gets every record) | {plain:.0} | {:.2} |",
            plain / alone
        );
        println!(
            "| 100 listeners, each `grep` a 1000-character regex | {regex:.0} | {:.2} |\n",
            regex / alone
        );
    }
    // The real fluentd pushing through the generated Output, next to the relay alone.
    if part("fluentd") {
        match fluentd_throughput(20).await {
            None => println!(
                "fluentd: skipped (set LOG_SOCKET_FLUENTD to a fluentd command, e.g. ../shared/tools/fluentd, or put fluentd on PATH)\n"
            ),
            Some(f) => {
                let alone = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 300_000, false).await;
                println!("| into one flow, one listener | records/s | sender CPU | relay CPU µs/record |\n|---|---|---|---|");
                println!(
                    "| fluentd 1.16 (one worker: `sample` source, the generated http Output, {} byte records) → relay | {:.0} | fluentd {:.0} % of a core | {:.2} |",
                    f.record_bytes, f.records_per_s, f.fluentd_cpu_percent, f.relay_cpu_us
                );
                println!(
                    "| the bench's load generator → relay (the relay alone, {rec_len} byte records) | {:.0} | generator + listener {:.2} µs/record | {:.2} |",
                    alone.records_per_s, alone.client_cpu_us, alone.relay_cpu_us
                );
                println!(
                    "\nThe relay takes {:.1}× what one fluentd worker sends; relaying fluentd's records used {:.1} % of a core.\n",
                    alone.records_per_s / f.records_per_s,
                    f.records_per_s * f.relay_cpu_us / 1e4
                );
            }
        }
    }
    // The nats bus (a real nats-server with JetStream on the same cores) next to the embedded one.
    if part("bus") {
        bus_bench().await;
    }
    // `-- parse`: only the relay's record parser, to profile it.
    if only.iter().any(|o| o == "parse") {
        let mbs = relay_parse(5_000_000);
        println!("the relay's record parser: {mbs:.0} MB/s");
        return;
    }
    if !part("throughput") && !part("latency") && !part("one") {
        return;
    }

    // 8. Reference figures.
    let raw = raw_tcp(2 << 30).await;
    let (forward, forward_cpu_per_byte) = raw_forward(2 << 30).await;
    let (parse_rps, parse_mbs) = json_parse(400_000);
    let validate = json_validate(1_000_000);
    let (relay_parse, reference_parse) = (relay_parse(1_000_000), reference_parse(1_000_000));
    let per_record = |mbs: f64| mbs * 1e6 / rec_len as f64;
    println!("| reference | figure |\n|---|---|");
    println!("| raw loopback TCP copy | {raw:.0} MB/s |");
    println!(
        "| raw loopback TCP through a forwarder (two hops, as ingest → relay → listener) | {forward:.0} MB/s ({:.0} records/s of {rec_len} bytes) |",
        per_record(forward)
    );
    println!(
        "| serde_json validation of the records, building nothing (1 core) | {validate:.0} MB/s ({:.0} records/s) |",
        per_record(validate)
    );
    println!(
        "| serde_json parse of the records into values (1 core) | {parse_rps:.0} records/s, {parse_mbs:.0} MB/s |"
    );
    println!(
        "| the relay's record parser: validation + routing fields, one pass (1 core) | {relay_parse:.0} MB/s ({:.0} records/s) |",
        per_record(relay_parse)
    );
    println!(
        "| its reference parser, for errors and corner cases (1 core) | {reference_parse:.0} MB/s ({:.0} records/s) |",
        per_record(reference_parse)
    );
    // A relay must at least move each record over both hops and validate it once. Their CPU
    // costs per record, added, spread over the machine's cores, bound what any relay reaches.
    let floor_cpu = forward_cpu_per_byte * rec_len as f64 + 1.0 / per_record(validate);
    println!(
        "| ceiling: two-hop copy ({:.2} µs CPU/record) + validation ({:.2} µs CPU/record) on {cpus} cores | {:.0} records/s |\n",
        forward_cpu_per_byte * rec_len as f64 * 1e6,
        1e6 / per_record(validate),
        cpus as f64 / floor_cpu
    );
    let ceiling = cpus as f64 / floor_cpu;

    // `-- one`: only ingest → 1 listener, the figure to profile (`perf record` around it).
    if only.iter().any(|o| o == "one") {
        let one = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 1_000_000, false).await;
        println!(
            "ingest → 1 listener: {:.0} records/s, {:.1} MB/s, {:.1} % of raw loopback TCP, {:.1} % of the raw forwarder, {:.1} % of the ceiling, {} silent gaps",
            one.records_per_s,
            one.mb_per_s,
            100.0 * one.mb_per_s / raw,
            100.0 * one.mb_per_s / forward,
            100.0 * one.records_per_s / ceiling,
            one.silent_gaps
        );
        println!(
            "CPU per record: relay {:.2} µs, load generator + listener {:.2} µs; the relay alone on {cpus} cores: {:.0} records/s\n",
            one.relay_cpu_us,
            one.client_cpu_us,
            cpus as f64 * 1e6 / one.relay_cpu_us
        );
    }

    // 1, 2, 5. Throughput.
    if part("throughput") {
        let stolen = cpu_counters();
        println!("| workload | records/s in | MB/s in | records/s delivered | vs raw TCP | relay CPU µs/record | clients CPU µs/record | silent gaps | dropped |\n|---|---|---|---|---|---|---|---|---|");
        let row = |name: &str, t: &Throughput| {
            println!(
                "| {name} | {:.0} | {:.1} | {:.0} | {:.1} % | {:.2} | {:.2} | {} | {} |",
                t.records_per_s,
                t.mb_per_s,
                t.delivered_per_s,
                100.0 * t.mb_per_s / raw,
                t.relay_cpu_us,
                t.client_cpu_us,
                t.silent_gaps,
                t.dropped
            )
        };
        let one = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false).await;
        row("ingest → 1 listener", &one);
        let mut many = vec![];
        for (n, total) in [(10usize, 200_000u64), (100, 50_000), (1000, 10_000)] {
            let t = throughput(big_queues(), Arc::new(AllowAll), 1, n, total, false).await;
            row(&format!("ingest → {n} listeners, one flow"), &t);
            many.push((n, t));
        }
        let spread = throughput(big_queues(), Arc::new(AllowAll), 100, 1, 200_000, false).await;
        row("100 flows × 1 listener", &spread);
        let rbac = throughput(big_queues(), Arc::new(LabelPolicy::default()), 1, 1, 400_000, true).await;
        row("labels policy, half denied", &rbac);
        println!();
        for (n, t) in &many {
            println!(
                "cost of {n} listeners vs 1 (time per record in): {:.2}×",
                one.records_per_s / t.records_per_s
            );
        }
        println!(
            "relay throughput (ingest → 1 listener) as a share of the ceiling: {:.1} %; of raw loopback TCP: {:.1} %; of the raw two-hop forwarder: {:.1} %; of single-core JSON validation: {:.1} %; of single-core parsing into values: {:.1} %\n",
            100.0 * one.records_per_s / ceiling,
            100.0 * one.mb_per_s / raw,
            100.0 * one.mb_per_s / forward,
            100.0 * one.mb_per_s / validate,
            100.0 * one.records_per_s / parse_rps
        );
        // Every listener's copy of a record crosses loopback once more: a fan-out to n
        // listeners costs at least n + 1 hops (one in, n out), each half the raw two-hop
        // forwarder's CPU, whatever the relay does.
        let hop_us = forward_cpu_per_byte * rec_len as f64 * 1e6 / 2.0;
        let one_total = one.relay_cpu_us + one.client_cpu_us;
        for (n, t) in &many {
            let floor = (*n as f64 + 1.0) * hop_us;
            let total = t.relay_cpu_us + t.client_cpu_us;
            println!(
                "{n} listeners: {total:.1} µs CPU per record in (relay + listeners), {:.1}× one listener's {one_total:.2} µs; the loopback copies alone need {floor:.1} µs ({:.1}×), {:.0} % of what was spent",
                total / one_total,
                floor / one_total,
                100.0 * floor / total
            );
        }
        println!();
        println!(
            "CPU time taken by the hypervisor (steal) during the throughput part: {:.1} %\n",
            steal_since(stolen)
        );
    }

    // 3, 4. Latency, open loop.
    if part("latency") {
        let stolen = cpu_counters();
        println!("| offered load | p50 ms | p99 ms | p99.9 ms | first second, max ms | machine stalls p99 / p99.9 ms | received | RSS MiB |\n|---|---|---|---|---|---|---|---|");
        let row = |name: &str, l: &Latency| {
            println!(
                "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {} | {:.0} |",
                l.p50,
                l.p99,
                l.p999,
                l.first_second_max,
                l.stalls.0,
                l.stalls.1,
                l.received,
                l.rss_kb as f64 / 1024.0
            )
        };
        for rate in [10_000u64, 50_000, 200_000] {
            row(&format!("{rate} records/s"), &latency(rate, 5, false).await);
        }
        row(
            "50000 records/s + a listener reading 1 %",
            &latency(50_000, 5, true).await,
        );
        println!("\npercentiles over 5 s after a 1 s warm-up (its worst case in its own column); machine stalls: how late a thread that only sleeps 1 ms at a time wakes during the same row, the floor under any tail latency on this machine\n");
        println!(
            "CPU time taken by the hypervisor (steal) during the latency part: {:.1} %\n",
            steal_since(stolen)
        );
    }
}

/// Every request log-socket's own client makes, as `METHOD path` (`WATCH` for watches): the
/// exact figure, with nothing of the bench or of logging-operator's stand-in in it.
#[derive(Clone, Default)]
struct RequestLog(Arc<std::sync::Mutex<Vec<String>>>);

impl RequestLog {
    fn client(&self, config: kube::Config) -> kube::Client {
        let log = self.clone();
        let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            let query = req.uri().query().unwrap_or_default();
            let method = if query.contains("watch=true") || query.contains("watch=1") {
                "WATCH".to_owned()
            } else {
                req.method().to_string()
            };
            log.0.lock().unwrap().push(format!("{method} {}", req.uri().path()));
            req
        });
        kube::client::ClientBuilder::try_from(config)
            .expect("client from kubeconfig")
            .with_layer(&layer)
            .build()
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Ingest → listeners through the embedded bus and through NATS JetStream, in one run.
async fn bus_bench() {
    let dir = std::env::temp_dir().join(format!("log-socket-bench-nats-{}", std::process::id()));
    let Some(server) = nats::Nats::start(&dir) else {
        println!("bus: skipped (no nats-server: apt-get install nats-server)\n");
        return;
    };
    let url = server.url();
    let row = |name: &str, t: &Throughput| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |",
            t.records_per_s, t.delivered_per_s, t.relay_cpu_us, t.client_cpu_us, t.silent_gaps, t.dropped
        );
    };
    println!("| bus (relay, nats-server and clients on the same cores) | records/s in | records/s delivered | relay CPU µs/record | clients CPU µs/record | silent gaps | dropped |\n|---|---|---|---|---|---|---|");
    let embedded = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false).await;
    row("embedded, 1 listener", &embedded);
    let nats = throughput_on(Some(&url), big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false, 0).await;
    row("nats (JetStream, file storage), 1 listener", &nats);
    let embedded_100 = throughput(big_queues(), Arc::new(AllowAll), 100, 1, 200_000, false).await;
    row("embedded, 100 flows × 1 listener", &embedded_100);
    let nats_100 = throughput_on(Some(&url), big_queues(), Arc::new(AllowAll), 100, 1, 200_000, false, 0).await;
    row("nats, 100 flows × 1 listener", &nats_100);
    // Records with 160 random hex digits each (about 4× compression on the bus, like real logs).
    const NOISE: usize = 160;
    let embedded_noisy = throughput_on(None, big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false, NOISE).await;
    row("embedded, 1 listener, records compressing ~4×", &embedded_noisy);
    let nats_noisy = throughput_on(
        Some(&url),
        big_queues(),
        Arc::new(AllowAll),
        1,
        1,
        400_000,
        false,
        NOISE,
    )
    .await;
    row("nats, 1 listener, records compressing ~4×", &nats_noisy);
    let nats_cpu = server.pid().map_or(0.0, process_cpu_secs);
    let ratio = |b: Vec<u8>| b.len() as f64 / lz4_flex::block::compress_prepend_size(&b).len() as f64;
    println!(
        "\nThe nats path delivers {:.2}× the embedded path's records/s to one listener ({:.2}× over 100 flows, {:.2}× with the noisy records); nats-server used {nats_cpu:.1} s of CPU in all. On the bus a batch of {BATCH} records compresses {:.1}× (LZ4), the noisy ones {:.1}×: nats-server's cost is per byte, so records that compress less cost it more.\n",
        nats.records_per_s / embedded.records_per_s,
        nats_100.records_per_s / embedded_100.records_per_s,
        nats_noisy.records_per_s / embedded_noisy.records_per_s,
        ratio(batch(0, BATCH, 0, false)),
        ratio(add_noise(batch(0, BATCH, 0, false), NOISE, 1)),
    );

    // The same 100 listeners of one flow on one relay, then split over two (both relays on the
    // same 2 cores, so this shows what a second replica costs, not what it scales to).
    println!("| 100 listeners of one flow, nats bus | records/s in | records/s delivered | relays' CPU µs per record in | per record delivered |\n|---|---|---|---|---|");
    for relays in [1, 2] {
        let t = spread(&url, relays, 100, 100_000).await;
        println!(
            "| on {relays} relay{} (ingest at the first) | {:.0} | {:.0} | {:.2} | {:.3} |",
            if relays > 1 { "s" } else { "" },
            t.records_per_s,
            t.delivered_per_s,
            t.relay_cpu_us,
            t.relay_cpu_us * t.records_per_s / t.delivered_per_s,
        );
    }
    println!();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `listeners` listeners of one flow spread round-robin over `relays` relays sharing one NATS,
/// `total` records posted to the first relay over two connections: until every listener has
/// every record.
async fn spread(url: &str, relays: usize, listeners: usize, total: u64) -> Throughput {
    let mut benches = vec![];
    for _ in 0..relays {
        benches.push(
            relay_with(
                big_queues(),
                Arc::new(AllowAll),
                IngestAuth::basic("fluentd", "s3cret"),
                Some(url),
            )
            .await,
        );
    }
    let path = format!("/flow/shop/spread{relays}");
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..listeners)
        .map(|i| {
            tokio::spawn(listen(
                benches[i % relays].api,
                path.clone(),
                total,
                origin,
                false,
                None,
                ready.clone(),
            ))
        })
        .collect();
    wait_ready(&ready, listeners as u64).await;
    let jobs = (0..(total as usize).div_ceil(BATCH))
        .map(|i| {
            let body = batch((i * BATCH) as u64, BATCH.min(total as usize - i * BATCH), 0, false);
            (path.clone(), Arc::new(body))
        })
        .collect();
    let cpu_before = cpu_by_side();
    let start = Instant::now();
    post_on_two_connections(benches[0].ingest, jobs).await;
    let (mut gaps, mut dropped) = (0, 0);
    for t in tasks {
        let seen = t.await.unwrap();
        gaps += seen.silent_gaps;
        dropped += seen.dropped;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = cpu_by_side();
    for b in benches {
        b.stop().await;
    }
    Throughput {
        relay_cpu_us: (cpu_after.0 - cpu_before.0) * 1e6 / total as f64,
        client_cpu_us: (cpu_after.1 - cpu_before.1) * 1e6 / total as f64,
        records_per_s: total as f64 / secs,
        mb_per_s: 0.0,
        delivered_per_s: (total * listeners as u64) as f64 / secs,
        silent_gaps: gaps,
        dropped,
    }
}

struct FluentdFigures {
    records_per_s: f64,
    record_bytes: usize,
    fluentd_cpu_percent: f64,
    relay_cpu_us: f64,
}

/// CPU seconds process `pid` has used (user + system).
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<f64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // `rest` starts at field 3 (state, not a number), so utime and stime are fields 10 and 11 here.
    (fields.get(10).copied().unwrap_or(0.0) + fields.get(11).copied().unwrap_or(0.0)) / ticks
}

/// The real fluentd (one worker) posting a `sample` source as fast as it can through the
/// Output the operator generates (per-flow credential, its buffer settings) into the relay,
/// one listener counting: records/s delivered over `secs`, after a warm-up.
async fn fluentd_throughput(secs: u64) -> Option<FluentdFigures> {
    fluentd::find()?;
    let keys = Arc::new(
        log_socket::auth::ingest_keys::IngestKeys::from_keys(&["bench-key-0123456789abcdef0123456789abcdef"]).unwrap(),
    );
    let b = relay_with(
        big_queues(),
        Arc::new(AllowAll),
        IngestAuth::per_flow(keys.clone()),
        None,
    )
    .await;
    let spec = render::generated_output_spec(&format!("http://{}", b.ingest), Some(keys), "Flow", None, None, None);
    let output = render::http_output(&spec, "flow:shop:web:output:shop:logsocket-flow-web");

    // A record as the other parts send (without the send time), offered at 100k/s: more than
    // one Ruby worker formats, so what arrives is what fluentd manages.
    let sample = record(1, 0, "allow");
    let dir = std::env::temp_dir().join(format!("log-socket-bench-fluentd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let conf = format!(
        "{system}<source>\n  @type sample\n  tag kubernetes.web\n  rate 1000\n  size 100\n  sample {sample}\n</source>\n\
         <match kubernetes.**>\n{output}</match>\n<label @FLUENT_LOG>\n  <match fluent.**>\n    @type null\n  </match>\n</label>\n",
        system = fluentd::system(&dir)
    );

    let counted = Arc::new(AtomicU64::new(0));
    let count = counted.clone();
    let api = b.api;
    let listener = tokio::spawn(async move {
        let mut req = format!("ws://{api}/flow/shop/web").into_client_request().unwrap();
        req.headers_mut().insert("x-authorization", TOKEN.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                if t.as_str().starts_with(r#"{"type":"record""#) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let mut f = fluentd::Fluentd::start(&dir, &conf)?;
    let started = Instant::now();
    while counted.load(Ordering::Relaxed) == 0 {
        if started.elapsed() > Duration::from_secs(60) || !f.running() {
            println!("fluentd: nothing arrived; its log:\n{}", f.log());
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (n0, fcpu0, relay0, t0) = (
        counted.load(Ordering::Relaxed),
        process_cpu_secs(f.pid()),
        cpu_by_side().0,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (n1, fcpu1, relay1, elapsed) = (
        counted.load(Ordering::Relaxed),
        process_cpu_secs(f.pid()),
        cpu_by_side().0,
        t0.elapsed().as_secs_f64(),
    );
    f.stop(Duration::from_secs(5)).await;
    listener.abort();
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let records = (n1 - n0).max(1) as f64;
    Some(FluentdFigures {
        records_per_s: records / elapsed,
        record_bytes: sample.len(),
        fluentd_cpu_percent: 100.0 * (fcpu1 - fcpu0) / elapsed,
        relay_cpu_us: (relay1 - relay0) * 1e6 / records,
    })
}

/// With `LOG_SOCKET_BENCH_BREAKDOWN=1`, which requests a figure is made of.
fn print_breakdown(what: &str, requests: &[String]) {
    if std::env::var_os("LOG_SOCKET_BENCH_BREAKDOWN").is_none() {
        return;
    }
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for r in requests {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    println!("{what}: {} requests", requests.len());
    for (r, n) in counts {
        println!("  {n:>5}  {r}");
    }
    if std::env::var_os("LOG_SOCKET_BENCH_BREAKDOWN").is_some_and(|v| v == "order") {
        for r in requests {
            println!("         {r}");
        }
    }
}

/// Listener connect → FlowTap Active with its Output created and the Flow patched, and
/// disconnect → Flow restored, `cycles` times; the API requests each cycle costs.
async fn control_plane_bench(cycles: u32) -> Result<(), String> {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    use log_socket::auth::tokens::TokenReviewAuthenticator;
    use log_socket::k8s::flowtap::{FlowTap, Phase};
    use log_socket::operator::OperatorConfig;
    use log_socket::service::{Cluster, Controller};

    let dir = std::env::temp_dir().join(format!("log-socket-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cp = control_plane::start(&dir)?;
    cp.wait_ready(Duration::from_secs(90)).await?;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    cp.install_crds(&control_plane::crd_files(repo)).await?;
    let client = cp.client().await;
    let flows = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", "Flow")),
    );
    let flow: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Flow",
        "metadata": {"name": "web"}, "spec": {"match": [{"select": {}}], "localOutputRefs": ["loki"]}
    }))
    .unwrap();
    // A CRD is served a moment after it is Established.
    let mut created = Err(String::new());
    for _ in 0..50 {
        created = flows
            .create(&PostParams::default(), &flow)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if created.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    created?;
    // logging-operator's part: the Logging, output validation, configuration checks.
    let _lo = logging_operator::start(&client, "default").await;
    // log-socket gets a client of its own, so that only its requests are counted.
    let log = RequestLog::default();
    let service_client = log.client(cp.config().await);
    let kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cp.kubeconfig).map_err(|e| e.to_string())?).unwrap();
    let admin_token = kubeconfig["users"][0]["user"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let config = Arc::new(OperatorConfig {
        instance: "bench".into(),
        ingest_url: "http://log-socket.bench.svc:10000".into(),
        linger: Duration::ZERO,
        session_ttl: Duration::from_secs(60),
        ingest_keys: None,
        tls_secret: None,
        namespace: Some("default".into()),
        mode: Default::default(),
        output_accept_timeout: Duration::from_secs(30),
        sweep_interval: Duration::from_secs(60),
        limits: Default::default(),
    });
    let parts = Parts {
        authenticator: Arc::new(TokenReviewAuthenticator::new(
            service_client.clone(),
            vec![],
            Duration::from_secs(10),
        )),
        authorizer: Arc::new(AllowAll),
        sessions: Arc::new(NoSessions),
        ingest_auth: IngestAuth::basic("fluentd", "s3cret"),
    };
    let sockets = Sockets::plain(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let api = sockets.api.local_addr().unwrap();
    // The service as the binary assembles it: relay, sessions, tap tracking, the controller.
    let cluster = Cluster {
        client: service_client,
        operator: config,
        tap_permission_check: true,
        controller: Controller::Always,
    };
    let stop = Shutdown::new();
    tokio::spawn(Service::cluster(RelayConfig::default(), parts, cluster).run(sockets, stop.clone()));
    let taps: Api<FlowTap> = Api::namespaced(client.clone(), "default");
    let refs = |f: &DynamicObject| f.data["spec"]["localOutputRefs"].clone();

    let (mut to_active, mut to_restored, mut requests) = (vec![], vec![], vec![]);
    for _ in 0..cycles {
        log.take();
        let start = Instant::now();
        let mut req = format!("ws://{api}/flow/default/web").into_client_request().unwrap();
        req.headers_mut()
            .insert("x-authorization", admin_token.parse().unwrap());
        req.headers_mut()
            .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
        loop {
            let active = taps
                .get_opt("flow-web")
                .await
                .ok()
                .flatten()
                .and_then(|t| t.status?.phase)
                == Some(Phase::Active);
            if active && refs(&flows.get("web").await.unwrap()).as_array().map_or(0, |a| a.len()) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        to_active.push(start.elapsed());
        let left = Instant::now();
        drop(ws);
        while taps.get_opt("flow-web").await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        to_restored.push(left.elapsed());
        assert_eq!(refs(&flows.get("web").await.unwrap()), serde_json::json!(["loki"]));
        // Give the controller's last writes (finalizer, status) time to land in the count.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let made = log.take();
        print_breakdown("one cycle", &made);
        requests.push(made.len() as f64);
    }

    // Steady state: persistent taps nobody listens to, once they are Active. Only what time
    // brings should cost requests then (the controller's safety-net pass every 10 minutes).
    // `LOG_SOCKET_BENCH_IDLE_TAPS=0` skips this part (a quicker look at the cycle).
    let idle_taps: usize = std::env::var("LOG_SOCKET_BENCH_IDLE_TAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let flows_spec = |i: usize| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Flow",
            "metadata": {"name": format!("idle-{i}")}, "spec": {"match": [{"select": {}}], "localOutputRefs": ["loki"]}
        }))
        .unwrap()
    };
    for i in 0..idle_taps {
        flows
            .create(&PostParams::default(), &flows_spec(i))
            .await
            .map_err(|e| e.to_string())?;
        let tap: FlowTap = serde_json::from_value(serde_json::json!({
            "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
            "metadata": {"name": format!("idle-{i}")},
            "spec": {"flowRef": {"kind": "Flow", "name": format!("idle-{i}")}, "persistent": true},
        }))
        .unwrap();
        taps.create(&PostParams::default(), &tap)
            .await
            .map_err(|e| e.to_string())?;
    }
    let settle = Instant::now();
    loop {
        let list = taps.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let active = list
            .items
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active))
            .count();
        if active >= idle_taps {
            break;
        }
        if settle.elapsed() > Duration::from_secs(300) {
            return Err(format!("only {active} of {idle_taps} idle taps became Active"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_active = settle.elapsed();
    let minute = if idle_taps > 0 { 60 } else { 0 };
    tokio::time::sleep(Duration::from_secs(minute / 6)).await;
    log.take();
    tokio::time::sleep(Duration::from_secs(minute)).await;
    let made = log.take();
    print_breakdown("one idle minute", &made);
    let idle_per_minute = made.len() as f64;
    stop.cancel();
    control_plane::teardown();
    let ms = |d: &[Duration]| {
        let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (a50, amax) = ms(&to_active);
    let (r50, rmax) = ms(&to_restored);
    // The first cycle also starts the watches and asks TokenReview and SubjectAccessReview
    // (cached for 10 s afterwards); the others are what a returning listener costs.
    let first = requests[0];
    let mut rest: Vec<f64> = requests[1..].to_vec();
    rest.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let steady = rest.get(rest.len() / 2).copied().unwrap_or(first);
    println!("| control plane ({cycles} cycles, real kube-apiserver) | median | max |\n|---|---|---|");
    println!("| listener connect → FlowTap Active, Output created, Flow patched | {a50:.0} ms | {amax:.0} ms |");
    println!("| last listener leaves (linger 0) → FlowTap gone, Flow restored | {r50:.0} ms | {rmax:.0} ms |");
    println!(
        "API requests per connect + disconnect cycle, counted by log-socket's own client (relay sessions, controller, TokenReview, SubjectAccessReview): {steady:.0} (median; target 12), the first one {first:.0} (watches started, the token and the permission checked)"
    );
    println!(
        "{idle_taps} persistent taps with no listener: all Active {:.1} s after they were created; then {idle_per_minute:.0} API requests per minute in steady state\n",
        all_active.as_secs_f64()
    );
    Ok(())
}
