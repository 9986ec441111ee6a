//! The in-cluster log-socket service.

// The relay allocates per record at hundreds of thousands of records a second; mimalloc
// relays about 20 % more than glibc malloc on the bench (and far more than musl's, which the
// static image would otherwise use).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use log_socket::config::{self, Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match config::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Crd => {
            print!("{}", log_socket::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Certs(args) => match log_socket::tls::generate(&args.out, &args.dns, args.days) {
            Ok(paths) => {
                for p in paths {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("log-socket certs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(cfg) => {
            if cfg.print_config {
                print!("{}", cfg.to_yaml());
                return ExitCode::SUCCESS;
            }
            log_socket::init_tracing(&cfg.log_level, cfg.log_format);
            match run(&cfg).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(cfg: &config::ServiceConfig) -> log_socket::Result<()> {
    use log_socket::auth::{AllowAll, StaticTokens};
    use log_socket::config::RecordPolicy;
    use log_socket::kubeauth::{LabelsOrKubernetes, PodLogAccess, TokenReviewAuthenticator};
    use log_socket::operator::{controller, sessions::ClusterSessions, OperatorConfig};
    use log_socket::rbac::LabelPolicy;
    use log_socket::relay::server::Parts;
    use log_socket::relay::NoSessions;
    use log_socket::Error;
    use std::sync::Arc;

    let ingest_auth = ingest_auth(cfg)?;
    // Operator tasks (cluster mode) stop after the relay, so leaving listeners deregister first.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut background: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let relay = Arc::new(log_socket::relay::Relay::new(cfg.relay()));
    let parts = if cfg.standalone {
        let Some(token_file) = &cfg.token_file else {
            return Err(Error::Config(
                "standalone mode needs --token-file FILE (lines of token,user): listeners must authenticate".into(),
            ));
        };
        Parts {
            authenticator: Arc::new(StaticTokens::load(token_file).map_err(Error::Config)?),
            authorizer: Arc::new(AllowAll),
            sessions: Arc::new(NoSessions),
            ingest_auth,
        }
    } else {
        let client = log_socket::kubeclient::client(cfg.kubeconfig.as_deref(), cfg.context.as_deref()).await?;
        log_socket::service::check_cluster_access(&client).await?;
        if cfg.operator {
            log_socket::service::check_logging_operator(&client, cfg.watch_namespace.as_deref()).await?;
        }
        let pod_log = || PodLogAccess::new(client.clone(), cfg.authz_cache_ttl.0);
        let labels = || LabelPolicy::counting_into(relay.metrics.invalid_rbac_labels.clone());
        let authorizer: Arc<dyn log_socket::auth::Authorizer> = match cfg.record_policy {
            RecordPolicy::Labels => Arc::new(labels()),
            RecordPolicy::Kubernetes => Arc::new(pod_log()),
            RecordPolicy::LabelsOrKubernetes => Arc::new(LabelsOrKubernetes {
                labels: labels(),
                kubernetes: pod_log(),
            }),
        };
        let operator = Arc::new(OperatorConfig {
            instance: cfg
                .instance
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "log-socket".into()),
            ingest_url: cfg.ingest_url.clone(),
            linger: cfg.tap_linger.0,
            session_ttl: cfg.session_ttl.0,
            auth_secret: cfg.output_auth_secret.clone(),
            tls_secret: cfg.output_tls_secret.clone(),
            namespace: cfg.watch_namespace.clone(),
            mode: cfg.tap_mode.into(),
        });
        let sessions = Arc::new(ClusterSessions::new(
            client.clone(),
            operator.clone(),
            cfg.tap_permission_check,
        ));
        let stopped = || {
            let mut rx = stop_rx.clone();
            async move { log_socket::until_true(&mut rx).await }
        };
        background.push(tokio::spawn(sessions.clone().renew(stopped())));
        background.push(tokio::spawn(controller::track_taps(
            client.clone(),
            operator.clone(),
            relay.clone(),
            stopped(),
        )));
        if cfg.operator && cfg.leader_election {
            let lease = log_socket::operator::lease::LeaseConfig {
                namespace: cfg
                    .lease_namespace
                    .clone()
                    .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
                    .or_else(|| cfg.watch_namespace.clone())
                    // The kubeconfig context's namespace, or the service account's in a pod.
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
                name: cfg.lease_name.clone(),
                holder: operator.instance.clone(),
                duration: cfg.lease_duration.0,
            };
            let (client, operator) = (client.clone(), operator.clone());
            background.push(tokio::spawn(log_socket::operator::lease::run_elected(
                client.clone(),
                lease,
                stopped(),
                move |mut stop| {
                    controller::run(client.clone(), operator.clone(), async move {
                        log_socket::until_true(&mut stop).await
                    })
                },
            )));
        } else if cfg.operator {
            background.push(tokio::spawn(controller::run(client.clone(), operator, stopped())));
        }
        Parts {
            authenticator: Arc::new(TokenReviewAuthenticator::new(
                client.clone(),
                cfg.token_audiences.clone(),
                cfg.token_cache_ttl.0,
            )),
            authorizer,
            sessions,
            ingest_auth,
        }
    };
    let health = log_socket::service::bind(cfg.health_addr).await?;
    let tls =
        |cert: &Option<std::path::PathBuf>, key: &Option<std::path::PathBuf>, ca: &Option<std::path::PathBuf>| match (
            cert, key,
        ) {
            (Some(cert), Some(key)) => log_socket::tls::ReloadingConfig::load(log_socket::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: ca.clone(),
            })
            .map(Some)
            .map_err(Error::Config),
            _ => Ok(None),
        };
    let sockets = log_socket::relay::server::Sockets {
        ingest: log_socket::service::bind(cfg.ingest_addr).await?,
        api: log_socket::service::bind(cfg.api_addr).await?,
        ingest_tls: tls(&cfg.ingest_tls_cert, &cfg.ingest_tls_key, &cfg.ingest_client_ca)?,
        api_tls: tls(&cfg.api_tls_cert, &cfg.api_tls_key, &None)?,
        tls_reload_interval: cfg.tls_reload_interval.0,
    };
    let result = log_socket::service::run(health, sockets, relay, parts, log_socket::service::shutdown_signal()).await;
    let _ = stop_tx.send(true);
    // One bound for all of them together: a stuck API call must not keep a stopping pod alive
    // past its termination grace period.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for task in background {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("a background task did not stop in time");
        }
    }
    result
}

fn ingest_auth(cfg: &config::ServiceConfig) -> log_socket::Result<log_socket::auth::IngestAuth> {
    use log_socket::auth::IngestAuth;
    use log_socket::Error;
    let mut auth = match &cfg.ingest_credentials {
        Some(path) => IngestAuth::load_basic(path).map_err(Error::Config)?,
        None => IngestAuth::insecure(),
    };
    if cfg.ingest_client_ca.is_some() {
        auth = auth.and_client_cert();
    }
    if auth.is_open() {
        if !cfg.ingest_insecure {
            return Err(Error::Config(
                "ingest needs client identity: --ingest-credentials FILE (username:password, sent by fluentd's http output `auth`) and/or --ingest-client-ca FILE (mTLS), or --ingest-insecure for an isolated test setup".into(),
            ));
        }
        tracing::warn!("--ingest-insecure: anyone who reaches the ingest port can inject records");
    }
    Ok(auth)
}
