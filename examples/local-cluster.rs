//! `make demo`: a local, real Kubernetes control plane with log-socket running against it, the
//! real fluentd feeding it, and k8stail showing the flow live.
//!
//! Starts etcd + kube-apiserver (from `make test-env`), installs the FlowTap and
//! logging-operator CRDs, applies `examples/flow.yaml`, plays logging-operator's part (a
//! Logging for `default`, output validation, configuration checks; see
//! testkit/src/logging_operator.rs), runs `log-socket run` (its log in
//! `target/demo/log-socket.log`), then fluentd as logging-operator would configure it for
//! Flow default/web: a `sample` source of realistic container records, the flow's outputs
//! rendered from the cluster and fluentd reloaded when they change (testkit/src/pipeline.rs;
//! its files in `target/demo/fluentd/`). fluentd is `$LOG_SOCKET_FLUENTD` or `fluentd` on
//! PATH; without one, a synthetic shipper POSTs what fluentd would (and the demo says so).
//! `k8stail default/web` runs on this terminal; once records flow, a second step applies
//! `examples/flowtap-persistent.yaml` and shows `kubectl get flowtaps` and `k8stail taps`.
//! Ctrl-C stops everything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
// Children that die with the demo even when it is killed (kill_on_drop needs it to unwind); they
// are spawned from the main thread, which lives as long as the demo.
use testkit::child::DieWithParent;
use testkit::{control_plane, fluentd, logging_operator, pipeline};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = repo.join("target/demo");
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;

    eprintln!(
        "demo: starting etcd and kube-apiserver {} ...",
        control_plane::K8S_VERSION
    );
    // Started from the main thread, which lives until the end: the processes die with it.
    let cp = control_plane::start(&base)?;
    cp.wait_ready(Duration::from_secs(90)).await?;
    cp.install_crds(&control_plane::crd_files(repo)).await?;
    let kubectl = control_plane::kubectl_path(cp.assets.as_deref());
    let kubeconfig = base.join("kubeconfig");
    kubectl_shows(&kubectl, &cp.kubeconfig, &["apply", "-f", "examples/flow.yaml"])?;
    std::fs::copy(&cp.kubeconfig, &kubeconfig).map_err(|e| e.to_string())?;
    let client = cp.client().await;

    // The server's ingest key for this run only (its Secret in a cluster): each generated
    // Output carries its own flow's credential, which the shipper reads like fluentd would.
    let keys = base.join("ingest-keys");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let key = format!("demo-key-{}-{nanos}-0123456789abcdef0123456789", std::process::id());
    std::fs::write(&keys, format!("{key}\n")).map_err(|e| e.to_string())?;
    let _logging_operator = logging_operator::start(&client, "default").await;
    let viewer_token = viewer_token(&client, "default").await?;

    let service_bin = sibling_binary("log-socket")?;
    // Its log goes to a file: on the terminal it would interleave with k8stail's records.
    let service_log_path = base.join("log-socket.log");
    let service_log = std::fs::File::create(&service_log_path).map_err(|e| e.to_string())?;
    let mut service = tokio::process::Command::new(&service_bin)
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--ingest-key-file")
        .arg(&keys)
        .args(["--ingest-url", "http://127.0.0.1:10000", "--log-level", "info"])
        .args([
            "--ingest-addr",
            "127.0.0.1:10000",
            "--api-addr",
            "127.0.0.1:10001",
            "--health-addr",
            "127.0.0.1:10002",
        ])
        .stderr(service_log)
        .kill_on_drop(true)
        .die_with_parent()
        .spawn()
        .map_err(|e| format!("start {}: {e}", service_bin.display()))?;

    wait_ready("127.0.0.1:10002", Duration::from_secs(60)).await?;
    let (feeder, sender) = if fluentd::find().is_some() {
        let flow = pipeline::FlowId {
            kind: "Flow",
            namespace: "default".into(),
            name: "web".into(),
        };
        let p = pipeline::Pipeline::start(
            client.clone(),
            &base.join("fluentd"),
            flow,
            source(),
            Duration::from_millis(500),
        )
        .await
        .ok_or("fluentd vanished")?;
        (
            Feeder::Fluentd(p),
            "the real fluentd (logs: target/demo/fluentd/fluentd.log)",
        )
    } else {
        eprintln!(
            "demo: no fluentd (set LOG_SOCKET_FLUENTD to a fluentd command, e.g. ../shared/tools/fluentd, \
             or put fluentd 1.16 on PATH): a synthetic shipper sends instead"
        );
        (
            Feeder::Shipper(tokio::spawn(shipper::run(client.clone()))),
            "a synthetic fluentd",
        )
    };
    let k8stail_bin = sibling_binary("k8stail")?;
    let k = kubeconfig.display();
    eprintln!(
        "\ndemo: log-socket is running against a local control plane (its log: {log}),\n\
         and {sender} sends what Flow default/web emits. Below, `k8stail default/web` shows it live.\n\
         In another terminal:\n\
         \n  kubectl --kubeconfig {k} get flowtaps -A\
         \n  kubectl --kubeconfig {k} get flow web -o jsonpath='{{.spec.localOutputRefs}}'\
         \n  {t} --kubeconfig {k} taps -A\
         \n  {t} --server http://127.0.0.1:10001 --token \"$(cat {tok})\" default/web --grep error\
         \n  curl -s http://127.0.0.1:10002/readyz\n\
         \nPress Ctrl-C to stop; everything started here stops with it.\n",
        t = k8stail_bin.display(),
        tok = viewer_token.display(),
        log = service_log_path.display(),
    );
    let token = std::fs::read_to_string(&viewer_token).map_err(|e| e.to_string())?;
    let mut tail = tokio::process::Command::new(&k8stail_bin)
        .args(["--server", "http://127.0.0.1:10001", "default/web"])
        .env("K8STAIL_TOKEN", token.trim())
        .kill_on_drop(true)
        .die_with_parent()
        .spawn()
        .map_err(|e| format!("start {}: {e}", k8stail_bin.display()))?;

    let step2 = tokio::spawn(step_two(
        client.clone(),
        kubectl.clone(),
        kubeconfig.clone(),
        k8stail_bin.clone(),
    ));

    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("demo: stopping"),
        status = service.wait() => eprintln!("demo: log-socket exited ({status:?}); stopping"),
        status = tail.wait() => eprintln!("demo: k8stail exited ({status:?}); stopping"),
    }
    step2.abort();
    match feeder {
        // fluentd flushes what it holds, to a relay that is still up.
        Feeder::Fluentd(p) => p.stop().await,
        Feeder::Shipper(task) => task.abort(),
    }
    if let Some(pid) = tail.id() {
        // SAFETY: signalling our own child process, as Ctrl-C does.
        unsafe {
            libc::kill(pid as i32, libc::SIGINT);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), tail.wait()).await.is_err() {
        let _ = tail.start_kill();
        let _ = tail.wait().await;
    }
    // SIGTERM first, as Kubernetes would, so the service shuts down gracefully.
    if let Some(pid) = service.id() {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), service.wait()).await {
        Ok(Ok(status)) if status.success() => eprintln!("demo: log-socket stopped cleanly"),
        Ok(status) => eprintln!("demo: log-socket stopped: {status:?}"),
        Err(_) => {
            eprintln!("demo: log-socket did not stop within 10 s; killing it");
            let _ = service.start_kill();
            let _ = service.wait().await;
        }
    }
    control_plane::teardown();
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&keys);
    let _ = std::fs::remove_file(&viewer_token);
    Ok(())
}

/// What sends the flow's records: the real fluentd, or the synthetic shipper without one.
enum Feeder {
    Fluentd(pipeline::Pipeline),
    Shipper(tokio::task::JoinHandle<()>),
}

/// A `sample` source of realistic container records of Flow default/web's pods, a few a second.
fn source() -> String {
    let records: Vec<serde_json::Value> = (0..24)
        .map(|n| {
            let mut r = shipper::record("default", n);
            // fluentd stamps its own event time.
            r.as_object_mut().map(|o| o.remove("time"));
            r
        })
        .collect();
    format!(
        "<source>\n  @type sample\n  tag kubernetes.var.log.containers.web_default_nginx.log\n  rate 3\n  \
         sample {}\n</source>\n",
        serde_json::Value::from(records)
    )
}

/// `kubectl --kubeconfig KUBECONFIG ARGS` (paths relative to the repository), its output on
/// stderr (stdout is k8stail's).
fn kubectl_shows(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| format!("run {}: {e}", kubectl.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The second step, once k8stail's tap is active: a persistent FlowTap from examples/ joins
/// the flow, and both taps show in `kubectl get flowtaps` and `k8stail taps`.
async fn step_two(client: kube::Client, kubectl: PathBuf, kubeconfig: PathBuf, k8stail: PathBuf) {
    use log_socket::k8s::flowtap::{FlowTap, Phase};
    let taps = kube::Api::<FlowTap>::namespaced(client, "default");
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let active = taps.get_opt("flow-web").await.ok().flatten();
        if active.and_then(|t| t.status?.phase) == Some(Phase::Active) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let k = kubeconfig.display();
    eprintln!(
        "\ndemo step 2: a FlowTap from examples/ joins the flow (k8stail above keeps streaming):\n\
         \n  $ kubectl --kubeconfig {k} apply -f examples/flowtap-persistent.yaml"
    );
    let step = |args: &[&str]| kubectl_shows(&kubectl, &kubeconfig, args);
    if let Err(e) = step(&["apply", "-f", "examples/flowtap-persistent.yaml"]) {
        eprintln!("demo: {e}");
        return;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("\n  $ kubectl --kubeconfig {k} get flowtaps -A");
    let _ = step(&["get", "flowtaps", "-A"]);
    eprintln!("\n  $ {} --kubeconfig {k} taps -A", k8stail.display());
    match tokio::process::Command::new(&k8stail)
        .args(["--kubeconfig"])
        .arg(&kubeconfig)
        .args(["taps", "-A"])
        .output()
        .await
    {
        Ok(out) => eprint!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("demo: run k8stail taps: {e}"),
    }
    eprintln!("demo step 2 done.\n");
}

/// Wait until the service answers `/readyz` with 200 (it has verified its cluster access).
async fn wait_ready(addr: &str, timeout: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
                .await;
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer).await;
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("log-socket did not become ready on {addr} within {timeout:?}"))
}

/// A ServiceAccount `viewer` allowed to tap flows in `ns` and read its pods' logs; returns a
/// file with its token.
async fn viewer_token(client: &kube::Client, ns: &str) -> Result<PathBuf, String> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let json = |v: serde_json::Value| v;
    let sa: ServiceAccount =
        serde_json::from_value(json(serde_json::json!({"metadata": {"name": "viewer"}}))).map_err(|e| e.to_string())?;
    let sas = kube::Api::<ServiceAccount>::namespaced(client.clone(), ns);
    sas.create(&Default::default(), &sa).await.map_err(|e| e.to_string())?;
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "flow-viewer"},
        // The flow, and (the default record policy) the logs of its namespace's pods.
        "rules": [
            {"apiGroups": ["logging.banzaicloud.io"], "resources": ["flows"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        ],
    }))
    .map_err(|e| e.to_string())?;
    kube::Api::<Role>::namespaced(client.clone(), ns)
        .create(&Default::default(), &role)
        .await
        .map_err(|e| e.to_string())?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "viewer-flow-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flow-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}],
    }))
    .map_err(|e| e.to_string())?;
    kube::Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&Default::default(), &binding)
        .await
        .map_err(|e| e.to_string())?;
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"expirationSeconds": 86400}})).map_err(|e| e.to_string())?;
    let token = sas
        .create_token_request("viewer", &Default::default(), &request)
        .await
        .map_err(|e| format!("token for the viewer: {e}"))?
        .status
        .ok_or("no token")?
        .token;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo/viewer-token");
    std::fs::write(&path, token).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    Ok(path)
}

/// What logging-operator's fluentd would send, without fluentd.
mod shipper {
    use kube::api::{Api, DynamicObject, ListParams};
    use kube::core::{ApiResource, GroupVersionKind};
    use serde_json::{json, Value};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", kind);
        Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
    }

    /// Every second: for each Flow, for each log-socket Output it references, POST a batch.
    pub async fn run(client: kube::Client) {
        let mut n: u64 = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (Ok(flows), Ok(outputs)) = (
                api(&client, "Flow").list(&ListParams::default()).await,
                api(&client, "Output")
                    .list(&ListParams::default().labels("app.kubernetes.io/managed-by=log-socket"))
                    .await,
            ) else {
                continue;
            };
            for flow in &flows.items {
                let ns = flow.metadata.namespace.clone().unwrap_or_default();
                let refs = flow.data["spec"]["localOutputRefs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for output in outputs.items.iter().filter(|o| {
                    o.metadata.namespace.as_deref() == Some(&ns)
                        && refs.iter().any(|r| r.as_str() == o.metadata.name.as_deref())
                }) {
                    let http = &output.data["spec"]["http"];
                    let Some(endpoint) = http["endpoint"].as_str() else {
                        continue;
                    };
                    let auth = basic_auth(&client, &ns, &http["auth"]).await;
                    let batch: Vec<Value> = (0..1 + n % 4).map(|i| record(&ns, n + i)).collect();
                    n += batch.len() as u64;
                    if let Err(e) = post(endpoint, auth.as_deref(), &Value::from(batch).to_string()).await {
                        eprintln!("shipper: {endpoint}: {e} (fluentd would retry)");
                    }
                }
            }
        }
    }

    /// `Basic ...` from the Output's `auth.username/password`, inline values as the operator
    /// generates them (logging-operator renders them into fluentd's `<auth>`).
    async fn basic_auth(_client: &kube::Client, _ns: &str, auth: &Value) -> Option<String> {
        let user = auth["username"]["value"].as_str()?;
        let password = auth["password"]["value"].as_str()?;
        Some(format!("Basic {}", base64(format!("{user}:{password}").as_bytes())))
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// A containerd-shaped record as logging-operator's fluentd emits it.
    pub fn record(ns: &str, n: u64) -> Value {
        let pods = ["web-7d9f8b6c5-x2k4q", "web-7d9f8b6c5-m9d7z", "web-7d9f8b6c5-p3w8n"];
        let pod = pods[(n % 3) as usize];
        let paths = ["/", "/cart", "/api/items?page=2", "/healthz", "/checkout"];
        let status = [200, 200, 200, 304, 404, 500][(n % 6) as usize];
        let message = if status == 500 {
            format!(
                "error: upstream timed out after 3000ms while handling GET {}",
                paths[(n % 5) as usize]
            )
        } else {
            format!(
                "10.244.{}.{} - - \"GET {} HTTP/1.1\" {status} {} \"-\" \"Mozilla/5.0\"",
                n % 4,
                10 + n % 200,
                paths[(n % 5) as usize],
                512 + (n * 37) % 4096
            )
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        json!({
            "time": now.to_string(),
            "stream": if status == 500 { "stderr" } else { "stdout" },
            "logtag": "F",
            "message": message,
            "kubernetes": {
                "pod_name": pod,
                "namespace_name": ns,
                "pod_id": format!("6c1d9b0e-4f8a-4d2b-9e7a-{:012x}", n % 3),
                "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5", "rbac/policy": "allow"},
                "host": "node-1",
                "container_name": "nginx",
                "docker_id": format!("{:064x}", (n % 3) + 0xabcdef),
                "container_hash": "docker.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
                "container_image": "docker.io/library/nginx:1.25"
            }
        })
    }

    /// POST as fluentd's out_http does (JSON array, application/json), expecting a 2xx.
    async fn post(endpoint: &str, auth: Option<&str>, body: &str) -> Result<(), String> {
        let rest = endpoint
            .strip_prefix("http://")
            .ok_or("only http:// endpoints in the demo")?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = tokio::net::TcpStream::connect(host).await.map_err(|e| e.to_string())?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(auth) = auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        stream.write_all(body.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
        let status = response.split_whitespace().nth(1).unwrap_or("?");
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(format!("answered {}", response.lines().next().unwrap_or_default()))
        }
    }
}

/// The binaries of this package sit next to the example's own target directory.
fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/local-cluster -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .ok_or("cannot locate the target directory")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not built; run `cargo build --bins` first (make demo does)",
            bin.display()
        ))
    }
}
