//! Prometheus's part, played for the tests of the shipped monitoring (no Prometheus Operator
//! runs here): the `ServiceMonitor` resource, a ServiceMonitor's targets scraped as Prometheus
//! scrapes them, and promtool.
//!
//! The ServiceMonitor CRD here is a stand-in written from the Prometheus Operator's API
//! reference, with a structural schema for the fields a scrape reads (the API server prunes
//! any other field, so a misspelt one disappears and the test comparing what it stored
//! notices). A scrape is what Prometheus does for an endpoint: connect to the endpoint address
//! behind the Service port named `port`, with `scheme`, TLS verified with `tlsConfig.ca` for
//! the name `tlsConfig.serverName`, and `Authorization: <type> <credentials>` from the
//! Secret named; done with curl (`--resolve` gives the serverName that address). What it
//! answers is parsed by [`check_openmetrics`] with the reference Python client's strict
//! OpenMetrics parser (Debian's python3-prometheus-client), as Prometheus parses an
//! `application/openmetrics-text` answer; `promtool check metrics` reads only the older text
//! format.

use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// promtool: `$LOG_SOCKET_PROMTOOL`, else the one tests/test-env.sh extracts next to the API
/// server (`$KUBEBUILDER_ASSETS/promtool`), else on PATH.
pub fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOG_SOCKET_PROMTOOL").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let cached = std::env::var_os("KUBEBUILDER_ASSETS").map(|d| PathBuf::from(d).join("promtool"));
    if let Some(p) = cached.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "promtool".into())
}

fn service_monitors(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "servicemonitors"),
    )
}

/// Install the stand-in ServiceMonitor CRD (once per cluster) and wait until it is served.
pub async fn install_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let string = json!({"type": "string"});
    let secret_key =
        json!({"type": "object", "properties": {"name": string, "key": string, "optional": {"type": "boolean"}}});
    let endpoint = json!({
        "type": "object",
        "properties": {
            "port": string, "targetPort": {"x-kubernetes-int-or-string": true}, "path": string,
            "scheme": {"type": "string", "enum": ["http", "https"]},
            "interval": string, "scrapeTimeout": string, "honorLabels": {"type": "boolean"},
            "bearerTokenFile": string, "bearerTokenSecret": secret_key,
            "authorization": {"type": "object", "properties": {"type": string, "credentials": secret_key}},
            "tlsConfig": {"type": "object", "properties": {
                "ca": {"type": "object", "properties": {"secret": secret_key, "configMap": secret_key}},
                "cert": {"type": "object", "properties": {"secret": secret_key, "configMap": secret_key}},
                "keySecret": secret_key, "serverName": string, "insecureSkipVerify": {"type": "boolean"},
                "caFile": string, "certFile": string, "keyFile": string
            }}
        }
    });
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor", "listKind": "ServiceMonitorList"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "apiVersion": string, "kind": string, "metadata": {"type": "object"},
                    "spec": {"type": "object", "required": ["endpoints", "selector"], "properties": {
                        "jobLabel": string,
                        "endpoints": {"type": "array", "items": endpoint},
                        "selector": {"type": "object", "properties": {
                            "matchLabels": {"type": "object", "additionalProperties": string},
                            "matchExpressions": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                        }},
                        "namespaceSelector": {"type": "object", "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": string}}}
                    }}
                }
            }}}]
        }
    }))
    .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("install the ServiceMonitor CRD stand-in: {e}"),
    }
    crate::poll::eventually("the ServiceMonitor resource served", || async {
        service_monitors(client, "default")
            .list(&Default::default())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// How a scrape should authenticate: as the ServiceMonitor says, with no token, or with
/// another one (to check what log-socket refuses).
pub enum Credentials {
    AsConfigured,
    None,
    Token(String),
}

/// What a target answered (200).
#[derive(Debug, Clone)]
pub struct Scraped {
    /// Prometheus picks its parser by it.
    pub content_type: String,
    pub body: String,
}

/// Scrape every endpoint of ServiceMonitor `ns/name`: per target, what it answered, or what
/// failed (curl's error, or the HTTP status and body).
pub async fn scrape(
    client: &kube::Client,
    ns: &str,
    name: &str,
    dir: &Path,
    credentials: Credentials,
) -> Vec<Result<Scraped, String>> {
    let monitor = service_monitors(client, ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("ServiceMonitor {ns}/{name}: {e}"));
    let spec = &monitor.data["spec"];
    let selector = spec["selector"]["matchLabels"].as_object().cloned().unwrap_or_default();
    let mut results = vec![];
    for service in Api::<Service>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
    {
        let labels = service.metadata.labels.clone().unwrap_or_default();
        if !selector
            .iter()
            .all(|(k, v)| v.as_str() == labels.get(k).map(String::as_str))
        {
            continue;
        }
        let service_name = service.metadata.name.clone().unwrap();
        let endpoints = Api::<Endpoints>::namespaced(client.clone(), ns)
            .get(&service_name)
            .await;
        let Ok(endpoints) = endpoints else { continue };
        for endpoint in spec["endpoints"].as_array().into_iter().flatten() {
            for subset in endpoints.subsets.clone().unwrap_or_default() {
                let port = subset
                    .ports
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .find(|p| p.name.as_deref() == endpoint["port"].as_str());
                let Some(port) = port else { continue };
                for address in subset.addresses.clone().unwrap_or_default() {
                    results.push(scrape_one(client, ns, endpoint, &address.ip, port.port, dir, &credentials).await);
                }
            }
        }
    }
    results
}

async fn secret_key(client: &kube::Client, ns: &str, reference: &Value) -> Result<Vec<u8>, String> {
    let (Some(name), Some(key)) = (reference["name"].as_str(), reference["key"].as_str()) else {
        return Err(format!("a Secret reference without name and key: {reference}"));
    };
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("Secret {ns}/{name}: {e}"))?;
    secret
        .data
        .and_then(|d| d.get(key).map(|b| b.0.clone()))
        .ok_or_else(|| format!("Secret {ns}/{name} has no key {key}"))
}

async fn scrape_one(
    client: &kube::Client,
    ns: &str,
    endpoint: &Value,
    ip: &str,
    port: i32,
    dir: &Path,
    credentials: &Credentials,
) -> Result<Scraped, String> {
    let scheme = endpoint["scheme"].as_str().unwrap_or("http");
    let path = endpoint["path"].as_str().unwrap_or("/metrics");
    let mut curl = tokio::process::Command::new("curl");
    curl.args([
        "--silent",
        "--show-error",
        "--max-time",
        "10",
        "--write-out",
        "\n%{content_type}\n%{http_code}",
    ]);
    // What Prometheus asks for.
    curl.args([
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4",
    ]);
    let mut host = ip.to_owned();
    if scheme == "https" {
        let tls = &endpoint["tlsConfig"];
        if tls["insecureSkipVerify"] == true {
            curl.arg("--insecure");
        } else {
            let ca = secret_key(client, ns, &tls["ca"]["secret"]).await?;
            let ca_file = dir.join(format!("scrape-ca-{ip}-{port}.crt"));
            std::fs::write(&ca_file, ca).unwrap();
            curl.arg("--cacert").arg(&ca_file);
        }
        if let Some(name) = tls["serverName"].as_str() {
            curl.args(["--resolve", &format!("{name}:{port}:{ip}")]);
            host = name.to_owned();
        }
    }
    let token = match credentials {
        Credentials::AsConfigured if endpoint["authorization"].is_object() => {
            let bytes = secret_key(client, ns, &endpoint["authorization"]["credentials"]).await?;
            Some(String::from_utf8(bytes).map_err(|e| e.to_string())?)
        }
        Credentials::AsConfigured | Credentials::None => None,
        Credentials::Token(t) => Some(t.clone()),
    };
    if let Some(token) = token {
        let kind = endpoint["authorization"]["type"].as_str().unwrap_or("Bearer");
        // Through a file, so the token is not on a command line.
        let header = dir.join(format!("scrape-auth-{ip}-{port}"));
        std::fs::write(&header, format!("Authorization: {kind} {}\n", token.trim())).unwrap();
        curl.arg("-H").arg(format!("@{}", header.display()));
    }
    curl.arg(format!("{scheme}://{host}:{port}{path}"));
    let out = curl.output().await.map_err(|e| format!("run curl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("curl: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let (rest, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (body, content_type) = rest.rsplit_once('\n').unwrap_or(("", rest));
    match code {
        "200" => Ok(Scraped {
            content_type: content_type.to_owned(),
            body: body.to_owned(),
        }),
        code => Err(format!("{code} {}", body.trim())),
    }
}

/// Parse an OpenMetrics exposition strictly (the reference client's parser, which refuses what
/// the format does not allow, `# EOF` included); the number of metric families, or the error.
/// `None` when Debian's python3-prometheus-client is not installed.
pub fn check_openmetrics(body: &str) -> Option<Result<usize, String>> {
    use std::io::Write;
    let python = Path::new("/usr/bin/python3");
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nprint(len(list(parse(sys.stdin.read()))))\n";
    let probe = std::process::Command::new(python)
        .args(["-c", "import prometheus_client"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Some(match out.status.success() {
        true => String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("{e}")),
        false => Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_owned()),
    })
}
