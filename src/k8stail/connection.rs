//! What the frames of one connection mean for the terminal: the waiting line and its stage,
//! notes (status, bus, drops, withheld and sampled counts), where a resume starts, and how the
//! connection ended. The stream's loop (stream.rs) reads the socket and prints records; this
//! says everything else.

use super::notes::Notes;
use super::stream::{End, Position};
use crate::backoff::Backoff;
use crate::protocol::{Frame, Status};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// What one connection has said so far.
pub(super) struct Connection {
    /// The tap's numbering, from its `listening` status.
    pub(super) epoch: u64,
    pub(super) tap_name: String,
    /// The last Failed/Degraded message shown, so it is shown once.
    pub(super) last_trouble: Option<String>,
    /// An `error` frame: the close that follows ends the stream.
    pub(super) failure: Option<String>,
    /// No record yet: the status line shows what the tap waits for.
    pub(super) waiting: bool,
    /// `--wait`: a failed tap is reported, not the end.
    pub(super) wait: bool,
    /// The tap's stage, since when, and what it waits for (from its status frames).
    pub(super) stage: Option<(String, jiff::Timestamp, String)>,
    /// Namespaces whose withheld records were explained already.
    pub(super) hinted: std::collections::HashSet<String>,
    /// What `--rate` left out and was not said yet.
    pub(super) sampled: super::sampled::Tally,
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            epoch: 0,
            tap_name: String::new(),
            last_trouble: None,
            failure: None,
            waiting: true,
            wait: false,
            stage: None,
            hinted: Default::default(),
            sampled: Default::default(),
        }
    }
}

/// How long a stage may last before k8stail says where to look.
fn stuck_after(stage: &str) -> Option<(u64, &'static str)> {
    match stage {
        "OutputValidating" => Some((30, "is logging-operator running? kubectl get outputs,clusteroutputs -A shows whether it validated the output")),
        "ConfigCheck" => Some((60, "the check pod may be Pending or slow: kubectl get pods -A -l app.kubernetes.io/component=fluentd-configcheck")),
        "ConfigApplied" => Some((120, "fluentd has not sent records yet: kubelet may not have synced its pod, or the flow is quiet (docs/troubleshooting.md)")),
        _ => None,
    }
}

impl Connection {
    /// The status line while waiting: the tap's stage, how long it has lasted, what it waits for,
    /// and where to look once it lasts too long.
    pub(super) fn stage_line(&self, now: jiff::Timestamp) -> Option<String> {
        let (stage, since, message) = self.stage.as_ref()?;
        let secs = now.duration_since(*since).as_secs().max(0) as u64;
        let hint = match stuck_after(stage) {
            Some((after, hint)) if secs >= after => format!(" — {hint}"),
            _ => String::new(),
        };
        Some(format!("{}: {stage} {secs}s: {message}{hint}", self.tap_name))
    }

    /// How the stream ended, from the relay's close frame.
    pub(super) fn closed(&mut self, frame: Option<CloseFrame>) -> End {
        let (code, reason) = frame
            .map(|f| (u16::from(f.code), f.reason.to_string()))
            .unwrap_or((1005, String::new()));
        match self.failure.take() {
            Some(f) => End::Failed(f),
            None if code == 1000 || code == 1001 => End::Closed(format!(
                "the relay closed the stream ({code}{})",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" {reason}")
                }
            )),
            None => End::Failed(format!("closed with code {code} {reason}")),
        }
    }

    /// Act on a frame other than a record: status lines, notes, the position's numbering.
    /// Returns how the stream ends when the frame ends it.
    /// A `sampled` count covers the records up to `last_seq`: a resume starts after them (they
    /// were counted once; they are never delivered on top).
    pub(super) fn covered(&self, position: &mut Option<Position>, last_seq: Option<u64>) {
        if let Some(seq) = last_seq {
            if position.is_none_or(|p| p.epoch != self.epoch || p.seq < seq) {
                *position = Some(Position { epoch: self.epoch, seq });
            }
        }
    }

    pub(super) fn frame(
        &mut self,
        frame: Frame,
        position: &mut Option<Position>,
        notes: &mut Notes,
        backoff: &mut Backoff,
    ) -> Option<End> {
        match frame {
            Frame::Status(Status::Tap {
                flow_tap,
                phase,
                message,
                stage,
                stage_since,
                ..
            }) => match phase.as_deref() {
                Some("Failed") if !self.wait => {
                    return Some(End::TapFailed(format!("FlowTap {flow_tap} is Failed: {message}")));
                }
                Some(phase @ ("Failed" | "Degraded")) if self.last_trouble.as_ref() != Some(&message) => {
                    notes.note(&format!("FlowTap {flow_tap} is {phase}: {message}"));
                    self.last_trouble = Some(message);
                }
                _ if self.waiting => {
                    self.stage = stage
                        .zip(stage_since.and_then(|t| t.parse().ok()))
                        .map(|(s, t)| (s, t, message.clone()));
                    let line = self.stage_line(jiff::Timestamp::now());
                    notes.status(&line.unwrap_or_else(|| format!("{}: {message}…", self.tap_name)));
                }
                _ => {}
            },
            Frame::Status(Status::Listening {
                tap,
                epoch,
                last_seq,
                replayed,
                ..
            }) => {
                self.epoch = epoch;
                self.tap_name = tap;
                backoff.reset();
                if position.is_some_and(|p| p.epoch != epoch) {
                    // The relay answers with a `dropped tap_restarted` frame too; the position
                    // now counts in the new numbering.
                    *position = None;
                }
                if position.is_none() && replayed == 0 {
                    // Nothing buffered is coming: a reconnect resumes after what the tap had,
                    // so records that arrive while disconnected are not skipped.
                    *position = Some(Position { epoch, seq: last_seq });
                }
                let buffered = match replayed {
                    0 => String::new(),
                    n => format!(" ({n} buffered)"),
                };
                notes.status(&format!(
                    "listening to {}{buffered}; waiting for records…",
                    self.tap_name
                ));
            }
            Frame::Status(Status::Bus { bus, up, message }) => match up {
                false => notes.note(&format!(
                    "the relay's bus ({bus}) is down, no records arrive until it is back: {message}"
                )),
                true => notes.note(&format!("the relay's bus ({bus}) is back")),
            },
            Frame::Dropped {
                count,
                reason,
                pods,
                last_seq,
            } if reason == "sampled" => {
                self.covered(position, last_seq);
                let pods = pods.unwrap_or_default();
                let namespace = self.tap_name.split('/').rev().nth(1).unwrap_or_default().to_owned();
                if let Some(note) = self
                    .sampled
                    .add(count.unwrap_or(0), &pods, &namespace, std::time::Instant::now())
                {
                    notes.dim(&note);
                }
            }
            Frame::Dropped { count, reason, .. } => notes.note(&dropped_note(&reason, count)),
            // Today's relays: a count, naming no pod (said how to get access once).
            Frame::Denied { pod, count, .. } if pod.is_empty() => {
                let hint = match self.hinted.insert(String::new()) {
                    true => " (the relay gives you a record if you may read its pod's logs: kubectl auth can-i get pods/log -n NAMESPACE; or by the pod's rbac/ labels, see docs/security.md)",
                    false => "",
                };
                notes.note(&format!("{count} records withheld: you may not read them{hint}"))
            }
            // Earlier relays named the pod: how to get access, said once per namespace.
            Frame::Denied { namespace, pod, count } => {
                // The namespace goes into a command to paste only when it is a namespace name
                // (it comes from the relay: never a shell metacharacter in a suggested command).
                let valid = namespace.len() <= 63
                    && !namespace.is_empty()
                    && namespace
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                let hint = match (self.hinted.insert(namespace.clone()), valid) {
                    (true, true) => format!(
                        " (the relay gives you a pod's records if you may read its logs: kubectl auth can-i get pods/log -n {namespace}; or by the pod's rbac/ labels, see docs/security.md)"
                    ),
                    (true, false) => " (see docs/security.md: who may read which records)".to_owned(),
                    (false, _) => String::new(),
                };
                notes.note(&format!(
                    "{count} records of pod {namespace}/{pod} withheld: you may not read them{hint}"
                ))
            }
            Frame::Error { code, message } => self.failure = Some(format!("{code}: {message}")),
            // Newer frame types and states are for newer clients.
            Frame::Record { .. } | Frame::Status(Status::Unknown) | Frame::Unknown => {}
        }
        None
    }
}

/// What a `dropped` frame means, in words.
fn dropped_note(reason: &str, count: Option<u64>) -> String {
    match (reason, count) {
        ("slow_client", Some(n)) => format!("{n} records dropped: this terminal did not keep up"),
        ("out_of_replay", Some(n)) => {
            format!("{n} records were lost while disconnected (older than the relay's replay buffer)")
        }
        ("bus_discarded", _) => {
            "records are missing: the relays' bus discarded them (its stream's --replay-records, --replay-bytes or --nats-max-age limits) before this relay read them".to_owned()
        }
        ("tap_restarted", _) => {
            "the tap restarted (relay restart or tap re-created): records it received while k8stail was away may be missing".to_owned()
        }
        (reason, count) => format!(
            "{} records dropped ({reason})",
            count.map_or("some".into(), |n| n.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn the_waiting_line_says_the_stage_its_age_and_where_to_look_once_it_lasts() {
        let since: jiff::Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let c = Connection {
            tap_name: "shop/web".into(),
            stage: Some(("ConfigCheck".into(), since, "logging-operator checks".into())),
            ..Connection::default()
        };
        let at = |s: i64| since + jiff::SignedDuration::from_secs(s);
        assert_eq!(
            c.stage_line(at(14)).unwrap(),
            "shop/web: ConfigCheck 14s: logging-operator checks"
        );
        let stuck = c.stage_line(at(61)).unwrap();
        assert!(stuck.contains("— the check pod may be Pending"), "{stuck}");
        assert_eq!(
            Connection::default().stage_line(at(0)),
            None,
            "no stage: the message alone"
        );
    }
}
