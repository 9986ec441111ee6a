//! The objects a FlowTap owns and the edits it makes: the generated `Output`/`ClusterOutput`,
//! the ref appended to the flow (Patch mode) or the mirror flow (Mirror mode).
//!
//! Order matters for logging-operator: the output exists before any flow names it, and the
//! flow is restored before the output is deleted (a flow naming a missing output stops the
//! render of the whole Logging). Flow output lists are atomic: each edit is a full replace
//! guarded by resourceVersion. Nothing here touches an object log-socket did not create.

use super::context::{publish, Context};
use super::output_spec::desired_output_spec;
use super::status::FlowState;
use super::{output_name, output_name_of, MANAGED_BY};
use crate::k8s::flowtap::{FlowKind, FlowRef, FlowTap, OutputKind, PatchedFlow, TapMode};
use crate::k8s::logging::{
    ClusterFlow, ClusterOutput, ClusterOutputSpec, Flow, HasStatus, LoggingStatus, Output, OutputSpec,
};
use crate::{Error, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::time::Duration;

/// Mark `meta` as generated for `tap`: the managed-by label and the tap's UID annotation, and
/// no ownerReferences (see [`super::TAP_UID`]). Returns whether anything changed.
fn mark(meta: &mut kube::api::ObjectMeta, tap: &FlowTap) -> bool {
    let before = (
        meta.labels.clone(),
        meta.annotations.clone(),
        meta.owner_references.clone(),
    );
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(super::TAP_UID.to_owned(), tap.uid().unwrap_or_default());
    meta.owner_references = None;
    before
        != (
            meta.labels.clone(),
            meta.annotations.clone(),
            meta.owner_references.clone(),
        )
}

fn is_ours(meta: &kube::api::ObjectMeta, tap: &FlowTap) -> bool {
    super::is_managed(meta)
        && tap
            .uid()
            .is_some_and(|uid| super::owning_tap_uids(meta).contains(&uid.as_str()))
}

/// Whether the FlowTaps `meta` was generated for are all gone (by the controller's cache, which
/// holds every FlowTap in scope).
fn left_behind(meta: &kube::api::ObjectMeta, ctx: &Context) -> bool {
    let live: std::collections::HashSet<String> = ctx.taps.state().iter().filter_map(|t| t.uid()).collect();
    let owners = super::owning_tap_uids(meta);
    !owners.is_empty() && owners.iter().all(|uid| !live.contains(*uid))
}

/// What [`ensure_output`] and [`super::mirror::ensure_mirror`] found.
pub(super) struct Ensured {
    /// An object of that name exists and is not log-socket's: left alone.
    pub taken: bool,
    /// It is ours and being deleted (held by its in-use finalizer until no flow names it).
    pub going: bool,
    /// It existed before this reconcile.
    pub existed: bool,
    /// Its status, as logging-operator last wrote it.
    pub status: Option<LoggingStatus>,
    pub created: Option<Time>,
    /// Its spec was not what the tap wants and was written now (an upgrade, a changed flag or
    /// loggingRef). `status` judged the old spec: logging-operator's statuses carry no
    /// generation, so only a new configuration check tells whether the new one renders.
    pub rewritten: bool,
}

pub(super) async fn ensure_output(
    tap: &FlowTap,
    name: &str,
    ctx: &Context,
    logging_ref: Option<&str>,
) -> Result<Ensured> {
    let ns = tap.namespace().unwrap_or_default();
    let output: OutputSpec =
        serde_json::from_value(desired_output_spec(tap, &ctx.config, logging_ref)).expect("a valid output spec");
    let repaired = ("OutputRepaired", format!("{name} was changed and was restored"));
    match tap.spec.flow_ref.kind.output_kind() {
        OutputKind::Output => {
            let mut obj = Output::new(name, output);
            let api = Api::namespaced(ctx.client.clone(), &ns);
            let cached = cached(&ctx.outputs, &ns, name);
            ensure_managed(api, cached, &mut obj, tap, ctx, |o| &mut o.spec, repaired).await
        }
        OutputKind::ClusterOutput => {
            // Protected: no tenant's Flow may name it (records injected into the tap's stream
            // under log-socket's credential, and a ref left dangling when the tap ends).
            let spec = ClusterOutputSpec {
                protected: Some(true),
                output,
            };
            let mut obj = ClusterOutput::new(name, spec);
            let api = Api::namespaced(ctx.client.clone(), &ns);
            let cached = cached(&ctx.cluster_outputs, &ns, name);
            ensure_managed(api, cached, &mut obj, tap, ctx, |o| &mut o.spec, repaired).await
        }
    }
}

/// `name` in `ns` from a watch cache.
pub(super) fn cached<K>(store: &Store<K>, ns: &str, name: &str) -> Option<K>
where
    K: Resource + Clone,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store.get(&ObjectRef::new(name).within(ns)).map(|o| (*o).clone())
}

/// `name` in `ns` from a watch cache, else (not there, or not yet) from the API server;
/// `None` when it does not exist.
pub(super) async fn cached_or_read<K>(store: &Store<K>, api: &Api<K>, ns: &str, name: &str) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    match cached(store, ns, name) {
        Some(obj) => Ok(Some(obj)),
        None => Ok(api.get_opt(name).await?),
    }
}

/// Create `desired` if missing; repair its spec if someone changed it (a repaired object's
/// old status no longer applies); refuse to touch an object of that name log-socket does not
/// own. `cached` is the watch cache's copy: without one the object is created right away (a
/// conflict reads it from the API server), with one the object is only written when its spec
/// must be repaired (a stale copy makes that a conflict, and it is read again).
pub(super) async fn ensure_managed<K, S>(
    api: Api<K>,
    cached: Option<K>,
    desired: &mut K,
    tap: &FlowTap,
    ctx: &Context,
    spec: impl Fn(&mut K) -> &mut S,
    (reason, note): (&str, String),
) -> Result<Ensured>
where
    K: Resource + HasStatus + Clone + Serialize + DeserializeOwned + Debug,
    K::DynamicType: Default,
    S: Serialize + Clone + PartialEq,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    mark(desired.meta_mut(), tap);
    // Outputs are held while a flow names them (see super::in_use); mirror flows are not.
    let in_use = matches!(K::kind(&Default::default()).as_ref(), "Output" | "ClusterOutput");
    if in_use {
        super::in_use::hold(desired.meta_mut());
    }
    let mut found = cached;
    let mut read_fresh = false;
    for attempt in 0..5 {
        let mut existing = match found.take() {
            Some(existing) => existing,
            None => match api.create(&PostParams::default(), desired).await {
                Ok(created) => {
                    let kind = K::kind(&Default::default()).to_string();
                    tracing::info!(tap = %tap.name_any(), kind = %kind, name = %name, "created");
                    if tap.spec.persistent {
                        let note = format!("created {kind} {name}");
                        publish(ctx, tap, EventType::Normal, "Created", &note).await;
                    }
                    return Ok(Ensured {
                        taken: false,
                        going: false,
                        existed: false,
                        status: None,
                        created: created.meta().creation_timestamp.clone(),
                        rewritten: false,
                    });
                }
                Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
                    Some(existing) => existing,
                    // Deleted in between: create it again.
                    None => continue,
                },
                Err(e) => return Err(e.into()),
            },
        };
        if !is_ours(existing.meta(), tap) {
            // A watch cache's copy may be of an object gone since: ask before calling it taken.
            if !read_fresh {
                read_fresh = true;
                match api.get_opt(&name).await? {
                    Some(fresh) => found = Some(fresh),
                    None => found = None,
                }
                continue;
            }
            // log-socket's, for a FlowTap that no longer exists (one deleted and created again
            // under the same name): adopted, or let go first if it is being deleted.
            // An output another flow still names is not taken over (its records would feed this
            // tap): it stays taken until the sweep has cleared it.
            let kind = match K::kind(&Default::default()).as_ref() {
                "Output" => Some(OutputKind::Output),
                "ClusterOutput" => Some(OutputKind::ClusterOutput),
                _ => None,
            };
            let ns = tap.namespace().unwrap_or_default();
            let named = match kind {
                Some(kind) => super::in_use::named(&ctx.client, &ctx.config, kind, &ns, &name).await?,
                None => false,
            };
            if !super::is_managed(existing.meta()) || !left_behind(existing.meta(), ctx) || named {
                return Ok(Ensured {
                    taken: true,
                    going: false,
                    existed: true,
                    status: None,
                    created: None,
                    rewritten: false,
                });
            }
        }
        let going = existing.meta().deletion_timestamp.is_some();
        let ensured = Ensured {
            taken: false,
            going,
            existed: true,
            status: existing.status_of().cloned(),
            created: existing.meta().creation_timestamp.clone(),
            rewritten: false,
        };
        let want = spec(desired).clone();
        // An object an earlier version generated (with an ownerReference) is adopted; a changed
        // spec is put back.
        if going {
            // Its deletion stands: the pass restores the flow and lets it go, then makes anew.
            return Ok(ensured);
        }
        let adopt = mark(existing.meta_mut(), tap) | (in_use && super::in_use::hold(existing.meta_mut()));
        let repair = *spec(&mut existing) != want;
        if !adopt && !repair {
            return Ok(ensured);
        }
        *spec(&mut existing) = want;
        match api.replace(&name, &PostParams::default(), &existing).await {
            Ok(_) => {}
            // A stale copy: read it again (gone: create it again).
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => {
                found = api.get_opt(&name).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if repair {
            publish(ctx, tap, EventType::Normal, reason, &note).await;
        }
        return Ok(Ensured {
            rewritten: repair,
            ..ensured
        });
    }
    Err(Error::FlowKeptChanging { flow: name })
}

/// Delete `name` if it is `tap`'s. With a watch cache (`cached: Some(copy)` or `Some(None)` for
/// "not in the cache"), the cache decides whether there is anything to delete; `None` asks the
/// API server (where a leftover would break the render).
pub(super) async fn delete_managed<K>(api: Api<K>, name: &str, tap: &FlowTap, cached: Option<Option<K>>) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let existing = match cached {
        Some(copy) => copy,
        None => api.get_opt(name).await?,
    };
    match existing {
        Some(existing) if is_ours(existing.meta(), tap) => {
            // Only the object looked at: a late DELETE (a deposed leader's) never removes one
            // created anew under the same name.
            let params = kube::api::DeleteParams {
                preconditions: existing.meta().uid.clone().map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => Ok(true),
                // Gone, or another object by now (the precondition failed): nothing of ours.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(false),
    }
}

/// `was_patched`: the tap had its ref in the flow (status.patched), so an append now repairs a
/// flow that lost it.
pub(super) async fn ensure_flow_ref(
    tap: &FlowTap,
    output: &str,
    ctx: &Context,
    was_patched: bool,
) -> Result<FlowState> {
    Ok(
        match edit_flow_refs(tap, &tap.spec.flow_ref, output, ctx, Edit::Append).await? {
            None => FlowState::Missing,
            Some((true, _)) if was_patched => FlowState::Repaired,
            Some((_, problems)) if !problems.is_empty() => FlowState::Problems(problems),
            Some(_) => FlowState::Patched,
        },
    )
}

/// Delete the tap's mirror of a `kind` flow, if there is one: named like the output it feeds,
/// `output`. `sure`: ask the API server, not only the watch cache (the tap was in Mirror mode,
/// so a mirror naming its output may exist even if the cache has not seen it yet, and the
/// output must not go before it).
pub(super) async fn remove_mirror(
    tap: &FlowTap,
    kind: FlowKind,
    output: &str,
    ctx: &Context,
    sure: bool,
) -> Result<()> {
    let ns = tap.namespace().unwrap_or_default();
    let name = output;
    let removed = match kind {
        FlowKind::Flow => {
            let copy = cached(&ctx.flows, &ns, name);
            let cache = (copy.is_some() || !sure).then_some(copy);
            delete_managed::<Flow>(Api::namespaced(ctx.client.clone(), &ns), name, tap, cache).await?
        }
        FlowKind::ClusterFlow => {
            let copy = cached(&ctx.cluster_flows, &ns, name);
            let cache = (copy.is_some() || !sure).then_some(copy);
            delete_managed::<ClusterFlow>(Api::namespaced(ctx.client.clone(), &ns), name, tap, cache).await?
        }
    };
    if removed {
        tracing::info!(tap = %tap.name_any(), mirror = %name, "mirror flow removed");
    }
    Ok(())
}

/// Take `output` out of the refs of `flow` (in the tap's namespace), if it is there. `sure`:
/// the tap put it there (status.patched), so a watch cache that does not show it yet is not
/// taken for its absence: the output must never be deleted while a flow names it.
pub(super) async fn ensure_flow_ref_removed(
    tap: &FlowTap,
    flow: &FlowRef,
    output: &str,
    ctx: &Context,
    sure: bool,
) -> Result<()> {
    edit_flow_refs(tap, flow, output, ctx, Edit::Remove { sure })
        .await
        .map(|_| ())
}

/// What [`edit_refs`] does to a flow's output list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Edit {
    /// Make the output the last entry.
    Append,
    /// Take it out; `sure`: confirm with the API server what a cached copy says is not there.
    Remove { sure: bool },
}

/// [`edit_refs`] on a Flow (`localOutputRefs`) or ClusterFlow (`globalOutputRefs`) in the
/// tap's namespace.
async fn edit_flow_refs(
    tap: &FlowTap,
    flow_ref: &FlowRef,
    output: &str,
    ctx: &Context,
    edit: Edit,
) -> Result<Option<(bool, Vec<String>)>> {
    let ns = tap.namespace().unwrap_or_default();
    let flow = &flow_ref.name;
    match flow_ref.kind {
        FlowKind::Flow => {
            let api = Api::<Flow>::namespaced(ctx.client.clone(), &ns);
            let copy = cached(&ctx.flows, &ns, flow);
            edit_refs(api, copy, flow, |f| &mut f.spec.local_output_refs, output, edit).await
        }
        FlowKind::ClusterFlow => {
            let api = Api::<ClusterFlow>::namespaced(ctx.client.clone(), &ns);
            let copy = cached(&ctx.cluster_flows, &ns, flow);
            edit_refs(api, copy, flow, |f| &mut f.spec.global_output_refs, output, edit).await
        }
    }
}

/// Make `output` the last entry of the flow's list, or take it out. The lists are atomic, so
/// this is a full replace guarded by resourceVersion, retried on conflict; fields log-socket
/// does not model are kept. The first attempt works on `cached` (a watch cache's copy) when
/// there is one: a stale copy costs a conflict and a fresh read, a current one saves the read.
/// Returns `None` if the flow does not exist, else whether it changed anything and the
/// problems logging-operator reports for the flow.
pub(super) async fn edit_refs<K>(
    api: Api<K>,
    cached: Option<K>,
    name: &str,
    refs: impl Fn(&mut K) -> &mut Option<Vec<String>>,
    output: &str,
    edit: Edit,
) -> Result<Option<(bool, Vec<String>)>>
where
    K: Resource + HasStatus + Clone + Serialize + DeserializeOwned + Debug,
{
    let add = edit == Edit::Append;
    let mut copy = cached;
    for attempt in 0..20u64 {
        let from_cache = copy.is_some();
        let flow = match copy.take() {
            Some(flow) => Some(flow),
            None => api.get_opt(name).await?,
        };
        let Some(mut flow) = flow else {
            return Ok(None);
        };
        let reported = flow.problems();
        let list = refs(&mut flow);
        let current = list.clone().unwrap_or_default();
        let mut wanted: Vec<String> = current.iter().filter(|r| *r != output).cloned().collect();
        if add {
            wanted.push(output.to_owned());
        }
        if wanted == current {
            if from_cache && edit == (Edit::Remove { sure: true }) {
                continue;
            }
            return Ok(Some((false, reported)));
        }
        // Leave no empty list behind where there was none.
        *list = if wanted.is_empty() && !add { None } else { Some(wanted) };
        match api.replace(name, &PostParams::default(), &flow).await {
            Ok(_) => return Ok(Some((true, reported))),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::FlowKeptChanging { flow: name.to_owned() })
}

/// The `loggingRef` of the tap's flow (`""` when it has none), or `None` when the flow does
/// not exist: from the watch cache, else (not there, or not yet) from the API server.
pub(super) async fn flow_logging_ref(tap: &FlowTap, ctx: &Context) -> Result<Option<String>> {
    let ns = tap.namespace().unwrap_or_default();
    let name = &tap.spec.flow_ref.name;
    let logging_ref = match tap.spec.flow_ref.kind {
        FlowKind::Flow => {
            let api = Api::<Flow>::namespaced(ctx.client.clone(), &ns);
            cached_or_read(&ctx.flows, &api, &ns, name)
                .await?
                .map(|f| f.spec.logging_ref)
        }
        FlowKind::ClusterFlow => {
            let api = Api::<ClusterFlow>::namespaced(ctx.client.clone(), &ns);
            cached_or_read(&ctx.cluster_flows, &api, &ns, name)
                .await?
                .map(|f| f.spec.logging_ref)
        }
    };
    Ok(logging_ref.map(|r| r.unwrap_or_default()))
}

/// Undo what `patched` records: the output's ref taken out of that flow, or that mirror
/// deleted.
pub(super) async fn unpatch(tap: &FlowTap, patched: &PatchedFlow, ctx: &Context) -> Result<()> {
    let patch_mode = patched.mode == TapMode::Patch;
    ensure_flow_ref_removed(tap, &patched.flow_ref, &patched.output, ctx, patch_mode).await?;
    remove_mirror(tap, patched.flow_ref.kind, &patched.output, ctx, !patch_mode).await
}

/// Undo `old` (what the tap patched under another flow or output name: a changed flowRef, or an
/// output an earlier version named otherwise) and delete that output: the flow first (or its
/// mirror, named like the output), then the output, held until no flow names it.
pub(super) async fn retire(tap: &FlowTap, old: &PatchedFlow, ctx: &Context) -> Result<()> {
    unpatch(tap, old, ctx).await?;
    if old.output == output_name_of(old.flow_ref.kind, &tap.namespace().unwrap_or_default(), &tap.name_any()) {
        return Ok(());
    }
    let ns = tap.namespace().unwrap_or_default();
    let kind = old.flow_ref.kind.output_kind();
    let gone = match kind {
        OutputKind::Output => {
            delete_managed::<Output>(Api::namespaced(ctx.client.clone(), &ns), &old.output, tap, None).await?
        }
        OutputKind::ClusterOutput => {
            delete_managed::<ClusterOutput>(Api::namespaced(ctx.client.clone(), &ns), &old.output, tap, None).await?
        }
    };
    if gone && !super::in_use::release(&ctx.client, &ctx.config, kind, &ns, &old.output).await? {
        return Err(Error::OutputStillNamed {
            output: old.output.clone(),
        });
    }
    Ok(())
}

/// Everything the tap changed, undone in the order logging-operator needs: flows first (what
/// `patched` records, and the spec's flow), then the mirror, then the output.
pub(super) async fn teardown(tap: &FlowTap, patched: Option<&PatchedFlow>, ctx: &Context) -> Result<bool> {
    let output = output_name(tap);
    if let Some(patched) = patched {
        unpatch(tap, patched, ctx).await?;
    }
    // The spec's flow, unless that is what was just restored: the cache may not show that yet.
    if patched.is_none_or(|p| p.flow_ref != tap.spec.flow_ref || p.output != output) {
        ensure_flow_ref_removed(tap, &tap.spec.flow_ref, &output, ctx, false).await?;
        remove_mirror(tap, tap.spec.flow_ref.kind, &output, ctx, false).await?;
    }
    let ns = tap.namespace().unwrap_or_default();
    let mut deleted = false;
    // Both kinds: a flowRef that changed kind leaves the other kind of output behind. The watch
    // cache decides: an output it has not seen yet is named by no flow, and the sweep removes
    // it once its FlowTap is gone.
    // And the output `patched` records, when an earlier version named it otherwise (before
    // ClusterOutput names carried their namespace): unpatched above, so no flow names it.
    let legacy = patched
        .filter(|p| p.output != output_name_of(p.flow_ref.kind, &ns, &tap.name_any()))
        .map(|p| (p.flow_ref.kind, p.output.clone()));
    let current =
        [FlowKind::Flow, FlowKind::ClusterFlow].map(|kind| (kind, output_name_of(kind, &ns, &tap.name_any())));
    for (kind, output) in current.into_iter().chain(legacy) {
        let gone = match kind.output_kind() {
            OutputKind::Output => {
                let copy = Some(cached(&ctx.outputs, &ns, &output));
                delete_managed::<Output>(Api::namespaced(ctx.client.clone(), &ns), &output, tap, copy).await?
            }
            OutputKind::ClusterOutput => {
                let copy = Some(cached(&ctx.cluster_outputs, &ns, &output));
                delete_managed::<ClusterOutput>(Api::namespaced(ctx.client.clone(), &ns), &output, tap, copy).await?
            }
        };
        // Marked for deletion; it goes once a fresh read shows no flow names it (until then
        // an error: the cleanup is retried, and the FlowTap stays until its output is gone).
        if gone && !super::in_use::release(&ctx.client, &ctx.config, kind.output_kind(), &ns, &output).await? {
            return Err(Error::OutputStillNamed { output });
        }
        deleted |= gone;
    }
    Ok(deleted)
}
