//! A Deployment of log-socket brought to life as the controllers and a kubelet would, for tests
//! that install the shipped manifests (the README's quick start, the chart) on the real API
//! server, which runs no pods: one Pod from the Deployment's template, its container run in
//! this process from exactly the rendered `args`, under the pod's ServiceAccount (a real
//! token, so the chart's RBAC is what it runs with), its Secret volumes written to files, its
//! ports listening in a network namespace of the test's own (the API server proxies only to
//! such an address), Ready once its readiness probe answers, and the Endpoints of every
//! Service that selects it written as the endpoints controller would.
//!
//! As strict as the real parts where a test depends on it: a missing Secret or key stops the
//! pod (a kubelet would wait forever), `env` other than the pod's namespace and fixed values is
//! refused (it would be read from this process's environment), and the container must be the
//! `log-socket run` the image starts.

use crate::cluster;
use crate::netns::NetNs;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Endpoints, Pod, Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use log_socket::service::config::{self, Command};
use log_socket::service::{Service as LogSocket, Sockets};
use log_socket::shutdown::Shutdown;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The running pod; stopped (gracefully, as on SIGTERM) when dropped.
pub struct RunningPod {
    pub name: String,
    pub namespace: String,
    /// The pod's address: its ports listen here (`addr:10000` ingest, and so on).
    pub netns: NetNs,
    /// Where its volumes were written (`DIR/etc/log-socket/...`).
    pub dir: PathBuf,
    /// The container's image, as the Deployment names it.
    pub image: String,
    stop: Shutdown,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl RunningPod {
    /// Stop the container as a kubelet does (SIGTERM) and wait until it exited.
    pub async fn stop(mut self) -> Result<(), String> {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("the pod's task: {e}")),
            Err(_) => Err("the pod did not stop within 30 s".into()),
        }
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Run the Deployment `ns/name` (after `helm install` or `kubectl apply`); returns once the pod
/// is Ready and the Services selecting it have Endpoints. Panics with what a kubelet would
/// report (a missing Secret, a probe that never passes).
pub async fn run(client: &kube::Client, ns: &str, name: &str) -> RunningPod {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Deployment {ns}/{name}: {e}"));
    let template = deployment.spec.expect("a Deployment has a spec").template;
    let spec = template.spec.clone().expect("a pod template has a spec");
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let container = spec.containers.first().expect("one container").clone();
    let image = container.image.clone().unwrap_or_default();
    let dir = cluster::tempdir(&format!("pod-{name}"));

    // The pod's ServiceAccount, with a real token (a kubelet mounts one; here a kubeconfig).
    let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let token = cluster::token_request(client, ns, &sa)
        .await
        .unwrap_or_else(|e| panic!("the pod's ServiceAccount {ns}/{sa}: {e}"));
    let kubeconfig = kubeconfig_in(&token, ns, &dir.join("kubeconfig"));

    // Volumes: Secrets written to files, under DIR + mountPath.
    let volumes = spec.volumes.clone().unwrap_or_default();
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volumeMount {} names no volume", mount.name));
        let target = dir.join(mount.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&target).unwrap();
        if let Some(secret) = &volume.secret {
            let secret_name = secret.secret_name.clone().unwrap_or_default();
            let data = secret_data(client, ns, &secret_name).await;
            let items: Vec<(String, String)> = match &secret.items {
                Some(items) => items.iter().map(|i| (i.key.clone(), i.path.clone())).collect(),
                None => data.iter().map(|(k, _)| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                let bytes = data
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_else(|| panic!("Secret {ns}/{secret_name} has no key {key}: the pod would wait"));
                std::fs::write(target.join(path), bytes).unwrap();
            }
        }
    }
    let args = container_args(&container, &dir, &kubeconfig);

    // The Pod object, with the address its containers listen on.
    let netns = NetNs::create();
    let pod_name = format!("{name}-standin");
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let mut pod_spec = spec.clone();
    // No kubelet mounts it here (the container uses the kubeconfig above).
    pod_spec.automount_service_account_token = Some(false);
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod_name.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(pod_spec),
        ..Default::default()
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create the pod {ns}/{pod_name}: {e}"));
    let ip = netns.addr.to_string();
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    // The container: `log-socket ARGS`, as the image's entrypoint runs it.
    let cfg = match config::parse(std::iter::once("log-socket".to_owned()).chain(args)) {
        Ok(config::Cli {
            command: Command::Run(cfg),
        }) => cfg,
        Ok(_) => panic!("the container does not run `log-socket run`"),
        Err(e) => panic!("the container's args are refused: {e}"),
    };
    let port = |addr: std::net::SocketAddr| netns.bind(addr.port());
    let sockets = Sockets::bound(
        &cfg,
        port(cfg.ingest.ingest_addr),
        port(cfg.api.api_addr),
        port(cfg.health_addr),
    )
    .unwrap_or_else(|e| panic!("the container's sockets: {e}"));
    let stop = Shutdown::new();
    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        let service = LogSocket::from_config(&cfg).await.map_err(|e| e.to_string())?;
        service.run(sockets, shutdown).await.map_err(|e| e.to_string())
    });

    // Ready when the readiness probe passes; then the endpoints controller's part.
    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.clone())
        .expect("the container has an httpGet readiness probe");
    let probe_port = named_port(&container, &probe.port);
    let probe_addr = std::net::SocketAddr::from((netns.addr, probe_port));
    let path = probe.path.clone().unwrap_or_else(|| "/".into());
    let mut ready = false;
    for _ in 0..600 {
        if task.is_finished() {
            let result = task.await.unwrap();
            panic!("the container exited before it was ready: {result:?}");
        }
        let (status, _) = crate::relay::request(probe_addr, "GET", &path, &[], b"").await;
        if status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the readiness probe {path} on port {probe_port} never passed");
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}});
    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    write_endpoints(client, ns, &pod_name, &labels, &container, &ip).await;

    RunningPod {
        name: pod_name,
        namespace: ns.to_owned(),
        netns,
        dir,
        image,
        stop,
        task: Some(task),
    }
}

/// The cluster's kubeconfig with `token` and the pod's namespace, as in-cluster config has.
fn kubeconfig_in(token: &str, ns: &str, path: &Path) -> PathBuf {
    cluster::kubeconfig_with_token(token, path);
    let mut value: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for context in value["contexts"].as_sequence_mut().unwrap() {
        context["context"]["namespace"] = ns.into();
    }
    std::fs::write(path, serde_yaml::to_string(&value).unwrap()).unwrap();
    path.to_owned()
}

async fn secret_data(client: &kube::Client, ns: &str, name: &str) -> Vec<(String, Vec<u8>)> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("Secret {ns}/{name}: {e}"))
        .unwrap_or_else(|| panic!("Secret {ns}/{name} does not exist: the pod would wait for it"));
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// The container's args with its mount paths moved under `dir`, and its credentials (a
/// kubelet's mounted token) given as a kubeconfig. `env` must be what this can honour.
fn container_args(container: &Container, dir: &Path, kubeconfig: &Path) -> Vec<String> {
    for env in container.env.clone().unwrap_or_default() {
        let field = env.value_from.as_ref().and_then(|f| f.field_ref.as_ref());
        let pod_namespace = env.name == "POD_NAMESPACE" && field.is_some_and(|f| f.field_path == "metadata.namespace");
        // The namespace comes with the kubeconfig's context (what the service falls back to).
        assert!(
            pod_namespace,
            "env {} cannot be given to a container run in the test's process",
            env.name
        );
    }
    assert!(container.command.is_none(), "the image's entrypoint runs the container");
    let mounts: Vec<String> = container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_path)
        .collect();
    let mut args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|arg| {
            mounts.iter().fold(arg, |arg, mount| {
                let moved = dir.join(mount.trim_start_matches('/')).display().to_string();
                arg.replace(mount.as_str(), &moved)
            })
        })
        .collect();
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    args
}

/// A container port by name or number.
fn named_port(container: &Container, port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> u16 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match port {
        IntOrString::Int(n) => *n as u16,
        IntOrString::String(name) => {
            container
                .ports
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("the container has no port named {name}"))
                .container_port as u16
        }
    }
}

/// Endpoints of every Service in `ns` whose selector matches the pod, as the endpoints
/// controller writes them.
async fn write_endpoints(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    labels: &std::collections::BTreeMap<String, String>,
    container: &Container,
    ip: &str,
) {
    let services = Api::<Service>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap();
    for service in services {
        let spec = service.spec.clone().unwrap_or_default();
        let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else {
            continue;
        };
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let ports: Vec<serde_json::Value> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let target = p
                    .target_port
                    .clone()
                    .unwrap_or(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p.port));
                json!({"name": p.name, "port": named_port(container, &target), "protocol": "TCP"})
            })
            .collect();
        let name = service.metadata.name.clone().unwrap();
        let endpoints: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": name},
            "subsets": [{
                "addresses": [{"ip": ip, "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}],
                "ports": ports
            }]
        }))
        .unwrap();
        let api = Api::<Endpoints>::namespaced(client.clone(), ns);
        let _ = api.delete(&name, &Default::default()).await;
        api.create(&PostParams::default(), &endpoints)
            .await
            .unwrap_or_else(|e| panic!("Endpoints {ns}/{name}: {e}"));
    }
}

/// A kubelet's part for a Pod that runs to completion (a `helm test` hook): wait until Pod
/// `ns/name` exists, run its container (`log-socket ARGS`, a child process, under the pod's
/// ServiceAccount, Service URLs in its args resolved as cluster DNS would), and report the
/// phase `Succeeded` or `Failed` as a kubelet does. Returns what the container printed.
pub async fn run_to_completion(client: &kube::Client, ns: &str, name: &str) -> (bool, String) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod = crate::poll::eventually_within(&format!("Pod {ns}/{name} created"), Duration::from_secs(60), || async {
        pods.get_opt(name).await.ok().flatten()
    })
    .await;
    let spec = pod.spec.clone().expect("a pod has a spec");
    let container = spec.containers.first().expect("one container").clone();
    assert!(container.command.is_none(), "the image's entrypoint runs the container");
    let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let dir = cluster::tempdir(&format!("pod-{name}"));
    let kubeconfig = kubeconfig_in(
        &cluster::token_request(client, ns, &sa)
            .await
            .unwrap_or_else(|e| panic!("the pod's ServiceAccount {ns}/{sa}: {e}")),
        ns,
        &dir.join("kubeconfig"),
    );
    let mut args = vec![];
    for arg in container.args.clone().unwrap_or_default() {
        args.push(match arg.split_once("=http") {
            Some((flag, url)) => {
                let resolved = crate::cluster_dns::resolve(client, &format!("http{url}"))
                    .await
                    .unwrap_or_else(|e| panic!("the pod's {flag}: {e}"));
                format!("{flag}={resolved}")
            }
            None => arg,
        });
    }
    let out = tokio::process::Command::new(cluster::bin("log-socket"))
        .args(&args)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    let phase = if out.status.success() { "Succeeded" } else { "Failed" };
    let status = json!({"status": {
        "phase": phase,
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }}}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("status of Pod {ns}/{name}: {e}"));
    (out.status.success(), printed)
}
