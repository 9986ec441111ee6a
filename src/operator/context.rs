//! What every pass of the controller shares ([`Context`]): the client, the settings, the
//! watch caches, and the bookkeeping that outlives one pass; and how a pass tells the story in
//! Events ([`publish`]).

use super::OperatorConfig;
use crate::k8s::flowtap::{FlowTap, PatchedFlow};
use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, Logging, Output};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::Resource;
use std::sync::Arc;

/// What the reconciler needs.
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<OperatorConfig>,
    pub recorder: Recorder,
    /// The controller's cache of FlowTaps (which taps share a flow).
    pub taps: Store<FlowTap>,
    /// Which sessions stopped being renewed.
    pub liveness: super::sessions::Liveness,
    /// Recent repairs of each tap's flow ref (by FlowTap UID), to notice a tool undoing them.
    pub repairs: std::sync::Mutex<std::collections::HashMap<String, Vec<std::time::Instant>>>,
    /// Consecutive failed reconciles of each FlowTap (by UID), for the error backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Watch caches of what every pass reads; a miss is read from the API server.
    pub flows: Store<Flow>,
    pub cluster_flows: Store<ClusterFlow>,
    pub loggings: Store<Logging>,
    /// The outputs log-socket generated (by its managed-by label).
    pub outputs: Store<Output>,
    pub cluster_outputs: Store<ClusterOutput>,
    /// `status.patched` as this controller last wrote it (by FlowTap UID): the watch cache
    /// can still hold an older status, and a pass on that view must neither take a new
    /// configuration-check baseline that already holds the tap's own check nor forget a flow
    /// it patched.
    pub written: std::sync::Mutex<std::collections::HashMap<String, Option<PatchedFlow>>>,
    /// FlowTaps (by UID) whose cleanup finished here: a pass on a cached copy that still shows
    /// the finalizer would only repeat it.
    pub cleaned: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Failed configuration checks (`LOGGING/HASH`) found with several taps on trial: unclear
    /// for every tap they concern, whichever is judged last.
    pub unclear_checks: std::sync::Mutex<std::collections::HashSet<String>>,
    /// FlowTaps (by UID) retrying after an unclear check: they are tried one at a time.
    pub retrying: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Each Logging's reload budget: tap changes in batches, one per interval.
    pub budget: std::sync::Mutex<super::budget::Budget>,
    /// Recent looks at configuration check pods (see `check_pod`).
    pub check_pods: super::check_pod::Seen,
}

/// Record an Event on the FlowTap (a failure to record is logged, never fatal).
pub async fn publish(ctx: &Context, tap: &FlowTap, type_: EventType, reason: &str, note: &str) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &tap.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not record an event");
    }
}

/// Scenario tests of the pass against kube's `tower-test` mock (as kube-rs/controller-rs
/// does): [`Context::test`] gives a context whose client talks to an [`ApiServerVerifier`]
/// that answers every request and records it, and whose caches start empty. The cluster tests
/// (tests/cluster) stay the truth; these run in milliseconds and name the requests a pass makes.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use kube::runtime::events::Reporter;
    use kube::runtime::reflector;
    use std::sync::Mutex;

    /// The answer to one request: status code and JSON body.
    pub type Answer = (u16, serde_json::Value);

    /// Answers the client's requests with `answer(method, path)`, recording `METHOD path` of each.
    pub struct ApiServerVerifier {
        pub requests: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl ApiServerVerifier {
        /// The requests seen so far.
        pub fn seen(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }

        /// The requests that change something (anything but GET and LIST).
        pub fn writes(&self) -> Vec<String> {
            self.seen().into_iter().filter(|r| !r.starts_with("GET ")).collect()
        }
    }

    impl Drop for ApiServerVerifier {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A `404 NotFound` Status, what the API server says of an object that is not there.
    pub fn not_found() -> Answer {
        (
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "code": 404, "reason": "NotFound", "message": "not found"}),
        )
    }

    impl OperatorConfig {
        /// Settings for tests, the operator's own namespace being `namespace`.
        pub fn test(namespace: &str) -> OperatorConfig {
            OperatorConfig {
                sweep_interval: std::time::Duration::from_secs(600),
                ..OperatorConfig::new("relay-0", &format!("http://log-socket.{namespace}.svc:10000"))
            }
        }
    }

    impl Context {
        /// [`Context::test`] whose FlowTap cache holds `taps`.
        pub fn test_with_taps(
            answer: impl Fn(&str, &str) -> Answer + Send + 'static,
            taps: Vec<FlowTap>,
        ) -> (Arc<Context>, ApiServerVerifier) {
            let (ctx, api) = Context::test(answer);
            let mut ctx = Arc::into_inner(ctx).expect("not shared yet");
            let (store, mut writer) = reflector::store();
            for tap in taps {
                writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(tap));
            }
            ctx.taps = store;
            (Arc::new(ctx), api)
        }

        /// A context over a mocked API server that answers with `answer(method, path)`.
        pub fn test(answer: impl Fn(&str, &str) -> Answer + Send + 'static) -> (Arc<Context>, ApiServerVerifier) {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(service, "default");
            let requests = Arc::new(Mutex::new(vec![]));
            let seen = requests.clone();
            let task = tokio::spawn(async move {
                while let Some((request, send)) = handle.next_request().await {
                    let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
                    seen.lock().unwrap().push(format!("{method} {path}"));
                    let (code, body) = answer(&method, &path);
                    let response = Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap();
                    send.send_response(response);
                }
            });
            let reporter = Reporter {
                controller: "log-socket-test".into(),
                instance: None,
            };
            let ctx = Context {
                client: client.clone(),
                config: Arc::new(OperatorConfig::test("log-socket")),
                recorder: Recorder::new(client, reporter),
                taps: reflector::store().0,
                liveness: Default::default(),
                repairs: Default::default(),
                failures: Default::default(),
                flows: reflector::store().0,
                cluster_flows: reflector::store().0,
                loggings: reflector::store().0,
                outputs: reflector::store().0,
                cluster_outputs: reflector::store().0,
                written: Default::default(),
                cleaned: Default::default(),
                unclear_checks: Default::default(),
                retrying: Default::default(),
                budget: Default::default(),
                check_pods: Default::default(),
            };
            (Arc::new(ctx), ApiServerVerifier { requests, task })
        }
    }
}
