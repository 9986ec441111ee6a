//! A tap never breaks the Logging: every refusal leaves the flow as it was, says why in the
//! FlowTap's status and in a Warning Event, and proceeds once the cause is fixed. The tests
//! play logging-operator's part with testkit/src/logging_operator.rs.

use crate::operator::{
    condition, event, flow_spec, harness, has_reason, never_broke_the_render, persistent_tap, raw, status_when,
    status_within,
};
use crate::watch::{poke, Watched};
use kube::api::{Api, Patch, PatchParams};
use log_socket::k8s::flowtap::{FlowTap, Phase};
use serde_json::json;
use testkit::cluster;
use testkit::poll::eventually;
use testkit::shedding::Shedding;

fn web_tap() -> serde_json::Value {
    json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true})
}

fn refs(flow: &serde_json::Value) -> serde_json::Value {
    flow["spec"]["localOutputRefs"].clone()
}

#[tokio::test]
async fn without_its_tls_secret_a_tap_changes_nothing_and_proceeds_once_it_exists() {
    let admin = cluster::client().await;
    let ns = cluster::namespace(&admin, "safe-secret").await;
    // The controller's client logs what it sends (nothing is shed).
    let sent = Shedding::default();
    let h = cluster::harness_configured(
        sent.client(cluster::env().config().await),
        ns.clone(),
        true,
        crate::operator::LINGER,
        std::time::Duration::from_secs(6),
        |c| c.tls_secret = Some("log-socket-ingest-tls".into()),
    )
    .await;
    cluster::create_flow(&admin, &ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&admin, &ns).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    let s = status_when(&h, "web-tap", "Failed: SecretMissing", |s| {
        s.phase == Some(Phase::Failed)
    })
    .await;
    assert_eq!(condition(&s, "OutputReady"), ("False", "SecretMissing"));
    event(&h, "SecretMissing").await;
    // Several passes while the Secret is missing (each reads it), each made by a flow change.
    let reads = || {
        sent.sent()
            .iter()
            .filter(|r| r.path.ends_with("/secrets/log-socket-ingest-tls"))
            .count()
    };
    let before = reads();
    for n in 1..=3 {
        poke(&admin, &ns, "Flow", "web", n).await;
        eventually(&format!("pass {n} read the Secret"), || async {
            (reads() >= before + n as usize).then_some(())
        })
        .await;
    }
    cluster::output_tls_secret(&admin, &ns).await;
    let secret_rv: u64 = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin.clone(), &ns)
        .get("log-socket-ingest-tls")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    assert_eq!(
        refs(&raw(&h, "Flow", "web").await.unwrap()),
        json!(["loki", "logsocket-web-tap"])
    );
    // In the API server's order: no output and no flow edit before the Secret existed.
    watched
        .caught_up(&[("Flow", "web"), ("Output", "logsocket-web-tap")])
        .await;
    let first_output = watched.versions("Output", "logsocket-web-tap")[0].0;
    assert!(
        first_output > secret_rv,
        "output at rv {first_output}, Secret at {secret_rv}"
    );
    for (rv, _, flow) in watched.versions("Flow", "web") {
        assert!(
            rv > secret_rv || refs(&flow) == json!(["loki"]),
            "edited at rv {rv}: {flow}"
        );
    }
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn the_flow_names_the_output_only_after_logging_operator_validated_it() {
    let h = harness("safe-validate").await;
    h.logging_operator.behaviour.lock().unwrap().paused = true;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    let s = status_when(&h, "web-tap", "Validating", |s| {
        has_reason(s, "OutputReady", "Validating")
    })
    .await;
    assert_eq!(s.phase, Some(Phase::Pending));
    assert!(
        raw(&h, "Output", "logsocket-web-tap").await.is_some(),
        "the output comes first"
    );

    h.logging_operator.behaviour.lock().unwrap().paused = false;
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    assert_eq!(
        refs(&raw(&h, "Flow", "web").await.unwrap()),
        json!(["loki", "logsocket-web-tap"])
    );
    // In the API server's order: logging-operator's verdict on the output came before the
    // first flow version naming it.
    watched
        .caught_up(&[("Flow", "web"), ("Output", "logsocket-web-tap")])
        .await;
    let validated = watched
        .versions("Output", "logsocket-web-tap")
        .into_iter()
        .find(|(_, _, o)| !o["status"]["active"].is_null())
        .map(|(rv, _, _)| rv)
        .expect("validated");
    let named = watched
        .versions("Flow", "web")
        .into_iter()
        .find(|(_, _, f)| refs(f).as_array().unwrap().contains(&json!("logsocket-web-tap")))
        .map(|(rv, _, _)| rv)
        .expect("named");
    assert!(validated < named, "named at rv {named}, validated at {validated}");
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn an_output_logging_operator_rejects_is_never_named_by_the_flow() {
    let h = harness("safe-reject").await;
    h.logging_operator
        .behaviour
        .lock()
        .unwrap()
        .reject_outputs
        .insert("logsocket-web-tap".into());
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    let s = status_when(&h, "web-tap", "Failed: OutputRejected", |s| {
        s.phase == Some(Phase::Failed)
    })
    .await;
    assert_eq!(condition(&s, "OutputReady"), ("False", "OutputRejected"));
    let message = &s.conditions.iter().find(|c| c.type_ == "OutputReady").unwrap().message;
    assert!(message.contains("ca.crt"), "logging-operator's words: {message}");
    event(&h, "OutputRejected").await;
    assert_eq!(refs(&raw(&h, "Flow", "web").await.unwrap()), json!(["loki"]));

    // Fixed (logging-operator no longer objects): the tap proceeds.
    h.logging_operator.behaviour.lock().unwrap().reject_outputs.clear();
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn a_flow_no_logging_renders_is_not_tapped() {
    let h = harness("safe-logging").await;
    let mut spec = flow_spec();
    spec["loggingRef"] = json!("elsewhere");
    cluster::create_flow(&h.client, &h.ns, "web", spec).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    let s = status_when(&h, "web-tap", "Failed: LoggingMismatch", |s| {
        s.phase == Some(Phase::Failed)
    })
    .await;
    assert_eq!(condition(&s, "OutputReady"), ("False", "LoggingMismatch"));
    event(&h, "LoggingMismatch").await;
    assert!(raw(&h, "Output", "logsocket-web-tap").await.is_none());
    assert_eq!(refs(&raw(&h, "Flow", "web").await.unwrap()), json!(["loki"]));
}

#[tokio::test]
async fn a_configuration_check_that_fails_with_the_tap_restores_the_flow_and_removes_the_output() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "safe-check").await;
    // Tried again after 4 s here (10 minutes in the service), to watch it across retry periods.
    let retry = std::time::Duration::from_secs(4);
    let h = cluster::harness_configured(
        client,
        ns,
        true,
        crate::operator::LINGER,
        std::time::Duration::from_secs(6),
        |c| c.config_retry = retry,
    )
    .await;
    h.logging_operator
        .behaviour
        .lock()
        .unwrap()
        .fail_config_with
        .insert("logsocket-web-tap".into());
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    let s = status_when(&h, "web-tap", "Failed: ConfigCheckFailed", |s| {
        has_reason(s, "FlowPatched", "ConfigCheckFailed")
    })
    .await;
    assert_eq!(s.phase, Some(Phase::Failed));
    assert!(s.patched.is_none(), "{s:?}");
    event(&h, "ConfigCheckFailed").await;
    eventually("the flow restored and the output removed", || async {
        let flow = raw(&h, "Flow", "web").await?;
        (refs(&flow) == json!(["loki"]) && raw(&h, "Output", "logsocket-web-tap").await.is_none()).then_some(())
    })
    .await;
    // Across retry periods: tried again, refused again, never sooner than the retry period
    // after the refusal (no retry loop against the shared Logging).
    testkit::poll::eventually_within("two more tries", std::time::Duration::from_secs(90), || async {
        let created = watched
            .versions("Output", "logsocket-web-tap")
            .iter()
            .filter(|(_, what, _)| *what == "ADDED")
            .count();
        (created >= 3).then_some(())
    })
    .await;
    status_when(&h, "web-tap", "refused again", |s| {
        has_reason(s, "FlowPatched", "ConfigCheckFailed") && s.patched.is_none()
    })
    .await;
    watched.caught_up(&[("Flow", "web")]).await;
    let versions = watched.versions("Output", "logsocket-web-tap");
    let time = |o: &serde_json::Value, field: &str| -> i64 {
        let at: k8s_openapi::jiff::Timestamp = o["metadata"][field].as_str().unwrap().parse().unwrap();
        at.as_second()
    };
    let created: Vec<i64> = versions
        .iter()
        .filter(|(_, what, _)| *what == "ADDED")
        .map(|(_, _, o)| time(o, "creationTimestamp"))
        .collect();
    for pair in created.windows(2) {
        // The API server's clock, to the second: a try begins after the previous one was
        // created, checked, refused, and the retry period passed.
        assert!(
            pair[1] - pair[0] >= retry.as_secs() as i64 - 1,
            "tried again {} s after the previous try: {created:?}",
            pair[1] - pair[0]
        );
    }
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn the_output_and_a_mirror_belong_to_the_flows_logging_and_a_mirror_has_no_custom_label() {
    let h = harness("safe-ref").await;
    // A second Logging, "blue", renders this namespace too, for flows with loggingRef blue.
    let loggings = cluster::loggings(&h.client);
    let blue: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Logging",
        "metadata": {"name": format!("blue-{}", h.ns)},
        "spec": {"loggingRef": "blue", "controlNamespace": h.ns, "watchNamespaces": [h.ns]},
    }))
    .unwrap();
    loggings.create(&Default::default(), &blue).await.unwrap();
    let mut spec = flow_spec();
    spec["loggingRef"] = json!("blue");
    spec["flowLabel"] = json!("@web");
    spec["includeLabelInRouter"] = json!(true);
    cluster::create_flow(&h.client, &h.ns, "web", spec).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    // Without configuration checks on "blue", the tap is validated by the stand-in and patched.
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    let output = raw(&h, "Output", "logsocket-web-tap").await.unwrap();
    assert_eq!(output["spec"]["loggingRef"], "blue");
    let status = crate::operator::tap(&h, "web-tap").await.unwrap().status.unwrap();
    assert_eq!(
        status.patched.unwrap().logging.as_deref(),
        Some(format!("blue-{}", h.ns).as_str())
    );

    persistent_tap(
        &h,
        "mirror",
        json!({"flowRef": {"kind": "Flow", "name": "web"}, "persistent": true, "mode": "Mirror"}),
    )
    .await;
    let mirror = eventually("the mirror flow", || async {
        raw(&h, "Flow", "logsocket-mirror").await
    })
    .await;
    assert_eq!(mirror["spec"]["loggingRef"], "blue");
    assert!(mirror["spec"].get("flowLabel").is_none(), "{mirror}");
    assert!(mirror["spec"].get("includeLabelInRouter").is_none(), "{mirror}");
    loggings
        .delete(&format!("blue-{}", h.ns), &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_changed_flow_ref_restores_the_old_flow_before_the_new_one_is_patched() {
    let h = harness("safe-move").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    cluster::create_flow(&h.client, &h.ns, "api", flow_spec()).await;
    persistent_tap(&h, "moving", web_tap()).await;
    status_when(&h, "moving", "Active on web", |s| {
        s.phase == Some(Phase::Active) && s.patched.as_ref().is_some_and(|p| p.flow_ref.name == "web")
    })
    .await;
    // API server 1.20 has no CEL, so the immutability rule does not stop this edit here.
    let taps: Api<FlowTap> = Api::namespaced(h.client.clone(), &h.ns);
    let patch = json!({"spec": {"flowRef": {"kind": "Flow", "name": "api"}}});
    taps.patch("moving", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    status_when(&h, "moving", "Active on api", |s| {
        s.phase == Some(Phase::Active) && s.patched.as_ref().is_some_and(|p| p.flow_ref.name == "api")
    })
    .await;
    assert_eq!(
        refs(&raw(&h, "Flow", "web").await.unwrap()),
        json!(["loki"]),
        "old flow restored"
    );
    assert_eq!(
        refs(&raw(&h, "Flow", "api").await.unwrap()),
        json!(["loki", "logsocket-moving"])
    );
    taps.delete("moving", &Default::default()).await.unwrap();
    eventually("api restored after the delete", || async {
        (refs(&raw(&h, "Flow", "api").await?) == json!(["loki"])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_flowtaps_on_one_flow_share_one_output_and_the_survivor_takes_over() {
    let h = harness("safe-share").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    persistent_tap(&h, "web-a", web_tap()).await;
    status_when(&h, "web-a", "web-a Active", |s| s.phase == Some(Phase::Active)).await;
    persistent_tap(&h, "web-b", web_tap()).await;
    let s = status_when(&h, "web-b", "web-b shares", |s| has_reason(s, "FlowPatched", "Shared")).await;
    assert_eq!(
        s.phase,
        Some(Phase::Active),
        "a sharing tap shows the phase of the one it shares"
    );
    assert_eq!(
        refs(&raw(&h, "Flow", "web").await.unwrap()),
        json!(["loki", "logsocket-web-a"])
    );

    // The relay tap stays open throughout: deleting one FlowTap does not close what the other
    // still needs, and the survivor takes the flow over.
    let key = log_socket::protocol::TapKey::parse("flow", &h.ns, "web").unwrap();
    Api::<FlowTap>::namespaced(h.client.clone(), &h.ns)
        .delete("web-a", &Default::default())
        .await
        .unwrap();
    eventually("web-b's output in the flow instead of web-a's", || async {
        (refs(&raw(&h, "Flow", "web").await?) == json!(["loki", "logsocket-web-b"])).then_some(())
    })
    .await;
    assert!(raw(&h, "Output", "logsocket-web-a").await.is_none());
    status_when(&h, "web-b", "web-b Active on its own", |s| {
        s.phase == Some(Phase::Active) && s.patched.is_some()
    })
    .await;
    let tap = h.relay.relay.tap(&key).expect("the relay tap is still open");
    assert!(tap.is_pinned(), "still pinned by web-b");
    // In the API server's order: never two outputs feeding the one relay tap (a terminating
    // output is still rendered), and the flow never named both.
    watched
        .caught_up(&[("Flow", "web"), ("Output", "logsocket-web-b")])
        .await;
    let mut alive = std::collections::BTreeSet::new();
    for (rv, what, o) in watched.events("Output") {
        let name = o["metadata"]["name"].as_str().unwrap().to_owned();
        if what == "DELETED" {
            alive.remove(&name);
        } else {
            alive.insert(name);
        }
        assert!(alive.len() <= 1, "two outputs at rv {rv}: {alive:?}");
    }
    for (rv, _, flow) in watched.versions("Flow", "web") {
        assert!(refs(&flow).as_array().unwrap().len() <= 2, "rv {rv}: {flow}");
    }
}

#[tokio::test]
async fn a_tap_whose_finalizer_was_removed_by_hand_has_its_flow_restored_before_its_output_goes() {
    let h = harness("safe-orphan").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    let output = raw(&h, "Output", "logsocket-web-tap").await.unwrap();
    assert!(
        output["metadata"].get("ownerReferences").is_none(),
        "no ownerReference, so no garbage collector can delete it while the flow names it"
    );
    // Someone strips the finalizer and deletes the FlowTap: no cleanup runs for it.
    let taps: Api<FlowTap> = Api::namespaced(h.client.clone(), &h.ns);
    taps.patch(
        "web-tap",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    taps.delete("web-tap", &Default::default()).await.unwrap();
    // The periodic sweep (2 s here, 60 s in the service) restores the flow, then removes the
    // output; the flow never names a missing output, in any version the API server served.
    testkit::poll::eventually_within("swept", std::time::Duration::from_secs(30), || async {
        let gone = watched
            .versions("Output", "logsocket-web-tap")
            .iter()
            .any(|(_, what, _)| *what == "DELETED");
        gone.then_some(())
    })
    .await;
    watched.caught_up(&[("Flow", "web")]).await;
    crate::watch::no_output_went_while_named(&watched.events("Flow"), &watched.events("Output"), "localOutputRefs");
    assert_eq!(refs(&raw(&h, "Flow", "web").await.unwrap()), json!(["loki"]));
}

#[tokio::test]
async fn a_flow_whose_ref_keeps_being_removed_is_left_alone_as_contested() {
    let h = harness("safe-contested").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    // What the story of a tap looks like in `kubectl describe flowtap`.
    for reason in ["Created", "FlowPatched", "Active"] {
        event(&h, reason).await;
    }
    // A GitOps tool puts the flow back as it is in git, again and again.
    let flows = cluster::logging_api(&h.client, &h.ns, "Flow");
    for round in 0..3 {
        eventually(&format!("the ref back, round {round}"), || async {
            let flow = serde_json::to_value(flows.get("web").await.ok()?).unwrap();
            (refs(&flow) == json!(["loki", "logsocket-web-tap"])).then_some(())
        })
        .await;
        let mut flow = flows.get("web").await.unwrap();
        flow.data["spec"]["localOutputRefs"] = json!(["loki"]);
        flows.replace("web", &Default::default(), &flow).await.unwrap();
    }
    let s = status_when(&h, "web-tap", "Contested", |s| {
        has_reason(s, "FlowPatched", "Contested")
    })
    .await;
    assert_eq!(s.phase, Some(Phase::Failed));
    let message = &s.conditions.iter().find(|c| c.type_ == "FlowPatched").unwrap().message;
    assert!(message.contains("Mirror"), "suggests Mirror mode: {message}");
    event(&h, "Contested").await;
    // It stops fighting: through more changes of the flow (each a pass of the tap), the flow
    // stays as the tool wants it in every version, and the output is gone for good.
    eventually("the output gone", || async {
        raw(&h, "Output", "logsocket-web-tap").await.is_none().then_some(())
    })
    .await;
    let contested_at = watched.versions("Flow", "web").last().map(|(rv, _, _)| *rv).unwrap();
    for n in 1..=3 {
        poke(&h.client, &h.ns, "Flow", "web", n).await;
    }
    watched.caught_up(&[("Flow", "web")]).await;
    for (rv, _, flow) in watched.versions("Flow", "web") {
        assert!(
            rv <= contested_at || refs(&flow) == json!(["loki"]),
            "put back at rv {rv}: {flow}"
        );
    }
    let last_output = watched.versions("Output", "logsocket-web-tap").last().cloned().unwrap();
    assert_eq!(last_output.1, "DELETED", "{last_output:?}");

    // Switching to Mirror mode (a spec change) taps it without touching the flow.
    Api::<FlowTap>::namespaced(h.client.clone(), &h.ns)
        .patch(
            "web-tap",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mode": "Mirror"}})),
        )
        .await
        .unwrap();
    status_when(&h, "web-tap", "Active in Mirror mode", |s| {
        s.phase == Some(Phase::Active)
    })
    .await;
    assert_eq!(refs(&raw(&h, "Flow", "web").await.unwrap()), json!(["loki"]));
}

/// Every event of the object `name` of `kind` in the namespace from resourceVersion `from`, as
/// (resourceVersion, event type, the object), collected until the returned task is aborted.
fn watch_events(
    h: &testkit::cluster::Harness,
    kind: &str,
    name: &str,
    from: &str,
) -> (crate::watch::Seen, tokio::task::JoinHandle<()>) {
    let params = kube::api::WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(120);
    crate::watch::watch_with(cluster::logging_api(&h.client, &h.ns, kind), params, from.to_owned())
}

#[tokio::test]
async fn a_deleted_output_stays_while_its_flow_names_it_and_the_tap_comes_back() {
    let h = harness("safe-inuse").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    let output = raw(&h, "Output", "logsocket-web-tap").await.unwrap();
    assert!(
        output["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("logsocket.dev/in-use"))),
        "{output}"
    );
    let old_uid = output["metadata"]["uid"].clone();
    let from = output["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let (flow_seen, flow_watch) = watch_events(&h, "Flow", "web", &from);
    let (output_seen, output_watch) = watch_events(&h, "Output", "logsocket-web-tap", &from);
    // The watches start at `from`: they see everything after it, however late they open.
    // A DELETE that lands while the flow names the output: a deposed leader's late request, a
    // user's `kubectl delete output`, a namespace going. Issued as that user, not the operator.
    let (ok, _, err) = cluster::kubectl_with(
        &cluster::env().kubeconfig,
        &[
            "-n",
            &h.ns,
            "delete",
            "outputs.logging.banzaicloud.io",
            "logsocket-web-tap",
            "--wait=false",
        ],
        None,
    );
    assert!(ok, "{err}");
    // The tap comes back: a new output (another uid), named by the flow again.
    eventually("a new output, named by the flow again", || async {
        let output = raw(&h, "Output", "logsocket-web-tap").await?;
        let flow = raw(&h, "Flow", "web").await?;
        (output["metadata"]["uid"] != old_uid && refs(&flow) == json!(["loki", "logsocket-web-tap"])).then_some(())
    })
    .await;
    // Both watches caught up: the old output's deletion and the flow's last change seen.
    let gone = eventually("the watches caught up", || async {
        let gone = output_seen
            .lock()
            .unwrap()
            .iter()
            .find(|(_, what, o)| *what == "DELETED" && o["metadata"]["uid"] == old_uid)
            .map(|(rv, _, _)| *rv)?;
        let flow = flow_seen.lock().unwrap();
        flow.last()
            .is_some_and(|(rv, _, f)| *rv > gone && refs(f) == json!(["loki", "logsocket-web-tap"]))
            .then_some(gone)
    })
    .await;
    flow_watch.abort();
    output_watch.abort();
    let output_events = output_seen.lock().unwrap().clone();
    let flow_events = flow_seen.lock().unwrap().clone();
    // In the API server's own order (resourceVersion): the old output was gone only after the
    // flow had stopped naming it; before that it was held (terminating, still rendered).
    let named_at = |rv: u64| {
        flow_events
            .iter()
            .take_while(|(at, _, _)| *at <= rv)
            .last()
            .is_none_or(|(_, _, f)| refs(f).as_array().unwrap().contains(&json!("logsocket-web-tap")))
    };
    assert!(
        !named_at(gone),
        "the flow named the output when it was deleted (rv {gone}): {flow_events:?}"
    );
    assert!(
        output_events
            .iter()
            .any(|(_, _, o)| o["metadata"]["uid"] == old_uid && !o["metadata"]["deletionTimestamp"].is_null()),
        "held by its finalizer first: {output_events:?}"
    );
    never_broke_the_render(&h).await;
}

/// Another tenant's Flow `bad` makes the Logging's configuration check fail; returns once the
/// Logging's only (current) result is that failure.
async fn another_flow_fails_the_check(h: &testkit::cluster::Harness) {
    h.logging_operator
        .behaviour
        .lock()
        .unwrap()
        .fail_config_with
        .insert("flow/bad".into());
    cluster::create_flow(&h.client, &h.ns, "bad", json!({"localOutputRefs": ["loki"]})).await;
    let loggings = cluster::loggings(&h.client);
    eventually("the Logging's check failed", || async {
        let l = loggings.get(&h.logging_operator.logging).await.ok()?;
        let results = l.data["status"]["configCheckResults"].as_object()?.clone();
        (results.len() == 1 && results.values().all(|ok| ok == false)).then_some(())
    })
    .await;
}

/// Over `how_long` from now (passes of the tap meanwhile: the Logging's changes wake every
/// tap on it, and the flow is changed each second), every version of flow `web` and of tap
/// `web-tap` the API server served must be as `ok` says, and the tap's output must stay.
async fn holds_for(
    h: &testkit::cluster::Harness,
    watched: &mut Watched,
    how_long: std::time::Duration,
    ok: impl Fn(&serde_json::Value, Option<&str>) -> bool,
) {
    let from = watched.versions("Flow", "web").last().map_or(0, |(rv, _, _)| *rv);
    for n in 1..=how_long.as_secs() as u32 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        poke(&h.client, &h.ns, "Flow", "web", 1000 + n).await;
    }
    watched.caught_up(&[("Flow", "web"), ("FlowTap", "web-tap")]).await;
    let flows = watched.versions("Flow", "web");
    let taps = watched.versions("FlowTap", "web-tap");
    let phase_at = |rv: u64| {
        taps.iter()
            .take_while(|(at, _, _)| *at <= rv)
            .last()
            .and_then(|(_, _, t)| t["status"]["phase"].as_str().map(str::to_owned))
    };
    for (rv, _, flow) in flows.iter().filter(|(rv, _, _)| *rv > from) {
        assert!(
            ok(flow, phase_at(*rv).as_deref()),
            "rv {rv}: {:?} {flow}",
            phase_at(*rv)
        );
    }
    for (rv, _, tap) in taps.iter().filter(|(rv, _, _)| *rv > from) {
        let flow = flows
            .iter()
            .take_while(|(at, _, _)| at <= rv)
            .last()
            .map(|(_, _, f)| f.clone());
        let phase = tap["status"]["phase"].as_str();
        assert!(flow.is_some_and(|f| ok(&f, phase)), "rv {rv}: {tap}");
    }
}

#[tokio::test]
async fn a_failed_check_caused_by_another_flow_tears_no_tap_down() {
    let h = harness("safe-other").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    // Its trial ends 30 s (trial::TRIAL) after its patch.
    testkit::poll::eventually_within("its trial over", std::time::Duration::from_secs(120), || async {
        let s = crate::operator::tap(&h, "web-tap").await?.status?;
        s.patched.as_ref().is_some_and(|p| p.config_accepted).then_some(())
    })
    .await;
    // Another tenant's flow fails the Logging's check (logging-operator keeps only that result).
    another_flow_fails_the_check(&h).await;
    // Across several passes (the Logging's change wakes every tap on it): nothing torn down.
    holds_for(&h, &mut watched, std::time::Duration::from_secs(8), |flow, phase| {
        refs(flow) == json!(["loki", "logsocket-web-tap"]) && phase == Some("Active")
    })
    .await;
    let output = watched.versions("Output", "logsocket-web-tap");
    assert!(
        output
            .iter()
            .all(|(_, what, o)| *what != "DELETED" && o["metadata"]["deletionTimestamp"].is_null()),
        "{output:?}"
    );
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn a_new_tap_waits_while_the_loggings_configuration_fails_and_proceeds_when_it_passes() {
    let h = harness("safe-wait").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    another_flow_fails_the_check(&h).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    let s = status_when(&h, "web-tap", "waiting: LoggingConfigInvalid", |s| {
        has_reason(s, "FlowPatched", "LoggingConfigInvalid")
    })
    .await;
    assert_eq!(s.phase, Some(Phase::Pending), "waiting, not failed");
    holds_for(&h, &mut watched, std::time::Duration::from_secs(4), |flow, _| {
        refs(flow) == json!(["loki"])
    })
    .await;
    // The other tenant fixes their flow: the Logging passes, the tap proceeds.
    h.logging_operator.behaviour.lock().unwrap().fail_config_with.clear();
    cluster::logging_api(&h.client, &h.ns, "Flow")
        .delete("bad", &Default::default())
        .await
        .unwrap();
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn taps_patched_together_are_tried_one_at_a_time_and_only_the_broken_one_is_blamed() {
    let h = harness("safe-trial").await;
    {
        let mut b = h.logging_operator.behaviour.lock().unwrap();
        // A check takes a while, so both taps would otherwise land in one configuration.
        b.check_delay = std::time::Duration::from_secs(2);
        b.fail_config_with.insert("logsocket-bad-tap".into());
    }
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    cluster::create_flow(&h.client, &h.ns, "api", flow_spec()).await;
    let mut watched = Watched::start(&h.client, &h.ns).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    persistent_tap(
        &h,
        "bad-tap",
        json!({"flowRef": {"kind": "Flow", "name": "api"}, "persistent": true}),
    )
    .await;
    // Room for checks that take a while and taps tried one at a time.
    let room = std::time::Duration::from_secs(90);
    let failed = status_within(&h, "bad-tap", "bad-tap refused", room, |s| {
        has_reason(s, "FlowPatched", "ConfigCheckFailed")
    })
    .await;
    assert_eq!(failed.phase, Some(Phase::Failed));
    let good = status_within(&h, "web-tap", "web-tap accepted", room, |s| {
        s.phase == Some(Phase::Active) && s.patched.as_ref().is_some_and(|p| p.config_accepted)
    })
    .await;
    assert!(!has_reason(&good, "FlowPatched", "ConfigCheckFailed"), "{good:?}");
    // Over the other's trial and its failure: never blamed, never unpatched.
    holds_for(&h, &mut watched, std::time::Duration::from_secs(6), |flow, phase| {
        refs(flow) == json!(["loki", "logsocket-web-tap"]) && phase == Some("Active")
    })
    .await;
    assert_eq!(
        refs(&raw(&h, "Flow", "api").await.unwrap()),
        json!(["loki"]),
        "the broken one restored"
    );
    never_broke_the_render(&h).await;
}

#[tokio::test]
async fn a_flowtap_deleted_and_created_again_under_the_same_name_proceeds_at_once() {
    let h = harness("safe-recreate").await;
    cluster::create_flow(&h.client, &h.ns, "web", flow_spec()).await;
    persistent_tap(&h, "web-tap", web_tap()).await;
    status_when(&h, "web-tap", "Active", |s| s.phase == Some(Phase::Active)).await;
    let taps = Api::<FlowTap>::namespaced(h.client.clone(), &h.ns);
    taps.delete("web-tap", &Default::default()).await.unwrap();
    eventually("the old FlowTap gone", || async {
        taps.get_opt("web-tap").await.unwrap().is_none().then_some(())
    })
    .await;
    // At once, as GitOps `Replace=true` or `kubectl replace --force` do: the controller's
    // caches may still show the old output.
    persistent_tap(&h, "web-tap", web_tap()).await;
    let s = status_when(&h, "web-tap", "Active again", |s| {
        s.phase == Some(Phase::Active) || has_reason(s, "OutputReady", "NameTaken")
    })
    .await;
    assert_eq!(s.phase, Some(Phase::Active), "{s:?}");
    never_broke_the_render(&h).await;
}
