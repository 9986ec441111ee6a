//! One reconcile of a FlowTap: the finalizer (apply or clean up), expiry of sessions whose
//! relay stopped renewing, the end of an idle ephemeral tap, the pass over its children
//! ([`super::pass`]), the status derived from what the pass observed ([`super::status`], pure),
//! written only when it changed, and when to look again. Failures back off per tap.

use super::children::{self};
use super::context::{publish, Context};
use super::status::{self, FlowState, Observed, OutputState};
use super::{output_name, update_status, FINALIZER};
use crate::k8s::flowtap::{FlowTap, OutputRef, PatchedFlow, Phase};
use crate::{Error, Result};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event};
use kube::ResourceExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::events::{lifecycle_events, patch_note};
use super::pass::{ensure_children, sharing, Step};

/// How often a tap with nothing time-driven pending is looked at again, as a safety net.
pub const IDLE_RECHECK: Duration = Duration::from_secs(600);

pub(super) fn error_policy(tap: Arc<FlowTap>, error: &Error, ctx: Arc<Context>) -> Action {
    // Only an API server that did not answer stops the sessions' clocks: a tap failing for its
    // own reasons (a webhook, RBAC, a flow that keeps changing) must not keep every crashed
    // relay's sessions alive.
    if unreachable(error) {
        ctx.liveness.api_trouble();
    }
    let uid = tap.uid().unwrap_or_default();
    let failures = {
        let mut all = ctx.failures.lock().unwrap();
        let n = all.entry(uid).or_default();
        *n += 1;
        *n
    };
    let wait = error_backoff(failures);
    tracing::warn!(namespace = %tap.namespace().unwrap_or_default(), flowtap = %tap.name_any(), error = %error, "will retry in {wait:?}");
    Action::requeue(wait)
}

/// Whether `error` says the API server could not be reached or did not answer (transport
/// errors, timeouts, 429 and 5xx), as opposed to an answer that refused something.
fn unreachable(error: &Error) -> bool {
    let kube = match error {
        Error::Kube(e) => e,
        Error::Finalizer(e) => match e.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(inner)
            | kube::runtime::finalizer::Error::CleanupFailed(inner) => return unreachable(inner),
            kube::runtime::finalizer::Error::AddFinalizer(e) | kube::runtime::finalizer::Error::RemoveFinalizer(e) => e,
            _ => return false,
        },
        _ => return false,
    };
    match kube {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => true,
    }
}

/// Wait after the `failures`-th failed reconcile in a row: 1 s doubling to 5 minutes, jittered
/// to 50–100 %, so a persistent failure (RBAC, a broken webhook) does not hammer the API server.
fn error_backoff(failures: u32) -> Duration {
    let base = crate::backoff::step(Duration::from_secs(1), 2.0, Duration::from_secs(300), failures);
    crate::backoff::jittered(base, 0.5, 1.0)
}

/// One reconcile in a span naming the FlowTap (every log line of it says which), counted and
/// timed in the controller's metrics.
pub(super) async fn reconcile(tap: Arc<FlowTap>, ctx: Arc<Context>) -> Result<Action> {
    use tracing::Instrument;
    // `flowtap`, not `name`: a JSON log line's span already has a `name` (the span's).
    let span =
        tracing::info_span!("reconcile", namespace = %tap.namespace().unwrap_or_default(), flowtap = %tap.name_any());
    // Counted out when the pass ends, also when it is cancelled (a lost Lease, shutdown).
    struct InFlight(crate::relay::metrics::ControllerMetrics);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.in_flight.dec();
        }
    }
    let metrics = ctx.config.metrics.clone();
    metrics.in_flight.inc();
    let _in_flight = InFlight(metrics.clone());
    let started = std::time::Instant::now();
    let result = reconcile_tap(tap, ctx).instrument(span).await;
    metrics.reconciled(result.is_ok(), started.elapsed());
    result
}

async fn reconcile_tap(tap: Arc<FlowTap>, ctx: Arc<Context>) -> Result<Action> {
    let ns = tap.namespace().unwrap_or_default();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = tap.uid().unwrap_or_default();
    let deleting = tap.metadata.deletion_timestamp.is_some();
    if deleting && ctx.cleaned.lock().unwrap().contains(&uid) {
        return Ok(Action::await_change());
    }
    // Removing a tap is a change of the Logging too: it goes with the current or next batch
    // of its reload budget (never more than one interval away). Asked before the finalizer
    // helper, which would drop the finalizer after any cleanup that returns.
    if deleting && tap.finalizers().iter().any(|f| f == FINALIZER) {
        if let Some(wait) = removal_waits(&tap, &ctx) {
            tracing::info!(tap = %tap.name_any(), "removal waits {wait:?} for the Logging's next batch of tap changes");
            mark_terminating(&tap, &ctx).await;
            return Ok(Action::requeue(wait.max(Duration::from_secs(1))));
        }
    }
    let result = finalizer(&api, FINALIZER, tap, |event| async {
        match event {
            Event::Apply(tap) => apply(&tap, &ctx).await,
            Event::Cleanup(tap) => cleanup(&tap, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&uid);
        // Cleaned up and the finalizer removed (a FlowTap without ours is not ours to clean).
        if deleting {
            let mut cleaned = ctx.cleaned.lock().unwrap();
            if cleaned.len() >= 10_000 {
                cleaned.clear();
            }
            cleaned.insert(uid);
        }
    }
    result
}

async fn apply(tap: &FlowTap, ctx: &Context) -> Result<Action> {
    let name = tap.name_any();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &tap.namespace().unwrap_or_default());
    let now = status::now();
    let Some(tap) = expire_sessions(&api, tap, ctx).await? else {
        return Ok(Action::await_change());
    };
    // A cheap tap stays warm after its last listener (see `cost`); an expensive one lingers
    // only as long as a reconnect needs.
    let warm = super::cost::cheap(&tap, ctx.config.warm_max_bytes_per_second);
    let linger_for = match warm {
        true => ctx.config.warm_linger.max(ctx.config.linger),
        false => ctx.config.linger,
    };
    let linger = status::linger(&tap, linger_for, now);
    if linger.left == Some(Duration::ZERO) {
        // Its removal is a change of the Logging: decided at the Logging's next batch, and until
        // then the tap stays, so a listener coming back meanwhile joins it with no change at all.
        if let Some(wait) = removal_waits(&tap, ctx) {
            return Ok(Action::requeue(wait.max(Duration::from_secs(1))));
        }
        ctx.budget
            .lock()
            .unwrap()
            .keep(&tap.uid().unwrap_or_default(), std::time::Instant::now());
        return delete_idle(&api, &tap, linger.idle).await;
    }

    let output = output_name(&tap);
    let mut current = tap.status.clone().unwrap_or_default();
    current.patched = last_patched(&tap, ctx);
    let mut patched = current.patched.clone();
    // A flowRef that changed (clusters without CEL do not stop it), or an output an earlier
    // version named otherwise: undo the old flow (or mirror) first, then retire that output.
    if let Some(old) = patched
        .as_ref()
        .filter(|p| p.flow_ref != tap.spec.flow_ref || p.output != output)
    {
        // A flowRef a tenant changed: undoing the old flow is a change of its Logging too.
        if let Some(wait) = super::pass::accepted_change_waits(&tap, Some(old), ctx) {
            return Ok(Action::requeue(wait.max(Duration::from_secs(1))));
        }
        children::retire(&tap, old, ctx).await?;
        tracing::info!(tap = %name, flow = %old.flow_ref.name, output = %old.output, "the old flow was restored and its output retired");
        patched = None;
    }
    let step = match sharing(&ctx.taps, &tap) {
        // Another FlowTap feeds this flow's relay tap: share it, never a second output.
        Some(shared) => {
            children::teardown(&tap, patched.as_ref(), ctx).await?;
            Step {
                output_state: OutputState::Shared(shared.clone()),
                flow_state: FlowState::Shared(shared),
                patched: None,
                recheck: Some(Duration::from_secs(5)),
                quiet: false,
                checked: None,
                check_pod: None,
            }
        }
        None => ensure_children(&tap, &output, patched.as_ref(), ctx).await?,
    };
    let refused = match (&step.output_state, &step.flow_state) {
        (OutputState::Refused(r), _) | (_, FlowState::Refused(r)) => Some(r.clone()),
        _ => None,
    };
    let seen = Observed {
        output: &output,
        output_state: &step.output_state,
        flow_state: &step.flow_state,
        never_listened: linger.never_listened,
    };
    let (conditions, phase) = status::derive(&tap, &seen, now);
    let stage = super::stage::stage(
        &super::stage::Seen {
            output_state: &step.output_state,
            flow_state: &step.flow_state,
            checked: step.checked,
            check_pod: step.check_pod.as_deref(),
            receiving: status::condition(&conditions, "Receiving").is_some_and(|c| c.status == "True"),
            last_record: tap
                .status
                .as_ref()
                .and_then(|s| s.last_record_time.as_ref())
                .map(|t| t.0),
            // Until a fixed time (idle since + the warm linger), so the message stays the same
            // from pass to pass and costs no status write.
            warm_until: linger
                .left
                .filter(|_| warm && !linger.never_listened)
                .filter(|_| tap.status.as_ref().is_none_or(|s| s.sessions.is_empty()))
                .map(|_| now - linger.idle + linger_for),
        },
        current.stage.as_ref(),
        now,
    );
    let generation = tap.metadata.generation;
    let changed = current.phase != Some(phase)
        || current.stage != stage
        || current.conditions != conditions
        || current.observed_generation != generation
        || current.output.as_ref().map(|o| &o.name) != Some(&output)
        || current.patched != step.patched;
    if changed && !step.quiet {
        let output_kind = tap.spec.flow_ref.kind.output_kind();
        let patch = json!({"status": {
            "phase": phase,
            "conditions": conditions,
            "output": OutputRef { kind: output_kind, name: output.clone() },
            "observedGeneration": generation,
            "patched": step.patched,
            "stage": stage,
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ctx.written
            .lock()
            .unwrap()
            .insert(tap.uid().unwrap_or_default(), step.patched.clone());
    }
    // Events on transitions only, so a tap that stays refused does not flood them.
    let had =
        |type_: &str, reason: &str| status::condition(&current.conditions, type_).is_some_and(|c| c.reason == reason);
    if let Some(r) = &refused {
        if !had("OutputReady", r.reason) && !had("FlowPatched", r.reason) {
            publish(ctx, &tap, EventType::Warning, r.reason, &r.message).await;
        }
    } else if phase == Phase::Active && !had("Ready", "Active") {
        // An ephemeral tap tells its story in this one Event: it lives only as long as its
        // listeners, who see every step in their status frames, and each Event is a write.
        let story = match (tap.spec.persistent, step.patched.as_ref()) {
            (false, Some(p)) => format!("{}; ", patch_note(p)),
            _ => String::new(),
        };
        let note = format!("{story}{output} validated and in the flow; records follow once fluentd has reloaded");
        publish(ctx, &tap, EventType::Normal, "Active", &note).await;
    }
    if matches!(step.flow_state, FlowState::Repaired) {
        let note = format!("appended {output} to the flow again");
        publish(ctx, &tap, EventType::Normal, "FlowRepaired", &note).await;
    }
    lifecycle_events(ctx, &tap, &current, &conditions, step.patched.as_ref()).await;

    // Come back for what only time brings: session expiry, the linger deadline, the end of
    // Receiving, a validation or a configuration check. Drift of flows, outputs and Loggings,
    // spec changes and listeners arriving or leaving come as watch events, so an idle tap is
    // only looked at again as a safety net.
    let mut next = IDLE_RECHECK;
    if !tap.status.as_ref().is_none_or(|s| s.sessions.is_empty()) {
        next = next.min(session_pass(ctx.config.session_ttl));
    }
    if let Some(last) = tap.status.as_ref().and_then(|s| s.last_record_time.as_ref()) {
        let quiet_in = status::RECEIVING_WINDOW.saturating_sub(status::age(last, now));
        if !quiet_in.is_zero() {
            next = next.min(quiet_in + Duration::from_secs(1));
        }
    }
    // The linger as the status just written has it (Listening may have turned False in this
    // very pass, and the controller's own write does not trigger another).
    let mut written = tap.clone();
    written.status.get_or_insert_with(Default::default).conditions = conditions.clone();
    if let Some(left) = status::linger(&written, linger_for, now).left {
        next = next.min(left + Duration::from_secs(1));
        // A warm tap whose cost rises over the budget ends soon after: look again each minute.
        if warm {
            next = next.min(Duration::from_secs(60));
        }
    }
    if let Some(wait) = step.recheck {
        next = next.min(wait);
    }
    Ok(Action::requeue(next.max(Duration::from_secs(1))))
}

/// How often a tap with sessions is looked at (their expiry is only seen on a pass).
fn session_pass(ttl: Duration) -> Duration {
    Duration::from_secs(30).min(ttl / 2)
}

/// Drop the sessions of relays that stopped renewing (crashed, partitioned). Returns the tap as
/// it is now, `None` when it is gone.
async fn expire_sessions(api: &Api<FlowTap>, tap: &FlowTap, ctx: &Context) -> Result<Option<FlowTap>> {
    let ttl = ctx.config.session_ttl;
    ctx.liveness.sweep(&ctx.taps);
    let expired = |s: &crate::k8s::flowtap::Session| ctx.liveness.expired(s, ttl);
    if !tap.status.as_ref().is_some_and(|s| s.sessions.iter().any(expired)) {
        return Ok(Some(tap.clone()));
    }
    // Before a session is dropped: the tap as the API server has it now (a renewal the cache
    // has not shown yet), and proof the controller is hearing from the API server (passes
    // come every SESSION_PASS while a tap has sessions; a longer silence was an outage as far
    // as the sessions' clocks go).
    let fresh = match api.get_opt(&tap.name_any()).await {
        Ok(fresh) => fresh,
        Err(e) => {
            ctx.liveness.api_trouble();
            return Err(e.into());
        }
    };
    ctx.liveness.answered(session_pass(ttl) + Duration::from_secs(5));
    let Some(fresh) = fresh else { return Ok(None) };
    if !fresh.status.as_ref().is_some_and(|s| s.sessions.iter().any(expired)) {
        return Ok(Some(fresh));
    }
    let updated = update_status(api, &tap.name_any(), Some(fresh), |status| {
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

async fn cleanup(tap: &FlowTap, ctx: &Context) -> Result<Action> {
    let name = tap.name_any();
    let uid = tap.uid().unwrap_or_default();
    // What status says was patched (as last written), and the spec's flow; flows first, then
    // the output.
    let patched = last_patched(tap, ctx);
    match children::teardown(tap, patched.as_ref(), ctx).await {
        Ok(removed) => {
            ctx.written.lock().unwrap().remove(&uid);
            if removed {
                tracing::info!(tap = %name, "tap removed: flow restored, output deleted");
            }
            if let Some(p) = &patched {
                super::events::on_flow(ctx, tap, p, "TapRemoved").await;
            }
        }
        Err(e) => {
            mark_terminating(tap, ctx).await;
            return Err(e);
        }
    }
    Ok(Action::await_change())
}

/// How long the removal of `tap` waits for its Logging's next batch of tap changes, if it does.
fn removal_waits(tap: &FlowTap, ctx: &Context) -> Option<Duration> {
    let patched = last_patched(tap, ctx)?;
    // A tap still on trial goes at once: its configuration may be the one that fails.
    super::pass::accepted_change_waits(tap, Some(&patched), ctx)
}

/// What the tap has patched: as this controller last wrote it (the watch cache can still show
/// an older status), else as its status says.
fn last_patched(tap: &FlowTap, ctx: &Context) -> Option<PatchedFlow> {
    match ctx.written.lock().unwrap().get(&tap.uid().unwrap_or_default()) {
        Some(written) => written.clone(),
        None => tap.status.as_ref().and_then(|s| s.patched.clone()),
    }
}

/// Only a cleanup that does not finish at once is worth a status write: the finalizer stays,
/// and the phase says why the FlowTap is still there.
async fn mark_terminating(tap: &FlowTap, ctx: &Context) {
    if tap.status.as_ref().and_then(|s| s.phase) == Some(Phase::Terminating) {
        return;
    }
    let name = tap.name_any();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &tap.namespace().unwrap_or_default());
    let patch = json!({"status": {"phase": Phase::Terminating}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(tap = %name, error = %e, "could not mark the tap Terminating");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_api_server_that_did_not_answer_stops_the_sessions_clocks() {
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("x", "Reason").with_code(code).boxed(),
            ))
        };
        assert!(unreachable(&api(503)) && unreachable(&api(429)) && unreachable(&api(500)));
        assert!(!unreachable(&api(403)), "RBAC answered");
        assert!(!unreachable(&api(422)), "a webhook answered");
        assert!(!unreachable(&Error::FlowKeptChanging { flow: "web".into() }));
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(api(504))));
        assert!(unreachable(&wrapped));
    }

    #[test]
    fn failed_reconciles_back_off_exponentially_up_to_five_minutes() {
        for failures in 1..20 {
            let wait = error_backoff(failures);
            let base = Duration::from_secs(1 << (failures - 1).min(9)).min(Duration::from_secs(300));
            assert!(wait <= base && wait >= base / 2, "{failures}: {wait:?}");
        }
        assert!(error_backoff(6) > error_backoff(1) * 8, "grows");
    }
}
