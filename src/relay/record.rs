//! Parsing what fluentd's `out_http` POSTs: a JSON array (`json_array true`, with or without
//! newlines between elements), NDJSON, or a single object; optionally gzip-compressed.
//!
//! A whole batch is validated before anything is forwarded, so a rejected request never leaves
//! half a batch behind that a fluentd retry would duplicate. Each record keeps its original bytes
//! (a slice of the request body, no copy) and the few fields routing and filtering need.

use super::scan;
use crate::protocol::record_meta::RawMeta;
use crate::protocol::Meta;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::Read;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One log record as received: its exact bytes and what the relay reads from it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's JSON, byte for byte as fluentd sent it (a slice of the request body).
    pub raw: Utf8Bytes,
    /// Identity, labels and message, for routing, filters and authorization.
    pub meta: Meta,
}

/// A numbered record with its WebSocket frame, serialised once and shared by all listeners.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub meta: Meta,
    pub frame: Utf8Bytes,
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
    /// More records than one request may carry (413).
    #[error("more than {limit} records in one request; send smaller chunks (a FlowTap's spec.buffer.chunkLimitSize)")]
    TooManyRecords { limit: usize },
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
///
/// Each record is read once: the fast path reads the fields the relay needs while finding
/// where the record ends (the scanner, or serde for a record the scanner hands over). A body
/// it does not accept is handed to [`parse_batch_checked`], which is the definition of what is
/// valid and words the error.
pub fn parse_batch(body: &Bytes) -> Result<Vec<Record>, BodyError> {
    parse_batch_limited(body, usize::MAX)
}

/// [`parse_batch`], refusing a body of more than `limit` records as soon as it gets there (a
/// 16 MiB body of `{}` elements is millions of records, and each costs memory beyond its
/// bytes).
pub fn parse_batch_limited(body: &Bytes, limit: usize) -> Result<Vec<Record>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("body is not UTF-8 (byte {})", e.valid_up_to())))?;
    match parse_fast(body, text, limit) {
        Some(records) => records,
        None => parse_checked_limited(body, text, limit),
    }
}

/// JSON's own whitespace (not Unicode's, which JSON does not allow between tokens).
fn skip_ws(text: &str, mut pos: usize) -> usize {
    let bytes = text.as_bytes();
    while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\n' | b'\r' | b'\t') {
        pos += 1;
    }
    pos
}

/// One record starting at `pos` (an object), read in one pass: by [`scan`], or by serde when
/// the scanner hands it over (so such a record costs its own second read, not the body's);
/// `None` if it is not a valid record.
fn fast_record<'a>(
    body: &Bytes,
    text: &'a str,
    pos: usize,
    labels: &mut Vec<(Cow<'a, str>, Option<Cow<'a, str>>)>,
) -> Option<(Record, usize)> {
    if text.as_bytes().get(pos) != Some(&b'{') {
        return None;
    }
    labels.clear();
    let Some((f, end)) = scan::record(text, pos, labels) else {
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<RawMeta<'_>>();
        let parsed = stream.next()?.ok()?;
        let end = pos + stream.byte_offset();
        return Some((record_at(body, &text[pos..end], parsed.into_meta()), end));
    };
    let message = f.message.or(f.log);
    let meta = Meta::build(
        [
            f.namespace.as_deref(),
            f.pod.as_deref(),
            f.container.as_deref(),
            message.as_deref(),
        ],
        labels,
    );
    Some((record_at(body, &text[pos..end], meta), end))
}

fn parse_fast(body: &Bytes, text: &str, limit: usize) -> Option<Result<Vec<Record>, BodyError>> {
    let bytes = text.as_bytes();
    let mut pos = skip_ws(text, 0);
    let mut records = Vec::new();
    let mut labels = Vec::new();
    let too_many = || Some(Err(BodyError::TooManyRecords { limit }));
    if bytes.get(pos) == Some(&b'[') {
        pos = skip_ws(text, pos + 1);
        if bytes.get(pos) == Some(&b']') {
            pos += 1;
        } else {
            loop {
                let (record, end) = fast_record(body, text, pos, &mut labels)?;
                if records.len() == limit {
                    return too_many();
                }
                records.push(record);
                pos = skip_ws(text, end);
                match bytes.get(pos)? {
                    b',' => pos = skip_ws(text, pos + 1),
                    b']' => {
                        pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        return (skip_ws(text, pos) == bytes.len()).then_some(Ok(records));
    }
    while pos < bytes.len() {
        let (record, end) = fast_record(body, text, pos, &mut labels)?;
        if records.len() == limit {
            return too_many();
        }
        records.push(record);
        pos = skip_ws(text, end);
    }
    Some(Ok(records))
}

/// The reference parser: a JSON array of objects, or objects separated by whitespace (NDJSON,
/// a single object). Slower (it scans each record twice), and the one that explains errors.
pub fn parse_batch_checked(body: &Bytes, text: &str) -> Result<Vec<Record>, BodyError> {
    parse_checked_limited(body, text, usize::MAX)
}

/// A JSON array of at most `limit` raw elements (the visitor stops at the first one over).
struct Bounded<'a> {
    elements: Vec<&'a RawValue>,
    limit: usize,
}

/// The marker of the error [`Bounded`] stops with.
const TOO_MANY: &str = "log-socket: too many records";

impl<'de> serde::de::DeserializeSeed<'de> for &mut Bounded<'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Bounded<'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if self.elements.len() == self.limit {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            self.elements.push(raw);
        }
        Ok(())
    }
}

fn parse_checked_limited(body: &Bytes, text: &str, limit: usize) -> Result<Vec<Record>, BodyError> {
    let start = text.trim_start();
    if start.starts_with('[') {
        // Room for the limit, or for what the body can hold when that is less.
        let mut bounded = Bounded {
            elements: Vec::with_capacity(limit.min(text.len() / 2 + 1)),
            limit,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = serde::de::DeserializeSeed::deserialize(&mut bounded, &mut de).and_then(|()| de.end());
        if let Err(e) = parsed {
            if e.to_string().starts_with(TOO_MANY) {
                return Err(BodyError::TooManyRecords { limit });
            }
            return Err(BodyError::Malformed(format!(
                "malformed JSON array at line {}, column {}: {e}",
                e.line(),
                e.column()
            )));
        }
        let elements = bounded.elements;
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
            if records.len() == limit {
                return Err(BodyError::TooManyRecords { limit });
            }
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
    let parsed: RawMeta<'_> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(record_at(body, json, parsed.into_meta()))
}

/// `json` is a slice of `body`'s UTF-8 view: share its bytes, do not copy them.
fn record_at(body: &Bytes, json: &str, meta: Meta) -> Record {
    // SAFETY: `json` is a `&str`, so the bytes it covers are valid UTF-8.
    let raw = unsafe { Utf8Bytes::from_bytes_unchecked(body.slice_ref(json.as_bytes())) };
    Record { raw, meta }
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
        assert_eq!(records[1].raw, REC);
        let m = &records[0].meta;
        assert_eq!(m.namespace(), Some("shop"));
        assert_eq!(m.pod(), Some("web-7d9c8b6f5-x2lqk"));
        assert_eq!(m.container(), Some("web"));
        assert_eq!(m.label("rbac/policy"), Some("allow"));
        assert_eq!(m.labels().count(), 2);
        assert_eq!(m.message(), Some("GET /api/cart 200 12ms"));
    }

    #[test]
    fn the_bodies_fluentd_sends_take_the_one_pass_parser() {
        for body in [
            format!("[{REC},{REC}]"),
            format!("[{REC}\n,{REC}\n]\n"),
            format!(" [ {REC} , {REC} ] "),
            format!("{REC}\n{REC}\n"),
            REC.to_string(),
            "[]".to_string(),
            String::new(),
        ] {
            let bytes = Bytes::from(body);
            let text = std::str::from_utf8(&bytes).unwrap();
            assert!(parse_fast(&bytes, text, usize::MAX).is_some(), "{text}");
        }
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
        assert_eq!(r[0].meta.message(), Some("hello\n"));
        assert_eq!(r[0].meta.labels().collect::<Vec<_>>(), [("s", "x")]);
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

    #[test]
    fn escaped_strings_and_repeated_labels_read_as_a_json_map_would() {
        let r = parse(
            r#"{"message":"tab\there \u00e9","kubernetes":{"namespace_name":"sh\"op","labels":{"a":"1","a":"2","b":null}}}"#,
        )
        .unwrap();
        assert_eq!(r[0].meta.message(), Some("tab\there é"));
        assert_eq!(r[0].meta.namespace(), Some("sh\"op"));
        assert_eq!(r[0].meta.label("a"), Some("2"));
        assert_eq!(r[0].meta.label("b"), None);
        assert_eq!(
            parse(r#"{"kubernetes":{"labels":null}}"#).unwrap()[0]
                .meta
                .labels()
                .count(),
            0
        );
    }

    /// Records at the edges of JSON and of what the one-pass scanner takes (it hands
    /// surrogate escapes, numbers serde must convert, repeated fields and deep nesting to the
    /// reference parser), each valid or not.
    const EDGE_RECORDS: &[&str] = &[
        r#"{"message":"esc \u001b[31m red \u00e9 \/ \\ \"q\" \b\f\n\r\t"}"#,
        r#"{"message":"\ud83d\ude00 paired"}"#,
        r#"{"message":"\ud83d lone"}"#,
        r#"{"other":"\ud83d lone, ignored"}"#,
        r#"{"other":{"\udc00":1}}"#,
        r#"{"message":{"\udc00":1}}"#,
        r#"{"message":1e400}"#,
        r#"{"other":1e400}"#,
        r#"{"message":123456789012345678901234567890}"#,
        r#"{"message":-0.5,"n":[1,2.5e3,-0,{"a":null,"b":[true,false]}],"e":{}}"#,
        r#"{"mess\u0061ge":"escaped key","kubernetes":{"l\u0061bels":{"k\u0065y":"v\u0061l"}}}"#,
        r#"{"kubernetes":[]}"#,
        r#"{"kubernetes":["ns","pod"]}"#,
        r#"{"kubernetes":"x"}"#,
        r#"{"kubernetes":null}"#,
        r#"{"kubernetes":{"labels":[]}}"#,
        r#"{"kubernetes":{"labels":7}}"#,
        r#"{"kubernetes":{"labels":{"a":{"b":[1]},"c":[],"d":false,"e":"x"}}}"#,
        r#"{"kubernetes":{"pod_name":"a","pod_name":"b"}}"#,
        r#"{"kubernetes":{"labels":null,"labels":{}}}"#,
        r#"{"kubernetes":{},"kubernetes":{}}"#,
        r#"{"log":"a","log":"b"}"#,
        "{\"message\":\"raw\u{1}control\"}",
        "{\"message\":\"raw\ttab\"}",
        "{\"other\":\"raw\u{1f}control\"}",
        r#"{"message":"\x"}"#,
        r#"{"message":"\u12G4"}"#,
        r#"{"message":"\u12"}"#,
        r#"{"n":01}"#,
        r#"{"n":-}"#,
        r#"{"n":1.}"#,
        r#"{"n":.5}"#,
        r#"{"n":1e}"#,
        r#"{"n":1E+2,"m":1e-2}"#,
        r#"{"a":1,}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":[,1]}"#,
        r#"{"message":tru}"#,
        r#"{"message":nul,"x":1}"#,
        r#"{"message":"unterminated}"#,
        r#"{"a" "b"}"#,
        r#"{1:2}"#,
        " { \"message\" : \"spaced\" , \"kubernetes\" : { \"labels\" : { \"a\" : \"b\" } } } ",
        "{\"message\":\"caf\u{e9} \u{1f600}\"}",
    ];

    fn deep(depth: usize) -> String {
        format!("{{\"d\":{}{}}}", "[".repeat(depth), "]".repeat(depth))
    }

    /// Pieces bodies are made of: valid records, separators, and things that break them.
    fn piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just(REC.to_string()),
            Just(r#"{"message":"a\nb","kubernetes":{"labels":{"x":"y","n":1}}}"#.to_string()),
            Just("{}".to_string()),
            Just(",".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("\n".to_string()),
            Just(" \t\r".to_string()),
            Just("\u{a0}".to_string()),
            Just("42".to_string()),
            Just("\"text\"".to_string()),
            Just("null".to_string()),
            Just("[]".to_string()),
            Just(r#"{"message":"dup","message":"x"}"#.to_string()),
            Just(r#"{"kubernetes":{"labels":"no"}}"#.to_string()),
            Just(r#"{"broken":"#.to_string()),
            proptest::sample::select(EDGE_RECORDS).prop_map(str::to_owned),
            "[ -~]{0,6}",
        ]
    }

    #[test]
    fn a_body_of_more_records_than_the_limit_is_refused_by_both_parsers() {
        for body in ["[{},{},{}]", "{}\n{}\n{}", "[{\"a\":1}, {\"b\":[1,2]}, 7]"] {
            let bytes = Bytes::from(body);
            assert!(
                matches!(
                    parse_batch_limited(&bytes, 2),
                    Err(BodyError::TooManyRecords { limit: 2 })
                ),
                "{body}"
            );
        }
        // The reference parser on its own (the fast one hands over invalid bodies).
        let text = "[{}, {}, {}]";
        let bytes = Bytes::from(text);
        assert!(matches!(
            parse_checked_limited(&bytes, text, 2),
            Err(BodyError::TooManyRecords { limit: 2 })
        ));
        assert_eq!(parse_checked_limited(&bytes, text, 3).unwrap().len(), 3);
        assert_eq!(parse_batch_limited(&Bytes::from("[{},{}]"), 2).unwrap().len(), 2);
        let e = BodyError::TooManyRecords { limit: 2 }.to_string();
        assert!(e.contains("chunkLimitSize"), "{e}");
    }

    /// The one-pass scanner and the reference parser agree on `body`: same records when the
    /// scanner takes it, never records the reference refuses.
    fn agree(body: &str) -> Result<bool, String> {
        let bytes = Bytes::from(body.to_owned());
        let text = std::str::from_utf8(&bytes).unwrap();
        let fast = parse_fast(&bytes, text, usize::MAX).map(|r| r.expect("no limit"));
        let checked = parse_batch_checked(&bytes, text);
        match (&fast, &checked) {
            (Some(f), Ok(c)) => {
                if f.len() != c.len() || f.iter().zip(c).any(|(f, c)| f.raw != c.raw || f.meta != c.meta) {
                    return Err(format!("{body}: fast {f:?} vs reference {c:?}"));
                }
            }
            (Some(f), Err(e)) => {
                return Err(format!(
                    "{body}: fast path took {} records the reference refuses: {e}",
                    f.len()
                ))
            }
            (None, _) => {}
        }
        Ok(fast.is_some())
    }

    #[test]
    fn edge_records_read_the_same_through_both_parsers_and_valid_ones_take_one_pass() {
        for body in EDGE_RECORDS
            .iter()
            .map(|r| r.to_string())
            .chain([deep(60), deep(64), deep(127), deep(200)])
        {
            let one_pass = agree(&body).unwrap();
            let bytes = Bytes::from(body.clone());
            let valid = parse_batch_checked(&bytes, std::str::from_utf8(&bytes).unwrap()).is_ok();
            assert_eq!(one_pass, valid, "{body}");
        }
    }

    #[test]
    fn escapes_numbers_and_nesting_as_logs_have_them_take_the_scanner_itself() {
        for record in [0, 9, 10, 17, 33, 42, 43]
            .map(|i| EDGE_RECORDS[i].to_string())
            .into_iter()
            .chain([deep(60), REC.to_string()])
        {
            let text = record.trim_start();
            assert!(scan::record(text, 0, &mut Vec::new()).is_some(), "{text}");
        }
    }

    #[test]
    fn a_record_the_scanner_hands_over_does_not_send_its_whole_body_to_the_reference_parser() {
        let surrogates = EDGE_RECORDS[1];
        assert!(scan::record(surrogates, 0, &mut Vec::new()).is_none());
        let body = format!("[{REC},{surrogates},{REC}]");
        let bytes = Bytes::from(body.clone());
        let text = std::str::from_utf8(&bytes).unwrap();
        let records = parse_fast(&bytes, text, usize::MAX)
            .expect("one pass, record by record")
            .unwrap();
        assert_eq!(records[1].meta.message(), Some("\u{1f600} paired"));
        assert_eq!(agree(&body), Ok(true));
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_parser_accepts_exactly_what_the_reference_parser_accepts(
            pieces in proptest::collection::vec(piece(), 0..12)
        ) {
            let body = Bytes::from(pieces.concat());
            let text = std::str::from_utf8(&body).unwrap();
            if let Err(e) = agree(text) {
                proptest::prop_assert!(false, "{e}");
            }
            let checked = parse_batch_checked(&body, text);
            // And whatever the path, the result is the reference's.
            let got = parse_batch(&body).map(|r| r.len());
            proptest::prop_assert_eq!(got, checked.map(|r| r.len()));
        }
    }
}
