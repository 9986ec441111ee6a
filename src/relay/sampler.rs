//! Sampling for a listener that asked for at most `rate` records per second (`rate=N`): in
//! windows of [`WINDOW`], so the output does not bunch, each window keeps its share of the
//! rate, split fairly between the pods that wrote in it (max-min: a pod with fewer records than
//! its share keeps them all, the others share the rest equally), chosen uniformly within each
//! pod (a reservoir per pod, so memory is bounded by the share, not by the flood). Every record
//! left out is counted per pod, for the `dropped` frame with reason `sampled`.
//!
//! Pure: no I/O, no clock (the listener's task closes the windows), no lock. It sees only the
//! records the listener may read and asked for (authorization and filters come first).

use super::record::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One sampling window: short, so a sampled stream flows instead of arriving in bursts (a
/// second of output is 20 windows: one window more or less in a second is 5 %).
pub const WINDOW: Duration = Duration::from_millis(50);

/// The most time one window's share is counted for: a listener whose task was held up (a busy
/// machine) gets the share of the time that passed, up to this, never a burst for a long stall.
const MAX_SPAN: Duration = Duration::from_millis(100);

/// The most pods one window tracks; records of further pods in the same window are sampled out
/// (and counted) rather than letting a flood of pod names grow the sampler.
pub const MAX_PODS: usize = 10_000;

/// What one window gives the listener.
#[derive(Debug, Default)]
pub struct Closed {
    /// The records kept, in the tap's order.
    pub kept: Vec<Arc<Entry>>,
    /// Records left out, by `NAMESPACE/POD` (empty when none was).
    pub sampled: BTreeMap<String, u64>,
}

impl Closed {
    /// How many records were left out.
    pub fn sampled_count(&self) -> u64 {
        self.sampled.values().sum()
    }
}

#[derive(Default)]
struct Pod {
    seen: u64,
    reservoir: Vec<Arc<Entry>>,
}

/// The sampling state of one listener.
pub struct Sampler {
    /// Records per second; a window's share is this times the time since the last close.
    per_second: f64,
    /// What is not whole of the shares carries to the next window.
    credit: f64,
    pods: BTreeMap<String, Pod>,
    /// Records of pods past [`MAX_PODS`] in this window.
    overflow: u64,
    rng: SplitMix,
}

impl Sampler {
    /// A sampler keeping at most `rate` records per second (at least 1).
    pub fn new(rate: u32) -> Sampler {
        Sampler::seeded(rate, seed())
    }

    /// [`Sampler::new`] with a fixed seed (tests).
    pub fn seeded(rate: u32, seed: u64) -> Sampler {
        Sampler {
            per_second: f64::from(rate.max(1)),
            credit: 0.0,
            pods: BTreeMap::new(),
            overflow: 0,
            rng: SplitMix(seed),
        }
    }

    /// Change the rate (a FlowTap's `listenerRate` arriving or changing): from the next window.
    pub fn set_rate(&mut self, rate: u32) {
        self.per_second = f64::from(rate.max(1));
    }

    /// The most records any pod can keep in one window: a reservoir never holds more.
    fn capacity(&self) -> usize {
        (self.per_second * MAX_SPAN.as_secs_f64() + self.credit).floor() as usize + 1
    }

    /// Offer a record the listener may read and wants, in the tap's order.
    pub fn offer(&mut self, entry: Arc<Entry>) {
        let key = pod_key(&entry);
        let capacity = self.capacity();
        if !self.pods.contains_key(&key) && self.pods.len() >= MAX_PODS {
            self.overflow += 1;
            return;
        }
        let pod = self.pods.entry(key).or_default();
        pod.seen += 1;
        // Algorithm R: after n records, each is in the reservoir with probability capacity/n.
        if pod.reservoir.len() < capacity {
            pod.reservoir.push(entry);
        } else {
            let j = self.rng.below(pod.seen);
            if (j as usize) < capacity {
                pod.reservoir[j as usize] = entry;
            }
        }
    }

    /// Whether the open window holds anything.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.overflow == 0
    }

    /// Close the window, `elapsed` after the last close (normally [`WINDOW`]): the records kept
    /// and, per pod, how many were left out.
    pub fn close(&mut self, elapsed: Duration) -> Closed {
        self.credit += self.per_second * elapsed.min(MAX_SPAN).as_secs_f64();
        let budget = self.credit.floor();
        // What is not spent is not banked: a quiet window does not allow a burst later.
        self.credit -= budget;
        let pods = std::mem::take(&mut self.pods);
        let mut closed = Closed::default();
        if self.overflow > 0 {
            closed.sampled.insert(
                "-/(more pods than one window tracks)".into(),
                std::mem::take(&mut self.overflow),
            );
        }
        let available: Vec<u64> = pods.values().map(|p| p.reservoir.len() as u64).collect();
        let shares = fair_shares(&available, budget as u64, &mut self.rng);
        for ((key, mut pod), share) in pods.into_iter().zip(shares) {
            // A uniform `share` of the reservoir (itself a uniform sample of the pod's records).
            let n = pod.reservoir.len();
            for i in 0..(share as usize).min(n) {
                let j = i + self.rng.below((n - i) as u64) as usize;
                pod.reservoir.swap(i, j);
            }
            pod.reservoir.truncate(share as usize);
            let left_out = pod.seen - pod.reservoir.len() as u64;
            if left_out > 0 {
                closed.sampled.insert(key, left_out);
            }
            closed.kept.append(&mut pod.reservoir);
        }
        closed.kept.sort_by_key(|e| e.seq);
        closed
    }
}

/// `NAMESPACE/POD` of a record (`-` for what it lacks).
fn pod_key(entry: &Entry) -> String {
    format!(
        "{}/{}",
        entry.meta.namespace().unwrap_or("-"),
        entry.meta.pod().unwrap_or("-")
    )
}

/// Max-min fair shares of `budget` between pods offering `available` each: a pod offering
/// less than an equal share keeps all of it, the rest is shared equally, and what does not
/// divide goes one each to pods chosen at random.
pub(crate) fn fair_shares(available: &[u64], budget: u64, rng: &mut SplitMix) -> Vec<u64> {
    let mut order: Vec<usize> = (0..available.len()).collect();
    order.sort_by_key(|&i| available[i]);
    let mut shares = vec![0; available.len()];
    let mut remaining = budget;
    let mut left = available.len() as u64;
    let mut rest = vec![];
    for &i in &order {
        let share = remaining.checked_div(left).unwrap_or(0);
        if available[i] <= share {
            shares[i] = available[i];
            remaining -= available[i];
            left -= 1;
        } else {
            rest.push(i);
        }
    }
    if rest.is_empty() {
        return shares;
    }
    let each = remaining / rest.len() as u64;
    let mut extra = remaining % rest.len() as u64;
    for &i in &rest {
        shares[i] = each;
    }
    // Every pod in `rest` offers more than `each`, so one more fits in any of them.
    while extra > 0 {
        let pick = rng.below(rest.len() as u64) as usize;
        let i = rest.swap_remove(pick);
        shares[i] += 1;
        extra -= 1;
    }
    shares
}

/// A small fast generator (SplitMix64): sampling needs uniform choices, not secrecy.
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` ≥ 1), by rejection, without modulo bias.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let n = n.max(1);
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

fn seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::record::Entry;

    fn entry(seq: u64, pod: &str) -> Arc<Entry> {
        let body = format!(r#"[{{"message":"m{seq}","kubernetes":{{"namespace_name":"shop","pod_name":"{pod}"}}}}]"#);
        let record = crate::relay::record::parse_batch(&bytes::Bytes::from(body))
            .unwrap()
            .remove(0);
        Arc::new(Entry {
            seq,
            frame: crate::protocol::record_frame(seq, &record.raw),
            meta: record.meta,
        })
    }

    #[test]
    fn a_window_keeps_its_share_of_the_rate_and_counts_the_rest_per_pod() {
        let mut s = Sampler::seeded(100, 7);
        for seq in 0..50 {
            s.offer(entry(seq, "web-1"));
        }
        let closed = s.close(WINDOW);
        assert_eq!(closed.kept.len(), 5, "100/s in 50 ms windows");
        assert_eq!(closed.sampled, BTreeMap::from([("shop/web-1".to_owned(), 45)]));
        assert!(
            closed.kept.windows(2).all(|w| w[0].seq < w[1].seq),
            "in the tap's order"
        );
    }

    #[test]
    fn a_noisy_pod_cannot_silence_the_others() {
        // 200/s: ten records a window, one for each of the ten pods.
        let mut s = Sampler::seeded(200, 3);
        let mut seq = 0;
        for _ in 0..900 {
            s.offer(entry(seq, "noisy"));
            seq += 1;
        }
        for pod in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
            for _ in 0..11 {
                s.offer(entry(seq, pod));
                seq += 1;
            }
        }
        let closed = s.close(WINDOW);
        assert_eq!(closed.kept.len(), 10);
        let pods: std::collections::BTreeSet<String> = closed.kept.iter().map(|e| pod_key(e)).collect();
        assert_eq!(pods.len(), 10, "one each: {pods:?}");
        assert_eq!(closed.sampled_count() + closed.kept.len() as u64, seq);
    }

    #[test]
    fn a_low_rate_carries_its_fraction_so_one_second_keeps_exactly_the_rate() {
        let mut s = Sampler::seeded(3, 1);
        let mut kept = 0;
        let mut seq = 0;
        for _ in 0..20 {
            for _ in 0..20 {
                s.offer(entry(seq, "web"));
                seq += 1;
            }
            let closed = s.close(WINDOW);
            kept += closed.kept.len();
            assert_eq!(closed.kept.len() as u64 + closed.sampled_count(), 20);
        }
        assert_eq!(kept, 3);
    }

    #[test]
    fn a_quiet_window_does_not_bank_credit_for_a_burst() {
        let mut s = Sampler::seeded(100, 1);
        for _ in 0..50 {
            assert!(s.close(WINDOW).kept.is_empty());
        }
        for seq in 0..1000 {
            s.offer(entry(seq, "web"));
        }
        assert_eq!(s.close(WINDOW).kept.len(), 5);
    }

    #[test]
    fn records_within_a_pod_are_chosen_uniformly() {
        // Each of 20 records of one window kept 2 at a time: over many windows every position
        // is kept about as often (a biased sampler favours the first or the last).
        let mut counts = [0u32; 20];
        let mut s = Sampler::seeded(40, 11);
        for round in 0..20_000u64 {
            for i in 0..20 {
                s.offer(entry(round * 20 + i, "web"));
            }
            for e in s.close(WINDOW).kept {
                counts[(e.seq % 20) as usize] += 1;
            }
        }
        let expected = 20_000.0 * 2.0 / 20.0;
        for (i, c) in counts.iter().enumerate() {
            let off = (f64::from(*c) - expected).abs() / expected;
            assert!(off < 0.08, "position {i}: {c} vs {expected}");
        }
    }

    #[test]
    fn a_late_window_gets_the_share_of_the_time_that_passed_but_a_stall_no_burst() {
        let mut s = Sampler::seeded(100, 4);
        let offer = |s: &mut Sampler, from: u64| (from..from + 100).for_each(|seq| s.offer(entry(seq, "web")));
        offer(&mut s, 0);
        assert_eq!(s.close(Duration::from_millis(80)).kept.len(), 8);
        offer(&mut s, 100);
        assert_eq!(s.close(Duration::from_secs(5)).kept.len(), 10, "at most 100 ms worth");
    }

    #[test]
    fn fair_shares_fill_small_pods_first_and_split_the_rest() {
        let mut rng = SplitMix(5);
        assert_eq!(fair_shares(&[1, 100, 2], 10, &mut rng), vec![1, 7, 2]);
        assert_eq!(fair_shares(&[0, 0], 10, &mut rng), vec![0, 0]);
        let shares = fair_shares(&[5, 5, 5], 4, &mut rng);
        assert_eq!(shares.iter().sum::<u64>(), 4);
        assert!(shares.iter().all(|s| *s == 1 || *s == 2), "{shares:?}");
        assert_eq!(fair_shares(&[], 10, &mut rng), Vec::<u64>::new());
    }

    #[test]
    fn too_many_pods_in_one_window_are_counted_not_kept_in_memory() {
        let mut s = Sampler::seeded(10, 2);
        for seq in 0..(MAX_PODS as u64 + 5) {
            s.offer(entry(seq, &format!("p{seq}")));
        }
        let closed = s.close(WINDOW);
        assert_eq!(closed.kept.len() as u64 + closed.sampled_count(), MAX_PODS as u64 + 5);
    }
}
