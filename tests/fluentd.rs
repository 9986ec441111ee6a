//! The relay against the real fluentd `out_http`, configured as the generated Output renders.
//! Skipped (and says so) without a fluentd; see tests/support/fluentd.rs for where it comes
//! from. No timing assertions: waits are upper bounds on hangs.

#[path = "support/wire.rs"]
#[allow(dead_code)]
mod wire;

#[path = "support/fluentd.rs"]
#[allow(dead_code)]
mod fluentd;

use fluentd::Fluentd;
use log_socket::auth::{AllowAll, StaticTokens};
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::*;

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
  @type http
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
</match>
"#,
        system = fluentd::system(dir)
    )
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
    let start = Instant::now();
    while seen.len() < 60 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {seen:?}; fluentd's log:\n{}",
            f.log()
        );
        assert!(f.running(), "fluentd exited; its log:\n{}", f.log());
        let frame = next(&mut ws).await;
        if frame["type"] == "record" {
            assert_eq!(frame["record"]["message"], "hello from fluentd");
            assert_eq!(frame["record"]["kubernetes"]["pod_name"], "web-1");
            seen.push(frame["record"]["n"].as_u64().expect("the sample's counter"));
        }
    }
    // Records posted before the listener attached were discarded; from the first one it got,
    // every record arrives once and in order.
    let first = seen[0];
    assert_eq!(seen, (first..first + 60).collect::<Vec<_>>());
    f.stop(Duration::from_secs(10)).await;
    assert!(f.backups().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
