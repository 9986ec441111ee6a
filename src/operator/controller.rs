//! The FlowTap controller: for each FlowTap, an http `Output` (Flow) or `ClusterOutput`
//! (ClusterFlow) pointing at the relay, appended as the last output of the flow; removed again,
//! flow first, when the tap goes. Ephemeral taps without listeners are deleted after the linger
//! period; sessions of relays that stopped renewing expire.
//!
//! One reconcile is a few small steps: expire sessions, end an idle tap, ensure the children
//! (`children`), derive the status ([`super::status`], pure), write it if it changed.

use super::children::{
    delete_managed, ensure_flow_ref, ensure_flow_ref_removed, ensure_mirror, ensure_output, remove_mirror,
};
use super::status::{self, age, FlowState, Observed, OutputState};
use super::{output_name, update_status, OperatorConfig, FINALIZER};
use crate::k8s::flowtap::{FlowKind, FlowTap, OutputRef, Phase, TapMode};
use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, Output};
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the reconciler needs.
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<OperatorConfig>,
    pub recorder: Recorder,
}

/// Run the controller until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    config: Arc<OperatorConfig>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let reporter = Reporter {
        controller: "log-socket".into(),
        instance: Some(config.instance.clone()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        config,
    });
    let (outputs, cluster_outputs) = (
        ctx.config.scoped::<Output>(&client),
        ctx.config.scoped::<ClusterOutput>(&client),
    );
    match super::leftovers::remove(&client, &ctx.config).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} leftover(s) of FlowTaps that no longer exist"),
        Err(e) => tracing::warn!(error = %e, "could not look for leftovers of deleted FlowTaps"),
    }
    let managed = || watcher::Config::default().labels("app.kubernetes.io/managed-by=log-socket");
    let controller = Controller::new(ctx.config.taps(&client), watcher::Config::default());
    let (flows, cluster_flows) = (
        ctx.config.scoped::<Flow>(&client),
        ctx.config.scoped::<ClusterFlow>(&client),
    );
    // Flows are watched (not polled) so that a removed ref is repaired and a mirror follows
    // its flow at once.
    let (store, store2) = (controller.store(), controller.store());
    controller
        .owns(outputs, managed())
        .owns(cluster_outputs, managed())
        .watches(flows, watcher::Config::default(), move |f: Flow| {
            taps_of(&store, FlowKind::Flow, &f.metadata)
        })
        .watches(cluster_flows, watcher::Config::default(), move |f: ClusterFlow| {
            taps_of(&store2, FlowKind::ClusterFlow, &f.metadata)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "FlowTap reconcile failed");
            }
        })
        .await;
}

/// The FlowTaps a change of this flow concerns: taps on it, and the tap owning it if it is a
/// mirror.
fn taps_of(store: &Store<FlowTap>, kind: FlowKind, flow: &kube::api::ObjectMeta) -> Vec<ObjectRef<FlowTap>> {
    let owners = super::owning_tap_uids(flow);
    store
        .state()
        .iter()
        .filter(|t| t.metadata.namespace == flow.namespace)
        .filter(|t| {
            (t.spec.flow_ref.kind == kind && Some(&t.spec.flow_ref.name) == flow.name.as_ref())
                || t.metadata.uid.as_deref().is_some_and(|u| owners.contains(&u))
        })
        .map(|t| ObjectRef::from_obj(&**t))
        .collect()
}

fn error_policy(tap: Arc<FlowTap>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(tap = %tap.name_any(), error = %error, "will retry");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(tap: Arc<FlowTap>, ctx: Arc<Context>) -> Result<Action> {
    let ns = tap.namespace().unwrap_or_default();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, tap, |event| async {
        match event {
            Event::Apply(tap) => apply(&tap, &ctx).await,
            Event::Cleanup(tap) => cleanup(&tap, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(tap: &FlowTap, ctx: &Context) -> Result<Action> {
    let name = tap.name_any();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &tap.namespace().unwrap_or_default());
    let now = status::now();
    let Some(tap) = expire_sessions(&api, tap, ctx.config.session_ttl, now).await? else {
        return Ok(Action::await_change());
    };
    let linger = status::linger(&tap, ctx.config.linger, now);
    if linger.left == Some(Duration::ZERO) {
        return delete_idle(&api, &tap, linger.idle).await;
    }

    let output = output_name(&name);
    let (output_state, flow_state) = ensure_children(&tap, &output, ctx).await?;
    let seen = Observed {
        output: &output,
        output_state: &output_state,
        flow_state: &flow_state,
        never_listened: linger.never_listened,
    };
    let (conditions, phase) = status::derive(&tap, &seen, now);
    let current = tap.status.clone().unwrap_or_default();
    let generation = tap.metadata.generation;
    let changed = current.phase != Some(phase)
        || current.conditions != conditions
        || current.observed_generation != generation
        || current.output.as_ref().map(|o| &o.name) != Some(&output);
    if changed {
        let output_kind = tap.spec.flow_ref.kind.output_kind();
        let patch = json!({"status": {
            "phase": phase,
            "conditions": conditions,
            "output": OutputRef { kind: output_kind, name: output.clone() },
            "observedGeneration": generation,
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if matches!(flow_state, FlowState::Repaired) {
        let note = format!("appended {output} to the flow again");
        publish(ctx, &tap, EventType::Normal, "FlowRepaired", &note).await;
    }

    // Come back for drift, session expiry and the linger deadline.
    let mut next = Duration::from_secs(30).min(ctx.config.session_ttl / 2);
    if let Some(left) = linger.left {
        next = next.min(left + Duration::from_secs(1));
    }
    Ok(Action::requeue(next.max(Duration::from_secs(1))))
}

/// Drop the sessions of relays that stopped renewing (crashed, partitioned). Returns the tap as
/// it is now, `None` when it is gone.
async fn expire_sessions(api: &Api<FlowTap>, tap: &FlowTap, ttl: Duration, now: Timestamp) -> Result<Option<FlowTap>> {
    let expired = |s: &crate::k8s::flowtap::Session| age(s.renew_time.as_ref().unwrap_or(&s.since), now) > ttl;
    if !tap.status.as_ref().is_some_and(|s| s.sessions.iter().any(expired)) {
        return Ok(Some(tap.clone()));
    }
    let updated = update_status(api, &tap.name_any(), |status| {
        let before = status.sessions.len();
        status.sessions.retain(|s| !expired(s));
        status.sessions.len() != before
    })
    .await?;
    tracing::info!(tap = %tap.name_any(), "expired sessions of relays that stopped renewing");
    Ok(updated)
}

/// Delete an ephemeral tap whose linger is over, but only the version looked at: a session
/// registered since then makes this a conflict, and the next reconcile sees the listener.
async fn delete_idle(api: &Api<FlowTap>, tap: &FlowTap, idle: Duration) -> Result<Action> {
    let name = tap.name_any();
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: tap.resource_version(),
            uid: tap.uid(),
        }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => tracing::info!(tap = %name, "deleted ephemeral FlowTap: no listener for {idle:?}"),
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(Duration::from_secs(1))),
        // Someone else deleted it first: nothing left to do.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// The output first, then the flow side: a flow naming a missing output blocks
/// logging-operator.
async fn ensure_children(tap: &FlowTap, output: &str, ctx: &Context) -> Result<(OutputState, FlowState)> {
    let (output_state, output_existed) = ensure_output(tap, output, ctx).await?;
    let flow_state = match (&output_state, tap.spec.mode) {
        (OutputState::NameTaken, _) => FlowState::Skipped,
        (_, TapMode::Patch) => {
            let state = ensure_flow_ref(tap, output, ctx, output_existed).await?;
            remove_mirror(tap, ctx).await?;
            state
        }
        (_, TapMode::Mirror) => {
            // The mirror first, so switching from Patch loses no record.
            let state = ensure_mirror(tap, output, ctx).await?;
            ensure_flow_ref_removed(tap, output, ctx).await?;
            state
        }
    };
    Ok((output_state, flow_state))
}

async fn cleanup(tap: &FlowTap, ctx: &Context) -> Result<Action> {
    let name = tap.name_any();
    let output = output_name(&name);
    let ns = tap.namespace().unwrap_or_default();
    if tap.status.as_ref().and_then(|s| s.phase) != Some(Phase::Terminating) {
        let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {"phase": Phase::Terminating}});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(tap = %name, error = %e, "could not mark the tap Terminating");
        }
    }
    // The flows first: a flow pointing at a missing output stops logging-operator's rendering.
    ensure_flow_ref_removed(tap, &output, ctx).await?;
    remove_mirror(tap, ctx).await?;
    let deleted = match tap.spec.flow_ref.kind {
        FlowKind::Flow => delete_managed::<Output>(Api::namespaced(ctx.client.clone(), &ns), &output, tap).await?,
        FlowKind::ClusterFlow => {
            delete_managed::<ClusterOutput>(Api::namespaced(ctx.client.clone(), &ns), &output, tap).await?
        }
    };
    if deleted {
        tracing::info!(tap = %name, output = %output, "tap removed: flow restored, output deleted");
    }
    Ok(Action::await_change())
}

pub(super) async fn publish(ctx: &Context, tap: &FlowTap, type_: EventType, reason: &str, note: &str) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &tap.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not record an event");
    }
}
