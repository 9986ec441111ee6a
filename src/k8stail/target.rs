//! What to follow: a Flow or a ClusterFlow, named as kubectl users name objects.

use crate::k8s::flowtap::FlowKind;
use crate::protocol::tap_key::valid_name;
use crate::protocol::TapKey;

/// A target as written: its namespace may still be missing (taken from `-n` or the context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub kind: FlowKind,
    pub namespace: Option<String>,
    pub name: String,
}

const FORMS: &str =
    "NAME, NAMESPACE/NAME, flow/NAME, flow/NAMESPACE/NAME, clusterflow/NAME or clusterflow/NAMESPACE/NAME";

fn kind_of(word: &str) -> Option<FlowKind> {
    match word.to_ascii_lowercase().as_str() {
        "flow" | "flows" => Some(FlowKind::Flow),
        "clusterflow" | "clusterflows" => Some(FlowKind::ClusterFlow),
        _ => None,
    }
}

impl Named {
    /// Read one FLOW argument. `flow/web` is the Flow `web` (kubectl's TYPE/NAME); a namespace
    /// literally called `flow` is written out: `flow/flow/web`.
    pub fn parse(text: &str, clusterflow: bool) -> Result<Named, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let (kind, namespace, name) = match parts.as_slice() {
            [name] => (None, None, *name),
            [first, name] if kind_of(first).is_some() => (kind_of(first), None, *name),
            // stern's `deployment/nginx`; a namespace of that name is written flow/NS/NAME.
            [first, _] if workload_kind(first) => return Err(not_a_flow(text)),
            [ns, name] => (None, Some(*ns), *name),
            [kind, ns, name] => match kind_of(kind) {
                Some(k) => (Some(k), Some(*ns), *name),
                None => return Err(not_a_flow(text)),
            },
            _ => return Err(not_a_flow(text)),
        };
        let kind = match (kind, clusterflow) {
            (None, false) | (Some(FlowKind::Flow), false) => FlowKind::Flow,
            (None, true) | (Some(FlowKind::ClusterFlow), _) => FlowKind::ClusterFlow,
            (Some(FlowKind::Flow), true) => return Err(format!("{text:?} names a Flow, but --clusterflow was given")),
        };
        for part in namespace.iter().chain([&name]) {
            if !valid_name(part) {
                return Err(if looks_like_a_pod_query(text) {
                    not_a_flow(text)
                } else {
                    format!(
                        "{text:?}: namespace and name must be Kubernetes object names (lower-case letters, digits, '-', '.'); write {FORMS}"
                    )
                });
            }
        }
        Ok(Named {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The target, its namespace defaulted.
    pub fn in_namespace(self, default: &str) -> TapKey {
        TapKey {
            kind: self.kind,
            namespace: self.namespace.unwrap_or_else(|| default.to_owned()),
            name: self.name,
        }
    }
}

/// Regex characters: stern's pod query habit.
fn looks_like_a_pod_query(text: &str) -> bool {
    text.contains(['.', '*', '\\', '^', '$', '[', '(', '|', '+', '?'])
}

/// A kubectl kind stern accepts as `KIND/NAME`.
fn workload_kind(word: &str) -> bool {
    [
        "deployment",
        "deployments",
        "deploy",
        "pod",
        "pods",
        "po",
        "statefulset",
        "statefulsets",
        "sts",
        "daemonset",
        "daemonsets",
        "ds",
        "job",
        "jobs",
        "replicaset",
        "replicasets",
        "rs",
        "service",
        "services",
        "svc",
    ]
    .contains(&word.to_ascii_lowercase().as_str())
}

fn not_a_flow(text: &str) -> String {
    let pods = match text.split_once('/') {
        Some((_, name)) if !name.contains('/') => format!(" --pod '^{name}-'"),
        _ => format!(" --pod '{text}'"),
    };
    format!(
        "{text:?} is not a flow: k8stail follows a logging-operator Flow or ClusterFlow, written {FORMS} (`k8stail taps -A` lists the tapped ones; shell completion offers them all); to pick pods within it, add{pods}"
    )
}

/// Parse a fully written `[flow/|clusterflow/]NAMESPACE/NAME`.
pub fn parse(text: &str, clusterflow: bool) -> Result<TapKey, String> {
    let named = Named::parse(text, clusterflow)?;
    if named.namespace.is_none() {
        return Err(format!("{text:?} names no namespace: write NAMESPACE/NAME"));
    }
    Ok(named.in_namespace(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_with_or_without_a_kind_and_a_namespace() {
        let n = |s: &str, c: bool| Named::parse(s, c);
        let web = n("web", false).unwrap();
        assert_eq!((web.kind, web.namespace.as_deref()), (FlowKind::Flow, None));
        assert_eq!(web.in_namespace("shop").to_string(), "flow/shop/web");
        assert_eq!(n("shop/web", false).unwrap().namespace.as_deref(), Some("shop"));
        assert_eq!(n("flow/web", false).unwrap().namespace, None, "kubectl's TYPE/NAME");
        assert_eq!(n("flow/flow/web", false).unwrap().namespace.as_deref(), Some("flow"));
        assert_eq!(n("clusterflow/all", false).unwrap().kind, FlowKind::ClusterFlow);
        assert_eq!(
            n("ClusterFlows/logging/all", false).unwrap().kind,
            FlowKind::ClusterFlow
        );
        assert_eq!(n("all", true).unwrap().kind, FlowKind::ClusterFlow);
        assert!(n("flow/shop/web", true).unwrap_err().contains("--clusterflow"));
        assert!(n("shop/Web", false).unwrap_err().contains("object names"));
        assert!(n("shop/", false).is_err());
        assert!(n("a/b/c/d", false).unwrap_err().contains("not a flow"));
        assert_eq!(parse("shop/web", false).unwrap().path(), "/flow/shop/web");
        assert!(parse("web", false).is_err());
    }

    #[test]
    fn a_stern_pod_query_is_answered_with_the_k8stail_way() {
        for query in [".", "web-\\w", "deployment/nginx", "deploy/web", "a/b/c/d"] {
            let err = Named::parse(query, false).unwrap_err();
            assert!(err.contains("is not a flow") && err.contains("--pod"), "{query}: {err}");
        }
        assert!(Named::parse("deployment/nginx", false)
            .unwrap_err()
            .contains("--pod '^nginx-'"));
    }
}
