//! The filters of the two ports: which request goes to which handler, with the state injected.

use super::{ingest, listen, text, with_state, Reply, State};
use crate::auth::ingest::PeerCertificate;
use crate::auth::limit::PeerAddr;
use hyper::upgrade::OnUpgrade;
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::Filter;

/// Routes of the ingest port.
pub(super) fn ingest(state: Arc<State>) -> impl Filter<Extract = (Reply,), Error = Infallible> + Clone {
    let ingest = warp::post()
        .and(warp::path!(String / String / String))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ext::optional::<PeerCertificate>())
        .and(warp::header::optional::<String>("content-encoding"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_state(state))
        .then(ingest::ingest);
    ingest
        .or(warp::any().map(|| {
            text(
                StatusCode::NOT_FOUND,
                "not found: POST records to /flow/NAMESPACE/NAME or /clusterflow/NAMESPACE/NAME",
            )
        }))
        .unify()
}

/// Routes of the API port.
pub(super) fn api(state: Arc<State>) -> impl Filter<Extract = (Reply,), Error = Infallible> + Clone {
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_state(state.clone()))
        .then(super::metrics);
    let listen = warp::get()
        .and(warp::path!(String / String / String))
        .and(warp::query::<Vec<(String, String)>>())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(with_state(state))
        .then(listen::listen);
    metrics
        .or(listen)
        .unify()
        .or(warp::any().map(|| {
            text(
                StatusCode::NOT_FOUND,
                "not found: connect a WebSocket to /flow/NAMESPACE/NAME or /clusterflow/NAMESPACE/NAME",
            )
        }))
        .unify()
}
