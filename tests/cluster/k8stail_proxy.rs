//! k8stail through the real kube-apiserver's service proxy, with a kubeconfig whose credentials
//! come from an exec plugin. The API server refuses to proxy to loopback addresses, so the
//! relay's API port listens inside a network namespace this test creates (a veth pair away, never
//! on this machine's own interface address), and a selector-less Service with manual Endpoints
//! points there (through a never-started Pod whose status carries that address, which the API
//! server checks). Ingest stays on loopback.

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use log_socket::auth::labels::LabelPolicy;
use log_socket::auth::tokens::TokenReviewAuthenticator;
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use log_socket::service::Sockets;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use testkit::cluster;
use testkit::relay::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// A kubeconfig whose user gets `token` from an exec plugin, as cloud CLIs do.
fn exec_kubeconfig(token: &str, dir: &Path) -> PathBuf {
    exec_kubeconfig_in(token, dir, None)
}

/// [`exec_kubeconfig`], its contexts set to `namespace` when given (as `kubectl config
/// set-context --current --namespace` does).
pub(crate) fn exec_kubeconfig_in(token: &str, dir: &Path, namespace: Option<&str>) -> PathBuf {
    let plugin = dir.join("token-plugin.sh");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{token}\"}}}}'\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o700)).unwrap();
    let admin = std::fs::read_to_string(&cluster::env().kubeconfig).unwrap();
    let mut value: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    for user in value["users"].as_sequence_mut().unwrap() {
        user["user"] = serde_yaml::from_str(&format!(
            "{{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: {}, interactiveMode: Never}}}}",
            plugin.display()
        ))
        .unwrap();
    }
    if let Some(ns) = namespace {
        for context in value["contexts"].as_sequence_mut().unwrap() {
            context["context"]["namespace"] = ns.into();
        }
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&value).unwrap()).unwrap();
    path
}

/// A relay reached through the API server's service proxy (Service `log-socket`, port `api`,
/// in the test's namespace), listeners authenticated by TokenReview and authorized by the
/// label policy; ingest on loopback.
pub(crate) struct Proxied {
    pub client: kube::Client,
    pub ns: String,
    pub relay: TestRelay,
    pub _netns: testkit::netns::NetNs,
}

pub(crate) async fn proxied(name: &str) -> Proxied {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, name).await;
    let netns = testkit::netns::NetNs::create();
    let ip = netns.addr;

    // The relay, authenticating listeners with TokenReview; its API port in the namespace.
    let ingest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // The listener API over TLS with a certificate made at start, as the chart serves it; the
    // API server's proxy speaks https to it (k8stail's default --service-scheme).
    let mut sockets = Sockets::plain(ingest, netns.bind(0));
    sockets.api_tls = Some(log_socket::service::tls::ReloadingConfig::self_signed(&[]).unwrap());
    let parts = Parts {
        authenticator: Arc::new(TokenReviewAuthenticator::new(
            client.clone(),
            vec![],
            Duration::from_secs(10),
        )),
        authorizer: Arc::new(LabelPolicy::default()),
        sessions: Arc::new(NoSessions),
        ingest_auth: ingest_auth(),
    };
    let relay = start_relay_on(sockets, RelayConfig::default(), parts);

    // What an install creates: a Service with a port named `api`, here with manual Endpoints.
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "log-socket"},
        "spec": {"ports": [{"name": "api", "port": 10001, "targetPort": relay.api.port()}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    // The API server only proxies to an endpoint address backed by a Pod with that IP. No
    // kubelet runs here, so the Pod never starts; its status carries the relay's address.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let _ = cluster::service_account_token(&client, &ns, "default").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "log-socket-0", "labels": {"app": "log-socket"}},
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "log-socket", "image": "log-socket"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
    pods.patch_status("log-socket-0", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let endpoints: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "log-socket"},
        "subsets": [{
            "addresses": [{"ip": ip.to_string(), "targetRef": {"kind": "Pod", "name": "log-socket-0", "namespace": ns}}],
            "ports": [{"name": "api", "port": relay.api.port()}]
        }]
    }))
    .unwrap();
    Api::<Endpoints>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &endpoints)
        .await
        .unwrap();
    Proxied {
        client,
        ns,
        relay,
        _netns: netns,
    }
}

/// What a listener needs to tail through the proxy: `get` on the flows and on the Service's
/// proxy subresource (`https:log-socket:api`).
pub(crate) fn may_tail_through_proxy() -> serde_json::Value {
    let mut rules = cluster::may_tap_flows();
    rules.as_array_mut().unwrap().push(json!({
        "apiGroups": [""], "resources": ["services/proxy"], "resourceNames": ["https:log-socket:api"], "verbs": ["get"]
    }));
    rules
}

/// k8stail through the API server's proxy to the Service in `ns`, following `target` from now
/// on as record JSON; stdout and stderr piped.
pub(crate) fn tail_through_proxy(kubeconfig: &Path, ns: &str, target: &str) -> tokio::process::Child {
    tokio::process::Command::new(cluster::bin("k8stail"))
        .args([
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            target,
            "--service-namespace",
            ns,
        ])
        .args(["-o", "json", "--tail", "0"])
        .env_remove("K8STAIL_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Post `body` to `path` once `tail` is attached (the relay answers 202 until a tap is open);
/// fails with k8stail's stderr if it exits or never attaches.
pub(crate) async fn post_once_attached(relay: &TestRelay, tail: &mut tokio::process::Child, path: &str, body: &str) {
    for _ in 0..200 {
        if post(relay, path, body).await.0 == 200 {
            return;
        }
        if let Ok(Some(status)) = tail.try_wait() {
            let mut err = String::new();
            tail.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
            panic!("k8stail exited {status}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tail.start_kill();
    let mut err = String::new();
    tail.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    panic!("k8stail never attached through the proxy; stderr: {err}");
}

#[tokio::test]
async fn k8stail_streams_through_the_api_server_service_proxy_with_exec_plugin_credentials() {
    let Proxied {
        client,
        ns,
        relay,
        _netns,
    } = proxied("proxy").await;
    let token = cluster::service_account_token(&client, &ns, "alice").await;
    cluster::grant(&client, &ns, "alice", may_tail_through_proxy()).await;
    let dir = cluster::tempdir("k8stail-proxy");
    let kubeconfig = exec_kubeconfig(&token, &dir);

    let target = format!("{ns}/web");
    let mut child = tail_through_proxy(&kubeconfig, &ns, &target);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let record = json!([{"message": "through the proxy",
        "kubernetes": {"namespace_name": ns, "pod_name": "web-1", "labels": {"rbac/policy": "allow"}}}]);
    post_once_attached(&relay, &mut child, &format!("/flow/{ns}/web"), &record.to_string()).await;
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["message"], "through the proxy");
    drop(child);

    // Without `services/proxy`, the API server refuses and k8stail says what is missing.
    let bob = cluster::service_account_token(&client, &ns, "bob").await;
    cluster::grant(&client, &ns, "bob", cluster::may_tap_flows()).await;
    let bob_kubeconfig = exec_kubeconfig(&bob, &cluster::tempdir("k8stail-proxy-bob"));
    let bob_tails = |extra: &[&str]| {
        tokio::process::Command::new(cluster::bin("k8stail"))
            .args([
                "--kubeconfig",
                bob_kubeconfig.to_str().unwrap(),
                &target,
                "--service-namespace",
                &ns,
            ])
            .args(extra)
            .env_remove("K8STAIL_TOKEN")
            .output()
    };
    let out = bob_tails(&[]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("403") && err.contains("services/proxy"), "{err}");
    assert!(!err.contains("WARNING"), "{err}");

    // Asking the API server to use plain HTTP to the pod is allowed, and warned about.
    let out = bob_tails(&["--service-scheme", "http"]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARNING: --service-scheme http"), "{err}");
}

#[tokio::test]
async fn k8stail_rate_reaches_the_relay_through_the_service_proxy_in_the_options_header() {
    let Proxied {
        client,
        ns,
        relay,
        _netns,
    } = proxied("proxy-rate").await;
    let token = cluster::service_account_token(&client, &ns, "alice").await;
    cluster::grant(&client, &ns, "alice", may_tail_through_proxy()).await;
    let kubeconfig = exec_kubeconfig(&token, &cluster::tempdir("k8stail-proxy-rate"));
    // The API server drops the query string of a WebSocket upgrade: `rate` arrives in
    // X-Logsocket-Query, or not at all (then every record would arrive).
    let mut child = tokio::process::Command::new(cluster::bin("k8stail"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .arg(format!("{ns}/web"))
        .args(["--service-namespace", &ns, "-o", "frame", "--tail", "0", "--rate", "5"])
        .env_remove("K8STAIL_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let batch: Vec<serde_json::Value> = (0..200)
        .map(|i| json!({"message": format!("m{i}"),
            "kubernetes": {"namespace_name": ns, "pod_name": format!("web-{}", i % 4), "labels": {"rbac/policy": "allow"}}}))
        .collect();
    let body = serde_json::Value::from(batch).to_string();
    post_once_attached(&relay, &mut child, &format!("/flow/{ns}/web"), &body).await;
    // 200 records at once: kept what the rate's credit allows (5/s), the rest accounted.
    let (mut records, mut left_out) = (0u64, 0u64);
    while records + left_out < 200 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let frame: serde_json::Value = serde_json::from_str(&line).unwrap();
        match (frame["type"].as_str(), frame["reason"].as_str()) {
            (Some("record"), _) => records += 1,
            (Some("dropped"), Some("sampled")) => left_out += frame["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert_eq!(records + left_out, 200);
    assert!(
        records <= 6,
        "at most a second's worth of 5/s (the credit since connecting): {records}"
    );
}
