//! Which flow a tap follows: `flow/NAMESPACE/NAME` or `clusterflow/NAMESPACE/NAME`. The same
//! string is the listener path (`/flow/NS/NAME`), the ingest path, and what a per-flow ingest
//! credential signs, so it is written in one place.

use crate::k8s::flowtap::FlowKind;
use std::fmt;

/// A flow: the path segment `{flow|clusterflow}/{namespace}/{name}`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TapKey {
    pub kind: FlowKind,
    pub namespace: String,
    pub name: String,
}

/// Whether `s` can name a namespaced Kubernetes object (a DNS subdomain: lower-case letters,
/// digits, '-' and '.', starting and ending with a letter or digit, at most 253 bytes).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl TapKey {
    /// Read path segments, refusing anything that cannot name a Kubernetes object.
    pub fn parse(kind: &str, namespace: &str, name: &str) -> Result<TapKey, String> {
        let kind = match kind {
            "flow" => FlowKind::Flow,
            "clusterflow" => FlowKind::ClusterFlow,
            other => return Err(format!("unknown flow kind {other:?}; use flow or clusterflow")),
        };
        for (what, value) in [("namespace", namespace), ("name", name)] {
            if !valid_name(value) {
                return Err(format!("invalid {what} {value:?}: not a Kubernetes object name"));
            }
        }
        Ok(TapKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The listener path on the relay: `/flow/NS/NAME` or `/clusterflow/NS/NAME`.
    pub fn path(&self) -> String {
        format!("/{self}")
    }
}

impl fmt::Display for TapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind.path_segment(), self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_key_reads_back_what_it_writes() {
        let key = TapKey::parse("clusterflow", "logging", "all-1.x").unwrap();
        assert_eq!(key.to_string(), "clusterflow/logging/all-1.x");
        assert_eq!(key.path(), "/clusterflow/logging/all-1.x");
        let written = key.to_string();
        let back: Vec<&str> = written.splitn(3, '/').collect();
        assert_eq!(TapKey::parse(back[0], back[1], back[2]).unwrap(), key);
    }

    #[test]
    fn names_that_cannot_be_kubernetes_objects_are_refused() {
        for bad in ["", "Web", "web_1", "-web", "web-", "a/b", &"x".repeat(254)] {
            assert!(TapKey::parse("flow", "default", bad).is_err(), "{bad:?}");
            assert!(TapKey::parse("flow", bad, "web").is_err(), "{bad:?}");
        }
        assert!(TapKey::parse("pod", "default", "web").is_err());
    }
}
