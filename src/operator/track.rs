//! Relay-side tracking of FlowTaps: keep the relay's taps open for existing FlowTaps, apply
//! their replay size and status, and report when records last arrived. Runs in every replica
//! (the controller runs in one).

use super::OperatorConfig;
use crate::k8s::flowtap::FlowTap;
use crate::protocol::TapKey;
use crate::relay::Relay;
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
/// `cache` is filled with the FlowTaps seen (the sessions look for a flow's FlowTap there).
pub async fn track_taps(
    client: kube::Client,
    config: Arc<OperatorConfig>,
    relay: Arc<Relay>,
    cache: kube::runtime::reflector::store::Writer<FlowTap>,
    shutdown: impl Future<Output = ()>,
) {
    use kube::runtime::watcher::Event as W;
    use kube::runtime::WatchStreamExt;
    use std::collections::HashMap;
    let taps = cache.as_reader();
    let stream = watcher::watcher(config.taps(&client), watcher::Config::default()).reflect(cache);
    tokio::pin!(stream);
    tokio::pin!(shutdown);
    // (namespace, FlowTap name) -> its relay tap, the lastRecordTime it shows, its cost meter.
    let mut known: HashMap<(String, String), Known> = HashMap::new();
    let mut pins = Pins::default();
    // The FlowTaps a relist shows (Init … InitDone): a FlowTap deleted while the watch was down
    // has no Delete event, so the listener rates of those not shown are dropped at InitDone.
    let mut relisted: Option<std::collections::HashSet<(TapKey, String)>> = None;
    let mut report = tokio::time::interval((config.session_ttl / 3).max(Duration::from_secs(1)));
    loop {
        let event = tokio::select! {
            e = stream.next() => match e { Some(e) => e, None => break },
            _ = report.tick() => {
                report_last_records(&client, &relay, &mut known).await;
                report_costs(&client, &relay, &config.instance, &mut known).await;
                count_taps(&relay, &taps);
                continue;
            }
            _ = &mut shutdown => break,
        };
        match event {
            Ok(W::Apply(tap)) | Ok(W::InitApply(tap)) => {
                if let (Some(seen), Some(key)) = (relisted.as_mut(), super::tap_key(&tap)) {
                    seen.insert((key, tap.name_any()));
                }
                if let Some(key) = super::tap_key(&tap) {
                    let live = tap.metadata.deletion_timestamp.is_none();
                    let id = (key.namespace.clone(), tap.name_any());
                    for (k, pinned) in pins.set(id, live.then(|| key.clone())) {
                        relay.pin_tap(&k, pinned);
                    }
                    relay.set_replay_records(&key, tap.spec.replay.records as usize);
                    // A FlowTap sharing another's output does not speak for the relay tap: the
                    // one with the output does (listeners join that one).
                    let sharing = tap
                        .status
                        .as_ref()
                        .and_then(|s| super::status::condition(&s.conditions, "FlowPatched"))
                        .is_some_and(|c| c.reason == super::status::SHARED);
                    // Any FlowTap on the flow may cap its listeners (the lowest applies).
                    relay.set_listener_rate(&key, &tap.name_any(), live.then_some(tap.spec.listener_rate).flatten());
                    if !sharing {
                        relay.announce(&key, crate::protocol::tap_status(&tap.name_any(), tap.status.as_ref()));
                    }
                    let shown = tap
                        .status
                        .as_ref()
                        .and_then(|s| s.last_record_time.as_ref())
                        .map_or(0, |t| t.0.as_second());
                    let id = (key.namespace.clone(), tap.name_any());
                    let counts = relay.tap(&key).map(|t| t.ingested()).unwrap_or_default();
                    let entry = known.entry(id).or_insert_with(|| Known {
                        key: key.clone(),
                        shown,
                        meter: super::cost::Meter::new(std::time::Instant::now(), counts),
                        cost: None,
                        persistent: tap.spec.persistent,
                    });
                    if entry.key != key {
                        entry.meter = super::cost::Meter::new(std::time::Instant::now(), counts);
                    }
                    entry.key = key;
                    entry.shown = shown;
                    entry.cost = tap.status.as_ref().and_then(|s| s.cost.clone());
                    entry.persistent = tap.spec.persistent;
                }
            }
            Ok(W::Delete(tap)) => {
                if let Some(key) = super::tap_key(&tap) {
                    let id = (key.namespace.clone(), tap.name_any());
                    for (k, pinned) in pins.set(id.clone(), None) {
                        relay.pin_tap(&k, pinned);
                    }
                    relay.set_listener_rate(&key, &tap.name_any(), None);
                    known.remove(&id);
                }
            }
            Ok(W::Init) => relisted = Some(Default::default()),
            Ok(W::InitDone) => {
                if let Some(seen) = relisted.take() {
                    relay.retain_listener_rates(&seen);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching FlowTaps failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Which FlowTaps keep each relay tap open. Several FlowTaps may name one flow (they share
/// its relay tap): it closes only when none does, and a FlowTap whose flowRef changed lets go
/// of the old one.
#[derive(Default)]
struct Pins {
    /// (namespace, FlowTap name) → the relay tap it keeps open.
    by_flowtap: std::collections::HashMap<(String, String), TapKey>,
    count: std::collections::HashMap<TapKey, usize>,
}

impl Pins {
    /// FlowTap `id` now keeps `key` open (`None`: nothing). Returns the relay taps whose pin
    /// changes, with their new state.
    fn set(&mut self, id: (String, String), key: Option<TapKey>) -> Vec<(TapKey, bool)> {
        let mut changes = vec![];
        if self.by_flowtap.get(&id) == key.as_ref() {
            return changes;
        }
        if let Some(old) = self.by_flowtap.remove(&id) {
            let n = self.count.entry(old.clone()).or_default();
            *n -= 1;
            if *n == 0 {
                self.count.remove(&old);
                changes.push((old, false));
            }
        }
        if let Some(key) = key {
            let n = self.count.entry(key.clone()).or_default();
            *n += 1;
            if *n == 1 {
                changes.push((key.clone(), true));
            }
            self.by_flowtap.insert(id, key);
        }
        changes
    }
}

/// `log_socket_flowtaps{phase,stage}` from the watch cache: every phase and stage seen, so a
/// count that drops to zero shows as 0, not as a series that vanished.
fn count_taps(relay: &Relay, taps: &kube::runtime::reflector::Store<FlowTap>) {
    use crate::relay::metrics::FlowTapLabels;
    let mut counts: std::collections::HashMap<FlowTapLabels, i64> = Default::default();
    for tap in taps.state() {
        let status = tap.status.as_ref();
        let labels = FlowTapLabels {
            phase: status.and_then(|s| s.phase).map_or("-".into(), |p| format!("{p:?}")),
            stage: status
                .and_then(|s| s.stage.as_ref())
                .map_or("-".into(), |s| format!("{:?}", s.name)),
        };
        *counts.entry(labels).or_default() += 1;
    }
    let family = &relay.metrics.flowtaps;
    // Zero what is gone first (a Family cannot tell which series it holds).
    for labels in relay.metrics.flowtap_series(&counts) {
        family.get_or_create(&labels).set(0);
    }
    for (labels, n) in counts {
        family.get_or_create(&labels).set(n);
    }
}

/// What the tracking knows of one FlowTap.
struct Known {
    key: TapKey,
    /// The lastRecordTime its status shows, in seconds.
    shown: i64,
    meter: super::cost::Meter,
    /// Its status's cost, as last seen.
    cost: Option<crate::k8s::flowtap::TapCost>,
    /// Persistent taps are never warm: their cost is not written (1 000 idle persistent taps
    /// cost the API server nothing).
    persistent: bool,
}

/// Write this relay's share of each tap's cost when it changed or is due (see `cost`).
async fn report_costs(
    client: &kube::Client,
    relay: &Relay,
    instance: &str,
    known: &mut std::collections::HashMap<(String, String), Known>,
) {
    let now = std::time::Instant::now();
    for ((ns, name), k) in known.iter_mut() {
        let Some(tap) = relay.tap(&k.key) else { continue };
        if k.persistent {
            continue;
        }
        let Some(rate) = k.meter.measure(now, tap.ingested()) else {
            continue;
        };
        let at = super::status::now();
        if !super::cost::worth_writing(k.cost.as_ref(), instance, rate, at) {
            continue;
        }
        let api: Api<FlowTap> = Api::namespaced(client.clone(), ns);
        let result = super::update_status(&api, name, None, |status| {
            status.cost = Some(super::cost::merged(status.cost.as_ref(), instance, rate, at));
            true
        })
        .await;
        match result {
            Ok(tap) => k.cost = tap.and_then(|t| t.status.and_then(|s| s.cost)),
            Err(e) => tracing::debug!(tap = %name, error = %e, "could not report the tap's cost"),
        }
    }
}

async fn report_last_records(
    client: &kube::Client,
    relay: &Relay,
    known: &mut std::collections::HashMap<(String, String), Known>,
) {
    for ((ns, name), Known { key, shown, .. }) in known.iter_mut() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::flowtap::FlowKind;

    fn key(name: &str) -> TapKey {
        TapKey {
            kind: FlowKind::Flow,
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn id(name: &str) -> (String, String) {
        ("shop".into(), name.into())
    }

    #[test]
    fn a_relay_tap_stays_open_while_any_flowtap_names_its_flow() {
        let mut pins = Pins::default();
        assert_eq!(pins.set(id("a"), Some(key("web"))), [(key("web"), true)]);
        assert_eq!(pins.set(id("b"), Some(key("web"))), [], "already open");
        assert_eq!(pins.set(id("a"), None), [], "b still needs it");
        assert_eq!(pins.set(id("b"), None), [(key("web"), false)]);
    }

    #[test]
    fn a_flowtap_that_moves_lets_go_of_its_old_flow() {
        let mut pins = Pins::default();
        pins.set(id("a"), Some(key("web")));
        assert_eq!(
            pins.set(id("a"), Some(key("api"))),
            [(key("web"), false), (key("api"), true)]
        );
        assert_eq!(pins.set(id("a"), Some(key("api"))), [], "no change");
    }
}
