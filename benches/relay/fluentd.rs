//! The real fluentd pushing through the Output the operator generates.

use crate::harness::{big_queues, record, relay_with, TOKEN};
use crate::measure::{cpu_by_side, process_cpu_secs};
use futures::StreamExt;
use log_socket::auth::{AllowAll, IngestAuth};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{fluentd, render};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub struct FluentdFigures {
    pub records_per_s: f64,
    pub record_bytes: usize,
    pub fluentd_cpu_percent: f64,
    pub relay_cpu_us: f64,
}

/// The real fluentd (one worker) posting a `sample` source as fast as it can through the
/// Output the operator generates (per-flow credential, its buffer settings) into the relay,
/// one listener counting: records/s delivered over `secs`, after a warm-up.
pub async fn fluentd_throughput(secs: u64) -> Option<FluentdFigures> {
    fluentd::find()?;
    let keys = Arc::new(
        log_socket::auth::ingest_keys::IngestKeys::from_keys(&["bench-key-0123456789abcdef0123456789abcdef"]).unwrap(),
    );
    let b = relay_with(
        big_queues(),
        Arc::new(AllowAll),
        IngestAuth::per_flow(keys.clone()),
        None,
    )
    .await;
    let spec = render::generated_output_spec(&format!("http://{}", b.ingest), Some(keys), "Flow", None, None, None);
    let output = render::http_output(&spec, "flow:shop:web:output:shop:logsocket-flow-web");

    // A record as the other parts send (without the send time), offered at 100k/s: more than
    // one Ruby worker formats, so what arrives is what fluentd manages.
    let sample = record(1, 0, "allow");
    let dir = std::env::temp_dir().join(format!("log-socket-bench-fluentd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let conf = format!(
        "{system}<source>\n  @type sample\n  tag kubernetes.web\n  rate 1000\n  size 100\n  sample {sample}\n</source>\n\
         <match kubernetes.**>\n{output}</match>\n<label @FLUENT_LOG>\n  <match fluent.**>\n    @type null\n  </match>\n</label>\n",
        system = fluentd::system(&dir)
    );

    let counted = Arc::new(AtomicU64::new(0));
    let count = counted.clone();
    let api = b.api;
    let listener = tokio::spawn(async move {
        let mut req = format!("ws://{api}/flow/shop/web").into_client_request().unwrap();
        req.headers_mut().insert("x-authorization", TOKEN.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                if t.as_str().starts_with(r#"{"type":"record""#) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let mut f = fluentd::Fluentd::start(&dir, &conf)?;
    let started = Instant::now();
    while counted.load(Ordering::Relaxed) == 0 {
        if started.elapsed() > Duration::from_secs(60) || !f.running() {
            println!("fluentd: nothing arrived; its log:\n{}", f.log());
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (n0, fcpu0, relay0, t0) = (
        counted.load(Ordering::Relaxed),
        process_cpu_secs(f.pid()),
        cpu_by_side().0,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (n1, fcpu1, relay1, elapsed) = (
        counted.load(Ordering::Relaxed),
        process_cpu_secs(f.pid()),
        cpu_by_side().0,
        t0.elapsed().as_secs_f64(),
    );
    f.stop(Duration::from_secs(5)).await;
    listener.abort();
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let records = (n1 - n0).max(1) as f64;
    Some(FluentdFigures {
        records_per_s: records / elapsed,
        record_bytes: sample.len(),
        fluentd_cpu_percent: 100.0 * (fcpu1 - fcpu0) / elapsed,
        relay_cpu_us: (relay1 - relay0) * 1e6 / records,
    })
}
