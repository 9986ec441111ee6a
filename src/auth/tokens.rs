//! Listener tokens to identities: a static token file (standalone mode) or a Kubernetes
//! TokenReview (cluster mode, cached by the token's SHA-256; the token itself is never stored,
//! logged or put in an error).

use super::cache::Cache;
use super::kubernetes::{api_reason, unanswered, API_TIMEOUT};
use super::{constant_time_eq, AuthError, Authenticator, Identity};
use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Tokens from a file in the Kubernetes static token format: `token,user,uid,"group1,group2"`
/// per line (uid and groups optional; `#` starts a comment).
#[derive(Debug, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, Identity>,
}

impl StaticTokens {
    /// Read a token file; errors name the file and line, never the token.
    pub fn load(path: &Path) -> Result<StaticTokens, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    /// Parse the token file format.
    pub fn parse(text: &str) -> Result<StaticTokens, String> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            let (token, user) = match (fields.first(), fields.get(1)) {
                (Some(t), Some(u)) if !t.is_empty() && !u.is_empty() => (t.clone(), u.clone()),
                _ => return Err(format!("line {}: expected token,user[,uid[,\"group1,group2\"]]", i + 1)),
            };
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            if tokens.insert(token, Identity { username: user, groups }).is_some() {
                return Err(format!("line {}: duplicate token", i + 1));
            }
        }
        if tokens.is_empty() {
            return Err("no tokens".into());
        }
        Ok(StaticTokens { tokens })
    }
}

fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields.iter().map(|f| f.trim().to_owned()).collect()
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        let found = self
            .tokens
            .iter()
            .find(|(known, _)| constant_time_eq(known.as_bytes(), token.as_bytes()))
            .map(|(_, id)| id.clone());
        Box::pin(async move { found.ok_or_else(|| AuthError::Rejected("invalid token".into())) })
    }

    fn known(&self, token: &str) -> Option<Result<Identity, AuthError>> {
        // A lookup in memory: always known.
        self.authenticate(token).now_or_never()
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
            if let Err(why) = &result {
                tracing::debug!(reason = %why, "TokenReview did not authenticate a listener token");
            }
            self.cache.put(key, result.clone());
            result.map_err(AuthError::Rejected)
        })
    }

    fn known(&self, token: &str) -> Option<Result<Identity, AuthError>> {
        self.cache
            .get(&token_hash(token))
            .map(|r| r.map_err(AuthError::Rejected))
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

    #[tokio::test]
    async fn the_kubernetes_static_token_format_is_read_with_groups() {
        let t = StaticTokens::parse("# comment\nabc,alice,1,\"dev,ops\"\ndef,bob\n").unwrap();
        let alice = t.authenticate("abc").await.unwrap();
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.groups, ["dev", "ops"]);
        assert!(t.authenticate("ab").await.is_err());
        assert!(StaticTokens::parse("lonely\n").unwrap_err().contains("line 1"));
        assert!(StaticTokens::parse("a,x\na,y\n").unwrap_err().contains("duplicate"));
    }

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
