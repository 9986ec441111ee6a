//! A persistent FlowTap's `spec.listenerRate` caps its listeners (a listener's `rate` may lower
//! it, never raise it), sessions in the FlowTap's status carry the rates, and `k8stail taps`
//! shows them.

use crate::operator::{flow_spec, harness, listener, persistent_tap, status_when};
use serde_json::{json, Value};
use std::time::Duration;
use testkit::cluster;
use testkit::relay::*;

/// Post `n` records of four pods to the flow at once; (records, sampled) the listener got
/// for them.
async fn records_and_sampled(h: &testkit::cluster::Harness, ws: &mut Ws, n: usize) -> (u64, u64) {
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"message": format!("m{i}"),
            "kubernetes": {"namespace_name": h.ns, "pod_name": format!("web-{}", i % 4), "labels": {"rbac/policy": "allow"}}}))
        .collect();
    let (code, body) = post(
        &h.relay,
        &format!("/flow/{}/web", h.ns),
        &serde_json::to_string(&batch).unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (mut records, mut sampled) = (0u64, 0u64);
    while records + sampled < n as u64 {
        let f = next(ws).await;
        match (f["type"].as_str(), f["reason"].as_str()) {
            (Some("record"), _) => records += 1,
            (Some("dropped"), Some("sampled")) => sampled += f["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    (records, sampled)
}

#[tokio::test]
async fn a_flowtaps_listener_rate_caps_every_listener_and_the_sessions_say_their_rates() {
    let h = harness("rate").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    persistent_tap(
        &h,
        "web",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true, "listenerRate": 20}),
    )
    .await;
    status_when(&h, "web", "Active", |s| {
        s.phase == Some(log_socket::k8s::flowtap::Phase::Active)
    })
    .await;
    let alice = listener(&h, "alice").await;
    let path = format!("/flow/{}/web", h.ns);
    // Asking for more than the tap allows gets the tap's 20/s; asking for less gets that.
    let mut greedy = connect(&h.relay, &format!("{path}?rate=1000"), &alice).await;
    let mut modest = connect(&h.relay, &format!("{path}?rate=5"), &alice).await;
    let mut plain = connect(&h.relay, &path, &alice).await;
    // The tap's limit reaches the relay with the FlowTap (within a second once it is known).
    testkit::poll::eventually("the relay knows the tap's listenerRate", || async {
        h.relay
            .relay
            .listener_rate(&log_socket::protocol::TapKey::parse("flow", &h.ns, "web").unwrap())
            .map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for ws in [&mut greedy, &mut modest, &mut plain] {
        let (records, sampled) = records_and_sampled(&h, ws, 400).await;
        assert_eq!(records + sampled, 400);
        assert!(
            records <= 2 && sampled >= 398,
            "one 50 ms window of 20/s at most: {records}"
        );
    }
    // The sessions carry the rate each listener asked for; k8stail taps shows what they get.
    let tap = status_when(&h, "web", "three sessions", |s| s.sessions.len() == 3).await;
    let mut rates: Vec<Option<u32>> = tap.sessions.iter().map(|s| s.rate).collect();
    rates.sort();
    assert_eq!(rates, [None, Some(5), Some(1000)]);
    let out = tokio::process::Command::new(cluster::bin("k8stail"))
        .args(["--kubeconfig"])
        .arg(&cluster::env().kubeconfig)
        .args(["taps", "-n", &h.ns])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(5) == Some("5/s,2×20/s")),
        "{table}"
    );
}
