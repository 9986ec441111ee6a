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

/// The label-policy key of a user: `system:serviceaccount:NS:NAME` becomes `NS_NAME`; in
/// general the first two `:`-separated parts of a name with three or more parts are dropped
/// (the first one of a name with two), and the remaining `:` become `_`. This is the mapping of
/// the original log-socket, so existing labels keep working.
pub fn user_key(username: &str) -> String {
    Key::user(username).to_string()
}

/// The label-policy key of a group: `group.` and the group name with `:` written `_`.
pub fn group_key(group: &str) -> String {
    Key::group(group).to_string()
}

/// A policy key, compared with label keys without being built: the policy runs for every
/// record and every listener, so it must not allocate.
struct Key<'a> {
    prefix: &'static str,
    /// Written with `:` as `_`.
    body: &'a str,
}

impl<'a> Key<'a> {
    fn user(username: &'a str) -> Self {
        let body = match username.split_once(':') {
            None => username,
            Some((_, rest)) => rest.split_once(':').map_or(rest, |(_, rest)| rest),
        };
        Key { prefix: "", body }
    }

    fn group(group: &'a str) -> Self {
        Key {
            prefix: "group.",
            body: group,
        }
    }

    fn has_dot(&self) -> bool {
        self.prefix.contains('.') || self.body.contains('.')
    }

    /// The key's characters; de-dotted, `.` is written `_` too. Both keep byte lengths.
    fn chars(&self, dedot: bool) -> impl Iterator<Item = char> + '_ {
        self.prefix.chars().chain(self.body.chars()).map(move |c| match c {
            ':' => '_',
            '.' if dedot => '_',
            c => c,
        })
    }

    /// Whether `label` is `form` followed by this key.
    fn is(&self, label: &str, form: &str, dedot: bool) -> bool {
        label
            .strip_prefix(form)
            .is_some_and(|rest| rest.len() == self.prefix.len() + self.body.len() && rest.chars().eq(self.chars(dedot)))
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.chars(false).try_for_each(|c| std::fmt::Write::write_char(f, c))
    }
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

    /// The first of `rbac/KEY`, `rbac_KEY` and their de-dotted forms that says allow or deny.
    fn lookup(&self, labels: &Meta, key: Key<'_>) -> Option<bool> {
        // The de-dotted forms only differ from the others when the key has a dot.
        let has_dot = key.has_dot();
        let forms = [(false, "rbac/"), (false, "rbac_"), (true, "rbac/"), (true, "rbac_")];
        for (dedotted, form) in forms.into_iter().filter(|(d, _)| !d || has_dot) {
            // The last label of a repeated key counts, as in a JSON map.
            let value = labels
                .labels()
                .rev()
                .find(|(k, _)| key.is(k, form, dedotted))
                .map(|(_, v)| v);
            match value {
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
    pub fn allows(&self, who: &Identity, labels: &Meta) -> bool {
        if let Some(decision) = self.lookup(labels, Key::user(&who.username)) {
            return decision;
        }
        let mut any_allow = false;
        for group in &who.groups {
            match self.lookup(labels, Key::group(group)) {
                Some(false) => return false,
                Some(true) => any_allow = true,
                None => {}
            }
        }
        any_allow
            || self
                .lookup(
                    labels,
                    Key {
                        prefix: "",
                        body: "policy",
                    },
                )
                .unwrap_or(false)
    }
}

impl Authorizer for LabelPolicy {
    fn decide(&self, who: &Identity, record: &Meta) -> Decision {
        if self.allows(who, record) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Meta {
        let labels: serde_json::Map<String, serde_json::Value> =
            pairs.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        crate::relay::record::meta_of(&serde_json::json!({ "kubernetes": { "labels": labels } }).to_string()).unwrap()
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
