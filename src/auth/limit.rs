//! A bound on failed listener authentications per client, so a client trying tokens is told to
//! slow down (`429`) and its reviews queue behind a small, fair allowance instead of flooding
//! the API server with TokenReviews (answers to repeated tokens are cached, failures included).
//! A token that authenticates is never refused for it: a blocked client's tokens are still
//! checked, in turn.
//!
//! A client is what it cannot choose: its connection's address, or, when that address is a
//! configured proxy (`--trusted-proxies`, e.g. the API servers whose service proxy k8stail goes
//! through), the address the proxy appended last to `X-Forwarded-For`. Anything a client writes
//! itself (the rest of `X-Forwarded-For`) is ignored. Each gets [`PER_CLIENT`] failures per
//! [`WINDOW`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(10);
pub const PER_CLIENT: u32 = 20;
/// Clients tracked at most; expired entries are dropped when there are more.
const MAX_TRACKED: usize = 10_000;

/// The address a request's connection came from (the accept loop adds it to each request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

#[derive(Default)]
pub struct FailureLimit {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// Blocked clients with a review under way: one at a time each.
    in_review: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
}

/// A blocked client's one review under way; ends when dropped.
pub struct Reviewing {
    key: String,
    set: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Drop for Reviewing {
    fn drop(&mut self) {
        self.set.lock().unwrap().remove(&self.key);
    }
}

/// Who failed: the address, and what the proxy says the client was.
pub struct Client<'a> {
    pub address: Option<IpAddr>,
    pub forwarded_for: Option<&'a str>,
}

/// Networks whose `X-Forwarded-For` is believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// `ADDRESS[/BITS]`, comma-separated.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (addr, bits) = s.split_once('/').unwrap_or((s, ""));
                let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address or CIDR"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    "" => max,
                    b => b
                        .parse()
                        .ok()
                        .filter(|b| *b <= max)
                        .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
                };
                Ok((addr, bits))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        self.0.iter().any(|(net, len)| {
            if net.is_ipv4() != ip.is_ipv4() {
                return false;
            }
            // IPv4 addresses sit in the top 32 bits, so a prefix counts from the top either way.
            let len = u32::from(*len);
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            bits(*net) & mask == bits(ip) & mask
        })
    }
}

/// An address as a client key: IPv4-mapped IPv6 as IPv4, IPv6 by its /64 (one host gets a
/// whole /64 to pick from).
fn client_of(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        v4 => v4.to_string(),
    }
}

impl Client<'_> {
    /// The key of the client: the address the proxy appended last to `X-Forwarded-For` when
    /// the connection comes from a trusted proxy, else the connection's address. A last entry
    /// that is not an address gets a bucket of its own, never the proxy's.
    fn key(&self, trusted: &TrustedProxies) -> String {
        let Some(peer) = self.address.map(|a| a.to_canonical()) else {
            return "-".to_owned();
        };
        match self.forwarded_for {
            Some(forwarded) if trusted.contains(peer) => {
                let last = forwarded.rsplit(',').next().unwrap_or("").trim();
                match last.parse::<IpAddr>() {
                    Ok(ip) => format!("{} {}", client_of(peer), client_of(ip)),
                    Err(_) => format!("{} ?{}", client_of(peer), last.chars().take(64).collect::<String>()),
                }
            }
            _ => client_of(peer),
        }
    }
}

impl FailureLimit {
    /// What `client` is counted as.
    pub fn key(&self, client: &Client<'_>, trusted: &TrustedProxies) -> String {
        client.key(trusted)
    }

    /// Start the one review a blocked client `key` may have under way; `None` if it has one.
    pub fn reviewing(&self, key: &str) -> Option<Reviewing> {
        self.in_review
            .lock()
            .unwrap()
            .insert(key.to_owned())
            .then(|| Reviewing {
                key: key.to_owned(),
                set: self.in_review.clone(),
            })
    }

    /// How long until `client` may try again, if it used up its failures.
    pub fn blocked(&self, client: &Client<'_>, trusted: &TrustedProxies) -> Option<Duration> {
        let map = self.failures.lock().unwrap();
        let (n, since) = map.get(&client.key(trusted))?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (*n >= PER_CLIENT).then_some(left)
    }

    /// Count a failed authentication of `client`.
    pub fn failed(&self, client: &Client<'_>, trusted: &TrustedProxies) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
            if map.len() >= MAX_TRACKED {
                // Still full of live entries (a flood from many addresses): keep the blocked
                // ones, forget the rest (they start counting again).
                map.retain(|_, (n, _)| *n >= PER_CLIENT);
            }
        }
        let entry = map.entry(client.key(trusted)).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/24").unwrap()
    }

    #[test]
    fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
        let limit = FailureLimit::default();
        let addr = Some("10.0.0.1".parse().unwrap());
        let alice = Client {
            address: addr,
            forwarded_for: Some("192.0.2.7"),
        };
        let bob = Client {
            address: addr,
            forwarded_for: Some("192.0.2.8"),
        };
        for _ in 0..PER_CLIENT {
            assert_eq!(limit.blocked(&alice, &proxy()), None);
            limit.failed(&alice, &proxy());
        }
        let left = limit.blocked(&alice, &proxy()).expect("blocked");
        assert!(left <= WINDOW);
        assert_eq!(
            limit.blocked(&bob, &proxy()),
            None,
            "another client behind the same proxy"
        );
    }

    #[test]
    fn what_a_client_writes_in_x_forwarded_for_itself_is_ignored() {
        let limit = FailureLimit::default();
        // Through the trusted proxy: only the entry the proxy appended (the last) counts.
        let via = |written: &str| Client {
            address: Some("10.0.0.1".parse().unwrap()),
            forwarded_for: Some(Box::leak(format!("{written}, 192.0.2.66").into_boxed_str())),
        };
        for i in 0..PER_CLIENT {
            limit.failed(&via(&format!("198.51.100.{i}")), &proxy());
        }
        assert!(limit.blocked(&via("203.0.113.1"), &proxy()).is_some());
        // Directly (not a trusted proxy): the header is ignored, the address is the client.
        let direct = |written: &'static str| Client {
            address: Some("172.16.0.9".parse().unwrap()),
            forwarded_for: Some(written),
        };
        for _ in 0..PER_CLIENT {
            limit.failed(&direct("198.51.100.1"), &proxy());
        }
        assert!(limit.blocked(&direct("203.0.113.1"), &proxy()).is_some());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1, fd00::/8").unwrap();
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("192.0.2.1".parse().unwrap()));
        assert!(!t.contains("192.0.2.2".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nope").is_err());
    }

    #[test]
    fn a_last_entry_that_is_not_an_address_is_a_bucket_of_its_own_and_ipv6_counts_by_its_64() {
        let t = proxy();
        let via = |f: &'static str| Client {
            address: Some("10.0.0.1".parse().unwrap()),
            forwarded_for: Some(f),
        };
        assert_ne!(via("\u{fffd}").key(&t), via("192.0.2.1").key(&t));
        assert_ne!(
            via("\u{fffd}").key(&t),
            Client {
                address: Some("10.0.0.1".parse().unwrap()),
                forwarded_for: None
            }
            .key(&t)
        );
        assert_eq!(via("2001:db8::1").key(&t), via("2001:db8::ffff").key(&t), "one /64");
        let mapped = Client {
            address: Some("::ffff:10.0.0.1".parse().unwrap()),
            forwarded_for: Some("192.0.2.1"),
        };
        assert_eq!(
            mapped.key(&t),
            via("192.0.2.1").key(&t),
            "an IPv4-mapped peer is the IPv4 one"
        );
        let limit = FailureLimit::default();
        let first = limit.reviewing("k").expect("the first review");
        assert!(limit.reviewing("k").is_none(), "one at a time");
        drop(first);
        assert!(limit.reviewing("k").is_some());
    }
}
