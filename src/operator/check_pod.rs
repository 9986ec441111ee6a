//! Naming a configuration check that does not finish: logging-operator runs `fluentd --dry-run`
//! in a check pod in the Logging's control namespace and waits for it forever (a pod that
//! cannot be scheduled or pulled never ends). When log-socket may list pods there (an opt-in
//! Role, see docs/operator.md), a tap in `ConfigCheck` says which pod and why it waits. When it
//! may not, nothing is said: the stage and its age still are.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// logging-operator's label on its configuration check pods.
pub const CHECK_POD_LABEL: &str = "app.kubernetes.io/component=fluentd-configcheck";

/// How long one look at the check pods serves every tap of a Logging waiting for its check.
const FRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// The looks at check pods, by (namespace, Logging), with when they were taken.
pub type Seen = std::sync::Mutex<std::collections::HashMap<(String, String), (std::time::Instant, Option<String>)>>;

/// [`describe`], looked at once per [`FRESH`] per Logging whatever the number of taps waiting.
pub async fn describe_cached(seen: &Seen, client: &kube::Client, namespace: &str, logging: &str) -> Option<String> {
    let key = (namespace.to_owned(), logging.to_owned());
    if let Some((at, words)) = seen.lock().unwrap().get(&key) {
        if at.elapsed() < FRESH {
            return words.clone();
        }
    }
    let words = describe(client, namespace, logging).await;
    let mut seen = seen.lock().unwrap();
    seen.retain(|_, (at, _)| at.elapsed() < FRESH);
    seen.insert(key, (std::time::Instant::now(), words.clone()));
    words
}

/// The newest unfinished check pod of Logging `logging` in `namespace` (logging-operator names
/// them `LOGGING-fluentd-configcheck-HASH`; another Logging's pods in the same namespace are
/// not this tap's business), in words (`... Pending: Unschedulable: 0/3 nodes are
/// available...`); `None` when there is none or it may not be read.
pub async fn describe(client: &kube::Client, namespace: &str, logging: &str) -> Option<String> {
    let prefix = format!("{logging}-fluentd-configcheck-");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = match pods.list(&ListParams::default().labels(CHECK_POD_LABEL)).await {
        Ok(list) => list,
        Err(e) => {
            tracing::debug!(%namespace, error = %e, "cannot list configuration check pods");
            return None;
        }
    };
    let newest = list
        .items
        .iter()
        .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    Some(words(newest))
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// `NAME PHASE[: REASON: MESSAGE]`: why a pod waits, from its scheduling condition or its
/// containers' waiting state.
pub fn words(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        });
    let waiting = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| r != "ContainerCreating" && r != "PodInitializing")
        })
        .map(|w| {
            (
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default(),
            )
        });
    match unscheduled.or(waiting) {
        Some((reason, message)) if !message.is_empty() => {
            format!("check pod {name} {}: {reason}: {message}", phase(pod))
        }
        Some((reason, _)) => format!("check pod {name} {}: {reason}", phase(pod)),
        None => format!("check pod {name} {}", phase(pod)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_waiting_check_pod_is_named_with_why_it_waits() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "fluentd-configcheck-1a2b"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}
        }))
        .unwrap();
        assert_eq!(
            words(&pod),
            "check pod fluentd-configcheck-1a2b Pending: Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."
        );
        let pulling: Pod = serde_json::from_value(json!({
            "metadata": {"name": "c"},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "fluentd", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
        }))
        .unwrap();
        assert_eq!(words(&pulling), "check pod c Pending: ImagePullBackOff");
        let running: Pod =
            serde_json::from_value(json!({"metadata": {"name": "r"}, "status": {"phase": "Running"}})).unwrap();
        assert_eq!(words(&running), "check pod r Running");
    }
}
