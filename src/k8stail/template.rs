//! `--template`: minijinja (Jinja2 syntax), with the helpers stern's Go templates offer under
//! the same names, and stern's variable names beside the record's own fields.
//!
//! Record text reaches the template with its control characters escaped (a pod cannot move the
//! cursor or forge a line through a template), and so do values `parseJSON` makes from it; the
//! template's own text, and the colours its helpers add, are printed as written.

use super::clock;
use minijinja::value::{Rest, Value};
use minijinja::{Environment, Error, ErrorKind};

/// A template environment holding `text` as template `record`; `color` turns the colour
/// helpers on. A Go template (stern's syntax) is refused with the Jinja way to write it.
pub fn environment(text: &str, color: bool) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    register(&mut env, color);
    if let Err(e) = env.add_template_owned("record", text.to_owned()) {
        let go = text.contains("{{.") || text.contains("{{ .") || text.contains("{{- .");
        let hint = if go {
            " (k8stail templates are minijinja, Jinja2 syntax, not Go templates: write {{ Message }} for stern's {{.Message}}, {{ PodName }} for {{.PodName}}, and `x | f` or f(x) for a function)"
        } else {
            ""
        };
        return Err(format!("invalid --template: {e}{hint}"));
    }
    Ok(env)
}

fn sgr(on: bool, code: &str, text: &str) -> String {
    if on && !code.is_empty() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// An SGR parameter list from a helper argument: digits and `;` only.
fn sgr_code(v: &Value) -> Result<String, Error> {
    let code = v.to_string();
    if code.chars().all(|c| c.is_ascii_digit() || c == ';') {
        Ok(code)
    } else {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{code:?} is not a colour: SGR numbers such as 31 or 38;5;208"),
        ))
    }
}

/// JSON text parsed into a template value, its strings made safe for a terminal.
fn from_json(text: &str) -> Result<Value, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_str(text)?;
    sanitize(&mut v);
    Ok(Value::from(minijinja::value::Serde(&v)))
}

/// Every string in `v` (keys too) with control characters other than newline and tab
/// escaped, as [`super::render`] shows them.
pub fn sanitize(v: &mut serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::String(s) => {
            if let std::borrow::Cow::Owned(clean) = super::escape::printable(s) {
                *s = clean;
            }
        }
        J::Array(items) => items.iter_mut().for_each(sanitize),
        J::Object(map) => {
            if map.keys().any(|k| super::escape::printable(k).len() != k.len()) {
                let old = std::mem::take(map);
                for (k, mut value) in old {
                    sanitize(&mut value);
                    map.insert(super::escape::printable(&k).into_owned(), value);
                }
            } else {
                map.values_mut().for_each(sanitize);
            }
        }
        _ => {}
    }
}

fn time_of(v: &Value) -> Result<jiff::Timestamp, Error> {
    let json = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    clock::parse(&json).ok_or_else(|| Error::new(ErrorKind::InvalidOperation, format!("{v} is not a time")))
}

fn register(env: &mut Environment<'static>, color: bool) {
    let both = |env: &mut Environment<'static>, name: &'static str, f: fn(Value) -> Result<Value, Error>| {
        env.add_filter(name, f);
        env.add_function(name, f);
    };
    // stern's `json`: the same as minijinja's `tojson`.
    env.add_filter("json", |v: Value| -> Result<Value, Error> {
        serde_json::to_string(&v)
            .map(Value::from)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env.add_function("json", |v: Value| -> Result<Value, Error> {
        serde_json::to_string(&v)
            .map(Value::from)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    both(env, "parseJSON", |v| {
        let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
        from_json(&text).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("parseJSON: {e}")))
    });
    both(env, "tryParseJSON", |v| {
        Ok(v.as_str().and_then(|t| from_json(t).ok()).unwrap_or(Value::from(())))
    });
    both(env, "prettyJSON", |v| {
        let parsed = match v.as_str() {
            Some(t) => match from_json(t) {
                Ok(p) => p,
                Err(_) => return Ok(v),
            },
            None => v,
        };
        serde_json::to_string_pretty(&parsed)
            .map(Value::from)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    both(env, "toRFC3339Nano", |v| {
        let t = time_of(&v)?;
        let z = t.to_zoned(jiff::tz::TimeZone::UTC);
        Ok(Value::from(clock::go_format(&z, "2006-01-02T15:04:05.999999999Z07:00")))
    });
    let to_timestamp = |v: Value, layout: String, zone: Option<String>| -> Result<Value, Error> {
        let t = time_of(&v)?;
        let tz = clock::zone(zone.as_deref().unwrap_or("UTC"))
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.replace("--timezone ", "")))?;
        Ok(Value::from(clock::go_format(&t.to_zoned(tz), &layout)))
    };
    env.add_filter("toTimestamp", to_timestamp);
    env.add_function("toTimestamp", to_timestamp);

    env.add_function("color", move |code: Value, text: Value| -> Result<Value, Error> {
        Ok(Value::from(sgr(color, &sgr_code(&code)?, &text.to_string())))
    });
    env.add_function(
        "colorCustom",
        move |text: Value, codes: Rest<Value>| -> Result<Value, Error> {
            let codes = codes.iter().map(sgr_code).collect::<Result<Vec<_>, _>>()?.join(";");
            Ok(Value::from(sgr(color, &codes, &text.to_string())))
        },
    );
    let level = move |v: Value| -> Value {
        let text = v.to_string();
        let code = match text.to_ascii_lowercase().as_str() {
            "trace" | "debug" | "dbg" => "35",
            "info" | "information" | "notice" => "34",
            "warn" | "warning" => "33",
            "error" | "err" | "fatal" | "panic" | "dpanic" | "critical" | "crit" | "alert" | "emerg" => "31",
            _ => "",
        };
        Value::from(sgr(color, code, &text))
    };
    env.add_filter("levelColor", level);
    env.add_function("levelColor", level);
    for (name, code) in [
        ("colorBlack", "30"),
        ("colorRed", "31"),
        ("colorGreen", "32"),
        ("colorYellow", "33"),
        ("colorBlue", "34"),
        ("colorMagenta", "35"),
        ("colorCyan", "36"),
        ("colorWhite", "37"),
    ] {
        let f = move |v: Value| Value::from(sgr(color, code, &v.to_string()));
        env.add_filter(name, f);
        env.add_function(name, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The helpers, documented in docs/k8stail.md (`k8stail --template`).
    const HELPERS: &[&str] = &[
        "tojson",
        "json",
        "parseJSON",
        "tryParseJSON",
        "prettyJSON",
        "toRFC3339Nano",
        "toTimestamp",
        "color",
        "colorCustom",
        "levelColor",
        "colorBlack",
        "colorRed",
        "colorGreen",
        "colorYellow",
        "colorBlue",
        "colorMagenta",
        "colorCyan",
        "colorWhite",
    ];

    fn render(template: &str, color: bool, record: serde_json::Value) -> String {
        let env = environment(template, color).unwrap();
        let mut record = record;
        sanitize(&mut record);
        env.get_template("record")
            .unwrap()
            .render(Value::from(minijinja::value::Serde(&record)))
            .unwrap_or_else(|e| format!("<error: {e}>"))
    }

    #[test]
    fn every_documented_helper_exists_and_does_what_sterns_does() {
        let rec = json!({"message": "{\"level\":\"warn\",\"msg\":\"disk\",\"ts\":1741944413}", "n": [1, 2]});
        let json = |t: &str| serde_json::from_str::<serde_json::Value>(&render(t, false, rec.clone())).unwrap();
        assert_eq!(json("{{ n | tojson }}"), json!([1, 2]));
        assert_eq!(json("[{{ n | json }}, {{ json(n) }}]"), json!([[1, 2], [1, 2]]));
        assert_eq!(json("{{ message | parseJSON | tojson }}")["msg"], "disk");
        assert_eq!(render("{{ (message | parseJSON).msg }}", false, rec.clone()), "disk");
        assert_eq!(render("{{ parseJSON(message).level }}", false, rec.clone()), "warn");
        assert!(render("{{ 'nope' | parseJSON }}", false, rec.clone()).contains("parseJSON"));
        assert_eq!(
            render("{{ 'nope' | tryParseJSON is none }}", false, rec.clone()),
            "True"
        );
        assert_eq!(render("{{ 'nope' | prettyJSON }}", false, rec.clone()), "nope");
        assert_eq!(
            render("{{ '{\"a\":1}' | prettyJSON }}", false, rec.clone()),
            "{\n  \"a\": 1\n}"
        );
        assert_eq!(
            render("{{ (message | parseJSON).ts | toRFC3339Nano }}", false, rec.clone()),
            "2025-03-14T09:26:53Z"
        );
        assert_eq!(
            render(
                "{{ toTimestamp(parseJSON(message).ts, '2006-01-02 15:04', 'Asia/Tokyo') }}",
                false,
                rec.clone()
            ),
            "2025-03-14 18:26"
        );
        assert_eq!(
            render(
                "{{ toTimestamp('2025-03-14T09:26:53Z', '15:04:05') }}",
                false,
                rec.clone()
            ),
            "09:26:53"
        );
        assert_eq!(
            render("{{ levelColor('warn') }}", true, rec.clone()),
            "\x1b[33mwarn\x1b[0m"
        );
        assert_eq!(render("{{ 'warn' | levelColor }}", false, rec.clone()), "warn");
        assert_eq!(render("{{ color('31', 'x') }}", true, rec.clone()), "\x1b[31mx\x1b[0m");
        assert_eq!(
            render("{{ colorCustom('Hi', 3, 96) }}", true, rec.clone()),
            "\x1b[3;96mHi\x1b[0m"
        );
        assert!(render("{{ color('31m\x1b[2J', 'x') }}", true, rec.clone()).contains("not a colour"));
        for (name, code) in [
            ("colorRed", 31),
            ("colorGreen", 32),
            ("colorCyan", 36),
            ("colorBlack", 30),
        ] {
            assert_eq!(
                render(&format!("{{{{ '{name}' | {name} }}}}"), true, rec.clone()),
                format!("\x1b[{code}m{name}\x1b[0m")
            );
        }
        assert_eq!(
            render("{{ colorRed('plain') }}", false, rec.clone()),
            "plain",
            "no colour when off"
        );
        let env = environment("x", true).unwrap();
        for helper in HELPERS {
            let as_filter = env.render_str(&format!("{{{{ 'warn' | {helper} }}}}"), ());
            let unknown = as_filter
                .as_ref()
                .is_err_and(|e| e.to_string().contains("unknown filter"));
            assert!(
                !unknown || env.globals().any(|(name, _)| name == *helper),
                "{helper} is documented but missing"
            );
        }
    }

    #[test]
    fn record_text_cannot_reach_the_terminal_raw_through_a_template() {
        let rec = json!({"message": "{\"m\":\"\\u001b[2J\"}", "pod": "a\u{1b}]0;x\u{7}"});
        let out = render(
            "{{ pod }} {{ (message | parseJSON).m }} {{ message | prettyJSON }}",
            true,
            rec,
        );
        assert!(!out.contains(['\u{1b}', '\u{7}']), "{out:?}");
    }

    #[test]
    fn a_go_template_is_refused_with_the_jinja_way_to_write_it() {
        let err = environment("{{.Message}} {{ .PodName }}", false).unwrap_err();
        assert!(err.contains("{{ Message }}"), "{err}");
    }
}
