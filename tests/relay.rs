//! The relay over real sockets: fluentd-style HTTP POSTs in, tokio-tungstenite WebSocket
//! listeners out. No cluster needed. No timing assertions: waits are upper bounds on hangs.

use log_socket::auth::{AllowAll, Authorizer, Decision, Identity, StaticTokens};
use log_socket::protocol::Meta;
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use testkit::relay::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn start_with(config: RelayConfig, authorizer: Arc<dyn Authorizer>) -> TestRelay {
    let parts = Parts {
        authenticator: Arc::new(StaticTokens::parse("tok-alice,alice\ntok-bob,bob\n").unwrap()),
        authorizer,
        sessions: Arc::new(NoSessions),
        ingest_auth: ingest_auth(),
    };
    start_relay(config, parts).await
}

async fn start() -> TestRelay {
    start_with(RelayConfig::default(), Arc::new(AllowAll)).await
}

#[tokio::test]
async fn records_of_a_flow_reach_only_that_flows_listeners() {
    let r = start().await;
    let mut web = connect(&r, "/flow/shop/web", "tok-alice").await;
    let mut db = connect(&r, "/flow/shop/db", "tok-bob").await;
    let mut cluster_web = connect(&r, "/clusterflow/shop/web", "tok-bob").await;
    let mut web2 = connect(&r, "/flow/shop/web", "tok-bob").await;

    let (code, body) = post(
        &r,
        "/flow/shop/web",
        &array(&[record("web-1", "one"), record("web-1", "two")]),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "accepted 2 records\n"));

    assert_eq!(post(&r, "/flow/shop/web", &array(&[record("m", "end")])).await.0, 200);
    for ws in [&mut web, &mut web2] {
        let got = records_until(ws, "end").await;
        assert_eq!(messages(&got), ["one", "two"]);
        assert_eq!(got[0]["seq"], 1);
        assert_eq!(got[1]["seq"], 2);
    }
    assert!(
        drain(&r, &mut db, "/flow/shop/db").await.is_empty(),
        "another flow's listener got nothing"
    );
    assert!(
        drain(&r, &mut cluster_web, "/clusterflow/shop/web").await.is_empty(),
        "a ClusterFlow of the same name is another tap"
    );
}

#[tokio::test]
async fn every_body_format_fluentd_sends_is_accepted_and_forwarded_byte_for_byte() {
    use std::io::Write;
    let r = start().await;
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    let rec = |m: &str| serde_json::to_string(&record("web-1", m)).unwrap();

    // json_array true with fluentd's default add_newline: `[{..}\n,{..}\n]`
    assert_eq!(
        post(&r, "/flow/shop/web", &format!("[{}\n,{}\n]", rec("a1"), rec("a2")))
            .await
            .0,
        200
    );
    // json_array true, add_newline false
    assert_eq!(
        post(&r, "/flow/shop/web", &format!("[{},{}]", rec("b1"), rec("b2")))
            .await
            .0,
        200
    );
    // json_array false: NDJSON
    assert_eq!(
        post(&r, "/flow/shop/web", &format!("{}\n{}\n", rec("c1"), rec("c2")))
            .await
            .0,
        200
    );
    // a single object
    assert_eq!(post(&r, "/flow/shop/web", &rec("d1")).await.0, 200);
    // compress gzip
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(format!("[{},{}]", rec("e1"), rec("e2")).as_bytes())
        .unwrap();
    let gz = enc.finish().unwrap();
    let headers = [("Authorization", INGEST_AUTH), ("Content-Encoding", "gzip")];
    assert_eq!(request(r.ingest, "POST", "/flow/shop/web", &headers, &gz).await.0, 200);

    let got = drain(&r, &mut ws, "/flow/shop/web").await;
    assert_eq!(messages(&got), ["a1", "a2", "b1", "b2", "c1", "c2", "d1", "e1", "e2"]);
    let seqs: Vec<u64> = got.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    assert_eq!(got[0]["record"], record("web-1", "a1"), "the record arrives as sent");
}

#[tokio::test]
async fn bad_ingest_requests_get_a_clear_4xx_and_forward_nothing() {
    let r = start_with(
        RelayConfig {
            max_body_bytes: 4096,
            ..Default::default()
        },
        Arc::new(AllowAll),
    )
    .await;
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    let good = array(&[record("web-1", "fine")]);

    let (code, body) = request(r.ingest, "POST", "/flow/shop/web", &[], good.as_bytes()).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = request(
        r.ingest,
        "POST",
        "/flow/shop/web",
        &[("Authorization", "Basic Zmx1ZW50ZDp3cm9uZw==")],
        good.as_bytes(),
    )
    .await;
    assert_eq!(code, 401);

    let (code, body) = post(&r, "/deployment/shop/web", &good).await;
    assert_eq!(code, 404);
    assert!(body.contains("unknown flow kind"), "{body}");
    // No tap open: accepted and discarded (any error would make fluentd retry or back up the
    // chunk), and counted.
    let (code, body) = post(&r, "/flow/shop/nobody-listens", &good).await;
    assert_eq!(code, 202);
    assert_eq!(
        body,
        "discarded 1 records: no tap open for flow/shop/nobody-listens (nobody is listening)\n"
    );
    assert!(
        r.relay
            .metrics
            .encode()
            .contains(r#"log_socket_dropped_records_total{reason="no_tap"} 1"#),
        "{}",
        r.relay.metrics.encode()
    );
    let (code, _) = post(&r, "/flow/shop", &good).await;
    assert_eq!(code, 404);

    // A batch with one bad element is refused whole: a fluentd retry will not duplicate.
    let bad_batch = format!(
        "[{},42]",
        serde_json::to_string(&record("web-1", "must not arrive")).unwrap()
    );
    let (code, body) = post(&r, "/flow/shop/web", &bad_batch).await;
    assert_eq!(
        (code, body.as_str()),
        (400, "element 1: expected a JSON object (one log record)\n")
    );
    let (code, body) = post(&r, "/flow/shop/web", "{\"message\": \"x\"}\n{\"message\": oops}\n").await;
    assert_eq!(code, 400);
    assert!(body.starts_with("line 2: malformed JSON"), "{body}");

    let big = array(&vec![record("web-1", &"x".repeat(100)); 40]);
    let (code, body) = post(&r, "/flow/shop/web", &big).await;
    assert_eq!((code, body.as_str()), (413, "body larger than 4096 bytes\n"));

    let headers = [("Authorization", INGEST_AUTH), ("Content-Encoding", "br")];
    let (code, body) = request(r.ingest, "POST", "/flow/shop/web", &headers, good.as_bytes()).await;
    assert_eq!(code, 415);
    assert!(body.contains("unsupported Content-Encoding \"br\""), "{body}");

    assert!(
        drain(&r, &mut ws, "/flow/shop/web").await.is_empty(),
        "nothing from refused requests"
    );
}

#[tokio::test]
async fn listeners_must_authenticate_and_speak_websocket() {
    let r = start().await;
    let err = try_connect(&r, "/flow/shop/web", "wrong").await.unwrap_err();
    assert!(err.starts_with("401 unauthenticated"), "{err}");

    let (code, body) = request(r.api, "GET", "/flow/shop/web", &[], b"").await;
    assert_eq!(code, 401);
    assert!(body.contains("X-Authorization"), "{body}");

    let (code, body) = request(
        r.api,
        "GET",
        "/flow/shop/web",
        &[("Authorization", "Bearer tok-alice")],
        b"",
    )
    .await;
    assert_eq!(code, 426, "{body}");
    assert!(body.contains("logsocket.v1"), "{body}");

    let (code, body) = request(
        r.api,
        "GET",
        "/flow/shop/web?follow=1",
        &[("X-Authorization", "tok-alice")],
        b"",
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("unknown query option \"follow\""), "{body}");

    let (code, _) = request(r.api, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 401, "metrics need a token too");
}

#[tokio::test]
async fn tail_and_resume_give_no_gap_and_no_duplicate() {
    let r = start_with(
        RelayConfig {
            replay: log_socket::relay::tap::ReplayLimits {
                records: 5,
                bytes: 1 << 20,
            },
            ..Default::default()
        },
        Arc::new(AllowAll),
    )
    .await;
    // The tap exists while someone listens.
    let mut first = connect(&r, "/flow/shop/web", "tok-alice").await;
    let batch: Vec<Value> = (1..=8).map(|i| record("web-1", &format!("m{i}"))).collect();
    assert_eq!(post(&r, "/flow/shop/web", &array(&batch)).await.0, 200);
    let seen = records_until(&mut first, "m8").await;
    assert_eq!(messages(&seen), ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);

    let anonymous = tokio_tungstenite::connect_async(format!("ws://{}/flow/shop/web?tail=2", r.api)).await;
    assert!(anonymous.is_err(), "no token, no stream");
    let (mut ws, status) = try_connect(&r, "/flow/shop/web?tail=2", "tok-bob").await.unwrap();
    assert_eq!(
        (status["lastSeq"].as_u64(), status["firstSeq"].as_u64()),
        (Some(8), Some(4))
    );
    let epoch = status["epoch"].as_u64().unwrap();
    assert_eq!(messages(&[next(&mut ws).await, next(&mut ws).await]), ["m7", "m8"]);

    // Resume after 6 with the right epoch: 7, 8, then live 9. No gap, no duplicate.
    let mut resumed = connect(&r, &format!("/flow/shop/web?after=6&epoch={epoch}"), "tok-bob").await;
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[record("web-1", "m9")])).await.0,
        200
    );
    let frames = [
        next(&mut resumed).await,
        next(&mut resumed).await,
        next(&mut resumed).await,
    ];
    assert_eq!(messages(&frames), ["m7", "m8", "m9"]);
    assert_eq!(
        frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        [7, 8, 9]
    );

    // Resume from before the buffer: told exactly how many are gone, then the rest.
    let mut late = connect(&r, &format!("/flow/shop/web?after=1&epoch={epoch}"), "tok-bob").await;
    let gap = next(&mut late).await;
    assert_eq!(gap, json!({"type": "dropped", "count": 3, "reason": "out_of_replay"}));
    assert_eq!(next(&mut late).await["seq"], 5);

    // Resume with another epoch (the relay restarted): told so, and given what there is.
    let mut other = connect(&r, &format!("/flow/shop/web?after=3&epoch={}", epoch + 1), "tok-bob").await;
    assert_eq!(
        next(&mut other).await,
        json!({"type": "dropped", "count": null, "reason": "tap_restarted"})
    );
    assert_eq!(next(&mut other).await["seq"], 5);
}

#[tokio::test]
async fn filters_are_applied_at_the_relay() {
    let r = start().await;
    let mut ws = connect(&r, "/flow/shop/web?grep=error&exclude=healthz&pod=%5Eweb-", "tok-alice").await;
    let batch = [
        record("web-1", "error: payment failed"),
        record("web-1", "info: all good"),
        record("db-0", "error: disk full"),
        record("web-2", "error: GET /healthz"),
        record("web-2", "error: timeout"),
    ];
    assert_eq!(post(&r, "/flow/shop/web", &array(&batch)).await.0, 200);
    // The marker does not match the filters, so post one that does to end the wait.
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[record("web-9", "error: end")]))
            .await
            .0,
        200
    );
    let got = records_until(&mut ws, "error: end").await;
    assert_eq!(messages(&got), ["error: payment failed", "error: timeout"]);
}

/// Denies records of pods whose name starts with "secret".
struct DenySecretPods;
impl Authorizer for DenySecretPods {
    fn decide(&self, _: &Identity, record: &Meta) -> Decision {
        if record.pod().unwrap_or("").starts_with("secret") {
            Decision::Deny
        } else {
            Decision::Allow
        }
    }
}

#[tokio::test]
async fn denied_records_are_replaced_by_an_aggregated_notice_without_content() {
    let r = start_with(RelayConfig::default(), Arc::new(DenySecretPods)).await;
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    let mut batch: Vec<Value> = (0..50).map(|i| record("secret-0", &format!("password={i}"))).collect();
    batch.push(record("web-1", "visible"));
    assert_eq!(post(&r, "/flow/shop/web", &array(&batch)).await.0, 200);

    let mut frames = vec![];
    while frames.iter().filter(|f: &&Value| f["type"] == "denied").count() == 0 {
        frames.push(next(&mut ws).await);
    }
    let text = serde_json::to_string(&frames).unwrap();
    assert!(!text.contains("password"), "no byte of denied content: {text}");
    assert!(!text.contains("secret-0"), "not even which pod: {text}");
    assert_eq!(messages(&frames), ["visible"]);
    let denied: Vec<&Value> = frames.iter().filter(|f| f["type"] == "denied").collect();
    assert_eq!(denied.len(), 1, "one notice for 50 records: {text}");
    assert_eq!(
        *denied[0],
        json!({"type": "denied", "count": 50}),
        "a count, naming no pod: {text}"
    );
}

#[tokio::test]
async fn a_slow_listener_loses_the_oldest_records_and_is_told_while_a_fast_one_gets_everything() {
    let r = start_with(
        RelayConfig {
            listener_queue: 50,
            write_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            ..Default::default()
        },
        Arc::new(AllowAll),
    )
    .await;
    // A small receive buffer on the slow side, so its socket fills up quickly.
    let slow_socket = tokio::net::TcpSocket::new_v4().unwrap();
    slow_socket.set_recv_buffer_size(4096).unwrap();
    let stream = slow_socket.connect(r.api).await.unwrap();
    let mut req = format!("ws://{}/flow/shop/web", r.api).into_client_request().unwrap();
    req.headers_mut().insert("x-authorization", "tok-bob".parse().unwrap());
    let (mut slow, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let mut fast = connect(&r, "/flow/shop/web", "tok-alice").await;

    const BATCHES: usize = 40;
    const PER_BATCH: usize = 50;
    let total = (BATCHES * PER_BATCH) as u64;
    let fast_reader = tokio::spawn(async move {
        let mut expected = 1;
        while expected <= total {
            let f = next(&mut fast).await;
            assert_eq!(f["type"], "record", "the fast listener loses nothing: {f}");
            assert_eq!(f["seq"], expected, "in order, no gap");
            expected += 1;
        }
    });
    let big = "x".repeat(8 << 10);
    for b in 0..BATCHES {
        let batch: Vec<Value> = (0..PER_BATCH)
            .map(|i| record("web-1", &format!("{b}-{i} {big}")))
            .collect();
        assert_eq!(
            post(&r, "/flow/shop/web", &array(&batch)).await.0,
            200,
            "ingest never waits for a listener"
        );
    }
    tokio::time::timeout(WAIT * 3, fast_reader)
        .await
        .expect("fast listener done")
        .unwrap();

    // Now the slow one reads: every record is either received or counted in a dropped notice.
    let (mut received, mut dropped, mut last_seq) = (0u64, 0u64, 0u64);
    let _ = next(&mut slow).await; // status
    while received + dropped < total {
        let f = next(&mut slow).await;
        match f["type"].as_str() {
            Some("record") => {
                let seq = f["seq"].as_u64().unwrap();
                assert!(seq > last_seq, "in order");
                last_seq = seq;
                received += 1;
            }
            Some("dropped") => {
                assert_eq!(f["reason"], "slow_client");
                dropped += f["count"].as_u64().unwrap();
            }
            other => panic!("unexpected frame {other:?}: {f}"),
        }
    }
    assert!(dropped > 0, "the slow listener was told it lost records");
    assert_eq!(received + dropped, total);
    assert_eq!(last_seq, total, "it still gets the newest records");
    let _ = slow.close(None).await;
}

#[tokio::test]
async fn shutdown_delivers_what_was_accepted_then_closes_with_going_away() {
    let mut r = start().await;
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[record("web-1", "last words")]))
            .await
            .0,
        200
    );
    r.stop.cancel();
    let mut frames = vec![];
    loop {
        let f = next(&mut ws).await;
        let closed = f["type"] == "closed";
        frames.push(f);
        if closed {
            break;
        }
    }
    assert_eq!(messages(&frames), ["last words"]);
    assert_eq!(frames.last().unwrap()["frame"], json!([1001, "relay shutting down"]));
    tokio::time::timeout(WAIT, &mut r.done)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(TcpStream::connect(r.ingest).await.is_err(), "ingest port closed");
}

#[tokio::test]
async fn metrics_count_ingest_and_delivery_without_naming_users() {
    let r = start().await;
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    assert_eq!(
        post(
            &r,
            "/flow/shop/web",
            &array(&[record("web-1", "a"), record("web-1", "b")])
        )
        .await
        .0,
        200
    );
    drain(&r, &mut ws, "/flow/shop/web").await;
    let (code, body) = request(r.api, "GET", "/metrics", &[("Authorization", "Bearer tok-bob")], b"").await;
    assert_eq!(code, 200);
    assert!(
        body.contains(r#"log_socket_ingested_records_total{kind="flow",flow_namespace="shop",name="web"} 3"#),
        "{body}"
    );
    assert!(
        body.contains(r#"log_socket_ingest_requests_total{code="200"} 2"#),
        "{body}"
    );
    assert!(body.contains("log_socket_listeners 1"), "{body}");
    assert!(
        body.contains(&format!(
            "log_socket_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(!body.contains("alice"), "no user names in metrics");
    assert!(
        !body.contains("tok-alice") && !body.contains("tok-bob") && !body.contains("Zmx1ZW50ZDpzM2NyZXQ"),
        "no tokens or ingest credentials in metrics"
    );
}

/// Send `partial` on a new connection and stop; what the relay answers before closing (it must
/// within WAIT, else panic with `what`).
async fn trickle(addr: std::net::SocketAddr, partial: &[u8], what: &str) -> std::io::Result<String> {
    let mut slow = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, partial).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut slow, &mut answer))
        .await
        .expect(what)?;
    Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
}

#[tokio::test]
async fn a_trickling_ingest_body_is_cut_off_and_frees_its_slot() {
    let config = RelayConfig {
        ingest_body_timeout: Duration::from_millis(300),
        max_concurrent_ingest: 1,
        ..RelayConfig::default()
    };
    let r = start_with(config, Arc::new(AllowAll)).await;
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;

    // Headers promise 1000 bytes; 10 arrive, then nothing (slowloris).
    let head = format!(
        "POST /flow/shop/web HTTP/1.1\r\nHost: x\r\nAuthorization: {INGEST_AUTH}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"a\":1}},"
    );
    let answer = trickle(r.ingest, head.as_bytes(), "an answer, not a hang")
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");

    // The only ingest slot is free again: a well-behaved request goes through.
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[record("web-1", "after")])).await.0,
        200
    );
    assert_eq!(messages(&drain(&r, &mut ws, "/flow/shop/web").await), ["after"]);
}

#[tokio::test]
async fn trickled_request_headers_are_cut_off_on_both_ports() {
    let config = RelayConfig {
        header_timeout: Duration::from_millis(300),
        ..RelayConfig::default()
    };
    let r = start_with(config, Arc::new(AllowAll)).await;
    for addr in [r.ingest, r.api] {
        // Half a request head, then nothing (slowloris on the headers).
        let head = b"GET /flow/shop/web HTTP/1.1\r\nHost: x\r\n";
        let answer = trickle(addr, head, "the connection is closed, not held")
            .await
            .unwrap_or_default();
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    // A prompt client is still served on both ports.
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[record("web-1", "prompt")])).await.0,
        200
    );
    assert_eq!(messages(&drain(&r, &mut ws, "/flow/shop/web").await), ["prompt"]);
}

/// Every text frame until a record whose message is `end`, as the bytes that arrived.
async fn raw_frames_until(ws: &mut Ws, end: &str) -> Vec<String> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut out = vec![];
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the stream stays open")
            .expect("a valid frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            out.push(t.to_string());
            if v["type"] == "record" && v["record"]["message"] == end {
                return out;
            }
        }
    }
}

#[tokio::test]
async fn listeners_that_differ_only_in_filters_get_byte_identical_frames_besides_records() {
    let r = start_with(RelayConfig::default(), Arc::new(DenySecretPods)).await;
    let path = "/clusterflow/logging/all";
    // Someone keeps the tap open, so records are buffered for the later listeners' tail.
    let _keeper = connect(&r, path, "tok-bob").await;
    // Records these listeners may not read, some matching one listener's grep, some the other's.
    let secret = |i: usize| {
        let word = if i.is_multiple_of(3) { "password" } else { "token" };
        record(&format!("secret-{}", i % 2), &format!("{word}={i}"))
    };
    let mut batch: Vec<Value> = (0..30).map(secret).collect();
    batch.push(record("web-1", "visible password"));
    batch.push(record("web-1", "visible token"));
    assert_eq!(post(&r, path, &array(&batch)).await.0, 200);

    let tail = |grep: &str| format!("{path}?tail=100&grep={grep}");
    let (mut pw, first_pw) = try_connect(&r, &tail("password|replay-end|live-end"), "tok-alice")
        .await
        .unwrap();
    let (mut tok, first_tok) = try_connect(&r, &tail("token|replay-end|live-end"), "tok-alice")
        .await
        .unwrap();
    assert_eq!(first_pw, first_tok, "the listening status does not depend on filters");
    assert_eq!(first_pw["replayed"], 2, "the records it may read, before its filters");

    // The replayed records, then the denied notices of the replay (flushed within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(post(&r, path, &array(&[record("web-1", "replay-end")])).await.0, 200);
    // Live records: the same mix.
    let mut live: Vec<Value> = (30..60).map(secret).collect();
    live.push(record("web-1", "visible password live"));
    assert_eq!(post(&r, path, &array(&live)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(post(&r, path, &array(&[record("web-1", "live-end")])).await.0, 200);

    let mut seen = vec![];
    for ws in [&mut pw, &mut tok] {
        let mut frames = raw_frames_until(ws, "replay-end").await;
        frames.extend(raw_frames_until(ws, "live-end").await);
        seen.push(frames);
    }
    let not_records = |frames: &[String]| -> Vec<String> {
        frames
            .iter()
            .filter(|f| !f.contains(r#""type":"record""#))
            .cloned()
            .collect()
    };
    let (a, b) = (not_records(&seen[0]), not_records(&seen[1]));
    assert_eq!(a, b, "byte-identical frames besides records");
    let denied: u64 = a
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter(|v| v["type"] == "denied")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(denied, 60, "every denied record counted, whatever the grep: {a:?}");
    // And the records themselves do follow each listener's filters.
    let text = |frames: &[String]| frames.iter().filter(|f| f.contains(r#""type":"record""#)).count();
    assert_eq!((text(&seen[0]), text(&seen[1])), (4, 3));
    let all = seen.concat().concat();
    assert!(
        !all.contains("password=") && !all.contains("token="),
        "no byte of denied records"
    );
}

#[tokio::test]
async fn a_request_of_more_records_than_allowed_is_refused_whole_with_413() {
    let r = start().await;
    let mut ws = connect(&r, "/flow/shop/web", "tok-alice").await;
    // Two million empty records in 6 MB: under the body limit, far over the record limit.
    let body = format!("[{}{{}}]", "{},".repeat(2_000_000));
    let (code, text) = post(&r, "/flow/shop/web", &body).await;
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("more than 100000 records in one request"), "{text}");
    // Nothing of it was forwarded: the next record is the first the listener gets.
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[record("web-1", "after")])).await.0,
        200
    );
    let first = next(&mut ws).await;
    assert_eq!(first["record"]["message"], "after", "{first}");
    assert_eq!(first["seq"], 1);
}

#[tokio::test]
async fn a_client_that_keeps_failing_to_authenticate_is_slowed_down_and_a_valid_token_never_is() {
    for trusted in [true, false] {
        // Behind the API server's service proxy every user comes from one address, which the
        // proxy appends to X-Forwarded-For; trusted (--trusted-proxies) or not.
        let r = start_with(
            RelayConfig {
                trusted_proxies: if trusted {
                    log_socket::auth::limit::TrustedProxies::parse("127.0.0.0/8").unwrap()
                } else {
                    Default::default()
                },
                ..Default::default()
            },
            Arc::new(AllowAll),
        )
        .await;
        let attempt = |token: &'static str, forwarded: String| {
            let api = r.api;
            async move {
                let headers = [
                    ("X-Authorization", token),
                    ("X-Forwarded-For", forwarded.as_str()),
                    ("Connection", "Upgrade"),
                    ("Upgrade", "websocket"),
                    ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ("Sec-WebSocket-Protocol", "logsocket.v1"),
                ];
                request(api, "GET", "/flow/shop/web", &headers, b"").await
            }
        };
        // 500 bad tokens from one client, which also writes made-up addresses of its own in
        // front of what the proxy appends.
        let mut limited = 0;
        for i in 0..500 {
            let (code, body) = attempt("guess", format!("198.51.100.{}, 192.0.2.10", i % 250)).await;
            match code {
                401 => assert!(i < 20, "attempt {i}: still 401 past the budget"),
                429 => {
                    assert!(body.contains("too many failed authentications"), "{body}");
                    limited += 1;
                }
                other => panic!("attempt {i}: {other} {body}"),
            }
        }
        assert_eq!(
            limited, 480,
            "trusted {trusted}: told to slow down past its 20 failures"
        );
        // A valid token is accepted all the same, from that client and from another (past
        // authentication: this raw request then gets the WebSocket handshake's answer).
        for forwarded in ["192.0.2.10", "192.0.2.11"] {
            let (code, body) = attempt("tok-alice", forwarded.into()).await;
            assert!(
                code != 429 && code != 401,
                "trusted {trusted}, {forwarded}: {code} {body}"
            );
        }
        // Another client behind a trusted proxy has its own budget.
        let (code, body) = attempt("guess", "192.0.2.11".into()).await;
        assert_eq!(code, if trusted { 401 } else { 429 }, "trusted {trusted}: {body}");
        let metrics = r.relay.metrics.encode();
        assert!(metrics.contains(r#"kind="listener_auth_limited""#), "{metrics}");
    }
}

#[tokio::test]
async fn the_metric_series_of_a_closed_tap_are_removed() {
    let r = start_with(
        RelayConfig {
            tap_linger: Duration::ZERO,
            ..Default::default()
        },
        Arc::new(AllowAll),
    )
    .await;
    let series = r#"log_socket_ingested_records_total{kind="flow",flow_namespace="shop",name="gone"}"#;
    {
        let mut ws = connect(&r, "/flow/shop/gone", "tok-alice").await;
        assert_eq!(
            post(&r, "/flow/shop/gone", &array(&[record("web-1", "a")])).await.0,
            200
        );
        assert_eq!(messages(&[next(&mut ws).await]), ["a"]);
        assert!(r.relay.metrics.encode().contains(series));
    }
    // The listener is gone; the tap closes at the next reap (every second).
    let start = std::time::Instant::now();
    while r.relay.metrics.encode().contains(series) {
        assert!(start.elapsed() < WAIT, "the series stayed after the tap closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.relay.tap_count(), 0);
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_listeners_and_gets_a_slot_back_when_one_closes() {
    let r = start_with(
        RelayConfig {
            max_listeners_per_user: 2,
            ..Default::default()
        },
        Arc::new(AllowAll),
    )
    .await;
    let first = connect(&r, "/flow/shop/web", "tok-alice").await;
    let _second = connect(&r, "/flow/shop/api", "tok-alice").await;
    let err = try_connect(&r, "/flow/shop/db", "tok-alice").await.unwrap_err();
    assert!(err.starts_with("429 too many: alice has 2 listeners open"), "{err}");
    // Another user is not affected.
    let _bob = connect(&r, "/flow/shop/db", "tok-bob").await;
    drop(first);
    let start = std::time::Instant::now();
    loop {
        match try_connect(&r, "/flow/shop/db", "tok-alice").await {
            Ok(_) => break,
            Err(e) => assert!(start.elapsed() < WAIT, "no slot back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
