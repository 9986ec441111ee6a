//! Cluster DNS and kube-proxy, played for a URL: `http://NAME.NS.svc[.cluster.local]:PORT/…`
//! becomes the address of the Service's endpoint behind that port (as a pod's resolver and
//! kube-proxy would take a connection there). Other URLs are returned as they are.
//!
//! No endpoint, or no such Service or port, is an error: in a cluster the connection would fail.

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;

/// `url` with a Service host resolved to an endpoint address and port.
pub async fn resolve(client: &kube::Client, url: &str) -> Result<String, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(url.to_owned());
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<i32>().map_err(|e| format!("port of {url}: {e}"))?),
        None => (authority, if scheme == "https" { 443 } else { 80 }),
    };
    let host = host.strip_suffix(".cluster.local").unwrap_or(host);
    let Some(service_ns) = host.strip_suffix(".svc") else {
        return Ok(url.to_owned());
    };
    let Some((name, ns)) = service_ns.split_once('.') else {
        return Ok(url.to_owned());
    };
    let service = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("{host}: no such Service ({e})"))?;
    let service_port = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.port == port)
        .ok_or_else(|| format!("Service {ns}/{name} has no port {port}"))?;
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("Service {ns}/{name} has no endpoints ({e})"))?;
    for subset in endpoints.subsets.unwrap_or_default() {
        let Some(address) = subset.addresses.unwrap_or_default().into_iter().next() else {
            continue;
        };
        let target = subset.ports.unwrap_or_default().into_iter().find(|p| {
            match (&service_port.target_port, &p.name, &service_port.name) {
                // A named target port is matched by the endpoint port's name (the Service port's).
                (Some(IntOrString::String(_)), Some(ep), Some(sp)) => ep == sp,
                (Some(IntOrString::Int(n)), _, _) => p.port == *n,
                (None, _, _) => p.port == service_port.port,
                _ => false,
            }
        });
        if let Some(target) = target {
            return Ok(format!("{scheme}://{}:{}{path}", address.ip, target.port));
        }
    }
    Err(format!("Service {ns}/{name} has no ready endpoint for port {port}"))
}
