//! config/helm/log-socket/README.md is generated from the comments of values.yaml (`# --`
//! before a key, as helm-docs reads them) and its defaults: this test fails when the two
//! drift apart, and `make chart-docs` writes it anew (`LOG_SOCKET_BLESS=1`).

use std::path::PathBuf;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/helm/log-socket")
}

/// One documented value: its dotted path, default and description.
struct Value {
    key: String,
    default: String,
    description: String,
}

/// The values a `# --` comment documents, in file order; nested keys get dotted paths.
fn documented(values_yaml: &str) -> Vec<Value> {
    let defaults: serde_json::Value = serde_yaml::from_str(values_yaml).expect("values.yaml is YAML");
    let mut out = vec![];
    let mut path: Vec<(usize, String)> = vec![];
    let mut comment: Option<String> = None;
    for line in values_yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if let Some(start) = text.strip_prefix("# -- ") {
            comment = Some(start.to_owned());
            continue;
        }
        if let (Some(c), Some(more)) = (comment.as_mut(), text.strip_prefix('#')) {
            c.push(' ');
            c.push_str(more.trim());
            continue;
        }
        let Some((key, _)) = text
            .split_once(':')
            .filter(|_| !text.starts_with('-') && !text.is_empty())
        else {
            comment = None;
            continue;
        };
        path.retain(|(i, _)| *i < indent);
        path.push((indent, key.to_owned()));
        if let Some(description) = comment.take() {
            let key: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
            let default = key.iter().fold(&defaults, |v, k| &v[*k]);
            out.push(Value {
                key: key.join("."),
                default: serde_json::to_string(default).unwrap(),
                description,
            });
        }
    }
    out
}

fn readme(values: &[Value]) -> String {
    let mut s = String::from(
        "# log-socket Helm chart\n\n\
         <!-- Generated from values.yaml by `make chart-docs` (tests/chart_readme.rs); do not edit. -->\n\n\
         Watch, live in a terminal, exactly what a logging-operator Flow emits: the relay and the\n\
         FlowTap operator. The project's README has the quick start; docs/operations.md has\n\
         installing, upgrading, uninstalling, metrics and alerts.\n\n\
         ```sh\n\
         helm install log-socket config/helm/log-socket -n log-socket --create-namespace \\\n  \
         --set image.repository=REGISTRY/log-socket\n\
         helm test log-socket -n log-socket\n\
         ```\n\n\
         `values.schema.json` refuses unknown keys and values log-socket would not take.\n\n\
         ## Values\n\n\
         | key | default | description |\n|---|---|---|\n",
    );
    for v in values {
        let cell = |t: &str| t.replace('|', "\\|");
        s.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            v.key,
            cell(&v.default),
            cell(&v.description)
        ));
    }
    s
}

#[test]
fn the_chart_readme_is_generated_from_the_values_comments() {
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let documented = documented(&values);
    let generated = readme(&documented);
    let path = chart().join("README.md");
    if std::env::var_os("LOG_SOCKET_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "config/helm/log-socket/README.md is not what values.yaml says: run `make chart-docs`"
    );
    // Every top-level value is documented.
    let defaults: serde_json::Value = serde_yaml::from_str(&values).unwrap();
    for key in defaults.as_object().unwrap().keys() {
        assert!(
            documented
                .iter()
                .any(|v| v.key == *key || v.key.starts_with(&format!("{key}."))),
            "values.yaml: `{key}` has no `# --` comment"
        );
    }
}

#[test]
fn comments_document_the_key_below_them_with_its_dotted_path_and_default() {
    let values = "# -- Top.\n# More.\na: 1\nb:\n  # -- Inner.\n  c: [x]\n  d: 2\n";
    let v = documented(values);
    let got: Vec<(&str, &str, &str)> = v
        .iter()
        .map(|v| (v.key.as_str(), v.default.as_str(), v.description.as_str()))
        .collect();
    assert_eq!(got, [("a", "1", "Top. More."), ("b.c", "[\"x\"]", "Inner.")]);
}
