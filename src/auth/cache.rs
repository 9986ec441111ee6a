//! A small time-bounded cache for answers of the API server (token reviews, access reviews).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept per cache before expired ones are swept.
const CACHE_SWEEP_AT: usize = 10_000;

pub(crate) struct Cache<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }
    pub(crate) fn get(&self, k: &K) -> Option<V> {
        let map = self.map.lock().unwrap();
        map.get(k)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }
    pub(crate) fn put(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap();
        if map.len() >= CACHE_SWEEP_AT {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= CACHE_SWEEP_AT {
                map.clear();
            }
        }
        map.insert(k, (v, Instant::now()));
    }
}
