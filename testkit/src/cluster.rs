//! One real control plane per test binary, a namespace per test, real ServiceAccount tokens and
//! RBAC grants, kubectl, logging-operator objects, and [`Harness`]: a relay with the operator,
//! scoped to one test namespace.

use crate::control_plane::{self, ControlPlane};
use crate::logging_operator;
use crate::poll::eventually_within;
use crate::relay::{loopback_sockets, start_service_on, test_keys, TestRelay};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Root of the repository.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test kit sits in the repository")
}

/// The directory of this build's executables (`target/debug`, `target/release`): the running
/// test, bench or example is in its `deps/` or `examples/`.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this executable");
    let dir = exe.parent().expect("the executable's directory");
    match dir.file_name() {
        Some(n) if n == "deps" || n == "examples" => dir.parent().unwrap_or(dir).to_owned(),
        _ => dir.to_owned(),
    }
}

/// Cargo's scratch directory for tests and benches (`target/tmp`, the directory
/// `CARGO_TARGET_TMPDIR` names to integration tests when they are compiled).
pub fn target_tmpdir() -> PathBuf {
    let build = build_dir();
    let dir = build.parent().unwrap_or(&build).join("tmp");
    std::fs::create_dir_all(&dir).expect("create the target's tmp directory");
    dir
}

/// The CRDs every test cluster gets: FlowTap (as committed) and logging-operator's.
pub fn crd_files() -> Vec<PathBuf> {
    control_plane::crd_files(repo())
}

static ENV: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane shared by this test binary, started (and the CRDs installed) on first use.
pub fn env() -> &'static ControlPlane {
    let result = ENV.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // This thread starts the processes and then stays parked: the children are bound to it
        // with PR_SET_PDEATHSIG, which fires when the *thread* that forked them ends.
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let result = rt.block_on(async {
                    let cp = match ControlPlane::from_env() {
                        Some(cp) => cp,
                        None => control_plane::start(&target_tmpdir())?,
                    };
                    cp.wait_ready(Duration::from_secs(90)).await?;
                    cp.install_crds(&crd_files()).await?;
                    Ok(cp)
                });
                let _ = tx.send(result);
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn control-plane thread");
        rx.recv().unwrap_or_else(|_| Err("control-plane thread died".into()))
    });
    match result {
        Ok(cp) => cp,
        Err(e) => panic!("test control plane unavailable: {e}"),
    }
}

/// An admin client for the shared control plane, on the calling test's runtime.
pub async fn client() -> kube::Client {
    env().client().await
}

static NAMESPACES: AtomicU32 = AtomicU32::new(0);

/// Create a fresh namespace for one test; its name starts with `prefix`.
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    let n = NAMESPACES.fetch_add(1, Ordering::SeqCst);
    let name = format!("{prefix}-{}-{n}", std::process::id());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    name
}

/// Create a ServiceAccount and return a real token for it (TokenRequest, like `kubectl create token`).
pub async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("create service account {ns}/{name}: {e}"));
    token_request(client, ns, name)
        .await
        .unwrap_or_else(|e| panic!("token request for {ns}/{name}: {e}"))
}

/// A real token (an hour) for the existing ServiceAccount `ns/name` (TokenRequest).
pub async fn token_request(client: &kube::Client, ns: &str, name: &str) -> Result<String, kube::Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    Ok(response.status.expect("token request answered with a status").token)
}

/// A kubeconfig for the shared cluster that authenticates with `token` instead of the admin's.
pub fn kubeconfig_with_token(token: &str, path: &Path) -> PathBuf {
    let admin = std::fs::read_to_string(&env().kubeconfig).expect("admin kubeconfig");
    let mut value: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig is YAML");
    let users = value["users"].as_sequence_mut().expect("kubeconfig has users");
    for user in users {
        user["user"] = serde_yaml::from_str(&format!("{{token: \"{token}\"}}")).unwrap();
    }
    std::fs::write(path, serde_yaml::to_string(&value).unwrap()).expect("write kubeconfig");
    path.to_owned()
}

/// Run the real kubectl against the shared cluster; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    kubectl_with(&env().kubeconfig, args, None)
}

/// Run kubectl with a given kubeconfig, optionally feeding `stdin`.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let kubectl = control_plane::kubectl_path(env().assets.as_deref());
    let mut child = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e} (run `make test-env` to get kubectl)", kubectl.display()));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("kubectl finished");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Untyped access to a logging-operator kind (`Flow`, `ClusterFlow`, `Output`, `ClusterOutput`),
/// to read back exactly what the API server stores.
pub fn logging_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, &plural))
}

/// The cluster's Loggings (cluster-scoped, unlike the other logging-operator kinds).
pub fn loggings(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", "Logging");
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "loggings"))
}

/// Create a logging-operator object from its JSON form (`apiVersion`, `kind`, `metadata`, `spec`).
pub async fn create_logging(client: &kube::Client, ns: &str, obj: serde_json::Value) -> DynamicObject {
    let kind = obj["kind"].as_str().expect("object has a kind").to_owned();
    let obj: DynamicObject = serde_json::from_value(obj).expect("a valid object");
    logging_api(client, ns, &kind)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {kind}: {e}"))
}

/// Create a Flow with the given spec.
pub async fn create_flow(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    create_logging(client, ns, logging_object("Flow", name, spec)).await
}

/// Create FlowTap `ns/name` with the given spec.
pub async fn create_flowtap(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> log_socket::k8s::flowtap::FlowTap {
    use log_socket::k8s::flowtap::FlowTap;
    let tap: FlowTap = serde_json::from_value(serde_json::json!({
        "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a FlowTap spec");
    Api::<FlowTap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &tap)
        .await
        .unwrap_or_else(|e| panic!("create FlowTap {ns}/{name}: {e}"))
}

/// Create a ClusterFlow with the given spec (in `ns`, the logging control namespace).
pub async fn create_cluster_flow(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> DynamicObject {
    create_logging(client, ns, logging_object("ClusterFlow", name, spec)).await
}

/// The JSON form of a logging-operator object.
pub fn logging_object(kind: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "logging.banzaicloud.io/v1beta1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Grant a ServiceAccount the rules, with a Role and RoleBinding in its namespace.
pub async fn grant(client: &kube::Client, ns: &str, sa: &str, rules: serde_json::Value) {
    grant_in(client, ns, ns, sa, rules).await
}

/// Grant the ServiceAccount `sa_ns/sa` the rules in namespace `role_ns`, and wait until the
/// API server's authorizer applies them (its RBAC cache lags a moment behind writes).
pub async fn grant_in(client: &kube::Client, role_ns: &str, sa_ns: &str, sa: &str, rules: serde_json::Value) {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let name = format!("{sa}-{}", NAMESPACES.fetch_add(1, Ordering::SeqCst));
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "rules": rules,
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), role_ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("create role {role_ns}/{name}: {e}"));
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), role_ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("create rolebinding {role_ns}/{name}: {e}"));

    let rule = &rules[0];
    let resource = rule["resources"][0].as_str().unwrap_or_default();
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
        None => (resource.to_owned(), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{sa_ns}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_ns}"),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(role_ns.to_owned()),
                group: rule["apiGroups"][0].as_str().map(String::from),
                resource: Some(resource),
                subresource,
                name: rule["resourceNames"][0].as_str().map(String::from),
                verb: rule["verbs"][0].as_str().map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    wait_allowed(client, review, &format!("the grant to {sa_ns}/{sa} in {role_ns}")).await;
}

/// Ask the authorizer until it allows `review` (its RBAC cache lags a moment behind writes).
async fn wait_allowed(
    client: &kube::Client,
    review: k8s_openapi::api::authorization::v1::SubjectAccessReview,
    what: &str,
) {
    let api = Api::<k8s_openapi::api::authorization::v1::SubjectAccessReview>::all(client.clone());
    let review = &review;
    eventually_within(&format!("{what} to take effect"), Duration::from_secs(30), || async {
        let answer = api
            .create(&PostParams::default(), review)
            .await
            .expect("SubjectAccessReview");
        answer.status.is_some_and(|s| s.allowed).then_some(())
    })
    .await
}

/// Rules allowing `get` on Flows and ClusterFlows (what tapping needs).
pub fn may_tap_flows() -> serde_json::Value {
    serde_json::json!([{"apiGroups": ["logging.banzaicloud.io"], "resources": ["flows", "clusterflows"], "verbs": ["get"]}])
}

/// A scratch directory for one test, removed with the control plane's data directory.
pub fn tempdir(name: &str) -> PathBuf {
    let base = env().run_dir.clone().unwrap_or_else(target_tmpdir);
    let dir = base.join(format!("{name}-{}", NAMESPACES.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).expect("create test directory");
    dir
}

/// Path of a built binary of log-socket (`log-socket`, `k8stail`, `kubectl-flowtail`), next to
/// the running test: cargo builds a package's binaries for its integration tests.
pub fn bin(name: &str) -> PathBuf {
    let path = build_dir().join(name);
    assert!(
        path.is_file(),
        "no binary {name} at {} (cargo builds it for log-socket's integration tests)",
        path.display()
    );
    path
}

/// Give the ServiceAccount `ns/sa` exactly the permissions the shipped manifests give the
/// service (config/rbac): the ClusterRole's rules cluster-wide, the leader-election Role's in
/// `ns`. Waits until the authorizer applies them.
pub async fn grant_shipped_rbac(client: &kube::Client, ns: &str, sa: &str) {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let rules = |file: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(repo().join("config/rbac").join(file)).expect("config/rbac");
        let value: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
        value["rules"].clone()
    };
    let name = format!("log-socket-{ns}");
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "rules": rules("cluster_role.yaml"),
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("create the shipped ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the shipped ClusterRole");
    grant(client, ns, sa, rules("leader_election_role.yaml")).await;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{ns}:{sa}")),
            resource_attributes: Some(ResourceAttributes {
                group: Some("authentication.k8s.io".into()),
                resource: Some("tokenreviews".into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    wait_allowed(client, review, &format!("the shipped ClusterRole for {ns}/{sa}")).await;
}

/// Where the generated outputs of test harnesses send records.
pub const INGEST_URL: &str = "http://log-socket.test.svc:10000";

/// A relay with listener registration, tap tracking and (optionally) the controller, all scoped
/// to one test namespace, built as the binary builds it; stopped when dropped.
pub struct Harness {
    pub relay: TestRelay,
    pub client: kube::Client,
    pub ns: String,
    /// logging-operator's part for `ns` (a Logging, output statuses, configuration checks).
    pub logging_operator: logging_operator::LoggingOperator,
}

pub async fn harness_with(
    client: kube::Client,
    ns: String,
    with_controller: bool,
    linger: Duration,
    session_ttl: Duration,
) -> Harness {
    harness_configured(client, ns, with_controller, linger, session_ttl, |_| {}).await
}

/// [`harness_with`], with the operator's settings changed by `tweak`.
pub async fn harness_configured(
    client: kube::Client,
    ns: String,
    with_controller: bool,
    linger: Duration,
    session_ttl: Duration,
    tweak: impl FnOnce(&mut log_socket::operator::OperatorConfig),
) -> Harness {
    use log_socket::service::Controller;
    let controller = if with_controller {
        Controller::Always
    } else {
        Controller::Off
    };
    let logging_operator = logging_operator::start(&client, &ns).await;
    let relay = replica(client.clone(), &ns, controller, linger, session_ttl, tweak).await;
    Harness {
        relay,
        client,
        ns,
        logging_operator,
    }
}

/// One replica of the service scoped to `ns`, built as the binary builds it: the relay with
/// listener registration and tap tracking, and the controller as `controller` says (always, off,
/// or while it holds a Lease). No logging-operator stand-in (see [`harness_configured`]).
pub async fn replica(
    client: kube::Client,
    ns: &str,
    controller: log_socket::service::Controller,
    linger: Duration,
    session_ttl: Duration,
    tweak: impl FnOnce(&mut log_socket::operator::OperatorConfig),
) -> TestRelay {
    use log_socket::operator::OperatorConfig;
    use log_socket::service::{Cluster, Service};
    use std::sync::Arc;
    let mut operator = OperatorConfig {
        linger,
        session_ttl,
        ingest_keys: Some(test_keys()),
        namespace: Some(ns.to_owned()),
        sweep_interval: Duration::from_secs(2),
        ..OperatorConfig::new(&format!("relay-{ns}"), INGEST_URL)
    };
    tweak(&mut operator);
    let operator = Arc::new(operator);
    let parts = log_socket::relay::http::Parts {
        authenticator: Arc::new(log_socket::auth::tokens::TokenReviewAuthenticator::new(
            client.clone(),
            vec![],
            Duration::from_secs(10),
        )),
        authorizer: Arc::new(log_socket::auth::labels::LabelPolicy::default()),
        sessions: Arc::new(log_socket::relay::NoSessions),
        ingest_auth: log_socket::auth::IngestAuth::per_flow(test_keys()),
    };
    let cluster = Cluster {
        client,
        operator,
        tap_permission_check: true,
        controller,
    };
    let service = Service::cluster(log_socket::relay::RelayConfig::default(), parts, cluster);
    let mut relay = start_service_on(loopback_sockets().await, service);
    relay.per_flow = true;
    relay
}

/// The Secret `--output-tls-secret` names in the tests, with the keys the generated outputs'
/// TLS client certificate is mounted from (the operator refuses to patch a flow without it).
pub async fn output_tls_secret(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::core::v1::Secret;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "log-socket-ingest-tls"},
        "stringData": {"ca.crt": "-", "tls.crt": "-", "tls.key": "-"},
    }))
    .unwrap();
    match Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create Secret {ns}/log-socket-ingest-tls: {e}"),
    }
}
