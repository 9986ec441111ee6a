//! What an on-call engineer reads of the `log-socket run` binary in cluster mode: every log
//! line of a FlowTap's reconcile names its namespace and name (a span), and `/metrics` has the
//! controller's series (reconciles, duration, leader) and the process's.

use crate::service::Setup;
use log_socket::k8s::flowtap::Phase;
use serde_json::json;
use testkit::cluster;
use testkit::poll::eventually;
use testkit::relay::request;

#[tokio::test]
async fn every_reconcile_log_line_names_its_flowtap_and_the_controller_shows_in_metrics() {
    let client = cluster::client().await;
    let setup = Setup::new(&client, "observe").await;
    let ns = setup.ns.clone();
    cluster::create_flow(
        &client,
        &ns,
        "web",
        json!({"match": [{"select": {"labels": {"app": "web"}}}], "localOutputRefs": []}),
    )
    .await;
    cluster::create_flowtap(
        &client,
        &ns,
        "flow-web",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true}),
    )
    .await;
    let mut flags = crate::service::TAP_GOES_AT_ONCE.to_vec();
    flags.extend(["--log-format", "json"]);
    let service = setup.start(&flags).await;
    eventually("the tap Active", || async {
        (setup.tap(&client).await?.0 == Some(Phase::Active)).then_some(())
    })
    .await;

    let kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cluster::env().kubeconfig).unwrap()).unwrap();
    let admin = format!("Bearer {}", kubeconfig["users"][0]["user"]["token"].as_str().unwrap());
    let metrics = eventually("the controller's series", || async {
        let (code, body) = request(setup.api, "GET", "/metrics", &[("Authorization", &admin)], b"").await;
        (code == 200 && body.contains(r#"log_socket_reconciles_total{result="ok"}"#)).then_some(body)
    })
    .await;
    for series in [
        "log_socket_controller_leader 1",
        "log_socket_reconcile_duration_seconds_count ",
        "log_socket_reconciles_in_flight ",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    service.terminate();
    let log = service.exited_cleanly().await;
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.len() > 5, "JSON log lines:\n{log}");
    let in_reconcile: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "reconcile"))
        })
        .collect();
    assert!(!in_reconcile.is_empty(), "lines logged while reconciling:\n{log}");
    for line in &in_reconcile {
        let span = line["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "reconcile")
            .unwrap();
        assert_eq!(
            (span["namespace"].as_str(), span["flowtap"].as_str()),
            (Some(ns.as_str()), Some("flow-web")),
            "{line}"
        );
    }
    // Outside a reconcile, an operator line about one FlowTap names its namespace too.
    for line in lines.iter().filter(|l| {
        l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("log_socket::operator"))
            && l.get("spans").is_none()
    }) {
        let fields = &line["fields"];
        let about_a_tap = fields.get("tap").is_some() || fields.get("flowtap").is_some();
        assert!(
            !about_a_tap
                || fields.get("namespace").is_some()
                || fields["tap"].as_str().is_some_and(|t| t.contains('/')),
            "an operator line about a tap without its namespace: {line}"
        );
    }
}
