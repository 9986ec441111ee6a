//! `make demo`, run headless: it comes up, shows the example FlowTap, streams the synthetic
//! fluentd's records through k8stail, and stops cleanly.

use crate::support;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn demo_binary() -> PathBuf {
    // cargo test builds examples next to the package's binaries.
    support::bin("log-socket")
        .parent()
        .unwrap()
        .join("examples/local-cluster")
}

#[tokio::test]
async fn the_demo_shows_live_records_of_the_example_flow_and_stops_cleanly_on_ctrl_c() {
    // The demo starts its own control plane (and uses fixed ports 10000-10002).
    support::env();
    let mut demo = tokio::process::Command::new(demo_binary())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the demo (built by cargo test)");
    let mut lines = BufReader::new(demo.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let up = tokio::time::timeout(Duration::from_secs(180), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Press Ctrl-C") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(up, Ok(true)), "the demo came up:\n{seen}");
    // Keep draining stderr so the demo never blocks on a full pipe.
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });

    let health = std::net::SocketAddr::from(([127, 0, 0, 1], 10002));
    let mut ready = 0;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(health).await.is_ok() {
            ready = crate::wire::request(health, "GET", "/readyz", &[], b"").await.0;
            if ready == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    let kubeconfig = support::repo().join("target/demo/kubeconfig");
    let (ok, out, err) = support::kubectl_with(&kubeconfig, &["get", "flowtaps", "-A"], None);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..4] == ["default", "web", "Flow", "web"]),
        "{out}"
    );

    // The synthetic fluentd's records reach k8stail, which the demo runs on its stdout.
    let mut records = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut shown = vec![];
    let arrived = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = records.next_line().await {
            let record: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            shown.push(line);
            if record["kubernetes"]["pod_name"]
                .as_str()
                .is_some_and(|p| p.starts_with("web-"))
                && record["kubernetes"]["namespace_name"] == "default"
                && record["message"].is_string()
            {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(arrived, Ok(true)), "records reached k8stail: {shown:?}");
    // Keep reading, so k8stail never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = records.next_line().await {} });

    // SAFETY: signalling our own child process, as Ctrl-C would.
    unsafe {
        libc::kill(demo.id().unwrap() as i32, libc::SIGINT);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .unwrap()
        .unwrap();
    let rest = rest.await.unwrap();
    assert!(status.success(), "{status:?}\n{rest}");
    assert!(
        rest.contains("demo: log-socket stopped cleanly"),
        "the service shut down gracefully:\n{rest}"
    );
    assert!(!kubeconfig.exists(), "the demo cleaned up");
    for port in [10000, 10001, 10002] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} closed"
        );
    }
}
