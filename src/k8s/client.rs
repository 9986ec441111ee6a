//! Building a Kubernetes client from a kubeconfig file, a context, or the pod's service account.

use crate::{Error, Result};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use std::path::Path;

/// Client configuration from, in order: an explicit kubeconfig file; `KUBECONFIG` or
/// `~/.kube/config`; the in-cluster service account. `context` picks a kubeconfig context.
pub async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Config> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    match kubeconfig {
        Some(path) => {
            let from = || path.display().to_string();
            let file = Kubeconfig::read_from(path).map_err(|e| Error::kube_config(from(), e))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| Error::kube_config(from(), e))
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::kube_config("KUBECONFIG or ~/.kube/config", e)),
        None => Config::infer()
            .await
            .map_err(|e| Error::kube_config("KUBECONFIG, ~/.kube/config or the pod's service account", e)),
    }
}

/// How long a request may wait for the API server's answer (its response headers; a watch's
/// stream is not cut, its events come after). kube sets no such timeout: without one a request
/// on a dead connection hangs for as long as the TCP stack lets it, and a controller waiting on
/// it cannot stop in time when it loses its lease.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client for [`config`], its requests bounded by [`REQUEST_TIMEOUT`].
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Client> {
    let config = config(kubeconfig, context).await?;
    bounded(config)
}

/// A client for `config`, its requests bounded by [`REQUEST_TIMEOUT`].
pub fn bounded(config: Config) -> Result<kube::Client> {
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(|e| Error::kube_config("the client configuration", e))?;
    Ok(builder
        .with_layer(&tower::timeout::TimeoutLayer::new(REQUEST_TIMEOUT))
        .build())
}

/// Map an API error on `what` into a message that says which permission is missing.
pub fn explain(err: kube::Error, what: &str) -> Error {
    match &err {
        kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
            what: what.to_owned(),
            hint: format!("the API server said: {}", status.message),
        },
        _ => Error::Kube(err),
    }
}
