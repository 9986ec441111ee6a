use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use testkit::cluster;

#[tokio::test]
async fn service_account_tokens_from_the_helper_authenticate_as_that_service_account() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "token").await;
    let token = cluster::service_account_token(&client, &ns, "alice").await;

    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &review)
        .await
        .expect("TokenReview answered");
    let status = answer.status.expect("TokenReview status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.and_then(|u| u.username).as_deref(),
        Some(format!("system:serviceaccount:{ns}:alice").as_str())
    );
}

#[tokio::test]
async fn the_api_server_enforces_rbac_for_tokens_without_grants() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "rbac").await;
    let token = cluster::service_account_token(&client, &ns, "nobody").await;
    let dir = cluster::tempdir("rbac");
    let kubeconfig = cluster::kubeconfig_with_token(&token, &dir.join("kubeconfig"));

    let (ok, _, stderr) = cluster::kubectl_with(&kubeconfig, &["get", "flowtaps", "-n", &ns], None);
    assert!(!ok, "a service account without grants must not list flowtaps");
    assert!(stderr.contains("forbidden"), "{stderr}");
}
