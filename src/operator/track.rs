//! Relay-side tracking of FlowTaps: keep the relay's taps open for existing FlowTaps, apply
//! their replay size and status, and report when records last arrived. Runs in every replica
//! (the controller runs in one).

use super::OperatorConfig;
use crate::k8s::flowtap::FlowTap;
use crate::relay::{Relay, TapKey};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Keep the relay's taps open for every FlowTap (so a persistent tap takes records, for late
/// joiners, while nobody listens), apply their replay size, and report when records last
/// arrived (`status.lastRecordTime`, every third of the session TTL), until `shutdown` completes.
pub async fn track_taps(
    client: kube::Client,
    config: Arc<OperatorConfig>,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()>,
) {
    use kube::runtime::watcher::Event as W;
    use std::collections::HashMap;
    let stream = watcher::watcher(config.taps(&client), watcher::Config::default());
    tokio::pin!(stream);
    tokio::pin!(shutdown);
    // (namespace, FlowTap name) -> its relay tap and the lastRecordTime it shows, in seconds.
    let mut known: HashMap<(String, String), (TapKey, i64)> = HashMap::new();
    let mut report = tokio::time::interval((config.session_ttl / 3).max(Duration::from_secs(1)));
    loop {
        let event = tokio::select! {
            e = stream.next() => match e { Some(e) => e, None => break },
            _ = report.tick() => {
                report_last_records(&client, &relay, &mut known).await;
                continue;
            }
            _ = &mut shutdown => break,
        };
        match event {
            Ok(W::Apply(tap)) | Ok(W::InitApply(tap)) => {
                if let Some(key) = super::tap_key(&tap) {
                    let live = tap.metadata.deletion_timestamp.is_none();
                    relay.pin_tap(&key, live);
                    relay.set_replay_records(&key, tap.spec.replay.records as usize);
                    relay.announce(&key, crate::protocol::tap_status(&tap.name_any(), tap.status.as_ref()));
                    let shown = tap
                        .status
                        .as_ref()
                        .and_then(|s| s.last_record_time.as_ref())
                        .map_or(0, |t| t.0.as_second());
                    known.insert((key.namespace.clone(), tap.name_any()), (key, shown));
                }
            }
            Ok(W::Delete(tap)) => {
                if let Some(key) = super::tap_key(&tap) {
                    relay.pin_tap(&key, false);
                    known.remove(&(key.namespace, tap.name_any()));
                }
            }
            Ok(W::Init) | Ok(W::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watching FlowTaps failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn report_last_records(
    client: &kube::Client,
    relay: &Relay,
    known: &mut std::collections::HashMap<(String, String), (TapKey, i64)>,
) {
    for ((ns, name), (key, shown)) in known.iter_mut() {
        let Some(last) = relay.tap(key).and_then(|t| t.last_record()) else {
            continue;
        };
        let secs = last
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if secs <= *shown {
            continue;
        }
        let Ok(time) = Timestamp::from_second(secs) else {
            continue;
        };
        let api: Api<FlowTap> = Api::namespaced(client.clone(), ns);
        let patch = json!({"status": {"lastRecordTime": Time(time)}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => *shown = secs,
            Err(e) => tracing::debug!(tap = %name, error = %e, "could not report the last record time"),
        }
    }
}
