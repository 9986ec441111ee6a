//! The in-cluster log-socket service: parse the command line, then hand over to the library.

// The relay allocates per record at hundreds of thousands of records a second; mimalloc
// relays about 20 % more than glibc malloc on the bench (and far more than musl's, which the
// static image would otherwise use).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use log_socket::service::config::{self, Command};
use log_socket::service::{Service, Sockets};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match config::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Crd => print!("{}", log_socket::k8s::flowtap::crd_yaml()),
        Command::ConfigReference => print!("{}", config::reference_markdown()),
        Command::Certs(args) => match log_socket::service::certs::generate(&args.out, &args.dns, args.days) {
            Ok(paths) => paths.iter().for_each(|p| println!("{}", p.display())),
            Err(e) => {
                eprintln!("log-socket certs: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::IngestCredential(args) => {
            match log_socket::auth::ingest_keys::credential_for(&args.path, &args.ingest_key_file) {
                Ok((user, password)) => println!("{user}\n{password}"),
                Err(e) => {
                    eprintln!("log-socket ingest-credential: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Command::LabelKey(args) => {
            use log_socket::auth::labels::{group_key, user_key};
            for user in &args.users {
                println!("rbac/{}", user_key(user));
            }
            for group in &args.groups {
                println!("rbac/{}", group_key(group));
            }
        }
        Command::RemoveTaps(args) => {
            let removed = async {
                let client = log_socket::k8s::client::client(args.kubeconfig.as_deref(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                log_socket::operator::remove_taps::remove_taps(client, args.namespace.as_deref(), args.timeout.0).await
            };
            match removed.await {
                Ok(n) => println!("removed {n} FlowTaps; every flow is as it was"),
                Err(e) => {
                    eprintln!("log-socket remove-taps: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Command::Check(args) => {
            let (lines, ok) = log_socket::service::check::check(&args.ready_url, args.kubeconfig.as_deref()).await;
            lines.iter().for_each(|l| println!("{l}"));
            if !ok {
                return ExitCode::FAILURE;
            }
        }
        Command::Run(cfg) if cfg.print_config => print!("{}", cfg.to_yaml()),
        Command::Run(cfg) => {
            log_socket::telemetry::init_tracing(&cfg.log_level, cfg.log_format);
            let shutdown = log_socket::shutdown::on_signal();
            let run = async {
                Service::from_config(&cfg)
                    .await?
                    .run(Sockets::bind(&cfg).await?, shutdown)
                    .await
            };
            if let Err(e) = run.await {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
