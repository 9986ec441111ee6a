//! Faults against a real API server this test binary has to itself: freezing it would stall the
//! tests that share the control plane in tests/cluster.

#[path = "support/mod.rs"]
mod support;
#[path = "support/wire.rs"]
#[allow(dead_code)]
mod wire;

use kube::api::Api;
use log_socket::k8s::flowtap::{FlowTap, Phase};
use serde_json::json;
use std::time::Duration;
use wire::*;

/// The tests here freeze the one API server they share: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resumes the API server when dropped, also when an assertion fails while it is frozen.
struct Frozen;

impl Frozen {
    fn api_server() -> Frozen {
        support::control_plane::pause_apiserver(true);
        Frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        support::control_plane::pause_apiserver(false);
    }
}

#[tokio::test]
async fn while_the_api_server_is_down_listeners_keep_their_records_and_new_ones_get_a_clear_error() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = support::client().await;
    let ns = support::namespace(&client, "outage").await;
    support::create_flow(&client, &ns, "web", json!({"localOutputRefs": ["loki"]})).await;
    let h = support::harness_with(
        client.clone(),
        ns.clone(),
        true,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await;
    let relay = &h.relay;

    let alice = support::service_account_token(&client, &ns, "alice").await;
    let bob = support::service_account_token(&client, &ns, "bob").await;
    support::grant(&client, &ns, "alice", support::may_tap_flows()).await;
    support::grant(&client, &ns, "bob", support::may_tap_flows()).await;
    let path = format!("/flow/{ns}/web");
    let mut ws = connect(relay, &path, &alice).await;
    let taps: Api<FlowTap> = Api::namespaced(client.clone(), &ns);
    for _ in 0..300 {
        if taps.get_opt("flow-web").await.unwrap().and_then(|t| t.status?.phase) == Some(Phase::Active) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let allowed = |m: &str| json!({"message": m, "kubernetes": {"namespace_name": ns, "pod_name": "web-1", "labels": {"rbac/policy": "allow"}}});

    {
        let _frozen = Frozen::api_server();
        let frozen_at = std::time::Instant::now();
        // The relay needs no API server to deliver to a listener it already has.
        assert_eq!(post(relay, &path, &array(&[allowed("during the outage")])).await.0, 200);
        assert_eq!(
            messages(&records_until(&mut ws, "during the outage").await),
            Vec::<String>::new()
        );
        // A new listener cannot be authenticated: a clear 503 within the API timeout, not a hang.
        let started = std::time::Instant::now();
        let refused = tokio::time::timeout(Duration::from_secs(30), try_connect(relay, &path, &bob))
            .await
            .expect("an answer, not a hang");
        let Err(err) = refused else {
            panic!("a listener was accepted while the API server was down")
        };
        assert!(err.starts_with("503") && err.contains("did not answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(25), "{:?}", started.elapsed());
        // A 30 s outage in all: the listener keeps getting every record throughout.
        let mut n = 0;
        while frozen_at.elapsed() < Duration::from_secs(30) {
            n += 1;
            let message = format!("still down {n}");
            assert_eq!(post(relay, &path, &array(&[allowed(&message)])).await.0, 200);
            assert_eq!(messages(&records_until(&mut ws, &message).await), Vec::<String>::new());
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    // Back: new listeners are accepted and counted, the old one never noticed.
    let mut ws_bob = connect(relay, &path, &bob).await;
    assert_eq!(post(relay, &path, &array(&[allowed("after")])).await.0, 200);
    records_until(&mut ws, "after").await;
    records_until(&mut ws_bob, "after").await;
    let mut counted = false;
    for _ in 0..300 {
        if taps
            .get_opt("flow-web")
            .await
            .unwrap()
            .and_then(|t| t.status)
            .map(|s| s.listeners)
            == Some(2)
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "both listeners registered on the FlowTap after the outage");
}

#[tokio::test]
async fn sessions_outlive_an_api_server_outage_longer_than_their_ttl() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = support::client().await;
    let ns = support::namespace(&client, "ttl").await;
    support::create_flow(&client, &ns, "web", json!({"localOutputRefs": ["loki"]})).await;
    // Session TTL 10 s, linger 5 s: a live session wrongly expired would get its tap deleted.
    let h = support::harness_with(
        client.clone(),
        ns.clone(),
        true,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await;
    let alice = support::service_account_token(&client, &ns, "alice").await;
    support::grant(&client, &ns, "alice", support::may_tap_flows()).await;
    let path = format!("/flow/{ns}/web");
    let mut ws = connect(&h.relay, &path, &alice).await;
    let taps: Api<FlowTap> = Api::namespaced(client.clone(), &ns);
    let active = support::eventually("the tap Active with alice's session", || async {
        let tap = taps.get_opt("flow-web").await.ok()??;
        let s = tap.status.as_ref()?;
        (s.phase == Some(Phase::Active) && s.listeners == 1).then_some(tap)
    })
    .await;
    let uid = active.metadata.uid.clone();
    let allowed = |m: &str| json!({"message": m, "kubernetes": {"namespace_name": ns, "pod_name": "web-1", "labels": {"rbac/policy": "allow"}}});

    {
        let _frozen = Frozen::api_server();
        let frozen_at = std::time::Instant::now();
        let mut n = 0;
        while frozen_at.elapsed() < Duration::from_secs(25) {
            n += 1;
            let message = format!("frozen {n}");
            assert_eq!(post(&h.relay, &path, &array(&[allowed(&message)])).await.0, 200);
            assert_eq!(messages(&records_until(&mut ws, &message).await), Vec::<String>::new());
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    // For two TTLs after the outage: the same FlowTap throughout, the session in it, records
    // flowing.
    let after = std::time::Instant::now();
    let mut n = 0;
    while after.elapsed() < Duration::from_secs(20) {
        let tap = taps
            .get_opt("flow-web")
            .await
            .unwrap()
            .expect("the tap was never deleted");
        assert_eq!(tap.metadata.uid, uid, "the same FlowTap, not a re-created one");
        assert!(tap.metadata.deletion_timestamp.is_none(), "not being deleted");
        n += 1;
        let message = format!("after {n}");
        assert_eq!(post(&h.relay, &path, &array(&[allowed(&message)])).await.0, 200);
        assert_eq!(messages(&records_until(&mut ws, &message).await), Vec::<String>::new());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let s = taps.get("flow-web").await.unwrap().status.unwrap();
    assert_eq!(s.listeners, 1, "alice's session is counted: {s:?}");
}
