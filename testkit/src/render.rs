//! logging-operator's rendering of an http `Output` into fluentd configuration, for the
//! fields log-socket generates (from `pkg/sdk/logging/model/render/fluent.go` and the notes in
//! `../shared/docs/logging-operator.md`): plain params sorted by name, then the `<buffer
//! TAGS>`, `<format>` and `<auth>` sections; a Secret's `value` is inlined. Anything it does
//! not know makes it panic, so a new generated field cannot slip past the real fluentd.

use serde_json::Value;

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn secret(v: &Value) -> String {
    match v.get("value") {
        Some(Value::String(s)) => s.clone(),
        _ => panic!("this renderer inlines Secret `value`s only, got {v}"),
    }
}

fn section(name: &str, arg: &str, body: &serde_json::Map<String, Value>, indent: &str) -> String {
    let mut out = format!(
        "{indent}<{name}{}>\n",
        if arg.is_empty() {
            String::new()
        } else {
            format!(" {arg}")
        }
    );
    let mut keys: Vec<&String> = body.keys().collect();
    keys.sort();
    for k in keys {
        let key = if k == "type" { "@type" } else { k.as_str() };
        out.push_str(&format!("{indent}  {key} {}\n", scalar(&body[k.as_str()])));
    }
    out.push_str(&format!("{indent}</{name}>\n"));
    out
}

/// The `<match>` body logging-operator renders for `output` (an Output's `spec`), with `id`;
/// no Secret may be mounted (see [`http_output_with`]).
pub fn http_output(spec: &Value, id: &str) -> String {
    http_output_with(spec, id, &|name, key| panic!("this output mounts Secret {name}/{key}"))
}

/// [`http_output`], with `mount(secret, key)` giving the path of a `mountFrom` Secret key (as
/// logging-operator copies it to `/fluentd/secret/NS-SECRET-KEY`).
pub fn http_output_with(spec: &Value, id: &str, mount: &dyn Fn(&str, &str) -> String) -> String {
    let http = spec["http"].as_object().expect("an http output");
    let mut out = format!("  @type http\n  @id {id}\n");
    let mut keys: Vec<&String> = http.keys().collect();
    keys.sort();
    let mut sections = String::new();
    for k in keys {
        let v = &http[k.as_str()];
        match k.as_str() {
            "buffer" => {
                let mut b = v.as_object().unwrap().clone();
                let tags = b
                    .remove("tags")
                    .map(|t| scalar(&t))
                    .unwrap_or_else(|| "tag,time".into());
                sections.push_str(&section("buffer", &tags, &b, "  "));
            }
            "format" => sections.push_str(&section("format", "", v.as_object().unwrap(), "  ")),
            "auth" => {
                let mut a = serde_json::Map::new();
                a.insert("username".into(), Value::String(secret(&v["username"])));
                a.insert("password".into(), Value::String(secret(&v["password"])));
                sections.push_str(&section("auth", "", &a, "  "));
            }
            k if k.starts_with("tls_") && v.get("mountFrom").is_some() => {
                let r = &v["mountFrom"]["secretKeyRef"];
                let path = mount(r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                out.push_str(&format!("  {k} {path}\n"));
            }
            k if k.starts_with("tls_") => panic!("this renderer mounts Secrets only ({k}: {v})"),
            _ if v.is_object() => panic!("unknown section {k}: {v}"),
            _ => out.push_str(&format!("  {k} {}\n", scalar(v))),
        }
    }
    out + &sections
}

/// The `spec` of the http Output log-socket's operator generates for a tap of `kind` ("Flow" or
/// "ClusterFlow") `shop/web` in `mode` (`Patch` by default) posting to `ingest_url`: with that
/// flow's credential under `ingest_keys`, the mTLS Secret `tls_secret`, Logging `logging_ref`.
pub fn generated_output_spec(
    ingest_url: &str,
    ingest_keys: Option<std::sync::Arc<log_socket::auth::ingest_keys::IngestKeys>>,
    kind: &str,
    tls_secret: Option<&str>,
    mode: Option<&str>,
    logging_ref: Option<&str>,
) -> Value {
    use log_socket::k8s::flowtap::FlowTap;
    use log_socket::operator::{desired_output_spec, OperatorConfig};
    use std::time::Duration;
    let tap: FlowTap = serde_json::from_value(serde_json::json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": "flow-web", "namespace": "shop"},
        "spec": {"flowRef": {"kind": kind, "name": "web"}, "mode": mode.unwrap_or("Patch")},
    }))
    .unwrap();
    let config = OperatorConfig {
        linger: Duration::ZERO,
        ingest_keys,
        tls_secret: tls_secret.map(str::to_owned),
        ..OperatorConfig::new("test", ingest_url)
    };
    desired_output_spec(&tap, &config, logging_ref)
}
