//! The listener handler: authenticate, check the query, register the session, upgrade to
//! WebSocket, then serve the tap's records (authorized per record) until either side ends.

use super::sampling::{self, Sampling};
use super::{authenticate, text, Reply, State, TOKEN_SUBPROTOCOL_PREFIX};
use crate::auth::{Decision, Identity};
use crate::protocol::{self, close, Filter as RecordFilter, ListenQuery, Start, TapKey, OPTIONS_HEADER, SUBPROTOCOL};
use crate::relay::listener::Listener;
use crate::relay::metrics::TapLabels;
use crate::relay::record::Entry;
use crate::relay::tap::{Gap, Tap};
use crate::relay::{JoinError, SessionInfo};
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use warp::http::{HeaderMap, Response, StatusCode};

/// Query options of a listener, read and compiled.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) start: Start,
    pub(crate) filter: RecordFilter,
    /// `rate`: records per second, sampled.
    pub(crate) rate: Option<u32>,
}

/// The options of the URL's query string, else of [`OPTIONS_HEADER`] (URL-encoded the same way).
fn options_header(query: Vec<(String, String)>, headers: &HeaderMap) -> Result<Vec<(String, String)>, String> {
    ListenQuery::pairs_of(query, headers.get(OPTIONS_HEADER).map(|v| v.as_bytes()))
}

/// Read a listener's options and compile its filters.
pub(crate) fn parse_options(query: &[(String, String)]) -> Result<Options, String> {
    let q = ListenQuery::from_pairs(query)?;
    Ok(Options {
        start: q.start,
        filter: q.filter.compile()?,
        rate: q.rate,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn listen(
    kind: String,
    namespace: String,
    name: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    peer: Option<crate::auth::limit::PeerAddr>,
    on_upgrade: Option<OnUpgrade>,
    state: Arc<State>,
) -> Reply {
    let identity = match authenticate(&headers, peer, &state).await {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let key = match TapKey::parse(&kind, &namespace, &name) {
        Ok(key) => key,
        Err(e) => return text(StatusCode::NOT_FOUND, format!("no such tap: {e}")),
    };
    let query = match options_header(query, &headers) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let options = match parse_options(&query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (accept, subprotocol) = match handshake(&headers) {
        Ok(h) => h,
        Err((code, why)) => return text(code, why),
    };
    let Some(on_upgrade) = on_upgrade else {
        return upgrade_required();
    };
    // A slot among the user's listeners, held until the listener is gone.
    let Some(slot) = UserSlot::take(&state, &identity.username) else {
        state.relay.metrics.error("listener_limit");
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many: {} has {} listeners open on this relay (--max-listeners-per-user); close some",
                identity.username, state.relay.config.max_listeners_per_user
            ),
        );
    };
    let session = SessionInfo {
        id: state.relay.next_id(),
        tap: key.clone(),
        identity: identity.clone(),
        rate: options.rate,
    };
    // From here until the listener's task owns it, a dropped request (the client gone while
    // the session registers or the bus is joined: hyper drops this future) still leaves.
    let mut leave = Leave {
        state: state.clone(),
        session: Some(session.clone()),
    };
    if let Err(e) = state.sessions.joined(&session).await {
        return match e {
            JoinError::Forbidden(why) => text(StatusCode::FORBIDDEN, format!("forbidden: {why}")),
            JoinError::Unavailable(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("cannot open the tap: {why}")),
            JoinError::TooMany(why) => text(StatusCode::TOO_MANY_REQUESTS, format!("too many: {why}")),
        };
    }
    let tap = state.relay.open_tap(&key);
    if let crate::relay::bus::Bus::Nats(nats) = &state.relay.bus {
        // The tap's stream, followed into the local tap, before the listener attaches: a
        // resume then finds every record the stream retains.
        if let Err(e) = nats.follow(&key, &tap).await {
            drop(slot);
            leave.session = None;
            state.sessions.left(&session).await;
            state.relay.metrics.error("listener_bus_unavailable");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot open the tap: the bus is unavailable; try again later ({e})"),
            );
        }
    }
    let listener = Arc::new(Listener::new(
        session.id,
        identity,
        options.filter,
        state.relay.config.listener_queue,
    ));
    let task_guard = state.listener_tasks.clone();
    let (start, rate) = (options.start, options.rate);
    // The task leaves when the listener is done.
    leave.session = None;
    // Every line of this listener's life names its flow and connection.
    let span = tracing::info_span!(
        "listener",
        flow_kind = tap.key.kind.path_segment(),
        namespace = %tap.key.namespace,
        flow = %tap.key.name,
        listener = listener.id
    );
    let serve = async move {
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
                serve_listener(&state, &tap, listener, start, rate, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
        // The slot counts open streams: free it before deregistering (an API call).
        drop(slot);
        state.sessions.left(&session).await;
    };
    tokio::spawn(tracing::Instrument::instrument(serve, span));
    let mut reply = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept);
    if subprotocol {
        reply = reply.header("sec-websocket-protocol", SUBPROTOCOL);
    }
    reply.body("".into()).expect("valid response")
}

/// Leaves the session when dropped while still holding it.
struct Leave {
    state: Arc<State>,
    session: Option<SessionInfo>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let state = self.state.clone();
            tokio::spawn(async move { state.sessions.left(&session).await });
        }
    }
}

fn upgrade_required() -> Reply {
    let (code, why) = not_websocket();
    text(code, why)
}

fn not_websocket() -> (StatusCode, String) {
    (
        StatusCode::UPGRADE_REQUIRED,
        format!("this endpoint speaks WebSocket (subprotocol {SUBPROTOCOL}); use k8stail or a WebSocket client"),
    )
}

/// Check a WebSocket upgrade request; returns the `Sec-WebSocket-Accept` value and whether to
/// answer with the subprotocol (when the client offered one; token entries do not count).
fn handshake(headers: &HeaderMap) -> Result<(String, bool), (StatusCode, String)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_upgrade = header("upgrade").eq_ignore_ascii_case("websocket")
        && header("connection").to_ascii_lowercase().contains("upgrade")
        && header("sec-websocket-version") == "13";
    let (Some(ws_key), true) = (headers.get("sec-websocket-key"), is_upgrade) else {
        return Err(not_websocket());
    };
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(TOKEN_SUBPROTOCOL_PREFIX))
        .collect();
    if !offered.is_empty() && !offered.contains(&SUBPROTOCOL) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("unsupported subprotocol {offered:?}; this relay speaks {SUBPROTOCOL}"),
        ));
    }
    Ok((derive_accept_key(ws_key.as_bytes()), !offered.is_empty()))
}

/// Why a listener connection ended.
enum End {
    ClientGone,
    Shutdown,
    Idle,
    WriteFailed,
    ProtocolViolation,
}

async fn serve_listener<S>(
    state: &State,
    tap: &Arc<Tap>,
    listener: Arc<Listener>,
    start: Start,
    rate: Option<u32>,
    ws: WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let cfg = &state.relay.config;
    let metrics = &state.relay.metrics;
    let sent = metrics.sent_records.get_or_create(&TapLabels::from(&tap.key)).clone();
    metrics.listeners.inc();
    let (mut tx, mut rx) = ws.split();
    let stop = state.stop_listeners.clone();

    let mut denied: u64 = 0;
    // Every record goes through the listener's rate, if it has one (or its FlowTap sets one):
    // the first ones too, once taken (the tail is taken before sampling; a resume is sampled
    // like the stream it resumes).
    let mut sampling = Sampling::new(rate, state.relay.listener_rate(&tap.key));
    let (mut first, backlog) = greeting(state, tap, &listener, start, &mut denied).await;
    // The status frames go at once; the replayed records through the rate.
    let mut replay = vec![];
    let replayed = sampling.pass(backlog, &mut replay);
    first.extend(replay);
    let mut end = match send_all(&mut tx, first, cfg.write_timeout).await {
        Ok(()) => {
            sent.inc_by(replayed);
            None
        }
        Err(()) => Some(End::WriteFailed),
    };

    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut window = tokio::time::interval(sampling::WINDOW);
    window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    while end.is_none() {
        tokio::select! {
            _ = listener.ready() => {
                let (mut out, entries) = queued(state, &listener, &mut denied).await;
                let n = sampling.pass(entries, &mut out);
                match send_all(&mut tx, out, cfg.write_timeout).await {
                    Ok(()) => {
                        sent.inc_by(n);
                    }
                    Err(()) => end = Some(End::WriteFailed),
                }
            }
            _ = window.tick(), if sampling.active() => {
                let mut out = vec![];
                let n = sampling.close(state.relay.listener_rate(&tap.key), &mut out);
                match send_all(&mut tx, out, cfg.write_timeout).await {
                    Ok(()) => {
                        sent.inc_by(n);
                    }
                    Err(()) => end = Some(End::WriteFailed),
                }
            }
            _ = tick.tick() => {
                sampling.follow(state.relay.listener_rate(&tap.key));
                // Denials are aggregated: at most one count per second, never the content, nor
                // which pods or namespaces they came from.
                let mut out: Vec<Message> = match std::mem::take(&mut denied) {
                    0 => vec![],
                    n => vec![Message::Text(protocol::denied(n))],
                };
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
            _ = stop.cancelled() => end = Some(End::Shutdown),
        }
    }

    tap.detach(listener.id);
    metrics.listeners.dec();
    let end = end.unwrap_or(End::ClientGone);
    if let Some((mut msgs, records, code, reason)) = goodbye(state, &listener, &end, &mut denied, &mut sampling).await {
        sent.inc_by(records);
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

/// What the listener's queue holds: as frames the tap's latest status and a drop report when
/// the listener fell behind; then the records it may see and wants.
async fn queued(state: &State, listener: &Listener, denied: &mut u64) -> (Vec<Message>, Vec<Arc<Entry>>) {
    let batch = listener.take();
    // Frames only: the records come back apart (through the listener's rate).
    let mut out = Vec::with_capacity(2 + batch.notices.len());
    out.extend(batch.notices.into_iter().map(Message::Text));
    if let Some(status) = batch.status {
        out.push(Message::Text(status));
    }
    if batch.dropped > 0 {
        out.push(Message::Text(protocol::dropped(Some(batch.dropped), "slow_client")));
    }
    let allowed = authorized(state, &listener.identity, batch.records, denied).await;
    let wanted = allowed.into_iter().filter(|e| listener.wants(&e.meta)).collect();
    (out, wanted)
}

/// Attach the listener to its tap; the first frames it gets: the `listening` status, a gap
/// report when its resume point is lost, the tap's latest status; and the replayed records it
/// may see that pass its filters (to go through its rate). `replayed` in the status counts the
/// replayed records it may see, before its filters: a count its filters shaped could only tell
/// it about records it may read anyway, but two listeners that differ only in filters get the
/// same frames.
async fn greeting(
    state: &State,
    tap: &Tap,
    listener: &Arc<Listener>,
    start: Start,
    denied: &mut u64,
) -> (Vec<Message>, Vec<Arc<Entry>>) {
    let attached = tap.attach(listener.clone(), start);
    let allowed = authorized(state, &listener.identity, attached.backlog, denied).await;
    tracing::info!(tap = %tap.key, listener = listener.id, user = %listener.identity.username, replayed = allowed.len(), "listener connected");
    let mut first = vec![Message::Text(protocol::status_listening(
        &tap.key.to_string(),
        tap.epoch(),
        attached.first_seq,
        attached.last_seq,
        allowed.len(),
    ))];
    if let Some(gap) = &attached.gap {
        let gap = match gap {
            Gap::OutOfReplay { count } => protocol::dropped(Some(*count), "out_of_replay"),
            Gap::TapRestarted => protocol::dropped(None, "tap_restarted"),
        };
        first.push(Message::Text(gap));
    }
    if let Some(status) = attached.status {
        first.push(Message::Text(status));
    }
    first.extend(attached.notices.into_iter().map(Message::Text));
    let backlog = allowed.into_iter().filter(|e| listener.wants(&e.meta)).collect();
    (first, backlog)
}

/// What the relay says before closing: on shutdown the records ingest accepted before it, on a
/// policy end an error frame; nothing when the client is gone. With how many of the frames are
/// records, the close code and the reason.
async fn goodbye(
    state: &State,
    listener: &Listener,
    end: &End,
    denied: &mut u64,
    sampling: &mut Sampling,
) -> Option<(Vec<Message>, u64, u16, &'static str)> {
    match end {
        End::ClientGone | End::WriteFailed => None,
        End::Shutdown => {
            // What was accepted, through the listener's rate: the last window closed now.
            let (mut msgs, wanted) = queued(state, listener, denied).await;
            let mut records = sampling.pass(wanted, &mut msgs);
            records += sampling.drain(&mut msgs);
            Some((msgs, records, close::GOING_AWAY, "relay shutting down"))
        }
        // What the rate's windows hold goes first (nothing left unaccounted), then the error.
        End::Idle => {
            let mut msgs = vec![];
            let records = sampling.drain(&mut msgs);
            msgs.push(Message::Text(protocol::error(
                "idle",
                "no pong or message within the idle timeout",
            )));
            Some((msgs, records, close::POLICY, "idle timeout"))
        }
        End::ProtocolViolation => {
            let mut msgs = vec![];
            let records = sampling.drain(&mut msgs);
            msgs.push(Message::Text(protocol::error(
                "protocol",
                "listeners must not send binary frames",
            )));
            Some((msgs, records, close::POLICY, "protocol violation"))
        }
    }
}

/// The records `who` may see; the others are counted in `denied`.
async fn authorized(state: &State, who: &Identity, entries: Vec<Arc<Entry>>, denied: &mut u64) -> Vec<Arc<Entry>> {
    let mut out = Vec::with_capacity(entries.len());
    let mut n_denied = 0;
    for e in entries {
        let allowed = match state.authorizer.decide(who, &e.meta) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::Ask => state.authorizer.resolve(who, &e.meta).await,
        };
        if allowed {
            out.push(e);
        } else {
            n_denied += 1;
        }
    }
    *denied += n_denied;
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

/// One of a user's listeners on this relay (see `RelayConfig::max_listeners_per_user`).
struct UserSlot {
    state: Arc<State>,
    user: String,
}

impl UserSlot {
    fn take(state: &Arc<State>, user: &str) -> Option<UserSlot> {
        let mut open = state.listeners_per_user.lock().unwrap();
        let n = open.entry(user.to_owned()).or_default();
        if *n >= state.relay.config.max_listeners_per_user {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            state: state.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.state.listeners_per_user.lock().unwrap();
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_come_from_the_url_else_from_the_header_the_service_proxy_keeps() {
        let mut h = HeaderMap::new();
        h.insert(OPTIONS_HEADER, "tail=5&grep=a%20b".parse().unwrap());
        let from_header = options_header(vec![], &h).unwrap();
        assert_eq!(
            from_header,
            [
                ("tail".to_owned(), "5".to_owned()),
                ("grep".to_owned(), "a b".to_owned())
            ]
        );
        let url = vec![("tail".to_owned(), "1".to_owned())];
        assert_eq!(options_header(url.clone(), &h).unwrap(), url, "the URL wins");
        assert_eq!(options_header(vec![], &HeaderMap::new()).unwrap(), vec![]);
        // The header's options are checked like the URL's.
        h.insert(OPTIONS_HEADER, "tail=x".parse().unwrap());
        let options = options_header(vec![], &h).unwrap();
        assert!(parse_options(&options).unwrap_err().contains("tail"));
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
}
