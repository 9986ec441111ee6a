//! The relay: records in from fluentd (ingest), out to WebSocket listeners (API), per tap.
//!
//! Kubernetes-facing parts plug in through [`crate::auth::Authenticator`] (who is the listener),
//! [`crate::auth::Authorizer`] (may they see this record) and [`Sessions`] (listener
//! registration, e.g. refcounting a FlowTap); standalone mode uses static tokens and no
//! registration.
//!
//! What the relay must not do: call the Kubernetes API on the record path (authorization is a
//! cache-first `decide`; a cache miss waits in that listener's own task only), let one slow
//! listener hold up ingest or other listeners (queues are bounded and drop the oldest, counted),
//! or send a record, or anything derived from its content, to a listener that may not read it.

pub mod bus;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod process_metrics;
pub mod record;
pub mod sampler;
mod scan;
pub mod tap;

use crate::protocol::TapKey;
use crate::relay::metrics::Metrics;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tap::{ReplayLimits, Tap};

/// Tunables of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Largest ingest body accepted, after decompression.
    pub max_body_bytes: usize,
    /// Most records one ingest request may carry (more: 413): what bounds the memory of the
    /// parsed records beyond the body they share.
    pub max_records_per_request: usize,
    /// Ingest requests processed at once; more get 503 so fluentd retries.
    pub max_concurrent_ingest: usize,
    /// Records queued per listener; beyond it the oldest are dropped and the listener told.
    pub listener_queue: usize,
    /// Replay buffer of each tap.
    pub replay: ReplayLimits,
    /// Replay memory of all taps together.
    pub replay_total_bytes: usize,
    /// Listeners one user may have open on this relay at once.
    pub max_listeners_per_user: usize,
    /// How long a tap without listeners is kept (for reconnects) before it is removed.
    pub tap_linger: Duration,
    /// Interval of WebSocket pings to listeners.
    pub ping_interval: Duration,
    /// A listener silent (no pong, no message) this long is disconnected.
    pub idle_timeout: Duration,
    /// A write to a listener that takes longer than this disconnects it.
    pub write_timeout: Duration,
    /// An ingest body must arrive completely within this time (408 otherwise).
    pub ingest_body_timeout: Duration,
    /// Request headers (on both ports) must arrive within this time, else the connection is
    /// closed: a client trickling headers cannot hold a connection and its buffer.
    pub header_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (the login failure budget's key).
    pub trusted_proxies: crate::auth::limit::TrustedProxies,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_body_bytes: 16 << 20,
            max_records_per_request: 100_000,
            max_concurrent_ingest: 64,
            listener_queue: 10_000,
            replay: ReplayLimits {
                records: 1000,
                bytes: 8 << 20,
            },
            replay_total_bytes: 256 << 20,
            max_listeners_per_user: 20,
            tap_linger: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            ingest_body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            trusted_proxies: Default::default(),
        }
    }
}

/// A listener about to join or leaving a tap, for [`Sessions`].
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub tap: TapKey,
    pub identity: crate::auth::Identity,
    /// The `rate` the listener asked for (records per second), if any.
    pub rate: Option<u32>,
}

/// Why a listener may not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Not allowed (403), with what is missing.
    #[error("{0}")]
    Forbidden(String),
    /// Temporarily impossible (503).
    #[error("{0}")]
    Unavailable(String),
    /// Over a cap on what one user or one FlowTap may hold (429), with which.
    #[error("{0}")]
    TooMany(String),
}

/// Listener registration: in cluster mode this creates or refcounts the FlowTap.
pub trait Sessions: Send + Sync {
    /// A listener is joining; refuse with an error to keep it out.
    fn joined<'a>(&'a self, session: &'a SessionInfo) -> BoxFuture<'a, Result<(), JoinError>>;
    /// A listener left (always called after a successful `joined`).
    fn left<'a>(&'a self, session: &'a SessionInfo) -> BoxFuture<'a, ()>;
}

/// Standalone mode: taps exist while listeners are connected; nothing to register.
pub struct NoSessions;

impl Sessions for NoSessions {
    fn joined<'a>(&'a self, _: &'a SessionInfo) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(async { Ok(()) })
    }
    fn left<'a>(&'a self, _: &'a SessionInfo) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// The taps of this relay instance.
pub struct Relay {
    pub config: RelayConfig,
    pub metrics: Metrics,
    /// Where accepted records go (see [`bus`]).
    pub bus: bus::Bus,
    taps: RwLock<HashMap<TapKey, Arc<Tap>>>,
    next_id: AtomicU64,
    /// Replay memory of all taps (`replay_total_bytes`).
    pub replay_budget: Arc<tap::ReplayBudget>,
    /// The `listenerRate` of each FlowTap (by name) on each tap, whether or not the tap is open
    /// yet: a listener gets the lowest at most.
    listener_rates: RwLock<HashMap<TapKey, std::collections::BTreeMap<String, u32>>>,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Relay {
        Relay {
            replay_budget: Arc::new(tap::ReplayBudget::new(config.replay_total_bytes)),
            config,
            metrics: Metrics::default(),
            bus: bus::Bus::Embedded,
            taps: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            listener_rates: Default::default(),
        }
    }

    /// Set (or with `None` clear) the `listenerRate` of FlowTap `flowtap` on the tap of `key`.
    pub fn set_listener_rate(&self, key: &TapKey, flowtap: &str, rate: Option<u32>) {
        let mut rates = self.listener_rates.write().unwrap();
        match rate {
            Some(r) => {
                rates.entry(key.clone()).or_default().insert(flowtap.to_owned(), r);
            }
            None => {
                if let Some(of_key) = rates.get_mut(key) {
                    of_key.remove(flowtap);
                    if of_key.is_empty() {
                        rates.remove(key);
                    }
                }
            }
        }
    }

    /// Keep the listener rates of these (tap, FlowTap) only (after a relist of the FlowTaps).
    pub fn retain_listener_rates(&self, seen: &std::collections::HashSet<(TapKey, String)>) {
        let mut rates = self.listener_rates.write().unwrap();
        for (key, of_key) in rates.iter_mut() {
            of_key.retain(|flowtap, _| seen.contains(&(key.clone(), flowtap.clone())));
        }
        rates.retain(|_, of_key| !of_key.is_empty());
    }

    /// The most records per second a listener of `key` gets: the lowest `listenerRate` of the
    /// FlowTaps on it, if any sets one.
    pub fn listener_rate(&self, key: &TapKey) -> Option<u32> {
        self.listener_rates
            .read()
            .unwrap()
            .get(key)
            .and_then(|r| r.values().min().copied())
    }

    /// The tap of `key`, if one is open.
    pub fn tap(&self, key: &TapKey) -> Option<Arc<Tap>> {
        self.taps.read().unwrap().get(key).cloned()
    }

    /// The tap of `key`, opening it if needed.
    pub fn open_tap(&self, key: &TapKey) -> Arc<Tap> {
        if let Some(tap) = self.tap(key) {
            return tap;
        }
        let mut taps = self.taps.write().unwrap();
        taps.entry(key.clone())
            .or_insert_with(|| {
                tracing::info!(tap = %key, "tap opened");
                Arc::new(Tap::with_budget(
                    key.clone(),
                    self.config.replay,
                    self.next_id() ^ start_nonce(),
                    self.replay_budget.clone(),
                ))
            })
            .clone()
    }

    /// A process-unique id (listeners; tap epochs mix in the start time so they also differ
    /// across restarts).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Keep the tap of `key` open while a FlowTap exists for it, even with no listener
    /// (`pinned`), or let it close normally again. With the nats bus the tap's stream is
    /// created instead, and buffers there.
    pub fn pin_tap(&self, key: &TapKey, pinned: bool) {
        if let bus::Bus::Nats(nats) = &self.bus {
            // Recorded at once (ingest and followers read it); the stream follows in order. No
            // FlowTap names the flow any more: its records leave NATS now rather than after
            // --nats-max-age (unless a relay still follows the stream).
            nats.set_pinned(key, pinned);
            let (nats, key) = (nats.clone(), key.clone());
            tokio::spawn(async move {
                loop {
                    match nats.sync_stream(&key).await {
                        // In use too recently to remove: looked at again (pinned again by then,
                        // it stays).
                        Ok(Some(wait)) => tokio::time::sleep(wait).await,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(tap = %key, pinned, error = %e, "cannot create or remove the tap's stream");
                            break;
                        }
                    }
                }
            });
            return;
        }
        if pinned {
            self.open_tap(key).set_pinned(true);
        } else if let Some(tap) = self.tap(key) {
            tap.set_pinned(false);
        }
    }

    /// Announce a status frame to the listeners of `key` (and to those joining later).
    pub fn announce(&self, key: &TapKey, frame: tokio_tungstenite::tungstenite::Utf8Bytes) {
        if let Some(tap) = self.tap(key) {
            tap.announce(frame);
        }
    }

    /// Apply a FlowTap's replay size to the tap of `key`, bounded by the relay's own
    /// `--replay-records`.
    pub fn set_replay_records(&self, key: &TapKey, records: usize) {
        if let Some(tap) = self.tap(key) {
            tap.set_replay_records(records, self.config.replay.records);
        }
    }

    /// Remove taps that have had no listener for longer than the linger period.
    pub fn reap(&self, now: Instant) -> usize {
        let linger = self.config.tap_linger;
        let mut taps = self.taps.write().unwrap();
        let before = taps.len();
        taps.retain(|key, tap| {
            let keep = tap.is_pinned() || tap.idle_for(now).is_none_or(|idle| idle < linger);
            if !keep {
                tracing::info!(tap = %key, "tap closed: no listener for {linger:?}");
                self.metrics.forget_tap(key);
            }
            keep
        });
        before - taps.len()
    }

    /// Number of open taps.
    pub fn tap_count(&self) -> usize {
        self.taps.read().unwrap().len()
    }
}

fn start_nonce() -> u64 {
    use std::sync::OnceLock;
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Only the high bits: low bits stay a readable counter.
        (t.as_nanos() as u64 ^ u64::from(std::process::id())) << 20
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_listener_rate_of_a_flows_flowtaps_applies_and_goes_with_its_flowtap() {
        let relay = Relay::new(RelayConfig::default());
        let key = TapKey::parse("flow", "shop", "web").unwrap();
        assert_eq!(relay.listener_rate(&key), None);
        relay.set_listener_rate(&key, "web", Some(50));
        relay.set_listener_rate(&key, "flow-web", Some(20));
        assert_eq!(relay.listener_rate(&key), Some(20), "the lowest");
        relay.set_listener_rate(&key, "flow-web", None);
        assert_eq!(relay.listener_rate(&key), Some(50), "the other's stays");
        // A relist that no longer shows `web` (deleted while the watch was down) drops it.
        relay.set_listener_rate(&key, "gone", Some(5));
        relay.retain_listener_rates(&std::collections::HashSet::from([(key.clone(), "web".to_owned())]));
        assert_eq!(relay.listener_rate(&key), Some(50));
        relay.retain_listener_rates(&Default::default());
        assert_eq!(relay.listener_rate(&key), None);
    }
}
