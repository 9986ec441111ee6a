//! A listener's `rate`, between its queue and its socket: the records it may read and asked
//! for go out at once when it has no rate, or through a [`Sampler`] whose windows the
//! listener's task closes every [`WINDOW`] (and which paces what leaves). Its limit is the
//! lower of the listener's `rate` and its FlowTaps' `listenerRate` (a listener can lower the
//! tap's, never raise it), read again every second. Runs in the listener's task: never under
//! the tap's lock, never on the ingest path.

use crate::protocol;
use crate::protocol::query::effective_rate as limit;
use crate::relay::record::Entry;
pub(super) use crate::relay::sampler::WINDOW;
use crate::relay::sampler::{Out, Sampler};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

pub(super) struct Sampling {
    asked: Option<u32>,
    sampler: Option<Sampler>,
    /// When the last window closed (a window's share is of the time since).
    closed: std::time::Instant,
}

impl Sampling {
    pub(super) fn new(asked: Option<u32>, tap: Option<u32>) -> Sampling {
        Sampling {
            asked,
            sampler: limit(asked, tap).map(Sampler::new),
            closed: std::time::Instant::now(),
        }
    }

    /// Whether records go through windows now.
    pub(super) fn active(&self) -> bool {
        self.sampler.is_some()
    }

    /// Records the listener may read and wants, after the frames already in `out` (notices,
    /// status): into `out` (how many records), or, sampling, all of them into the sampler in
    /// that order (frames wait behind the records selected before them).
    pub(super) fn pass(&mut self, entries: Vec<Arc<Entry>>, out: &mut Vec<Message>) -> u64 {
        match &mut self.sampler {
            Some(s) => {
                for frame in out.drain(..) {
                    match frame {
                        Message::Text(text) => s.frame(text),
                        other => out_of_band(other),
                    }
                }
                entries.into_iter().for_each(|e| s.offer(e));
                0
            }
            None => {
                let n = entries.len() as u64;
                out.extend(entries.into_iter().map(|e| Message::Text(e.frame.clone())));
                n
            }
        }
    }

    /// Close the window: what may leave now, as frames (records, and after a selection's
    /// records the `dropped` frame of what it left out); how many records. Then follow the
    /// tap's limit as it is now.
    pub(super) fn close(&mut self, tap: Option<u32>, out: &mut Vec<Message>) -> u64 {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(std::mem::replace(&mut self.closed, now));
        let n = match &mut self.sampler {
            Some(s) => frames(s.close(elapsed), out),
            None => 0,
        };
        self.follow(tap);
        n
    }

    /// Everything the sampler holds, now (the listener is leaving); how many records.
    pub(super) fn drain(&mut self, out: &mut Vec<Message>) -> u64 {
        match &mut self.sampler {
            Some(s) => frames(s.drain(), out),
            None => 0,
        }
    }

    /// Start, change or stop sampling as the tap's limit now says (checked at least once a
    /// second, so a FlowTap's `listenerRate` applies within a second of arriving). Stopping
    /// happens at a window's close only, so no record is held back.
    pub(super) fn follow(&mut self, tap: Option<u32>) {
        match (limit(self.asked, tap), &mut self.sampler) {
            (Some(rate), Some(s)) => s.set_rate(rate),
            (Some(rate), None) => {
                self.sampler = Some(Sampler::new(rate));
                self.closed = std::time::Instant::now();
            }
            (None, Some(s)) if s.is_empty() => self.sampler = None,
            (None, _) => {}
        }
    }
}

/// Only text frames are queued (the tap's notices and status); nothing else comes here.
fn out_of_band(frame: Message) {
    debug_assert!(false, "a non-text frame among a listener's queued frames: {frame:?}");
}

/// The frames of what left the sampler; how many records.
fn frames(leaving: Vec<Out>, out: &mut Vec<Message>) -> u64 {
    let mut n = 0;
    for o in leaving {
        match o {
            Out::Record(e) => {
                n += 1;
                out.push(Message::Text(e.frame.clone()));
            }
            Out::Sampled { pods, last_seq } => out.push(Message::Text(protocol::sampled(&pods, last_seq))),
            Out::Frame(text) => out.push(Message::Text(text)),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_can_lower_its_taps_rate_never_raise_it() {
        assert_eq!(limit(Some(10), Some(100)), Some(10));
        assert_eq!(limit(Some(1000), Some(100)), Some(100));
        assert_eq!(limit(None, Some(100)), Some(100));
        assert_eq!(limit(Some(5), None), Some(5));
        assert_eq!(limit(None, None), None);
    }
}
