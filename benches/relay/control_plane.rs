//! The control plane, against the real API server (needs `make test-env`): what a listener's
//! connect and disconnect cost, in time and in API requests, and what idle taps cost.

use log_socket::auth::{AllowAll, IngestAuth};
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use log_socket::service::{Service, Sockets};
use log_socket::shutdown::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{control_plane, logging_operator};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every request log-socket's own client makes, as `METHOD path` (`WATCH` for watches): the
/// exact figure, with nothing of the bench or of logging-operator's stand-in in it.
#[derive(Clone, Default)]
pub struct RequestLog(Arc<std::sync::Mutex<Vec<String>>>);

impl RequestLog {
    pub fn client(&self, config: kube::Config) -> kube::Client {
        let log = self.clone();
        let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            let query = req.uri().query().unwrap_or_default();
            let method = if query.contains("watch=true") || query.contains("watch=1") {
                "WATCH".to_owned()
            } else {
                req.method().to_string()
            };
            log.0.lock().unwrap().push(format!("{method} {}", req.uri().path()));
            req
        });
        kube::client::ClientBuilder::try_from(config)
            .expect("client from kubeconfig")
            .with_layer(&layer)
            .build()
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// With `LOG_SOCKET_BENCH_BREAKDOWN=1`, which requests a figure is made of.
pub fn print_breakdown(what: &str, requests: &[String]) {
    if std::env::var_os("LOG_SOCKET_BENCH_BREAKDOWN").is_none() {
        return;
    }
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for r in requests {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    println!("{what}: {} requests", requests.len());
    for (r, n) in counts {
        println!("  {n:>5}  {r}");
    }
    if std::env::var_os("LOG_SOCKET_BENCH_BREAKDOWN").is_some_and(|v| v == "order") {
        for r in requests {
            println!("         {r}");
        }
    }
}

/// A real control plane with the CRDs, the Flow `flow` in `default`, logging-operator's
/// stand-in (no fluentd dry runs: the benches measure the API server's side), a client for
/// log-socket that counts its requests, and the admin's token for listeners.
pub struct Bench {
    pub cp: control_plane::ControlPlane,
    pub client: kube::Client,
    pub flows: kube::api::Api<kube::api::DynamicObject>,
    pub logging_operator: logging_operator::LoggingOperator,
    pub log: RequestLog,
    pub service_client: kube::Client,
    pub admin_token: String,
}

pub async fn setup(flow_name: &str) -> Result<Bench, String> {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let dir = std::env::temp_dir().join(format!("log-socket-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cp = control_plane::start(&dir)?;
    cp.wait_ready(Duration::from_secs(90)).await?;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    cp.install_crds(&control_plane::crd_files(repo)).await?;
    let client = cp.client().await;
    let flows = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("logging.banzaicloud.io", "v1beta1", "Flow")),
    );
    let flow: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Flow",
        "metadata": {"name": flow_name}, "spec": {"match": [{"select": {}}], "localOutputRefs": ["loki"]}
    }))
    .unwrap();
    // A CRD is served a moment after it is Established.
    let mut created = Err(String::new());
    for _ in 0..50 {
        created = flows
            .create(&PostParams::default(), &flow)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if created.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    created?;
    // logging-operator's part: the Logging, output validation, configuration checks.
    let logging_operator = logging_operator::start(&client, "default").await;
    logging_operator.behaviour.lock().unwrap().dry_run = false;
    // log-socket gets a client of its own, so that only its requests are counted.
    let log = RequestLog::default();
    let service_client = log.client(cp.config().await);
    let kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cp.kubeconfig).map_err(|e| e.to_string())?).unwrap();
    let admin_token = kubeconfig["users"][0]["user"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    Ok(Bench {
        cp,
        client,
        flows,
        logging_operator,
        log,
        service_client,
        admin_token,
    })
}

/// The service as the binary assembles it (relay, sessions, tap tracking, the controller),
/// listeners authenticated by TokenReview and allowed every record, fluentd's ingest as
/// `fluentd:s3cret`; its API and ingest addresses.
pub async fn start_service(
    service_client: kube::Client,
    config: Arc<log_socket::operator::OperatorConfig>,
) -> (std::net::SocketAddr, std::net::SocketAddr, Shutdown) {
    use log_socket::auth::tokens::TokenReviewAuthenticator;
    use log_socket::service::{Cluster, Controller};
    let parts = Parts {
        authenticator: Arc::new(TokenReviewAuthenticator::new(
            service_client.clone(),
            vec![],
            Duration::from_secs(10),
        )),
        authorizer: Arc::new(AllowAll),
        sessions: Arc::new(NoSessions),
        ingest_auth: IngestAuth::basic("fluentd", "s3cret"),
    };
    let sockets = Sockets::plain(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let api = sockets.api.local_addr().unwrap();
    let ingest = sockets.ingest.local_addr().unwrap();
    // The service as the binary assembles it: relay, sessions, tap tracking, the controller.
    let cluster = Cluster {
        client: service_client,
        operator: config,
        tap_permission_check: true,
        controller: Controller::Always,
    };
    let stop = Shutdown::new();
    tokio::spawn(Service::cluster(RelayConfig::default(), parts, cluster).run(sockets, stop.clone()));
    (api, ingest, stop)
}

/// Listener connect → FlowTap Active with its Output created and the Flow patched, and
/// disconnect → Flow restored, `cycles` times; the API requests each cycle costs.
pub async fn control_plane_bench(cycles: u32) -> Result<(), String> {
    use kube::api::{Api, DynamicObject, PostParams};
    use log_socket::k8s::flowtap::{FlowTap, Phase};
    use log_socket::operator::OperatorConfig;

    let Bench {
        cp: _cp,
        client,
        flows,
        logging_operator: _lo,
        log,
        service_client,
        admin_token,
    } = setup("web").await?;
    let config = Arc::new(OperatorConfig {
        linger: Duration::ZERO,
        namespace: Some("default".into()),
        ..OperatorConfig::new("bench", "http://log-socket.bench.svc:10000")
    });
    let (api, _ingest, stop) = start_service(service_client, config).await;
    let taps: Api<FlowTap> = Api::namespaced(client.clone(), "default");
    let refs = |f: &DynamicObject| f.data["spec"]["localOutputRefs"].clone();

    let (mut to_active, mut to_restored, mut requests) = (vec![], vec![], vec![]);
    for _ in 0..cycles {
        log.take();
        let start = Instant::now();
        let mut req = format!("ws://{api}/flow/default/web").into_client_request().unwrap();
        req.headers_mut()
            .insert("x-authorization", admin_token.parse().unwrap());
        req.headers_mut()
            .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
        loop {
            let active = taps
                .get_opt("flow-web")
                .await
                .ok()
                .flatten()
                .and_then(|t| t.status?.phase)
                == Some(Phase::Active);
            if active && refs(&flows.get("web").await.unwrap()).as_array().map_or(0, |a| a.len()) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        to_active.push(start.elapsed());
        let left = Instant::now();
        drop(ws);
        while taps.get_opt("flow-web").await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        to_restored.push(left.elapsed());
        assert_eq!(refs(&flows.get("web").await.unwrap()), serde_json::json!(["loki"]));
        // Give the controller's last writes (finalizer, status) time to land in the count.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let made = log.take();
        print_breakdown("one cycle", &made);
        requests.push(made.len() as f64);
    }

    // Steady state: persistent taps nobody listens to, once they are Active. Only what time
    // brings should cost requests then (the controller's safety-net pass every 10 minutes).
    // `LOG_SOCKET_BENCH_IDLE_TAPS=0` skips this part (a quicker look at the cycle).
    let idle_taps: usize = std::env::var("LOG_SOCKET_BENCH_IDLE_TAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let flows_spec = |i: usize| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "logging.banzaicloud.io/v1beta1", "kind": "Flow",
            "metadata": {"name": format!("idle-{i}")}, "spec": {"match": [{"select": {}}], "localOutputRefs": ["loki"]}
        }))
        .unwrap()
    };
    for i in 0..idle_taps {
        flows
            .create(&PostParams::default(), &flows_spec(i))
            .await
            .map_err(|e| e.to_string())?;
        let tap: FlowTap = serde_json::from_value(serde_json::json!({
            "apiVersion": "logsocket.dev/v1alpha1", "kind": "FlowTap",
            "metadata": {"name": format!("idle-{i}")},
            "spec": {"flowRef": {"kind": "Flow", "name": format!("idle-{i}")}, "persistent": true},
        }))
        .unwrap();
        taps.create(&PostParams::default(), &tap)
            .await
            .map_err(|e| e.to_string())?;
    }
    let settle = Instant::now();
    loop {
        let list = taps.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let active = list
            .items
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active))
            .count();
        if active >= idle_taps {
            break;
        }
        if settle.elapsed() > Duration::from_secs(300) {
            return Err(format!("only {active} of {idle_taps} idle taps became Active"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_active = settle.elapsed();
    let minute = if idle_taps > 0 { 60 } else { 0 };
    tokio::time::sleep(Duration::from_secs(minute / 6)).await;
    log.take();
    tokio::time::sleep(Duration::from_secs(minute)).await;
    let made = log.take();
    print_breakdown("one idle minute", &made);
    let idle_per_minute = made.len() as f64;
    stop.cancel();
    control_plane::teardown();
    let ms = |d: &[Duration]| {
        let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (a50, amax) = ms(&to_active);
    let (r50, rmax) = ms(&to_restored);
    // The first cycle also starts the watches and asks TokenReview and SubjectAccessReview
    // (cached for 10 s afterwards); the others are what a returning listener costs.
    let first = requests[0];
    let mut rest: Vec<f64> = requests[1..].to_vec();
    rest.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let steady = rest.get(rest.len() / 2).copied().unwrap_or(first);
    println!("| control plane ({cycles} cycles, real kube-apiserver) | median | max |\n|---|---|---|");
    println!("| listener connect → FlowTap Active, Output created, Flow patched | {a50:.0} ms | {amax:.0} ms |");
    println!("| last listener leaves (linger 0) → FlowTap gone, Flow restored | {r50:.0} ms | {rmax:.0} ms |");
    println!(
        "API requests per connect + disconnect cycle, counted by log-socket's own client (relay sessions, controller, TokenReview, SubjectAccessReview): {steady:.0} (median; target 12), the first one {first:.0} (watches started, the token and the permission checked)"
    );
    println!(
        "{idle_taps} persistent taps with no listener: all Active {:.1} s after they were created; then {idle_per_minute:.0} API requests per minute in steady state\n",
        all_active.as_secs_f64()
    );
    Ok(())
}
