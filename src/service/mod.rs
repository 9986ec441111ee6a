//! The `log-socket` process, assembled in one place.
//!
//! [`Service`] is the composition root: it wires the relay ([`crate::relay`]) to its
//! authentication and authorization ([`crate::auth`]) and, in cluster mode, to listener
//! sessions, tap tracking and the FlowTap controller ([`crate::operator`]). The binary builds it
//! from the command line with [`Service::from_config`]; tests build the same `Service` from
//! parts, so there is no second wiring. [`Service::run`] serves every port through the one
//! accept loop ([`http`]) and stops in order.
//!
//! - [`config`]: the settings (clap is their single source; `docs/configuration.md` is generated).
//! - [`http`]: the accept loop with header timeouts and TLS, for every port.
//! - [`tls`]: certificates from files, reloaded when they change; [`certs`]: `log-socket certs`.
//! - [`health`]: `/healthz` and `/readyz`, the only unauthenticated endpoints.
//! - [`checks`]: what cluster mode verifies before it serves.

pub mod certs;
pub mod check;
pub mod checks;
pub mod config;
pub mod health;
pub mod http;
pub mod settings;
pub mod tls;

use crate::auth::ingest_keys::IngestKeys;
use crate::auth::kubernetes::MetricsAccess;
use crate::auth::kubernetes::{LabelsOrKubernetes, PodLogAccess};
use crate::auth::labels::LabelPolicy;
use crate::auth::tokens::TokenReviewAuthenticator;
use crate::auth::{AllowAll, Authorizer, IngestAuth, StaticTokens};
use crate::operator::lease::LeaseConfig;
use crate::operator::sessions::ClusterSessions;
use crate::operator::{controller, lease, track, OperatorConfig};
use crate::relay::http::{Http, Parts};
use crate::relay::{NoSessions, Relay, RelayConfig};
use crate::shutdown::Shutdown;
use crate::{Error, Result};
use config::{RecordPolicy, ServiceConfig};
use health::Readiness;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls::{ReloadingConfig, TlsFiles};
use tokio::net::TcpListener;
use warp::Filter;

/// The bound sockets of the service, each port with optional TLS. Taking bound listeners
/// (rather than addresses) lets tests bind port 0.
pub struct Sockets {
    pub ingest: TcpListener,
    pub api: TcpListener,
    /// `/healthz` and `/readyz`; none in tests that do not probe them.
    pub health: Option<TcpListener>,
    pub ingest_tls: Option<Arc<ReloadingConfig>>,
    pub api_tls: Option<Arc<ReloadingConfig>>,
    /// How often TLS files are checked for changes.
    pub tls_reload_interval: Duration,
}

impl Sockets {
    /// Plain-text ingest and API sockets (tests, or TLS terminated elsewhere), no health port.
    pub fn plain(ingest: TcpListener, api: TcpListener) -> Sockets {
        Sockets {
            ingest,
            api,
            health: None,
            ingest_tls: None,
            api_tls: None,
            tls_reload_interval: Duration::from_secs(10),
        }
    }

    /// Bind the addresses of `cfg` and load its TLS files; errors name the address or file.
    pub async fn bind(cfg: &ServiceConfig) -> Result<Sockets> {
        let (ingest, api, health) = (
            bind(cfg.ingest.ingest_addr).await?,
            bind(cfg.api.api_addr).await?,
            bind(cfg.health_addr).await?,
        );
        Sockets::bound(cfg, ingest, api, health)
    }

    /// Sockets bound elsewhere (a test's network namespace) with the TLS of `cfg`.
    pub fn bound(cfg: &ServiceConfig, ingest: TcpListener, api: TcpListener, health: TcpListener) -> Result<Sockets> {
        let tls = |cert: &Option<PathBuf>, key: &Option<PathBuf>, ca: &Option<PathBuf>| match (cert, key) {
            (Some(cert), Some(key)) => ReloadingConfig::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: ca.clone(),
            })
            .map(Some)
            .map_err(Error::Config),
            _ => Ok(None),
        };
        Ok(Sockets {
            ingest,
            api,
            health: Some(health),
            ingest_tls: tls(
                &cfg.ingest.ingest_tls_cert,
                &cfg.ingest.ingest_tls_key,
                &cfg.ingest.ingest_client_ca,
            )?,
            api_tls: match cfg.api.api_tls_self_signed {
                true => Some(ReloadingConfig::self_signed(&self_signed_names()).map_err(Error::Config)?),
                false => tls(&cfg.api.api_tls_cert, &cfg.api.api_tls_key, &None)?,
            },
            tls_reload_interval: cfg.api.tls_reload_interval.0,
        })
    }
}

/// Names for a self-signed API certificate: the pod's host name (clients of the service
/// proxy do not check it; direct clients pass --insecure-skip-tls-verify or a CA of theirs).
fn self_signed_names() -> Vec<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .into_iter()
        .collect()
}

/// Bind a listening socket, naming the address in the error.
/// URLs with any `user:password@` taken out, for logs (a NATS URL may carry credentials).
pub(crate) fn without_userinfo(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}://{}", &url[..scheme], &url[at + 1..]),
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The bus `--bus` names, connected (in the background: the service starts while NATS is
/// down, and ingest answers 503 until it is up).
async fn bus(cfg: &ServiceConfig, relay: &Relay) -> Result<crate::relay::bus::Bus> {
    use crate::relay::bus::{nats, Bus};
    use crate::relay::metrics::{DropLabels, DropReason};
    match cfg.bus_settings.bus {
        config::BusKind::Embedded => Ok(Bus::Embedded),
        config::BusKind::Nats => {
            let b = &cfg.bus_settings;
            let key_file = nats_policy(cfg)?;
            let keys = crate::relay::bus::seal::BusKeys::load(&key_file).map_err(Error::Config)?;
            let options = nats::NatsOptions {
                url: b.nats_url.clone(),
                credentials: b.nats_credentials.clone(),
                ca_file: b.nats_ca_file.clone(),
                max_age: b.nats_max_age.0,
                keys: Some(Arc::new(keys)),
                max_body_bytes: relay.config.max_body_bytes,
                max_records: relay.config.max_records_per_request,
            };
            let slow_client = relay
                .metrics
                .dropped_records
                .get_or_create(&DropLabels {
                    reason: DropReason::slow_client,
                })
                .clone();
            let invalid = relay
                .metrics
                .dropped_records
                .get_or_create(&DropLabels {
                    reason: DropReason::bus_invalid,
                })
                .clone();
            let counters = nats::BusCounters {
                slow_client,
                invalid,
                timing: relay.metrics.bus.clone(),
            };
            let bus = nats::NatsBus::connect(&options, relay.config.replay, counters)
                .await
                .map_err(|e| Error::Config(format!("--bus nats: {e}")))?;
            tracing::info!(url = %without_userinfo(&cfg.bus_settings.nats_url), "bus: nats");
            Ok(Bus::Nats(Arc::new(bus)))
        }
    }
}

/// What `--bus nats` needs before anything starts: a bus key (every mode) and, in cluster mode,
/// NATS credentials and TLS unless `--nats-insecure`. Returns the bus key file, and whether
/// NATS is open (insecure).
fn nats_policy_checked(cfg: &ServiceConfig) -> Result<(std::path::PathBuf, bool)> {
    let b = &cfg.bus_settings;
    let Some(key_file) = &b.bus_key_file else {
        return Err(Error::Config(
            "--bus nats needs --bus-key-file FILE: bus messages are sealed with it, so whoever reaches NATS can neither read a tap's records nor forge one. Give every replica the same keys: kubectl -n log-socket create secret generic log-socket-bus-key --from-literal=keys=\"$(openssl rand -hex 32)\"".into(),
        ));
    };
    let tls = b.nats_ca_file.is_some() || b.nats_url.split(',').all(|u| u.trim().starts_with("tls://"));
    // A credentials file, or a user and password in the URL (from a Secret: the chart's
    // bus.nats.urlSecret).
    let credentials = b.nats_credentials.is_some() || without_userinfo(&b.nats_url) != b.nats_url;
    let secured = credentials && tls;
    let open = !cfg.standalone && !secured;
    if open && !b.nats_insecure {
        return Err(Error::Config(format!(
            "--bus nats in cluster mode needs NATS credentials and TLS ({}): without them any pod that reaches NATS can delete or squat the taps' streams. Give --nats-credentials FILE or a user in the URL (of an account of log-socket's own, allowed only logsocket.> and the JetStream API; see docs/security.md#the-nats-bus) and a tls:// URL or --nats-ca-file FILE, or --nats-insecure for an isolated test setup",
            match (credentials, tls) {
                (false, false) => "neither is set",
                (false, true) => "no --nats-credentials",
                _ => "no TLS: use a tls:// URL or --nats-ca-file",
            }
        )));
    }
    Ok((key_file.clone(), open))
}

/// [`nats_policy_checked`], warning at start and every hour when NATS is open.
fn nats_policy(cfg: &ServiceConfig) -> Result<std::path::PathBuf> {
    let (key_file, open) = nats_policy_checked(cfg)?;
    if open {
        let warn = || {
            tracing::warn!("--nats-insecure: whoever reaches NATS can delete or squat the taps' streams (messages stay sealed: nobody without the bus key reads or forges records)")
        };
        warn();
        tokio::spawn(async move {
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            hourly.tick().await;
            loop {
                hourly.tick().await;
                warn();
            }
        });
    }
    Ok(key_file)
}

pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Whether and how this process runs the FlowTap controller.
pub enum Controller {
    /// Sessions and tap tracking only (another process runs the controller).
    Off,
    /// Always (a single replica).
    Always,
    /// Only while holding this Lease.
    Elected(LeaseConfig),
}

/// The cluster side of a service: listener sessions on FlowTaps, tap tracking, and the
/// controller.
pub struct Cluster {
    pub client: kube::Client,
    pub operator: Arc<OperatorConfig>,
    /// Whether a listener must be allowed to `get` the flow it taps.
    pub tap_permission_check: bool,
    pub controller: Controller,
}

/// One log-socket process: a relay and, in cluster mode, the operator around it.
pub struct Service {
    relay: Arc<Relay>,
    parts: Parts,
    cluster: Option<(Cluster, Arc<ClusterSessions>)>,
}

impl Service {
    /// A relay whose listeners and ingest are checked by `parts` (standalone mode, tests).
    pub fn relay(config: RelayConfig, parts: Parts) -> Service {
        Service::assemble(Relay::new(config), parts, None)
    }

    /// A service around `relay` (built with its bus), checked by `parts` (standalone mode, tests).
    pub fn with_relay(relay: Relay, parts: Parts) -> Service {
        Service::assemble(relay, parts, None)
    }

    /// A relay whose listeners register sessions on FlowTaps, with tap tracking and (as
    /// `cluster.controller` says) the controller. `parts.sessions` is replaced by the cluster's.
    pub fn cluster(config: RelayConfig, parts: Parts, cluster: Cluster) -> Service {
        Service::assemble(Relay::new(config), parts, Some(cluster))
    }

    fn assemble(relay: Relay, mut parts: Parts, cluster: Option<Cluster>) -> Service {
        let cluster = cluster.map(|mut cluster| {
            // The controller counts into the registry this relay serves.
            cluster.operator = Arc::new(OperatorConfig {
                metrics: relay.metrics.controller.clone(),
                ..(*cluster.operator).clone()
            });
            let sessions = Arc::new(ClusterSessions::new(
                cluster.client.clone(),
                cluster.operator.clone(),
                cluster.tap_permission_check,
            ));
            sessions.set_bus(relay.bus.clone());
            parts.sessions = sessions.clone();
            (cluster, sessions)
        });
        Service {
            relay: Arc::new(relay),
            parts,
            cluster,
        }
    }

    /// The service `log-socket run` describes: standalone, or in cluster mode after checking
    /// the cluster (the FlowTap CRD, logging-operator's CRDs with `--operator`).
    pub async fn from_config(cfg: &ServiceConfig) -> Result<Service> {
        let relay_config = cfg.relay();
        if cfg.bus_settings.bus == config::BusKind::Nats {
            // Refused before anything starts (the warning of --nats-insecure comes with the bus).
            nats_policy_checked(cfg)?;
        }
        if !cfg.standalone && cfg.ingest.ingest_credentials.is_some() {
            return Err(Error::Config(
                "--ingest-credentials is for standalone mode: one shared credential would let any tenant who can read a generated Output post records into every other flow's stream. In cluster mode use --ingest-key-file FILE (per-flow credentials; see docs/security.md)".into(),
            ));
        }
        // A client certificate is fluentd's, the same for every flow: it binds to no path.
        if !cfg.standalone && cfg.ingest.ingest_key_file.is_none() && !cfg.ingest.ingest_insecure {
            return Err(Error::Config(
                "cluster mode needs --ingest-key-file FILE: each generated output then carries its own flow's credential, so no tenant can post into another's stream (a client certificate, --ingest-client-ca, is fluentd's and binds to no flow; it can be required on top). Create the keys with: kubectl -n log-socket create secret generic log-socket-ingest-key --from-literal=keys=\"$(openssl rand -hex 32)\"".into(),
            ));
        }
        if cfg.standalone && cfg.ingest.ingest_key_file.is_some() {
            return Err(Error::Config(
                "--ingest-key-file is for cluster mode, where the operator gives each generated output its flow's credential; standalone mode uses --ingest-credentials FILE".into(),
            ));
        }
        let ingest_auth = ingest_auth(cfg)?;
        if cfg.standalone {
            let Some(token_file) = &cfg.api.token_file else {
                return Err(Error::Config(
                    "standalone mode needs --token-file FILE (lines of token,user): listeners must authenticate".into(),
                ));
            };
            let parts = Parts {
                authenticator: Arc::new(StaticTokens::load(token_file).map_err(Error::Config)?),
                authorizer: Arc::new(AllowAll),
                sessions: Arc::new(NoSessions),
                ingest_auth,
            };
            let mut relay = Relay::new(relay_config);
            relay.bus = bus(cfg, &relay).await?;
            return Ok(Service::with_relay(relay, parts));
        }
        let client = crate::k8s::client::client(cfg.kubeconfig.as_deref(), cfg.context.as_deref()).await?;
        checks::check_cluster_access(&client).await?;
        if cfg.operator_settings.operator {
            checks::check_logging_operator(&client, cfg.operator_settings.watch_namespace.as_deref()).await?;
        }
        let mut relay = Relay::new(relay_config);
        relay.bus = bus(cfg, &relay).await?;
        let pod_log = || PodLogAccess::new(client.clone(), cfg.policy.authz_cache_ttl.0);
        let labels = || {
            LabelPolicy::counting_into(relay.metrics.invalid_rbac_labels.clone())
                .with_flattened_keys(cfg.policy.label_policy_flattened_keys)
        };
        let authorizer: Arc<dyn Authorizer> = match cfg.policy.record_policy {
            RecordPolicy::Labels => Arc::new(labels()),
            RecordPolicy::Kubernetes => Arc::new(pod_log()),
            RecordPolicy::LabelsOrKubernetes => Arc::new(LabelsOrKubernetes {
                labels: labels(),
                kubernetes: pod_log(),
            }),
        };
        let operator = Arc::new(OperatorConfig {
            ingest_keys: ingest_auth.keys().cloned(),
            ..operator_config(cfg)
        });
        let controller = match (cfg.operator_settings.operator, cfg.operator_settings.leader_election) {
            (false, _) => Controller::Off,
            (true, false) => Controller::Always,
            (true, true) => Controller::Elected(LeaseConfig {
                namespace: cfg
                    .operator_settings
                    .lease_namespace
                    .clone()
                    .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
                    .or_else(|| cfg.operator_settings.watch_namespace.clone())
                    // The kubeconfig context's namespace, or the service account's in a pod.
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
                name: cfg.operator_settings.lease_name.clone(),
                holder: operator.instance.clone(),
                duration: cfg.operator_settings.lease_duration.0,
            }),
        };
        let parts = Parts {
            authenticator: Arc::new(TokenReviewAuthenticator::new(
                client.clone(),
                cfg.api.token_audiences.clone(),
                cfg.api.token_cache_ttl.0,
            )),
            authorizer,
            sessions: Arc::new(NoSessions),
            ingest_auth,
        };
        let cluster = Cluster {
            client,
            operator,
            tap_permission_check: cfg.policy.tap_permission_check,
            controller,
        };
        // The relay built above, whose metrics the label policy counts invalid labels into.
        Ok(Service::assemble(relay, parts, Some(cluster)))
    }

    /// The relay this service serves (tests and benches read its metrics and taps).
    pub fn relay_handle(&self) -> Arc<Relay> {
        self.relay.clone()
    }

    /// Serve every port until `shutdown` is cancelled, then stop in order: ingest finishes the
    /// requests in flight, listeners get what was accepted and a close frame (and deregister),
    /// then the operator's tasks stop (bounded, so a stuck API call cannot keep a stopping pod
    /// alive past its grace period), and health goes last.
    pub async fn run(self, sockets: Sockets, shutdown: Shutdown) -> Result<()> {
        let Service { relay, parts, cluster } = self;
        let timing = http::Timing {
            header_timeout: relay.config.header_timeout,
            tls_reload_interval: sockets.tls_reload_interval,
        };
        let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            ingest = %addr(&sockets.ingest),
            api = %addr(&sockets.api),
            health = %sockets.health.as_ref().map(addr).unwrap_or_default(),
            ingest_auth = ?parts.ingest_auth,
            "log-socket ready"
        );
        // Operator tasks stop after the relay, so leaving listeners deregister first.
        let operator_stop = Shutdown::new();
        let metrics_access = match &cluster {
            Some((c, _)) => MetricsAccess::subject_access_review(c.client.clone()),
            None => MetricsAccess::default(),
        };
        let background = match cluster {
            Some((cluster, sessions)) => start_cluster(cluster, sessions, relay.clone(), &operator_stop),
            None => vec![],
        };
        let ready = Readiness::default();
        ready.set(true);
        let health_stop = Shutdown::new();
        let health = sockets.health.map(|listener| {
            let port = http::Port {
                listener,
                tls: None,
                routes: health::routes(ready.clone()).map(warp::Reply::into_response).boxed(),
            };
            tokio::spawn(http::serve(port, timing, health_stop.clone()))
        });
        let reaper = tokio::spawn(reap(relay.clone(), shutdown.clone()));
        let routes = Http::new(relay, parts, metrics_access);
        let ingest = http::Port {
            listener: sockets.ingest,
            tls: sockets.ingest_tls,
            routes: routes.ingest_routes(),
        };
        let api = http::Port {
            listener: sockets.api,
            tls: sockets.api_tls,
            routes: routes.api_routes(),
        };
        let api = tokio::spawn(http::serve(api, timing, shutdown.clone()));
        http::serve(ingest, timing, shutdown.clone()).await;
        tracing::info!("shutting down: ingest finished, closing listeners");
        ready.set(false);
        // Ingest has drained: everything accepted is queued for listeners. Now let them go.
        let _ = api.await;
        let _ = reaper.await;
        routes.close_listeners().await;
        operator_stop.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for task in background {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a background task did not stop in time");
            }
        }
        health_stop.cancel();
        if let Some(health) = health {
            let _ = health.await;
        }
        tracing::info!("log-socket stopped");
        Ok(())
    }
}

/// Start the cluster side: session renewal, tap tracking, and the controller as configured.
fn start_cluster(
    cluster: Cluster,
    sessions: Arc<ClusterSessions>,
    relay: Arc<Relay>,
    stop: &Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Cluster {
        client,
        operator,
        controller,
        ..
    } = cluster;
    let stopped = || stop.clone().cancelled_owned();
    let tap_cache = sessions.tap_cache_writer();
    let mut tasks = vec![
        tokio::spawn(sessions.renew(stopped())),
        tokio::spawn(track::track_taps(
            client.clone(),
            operator.clone(),
            relay,
            tap_cache,
            stopped(),
        )),
    ];
    match controller {
        Controller::Off => {}
        Controller::Always => tasks.push(tokio::spawn(controller::run(client, operator, stopped()))),
        Controller::Elected(lease) => tasks.push(tokio::spawn(lease::run_elected(
            client.clone(),
            lease,
            stopped(),
            move |stop: Shutdown| controller::run(client.clone(), operator.clone(), stop.cancelled_owned()),
        ))),
    }
    tasks
}

/// Remove taps without listeners once their linger period is over.
async fn reap(relay: Arc<Relay>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => { relay.reap(Instant::now()); }
            _ = shutdown.cancelled() => break,
        }
    }
}

/// The operator's settings from the service's.
fn operator_config(cfg: &ServiceConfig) -> OperatorConfig {
    OperatorConfig {
        instance: cfg
            .operator_settings
            .instance
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "log-socket".into()),
        ingest_url: cfg.operator_settings.ingest_url.clone(),
        linger: cfg.taps.tap_linger.0,
        warm_linger: cfg.taps.warm_linger.0,
        warm_max_bytes_per_second: cfg.taps.warm_max_bytes_per_second,
        config_change_interval: cfg.taps.config_change_interval.0,
        session_ttl: cfg.operator_settings.session_ttl.0,
        ingest_keys: None,
        tls_secret: cfg.operator_settings.output_tls_secret.clone(),
        namespace: cfg.operator_settings.watch_namespace.clone(),
        mode: cfg.operator_settings.tap_mode,
        output_accept_timeout: cfg.operator_settings.output_accept_timeout.0,
        sweep_interval: Duration::from_secs(60),
        config_retry: crate::operator::trial::CONFIG_RETRY,
        max_tap_buffer_bytes: cfg.operator_settings.max_tap_buffer_bytes,
        max_request_bytes: cfg.ingest.max_body_bytes as u64,
        limits: crate::operator::Limits {
            taps_per_user: cfg.taps.max_taps_per_user.max(1),
            taps_per_namespace: cfg.taps.max_taps_per_namespace.max(1),
            sessions_per_tap: cfg.taps.max_sessions_per_tap.max(1),
        },
        // Replaced by the relay's own when the service is assembled.
        metrics: Default::default(),
    }
}

/// Who may send records, from `--ingest-key-file`, `--ingest-credentials`, `--ingest-client-ca` and
/// `--ingest-insecure`; refuses an open ingest port unless asked for explicitly.
fn ingest_auth(cfg: &ServiceConfig) -> Result<IngestAuth> {
    let mut auth = match (&cfg.ingest.ingest_credentials, &cfg.ingest.ingest_key_file) {
        (Some(path), _) => IngestAuth::load_basic(path).map_err(Error::Config)?,
        (None, Some(path)) => IngestAuth::per_flow(Arc::new(IngestKeys::load(path).map_err(Error::Config)?)),
        (None, None) => IngestAuth::insecure(),
    };
    if cfg.ingest.ingest_client_ca.is_some() {
        auth = auth.and_client_cert();
    }
    if auth.is_open() {
        if !cfg.ingest.ingest_insecure {
            return Err(Error::Config(
                "ingest needs client identity: --ingest-key-file FILE (cluster mode: per-flow credentials signed with these keys) or --ingest-credentials FILE (standalone: username:password, sent by fluentd's http output `auth`), and/or --ingest-client-ca FILE (mTLS), or --ingest-insecure for an isolated test setup".into(),
            ));
        }
        tracing::warn!("--ingest-insecure: anyone who reaches the ingest port can inject records");
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_are_logged_without_their_credentials() {
        assert_eq!(
            without_userinfo("nats://bob:s3cret@nats-1:4222,tls://nats-2:4222"),
            "nats://nats-1:4222,tls://nats-2:4222"
        );
    }
}
