//! `log-socket check`: what the chart's `helm test` Pod runs inside the cluster. Each check is
//! one line saying what was checked, or what failed and where to look.

use crate::k8s::flowtap::FlowTap;
use kube::api::{Api, ListParams};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Run every check; the lines to print, and whether all passed.
pub async fn check(ready_url: &str, kubeconfig: Option<&std::path::Path>) -> (Vec<String>, bool) {
    let mut lines = vec![];
    let mut ok = true;
    match ready(ready_url).await {
        Ok(()) => lines.push(format!("ok: {ready_url} answers 200 (ready)")),
        Err(e) => {
            ok = false;
            lines.push(format!(
                "FAILED: {ready_url}: {e} (kubectl describe pod and kubectl logs of log-socket say why it is not ready)"
            ));
        }
    }
    match flowtaps(kubeconfig).await {
        Ok(n) => lines.push(format!(
            "ok: the FlowTap resource is served ({n} in this namespace, 500 at most counted)"
        )),
        Err(e) => {
            ok = false;
            lines.push(format!("FAILED: FlowTaps: {e}"));
        }
    }
    (lines, ok)
}

/// GET `url` (http only, as the health port serves it): Ok on 200.
async fn ready(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the ready URL must be http:// (the health port has no TLS)")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(64 * 1024)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.split_whitespace().nth(1).unwrap_or("no answer").to_owned();
        match status.as_str() {
            "200" => Ok(()),
            _ => Err(format!(
                "answered {status}: {}",
                answer.split("\r\n\r\n").nth(1).unwrap_or("").trim()
            )),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

/// List FlowTaps in the client's namespace: the CRD is installed and this identity may read.
async fn flowtaps(kubeconfig: Option<&std::path::Path>) -> Result<usize, String> {
    let client = crate::k8s::client::client(kubeconfig, None)
        .await
        .map_err(|e| e.to_string())?;
    let ns = client.default_namespace().to_owned();
    let (api, params) = (
        Api::<FlowTap>::namespaced(client, &ns),
        ListParams::default().limit(500),
    );
    tokio::time::timeout(Duration::from_secs(10), api.list(&params))
        .await
        .map_err(|_| "the API server did not answer within 10 s".to_owned())?
        .map(|l| l.items.len())
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => {
                "the FlowTap CRD is not installed (kubectl apply -f crds/flowtap.yaml)".to_owned()
            }
            e => e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_url_that_is_not_http_is_refused_with_why() {
        let e = ready("https://log-socket:10002/readyz").await.unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }

    #[tokio::test]
    async fn a_health_port_that_is_not_ready_fails_with_its_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 13\r\n\r\nnot leader ok")
                .await;
        });
        let e = ready(&format!("http://{addr}/readyz")).await.unwrap_err();
        assert!(e.starts_with("answered 503") && e.contains("not leader ok"), "{e}");
    }
}
