//! The pass over a FlowTap's children. Check first, then change: refuse before the flow would
//! name anything logging-operator cannot render; create the output before the flow names it,
//! validated first; the configuration check after. Also the policies a pass applies: which of
//! several taps on one flow owns the output (sharing), a flow ref someone keeps removing
//! (contested), and refusals that stand until the spec changes.

use super::children::remove_mirror;
use super::children::{self, ensure_flow_ref, ensure_flow_ref_removed, ensure_output};
use super::context::Context;
use super::mirror::ensure_mirror;
use super::preflight::{self, Validation};
use super::status::{self, FlowState, OutputState, Refusal, Shared};
use super::trial;
use crate::k8s::flowtap::{FlowTap, PatchedFlow, TapMode};
use crate::Result;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;

/// A flow whose ref is removed this often, this fast, is contested (a GitOps tool keeps
/// removing it): the operator stops putting it back.
pub const CONTESTED_REPAIRS: usize = 3;
/// A change waits for its Logging's next batch (see `budget`).
pub const CHANGE_WINDOW: &str = "ChangeWindow";
pub const CONTESTED_WINDOW: Duration = Duration::from_secs(300);

/// What one pass did to the tap's children.
pub(super) struct Step {
    pub(super) output_state: OutputState,
    pub(super) flow_state: FlowState,
    /// What is patched now (for `status.patched`).
    pub(super) patched: Option<PatchedFlow>,
    /// Look again this soon (a validation or a configuration check is pending).
    pub(super) recheck: Option<Duration>,
    /// Nothing worth a status write yet (an output created just now, validated in a moment).
    pub(super) quiet: bool,
    /// A configuration with the tap passed logging-operator's check (or was accepted): fluentd
    /// gets it next. `Some(false)`: patched, no result for it yet. `None`: not patched.
    pub(super) checked: Option<bool>,
    /// While the check has no result: its pod in words, when it may be read.
    pub(super) check_pod: Option<String>,
}

/// Check first, then change: refuse before the flow would name anything logging-operator
/// cannot render; the output before the flow, validated before it is named; the configuration
/// check after. Any refusal restores the flow (and, where the refusal is the output's or the
/// configuration's, removes what the tap made).
pub(super) async fn ensure_children(
    tap: &FlowTap,
    output: &str,
    patched: Option<&PatchedFlow>,
    ctx: &Context,
) -> Result<Step> {
    let ns = tap.namespace().unwrap_or_default();
    let refuse = |output_state, flow_state| Step {
        output_state,
        flow_state,
        patched: None,
        recheck: Some(Duration::from_secs(10)),
        quiet: false,
        checked: None,
        check_pod: None,
    };
    // A contested flow is final until the spec changes; a failed configuration check until
    // then or until it is tried again (see `trial`).
    if let Some((r, retry_in)) = sticky_refusal(tap, ctx.config.config_retry) {
        children::teardown(tap, patched, ctx).await?;
        return Ok(Step {
            recheck: retry_in,
            ..refuse(OutputState::Ready, FlowState::Refused(r))
        });
    }
    // The tap's buffer lives in the Logging's shared fluentd: bounded before anything is made.
    if let Some(r) = super::buffer_bounds::check(
        &tap.spec.buffer,
        ctx.config.max_tap_buffer_bytes,
        ctx.config.max_request_bytes,
    ) {
        // The tenant's own spec edit: the accepted patch (the old buffer) is safe to keep until
        // the Logging's next batch of tap changes; a tap on trial goes at once.
        if let Some(wait) = accepted_change_waits(tap, patched, ctx) {
            return Ok(Step {
                recheck: Some(wait),
                patched: patched.cloned(),
                ..refuse(OutputState::Refused(r), FlowState::Skipped)
            });
        }
        children::teardown(tap, patched, ctx).await?;
        return Ok(Step {
            recheck: None,
            ..refuse(OutputState::Refused(r), FlowState::Skipped)
        });
    }
    let Some(logging_ref) = children::flow_logging_ref(tap, ctx).await? else {
        children::teardown(tap, patched, ctx).await?;
        return Ok(Step {
            recheck: None,
            ..refuse(OutputState::Ready, FlowState::Missing)
        });
    };
    // From the cache when it has the answer; a cache that does not (yet) is asked no further.
    let cached = preflight::pick_logging(
        ctx.loggings.state().iter().map(|l| (**l).clone()).collect(),
        tap.spec.flow_ref.kind,
        &ns,
        &logging_ref,
    );
    let found = match cached {
        Ok(logging) => Ok(logging),
        Err(_) => preflight::find_logging(&ctx.client, tap.spec.flow_ref.kind, &ns, &logging_ref).await?,
    };
    let logging = match found {
        Ok(logging) => logging,
        Err(r) => {
            children::teardown(tap, patched, ctx).await?;
            return Ok(refuse(OutputState::Refused(r), FlowState::Skipped));
        }
    };
    let spec = super::output_spec::desired_output_spec(tap, &ctx.config, Some(&logging_ref));
    if let Some(r) = preflight::check_secrets(&ctx.client, &ns, &preflight::secret_refs(&spec)).await? {
        children::teardown(tap, patched, ctx).await?;
        return Ok(refuse(OutputState::Refused(r), FlowState::Skipped));
    }

    let ensured = ensure_output(tap, output, ctx, Some(&logging_ref)).await?;
    if ensured.going {
        // Someone deleted the output (a user, a late request of a deposed leader); its in-use
        // finalizer holds it while a flow names it. Restore the flow, let it go, make it anew.
        match patched {
            Some(p) => children::unpatch(tap, p, ctx).await?,
            // Not recorded (a status write lost): the spec's flow and mirror, asked for sure.
            None => {
                ensure_flow_ref_removed(tap, &tap.spec.flow_ref, output, ctx, true).await?;
                remove_mirror(tap, tap.spec.flow_ref.kind, output, ctx, true).await?;
            }
        }
        let kind = tap.spec.flow_ref.kind.output_kind();
        super::in_use::release(&ctx.client, &ctx.config, kind, &ns, output).await?;
        return Ok(Step {
            recheck: Some(Duration::from_secs(1)),
            quiet: false,
            ..refuse(
                OutputState::Validating(ctx.config.output_accept_timeout),
                FlowState::Skipped,
            )
        });
    }
    if ensured.taken {
        if let Some(p) = patched {
            children::unpatch(tap, p, ctx).await?;
        }
        return Ok(Step {
            recheck: None,
            ..refuse(OutputState::NameTaken, FlowState::Skipped)
        });
    }
    let validation = preflight::validation(
        ensured.status.as_ref(),
        ensured.created.as_ref(),
        ctx.config.output_accept_timeout,
        status::now(),
    );
    match validation {
        Validation::Accepted => {}
        Validation::Waiting(left) => {
            // Not validated yet. An output that was just (re)created while a flow still names
            // it (someone deleted it): that flow no longer renders, so restore it right away.
            let mut still = patched.cloned();
            if let (Some(p), false) = (patched, ensured.existed) {
                children::unpatch(tap, p, ctx).await?;
                still = None;
            }
            return Ok(Step {
                output_state: OutputState::Validating(left),
                flow_state: FlowState::Skipped,
                patched: still,
                recheck: Some(left.min(Duration::from_secs(2))),
                // Validation usually comes within the second (its status write brings the
                // next pass); the phase is written if it does not.
                quiet: patched.is_none()
                    && ensured
                        .created
                        .as_ref()
                        .is_none_or(|t| status::age(t, status::now()) < Duration::from_secs(2)),
                checked: None,
                check_pod: None,
            });
        }
        Validation::Refused(r) => {
            // The output stays, unnamed (logging-operator renders only outputs a flow names),
            // so its status keeps telling what is wrong; the tap proceeds once it is fixed.
            if let Some(p) = patched {
                children::unpatch(tap, p, ctx).await?;
            }
            return Ok(refuse(OutputState::Refused(r), FlowState::Skipped));
        }
    }

    // Baseline of the Logging's configuration checks before the flow names the output.
    let before: Vec<String> = logging.config_checks().into_keys().collect();
    // A new patch (not a repair) starts a trial: it waits its turn (see `trial`).
    let new_trial =
        patched.is_none_or(|p| p.mode != tap.spec.mode || p.logging.as_deref() != Some(logging.name_any().as_str()));
    if new_trial {
        if let Err(r) = trial::admit(ctx, tap, &logging) {
            // A patch that was made but never recorded (its status write lost) must not stay
            // while the tap waits: the flow goes back to as it was.
            if patched.is_none() {
                ensure_flow_ref_removed(tap, &tap.spec.flow_ref, output, ctx, false).await?;
                remove_mirror(tap, tap.spec.flow_ref.kind, output, ctx, false).await?;
            }
            let wait = if r.reason == trial::LOGGING_CONFIG_INVALID {
                10
            } else {
                2
            };
            return Ok(Step {
                recheck: Some(Duration::from_secs(wait)),
                patched: patched.cloned(),
                ..refuse(OutputState::Ready, FlowState::Waiting(r))
            });
        }
        // The Logging's reload budget: this change goes with the current or next batch. A tap
        // retrying after an unclear check takes its turn alone instead (`trial::admit`), never
        // in a batch with others.
        let gate = match trial::takes_turns(tap) {
            true => super::budget::Gate::Now,
            false => ctx.budget.lock().unwrap().ask(
                &logging.name_any(),
                &flow_key(&ns, &tap.spec.flow_ref),
                &tap.uid().unwrap_or_default(),
                std::time::Instant::now(),
                ctx.config.config_change_interval,
            ),
        };
        if let super::budget::Gate::Wait(wait) = gate {
            return Ok(Step {
                recheck: Some(wait),
                patched: patched.cloned(),
                ..refuse(
                    OutputState::Ready,
                    FlowState::Waiting(change_window(&logging.name_any(), wait, ctx)),
                )
            });
        }
    }
    let flow_state = match tap.spec.mode {
        TapMode::Patch => {
            // A repair is putting back a ref this tap had in the flow (status.patched), not the
            // first append after the output's validation.
            let state = ensure_flow_ref(tap, output, ctx, patched.is_some()).await?;
            // A mirror can only exist from Mirror mode: look for one only when switching.
            if patched.is_none_or(|p| p.mode == TapMode::Mirror) {
                let was_mirror = patched.is_some();
                remove_mirror(tap, tap.spec.flow_ref.kind, output, ctx, was_mirror).await?;
            }
            if matches!(state, FlowState::Repaired) && contested(ctx, tap) {
                let r = Refusal::new(
                    CONTESTED,
                    format!(
                        "the ref to {output} was removed from {} {} {CONTESTED_REPAIRS} times within {} minutes, probably by a GitOps tool; log-socket stopped putting it back. Use `spec.mode: Mirror` (the flow is then never edited), or make the tool ignore the flow's output refs",
                        tap.spec.flow_ref.kind,
                        tap.spec.flow_ref.name,
                        CONTESTED_WINDOW.as_secs() / 60
                    ),
                );
                children::teardown(tap, patched, ctx).await?;
                return Ok(Step {
                    recheck: None,
                    ..refuse(OutputState::Ready, FlowState::Refused(r))
                });
            }
            state
        }
        TapMode::Mirror => {
            // The mirror first, so switching from Patch loses no record.
            let state = ensure_mirror(tap, output, ctx).await?;
            let was_patch = patched.is_some_and(|p| p.mode == TapMode::Patch);
            ensure_flow_ref_removed(tap, &tap.spec.flow_ref, output, ctx, was_patch).await?;
            state
        }
    };
    // logging-operator says the flow cannot use the tap's output (a `referenced output ... not
    // found`, `... has problems`): with `skipInvalidResources` it now drops the user's whole
    // flow, without it the whole Logging stops rendering. Restore the flow at once.
    if let FlowState::Problems(problems) = &flow_state {
        if let Some(problem) = problems.iter().find(|p| names_output(p, output)) {
            let r = Refusal::new(
                FLOW_REJECTS_OUTPUT,
                format!(
                    "logging-operator reports that {} {} cannot use {output} ({problem}); the flow was restored. The tap is tried again in {} minutes, or when its spec changes",
                    tap.spec.flow_ref.kind,
                    tap.spec.flow_ref.name,
                    ctx.config.config_retry.as_secs().div_ceil(60)
                ),
            );
            children::teardown(tap, patched, ctx).await?;
            return Ok(Step {
                recheck: Some(ctx.config.config_retry),
                ..refuse(OutputState::Ready, FlowState::Refused(r))
            });
        }
    }
    let in_place = matches!(
        flow_state,
        FlowState::Patched | FlowState::Repaired | FlowState::Mirrored | FlowState::Problems(_)
    );
    if !in_place {
        return Ok(Step {
            output_state: OutputState::Ready,
            flow_state,
            patched: None,
            recheck: None,
            quiet: false,
            checked: None,
            check_pod: None,
        });
    }
    let logging_name = logging.name_any();
    // An output whose spec was rewritten under a flow that names it is a new configuration:
    // judged again, like a new patch (its old acceptance said nothing about the new spec).
    let mut record = match patched {
        Some(p)
            if p.mode == tap.spec.mode && p.logging.as_deref() == Some(logging_name.as_str()) && !ensured.rewritten =>
        {
            p.clone()
        }
        _ => PatchedFlow {
            flow_ref: tap.spec.flow_ref.clone(),
            output: output.to_owned(),
            mode: tap.spec.mode,
            logging: Some(logging_name),
            config_checks_before: before,
            config_accepted: false,
            since: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(status::now())),
        },
    };
    // Judged until a check with the tap passed; never after (see `trial`).
    let mut recheck = None;
    match trial::judge(ctx, tap, &record, &logging, trial::patched_for(&record)) {
        trial::Verdict::Accepted => {
            ctx.retrying.lock().unwrap().remove(&tap.uid().unwrap_or_default());
            if !record.config_accepted {
                record.config_accepted = true;
                record.config_checks_before = logging.config_checks().into_keys().collect();
            }
        }
        trial::Verdict::Pending => recheck = Some(Duration::from_secs(3)),
        trial::Verdict::Failed(r) => {
            ctx.retrying.lock().unwrap().remove(&tap.uid().unwrap_or_default());
            children::teardown(tap, Some(&record), ctx).await?;
            return Ok(Step {
                recheck: Some(ctx.config.config_retry),
                ..refuse(OutputState::Ready, FlowState::Refused(r))
            });
        }
        trial::Verdict::Unclear(r) => {
            ctx.retrying.lock().unwrap().insert(tap.uid().unwrap_or_default());
            // Not blamed: the flow restored, the tap tries again alone, a little later.
            children::unpatch(tap, &record, ctx).await?;
            return Ok(Step {
                recheck: Some(crate::backoff::jittered(Duration::from_secs(10), 0.5, 1.5)),
                ..refuse(OutputState::Ready, FlowState::Waiting(r))
            });
        }
    }
    // A configuration with the tap passed its check (an accepted patch always has).
    let checked =
        record.config_accepted || preflight::config_check_since(&logging, &record.config_checks_before) == Some(true);
    // A check that takes a while is worth naming its pod; a quick one, not a list request.
    let checking_long = trial::patched_for(&record).is_some_and(|d| d >= Duration::from_secs(10));
    let check_pod = match (checked, logging.spec.control_namespace.as_deref()) {
        (false, Some(control)) if checking_long => {
            super::check_pod::describe_cached(&ctx.check_pods, &ctx.client, control, &logging.name_any()).await
        }
        _ => None,
    };
    Ok(Step {
        output_state: OutputState::Ready,
        flow_state,
        patched: Some(record),
        recheck,
        quiet: false,
        checked: Some(checked),
        check_pod,
    })
}

/// How long a change that undoes `patched` waits for its Logging's next batch of tap changes,
/// when it may wait at all (see [`holdable`]).
pub(super) fn accepted_change_waits(tap: &FlowTap, patched: Option<&PatchedFlow>, ctx: &Context) -> Option<Duration> {
    let p = patched.filter(|p| holdable(tap, p, ctx))?;
    let gate = ctx.budget.lock().unwrap().ask(
        p.logging.as_deref()?,
        &flow_key(&tap.namespace().unwrap_or_default(), &p.flow_ref),
        &tap.uid().unwrap_or_default(),
        std::time::Instant::now(),
        ctx.config.config_change_interval,
    );
    match gate {
        super::budget::Gate::Wait(wait) => Some(wait),
        super::budget::Gate::Now => None,
    }
}

/// A flow, as the reload budget tells flows apart.
fn flow_key(ns: &str, flow: &crate::k8s::flowtap::FlowRef) -> String {
    format!("{}/{ns}/{}", flow.kind, flow.name)
}

/// Whether undoing `p` may wait for the Logging's next batch: nothing is wrong that the undo
/// would fix. Not when the Logging's current configuration fails its check (the tap may be the
/// cause), nor when logging-operator reports problems naming the tap's output on the flow
/// (with `skipInvalidResources` it drops the whole flow). What the watch caches show; a miss
/// is "something may be wrong": undone at once.
fn holdable(tap: &FlowTap, p: &PatchedFlow, ctx: &Context) -> bool {
    let Some(logging) = p.logging.as_deref() else {
        return false;
    };
    let checks_pass = ctx
        .loggings
        .get(&kube::runtime::reflector::ObjectRef::new(logging))
        .is_some_and(|l| l.config_checks().values().all(|ok| *ok));
    use crate::k8s::logging::HasStatus;
    let ns = tap.namespace().unwrap_or_default();
    let name = &p.flow_ref.name;
    let problems = match p.flow_ref.kind {
        crate::k8s::flowtap::FlowKind::Flow => children::cached(&ctx.flows, &ns, name).map(|f| f.problems()),
        crate::k8s::flowtap::FlowKind::ClusterFlow => {
            children::cached(&ctx.cluster_flows, &ns, name).map(|f| f.problems())
        }
    };
    let flow_fine = problems.is_some_and(|ps| !ps.iter().any(|problem| names_output(problem, &p.output)));
    checks_pass && flow_fine
}

/// Why a change waits for the Logging's next batch, and when that is.
fn change_window(logging: &str, wait: Duration, ctx: &Context) -> Refusal {
    let at = status::now() + wait.max(Duration::from_secs(1));
    Refusal::new(
        CHANGE_WINDOW,
        format!(
            "Logging {logging} takes tap changes at most once every {}s (each is a configuration check and a fluentd reload for everyone on it); this one goes with the next, at {} UTC",
            ctx.config.config_change_interval.as_secs(),
            at.strftime("%H:%M:%S")
        ),
    )
}

/// Several FlowTaps on one flow share its relay tap, and only one of them has an output: the
/// first by (persistent first, then name), the order listeners join in. Another tap shares it;
/// so does the first while a tap before it still has its output in a flow (being deleted), so
/// two outputs never feed one relay tap.
pub(super) fn sharing(taps: &Store<FlowTap>, tap: &FlowTap) -> Option<Shared> {
    let same_flow: Vec<Arc<FlowTap>> = taps
        .state()
        .into_iter()
        .filter(|t| t.metadata.namespace == tap.metadata.namespace && t.spec.flow_ref == tap.spec.flow_ref)
        .collect();
    let order = |t: &FlowTap| (!t.spec.persistent, t.name_any());
    let first = same_flow
        .iter()
        .filter(|t| t.metadata.deletion_timestamp.is_none())
        .min_by_key(|t| order(t))?;
    let shared = |t: &FlowTap| Shared {
        with: t.name_any(),
        phase: t.status.as_ref().and_then(|s| s.phase),
    };
    if first.name_any() != tap.name_any() {
        return Some(shared(first));
    }
    same_flow
        .iter()
        .find(|t| t.name_any() != tap.name_any() && t.status.as_ref().is_some_and(|s| s.patched.is_some()))
        .map(|t| shared(t))
}

/// The `FlowPatched` reason of a tap whose flow ref keeps being removed by someone else.
pub const CONTESTED: &str = "Contested";
/// The `FlowPatched` reason of a tap whose output the flow's status says it cannot use.
pub const FLOW_REJECTS_OUTPUT: &str = "FlowRejectsOutput";

/// Whether a problem logging-operator reports on a flow is about `output` (its messages quote
/// the name: `referenced output "X" not found`, `local output reference: X has problems`).
fn names_output(problem: &str, output: &str) -> bool {
    problem
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
        .any(|word| word == output)
}

/// Whether this repair of `tap`'s flow ref is one too many (see [`CONTESTED_REPAIRS`]).
fn contested(ctx: &Context, tap: &FlowTap) -> bool {
    let now = std::time::Instant::now();
    let mut all = ctx.repairs.lock().unwrap();
    let recent = all.entry(tap.uid().unwrap_or_default()).or_default();
    recent.retain(|t| now.duration_since(*t) < CONTESTED_WINDOW);
    recent.push(now);
    recent.len() >= CONTESTED_REPAIRS
}

/// A refusal that stands until the spec changes: a contested flow (the user decides: Mirror
/// mode, or telling the tool to leave the ref alone), or a failed configuration check or a flow
/// that cannot use the output, which also lift after `retry` (`config_retry`; with how long is
/// left).
fn sticky_refusal(tap: &FlowTap, retry: Duration) -> Option<(Refusal, Option<Duration>)> {
    let status = tap.status.as_ref()?;
    let c = status::condition(&status.conditions, "FlowPatched")?;
    let reason = [preflight::CONFIG_CHECK_FAILED, CONTESTED, FLOW_REJECTS_OUTPUT]
        .into_iter()
        .find(|r| *r == c.reason)?;
    if c.observed_generation != tap.metadata.generation {
        return None;
    }
    let retry_in = if reason != CONTESTED {
        let waited = status::age(&c.last_transition_time, status::now());
        let left = retry.checked_sub(waited).filter(|d| !d.is_zero())?;
        Some(left)
    } else {
        None
    };
    let refusal = Refusal::new(
        reason,
        c.message.trim_start_matches("the flow was restored: ").to_owned(),
    );
    Some((refusal, retry_in))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::context::fixtures::{not_found, Answer};
    use crate::operator::OperatorConfig;
    use serde_json::json;

    fn tap(flow: &str) -> FlowTap {
        serde_json::from_value(json!({
            "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
            "metadata": {"name": "web-tap", "namespace": "shop", "uid": "u-1", "generation": 1},
            "spec": {"flowRef": {"kind": "Flow", "name": flow}},
        }))
        .unwrap()
    }

    fn flow(name: &str) -> Answer {
        (
            200,
            json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Flow",
                   "metadata": {"name": name, "namespace": "shop", "resourceVersion": "7"},
                   "spec": {"localOutputRefs": ["app-logs"]}}),
        )
    }

    fn list(kind: &str) -> Answer {
        (
            200,
            json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": kind,
                   "metadata": {"resourceVersion": "1"}, "items": []}),
        )
    }

    /// Nothing was created or edited: the flow, outputs and everything else left as they were.
    fn changed_nothing(writes: &[String]) -> bool {
        !writes
            .iter()
            .any(|w| w.starts_with("POST ") || w.starts_with("PUT ") || w.starts_with("PATCH "))
    }

    #[tokio::test]
    async fn a_tap_of_a_flow_that_does_not_exist_creates_nothing_and_says_so() {
        let (ctx, api) = Context::test(|_, _| not_found());
        let step = ensure_children(&tap("web"), "logsocket-web-tap", None, &ctx)
            .await
            .unwrap();
        assert_eq!(step.flow_state, FlowState::Missing);
        assert_eq!(
            step.recheck, None,
            "a flow that appears triggers a pass through the watch"
        );
        assert!(changed_nothing(&api.writes()), "{:?}", api.seen());
        assert!(
            api.seen()
                .iter()
                .any(|r| r == "GET /apis/logging.banzaicloud.io/v1beta1/namespaces/shop/flows/web"),
            "the flow is read when the cache does not have it: {:?}",
            api.seen()
        );
    }

    #[tokio::test]
    async fn a_tap_of_a_flow_no_logging_renders_is_refused_before_the_flow_is_touched() {
        let (ctx, api) = Context::test(|method, path| match (method, path) {
            ("GET", "/apis/logging.banzaicloud.io/v1beta1/namespaces/shop/flows/web") => flow("web"),
            ("GET", "/apis/logging.banzaicloud.io/v1beta1/loggings") => list("LoggingList"),
            _ => not_found(),
        });
        let step = ensure_children(&tap("web"), "logsocket-web-tap", None, &ctx)
            .await
            .unwrap();
        match &step.output_state {
            OutputState::Refused(r) => assert_eq!(r.reason, preflight::LOGGING_MISMATCH, "{r:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(step.flow_state, FlowState::Skipped);
        assert!(step.recheck.is_some(), "looked at again: a Logging may appear");
        assert!(changed_nothing(&api.writes()), "{:?}", api.seen());
    }

    /// Flow `shop/web` naming the tap's output, with `status` if given.
    fn patched_flow(status: Option<serde_json::Value>) -> Answer {
        let (code, mut body) = flow("web");
        body["spec"]["localOutputRefs"] = json!(["app-logs", "logsocket-web-tap"]);
        if let Some(status) = status {
            body["status"] = status;
        }
        (code, body)
    }

    /// The one Logging, `all`, rendering namespace `shop`, with `status` if given.
    fn logging_all(status: Option<serde_json::Value>) -> Answer {
        let mut logging = json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Logging",
                                 "metadata": {"name": "all"},
                                 "spec": {"controlNamespace": "logging", "watchNamespaces": ["shop"]}});
        if let Some(status) = status {
            logging["status"] = status;
        }
        (
            200,
            json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "LoggingList",
                   "metadata": {"resourceVersion": "1"}, "items": [logging]}),
        )
    }

    /// The API server of a cluster where `shop/web` is rendered by Logging `all`, the tap's TLS
    /// Secret answers `secret`, and everything else is not there.
    fn with_tls_secret(secret: Answer) -> impl Fn(&str, &str) -> Answer + Send + 'static {
        move |method, path| match (method, path) {
            // Patched: the flow names the tap's output, so a teardown would edit it.
            ("GET", "/apis/logging.banzaicloud.io/v1beta1/namespaces/shop/flows/web") => patched_flow(None),
            ("GET", "/apis/logging.banzaicloud.io/v1beta1/loggings") => logging_all(None),
            ("GET", "/api/v1/namespaces/shop/secrets/tap-tls") => secret.clone(),
            _ => not_found(),
        }
    }

    fn tls_context(secret: Answer) -> (Arc<Context>, crate::operator::context::fixtures::ApiServerVerifier) {
        let (ctx, api) = Context::test(with_tls_secret(secret));
        let mut ctx = Arc::into_inner(ctx).unwrap();
        ctx.config = Arc::new(OperatorConfig {
            tls_secret: Some("tap-tls".into()),
            ..OperatorConfig::test("log-socket")
        });
        (Arc::new(ctx), api)
    }

    #[tokio::test]
    async fn an_api_server_shedding_load_is_no_reason_to_tear_a_tap_down() {
        for code in [429, 500, 503, 504] {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                "reason": "TooManyRequests", "message": "the server is busy"});
            let (ctx, api) = tls_context((code, status));
            let result = ensure_children(&tap("web"), "logsocket-web-tap", Some(&accepted()), &ctx).await;
            assert!(result.is_err(), "{code}: an error to retry with backoff, not a refusal");
            assert!(
                api.writes().is_empty(),
                "{code}: nothing unpatched or deleted: {:?}",
                api.seen()
            );
        }
    }

    #[tokio::test]
    async fn a_tls_secret_that_is_not_there_refuses_the_tap() {
        let (ctx, api) = tls_context(not_found());
        let step = ensure_children(&tap("web"), "logsocket-web-tap", None, &ctx)
            .await
            .unwrap();
        match &step.output_state {
            OutputState::Refused(r) => assert_eq!(r.reason, preflight::SECRET_MISSING, "{r:?}"),
            other => panic!("expected SecretMissing, got {other:?}"),
        }
        // A definite refusal restores the flow (it named the output) and creates nothing.
        assert_eq!(
            api.writes(),
            ["PUT /apis/logging.banzaicloud.io/v1beta1/namespaces/shop/flows/web"],
            "{:?}",
            api.seen()
        );
    }

    #[tokio::test]
    async fn a_refused_configuration_check_stands_until_the_spec_changes_or_its_retry_time() {
        let refused_at = |ago: i64| {
            let at = k8s_openapi::jiff::Timestamp::from_second(status::now().as_second() - ago).unwrap();
            let mut tap = tap("web");
            tap.status = Some(
                serde_json::from_value(json!({
                    "conditions": [{"type": "FlowPatched", "status": "False", "reason": preflight::CONFIG_CHECK_FAILED,
                                    "observedGeneration": 1,
                                    "message": "fluentd rejected the configuration", "lastTransitionTime": at.to_string()}],
                }))
                .unwrap(),
            );
            tap
        };
        let (ctx, api) = Context::test(|_, _| not_found());
        let mut tap = refused_at(60);
        let step = ensure_children(&tap, "logsocket-web-tap", None, &ctx).await.unwrap();
        match &step.flow_state {
            FlowState::Refused(r) => assert_eq!(r.reason, preflight::CONFIG_CHECK_FAILED),
            other => panic!("expected the sticky refusal, got {other:?}"),
        }
        let retry = step.recheck.expect("looked at again when the retry is due");
        assert!(
            retry <= trial::CONFIG_RETRY - Duration::from_secs(59)
                && retry >= trial::CONFIG_RETRY - Duration::from_secs(62),
            "retried {:?} after the refusal, not before: {retry:?}",
            trial::CONFIG_RETRY
        );
        assert!(changed_nothing(&api.writes()), "{:?}", api.seen());
        tap.metadata.generation = Some(2);
        let step = ensure_children(&tap, "logsocket-web-tap", None, &ctx).await.unwrap();
        assert_eq!(step.flow_state, FlowState::Missing, "a new spec is looked at afresh");
        let due = refused_at(trial::CONFIG_RETRY.as_secs() as i64 + 1);
        let step = ensure_children(&due, "logsocket-web-tap", None, &ctx).await.unwrap();
        assert_eq!(step.flow_state, FlowState::Missing, "tried again once the retry is due");
    }

    /// An API server where `shop/web` names the tap's output (its status `flow_status`), Logging
    /// `all` renders it, and the output exists with an endpoint an older version generated.
    fn patched_world(flow_status: serde_json::Value) -> impl Fn(&str, &str) -> Answer + Send + 'static {
        move |method, path| match (method, path) {
            ("GET", "/apis/logging.banzaicloud.io/v1beta1/namespaces/shop/flows/web") => {
                patched_flow(Some(flow_status.clone()))
            }
            ("PUT", "/apis/logging.banzaicloud.io/v1beta1/namespaces/shop/flows/web") => flow("web"),
            ("GET", "/apis/logging.banzaicloud.io/v1beta1/loggings") => {
                logging_all(Some(json!({"configCheckResults": {"abc": true}})))
            }
            ("POST", "/apis/logging.banzaicloud.io/v1beta1/namespaces/shop/outputs") => (
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "AlreadyExists"}),
            ),
            ("GET" | "PUT", "/apis/logging.banzaicloud.io/v1beta1/namespaces/shop/outputs/logsocket-web-tap") => (
                200,
                json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Output",
                       "metadata": {"name": "logsocket-web-tap", "namespace": "shop", "resourceVersion": "9",
                                    "uid": "o-1", "creationTimestamp": "2026-01-01T00:00:00Z",
                                    "labels": {(crate::operator::MANAGED_BY.0): crate::operator::MANAGED_BY.1},
                                    "annotations": {(crate::operator::TAP_UID): "u-1"},
                                    "finalizers": [crate::operator::in_use::IN_USE]},
                       "spec": {"loggingRef": "all", "http": {"endpoint": "http://old.example:10000/ingest"}},
                       "status": {"active": true}}),
            ),
            _ => not_found(),
        }
    }

    fn accepted() -> PatchedFlow {
        PatchedFlow {
            flow_ref: tap("web").spec.flow_ref.clone(),
            output: "logsocket-web-tap".into(),
            mode: TapMode::Patch,
            logging: Some("all".into()),
            config_checks_before: vec![],
            config_accepted: true,
            since: None,
        }
    }

    #[tokio::test]
    async fn an_output_log_socket_rewrites_under_a_flow_is_judged_again_not_taken_as_accepted() {
        // The tap was accepted with an output an older version generated (another endpoint);
        // logging-operator's `active: true` judged that spec, not the one written now.
        let (ctx, api) = Context::test(patched_world(json!({"active": true})));
        let step = ensure_children(&tap("web"), "logsocket-web-tap", Some(&accepted()), &ctx)
            .await
            .unwrap();
        assert!(
            api.writes()
                .contains(&"PUT /apis/logging.banzaicloud.io/v1beta1/namespaces/shop/outputs/logsocket-web-tap".into()),
            "the spec is put back: {:?}",
            api.seen()
        );
        let record = step.patched.expect("still in the flow");
        assert!(!record.config_accepted, "on trial again: {record:?}");
        assert!(record.since.is_some(), "its trial counts from the rewrite: {record:?}");
        assert_eq!(
            record.config_checks_before,
            ["abc"],
            "judged by checks after the rewrite"
        );
        assert!(step.recheck.is_some(), "looked at again until a check judged it");
    }

    #[tokio::test]
    async fn a_flow_that_cannot_use_the_output_is_restored_at_once_and_the_tap_refused() {
        // With skipInvalidResources logging-operator drops the whole flow and says why in its
        // status; without, the whole Logging stops rendering.
        let problem = "local output reference: logsocket-web-tap has problems";
        let (ctx, api) = Context::test(patched_world(
            json!({"active": false, "problems": [problem], "problemsCount": 1}),
        ));
        let step = ensure_children(&tap("web"), "logsocket-web-tap", Some(&accepted()), &ctx)
            .await
            .unwrap();
        match &step.flow_state {
            FlowState::Refused(r) => {
                assert_eq!(r.reason, FLOW_REJECTS_OUTPUT);
                assert!(r.message.contains(problem), "logging-operator's words: {r:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(step.patched.is_none());
        assert_eq!(step.recheck, Some(trial::CONFIG_RETRY));
        assert!(
            api.writes()
                .contains(&"PUT /apis/logging.banzaicloud.io/v1beta1/namespaces/shop/flows/web".into()),
            "the flow restored: {:?}",
            api.seen()
        );
    }

    #[test]
    fn a_problem_is_about_the_output_only_when_it_names_it_whole() {
        assert!(names_output(
            "referenced output \"logsocket-web\" not found",
            "logsocket-web"
        ));
        assert!(names_output(
            "local output reference: logsocket-web has problems",
            "logsocket-web"
        ));
        assert!(!names_output(
            "local output reference: logsocket-web-2 has problems",
            "logsocket-web"
        ));
        assert!(!names_output("referenced output loki not found", "logsocket-web"));
    }
}
