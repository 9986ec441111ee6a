//! Health endpoints: the only unauthenticated HTTP surface of the service.
//!
//! `/healthz` answers as long as the process serves requests; `/readyz` only once the service
//! has verified its cluster access (so a Deployment does not route traffic to a pod that
//! cannot work).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use warp::{http::StatusCode, Filter};

/// Readiness flag shared between the service and the health endpoints.
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Mark the service ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    /// Whether the service is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// `GET /healthz` and `GET /readyz`.
pub fn routes(ready: Readiness) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok\n");
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        if ready.get() {
            warp::reply::with_status("ready\n", StatusCode::OK)
        } else {
            warp::reply::with_status("not ready\n", StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    healthz.or(readyz)
}
