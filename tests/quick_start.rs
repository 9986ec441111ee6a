//! The README's quick start, pasted in order into a fresh cluster (this test binary's own real
//! API server): its commands are read from the README, not copied here, so the test fails
//! when they stop working. What the README assumes is there first: logging-operator (its CRDs
//! and the stand-in, testkit/src/logging_operator.rs), the Flow `default/web` (examples/flow.yaml)
//! and its fluentd (the real one, testkit/src/pipeline.rs). `docker` is a stand-in that
//! records what it was asked to build; the Deployment helm creates is run by
//! testkit/src/deployment.rs, as controllers and a kubelet would.

use std::time::Duration;
use testkit::cluster;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The first line containing `text` within `limit`.
async fn line_containing<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    text: &str,
    limit: Duration,
) -> Option<String> {
    let found = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(text) {
                return Some(line);
            }
        }
        None
    })
    .await;
    found.ok().flatten()
}

/// What the Flow's pods write, as fluentd's `sample` source (logging-operator's fluentd gets
/// them from fluent-bit, enriched with their pod's metadata).
fn source() -> String {
    let record = |n: u32| {
        serde_json::json!({
            "message": format!("GET /cart/{n} 200"),
            "stream": "stdout",
            "kubernetes": {
                "namespace_name": "default", "pod_name": "web-7d9f8b6c5-x2x9z",
                "container_name": "nginx", "labels": {"app": "web"}, "host": "node-1"
            }
        })
    };
    format!(
        "<source>\n  @type sample\n  tag kubernetes.var.log.containers.web_default_nginx.log\n  rate 5\n  sample {}\n</source>\n",
        serde_json::Value::from((0..10).map(record).collect::<Vec<_>>())
    )
}

#[tokio::test]
async fn the_readme_quick_start_pasted_into_a_fresh_cluster_ends_with_records_on_screen() {
    if testkit::fluentd::find().is_none() {
        testkit::skip::skipped("no fluentd: the quick start's records come from the real fluentd");
        return;
    }
    let client = cluster::client().await;
    let dir = cluster::tempdir("quick-start");
    let mut terminal = testkit::pasted::Terminal::new(&dir);

    // What the README assumes: logging-operator with a Flow default/web, and its fluentd.
    let _logging_operator = testkit::logging_operator::start(&client, "default").await;
    let (ok, _, err) = cluster::kubectl(&["apply", "-f", "examples/flow.yaml"]);
    assert!(ok, "{err}");

    let commands = testkit::pasted::commands("README.md", "## Quick start");
    assert!(
        commands.iter().any(|c| c.starts_with("helm install")) && commands.iter().any(|c| c.starts_with("k8stail")),
        "the quick start installs with helm and tails with k8stail: {commands:#?}"
    );
    let mut pod = None;
    let mut pipeline = None;
    let mut tail = None;
    for command in &commands {
        if command.starts_with("k8stail ") {
            let mut child = terminal
                .command(command)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let stderr = child.stderr.take().unwrap();
            // A new tap: logging-operator's check and fluentd's reload first (the stand-ins'
            // delays here); the README says what to expect.
            let first = line_containing(&mut lines, "GET /cart/", Duration::from_secs(120)).await;
            let mut err = String::new();
            if first.is_none() {
                let _ = child.start_kill();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut err).await;
                panic!("`{command}` showed no record within 120 s: {first:?}\nstderr: {err}");
            }
            let line = first.unwrap();
            assert!(
                line.starts_with("web-7d9f8b6c5-x2x9z nginx "),
                "pod, container, message: {line}"
            );
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            tail = Some((child, stderr));
            continue;
        }
        let out = terminal.run(command).await;
        if command.starts_with("kubectl get flowtaps") {
            let table = out;
            assert!(
                // An ephemeral tap, `flow-web`, with alice's session.
                table.lines().any(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.len() > 4 && (cells[0], cells[2], cells[3], cells[4]) == ("default", "Flow", "web", "1")
                }),
                "{table}"
            );
        }
        if command.starts_with("helm install") {
            // The controllers and the kubelet: the release's pod runs, then the Flow's fluentd.
            let running = testkit::deployment::run(&client, "log-socket", "log-socket").await;
            let flow = testkit::pipeline::FlowId {
                kind: "Flow",
                namespace: "default".into(),
                name: "web".into(),
            };
            pipeline = testkit::pipeline::Pipeline::start(
                client.clone(),
                &dir.join("fluentd"),
                flow,
                source(),
                Duration::from_millis(500),
            )
            .await;
            assert!(pipeline.is_some(), "fluentd started");
            pod = Some(running);
        }
    }
    // bob may tap the flow but not read its pods' logs: counts, never a record, nor the pods.
    for command in [
        "kubectl create serviceaccount bob -n default",
        "kubectl create role flow-getter -n default --verb=get --resource=flows.logging.banzaicloud.io",
        "kubectl create rolebinding bob-flows -n default --role=flow-getter --serviceaccount=default:bob",
        "kubectl create rolebinding bob-tailer -n log-socket --role=log-socket-tailer --serviceaccount=default:bob",
    ] {
        terminal.run(command).await;
    }
    let mut bob = terminal
        .command("k8stail --token \"$(kubectl create token bob -n default)\" default/web")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut bob_err = BufReader::new(bob.stderr.take().unwrap()).lines();
    let withheld = line_containing(&mut bob_err, "withheld", Duration::from_secs(60))
        .await
        .expect("bob is told records are withheld");
    assert!(withheld.contains("kubectl auth can-i get pods/log"), "{withheld}");
    assert!(!withheld.contains("web-7d9f8b6c5"), "not which pod: {withheld}");
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap()).lines();
    let printed = tokio::time::timeout(Duration::from_secs(3), bob_out.next_line()).await;
    assert!(!matches!(printed, Ok(Ok(Some(_)))), "bob gets no record: {printed:?}");
    let _ = bob.start_kill();

    let (mut child, stderr) = tail.expect("the quick start ran k8stail");
    let pod = pod.expect("the quick start installed log-socket");

    // The image the README built is the one the Deployment runs.
    let built = terminal.docker_log();
    assert!(
        built
            .lines()
            .any(|l| l.starts_with("build ") && l.contains(&format!("-t {} ", pod.image))),
        "the Deployment runs the image the quick start built ({}): {built}",
        pod.image
    );
    assert!(built.lines().any(|l| l == format!("push {}", pod.image)), "{built}");

    let _ = child.start_kill();
    let _ = child.wait().await;
    let mut err = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut err).await;
    assert!(
        !err.contains("withheld"),
        "the quick start's user sees every record: {err}"
    );
    if let Some(p) = pipeline {
        p.stop().await;
    }
    pod.stop().await.unwrap();
}
