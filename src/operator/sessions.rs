//! Listener registration on FlowTaps (cluster mode): a listener joining a flow creates the
//! flow's ephemeral FlowTap if there is none, and adds its session to `status.sessions`; leaving
//! removes it. Writes are read-modify-write with resourceVersion, retried on conflict, so
//! concurrent listeners on any number of relays never lose each other's sessions. Each relay
//! renews its sessions; sessions of a relay that stopped renewing expire (see the controller).

use super::{ephemeral_tap_name, update_status, OperatorConfig};
use crate::auth::kubernetes::may_get_flow;
use crate::k8s::flowtap::{FlowTap, FlowTapSpec, Session};
use crate::relay::{JoinError, SessionInfo, Sessions};
use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::{store::Writer, Store};
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// [`Sessions`] backed by FlowTaps.
mod caps;

pub struct ClusterSessions {
    client: kube::Client,
    config: Arc<OperatorConfig>,
    check_permission: bool,
    /// Our sessions: which are live, and where each is registered. One lock for both, so a
    /// listener that leaves while its session is being (re-)registered is never added back.
    mine: Mutex<Registry>,
    /// This relay's view of the FlowTaps, kept by its tap tracking ([`super::track`]).
    taps: Store<FlowTap>,
    taps_in: Mutex<Option<Writer<FlowTap>>>,
    /// Identities recently allowed to tap a flow (denials are asked again each time, so a
    /// granted permission works at once).
    allowed: crate::auth::cache::Cache<String, ()>,
    /// The relay's bus, reported in the status of the FlowTaps this relay renews.
    bus: std::sync::OnceLock<crate::relay::bus::Bus>,
    /// When this relay started: a session another relay renewed after it is a live replica.
    started: k8s_openapi::jiff::Timestamp,
    /// Whether the error about replicas on the embedded bus was logged.
    warned_replicas: std::sync::atomic::AtomicBool,
}

/// How long a SubjectAccessReview that allowed tapping a flow is trusted: like kube-apiserver's
/// own webhook authorizer cache, short enough that a revoked permission ends new taps soon.
const PERMISSION_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// This relay's sessions.
#[derive(Default)]
struct Registry {
    /// Listeners connected now (from `joined` until `left`).
    live: std::collections::HashSet<u64>,
    /// Session id → where it is registered, and what to register again.
    registered: HashMap<u64, Mine>,
}

/// One of this relay's sessions.
#[derive(Clone)]
struct Mine {
    namespace: String,
    /// The FlowTap it is registered on.
    tap: String,
    info: SessionInfo,
    since: Time,
}

fn now() -> Time {
    Time(super::status::now())
}

impl ClusterSessions {
    pub fn new(client: kube::Client, config: Arc<OperatorConfig>, check_permission: bool) -> Self {
        let (taps, taps_in) = kube::runtime::reflector::store();
        ClusterSessions {
            taps,
            taps_in: Mutex::new(Some(taps_in)),
            client,
            config,
            check_permission,
            mine: Mutex::new(Registry::default()),
            allowed: crate::auth::cache::Cache::new(PERMISSION_TTL),
            bus: std::sync::OnceLock::new(),
            started: super::status::now(),
            warned_replicas: Default::default(),
        }
    }

    /// With the embedded bus, say so loudly when another live relay serves listeners too: a
    /// listener there misses what fluentd posts here. A relay that crashed before this one
    /// started cannot renew after it, so only live replicas count.
    fn check_replicas(&self) {
        use std::sync::atomic::Ordering;
        if !matches!(self.bus.get(), Some(crate::relay::bus::Bus::Embedded))
            || self.warned_replicas.load(Ordering::Relaxed)
        {
            return;
        }
        let others: std::collections::BTreeSet<String> = self
            .taps
            .state()
            .iter()
            .flat_map(|t| t.status.iter().flat_map(|s| s.sessions.iter()))
            .filter(|s| s.relay != self.config.instance)
            .filter(|s| s.renew_time.as_ref().is_some_and(|t| t.0 > self.started))
            .map(|s| s.relay.clone())
            .collect();
        if !others.is_empty() {
            self.warned_replicas.store(true, Ordering::Relaxed);
            tracing::error!(
                other_relays = ?others,
                "several log-socket replicas serve listeners, but this one runs --bus embedded: a listener on one replica misses what fluentd posts to another. Run one replica, or --bus nats (see docs/scaling.md)"
            );
        }
    }

    /// Report `bus` in the status of the FlowTaps this relay's listeners renew.
    pub fn set_bus(&self, bus: crate::relay::bus::Bus) {
        let _ = self.bus.set(bus);
    }

    /// What this relay knows of the bus serving the tap of `tap`.
    async fn bus_status(&self, tap: Option<&SessionInfo>) -> Option<crate::k8s::flowtap::BusStatus> {
        use crate::relay::bus::Bus;
        let bus = self.bus.get()?;
        let mut status = crate::k8s::flowtap::BusStatus {
            kind: bus.name().to_owned(),
            ..Default::default()
        };
        if let (Bus::Nats(nats), Some(info)) = (bus, tap) {
            match nats.stream_state(&info.tap).await {
                Ok(Some((stream, first, last))) => {
                    status.stream = Some(stream);
                    status.first_seq = Some(first);
                    status.last_seq = Some(last);
                }
                Ok(None) => {
                    if let Some(other) = nats.captured_by(&info.tap).await {
                        tracing::error!(tap = %info.tap, stream = %other, "another NATS stream captures the tap's subject");
                        status.problem = Some(format!(
                            "NATS stream {other:?} captures the tap's subject, so its records cannot be stored: delete it (nats stream rm {other}) and lock NATS to log-socket (docs/security.md#the-nats-bus)"
                        ));
                    }
                }
                Err(e) => tracing::debug!(tap = %info.tap, error = %e, "cannot read the tap's stream for its status"),
            }
        }
        Some(status)
    }

    fn session_id(&self, id: u64) -> String {
        format!("{}/{id}", self.config.instance)
    }

    /// The writer of the FlowTap cache this relay's tap tracking fills (once).
    pub fn tap_cache_writer(&self) -> Writer<FlowTap> {
        self.taps_in
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| kube::runtime::reflector::store().1)
    }

    /// The FlowTap of the session's flow: an existing one (a persistent tap wins), or a new
    /// ephemeral one. Existing ones are looked for in the tap tracking's cache once it has
    /// synced (one it has not seen yet only means two FlowTaps share the flow, which the
    /// controller handles), else listed.
    async fn find_or_create(&self, session: &SessionInfo) -> Result<(String, Option<FlowTap>), kube::Error> {
        let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &session.tap.namespace);
        let synced = self.taps.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok());
        let existing: Vec<FlowTap> = if synced {
            self.taps
                .state()
                .iter()
                .filter(|t| t.metadata.namespace.as_deref() == Some(session.tap.namespace.as_str()))
                .map(|t| (**t).clone())
                .collect()
        } else {
            api.list(&ListParams::default()).await?.items
        };
        let mut matching: Vec<&FlowTap> = existing
            .iter()
            .filter(|t| t.spec.flow_ref.kind == session.tap.kind && t.spec.flow_ref.name == session.tap.name)
            .filter(|t| t.metadata.deletion_timestamp.is_none())
            .collect();
        matching.sort_by_key(|t| (!t.spec.persistent, t.name_any()));
        if let Some(tap) = matching.first() {
            return Ok((tap.name_any(), Some((*tap).clone())));
        }
        // A new FlowTap is a change of the shared Logging: a namespace holds only so many.
        let max = self.config.limits.taps_per_namespace;
        let mut live = existing
            .iter()
            .filter(|t| t.metadata.deletion_timestamp.is_none())
            .count();
        if synced && live + 1 >= max {
            // Near the cap, the cache (which may lag) is not the last word.
            let listed = api.list(&ListParams::default()).await?.items;
            live = listed
                .iter()
                .filter(|t| t.metadata.deletion_timestamp.is_none())
                .count();
        }
        if live >= max {
            let message = format!(
                "namespace {} holds {live} FlowTaps (--max-taps-per-namespace {max}), each a change of the shared Logging; join a flow tapped already, or wait for a tap to end",
                session.tap.namespace
            );
            return Err(kube::Error::Api(Box::new(
                kube::core::Status::failure(&message, "TooManyRequests").with_code(429),
            )));
        }
        let name = ephemeral_tap_name(session.tap.kind, &session.tap.name);
        let mut tap = FlowTap::new(
            &name,
            FlowTapSpec {
                flow_ref: crate::k8s::flowtap::FlowRef {
                    kind: session.tap.kind,
                    name: session.tap.name.clone(),
                },
                persistent: false,
                mode: self.config.mode,
                replay: Default::default(),
                buffer: Default::default(),
                // A listener's own rate is its session's, not the tap's.
                listener_rate: None,
            },
        );
        tap.metadata.labels = Some([(super::MANAGED_BY.0.to_owned(), super::MANAGED_BY.1.to_owned())].into());
        // Born with the cleanup finalizer: the controller need not add it (a write, and a
        // conflict with the session registered next).
        tap.metadata.finalizers = Some(vec![super::FINALIZER.to_owned()]);
        match api.create(&PostParams::default(), &tap).await {
            Ok(created) => {
                tracing::info!(tap = %name, namespace = %session.tap.namespace, "FlowTap created for a listener");
                Ok((name, Some(created)))
            }
            // Another listener (or relay) created it first: join that one.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok((name, None)),
            Err(e) => Err(e),
        }
    }

    async fn register(&self, session: &SessionInfo, since: Time) -> Result<(), kube::Error> {
        let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &session.tap.namespace);
        let id = self.session_id(session.id);
        // A tap being deleted (linger expired just now) cannot take sessions: retry on a new one.
        for _ in 0..5 {
            let (name, known) = self.find_or_create(session).await?;
            let entry = Session {
                id: id.clone(),
                user: session.identity.username.clone(),
                since: since.clone(),
                relay: self.config.instance.clone(),
                rate: session.rate,
                renew_time: Some(now()),
            };
            let mut deleting = false;
            let max = self.config.limits.sessions_per_tap;
            let mut full = false;
            let updated = update_status(&api, &name, known, |status| {
                status.sessions.retain(|s| s.id != entry.id);
                full = status.sessions.len() >= max;
                if !full {
                    status.sessions.push(entry.clone());
                }
                !full
            })
            .await?;
            if full {
                let why =
                    format!("FlowTap {name} has {max} listener sessions (--max-sessions-per-tap); try again later");
                return Err(kube::Error::Api(
                    kube::core::Status::failure(&why, "TooManySessions")
                        .with_code(429)
                        .boxed(),
                ));
            }
            if let Some(tap) = &updated {
                deleting = tap.metadata.deletion_timestamp.is_some();
            }
            match updated {
                Some(_) if !deleting => {
                    let mine = Mine {
                        namespace: session.tap.namespace.clone(),
                        tap: name.clone(),
                        info: session.clone(),
                        since,
                    };
                    let live = {
                        let mut registry = self.mine.lock().unwrap();
                        let live = registry.live.contains(&session.id);
                        if live {
                            registry.registered.insert(session.id, mine);
                        }
                        live
                    };
                    if !live {
                        // The listener left while this ran: take back what was just added,
                        // or it would hold the tap (and the flow's ref) until it expires.
                        remove_session(&api, &name, &id).await;
                    }
                    return Ok(());
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        Err(kube::Error::Api(Box::new(kube::core::Status::failure(
            "the tap is being removed; try again",
            "Conflict",
        ))))
    }

    async fn unregister(&self, session: &SessionInfo) {
        let registered = {
            let mut registry = self.mine.lock().unwrap();
            registry.live.remove(&session.id);
            registry.registered.remove(&session.id)
        };
        // Not registered (yet): a registration under way sees the listener gone and undoes itself.
        let Some(Mine {
            namespace: ns,
            tap: name,
            ..
        }) = registered
        else {
            return;
        };
        let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &ns);
        remove_session(&api, &name, &self.session_id(session.id)).await;
    }

    /// Renew this relay's sessions every third of the session TTL until `stop` completes. A
    /// renewal is an upsert: a session missing from its FlowTap (expired while the API server
    /// was unreachable, say) is added again, and one whose FlowTap is gone registers anew, so a
    /// live listener always ends up counted.
    pub async fn renew(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval((self.config.session_ttl / 3).max(std::time::Duration::from_secs(1)));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => break,
            }
            self.check_replicas();
            let mut by_tap: HashMap<(String, String), Vec<(u64, Mine)>> = HashMap::new();
            for (id, mine) in self.mine.lock().unwrap().registered.iter() {
                by_tap
                    .entry((mine.namespace.clone(), mine.tap.clone()))
                    .or_default()
                    .push((*id, mine.clone()));
            }
            for ((ns, name), sessions) in by_tap {
                let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &ns);
                let renewed = now();
                let entries: Vec<Session> = sessions
                    .iter()
                    .map(|(id, m)| Session {
                        id: self.session_id(*id),
                        user: m.info.identity.username.clone(),
                        since: m.since.clone(),
                        relay: self.config.instance.clone(),
                        rate: m.info.rate,
                        renew_time: Some(renewed.clone()),
                    })
                    .collect();
                let bus = self.bus_status(sessions.first().map(|(_, m)| &m.info)).await;
                let result = update_status(&api, &name, None, |status| {
                    if bus.is_some() {
                        status.bus = bus.clone();
                    }
                    let mine = self.mine.lock().unwrap();
                    // A listener that left since the list was taken is not added back.
                    let live = |entry: &&Session| {
                        sessions
                            .iter()
                            .any(|(id, _)| self.session_id(*id) == entry.id && mine.registered.contains_key(id))
                    };
                    for entry in entries.iter().filter(live) {
                        match status.sessions.iter_mut().find(|s| s.id == entry.id) {
                            Some(s) => s.renew_time = entry.renew_time.clone(),
                            None => status.sessions.push(entry.clone()),
                        }
                    }
                    true
                })
                .await;
                let gone = match result {
                    Ok(Some(tap)) => tap.metadata.deletion_timestamp.is_some(),
                    Ok(None) => true,
                    Err(e) => {
                        tracing::warn!(tap = %name, error = %e, "could not renew sessions");
                        false
                    }
                };
                if gone {
                    // Its FlowTap is gone or going: register on the flow's tap as on connect.
                    for (_, m) in &sessions {
                        if let Err(e) = self.register(&m.info, m.since.clone()).await {
                            tracing::warn!(tap = %name, error = %e, "could not register a live listener again");
                        }
                    }
                }
            }
        }
    }
}

/// Take session `id` out of FlowTap `name` (a failure is logged: the controller expires it
/// after the session TTL).
async fn remove_session(api: &Api<FlowTap>, name: &str, id: &str) {
    let result = update_status(api, name, None, |status| {
        let before = status.sessions.len();
        status.sessions.retain(|s| s.id != id);
        status.sessions.len() != before
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(tap = %name, error = %e, "could not remove a session; it will expire");
    }
}

impl Sessions for ClusterSessions {
    fn joined<'a>(&'a self, session: &'a SessionInfo) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(async move {
            if self.check_permission {
                let key = format!("{}\u{0}{}", session.identity.cache_key(), session.tap);
                if self.allowed.get(&key).is_none() {
                    check_tap_permission(&self.client, session).await?;
                    self.allowed.put(key, ());
                }
            }
            if let Some(why) = self.over_caps(session) {
                return Err(JoinError::TooMany(why));
            }
            self.mine.lock().unwrap().live.insert(session.id);
            let registered = self.register(session, now()).await;
            if registered.is_err() {
                self.mine.lock().unwrap().live.remove(&session.id);
            }
            registered.map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 429 => JoinError::TooMany(s.message.clone()),
                kube::Error::Api(s) if s.code == 403 => JoinError::Unavailable(format!(
                    "log-socket may not manage FlowTaps in namespace {:?}: {}",
                    session.tap.namespace, s.message
                )),
                _ => JoinError::Unavailable(format!("cannot register on the FlowTap: {e}")),
            })
        })
    }

    fn left<'a>(&'a self, session: &'a SessionInfo) -> BoxFuture<'a, ()> {
        Box::pin(self.unregister(session))
    }
}

/// When the controller may call a session dead: its renew value has not changed for the TTL
/// as timed by the controller's own clock (the relay's clock is never compared with it), and
/// the controller itself could reach the API server for all that time (an outage it saw says
/// nothing about the relays).
#[derive(Default)]
pub struct Liveness {
    /// Session id → the renew value last seen, and when (locally) it was first seen.
    seen: Mutex<HashMap<String, (Option<Time>, std::time::Instant)>>,
    /// When the controller last had trouble reaching the API server.
    trouble: Mutex<Option<std::time::Instant>>,
    /// When it last got an answer from it (see [`Liveness::answered`]).
    answered: Mutex<Option<std::time::Instant>>,
    swept: Mutex<Option<std::time::Instant>>,
}

impl Liveness {
    /// Whether `session` has not been renewed for `ttl`.
    pub fn expired(&self, session: &Session, ttl: std::time::Duration) -> bool {
        let now = std::time::Instant::now();
        let trouble = *self.trouble.lock().unwrap();
        let mut seen = self.seen.lock().unwrap();
        let entry = seen
            .entry(session.id.clone())
            .or_insert_with(|| (session.renew_time.clone(), now));
        if entry.0 != session.renew_time {
            *entry = (session.renew_time.clone(), now);
        }
        let since = match trouble {
            Some(t) if t > entry.1 => t,
            _ => entry.1,
        };
        now.duration_since(since) > ttl
    }

    /// The controller could not reach the API server just now.
    pub fn api_trouble(&self) {
        *self.trouble.lock().unwrap() = Some(std::time::Instant::now());
    }

    /// The API server answered the controller just now. An answer after a silence longer
    /// than `max_silence` says nothing about that silence (the controller reads from watch
    /// caches, which do not tell a quiet API server from a frozen one), so it counts as
    /// trouble: a session is judged only on a clock that ran while the controller was
    /// hearing from the API server.
    pub fn answered(&self, max_silence: std::time::Duration) {
        let now = std::time::Instant::now();
        let before = self.answered.lock().unwrap().replace(now);
        if before.is_none_or(|t| now.duration_since(t) > max_silence) {
            self.api_trouble();
        }
    }

    /// Forget sessions no FlowTap in `taps` has any more (at most once a minute).
    pub fn sweep(&self, taps: &kube::runtime::reflector::Store<FlowTap>) {
        let now = std::time::Instant::now();
        {
            let mut last = self.swept.lock().unwrap();
            if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(60)) {
                return;
            }
            *last = Some(now);
        }
        let live: std::collections::HashSet<String> = taps
            .state()
            .iter()
            .filter_map(|t| t.status.as_ref())
            .flat_map(|s| s.sessions.iter().map(|s| s.id.clone()))
            .collect();
        self.seen.lock().unwrap().retain(|id, _| live.contains(id));
    }
}

/// Cluster-mode listener registration without FlowTaps (tests of the permission check):
/// checks the listener may `get` the tapped Flow or ClusterFlow before it may make the service
/// tap it.
pub struct KubeSessions {
    pub client: kube::Client,
    /// Whether to check the tap permission at all.
    pub check_tap_permission: bool,
}

/// Check that the listener may `get` the Flow or ClusterFlow it wants to tap.
pub async fn check_tap_permission(client: &kube::Client, session: &SessionInfo) -> Result<(), JoinError> {
    match may_get_flow(client, &session.identity, &session.tap).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(JoinError::Forbidden(format!(
            "{} may not get {}.{} {:?} in namespace {:?}; tapping a flow needs that permission",
            session.identity.username,
            session.tap.kind.resource(),
            crate::k8s::logging::GROUP,
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
    use super::*;
    use std::time::Duration;

    mod registration {
        use super::*;
        use http::{Request, Response};
        use kube::client::Body;
        use serde_json::{json, Value};
        use tower_test::mock::{Handle, SendResponse};

        type ApiServer = Handle<Request<Body>, Response<Body>>;

        async fn next(api: &mut ApiServer) -> (String, Value, SendResponse<Response<Body>>) {
            let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
                .await
                .expect("a request within 5 s")
                .expect("the client is alive");
            let line = format!("{} {}", request.method(), request.uri().path());
            let body = http_body_util::BodyExt::collect(request.into_body())
                .await
                .unwrap()
                .to_bytes();
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (line, body, send)
        }

        fn answer(send: SendResponse<Response<Body>>, code: u16, body: Value) {
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(response);
        }

        fn with_version(mut tap: Value, version: &str) -> Value {
            tap["metadata"]["resourceVersion"] = json!(version);
            tap["metadata"]["uid"] = json!("u-1");
            tap
        }

        const TAPS: &str = "/apis/logsocket.dev/v1alpha1/namespaces/shop/flowtaps";

        /// A listener that leaves while its session is being written to a new FlowTap is taken
        /// out again: no ghost session keeps the tap, its output and the flow's ref alive.
        #[tokio::test]
        async fn a_listener_that_leaves_while_it_registers_leaves_no_ghost_session() {
            let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(service, "default");
            let sessions = Arc::new(ClusterSessions::new(
                client,
                Arc::new(OperatorConfig::test("log-socket")),
                false,
            ));
            let info = SessionInfo {
                id: 7,
                tap: crate::protocol::TapKey::parse("flow", "shop", "web").unwrap(),
                identity: crate::auth::Identity {
                    username: "alice".into(),
                    groups: vec![],
                },
                rate: None,
            };
            let joining = tokio::spawn({
                let (sessions, info) = (sessions.clone(), info.clone());
                async move { sessions.joined(&info).await.map_err(|e| e.to_string()) }
            });
            // No FlowTap yet: the listener's relay creates the flow's ephemeral one.
            let (line, _, send) = next(&mut api).await;
            assert_eq!(line, format!("GET {TAPS}"));
            answer(
                send,
                200,
                json!({"apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTapList",
                                     "metadata": {"resourceVersion": "1"}, "items": []}),
            );
            let (line, created, send) = next(&mut api).await;
            assert_eq!(line, format!("POST {TAPS}"));
            answer(send, 201, with_version(created, "2"));
            // Its session is being written...
            let (line, with_session, send) = next(&mut api).await;
            assert_eq!(line, format!("PUT {TAPS}/flow-web/status"));
            assert_eq!(with_session["status"]["sessions"][0]["id"], "relay-0/7");
            // ...when the listener leaves.
            sessions.left(&info).await;
            answer(send, 200, with_version(with_session.clone(), "3"));
            // The registration sees it gone and takes its session out again.
            let (line, _, send) = next(&mut api).await;
            assert_eq!(line, format!("GET {TAPS}/flow-web"));
            answer(send, 200, with_version(with_session, "3"));
            let (line, without, send) = next(&mut api).await;
            assert_eq!(line, format!("PUT {TAPS}/flow-web/status"));
            let left = &without["status"]["sessions"];
            assert!(left.is_null() || left == &json!([]), "{without}");
            assert_eq!(without["status"]["listeners"], 0, "{without}");
            answer(send, 200, with_version(without, "4"));
            joining.await.unwrap().unwrap();
            let registry = sessions.mine.lock().unwrap();
            assert!(
                registry.registered.is_empty() && registry.live.is_empty(),
                "nothing to renew"
            );
        }
    }

    fn session(renewed: i64) -> Session {
        serde_json::from_value(serde_json::json!({
            "id": "relay-0/1", "user": "alice", "since": "2030-01-01T00:00:00Z", "relay": "relay-0",
            "renewTime": k8s_openapi::jiff::Timestamp::from_second(1_900_000_000 + renewed).unwrap().to_string(),
        }))
        .unwrap()
    }

    #[test]
    fn a_session_expires_only_after_its_renewal_stood_still_for_the_ttl_on_the_local_clock() {
        let live = Liveness::default();
        let ttl = Duration::from_millis(50);
        // Far in the past by the relay's clock: not expired, this is the first sighting.
        assert!(!live.expired(&session(-1_000_000), ttl));
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            live.expired(&session(-1_000_000), ttl),
            "unchanged for longer than the ttl"
        );
        assert!(!live.expired(&session(5), ttl), "a renewal restarts the clock");
        std::thread::sleep(Duration::from_millis(80));
        live.api_trouble();
        assert!(
            !live.expired(&session(5), ttl),
            "the controller's own outage says nothing about the relay"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(live.expired(&session(5), ttl));
    }

    #[test]
    fn an_answer_after_a_long_silence_of_the_api_server_restarts_the_clock() {
        let live = Liveness::default();
        let ttl = Duration::from_millis(50);
        let max_silence = Duration::from_millis(30);
        live.answered(max_silence);
        assert!(!live.expired(&session(7), ttl));
        std::thread::sleep(Duration::from_millis(80));
        // No word from the API server for 80 ms (a frozen one looks like a quiet one to the
        // watch caches): the session's clock ran during that silence, so it does not count.
        live.answered(max_silence);
        assert!(!live.expired(&session(7), ttl), "the silence was an outage");
        std::thread::sleep(Duration::from_millis(20));
        live.answered(max_silence);
        std::thread::sleep(Duration::from_millis(20));
        live.answered(max_silence);
        std::thread::sleep(Duration::from_millis(20));
        live.answered(max_silence);
        assert!(live.expired(&session(7), ttl), "heard from it all along since then");
    }
}
