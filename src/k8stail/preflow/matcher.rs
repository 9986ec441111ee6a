//! Which containers a Flow or ClusterFlow routes, decided as fluentd decides it: logging-operator
//! turns the flow's `match` into fluent-plugin-label-router rules, and the router gives each
//! container (each log file) to the first rule whose conditions all hold: `select` routes it,
//! `exclude` does not; no rule holding means not routed. No I/O here: the pod, its namespace's
//! labels and the flow's spec come in, a yes or no goes out.

use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;

/// The flow's match rules, read from its spec.
#[derive(Debug, Clone)]
pub struct Rules {
    /// A Flow's own namespace: its rules hold only there.
    only_namespace: Option<String>,
    entries: Vec<Entry>,
}

/// One `select` or `exclude` entry.
#[derive(Debug, Clone, Default)]
struct Entry {
    exclude: bool,
    labels: BTreeMap<String, String>,
    hosts: Vec<String>,
    container_names: Vec<String>,
    namespaces: Vec<String>,
    namespaces_regex: Vec<Regex>,
    namespace_labels: BTreeMap<String, String>,
}

/// What the rules look at: one container of one pod.
pub struct Container<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub node: Option<&'a str>,
    pub container: &'a str,
    /// The namespace's labels, when they were read (only rules with `namespace_labels` need them).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

/// The answer for one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Yes,
    No,
    /// A rule needs the namespace's labels and they were not given.
    NeedsNamespaceLabels,
}

/// fluent-bit leaves out the logs of pods annotated so (`K8S-Logging.Exclude`, on in the
/// configuration logging-operator writes): no flow ever sees them.
const FLUENTBIT_EXCLUDE: &str = "fluentbit.io/exclude";

impl Rules {
    /// The rules of a Flow (`namespace` is its own) or of a ClusterFlow (`None`), from its
    /// spec. A rule the router could not use (a bad regex) is an error naming it.
    pub fn from_spec(spec: &Value, flow_namespace: Option<&str>) -> Result<Rules, String> {
        let cluster = flow_namespace.is_none();
        let entries = match spec.get("match") {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|m| {
                    let (exclude, body) = match (m.get("select"), m.get("exclude")) {
                        (Some(s), _) => (false, s),
                        (None, Some(e)) => (true, e),
                        (None, None) => return None,
                    };
                    Some(entry(body, exclude, cluster))
                })
                .collect::<Result<Vec<_>, _>>()?,
            // `match: null` is no match at all.
            Some(Value::Null) | None => {
                // The legacy `selectors` (pod labels), else every pod.
                let labels = strings_map(spec.get("selectors"));
                vec![Entry {
                    labels,
                    ..Entry::default()
                }]
            }
            Some(other) => return Err(format!("the flow's match is not a list: {other}")),
        };
        Ok(Rules {
            only_namespace: flow_namespace.map(str::to_owned),
            entries,
        })
    }

    /// Whether any rule needs the namespaces' labels.
    pub fn needs_namespace_labels(&self) -> bool {
        self.entries.iter().any(|e| !e.namespace_labels.is_empty())
    }

    /// Whether the flow routes this container's logs.
    pub fn routes(&self, c: &Container) -> Routed {
        if c.annotations.get(FLUENTBIT_EXCLUDE).is_some_and(|v| v == "true") {
            return Routed::No;
        }
        if self.only_namespace.as_deref().is_some_and(|ns| ns != c.namespace) {
            return Routed::No;
        }
        for e in &self.entries {
            match e.holds(c) {
                Some(true) => return if e.exclude { Routed::No } else { Routed::Yes },
                Some(false) => {}
                None => return Routed::NeedsNamespaceLabels,
            }
        }
        Routed::No
    }
}

fn entry(body: &Value, exclude: bool, cluster: bool) -> Result<Entry, String> {
    let mut e = Entry {
        exclude,
        labels: strings_map(body.get("labels")),
        hosts: strings(body.get("hosts")),
        container_names: strings(body.get("container_names")),
        ..Entry::default()
    };
    // A Flow's namespace comes from the Flow itself; its entries' namespace fields do not exist
    // (logging-operator drops them).
    if cluster {
        e.namespaces = strings(body.get("namespaces"));
        e.namespaces_regex = strings(body.get("namespaces_regex"))
            .iter()
            .map(|r| Regex::new(r).map_err(|err| format!("the flow's namespaces_regex {r:?} is not a regex: {err}")))
            .collect::<Result<_, _>>()?;
        e.namespace_labels = strings_map(body.get("namespace_labels"));
    }
    Ok(e)
}

impl Entry {
    /// Whether every condition of the entry holds; `None` when it needs namespace labels that
    /// were not given.
    fn holds(&self, c: &Container) -> Option<bool> {
        let listed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if !listed(&self.hosts, c.node.unwrap_or_default())
            || !listed(&self.container_names, c.container)
            || !listed(&self.namespaces, c.namespace)
        {
            return Some(false);
        }
        if !self.namespaces_regex.is_empty() && !self.namespaces_regex.iter().any(|r| r.is_match(c.namespace)) {
            return Some(false);
        }
        if !subset(&self.labels, c.labels) {
            return Some(false);
        }
        if self.namespace_labels.is_empty() {
            return Some(true);
        }
        c.namespace_labels.map(|ns| subset(&self.namespace_labels, ns))
    }
}

fn subset(wanted: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn strings_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    struct Pod {
        ns: &'static str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        node: &'static str,
        ns_labels: Option<BTreeMap<String, String>>,
    }

    fn pod(ns: &'static str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            ns,
            labels: map(labels),
            annotations: BTreeMap::new(),
            node: "node-1",
            ns_labels: Some(BTreeMap::new()),
        }
    }

    fn routes(rules: &Rules, p: &Pod, container: &str) -> Routed {
        rules.routes(&Container {
            namespace: p.ns,
            labels: &p.labels,
            annotations: &p.annotations,
            node: Some(p.node),
            container,
            namespace_labels: p.ns_labels.as_ref(),
        })
    }

    fn flow(spec: Value) -> Rules {
        Rules::from_spec(&spec, Some("shop")).unwrap()
    }

    fn cluster_flow(spec: Value) -> Rules {
        Rules::from_spec(&spec, None).unwrap()
    }

    #[test]
    fn the_first_entry_that_holds_decides_so_order_matters() {
        let excluded_first = flow(json!({"match": [
            {"exclude": {"labels": {"tier": "debug"}}},
            {"select": {"labels": {"app": "web"}}}
        ]}));
        let debug_web = pod("shop", &[("app", "web"), ("tier", "debug")]);
        assert_eq!(routes(&excluded_first, &debug_web, "app"), Routed::No);
        assert_eq!(
            routes(&excluded_first, &pod("shop", &[("app", "web")]), "app"),
            Routed::Yes
        );
        let selected_first = flow(json!({"match": [
            {"select": {"labels": {"app": "web"}}},
            {"exclude": {"labels": {"tier": "debug"}}}
        ]}));
        assert_eq!(routes(&selected_first, &debug_web, "app"), Routed::Yes);
        assert_eq!(
            routes(&selected_first, &pod("shop", &[("app", "db")]), "app"),
            Routed::No,
            "no entry holds: not routed"
        );
    }

    #[test]
    fn all_conditions_of_an_entry_must_hold_labels_hosts_and_container_names() {
        let rules = flow(json!({"match": [{"select": {
            "labels": {"app": "web", "release": "canary"},
            "hosts": ["node-1", "node-2"],
            "container_names": ["app"]
        }}]}));
        let web = pod("shop", &[("app", "web"), ("release", "canary"), ("extra", "x")]);
        assert_eq!(routes(&rules, &web, "app"), Routed::Yes, "labels are a subset");
        assert_eq!(routes(&rules, &web, "istio-proxy"), Routed::No, "container name");
        assert_eq!(
            routes(&rules, &pod("shop", &[("app", "web")]), "app"),
            Routed::No,
            "both labels"
        );
        let mut elsewhere = pod("shop", &[("app", "web"), ("release", "canary")]);
        elsewhere.node = "node-9";
        assert_eq!(routes(&rules, &elsewhere, "app"), Routed::No, "host");
    }

    #[test]
    fn a_flow_holds_only_in_its_own_namespace_whatever_its_entries_say() {
        let rules = flow(json!({"match": [{"select": {"namespaces": ["other"]}}]}));
        assert_eq!(routes(&rules, &pod("shop", &[]), "app"), Routed::Yes);
        assert_eq!(routes(&rules, &pod("other", &[]), "app"), Routed::No);
    }

    #[test]
    fn no_match_routes_every_pod_or_the_legacy_selectors_and_an_empty_match_routes_nothing() {
        assert_eq!(routes(&flow(json!({})), &pod("shop", &[]), "app"), Routed::Yes);
        let legacy = flow(json!({"selectors": {"app": "web"}}));
        assert_eq!(routes(&legacy, &pod("shop", &[("app", "web")]), "app"), Routed::Yes);
        assert_eq!(routes(&legacy, &pod("shop", &[("app", "db")]), "app"), Routed::No);
        assert_eq!(
            routes(&flow(json!({"match": []})), &pod("shop", &[]), "app"),
            Routed::No
        );
        assert_eq!(
            routes(&flow(json!({"match": [{"select": {}}]})), &pod("shop", &[]), "x"),
            Routed::Yes
        );
    }

    #[test]
    fn pods_fluent_bit_excludes_are_never_routed() {
        let mut p = pod("shop", &[]);
        p.annotations = map(&[(FLUENTBIT_EXCLUDE, "true")]);
        assert_eq!(routes(&flow(json!({})), &p, "app"), Routed::No);
        p.annotations = map(&[(FLUENTBIT_EXCLUDE, "false")]);
        assert_eq!(routes(&flow(json!({})), &p, "app"), Routed::Yes);
    }

    #[test]
    fn a_cluster_flow_selects_by_namespace_names_regexes_and_labels() {
        let rules = cluster_flow(json!({"match": [
            {"exclude": {"namespaces": ["kube-system"]}},
            {"select": {"namespaces_regex": ["^team-"]}},
            {"select": {"namespaces": ["shop"], "labels": {"app": "web"}}},
            {"select": {"namespace_labels": {"tier": "prod"}}}
        ]}));
        assert_eq!(routes(&rules, &pod("kube-system", &[]), "app"), Routed::No);
        assert_eq!(routes(&rules, &pod("team-a", &[]), "app"), Routed::Yes);
        assert_eq!(routes(&rules, &pod("shop", &[("app", "web")]), "app"), Routed::Yes);
        let mut prod = pod("billing", &[]);
        prod.ns_labels = Some(map(&[("tier", "prod")]));
        assert_eq!(routes(&rules, &prod, "app"), Routed::Yes);
        prod.ns_labels = None;
        assert!(rules.needs_namespace_labels());
        assert_eq!(routes(&rules, &prod, "app"), Routed::NeedsNamespaceLabels);
        assert_eq!(
            routes(&rules, &pod("shop", &[("app", "db")]), "app"),
            Routed::No,
            "namespace labels read and not matching"
        );
        assert_eq!(routes(&cluster_flow(json!({})), &pod("any", &[]), "app"), Routed::Yes);
    }

    #[test]
    fn an_exclude_entry_can_hold_by_namespace_labels_too() {
        let rules = cluster_flow(json!({"match": [
            {"exclude": {"namespace_labels": {"tier": "prod"}, "labels": {"app": "db"}}},
            {"select": {}}
        ]}));
        assert!(rules.needs_namespace_labels());
        let mut db = pod("x", &[("app", "db")]);
        db.ns_labels = Some(map(&[("tier", "prod")]));
        assert_eq!(routes(&rules, &db, "app"), Routed::No);
        db.ns_labels = Some(map(&[("tier", "dev")]));
        assert_eq!(routes(&rules, &db, "app"), Routed::Yes);
        assert_eq!(
            routes(&rules, &pod("x", &[("app", "web")]), "app"),
            Routed::Yes,
            "labels decide first"
        );
    }

    #[test]
    fn a_bad_regex_is_an_error_naming_it() {
        let err = Rules::from_spec(&json!({"match": [{"select": {"namespaces_regex": ["("]}}]}), None).unwrap_err();
        assert!(err.contains("namespaces_regex \"(\""), "{err}");
    }
}
