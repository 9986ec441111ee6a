//! The nats bus (a real nats-server with JetStream on the same cores) next to the embedded one.

use crate::harness::{add_noise, batch, big_queues, listen, post_on_two_connections, relay_with, wait_ready, BATCH};
use crate::measure::{cpu_by_side, process_cpu_secs};
use crate::throughput::{throughput, throughput_on, Throughput};
use log_socket::auth::{AllowAll, IngestAuth};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Ingest → listeners through the embedded bus and through NATS JetStream, in one run.
pub async fn bus_bench() {
    let dir = std::env::temp_dir().join(format!("log-socket-bench-nats-{}", std::process::id()));
    let Some(server) = testkit::nats::Nats::start(&dir) else {
        println!("bus: skipped (no nats-server: apt-get install nats-server)\n");
        return;
    };
    let url = server.url();
    let row = |name: &str, t: &Throughput| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |",
            t.records_per_s, t.delivered_per_s, t.relay_cpu_us, t.client_cpu_us, t.silent_gaps, t.dropped
        );
    };
    println!("| bus (relay, nats-server and clients on the same cores) | records/s in | records/s delivered | relay CPU µs/record | clients CPU µs/record | silent gaps | dropped |\n|---|---|---|---|---|---|---|");
    let embedded = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false).await;
    row("embedded, 1 listener", &embedded);
    let nats = throughput_on(Some(&url), big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false, 0).await;
    row("nats (JetStream, file storage), 1 listener", &nats);
    let embedded_100 = throughput(big_queues(), Arc::new(AllowAll), 100, 1, 200_000, false).await;
    row("embedded, 100 flows × 1 listener", &embedded_100);
    let nats_100 = throughput_on(Some(&url), big_queues(), Arc::new(AllowAll), 100, 1, 200_000, false, 0).await;
    row("nats, 100 flows × 1 listener", &nats_100);
    // Records with 160 random hex digits each (about 4× compression on the bus, like real logs).
    const NOISE: usize = 160;
    let embedded_noisy = throughput_on(None, big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false, NOISE).await;
    row("embedded, 1 listener, records compressing ~4×", &embedded_noisy);
    let nats_noisy = throughput_on(
        Some(&url),
        big_queues(),
        Arc::new(AllowAll),
        1,
        1,
        400_000,
        false,
        NOISE,
    )
    .await;
    row("nats, 1 listener, records compressing ~4×", &nats_noisy);
    let nats_cpu = server.pid().map_or(0.0, process_cpu_secs);
    let ratio = |b: Vec<u8>| b.len() as f64 / lz4_flex::block::compress_prepend_size(&b).len() as f64;
    println!(
        "\nThe nats path delivers {:.2}× the embedded path's records/s to one listener ({:.2}× over 100 flows, {:.2}× with the noisy records); nats-server used {nats_cpu:.1} s of CPU in all. On the bus a batch of {BATCH} records compresses {:.1}× (LZ4), the noisy ones {:.1}×: nats-server's cost is per byte, so records that compress less cost it more.\n",
        nats.records_per_s / embedded.records_per_s,
        nats_100.records_per_s / embedded_100.records_per_s,
        nats_noisy.records_per_s / embedded_noisy.records_per_s,
        ratio(batch(0, BATCH, 0, false)),
        ratio(add_noise(batch(0, BATCH, 0, false), NOISE, 1)),
    );

    // What sealing costs: seal and open a batch of noisy records (compressed, as the bus
    // sends it) many times, on one core.
    let keys = testkit::nats::bus_keys();
    let body = lz4_flex::block::compress_prepend_size(&add_noise(batch(0, BATCH, 0, false), NOISE, 1));
    let subject = "logsocket.flow.shop.web";
    let rounds = 2_000;
    let started = Instant::now();
    let mut sealed = keys.seal(subject, "lz4", &body);
    for _ in 1..rounds {
        sealed = keys.seal(subject, "lz4", &body);
    }
    let seal_us = started.elapsed().as_secs_f64() * 1e6 / (rounds * BATCH) as f64;
    let started = Instant::now();
    for _ in 0..rounds {
        let opened = keys.open(
            subject,
            Some(&sealed.seal),
            Some(&sealed.id),
            "lz4",
            &sealed.payload,
            None,
        );
        assert!(opened.is_ok());
    }
    let open_us = started.elapsed().as_secs_f64() * 1e6 / (rounds * BATCH) as f64;
    let target = nats.records_per_s / embedded.records_per_s;
    println!(
        "Sealing (ChaCha20-Poly1305 under the bus key) costs {seal_us:.3} µs per record at ingest and opening {open_us:.3} µs per record at each following relay ({BATCH}-record batches of the noisy records, compressed). Target: the nats path, sealed, at ≥ 0.5× the embedded path's records/s to one listener: {target:.2}× ({}).\n",
        if target >= 0.5 { "met" } else { "not met" }
    );

    // The same 100 listeners of one flow on one relay, then split over two (both relays on the
    // same 2 cores, so this shows what a second replica costs, not what it scales to).
    println!("| 100 listeners of one flow, nats bus | records/s in | records/s delivered | relays' CPU µs per record in | per record delivered |\n|---|---|---|---|---|");
    for relays in [1, 2] {
        let t = spread(&url, relays, 100, 100_000).await;
        println!(
            "| on {relays} relay{} (ingest at the first) | {:.0} | {:.0} | {:.2} | {:.3} |",
            if relays > 1 { "s" } else { "" },
            t.records_per_s,
            t.delivered_per_s,
            t.relay_cpu_us,
            t.relay_cpu_us * t.records_per_s / t.delivered_per_s,
        );
    }
    println!();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `listeners` listeners of one flow spread round-robin over `relays` relays sharing one NATS,
/// `total` records posted to the first relay over two connections: until every listener has
/// every record.
pub async fn spread(url: &str, relays: usize, listeners: usize, total: u64) -> Throughput {
    let mut benches = vec![];
    for _ in 0..relays {
        benches.push(
            relay_with(
                big_queues(),
                Arc::new(AllowAll),
                IngestAuth::basic("fluentd", "s3cret"),
                Some(url),
            )
            .await,
        );
    }
    let path = format!("/flow/shop/spread{relays}");
    let origin = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..listeners)
        .map(|i| {
            tokio::spawn(listen(
                benches[i % relays].api,
                path.clone(),
                total,
                origin,
                false,
                None,
                ready.clone(),
            ))
        })
        .collect();
    wait_ready(&ready, listeners as u64).await;
    let jobs = (0..(total as usize).div_ceil(BATCH))
        .map(|i| {
            let body = batch((i * BATCH) as u64, BATCH.min(total as usize - i * BATCH), 0, false);
            (path.clone(), Arc::new(body))
        })
        .collect();
    let cpu_before = cpu_by_side();
    let start = Instant::now();
    post_on_two_connections(benches[0].ingest, jobs).await;
    let (mut gaps, mut dropped) = (0, 0);
    for t in tasks {
        let seen = t.await.unwrap();
        gaps += seen.silent_gaps;
        dropped += seen.dropped;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = cpu_by_side();
    for b in benches {
        b.stop().await;
    }
    Throughput {
        relay_cpu_us: (cpu_after.0 - cpu_before.0) * 1e6 / total as f64,
        client_cpu_us: (cpu_after.1 - cpu_before.1) * 1e6 / total as f64,
        records_per_s: total as f64 / secs,
        mb_per_s: 0.0,
        delivered_per_s: (total * listeners as u64) as f64 / secs,
        silent_gaps: gaps,
        dropped,
    }
}

/// How long after NATS comes back a listener gets records again: ingest at one relay, the
/// listener on another, NATS stopped and started (same store) three times.
pub async fn recovery_bench() {
    use crate::harness::{relay_with, TOKEN};
    use futures::StreamExt;
    use log_socket::auth::IngestAuth;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = std::env::temp_dir().join(format!("log-socket-bench-recovery-{}", std::process::id()));
    let Some(mut server) = testkit::nats::Nats::start(&dir) else {
        println!("bus recovery: skipped (no nats-server)\n");
        return;
    };
    let url = server.url();
    let auth = || IngestAuth::basic("fluentd", "s3cret");
    let a = relay_with(big_queues(), Arc::new(AllowAll), auth(), Some(&url)).await;
    let b = relay_with(big_queues(), Arc::new(AllowAll), auth(), Some(&url)).await;
    let path = "/flow/shop/web";
    // The listener reads on its own task and stamps each record's arrival.
    let (tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut req = format!("ws://{}{path}", b.api).into_client_request().unwrap();
    req.headers_mut().insert("x-authorization", TOKEN.parse().unwrap());
    req.headers_mut()
        .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
    let stream = tokio::net::TcpStream::connect(b.api).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text().is_ok_and(|t| t.contains(r#""type":"record""#)) && tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let body = batch(0, 10, 0, false);
    until_delivered(a.ingest, path, &body, &mut arrivals).await;
    println!("| NATS stopped for 2 s, then started again (same store) | NATS accepts connections after | ingest answers 200 again after | the listener (another relay) has records again after |\n|---|---|---|---|");
    for round in 1..=3 {
        server.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        server.restart();
        let up = started.elapsed();
        let (accepted, delivered) = until_delivered(a.ingest, path, &body, &mut arrivals).await;
        println!(
            "| round {round} | {:.0} ms | {:.0} ms | {:.0} ms |",
            up.as_secs_f64() * 1e3,
            (up + accepted).as_secs_f64() * 1e3,
            (up + delivered).as_secs_f64() * 1e3
        );
    }
    println!("\n(Target of #27: a listener gets records again within 5 s of NATS being back; counted from the start of nats-server, posting every 100 ms.)\n");
    reader.abort();
    a.stop().await;
    b.stop().await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Post `body` to `path` every 100 ms until the listener has a record: when ingest took one
/// again (200), and when the listener got it, from now.
async fn until_delivered(
    ingest: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
) -> (std::time::Duration, std::time::Duration) {
    use std::time::Duration;
    while arrivals.try_recv().is_ok() {}
    let started = Instant::now();
    let mut accepted = None;
    loop {
        let mut poster = crate::harness::Poster::new(ingest).await;
        if poster.post(path, body).await == 200 && accepted.is_none() {
            accepted = Some(started.elapsed());
        }
        if let Ok(Some(at)) = tokio::time::timeout(Duration::from_millis(100), arrivals.recv()).await {
            return (accepted.unwrap_or_default(), at.duration_since(started));
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no record within 2 minutes"
        );
    }
}
