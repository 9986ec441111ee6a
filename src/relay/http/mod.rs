//! The relay's HTTP surface: the ingest port (fluentd POSTs records) and the API port
//! (listeners connect over WebSocket; `/metrics`).
//!
//! Split as in warp's examples: `routes` holds the filters, `ingest` and `listen` the
//! handlers; `State` is injected into each handler by a filter. The accept loop, TLS and the
//! order of shutdown belong to the service (`crate::service`), which serves these routes.
//!
//! Handlers never call the Kubernetes API for a record: authentication happens once per
//! listener, and record authorization is the [`Authorizer`]'s cache-first `decide`.

mod ingest;
mod listen;
mod routes;
mod sampling;

use super::{Relay, Sessions};
use crate::auth::kubernetes::MetricsAccess;
use crate::auth::limit::{Client, FailureLimit, PeerAddr};
use crate::auth::{AuthError, Authenticator, Authorizer, Identity, IngestAuth};
use crate::shutdown::Shutdown;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use warp::http::{HeaderMap, Response, StatusCode};
use warp::Filter;

type Reply = warp::reply::Response;

/// The pluggable parts of a relay: who listeners are, what they may see, how their sessions
/// are registered, and who may send records.
pub struct Parts {
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
    pub sessions: Arc<dyn Sessions>,
    pub ingest_auth: IngestAuth,
}

/// Everything the handlers need.
struct State {
    relay: Arc<Relay>,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    sessions: Arc<dyn Sessions>,
    ingest_auth: IngestAuth,
    ingest_slots: Semaphore,
    /// Failed listener authentications per client.
    failures: FailureLimit,
    /// TokenReviews of clients over their failure budget go through here, a few at a time and
    /// in turn: a flood waits its turn, and a valid token in it is still accepted.
    blocked_reviews: tokio::sync::Semaphore,
    metrics_access: MetricsAccess,
    /// Open listeners per user name.
    listeners_per_user: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Cancelled when listeners must say goodbye (after ingest has drained).
    stop_listeners: Shutdown,
    /// Held by every listener task; [`Http::close_listeners`] waits until all are dropped.
    listener_tasks: mpsc::Sender<()>,
}

/// The relay's routes over shared state, and the listener tasks they start.
pub struct Http {
    state: Arc<State>,
    tasks: mpsc::Receiver<()>,
}

impl Http {
    pub fn new(relay: Arc<Relay>, parts: Parts, metrics_access: MetricsAccess) -> Http {
        let (listener_tasks, tasks) = mpsc::channel::<()>(1);
        let state = Arc::new(State {
            ingest_slots: Semaphore::new(relay.config.max_concurrent_ingest),
            failures: FailureLimit::default(),
            blocked_reviews: tokio::sync::Semaphore::new(BLOCKED_REVIEWS),
            metrics_access,
            listeners_per_user: Default::default(),
            relay,
            authenticator: parts.authenticator,
            authorizer: parts.authorizer,
            sessions: parts.sessions,
            ingest_auth: parts.ingest_auth,
            stop_listeners: Shutdown::new(),
            listener_tasks,
        });
        Http { state, tasks }
    }

    /// Routes of the ingest port.
    pub fn ingest_routes(&self) -> warp::filters::BoxedFilter<(Reply,)> {
        routes::ingest(self.state.clone()).boxed()
    }

    /// Routes of the API port.
    pub fn api_routes(&self) -> warp::filters::BoxedFilter<(Reply,)> {
        routes::api(self.state.clone()).boxed()
    }

    /// How ingest is guarded, for the start-up log line (never the secret).
    pub fn ingest_auth(&self) -> &IngestAuth {
        &self.state.ingest_auth
    }

    /// Tell every listener to finish (deliver what is queued, then a close frame) and wait
    /// until all listener tasks have ended. Call once ingest has drained.
    pub async fn close_listeners(self) {
        let Http { state, mut tasks } = self;
        state.stop_listeners.cancel();
        drop(state);
        // Every listener task holds a sender; recv() returns None once the last one finished.
        let _ = tasks.recv().await;
    }
}

fn text(code: StatusCode, message: impl Into<String>) -> Reply {
    let mut body = message.into();
    body.push('\n');
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body.into())
        .expect("valid response")
}

fn with_state(state: Arc<State>) -> impl Filter<Extract = (Arc<State>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The listener's token: `X-Authorization` (what the API server's service proxy lets through),
/// or `Authorization: Bearer`.
fn token(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(t) = get("x-authorization").filter(|t| !t.is_empty()) {
        return Some(t.strip_prefix("Bearer ").unwrap_or(t).trim().to_owned());
    }
    if let Some(t) = get("authorization")
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
    {
        return Some(t);
    }
    // Browsers cannot set headers on a WebSocket: they offer the token as a subprotocol.
    get("sec-websocket-protocol")?
        .split(',')
        .filter_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
        .find_map(|b64| crate::auth::base64_decode(b64, true))
        .and_then(|t| String::from_utf8(t).ok())
        .filter(|t| !t.is_empty())
}

/// Subprotocol entry carrying a token: this prefix, then the token in unpadded base64url
/// (the same scheme as the API server's `base64url.bearer.authorization.k8s.io.`).
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "base64url.bearer.logsocket.dev.";

/// TokenReviews at once for clients over their failure budget (all of them together).
const BLOCKED_REVIEWS: usize = 4;
/// How long a blocked client's review may wait for its turn before it is told to retry.
const BLOCKED_REVIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn authenticate(headers: &HeaderMap, peer: Option<PeerAddr>, state: &State) -> Result<Identity, Reply> {
    // The last X-Forwarded-For line, whatever bytes it holds (a proxy appends to the last).
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let client = Client {
        address: peer.map(|p| p.0.ip()),
        forwarded_for: forwarded.as_deref(),
    };
    let trusted = &state.relay.config.trusted_proxies;
    let blocked = state.failures.blocked(&client, trusted);
    let too_many = |wait: std::time::Duration| {
        state.relay.metrics.error("listener_auth_limited");
        let mut reply = text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed authentications from this client; retry in {} s",
                wait.as_secs() + 1
            ),
        );
        reply
            .headers_mut()
            .insert("retry-after", (wait.as_secs() + 1).to_string().parse().unwrap());
        reply
    };
    let Some(token) = token(headers) else {
        state.failures.failed(&client, trusted);
        if let Some(wait) = blocked {
            return Err(too_many(wait));
        }
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "missing token: send it in the X-Authorization header (or Authorization: Bearer)",
        ));
    };
    // A client over its budget still has its token checked (a valid one is never refused for
    // what others behind the same address did): at once when the answer is known (cached),
    // else one review at a time per client, and only a few for all of them together.
    let mut _turn = None;
    let mut _own = None;
    if let Some(wait) = blocked {
        if let Some(known) = state.authenticator.known(&token) {
            return known.map_err(|_| {
                state.failures.failed(&client, trusted);
                too_many(wait)
            });
        }
        let key = state.failures.key(&client, trusted);
        _own = match state.failures.reviewing(&key) {
            Some(own) => Some(own),
            None => return Err(too_many(wait)),
        };
        _turn = match tokio::time::timeout(BLOCKED_REVIEW_WAIT, state.blocked_reviews.acquire()).await {
            Ok(Ok(turn)) => Some(turn),
            _ => return Err(too_many(wait)),
        };
    }
    state.authenticator.authenticate(&token).await.map_err(|e| match e {
        AuthError::Rejected(_) => {
            state.failures.failed(&client, trusted);
            state.relay.metrics.error("listener_unauthenticated");
            if let Some(wait) = blocked {
                return too_many(wait);
            }
            // The reason stays in the service's debug log: what the API server says about a
            // token is not for whoever presented it.
            text(
                StatusCode::UNAUTHORIZED,
                "unauthenticated: the token was not accepted (expired, revoked, or not for this cluster)",
            )
        }
        AuthError::Unavailable(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot authenticate right now: {why}"),
        ),
    })
}

async fn metrics(headers: HeaderMap, peer: Option<PeerAddr>, state: Arc<State>) -> Reply {
    let who = match authenticate(&headers, peer, &state).await {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    match state.metrics_access.allows(&who).await {
        Ok(true) => {}
        Ok(false) => {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "forbidden: {} may not get /metrics (a ClusterRole with nonResourceURLs [\"/metrics\"], verbs [get] grants it)",
                    who.username
                ),
            )
        }
        Err(why) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check access to the metrics right now: {why}"),
            )
        }
    }
    Response::builder()
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(state.relay.metrics.encode().into())
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_x_authorization_or_a_bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(token(&h).as_deref(), Some("abc"));
        h.insert("x-authorization", "xyz".parse().unwrap());
        assert_eq!(
            token(&h).as_deref(),
            Some("xyz"),
            "X-Authorization wins (the proxy strips Authorization)"
        );
    }
}
