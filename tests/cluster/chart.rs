//! The Helm chart's conventions (names, ServiceAccount, image digest, probes, the shipped
//! tailer roles, aggregation into view/edit/admin) rendered and accepted by the real API
//! server, and its ingest key Secret made once and kept, with real installs.

use crate::deploy::{documents, dry_run, helm, refused};
use serde_json::{json, Value};
use testkit::cluster;

fn chart() -> String {
    cluster::repo().join("config/helm/log-socket").display().to_string()
}

/// `helm template RELEASE` with `--set` values, in namespace `log-socket`.
fn render(release: &str, set: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", release, chart.as_str(), "--namespace", "log-socket"];
    for s in set {
        args.extend(["--set", s]);
    }
    let (ok, rendered, err) = helm(&args);
    assert!(ok, "helm template {set:?}: {err}");
    documents(&rendered)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn pod(docs: &[Value]) -> &Value {
    &docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment")["spec"]["template"]["spec"]
}

#[tokio::test]
async fn the_chart_takes_the_names_service_account_image_and_probes_users_expect() {
    cluster::env();
    // fullnameOverride names every object; nameOverride the name and the selector label.
    let docs = render("r", &["fullnameOverride=tail"]);
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(find(&docs, kind, "tail").is_some(), "{kind} tail");
    }
    let docs = render("r", &["nameOverride=flowtail"]);
    let deployment = find(&docs, "Deployment", "r-flowtail").expect("RELEASE-NAME");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "flowtail"
    );

    // A ServiceAccount of one's own: none made, and everything runs as and binds that one.
    let docs = render("r", &["serviceAccount.create=false,serviceAccount.name=platform-sa"]);
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceAccount"));
    assert_eq!(pod(&docs)["serviceAccountName"], "platform-sa");
    let hook = docs.iter().find(|d| d["kind"] == "Job").unwrap();
    assert_eq!(hook["spec"]["template"]["spec"]["serviceAccountName"], "platform-sa");
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        assert_eq!(binding["subjects"][0]["name"], "platform-sa", "{binding}");
    }
    refused(
        &["--set", "serviceAccount.create=false"],
        "serviceAccount.name is needed",
    );

    // A digest pins the image (and wins over the tag); a malformed one is refused.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = render("r", &[&format!("image.digest={digest},image.tag=9.9.9")]);
    assert_eq!(
        pod(&docs)["containers"][0]["image"],
        format!("ghcr.io/log-socket/log-socket@{digest}")
    );
    refused(&["--set", "image.digest=latest"], "image.digest");

    // Probes: a startup probe by default; each one configurable, or left out with {}.
    let docs = render("r", &[]);
    let container = &pod(&docs)["containers"][0];
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let docs = render(
        "r",
        &[
            "readinessProbe.periodSeconds=2,readinessProbe.httpGet.path=/readyz,readinessProbe.httpGet.port=health",
            "startupProbe=null",
        ],
    );
    let container = &pod(&docs)["containers"][0];
    assert_eq!(container["readinessProbe"]["periodSeconds"], 2);
    assert!(container.get("startupProbe").is_none(), "{container}");

    // And the API server takes what they render.
    install_namespace_and(&render(
        "log-socket",
        &["fullnameOverride=tail,nameOverride=flowtail,readinessProbe.periodSeconds=2"],
    ));
    install_namespace_and(&render("log-socket", &[&format!("image.digest={digest}")]));
}

fn install_namespace_and(docs: &[Value]) {
    let (ok, _, err) = cluster::kubectl(&["create", "namespace", "log-socket"]);
    assert!(ok || err.contains("AlreadyExists"), "{err}");
    let manifests: Vec<String> = docs.iter().map(|d| serde_yaml::to_string(d).unwrap()).collect();
    dry_run(&manifests.join("---\n"));
}

#[tokio::test]
async fn the_chart_ships_a_tailer_role_pair_and_lets_view_edit_and_admin_read_flowtaps() {
    cluster::env();
    let docs = render("log-socket", &[]);
    let tailer = find(&docs, "ClusterRole", "log-socket-tailer").expect("the tailer ClusterRole");
    let rules = tailer["rules"].as_array().unwrap();
    let grants = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["apiGroups"].as_array().unwrap().contains(&json!(group))
                && r["resources"].as_array().unwrap().contains(&json!(resource))
                && r["verbs"].as_array().unwrap().contains(&json!(verb))
        })
    };
    assert!(grants("logging.banzaicloud.io", "flows", "get"));
    assert!(grants("", "pods/log", "get"), "the default record policy");
    assert!(grants("logsocket.dev", "flowtaps", "list"));
    // Not pods (specs hold env values), not clusterflows (bound in a control namespace it
    // would come with fluentd's pods/log).
    assert!(!grants("", "pods", "get") && !grants("", "pods", "list"));
    assert!(!grants("logging.banzaicloud.io", "clusterflows", "get"));
    let clusterflows = find(&docs, "ClusterRole", "log-socket-clusterflow-tailer").expect("the ClusterFlow tailer");
    assert_eq!(
        clusterflows["rules"],
        json!([
            {"apiGroups": ["logging.banzaicloud.io"], "resources": ["clusterflows"], "verbs": ["get", "list"]},
            {"apiGroups": ["logsocket.dev"], "resources": ["flowtaps"], "verbs": ["get", "list", "watch"]}
        ])
    );
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !rules
                .iter()
                .any(|r| r["verbs"].as_array().unwrap().contains(&json!(verb))),
            "{verb}"
        );
    }
    let proxy = find(&docs, "Role", "log-socket-tailer").expect("the tailer Role");
    assert_eq!(
        proxy["rules"],
        json!([{"apiGroups": [""], "resources": ["services/proxy"], "resourceNames": ["https:log-socket:api"], "verbs": ["get"]}])
    );
    // Without TLS on the listener port, the proxy's resource name says http.
    let docs_plain = render("log-socket", &["api.tls=none"]);
    let proxy = find(&docs_plain, "Role", "log-socket-tailer").unwrap();
    assert_eq!(proxy["rules"][0]["resourceNames"], json!(["http:log-socket:api"]));

    // Kubernetes' view, edit and admin read FlowTaps, and nothing more.
    let view = find(&docs, "ClusterRole", "log-socket-view").expect("the aggregated ClusterRole");
    for role in ["view", "edit", "admin"] {
        assert_eq!(
            view["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{role}")],
            "true"
        );
    }
    assert_eq!(
        view["rules"],
        json!([{"apiGroups": ["logsocket.dev"], "resources": ["flowtaps"], "verbs": ["get", "list", "watch"]}])
    );
    let docs_off = render(
        "log-socket",
        &["rbac.tailerRoles=false,rbac.aggregateToDefaultRoles=false"],
    );
    for name in ["log-socket-tailer", "log-socket-view"] {
        assert!(!docs_off.iter().any(|d| d["metadata"]["name"] == name), "{name}");
    }
}

/// The ingest key Secret in `ns`, and whether helm owns it.
fn key_secret(ns: &str) -> Option<(String, bool)> {
    let (ok, out, _) = cluster::kubectl(&["get", "secret", "log-socket-ingest-key", "-n", ns, "-o", "json"]);
    if !ok {
        return None;
    }
    let secret: Value = serde_json::from_str(&out).unwrap();
    let key = secret["data"]["keys"].as_str().unwrap().to_owned();
    let owned = secret["metadata"]["annotations"]["meta.helm.sh/release-name"].is_string();
    Some((key, owned))
}

#[tokio::test]
async fn the_chart_makes_the_ingest_key_once_keeps_it_on_upgrade_and_uninstall_and_never_touches_one_of_yours() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "chart-key").await;
    let chart = chart();
    // Unique cluster-wide names (ClusterRoles) for this release; no hook (no pods run here).
    let release = ns.clone();
    let install = |verb: &str| {
        helm(&[
            verb,
            &release,
            &chart,
            "--namespace",
            &ns,
            "--skip-crds",
            "--no-hooks",
            "--set",
            "removeTapsOnUninstall=false",
        ])
    };
    let (ok, _, err) = install("install");
    assert!(ok, "{err}");
    let (first, owned) = key_secret(&ns).expect("the chart made the Secret");
    assert!(owned);
    let decoded = String::from_utf8(base64_decode(&first)).unwrap();
    let line = decoded.strip_suffix('\n').expect("one line");
    assert!(
        line.len() >= 64 && line.chars().all(|c| c.is_ascii_alphanumeric()),
        "{line}"
    );

    let (ok, _, err) = install("upgrade");
    assert!(ok, "{err}");
    assert_eq!(key_secret(&ns).unwrap().0, first, "kept on upgrade");
    let (ok, _, err) = helm(&["uninstall", &release, "--namespace", &ns, "--no-hooks"]);
    assert!(ok, "{err}");
    assert_eq!(key_secret(&ns).map(|s| s.0), Some(first.clone()), "kept on uninstall");
    let (ok, _, err) = install("install");
    assert!(ok, "{err}");
    assert_eq!(key_secret(&ns).unwrap().0, first, "and used again by the next install");
    let (ok, _, err) = helm(&["uninstall", &release, "--namespace", &ns, "--no-hooks"]);
    assert!(ok, "{err}");

    // A Secret someone made is theirs: the install neither replaces nor adopts it.
    let other = cluster::namespace(&client, "chart-own-key").await;
    let (ok, _, err) = cluster::kubectl(&[
        "create",
        "secret",
        "generic",
        "log-socket-ingest-key",
        "-n",
        &other,
        "--from-literal=keys=0123456789abcdef0123456789abcdef-mine",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = helm(&[
        "install",
        &other,
        &chart,
        "--namespace",
        &other,
        "--skip-crds",
        "--no-hooks",
        "--set",
        "removeTapsOnUninstall=false",
    ]);
    assert!(ok, "{err}");
    let (key, owned) = key_secret(&other).unwrap();
    assert_eq!(
        String::from_utf8(base64_decode(&key)).unwrap(),
        "0123456789abcdef0123456789abcdef-mine"
    );
    assert!(!owned, "not adopted");
    let (ok, _, err) = helm(&["uninstall", &other, "--namespace", &other, "--no-hooks"]);
    assert!(ok, "{err}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use k8s_openapi::ByteString;
    serde_json::from_value::<ByteString>(json!(s)).unwrap().0
}
