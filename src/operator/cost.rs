//! What a tap costs, and whether it is cheap enough to keep warm. Each relay measures the
//! records and bytes it accepted at ingest for each tap and writes its share into the
//! FlowTap's `status.cost` (fluentd's requests go to any replica, so the cost is the sum of the
//! recent shares). No I/O here.

use crate::k8s::flowtap::{FlowTap, RelayCost, TapCost};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::time::{Duration, Instant};

/// A rate is measured over at least this long.
pub const MIN_WINDOW: Duration = Duration::from_secs(5);
/// A relay's share is written again at least this often (so a stale one can be told apart).
pub const REFRESH: Duration = Duration::from_secs(300);
/// A relay's share is written again at most this often (each write is an API request and a
/// status frame to the tap's listeners).
pub const MIN_GAP: Duration = Duration::from_secs(20);
/// A share older than this is from a relay that is gone: left out of the sum.
pub const STALE: Duration = Duration::from_secs(900);

/// A rate: records and bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub records: f64,
    pub bytes: u64,
}

/// One tap's counters on this relay, between measurements.
pub struct Meter {
    at: Instant,
    records: u64,
    bytes: u64,
}

impl Meter {
    pub fn new(now: Instant, (records, bytes): (u64, u64)) -> Meter {
        Meter {
            at: now,
            records,
            bytes,
        }
    }

    /// The rate since the last measurement, once [`MIN_WINDOW`] has passed.
    pub fn measure(&mut self, now: Instant, (records, bytes): (u64, u64)) -> Option<Rate> {
        let window = now.checked_duration_since(self.at)?;
        if window < MIN_WINDOW {
            return None;
        }
        let secs = window.as_secs_f64();
        let rate = Rate {
            records: (records.saturating_sub(self.records) as f64 / secs * 10.0).round() / 10.0,
            bytes: (bytes.saturating_sub(self.bytes) as f64 / secs).round() as u64,
        };
        *self = Meter::new(now, (records, bytes));
        Some(rate)
    }
}

/// Whether `relay`'s new `rate` is worth a status write: no share of it yet, or, at most once
/// per [`MIN_GAP`], a change of more than a quarter (and 1 KiB/s or 1 record/s) or a share of
/// a flowing tap due for a refresh.
pub fn worth_writing(cost: Option<&TapCost>, relay: &str, rate: Rate, now: Timestamp) -> bool {
    let Some(mine) = cost.and_then(|c| c.relays.iter().find(|r| r.relay == relay)) else {
        // Nothing to say before the first record (a tap is never warm before one anyway).
        return rate.bytes > 0;
    };
    let far = |old: f64, new: f64, floor: f64| (new - old).abs() > floor.max(old * 0.25);
    if age(&mine.measured, now) < MIN_GAP {
        return false;
    }
    // A quiet tap's zero share needs no refresh: stale, it still adds nothing to the sum.
    let flowing = rate.bytes > 0 || mine.bytes_per_second > 0;
    far(mine.bytes_per_second as f64, rate.bytes as f64, 1024.0)
        || far(mine.records_per_second, rate.records, 1.0)
        || (flowing && age(&mine.measured, now) >= REFRESH)
}

/// `cost` with `relay`'s share replaced by `rate`, stale shares dropped, and the sum anew.
pub fn merged(cost: Option<&TapCost>, relay: &str, rate: Rate, now: Timestamp) -> TapCost {
    let mut relays: Vec<RelayCost> = cost
        .map(|c| c.relays.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.relay != relay && age(&r.measured, now) < STALE)
        .collect();
    relays.push(RelayCost {
        relay: relay.to_owned(),
        records_per_second: rate.records,
        bytes_per_second: rate.bytes,
        measured: Time(now),
    });
    relays.sort_by(|a, b| a.relay.cmp(&b.relay));
    TapCost {
        records_per_second: (relays.iter().map(|r| r.records_per_second).sum::<f64>() * 10.0).round() / 10.0,
        bytes_per_second: relays.iter().map(|r| r.bytes_per_second).sum(),
        measured: Time(now),
        relays,
    }
}

fn age(t: &Time, now: Timestamp) -> Duration {
    Duration::from_secs((now.as_second() - t.0.as_second()).max(0) as u64)
}

/// Whether `tap` may stay warm after its last listener: an ephemeral tap whose records have
/// come (so its cost is known, not the quiet of a tap still waiting for its check) and whose
/// measured cost is at most `max_bytes_per_second` (0: no tap stays warm).
pub fn cheap(tap: &FlowTap, max_bytes_per_second: u64) -> bool {
    max_bytes_per_second > 0
        && !tap.spec.persistent
        && tap.status.as_ref().is_some_and(|s| s.last_record_time.is_some())
        && tap
            .status
            .as_ref()
            .and_then(|s| s.cost.as_ref())
            .is_some_and(|c| c.bytes_per_second <= max_bytes_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn a_rate_is_measured_over_at_least_the_window() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0, (100, 10_000));
        assert_eq!(m.measure(t0 + Duration::from_secs(2), (110, 11_000)), None, "too soon");
        let rate = m.measure(t0 + Duration::from_secs(10), (150, 20_000)).unwrap();
        assert_eq!(
            rate,
            Rate {
                records: 5.0,
                bytes: 1000
            }
        );
        let quiet = m.measure(t0 + Duration::from_secs(20), (150, 20_000)).unwrap();
        assert_eq!(quiet, Rate { records: 0.0, bytes: 0 });
    }

    #[test]
    fn the_cost_is_the_sum_of_the_relays_recent_shares() {
        let a = merged(
            None,
            "relay-a",
            Rate {
                records: 2.0,
                bytes: 500,
            },
            at(0),
        );
        let both = merged(
            Some(&a),
            "relay-b",
            Rate {
                records: 3.0,
                bytes: 700,
            },
            at(10),
        );
        assert_eq!((both.records_per_second, both.bytes_per_second), (5.0, 1200));
        let again = merged(
            Some(&both),
            "relay-a",
            Rate {
                records: 1.0,
                bytes: 100,
            },
            at(20),
        );
        assert_eq!(
            (again.records_per_second, again.bytes_per_second),
            (4.0, 800),
            "a's share replaced"
        );
        let later = merged(Some(&again), "relay-b", Rate { records: 0.0, bytes: 0 }, at(20 + 900));
        assert_eq!(later.relays.len(), 1, "a's share went stale: {later:?}");
        assert_eq!(later.bytes_per_second, 0);
    }

    fn r(records: f64, bytes: u64) -> Rate {
        Rate { records, bytes }
    }

    #[test]
    fn only_a_real_change_or_a_due_refresh_is_written_and_at_most_once_per_gap() {
        let cost = merged(None, "r", r(10.0, 10_000), at(0));
        let w = |rate: Rate, t: i64| worth_writing(Some(&cost), "r", rate, at(t));
        assert!(worth_writing(Some(&cost), "other", r(1.0, 10), at(1)), "a first share");
        assert!(!worth_writing(None, "r", r(0.0, 0), at(1)), "none before a record");
        assert!(!w(r(11.0, 11_000), 30), "a small change");
        assert!(w(r(10.0, 20_000), 30));
        assert!(w(r(20.0, 10_000), 30));
        assert!(!w(r(20.0, 10_000), 10), "at most one write per MIN_GAP");
        assert!(w(r(10.0, 10_000), 300), "a flowing tap's share refreshed");
        let quiet = merged(None, "r", r(0.0, 0), at(0));
        assert!(
            !worth_writing(Some(&quiet), "r", r(0.0, 0), at(3600)),
            "idle taps cost no writes"
        );
    }

    #[test]
    fn only_a_measured_cheap_ephemeral_tap_stays_warm() {
        let mut tap = FlowTap::new(
            "t",
            serde_json::from_value(serde_json::json!({"flowRef": {"kind": "Flow", "name": "web"}})).unwrap(),
        );
        assert!(!cheap(&tap, 1000), "never measured");
        tap.status = Some(Default::default());
        tap.status.as_mut().unwrap().cost = Some(merged(
            None,
            "r",
            Rate {
                records: 1.0,
                bytes: 800,
            },
            at(0),
        ));
        assert!(!cheap(&tap, 1000), "no record ever: still warming up, its cost unknown");
        tap.status.as_mut().unwrap().last_record_time = Some(Time(at(0)));
        assert!(cheap(&tap, 1000));
        assert!(!cheap(&tap, 500), "over the budget");
        assert!(!cheap(&tap, 0), "warm taps off");
        tap.spec.persistent = true;
        assert!(!cheap(&tap, 1000), "a persistent tap stays anyway");
    }
}
