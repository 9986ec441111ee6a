//! The caps on what listeners may make the operator hold, counted from the FlowTaps' sessions
//! (every replica's), so replicas do not multiply them.

use super::ClusterSessions;
use crate::k8s::flowtap::FlowTap;
use crate::relay::SessionInfo;
use kube::ResourceExt;

impl ClusterSessions {
    /// Why `session` would go over a cap, if it would: the flows its user (or the
    /// ServiceAccounts of its namespace) may tap at once, counted over every relay from the
    /// FlowTaps' sessions (this relay's own registrations too, which the cache may not show
    /// yet). (The FlowTaps a namespace may hold are counted where one would be created.)
    pub(super) fn over_caps(&self, session: &SessionInfo) -> Option<String> {
        use crate::protocol::TapKey;
        use std::collections::HashSet;
        let user = &session.identity.username;
        // system:serviceaccount:NS:NAME -> every ServiceAccount of NS is one budget.
        let group = |u: &str| -> String {
            match u.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
                Some((ns, _)) => format!("system:serviceaccount:{ns}:*"),
                None => u.to_owned(),
            }
        };
        let who = group(user);
        let taps = self.taps.state();
        let key_of = |t: &FlowTap| TapKey {
            kind: t.spec.flow_ref.kind,
            namespace: t.namespace().unwrap_or_default(),
            name: t.spec.flow_ref.name.clone(),
        };
        let mut flows: HashSet<TapKey> = taps
            .iter()
            .filter(|t| {
                t.status
                    .iter()
                    .flat_map(|s| s.sessions.iter())
                    .any(|s| group(&s.user) == who)
            })
            .map(|t| key_of(t))
            .collect();
        {
            let mine = self.mine.lock().unwrap();
            flows.extend(
                mine.registered
                    .values()
                    .filter(|m| group(&m.info.identity.username) == who)
                    .map(|m| m.info.tap.clone()),
            );
        }
        let max = self.config.limits.taps_per_user;
        if !flows.contains(&session.tap) && flows.len() >= max {
            let whom = if who.ends_with(":*") {
                format!(
                    "the ServiceAccounts of namespace {}",
                    who.trim_start_matches("system:serviceaccount:").trim_end_matches(":*")
                )
            } else {
                user.clone()
            };
            return Some(format!(
                "{whom} tap {} flows already, through all replicas (--max-taps-per-user {max}); close a listener of another flow first",
                flows.len()
            ));
        }
        None
    }
}
