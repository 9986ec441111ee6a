//! Normal Events for what a pass changed, so `kubectl describe flowtap` tells the story.

use super::context::{publish, Context};
use super::status::{self};
use crate::k8s::flowtap::{FlowTap, PatchedFlow, TapMode};
use kube::runtime::events::EventType;

/// Normal Events for what changed in the pipeline and in who listens, so `kubectl describe
/// flowtap` tells the story: the flow patched or restored, listeners arriving or all gone.
pub(super) async fn lifecycle_events(
    ctx: &Context,
    tap: &FlowTap,
    before: &crate::k8s::flowtap::FlowTapStatus,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    patched: Option<&PatchedFlow>,
) {
    let flow = |p: &PatchedFlow| format!("{} {}", p.flow_ref.kind, p.flow_ref.name);
    match (before.patched.as_ref(), patched) {
        (None, Some(p)) => {
            // An ephemeral tap's patch is told in its `Active` Event.
            if tap.spec.persistent {
                publish(ctx, tap, EventType::Normal, "FlowPatched", &patch_note(p)).await;
            }
            on_flow(ctx, tap, p, "TapAdded").await;
        }
        (Some(p), None) => {
            let note = format!("{} restored: {} is no longer in it", flow(p), p.output);
            publish(ctx, tap, EventType::Normal, "FlowRestored", &note).await;
            on_flow(ctx, tap, p, "TapRemoved").await;
        }
        _ => {}
    }
    let listening = |c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        status::condition(c, "Listening").map(|c| c.status == "True")
    };
    // Listeners come and go with an ephemeral tap itself.
    if !tap.spec.persistent {
        return;
    }
    match (listening(&before.conditions), listening(conditions)) {
        (Some(false) | None, Some(true)) => {
            let n = tap.status.as_ref().map_or(0, |s| s.sessions.len());
            publish(
                ctx,
                tap,
                EventType::Normal,
                "ListenersJoined",
                &format!("{n} listener(s)"),
            )
            .await;
        }
        (Some(true), Some(false)) => {
            publish(ctx, tap, EventType::Normal, "ListenersLeft", "nobody is listening").await;
        }
        _ => {}
    }
}

/// An Event on the flow itself, so the flow's owner sees in `kubectl describe flow` who changed
/// it and how to find the tap (a failure to record is logged, never fatal).
pub(super) async fn on_flow(ctx: &Context, tap: &FlowTap, p: &PatchedFlow, reason: &str) {
    use kube::ResourceExt;
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(format!("{}/v1beta1", crate::k8s::logging::GROUP)),
        kind: Some(p.flow_ref.kind.to_string()),
        name: Some(p.flow_ref.name.clone()),
        namespace: tap.namespace(),
        ..Default::default()
    };
    let tap_name = format!("FlowTap {}/{}", tap.namespace().unwrap_or_default(), tap.name_any());
    let note = match (reason, p.mode) {
        ("TapAdded", TapMode::Patch) => format!(
            "log-socket appended {} to the output refs for {tap_name} (someone is tailing this flow); it is removed again when the tap ends",
            p.output
        ),
        ("TapAdded", TapMode::Mirror) => format!(
            "log-socket mirrors this flow (same match and filters) into {} for {tap_name}; this flow is not edited",
            p.output
        ),
        (_, TapMode::Patch) => format!("log-socket removed {} of {tap_name}: the output refs are as before", p.output),
        (_, TapMode::Mirror) => format!("log-socket's mirror of this flow for {tap_name} is gone"),
    };
    let event = kube::runtime::events::Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &regarding).await {
        tracing::warn!(error = %e, reason, "could not record an event on the flow");
    }
}

/// What a patch did, for Events.
pub(super) fn patch_note(p: &PatchedFlow) -> String {
    let flow = format!("{} {}", p.flow_ref.kind, p.flow_ref.name);
    match p.mode {
        TapMode::Patch => format!("appended {} to {flow}", p.output),
        TapMode::Mirror => format!("created a mirror of {flow} feeding {}", p.output),
    }
}
