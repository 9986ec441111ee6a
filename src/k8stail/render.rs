//! How k8stail prints a record: raw JSON, the whole frame, a pretty line, a template, or
//! selected fields.

use super::{ColorChoice, OutputFormat, TailArgs, Target};
use crate::k8s::flowtap::FlowKind;
use serde_json::value::RawValue;
use serde_json::Value;
use std::io::{self, Write};

enum Format {
    Raw,
    Json,
    Pretty,
    Template(Box<minijinja::Environment<'static>>),
    Fields(Vec<Vec<String>>),
}

/// Prints records to stdout.
pub struct Renderer {
    format: Format,
    color: bool,
    timestamps: bool,
    /// Show the namespace beside the pod (a ClusterFlow spans namespaces).
    namespaced: bool,
    tap: String,
    /// stdout is a terminal.
    tty: bool,
}

/// Pod colours: distinct, readable on dark and light terminals.
const PALETTE: [&str; 6] = ["31", "32", "33", "34", "35", "36"];

impl Renderer {
    /// Build from the flags; an invalid template is refused here, before connecting.
    pub fn new(args: &TailArgs, target: &Target, stdout_tty: bool) -> Result<Renderer, String> {
        let format = if let Some(text) = &args.template {
            let mut env = minijinja::Environment::new();
            env.add_template_owned("record", text.clone())
                .map_err(|e| format!("invalid --template: {e}"))?;
            Format::Template(Box::new(env))
        } else if !args.field.is_empty() {
            Format::Fields(
                args.field
                    .iter()
                    .map(|f| f.split('.').map(str::to_owned).collect())
                    .collect(),
            )
        } else {
            match args.output {
                Some(OutputFormat::Raw) => Format::Raw,
                Some(OutputFormat::Json) => Format::Json,
                Some(OutputFormat::Pretty) => Format::Pretty,
                None if stdout_tty => Format::Pretty,
                None => Format::Raw,
            }
        };
        let color = match args.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stdout_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        };
        Ok(Renderer {
            format,
            color,
            timestamps: args.timestamps,
            namespaced: target.kind == FlowKind::ClusterFlow,
            tap: target.to_string(),
            tty: stdout_tty,
        })
    }

    /// Print one record. `frame` is the whole protocol frame, `record` the record's JSON.
    pub fn record(&self, out: &mut dyn Write, frame: &str, seq: u64, record: &RawValue) -> io::Result<()> {
        let mut line = String::new();
        let parsed = || serde_json::from_str::<Value>(record.get()).unwrap_or(Value::Null);
        if self.timestamps {
            let value = parsed();
            line.push_str(&one_line(&timestamp(&value)));
            line.push(' ');
        }
        match &self.format {
            // JSON escapes C0 controls; C1 ones (such as U+009B, a CSI) and DEL it may carry
            // raw, so on a terminal they are written as \u escapes (the same JSON).
            Format::Raw if self.tty => line.push_str(&json_for_terminal(record.get())),
            Format::Json if self.tty => line.push_str(&json_for_terminal(frame)),
            Format::Raw => line.push_str(record.get()),
            Format::Json => line.push_str(frame),
            Format::Pretty => self.pretty(&mut line, &parsed()),
            Format::Fields(paths) => {
                let value = parsed();
                let cells: Vec<String> = paths
                    .iter()
                    .map(|path| {
                        let mut v = &value;
                        for key in path {
                            v = &v[key.as_str()];
                        }
                        plain(v)
                    })
                    .collect();
                line.push_str(&printable(&cells.join(" ")));
            }
            Format::Template(env) => {
                let mut value = parsed();
                if let Value::Object(map) = &mut value {
                    map.insert("_seq".into(), seq.into());
                    map.insert("_tap".into(), self.tap.clone().into());
                }
                let template = env.get_template("record").expect("added in new()");
                match template.render(minijinja::value::Serde(&value)) {
                    Ok(text) => line.push_str(&printable(&text)),
                    Err(e) => line.push_str(&format!("<template error: {e}>")),
                }
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())
    }

    fn pretty(&self, line: &mut String, v: &Value) {
        let k = &v["kubernetes"];
        let pod = k["pod_name"].as_str().unwrap_or("-");
        let container = k["container_name"].as_str().unwrap_or("-");
        let who = if self.namespaced {
            format!("{}/{pod}", k["namespace_name"].as_str().unwrap_or("-"))
        } else {
            pod.to_owned()
        };
        let message = v["message"]
            .as_str()
            .or_else(|| v["log"].as_str())
            .map(|m| m.trim_end_matches(['\n', '\r']).to_owned())
            .unwrap_or_else(|| v.to_string());
        // One message, one line: a newline in it is shown as `\n`, never started.
        let (who, container, message) = (one_line(&who), one_line(container), one_line(&message));
        if self.color {
            let c = PALETTE[fnv(pod) as usize % PALETTE.len()];
            line.push_str(&format!("\x1b[{c}m{who}\x1b[0m \x1b[2m{container}\x1b[0m {message}"));
        } else {
            line.push_str(&format!("{who} {container} {message}"));
        }
    }
}

/// `s` with every character `unsafe_char` picks written by `escape`; borrowed when there is
/// none (the common case).
fn escaped<'a>(
    s: &'a str,
    unsafe_char: impl Fn(char) -> bool,
    escape: impl Fn(char, &mut String),
) -> std::borrow::Cow<'a, str> {
    if !s.chars().any(&unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `\u{1b}`, as Rust writes a character.
fn escape_default(c: char, out: &mut String) {
    out.extend(c.escape_default());
}

/// Text from a record made safe for a terminal: control characters other than newline and tab
/// (escape sequences that could recolour, retitle or rewrite the terminal, or move the cursor
/// to forge other lines) are shown escaped, e.g. `\u{1b}`. Records come from any pod.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(s, |c| c.is_control() && c != '\n' && c != '\t', escape_default)
}

/// Text from the network made safe for one terminal line: every control character, newline
/// and tab included, shown escaped (`\n`, `\u{1b}`). For notes, status lines, error messages
/// and pretty records.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(s, char::is_control, escape_default)
}

/// JSON text with DEL and C1 control characters (which JSON allows raw inside strings) written
/// as `\u` escapes: the same JSON, harmless on a terminal.
fn json_for_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(
        s,
        |c| ('\u{7f}'..='\u{9f}').contains(&c),
        |c, out| out.push_str(&format!("\\u{:04x}", c as u32)),
    )
}

/// A value for `--field`: strings without quotes (or trailing newline), missing as `-`, the
/// rest as JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim_end_matches(['\n', '\r']).to_owned(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The record's own time (`time`, `@timestamp`, `timestamp`), else now, RFC 3339.
fn timestamp(v: &Value) -> String {
    ["time", "@timestamp", "timestamp"]
        .iter()
        .find_map(|k| v[*k].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().to_string())
}

/// The record's time, if it has one that parses.
pub fn record_time(record: &RawValue) -> Option<k8s_openapi::jiff::Timestamp> {
    let v: Value = serde_json::from_str(record.get()).ok()?;
    ["time", "@timestamp", "timestamp"]
        .iter()
        .find_map(|k| v[*k].as_str())
        .and_then(|t| t.parse().ok())
}

fn fnv(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x01000193))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn renderer(args: &[&str], tty: bool) -> Renderer {
        let cli = super::super::Cli::try_parse_from([&["k8stail", "shop/web"], args].concat()).unwrap();
        let target = Target::parse("shop/web", false).unwrap();
        Renderer::new(&cli.tail, &target, tty).unwrap()
    }

    fn show(r: &Renderer, record: &str) -> String {
        let raw = RawValue::from_string(record.to_owned()).unwrap();
        let frame = format!(r#"{{"type":"record","seq":7,"record":{record}}}"#);
        let mut out = vec![];
        r.record(&mut out, &frame, 7, &raw).unwrap();
        String::from_utf8(out).unwrap()
    }

    const REC: &str = r#"{"time":"2025-03-14T09:26:53Z","message":"hello\n","n":1.50,"kubernetes":{"pod_name":"web-1","container_name":"app","namespace_name":"shop"}}"#;

    #[test]
    fn raw_is_the_record_byte_for_byte_and_the_default_off_a_terminal() {
        assert_eq!(show(&renderer(&[], false), REC), format!("{REC}\n"));
        assert!(show(&renderer(&["-o", "json"], false), REC).starts_with(r#"{"type":"record","seq":7"#));
    }

    #[test]
    fn pretty_is_the_default_on_a_terminal_and_colours_only_when_asked() {
        assert_eq!(show(&renderer(&["--color", "never"], true), REC), "web-1 app hello\n");
        let coloured = show(&renderer(&["--color", "always"], true), REC);
        assert!(coloured.contains("\x1b[") && coloured.contains("hello"), "{coloured:?}");
        assert!(!show(&renderer(&["--color", "always", "-o", "raw"], true), REC).contains("\x1b["));
    }

    #[test]
    fn templates_fields_and_timestamps_project_the_record() {
        let t = renderer(
            &[
                "--template",
                "{{ kubernetes.pod_name }}#{{ _seq }}: {{ message | trim }}",
            ],
            false,
        );
        assert_eq!(show(&t, REC), "web-1#7: hello\n");
        let f = renderer(
            &["--field", "kubernetes.pod_name", "--field", "n", "--field", "missing.x"],
            false,
        );
        assert_eq!(show(&f, REC), "web-1 1.5 -\n");
        let ts = renderer(&["--timestamps", "--field", "message"], false);
        assert_eq!(show(&ts, REC), "2025-03-14T09:26:53Z hello\n");
    }

    #[test]
    fn escape_sequences_in_records_never_reach_the_terminal_raw() {
        let hostile = r#"{"message":"ok\u001b]0;owned\u0007\r\u001b[2Kfake line\nsecond\tline \u009b31m","kubernetes":{"pod_name":"web\u001b[31m","container_name":"app"}}"#;
        for args in [
            &["-o", "pretty"][..],
            &["--field", "message"],
            &["--template", "{{ kubernetes.pod_name }} {{ message }}"],
        ] {
            let out = show(&renderer(args, true), hostile);
            assert!(!out.contains('\u{1b}') || args == ["-o", "pretty"], "{args:?}: {out:?}");
            let ours_removed = out.replace("\u{1b}[0m", "").replace("\u{1b}[2m", "");
            let ours_removed = (31..=36).fold(ours_removed, |o, c| o.replace(&format!("\u{1b}[{c}m"), ""));
            assert!(
                !ours_removed.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}']),
                "{args:?}: {out:?}"
            );
            assert!(out.contains("\\u{1b}]0;owned"), "shown escaped: {out:?}");
            if args == ["-o", "pretty"] {
                // One message, one line.
                assert!(out.contains("fake line\\nsecond\\tline"), "{out:?}");
                assert_eq!(out.matches('\n').count(), 1, "{out:?}");
            } else {
                assert!(out.contains("fake line\nsecond\tline"), "newline and tab kept: {out:?}");
            }
        }
    }

    #[test]
    fn timestamps_and_raw_json_on_a_terminal_carry_no_control_characters() {
        let hostile = "{\"time\":\"2025\\u001b[2J\\n\",\"message\":\"a\u{9b}31m b\u{7f}\"}";
        let out = show(&renderer(&["--timestamps", "--field", "message"], false), hostile);
        assert!(out.starts_with("2025\\u{1b}[2J\\n "), "{out:?}");
        let raw = show(&renderer(&["-o", "raw"], true), hostile);
        assert!(!raw.contains(['\u{9b}', '\u{7f}']), "{raw:?}");
        assert!(raw.contains("a\\u009b31m b\\u007f"), "{raw:?}");
        let parsed: serde_json::Value = serde_json::from_str(raw.trim_end()).unwrap();
        assert_eq!(parsed["message"], "a\u{9b}31m b\u{7f}", "the same JSON");
        // Off a terminal (a pipe), raw stays byte for byte.
        assert_eq!(show(&renderer(&["-o", "raw"], false), hostile), format!("{hostile}\n"));
    }

    #[test]
    fn notes_from_the_network_stay_on_one_line() {
        assert_eq!(
            one_line("pod a\nk8stail: forged\u{1b}[2K"),
            "pod a\\nk8stail: forged\\u{1b}[2K"
        );
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn a_broken_template_is_refused_before_connecting() {
        let cli = super::super::Cli::try_parse_from(["k8stail", "shop/web", "--template", "{{ oops"]).unwrap();
        let target = Target::parse("shop/web", false).unwrap();
        let err = Renderer::new(&cli.tail, &target, false).err().unwrap();
        assert!(err.starts_with("invalid --template"), "{err}");
    }
}
