//! The "in use" finalizer of generated outputs: an Output or ClusterOutput log-socket created
//! carries [`IN_USE`], and it is removed only after a fresh read shows that no flow names it.
//!
//! Why: a flow naming a missing output stops logging-operator's render of the whole Logging.
//! The operator deletes outputs only after restoring the flow, but a DELETE can still land late
//! (a deposed leader's request, hung on a dead connection, arriving after the new leader named
//! the output again), a watch cache can lag, a user can `kubectl delete output`, and a namespace
//! being deleted removes flows and outputs in any order. With the finalizer, each of those only
//! marks the output for deletion: it stays (logging-operator still renders it) until nothing
//! names it, and a pass that finds its output going restores the flow first and then lets it go.
//!
//! The cost: an output whose FlowTap cleanup never runs (log-socket uninstalled first) stays
//! `Terminating`; docs/operator.md says to delete FlowTaps before uninstalling.

use super::OperatorConfig;
use crate::k8s::flowtap::OutputKind;
use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, Output};
use crate::Result;
use kube::api::{Api, ListParams, PostParams};
use kube::Resource;

/// The finalizer on every generated output.
pub const IN_USE: &str = "logsocket.dev/in-use";

/// Put the finalizer on `meta` (an output about to be created or adopted); true if it was not
/// there.
pub fn hold(meta: &mut kube::api::ObjectMeta) -> bool {
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if finalizers.iter().any(|f| f == IN_USE) {
        return false;
    }
    finalizers.push(IN_USE.to_owned());
    true
}

/// Whether a flow, read now from the API server (not a cache), names output `name` of `kind`
/// in namespace `ns`: a Flow of `ns` in its `localOutputRefs` for an Output; any ClusterFlow
/// in the operator's scope in its `globalOutputRefs` for a ClusterOutput (logging-operator
/// resolves those by name across namespaces). Not Flows' `globalOutputRefs`: generated
/// ClusterOutputs are `protected`, logging-operator refuses such refs, and counting them would
/// let any tenant's Flow pin a tap's ClusterOutput.
pub async fn named(
    client: &kube::Client,
    config: &OperatorConfig,
    kind: OutputKind,
    ns: &str,
    name: &str,
) -> Result<bool> {
    let has = |refs: &Option<Vec<String>>| refs.as_ref().is_some_and(|r| r.iter().any(|o| o == name));
    Ok(match kind {
        OutputKind::Output => {
            let flows = Api::<Flow>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await?;
            flows.items.iter().any(|f| has(&f.spec.local_output_refs))
        }
        OutputKind::ClusterOutput => {
            let cluster_flows = config
                .scoped::<ClusterFlow>(client)
                .list(&ListParams::default())
                .await?;
            cluster_flows.items.iter().any(|f| has(&f.spec.global_output_refs))
        }
    })
}

/// Let output `name` go if it is being deleted and nothing names it: its [`IN_USE`] finalizer
/// removed (needs `list` on flows and clusterflows, `update` on the output), guarded by the
/// resourceVersion read (a change in between makes it a conflict, and
/// the next pass looks again). Returns whether it was let go.
pub async fn release(
    client: &kube::Client,
    config: &OperatorConfig,
    kind: OutputKind,
    ns: &str,
    name: &str,
) -> Result<bool> {
    let at = (client, config, kind, ns, name);
    match kind {
        OutputKind::Output => release_of::<Output>(Api::namespaced(client.clone(), ns), at).await,
        OutputKind::ClusterOutput => release_of::<ClusterOutput>(Api::namespaced(client.clone(), ns), at).await,
    }
}

async fn release_of<K>(
    api: Api<K>,
    (client, config, kind, ns, name): (&kube::Client, &OperatorConfig, OutputKind, &str, &str),
) -> Result<bool>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(output) = api.get_opt(name).await? else {
        return Ok(true);
    };
    let meta = output.meta();
    let holds = meta.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == IN_USE));
    if meta.deletion_timestamp.is_none() || !holds {
        return Ok(!holds);
    }
    if named(client, config, kind, ns, name).await? {
        tracing::info!(output = %name, namespace = %ns, "output being deleted is still named by a flow; kept until it is not");
        return Ok(false);
    }
    // A replace (the `update` verb log-socket already has), guarded by the resourceVersion read.
    let mut output = output.clone();
    if let Some(finalizers) = output.meta_mut().finalizers.as_mut() {
        finalizers.retain(|f| f != IN_USE);
    }
    match api.replace(name, &PostParams::default(), &output).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        // Changed since read: the next pass looks again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
