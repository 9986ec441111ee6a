//! Pre-flow lines: while a tap warms up (logging-operator checks the new configuration, kubelet
//! projects it, fluentd reloads: 20–90 s), k8stail shows the live container logs of the pods
//! the flow's match selects, read with the user's own kubeconfig as stern reads them. They are
//! raw container output from before the flow's filters, and every one is marked so. At the
//! first flow record the pod-log streams stop, one separator line is printed, and flow records
//! already shown as pre-flow lines (same container, time not after the last pre-flow line's)
//! are left out.
//!
//! - `matcher`: the flow's match rules as fluentd's router applies them (no I/O);
//! - `pods`: the pod watch and the followed `pods/log` streams.

mod matcher;
mod pods;

#[cfg(test)]
use pods::split_time;

use crate::protocol::TapKey;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::mpsc;

/// What the pre-flow source sends.
#[derive(Debug)]
pub enum Event {
    Line(Line),
    /// A one-line explanation (why there are no pre-flow lines, or fewer).
    Note(String),
}

/// One container log line.
#[derive(Debug, Clone)]
pub struct Line {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The container runtime's time of the line (the same value fluent-bit keeps as `time`).
    pub time: Option<jiff::Timestamp>,
    pub text: String,
}

impl Line {
    /// The line as a record shaped like a flow's (`message`, `time`, `kubernetes`), with
    /// `"preflow":true`, so every output format and local filter works on it.
    pub fn record(&self) -> String {
        let mut k = json!({
            "namespace_name": self.namespace, "pod_name": self.pod,
            "container_name": self.container, "labels": self.labels,
        });
        if let Some(node) = &self.node {
            k["host"] = node.clone().into();
        }
        let mut v = json!({"preflow": true, "message": self.text, "kubernetes": k});
        if let Some(t) = self.time {
            v["time"] = t.to_string().into();
        }
        v.to_string()
    }
}

/// How long after the first flow record the cut applies (fluentd's buffers send records from
/// before the switch within seconds).
pub const CUT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// `--preflow`: whether to show pre-flow lines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// When stdout is a terminal (scripts reading a pipe never get raw lines by surprise).
    #[default]
    Auto,
    Always,
    Never,
}

/// One flow's pre-flow view, from start to the switch to flow records.
pub struct Preflow {
    events: Option<mpsc::Receiver<Event>>,
    task: Option<tokio::task::AbortHandle>,
    /// Per container (namespace, pod, container): the times of the first and the last pre-flow
    /// line shown; flow records between them were shown already.
    watermarks: HashMap<(String, String, String), (jiff::Timestamp, jiff::Timestamp)>,
    /// When the first flow record came: the cut applies for [`CUT_FOR`] after it only.
    switched: Option<std::time::Instant>,
    /// Pre-flow lines shown.
    pub shown: u64,
    /// Flow records left out because they were shown as pre-flow lines already.
    pub left_out: u64,
}

impl Preflow {
    /// No pre-flow view.
    pub fn off() -> Preflow {
        Preflow {
            events: None,
            task: None,
            watermarks: HashMap::new(),
            switched: None,
            shown: 0,
            left_out: 0,
        }
    }

    /// Start watching the pods `target`'s match selects (for a ClusterFlow, in `namespace`
    /// only when given).
    pub fn start(client: kube::Client, target: &TapKey, namespace: Option<String>) -> Preflow {
        let (tx, rx) = mpsc::channel(1024);
        let source = pods::Source {
            client,
            target: target.clone(),
            namespace,
        };
        let task = tokio::spawn(pods::run(source, tx));
        let mut p = Preflow::off();
        p.events = Some(rx);
        p.task = Some(task.abort_handle());
        p
    }

    /// The next pre-flow event; never ready once switched (or off).
    pub async fn next(&mut self) -> Event {
        match self.events.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(event) => event,
                None => {
                    // The source ended (said why, or nothing matched): nothing more comes.
                    self.events = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }

    /// A line is shown: remember its time for the cut.
    pub fn shown(&mut self, line: &Line) {
        self.shown += 1;
        if let Some(t) = line.time {
            let key = (line.namespace.clone(), line.pod.clone(), line.container.clone());
            let (first, last) = self.watermarks.entry(key).or_insert((t, t));
            *first = (*first).min(t);
            *last = (*last).max(t);
        }
    }

    /// The first flow record came: stop the pod-log streams. True when pre-flow lines were on
    /// (the caller prints the separator once).
    pub fn switch(&mut self) -> bool {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.switched.get_or_insert_with(std::time::Instant::now);
        let was_on = self.events.take().is_some();
        was_on && self.shown > 0
    }

    /// Whether the flow record `record` was shown already as a pre-flow line: its container
    /// showed pre-flow lines from before to after the record's time. Only for [`CUT_FOR`] after
    /// the switch: a record's time may be the application's own or rewritten by a filter, and
    /// must not hide records for long.
    pub fn already_shown(&mut self, record: &Value) -> bool {
        if self.switched.is_some_and(|at| at.elapsed() > CUT_FOR) {
            self.watermarks.clear();
        }
        if self.watermarks.is_empty() {
            return false;
        }
        let k = &record["kubernetes"];
        let key = (
            k["namespace_name"].as_str().unwrap_or_default().to_owned(),
            k["pod_name"].as_str().unwrap_or_default().to_owned(),
            k["container_name"].as_str().unwrap_or_default().to_owned(),
        );
        let Some((first, last)) = self.watermarks.get(&key).copied() else {
            return false;
        };
        let Some(time) = super::clock::of_record(record) else {
            return false;
        };
        if time < first {
            return false;
        }
        if time > last {
            // Past the cut: this container's records need no more looking at.
            self.watermarks.remove(&key);
            return false;
        }
        self.left_out += 1;
        true
    }

    /// Whether any container's cut is still in force (a record without a time cannot be cut).
    pub fn cutting(&self) -> bool {
        !self.watermarks.is_empty()
    }
}

impl Drop for Preflow {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pod: &str, time: &str, text: &str) -> Line {
        Line {
            namespace: "shop".into(),
            pod: pod.into(),
            container: "app".into(),
            node: Some("node-1".into()),
            labels: BTreeMap::new(),
            time: time.parse().ok(),
            text: text.into(),
        }
    }

    #[test]
    fn a_pre_flow_line_is_a_record_marked_preflow_with_the_runtimes_time() {
        let v: Value = serde_json::from_str(&line("web-1", "2026-12-04T10:00:00.5Z", "hi").record()).unwrap();
        assert_eq!(v["preflow"], true);
        assert_eq!(v["message"], "hi");
        assert_eq!(v["kubernetes"]["pod_name"], "web-1");
        assert_eq!(v["kubernetes"]["host"], "node-1");
        assert_eq!(v["time"], "2026-12-04T10:00:00.5Z");
    }

    #[test]
    fn flow_records_up_to_each_containers_last_pre_flow_time_are_left_out_after_the_switch() {
        let mut p = Preflow::off();
        p.shown(&line("web-1", "2026-12-04T10:00:01Z", "a"));
        p.shown(&line("web-1", "2026-12-04T10:00:02Z", "b"));
        p.shown(&line("web-2", "2026-12-04T10:00:00Z", "c"));
        let rec = |pod: &str, time: &str| json!({"time": time, "kubernetes": {"namespace_name": "shop", "pod_name": pod, "container_name": "app"}});
        assert!(
            !p.already_shown(&rec("web-1", "2026-12-04T10:00:00Z")),
            "before the first pre-flow line"
        );
        assert!(p.already_shown(&rec("web-1", "2026-12-04T10:00:02Z")));
        assert!(!p.already_shown(&rec("web-1", "2026-12-04T10:00:02.000001Z")));
        assert!(!p.already_shown(&rec("web-2", "2026-12-04T10:00:01Z")));
        p.shown(&line("web-4", "2026-12-04T10:00:05Z", "d"));
        p.switched = Some(std::time::Instant::now() - CUT_FOR - std::time::Duration::from_secs(1));
        assert!(
            !p.already_shown(&rec("web-4", "2026-12-04T10:00:05Z")),
            "the cut is over"
        );
        assert!(
            !p.already_shown(&rec("web-3", "2026-12-04T09:00:00Z")),
            "no pre-flow line of it"
        );
        let untimed = json!({"kubernetes": {"namespace_name": "shop", "pod_name": "web-1", "container_name": "app"}});
        assert!(!p.already_shown(&untimed), "no time: shown (a clean cut)");
        assert_eq!(p.left_out, 1);
    }

    #[test]
    fn kubelet_timestamps_are_split_from_the_text() {
        let (t, text) = split_time("2026-12-04T19:45:16.123456789Z hello world");
        assert_eq!(t.unwrap().to_string(), "2026-12-04T19:45:16.123456789Z");
        assert_eq!(text, "hello world");
        assert_eq!(split_time("no time here"), (None, "no time here"));
    }
}
