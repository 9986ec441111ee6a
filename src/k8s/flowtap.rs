//! The `FlowTap` custom resource (`logsocket.dev/v1alpha1`).
//!
//! A FlowTap is the one inspectable truth about a tap on a logging-operator Flow or ClusterFlow:
//! who listens, which Output was generated for it, and whether records flow. Listeners create
//! ephemeral taps; taps written by hand (GitOps) set `persistent: true`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// API group of the FlowTap resource.
pub const GROUP: &str = "logsocket.dev";

/// Desired state of a FlowTap: which flow to tap, and how records travel to the relay.
// Several printcolumn(...) entries share `type_ = "string"`, which clippy mistakes for a repeat.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "logsocket.dev",
    version = "v1alpha1",
    kind = "FlowTap",
    plural = "flowtaps",
    shortname = "ftap",
    // logging-operator's resources are in `logging-all`: `kubectl get logging-all` lists taps
    // beside the flows and outputs they change.
    category = "logging-all",
    namespaced,
    status = "FlowTapStatus",
    doc = "A live tap on a logging-operator Flow or ClusterFlow. log-socket turns it into an http Output (ClusterOutput) pointing at its relay and appends that output to the flow, so `k8stail` can stream exactly what the flow emits.",
    printcolumn(name = "Flow Kind", type_ = "string", json_path = ".spec.flowRef.kind"),
    printcolumn(name = "Flow", type_ = "string", json_path = ".spec.flowRef.name"),
    printcolumn(name = "Listeners", type_ = "integer", json_path = ".status.listeners"),
    printcolumn(name = "Persistent", type_ = "boolean", json_path = ".spec.persistent"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage.name"),
    printcolumn(
        name = "Records/s",
        type_ = "number",
        json_path = ".status.cost.recordsPerSecond",
        priority = 1
    ),
    printcolumn(
        name = "Bytes/s",
        type_ = "integer",
        json_path = ".status.cost.bytesPerSecond",
        priority = 1
    ),
    printcolumn(name = "Bus", type_ = "string", json_path = ".status.bus.kind", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FlowTapSpec {
    /// The Flow or ClusterFlow whose output this tap streams. A tap on a Flow lives in the
    /// Flow's namespace; a tap on a ClusterFlow lives in the logging control namespace,
    /// next to the ClusterFlow. Immutable (on Kubernetes 1.25+ the API server enforces it).
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "flowRef cannot be changed: delete this FlowTap and create one for the other flow"}]))]
    pub flow_ref: FlowRef,

    /// Keep this tap, and the output it generated, when no listener is connected.
    /// Taps declared in git (GitOps) set this to true and are never garbage-collected;
    /// taps created by k8stail leave it false and are removed a short while after the last
    /// listener leaves.
    #[serde(default)]
    pub persistent: bool,

    /// How the tap reaches the flow's records. `Patch` (default) appends the generated output
    /// to the flow's own output refs. `Mirror` leaves the flow untouched and creates a sibling
    /// flow (named like the generated output: `logsocket-<tap name>`, for a ClusterFlow
    /// `logsocket-<namespace>.<tap name>`; same match and filters, kept in sync) whose only output is
    /// the tap: use it when the flow is owned by a GitOps tool that must not see drift.
    #[serde(default)]
    pub mode: TapMode,

    /// How many recent records the relay keeps for listeners that join late or reconnect.
    #[serde(default)]
    pub replay: ReplaySpec,

    /// Records per second a listener of this flow gets at most, sampled at the relay (a listener
    /// may ask for fewer with `rate`, never more; with several FlowTaps on one flow, the lowest
    /// applies); unset: as many as it asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub listener_rate: Option<u32>,

    /// Buffering of the generated fluentd http output. The defaults favour latency: records
    /// are flushed about once a second from a small memory-bounded buffer, and a stuck tap
    /// drops its oldest chunk rather than slowing the flow's other outputs.
    #[serde(default)]
    pub buffer: BufferSpec,
}

/// Reference to the tapped flow.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowRef {
    /// Kind of the tapped flow: `Flow` (namespaced, gets an Output) or `ClusterFlow`
    /// (gets a ClusterOutput).
    pub kind: FlowKind,

    /// Name of the Flow or ClusterFlow, in the namespace of this FlowTap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kind of a logging-operator flow.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum FlowKind {
    /// `logging.banzaicloud.io/v1beta1` Flow: records of one namespace.
    Flow,
    /// `logging.banzaicloud.io/v1beta1` ClusterFlow: records of many namespaces.
    ClusterFlow,
}

impl FlowKind {
    /// Lower-case form used in URL paths (`/flow/...`, `/clusterflow/...`).
    pub fn path_segment(self) -> &'static str {
        match self {
            FlowKind::Flow => "flow",
            FlowKind::ClusterFlow => "clusterflow",
        }
    }

    /// The API resource (plural) of this kind of flow.
    pub fn resource(self) -> &'static str {
        match self {
            FlowKind::Flow => "flows",
            FlowKind::ClusterFlow => "clusterflows",
        }
    }

    /// Kind of the logging-operator output generated for a tap on this kind of flow.
    pub fn output_kind(self) -> OutputKind {
        match self {
            FlowKind::Flow => OutputKind::Output,
            FlowKind::ClusterFlow => OutputKind::ClusterOutput,
        }
    }
}

impl fmt::Display for FlowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlowKind::Flow => "Flow",
            FlowKind::ClusterFlow => "ClusterFlow",
        })
    }
}

/// How a tap reaches a flow's records.
// Also the value of `--tap-mode` (the mode of the taps listeners create).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema, clap::ValueEnum)]
pub enum TapMode {
    /// Append the tap's output to the flow's output refs (last entry); restored on removal.
    #[default]
    Patch,
    /// Leave the flow alone; a managed sibling flow with the same match and filters feeds the tap.
    Mirror,
}

/// Kind of a logging-operator output.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OutputKind {
    /// Namespaced `Output`, referenced from a Flow's `localOutputRefs`.
    Output,
    /// `ClusterOutput` in the control namespace, referenced from a ClusterFlow's `globalOutputRefs`.
    ClusterOutput,
}

/// Records kept for late joiners and reconnecting listeners.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySpec {
    /// Number of most recent records kept in memory by the relay. A listener that connects
    /// with `--tail N` or reconnects within this window sees no gap. 0 disables replay.
    #[serde(default = "default_replay_records")]
    #[schemars(range(min = 0, max = 100_000))]
    pub records: u32,
}

fn default_replay_records() -> u32 {
    1000
}

impl Default for ReplaySpec {
    fn default() -> Self {
        Self {
            records: default_replay_records(),
        }
    }
}

/// Buffer settings rendered into the generated fluentd http output.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BufferSpec {
    /// How often fluentd sends buffered records to the relay: a number and a unit (`ms`, `s`,
    /// `m`, `h`; seconds without one), e.g. `1s`, `500ms`, `1.5s`. Rendered to fluentd in plain
    /// seconds (`0.5`), the one form it reads exactly. Lower is livelier; higher sends fewer,
    /// larger requests.
    #[serde(default = "default_flush_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$"), length(max = 16))]
    pub flush_interval: String,

    /// Largest single request body fluentd sends (fluentd size, e.g. `1m`, `512k`).
    #[serde(default = "default_chunk_limit_size")]
    #[schemars(regex(pattern = r"^[0-9]+[kmgKMG]?$"))]
    pub chunk_limit_size: String,

    /// Memory the tap's buffer may use in fluentd in total; when it is full (relay
    /// unreachable) the oldest chunk is dropped so the flow's other outputs are not slowed.
    #[serde(default = "default_total_limit_size")]
    #[schemars(regex(pattern = r"^[0-9]+[kmgKMG]?$"))]
    pub total_limit_size: String,

    /// How many times fluentd retries a failed request before it drops the chunk.
    /// A tap never retries forever.
    #[serde(default = "default_retry_max_times")]
    #[schemars(range(min = 0, max = 100))]
    pub retry_max_times: u32,
}

fn default_flush_interval() -> String {
    "1s".into()
}
fn default_chunk_limit_size() -> String {
    "1m".into()
}
fn default_total_limit_size() -> String {
    "8m".into()
}
fn default_retry_max_times() -> u32 {
    5
}

impl Default for BufferSpec {
    fn default() -> Self {
        Self {
            flush_interval: default_flush_interval(),
            chunk_limit_size: default_chunk_limit_size(),
            total_limit_size: default_total_limit_size(),
            retry_max_times: default_retry_max_times(),
        }
    }
}

/// Observed state of a FlowTap, written by log-socket.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowTapStatus {
    /// Summary of the tap's life cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Detailed, machine-readable state (types `OutputReady`, `FlowPatched`, `Receiving`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Number of listeners connected to the tap, over all relay instances.
    #[serde(default)]
    pub listeners: u32,

    /// Who listens to this tap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub sessions: Vec<Session>,

    /// The output generated for this tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputRef>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the relay last received a record for this tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_record_time: Option<Time>,

    /// What log-socket has changed in the logging pipeline for this tap: the flow it patched
    /// (or mirrored) and with which output. A changed `flowRef` or a deletion undoes exactly
    /// this, whatever the spec says by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched: Option<PatchedFlow>,

    /// Which bus serves the tap, as the relays with listeners last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<BusStatus>,

    /// Where the tap stands on its way to records (or after its listeners left), since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageStatus>,

    /// What the tap costs fluentd and the relay, as the relay last measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<TapCost>,
}

/// A stage of a tap's life, with its start.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    pub name: Stage,
    /// When the tap entered this stage.
    pub since: Time,
    /// What the stage waits for, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where a tap stands, from its output's creation to records arriving.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Stage {
    /// The generated output waits for logging-operator's validation.
    OutputValidating,
    /// Waiting for its turn to change the Logging's configuration (see `message`).
    Queued,
    /// The flow names the output; logging-operator has no check result for the configuration
    /// with it yet (its check pod runs `fluentd --dry-run`).
    ConfigCheck,
    /// The check passed: fluentd loads the configuration when kubelet next syncs its pod
    /// (often within 60-90 s) and the config-reloader reloads it.
    ConfigApplied,
    /// Records arrive.
    Flowing,
    /// No listener; kept because it costs little, so the next listener attaches at once.
    Warm,
}

/// The rate of records fluentd sends the tap: what keeping it costs the shared fluentd and the
/// relays. The sum over the relays that took records for it recently.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TapCost {
    pub records_per_second: f64,
    pub bytes_per_second: u64,
    /// When it was last measured.
    pub measured: Time,
    /// Each relay's share (fluentd's requests go to any replica).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["relay"]))]
    pub relays: Vec<RelayCost>,
}

/// What one relay measured for a tap.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayCost {
    /// The relay instance (pod).
    pub relay: String,
    pub records_per_second: f64,
    pub bytes_per_second: u64,
    pub measured: Time,
}

/// The bus between ingest and listeners for a tap.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusStatus {
    /// `embedded` (in the relay's process) or `nats` (a JetStream stream).
    pub kind: String,
    /// The JetStream stream holding the tap's records (`nats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The oldest message the stream retains (`nats`; a message is one ingest batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    /// The newest message in the stream (`nats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// What keeps the bus from serving the tap, and what to do (`nats`: another stream
    /// captures the tap's subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A flow log-socket changed for a tap.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchedFlow {
    /// The Flow or ClusterFlow, in the FlowTap's namespace.
    pub flow_ref: FlowRef,
    /// The generated output it was given.
    pub output: String,
    /// Patch (the output was appended to the flow) or Mirror (a sibling flow was created).
    pub mode: TapMode,
    /// The Logging that renders the flow, whose configuration check is watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<String>,
    /// The configuration checks that Logging had recorded before the patch: a new failed one
    /// after it means the configuration with the tap was rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_checks_before: Vec<String>,
    /// Whether the tap's trial is over with the Logging's checks passing: later failures are
    /// not the tap's.
    #[serde(default)]
    pub config_accepted: bool,
    /// When this patch was made: its configuration-check trial counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Life-cycle phase of a FlowTap.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; the output or the flow patch is not in place yet.
    Pending,
    /// Output created and appended to the flow; records can flow.
    Active,
    /// In place, but logging-operator reports problems with the output or the flow; see the
    /// conditions.
    Degraded,
    /// Cannot work as declared, or refused to protect the Logging (flow missing, output name
    /// taken, a Secret missing, output rejected, configuration check failed); the flow is left
    /// as it was. See the conditions and events.
    Failed,
    /// Being removed: the flow is restored before the output is deleted.
    Terminating,
}

/// One listener connected to the tap.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Unique id of the listener's connection.
    pub id: String,
    /// Kubernetes user name of the listener, as authenticated by TokenReview.
    pub user: String,
    /// When the listener connected.
    pub since: Time,
    /// The relay instance (pod) holding the connection.
    pub relay: String,
    /// The `rate` the listener asked for (records per second, sampled at the relay; a FlowTap's
    /// `listenerRate` may lower what it gets); unset: it asked for every record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Last time the relay confirmed the session is alive; sessions of a relay that stopped
    /// renewing expire, so a crashed relay never pins a tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<Time>,
}

/// Reference to the generated logging-operator output.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputRef {
    /// `Output` or `ClusterOutput`.
    pub kind: OutputKind,
    /// Name of the output, in the namespace of the FlowTap.
    pub name: String,
}

/// The FlowTap CustomResourceDefinition as YAML, exactly as committed in `crds/flowtap.yaml`.
pub fn crd_yaml() -> String {
    let crd = FlowTap::crd();
    let body = serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML");
    format!("# Generated by `log-socket crd` from src/k8s/flowtap.rs; do not edit.\n---\n{body}")
}
