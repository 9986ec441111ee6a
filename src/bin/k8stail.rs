//! k8stail: stream logging-operator flows to the terminal (see `log_socket::k8stail`).

fn main() -> std::process::ExitCode {
    log_socket::k8stail::main()
}
