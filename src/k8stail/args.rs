//! k8stail's command line: the clap types are the one source of truth for flags, their env
//! fallbacks, the config file's keys (the long flag names) and `--help`.
//!
//! Flags mean what stern's flags of the same name mean wherever the idea carries over from pods
//! to flows; stern flags with no meaning for a flow are recognised and refused with the
//! k8stail way to get the same thing ([`SternOnly`]).

use crate::duration::GoDuration;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCompleter;
use std::path::PathBuf;

/// The version line: crate version, git commit, build date (from build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LOG_SOCKET_GIT_COMMIT"),
    ", built ",
    env!("LOG_SOCKET_BUILD_DATE"),
    ")"
);

const EXAMPLES: &str = "\
Examples:
  k8stail web                             follow Flow web in the context's namespace
  k8stail -n shop web api                 two flows merged, each line tagged with its flow
  k8stail clusterflow/logging/all -n shop -i error
                                          a ClusterFlow's records of namespace shop, matching error
  k8stail web -t --since 15m              the last 15 minutes the relay holds, with timestamps
  k8stail web --no-follow --tail 100      print what is buffered and exit
  k8stail web -o raw | jq .               the message only (stern's raw)
  k8stail web -o json | jq .kubernetes    the whole record as JSON
  k8stail web --template '{{ PodName }} {{ (Message | tryParseJSON).level }}'
  k8stail web --resume-file ~/.web.pos    continue where the last run stopped
  k8stail --server https://logs.example.com --ca-file ca.crt shop/web
  k8stail taps -A                         list taps and their listeners
  source <(k8stail completions bash)      completion of flows, namespaces and contexts

Coming from stern: docs/k8stail.md (COMING FROM STERN) maps every stern flag; stern flags that mean nothing for a
flow are refused with the k8stail way to do the same.";

const USAGE: &str = "k8stail [OPTIONS] [flow/|clusterflow/][NAMESPACE/]NAME...\n       k8stail taps [-n NAMESPACE | -A]\n       k8stail completions SHELL";

/// Watch, live in a terminal, exactly what a logging-operator Flow emits.
#[derive(Parser, Debug)]
#[command(
    name = "k8stail",
    version = VERSION,
    about,
    propagate_version = true,
    // `k8stail web taps` is a flow and a misplaced subcommand, not two flows.
    subcommand_precedence_over_arg = true,
    after_help = EXAMPLES,
    override_usage = USAGE
)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(subcommand)]
    pub command: Option<TailCommand>,

    #[command(flatten)]
    pub tail: TailArgs,

    #[command(flatten)]
    pub stern: SternOnly,
}

/// Which cluster to talk to; the same kubeconfig loading as kubectl.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(
        long,
        global = true,
        env = "K8STAIL_KUBECONFIG",
        value_name = "FILE",
        help_heading = "Cluster"
    )]
    pub kubeconfig: Option<PathBuf>,

    /// kubeconfig context to use.
    #[arg(long, global = true, env = "K8STAIL_CONTEXT", value_name = "NAME", help_heading = "Cluster",
          add = ArgValueCompleter::new(super::complete::complete_context))]
    pub context: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TailCommand {
    /// List FlowTaps: which flows are tapped, by how many listeners, and in which phase.
    Taps(super::taps::TapsArgs),
    /// Print the shell completion script (flows, namespaces and contexts are completed from
    /// the cluster): `source <(k8stail completions bash)`; bash, zsh, fish, elvish, powershell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Following flows. Listed alphabetically under "Options", as stern lists its flags; how to
/// reach the relay under "Connection".
#[derive(Args, Debug, Clone)]
pub struct TailArgs {
    /// The flows to follow: NAME (a Flow in -n's namespace), NAMESPACE/NAME, flow/NAME,
    /// flow/NAMESPACE/NAME, clusterflow/NAME or clusterflow/NAMESPACE/NAME (a ClusterFlow, in
    /// the logging control namespace). Several are merged into one stream.
    #[arg(value_name = "FLOW", add = ArgValueCompleter::new(super::complete::complete_flow))]
    pub targets: Vec<String>,

    /// ClusterFlows: leave out no namespace's records (without it, -n also narrows a
    /// ClusterFlow's records to that namespace).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Targets without a kind are ClusterFlows (same as the clusterflow/ prefix).
    #[arg(long)]
    pub clusterflow: bool,

    /// Colour: `auto` (a terminal and no NO_COLOR), `always` or `never`.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// Config file of defaults, its keys the long flag names (`tail: 10`, `timestamps: short`)
    /// [default: ~/.config/k8stail/config.yaml, if it exists].
    #[arg(long, env = "K8STAIL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Only records of containers whose name matches this regex.
    #[arg(short = 'c', long, value_name = "REGEX")]
    pub container: Option<String>,

    /// Colours for container names, as --pod-colors (default: those of --pod-colors).
    #[arg(long, value_name = "SGR,...")]
    pub container_colors: Option<String>,

    /// Colour container names too, each its own colour.
    #[arg(short = 'd', long)]
    pub diff_container: bool,

    /// Leave out records whose message matches this regex (repeatable: any of them).
    #[arg(short = 'e', long, value_name = "REGEX")]
    pub exclude: Vec<String>,

    /// Leave out records of containers whose name matches this regex (repeatable).
    #[arg(short = 'E', long, value_name = "REGEX")]
    pub exclude_container: Vec<String>,

    /// Leave out records of pods whose name matches this regex (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub exclude_pod: Vec<String>,

    /// Print only this field of each record (dotted path, e.g. `kubernetes.pod_name`); repeat
    /// for several, separated by a space. Strings print without quotes.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["output", "template", "template_file"])]
    pub field: Vec<String>,

    /// Highlight the parts of messages that match this regex (repeatable).
    #[arg(short = 'H', long, value_name = "REGEX")]
    pub highlight: Vec<String>,

    /// Only records whose message matches this regex (repeatable: any of them).
    #[arg(short = 'i', long, visible_alias = "grep", value_name = "REGEX")]
    pub include: Vec<String>,

    /// Namespace of flows named without one (default: the kubeconfig context's, as kubectl);
    /// for a ClusterFlow, only records of this namespace (unless -A).
    #[arg(short = 'n', long, env = "K8STAIL_NAMESPACE", value_name = "NAMESPACE",
          add = ArgValueCompleter::new(super::complete::complete_namespace))]
    pub namespace: Option<String>,

    /// Print what the relay holds (all of its buffer, or --tail/--since of it) and exit 0.
    #[arg(long)]
    pub no_follow: bool,

    /// Only records from this node (the record's `kubernetes.host`).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,

    /// Accepted for stern's sake: k8stail's stdout holds only records (notes go to stderr).
    #[arg(long)]
    pub only_log_lines: bool,

    /// `default` (pod, container, message), `raw` (the message only), `json` (the record),
    /// `extjson` / `ppextjson` (pod, container and message as JSON, pretty), `frame` (the
    /// protocol frame). The same whether or not stdout is a terminal.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Default, value_name = "FORMAT")]
    pub output: OutputFormat,

    /// Only records of pods whose name matches this regex (stern's pod query).
    #[arg(long, value_name = "REGEX")]
    pub pod: Option<String>,

    /// Colours for pod names: SGR sequences separated by commas, e.g. "31,32,33" or
    /// "38;2;255;97;136,32;4".
    #[arg(long, value_name = "SGR,...")]
    pub pod_colors: Option<String>,

    /// While the tap warms up, show the live container logs of the pods the flow's match
    /// selects (your own `pods/log` access, as stern), each line marked `pre-flow` (in JSON,
    /// `"preflow":true`): raw output from before the flow's filters, until the first flow
    /// record. `auto`: when stdout is a terminal.
    #[arg(long, value_enum, default_value_t = super::preflow::Mode::Auto, env = "K8STAIL_PREFLOW", value_name = "WHEN")]
    pub preflow: super::preflow::Mode,

    /// At most N records a second per flow, sampled at the relay (so what is left out never
    /// crosses the network), each pod getting a fair share, paced over each second; how many
    /// were left out, per pod, is said on stderr once a second (with `-o frame`, the `dropped`
    /// frames). The first records (--tail, --since) are taken, then sampled.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: Option<u32>,

    /// Only records whose pod labels match this selector (`app=web`, `tier!=db`, `env in
    /// (a,b)`, `canary`, `!canary`; comma = and).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// First the buffered records of the last DURATION (`15m`, `1h30m`), as far as the relay's
    /// buffer reaches.
    #[arg(short = 's', long, value_name = "DURATION")]
    pub since: Option<GoDuration>,

    /// First the last N buffered records (default 10; with --no-follow, all; -1: all).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub tail: Option<i64>,

    /// Print each record through a minijinja template (`{{ message }}`,
    /// `{{ kubernetes.pod_name }}`, stern's names `{{ PodName }}`, helpers `color`,
    /// `levelColor`, `parseJSON`, `tojson`, `toTimestamp`...; see docs/k8stail.md).
    #[arg(long, value_name = "TEMPLATE", conflicts_with_all = ["output", "template_file"])]
    pub template: Option<String>,

    /// Read the --template from FILE.
    #[arg(short = 'T', long, value_name = "FILE", conflicts_with = "output")]
    pub template_file: Option<PathBuf>,

    /// Print each record's time (its `time`, else when it arrived): `default`
    /// (2006-01-02T15:04:05.000000000Z07:00) or `short` (01-02 15:04:05).
    #[arg(
        short = 't',
        long,
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "default",
        value_name = "FORMAT"
    )]
    pub timestamps: Option<TimestampFormat>,

    /// Time zone of --timestamps: `Local`, `UTC` or an IANA name (`Asia/Tokyo`).
    #[arg(long, default_value = "Local", value_name = "ZONE")]
    pub timezone: String,

    /// Diagnostics on stderr: 0 none, 1-5 k8stail's own, 6 and up the API requests too.
    #[arg(short = 'v', long, default_value_t = 0, value_name = "N")]
    pub verbosity: u8,

    // --- where the relay is
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
    pub max_backoff: GoDuration,

    /// Remember the last record in FILE and continue after it next time (within the relay's
    /// replay buffer; a gap is reported). One flow only.
    #[arg(long, env = "K8STAIL_RESUME_FILE", value_name = "FILE", help_heading = "Connection")]
    pub resume_file: Option<PathBuf>,
}

/// stern flags that mean nothing for a flow: recognised (hidden from --help), and refused with
/// what to do instead, so a stern habit gets an answer rather than "unexpected argument".
#[derive(Args, Debug, Clone, Default)]
pub struct SternOnly {
    #[arg(long, hide = true, value_name = "SHELL")]
    pub completion: Option<String>,
    #[arg(long, hide = true, value_name = "N", allow_negative_numbers = true)]
    pub max_log_requests: Option<String>,
    #[arg(long, hide = true, value_name = "SELECTOR")]
    pub field_selector: Option<String>,
    #[arg(long, hide = true, value_name = "STATE")]
    pub container_state: Vec<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub init_containers: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ephemeral_containers: Option<String>,
    #[arg(long, hide = true, value_name = "CONDITION")]
    pub condition: Option<String>,
    #[arg(short = 'p', long, hide = true)]
    pub prompt: bool,
    #[arg(long, hide = true)]
    pub stdin: bool,
    #[arg(long, hide = true, value_name = "N", allow_negative_numbers = true)]
    pub qps: Option<String>,
    #[arg(long, hide = true, value_name = "N")]
    pub burst: Option<String>,
    #[arg(long, hide = true)]
    pub show_hidden_options: bool,
}

impl SternOnly {
    /// The first stern-only flag given, and what to do instead.
    pub fn refusal(&self) -> Option<String> {
        let say = |flag: &str, instead: &str| Some(format!("{flag} is stern's; {instead}"));
        if let Some(shell) = &self.completion {
            return say("--completion", &format!("use `k8stail completions {shell}`"));
        }
        if self.max_log_requests.is_some() {
            return say("--max-log-requests", "k8stail opens one stream per flow: drop it");
        }
        if let Some(s) = &self.field_selector {
            let hint = match s.split_once('=') {
                Some(("spec.nodeName", node)) => format!("use --node {node}"),
                _ => "records carry no pod fields beyond their labels: select by --node, --pod or -l".into(),
            };
            return say("--field-selector", &hint);
        }
        if !self.container_state.is_empty() {
            return say(
                "--container-state",
                "a flow carries what fluentd read from containers in every state: drop it",
            );
        }
        if self.init_containers.is_some() || self.ephemeral_containers.is_some() {
            return say(
                "--init-containers/--ephemeral-containers",
                "select containers by name with -c REGEX or -E REGEX",
            );
        }
        if self.condition.is_some() {
            return say(
                "--condition",
                "records carry no pod conditions: select pods with --pod or -l",
            );
        }
        if self.prompt {
            return say(
                "--prompt",
                "name the flow (`k8stail taps -A` lists the tapped ones; shell completion offers them all)",
            );
        }
        if self.stdin {
            return say(
                "--stdin",
                "k8stail reads flows from the cluster; for a file use `jq` or stern --stdin",
            );
        }
        if self.qps.is_some() || self.burst.is_some() {
            return say("--qps/--burst", "k8stail makes a handful of API requests: drop them");
        }
        if self.show_hidden_options {
            return say(
                "--show-hidden-options",
                "the stern flags k8stail recognises are in docs/k8stail.md, \"Coming from stern\"",
            );
        }
        None
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scheme {
    Http,
    #[default]
    Https,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// pod, container and message (the namespace too for ClusterFlows; the flow when several)
    #[default]
    #[value(alias = "pretty")]
    Default,
    /// the message only
    Raw,
    /// the record, as JSON
    Json,
    /// pod, container and message as JSON (the message parsed when it is JSON)
    Extjson,
    /// extjson, pretty-printed
    Ppextjson,
    /// the protocol frame (type, seq, record)
    Frame,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampFormat {
    /// 2006-01-02T15:04:05.000000000Z07:00
    Default,
    /// 01-02 15:04:05
    Short,
}

impl Cli {
    /// Parse the command line, with the config file's values as defaults (see [`super::config`]).
    /// `--kubeconfig` and `--context` go anywhere (`k8stail --kubeconfig K taps -A`); following
    /// options or a flow before a subcommand (`k8stail --tail 5 taps`) are a usage error
    /// rather than silently ignored. Exits 2 on any usage error, clap-style.
    pub fn parse_args() -> Cli {
        Self::parse_from_args(std::env::args_os().collect())
    }

    pub fn parse_from_args(args: Vec<std::ffi::OsString>) -> Cli {
        let mut command = command_as_invoked();
        let command = match super::config::with_defaults(command.clone(), &args) {
            Ok(c) => c,
            Err(e) => command.error(clap::error::ErrorKind::InvalidValue, e).exit(),
        };
        Self::from_matches(&command, command.clone().get_matches_from(args)).unwrap_or_else(|e| e.exit())
    }

    /// Like [`Cli::parse_from_args`] without exiting, for tests.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(args)?;
        Self::from_matches(&command, matches)
    }

    fn from_matches(command: &clap::Command, matches: clap::ArgMatches) -> Result<Cli, clap::Error> {
        use clap::parser::ValueSource;
        use clap::FromArgMatches;
        if let Some((name, _)) = matches.subcommand() {
            // Arguments, not the groups clap makes of flattened structs.
            let is_arg = |id: &str| command.get_arguments().any(|a| a.get_id() == id);
            let stray: Vec<String> = matches
                .ids()
                .map(|id| id.as_str())
                .filter(|id| is_arg(id) && !["kubeconfig", "context"].contains(id))
                .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
                .map(|id| match id {
                    "targets" => "a flow".to_owned(),
                    other => format!("--{}", other.replace('_', "-")),
                })
                .collect();
            if !stray.is_empty() {
                return Err(command.clone().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("{} cannot be used with `k8stail {name}`", stray.join(", ")),
                ));
            }
        }
        let cli = Cli::from_arg_matches(&matches)?;
        if let Some(refusal) = cli.stern.refusal() {
            return Err(command.clone().error(clap::error::ErrorKind::ArgumentConflict, refusal));
        }
        Ok(cli)
    }
}

/// The command as this process was invoked (`kubectl flowtail` as kubectl's plugin).
fn command_as_invoked() -> clap::Command {
    let command = Cli::command();
    match invoked_as_plugin(std::env::args_os().next().as_ref()) {
        Some(name) => command.bin_name(name).override_usage(USAGE.replace("k8stail", name)),
        None => command,
    }
}

/// A usage error found after parsing (a flow, a regex, a zone...), in clap's words and form,
/// exit code 2: `error: ...`, the usage, and where to read more.
pub fn usage_error(message: &str) -> clap::Error {
    command_as_invoked().error(clap::error::ErrorKind::ValueValidation, message)
}

/// `kubectl flowtail` when run as kubectl's plugin (the binary `kubectl-flowtail`), so usage
/// and errors name the command the user typed.
fn invoked_as_plugin(arg0: Option<&std::ffi::OsString>) -> Option<&'static str> {
    let name = std::path::Path::new(arg0?).file_stem()?.to_str()?;
    (name == "kubectl-flowtail").then_some("kubectl flowtail")
}
