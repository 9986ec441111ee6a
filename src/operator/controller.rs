//! The FlowTap controller's wiring: the watches it keeps, what change of which object
//! triggers a pass over which FlowTap, and the start-up sweep of leftovers. What one pass does
//! is [`super::reconcile`] (finalizer, status, timers) and [`super::pass`] (the children, in
//! order); the controller's state is [`super::context::Context`].

use super::context::Context;
use super::OperatorConfig;
use crate::k8s::flowtap::{FlowKind, FlowTap};
use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, Logging, Output};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::future::Future;
use std::sync::Arc;

use super::reconcile::{error_policy, reconcile};

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
        unclear_checks: Default::default(),
        retrying: Default::default(),
        budget: Default::default(),
        check_pods: Default::default(),
    });
    // Leader (or the only controller) from here until this function returns.
    let metrics = ctx.config.metrics.clone();
    metrics.leader.set(1);
    struct NotLeader(crate::relay::metrics::ControllerMetrics);
    impl Drop for NotLeader {
        fn drop(&mut self) {
            self.0.leader.set(0);
        }
    }
    let _not_leader = NotLeader(metrics);
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
