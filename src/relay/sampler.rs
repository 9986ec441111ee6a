//! Sampling for a listener that asked for at most `rate` records per second (`rate=N`).
//!
//! Records arrive in windows of [`WINDOW`]. At each window's close a **selection** keeps what
//! the selection credit allows (N a second of time passed, banked up to one second, so the
//! one-second batches fluentd posts get their second's worth), split fairly between the pods
//! that wrote in the window (max-min: a pod with fewer records than its share keeps them all,
//! the others share the rest equally), chosen uniformly within each pod (a reservoir per pod,
//! so memory is bounded by the share, not by the flood). The kept records then **leave paced**,
//! N a second of time passed, so a batch does not arrive as a burst; each selection's count of
//! what it left out, per pod, follows its records (the `dropped` frame with reason `sampled`
//! and the highest sequence number it covers, so a client resuming after it skips nothing
//! unaccounted and gets nothing twice).
//!
//! Pure: no I/O, no clock (the listener's task closes the windows with the time passed), no
//! lock. It sees only the records the listener may read and asked for (authorization and
//! filters come first).

use super::record::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// One sampling window: short, so a sampled stream flows instead of arriving in bursts.
pub const WINDOW: Duration = Duration::from_millis(50);

/// The most time one close counts for: a listener whose task was held up (a busy machine)
/// gets the share of the time that passed, up to this, never a burst for a long stall.
const MAX_SPAN: Duration = Duration::from_millis(100);

/// The most pods one window tracks; records of further pods in the same window are left out
/// and counted under the pod key `""` rather than letting a flood of pod names grow the sampler.
pub const MAX_PODS: usize = 10_000;

/// The most pods one `sampled` frame names; the others' counts go under the key `""`.
pub const PODS_PER_FRAME: usize = 100;

/// What leaves the sampler, in order.
#[derive(Debug)]
pub enum Out {
    Record(Arc<Entry>),
    /// A notice or status frame of the tap, in its place among the records.
    Frame(tokio_tungstenite::tungstenite::Utf8Bytes),
    /// Records one selection left out, by `NAMESPACE/POD` (`""`: others), and the highest
    /// sequence number of the records it covered.
    Sampled {
        pods: BTreeMap<String, u64>,
        last_seq: u64,
    },
}

#[derive(Default)]
struct Pod {
    seen: u64,
    /// (arrival, record): a uniform sample of the pod's records of the window.
    reservoir: Vec<(u64, Arc<Entry>)>,
}

/// The sampling state of one listener.
pub struct Sampler {
    per_second: f64,
    /// A new rate, applied at the next close (a window is sampled with one rate).
    pending_rate: Option<f64>,
    /// What the next selections may keep: N a second of time passed, up to N.
    select_credit: f64,
    /// What may leave now: N a second of time passed, not banked while nothing waits.
    release_credit: f64,
    pods: BTreeMap<String, Pod>,
    /// Records offered in this window (their arrival order, whatever their numbers).
    arrivals: u64,
    /// The highest sequence number offered in this window.
    last_seq: u64,
    overflow: u64,
    queue: VecDeque<Out>,
    rng: SplitMix,
    /// `NAMESPACE/POD` of the record offered, built here (no allocation per record).
    key: String,
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
            pending_rate: None,
            select_credit: 0.0,
            release_credit: 0.0,
            pods: BTreeMap::new(),
            arrivals: 0,
            last_seq: 0,
            overflow: 0,
            queue: VecDeque::new(),
            rng: SplitMix(seed),
            key: String::new(),
        }
    }

    /// Change the rate (a FlowTap's `listenerRate` arriving or changing): from the next close.
    pub fn set_rate(&mut self, rate: u32) {
        self.pending_rate = Some(f64::from(rate.max(1)));
    }

    /// The most records any pod can keep in one window: a reservoir never holds more.
    fn capacity(&self) -> usize {
        (self.select_credit + self.per_second * MAX_SPAN.as_secs_f64()).floor() as usize + 1
    }

    /// Offer a record the listener may read and wants, in the tap's order.
    pub fn offer(&mut self, entry: Arc<Entry>) {
        self.arrivals += 1;
        self.last_seq = self.last_seq.max(entry.seq);
        self.key.clear();
        self.key.push_str(entry.meta.namespace().unwrap_or("-"));
        self.key.push('/');
        self.key.push_str(entry.meta.pod().unwrap_or("-"));
        let capacity = self.capacity();
        if !self.pods.contains_key(self.key.as_str()) {
            if self.pods.len() >= MAX_PODS {
                self.overflow += 1;
                return;
            }
            self.pods.insert(self.key.clone(), Pod::default());
        }
        let arrival = self.arrivals;
        let pod = self.pods.get_mut(self.key.as_str()).expect("inserted above");
        pod.seen += 1;
        // Algorithm R: after n records, each is in the reservoir with probability capacity/n.
        if pod.reservoir.len() < capacity {
            pod.reservoir.push((arrival, entry));
        } else {
            let j = self.rng.below(pod.seen);
            if (j as usize) < capacity {
                pod.reservoir[j as usize] = (arrival, entry);
            }
        }
    }

    /// A notice or status frame of the tap: after the records already selected, before the
    /// open window's (the order the tap gave them).
    pub fn frame(&mut self, frame: tokio_tungstenite::tungstenite::Utf8Bytes) {
        self.queue.push_back(Out::Frame(frame));
    }

    /// Whether nothing is in the open window nor waiting to leave.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.overflow == 0 && self.queue.is_empty()
    }

    /// Close the window, `elapsed` after the last close (normally [`WINDOW`]): select from it,
    /// then what may leave now, in order.
    pub fn close(&mut self, elapsed: Duration) -> Vec<Out> {
        if let Some(rate) = self.pending_rate.take() {
            self.per_second = rate;
        }
        let span = elapsed.min(MAX_SPAN).as_secs_f64();
        self.select_credit = (self.select_credit + self.per_second * span).min(self.per_second);
        self.select();
        self.release_credit += self.per_second * span;
        let mut out = vec![];
        while let Some(next) = self.queue.front() {
            match next {
                Out::Record(_) if self.release_credit < 1.0 => break,
                Out::Record(_) => self.release_credit -= 1.0,
                Out::Sampled { .. } | Out::Frame(_) => {}
            }
            out.extend(self.queue.pop_front());
        }
        if self.queue.is_empty() {
            // Nothing waits: credit is not banked for a burst later.
            self.release_credit = self.release_credit.min(1.0);
        }
        out
    }

    /// Everything left, now (the listener is leaving): the open window selected with the credit
    /// there is, then all that waits.
    pub fn drain(&mut self) -> Vec<Out> {
        self.select();
        self.queue.drain(..).collect()
    }

    /// Select from the open window into the queue: its kept records in arrival order, then
    /// what it left out.
    fn select(&mut self) {
        if self.pods.is_empty() && self.overflow == 0 {
            return;
        }
        let budget = self.select_credit.floor() as u64;
        let pods = std::mem::take(&mut self.pods);
        let mut sampled: BTreeMap<String, u64> = BTreeMap::new();
        if self.overflow > 0 {
            *sampled.entry(String::new()).or_default() += std::mem::take(&mut self.overflow);
        }
        let available: Vec<u64> = pods.values().map(|p| p.reservoir.len() as u64).collect();
        let shares = fair_shares(&available, budget, &mut self.rng);
        let mut kept = vec![];
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
                *sampled.entry(key).or_default() += left_out;
            }
            kept.append(&mut pod.reservoir);
        }
        self.select_credit -= kept.len() as f64;
        kept.sort_by_key(|(arrival, _)| *arrival);
        self.queue.extend(kept.into_iter().map(|(_, e)| Out::Record(e)));
        if !sampled.is_empty() {
            self.queue.push_back(Out::Sampled {
                pods: capped(sampled),
                last_seq: std::mem::take(&mut self.last_seq),
            });
        }
        self.arrivals = 0;
    }
}

/// At most [`PODS_PER_FRAME`] pods, the biggest; the others' counts under `""`.
fn capped(mut pods: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    if pods.len() <= PODS_PER_FRAME {
        return pods;
    }
    let mut by_count: Vec<(String, u64)> = std::mem::take(&mut pods).into_iter().collect();
    by_count.sort_by_key(|p| std::cmp::Reverse(p.1));
    let rest: u64 = by_count.drain(PODS_PER_FRAME..).map(|(_, n)| n).sum();
    let mut out: BTreeMap<String, u64> = by_count.into_iter().collect();
    *out.entry(String::new()).or_default() += rest;
    out
}

/// `NAMESPACE/POD` of a record (`-` for what it lacks), as the sampler keys it.
#[cfg(test)]
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

    /// What leaves: (records, left out by pod).
    fn split(out: Vec<Out>) -> (Vec<Arc<Entry>>, BTreeMap<String, u64>) {
        let (mut records, mut sampled) = (vec![], BTreeMap::new());
        for o in out {
            match o {
                Out::Record(e) => records.push(e),
                Out::Sampled { pods, .. } => {
                    for (p, n) in pods {
                        *sampled.entry(p).or_default() += n;
                    }
                }
                Out::Frame(_) => {}
            }
        }
        (records, sampled)
    }

    #[test]
    fn a_steady_stream_keeps_its_share_of_each_window_and_counts_the_rest_per_pod() {
        let mut s = Sampler::seeded(100, 7);
        let (mut kept, mut left_out) = (0, 0);
        for w in 0..20u64 {
            for seq in w * 50..w * 50 + 50 {
                s.offer(entry(seq, "web-1"));
            }
            let (records, sampled) = split(s.close(WINDOW));
            assert!(records.windows(2).all(|p| p[0].seq < p[1].seq), "in the tap's order");
            assert!(records.len() <= 6, "no bunching: {}", records.len());
            kept += records.len();
            left_out += sampled.get("shop/web-1").copied().unwrap_or(0);
        }
        let (rest, more) = split(s.drain());
        kept += rest.len();
        left_out += more.values().sum::<u64>();
        assert_eq!(kept as u64 + left_out, 1000, "everything accounted");
        assert!((95..=105).contains(&kept), "100/s over one second: {kept}");
    }

    #[test]
    fn a_batch_a_second_gets_its_seconds_worth_paced_over_the_second() {
        // fluentd posts a tap's records once a second: the batch lands in one window.
        let mut s = Sampler::seeded(100, 9);
        let mut per_window = vec![];
        let mut kept = 0;
        for second in 0..3u64 {
            for w in 0..20 {
                if w == 0 {
                    for seq in 0..2000 {
                        s.offer(entry(second * 2000 + seq, &format!("web-{}", seq % 4)));
                    }
                }
                let (records, _) = split(s.close(WINDOW));
                per_window.push(records.len());
                kept += records.len();
            }
        }
        // After the first second's credit has built up: about 100 a second, a few a window.
        assert!(per_window.iter().all(|n| *n <= 6), "{per_window:?}");
        let last_second: usize = per_window[40..].iter().sum();
        assert!(
            (90..=110).contains(&last_second),
            "{last_second} in a second: {per_window:?}"
        );
        assert!(kept >= 190, "{kept}");
    }

    #[test]
    fn a_noisy_pod_cannot_silence_the_others() {
        // 200/s: ten records a window once credit is there, one for each of the ten pods.
        let mut s = Sampler::seeded(200, 3);
        s.close(Duration::from_secs(1));
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
        let (records, sampled) = split(s.drain());
        let pods: std::collections::BTreeSet<String> = records.iter().map(|e| pod_key(e)).collect();
        assert_eq!(pods.len(), 10, "every pod: {pods:?}");
        assert_eq!(sampled.values().sum::<u64>() + records.len() as u64, seq);
    }

    #[test]
    fn a_quiet_stretch_banks_at_most_one_second_and_it_leaves_paced() {
        let mut s = Sampler::seeded(100, 1);
        for _ in 0..100 {
            assert!(s.close(WINDOW).is_empty());
        }
        for seq in 0..1000 {
            s.offer(entry(seq, "web"));
        }
        let (first, _) = split(s.close(WINDOW));
        assert!(first.len() <= 6, "paced, not a burst: {}", first.len());
        // The count follows the records it goes with.
        let (rest, sampled) = split(s.drain());
        assert_eq!(first.len() + rest.len(), 100, "one second's worth kept");
        assert_eq!(sampled["shop/web"], 900);
    }

    #[test]
    fn the_sampled_count_follows_its_records_and_names_the_last_sequence_number() {
        let mut s = Sampler::seeded(20, 5);
        s.close(Duration::from_secs(1));
        for seq in 10..60 {
            s.offer(entry(seq, "web"));
        }
        let out = s.drain();
        let last = out.last().unwrap();
        assert!(matches!(last, Out::Sampled { last_seq: 59, .. }), "{last:?}");
        assert!(out[..out.len() - 1].iter().all(|o| matches!(o, Out::Record(_))));
    }

    #[test]
    fn a_notice_keeps_its_place_between_the_records_selected_before_and_after_it() {
        let mut s = Sampler::seeded(100, 6);
        for _ in 0..20 {
            s.close(WINDOW);
        }
        (0..10).for_each(|seq| s.offer(entry(seq, "web")));
        s.close(WINDOW);
        s.frame("notice".into());
        (10..20).for_each(|seq| s.offer(entry(seq, "web")));
        let mut order = vec![];
        for o in s.close(WINDOW).into_iter().chain(s.drain()) {
            match o {
                Out::Record(e) => order.push(e.seq.to_string()),
                Out::Frame(f) => order.push(f.as_str().to_owned()),
                Out::Sampled { .. } => {}
            }
        }
        let at = order.iter().position(|o| o == "notice").unwrap();
        assert!(order[..at].iter().all(|s| s.parse::<u64>().unwrap() < 10), "{order:?}");
        assert!(
            order[at + 1..].iter().all(|s| s.parse::<u64>().unwrap() >= 10),
            "{order:?}"
        );
    }

    #[test]
    fn a_rate_changed_mid_window_applies_from_the_next_close() {
        let mut s = Sampler::seeded(100, 2);
        for _ in 0..20 {
            s.close(WINDOW);
        }
        for seq in 0..500 {
            s.offer(entry(seq, "web"));
        }
        s.set_rate(10);
        let (records, _) = split(s.drain());
        assert_eq!(records.len(), 100, "the window was sampled at 100");
    }

    #[test]
    fn records_within_a_pod_are_chosen_uniformly() {
        // 20 records a window, 2 kept: over many windows every position is kept about as
        // often (a biased sampler favours the first or the last).
        let mut counts = [0u32; 20];
        let mut s = Sampler::seeded(40, 11);
        for round in 0..20_000u64 {
            for i in 0..20 {
                s.offer(entry(round * 20 + i, "web"));
            }
            for o in s.close(WINDOW) {
                if let Out::Record(e) = o {
                    counts[(e.seq % 20) as usize] += 1;
                }
            }
        }
        let expected = 20_000.0 * 2.0 / 20.0;
        for (i, c) in counts.iter().enumerate() {
            let off = (f64::from(*c) - expected).abs() / expected;
            assert!(off < 0.08, "position {i}: {c} vs {expected}");
        }
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
    fn too_many_pods_are_counted_under_one_key_and_a_frame_names_a_hundred_at_most() {
        let mut s = Sampler::seeded(10, 2);
        for seq in 0..(MAX_PODS as u64 + 5) {
            s.offer(entry(seq, &format!("p{seq}")));
        }
        let out = s.drain();
        let names = out
            .iter()
            .filter_map(|o| match o {
                Out::Sampled { pods, .. } => Some(pods.len()),
                _ => None,
            })
            .max()
            .unwrap();
        assert!(names <= PODS_PER_FRAME + 1, "{names}");
        let (records, sampled) = split(out);
        assert_eq!(
            records.len() as u64 + sampled.values().sum::<u64>(),
            MAX_PODS as u64 + 5
        );
    }
}
