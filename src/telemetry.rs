//! The process's own logs: `tracing` on stderr, as text for people or JSON for collectors.
//! Both programs set it up here; tokens never reach a log line (see docs/security.md).

use clap::ValueEnum;
use serde::Serialize;

/// Format of the service's own log lines.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Set up `tracing` output on stderr.
pub fn init_tracing(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over the configured level so a developer can turn on one module's debug logs.
    // The NATS client's debug logs print its server URLs whole, credentials included: it
    // logs at info at most unless RUST_LOG asks for it by name.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| match level {
            "debug" | "trace" => EnvFilter::try_new(format!("{level},async_nats=info")),
            _ => EnvFilter::try_new(level),
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
