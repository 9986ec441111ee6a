//! Configuration of the `log-socket` service.
//!
//! clap derive is the one source of truth for every setting. A setting comes from, lowest to
//! highest precedence: its built-in default, the YAML file given by `--config`, its
//! `LOG_SOCKET_*` environment variable, its command-line flag. The file's keys are the long flag
//! names (`health-addr: 0.0.0.0:10002`); the file works by replacing clap's defaults before the
//! final parse, so env and flags override it with no per-setting merge code.

use crate::duration::GoDuration;
use crate::k8s::flowtap::TapMode;
use crate::telemetry::LogFormat;
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
    /// Create a CA, a server certificate and a client certificate (for fluentd) as PEM files.
    Certs(CertsArgs),
    /// Print the ingest credential of one flow (username and password, one per line), for an
    /// Output written by hand: it may post to that flow's path only.
    IngestCredential(IngestCredentialArgs),
    /// Print the label-policy keys (`rbac/KEY`) of users and groups, one per line.
    LabelKey(LabelKeyArgs),
    /// Print docs/configuration.md: every setting of `run`, generated from these definitions.
    #[command(hide = true)]
    ConfigReference,
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

/// Settings of `log-socket run`.
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

    /// Address fluentd POSTs records to.
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_ADDR",
        default_value = "0.0.0.0:10000",
        value_name = "ADDR"
    )]
    pub ingest_addr: SocketAddr,

    /// Address listeners connect to (WebSocket) and `/metrics` is served on.
    #[arg(
        long,
        env = "LOG_SOCKET_API_ADDR",
        default_value = "0.0.0.0:10001",
        value_name = "ADDR"
    )]
    pub api_addr: SocketAddr,

    /// Listener tokens for standalone mode, in the Kubernetes static token format:
    /// `token,user[,uid[,"group1,group2"]]` per line.
    #[arg(long, env = "LOG_SOCKET_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Standalone mode: file holding `username:password`, the HTTP Basic credentials fluentd
    /// must send to ingest (its http output's `auth`). Cluster mode uses --ingest-key-file.
    #[arg(long, env = "LOG_SOCKET_INGEST_CREDENTIALS", value_name = "FILE")]
    pub ingest_credentials: Option<PathBuf>,

    /// Cluster mode: file of server keys, one per line, the newest first (a mounted Secret).
    /// Each generated output carries the credential of its own flow only, username
    /// `flow/NS/NAME` and password hex(HMAC-SHA256(first key, username)); every key listed is
    /// accepted, so keys rotate without a gap. Read again when the file changes.
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_KEY_FILE",
        value_name = "FILE",
        conflicts_with = "ingest_credentials"
    )]
    pub ingest_key_file: Option<PathBuf>,

    /// PEM certificate (chain) to serve ingest over TLS; goes with --ingest-tls-key.
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_TLS_CERT",
        value_name = "FILE",
        requires = "ingest_tls_key"
    )]
    pub ingest_tls_cert: Option<PathBuf>,

    /// PEM private key of --ingest-tls-cert.
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_TLS_KEY",
        value_name = "FILE",
        requires = "ingest_tls_cert"
    )]
    pub ingest_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): ingest then requires a client certificate signed by it (mTLS, what
    /// fluentd's `tls_client_cert_path`/`tls_private_key_path` present). Needs ingest TLS.
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_CLIENT_CA",
        value_name = "FILE",
        requires = "ingest_tls_cert"
    )]
    pub ingest_client_ca: Option<PathBuf>,

    /// PEM certificate (chain) to serve the listener API over TLS (wss://); goes with --api-tls-key.
    #[arg(long, env = "LOG_SOCKET_API_TLS_CERT", value_name = "FILE", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,

    /// PEM private key of --api-tls-cert.
    #[arg(long, env = "LOG_SOCKET_API_TLS_KEY", value_name = "FILE", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,

    /// Serve the listener API over TLS with a certificate made at start, signed by itself (the
    /// default of the Helm chart and kustomize base): the API server's service proxy then
    /// carries listeners' tokens to the pod encrypted. It does not verify the pod's
    /// certificate (nor would it one from a CA), so this keeps the token from whoever can
    /// read the pod network, not from whoever can impersonate the pod.
    #[arg(long, env = "LOG_SOCKET_API_TLS_SELF_SIGNED", conflicts_with = "api_tls_cert")]
    pub api_tls_self_signed: bool,

    /// How often TLS files are checked; changed files are loaded for new connections.
    #[arg(
        long,
        env = "LOG_SOCKET_TLS_RELOAD_INTERVAL",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub tls_reload_interval: GoDuration,

    /// Accept records from anyone who can reach the ingest port. Only for isolated test setups.
    #[arg(long, env = "LOG_SOCKET_INGEST_INSECURE")]
    pub ingest_insecure: bool,

    /// Largest ingest request body, in bytes, after decompression (larger: 413).
    #[arg(long, env = "LOG_SOCKET_MAX_BODY_BYTES", default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,

    /// Most records one ingest request may carry (more: 413 with the reason). Each parsed
    /// record costs memory beyond its bytes, so this, not the body size, bounds a request's
    /// memory (a 16 MiB body of `{}` elements would be millions of records).
    #[arg(
        long,
        env = "LOG_SOCKET_MAX_RECORDS_PER_REQUEST",
        default_value_t = 100_000,
        value_name = "N"
    )]
    pub max_records_per_request: usize,

    /// Ingest requests processed at once; more are answered 503 so fluentd retries.
    #[arg(
        long,
        env = "LOG_SOCKET_MAX_CONCURRENT_INGEST",
        default_value_t = 64,
        value_name = "N"
    )]
    pub max_concurrent_ingest: usize,

    /// Listeners one user may have open on this relay at once (more: 429).
    #[arg(
        long,
        env = "LOG_SOCKET_MAX_LISTENERS_PER_USER",
        default_value_t = 20,
        value_name = "N"
    )]
    pub max_listeners_per_user: usize,

    /// Cluster mode: flows one user may be tapping through this relay at once, each a FlowTap
    /// it may cause to be created (more: 429).
    #[arg(long, env = "LOG_SOCKET_MAX_TAPS_PER_USER", default_value_t = 10, value_name = "N")]
    pub max_taps_per_user: usize,

    /// Cluster mode: listener sessions one FlowTap holds, from all relays (more: 429).
    #[arg(
        long,
        env = "LOG_SOCKET_MAX_SESSIONS_PER_TAP",
        default_value_t = 200,
        value_name = "N"
    )]
    pub max_sessions_per_tap: usize,

    /// Records queued per listener; a slower listener loses the oldest and is told how many.
    #[arg(long, env = "LOG_SOCKET_LISTENER_QUEUE", default_value_t = 10_000, value_name = "N")]
    pub listener_queue: usize,

    /// Records each tap keeps for `tail` and resume.
    #[arg(long, env = "LOG_SOCKET_REPLAY_RECORDS", default_value_t = 1000, value_name = "N")]
    pub replay_records: usize,

    /// Memory each tap's replay buffer may use, in bytes.
    #[arg(long, env = "LOG_SOCKET_REPLAY_BYTES", default_value_t = 8 << 20, value_name = "BYTES")]
    pub replay_bytes: usize,

    /// Memory the replay buffers of all taps together may use, in bytes; a tap that would go
    /// over drops its own oldest buffered records (a listener resuming past them is told).
    #[arg(long, env = "LOG_SOCKET_REPLAY_TOTAL_BYTES", default_value_t = 256 << 20, value_name = "BYTES")]
    pub replay_total_bytes: usize,

    /// How long a tap without listeners is kept, so a reconnecting listener can resume.
    #[arg(long, env = "LOG_SOCKET_TAP_LINGER", default_value = "60s", value_name = "DURATION")]
    pub tap_linger: GoDuration,

    /// Interval of WebSocket pings to listeners.
    #[arg(
        long,
        env = "LOG_SOCKET_PING_INTERVAL",
        default_value = "20s",
        value_name = "DURATION"
    )]
    pub ping_interval: GoDuration,

    /// A listener that sends nothing (not even a pong) for this long is disconnected.
    #[arg(
        long,
        env = "LOG_SOCKET_IDLE_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub idle_timeout: GoDuration,

    /// A listener whose socket does not take a write within this time is disconnected.
    #[arg(
        long,
        env = "LOG_SOCKET_WRITE_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub write_timeout: GoDuration,

    /// An ingest request's body must arrive completely within this time, else 408 (a trickling
    /// client cannot hold an ingest slot).
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_BODY_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub ingest_body_timeout: GoDuration,

    /// Request headers must arrive within this time on both ports; slower connections are
    /// closed (an idle keep-alive connection, too: fluentd reconnects).
    #[arg(
        long,
        env = "LOG_SOCKET_HEADER_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub header_timeout: GoDuration,

    /// Audiences a listener's token must be valid for (TokenReview), comma-separated; empty:
    /// the API server's own.
    #[arg(
        long,
        env = "LOG_SOCKET_TOKEN_AUDIENCES",
        value_delimiter = ',',
        value_name = "AUDIENCE"
    )]
    pub token_audiences: Vec<String>,

    /// How long a TokenReview answer is reused (keyed by a hash of the token); 0s disables.
    #[arg(
        long,
        env = "LOG_SOCKET_TOKEN_CACHE_TTL",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub token_cache_ttl: GoDuration,

    /// Where accepted records go between ingest and listeners: `embedded` (in this process;
    /// run one replica) or `nats` (a NATS JetStream stream per tap, shared by every replica:
    /// any replica takes ingest, listeners resume on any replica and across restarts).
    #[arg(long, env = "LOG_SOCKET_BUS", value_enum, default_value_t = BusKind::Embedded)]
    #[serde(serialize_with = "as_value_name")]
    pub bus: BusKind,

    /// NATS server(s) of `--bus nats`, comma-separated (`tls://` for TLS).
    #[arg(
        long,
        env = "LOG_SOCKET_NATS_URL",
        default_value = "nats://nats:4222",
        value_name = "URL"
    )]
    pub nats_url: String,

    /// NATS credentials file (a user JWT and NKey seed, as `nsc` writes it) for `--bus nats`.
    #[arg(long, env = "LOG_SOCKET_NATS_CREDENTIALS", value_name = "FILE")]
    pub nats_credentials: Option<PathBuf>,

    /// CA certificate(s) that sign the NATS server's certificate; TLS is then required.
    #[arg(long, env = "LOG_SOCKET_NATS_CA_FILE", value_name = "FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// With `--bus nats`: how long a tap's stream keeps a record at most (besides
    /// --replay-records messages and --replay-bytes).
    #[arg(long, env = "LOG_SOCKET_NATS_MAX_AGE", default_value = "1h", value_name = "DURATION")]
    pub nats_max_age: GoDuration,

    /// Which records a listener may read: `labels` (pod labels rbac/...), `kubernetes` (may
    /// `get pods/log` in the record's namespace), or `labels-or-kubernetes`.
    #[arg(long, env = "LOG_SOCKET_RECORD_POLICY", value_enum, default_value_t = RecordPolicy::Labels)]
    pub record_policy: RecordPolicy,

    /// Label policy: also read keys as pipelines that flatten (`rbac_KEY`) or de-dot (`.`
    /// written `_`) label keys write them; `rbac/KEY` wins when both are there.
    #[arg(long, env = "LOG_SOCKET_LABEL_POLICY_FLATTENED_KEYS")]
    pub label_policy_flattened_keys: bool,

    /// How long a `pods/log` SubjectAccessReview answer is reused per user and namespace.
    #[arg(
        long,
        env = "LOG_SOCKET_AUTHZ_CACHE_TTL",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub authz_cache_ttl: GoDuration,

    /// Require listeners to be allowed to `get` the Flow/ClusterFlow they tap.
    #[arg(long, env = "LOG_SOCKET_TAP_PERMISSION_CHECK", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tap_permission_check: bool,

    /// URL fluentd reaches this service's ingest port at; generated outputs POST to
    /// URL/flow/NAMESPACE/NAME. Use https:// when ingest serves TLS.
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_URL",
        default_value = "http://log-socket.log-socket.svc:10000",
        value_name = "URL"
    )]
    pub ingest_url: String,

    /// Name of this relay instance in FlowTap sessions (default: $HOSTNAME, the pod name).
    #[arg(long, env = "LOG_SOCKET_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,

    /// Sessions a relay stopped renewing (it crashed) are dropped after this long.
    #[arg(long, env = "LOG_SOCKET_SESSION_TTL", default_value = "60s", value_name = "DURATION")]
    pub session_ttl: GoDuration,

    /// Secret (in each tapped namespace) with `ca.crt`, `tls.crt` and `tls.key`, mounted as the
    /// generated outputs' TLS client certificate (matching --ingest-client-ca).
    #[arg(long, env = "LOG_SOCKET_OUTPUT_TLS_SECRET", value_name = "NAME")]
    pub output_tls_secret: Option<String>,

    /// Handle FlowTaps of this namespace only (a namespaced install); default: all namespaces.
    #[arg(long, env = "LOG_SOCKET_WATCH_NAMESPACE", value_name = "NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Run the FlowTap controller in this process (cluster mode).
    #[arg(long, env = "LOG_SOCKET_OPERATOR", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub operator: bool,

    /// How long logging-operator may take to validate a generated output. The flow is changed
    /// only after it has; past this the tap is refused (`OutputNotValidated`) and retried.
    #[arg(
        long,
        env = "LOG_SOCKET_OUTPUT_ACCEPT_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub output_accept_timeout: GoDuration,

    /// How the taps listeners create reach their flow: `patch` appends the tap's output to the
    /// flow; `mirror` leaves the flow alone and feeds the tap from a managed sibling flow (for
    /// flows a GitOps tool owns).
    #[arg(long, env = "LOG_SOCKET_TAP_MODE", value_enum, default_value_t = TapMode::Patch)]
    #[serde(serialize_with = "as_value_name")]
    pub tap_mode: TapMode,

    /// Let only one replica run the controller at a time, through a coordination.k8s.io Lease
    /// (the relay runs in every replica). Turn off only when exactly one replica runs.
    #[arg(long, env = "LOG_SOCKET_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LOG_SOCKET_LEASE_NAME",
        default_value = "log-socket",
        value_name = "NAME"
    )]
    pub lease_name: String,

    /// Namespace of the leader-election Lease (default: the pod's namespace, from
    /// $POD_NAMESPACE or the service account, else --watch-namespace).
    #[arg(long, env = "LOG_SOCKET_LEASE_NAMESPACE", value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a leader that stopped renewing keeps the Lease before another replica takes over.
    #[arg(
        long,
        env = "LOG_SOCKET_LEASE_DURATION",
        default_value = "15s",
        value_name = "DURATION"
    )]
    pub lease_duration: GoDuration,

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

/// The bus between ingest and listeners.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BusKind {
    /// In this process (one replica).
    #[default]
    Embedded,
    /// NATS JetStream, shared by every replica.
    Nats,
}

/// Per-record authorization policy (cluster mode).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordPolicy {
    /// Pod labels `rbac/<namespace>_<serviceaccount>`, `rbac/group.<group>`, `rbac/policy`.
    Labels,
    /// Kubernetes RBAC: `get pods/log` in the record's namespace.
    Kubernetes,
    /// Either of the two.
    LabelsOrKubernetes,
}

/// Serialise a clap value enum by its command-line name, so `--print-config` output reads back.
fn as_value_name<S: serde::Serializer, T: ValueEnum>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    let name = value.to_possible_value().expect("no skipped variants");
    s.serialize_str(name.get_name())
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
         `log-socket run --print-config` prints the effective settings as YAML.\n\n\
         | flag | environment | file key | default | meaning |\n|---|---|---|---|---|\n",
    );
    let cell = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
    for arg in run.get_arguments() {
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
    /// Relay tunables from these settings.
    pub fn relay(&self) -> crate::relay::RelayConfig {
        crate::relay::RelayConfig {
            max_body_bytes: self.max_body_bytes,
            max_records_per_request: self.max_records_per_request.max(1),
            max_concurrent_ingest: self.max_concurrent_ingest.max(1),
            listener_queue: self.listener_queue.max(1),
            replay: crate::relay::tap::ReplayLimits {
                records: self.replay_records,
                bytes: self.replay_bytes,
            },
            replay_total_bytes: self.replay_total_bytes,
            max_listeners_per_user: self.max_listeners_per_user.max(1),
            tap_linger: self.tap_linger.0,
            ping_interval: self.ping_interval.0,
            idle_timeout: self.idle_timeout.0,
            write_timeout: self.write_timeout.0,
            ingest_body_timeout: self.ingest_body_timeout.0,
            header_timeout: self.header_timeout.0,
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
