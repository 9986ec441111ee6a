//! The `log-socket run` binary in cluster mode against the real API server.

use futures::StreamExt;
use std::time::Duration;
use testkit::cluster;
use testkit::poll::{eventually, free_port};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Flags of a relay whose tap goes as soon as its last listener leaves: a short session TTL
/// (a killed relay's session expires quickly), no linger, no warm taps, no reload budget.
pub(crate) const TAP_GOES_AT_ONCE: [&str; 8] = [
    "--session-ttl",
    "3s",
    "--tap-linger",
    "0s",
    "--warm-max-bytes-per-second",
    "0",
    "--config-change-interval",
    "0s",
];

#[tokio::test]
async fn the_service_binary_refuses_to_start_without_permission_and_says_which() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "svc-perm").await;
    let token = cluster::service_account_token(&client, &ns, "log-socket").await;
    let dir = cluster::tempdir("svc-perm");
    let kubeconfig = cluster::kubeconfig_with_token(&token, &dir.join("kubeconfig"));

    let out = tokio::process::Command::new(cluster::bin("log-socket"))
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

/// `log-socket run` in cluster mode for one namespace, as its own ServiceAccount with exactly
/// the shipped RBAC (config/rbac, so a missing verb fails here), on fixed ports so it can be
/// restarted where its clients expect it.
pub(crate) struct Setup {
    pub ns: String,
    /// logging-operator's part for the namespace.
    _logging_operator: testkit::logging_operator::LoggingOperator,
    kubeconfig: std::path::PathBuf,
    /// The server's ingest keys (`--ingest-key-file`), with the tests' key.
    keys: std::path::PathBuf,
    pub ingest: std::net::SocketAddr,
    pub api: std::net::SocketAddr,
    health: std::net::SocketAddr,
}

impl Setup {
    pub async fn new(client: &kube::Client, prefix: &str) -> Setup {
        let ns = cluster::namespace(client, prefix).await;
        let dir = cluster::tempdir(prefix);
        let keys = dir.join("ingest-keys");
        std::fs::write(&keys, format!("{}\n", testkit::relay::TEST_KEY)).unwrap();
        let token = cluster::service_account_token(client, &ns, "log-socket").await;
        cluster::grant_shipped_rbac(client, &ns, "log-socket").await;
        let kubeconfig = cluster::kubeconfig_with_token(&token, &dir.join("kubeconfig"));
        let addr = || std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        Setup {
            _logging_operator: testkit::logging_operator::start(client, &ns).await,
            ns,
            kubeconfig,
            keys,
            ingest: addr(),
            api: addr(),
            health: addr(),
        }
    }

    /// Start the service and wait until it is ready.
    pub async fn start(&self, extra: &[&str]) -> testkit::relay::Service {
        self.start_at(self.ingest, self.api, self.health, extra).await
    }

    /// Start another replica of the service, on these ports, and wait until it is ready.
    pub async fn start_at(
        &self,
        ingest: std::net::SocketAddr,
        api: std::net::SocketAddr,
        health: std::net::SocketAddr,
        extra: &[&str],
    ) -> testkit::relay::Service {
        let service = testkit::relay::Service::spawn(
            tokio::process::Command::new(cluster::bin("log-socket"))
                .args([
                    "run",
                    "--log-level",
                    "debug",
                    // These tests label their records for the label policy.
                    "--record-policy",
                    "labels",
                    "--watch-namespace",
                    &self.ns,
                    "--kubeconfig",
                ])
                .arg(&self.kubeconfig)
                .arg("--ingest-key-file")
                .arg(&self.keys)
                .args(["--ingest-addr", &ingest.to_string()])
                .args(["--api-addr", &api.to_string()])
                .args(["--health-addr", &health.to_string()])
                .args(extra)
                .env_remove("RUST_LOG"),
        );
        service.wait_ready(health).await;
        service
    }

    /// POST records to the flow's ingest path, as fluentd does; the status and body.
    async fn post(&self, records: &serde_json::Value) -> (u16, String) {
        testkit::relay::request(
            self.ingest,
            "POST",
            &format!("/flow/{}/web", self.ns),
            &[(
                "Authorization",
                &testkit::relay::flow_auth(&format!("flow/{}/web", self.ns)),
            )],
            records.to_string().as_bytes(),
        )
        .await
    }

    fn record(&self, message: &str) -> serde_json::Value {
        serde_json::json!([{"message": message,
            "kubernetes": {"namespace_name": self.ns, "pod_name": "web-1", "labels": {"rbac/policy": "allow"}}}])
    }

    /// The flow's tap: its phase and listener count (None when it does not exist).
    pub async fn tap(&self, client: &kube::Client) -> Option<(Option<log_socket::k8s::flowtap::Phase>, u32)> {
        let taps: kube::Api<log_socket::k8s::flowtap::FlowTap> = kube::Api::namespaced(client.clone(), &self.ns);
        let tap = taps.get_opt("flow-web").await.unwrap()?;
        let status = tap.status.unwrap_or_default();
        Some((status.phase, status.listeners))
    }

    pub async fn flow_refs(&self, client: &kube::Client) -> serde_json::Value {
        let flow = cluster::logging_api(client, &self.ns, "Flow").get("web").await.unwrap();
        flow.data["spec"]["localOutputRefs"].clone()
    }
}

#[tokio::test]
async fn the_service_relays_to_a_service_account_and_stops_cleanly_on_sigterm() {
    let client = cluster::client().await;
    let s = Setup::new(&client, "svc-run").await;
    let ns = s.ns.clone();
    let token = cluster::service_account_token(&client, &ns, "alice").await;
    cluster::grant(&client, &ns, "alice", cluster::may_tap_flows()).await;
    cluster::create_flow(&client, &ns, "web", serde_json::json!({"localOutputRefs": ["loki"]})).await;
    let service = s.start(&[]).await;
    let api = s.api.port();

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

    let (code, body) = s.post(&s.record("hello alice")).await;
    assert_eq!(code, 200, "{body}");
    assert!(matches!(next().await, Message::Text(t) if t.as_str().contains("hello alice")));

    // With only the shipped RBAC, the operator takes the Lease, creates the output, patches the
    // flow and reports the tap Active.
    eventually("the tap became Active under the shipped RBAC", async || {
        matches!(
            s.tap(&client).await,
            Some((Some(log_socket::k8s::flowtap::Phase::Active), _))
        )
        .then_some(())
    })
    .await;
    assert_eq!(
        s.flow_refs(&client).await,
        serde_json::json!(["loki", "logsocket-flow-web"])
    );
    let output = cluster::logging_api(&client, &ns, "Output")
        .get("logsocket-flow-web")
        .await
        .unwrap();
    // The generated Output carries its flow's own credential, which the service accepts for
    // that path and refuses (403) for any other.
    let auth = &output.data["spec"]["http"]["auth"];
    let (user, password) = (
        auth["username"]["value"].as_str().unwrap(),
        auth["password"]["value"].as_str().unwrap(),
    );
    assert_eq!(user, format!("flow/{ns}/web"));
    let header = log_socket::auth::ingest_keys::basic_authorization(user, password);
    let body = s.record("from the generated credential").to_string();
    let post_to = |flow: &str| {
        let path = format!("/flow/{ns}/{flow}");
        let (header, body, ingest) = (header.clone(), body.clone(), s.ingest);
        async move { testkit::relay::request(ingest, "POST", &path, &[("Authorization", &header)], body.as_bytes()).await }
    };
    let (code, text) = post_to("web").await;
    assert!(code == 200 || code == 202, "{code} {text}");
    let (code, text) = post_to("other").await;
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains(&format!("this credential is for flow/{ns}/web")),
        "{text}"
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
    // The record posted with the generated credential, then the close frame.
    let closing = loop {
        match next().await {
            Message::Text(t) => assert!(!t.contains("\"type\":\"error\""), "{t}"),
            other => break other,
        }
    };
    assert!(matches!(closing, Message::Close(Some(f)) if u16::from(f.code) == 1001));
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

#[tokio::test]
async fn a_killed_service_restarts_and_k8stail_follows_it_saying_what_may_be_missing() {
    let client = cluster::client().await;
    let s = Setup::new(&client, "svc-kill").await;
    let token = cluster::service_account_token(&client, &s.ns, "alice").await;
    cluster::grant(&client, &s.ns, "alice", cluster::may_tap_flows()).await;
    cluster::create_flow(&client, &s.ns, "web", serde_json::json!({"localOutputRefs": ["loki"]})).await;
    // A short session TTL, so the killed relay's session (never unregistered) expires quickly;
    // no linger, so the tap goes as soon as the last listener leaves.
    let flags = TAP_GOES_AT_ONCE;
    let first = s.start(&flags).await;

    let server = format!("http://{}", s.api);
    let target = format!("{}/web", s.ns);
    let mut tail = tokio::process::Command::new(cluster::bin("k8stail"))
        .args([
            "--server",
            &server,
            "--token",
            &token,
            &target,
            "--max-backoff",
            "300ms",
            "-o",
            "json",
            "--tail",
            "0",
        ])
        .env_remove("K8STAIL_TOKEN")
        .env("KUBECONFIG", "/nonexistent")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    // k8stail's stderr, read as it comes (for the failure message and the final check).
    let tail_err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut err_lines = BufReader::new(tail.stderr.take().unwrap()).lines();
    let collect = tail_err.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = err_lines.next_line().await {
            let mut s = collect.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    // Post numbered records until k8stail prints one that starts with `prefix`: a record posted
    // before k8stail's listener attached (the relay opens the tap for the FlowTap) is not shown,
    // as with any live tail.
    let mut until_printed = async |prefix: &str| -> String {
        for i in 0..300 {
            match s.post(&s.record(&format!("{prefix} {i}"))).await {
                (200 | 202, _) => {}
                (code, body) => panic!("ingest answered {code}: {body}"),
            }
            loop {
                match tokio::time::timeout(Duration::from_millis(100), lines.next_line()).await {
                    Err(_) => break,
                    Ok(Ok(Some(line))) => {
                        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                        let message = v["message"].as_str().unwrap().to_owned();
                        if message.starts_with(prefix) {
                            return message;
                        }
                    }
                    other => panic!("k8stail ended ({other:?}); its stderr:\n{}", tail_err.lock().unwrap()),
                }
            }
        }
        panic!(
            "k8stail printed nothing starting with {prefix:?}; its stderr:\n{}",
            tail_err.lock().unwrap()
        );
    };
    until_printed("before the crash").await;

    // SIGKILL: no close frames, no unregistering, the FlowTap keeps the dead relay's session.
    let mut first = first;
    first.child.kill().await.unwrap();
    let second = s.start(&flags).await;
    until_printed("after the restart").await;

    // One listener (the dead relay's session expired), one ref, the tap working again.
    eventually("the tap is Active with exactly k8stail's session", async || {
        (s.tap(&client).await == Some((Some(log_socket::k8s::flowtap::Phase::Active), 1))).then_some(())
    })
    .await;
    assert_eq!(
        s.flow_refs(&client).await,
        serde_json::json!(["loki", "logsocket-flow-web"])
    );
    // The relay renewing k8stail's session reports its bus in the FlowTap's status.
    let taps: kube::Api<log_socket::k8s::flowtap::FlowTap> = kube::Api::namespaced(client.clone(), &s.ns);
    eventually("the FlowTap status names the bus", async || {
        let bus = taps.get("flow-web").await.ok()?.status?.bus?;
        (bus.kind == "embedded" && bus.stream.is_none()).then_some(())
    })
    .await;

    // Ctrl-C: k8stail says records posted while the relay was down may be missing.
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(tail.id().unwrap() as i32, libc::SIGINT);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), tail.wait())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stderr = tail_err.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the tap restarted"),
        "the possible gap is reported: {stderr}"
    );

    // Nothing left behind by the crash: the tap, its Output and the Flow's ref go.
    eventually("the tap is gone", async || s.tap(&client).await.is_none().then_some(())).await;
    assert_eq!(s.flow_refs(&client).await, serde_json::json!(["loki"]));
    let outputs = cluster::logging_api(&client, &s.ns, "Output");
    assert!(outputs.get_opt("logsocket-flow-web").await.unwrap().is_none());
    second.terminate();
    second.exited_cleanly().await;
}

#[tokio::test]
async fn two_replicas_serving_listeners_on_the_embedded_bus_log_that_listeners_miss_records() {
    let client = cluster::client().await;
    let s = Setup::new(&client, "svc-replicas").await;
    let token = cluster::service_account_token(&client, &s.ns, "alice").await;
    cluster::grant(&client, &s.ns, "alice", cluster::may_tap_flows()).await;
    cluster::create_flow(&client, &s.ns, "web", serde_json::json!({"localOutputRefs": ["loki"]})).await;
    let first = s.start(&["--session-ttl", "3s", "--instance", "relay-a"]).await;
    // A second replica of the same installation, on ports of its own.
    let port = || std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let second_api = port();
    let second = s
        .start_at(
            port(),
            second_api,
            port(),
            &["--session-ttl", "3s", "--instance", "relay-b"],
        )
        .await;
    let listen = |api: std::net::SocketAddr| {
        let (ns, token) = (s.ns.clone(), token.clone());
        async move {
            let mut req = format!("ws://{api}/flow/{ns}/web").into_client_request().unwrap();
            req.headers_mut().insert("x-authorization", token.parse().unwrap());
            tokio_tungstenite::connect_async(req).await.expect("a listener").0
        }
    };
    let (_a, _b) = (listen(s.api).await, listen(second_api).await);
    // Both renew their sessions on the one FlowTap every second; each sees the other's.
    tokio::time::sleep(Duration::from_secs(6)).await;
    first.terminate();
    second.terminate();
    let logs = format!("{}{}", first.exited_cleanly().await, second.exited_cleanly().await);
    assert!(
        logs.contains("several log-socket replicas serve listeners, but this one runs --bus embedded"),
        "{logs}"
    );
}
