//! A tap on trial: the [`TRIAL`] after the flow first names its output, in which
//! logging-operator checks a configuration with it. A failed check can be blamed on the tap only
//! if the tap was alone on trial on its Logging and the Logging's configuration passed before:
//! logging-operator keeps one result per *current* configuration (it prunes the rest), and a
//! result does not say which configuration it was for (a check under way when the flow changed
//! may finish after), so "a failed check appeared after my patch" says nothing about whose
//! change failed when anything else changed too.
//!
//! So: a new patch waits while the Logging's current configuration fails (another tenant's
//! mistake is not this tap's). A failure within the trial, the tap alone on it, is the tap's
//! (`ConfigCheckFailed`, tried again after [`CONFIG_RETRY`]); with others on trial it restores
//! the flow without blame, and the taps it concerns are tried again one at a time (a first patch
//! does not wait: failures are rare, and waiting would cost every tap its first minute). After the trial, with the checks passing, the tap is accepted and later failures are
//! never blamed on it. What this cannot see: another tenant changing their own Flow within the
//! same trial (blamed on the tap, which is retried after [`CONFIG_RETRY`]), and a check that
//! takes longer than the trial (the tap is then accepted; the Logging keeps running its
//! previous configuration, and new patches wait while it fails).

use super::context::Context;
use super::preflight;
use super::status::{self, Refusal};
use crate::k8s::flowtap::{FlowTap, PatchedFlow};
use crate::k8s::logging::Logging;
use kube::ResourceExt;
use std::time::Duration;

/// A new patch waits: the Logging's current configuration fails its check.
pub const LOGGING_CONFIG_INVALID: &str = "LoggingConfigInvalid";
/// A new patch waits: another tap of the same Logging is on trial.
pub const CONFIG_CHECK_QUEUED: &str = "ConfigCheckQueued";
/// A check failed with several taps on trial: restored without blame, tried again in turn.
pub const CONFIG_CHECK_UNCLEAR: &str = "ConfigCheckUnclear";
/// A tap whose configuration check failed is tried again after this long (the Logging's
/// configuration must pass by then): one more render and check of the shared Logging at most
/// this often, for a tap that really is broken.
pub const CONFIG_RETRY: Duration = Duration::from_secs(600);
/// How long a patch stays on trial: logging-operator's check of a configuration with it must
/// come within. A passing check within it may be of a configuration from before the patch, so
/// the tap is accepted only at its end (the Logging's results passing); a configuration
/// checked before is not checked again, so no new result is needed.
pub const TRIAL: Duration = Duration::from_secs(30);

/// What the checks since the patch say about the tap.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// A check with the tap passed (or it passed before): the tap is in the configuration.
    Accepted,
    /// No check of a configuration with the tap yet.
    Pending,
    /// The first check with the tap, alone on trial, failed: the tap's fault.
    Failed(Refusal),
    /// A check failed, but not clearly because of the tap (others were on trial too): restore
    /// the flow without blame and try again later.
    Unclear(Refusal),
}

/// The taps other than `tap` on trial on Logging `logging`: patched, not yet accepted. What
/// this controller wrote last wins over the watch cache, which may not show it yet.
pub fn others_on_trial(ctx: &Context, tap: &FlowTap, logging: &str) -> Vec<String> {
    let written = ctx.written.lock().unwrap();
    let mut names: Vec<String> = ctx
        .taps
        .state()
        .iter()
        .filter(|t| t.uid() != tap.uid())
        .filter(|t| {
            let patched = match written.get(&t.uid().unwrap_or_default()) {
                Some(w) => w.clone(),
                None => t.status.as_ref().and_then(|s| s.patched.clone()),
            };
            patched.is_some_and(|p| p.logging.as_deref() == Some(logging) && !p.config_accepted)
        })
        .map(|t| t.name_any())
        .collect();
    names.sort();
    names
}

/// The reason of `tap`'s `FlowPatched` condition, as its status last said.
fn flow_patched_reason(tap: &FlowTap) -> Option<&str> {
    let status = tap.status.as_ref()?;
    status::condition(&status.conditions, "FlowPatched").map(|c| c.reason.as_str())
}

/// Whether `tap` takes its turn: it is retrying after a check that failed with others on
/// trial (or it already waited). A first patch does not wait for others: failures are rare,
/// and only when one comes are the taps it concerns tried again one at a time.
pub fn takes_turns(tap: &FlowTap) -> bool {
    flow_patched_reason(tap).is_some_and(|r| {
        [
            CONFIG_CHECK_UNCLEAR,
            CONFIG_CHECK_QUEUED,
            preflight::CONFIG_CHECK_FAILED,
        ]
        .contains(&r)
    })
}

/// [`takes_turns`], or this controller has just found the tap's check unclear (its status may
/// not be in the cache yet).
fn retrying(ctx: &Context, tap: &FlowTap) -> bool {
    takes_turns(tap) || ctx.retrying.lock().unwrap().contains(&tap.uid().unwrap_or_default())
}

/// Whether a new patch of `tap` may start its trial on `logging` now; why it waits otherwise.
pub fn admit(ctx: &Context, tap: &FlowTap, logging: &Logging) -> Result<(), Refusal> {
    let name = logging.name_any();
    if logging.config_checks().values().any(|ok| !ok) {
        return Err(Refusal::new(
            LOGGING_CONFIG_INVALID,
            format!(
                "the current configuration of Logging {name} fails logging-operator's check (not because of this tap: the flow does not name it); the tap waits until the Logging's configuration passes (kubectl get logging {name} -o jsonpath='{{.status.configCheckResults}}')"
            ),
        ));
    }
    if !retrying(ctx, tap) {
        return Ok(());
    }
    // Taps retrying together go in order (by name; those of the tap's namespace, which share
    // its Logging), so they do not land in one configuration again.
    let before_it = ctx
        .taps
        .state()
        .iter()
        .filter(|t| t.uid() != tap.uid() && t.namespace() == tap.namespace() && retrying(ctx, t))
        .filter(|t| t.status.as_ref().is_none_or(|s| s.patched.is_none()))
        .filter(|t| flow_patched_reason(t) != Some(preflight::CONFIG_CHECK_FAILED))
        .map(|t| t.name_any())
        .filter(|n| *n < tap.name_any())
        .min();
    let waiting_for = others_on_trial(ctx, tap, &name).into_iter().next().or(before_it);
    match waiting_for {
        Some(other) => Err(Refusal::new(
            CONFIG_CHECK_QUEUED,
            format!(
                "FlowTap {other} is tried before this one on Logging {name}: after a check that failed with several taps, they are tried one at a time, so the failure is blamed on the right one"
            ),
        )),
        None => Ok(()),
    }
}

/// The verdict on `record` (a patch of `tap`) from `logging`'s checks; `patched_for`: how long
/// the flow has named the output, if known.
pub fn judge(
    ctx: &Context,
    tap: &FlowTap,
    record: &PatchedFlow,
    logging: &Logging,
    patched_for: Option<Duration>,
) -> Verdict {
    if record.config_accepted {
        return Verdict::Accepted;
    }
    let name = logging.name_any();
    let settled = patched_for.is_some_and(|d| d >= TRIAL);
    match preflight::config_check_since(logging, &record.config_checks_before) {
        // Within the trial a failure is the tap's if it was alone; after it, not the tap's.
        Some(false) if !settled => {
            let failing: Vec<String> = logging
                .config_checks()
                .into_iter()
                .filter(|(hash, ok)| !ok && !record.config_checks_before.contains(hash))
                .map(|(hash, _)| format!("{name}/{hash}"))
                .collect();
            let mut unclear = ctx.unclear_checks.lock().unwrap();
            // A failure already found unclear for another tap is unclear for every tap of it:
            // the last one judged must not take the blame because the others left the trial.
            let known = failing.iter().any(|f| unclear.contains(f));
            let others = others_on_trial(ctx, tap, &name);
            if !others.is_empty() {
                unclear.extend(failing);
            }
            if others.is_empty() && !known {
                Verdict::Failed(Refusal::new(
                    preflight::CONFIG_CHECK_FAILED,
                    format!(
                        "logging-operator's check of the fluentd configuration with the tap failed (Logging {name}); the previous configuration kept running. Tried again in {} minutes, or at once when the spec changes",
                        ctx.config.config_retry.as_secs().div_ceil(60)
                    ),
                ))
            } else {
                let with = match others.is_empty() {
                    true => "other taps".to_owned(),
                    false => format!("FlowTap(s) {}", others.join(", ")),
                };
                Verdict::Unclear(Refusal::new(
                    CONFIG_CHECK_UNCLEAR,
                    format!(
                        "logging-operator's check of a configuration with this tap and {with} failed; not clearly this tap's fault, so its flow was restored and it tries again alone"
                    ),
                ))
            }
        }
        _ if settled => Verdict::Accepted,
        _ => Verdict::Pending,
    }
}

/// How long the flow has named the tap's output under `record`: since the patch was made.
pub fn patched_for(record: &PatchedFlow) -> Option<Duration> {
    record.since.as_ref().map(|t| status::age(t, status::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::context::fixtures::not_found;
    use serde_json::json;

    fn tap(name: &str, patched: Option<(&str, bool)>) -> FlowTap {
        let patched = patched.map(|(logging, accepted)| {
            json!({"flowRef": {"kind": "Flow", "name": name}, "output": format!("logsocket-{name}"),
                   "mode": "Patch", "logging": logging, "configAccepted": accepted})
        });
        serde_json::from_value(json!({
            "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {"flowRef": {"kind": "Flow", "name": name}},
            "status": {"patched": patched},
        }))
        .unwrap()
    }

    fn logging(checks: serde_json::Value) -> Logging {
        serde_json::from_value(json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Logging",
            "metadata": {"name": "main"}, "spec": {"controlNamespace": "logging"},
            "status": {"configCheckResults": checks},
        }))
        .unwrap()
    }

    fn record(before: &[&str]) -> PatchedFlow {
        serde_json::from_value(
            json!({"flowRef": {"kind": "Flow", "name": "web"}, "output": "logsocket-web",
                                      "mode": "Patch", "logging": "main",
                                      "configChecksBefore": before}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_new_patch_waits_while_the_loggings_configuration_fails_and_a_retry_takes_its_turn() {
        let web = tap("web", None);
        let (ctx, _) = Context::test_with_taps(|_, _| not_found(), vec![web.clone(), tap("api", Some(("main", true)))]);
        assert_eq!(admit(&ctx, &web, &logging(json!({"h1": true}))), Ok(()));
        let invalid = admit(&ctx, &web, &logging(json!({"h1": true, "h2": false}))).unwrap_err();
        assert_eq!(
            invalid.reason, LOGGING_CONFIG_INVALID,
            "another flow's mistake: wait, untouched"
        );
        let (ctx, _) = Context::test_with_taps(
            |_, _| not_found(),
            vec![
                web.clone(),
                tap("api", Some(("main", false))),
                tap("db", Some(("other", false))),
            ],
        );
        // A first patch does not wait for others on trial...
        assert_eq!(admit(&ctx, &web, &logging(json!({"h1": true}))), Ok(()));
        // ...a tap retrying after a failure shared with others takes its turn.
        let mut retrying = web.clone();
        retrying.status.get_or_insert_with(Default::default).conditions = vec![serde_json::from_value(json!({
            "type": "FlowPatched", "status": "False", "reason": CONFIG_CHECK_UNCLEAR, "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}))
        .unwrap()];
        assert!(takes_turns(&retrying) && !takes_turns(&web));
        let queued = admit(&ctx, &retrying, &logging(json!({"h1": true}))).unwrap_err();
        assert_eq!(queued.reason, CONFIG_CHECK_QUEUED);
        assert!(queued.message.contains("FlowTap api"), "{}", queued.message);
        // What this controller just wrote counts before the cache shows it.
        let (ctx, _) = Context::test_with_taps(|_, _| not_found(), vec![retrying.clone(), tap("api", None)]);
        ctx.written.lock().unwrap().insert("uid-api".into(), Some(record(&[])));
        assert_eq!(
            admit(&ctx, &retrying, &logging(json!({}))).unwrap_err().reason,
            CONFIG_CHECK_QUEUED
        );
    }

    #[tokio::test]
    async fn a_failed_check_is_blamed_only_on_a_tap_alone_on_trial_and_never_after_its_trial() {
        let web = tap("web", Some(("main", false)));
        let alone = Context::test_with_taps(|_, _| not_found(), vec![web.clone()]).0;
        let before = record(&["h1"]);
        let failed = logging(json!({"h2": false}));
        let soon = Some(Duration::from_secs(5));
        assert!(
            matches!(judge(&alone, &web, &before, &failed, soon), Verdict::Failed(r) if r.reason == preflight::CONFIG_CHECK_FAILED)
        );
        let together =
            Context::test_with_taps(|_, _| not_found(), vec![web.clone(), tap("api", Some(("main", false)))]).0;
        assert!(
            matches!(judge(&together, &web, &before, &failed, soon), Verdict::Unclear(r) if r.reason == CONFIG_CHECK_UNCLEAR)
        );
        // The other, judged after this one left the trial, is not blamed for the same failure.
        let api = tap("api", Some(("main", false)));
        let after = Context::test_with_taps(|_, _| not_found(), vec![api.clone()]).0;
        *after.unclear_checks.lock().unwrap() = together.unclear_checks.lock().unwrap().clone();
        assert!(matches!(
            judge(&after, &api, &before, &failed, soon),
            Verdict::Unclear(_)
        ));
        let accepted = PatchedFlow {
            config_accepted: true,
            ..before.clone()
        };
        assert_eq!(
            judge(&alone, &web, &accepted, &failed, soon),
            Verdict::Accepted,
            "later failures are not the tap's"
        );
        assert_eq!(
            judge(&alone, &web, &before, &failed, Some(TRIAL)),
            Verdict::Accepted,
            "nor after its trial"
        );
        // A pass within the trial may be a check of the configuration from before the patch:
        // the tap stays on trial, and the check with it that fails next is still its own.
        let passed = logging(json!({"h2": true}));
        assert_eq!(judge(&alone, &web, &before, &passed, soon), Verdict::Pending);
        assert!(matches!(
            judge(&alone, &web, &before, &logging(json!({"h3": false})), soon),
            Verdict::Failed(_)
        ));
        assert_eq!(judge(&alone, &web, &before, &passed, Some(TRIAL)), Verdict::Accepted);
        // A configuration checked before is not checked again: no new result is needed.
        assert_eq!(
            judge(&alone, &web, &before, &logging(json!({"h1": true})), soon),
            Verdict::Pending
        );
        let reused = judge(&alone, &web, &before, &logging(json!({"h1": true})), Some(TRIAL));
        assert_eq!(reused, Verdict::Accepted, "never waits forever");
    }
}
