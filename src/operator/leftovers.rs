//! Leftovers of FlowTaps that are gone without their cleanup having run (the finalizer was
//! removed by hand, or the namespace's FlowTaps were force-deleted while log-socket was down):
//! managed outputs and mirror flows whose owning FlowTap no longer exists, and flow refs to
//! tap outputs that no longer exist. The controller removes them when it starts and then every
//! minute, flows first.
//!
//! Objects without the `app.kubernetes.io/managed-by: log-socket` label are never deleted; the
//! only edit to a user's flow is taking out a `logsocket-*` ref naming an output that does not
//! exist and that no FlowTap will create, which logging-operator would reject anyway.

use super::children::{edit_refs, Edit};
use super::{output_name, OperatorConfig};
use crate::k8s::flowtap::OutputKind;
use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, HasStatus, Output};
use crate::Result;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt::Debug;

/// Prefix of every output name log-socket generates.
const PREFIX: &str = "logsocket-";

/// Remove leftovers in the operator's scope; returns how many objects or refs were removed.
pub async fn remove(client: &kube::Client, config: &OperatorConfig) -> Result<usize> {
    let mut removed = 0;
    removed += sweep::<Flow, Output>(client, config, OutputKind::Output, |f| &mut f.spec.local_output_refs).await?;
    removed += sweep::<ClusterFlow, ClusterOutput>(client, config, OutputKind::ClusterOutput, |f| {
        &mut f.spec.global_output_refs
    })
    .await?;
    Ok(removed)
}

/// Whether the controller's watch caches show anything the sweep would remove: an output or
/// mirror whose FlowTap is gone, or a `logsocket-*` ref to an output no FlowTap and no
/// generated output accounts for. Only then is the sweep run (it lists everything, in the order
/// that makes it exact), so an idle cluster costs no request a minute; a cache that lags can
/// only cause a sweep that finds nothing, never a wrong removal.
pub fn suspected(ctx: &super::context::Context) -> bool {
    let taps = ctx.taps.state();
    let known = Known::of(taps.iter().map(|t| &**t));
    let key = |meta: &kube::api::ObjectMeta| {
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    let outputs: HashSet<(String, String)> = ctx
        .outputs
        .state()
        .iter()
        .map(|o| key(&o.metadata))
        .chain(ctx.cluster_outputs.state().iter().map(|o| key(&o.metadata)))
        .collect();
    let orphan_output = ctx.outputs.state().iter().any(|o| known.orphaned(&o.metadata))
        || ctx.cluster_outputs.state().iter().any(|o| known.orphaned(&o.metadata));
    let dangling = |meta: &kube::api::ObjectMeta, refs: Option<&Vec<String>>| {
        known.orphaned(meta)
            || refs.into_iter().flatten().any(|r| {
                let k = (meta.namespace.clone().unwrap_or_default(), r.clone());
                r.starts_with(PREFIX) && !outputs.contains(&k) && !known.outputs.contains(&k)
            })
    };
    orphan_output
        || ctx
            .flows
            .state()
            .iter()
            .any(|f| dangling(&f.metadata, f.spec.local_output_refs.as_ref()))
        || ctx
            .cluster_flows
            .state()
            .iter()
            .any(|f| dangling(&f.metadata, f.spec.global_output_refs.as_ref()))
}

/// The FlowTaps that exist now.
async fn known(client: &kube::Client, config: &OperatorConfig) -> Result<Known> {
    let taps = config.taps(client).list(&ListParams::default()).await?.items;
    Ok(Known::of(taps.iter()))
}

struct Known {
    /// UIDs of existing FlowTaps.
    uids: HashSet<String>,
    /// (namespace, output name) of every existing FlowTap.
    outputs: HashSet<(String, String)>,
}

impl Known {
    fn of<'a>(taps: impl Iterator<Item = &'a crate::k8s::flowtap::FlowTap> + Clone) -> Known {
        Known {
            uids: taps.clone().filter_map(|t| t.uid()).collect(),
            outputs: taps
                .map(|t| (t.namespace().unwrap_or_default(), output_name(t)))
                .collect(),
        }
    }

    /// Managed by log-socket, and its owning FlowTap is gone.
    fn orphaned(&self, meta: &kube::api::ObjectMeta) -> bool {
        super::is_managed(meta) && !super::owning_tap_uids(meta).iter().any(|u| self.uids.contains(*u))
    }
}

/// One flow kind with its output kind: unhook orphaned outputs and dangling tap refs from the
/// flows, delete orphaned mirror flows, then delete the orphaned outputs.
async fn sweep<F, O>(
    client: &kube::Client,
    config: &OperatorConfig,
    kind: OutputKind,
    refs: impl Fn(&mut F) -> &mut Option<Vec<String>> + Copy,
) -> Result<usize>
where
    F: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    F: HasStatus,
    O: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let outputs = config.scoped::<O>(client).list(&ListParams::default()).await?.items;
    let flows = config.scoped::<F>(client).list(&ListParams::default()).await?.items;
    // The FlowTaps last: an output or mirror listed above whose FlowTap was created meanwhile
    // is then known, never taken for a leftover.
    let known = &known(client, config).await?;
    let existing: HashSet<(String, String)> = outputs
        .iter()
        .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    let orphaned: Vec<&O> = outputs.iter().filter(|o| known.orphaned(o.meta())).collect();
    let orphan_names: HashSet<(String, String)> = orphaned
        .iter()
        .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    let mut removed = 0;

    for mut flow in flows {
        let ns = flow.namespace().unwrap_or_default();
        let api = Api::<F>::namespaced(client.clone(), &ns);
        if known.orphaned(flow.meta()) {
            // A mirror flow of a tap that is gone.
            match delete(&api, &flow.name_any()).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(flow = %flow.name_any(), namespace = %ns, error = %e, "could not remove a leftover mirror flow; next sweep")
                }
            }
            continue;
        }
        let stale: Vec<String> = refs(&mut flow)
            .iter()
            .flatten()
            .filter(|r| {
                let key = (ns.clone(), (*r).clone());
                orphan_names.contains(&key)
                    || (r.starts_with(PREFIX) && !existing.contains(&key) && !known.outputs.contains(&key))
            })
            .cloned()
            .collect();
        // Each item on its own: one flow that cannot be edited (a webhook, a flow that keeps
        // changing) must not hold up every other leftover, nor the outputs waiting to go.
        for output in stale {
            let edited = edit_refs(
                api.clone(),
                None,
                &flow.name_any(),
                refs,
                &output,
                Edit::Remove { sure: false },
            )
            .await;
            match edited {
                Ok(Some((true, _))) => {
                    tracing::info!(flow = %flow.name_any(), namespace = %ns, output = %output, "removed a leftover tap ref");
                    removed += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(flow = %flow.name_any(), namespace = %ns, output = %output, error = %e, "could not remove a leftover tap ref; next sweep")
                }
            }
        }
    }
    for output in orphaned {
        let ns = output.namespace().unwrap_or_default();
        let api = Api::<O>::namespaced(client.clone(), &ns);
        let name = output.name_any();
        // Its in-use finalizer goes once a fresh read shows no flow names it.
        let result = match delete(&api, &name).await {
            Ok(()) => super::in_use::release(client, config, kind, &ns, &name).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {
                tracing::info!(output = %name, namespace = %ns, "deleted the output of a FlowTap that is gone");
                removed += 1;
            }
            Ok(false) => {
                tracing::info!(output = %name, namespace = %ns, "the output of a FlowTap that is gone is still named by a flow; next sweep")
            }
            Err(e) => {
                tracing::warn!(output = %name, namespace = %ns, error = %e, "could not delete the output of a FlowTap that is gone; next sweep")
            }
        }
    }
    Ok(removed)
}

async fn delete<K: Resource + Clone + DeserializeOwned + Debug>(api: &Api<K>, name: &str) -> Result<()> {
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
