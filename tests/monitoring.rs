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

#[test]
fn every_metric_the_alerts_name_is_one_the_service_exports() {
    use log_socket::relay::metrics::*;
    // A family shows in the exposition once it has a series: one of each.
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
    let exported = m.encode();
    let families: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let text = serde_yaml::to_string(&rules()).unwrap();
    let named = regex::Regex::new(r"log_socket_[a-z_]+").unwrap();
    let mut checked = 0;
    for m in named.find_iter(&text) {
        let name = m.as_str();
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            families.contains(&family),
            "{name} is not exported; the service exports {families:?}"
        );
        checked += 1;
    }
    assert!(checked >= 6, "the rules name the service's metrics");
}
