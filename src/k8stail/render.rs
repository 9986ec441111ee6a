//! How k8stail prints a record: stern's formats (default, raw, json, extjson, ppextjson), the
//! protocol frame, a template, or selected fields.

use super::clock;
use super::escape::{json_for_terminal, one_line, printable};
use super::{ColorChoice, OutputFormat, TailArgs, TapKey, TimestampFormat};
use crate::k8s::flowtap::FlowKind;
use regex::Regex;
use serde_json::value::RawValue;
use serde_json::Value;
use std::io::{self, Write};

enum Format {
    Default,
    Raw,
    Json,
    ExtJson { pretty: bool },
    Frame,
    Template(Box<minijinja::Environment<'static>>),
    Fields(Vec<Vec<String>>),
}

/// Prints records to stdout.
pub struct Renderer {
    format: Format,
    color: bool,
    timestamps: Option<(TimestampFormat, jiff::tz::TimeZone)>,
    /// Several flows merged: each record says which.
    several: bool,
    highlight: Vec<Regex>,
    pod_colors: Vec<String>,
    /// Container names coloured too (`-d`), from these.
    container_colors: Option<Vec<String>>,
    /// stdout is a terminal.
    tty: bool,
}

/// Pod colours: distinct, readable on dark and light terminals.
const PALETTE: [&str; 6] = ["31", "32", "33", "34", "35", "36"];
/// Highlighted parts of messages (`-H`): bold red on the message's colour.
const HIGHLIGHT: &str = "1;31";

/// `--pod-colors` / `--container-colors`: SGR parameter lists separated by commas.
fn palette(flag: &str, text: &str) -> Result<Vec<String>, String> {
    let colors: Vec<String> = text.split(',').map(|c| c.trim().to_owned()).collect();
    if colors
        .iter()
        .any(|c| c.is_empty() || !c.chars().all(|ch| ch.is_ascii_digit() || ch == ';'))
    {
        return Err(format!(
            "{flag} {text:?}: write SGR sequences separated by commas, e.g. \"31,32,33\" or \"38;2;255;97;136\""
        ));
    }
    Ok(colors)
}

impl Renderer {
    /// Build from the flags; anything invalid (a template, a regex, a zone, a colour) is
    /// refused here, before connecting.
    pub fn new(args: &TailArgs, several: bool, stdout_tty: bool) -> Result<Renderer, String> {
        let color = match args.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stdout_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        };
        let template = match (&args.template, &args.template_file) {
            (_, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read --template-file {}: {e}", path.display()))?,
            ),
            (Some(text), None) => Some(text.clone()),
            (None, None) => None,
        };
        let format = if let Some(text) = template {
            Format::Template(Box::new(super::template::environment(&text, color)?))
        } else if !args.field.is_empty() {
            Format::Fields(
                args.field
                    .iter()
                    .map(|f| f.split('.').map(str::to_owned).collect())
                    .collect(),
            )
        } else {
            match args.output {
                OutputFormat::Default => Format::Default,
                OutputFormat::Raw => Format::Raw,
                OutputFormat::Json => Format::Json,
                OutputFormat::Extjson => Format::ExtJson { pretty: false },
                OutputFormat::Ppextjson => Format::ExtJson { pretty: true },
                OutputFormat::Frame => Format::Frame,
            }
        };
        let timestamps = match args.timestamps {
            Some(f) => Some((f, clock::zone(&args.timezone)?)),
            None => {
                // A zone is checked even unused: a typo should not wait for -t to surface.
                clock::zone(&args.timezone)?;
                None
            }
        };
        let highlight = args
            .highlight
            .iter()
            .map(|h| crate::protocol::Filter::pattern("--highlight", h))
            .collect::<Result<_, _>>()?;
        let pod_colors = match &args.pod_colors {
            Some(text) => palette("--pod-colors", text)?,
            None => PALETTE.iter().map(|c| c.to_string()).collect(),
        };
        let container_colors = match (&args.container_colors, args.diff_container) {
            (Some(text), _) => Some(palette("--container-colors", text)?),
            (None, true) => Some(pod_colors.clone()),
            (None, false) => None,
        };
        Ok(Renderer {
            format,
            color,
            timestamps,
            several,
            highlight,
            pod_colors,
            container_colors,
            tty: stdout_tty,
        })
    }

    /// Print one record of `target`. `frame` is the whole protocol frame, `record` the record's JSON.
    pub fn record(
        &self,
        out: &mut dyn Write,
        target: &TapKey,
        frame: &str,
        seq: u64,
        record: &RawValue,
    ) -> io::Result<()> {
        self.any_record(out, target, frame, seq, record, false)
    }

    /// A flow record, or a pre-flow line (`preflow`: marked by k8stail, never by what the
    /// record says, so a pod cannot make its records look like pre-flow lines or hide them).
    fn any_record(
        &self,
        out: &mut dyn Write,
        target: &TapKey,
        frame: &str,
        seq: u64,
        record: &RawValue,
        preflow: bool,
    ) -> io::Result<()> {
        let mut line = String::new();
        let parsed = || serde_json::from_str::<Value>(record.get()).unwrap_or(Value::Null);
        match &self.format {
            // JSON escapes C0 controls; C1 ones (such as U+009B, a CSI) and DEL it may carry
            // raw, so on a terminal they are written as \u escapes (the same JSON).
            Format::Json => {
                let text = match self.several {
                    true => tagged(record.get(), &target.to_string()),
                    false => record.get().to_owned(),
                };
                line.push_str(&self.json_text(&text));
            }
            Format::Frame => line.push_str(&self.json_text(frame)),
            Format::Raw => {
                let v = parsed();
                if let Some(ts) = self.stamp(&v) {
                    line.push_str(&ts);
                    line.push(' ');
                }
                let message = match message_of(&v) {
                    Some(m) => m.trim_end_matches(['\n', '\r']).to_owned(),
                    None => record.get().to_owned(),
                };
                let message = if self.tty {
                    printable(&message).into_owned()
                } else {
                    message
                };
                line.push_str(&self.highlighted(&message));
            }
            Format::ExtJson { pretty } => {
                let v = parsed();
                let k = &v["kubernetes"];
                let message = message_of(&v).unwrap_or_default();
                let message = serde_json::from_str::<Value>(message)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| Value::from(message.trim_end_matches(['\n', '\r'])));
                let mut ext = serde_json::Map::new();
                if self.several {
                    ext.insert("flow".into(), target.to_string().into());
                }
                ext.insert("namespace".into(), k["namespace_name"].clone());
                ext.insert("pod".into(), k["pod_name"].clone());
                ext.insert("container".into(), k["container_name"].clone());
                ext.insert("message".into(), message);
                if preflow {
                    ext.insert("preflow".into(), true.into());
                }
                let ext = Value::Object(ext);
                let text = match pretty {
                    true => serde_json::to_string_pretty(&ext),
                    false => serde_json::to_string(&ext),
                }
                .unwrap_or_default();
                line.push_str(&self.json_text(&text));
            }
            Format::Default => self.default_line(&mut line, target, &parsed()),
            Format::Fields(paths) => {
                let value = parsed();
                if let Some(ts) = self.stamp(&value) {
                    line.push_str(&ts);
                    line.push(' ');
                }
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
                super::template::sanitize(&mut value);
                self.template_variables(&mut value, target, seq);
                let template = env.get_template("record").expect("added in new()");
                match template.render(minijinja::value::Value::from(minijinja::value::Serde(&value))) {
                    Ok(text) => {
                        line.push_str(&text);
                        // stern templates end in {{"\n"}}; ours need not.
                        if text.ends_with('\n') {
                            return out.write_all(line.as_bytes());
                        }
                    }
                    Err(e) => line.push_str(&format!("<template error: {}>", one_line(&e.to_string()))),
                }
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())
    }

    /// Print one pre-flow line (a record built by `preflow::Line::record`, `"preflow":true`):
    /// in the human formats after a dim `pre-flow` tag, in the JSON ones with the field (and
    /// as a `preflow` frame in `-o frame`), so it is never taken for a flow record.
    pub fn preflow(&self, out: &mut dyn Write, target: &TapKey, record: &RawValue) -> io::Result<()> {
        match &self.format {
            Format::Json | Format::ExtJson { .. } => self.any_record(out, target, "", 0, record, true),
            Format::Frame => {
                let frame = format!(r#"{{"type":"preflow","record":{}}}"#, record.get());
                writeln!(out, "{}", self.json_text(&frame))
            }
            _ => {
                let mut line = vec![];
                self.any_record(&mut line, target, "", 0, record, true)?;
                out.write_all(self.paint("2", "pre-flow").as_bytes())?;
                out.write_all(b" ")?;
                out.write_all(&line)
            }
        }
    }

    /// `-o frame` prints the relay's `dropped` frames of `--rate` (reason `sampled`) among the
    /// records, so a script counts what was left out; other formats say it on stderr. Whether
    /// it printed.
    pub fn sampled_frame(&self, out: &mut dyn Write, frame: &str) -> io::Result<bool> {
        match self.format {
            Format::Frame => writeln!(out, "{}", self.json_text(frame)).map(|()| true),
            _ => Ok(false),
        }
    }

    /// The line between pre-flow lines and flow records, in the human formats (JSON outputs
    /// tell them apart by the `preflow` field, and a line of another shape would break them).
    pub fn separator(&self, out: &mut dyn Write) -> io::Result<bool> {
        if matches!(self.format, Format::Json | Format::ExtJson { .. } | Format::Frame) {
            return Ok(false);
        }
        let text = "── flow records from here: fluentd sends the flow's output (pre-flow lines above were raw container logs) ──";
        writeln!(out, "{}", self.paint("2", text))?;
        Ok(true)
    }

    /// JSON text as printed: on a terminal with DEL and C1 controls escaped.
    fn json_text(&self, text: &str) -> String {
        match self.tty {
            true => json_for_terminal(text).into_owned(),
            false => text.to_owned(),
        }
    }

    /// The record's time as `--timestamps` prints it, when asked for.
    fn stamp(&self, v: &Value) -> Option<String> {
        let (format, tz) = self.timestamps.as_ref()?;
        let t = clock::of_record(v).unwrap_or_else(jiff::Timestamp::now);
        Some(match format {
            TimestampFormat::Default => clock::default_format(t, tz),
            TimestampFormat::Short => clock::short_format(t, tz),
        })
    }

    /// stern's template variables beside the record's own (which win on a clash), and ours.
    fn template_variables(&self, value: &mut Value, target: &TapKey, seq: u64) {
        let stamp = self.stamp(value).unwrap_or_default();
        let k = value["kubernetes"].clone();
        let pod = k["pod_name"].as_str().unwrap_or_default().to_owned();
        let container = k["container_name"].as_str().unwrap_or_default().to_owned();
        let message = message_of(value).unwrap_or_default().to_owned();
        let Value::Object(map) = value else { return };
        map.insert("_seq".into(), seq.into());
        map.insert("_tap".into(), target.to_string().into());
        let stern = [
            ("Message", Value::from(message)),
            ("Namespace", k["namespace_name"].clone()),
            ("PodName", Value::from(pod.clone())),
            ("ContainerName", Value::from(container.clone())),
            ("NodeName", k["host"].clone()),
            ("Labels", k["labels"].clone()),
            ("Annotations", k["annotations"].clone()),
            ("Timestamp", Value::from(stamp)),
            ("PodColor", Value::from(self.pod_color(&pod))),
            (
                "ContainerColor",
                Value::from(self.container_color(&container).unwrap_or("2").to_owned()),
            ),
            ("Flow", Value::from(target.to_string())),
        ];
        for (name, v) in stern {
            map.entry(name).or_insert(v);
        }
    }

    fn pod_color(&self, pod: &str) -> String {
        self.pod_colors[fnv(pod) as usize % self.pod_colors.len()].clone()
    }

    fn container_color(&self, container: &str) -> Option<&str> {
        let colors = self.container_colors.as_ref()?;
        Some(&colors[fnv(container) as usize % colors.len()])
    }

    fn paint(&self, code: &str, text: &str) -> String {
        match self.color {
            true => format!("\x1b[{code}m{text}\x1b[0m"),
            false => text.to_owned(),
        }
    }

    /// `text` with the parts `-H` names highlighted (on a colour terminal).
    fn highlighted(&self, text: &str) -> String {
        if !self.color || self.highlight.is_empty() {
            return text.to_owned();
        }
        let mut spans: Vec<(usize, usize)> = self
            .highlight
            .iter()
            .flat_map(|re| re.find_iter(text).map(|m| (m.start(), m.end())))
            .filter(|(s, e)| s < e)
            .collect();
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len() + 16);
        let mut at = 0;
        for (s, e) in spans {
            if e <= at {
                continue;
            }
            let s = s.max(at);
            out.push_str(&text[at..s]);
            out.push_str(&self.paint(HIGHLIGHT, &text[s..e]));
            at = e;
        }
        out.push_str(&text[at..]);
        out
    }

    fn default_line(&self, line: &mut String, target: &TapKey, v: &Value) {
        let k = &v["kubernetes"];
        let pod = k["pod_name"].as_str().unwrap_or("-");
        let container = k["container_name"].as_str().unwrap_or("-");
        let raw_container = container;
        let who = if target.kind == FlowKind::ClusterFlow {
            format!("{}/{pod}", k["namespace_name"].as_str().unwrap_or("-"))
        } else {
            pod.to_owned()
        };
        let message = message_of(v)
            .map(|m| m.trim_end_matches(['\n', '\r']).to_owned())
            .unwrap_or_else(|| v.to_string());
        // One message, one line: a newline in it is shown as `\n`, never started.
        let (who, container, message) = (one_line(&who), one_line(container), one_line(&message));
        if self.several {
            let flow = match target.kind {
                FlowKind::Flow => format!("{}/{}", target.namespace, target.name),
                FlowKind::ClusterFlow => target.to_string(),
            };
            line.push_str(&self.paint("1", &flow));
            line.push(' ');
        }
        line.push_str(&self.paint(&self.pod_color(pod), &who));
        line.push(' ');
        let container_code = self.container_color(raw_container).unwrap_or("2").to_owned();
        line.push_str(&self.paint(&container_code, &container));
        line.push(' ');
        if let Some(ts) = self.stamp(v) {
            line.push_str(&ts);
            line.push(' ');
        }
        line.push_str(&self.highlighted(&message));
    }
}

/// The record's `message` (or docker's `log`).
fn message_of(v: &Value) -> Option<&str> {
    v["message"].as_str().or_else(|| v["log"].as_str())
}

/// The record JSON with `"_tap":TAP` first, so merged flows can be told apart.
fn tagged(record: &str, tap: &str) -> String {
    let tag = format!("{{\"_tap\":{}", serde_json::to_string(tap).expect("a string"));
    match record.trim_start().strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{tag}}}"),
        Some(rest) => format!("{tag},{rest}"),
        None => record.to_owned(),
    }
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

fn fnv(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x01000193))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renderer(args: &[&str], tty: bool) -> Renderer {
        let cli = super::super::Cli::try_parse_args([&["k8stail", "shop/web"], args].concat()).unwrap();
        Renderer::new(&cli.tail, false, tty).unwrap()
    }

    fn web() -> TapKey {
        crate::k8stail::parse_target("shop/web", false).unwrap()
    }

    fn show_for(r: &Renderer, target: &TapKey, record: &str) -> String {
        let raw = RawValue::from_string(record.to_owned()).unwrap();
        let frame = format!(r#"{{"type":"record","seq":7,"record":{record}}}"#);
        let mut out = vec![];
        r.record(&mut out, target, &frame, 7, &raw).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn show(r: &Renderer, record: &str) -> String {
        show_for(r, &web(), record)
    }

    const REC: &str = r#"{"time":"2025-03-14T09:26:53Z","message":"hello\n","n":1.50,"kubernetes":{"pod_name":"web-1","container_name":"app","namespace_name":"shop","host":"node-1"}}"#;

    #[test]
    fn the_default_format_is_the_same_on_and_off_a_terminal_and_colours_only_on_one() {
        assert_eq!(show(&renderer(&[], false), REC), "web-1 app hello\n");
        assert_eq!(show(&renderer(&["--color", "never"], true), REC), "web-1 app hello\n");
        let coloured = show(&renderer(&[], true), REC);
        assert!(coloured.contains("\x1b[") && coloured.contains("hello"), "{coloured:?}");
        assert_eq!(
            show(&renderer(&["-o", "pretty"], false), REC),
            "web-1 app hello\n",
            "the old name"
        );
    }

    #[test]
    fn raw_is_the_message_json_the_record_and_frame_the_protocol_frame() {
        assert_eq!(show(&renderer(&["-o", "raw"], false), REC), "hello\n");
        assert!(!show(&renderer(&["--color", "always", "-o", "raw"], true), REC).contains("\x1b["));
        assert_eq!(show(&renderer(&["-o", "json"], false), REC), format!("{REC}\n"));
        assert!(show(&renderer(&["-o", "frame"], false), REC).starts_with(r#"{"type":"record","seq":7"#));
        let no_message = r#"{"a":1}"#;
        assert_eq!(show(&renderer(&["-o", "raw"], false), no_message), "{\"a\":1}\n");
        let ext: Value = serde_json::from_str(&show(&renderer(&["-o", "extjson"], false), REC)).unwrap();
        assert_eq!(
            ext,
            serde_json::json!({"namespace": "shop", "pod": "web-1", "container": "app", "message": "hello"})
        );
        let json_message = r#"{"message":"{\"level\":\"info\"}","kubernetes":{"pod_name":"p"}}"#;
        let pp = show(&renderer(&["-o", "ppextjson"], false), json_message);
        assert!(
            pp.contains("\"message\": {\n") && pp.contains("\"level\": \"info\""),
            "{pp}"
        );
    }

    #[test]
    fn merged_flows_tag_each_record_with_its_flow() {
        let cli = super::super::Cli::try_parse_args(["k8stail", "web", "api"]).unwrap();
        let r = Renderer::new(&cli.tail, true, false).unwrap();
        let all = crate::k8stail::parse_target("clusterflow/logging/all", false).unwrap();
        assert_eq!(show_for(&r, &web(), REC), "shop/web web-1 app hello\n");
        assert_eq!(
            show_for(&r, &all, REC),
            "clusterflow/logging/all shop/web-1 app hello\n"
        );
        let cli = super::super::Cli::try_parse_args(["k8stail", "web", "api", "-o", "json"]).unwrap();
        let r = Renderer::new(&cli.tail, true, false).unwrap();
        let v: Value = serde_json::from_str(&show_for(&r, &web(), REC)).unwrap();
        assert_eq!(v["_tap"], "flow/shop/web");
        assert_eq!(v["message"], "hello\n");
        assert_eq!(tagged("{ }", "t"), r#"{"_tap":"t"}"#);
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
        let stern = renderer(
            &[
                "--template",
                "{{ PodName }}/{{ ContainerName }} on {{ NodeName }}: {{ Message | trim }}{{ \"\\n\" }}",
            ],
            false,
        );
        assert_eq!(
            show(&stern, REC),
            "web-1/app on node-1: hello\n",
            "stern's names; its trailing newline kept single"
        );
        let f = renderer(
            &["--field", "kubernetes.pod_name", "--field", "n", "--field", "missing.x"],
            false,
        );
        assert_eq!(show(&f, REC), "web-1 1.5 -\n");
        let ts = renderer(&["--timestamps", "--timezone", "UTC", "--field", "message"], false);
        assert_eq!(show(&ts, REC), "2025-03-14T09:26:53.000000000Z hello\n");
        let short = renderer(&["-t=short", "--timezone", "Asia/Tokyo"], false);
        assert_eq!(show(&short, REC), "web-1 app 03-14 18:26:53 hello\n");
        let raw = renderer(&["--timestamps=short", "--timezone", "UTC", "-o", "raw"], false);
        assert_eq!(show(&raw, REC), "03-14 09:26:53 hello\n");
        let in_template = renderer(
            &[
                "-t=short",
                "--timezone",
                "UTC",
                "--template",
                "{{ Timestamp }}|{{ message|trim }}",
            ],
            false,
        );
        assert_eq!(show(&in_template, REC), "03-14 09:26:53|hello\n");
    }

    #[test]
    fn highlights_and_colour_lists_paint_only_on_a_colour_terminal() {
        let h = renderer(&["-H", "ell", "--color", "always"], false);
        assert!(show(&h, REC).contains("h\x1b[1;31mell\x1b[0mo"), "{:?}", show(&h, REC));
        assert_eq!(show(&renderer(&["-H", "ell"], false), REC), "web-1 app hello\n");
        let c = renderer(&["--pod-colors", "38;5;208", "-d", "--color", "always"], false);
        assert!(
            show(&c, REC).starts_with("\x1b[38;5;208mweb-1\x1b[0m \x1b[38;5;208mapp"),
            "{:?}",
            show(&c, REC)
        );
        let cli = super::super::Cli::try_parse_args(["k8stail", "web", "--pod-colors", "red"]).unwrap();
        assert!(Renderer::new(&cli.tail, false, false).err().unwrap().contains("SGR"));
        let cli = super::super::Cli::try_parse_args(["k8stail", "web", "--timezone", "Nowhere/Else"]).unwrap();
        assert!(Renderer::new(&cli.tail, false, false)
            .err()
            .unwrap()
            .contains("time zone"));
    }

    #[test]
    fn escape_sequences_in_records_never_reach_the_terminal_raw() {
        let hostile = r#"{"message":"ok\u001b]0;owned\u0007\r\u001b[2Kfake line\nsecond\tline \u009b31m","kubernetes":{"pod_name":"web\u001b[31m","container_name":"app"}}"#;
        for args in [
            &["-o", "default"][..],
            &["-o", "raw"],
            &["--field", "message"],
            &["--template", "{{ kubernetes.pod_name }} {{ message }} {{ Message }}"],
        ] {
            let out = show(&renderer(args, true), hostile);
            let ours_removed = out.replace("\u{1b}[0m", "").replace("\u{1b}[2m", "");
            let ours_removed = (31..=36).fold(ours_removed, |o, c| o.replace(&format!("\u{1b}[{c}m"), ""));
            assert!(
                !ours_removed.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}']),
                "{args:?}: {out:?}"
            );
            assert!(out.contains("\\u{1b}]0;owned"), "shown escaped: {out:?}");
            if args == ["-o", "default"] {
                // One message, one line.
                assert!(out.contains("fake line\\nsecond\\tline"), "{out:?}");
                assert_eq!(out.matches('\n').count(), 1, "{out:?}");
            } else {
                assert!(out.contains("fake line\nsecond\tline"), "newline and tab kept: {out:?}");
            }
        }
    }

    #[test]
    fn json_on_a_terminal_carries_no_control_characters_and_is_byte_for_byte_in_a_pipe() {
        let hostile = "{\"time\":\"2025\\u001b[2J\\n\",\"message\":\"a\u{9b}31m b\u{7f}\"}";
        let json = show(&renderer(&["-o", "json"], true), hostile);
        assert!(!json.contains(['\u{9b}', '\u{7f}']), "{json:?}");
        assert!(json.contains("a\\u009b31m b\\u007f"), "{json:?}");
        let parsed: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(parsed["message"], "a\u{9b}31m b\u{7f}", "the same JSON");
        assert_eq!(show(&renderer(&["-o", "json"], false), hostile), format!("{hostile}\n"));
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
        let cli = super::super::Cli::try_parse_args(["k8stail", "shop/web", "--template", "{{ oops"]).unwrap();
        let err = Renderer::new(&cli.tail, false, false).err().unwrap();
        assert!(err.starts_with("invalid --template"), "{err}");
    }
}
