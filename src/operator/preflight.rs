//! What the operator checks before it changes a flow, so that a tap never stops
//! logging-operator from rendering the Logging (one broken ref or Secret there blocks the
//! configuration of every namespace):
//!
//! - every Secret key the generated output refers to exists in the output's namespace
//!   (logging-operator does not report a broken `auth` ref in the Output's status; it only fails
//!   the render);
//! - exactly one Logging renders the tapped flow (its `loggingRef`, namespaces, control namespace);
//! - logging-operator has validated the output (`status.active` is set) and found no problems.
//!
//! A check that cannot be made counts as failed: nothing is changed on a guess.

use super::status::Refusal;
use crate::k8s::flowtap::FlowKind;
use crate::k8s::logging::{Logging, LoggingStatus};
use crate::Result;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde_json::Value;
use std::time::Duration;

pub const SECRET_MISSING: &str = "SecretMissing";
pub const LOGGING_MISMATCH: &str = "LoggingMismatch";
pub const OUTPUT_REJECTED: &str = "OutputRejected";
pub const OUTPUT_NOT_VALIDATED: &str = "OutputNotValidated";
pub const CONFIG_CHECK_FAILED: &str = "ConfigCheckFailed";

/// The Secrets (name, key) an output spec refers to, through `valueFrom` or `mountFrom`.
pub fn secret_refs(spec: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                if let Some(r) = map.get("secretKeyRef") {
                    if let (Some(name), Some(key)) = (r["name"].as_str(), r["key"].as_str()) {
                        out.push((name.to_owned(), key.to_owned()));
                    }
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(spec, &mut out);
    out.sort();
    out.dedup();
    out
}

/// Every (Secret, key) in `refs` exists in `namespace`; the first that does not, as a refusal.
/// Only a definite answer refuses (the Secret or its key is not there, or log-socket may not
/// read it); a timeout, 429 or 5xx is an error, so the pass changes nothing and backs off:
/// a tap in place is not torn down because the API server sheds load.
pub async fn check_secrets(
    client: &kube::Client,
    namespace: &str,
    refs: &[(String, String)],
) -> crate::Result<Option<Refusal>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for (name, key) in refs {
        let missing = |why: String| {
            Ok(Some(Refusal::new(
                SECRET_MISSING,
                format!(
                    "{why}; the generated output needs key {key:?} of Secret {namespace}/{name}, and logging-operator cannot render the Logging without it (create the Secret, then the tap proceeds)"
                ),
            )))
        };
        match api.get_opt(name).await {
            Ok(Some(secret)) => {
                let has = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
                    || secret.string_data.as_ref().is_some_and(|d| d.contains_key(key));
                if !has {
                    return missing(format!("Secret {namespace}/{name} has no key {key:?}"));
                }
            }
            Ok(None) => return missing(format!("Secret {namespace}/{name} does not exist")),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return missing(format!(
                    "log-socket may not read Secret {namespace}/{name} to check it (give its ClusterRole `get` on that Secret name)"
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The one Logging that renders a `kind` in `namespace` with `logging_ref`, or why there is
/// not exactly one.
pub async fn find_logging(
    client: &kube::Client,
    kind: FlowKind,
    namespace: &str,
    logging_ref: &str,
) -> Result<std::result::Result<Logging, Refusal>> {
    let api: Api<Logging> = Api::all(client.clone());
    let all = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Ok(Err(Refusal::new(
                LOGGING_MISMATCH,
                "logging-operator's Logging CRD is not installed: there is no Logging to render the flow",
            )))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(pick_logging(all, kind, namespace, logging_ref))
}

/// [`find_logging`] over a list of Loggings.
pub fn pick_logging(
    all: Vec<Logging>,
    kind: FlowKind,
    namespace: &str,
    logging_ref: &str,
) -> std::result::Result<Logging, Refusal> {
    let mut matching: Vec<Logging> = all
        .into_iter()
        .filter(|l| l.reference() == logging_ref)
        .filter(|l| match kind {
            FlowKind::Flow => l.watches(namespace),
            FlowKind::ClusterFlow => l.reads_cluster_resources_from(namespace),
        })
        .collect();
    let names = |ls: &[Logging]| {
        ls.iter()
            .map(kube::ResourceExt::name_any)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match matching.len() {
        1 => Ok(matching.remove(0)),
        0 => Err(Refusal::new(
            LOGGING_MISMATCH,
            match kind {
                FlowKind::Flow => format!(
                    "no Logging with loggingRef {logging_ref:?} watches namespace {namespace}: the flow is not rendered, so a tap would receive nothing"
                ),
                FlowKind::ClusterFlow => format!(
                    "no Logging with loggingRef {logging_ref:?} has control namespace {namespace}: the ClusterFlow is not rendered, so a tap would receive nothing"
                ),
            },
        )),
        _ => Err(Refusal::new(
            LOGGING_MISMATCH,
            format!(
                "several Loggings with loggingRef {logging_ref:?} render namespace {namespace} ({}); logging-operator reports this as a conflict: fix it first",
                names(&matching)
            ),
        )),
    }
}

/// Where logging-operator stands with a generated output.
#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    /// Validated, no problems: the flow may name it.
    Accepted,
    /// Not validated yet; this much of the wait is left.
    Waiting(Duration),
    Refused(Refusal),
}

/// logging-operator writes `status.active` (false until a flow names the output) on every
/// output it validates, and the problems it found.
pub fn validation(
    status: Option<&LoggingStatus>,
    created: Option<&Time>,
    timeout: Duration,
    now: Timestamp,
) -> Validation {
    let problems = status.and_then(|s| s.problems.clone()).unwrap_or_default();
    if !problems.is_empty() {
        return Validation::Refused(Refusal::new(
            OUTPUT_REJECTED,
            format!("logging-operator rejected the output: {}", problems.join("; ")),
        ));
    }
    if status.is_some_and(|s| s.active.is_some()) {
        return Validation::Accepted;
    }
    let age = created.map_or(Duration::ZERO, |t| super::status::age(t, now));
    match timeout.checked_sub(age) {
        Some(left) if !left.is_zero() => Validation::Waiting(left),
        _ => Validation::Refused(Refusal::new(
            OUTPUT_NOT_VALIDATED,
            format!(
                "logging-operator has not validated the output within {timeout:?} (--output-accept-timeout): is it running, and does its Logging watch this namespace?"
            ),
        )),
    }
}

/// A new configuration check of `logging` since `before`: `Some(false)` if one failed (the
/// configuration with the tap was rejected), `Some(true)` if one passed, `None` if none yet.
pub fn config_check_since(logging: &Logging, before: &[String]) -> Option<bool> {
    let new: Vec<bool> = logging
        .config_checks()
        .into_iter()
        .filter(|(hash, _)| !before.contains(hash))
        .map(|(_, ok)| ok)
        .collect();
    if new.contains(&false) {
        Some(false)
    } else if new.contains(&true) {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn logging(name: &str, spec: Value, status: Value) -> Logging {
        serde_json::from_value(json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Logging",
            "metadata": {"name": name}, "spec": spec, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn every_secret_the_output_names_is_found() {
        let spec = json!({"http": {
            "auth": {"username": {"valueFrom": {"secretKeyRef": {"name": "a", "key": "username"}}},
                     "password": {"valueFrom": {"secretKeyRef": {"name": "a", "key": "password"}}}},
            "tls_ca_cert_path": {"mountFrom": {"secretKeyRef": {"name": "t", "key": "ca.crt"}}},
        }});
        assert_eq!(
            secret_refs(&spec),
            [
                ("a".into(), "password".into()),
                ("a".into(), "username".into()),
                ("t".into(), "ca.crt".into())
            ]
        );
        assert!(secret_refs(&json!({"http": {"endpoint": "x"}})).is_empty());
    }

    #[test]
    fn the_logging_of_a_flow_is_the_one_watching_its_namespace_with_its_ref() {
        let all = || {
            vec![
                logging(
                    "shop",
                    json!({"controlNamespace": "logging", "watchNamespaces": ["shop"]}),
                    json!({}),
                ),
                logging(
                    "other",
                    json!({"controlNamespace": "logging", "loggingRef": "other"}),
                    json!({}),
                ),
                logging(
                    "resolved",
                    json!({"controlNamespace": "ops", "watchNamespaceSelector": {}}),
                    json!({"watchNamespaces": ["web"]}),
                ),
            ]
        };
        let pick = |kind, ns: &str, r: &str| pick_logging(all(), kind, ns, r).map(|l| kube::ResourceExt::name_any(&l));
        assert_eq!(pick(FlowKind::Flow, "shop", ""), Ok("shop".into()));
        assert_eq!(pick(FlowKind::Flow, "web", ""), Ok("resolved".into()));
        assert_eq!(
            pick(FlowKind::Flow, "anything", "other"),
            Ok("other".into()),
            "no watch list: all namespaces"
        );
        assert_eq!(pick(FlowKind::ClusterFlow, "ops", ""), Ok("resolved".into()));
        let refused = pick(FlowKind::Flow, "elsewhere", "").unwrap_err();
        assert_eq!(refused.reason, LOGGING_MISMATCH);
        assert!(
            refused.message.contains("watches namespace elsewhere"),
            "{}",
            refused.message
        );
        let mut twice = all();
        twice.push(logging(
            "again",
            json!({"controlNamespace": "x", "watchNamespaces": ["shop"]}),
            json!({}),
        ));
        let refused = pick_logging(twice, FlowKind::Flow, "shop", "").unwrap_err();
        assert!(
            refused.message.contains("several Loggings") && refused.message.contains("again"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn an_output_is_accepted_once_validated_without_problems_and_refused_otherwise() {
        let created = Time(Timestamp::from_second(1_800_000_000).unwrap());
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let status = |v: Value| serde_json::from_value::<LoggingStatus>(v).unwrap();
        let t = Duration::from_secs(30);
        assert_eq!(
            validation(None, Some(&created), t, at(10)),
            Validation::Waiting(Duration::from_secs(20))
        );
        assert_eq!(
            validation(Some(&status(json!({}))), Some(&created), t, at(10)),
            Validation::Waiting(Duration::from_secs(20))
        );
        assert_eq!(
            validation(Some(&status(json!({"active": false}))), Some(&created), t, at(10)),
            Validation::Accepted
        );
        let Validation::Refused(r) = validation(None, Some(&created), t, at(31)) else {
            panic!()
        };
        assert_eq!(r.reason, OUTPUT_NOT_VALIDATED);
        let rejected = status(json!({"active": false, "problems": ["key \"ca.crt\" not found"], "problemsCount": 1}));
        let Validation::Refused(r) = validation(Some(&rejected), Some(&created), t, at(1)) else {
            panic!()
        };
        assert_eq!(r.reason, OUTPUT_REJECTED);
        assert!(r.message.contains("ca.crt"), "{}", r.message);
    }

    #[test]
    fn a_new_failed_configuration_check_after_the_patch_is_the_taps_fault() {
        let l = |checks: Value| logging("l", json!({}), json!({"configCheckResults": checks}));
        let before = vec!["old".to_owned()];
        assert_eq!(
            config_check_since(&l(json!({"old": false})), &before),
            None,
            "an old failure is not ours"
        );
        assert_eq!(
            config_check_since(&l(json!({"old": true, "new": true})), &before),
            Some(true)
        );
        assert_eq!(
            config_check_since(&l(json!({"old": true, "new": false})), &before),
            Some(false)
        );
    }
}
