//! The http output a FlowTap gets, as a pure function of the tap and the settings: what
//! logging-operator then renders for fluentd (see the logging-operator notes in
//! docs/operator.md). No I/O here; the unit tests hold its form.

use super::OperatorConfig;
use crate::k8s::flowtap::FlowTap;
use crate::protocol::TapKey;
use kube::ResourceExt;
use serde_json::{json, Value};

/// A FlowTap duration (`500ms`, `1.5s`, `2m`, `1h`, or bare seconds) as fluentd reads it
/// exactly: plain seconds, fractional where needed (`0.5`, `1.5`, `120`). Not the unit form:
/// fluentd's `time_value` matches `([0-9]+)s`, then `([0-9]+)m` (minutes) unanchored, so `500ms`
/// would be 500 minutes and `1.5s` five seconds. The CRD's pattern admits only what this reads.
pub fn fluentd_seconds(value: &str) -> String {
    let (number, unit_ms) = match value.trim() {
        v if v.ends_with("ms") => (&v[..v.len() - 2], 1u128),
        v if v.ends_with('s') => (&v[..v.len() - 1], 1_000),
        v if v.ends_with('m') => (&v[..v.len() - 1], 60_000),
        v if v.ends_with('h') => (&v[..v.len() - 1], 3_600_000),
        v => (v, 1_000),
    };
    // Whole microseconds, so `0.1s` is not 0.1000000001.
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // Saturating: the CRD bounds the length, but a value never panics the controller.
    let whole: u128 = whole.parse().unwrap_or(u128::MAX);
    let mut micros = whole.saturating_mul(unit_ms * 1000);
    let mut scale = unit_ms * 1000;
    for digit in fraction.bytes().take(12).filter(u8::is_ascii_digit) {
        scale /= 10;
        micros = micros.saturating_add(u128::from(digit - b'0') * scale);
    }
    let (secs, rest) = (micros / 1_000_000, micros % 1_000_000);
    if rest == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{rest:06}").trim_end_matches('0').to_owned()
    }
}

/// The http output a tap needs (see the logging-operator notes in docs/operator.md).
pub fn desired_output_spec(tap: &FlowTap, config: &OperatorConfig, logging_ref: Option<&str>) -> Value {
    let key = TapKey {
        kind: tap.spec.flow_ref.kind,
        namespace: tap.namespace().unwrap_or_default(),
        name: tap.spec.flow_ref.name.clone(),
    };
    let b = &tap.spec.buffer;
    let mut http = json!({
        "endpoint": format!("{}/{key}", config.ingest_url.trim_end_matches('/')),
        "json_array": true,
        "format": {"type": "json", "add_newline": false},
        "open_timeout": 5,
        "read_timeout": 10,
        "retryable_response_codes": [429, 502, 503, 504],
        "buffer": {
            "type": "memory",
            // No chunk keys: flush on the interval instead of fluentd's 10-minute time chunks.
            "tags": "[]",
            "flush_mode": "interval",
            "flush_interval": fluentd_seconds(&b.flush_interval),
            "chunk_limit_size": b.chunk_limit_size,
            "total_limit_size": b.total_limit_size,
            "overflow_action": "drop_oldest_chunk",
            "retry_forever": false,
            "retry_max_times": b.retry_max_times,
        },
    });
    // The credential of this flow's path only, inline: it lives in the Output (the flow's own
    // namespace, or the control namespace for a ClusterOutput) and in the configuration
    // logging-operator renders, and opens no other stream. No Secret to copy or to check.
    if let Some(keys) = &config.ingest_keys {
        let (username, password) = keys.credential(&key.to_string());
        http["auth"] = json!({"username": {"value": username}, "password": {"value": password}});
    }
    if let Some(secret) = &config.tls_secret {
        let mount_from = |key: &str| json!({"mountFrom": {"secretKeyRef": {"name": secret, "key": key}}});
        http["tls_ca_cert_path"] = mount_from("ca.crt");
        http["tls_client_cert_path"] = mount_from("tls.crt");
        http["tls_private_key_path"] = mount_from("tls.key");
    }
    let mut spec = json!({ "http": http });
    // The output belongs to the flow's Logging (a mismatch makes logging-operator ignore it,
    // and the flow would name a missing output).
    if let Some(r) = logging_ref.filter(|r| !r.is_empty()) {
        spec["loggingRef"] = json!(r);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_reach_fluentd_as_the_seconds_the_user_meant() {
        for (written, seconds) in [
            ("500ms", "0.5"),
            ("1s", "1"),
            ("1.5s", "1.5"),
            ("0.1s", "0.1"),
            ("2m", "120"),
            ("1.5m", "90"),
            ("1h", "3600"),
            ("3", "3"),
            ("0.25", "0.25"),
            ("1ms", "0.001"),
        ] {
            assert_eq!(fluentd_seconds(written), seconds, "{written}");
        }
        // Past what the CRD admits: saturated, never a panic of the controller.
        let huge = fluentd_seconds(&format!("{}h", "9".repeat(60)));
        assert!(huge.parse::<f64>().is_ok_and(|s| s > 1e30), "{huge}");
    }

    #[test]
    fn the_generated_output_flushes_in_plain_seconds() {
        let tap: FlowTap = serde_json::from_value(serde_json::json!({
            "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"flowRef": {"kind": "Flow", "name": "web"}, "buffer": {"flushInterval": "500ms"}},
        }))
        .unwrap();
        let spec = desired_output_spec(&tap, &OperatorConfig::test("log-socket"), None);
        assert_eq!(spec["http"]["buffer"]["flush_interval"], "0.5");
        assert_eq!(
            spec["http"]["endpoint"],
            "http://log-socket.log-socket.svc:10000/flow/shop/web"
        );
    }
}
