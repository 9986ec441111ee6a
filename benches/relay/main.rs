//! `make bench` (`cargo bench --bench relay`): the relay over real loopback sockets, measured
//! against the physical limits of the same machine in the same run. Prints a table; asserts
//! nothing about time. See BENCHMARKS.md for results and how to read them.
//!
//! Every workload runs the relay in this process, on its own runtime (2 worker threads named
//! `relay`, so their CPU time can be told apart), sharing the machine's cores with the load
//! generator and the listeners (the `client` runtime), posts fluentd-shaped batches over
//! HTTP/1.1 keep-alive connections, and reads WebSocket frames as k8stail does, checking the
//! sequence numbers so that nothing is lost silently.
//!
//! Parts: `memory`, `control-plane`, `first-minute`, `filters`, `sampling`, `fluentd`, `bus`, `bus-recovery`, `throughput`, `latency` (all
//! by default); `one` (only the single-listener throughput) and `parse` (only the record parser)
//! are for profiling.
//!
//! This file reads the arguments, runs the parts asked for and prints their tables. The parts
//! are modules: [`memory`], [`control_plane`], [`throughput`] (with `filters`), [`fluentd`],
//! [`bus`], [`latency`], and [`reference`] (the machine's own limits, before `throughput`);
//! [`harness`] is the relay under bench and its clients, [`measure`] what is read of the process
//! and the machine.

mod bus;
mod control_plane;
mod first_minute;
mod fluentd;
mod harness;
mod latency;
mod measure;
mod memory;
mod reference;
mod throughput;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use harness::{big_queues, record, BATCH};
use latency::{latency, Latency};
use log_socket::auth::labels::LabelPolicy;
use log_socket::auth::AllowAll;
use measure::{cpu_counters, steal_since};
use memory::{full_replay, idle_listeners};
use reference::{json_parse, json_validate, raw_forward, raw_tcp, reference_parse};
use std::sync::Arc;
use throughput::{ingest_with_listeners, throughput, Listeners, Throughput};

fn main() {
    // RUST_LOG=log_socket=debug shows what the relay and the controller do during a run.
    if std::env::var_os("RUST_LOG").is_some() {
        log_socket::telemetry::init_tracing("warn", log_socket::telemetry::LogFormat::Text);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!("log-socket relay benchmark: {cpus} CPUs ({model}), 2 tokio workers, loopback\n");
    let rec_len = record(1, 0, "allow").len();
    println!("record: {rec_len} bytes (containerd-shaped), batches of {BATCH} as a JSON array\n");

    // `cargo bench --bench relay -- latency memory` runs only those parts.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let part = |name: &str| only.is_empty() || only.iter().any(|o| o == name);

    // 6. Memory, first, before the other workloads grow the heap.
    if part("memory") {
        let (before, after) = idle_listeners(1000).await;
        println!(
            "1000 idle listeners: RSS {:.0} → {:.0} MiB (+{:.1} KiB per listener, client side included)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after.saturating_sub(before)) as f64 / 1000.0
        );
        let (before, after) = full_replay(100).await;
        println!(
            "100 taps with full replay buffers (1000 records each, about 0.7 MB per tap): RSS {:.0} → {:.0} MiB\n",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    // 7. The control plane, against the real API server (needs `make test-env`).
    if part("control-plane") {
        let result = control_plane::control_plane_bench(5).await;
        // Stopped now, not at exit: an idle API server still takes CPU from the parts below.
        testkit::control_plane::teardown();
        if let Err(e) = result {
            println!("control plane: failed ({e})\n");
        }
    }
    // A tap's first minute: pre-flow lines, stages, warm taps, the reload budget (#28).
    if part("first-minute") {
        let result = first_minute::first_minute_bench().await;
        testkit::control_plane::teardown();
        if let Err(e) = result {
            println!("first minute: failed ({e})\n");
        }
    }
    // Listener filters never run on the ingest path: ingest with 100 listeners each holding a
    // 1000-character regex (matching nothing, so the listeners only filter), against one.
    if part("filters") {
        let total = 200_000;
        let alone = ingest_with_listeners(1, Listeners::All, total).await;
        let plain = ingest_with_listeners(100, Listeners::All, total).await;
        let regex = ingest_with_listeners(100, Listeners::Filtered, total).await;
        println!("| ingest, {total} records in batches of {BATCH} | records/s | vs one listener |\n|---|---|---|");
        println!("| one listener, no filter | {alone:.0} | 1.00 |");
        println!(
            "| 100 listeners, no filter (each gets every record) | {plain:.0} | {:.2} |",
            plain / alone
        );
        println!(
            "| 100 listeners, each `grep` a 1000-character regex | {regex:.0} | {:.2} |\n",
            regex / alone
        );
    }
    // Sampling (`rate`) runs in each listener's task, after its queue: 100 listeners at
    // `rate=100` must cost ingest less than 100 listeners taking every record, not more.
    if part("sampling") {
        let total = 200_000;
        let plain = ingest_with_listeners(100, Listeners::All, total).await;
        let sampled = ingest_with_listeners(100, Listeners::Sampled(100), total).await;
        println!("| ingest, {total} records in batches of {BATCH} | records/s | vs unsampled |\n|---|---|---|");
        println!("| 100 listeners, every record | {plain:.0} | 1.00 |");
        println!(
            "| 100 listeners, `rate=100` (sampled at the relay) | {sampled:.0} | {:.2} |\n",
            sampled / plain
        );
    }
    // The real fluentd pushing through the generated Output, next to the relay alone.
    if part("fluentd") {
        match fluentd::fluentd_throughput(20).await {
            None => println!(
                "fluentd: skipped (set LOG_SOCKET_FLUENTD to a fluentd command, e.g. ../shared/tools/fluentd, or put fluentd on PATH)\n"
            ),
            Some(f) => {
                let alone = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 300_000, false).await;
                println!("| into one flow, one listener | records/s | sender CPU | relay CPU µs/record |\n|---|---|---|---|");
                println!(
                    "| fluentd 1.16 (one worker: `sample` source, the generated http Output, {} byte records) → relay | {:.0} | fluentd {:.0} % of a core | {:.2} |",
                    f.record_bytes, f.records_per_s, f.fluentd_cpu_percent, f.relay_cpu_us
                );
                println!(
                    "| the bench's load generator → relay (the relay alone, {rec_len} byte records) | {:.0} | generator + listener {:.2} µs/record | {:.2} |",
                    alone.records_per_s, alone.client_cpu_us, alone.relay_cpu_us
                );
                println!(
                    "\nThe relay takes {:.1}× what one fluentd worker sends; relaying fluentd's records used {:.1} % of a core.\n",
                    alone.records_per_s / f.records_per_s,
                    f.records_per_s * f.relay_cpu_us / 1e4
                );
            }
        }
    }
    // The nats bus (a real nats-server with JetStream on the same cores) next to the embedded one.
    if part("bus") {
        bus::bus_bench().await;
    }
    // How soon records flow again after NATS comes back.
    if part("bus-recovery") {
        bus::recovery_bench().await;
    }
    // `-- parse`: only the relay's record parser, to profile it.
    if only.iter().any(|o| o == "parse") {
        let mbs = reference::relay_parse(5_000_000);
        println!("the relay's record parser: {mbs:.0} MB/s");
        return;
    }
    if !part("throughput") && !part("latency") && !part("one") {
        return;
    }

    // 8. Reference figures.
    let raw = raw_tcp(2 << 30).await;
    let (forward, forward_cpu_per_byte) = raw_forward(2 << 30).await;
    let (parse_rps, parse_mbs) = json_parse(400_000);
    let validate = json_validate(1_000_000);
    let (relay_parse, reference_parse) = (reference::relay_parse(1_000_000), reference_parse(1_000_000));
    let per_record = |mbs: f64| mbs * 1e6 / rec_len as f64;
    println!("| reference | figure |\n|---|---|");
    println!("| raw loopback TCP copy | {raw:.0} MB/s |");
    println!(
        "| raw loopback TCP through a forwarder (two hops, as ingest → relay → listener) | {forward:.0} MB/s ({:.0} records/s of {rec_len} bytes) |",
        per_record(forward)
    );
    println!(
        "| serde_json validation of the records, building nothing (1 core) | {validate:.0} MB/s ({:.0} records/s) |",
        per_record(validate)
    );
    println!(
        "| serde_json parse of the records into values (1 core) | {parse_rps:.0} records/s, {parse_mbs:.0} MB/s |"
    );
    println!(
        "| the relay's record parser: validation + routing fields, one pass (1 core) | {relay_parse:.0} MB/s ({:.0} records/s) |",
        per_record(relay_parse)
    );
    println!(
        "| its reference parser, for errors and corner cases (1 core) | {reference_parse:.0} MB/s ({:.0} records/s) |",
        per_record(reference_parse)
    );
    // A relay must at least move each record over both hops and validate it once. Their CPU
    // costs per record, added, spread over the machine's cores, bound what any relay reaches.
    let floor_cpu = forward_cpu_per_byte * rec_len as f64 + 1.0 / per_record(validate);
    println!(
        "| ceiling: two-hop copy ({:.2} µs CPU/record) + validation ({:.2} µs CPU/record) on {cpus} cores | {:.0} records/s |\n",
        forward_cpu_per_byte * rec_len as f64 * 1e6,
        1e6 / per_record(validate),
        cpus as f64 / floor_cpu
    );
    let ceiling = cpus as f64 / floor_cpu;

    // `-- one`: only ingest → 1 listener, the figure to profile (`perf record` around it).
    if only.iter().any(|o| o == "one") {
        let one = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 1_000_000, false).await;
        println!(
            "ingest → 1 listener: {:.0} records/s, {:.1} MB/s, {:.1} % of raw loopback TCP, {:.1} % of the raw forwarder, {:.1} % of the ceiling, {} silent gaps",
            one.records_per_s,
            one.mb_per_s,
            100.0 * one.mb_per_s / raw,
            100.0 * one.mb_per_s / forward,
            100.0 * one.records_per_s / ceiling,
            one.silent_gaps
        );
        println!(
            "CPU per record: relay {:.2} µs, load generator + listener {:.2} µs; the relay alone on {cpus} cores: {:.0} records/s\n",
            one.relay_cpu_us,
            one.client_cpu_us,
            cpus as f64 * 1e6 / one.relay_cpu_us
        );
    }

    // 1, 2, 5. Throughput.
    if part("throughput") {
        let stolen = cpu_counters();
        println!("| workload | records/s in | MB/s in | records/s delivered | vs raw TCP | relay CPU µs/record | clients CPU µs/record | silent gaps | dropped |\n|---|---|---|---|---|---|---|---|---|");
        let row = |name: &str, t: &Throughput| {
            println!(
                "| {name} | {:.0} | {:.1} | {:.0} | {:.1} % | {:.2} | {:.2} | {} | {} |",
                t.records_per_s,
                t.mb_per_s,
                t.delivered_per_s,
                100.0 * t.mb_per_s / raw,
                t.relay_cpu_us,
                t.client_cpu_us,
                t.silent_gaps,
                t.dropped
            )
        };
        let one = throughput(big_queues(), Arc::new(AllowAll), 1, 1, 400_000, false).await;
        row("ingest → 1 listener", &one);
        let mut many = vec![];
        for (n, total) in [(10usize, 200_000u64), (100, 50_000), (1000, 10_000)] {
            let t = throughput(big_queues(), Arc::new(AllowAll), 1, n, total, false).await;
            row(&format!("ingest → {n} listeners, one flow"), &t);
            many.push((n, t));
        }
        let spread = throughput(big_queues(), Arc::new(AllowAll), 100, 1, 200_000, false).await;
        row("100 flows × 1 listener", &spread);
        let rbac = throughput(big_queues(), Arc::new(LabelPolicy::default()), 1, 1, 400_000, true).await;
        row("labels policy, half denied", &rbac);
        println!();
        for (n, t) in &many {
            println!(
                "cost of {n} listeners vs 1 (time per record in): {:.2}×",
                one.records_per_s / t.records_per_s
            );
        }
        println!(
            "relay throughput (ingest → 1 listener) as a share of the ceiling: {:.1} %; of raw loopback TCP: {:.1} %; of the raw two-hop forwarder: {:.1} %; of single-core JSON validation: {:.1} %; of single-core parsing into values: {:.1} %\n",
            100.0 * one.records_per_s / ceiling,
            100.0 * one.mb_per_s / raw,
            100.0 * one.mb_per_s / forward,
            100.0 * one.mb_per_s / validate,
            100.0 * one.records_per_s / parse_rps
        );
        // Every listener's copy of a record crosses loopback once more: a fan-out to n
        // listeners costs at least n + 1 hops (one in, n out), each half the raw two-hop
        // forwarder's CPU, whatever the relay does.
        let hop_us = forward_cpu_per_byte * rec_len as f64 * 1e6 / 2.0;
        let one_total = one.relay_cpu_us + one.client_cpu_us;
        for (n, t) in &many {
            let floor = (*n as f64 + 1.0) * hop_us;
            let total = t.relay_cpu_us + t.client_cpu_us;
            println!(
                "{n} listeners: {total:.1} µs CPU per record in (relay + listeners), {:.1}× one listener's {one_total:.2} µs; the loopback copies alone need {floor:.1} µs ({:.1}×), {:.0} % of what was spent",
                total / one_total,
                floor / one_total,
                100.0 * floor / total
            );
        }
        println!();
        println!(
            "CPU time taken by the hypervisor (steal) during the throughput part: {:.1} %\n",
            steal_since(stolen)
        );
    }

    // 3, 4. Latency, open loop.
    if part("latency") {
        let stolen = cpu_counters();
        println!("| offered load | p50 ms | p99 ms | p99.9 ms | first second, max ms | machine stalls p99 / p99.9 ms | received | RSS MiB |\n|---|---|---|---|---|---|---|---|");
        let row = |name: &str, l: &Latency| {
            println!(
                "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {} | {:.0} |",
                l.p50,
                l.p99,
                l.p999,
                l.first_second_max,
                l.stalls.0,
                l.stalls.1,
                l.received,
                l.rss_kb as f64 / 1024.0
            )
        };
        for rate in [10_000u64, 50_000, 200_000] {
            row(&format!("{rate} records/s"), &latency(rate, 5, false).await);
        }
        row(
            "50000 records/s + a listener reading 1 %",
            &latency(50_000, 5, true).await,
        );
        println!("\npercentiles over 5 s after a 1 s warm-up (its worst case in its own column); machine stalls: how late a thread that only sleeps 1 ms at a time wakes during the same row, the floor under any tail latency on this machine\n");
        println!(
            "CPU time taken by the hypervisor (steal) during the latency part: {:.1} %\n",
            steal_since(stolen)
        );
    }
}
