//! The listener protocol, `logsocket.v1`: one JSON object per WebSocket text frame, told apart by
//! `type`. See the README's "Protocol" section for the reference.

use super::tap::Gap;
use super::TapKey;
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The WebSocket subprotocol name.
pub const SUBPROTOCOL: &str = "logsocket.v1";

/// Close codes (RFC 6455) used by the relay.
pub mod close {
    /// The relay is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The listener broke the protocol (e.g. sent a binary frame) or went silent.
    pub const POLICY: u16 = 1008;
    /// Something failed in the relay.
    pub const INTERNAL: u16 = 1011;
}

/// `{"type":"record","seq":N,"record":<the record's original JSON>}`, built by concatenation so
/// the record's bytes are not re-serialised.
pub fn record_frame(seq: u64, raw: &str) -> Utf8Bytes {
    let mut s = String::with_capacity(raw.len() + 40);
    s.push_str(r#"{"type":"record","seq":"#);
    // Formatting into the frame itself: a temporary String per record showed in profiles.
    let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{seq}"));
    s.push_str(r#","record":"#);
    s.push_str(raw);
    s.push('}');
    Utf8Bytes::from(s)
}

/// `status`: the listener is attached; where the tap's numbering stands.
pub fn status_listening(tap: &TapKey, epoch: u64, first_seq: u64, last_seq: u64, backlog: usize) -> Utf8Bytes {
    frame(json!({
        "type": "status",
        "state": "listening",
        "tap": tap.to_string(),
        "epoch": epoch,
        "firstSeq": first_seq,
        "lastSeq": last_seq,
        "replayed": backlog,
    }))
}

/// `status` with `state: "tap"`: how the FlowTap behind the stream is doing, so a client can
/// show a warming-up tap (output created, flow patched, fluentd reloading) instead of silence.
pub fn tap_status(name: &str, status: Option<&crate::crd::FlowTapStatus>) -> Utf8Bytes {
    let phase = status.and_then(|s| s.phase);
    let conditions: serde_json::Map<String, serde_json::Value> = status
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| (c.type_.clone(), json!(c.status == "True")))
                .collect()
        })
        .unwrap_or_default();
    let failing = |type_: &str| {
        status.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status != "True")
                .map(|c| format!("{}: {}", c.reason, c.message))
        })
    };
    let is = |type_: &str| conditions.get(type_) == Some(&json!(true));
    let message = match phase {
        None => "tap created; waiting for the operator".to_owned(),
        Some(_) if !is("OutputReady") => match failing("OutputReady") {
            Some(why) => format!("output not ready ({why})"),
            None => "creating the output".to_owned(),
        },
        Some(_) if !is("FlowPatched") => match failing("FlowPatched") {
            Some(why) => format!("output ready; flow not patched ({why})"),
            None => "output ready; patching the flow".to_owned(),
        },
        Some(_) if !is("Receiving") => {
            "output ready, flow patched; waiting for fluentd to reload and send records".to_owned()
        }
        Some(_) => "records arriving".to_owned(),
    };
    frame(json!({
        "type": "status",
        "state": "tap",
        "flowTap": name,
        "phase": phase,
        "conditions": conditions,
        "message": message,
    }))
}

/// `dropped`: records the listener will not get, and why.
pub fn dropped(count: Option<u64>, reason: &str) -> Utf8Bytes {
    frame(json!({"type": "dropped", "count": count, "reason": reason}))
}

/// `dropped` for a resume gap.
pub fn gap(gap: &Gap) -> Utf8Bytes {
    match gap {
        Gap::OutOfReplay { count } => dropped(Some(*count), "out_of_replay"),
        Gap::TapRestarted => dropped(None, "tap_restarted"),
    }
}

/// `denied`: records of one pod withheld from this listener (content never sent).
pub fn denied(namespace: &str, pod: &str, count: u64) -> Utf8Bytes {
    frame(json!({"type": "denied", "namespace": namespace, "pod": pod, "count": count}))
}

/// `error`: sent before closing the connection.
pub fn error(code: &str, message: &str) -> Utf8Bytes {
    frame(json!({"type": "error", "code": code, "message": message}))
}

fn frame(value: serde_json::Value) -> Utf8Bytes {
    Utf8Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_frame_embeds_the_original_bytes_as_valid_json() {
        let raw = r#"{"message":"a \"quoted\" line","n":1.50}"#;
        let frame = record_frame(42, raw);
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["type"], "record");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["record"]["message"], "a \"quoted\" line");
        assert!(
            frame.as_str().contains(r#""n":1.50"#),
            "bytes untouched: {}",
            frame.as_str()
        );
    }

    #[test]
    fn a_tap_status_frame_says_what_the_tap_waits_for() {
        use crate::crd::{FlowTapStatus, Phase};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let cond = |t: &str, ok: bool, reason: &str| Condition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        };
        let text = |s: Option<&FlowTapStatus>| -> serde_json::Value {
            serde_json::from_str(tap_status("flow-web", s).as_str()).unwrap()
        };
        assert_eq!(text(None)["message"], "tap created; waiting for the operator");
        let mut s = FlowTapStatus {
            phase: Some(Phase::Failed),
            conditions: vec![
                cond("OutputReady", true, "Created"),
                cond("FlowPatched", false, "FlowNotFound"),
            ],
            ..Default::default()
        };
        let v = text(Some(&s));
        assert_eq!(v["phase"], "Failed");
        assert_eq!(v["conditions"]["OutputReady"], true);
        assert_eq!(
            v["message"],
            "output ready; flow not patched (FlowNotFound: FlowNotFound message)"
        );
        s.phase = Some(Phase::Active);
        s.conditions = vec![
            cond("OutputReady", true, "Created"),
            cond("FlowPatched", true, "Appended"),
            cond("Receiving", false, "NoRecordsYet"),
        ];
        assert!(text(Some(&s))["message"]
            .as_str()
            .unwrap()
            .contains("waiting for fluentd"));
    }
}
