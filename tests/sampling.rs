//! A listener's `rate` against a real relay: sampled at the relay in short windows with a fair
//! share per pod, every record left out accounted per pod. The sampled listener is an
//! independent client (Python's `websockets`, Debian's python3-websockets), next to a listener
//! without `rate` that must get everything.

use futures::StreamExt;
use log_socket::auth::tokens::StaticTokens;
use log_socket::auth::{AllowAll, Authorizer, Decision, Identity};
use log_socket::protocol::Meta;
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::relay::*;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

async fn relay_with(authorizer: Arc<dyn Authorizer>) -> TestRelay {
    let parts = Parts {
        authenticator: Arc::new(StaticTokens::parse("tok-alice,alice\n").unwrap()),
        authorizer,
        sessions: Arc::new(NoSessions),
        ingest_auth: ingest_auth(),
    };
    start_relay(RelayConfig::default(), parts).await
}

/// The independent client: reads frames until the stream has been quiet for 2 s after its
/// first record, then prints what it got per second (from its first record), and the counts of
/// the other frames.
const CLIENT: &str = r#"
import asyncio, json, sys, time
import websockets

async def main(url):
    per_second, delivered, sampled, pods_sampled, other = {}, 0, 0, {}, {}
    start = None
    headers = {"X-Authorization": "tok-alice"}
    # websockets 14 renamed the argument.
    named = "additional_headers" if int(websockets.__version__.split(".")[0]) >= 14 else "extra_headers"
    async with websockets.connect(url, subprotocols=["logsocket.v1"], max_size=1 << 20,
                                  **{named: headers}) as ws:
        print(json.dumps({"connected": True}), flush=True)
        while True:
            try:
                text = await asyncio.wait_for(ws.recv(), timeout=None if start is None else 2.0)
            except asyncio.TimeoutError:
                break
            f = json.loads(text)
            now = time.monotonic()
            if f["type"] == "record":
                if start is None:
                    start = now
                second = per_second.setdefault(str(int(now - start)), {"n": 0, "pods": []})
                second["n"] += 1
                pod = f["record"]["kubernetes"]["pod_name"]
                if pod not in second["pods"]:
                    second["pods"].append(pod)
                delivered += 1
            elif f["type"] == "dropped" and f["reason"] == "sampled":
                assert f["count"] == sum(f["pods"].values()), f
                sampled += f["count"]
                for pod, n in f["pods"].items():
                    pods_sampled[pod] = pods_sampled.get(pod, 0) + n
            elif f["type"] in ("dropped", "denied"):
                key = f["type"] + ":" + f.get("reason", "")
                other[key] = other.get(key, 0) + (f.get("count") or 0)
    print(json.dumps({"per_second": per_second, "delivered": delivered, "sampled": sampled,
                      "pods_sampled": pods_sampled, "other": other}), flush=True)

asyncio.run(main(sys.argv[1]))
"#;

/// Start the Python client on `path` of `r`; returns once it is connected (the tap is open),
/// with its last line (what it got) to come.
async fn python_client(
    r: &TestRelay,
    path: &str,
) -> Option<(tokio::process::Child, tokio::sync::oneshot::Receiver<String>)> {
    let python = std::path::Path::new("/usr/bin/python3");
    let has = std::process::Command::new(python)
        .args(["-c", "import websockets"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        testkit::skip::skipped("no python3-websockets (apt-get install python3-websockets)");
        return None;
    }
    let mut child = tokio::process::Command::new(python)
        .args(["-c", CLIENT, &format!("ws://{}{path}", r.api)])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    assert!(
        matches!(&first, Ok(Ok(Some(l))) if l.contains("connected")),
        "{first:?}"
    );
    // Hand the rest of stdout back.
    child.stdout = None;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut last = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            last = l;
        }
        let _ = tx.send(last);
    });
    Some((child, rx))
}

/// One ingest batch of `n` records: 90 % from `noisy-0`, the rest spread over nine quiet pods.
fn batch(n: usize) -> String {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let pod = match i % 10 {
                0 => format!("quiet-{}", (i / 10) % 9 + 1),
                _ => "noisy-0".to_owned(),
            };
            record(&pod, &format!("line {i}"))
        })
        .collect();
    array(&records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_rate_100_gets_about_100_a_second_from_every_pod_and_every_other_record_is_accounted() {
    let r = relay_with(Arc::new(AllowAll)).await;
    let Some((mut sampled, receiver)) = python_client(&r, "/flow/shop/web?rate=100").await else {
        return;
    };
    // The listener without `rate`, next to it: counts record frames without parsing them.
    let mut everything = connect(&r, "/flow/shop/web", "tok-alice").await;
    let unsampled = tokio::spawn(async move {
        let (mut records, mut dropped) = (0u64, 0u64);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(3), everything.next()).await {
            if let Message::Text(t) = msg {
                if t.as_str().starts_with(r#"{"type":"record""#) {
                    records += 1;
                } else if t.as_str().contains(r#""type":"dropped""#) {
                    dropped += serde_json::from_str::<Value>(t.as_str()).unwrap()["count"]
                        .as_u64()
                        .unwrap_or(0);
                }
            }
        }
        (records, dropped)
    });

    // 20 000 records a second for 30 s: a batch of 1 000 every 50 ms.
    let body = batch(1000);
    let mut posted = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        tick.tick().await;
        let (code, text) = post(&r, "/flow/shop/web", &body).await;
        assert_eq!(code, 200, "{text}");
        posted += 1000;
    }
    let rate_in = posted as f64 / started.elapsed().as_secs_f64();

    let status = tokio::time::timeout(Duration::from_secs(30), sampled.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{status:?}");
    let result: Value = serde_json::from_str(&receiver.await.unwrap()).unwrap();
    let delivered = result["delivered"].as_u64().unwrap();
    let left_out = result["sampled"].as_u64().unwrap();
    let slow: u64 = result["other"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    // Exact accounting: what it got, what sampling left out and any other drop.
    assert_eq!(delivered + left_out + slow, posted, "{result}");
    // About 100 a second, every pod represented each second (the first and last seconds are
    // partial).
    let per_second = result["per_second"].as_object().unwrap();
    let full: Vec<&Value> = (1..28).filter_map(|s| per_second.get(&s.to_string())).collect();
    assert!(full.len() >= 26, "{per_second:?}");
    for second in &full {
        let n = second["n"].as_u64().unwrap();
        assert!(
            (95..=105).contains(&n),
            "{n} records in a second (input {rate_in:.0}/s): {second}"
        );
        assert_eq!(second["pods"].as_array().unwrap().len(), 10, "every pod: {second}");
    }
    // The noisy pod is sampled hardest, and each pod's left-out count is reported.
    let pods: BTreeMap<String, u64> = serde_json::from_value(result["pods_sampled"].clone()).unwrap();
    assert_eq!(pods.len(), 10, "{pods:?}");
    assert!(pods["shop/noisy-0"] > 10 * pods["shop/quiet-1"], "{pods:?}");

    // The listener without `rate` got every record.
    let (records, dropped) = unsampled.await.unwrap();
    assert_eq!((records, dropped), (posted, 0), "the unsampled listener");
}

/// Denies records of pods named `secret-…`.
struct DenySecret;
impl Authorizer for DenySecret {
    fn decide(&self, _: &Identity, record: &Meta) -> Decision {
        match record.pod().unwrap_or("").starts_with("secret") {
            true => Decision::Deny,
            false => Decision::Allow,
        }
    }
}

#[tokio::test]
async fn authorization_and_filters_come_before_sampling_so_only_wanted_records_are_counted() {
    let r = relay_with(Arc::new(DenySecret)).await;
    let mut ws = connect(&r, "/flow/shop/web?rate=10&grep=keep", "tok-alice").await;
    let mut records = vec![];
    for i in 0..300 {
        let pod = ["web-1", "web-2", "secret-0"][i % 3];
        let message = if i % 2 == 0 {
            format!("keep {i}")
        } else {
            format!("skip {i}")
        };
        records.push(record(pod, &message));
    }
    let wanted = records
        .iter()
        .filter(|r| !r["kubernetes"]["pod_name"].as_str().unwrap().starts_with("secret"))
        .filter(|r| r["message"].as_str().unwrap().starts_with("keep"))
        .count() as u64;
    let denied_expected = 100;
    for chunk in records.chunks(50) {
        assert_eq!(post(&r, "/flow/shop/web", &array(chunk)).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut delivered, mut left_out, mut denied) = (0u64, 0u64, 0u64);
    let mut pods_left_out: BTreeMap<String, u64> = BTreeMap::new();
    while delivered + left_out < wanted || denied < denied_expected {
        let f = next(&mut ws).await;
        match (f["type"].as_str(), f["reason"].as_str()) {
            (Some("record"), _) => {
                let message = f["record"]["message"].as_str().unwrap();
                assert!(message.starts_with("keep"), "the filter first: {f}");
                assert!(!f["record"]["kubernetes"]["pod_name"]
                    .as_str()
                    .unwrap()
                    .starts_with("secret"));
                delivered += 1;
            }
            (Some("dropped"), Some("sampled")) => {
                left_out += f["count"].as_u64().unwrap();
                for (pod, n) in f["pods"].as_object().unwrap() {
                    *pods_left_out.entry(pod.clone()).or_default() += n.as_u64().unwrap();
                }
            }
            (Some("denied"), _) => denied += f["count"].as_u64().unwrap(),
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert_eq!((delivered + left_out, denied), (wanted, denied_expected));
    assert!(
        left_out > 0 && delivered <= 30,
        "10 a second over about 3 s: {delivered}"
    );
    // Only records the listener may read and asked for are sampled, and named.
    assert!(
        pods_left_out.keys().all(|p| p.starts_with("shop/web-")),
        "{pods_left_out:?}"
    );
    assert_eq!(pods_left_out.values().sum::<u64>(), left_out);
    // Nothing more is owed.
    assert!(tokio::time::timeout(Duration::from_millis(500), next(&mut ws))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_a_second_as_fluentd_posts_them_give_the_rate_paced_over_each_second() {
    let r = relay_with(Arc::new(AllowAll)).await;
    let mut ws = connect(&r, "/flow/shop/web?rate=100", "tok-alice").await;
    // fluentd's generated output flushes once a second: 2 000 records arrive at once.
    let body = batch(2000);
    let poster = {
        let (ingest, per_flow) = (r.ingest, r.per_flow);
        tokio::spawn(async move {
            let r = Api { ingest, per_flow };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for _ in 0..6 {
                tick.tick().await;
                assert_eq!(r.post(&body).await, 200);
            }
        })
    };
    let start = Instant::now();
    let (mut per_second, mut left_out) = (BTreeMap::<u64, u64>::new(), 0u64);
    while per_second.values().sum::<u64>() + left_out < 12_000 {
        let f = next(&mut ws).await;
        match (f["type"].as_str(), f["reason"].as_str()) {
            (Some("record"), _) => *per_second.entry(start.elapsed().as_secs()).or_default() += 1,
            (Some("dropped"), Some("sampled")) => left_out += f["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    poster.await.unwrap();
    // After the first second (the rate's credit builds from nothing): about 100 a second,
    // although each second's records came in one batch.
    for second in 2..6 {
        let n = per_second.get(&second).copied().unwrap_or(0);
        assert!((85..=115).contains(&n), "second {second}: {n}: {per_second:?}");
    }
}

/// Posts to a relay's ingest from a task.
struct Api {
    ingest: std::net::SocketAddr,
    per_flow: bool,
}

impl Api {
    async fn post(&self, body: &str) -> u16 {
        let auth = match self.per_flow {
            true => flow_auth("/flow/shop/web"),
            false => INGEST_AUTH.to_owned(),
        };
        request(
            self.ingest,
            "POST",
            "/flow/shop/web",
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
        .await
        .0
    }
}

#[tokio::test]
async fn a_rate_out_of_range_is_refused_with_what_is_allowed() {
    let r = relay_with(Arc::new(AllowAll)).await;
    for (query, says) in [("rate=0", "from 1 to 1000000"), ("rate=lots", "whole number")] {
        let err = try_connect(&r, &format!("/flow/shop/web?{query}"), "tok-alice")
            .await
            .unwrap_err();
        assert!(err.starts_with("400") && err.contains(says), "{query}: {err}");
    }
}
