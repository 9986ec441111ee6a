//! A client of the real API server that, while told to, answers some requests the way an API
//! server shedding load does (a `429 TooManyRequests` or `503 ServiceUnavailable` Status)
//! without passing them on. Everything else reaches the real API server. For scenarios where a
//! transient error must not be taken for a fact (a Secret that is "missing" because the API
//! server was busy).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
use kube::client::DynBody;

/// Which requests are shed, how many were, and every request the client sent.
#[derive(Clone, Default)]
pub struct Shedding {
    /// `(method, path fragment, status code)`: a request with that method (`*`: any) whose path
    /// contains the fragment is answered with the code. `None`: nothing is shed.
    rule: Arc<Mutex<Option<(String, String, u16)>>>,
    shed: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Sent>>>,
}

/// A request the client sent: when, what, and whether it was shed (never reached the API server).
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: std::time::Instant,
    pub method: String,
    pub path: String,
    pub shed: bool,
}

impl Shedding {
    /// Shed `method` requests whose path contains `fragment` with `code` from now on; code `0`
    /// never answers them (a hung request: the client's own timeouts must end it).
    pub fn start(&self, method: &str, fragment: &str, code: u16) {
        *self.rule.lock().unwrap() = Some((method.to_owned(), fragment.to_owned(), code));
    }

    /// Pass everything on again.
    pub fn stop(&self) {
        *self.rule.lock().unwrap() = None;
    }

    /// How many requests were shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::SeqCst)
    }

    /// Every request sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }

    /// A client for `config` that sheds what this says.
    pub fn client(&self, config: kube::Config) -> kube::Client {
        let shedding = self.clone();
        let layer = tower::layer::layer_fn(move |inner| Shed {
            inner,
            shedding: shedding.clone(),
        });
        kube::client::ClientBuilder::try_from(config)
            .expect("client from kubeconfig")
            .with_layer(&layer)
            .build()
    }

    fn answer(&self, req: &Request<Body>) -> Option<u16> {
        let code = {
            let rule = self.rule.lock().unwrap();
            rule.as_ref().and_then(|(method, fragment, code)| {
                ((method == "*" || req.method().as_str() == method) && req.uri().path().contains(fragment.as_str()))
                    .then_some(*code)
            })
        };
        self.log.lock().unwrap().push(Sent {
            at: std::time::Instant::now(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            shed: code.is_some(),
        });
        code
    }
}

/// The tower service in front of the client's own stack.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    shedding: Shedding,
}

impl<S> tower::Service<Request<Body>> for Shed<S>
where
    S: tower::Service<Request<Body>, Response = Response<Box<DynBody>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Box<DynBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(code) = self.shedding.answer(&req) else {
            return Box::pin(self.inner.call(req));
        };
        self.shedding.shed.fetch_add(1, Ordering::SeqCst);
        if code == 0 {
            return Box::pin(std::future::pending());
        }
        let reason = if code == 429 {
            "TooManyRequests"
        } else {
            "ServiceUnavailable"
        };
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": "the server is currently unable to handle the request",
        });
        let body =
            http_body_util::Full::new(Bytes::from(status.to_string())).map_err(|never| -> BoxError { match never {} });
        let mut response = Response::new(Box::new(body) as Box<DynBody>);
        *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        if code == 429 {
            response.headers_mut().insert("retry-after", "1".parse().unwrap());
        }
        Box::pin(async move { Ok(response) })
    }
}
