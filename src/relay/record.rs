//! Parsing what fluentd's `out_http` POSTs: a JSON array (`json_array true`, with or without
//! newlines between elements), NDJSON, or a single object; optionally gzip-compressed.
//!
//! A whole batch is validated before anything is forwarded, so a rejected request never leaves
//! half a batch behind that a fluentd retry would duplicate. Each record keeps its original bytes
//! (a slice of the request body, no copy) and the few fields routing and filtering need.

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

/// One log record as received: its exact bytes and what the relay reads from it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's JSON, byte for byte as fluentd sent it.
    pub raw: Bytes,
    /// Identity, labels and message, for routing, filters and authorization.
    pub meta: Meta,
}

/// Fields of a record the relay uses. Absent fields are `None`/empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// `kubernetes.namespace_name`.
    pub namespace: Option<String>,
    /// `kubernetes.pod_name`.
    pub pod: Option<String>,
    /// `kubernetes.container_name`.
    pub container: Option<String>,
    /// `kubernetes.labels` (string values only).
    pub labels: BTreeMap<String, String>,
    /// `message` (containerd) or `log` (docker), when it is a string.
    pub message: Option<String>,
}

/// Why a request body was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Malformed JSON, or an element that is not an object (400).
    #[error("{0}")]
    Malformed(String),
    /// Body (after decompression) larger than the limit (413).
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// A `Content-Encoding` other than gzip or identity (415).
    #[error("unsupported Content-Encoding {0:?}; send gzip or no encoding")]
    UnsupportedEncoding(String),
}

/// Decode the body according to `Content-Encoding`, enforcing `limit` on the decoded size
/// (a small gzip body can expand enormously).
pub fn decode(body: Bytes, encoding: Option<&str>, limit: usize) -> Result<Bytes, BodyError> {
    match encoding.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            Ok(body)
        }
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            let mut reader = flate2::read::MultiGzDecoder::new(&body[..]).take(limit as u64 + 1);
            reader
                .read_to_end(&mut out)
                .map_err(|e| BodyError::Malformed(format!("invalid gzip body: {e}")))?;
            if out.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Parse a decoded body into records. An empty body is an empty batch.
pub fn parse_batch(body: &Bytes) -> Result<Vec<Record>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("body is not UTF-8 (byte {})", e.valid_up_to())))?;
    let start = text.trim_start();
    if start.starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
            BodyError::Malformed(format!(
                "malformed JSON array at line {}, column {}: {e}",
                e.line(),
                e.column()
            ))
        })?;
        elements
            .iter()
            .enumerate()
            .map(|(i, raw)| record(body, raw).map_err(|e| BodyError::Malformed(format!("element {i}: {e}"))))
            .collect()
    } else {
        // NDJSON, a single object, or objects separated by any whitespace.
        let mut records = Vec::new();
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
        loop {
            let before = stream.byte_offset();
            let Some(item) = stream.next() else { break };
            let raw = item.map_err(|e| {
                // Name the line where the broken record starts, not where the parser gave up.
                let rest = &text[before..];
                let start = before + (rest.len() - rest.trim_start().len());
                let line = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
                BodyError::Malformed(format!("line {line}: malformed JSON: {e}"))
            })?;
            let line = line_of(text, raw);
            records.push(record(body, raw).map_err(|e| BodyError::Malformed(format!("line {line}: {e}")))?);
        }
        Ok(records)
    }
}

fn line_of(text: &str, raw: &RawValue) -> usize {
    let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
    text[..offset].bytes().filter(|&b| b == b'\n').count() + 1
}

fn record(body: &Bytes, raw: &RawValue) -> Result<Record, String> {
    let json = raw.get();
    if !json.starts_with('{') {
        return Err("expected a JSON object (one log record)".into());
    }
    let meta = meta_of(json)?;
    // The raw value borrows from `body`'s UTF-8 view, so it is a sub-slice: share, do not copy.
    Ok(Record {
        raw: body.slice_ref(json.as_bytes()),
        meta,
    })
}

/// What the relay reads from one record's JSON (k8stail uses it to filter locally).
pub fn meta_of(json: &str) -> Result<Meta, String> {
    let parsed: RawMeta<'_> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let k = parsed.kubernetes.unwrap_or_default();
    Ok(Meta {
        namespace: k.namespace_name.0.map(Cow::into_owned),
        pod: k.pod_name.0.map(Cow::into_owned),
        container: k.container_name.0.map(Cow::into_owned),
        labels: k
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, v)| v.0.map(|v| (key.into_owned(), v.into_owned())))
            .collect(),
        message: parsed.message.0.or(parsed.log.0).map(Cow::into_owned),
    })
}

#[derive(Deserialize, Default)]
struct RawMeta<'a> {
    #[serde(borrow, default)]
    kubernetes: Option<RawKubernetes<'a>>,
    #[serde(borrow, default)]
    message: MaybeStr<'a>,
    #[serde(borrow, default)]
    log: MaybeStr<'a>,
}

#[derive(Deserialize, Default)]
struct RawKubernetes<'a> {
    #[serde(borrow, default)]
    namespace_name: MaybeStr<'a>,
    #[serde(borrow, default)]
    pod_name: MaybeStr<'a>,
    #[serde(borrow, default)]
    container_name: MaybeStr<'a>,
    #[serde(borrow, default)]
    labels: Option<BTreeMap<Cow<'a, str>, MaybeStr<'a>>>,
}

/// A string, or `None` for any other JSON value: a record whose `message` is an object (merged
/// JSON logs) is still a valid record.
#[derive(Default)]
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REC: &str = r#"{"time":"2025-03-14T09:26:53.589793238Z","stream":"stdout","logtag":"F","message":"GET /api/cart 200 12ms","kubernetes":{"pod_name":"web-7d9c8b6f5-x2lqk","namespace_name":"shop","labels":{"app":"web","rbac/policy":"allow"},"container_name":"web"}}"#;

    fn parse(s: &str) -> Result<Vec<Record>, BodyError> {
        parse_batch(&Bytes::from(s.to_owned()))
    }

    #[test]
    fn a_json_array_with_newlines_between_elements_keeps_each_records_bytes() {
        let body = format!("[{REC}\n,{REC}\n]");
        let records = parse(&body).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].raw, REC.as_bytes());
        let m = &records[0].meta;
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.pod.as_deref(), Some("web-7d9c8b6f5-x2lqk"));
        assert_eq!(m.container.as_deref(), Some("web"));
        assert_eq!(m.labels["rbac/policy"], "allow");
        assert_eq!(m.message.as_deref(), Some("GET /api/cart 200 12ms"));
    }

    #[test]
    fn ndjson_and_a_single_object_are_accepted() {
        assert_eq!(parse(&format!("{REC}\n{REC}\n\n{REC}\n")).unwrap().len(), 3);
        assert_eq!(parse(REC).unwrap().len(), 1);
        assert_eq!(parse("").unwrap().len(), 0);
        assert_eq!(parse("[]").unwrap().len(), 0);
    }

    #[test]
    fn docker_log_and_non_string_fields_do_not_break_a_record() {
        let r =
            parse(r#"{"log":"hello\n","message":{"json":"merged"},"kubernetes":{"labels":{"n":1,"s":"x"}}}"#).unwrap();
        assert_eq!(r[0].meta.message.as_deref(), Some("hello\n"));
        assert_eq!(r[0].meta.labels.len(), 1);
    }

    #[test]
    fn malformed_input_names_the_element_or_line() {
        let err = parse(&format!("[{REC},42]")).unwrap_err();
        assert_eq!(
            err,
            BodyError::Malformed("element 1: expected a JSON object (one log record)".into())
        );
        let err = parse(&format!("{REC}\n{REC}\n{{\"broken\": \n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 3"), "{err}");
        let err = parse(&format!("[{REC},")).unwrap_err().to_string();
        assert!(err.starts_with("malformed JSON array at line 1"), "{err}");
        let err = parse(&format!("{REC}\n\"text\"\n")).unwrap_err().to_string();
        assert_eq!(err, "line 2: expected a JSON object (one log record)");
    }

    #[test]
    fn gzip_is_decoded_and_the_limit_applies_to_the_decoded_size() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        let body = "[".to_string() + &vec![REC; 100].join(",") + "]";
        enc.write_all(body.as_bytes()).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let decoded = decode(gz.clone(), Some("gzip"), 1 << 20).unwrap();
        assert_eq!(parse_batch(&decoded).unwrap().len(), 100);
        assert!(gz.len() < 1000, "compresses well");
        assert_eq!(decode(gz, Some("gzip"), 1000), Err(BodyError::TooLarge { limit: 1000 }));
        assert_eq!(
            decode(Bytes::from_static(b"xx"), Some("gzip"), 10)
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("invalid gzip body")
        );
        assert_eq!(
            decode(Bytes::from_static(b"{}"), Some("br"), 10),
            Err(BodyError::UnsupportedEncoding("br".into()))
        );
        assert_eq!(
            decode(Bytes::from_static(b"{}"), None, 1),
            Err(BodyError::TooLarge { limit: 1 })
        );
    }
}
