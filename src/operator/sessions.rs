//! Listener registration on FlowTaps (cluster mode): a listener joining a flow creates the
//! flow's ephemeral FlowTap if there is none, and adds its session to `status.sessions`; leaving
//! removes it. Writes are read-modify-write with resourceVersion, retried on conflict, so
//! concurrent listeners on any number of relays never lose each other's sessions. Each relay
//! renews its sessions; sessions of a relay that stopped renewing expire (see the controller).

use super::{ephemeral_tap_name, update_status, OperatorConfig};
use crate::auth::kubernetes::check_tap_permission;
use crate::k8s::flowtap::{FlowTap, FlowTapSpec, Session};
use crate::relay::{JoinError, SessionInfo, Sessions};
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// [`Sessions`] backed by FlowTaps.
pub struct ClusterSessions {
    client: kube::Client,
    config: Arc<OperatorConfig>,
    check_permission: bool,
    /// Our sessions: session id → (namespace, FlowTap name).
    mine: Mutex<HashMap<u64, (String, String)>>,
}

fn now() -> Time {
    // The API server stores seconds; compare like with like.
    Time(Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time"))
}

impl ClusterSessions {
    pub fn new(client: kube::Client, config: Arc<OperatorConfig>, check_permission: bool) -> Self {
        ClusterSessions {
            client,
            config,
            check_permission,
            mine: Mutex::new(HashMap::new()),
        }
    }

    fn session_id(&self, id: u64) -> String {
        format!("{}/{id}", self.config.instance)
    }

    /// The FlowTap of the session's flow: an existing one (a persistent tap wins), or a new
    /// ephemeral one.
    async fn find_or_create(&self, session: &SessionInfo) -> Result<String, kube::Error> {
        let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &session.tap.namespace);
        let existing = api.list(&ListParams::default()).await?;
        let mut matching: Vec<&FlowTap> = existing
            .items
            .iter()
            .filter(|t| t.spec.flow_ref.kind == session.tap.kind && t.spec.flow_ref.name == session.tap.name)
            .filter(|t| t.metadata.deletion_timestamp.is_none())
            .collect();
        matching.sort_by_key(|t| (!t.spec.persistent, t.name_any()));
        if let Some(tap) = matching.first() {
            return Ok(tap.name_any());
        }
        let name = ephemeral_tap_name(session.tap.kind, &session.tap.name);
        let mut tap = FlowTap::new(
            &name,
            FlowTapSpec {
                flow_ref: crate::k8s::flowtap::FlowRef {
                    kind: session.tap.kind,
                    name: session.tap.name.clone(),
                },
                persistent: false,
                mode: self.config.mode,
                replay: Default::default(),
                buffer: Default::default(),
            },
        );
        tap.metadata.labels = Some([(super::MANAGED_BY.0.to_owned(), super::MANAGED_BY.1.to_owned())].into());
        match api.create(&PostParams::default(), &tap).await {
            Ok(_) => {
                tracing::info!(tap = %name, namespace = %session.tap.namespace, "FlowTap created for a listener");
                Ok(name)
            }
            // Another listener (or relay) created it first: join that one.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(name),
            Err(e) => Err(e),
        }
    }

    async fn register(&self, session: &SessionInfo) -> Result<(), kube::Error> {
        let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &session.tap.namespace);
        let id = self.session_id(session.id);
        // A tap being deleted (linger expired just now) cannot take sessions: retry on a new one.
        for _ in 0..5 {
            let name = self.find_or_create(session).await?;
            let entry = Session {
                id: id.clone(),
                user: session.identity.username.clone(),
                since: now(),
                relay: self.config.instance.clone(),
                renew_time: Some(now()),
            };
            let mut deleting = false;
            let updated = update_status(&api, &name, |status| {
                status.sessions.retain(|s| s.id != entry.id);
                status.sessions.push(entry.clone());
                true
            })
            .await?;
            if let Some(tap) = &updated {
                deleting = tap.metadata.deletion_timestamp.is_some();
            }
            match updated {
                Some(_) if !deleting => {
                    self.mine
                        .lock()
                        .unwrap()
                        .insert(session.id, (session.tap.namespace.clone(), name));
                    return Ok(());
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        Err(kube::Error::Api(Box::new(kube::core::Status::failure(
            "the tap is being removed; try again",
            "Conflict",
        ))))
    }

    async fn unregister(&self, session: &SessionInfo) {
        let Some((ns, name)) = self.mine.lock().unwrap().remove(&session.id) else {
            return;
        };
        let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &ns);
        let id = self.session_id(session.id);
        let result = update_status(&api, &name, |status| {
            let before = status.sessions.len();
            status.sessions.retain(|s| s.id != id);
            status.sessions.len() != before
        })
        .await;
        if let Err(e) = result {
            // The controller expires it after the session TTL.
            tracing::warn!(tap = %name, error = %e, "could not remove a session; it will expire");
        }
    }

    /// Renew this relay's sessions every third of the session TTL until `stop` completes.
    pub async fn renew(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval((self.config.session_ttl / 3).max(std::time::Duration::from_secs(1)));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => break,
            }
            let mut by_tap: HashMap<(String, String), Vec<String>> = HashMap::new();
            for (id, tap) in self.mine.lock().unwrap().iter() {
                by_tap.entry(tap.clone()).or_default().push(self.session_id(*id));
            }
            for ((ns, name), ids) in by_tap {
                let api: Api<FlowTap> = Api::namespaced(self.client.clone(), &ns);
                let renewed = now();
                let result = update_status(&api, &name, |status| {
                    let mut changed = false;
                    for s in status.sessions.iter_mut().filter(|s| ids.contains(&s.id)) {
                        s.renew_time = Some(renewed.clone());
                        changed = true;
                    }
                    changed
                })
                .await;
                if let Err(e) = result {
                    tracing::warn!(tap = %name, error = %e, "could not renew sessions");
                }
            }
        }
    }
}

impl Sessions for ClusterSessions {
    fn joined<'a>(&'a self, session: &'a SessionInfo) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(async move {
            if self.check_permission {
                check_tap_permission(&self.client, session).await?;
            }
            self.register(session).await.map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 403 => JoinError::Unavailable(format!(
                    "log-socket may not manage FlowTaps in namespace {:?}: {}",
                    session.tap.namespace, s.message
                )),
                _ => JoinError::Unavailable(format!("cannot register on the FlowTap: {e}")),
            })
        })
    }

    fn left<'a>(&'a self, session: &'a SessionInfo) -> BoxFuture<'a, ()> {
        Box::pin(self.unregister(session))
    }
}
