//! logging-operator's part, played for the tests, the demo and the bench (no logging-operator
//! runs here). It writes what logging-operator writes (see its `pkg/resources/model/
//! reconciler.go` and config check):
//!
//! - a `Logging` for the namespace (control namespace and watched namespace), with
//!   `status.watchNamespaces`;
//! - on every Output and ClusterOutput: `status.active` (whether a flow names it) and
//!   `status.problems` / `problemsCount` (here: the names a test marks as rejected);
//! - for every new set of flow output refs (a new fluentd configuration):
//!   `Logging.status.configCheckResults[<hash>]`, `false` when the configuration names an
//!   output (or is a flow, `flow/NAME`) a test marks as failing the check. As logging-operator
//!   does, it keeps the result of the *current* configuration only (older hashes are pruned),
//!   checks a configuration it has a result for only once, and a check takes time
//!   ([`Behaviour::check_delay`]; configurations that change meanwhile wait for the next one).
//! - a render of every flow on every pass: each `localOutputRefs` entry must name an Output of
//!   the namespace, each `globalOutputRefs` entry a ClusterOutput; a ref that does not resolve
//!   fails logging-operator's render of the whole Logging, and is recorded
//!   ([`LoggingOperator::render_failures`]) so a test asserts it never happened.
//!
//! It polls (every 200 ms) instead of watching: simpler, and what it writes is the same.

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the stand-in does differently from a happy logging-operator; changeable while it runs.
#[derive(Debug)]
pub struct Behaviour {
    /// Outputs of the user's own pipeline that the tests name in flows without creating them
    /// as objects (`loki`, `archive`): they resolve in the render.
    pub external_outputs: BTreeSet<String>,
    /// Outputs (by name) it reports problems for.
    pub reject_outputs: BTreeSet<String>,
    /// A configuration naming any of these outputs, or holding any of these flows (`flow/NAME`,
    /// `clusterflow/NAME`), fails its check.
    pub fail_config_with: BTreeSet<String>,
    /// How long a configuration check takes.
    pub check_delay: Duration,
    /// Stop writing anything (logging-operator not running).
    pub paused: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            external_outputs: ["loki", "archive"].map(str::to_owned).into(),
            reject_outputs: Default::default(),
            fail_config_with: Default::default(),
            check_delay: Duration::ZERO,
            paused: false,
        }
    }
}

/// A running stand-in; stops when dropped.
pub struct LoggingOperator {
    pub logging: String,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// API requests it has made (a bench takes them out of log-socket's count).
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    renders: Arc<Mutex<Renders>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the renders found, and the check under way.
#[derive(Default, Debug)]
struct Renders {
    /// Renders that failed: a flow naming an output that does not exist.
    failures: Vec<String>,
    /// The configuration being checked, its verdict, and when its check started.
    checking: Option<(String, bool, std::time::Instant)>,
}

impl LoggingOperator {
    /// Every render that failed so far (a flow named a missing output), with what was missing.
    pub fn render_failures(&self) -> Vec<String> {
        self.renders.lock().unwrap().failures.clone()
    }
}

impl Drop for LoggingOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn api(client: &kube::Client, ns: Option<&str>, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()));
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The name of the Logging the stand-in creates for `ns`.
pub fn logging_name(ns: &str) -> String {
    format!("logging-{ns}")
}

/// Create the Logging of `ns` (control namespace and only watched namespace) and start
/// playing logging-operator for it.
pub async fn start(client: &kube::Client, ns: &str) -> LoggingOperator {
    let name = logging_name(ns);
    let loggings = api(client, None, "Logging");
    let logging: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Logging",
        "metadata": {"name": name},
        "spec": {"controlNamespace": ns, "watchNamespaces": [ns]},
    }))
    .unwrap();
    match loggings.create(&PostParams::default(), &logging).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create Logging {name}: {e}"),
    }
    let status = json!({"status": {"watchNamespaces": [ns], "configCheckResults": {}}});
    loggings
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("Logging {name} status: {e}"));
    let behaviour = Arc::new(Mutex::new(Behaviour::default()));
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let renders = Arc::new(Mutex::new(Renders::default()));
    let task = tokio::spawn(play(
        client.clone(),
        ns.to_owned(),
        name.clone(),
        behaviour.clone(),
        requests.clone(),
        renders.clone(),
    ));
    LoggingOperator {
        logging: name,
        behaviour,
        requests,
        renders,
        task,
    }
}

async fn play(
    client: kube::Client,
    ns: String,
    logging: String,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<std::sync::atomic::AtomicU64>,
    renders: Arc<Mutex<Renders>>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if behaviour.lock().unwrap().paused {
            continue;
        }
        if let Err(e) = pass(&client, &ns, &logging, &behaviour, &requests, &renders).await {
            eprintln!("logging-operator stand-in for {ns}: {e}");
        }
    }
}

fn refs(obj: &DynamicObject, field: &str) -> Vec<String> {
    obj.data["spec"][field]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn pass(
    client: &kube::Client,
    ns: &str,
    logging: &str,
    behaviour: &Mutex<Behaviour>,
    requests: &std::sync::atomic::AtomicU64,
    renders: &Mutex<Renders>,
) -> Result<(), kube::Error> {
    let count = |n: u64| requests.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    // Two flow lists, two output lists and the Logging, plus each write below.
    count(5);
    let lp = Default::default();
    let flows = api(client, Some(ns), "Flow").list(&lp).await?.items;
    let cluster_flows = api(client, Some(ns), "ClusterFlow").list(&lp).await?.items;
    let mut local: BTreeSet<String> = BTreeSet::new();
    let mut global: BTreeSet<String> = BTreeSet::new();
    // The configuration: every flow with its refs, in a stable order.
    let mut config: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &flows {
        local.extend(refs(f, "localOutputRefs"));
        global.extend(refs(f, "globalOutputRefs"));
        let mut all = refs(f, "localOutputRefs");
        all.extend(refs(f, "globalOutputRefs"));
        config.insert(format!("flow/{}", kube::ResourceExt::name_any(f)), all);
    }
    for f in &cluster_flows {
        global.extend(refs(f, "globalOutputRefs"));
        config.insert(
            format!("clusterflow/{}", kube::ResourceExt::name_any(f)),
            refs(f, "globalOutputRefs"),
        );
    }
    let (reject, fail, delay, external) = {
        let b = behaviour.lock().unwrap();
        (
            b.reject_outputs.clone(),
            b.fail_config_with.clone(),
            b.check_delay,
            b.external_outputs.clone(),
        )
    };
    let mut existing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (kind, named) in [("Output", &local), ("ClusterOutput", &global)] {
        let outputs = api(client, Some(ns), kind);
        let listed = outputs.list(&lp).await?.items;
        // A terminating output is still listed, and still rendered.
        existing.insert(kind, listed.iter().map(kube::ResourceExt::name_any).collect());
        for o in listed {
            let name = kube::ResourceExt::name_any(&o);
            let problems: Vec<String> = if reject.contains(&name) {
                vec![format!(
                    "key \"ca.crt\" not found in secret \"missing\" in namespace \"{ns}\""
                )]
            } else {
                vec![]
            };
            let want = json!({
                "active": named.contains(&name),
                "problems": if problems.is_empty() { Value::Null } else { json!(problems) },
                "problemsCount": if problems.is_empty() { Value::Null } else { json!(problems.len()) },
            });
            let have = &o.data["status"];
            let same =
                have["active"] == want["active"] && have.get("problems").unwrap_or(&Value::Null) == &want["problems"];
            if !same {
                count(1);
                match outputs
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": want})))
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // The render: every ref must resolve, or the whole Logging's render fails.
    let missing: Vec<String> = flows
        .iter()
        .flat_map(|f| {
            let name = kube::ResourceExt::name_any(f);
            let local = refs(f, "localOutputRefs")
                .into_iter()
                .map(move |r| ("Output", format!("flow/{name}"), r));
            let name = kube::ResourceExt::name_any(f);
            let global = refs(f, "globalOutputRefs")
                .into_iter()
                .map(move |r| ("ClusterOutput", format!("flow/{name}"), r));
            local.chain(global).collect::<Vec<_>>()
        })
        .chain(cluster_flows.iter().flat_map(|f| {
            let name = kube::ResourceExt::name_any(f);
            refs(f, "globalOutputRefs")
                .into_iter()
                .map(move |r| ("ClusterOutput", format!("clusterflow/{name}"), r))
        }))
        .filter(|(kind, _, r)| !existing[kind].contains(r) && !external.contains(r))
        .map(|(kind, flow, r)| format!("{flow} names {kind} {r}, which does not exist"))
        .collect();
    if !missing.is_empty() {
        renders.lock().unwrap().failures.extend(missing);
        return Ok(());
    }
    // A new configuration is checked once, which takes `delay`; only the current one's result
    // is kept.
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        config.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let loggings = api(client, None, "Logging");
    let current = loggings.get(logging).await?;
    let results = current.data["status"]["configCheckResults"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let done = {
        let mut r = renders.lock().unwrap();
        match &r.checking {
            Some((h, ok, started)) if started.elapsed() >= delay => {
                let done = (h.clone(), *ok);
                r.checking = None;
                Some(done)
            }
            Some(_) => None,
            None if results.contains_key(&hash) => None,
            None => {
                let ok = !config
                    .iter()
                    .any(|(flow, refs)| fail.contains(flow) || refs.iter().any(|r| fail.contains(r)));
                r.checking = Some((hash.clone(), ok, std::time::Instant::now()));
                if delay.is_zero() {
                    r.checking = None;
                    Some((hash.clone(), ok))
                } else {
                    None
                }
            }
        }
    };
    if let Some((checked, ok)) = done {
        let mut pruned: serde_json::Map<String, Value> = results.keys().map(|k| (k.clone(), Value::Null)).collect();
        pruned.insert(checked, json!(ok));
        count(1);
        let patch = json!({"status": {"configCheckResults": pruned}});
        loggings
            .patch_status(logging, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}
