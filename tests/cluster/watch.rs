//! Watching a test's objects from its start, to check a property over every version the API
//! server served, in its order (resourceVersion), instead of sampling after a sleep.

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

pub(crate) type Seen = Arc<Mutex<Vec<(u64, &'static str, Value)>>>;

/// Every event of `api`'s objects from resourceVersion `from`, as (resourceVersion, type,
/// object), collected until the returned task is aborted.
pub(crate) fn watch_all(api: Api<DynamicObject>, from: String) -> (Seen, tokio::task::JoinHandle<()>) {
    watch_with(api, WatchParams::default().timeout(290), from)
}

/// [`watch_all`] of the objects `params` selects.
pub(crate) fn watch_with(
    api: Api<DynamicObject>,
    params: WatchParams,
    from: String,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Default::default();
    let into = seen.clone();
    let task = tokio::spawn(async move {
        let stream = api.watch(&params, &from).await.unwrap();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let (what, object) = match event.unwrap() {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                _ => continue,
            };
            let rv = object
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or("0")
                .parse()
                .unwrap();
            into.lock()
                .unwrap()
                .push((rv, what, serde_json::to_value(object).unwrap()));
        }
    });
    (seen, task)
}

pub(crate) fn api(client: &kube::Client, ns: &str, group: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version) = group.split_once('/').unwrap();
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The resourceVersion of the namespace's `kind` list now: watches from it see what follows.
pub(crate) async fn now(api: &Api<DynamicObject>) -> String {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

pub(crate) fn names(obj: &Value, field: &str) -> Vec<String> {
    obj["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// In the API server's order: no output was gone (deleted) while a flow still named it.
pub(crate) fn no_output_went_while_named(flows: &[(u64, &str, Value)], outputs: &[(u64, &str, Value)], field: &str) {
    for (gone_at, _, output) in outputs.iter().filter(|(_, what, _)| *what == "DELETED") {
        let name = output["metadata"]["name"].as_str().unwrap();
        let mut latest: std::collections::BTreeMap<&str, &Value> = Default::default();
        for (_, what, flow) in flows.iter().filter(|(rv, _, _)| rv <= gone_at) {
            let flow_name = flow["metadata"]["name"].as_str().unwrap();
            if *what == "DELETED" {
                latest.remove(flow_name);
            } else {
                latest.insert(flow_name, flow);
            }
        }
        for (flow_name, flow) in latest {
            assert!(
                !names(flow, field).iter().any(|r| r == name),
                "output {name} was deleted (rv {gone_at}) while flow {flow_name} named it: {flow}"
            );
        }
    }
}

/// Change `flow`'s annotation `poke` to `n`: a watch event that makes the controller look again.
pub(crate) async fn poke(client: &kube::Client, ns: &str, kind: &str, flow: &str, n: u32) {
    let patch = json!({"metadata": {"annotations": {"poke": n.to_string()}}});
    api(client, ns, "logging.banzaicloud.io/v1beta1", kind)
        .patch(flow, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The namespace's Flows, Outputs and FlowTaps, watched from when [`Watched::start`] returns.
pub(crate) struct Watched {
    client: kube::Client,
    ns: String,
    seen: Vec<(&'static str, Seen, tokio::task::JoinHandle<()>)>,
    marks: u32,
}

const KINDS: [(&str, &str); 3] = [
    ("Flow", "logging.banzaicloud.io/v1beta1"),
    ("Output", "logging.banzaicloud.io/v1beta1"),
    ("FlowTap", "logsocket.dev/v1alpha1"),
];

impl Watched {
    pub(crate) async fn start(client: &kube::Client, ns: &str) -> Watched {
        let mut seen = vec![];
        for (kind, group) in KINDS {
            let api = api(client, ns, group, kind);
            let (events, task) = watch_all(api.clone(), now(&api).await);
            seen.push((kind, events, task));
        }
        Watched {
            client: client.clone(),
            ns: ns.to_owned(),
            seen,
            marks: 0,
        }
    }

    /// Every event of `kind` seen so far, in the API server's order.
    pub(crate) fn events(&self, kind: &str) -> Vec<(u64, &'static str, Value)> {
        let (_, seen, _) = self.seen.iter().find(|(k, _, _)| *k == kind).expect("a watched kind");
        let mut events = seen.lock().unwrap().clone();
        events.sort_by_key(|(rv, _, _)| *rv);
        events
    }

    /// Every version of `kind` `name` seen so far, in order (deletions included).
    pub(crate) fn versions(&self, kind: &str, name: &str) -> Vec<(u64, &'static str, Value)> {
        self.events(kind)
            .into_iter()
            .filter(|(_, _, o)| o["metadata"]["name"] == name)
            .collect()
    }

    /// Wait until the watches have seen everything up to now: mark each of `objects` (kind,
    /// name) with an annotation and wait for the mark (an annotation makes the controller look
    /// again at a flow, and changes nothing else).
    pub(crate) async fn caught_up(&mut self, objects: &[(&str, &str)]) {
        self.marks += 1;
        let mark = self.marks.to_string();
        for (kind, name) in objects {
            let (_, group) = KINDS.iter().find(|(k, _)| k == kind).expect("a watched kind");
            let patch = json!({"metadata": {"annotations": {"test-mark": mark}}});
            api(&self.client, &self.ns, group, kind)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
        for (kind, name) in objects {
            testkit::poll::eventually(&format!("the {kind} watch caught up"), || async {
                self.versions(kind, name)
                    .iter()
                    .any(|(_, _, o)| o["metadata"]["annotations"]["test-mark"].as_str() == Some(mark.as_str()))
                    .then_some(())
            })
            .await;
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for (_, _, task) in &self.seen {
            task.abort();
        }
    }
}
