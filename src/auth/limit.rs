//! A bound on failed listener authentications per client, so random tokens cannot turn the
//! relay into a TokenReview flood against the API server (answers to repeated tokens are
//! already cached, failures included).
//!
//! A client is its address, and behind the API server's service proxy (one address for every
//! user) the `X-Forwarded-For` the proxy adds: each gets [`PER_CLIENT`] failures per
//! [`WINDOW`]. Since a direct client can write any `X-Forwarded-For`, its address alone also
//! gets a larger budget, [`PER_ADDRESS`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(10);
pub const PER_CLIENT: u32 = 20;
pub const PER_ADDRESS: u32 = 200;
/// Clients tracked at most; expired entries are dropped when there are more.
const MAX_TRACKED: usize = 10_000;

/// The address a request's connection came from (the accept loop adds it to each request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

#[derive(Default)]
pub struct FailureLimit {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Who failed: the address, and what the proxy says the client was.
pub struct Client<'a> {
    pub address: Option<IpAddr>,
    pub forwarded_for: Option<&'a str>,
}

impl Client<'_> {
    fn keys(&self) -> [(String, u32); 2] {
        let address = self.address.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let forwarded: String = self
            .forwarded_for
            .and_then(|f| f.split(',').next())
            .map(str::trim)
            .unwrap_or("")
            .chars()
            .take(64)
            .collect();
        [(format!("{address} {forwarded}"), PER_CLIENT), (address, PER_ADDRESS)]
    }
}

impl FailureLimit {
    /// How long until `client` may try again, if it used up its failures.
    pub fn blocked(&self, client: &Client<'_>) -> Option<Duration> {
        let map = self.failures.lock().unwrap();
        client
            .keys()
            .iter()
            .filter_map(|(k, max)| {
                let (n, since) = map.get(k)?;
                let left = WINDOW.checked_sub(since.elapsed())?;
                (*n >= *max).then_some(left)
            })
            .max()
    }

    /// Count a failed authentication of `client`.
    pub fn failed(&self, client: &Client<'_>) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
        }
        for (key, _) in client.keys() {
            let entry = map.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_stopped_after_its_failures_and_others_are_not() {
        let limit = FailureLimit::default();
        let addr = Some("10.0.0.1".parse().unwrap());
        let alice = Client {
            address: addr,
            forwarded_for: Some("192.0.2.7"),
        };
        let bob = Client {
            address: addr,
            forwarded_for: Some("192.0.2.8, 10.0.0.9"),
        };
        for _ in 0..PER_CLIENT {
            assert_eq!(limit.blocked(&alice), None);
            limit.failed(&alice);
        }
        let left = limit.blocked(&alice).expect("blocked");
        assert!(left <= WINDOW);
        assert_eq!(limit.blocked(&bob), None, "another client behind the same proxy");
    }

    #[test]
    fn a_client_that_invents_forwarded_addresses_is_stopped_by_its_own_address() {
        let limit = FailureLimit::default();
        let addr = Some("10.0.0.2".parse().unwrap());
        let names: Vec<String> = (0..PER_ADDRESS).map(|i| format!("198.51.100.{i}")).collect();
        for n in &names {
            limit.failed(&Client {
                address: addr,
                forwarded_for: Some(n),
            });
        }
        let fresh = Client {
            address: addr,
            forwarded_for: Some("203.0.113.1"),
        };
        assert!(limit.blocked(&fresh).is_some());
    }
}
