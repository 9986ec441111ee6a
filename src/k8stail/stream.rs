//! Following a flow: connect, print records, report gaps, reconnect with backoff resuming after
//! the last record, and remember the position in `--resume-file`.

use super::connect::{Refusal, Route, Ws};
use super::connection::Connection;
use super::notes::Notes;
use super::preflow::{self, Preflow};
use super::render::Renderer;
use super::resume::{read_resume, write_resume};
use super::select::Selection;
use super::{TailArgs, TapKey};
use crate::backoff::Backoff;
use crate::protocol::{self, Decoded, Frame, Status};
use crate::protocol::{ListenQuery, Start};
use crate::{Error, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Where the stream stands: the tap incarnation and the last record seen of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// How a connection ended.
pub(super) enum End {
    /// Ctrl-C: closed by us.
    Interrupted,
    /// The relay closed normally (1000) or is going away (1001); reconnect.
    Closed(String),
    /// The network broke; reconnect.
    Broken(String),
    /// The relay reported an error; stop.
    Failed(String),
    /// The tap behind the stream failed (and `--wait` was not given); stop.
    TapFailed(String),
    /// `--no-follow`: everything buffered was printed.
    Done,
}

impl End {
    /// This end, after saying what `--rate` left out that was not said yet.
    pub(super) fn said(self, stream: &mut Connection, notes: &mut Notes) -> End {
        if let Some(note) = stream.sampled.take() {
            notes.dim(&note);
        }
        self
    }
}

/// What every followed flow shares: the route to the relay, the flags, one output.
pub struct Follow<'a> {
    pub route: &'a Route,
    pub token: &'a str,
    pub args: &'a TailArgs,
    pub selection: &'a Selection,
    pub renderer: &'a Renderer,
    /// stdout, shared by the flows (each writes whole lines).
    pub out: &'a RefCell<dyn Write + 'a>,
    /// The user's own API client for pre-flow lines (`None`: no pre-flow view).
    pub preflow: Option<&'a kube::Client>,
}

/// "Every buffered record" for a relay that takes only numbers (relays before `tail=all`): more
/// than any replay buffer holds.
const LEGACY_ALL: u64 = 1_000_000;

/// The first wait before reconnecting; it doubles up to `--max-backoff`, jittered, so many
/// clients of a restarted relay do not reconnect in lockstep.
const FIRST_RECONNECT: Duration = Duration::from_millis(250);

/// Follow `target` until Ctrl-C, or until the stream cannot go on (with `--no-follow`, until
/// what the relay held is printed).
pub async fn follow(f: &Follow<'_>, target: &TapKey) -> Result<()> {
    let (args, renderer, route, token) = (f.args, f.renderer, f.route, f.token);
    let target = target.clone();
    let mut notes = Notes::new(std::io::stderr().is_terminal());
    let mut filters = f.selection.filter_options(&target);
    // Set when the relay is older than the filter options: k8stail filters itself then.
    let mut filter_here = f.selection.local_only;
    let mut position = match &args.resume_file {
        Some(path) => read_resume(path, &target, &mut notes)?,
        None => None,
    };
    // Ctrl-C or SIGTERM: both end k8stail cleanly (close frame, resume file written).
    let ctrl_c = crate::shutdown::signal();
    tokio::pin!(ctrl_c);
    let mut connected_once = false;
    // Set when the relay predates `tail=all`: everything is then asked for as a number larger
    // than any replay buffer, as k8stail did before.
    let mut all_as_number = false;
    let mut backoff = Backoff::new(FIRST_RECONNECT, args.max_backoff.0);
    let mut preflow = match f.preflow {
        Some(client) => Preflow::start(client.clone(), &target, f.selection.namespace_for(&target).cloned()),
        None => Preflow::off(),
    };
    loop {
        let start = match position {
            // Resume after the last record seen.
            Some(p) => Start::After {
                seq: p.seq,
                epoch: Some(p.epoch),
            },
            None if !connected_once => f.selection.start,
            None => Start::Live,
        };
        let start = match start {
            Start::All if all_as_number => Start::Tail(LEGACY_ALL),
            start => start,
        };
        let query = ListenQuery {
            start,
            filter: filters.clone(),
            rate: f.selection.rate,
        }
        .encode();
        let path = match query.as_str() {
            "" => target.path(),
            q => format!("{}?{q}", target.path()),
        };
        notes.status(&format!("connecting to {target} via {}…", route.describe()));
        let attempt = tokio::select! {
            r = route.connect(&path, token) => r,
            _ = &mut ctrl_c => { notes.clear(); return Ok(()); }
        };
        let ws = match attempt {
            Ok(ws) => ws,
            Err(Refusal::Final(reason)) if reason.contains("tail must be a whole number") && !all_as_number => {
                all_as_number = true;
                continue;
            }
            // A relay from before sampling: `rate` cannot be done here (every record would
            // cross the network first), so say so rather than drop the filters.
            Err(Refusal::Final(reason)) if reason.contains("unknown query option \"rate\"") => {
                notes.clear();
                return Err(Error::Stream(format!(
                    "{target}: this relay does not sample (--rate needs a newer log-socket); run without --rate"
                )));
            }
            Err(Refusal::Final(reason)) if reason.contains("unknown query option") && !filters.is_empty() => {
                notes.note(
                    "this relay does not filter records; k8stail filters them itself (they all cross the network)",
                );
                filter_here = true;
                filters = Default::default();
                continue;
            }
            Err(Refusal::Final(reason)) => {
                notes.clear();
                return Err(Error::Stream(format!("{target}: {reason}")));
            }
            Err(Refusal::Transient(reason)) if !connected_once || args.no_reconnect => {
                notes.clear();
                return Err(Error::Stream(format!("{target}: {reason}")));
            }
            Err(Refusal::Transient(reason)) => {
                match wait_to_reconnect(&reason, &mut backoff, &mut notes, &mut ctrl_c).await {
                    true => continue,
                    false => return Ok(()),
                }
            }
        };
        connected_once = true;
        let resume = args.resume_file.as_deref().map(|p| (p, &target));
        let end = read(
            ws,
            renderer,
            f.out,
            &mut position,
            Keep {
                selection: f.selection,
                target: &target,
                filter_here,
                no_follow: f.selection.no_follow,
            },
            &mut notes,
            &mut backoff,
            &mut ctrl_c,
            resume,
            args.wait,
            &mut preflow,
        )
        .await;
        if let (Some(path), Some(p)) = (&args.resume_file, position) {
            write_resume(path, &target, p).map_err(Error::Stream)?;
        }
        match end? {
            End::Interrupted | End::Done => {
                notes.clear();
                return Ok(());
            }
            End::Failed(reason) => {
                notes.clear();
                return Err(Error::Stream(format!("{target}: the relay ended the stream: {reason}")));
            }
            End::TapFailed(reason) => {
                notes.clear();
                return Err(Error::Stream(format!(
                    "{target}: {reason} (k8stail --wait keeps waiting until it is fixed)"
                )));
            }
            End::Closed(reason) | End::Broken(reason) if args.no_reconnect => {
                notes.note(&format!("{reason}; exiting (--no-reconnect)"));
                return Ok(());
            }
            End::Closed(reason) | End::Broken(reason) => {
                if !wait_to_reconnect(&reason, &mut backoff, &mut notes, &mut ctrl_c).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Say why and wait out the backoff before reconnecting; false when Ctrl-C came first.
async fn wait_to_reconnect(
    reason: &str,
    backoff: &mut Backoff,
    notes: &mut Notes,
    ctrl_c: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    let wait = backoff.next_wait();
    notes.status(&format!("{reason}; reconnecting in {:.1}s…", wait.as_secs_f32()));
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = ctrl_c.as_mut() => { notes.clear(); false }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read(
    mut ws: Ws,
    renderer: &Renderer,
    out: &RefCell<dyn Write + '_>,
    position: &mut Option<Position>,
    keep: Keep<'_>,
    notes: &mut Notes,
    backoff: &mut Backoff,
    ctrl_c: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    resume: Option<(&Path, &TapKey)>,
    wait: bool,
    preflow: &mut Preflow,
) -> Result<End> {
    let mut save = tokio::time::interval(Duration::from_secs(1));
    let mut saved = *position;
    let mut stream = Connection {
        wait,
        ..Connection::default()
    };
    // --no-follow: the buffered records still to come (known from the `listening` status).
    let mut to_replay: Option<u64> = None;
    loop {
        if keep.no_follow && to_replay == Some(0) {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))
                .await;
            return Ok(End::Done);
        }
        let message = tokio::select! {
            m = ws.next() => m,
            _ = save.tick() => {
                if let Some(note) = stream.sampled.due(std::time::Instant::now()) {
                    notes.dim(&note);
                }
                if stream.waiting {
                    if let Some(line) = stream.stage_line(jiff::Timestamp::now()) {
                        notes.status(&line);
                    }
                }
                if let (Some((path, target)), Some(p)) = (resume, *position) {
                    if saved != Some(p) {
                        write_resume(path, target, p).map_err(Error::Stream)?;
                        saved = Some(p);
                    }
                }
                continue;
            }
            _ = ctrl_c.as_mut() => {
                let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
                return Ok(End::Interrupted.said(&mut stream, notes));
            }
            event = preflow.next() => {
                pre_flow(event, preflow, renderer, out, &keep, notes)?;
                continue;
            }
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => return Ok(stream.closed(frame).said(&mut stream, notes)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ok(End::Broken(format!("connection lost: {e}")).said(&mut stream, notes)),
            None => return Ok(End::Broken("connection lost".into()).said(&mut stream, notes)),
        };
        match protocol::decode(text.as_str()) {
            Ok(Decoded::Record { seq, record }) => {
                if stream.waiting {
                    notes.clear();
                    stream.waiting = false;
                }
                *position = Some(Position {
                    epoch: stream.epoch,
                    seq,
                });
                to_replay = to_replay.map(|n| n.saturating_sub(1));
                if preflow.switch() && renderer.separator(&mut *out.borrow_mut()).map_err(Error::Output)? {
                    notes.note("the flow's records arrive: pre-flow lines stopped");
                }
                if preflow.cutting() && preflow.already_shown(&serde_json::from_str(record.get()).unwrap_or_default()) {
                    continue;
                }
                if keep.selection.wants(keep.target, &record, keep.filter_here) {
                    renderer
                        .record(&mut *out.borrow_mut(), keep.target, text.as_str(), seq, &record)
                        .map_err(Error::Output)?;
                }
            }
            Ok(Decoded::Other(Frame::Dropped { reason, last_seq, .. }))
                if reason == "sampled"
                    && renderer
                        .sampled_frame(&mut *out.borrow_mut(), text.as_str())
                        .map_err(Error::Output)? =>
            {
                stream.covered(position, last_seq);
            }
            Ok(Decoded::Other(frame)) => {
                if let Frame::Status(Status::Listening { replayed, .. }) = &frame {
                    to_replay.get_or_insert(*replayed);
                }
                // A tap that records flow through already (warm, persistent, or one that just
                // started flowing) needs no pre-flow lines: its own records are coming.
                if let Frame::Status(Status::Tap { stage, conditions, .. }) = &frame {
                    let flowing = matches!(stage.as_deref(), Some("Flowing" | "Warm"))
                        || conditions.get("Receiving") == Some(&true);
                    if flowing
                        && preflow.switch()
                        && renderer.separator(&mut *out.borrow_mut()).map_err(Error::Output)?
                    {
                        notes.note("the tap's records flow: pre-flow lines stopped");
                    }
                }
                if let Some(end) = stream.frame(frame, position, notes, backoff) {
                    let _ = ws.close(None).await;
                    return Ok(end.said(&mut stream, notes));
                }
            }
            Err(_) => notes.note(&format!(
                "ignoring a frame that is not protocol JSON: {:.80}",
                text.as_str()
            )),
        }
    }
}

/// Show a pre-flow line (through the same local filters as records) or say a pre-flow note.
fn pre_flow(
    event: preflow::Event,
    preflow: &mut Preflow,
    renderer: &Renderer,
    out: &RefCell<dyn Write + '_>,
    keep: &Keep<'_>,
    notes: &mut Notes,
) -> Result<()> {
    let line = match event {
        preflow::Event::Note(text) => {
            notes.note(&text);
            return Ok(());
        }
        preflow::Event::Line(line) => line,
    };
    let Ok(record) = serde_json::value::RawValue::from_string(line.record()) else {
        return Ok(());
    };
    if !keep.selection.wants(keep.target, &record, true) {
        return Ok(());
    }
    if preflow.shown == 0 {
        notes.note(&format!(
            "pre-flow: live container logs of the pods {} matches, raw, before its filters; flow records follow once fluentd sends them",
            keep.target
        ));
    }
    notes.hide();
    let printed = renderer.preflow(&mut *out.borrow_mut(), keep.target, &record);
    notes.show();
    printed.map_err(Error::Output)?;
    preflow.shown(&line);
    Ok(())
}

/// Which records to print, beyond what the relay filtered.
#[derive(Clone, Copy)]
struct Keep<'a> {
    selection: &'a Selection,
    target: &'a TapKey,
    /// The relay applied no filter option: apply them here.
    filter_here: bool,
    no_follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(FIRST_RECONNECT, Duration::from_secs(2));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_wait()).collect();
        let steps = [250, 500, 1000, 2000, 2000, 2000];
        for (w, step) in waits.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(*w >= step / 2 && *w <= step, "{w:?} within half of {step:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(250));
    }
}
