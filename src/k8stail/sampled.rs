//! What `--rate` left out, said on stderr: the relay's `dropped` frames with reason `sampled`
//! (one per 50 ms window at most) added up and said at most once a second, as
//! `1 234 records sampled out (web-1: 1 100, web-2: 134)`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How many pods a note names; the rest are `…`.
const PODS_NAMED: usize = 5;

/// Counts not said yet, and when the last note was.
#[derive(Default)]
pub struct Tally {
    total: u64,
    pods: BTreeMap<String, u64>,
    last: Option<Instant>,
}

impl Tally {
    /// Add one frame's counts (`pods` by `NAMESPACE/POD`); the note to print now, when the last
    /// one is a second old. Pods of `namespace` are named without it.
    pub fn add(&mut self, count: u64, pods: &BTreeMap<String, u64>, namespace: &str, now: Instant) -> Option<String> {
        self.total += count;
        for (pod, n) in pods {
            let name = pod
                .strip_prefix(namespace)
                .and_then(|p| p.strip_prefix('/'))
                .unwrap_or(pod);
            *self.pods.entry(name.to_owned()).or_default() += n;
        }
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => None,
            _ => {
                self.last = Some(now);
                self.take()
            }
        }
    }

    /// The note of what is counted and not said yet, when the last one is a second old (a
    /// stream that went quiet still says the last of it).
    pub fn due(&mut self, now: Instant) -> Option<String> {
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => None,
            _ if self.total == 0 => None,
            _ => {
                self.last = Some(now);
                self.take()
            }
        }
    }

    /// The note of what is counted and not said yet (at the end of a stream).
    pub fn take(&mut self) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let mut pods: Vec<(String, u64)> = std::mem::take(&mut self.pods).into_iter().collect();
        pods.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut named: Vec<String> = pods
            .iter()
            .take(PODS_NAMED)
            .map(|(pod, n)| format!("{pod}: {}", grouped(*n)))
            .collect();
        if pods.len() > PODS_NAMED {
            named.push("…".into());
        }
        let total = std::mem::take(&mut self.total);
        Some(match named.is_empty() {
            true => format!("{} records sampled out (--rate)", grouped(total)),
            false => format!("{} records sampled out ({})", grouped(total), named.join(", ")),
        })
    }
}

/// `1234567` as `1 234 567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(p: &[(&str, u64)]) -> BTreeMap<String, u64> {
        p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn frames_of_one_second_make_one_note_naming_the_biggest_pods_first() {
        let mut t = Tally::default();
        let t0 = Instant::now();
        let first = t.add(1100, &pods(&[("shop/web-1", 1100)]), "shop", t0);
        assert_eq!(first.as_deref(), Some("1 100 records sampled out (web-1: 1 100)"));
        assert_eq!(
            t.add(
                134,
                &pods(&[("shop/web-2", 134)]),
                "shop",
                t0 + Duration::from_millis(100)
            ),
            None
        );
        assert_eq!(
            t.add(
                1000,
                &pods(&[("shop/web-1", 1000)]),
                "shop",
                t0 + Duration::from_millis(500)
            ),
            None
        );
        let note = t.add(0, &pods(&[]), "shop", t0 + Duration::from_millis(1000));
        assert_eq!(
            note.as_deref(),
            Some("1 134 records sampled out (web-1: 1 000, web-2: 134)")
        );
        assert_eq!(t.take(), None, "nothing left");
        t.add(5, &pods(&[("shop/web-1", 5)]), "shop", t0 + Duration::from_millis(1100));
        assert_eq!(
            t.due(t0 + Duration::from_millis(1500)),
            None,
            "not within a second of the last"
        );
        assert_eq!(
            t.due(t0 + Duration::from_millis(2000)).as_deref(),
            Some("5 records sampled out (web-1: 5)")
        );
    }

    #[test]
    fn other_namespaces_keep_their_name_and_many_pods_end_in_an_ellipsis() {
        let mut t = Tally::default();
        let many = pods(&[
            ("a/p1", 6),
            ("a/p2", 5),
            ("a/p3", 4),
            ("b/p4", 3),
            ("b/p5", 2),
            ("b/p6", 1),
        ]);
        let note = t.add(21, &many, "a", Instant::now()).unwrap();
        assert_eq!(
            note,
            "21 records sampled out (p1: 6, p2: 5, p3: 4, b/p4: 3, b/p5: 2, …)"
        );
        assert_eq!(grouped(1_234_567), "1 234 567");
        assert_eq!(grouped(999), "999");
    }
}
