//! A tap: the records of one flow, numbered, kept in a bounded replay buffer, and offered to
//! each attached listener. Attaching snapshots the replay buffer and registers the listener under
//! one lock, so a listener never sees a gap or a duplicate between replay and live records.

use super::listener::{Batch, Listener, Offer};
use super::record::{Entry, Record};
use crate::protocol::{self, Start, TapKey};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Bounds of a tap's replay buffer: whichever is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    pub records: usize,
    pub bytes: usize,
}

/// Records a listener asked for but cannot have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// `count` records after the requested sequence number are no longer buffered.
    OutOfReplay { count: u64 },
    /// The tap was restarted (relay restart or tap re-created): earlier numbering is void.
    TapRestarted,
}

/// Result of attaching a listener.
#[derive(Debug)]
pub struct Attached {
    /// Buffered records to send first.
    pub backlog: Vec<Arc<Entry>>,
    pub gap: Option<Gap>,
    /// Sequence number of the newest record of the tap so far (0: none yet).
    pub last_seq: u64,
    /// Oldest buffered sequence number (0: buffer empty).
    pub first_seq: u64,
    /// The tap's current status frame, if one was announced.
    pub status: Option<Utf8Bytes>,
    /// Notices of gaps in the source (a bus message skipped or discarded) within the records the
    /// listener asked for: told first, so a listener that resumes past one is not left with a
    /// silent gap.
    pub notices: Vec<Utf8Bytes>,
}

/// Replay memory shared by every tap of a relay (`--replay-total-bytes`): a tap that would take
/// the total over it drops its own oldest buffered records, so many taps (one per flow anyone
/// taps) cannot add up to more than the relay can hold.
#[derive(Debug)]
pub struct ReplayBudget {
    used: std::sync::atomic::AtomicUsize,
    total: usize,
}

impl ReplayBudget {
    pub fn new(total: usize) -> Self {
        ReplayBudget {
            used: Default::default(),
            total,
        }
    }

    /// Bytes buffered by all taps now.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.total
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Inner {
    budget: Arc<ReplayBudget>,
    limits: ReplayLimits,
    last_record: Option<std::time::SystemTime>,
    /// The last status frame announced (how the FlowTap is doing), for listeners that join.
    status: Option<Utf8Bytes>,
    next_seq: u64,
    replay: VecDeque<Arc<Entry>>,
    /// Gaps in the source, by the record number they come before, with their notice.
    marks: VecDeque<(u64, Utf8Bytes)>,
    replay_bytes: usize,
    listeners: Vec<Arc<Listener>>,
    idle_since: Option<Instant>,
}

impl Inner {
    fn trim(&mut self) {
        while self.replay.len() > self.limits.records || self.replay_bytes > self.limits.bytes || self.budget.over() {
            match self.replay.pop_front() {
                Some(old) => {
                    self.replay_bytes -= old.frame.len();
                    self.budget.sub(old.frame.len());
                }
                None => break,
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.budget.sub(self.replay_bytes);
    }
}

/// The records of one flow.
pub struct Tap {
    pub key: TapKey,
    /// Identifies this incarnation of the tap, so a resume can tell its sequence numbers apart
    /// (with the nats bus: the stream's, the same on every replica).
    epoch: std::sync::atomic::AtomicU64,
    pinned: std::sync::atomic::AtomicBool,
    /// Records and bytes this relay took in for the tap since it opened (its cost, measured
    /// by the tap tracking for warm taps).
    ingested: [std::sync::atomic::AtomicU64; 2],
    inner: Mutex<Inner>,
}

/// Counts from one `publish`, for metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub records: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// Numbered records that came before the tap's next number (already published, or numbered
    /// wrongly): not published again.
    pub behind: bool,
}

impl Tap {
    pub fn new(key: TapKey, limits: ReplayLimits, epoch: u64) -> Tap {
        Tap::with_budget(key, limits, epoch, Arc::new(ReplayBudget::new(usize::MAX)))
    }

    /// A tap whose replay buffer also counts against `budget`, shared with other taps.
    pub fn with_budget(key: TapKey, limits: ReplayLimits, epoch: u64, budget: Arc<ReplayBudget>) -> Tap {
        Tap {
            key,
            epoch: epoch.into(),
            pinned: Default::default(),
            ingested: Default::default(),
            inner: Mutex::new(Inner {
                budget,
                limits,
                last_record: None,
                status: None,
                next_seq: 1,
                replay: VecDeque::new(),
                marks: VecDeque::new(),
                replay_bytes: 0,
                listeners: Vec::new(),
                idle_since: Some(Instant::now()),
            }),
        }
    }

    /// This incarnation's epoch (see [`Tap::reset`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Start a new incarnation: numbering from `epoch` on, nothing buffered (the bus stream
    /// behind the tap was recreated). Listeners keep their queues.
    pub fn reset(&self, epoch: u64) {
        let mut inner = self.inner.lock().unwrap();
        self.epoch.store(epoch, std::sync::atomic::Ordering::Relaxed);
        let bytes = std::mem::take(&mut inner.replay_bytes);
        inner.budget.sub(bytes);
        inner.replay.clear();
        inner.marks.clear();
        inner.next_seq = 1;
    }

    /// Number, buffer and hand out a batch of records. Never waits for a listener.
    pub fn publish(&self, records: Vec<Record>) -> Published {
        self.publish_from(None, records)
    }

    /// [`Tap::publish`] with the batch's numbers given: `first` for the first record, one more
    /// for each next (a bus numbers records, the same on every replica). Numbers never go back:
    /// a batch at or before the newest record is dropped as already seen.
    pub fn publish_numbered(&self, first: u64, records: Vec<Record>) -> Published {
        self.publish_from(Some(first), records)
    }

    fn publish_from(&self, first: Option<u64>, records: Vec<Record>) -> Published {
        let mut out = Published::default();
        let mut inner = self.inner.lock().unwrap();
        if let Some(first) = first {
            if first < inner.next_seq {
                out.behind = !records.is_empty();
                return out;
            }
            inner.next_seq = first;
        }
        if !records.is_empty() {
            inner.last_record = Some(std::time::SystemTime::now());
        }
        for record in records {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            out.records += 1;
            out.bytes += record.raw.len() as u64;
            let entry = Arc::new(Entry {
                seq,
                frame: protocol::record_frame(seq, &record.raw),
                meta: record.meta,
            });
            for listener in &inner.listeners {
                match listener.offer(&entry) {
                    Offer::QueuedDroppingOldest => out.dropped += 1,
                    Offer::Queued => {}
                }
            }
            if inner.limits.records > 0 {
                inner.replay_bytes += entry.frame.len();
                inner.budget.add(entry.frame.len());
                inner.replay.push_back(entry);
                inner.trim();
            }
        }
        out
    }

    /// Tell every listener, and later joiners, how the tap is doing.
    pub fn announce(&self, frame: Utf8Bytes) {
        let mut inner = self.inner.lock().unwrap();
        if inner.status.as_ref() == Some(&frame) {
            return;
        }
        for listener in &inner.listeners {
            listener.announce(frame.clone());
        }
        inner.status = Some(frame);
    }

    /// Tell every listener, once, something about the records that follow (a gap in the source).
    pub fn notice(&self, frame: Utf8Bytes) {
        for listener in &self.inner.lock().unwrap().listeners {
            listener.notice(frame.clone());
        }
    }

    /// [`Tap::notice`] of a gap that comes before record number `before`, remembered with the
    /// buffered records so a listener that later asks for records past it is told too.
    pub fn notice_at(&self, before: u64, frame: Utf8Bytes) {
        const KEEP: usize = 64;
        let mut inner = self.inner.lock().unwrap();
        for listener in &inner.listeners {
            listener.notice(frame.clone());
        }
        if inner.marks.len() >= KEEP {
            inner.marks.pop_front();
        }
        inner.marks.push_back((before, frame));
    }

    /// Count records this relay accepted at ingest for the tap (whichever bus carries them).
    pub fn count_ingest(&self, records: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.ingested[0].fetch_add(records, Relaxed);
        self.ingested[1].fetch_add(bytes, Relaxed);
    }

    /// Records and bytes accepted at ingest so far.
    pub fn ingested(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.ingested[0].load(Relaxed), self.ingested[1].load(Relaxed))
    }

    /// When the tap last received a record.
    pub fn last_record(&self) -> Option<std::time::SystemTime> {
        self.inner.lock().unwrap().last_record
    }

    /// Change how many records the replay buffer keeps (a FlowTap's `spec.replay.records`),
    /// never above `cap` (the relay's own limit, which protects its memory).
    pub fn set_replay_records(&self, records: usize, cap: usize) {
        let mut inner = self.inner.lock().unwrap();
        inner.limits.records = records.min(cap);
        inner.trim();
    }

    /// Attach a listener, returning the buffered records it should get first.
    pub fn attach(&self, listener: Arc<Listener>, start: Start) -> Attached {
        let mut inner = self.inner.lock().unwrap();
        let last_seq = inner.next_seq - 1;
        let first_seq = inner.replay.front().map_or(0, |e| e.seq);
        let (candidates, gap): (Vec<&Arc<Entry>>, Option<Gap>) = match start {
            Start::Live => (vec![], None),
            Start::Tail(n) => {
                let skip = inner
                    .replay
                    .len()
                    .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
                (inner.replay.iter().skip(skip).collect(), None)
            }
            Start::All => (inner.replay.iter().collect(), None),
            Start::After { seq, epoch } => {
                let restarted = epoch.is_some_and(|e| e != self.epoch()) || seq > last_seq;
                if restarted {
                    (inner.replay.iter().collect(), Some(Gap::TapRestarted))
                } else {
                    let oldest_available = if first_seq == 0 { inner.next_seq } else { first_seq };
                    let gap = (seq + 1 < oldest_available).then(|| Gap::OutOfReplay {
                        count: oldest_available - seq - 1,
                    });
                    (inner.replay.iter().filter(|e| e.seq > seq).collect(), gap)
                }
            }
        };
        // Gaps inside what the listener gets: after what it had (a resume), or within the
        // records it is sent; before the live ones, those it will get from now.
        let since = match start {
            Start::After { seq, .. } if gap.is_none() => Some(seq),
            Start::Live => None,
            _ => candidates.first().map(|e| e.seq),
        };
        let notices = since
            .map(|since| {
                inner
                    .marks
                    .iter()
                    .filter(|(before, _)| *before > since)
                    .map(|(_, frame)| frame.clone())
                    .collect()
            })
            .unwrap_or_default();
        // Unfiltered: the listener's task authorizes, then filters.
        let backlog = candidates.into_iter().cloned().collect();
        inner.listeners.push(listener);
        inner.idle_since = None;
        Attached {
            backlog,
            gap,
            last_seq,
            first_seq,
            status: inner.status.clone(),
            notices,
        }
    }

    /// Detach a listener; returns what was still queued for it (for accounting).
    pub fn detach(&self, id: u64) -> Option<Batch> {
        let mut inner = self.inner.lock().unwrap();
        let pos = inner.listeners.iter().position(|l| l.id == id)?;
        let listener = inner.listeners.swap_remove(pos);
        if inner.listeners.is_empty() {
            inner.idle_since = Some(Instant::now());
        }
        Some(listener.take())
    }

    /// How long the tap has had no listener, if it has none.
    pub fn idle_for(&self, now: Instant) -> Option<std::time::Duration> {
        self.inner
            .lock()
            .unwrap()
            .idle_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Keep the tap open without listeners (a FlowTap exists for it).
    pub fn set_pinned(&self, pinned: bool) {
        self.pinned.store(pinned, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the tap stays open without listeners.
    pub fn is_pinned(&self) -> bool {
        self.pinned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of attached listeners.
    pub fn listener_count(&self) -> usize {
        self.inner.lock().unwrap().listeners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::k8s::flowtap::FlowKind;
    use crate::protocol::Filter;

    fn tap(records: usize) -> Tap {
        let key = TapKey {
            kind: FlowKind::Flow,
            namespace: "shop".into(),
            name: "web".into(),
        };
        Tap::new(
            key,
            ReplayLimits {
                records,
                bytes: 1 << 20,
            },
            7,
        )
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                raw: format!("{{\"message\":\"m{i}\"}}").into(),
                meta: crate::protocol::Meta::default(),
            })
            .collect()
    }

    fn listener(id: u64) -> Arc<Listener> {
        Arc::new(Listener::new(id, Identity::default(), Filter::default(), 100))
    }

    fn seqs(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_listener_resuming_past_a_gap_in_the_source_is_told_of_it() {
        let t = tap(100);
        t.publish_numbered(1 << 20, records(2));
        // The message numbered 2 did not open: records after it are numbered from 3 << 20.
        t.notice_at(2 << 20, crate::protocol::dropped(None, "bus_invalid"));
        t.publish_numbered(3 << 20, records(2));
        let resumed = t.attach(
            listener(1),
            Start::After {
                seq: (1 << 20) + 1,
                epoch: Some(7),
            },
        );
        assert_eq!(resumed.notices.len(), 1, "resumed before the gap");
        assert!(resumed.notices[0].contains("bus_invalid"));
        let past = t.attach(
            listener(2),
            Start::After {
                seq: 3 << 20,
                epoch: Some(7),
            },
        );
        assert!(past.notices.is_empty(), "resumed after it");
        assert_eq!(
            t.attach(listener(3), Start::All).notices.len(),
            1,
            "the whole buffer spans it"
        );
        assert!(t.attach(listener(4), Start::Live).notices.is_empty());
    }

    #[test]
    fn records_are_numbered_and_the_replay_buffer_keeps_the_newest() {
        let t = tap(3);
        t.publish(records(5));
        let a = t.attach(listener(1), Start::Tail(10));
        assert_eq!(seqs(&a.backlog), [3, 4, 5]);
        assert_eq!((a.first_seq, a.last_seq), (3, 5));
    }

    #[test]
    fn resuming_inside_the_buffer_has_no_gap_and_no_duplicate() {
        let t = tap(10);
        t.publish(records(6));
        let l = listener(1);
        let a = t.attach(l.clone(), Start::After { seq: 4, epoch: Some(7) });
        assert_eq!(seqs(&a.backlog), [5, 6]);
        assert_eq!(a.gap, None);
        t.publish(records(2));
        assert_eq!(seqs(&l.take().records), [7, 8]);
    }

    #[test]
    fn resuming_before_the_buffer_reports_how_many_records_are_gone() {
        let t = tap(3);
        t.publish(records(10));
        let a = t.attach(listener(1), Start::After { seq: 2, epoch: None });
        assert_eq!(a.gap, Some(Gap::OutOfReplay { count: 5 }));
        assert_eq!(seqs(&a.backlog), [8, 9, 10]);
    }

    #[test]
    fn resuming_with_another_epoch_or_a_future_seq_means_the_tap_restarted() {
        let t = tap(3);
        t.publish(records(2));
        let a = t.attach(
            listener(1),
            Start::After {
                seq: 1,
                epoch: Some(99),
            },
        );
        assert_eq!(a.gap, Some(Gap::TapRestarted));
        assert_eq!(seqs(&a.backlog), [1, 2]);
        let a = t.attach(listener(2), Start::After { seq: 50, epoch: None });
        assert_eq!(a.gap, Some(Gap::TapRestarted));
    }

    #[test]
    fn numbered_batches_keep_their_numbers_and_a_batch_seen_before_is_dropped() {
        let t = tap(10);
        t.publish_numbered(1 << 20, records(2));
        t.publish_numbered(3 << 20, records(1));
        assert!(t.publish_numbered(1 << 20, records(2)).records == 0, "a redelivery");
        let l = listener(1);
        let a = t.attach(
            l.clone(),
            Start::After {
                seq: 1 << 20,
                epoch: Some(7),
            },
        );
        assert_eq!(seqs(&a.backlog), [(1 << 20) + 1, 3 << 20]);
        t.reset(8);
        let a = t.attach(
            listener(2),
            Start::After {
                seq: 3 << 20,
                epoch: Some(7),
            },
        );
        assert_eq!(a.gap, Some(Gap::TapRestarted));
        assert!(a.backlog.is_empty());
    }

    #[test]
    fn a_detached_listener_gets_nothing_more_and_the_tap_becomes_idle() {
        let t = tap(3);
        let l = listener(1);
        t.attach(l.clone(), Start::Live);
        assert!(t.idle_for(Instant::now()).is_none());
        t.detach(1).unwrap();
        t.publish(records(1));
        assert!(l.take().records.is_empty());
        assert!(t.idle_for(Instant::now()).is_some());
    }

    #[test]
    fn all_taps_together_stay_within_the_relay_wide_replay_budget() {
        let budget = Arc::new(ReplayBudget::new(1000));
        let key = |name: &str| TapKey {
            kind: FlowKind::Flow,
            namespace: "a".into(),
            name: name.into(),
        };
        let limits = ReplayLimits {
            records: 1000,
            bytes: 1 << 20,
        };
        let taps: Vec<Tap> = (0..5)
            .map(|i| Tap::with_budget(key(&format!("t{i}")), limits, 1, budget.clone()))
            .collect();
        for round in 0..20 {
            for t in &taps {
                t.publish(records(10));
                assert!(budget.used() <= 1000, "round {round}: {}", budget.used());
            }
        }
        assert!(
            budget.used() > 500,
            "the budget is used, not left empty: {}",
            budget.used()
        );
        drop(taps);
        assert_eq!(budget.used(), 0, "closed taps give their memory back");
    }

    #[test]
    fn the_replay_buffer_is_bounded_by_bytes_too() {
        let key = TapKey {
            kind: FlowKind::Flow,
            namespace: "a".into(),
            name: "b".into(),
        };
        let t = Tap::new(
            key,
            ReplayLimits {
                records: 1000,
                bytes: 200,
            },
            1,
        );
        t.publish(records(100));
        let a = t.attach(listener(1), Start::Tail(1000));
        let bytes: usize = a.backlog.iter().map(|e| e.frame.len()).sum();
        assert!(bytes <= 200 && !a.backlog.is_empty(), "{bytes}");
        assert_eq!(a.backlog.last().unwrap().seq, 100);
    }

    #[test]
    fn a_flowtaps_replay_size_shrinks_the_buffer_at_once_and_never_exceeds_the_relays_cap() {
        let t = tap(10);
        t.publish(records(8));
        t.set_replay_records(2, 10);
        assert_eq!(seqs(&t.attach(listener(1), Start::Tail(100)).backlog), [7, 8]);
        t.set_replay_records(50, 4);
        t.publish(records(6));
        assert_eq!(seqs(&t.attach(listener(2), Start::Tail(100)).backlog), [11, 12, 13, 14]);
        t.set_replay_records(0, 4);
        t.publish(records(1));
        assert!(t.attach(listener(3), Start::Tail(100)).backlog.is_empty());
    }

    mod properties {
        //! For any interleaving of ingests, attaches, detaches and reads, a listener receives
        //! exactly the records of its own tap published while it was attached, in order, and
        //! every record it misses is counted in a `dropped` report.
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Publish {
                tap: usize,
                n: usize,
            },
            Attach {
                listener: usize,
                tap: usize,
                capacity: usize,
            },
            Detach {
                listener: usize,
            },
            Read {
                listener: usize,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..2usize, 1..6usize).prop_map(|(tap, n)| Op::Publish { tap, n }),
                (0..4usize, 0..2usize, 1..8usize).prop_map(|(listener, tap, capacity)| Op::Attach {
                    listener,
                    tap,
                    capacity
                }),
                (0..4usize).prop_map(|listener| Op::Detach { listener }),
                (0..4usize).prop_map(|listener| Op::Read { listener }),
            ]
        }

        /// One attachment of a listener: what it should see and what it saw.
        #[derive(Default)]
        struct Session {
            tap: usize,
            listener: Option<Arc<Listener>>,
            expected: Vec<String>,
            received: Vec<String>,
            dropped: u64,
            last_seq: u64,
        }

        fn read(session: &mut Session, tap_name: &str) -> Result<(), TestCaseError> {
            let Some(l) = &session.listener else { return Ok(()) };
            let batch = l.take();
            session.dropped += batch.dropped;
            for e in batch.records {
                prop_assert!(e.seq > session.last_seq, "in order");
                session.last_seq = e.seq;
                let text = std::str::from_utf8(e.frame.as_bytes()).unwrap().to_owned();
                prop_assert!(text.contains(tap_name), "only its own tap: {text}");
                session.received.push(text);
            }
            Ok(())
        }

        fn check(s: &Session) -> Result<(), TestCaseError> {
            let messages: Vec<&str> = s
                .received
                .iter()
                .map(|f| f.split("\"message\":\"").nth(1).unwrap().split('"').next().unwrap())
                .collect();
            // What arrived is the expected sequence with `dropped` records left out, never
            // reordered, never invented.
            let mut it = s.expected.iter();
            for m in &messages {
                prop_assert!(it.any(|e| e == m), "{m} is one of the expected records, in order");
            }
            prop_assert_eq!(
                s.expected.len() as u64,
                messages.len() as u64 + s.dropped,
                "every miss is reported"
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn listeners_get_exactly_their_taps_records_in_order_or_a_drop_report(ops in proptest::collection::vec(op(), 1..80)) {
                let taps: Vec<Tap> = (0..2)
                    .map(|t| Tap::new(
                        TapKey { kind: FlowKind::Flow, namespace: "shop".into(), name: format!("tap{t}") },
                        ReplayLimits { records: 10, bytes: 1 << 20 },
                        t as u64,
                    ))
                    .collect();
                let mut sessions: Vec<Session> = (0..4).map(|_| Session::default()).collect();
                let mut done: Vec<Session> = vec![];
                let mut next = 0u64;
                let mut ids = 100u64;
                for op in ops {
                    match op {
                        Op::Publish { tap, n } => {
                            let records: Vec<Record> = (0..n)
                                .map(|_| {
                                    next += 1;
                                    Record {
                                        raw: format!("{{\"message\":\"tap{tap}-r{next}\"}}").into(),
                                        meta: crate::protocol::Meta::default(),
                                    }
                                })
                                .collect();
                            for s in sessions.iter_mut().filter(|s| s.listener.is_some() && s.tap == tap) {
                                s.expected.extend(records.iter().map(|r| {
                                    let t = r.raw.as_str();
                                    t.split("\"message\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
                                }));
                            }
                            taps[tap].publish(records);
                        }
                        Op::Attach { listener, tap, capacity } => {
                            if sessions[listener].listener.is_none() {
                                ids += 1;
                                let l = Arc::new(Listener::new(ids, Identity::default(), Filter::default(), capacity));
                                taps[tap].attach(l.clone(), Start::Live);
                                sessions[listener] = Session { tap, listener: Some(l), ..Default::default() };
                            }
                        }
                        Op::Detach { listener } => {
                            let tap = sessions[listener].tap;
                            let name = format!("tap{tap}");
                            read(&mut sessions[listener], &name)?;
                            if let Some(l) = sessions[listener].listener.take() {
                                // What was still queued counts as delivered: the relay sends it.
                                if let Some(rest) = taps[tap].detach(l.id) {
                                    let s = &mut sessions[listener];
                                    s.dropped += rest.dropped;
                                    for e in rest.records {
                                        s.received.push(std::str::from_utf8(e.frame.as_bytes()).unwrap().to_owned());
                                    }
                                }
                                done.push(std::mem::take(&mut sessions[listener]));
                            }
                        }
                        Op::Read { listener } => {
                            let name = format!("tap{}", sessions[listener].tap);
                            read(&mut sessions[listener], &name)?;
                        }
                    }
                }
                for mut s in sessions.into_iter().filter(|s| s.listener.is_some()) {
                    let name = format!("tap{}", s.tap);
                    read(&mut s, &name)?;
                    done.push(s);
                }
                for s in &done {
                    check(s)?;
                }
            }
        }
    }
}
