//! The reload budget of a Logging: every tap-caused flow edit is a new configuration for the
//! whole shared Logging (a check pod, then a fluentd reload that other tenants have lost logs
//! to). Tap changes on one Logging are taken in batches, at most one batch per
//! `--config-change-interval`: the first tap to ask opens a batch a moment later ([`COLLECT`]),
//! every tap asking until it closes ([`GRACE`]) goes in it, and later ones wait for the next,
//! one interval after the last change of this one (a booked tap's late pass moves it), so
//! changes of two batches are always an interval apart. So taps that start or end together make one change, a script cycling
//! taps makes one change per interval at most, and nothing waits longer than one interval
//! (plus the [`BOOKED_GRACE`] a late change can add).
//! Restoring a flow because the tap broke something is never held back (those paths do not
//! ask). No I/O: the controller asks, with the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a batch waits for taps starting together before its changes are made.
pub const COLLECT: Duration = Duration::from_secs(1);
/// How long after its start a batch takes changes of taps that did not wait for it (their
/// passes came a moment late).
pub const GRACE: Duration = Duration::from_secs(1);
/// How long after its start a batch still takes a tap that waited for it (a busy controller's
/// pass comes late); later, the tap asks anew (a booking is not a pass to change the Logging
/// whenever its owner likes).
pub const BOOKED_GRACE: Duration = Duration::from_secs(5);

/// The batches of each Logging.
#[derive(Default)]
pub struct Budget {
    by_logging: HashMap<String, Batch>,
    /// Taps told to wait (by UID), and for which batch: one whose pass comes late (a busy
    /// controller) still goes then, never pushed to a later batch.
    booked: HashMap<String, Instant>,
}

/// The current (or next) batch of one Logging.
#[derive(Debug, Clone)]
struct Batch {
    /// When its changes are made.
    at: Instant,
    /// When its last change was made (a booked tap's pass can come up to [`BOOKED_GRACE`]
    /// late): the next batch is one interval after that, not only after `at`.
    last: Option<Instant>,
    /// The flows it changed: a flow is changed once per batch (a tap ending and another
    /// starting on one flow would be two configurations; the second waits for the next batch).
    flows: std::collections::HashSet<String>,
}

impl Batch {
    /// When the next batch may start: one interval after this one's last change.
    fn next(&self, interval: Duration) -> Instant {
        self.last.unwrap_or(self.at).max(self.at) + interval
    }
}

/// Whether a change may be made now.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Now,
    /// Wait this long, for the next batch.
    Wait(Duration),
}

impl Budget {
    /// May tap `tap` (its UID) change `flow` of `logging` now, with one batch per `interval`
    /// (zero: always)?
    pub fn ask(&mut self, logging: &str, flow: &str, tap: &str, now: Instant, interval: Duration) -> Gate {
        if interval.is_zero() {
            return Gate::Now;
        }
        if let Some(at) = self.booked.get(tap).copied() {
            if now < at {
                return Gate::Wait(at - now);
            }
            self.booked.remove(tap);
            if now < at + BOOKED_GRACE {
                self.changed(logging, flow, now, interval);
                return Gate::Now;
            }
        }
        let batch = match self.by_logging.get(logging).cloned() {
            // No change for an interval: a new batch, a moment from now.
            None => self.open(logging, now + COLLECT),
            // Within the batch's grace, unless it changed this flow already.
            Some(b) if now < b.at + GRACE && !(now >= b.at && b.flows.contains(flow)) => b,
            Some(b) if now < b.next(interval) => self.open(logging, b.next(interval)),
            Some(_) => self.open(logging, now + COLLECT),
        };
        match batch.at.checked_duration_since(now) {
            Some(wait) if !wait.is_zero() => {
                if self.booked.len() > 100_000 {
                    self.booked.clear();
                }
                self.booked.insert(tap.to_owned(), batch.at);
                Gate::Wait(wait)
            }
            _ => {
                self.changed(logging, flow, now, interval);
                Gate::Now
            }
        }
    }

    fn changed(&mut self, logging: &str, flow: &str, now: Instant, interval: Duration) {
        let Some(b) = self.by_logging.get_mut(logging) else {
            return;
        };
        if b.at > now {
            // A late pass of the previous batch, after the next one was set: that one (and the
            // taps booked for it) moves to an interval after this change.
            let moved = now + interval;
            if moved > b.at {
                let old = b.at;
                b.at = moved;
                for at in self.booked.values_mut().filter(|at| **at == old) {
                    *at = moved;
                }
            }
            return;
        }
        b.flows.insert(flow.to_owned());
        b.last = Some(b.last.map_or(now, |l| l.max(now)));
    }

    /// `tap` went with a batch just now: its next ask within [`BOOKED_GRACE`] goes too (the
    /// cleanup that follows the decision to remove it).
    pub fn keep(&mut self, tap: &str, now: Instant) {
        self.booked.insert(tap.to_owned(), now);
    }

    fn open(&mut self, logging: &str, at: Instant) -> Batch {
        let batch = Batch {
            at,
            last: None,
            flows: Default::default(),
        };
        self.by_logging.insert(logging.to_owned(), batch.clone());
        // Loggings without changes for long are forgotten (a fresh ask opens a batch anyway).
        if self.by_logging.len() > 10_000 {
            self.by_logging.clear();
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_late_change_of_a_batch_moves_the_next_batch_so_changes_stay_an_interval_apart() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        assert_eq!(b.ask("l", "a", "a", t0, INTERVAL), Gate::Wait(COLLECT));
        // The booked tap's pass comes 4 s late: still in its batch.
        assert_eq!(b.ask("l", "a", "a", t0 + COLLECT + secs(4.0), INTERVAL), Gate::Now);
        // The next batch is an interval after that change, not after the batch's start.
        let next = t0 + COLLECT + secs(4.0) + INTERVAL;
        assert_eq!(
            b.ask("l", "b", "b", t0 + secs(10.0), INTERVAL),
            Gate::Wait(next - (t0 + secs(10.0)))
        );
        assert_eq!(b.ask("l", "b", "b", next, INTERVAL), Gate::Now);
    }

    #[test]
    fn taps_asking_together_make_one_batch_a_moment_later() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        assert_eq!(b.ask("l", "a", "a", t0, INTERVAL), Gate::Wait(COLLECT));
        assert_eq!(b.ask("l", "b", "b", t0 + secs(0.4), INTERVAL), Gate::Wait(secs(0.6)));
        assert_eq!(b.ask("l", "a", "a", t0 + COLLECT, INTERVAL), Gate::Now, "the batch");
        assert_eq!(
            b.ask("l", "c", "c", t0 + secs(1.5), INTERVAL),
            Gate::Now,
            "within its grace"
        );
        assert_eq!(
            b.ask("other", "d", "d", t0 + secs(1.5), INTERVAL),
            Gate::Wait(COLLECT),
            "Loggings apart"
        );
        assert_eq!(
            b.ask("l", "e", "e", t0 + secs(2.5), INTERVAL),
            Gate::Wait(secs(29.0)),
            "after it: the next, one interval after its last change"
        );
        // b's pass comes late (a busy controller): it still goes, not a batch later.
        assert_eq!(b.ask("l", "b", "b", t0 + secs(4.0), INTERVAL), Gate::Now);
        // A booking is not kept for ever: a pass long after its batch asks anew.
        // b's late change moved e's batch to an interval after it.
        assert_eq!(
            b.ask("l", "g", "g", t0 + secs(5.0), INTERVAL),
            Gate::Wait(secs(29.0)),
            "booked for e's batch"
        );
        assert_eq!(
            b.ask("l", "g", "g", t0 + secs(40.0), INTERVAL),
            Gate::Wait(secs(24.0)),
            "the one after"
        );
    }

    #[test]
    fn later_changes_wait_for_the_next_batch_one_interval_after_the_last() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        b.ask("l", "a", "a", t0, INTERVAL);
        let first = t0 + COLLECT;
        assert_eq!(b.ask("l", "a", "a", first, INTERVAL), Gate::Now);
        assert_eq!(
            b.ask("l", "b", "b", first + secs(10.0), INTERVAL),
            Gate::Wait(secs(20.0))
        );
        assert_eq!(
            b.ask("l", "c", "c", first + secs(29.0), INTERVAL),
            Gate::Wait(secs(1.0))
        );
        assert_eq!(b.ask("l", "b", "b", first + INTERVAL, INTERVAL), Gate::Now);
        assert_eq!(b.ask("l", "c", "c", first + INTERVAL, INTERVAL), Gate::Now);
        // Nothing for a long while: the next change opens a batch of its own.
        assert_eq!(b.ask("l", "d", "d", first + secs(200.0), INTERVAL), Gate::Wait(COLLECT));
    }

    #[test]
    fn nothing_waits_longer_than_one_interval_and_batches_are_an_interval_apart() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        let mut made = vec![];
        // A new tap asking every 700 ms for five minutes, each asking again every 100 ms.
        let mut pending: Vec<(usize, Instant)> = vec![];
        let mut t = t0;
        let mut step = 0;
        while t < t0 + secs(300.0) {
            if step % 7 == 0 {
                pending.push((step, t));
            }
            step += 1;
            pending.retain(|(tap, asked)| {
                match b.ask("l", &format!("flow-{}", tap % 3), &tap.to_string(), t, INTERVAL) {
                    Gate::Now => {
                        made.push(t);
                        assert!(t - *asked <= INTERVAL + COLLECT, "waited {:?}", t - *asked);
                        false
                    }
                    Gate::Wait(_) => true,
                }
            });
            t += secs(0.1);
        }
        let mut batches: Vec<Instant> = vec![];
        for m in made {
            if batches.last().is_none_or(|b| m > *b + GRACE) {
                batches.push(m);
            }
        }
        for pair in batches.windows(2) {
            assert!(pair[1] - pair[0] >= INTERVAL, "{:?}", pair[1] - pair[0]);
        }
        assert!(batches.len() <= 11, "{} batches in 300 s", batches.len());
    }

    #[test]
    fn a_tap_kept_with_a_batch_goes_on_its_next_ask_too() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        b.ask("l", "flow", "a", t0, INTERVAL);
        assert_eq!(b.ask("l", "flow", "a", t0 + COLLECT, INTERVAL), Gate::Now);
        b.keep("a", t0 + COLLECT);
        assert_eq!(
            b.ask("l", "flow", "a", t0 + secs(3.0), INTERVAL),
            Gate::Now,
            "its cleanup"
        );
        assert_eq!(
            b.ask("l", "flow", "a", t0 + secs(4.0), INTERVAL),
            Gate::Wait(secs(29.0)),
            "not for ever: one interval after the cleanup"
        );
    }

    #[test]
    fn a_flow_is_changed_once_per_batch() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        b.ask("l", "web", "a", t0, INTERVAL);
        assert_eq!(
            b.ask("l", "web", "a", t0 + COLLECT, INTERVAL),
            Gate::Now,
            "a's tap ends"
        );
        assert_eq!(
            b.ask("l", "api", "c", t0 + secs(1.2), INTERVAL),
            Gate::Now,
            "another flow joins"
        );
        assert_eq!(
            b.ask("l", "web", "b", t0 + secs(1.2), INTERVAL),
            Gate::Wait(secs(30.0)),
            "a new tap of the same flow: the next batch"
        );
    }

    #[test]
    fn no_interval_no_wait() {
        assert_eq!(
            Budget::default().ask("l", "flow", "a", Instant::now(), Duration::ZERO),
            Gate::Now
        );
    }
}
