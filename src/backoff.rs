//! Waits before trying again, for every retry loop of both programs: exponential, capped, and
//! jittered, so many clients (listeners reconnecting to a restarted relay, writers colliding on
//! one FlowTap, a controller failing against the API server) spread out instead of retrying in
//! lockstep. One helper rather than a crate: the three loops want a wait to sleep, not a retry
//! driver (backon's), since each decides itself what to do between tries.

use std::time::Duration;

/// `base` scaled by a uniform random factor in `low..=high` (e.g. 0.5 to 1.0).
pub fn jittered(base: Duration, low: f64, high: f64) -> Duration {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    let fraction = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    base.mul_f64(low + (high - low) * fraction)
}

/// The un-jittered wait before try `n` (1 for the first retry): `first` × `factor`ⁿ⁻¹, at most
/// `max`.
pub fn step(first: Duration, factor: f64, max: Duration, n: u32) -> Duration {
    let exponent = n.saturating_sub(1).min(64) as i32;
    let scaled = first.as_secs_f64() * factor.powi(exponent);
    if scaled >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(scaled)
    }
}

/// Capped doubling with 50–100 % jitter, reset after a success.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    tries: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max: max.max(first),
            tries: 0,
        }
    }

    /// How long to wait before the next try.
    pub fn next_wait(&mut self) -> Duration {
        self.tries = self.tries.saturating_add(1);
        jittered(step(self.first, 2.0, self.max, self.tries), 0.5, 1.0)
    }

    /// Start over from the first wait (after a success).
    pub fn reset(&mut self) {
        self.tries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_grow_by_the_factor_up_to_the_cap() {
        let s = |n| step(Duration::from_secs(1), 2.0, Duration::from_secs(300), n);
        assert_eq!(s(1), Duration::from_secs(1));
        assert_eq!(s(4), Duration::from_secs(8));
        assert_eq!(s(10), Duration::from_secs(300));
        assert_eq!(s(u32::MAX), Duration::from_secs(300), "no overflow");
    }

    #[test]
    fn jitter_stays_within_its_range_and_varies() {
        let base = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(base, 0.5, 1.5)).collect();
        assert!(waits.iter().all(|w| *w >= base / 2 && *w <= base * 3 / 2));
        assert!(waits.iter().any(|w| *w != waits[0]), "random, not constant");
    }
}
