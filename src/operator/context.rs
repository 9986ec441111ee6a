//! What every pass of the controller shares ([`Context`]): the client, the settings, the
//! watch caches, and the bookkeeping that outlives one pass; and how a pass tells the story in
//! Events ([`publish`]).

use super::OperatorConfig;
use crate::k8s::flowtap::{FlowTap, PatchedFlow};
use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, Logging, Output};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::Resource;
use std::sync::Arc;

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

/// Record an Event on the FlowTap (a failure to record is logged, never fatal).
pub async fn publish(ctx: &Context, tap: &FlowTap, type_: EventType, reason: &str, note: &str) {
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
