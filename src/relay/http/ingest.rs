//! The ingest handler: a POST of records from fluentd, checked, parsed and published to its tap.

use super::{text, Reply, State};
use crate::auth::ingest::{IngestDenied, PeerCertificate};
use crate::protocol::TapKey;
use crate::relay::bus::nats::Stored;
use crate::relay::bus::Bus;
use crate::relay::metrics::{CodeLabels, DropLabels, DropReason, TapLabels};
use crate::relay::record::{self, BodyError};
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use warp::http::StatusCode;

#[allow(clippy::too_many_arguments)]
pub(super) async fn ingest<S, B>(
    kind: String,
    namespace: String,
    name: String,
    authorization: Option<String>,
    peer: Option<PeerCertificate>,
    encoding: Option<String>,
    length: Option<u64>,
    body: S,
    state: Arc<State>,
) -> Reply
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let started = Instant::now();
    let request = IngestRequest {
        authorization,
        client_cert_verified: peer.is_some_and(|p| p.0),
        encoding,
        length,
    };
    let reply = ingest_inner(&kind, &namespace, &name, request, body, &state).await;
    let m = &state.relay.metrics;
    m.ingest_duration.observe(started.elapsed().as_secs_f64());
    m.ingest_requests
        .get_or_create(&CodeLabels {
            code: reply.status().as_u16(),
        })
        .inc();
    reply
}

/// What an ingest request says about itself, besides its path and body.
struct IngestRequest {
    authorization: Option<String>,
    client_cert_verified: bool,
    encoding: Option<String>,
    length: Option<u64>,
}

async fn ingest_inner<S, B>(
    kind: &str,
    namespace: &str,
    name: &str,
    request: IngestRequest,
    body: S,
    state: &State,
) -> Reply
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let metrics = &state.relay.metrics;
    let IngestRequest {
        authorization,
        client_cert_verified,
        encoding,
        length,
    } = request;
    let path = format!("{kind}/{namespace}/{name}");
    match state
        .ingest_auth
        .check(authorization.as_deref(), client_cert_verified, &path)
    {
        Ok(()) => {}
        Err(IngestDenied::Unauthorized) => {
            metrics.error("ingest_unauthorized");
            let mut reply = text(
                StatusCode::UNAUTHORIZED,
                format!("unauthorized: this ingest port requires {:?}", state.ingest_auth),
            );
            reply
                .headers_mut()
                .insert("www-authenticate", "Basic realm=\"log-socket ingest\"".parse().unwrap());
            return reply;
        }
        // Nothing of the request is read: a credential posts to its own flow only.
        Err(IngestDenied::WrongPath { credential_for }) => {
            metrics.error("ingest_wrong_path");
            return text(
                StatusCode::FORBIDDEN,
                format!("forbidden: this credential is for {credential_for}; it may post to /{credential_for} only"),
            );
        }
    }
    let key = match TapKey::parse(kind, namespace, name) {
        Ok(key) => key,
        Err(e) => return text(StatusCode::NOT_FOUND, format!("no such tap: {e}")),
    };
    // Overload: refuse rather than queue, so fluentd backs off and retries (503 is retryable).
    let Ok(_slot) = state.ingest_slots.try_acquire() else {
        metrics.error("ingest_overloaded");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many ingest requests at once; retry",
        );
    };
    let body = match read_body(body, length, state).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let limit = state.relay.config.max_body_bytes;
    let max_records = state.relay.config.max_records_per_request;
    let result =
        record::decode(body, encoding.as_deref(), limit).and_then(|b| record::parse_batch_limited(&b, max_records));
    let records = match result {
        Ok(records) => records,
        Err(e) => {
            let code = match e {
                BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
                BodyError::TooLarge { .. } | BodyError::TooManyRecords { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            };
            metrics.error("ingest_bad_body");
            return text(code, e.to_string());
        }
    };
    // No tap open (nobody listening, or the tap just closed while fluentd still has chunks for
    // it): accept and discard. Any error status would make fluentd retry the chunk or write it
    // to its backup directory, once per flush, on the shared logging pipeline.
    let no_tap = |count: usize| {
        metrics
            .dropped_records
            .get_or_create(&DropLabels {
                reason: DropReason::no_tap,
            })
            .inc_by(count as u64);
        text(
            StatusCode::ACCEPTED,
            format!("discarded {count} records: no tap open for {key} (nobody is listening)"),
        )
    };
    let labels = TapLabels::from(&key);
    if let Bus::Nats(nats) = &state.relay.bus {
        // Stored in the tap's stream, or not at all: fluentd retries a 503.
        let bytes: u64 = records.iter().map(|r| r.raw.len() as u64).sum();
        return match nats.publish(&key, &records).await {
            Ok(Stored::Yes) => {
                if let Some(tap) = state.relay.tap(&key) {
                    tap.count_ingest(records.len() as u64, bytes);
                }
                metrics
                    .ingested_records
                    .get_or_create(&labels)
                    .inc_by(records.len() as u64);
                metrics.ingested_bytes.get_or_create(&labels).inc_by(bytes);
                text(StatusCode::OK, format!("accepted {} records", records.len()))
            }
            Ok(Stored::NoTap) => no_tap(records.len()),
            Err(e) => {
                metrics.error("ingest_bus_unavailable");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the bus is unavailable; retry: {e}"),
                )
            }
        };
    }
    let Some(tap) = state.relay.tap(&key) else {
        return no_tap(records.len());
    };
    let published = tap.publish(records);
    tap.count_ingest(published.records, published.bytes);
    metrics
        .ingested_records
        .get_or_create(&labels)
        .inc_by(published.records);
    metrics.ingested_bytes.get_or_create(&labels).inc_by(published.bytes);
    metrics
        .dropped_records
        .get_or_create(&DropLabels {
            reason: DropReason::slow_client,
        })
        .inc_by(published.dropped);
    text(StatusCode::OK, format!("accepted {} records", published.records))
}

/// The whole body, at most `--max-body-bytes` (before decompression too), within
/// `--ingest-body-timeout`: a body that trickles in (slowloris) would hold an ingest slot forever.
async fn read_body<S, B>(mut body: S, length: Option<u64>, state: &State) -> Result<Bytes, Reply>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let limit = state.relay.config.max_body_bytes;
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes"));
    if length.is_some_and(|l| l > limit as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(length.unwrap_or(0).min(limit as u64) as usize);
    let timeout = state.relay.config.ingest_body_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(buf.freeze()),
            Err(_) => {
                state.relay.metrics.error("ingest_body_timeout");
                let why = format!("the body did not arrive within {timeout:?}");
                return Err(text(StatusCode::REQUEST_TIMEOUT, why));
            }
        };
        let mut chunk = chunk.map_err(|e| text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")))?;
        if buf.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
}
