//! Reference figures, the physical limits of the same machine: raw loopback TCP, a forwarder,
//! JSON validation and parsing, the relay's own record parser.

use crate::harness::{batch, BATCH};
use crate::measure::cpu_secs;
use log_socket::relay::record;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A receiver on a fresh loopback port that reads and discards `bytes` (or until EOF).
pub async fn sink(bytes: u64) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
    });
    (addr, rx)
}

/// Write `bytes` to `s` in 64 KiB chunks.
pub async fn send_chunks(s: &mut TcpStream, bytes: u64) {
    let chunk = vec![7u8; 64 << 10];
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
}

/// Raw loopback TCP: one sender writing 64 KiB chunks, one receiver reading. MB/s.
pub async fn raw_tcp(bytes: u64) -> f64 {
    let (addr, rx) = sink(bytes).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    send_chunks(&mut s, bytes).await;
    rx.await.unwrap();
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Raw loopback TCP through a forwarder (sender → forwarder → receiver), in MB/s: what a
/// relay that only copies bytes from its ingest socket to one listener socket could reach here.
/// Also the CPU time it took per byte (seconds, all threads).
pub async fn raw_forward(bytes: u64) -> (f64, f64) {
    let (out_addr, rx) = sink(bytes).await;
    let inp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let in_addr = inp.local_addr().unwrap();
    let fwd = tokio::spawn(async move {
        let (mut from, _) = inp.accept().await.unwrap();
        let mut to = TcpStream::connect(out_addr).await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = from.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            to.write_all(&buf[..n]).await.unwrap();
        }
    });
    let mut s = TcpStream::connect(in_addr).await.unwrap();
    let (start, cpu) = (Instant::now(), cpu_secs());
    send_chunks(&mut s, bytes).await;
    drop(s);
    rx.await.unwrap();
    fwd.await.unwrap();
    let mbs = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    (mbs, (cpu_secs() - cpu) / bytes as f64)
}

/// How fast `parse` reads the same batch of `BATCH` records, repeated for `records` records,
/// on one core: (records/s, MB/s). `parse` gets the body and its text, and returns how many
/// records it read.
pub fn parse_rate(records: u64, parse: impl Fn(&bytes::Bytes, &str) -> usize) -> (f64, f64) {
    let body = bytes::Bytes::from(batch(0, BATCH, 0, false));
    let text = std::str::from_utf8(&body).unwrap();
    let rounds = records / BATCH as u64;
    let start = Instant::now();
    for _ in 0..rounds {
        assert_eq!(parse(&body, text), BATCH);
    }
    let secs = start.elapsed().as_secs_f64();
    (
        (BATCH as u64 * rounds) as f64 / secs,
        (body.len() as u64 * rounds) as f64 / secs / 1e6,
    )
}

/// serde_json validation of the same batches without building anything (`IgnoredAny`): the
/// least a relay that checks its input must spend, in MB/s on one core.
pub fn json_validate(records: u64) -> f64 {
    parse_rate(records, |body, _| {
        serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body)
            .unwrap()
            .len()
    })
    .1
}

/// The relay's own record parser (validation and the fields routing needs, one pass), in MB/s
/// on one core.
pub fn relay_parse(records: u64) -> f64 {
    parse_rate(records, |body, _| record::parse_batch(body).unwrap().len()).1
}

/// The reference parser the relay falls back to, in MB/s on one core.
pub fn reference_parse(records: u64) -> f64 {
    parse_rate(records, |body, text| {
        record::parse_batch_checked(body, text).unwrap().len()
    })
    .1
}

/// serde_json parse of the same batches into values: records/s and MB/s on one core.
pub fn json_parse(records: u64) -> (f64, f64) {
    parse_rate(records, |body, _| {
        serde_json::from_slice::<Vec<serde_json::Value>>(body).unwrap().len()
    })
}
