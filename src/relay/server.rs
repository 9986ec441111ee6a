//! HTTP side of the relay: the ingest port (fluentd POSTs records) and the API port (listeners
//! connect over WebSocket; `/metrics`). Filters route, handlers act, [`State`] is injected.

use super::listener::{Filter as RecordFilter, Listener};
use super::protocol::{self, close, SUBPROTOCOL};
use super::record::{self, BodyError};
use super::tap::{Entry, Start, Tap};
use super::{JoinError, Relay, SessionInfo, Sessions, TapKey};
use crate::auth::{AuthError, Authenticator, Authorizer, Decision, Identity, IngestAuth};
use crate::metrics::{CodeLabels, DropLabels, DropReason, TapLabels};
use crate::tls::{PeerCertificate, ReloadingConfig};
use crate::until_true;
use bytes::{Buf, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use warp::http::{HeaderMap, Response, StatusCode};
use warp::Filter;

type Reply = warp::reply::Response;

/// Everything the handlers need.
pub struct State {
    pub relay: Arc<Relay>,
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
    pub sessions: Arc<dyn Sessions>,
    pub ingest_auth: IngestAuth,
    ingest_slots: Semaphore,
    /// Flips to true when listeners must say goodbye.
    stop_listeners: watch::Receiver<bool>,
    /// Held by every listener task; shutdown waits until all are dropped.
    listener_tasks: mpsc::Sender<()>,
}

fn text(code: StatusCode, message: impl Into<String>) -> Reply {
    let mut body = message.into();
    body.push('\n');
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body.into())
        .expect("valid response")
}

fn with_state(state: Arc<State>) -> impl Filter<Extract = (Arc<State>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Routes of the ingest port.
pub fn ingest_routes(state: Arc<State>) -> impl Filter<Extract = (Reply,), Error = Infallible> + Clone {
    let ingest = warp::post()
        .and(warp::path!(String / String / String))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ext::optional::<PeerCertificate>())
        .and(warp::header::optional::<String>("content-encoding"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_state(state))
        .then(ingest);
    ingest
        .or(warp::any().map(|| {
            text(
                StatusCode::NOT_FOUND,
                "not found: POST records to /flow/NAMESPACE/NAME or /clusterflow/NAMESPACE/NAME",
            )
        }))
        .unify()
}

#[allow(clippy::too_many_arguments)]
async fn ingest<S, B>(
    kind: String,
    namespace: String,
    name: String,
    authorization: Option<String>,
    peer: Option<PeerCertificate>,
    encoding: Option<String>,
    length: Option<u64>,
    body: S,
    state: Arc<State>,
) -> Reply
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let started = Instant::now();
    let request = IngestRequest {
        authorization,
        client_cert_verified: peer.is_some_and(|p| p.0),
        encoding,
        length,
    };
    let reply = ingest_inner(&kind, &namespace, &name, request, body, &state).await;
    let m = &state.relay.metrics;
    m.ingest_duration.observe(started.elapsed().as_secs_f64());
    m.ingest_requests
        .get_or_create(&CodeLabels {
            code: reply.status().as_u16(),
        })
        .inc();
    reply
}

/// What an ingest request says about itself, besides its path and body.
struct IngestRequest {
    authorization: Option<String>,
    client_cert_verified: bool,
    encoding: Option<String>,
    length: Option<u64>,
}

async fn ingest_inner<S, B>(
    kind: &str,
    namespace: &str,
    name: &str,
    request: IngestRequest,
    mut body: S,
    state: &State,
) -> Reply
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let metrics = &state.relay.metrics;
    let IngestRequest {
        authorization,
        client_cert_verified,
        encoding,
        length,
    } = request;
    if !state.ingest_auth.check(authorization.as_deref(), client_cert_verified) {
        metrics.error("ingest_unauthorized");
        let mut reply = text(
            StatusCode::UNAUTHORIZED,
            format!("unauthorized: this ingest port requires {:?}", state.ingest_auth),
        );
        reply
            .headers_mut()
            .insert("www-authenticate", "Basic realm=\"log-socket ingest\"".parse().unwrap());
        return reply;
    }
    let key = match TapKey::parse(kind, namespace, name) {
        Ok(key) => key,
        Err(e) => return text(StatusCode::NOT_FOUND, format!("no such tap: {e}")),
    };
    let Some(tap) = state.relay.tap(&key) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no tap open for {key}: nobody is listening"),
        );
    };
    // Overload: refuse rather than queue, so fluentd backs off and retries (503 is retryable).
    let Ok(_slot) = state.ingest_slots.try_acquire() else {
        metrics.error("ingest_overloaded");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many ingest requests at once; retry",
        );
    };
    let limit = state.relay.config.max_body_bytes;
    if length.is_some_and(|l| l > limit as u64) {
        return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes"));
    }
    let mut buf = BytesMut::with_capacity(length.unwrap_or(0).min(limit as u64) as usize);
    // A body that trickles in (slowloris) would hold an ingest slot forever: bound the whole read.
    let deadline = tokio::time::Instant::now() + state.relay.config.ingest_body_timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                metrics.error("ingest_body_timeout");
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within {:?}",
                        state.relay.config.ingest_body_timeout
                    ),
                );
            }
        };
        let mut chunk = match chunk {
            Ok(c) => c,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
        };
        if buf.len() + chunk.remaining() > limit {
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes"));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    let result = record::decode(buf.freeze(), encoding.as_deref(), limit).and_then(|b| record::parse_batch(&b));
    let records = match result {
        Ok(records) => records,
        Err(e) => {
            let code = match e {
                BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
                BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            };
            metrics.error("ingest_bad_body");
            return text(code, e.to_string());
        }
    };
    let labels = TapLabels::from(&key);
    let published = tap.publish(records);
    metrics
        .ingested_records
        .get_or_create(&labels)
        .inc_by(published.records);
    metrics.ingested_bytes.get_or_create(&labels).inc_by(published.bytes);
    metrics
        .dropped_records
        .get_or_create(&DropLabels {
            reason: DropReason::slow_client,
        })
        .inc_by(published.dropped);
    text(StatusCode::OK, format!("accepted {} records", published.records))
}

/// Routes of the API port.
pub fn api_routes(state: Arc<State>) -> impl Filter<Extract = (Reply,), Error = Infallible> + Clone {
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(warp::header::headers_cloned())
        .and(with_state(state.clone()))
        .then(metrics);
    let listen = warp::get()
        .and(warp::path!(String / String / String))
        .and(warp::query::<Vec<(String, String)>>())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(with_state(state))
        .then(listen);
    metrics
        .or(listen)
        .unify()
        .or(warp::any().map(|| {
            text(
                StatusCode::NOT_FOUND,
                "not found: connect a WebSocket to /flow/NAMESPACE/NAME or /clusterflow/NAMESPACE/NAME",
            )
        }))
        .unify()
}

/// The listener's token: `X-Authorization` (what the API server's service proxy lets through),
/// or `Authorization: Bearer`.
fn token(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(t) = get("x-authorization").filter(|t| !t.is_empty()) {
        return Some(t.strip_prefix("Bearer ").unwrap_or(t).trim().to_owned());
    }
    if let Some(t) = get("authorization")
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
    {
        return Some(t);
    }
    // Browsers cannot set headers on a WebSocket: they offer the token as a subprotocol.
    get("sec-websocket-protocol")?
        .split(',')
        .filter_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
        .find_map(|b64| crate::auth::base64_decode(b64, true))
        .and_then(|t| String::from_utf8(t).ok())
        .filter(|t| !t.is_empty())
}

/// Subprotocol entry carrying a token: this prefix, then the token in unpadded base64url
/// (the same scheme as the API server's `base64url.bearer.authorization.k8s.io.`).
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "base64url.bearer.logsocket.dev.";

async fn authenticate(headers: &HeaderMap, state: &State) -> Result<Identity, Reply> {
    let Some(token) = token(headers) else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "missing token: send it in the X-Authorization header (or Authorization: Bearer)",
        ));
    };
    state.authenticator.authenticate(&token).await.map_err(|e| match e {
        AuthError::Rejected(why) => text(StatusCode::UNAUTHORIZED, format!("unauthenticated: {why}")),
        AuthError::Unavailable(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot authenticate right now: {why}"),
        ),
    })
}

async fn metrics(headers: HeaderMap, state: Arc<State>) -> Reply {
    if let Err(reply) = authenticate(&headers, &state).await {
        return reply;
    }
    Response::builder()
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(state.relay.metrics.encode().into())
        .expect("valid response")
}

/// Query options of a listener.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) start: Start,
    pub(crate) filter: RecordFilter,
}

const QUERY_OPTIONS: &str = "tail, after, epoch, grep, exclude, pod, container, namespace";

pub(crate) fn parse_options(query: &[(String, String)]) -> Result<Options, String> {
    let mut filter = RecordFilter::default();
    let (mut tail, mut after, mut epoch) = (None, None, None);
    let number = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{k} must be a whole number, not {v:?}"))
    };
    for (k, v) in query {
        if v.len() > 1024 {
            return Err(format!("{k} is longer than 1024 characters"));
        }
        match k.as_str() {
            "tail" => tail = Some(number(k, v)?),
            "after" => after = Some(number(k, v)?),
            "epoch" => epoch = Some(number(k, v)?),
            "grep" => filter.grep = Some(RecordFilter::pattern("grep", v)?),
            "exclude" => filter.exclude = Some(RecordFilter::pattern("exclude", v)?),
            "pod" => filter.pod = Some(RecordFilter::pattern("pod", v)?),
            "container" => filter.container = Some(RecordFilter::pattern("container", v)?),
            "namespace" => filter.namespace = Some(v.clone()),
            other => return Err(format!("unknown query option {other:?}; supported: {QUERY_OPTIONS}")),
        }
    }
    let start = match (tail, after) {
        (Some(_), Some(_)) => return Err("use either tail or after, not both".into()),
        (Some(n), None) => Start::Tail(n as usize),
        (None, Some(seq)) => Start::After { seq, epoch },
        (None, None) if epoch.is_some() => return Err("epoch goes with after".into()),
        (None, None) => Start::Live,
    };
    Ok(Options { start, filter })
}

async fn listen(
    kind: String,
    namespace: String,
    name: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    state: Arc<State>,
) -> Reply {
    let identity = match authenticate(&headers, &state).await {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let key = match TapKey::parse(&kind, &namespace, &name) {
        Ok(key) => key,
        Err(e) => return text(StatusCode::NOT_FOUND, format!("no such tap: {e}")),
    };
    let options = match parse_options(&query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_upgrade = header("upgrade").eq_ignore_ascii_case("websocket")
        && header("connection").to_ascii_lowercase().contains("upgrade")
        && header("sec-websocket-version") == "13";
    let (Some(ws_key), Some(on_upgrade), true) = (headers.get("sec-websocket-key"), on_upgrade, is_upgrade) else {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            format!("this endpoint speaks WebSocket (subprotocol {SUBPROTOCOL}); use k8stail or a WebSocket client"),
        );
    };
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(TOKEN_SUBPROTOCOL_PREFIX))
        .collect();
    if !offered.is_empty() && !offered.contains(&SUBPROTOCOL) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("unsupported subprotocol {offered:?}; this relay speaks {SUBPROTOCOL}"),
        );
    }
    let session = SessionInfo {
        id: state.relay.next_id(),
        tap: key.clone(),
        identity: identity.clone(),
    };
    if let Err(e) = state.sessions.joined(&session).await {
        return match e {
            JoinError::Forbidden(why) => text(StatusCode::FORBIDDEN, format!("forbidden: {why}")),
            JoinError::Unavailable(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("cannot open the tap: {why}")),
        };
    }
    let tap = state.relay.open_tap(&key);
    let listener = Arc::new(Listener::new(
        session.id,
        identity,
        options.filter,
        state.relay.config.listener_queue,
    ));
    let accept = derive_accept_key(ws_key.as_bytes());
    let task_guard = state.listener_tasks.clone();
    let start = options.start;
    tokio::spawn(async move {
        let _guard = task_guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                // Listeners only send pongs and a close frame: a small read buffer (tungstenite
                // reserves 128 KiB by default) keeps a thousand idle listeners cheap.
                let config = WebSocketConfig::default()
                    .read_buffer_size(4 << 10)
                    .max_message_size(Some(64 << 10))
                    .max_frame_size(Some(64 << 10));
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                serve_listener(&state, &tap, listener, start, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
        state.sessions.left(&session).await;
    });
    let mut reply = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept);
    if !offered.is_empty() {
        reply = reply.header("sec-websocket-protocol", SUBPROTOCOL);
    }
    reply.body("".into()).expect("valid response")
}

/// Why a listener connection ended.
enum End {
    ClientGone,
    Shutdown,
    Idle,
    WriteFailed,
    ProtocolViolation,
}

async fn serve_listener<S>(state: &State, tap: &Arc<Tap>, listener: Arc<Listener>, start: Start, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let cfg = &state.relay.config;
    let metrics = &state.relay.metrics;
    let sent = metrics.sent_records.get_or_create(&TapLabels::from(&tap.key)).clone();
    metrics.listeners.inc();
    let (mut tx, mut rx) = ws.split();
    let mut stop = state.stop_listeners.clone();

    let attached = tap.attach(listener.clone(), start);
    tracing::info!(tap = %tap.key, listener = listener.id, user = %listener.identity.username, replayed = attached.backlog.len(), "listener connected");
    let mut first = vec![Message::Text(protocol::status_listening(
        &tap.key,
        tap.epoch,
        attached.first_seq,
        attached.last_seq,
        attached.backlog.len(),
    ))];
    if let Some(gap) = &attached.gap {
        first.push(Message::Text(protocol::gap(gap)));
    }
    if let Some(status) = attached.status {
        first.push(Message::Text(status));
    }
    let mut denied: BTreeMap<(String, String), u64> = BTreeMap::new();
    let backlog = authorize(state, &listener.identity, attached.backlog, &mut denied).await;
    let replayed = backlog.len() as u64;
    first.extend(backlog);

    let mut end = match send_all(&mut tx, first, cfg.write_timeout).await {
        Ok(()) => {
            sent.inc_by(replayed);
            None
        }
        Err(()) => Some(End::WriteFailed),
    };

    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_ping = Instant::now();
    while end.is_none() {
        tokio::select! {
            _ = listener.ready() => {
                let batch = listener.take();
                let mut out = Vec::with_capacity(batch.records.len() + 2);
                if let Some(status) = batch.status {
                    out.push(Message::Text(status));
                }
                if batch.dropped > 0 {
                    out.push(Message::Text(protocol::dropped(Some(batch.dropped), "slow_client")));
                }
                let records = authorize(state, &listener.identity, batch.records, &mut denied).await;
                let n = records.len() as u64;
                out.extend(records);
                match send_all(&mut tx, out, cfg.write_timeout).await {
                    Ok(()) => {
                        sent.inc_by(n);
                    }
                    Err(()) => end = Some(End::WriteFailed),
                }
            }
            _ = tick.tick() => {
                // Denials are aggregated: at most one notice per pod per second, never the content.
                let mut out: Vec<Message> = std::mem::take(&mut denied)
                    .into_iter()
                    .map(|((ns, pod), n)| Message::Text(protocol::denied(&ns, &pod, n)))
                    .collect();
                if last_heard.elapsed() > cfg.idle_timeout {
                    end = Some(End::Idle);
                } else if last_ping.elapsed() >= cfg.ping_interval {
                    out.push(Message::Ping(Default::default()));
                    last_ping = Instant::now();
                }
                if !out.is_empty() && send_all(&mut tx, out, cfg.write_timeout).await.is_err() {
                    end = Some(End::WriteFailed);
                }
            }
            msg = rx.next() => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => end = Some(End::ClientGone),
                    Some(Ok(Message::Binary(_))) => end = Some(End::ProtocolViolation),
                    // Pings are answered by tungstenite; text frames are reserved for future use.
                    Some(Ok(_)) => {}
                }
            }
            _ = until_true(&mut stop) => end = Some(End::Shutdown),
        }
    }

    tap.detach(listener.id);
    metrics.listeners.dec();
    let end = end.unwrap_or(End::ClientGone);
    let goodbye: Option<(Vec<Message>, u16, &str)> = match end {
        End::ClientGone | End::WriteFailed => None,
        End::Shutdown => {
            // Deliver what ingest accepted before the shutdown, then say goodbye.
            let batch = listener.take();
            let msgs = authorize(state, &listener.identity, batch.records, &mut denied).await;
            sent.inc_by(msgs.len() as u64);
            Some((msgs, close::GOING_AWAY, "relay shutting down"))
        }
        End::Idle => Some((
            vec![Message::Text(protocol::error(
                "idle",
                "no pong or message within the idle timeout",
            ))],
            close::POLICY,
            "idle timeout",
        )),
        End::ProtocolViolation => Some((
            vec![Message::Text(protocol::error(
                "protocol",
                "listeners must not send binary frames",
            ))],
            close::POLICY,
            "protocol violation",
        )),
    };
    if let Some((mut msgs, code, reason)) = goodbye {
        msgs.push(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })));
        let _ = send_all(&mut tx, msgs, cfg.write_timeout).await;
        // Wait briefly for the client's close reply so the TCP connection ends cleanly.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = rx.next().await {}
        })
        .await;
    }
    if matches!(end, End::WriteFailed) {
        metrics.error("listener_write_failed");
    }
    tracing::info!(tap = %tap.key, listener = listener.id, "listener disconnected");
}

/// The frames of the records `who` may see; the others are counted in `denied` by pod.
async fn authorize(
    state: &State,
    who: &Identity,
    entries: Vec<Arc<Entry>>,
    denied: &mut BTreeMap<(String, String), u64>,
) -> Vec<Message> {
    let mut out = Vec::with_capacity(entries.len());
    let mut n_denied = 0;
    for e in entries {
        let allowed = match state.authorizer.decide(who, &e.meta) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::Ask => state.authorizer.resolve(who, &e.meta).await,
        };
        if allowed {
            out.push(Message::Text(e.frame.clone()));
        } else {
            n_denied += 1;
            let key = (
                e.meta.namespace().unwrap_or_default().to_owned(),
                e.meta.pod().unwrap_or_default().to_owned(),
            );
            *denied.entry(key).or_default() += 1;
        }
    }
    state.relay.metrics.denied_records.inc_by(n_denied);
    out
}

async fn send_all<T>(tx: &mut T, msgs: Vec<Message>, timeout: Duration) -> Result<(), ()>
where
    T: futures::Sink<Message> + Unpin,
{
    if msgs.is_empty() {
        return Ok(());
    }
    let write = async {
        for m in msgs {
            tx.feed(m).await.map_err(|_| ())?;
        }
        tx.flush().await.map_err(|_| ())
    };
    tokio::time::timeout(timeout, write).await.map_err(|_| ())?
}

/// Bound sockets of the relay, each with optional TLS.
pub struct Sockets {
    pub ingest: TcpListener,
    pub api: TcpListener,
    pub ingest_tls: Option<Arc<ReloadingConfig>>,
    pub api_tls: Option<Arc<ReloadingConfig>>,
    /// How often TLS files are checked for changes.
    pub tls_reload_interval: Duration,
}

impl Sockets {
    /// Plain-text sockets (tests, or TLS terminated elsewhere).
    pub fn plain(ingest: TcpListener, api: TcpListener) -> Sockets {
        Sockets {
            ingest,
            api,
            ingest_tls: None,
            api_tls: None,
            tls_reload_interval: Duration::from_secs(10),
        }
    }
}

/// Serve `routes` on `socket`, over TLS when configured (reloading the certificate), until
/// `stop` flips.
async fn serve_port(
    socket: TcpListener,
    tls: Option<Arc<ReloadingConfig>>,
    reload_interval: Duration,
    routes: warp::filters::BoxedFilter<(Reply,)>,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let stopped = |mut rx: watch::Receiver<bool>| async move { until_true(&mut rx).await };
    let watcher = tls
        .clone()
        .map(|config| tokio::spawn(config.watch(reload_interval, stopped(stop.clone()))));
    crate::tls::serve(socket, tls, routes, header_timeout, stopped(stop)).await;
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
}

/// The pluggable parts of a relay.
pub struct Parts {
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
    pub sessions: Arc<dyn Sessions>,
    pub ingest_auth: IngestAuth,
}

/// Serve ingest and API until `shutdown` completes, then stop in order: ingest finishes the
/// requests in flight, listeners get what was accepted and a close frame, then return.
pub async fn serve(
    relay: Arc<Relay>,
    sockets: Sockets,
    parts: Parts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tasks_tx, mut tasks_rx) = mpsc::channel::<()>(1);
    let state = Arc::new(State {
        ingest_slots: Semaphore::new(relay.config.max_concurrent_ingest),
        relay: relay.clone(),
        authenticator: parts.authenticator,
        authorizer: parts.authorizer,
        sessions: parts.sessions,
        ingest_auth: parts.ingest_auth,
        stop_listeners: stop_rx,
        listener_tasks: tasks_tx,
    });

    let (trigger_tx, trigger_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = trigger_tx.send(true);
    });
    let reaper = {
        let relay = relay.clone();
        let mut stop = trigger_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => { relay.reap(Instant::now()); }
                    _ = until_true(&mut stop) => break,
                }
            }
        })
    };

    let ingest = serve_port(
        sockets.ingest,
        sockets.ingest_tls,
        sockets.tls_reload_interval,
        ingest_routes(state.clone()).boxed(),
        relay.config.header_timeout,
        trigger_rx.clone(),
    );
    let api = tokio::spawn(serve_port(
        sockets.api,
        sockets.api_tls,
        sockets.tls_reload_interval,
        api_routes(state.clone()).boxed(),
        relay.config.header_timeout,
        trigger_rx.clone(),
    ));
    ingest.await;
    // Ingest has drained: everything accepted is queued for listeners. Now let them go.
    let _ = stop_tx.send(true);
    let _ = api.await;
    let _ = reaper.await;
    drop(state);
    // Every listener task holds a sender; recv() returns None once the last one finished.
    let _ = tasks_rx.recv().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn query_options_are_validated_with_clear_messages() {
        assert_eq!(parse_options(&q(&[])).unwrap().start, Start::Live);
        assert_eq!(parse_options(&q(&[("tail", "5")])).unwrap().start, Start::Tail(5));
        assert_eq!(
            parse_options(&q(&[("after", "9"), ("epoch", "3")])).unwrap().start,
            Start::After { seq: 9, epoch: Some(3) }
        );
        let err = |p: &[(&str, &str)]| parse_options(&q(p)).unwrap_err();
        assert_eq!(err(&[("tail", "x")]), "tail must be a whole number, not \"x\"");
        assert_eq!(
            err(&[("tail", "1"), ("after", "2")]),
            "use either tail or after, not both"
        );
        assert!(err(&[("follow", "1")]).starts_with("unknown query option \"follow\""));
        assert!(err(&[("grep", "(")]).starts_with("invalid grep pattern"));
    }

    #[test]
    fn the_token_comes_from_x_authorization_or_a_bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(token(&h).as_deref(), Some("abc"));
        h.insert("x-authorization", "xyz".parse().unwrap());
        assert_eq!(
            token(&h).as_deref(),
            Some("xyz"),
            "X-Authorization wins (the proxy strips Authorization)"
        );
    }
}
