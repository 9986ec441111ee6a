use kube::api::{Api, PostParams};
use log_socket::k8s::flowtap::{FlowKind, FlowRef, FlowTap, FlowTapSpec};
use serde_json::json;
use testkit::cluster;

fn tap_yaml(ns: &str, name: &str, kind: &str, flow: &str, persistent: bool) -> String {
    format!(
        "apiVersion: logsocket.dev/v1alpha1\nkind: FlowTap\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  flowRef:\n    kind: {kind}\n    name: {flow}\n  persistent: {persistent}\n"
    )
}

#[tokio::test]
async fn the_generated_crd_is_accepted_and_fills_in_defaults() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "crd").await;
    let api: Api<FlowTap> = Api::namespaced(client, &ns);
    let tap = FlowTap::new(
        "flow1",
        FlowTapSpec {
            flow_ref: FlowRef {
                kind: FlowKind::Flow,
                name: "flow1".into(),
            },
            persistent: true,
            mode: Default::default(),
            replay: Default::default(),
            buffer: Default::default(),
            listener_rate: Some(200),
        },
    );
    api.create(&PostParams::default(), &tap).await.expect("FlowTap created");

    // Defaults come from the schema, so a minimal hand-written tap gets them too.
    let minimal: serde_json::Value = serde_json::from_value(json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": "minimal"},
        "spec": {"flowRef": {"kind": "ClusterFlow", "name": "all"}}
    }))
    .unwrap();
    let minimal: FlowTap = serde_json::from_value(minimal).unwrap();
    api.create(&PostParams::default(), &minimal)
        .await
        .expect("minimal FlowTap created");
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        api.clone().into_client(),
        &ns,
        &kube::api::ApiResource::erase::<FlowTap>(&()),
    );
    let stored = raw.get("minimal").await.expect("read back");
    assert_eq!(stored.data["spec"]["persistent"], json!(false));
    assert_eq!(stored.data["spec"]["replay"]["records"], json!(1000));
    assert_eq!(stored.data["spec"]["buffer"]["flushInterval"], json!("1s"));
    assert_eq!(stored.data["spec"]["buffer"]["totalLimitSize"], json!("8m"));
}

#[tokio::test]
async fn kubectl_get_flowtaps_shows_the_printer_columns() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "columns").await;
    let (ok, _, err) = cluster::kubectl_with(
        &cluster::env().kubeconfig,
        &["apply", "-f", "-"],
        Some(&tap_yaml(&ns, "shop-tap", "ClusterFlow", "all-logs", true)),
    );
    assert!(ok, "kubectl apply: {err}");

    // Status is what log-socket writes; set it as it would.
    let api: Api<FlowTap> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        "shop-tap",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"listeners": 2, "phase": "Active",
            "stage": {"name": "Warm", "since": "2026-12-04T10:00:00Z"},
            "cost": {"recordsPerSecond": 2.5, "bytesPerSecond": 800, "measured": "2026-12-04T10:00:00Z"}}})),
    )
    .await
    .expect("status patched");

    let (ok, out, err) = cluster::kubectl(&["get", "flowtaps", "-n", &ns]);
    assert!(ok, "kubectl get flowtaps: {err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "FLOW",
            "KIND",
            "FLOW",
            "LISTENERS",
            "PERSISTENT",
            "PHASE",
            "STAGE",
            "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = lines.next().expect("one row").split_whitespace().collect();
    assert_eq!(
        &row[..7],
        ["shop-tap", "ClusterFlow", "all-logs", "2", "true", "Active", "Warm"],
        "{out}"
    );
    assert!(row[7].ends_with('s'), "age in seconds: {out}");
    // -o wide adds the cost the relay measured, and the bus.
    let (ok, out, err) = cluster::kubectl(&["get", "flowtaps", "-n", &ns, "-o", "wide"]);
    assert!(ok, "{err}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert!(header.ends_with(&["RECORDS/S", "BYTES/S", "BUS", "AGE"]), "{out}");
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[7..9], ["2.5", "800"], "{out}");

    // So does logging-operator's category: taps beside the flows and outputs they change.
    let (ok, out, err) = cluster::kubectl(&["get", "logging-all", "-n", &ns, "-o", "name"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "flowtap.logsocket.dev/shop-tap"), "{out}");

    // The short name works too.
    let (ok, out, err) = cluster::kubectl(&["get", "ftap", "-n", &ns, "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "flowtap.logsocket.dev/shop-tap");
}

#[tokio::test]
async fn a_flowtap_with_an_unknown_flow_kind_is_rejected_with_a_clear_message() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "invalid").await;
    let (ok, _, err) = cluster::kubectl_with(
        &cluster::env().kubeconfig,
        &["apply", "-f", "-"],
        Some(&tap_yaml(&ns, "bad", "Deployment", "web", false)),
    );
    assert!(!ok, "a FlowTap of kind Deployment must be rejected");
    assert!(err.contains("spec.flowRef.kind"), "{err}");
    assert!(err.contains("Unsupported value: \"Deployment\""), "{err}");
    assert!(err.contains("\"Flow\", \"ClusterFlow\""), "{err}");

    let (ok, out, _) = cluster::kubectl(&["get", "flowtaps", "-n", &ns, "-o", "name"]);
    assert!(ok);
    assert!(out.trim().is_empty(), "nothing was stored: {out}");
}

#[tokio::test]
async fn a_flowtap_with_an_invalid_buffer_setting_is_rejected() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "badbuf").await;
    let yaml = format!(
        "{}  buffer:\n    flushInterval: soon\n",
        tap_yaml(&ns, "t", "Flow", "f", false)
    );
    let (ok, _, err) = cluster::kubectl_with(&cluster::env().kubeconfig, &["apply", "-f", "-"], Some(&yaml));
    assert!(!ok, "flushInterval: soon must be rejected");
    assert!(err.contains("spec.buffer.flushInterval"), "{err}");
}

#[tokio::test]
async fn status_is_a_subresource_with_list_maps_and_survives_a_spec_update() {
    use kube::api::{Patch, PatchParams};
    use log_socket::k8s::flowtap::{FlowTapStatus, Phase, Session};
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "status").await;
    let api: Api<FlowTap> = Api::namespaced(client, &ns);
    let tap: FlowTap = serde_json::from_value(json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": "t"}, "spec": {"flowRef": {"kind": "Flow", "name": "f"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &tap).await.unwrap();

    // The API server stores times with second precision.
    let now = k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    let status = FlowTapStatus {
        phase: Some(Phase::Active),
        listeners: 1,
        sessions: vec![Session {
            id: "s1".into(),
            user: "system:serviceaccount:default:alice".into(),
            since: now.clone(),
            relay: "log-socket-0".into(),
            rate: Some(100),
            renew_time: Some(now),
        }],
        observed_generation: Some(1),
        ..Default::default()
    };
    api.patch_status("t", &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .expect("status patched");
    let read = api.get_status("t").await.unwrap();
    assert_eq!(
        read.status.as_ref(),
        Some(&status),
        "status round-trips through the API server"
    );

    // A spec change through the main resource leaves status alone (status subresource).
    api.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"persistent": true}})),
    )
    .await
    .unwrap();
    let read = api.get("t").await.unwrap();
    assert!(read.spec.persistent);
    assert_eq!(read.status, Some(status));
}
