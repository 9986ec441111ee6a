//! Throughput: records posted as fast as two keep-alive connections allow, until every listener
//! has every record; and ingest with many (filtering) listeners attached.

use crate::harness::{
    add_noise, batch, big_queues, idle_listener, listen, post_on_two_connections, relay, relay_with, wait_ready, BATCH,
};
use crate::measure::cpu_by_side;
use log_socket::auth::{AllowAll, Authorizer, IngestAuth};
use log_socket::relay::RelayConfig;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

pub struct Throughput {
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub delivered_per_s: f64,
    pub silent_gaps: u64,
    pub dropped: u64,
    /// CPU per record in, in µs: the relay's threads, and everything else in this process.
    pub relay_cpu_us: f64,
    pub client_cpu_us: f64,
}

/// Post `total` records to `flows` flows (round-robin), with `per_flow` listeners each, as fast
/// as two keep-alive connections allow; time until every listener has every record.
pub async fn throughput(
    config: RelayConfig,
    authorizer: Arc<dyn Authorizer>,
    flows: usize,
    per_flow: usize,
    total: u64,
    deny_half: bool,
) -> Throughput {
    throughput_on(None, config, authorizer, flows, per_flow, total, deny_half, 0).await
}

/// [`throughput`] on the embedded bus, or on the nats bus at `nats_url`, with `noise` random
/// characters added to each record (see [`add_noise`]).
#[allow(clippy::too_many_arguments)] // the bench's knobs, named at each call
pub async fn throughput_on(
    nats_url: Option<&str>,
    config: RelayConfig,
    authorizer: Arc<dyn Authorizer>,
    flows: usize,
    per_flow: usize,
    total: u64,
    deny_half: bool,
    noise: usize,
) -> Throughput {
    let b = relay_with(config, authorizer, IngestAuth::basic("fluentd", "s3cret"), nats_url).await;
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let per_flow_records = total / flows as u64;
    let mut listeners = vec![];
    for f in 0..flows {
        for _ in 0..per_flow {
            listeners.push(tokio::spawn(listen(
                b.api,
                format!("/flow/shop/web{f}"),
                if deny_half {
                    per_flow_records / 2
                } else {
                    per_flow_records
                },
                origin,
                false,
                None,
                ready.clone(),
            )));
        }
    }
    wait_ready(&ready, (flows * per_flow) as u64).await;
    let batches: Vec<Vec<u8>> = (0..(per_flow_records as usize).div_ceil(BATCH))
        .map(|i| {
            let b = batch(
                (i * BATCH) as u64,
                BATCH.min(per_flow_records as usize - i * BATCH),
                0,
                deny_half,
            );
            add_noise(b, noise, i as u64)
        })
        .collect();
    let body_bytes: u64 = batches.iter().map(|b| b.len() as u64).sum::<u64>() * flows as u64;
    let batches: Vec<Arc<Vec<u8>>> = batches.into_iter().map(Arc::new).collect();
    let jobs = (0..flows)
        .flat_map(|f| {
            batches
                .iter()
                .map(move |body| (format!("/flow/shop/web{f}"), body.clone()))
        })
        .collect();
    let cpu_before = cpu_by_side();
    let start = Instant::now();
    post_on_two_connections(b.ingest, jobs).await;
    let mut gaps = 0;
    let mut dropped = 0;
    for l in listeners {
        let seen = l.await.unwrap();
        gaps += seen.silent_gaps;
        dropped += seen.dropped;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = cpu_by_side();
    b.stop().await;
    Throughput {
        relay_cpu_us: (cpu_after.0 - cpu_before.0) * 1e6 / total as f64,
        client_cpu_us: (cpu_after.1 - cpu_before.1) * 1e6 / total as f64,
        records_per_s: total as f64 / secs,
        mb_per_s: body_bytes as f64 / secs / 1e6,
        delivered_per_s: (total * per_flow as u64) as f64 / secs,
        silent_gaps: gaps,
        dropped,
    }
}

/// How the listeners of [`ingest_with_listeners`] listen.
pub enum Listeners {
    /// Every record.
    All,
    /// With a 1000-character `grep` (alternatives that match no record: they only filter).
    Filtered,
    /// With `rate=N` (sampled at the relay).
    Sampled(u32),
}

/// Ingest records/s into one flow with `listeners` listeners attached, listening as `how`.
pub async fn ingest_with_listeners(listeners: usize, how: Listeners, total: u64) -> f64 {
    let b = relay(big_queues(), Arc::new(AllowAll)).await;
    let words: Vec<String> = (0..143).map(|i| format!("zq{i:04}")).collect();
    let regex = words.join("|");
    assert!(regex.len() >= 1000);
    let path = match how {
        Listeners::Filtered => format!("/flow/shop/web?grep={}", regex.replace('|', "%7C")),
        Listeners::All => "/flow/shop/web".to_owned(),
        Listeners::Sampled(rate) => format!("/flow/shop/web?rate={rate}"),
    };
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..listeners)
        .map(|_| idle_listener(b.api, path.clone(), origin, &ready))
        .collect();
    wait_ready(&ready, listeners as u64).await;
    let batches: Vec<Vec<u8>> = (0..(total as usize).div_ceil(BATCH))
        .map(|i| batch((i * BATCH) as u64, BATCH, 0, false))
        .collect();
    let jobs = batches
        .into_iter()
        .map(|body| ("/flow/shop/web".to_owned(), Arc::new(body)))
        .collect();
    let start = Instant::now();
    post_on_two_connections(b.ingest, jobs).await;
    let secs = start.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    b.stop().await;
    total as f64 / secs
}
