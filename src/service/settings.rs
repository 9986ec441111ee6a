//! The settings of `log-socket run` by concern: ingest, API, taps, bus, record policy,
//! operator. Each group is flattened into [`super::config::ServiceConfig`], so flags,
//! environment variables and config-file keys stay flat, and `--help` and
//! docs/configuration.md show one section a group.

use crate::duration::GoDuration;
use crate::k8s::flowtap::TapMode;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Ingest (fluentd to the relay).
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(next_help_heading = "Ingest (fluentd to the relay)")]
pub struct IngestSettings {
    /// Address fluentd POSTs records to.
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_ADDR",
        default_value = "0.0.0.0:10000",
        value_name = "ADDR"
    )]
    pub ingest_addr: SocketAddr,

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

    /// An ingest request's body must arrive completely within this time, else 408 (a trickling
    /// client cannot hold an ingest slot).
    #[arg(
        long,
        env = "LOG_SOCKET_INGEST_BODY_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub ingest_body_timeout: GoDuration,
}

/// API (listeners, TLS, tokens).
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(next_help_heading = "API (listeners, TLS, tokens)")]
pub struct ApiSettings {
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

    /// Request headers must arrive within this time on both ports; slower connections are
    /// closed (an idle keep-alive connection, too: fluentd reconnects).
    #[arg(
        long,
        env = "LOG_SOCKET_HEADER_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub header_timeout: GoDuration,

    /// Proxies (addresses or CIDRs, comma-separated) whose `X-Forwarded-For` names the
    /// listener: the API servers whose service proxy k8stail goes through (`kubectl get
    /// endpoints kubernetes -n default`). Failed logins are then counted per client behind
    /// them; otherwise per connecting address (every user of one proxy shares the count, and a
    /// valid token is accepted all the same). `X-Forwarded-For` from anyone else is ignored.
    #[arg(long, env = "LOG_SOCKET_TRUSTED_PROXIES", value_name = "CIDRS", default_value = "", value_parser = trusted_proxies)]
    #[serde(serialize_with = "proxies_as_text")]
    pub trusted_proxies: crate::auth::limit::TrustedProxies,

    /// Listeners one user may have open on this relay at once (more: 429).
    #[arg(
        long,
        env = "LOG_SOCKET_MAX_LISTENERS_PER_USER",
        default_value_t = 20,
        value_name = "N"
    )]
    pub max_listeners_per_user: usize,

    /// Records queued per listener; a slower listener loses the oldest and is told how many.
    #[arg(long, env = "LOG_SOCKET_LISTENER_QUEUE", default_value_t = 10_000, value_name = "N")]
    pub listener_queue: usize,

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
}

/// Taps (replay, linger, limits).
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(next_help_heading = "Taps (replay, linger, limits)")]
pub struct TapSettings {
    /// Cluster mode: flows one user may be tapping at once, counted over every replica from
    /// the FlowTaps' sessions, each a FlowTap it may cause to be created (more: 429). The
    /// ServiceAccounts of one namespace share one such budget.
    #[arg(long, env = "LOG_SOCKET_MAX_TAPS_PER_USER", default_value_t = 10, value_name = "N")]
    pub max_taps_per_user: usize,

    /// Cluster mode: FlowTaps one namespace may hold before listeners may create no more
    /// there (joining an existing one stays possible; more: 429). Each new tap changes the
    /// shared Logging (a render and a fluentd reload for everyone).
    #[arg(
        long,
        env = "LOG_SOCKET_MAX_TAPS_PER_NAMESPACE",
        default_value_t = 20,
        value_name = "N"
    )]
    pub max_taps_per_namespace: usize,

    /// Cluster mode: listener sessions one FlowTap holds, from all relays (more: 429).
    #[arg(
        long,
        env = "LOG_SOCKET_MAX_SESSIONS_PER_TAP",
        default_value_t = 200,
        value_name = "N"
    )]
    pub max_sessions_per_tap: usize,

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

    /// How long a cheap tap (see --warm-max-bytes-per-second) is kept warm after its last
    /// listener leaves, instead of --tap-linger: running k8stail again attaches at once, with no
    /// configuration check or fluentd reload of the shared Logging.
    #[arg(long, env = "LOG_SOCKET_WARM_LINGER", default_value = "30m", value_name = "DURATION")]
    pub warm_linger: GoDuration,

    /// A tap whose measured rate (the sum over the relays, FlowTap `status.cost`) is at most
    /// this many bytes per second is cheap enough to keep warm; 0 keeps no tap warm.
    #[arg(long, env = "LOG_SOCKET_WARM_MAX_BYTES_PER_SECOND", default_value_t = 64 << 10, value_name = "BYTES")]
    pub warm_max_bytes_per_second: u64,

    /// Tap changes (a flow edit when a tap starts or ends) reach one Logging in batches at
    /// most this often: each is a configuration check and a fluentd reload for everyone on
    /// it. Taps starting or ending together make one change; a later one waits (its FlowTap
    /// shows `Queued` and when), never much longer than this. 0s: no budget.
    #[arg(
        long,
        env = "LOG_SOCKET_CONFIG_CHANGE_INTERVAL",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub config_change_interval: GoDuration,
}

/// Bus (between relay replicas).
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(next_help_heading = "Bus (between relay replicas)")]
pub struct BusSettings {
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
        hide_env_values = true,
        default_value = "nats://nats:4222",
        value_name = "URL"
    )]
    #[serde(serialize_with = "url_without_userinfo")]
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

    /// Keys that seal bus messages, one per line (at least 32 characters, e.g. `openssl rand
    /// -hex 32`), the newest first: it seals, every line opens; the file is read again when it
    /// changes. Required with `--bus nats`: NATS then stores only ciphertext, and a message
    /// that does not open is never delivered. Give every replica the same file.
    #[arg(long, env = "LOG_SOCKET_BUS_KEY_FILE", value_name = "FILE")]
    pub bus_key_file: Option<PathBuf>,

    /// Run `--bus nats` (in cluster mode) without NATS credentials and TLS: anyone who can
    /// reach NATS can then delete or squat the taps' streams (they cannot read or forge
    /// records: messages are sealed). Logged as a warning at start and every hour.
    #[arg(long, env = "LOG_SOCKET_NATS_INSECURE")]
    pub nats_insecure: bool,
}

/// Record policy (who reads which record).
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(next_help_heading = "Record policy (who reads which record)")]
pub struct PolicySettings {
    /// Which records a listener may read: `kubernetes` (may `get pods/log` in the record's
    /// namespace: what `kubectl logs` already grants), `labels` (pod labels rbac/...), or
    /// `labels-or-kubernetes`.
    #[arg(long, env = "LOG_SOCKET_RECORD_POLICY", value_enum, default_value_t = RecordPolicy::Kubernetes)]
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
}

/// Operator (FlowTaps, outputs, leader election).
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(next_help_heading = "Operator (FlowTaps, outputs, leader election)")]
pub struct OperatorSettings {
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

    /// Memory one FlowTap's buffer may use in the Logging's shared fluentd, in bytes
    /// (`spec.buffer.totalLimitSize`; more is refused with `BufferOutOfRange`).
    #[arg(long, env = "LOG_SOCKET_MAX_TAP_BUFFER_BYTES", default_value_t = crate::operator::buffer_bounds::DEFAULT_MAX_BYTES, value_name = "BYTES")]
    pub max_tap_buffer_bytes: u64,

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

fn trusted_proxies(text: &str) -> Result<crate::auth::limit::TrustedProxies, String> {
    crate::auth::limit::TrustedProxies::parse(text)
}

fn proxies_as_text<S: serde::Serializer>(p: &crate::auth::limit::TrustedProxies, s: S) -> Result<S::Ok, S::Error> {
    let text: Vec<String> = p.0.iter().map(|(a, b)| format!("{a}/{b}")).collect();
    s.serialize_str(&text.join(","))
}

/// A NATS URL as `--print-config` shows it: without a user and password.
fn url_without_userinfo<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::service::without_userinfo(url))
}
