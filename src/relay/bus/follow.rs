//! One replica's follower of a tap's stream: one ordered consumer feeding the local tap, made
//! again after errors (NATS restarted or unreachable) from the message after the last one seen,
//! and from the start of a stream removed or made anew under it.

use super::message::{discarded, open_batch};
use super::nats::{captured, epoch_of, err, BusCounters, BusError, BATCH_BITS};
use super::seal::{BusKeys, Recent};
use crate::protocol::TapKey;
use crate::relay::tap::Tap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// How a follower says its stream was removed or made anew under it.
const STREAM_REPLACED: &str = "following the stream anew";

/// Feed the stream of `key` into the tap until the tap is gone, recreating the consumer after
/// errors (NATS restarted or unreachable) from the message after the last one seen.
pub(super) async fn follow_stream(mut follower: Following) {
    let mut backoff = Duration::from_millis(200);
    while follower.tap.strong_count() > 0 {
        if let Err(e) = follower.follow_once().await {
            if e.0.starts_with(STREAM_REPLACED) {
                // Not the bus going down: follow the stream as it is now, at once.
                tracing::info!(tap = %follower.key, why = %e, "following the tap's stream again");
                continue;
            }
            follower.set_down(Some(&e.to_string()));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            backoff = Duration::from_millis(200);
        }
    }
}

/// One tap's follower: where it is in the stream.
pub(super) struct Following {
    pub(super) js: jetstream::Context,
    /// The taps a FlowTap names: a missing stream of one is created again, not waited for.
    pub(super) pinned: Arc<std::sync::Mutex<std::collections::HashSet<TapKey>>>,
    pub(super) stream_config: stream::Config,
    pub(super) key: TapKey,
    pub(super) tap: Weak<Tap>,
    /// The next stream sequence to read (0: from the oldest retained).
    pub(super) next: u64,
    /// The stream's last sequence when following started: caught up once it is read.
    pub(super) last_at_start: u64,
    pub(super) caught_up: watch::Sender<bool>,
    pub(super) counters: BusCounters,
    pub(super) keys: Arc<BusKeys>,
    pub(super) max_body_bytes: usize,
    pub(super) max_records: usize,
    /// Ids of the messages opened lately: one replayed into the stream is refused.
    pub(super) recent: Recent,
    pub(super) connected: watch::Receiver<bool>,
    pub(super) down: bool,
}

impl Following {
    /// Tell the tap's listeners when the bus goes down (`Some(why)`) or comes back (`None`).
    fn set_down(&mut self, why: Option<&str>) {
        if self.down == why.is_some() {
            return;
        }
        self.down = why.is_some();
        let Some(tap) = self.tap.upgrade() else { return };
        match why {
            Some(why) => {
                tracing::warn!(tap = %self.key, error = why, "the bus is down; following again when it is back");
                tap.announce(crate::protocol::bus_status("nats", false, why));
            }
            None => {
                tracing::info!(tap = %self.key, "the bus is back");
                tap.announce(crate::protocol::bus_status("nats", true, "the bus is back"));
            }
        }
    }

    /// Follow until an error, or `Ok` once the local tap is gone.
    async fn follow_once(&mut self) -> Result<(), BusError> {
        let pinned = self.pinned.lock().unwrap().contains(&self.key);
        let mut stream = match pinned {
            true => self
                .js
                .get_or_create_stream(self.stream_config.clone())
                .await
                .map_err(|e| captured(&self.key, e))?,
            false => self.js.get_stream(&self.stream_config.name).await.map_err(err)?,
        };
        let info = stream.info().await.map_err(err)?;
        let epoch = epoch_of(info);
        {
            let Some(tap) = self.tap.upgrade() else { return Ok(()) };
            if tap.epoch() != epoch {
                // The stream was recreated (NATS lost it, or the tap was reopened): earlier
                // numbers are void.
                tap.reset(epoch);
                self.next = 0;
            }
        }
        let deliver_policy = match self.next {
            0 => consumer::DeliverPolicy::All,
            n => consumer::DeliverPolicy::ByStartSequence { start_sequence: n },
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let mut messages = consumer.messages().await.map_err(err)?;
        self.set_down(None);
        let mut alive = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                message = messages.next() => {
                    let message = match message {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return Err(err(e)),
                        None => return Err(BusError("the consumer ended".into())),
                    };
                    let (seq, pending, stored_ms) = match message.info() {
                        Ok(i) => (i.stream_sequence, i.pending, (i.published.unix_timestamp_nanos() / 1_000_000) as i64),
                        Err(e) => return Err(err(e)),
                    };
                    let Some(tap) = self.tap.upgrade() else { return Ok(()) };
                    tracing::trace!(tap = %self.key, seq, pending, "bus message");
                    if let Some(lost) = discarded(self.next, seq) {
                        // JetStream's limits (messages, bytes, age) removed messages this
                        // replica had not read yet: its listeners are told, not left with a
                        // silent gap. How many records they held is unknown here.
                        tracing::warn!(tap = %self.key, messages = lost, "the bus discarded messages before this relay read them");
                        tap.notice_at(seq << BATCH_BITS, crate::protocol::dropped(None, "bus_discarded"));
                        self.counters.timing.discarded.inc_by(lost);
                    }
                    // Opening, decompressing and parsing cost CPU in proportion to the message:
                    // off the async workers, so one large message does not stall other taps.
                    let (keys, subject) = (self.keys.clone(), self.stream_config.subjects[0].clone());
                    let (headers, payload) = (message.headers.clone(), message.payload.clone());
                    let (max_body, max_records) = (self.max_body_bytes, self.max_records);
                    let opened = tokio::task::spawn_blocking(move || {
                        open_batch(&keys, &subject, headers.as_ref(), &payload, Some(stored_ms), max_body, max_records)
                    })
                    .await
                    .map_err(err)
                    .and_then(|r| r);
                    match opened {
                        Ok((id, records)) if self.recent.first_time(&id) => {
                            let published = tap.publish_numbered(seq << BATCH_BITS, records);
                            let now_ms = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_millis() as i64)
                                .unwrap_or(stored_ms);
                            // Clocks of NATS and relays can differ a little: never negative.
                            let lag = (now_ms - stored_ms).max(0) as f64 / 1000.0;
                            self.counters.timing.follower_lag.observe(lag);
                            self.counters.slow_client.inc_by(published.dropped);
                            if published.behind {
                                // Numbered before what the listeners already have: not shown
                                // twice, and not dropped silently either.
                                tracing::warn!(tap = %self.key, seq, "a bus message numbered before the records already delivered");
                                tap.notice_at(seq << BATCH_BITS, crate::protocol::dropped(None, "bus_invalid"));
                            }
                        }
                        // Not sealed with a bus key, forged, moved from another tap, replayed,
                        // or too large: never delivered, and never a silent gap either.
                        opened => {
                            let why = match opened {
                                Ok(_) => "a message seen before (replayed)".to_owned(),
                                Err(e) => e.to_string(),
                            };
                            tracing::warn!(tap = %self.key, seq, error = %why, "skipped a bus message that did not open");
                            self.counters.invalid.inc();
                            tap.notice_at(seq << BATCH_BITS, crate::protocol::dropped(None, "bus_invalid"));
                        }
                    }
                    self.next = seq + 1;
                    if pending == 0 || seq >= self.last_at_start {
                        self.caught_up.send_replace(true);
                    }
                }
                _ = alive.tick() => {
                    // The local tap closed (no listener for the linger period): stop following.
                    if self.tap.strong_count() == 0 {
                        return Ok(());
                    }
                    // The stream removed under the consumer (by a relay that saw the FlowTap
                    // go before this one saw it come back) or made anew: the ordered consumer
                    // would wait on it forever. Follow again (the stream made again if a
                    // FlowTap names the tap), from its start.
                    match self.js.get_stream(&self.stream_config.name).await {
                        Ok(mut now) => match now.info().await {
                            Ok(info) if epoch_of(info) != epoch => return Err(BusError(format!("{STREAM_REPLACED}: it was made anew"))),
                            _ => {}
                        },
                        Err(e) if e.to_string().contains("not found") => {
                            return Err(BusError(format!("{STREAM_REPLACED}: it was removed")))
                        }
                        // NATS unreachable: the connection watch below tells the listeners.
                        Err(_) => {}
                    }
                }
                // The client reconnects by itself and the ordered consumer follows on; the
                // listeners are told meanwhile.
                Ok(()) = self.connected.changed() => {
                    let up = *self.connected.borrow_and_update();
                    if up && self.down {
                        // Back: a new consumer from the next message at once (the ordered
                        // consumer's own recovery can take well over 15 s after a restart).
                        return Err(BusError(format!("{STREAM_REPLACED}: NATS is back")));
                    }
                    self.set_down((!up).then_some("the connection to NATS was lost"));
                }
            }
        }
    }
}
