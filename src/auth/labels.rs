//! The label policy: pod labels carried in each record say who may read it.
//!
//! For a listener with user key `U` and group keys `G…` (see [`user_key`], [`group_key`]):
//! 1. label `rbac/U: allow|deny` decides;
//! 2. otherwise labels `rbac/G: allow|deny` for the listener's groups: any `deny` denies, else
//!    any `allow` allows;
//! 3. otherwise `rbac/policy: allow|deny` decides;
//! 4. otherwise the record is denied.
//!
//! Keys are injective: no two identities share one, and user and group keys live in spaces of
//! their own (`sa.`/`u.` and `g.`), apart from `policy`. Values other than `allow` and `deny`
//! are ignored and counted. Keys as a pipeline that flattens (`rbac_…`) or de-dots (`.` → `_`)
//! label keys writes them are read only when asked for ([`LabelPolicy::with_flattened_keys`]);
//! the mapping stays injective then too.

use crate::auth::{Authorizer, Decision, Identity};
use crate::protocol::Meta;
use prometheus_client::metrics::counter::Counter;

/// The longest label name Kubernetes accepts (the part after `rbac/`).
const MAX_NAME: usize = 63;

/// The label-policy key of a user:
/// - `system:serviceaccount:NS:NAME` → `sa.NS.NAME` (a namespace has no `.`, so this splits
///   one way only);
/// - any other user → `u.` + the name with every byte other than `a-z`, `0-9` and `-` written
///   `_` and two lowercase hex digits (`alice@example.com` → `u.alice_40example_2ecom`);
/// - a key longer than 63 characters (the limit of a label name) → `uh.` + the first 32 hex
///   digits of the SHA-256 of the user name.
pub fn user_key(username: &str) -> String {
    Key::user(username).to_string()
}

/// The label-policy key of a group: `g.` + the group escaped as a user name is
/// (`system:serviceaccounts:shop` → `g.system_3aserviceaccounts_3ashop`); `gh.` + a hash when
/// longer than 63 characters.
pub fn group_key(group: &str) -> String {
    Key::group(group).to_string()
}

/// A policy key, compared with label keys without being built: the policy runs for every
/// record and every listener, so it must not allocate (only hashed keys of over-long names do).
enum Key<'a> {
    ServiceAccount { namespace: &'a str, name: &'a str },
    Escaped { prefix: &'static str, name: &'a str },
    Hashed { prefix: &'static str, hex: String },
    Policy,
}

fn escaped_len(name: &str) -> usize {
    name.bytes().map(|b| if kept(b) { 1 } else { 3 }).sum()
}

fn plain(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Written as it is in a key: `a-z`, `0-9`, `-`.
fn kept(b: u8) -> bool {
    plain(b) || b == b'-'
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

/// `name` escaped: `a-z0-9-` as they are, every other byte as `_` and two hex digits.
fn escape(name: &str) -> impl Iterator<Item = char> + '_ {
    name.bytes().flat_map(|b| {
        let chars = if kept(b) {
            [b as char, ' ', ' ']
        } else {
            ['_', hex_digit(b >> 4), hex_digit(b & 15)]
        };
        chars.into_iter().take(if kept(b) { 1 } else { 3 })
    })
}

/// A DNS label (what a namespace is): `a-z0-9-`, 1 to 63 characters.
fn dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| plain(b) || b == b'-')
}

/// A DNS subdomain (what a service account name is): `a-z0-9-.`.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| plain(b) || b == b'-' || b == b'.')
}

impl<'a> Key<'a> {
    fn user(username: &'a str) -> Self {
        if let Some(rest) = username.strip_prefix("system:serviceaccount:") {
            if let Some((namespace, name)) = rest.split_once(':') {
                if dns_label(namespace) && dns_subdomain(name) && 4 + namespace.len() + name.len() <= MAX_NAME {
                    return Key::ServiceAccount { namespace, name };
                }
            }
        }
        Key::escaped("u.", username)
    }

    fn group(group: &'a str) -> Self {
        Key::escaped("g.", group)
    }

    fn escaped(prefix: &'static str, name: &'a str) -> Self {
        if prefix.len() + escaped_len(name) <= MAX_NAME {
            return Key::Escaped { prefix, name };
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
        let hex = digest.as_ref()[..16]
            .iter()
            .flat_map(|b| [hex_digit(b >> 4), hex_digit(b & 15)])
            .collect();
        Key::Hashed { prefix, hex }
    }

    /// The key's characters; `dedot`: with `.` written `_`, as label-flattening pipelines do.
    fn chars(&self, dedot: bool) -> Box<dyn Iterator<Item = char> + '_> {
        let dot = if dedot { '_' } else { '.' };
        let d = move |c: char| if c == '.' { dot } else { c };
        match self {
            Key::ServiceAccount { namespace, name } => Box::new(
                "sa."
                    .chars()
                    .chain(namespace.chars())
                    .chain(std::iter::once('.'))
                    .chain(name.chars())
                    .map(d),
            ),
            Key::Escaped { prefix, name } => Box::new(prefix.chars().map(d).chain(escape(name))),
            // `uh.`/`gh.`: apart from `u.`/`g.` keys even de-dotted (`u_h_…` could be escaped).
            Key::Hashed { prefix, hex } => Box::new(prefix[..1].chars().chain("h.".chars()).map(d).chain(hex.chars())),
            Key::Policy => Box::new("policy".chars()),
        }
    }

    /// Whether `label` is `form` followed by this key. Runs for every label of every record
    /// and every listener: compares without allocating (each arm its own iterator).
    fn is(&self, label: &str, form: &str, dedot: bool) -> bool {
        let Some(rest) = label.strip_prefix(form) else {
            return false;
        };
        let dot = if dedot { '_' } else { '.' };
        let d = move |c: char| if c == '.' { dot } else { c };
        let same = |it: &mut dyn Iterator<Item = char>| rest.chars().eq(it);
        match self {
            Key::ServiceAccount { namespace, name } => same(
                &mut "sa."
                    .chars()
                    .chain(namespace.chars())
                    .chain(std::iter::once('.'))
                    .chain(name.chars())
                    .map(d),
            ),
            Key::Escaped { prefix, name } => same(&mut prefix.chars().map(d).chain(escape(name))),
            Key::Hashed { prefix, hex } => same(&mut prefix[..1].chars().chain("h.".chars()).map(d).chain(hex.chars())),
            Key::Policy => rest == "policy",
        }
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
    /// Also read `rbac_KEY` and de-dotted keys (`.` written `_`).
    flattened: bool,
}

impl LabelPolicy {
    /// A policy counting ignored label values in `counter` (e.g. the relay's metric).
    pub fn counting_into(counter: Counter) -> Self {
        LabelPolicy {
            invalid_values: counter,
            flattened: false,
        }
    }

    /// Also read keys as pipelines that flatten (`rbac_KEY`) or de-dot (`.` → `_`) label keys
    /// write them (`--label-policy-flattened-keys`); `rbac/KEY` wins when both are there.
    pub fn with_flattened_keys(mut self, on: bool) -> Self {
        self.flattened = on;
        self
    }

    /// The first of `rbac/KEY` (and, when asked for, `rbac_KEY` and the de-dotted forms) that
    /// says allow or deny.
    fn lookup(&self, labels: &Meta, key: Key<'_>) -> Option<bool> {
        let forms: &[(bool, &str)] = if self.flattened {
            &[(false, "rbac/"), (false, "rbac_"), (true, "rbac/"), (true, "rbac_")]
        } else {
            &[(false, "rbac/")]
        };
        for &(dedotted, form) in forms {
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
        any_allow || self.lookup(labels, Key::Policy).unwrap_or(false)
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
        crate::protocol::meta_of(&serde_json::json!({ "kubernetes": { "labels": labels } }).to_string()).unwrap()
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
    fn keys_are_readable_for_service_accounts_and_escaped_for_everyone_else() {
        assert_eq!(user_key("system:serviceaccount:shop:alice"), "sa.shop.alice");
        assert_eq!(user_key("system:serviceaccount:shop:ci.bot"), "sa.shop.ci.bot");
        assert_eq!(user_key("jane"), "u.jane");
        assert_eq!(user_key("oidc:jane"), "u.oidc_3ajane");
        assert_eq!(user_key("alice@example.com"), "u.alice_40example_2ecom");
        assert_eq!(user_key("Jane"), "u._4aane");
        assert_eq!(group_key("oncall"), "g.oncall");
        assert_eq!(
            group_key("system:serviceaccounts:shop"),
            "g.system_3aserviceaccounts_3ashop"
        );
        let long = "x".repeat(70);
        let key = user_key(&long);
        assert!(key.starts_with("uh.") && key.len() == 3 + 32, "{key}");
        assert_ne!(key, user_key(&"x".repeat(71)));
        assert!(group_key(&long).starts_with("gh."));
    }

    #[test]
    fn the_user_label_wins_then_groups_then_the_policy_then_deny() {
        let p = LabelPolicy::default();
        let alice = sa("shop", "alice");
        assert!(p.allows(
            &alice,
            &labels(&[("rbac/sa.shop.alice", "allow"), ("rbac/policy", "deny")])
        ));
        assert!(!p.allows(
            &alice,
            &labels(&[("rbac/sa.shop.alice", "deny"), ("rbac/policy", "allow")])
        ));
        assert!(p.allows(&alice, &labels(&[("rbac/policy", "allow")])));
        assert!(!p.allows(&alice, &labels(&[("rbac/policy", "deny")])));
        assert!(!p.allows(&alice, &labels(&[])), "no labels: deny");
        assert!(!p.allows(&alice, &labels(&[("rbac/sa.shop.bob", "allow")])));
        assert!(p.allows(
            &alice,
            &labels(&[
                ("rbac/g.system_3aserviceaccounts_3ashop", "allow"),
                ("rbac/policy", "deny")
            ])
        ));
        assert!(!p.allows(
            &alice,
            &labels(&[
                ("rbac/g.system_3aauthenticated", "allow"),
                ("rbac/g.system_3aserviceaccounts_3ashop", "deny")
            ])
        ));
    }

    #[test]
    fn the_old_colliding_keys_open_nothing() {
        let p = LabelPolicy::default();
        // Before, `shop_alice` was both system:serviceaccount:shop:alice and a user called
        // shop_alice, `jane` both jane and oidc:jane, and `policy` a user called policy.
        let user = |name: &str| Identity {
            username: name.into(),
            groups: vec![],
        };
        assert!(!p.allows(&sa("shop", "alice"), &labels(&[("rbac/shop_alice", "allow")])));
        assert!(!p.allows(&user("shop_alice"), &labels(&[("rbac/sa.shop.alice", "allow")])));
        assert!(!p.allows(&user("oidc:jane"), &labels(&[("rbac/u.jane", "allow")])));
        assert!(!p.allows(
            &user("policy"),
            &labels(&[("rbac/u.policy", "deny"), ("rbac/policy", "allow")])
        ));
        assert!(p.allows(&user("policy"), &labels(&[("rbac/policy", "allow")])));
        // A group named like a user is not that user.
        let in_group = Identity {
            username: "mallory".into(),
            groups: vec!["jane".into()],
        };
        assert!(!p.allows(&in_group, &labels(&[("rbac/u.jane", "allow")])));
    }

    #[test]
    fn other_values_are_ignored_and_counted() {
        let p = LabelPolicy::default();
        let alice = sa("shop", "alice");
        assert!(p.allows(
            &alice,
            &labels(&[("rbac/sa.shop.alice", "yes"), ("rbac/policy", "allow")])
        ));
        assert!(
            !p.allows(&alice, &labels(&[("rbac/policy", "Allow")])),
            "case-sensitive"
        );
        assert_eq!(p.invalid_values.get(), 2);
    }

    #[test]
    fn flattened_and_de_dotted_keys_are_read_only_when_asked_for() {
        let alice = sa("shop", "alice");
        let flat = labels(&[("rbac_sa_shop_alice", "allow"), ("rbac_policy", "deny")]);
        assert!(!LabelPolicy::default().allows(&alice, &flat), "not by default");
        let p = LabelPolicy::default().with_flattened_keys(true);
        assert!(p.allows(&alice, &flat));
        assert!(p.allows(&alice, &labels(&[("rbac_policy", "allow")])));
        assert!(p.allows(&alice, &labels(&[("rbac_g_system_3aserviceaccounts_3ashop", "allow")])));
        assert!(
            !p.allows(
                &alice,
                &labels(&[("rbac/sa.shop.alice", "deny"), ("rbac_sa_shop_alice", "allow")])
            ),
            "the rbac/ form wins"
        );
    }

    proptest::proptest! {
        /// No two distinct identities (users, groups) share a key, de-dotted or not.
        #[test]
        fn no_two_identities_share_a_key(
            a in identity(), b in identity(), dedot in proptest::bool::ANY,
        ) {
            let key = |(group, name): &(bool, String)| {
                let k = if *group { Key::group(name) } else { Key::user(name) };
                k.chars(dedot).collect::<String>()
            };
            if a != b {
                proptest::prop_assert_ne!(key(&a), key(&b), "{:?} and {:?}", a, b);
            }
            proptest::prop_assert_ne!(key(&a), "policy");
        }
    }

    /// A user or group name: service accounts, names with the characters keys escape and
    /// those they are escaped with, over-long ones.
    fn identity() -> impl proptest::strategy::Strategy<Value = (bool, String)> {
        use proptest::prelude::*;
        let part = "[a-z0-9._:@-]{0,12}";
        prop_oneof![
            (any::<bool>(), part).prop_map(|(g, s)| (g, s)),
            ("[a-z0-9-]{1,8}", "[a-z0-9.-]{1,12}")
                .prop_map(|(ns, n)| (false, format!("system:serviceaccount:{ns}:{n}"))),
            (any::<bool>(), "[a-z_0-9]{0,6}", "[A-Z:_.]{0,4}").prop_map(|(g, a, b)| (g, format!("{a}{b}"))),
            (any::<bool>(), "[a-z]{60,70}").prop_map(|(g, s)| (g, s)),
            // Names whose escaped form looks like a hashed key's, de-dotted.
            (any::<bool>(), "[0-9a-f]{30,32}").prop_map(|(g, s)| (g, format!("h:{s}"))),
        ]
    }
}
