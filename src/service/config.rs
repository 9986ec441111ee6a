//! Configuration of the `log-socket` service.
//!
//! clap derive is the one source of truth for every setting. A setting comes from, lowest to
//! highest precedence: its built-in default, the YAML file given by `--config`, its
//! `LOG_SOCKET_*` environment variable, its command-line flag. The file's keys are the long flag
//! names (`health-addr: 0.0.0.0:10002`); the file works by replacing clap's defaults before the
//! final parse, so env and flags override it with no per-setting merge code.

pub use super::settings::{
    ApiSettings, BusKind, BusSettings, IngestSettings, OperatorSettings, PolicySettings, RecordPolicy, TapSettings,
};
use crate::config_file::{self, Problem, Rules};
use crate::telemetry::LogFormat;
use clap::{error::ErrorKind, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The in-cluster log-socket service: a relay from logging-operator flows to WebSocket
/// listeners, and the operator of FlowTap resources.
#[derive(Parser, Debug)]
#[command(name = "log-socket", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service.
    Run(Box<ServiceConfig>),
    /// Print the FlowTap CustomResourceDefinition as YAML (apply it with `kubectl apply -f -`).
    Crd,
    /// Create a CA, a server certificate and a client certificate (for fluentd) as PEM files.
    Certs(CertsArgs),
    /// Print the ingest credential of one flow (username and password, one per line), for an
    /// Output written by hand: it may post to that flow's path only.
    IngestCredential(IngestCredentialArgs),
    /// Print the label-policy keys (`rbac/KEY`) of users and groups, one per line.
    LabelKey(LabelKeyArgs),
    /// Delete every FlowTap and wait until log-socket's controller has cleaned each up (flows
    /// restored, outputs removed): run it before uninstalling (the chart's pre-delete hook does).
    RemoveTaps(RemoveTapsArgs),
    /// Check an installed log-socket from inside the cluster (the chart's `helm test` Pod):
    /// its health URL answers ready, and the FlowTap resource is served to this ServiceAccount.
    Check(CheckArgs),
    /// Print docs/configuration.md: every setting of `run`, generated from these definitions.
    #[command(hide = true)]
    ConfigReference,
}

/// Arguments of `log-socket remove-taps`.
#[derive(Args, Debug, Clone)]
pub struct RemoveTapsArgs {
    /// Only the FlowTaps of this namespace (a namespaced install); default: all namespaces.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// How long to wait for the cleanups (a tap removal may wait for its Logging's next batch
    /// of tap changes, --config-change-interval).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub timeout: crate::duration::GoDuration,
    /// kubeconfig file (default: in a pod, its service account; else KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// Arguments of `log-socket check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The service's readiness URL, e.g. http://log-socket.log-socket.svc:10002/readyz.
    #[arg(long, value_name = "URL")]
    pub ready_url: String,
    /// kubeconfig file (default: in a pod, its service account; else KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// Arguments of `log-socket certs`.
#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, server.crt, server.key, client.crt, client.key to.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// DNS name of the service in the server certificate (repeatable), e.g.
    /// log-socket.log-socket.svc; localhost and 127.0.0.1 are always added.
    #[arg(long = "dns", value_name = "NAME", required = true)]
    pub dns: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    pub days: u32,
}

/// Arguments of `log-socket label-key`.
#[derive(Args, Debug, Clone)]
pub struct LabelKeyArgs {
    /// A user name as the API server authenticates it, e.g. system:serviceaccount:shop:alice.
    #[arg(long = "user", value_name = "NAME")]
    pub users: Vec<String>,
    /// A group name, e.g. system:serviceaccounts:shop.
    #[arg(long = "group", value_name = "NAME")]
    pub groups: Vec<String>,
}

/// Arguments of `log-socket ingest-credential`.
#[derive(Args, Debug, Clone)]
pub struct IngestCredentialArgs {
    /// The flow: `flow/NAMESPACE/NAME` or `clusterflow/NAMESPACE/NAME` (the ingest path).
    #[arg(value_name = "PATH")]
    pub path: String,
    /// The service's key file (--ingest-key-file of `run`).
    #[arg(long, env = "LOG_SOCKET_INGEST_KEY_FILE", value_name = "FILE")]
    pub ingest_key_file: PathBuf,
}

/// Settings of `log-socket run`, grouped by concern (each group its own `--help` heading and
/// section of docs/configuration.md); flags, environment variables and file keys are flat.
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceConfig {
    /// YAML file with settings, keyed by long flag name (e.g. `health-addr: 0.0.0.0:10002`).
    /// Environment variables and flags override it.
    #[arg(long, env = "LOG_SOCKET_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Run without Kubernetes: listeners authenticate with --token-file, taps exist while
    /// listeners are connected, and every authenticated listener sees every record.
    #[arg(long, env = "LOG_SOCKET_STANDALONE")]
    pub standalone: bool,

    /// Address of the health endpoints (`/healthz`, `/readyz`); the only unauthenticated port.
    #[arg(
        long,
        env = "LOG_SOCKET_HEALTH_ADDR",
        default_value = "0.0.0.0:10002",
        value_name = "ADDR"
    )]
    pub health_addr: SocketAddr,

    /// kubeconfig file to use instead of KUBECONFIG, ~/.kube/config or the in-cluster service account.
    #[arg(long, env = "LOG_SOCKET_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// kubeconfig context to use.
    #[arg(long, env = "LOG_SOCKET_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,

    /// Log level or tracing filter (e.g. `debug`, `info,log_socket=trace`); RUST_LOG overrides it.
    #[arg(long, env = "LOG_SOCKET_LOG_LEVEL", default_value = "info", value_name = "FILTER")]
    pub log_level: String,

    /// Log line format on stderr.
    #[arg(long, env = "LOG_SOCKET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Print the effective settings as YAML and exit, to check what the file, env and flags add up to.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    #[command(flatten)]
    #[serde(flatten)]
    pub ingest: IngestSettings,

    #[command(flatten)]
    #[serde(flatten)]
    pub api: ApiSettings,

    #[command(flatten)]
    #[serde(flatten)]
    pub taps: TapSettings,

    #[command(flatten)]
    #[serde(flatten)]
    pub bus_settings: BusSettings,

    #[command(flatten)]
    #[serde(flatten)]
    pub policy: PolicySettings,

    #[command(flatten)]
    #[serde(flatten)]
    pub operator_settings: OperatorSettings,
}

/// The settings of `log-socket run` as a Markdown reference (docs/configuration.md): flag,
/// environment variable, file key, default and help, all read from the clap definition, so the
/// document cannot drift from the program (a test compares them).
pub fn reference_markdown() -> String {
    use std::fmt::Write;
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").expect("run subcommand exists");
    let mut out = String::from(
        "# Configuration of `log-socket run`\n\n\
         <!-- Generated by `make docs` (`log-socket config-reference`) from src/service/config.rs; do not edit. -->\n\n\
         Every setting has a flag, an environment variable, and a key in the optional YAML file given by\n\
         `--config`. Precedence, lowest to highest: built-in default, file, environment, flag. File keys are\n\
         the long flag names; an unknown key or a bad value is an error that names it. Durations are\n\
         written `500ms`, `10s`, `5m`, `1h`. Example file: [`config/log-socket.yaml`](../config/log-socket.yaml).\n\
         `log-socket run --print-config` prints the effective settings as YAML.\n",
    );
    // One section a settings group (its `--help` heading), general settings first.
    let mut sections: Vec<(&str, Vec<&clap::Arg>)> = vec![("General", vec![])];
    for arg in run.get_arguments() {
        let heading = arg.get_help_heading().unwrap_or("General");
        match sections.iter_mut().find(|(h, _)| *h == heading) {
            Some((_, args)) => args.push(arg),
            None => sections.push((heading, vec![arg])),
        }
    }
    let cell = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
    for (heading, args) in sections {
        let _ = write!(
            out,
            "\n## {heading}\n\n| flag | environment | file key | default | meaning |\n|---|---|---|---|---|\n"
        );
        for arg in args {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            let takes_value = arg.get_action().takes_values();
            let flag = match (takes_value, arg.get_value_names()) {
                (true, Some(names)) => format!("`--{long} {}`", names.join(" ")),
                _ => format!("`--{long}`"),
            };
            let env = arg
                .get_env()
                .map_or("–".to_owned(), |e| format!("`{}`", e.to_string_lossy()));
            let key = match NOT_IN_FILE.contains(&arg.get_id().as_str()) {
                true => "–".to_owned(),
                false => format!("`{long}`"),
            };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| format!("`{}`", v.to_string_lossy()))
                .collect();
            let default = match (takes_value, defaults.is_empty()) {
                (false, _) => "off".to_owned(),
                (true, true) => "none".to_owned(),
                (true, false) => defaults.join(", "),
            };
            let mut help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| cell(&h.to_string()))
                .unwrap_or_default();
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| format!("`{}`", v.get_name()))
                .collect();
            if takes_value && !values.is_empty() && !(values.len() == 2 && values[0] == "`true`") {
                let _ = write!(help, " (one of {})", values.join(", "));
            }
            let _ = writeln!(out, "| {flag} | {env} | {key} | {default} | {help} |");
        }
    }
    out
}

/// Settings a config file may not set: they steer the parsing itself.
const NOT_IN_FILE: &[&str] = &["config", "print_config", "help", "version"];

/// Parse the command line (and environment, and `--config` file) of `log-socket`.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();

    // First pass only to learn which file to read; errors are reported by the second pass.
    let first = Cli::command().ignore_errors(true).try_get_matches_from(&args);
    let file = first.ok().and_then(|m| {
        m.subcommand_matches("run")
            .and_then(|r| r.get_one::<PathBuf>("config").cloned())
    });

    if let Some(path) = file {
        let run = cmd.find_subcommand("run").expect("run subcommand exists").clone();
        let run = with_file_defaults(&path, run)?;
        cmd = cmd.mut_subcommand("run", |_| run);
    }

    let matches: ArgMatches = cmd.try_get_matches_from(&args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut Cli::command()))
}

/// `run` with the values of the config file at `path` as defaults, checking every key names a
/// setting.
fn with_file_defaults(path: &std::path::Path, mut run: clap::Command) -> Result<clap::Command, clap::Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let msg = format!("cannot read config file {}: {e}", path.display());
            return Err(run.error(ErrorKind::InvalidValue, msg));
        }
    };
    let rules = Rules {
        not_in_file: NOT_IN_FILE,
        lists: false,
        expand_home: false,
    };
    let file = path.display();
    config_file::apply(run.clone(), &text, &rules).map_err(|problem| {
        let msg = match problem {
            Problem::NotYaml(e) => format!("config file {file} is not valid YAML: {e}"),
            Problem::NotAMapping => format!("config file {file} must be a YAML mapping of setting: value"),
            Problem::KeyNotAString(key) => format!("config file {file}: key {key} is not a string"),
            Problem::Unknown { key, known } => format!(
                "config file {file}: unknown setting `{key}`; known settings: {}",
                known.join(", ")
            ),
            Problem::NotAValue(key) => format!("config file {file}: setting `{key}` must be a single value"),
            Problem::NotABool(key) => format!("config file {file}: setting `{key}` is true or false"),
        };
        run.error(ErrorKind::InvalidValue, msg)
    })
}

impl ServiceConfig {
    /// Relay tunables from these settings.
    pub fn relay(&self) -> crate::relay::RelayConfig {
        crate::relay::RelayConfig {
            max_body_bytes: self.ingest.max_body_bytes,
            max_records_per_request: self.ingest.max_records_per_request.max(1),
            max_concurrent_ingest: self.ingest.max_concurrent_ingest.max(1),
            listener_queue: self.api.listener_queue.max(1),
            replay: crate::relay::tap::ReplayLimits {
                records: self.taps.replay_records,
                bytes: self.taps.replay_bytes,
            },
            replay_total_bytes: self.taps.replay_total_bytes,
            max_listeners_per_user: self.api.max_listeners_per_user.max(1),
            tap_linger: self.taps.tap_linger.0,
            ping_interval: self.api.ping_interval.0,
            idle_timeout: self.api.idle_timeout.0,
            write_timeout: self.api.write_timeout.0,
            ingest_body_timeout: self.ingest.ingest_body_timeout.0,
            header_timeout: self.api.header_timeout.0,
            trusted_proxies: self.api.trusted_proxies.clone(),
        }
    }

    /// The effective settings as YAML, for `--print-config`.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("settings always serialize")
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn docs_configuration_md_is_generated_from_the_clap_definition() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == reference_markdown(),
            "docs/configuration.md is out of date with src/service/config.rs: run `make docs`"
        );
        assert!(committed.contains("| `--tap-mode TAP_MODE` | `LOG_SOCKET_TAP_MODE` | `tap-mode` | `patch` |"));
    }
}
