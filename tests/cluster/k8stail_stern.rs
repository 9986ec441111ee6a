//! k8stail as a stern user types it, against the real kube-apiserver (its service proxy, as in
//! k8stail_proxy.rs) and a real relay: stern's README invocations work with the same meaning or
//! exit 2 saying the k8stail way; the kubectl plugin through the real kubectl's plugin
//! discovery; shell completion candidates from the real API server.

use crate::k8stail_proxy::{
    exec_kubeconfig_in, may_tail_through_proxy, post_once_attached, proxied, tail_through_proxy, Proxied,
};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use testkit::cluster;
use testkit::relay::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The records every invocation below reads: two pods of `web`, a sidecar, a JSON message.
fn records(ns: &str) -> Value {
    let rec = |pod: &str, container: &str, host: &str, labels: Value, message: &str, time: &str| {
        let mut labels = labels;
        labels["rbac/policy"] = "allow".into();
        json!({"time": time, "message": message, "kubernetes": {"namespace_name": ns, "pod_name": pod,
            "container_name": container, "host": host, "labels": labels}})
    };
    json!([
        rec(
            "web-1",
            "app",
            "node-1",
            json!({"app": "web", "release": "canary"}),
            "GET /healthz 200",
            "2025-03-14T09:26:50Z"
        ),
        rec(
            "web-2",
            "istio-proxy",
            "node-2",
            json!({"app": "web"}),
            "error: upstream reset",
            "2025-03-14T09:26:51Z"
        ),
        rec(
            "db-1",
            "app",
            "node-1",
            json!({"app": "db"}),
            "{\"level\":\"warn\",\"msg\":\"slow query\"}",
            "2025-03-14T09:26:52Z"
        ),
    ])
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A flow object (Flow or ClusterFlow) for completion to find.
async fn create_flow(client: &kube::Client, ns: &str, kind: &str, name: &str) {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", kind));
    let flow: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"match": [{"select": {}}], if kind == "Flow" { "localOutputRefs" } else { "globalOutputRefs" }: ["loki"]}
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .create(&PostParams::default(), &flow)
        .await
        .unwrap();
}

/// What k8stail offers at Tab for the last of `words`, asked as bash asks (clap's protocol).
async fn complete(kubeconfig: &Path, words: &[&str]) -> Vec<String> {
    let mut line = vec!["k8stail", "--kubeconfig", kubeconfig.to_str().unwrap()];
    line.extend_from_slice(words);
    let out = Command::new(cluster::bin("k8stail"))
        .arg("--")
        .args(&line)
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", (line.len() - 1).to_string())
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("_CLAP_IFS", "\n")
        .env_remove("K8STAIL_NAMESPACE")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn sterns_common_invocations_work_alike_or_say_the_k8stail_way_and_kubectl_finds_the_plugin() {
    let Proxied {
        client,
        ns,
        relay,
        _netns,
    } = proxied("stern").await;
    let token = cluster::service_account_token(&client, &ns, "alice").await;
    let mut rules = may_tail_through_proxy();
    // Completion lists flows in her namespace.
    rules.as_array_mut().unwrap().push(
        json!({"apiGroups": ["logging.banzaicloud.io"], "resources": ["flows", "clusterflows"], "verbs": ["list"]}),
    );
    cluster::grant(&client, &ns, "alice", rules).await;
    let dir = cluster::tempdir("k8stail-stern");
    // The context's namespace is the test's: `k8stail web` means this namespace's Flow web.
    let kubeconfig = exec_kubeconfig_in(&token, &dir, Some(&ns));
    let ns_flag = ["--service-namespace", ns.as_str()];
    // The relay runs on this test's runtime: k8stail is awaited, never waited for blocking.
    let run = async |args: &[&str]| -> Output {
        let mut all: Vec<&str> = ns_flag.to_vec();
        all.extend_from_slice(args);
        let child = Command::new(cluster::bin("k8stail"))
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .args(&all)
            .env_remove("K8STAIL_TOKEN")
            .env_remove("K8STAIL_CONFIG")
            .env_remove("K8STAIL_NAMESPACE")
            .env("HOME", dir.to_str().unwrap())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(WAIT, child)
            .await
            .unwrap_or_else(|_| panic!("k8stail {args:?} did not exit"))
            .unwrap()
    };

    // A listener keeps the tap open (and its buffer) while the invocations come and go.
    let mut keeper = tail_through_proxy(&kubeconfig, &ns, "web");
    let mut kept = BufReader::new(keeper.stdout.take().unwrap()).lines();
    post_once_attached(
        &relay,
        &mut keeper,
        &format!("/flow/{ns}/web"),
        &records(&ns).to_string(),
    )
    .await;
    for _ in 0..3 {
        tokio::time::timeout(WAIT, kept.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    // stern web                        → the flow of the context's namespace, all it holds
    let out = run(&["web", "--no-follow"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout_lines(&out),
        [
            "web-1 app GET /healthz 200",
            "web-2 istio-proxy error: upstream reset",
            "db-1 app {\"level\":\"warn\",\"msg\":\"slow query\"}"
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // stern . -n kube-system --tail 0  → nothing buffered, then live: --no-follow prints nothing
    let out = run(&["-n", &ns, "web", "--tail", "0", "--no-follow"]).await;
    assert_eq!((out.status.code(), stdout_lines(&out).len()), (Some(0), 0));
    // stern envvars --container gateway (and --context)
    let context = {
        let text = std::fs::read_to_string(&kubeconfig).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        v["contexts"][0]["name"].as_str().unwrap().to_owned()
    };
    let out = run(&[
        "web",
        "--context",
        &context,
        "--container",
        "^app$",
        "--no-follow",
        "-o",
        "raw",
    ])
    .await;
    assert_eq!(
        stdout_lines(&out),
        ["GET /healthz 200", "{\"level\":\"warn\",\"msg\":\"slow query\"}"]
    );
    // stern -n staging --exclude-container istio-proxy ., and --exclude-pod
    let out = run(&[
        "-n",
        &ns,
        "--exclude-container",
        "istio-proxy",
        "--exclude-pod",
        "^db-",
        "web",
        "--no-follow",
        "-o",
        "raw",
    ])
    .await;
    assert_eq!(stdout_lines(&out), ["GET /healthz 200"]);
    // stern auth -t --since 15m: records older than 15 minutes are left out (these are from 2025)
    let out = run(&["web", "-t", "--since", "15m", "--no-follow"]).await;
    assert_eq!(
        (out.status.code(), stdout_lines(&out).len()),
        (Some(0), 0),
        "{:?}",
        stdout_lines(&out)
    );
    // stern --since=5m --no-follow --only-log-lines -A -t .   (with a flow for the pod query)
    let out = run(&[
        "--since=876000h",
        "--no-follow",
        "--only-log-lines",
        "-A",
        "-t",
        "--timezone",
        "UTC",
        "web",
    ])
    .await;
    assert_eq!(
        stdout_lines(&out)[0],
        "web-1 app 2025-03-14T09:26:50.000000000Z GET /healthz 200"
    );
    // stern auth -t --timezone Asia/Tokyo, and stern's short format
    let out = run(&[
        "web",
        "-t=short",
        "--timezone",
        "Asia/Tokyo",
        "--no-follow",
        "--tail",
        "1",
    ])
    .await;
    assert_eq!(
        stdout_lines(&out),
        ["db-1 app 03-14 18:26:52 {\"level\":\"warn\",\"msg\":\"slow query\"}"]
    );
    // stern --all-namespaces -l run=nginx, stern frontend --selector release=canary
    let out = run(&["web", "-A", "-l", "app=web", "--no-follow", "-o", "raw"]).await;
    assert_eq!(stdout_lines(&out), ["GET /healthz 200", "error: upstream reset"]);
    let out = run(&["web", "--selector", "release=canary", "--no-follow", "-o", "raw"]).await;
    assert_eq!(stdout_lines(&out), ["GET /healthz 200"]);
    // stern backend -o json | jq .    (the record), stern backend -o raw (the message)
    let out = run(&["web", "-o", "json", "--no-follow", "--tail", "1"]).await;
    let v: Value = serde_json::from_str(&stdout_lines(&out)[0]).unwrap();
    assert_eq!(v["kubernetes"]["pod_name"], "db-1");
    let out = run(&["web", "-o", "extjson", "--no-follow", "--tail", "1"]).await;
    let v: Value = serde_json::from_str(&stdout_lines(&out)[0]).unwrap();
    assert_eq!(
        (v["pod"].as_str(), v["message"]["msg"].as_str()),
        (Some("db-1"), Some("slow query"))
    );
    // stern -i / -e / -H
    let out = run(&[
        "web",
        "-i",
        "error",
        "-i",
        "slow",
        "-e",
        "reset",
        "--no-follow",
        "-o",
        "raw",
    ])
    .await;
    assert_eq!(stdout_lines(&out), ["{\"level\":\"warn\",\"msg\":\"slow query\"}"]);
    // stern --template (stern's names, Jinja syntax) and --template-file
    let out = run(&[
        "web",
        "--no-follow",
        "--tail",
        "1",
        "--template",
        "{{ PodName }}/{{ ContainerName }} {{ (Message | parseJSON).level | levelColor }}",
    ])
    .await;
    assert_eq!(stdout_lines(&out), ["db-1/app warn"], "no colour into a pipe");
    let template = dir.join("stern.tpl");
    std::fs::write(
        &template,
        "{{ Namespace }} {{ NodeName }} {{ toTimestamp(time, '15:04', 'UTC') }}\n",
    )
    .unwrap();
    let out = run(&[
        "web",
        "--no-follow",
        "--tail",
        "1",
        &format!("--template-file={}", template.display()),
    ])
    .await;
    assert_eq!(stdout_lines(&out), [format!("{ns} node-1 09:26")]);
    // The same from the config file (~/.config/k8stail/config.yaml), flags still winning.
    std::fs::create_dir_all(dir.join(".config/k8stail")).unwrap();
    std::fs::write(
        dir.join(".config/k8stail/config.yaml"),
        "output: raw\nno-follow: true\nexclude: [reset]\n",
    )
    .unwrap();
    let out = run(&["web", "--tail", "2"]).await;
    assert_eq!(stdout_lines(&out), ["{\"level\":\"warn\",\"msg\":\"slow query\"}"]);
    let out = run(&["web", "--tail", "2", "-o", "default"]).await;
    assert_eq!(
        stdout_lines(&out),
        ["db-1 app {\"level\":\"warn\",\"msg\":\"slow query\"}"]
    );
    std::fs::remove_file(dir.join(".config/k8stail/config.yaml")).unwrap();

    // Each refused one exits 2 before connecting, saying the k8stail way.
    for (args, says) in [
        (&["."][..], "is not a flow"),
        (&[".", "--all-namespaces"], "is not a flow"),
        (&["deployment/nginx"], "--pod '^nginx-'"),
        (
            &["--field-selector", "spec.nodeName=kind-control-plane", "web"],
            "--node kind-control-plane",
        ),
        (
            &[
                "--template",
                "{{.Message}} ({{.Namespace}}/{{.PodName}}/{{.ContainerName}})",
                "web",
            ],
            "{{ Message }}",
        ),
        (&["--completion=bash"], "k8stail completions bash"),
        (&["-p"], "k8stail taps"),
        (
            &["--max-log-requests", "1", "--no-follow", "web"],
            "one stream per flow",
        ),
        (&["web", "--since", "5 minutes"], "is not a duration"),
        (&["web", "-i", "(oops"], "--include"),
        (&["web", "--timezone", "Mars/Base"], "time zone"),
        (&["web", "shop/Web"], "object names"),
    ] {
        let out = run(args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // Two flows in one run: each line says which (api holds nothing, but is followed).
    let out = run(&["web", "api", "--no-follow", "--tail", "1"]).await;
    assert_eq!(
        stdout_lines(&out),
        [format!(
            "{ns}/web db-1 app {{\"level\":\"warn\",\"msg\":\"slow query\"}}"
        )]
    );

    // kubectl's plugin discovery finds kubectl-flowtail on PATH and runs it.
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(cluster::bin("kubectl-flowtail"), plugins.join("kubectl-flowtail")).unwrap();
    let kubectl = testkit::control_plane::kubectl_path(cluster::env().assets.as_deref());
    let path = format!("{}:{}", plugins.display(), std::env::var("PATH").unwrap_or_default());
    let list = Command::new(&kubectl)
        .args(["plugin", "list"])
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("kubectl-flowtail"),
        "{list:?}"
    );
    let out = Command::new(&kubectl)
        .args([
            "flowtail",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--service-namespace",
            &ns,
        ])
        .args(["web", "--no-follow", "--tail", "1", "-o", "raw"])
        .env("PATH", &path)
        .env("HOME", dir.to_str().unwrap())
        .output()
        .await
        .unwrap();
    assert_eq!(
        stdout_lines(&out),
        ["{\"level\":\"warn\",\"msg\":\"slow query\"}"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = Command::new(&kubectl)
        .args(["flowtail", "--help"])
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("kubectl flowtail"),
        "usage names the plugin"
    );

    // Shell completion asks the API server: alice may list flows in her namespace only.
    create_flow(&client, &ns, "Flow", "web").await;
    create_flow(&client, &ns, "Flow", "api").await;
    create_flow(&client, &ns, "ClusterFlow", "all").await;
    let other = cluster::namespace(&client, "stern-other").await;
    create_flow(&client, &other, "Flow", "hidden").await;
    let offered = complete(&kubeconfig, &["w"]).await;
    assert!(
        offered.contains(&"web".to_owned()) && !offered.contains(&"api".to_owned()),
        "{offered:?}"
    );
    let offered = complete(&kubeconfig, &[""]).await;
    for want in ["web", "api", &format!("{ns}/web"), "clusterflow/"] {
        assert!(offered.iter().any(|o| o == want), "{want} in {offered:?}");
    }
    assert!(
        !offered.iter().any(|o| o.contains("hidden")),
        "only what alice may list: {offered:?}"
    );
    let offered = complete(&kubeconfig, &["clusterflow/"]).await;
    assert!(
        offered.contains(&format!("clusterflow/{ns}/all")) && offered.contains(&"clusterflow/all".to_owned()),
        "{offered:?}"
    );
    let offered = complete(&kubeconfig, &["-n", ""]).await;
    assert_eq!(
        offered,
        std::slice::from_ref(&ns),
        "no namespace list for alice: her own"
    );
    let offered = complete(&kubeconfig, &["--context", ""]).await;
    assert_eq!(offered, std::slice::from_ref(&context));
    // The admin may list everything: other namespaces' flows are offered as NS/NAME.
    let admin = cluster::env().kubeconfig.clone();
    let offered = complete(&admin, &[&format!("{other}/")]).await;
    assert_eq!(offered, [format!("{other}/hidden")]);
    let offered = complete(&admin, &["-n", "stern-oth"]).await;
    assert!(offered.contains(&other), "{offered:?}");

    drop(keeper);
}
