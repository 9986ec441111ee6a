//! The shipped manifests (config/ kustomize base, the Helm chart) against the real API server:
//! rendered, then applied with server-side dry-run, which runs validation and admission.

use testkit::cluster;

/// What both the kustomize base and the chart install (the base also creates its Namespace).
const INSTALLED_KINDS: [&str; 9] = [
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Deployment",
    "Service",
    "NetworkPolicy",
];

/// Make sure the install namespace exists (server-side dry-run does not create it).
fn install_namespace() {
    let (ok, out, err) = cluster::kubectl(&["get", "namespace", "log-socket", "--ignore-not-found", "-o", "name"]);
    assert!(ok, "{err}");
    if out.trim().is_empty() {
        let (ok, _, err) = cluster::kubectl(&["create", "namespace", "log-socket"]);
        assert!(ok || err.contains("AlreadyExists"), "{err}");
    }
}

pub(crate) fn dry_run(manifests: &str) -> String {
    // The 1.20 test server does not know CEL rules (1.25+), which the FlowTap CRD carries:
    // leave them out here; everything else is applied as shipped.
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(manifests) {
        let mut value = <serde_json::Value as serde::Deserialize>::deserialize(doc).expect("YAML manifests");
        // The helm test Pod needs the release's ServiceAccount, which a dry run does not create
        // (tests/cluster/release.rs runs it).
        if value.is_null() || value["metadata"]["annotations"]["helm.sh/hook"] == "test" {
            continue;
        }
        testkit::control_plane::without_cel(&mut value);
        docs.push(serde_yaml::to_string(&value).unwrap());
    }
    let manifests = docs.join("---\n");
    let (ok, out, err) = cluster::kubectl_with(
        &cluster::env().kubeconfig,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&manifests),
    );
    assert!(ok, "server-side dry-run refused the manifests:\n{err}\n{out}");
    out
}

#[tokio::test]
async fn the_kustomize_base_renders_and_the_api_server_accepts_it() {
    cluster::env();
    let base = cluster::repo().join("config/default");
    let (ok, rendered, err) = cluster::kubectl(&["kustomize", base.to_str().unwrap()]);
    assert!(ok, "{err}");
    for kind in std::iter::once("Namespace").chain(INSTALLED_KINDS) {
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

/// Run the test helm (fetched by tests/test-env.sh) with its state in a scratch directory,
/// against the test cluster.
pub(crate) fn helm(args: &[&str]) -> (bool, String, String) {
    let helm = testkit::control_plane::assets_dir()
        .ok()
        .map(|d| d.join("helm"))
        .filter(|h| h.exists())
        .unwrap_or_else(|| "helm".into());
    let home = cluster::tempdir("helm-home");
    let out = std::process::Command::new(&helm)
        .args(args)
        .env("HELM_CACHE_HOME", &home)
        .env("HELM_CONFIG_HOME", &home)
        .env("HELM_DATA_HOME", &home)
        .env("KUBECONFIG", &cluster::env().kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e} (tests/test-env.sh fetches helm)", helm.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart with these arguments fails, saying `says`.
pub(crate) fn refused(args: &[&str], says: &str) {
    let chart = cluster::repo().join("config/helm/log-socket");
    let (ok, _, err) = helm(&[&["template", "t", chart.to_str().unwrap()][..], args].concat());
    assert!(!ok && err.contains(says), "{args:?}: {err}");
}

pub(crate) fn documents(rendered: &str) -> Vec<serde_json::Value> {
    rendered
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<serde_json::Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

#[tokio::test]
async fn the_helm_chart_lints_strictly_renders_and_the_api_server_accepts_it() {
    cluster::env();
    let chart = cluster::repo().join("config/helm/log-socket");
    let chart = chart.to_str().unwrap();
    let (ok, out, err) = helm(&["lint", "--strict", chart]);
    assert!(ok, "helm lint --strict:\n{out}\n{err}");

    let (ok, rendered, err) = helm(&[
        "template",
        "log-socket",
        chart,
        "--namespace",
        "log-socket",
        "--include-crds",
    ]);
    assert!(ok, "{err}");
    let docs = documents(&rendered);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in INSTALLED_KINDS {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // The chart grants exactly what the kustomize base grants.
    let shipped: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cluster::repo().join("config/rbac/cluster_role.yaml")).unwrap())
            .unwrap();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "log-socket")
        .unwrap();
    assert_eq!(
        role["rules"], shipped["rules"],
        "chart and config/rbac ClusterRoles differ"
    );
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array().unwrap().contains(&serde_json::json!(
            "--ingest-url=http://log-socket.log-socket.svc:10000"
        )),
        "{args}"
    );
    // helm uninstall first removes every tap (flows restored) with a pre-delete hook, whose pod
    // the Service does not select.
    let hook = docs.iter().find(|d| d["kind"] == "Job").expect("the remove-taps hook");
    assert_eq!(hook["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    let pod = &hook["spec"]["template"];
    assert_eq!(pod["spec"]["containers"][0]["args"][0], "remove-taps");
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let selected = service["spec"]["selector"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| pod["metadata"]["labels"][k] == *v);
    assert!(!selected, "the Service must not select the hook's pod");
    install_namespace();
    let out = dry_run(&rendered);
    assert!(out.contains("deployment.apps/log-socket"), "{out}");
    assert!(out.contains("job.batch/log-socket-remove-taps"), "{out}");

    // Options render to valid objects too.
    let (ok, rendered, err) = helm(&[
        "template",
        "tail",
        chart,
        "--namespace",
        "log-socket",
        "--set",
        "tapMode=mirror,leaderElection=false,networkPolicy.enabled=false,watchNamespace=shop",
        "--set",
        "extraArgs={--replay-records=5000}",
    ]);
    assert!(ok, "{err}");
    let docs = documents(&rendered);
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"
        || d["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-leader-election"))));
    let args = docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0]
        ["args"]
        .to_string();
    for flag in [
        "--tap-mode=mirror",
        "--leader-election=false",
        "--watch-namespace=shop",
        "--replay-records=5000",
    ] {
        assert!(args.contains(flag), "{flag} in {args}");
    }
    dry_run(&rendered);

    // values.schema.json: a value log-socket would not take, or a misspelt key, is refused at
    // install with the field named (helm lint --strict passes the defaults above).
    for (set, says) in [
        ("api.tls=SelfSigned", "api.tls must be one of"),
        ("bus.kind=NATS", "bus.kind must be one of"),
        ("tapMode=Patch", "tapMode must be one of"),
        ("recordPolicy=rbac", "recordPolicy must be one of"),
        ("logFormat=yaml", "logFormat must be one of"),
        ("replicaCount=0", "replicaCount"),
        ("tapLinger=5", "tapLinger"),
        ("tapLingr=5s", "tapLingr is not allowed"),
    ] {
        refused(&["--set", set], says);
    }
    // The usual pod settings reach the pod, and the API server takes them.
    let (ok, rendered, err) = helm(&[
        "template",
        "log-socket",
        chart,
        "--namespace",
        "log-socket",
        "--set",
        "priorityClassName=system-cluster-critical,extraEnv[0].name=LOG_SOCKET_REPLAY_RECORDS",
        "--set-string",
        "extraEnv[0].value=5000",
        "--set",
        "extraVolumes[0].name=scratch,extraVolumes[0].emptyDir.medium=Memory,extraVolumeMounts[0].name=scratch,extraVolumeMounts[0].mountPath=/scratch",
        "--set",
        "topologySpreadConstraints[0].maxSkew=1,topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone,topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    ]);
    assert!(ok, "{err}");
    let docs = documents(&rendered);
    let pod = &docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    let container = &pod["containers"][0];
    assert!(container["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "LOG_SOCKET_REPLAY_RECORDS"));
    assert!(container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/scratch"));
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "scratch"));
    dry_run(&rendered);
    // An env value given as a number (`--set`, not `--set-string`) is refused at install,
    // before the API server would refuse the Deployment.
    refused(
        &["--set", "extraEnv[0].name=X,extraEnv[0].value=5000"],
        "extraEnv.0.value",
    );
    // Chart.yaml says which Kubernetes it takes.
    refused(&["--kube-version", "1.19.0"], "requires kubeVersion");
    // One replica is replaced (two would briefly relay apart on the embedded bus); several roll.
    let one = documents(&helm(&["template", "t", chart]).1);
    let deployment = one.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    // The opt-in Role that lets log-socket name a stuck check pod: list pods, there only.
    let (ok, rendered, err) = helm(&["template", "t", chart, "--set", "configCheckPods.namespaces={logging}"]);
    assert!(ok, "{err}");
    let docs = documents(&rendered);
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "t-log-socket-check-pods")
        .expect("the check-pods Role");
    assert_eq!(role["metadata"]["namespace"], "logging");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}])
    );

    // Several replicas need the nats bus: refused with the embedded one, saying what to set ...
    refused(&["--set", "replicaCount=2"], "replicaCount > 1 needs bus.kind: nats");
    // ... and with it: a bus key, NATS credentials and TLS are required, each refused with
    // what to set ...
    for (set, says) in [
        (
            "replicaCount=3,bus.kind=nats,bus.nats.credentialsSecret=c,bus.nats.caSecret=ca",
            "bus.nats.keySecret",
        ),
        (
            "replicaCount=3,bus.kind=nats,bus.nats.keySecret=k,bus.nats.caSecret=ca",
            "bus.nats.credentialsSecret",
        ),
        (
            "replicaCount=3,bus.kind=nats,bus.nats.keySecret=k,bus.nats.credentialsSecret=c",
            "TLS to NATS",
        ),
        (
            "replicaCount=3,bus.kind=nats,bus.nats.keySecret=k,bus.nats.urlSecret=u",
            "TLS to NATS",
        ),
    ] {
        refused(&["--set", set], says);
    }
    // A tls:// URL kept in a Secret, said so: accepted, the URL from the Secret.
    let (ok, rendered, err) = helm(&[
        "template",
        "t",
        chart,
        "--set",
        "replicaCount=2,bus.kind=nats,bus.nats.keySecret=k,bus.nats.urlSecret=u,bus.nats.urlSecretIsTLS=true",
    ]);
    assert!(ok, "{err}");
    assert!(
        rendered.contains("LOG_SOCKET_NATS_URL") && !rendered.contains("--nats-url="),
        "{rendered}"
    );
    // ... then a PodDisruptionBudget and the bus settings.
    let (ok, rendered, err) = helm(&[
        "template",
        "log-socket",
        chart,
        "--namespace",
        "log-socket",
        "--kube-version",
        "1.20.2",
        "--set",
        "replicaCount=3,bus.kind=nats,bus.nats.credentialsSecret=nats-creds,bus.nats.caSecret=nats-ca,bus.nats.keySecret=bus-key,tolerations[0].key=dedicated,tolerations[0].operator=Exists",
    ]);
    assert!(ok, "{err}");
    let docs = documents(&rendered);
    assert!(docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"), "{rendered}");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    // An upgrade is no outage: one new pod at a time, none down before it is ready.
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    // The bus's volumes are volumes, whatever scheduling settings come with them.
    let pod = &deployment["spec"]["template"]["spec"];
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["bus-key", "nats-creds", "nats-ca"] {
        assert!(volumes.contains(&v), "{v} in {volumes:?}");
    }
    assert_eq!(
        pod["tolerations"].as_array().map(Vec::len),
        Some(1),
        "{}",
        pod["tolerations"]
    );
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    for flag in [
        "--bus=nats",
        "--nats-url=nats://nats.nats.svc:4222",
        "--nats-credentials=/etc/log-socket/nats/creds",
        "--nats-ca-file=/etc/log-socket/nats-ca/ca.crt",
        "--bus-key-file=/etc/log-socket/bus/keys",
    ] {
        assert!(args.contains(flag), "{flag} in {args}");
    }
    let out = dry_run(&rendered);
    assert!(out.contains("poddisruptionbudget.policy/log-socket"), "{out}");
}

fn ensure_namespace(name: &str) {
    let (ok, _, err) = cluster::kubectl(&["create", "namespace", name]);
    assert!(ok || err.contains("AlreadyExists"), "{err}");
}

#[tokio::test]
async fn the_examples_are_accepted_by_the_api_server() {
    cluster::env();
    for ns in ["log-socket", "logging", "shop", "nats"] {
        ensure_namespace(ns);
    }
    let examples = cluster::repo().join("examples");
    for file in [
        "flow.yaml",
        "flowtap-persistent.yaml",
        "flowtap-mirror.yaml",
        "clusterflow-tap.yaml",
        "k8stail-user-rbac.yaml",
    ] {
        let text = std::fs::read_to_string(examples.join(file)).unwrap();
        dry_run(&text);
    }
    // GitOps tool objects (their CRDs are not installed here): valid YAML naming the ref lists.
    let argo = std::fs::read_to_string(examples.join("gitops/argocd-application.yaml")).unwrap();
    let argo: serde_json::Value = serde_yaml::from_str(&argo).unwrap();
    assert_eq!(
        argo["spec"]["ignoreDifferences"][0]["jsonPointers"][0],
        "/spec/localOutputRefs"
    );
    let flux = std::fs::read_to_string(examples.join("gitops/flux-kustomization.yaml")).unwrap();
    assert!(serde_yaml::from_str::<serde_json::Value>(&flux).unwrap()["kind"] == "Kustomization");
    // The mTLS overlay renders; what is not cert-manager's is accepted (cert-manager's CRDs are
    // not installed here).
    let (ok, rendered, err) = cluster::kubectl(&["kustomize", examples.join("mtls").to_str().unwrap()]);
    assert!(ok, "{err}");
    let docs: Vec<String> = rendered
        .split("\n---\n")
        .filter(|d| !d.contains("apiVersion: cert-manager.io/"))
        .map(str::to_owned)
        .collect();
    assert!(rendered.contains("kind: Certificate") && rendered.contains("--ingest-client-ca="));
    dry_run(&docs.join("\n---\n"));

    // The nats-bus overlay: 2 replicas on the nats bus, with a PodDisruptionBudget (policy/v1,
    // which the 1.20 test server knows as policy/v1beta1); and the trial NATS server.
    let (ok, rendered, err) = cluster::kubectl(&["kustomize", examples.join("nats-bus").to_str().unwrap()]);
    assert!(ok, "{err}");
    let docs = documents(&rendered);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--bus=nats") && args.contains("--bus-key-file=/etc/log-socket/bus/keys"),
        "{args}"
    );
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains("LOG_SOCKET_NATS_URL") && env.contains("log-socket-nats-url"),
        "{env}"
    );
    assert!(docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    dry_run(&rendered.replace("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n"));
    dry_run(&std::fs::read_to_string(cluster::repo().join("config/nats/nats.yaml")).unwrap());
}
