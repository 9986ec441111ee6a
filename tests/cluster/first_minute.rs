//! The first minute of a tap against the real API server and the logging-operator stand-in:
//! the stage it waits in (and a check pod that cannot be scheduled, named), warm taps that the
//! next listener attaches to with no change of the Logging, and the Logging's reload budget
//! (tap changes in batches, one per window). Properties are checked over every version the API
//! server served (watches from the test's start), not sampled after a sleep.

use crate::operator::{flow_spec, harness, listener, never_broke_the_render, status_when, status_within, tap_statuses};
use crate::watch;
use futures::StreamExt;
use kube::api::{Api, WatchEvent, WatchParams};
use log_socket::k8s::flowtap::{FlowTap, Stage};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::cluster::{self, Harness};
use testkit::logging_operator::CheckPods;
use testkit::poll::eventually;
use testkit::relay::*;

const ORDER: [&str; 4] = ["OutputValidating", "ConfigCheck", "ConfigApplied", "Flowing"];

fn record(ns: &str, message: &str) -> Value {
    json!({"message": message, "kubernetes": {"pod_name": "web-1", "namespace_name": ns,
        "labels": {"rbac/policy": "allow"}}})
}

/// The stages `tap` went through, in the API server's order, repeats folded.
fn stages_of(seen: &[(u64, &'static str, Value)], tap: &str) -> Vec<String> {
    let mut stages: Vec<String> = vec![];
    for (_, _, obj) in seen.iter().filter(|(_, _, o)| o["metadata"]["name"] == tap) {
        if let Some(stage) = obj["status"]["stage"]["name"].as_str() {
            if stages.last().map(String::as_str) != Some(stage) {
                stages.push(stage.to_owned());
            }
        }
    }
    stages
}

#[tokio::test]
async fn a_listener_sees_each_stage_of_its_tap_in_order_and_a_stuck_check_pod_named() {
    let h = harness("fm-stages").await;
    {
        let mut b = h.logging_operator.behaviour.lock().unwrap();
        b.check_delay = Duration::from_secs(3);
        b.check_pods = CheckPods::Schedulable;
    }
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let taps = watch::api(&h.client, &h.ns, "logsocket.dev/v1alpha1", "FlowTap");
    let (seen, task) = watch::watch_all(taps.clone(), watch::now(&taps).await);
    let alice = listener(&h, "alice").await;
    let path = format!("/flow/{}/web", h.ns);
    let mut ws = connect(&h.relay, &path, &alice).await;

    // While logging-operator checks, the listener is told so (a quick check: its pod is named
    // only when the check takes a while, below).
    let frames = tap_statuses(&mut ws, |f| f["stage"] == "ConfigApplied").await;
    assert!(frames.iter().any(|f| f["stage"] == "ConfigCheck"), "{frames:#?}");
    let applied = frames.last().unwrap();
    assert!(
        applied["message"].as_str().unwrap().contains("waiting for fluentd"),
        "{applied}"
    );
    assert!(applied["stageSince"].as_str().is_some(), "{applied}");
    // Records arrive: Flowing.
    eventually("the relay takes records", || async {
        (post(&h.relay, &path, &array(&[record(&h.ns, "first")])).await.0 == 200).then_some(())
    })
    .await;
    tap_statuses(&mut ws, |f| f["stage"] == "Flowing").await;
    // (The test's own watch may be a moment behind the relay's.)
    eventually("the watch sees Flowing", || async {
        stages_of(&seen.lock().unwrap(), "flow-web")
            .iter()
            .any(|s| s == "Flowing")
            .then_some(())
    })
    .await;
    task.abort();
    // Operators see taps by phase and stage in the relay's metrics.
    let kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cluster::env().kubeconfig).unwrap()).unwrap();
    let admin = format!("Bearer {}", kubeconfig["users"][0]["user"]["token"].as_str().unwrap());
    eventually("log_socket_flowtaps counts the flowing tap", || async {
        let (code, body) = request(h.relay.api, "GET", "/metrics", &[("Authorization", &admin)], b"").await;
        (code == 200 && body.contains(r#"log_socket_flowtaps{phase="Active",stage="Flowing"} 1"#)).then_some(())
    })
    .await;
    let stages = stages_of(&seen.lock().unwrap(), "flow-web");
    let rank = |s: &String| ORDER.iter().position(|o| o == s).unwrap_or_else(|| panic!("{s}"));
    assert!(
        stages.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
        "never back: {stages:?}"
    );
    for stage in ["ConfigCheck", "ConfigApplied", "Flowing"] {
        assert!(stages.iter().any(|s| s == stage), "{stage} in {stages:?}");
    }

    // A check pod that cannot be scheduled: logging-operator waits forever; after 10 s the tap
    // says which pod and why, instead of waiting silently.
    cluster::create_flow(&h.client, &h.ns, "api", flow_spec()).await;
    // (The new flow's own configuration checked first: a check under way when the tap's
    // patch lands would pass for it, as with logging-operator, whose results do not say which
    // configuration they were for; see docs/operator.md.)
    let changes = h.logging_operator.config_changes();
    eventually("the new flow's configuration checked", || async {
        (h.logging_operator.config_changes() > changes && !h.logging_operator.checking()).then_some(())
    })
    .await;
    h.logging_operator.behaviour.lock().unwrap().check_pods = CheckPods::Unschedulable;
    let mut ws = connect(&h.relay, &format!("/flow/{}/api", h.ns), &alice).await;
    let frames = tap_statuses(&mut ws, |f| {
        f["stage"] == "ConfigCheck" && f["message"].as_str().unwrap_or_default().contains("Unschedulable")
    })
    .await;
    let stuck = frames.last().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(
        stuck.contains("Pending: Unschedulable: 0/3 nodes are available"),
        "{stuck}"
    );
    h.logging_operator.behaviour.lock().unwrap().check_pods = CheckPods::None;
    drop(ws);
    never_broke_the_render(&h).await;
}

async fn warm_harness(prefix: &str) -> Harness {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, prefix).await;
    cluster::harness_configured(client, ns, true, crate::operator::LINGER, Duration::from_secs(6), |c| {
        c.warm_max_bytes_per_second = 20_000;
        c.warm_linger = Duration::from_secs(300);
    })
    .await
}

/// What fluentd does while a flow names the tap: post `per_second` records of `bytes` bytes
/// each, every second, until aborted.
fn fluentd_sends(h: &Harness, path: &str, bytes: usize, per_second: usize) -> tokio::task::JoinHandle<()> {
    let batch = array(&vec![record(&h.ns, &"x".repeat(bytes)); per_second]);
    let (ingest, path) = (h.relay.ingest, path.to_owned());
    let auth = flow_auth(&path);
    tokio::spawn(async move {
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        loop {
            request(ingest, "POST", &path, &headers, batch.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

#[tokio::test]
async fn a_cheap_tap_stays_warm_and_the_next_listener_attaches_with_no_flow_edit_an_expensive_one_goes() {
    let h = warm_harness("fm-warm").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    cluster::create_flow(&h.client, &h.ns, "busy", flow_spec()).await;
    let alice = listener(&h, "alice").await;
    let (web, busy) = (format!("/flow/{}/web", h.ns), format!("/flow/{}/busy", h.ns));
    let mut ws = connect(&h.relay, &web, &alice).await;
    let mut busy_ws = connect(&h.relay, &busy, &alice).await;
    tap_statuses(&mut ws, |f| f["stage"] == "ConfigApplied").await;
    tap_statuses(&mut busy_ws, |f| f["stage"] == "ConfigApplied").await;
    // web: about 1 KB/s; busy: about 100 KB/s, over a 20 KB/s budget. Measured by the relay.
    let web_sender = fluentd_sends(&h, &web, 1000, 1);
    let busy_sender = fluentd_sends(&h, &busy, 1000, 100);
    // (A relay writes its share at most every 20 s: up to a minute before both are known.)
    let cheap = status_within(&h, "flow-web", "web's cost", Duration::from_secs(90), |s| {
        s.cost.is_some() && s.last_record_time.is_some()
    })
    .await;
    assert!(cheap.cost.unwrap().bytes_per_second < 20_000);
    let dear = status_within(
        &h,
        "flow-busy",
        "busy's cost over the budget",
        Duration::from_secs(90),
        |s| s.cost.as_ref().is_some_and(|c| c.bytes_per_second > 20_000),
    )
    .await;
    assert!(dear.cost.unwrap().records_per_second > 20.0);

    // From here on, every version of the flows and the taps.
    let flows = cluster::logging_api(&h.client, &h.ns, "Flow");
    let (flow_versions, flow_task) = watch::watch_all(flows.clone(), watch::now(&flows).await);
    let taps = watch::api(&h.client, &h.ns, "logsocket.dev/v1alpha1", "FlowTap");
    let (tap_versions, tap_task) = watch::watch_all(taps.clone(), watch::now(&taps).await);
    drop(ws);
    drop(busy_ws);
    let warm = status_when(&h, "flow-web", "web warm", |s| {
        s.stage.as_ref().is_some_and(|st| st.name == Stage::Warm)
    })
    .await;
    assert!(warm.sessions.is_empty());
    // The expensive tap goes after the linger (its flow restored); the cheap one outlives it.
    let taps_api: Api<FlowTap> = Api::namespaced(h.client.clone(), &h.ns);
    eventually("busy's tap removed after the linger", || async {
        taps_api.get_opt("flow-busy").await.unwrap().is_none().then_some(())
    })
    .await;
    busy_sender.abort();
    web_sender.abort();

    // Running k8stail again: records at once, with no change of the Logging.
    let mut ws = connect(&h.relay, &web, &alice).await;
    assert_eq!(post(&h.relay, &web, &array(&[record(&h.ns, "again")])).await.0, 200);
    // (It arrives: records_until waits for it.)
    records_until(&mut ws, "again").await;
    flow_task.abort();
    tap_task.abort();
    let flows_seen = flow_versions.lock().unwrap().clone();
    let web_edits: Vec<_> = flows_seen
        .iter()
        .filter(|(_, _, o)| o["metadata"]["name"] == "web")
        .collect();
    assert!(web_edits.is_empty(), "web's flow was not edited: {web_edits:#?}");
    assert!(
        flows_seen.iter().any(|(_, _, o)| o["metadata"]["name"] == "busy"),
        "busy's flow was restored"
    );
    let web_tap_gone = tap_versions.lock().unwrap().iter().any(|(_, what, o)| {
        o["metadata"]["name"] == "flow-web" && (*what == "DELETED" || !o["metadata"]["deletionTimestamp"].is_null())
    });
    assert!(!web_tap_gone, "the warm tap was never being deleted");
    never_broke_the_render(&h).await;
}

/// Flow versions with when the test saw them.
type Edits = Arc<Mutex<Vec<(Instant, Value)>>>;

/// Every change of the namespace's flows, with when the test saw it.
fn flow_edits(flows: Api<kube::api::DynamicObject>, from: String) -> (Edits, tokio::task::JoinHandle<()>) {
    let seen: Edits = Default::default();
    let into = seen.clone();
    let task = tokio::spawn(async move {
        let stream = flows.watch(&WatchParams::default().timeout(290), &from).await.unwrap();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let WatchEvent::Modified(o) = event.unwrap() {
                into.lock()
                    .unwrap()
                    .push((Instant::now(), serde_json::to_value(o).unwrap()));
            }
        }
    });
    (seen, task)
}

/// Edits grouped into batches (edits less than `gap` apart), as their start times.
fn batches(edits: &[(Instant, Value)], gap: Duration) -> Vec<Instant> {
    let mut starts: Vec<Instant> = vec![];
    let mut last: Option<Instant> = None;
    for (at, _) in edits {
        if last.is_none_or(|l| *at > l + gap) {
            starts.push(*at);
        }
        last = Some(*at);
    }
    starts
}

#[tokio::test]
async fn taps_started_together_change_the_logging_in_one_batch_per_window_and_later_ones_queue() {
    const WINDOW: Duration = Duration::from_secs(8);
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "fm-budget").await;
    let h = cluster::harness_configured(client, ns, true, crate::operator::LINGER, Duration::from_secs(6), |c| {
        c.config_change_interval = WINDOW;
        // Twenty-one taps of one namespace's users, more than the default caps allow.
        c.limits.taps_per_user = 30;
        c.limits.taps_per_namespace = 30;
    })
    .await;
    for i in 0..21 {
        cluster::create_flow(&h.client, &h.ns, &format!("web-{i}"), flow_spec()).await;
    }
    // Three users (a relay takes 20 listeners of one user at most).
    let users = [
        listener(&h, "alice").await,
        listener(&h, "bob").await,
        listener(&h, "carol").await,
    ];
    let flows = cluster::logging_api(&h.client, &h.ns, "Flow");
    let (edits, task) = flow_edits(flows, watch::now(&cluster::logging_api(&h.client, &h.ns, "Flow")).await);
    let changes_before = h.logging_operator.config_changes();

    // Twenty listeners on twenty flows, together.
    let paths: Vec<String> = (0..20).map(|i| format!("/flow/{}/web-{i}", h.ns)).collect();
    let mut listeners = futures::future::join_all(
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| connect(&h.relay, p, &users[i % 3])),
    )
    .await;
    for ws in listeners.iter_mut() {
        tap_statuses(ws, |f| f["conditions"]["FlowPatched"] == true).await;
    }
    // One more, after that batch has closed: it waits for the next window, and says until when.
    let first_edit = edits
        .lock()
        .unwrap()
        .first()
        .map(|(at, _)| *at)
        .expect("the batch's edits");
    let closed = first_edit + log_socket::operator::budget::GRACE + Duration::from_secs(1);
    tokio::time::sleep_until(closed.into()).await;
    let mut late = connect(&h.relay, &format!("/flow/{}/web-20", h.ns), &users[0]).await;
    let queued = tap_statuses(&mut late, |f| f["stage"] == "Queued").await;
    let message = queued.last().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("goes with the next, at") && message.contains("UTC"),
        "{message}"
    );
    tap_statuses(&mut late, |f| f["conditions"]["FlowPatched"] == true).await;
    // Everyone leaves: the removals go in batches too, none held longer than a window.
    let left = Instant::now();
    drop(listeners);
    drop(late);
    eventually("every flow restored", || async {
        let list = cluster::logging_api(&h.client, &h.ns, "Flow")
            .list(&Default::default())
            .await
            .ok()?;
        list.items
            .iter()
            .all(|f| watch::names(&serde_json::to_value(f).unwrap(), "localOutputRefs") == ["loki"])
            .then_some(())
    })
    .await;
    let restored_in = left.elapsed();
    task.abort();
    let edits = edits.lock().unwrap().clone();
    let starts = batches(&edits, crate::operator::LINGER);
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= WINDOW - Duration::from_millis(500),
            "batches {:?} apart: {starts:?}",
            pair[1] - pair[0]
        );
    }
    // Patches: the twenty, then the late one; removals: at most two windows' worth of batches.
    assert!(starts.len() <= 4, "{} batches: {starts:?}", starts.len());
    assert!(
        restored_in <= crate::operator::LINGER + 2 * WINDOW + Duration::from_secs(10),
        "{restored_in:?}"
    );
    let changes = h.logging_operator.config_changes() - changes_before;
    assert!(
        changes <= 2 * starts.len() as u64,
        "{changes} configuration changes for {} batches",
        starts.len()
    );
    never_broke_the_render(&h).await;
}
