//! `log-socket remove-taps`: delete every FlowTap and wait until the running controller has
//! cleaned each up (flow restored first, then its output, then the finalizer). Run before
//! log-socket itself goes (the chart's pre-delete hook does): uninstalling first would leave the
//! FlowTaps' finalizers with nobody to run them, and the outputs' in-use finalizers holding
//! namespaces in Terminating.

use crate::k8s::flowtap::FlowTap;
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;
use std::time::{Duration, Instant};

/// Delete the FlowTaps of `namespace` (all namespaces when `None`) and wait up to `timeout` for
/// them to be gone. `Err` names the ones left and what holds them.
pub async fn remove_taps(client: kube::Client, namespace: Option<&str>, timeout: Duration) -> Result<usize, String> {
    let api: Api<FlowTap> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("cannot list FlowTaps: {e}"))?;
    let count = list.items.len();
    for tap in &list.items {
        let ns = tap.namespace().unwrap_or_default();
        let one: Api<FlowTap> = Api::namespaced(client.clone(), &ns);
        match one.delete(&tap.name_any(), &DeleteParams::default()).await {
            Ok(_) => eprintln!("deleting FlowTap {ns}/{}", tap.name_any()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("cannot delete FlowTap {ns}/{}: {e}", tap.name_any())),
        }
    }
    let until = Instant::now() + timeout;
    loop {
        let left = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("cannot list FlowTaps: {e}"))?
            .items;
        if left.is_empty() {
            return Ok(count);
        }
        if Instant::now() >= until {
            let names: Vec<String> = left
                .iter()
                .map(|t| {
                    let phase = t
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .map_or("-".into(), |p| format!("{p:?}"));
                    format!("{}/{} ({phase})", t.namespace().unwrap_or_default(), t.name_any())
                })
                .collect();
            return Err(format!(
                "{} FlowTaps are still there after {}s: {}. Their cleanup (flow restored, output removed) needs log-socket's controller running: keep log-socket installed until they are gone (kubectl describe flowtap shows why one waits)",
                left.len(),
                timeout.as_secs(),
                names.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
