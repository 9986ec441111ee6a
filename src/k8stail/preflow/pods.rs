//! The pre-flow source: the flow's match rules, the pods they select (watched, so pods that
//! start during the warm-up join), and one followed `pods/log` stream per routed container,
//! all with the user's own kubeconfig, so nothing is shown that `kubectl logs` would not show.
//! Lines and one-line notes go to the stream over a channel.

use super::matcher::{Container, Routed, Rules};
use super::{Event, Line};
use crate::k8s::flowtap::FlowKind;
use crate::protocol::TapKey;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, LogParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc::Sender;

/// Followed log streams at most, as stern's `--max-log-requests` in follow mode.
pub const MAX_STREAMS: usize = 50;
/// Lines of history shown per container that was already running when k8stail started.
pub const HISTORY_LINES: i64 = 10;

/// Where the pre-flow view looks: the flow, and for a ClusterFlow the namespace `-n` narrows to.
pub struct Source {
    pub client: kube::Client,
    pub target: TapKey,
    pub namespace: Option<String>,
}

/// Read the flow, watch its pods and follow the routed containers until dropped (aborted).
pub async fn run(source: Source, tx: Sender<Event>) {
    let Source {
        client,
        target,
        namespace,
    } = source;
    let note = |text: String| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Event::Note(text)).await;
        }
    };
    let kind = target.kind.to_string();
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(crate::k8s::logging::GROUP, "v1beta1", &kind));
    let flows: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &resource);
    let spec = match flows.get(&target.name).await {
        Ok(flow) => flow.data.get("spec").cloned().unwrap_or_default(),
        Err(e) => {
            let why = match forbidden(&e) {
                true => format!("you may not get {kind} {}/{}", target.namespace, target.name),
                false => format!("cannot read {kind} {}/{} ({e})", target.namespace, target.name),
            };
            return note(format!("no pre-flow lines: {why}; waiting for the flow's records")).await;
        }
    };
    let own_namespace = (target.kind == FlowKind::Flow).then_some(target.namespace.as_str());
    let rules = match Rules::from_spec(&spec, own_namespace) {
        Ok(r) => r,
        Err(e) => return note(format!("no pre-flow lines: {e}; waiting for the flow's records")).await,
    };
    let scope = own_namespace.map(str::to_owned).or(namespace);
    let pods: Api<Pod> = match &scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut follower = Follower {
        client: client.clone(),
        tx: tx.clone(),
        rules,
        namespaces: HashMap::new(),
        started: HashSet::new(),
        streams: tokio::task::JoinSet::new(),
        by_pod: HashMap::new(),
        said: HashSet::new(),
        refused: Refused::default(),
    };
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitApply(pod)) => follower.pod(&pod, !listed).await,
            Ok(watcher::Event::Apply(pod)) => follower.pod(&pod, false).await,
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::Delete(pod)) => follower.gone(&pod),
            Err(e) => {
                let refused = match &e {
                    watcher::Error::InitialListFailed(e)
                    | watcher::Error::WatchStartFailed(e)
                    | watcher::Error::WatchFailed(e) => forbidden(e),
                    watcher::Error::WatchError(s) => s.code == 403,
                    watcher::Error::NoResourceVersion => false,
                };
                if refused {
                    let where_ = scope
                        .as_deref()
                        .map_or("any namespace".to_owned(), |ns| format!("namespace {ns}"));
                    return note(format!(
                        "no pre-flow lines: you may not list and watch pods in {where_} (kubectl auth can-i watch pods); waiting for the flow's records"
                    ))
                    .await;
                }
                tracing::debug!(error = %e, "pre-flow pod watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Whether `container` of `pod` has ended (its log does not grow): not followed now, looked at
/// again when the pod changes (a restart).
fn terminated(pod: &Pod, container: &str) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .chain(status.ephemeral_container_statuses.iter().flatten())
        .filter(|c| c.name == container)
        .any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
}

fn forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

/// The routed containers' log streams.
struct Follower {
    client: kube::Client,
    tx: Sender<Event>,
    rules: Rules,
    /// Namespace labels read so far (`None`: may not be read).
    namespaces: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Containers decided already (pod uid, container): the router decides once per log file.
    started: HashSet<(String, String)>,
    streams: tokio::task::JoinSet<()>,
    by_pod: HashMap<String, Vec<tokio::task::AbortHandle>>,
    /// Notes said once.
    said: HashSet<&'static str>,
    /// Namespaces whose pod logs the user may not read: said once, no more streams asked for.
    refused: Refused,
}

type Refused = std::sync::Arc<std::sync::Mutex<HashSet<String>>>;

impl Follower {
    async fn say_once(&mut self, key: &'static str, text: String) {
        if self.said.insert(key) {
            let _ = self.tx.send(Event::Note(text)).await;
        }
    }

    async fn namespace_labels(&mut self, ns: &str) -> Option<BTreeMap<String, String>> {
        if let Some(known) = self.namespaces.get(ns) {
            return known.clone();
        }
        let got = Api::<Namespace>::all(self.client.clone()).get(ns).await;
        let labels = match got {
            Ok(n) => Some(n.metadata.labels.unwrap_or_default()),
            Err(e) => {
                self.say_once(
                    "namespace-labels",
                    format!("pre-flow lines leave out pods whose namespace's labels the flow's match needs: cannot read namespace {ns} ({})", short(&e)),
                )
                .await;
                None
            }
        };
        self.namespaces.insert(ns.to_owned(), labels.clone());
        labels
    }

    /// Start following the routed containers of `pod` not followed yet; `running_before` says
    /// the pod was there when k8stail started (its recent history is shown, not all of it).
    async fn pod(&mut self, pod: &Pod, running_before: bool) {
        let (Some(uid), Some(spec)) = (pod.metadata.uid.clone(), pod.spec.as_ref()) else {
            return;
        };
        // Not scheduled yet (no node: a `hosts` rule cannot be decided, no log to read), or
        // finished (its log does not grow): looked at again when it changes.
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some()
            || spec.node_name.is_none()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            return;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if self.refused.lock().unwrap().contains(&ns) {
            return;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let containers = spec.init_containers.iter().flatten().map(|c| c.name.clone());
        let containers = containers.chain(spec.containers.iter().map(|c| c.name.clone()));
        let containers = containers.chain(spec.ephemeral_containers.iter().flatten().map(|c| c.name.clone()));
        let ns_labels = match self.rules.needs_namespace_labels() {
            true => self.namespace_labels(&ns).await,
            false => None,
        };
        // Finished streams leave the set, so the cap counts live ones.
        while self.streams.try_join_next().is_some() {}
        for container in containers.collect::<Vec<_>>() {
            if self.started.contains(&(uid.clone(), container.clone())) || terminated(pod, &container) {
                continue;
            }
            let routed = self.rules.routes(&Container {
                namespace: &ns,
                labels: &labels,
                annotations: &annotations,
                node: spec.node_name.as_deref(),
                container: &container,
                namespace_labels: ns_labels.as_ref(),
            });
            if routed == Routed::NeedsNamespaceLabels {
                continue;
            }
            // The router decides once per log file: so does this, whether or not it routes.
            self.started.insert((uid.clone(), container.clone()));
            if routed != Routed::Yes {
                continue;
            }
            if self.streams.len() >= MAX_STREAMS {
                // Not marked followed: a later change of the pod tries again once a slot is free.
                self.started.remove(&(uid.clone(), container.clone()));
                self.say_once(
                    "max-streams",
                    format!("the flow matches more than {MAX_STREAMS} containers: pre-flow lines come from the first {MAX_STREAMS}"),
                )
                .await;
                continue;
            }
            let stream = Stream {
                pods: Api::namespaced(self.client.clone(), &ns),
                tx: self.tx.clone(),
                line: Line {
                    namespace: ns.clone(),
                    pod: name.clone(),
                    container,
                    node: spec.node_name.clone(),
                    labels: labels.clone(),
                    time: None,
                    text: String::new(),
                },
                history: running_before,
                refused: self.refused.clone(),
            };
            let handle = self.streams.spawn(stream.follow());
            self.by_pod.entry(uid.clone()).or_default().push(handle);
        }
    }

    fn gone(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for handle in self.by_pod.remove(&uid).unwrap_or_default() {
            handle.abort();
        }
    }
}

/// One container's followed log.
struct Stream {
    pods: Api<Pod>,
    tx: Sender<Event>,
    /// The container's fields, copied into every line.
    line: Line,
    history: bool,
    refused: Refused,
}

impl Stream {
    /// Follow the container's log, asking again after a broken stream from the last line's
    /// time, and waiting for a container that has not started yet.
    async fn follow(self) {
        let mut since: Option<jiff::Timestamp> = None;
        let mut waits = 0u32;
        loop {
            let params = LogParams {
                container: Some(self.line.container.clone()),
                follow: true,
                timestamps: true,
                tail_lines: (self.history && since.is_none()).then_some(HISTORY_LINES),
                since_time: since.and_then(|t| k8s_openapi::jiff::Timestamp::from_nanosecond(t.as_nanosecond()).ok()),
                ..LogParams::default()
            };
            let reader = match self.pods.log_stream(&self.line.pod, &params).await {
                Ok(r) => r,
                Err(e) if forbidden(&e) => {
                    if !self.refused.lock().unwrap().insert(self.line.namespace.clone()) {
                        return;
                    }
                    let text = format!(
                        "no pre-flow lines from namespace {}: you may not read pods/log there (kubectl auth can-i get pods/log)",
                        self.line.namespace
                    );
                    let _ = self.tx.send(Event::Note(text)).await;
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => {
                    // Not started yet (400 "waiting to start"), or the kubelet unreachable.
                    tracing::debug!(pod = %self.line.pod, error = %e, "pre-flow log request");
                    waits += 1;
                    if waits > 60 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500) * waits.min(10)).await;
                    continue;
                }
            };
            // sinceTime is whole seconds: lines asked for again are left out by their own time.
            let again = since;
            let mut reader = Box::pin(reader);
            let mut buf = Vec::new();
            while let Ok(Some(text)) = next_line(&mut reader, &mut buf).await {
                waits = 0;
                let (time, text) = split_time(&text);
                if let (Some(t), Some(last)) = (time, again) {
                    if t <= last {
                        continue;
                    }
                }
                if let Some(t) = time {
                    since = Some(t);
                }
                let line = Line {
                    time,
                    text: text.to_owned(),
                    ..self.line.clone()
                };
                if self.tx.send(Event::Line(line)).await.is_err() {
                    return;
                }
            }
            // The container ended (or the stream broke): look again, less and less often.
            waits += 1;
            if waits > 12 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500) * waits.min(10)).await;
        }
    }
}

/// The longest line shown whole; the rest of a longer one is cut (said in the line).
pub const MAX_LINE: usize = 64 << 10;

/// The next line of a log stream, at most [`MAX_LINE`] bytes kept (a pod writing one endless
/// line must not fill k8stail's memory), bytes that are not UTF-8 replaced (never the end of the
/// stream). `None` at the end.
async fn next_line<R: futures::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    use futures::AsyncBufReadExt as _;
    buf.clear();
    let mut cut = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            if buf.is_empty() && !cut {
                return Ok(None);
            }
            break;
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        cut |= take > room;
        reader.consume_unpin(take);
        if done {
            break;
        }
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    let mut text = String::from_utf8_lossy(buf).into_owned();
    if cut {
        text.push_str(" [line cut at 64 KiB]");
    }
    Ok(Some(text))
}

/// `2026-12-04T19:45:16.123456789Z text` (kubelet's `timestamps=true`) → the time and the text.
pub fn split_time(line: &str) -> (Option<jiff::Timestamp>, &str) {
    match line.split_once(' ') {
        Some((t, rest)) => match t.parse::<jiff::Timestamp>() {
            Ok(t) => (Some(t), rest),
            Err(_) => (None, line),
        },
        None => (line.parse().ok(), ""),
    }
}

fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        e => e.to_string(),
    }
}
