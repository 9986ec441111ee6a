//! The `nats` bus against a real NATS server with JetStream (Debian's nats-server): several
//! relays share one NATS, listeners resume on any relay and across restarts, and NATS going
//! away is a 503 and a status frame, not silence. Skipped, and says so, without nats-server
//! (see testkit/src/nats.rs). No timing assertions: waits are upper bounds on hangs.

use log_socket::auth::{AllowAll, StaticTokens};
use log_socket::relay::bus::nats::{NatsBus, NatsOptions};
use log_socket::relay::bus::Bus;
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, Relay, RelayConfig};
use log_socket::service::Service;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use testkit::nats::Nats;
use testkit::poll::{eventually_within, free_port};
use testkit::relay::*;
use testkit::{fluentd, render};

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bus-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A relay (standalone parts: token `tok-alice`, basic ingest auth) on the nats bus at `url`.
async fn relay(url: &str) -> TestRelay {
    relay_with(url, RelayConfig::default()).await
}

async fn relay_with(url: &str, config: RelayConfig) -> TestRelay {
    relay_authorizing(url, config, Arc::new(AllowAll)).await
}

async fn relay_authorizing(
    url: &str,
    config: RelayConfig,
    authorizer: Arc<dyn log_socket::auth::Authorizer>,
) -> TestRelay {
    let mut relay = Relay::new(config);
    let options = NatsOptions {
        url: url.to_owned(),
        max_age: Duration::from_secs(3600),
        keys: Some(testkit::nats::bus_keys()),
        ..Default::default()
    };
    // The bus's timing into the relay's registry, as the service wires it.
    let counters = log_socket::relay::bus::nats::BusCounters {
        timing: relay.metrics.bus.clone(),
        ..Default::default()
    };
    let bus = NatsBus::connect(&options, relay.config.replay, counters).await.unwrap();
    relay.bus = Bus::Nats(Arc::new(bus));
    let parts = Parts {
        authenticator: Arc::new(StaticTokens::parse("tok-alice,alice\ntok-bob,bob\n").unwrap()),
        authorizer,
        sessions: Arc::new(NoSessions),
        ingest_auth: ingest_auth(),
    };
    start_service_on(loopback_sockets().await, Service::with_relay(relay, parts))
}

/// Post `n` numbered records (`message` = `{prefix} {i}`) as one batch; the status.
async fn post_batch(r: &TestRelay, prefix: &str, from: usize, n: usize) -> u16 {
    let records: Vec<Value> = (from..from + n)
        .map(|i| record("web-1", &format!("{prefix} {i}")))
        .collect();
    post(r, "/flow/shop/web", &array(&records)).await.0
}

/// The next `n` record frames on `ws` (other frames skipped, `dropped` ones refused).
async fn records(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = vec![];
    while out.len() < n {
        let f = tokio::time::timeout(WAIT, next(ws)).await.expect("records in time");
        match f["type"].as_str() {
            Some("record") => out.push(f),
            Some("dropped") => panic!("a gap: {f}"),
            _ => {}
        }
    }
    out
}

fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["record"]["message"].as_str().unwrap().to_owned())
        .collect()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

fn increasing(frames: &[Value]) -> bool {
    frames
        .windows(2)
        .all(|w| w[0]["seq"].as_u64().unwrap() < w[1]["seq"].as_u64().unwrap())
}

#[tokio::test]
async fn a_listener_on_one_relay_gets_every_record_ingested_at_the_others_in_order() {
    let dir = tempdir("fanout");
    let Some(server) = Nats::start(&dir) else { return };
    let (a, b, c) = (
        relay(&server.url()).await,
        relay(&server.url()).await,
        relay(&server.url()).await,
    );
    let mut ws = connect(&b, "/flow/shop/web", "tok-alice").await;
    // Batches alternate between relays A and C, as a Service spreads fluentd's requests.
    for i in 0..20 {
        let r = if i % 2 == 0 { &a } else { &c };
        assert_eq!(post_batch(r, "m", i * 50, 50).await, 200);
    }
    let got = records(&mut ws, 1000).await;
    assert_eq!(texts(&got), numbered("m", 0..1000));
    assert!(increasing(&got));
    // Nothing more: no duplicate.
    assert!(tokio::time::timeout(Duration::from_millis(500), next(&mut ws))
        .await
        .is_err());
    // Timed in each relay's metrics: A's and C's publishes (10 batches each), B's follower.
    let count = |r: &TestRelay, family: &str| -> u64 {
        let exposition = r.relay.metrics.encode();
        let line = exposition
            .lines()
            .find(|l| l.starts_with(&format!("{family}_count ")))
            .unwrap_or_else(|| panic!("{family} in {exposition}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(count(&a, "log_socket_bus_publish_duration_seconds"), 10);
    assert_eq!(count(&c, "log_socket_bus_publish_duration_seconds"), 10);
    assert_eq!(count(&b, "log_socket_bus_follower_lag_seconds"), 20, "one per message");
}

#[tokio::test]
async fn fifty_listeners_on_one_relay_share_one_consumer_of_the_stream() {
    let dir = tempdir("consumers");
    let Some(server) = Nats::start(&dir) else { return };
    let many = RelayConfig {
        max_listeners_per_user: 100,
        ..RelayConfig::default()
    };
    let (a, b) = (relay(&server.url()).await, relay_with(&server.url(), many).await);
    let mut listeners = vec![];
    for _ in 0..50 {
        listeners.push(connect(&b, "/flow/shop/web", "tok-alice").await);
    }
    assert_eq!(post_batch(&a, "m", 0, 10).await, 200);
    for ws in &mut listeners {
        assert_eq!(texts(&records(ws, 10).await), numbered("m", 0..10));
    }
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("LOGSOCKET_flow_shop_web").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.consumer_count, 1);
}

#[tokio::test]
async fn a_listener_resumes_exactly_on_another_relay_and_after_every_relay_restarts() {
    let dir = tempdir("resume");
    let Some(server) = Nats::start(&dir) else { return };
    let (a, b) = (relay(&server.url()).await, relay(&server.url()).await);
    let mut ws = connect(&a, "/flow/shop/web", "tok-alice").await;
    assert_eq!(post_batch(&b, "m", 0, 100).await, 200);
    let got = records(&mut ws, 100).await;
    let (last, epoch) = (got[99]["seq"].as_u64().unwrap(), ws_epoch(&a).await);
    drop(ws);
    // Records arrive while the listener is away; it comes back on the other relay.
    assert_eq!(post_batch(&a, "m", 100, 100).await, 200);
    let resume = format!("/flow/shop/web?after={last}&epoch={epoch}");
    let (mut ws, status) = try_connect(&b, &resume, "tok-alice").await.unwrap();
    assert_eq!(status["epoch"].as_u64(), Some(epoch), "{status}");
    let got = records(&mut ws, 100).await;
    assert_eq!(texts(&got), numbered("m", 100..200));
    let last = got[99]["seq"].as_u64().unwrap();
    drop(ws);

    // Every relay stops; records arrive at a new one; the listener resumes at another new one.
    drop((a, b));
    let c = relay(&server.url()).await;
    let mut ws_c = connect(&c, "/flow/shop/web", "tok-alice").await;
    assert_eq!(post_batch(&c, "m", 200, 100).await, 200);
    records(&mut ws_c, 100).await;
    let d = relay(&server.url()).await;
    let (mut ws, status) = try_connect(&d, &format!("/flow/shop/web?after={last}&epoch={epoch}"), "tok-alice")
        .await
        .unwrap();
    assert_eq!(status["epoch"].as_u64(), Some(epoch), "no tap_restarted: {status}");
    assert_eq!(texts(&records(&mut ws, 100).await), numbered("m", 200..300));
}

/// The next `bus` status frame (other frames skipped; the listener is otherwise idle).
async fn bus_status(ws: &mut Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match tokio::time::timeout(Duration::from_secs(1), next_any_quiet(ws)).await {
                Ok(f) if f["state"] == "bus" => return f,
                _ => {}
            }
        }
    })
    .await
    .expect("a bus status frame")
}

/// The next frame, without [`next_any`]'s deadline.
async fn next_any_quiet(ws: &mut Ws) -> Value {
    use futures::StreamExt;
    loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).unwrap()
            }
            Some(Ok(_)) => {}
            other => panic!("the listener ended: {other:?}"),
        }
    }
}

/// The epoch a fresh listener on `r` reads (the tap's, which is the stream's).
async fn ws_epoch(r: &TestRelay) -> u64 {
    let (_, status) = try_connect(r, "/flow/shop/web", "tok-alice").await.unwrap();
    status["epoch"].as_u64().unwrap()
}

#[tokio::test]
async fn nats_going_away_is_a_503_and_a_status_frame_and_both_recover_without_a_relay_restart() {
    let dir = tempdir("down");
    let Some(mut server) = Nats::start(&dir) else { return };
    let (a, b) = (relay(&server.url()).await, relay(&server.url()).await);
    let mut ws = connect(&b, "/flow/shop/web", "tok-alice").await;
    assert_eq!(post_batch(&a, "m", 0, 10).await, 200);
    let before = records(&mut ws, 10).await;
    let (last, epoch) = (before[9]["seq"].as_u64().unwrap(), ws_epoch(&b).await);

    server.stop();
    // The listener is told why nothing comes.
    let down = bus_status(&mut ws).await;
    assert_eq!(down["up"], false, "{down}");
    // fluentd is told to retry, and the batch is not kept to be sent later (its retry would
    // then deliver it twice).
    let (code, body) = post(&a, "/flow/shop/web", &array(&[record("web-1", "refused")])).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("bus is unavailable"), "{body}");

    // NATS comes back with its store: ingest works again, the listener gets what follows,
    // numbered on from where it was (same stream).
    server.restart();
    assert_eq!(bus_status(&mut ws).await["up"], true);
    eventually_within("ingest to recover", Duration::from_secs(60), || async {
        (post_batch(&a, "m", 10, 1).await == 200).then_some(())
    })
    .await;
    let got = records(&mut ws, 1).await;
    assert_eq!(texts(&got), ["m 10"]);
    assert!(got[0]["seq"].as_u64().unwrap() > last);
    assert_eq!(ws_epoch(&b).await, epoch, "the same stream after the NATS restart");
}

/// `log-socket run --standalone --bus nats` as its own process (token `tok-alice`, ingest
/// `fluentd:s3cret`), ready.
struct RelayProcess {
    service: testkit::relay::Service,
    ingest: std::net::SocketAddr,
    api: std::net::SocketAddr,
}

async fn relay_process(url: &str, dir: &std::path::Path) -> RelayProcess {
    relay_process_with(url, dir, &[]).await
}

async fn relay_process_with(url: &str, dir: &std::path::Path, extra: &[&str]) -> RelayProcess {
    let tokens = dir.join("tokens.csv");
    let creds = dir.join("ingest.txt");
    let bus_key = dir.join("bus-keys");
    std::fs::write(&tokens, "tok-alice,alice\n").unwrap();
    std::fs::write(&creds, "fluentd:s3cret\n").unwrap();
    std::fs::write(&bus_key, format!("{}\n", testkit::nats::TEST_BUS_KEY)).unwrap();
    let port = || std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (ingest, api, health) = (port(), port(), port());
    let service = testkit::relay::Service::spawn(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_log-socket"))
            .args(["run", "--standalone", "--bus", "nats", "--nats-url", url])
            .arg("--token-file")
            .arg(&tokens)
            .arg("--ingest-credentials")
            .arg(&creds)
            .arg("--bus-key-file")
            .arg(&bus_key)
            .args(["--ingest-addr", &ingest.to_string()])
            .args(["--api-addr", &api.to_string()])
            .args(["--health-addr", &health.to_string()])
            .args(extra)
            .env_remove("RUST_LOG"),
    );
    service.wait_ready(health).await;
    RelayProcess { service, ingest, api }
}

async fn post_to(ingest: std::net::SocketAddr, from: usize, n: usize) -> u16 {
    let records: Vec<Value> = (from..from + n).map(|i| record("web-1", &format!("m {i}"))).collect();
    request(
        ingest,
        "POST",
        "/flow/shop/web",
        &[("Authorization", INGEST_AUTH), ("Content-Type", "application/json")],
        array(&records).as_bytes(),
    )
    .await
    .0
}

/// Record frames until the connection ends or `quiet` passes without one.
async fn records_until_gone(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    use futures::StreamExt;
    let mut out = vec![];
    loop {
        match tokio::time::timeout(quiet, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let f: Value = serde_json::from_str(t.as_str()).unwrap();
                if f["type"] == "record" {
                    out.push(f);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => return out,
        }
    }
}

#[tokio::test]
async fn a_killed_relay_costs_no_record_the_stream_kept_and_its_listener_resumes_on_another() {
    let dir = tempdir("kill");
    let Some(server) = Nats::start(&dir.join("nats")) else {
        return;
    };
    let a = relay_process(&server.url(), &dir).await;
    let b = relay_process(&server.url(), &dir).await;
    let (mut on_a, status) = try_connect_at(a.api, "/flow/shop/web", "tok-alice").await.unwrap();
    let epoch = status["epoch"].as_u64().unwrap();
    let (mut on_b, _) = try_connect_at(b.api, "/flow/shop/web", "tok-alice").await.unwrap();
    // A sender posts to relay A, as a Service spreads fluentd's requests...
    for i in 0..30 {
        assert_eq!(post_to(a.ingest, i * 10, 10).await, 200);
    }
    let seen_on_a = records(&mut on_a, 300).await;
    // ... A is killed (no goodbye to anyone), and the sender's next requests reach B.
    let mut a = a;
    a.service.child.kill().await.unwrap();
    for i in 30..60 {
        assert_eq!(post_to(b.ingest, i * 10, 10).await, 200);
    }
    // The listener on B missed nothing: every record, once, in order.
    let all = records(&mut on_b, 600).await;
    assert_eq!(texts(&all), numbered("m", 0..600));
    assert!(increasing(&all));
    // The listener that was on A: its connection is gone; it resumes on B after its last record.
    let rest_on_a = records_until_gone(&mut on_a, Duration::from_secs(5)).await;
    let last = rest_on_a.last().unwrap_or(&seen_on_a[299])["seq"].as_u64().unwrap();
    let (mut resumed, status) = try_connect_at(
        b.api,
        &format!("/flow/shop/web?after={last}&epoch={epoch}"),
        "tok-alice",
    )
    .await
    .unwrap();
    assert_eq!(status["epoch"].as_u64(), Some(epoch), "{status}");
    let before = seen_on_a.len() + rest_on_a.len();
    let after = records(&mut resumed, 600 - before).await;
    let mut whole = texts(&seen_on_a);
    whole.extend(texts(&rest_on_a));
    whole.extend(texts(&after));
    assert_eq!(whole, numbered("m", 0..600), "nothing lost, nothing twice");
    b.service.terminate();
    b.service.exited_cleanly().await;
}

#[tokio::test]
async fn a_batch_larger_than_the_nats_max_payload_is_stored_whole_and_delivered_in_order() {
    let dir = tempdir("large");
    let Some(server) = Nats::start(&dir) else { return };
    let (a, b) = (relay(&server.url()).await, relay(&server.url()).await);
    let mut ws = connect(&b, "/flow/shop/web", "tok-alice").await;
    // About 3 MB, as a 1 MiB fluentd chunk grows when written as JSON: NATS takes 1 MiB a message.
    let pad = "x".repeat(500);
    let batch: Vec<Value> = (0..5000).map(|i| record("web-1", &format!("m {i} {pad}"))).collect();
    let (code, body) = post(&a, "/flow/shop/web", &array(&batch)).await;
    assert_eq!(code, 200, "{body}");
    let got = records(&mut ws, 5000).await;
    let want: Vec<String> = (0..5000).map(|i| format!("m {i} {pad}")).collect();
    assert_eq!(texts(&got), want);
    assert!(increasing(&got));
}

#[tokio::test]
async fn the_stream_state_a_flowtap_status_reports_names_the_stream_and_its_first_and_last_message() {
    let dir = tempdir("state");
    let Some(server) = Nats::start(&dir) else { return };
    let a = relay(&server.url()).await;
    let _ws = connect(&a, "/flow/shop/web", "tok-alice").await;
    for i in 0..3 {
        assert_eq!(post_batch(&a, "m", i * 10, 10).await, 200);
    }
    let options = NatsOptions {
        url: server.url(),
        max_age: Duration::from_secs(60),
        keys: Some(testkit::nats::bus_keys()),
        ..Default::default()
    };
    let bus = NatsBus::connect(&options, RelayConfig::default().replay, Default::default())
        .await
        .unwrap();
    let key = |name: &str| log_socket::protocol::TapKey::parse("flow", "shop", name).unwrap();
    let state = bus.stream_state(&key("web")).await.unwrap();
    assert_eq!(state, Some(("LOGSOCKET_flow_shop_web".to_owned(), 1, 3)));
    assert_eq!(bus.stream_state(&key("nobody")).await.unwrap(), None);
}

#[tokio::test]
async fn a_stream_no_flowtap_names_any_more_is_removed_unless_a_relay_still_follows_it() {
    let dir = tempdir("remove");
    let Some(server) = Nats::start(&dir) else { return };
    let (a, b) = (relay(&server.url()).await, relay(&server.url()).await);
    let key = log_socket::protocol::TapKey::parse("flow", "shop", "web").unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let exists = || async { js.get_stream("LOGSOCKET_flow_shop_web").await.is_ok() };
    // A FlowTap exists: the stream buffers with nobody listening.
    a.relay.pin_tap(&key, true);
    eventually_within("the stream to be created", WAIT, || async {
        exists().await.then_some(())
    })
    .await;
    assert_eq!(post_batch(&a, "m", 0, 5).await, 200);
    // While a relay follows it for a listener, it stays.
    let ws = connect(&b, "/flow/shop/web", "tok-alice").await;
    a.relay.pin_tap(&key, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(exists().await, "removed under a listener");
    // Nobody follows any more (the listener left and B's tap closed): gone with the FlowTap.
    drop(ws);
    drop(b);
    eventually_within("the stream to go", Duration::from_secs(60), || async {
        a.relay.pin_tap(&key, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        (!exists().await).then_some(())
    })
    .await;
    // fluentd's late chunks for the tap are discarded, not an error.
    assert_eq!(post_batch(&a, "m", 5, 5).await, 202);
}

#[tokio::test]
async fn a_stream_removed_while_its_flowtap_exists_is_made_again_and_nothing_is_discarded() {
    let dir = tempdir("remade");
    let Some(server) = Nats::start(&dir) else { return };
    let (a, b) = (relay(&server.url()).await, relay(&server.url()).await);
    let key = log_socket::protocol::TapKey::parse("flow", "shop", "web").unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    // A FlowTap exists, seen by both relays.
    a.relay.pin_tap(&key, true);
    b.relay.pin_tap(&key, true);
    eventually_within("the stream to be created", WAIT, || async {
        js.get_stream("LOGSOCKET_flow_shop_web").await.is_ok().then_some(())
    })
    .await;
    let mut ws = connect(&b, "/flow/shop/web", "tok-alice").await;
    // Removed behind its back (another relay that saw the FlowTap go before it came back, or
    // NATS losing its store).
    js.delete_stream("LOGSOCKET_flow_shop_web").await.unwrap();
    // Ingest stores the batch in a stream made again (fluentd never gets "discarded" for a
    // tap that exists), and the listener's relay follows the new stream.
    assert_eq!(post_batch(&a, "again", 0, 5).await, 200);
    assert!(js.get_stream("LOGSOCKET_flow_shop_web").await.is_ok());
    let frames = records(&mut ws, 5).await;
    assert_eq!(texts(&frames), numbered("again", 0..5));
}

/// A Kubernetes Service's stand-in on loopback: each connection goes to the first of its
/// endpoints, and is closed when that endpoint does not answer (as kube-proxy does until the
/// dead pod leaves the endpoints).
struct ServiceStandIn {
    addr: std::net::SocketAddr,
    endpoints: Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
}

async fn service_stand_in(endpoints: Vec<std::net::SocketAddr>) -> ServiceStandIn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let endpoints = Arc::new(std::sync::Mutex::new(endpoints));
    let current = endpoints.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let first = current.lock().unwrap().first().copied();
            tokio::spawn(async move {
                if let Some(Ok(mut server)) = match first {
                    Some(e) => Some(tokio::net::TcpStream::connect(e).await),
                    None => None,
                } {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    ServiceStandIn { addr, endpoints }
}

/// Read record frames into `seen` (their `n`, fluentd's sample counter) until one numbered
/// `at_least` or more arrives.
async fn numbers_until(ws: &mut Ws, at_least: u64, seen: &mut Vec<u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while seen.last().is_none_or(|&n| n < at_least) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = tokio::time::timeout(left, next(ws))
            .await
            .expect("fluentd's records in time");
        match frame["type"].as_str() {
            Some("record") => seen.push(frame["record"]["n"].as_u64().unwrap()),
            Some("dropped") => panic!("a gap: {frame}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_real_fluentd_loses_nothing_when_the_relay_it_posts_to_is_killed() {
    let dir = tempdir("fluentd-kill");
    if fluentd::command().is_none() {
        return;
    }
    let Some(server) = Nats::start(&dir.join("nats")) else {
        return;
    };
    let a = relay_process(&server.url(), &dir).await;
    let b = relay_process(&server.url(), &dir).await;
    let service = service_stand_in(vec![a.ingest, b.ingest]).await;
    // The listener is on B; the tap's stream exists from here on.
    let (mut on_b, _) = try_connect_at(b.api, "/flow/shop/web", "tok-alice").await.unwrap();

    // fluentd with the Output log-socket generates (its buffer and retry settings), posting to
    // the Service, which sends it to A while A lives.
    let mut spec = render::generated_output_spec(&format!("http://{}", service.addr), None, "Flow", None, None, None);
    spec["http"]["auth"] = serde_json::json!({"username": {"value": "fluentd"}, "password": {"value": "s3cret"}});
    let output = render::http_output(&spec, "flow:shop:web:output:shop:logsocket-flow-web");
    let sample = r#"{"message":"m","kubernetes":{"namespace_name":"shop","pod_name":"web-1","container_name":"app"}}"#;
    let conf = format!(
        "{system}<source>\n  @type sample\n  tag kubernetes.web\n  rate 50\n  auto_increment_key n\n  sample {sample}\n</source>\n\
         <match kubernetes.**>\n{output}</match>\n<label @FLUENT_LOG>\n  <match fluent.**>\n    @type null\n  </match>\n</label>\n",
        system = fluentd::system(&dir.join("fluentd"))
    );
    let mut f = fluentd::Fluentd::start(&dir.join("fluentd"), &conf).unwrap();

    let mut seen: Vec<u64> = vec![];
    numbers_until(&mut on_b, 100, &mut seen).await;
    let mut a = a;
    a.service.child.kill().await.unwrap();
    let at_kill = *seen.last().unwrap();
    // The Service still sends fluentd to A for a while: its flushes fail, and it keeps them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f.log().contains("failed to flush the buffer") {
        assert!(
            std::time::Instant::now() < deadline,
            "fluentd never failed at the dead relay:\n{}",
            f.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A leaves the endpoints; fluentd's retry reaches B.
    service.endpoints.lock().unwrap().remove(0);
    numbers_until(&mut on_b, at_kill + 200, &mut seen).await;
    assert!(f.log().contains("retry succeeded"), "{}", f.log());
    f.stop(Duration::from_secs(5)).await;

    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    let last = *unique.last().unwrap();
    assert_eq!(
        unique,
        (0..=last).collect::<Vec<_>>(),
        "every record fluentd sent, none missing; log:\n{}",
        f.log()
    );
    // In order, except that a batch answered 503 after JetStream stored it comes again (at
    // least once: fluentd retries what it was not told was stored).
    let repeated = seen.len() - unique.len();
    eprintln!(
        "{} records, {repeated} delivered twice (fluentd retried a batch A stored but never answered)",
        seen.len()
    );
    assert!(
        fluentd::backups(&dir.join("fluentd")).is_empty(),
        "fluentd gave nothing up"
    );
    b.service.terminate();
    b.service.exited_cleanly().await;
}

/// Record frames, and the sum of `denied` counts, until `denied` reaches `want_denied`.
async fn until_denied(ws: &mut Ws, want_denied: u64) -> (Vec<Value>, u64) {
    let (mut records, mut denied) = (vec![], 0);
    while denied < want_denied {
        let f = tokio::time::timeout(WAIT, next(ws)).await.expect("frames in time");
        match f["type"].as_str() {
            Some("record") => records.push(f),
            Some("denied") => denied += f["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    (records, denied)
}

#[tokio::test]
async fn records_ingested_at_one_relay_are_authorized_for_each_listener_at_the_relay_it_reads() {
    let dir = tempdir("labels");
    let Some(server) = Nats::start(&dir) else {
        return;
    };
    let a = relay(&server.url()).await;
    let b = relay_authorizing(
        &server.url(),
        RelayConfig::default(),
        Arc::new(log_socket::auth::labels::LabelPolicy::default()),
    )
    .await;
    let (mut alice, _) = try_connect_at(b.api, "/flow/shop/web", "tok-alice").await.unwrap();
    let (mut bob, _) = try_connect_at(b.api, "/flow/shop/web", "tok-bob").await.unwrap();
    // Every record names alice only: the even ones allow her, the odd ones deny her.
    let batch: Vec<Value> = (0..20)
        .map(|i| {
            let mut r = record("web-1", &format!("m {i}"));
            r["kubernetes"]["labels"]["rbac/u.alice"] = if i % 2 == 0 { "allow" } else { "deny" }.into();
            r
        })
        .collect();
    assert_eq!(post(&a, "/flow/shop/web", &array(&batch)).await.0, 200);
    let (seen, denied) = until_denied(&mut alice, 10).await;
    assert_eq!(
        texts(&seen),
        (0..20).step_by(2).map(|i| format!("m {i}")).collect::<Vec<_>>()
    );
    assert_eq!(denied, 10);
    // bob is named nowhere: nothing of it reaches him, only the count.
    let (seen, denied) = until_denied(&mut bob, 20).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(denied, 20);
}

#[tokio::test]
async fn messages_the_stream_discarded_before_a_relay_read_them_are_a_dropped_notice_not_a_silent_gap() {
    let dir = tempdir("discard");
    let Some(server) = Nats::start(&dir.join("nats")) else {
        return;
    };
    // The stream keeps 3 messages (batches); relay B, which the listener is on, is stopped
    // while relay A stores far more than B has asked JetStream for (500 at a time).
    let a = relay_process_with(&server.url(), &dir, &["--replay-records", "3"]).await;
    let b = relay_process_with(&server.url(), &dir, &["--replay-records", "3"]).await;
    let (mut on_b, _) = try_connect_at(b.api, "/flow/shop/web", "tok-alice").await.unwrap();
    assert_eq!(post_to(a.ingest, 0, 1).await, 200);
    records(&mut on_b, 1).await;
    let pid = b.service.child.id().unwrap() as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for i in 1..1500 {
        assert_eq!(post_to(a.ingest, i, 1).await, 200);
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // B reads what it had asked for, then the stream's oldest: a jump, told before what follows.
    let mut notice_at = None;
    let mut last = String::new();
    let mut seen = 0;
    while last != "m 1499" {
        let f = tokio::time::timeout(WAIT, next(&mut on_b))
            .await
            .expect("frames in time");
        match f["type"].as_str() {
            Some("dropped") => {
                assert_eq!(f["reason"], "bus_discarded", "{f}");
                assert!(f["count"].is_null(), "{f}");
                notice_at.get_or_insert(seen);
            }
            Some("record") => {
                last = f["record"]["message"].as_str().unwrap().to_owned();
                seen += 1;
            }
            _ => {}
        }
    }
    let notice_at = notice_at.expect("a bus_discarded notice");
    assert!(
        seen < 1499 && notice_at < seen,
        "{seen} records, the notice after {notice_at}"
    );
    drop(a);
}

#[tokio::test]
async fn three_relays_seeing_a_flowtap_go_and_come_back_at_different_times_discard_nothing_a_listener_awaits() {
    let dir = tempdir("churn");
    let Some(server) = Nats::start(&dir) else { return };
    let relays = [
        relay(&server.url()).await,
        relay(&server.url()).await,
        relay(&server.url()).await,
    ];
    let key = log_socket::protocol::TapKey::parse("flow", "shop", "web").unwrap();
    let mut posted = 0;
    for round in 0..9 {
        // Who sees what when: one relay sees the FlowTap go (the last listener lingered out
        // there) while the others already see it again (a listener joined through them), then
        // it catches up. A listener follows on the third.
        let (gone, joined, listening) = (round % 3, (round + 1) % 3, (round + 2) % 3);
        relays[listening].relay.pin_tap(&key, true);
        let mut ws = connect(&relays[listening], "/flow/shop/web", "tok-alice").await;
        relays[gone].relay.pin_tap(&key, false);
        relays[joined].relay.pin_tap(&key, true);
        let mut sent = vec![];
        for at in [joined, listening] {
            // A relay that sees the FlowTap stores what fluentd posts, whatever the others did
            // to the stream meanwhile: never 202 (discarded).
            let status = post_batch(&relays[at], "r", posted, 5).await;
            assert_eq!(status, 200, "round {round}: relay {at} answered {status}");
            sent.extend(numbered("r", posted..posted + 5));
            posted += 5;
        }
        relays[gone].relay.pin_tap(&key, true);
        let status = post_batch(&relays[gone], "r", posted, 5).await;
        assert_eq!(status, 200, "round {round}: relay {gone} caught up, answered {status}");
        sent.extend(numbered("r", posted..posted + 5));
        posted += 5;
        // The listener gets every record the relays accepted, each relay's in its order.
        let mut got = texts(&records(&mut ws, sent.len()).await);
        got.sort();
        sent.sort();
        assert_eq!(got, sent, "round {round}");
        drop(ws);
        // The FlowTap goes everywhere; the stream with it.
        for r in &relays {
            r.relay.pin_tap(&key, false);
        }
    }
}

/// A hostile NATS client: whoever reaches NATS, without the bus key (or, for the bomb and the
/// oversized batch, a relay's key in the wrong hands: the limits hold even then).
async fn hostile(server: &Nats) -> async_nats::Client {
    async_nats::connect(server.url()).await.unwrap()
}

/// What a listener got next: a record's message, or the reason of a `dropped` notice.
async fn next_event(ws: &mut Ws) -> String {
    loop {
        let f = tokio::time::timeout(WAIT, next(ws)).await.expect("a frame in time");
        match f["type"].as_str() {
            Some("record") => return format!("record {}", f["record"]["message"].as_str().unwrap()),
            Some("dropped") => return format!("dropped {}", f["reason"].as_str().unwrap_or_default()),
            _ => {}
        }
    }
}

fn vm_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb / 1024
}

#[tokio::test]
async fn nothing_a_hostile_nats_client_publishes_reaches_a_listener_and_the_next_real_record_does() {
    let dir = tempdir("hostile");
    let Some(server) = Nats::start(&dir) else { return };
    let (a, b) = (relay(&server.url()).await, relay(&server.url()).await);
    let key = log_socket::protocol::TapKey::parse("flow", "shop", "web").unwrap();
    a.relay.pin_tap(&key, true);
    b.relay.pin_tap(&key, true);
    let mut ws = connect(&b, "/flow/shop/web", "tok-alice").await;
    assert_eq!(post_batch(&a, "real", 0, 1).await, 200);
    assert_eq!(next_event(&mut ws).await, "record real 0");
    let nats = hostile(&server).await;
    let subject = "logsocket.flow.shop.web";
    let forged = r#"[{"message":"forged","kubernetes":{"labels":{"rbac/policy":"allow"}}}]"#;
    let js = async_nats::jetstream::new(nats.clone());
    let publish = |headers: async_nats::HeaderMap, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish_with_headers(subject, headers, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let lz4 = |body: &[u8]| lz4_flex::block::compress_prepend_size(body);
    let headers = |seal: Option<&log_socket::relay::bus::seal::Sealed>| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Logsocket-Encoding", "lz4");
        if let Some(s) = seal {
            h.insert("Logsocket-Seal", s.seal.as_str());
            h.insert("Nats-Msg-Id", s.id.as_str());
        }
        h
    };
    let stranger =
        log_socket::relay::bus::seal::BusKeys::from_keys(&["a-key-that-is-not-the-relays-0123456789"]).unwrap();
    let insider = testkit::nats::bus_keys();
    // An unsealed plain array, an unsealed compressed one, one sealed with a stranger's key.
    publish(async_nats::HeaderMap::new(), forged.as_bytes().to_vec()).await;
    publish(headers(None), lz4(forged.as_bytes())).await;
    let wrong = stranger.seal(subject, "lz4", &lz4(forged.as_bytes()));
    publish(headers(Some(&wrong)), wrong.payload.clone()).await;
    // A real message, from a relay's key (the limits below hold even for those).
    let real = insider.seal(subject, "lz4", &lz4(br#"[{"message":"sealed"}]"#));
    publish(headers(Some(&real)), real.payload.clone()).await;
    let rss = vm_rss_mib();
    // A bomb: 50 KB that claims 64 MiB uncompressed, and a batch of 2^20 + 1 records, each
    // sealed with the relays' own key.
    let bomb_body = vec![b' '; 64 << 20];
    let bomb = insider.seal(subject, "lz4", &lz4(&bomb_body));
    drop(bomb_body);
    publish(headers(Some(&bomb)), bomb.payload.clone()).await;
    let many = format!("[{}{{}}]", "{},".repeat(1 << 20));
    let huge = insider.seal(subject, "lz4", &lz4(many.as_bytes()));
    publish(headers(Some(&huge)), huge.payload.clone()).await;
    // Then a real record.
    assert_eq!(post_batch(&a, "real", 1, 1).await, 200);
    let mut events = vec![];
    loop {
        let e = next_event(&mut ws).await;
        let done = e == "record real 1";
        events.push(e);
        if done {
            break;
        }
    }
    // Nothing forged delivered; each run of skipped messages told (consecutive notices may
    // reach a listener as one).
    let sealed = events
        .iter()
        .position(|e| e == "record sealed")
        .expect("the sealed record");
    let (before, after) = (&events[..sealed], &events[sealed + 1..events.len() - 1]);
    for run in [before, after] {
        assert!(
            !run.is_empty() && run.iter().all(|e| e == "dropped bus_invalid"),
            "{events:?}"
        );
    }
    assert!(
        vm_rss_mib() < rss + 200,
        "the bomb and the huge batch were refused before they cost memory: {} MiB then {} MiB",
        rss,
        vm_rss_mib()
    );
    // Both relays still serve.
    assert_eq!(post_batch(&b, "real", 2, 1).await, 200);
    assert_eq!(next_event(&mut ws).await, "record real 2");
}

#[tokio::test]
async fn a_stream_squatting_the_taps_subjects_is_reported_never_taken_for_stored() {
    let dir = tempdir("squat");
    let Some(server) = Nats::start(&dir) else { return };
    let js = async_nats::jetstream::new(hostile(&server).await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SQUAT".into(),
        subjects: vec!["logsocket.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let a = relay(&server.url()).await;
    let key = log_socket::protocol::TapKey::parse("flow", "shop", "web").unwrap();
    a.relay.pin_tap(&key, true);
    // fluentd gets a 5xx and retries, never a 200 for records nobody will read; the answer
    // says why once the relay is connected.
    let records = array(&[record("web-1", "m")]);
    eventually_within("a 5xx that names the squatter", WAIT, || async {
        let (status, body) = post(&a, "/flow/shop/web", &records).await;
        assert!(status >= 500, "{status} {body}");
        body.contains("captured by NATS stream \"SQUAT\"").then_some(())
    })
    .await;
    // The FlowTap's status names the squatter (what the relay reports in status.bus.problem).
    let log_socket::relay::bus::Bus::Nats(bus) = &a.relay.bus else {
        panic!("a nats relay")
    };
    assert_eq!(bus.captured_by(&key).await.as_deref(), Some("SQUAT"));
    js.delete_stream("SQUAT").await.unwrap();
    eventually_within(
        "stored in the tap's own stream once the squatter is gone",
        WAIT,
        || async { (post(&a, "/flow/shop/web", &records).await.0 == 200).then_some(()) },
    )
    .await;
}

/// The `nats.conf` config/nats/nats.yaml ships (the ConfigMap's), with a tenant's account
/// added beside log-socket's.
fn shipped_nats_conf() -> String {
    let yaml = std::fs::read_to_string(testkit::cluster::repo().join("config/nats/nats.yaml")).unwrap();
    let config = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the ConfigMap of nats.conf");
    let conf = config["data"]["nats.conf"].as_str().unwrap().to_owned();
    conf.replacen(
        "accounts {",
        "accounts {\n  TENANT { jetstream: enabled, users = [ { user: tenant, password: tenant } ] }",
        1,
    )
}

#[tokio::test]
async fn the_shipped_nats_account_serves_log_socket_and_shuts_everyone_else_out() {
    let dir = tempdir("account");
    let password = "s3cret-0123456789";
    let Some(server) = Nats::start_with(&dir, &shipped_nats_conf(), &[("LOGSOCKET_PASSWORD", password)]) else {
        return;
    };
    let url = |user: &str| format!("nats://{user}@127.0.0.1:{}", server.port);
    // log-socket, with its user: everything it does on the bus is allowed.
    let (a, b) = (
        relay(&url(&format!("log-socket:{password}"))).await,
        relay(&url(&format!("log-socket:{password}"))).await,
    );
    let key = log_socket::protocol::TapKey::parse("flow", "shop", "web").unwrap();
    a.relay.pin_tap(&key, true);
    b.relay.pin_tap(&key, true);
    let mut ws = connect(&b, "/flow/shop/web", "tok-alice").await;
    // A tenant of the same NATS, in its own account, listening on every log-socket subject.
    let as_user = |user: &str, password: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into()).connect(server.url())
    };
    let tenant = as_user("tenant", "tenant").await.unwrap();
    let mut spy = tenant.subscribe("logsocket.>").await.unwrap();
    tenant.flush().await.unwrap();
    eventually_within("a batch through the bus", WAIT, || async {
        (post_batch(&a, "m", 0, 3).await == 200).then_some(())
    })
    .await;
    assert_eq!(texts(&records(&mut ws, 3).await), numbered("m", 0..3));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), futures::StreamExt::next(&mut spy))
            .await
            .is_err(),
        "another account sees nothing of log-socket's subjects"
    );
    // Nor its streams.
    let mut names = async_nats::jetstream::new(tenant.clone()).stream_names();
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        assert!(
            !name.unwrap().starts_with("LOGSOCKET_"),
            "a tenant lists log-socket's streams"
        );
    }
    // Anonymous clients, and a wrong password, are refused.
    assert!(async_nats::connect(server.url()).await.is_err(), "anonymous");
    assert!(as_user("log-socket", "guess").await.is_err(), "a wrong password");
    // log-socket's own user reads records only through JetStream, never by subscribing.
    let own = as_user("log-socket", password).await.unwrap();
    let mut direct = own.subscribe("logsocket.>").await.unwrap();
    let _ = own.flush().await;
    assert_eq!(post_batch(&a, "m", 3, 1).await, 200);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), futures::StreamExt::next(&mut direct))
            .await
            .map_or(true, |m| m.is_none()),
        "subscribing to the subjects is denied"
    );
}
