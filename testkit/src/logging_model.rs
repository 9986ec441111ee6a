//! What logging-operator makes of one Logging's resources, without I/O: which objects are in
//! its scope, how each flow's refs resolve, which flows fail (and whether that fails the whole
//! render or, with `skipInvalidResources`, drops the flow), the configuration whose hash it
//! checks, and the fluentd configuration the real fluentd `--dry-run`s.
//!
//! From logging-operator 6.7 (`pkg/resources/model/system.go`, `resources.go`,
//! `repository.go`): a Logging takes the objects whose `loggingRef` equals its own (empty for
//! the default); Flows and Outputs from its watched namespaces; ClusterFlows and ClusterOutputs
//! from its control namespace, or from every namespace with
//! `allowClusterResourcesFromAllNamespaces`. A Flow's `localOutputRefs` resolve to Outputs of
//! its namespace; `globalOutputRefs` to ClusterOutputs **by name only**, the first in
//! (namespace, name) order. A ref that does not resolve, an output with problems, or a
//! protected ClusterOutput named by a Flow makes the flow invalid.
//!
//! Simplified, and said so: flows' `match` and `filters` are not rendered (filters may need
//! plugins this fluentd does not have); every flow gets every record; outputs other than `http`
//! and the outputs a test names without creating (`loki`, `archive`) render as `@type null`.

use kube::api::DynamicObject;
use kube::ResourceExt;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// One Logging's settings that decide its scope.
#[derive(Clone, Debug)]
pub struct Scope {
    pub logging: String,
    pub logging_ref: String,
    pub control_namespace: String,
    pub watch_namespaces: Vec<String>,
    pub all_namespaces: bool,
    pub skip_invalid: bool,
}

impl Scope {
    pub fn of(logging: &DynamicObject) -> Scope {
        let spec = &logging.data["spec"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let control = text(&spec["controlNamespace"]);
        let watch: Vec<String> = spec["watchNamespaces"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_else(|| vec![control.clone()]);
        Scope {
            logging: logging.name_any(),
            logging_ref: text(&spec["loggingRef"]),
            control_namespace: control,
            watch_namespaces: watch,
            all_namespaces: spec["allowClusterResourcesFromAllNamespaces"] == true,
            skip_invalid: spec["skipInvalidResources"] == true,
        }
    }

    /// Whether `obj` (a Flow, Output, ClusterFlow or ClusterOutput of `kind`) is this Logging's.
    pub fn owns(&self, kind: &str, obj: &DynamicObject) -> bool {
        let ns = obj.namespace().unwrap_or_default();
        let place = match kind {
            "Flow" | "Output" => self.watch_namespaces.contains(&ns),
            _ => self.all_namespaces || ns == self.control_namespace,
        };
        place && obj.data["spec"]["loggingRef"].as_str().unwrap_or_default() == self.logging_ref
    }
}

/// The objects of one Logging's scope.
#[derive(Default, Debug)]
pub struct World {
    pub flows: Vec<DynamicObject>,
    pub cluster_flows: Vec<DynamicObject>,
    pub outputs: Vec<DynamicObject>,
    pub cluster_outputs: Vec<DynamicObject>,
}

/// What a test changes about how outputs are judged.
#[derive(Default, Debug)]
pub struct Judging {
    /// Output names rendered as `@type null` although no object exists.
    pub external: BTreeSet<String>,
    /// Output names logging-operator reports problems for.
    pub reject: BTreeSet<String>,
}

/// What a render of one Logging gives.
#[derive(Debug, Default)]
pub struct Rendered {
    /// Per flow (`flow/NS/NAME`, `clusterflow/NS/NAME`): its problems (empty: fine).
    pub problems: BTreeMap<String, Vec<String>>,
    /// The outputs a rendered flow uses, as (kind, namespace, name).
    pub active: BTreeSet<(String, String, String)>,
    /// The configuration logging-operator hashes and checks: each rendered flow with the
    /// outputs it resolved to. `None` when the render failed.
    pub config: Option<BTreeMap<String, Vec<String>>>,
    /// The fluentd configuration (without `<system>`), when the render did not fail.
    pub fluentd: Option<String>,
}

impl Rendered {
    /// The flows dropped or failing the render, with why.
    pub fn failures(&self) -> Vec<String> {
        self.problems
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(flow, p)| format!("{flow}: {}", p.join("; ")))
            .collect()
    }
}

pub fn refs(obj: &DynamicObject, field: &str) -> Vec<String> {
    obj.data["spec"][field]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn id(kind: &str, obj: &DynamicObject) -> String {
    format!("{kind}/{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Where one ref resolved: an object (kind, namespace, name, spec) or a test's external output.
enum Target<'a> {
    Object(&'static str, &'a DynamicObject),
    External(String),
}

/// Render `world` as logging-operator renders `scope`'s Logging.
pub fn render(scope: &Scope, world: &World, judging: &Judging, mount: &dyn Fn(&str, &str, &str) -> String) -> Rendered {
    let mut cluster_outputs: Vec<&DynamicObject> = world.cluster_outputs.iter().collect();
    cluster_outputs.sort_by_key(|o| (o.namespace(), o.name_any()));
    let mut out = Rendered::default();
    let mut config = BTreeMap::new();
    let mut labels = String::new();
    let mut routes = String::new();
    let flows = world
        .flows
        .iter()
        .map(|f| ("flow", f))
        .chain(world.cluster_flows.iter().map(|f| ("clusterflow", f)));
    for (kind, flow) in flows {
        let ns = flow.namespace().unwrap_or_default();
        let mut problems = vec![];
        let mut targets = vec![];
        if kind == "flow" {
            for r in refs(flow, "localOutputRefs") {
                match world
                    .outputs
                    .iter()
                    .find(|o| o.namespace() == Some(ns.clone()) && o.name_any() == r)
                {
                    Some(o) if judging.reject.contains(&r) => {
                        problems.push(format!("local output reference: {} has problems", o.name_any()))
                    }
                    Some(o) => targets.push(Target::Object("Output", o)),
                    None if judging.external.contains(&r) => targets.push(Target::External(r)),
                    None => problems.push(format!("referenced output \"{r}\" not found")),
                }
            }
        }
        for r in refs(flow, "globalOutputRefs") {
            match cluster_outputs.iter().find(|o| o.name_any() == r) {
                Some(_) if judging.reject.contains(&r) => {
                    problems.push(format!("global output reference: {r} has problems"))
                }
                Some(o) if kind == "flow" && o.data["spec"]["protected"] == true => {
                    problems.push(format!("referenced clusteroutput \"{r}\" is protected"))
                }
                Some(o) => targets.push(Target::Object("ClusterOutput", o)),
                None if judging.external.contains(&r) => targets.push(Target::External(r)),
                None => problems.push(format!("referenced clusteroutput \"{r}\" not found")),
            }
        }
        let flow_id = id(kind, flow);
        let invalid = !problems.is_empty();
        out.problems.insert(flow_id.clone(), problems);
        if invalid {
            // Skipped with skipInvalidResources; otherwise the whole render fails (below).
            continue;
        }
        let label = format!("@{:016x}", hash(&flow_id));
        let mut stores = String::new();
        let mut used = vec![];
        for target in &targets {
            let body = match target {
                Target::Object(kind, o) => {
                    out.active
                        .insert((kind.to_string(), o.namespace().unwrap_or_default(), o.name_any()));
                    used.push(id(kind, o));
                    let output_id = format!("{flow_id}/{}", id(kind, o)).replace('/', ":");
                    output_body(&o.data["spec"], &output_id, &|s, k| {
                        mount(&o.namespace().unwrap_or_default(), s, k)
                    })
                }
                Target::External(name) => {
                    used.push(format!("external/{name}"));
                    "  @type null\n".to_owned()
                }
            };
            stores.push_str(&format!("    <store>\n{}    </store>\n", indent(&body, "    ")));
        }
        if stores.is_empty() {
            stores = "    <store>\n      @type null\n    </store>\n".into();
        }
        config.insert(flow_id, used);
        routes.push_str(&format!(
            "  <store>\n    @type relabel\n    @label {label}\n  </store>\n"
        ));
        labels.push_str(&format!(
            "<label {label}>\n  <match **>\n    @type copy\n{stores}  </match>\n</label>\n"
        ));
    }
    let failed = !scope.skip_invalid && out.problems.values().any(|p| !p.is_empty());
    if failed {
        out.active.clear();
        return out;
    }
    if routes.is_empty() {
        routes = "  <store>\n    @type null\n  </store>\n".into();
    }
    out.config = Some(config);
    out.fluentd = Some(format!(
        "<source>\n  @type forward\n  bind 127.0.0.1\n  port 24224\n</source>\n\
         <match **>\n  @type copy\n{routes}</match>\n{labels}\
         <label @FLUENT_LOG>\n  <match fluent.**>\n    @type null\n  </match>\n</label>\n"
    ));
    out
}

/// An output's `<match>` body: an http output as logging-operator renders it, anything else a
/// sink that drops records. A shape the renderer does not know is a failure, not a panic.
fn output_body(spec: &Value, id: &str, mount: &dyn Fn(&str, &str) -> String) -> String {
    if !spec["http"].is_object() {
        return "  @type null\n".into();
    }
    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::render::http_output_with(spec, id, mount)
    }));
    rendered.unwrap_or_else(|_| format!("  @type unrenderable_{}\n", id.replace(':', "_")))
}

fn indent(body: &str, by: &str) -> String {
    body.lines().map(|l| format!("{by}{l}\n")).collect()
}

pub fn hash(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, ns: &str, name: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": kind,
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }))
        .unwrap()
    }

    fn scope(all: bool, skip: bool) -> Scope {
        Scope {
            logging: "l".into(),
            logging_ref: String::new(),
            control_namespace: "logging".into(),
            watch_namespaces: vec!["a".into(), "b".into()],
            all_namespaces: all,
            skip_invalid: skip,
        }
    }

    fn no_mount(_: &str, _: &str, _: &str) -> String {
        "/dev/null".into()
    }

    #[test]
    fn cluster_outputs_resolve_by_name_only_the_first_in_namespace_order() {
        let world = World {
            cluster_flows: vec![obj("ClusterFlow", "b", "all", json!({"globalOutputRefs": ["tap"]}))],
            cluster_outputs: vec![
                obj("ClusterOutput", "b", "tap", json!({"nullout": {}})),
                obj("ClusterOutput", "a", "tap", json!({"nullout": {}})),
            ],
            ..Default::default()
        };
        let r = render(&scope(true, false), &world, &Judging::default(), &no_mount);
        assert_eq!(
            r.active.into_iter().collect::<Vec<_>>(),
            [("ClusterOutput".to_owned(), "a".to_owned(), "tap".to_owned())],
            "b's ClusterFlow feeds a's ClusterOutput"
        );
    }

    #[test]
    fn a_ref_that_does_not_resolve_fails_the_whole_render_or_drops_the_flow_when_skipping() {
        let world = World {
            flows: vec![
                obj("Flow", "a", "web", json!({"localOutputRefs": ["gone"]})),
                obj("Flow", "a", "api", json!({"localOutputRefs": ["out"]})),
            ],
            outputs: vec![obj("Output", "a", "out", json!({"nullout": {}}))],
            ..Default::default()
        };
        let failed = render(&scope(false, false), &world, &Judging::default(), &no_mount);
        assert!(failed.config.is_none() && failed.fluentd.is_none());
        assert_eq!(failed.failures(), ["flow/a/web: referenced output \"gone\" not found"]);
        let skipped = render(&scope(false, true), &world, &Judging::default(), &no_mount);
        let config = skipped.config.clone().unwrap();
        assert_eq!(config.keys().collect::<Vec<_>>(), ["flow/a/api"], "web dropped");
        assert_eq!(skipped.failures().len(), 1);
    }

    #[test]
    fn a_flow_may_not_name_a_protected_cluster_output() {
        let world = World {
            flows: vec![obj(
                "Flow",
                "a",
                "web",
                json!({"globalOutputRefs": ["logsocket-x.tap"]}),
            )],
            cluster_outputs: vec![obj(
                "ClusterOutput",
                "logging",
                "logsocket-x.tap",
                json!({"protected": true, "nullout": {}}),
            )],
            ..Default::default()
        };
        let r = render(&scope(false, false), &world, &Judging::default(), &no_mount);
        assert_eq!(
            r.failures(),
            ["flow/a/web: referenced clusteroutput \"logsocket-x.tap\" is protected"]
        );
    }

    #[test]
    fn a_logging_takes_only_objects_of_its_loggingref_and_its_namespaces() {
        let s = scope(false, false);
        assert!(s.owns("Flow", &obj("Flow", "a", "web", json!({}))));
        assert!(!s.owns("Flow", &obj("Flow", "c", "web", json!({}))));
        assert!(!s.owns("Flow", &obj("Flow", "a", "web", json!({"loggingRef": "blue"}))));
        assert!(!s.owns("ClusterFlow", &obj("ClusterFlow", "a", "all", json!({}))));
        assert!(scope(true, false).owns("ClusterFlow", &obj("ClusterFlow", "a", "all", json!({}))));
    }
}
