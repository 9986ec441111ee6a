//! The partially typed logging-operator models keep every field they do not model.

use kube::api::{Api, PostParams};
use log_socket::k8s::logging::{ClusterFlow, ClusterOutput, Flow, HttpOutput, Output};
use serde_json::json;
use testkit::cluster;
use testkit::cluster::{create_cluster_flow, create_flow, create_logging, logging_api as raw_api};

#[tokio::test]
async fn a_flow_read_modified_and_replaced_keeps_fields_the_model_does_not_know() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "flow-rt").await;
    let spec = json!({
        "match": [{"select": {"labels": {"app": "web"}, "container_names": ["nginx"]}},
                  {"exclude": {"labels": {"noisy": "true"}}}],
        "filters": [{"tag_normaliser": {}}, {"grep": {"regexp": [{"key": "message", "pattern": "/error/"}]}}],
        "localOutputRefs": ["loki"],
        "globalOutputRefs": ["archive"],
    });
    create_logging(
        &client,
        &ns,
        json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Flow",
            "metadata": {"name": "flow1", "labels": {"team": "shop"}, "annotations": {"note": "keep me"}},
            "spec": spec.clone(),
        }),
    )
    .await;

    let flows: Api<Flow> = Api::namespaced(client.clone(), &ns);
    let mut flow = flows.get("flow1").await.expect("typed read");
    assert_eq!(flow.spec.local_output_refs.as_deref(), Some(&["loki".to_string()][..]));
    flow.spec.local_output_refs.as_mut().unwrap().push("tap".into());
    // replace() sends the resourceVersion it read: a concurrent writer would make this fail
    // with 409 instead of being overwritten.
    flows
        .replace("flow1", &PostParams::default(), &flow)
        .await
        .expect("replace");

    let after = raw_api(&client, &ns, "Flow").get("flow1").await.unwrap();
    let mut expected = spec;
    expected["localOutputRefs"] = json!(["loki", "tap"]);
    assert_eq!(after.data["spec"], expected);
    assert_eq!(after.metadata.labels.unwrap()["team"], "shop");
    assert_eq!(after.metadata.annotations.unwrap()["note"], "keep me");
}

#[tokio::test]
async fn a_stale_flow_update_is_refused_rather_than_overwriting_a_concurrent_change() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "flow-rv").await;
    create_flow(&client, &ns, "f", json!({"localOutputRefs": ["a"]})).await;
    let flows: Api<Flow> = Api::namespaced(client.clone(), &ns);
    let mut first = flows.get("f").await.unwrap();
    let mut second = first.clone();
    first.spec.local_output_refs = Some(vec!["a".into(), "one".into()]);
    flows.replace("f", &PostParams::default(), &first).await.unwrap();
    second.spec.local_output_refs = Some(vec!["a".into(), "two".into()]);
    let err = flows.replace("f", &PostParams::default(), &second).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 409), "{err}");
    let now = flows.get("f").await.unwrap();
    assert_eq!(now.spec.local_output_refs, Some(vec!["a".into(), "one".into()]));
}

#[tokio::test]
async fn cluster_flows_and_outputs_round_trip_with_unknown_fields() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "lo-rt").await;

    let cf_spec = json!({
        "match": [{"select": {"namespaces": ["shop"], "labels": {"app": "web"}}}],
        "filters": [{"dedot": {"de_dot_separator": "_", "de_dot_nested": true}}],
        "globalOutputRefs": ["archive"],
    });
    create_cluster_flow(&client, &ns, "all", cf_spec.clone()).await;
    let cfs: Api<ClusterFlow> = Api::namespaced(client.clone(), &ns);
    let mut cf = cfs.get("all").await.unwrap();
    cf.spec
        .global_output_refs
        .get_or_insert_with(Vec::new)
        .push("tap".into());
    cfs.replace("all", &PostParams::default(), &cf).await.unwrap();
    let after = raw_api(&client, &ns, "ClusterFlow").get("all").await.unwrap();
    let mut expected = cf_spec;
    expected["globalOutputRefs"] = json!(["archive", "tap"]);
    assert_eq!(after.data["spec"], expected);

    let http = json!({
        "endpoint": "http://log-socket.log-socket.svc:10000/flow/shop/web",
        "json_array": true,
        "format": {"type": "json"},
        "open_timeout": 5,
        "read_timeout": 10,
        "retryable_response_codes": [429, 502, 503, 504],
        "headers": {"X-Extra": "1"},
        "tls_ca_cert_path": {"mountFrom": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}},
        "buffer": {"tags": "[]", "flush_mode": "interval", "flush_interval": "1s"},
    });
    create_logging(
        &client,
        &ns,
        json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "ClusterOutput",
            "metadata": {"name": "archive"}, "spec": {"protected": true, "http": http.clone()},
        }),
    )
    .await;
    let cos: Api<ClusterOutput> = Api::namespaced(client.clone(), &ns);
    let mut co = cos.get("archive").await.unwrap();
    assert_eq!(co.spec.protected, Some(true));
    let typed: &mut HttpOutput = co.spec.output.http.as_mut().expect("http output parsed");
    assert_eq!(typed.read_timeout, Some(10));
    typed.read_timeout = Some(20);
    cos.replace("archive", &PostParams::default(), &co).await.unwrap();
    let after = raw_api(&client, &ns, "ClusterOutput").get("archive").await.unwrap();
    let mut expected_http = http.clone();
    expected_http["read_timeout"] = json!(20);
    assert_eq!(after.data["spec"], json!({"protected": true, "http": expected_http}));

    // An Output with a plugin the model does not type at all survives too.
    let loki = json!({"loki": {"url": "http://loki:3100", "configure_kubernetes_labels": true}});
    create_logging(
        &client,
        &ns,
        json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Output",
            "metadata": {"name": "loki"}, "spec": loki.clone(),
        }),
    )
    .await;
    let outputs: Api<Output> = Api::namespaced(client.clone(), &ns);
    let mut out = outputs.get("loki").await.unwrap();
    assert!(out.spec.http.is_none());
    out.metadata.labels = Some([("touched".to_string(), "yes".to_string())].into());
    outputs.replace("loki", &PostParams::default(), &out).await.unwrap();
    let after = raw_api(&client, &ns, "Output").get("loki").await.unwrap();
    assert_eq!(after.data["spec"], loki);
}
