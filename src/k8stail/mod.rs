//! The `k8stail` command line: `k8stail web` streams a flow (several merge into one stream);
//! `k8stail taps` lists FlowTaps; `k8stail completions SHELL` prints the completion script.
//!
//! - `args`: the clap types, the one source of truth for flags, env fallbacks, `--help` and
//!   the config file's keys (`config`); stern's flags keep stern's meaning;
//! - `target`: reading a flow's name; `select`: which records (relay options and local checks);
//! - `connect`: the route to the relay (the API server's service proxy, or `--server`);
//! - `stream`: following a flow, reconnecting and resuming (`resume`: `--resume-file`), notes
//!   on stderr (`notes`); `preflow`: the pods' own logs while the tap warms up;
//! - `render`, `template`, `clock`: the output formats, `--template`, timestamps;
//! - `complete`: dynamic shell completion from the cluster; `taps`: `k8stail taps`;
//! - `run`: the program itself (`main`, `run`), over the modules above; this file is its face.
//!
//! Text from the network (records, notes) is never printed raw to a terminal in the human
//! formats: control characters are escaped, so a pod cannot move the cursor or forge lines.

mod args;
mod clock;
pub mod complete;
mod config;
mod connect;
mod connection;
mod escape;
mod notes;
mod preflow;
pub mod render;
mod resume;
mod run;
mod sampled;
mod select;
mod stream;
mod taps;
mod target;
mod template;

use crate::protocol::TapKey;
pub use args::{Cli, ColorChoice, KubeArgs, OutputFormat, Scheme, TailArgs, TailCommand, TimestampFormat, VERSION};
pub use escape::one_line;
pub use run::{main, run};
pub use taps::age;
pub use target::{parse as parse_target, Named};

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn stern_flags_that_mean_nothing_for_a_flow_are_refused_with_the_k8stail_way() {
        for (args, says) in [
            (&["--completion", "bash"][..], "k8stail completions bash"),
            (&["--max-log-requests", "5"], "drop it"),
            (&["--field-selector", "spec.nodeName=n1"], "--node n1"),
            (&["--container-state", "running"], "every state"),
            (&["--init-containers=false"], "-c REGEX"),
            (&["-p"], "k8stail taps"),
            (&["--stdin"], "jq"),
            (&["--qps", "-1"], "drop them"),
        ] {
            let err = Cli::try_parse_args([&["k8stail", "web"], args].concat()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_version_names_the_commit_and_the_build_date() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains("commit ") && VERSION.contains("built "), "{VERSION}");
    }
}
