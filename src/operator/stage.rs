//! A tap's stage (`status.stage`): what it waits for on its way to records, from what a pass
//! observed. No I/O; the start time is kept while the stage stays the same, so "ConfigCheck for
//! 2m" means two minutes in that stage.

use super::status::{FlowState, OutputState};
use crate::k8s::flowtap::{Stage, StageStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// What one pass saw, as far as the stage goes.
pub struct Seen<'a> {
    pub output_state: &'a OutputState,
    pub flow_state: &'a FlowState,
    /// A configuration with the tap passed its check (`Some(true)`), or has no result yet.
    pub checked: Option<bool>,
    /// While it has none: the check pod in words, when it may be read.
    pub check_pod: Option<&'a str>,
    /// Records arrived recently (the `Receiving` condition).
    pub receiving: bool,
    /// No listener, kept warm (its cost is low), for this long still.
    pub warm_for: Option<std::time::Duration>,
}

/// The stage after a pass; `previous` keeps its start time when the stage is the same.
pub fn stage(seen: &Seen, previous: Option<&StageStatus>, now: Timestamp) -> Option<StageStatus> {
    let (name, message) = if let Some(left) = seen.warm_for {
        (
            Stage::Warm,
            format!(
                "no listener; kept {} more minutes because it costs little, so the next listener attaches at once",
                left.as_secs().div_ceil(60)
            ),
        )
    } else if seen.receiving {
        (Stage::Flowing, "records arriving".to_owned())
    } else {
        match (seen.output_state, seen.flow_state, seen.checked) {
            (OutputState::Validating(_), _, _) => (
                Stage::OutputValidating,
                "logging-operator validates the generated output".to_owned(),
            ),
            (_, FlowState::Waiting(r), _) => (Stage::Queued, r.message.clone()),
            (_, FlowState::Patched | FlowState::Repaired | FlowState::Mirrored, Some(false)) => (
                Stage::ConfigCheck,
                match seen.check_pod {
                    Some(pod) => format!("logging-operator checks the Logging's configuration with the tap: {pod}"),
                    None => "logging-operator checks the Logging's configuration with the tap (a check pod runs fluentd --dry-run)".to_owned(),
                },
            ),
            (_, FlowState::Patched | FlowState::Repaired | FlowState::Mirrored, Some(true)) => (
                Stage::ConfigApplied,
                "the check passed; waiting for fluentd to load the configuration: kubelet hands it over at its next sync of the pod (often within 60-90 s), then fluentd reloads".to_owned(),
            ),
            _ => return None,
        }
    };
    let since = match previous {
        Some(p) if p.name == name => p.since.clone(),
        _ => Time(now),
    };
    Some(StageStatus { name, since, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::status::Refusal;
    use std::time::Duration;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn seen<'a>(output: &'a OutputState, flow: &'a FlowState, checked: Option<bool>) -> Seen<'a> {
        Seen {
            output_state: output,
            flow_state: flow,
            checked,
            check_pod: None,
            receiving: false,
            warm_for: None,
        }
    }

    #[test]
    fn each_wait_has_its_stage_from_validation_to_records() {
        let name = |s: &Seen| stage(s, None, at(0)).map(|s| s.name);
        let validating = OutputState::Validating(Duration::from_secs(3));
        assert_eq!(
            name(&seen(&validating, &FlowState::Skipped, None)),
            Some(Stage::OutputValidating)
        );
        let queued = FlowState::Waiting(Refusal::new("ConfigCheckQueued", "FlowTap b goes first"));
        let s = stage(&seen(&OutputState::Ready, &queued, None), None, at(0)).unwrap();
        assert_eq!((s.name, s.message.as_str()), (Stage::Queued, "FlowTap b goes first"));
        let ready = OutputState::Ready;
        assert_eq!(
            name(&seen(&ready, &FlowState::Patched, Some(false))),
            Some(Stage::ConfigCheck)
        );
        let mut stuck = seen(&ready, &FlowState::Patched, Some(false));
        stuck.check_pod = Some("check pod c Pending: Unschedulable: 0/3 nodes are available");
        let s = stage(&stuck, None, at(0)).unwrap();
        assert!(
            s.message
                .ends_with("check pod c Pending: Unschedulable: 0/3 nodes are available"),
            "{}",
            s.message
        );
        assert_eq!(
            name(&seen(&ready, &FlowState::Mirrored, Some(true))),
            Some(Stage::ConfigApplied)
        );
        let mut flowing = seen(&ready, &FlowState::Patched, Some(true));
        flowing.receiving = true;
        assert_eq!(name(&flowing), Some(Stage::Flowing));
        flowing.warm_for = Some(Duration::from_secs(90));
        let warm = stage(&flowing, None, at(0)).unwrap();
        assert_eq!(warm.name, Stage::Warm);
        assert!(warm.message.contains("2 more minutes"), "{}", warm.message);
        let refused = FlowState::Refused(Refusal::new("X", "y"));
        assert_eq!(name(&seen(&ready, &refused, None)), None, "the phase says it");
    }

    #[test]
    fn a_stage_keeps_its_start_while_it_lasts_and_restarts_when_it_changes() {
        let ready = OutputState::Ready;
        let checking = seen(&ready, &FlowState::Patched, Some(false));
        let first = stage(&checking, None, at(0)).unwrap();
        let later = stage(&checking, Some(&first), at(40)).unwrap();
        assert_eq!(later.since, Time(at(0)));
        let applied = stage(&seen(&ready, &FlowState::Patched, Some(true)), Some(&later), at(41)).unwrap();
        assert_eq!(applied.since, Time(at(41)));
    }
}
