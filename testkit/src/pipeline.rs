//! logging-operator's fluentd for one flow, played for the tests and the demo with the real
//! fluentd: the flow's outputs are rendered as logging-operator renders them (see render.rs)
//! and fluentd is restarted whenever that configuration changes, as logging-operator's
//! config-reloader makes it reload.
//!
//! Simplified, and said so: one `<source>` (tagged `kubernetes.…`) feeds the flow directly
//! (no `<label @FLOWID>` routing, no flow filters); an output ref that is not an `http` Output (or does not exist)
//! is rendered as a file sink under `DIR/sink/REF`, standing in for the user's real output;
//! a reload is a graceful stop (fluentd flushes what it can) and a start, not an in-process
//! reload; `mountFrom` Secret keys are written to `DIR/secret/NS-SECRET-KEY` as
//! logging-operator mounts them under `/fluentd/secret`.

use crate::fluentd::{self, Fluentd};
use crate::render;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// The flow a pipeline renders: `kind` is `Flow` or `ClusterFlow`.
#[derive(Clone, Debug)]
pub struct FlowId {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

struct State {
    fluentd: Option<Fluentd>,
    config: String,
    reloads: u32,
    /// The last rendering problem, if the newest configuration could not be rendered.
    problem: Option<String>,
}

/// fluentd running the flow's rendered configuration, kept current by a background task.
pub struct Pipeline {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    pub dir: PathBuf,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, &plural))
}

impl Pipeline {
    /// Render `flow` with `source` (fluentd `<source>` sections) into `dir`, start fluentd,
    /// and re-render every `every`. `None` without a fluentd here (see fluentd.rs).
    pub async fn start(
        client: kube::Client,
        dir: &Path,
        flow: FlowId,
        source: String,
        every: Duration,
    ) -> Option<Pipeline> {
        fluentd::command()?;
        std::fs::create_dir_all(dir).unwrap();
        let state = Arc::new(Mutex::new(State {
            fluentd: None,
            config: String::new(),
            reloads: 0,
            problem: None,
        }));
        let (task_state, task_dir) = (state.clone(), dir.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let rendered = render_flow(&client, &task_dir, &flow, &source).await;
                let mut s = task_state.lock().await;
                match rendered {
                    Err(e) => s.problem = Some(e),
                    Ok(config) if config != s.config => {
                        s.problem = None;
                        if let Some(mut old) = s.fluentd.take() {
                            old.stop(Duration::from_secs(20)).await;
                            s.reloads += 1;
                        }
                        s.fluentd = Fluentd::start(&task_dir, &config);
                        s.config = config;
                    }
                    Ok(_) => s.problem = None,
                }
                drop(s);
                tokio::time::sleep(every).await;
            }
        });
        Some(Pipeline {
            state,
            task,
            dir: dir.to_owned(),
        })
    }

    /// The configuration fluentd runs now.
    pub async fn config(&self) -> String {
        self.state.lock().await.config.clone()
    }

    /// How many times fluentd was restarted for a new configuration.
    pub async fn reloads(&self) -> u32 {
        self.state.lock().await.reloads
    }

    /// fluentd's log (every run, appended) and the last rendering problem.
    pub async fn log(&self) -> String {
        let s = self.state.lock().await;
        let log = std::fs::read_to_string(self.dir.join("fluentd.log")).unwrap_or_default();
        match &s.problem {
            Some(p) => format!("{log}\n(rendering: {p})"),
            None => log,
        }
    }

    /// The pid of the running fluentd (its Ruby process).
    pub async fn pid(&self) -> Option<u32> {
        self.state.lock().await.fluentd.as_ref().map(Fluentd::pid)
    }

    /// Whether fluentd runs (it did not exit on its own).
    pub async fn running(&self) -> bool {
        match self.state.lock().await.fluentd.as_mut() {
            Some(f) => f.running(),
            None => false,
        }
    }

    /// The chunk files fluentd backed up (gave up on).
    pub fn backups(&self) -> Vec<PathBuf> {
        fluentd::backups(&self.dir)
    }

    /// Stop re-rendering and stop fluentd gracefully (it flushes what it holds).
    pub async fn stop(&self) {
        self.task.abort();
        if let Some(mut f) = self.state.lock().await.fluentd.take() {
            f.stop(Duration::from_secs(30)).await;
        }
    }

    /// The records the file sink standing in for output ref `name` has written.
    pub fn sink(&self, name: &str) -> Vec<Value> {
        sink_records(&self.dir.join("sink").join(name))
    }
}

/// The records an `out_file` sink wrote under `dir` (JSON lines, any file name).
pub fn sink_records(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// The fluentd configuration logging-operator would run for `flow` now.
pub async fn render_flow(client: &kube::Client, dir: &Path, flow: &FlowId, source: &str) -> Result<String, String> {
    let obj = api(client, &flow.namespace, flow.kind)
        .get(&flow.name)
        .await
        .map_err(|e| format!("{} {}/{}: {e}", flow.kind, flow.namespace, flow.name))?;
    let names = |field: &str| -> Vec<String> {
        obj.data["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let mut refs: Vec<(&str, String)> = vec![];
    if flow.kind == "Flow" {
        refs.extend(names("localOutputRefs").into_iter().map(|n| ("Output", n)));
    }
    // Cluster outputs live in the control namespace; the tests' Logging uses the flow's.
    refs.extend(names("globalOutputRefs").into_iter().map(|n| ("ClusterOutput", n)));

    let mut stores = String::new();
    for (kind, name) in refs {
        let output = api(client, &flow.namespace, kind)
            .get_opt(&name)
            .await
            .map_err(|e| format!("{kind} {name}: {e}"))?;
        let id = format!(
            "{}:{}:{}:{}:{}:{name}",
            flow.kind.to_lowercase(),
            flow.namespace,
            flow.name,
            kind.to_lowercase(),
            flow.namespace
        );
        let body = match output.filter(|o| o.data["spec"]["http"].is_object()) {
            Some(mut o) => {
                // fluentd in the cluster reaches a Service name through cluster DNS.
                if let Some(endpoint) = o.data["spec"]["http"]["endpoint"].as_str() {
                    let resolved = crate::cluster_dns::resolve(client, endpoint).await?;
                    o.data["spec"]["http"]["endpoint"] = resolved.into();
                }
                let secrets = mounted_secrets(client, &flow.namespace, &o.data["spec"]).await?;
                let secret_dir = dir.join("secret");
                std::fs::create_dir_all(&secret_dir).map_err(|e| e.to_string())?;
                let mount = |secret: &str, key: &str| -> String {
                    let path = secret_dir.join(format!("{}-{secret}-{key}", flow.namespace));
                    let bytes = secrets
                        .iter()
                        .find(|(s, k, _)| s == secret && k == key)
                        .map(|(_, _, b)| b.clone())
                        .unwrap_or_default();
                    std::fs::write(&path, bytes).unwrap();
                    path.display().to_string()
                };
                render::http_output_with(&o.data["spec"], &id, &mount)
            }
            None => sink(&dir.join("sink").join(&name), &id),
        };
        stores.push_str(&format!("  <store>\n{}  </store>\n", indent(&body)));
    }
    if stores.is_empty() {
        stores = "  <store>\n    @type null\n  </store>\n".into();
    }
    Ok(format!(
        "{system}{source}\n<match kubernetes.**>\n  @type copy\n{stores}</match>\n{FLUENT_LOG}",
        system = fluentd::system(dir)
    ))
}

/// fluentd's own log events (tag `fluent.*`) go to its log only: logging-operator never routes
/// them into a flow.
const FLUENT_LOG: &str = "<label @FLUENT_LOG>\n  <match fluent.**>\n    @type null\n  </match>\n</label>\n";

/// A file output flushing every second, standing in for a user's real output.
fn sink(path: &Path, id: &str) -> String {
    format!(
        "  @type file\n  @id {id}\n  path {}/records\n  append true\n  <format>\n    @type json\n  </format>\n  \
         <buffer []>\n    @type memory\n    flush_mode interval\n    flush_interval 1s\n  </buffer>\n",
        path.display()
    )
}

fn indent(body: &str) -> String {
    body.lines().map(|l| format!("  {l}\n")).collect()
}

/// The (secret, key, bytes) of every `mountFrom` Secret key an output spec names, read from
/// `ns` (missing keys come back empty, as a missing mount would leave the file absent or empty).
pub async fn mounted_secrets(
    client: &kube::Client,
    ns: &str,
    spec: &Value,
) -> Result<Vec<(String, String, Vec<u8>)>, String> {
    use k8s_openapi::api::core::v1::Secret;
    let mut out = vec![];
    for v in spec["http"].as_object().into_iter().flat_map(|m| m.values()) {
        let r = &v["mountFrom"]["secretKeyRef"];
        let (Some(name), Some(key)) = (r["name"].as_str(), r["key"].as_str()) else {
            continue;
        };
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("Secret {ns}/{name}: {e}"))?;
        let bytes = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(key).map(|b| b.0.clone()))
            .unwrap_or_default();
        out.push((name.to_owned(), key.to_owned(), bytes));
    }
    Ok(out)
}
