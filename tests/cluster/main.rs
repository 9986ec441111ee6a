//! Integration tests against a real kube-apiserver + etcd (one per test binary, started on
//! first use; see testkit/src/cluster.rs). Each test works in its own namespace.

mod auth;
mod chart;
mod control_plane;
mod demo;
mod deploy;
mod first_minute;
mod flowtap_crd;
mod fluentd;
mod k8stail_proxy;
mod k8stail_stern;
mod k8stail_taps;
mod leader;
mod listener_rate;
mod logging_models;
mod observability;
mod operator;
mod preflow;
mod release;
mod service;
mod tap_failures;
mod tap_safety;
mod watch;
