//! A test that cannot run here (no fluentd, no nats-server) says so, and `make test` names it
//! at the end instead of letting an `ok` pass for a test that did nothing. Under `CI=true` a
//! missing component fails the test instead (CI installs everything).

use std::io::Write;

/// Report that the running test is skipped, and why: on stderr, and as a line `TEST: WHY` in
/// the file `$LOG_SOCKET_SKIP_LOG` (set by `make test`) when there is one. Panics under CI.
pub fn skipped(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI needs it)");
    }
    eprintln!("SKIPPED: {why}");
    let Some(log) = std::env::var_os("LOG_SOCKET_SKIP_LOG").filter(|p| !p.is_empty()) else {
        return;
    };
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let line = format!("{test}: {why}\n");
    // One write of one line, appended: tests of one binary run in parallel.
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
        let _ = file.write_all(line.as_bytes());
    }
}
