//! The k8stail binary against a real relay over real sockets (`--server`): output formats,
//! filters, reconnects without gaps, relay restarts, the resume file, exit codes, pipes.
//! The path through the API server's service proxy is tested in tests/cluster/k8stail_proxy.rs.

use log_socket::auth::{AllowAll, StaticTokens};
use log_socket::relay::http::Parts;
use log_socket::relay::{NoSessions, RelayConfig};
use log_socket::service::Sockets;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use testkit::poll::eventually_within;
use testkit::relay::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};

const TOKEN: &str = "tok-alice";

fn parts() -> Parts {
    Parts {
        authenticator: Arc::new(StaticTokens::parse("tok-alice,alice\n").unwrap()),
        authorizer: Arc::new(AllowAll),
        sessions: Arc::new(NoSessions),
        ingest_auth: ingest_auth(),
    }
}

async fn relay() -> TestRelay {
    start_relay(RelayConfig::default(), parts()).await
}

/// A relay on fixed addresses, so a restarted one is found at the same place.
async fn relay_at(ingest: SocketAddr, api: SocketAddr) -> TestRelay {
    let sockets = Sockets::plain(
        TcpListener::bind(ingest).await.unwrap(),
        TcpListener::bind(api).await.unwrap(),
    );
    start_relay_on(sockets, RelayConfig::default(), parts())
}

async fn stop(mut r: TestRelay) {
    r.stop.cancel();
    (&mut r.done).await.unwrap();
}

/// k8stail with the given arguments, stdout piped (so not a terminal), NO_COLOR unset.
fn k8stail(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_k8stail"));
    cmd.args(args)
        .env_remove("NO_COLOR")
        .env_remove("K8STAIL_TOKEN")
        .env_remove("K8STAIL_SERVER")
        .env("KUBECONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Run k8stail to its end; its exit code and stderr.
async fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = k8stail(args).output().await.unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

struct Tail {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

fn follow(r: &TestRelay, extra: &[&str]) -> Tail {
    let server = format!("http://{}", r.api);
    let mut args = vec![
        "--server",
        server.as_str(),
        "--token",
        TOKEN,
        "shop/web",
        "--max-backoff",
        "500ms",
    ];
    args.extend_from_slice(extra);
    // These tests read records as JSON and only what arrives once they are attached, unless
    // they say otherwise.
    let shaped = ["-o", "--template", "--field"].iter().any(|f| extra.contains(f));
    if !shaped {
        args.extend(["-o", "json"]);
    }
    if !["--tail", "--since", "--no-follow", "--resume-file"]
        .iter()
        .any(|f| extra.contains(f))
    {
        args.extend(["--tail", "0"]);
    }
    let mut child = k8stail(&args).spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Tail { child, lines }
}

impl Tail {
    async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = self.child.start_kill();
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err).await;
                panic!("no line from k8stail ({other:?}); stderr:\n{err}")
            }
        }
    }

    /// Lines until one containing `marker` (excluded).
    async fn until(&mut self, marker: &str) -> Vec<String> {
        let mut out = vec![];
        loop {
            let line = self.line().await;
            if line.contains(marker) {
                return out;
            }
            out.push(line);
        }
    }

    /// SIGINT, as Ctrl-C; returns the exit code and stderr.
    async fn interrupt(self) -> (Option<i32>, String) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id().unwrap() as i32, libc::SIGINT);
        }
        self.exit().await
    }

    async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("k8stail exits")
            .unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        (status.code(), err)
    }
}

fn rec(pod: &str, message: &str) -> Value {
    json!({"message": message, "kubernetes": {"namespace_name": "shop", "pod_name": pod, "container_name": "app"}})
}

/// Post records once k8stail is attached (the relay discards them with 202 until a tap is open).
async fn post_when_open(r: &TestRelay, records: &[Value]) {
    // The tap opens at k8stail's handshake and the listener attaches a moment later (after the
    // upgrade): a record posted in between is before its live stream starts.
    let key = log_socket::protocol::TapKey::parse("flow", "shop", "web").unwrap();
    eventually_within("a listener attached to the tap", Duration::from_secs(15), || async {
        r.relay.tap(&key).is_some_and(|t| t.listener_count() > 0).then_some(())
    })
    .await;
    let (code, body) = post(r, "/flow/shop/web", &array(records)).await;
    assert_eq!(code, 200, "{body}");
}

fn messages(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}"))["message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn records_arrive_raw_when_piped_filtered_at_the_relay() {
    let r = relay().await;
    let mut tail = follow(&r, &["--grep", "^keep", "--pod", "web-"]);
    post_when_open(
        &r,
        &[
            rec("web-1", "keep 1"),
            rec("web-1", "drop 2"),
            rec("db-1", "keep 3"),
            rec("web-2", "keep 4"),
        ],
    )
    .await;
    post(&r, "/flow/shop/web", &array(&[rec("web-1", "keep end")])).await;
    let lines = tail.until("keep end").await;
    assert_eq!(messages(&lines), ["keep 1", "keep 4"]);
    let raw = &lines[0];
    assert_eq!(
        serde_json::from_str::<Value>(raw).unwrap(),
        rec("web-1", "keep 1"),
        "raw output is the record itself"
    );
    let (code, err) = tail.interrupt().await;
    assert_eq!(code, Some(0), "Ctrl-C exits 0: {err}");
    stop(r).await;
}

#[tokio::test]
async fn tail_templates_fields_and_pretty_lines_shape_the_output() {
    let r = relay().await;
    // Something buffered for --tail.
    let mut first = follow(&r, &[]);
    post_when_open(&r, &[rec("web-1", "one"), rec("web-2", "two"), rec("web-1", "three")]).await;
    first.until("three").await;

    let mut tail = follow(
        &r,
        &[
            "--tail",
            "2",
            "--template",
            "{{ kubernetes.pod_name }}#{{ _seq }} {{ message }}",
        ],
    );
    assert_eq!([tail.line().await, tail.line().await], ["web-2#2 two", "web-1#3 three"]);
    let mut fields = follow(
        &r,
        &["--tail", "1", "--field", "kubernetes.pod_name", "--field", "message"],
    );
    assert_eq!(fields.line().await, "web-1 three");
    let mut pretty = follow(&r, &["--tail", "1", "-o", "pretty"]);
    assert_eq!(pretty.line().await, "web-1 app three", "no colour when piped");
    let mut coloured = follow(&r, &["--tail", "1", "-o", "pretty", "--color", "always"]);
    assert!(coloured.line().await.contains("\x1b["), "--color always");
    for t in [first, tail, fields, pretty, coloured] {
        assert_eq!(t.interrupt().await.0, Some(0));
    }
    stop(r).await;
}

/// A TCP forwarder whose connections the test can cut, as a flaky network would.
struct Flaky {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

async fn flaky(to: SocketAddr) -> Flaky {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cuts) = tokio::sync::watch::channel(0u64);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut cuts = cuts.clone();
            cuts.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = cuts.changed() => {} // dropping both ends: a broken connection
                }
            });
        }
    });
    Flaky { addr, cut, accepted }
}

#[tokio::test]
async fn a_cut_connection_is_resumed_without_a_gap_or_a_duplicate() {
    let r = relay().await;
    let net = flaky(r.api).await;
    let server = format!("http://{}", net.addr);
    let mut child = k8stail(&[
        "-o",
        "json",
        "--tail",
        "0",
        "--server",
        &server,
        "--token",
        TOKEN,
        "shop/web",
        "--max-backoff",
        "300ms",
    ])
    .spawn()
    .unwrap();
    let mut tail = Tail {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        child,
    };
    post_when_open(&r, &[rec("web-1", "before 1"), rec("web-1", "before 2")]).await;
    assert_eq!(
        messages(&[tail.line().await, tail.line().await]),
        ["before 1", "before 2"]
    );

    net.cut.send_modify(|n| *n += 1);
    // While k8stail is away, the relay keeps the records in its replay buffer.
    let during: Vec<Value> = (1..=5).map(|i| rec("web-1", &format!("during {i}"))).collect();
    assert_eq!(post(&r, "/flow/shop/web", &array(&during)).await.0, 200);
    post(&r, "/flow/shop/web", &array(&[rec("web-1", "after")])).await;
    let lines = tail.until("after").await;
    assert_eq!(
        messages(&lines),
        ["during 1", "during 2", "during 3", "during 4", "during 5"],
        "every record once, in order"
    );
    assert_eq!(
        net.accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "k8stail reconnected once"
    );
    let (code, err) = tail.interrupt().await;
    assert_eq!(code, Some(0));
    assert!(!err.contains("lost"), "no gap reported: {err}");
    stop(r).await;
}

#[tokio::test]
async fn after_a_relay_restart_k8stail_says_so_and_goes_on() {
    let r = relay().await;
    let (ingest, api) = (r.ingest, r.api);
    let mut tail = follow(&r, &[]);
    post_when_open(&r, &[rec("web-1", "first life")]).await;
    assert_eq!(messages(&[tail.line().await]), ["first life"]);

    stop(r).await;
    let r = relay_at(ingest, api).await;
    post_when_open(&r, &[rec("web-1", "second life")]).await;
    assert_eq!(messages(&[tail.line().await]), ["second life"]);
    let (code, err) = tail.interrupt().await;
    assert_eq!(code, Some(0));
    assert!(err.contains("the tap restarted"), "the possible gap is reported: {err}");
    stop(r).await;
}

#[tokio::test]
async fn no_reconnect_exits_when_the_relay_goes_away() {
    let r = relay().await;
    let mut tail = follow(&r, &["--no-reconnect"]);
    post_when_open(&r, &[rec("web-1", "hello")]).await;
    tail.line().await;
    stop(r).await;
    let (code, err) = tail.exit().await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1001") && err.contains("--no-reconnect"), "{err}");
}

#[tokio::test]
async fn a_resume_file_continues_where_the_last_run_stopped() {
    let r = relay().await;
    let dir = std::env::temp_dir().join(format!("k8stail-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pos = dir.join("web.pos");
    let _ = std::fs::remove_file(&pos);
    let pos_arg = pos.to_str().unwrap();

    let mut tail = follow(&r, &["--resume-file", pos_arg]);
    post_when_open(&r, &[rec("web-1", "seen 1"), rec("web-1", "seen 2")]).await;
    tail.until("seen 2").await;
    assert_eq!(tail.interrupt().await.0, Some(0));
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&pos).unwrap()).unwrap();
    assert_eq!(
        (saved["tap"].as_str(), saved["seq"].as_u64()),
        (Some("flow/shop/web"), Some(2))
    );

    // Records while nobody runs k8stail (the tap lingers), then a second run.
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[rec("web-1", "missed 3")])).await.0,
        200
    );
    let mut again = follow(&r, &["--resume-file", pos_arg]);
    assert_eq!(messages(&[again.line().await]), ["missed 3"], "continues after seq 2");
    assert_eq!(again.interrupt().await.0, Some(0));
    stop(r).await;
}

#[tokio::test]
async fn refusals_and_bad_arguments_exit_non_zero_with_the_reason() {
    let r = relay().await;
    let server = format!("http://{}", r.api);
    let (code, err) = run_to_exit(&["--server", &server, "--token", "wrong", "shop/web"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("401") && err.contains("--token"), "{err}");

    let (code, err) = run_to_exit(&["--server", &server, "--token", TOKEN, "web"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("NAMESPACE/NAME"), "{err}");

    // A bad regex is refused before connecting, clap-style.
    let (code, err) = run_to_exit(&["--server", &server, "--token", TOKEN, "shop/web", "--grep", "("]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--include") && err.contains("unclosed group"), "{err}");

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (code, err) = run_to_exit(&["--server", &format!("http://{closed}"), "--token", TOKEN, "shop/web"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    stop(r).await;
}

#[tokio::test]
async fn piping_into_head_exits_quietly() {
    let r = relay().await;
    let server = format!("http://{}", r.api);
    let script = format!(
        "'{}' --server '{server}' --token {TOKEN} shop/web | head -n 1",
        env!("CARGO_BIN_EXE_k8stail")
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let many: Vec<Value> = (0..50).map(|i| rec("web-1", &format!("m{i}"))).collect();
    post_when_open(&r, &many).await;
    // head exits after one line; k8stail's next write hits the closed pipe.
    for _ in 0..20 {
        let _ = post(&r, "/flow/shop/web", &array(&many)).await;
        if tokio::time::timeout(Duration::from_millis(100), child.wait())
            .await
            .is_ok()
        {
            break;
        }
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.is_empty(), "no error on a closed pipe: {err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    stop(r).await;
}

#[tokio::test]
async fn completions_and_help_are_built_in() {
    let out = k8stail(&["completions", "bash"]).output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("k8stail"));
    let out = k8stail(&["--help"]).output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples:") && help.contains("--resume-file"), "{help}");
}

#[tokio::test]
async fn https_servers_are_verified_against_the_ca_file_and_skipping_that_warns() {
    use log_socket::service::tls::{ReloadingConfig, TlsFiles};
    let certs = std::env::temp_dir().join(format!("k8stail-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    log_socket::service::certs::generate(&certs, &["log-socket.test.svc".into()], 2).unwrap();
    let mut sockets = loopback_sockets().await;
    sockets.api_tls = Some(
        ReloadingConfig::load(TlsFiles {
            cert: certs.join("server.crt"),
            key: certs.join("server.key"),
            client_ca: None,
        })
        .unwrap(),
    );
    let r = start_relay_on(sockets, RelayConfig::default(), parts());
    let server = format!("https://localhost:{}", r.api.port());
    let ca = certs.join("ca.crt");

    let mut verified = k8stail(&[
        "-o",
        "json",
        "--server",
        &server,
        "--ca-file",
        ca.to_str().unwrap(),
        "--token",
        TOKEN,
        "shop/web",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(verified.stdout.take().unwrap()).lines();
    post_when_open(&r, &[rec("web-1", "over tls")]).await;
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(messages(&[line]), ["over tls"]);
    drop(verified);

    let bundle = certs.join("empty-bundle.pem");
    std::fs::write(&bundle, std::fs::read(certs.join("client.crt")).unwrap()).unwrap();
    let (code, err) = run_to_exit(&[
        "--server",
        &server,
        "--ca-file",
        bundle.to_str().unwrap(),
        "--token",
        TOKEN,
        "shop/web",
    ])
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("TLS with localhost") && err.contains("certificate"),
        "{err}"
    );

    let mut insecure = k8stail(&[
        "-o",
        "json",
        "--server",
        &server,
        "--insecure-skip-tls-verify",
        "--token",
        TOKEN,
        "shop/web",
        "--tail", // the tap is already open: the record may be posted before this run attaches
        "1",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(insecure.stdout.take().unwrap()).lines();
    let mut errors = BufReader::new(insecure.stderr.take().unwrap()).lines();
    let warning = tokio::time::timeout(WAIT, errors.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(warning.contains("WARNING: --insecure-skip-tls-verify"), "{warning}");
    post_when_open(&r, &[rec("web-1", "unverified")]).await;
    let mut got = vec![];
    while got.last().map(String::as_str) != Some("unverified") {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend(messages(&[line]));
    }
    drop(insecure);
    stop(r).await;
}

/// k8stail on a pseudo-terminal (util-linux `script`), as a person runs it.
async fn on_a_terminal(r: &TestRelay, no_color: bool) -> String {
    let command = format!(
        "'{}' --server http://{} --token {TOKEN} shop/web --tail 1",
        env!("CARGO_BIN_EXE_k8stail"),
        r.api
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("on a tty") {
        let n = tokio::time::timeout(WAIT, out.read(&mut buf))
            .await
            .expect("output in time")
            .unwrap();
        assert!(n > 0, "script ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_terminal_gets_pretty_coloured_lines_unless_no_color_is_set() {
    let r = relay().await;
    let mut keep = follow(&r, &[]);
    post_when_open(&r, &[rec("web-1", "on a tty")]).await;
    keep.line().await;

    let coloured = on_a_terminal(&r, false).await;
    let line = coloured.lines().find(|l| l.contains("on a tty")).unwrap();
    assert!(line.contains("web-1") && line.contains("app"), "pretty: {line:?}");
    assert!(line.contains("\x1b[3"), "the pod name is coloured: {line:?}");
    assert!(!line.contains('{'), "not JSON: {line:?}");

    let plain = on_a_terminal(&r, true).await;
    let line = plain.lines().find(|l| l.contains("on a tty")).unwrap();
    assert!(
        line.contains("web-1 app on a tty") && !line.contains("\x1b[3"),
        "NO_COLOR: {line:?}"
    );
    assert_eq!(keep.interrupt().await.0, Some(0));
    stop(r).await;
}

/// A relay that sends `frames` to every listener, then closes (`close`) or waits for the
/// listener to go; `older`: it refuses filter options, as an older protocol revision did.
async fn scripted_relay(frames: Vec<Value>, close: bool, older: bool) -> SocketAddr {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let frames = frames.clone();
            tokio::spawn(async move {
                // The callback type is tungstenite's.
                #[allow(clippy::result_large_err)]
                let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                    let query = req.uri().query().unwrap_or_default();
                    // It took only numbers for `tail` (no `tail=all`).
                    let tail = query.split('&').find_map(|kv| kv.strip_prefix("tail="));
                    if let Some(tail) = tail.filter(|t| older && t.parse::<u64>().is_err()) {
                        let body = format!("tail must be a whole number, not {tail:?}");
                        return Err(http::Response::builder().status(400).body(Some(body)).unwrap());
                    }
                    if let Some(option) = query
                        .split('&')
                        .map(|kv| kv.split('=').next().unwrap())
                        .find(|k| older && !matches!(*k, "" | "tail" | "after" | "epoch"))
                    {
                        let body = format!("unknown query option {option:?}; supported: tail, after, epoch");
                        return Err(http::Response::builder().status(400).body(Some(body)).unwrap());
                    }
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", "logsocket.v1".parse().unwrap());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
                    return;
                };
                for f in frames {
                    let _ = ws.send(Message::Text(f.to_string().into())).await;
                }
                if close {
                    let _ = ws.close(None).await;
                } else {
                    while let Some(Ok(_)) = futures::StreamExt::next(&mut ws).await {}
                }
            });
        }
    });
    addr
}

/// A relay of an older protocol revision: no filter options, four records per connection.
async fn older_relay() -> SocketAddr {
    let frames = vec![
        json!({"type": "status", "state": "listening", "tap": "flow/shop/web", "epoch": 1, "firstSeq": 0, "lastSeq": 0, "replayed": 0}),
        json!({"type": "record", "seq": 1, "record": rec("web-1", "error one")}),
        json!({"type": "record", "seq": 2, "record": rec("web-1", "fine")}),
        json!({"type": "record", "seq": 3, "record": rec("db-1", "error three")}),
        json!({"type": "record", "seq": 4, "record": rec("web-2", "error four")}),
    ];
    scripted_relay(frames, false, true).await
}

#[tokio::test]
async fn filters_an_older_relay_does_not_know_are_applied_by_k8stail() {
    let addr = older_relay().await;
    let server = format!("http://{addr}");
    let mut child = k8stail(&[
        "-o", "json", "--tail", "0", "--server", &server, "--token", TOKEN, "shop/web", "--grep", "^error", "--pod",
        "^web-",
    ])
    .spawn()
    .unwrap();
    let mut tail = Tail {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        child,
    };
    assert_eq!(
        messages(&[tail.line().await, tail.line().await]),
        ["error one", "error four"]
    );
    let (code, err) = tail.interrupt().await;
    assert_eq!(code, Some(0));
    assert!(err.contains("k8stail filters them itself"), "{err}");
}

#[tokio::test]
async fn a_relay_from_before_tail_all_still_gets_asked_for_everything_it_holds() {
    let addr = older_relay().await;
    let server = format!("http://{addr}");
    let mut child = k8stail(&[
        "-o", "json", "--tail", "-1", "--server", &server, "--token", TOKEN, "shop/web",
    ])
    .spawn()
    .unwrap();
    let mut tail = Tail {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        child,
    };
    assert_eq!(messages(&[tail.line().await, tail.line().await]), ["error one", "fine"]);
    let (code, _) = tail.interrupt().await;
    assert_eq!(code, Some(0));
}

/// A relay that sends text meant to fool a terminal in every frame k8stail prints about.
async fn hostile_relay() -> SocketAddr {
    let evil = "x\u{1b}[2K\rk8stail: forged line\n\u{9b}31m";
    let frames = vec![
        json!({"type": "status", "state": "listening", "tap": evil, "epoch": 1, "firstSeq": 0, "lastSeq": 0, "replayed": 0}),
        json!({"type": "denied", "namespace": evil, "pod": evil, "count": 3}),
        json!({"type": "dropped", "count": 2, "reason": evil}),
        json!({"type": "status", "state": "tap", "flowTap": evil, "phase": "Pending", "conditions": {}, "message": evil}),
        json!({"type": "error", "code": evil, "message": evil}),
    ];
    scripted_relay(frames, true, false).await
}

#[tokio::test]
async fn text_from_the_relay_reaches_stderr_escaped_and_on_one_line() {
    let addr = hostile_relay().await;
    let server = format!("http://{addr}");
    let (code, err) = run_to_exit(&["--server", &server, "--token", TOKEN, "shop/web", "--no-reconnect"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        !err.contains(['\u{1b}', '\u{9b}', '\r']),
        "raw control characters: {err:?}"
    );
    for line in err.lines() {
        assert!(
            line.starts_with("k8stail: "),
            "a line k8stail did not write: {line:?}\n{err}"
        );
        assert!(!line.starts_with("k8stail: forged"), "{err}");
    }
    assert!(err.contains("withheld"), "the denied notice is there, escaped: {err}");
    assert!(
        !err.contains("kubectl auth can-i"),
        "a name that is no namespace is never put in a command to paste: {err}"
    );
    assert!(err.contains("\\u{1b}[2K"), "{err}");
}

/// The `withheld` notes k8stail prints for a relay sending `frames`, and all it printed.
async fn withheld_notes(frames: Vec<Value>) -> (Vec<String>, String) {
    let addr = scripted_relay(frames, true, false).await;
    let server = format!("http://{addr}");
    let (_, err) = run_to_exit(&["--server", &server, "--token", TOKEN, "shop/web", "--no-reconnect"]).await;
    let withheld = err
        .lines()
        .filter(|l| l.contains("withheld"))
        .map(str::to_owned)
        .collect();
    (withheld, err)
}

#[tokio::test]
async fn withheld_records_say_once_per_namespace_how_to_get_access() {
    let frames = vec![
        json!({"type": "status", "state": "listening", "tap": "shop/web", "epoch": 1, "firstSeq": 0, "lastSeq": 0, "replayed": 0}),
        json!({"type": "denied", "namespace": "shop", "pod": "web-1", "count": 3}),
        json!({"type": "denied", "namespace": "shop", "pod": "web-2", "count": 2}),
    ];
    let (withheld, err) = withheld_notes(frames).await;
    assert_eq!(withheld.len(), 2, "{err}");
    assert!(withheld[0].contains("kubectl auth can-i get pods/log -n shop"), "{err}");
    assert!(!withheld[1].contains("kubectl"), "said once: {err}");
}

#[tokio::test]
async fn withheld_counts_of_todays_relays_say_once_how_to_get_access_and_name_no_pod() {
    let frames = vec![
        json!({"type": "status", "state": "listening", "tap": "shop/web", "epoch": 1, "firstSeq": 0, "lastSeq": 0, "replayed": 0}),
        json!({"type": "denied", "count": 3}),
        json!({"type": "denied", "count": 2}),
    ];
    let (withheld, err) = withheld_notes(frames).await;
    assert_eq!(withheld.len(), 2, "{err}");
    assert!(withheld[0].starts_with("k8stail: 3 records withheld: you may not read them (the relay gives you a record if you may read its pod's logs: kubectl auth can-i get pods/log -n NAMESPACE"), "{err}");
    assert_eq!(
        withheld[1], "k8stail: 2 records withheld: you may not read them",
        "said once: {err}"
    );
}

#[tokio::test]
async fn what_rate_left_out_is_said_on_stderr_at_most_once_a_second_and_as_frames_with_o_frame() {
    let frames = vec![
        json!({"type": "status", "state": "listening", "tap": "flow/shop/web", "epoch": 1, "firstSeq": 0, "lastSeq": 0, "replayed": 0}),
        json!({"type": "dropped", "reason": "sampled", "count": 1100, "pods": {"shop/web-1": 1000, "shop/web-2": 100}}),
        json!({"type": "dropped", "reason": "sampled", "count": 134, "pods": {"shop/web-2": 134}}),
    ];
    let addr = scripted_relay(frames.clone(), true, false).await;
    let server = format!("http://{addr}");
    let (_, err) = run_to_exit(&[
        "--server",
        &server,
        "--token",
        TOKEN,
        "shop/web",
        "--no-reconnect",
        "--rate",
        "100",
    ])
    .await;
    let sampled: Vec<&str> = err.lines().filter(|l| l.contains("sampled out")).collect();
    assert_eq!(
        sampled,
        [
            "k8stail: 1 100 records sampled out (web-1: 1 000, web-2: 100)",
            // Within the second: said when the stream ends, not lost.
            "k8stail: 134 records sampled out (web-2: 134)"
        ],
        "{err}"
    );
    // -o frame: the frames themselves, on stdout among the records.
    let addr = scripted_relay(frames, true, false).await;
    let server = format!("http://{addr}");
    let out = k8stail(&[
        "--server",
        &server,
        "--token",
        TOKEN,
        "shop/web",
        "--no-reconnect",
        "-o",
        "frame",
    ])
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|f| f["reason"] == "sampled")
        .map(|f| f["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1100, 134], "{stdout}");
}

#[tokio::test]
async fn rate_against_a_relay_from_before_sampling_says_so_instead_of_streaming_everything() {
    let addr = scripted_relay(vec![], true, true).await;
    let server = format!("http://{addr}");
    let (code, err) = run_to_exit(&[
        "--server", &server, "--token", TOKEN, "shop/web", "--rate", "10", "-i", "x",
    ])
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("this relay does not sample (--rate needs a newer log-socket)"),
        "{err}"
    );
}

#[tokio::test]
async fn kubeconfig_flags_go_before_a_subcommand_and_tail_options_there_are_refused() {
    // `--kubeconfig` before `taps` reaches the taps command (which then cannot read the file).
    let (code, stderr) = run_to_exit(&["--kubeconfig", "/nonexistent/kubeconfig", "taps", "-A"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
    // Streaming options there would be ignored: a usage error instead, naming them.
    let (code, stderr) = run_to_exit(&["--tail", "5", "shop/web", "taps"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--tail, a flow cannot be used with `k8stail taps`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn no_follow_prints_what_the_relay_holds_and_exits_0() {
    let r = relay().await;
    // A listener keeps the tap open; the records are then in its buffer.
    let mut keeper = follow(&r, &[]);
    post_when_open(&r, &[rec("web-1", "one"), rec("web-2", "two"), rec("web-1", "three")]).await;
    keeper.until("three").await;
    let server = format!("http://{}", r.api);
    let base = [
        "--server",
        server.as_str(),
        "--token",
        TOKEN,
        "shop/web",
        "--no-follow",
        "-o",
        "raw",
    ];
    let run = async |extra: &[&str]| {
        let out = k8stail(&[&base[..], extra].concat()).output().await.unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[]).await;
    assert_eq!((code, out.as_str()), (Some(0), "one\ntwo\nthree\n"), "{err}");
    let (_, out, _) = run(&["--tail", "2"]).await;
    assert_eq!(out, "two\nthree\n");
    let (_, out, _) = run(&["--pod", "web-1", "-e", "three"]).await;
    assert_eq!(out, "one\n");
    let (_, out, _) = run(&["--tail", "0"]).await;
    assert_eq!(out, "");
}

#[tokio::test]
async fn several_flows_merge_into_one_stream_each_line_saying_its_flow() {
    let r = relay().await;
    let server = format!("http://{}", r.api);
    let mut child = k8stail(&[
        "--server", &server, "--token", TOKEN, "-n", "shop", "web", "api", "--tail", "0",
    ])
    .spawn()
    .unwrap();
    let mut tail = Tail {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        child,
    };
    // Both taps open (one listener each) before posting.
    for flow in ["web", "api"] {
        let key = log_socket::protocol::TapKey::parse("flow", "shop", flow).unwrap();
        eventually_within(&format!("a listener on {flow}"), Duration::from_secs(15), || async {
            r.relay.tap(&key).is_some_and(|t| t.listener_count() > 0).then_some(())
        })
        .await;
    }
    assert_eq!(
        post(&r, "/flow/shop/web", &array(&[rec("web-1", "from web")])).await.0,
        200
    );
    assert_eq!(
        post(&r, "/flow/shop/api", &array(&[rec("api-1", "from api")])).await.0,
        200
    );
    let mut lines = vec![tail.line().await, tail.line().await];
    lines.sort();
    assert_eq!(lines, ["shop/api api-1 app from api", "shop/web web-1 app from web"]);
    let (code, _) = tail.interrupt().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn the_config_file_named_by_k8stail_config_sets_defaults_and_version_names_the_build() {
    let r = relay().await;
    let mut keeper = follow(&r, &[]);
    post_when_open(&r, &[rec("web-1", "a"), rec("web-1", "b")]).await;
    keeper.until("b").await;
    let dir = std::env::temp_dir().join(format!("k8stail-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    let server = format!("http://{}", r.api);
    std::fs::write(
        &config,
        format!("server: {server}\nno-follow: true\noutput: raw\ntail: 1\n"),
    )
    .unwrap();
    let out = k8stail(&["--token", TOKEN, "shop/web"])
        .env("K8STAIL_CONFIG", &config)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "b\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A flag wins over the file.
    let out = k8stail(&["--token", TOKEN, "shop/web", "--tail", "2"])
        .env("K8STAIL_CONFIG", &config)
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    // A named file that is missing, or a key that is no flag, is a usage error naming the file.
    std::fs::write(&config, "tial: 3\n").unwrap();
    let (code, err) = run_to_exit(&["--config", config.to_str().unwrap(), "shop/web"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("config.yaml") && err.contains("tial"), "{err}");
    let (code, err) = run_to_exit(&["--config", "/nonexistent/k8stail.yaml", "shop/web"]).await;
    assert_eq!(code, Some(2), "{err}");
    let out = k8stail(&["--version"]).output().await.unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("k8stail {} (commit ", env!("CARGO_PKG_VERSION")))
            && version.contains(", built 20"),
        "{version}"
    );
}
