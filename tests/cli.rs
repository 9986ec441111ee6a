//! Tests of the binaries that need no cluster: the committed CRD, configuration precedence,
//! and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::poll::{eventually_within, free_port};

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
fn the_committed_crds_match_the_rust_types() {
    let generated = stdout(&log_socket(&["crd"], &[]));
    let committed = std::fs::read_to_string(repo().join("crds/flowtap.yaml")).expect("crds/flowtap.yaml exists");
    assert!(
        generated == committed,
        "crds/flowtap.yaml is out of date with src/k8s/flowtap.rs; regenerate it with `make crds` and commit it"
    );
    let chart = std::fs::read_to_string(repo().join("config/helm/log-socket/crds/flowtap.yaml")).unwrap();
    assert!(
        generated == chart,
        "the Helm chart's crds/flowtap.yaml is out of date; regenerate it with `make crds` and commit it"
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

#[test]
fn standalone_mode_refuses_to_start_without_listener_tokens() {
    let out = log_socket(
        &[
            "run",
            "--standalone",
            "--ingest-insecure",
            "--health-addr",
            "127.0.0.1:0",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("standalone mode needs --token-file"), "{stderr}");
}

#[test]
fn standalone_mode_refuses_an_open_ingest_port_unless_asked() {
    let tokens = config_file("tokens-open.csv", "t0k,alice\n");
    let out = log_socket(&["run", "--standalone", "--token-file", tokens.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--ingest-credentials FILE"), "{stderr}");
    assert!(stderr.contains("--ingest-insecure"), "{stderr}");
}

#[tokio::test]
async fn the_standalone_service_relays_records_and_stops_cleanly_on_sigterm() {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let tokens = config_file("tokens.csv", "listener-secret-token,alice,1,\"dev\"\n");
    let creds = config_file("ingest.txt", "fluentd:ingest-secret-password\n");
    let (ingest, api, health) = (free_port(), free_port(), free_port());
    let service = testkit::relay::Service::spawn(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_log-socket"))
            .args(["run", "--standalone", "--log-level", "debug"])
            .arg("--token-file")
            .arg(&tokens)
            .arg("--ingest-credentials")
            .arg(&creds)
            .args(["--ingest-addr", &format!("127.0.0.1:{ingest}")])
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--health-addr", &format!("127.0.0.1:{health}")])
            .env_remove("RUST_LOG"),
    );

    let mut ws = eventually_within(
        "the service accepts listeners",
        std::time::Duration::from_secs(15),
        || async {
            let mut req = format!("ws://127.0.0.1:{api}/flow/shop/web")
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("x-authorization", "listener-secret-token".parse().unwrap());
            tokio_tungstenite::connect_async(req).await.ok().map(|(s, _)| s)
        },
    )
    .await;
    async fn next<S: futures::Stream<Item = Result<Message, E>> + Unpin, E: std::fmt::Debug>(ws: &mut S) -> Message {
        tokio::time::timeout(std::time::Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
    assert!(matches!(next(&mut ws).await, Message::Text(t) if t.as_str().contains("\"listening\"")));

    // base64("fluentd:ingest-secret-password")
    let body = br#"[{"message":"hello from fluentd","kubernetes":{"pod_name":"web-1","namespace_name":"shop"}}]"#;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ingest)).await.unwrap();
    let head = format!(
        "POST /flow/shop/web HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Authorization: Basic Zmx1ZW50ZDppbmdlc3Qtc2VjcmV0LXBhc3N3b3Jk\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    match next(&mut ws).await {
        Message::Text(t) => assert!(t.as_str().contains("hello from fluentd"), "{}", t.as_str()),
        other => panic!("expected a record, got {other:?}"),
    }

    service.terminate();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let stderr = service.exited_cleanly().await;
    assert!(stderr.contains("listener connected"), "{stderr}");
    assert!(
        !stderr.contains("listener-secret-token"),
        "tokens never appear in logs: {stderr}"
    );
    assert!(
        !stderr.contains("ingest-secret-password"),
        "passwords never appear in logs: {stderr}"
    );
}

#[test]
fn certs_writes_a_ca_and_server_and_client_certificates_with_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = log_socket(
        &[
            "certs",
            "--out",
            dir.to_str().unwrap(),
            "--dns",
            "log-socket.logging.svc",
        ],
        &[],
    );
    let listed = stdout(&out);
    for f in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ] {
        let path = dir.join(f);
        assert!(listed.contains(path.to_str().unwrap()), "{listed}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is private");
    }
    assert!(std::fs::read_to_string(dir.join("server.crt"))
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));

    let again = log_socket(&["certs", "--out", dir.to_str().unwrap(), "--dns", "x"], &[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exists; choose an empty directory"), "{stderr}");
}

#[test]
fn a_client_ca_without_ingest_tls_is_refused_before_anything_starts() {
    let out = log_socket(
        &[
            "run",
            "--standalone",
            "--ingest-client-ca",
            "/tmp/ca.crt",
            "--print-config",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ingest-tls-cert"), "{stderr}");
}

#[test]
fn every_flag_of_the_service_is_in_the_configuration_reference() {
    let help = stdout(&log_socket(&["run", "--help"], &[]));
    let readme = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    // Option lines start with `-x, --flag` or `--flag`; descriptions may mention other flags.
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            l.split(|c: char| c.is_whitespace() || c == ',')
                .find(|w| w.starts_with("--"))
        })
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(flags.len() > 30, "{help}");
    let missing: Vec<&&str> = flags.iter().filter(|f| !readme.contains(&format!("| `{f}"))).collect();
    assert!(
        missing.is_empty(),
        "flags without a row in docs/configuration.md: {missing:?}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn the_docker_build_context_holds_every_file_the_manifest_names() {
    // What the Dockerfile's build stage copies in, nothing else: every target the manifest
    // declares must be there (a declared target whose file is missing fails every build).
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let ignored = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let ctx = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-context");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            assert!(
                !ignored.lines().any(|i| i.trim() == *src),
                "{src} is copied but .dockerignore leaves it out"
            );
            copy_tree(&repo().join(src), &ctx.join(src));
        }
    }
    // cargo metadata quietly drops a declared target whose file is missing (a build fails on
    // it), so compare with the repository's: its libraries, binaries and benches must be there.
    let targets = |dir: &Path| -> Vec<String> {
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
            .current_dir(dir)
            .output()
            .unwrap();
        let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        metadata["packages"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| ["lib", "bin", "bench"].contains(&t["kind"][0].as_str().unwrap()))
            .map(|t| format!("{} {}", t["kind"][0].as_str().unwrap(), t["name"].as_str().unwrap()))
            .collect()
    };
    let mut missing = targets(repo());
    let present = targets(&ctx);
    missing.retain(|t| !present.contains(t));
    assert!(
        missing.is_empty(),
        "the Dockerfile does not copy the files of {missing:?}"
    );
}

#[test]
fn cluster_mode_refuses_a_shared_ingest_credential_and_asks_for_per_flow_keys() {
    let creds = config_file("shared-creds.txt", "fluentd:s3cret\n");
    let out = log_socket(&["run", "--ingest-credentials", creds.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--ingest-credentials is for standalone mode"),
        "{stderr}"
    );
    assert!(stderr.contains("--ingest-key-file"), "{stderr}");

    let out = log_socket(&["run"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cluster mode needs --ingest-key-file"), "{stderr}");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
}

#[test]
fn ingest_credential_prints_the_credential_of_one_flow_path() {
    let keys = config_file("ingest-keys", "0123456789abcdef0123456789abcdef-cli\n");
    let out = log_socket(
        &[
            "ingest-credential",
            "flow/shop/web",
            "--ingest-key-file",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "flow/shop/web");
    let expected = log_socket::auth::ingest_keys::IngestKeys::from_keys(&["0123456789abcdef0123456789abcdef-cli"])
        .unwrap()
        .credential("flow/shop/web");
    assert_eq!(lines[1], expected.1);
    // Another path, another password.
    let other = stdout(&log_socket(
        &[
            "ingest-credential",
            "/flow/shop/api",
            "--ingest-key-file",
            keys.to_str().unwrap(),
        ],
        &[],
    ));
    assert_ne!(other.lines().nth(1), Some(lines[1]));

    let out = log_socket(
        &[
            "ingest-credential",
            "flow/Shop/web",
            "--ingest-key-file",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a flow path"));
}

#[test]
fn label_key_prints_the_keys_the_label_policy_reads() {
    let out = stdout(&log_socket(
        &[
            "label-key",
            "--user",
            "system:serviceaccount:shop:alice",
            "--user",
            "alice@example.com",
            "--group",
            "oncall",
        ],
        &[],
    ));
    assert_eq!(out, "rbac/sa.shop.alice\nrbac/u.alice_40example_2ecom\nrbac/g.oncall\n");
}

#[test]
fn the_krew_manifest_installs_the_plugin_binary_this_package_builds() {
    // Rendered as krew-release-bot renders it at a tag.
    let template = std::fs::read_to_string(repo().join("config/krew/flowtail.yaml")).unwrap();
    let rendered = template
        .replace(
            "{{ addURIAndSha \"https://example.invalid/log-socket/releases/download/{{ .TagName }}/kubectl-flowtail-linux-amd64.tar.gz\" .TagName }}",
            "uri: https://example.invalid/log-socket/releases/download/v0.1.0/kubectl-flowtail-linux-amd64.tar.gz\n    sha256: 0000000000000000000000000000000000000000000000000000000000000000",
        )
        .replace("{{ .TagName }}", "v0.1.0");
    assert!(
        !rendered.contains("{{"),
        "every template part is one krew-release-bot fills:\n{rendered}"
    );
    let plugin: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
    assert_eq!(plugin["apiVersion"], "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(plugin["kind"], "Plugin");
    assert_eq!(plugin["metadata"]["name"], "flowtail", "`kubectl flowtail`");
    let platforms = plugin["spec"]["platforms"].as_sequence().unwrap();
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for p in platforms {
        let bin = p["bin"].as_str().unwrap();
        assert_eq!(bin, "kubectl-flowtail");
        assert!(
            manifest.contains(&format!("name = \"{bin}\"")),
            "Cargo.toml builds {bin}"
        );
        let labels = &p["selector"]["matchLabels"];
        let archive = format!(
            "{bin}-{}-{}.tar.gz",
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap()
        );
        assert!(p["uri"].as_str().unwrap().ends_with(&archive), "{p:?}");
        assert!(makefile.contains(&archive), "make krew-archive builds {archive}");
        for f in p["files"].as_sequence().unwrap() {
            let from = f["from"].as_str().unwrap();
            assert!(
                makefile.contains(&format!("-czf target/krew/{archive} kubectl-flowtail LICENSE"))
                    && ["kubectl-flowtail", "LICENSE"].contains(&from),
                "{from} is packed"
            );
        }
    }
}

#[test]
fn the_nats_bus_refuses_to_start_without_a_bus_key_and_in_cluster_mode_without_nats_credentials_and_tls() {
    let tokens = config_file("tokens-nats.csv", "t0k,alice\n");
    let creds = config_file("ingest-nats.txt", "fluentd:s3cret\n");
    let key = config_file("bus-key-nats", "0123456789abcdef0123456789abcdef0123456789\n");
    let refused = |args: &[&str], says: &str| {
        let out = log_socket(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    let standalone = [
        "run",
        "--standalone",
        "--bus",
        "nats",
        "--token-file",
        tokens.to_str().unwrap(),
        "--ingest-credentials",
        creds.to_str().unwrap(),
        "--health-addr",
        "127.0.0.1:0",
    ];
    refused(&standalone, "--bus nats needs --bus-key-file FILE");
    // Cluster mode: refused before it looks for a cluster.
    let cluster = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--bus",
            "nats",
            "--ingest-insecure",
            "--bus-key-file",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for (extra, says) in [
        (vec![], "needs NATS credentials and TLS (neither is set)"),
        (vec!["--nats-url", "tls://nats:4222"], "(no --nats-credentials)"),
        (
            vec!["--nats-credentials", creds.to_str().unwrap()],
            "(no TLS: use a tls:// URL or --nats-ca-file)",
        ),
    ] {
        let args = cluster(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, says);
    }
}

#[test]
fn print_config_and_help_never_show_the_nats_password() {
    let out = log_socket(
        &["run", "--print-config"],
        &[("LOG_SOCKET_NATS_URL", "nats://log-socket:s3cret-pw@nats:4222")],
    );
    let text = stdout(&out);
    assert!(
        text.contains("nats://nats:4222") && !text.contains("s3cret-pw"),
        "{text}"
    );
    let help = log_socket(
        &["run", "--help"],
        &[("LOG_SOCKET_NATS_URL", "nats://log-socket:s3cret-pw@nats:4222")],
    );
    assert!(!stdout(&help).contains("s3cret-pw"));
}
