//! Per-flow ingest credentials: the credential of a tap path is
//! `username = PATH` (`flow/NS/NAME` or `clusterflow/NS/NAME`) and
//! `password = hex(HMAC-SHA256(server key, PATH))`. The relay checks it without any state but
//! its keys, and it is good for that one path only: a tenant who reads the generated Output of
//! its own flow learns nothing that lets it post into another stream.
//!
//! The keys come from a file (a mounted Secret), one per line: the first signs, every line is
//! accepted, so a key is rotated by putting a new first line and keeping the old one below it
//! until every generated Output carries the new credential. The file is read again when it
//! changes (kubelet updates a mounted Secret in place).

use crate::key_file::KeyFile;
use std::path::Path;

pub use crate::key_file::MIN_KEY_LEN;

/// The server's ingest keys (see [`KeyFile`]).
pub struct IngestKeys(KeyFile<ring::hmac::Key>);

impl std::fmt::Debug for IngestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IngestKeys({:?})", self.0)
    }
}

fn hmac_key(line: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, line.as_bytes())
}

impl IngestKeys {
    /// Keys from a file, one per line, the signing key first.
    pub fn load(path: &Path) -> Result<IngestKeys, String> {
        KeyFile::load("ingest", path, hmac_key).map(IngestKeys)
    }

    /// Fixed keys (tests, benches).
    pub fn from_keys(keys: &[&str]) -> Result<IngestKeys, String> {
        KeyFile::from_keys("ingest", keys, hmac_key).map(IngestKeys)
    }

    /// The credential (username, password) for posting to `path` (`flow/NS/NAME`).
    pub fn credential(&self, path: &str) -> (String, String) {
        let tag = self.0.with(|keys| ring::hmac::sign(&keys[0], path.as_bytes()));
        (path.to_owned(), hex(tag.as_ref()))
    }

    /// Whether `password` is the credential of `username` under any of the keys.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let Some(tag) = unhex(password) else {
            return false;
        };
        // ring's verify compares in constant time.
        self.0.with(|keys| {
            keys.iter()
                .any(|k| ring::hmac::verify(k, username.as_bytes(), &tag).is_ok())
        })
    }
}

/// The credential of `path` under the keys in `file` (`log-socket ingest-credential`); the
/// path is checked as the relay would route it.
pub fn credential_for(path: &str, file: &Path) -> Result<(String, String), String> {
    let mut parts = path.trim_matches('/').splitn(3, '/');
    let (kind, ns, name) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let key = crate::protocol::TapKey::parse(kind, ns, name)
        .map_err(|e| format!("{path:?} is not a flow path (flow/NAMESPACE/NAME or clusterflow/NAMESPACE/NAME): {e}"))?;
    Ok(IngestKeys::load(file)?.credential(&key.to_string()))
}

/// The `Authorization` header fluentd's `auth` sends for a username and password.
pub fn basic_authorization(username: &str, password: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{username}:{password}");
    let mut out = String::from("Basic ");
    for c in raw.as_bytes().chunks(3) {
        let n = u32::from(c[0]) << 16 | u32::from(*c.get(1).unwrap_or(&0)) << 8 | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef-key-a";
    const B: &str = "fedcba9876543210fedcba9876543210-key-b";

    #[test]
    fn the_basic_header_is_what_fluentd_sends() {
        // base64("fluentd:s3cret"), as curl -u sends it.
        assert_eq!(basic_authorization("fluentd", "s3cret"), "Basic Zmx1ZW50ZDpzM2NyZXQ=");
        assert_eq!(basic_authorization("a", "b"), "Basic YTpi");
        assert_eq!(basic_authorization("ab", "c"), "Basic YWI6Yw==");
    }

    #[test]
    fn a_credential_is_good_for_its_own_path_only() {
        let keys = IngestKeys::from_keys(&[A]).unwrap();
        let (user, password) = keys.credential("flow/a/x");
        assert_eq!(user, "flow/a/x");
        assert_eq!(password.len(), 64);
        assert!(keys.verify("flow/a/x", &password));
        assert!(!keys.verify("flow/b/y", &password));
        assert!(!keys.verify("clusterflow/a/x", &password));
        assert!(!keys.verify("flow/a/x", &password.to_uppercase()[..63]));
        assert!(!keys.verify("flow/a/x", ""));
        assert!(!keys.verify("flow/a/x", "zz"));
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_accepts_the_others() {
        let old = IngestKeys::from_keys(&[A]).unwrap();
        let (_, by_old) = old.credential("flow/a/x");
        let rotated = IngestKeys::from_keys(&[B, A]).unwrap();
        let (_, by_new) = rotated.credential("flow/a/x");
        assert_ne!(by_old, by_new);
        assert!(rotated.verify("flow/a/x", &by_old) && rotated.verify("flow/a/x", &by_new));
        let done = IngestKeys::from_keys(&[B]).unwrap();
        assert!(!done.verify("flow/a/x", &by_old), "a retired key is refused");
    }

    #[test]
    fn short_or_missing_keys_are_refused_with_what_to_do() {
        let e = IngestKeys::from_keys(&["short"]).unwrap_err();
        assert!(e.contains("openssl rand -hex 32"), "{e}");
        let e = IngestKeys::from_keys(&["# only a comment"]).unwrap_err();
        assert!(e.contains("no ingest key"), "{e}");
        assert_eq!(
            format!("{:?}", IngestKeys::from_keys(&[A, B]).unwrap()),
            "IngestKeys(2 key(s))",
            "keys are never printed"
        );
    }

    #[test]
    fn a_changed_key_file_is_read_again_and_a_broken_one_keeps_the_keys() {
        let dir = std::env::temp_dir().join(format!("ingest-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, format!("{A}\n")).unwrap();
        let keys = IngestKeys::load(&file).unwrap();
        let (_, by_a) = keys.credential("flow/a/x");
        std::fs::write(&file, format!("{B}\n{A}\n")).unwrap();
        // The next look at the file is due.
        keys.0.due();
        let (_, by_b) = keys.credential("flow/a/x");
        assert_ne!(by_a, by_b, "signs with the new first key");
        assert!(keys.verify("flow/a/x", &by_a), "the old key is still accepted");
        std::fs::write(&file, "").unwrap();
        keys.0.due();
        assert!(keys.verify("flow/a/x", &by_b), "an emptied file keeps the keys in use");
        std::fs::remove_dir_all(&dir).ok();
    }
}
