//! A small time-bounded cache for answers of the API server (token reviews, access reviews).
//!
//! Bounded in entries: when full, expired entries go first, then the least recently used
//! eighth, so a flood of new keys (random tokens) cannot flush the answers of the listeners
//! who keep coming back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept per cache.
const CAPACITY: usize = 10_000;

pub(crate) struct Cache<K, V> {
    ttl: Duration,
    capacity: usize,
    /// Value, when it was stored, when it was last read.
    map: Mutex<HashMap<K, (V, Instant, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Cache::with_capacity(ttl, CAPACITY)
    }

    pub(crate) fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        Cache {
            ttl,
            capacity: capacity.max(8),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<V> {
        let mut map = self.map.lock().unwrap();
        let (v, stored, used) = map.get_mut(k)?;
        if stored.elapsed() >= self.ttl {
            return None;
        }
        *used = Instant::now();
        Some(v.clone())
    }

    pub(crate) fn put(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap();
        if map.len() >= self.capacity && !map.contains_key(&k) {
            let ttl = self.ttl;
            map.retain(|_, (_, stored, _)| stored.elapsed() < ttl);
            if map.len() >= self.capacity {
                // The least recently used eighth goes.
                let mut used: Vec<Instant> = map.values().map(|(_, _, u)| *u).collect();
                let nth = used.len() / 8;
                let (_, cut, _) = used.select_nth_unstable(nth);
                let cut = *cut;
                map.retain(|_, (_, _, u)| *u > cut);
            }
        }
        let now = Instant::now();
        map.insert(k, (v, now, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_not_everything() {
        let cache = Cache::with_capacity(Duration::from_secs(60), 16);
        cache.put(0, "kept: read again and again");
        for i in 1..16 {
            cache.put(i, "filler");
        }
        // A flood of new keys; key 0 is read between them, as a returning listener would.
        for i in 100..400 {
            assert!(cache.get(&0).is_some(), "evicted at {i}");
            cache.put(i, "flood");
        }
        assert_eq!(cache.get(&0), Some("kept: read again and again"));
        assert!(cache.map.lock().unwrap().len() <= 16);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = Cache::new(Duration::from_millis(20));
        cache.put("k", 1);
        assert_eq!(cache.get(&"k"), Some(1));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get(&"k"), None);
    }
}
