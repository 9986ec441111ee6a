//! One WebSocket listener's side of a tap: its filters, its authorization, and its bounded
//! queue. Publishing never waits for a listener: when the queue is full the oldest record is
//! dropped and counted, and the listener is told how many it lost.
//!
//! The queue takes every record of the tap: the listener's task authorizes first and filters
//! second, so nothing the listener sees (denied counts, drops, the replayed count) depends on
//! its filters applied to records it may not read, and no filter runs under the tap's lock.

use super::record::Entry;
use crate::auth::Identity;
use crate::protocol::{Filter, Meta};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What a listener's task takes from its queue in one go.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records to send, oldest first.
    pub records: Vec<Arc<Entry>>,
    /// Records dropped (queue full) since the last batch, all older than `records`.
    pub dropped: u64,
    /// The newest tap status frame announced since the last batch (older ones are superseded).
    pub status: Option<Utf8Bytes>,
    /// One-off notices (a gap in the tap's source), in order, all older than `records`.
    pub notices: Vec<Utf8Bytes>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Arc<Entry>>,
    dropped: u64,
    status: Option<Utf8Bytes>,
    notices: Vec<Utf8Bytes>,
}

/// A listener attached to a tap.
pub struct Listener {
    pub id: u64,
    pub identity: Identity,
    filter: Filter,
    capacity: usize,
    queue: Mutex<Queue>,
    notify: Notify,
}

/// What happened to one record offered to a listener.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Queued, and the oldest queued record was dropped to make room.
    QueuedDroppingOldest,
}

impl Listener {
    pub fn new(id: u64, identity: Identity, filter: Filter, capacity: usize) -> Self {
        Listener {
            id,
            identity,
            filter,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        }
    }

    /// Whether the record passes the listener's filters (no authorization, no side effects).
    /// Only asked of records the listener may read.
    pub fn wants(&self, meta: &Meta) -> bool {
        self.filter.matches(meta)
    }

    /// Offer a live record; never blocks on the listener, never looks into the record.
    /// Authorization, then the filters, happen in the listener's task (which may have to ask
    /// the API server).
    pub fn offer(&self, entry: &Arc<Entry>) -> Offer {
        let dropped = {
            let mut q = self.queue.lock().unwrap();
            let dropped = if q.items.len() >= self.capacity {
                q.items.pop_front();
                q.dropped += 1;
                true
            } else {
                false
            };
            q.items.push_back(entry.clone());
            dropped
        };
        self.notify.notify_one();
        if dropped {
            Offer::QueuedDroppingOldest
        } else {
            Offer::Queued
        }
    }

    /// Take everything queued.
    pub fn take(&self) -> Batch {
        let mut q = self.queue.lock().unwrap();
        Batch {
            records: q.items.drain(..).collect(),
            dropped: std::mem::take(&mut q.dropped),
            status: q.status.take(),
            notices: std::mem::take(&mut q.notices),
        }
    }

    /// Queue a notice the listener gets once, before the records offered after it. A listener
    /// that never reads keeps at most a few: older ones of the same text are merged.
    pub fn notice(&self, frame: Utf8Bytes) {
        let mut q = self.queue.lock().unwrap();
        if q.notices.last() != Some(&frame) && q.notices.len() < 16 {
            q.notices.push(frame);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Tell the listener how its tap is doing (a `status` frame); replaces one not yet sent.
    pub fn announce(&self, frame: Utf8Bytes) {
        self.queue.lock().unwrap().status = Some(frame);
        self.notify.notify_one();
    }

    /// Completes when something was offered since the last call.
    pub async fn ready(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, pod: &str, msg: &str) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            meta: meta("shop", pod, msg),
            frame: format!("{seq}").into(),
        })
    }

    fn meta(namespace: &str, pod: &str, message: &str) -> Meta {
        let json = serde_json::json!({
            "message": message,
            "kubernetes": { "namespace_name": namespace, "pod_name": pod },
        });
        crate::protocol::meta_of(&json.to_string()).unwrap()
    }

    fn listener(filter: Filter, capacity: usize) -> Listener {
        Listener::new(1, Identity::default(), filter, capacity)
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let l = listener(Filter::default(), 3);
        for seq in 1..=5 {
            l.offer(&entry(seq, "web", "x"));
        }
        let batch = l.take();
        assert_eq!(batch.records.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(batch.dropped, 2);
        assert_eq!(l.take().dropped, 0, "a drop is reported once");
    }

    #[test]
    fn filters_select_by_namespace_pod_container_and_message() {
        let f = Filter {
            grep: Some(Filter::pattern("grep", "error|warn").unwrap()),
            exclude: Some(Filter::pattern("exclude", "healthz").unwrap()),
            pod: Some(Filter::pattern("pod", "^web-").unwrap()),
            namespace: Some("shop".into()),
            ..Default::default()
        };
        let l = listener(f, 10);
        assert!(l.wants(&entry(1, "web-1", "error: boom").meta));
        assert!(!l.wants(&entry(2, "web-1", "info: fine").meta));
        assert!(!l.wants(&entry(3, "web-1", "warn: GET /healthz").meta));
        assert!(!l.wants(&entry(4, "db-1", "error: boom").meta));
        assert!(!l.wants(&meta("other", "web-1", "error")));
        let out = listener(
            Filter {
                exclude_pod: Some(Filter::pattern("exclude-pod", "^db-").unwrap()),
                ..Default::default()
            },
            10,
        );
        assert!(out.wants(&entry(1, "web-1", "x").meta));
        assert!(!out.wants(&entry(2, "db-1", "x").meta));
        // The queue takes every record: filters apply after authorization, in the listener's
        // task, so they never decide what is counted about records it may not read.
        assert_eq!(l.offer(&entry(2, "web-1", "info: fine")), Offer::Queued);
        assert_eq!(l.take().records.len(), 1);
    }

    #[test]
    fn an_invalid_pattern_is_reported_with_its_option() {
        let err = Filter::pattern("grep", "(unclosed").unwrap_err();
        assert!(err.starts_with("invalid grep pattern"), "{err}");
    }
}
