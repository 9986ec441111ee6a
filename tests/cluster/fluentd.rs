//! The whole pipeline with the real fluentd 1.16.11: the `log-socket run` binary (operator and
//! relay, under the shipped RBAC) generates the tap's Output, the flow's fluentd configuration
//! is rendered as logging-operator renders it (testkit/src/pipeline.rs), the real fluentd
//! posts into the relay, and k8stail prints what arrives. Skipped, and says so, without a
//! fluentd (under CI a missing fluentd fails; see testkit/src/fluentd.rs).

use crate::service::Setup;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::cluster;
use testkit::pipeline::{FlowId, Pipeline};
use testkit::poll::{eventually, eventually_within};
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
        let mut child = tokio::process::Command::new(cluster::bin("k8stail"))
            .args(["--server", &server, "--token", token, target, "--max-backoff", "300ms"])
            .args(["-o", "json", "--tail", "0"])
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
    padded_source(ns, rate, 0)
}

/// [`source`] with records `pad` bytes longer (a long stack trace, say).
fn padded_source(ns: &str, rate: u32, pad: usize) -> String {
    let mut record = serde_json::json!({
        "stream": "stdout", "logtag": "F",
        "message": "GET /cart HTTP/1.1 200 512 \"-\" \"Mozilla/5.0\"",
        "kubernetes": {"namespace_name": ns, "pod_name": "web-1", "container_name": "nginx",
            "labels": {"app": "web", "rbac/policy": "allow"}, "host": "node-1"},
    });
    if pad > 0 {
        record["trace"] = "x".repeat(pad).into();
    }
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
    let text = std::fs::read_to_string(cluster::repo().join("examples/mtls/kustomization.yaml")).unwrap();
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

/// Wait until `flow` names its tap's output (so fluentd starts with the tap in its
/// configuration, and its record numbers are not reset by a reload).
async fn tap_patched(client: &kube::Client, flow: &FlowId) {
    let field = if flow.kind == "Flow" {
        "localOutputRefs"
    } else {
        "globalOutputRefs"
    };
    eventually("the flow names the tap's output", async || {
        let f = cluster::logging_api(client, &flow.namespace, flow.kind)
            .get(&flow.name)
            .await
            .ok()?;
        f.data["spec"][field]
            .as_array()?
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("logsocket-")))
            .then_some(())
    })
    .await;
}

/// Numbers that are each one more than the one before.
fn consecutive(seen: &[u64]) -> bool {
    seen.windows(2).all(|w| w[1] == w[0] + 1)
}

/// Records from fluentd through the generated Output of a `kind` tap, over mTLS or Basic, to
/// k8stail: record for record and in order; the flow's other output gets them all as well.
async fn streams_end_to_end(kind: &'static str, mtls: bool) {
    let client = cluster::client().await;
    let s = Setup::new(&client, if mtls { "fd-mtls" } else { "fd-basic" }).await;
    let ns = s.ns.clone();
    let token = cluster::service_account_token(&client, &ns, "alice").await;
    cluster::grant(&client, &ns, "alice", cluster::may_tap_flows()).await;
    let (name, other, target) = match kind {
        "Flow" => {
            cluster::create_flow(&client, &ns, "web", serde_json::json!({"localOutputRefs": ["loki"]})).await;
            ("web", "loki", format!("{ns}/web"))
        }
        _ => {
            cluster::create_cluster_flow(
                &client,
                &ns,
                "all",
                serde_json::json!({"globalOutputRefs": ["archive"]}),
            )
            .await;
            ("all", "archive", format!("clusterflow/{ns}/all"))
        }
    };
    let dir = cluster::tempdir("fd-e2e");
    let mut flags: Vec<String> = vec![];
    if mtls {
        // `log-socket certs`, and the client half in the Secret the generated Output mounts,
        // which the service may read as examples/mtls lets it.
        cluster::grant_in(&client, &ns, &ns, "log-socket", mtls_secret_rule()).await;
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
    tap_patched(&client, &flow).await;
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
    let tap_output = match kind {
        "ClusterFlow" => format!("logsocket-{ns}.clusterflow-{name}"),
        _ => format!("logsocket-{}-{name}", kind.to_lowercase()),
    };
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

/// Basic-auth setup for Flow `web` (other output `loki`), and alice's token.
async fn flow_setup(prefix: &str) -> (kube::Client, Setup, String) {
    let client = cluster::client().await;
    let s = Setup::new(&client, prefix).await;
    let token = cluster::service_account_token(&client, &s.ns, "alice").await;
    cluster::grant(&client, &s.ns, "alice", cluster::may_tap_flows()).await;
    cluster::create_flow(&client, &s.ns, "web", serde_json::json!({"localOutputRefs": ["loki"]})).await;
    (client, s, token)
}

/// Start the service with generated Outputs posting to its ingest port over plain HTTP.
async fn start_plain(s: &Setup, extra: &[&str]) -> testkit::relay::Service {
    let url = format!("http://{}", s.ingest);
    let mut flags = vec!["--ingest-url", &url];
    flags.extend(extra);
    s.start(&flags).await
}

fn web(ns: &str) -> FlowId {
    FlowId {
        kind: "Flow",
        namespace: ns.to_owned(),
        name: "web".into(),
    }
}

#[tokio::test]
async fn a_relay_killed_while_fluentd_sends_is_followed_by_k8stail_and_the_loss_is_counted() {
    let flags = crate::service::TAP_GOES_AT_ONCE;
    let (client, s, token) = flow_setup("fd-kill").await;
    let first = start_plain(&s, &flags).await;
    let mut tail = Tail::start(&s, &token, &format!("{}/web", s.ns));
    let dir = cluster::tempdir("fd-kill");
    let rate = 50;
    tap_patched(&client, &web(&s.ns)).await;
    let Some(pipeline) = Pipeline::start(
        client.clone(),
        &dir,
        web(&s.ns),
        source(&s.ns, rate),
        Duration::from_millis(300),
    )
    .await
    else {
        return;
    };
    let mut seen = printed(&mut tail, &pipeline, 50).await;

    // SIGKILL: no goodbye to fluentd (its requests fail mid-way or are refused) nor to k8stail.
    let mut first = first;
    first.child.kill().await.unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = start_plain(&s, &flags).await;
    let down = down.elapsed();
    // fluentd retries what it holds; k8stail reconnects; records flow again.
    let before = *seen.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.last().unwrap() < &(before + 10 * rate as u64) {
        assert!(
            Instant::now() < deadline,
            "no records after the restart; fluentd's log:\n{}\nk8stail's stderr:\n{}",
            pipeline.log().await,
            tail.stderr.lock().unwrap()
        );
        if let Some(record) = tail.next(Duration::from_secs(1)).await {
            seen.push(record["n"].as_u64().unwrap());
        }
    }
    pipeline.stop().await;
    while let Some(record) = tail.next(Duration::from_secs(3)).await {
        seen.push(record["n"].as_u64().unwrap());
    }
    // Never twice, never out of order; what is missing was lost, and is counted.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let (first_n, last_n) = (seen[0], *seen.last().unwrap());
    let span = last_n - first_n + 1;
    let lost = span - seen.len() as u64;
    let gaps: Vec<(u64, u64)> = seen
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0] + 1, w[1] - 1))
        .collect();
    eprintln!(
        "MEASURED relay SIGKILL + restart (down {down:.1?}) at {rate} records/s: k8stail lost {lost} of {span} \
         records (gaps {gaps:?})"
    );
    assert_eq!(pipeline.reloads().await, 0, "the tap stayed in fluentd's configuration");
    // The flow's own output lost nothing, and fluentd gave up on nothing.
    let sunk: Vec<u64> = pipeline.sink("loki").iter().filter_map(|r| r["n"].as_u64()).collect();
    assert!(
        sunk.first() == Some(&0) && consecutive(&sunk) && sunk.last() >= Some(&last_n),
        "{sunk:?}"
    );
    assert!(pipeline.backups().is_empty(), "{}", pipeline.log().await);

    let (code, stderr) = tail.interrupt().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the tap restarted"), "{stderr}");
    second.terminate();
    second.exited_cleanly().await;
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The runs of numbered records a sink got, one per fluentd run (each run counts from 0).
fn runs(sunk: &[u64]) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = vec![];
    for &n in sunk {
        match out.last_mut() {
            Some(run) if n != 0 => run.push(n),
            _ => out.push(vec![n]),
        }
    }
    out
}

#[tokio::test]
async fn a_stalled_or_gone_relay_neither_holds_up_the_flows_own_output_nor_grows_fluentd_past_the_tap_buffer() {
    let (client, s, _token) = flow_setup("fd-harm").await;
    let service = start_plain(&s, &[]).await;
    // A persistent tap (as GitOps declares one) with a small buffer: 2 MiB at most in fluentd.
    let tap: log_socket::k8s::flowtap::FlowTap = serde_json::from_value(serde_json::json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": "web"},
        "spec": {"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true,
            "buffer": {"flushInterval": "1s", "chunkLimitSize": "256k", "totalLimitSize": "2m", "retryMaxTimes": 5}},
    }))
    .unwrap();
    let taps = kube::Api::<log_socket::k8s::flowtap::FlowTap>::namespaced(client.clone(), &s.ns);
    taps.create(&Default::default(), &tap).await.unwrap();
    tap_patched(&client, &web(&s.ns)).await;
    let dir = cluster::tempdir("fd-harm");
    let (rate, pad): (u64, usize) = (2000, 1000);
    let source = padded_source(&s.ns, rate as u32, pad);
    let Some(pipeline) = Pipeline::start(client.clone(), &dir, web(&s.ns), source, Duration::from_millis(300)).await
    else {
        return;
    };
    let sunk = |p: &Pipeline| p.sink("loki").iter().filter_map(|r| r["n"].as_u64()).max().unwrap_or(0);
    eventually("the sink receives records", async || {
        (sunk(&pipeline) > rate).then_some(())
    })
    .await;
    let pid = pipeline.pid().await.expect("fluentd runs");
    // Steady state, the relay taking everything: the baseline.
    let mut baseline = 0;
    for _ in 0..10 {
        baseline = baseline.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The relay stalls (SIGSTOP: connections open, nothing answers), then is gone (SIGKILL).
    let service_pid = service.child.id().unwrap() as i32;
    let (sunk_before, mut peak) = (sunk(&pipeline), 0);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(service_pid, libc::SIGSTOP) };
    for _ in 0..60 {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sunk_stalled = sunk(&pipeline);
    let mut service = service;
    service.child.kill().await.unwrap();
    for _ in 0..30 {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sunk_gone = sunk(&pipeline);
    assert!(pipeline.running().await, "{}", pipeline.log().await);
    let growth = peak.saturating_sub(baseline);
    // What fluentd produced while the relay did not take it (~270 bytes a record as msgpack,
    // and the padding).
    let produced = (sunk_gone - sunk_before) * (270 + pad as u64);
    eprintln!(
        "MEASURED fluentd RSS baseline {} MiB, peak {} MiB while the relay was stalled then gone \
         (+{} MiB; tap buffer limit 2 MiB; {} MiB of records produced meanwhile)",
        baseline >> 20,
        peak >> 20,
        growth >> 20,
        produced >> 20
    );
    // The flow's own output kept receiving while the relay was stalled and while it was gone.
    assert!(sunk_stalled >= sunk_before + rate, "{sunk_before} → {sunk_stalled}");
    assert!(sunk_gone >= sunk_stalled + rate, "{sunk_stalled} → {sunk_gone}");
    // Held to the tap's buffer (plus Ruby's allocator slack), far from what was produced.
    assert!(produced > 64 << 20, "the outage produced only {produced} bytes");
    assert!(growth < 32 << 20, "fluentd grew by {growth} bytes");

    // The relay comes back and the tap is removed: the flow is restored, fluentd reloads
    // without the tap, and gave up no chunk to its backup directory.
    let service = start_plain(&s, &[]).await;
    taps.delete("web", &Default::default()).await.unwrap();
    eventually("fluentd reloaded without the tap", async || {
        (pipeline.reloads().await >= 1 && !pipeline.config().await.contains("logsocket-")).then_some(())
    })
    .await;
    assert_eq!(s.flow_refs(&client).await, serde_json::json!(["loki"]));
    // The reloaded fluentd (Ruby starts slowly on a busy machine) delivers to the sink too.
    let numbers = |p: &Pipeline| {
        p.sink("loki")
            .iter()
            .filter_map(|r| r["n"].as_u64())
            .collect::<Vec<u64>>()
    };
    eventually_within(
        "the reloaded fluentd's records in the sink",
        Duration::from_secs(90),
        async || (runs(&numbers(&pipeline)).len() == 2).then_some(()),
    )
    .await;
    pipeline.stop().await;
    let log = pipeline.log().await;
    assert_eq!(pipeline.backups(), Vec::<std::path::PathBuf>::new(), "{log}");
    // Every record of every fluentd run reached the flow's own output, once and in order.
    let runs = runs(&numbers(&pipeline));
    assert_eq!(runs.len(), 2, "one run with the tap, one after it went");
    for run in &runs {
        assert!(consecutive(run), "a gap or a repeat in the flow's own output");
    }
    assert!(runs[0].len() as u64 > sunk_gone, "{} {sunk_gone}", runs[0].len());
    service.terminate();
    service.exited_cleanly().await;
}
