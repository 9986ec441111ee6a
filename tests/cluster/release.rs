//! A release of the chart installed with helm on the real API server: `helm test` passes, and
//! its ServiceMonitor is scraped as Prometheus scrapes it: TLS verified against the listener certificate's CA for the Service's
//! name, the token from the Secret it names (the chart's metrics ServiceAccount), the
//! exposition parsed by a strict OpenMetrics parser. The release's pod runs in-process
//! (testkit/src/deployment.rs), the Prometheus Operator's part in testkit/src/prometheus.rs.

use crate::deploy::helm;
use testkit::cluster;
use testkit::prometheus::{self, Credentials};

/// A listener certificate for `name` (and its CA), as cert-manager would put it in a Secret.
fn api_tls_secret(ns: &str, name: &str, dir: &std::path::Path) {
    let out = std::process::Command::new(cluster::bin("log-socket"))
        .args(["certs", "--out"])
        .arg(dir)
        .args(["--dns", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = |f: &str| format!("{}", dir.join(f).display());
    let (ok, _, err) = cluster::kubectl(&[
        "create",
        "secret",
        "generic",
        "api-tls",
        "-n",
        ns,
        &format!("--from-file=tls.crt={}", file("server.crt")),
        &format!("--from-file=tls.key={}", file("server.key")),
        &format!("--from-file=ca.crt={}", file("ca.crt")),
    ]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn an_installed_release_passes_helm_test_and_its_service_monitor_scrapes_over_verified_tls() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "scrape").await;
    let dir = cluster::tempdir(&format!("scrape-{ns}"));
    prometheus::install_crd(&client).await;
    // Unique cluster-wide names (ClusterRoles) for this release: named after the namespace.
    let release = ns.clone();
    let fullname = format!("{release}-log-socket");
    api_tls_secret(&ns, &format!("{fullname}.{ns}.svc"), &dir.join("certs"));

    // A self-signed listener certificate cannot be verified: refused, saying what to do.
    let chart = cluster::repo().join("config/helm/log-socket").display().to_string();
    crate::deploy::refused(&["--set", "serviceMonitor.enabled=true"], "api.tls: secret");

    let (ok, _, err) = helm(&[
        "install", &release, &chart, "--namespace", &ns, "--skip-crds", "--no-hooks",
        "--set", &format!("api.tls=secret,api.tlsSecret=api-tls,serviceMonitor.enabled=true,removeTapsOnUninstall=false,watchNamespace={ns}"),
    ]);
    assert!(ok, "{err}");
    // What the API server stored is what the chart rendered: no field was pruned as unknown.
    let (_, rendered, _) = helm(&["get", "manifest", &release, "--namespace", &ns]);
    let rendered = crate::deploy::documents(&rendered);
    let monitor = rendered
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor");
    let (ok, stored, err) = cluster::kubectl(&["get", "servicemonitor", &fullname, "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["spec"], monitor["spec"]);
    assert!(
        monitor["spec"]["endpoints"][0].get("bearerTokenFile").is_none(),
        "no deprecated bearerTokenFile"
    );

    testkit::token_controller::service_account_secrets(&client, &ns).await;
    let pod = testkit::deployment::run(&client, &ns, &fullname).await;

    // `helm test`: its Pod (run here as a kubelet would) finds the service ready through the
    // Service and the FlowTap resource served to the release's ServiceAccount.
    let mut helm_test = tokio::process::Command::new("bash");
    let helm_bin = testkit::control_plane::assets_dir().unwrap().join("helm");
    let home = cluster::tempdir("helm-home");
    helm_test
        .arg("-c")
        .arg(format!(
            "{} test {release} --namespace {ns} --timeout 2m",
            helm_bin.display()
        ))
        .env("KUBECONFIG", &cluster::env().kubeconfig)
        .env("HELM_CACHE_HOME", &home)
        .env("HELM_CONFIG_HOME", &home)
        .env("HELM_DATA_HOME", &home)
        .kill_on_drop(true);
    let helm_test = helm_test
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let test_pod = format!("{fullname}-test");
    let kubelet = testkit::deployment::run_to_completion(&client, &ns, &test_pod);
    let finished = helm_test.wait_with_output();
    tokio::pin!(finished);
    let (passed, printed) = tokio::select! {
        out = &mut finished => {
            let out = out.unwrap();
            panic!("helm test ended before its pod ran: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        ran = kubelet => ran,
    };
    let helm_test = finished.await.unwrap();
    assert!(passed, "the test pod: {printed}");
    assert!(
        printed.contains("/readyz answers 200") && printed.contains("FlowTap resource is served"),
        "{printed}"
    );
    assert!(
        helm_test.status.success() && String::from_utf8_lossy(&helm_test.stdout).contains("Succeeded"),
        "helm test: {}{}",
        String::from_utf8_lossy(&helm_test.stdout),
        String::from_utf8_lossy(&helm_test.stderr)
    );

    let targets = prometheus::scrape(&client, &ns, &fullname, &dir, Credentials::AsConfigured).await;
    assert_eq!(targets.len(), 1, "one target: {targets:?}");
    let scraped = targets[0].clone().unwrap_or_else(|e| panic!("the scrape failed: {e}"));
    assert!(scraped.body.contains("log_socket_build_info{"), "{}", scraped.body);
    // Prometheus parses what the content type says: OpenMetrics, checked by a strict parser.
    assert!(
        scraped
            .content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        scraped.content_type
    );
    match prometheus::check_openmetrics(&scraped.body) {
        Some(parsed) => {
            // Every family with a sample is parsed (families with none yet are not reported).
            let sampled = scraped
                .body
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split(' ').next())
                .filter(|family| {
                    scraped
                        .body
                        .lines()
                        .any(|l| !l.starts_with('#') && l.starts_with(family))
                })
                .count();
            assert_eq!(parsed, Ok(sampled), "{}", scraped.body);
        }
        None => testkit::skip::skipped("no python3-prometheus-client (apt-get install python3-prometheus-client)"),
    }

    // Without the token, or with one not allowed /metrics, Prometheus gets nothing.
    let anonymous = prometheus::scrape(&client, &ns, &fullname, &dir, Credentials::None).await;
    assert!(matches!(&anonymous[0], Err(e) if e.starts_with("401")), "{anonymous:?}");
    let other = cluster::service_account_token(&client, &ns, "not-prometheus").await;
    let denied = prometheus::scrape(&client, &ns, &fullname, &dir, Credentials::Token(other)).await;
    assert!(matches!(&denied[0], Err(e) if e.starts_with("403")), "{denied:?}");

    pod.stop().await.unwrap();

    // config/monitoring scrapes the kustomize install the same way.
    let (ok, chart_rendered, err) = helm(&[
        "template",
        "log-socket",
        &chart,
        "--namespace",
        "log-socket",
        "--set",
        "serviceMonitor.enabled=true,api.tls=secret,api.tlsSecret=log-socket-api-tls",
    ]);
    assert!(ok, "{err}");
    let docs = crate::deploy::documents(&chart_rendered);
    let mut from_chart = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap()["spec"]["endpoints"].clone();
    from_chart[0].as_object_mut().unwrap().remove("interval");
    let kustomize = std::fs::read_to_string(cluster::repo().join("config/monitoring/servicemonitor.yaml")).unwrap();
    let kustomize = crate::deploy::documents(&kustomize);
    assert_eq!(kustomize[0]["spec"]["endpoints"], from_chart);
    let (ok, _, err) = helm(&["uninstall", &release, "--namespace", &ns, "--no-hooks"]);
    assert!(ok, "{err}");
}
