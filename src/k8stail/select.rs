//! Which records to print: the filter flags, as query options the relay evaluates (so
//! filtered-out records never cross the network) and compiled here for what the relay cannot
//! do (label selectors, nodes, `--since`, an older relay), checked before connecting.

use super::{TailArgs, TapKey};
use crate::k8s::flowtap::FlowKind;
use crate::protocol::query::{FilterOptions, MAX_OPTION};
use crate::protocol::{Filter, Start};
use serde_json::Value;

/// Everything about which records to print, validated.
#[derive(Debug)]
pub struct Selection {
    pub start: Start,
    /// `--rate`: records per second, sampled at the relay.
    pub rate: Option<u32>,
    pub since: Option<jiff::Timestamp>,
    pub no_follow: bool,
    /// Records of this namespace only, for ClusterFlows (`-n` without `-A`).
    namespace: Option<String>,
    /// Filter options the relay evaluates (namespace apart), and the same compiled here.
    options: FilterOptions,
    filter: Filter,
    /// Filters only k8stail applies: `-l`, `--node`.
    selector: Option<Selector>,
    node: Option<String>,
    /// Filter here instead of at the relay: `--no-follow` (so the relay's count of buffered
    /// records is exactly what arrives), an option too long for the relay, or an older relay.
    pub local_only: bool,
}

/// `(?:a)|(?:b)`: any of several regexes, as one.
fn any_of(patterns: &[String]) -> Option<String> {
    match patterns {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(many.iter().map(|p| format!("(?:{p})")).collect::<Vec<_>>().join("|")),
    }
}

impl Selection {
    pub fn new(args: &TailArgs) -> Result<Selection, String> {
        let options = FilterOptions {
            grep: any_of(&args.include),
            exclude: any_of(&args.exclude),
            pod: args.pod.clone(),
            container: args.container.clone(),
            exclude_pod: any_of(&args.exclude_pod),
            exclude_container: any_of(&args.exclude_container),
            namespace: None,
        };
        // Checked before connecting, named as the user wrote them.
        let filter = options.compile_as(|option| match option {
            "grep" => "--include",
            "exclude" => "--exclude",
            "pod" => "--pod",
            "container" => "--container",
            "exclude-pod" => "--exclude-pod",
            "exclude-container" => "--exclude-container",
            other => other,
        })?;
        let tail = match args.tail {
            Some(0) => Some(Start::Live),
            Some(n) => Some(u64::try_from(n).map_or(Start::All, Start::Tail)),
            None => None,
        };
        let since = args
            .since
            .map(|d| jiff::Timestamp::now() - jiff::SignedDuration::try_from(d.0).unwrap_or(jiff::SignedDuration::MAX));
        let start = match (tail, args.no_follow || since.is_some()) {
            (Some(t), _) => t,
            // Everything held, for --no-follow; for --since, all of it, the old ones dropped here.
            (None, true) => Start::All,
            // Following: the recent records at once, as `tail -f` shows ten lines.
            (None, false) => Start::Tail(10),
        };
        let selector = args.selector.as_deref().map(Selector::parse).transpose()?;
        let local_only = args.no_follow || options.pairs().any(|(_, v)| v.len() > MAX_OPTION);
        Ok(Selection {
            start,
            rate: args.rate,
            since,
            no_follow: args.no_follow,
            namespace: args.namespace.clone().filter(|_| !args.all_namespaces),
            options,
            filter,
            selector,
            node: args.node.clone(),
            local_only,
        })
    }

    /// The namespace filter for `target`: `-n` narrows ClusterFlows only (a Flow's records are
    /// all from its own namespace).
    pub fn namespace_for(&self, target: &TapKey) -> Option<&String> {
        self.namespace.as_ref().filter(|_| target.kind == FlowKind::ClusterFlow)
    }

    /// The filter options the relay applies for `target` (none when k8stail filters itself).
    pub fn filter_options(&self, target: &TapKey) -> FilterOptions {
        if self.local_only {
            return FilterOptions::default();
        }
        FilterOptions {
            namespace: self.namespace_for(target).cloned(),
            ..self.options.clone()
        }
    }

    /// Whether k8stail prints `record` (of `target`), beyond what the relay filtered;
    /// `filter_here`: the relay applied none of the filter options.
    pub fn wants(&self, target: &TapKey, record: &serde_json::value::RawValue, filter_here: bool) -> bool {
        let needs_value = self.since.is_some() || self.selector.is_some() || self.node.is_some();
        let value: Option<Value> = needs_value.then(|| serde_json::from_str(record.get()).unwrap_or(Value::Null));
        if let Some(v) = &value {
            if self
                .since
                .is_some_and(|cutoff| super::clock::of_record(v).is_some_and(|t| t < cutoff))
            {
                return false;
            }
            let k = &v["kubernetes"];
            if self
                .node
                .as_ref()
                .is_some_and(|n| k["host"].as_str() != Some(n.as_str()))
            {
                return false;
            }
            if self.selector.as_ref().is_some_and(|s| !s.matches(&k["labels"])) {
                return false;
            }
        }
        if !filter_here {
            return true;
        }
        let Ok(meta) = crate::protocol::meta_of(record.get()) else {
            return false;
        };
        self.filter.matches(&meta)
            && self
                .namespace_for(target)
                .is_none_or(|ns| meta.namespace() == Some(ns.as_str()))
    }
}

/// A Kubernetes label selector (equality- and set-based), matched against a record's
/// `kubernetes.labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    Absent(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let bad = |why: &str| {
            format!("-l {text:?}: {why} (write app=web, tier!=db, env in (a,b), canary or !canary; a comma means and)")
        };
        let mut parts = vec![];
        let (mut depth, mut start) = (0i32, 0);
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
            if depth < 0 {
                return Err(bad("unbalanced parentheses"));
            }
        }
        if depth != 0 {
            return Err(bad("unbalanced parentheses"));
        }
        parts.push(&text[start..]);
        let key_ok = |k: &str| {
            !k.is_empty() && k.len() <= 317 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        let value_ok = |v: &str| v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let mut reqs = vec![];
        for part in parts {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad("an empty requirement"));
            }
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| bad("a set is written (a,b)"))?;
                let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
                if values.iter().any(|v| !value_ok(v)) {
                    return Err(bad("a value is not a label value"));
                }
                Ok(values)
            };
            let req = if let Some(key) = p.strip_prefix('!') {
                Requirement::Absent(key.trim().to_owned())
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_owned(), set(rest)?)
            } else if let Some((k, rest)) = p.split_once(" in ") {
                Requirement::In(k.trim().to_owned(), set(rest)?)
            } else {
                Requirement::Exists(p.to_owned())
            };
            let (key, value) = match &req {
                Requirement::Exists(k) | Requirement::Absent(k) | Requirement::In(k, _) | Requirement::NotIn(k, _) => {
                    (k, None)
                }
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
            };
            if !key_ok(key) {
                return Err(bad(&format!("{key:?} is not a label key")));
            }
            if value.is_some_and(|v| !value_ok(v)) {
                return Err(bad("a value is not a label value"));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether `labels` (a JSON object of strings; anything else has no labels) match.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::Absent(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options of a first connection, as they travel.
    fn query(s: &Selection, target: &TapKey) -> Vec<(String, String)> {
        let q = crate::protocol::ListenQuery {
            start: s.start,
            filter: s.filter_options(target),
            rate: s.rate,
        };
        q.to_pairs()
    }
    use serde_json::json;
    use serde_json::value::RawValue;

    fn selection(args: &[&str]) -> Result<Selection, String> {
        let cli = crate::k8stail::Cli::try_parse_args([&["k8stail", "web"], args].concat()).unwrap();
        Selection::new(&cli.tail)
    }

    fn rec(pod: &str, container: &str, msg: &str) -> Box<RawValue> {
        RawValue::from_string(
            json!({"time": "2025-03-14T09:00:01Z", "message": msg, "kubernetes": {"pod_name": pod, "container_name": container, "namespace_name": "shop", "host": "node-1", "labels": {"app": "web", "tier": "front"}}}).to_string(),
        )
        .unwrap()
    }

    #[test]
    fn label_selectors_read_and_match_as_kubernetes_does() {
        let labels = json!({"app": "web", "tier": "front"});
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=back", false),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("canary", false),
            ("!canary", true),
            ("app", true),
            ("env notin (prod)", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&labels), want, "{sel}");
        }
        for bad in ["app=web,", "tier in front", "tier in (a", "a b", "app=we b", "=x"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        assert!(!Selector::parse("app").unwrap().matches(&json!(null)));
    }

    #[test]
    fn repeated_includes_and_excludes_mean_any_of_them_at_the_relay_and_here() {
        let filters = [
            "-i",
            "^err",
            "-i",
            "warn",
            "-e",
            "healthz",
            "-E",
            "istio-proxy",
            "--exclude-pod",
            "^db-",
        ];
        let s = selection(&filters).unwrap();
        let web = crate::k8stail::parse_target("shop/web", false).unwrap();
        let q = query(&s, &web);
        assert!(q.contains(&("grep".into(), "(?:^err)|(?:warn)".into())), "{q:?}");
        assert!(q.contains(&("exclude-container".into(), "istio-proxy".into())), "{q:?}");
        assert_eq!(s.start, Start::Tail(10), "following shows the recent records at once");
        let local = selection(&[&filters[..], &["--no-follow"]].concat()).unwrap();
        assert!(local.filter_options(&web).is_empty(), "--no-follow filters here");
        assert_eq!(local.start, Start::All);
        assert!(local.wants(&web, &rec("web-1", "app", "warn: x"), true));
        assert!(!local.wants(&web, &rec("web-1", "app", "info"), true));
        assert!(!local.wants(&web, &rec("web-1", "app", "warn: GET /healthz"), true));
        assert!(!local.wants(&web, &rec("web-1", "istio-proxy", "warn"), true));
        assert!(!local.wants(&web, &rec("db-1", "app", "warn"), true));
    }

    #[test]
    fn the_namespace_narrows_clusterflows_only_and_nodes_and_labels_are_checked_here() {
        let s = selection(&["-n", "shop", "--node", "node-2", "-l", "app=web"]).unwrap();
        let all = crate::k8stail::parse_target("clusterflow/logging/all", false).unwrap();
        let web = crate::k8stail::parse_target("shop/web", false).unwrap();
        assert!(query(&s, &all).contains(&("namespace".into(), "shop".into())));
        assert!(!query(&s, &web).iter().any(|(k, _)| k == "namespace"));
        assert!(!s.wants(&web, &rec("web-1", "app", "x"), false), "another node");
        let s = selection(&["-n", "shop", "-A", "--node", "node-1", "-l", "app=web"]).unwrap();
        assert!(!query(&s, &all).iter().any(|(k, _)| k == "namespace"), "-A");
        assert!(s.wants(&web, &rec("web-1", "app", "x"), false));
        let s = selection(&["-l", "app=api"]).unwrap();
        assert!(!s.wants(&web, &rec("web-1", "app", "x"), false));
    }

    #[test]
    fn tail_and_since_pick_the_first_records() {
        assert_eq!(selection(&["--tail", "0"]).unwrap().start, Start::Live);
        assert_eq!(selection(&["--tail", "-1"]).unwrap().start, Start::All);
        assert_eq!(
            selection(&["--tail", "5", "--no-follow"]).unwrap().start,
            Start::Tail(5)
        );
        let since = selection(&["-s", "1h30m"]).unwrap();
        assert_eq!(since.start, Start::All);
        let cutoff = since.since.unwrap();
        let expected = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5400);
        assert!(expected.duration_since(cutoff).as_secs().abs() < 5);
        assert!(selection(&["-i", "("]).unwrap_err().contains("--include"));
        assert!(selection(&["-l", "a b"]).unwrap_err().contains("-l"));
    }
}
