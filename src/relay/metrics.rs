//! Prometheus metrics of the relay (`/metrics` on the API port, authenticated).
//!
//! Labels name taps (kind, flow_namespace, name) and reasons, never users: usernames would leak
//! who watches what and grow without bound. The tap's namespace is `flow_namespace`, not
//! `namespace`: Prometheus gives a scraped series' `namespace` to the target (the relay's pod)
//! and renames the series' own to `exported_namespace`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-tap series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TapLabels {
    pub kind: String,
    pub flow_namespace: String,
    pub name: String,
}

impl From<&crate::protocol::TapKey> for TapLabels {
    fn from(key: &crate::protocol::TapKey) -> Self {
        TapLabels {
            kind: key.kind.path_segment().to_owned(),
            flow_namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }
}

/// Why records did not reach a listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// A listener's queue was full: its oldest records were dropped.
    slow_client,
    /// Ingest for a path with no open tap: accepted (202) and discarded.
    no_tap,
    /// Bus messages (not records: how many a message held is unknown) that did not open (not
    /// sealed with a bus key, forged, moved from another tap, replayed) or were too large.
    bus_invalid,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: DropReason,
}

/// Kinds of errors counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

/// Ingest responses by status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

/// FlowTaps by phase and stage (`-` for none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowTapLabels {
    pub phase: String,
    pub stage: String,
}

/// `log_socket_build_info`'s labels: which build runs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
}

/// How a reconcile ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReconcileResult {
    ok,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: ReconcileResult,
}

/// The FlowTap controller's series: only the replica running it (the leader) counts.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub in_flight: Gauge,
    /// 1 while this replica runs the controller (holds the Lease), else 0.
    pub leader: Gauge,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            in_flight: Gauge::default(),
            leader: Gauge::default(),
        }
    }
}

impl ControllerMetrics {
    /// Count one reconcile that took `took`.
    pub fn reconciled(&self, ok: bool, took: std::time::Duration) {
        let result = if ok {
            ReconcileResult::ok
        } else {
            ReconcileResult::error
        };
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }
}

/// The nats bus's series (none with the embedded bus).
#[derive(Clone, Debug)]
pub struct BusMetrics {
    /// From a batch's publish to NATS' acknowledgement of all its messages.
    pub publish_duration: Histogram,
    /// From NATS storing a message to this replica handing its records to listeners.
    pub follower_lag: Histogram,
    /// Messages JetStream's limits removed before this replica read them.
    pub discarded: Counter,
}

impl Default for BusMetrics {
    fn default() -> Self {
        BusMetrics {
            publish_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            follower_lag: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            discarded: Counter::default(),
        }
    }
}

/// All metrics of one relay.
pub struct Metrics {
    registry: Registry,
    pub ingested_records: Family<TapLabels, Counter>,
    pub ingested_bytes: Family<TapLabels, Counter>,
    pub ingest_requests: Family<CodeLabels, Counter>,
    pub ingest_duration: Histogram,
    pub sent_records: Family<TapLabels, Counter>,
    pub dropped_records: Family<DropLabels, Counter>,
    pub denied_records: Counter,
    pub listeners: Gauge,
    pub errors: Family<ErrorLabels, Counter>,
    pub invalid_rbac_labels: Counter,
    /// FlowTaps by phase and stage, as this replica's tap tracking sees them (cluster mode).
    pub flowtaps: Family<FlowTapLabels, Gauge>,
    pub controller: ControllerMetrics,
    pub bus: BusMetrics,
    flowtap_seen: std::sync::Mutex<std::collections::HashSet<FlowTapLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        // log-socket's own series under its prefix; the standard process_* series without.
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process_metrics::ProcessCollector));
        let registry = root.sub_registry_with_prefix("log_socket");
        let m = Metrics {
            ingested_records: Family::default(),
            ingested_bytes: Family::default(),
            ingest_requests: Family::default(),
            ingest_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            sent_records: Family::default(),
            dropped_records: Family::default(),
            denied_records: Counter::default(),
            listeners: Gauge::default(),
            errors: Family::default(),
            invalid_rbac_labels: Counter::default(),
            flowtaps: Family::default(),
            controller: ControllerMetrics::default(),
            bus: BusMetrics::default(),
            flowtap_seen: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ingested_records",
            "Records accepted at ingest",
            m.ingested_records.clone(),
        );
        registry.register(
            "ingested_bytes",
            "Record bytes accepted at ingest",
            m.ingested_bytes.clone(),
        );
        registry.register(
            "ingest_requests",
            "Ingest requests by response code",
            m.ingest_requests.clone(),
        );
        registry.register(
            "ingest_request_duration_seconds",
            "Time to process an ingest request",
            m.ingest_duration.clone(),
        );
        registry.register("sent_records", "Records sent to listeners", m.sent_records.clone());
        registry.register(
            "dropped_records",
            "Records a listener did not get, by reason",
            m.dropped_records.clone(),
        );
        registry.register(
            "denied_records",
            "Records withheld from listeners by authorization",
            m.denied_records.clone(),
        );
        registry.register("listeners", "Connected listeners", m.listeners.clone());
        registry.register("errors", "Errors by kind", m.errors.clone());
        // Always 1: which version and commit run (join on it to break a series down by build).
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                commit: env!("LOG_SOCKET_GIT_COMMIT").to_owned(),
            })
            .set(1);
        registry.register(
            "flowtaps",
            "FlowTaps by phase and stage (cluster mode; every replica counts them all)",
            m.flowtaps.clone(),
        );
        registry.register("build_info", "The running build: version and git commit", build);
        registry.register(
            "invalid_rbac_labels",
            "rbac/ labels with a value other than allow or deny, ignored",
            m.invalid_rbac_labels.clone(),
        );
        let c = &m.controller;
        registry.register(
            "reconciles",
            "FlowTap reconciles by result (the leader's)",
            c.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one FlowTap reconcile took",
            c.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "FlowTap reconciles running now",
            c.in_flight.clone(),
        );
        registry.register(
            "controller_leader",
            "1 while this replica runs the FlowTap controller (holds the Lease)",
            c.leader.clone(),
        );
        let b = &m.bus;
        registry.register(
            "bus_publish_duration_seconds",
            "From publishing a batch on the nats bus to its acknowledgement",
            b.publish_duration.clone(),
        );
        registry.register(
            "bus_follower_lag_seconds",
            "From NATS storing a message to this replica handing it to listeners",
            b.follower_lag.clone(),
        );
        registry.register(
            "bus_discarded_messages",
            "Bus messages JetStream's limits removed before this replica read them",
            b.discarded.clone(),
        );
        Metrics { registry: root, ..m }
    }
}

impl Metrics {
    /// The FlowTap series set before, remembered, and the ones in `now` added: those to zero.
    pub fn flowtap_series(&self, now: &std::collections::HashMap<FlowTapLabels, i64>) -> Vec<FlowTapLabels> {
        let mut seen = self.flowtap_seen.lock().unwrap();
        let before: Vec<FlowTapLabels> = seen.iter().filter(|l| !now.contains_key(*l)).cloned().collect();
        seen.extend(now.keys().cloned());
        before
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Count an error of `kind`.
    /// Drop the series of a closed tap, so a relay that saw many flows come and go does not
    /// keep (and serve) a series for each.
    pub fn forget_tap(&self, key: &crate::protocol::TapKey) {
        let labels = TapLabels::from(key);
        self.ingested_records.remove(&labels);
        self.ingested_bytes.remove(&labels);
        self.sent_records.remove(&labels);
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.to_owned() }).inc();
    }
}
