//! The shipped manifests (config/ kustomize base, the Helm chart) against the real API server:
//! rendered, then applied with server-side dry-run, which runs validation and admission.

use crate::support;

/// Make sure the install namespace exists (server-side dry-run does not create it).
fn install_namespace() {
    let (ok, out, err) = support::kubectl(&["get", "namespace", "log-socket", "--ignore-not-found", "-o", "name"]);
    assert!(ok, "{err}");
    if out.trim().is_empty() {
        let (ok, _, err) = support::kubectl(&["create", "namespace", "log-socket"]);
        assert!(ok || err.contains("AlreadyExists"), "{err}");
    }
}

fn dry_run(manifests: &str) -> String {
    let (ok, out, err) = support::kubectl_with(
        &support::env().kubeconfig,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(manifests),
    );
    assert!(ok, "server-side dry-run refused the manifests:\n{err}\n{out}");
    out
}

#[tokio::test]
async fn the_kustomize_base_renders_and_the_api_server_accepts_it() {
    support::env();
    let base = support::repo().join("config/default");
    let (ok, rendered, err) = support::kubectl(&["kustomize", base.to_str().unwrap()]);
    assert!(ok, "{err}");
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(
            rendered.contains(&format!("\nkind: {kind}\n")),
            "{kind} missing:\n{rendered}"
        );
    }
    assert!(
        !rendered.contains("'*'") && !rendered.contains("\"*\""),
        "no wildcard RBAC"
    );
    install_namespace();
    let out = dry_run(&rendered);
    assert!(
        out.contains("deployment.apps/log-socket") && out.contains("(server dry run)"),
        "{out}"
    );
}
