//! The `log-socket run` binary in cluster mode against the real API server.

use crate::support;
use futures::StreamExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_service_binary_refuses_to_start_without_permission_and_says_which() {
    let client = support::client().await;
    let ns = support::namespace(&client, "svc-perm").await;
    let token = support::service_account_token(&client, &ns, "log-socket").await;
    let dir = support::tempdir("svc-perm");
    let kubeconfig = support::kubeconfig_with_token(&token, &dir.join("kubeconfig"));

    let out = tokio::process::Command::new(support::bin("log-socket"))
        .args([
            "run",
            "--ingest-insecure",
            "--health-addr",
            "127.0.0.1:0",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("list flowtaps.logsocket.dev"), "{stderr}");
    assert!(!stderr.contains(&token), "the token never appears in the logs");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_service_relays_to_a_service_account_and_stops_cleanly_on_sigterm() {
    let client = support::client().await;
    let ns = support::namespace(&client, "svc-run").await;
    let token = support::service_account_token(&client, &ns, "alice").await;
    support::grant(&client, &ns, "alice", support::may_tap_flows()).await;
    support::create_flow(&client, &ns, "web", serde_json::json!({"localOutputRefs": ["loki"]})).await;
    let dir = support::tempdir("svc-run");
    let creds = dir.join("ingest-credentials");
    std::fs::write(&creds, "fluentd:s3cret\n").unwrap();
    // The service runs as a ServiceAccount with exactly the shipped RBAC (config/rbac), so a
    // missing verb fails here.
    let service_token = support::service_account_token(&client, &ns, "log-socket").await;
    support::grant_shipped_rbac(&client, &ns, "log-socket").await;
    let service_kubeconfig = support::kubeconfig_with_token(&service_token, &dir.join("kubeconfig"));

    let (ingest, api, health) = (free_port(), free_port(), free_port());
    let service = crate::wire::Service::spawn(
        tokio::process::Command::new(support::bin("log-socket"))
            .args(["run", "--log-level", "debug", "--watch-namespace", &ns, "--kubeconfig"])
            .arg(&service_kubeconfig)
            .args(["--output-auth-secret", "log-socket-ingest"])
            .arg("--ingest-credentials")
            .arg(&creds)
            .args(["--ingest-addr", &format!("127.0.0.1:{ingest}")])
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--health-addr", &format!("127.0.0.1:{health}")])
            .env_remove("RUST_LOG"),
    );
    let health_addr = std::net::SocketAddr::from(([127, 0, 0, 1], health));
    let mut ready = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(health_addr).await.is_ok()
            && crate::wire::request(health_addr, "GET", "/readyz", &[], b"").await.0 == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "service became ready");

    let mut req = format!("ws://127.0.0.1:{api}/flow/{ns}/web")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-authorization", token.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("a real ServiceAccount token is accepted");
    // Tap status frames (the FlowTap warming up) may come at any time; skip them.
    let mut next = async || -> Message {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if !matches!(&m, Message::Text(t) if t.as_str().contains("\"state\":\"tap\"")) {
                return m;
            }
        }
    };
    assert!(matches!(next().await, Message::Text(t) if t.as_str().contains("\"listening\"")));

    let record = serde_json::json!([{"message": "hello alice",
        "kubernetes": {"namespace_name": ns, "pod_name": "web-1", "labels": {"rbac/policy": "allow"}}}]);
    let ingest_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ingest));
    let (code, body) = crate::wire::request(
        ingest_addr,
        "POST",
        &format!("/flow/{ns}/web"),
        &[("Authorization", crate::wire::INGEST_AUTH)],
        record.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(matches!(next().await, Message::Text(t) if t.as_str().contains("hello alice")));

    // With only the shipped RBAC, the operator takes the Lease, creates the output, patches the
    // flow and reports the tap Active.
    let taps: kube::Api<log_socket::crd::FlowTap> = kube::Api::namespaced(client.clone(), &ns);
    let mut active = false;
    for _ in 0..300 {
        let phase = taps.get_opt("flow-web").await.unwrap().and_then(|t| t.status?.phase);
        if phase == Some(log_socket::crd::Phase::Active) {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(active, "the tap became Active under the shipped RBAC");
    let flow = support::logging_api(&client, &ns, "Flow").get("web").await.unwrap();
    assert_eq!(
        flow.data["spec"]["localOutputRefs"],
        serde_json::json!(["loki", "logsocket-flow-web"])
    );
    let output = support::logging_api(&client, &ns, "Output")
        .get("logsocket-flow-web")
        .await
        .unwrap();
    assert_eq!(
        output.data["spec"]["http"]["auth"]["password"]["valueFrom"]["secretKeyRef"]["name"],
        "log-socket-ingest"
    );
    let lease = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns)
        .get("log-socket")
        .await
        .unwrap();
    assert!(
        lease.spec.unwrap().holder_identity.is_some(),
        "the service holds the Lease"
    );

    service.terminate();
    assert!(matches!(next().await, Message::Close(Some(f)) if u16::from(f.code) == 1001));
    let stderr = service.exited_cleanly().await;
    assert!(stderr.contains("listener connected"), "{stderr}");
    assert!(
        stderr.contains("leading: running the controller"),
        "the only replica wins the Lease: {stderr}"
    );
    assert!(
        !stderr.contains(&token),
        "the token never appears in the logs: {stderr}"
    );
}
