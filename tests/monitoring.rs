//! The shipped alerts (config/monitoring/prometheusrule.yaml) against the real promtool
//! (Debian's, extracted by tests/test-env.sh): the rules are valid, their unit tests
//! (prometheusrule-test.yaml) pass, and every metric they name is one the service exports.

use testkit::cluster;

fn rules() -> serde_yaml::Value {
    let text = std::fs::read_to_string(cluster::repo().join("config/monitoring/prometheusrule.yaml")).unwrap();
    let rule: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    serde_yaml::to_value(serde_yaml::Mapping::from_iter([(
        "groups".into(),
        rule["spec"]["groups"].clone(),
    )]))
    .unwrap()
}

#[test]
fn the_shipped_alerts_are_valid_rules_whose_unit_tests_pass() {
    let Some(promtool) = testkit::prometheus::promtool() else {
        testkit::skip::skipped("no promtool: run tests/test-env.sh (make test does) or apt-get install prometheus");
        return;
    };
    let dir = cluster::tempdir("monitoring");
    std::fs::write(dir.join("rules.yaml"), serde_yaml::to_string(&rules()).unwrap()).unwrap();
    std::fs::copy(
        cluster::repo().join("config/monitoring/prometheusrule-test.yaml"),
        dir.join("test.yaml"),
    )
    .unwrap();
    for args in [vec!["check", "rules", "rules.yaml"], vec!["test", "rules", "test.yaml"]] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The metric families the service exports (one series of each, so each shows).
fn exported_families() -> Vec<String> {
    use log_socket::relay::metrics::*;
    let m = Metrics::default();
    let tap = TapLabels {
        kind: "flow".into(),
        flow_namespace: "shop".into(),
        name: "web".into(),
    };
    m.ingested_records.get_or_create(&tap).inc();
    m.ingested_bytes.get_or_create(&tap).inc();
    m.sent_records.get_or_create(&tap).inc();
    m.ingest_requests.get_or_create(&CodeLabels { code: 200 }).inc();
    m.dropped_records
        .get_or_create(&DropLabels {
            reason: DropReason::bus_invalid,
        })
        .inc();
    m.errors.get_or_create(&ErrorLabels { kind: "x".into() }).inc();
    m.flowtaps
        .get_or_create(&FlowTapLabels {
            phase: "Active".into(),
            stage: "Flowing".into(),
        })
        .set(1);
    m.controller.reconciled(true, std::time::Duration::from_millis(5));
    m.encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every metric `text` names is exported (a histogram's `_bucket`, `_sum`, `_count` and a
/// counter's `_total` are its family's); how many were named.
fn names_only_exported(text: &str) -> usize {
    let families = exported_families();
    let named = regex::Regex::new(r"\b(log_socket|process)_[a-z_]+").unwrap();
    let mut checked = 0;
    for m in named.find_iter(text) {
        let name = m.as_str();
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            families.iter().any(|f| f == family || f == name),
            "{name} is not exported; the service exports {families:?}"
        );
        checked += 1;
    }
    checked
}

#[test]
fn every_metric_the_alerts_name_is_one_the_service_exports() {
    let text = serde_yaml::to_string(&rules()).unwrap();
    assert!(names_only_exported(&text) >= 7, "the rules name the service's metrics");
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics_in_valid_promql() {
    let text = std::fs::read_to_string(cluster::repo().join("config/monitoring/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("every target has a query").to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    assert!(names_only_exported(&exprs.join("\n")) >= exprs.len());
    // Each query parses as PromQL: promtool checks them as recording rules (Grafana's
    // $__rate_interval is a range there).
    let Some(promtool) = testkit::prometheus::promtool() else {
        testkit::skip::skipped("no promtool: run tests/test-env.sh (make test does) or apt-get install prometheus");
        return;
    };
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e.replace("$__rate_interval", "5m")}))
        .collect();
    let dir = cluster::tempdir("dashboard-promql");
    let file = dir.join("dashboard-rules.yaml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_yaml::to_string(&groups).unwrap()).unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
