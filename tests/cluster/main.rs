//! Integration tests against a real kube-apiserver + etcd (one per test binary, started on
//! first use; see tests/support). Each test works in its own namespace.

#[path = "../support/mod.rs"]
mod support;
#[path = "../support/wire.rs"]
#[allow(dead_code)]
mod wire;

mod auth;
mod control_plane;
mod demo;
mod deploy;
mod flowtap_crd;
mod fluentd;
mod k8stail_proxy;
mod k8stail_stern;
mod k8stail_taps;
mod leader;
mod logging_models;
mod operator;
mod service;
mod tap_safety;
