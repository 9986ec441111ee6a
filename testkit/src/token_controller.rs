//! Kubernetes' token controller (kube-controller-manager, which does not run here), for the
//! ServiceAccount token Secrets the shipped manifests rely on: before Kubernetes 1.24 every
//! ServiceAccount gets one (the 1.20 API server's admission refuses a pod that mounts a token
//! of a ServiceAccount without it), and a Secret of type `kubernetes.io/service-account-token`
//! naming a ServiceAccount is filled with its token.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Kubernetes' token controller: every `kubernetes.io/service-account-token` Secret in `ns`
/// whose annotation names an existing ServiceAccount gets `token`, `ca.crt` and `namespace`.
pub async fn fill_token_secrets(client: &kube::Client, ns: &str) {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for secret in secrets.list(&Default::default()).await.unwrap() {
        if secret.type_.as_deref() != Some("kubernetes.io/service-account-token") {
            continue;
        }
        let name = secret.metadata.name.clone().unwrap();
        let Some(sa) = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/service-account.name"))
        else {
            continue;
        };
        let Ok(token) = crate::cluster::token_request(client, ns, sa).await else {
            continue; // no such ServiceAccount: the controller leaves the Secret empty
        };
        let data = json!({"stringData": {"token": token, "namespace": ns}});
        secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&data))
            .await
            .unwrap();
    }
}

/// Every ServiceAccount of `ns` without a token Secret gets one (`NAME-token`), filled, and
/// listed in its `secrets`, as the controller did before 1.24.
pub async fn service_account_secrets(client: &kube::Client, ns: &str) {
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for sa in accounts.list(&Default::default()).await.unwrap() {
        if sa.secrets.as_ref().is_some_and(|s| !s.is_empty()) {
            continue;
        }
        let name = sa.metadata.name.clone().unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-token"), "annotations": {"kubernetes.io/service-account.name": name}},
            "type": "kubernetes.io/service-account-token",
        }))
        .unwrap();
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("token Secret of {ns}/{name}: {e}"),
        }
        let listed = json!({"secrets": [{"name": format!("{name}-token")}]});
        accounts
            .patch(&name, &PatchParams::default(), &Patch::Merge(&listed))
            .await
            .unwrap();
    }
    fill_token_secrets(client, ns).await;
}
