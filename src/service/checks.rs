//! What the service checks before it serves in cluster mode: the FlowTap CRD is installed and
//! readable, and logging-operator's CRDs are served. Each failure says what to do.

use crate::k8s::client::explain;
use crate::k8s::flowtap::FlowTap;
use crate::{Error, Result};
use kube::api::{Api, ListParams};

/// Check the FlowTap CRD is installed and the service may read FlowTaps; returns how many exist.
pub async fn check_cluster_access(client: &kube::Client) -> Result<usize> {
    let taps: Api<FlowTap> = Api::all(client.clone());
    match taps.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items.len()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::CrdMissing),
        Err(e) => Err(explain(
            e,
            "log-socket must be allowed to list flowtaps.logsocket.dev in all namespaces (see config/ for its ClusterRole)",
        )),
    }
}

/// Check logging-operator's four CRDs are served: the tap operator watches all of them, and
/// without one its watches fail and retry (taps then take seconds instead of milliseconds).
pub async fn check_logging_operator(client: &kube::Client, namespace: Option<&str>) -> Result<()> {
    use crate::k8s::logging::{ClusterFlow, ClusterOutput, Flow, Logging, Output};
    async fn served<K>(api: Api<K>) -> Result<bool>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(explain(
                e,
                &format!(
                    "log-socket must be allowed to list {}.logging.banzaicloud.io (see config/rbac)",
                    K::plural(&())
                ),
            )),
        }
    }
    fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let mut missing = vec![];
    for (plural, ok) in [
        ("flows", served::<Flow>(scoped(client, namespace)).await?),
        ("clusterflows", served::<ClusterFlow>(scoped(client, namespace)).await?),
        ("outputs", served::<Output>(scoped(client, namespace)).await?),
        (
            "clusteroutputs",
            served::<ClusterOutput>(scoped(client, namespace)).await?,
        ),
        // Cluster-scoped: which Logging renders a flow, and its configuration checks.
        ("loggings", served::<Logging>(Api::all(client.clone())).await?),
    ] {
        if !ok {
            missing.push(format!("{plural}.logging.banzaicloud.io"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "logging-operator's CRDs are not installed ({} missing): install logging-operator (https://kube-logging.dev) first, or run with --operator false for a relay without the tap operator",
        missing.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    //! The API server answers the tests in tests/cluster never give (the CRD is always installed
    //! there), scripted with kube's tower-test mock.
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    async fn answer_list_with(code: u16, body: serde_json::Value) -> Result<usize> {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("one request");
            assert_eq!(request.uri().path(), "/apis/logsocket.dev/v1alpha1/flowtaps");
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(response);
        });
        let result = check_cluster_access(&client).await;
        server.await.unwrap();
        result
    }

    fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "code": code, "reason": reason, "message": message})
    }

    #[tokio::test]
    async fn a_cluster_without_the_crd_gets_the_install_command() {
        let err = answer_list_with(
            404,
            status(404, "NotFound", "the server could not find the requested resource"),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::CrdMissing), "{err}");
        assert!(err.to_string().contains("kubectl apply -f crds/flowtap.yaml"), "{err}");
    }

    #[tokio::test]
    async fn a_cluster_with_taps_reports_how_many() {
        let list = json!({"apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTapList", "metadata": {},
            "items": [{"apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
                       "metadata": {"name": "a", "namespace": "default"},
                       "spec": {"flowRef": {"kind": "Flow", "name": "web"}}}]});
        assert_eq!(answer_list_with(200, list).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn other_api_failures_are_reported_as_such() {
        let err = answer_list_with(500, status(500, "InternalError", "etcd is down"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Kube(_)), "{err}");
        assert!(err.to_string().contains("etcd is down"), "{err}");
    }

    #[tokio::test]
    async fn missing_logging_operator_crds_are_named_with_what_to_do() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let server = tokio::spawn(async move {
            for _ in 0..5 {
                let (request, send) = handle.next_request().await.expect("a list request");
                let path = request.uri().path().to_owned();
                let (code, body) = if path.ends_with("/clusterflows") || path.ends_with("/clusteroutputs") {
                    (
                        404,
                        status(404, "NotFound", "the server could not find the requested resource"),
                    )
                } else {
                    (
                        200,
                        json!({"apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "List", "metadata": {}, "items": []}),
                    )
                };
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        let err = check_logging_operator(&client, None).await.unwrap_err().to_string();
        server.await.unwrap();
        assert!(
            err.contains("clusterflows.logging.banzaicloud.io, clusteroutputs.logging.banzaicloud.io missing"),
            "{err}"
        );
        assert!(
            err.contains("install logging-operator") && err.contains("--operator false"),
            "{err}"
        );
    }
}
