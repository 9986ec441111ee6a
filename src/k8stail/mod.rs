//! The `k8stail` command line: `k8stail NAMESPACE/NAME` streams a flow; `k8stail taps` lists
//! FlowTaps; `k8stail completions SHELL` prints shell completions.
//!
//! The clap types here are the one source of truth for flags, their env fallbacks and `--help`.
//! - `connect`: the route to the relay (the API server's service proxy, or `--server`);
//! - `stream`: following a flow, reconnecting and resuming, notes on stderr;
//! - `render`: the output formats; `taps`: `k8stail taps`.
//!
//! Text from the network (records, notes) is never printed raw to a terminal in the human
//! formats: control characters are escaped, so a pod cannot move the cursor or forge lines.

mod connect;
pub(crate) mod render;
pub use render::one_line;
mod stream;
mod taps;

pub use taps::age;

use crate::k8s::flowtap::FlowKind;
use crate::service::config::HumanDuration;
use crate::{Error, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  k8stail shop/web                        follow Flow web in namespace shop
  k8stail clusterflow/logging/all --namespace shop --grep error
  k8stail shop/web --tail 100 -o raw | jq .message
  k8stail shop/web --template '{{ kubernetes.pod_name }}: {{ message }}'
  k8stail shop/web --resume-file ~/.web.pos   continue where the last run stopped
  k8stail --server https://logs.example.com --ca-file ca.crt shop/web
  k8stail taps -A                         list taps and their listeners
  k8stail completions bash > /etc/bash_completion.d/k8stail";

/// Watch, live in a terminal, exactly what a logging-operator Flow emits.
#[derive(Parser, Debug)]
#[command(
    name = "k8stail",
    version,
    about,
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(subcommand)]
    pub command: Option<TailCommand>,

    #[command(flatten)]
    pub tail: TailArgs,
}

impl Cli {
    /// Parse the command line. `--kubeconfig` and `--context` go anywhere
    /// (`k8stail --kubeconfig K taps -A`); following options or a flow before a subcommand
    /// (`k8stail --tail 5 taps`) are a usage error rather than silently ignored.
    pub fn parse_args() -> Cli {
        use clap::parser::ValueSource;
        use clap::FromArgMatches;
        let command = Cli::command();
        let matches = command.clone().get_matches();
        if let Some((name, _)) = matches.subcommand() {
            // Arguments, not the groups clap makes of flattened structs.
            let is_arg = |id: &str| command.get_arguments().any(|a| a.get_id() == id);
            let stray: Vec<String> = matches
                .ids()
                .map(|id| id.as_str())
                .filter(|id| is_arg(id) && !["kubeconfig", "context"].contains(id))
                .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
                .map(|id| match id {
                    "target" => "a flow".to_owned(),
                    other => format!("--{}", other.replace('_', "-")),
                })
                .collect();
            if !stray.is_empty() {
                command
                    .clone()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("{} cannot be used with `k8stail {name}`", stray.join(", ")),
                    )
                    .exit();
            }
        }
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Which cluster to talk to; the same kubeconfig loading as kubectl.
#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "K8STAIL_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// kubeconfig context to use.
    #[arg(long, global = true, env = "K8STAIL_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TailCommand {
    /// List FlowTaps: which flows are tapped, by how many listeners, and in which phase.
    Taps(taps::TapsArgs),
    /// Print shell completions: `k8stail completions bash|zsh|fish|elvish|powershell`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Following a flow.
#[derive(Args, Debug, Clone)]
pub struct TailArgs {
    /// The flow to follow: NAMESPACE/NAME (a Flow), flow/NAMESPACE/NAME, or
    /// clusterflow/NAMESPACE/NAME (a ClusterFlow, in the logging control namespace).
    #[arg(value_name = "[flow/|clusterflow/]NAMESPACE/NAME")]
    pub target: Option<String>,

    /// The target is a ClusterFlow (same as the clusterflow/ prefix).
    #[arg(short = 'c', long)]
    pub clusterflow: bool,

    // --- where the service is
    /// Token the service authenticates you with (default: your kubeconfig's bearer token,
    /// exec plugins included). For client-certificate kubeconfigs, e.g. `$(kubectl create token NAME)`.
    #[arg(
        long,
        env = "K8STAIL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Connection"
    )]
    pub token: Option<String>,

    /// Connect straight to the service at this URL (an ingress, or `kubectl port-forward`)
    /// instead of through the API server's service proxy.
    #[arg(long, env = "K8STAIL_SERVER", value_name = "URL", help_heading = "Connection")]
    pub server: Option<String>,

    /// CA bundle to verify --server's certificate (default: the system's CA bundle).
    #[arg(long, value_name = "FILE", requires = "server", help_heading = "Connection")]
    pub ca_file: Option<PathBuf>,

    /// Do not verify --server's TLS certificate. Anyone on the path can read and change the
    /// stream and steal your token; k8stail warns every time.
    #[arg(long, requires = "server", help_heading = "Connection")]
    pub insecure_skip_tls_verify: bool,

    /// Namespace of the log-socket Service (proxy mode).
    #[arg(
        long,
        env = "K8STAIL_SERVICE_NAMESPACE",
        default_value = "log-socket",
        value_name = "NAMESPACE",
        help_heading = "Connection"
    )]
    pub service_namespace: String,

    /// Name of the log-socket Service (proxy mode).
    #[arg(
        long,
        env = "K8STAIL_SERVICE",
        default_value = "log-socket",
        value_name = "NAME",
        help_heading = "Connection"
    )]
    pub service: String,

    /// Port of the Service's listener API, by name or number (proxy mode).
    #[arg(
        long,
        env = "K8STAIL_PORT",
        default_value = "api",
        value_name = "PORT",
        help_heading = "Connection"
    )]
    pub port: String,

    /// Scheme the API server uses to reach the service (proxy mode): `https`, what the Helm
    /// chart and kustomize base serve; `http` (warned about) only for a service without TLS.
    #[arg(long, env = "K8STAIL_SERVICE_SCHEME", value_enum, default_value_t = Scheme::Https, help_heading = "Connection")]
    pub service_scheme: Scheme,

    /// Exit when the connection ends instead of reconnecting.
    #[arg(long, help_heading = "Connection")]
    pub no_reconnect: bool,

    /// Keep streaming when the tap is refused or failed (a Secret missing, the output rejected,
    /// the flow not found...): it proceeds once the cause is fixed. Without it, k8stail prints
    /// the reason and exits 1.
    #[arg(long, help_heading = "Connection")]
    pub wait: bool,

    /// Longest wait between reconnection attempts (the wait doubles from 250ms, with jitter).
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Connection")]
    pub max_backoff: HumanDuration,

    /// Remember the last record in FILE and continue after it next time (within the relay's
    /// replay buffer; a gap is reported).
    #[arg(long, env = "K8STAIL_RESUME_FILE", value_name = "FILE", help_heading = "Connection")]
    pub resume_file: Option<PathBuf>,

    // --- which records
    /// First show the last N buffered records.
    #[arg(long, value_name = "N", help_heading = "Records")]
    pub tail: Option<u64>,

    /// First show buffered records of the last DURATION (as far as the relay's buffer reaches).
    #[arg(long, value_name = "DURATION", conflicts_with = "tail", help_heading = "Records")]
    pub since: Option<HumanDuration>,

    /// Only records whose message matches this regex.
    #[arg(long, value_name = "REGEX", help_heading = "Records")]
    pub grep: Option<String>,

    /// Leave out records whose message matches this regex.
    #[arg(long, value_name = "REGEX", help_heading = "Records")]
    pub exclude: Option<String>,

    /// Only records of pods whose name matches this regex.
    #[arg(long, value_name = "REGEX", help_heading = "Records")]
    pub pod: Option<String>,

    /// Only records of containers whose name matches this regex.
    #[arg(long, value_name = "REGEX", help_heading = "Records")]
    pub container: Option<String>,

    /// Only records of this namespace (for ClusterFlows).
    #[arg(long, value_name = "NAMESPACE", help_heading = "Records")]
    pub namespace: Option<String>,

    // --- how they look
    /// `raw`: the record JSON, one per line (default when stdout is not a terminal); `json`:
    /// the whole protocol frame; `pretty`: pod, container and message (default on a terminal).
    #[arg(short, long, value_enum, value_name = "FORMAT", help_heading = "Output")]
    pub output: Option<OutputFormat>,

    /// Print each record through a minijinja template; the record's fields are variables
    /// (`{{ message }}`, `{{ kubernetes.pod_name }}`), plus `_seq` and `_tap`.
    #[arg(long, value_name = "TEMPLATE", conflicts_with_all = ["output", "field"], help_heading = "Output")]
    pub template: Option<String>,

    /// Print only this field (dotted path, e.g. `kubernetes.pod_name`); repeat for several,
    /// separated by a space. Strings print without quotes.
    #[arg(long, value_name = "PATH", conflicts_with = "output", help_heading = "Output")]
    pub field: Vec<String>,

    /// Prefix each record with its time (the record's `time`, else when it arrived).
    #[arg(long, help_heading = "Output")]
    pub timestamps: bool,

    /// Colour pod names: `auto` (a terminal and no NO_COLOR), `always` or `never`.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, help_heading = "Output")]
    pub color: ColorChoice,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Raw,
    Json,
    Pretty,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// What to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: FlowKind,
    pub namespace: String,
    pub name: String,
}

impl Target {
    /// Parse `[flow/|clusterflow/]NAMESPACE/NAME`.
    pub fn parse(text: &str, clusterflow: bool) -> Result<Target, String> {
        let usage = || {
            format!(
                "cannot read {text:?} as a flow: write NAMESPACE/NAME, flow/NAMESPACE/NAME or clusterflow/NAMESPACE/NAME"
            )
        };
        let parts: Vec<&str> = text.split('/').collect();
        let (kind, namespace, name) = match parts.as_slice() {
            [ns, name] => (None, *ns, *name),
            [kind, ns, name] => (Some(*kind), *ns, *name),
            _ => return Err(usage()),
        };
        let kind = match (kind.map(str::to_ascii_lowercase).as_deref(), clusterflow) {
            (None, false) | (Some("flow" | "flows"), false) => FlowKind::Flow,
            (None, true) | (Some("clusterflow" | "clusterflows"), _) => FlowKind::ClusterFlow,
            (Some("flow" | "flows"), true) => {
                return Err(format!("{text:?} names a Flow, but --clusterflow was given"))
            }
            _ => return Err(usage()),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        if !valid(namespace) || !valid(name) {
            return Err(format!(
                "{text:?}: namespace and name must be Kubernetes object names (lower-case letters, digits, '-', '.')"
            ));
        }
        Ok(Target {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    /// The listener path on the service: `/flow/NS/NAME` or `/clusterflow/NS/NAME`.
    pub fn path(&self) -> String {
        format!("/{}/{}/{}", self.kind.path_segment(), self.namespace, self.name)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind.path_segment(), self.namespace, self.name)
    }
}

/// Run `k8stail` with parsed arguments, writing records to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    match cli.command {
        Some(TailCommand::Taps(args)) => taps::taps(&cli.kube, &args, out).await,
        Some(TailCommand::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "k8stail", out);
            Ok(())
        }
        None => {
            let Some(text) = cli.tail.target.as_deref() else {
                return Err(Error::Usage(
                    "name the flow to follow: k8stail NAMESPACE/NAME (see k8stail --help)".into(),
                ));
            };
            let target = Target::parse(text, cli.tail.clusterflow).map_err(Error::Usage)?;
            let stdout_tty = std::io::stdout().is_terminal();
            let renderer = render::Renderer::new(&cli.tail, &target, stdout_tty).map_err(Error::Usage)?;
            stream::follow(&cli.kube, &cli.tail, target, renderer, out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_with_or_without_a_kind() {
        let t = |s: &str, c: bool| Target::parse(s, c);
        assert_eq!(t("shop/web", false).unwrap().to_string(), "flow/shop/web");
        assert_eq!(t("flow/shop/web", false).unwrap().path(), "/flow/shop/web");
        assert_eq!(t("shop/all", true).unwrap().kind, FlowKind::ClusterFlow);
        assert_eq!(t("ClusterFlow/logging/all", false).unwrap().kind, FlowKind::ClusterFlow);
        assert!(t("web", false).unwrap_err().contains("NAMESPACE/NAME"));
        assert!(t("deployment/shop/web", false).is_err());
        assert!(t("flow/shop/web", true).unwrap_err().contains("--clusterflow"));
        assert!(t("shop/Web", false).unwrap_err().contains("object names"));
        assert!(t("shop/", false).is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
