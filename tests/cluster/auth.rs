//! Listener authentication and record authorization against the real API server, with real
//! ServiceAccount tokens and RBAC.

use log_socket::auth::kubernetes::PodLogAccess;
use log_socket::auth::labels::LabelPolicy;
use log_socket::auth::tokens::TokenReviewAuthenticator;
use log_socket::auth::Authorizer;
use log_socket::operator::sessions::KubeSessions;
use log_socket::relay::http::Parts;
use log_socket::relay::RelayConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use testkit::cluster;
use testkit::poll::eventually;
use testkit::relay::*;

async fn cluster_relay(client: &kube::Client, authorizer: Arc<dyn Authorizer>) -> TestRelay {
    let parts = Parts {
        authenticator: Arc::new(TokenReviewAuthenticator::new(
            client.clone(),
            vec![],
            Duration::from_secs(10),
        )),
        authorizer,
        sessions: Arc::new(KubeSessions {
            client: client.clone(),
            check_tap_permission: true,
        }),
        ingest_auth: ingest_auth(),
    };
    start_relay(RelayConfig::default(), parts).await
}

fn labelled(ns: &str, pod: &str, message: &str, labels: Value) -> Value {
    json!({"message": message, "kubernetes": {"namespace_name": ns, "pod_name": pod, "labels": labels}})
}

/// Frames until the record with `marker`, as (records' messages, denied notices).
async fn split(ws: &mut Ws, marker: &str) -> (Vec<String>, Vec<Value>) {
    let frames = records_until(ws, marker).await;
    let denied = frames.iter().filter(|f| f["type"] == "denied").cloned().collect();
    (messages(&frames), denied)
}

#[tokio::test]
async fn label_policy_gives_each_service_account_exactly_its_records() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "labels").await;
    let alice = cluster::service_account_token(&client, &ns, "alice").await;
    let bob = cluster::service_account_token(&client, &ns, "bob").await;
    for sa in ["alice", "bob"] {
        cluster::grant(&client, &ns, sa, cluster::may_tap_flows()).await;
    }
    // Flattened keys read too, as a pipeline that de-dots label keys needs.
    let r = cluster_relay(&client, Arc::new(LabelPolicy::default().with_flattened_keys(true))).await;
    let tap = format!("/flow/{ns}/web");
    let mut a = connect(&r, &tap, &alice).await;
    let mut b = connect(&r, &tap, &bob).await;

    let group = format!("rbac/g.system_3aserviceaccounts_3a{ns}");
    let batch = [
        labelled(
            &ns,
            "a-pod",
            "for alice",
            json!({format!("rbac/sa.{ns}.alice"): "allow", "rbac/policy": "deny"}),
        ),
        labelled(&ns, "all-pod", "for all", json!({"rbac/policy": "allow"})),
        labelled(&ns, "secret-pod", "for nobody", json!({"app": "db"})),
        labelled(
            &ns,
            "b-pod",
            "for bob, de-dotted",
            json!({format!("rbac_sa_{}_bob", ns.replace('.', "_")): "allow"}),
        ),
        labelled(&ns, "ns-pod", "for the namespace's accounts", json!({group: "allow"})),
        labelled(
            &ns,
            "odd-pod",
            "odd value ignored",
            json!({format!("rbac/sa.{ns}.alice"): "maybe", "rbac/policy": "allow"}),
        ),
        labelled(&ns, "all-pod", "end", json!({"rbac/policy": "allow"})),
    ];
    let (code, body) = post(&r, &tap, &array(&batch)).await;
    assert_eq!(code, 200, "{body}");

    let (seen, denied) = split(&mut a, "end").await;
    assert_eq!(
        seen,
        [
            "for alice",
            "for all",
            "for the namespace's accounts",
            "odd value ignored"
        ]
    );
    let (seen_b, _) = split(&mut b, "end").await;
    assert_eq!(
        seen_b,
        [
            "for all",
            "for bob, de-dotted",
            "for the namespace's accounts",
            "odd value ignored"
        ]
    );

    // Denials arrive aggregated within a second: a count, naming neither pods nor namespaces
    // (alice may not learn which pods she cannot read), never content.
    let mut denied = denied;
    while denied.iter().map(|d| d["count"].as_u64().unwrap()).sum::<u64>() < 2 {
        let f = next(&mut a).await;
        if f["type"] == "denied" {
            denied.push(f);
        }
    }
    for d in &denied {
        assert_eq!(
            d.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["count", "type"],
            "{d}"
        );
    }
}

#[tokio::test]
async fn kubernetes_policy_follows_pods_log_rbac_per_namespace() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "sar").await;
    let logs_ns = cluster::namespace(&client, "sar-logs").await;
    let alice = cluster::service_account_token(&client, &ns, "alice").await;
    let bob = cluster::service_account_token(&client, &ns, "bob").await;
    for sa in ["alice", "bob"] {
        cluster::grant(&client, &ns, sa, cluster::may_tap_flows()).await;
    }
    // alice may read pod logs in logs_ns; bob may not.
    let rules = json!([{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]);
    cluster::grant_in(&client, &logs_ns, &ns, "alice", rules).await;
    let r = cluster_relay(
        &client,
        Arc::new(PodLogAccess::new(client.clone(), Duration::from_secs(30))),
    )
    .await;
    let tap = format!("/clusterflow/{ns}/all");
    let mut a = connect(&r, &tap, &alice).await;
    let mut b = connect(&r, &tap, &bob).await;

    let batch = [
        labelled(&logs_ns, "web-1", "readable by alice", json!({"rbac/policy": "deny"})),
        labelled(&ns, "web-2", "nobody's", json!({"rbac/policy": "allow"})),
    ];
    assert_eq!(post(&r, &tap, &array(&batch)).await.0, 200);
    // The marker must be readable by both to end the wait: bob cannot read anything, so wait
    // for alice's marker and for bob's denials instead.
    assert_eq!(
        post(&r, &tap, &array(&[labelled(&logs_ns, "web-1", "end", json!({}))]))
            .await
            .0,
        200
    );
    let (seen, _) = split(&mut a, "end").await;
    assert_eq!(seen, ["readable by alice"], "labels play no part in this policy");

    let mut denied = 0;
    while denied < 3 {
        let f = next(&mut b).await;
        assert_ne!(f["type"], "record", "bob may read nothing: {f}");
        if f["type"] == "denied" {
            denied += f["count"].as_u64().unwrap();
        }
    }
}

#[tokio::test]
async fn tapping_a_flow_needs_get_on_it_and_the_refusal_says_so() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "tap-perm").await;
    let carol = cluster::service_account_token(&client, &ns, "carol").await;
    let r = cluster_relay(&client, Arc::new(LabelPolicy::default())).await;

    let err = try_connect(&r, &format!("/flow/{ns}/web"), &carol).await.unwrap_err();
    assert!(err.starts_with("403 forbidden"), "{err}");
    assert!(
        err.contains(&format!(
            "system:serviceaccount:{ns}:carol may not get flows.logging.banzaicloud.io \"web\" in namespace \"{ns}\""
        )),
        "{err}"
    );

    cluster::grant(&client, &ns, "carol", cluster::may_tap_flows()).await;
    // The relay does not cache this check: once the grant is in effect, carol gets in.
    connect(&r, &format!("/flow/{ns}/web"), &carol).await;
}

#[tokio::test]
async fn only_tokens_the_api_server_accepts_get_in() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "tokens").await;
    let valid = cluster::service_account_token(&client, &ns, "dave").await;
    let r = cluster_relay(&client, Arc::new(LabelPolicy::default())).await;

    // Change one character in the middle of the signature (the last character of a base64url
    // signature may carry only padding bits, so changing it can leave the token valid).
    let mut forged: Vec<char> = valid.chars().collect();
    let i = forged.len() - 20;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let err = try_connect(&r, &format!("/flow/{ns}/web"), &forged).await.unwrap_err();
    assert!(err.starts_with("401 unauthenticated"), "{err}");
    assert!(!err.contains(&forged), "the reply does not echo the token");
    // Nor what the API server said about it (e.g. "invalid bearer token, ... verifying").
    assert_eq!(
        err.trim_end(),
        "401 unauthenticated: the token was not accepted (expired, revoked, or not for this cluster)"
    );

    let (code, body) = request(r.api, "GET", &format!("/flow/{ns}/web"), &[], b"").await;
    assert_eq!(code, 401, "{body}");
}

#[tokio::test]
async fn metrics_are_read_only_by_identities_allowed_to_get_the_metrics_url() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{Api, PostParams};
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "metrics").await;
    let h = cluster::harness_with(
        client.clone(),
        ns.clone(),
        false,
        Duration::ZERO,
        Duration::from_secs(60),
    )
    .await;
    let prom = cluster::service_account_token(&client, &ns, "prometheus").await;
    let tenant = cluster::service_account_token(&client, &ns, "tenant").await;
    // What a Prometheus ClusterRole grants for the API server's own /metrics.
    let name = format!("{ns}-metrics-reader");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let get = |token: String| {
        let api = h.relay.api;
        async move {
            request(
                api,
                "GET",
                "/metrics",
                &[("Authorization", &format!("Bearer {token}"))],
                b"",
            )
            .await
        }
    };
    let (code, body) = get(tenant).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("may not get /metrics"), "{body}");
    assert!(!body.contains("log_socket_"), "no metric in a refusal");
    // The API server's RBAC cache takes a moment to see the new binding.
    let body = eventually("prometheus reads the metrics", || {
        let get = get(prom.clone());
        async move {
            let (code, body) = get.await;
            (code == 200).then_some(body)
        }
    })
    .await;
    assert!(
        body.contains("# TYPE log_socket_ingest_request_duration_seconds"),
        "{body}"
    );
    for kind in ["ClusterRoleBinding", "ClusterRole"] {
        let _ = cluster::kubectl(&["delete", kind, &name, "--ignore-not-found"]);
    }
}
