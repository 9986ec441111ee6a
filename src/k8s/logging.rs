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

/// The `Logging` (cluster-scoped): which namespaces it renders and whether its last
/// configurations passed fluentd's check.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "logging.banzaicloud.io",
    version = "v1beta1",
    kind = "Logging",
    status = "LoggingResourceStatus",
    schema = "disabled"
)]
pub struct LoggingSpec {
    /// Only Flows and Outputs with this `loggingRef` belong to this Logging (empty: those
    /// without one).
    #[serde(rename = "loggingRef", default, skip_serializing_if = "Option::is_none")]
    pub logging_ref: Option<String>,
    /// Where fluentd runs and ClusterFlows/ClusterOutputs are read from.
    #[serde(rename = "controlNamespace", default, skip_serializing_if = "Option::is_none")]
    pub control_namespace: Option<String>,
    /// Namespaces whose Flows and Outputs are read (empty, with no selector: all).
    #[serde(rename = "watchNamespaces", default, skip_serializing_if = "Option::is_none")]
    pub watch_namespaces: Option<Vec<String>>,
    /// Also a way to choose namespaces; log-socket then relies on `status.watchNamespaces`.
    #[serde(rename = "watchNamespaceSelector", default, skip_serializing_if = "Option::is_none")]
    pub watch_namespace_selector: Option<Value>,
    /// ClusterFlows and ClusterOutputs count from any namespace.
    #[serde(
        rename = "allowClusterResourcesFromAllNamespaces",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_cluster_resources_from_all_namespaces: Option<bool>,
    #[serde(flatten)]
    pub other: Other,
}

/// Status of a `Logging`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct LoggingResourceStatus {
    /// fluentd configuration checks by configuration hash: `false` means that configuration
    /// failed its check and the previous one keeps running.
    #[serde(rename = "configCheckResults", default, skip_serializing_if = "Option::is_none")]
    pub config_check_results: Option<std::collections::BTreeMap<String, bool>>,
    /// The namespaces resolved from `watchNamespaces` and `watchNamespaceSelector` (`*`: all).
    #[serde(rename = "watchNamespaces", default, skip_serializing_if = "Option::is_none")]
    pub watch_namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    #[serde(flatten)]
    pub other: Other,
}

impl Logging {
    /// Whether this Logging renders Flows and Outputs of `namespace`.
    pub fn watches(&self, namespace: &str) -> bool {
        if let Some(resolved) = self.status.as_ref().and_then(|s| s.watch_namespaces.as_ref()) {
            return resolved.iter().any(|n| n == "*" || n == namespace);
        }
        match &self.spec.watch_namespaces {
            Some(list) if !list.is_empty() => list.iter().any(|n| n == namespace),
            // Without a resolved status, a selector cannot be evaluated here: not watched.
            _ => self.spec.watch_namespace_selector.is_none(),
        }
    }

    /// Whether this Logging reads ClusterFlows and ClusterOutputs from `namespace`.
    pub fn reads_cluster_resources_from(&self, namespace: &str) -> bool {
        self.spec.allow_cluster_resources_from_all_namespaces == Some(true)
            || self.spec.control_namespace.as_deref() == Some(namespace)
    }

    /// The `loggingRef` objects must carry to belong to it (`""` when none).
    pub fn reference(&self) -> &str {
        self.spec.logging_ref.as_deref().unwrap_or("")
    }

    /// The configuration checks it has recorded.
    pub fn config_checks(&self) -> std::collections::BTreeMap<String, bool> {
        self.status
            .as_ref()
            .and_then(|s| s.config_check_results.clone())
            .unwrap_or_default()
    }
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
    /// The status as logging-operator last wrote it.
    fn status_of(&self) -> Option<&LoggingStatus>;
}

macro_rules! has_status {
    ($($kind:ty),*) => {$(
        impl HasStatus for $kind {
            fn problems(&self) -> Vec<String> {
                self.status.as_ref().and_then(|s| s.problems.clone()).unwrap_or_default()
            }
            fn status_of(&self) -> Option<&LoggingStatus> {
                self.status.as_ref()
            }
        }
    )*};
}
has_status!(Flow, ClusterFlow, Output, ClusterOutput);
