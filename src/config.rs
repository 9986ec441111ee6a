//! Configuration of the `log-socket` service.
//!
//! clap derive is the one source of truth for every setting. A setting comes from, lowest to
//! highest precedence: its built-in default, the YAML file given by `--config`, its
//! `LOG_SOCKET_*` environment variable, its command-line flag. The file's keys are the long flag
//! names (`health-addr: 0.0.0.0:10002`); the file works by replacing clap's defaults before the
//! final parse, so env and flags override it with no per-setting merge code.

use clap::{error::ErrorKind, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
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
}

/// Settings of `log-socket run`.
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceConfig {
    /// YAML file with settings, keyed by long flag name (e.g. `health-addr: 0.0.0.0:10002`).
    /// Environment variables and flags override it.
    #[arg(long, env = "LOG_SOCKET_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

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
}

/// Format of the service's own log lines.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
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
        let run = cmd.find_subcommand_mut("run").expect("run subcommand exists");
        let defaults = file_defaults(&path, run)?;
        cmd = cmd.mut_subcommand("run", |mut run| {
            for (id, value) in defaults {
                run = run.mut_arg(id, |arg| arg.default_value(value));
            }
            run
        });
    }

    let matches: ArgMatches = cmd.try_get_matches_from(&args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut Cli::command()))
}

/// Read a config file into (argument id, value) pairs, checking every key names a setting.
fn file_defaults(path: &std::path::Path, run: &mut clap::Command) -> Result<Vec<(String, String)>, clap::Error> {
    let fail = |run: &mut clap::Command, msg: String| run.error(ErrorKind::InvalidValue, msg);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return Err(fail(run, format!("cannot read config file {}: {e}", path.display()))),
    };
    let value: serde_yaml::Value = match serde_yaml::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return Err(fail(
                run,
                format!("config file {} is not valid YAML: {e}", path.display()),
            ))
        }
    };
    let map = match value {
        serde_yaml::Value::Mapping(map) => map,
        serde_yaml::Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(fail(
                run,
                format!(
                    "config file {} must be a YAML mapping of setting: value",
                    path.display()
                ),
            ))
        }
    };
    let known: Vec<String> = run
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !NOT_IN_FILE.contains(&a.get_id().as_str()))
        .map(|a| a.get_long().unwrap_or_default().to_owned())
        .collect();
    let mut out = Vec::new();
    for (key, value) in map {
        let key = match key {
            serde_yaml::Value::String(k) => k,
            other => {
                return Err(fail(
                    run,
                    format!("config file {}: key {other:?} is not a string", path.display()),
                ))
            }
        };
        if !known.contains(&key) {
            return Err(fail(
                run,
                format!(
                    "config file {}: unknown setting `{key}`; known settings: {}",
                    path.display(),
                    known.join(", ")
                ),
            ));
        }
        let value = match value {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(fail(
                    run,
                    format!("config file {}: setting `{key}` must be a single value", path.display()),
                ))
            }
        };
        out.push((key.replace('-', "_"), value));
    }
    Ok(out)
}

impl ServiceConfig {
    /// The effective settings as YAML, for `--print-config`.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("settings always serialize")
    }
}
