//! The FlowTap controller: for each FlowTap, an http `Output` (Flow) or `ClusterOutput`
//! (ClusterFlow) pointing at the relay, appended as the last output of the flow; removed again,
//! flow first, when the tap goes. Ephemeral taps without listeners are deleted after the linger
//! period; sessions of relays that stopped renewing expire.
//!
//! One reconcile is a few small steps: expire sessions, end an idle tap, ensure the children
//! (`children`), derive the status ([`super::status`], pure), write it if it changed.

use super::children::{self, ensure_flow_ref, ensure_flow_ref_removed, ensure_mirror, ensure_output, remove_mirror};
use super::preflight::{self, Refusal, Validation};
use super::status::{self, FlowState, Observed, OutputState, Shared};
use super::{output_name, update_status, OperatorConfig, FINALIZER};
use crate::k8s::flowtap::{FlowKind, FlowTap, OutputRef, PatchedFlow, Phase, TapMode};
use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, Logging, Output};
use crate::{Error, Result};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the reconciler needs.
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<OperatorConfig>,
    pub recorder: Recorder,
    /// The controller's cache of FlowTaps (which taps share a flow).
    pub taps: Store<FlowTap>,
    /// Which sessions stopped being renewed.
    pub liveness: super::sessions::Liveness,
    /// Recent repairs of each tap's flow ref (by FlowTap UID), to notice a tool undoing them.
    pub repairs: std::sync::Mutex<std::collections::HashMap<String, Vec<std::time::Instant>>>,
    /// Consecutive failed reconciles of each FlowTap (by UID), for the error backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Watch caches of what every pass reads; a miss is read from the API server.
    pub flows: Store<Flow>,
    pub cluster_flows: Store<ClusterFlow>,
    pub loggings: Store<Logging>,
    /// The outputs log-socket generated (by its managed-by label).
    pub outputs: Store<Output>,
    pub cluster_outputs: Store<ClusterOutput>,
    /// `status.patched` as this controller last wrote it (by FlowTap UID): the watch cache
    /// can still hold an older status, and a pass on that view must neither take a new
    /// configuration-check baseline that already holds the tap's own check nor forget a flow
    /// it patched.
    pub written: std::sync::Mutex<std::collections::HashMap<String, Option<PatchedFlow>>>,
    /// FlowTaps (by UID) whose cleanup finished here: a pass on a cached copy that still shows
    /// the finalizer would only repeat it.
    pub cleaned: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// How often a tap with nothing time-driven pending is looked at again, as a safety net.
pub const IDLE_RECHECK: Duration = Duration::from_secs(600);

/// A flow whose ref is removed this often, this fast, is contested (a GitOps tool keeps
/// removing it): the operator stops putting it back.
pub const CONTESTED_REPAIRS: usize = 3;
pub const CONTESTED_WINDOW: Duration = Duration::from_secs(300);

/// Run the controller until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    config: Arc<OperatorConfig>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let reporter = Reporter {
        controller: "log-socket".into(),
        instance: Some(config.instance.clone()),
    };
    // Reconciled on what the controller must act on (spec, deletion, who listens), not on its
    // own status writes nor on session renewals: those would each cost a pass of API calls.
    let (reader, writer) = kube::runtime::reflector::store();
    let trigger = watcher::watcher(config.taps(&client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(worth_a_pass, Default::default());
    let controller = Controller::for_stream(trigger, reader);
    // Flows, ClusterFlows and Loggings: watched (a removed ref is repaired, a mirror follows its
    // flow, a configuration check is seen at once) into caches every pass reads first.
    let (flows, flows_in) = kube::runtime::reflector::store::<Flow>();
    let (cluster_flows, cluster_flows_in) = kube::runtime::reflector::store::<ClusterFlow>();
    let (loggings, loggings_in) = kube::runtime::reflector::store::<Logging>();
    let flow_events = watcher::watcher(config.scoped::<Flow>(&client), watcher::Config::default())
        .default_backoff()
        .reflect(flows_in)
        .touched_objects();
    let cluster_flow_events = watcher::watcher(config.scoped::<ClusterFlow>(&client), watcher::Config::default())
        .default_backoff()
        .reflect(cluster_flows_in)
        .touched_objects();
    let logging_events = watcher::watcher(Api::<Logging>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(loggings_in)
        .touched_objects();
    // Generated outputs, by the managed-by label: validation is read from here.
    let managed = || watcher::Config::default().labels("app.kubernetes.io/managed-by=log-socket");
    let (outputs, outputs_in) = kube::runtime::reflector::store::<Output>();
    let (cluster_outputs, cluster_outputs_in) = kube::runtime::reflector::store::<ClusterOutput>();
    let output_events = watcher::watcher(config.scoped::<Output>(&client), managed())
        .default_backoff()
        .reflect(outputs_in)
        .touched_objects();
    let cluster_output_events = watcher::watcher(config.scoped::<ClusterOutput>(&client), managed())
        .default_backoff()
        .reflect(cluster_outputs_in)
        .touched_objects();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        config,
        taps: controller.store(),
        liveness: Default::default(),
        repairs: Default::default(),
        failures: Default::default(),
        flows,
        cluster_flows,
        loggings,
        outputs,
        cluster_outputs,
        written: Default::default(),
        cleaned: Default::default(),
    });
    sweep(&client, &ctx.config).await;
    let (store, store2, store3) = (controller.store(), controller.store(), controller.store());
    // Generated outputs name their FlowTap in an annotation (not an ownerReference).
    let (store4, store5) = (controller.store(), controller.store());
    let controller = controller
        .watches_stream(output_events, move |o: Output| generated_for(&store4, &o.metadata))
        .watches_stream(cluster_output_events, move |o: ClusterOutput| {
            generated_for(&store5, &o.metadata)
        })
        .watches_stream(flow_events, move |f: Flow| taps_of(&store, FlowKind::Flow, &f.metadata))
        .watches_stream(cluster_flow_events, move |f: ClusterFlow| {
            taps_of(&store2, FlowKind::ClusterFlow, &f.metadata)
        })
        // A new configuration check of a Logging concerns the taps it renders.
        .watches_stream(logging_events, move |l: Logging| {
            let name = l.name_any();
            store3
                .state()
                .iter()
                .filter(|t| {
                    t.status
                        .as_ref()
                        .and_then(|s| s.patched.as_ref())
                        .is_some_and(|p| p.logging.as_deref() == Some(name.as_str()))
                })
                .map(|t| ObjectRef::from_obj(&**t))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "FlowTap reconcile failed");
            }
        });
    // Leftovers are swept again and again (not only at start): a FlowTap whose finalizer was
    // removed by hand leaves its flow naming an output nobody will clean up otherwise.
    let sweeps = async {
        let mut tick = tokio::time::interval(ctx.config.sweep_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if super::leftovers::suspected(&ctx) {
                sweep(&client, &ctx.config).await;
            }
        }
    };
    tokio::pin!(sweeps);
    // The controller ends on shutdown; the sweeps with it.
    futures::future::select(Box::pin(controller), sweeps).await;
}

/// Remove leftovers of FlowTaps that are gone, flows first.
async fn sweep(client: &kube::Client, config: &OperatorConfig) {
    match super::leftovers::remove(client, config).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} leftover(s) of FlowTaps that no longer exist"),
        Err(e) => tracing::warn!(error = %e, "could not look for leftovers of deleted FlowTaps"),
    }
}

/// The FlowTaps a change of this flow concerns: taps on it, and the tap owning it if it is a
/// mirror.
fn taps_of(store: &Store<FlowTap>, kind: FlowKind, flow: &kube::api::ObjectMeta) -> Vec<ObjectRef<FlowTap>> {
    let owners = super::owning_tap_uids(flow);
    store
        .state()
        .iter()
        .filter(|t| t.metadata.namespace == flow.namespace)
        .filter(|t| {
            (t.spec.flow_ref.kind == kind && Some(&t.spec.flow_ref.name) == flow.name.as_ref())
                || t.metadata.uid.as_deref().is_some_and(|u| owners.contains(&u))
        })
        .map(|t| ObjectRef::from_obj(&**t))
        .collect()
}

/// What a change to a FlowTap must touch for a reconcile: its spec (generation), its deletion
/// and finalizers, which sessions it has and when records last arrived (not session renewals,
/// not the status the controller writes itself).
fn worth_a_pass(tap: &FlowTap) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tap.metadata.generation.hash(&mut h);
    tap.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    tap.metadata.finalizers.hash(&mut h);
    let mut sessions: Vec<&str> = tap
        .status
        .iter()
        .flat_map(|s| s.sessions.iter().map(|s| s.id.as_str()))
        .collect();
    sessions.sort_unstable();
    sessions.hash(&mut h);
    // Records arriving again after a quiet spell (the relays report it every third of the TTL).
    tap.status
        .as_ref()
        .and_then(|s| s.last_record_time.as_ref())
        .map(|t| t.0.as_second())
        .hash(&mut h);
    Some(h.finish())
}

/// The FlowTap an object was generated for.
fn generated_for(store: &Store<FlowTap>, meta: &kube::api::ObjectMeta) -> Vec<ObjectRef<FlowTap>> {
    let uids = super::owning_tap_uids(meta);
    store
        .state()
        .iter()
        .filter(|t| t.metadata.namespace == meta.namespace)
        .filter(|t| t.metadata.uid.as_deref().is_some_and(|u| uids.contains(&u)))
        .map(|t| ObjectRef::from_obj(&**t))
        .collect()
}

fn error_policy(tap: Arc<FlowTap>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::Kube(_) | Error::Finalizer(_)) {
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
    tracing::warn!(tap = %tap.name_any(), error = %error, "will retry in {wait:?}");
    Action::requeue(wait)
}

/// Wait after the `failures`-th failed reconcile in a row: 1 s doubling to 5 minutes, jittered
/// to 50–100 %, so a persistent failure (RBAC, a broken webhook) does not hammer the API server.
fn error_backoff(failures: u32) -> Duration {
    use ring::rand::SecureRandom;
    let base = Duration::from_secs(1).saturating_mul(1 << failures.saturating_sub(1).min(9));
    let base = base.min(Duration::from_secs(300));
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    base.mul_f64(0.5 + f64::from(byte[0]) / 510.0)
}

async fn reconcile(tap: Arc<FlowTap>, ctx: Arc<Context>) -> Result<Action> {
    let ns = tap.namespace().unwrap_or_default();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = tap.uid().unwrap_or_default();
    let deleting = tap.metadata.deletion_timestamp.is_some();
    if deleting && ctx.cleaned.lock().unwrap().contains(&uid) {
        return Ok(Action::await_change());
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
    let linger = status::linger(&tap, ctx.config.linger, now);
    if linger.left == Some(Duration::ZERO) {
        return delete_idle(&api, &tap, linger.idle).await;
    }

    let output = output_name(&name);
    let mut current = tap.status.clone().unwrap_or_default();
    if let Some(written) = ctx.written.lock().unwrap().get(&tap.uid().unwrap_or_default()) {
        current.patched = written.clone();
    }
    let mut patched = current.patched.clone();
    // A flowRef that changed (clusters without CEL do not stop it): undo the old flow first.
    if let Some(old) = patched.as_ref().filter(|p| p.flow_ref != tap.spec.flow_ref) {
        children::unpatch(&tap, old, ctx).await?;
        tracing::info!(tap = %name, flow = %old.flow_ref.name, "flowRef changed: the old flow was restored");
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
    let generation = tap.metadata.generation;
    let changed = current.phase != Some(phase)
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
    if let Some(left) = status::linger(&written, ctx.config.linger, now).left {
        next = next.min(left + Duration::from_secs(1));
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

/// What one pass did to the tap's children.
struct Step {
    output_state: OutputState,
    flow_state: FlowState,
    /// What is patched now (for `status.patched`).
    patched: Option<PatchedFlow>,
    /// Look again this soon (a validation or a configuration check is pending).
    recheck: Option<Duration>,
    /// Nothing worth a status write yet (an output created just now, validated in a moment).
    quiet: bool,
}

/// Check first, then change: refuse before the flow would name anything logging-operator
/// cannot render; the output before the flow, validated before it is named; the configuration
/// check after. Any refusal restores the flow (and, where the refusal is the output's or the
/// configuration's, removes what the tap made).
async fn ensure_children(tap: &FlowTap, output: &str, patched: Option<&PatchedFlow>, ctx: &Context) -> Result<Step> {
    let ns = tap.namespace().unwrap_or_default();
    let refuse = |output_state, flow_state| Step {
        output_state,
        flow_state,
        patched: None,
        recheck: Some(Duration::from_secs(10)),
        quiet: false,
    };
    // A failed configuration check, or a contested flow, is final until the spec changes.
    if let Some(r) = sticky_refusal(tap) {
        children::teardown(tap, patched, ctx).await?;
        return Ok(Step {
            recheck: None,
            ..refuse(OutputState::Ready, FlowState::Refused(r))
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
    let spec = children::desired_output_spec(tap, &ctx.config, Some(&logging_ref));
    if let Some(r) = preflight::check_secrets(&ctx.client, &ns, &preflight::secret_refs(&spec)).await {
        children::teardown(tap, patched, ctx).await?;
        return Ok(refuse(OutputState::Refused(r), FlowState::Skipped));
    }

    let ensured = ensure_output(tap, output, ctx, Some(&logging_ref)).await?;
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
    let flow_state = match tap.spec.mode {
        TapMode::Patch => {
            // A repair is putting back a ref this tap had in the flow (status.patched), not the
            // first append after the output's validation.
            let state = ensure_flow_ref(tap, output, ctx, patched.is_some()).await?;
            // A mirror can only exist from Mirror mode: look for one only when switching.
            if patched.is_none_or(|p| p.mode == TapMode::Mirror) {
                let was_mirror = patched.is_some();
                remove_mirror(tap, tap.spec.flow_ref.kind, ctx, was_mirror).await?;
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
        });
    }
    let logging_name = logging.name_any();
    let mut record = match patched {
        Some(p) if p.mode == tap.spec.mode && p.logging.as_deref() == Some(logging_name.as_str()) => p.clone(),
        _ => PatchedFlow {
            flow_ref: tap.spec.flow_ref.clone(),
            output: output.to_owned(),
            mode: tap.spec.mode,
            logging: Some(logging_name),
            config_checks_before: before,
            config_accepted: false,
        },
    };
    // Checked on every pass, also after a passing check: a check that started before the patch
    // may finish after it, so a pass is no proof that a later one with the tap will pass too.
    let mut recheck = None;
    {
        match preflight::config_check_since(&logging, &record.config_checks_before) {
            Some(true) => record.config_accepted = true,
            Some(false) => {
                let r = Refusal::new(
                    preflight::CONFIG_CHECK_FAILED,
                    format!(
                        "logging-operator's check of the fluentd configuration with the tap failed (Logging {}); the previous configuration kept running",
                        record.logging.as_deref().unwrap_or("-")
                    ),
                );
                children::teardown(tap, Some(&record), ctx).await?;
                return Ok(Step {
                    recheck: None,
                    ..refuse(OutputState::Ready, FlowState::Refused(r))
                });
            }
            None => recheck = Some(Duration::from_secs(3)),
        }
    }
    Ok(Step {
        output_state: OutputState::Ready,
        flow_state,
        patched: Some(record),
        recheck,
        quiet: false,
    })
}

/// Several FlowTaps on one flow share its relay tap, and only one of them has an output: the
/// first by (persistent first, then name), the order listeners join in. Another tap shares it;
/// so does the first while a tap before it still has its output in a flow (being deleted), so
/// two outputs never feed one relay tap.
fn sharing(taps: &Store<FlowTap>, tap: &FlowTap) -> Option<Shared> {
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

/// Whether this repair of `tap`'s flow ref is one too many (see [`CONTESTED_REPAIRS`]).
fn contested(ctx: &Context, tap: &FlowTap) -> bool {
    let now = std::time::Instant::now();
    let mut all = ctx.repairs.lock().unwrap();
    let recent = all.entry(tap.uid().unwrap_or_default()).or_default();
    recent.retain(|t| now.duration_since(*t) < CONTESTED_WINDOW);
    recent.push(now);
    recent.len() >= CONTESTED_REPAIRS
}

/// A refusal that stands until the spec changes: a failed configuration check, or a contested
/// flow (the user decides: Mirror mode, or telling the tool to leave the ref alone).
fn sticky_refusal(tap: &FlowTap) -> Option<Refusal> {
    let status = tap.status.as_ref()?;
    let c = status::condition(&status.conditions, "FlowPatched")?;
    let reason = [preflight::CONFIG_CHECK_FAILED, CONTESTED]
        .into_iter()
        .find(|r| *r == c.reason)?;
    (c.observed_generation == tap.metadata.generation).then(|| {
        Refusal::new(
            reason,
            c.message.trim_start_matches("the flow was restored: ").to_owned(),
        )
    })
}

/// Normal Events for what changed in the pipeline and in who listens, so `kubectl describe
/// flowtap` tells the story: the flow patched or restored, listeners arriving or all gone.
async fn lifecycle_events(
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
fn patch_note(p: &PatchedFlow) -> String {
    let flow = format!("{} {}", p.flow_ref.kind, p.flow_ref.name);
    match p.mode {
        TapMode::Patch => format!("appended {} to {flow}", p.output),
        TapMode::Mirror => format!("created a mirror of {flow} feeding {}", p.output),
    }
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
    let written = ctx.written.lock().unwrap().get(&uid).cloned();
    let patched = match &written {
        Some(w) => w.as_ref(),
        None => tap.status.as_ref().and_then(|s| s.patched.as_ref()),
    };
    match children::teardown(tap, patched, ctx).await {
        Ok(removed) => {
            ctx.written.lock().unwrap().remove(&uid);
            if removed {
                tracing::info!(tap = %name, "tap removed: flow restored, output deleted");
            }
        }
        Err(e) => {
            // Only a cleanup that does not finish at once is worth a status write: the
            // finalizer stays, and the phase says why the FlowTap is still there.
            if tap.status.as_ref().and_then(|s| s.phase) != Some(Phase::Terminating) {
                let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &tap.namespace().unwrap_or_default());
                let patch = json!({"status": {"phase": Phase::Terminating}});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::debug!(tap = %name, error = %e, "could not mark the tap Terminating");
                }
            }
            return Err(e);
        }
    }
    Ok(Action::await_change())
}

pub(super) async fn publish(ctx: &Context, tap: &FlowTap, type_: EventType, reason: &str, note: &str) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &tap.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not record an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
