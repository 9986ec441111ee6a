//! A FlowTap's status as a pure function of what the controller observed: its conditions and
//! phase, and whether an ephemeral tap's linger is over. No API calls here, so every rule is
//! unit-tested directly.

use crate::k8s::flowtap::{FlowTap, FlowTapStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::time::Duration;

/// Why the operator will not patch (or keep patched) a flow for a tap. `reason` is the
/// FlowTap condition reason and the Event reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// How long a new ephemeral tap waits for the session of the listener that created it.
pub const REGISTRATION_GRACE: Duration = Duration::from_secs(5);
/// The `Listening` reason of a tap that has never had a listener.
pub const NO_LISTENER_YET: &str = "NoListenerYet";
/// The `OutputReady`/`FlowPatched` reason of a FlowTap that shares another's output.
pub const SHARED: &str = "Shared";
/// A tap whose last record is older than this is not `Receiving`.
pub const RECEIVING_WINDOW: Duration = Duration::from_secs(120);

/// What became of the generated output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputState {
    /// Validated by logging-operator without problems.
    Ready,
    /// Created; logging-operator has not validated it yet (this much of the wait is left).
    Validating(Duration),
    NameTaken,
    /// Not created, or not to be named by the flow (see [`Refusal`]).
    Refused(Refusal),
    /// None of its own: another FlowTap's output feeds this flow's relay tap.
    Shared(Shared),
}

/// The FlowTap whose output feeds a flow's relay tap, for the others on that flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    pub with: String,
    /// Its phase, which a sharing tap shows as its own.
    pub phase: Option<Phase>,
}

/// What became of the flow side (the ref, or the mirror flow).
#[derive(Debug, Clone, PartialEq)]
pub enum FlowState {
    Patched,
    Repaired,
    Mirrored,
    Problems(Vec<String>),
    NameTaken(String),
    Missing,
    Skipped,
    /// Restored, and left alone (see [`Refusal`]).
    Refused(Refusal),
    /// Fed through another FlowTap's output.
    Shared(Shared),
    /// Left as it is for now, and why (a new patch waits its turn, see `trial`).
    Waiting(Refusal),
}

/// Now, to the second (condition times are whole seconds).
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time")
}

/// Time since `t`, zero if `t` is in the future.
pub fn age(t: &Time, now: Timestamp) -> Duration {
    Duration::from_secs((now.as_second() - t.0.as_second()).max(0) as u64)
}

/// Where an ephemeral tap stands with its linger period.
#[derive(Debug, Clone, PartialEq)]
pub struct Linger {
    /// Time left before the tap is deleted; `None` when it is not counting down (persistent,
    /// or listened to). `Some(ZERO)`: delete it now.
    pub left: Option<Duration>,
    /// How long it has been without listeners.
    pub idle: Duration,
    /// Whether it has never had a listener.
    pub never_listened: bool,
}

/// Whether the linger of `tap` (with these sessions) is over. A listener creates its tap first
/// and registers its session next: a tap that never had a listener and is younger than
/// [`REGISTRATION_GRACE`] is waiting for that, not idle.
pub fn linger(tap: &FlowTap, linger: Duration, now: Timestamp) -> Linger {
    let status = tap.status.clone().unwrap_or_default();
    let listening = !status.sessions.is_empty();
    let idle_since = condition(&status.conditions, "Listening")
        .filter(|c| c.status == "False")
        .map(|c| c.last_transition_time.clone())
        .or_else(|| {
            if status.conditions.is_empty() {
                tap.creation_timestamp()
            } else if !listening && condition(&status.conditions, "Listening").is_some_and(|c| c.status == "True") {
                // The last listener left just now (this pass is the first to see it): with no
                // linger the tap ends without first writing that down.
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now))
            } else {
                None
            }
        });
    let never_listened = condition(&status.conditions, "Listening").is_none_or(|c| c.reason == NO_LISTENER_YET);
    let left = match &idle_since {
        Some(since) if !tap.spec.persistent && !listening => {
            let born = tap.creation_timestamp().map_or(REGISTRATION_GRACE, |t| age(&t, now));
            let grace = match never_listened {
                true => REGISTRATION_GRACE.saturating_sub(born),
                false => Duration::ZERO,
            };
            Some(linger.saturating_sub(age(since, now)).max(grace))
        }
        _ => None,
    };
    Linger {
        left,
        idle: idle_since.as_ref().map(|s| age(s, now)).unwrap_or_default(),
        never_listened,
    }
}

/// What the controller found on one pass.
pub struct Observed<'a> {
    pub output: &'a str,
    pub output_state: &'a OutputState,
    pub flow_state: &'a FlowState,
    pub never_listened: bool,
}

/// The conditions and phase of `tap` after a pass that observed `seen`. Conditions keep their
/// transition time while their status stays the same.
pub fn derive(tap: &FlowTap, seen: &Observed, now: Timestamp) -> (Vec<Condition>, Phase) {
    let status = tap.status.clone().unwrap_or_default();
    let generation = tap.metadata.generation;
    let mut conditions = status.conditions.clone();
    let mut set = |type_: &str, (ok, reason, message): (bool, &str, String)| {
        set_condition(&mut conditions, type_, ok, reason, &message, now, generation)
    };
    set("OutputReady", output_ready(seen));
    set("FlowPatched", flow_patched(tap, seen));
    set("Listening", listening(&status, seen.never_listened));
    set("Receiving", receiving(&status, now));
    let phase = match (seen.output_state, seen.flow_state) {
        (OutputState::Shared(s), _) => s.phase.unwrap_or(Phase::Pending),
        (OutputState::NameTaken | OutputState::Refused(_), _)
        | (_, FlowState::Missing | FlowState::NameTaken(_) | FlowState::Refused(_)) => Phase::Failed,
        (_, FlowState::Problems(_)) => Phase::Degraded,
        (OutputState::Ready, FlowState::Patched | FlowState::Repaired | FlowState::Mirrored) => Phase::Active,
        _ => Phase::Pending,
    };
    let ready = match phase {
        Phase::Active => (
            true,
            "Active".to_owned(),
            "the tap's output is in the flow and validated".to_owned(),
        ),
        // Not ready: the cause, in the words of the condition that holds it back (Kubernetes
        // conventions: a reason that names the cause, a message that says what to do).
        other => ["OutputReady", "FlowPatched"]
            .iter()
            .find_map(|t| condition(&conditions, t).filter(|c| c.status == "False"))
            .map(|c| (false, c.reason.clone(), c.message.clone()))
            .unwrap_or_else(|| (false, phase_name(other).to_owned(), phase_message(other).to_owned())),
    };
    set_condition(&mut conditions, "Ready", ready.0, &ready.1, &ready.2, now, generation);
    (conditions, phase)
}

fn phase_message(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "the tap is being set up",
        Phase::Active => "the tap's output is in the flow and validated",
        Phase::Degraded => "the tap is in place, but logging-operator reports problems for the flow",
        Phase::Failed => "the tap cannot work as declared",
        Phase::Terminating => "the tap is being removed: the flow is restored first, then its output deleted",
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Active => "Active",
        Phase::Degraded => "Degraded",
        Phase::Failed => "Failed",
        Phase::Terminating => "Terminating",
    }
}

fn output_ready(seen: &Observed) -> (bool, &'static str, String) {
    match seen.output_state {
        OutputState::Ready => (true, "Validated", "logging-operator validated the output".to_owned()),
        OutputState::Validating(left) => (
            false,
            "Validating",
            format!(
                "waiting for logging-operator to validate the output (at most {}s more); the flow is not changed before",
                left.as_secs()
            ),
        ),
        OutputState::Refused(r) => (false, r.reason, r.message.clone()),
        OutputState::Shared(s) => (
            s.phase == Some(Phase::Active),
            SHARED,
            format!("FlowTap {} feeds this flow's tap; this FlowTap has no output of its own", s.with),
        ),
        OutputState::NameTaken => (
            false,
            "NameTaken",
            format!(
                "an output named {} exists and is not managed by log-socket",
                seen.output
            ),
        ),
    }
}

fn flow_patched(tap: &FlowTap, seen: &Observed) -> (bool, &'static str, String) {
    let (output, flow) = (seen.output, &tap.spec.flow_ref);
    match seen.flow_state {
        FlowState::Patched => (true, "Appended", format!("{output} is the last output of the flow")),
        FlowState::Repaired => (
            true,
            "Repaired",
            format!("{output} was missing from the flow and was appended again"),
        ),
        FlowState::Mirrored => (
            true,
            "Mirrored",
            format!(
                "{} {output} copies the match and filters of {} and feeds the tap; {} is unchanged",
                flow.kind, flow.name, flow.name
            ),
        ),
        FlowState::Problems(p) => (
            false,
            "FlowProblems",
            format!("logging-operator reports: {}", p.join("; ")),
        ),
        FlowState::NameTaken(mirror) => (
            false,
            "NameTaken",
            format!("a {} named {mirror} exists and is not managed by log-socket", flow.kind),
        ),
        FlowState::Missing => (
            false,
            "FlowNotFound",
            format!("{} {} does not exist", flow.kind, flow.name),
        ),
        FlowState::Skipped => (
            false,
            "OutputNotReady",
            "the flow is left as it is until the output is validated".to_owned(),
        ),
        FlowState::Refused(r) => (false, r.reason, format!("the flow was restored: {}", r.message)),
        FlowState::Waiting(r) => (false, r.reason, r.message.clone()),
        FlowState::Shared(s) => (
            s.phase == Some(Phase::Active),
            SHARED,
            format!("FlowTap {} has its output in the flow", s.with),
        ),
    }
}

fn listening(status: &FlowTapStatus, never_listened: bool) -> (bool, &'static str, String) {
    if !status.sessions.is_empty() {
        (true, "Listeners", format!("{} listener(s)", status.sessions.len()))
    } else if never_listened {
        (false, NO_LISTENER_YET, "nobody has listened yet".to_owned())
    } else {
        (false, "NoListeners", "nobody is listening".to_owned())
    }
}

fn receiving(status: &FlowTapStatus, now: Timestamp) -> (bool, &'static str, String) {
    match &status.last_record_time {
        None => (false, "NoRecordsYet", "no record has arrived yet".to_owned()),
        Some(t) if age(t, now) <= RECEIVING_WINDOW => (true, "Records", "records are arriving".to_owned()),
        // No counter in the message: a status that changes every pass costs a write each time.
        Some(_) => (false, "Quiet", "no record for over two minutes".to_owned()),
    }
}

/// The condition of `type_`, if set.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    // A refusal that is timed (a failed configuration check is tried again after a while)
    // counts from when it was made, even when the condition was already False for another
    // reason.
    let timed = reason == super::preflight::CONFIG_CHECK_FAILED;
    let transition = match condition(conditions, type_) {
        Some(c) if c.status == status && (!timed || c.reason == reason) => c.last_transition_time.clone(),
        _ => Time(now),
    };
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: transition,
        observed_generation: generation,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::flowtap::Session;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn tap(created: i64, persistent: bool) -> FlowTap {
        let spec = serde_json::json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": persistent});
        let mut tap = FlowTap::new("flow-web", serde_json::from_value(spec).unwrap());
        tap.metadata.creation_timestamp = Some(Time(at(created)));
        tap.metadata.generation = Some(3);
        tap
    }

    fn observed<'a>(output: &'a OutputState, flow: &'a FlowState) -> Observed<'a> {
        Observed {
            output: "logsocket-flow-web",
            output_state: output,
            flow_state: flow,
            never_listened: false,
        }
    }

    fn session() -> Session {
        serde_json::from_value(
            serde_json::json!({"id": "r-1", "user": "alice", "since": "2027-01-15T08:00:00Z", "relay": "relay-0"}),
        )
        .unwrap()
    }

    #[test]
    fn a_new_ephemeral_tap_waits_for_its_first_listener_before_its_linger_counts() {
        let t = tap(0, false);
        let l = linger(&t, Duration::ZERO, at(2));
        assert_eq!(l.left, Some(Duration::from_secs(3)), "the registration grace is left");
        assert!(l.never_listened);
        assert_eq!(linger(&t, Duration::ZERO, at(6)).left, Some(Duration::ZERO));
    }

    #[test]
    fn an_idle_tap_lingers_from_when_its_last_listener_left() {
        let mut t = tap(0, false);
        let (conditions, _) = derive(&t, &observed(&OutputState::Ready, &FlowState::Patched), at(100));
        t.status = Some(FlowTapStatus {
            conditions,
            ..Default::default()
        });
        let l = linger(&t, Duration::from_secs(60), at(130));
        assert_eq!(l.left, Some(Duration::from_secs(30)));
        assert_eq!(l.idle, Duration::from_secs(30));
        assert_eq!(linger(&t, Duration::from_secs(60), at(200)).left, Some(Duration::ZERO));
    }

    #[test]
    fn a_tap_whose_last_listener_just_left_ends_at_once_without_linger_and_lingers_otherwise() {
        let mut t = tap(0, false);
        t.status = Some(FlowTapStatus {
            sessions: vec![session()],
            ..Default::default()
        });
        let (conditions, _) = derive(&t, &observed(&OutputState::Ready, &FlowState::Patched), at(100));
        assert!(condition(&conditions, "Listening").is_some_and(|c| c.status == "True"));
        // The session is gone; the status still says Listening.
        t.status = Some(FlowTapStatus {
            conditions,
            ..Default::default()
        });
        assert_eq!(linger(&t, Duration::ZERO, at(130)).left, Some(Duration::ZERO));
        assert_eq!(
            linger(&t, Duration::from_secs(60), at(130)).left,
            Some(Duration::from_secs(60)),
            "the linger starts now"
        );
        t.spec.persistent = true;
        assert_eq!(linger(&t, Duration::ZERO, at(130)).left, None);
    }

    #[test]
    fn persistent_and_listened_taps_never_linger() {
        assert_eq!(linger(&tap(0, true), Duration::ZERO, at(1000)).left, None);
        let mut t = tap(0, false);
        t.status = Some(FlowTapStatus {
            sessions: vec![session()],
            ..Default::default()
        });
        assert_eq!(linger(&t, Duration::ZERO, at(1000)).left, None);
    }

    #[test]
    fn the_phase_follows_the_output_and_the_flow() {
        let t = tap(0, false);
        let phase = |o: OutputState, f: FlowState| derive(&t, &observed(&o, &f), at(1)).1;
        assert_eq!(phase(OutputState::Ready, FlowState::Patched), Phase::Active);
        assert_eq!(phase(OutputState::Ready, FlowState::Mirrored), Phase::Active);
        assert_eq!(phase(OutputState::Ready, FlowState::Missing), Phase::Failed);
        assert_eq!(phase(OutputState::NameTaken, FlowState::Skipped), Phase::Failed);
        assert_eq!(
            phase(OutputState::Ready, FlowState::Problems(vec!["x".into()])),
            Phase::Degraded
        );
        let refused = || Refusal::new("SecretMissing", "Secret shop/x does not exist");
        assert_eq!(
            phase(OutputState::Refused(refused()), FlowState::Skipped),
            Phase::Failed
        );
        assert_eq!(phase(OutputState::Ready, FlowState::Refused(refused())), Phase::Failed);
        assert_eq!(
            phase(OutputState::Validating(Duration::from_secs(9)), FlowState::Skipped),
            Phase::Pending
        );
        assert_eq!(phase(OutputState::Ready, FlowState::Skipped), Phase::Pending);
    }

    #[test]
    fn conditions_say_why_and_keep_their_transition_time_while_unchanged() {
        let mut t = tap(0, false);
        let seen = observed(&OutputState::Ready, &FlowState::Missing);
        let (first, _) = derive(&t, &seen, at(10));
        let flow = condition(&first, "FlowPatched").unwrap();
        assert_eq!((flow.status.as_str(), flow.reason.as_str()), ("False", "FlowNotFound"));
        assert_eq!(flow.message, "Flow web does not exist");
        assert_eq!(flow.observed_generation, Some(3));
        t.status = Some(FlowTapStatus {
            conditions: first.clone(),
            ..Default::default()
        });
        let (again, _) = derive(&t, &seen, at(50));
        assert_eq!(again, first, "nothing changed, nothing to write");
        let (fixed, _) = derive(&t, &observed(&OutputState::Ready, &FlowState::Patched), at(60));
        let flow = condition(&fixed, "FlowPatched").unwrap();
        assert_eq!(flow.last_transition_time, Time(at(60)));
        let names: Vec<_> = fixed.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            names,
            ["FlowPatched", "Listening", "OutputReady", "Ready", "Receiving"],
            "sorted"
        );
        let ready = condition(&fixed, "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.observed_generation), ("True", Some(3)));
    }

    #[test]
    fn a_tap_that_is_not_ready_names_the_cause_and_what_to_do_in_its_ready_condition() {
        let t = tap(0, false);
        let refused = Refusal::new("SecretMissing", "Secret shop/x does not exist: create it");
        let (conditions, _) = derive(
            &t,
            &observed(&OutputState::Refused(refused), &FlowState::Skipped),
            at(1),
        );
        let ready = condition(&conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()),
            ("False", "SecretMissing", "Secret shop/x does not exist: create it")
        );
        let (conditions, _) = derive(&t, &observed(&OutputState::Ready, &FlowState::Missing), at(1));
        let ready = condition(&conditions, "Ready").unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("FlowNotFound", "Flow web does not exist")
        );
    }
}
