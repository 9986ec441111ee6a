//! The tap operator: listeners register on FlowTaps ([`sessions`]), and a kube-runtime
//! controller turns each FlowTap into a logging-operator output appended to its flow
//! ([`controller`]).
//!
//! The controller runs in one replica (the leader):
//! - [`controller`]: its wiring: the watches and what triggers a pass over which FlowTap;
//! - [`context`]: what every pass shares (client, settings, caches, bookkeeping), and Events;
//! - `reconcile`: one reconcile: finalizer (Apply/Cleanup), session expiry, idle taps, status
//!   write, requeue, error backoff;
//! - `pass`: the pass over the children, in order: preflight, output, validation, flow ref,
//!   configuration check; sharing, contested refs, sticky refusals;
//! - [`preflight`]: what must hold before a flow may name the tap's output;
//! - [`trial`]: one new patch at a time per Logging, so a failed configuration check is blamed
//!   on the right tap (or on none);
//! - `output_spec`: the generated output's spec, pure (and `flushInterval` in fluentd's seconds);
//! - `children`: the generated output, the flow ref or mirror flow, created and removed in
//!   the order logging-operator needs;
//! - [`in_use`]: the finalizer that keeps a generated output while any flow names it;
//! - [`status`]: conditions and phase as a pure function of what was observed;
//! - `events`: Normal Events for what a pass changed;
//! - [`leftovers`]: outputs and refs left by FlowTaps that are gone;
//! - [`lease`]: leader election, so one replica runs the controller.
//!
//! Every replica runs the relay's cluster adapters:
//! - [`sessions`]: listeners registering on (and creating) FlowTaps, renewed by each relay;
//! - [`track`]: every relay keeps its taps open for existing FlowTaps.
//!
//! The operator never reads records: it only shapes the pipeline that delivers them.

pub mod budget;
pub mod buffer_bounds;
pub mod check_pod;
mod children;
pub mod context;
pub mod controller;
pub mod cost;
mod events;
pub mod in_use;
pub mod lease;
pub mod leftovers;
mod mirror;
mod output_spec;
mod pass;
pub mod preflight;
mod reconcile;
pub mod remove_taps;
pub mod sessions;
mod stage;
pub mod status;
pub mod track;
pub mod trial;

/// The http output a FlowTap gets (what logging-operator then renders for fluentd).
pub use output_spec::{desired_output_spec, fluentd_seconds};

use crate::k8s::flowtap::{FlowKind, FlowTap, FlowTapStatus};
use crate::protocol::TapKey;
use kube::api::{Api, PostParams};
use std::time::Duration;
use trial::CONFIG_RETRY;

/// Label on everything log-socket creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "log-socket");

/// Finalizer that makes deletion restore the flow and remove the output.
pub const FINALIZER: &str = "logsocket.dev/cleanup";

/// Settings of the operator.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// This relay instance (the pod name), recorded in the sessions it registers.
    pub instance: String,
    /// Base URL fluentd reaches ingest at, e.g. `http://log-socket.log-socket.svc:10000`.
    pub ingest_url: String,
    /// How long an ephemeral tap without listeners stays before it is deleted.
    pub linger: Duration,
    /// How long a cheap ephemeral tap stays after its last listener instead (warm), so the next
    /// listener attaches with no change of the Logging.
    pub warm_linger: Duration,
    /// A tap whose measured cost is at most this many bytes/s is cheap (0: no warm taps).
    pub warm_max_bytes_per_second: u64,
    /// Tap-caused flow edits of one Logging come in batches at most this often (see
    /// [`budget`]); zero: no budget.
    pub config_change_interval: Duration,
    /// Sessions not renewed for this long are dropped (their relay is gone).
    pub session_ttl: Duration,
    /// Keys that sign each generated output's own ingest credential (see
    /// [`crate::auth::ingest_keys`]); `None` when ingest does not use them.
    pub ingest_keys: Option<std::sync::Arc<crate::auth::ingest_keys::IngestKeys>>,
    /// Secret (in the tap's namespace) with `ca.crt`, `tls.crt`, `tls.key` for the output's TLS.
    pub tls_secret: Option<String>,
    /// How long logging-operator may take to validate a generated output before the tap is
    /// refused (`OutputNotValidated`); the flow is never changed before.
    pub output_accept_timeout: Duration,
    /// How often leftovers of FlowTaps that are gone without their cleanup are swept.
    pub sweep_interval: Duration,
    /// A tap refused for its configuration check (or a flow that cannot use its output) is
    /// tried again after this long ([`CONFIG_RETRY`]; tests shorten it).
    pub config_retry: Duration,
    /// Memory one tap's buffer may use in the shared fluentd (`--max-tap-buffer-bytes`).
    pub max_tap_buffer_bytes: u64,
    /// The relay's largest request (`--max-body-bytes`): a tap's chunk may not be larger.
    pub max_request_bytes: u64,
    /// Mode of the ephemeral taps listeners create.
    pub mode: crate::k8s::flowtap::TapMode,
    /// Only FlowTaps of this namespace (a namespaced install); all namespaces when `None`.
    pub namespace: Option<String>,
    /// Caps on what listeners may hold (see [`Limits`]).
    pub limits: Limits,
    /// Where the controller counts its reconciles (the relay's registry serves them).
    pub metrics: crate::relay::metrics::ControllerMetrics,
}

/// Caps on what listeners may make the operator hold, each refused with 429 and the reason.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Flows one user may be tapping at once, counted over every relay from the FlowTaps'
    /// sessions (each a FlowTap it may cause to be created); the ServiceAccounts of one
    /// namespace share one such budget.
    pub taps_per_user: usize,
    /// Sessions one FlowTap holds, from all relays.
    pub sessions_per_tap: usize,
    /// FlowTaps one namespace may hold before listeners may create no more there (joining an
    /// existing one stays possible): each is a change of the shared Logging.
    pub taps_per_namespace: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            taps_per_user: 10,
            sessions_per_tap: 200,
            taps_per_namespace: 20,
        }
    }
}

impl OperatorConfig {
    /// Settings with the service's defaults: relay `instance`, fluentd posting to `ingest_url`.
    pub fn new(instance: &str, ingest_url: &str) -> OperatorConfig {
        OperatorConfig {
            instance: instance.to_owned(),
            ingest_url: ingest_url.to_owned(),
            linger: Duration::from_secs(60),
            // Warm taps are the service's default (its flags); embedders and tests opt in.
            warm_linger: Duration::from_secs(1800),
            warm_max_bytes_per_second: 0,
            config_change_interval: Duration::ZERO,
            session_ttl: Duration::from_secs(60),
            ingest_keys: None,
            tls_secret: None,
            output_accept_timeout: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(60),
            config_retry: CONFIG_RETRY,
            max_tap_buffer_bytes: buffer_bounds::DEFAULT_MAX_BYTES,
            max_request_bytes: 16 << 20,
            mode: crate::k8s::flowtap::TapMode::Patch,
            namespace: None,
            limits: Default::default(),
            metrics: Default::default(),
        }
    }

    /// Objects of kind `K` in the operator's scope.
    pub fn scoped<K>(&self, client: &kube::Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }

    /// FlowTaps in the operator's scope.
    pub fn taps(&self, client: &kube::Client) -> Api<FlowTap> {
        self.scoped(client)
    }
}

/// Name of the ephemeral FlowTap of a flow: `flow-NAME` or `clusterflow-NAME`, shortened with
/// a hash when that would exceed the 253 characters of an object name.
pub fn ephemeral_tap_name(kind: FlowKind, flow: &str) -> String {
    bounded(&format!("{}-{flow}", kind.path_segment()), 253)
}

/// Name of the output generated for a FlowTap (and of its mirror flow in Mirror mode).
pub fn output_name(tap: &FlowTap) -> String {
    let ns = kube::ResourceExt::namespace(tap).unwrap_or_default();
    output_name_of(tap.spec.flow_ref.kind, &ns, &kube::ResourceExt::name_any(tap))
}

/// Name of the output generated for FlowTap `tap` of namespace `ns` tapping a `kind` flow:
/// `logsocket-TAP` for an Output; `logsocket-NS.TAP` for a ClusterOutput, because
/// logging-operator resolves a ClusterFlow's `globalOutputRefs` by name alone, across every
/// namespace it reads (with `allowClusterResourcesFromAllNamespaces`): same-named ClusterFlows
/// in two namespaces must not get same-named ClusterOutputs, or one's records feed the other's
/// tap. A namespace has no '.', so the name says which namespace and tap it is for.
pub fn output_name_of(kind: FlowKind, ns: &str, tap: &str) -> String {
    match kind {
        FlowKind::Flow => bounded(&format!("logsocket-{tap}"), 253),
        FlowKind::ClusterFlow => bounded(&format!("logsocket-{ns}.{tap}"), 253),
    }
}

fn bounded(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hash: String = digest.as_ref()[..5].iter().map(|b| format!("{b:02x}")).collect();
    let keep = max - hash.len() - 1;
    format!("{}-{hash}", name[..keep].trim_end_matches(['-', '.']))
}

/// Whether log-socket created this object (it carries the managed-by label).
pub fn is_managed(meta: &kube::api::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .map(String::as_str)
        == Some(MANAGED_BY.1)
}

/// Annotation naming the FlowTap (by UID) an object was generated for.
///
/// Not an ownerReference on purpose: Kubernetes' garbage collector would delete an Output
/// whose FlowTap is gone (its finalizer removed by hand, or foreground deletion) while a flow
/// still names it, and a flow naming a missing output stops logging-operator's render. The
/// operator's cleanup and sweep remove them in the safe order instead.
pub const TAP_UID: &str = "logsocket.dev/flowtap-uid";

/// UIDs of the FlowTaps an object was generated for: the annotation, or the ownerReferences
/// of objects an earlier version generated.
pub fn owning_tap_uids(meta: &kube::api::ObjectMeta) -> Vec<&str> {
    let annotated = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(TAP_UID))
        .map(String::as_str);
    let owners = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "FlowTap")
        .map(|o| o.uid.as_str());
    annotated.into_iter().chain(owners).collect()
}

/// The relay tap a FlowTap feeds.
pub fn tap_key(tap: &FlowTap) -> Option<TapKey> {
    Some(TapKey {
        kind: tap.spec.flow_ref.kind,
        namespace: kube::ResourceExt::namespace(tap)?,
        name: tap.spec.flow_ref.name.clone(),
    })
}

/// Read-modify-write of a FlowTap's status, guarded by resourceVersion and retried on conflict
/// (several relays and the controller write it). `change` returns false to leave it alone.
/// Returns `None` when the FlowTap is gone. `known`: a copy just read or written, tried first
/// instead of a read (a stale one costs a conflict and a read).
pub async fn update_status(
    api: &Api<FlowTap>,
    name: &str,
    mut known: Option<FlowTap>,
    mut change: impl FnMut(&mut FlowTapStatus) -> bool,
) -> Result<Option<FlowTap>, kube::Error> {
    let mut attempt = 0;
    loop {
        let tap = match known.take() {
            Some(tap) => Some(tap),
            None => api.get_opt(name).await?,
        };
        let Some(mut tap) = tap else {
            return Ok(None);
        };
        let mut status = tap.status.clone().unwrap_or_default();
        if !change(&mut status) {
            return Ok(Some(tap));
        }
        status.listeners = status.sessions.len() as u32;
        tap.status = Some(status);
        match api.replace_status(name, &PostParams::default(), &tap).await {
            Ok(tap) => return Ok(Some(tap)),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 40 => {
                attempt += 1;
                tokio::time::sleep(conflict_backoff(attempt)).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Wait before retry `attempt` after a conflict: growing (10 ms × 1.5ⁿ, at most 250 ms) and
/// jittered to 50–150 %, so concurrent writers (many listeners connecting at once, several
/// relays, the controller) spread out instead of colliding again in lockstep.
fn conflict_backoff(attempt: u64) -> Duration {
    let attempt = u32::try_from(attempt).unwrap_or(u32::MAX).saturating_add(1);
    let base = crate::backoff::step(Duration::from_millis(10), 1.5, Duration::from_millis(250), attempt);
    crate::backoff::jittered(base, 0.5, 1.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_never_too_long() {
        assert_eq!(ephemeral_tap_name(FlowKind::Flow, "web"), "flow-web");
        assert_eq!(ephemeral_tap_name(FlowKind::ClusterFlow, "all"), "clusterflow-all");
        assert_eq!(output_name_of(FlowKind::Flow, "shop", "flow-web"), "logsocket-flow-web");
        assert_eq!(
            output_name_of(FlowKind::ClusterFlow, "shop", "clusterflow-all"),
            "logsocket-shop.clusterflow-all"
        );
        assert_ne!(
            output_name_of(FlowKind::ClusterFlow, "a", "clusterflow-audit"),
            output_name_of(FlowKind::ClusterFlow, "b", "clusterflow-audit"),
            "same-named ClusterFlows in two namespaces get two ClusterOutputs"
        );
        let long = "a".repeat(253);
        let name = ephemeral_tap_name(FlowKind::Flow, &long);
        assert_eq!(name.len(), 253);
        assert_eq!(name, ephemeral_tap_name(FlowKind::Flow, &long), "stable");
        assert_ne!(name, ephemeral_tap_name(FlowKind::Flow, &"a".repeat(252)));
    }

    #[test]
    fn conflict_retries_back_off_with_jitter_up_to_a_cap() {
        for attempt in 1..40 {
            let d = conflict_backoff(attempt);
            assert!(d <= Duration::from_millis(375), "{attempt}: {d:?}");
            assert!(d >= Duration::from_millis(7), "{attempt}: {d:?}");
        }
        assert!(conflict_backoff(30) > conflict_backoff(1) * 4, "grows");
    }
}
