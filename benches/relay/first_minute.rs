//! The first minute of a tap (#28), against the real API server, the logging-operator stand-in
//! (a configuration check of 3 s in a check pod), a kubelet stand-in serving the pod's log, and a
//! fluentd stand-in that starts sending 5 s after a check passed (its "reload"): how soon the
//! real k8stail binary prints a pre-flow line and the first flow record, how soon a warm tap's
//! next listener gets records, and how many configuration changes 100 short tap cycles of one
//! flow cause with and without the reload budget.

use super::control_plane::{setup, start_service};
use kube::api::{Api, DynamicObject};
use log_socket::k8s::flowtap::{FlowTap, Stage};
use log_socket::operator::OperatorConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::kubelet::{self, Kubelet};
use testkit::logging_operator::CheckPods;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The stand-in fluentd's reload: it sends this long after a configuration with the tap passed.
const RELOAD: Duration = Duration::from_secs(5);
/// The stand-in logging-operator's check.
const CHECK: Duration = Duration::from_secs(3);
/// The reload budget's interval here (30 s by default; shorter, so the run is short).
const WINDOW: Duration = Duration::from_secs(5);

/// The operator's settings: `linger` and `window` as given, warm taps on or off.
fn operator(linger: Duration, warm: bool, window: Duration) -> Arc<OperatorConfig> {
    Arc::new(OperatorConfig {
        linger,
        session_ttl: Duration::from_secs(6),
        namespace: Some("default".into()),
        warm_max_bytes_per_second: if warm { 64 << 10 } else { 0 },
        warm_linger: Duration::from_secs(600),
        config_change_interval: window,
        ..OperatorConfig::new("bench", "http://log-socket.bench.svc:10000")
    })
}

/// fluentd as seen from the relay: once the flow names a tap output and a configuration check
/// passed after that, it "reloads" ([`RELOAD`]) and then posts a record every 200 ms.
fn fluentd(
    flows: Api<DynamicObject>,
    client: kube::Client,
    ingest: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let loggings = testkit::cluster::loggings(&client);
        let auth = log_socket::auth::ingest_keys::basic_authorization("fluentd", "s3cret");
        let mut since: Option<Instant> = None;
        let mut n = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let named = flows.get("web").await.ok().is_some_and(|f| {
                f.data["spec"]["localOutputRefs"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|o| o.as_str().is_some_and(|o| o.starts_with("logsocket-")))
                })
            });
            if !named {
                since = None;
                continue;
            }
            let checked = loggings.list(&Default::default()).await.ok().is_some_and(|l| {
                l.items.iter().any(|l| {
                    l.data["status"]["configCheckResults"]
                        .as_object()
                        .is_some_and(|r| r.values().any(|v| v == true))
                })
            });
            let Some(at) = since.or_else(|| checked.then(Instant::now)) else {
                continue;
            };
            since = Some(at);
            if at.elapsed() < RELOAD {
                continue;
            }
            n += 1;
            let body = format!(
                r#"[{{"message":"flow record {n}","time":"{}","kubernetes":{{"namespace_name":"default","pod_name":"web-1","container_name":"app"}}}}]"#,
                jiff::Timestamp::now()
            );
            testkit::relay::request(
                ingest,
                "POST",
                "/flow/default/web",
                &[("Authorization", &auth), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
        }
    })
}

/// The real k8stail, following default/web straight at the relay, pod logs read with the
/// kubeconfig; returns when it printed its first pre-flow line and its first flow record.
async fn k8stail(
    api: std::net::SocketAddr,
    token: &str,
    kubeconfig: &std::path::Path,
    preflow: &str,
) -> (Option<Duration>, Duration) {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(testkit::cluster::bin("k8stail"))
        .args(["--server", &format!("http://{api}"), "--token", token, "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--preflow", preflow, "-o", "json", "--tail", "0", "default/web"])
        .env_remove("K8STAIL_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("k8stail runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut first_preflow = None;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
            .await
            .expect("k8stail printed in time")
            .unwrap();
        let Some(line) = line else {
            let mut err = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err).await;
            panic!("k8stail ended: {err}");
        };
        if line.contains("\"preflow\":true") {
            first_preflow.get_or_insert(start.elapsed());
        } else {
            return (first_preflow, start.elapsed());
        }
    }
}

/// Taps of default/web started and ended `cycles` times (a listener for 500 ms, then 200 ms
/// without): flow edits and configurations checked, and how many budget windows that spans.
async fn cycles(b: &super::control_plane::Bench, api: std::net::SocketAddr, cycles: usize) -> (u64, u64, Duration) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let flows = b.flows.clone();
    let version = |f: &DynamicObject| f.metadata.resource_version.clone();
    let edits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let (flows, edits) = (flows.clone(), edits.clone());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                if let Ok(f) = flows.get("web").await {
                    if last.is_some() && last != version(&f) {
                        edits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    last = version(&f);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let checks = b.logging_operator.config_changes();
    let start = Instant::now();
    for _ in 0..cycles {
        let mut req = format!("ws://{api}/flow/default/web").into_client_request().unwrap();
        req.headers_mut()
            .insert("x-authorization", b.admin_token.parse().unwrap());
        req.headers_mut()
            .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
        let ws = tokio_tungstenite::connect_async(req).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(ws);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spent = start.elapsed();
    // Until the last tap is gone and its flow restored.
    no_taps_left(&Api::namespaced(b.client.clone(), "default")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.abort();
    (
        edits.load(std::sync::atomic::Ordering::Relaxed),
        b.logging_operator.config_changes() - checks,
        spent,
    )
}

/// Until every FlowTap is gone (each flow restored first).
async fn no_taps_left(taps: &Api<FlowTap>) {
    while taps
        .list(&Default::default())
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn first_minute_bench() -> Result<(), String> {
    let b = setup("web").await?;
    let kubelet = Kubelet::start().await;
    kubelet.register(&b.client, "bench-node").await;
    kubelet::pod(
        &b.client,
        "default",
        "bench-node",
        "web-1",
        serde_json::json!({"app": "web"}),
        &["app"],
    )
    .await;
    let writer = {
        let logs = Arc::new(kubelet);
        let l = logs.clone();
        (
            logs,
            tokio::spawn(async move {
                for n in 0.. {
                    l.write("default", "web-1", "app", &format!("container line {n}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }),
        )
    };
    {
        let mut behaviour = b.logging_operator.behaviour.lock().unwrap();
        behaviour.check_delay = CHECK;
        behaviour.check_pods = CheckPods::Schedulable;
    }

    // 1–3: pre-flow, first flow record, warm re-attach (warm taps and the budget on; a linger
    // of 10 s, in which the tap's first records and cost are reported: the default is 60 s).
    let (api, ingest, stop) = start_service(
        b.service_client.clone(),
        operator(Duration::from_secs(10), true, WINDOW),
    )
    .await;
    let sender = fluentd(b.flows.clone(), b.client.clone(), ingest);
    let (preflow, first_record) = k8stail(api, &b.admin_token, &b.cp.kubeconfig, "always").await;
    let taps: Api<FlowTap> = Api::namespaced(b.client.clone(), "default");
    let warm_wait = Instant::now();
    loop {
        let stage = taps
            .get_opt("flow-web")
            .await
            .ok()
            .flatten()
            .and_then(|t| t.status?.stage);
        if stage.is_some_and(|s| s.name == Stage::Warm) {
            break;
        }
        if warm_wait.elapsed() > Duration::from_secs(120) {
            return Err("the tap never became Warm".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let version = b
        .flows
        .get("web")
        .await
        .map_err(|e| e.to_string())?
        .metadata
        .resource_version;
    let (_, warm_record) = k8stail(api, &b.admin_token, &b.cp.kubeconfig, "never").await;
    let untouched = b
        .flows
        .get("web")
        .await
        .map_err(|e| e.to_string())?
        .metadata
        .resource_version
        == version;
    sender.abort();
    taps.delete_collection(&Default::default(), &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    no_taps_left(&taps).await;
    stop.cancel();
    writer.1.abort();

    // 4: 100 short tap cycles of one flow: today's behaviour, then with the budget.
    b.logging_operator.behaviour.lock().unwrap().check_delay = Duration::ZERO;
    b.logging_operator.behaviour.lock().unwrap().check_pods = CheckPods::None;
    let mut rows = vec![];
    for (what, window) in [
        ("no budget (before #28)", Duration::ZERO),
        ("budget, 5 s windows", WINDOW),
    ] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (api, _, stop) = start_service(b.service_client.clone(), operator(Duration::ZERO, false, window)).await;
        let (edits, checks, spent) = cycles(&b, api, 100).await;
        stop.cancel();
        let windows = match window.is_zero() {
            true => "-".to_owned(),
            false => (spent.as_secs_f64() / window.as_secs_f64()).ceil().to_string(),
        };
        rows.push(format!(
            "| {what} | {:.0} s | {edits} | {checks} | {windows} |",
            spent.as_secs_f64()
        ));
    }
    testkit::control_plane::teardown();

    println!("| first minute (stand-ins: check {CHECK:?} in a pod, fluentd reload {RELOAD:?}) | figure | target |\n|---|---|---|");
    match preflow {
        Some(p) => println!(
            "| k8stail start → first pre-flow line (kubelet stand-in, through the API server) | {:.2} s | ≤ 2 s |",
            p.as_secs_f64()
        ),
        None => println!("| k8stail start → first pre-flow line | none | ≤ 2 s |"),
    }
    println!(
        "| k8stail start → first flow record (validation, check, reload, flush) | {:.1} s | reported |",
        first_record.as_secs_f64()
    );
    println!(
        "| warm tap: k8stail start → first flow record | {:.2} s (Flow edited: {}) | ≤ 1 s, no edit |",
        warm_record.as_secs_f64(),
        if untouched { "no" } else { "yes" }
    );
    println!("\n| 100 tap cycles of one flow (listener 500 ms, then 200 ms without; linger 0, no warm taps) | took | flow edits | configurations checked | budget windows spanned |\n|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    Ok(())
}
