//! `kubectl flowtail`: k8stail as a kubectl plugin (kubectl runs `kubectl-flowtail` from PATH).

fn main() -> std::process::ExitCode {
    log_socket::k8stail::main()
}
