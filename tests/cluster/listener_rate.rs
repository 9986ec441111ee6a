//! A persistent FlowTap's `spec.listenerRate` caps its listeners (a listener's `rate` may lower
//! it, never raise it), sessions in the FlowTap's status carry the rates, and `k8stail taps`
//! shows them.

use crate::operator::{flow_spec, harness, listener, persistent_tap, status_when};
use serde_json::{json, Value};
use std::time::Duration;
use testkit::cluster;
use testkit::relay::*;

/// One batch of `n` records of four pods.
fn batch(ns: &str, n: usize) -> String {
    let records: Vec<Value> = (0..n)
        .map(|i| json!({"message": format!("m{i}"),
            "kubernetes": {"namespace_name": ns, "pod_name": format!("web-{}", i % 4), "labels": {"rbac/policy": "allow"}}}))
        .collect();
    serde_json::to_string(&records).unwrap()
}

/// Read `ws` until `total` records are delivered or counted as sampled; the delivered ones.
async fn delivered_of(ws: &mut Ws, total: u64) -> u64 {
    let (mut records, mut sampled) = (0u64, 0u64);
    while records + sampled < total {
        let f = next(ws).await;
        match (f["type"].as_str(), f["reason"].as_str()) {
            (Some("record"), _) => records += 1,
            (Some("dropped"), Some("sampled")) => sampled += f["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    records
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
    // The tap's limit reaches the relay with the FlowTap, before any listener connects.
    let key = log_socket::protocol::TapKey::parse("flow", &h.ns, "web").unwrap();
    testkit::poll::eventually("the relay knows the tap's listenerRate", || async {
        (h.relay.relay.listener_rate(&key) == Some(20)).then_some(())
    })
    .await;
    // Asking for more than the tap allows gets the tap's 20/s; asking for less gets that.
    let mut greedy = connect(&h.relay, &format!("{path}?rate=1000"), &alice).await;
    let mut modest = connect(&h.relay, &format!("{path}?rate=5"), &alice).await;
    let mut plain = connect(&h.relay, &path, &alice).await;
    // Four seconds of batches, each of 400 records at once, two a second.
    let body = batch(&h.ns, 400);
    for _ in 0..8 {
        let (code, text) = post(&h.relay, &path, &body).await;
        assert_eq!(code, 200, "{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let greedy_got = delivered_of(&mut greedy, 3200).await;
    let modest_got = delivered_of(&mut modest, 3200).await;
    let plain_got = delivered_of(&mut plain, 3200).await;
    // About four seconds' worth: 20/s (at most 20 for the credit of the first second) and 5/s.
    for (who, got) in [("rate=1000", greedy_got), ("no rate", plain_got)] {
        assert!((60..=100).contains(&got), "{who}: {got} (20/s for about 4 s)");
    }
    assert!(
        (12..=30).contains(&modest_got),
        "rate=5: {modest_got} (5/s for about 4 s)"
    );

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
