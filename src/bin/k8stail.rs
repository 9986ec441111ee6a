//! k8stail: stream a logging-operator flow to the terminal.

use log_socket::k8stail::{self, Cli};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_args();
    // Debug logs (of kube, hyper, rustls) only when asked for: RUST_LOG=debug k8stail ...
    if std::env::var_os("RUST_LOG").is_some() {
        log_socket::init_tracing("warn", log_socket::service::config::LogFormat::Text);
    }
    let mut out = std::io::stdout().lock();
    match k8stail::run(cli, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`k8stail ... | head`): nothing left to say.
        Err(log_socket::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        // Errors may quote the relay or the API server: escaped to one line, like records.
        Err(e @ log_socket::Error::Usage(_)) => {
            eprintln!("k8stail: {}", k8stail::one_line(&e.to_string()));
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("k8stail: {}", k8stail::one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
