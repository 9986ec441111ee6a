//! Kubernetes types and client set-up shared by the operator, the service and k8stail.
//!
//! - [`flowtap`]: the `FlowTap` custom resource log-socket owns (the CRD YAML is generated from it).
//! - [`logging`]: the parts of logging-operator's `Flow`, `ClusterFlow`, `Output` and
//!   `ClusterOutput` that log-socket reads and writes; everything else is kept as received.
//! - [`client`]: a client from a kubeconfig or the pod's service account, and API errors
//!   explained in terms of what to do.
//!
//! Nothing here talks to the relay: the record path never calls the Kubernetes API.

pub mod client;
pub mod flowtap;
pub mod logging;
