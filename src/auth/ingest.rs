//! Who may POST records to the ingest port.

use super::{base64_decode, constant_time_eq};
use std::path::Path;

/// Whether the peer of a TLS connection presented a certificate that verified against the
/// ingest client CA. The accept loop inserts it into every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCertificate(pub bool);

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

#[cfg(test)]
mod tests {
    use super::*;

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
