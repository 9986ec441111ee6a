//! The objects a FlowTap owns and the edits it makes: the generated `Output`/`ClusterOutput`,
//! the ref appended to the flow (Patch mode) or the mirror flow (Mirror mode).
//!
//! Order matters for logging-operator: the output exists before any flow names it, and the
//! flow is restored before the output is deleted (a flow naming a missing output stops the
//! render of the whole Logging). Flow output lists are atomic: each edit is a full replace
//! guarded by resourceVersion. Nothing here touches an object log-socket did not create.

use super::controller::{publish, Context};
use super::status::{FlowState, OutputState};
use super::{output_name, OperatorConfig, MANAGED_BY};
use crate::k8s::flowtap::{FlowKind, FlowTap, OutputKind};
use crate::k8s::logging::{ClusterFlow, ClusterOutput, ClusterOutputSpec, Flow, HasStatus, Output, OutputSpec};
use crate::relay::TapKey;
use crate::{Error, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Debug;
use std::time::Duration;

/// The http output a tap needs (see the logging-operator notes in the README).
pub fn desired_output_spec(tap: &FlowTap, config: &OperatorConfig) -> Value {
    let key = TapKey {
        kind: tap.spec.flow_ref.kind,
        namespace: tap.namespace().unwrap_or_default(),
        name: tap.spec.flow_ref.name.clone(),
    };
    let b = &tap.spec.buffer;
    let mut http = json!({
        "endpoint": format!("{}/{key}", config.ingest_url.trim_end_matches('/')),
        "json_array": true,
        "format": {"type": "json", "add_newline": false},
        "open_timeout": 5,
        "read_timeout": 10,
        "retryable_response_codes": [429, 502, 503, 504],
        "buffer": {
            "type": "memory",
            // No chunk keys: flush on the interval instead of fluentd's 10-minute time chunks.
            "tags": "[]",
            "flush_mode": "interval",
            "flush_interval": b.flush_interval,
            "chunk_limit_size": b.chunk_limit_size,
            "total_limit_size": b.total_limit_size,
            "overflow_action": "drop_oldest_chunk",
            "retry_forever": false,
            "retry_max_times": b.retry_max_times,
        },
    });
    if let Some(secret) = &config.auth_secret {
        let value_from = |key: &str| json!({"valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
        http["auth"] = json!({"username": value_from("username"), "password": value_from("password")});
    }
    if let Some(secret) = &config.tls_secret {
        let mount_from = |key: &str| json!({"mountFrom": {"secretKeyRef": {"name": secret, "key": key}}});
        http["tls_ca_cert_path"] = mount_from("ca.crt");
        http["tls_client_cert_path"] = mount_from("tls.crt");
        http["tls_private_key_path"] = mount_from("tls.key");
    }
    json!({ "http": http })
}

fn owner(tap: &FlowTap) -> OwnerReference {
    OwnerReference {
        api_version: "logsocket.dev/v1alpha1".into(),
        kind: "FlowTap".into(),
        name: tap.name_any(),
        uid: tap.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn is_ours(meta: &kube::api::ObjectMeta, tap: &FlowTap) -> bool {
    super::is_managed(meta)
        && tap
            .uid()
            .is_some_and(|uid| super::owning_tap_uids(meta).contains(&uid.as_str()))
}

pub(super) async fn ensure_output(tap: &FlowTap, name: &str, ctx: &Context) -> Result<(OutputState, bool)> {
    let ns = tap.namespace().unwrap_or_default();
    let output: OutputSpec =
        serde_json::from_value(desired_output_spec(tap, &ctx.config)).expect("a valid output spec");
    let repaired = ("OutputRepaired", format!("{name} was changed and was restored"));
    match tap.spec.flow_ref.kind.output_kind() {
        OutputKind::Output => {
            let mut obj = Output::new(name, output);
            let api = Api::namespaced(ctx.client.clone(), &ns);
            ensure_managed(api, &mut obj, tap, ctx, |o| &mut o.spec, repaired).await
        }
        OutputKind::ClusterOutput => {
            let spec = ClusterOutputSpec {
                protected: None,
                output,
            };
            let mut obj = ClusterOutput::new(name, spec);
            let api = Api::namespaced(ctx.client.clone(), &ns);
            ensure_managed(api, &mut obj, tap, ctx, |o| &mut o.spec, repaired).await
        }
    }
}

/// Create `desired` if missing; repair its spec if someone changed it; refuse to touch an
/// object of that name log-socket does not own.
async fn ensure_managed<K, S>(
    api: Api<K>,
    desired: &mut K,
    tap: &FlowTap,
    ctx: &Context,
    spec: impl Fn(&mut K) -> &mut S,
    (reason, note): (&str, String),
) -> Result<(OutputState, bool)>
where
    K: Resource + HasStatus + Clone + Serialize + DeserializeOwned + Debug,
    K::DynamicType: Default,
    S: Serialize + Clone + PartialEq,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    desired.meta_mut().labels = Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into());
    desired.meta_mut().owner_references = Some(vec![owner(tap)]);
    match api.get_opt(&name).await? {
        None => {
            api.create(&PostParams::default(), desired).await?;
            tracing::info!(tap = %tap.name_any(), kind = K::kind(&Default::default()).as_ref(), name = %name, "created");
            Ok((OutputState::Ready, false))
        }
        Some(mut existing) => {
            if !is_ours(existing.meta(), tap) {
                return Ok((OutputState::NameTaken, true));
            }
            let want = spec(desired).clone();
            if *spec(&mut existing) != want {
                *spec(&mut existing) = want;
                api.replace(&name, &PostParams::default(), &existing).await?;
                publish(ctx, tap, EventType::Normal, reason, &note).await;
                return Ok((OutputState::Ready, true));
            }
            match existing.problems() {
                p if !p.is_empty() => Ok((OutputState::Problems(p), true)),
                _ => Ok((OutputState::Ready, true)),
            }
        }
    }
}

pub(super) async fn delete_managed<K>(api: Api<K>, name: &str, tap: &FlowTap) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await? {
        Some(existing) if is_ours(existing.meta(), tap) => match api.delete(name, &Default::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        },
        _ => Ok(false),
    }
}

/// `output_existed`: the output was there before this reconcile, so an append now repairs a
/// flow that had lost its ref (read from the API, not from a possibly stale status).
pub(super) async fn ensure_flow_ref(
    tap: &FlowTap,
    output: &str,
    ctx: &Context,
    output_existed: bool,
) -> Result<FlowState> {
    Ok(match edit_flow_refs(tap, output, ctx, true).await? {
        None => FlowState::Missing,
        Some((true, _)) if output_existed => FlowState::Repaired,
        Some((_, problems)) if !problems.is_empty() => FlowState::Problems(problems),
        Some(_) => FlowState::Patched,
    })
}

/// Mirror mode: a managed sibling of the tapped flow, with its spec (match, filters, ...) and
/// the tap's output as its only output. Follows the flow; removed when the flow is gone.
pub(super) async fn ensure_mirror(tap: &FlowTap, output: &str, ctx: &Context) -> Result<FlowState> {
    let ns = tap.namespace().unwrap_or_default();
    let name = output_name(&tap.name_any());
    let flow = &tap.spec.flow_ref.name;
    let synced = || ("MirrorSynced", format!("{name} was brought in line with {flow}"));
    let state = match tap.spec.flow_ref.kind {
        FlowKind::Flow => {
            let api = Api::<Flow>::namespaced(ctx.client.clone(), &ns);
            let Some(original) = api.get_opt(flow).await? else {
                delete_managed(api, &name, tap).await?;
                return Ok(FlowState::Missing);
            };
            let mut spec = original.spec;
            spec.local_output_refs = Some(vec![output.to_owned()]);
            spec.global_output_refs = None;
            let mut mirror = Flow::new(&name, spec);
            ensure_managed(api, &mut mirror, tap, ctx, |f| &mut f.spec, synced()).await?
        }
        FlowKind::ClusterFlow => {
            let api = Api::<ClusterFlow>::namespaced(ctx.client.clone(), &ns);
            let Some(original) = api.get_opt(flow).await? else {
                delete_managed(api, &name, tap).await?;
                return Ok(FlowState::Missing);
            };
            let mut spec = original.spec;
            spec.global_output_refs = Some(vec![output.to_owned()]);
            let mut mirror = ClusterFlow::new(&name, spec);
            ensure_managed(api, &mut mirror, tap, ctx, |f| &mut f.spec, synced()).await?
        }
    };
    Ok(match state.0 {
        OutputState::Ready => FlowState::Mirrored,
        OutputState::Problems(p) => FlowState::Problems(p),
        OutputState::NameTaken => FlowState::NameTaken(name),
    })
}

pub(super) async fn remove_mirror(tap: &FlowTap, ctx: &Context) -> Result<()> {
    let ns = tap.namespace().unwrap_or_default();
    let name = output_name(&tap.name_any());
    let removed = match tap.spec.flow_ref.kind {
        FlowKind::Flow => delete_managed::<Flow>(Api::namespaced(ctx.client.clone(), &ns), &name, tap).await?,
        FlowKind::ClusterFlow => {
            delete_managed::<ClusterFlow>(Api::namespaced(ctx.client.clone(), &ns), &name, tap).await?
        }
    };
    if removed {
        tracing::info!(tap = %tap.name_any(), mirror = %name, "mirror flow removed");
    }
    Ok(())
}

pub(super) async fn ensure_flow_ref_removed(tap: &FlowTap, output: &str, ctx: &Context) -> Result<()> {
    edit_flow_refs(tap, output, ctx, false).await.map(|_| ())
}

/// [`edit_refs`] on the tap's Flow (`localOutputRefs`) or ClusterFlow (`globalOutputRefs`).
async fn edit_flow_refs(tap: &FlowTap, output: &str, ctx: &Context, add: bool) -> Result<Option<(bool, Vec<String>)>> {
    let ns = tap.namespace().unwrap_or_default();
    let flow = &tap.spec.flow_ref.name;
    match tap.spec.flow_ref.kind {
        FlowKind::Flow => {
            let api = Api::<Flow>::namespaced(ctx.client.clone(), &ns);
            edit_refs(api, flow, |f| &mut f.spec.local_output_refs, output, add).await
        }
        FlowKind::ClusterFlow => {
            let api = Api::<ClusterFlow>::namespaced(ctx.client.clone(), &ns);
            edit_refs(api, flow, |f| &mut f.spec.global_output_refs, output, add).await
        }
    }
}

/// Make `output` the last entry of the flow's list (`add`), or take it out. The lists are
/// atomic, so this is a full replace guarded by resourceVersion, retried on conflict; fields
/// log-socket does not model are kept. Returns `None` if the flow does not exist, else whether
/// it changed anything and the problems logging-operator reports for the flow.
pub(super) async fn edit_refs<K>(
    api: Api<K>,
    name: &str,
    refs: impl Fn(&mut K) -> &mut Option<Vec<String>>,
    output: &str,
    add: bool,
) -> Result<Option<(bool, Vec<String>)>>
where
    K: Resource + HasStatus + Clone + Serialize + DeserializeOwned + Debug,
{
    for attempt in 0..20u64 {
        let Some(mut flow) = api.get_opt(name).await? else {
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
