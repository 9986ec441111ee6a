//! The in-cluster log-socket service.

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
    if cfg.standalone {
        return standalone(cfg).await;
    }
    let client = log_socket::kubeclient::client(cfg.kubeconfig.as_deref(), cfg.context.as_deref()).await?;
    let health = log_socket::service::bind(cfg.health_addr).await?;
    log_socket::service::run(health, client, log_socket::service::shutdown_signal()).await
}

async fn standalone(cfg: &config::ServiceConfig) -> log_socket::Result<()> {
    use log_socket::auth::{AllowAll, IngestAuth, StaticTokens};
    use log_socket::relay::server::{Parts, Sockets};
    use log_socket::relay::{NoSessions, Relay};
    use log_socket::Error;
    use std::sync::Arc;

    let Some(token_file) = &cfg.token_file else {
        return Err(Error::Config(
            "standalone mode needs --token-file FILE (lines of token,user): listeners must authenticate".into(),
        ));
    };
    let tokens = StaticTokens::load(token_file).map_err(Error::Config)?;
    let ingest_auth = match (&cfg.ingest_credentials, cfg.ingest_insecure) {
        (Some(path), _) => IngestAuth::load(path).map_err(Error::Config)?,
        (None, true) => {
            tracing::warn!("--ingest-insecure: anyone who reaches the ingest port can inject records");
            IngestAuth::Insecure
        }
        (None, false) => {
            return Err(Error::Config(
                "ingest needs credentials: --ingest-credentials FILE (username:password, sent by fluentd's http output `auth`), or --ingest-insecure for an isolated test setup".into(),
            ))
        }
    };
    let health = log_socket::service::bind(cfg.health_addr).await?;
    let sockets = Sockets {
        ingest: log_socket::service::bind(cfg.ingest_addr).await?,
        api: log_socket::service::bind(cfg.api_addr).await?,
    };
    let parts = Parts {
        authenticator: Arc::new(tokens),
        authorizer: Arc::new(AllowAll),
        sessions: Arc::new(NoSessions),
        ingest_auth,
    };
    let relay = Arc::new(Relay::new(cfg.relay()));
    log_socket::service::run_standalone(health, sockets, relay, parts, log_socket::service::shutdown_signal()).await
}
