//! Upgrading, as docs/operations.md says, on a cluster of this test binary's own that runs an
//! earlier FlowTap CRD (tests/fixtures/flowtap-crd-before-stages.yaml, before `status.stage`
//! and `status.cost`) with a tap in it: the documented commands, read from the docs, then the
//! upgraded release's pod (testkit/src/deployment.rs) reconciles the tap, and what it writes
//! is kept.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use log_socket::k8s::flowtap::FlowTap;
use serde_json::json;
use std::time::Duration;
use testkit::cluster;
use testkit::poll::eventually_within;

/// Put the earlier CRD in place of the current one (as a cluster installed before has it).
async fn earlier_crd(client: &kube::Client) {
    let text = std::fs::read_to_string(cluster::repo().join("tests/fixtures/flowtap-crd-before-stages.yaml")).unwrap();
    let mut value = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| !v.is_null())
        .expect("a CRD");
    testkit::control_plane::without_cel(&mut value);
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let current = api.get("flowtaps.logsocket.dev").await.unwrap();
    value["metadata"]["resourceVersion"] = current.metadata.resource_version.into();
    let crd: CustomResourceDefinition = serde_json::from_value(value).unwrap();
    api.replace("flowtaps.logsocket.dev", &PostParams::default(), &crd)
        .await
        .unwrap();
    let schema = serde_json::to_string(&api.get("flowtaps.logsocket.dev").await.unwrap().spec).unwrap();
    assert!(!schema.contains("\"stage\""), "the earlier CRD is in place");
}

#[tokio::test]
async fn the_documented_upgrade_keeps_existing_taps_and_what_the_new_service_writes() {
    let client = cluster::client().await;
    earlier_crd(&client).await;
    let dir = cluster::tempdir("crd-upgrade");
    let mut terminal = testkit::pasted::Terminal::new(&dir);

    // A release and a tap from before: a persistent FlowTap on Flow shop/web.
    terminal
        .run("helm install log-socket config/helm/log-socket -n log-socket --create-namespace --skip-crds --set image.tag=0.0.9")
        .await;
    let ns = cluster::namespace(&client, "shop").await;
    let _logging_operator = testkit::logging_operator::start(&client, &ns).await;
    cluster::create_flow(
        &client,
        &ns,
        "web",
        json!({"match": [{"select": {"labels": {"app": "web"}}}], "localOutputRefs": []}),
    )
    .await;
    let taps = Api::<FlowTap>::namespaced(client.clone(), &ns);
    cluster::create_flowtap(
        &client,
        &ns,
        "web",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true, "replay": {"records": 5000}}),
    )
    .await;
    // The earlier CRD drops what the new service writes: why the CRD goes first.
    let status = json!({"status": {"stage": {"name": "Queued", "since": "2026-01-01T00:00:00Z"}}});
    taps.patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let dropped = taps.get("web").await.unwrap();
    assert!(
        dropped.status.and_then(|s| s.stage).is_none(),
        "the earlier CRD prunes status.stage"
    );

    for command in testkit::pasted::commands("docs/operations.md", "## Upgrading") {
        terminal.run(&command).await;
    }
    let deployment = terminal
        .run("kubectl get deployment log-socket -n log-socket -o jsonpath='{.spec.template.spec.containers[0].image}'")
        .await;
    assert!(
        deployment.ends_with(":0.0.9"),
        "the upgrade kept the release's values: {deployment}"
    );

    // The upgraded release's pod reconciles the earlier tap; what it writes is kept.
    let pod = testkit::deployment::run(&client, "log-socket", "log-socket").await;
    let kept = eventually_within("the tap reconciled, its stage kept", Duration::from_secs(60), || {
        let taps = taps.clone();
        async move {
            let tap = taps.get("web").await.ok()?;
            let status = tap.status.clone()?;
            (status.phase == Some(log_socket::k8s::flowtap::Phase::Active) && status.stage.is_some()).then_some(tap)
        }
    })
    .await;
    assert_eq!(kept.spec.replay.records, 5000, "the spec as it was");
    let flow = testkit::cluster::logging_api(&client, &ns, "Flow")
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        flow.data["spec"]["localOutputRefs"],
        json!(["logsocket-web"]),
        "the flow taps it"
    );

    // The new printer columns and category.
    let table = terminal.run(&format!("kubectl get flowtaps -n {ns}")).await;
    assert!(table.lines().next().unwrap().contains("STAGE"), "{table}");
    let all = terminal.run(&format!("kubectl get logging-all -n {ns} -o name")).await;
    assert!(all.lines().any(|l| l == "flowtap.logsocket.dev/web"), "{all}");
    pod.stop().await.unwrap();
}
