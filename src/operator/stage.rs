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
    /// When a record last arrived, if one ever did (`status.lastRecordTime`).
    pub last_record: Option<Timestamp>,
    /// No listener, kept warm (its cost is low) until then.
    pub warm_until: Option<Timestamp>,
}

/// The stage after a pass; `previous` keeps its start time when the stage is the same.
pub fn stage(seen: &Seen, previous: Option<&StageStatus>, now: Timestamp) -> Option<StageStatus> {
    let in_place = matches!(
        seen.flow_state,
        FlowState::Patched | FlowState::Repaired | FlowState::Mirrored
    ) && matches!(seen.output_state, OutputState::Ready);
    let (name, message) = if let Some(until) = seen.warm_until.filter(|_| in_place) {
        (
            Stage::Warm,
            format!(
                "no listener; kept until {} UTC because it costs little, so the next listener attaches at once",
                until.strftime("%H:%M:%S")
            ),
        )
    } else if seen.receiving {
        (Stage::Flowing, "records arriving".to_owned())
    } else if let Some(last) = seen.last_record.filter(|_| in_place && seen.checked == Some(true)) {
        // Records came through this configuration already: a quiet flow, not a reload.
        (
            Stage::Flowing,
            format!(
                "no record for a while (the flow is quiet); the last came at {} UTC",
                last.strftime("%H:%M:%S")
            ),
        )
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
            last_record: None,
            warm_until: None,
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
        flowing.warm_until = Some(Timestamp::from_second(1_700_000_090).unwrap());
        let warm = stage(&flowing, None, at(0)).unwrap();
        assert_eq!(warm.name, Stage::Warm);
        assert!(warm.message.contains("until 22:14:50 UTC"), "{}", warm.message);
        // Quiet after records came: still Flowing, not back to waiting for a reload.
        let mut quiet = seen(&ready, &FlowState::Patched, Some(true));
        quiet.last_record = Some(at(-600));
        let q = stage(&quiet, None, at(0)).unwrap();
        assert_eq!(q.name, Stage::Flowing);
        assert!(q.message.contains("quiet"), "{}", q.message);
        let refused = FlowState::Refused(Refusal::new("X", "y"));
        let mut warm_but_refused = seen(&ready, &refused, None);
        warm_but_refused.warm_until = Some(at(600));
        assert_eq!(stage(&warm_but_refused, None, at(0)), None, "Warm only while in place");
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
