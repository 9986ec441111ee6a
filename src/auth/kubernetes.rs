//! Authorization against the Kubernetes API: SubjectAccessReview for `pods/log` access (record
//! policy `kubernetes`) and for the right to tap a flow.

use super::cache::Cache;
use super::labels::LabelPolicy;
use super::{Authorizer, Decision, Identity};
use crate::protocol::{Meta, TapKey};
use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use std::time::Duration;

/// A short reason for an API error, without request details.
pub(super) fn api_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

async fn access_review(client: &kube::Client, who: &Identity, attrs: ResourceAttributes) -> Result<bool, String> {
    review(client, who, Some(attrs), None).await
}

async fn review(
    client: &kube::Client,
    who: &Identity,
    resource: Option<ResourceAttributes>,
    non_resource: Option<k8s_openapi::api::authorization::v1::NonResourceAttributes>,
) -> Result<bool, String> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(who.username.clone()),
            groups: Some(who.groups.clone()),
            resource_attributes: resource,
            non_resource_attributes: non_resource,
            ..Default::default()
        },
        ..Default::default()
    };
    let (api, params) = (Api::<SubjectAccessReview>::all(client.clone()), PostParams::default());
    tokio::time::timeout(API_TIMEOUT, api.create(&params, &review))
        .await
        .map_err(|_| unanswered("SubjectAccessReview"))?
        .map(|r| r.status.is_some_and(|s| s.allowed))
        .map_err(|e| format!("SubjectAccessReview failed: {}", api_reason(&e)))
}

/// Who may read `/metrics` (series name taps, counts and errors of every tenant): in cluster
/// mode whoever a SubjectAccessReview allows `get` on the non-resource URL `/metrics` (what
/// Prometheus' ClusterRole grants for the API server's own metrics), an allow cached per
/// identity for 30 s, a denial for 5 s (so a grant works soon); in standalone mode any
/// authenticated token.
#[derive(Default)]
pub struct MetricsAccess {
    review: Option<Reviewed>,
}

/// The reviews behind [`MetricsAccess`], with their answers.
struct Reviewed {
    client: kube::Client,
    /// Identities allowed, and identities denied: which cache holds one is the answer.
    allowed: Cache<String, ()>,
    denied: Cache<String, ()>,
}

impl MetricsAccess {
    pub fn subject_access_review(client: kube::Client) -> Self {
        MetricsAccess {
            review: Some(Reviewed {
                client,
                allowed: Cache::new(Duration::from_secs(30)),
                denied: Cache::new(Duration::from_secs(5)),
            }),
        }
    }

    /// Whether `who` may read the metrics; `Err` when that cannot be told right now.
    pub async fn allows(&self, who: &Identity) -> Result<bool, String> {
        let Some(Reviewed {
            client,
            allowed: allowed_cache,
            denied: denied_cache,
        }) = &self.review
        else {
            return Ok(true);
        };
        let key = who.cache_key();
        if let Some(known) = allowed_cache
            .get(&key)
            .map(|()| true)
            .or_else(|| denied_cache.get(&key).map(|()| false))
        {
            return Ok(known);
        }
        let attrs = k8s_openapi::api::authorization::v1::NonResourceAttributes {
            path: Some("/metrics".into()),
            verb: Some("get".into()),
        };
        let allowed = review(client, who, None, Some(attrs)).await?;
        match allowed {
            true => allowed_cache.put(key, ()),
            false => denied_cache.put(key, ()),
        }
        Ok(allowed)
    }
}

/// How long a listener's connect waits for the API server to review its token or permission;
/// an API server that does not answer (down, partitioned) must not leave connects hanging.
pub(super) const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn unanswered(what: &str) -> String {
    format!("{what} failed: the Kubernetes API did not answer within {API_TIMEOUT:?}; try again later")
}

/// Record policy `kubernetes`: a listener sees a record if it may `get pods/log` in the record's
/// namespace. Decisions are cached per identity (user and groups: one user name may come with
/// other groups) and namespace; an API failure denies (and is not cached).
pub struct PodLogAccess {
    client: kube::Client,
    cache: Cache<(String, u64, String), bool>,
}

/// The cache key of `who` in `ns`. Asked for every record and listener, so the groups are
/// hashed rather than written out as in [`Identity::cache_key`].
fn identity_key(who: &Identity, ns: &str) -> (String, u64, String) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    who.groups.hash(&mut h);
    (who.username.clone(), h.finish(), ns.to_owned())
}

impl PodLogAccess {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        PodLogAccess {
            client,
            cache: Cache::new(ttl),
        }
    }
}

impl Authorizer for PodLogAccess {
    fn decide(&self, who: &Identity, record: &Meta) -> Decision {
        let Some(ns) = record.namespace() else {
            return Decision::Deny;
        };
        match self.cache.get(&identity_key(who, ns)) {
            Some(true) => Decision::Allow,
            Some(false) => Decision::Deny,
            None => Decision::Ask,
        }
    }

    fn resolve<'a>(&'a self, who: &'a Identity, record: &'a Meta) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(ns) = record.namespace().map(str::to_owned) else {
                return false;
            };
            if let Some(known) = self.cache.get(&identity_key(who, &ns)) {
                return known;
            }
            let attrs = ResourceAttributes {
                namespace: Some(ns.clone()),
                verb: Some("get".into()),
                resource: Some("pods".into()),
                subresource: Some("log".into()),
                ..Default::default()
            };
            match access_review(&self.client, who, attrs).await {
                Ok(allowed) => {
                    self.cache.put(identity_key(who, &ns), allowed);
                    allowed
                }
                Err(e) => {
                    tracing::warn!(error = %e, "record denied: authorization unavailable");
                    false
                }
            }
        })
    }
}

/// Record policy `labels-or-kubernetes`: allowed by the labels, or else by `pods/log` access.
pub struct LabelsOrKubernetes {
    pub labels: LabelPolicy,
    pub kubernetes: PodLogAccess,
}

impl Authorizer for LabelsOrKubernetes {
    fn decide(&self, who: &Identity, record: &Meta) -> Decision {
        match self.labels.decide(who, record) {
            Decision::Allow => Decision::Allow,
            _ => self.kubernetes.decide(who, record),
        }
    }

    fn resolve<'a>(&'a self, who: &'a Identity, record: &'a Meta) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            self.labels.decide(who, record) == Decision::Allow || self.kubernetes.resolve(who, record).await
        })
    }
}

/// Whether `who` may `get` the Flow or ClusterFlow `tap` (what tapping a flow needs); `Err`
/// when the API server did not answer.
pub async fn may_get_flow(client: &kube::Client, who: &Identity, tap: &TapKey) -> Result<bool, String> {
    let attrs = ResourceAttributes {
        group: Some(crate::k8s::logging::GROUP.into()),
        resource: Some(tap.kind.resource().into()),
        verb: Some("get".into()),
        namespace: Some(tap.namespace.clone()),
        name: Some(tap.name.clone()),
        ..Default::default()
    };
    access_review(client, who, attrs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_its_user_and_its_groups() {
        let who = |groups: &[&str]| Identity {
            username: "alice".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(identity_key(&who(&["a"]), "ns"), identity_key(&who(&["a"]), "ns"));
        assert_ne!(
            identity_key(&who(&["a"]), "ns"),
            identity_key(&who(&["a", "admins"]), "ns")
        );
        assert_ne!(identity_key(&who(&["a"]), "ns"), identity_key(&who(&["a"]), "other"));
    }
}
