//! Faults against a real API server this test binary has to itself: freezing it would stall the
//! tests that share the control plane in tests/cluster.

use kube::api::Api;
use log_socket::k8s::flowtap::{FlowTap, Phase};
use serde_json::json;
use std::time::Duration;
use testkit::cluster;
use testkit::control_plane::pause_apiserver;
use testkit::poll::eventually;
use testkit::relay::*;

/// The tests here freeze the one API server they share: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resumes the API server when dropped, also when an assertion fails while it is frozen.
struct Frozen;

impl Frozen {
    fn api_server() -> Frozen {
        pause_apiserver(true);
        Frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        pause_apiserver(false);
    }
}

#[tokio::test]
async fn while_the_api_server_is_down_listeners_keep_their_records_and_new_ones_get_a_clear_error() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "outage").await;
    cluster::create_flow(&client, &ns, "web", json!({"localOutputRefs": ["loki"]})).await;
    let h = cluster::harness_with(
        client.clone(),
        ns.clone(),
        true,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await;
    let relay = &h.relay;

    let alice = cluster::service_account_token(&client, &ns, "alice").await;
    let bob = cluster::service_account_token(&client, &ns, "bob").await;
    cluster::grant(&client, &ns, "alice", cluster::may_tap_flows()).await;
    cluster::grant(&client, &ns, "bob", cluster::may_tap_flows()).await;
    let path = format!("/flow/{ns}/web");
    let mut ws = connect(relay, &path, &alice).await;
    let taps: Api<FlowTap> = Api::namespaced(client.clone(), &ns);
    eventually("the tap Active", || async {
        (taps.get_opt("flow-web").await.unwrap().and_then(|t| t.status?.phase) == Some(Phase::Active)).then_some(())
    })
    .await;
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
    eventually("both listeners registered on the FlowTap after the outage", || async {
        let listeners = taps
            .get_opt("flow-web")
            .await
            .unwrap()
            .and_then(|t| t.status)
            .map(|s| s.listeners);
        (listeners == Some(2)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sessions_outlive_an_api_server_outage_longer_than_their_ttl() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "ttl").await;
    cluster::create_flow(&client, &ns, "web", json!({"localOutputRefs": ["loki"]})).await;
    // Session TTL 10 s, linger 5 s: a live session wrongly expired would get its tap deleted.
    let h = cluster::harness_with(
        client.clone(),
        ns.clone(),
        true,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await;
    let alice = cluster::service_account_token(&client, &ns, "alice").await;
    cluster::grant(&client, &ns, "alice", cluster::may_tap_flows()).await;
    let path = format!("/flow/{ns}/web");
    let mut ws = connect(&h.relay, &path, &alice).await;
    let taps: Api<FlowTap> = Api::namespaced(client.clone(), &ns);
    let active = eventually("the tap Active with alice's session", || async {
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
