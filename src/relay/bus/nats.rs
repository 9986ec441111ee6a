//! The `nats` bus: a NATS JetStream stream per tap, shared by every relay replica.
//!
//! - Stream `LOGSOCKET_{flow|clusterflow}_NS_NAME` (a `.` of the name written `_`, which no
//!   Kubernetes name holds, so the mapping is injective) on subject
//!   `logsocket.{flow|clusterflow}.NS.NAME`, file storage, limits from the replay settings
//!   (`--replay-records` messages, `--replay-bytes`, oldest discarded) and `--nats-max-age`.
//! - One message per accepted ingest batch (several, in order, when it is larger than the
//!   server's `max_payload`): the records as a JSON array, byte for byte as fluentd sent them,
//!   LZ4-compressed (header `Logsocket-Encoding: lz4`; a message without it is a plain array).
//!   nats-server's cost is per byte stored and delivered, and log records compress several
//!   times over, so this is what lets the bus keep up (BENCHMARKS.md). Ingest answers only
//!   after JetStream stored every message.
//! - Record numbers: `stream sequence × 2^20 + position in the batch` (a batch holds fewer than
//!   2^20 records: `--max-records-per-request`), increasing, the same on every replica; not
//!   contiguous. The tap's epoch is the stream's creation time, so a resume tells a recreated
//!   stream apart (`tap_restarted`).
//! - A replica with listeners of a tap follows its stream with one ordered consumer, from the
//!   oldest retained message, into the local tap (its replay buffer mirrors the stream), and
//!   lets a listener attach once it has caught up, so a resume finds every retained record.

use super::follow::{follow_stream, Following};
use super::message::{split, ENCODING, LZ4};
use super::seal::{BusKeys, MSG_ID, SEAL};
use crate::protocol::TapKey;
use crate::relay::record::Record;
use crate::relay::tap::{ReplayLimits, Tap};
use async_nats::jetstream::{self, stream};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Records of one batch (the low bits of a record number).
pub const BATCH_BITS: u32 = 20;

/// How to reach NATS (`--nats-*`).
#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub url: String,
    /// A NATS credentials file (JWT and NKey seed), as `nsc` writes it.
    pub credentials: Option<PathBuf>,
    /// CA certificate(s) to verify the NATS server with (TLS is then required).
    pub ca_file: Option<PathBuf>,
    /// How long a stream keeps a record at most.
    pub max_age: Duration,
    /// The keys that seal and open messages (required: [`NatsBus::connect`] refuses without).
    pub keys: Option<Arc<BusKeys>>,
    /// A message larger than this once decompressed is refused (as ingest refuses a body).
    pub max_body_bytes: usize,
    /// A message of more records than this is refused (as ingest refuses a request).
    pub max_records: usize,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: "nats://127.0.0.1:4222".into(),
            credentials: None,
            ca_file: None,
            max_age: Duration::from_secs(3600),
            keys: None,
            max_body_bytes: 16 << 20,
            max_records: 100_000,
        }
    }
}

/// What the bus counts into the relay's metrics.
#[derive(Default, Clone)]
pub struct BusCounters {
    /// Records a slow listener lost (`slow_client`), as ingest does with the embedded bus.
    pub slow_client: prometheus_client::metrics::counter::Counter,
    /// Messages that did not open or were too large (`bus_invalid`).
    pub invalid: prometheus_client::metrics::counter::Counter,
    /// Publish time, follower lag, messages JetStream discarded unread.
    pub timing: crate::relay::metrics::BusMetrics,
}

/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
#[error("NATS: {0}")]
pub struct BusError(pub String);

pub(super) fn err(e: impl std::fmt::Display) -> BusError {
    BusError(e.to_string())
}

/// A stored batch, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// In the tap's stream.
    Yes,
    /// No stream for the tap: nobody opened it (no listener, no FlowTap).
    NoTap,
}

struct Follower {
    /// The local tap it feeds (a tap closed and opened again is another one).
    tap: Weak<Tap>,
    task: tokio::task::JoinHandle<()>,
    caught_up: watch::Receiver<bool>,
}

/// A connection to NATS and the taps this replica follows.
pub struct NatsBus {
    js: jetstream::Context,
    client: async_nats::Client,
    limits: ReplayLimits,
    max_age: Duration,
    followers: tokio::sync::Mutex<HashMap<TapKey, Follower>>,
    counters: BusCounters,
    keys: Arc<BusKeys>,
    /// Largest message once decompressed, most records in one (see [`NatsOptions`]).
    max_body_bytes: usize,
    max_records: usize,
    /// Whether the connection to NATS is up, as the client reports it; followers tell their
    /// listeners when it changes.
    connected: watch::Receiver<bool>,
    /// Taps a FlowTap names (as this relay's tap tracking sees them): their streams must exist,
    /// so a stream found missing is created again, never taken for "nobody listens".
    pinned: Arc<std::sync::Mutex<std::collections::HashSet<TapKey>>>,
    /// One lock per tap for creating and removing its stream, so pin and unpin apply in order
    /// and the last state wins.
    stream_locks: std::sync::Mutex<HashMap<TapKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl NatsBus {
    /// Connect (retrying in the background if NATS is not up yet).
    pub async fn connect(
        options: &NatsOptions,
        limits: ReplayLimits,
        counters: BusCounters,
    ) -> Result<NatsBus, BusError> {
        let Some(keys) = options.keys.clone() else {
            return Err(BusError(
                "no bus key: bus messages are sealed, give --bus-key-file FILE (the same on every replica)".into(),
            ));
        };
        let (up, connected) = watch::channel(false);
        let mut connect = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Connected => {
                        up.send_replace(true);
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        up.send_replace(false);
                    }
                    _ => {}
                }
                async {}
            })
            .name("log-socket")
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect();
        if let Some(path) = &options.credentials {
            connect = connect
                .credentials_file(path)
                .await
                .map_err(|e| BusError(format!("cannot read the credentials file {}: {e}", path.display())))?;
        }
        // A user and password in the URL (async-nats reads them only with a bare connect).
        if let Some((user, password)) = userinfo(&options.url) {
            connect = connect.user_and_password(user, password);
        }
        if let Some(ca) = &options.ca_file {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = connect.connect(options.url.as_str()).await.map_err(err)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        Ok(NatsBus {
            js,
            client,
            limits,
            max_age: options.max_age,
            followers: Default::default(),
            counters,
            keys,
            max_body_bytes: options.max_body_bytes,
            // Record numbers give a message 2^BATCH_BITS of them.
            max_records: options.max_records.clamp(1, (1 << BATCH_BITS) - 1),
            connected,
            pinned: Default::default(),
            stream_locks: Default::default(),
        })
    }

    /// Record whether a FlowTap names `key`'s flow, then bring its stream in line with what
    /// is recorded at that moment (created while pinned; removed, if no relay follows it, when
    /// not), under the tap's lock: events applied out of order cannot leave a pinned tap
    /// without its stream.
    pub async fn pin(&self, key: &TapKey, pinned: bool) -> Result<(), BusError> {
        self.set_pinned(key, pinned);
        loop {
            match self.sync_stream(key).await? {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Ok(()),
            }
        }
    }

    /// Bring `key`'s stream in line with whether it is pinned now (see [`NatsBus::pin`]).
    /// `Some(wait)`: a stream to remove was in use too recently; look again after `wait`.
    pub async fn sync_stream(&self, key: &TapKey) -> Result<Option<Duration>, BusError> {
        let lock = self
            .stream_locks
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if self.is_pinned(key) {
            self.ensure_stream(key).await.map(|_| None)
        } else {
            self.remove_unfollowed_stream(key).await
        }
    }

    /// Record whether a FlowTap names `key`'s flow (see [`NatsBus::pin`]).
    pub fn set_pinned(&self, key: &TapKey, pinned: bool) {
        let mut set = self.pinned.lock().unwrap();
        match pinned {
            true => set.insert(key.clone()),
            false => set.remove(key),
        };
    }

    /// Whether a FlowTap names `key`'s flow.
    pub fn is_pinned(&self, key: &TapKey) -> bool {
        self.pinned.lock().unwrap().contains(key)
    }

    /// Whether the connection to NATS is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn subject(key: &TapKey) -> String {
        format!("logsocket.{}.{}.{}", key.kind.path_segment(), key.namespace, key.name)
    }

    pub(super) fn stream_name(key: &TapKey) -> String {
        format!(
            "LOGSOCKET_{}_{}_{}",
            key.kind.path_segment(),
            key.namespace,
            key.name.replace('.', "_")
        )
    }

    /// The stream `name`, if it exists.
    async fn stream(&self, name: &str) -> Result<Option<stream::Stream>, BusError> {
        match self.js.get_stream(name).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// The name of the tap's stream and its first and last sequence, if the stream exists.
    /// Another stream that captures `key`'s subject (someone made it with NATS open to them),
    /// if one does: the tap's own stream cannot exist then, and ingest answers 503.
    pub async fn captured_by(&self, key: &TapKey) -> Option<String> {
        let ours = Self::stream_name(key);
        match self.js.stream_by_subject(Self::subject(key)).await {
            Ok(name) if name != ours => Some(name),
            _ => None,
        }
    }

    pub async fn stream_state(&self, key: &TapKey) -> Result<Option<(String, u64, u64)>, BusError> {
        let name = Self::stream_name(key);
        let Some(mut stream) = self.stream(&name).await? else {
            return Ok(None);
        };
        let info = stream.info().await.map_err(err)?;
        Ok(Some((name, info.state.first_sequence, info.state.last_sequence)))
    }

    /// Delete the tap's stream if no relay follows it (no consumer) and it has been idle for
    /// [`STREAM_GRACE`] (made, or written to, longer ago): another relay may already see a new
    /// FlowTap for the flow (its watch ahead of this one's) and be storing records or starting
    /// to follow, and those must not go with the stream. `Some(wait)`: look again then. A relay
    /// still following keeps the stream until its own listeners are gone and it ages out.
    pub async fn remove_unfollowed_stream(&self, key: &TapKey) -> Result<Option<Duration>, BusError> {
        let name = Self::stream_name(key);
        let Some(mut stream) = self.stream(&name).await? else {
            return Ok(None);
        };
        let info = stream.info().await.map_err(err)?;
        if info.state.consumer_count > 0 {
            return Ok(None);
        }
        let used = info.created.max(info.state.last_timestamp);
        let idle = time::OffsetDateTime::now_utc() - used;
        if idle < STREAM_GRACE {
            let wait = (STREAM_GRACE - idle).try_into().unwrap_or(STREAM_GRACE_STD);
            return Ok(Some(wait));
        }
        match self.js.delete_stream(&name).await {
            Ok(_) => {
                tracing::info!(tap = %key, stream = %name, "removed the tap's stream: no FlowTap names the flow");
                Ok(None)
            }
            Err(e) if e.to_string().contains("not found") => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// The tap's stream, created if needed (a listener joins, or a FlowTap exists).
    pub async fn ensure_stream(&self, key: &TapKey) -> Result<stream::Stream, BusError> {
        self.js
            .get_or_create_stream(self.stream_config(key))
            .await
            .map_err(|e| captured(key, e))
    }

    /// How a tap's stream is made.
    fn stream_config(&self, key: &TapKey) -> stream::Config {
        stream::Config {
            name: Self::stream_name(key),
            subjects: vec![Self::subject(key)],
            max_messages: self.limits.records.max(1) as i64,
            max_bytes: self.limits.bytes.max(1) as i64,
            max_age: self.max_age,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        }
    }

    /// Store one accepted batch in the tap's stream; `NoTap` when no stream exists for it and
    /// no FlowTap names the flow. A pinned tap whose stream is missing (removed by a relay
    /// that saw the FlowTap go before this one saw it come back, or lost by NATS) gets it
    /// created again, and the batch is stored there: never discarded as "nobody listens".
    pub async fn publish(&self, key: &TapKey, records: &[Record]) -> Result<Stored, BusError> {
        let started = std::time::Instant::now();
        let stored = self.publish_retried(key, records).await;
        if matches!(stored, Ok(Stored::Yes)) {
            self.counters
                .timing
                .publish_duration
                .observe(started.elapsed().as_secs_f64());
        }
        stored
    }

    async fn publish_retried(&self, key: &TapKey, records: &[Record]) -> Result<Stored, BusError> {
        match self.publish_once(key, records).await? {
            Stored::NoTap if self.is_pinned(key) => {
                self.ensure_stream(key).await?;
                match self.publish_once(key, records).await? {
                    Stored::NoTap => Err(BusError(format!("the stream of {key} could not be created"))),
                    stored => Ok(stored),
                }
            }
            stored => Ok(stored),
        }
    }

    /// One try of [`NatsBus::publish`]. A batch larger than the server's `max_payload` goes as
    /// several messages, in order.
    async fn publish_once(&self, key: &TapKey, records: &[Record]) -> Result<Stored, BusError> {
        // While disconnected the client would buffer the message and send it on reconnect,
        // after this request was answered 503 and fluentd retried it: a duplicate. Refused
        // instead. (A connection lost while a publish waits for its ack can still store a
        // batch answered 503: at least once, in that window only.)
        if !self.connected() {
            return Err(BusError("not connected to NATS".into()));
        }
        let limit = self.client.server_info().max_payload.max(1024);
        // Room for lz4's worst case on incompressible records, the seal's time, nonce and tag,
        // and the headers (NATS counts them against max_payload too).
        let messages = split(records, limit - limit / 255 - 512)?;
        // Sent one after the other on one connection (JetStream keeps their order), then the
        // acknowledgements awaited, in order.
        let mut acks = Vec::with_capacity(messages.len());
        let subject = Self::subject(key);
        for body in messages {
            let compressed = lz4_flex::block::compress_prepend_size(&body);
            let sealed = self.keys.seal(&subject, LZ4, &compressed);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ENCODING, LZ4);
            headers.insert(SEAL, sealed.seal.as_str());
            headers.insert(MSG_ID, sealed.id.as_str());
            match self
                .js
                .publish_with_headers(subject.clone(), headers, sealed.payload.into())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => return Err(err(e)),
            }
        }
        let ours = Self::stream_name(key);
        for ack in acks {
            match ack.await {
                Ok(ack) if ack.stream == ours => {}
                // Stored, but in a stream someone else made to capture the subject (NATS open
                // to others, or misconfigured): not delivered to anyone here. Said, not hidden.
                Ok(ack) => {
                    return Err(BusError(format!(
                        "the subject of {key} is captured by NATS stream {:?}, not {ours:?}: delete that stream (nats stream rm), and lock NATS to log-socket (docs/security.md#the-nats-bus)",
                        ack.stream
                    )))
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => return Ok(Stored::NoTap),
                Err(e) => return Err(err(e)),
            }
        }
        Ok(Stored::Yes)
    }

    /// Follow the tap's stream into `tap` (one consumer per tap on this replica), and return
    /// once everything the stream held when asked is in the tap.
    pub async fn follow(&self, key: &TapKey, tap: &Arc<Tap>) -> Result<(), BusError> {
        let mut caught_up = {
            let mut followers = self.followers.lock().await;
            match followers.get(key) {
                Some(f) if !f.task.is_finished() && Weak::ptr_eq(&f.tap, &Arc::downgrade(tap)) => f.caught_up.clone(),
                other => {
                    if let Some(old) = other {
                        old.task.abort();
                    }
                    let mut stream = self.ensure_stream(key).await?;
                    let info = stream.info().await.map_err(err)?;
                    let epoch = epoch_of(info);
                    if tap.epoch() != epoch {
                        tap.reset(epoch);
                    }
                    let (tx, rx) = watch::channel(info.state.messages == 0);
                    let task = tokio::spawn(follow_stream(Following {
                        js: self.js.clone(),
                        pinned: self.pinned.clone(),
                        stream_config: self.stream_config(key),
                        key: key.clone(),
                        tap: Arc::downgrade(tap),
                        next: 0,
                        last_at_start: info.state.last_sequence,
                        caught_up: tx,
                        counters: self.counters.clone(),
                        keys: self.keys.clone(),
                        max_body_bytes: self.max_body_bytes,
                        max_records: self.max_records,
                        recent: Default::default(),
                        connected: self.connected.clone(),
                        down: false,
                    }));
                    followers.insert(
                        key.clone(),
                        Follower {
                            tap: Arc::downgrade(tap),
                            task,
                            caught_up: rx.clone(),
                        },
                    );
                    rx
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), caught_up.wait_for(|c| *c))
            .await
            .map_err(|_| BusError("the tap's stream did not catch up within 10s".into()))?
            .map_err(|_| BusError("following the tap's stream stopped".into()))?;
        Ok(())
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        if let Ok(followers) = self.followers.try_lock() {
            for f in followers.values() {
                f.task.abort();
            }
        }
    }
}

/// The user and password of the first URL of `urls` (`nats://USER:PASSWORD@host:port,...`).
fn userinfo(urls: &str) -> Option<(String, String)> {
    let first = urls.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    // The host follows the last `@`; a password may hold one (percent-encoded or not).
    let (info, _) = rest.rsplit_once('@')?;
    let (user, password) = info.split_once(':').unwrap_or((info, ""));
    Some((percent_decoded(user), percent_decoded(password)))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error making `key`'s stream, saying so when another stream captures its subject.
pub(super) fn captured(key: &TapKey, e: impl std::fmt::Display) -> BusError {
    let text = e.to_string();
    if text.contains("overlap") {
        tracing::error!(tap = %key, error = %text, "another NATS stream captures the tap's subject");
        return BusError(format!(
            "another NATS stream captures the subject of {key} ({text}): delete it (nats stream ls; nats stream rm NAME), and lock NATS to log-socket (docs/security.md#the-nats-bus)"
        ));
    }
    BusError(text)
}

pub(super) fn epoch_of(info: &stream::Info) -> u64 {
    info.created.unix_timestamp_nanos() as u64
}

/// How long a tap's stream must have been idle (no write, not just made) before a relay that
/// no longer sees its FlowTap removes it: longer than relays' FlowTap watches lag each other.
pub const STREAM_GRACE_STD: Duration = Duration::from_secs(10);
const STREAM_GRACE: time::Duration = time::Duration::seconds(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_and_password_are_read_from_the_first_url() {
        assert_eq!(
            userinfo("nats://log-socket:s3cret@nats:4222,tls://other:4222"),
            Some(("log-socket".into(), "s3cret".into()))
        );
        assert_eq!(userinfo("nats://nats:4222"), None);
        assert_eq!(
            userinfo("nats://log-socket:p@ss%2Fword@nats:4222"),
            Some(("log-socket".into(), "p@ss/word".into()))
        );
    }
}
