//! log-socket's test kit: what the integration tests, the bench and the demo share to run
//! log-socket for real. A crate of its own, so it compiles once for all of them (see its
//! Cargo.toml).
//!
//! - [`relay`]: a relay under test on loopback and its clients, as fluentd (HTTP POST) and
//!   listeners (WebSocket) talk to it; the `log-socket` binary as a child process.
//! - [`cluster`]: one real control plane per test binary, a namespace per test, real
//!   ServiceAccount tokens and RBAC grants, kubectl, and [`cluster::Harness`] (a relay with the
//!   operator, scoped to one namespace).
//! - [`control_plane`]: etcd + kube-apiserver on loopback (also for `make demo` and `make bench`).
//! - [`logging_operator`], [`render`], [`pipeline`]: logging-operator's part, played here.
//! - [`fluentd`], [`nats`]: the real fluentd and nats-server as child processes.
//! - [`kubelet`]: a kubelet's container-log endpoint on loopback, registered as a Node, so the
//!   real API server serves `pods/log`.
//! - [`deployment`]: a Deployment's pod run in this process, as controllers and a kubelet
//!   would (for tests of the shipped manifests); [`cluster_dns`]: a Service URL resolved to
//!   its endpoint, as cluster DNS and kube-proxy would.
//! - [`prometheus`]: the ServiceMonitor resource, a Prometheus-style scrape of its targets, the
//!   token controller for its token Secret, and promtool.
//! - [`token_controller`]: ServiceAccount token Secrets, as kube-controller-manager makes them.
//! - [`pasted`]: a documentation block's commands run as a user pastes them.
//! - [`netns`]: a network namespace for a non-loopback address.
//! - [`poll`]: [`poll::eventually`] and [`poll::free_port`]; [`child`]: children that die with
//!   the process that started them; [`skip`]: a test that cannot run here says so, and
//!   `make test` names it.

pub mod child;
pub mod cluster;
pub mod cluster_dns;
pub mod control_plane;
pub mod deployment;
pub mod fluentd;
pub mod kubelet;
pub mod logging_model;
pub mod logging_operator;
pub mod nats;
pub mod netns;
pub mod pasted;
pub mod pipeline;
pub mod poll;
pub mod prometheus;
pub mod relay;
pub mod render;
pub mod shedding;
pub mod skip;
pub mod token_controller;
