//! `~/.config/k8stail/config.yaml` (or `--config FILE`, or `K8STAIL_CONFIG`): defaults for
//! k8stail's flags, keyed by their long names, as stern's config file is:
//!
//! ```yaml
//! tail: 10
//! timestamps: short
//! exclude: [healthz, readyz]
//! ```
//!
//! A value from the file is the flag's default: the command line and the environment win.

use crate::config_file::{self, expand_home, Problem, Rules};
use clap::Command;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Flags the file may not set: where the file is, and what to follow.
const NOT_IN_FILE: &[&str] = &["config", "targets", "help", "version"];

/// `command` with the config file's values as defaults. A missing file at the default place is
/// no config; one named by `--config` or `K8STAIL_CONFIG` must exist.
pub fn with_defaults(command: Command, args: &[OsString]) -> Result<Command, String> {
    let (path, explicit) = match explicit_path(args) {
        Some(p) => (p, true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(command),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(command),
        Err(e) => return Err(format!("cannot read the config file {}: {e}", path.display())),
    };
    apply(command, &text, &path)
}

/// Apply the YAML `text` (from `path`, for messages) to `command`.
pub fn apply(command: Command, text: &str, path: &Path) -> Result<Command, String> {
    let rules = Rules {
        not_in_file: NOT_IN_FILE,
        lists: true,
        expand_home: true,
    };
    let where_ = path.display();
    config_file::apply(command, text, &rules).map_err(|problem| match problem {
        Problem::NotYaml(e) => format!("the config file {where_} is not YAML: {e}"),
        Problem::NotAMapping => format!("the config file {where_} must be a mapping of flag names to values"),
        Problem::KeyNotAString(key) => format!("the config file {where_} has a key that is not a flag name: {key}"),
        Problem::Unknown { key, .. } => format!(
            "the config file {where_} sets {key:?}, which is not a k8stail flag it can set (keys are long flag names: tail, timestamps, namespace, output...)"
        ),
        Problem::NotAValue(key) => {
            format!("the config file {where_}: {key} must be a string, a number, a boolean or a list of them")
        }
        Problem::NotABool(key) => format!("the config file {where_}: {key} is true or false"),
    })
}

/// `--config FILE` / `--config=FILE` on the command line, else `K8STAIL_CONFIG`.
fn explicit_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(a) = a.to_str() else { continue };
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(|p| PathBuf::from(expand_home(&p.to_string_lossy())));
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(expand_home(p)));
        }
    }
    std::env::var_os("K8STAIL_CONFIG")
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(expand_home(&p.to_string_lossy())))
}

/// `$XDG_CONFIG_HOME/k8stail/config.yaml`, else `~/.config/k8stail/config.yaml`.
fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("k8stail").join("config.yaml"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn parse(config: &str, args: &[&str]) -> Result<crate::k8stail::Cli, String> {
        let command = apply(crate::k8stail::Cli::command(), config, Path::new("test.yaml"))?;
        let matches = command
            .try_get_matches_from([&["k8stail"], args].concat())
            .map_err(|e| e.to_string())?;
        crate::k8stail::Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
    }

    #[test]
    fn the_config_file_sets_defaults_that_the_command_line_overrides() {
        let config = "tail: 25\ntimestamps: short\nexclude: [healthz, readyz]\nno-follow: true\nnamespace: shop\n";
        let cli = parse(config, &["web"]).unwrap();
        assert_eq!(cli.tail.tail, Some(25));
        assert_eq!(cli.tail.timestamps, Some(crate::k8stail::TimestampFormat::Short));
        assert_eq!(cli.tail.exclude, ["healthz", "readyz"]);
        assert!(cli.tail.no_follow);
        assert_eq!(cli.tail.namespace.as_deref(), Some("shop"));
        let cli = parse(config, &["web", "--tail", "3", "-e", "x", "-n", "api"]).unwrap();
        assert_eq!(cli.tail.tail, Some(3));
        assert_eq!(cli.tail.exclude, ["x"]);
        assert_eq!(cli.tail.namespace.as_deref(), Some("api"));
    }

    #[test]
    fn a_config_key_that_is_not_a_flag_or_a_bad_value_is_refused_naming_the_file() {
        let err = parse("tial: 3\n", &["web"]).unwrap_err();
        assert!(err.contains("test.yaml") && err.contains("\"tial\""), "{err}");
        assert!(parse("targets: [web]\n", &["web"]).unwrap_err().contains("targets"));
        assert!(parse("no-follow: maybe\n", &["web"])
            .unwrap_err()
            .contains("true or false"));
        assert!(parse("- a\n", &["web"]).unwrap_err().contains("mapping"));
        assert!(parse("tail: {a: 1}\n", &["web"]).unwrap_err().contains("tail must be"));
        // A value clap refuses is refused when parsing, as on the command line.
        assert!(parse("tail: lots\n", &["web"]).is_err());
    }
}
