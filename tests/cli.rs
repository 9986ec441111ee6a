//! Tests of the binaries that need no cluster: the committed CRD, configuration precedence,
//! and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn log_socket(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_log-socket"));
    cmd.args(args);
    // Only the variables a test sets, so a developer's own LOG_SOCKET_* never leaks in.
    for (k, _) in std::env::vars() {
        if k.starts_with("LOG_SOCKET_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run log-socket")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_committed_crd_matches_the_rust_types() {
    let generated = stdout(&log_socket(&["crd"], &[]));
    let committed = std::fs::read_to_string(repo().join("crds/flowtap.yaml")).expect("crds/flowtap.yaml exists");
    assert!(
        generated == committed,
        "crds/flowtap.yaml is out of date with src/crd.rs; regenerate it with `make crds` and commit it"
    );
}

#[test]
fn settings_come_from_defaults_then_file_then_env_then_flags() {
    let file = config_file(
        "precedence.yaml",
        "health-addr: 127.0.0.1:7001\nlog-level: debug\nlog-format: json\ncontext: from-file\n",
    );
    let file = file.to_str().unwrap();

    let defaults = stdout(&log_socket(&["run", "--print-config"], &[]));
    assert!(defaults.contains("health-addr: 0.0.0.0:10002\n"), "{defaults}");
    assert!(defaults.contains("log-level: info\n"), "{defaults}");

    let from_file = stdout(&log_socket(&["run", "--config", file, "--print-config"], &[]));
    assert!(from_file.contains("health-addr: 127.0.0.1:7001\n"), "{from_file}");
    assert!(from_file.contains("log-format: json\n"), "{from_file}");
    assert!(from_file.contains("context: from-file\n"), "{from_file}");

    let env_over_file = stdout(&log_socket(
        &["run", "--print-config"],
        &[
            ("LOG_SOCKET_CONFIG", file),
            ("LOG_SOCKET_HEALTH_ADDR", "127.0.0.1:7002"),
        ],
    ));
    assert!(
        env_over_file.contains("health-addr: 127.0.0.1:7002\n"),
        "{env_over_file}"
    );
    assert!(
        env_over_file.contains("log-level: debug\n"),
        "the file still applies: {env_over_file}"
    );

    let flag_over_env = stdout(&log_socket(
        &[
            "run",
            "--config",
            file,
            "--health-addr",
            "127.0.0.1:7003",
            "--print-config",
        ],
        &[("LOG_SOCKET_HEALTH_ADDR", "127.0.0.1:7002")],
    ));
    assert!(
        flag_over_env.contains("health-addr: 127.0.0.1:7003\n"),
        "{flag_over_env}"
    );
}

#[test]
fn an_unknown_setting_in_the_config_file_is_an_error_that_lists_the_known_ones() {
    let file = config_file("typo.yaml", "helth-addr: 127.0.0.1:1\n");
    let out = log_socket(&["run", "--config", file.to_str().unwrap(), "--print-config"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown setting `helth-addr`"), "{stderr}");
    assert!(stderr.contains("health-addr"), "{stderr}");
}

#[test]
fn a_bad_value_in_the_config_file_is_reported_like_a_bad_flag() {
    let file = config_file("bad-addr.yaml", "health-addr: not-an-address\n");
    let out = log_socket(&["run", "--config", file.to_str().unwrap(), "--print-config"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not-an-address"), "{stderr}");
    assert!(stderr.contains("--health-addr"), "{stderr}");
}

#[test]
fn a_missing_or_malformed_config_file_is_named_in_the_error() {
    let out = log_socket(&["run", "--config", "/nonexistent/log-socket.yaml"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read config file /nonexistent/log-socket.yaml"),
        "{stderr}"
    );

    let file = config_file("list.yaml", "- a\n- b\n");
    let out = log_socket(&["run", "--config", file.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must be a YAML mapping"), "{stderr}");
}
