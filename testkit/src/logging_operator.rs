//! logging-operator's part, played for the tests, the demo and the bench (no logging-operator
//! runs here), as strict as the real one where log-socket's promises depend on it. For every
//! Logging whose control namespace is the stand-in's (the one it creates, `logging-NS`, and any
//! a test adds, like a second `loggingRef`), each pass (every 200 ms) does what logging-operator's
//! reconcile of that Logging does (see logging_model.rs for the scope and resolution rules):
//!
//! - **render** the whole Logging: every flow of its scope, every ref resolved (ClusterOutputs
//!   by name only). A flow that cannot be rendered fails the whole render, or with
//!   `skipInvalidResources` is dropped; either is recorded ([`LoggingOperator::render_failures`])
//!   so a test asserts it never happened. Each new rendered configuration is also given to the
//!   **real fluentd's `--dry-run`** (when there is one, see fluentd.rs), one at a time, in the
//!   background; a configuration fluentd rejects is a render failure too.
//! - write **status** on the objects of its scope only: `active` (a rendered flow uses it) and
//!   `problems` on Outputs and ClusterOutputs; `active` and `problems` on flows.
//! - **check** each new configuration once (`Logging.status.configCheckResults[<hash>]`,
//!   `false` when it names an output, or is a flow `flow/NAME`, a test marks as failing), keeping
//!   the current configuration's result only (older hashes pruned). A check takes
//!   [`Behaviour::check_delay`]; configurations that change meanwhile wait for the next one. A
//!   Logging whose render failed is not checked (the real one stops before the check).
//!
//! It polls instead of watching: simpler, and what it writes is the same.

use crate::logging_model::{self, Judging, Rendered, Scope, World};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::ResourceExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the stand-in does differently from a happy logging-operator; changeable while it runs.
#[derive(Debug)]
pub struct Behaviour {
    /// Outputs of the user's own pipeline that the tests name in flows without creating them
    /// as objects (`loki`, `archive`): they resolve in the render.
    pub external_outputs: BTreeSet<String>,
    /// Outputs (by name) it reports problems for; a flow naming one cannot be rendered.
    pub reject_outputs: BTreeSet<String>,
    /// A configuration naming any of these outputs, or holding any of these flows (`flow/NAME`,
    /// `clusterflow/NAME`), fails its check.
    pub fail_config_with: BTreeSet<String>,
    /// How long a configuration check takes.
    pub check_delay: Duration,
    /// Run each delayed check in a check pod in the control namespace, as logging-operator
    /// does (its label `app.kubernetes.io/component=fluentd-configcheck`), deleted when the
    /// check ends; with [`CheckPods::Unschedulable`] the pod stays Pending, unschedulable, and
    /// the check never ends (as logging-operator waits for it forever).
    pub check_pods: CheckPods,
    /// Stop writing anything (logging-operator not running).
    pub paused: bool,
    /// Give every new rendered configuration to the real fluentd's `--dry-run` (when there is
    /// one). On by default; a bench turns it off.
    pub dry_run: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            external_outputs: ["loki", "archive"].map(str::to_owned).into(),
            reject_outputs: Default::default(),
            fail_config_with: Default::default(),
            check_delay: Duration::ZERO,
            check_pods: CheckPods::None,
            paused: false,
            dry_run: true,
        }
    }
}

/// Whether checks run in pods (see [`Behaviour::check_pods`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPods {
    None,
    Schedulable,
    Unschedulable,
}

/// A running stand-in; stops when dropped.
pub struct LoggingOperator {
    pub logging: String,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// API requests it has made (a bench takes them out of log-socket's count).
    pub requests: Arc<AtomicU64>,
    renders: Arc<Mutex<Renders>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the renders found, and the checks under way.
#[derive(Default, Debug)]
struct Renders {
    /// Renders that failed or dropped a flow, and configurations fluentd rejected.
    failures: Vec<String>,
    /// Per Logging: the configuration being checked, its verdict, when its check started, and
    /// whether its pod cannot be scheduled (the check then never ends).
    checking: BTreeMap<String, (String, bool, Instant, bool)>,
    /// Rendered configurations given to fluentd `--dry-run` (by hash), and how many are still
    /// under way.
    dry_run: BTreeSet<u64>,
    dry_runs_pending: usize,
    /// Passes finished.
    passes: u64,
    /// New configurations that went to a check: the configuration changes of the Loggings
    /// (each a check pod and a fluentd reload in a real cluster).
    checks: u64,
}

impl LoggingOperator {
    /// How many new configurations of its Loggings were checked so far: the configuration
    /// changes (check pods, fluentd reloads) the Loggings went through.
    pub fn config_changes(&self) -> u64 {
        self.renders.lock().unwrap().checks
    }

    /// Whether a configuration check is under way.
    pub fn checking(&self) -> bool {
        !self.renders.lock().unwrap().checking.is_empty()
    }

    /// Every render that failed so far (a flow that could not be rendered, a configuration
    /// fluentd rejected), with why.
    pub fn render_failures(&self) -> Vec<String> {
        self.renders.lock().unwrap().failures.clone()
    }

    /// [`LoggingOperator::render_failures`], once the fluentd dry runs of what was rendered so
    /// far have finished.
    /// A pass that started after this call rendered what the test left, and the dry runs
    /// before it finished.
    pub async fn render_failures_settled(&self) -> Vec<String> {
        let from = self.renders.lock().unwrap().passes;
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let settled = {
                let r = self.renders.lock().unwrap();
                r.passes >= from + 2 && r.dry_runs_pending == 0
            };
            if settled || Instant::now() > until || self.behaviour.lock().unwrap().paused {
                return self.render_failures();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
/// playing logging-operator for it and every other Logging with control namespace `ns`.
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
    let requests = Arc::new(AtomicU64::new(0));
    let renders = Arc::new(Mutex::new(Renders::default()));
    let stand_in = StandIn {
        client: client.clone(),
        ns: ns.to_owned(),
        behaviour: behaviour.clone(),
        requests: requests.clone(),
        renders: renders.clone(),
        dir: crate::cluster::target_tmpdir().join(format!("logging-operator-{ns}")),
    };
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stand_in.behaviour.lock().unwrap().paused {
                continue;
            }
            if let Err(e) = stand_in.pass().await {
                eprintln!("logging-operator stand-in for {}: {e}", stand_in.ns);
            }
        }
    });
    LoggingOperator {
        logging: name,
        behaviour,
        requests,
        renders,
        task,
    }
}

struct StandIn {
    client: kube::Client,
    ns: String,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicU64>,
    renders: Arc<Mutex<Renders>>,
    dir: PathBuf,
}

/// One fluentd `--dry-run` at a time in the whole test binary: a run costs a Ruby start.
static DRY_RUNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

impl StandIn {
    fn count(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    async fn list(&self, kind: &str, namespaces: Option<&[String]>) -> Result<Vec<DynamicObject>, kube::Error> {
        let lp = ListParams::default();
        match namespaces {
            None => {
                self.count(1);
                Ok(api(&self.client, None, kind).list(&lp).await?.items)
            }
            Some(namespaces) => {
                let mut all = vec![];
                for ns in namespaces {
                    self.count(1);
                    all.extend(api(&self.client, Some(ns), kind).list(&lp).await?.items);
                }
                Ok(all)
            }
        }
    }

    async fn pass(&self) -> Result<(), kube::Error> {
        let loggings: Vec<DynamicObject> = self
            .list("Logging", None)
            .await?
            .into_iter()
            .filter(|l| l.data["spec"]["controlNamespace"].as_str() == Some(self.ns.as_str()))
            .collect();
        for logging in &loggings {
            self.reconcile(logging).await?;
        }
        self.renders.lock().unwrap().passes += 1;
        Ok(())
    }

    /// What logging-operator's reconcile of `logging` does.
    async fn reconcile(&self, logging: &DynamicObject) -> Result<(), kube::Error> {
        let scope = Scope::of(logging);
        let cluster_namespaces = vec![scope.control_namespace.clone()];
        let cluster_ns = (!scope.all_namespaces).then_some(cluster_namespaces.as_slice());
        let watched = Some(scope.watch_namespaces.as_slice());
        let mine = |kind: &str, all: Vec<DynamicObject>| -> Vec<DynamicObject> {
            all.into_iter().filter(|o| scope.owns(kind, o)).collect()
        };
        let world = World {
            flows: mine("Flow", self.list("Flow", watched).await?),
            cluster_flows: mine("ClusterFlow", self.list("ClusterFlow", cluster_ns).await?),
            outputs: mine("Output", self.list("Output", watched).await?),
            cluster_outputs: mine("ClusterOutput", self.list("ClusterOutput", cluster_ns).await?),
        };
        let (judging, fail, delay, dry_run) = {
            let b = self.behaviour.lock().unwrap();
            let judging = Judging {
                external: b.external_outputs.clone(),
                reject: b.reject_outputs.clone(),
            };
            (judging, b.fail_config_with.clone(), b.check_delay, b.dry_run)
        };
        let pods = self.behaviour.lock().unwrap().check_pods;
        // logging-operator copies the Secret keys outputs mount to /fluentd/secret/NS-SECRET-KEY;
        // the files are written for a dry run (below), the render needs their paths.
        let secrets = self.dir.join("secret");
        let mount = |ns: &str, secret: &str, key: &str| -> String {
            secrets.join(format!("{ns}-{secret}-{key}")).display().to_string()
        };
        let rendered = logging_model::render(&scope, &world, &judging, &mount);
        self.write_statuses(&world, &rendered, &judging).await?;
        let failures = rendered.failures();
        if !failures.is_empty() {
            let what = if scope.skip_invalid {
                "dropped (skipInvalidResources)"
            } else {
                "failed the render of the whole Logging"
            };
            let mut renders = self.renders.lock().unwrap();
            renders.failures.extend(
                failures
                    .iter()
                    .map(|f| format!("Logging {}: {f}: {what}", scope.logging)),
            );
        }
        let (Some(config), Some(fluentd)) = (&rendered.config, &rendered.fluentd) else {
            return Ok(());
        };
        if dry_run {
            self.dry_run(&scope.logging, fluentd, &world).await?;
        }
        self.check(logging, config, &fail, delay, pods).await
    }

    /// `active` and `problems` on every object of the scope, written when they change.
    async fn write_statuses(&self, world: &World, rendered: &Rendered, judging: &Judging) -> Result<(), kube::Error> {
        let outputs = world
            .outputs
            .iter()
            .map(|o| ("Output", o))
            .chain(world.cluster_outputs.iter().map(|o| ("ClusterOutput", o)));
        for (kind, o) in outputs {
            let ns = o.namespace().unwrap_or_default();
            let name = o.name_any();
            let problems: Vec<String> = if judging.reject.contains(&name) {
                vec![format!(
                    "key \"ca.crt\" not found in secret \"missing\" in namespace \"{ns}\""
                )]
            } else {
                vec![]
            };
            let active = rendered.active.contains(&(kind.to_owned(), ns.clone(), name.clone()));
            self.set_status(kind, o, active, &problems).await?;
        }
        let flows = world
            .flows
            .iter()
            .map(|f| ("Flow", "flow", f))
            .chain(world.cluster_flows.iter().map(|f| ("ClusterFlow", "clusterflow", f)));
        for (kind, prefix, f) in flows {
            let id = format!("{prefix}/{}/{}", f.namespace().unwrap_or_default(), f.name_any());
            let problems = rendered.problems.get(&id).cloned().unwrap_or_default();
            self.set_status(kind, f, problems.is_empty(), &problems).await?;
        }
        Ok(())
    }

    async fn set_status(
        &self,
        kind: &str,
        obj: &DynamicObject,
        active: bool,
        problems: &[String],
    ) -> Result<(), kube::Error> {
        let want = json!({
            "active": active,
            "problems": if problems.is_empty() { Value::Null } else { json!(problems) },
            "problemsCount": if problems.is_empty() { Value::Null } else { json!(problems.len()) },
        });
        let have = &obj.data["status"];
        if have["active"] == want["active"] && have.get("problems").unwrap_or(&Value::Null) == &want["problems"] {
            return Ok(());
        }
        self.count(1);
        let ns = obj.namespace().unwrap_or_default();
        match api(&self.client, Some(&ns), kind)
            .patch_status(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": want})),
            )
            .await
        {
            // Gone or changed meanwhile: the next pass writes it.
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Give `fluentd` (a rendered configuration of `logging`) to the real fluentd's `--dry-run`
    /// in the background, once per distinct configuration; a rejection is a render failure.
    async fn dry_run(&self, logging: &str, fluentd: &str, world: &World) -> Result<(), kube::Error> {
        if crate::fluentd::command().is_none() {
            return Ok(());
        }
        let config = format!("{}{fluentd}", crate::fluentd::system(&self.dir));
        let key = logging_model::hash(&config);
        if self.renders.lock().unwrap().dry_run.contains(&key) {
            return Ok(());
        }
        // The Secret keys the outputs mount, as files (fluentd refuses a TLS path to a file
        // that is not there): read for each new configuration only.
        let secrets = self.dir.join("secret");
        std::fs::create_dir_all(&secrets).unwrap();
        for o in world.outputs.iter().chain(&world.cluster_outputs) {
            let ns = o.namespace().unwrap_or_default();
            let mounted = crate::pipeline::mounted_secrets(&self.client, &ns, &o.data["spec"])
                .await
                .map_err(|e| kube::Error::Service(e.into()))?;
            for (secret, key, bytes) in mounted.into_iter().filter(|m| !m.2.is_empty()) {
                self.count(1);
                std::fs::write(secrets.join(format!("{ns}-{secret}-{key}")), bytes).unwrap();
            }
        }
        {
            let mut renders = self.renders.lock().unwrap();
            if !renders.dry_run.insert(key) {
                return Ok(());
            }
            renders.dry_runs_pending += 1;
        }
        let (renders, dir, logging) = (
            self.renders.clone(),
            self.dir.join(format!("{key:016x}")),
            logging.to_owned(),
        );
        tokio::spawn(async move {
            let _one = DRY_RUNS.acquire().await.unwrap();
            let outcome = tokio::task::spawn_blocking(move || {
                let outcome = crate::fluentd::Fluentd::dry_run(&dir, &config);
                let _ = std::fs::remove_dir_all(&dir);
                (outcome, config)
            })
            .await;
            let mut renders = renders.lock().unwrap();
            renders.dry_runs_pending -= 1;
            match outcome {
                Ok((Some(Err(output)), config)) => renders.failures.push(format!(
                    "Logging {logging}: fluentd --dry-run rejected the rendered configuration:\n{config}\n{output}"
                )),
                Ok(_) => {}
                Err(e) => renders
                    .failures
                    .push(format!("Logging {logging}: fluentd --dry-run: {e}")),
            }
        });
        Ok(())
    }

    /// A new configuration is checked once, which takes `delay`; only the current one's result
    /// is kept.
    async fn check(
        &self,
        logging: &DynamicObject,
        config: &BTreeMap<String, Vec<String>>,
        fail: &BTreeSet<String>,
        delay: Duration,
        pods: CheckPods,
    ) -> Result<(), kube::Error> {
        let name = logging.name_any();
        let hash = format!("{:016x}", logging_model::hash(config));
        let results = logging.data["status"]["configCheckResults"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut started_now = false;
        let done = {
            let mut r = self.renders.lock().unwrap();
            match r.checking.get(&name) {
                Some((h, ok, started, stuck)) if started.elapsed() >= delay && !stuck => {
                    let done = (h.clone(), *ok);
                    r.checking.remove(&name);
                    Some(done)
                }
                Some(_) => None,
                None if results.contains_key(&hash) => None,
                None => {
                    r.checks += 1;
                    // The tests' flow names: `flow/NAME` for a Flow of any namespace.
                    let ok = !config.iter().any(|(flow, outputs)| {
                        let short = short_flow_name(flow);
                        fail.contains(&short)
                            || outputs
                                .iter()
                                .any(|o| fail.contains(o.rsplit('/').next().unwrap_or_default()))
                    });
                    if delay.is_zero() {
                        Some((hash.clone(), ok))
                    } else {
                        let stuck = pods == CheckPods::Unschedulable;
                        r.checking
                            .insert(name.clone(), (hash.clone(), ok, Instant::now(), stuck));
                        started_now = true;
                        None
                    }
                }
            }
        };
        let check_pod = |hash: &str| format!("{name}-fluentd-configcheck-{}", &hash[..8]);
        if started_now && pods != CheckPods::None {
            self.start_check_pod(&check_pod(&hash), pods).await?;
        }
        if let Some((checked, ok)) = done {
            if pods != CheckPods::None {
                let deleted = pod_api(&self.client, &self.ns)
                    .delete(&check_pod(&checked), &Default::default())
                    .await;
                if let Err(e) = deleted {
                    if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                        return Err(e);
                    }
                }
            }
            let mut pruned: serde_json::Map<String, Value> = results.keys().map(|k| (k.clone(), Value::Null)).collect();
            pruned.insert(checked, json!(ok));
            self.count(1);
            let patch = json!({"status": {"configCheckResults": pruned}});
            api(&self.client, None, "Logging")
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(())
    }
}

fn pod_api(client: &kube::Client, ns: &str) -> Api<k8s_openapi::api::core::v1::Pod> {
    Api::namespaced(client.clone(), ns)
}

impl StandIn {
    /// A check pod as logging-operator makes one: Pending, then Running, or left unschedulable.
    async fn start_check_pod(&self, name: &str, pods: CheckPods) -> Result<(), kube::Error> {
        let api = pod_api(&self.client, &self.ns);
        let sa: k8s_openapi::api::core::v1::ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("a ServiceAccount");
        let _ = Api::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &sa)
            .await;
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "fluentd-configcheck"}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                "containers": [{"name": "fluentd", "image": "fluentd", "args": ["--dry-run"]}]}
        }))
        .expect("a Pod");
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        let status = match pods {
            CheckPods::Unschedulable => json!({"status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."}]}}),
            _ => json!({"status": {"phase": "Running"}}),
        };
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map(|_| ())
    }
}

/// `flow/NS/NAME` → `flow/NAME` (how tests name a flow in [`Behaviour::fail_config_with`]).
fn short_flow_name(id: &str) -> String {
    let mut parts = id.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(_), Some(name)) => format!("{kind}/{name}"),
        _ => id.to_owned(),
    }
}
