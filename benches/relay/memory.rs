//! Memory: idle listeners, full replay buffers.

use crate::harness::{batch, idle_listener, listen, relay, wait_ready, Poster, BATCH};
use crate::measure::rss_kb;
use log_socket::auth::AllowAll;
use log_socket::relay::RelayConfig;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle listeners: RSS growth per listener.
pub async fn idle_listeners(n: u64) -> (u64, u64) {
    let b = relay(RelayConfig::default(), Arc::new(AllowAll)).await;
    let before = rss_kb();
    let ready = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let listeners: Vec<_> = (0..n)
        .map(|i| idle_listener(b.api, format!("/flow/shop/idle{}", i % 10), origin, &ready))
        .collect();
    wait_ready(&ready, n).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kb();
    for l in listeners {
        l.abort();
    }
    b.stop().await;
    (before, after)
}

/// RSS with `taps` taps whose replay buffers are full.
pub async fn full_replay(taps: u64) -> (u64, u64) {
    let b = relay(RelayConfig::default(), Arc::new(AllowAll)).await;
    let before = rss_kb();
    let ready = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let mut ls = vec![];
    for t in 0..taps {
        ls.push(tokio::spawn(listen(
            b.api,
            format!("/flow/shop/r{t}"),
            2000,
            origin,
            false,
            None,
            ready.clone(),
        )));
    }
    wait_ready(&ready, taps).await;
    let body = batch(0, BATCH, 0, false);
    let mut p = Poster::new(b.ingest).await;
    for t in 0..taps {
        for _ in 0..4 {
            p.post(&format!("/flow/shop/r{t}"), &body).await;
        }
    }
    for l in ls {
        l.await.unwrap();
    }
    let after = rss_kb();
    b.stop().await;
    (before, after)
}
