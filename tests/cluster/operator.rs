//! The tap operator against the real API server: listeners refcount FlowTaps, the controller
//! turns them into outputs appended to flows, and everything is restored when they go.

use kube::api::{Api, DynamicObject, ListParams, PostParams};
use log_socket::k8s::flowtap::FlowTap;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use testkit::cluster;
use testkit::relay::*;

pub(crate) const LINGER: Duration = Duration::from_secs(2);

use testkit::cluster::{Harness, INGEST_URL};
use testkit::poll::eventually;

pub(crate) async fn harness(prefix: &str) -> Harness {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, prefix).await;
    harness_in(client, ns, true).await
}

pub(crate) async fn harness_in(client: kube::Client, ns: String, with_controller: bool) -> Harness {
    cluster::harness_with(client, ns, with_controller, LINGER, Duration::from_secs(6)).await
}

/// A listener's token, allowed to tap flows in the namespace.
pub(crate) async fn listener(h: &Harness, name: &str) -> String {
    let token = cluster::service_account_token(&h.client, &h.ns, name).await;
    cluster::grant(&h.client, &h.ns, name, cluster::may_tap_flows()).await;
    token
}

pub(crate) async fn raw(h: &Harness, kind: &str, name: &str) -> Option<Value> {
    cluster::logging_api(&h.client, &h.ns, kind)
        .get_opt(name)
        .await
        .unwrap()
        .map(|o: DynamicObject| serde_json::to_value(o).unwrap())
}

pub(crate) async fn tap(h: &Harness, name: &str) -> Option<FlowTap> {
    Api::<FlowTap>::namespaced(h.client.clone(), &h.ns)
        .get_opt(name)
        .await
        .unwrap()
}

pub(crate) async fn listeners(h: &Harness, name: &str) -> Option<u32> {
    tap(h, name).await.map(|t| t.status.unwrap_or_default().listeners)
}

pub(crate) fn flow_spec() -> Value {
    json!({
        "match": [{"select": {"labels": {"app": "web"}}}],
        "filters": [{"tag_normaliser": {}}],
        "localOutputRefs": ["loki"],
    })
}

#[tokio::test]
async fn a_listener_taps_a_flow_and_the_flow_is_restored_exactly_after_the_last_one_leaves() {
    let h = harness("op-flow").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let before = raw(&h, "Flow", "web").await.unwrap()["spec"].clone();
    let alice = listener(&h, "alice").await;
    let bob = listener(&h, "bob").await;

    let mut a = connect(&h.relay, &format!("/flow/{}/web", h.ns), &alice).await;
    assert_eq!(
        listeners(&h, "flow-web").await,
        Some(1),
        "the FlowTap exists with one listener"
    );

    let output = eventually("the Output", || async { raw(&h, "Output", "logsocket-flow-web").await }).await;
    let http = &output["spec"]["http"];
    assert_eq!(http["endpoint"], format!("{INGEST_URL}/flow/{}/web", h.ns));
    assert_eq!(http["json_array"], true);
    assert_eq!(http["format"], json!({"type": "json", "add_newline": false}));
    assert_eq!(
        (http["open_timeout"].clone(), http["read_timeout"].clone()),
        (json!(5), json!(10))
    );
    assert_eq!(http["retryable_response_codes"], json!([429, 502, 503, 504]));
    let buffer = &http["buffer"];
    assert_eq!(buffer["type"], "memory");
    // In plain seconds, the one form fluentd reads exactly (`1s` would be, but `500ms` is not).
    assert_eq!(buffer["flush_interval"], "1");
    assert_eq!(buffer["overflow_action"], "drop_oldest_chunk");
    assert_eq!(buffer["retry_forever"], false);
    // The credential of this flow's path only, inline (no Secret in the tenant's namespace).
    let path = format!("flow/{}/web", h.ns);
    let (user, password) = testkit::relay::test_keys().credential(&path);
    assert_eq!(
        http["auth"],
        json!({"username": {"value": user}, "password": {"value": password}})
    );
    assert_eq!(
        output["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "log-socket"
    );
    // It names its FlowTap by UID, without an ownerReference: the garbage collector must never
    // delete an output a flow may still name.
    let uid = tap(&h, "flow-web").await.unwrap().metadata.uid.unwrap();
    assert_eq!(
        output["metadata"]["annotations"]["logsocket.dev/flowtap-uid"],
        json!(uid)
    );
    assert!(output["metadata"].get("ownerReferences").is_none(), "{output}");

    let flow = eventually("the flow patched", || async {
        let f = raw(&h, "Flow", "web").await.unwrap();
        (f["spec"]["localOutputRefs"] == json!(["loki", "logsocket-flow-web"])).then_some(f)
    })
    .await;
    assert_eq!(flow["spec"]["filters"], before["filters"], "other fields kept");
    assert_eq!(flow["spec"]["match"], before["match"]);

    eventually("phase Active", || async {
        (tap(&h, "flow-web").await?.status?.phase == Some(log_socket::k8s::flowtap::Phase::Active)).then_some(())
    })
    .await;
    let (ok, out, err) = cluster::kubectl(&["get", "flowtaps", "-n", &h.ns]);
    assert!(ok, "{err}");
    let row: Vec<&str> = out.lines().nth(1).expect("a row").split_whitespace().collect();
    assert_eq!(&row[..6], ["flow-web", "Flow", "web", "1", "false", "Active"], "{out}");

    // A second listener shares the tap: count 2, still one output.
    let mut b = connect(&h.relay, &format!("/flow/{}/web", h.ns), &bob).await;
    assert_eq!(listeners(&h, "flow-web").await, Some(2));
    let outputs = cluster::logging_api(&h.client, &h.ns, "Output")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(outputs.items.len(), 1);

    // Records flow to both.
    let record = json!([{"message": "hi", "kubernetes": {"namespace_name": h.ns, "pod_name": "web-1",
                                                          "labels": {"rbac/policy": "allow"}}}]);
    assert_eq!(
        post(&h.relay, &format!("/flow/{}/web", h.ns), &record.to_string())
            .await
            .0,
        200
    );
    assert_eq!(next(&mut a).await["record"]["message"], "hi");
    assert_eq!(next(&mut b).await["record"]["message"], "hi");

    // Both leave: the count drops at once; after the linger the tap, the output and the ref go.
    drop(a);
    drop(b);
    eventually("no listeners", || async {
        (listeners(&h, "flow-web").await? == 0).then_some(())
    })
    .await;
    eventually("the tap deleted", || async {
        tap(&h, "flow-web").await.is_none().then_some(())
    })
    .await;
    assert!(
        raw(&h, "Output", "logsocket-flow-web").await.is_none(),
        "output deleted"
    );
    assert_eq!(
        raw(&h, "Flow", "web").await.unwrap()["spec"],
        before,
        "the flow is exactly as before"
    );
    // The flow's owner sees both changes on the flow itself (kubectl describe flow web).
    let events = events_api(&h);
    let on_flow = |reason: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.data["reason"] == reason
                    && e.data["regarding"]["kind"] == "Flow"
                    && e.data["regarding"]["name"] == "web"
            })
        }
    };
    let added = eventually("a TapAdded Event on the flow", || on_flow("TapAdded")).await;
    assert!(
        added.data["note"].as_str().unwrap().contains("logsocket-flow-web"),
        "{added:?}"
    );
    eventually("a TapRemoved Event on the flow", || on_flow("TapRemoved")).await;
}

#[tokio::test]
async fn with_no_linger_a_new_tap_waits_for_its_listener_to_register_and_goes_when_it_leaves() {
    // The listener creates the FlowTap, then registers its session: in between the controller
    // saw a tap with no listener, and with no linger deleted it (found by the bench).
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "op-nolinger").await;
    let h = cluster::harness_with(client, ns, true, Duration::ZERO, Duration::from_secs(6)).await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let alice = listener(&h, "alice").await;
    for round in 0..3 {
        let ws = connect(&h.relay, &format!("/flow/{}/web", h.ns), &alice).await;
        eventually(&format!("round {round}: the tap Active with its listener"), || async {
            let status = tap(&h, "flow-web").await?.status?;
            (status.phase == Some(log_socket::k8s::flowtap::Phase::Active) && status.listeners == 1).then_some(())
        })
        .await;
        drop(ws);
        eventually(&format!("round {round}: the tap gone"), || async {
            tap(&h, "flow-web").await.is_none().then_some(())
        })
        .await;
        assert_eq!(
            raw(&h, "Flow", "web").await.unwrap()["spec"]["localOutputRefs"],
            json!(["loki"])
        );
    }
}

#[tokio::test]
async fn a_clusterflow_tap_gets_a_clusteroutput_in_the_global_refs() {
    let h = harness("op-cf").await;
    let spec = json!({"match": [{"select": {"namespaces": ["shop"]}}], "globalOutputRefs": ["archive"]});
    cluster::create_cluster_flow(&h.client, &h.ns, "all", spec.clone()).await;
    let alice = listener(&h, "alice").await;
    let ws = connect(&h.relay, &format!("/clusterflow/{}/all", h.ns), &alice).await;

    let co = eventually("the ClusterOutput", || async {
        raw(&h, "ClusterOutput", &format!("logsocket-{}.clusterflow-all", h.ns)).await
    })
    .await;
    assert_eq!(
        co["spec"]["http"]["endpoint"],
        format!("{INGEST_URL}/clusterflow/{}/all", h.ns)
    );
    assert_eq!(co["spec"]["protected"], true, "no tenant Flow may name it");
    eventually("the ClusterFlow patched", || async {
        let f = raw(&h, "ClusterFlow", "all").await.unwrap();
        let generated = format!("logsocket-{}.clusterflow-all", h.ns);
        (f["spec"]["globalOutputRefs"] == json!(["archive", generated])).then_some(())
    })
    .await;
    drop(ws);
    eventually("the tap deleted", || async {
        tap(&h, "clusterflow-all").await.is_none().then_some(())
    })
    .await;
    assert!(raw(&h, "ClusterOutput", &format!("logsocket-{}.clusterflow-all", h.ns))
        .await
        .is_none());
    assert_eq!(raw(&h, "ClusterFlow", "all").await.unwrap()["spec"], spec);
}

#[tokio::test]
async fn a_persistent_tap_from_yaml_stays_without_listeners_and_listeners_join_it() {
    let h = harness("op-gitops").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let yaml = format!(
        "apiVersion: logsocket.dev/v1alpha1\nkind: FlowTap\nmetadata: {{name: web-tap, namespace: {}}}\n\
         spec: {{flowRef: {{kind: Flow, name: web}}, persistent: true, replay: {{records: 2}},\n\
         buffer: {{flushInterval: 500ms}}}}\n",
        h.ns
    );
    let (ok, _, err) = cluster::kubectl_with(&cluster::env().kubeconfig, &["apply", "-f", "-"], Some(&yaml));
    assert!(ok, "{err}");
    let output = eventually("the Output", || async { raw(&h, "Output", "logsocket-web-tap").await }).await;
    assert_eq!(
        output["spec"]["http"]["buffer"]["flush_interval"], "0.5",
        "spec.buffer is rendered, 500ms as the half second fluentd must read (not 500 minutes)"
    );
    eventually("the flow patched", || async {
        let f = raw(&h, "Flow", "web").await.unwrap();
        (f["spec"]["localOutputRefs"] == json!(["loki", "logsocket-web-tap"])).then_some(())
    })
    .await;

    tokio::time::sleep(LINGER * 2).await;
    assert!(
        tap(&h, "web-tap").await.is_some(),
        "a persistent tap outlives the linger"
    );

    // While nobody listens, the relay keeps the tap's newest `replay.records` for late joiners.
    let path = format!("/flow/{}/web", h.ns);
    let allowed = |m: &str| {
        json!({"message": m, "kubernetes": {"pod_name": "web-1", "namespace_name": h.ns,
                                   "labels": {"rbac/policy": "allow"}}})
    };
    let batch: Vec<Value> = (1..=5).map(|i| allowed(&format!("early-{i}"))).collect();
    assert_eq!(post(&h.relay, &path, &array(&batch)).await.0, 200);

    let alice = listener(&h, "alice").await;
    let mut ws = connect(&h.relay, &format!("{path}?tail=100"), &alice).await;
    let marker = "after-join";
    assert_eq!(post(&h.relay, &path, &array(&[allowed(marker)])).await.0, 200);
    assert_eq!(
        messages(&records_until(&mut ws, marker).await),
        ["early-4", "early-5"],
        "spec.replay.records bounds what a late joiner gets"
    );
    assert_eq!(
        listeners(&h, "web-tap").await,
        Some(1),
        "the listener joined the persistent tap"
    );
    assert!(tap(&h, "flow-web").await.is_none(), "no ephemeral tap beside it");
    drop(ws);

    // Deleting it (from git) restores the flow and removes the output.
    let (ok, _, err) = cluster::kubectl(&["delete", "flowtap", "web-tap", "-n", &h.ns, "--wait=false"]);
    assert!(ok, "{err}");
    eventually("the tap gone", || async {
        tap(&h, "web-tap").await.is_none().then_some(())
    })
    .await;
    assert!(raw(&h, "Output", "logsocket-web-tap").await.is_none());
    assert_eq!(
        raw(&h, "Flow", "web").await.unwrap()["spec"]["localOutputRefs"],
        json!(["loki"])
    );
}

#[tokio::test]
async fn concurrent_listeners_are_all_counted_and_all_removed() {
    let h = harness("op-many").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let token = listener(&h, "alice").await;
    let path = format!("/flow/{}/web", h.ns);
    let connects = (0..8).map(|_| connect(&h.relay, &path, &token));
    let sockets = futures::future::join_all(connects).await;
    let t = tap(&h, "flow-web").await.unwrap();
    let status = t.status.unwrap();
    assert_eq!(status.listeners, 8, "no session lost to a concurrent write");
    let mut ids: Vec<&str> = status.sessions.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    assert!(status
        .sessions
        .iter()
        .all(|s| s.user == format!("system:serviceaccount:{}:alice", h.ns)));
    drop(sockets);
    eventually("all sessions removed", || async {
        (listeners(&h, "flow-web").await? == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_controller_repairs_a_removed_ref_and_keeps_concurrent_flow_edits() {
    let h = harness("op-drift").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let alice = listener(&h, "alice").await;
    let _ws = connect(&h.relay, &format!("/flow/{}/web", h.ns), &alice).await;
    eventually("the flow patched", || async {
        let f = raw(&h, "Flow", "web").await.unwrap();
        (f["spec"]["localOutputRefs"] == json!(["loki", "logsocket-flow-web"])).then_some(())
    })
    .await;

    // Someone (a GitOps sync) rewrites the list without the tap, and adds an output of theirs.
    let flows: Api<log_socket::k8s::logging::Flow> = Api::namespaced(h.client.clone(), &h.ns);
    let mut f = flows.get("web").await.unwrap();
    f.spec.local_output_refs = Some(vec!["loki".into(), "s3".into()]);
    flows.replace("web", &PostParams::default(), &f).await.unwrap();

    eventually("the ref repaired, last, with the user's change kept", || async {
        let f = raw(&h, "Flow", "web").await.unwrap();
        (f["spec"]["localOutputRefs"] == json!(["loki", "s3", "logsocket-flow-web"])).then_some(())
    })
    .await;
    event(&h, "FlowRepaired").await;
}

/// The test namespace's Events (events.k8s.io/v1).
pub(crate) fn events_api(h: &Harness) -> Api<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(
        h.client.clone(),
        &h.ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
            "events",
        ),
    )
}

/// Wait for an Event with this reason in the test namespace.
pub(crate) async fn event(h: &Harness, reason: &str) {
    let events = events_api(h);
    eventually(&format!("a {reason} event"), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.data["reason"] == reason).then_some(())
    })
    .await;
}

/// Create a persistent FlowTap from JSON `spec`.
pub(crate) async fn persistent_tap(h: &Harness, name: &str, spec: Value) -> FlowTap {
    cluster::create_flowtap(&h.client, &h.ns, name, spec).await
}

pub(crate) async fn status_when(
    h: &Harness,
    name: &str,
    what: &str,
    ok: impl Fn(&log_socket::k8s::flowtap::FlowTapStatus) -> bool,
) -> log_socket::k8s::flowtap::FlowTapStatus {
    status_within(h, name, what, Duration::from_secs(30), ok).await
}

/// [`status_when`], giving up after `limit`.
pub(crate) async fn status_within(
    h: &Harness,
    name: &str,
    what: &str,
    limit: Duration,
    ok: impl Fn(&log_socket::k8s::flowtap::FlowTapStatus) -> bool,
) -> log_socket::k8s::flowtap::FlowTapStatus {
    testkit::poll::eventually_within(what, limit, || async {
        let s = tap(h, name).await?.status?;
        ok(&s).then_some(s)
    })
    .await
}

/// Set `skipInvalidResources` on the harness's Logging: logging-operator then drops a flow it
/// cannot render (and says why in its status) instead of failing the whole Logging.
pub(crate) async fn skip_invalid_resources(h: &Harness) {
    let skip = json!({"spec": {"skipInvalidResources": true}});
    cluster::loggings(&h.client)
        .patch(
            &h.logging_operator.logging,
            &Default::default(),
            &kube::api::Patch::Merge(&skip),
        )
        .await
        .unwrap();
}

/// Every render of the test's Loggings succeeded (every ref resolved, no flow dropped, the real
/// fluentd accepted every rendered configuration), from the harness's start until now.
pub(crate) async fn never_broke_the_render(h: &Harness) {
    let failures = h.logging_operator.render_failures_settled().await;
    assert!(failures.is_empty(), "the render failed: {failures:?}");
}

/// Whether the status has a condition `type_` with `reason`.
pub(crate) fn has_reason(s: &log_socket::k8s::flowtap::FlowTapStatus, type_: &str, reason: &str) -> bool {
    s.conditions.iter().any(|c| c.type_ == type_ && c.reason == reason)
}

pub(crate) fn condition<'a>(s: &'a log_socket::k8s::flowtap::FlowTapStatus, type_: &str) -> (&'a str, &'a str) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {s:?}"));
    (c.status.as_str(), c.reason.as_str())
}

#[tokio::test]
async fn a_mirror_tap_leaves_the_flow_untouched_and_follows_its_match_and_filters() {
    let h = harness("op-mirror").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let before = raw(&h, "Flow", "web").await.unwrap();
    persistent_tap(
        &h,
        "web-tap",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true, "mode": "Mirror"}),
    )
    .await;

    let mirror = eventually("the mirror flow", || async {
        raw(&h, "Flow", "logsocket-web-tap").await
    })
    .await;
    assert_eq!(mirror["spec"]["match"], before["spec"]["match"]);
    assert_eq!(mirror["spec"]["filters"], before["spec"]["filters"]);
    assert_eq!(
        mirror["spec"]["localOutputRefs"],
        json!(["logsocket-web-tap"]),
        "only the tap"
    );
    assert_eq!(
        mirror["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "log-socket"
    );
    let uid = tap(&h, "web-tap").await.unwrap().metadata.uid.unwrap();
    assert_eq!(
        mirror["metadata"]["annotations"]["logsocket.dev/flowtap-uid"],
        json!(uid)
    );
    assert!(mirror["metadata"].get("ownerReferences").is_none(), "{mirror}");
    assert!(raw(&h, "Output", "logsocket-web-tap").await.is_some());
    let status = status_when(&h, "web-tap", "phase Active", |s| {
        s.phase == Some(log_socket::k8s::flowtap::Phase::Active)
    })
    .await;
    assert_eq!(condition(&status, "FlowPatched"), ("True", "Mirrored"));
    // Its status is logging-operator's to write; its spec and metadata stay as they were.
    let after = raw(&h, "Flow", "web").await.unwrap();
    assert_eq!(
        (
            &after["spec"],
            &after["metadata"]["generation"],
            &after["metadata"]["annotations"]
        ),
        (
            &before["spec"],
            &before["metadata"]["generation"],
            &before["metadata"]["annotations"]
        ),
        "the original flow was never written"
    );

    // The user changes the flow's filters: the mirror follows.
    let flows = cluster::logging_api(&h.client, &h.ns, "Flow");
    let mut f = flows.get("web").await.unwrap();
    f.data["spec"]["filters"] =
        json!([{"tag_normaliser": {}}, {"grep": {"regexp": [{"key": "level", "pattern": "/error/"}]}}]);
    let after = flows.replace("web", &PostParams::default(), &f).await.unwrap();
    eventually("the mirror follows the new filters", || async {
        let m = raw(&h, "Flow", "logsocket-web-tap").await?;
        (m["spec"]["filters"] == after.data["spec"]["filters"]).then_some(())
    })
    .await;
    event(&h, "MirrorSynced").await;

    let (ok, _, err) = cluster::kubectl(&["delete", "flowtap", "web-tap", "-n", &h.ns, "--wait=false"]);
    assert!(ok, "{err}");
    eventually("the tap gone", || async {
        tap(&h, "web-tap").await.is_none().then_some(())
    })
    .await;
    assert!(raw(&h, "Flow", "logsocket-web-tap").await.is_none(), "mirror removed");
    assert!(raw(&h, "Output", "logsocket-web-tap").await.is_none(), "output removed");
    assert_eq!(
        raw(&h, "Flow", "web").await.unwrap()["metadata"]["resourceVersion"],
        after.metadata.resource_version.clone().unwrap(),
        "the original flow was never written"
    );
}

#[tokio::test]
async fn leftovers_of_deleted_taps_are_removed_at_start_and_foreign_objects_are_kept() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "op-orphans").await;
    let managed = json!({"app.kubernetes.io/managed-by": "log-socket"});
    let gone_owner = json!([{"apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap", "name": "old",
                             "uid": "00000000-0000-0000-0000-000000000000", "controller": true}]);
    let http = json!({"http": {"endpoint": "http://log-socket.test.svc:10000/flow/x/web"}});
    let object = |kind: &str, name: &str, meta: Value, spec: Value| {
        let mut o = cluster::logging_object(kind, name, spec);
        o["metadata"]
            .as_object_mut()
            .unwrap()
            .extend(meta.as_object().unwrap().clone());
        o
    };
    // Left by a tap that is gone: its output, a ref to it, a ref to an output already deleted,
    // and a mirror flow.
    cluster::create_logging(
        &client,
        &ns,
        object(
            "Output",
            "logsocket-old",
            json!({"labels": managed, "ownerReferences": gone_owner}),
            http.clone(),
        ),
    )
    .await;
    cluster::create_logging(
        &client,
        &ns,
        object(
            "Flow",
            "logsocket-old-mirror",
            json!({"labels": managed, "ownerReferences": gone_owner}),
            json!({"match": [{"select": {}}], "localOutputRefs": ["logsocket-old"]}),
        ),
    )
    .await;
    // Someone else's: an unlabelled output that happens to use our prefix.
    cluster::create_logging(
        &client,
        &ns,
        object("Output", "logsocket-theirs", json!({}), http.clone()),
    )
    .await;
    let mut spec = flow_spec();
    spec["localOutputRefs"] = json!(["loki", "logsocket-old", "logsocket-deleted", "logsocket-theirs"]);
    cluster::create_flow(&client, &ns, "web", spec).await;

    let h = harness_in(client, ns, true).await;
    eventually("the leftover refs removed", || async {
        let f = raw(&h, "Flow", "web").await.unwrap();
        (f["spec"]["localOutputRefs"] == json!(["loki", "logsocket-theirs"])).then_some(())
    })
    .await;
    eventually("the leftover output and mirror deleted", || async {
        (raw(&h, "Output", "logsocket-old").await.is_none() && raw(&h, "Flow", "logsocket-old-mirror").await.is_none())
            .then_some(())
    })
    .await;
    assert!(
        raw(&h, "Output", "logsocket-theirs").await.is_some(),
        "unlabelled objects are never deleted"
    );
    let f = raw(&h, "Flow", "web").await.unwrap();
    assert_eq!(f["spec"]["match"], flow_spec()["match"], "the rest of the flow is kept");
}

#[tokio::test]
async fn a_tap_reports_arriving_records_and_the_problems_logging_operator_finds() {
    let h = harness("op-status").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    persistent_tap(
        &h,
        "web-tap",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true}),
    )
    .await;
    let status = status_when(&h, "web-tap", "phase Active", |s| {
        s.phase == Some(log_socket::k8s::flowtap::Phase::Active)
    })
    .await;
    assert_eq!(condition(&status, "Receiving"), ("False", "NoRecordsYet"));
    assert!(status.last_record_time.is_none());

    let record = json!({"message": "m", "kubernetes": {"pod_name": "web-1", "namespace_name": h.ns}});
    let path = format!("/flow/{}/web", h.ns);
    eventually("the relay takes records for the tap", || async {
        (post(&h.relay, &path, &array(std::slice::from_ref(&record))).await.0 == 200).then_some(())
    })
    .await;
    let status = status_when(&h, "web-tap", "Receiving", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Receiving" && c.status == "True")
    })
    .await;
    let last = status.last_record_time.expect("lastRecordTime is set").0;
    assert!(
        (k8s_openapi::jiff::Timestamp::now().as_second() - last.as_second()).abs() < 60,
        "{last}"
    );

    // The flow's owner adds a ref to a ClusterOutput that does not exist; with
    // skipInvalidResources logging-operator drops the flow and says why in its status: the tap
    // says so and is Degraded (the problem is not its output's).
    skip_invalid_resources(&h).await;
    let flows = cluster::logging_api(&h.client, &h.ns, "Flow");
    let dangling = json!({"spec": {"globalOutputRefs": ["nowhere"]}});
    flows
        .patch("web", &Default::default(), &kube::api::Patch::Merge(&dangling))
        .await
        .unwrap();
    let status = status_when(&h, "web-tap", "phase Degraded", |s| {
        s.phase == Some(log_socket::k8s::flowtap::Phase::Degraded)
    })
    .await;
    assert_eq!(condition(&status, "FlowPatched"), ("False", "FlowProblems"));
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "FlowPatched")
        .unwrap()
        .message;
    assert!(message.contains("\"nowhere\" not found"), "{message}");
}

#[tokio::test]
async fn sessions_live_while_renewed_whatever_their_relays_clock_and_expire_when_renewals_stop() {
    let h = harness("op-expire").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let api: Api<FlowTap> = Api::namespaced(h.client.clone(), &h.ns);
    persistent_tap(
        &h,
        "web-tap",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true}),
    )
    .await;
    // Two relays whose clocks are an hour behind and an hour ahead of the controller's. Their
    // renewals are what a live relay writes: its own clock's time, every second.
    let sessions = |tick: i64| {
        let at = |skew: i64| {
            k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second() + skew + tick)
                .unwrap()
                .to_string()
        };
        json!({"status": {"listeners": 2, "sessions": [
            {"id": "behind/1", "user": "someone", "since": at(-3600), "relay": "behind", "renewTime": at(-3600)},
            {"id": "ahead/1", "user": "someone", "since": at(3600), "relay": "ahead", "renewTime": at(3600)}]}})
    };
    let taps = crate::watch::api(&h.client, &h.ns, "logsocket.dev/v1alpha1", "FlowTap");
    let from = crate::watch::now(&taps).await;
    let (seen, watch) = crate::watch::watch_all(taps, from);
    // Renewed for three session TTLs (6 s here): neither may expire.
    for tick in 0..18 {
        api.patch_status(
            "web-tap",
            &Default::default(),
            &kube::api::Patch::Merge(&sessions(tick)),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let renewed_until = std::time::Instant::now();
    // Renewals stop (both relays crashed): both expire, after the TTL as this process counts it.
    eventually("both sessions expired", || async {
        let s = api.get("web-tap").await.ok()?.status?;
        (s.sessions.is_empty() && s.listeners == 0).then_some(())
    })
    .await;
    assert!(
        renewed_until.elapsed() >= Duration::from_secs(5),
        "expired {:?} after the last renewal",
        renewed_until.elapsed()
    );
    watch.abort();
    // While renewed, every version the API server served kept both (a version without them
    // before the renewals stopped would be the controller expiring a live session).
    let versions = seen.lock().unwrap().clone();
    let renewals: Vec<&(u64, &str, Value)> = versions
        .iter()
        .skip_while(|(_, _, t)| t["status"]["sessions"].as_array().is_none_or(|s| s.is_empty()))
        .take_while(|(_, _, t)| t["status"]["sessions"].as_array().is_some_and(|s| !s.is_empty()))
        .collect();
    assert!(renewals.len() >= 18, "{} versions with sessions", renewals.len());
    for (rv, _, t) in &renewals {
        let ids: Vec<&str> = t["status"]["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids.len(), 2, "a live session expired at rv {rv}: {t}");
    }
}

#[tokio::test]
async fn a_restart_between_creating_the_output_and_patching_the_flow_completes_the_tap() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "op-crash").await;
    // First life: no controller; the tap and its output exist, the flow was never patched.
    cluster::create_flow(&client, &ns, "web", flow_spec()).await;
    let api: Api<FlowTap> = Api::namespaced(client.clone(), &ns);
    let tap: FlowTap = serde_json::from_value(json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": "web-tap", "finalizers": ["logsocket.dev/cleanup"]},
        "spec": {"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true}
    }))
    .unwrap();
    let tap = api.create(&PostParams::default(), &tap).await.unwrap();
    let output = json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Output",
        "metadata": {"name": "logsocket-web-tap", "labels": {"app.kubernetes.io/managed-by": "log-socket"},
                     "ownerReferences": [{"apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap", "name": "web-tap",
                                          "uid": tap.metadata.uid, "controller": true}]},
        "spec": {"http": {"endpoint": "http://stale.example/flow/x/y"}}});
    cluster::create_logging(&client, &ns, output).await;

    // Second life: the controller finishes the job (and repairs the stale output).
    let h = harness_in(client, ns, true).await;
    eventually("the flow patched", || async {
        let f = raw(&h, "Flow", "web").await.unwrap();
        (f["spec"]["localOutputRefs"] == json!(["loki", "logsocket-web-tap"])).then_some(())
    })
    .await;
    let out = raw(&h, "Output", "logsocket-web-tap").await.unwrap();
    assert_eq!(
        out["spec"]["http"]["endpoint"],
        format!("{INGEST_URL}/flow/{}/web", h.ns)
    );
}

#[tokio::test]
async fn an_output_name_taken_by_someone_else_is_left_alone_and_reported() {
    let h = harness("op-taken").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let theirs = json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Output",
        "metadata": {"name": "logsocket-web-tap"}, "spec": {"loki": {"url": "http://loki:3100"}}});
    cluster::create_logging(&h.client, &h.ns, theirs).await;
    let api: Api<FlowTap> = Api::namespaced(h.client.clone(), &h.ns);
    persistent_tap(
        &h,
        "web-tap",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true}),
    )
    .await;
    let status = eventually("phase Failed", || async {
        let s = api.get("web-tap").await.ok()?.status?;
        (s.phase == Some(log_socket::k8s::flowtap::Phase::Failed)).then_some(s)
    })
    .await;
    let c = status.conditions.iter().find(|c| c.type_ == "OutputReady").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NameTaken"));
    assert!(
        raw(&h, "Output", "logsocket-web-tap").await.unwrap()["spec"]["loki"].is_object(),
        "untouched"
    );
    assert_eq!(
        raw(&h, "Flow", "web").await.unwrap()["spec"]["localOutputRefs"],
        json!(["loki"]),
        "flow untouched"
    );
}

/// Frames until a tap `status` frame for which `done` holds; returns the tap status frames.
pub(crate) async fn tap_statuses(ws: &mut Ws, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = vec![];
    loop {
        let f = next_any(ws).await;
        if f["type"] == "status" && f["state"] == "tap" {
            seen.push(f.clone());
            if done(&f) {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn a_listener_is_told_how_its_tap_warms_up() {
    let h = harness("op-warmup").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let alice = listener(&h, "alice").await;
    let path = format!("/flow/{}/web", h.ns);
    let mut ws = connect(&h.relay, &path, &alice).await;
    let seen = tap_statuses(&mut ws, |f| f["phase"] == "Active" && f["stage"] == "ConfigApplied").await;
    let last = seen.last().unwrap();
    assert_eq!(last["flowTap"], "flow-web");
    assert_eq!(last["conditions"]["OutputReady"], true);
    assert_eq!(last["conditions"]["FlowPatched"], true);
    assert!(
        last["message"].as_str().unwrap().contains("waiting for fluentd"),
        "{seen:?}"
    );

    let record = json!({"message": "m", "kubernetes": {"pod_name": "web-1", "namespace_name": h.ns,
                        "labels": {"rbac/policy": "allow"}}});
    assert_eq!(post(&h.relay, &path, &array(&[record])).await.0, 200);
    let seen = tap_statuses(&mut ws, |f| f["conditions"]["Receiving"] == true).await;
    assert_eq!(seen.last().unwrap()["message"], "records arriving");
}

#[tokio::test]
async fn k8stail_reports_a_tap_that_cannot_work_and_exits_1_unless_it_waits() {
    let h = harness("op-failed").await;
    // No Flow named web: the tap fails with FlowNotFound.
    let alice = listener(&h, "alice").await;
    let k8stail = |wait: bool| {
        let mut cmd = tokio::process::Command::new(cluster::bin("k8stail"));
        cmd.args(["--server", &format!("http://{}", h.relay.api), "--token", &alice])
            .arg(format!("{}/web", h.ns))
            .env("KUBECONFIG", "/nonexistent")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if wait {
            cmd.arg("--wait");
        }
        cmd
    };
    let out = tokio::time::timeout(Duration::from_secs(30), k8stail(false).output())
        .await
        .expect("k8stail exits in time")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("FlowTap flow-web is Failed:") && err.contains("FlowNotFound") && err.contains("--wait"),
        "{err}"
    );

    // With --wait it says so and keeps going.
    let waiting = k8stail(true).spawn().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(waiting.stderr.unwrap()));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a note in time")
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("k8stail: FlowTap flow-web is Failed:") && line.contains("FlowNotFound"),
        "{line}"
    );
}

#[tokio::test]
async fn connect_and_disconnect_churn_leaves_no_tap_output_or_ref_behind() {
    // `LOG_SOCKET_CHURN_CYCLES=1000 make test` for the long variant.
    let cycles: usize = std::env::var("LOG_SOCKET_CHURN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let h = harness("op-churn").await;
    let flows = ["web0", "web1", "web2"];
    for f in flows {
        cluster::create_flow(&h.client, &h.ns, f, flow_spec()).await;
    }
    let alice = listener(&h, "alice").await;
    let workers = 10;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![];
    for w in 0..workers {
        let (api, ns, token, done) = (h.relay.api, h.ns.clone(), alice.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < cycles {
                let path = format!("/flow/{ns}/{}", flows[i % flows.len()]);
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let mut req = format!("ws://{api}{path}").into_client_request().unwrap();
                req.headers_mut().insert("x-authorization", token.parse().unwrap());
                req.headers_mut()
                    .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
                let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
                let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.expect("connect");
                // Stay until attached, sometimes a little longer.
                let _ = next_any(&mut ws).await;
                if i % 7 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                drop(ws);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), cycles);

    // After the linger, nothing is left: no FlowTap, no Output, every Flow as before.
    let taps: Api<FlowTap> = Api::namespaced(h.client.clone(), &h.ns);
    let outputs = cluster::logging_api(&h.client, &h.ns, "Output");
    for _ in 0..600 {
        let left_taps = taps.list(&ListParams::default()).await.unwrap().items.len();
        let left_outputs = outputs.list(&ListParams::default()).await.unwrap().items.len();
        if left_taps == 0 && left_outputs == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<String> = taps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|t| format!("{} {:?}", kube::ResourceExt::name_any(t), t.status))
        .collect();
    assert!(left.is_empty(), "leaked FlowTaps: {left:?}");
    assert!(
        outputs.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "leaked Outputs"
    );
    for f in flows {
        assert_eq!(
            raw(&h, "Flow", f).await.unwrap()["spec"]["localOutputRefs"],
            json!(["loki"]),
            "{f} restored"
        );
    }
}

#[tokio::test]
async fn a_user_taps_only_so_many_flows_and_a_flowtap_holds_only_so_many_sessions() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "op-caps").await;
    let h = cluster::harness_configured(client, ns, true, LINGER, Duration::from_secs(6), |c| {
        c.limits.taps_per_user = 1;
        c.limits.sessions_per_tap = 2;
    })
    .await;
    for flow in ["web", "api"] {
        cluster::create_flow(&h.client, &h.ns, flow, flow_spec()).await;
    }
    let alice = listener(&h, "alice").await;
    let bob = listener(&h, "bob").await;
    let path = |flow: &str| format!("/flow/{}/{flow}", h.ns);
    let _web = connect(&h.relay, &path("web"), &alice).await;
    // A second flow for alice: refused before any FlowTap is made for it.
    let err = try_connect(&h.relay, &path("api"), &alice).await.unwrap_err();
    assert!(
        err.starts_with("429 too many:") && err.contains("--max-taps-per-user"),
        "{err}"
    );
    assert!(tap(&h, "flow-api").await.is_none(), "no FlowTap for a refused listener");
    // More listeners of the same flow are not more taps; the FlowTap's sessions are capped.
    let _again = connect(&h.relay, &path("web"), &alice).await;
    let err = try_connect(&h.relay, &path("web"), &bob).await.unwrap_err();
    assert!(
        err.starts_with("429 too many: FlowTap flow-web has 2 listener sessions"),
        "{err}"
    );
    assert_eq!(listeners(&h, "flow-web").await, Some(2));
    // Bob is a ServiceAccount of the same namespace as alice: they share one budget, so his
    // own first flow is one too many.
    let err = try_connect(&h.relay, &path("api"), &bob).await.unwrap_err();
    assert!(
        err.contains("the ServiceAccounts of namespace") && err.contains("--max-taps-per-user"),
        "{err}"
    );
    // Another replica counts the same sessions (from the FlowTaps), so replicas do not
    // multiply the budget.
    let other = cluster::replica(
        h.client.clone(),
        &h.ns,
        log_socket::service::Controller::Off,
        LINGER,
        Duration::from_secs(6),
        |c| c.limits.taps_per_user = 1,
    )
    .await;
    let err = eventually("the other replica refuses alice's second flow", || async {
        // Accepted: its FlowTap cache had not seen alice's session yet; leave and look again.
        try_connect(&other, &path("api"), &alice).await.err()
    })
    .await;
    assert!(err.contains("--max-taps-per-user"), "{err}");
}

#[tokio::test]
async fn listeners_create_only_so_many_flowtaps_in_a_namespace_and_may_still_join_tapped_flows() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "op-ns-cap").await;
    let h = cluster::harness_configured(client, ns, true, LINGER, Duration::from_secs(6), |c| {
        c.limits.taps_per_namespace = 2;
    })
    .await;
    for flow in ["web", "api", "db"] {
        cluster::create_flow(&h.client, &h.ns, flow, flow_spec()).await;
    }
    for flow in ["web", "api"] {
        persistent_tap(
            &h,
            &format!("keep-{flow}"),
            json!({"flowRef": {"kind": "Flow", "name": flow}, "persistent": true}),
        )
        .await;
    }
    let alice = listener(&h, "alice").await;
    let path = |flow: &str| format!("/flow/{}/{flow}", h.ns);
    // Counted from the API server near the cap, not only from a cache that may lag.
    let err = try_connect(&h.relay, &path("db"), &alice).await.unwrap_err();
    assert!(
        err.starts_with("429 too many:") && err.contains("--max-taps-per-namespace"),
        "{err}"
    );
    assert!(tap(&h, "flow-db").await.is_none(), "no FlowTap for a refused listener");
    // A flow tapped already is joined, whatever the count.
    let _web = connect(&h.relay, &path("web"), &alice).await;
}

#[tokio::test]
async fn remove_taps_restores_every_flow_before_an_uninstall_and_names_what_it_cannot() {
    let h = harness("op-remove").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    cluster::create_flow(&h.client, &h.ns, "api", flow_spec()).await;
    for flow in ["web", "api"] {
        persistent_tap(
            &h,
            flow,
            json!({"flowRef": {"kind": "Flow", "name": flow}, "persistent": true}),
        )
        .await;
        status_when(&h, flow, "Active", |s| {
            s.phase == Some(log_socket::k8s::flowtap::Phase::Active)
        })
        .await;
    }
    let remove = |timeout: &str| {
        tokio::process::Command::new(cluster::bin("log-socket"))
            .args([
                "remove-taps",
                "--namespace",
                &h.ns,
                "--timeout",
                timeout,
                "--kubeconfig",
            ])
            .arg(&cluster::env().kubeconfig)
            .output()
    };
    let out = remove("60s").await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed 2 FlowTaps; every flow is as it was"
    );
    for flow in ["web", "api"] {
        assert_eq!(
            raw(&h, "Flow", flow).await.unwrap()["spec"],
            flow_spec(),
            "{flow} restored"
        );
        assert!(
            raw(&h, "Output", &format!("logsocket-{flow}")).await.is_none(),
            "{flow}'s output gone"
        );
    }

    // A FlowTap nobody cleans up (its finalizer, no controller for it): named, exit 1.
    let stuck: FlowTap = serde_json::from_value(json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": "stuck", "finalizers": ["example.com/held"]},
        "spec": {"flowRef": {"kind": "Flow", "name": "nowhere"}, "persistent": true},
    }))
    .unwrap();
    let taps = Api::<FlowTap>::namespaced(h.client.clone(), &h.ns);
    taps.create(&PostParams::default(), &stuck).await.unwrap();
    let out = remove("3s").await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}/stuck", h.ns)) && err.contains("keep log-socket installed"),
        "{err}"
    );
    let release = json!({"metadata": {"finalizers": null}});
    taps.patch("stuck", &Default::default(), &kube::api::Patch::Merge(&release))
        .await
        .unwrap();
}
