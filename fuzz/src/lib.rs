//! Entry points of the fuzz targets (`fuzz/fuzz_targets`, `make fuzz`). Each takes arbitrary
//! bytes, must never panic, and checks what must hold for any input. The unit test at the bottom
//! replays the committed corpus through them, so every `cargo test --workspace` runs it without a
//! fuzzer. They live here, not in the library, so log-socket ships no fuzz code; they use only
//! its public API.

use bytes::Bytes;
use log_socket::auth::labels::LabelPolicy;
use log_socket::auth::Identity;
use log_socket::protocol;
use log_socket::relay::record::{self, BodyError};
use std::collections::BTreeMap;

/// The body limit the ingest target runs with; small, so the fuzzer reaches it.
pub const INGEST_LIMIT: usize = 64 << 10;

/// Ingest: decoding (identity, gzip, unsupported encodings) and batch parsing. The first byte
/// chooses the encoding; with `gzip-self` the rest is compressed here first, so the fuzzer
/// reaches the parser through real gzip streams too.
pub fn ingest_body(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (body, encoding) = match mode % 4 {
        0 => (Bytes::copy_from_slice(rest), None),
        1 => (Bytes::copy_from_slice(rest), Some("gzip")),
        2 => (gzip(rest), Some("gzip")),
        _ => (Bytes::copy_from_slice(rest), Some("br")),
    };
    let decoded = match record::decode(body, encoding, INGEST_LIMIT) {
        Ok(decoded) => decoded,
        Err(BodyError::UnsupportedEncoding(e)) => {
            assert_eq!(e, "br");
            return;
        }
        Err(_) => return,
    };
    assert!(decoded.len() <= INGEST_LIMIT, "the limit holds after decoding");
    let parsed = record::parse_batch(&decoded);
    let Ok(text) = std::str::from_utf8(&decoded) else {
        assert!(parsed.is_err(), "a body that is not UTF-8 is refused");
        return;
    };
    let reference = record::parse_batch_checked(&decoded, text);
    match (&parsed, &reference) {
        (Ok(got), Ok(want)) => {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.raw, w.raw);
                assert_eq!(g.meta, w.meta);
                assert!(g.raw.starts_with('{'), "a record is an object");
                serde_json::from_str::<serde::de::IgnoredAny>(&g.raw).expect("a record is valid JSON");
            }
        }
        (Err(got), Err(want)) => assert_eq!(got, want),
        _ => panic!("parse_batch and the reference parser disagree: {parsed:?} vs {reference:?}"),
    }
}

fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("writing to memory");
    Bytes::from(enc.finish().expect("writing to memory"))
}

/// The label policy: line 1 is the username, line 2 the groups (comma-separated), every other
/// line a `key=value` label (keys may repeat). The decision must be the one of the plain
/// reference implementation below.
pub fn label_policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let username = lines.next().unwrap_or_default().to_owned();
    let groups = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    let labels: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once('=')).collect();
    // Written by hand so repeated keys reach the parser as they would from fluentd.
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::Value::from(*k), serde_json::Value::from(*v)))
        .collect();
    let json = format!(r#"{{"kubernetes":{{"labels":{{{}}}}}}}"#, pairs.join(","));
    let meta = protocol::meta_of(&json).expect("labels written as JSON parse");
    let who = Identity { username, groups };
    let map: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for flattened in [false, true] {
        assert_eq!(
            LabelPolicy::default()
                .with_flattened_keys(flattened)
                .allows(&who, &meta),
            reference_allows(&who, &map, flattened),
            "{who:?} on {json} (flattened keys: {flattened})"
        );
    }
}

/// A key as docs/security.md states it, built the slow, obvious way.
fn reference_key(prefix: &str, name: &str) -> String {
    let escaped: String = name
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
            _ => format!("_{b:02x}"),
        })
        .collect();
    let key = format!("{prefix}.{escaped}");
    if key.len() <= 63 {
        return key;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}h.{hex}")
}

fn reference_user_key(username: &str) -> String {
    let parts: Vec<&str> = username.splitn(4, ':').collect();
    if let ["system", "serviceaccount", ns, name] = parts[..] {
        let ns_ok = !ns.is_empty()
            && ns.len() <= 63
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let key = format!("sa.{ns}.{name}");
        if ns_ok && name_ok && key.len() <= 63 {
            return key;
        }
    }
    reference_key("u", username)
}

/// The label policy as docs/security.md states it, built the slow, obvious way.
fn reference_allows(who: &Identity, labels: &BTreeMap<String, String>, flattened: bool) -> bool {
    let lookup = |key: &str| -> Option<bool> {
        let mut candidates = vec![format!("rbac/{key}")];
        if flattened {
            let dedotted = key.replace('.', "_");
            candidates.extend([
                format!("rbac_{key}"),
                format!("rbac/{dedotted}"),
                format!("rbac_{dedotted}"),
            ]);
        }
        candidates.iter().find_map(|c| match labels.get(c).map(String::as_str) {
            Some("allow") => Some(true),
            Some("deny") => Some(false),
            _ => None,
        })
    };
    if let Some(decision) = lookup(&reference_user_key(&who.username)) {
        return decision;
    }
    let groups: Vec<bool> = who
        .groups
        .iter()
        .filter_map(|g| lookup(&reference_key("g", g)))
        .collect();
    if groups.contains(&false) {
        return false;
    }
    groups.contains(&true) || lookup("policy").unwrap_or(false)
}

/// A listener's query string (`tail=…&grep=…`), as the relay validates it, then its filter on a
/// record.
pub fn listener_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (query, record) = text.split_once('\n').unwrap_or((&text, ""));
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let Ok(query) = protocol::ListenQuery::from_pairs(&pairs) else {
        return;
    };
    // What one end writes, the other reads back.
    let encoded = query.encode();
    let again: Vec<(String, String)> = serde_urlencoded::from_str(&encoded).expect("an encoded query decodes");
    assert_eq!(
        protocol::ListenQuery::from_pairs(&again).as_ref(),
        Ok(&query),
        "{encoded}"
    );
    if let Ok(filter) = query.filter.compile() {
        if let Ok(meta) = protocol::meta_of(record) {
            let _ = filter.matches(&meta);
        }
    }
}

/// A frame from the relay as k8stail reads and prints it, in every output format.
pub fn k8stail_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for args in [
        &["-o", "raw"][..],
        &["-o", "json"],
        &["-o", "raw", "-H", "e"],
        &["-o", "extjson"],
        &["-o", "pretty", "--timestamps"],
        &["--field", "kubernetes.pod_name", "--field", "message"],
        &[
            "--template",
            "{{ _seq }} {{ kubernetes.pod_name }} {{ message | upper }} {{ Message | tryParseJSON | tojson }} {{ toTimestamp(time, '15:04') if time else '' }}",
        ],
    ] {
        let mut out = Vec::new();
        render_frame(args, text, &mut out).expect("rendering into memory");
    }
}

/// Print one relay frame as `k8stail shop/web ARGS` would (records only; other frames print
/// nothing).
fn render_frame(args: &[&str], frame: &str, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use log_socket::k8stail::{render::Renderer, Cli};
    use log_socket::protocol::{decode, Decoded};
    let cli = Cli::try_parse_args([&["k8stail", "shop/web"], args].concat()).expect("valid arguments");
    let target = log_socket::k8stail::parse_target("shop/web", false).expect("valid target");
    let renderer = Renderer::new(&cli.tail, false, false).expect("valid renderer");
    match decode(frame) {
        Ok(Decoded::Record { seq, record }) => renderer.record(out, &target, frame, seq, &record),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every input in the committed corpus of every target, through its target.
    #[test]
    fn the_committed_fuzz_corpus_passes_every_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 4] = [
            ("ingest_body", super::ingest_body),
            ("label_policy", super::label_policy),
            ("listener_query", super::listener_query),
            ("k8stail_frame", super::k8stail_frame),
        ];
        for (name, target) in targets {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n > 0, "{name} has a corpus");
        }
    }
}
