//! The operator under failures, against the real API server and the logging-operator stand-in
//! that renders every change: an API server shedding load, ClusterFlows of one name in two
//! namespaces, and a leader that loses its lease while taps come and go. Each test watches the
//! objects from its start and checks the property over every version the API server served, in
//! its order (resourceVersion), not a sample taken after a sleep.

use crate::operator::{flow_spec, never_broke_the_render, persistent_tap, raw, status_when, LINGER};
use crate::watch::{api, names, no_output_went_while_named, poke, Watched};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use log_socket::k8s::flowtap::{FlowTap, Phase};
use serde_json::{json, Value};
use std::time::Duration;
use testkit::cluster::{self, Harness};
use testkit::poll::{eventually, eventually_within};
use testkit::shedding::Shedding;

/// Flow `web` and a persistent FlowTap `web-tap` on it, in the harness's namespace.
async fn web_tap(h: &Harness) {
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    persistent_tap(
        h,
        "web-tap",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true}),
    )
    .await;
}

/// [`web_tap`], once it is Active.
async fn web_tap_active(h: &Harness) {
    web_tap(h).await;
    status_when(h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
}

#[tokio::test]
async fn an_api_server_shedding_load_while_a_taps_secret_is_read_tears_nothing_down() {
    let admin = cluster::client().await;
    let ns = cluster::namespace(&admin, "fail-shed").await;
    cluster::output_tls_secret(&admin, &ns).await;
    let shedding = Shedding::default();
    let client = shedding.client(cluster::env().config().await);
    let h = cluster::harness_configured(client, ns.clone(), true, LINGER, Duration::from_secs(6), |c| {
        c.tls_secret = Some("log-socket-ingest-tls".into())
    })
    .await;
    web_tap_active(&h).await;

    let mut watched = Watched::start(&admin, &ns).await;

    // Every read of a Secret is answered 503, then 429, while the flow's changes make the
    // controller look again (and its error policy retries).
    let mut pokes = 0;
    for code in [503, 429] {
        shedding.start("GET", "/secrets/", code);
        let before = shedding.shed();
        pokes += 1;
        poke(&admin, &ns, "Flow", "web", pokes).await;
        eventually_within(
            &format!("three Secret reads answered {code}"),
            Duration::from_secs(60),
            || async { (shedding.shed() >= before + 3).then_some(()) },
        )
        .await;
    }
    shedding.stop();
    // Once the API server answers again, a pass goes through: the tap is still Active.
    pokes += 1;
    poke(&admin, &ns, "Flow", "web", pokes).await;
    let reads = shedding.sent().len();
    eventually("a Secret read that went through", || async {
        shedding.sent()[reads..]
            .iter()
            .any(|s| s.path.contains("/secrets/") && !s.shed)
            .then_some(())
    })
    .await;
    // The watches saw everything up to now.
    watched.caught_up(&[("Flow", "web"), ("FlowTap", "web-tap")]).await;
    for (rv, _, flow) in &watched.events("Flow") {
        assert!(
            names(flow, "localOutputRefs").contains(&"logsocket-web-tap".to_owned()),
            "the flow lost the tap's ref at rv {rv}: {flow}"
        );
    }
    for (rv, what, output) in &watched.events("Output") {
        assert!(
            *what != "DELETED" && output["metadata"]["deletionTimestamp"].is_null(),
            "the output went at rv {rv}: {output}"
        );
    }
    for (rv, _, tap) in &watched.events("FlowTap") {
        assert_eq!(tap["status"]["phase"], "Active", "the tap changed at rv {rv}: {tap}");
    }
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn cluster_flows_of_one_name_in_two_namespaces_each_feed_only_their_own_tap() {
    let admin = cluster::client().await;
    let a = cluster::namespace(&admin, "fail-cf-a").await;
    let b = cluster::namespace(&admin, "fail-cf-b").await;
    let ha = cluster::harness_with(admin.clone(), a.clone(), true, LINGER, Duration::from_secs(6)).await;
    let hb = cluster::harness_with(admin.clone(), b.clone(), true, LINGER, Duration::from_secs(6)).await;
    // One Logging renders both namespaces and reads cluster resources from every namespace;
    // the stand-in of `a` plays it (its control namespace).
    let loggings = cluster::loggings(&admin);
    let shared: DynamicObject = serde_json::from_value(cluster::logging_object(
        "Logging",
        &format!("shared-{a}"),
        json!({"loggingRef": "shared", "controlNamespace": a, "watchNamespaces": [a, b],
               "allowClusterResourcesFromAllNamespaces": true}),
    ))
    .unwrap();
    loggings.create(&Default::default(), &shared).await.unwrap();
    for ns in [&a, &b] {
        cluster::create_cluster_flow(
            &admin,
            ns,
            "all",
            json!({"loggingRef": "shared", "globalOutputRefs": ["loki"]}),
        )
        .await;
    }
    for h in [&ha, &hb] {
        persistent_tap(
            h,
            "tap",
            json!({"flowRef": {"kind": "ClusterFlow", "name": "all"}, "persistent": true}),
        )
        .await;
    }
    for h in [&ha, &hb] {
        status_when(h, "tap", &format!("{} Active", h.ns), |s| {
            s.phase == Some(Phase::Active)
        })
        .await;
    }
    // logging-operator resolves a ClusterFlow's refs to ClusterOutputs by name only, across
    // both namespaces: each name must resolve to the output posting to that very flow's tap.
    let mut every: Vec<Value> = vec![];
    for ns in [&a, &b] {
        let list = api(&admin, ns, "logging.banzaicloud.io/v1beta1", "ClusterOutput")
            .list(&ListParams::default())
            .await
            .unwrap();
        every.extend(list.items.into_iter().map(|o| serde_json::to_value(o).unwrap()));
    }
    for ns in [&a, &b] {
        let flow = raw(if ns == &a { &ha } else { &hb }, "ClusterFlow", "all")
            .await
            .unwrap();
        let tap_refs: Vec<String> = names(&flow, "globalOutputRefs")
            .into_iter()
            .filter(|r| r.starts_with("logsocket-"))
            .collect();
        assert_eq!(tap_refs.len(), 1, "{flow}");
        let resolved: Vec<&Value> = every
            .iter()
            .filter(|o| o["metadata"]["name"] == tap_refs[0].as_str())
            .collect();
        assert_eq!(
            resolved.len(),
            1,
            "{} names {:?}, which resolves to {resolved:?}",
            ns,
            tap_refs
        );
        let endpoint = resolved[0]["spec"]["http"]["endpoint"].as_str().unwrap();
        assert!(
            endpoint.ends_with(&format!("/clusterflow/{ns}/all")),
            "ClusterFlow {ns}/all feeds {endpoint}"
        );
        assert_eq!(resolved[0]["spec"]["protected"], true, "no Flow may name it");
    }
    never_broke_the_render(&ha).await;
    never_broke_the_render(&hb).await;
    let _ = loggings.delete(&format!("shared-{a}"), &Default::default()).await;
}

/// A replica whose controller runs while it holds the Lease `log-socket` of `ns` (3 s).
async fn elected(h: &Harness, holder: &str, shedding: &Shedding) -> testkit::relay::TestRelay {
    use log_socket::operator::lease::LeaseConfig;
    use log_socket::service::Controller;
    let lease = LeaseConfig {
        namespace: h.ns.clone(),
        name: "log-socket".into(),
        holder: holder.into(),
        duration: LEASE,
    };
    let client = shedding.client(cluster::env().config().await);
    cluster::replica(
        client,
        &h.ns,
        Controller::Elected(lease),
        LINGER,
        Duration::from_secs(6),
        |_| {},
    )
    .await
}

const LEASE: Duration = Duration::from_secs(3);

async fn holder(h: &Harness) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(h.client.clone(), &h.ns)
        .get_opt("log-socket")
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

/// Writes (anything but GET) a replica sent to the API server other than its Lease's.
fn writes(sent: &[testkit::shedding::Sent]) -> Vec<&testkit::shedding::Sent> {
    sent.iter()
        .filter(|s| s.method != "GET" && !s.path.contains("/leases/") && !s.shed)
        .collect()
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_acting_before_another_may_lead_and_taps_come_and_go_unharmed() {
    let admin = cluster::client().await;
    let ns = cluster::namespace(&admin, "fail-leader").await;
    // The stand-in and a replica without a controller make the harness; two elected replicas
    // run the controller.
    let h = cluster::harness_with(admin.clone(), ns.clone(), false, LINGER, Duration::from_secs(6)).await;
    for i in 0..6 {
        cluster::create_flow(&admin, &ns, &format!("web-{i}"), flow_spec()).await;
    }
    let mut watched = Watched::start(&admin, &ns).await;
    let (shed_a, shed_b) = (Shedding::default(), Shedding::default());
    let a = elected(&h, "replica-a", &shed_a).await;
    eventually("replica-a leads", || async {
        (holder(&h).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = elected(&h, "replica-b", &shed_b).await;

    // Taps come and go throughout: a new one every 700 ms, each deleted three later.
    let churn = {
        let client = admin.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            let taps = Api::<FlowTap>::namespaced(client, &ns);
            for i in 0u32.. {
                let tap: FlowTap = serde_json::from_value(json!({
                    "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
                    "metadata": {"name": format!("tap-{i}")},
                    "spec": {"flowRef": {"kind": "Flow", "name": format!("web-{}", i % 6)}, "persistent": true},
                }))
                .unwrap();
                taps.create(&Default::default(), &tap).await.unwrap();
                if i >= 3 {
                    taps.delete(&format!("tap-{}", i - 3), &Default::default())
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // replica-a can no longer reach its Lease (every request to it fails); the rest of the API
    // server still answers it, so only its own rule can stop it from acting.
    shed_a.start("*", "/leases/", 503);
    eventually_within("replica-b leads", Duration::from_secs(30), || async {
        (holder(&h).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    // Let replica-b work through the churn, then give replica-a its Lease back and stop
    // replica-b gracefully: it releases the Lease and replica-a takes over at once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    shed_a.stop();
    let b_stopped = std::time::Instant::now();
    drop(b);
    eventually_within("replica-a leads again", Duration::from_secs(30), || async {
        (holder(&h).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    churn.abort();
    let _ = churn.await;

    // Every tap left is Active, named by its flow; every deleted one left its flow as it was.
    let taps = Api::<FlowTap>::namespaced(admin.clone(), &ns);
    eventually_within("the taps settled", Duration::from_secs(60), || async {
        let live = taps.list(&ListParams::default()).await.ok()?.items;
        if live.iter().any(|t| t.metadata.deletion_timestamp.is_some()) {
            return None;
        }
        let mut named: Vec<String> = vec![];
        for i in 0..6 {
            let flow = raw(&h, "Flow", &format!("web-{i}")).await?;
            named.extend(names(&flow, "localOutputRefs").into_iter().filter(|r| r != "loki"));
        }
        let mut want: Vec<String> = live
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active))
            .map(|t| format!("logsocket-{}", kube::ResourceExt::name_any(t)))
            .collect();
        named.sort();
        want.sort();
        (want.len() == live.len() && named == want).then_some(())
    })
    .await;

    // What replica-a sent while it could not renew: nothing after the moment another replica
    // could take the Lease (its last renewal that went through, plus the lease duration).
    let sent_a = shed_a.sent();
    let cut = sent_a
        .iter()
        .position(|s| s.shed)
        .expect("replica-a's Lease requests were shed");
    let last_renewal = sent_a[..cut]
        .iter()
        .filter(|s| s.path.contains("/leases/") && s.method == "PUT")
        .map(|s| s.at)
        .max()
        .expect("replica-a renewed before");
    let back = sent_a.iter().rposition(|s| s.shed).unwrap();
    let late: Vec<_> = writes(&sent_a[cut..=back])
        .into_iter()
        .filter(|s| s.at >= last_renewal + LEASE)
        .collect();
    assert!(
        late.is_empty(),
        "replica-a acted after it could have lost the Lease: {late:?}"
    );
    assert!(
        !writes(&shed_b.sent()).is_empty(),
        "replica-b took over and acted (created outputs, patched flows)"
    );
    assert!(
        writes(&sent_a).iter().any(|s| s.at > b_stopped),
        "replica-a acted again once it led again"
    );
    drop(a);

    // The watches caught up (a marker change of a flow and of a live output after everything
    // else), then: no output was deleted while a flow named it, in the API server's order.
    let outputs = api(&admin, &ns, "logging.banzaicloud.io/v1beta1", "Output");
    let marker = outputs.list(&ListParams::default()).await.unwrap().items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    watched.caught_up(&[("Flow", "web-0"), ("Output", &marker)]).await;
    let flow_events = watched.events("Flow");
    let output_events = watched.events("Output");
    assert!(
        output_events.iter().filter(|(_, what, _)| *what == "DELETED").count() >= 3,
        "outputs were deleted during the test: {}",
        output_events.len()
    );
    no_output_went_while_named(&flow_events, &output_events, "localOutputRefs");
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn an_output_rewritten_by_a_new_ingest_url_goes_on_trial_again_under_its_flow() {
    let admin = cluster::client().await;
    let ns = cluster::namespace(&admin, "fail-rewrite").await;
    let mut h = cluster::harness_with(admin.clone(), ns.clone(), true, LINGER, Duration::from_secs(6)).await;
    web_tap(&h).await;
    // Accepted: its trial (30 s) over with the Logging's checks passing.
    crate::operator::status_within(&h, "web-tap", "accepted", Duration::from_secs(120), |s| {
        s.patched.as_ref().is_some_and(|p| p.config_accepted)
    })
    .await;
    // The service restarts with another --ingest-url (an upgrade, a moved Service): the output's
    // spec is rewritten under the flow that names it.
    drop(std::mem::replace(
        &mut h.relay,
        cluster::replica(
            admin.clone(),
            &ns,
            log_socket::service::Controller::Always,
            LINGER,
            Duration::from_secs(6),
            |c| c.ingest_url = "http://log-socket-moved.test.svc:10000".into(),
        )
        .await,
    ));
    let s = status_when(&h, "web-tap", "on trial again", |s| {
        s.patched.as_ref().is_some_and(|p| !p.config_accepted)
    })
    .await;
    assert_eq!(s.phase, Some(Phase::Active), "the flow keeps naming it meanwhile");
    let output = raw(&h, "Output", "logsocket-web-tap").await.unwrap();
    assert!(
        output["spec"]["http"]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("http://log-socket-moved."),
        "{output}"
    );
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn a_flow_logging_operator_would_drop_for_the_taps_output_is_restored_at_once() {
    let admin = cluster::client().await;
    let ns = cluster::namespace(&admin, "fail-skip").await;
    let h = cluster::harness_with(admin.clone(), ns.clone(), true, LINGER, Duration::from_secs(6)).await;
    // skipInvalidResources: a flow that cannot be rendered is dropped, silently for the Logging.
    crate::operator::skip_invalid_resources(&h).await;
    web_tap_active(&h).await;
    // The output turns unusable after it was named (logging-operator reports problems for it,
    // as for a Secret gone): the user's flow is dropped until the tap's ref leaves it.
    h.logging_operator
        .behaviour
        .lock()
        .unwrap()
        .reject_outputs
        .insert("logsocket-web-tap".into());
    let s = status_when(&h, "web-tap", "refused", |s| s.phase == Some(Phase::Failed)).await;
    assert!(s.patched.is_none(), "{s:?}");
    eventually("the flow restored and rendered again", || async {
        let flow = raw(&h, "Flow", "web").await?;
        (names(&flow, "localOutputRefs") == ["loki"] && flow["status"]["problems"].is_null()).then_some(())
    })
    .await;
    // From now on every render has the user's flow again.
    let dropped = h.logging_operator.render_failures_settled().await.len();
    h.logging_operator.render_failures_settled().await;
    assert_eq!(
        h.logging_operator.render_failures().len(),
        dropped,
        "dropped again after the restore"
    );
}

#[tokio::test]
async fn a_tap_asking_for_more_buffer_than_the_shared_fluentd_allows_is_refused_and_renders_nothing() {
    let admin = cluster::client().await;
    let ns = cluster::namespace(&admin, "fail-buffer").await;
    let h = cluster::harness_with(admin.clone(), ns.clone(), true, LINGER, Duration::from_secs(6)).await;
    cluster::create_flow(&admin, &ns, "web", flow_spec()).await;
    let watched = Watched::start(&admin, &ns).await;
    persistent_tap(
        &h,
        "greedy",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true,
               "buffer": {"totalLimitSize": "500g", "flushInterval": "24h"}}),
    )
    .await;
    let s = status_when(&h, "greedy", "refused", |s| s.phase == Some(Phase::Failed)).await;
    let ready = s.conditions.iter().find(|c| c.type_ == "OutputReady").unwrap();
    assert_eq!(ready.reason, "BufferOutOfRange");
    assert!(
        ready.message.contains("500g") && ready.message.contains("64Mi"),
        "{}",
        ready.message
    );
    // Brought within the bounds, it proceeds.
    Api::<FlowTap>::namespaced(admin.clone(), &ns)
        .patch(
            "greedy",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"buffer": {"totalLimitSize": "32m", "flushInterval": "2s"}}})),
        )
        .await
        .unwrap();
    status_when(&h, "greedy", "Active", |s| s.phase == Some(Phase::Active)).await;
    // Nothing was made while it asked for too much: the first output has the bounded buffer.
    let first = watched
        .versions("Output", "logsocket-greedy")
        .into_iter()
        .next()
        .expect("an output");
    assert_eq!(
        first.2["spec"]["http"]["buffer"]["total_limit_size"], "32m",
        "{}",
        first.2
    );
    never_broke_the_render(&h).await;
}
