//! k8stail's pre-flow view against the real kube-apiserver: pods on a Node whose kubelet is the
//! test kit's log server on loopback, so `pods/log` goes through the API server under the
//! user's own RBAC, as it does in a cluster; the flow's records come from a real relay through
//! the API server's service proxy (k8stail_proxy.rs).

use crate::k8stail_proxy::{exec_kubeconfig_in, may_tail_through_proxy, proxied, Proxied};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use testkit::cluster;
use testkit::kubelet::{self, Kubelet};
use testkit::relay::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// What a user needs for pre-flow lines in a namespace: list and watch pods, read their logs.
fn may_read_pod_logs() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "get"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}
    ])
}

/// A relay reached through the API server's service proxy (k8stail_proxy.rs), and a kubelet
/// stand-in registered as the Node (`node-NS`) the test's pods run on.
async fn with_kubelet(prefix: &str) -> (Proxied, Kubelet, String) {
    let proxied = proxied(prefix).await;
    let node = format!("node-{}", proxied.ns);
    let kubelet = Kubelet::start().await;
    kubelet.register(&proxied.client, &node).await;
    (proxied, kubelet, node)
}

/// A kubeconfig (in a temporary directory named `dir`) for `user`, who may tail through the
/// proxy and read the pods' logs of `ns`.
async fn reader(client: &kube::Client, ns: &str, user: &str, dir: &str) -> PathBuf {
    let token = cluster::service_account_token(client, ns, user).await;
    cluster::grant(client, ns, user, may_tail_through_proxy()).await;
    cluster::grant(client, ns, user, may_read_pod_logs()).await;
    exec_kubeconfig_in(&token, &cluster::tempdir(dir), Some(ns))
}

fn k8stail(kubeconfig: &Path, ns: &str, target: &str, extra: &[&str]) -> Child {
    tokio::process::Command::new(cluster::bin("k8stail"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), target])
        .args(["--service-namespace", ns, "--tail", "0", "--color", "never"])
        .args(extra)
        .env_remove("K8STAIL_TOKEN")
        .env_remove("K8STAIL_PREFLOW")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Read stdout lines until one contains `marker`; all of them, in order.
async fn until(lines: &mut Lines<BufReader<ChildStdout>>, marker: &str) -> Vec<String> {
    until_in(lines, marker).await
}

/// [`until`] on any output.
async fn until_in<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut Lines<R>, marker: &str) -> Vec<String> {
    let mut seen = vec![];
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line with {marker:?} in time; so far: {seen:#?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("k8stail ended before {marker:?}; so far: {seen:#?}"));
        let done = line.contains(marker);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// A flow record of `pod`'s `container`, as fluentd posts it (the runtime's time kept).
fn flow_record(ns: &str, pod: &str, container: &str, time: &str, message: &str) -> Value {
    json!({"time": time, "message": message, "kubernetes": {"namespace_name": ns, "pod_name": pod,
        "container_name": container, "labels": {"app": "web", "rbac/policy": "allow"}}})
}

async fn stderr_of(mut child: Child) -> String {
    let _ = child.start_kill();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    err
}

#[tokio::test]
async fn pre_flow_lines_come_only_from_matched_containers_marked_then_flow_records_follow_without_repeats() {
    let (
        Proxied {
            client,
            ns,
            relay,
            _netns,
        },
        kubelet,
        node,
    ) = with_kubelet("preflow").await;
    // Excluded first, then selected: the first entry that holds decides, per container.
    let rules = json!({"match": [
        {"exclude": {"labels": {"tier": "debug"}}},
        {"select": {"labels": {"app": "web"}, "container_names": ["app"]}}
    ], "localOutputRefs": ["loki"]});
    cluster::create_flow(&client, &ns, "web", rules).await;
    kubelet::pod(
        &client,
        &ns,
        &node,
        "web-1",
        json!({"app": "web"}),
        &["app", "istio-proxy"],
    )
    .await;
    kubelet::pod(
        &client,
        &ns,
        &node,
        "web-debug",
        json!({"app": "web", "tier": "debug"}),
        &["app"],
    )
    .await;
    kubelet::pod(&client, &ns, &node, "db-1", json!({"app": "db"}), &["app"]).await;
    let before = kubelet.write(&ns, "web-1", "app", "GET / 200 (before k8stail)");
    for (pod, container) in [("web-1", "istio-proxy"), ("web-debug", "app"), ("db-1", "app")] {
        kubelet.write(&ns, pod, container, &format!("{pod} {container}: not routed"));
    }

    let kubeconfig = reader(&client, &ns, "alice", "preflow").await;
    let mut tail = k8stail(&kubeconfig, &ns, "web", &["--preflow", "always"]);
    let mut out = BufReader::new(tail.stdout.take().unwrap()).lines();

    // The running container's recent history, marked.
    let first = until(&mut out, "before k8stail").await;
    assert_eq!(first, vec!["pre-flow web-1 app GET / 200 (before k8stail)".to_owned()]);
    // Live lines, and a pod that starts during the warm-up.
    let live = kubelet.write(&ns, "web-1", "app", "GET /cart 200");
    until(&mut out, "GET /cart 200").await;
    kubelet::pod(
        &client,
        &ns,
        &node,
        "web-2",
        json!({"app": "web"}),
        &["app", "istio-proxy"],
    )
    .await;
    kubelet.write(&ns, "web-2", "app", "web-2 started");
    assert_eq!(
        until(&mut out, "web-2 started").await,
        vec!["pre-flow web-2 app web-2 started"]
    );

    // fluentd starts sending: its first records are lines already shown, then a new one.
    let stamp = |t: jiff::Timestamp| t.to_string();
    let after = jiff::Timestamp::now();
    let body = json!([
        flow_record(&ns, "web-1", "app", &stamp(before), "GET / 200 (before k8stail)"),
        flow_record(&ns, "web-1", "app", &stamp(live), "GET /cart 200"),
        flow_record(&ns, "web-1", "app", &stamp(after), "GET /pay 500"),
    ]);
    crate::k8stail_proxy::post_once_attached(&relay, &mut tail, &format!("/flow/{ns}/web"), &body.to_string()).await;
    let rest = until(&mut out, "GET /pay 500").await;
    let from = rest
        .iter()
        .position(|l| l.starts_with("── flow records from here"))
        .unwrap_or_else(|| panic!("one separator line: {rest:#?}"));
    let flow: Vec<&String> = rest[from + 1..].iter().collect();
    assert!(
        !flow.iter().any(|l| l.contains("GET / 200") || l.contains("GET /cart")),
        "records shown as pre-flow lines are not shown again: {rest:#?}"
    );
    assert!(flow.last().unwrap().starts_with("web-1 app GET /pay 500"), "{rest:#?}");
    // After the switch, container logs no longer come.
    kubelet.write(&ns, "web-1", "app", "after the switch");
    let later = json!([flow_record(
        &ns,
        "web-1",
        "app",
        &stamp(jiff::Timestamp::now()),
        "flow only"
    )]);
    post(&relay, &format!("/flow/{ns}/web"), &later.to_string()).await;
    let tail_lines = until(&mut out, "flow only").await;
    assert!(
        !tail_lines.iter().any(|l| l.contains("after the switch")),
        "{tail_lines:#?}"
    );

    // Only the routed containers' logs were ever asked of the kubelet.
    let asked = kubelet.requests();
    assert!(!asked.is_empty());
    for request in &asked {
        let routed = [format!("/{ns}/web-1/app?"), format!("/{ns}/web-2/app?")];
        assert!(
            routed.iter().any(|r| request.contains(r.as_str())),
            "{request} is not routed: {asked:#?}"
        );
    }
    let err = stderr_of(tail).await;
    assert!(err.contains("pre-flow: live container logs of the pods"), "{err}");
}

#[tokio::test]
async fn pre_flow_lines_are_off_on_a_pipe_by_default_and_marked_in_json_when_asked_for() {
    let (
        Proxied {
            client,
            ns,
            relay,
            _netns,
        },
        kubelet,
        node,
    ) = with_kubelet("preflow-json").await;
    cluster::create_flow(&client, &ns, "web", json!({"localOutputRefs": ["loki"]})).await;
    kubelet::pod(&client, &ns, &node, "web-1", json!({"app": "web"}), &["app"]).await;
    kubelet.write(&ns, "web-1", "app", "raw line");
    let kubeconfig = reader(&client, &ns, "alice", "preflow-json").await;

    // Piped, `auto`: the first line out is the flow's record, and no pod log was asked for.
    let mut piped = k8stail(&kubeconfig, &ns, "web", &["-o", "json"]);
    let mut out = BufReader::new(piped.stdout.take().unwrap()).lines();
    let body = json!([flow_record(
        &ns,
        "web-1",
        "app",
        "2026-01-01T00:00:00Z",
        "from the flow"
    )]);
    crate::k8stail_proxy::post_once_attached(&relay, &mut piped, &format!("/flow/{ns}/web"), &body.to_string()).await;
    let lines = until(&mut out, "from the flow").await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(kubelet.requests().is_empty(), "{:?}", kubelet.requests());
    drop(piped);

    // Asked for: `"preflow":true` on every pre-flow record, none on the flow's.
    let mut json_tail = k8stail(&kubeconfig, &ns, "web", &["-o", "json", "--preflow", "always"]);
    let mut out = BufReader::new(json_tail.stdout.take().unwrap()).lines();
    let line = until(&mut out, "raw line").await;
    let v: Value = serde_json::from_str(&line[0]).unwrap();
    assert_eq!(v["preflow"], true, "{v}");
    assert_eq!(v["kubernetes"]["pod_name"], "web-1");
    assert_eq!(v["kubernetes"]["host"], node.as_str());
    let body = json!([flow_record(&ns, "web-1", "app", "2027-01-01T00:00:00Z", "flow again")]);
    crate::k8stail_proxy::post_once_attached(&relay, &mut json_tail, &format!("/flow/{ns}/web"), &body.to_string())
        .await;
    let rest = until(&mut out, "flow again").await;
    let last: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert!(last.get("preflow").is_none(), "{last}");
}

#[tokio::test]
async fn a_user_who_may_not_read_pods_gets_one_line_saying_so_and_the_flow_records() {
    let (
        Proxied {
            client,
            ns,
            relay,
            _netns,
        },
        kubelet,
        node,
    ) = with_kubelet("preflow-denied").await;
    cluster::create_flow(&client, &ns, "web", json!({"localOutputRefs": ["loki"]})).await;
    kubelet::pod(&client, &ns, &node, "web-1", json!({"app": "web"}), &["app"]).await;
    kubelet.write(&ns, "web-1", "app", "secret line");
    for (user, rules) in [
        ("bob", None),
        // Pods listed, their logs not readable.
        (
            "carol",
            Some(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])),
        ),
    ] {
        let token = cluster::service_account_token(&client, &ns, user).await;
        cluster::grant(&client, &ns, user, may_tail_through_proxy()).await;
        if let Some(rules) = rules {
            cluster::grant(&client, &ns, user, rules).await;
        }
        let kubeconfig = exec_kubeconfig_in(&token, &cluster::tempdir(&format!("preflow-{user}")), Some(&ns));
        let mut tail = k8stail(&kubeconfig, &ns, "web", &["--preflow", "always"]);
        let mut out = BufReader::new(tail.stdout.take().unwrap()).lines();
        let mut err = BufReader::new(tail.stderr.take().unwrap()).lines();
        // The refusal is said before the flow's first record ends the pre-flow view.
        let why = match user {
            "bob" => "you may not list and watch pods",
            _ => "you may not read pods/log",
        };
        let said = until_in(&mut err, "no pre-flow lines").await;
        assert!(said.last().unwrap().contains(why), "{user}: {said:#?}");
        let body = json!([flow_record(
            &ns,
            "web-1",
            "app",
            "2026-01-01T00:00:00Z",
            &format!("for {user}")
        )]);
        crate::k8stail_proxy::post_once_attached(&relay, &mut tail, &format!("/flow/{ns}/web"), &body.to_string())
            .await;
        let lines = until(&mut out, &format!("for {user}")).await;
        assert_eq!(lines, vec![format!("web-1 app for {user}")], "no pre-flow line");
        let _ = tail.start_kill();
        let mut rest = String::new();
        err.into_inner().read_to_string(&mut rest).await.unwrap();
        assert!(!rest.contains("pre-flow"), "said once: {rest}");
    }
    assert!(
        kubelet.requests().is_empty(),
        "no log was read: {:?}",
        kubelet.requests()
    );
}

#[tokio::test]
async fn a_cluster_flows_pre_flow_lines_come_only_from_the_namespaces_its_match_selects() {
    let (
        Proxied {
            client,
            ns,
            relay: _relay,
            _netns,
        },
        kubelet,
        node,
    ) = with_kubelet("preflow-cf").await;
    let team = cluster::namespace(&client, "preflow-team").await;
    let other = cluster::namespace(&client, "preflow-other").await;
    let spec = json!({"match": [{"select": {"namespaces": [team]}}], "globalOutputRefs": ["loki"]});
    cluster::create_cluster_flow(&client, &ns, "all", spec).await;
    kubelet::pod(&client, &team, &node, "api-1", json!({"app": "api"}), &["app"]).await;
    kubelet::pod(&client, &other, &node, "db-1", json!({"app": "db"}), &["app"]).await;
    kubelet.write(&other, "db-1", "app", "not in the flow's namespaces");
    kubelet.write(&team, "api-1", "app", "selected line");
    // The admin, who may list pods in every namespace (a ClusterFlow's pods are anywhere).
    let admin = &cluster::env().kubeconfig;
    let mut tail = k8stail(
        admin,
        &ns,
        &format!("clusterflow/{ns}/all"),
        &["--preflow", "always", "-A"],
    );
    let mut out = BufReader::new(tail.stdout.take().unwrap()).lines();
    let lines = until(&mut out, "selected line").await;
    assert_eq!(lines, vec![format!("pre-flow {team}/api-1 app selected line")]);
    let asked = kubelet.requests();
    assert!(
        asked.iter().all(|r| r.contains(&format!("/{team}/api-1/app?"))),
        "only the selected namespace's container: {asked:#?}"
    );
    drop(tail);
}
