//! Who a listener is, what it may see, and who may send records.
//!
//! The relay only knows the traits; standalone mode plugs in [`StaticTokens`] and [`AllowAll`],
//! cluster mode TokenReview and RBAC policies.

use crate::relay::record::Meta;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::path::Path;

/// An authenticated listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
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

/// Tokens from a file in the Kubernetes static token format: `token,user,uid,"group1,group2"`
/// per line (uid and groups optional; `#` starts a comment).
#[derive(Debug, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, Identity>,
}

impl StaticTokens {
    /// Read a token file; errors name the file and line, never the token.
    pub fn load(path: &Path) -> Result<StaticTokens, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    /// Parse the token file format.
    pub fn parse(text: &str) -> Result<StaticTokens, String> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            let (token, user) = match (fields.first(), fields.get(1)) {
                (Some(t), Some(u)) if !t.is_empty() && !u.is_empty() => (t.clone(), u.clone()),
                _ => return Err(format!("line {}: expected token,user[,uid[,\"group1,group2\"]]", i + 1)),
            };
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            if tokens.insert(token, Identity { username: user, groups }).is_some() {
                return Err(format!("line {}: duplicate token", i + 1));
            }
        }
        if tokens.is_empty() {
            return Err("no tokens".into());
        }
        Ok(StaticTokens { tokens })
    }
}

fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields.iter().map(|f| f.trim().to_owned()).collect()
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        let found = self
            .tokens
            .iter()
            .find(|(known, _)| constant_time_eq(known.as_bytes(), token.as_bytes()))
            .map(|(_, id)| id.clone());
        Box::pin(async move { found.ok_or_else(|| AuthError::Rejected("invalid token".into())) })
    }
}

/// Compare secrets without an early exit that would leak how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who may POST records to the ingest port: HTTP Basic credentials (what fluentd's http output
/// `auth` sends), a verified client certificate (mTLS), both, or, only when asked for
/// explicitly, nobody in particular.
#[derive(Clone, Default)]
pub struct IngestAuth {
    basic: Option<(String, String)>,
    client_cert: bool,
}

impl std::fmt::Debug for IngestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = vec![];
        if let Some((user, _)) = &self.basic {
            // Never print the password.
            parts.push(format!("Basic({user})"));
        }
        if self.client_cert {
            parts.push("ClientCertificate".into());
        }
        if parts.is_empty() {
            parts.push("Insecure".into());
        }
        f.write_str(&parts.join("+"))
    }
}

impl IngestAuth {
    /// No check at all: only for isolated test setups; the service warns at start.
    pub fn insecure() -> Self {
        IngestAuth::default()
    }

    /// Require these HTTP Basic credentials.
    pub fn basic(username: &str, password: &str) -> Self {
        IngestAuth {
            basic: Some((username.to_owned(), password.to_owned())),
            client_cert: false,
        }
    }

    /// Also require a client certificate that verified against the ingest client CA.
    pub fn and_client_cert(mut self) -> Self {
        self.client_cert = true;
        self
    }

    /// Whether anyone who reaches the port may send records.
    pub fn is_open(&self) -> bool {
        self.basic.is_none() && !self.client_cert
    }

    /// Read `username:password` (one line) from a file, e.g. a mounted Secret.
    pub fn load_basic(path: &Path) -> Result<IngestAuth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read ingest credentials {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        match line.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(IngestAuth::basic(u, p)),
            _ => Err(format!(
                "ingest credentials {}: expected one line username:password",
                path.display()
            )),
        }
    }

    /// Check a request: its `Authorization` header, and whether its connection presented a
    /// verified client certificate.
    pub fn check(&self, authorization: Option<&str>, client_cert_verified: bool) -> bool {
        if self.client_cert && !client_cert_verified {
            return false;
        }
        match &self.basic {
            None => true,
            Some((username, password)) => {
                let expected = format!("{username}:{password}");
                authorization
                    .and_then(|h| h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic ")))
                    .and_then(|b64| base64_decode(b64.trim(), false))
                    .is_some_and(|given| constant_time_eq(&given, expected.as_bytes()))
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_kubernetes_static_token_format_is_read_with_groups() {
        let t = StaticTokens::parse("# comment\nabc,alice,1,\"dev,ops\"\ndef,bob\n").unwrap();
        let alice = t.authenticate("abc").await.unwrap();
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.groups, ["dev", "ops"]);
        assert!(t.authenticate("ab").await.is_err());
        assert!(StaticTokens::parse("lonely\n").unwrap_err().contains("line 1"));
        assert!(StaticTokens::parse("a,x\na,y\n").unwrap_err().contains("duplicate"));
    }

    #[test]
    fn basic_credentials_are_checked_exactly() {
        let auth = IngestAuth::basic("fluentd", "s3cret");
        // base64("fluentd:s3cret")
        assert!(auth.check(Some("Basic Zmx1ZW50ZDpzM2NyZXQ="), false));
        assert!(!auth.check(Some("Basic Zmx1ZW50ZDpzM2NyZXQx"), false));
        assert!(!auth.check(Some("Bearer Zmx1ZW50ZDpzM2NyZXQ="), false));
        assert!(!auth.check(None, false));
        assert_eq!(format!("{auth:?}"), "Basic(fluentd)", "the password is never printed");
        let both = auth.and_client_cert();
        assert!(
            !both.check(Some("Basic Zmx1ZW50ZDpzM2NyZXQ="), false),
            "no certificate, no entry"
        );
        assert!(both.check(Some("Basic Zmx1ZW50ZDpzM2NyZXQ="), true));
        let mtls = IngestAuth::insecure().and_client_cert();
        assert!(mtls.check(None, true) && !mtls.check(None, false));
        assert!(IngestAuth::insecure().is_open() && !mtls.is_open());
    }
}
