//! Who may POST records to the ingest port.

use super::ingest_keys::IngestKeys;
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
    /// Per-path credentials (cluster mode): see [`super::ingest_keys`].
    keys: Option<std::sync::Arc<IngestKeys>>,
    client_cert: bool,
}

/// Why an ingest request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestDenied {
    /// No valid credential (401).
    Unauthorized,
    /// A valid credential, for another path (403).
    WrongPath { credential_for: String },
}

impl std::fmt::Debug for IngestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = vec![];
        if let Some((user, _)) = &self.basic {
            // Never print the password.
            parts.push(format!("Basic({user})"));
        }
        if self.keys.is_some() {
            parts.push("per-flow Basic credential".into());
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
            ..Default::default()
        }
    }

    /// Require the credential of the request's own path (cluster mode).
    pub fn per_flow(keys: std::sync::Arc<IngestKeys>) -> Self {
        IngestAuth {
            keys: Some(keys),
            ..Default::default()
        }
    }

    /// The per-flow keys, if ingest uses them (the operator signs generated outputs with them).
    pub fn keys(&self) -> Option<&std::sync::Arc<IngestKeys>> {
        self.keys.as_ref()
    }

    /// Also require a client certificate that verified against the ingest client CA.
    pub fn and_client_cert(mut self) -> Self {
        self.client_cert = true;
        self
    }

    /// Whether anyone who reaches the port may send records.
    pub fn is_open(&self) -> bool {
        self.basic.is_none() && self.keys.is_none() && !self.client_cert
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

    /// Check a request to `path` (`flow/NS/NAME`): its `Authorization` header, and whether its
    /// connection presented a verified client certificate.
    pub fn check(
        &self,
        authorization: Option<&str>,
        client_cert_verified: bool,
        path: &str,
    ) -> Result<(), IngestDenied> {
        if self.client_cert && !client_cert_verified {
            return Err(IngestDenied::Unauthorized);
        }
        let given = authorization
            .and_then(|h| h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic ")))
            .and_then(|b64| base64_decode(b64.trim(), false));
        if let Some(keys) = &self.keys {
            let (user, password) = given
                .as_deref()
                .and_then(|g| std::str::from_utf8(g).ok())
                .and_then(|g| g.split_once(':'))
                .ok_or(IngestDenied::Unauthorized)?;
            if !keys.verify(user, password) {
                return Err(IngestDenied::Unauthorized);
            }
            if user != path {
                return Err(IngestDenied::WrongPath {
                    credential_for: user.to_owned(),
                });
            }
            return Ok(());
        }
        match &self.basic {
            None => Ok(()),
            Some((username, password)) => {
                let expected = format!("{username}:{password}");
                given
                    .is_some_and(|given| constant_time_eq(&given, expected.as_bytes()))
                    .then_some(())
                    .ok_or(IngestDenied::Unauthorized)
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
        assert!(auth
            .check(Some("Basic Zmx1ZW50ZDpzM2NyZXQ="), false, "flow/a/x")
            .is_ok());
        assert!(auth
            .check(Some("Basic Zmx1ZW50ZDpzM2NyZXQx"), false, "flow/a/x")
            .is_err());
        assert!(auth
            .check(Some("Bearer Zmx1ZW50ZDpzM2NyZXQ="), false, "flow/a/x")
            .is_err());
        assert!(auth.check(None, false, "flow/a/x").is_err());
        assert_eq!(format!("{auth:?}"), "Basic(fluentd)", "the password is never printed");
        let both = auth.and_client_cert();
        assert!(
            both.check(Some("Basic Zmx1ZW50ZDpzM2NyZXQ="), false, "flow/a/x")
                .is_err(),
            "no certificate, no entry"
        );
        assert!(both.check(Some("Basic Zmx1ZW50ZDpzM2NyZXQ="), true, "flow/a/x").is_ok());
        let mtls = IngestAuth::insecure().and_client_cert();
        assert!(mtls.check(None, true, "flow/a/x").is_ok() && mtls.check(None, false, "flow/a/x").is_err());
        assert!(IngestAuth::insecure().is_open() && !mtls.is_open());
    }

    fn basic(user: &str, password: &str) -> String {
        crate::auth::ingest_keys::basic_authorization(user, password)
    }

    #[test]
    fn a_per_flow_credential_opens_its_own_path_only() {
        let keys = std::sync::Arc::new(IngestKeys::from_keys(&["0123456789abcdef0123456789abcdef"]).unwrap());
        let auth = IngestAuth::per_flow(keys.clone());
        let (user, password) = keys.credential("flow/a/x");
        let header = basic(&user, &password);
        assert_eq!(auth.check(Some(&header), false, "flow/a/x"), Ok(()));
        assert_eq!(
            auth.check(Some(&header), false, "flow/b/y"),
            Err(IngestDenied::WrongPath {
                credential_for: "flow/a/x".into()
            })
        );
        assert_eq!(
            auth.check(Some(&header), false, "clusterflow/logging/all-errors"),
            Err(IngestDenied::WrongPath {
                credential_for: "flow/a/x".into()
            })
        );
        // A made-up credential for the target path.
        let forged = basic("flow/b/y", &password);
        assert_eq!(
            auth.check(Some(&forged), false, "flow/b/y"),
            Err(IngestDenied::Unauthorized)
        );
        assert_eq!(auth.check(None, false, "flow/a/x"), Err(IngestDenied::Unauthorized));
        assert_eq!(
            auth.check(Some("Basic !!!"), false, "flow/a/x"),
            Err(IngestDenied::Unauthorized)
        );
        assert!(!auth.is_open());
        let with_cert = IngestAuth::per_flow(keys).and_client_cert();
        assert_eq!(
            with_cert.check(Some(&header), false, "flow/a/x"),
            Err(IngestDenied::Unauthorized)
        );
        assert_eq!(with_cert.check(Some(&header), true, "flow/a/x"), Ok(()));
    }
}
