//! The listener protocol, `logsocket.v1`: one JSON object per WebSocket text frame, told apart by
//! `type`. [`Frame`] is the one definition: the relay encodes it, k8stail decodes it, and
//! `docs/protocol.md` describes it. The most frequent frame, `record`, is built by
//! concatenation ([`record_frame`], so the record's bytes are never re-serialised) and read
//! without copying the record ([`decode`]); a test holds it equal to the serde form.

use crate::k8s::flowtap::{FlowTapStatus, Phase};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
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

/// A frame from the relay to a listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Frame {
    /// A record the listener may see, numbered in its tap. The relay sends it in the exact form
    /// of [`RecordFrame`]; this variant reads any other key order.
    Record { seq: u64, record: serde_json::Value },
    /// Where the stream stands ([`Status`]).
    Status(Status),
    /// Records the listener will not get, and why (`slow_client`, `out_of_replay`,
    /// `tap_restarted`, `sampled`); `count` is unknown for `tap_restarted`. With `sampled`,
    /// `pods` says how many of each pod (`NAMESPACE/POD`) were left out.
    Dropped {
        count: Option<u64>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pods: Option<BTreeMap<String, u64>>,
        /// With `sampled`: the highest sequence number the count covers (a client resuming
        /// after it gets none of them again).
        #[serde(rename = "lastSeq", default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
    },
    /// Records withheld from this listener (their content is never sent). The relay sends one
    /// count a second with no namespace or pod (naming them would tell a listener about pods
    /// it may not see); older relays named one pod per frame.
    Denied {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        namespace: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pod: String,
        count: u64,
    },
    /// Sent before the relay closes the connection.
    Error { code: String, message: String },
    /// A frame type this version does not know (from a newer relay): ignored.
    #[serde(other)]
    Unknown,
}

/// The two kinds of `status` frame, told apart by `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    /// The listener is attached; where the tap's numbering stands and how many buffered records
    /// follow.
    #[serde(rename_all = "camelCase")]
    Listening {
        tap: String,
        epoch: u64,
        first_seq: u64,
        last_seq: u64,
        replayed: u64,
    },
    /// How the FlowTap behind the stream is doing, so a client can show a warming-up tap
    /// (output created, flow patched, fluentd reloading) instead of silence.
    #[serde(rename_all = "camelCase")]
    Tap {
        flow_tap: String,
        phase: Option<String>,
        conditions: BTreeMap<String, bool>,
        message: String,
        /// The FlowTap's stage (`ConfigCheck`, `ConfigApplied`, `Flowing`...), when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        /// When the tap entered the stage (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage_since: Option<String>,
    },
    /// Whether the bus between relay replicas (`nats`) is reachable: while it is not, no
    /// record arrives and ingest answers 503 (fluentd retries).
    #[serde(rename_all = "camelCase")]
    Bus { bus: String, up: bool, message: String },
    /// A state this version does not know: ignored.
    #[serde(other)]
    Unknown,
}

/// The `type` of a [`RecordFrame`], serialised as `"record"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordTag {
    Record,
}

/// `{"type":"record","seq":N,"record":<the record's original JSON>}`, borrowing the record.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordFrame<'a> {
    #[serde(rename = "type")]
    pub tag: RecordTag,
    pub seq: u64,
    #[serde(borrow)]
    pub record: &'a RawValue,
}

/// What [`decode`] reads from one text frame.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A record, borrowed from the frame when it came in the relay's form.
    Record { seq: u64, record: Cow<'a, RawValue> },
    /// Any other frame.
    Other(Frame),
}

const RECORD_PREFIX: &str = r#"{"type":"record","#;

/// Read one text frame.
pub fn decode(text: &str) -> serde_json::Result<Decoded<'_>> {
    if text.starts_with(RECORD_PREFIX) {
        let frame: RecordFrame<'_> = serde_json::from_str(text)?;
        return Ok(Decoded::Record {
            seq: frame.seq,
            record: Cow::Borrowed(frame.record),
        });
    }
    Ok(match serde_json::from_str::<Frame>(text)? {
        Frame::Record { seq, record } => Decoded::Record {
            seq,
            record: Cow::Owned(serde_json::value::to_raw_value(&record)?),
        },
        other => Decoded::Other(other),
    })
}

impl Frame {
    /// The frame as WebSocket text.
    pub fn encode(&self) -> Utf8Bytes {
        Utf8Bytes::from(serde_json::to_string(self).expect("frames serialise"))
    }
}

/// A record frame, built by concatenation so the record's bytes are not re-serialised; equal
/// to [`RecordFrame`]'s serde form.
pub fn record_frame(seq: u64, raw: &str) -> Utf8Bytes {
    let mut s = String::with_capacity(raw.len() + 40);
    s.push_str(RECORD_PREFIX);
    s.push_str(r#""seq":"#);
    // Formatting into the frame itself: a temporary String per record showed in profiles.
    let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{seq}"));
    s.push_str(r#","record":"#);
    s.push_str(raw);
    s.push('}');
    Utf8Bytes::from(s)
}

/// `status` `listening`.
pub fn status_listening(tap: &str, epoch: u64, first_seq: u64, last_seq: u64, backlog: usize) -> Utf8Bytes {
    Frame::Status(Status::Listening {
        tap: tap.to_owned(),
        epoch,
        first_seq,
        last_seq,
        replayed: backlog as u64,
    })
    .encode()
}

/// `status` `bus`: whether the bus is up, and what happened in words.
pub fn bus_status(bus: &str, up: bool, message: &str) -> Utf8Bytes {
    Frame::Status(Status::Bus {
        bus: bus.to_owned(),
        up,
        message: message.to_owned(),
    })
    .encode()
}

/// `status` `tap`: the FlowTap's phase, its conditions, and what it waits for in words.
pub fn tap_status(name: &str, status: Option<&FlowTapStatus>) -> Utf8Bytes {
    let phase = status.and_then(|s| s.phase);
    let conditions: BTreeMap<String, bool> = status
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status == "True"))
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
    let is = |type_: &str| conditions.get(type_) == Some(&true);
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
    let stage = status.and_then(|s| s.stage.as_ref());
    // The stage says what the tap waits for more exactly, while it is on its way.
    let message = match stage {
        Some(s)
            if !s.message.is_empty()
                && !is("Receiving")
                && phase.is_some_and(|p| matches!(p, Phase::Active | Phase::Pending)) =>
        {
            s.message.clone()
        }
        _ => message,
    };
    Frame::Status(Status::Tap {
        flow_tap: name.to_owned(),
        // Phase's variant names are its serialised names.
        phase: phase.map(|p| format!("{p:?}")),
        conditions,
        message,
        // Stage's variant names are its serialised names.
        stage: stage.map(|s| format!("{:?}", s.name)),
        stage_since: stage.map(|s| s.since.0.to_string()),
    })
    .encode()
}

/// `dropped`: records the listener will not get, and why.
pub fn dropped(count: Option<u64>, reason: &str) -> Utf8Bytes {
    Frame::Dropped {
        count,
        reason: reason.to_owned(),
        pods: None,
        last_seq: None,
    }
    .encode()
}

/// `dropped` with reason `sampled`: the records a listener's `rate` left out in one window,
/// how many of each pod (`""`: pods past the frame's or the window's limit), and the highest
/// sequence number the count covers.
pub fn sampled(pods: &BTreeMap<String, u64>, last_seq: u64) -> Utf8Bytes {
    Frame::Dropped {
        count: Some(pods.values().sum()),
        reason: "sampled".to_owned(),
        pods: Some(pods.clone()),
        last_seq: Some(last_seq),
    }
    .encode()
}

/// `denied`: how many records were withheld from this listener since the last one (never
/// their content, nor their pods).
pub fn denied(count: u64) -> Utf8Bytes {
    Frame::Denied {
        namespace: String::new(),
        pod: String::new(),
        count,
    }
    .encode()
}

/// `error`: sent before closing the connection.
pub fn error(code: &str, message: &str) -> Utf8Bytes {
    Frame::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn the_hand_built_record_frame_is_the_serde_form_and_decodes_without_copying() {
        let raw = r#"{"message":"x","kubernetes":{"pod_name":"web-1"}}"#;
        let frame = record_frame(7, raw);
        let record: &RawValue = serde_json::from_str(raw).unwrap();
        let serde_form = serde_json::to_string(&RecordFrame {
            tag: RecordTag::Record,
            seq: 7,
            record,
        })
        .unwrap();
        assert_eq!(frame.as_str(), serde_form);
        match decode(frame.as_str()).unwrap() {
            Decoded::Record { seq, record } => {
                assert_eq!(seq, 7);
                assert!(matches!(record, Cow::Borrowed(_)), "borrowed from the frame");
                assert_eq!(record.get(), raw);
            }
            other => panic!("{other:?}"),
        }
        // Another key order still reads, as an owned copy.
        match decode(r#"{"seq":8,"type":"record","record":{"a":1}}"#).unwrap() {
            Decoded::Record { seq, record } => assert_eq!((seq, record.get()), (8, r#"{"a":1}"#)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_frame_the_relay_encodes_decodes_to_the_same_frame() {
        let frames = [
            status_listening("flow/shop/web", 9, 1, 5, 3),
            tap_status("flow-web", None),
            dropped(Some(4), "slow_client"),
            dropped(None, "tap_restarted"),
            denied(2),
            sampled(
                &BTreeMap::from([("shop/web-1".to_owned(), 7), ("shop/web-2".to_owned(), 1)]),
                41,
            ),
            error("idle", "no pong"),
        ];
        for text in &frames {
            let Decoded::Other(frame) = decode(text.as_str()).unwrap() else {
                panic!("not a record: {}", text.as_str())
            };
            assert_ne!(frame, Frame::Unknown, "{}", text.as_str());
            assert_eq!(frame.encode().as_str(), text.as_str(), "round trip");
        }
        let v: serde_json::Value = serde_json::from_str(frames[0].as_str()).unwrap();
        assert_eq!(
            v,
            json!({"type": "status", "state": "listening", "tap": "flow/shop/web", "epoch": 9,
                   "firstSeq": 1, "lastSeq": 5, "replayed": 3})
        );
        let denied: serde_json::Value = serde_json::from_str(frames[4].as_str()).unwrap();
        assert_eq!(denied, json!({"type": "denied", "count": 2}), "no pod, no namespace");
        let sampled: serde_json::Value = serde_json::from_str(frames[5].as_str()).unwrap();
        assert_eq!(
            sampled,
            json!({"type": "dropped", "count": 8, "reason": "sampled", "pods": {"shop/web-1": 7, "shop/web-2": 1}, "lastSeq": 41})
        );
    }

    #[test]
    fn frames_from_a_newer_relay_are_unknown_not_errors() {
        assert!(matches!(
            decode(r#"{"type":"heartbeat","n":1}"#).unwrap(),
            Decoded::Other(Frame::Unknown)
        ));
        assert!(matches!(
            decode(r#"{"type":"status","state":"paused"}"#).unwrap(),
            Decoded::Other(Frame::Status(Status::Unknown))
        ));
        assert!(decode("not json").is_err());
    }

    #[test]
    fn a_tap_status_frame_says_what_the_tap_waits_for() {
        use crate::k8s::flowtap::{FlowTapStatus, Phase};
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
