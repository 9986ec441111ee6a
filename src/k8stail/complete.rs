//! Dynamic shell completion (clap's `COMPLETE=SHELL` protocol): flows, ClusterFlows and
//! namespaces from the cluster, contexts from the kubeconfig. `k8stail completions SHELL`
//! prints the script that hooks k8stail into the shell; the shell then asks k8stail itself,
//! at each Tab, with the words typed so far.
//!
//! Asking the cluster takes the same kubeconfig, context and namespace the command line being
//! completed names; anything that fails (no cluster, no permission, a slow API server) just
//! offers fewer candidates: completion never prints an error into the command line.

use clap_complete::engine::CompletionCandidate;
use clap_complete::env::EnvCompleter;
use std::ffi::OsStr;
use std::io::Write;
use std::time::Duration;

/// Longest wait for the API server at one Tab press.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Print the registration script for `shell`.
pub fn script(shell: clap_complete::Shell, out: &mut dyn Write) -> crate::Result<()> {
    use clap_complete::env;
    let completer: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &env::Bash,
        clap_complete::Shell::Zsh => &env::Zsh,
        clap_complete::Shell::Fish => &env::Fish,
        clap_complete::Shell::Elvish => &env::Elvish,
        clap_complete::Shell::PowerShell => &env::Powershell,
        other => {
            return Err(crate::Error::Usage(format!("no completion for {other}")));
        }
    };
    // The program the shell runs at each Tab: this one, by name when found on PATH that way.
    let arg0 = std::env::args_os().next().unwrap_or_else(|| "k8stail".into());
    let program = std::path::Path::new(&arg0);
    let completer_path = if program.components().count() > 1 {
        std::env::current_exe().unwrap_or_else(|_| program.to_owned())
    } else {
        program.to_owned()
    };
    let bin = program.file_name().and_then(OsStr::to_str).unwrap_or("k8stail");
    completer
        .write_registration("COMPLETE", "k8stail", bin, &completer_path.to_string_lossy(), out)
        .map_err(crate::Error::Output)
}

/// Answer a completion request (`COMPLETE` set) and exit; returns when there is none. Runs
/// before any async runtime exists: the completers start their own.
pub fn handle_request() {
    clap_complete::CompleteEnv::with_factory(<super::Cli as clap::CommandFactory>::command).complete();
}

/// What the command line being completed says about the cluster: `--kubeconfig`,
/// `--context`, `-n`.
#[derive(Default, Debug)]
struct Typed {
    kubeconfig: Option<String>,
    context: Option<String>,
    namespace: Option<String>,
}

fn typed() -> Typed {
    let mut words: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    // The word being completed says nothing yet (`-n <Tab>` is not namespace "").
    let current = std::env::var("_CLAP_COMPLETE_INDEX")
        .ok()
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(words.len().saturating_sub(1));
    words.truncate(current);
    let mut t = Typed::default();
    let mut it = words.iter().peekable();
    while let Some(w) = it.next() {
        let (flag, value) = match w.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (w.as_str(), None),
        };
        let slot = match flag {
            "--kubeconfig" => &mut t.kubeconfig,
            "--context" => &mut t.context,
            "-n" | "--namespace" => &mut t.namespace,
            _ => continue,
        };
        *slot = value.or_else(|| it.next().cloned()).filter(|v| !v.is_empty());
    }
    t.kubeconfig = t.kubeconfig.or_else(|| std::env::var("K8STAIL_KUBECONFIG").ok());
    t.context = t.context.or_else(|| std::env::var("K8STAIL_CONTEXT").ok());
    t.namespace = t.namespace.or_else(|| std::env::var("K8STAIL_NAMESPACE").ok());
    t
}

/// Run `f` with a client for the typed context and its namespace, on a runtime of its own,
/// within [`TIMEOUT`]; `None` on any failure.
fn with_cluster<T, F, Fut>(f: F) -> Option<T>
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let typed = typed();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async move {
        tokio::time::timeout(TIMEOUT, async move {
            let kubeconfig = typed.kubeconfig.as_deref().map(std::path::Path::new);
            let config = crate::k8s::client::config(kubeconfig, typed.context.as_deref())
                .await
                .ok()?;
            let namespace = typed
                .namespace
                .clone()
                .unwrap_or_else(|| config.default_namespace.clone());
            let client = kube::Client::try_from(config).ok()?;
            f(client, namespace).await
        })
        .await
        .ok()
        .flatten()
    })
}

/// Names of `kind` ("Flow" or "ClusterFlow") as (namespace, name): every namespace when
/// allowed, else `namespace` only.
async fn flows(client: &kube::Client, kind: &str, namespace: &str) -> Vec<(String, String)> {
    use kube::api::{Api, DynamicObject, ListParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", kind));
    let names = |list: kube::core::ObjectList<kube::core::PartialObjectMeta<DynamicObject>>| {
        list.items
            .into_iter()
            .filter_map(|o| Some((o.metadata.namespace?, o.metadata.name?)))
            .collect::<Vec<_>>()
    };
    let params = ListParams::default().limit(500);
    match Api::<DynamicObject>::all_with(client.clone(), &resource)
        .list_metadata(&params)
        .await
    {
        Ok(list) => names(list),
        Err(_) => Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
            .list_metadata(&params)
            .await
            .map(names)
            .unwrap_or_default(),
    }
}

async fn namespaces(client: &kube::Client, fallback: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ListParams};
    match Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().limit(500))
        .await
    {
        Ok(list) => list.items.into_iter().filter_map(|n| n.metadata.name).collect(),
        Err(_) => vec![fallback.to_owned()],
    }
}

fn candidates(current: &OsStr, values: impl IntoIterator<Item = (String, Option<String>)>) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    let mut values: Vec<(String, Option<String>)> =
        values.into_iter().filter(|(v, _)| v.starts_with(&*current)).collect();
    values.sort();
    values.dedup_by(|a, b| a.0 == b.0);
    values
        .into_iter()
        .map(|(v, help)| {
            let c = CompletionCandidate::new(v);
            match help {
                Some(h) => c.help(Some(h.into())),
                None => c,
            }
        })
        .collect()
}

/// A FLOW argument: bare names of the namespace's Flows, `NS/NAME` of every Flow,
/// `clusterflow/NS/NAME` of every ClusterFlow (the prefix typed picks which).
pub fn complete_flow(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed_text = current.to_string_lossy().into_owned();
    let values = with_cluster(|client, namespace| async move {
        let mut out: Vec<(String, Option<String>)> = vec![];
        let lower = typed_text.to_ascii_lowercase();
        if lower.starts_with("clusterflow") {
            for (ns, name) in flows(&client, "ClusterFlow", &namespace).await {
                out.push((format!("clusterflow/{ns}/{name}"), Some("ClusterFlow".into())));
                if ns == namespace {
                    out.push((format!("clusterflow/{name}"), Some(format!("ClusterFlow in {ns}"))));
                }
            }
            return Some(out);
        }
        for (ns, name) in flows(&client, "Flow", &namespace).await {
            if ns == namespace {
                out.push((name.clone(), Some(format!("Flow in {ns}"))));
                out.push((format!("flow/{name}"), Some(format!("Flow in {ns}"))));
            }
            out.push((format!("{ns}/{name}"), Some("Flow".into())));
            out.push((format!("flow/{ns}/{name}"), Some("Flow".into())));
        }
        if !typed_text.contains('/') {
            out.push(("clusterflow/".into(), Some("a ClusterFlow".into())));
        }
        Some(out)
    })
    .unwrap_or_default();
    candidates(current, values)
}

pub fn complete_namespace(current: &OsStr) -> Vec<CompletionCandidate> {
    let values = with_cluster(|client, namespace| async move { Some(namespaces(&client, &namespace).await) })
        .unwrap_or_default();
    candidates(current, values.into_iter().map(|n| (n, None)))
}

/// Contexts of the kubeconfig (no cluster asked).
pub fn complete_context(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = typed();
    let kubeconfig = match typed.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path).ok(),
        None => kube::config::Kubeconfig::read().ok(),
    };
    let contexts = kubeconfig.map(|k| k.contexts).unwrap_or_default();
    candidates(current, contexts.into_iter().map(|c| (c.name, None)))
}
