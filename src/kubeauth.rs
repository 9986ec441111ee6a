//! Authentication and authorization against the Kubernetes API: TokenReview for listeners,
//! SubjectAccessReview for `pods/log` access (record policy `kubernetes`) and for the right to
//! tap a flow.

use crate::auth::{AuthError, Authenticator, Authorizer, Decision, Identity};
use crate::rbac::LabelPolicy;
use crate::relay::record::Meta;
use crate::relay::{JoinError, SessionInfo, Sessions};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept per cache before expired ones are swept.
const CACHE_SWEEP_AT: usize = 10_000;

struct Cache<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }
    fn get(&self, k: &K) -> Option<V> {
        let map = self.map.lock().unwrap();
        map.get(k)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }
    fn put(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap();
        if map.len() >= CACHE_SWEEP_AT {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= CACHE_SWEEP_AT {
                map.clear();
            }
        }
        map.insert(k, (v, Instant::now()));
    }
}

/// Listener authentication with a Kubernetes TokenReview, cached by SHA-256 of the token (the
/// token itself is never stored, logged or put in an error).
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audiences: Vec<String>,
    cache: Cache<[u8; 32], Result<Identity, String>>,
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, audiences: Vec<String>, ttl: Duration) -> Self {
        TokenReviewAuthenticator {
            client,
            audiences,
            cache: Cache::new(ttl),
        }
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            let key = token_hash(token);
            if let Some(cached) = self.cache.get(&key) {
                return cached.map_err(AuthError::Rejected);
            }
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..Default::default()
            };
            let (api, params) = (Api::<TokenReview>::all(self.client.clone()), PostParams::default());
            let answer = tokio::time::timeout(API_TIMEOUT, api.create(&params, &review))
                .await
                .map_err(|_| AuthError::Unavailable(unanswered("TokenReview")))?
                .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {}", api_reason(&e))))?;
            let status = answer.status.unwrap_or_default();
            let result = match (status.authenticated, status.user) {
                (Some(true), Some(user)) => Ok(Identity {
                    username: user.username.unwrap_or_default(),
                    groups: user.groups.unwrap_or_default(),
                }),
                _ => Err(status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the API server did not accept the token".into())),
            };
            self.cache.put(key, result.clone());
            result.map_err(AuthError::Rejected)
        })
    }
}

/// A short reason for an API error, without request details.
fn api_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

async fn access_review(client: &kube::Client, who: &Identity, attrs: ResourceAttributes) -> Result<bool, String> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(who.username.clone()),
            groups: Some(who.groups.clone()),
            resource_attributes: Some(attrs),
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

/// How long a listener's connect waits for the API server to review its token or permission;
/// an API server that does not answer (down, partitioned) must not leave connects hanging.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn unanswered(what: &str) -> String {
    format!("{what} failed: the Kubernetes API did not answer within {API_TIMEOUT:?}; try again later")
}

/// Record policy `kubernetes`: a listener sees a record if it may `get pods/log` in the record's
/// namespace. Decisions are cached per user and namespace; an API failure denies (and is not
/// cached).
pub struct PodLogAccess {
    client: kube::Client,
    cache: Cache<(String, String), bool>,
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
        match self.cache.get(&(who.username.clone(), ns.to_owned())) {
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
            if let Some(known) = self.cache.get(&(who.username.clone(), ns.clone())) {
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
                    self.cache.put((who.username.clone(), ns), allowed);
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

/// Cluster-mode listener registration: checks the listener may `get` the tapped Flow or
/// ClusterFlow before it may make the service tap it.
pub struct KubeSessions {
    pub client: kube::Client,
    /// Whether to check the tap permission at all.
    pub check_tap_permission: bool,
}

/// Check that the listener may `get` the Flow or ClusterFlow it wants to tap.
pub async fn check_tap_permission(client: &kube::Client, session: &SessionInfo) -> Result<(), JoinError> {
    let resource = match session.tap.kind {
        crate::crd::FlowKind::Flow => "flows",
        crate::crd::FlowKind::ClusterFlow => "clusterflows",
    };
    let attrs = ResourceAttributes {
        group: Some(crate::logging::GROUP.into()),
        resource: Some(resource.into()),
        verb: Some("get".into()),
        namespace: Some(session.tap.namespace.clone()),
        name: Some(session.tap.name.clone()),
        ..Default::default()
    };
    match access_review(client, &session.identity, attrs).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(JoinError::Forbidden(format!(
            "{} may not get {resource}.{} {:?} in namespace {:?}; tapping a flow needs that permission",
            session.identity.username,
            crate::logging::GROUP,
            session.tap.name,
            session.tap.namespace
        ))),
        Err(e) => Err(JoinError::Unavailable(e)),
    }
}

impl Sessions for KubeSessions {
    fn joined<'a>(&'a self, session: &'a SessionInfo) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(async move {
            if self.check_tap_permission {
                check_tap_permission(&self.client, session).await?;
            }
            Ok(())
        })
    }

    fn left<'a>(&'a self, _: &'a SessionInfo) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    //! Answers the real API server of tests/cluster does not give on demand (failures), and
    //! request counting for the cache, scripted with kube's tower-test mock.
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (kube::Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    async fn answer(handle: &mut Handle, code: u16, body: serde_json::Value) -> serde_json::Value {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.uri().path(), "/apis/authentication.k8s.io/v1/tokenreviews");
        let sent = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        serde_json::from_slice(&sent).unwrap()
    }

    fn authenticated(user: &str) -> serde_json::Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {}, "status": {"authenticated": true, "user": {"username": user, "groups": ["g"]}}})
    }

    #[tokio::test]
    async fn a_token_is_reviewed_once_then_served_from_the_cache() {
        let (client, mut handle) = mock();
        let auth = TokenReviewAuthenticator::new(client, vec!["log-socket".into()], Duration::from_secs(60));
        let server = tokio::spawn(async move {
            let sent = answer(&mut handle, 201, authenticated("alice")).await;
            assert_eq!(sent["spec"]["token"], "t0k");
            assert_eq!(sent["spec"]["audiences"], json!(["log-socket"]));
            handle
        });
        let first = auth.authenticate("t0k").await.unwrap();
        let mut handle = server.await.unwrap();
        assert_eq!(first.username, "alice");
        assert_eq!(first.groups, ["g"]);
        let again = auth.authenticate("t0k").await.unwrap();
        assert_eq!(again, first);
        handle.allow(0);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), handle.next_request())
                .await
                .is_err(),
            "no second TokenReview"
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_server_means_unavailable_and_is_not_cached() {
        let (client, mut handle) = mock();
        let auth = TokenReviewAuthenticator::new(client, vec![], Duration::from_secs(60));
        let server = tokio::spawn(async move {
            let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "code": 500, "reason": "InternalError", "message": "etcd is down"});
            answer(&mut handle, 500, failure).await;
            answer(&mut handle, 201, authenticated("alice")).await;
        });
        match auth.authenticate("t0k").await {
            Err(AuthError::Unavailable(why)) => {
                assert!(why.contains("etcd is down"), "{why}");
                assert!(!why.contains("t0k"), "the token is not in the error");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(auth.authenticate("t0k").await.unwrap().username, "alice", "asked again");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_rejected_token_says_why() {
        let (client, mut handle) = mock();
        let auth = TokenReviewAuthenticator::new(client, vec![], Duration::from_secs(60));
        let server = tokio::spawn(async move {
            let rejected = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                                  "status": {"authenticated": false, "error": "token has expired"}});
            answer(&mut handle, 201, rejected).await;
        });
        match auth.authenticate("old").await {
            Err(AuthError::Rejected(why)) => assert_eq!(why, "token has expired"),
            other => panic!("expected Rejected, got {other:?}"),
        }
        server.await.unwrap();
    }
}
