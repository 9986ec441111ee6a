//! `make demo`, run headless: it comes up, shows the example FlowTap, streams the synthetic
//! fluentd's records through k8stail, and stops cleanly.

use std::path::PathBuf;
use std::time::Duration;
use testkit::cluster;
use testkit::poll::eventually_within;
use tokio::io::{AsyncBufReadExt, BufReader};

fn demo_binary() -> PathBuf {
    // cargo test builds examples next to the package's binaries.
    cluster::bin("log-socket")
        .parent()
        .unwrap()
        .join("examples/local-cluster")
}

#[tokio::test]
async fn the_demo_shows_live_records_of_the_example_flow_and_stops_cleanly_on_ctrl_c() {
    // The demo starts its own control plane (and uses fixed ports 10000-10002).
    cluster::env();
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
    let rest = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collect = rest.clone();
    let drained = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut rest = collect.lock().unwrap();
            rest.push_str(&line);
            rest.push('\n');
        }
    });
    // Without a fluentd the demo falls back, and says so; with one (CI has one) it is used.
    let real = testkit::fluentd::find().is_some();
    assert_eq!(seen.contains("the real fluentd"), real, "{seen}");
    assert_eq!(seen.contains("a synthetic shipper sends instead"), !real, "{seen}");

    let health = std::net::SocketAddr::from(([127, 0, 0, 1], 10002));
    eventually_within("the demo's service ready", Duration::from_secs(15), || async {
        testkit::relay::ready(health).await.then_some(())
    })
    .await;
    let kubeconfig = cluster::repo().join("target/demo/kubeconfig");

    // The synthetic fluentd's records reach k8stail, which the demo runs on its stdout.
    let mut records = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut shown = vec![];
    let arrived = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = records.next_line().await {
            // k8stail's default format: pod, container, message.
            let fields: Vec<&str> = line.splitn(3, ' ').collect();
            let a_record = fields.len() == 3 && fields[0].starts_with("web-") && !fields[2].is_empty();
            shown.push(line);
            if a_record {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(arrived, Ok(true)), "records reached k8stail: {shown:?}");
    // Keep reading, so k8stail never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = records.next_line().await {} });

    // Step 2: the example's persistent FlowTap joins k8stail's, in kubectl and in k8stail taps.
    let step2 = eventually_within("the demo's second step", Duration::from_secs(90), async || {
        let rest = rest.lock().unwrap();
        let done = rest.find("demo step 2 done.")?;
        let start = rest.find("demo step 2:")?;
        Some(rest[start..done].to_owned())
    })
    .await;
    let listed = |tap: &str| {
        step2
            .lines()
            .filter(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["default", tap])
            .count()
    };
    // Each tap once in kubectl's table and once in k8stail's.
    assert_eq!((listed("web"), listed("flow-web")), (2, 2), "{step2}");
    let (ok, out, err) = cluster::kubectl_with(&kubeconfig, &["get", "flowtaps", "-A"], None);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..4] == ["default", "web", "Flow", "web"]),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(cluster::repo().join("target/demo/log-socket.log"))
            .unwrap()
            .contains("listener connected"),
        "the service logs to its file"
    );

    // SAFETY: signalling our own child process, as Ctrl-C would.
    unsafe {
        libc::kill(demo.id().unwrap() as i32, libc::SIGINT);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .unwrap()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
    let rest = rest.lock().unwrap().clone();
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
