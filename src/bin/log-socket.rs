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
    let client = log_socket::kubeclient::client(cfg.kubeconfig.as_deref(), cfg.context.as_deref()).await?;
    let health = log_socket::service::bind(cfg.health_addr).await?;
    log_socket::service::run(health, client, log_socket::service::shutdown_signal()).await
}
