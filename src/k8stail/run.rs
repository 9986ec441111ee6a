//! The program: parse, set up logging and the runtime, check everything that can be checked
//! before connecting, then follow the flows (or list taps, or print completions). Exit codes:
//! 2 on usage errors, 1 when the stream cannot go on, 0 otherwise (a closed pipe included).

use super::{args, complete, connect, one_line, render, select, stream, taps, Cli, KubeArgs, Named, TailCommand};
use crate::protocol::TapKey;
use crate::{Error, Result};
use std::io::{IsTerminal, Write};

/// The whole program (both binaries, `k8stail` and `kubectl-flowtail`, are this): exit 2 on
/// usage errors, 1 when the stream cannot go on, 0 otherwise (a closed pipe included).
pub fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    // A shell asking for completions (COMPLETE=bash ...) is answered before anything else.
    complete::handle_request();
    let cli = Cli::parse_args();
    // Diagnostics only when asked for: -v N, or RUST_LOG for the full control.
    let level = match cli.tail.verbosity {
        0 => None,
        1..=2 => Some("log_socket=info"),
        3..=5 => Some("log_socket=debug"),
        6..=7 => Some("log_socket=debug,kube=debug"),
        _ => Some("trace"),
    };
    if std::env::var_os("RUST_LOG").is_some() || level.is_some() {
        crate::telemetry::init_tracing(level.unwrap_or("warn"), crate::telemetry::LogFormat::Text);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("k8stail: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let result = runtime.block_on(run(cli, &mut out));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`k8stail ... | head`): nothing left to say.
        Err(crate::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        // Errors may quote the relay or the API server: escaped to one line, like records.
        // Found before connecting (a flow, a regex, a zone...): said as clap says usage errors.
        Err(crate::Error::Usage(message)) => {
            let _ = args::usage_error(&one_line(&message)).print();
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("k8stail: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Run `k8stail` with parsed arguments, writing records to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    match cli.command {
        Some(TailCommand::Taps(args)) => taps::taps(&cli.kube, &args, out).await,
        Some(TailCommand::Completions { shell }) => complete::script(shell, out),
        None => follow(&cli, out).await,
    }
}

/// Everything checked before connecting: a bad flow, regex, duration, template or zone is a
/// usage error (exit 2), not a failed connection.
async fn follow(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    let args = &cli.tail;
    if args.targets.is_empty() {
        return Err(Error::Usage(
            "name the flow to follow: k8stail NAME, NAMESPACE/NAME or clusterflow/NAMESPACE/NAME (`k8stail taps -A` lists the tapped ones; see k8stail --help)".into(),
        ));
    }
    let named = args
        .targets
        .iter()
        .map(|t| Named::parse(t, args.clusterflow))
        .collect::<Result<Vec<_>, String>>()
        .map_err(Error::Usage)?;
    if let Some(ns) = &args.namespace {
        Named::parse(&format!("{ns}/x"), false)
            .map_err(|_| Error::Usage(format!("-n {ns:?} is not a namespace name")))?;
    }
    if args.resume_file.is_some() && named.len() > 1 {
        return Err(Error::Usage(
            "--resume-file follows one flow: name one, or run k8stail once per flow".into(),
        ));
    }
    let selection = select::Selection::new(args).map_err(Error::Usage)?;
    let stdout_tty = std::io::stdout().is_terminal();
    let renderer = render::Renderer::new(args, named.len() > 1, stdout_tty).map_err(Error::Usage)?;
    let default_namespace = match (&args.namespace, named.iter().any(|n| n.namespace.is_none())) {
        (Some(ns), _) => ns.clone(),
        (None, false) => String::new(),
        (None, true) => context_namespace(&cli.kube).await?,
    };
    let mut targets: Vec<TapKey> = vec![];
    for n in named {
        let t = n.in_namespace(&default_namespace);
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let (route, token) = connect::route(&cli.kube, args).await?;
    let preflow = preflow_client(cli, &route, stdout_tty).await;
    let out = std::cell::RefCell::new(out);
    let follow = stream::Follow {
        route: &route,
        token: &token,
        args,
        selection: &selection,
        renderer: &renderer,
        out: &out,
        preflow: preflow.as_ref(),
    };
    // One stream per flow, polled together on this task, writing whole lines to one stdout;
    // the first that cannot go on ends them all.
    futures::future::try_join_all(targets.iter().map(|t| stream::follow(&follow, t))).await?;
    Ok(())
}

/// The API client pre-flow lines are read with (the user's own kubeconfig), when they are
/// wanted: `--preflow always`, or `auto` on a terminal; never with `--no-follow`.
async fn preflow_client(cli: &Cli, route: &connect::Route, stdout_tty: bool) -> Option<kube::Client> {
    use super::preflow::Mode;
    let args = &cli.tail;
    let wanted = match args.preflow {
        Mode::Always => true,
        Mode::Auto => stdout_tty,
        Mode::Never => false,
    };
    if !wanted || args.no_follow {
        return None;
    }
    if let connect::Route::Proxy { client, .. } = route {
        return Some(client.clone());
    }
    match crate::k8s::client::client(cli.kube.kubeconfig.as_deref(), cli.kube.context.as_deref()).await {
        Ok(client) => Some(client),
        Err(e) => {
            eprintln!(
                "k8stail: no pre-flow lines: they are read with your kubeconfig, which could not be loaded ({})",
                one_line(&e.to_string())
            );
            None
        }
    }
}

/// The kubeconfig context's namespace (`default` when it names none), as kubectl takes it.
async fn context_namespace(kube: &KubeArgs) -> Result<String> {
    let config = crate::k8s::client::config(kube.kubeconfig.as_deref(), kube.context.as_deref())
        .await
        .map_err(|e| {
            Error::Usage(format!(
                "a flow named without its namespace takes the kubeconfig context's, which could not be read ({e}): pass -n NAMESPACE or write NAMESPACE/NAME"
            ))
        })?;
    Ok(config.default_namespace)
}
