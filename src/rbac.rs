//! The label policy: pod labels carried in each record say who may read it.
//!
//! For a listener whose user key is `K` (see [`user_key`]):
//! 1. label `rbac/K: allow|deny` decides;
//! 2. otherwise labels `rbac/group.G: allow|deny` for the listener's groups (`:` in a group
//!    written `_`): any `deny` denies, else any `allow` allows;
//! 3. otherwise `rbac/policy: allow|deny` decides;
//! 4. otherwise the record is denied.
//!
//! Values other than `allow` and `deny` are ignored and counted. Pipelines that de-dot or
//! flatten label keys are handled: `rbac_K`, `rbac_policy` and `rbac_group_G` are read too (the
//! `rbac/` form wins when both are present).

use crate::auth::{Authorizer, Decision, Identity};
use crate::relay::record::Meta;
use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeMap;

/// The label-policy key of a user: `system:serviceaccount:NS:NAME` becomes `NS_NAME`; in
/// general the first two `:`-separated parts of a name with three or more parts are dropped
/// (the first one of a name with two), and the remaining `:` become `_`. This is the mapping of
/// the original log-socket, so existing labels keep working.
pub fn user_key(username: &str) -> String {
    let parts: Vec<&str> = username.split(':').collect();
    let kept = match parts.len() {
        1 => &parts[..],
        2 => &parts[1..],
        _ => &parts[2..],
    };
    kept.join("_")
}

/// The label-policy key of a group: `group.` and the group name with `:` written `_`.
pub fn group_key(group: &str) -> String {
    format!("group.{}", group.replace(':', "_"))
}

/// [`Authorizer`] implementing the label policy.
#[derive(Default)]
pub struct LabelPolicy {
    /// Labels with a value other than allow/deny, which were ignored.
    pub invalid_values: Counter,
}

impl LabelPolicy {
    /// A policy counting ignored label values in `counter` (e.g. the relay's metric).
    pub fn counting_into(counter: Counter) -> Self {
        LabelPolicy {
            invalid_values: counter,
        }
    }

    fn lookup(&self, labels: &BTreeMap<String, String>, key: &str) -> Option<bool> {
        let dedotted = key.replace('.', "_");
        let mut candidates = vec![format!("rbac/{key}"), format!("rbac_{key}")];
        if dedotted != key {
            candidates.push(format!("rbac/{dedotted}"));
            candidates.push(format!("rbac_{dedotted}"));
        }
        for candidate in &candidates {
            match labels.get(candidate).map(String::as_str) {
                Some("allow") => return Some(true),
                Some("deny") => return Some(false),
                Some(_) => {
                    self.invalid_values.inc();
                }
                None => {}
            }
        }
        None
    }

    /// The decision for `who` on a record with these labels.
    pub fn allows(&self, who: &Identity, labels: &BTreeMap<String, String>) -> bool {
        if let Some(decision) = self.lookup(labels, &user_key(&who.username)) {
            return decision;
        }
        let groups: Vec<bool> = who
            .groups
            .iter()
            .filter_map(|g| self.lookup(labels, &group_key(g)))
            .collect();
        if groups.contains(&false) {
            return false;
        }
        if groups.contains(&true) {
            return true;
        }
        self.lookup(labels, "policy").unwrap_or(false)
    }
}

impl Authorizer for LabelPolicy {
    fn decide(&self, who: &Identity, record: &Meta) -> Decision {
        if self.allows(who, &record.labels) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sa(ns: &str, name: &str) -> Identity {
        Identity {
            username: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }

    #[test]
    fn user_keys_follow_the_original_mapping() {
        assert_eq!(user_key("system:serviceaccount:shop:alice"), "shop_alice");
        assert_eq!(user_key("system:admin"), "admin");
        assert_eq!(user_key("jane"), "jane");
        assert_eq!(user_key("oidc:jane"), "jane");
        assert_eq!(
            group_key("system:serviceaccounts:shop"),
            "group.system_serviceaccounts_shop"
        );
    }

    #[test]
    fn the_user_label_wins_then_groups_then_the_policy_then_deny() {
        let p = LabelPolicy::default();
        let alice = sa("shop", "alice");
        assert!(p.allows(
            &alice,
            &labels(&[("rbac/shop_alice", "allow"), ("rbac/policy", "deny")])
        ));
        assert!(!p.allows(
            &alice,
            &labels(&[("rbac/shop_alice", "deny"), ("rbac/policy", "allow")])
        ));
        assert!(p.allows(&alice, &labels(&[("rbac/policy", "allow")])));
        assert!(!p.allows(&alice, &labels(&[("rbac/policy", "deny")])));
        assert!(!p.allows(&alice, &labels(&[])), "no labels: deny");
        assert!(!p.allows(&alice, &labels(&[("rbac/shop_bob", "allow")])));
        assert!(p.allows(
            &alice,
            &labels(&[
                ("rbac/group.system_serviceaccounts_shop", "allow"),
                ("rbac/policy", "deny")
            ])
        ));
        assert!(!p.allows(
            &alice,
            &labels(&[
                ("rbac/group.system_authenticated", "allow"),
                ("rbac/group.system_serviceaccounts_shop", "deny")
            ])
        ));
    }

    #[test]
    fn other_values_are_ignored_and_counted() {
        let p = LabelPolicy::default();
        let alice = sa("shop", "alice");
        assert!(p.allows(&alice, &labels(&[("rbac/shop_alice", "yes"), ("rbac/policy", "allow")])));
        assert!(
            !p.allows(&alice, &labels(&[("rbac/policy", "Allow")])),
            "case-sensitive"
        );
        assert_eq!(p.invalid_values.get(), 2);
    }

    #[test]
    fn de_dotted_and_flattened_label_keys_are_read() {
        let p = LabelPolicy::default();
        let alice = sa("shop", "alice");
        assert!(p.allows(
            &alice,
            &labels(&[("rbac_shop_alice", "allow"), ("rbac_policy", "deny")])
        ));
        assert!(p.allows(&alice, &labels(&[("rbac_policy", "allow")])));
        assert!(p.allows(&alice, &labels(&[("rbac_group_system_serviceaccounts_shop", "allow")])));
        assert!(
            !p.allows(
                &alice,
                &labels(&[("rbac/shop_alice", "deny"), ("rbac_shop_alice", "allow")])
            ),
            "the rbac/ form wins"
        );
    }
}
