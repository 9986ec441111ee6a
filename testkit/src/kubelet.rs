//! A kubelet stand-in: the one kubelet endpoint `pods/log` needs,
//! `GET /containerLogs/NS/POD/CONTAINER` with `follow`, `timestamps`, `tailLines` and
//! `sinceTime`, over HTTPS on loopback. [`Kubelet::register`] makes it a Node the real API
//! server knows, so `kubectl logs` and k8stail's pre-flow view reach it through the API server,
//! under the caller's RBAC (the API server does not verify a kubelet's certificate unless
//! `--kubelet-certificate-authority` is set; see docs/development.md).

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

/// One container's log: its lines so far and the followers of new ones.
struct Log {
    lines: Vec<(Timestamp, String)>,
    new: broadcast::Sender<(Timestamp, String)>,
}

type Logs = Arc<Mutex<HashMap<String, Log>>>;

/// The running stand-in.
pub struct Kubelet {
    pub port: u16,
    logs: Logs,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(ns: &str, pod: &str, container: &str) -> String {
    format!("{ns}/{pod}/{container}")
}

impl Kubelet {
    pub async fn start() -> Kubelet {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = log_socket::service::tls::ReloadingConfig::self_signed(&["localhost".into()]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let logs: Logs = Default::default();
        let requests: Arc<Mutex<Vec<String>>> = Default::default();
        let (l, r) = (logs.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, logs, requests) = (acceptor.clone(), l.clone(), r.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, logs, requests).await;
                    }
                });
            }
        });
        Kubelet {
            port,
            logs,
            requests,
            task,
        }
    }

    /// Make this stand-in the kubelet of Node `name` (created if missing).
    pub async fn register(&self, client: &kube::Client, name: &str) {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create node {name}: {e}"),
        }
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// Append a line to a container's log, now; returns its time (as the runtime stamps it).
    pub fn write(&self, ns: &str, pod: &str, container: &str, text: &str) -> Timestamp {
        let now = Timestamp::now();
        let mut logs = self.logs.lock().unwrap();
        let log = logs.entry(key(ns, pod, container)).or_insert_with(|| Log {
            lines: vec![],
            new: broadcast::channel(4096).0,
        });
        log.lines.push((now, text.to_owned()));
        let _ = log.new.send((now, text.to_owned()));
        now
    }

    /// The requests served so far (path and query).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A Pod on `node` (never started: no kubelet runs it; its log is what [`Kubelet::write`]
/// writes). Creates the namespace's `default` ServiceAccount the API server asks for.
pub async fn pod(
    client: &kube::Client,
    ns: &str,
    node: &str,
    name: &str,
    labels: serde_json::Value,
    containers: &[&str],
) {
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await;
    let containers: Vec<_> = containers.iter().map(|c| json!({"name": c, "image": "app"})).collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "containers": containers}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
    logs: Logs,
    requests: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut head = vec![];
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        if io.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
    requests.lock().unwrap().push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let q: HashMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = parts[..] else {
        return io
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            .await;
    };
    let since: Option<Timestamp> = q.get("sinceTime").and_then(|t| t.parse().ok());
    let tail: Option<usize> = q.get("tailLines").and_then(|t| t.parse().ok());
    let stamps = q.get("timestamps").is_some_and(|v| v == "true");
    let follow = q.get("follow").is_some_and(|v| v == "true");
    let (old, mut new) = {
        let mut all = logs.lock().unwrap();
        let log = all.entry(key(ns, pod, container)).or_insert_with(|| Log {
            lines: vec![],
            new: broadcast::channel(4096).0,
        });
        let old: Vec<_> = log
            .lines
            .iter()
            .filter(|(t, _)| since.is_none_or(|s| *t >= s))
            .cloned()
            .collect();
        let skip = tail.map_or(0, |n| old.len().saturating_sub(n));
        (old[skip..].to_vec(), log.new.subscribe())
    };
    io.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    let line = |(t, text): &(Timestamp, String)| match stamps {
        true => format!("{t} {text}\n"),
        false => format!("{text}\n"),
    };
    for l in &old {
        chunk(&mut io, &line(l)).await?;
    }
    if follow {
        loop {
            match new.recv().await {
                Ok(l) => chunk(&mut io, &line(&l)).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    io.write_all(b"0\r\n\r\n").await
}

async fn chunk<S: tokio::io::AsyncWrite + Unpin>(io: &mut S, text: &str) -> std::io::Result<()> {
    io.write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes())
        .await?;
    io.flush().await
}
