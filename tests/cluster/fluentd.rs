//! The whole pipeline with the real fluentd 1.16.11: the `log-socket run` binary (operator and
//! relay, under the shipped RBAC) generates the tap's Output, the flow's fluentd configuration
//! is rendered as logging-operator renders it (tests/support/pipeline.rs), the real fluentd
//! posts into the relay, and k8stail prints what arrives. Skipped, and says so, without a
//! fluentd (under CI a missing fluentd fails; see tests/support/fluentd.rs).

use crate::service::Setup;
use crate::support;
use crate::support::pipeline::{FlowId, Pipeline};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// `k8stail` running against the service's API port; its printed records arrive on `lines`.
struct Tail {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    stderr: Arc<Mutex<String>>,
}

impl Tail {
    fn start(s: &Setup, token: &str, target: &str) -> Tail {
        let server = format!("http://{}", s.api);
        let mut child = tokio::process::Command::new(support::bin("k8stail"))
            .args(["--server", &server, "--token", token, target, "--max-backoff", "300ms"])
            .env_remove("K8STAIL_TOKEN")
            .env("KUBECONFIG", "/nonexistent")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let record = serde_json::from_str(&line).unwrap_or_else(|e| panic!("k8stail printed {line:?}: {e}"));
                if tx.send(record).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (collect, mut err) = (stderr.clone(), BufReader::new(child.stderr.take().unwrap()).lines());
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut s = collect.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Tail { child, lines, stderr }
    }

    /// The next printed record, or `None` after `quiet` without one.
    async fn next(&mut self, quiet: Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(quiet, self.lines.recv()).await.ok().flatten()
    }

    /// Ctrl-C, and k8stail's exit code and stderr.
    async fn interrupt(mut self) -> (Option<i32>, String) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id().unwrap() as i32, libc::SIGINT);
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("k8stail stops on Ctrl-C")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stderr = self.stderr.lock().unwrap().clone();
        (status.code(), stderr)
    }
}

/// A `sample` source of numbered container records (`n`) of pod web-1 in `ns`, readable by
/// anyone under the label policy, at `rate` records a second.
fn source(ns: &str, rate: u32) -> String {
    let record = serde_json::json!({
        "stream": "stdout", "logtag": "F",
        "message": "GET /cart HTTP/1.1 200 512 \"-\" \"Mozilla/5.0\"",
        "kubernetes": {"namespace_name": ns, "pod_name": "web-1", "container_name": "nginx",
            "labels": {"app": "web", "rbac/policy": "allow"}, "host": "node-1"},
    });
    format!(
        "<source>\n  @type sample\n  tag kubernetes.var.log.containers.web-1_{ns}_nginx.log\n  rate {rate}\n  \
         auto_increment_key n\n  sample {record}\n</source>\n"
    )
}

/// The numbers of the records k8stail prints, until it has printed `count` of them.
async fn printed(tail: &mut Tail, pipeline: &Pipeline, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = vec![];
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "k8stail printed {} of {count} records; fluentd's log:\n{}\nk8stail's stderr:\n{}",
            seen.len(),
            pipeline.log().await,
            tail.stderr.lock().unwrap()
        );
        if let Some(record) = tail.next(Duration::from_secs(1)).await {
            seen.push(record["n"].as_u64().expect("the sample's counter"));
        }
    }
    seen
}

/// The client-certificate Secret of examples/mtls.
const CLIENT_SECRET: &str = "log-socket-ingest-client";

/// The rule examples/mtls adds to the service's ClusterRole (to check that Secret exists).
fn mtls_secret_rule() -> serde_json::Value {
    let text = std::fs::read_to_string(support::repo().join("examples/mtls/kustomization.yaml")).unwrap();
    let k: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let patch = k["patches"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["patch"].as_str())
        .expect("the ClusterRole patch");
    let ops: serde_json::Value = serde_yaml::from_str(patch).unwrap();
    let rule = ops[0]["value"].clone();
    assert_eq!(rule["resourceNames"][0], CLIENT_SECRET, "{rule}");
    serde_json::json!([rule])
}

/// Numbers that are each one more than the one before.
fn consecutive(seen: &[u64]) -> bool {
    seen.windows(2).all(|w| w[1] == w[0] + 1)
}

/// Records from fluentd through the generated Output of a `kind` tap, over mTLS or Basic, to
/// k8stail: record for record and in order; the flow's other output gets them all as well.
async fn streams_end_to_end(kind: &'static str, mtls: bool) {
    let client = support::client().await;
    let s = Setup::new(&client, if mtls { "fd-mtls" } else { "fd-basic" }).await;
    let ns = s.ns.clone();
    let token = support::service_account_token(&client, &ns, "alice").await;
    support::grant(&client, &ns, "alice", support::may_tap_flows()).await;
    let (name, other, target) = match kind {
        "Flow" => {
            support::create_flow(&client, &ns, "web", serde_json::json!({"localOutputRefs": ["loki"]})).await;
            ("web", "loki", format!("{ns}/web"))
        }
        _ => {
            support::create_cluster_flow(
                &client,
                &ns,
                "all",
                serde_json::json!({"globalOutputRefs": ["archive"]}),
            )
            .await;
            ("all", "archive", format!("clusterflow/{ns}/all"))
        }
    };
    let dir = support::tempdir("fd-e2e");
    let mut flags: Vec<String> = vec![];
    if mtls {
        // `log-socket certs`, and the client half in the Secret the generated Output mounts,
        // which the service may read as examples/mtls lets it.
        support::grant_in(&client, &ns, &ns, "log-socket", mtls_secret_rule()).await;
        let certs = dir.join("certs");
        log_socket::service::certs::generate(&certs, &["log-socket.test.svc".into()], 2).unwrap();
        let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": CLIENT_SECRET},
            "stringData": {"ca.crt": read("ca.crt"), "tls.crt": read("client.crt"), "tls.key": read("client.key")},
        }))
        .unwrap();
        kube::Api::namespaced(client.clone(), &ns)
            .create(&Default::default(), &secret)
            .await
            .unwrap();
        for (flag, file) in [
            ("--ingest-tls-cert", "server.crt"),
            ("--ingest-tls-key", "server.key"),
            ("--ingest-client-ca", "ca.crt"),
        ] {
            flags.push(flag.into());
            flags.push(certs.join(file).display().to_string());
        }
        flags.extend(["--output-tls-secret".into(), CLIENT_SECRET.into()]);
    }
    let scheme = if mtls { "https" } else { "http" };
    flags.extend(["--ingest-url".into(), format!("{scheme}://{}", s.ingest)]);
    let service = s.start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;

    let mut tail = Tail::start(&s, &token, &target);
    let flow = FlowId {
        kind,
        namespace: ns.clone(),
        name: name.into(),
    };
    let Some(pipeline) = Pipeline::start(
        client.clone(),
        &dir.join("fluentd"),
        flow,
        source(&ns, 20),
        Duration::from_millis(300),
    )
    .await
    else {
        return;
    };
    let seen = printed(&mut tail, &pipeline, 40).await;
    // Records fluentd sent before the tap was in its configuration never reached the relay;
    // from the first one k8stail shows, every record arrives once and in order.
    assert!(consecutive(&seen), "{seen:?}");
    let config = pipeline.config().await;
    let tap_output = format!("logsocket-{}-{name}", kind.to_lowercase());
    assert!(config.contains(&tap_output), "{config}");
    assert!(config.contains(&format!("{scheme}://{}", s.ingest)), "{config}");
    assert_eq!(config.contains("tls_client_cert_path"), mtls, "{config}");

    pipeline.stop().await;
    let log = pipeline.log().await;
    assert!(pipeline.backups().is_empty(), "{log}");
    assert!(!log.contains("got unrecoverable error"), "{log}");
    // The flow's own output received everything fluentd produced, the tap notwithstanding.
    let sunk: Vec<u64> = pipeline.sink(other).iter().filter_map(|r| r["n"].as_u64()).collect();
    assert!(!sunk.is_empty() && sunk[0] == 0 && consecutive(&sunk), "{sunk:?}");
    assert!(sunk.last() >= seen.last(), "{sunk:?} {seen:?}");

    let (code, stderr) = tail.interrupt().await;
    assert_eq!(code, Some(0), "{stderr}");
    service.terminate();
    service.exited_cleanly().await;
}

#[tokio::test]
async fn fluentd_streams_a_flow_to_k8stail_through_the_generated_output_with_basic_auth() {
    streams_end_to_end("Flow", false).await;
}

#[tokio::test]
async fn fluentd_streams_a_clusterflow_to_k8stail_through_the_generated_clusteroutput_with_basic_auth() {
    streams_end_to_end("ClusterFlow", false).await;
}

#[tokio::test]
async fn fluentd_streams_a_flow_to_k8stail_over_mtls_with_the_certificates_of_log_socket_certs() {
    streams_end_to_end("Flow", true).await;
}

#[tokio::test]
async fn fluentd_streams_a_clusterflow_to_k8stail_over_mtls() {
    streams_end_to_end("ClusterFlow", true).await;
}
