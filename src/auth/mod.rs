//! Who a listener is, what it may see, and who may send records.
//!
//! The relay only knows the traits [`Authenticator`] (token → [`Identity`]) and [`Authorizer`]
//! (may this identity see this record); the implementations live beside them:
//! - [`tokens`]: static tokens (standalone mode) and Kubernetes TokenReview (cluster mode);
//! - [`ingest`]: who may POST records (Basic credentials, client certificates);
//! - [`labels`]: the label policy (pod labels in each record name who may read it);
//! - [`kubernetes`]: `pods/log` access by SubjectAccessReview, and the right to tap a flow.
//!
//! Nothing here may let a record through on an error: every failure denies or answers 503.

pub(crate) mod cache;
pub mod ingest;
pub mod ingest_keys;
pub mod kubernetes;
pub mod labels;
pub mod limit;
pub mod tokens;

pub use ingest::IngestAuth;
pub use tokens::StaticTokens;

use crate::protocol::Meta;
use futures::future::BoxFuture;

/// An authenticated listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A key for caching answers about this identity: its user name and its groups (one user
    /// name may come with other groups), unambiguous whatever they contain.
    pub(crate) fn cache_key(&self) -> String {
        format!("{:?}\u{0}{:?}", self.username, self.groups)
    }
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is not valid (401).
    #[error("{0}")]
    Rejected(String),
    /// Authentication could not be done right now (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Turns a bearer token into an [`Identity`].
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>>;

    /// The answer for `token` if it is known without asking anyone (a cache), so a client over
    /// its failure budget is not made to wait for a token already known to be valid.
    fn known(&self, _token: &str) -> Option<Result<Identity, AuthError>> {
        None
    }
}

/// A per-record authorization decision that could be made without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Not known yet (e.g. not cached): call [`Authorizer::resolve`].
    Ask,
}

/// Decides, per record, whether a listener may see it.
///
/// `decide` runs for every record and must not wait; policies that ask the API server answer
/// `Ask` on a cache miss, and the listener's own task then awaits `resolve` (so a slow API
/// server delays only that listener, never ingest).
pub trait Authorizer: Send + Sync {
    fn decide(&self, who: &Identity, record: &Meta) -> Decision;

    fn resolve<'a>(&'a self, who: &'a Identity, record: &'a Meta) -> BoxFuture<'a, bool> {
        let allowed = self.decide(who, record) == Decision::Allow;
        Box::pin(async move { allowed })
    }
}

/// Every authenticated listener sees every record (standalone mode, where there is no cluster
/// RBAC to consult).
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn decide(&self, _: &Identity, _: &Meta) -> Decision {
        Decision::Allow
    }
}

/// Compare secrets without an early exit that would leak how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Base64 decoding (standard alphabet, or URL-safe with `url`), padding optional; just enough
/// for Basic auth and tokens offered as WebSocket subprotocols.
pub(crate) fn base64_decode(s: &str, url: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' if !url => 62,
            b'/' if !url => 63,
            b'-' if url => 62,
            b'_' if url => 63,
            _ => return None,
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}
