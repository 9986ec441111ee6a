//! Partially typed models of the logging-operator resources log-socket reads and writes
//! (`logging.banzaicloud.io/v1beta1`).
//!
//! Only the fields log-socket uses are typed. Everything else lands in `other` and is written
//! back untouched, so a read-modify-write never loses a user's filters, match rules or fields
//! added by a newer logging-operator. Lists in these CRDs are atomic: update them with the
//! object's `resourceVersion` (docs/development.md) rather than a merge patch.

use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// API group of the logging-operator resources.
pub const GROUP: &str = "logging.banzaicloud.io";

/// Fields not modelled here, preserved verbatim.
pub type Other = Map<String, Value>;

/// `Flow.spec`: routes records of one namespace to outputs.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "logging.banzaicloud.io",
    version = "v1beta1",
    kind = "Flow",
    namespaced,
    status = "LoggingStatus",
    schema = "disabled"
)]
pub struct FlowSpec {
    /// Names of `Output`s in the Flow's namespace.
    #[serde(rename = "localOutputRefs", default, skip_serializing_if = "Option::is_none")]
    pub local_output_refs: Option<Vec<String>>,
    /// Names of `ClusterOutput`s.
    #[serde(rename = "globalOutputRefs", default, skip_serializing_if = "Option::is_none")]
    pub global_output_refs: Option<Vec<String>>,
    /// Must match the Logging's `loggingRef`.
    #[serde(rename = "loggingRef", default, skip_serializing_if = "Option::is_none")]
    pub logging_ref: Option<String>,
    /// `match`, `filters`, `flowLabel`, ... kept as they are.
    #[serde(flatten)]
    pub other: Other,
}

/// `ClusterFlow.spec`: routes records of many namespaces; it can only reference ClusterOutputs.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "logging.banzaicloud.io",
    version = "v1beta1",
    kind = "ClusterFlow",
    namespaced,
    status = "LoggingStatus",
    schema = "disabled"
)]
pub struct ClusterFlowSpec {
    /// Names of `ClusterOutput`s.
    #[serde(rename = "globalOutputRefs", default, skip_serializing_if = "Option::is_none")]
    pub global_output_refs: Option<Vec<String>>,
    /// Must match the Logging's `loggingRef`.
    #[serde(rename = "loggingRef", default, skip_serializing_if = "Option::is_none")]
    pub logging_ref: Option<String>,
    /// `match`, `filters`, ... kept as they are.
    #[serde(flatten)]
    pub other: Other,
}

/// `Output.spec`: one output plugin; log-socket only writes `http`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "logging.banzaicloud.io",
    version = "v1beta1",
    kind = "Output",
    namespaced,
    status = "LoggingStatus",
    schema = "disabled"
)]
pub struct OutputSpec {
    /// The fluentd `http` output plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpOutput>,
    /// Must match the Logging's `loggingRef`.
    #[serde(rename = "loggingRef", default, skip_serializing_if = "Option::is_none")]
    pub logging_ref: Option<String>,
    /// Other output plugins and fields, kept as they are.
    #[serde(flatten)]
    pub other: Other,
}

/// `ClusterOutput.spec`: an `Output.spec` that ClusterFlows (and Flows, unless protected) can use.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "logging.banzaicloud.io",
    version = "v1beta1",
    kind = "ClusterOutput",
    namespaced,
    status = "LoggingStatus",
    schema = "disabled"
)]
pub struct ClusterOutputSpec {
    /// Forbids Flows (not ClusterFlows) from referencing this output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// The output plugin, as in an Output.
    #[serde(flatten)]
    pub output: OutputSpec,
}

/// The fields of fluentd's `http` output that log-socket renders; see `out_http`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct HttpOutput {
    /// URL records are POSTed to.
    pub endpoint: String,
    /// Send each chunk as one JSON array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_array: Option<bool>,
    /// Record formatter (`{type: json}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    /// Seconds to wait for the connection; unset means forever, which stalls fluentd's flush thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_timeout: Option<u32>,
    /// Seconds to wait for the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<u32>,
    /// Response codes fluentd retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable_response_codes: Option<Vec<u16>>,
    /// fluentd buffer section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<Value>,
    /// TLS, auth, headers, ... kept as they are.
    #[serde(flatten)]
    pub other: Other,
}

/// Status shared by Flow, ClusterFlow, Output and ClusterOutput.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct LoggingStatus {
    /// Whether the object takes part in the rendered configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Configuration problems found by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    /// Number of problems.
    #[serde(rename = "problemsCount", default, skip_serializing_if = "Option::is_none")]
    pub problems_count: Option<i64>,
    /// Fields added by newer operators.
    #[serde(flatten)]
    pub other: Other,
}

/// The logging-operator objects, which all report configuration problems in `status.problems`.
pub trait HasStatus {
    /// What logging-operator reports as wrong with this object (empty: nothing, or not yet seen).
    fn problems(&self) -> Vec<String>;
}

macro_rules! has_status {
    ($($kind:ty),*) => {$(
        impl HasStatus for $kind {
            fn problems(&self) -> Vec<String> {
                self.status.as_ref().and_then(|s| s.problems.clone()).unwrap_or_default()
            }
        }
    )*};
}
has_status!(Flow, ClusterFlow, Output, ClusterOutput);
