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
        // An ephemeral tap's patch is told in its `Active` Event.
        (None, Some(p)) if tap.spec.persistent => {
            publish(ctx, tap, EventType::Normal, "FlowPatched", &patch_note(p)).await;
        }
        (Some(p), None) => {
            let note = format!("{} restored: {} is no longer in it", flow(p), p.output);
            publish(ctx, tap, EventType::Normal, "FlowRestored", &note).await;
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

/// What a patch did, for Events.
pub(super) fn patch_note(p: &PatchedFlow) -> String {
    let flow = format!("{} {}", p.flow_ref.kind, p.flow_ref.name);
    match p.mode {
        TapMode::Patch => format!("appended {} to {flow}", p.output),
        TapMode::Mirror => format!("created a mirror of {flow} feeding {}", p.output),
    }
}
