//! `k8stail taps` against the real API server.

use testkit::cluster;

#[tokio::test]
async fn k8stail_taps_lists_the_flowtaps_of_a_namespace() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "taps").await;
    let other = cluster::namespace(&client, "taps-other").await;
    for (ns, name, kind, flow) in [
        (&ns, "a", "Flow", "web"),
        (&ns, "b", "ClusterFlow", "all"),
        (&other, "c", "Flow", "x"),
    ] {
        let yaml = format!(
            "apiVersion: logsocket.dev/v1alpha1\nkind: FlowTap\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{flowRef: {{kind: {kind}, name: {flow}}}, persistent: true}}\n"
        );
        let (ok, _, err) = cluster::kubectl_with(&cluster::env().kubeconfig, &["apply", "-f", "-"], Some(&yaml));
        assert!(ok, "{err}");
    }

    let out = std::process::Command::new(cluster::bin("k8stail"))
        .args(["taps", "-n", &ns, "--kubeconfig"])
        .arg(&cluster::env().kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "header and two taps: {stdout}");
    assert_eq!(
        rows[0],
        [
            "NAMESPACE",
            "NAME",
            "FLOW",
            "KIND",
            "FLOW",
            "LISTENERS",
            "RATES",
            "PERSISTENT",
            "PHASE",
            "STAGE",
            "COST",
            "BUS",
            "AGE"
        ]
    );
    assert_eq!(&rows[1][..8], [ns.as_str(), "a", "Flow", "web", "0", "-", "true", "-"]);
    assert_eq!(
        &rows[2][..8],
        [ns.as_str(), "b", "ClusterFlow", "all", "0", "-", "true", "-"]
    );
}

#[tokio::test]
async fn k8stail_taps_says_what_is_missing_when_the_user_may_not_list_taps() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "taps-denied").await;
    let token = cluster::service_account_token(&client, &ns, "viewer").await;
    let dir = cluster::tempdir("taps-denied");
    let kubeconfig = cluster::kubeconfig_with_token(&token, &dir.join("kubeconfig"));
    let out = std::process::Command::new(cluster::bin("k8stail"))
        .args(["taps", "-n", &ns, "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("you need `list` on flowtaps.logsocket.dev"), "{stderr}");
    assert!(out.stdout.is_empty());
}
