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
pub fn record_frame(seq: u64, raw: &[u8]) -> Utf8Bytes {
    let raw = std::str::from_utf8(raw).expect("records are validated UTF-8 JSON");
    let mut s = String::with_capacity(raw.len() + 40);
    s.push_str(r#"{"type":"record","seq":"#);
    s.push_str(&seq.to_string());
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
        let raw = br#"{"message":"a \"quoted\" line","n":1.50}"#;
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
}
