//! A YAML configuration file as defaults for clap flags, for both programs (`log-socket run
//! --config`, k8stail's `config.yaml`): keys are long flag names, and a value from the file is
//! the flag's default, so the environment and the command line still win. clap stays the one
//! source of flags: the file can set exactly the flags there are, checked by the same parsers.

use clap::{ArgAction, Command};
use std::path::Path;

/// What one program lets its file do.
pub struct Rules {
    /// Argument ids a file may not set (they steer the parsing itself, or are not settings).
    pub not_in_file: &'static [&'static str],
    /// Whether a key may take a list (flags given several times).
    pub lists: bool,
    /// Whether `~/x` in a value means the home directory's `x`, as a shell would expand it.
    pub expand_home: bool,
}

/// Why a file cannot be applied; each program words it for its users.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not YAML at all (the parser's message).
    NotYaml(String),
    /// YAML, but not a mapping of keys to values.
    NotAMapping,
    /// A key that is not a string.
    KeyNotAString(String),
    /// A key that names no flag a file may set; with the keys that would be.
    Unknown { key: String, known: Vec<String> },
    /// A value of the wrong shape (a mapping, or a list where lists are not taken).
    NotAValue(String),
    /// A switch given something other than true or false.
    NotABool(String),
}

/// `command` with the values of the YAML `text` as defaults.
pub fn apply(mut command: Command, text: &str, rules: &Rules) -> Result<Command, Problem> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| Problem::NotYaml(e.to_string()))?;
    let map = match value {
        serde_yaml::Value::Null => return Ok(command),
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(Problem::NotAMapping),
    };
    let settable =
        |a: &clap::Arg| a.get_long().is_some() && !a.is_hide_set() && !rules.not_in_file.contains(&a.get_id().as_str());
    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_owned) else {
            return Err(Problem::KeyNotAString(format!("{key:?}")));
        };
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && settable(a))
        else {
            let known = command
                .get_arguments()
                .filter(|a| settable(a))
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect();
            return Err(Problem::Unknown { key, known });
        };
        let id = arg.get_id().clone();
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let values: Option<Vec<String>> = match value {
            serde_yaml::Value::Sequence(items) if rules.lists => items.iter().map(scalar).collect(),
            other => scalar(&other).map(|v| vec![v]),
        };
        let Some(values) = values else {
            return Err(Problem::NotAValue(key));
        };
        if switch {
            match values.as_slice() {
                [v] if v == "true" => command = command.mut_arg(id, |a| a.default_value("true")),
                [v] if v == "false" => {}
                _ => return Err(Problem::NotABool(key)),
            }
            continue;
        }
        let values: Vec<String> = if rules.expand_home {
            values.into_iter().map(|v| expand_home(&v)).collect()
        } else {
            values
        };
        command = command.mut_arg(id, |a| a.default_values(values));
    }
    Ok(command)
}

fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `~/x` as the home directory's `x`, as a shell would have written it on the command line.
pub fn expand_home(v: &str) -> String {
    match (v.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest).to_string_lossy().into_owned(),
        _ => v.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn command() -> Command {
        Command::new("t")
            .arg(Arg::new("tail").long("tail"))
            .arg(Arg::new("exclude").long("exclude").action(ArgAction::Append))
            .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("secret").long("secret").hide(true))
    }

    const RULES: Rules = Rules {
        not_in_file: &["config"],
        lists: true,
        expand_home: false,
    };

    #[test]
    fn values_from_the_file_are_defaults_the_command_line_overrides() {
        let c = apply(command(), "tail: 5\nexclude: [a, b]\nquiet: true\n", &RULES).unwrap();
        let m = c.clone().get_matches_from(["t"]);
        assert_eq!(m.get_one::<String>("tail").unwrap(), "5");
        assert_eq!(m.get_many::<String>("exclude").unwrap().collect::<Vec<_>>(), ["a", "b"]);
        assert!(m.get_flag("quiet"));
        let m = c.get_matches_from(["t", "--tail", "9"]);
        assert_eq!(m.get_one::<String>("tail").unwrap(), "9");
    }

    #[test]
    fn a_file_sets_only_the_flags_a_file_may_set_in_the_shapes_they_take() {
        let unknown = |text: &str| matches!(apply(command(), text, &RULES), Err(Problem::Unknown { .. }));
        assert!(unknown("tial: 1\n"));
        assert!(unknown("config: other.yaml\n"), "config steers the parsing");
        assert!(unknown("secret: x\n"), "hidden flags are not settings");
        match apply(command(), "tial: 1\n", &RULES) {
            Err(Problem::Unknown { known, .. }) => assert_eq!(known, ["tail", "exclude", "quiet"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(apply(command(), "- a\n", &RULES).unwrap_err(), Problem::NotAMapping);
        assert_eq!(
            apply(command(), "quiet: maybe\n", &RULES).unwrap_err(),
            Problem::NotABool("quiet".into())
        );
        assert_eq!(
            apply(command(), "tail: {a: 1}\n", &RULES).unwrap_err(),
            Problem::NotAValue("tail".into())
        );
        let scalars_only = Rules { lists: false, ..RULES };
        assert_eq!(
            apply(command(), "exclude: [a]\n", &scalars_only).unwrap_err(),
            Problem::NotAValue("exclude".into())
        );
        assert!(matches!(apply(command(), "a: [\n", &RULES), Err(Problem::NotYaml(_))));
        assert!(apply(command(), "", &RULES).is_ok(), "an empty file sets nothing");
    }
}
