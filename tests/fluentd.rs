//! The relay against the real fluentd `out_http`, configured as the generated Output renders.
//! Skipped (and says so) without a fluentd; see testkit/src/fluentd.rs for where it comes
//! from. No timing assertions (waits are upper bounds on hangs) but the one that is the
//! feature: how many records a second a listener with `rate` gets of fluentd's batches.

use fluentd::Fluentd;
use log_socket::auth::{AllowAll, StaticTokens};
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::relay::*;
use testkit::{fluentd, render};

fn relay_parts() -> Parts {
    Parts {
        authenticator: Arc::new(StaticTokens::parse("tok-alice,alice\n").unwrap()),
        authorizer: Arc::new(AllowAll),
        sessions: Arc::new(NoSessions),
        ingest_auth: ingest_auth(),
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("log-socket-{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// fluentd with a `sample` source (numbered records, 20 a second) and the http output the
/// operator generates for a Flow tap, pointed at `ingest` and `path`.
fn config(dir: &std::path::Path, ingest: SocketAddr, path: &str) -> String {
    let output = format!(
        r#"  @type http
  @id tap
  endpoint http://{ingest}{path}
  json_array true
  open_timeout 5
  read_timeout 10
  retryable_response_codes [429,502,503,504]
  <format>
    @type json
    add_newline false
  </format>
  <auth>
    method basic
    username fluentd
    password s3cret
  </auth>
  <buffer []>
    @type memory
    flush_mode interval
    flush_interval 1s
    chunk_limit_size 1m
    total_limit_size 8m
    overflow_action drop_oldest_chunk
    retry_forever false
    retry_max_times 5
  </buffer>
"#
    );
    config_with_output(dir, &output)
}

/// The next record frame on `ws` while fluentd runs (panics with fluentd's log if it exits or
/// nothing comes before `deadline`).
async fn next_record(f: &mut Fluentd, ws: &mut Ws, deadline: Instant) -> serde_json::Value {
    loop {
        assert!(
            Instant::now() < deadline,
            "no record in time; fluentd's log:\n{}",
            f.log()
        );
        assert!(f.running(), "fluentd exited; its log:\n{}", f.log());
        let frame = next(ws).await;
        if frame["type"] == "record" {
            return frame;
        }
    }
}

async fn until<T>(what: &str, f: &mut Fluentd, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(v) = check() {
            return v;
        }
        assert!(f.running(), "fluentd exited; its log:\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; fluentd's log:\n{}", f.log());
}

#[tokio::test]
async fn a_path_nobody_listens_to_is_accepted_so_fluentd_neither_retries_nor_backs_up() {
    let r = start_relay(RelayConfig::default(), relay_parts()).await;
    let dir = tempdir("fluentd-no-tap");
    let Some(mut f) = Fluentd::start(&dir, &config(&dir, r.ingest, "/flow/shop/nobody")) else {
        return;
    };
    let discarded = || {
        let text = r.relay.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(r#"log_socket_dropped_records_total{reason="no_tap"} "#))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    // Several flushes' worth of records arrive and are discarded.
    until("discarded records", &mut f, || discarded().filter(|n| *n >= 40)).await;
    f.stop(Duration::from_secs(10)).await;
    assert_eq!(
        f.backups(),
        Vec::<std::path::PathBuf>::new(),
        "fluentd backed up chunks"
    );
    let log = f.log();
    assert!(!log.contains("got unrecoverable error"), "{log}");
    assert!(!log.contains("failed to flush the buffer"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn records_from_the_real_fluentd_reach_a_listener_in_order_without_gaps() {
    let r = start_relay(RelayConfig::default(), relay_parts()).await;
    let dir = tempdir("fluentd-listener");
    let Some(mut f) = Fluentd::start(&dir, &config(&dir, r.ingest, "/flow/shop/web")) else {
        return;
    };
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    let mut seen: Vec<u64> = vec![];
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 60 {
        let frame = next_record(&mut f, &mut ws, deadline).await;
        assert_eq!(frame["record"]["message"], "hello from fluentd");
        assert_eq!(frame["record"]["kubernetes"]["pod_name"], "web-1");
        seen.push(frame["record"]["n"].as_u64().expect("the sample's counter"));
    }
    // Records posted before the listener attached were discarded; from the first one it got,
    // every record arrives once and in order.
    let first = seen[0];
    assert_eq!(seen, (first..first + 60).collect::<Vec<_>>());
    f.stop(Duration::from_secs(10)).await;
    assert!(f.backups().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// fluentd with the `sample` source of [`config`] and, as its output, `output` (a `<match>`
/// body as logging-operator renders it).
fn config_with_output(dir: &std::path::Path, output: &str) -> String {
    format!(
        r#"{system}
<source>
  @type sample
  tag kubernetes.var.log.containers.web-1_shop_app.log
  rate 20
  auto_increment_key n
  sample {{"message":"hello from fluentd","kubernetes":{{"namespace_name":"shop","pod_name":"web-1","container_name":"app"}}}}
</source>
<match kubernetes.**>
{output}</match>
"#,
        system = fluentd::system(dir)
    )
}

/// The Output the operator generates for a tap on Flow shop/web, with per-flow credentials.
fn generated_output(ingest: SocketAddr) -> serde_json::Value {
    generated(&format!("http://{ingest}"), "Flow", None)
}

/// The spec the operator generates for a tap on `kind` shop/web posting to `ingest_url`, with
/// per-flow credentials, and with `tls_secret`'s client certificate when given.
fn generated(ingest_url: &str, kind: &str, tls_secret: Option<&str>) -> serde_json::Value {
    generated_in(ingest_url, kind, tls_secret, None, None)
}

/// [`generated`] for a tap in `mode` (`Patch` by default) of a flow of Logging `logging_ref`.
fn generated_in(
    ingest_url: &str,
    kind: &str,
    tls_secret: Option<&str>,
    mode: Option<&str>,
    logging_ref: Option<&str>,
) -> serde_json::Value {
    render::generated_output_spec(ingest_url, Some(test_keys()), kind, tls_secret, mode, logging_ref)
}

fn per_flow_parts() -> Parts {
    Parts {
        ingest_auth: log_socket::auth::IngestAuth::per_flow(test_keys()),
        ..relay_parts()
    }
}

#[tokio::test]
async fn the_generated_output_rendered_as_logging_operator_does_posts_into_its_own_flow() {
    let r = start_relay(RelayConfig::default(), per_flow_parts()).await;
    let spec = generated_output(r.ingest);
    assert_eq!(spec["http"]["auth"]["username"]["value"], "flow/shop/web", "{spec}");
    let dir = tempdir("fluentd-generated");
    let output = render::http_output(&spec, "flow:shop:web:output:shop:logsocket-flow-web");
    let Some(mut f) = Fluentd::start(&dir, &config_with_output(&dir, &output)) else {
        return;
    };
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    let frame = next_record(&mut f, &mut ws, Instant::now() + Duration::from_secs(60)).await;
    assert_eq!(frame["record"]["message"], "hello from fluentd");
    f.stop(Duration::from_secs(10)).await;
    let log = f.log();
    assert!(!log.contains("got unrecoverable error"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_tenant_output_reusing_its_credential_for_another_flow_is_refused_and_delivers_nothing() {
    let r = start_relay(RelayConfig::default(), per_flow_parts()).await;
    // The tenant of shop copies its generated Output and points it at another team's flow and
    // at a ClusterFlow the SREs read.
    let mut ws_other = connect(&r, "/flow/payments/ledger", "tok-alice").await;
    let mut ws_cluster = connect(&r, "/clusterflow/logging/all-errors", "tok-alice").await;
    let mut outputs = String::new();
    for (i, path) in ["/flow/payments/ledger", "/clusterflow/logging/all-errors"]
        .iter()
        .enumerate()
    {
        let mut spec = generated_output(r.ingest);
        spec["http"]["endpoint"] = format!("http://{}{path}", r.ingest).into();
        let rendered = render::http_output(&spec, &format!("forged-{i}"));
        outputs.push_str(&format!("  <store>\n{rendered}  </store>\n"));
    }
    let dir = tempdir("fluentd-forged");
    let output = format!("  @type copy\n{outputs}");
    let Some(mut f) = Fluentd::start(&dir, &config_with_output(&dir, &output)) else {
        return;
    };
    let refused = || {
        let text = r.relay.metrics.encode();
        text.lines()
            .find(|l| l.contains("ingest_wrong_path"))
            .and_then(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
    };
    until("refused posts", &mut f, || refused().filter(|n| *n >= 4)).await;
    f.stop(Duration::from_secs(10)).await;
    // fluentd was told no (403: not retried), and neither stream got anything but its greeting.
    assert!(f.log().contains("403"), "{}", f.log());
    for ws in [&mut ws_other, &mut ws_cluster] {
        while let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), next(ws)).await {
            assert_ne!(frame["type"], "record", "a forged record was delivered: {frame}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_generated_output_shape_rendered_as_logging_operator_does_passes_fluentd_dry_run() {
    let dir = tempdir("fluentd-dry-run");
    // mTLS: the client certificate `log-socket certs` makes, mounted as logging-operator mounts
    // `mountFrom` Secrets (a file per key).
    let certs = dir.join("certs");
    log_socket::service::certs::generate(&certs, &["log-socket.log-socket.svc".into()], 30).unwrap();
    let secret_dir = dir.join("secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let mount = |name: &str, key: &str| -> String {
        let from = match key {
            "ca.crt" => "ca.crt",
            "tls.crt" => "client.crt",
            "tls.key" => "client.key",
            other => panic!("unexpected key {other}"),
        };
        let path = secret_dir.join(format!("shop-{name}-{key}"));
        std::fs::copy(certs.join(from), &path).unwrap();
        path.display().to_string()
    };
    let shapes = [
        (
            "Flow, per-flow credential",
            generated("http://log-socket.log-socket.svc:10000", "Flow", None),
        ),
        (
            "ClusterFlow (a ClusterOutput), per-flow credential",
            generated("http://log-socket.log-socket.svc:10000", "ClusterFlow", None),
        ),
        (
            "Mirror mode, for a flow of another Logging (loggingRef)",
            generated_in(
                "http://log-socket.log-socket.svc:10000",
                "Flow",
                None,
                Some("Mirror"),
                Some("tenant-logging"),
            ),
        ),
        (
            "Flow over mTLS, with the per-flow credential on top",
            generated(
                "https://log-socket.log-socket.svc:10000",
                "Flow",
                Some("log-socket-ingest-client"),
            ),
        ),
    ];
    // loggingRef picks the Logging that renders the output; it is not fluentd configuration.
    assert_eq!(shapes[2].1["loggingRef"], "tenant-logging", "{}", shapes[2].1);
    for (what, spec) in &shapes {
        let tap = render::http_output_with(spec, "flow:shop:web:output:shop:logsocket-flow-web", &mount);
        // As logging-operator renders a Flow with the user's output and the tap appended: a
        // `copy` with a store each, the tap last.
        let output = format!("  @type copy\n  <store>\n    @type null\n  </store>\n  <store>\n{tap}  </store>\n");
        match fluentd::Fluentd::dry_run(&dir, &config_with_output(&dir, &output)) {
            None => return,
            Some(Ok(())) => {}
            Some(Err(log)) => panic!("{what}: fluentd refused the rendered output:\n{output}\n{log}"),
        }
    }
    // The check can fail: a certificate Secret logging-operator could not mount (the file is
    // missing) is refused, as out_http refuses it when fluentd starts.
    let missing = |name: &str, key: &str| secret_dir.join(format!("missing-{name}-{key}")).display().to_string();
    let output = render::http_output_with(&shapes[3].1, "broken", &missing);
    let refused = fluentd::Fluentd::dry_run(&dir, &config_with_output(&dir, &output)).unwrap();
    assert!(
        refused.is_err(),
        "fluentd --dry-run accepted missing certificate files:\n{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The logging-operator stand-in's render of a whole Logging (testkit/src/logging_model.rs), as
/// the safety tests have the real fluentd check it after every change.
fn rendered_logging(dir: &std::path::Path, mount: &dyn Fn(&str, &str, &str) -> String) -> String {
    use testkit::logging_model::{render, Judging, Scope, World};
    let object = |kind: &str, name: &str, spec: serde_json::Value| -> kube::api::DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": kind,
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec,
        }))
        .unwrap()
    };
    let tap = generated(
        "https://log-socket.log-socket.svc:10000",
        "Flow",
        Some("log-socket-ingest-client"),
    );
    let world = World {
        flows: vec![
            object(
                "Flow",
                "web",
                serde_json::json!({"localOutputRefs": ["loki", "logsocket-web"]}),
            ),
            object("Flow", "api", serde_json::json!({"localOutputRefs": ["loki"]})),
        ],
        outputs: vec![object("Output", "logsocket-web", tap)],
        ..Default::default()
    };
    let scope = Scope {
        logging: "all".into(),
        logging_ref: String::new(),
        control_namespace: "logging".into(),
        watch_namespaces: vec!["shop".into()],
        all_namespaces: false,
        skip_invalid: false,
    };
    let judging = Judging {
        external: ["loki".to_owned()].into(),
        ..Default::default()
    };
    let rendered = render(&scope, &world, &judging, mount);
    format!("{}{}", fluentd::system(dir), rendered.fluentd.expect("rendered"))
}

#[tokio::test]
async fn the_stand_ins_render_of_a_whole_logging_passes_the_real_fluentd_and_a_broken_one_does_not() {
    let dir = tempdir("fluentd-logging");
    let certs = dir.join("certs");
    log_socket::service::certs::generate(&certs, &["log-socket.log-socket.svc".into()], 30).unwrap();
    let mounted = |_ns: &str, _secret: &str, key: &str| -> String {
        let from = match key {
            "ca.crt" => "ca.crt",
            "tls.crt" => "client.crt",
            _ => "client.key",
        };
        certs.join(from).display().to_string()
    };
    let config = rendered_logging(&dir, &mounted);
    assert!(
        config.contains("@type relabel") && config.contains("@type http"),
        "{config}"
    );
    match fluentd::Fluentd::dry_run(&dir, &config) {
        None => return,
        Some(Ok(())) => {}
        Some(Err(log)) => panic!("fluentd refused the stand-in's render:\n{config}\n{log}"),
    }
    // A Secret logging-operator could not mount: fluentd refuses the configuration, so the
    // stand-in counts it as a failed render.
    let missing = |ns: &str, secret: &str, key: &str| dir.join(format!("{ns}-{secret}-{key}")).display().to_string();
    let broken = rendered_logging(&dir, &missing);
    assert!(
        fluentd::Fluentd::dry_run(&dir, &broken).unwrap().is_err(),
        "fluentd --dry-run accepted missing certificate files:\n{broken}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sub_second_flush_interval_reaches_fluentd_as_the_half_second_meant() {
    use log_socket::k8s::flowtap::FlowTap;
    use log_socket::operator::{desired_output_spec, OperatorConfig};
    let r = start_relay(RelayConfig::default(), per_flow_parts()).await;
    let tap: FlowTap = serde_json::from_value(serde_json::json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": "flow-web", "namespace": "shop"},
        "spec": {"flowRef": {"kind": "Flow", "name": "web"}, "buffer": {"flushInterval": "500ms"}},
    }))
    .unwrap();
    let config = OperatorConfig {
        ingest_keys: Some(test_keys()),
        ..OperatorConfig::new("test", &format!("http://{}", r.ingest))
    };
    let spec = desired_output_spec(&tap, &config, None);
    let output = render::http_output(&spec, "flow:shop:web:output:shop:logsocket-flow-web");
    assert!(output.contains("flush_interval 0.5\n"), "{output}");
    let dir = tempdir("fluentd-flush");
    let Some(mut f) = Fluentd::start(&dir, &config_with_output(&dir, &output)) else {
        return;
    };
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    // fluentd read `500ms` as 500 minutes: with 1 MiB chunks filling at a few KiB a second,
    // nothing would come for minutes. Half a second means records within a few seconds of
    // fluentd's start (Ruby starts slowly on a busy machine: 30 s of room).
    let frame = next_record(&mut f, &mut ws, Instant::now() + Duration::from_secs(30)).await;
    assert_eq!(frame["record"]["message"], "hello from fluentd");
    f.stop(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_listener_at_rate_20_gets_about_20_a_second_of_the_batches_the_real_fluentd_posts_once_a_second() {
    let r = start_relay(RelayConfig::default(), relay_parts()).await;
    let dir = tempdir("fluentd-rate");
    // 200 records a second, flushed once a second: one batch of about 200 a second.
    let config = config(&dir, r.ingest, "/flow/shop/web").replace("  rate 20\n", "  rate 200\n");
    assert!(config.contains("rate 200"), "{config}");
    let Some(mut f) = Fluentd::start(&dir, &config) else {
        return;
    };
    let mut ws = connect(&r, "/flow/shop/web?rate=20", "tok-alice").await;
    let start = Instant::now();
    let (mut per_second, mut left_out) = (std::collections::BTreeMap::<u64, u64>::new(), 0u64);
    while start.elapsed() < Duration::from_secs(8) {
        assert!(f.running(), "fluentd exited; its log:\n{}", f.log());
        let frame = next(&mut ws).await;
        match (frame["type"].as_str(), frame["reason"].as_str()) {
            (Some("record"), _) => {
                assert_eq!(frame["record"]["message"], "hello from fluentd");
                *per_second.entry(start.elapsed().as_secs()).or_default() += 1;
            }
            (Some("dropped"), Some("sampled")) => {
                left_out += frame["count"].as_u64().unwrap();
                assert_eq!(frame["pods"]["shop/web-1"], frame["count"], "{frame}");
            }
            _ => {}
        }
    }
    // After the first seconds (fluentd's first flush, the rate's credit building): about 20
    // a second, although each second's records came in one batch, and the rest accounted.
    let steady: u64 = (3..7).map(|s| per_second.get(&s).copied().unwrap_or(0)).sum();
    assert!((64..=96).contains(&steady), "{steady} in 4 s: {per_second:?}");
    assert!(left_out > 4 * steady, "{left_out} left out");
    f.stop(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
