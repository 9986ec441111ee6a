//! The FlowTap controller: for each FlowTap, an http `Output` (Flow) or `ClusterOutput`
//! (ClusterFlow) pointing at the relay, appended as the last output of the flow; removed again,
//! flow first, when the tap goes. Ephemeral taps without listeners are deleted after the linger
//! period; sessions of relays that stopped renewing expire.

use super::{output_name, update_status, OperatorConfig, FINALIZER, MANAGED_BY};
use crate::crd::{FlowKind, FlowTap, OutputKind, OutputRef, Phase, TapMode};
use crate::logging::{ClusterFlow, ClusterOutput, ClusterOutputSpec, Flow, HasStatus, Output, OutputSpec};
use crate::relay::{Relay, TapKey};
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the reconciler needs.
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<OperatorConfig>,
    pub recorder: Recorder,
}

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
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        config,
    });
    let (outputs, cluster_outputs) = (
        ctx.config.scoped::<Output>(&client),
        ctx.config.scoped::<ClusterOutput>(&client),
    );
    match super::orphans::remove(&client, &ctx.config).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} leftover(s) of FlowTaps that no longer exist"),
        Err(e) => tracing::warn!(error = %e, "could not look for leftovers of deleted FlowTaps"),
    }
    let managed = || watcher::Config::default().labels("app.kubernetes.io/managed-by=log-socket");
    let controller = Controller::new(ctx.config.taps(&client), watcher::Config::default());
    let (flows, cluster_flows) = (
        ctx.config.scoped::<Flow>(&client),
        ctx.config.scoped::<ClusterFlow>(&client),
    );
    // Flows are watched (not polled) so that a removed ref is repaired and a mirror follows
    // its flow at once.
    let (store, store2) = (controller.store(), controller.store());
    controller
        .owns(outputs, managed())
        .owns(cluster_outputs, managed())
        .watches(flows, watcher::Config::default(), move |f: Flow| {
            taps_of(&store, FlowKind::Flow, &f.metadata)
        })
        .watches(cluster_flows, watcher::Config::default(), move |f: ClusterFlow| {
            taps_of(&store2, FlowKind::ClusterFlow, &f.metadata)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "FlowTap reconcile failed");
            }
        })
        .await;
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

fn error_policy(tap: Arc<FlowTap>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(tap = %tap.name_any(), error = %error, "will retry");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(tap: Arc<FlowTap>, ctx: Arc<Context>) -> Result<Action> {
    let ns = tap.namespace().unwrap_or_default();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, tap, |event| async {
        match event {
            Event::Apply(tap) => apply(&tap, &ctx).await,
            Event::Cleanup(tap) => cleanup(&tap, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Reconcile(e.to_string()))
}

fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time")
}

/// How long a new ephemeral tap waits for the session of the listener that created it.
const REGISTRATION_GRACE: Duration = Duration::from_secs(5);
/// The `Listening` reason of a tap that has never had a listener.
const NO_LISTENER_YET: &str = "NoListenerYet";

fn age(t: &Time, now: Timestamp) -> Duration {
    Duration::from_secs((now.as_second() - t.0.as_second()).max(0) as u64)
}

async fn apply(tap: &FlowTap, ctx: &Context) -> Result<Action> {
    let name = tap.name_any();
    let ns = tap.namespace().unwrap_or_default();
    let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &ns);
    let cfg = &ctx.config;
    let now = now();

    // Sessions of relays that stopped renewing (crashed, partitioned) expire.
    let expired = |s: &crate::crd::Session| age(s.renew_time.as_ref().unwrap_or(&s.since), now) > cfg.session_ttl;
    let mut tap = tap.clone();
    if tap.status.as_ref().is_some_and(|s| s.sessions.iter().any(expired)) {
        match update_status(&api, &name, |status| {
            let before = status.sessions.len();
            status.sessions.retain(|s| !expired(s));
            status.sessions.len() != before
        })
        .await?
        {
            Some(updated) => tap = updated,
            None => return Ok(Action::await_change()),
        }
        tracing::info!(tap = %name, "expired sessions of relays that stopped renewing");
    }
    let status = tap.status.clone().unwrap_or_default();
    let listening = !status.sessions.is_empty();

    // An ephemeral tap nobody listens to goes after the linger period.
    let idle_since = condition(&status.conditions, "Listening")
        .filter(|c| c.status == "False")
        .map(|c| c.last_transition_time.clone())
        .or_else(|| {
            if status.conditions.is_empty() {
                tap.creation_timestamp()
            } else {
                None
            }
        });
    // A listener creates its tap first and registers its session next: a tap that never had a
    // listener and is younger than the grace is waiting for that, not idle (with a short
    // linger it was deleted in between).
    let never_listened = condition(&status.conditions, "Listening").is_none_or(|c| c.reason == NO_LISTENER_YET);
    let linger_left = match &idle_since {
        Some(since) if !tap.spec.persistent && !listening => {
            let born = tap.creation_timestamp().map_or(REGISTRATION_GRACE, |t| age(&t, now));
            let grace = match never_listened {
                true => REGISTRATION_GRACE.saturating_sub(born),
                false => Duration::ZERO,
            };
            Some(cfg.linger.saturating_sub(age(since, now)).max(grace))
        }
        _ => None,
    };
    if linger_left == Some(Duration::ZERO) {
        let idle = idle_since.as_ref().map(|s| age(s, now)).unwrap_or_default();
        // Only the version looked at: a session registered since then makes this a conflict,
        // and the next reconcile sees the listener.
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
        return Ok(Action::await_change());
    }

    let output = output_name(&name);
    let (output_state, output_existed) = ensure_output(&tap, &output, ctx).await?;
    // Output first, then the flow: a flow naming a missing output blocks logging-operator.
    let flow_state = match (&output_state, tap.spec.mode) {
        (OutputState::NameTaken, _) => FlowState::Skipped,
        (_, TapMode::Patch) => {
            let state = ensure_flow_ref(&tap, &output, ctx, output_existed).await?;
            remove_mirror(&tap, ctx).await?;
            state
        }
        (_, TapMode::Mirror) => {
            // The mirror first, so switching from Patch loses no record.
            let state = ensure_mirror(&tap, &output, ctx).await?;
            ensure_flow_ref_removed(&tap, &output, ctx).await?;
            state
        }
    };

    let generation = tap.metadata.generation;
    let mut conditions = status.conditions.clone();
    let (ok, reason, message) = match &output_state {
        OutputState::Ready => (true, "Created", "the output exists".to_owned()),
        OutputState::Problems(p) => (
            false,
            "OutputProblems",
            format!("logging-operator reports: {}", p.join("; ")),
        ),
        OutputState::NameTaken => (
            false,
            "NameTaken",
            format!("an output named {output} exists and is not managed by log-socket"),
        ),
    };
    set_condition(&mut conditions, "OutputReady", ok, reason, &message, now, generation);
    let (ok, reason, message) = match &flow_state {
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
                tap.spec.flow_ref.kind, tap.spec.flow_ref.name, tap.spec.flow_ref.name
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
            format!(
                "a {} named {mirror} exists and is not managed by log-socket",
                tap.spec.flow_ref.kind
            ),
        ),
        FlowState::Missing => (
            false,
            "FlowNotFound",
            format!("{} {} does not exist", tap.spec.flow_ref.kind, tap.spec.flow_ref.name),
        ),
        FlowState::Skipped => (false, "OutputNotReady", "waiting for the output".to_owned()),
    };
    set_condition(&mut conditions, "FlowPatched", ok, reason, &message, now, generation);
    let (l_reason, l_message) = if listening {
        ("Listeners", format!("{} listener(s)", status.sessions.len()))
    } else if never_listened {
        (NO_LISTENER_YET, "nobody has listened yet".to_owned())
    } else {
        ("NoListeners", "nobody is listening".to_owned())
    };
    set_condition(
        &mut conditions,
        "Listening",
        listening,
        l_reason,
        &l_message,
        now,
        generation,
    );

    let (receiving, r_reason, r_message) = match &status.last_record_time {
        None => (false, "NoRecordsYet", "no record has arrived yet".to_owned()),
        Some(t) if age(t, now) <= RECEIVING_WINDOW => (true, "Records", "records are arriving".to_owned()),
        Some(t) => (false, "Quiet", format!("no record for {}s", age(t, now).as_secs())),
    };
    set_condition(
        &mut conditions,
        "Receiving",
        receiving,
        r_reason,
        &r_message,
        now,
        generation,
    );

    let phase = match (&output_state, &flow_state) {
        (OutputState::NameTaken, _) | (_, FlowState::Missing | FlowState::NameTaken(_)) => Phase::Failed,
        (OutputState::Problems(_), _) | (_, FlowState::Problems(_)) => Phase::Degraded,
        (OutputState::Ready, FlowState::Patched | FlowState::Repaired | FlowState::Mirrored) => Phase::Active,
        _ => Phase::Pending,
    };
    let output_kind = tap.spec.flow_ref.kind.output_kind();
    let patch = json!({"status": {
        "phase": phase,
        "conditions": conditions,
        "output": OutputRef { kind: output_kind, name: output.clone() },
        "observedGeneration": generation,
    }});
    let changed = status.phase != Some(phase)
        || status.conditions != conditions
        || status.observed_generation != generation
        || status.output.as_ref().map(|o| &o.name) != Some(&output);
    if changed {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if matches!(flow_state, FlowState::Repaired) {
        publish(
            ctx,
            &tap,
            EventType::Normal,
            "FlowRepaired",
            &format!("appended {output} to the flow again"),
        )
        .await;
    }

    // Come back for drift, session expiry and the linger deadline.
    let mut next = Duration::from_secs(30).min(cfg.session_ttl / 2);
    if let Some(left) = linger_left {
        next = next.min(left + Duration::from_secs(1));
    }
    Ok(Action::requeue(next.max(Duration::from_secs(1))))
}

async fn cleanup(tap: &FlowTap, ctx: &Context) -> Result<Action> {
    let name = tap.name_any();
    let output = output_name(&name);
    let ns = tap.namespace().unwrap_or_default();
    if tap.status.as_ref().and_then(|s| s.phase) != Some(Phase::Terminating) {
        let api: Api<FlowTap> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {"phase": Phase::Terminating}});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(tap = %name, error = %e, "could not mark the tap Terminating");
        }
    }
    // The flows first: a flow pointing at a missing output stops logging-operator's rendering.
    ensure_flow_ref_removed(tap, &output, ctx).await?;
    remove_mirror(tap, ctx).await?;
    let deleted = match tap.spec.flow_ref.kind {
        FlowKind::Flow => delete_managed::<Output>(Api::namespaced(ctx.client.clone(), &ns), &output, tap).await?,
        FlowKind::ClusterFlow => {
            delete_managed::<ClusterOutput>(Api::namespaced(ctx.client.clone(), &ns), &output, tap).await?
        }
    };
    if deleted {
        tracing::info!(tap = %name, output = %output, "tap removed: flow restored, output deleted");
    }
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, tap: &FlowTap, type_: EventType, reason: &str, note: &str) {
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

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
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
    let transition = match condition(conditions, type_) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
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

enum OutputState {
    Ready,
    Problems(Vec<String>),
    NameTaken,
}

enum FlowState {
    Patched,
    Repaired,
    Mirrored,
    Problems(Vec<String>),
    NameTaken(String),
    Missing,
    Skipped,
}

/// A tap whose last record is older than this is not `Receiving`.
const RECEIVING_WINDOW: Duration = Duration::from_secs(120);

/// The http output a tap needs (see the logging-operator notes in the README).
pub fn desired_output_spec(tap: &FlowTap, config: &OperatorConfig) -> Value {
    let key = TapKey {
        kind: tap.spec.flow_ref.kind,
        namespace: tap.namespace().unwrap_or_default(),
        name: tap.spec.flow_ref.name.clone(),
    };
    let b = &tap.spec.buffer;
    let mut http = json!({
        "endpoint": format!("{}/{key}", config.ingest_url.trim_end_matches('/')),
        "json_array": true,
        "format": {"type": "json", "add_newline": false},
        "open_timeout": 5,
        "read_timeout": 10,
        "retryable_response_codes": [429, 502, 503, 504],
        "buffer": {
            "type": "memory",
            // No chunk keys: flush on the interval instead of fluentd's 10-minute time chunks.
            "tags": "[]",
            "flush_mode": "interval",
            "flush_interval": b.flush_interval,
            "chunk_limit_size": b.chunk_limit_size,
            "total_limit_size": b.total_limit_size,
            "overflow_action": "drop_oldest_chunk",
            "retry_forever": false,
            "retry_max_times": b.retry_max_times,
        },
    });
    if let Some(secret) = &config.auth_secret {
        let value_from = |key: &str| json!({"valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
        http["auth"] = json!({"username": value_from("username"), "password": value_from("password")});
    }
    if let Some(secret) = &config.tls_secret {
        let mount_from = |key: &str| json!({"mountFrom": {"secretKeyRef": {"name": secret, "key": key}}});
        http["tls_ca_cert_path"] = mount_from("ca.crt");
        http["tls_client_cert_path"] = mount_from("tls.crt");
        http["tls_private_key_path"] = mount_from("tls.key");
    }
    json!({ "http": http })
}

fn owner(tap: &FlowTap) -> OwnerReference {
    OwnerReference {
        api_version: "logsocket.dev/v1alpha1".into(),
        kind: "FlowTap".into(),
        name: tap.name_any(),
        uid: tap.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn is_ours(meta: &kube::api::ObjectMeta, tap: &FlowTap) -> bool {
    super::is_managed(meta)
        && tap
            .uid()
            .is_some_and(|uid| super::owning_tap_uids(meta).contains(&uid.as_str()))
}

async fn ensure_output(tap: &FlowTap, name: &str, ctx: &Context) -> Result<(OutputState, bool)> {
    let ns = tap.namespace().unwrap_or_default();
    let output: OutputSpec =
        serde_json::from_value(desired_output_spec(tap, &ctx.config)).expect("a valid output spec");
    let repaired = ("OutputRepaired", format!("{name} was changed and was restored"));
    match tap.spec.flow_ref.kind.output_kind() {
        OutputKind::Output => {
            let mut obj = Output::new(name, output);
            let api = Api::namespaced(ctx.client.clone(), &ns);
            ensure_managed(api, &mut obj, tap, ctx, |o| &mut o.spec, repaired).await
        }
        OutputKind::ClusterOutput => {
            let spec = ClusterOutputSpec {
                protected: None,
                output,
            };
            let mut obj = ClusterOutput::new(name, spec);
            let api = Api::namespaced(ctx.client.clone(), &ns);
            ensure_managed(api, &mut obj, tap, ctx, |o| &mut o.spec, repaired).await
        }
    }
}

/// Create `desired` if missing; repair its spec if someone changed it; refuse to touch an
/// object of that name log-socket does not own.
async fn ensure_managed<K, S>(
    api: Api<K>,
    desired: &mut K,
    tap: &FlowTap,
    ctx: &Context,
    spec: impl Fn(&mut K) -> &mut S,
    (reason, note): (&str, String),
) -> Result<(OutputState, bool)>
where
    K: Resource + HasStatus + Clone + Serialize + DeserializeOwned + Debug,
    K::DynamicType: Default,
    S: Serialize + Clone + PartialEq,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    desired.meta_mut().labels = Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into());
    desired.meta_mut().owner_references = Some(vec![owner(tap)]);
    match api.get_opt(&name).await? {
        None => {
            api.create(&PostParams::default(), desired).await?;
            tracing::info!(tap = %tap.name_any(), kind = K::kind(&Default::default()).as_ref(), name = %name, "created");
            Ok((OutputState::Ready, false))
        }
        Some(mut existing) => {
            if !is_ours(existing.meta(), tap) {
                return Ok((OutputState::NameTaken, true));
            }
            let want = spec(desired).clone();
            if *spec(&mut existing) != want {
                *spec(&mut existing) = want;
                api.replace(&name, &PostParams::default(), &existing).await?;
                publish(ctx, tap, EventType::Normal, reason, &note).await;
                return Ok((OutputState::Ready, true));
            }
            match existing.problems() {
                p if !p.is_empty() => Ok((OutputState::Problems(p), true)),
                _ => Ok((OutputState::Ready, true)),
            }
        }
    }
}

async fn delete_managed<K>(api: Api<K>, name: &str, tap: &FlowTap) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await? {
        Some(existing) if is_ours(existing.meta(), tap) => match api.delete(name, &Default::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        },
        _ => Ok(false),
    }
}

/// `output_existed`: the output was there before this reconcile, so an append now repairs a
/// flow that had lost its ref (read from the API, not from a possibly stale status).
async fn ensure_flow_ref(tap: &FlowTap, output: &str, ctx: &Context, output_existed: bool) -> Result<FlowState> {
    Ok(match edit_flow_refs(tap, output, ctx, true).await? {
        None => FlowState::Missing,
        Some((true, _)) if output_existed => FlowState::Repaired,
        Some((_, problems)) if !problems.is_empty() => FlowState::Problems(problems),
        Some(_) => FlowState::Patched,
    })
}

/// Mirror mode: a managed sibling of the tapped flow, with its spec (match, filters, ...) and
/// the tap's output as its only output. Follows the flow; removed when the flow is gone.
async fn ensure_mirror(tap: &FlowTap, output: &str, ctx: &Context) -> Result<FlowState> {
    let ns = tap.namespace().unwrap_or_default();
    let name = output_name(&tap.name_any());
    let flow = &tap.spec.flow_ref.name;
    let synced = || ("MirrorSynced", format!("{name} was brought in line with {flow}"));
    let state = match tap.spec.flow_ref.kind {
        FlowKind::Flow => {
            let api = Api::<Flow>::namespaced(ctx.client.clone(), &ns);
            let Some(original) = api.get_opt(flow).await? else {
                delete_managed(api, &name, tap).await?;
                return Ok(FlowState::Missing);
            };
            let mut spec = original.spec;
            spec.local_output_refs = Some(vec![output.to_owned()]);
            spec.global_output_refs = None;
            let mut mirror = Flow::new(&name, spec);
            ensure_managed(api, &mut mirror, tap, ctx, |f| &mut f.spec, synced()).await?
        }
        FlowKind::ClusterFlow => {
            let api = Api::<ClusterFlow>::namespaced(ctx.client.clone(), &ns);
            let Some(original) = api.get_opt(flow).await? else {
                delete_managed(api, &name, tap).await?;
                return Ok(FlowState::Missing);
            };
            let mut spec = original.spec;
            spec.global_output_refs = Some(vec![output.to_owned()]);
            let mut mirror = ClusterFlow::new(&name, spec);
            ensure_managed(api, &mut mirror, tap, ctx, |f| &mut f.spec, synced()).await?
        }
    };
    Ok(match state.0 {
        OutputState::Ready => FlowState::Mirrored,
        OutputState::Problems(p) => FlowState::Problems(p),
        OutputState::NameTaken => FlowState::NameTaken(name),
    })
}

async fn remove_mirror(tap: &FlowTap, ctx: &Context) -> Result<()> {
    let ns = tap.namespace().unwrap_or_default();
    let name = output_name(&tap.name_any());
    let removed = match tap.spec.flow_ref.kind {
        FlowKind::Flow => delete_managed::<Flow>(Api::namespaced(ctx.client.clone(), &ns), &name, tap).await?,
        FlowKind::ClusterFlow => {
            delete_managed::<ClusterFlow>(Api::namespaced(ctx.client.clone(), &ns), &name, tap).await?
        }
    };
    if removed {
        tracing::info!(tap = %tap.name_any(), mirror = %name, "mirror flow removed");
    }
    Ok(())
}

async fn ensure_flow_ref_removed(tap: &FlowTap, output: &str, ctx: &Context) -> Result<()> {
    edit_flow_refs(tap, output, ctx, false).await.map(|_| ())
}

/// [`edit_refs`] on the tap's Flow (`localOutputRefs`) or ClusterFlow (`globalOutputRefs`).
async fn edit_flow_refs(tap: &FlowTap, output: &str, ctx: &Context, add: bool) -> Result<Option<(bool, Vec<String>)>> {
    let ns = tap.namespace().unwrap_or_default();
    let flow = &tap.spec.flow_ref.name;
    match tap.spec.flow_ref.kind {
        FlowKind::Flow => {
            let api = Api::<Flow>::namespaced(ctx.client.clone(), &ns);
            edit_refs(api, flow, |f| &mut f.spec.local_output_refs, output, add).await
        }
        FlowKind::ClusterFlow => {
            let api = Api::<ClusterFlow>::namespaced(ctx.client.clone(), &ns);
            edit_refs(api, flow, |f| &mut f.spec.global_output_refs, output, add).await
        }
    }
}

/// Make `output` the last entry of the flow's list (`add`), or take it out. The lists are
/// atomic, so this is a full replace guarded by resourceVersion, retried on conflict; fields
/// log-socket does not model are kept. Returns `None` if the flow does not exist, else whether
/// it changed anything and the problems logging-operator reports for the flow.
pub(super) async fn edit_refs<K>(
    api: Api<K>,
    name: &str,
    refs: impl Fn(&mut K) -> &mut Option<Vec<String>>,
    output: &str,
    add: bool,
) -> Result<Option<(bool, Vec<String>)>>
where
    K: Resource + HasStatus + Clone + Serialize + DeserializeOwned + Debug,
{
    for attempt in 0..20u64 {
        let Some(mut flow) = api.get_opt(name).await? else {
            return Ok(None);
        };
        let reported = flow.problems();
        let list = refs(&mut flow);
        let current = list.clone().unwrap_or_default();
        let mut wanted: Vec<String> = current.iter().filter(|r| *r != output).cloned().collect();
        if add {
            wanted.push(output.to_owned());
        }
        if wanted == current {
            return Ok(Some((false, reported)));
        }
        // Leave no empty list behind where there was none.
        *list = if wanted.is_empty() && !add { None } else { Some(wanted) };
        match api.replace(name, &PostParams::default(), &flow).await {
            Ok(_) => return Ok(Some((true, reported))),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Reconcile(format!("the flow {name} kept changing; will retry")))
}

/// Keep the relay's taps open for every FlowTap (so a persistent tap takes records, for late
/// joiners, while nobody listens), apply their replay size, and report when records last
/// arrived (`status.lastRecordTime`, every third of the session TTL), until `shutdown` completes.
pub async fn track_taps(
    client: kube::Client,
    config: Arc<OperatorConfig>,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()>,
) {
    use kube::runtime::watcher::Event as W;
    use std::collections::HashMap;
    let stream = watcher::watcher(config.taps(&client), watcher::Config::default());
    tokio::pin!(stream);
    tokio::pin!(shutdown);
    // (namespace, FlowTap name) -> its relay tap and the lastRecordTime it shows, in seconds.
    let mut known: HashMap<(String, String), (TapKey, i64)> = HashMap::new();
    let mut report = tokio::time::interval((config.session_ttl / 3).max(Duration::from_secs(1)));
    loop {
        let event = tokio::select! {
            e = stream.next() => match e { Some(e) => e, None => break },
            _ = report.tick() => {
                report_last_records(&client, &relay, &mut known).await;
                continue;
            }
            _ = &mut shutdown => break,
        };
        match event {
            Ok(W::Apply(tap)) | Ok(W::InitApply(tap)) => {
                if let Some(key) = super::tap_key(&tap) {
                    let live = tap.metadata.deletion_timestamp.is_none();
                    relay.pin_tap(&key, live);
                    relay.set_replay_records(&key, tap.spec.replay.records as usize);
                    relay.announce(
                        &key,
                        crate::relay::protocol::tap_status(&tap.name_any(), tap.status.as_ref()),
                    );
                    let shown = tap
                        .status
                        .as_ref()
                        .and_then(|s| s.last_record_time.as_ref())
                        .map_or(0, |t| t.0.as_second());
                    known.insert((key.namespace.clone(), tap.name_any()), (key, shown));
                }
            }
            Ok(W::Delete(tap)) => {
                if let Some(key) = super::tap_key(&tap) {
                    relay.pin_tap(&key, false);
                    known.remove(&(key.namespace, tap.name_any()));
                }
            }
            Ok(W::Init) | Ok(W::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watching FlowTaps failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn report_last_records(
    client: &kube::Client,
    relay: &Relay,
    known: &mut std::collections::HashMap<(String, String), (TapKey, i64)>,
) {
    for ((ns, name), (key, shown)) in known.iter_mut() {
        let Some(last) = relay.tap(key).and_then(|t| t.last_record()) else {
            continue;
        };
        let secs = last
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if secs <= *shown {
            continue;
        }
        let Ok(time) = Timestamp::from_second(secs) else {
            continue;
        };
        let api: Api<FlowTap> = Api::namespaced(client.clone(), ns);
        let patch = json!({"status": {"lastRecordTime": Time(time)}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => *shown = secs,
            Err(e) => tracing::debug!(tap = %name, error = %e, "could not report the last record time"),
        }
    }
}
