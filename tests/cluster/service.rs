//! The `log-socket run` service against the real API server.

use crate::support;
use std::time::Duration;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

#[tokio::test]
async fn the_service_serves_health_until_shutdown_then_returns() {
    let client = support::client().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(log_socket::service::run(listener, client, async {
        let _ = stopped.await;
    }));

    let mut ready = (0, String::new());
    for _ in 0..100 {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), tokio::spawn(get(addr, "/readyz"))).await {
            ready = r;
            if ready.0 == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, (200, "ready\n".to_string()));
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(
        get(addr, "/metrics").await.0,
        404,
        "nothing else is served unauthenticated"
    );

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("service stops after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn the_service_binary_refuses_to_start_without_permission_and_says_which() {
    let client = support::client().await;
    let ns = support::namespace(&client, "svc-perm").await;
    let token = support::service_account_token(&client, &ns, "log-socket").await;
    let dir = support::tempdir("svc-perm");
    let kubeconfig = support::kubeconfig_with_token(&token, &dir.join("kubeconfig"));

    let out = tokio::process::Command::new(support::bin("log-socket"))
        .args(["run", "--health-addr", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("list flowtaps.logsocket.dev"), "{stderr}");
    assert!(!stderr.contains(&token), "the token never appears in the logs");
}

#[tokio::test]
async fn the_service_binary_stops_cleanly_on_sigterm() {
    let env = support::env();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(support::bin("log-socket"))
        .args(["run", "--health-addr", &format!("127.0.0.1:{port}"), "--kubeconfig"])
        .arg(&env.kubeconfig)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() && get(addr, "/readyz").await.0 == 200 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "service became ready");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
