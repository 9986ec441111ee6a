//! Latency under open-loop load, with the machine's own stalls alongside.

use crate::harness::{batch, listen, relay, wait_ready, Poster};
use crate::measure::{percentile, rss_kb, Hiccups};
use log_socket::auth::AllowAll;
use log_socket::relay::RelayConfig;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Open-loop load at `rate` records/s for a second of warm-up and then `secs`: batches are sent
/// on a fixed schedule, and latency counts from the scheduled time, so a stalled relay cannot
/// hide its stall (no coordinated omission).
pub async fn latency(rate: u64, secs: u64, with_slow_listener: bool) -> Latency {
    let b = relay(RelayConfig::default(), Arc::new(AllowAll)).await;
    let hiccups = Hiccups::start();
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let total = rate * (secs + 1);
    let fast = tokio::spawn(listen(
        b.api,
        "/flow/shop/web".into(),
        total,
        origin,
        true,
        None,
        ready.clone(),
    ));
    let slow = with_slow_listener.then(|| {
        // Reads at about 1 % of the offered rate.
        let pause = Duration::from_nanos(1_000_000_000 / (rate / 100).max(1));
        tokio::spawn(listen(
            b.api,
            "/flow/shop/web".into(),
            u64::MAX,
            origin,
            false,
            Some(pause),
            ready.clone(),
        ))
    });
    wait_ready(&ready, if with_slow_listener { 2 } else { 1 }).await;
    // Batches of 100 (or fewer at low rates) every `interval`.
    let per_batch = (rate / 100).clamp(1, 100);
    let interval = Duration::from_nanos(1_000_000_000 * per_batch / rate);
    let batches = total / per_batch;
    let mut posters = vec![
        Poster::new(b.ingest).await,
        Poster::new(b.ingest).await,
        Poster::new(b.ingest).await,
        Poster::new(b.ingest).await,
    ];
    let (tx, rx) = async_channel(posters.len());
    // Several connections, so one slow response does not delay the next scheduled batch.
    let mut workers = vec![];
    for mut p in posters.drain(..) {
        let rx = rx.clone();
        workers.push(tokio::spawn(async move {
            while let Ok((n, scheduled_ns)) = rx.recv().await {
                let body = batch(n * per_batch, per_batch as usize, scheduled_ns, false);
                p.post("/flow/shop/web", &body).await;
            }
        }));
    }
    // The schedule runs on its own thread with the OS's sleep: tokio's timer has a 1 ms
    // resolution, which would add up to 1 ms of the load generator's own to every latency.
    let scheduler = std::thread::spawn(move || {
        let start = Instant::now();
        for n in 0..batches {
            let due = start + interval * n as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let scheduled = (due - origin).as_nanos() as u64;
            tx.blocking_send((n, scheduled)).unwrap();
        }
    });
    for w in workers {
        w.await.unwrap();
    }
    tokio::task::spawn_blocking(move || scheduler.join().unwrap())
        .await
        .unwrap();
    let mut seen = fast.await.unwrap();
    let hiccups = hiccups.stop();
    let rss = rss_kb();
    if let Some(s) = slow {
        s.abort();
    }
    b.stop().await;
    // The first second warms up (fresh connections, heap, buffers): reported as its worst
    // case, and left out of the percentiles, which describe the steady state.
    let warm_up = (rate as usize).min(seen.latencies_ns.len());
    let first_second_max = seen.latencies_ns[..warm_up].iter().max().copied().unwrap_or(0) as f64 / 1e6;
    let mut l = seen.latencies_ns.split_off(warm_up);
    l.sort_unstable();
    Latency {
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
        p999: percentile(&l, 0.999),
        first_second_max,
        received: seen.records,
        rss_kb: rss,
        stalls: hiccups,
    }
}

pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub first_second_max: f64,
    pub received: u64,
    pub rss_kb: u64,
    /// The machine's own p99 and p99.9 wake-up delay during the run (see [`Hiccups`]).
    pub stalls: (f64, f64),
}

/// A small multi-consumer channel over tokio's mpsc (one receiver shared behind a mutex).
pub fn async_channel(cap: usize) -> (tokio::sync::mpsc::Sender<(u64, u64)>, SharedRx) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap * 4);
    (tx, SharedRx(Arc::new(tokio::sync::Mutex::new(rx))))
}

#[derive(Clone)]
pub struct SharedRx(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(u64, u64)>>>);

impl SharedRx {
    pub async fn recv(&self) -> Result<(u64, u64), ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
