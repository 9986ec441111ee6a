//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly one
//! runs the controller (every replica runs the relay).
//!
//! The rules are client-go's: a lease is free when nobody holds it or when its record has not
//! changed for `leaseDurationSeconds` as seen by *this* process's clock (so clock skew between
//! nodes does not matter); taking or renewing it is an update guarded by resourceVersion. A
//! leader that cannot renew for two thirds of the duration stops leading before anyone else may
//! take over. Stopping releases the lease, so another replica takes over at once.

use crate::shutdown::Shutdown;
use crate::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Which Lease, and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (the pod name).
    pub holder: String,
    pub duration: Duration,
}

/// One replica's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// resourceVersion last seen, and when this process saw it change.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    fn seconds(&self) -> i32 {
        self.config.duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    /// Take the lease if it is free, renew it if it is ours. `Ok(true)`: we hold it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.holder.clone()),
                    lease_duration_seconds: Some(self.seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.holder;
        let duration = spec
            .lease_duration_seconds
            .map_or(self.config.duration, |s| Duration::from_secs(s.max(0) as u64));
        let unchanged_for = self.observed.as_ref().map_or(Duration::ZERO, |(_, at)| at.elapsed());
        if !mine && !holder.is_empty() && unchanged_for < duration {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            if !holder.is_empty() {
                tracing::info!(previous = %holder, "taking over the lease of a leader that stopped renewing");
            }
        }
        spec.holder_identity = Some(self.config.holder.clone());
        spec.lease_duration_seconds = Some(self.seconds());
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(seen, _)| seen) != Some(&rv) {
            self.observed = Some((rv, Instant::now()));
        }
    }

    /// Give the lease up (if we hold it), so another replica need not wait for it to expire.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(&self.config.holder) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "could not release the lease; another replica takes over when it expires");
        }
    }
}

/// Run `lead` whenever this replica holds the lease, until `shutdown` completes. `lead` gets a
/// receiver that turns true when it must stop (leadership lost or shutting down) and is awaited
/// before the lease can pass on.
pub async fn run_elected<F, Fut>(
    client: kube::Client,
    config: LeaseConfig,
    shutdown: impl Future<Output = ()>,
    mut lead: F,
) where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let retry = (config.duration / 3).max(Duration::from_millis(200));
    // A leader steps down after failing to renew for this long, before the lease can expire
    // for the others.
    let renew_deadline = config.duration * 2 / 3;
    let mut elector = Elector::new(client, config);
    tokio::pin!(shutdown);
    loop {
        // Wait to be leader.
        loop {
            // Bounded: a hung request must not stall the election (kube sets no read timeout).
            match tokio::time::timeout(renew_deadline, elector.try_acquire_or_renew()).await {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: cannot read or write the lease; retrying"),
                Err(_) => tracing::warn!("leader election: the lease request did not answer in time; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = &mut shutdown => return,
            }
        }
        tracing::info!(holder = %elector.config.holder, lease = %elector.config.name, "leading: running the controller");
        let stop = Shutdown::new();
        let mut work = tokio::spawn(lead(stop.clone()));
        // Cancelled also when this task dies (aborted, panicked): the controller never outlives
        // the elector that may no longer be renewing its lease.
        let stop = stop.drop_guard();
        let mut last_renewal = Instant::now();
        let mut work_ended = false;
        // Another replica holds the lease already: nothing of this controller may go on.
        let mut lost = false;
        let shutting_down = loop {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = &mut shutdown => break true,
                _ = &mut work => {
                    tracing::warn!("the controller stopped on its own; leaving the leadership");
                    work_ended = true;
                    break false;
                }
            }
            // A renewal that hangs is cut at the renew deadline (client-go's rule: stop acting
            // before the lease can pass on), so a silent API server cannot keep this replica
            // leading while another already may.
            let left = renew_deadline.saturating_sub(last_renewal.elapsed());
            // The renewal counts from when it was asked for, not answered: the lease's time
            // runs from the API server's write, which is no earlier than the request.
            let asked = Instant::now();
            let renewed = match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
                Ok(result) => result,
                Err(_) => Err(kube::Error::Service("the lease renewal did not answer in time".into()).into()),
            };
            match renewed {
                Ok(true) => last_renewal = asked,
                Ok(false) => {
                    tracing::warn!("lost the lease to another replica; stopping the controller");
                    lost = true;
                    break false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the lease");
                    if last_renewal.elapsed() >= renew_deadline {
                        tracing::warn!("lease not renewed in time; stopping the controller");
                        break false;
                    }
                }
            }
        };
        drop(stop);
        if !work_ended {
            // The controller gets what is left of the lease to stop, and is aborted after: its
            // requests in flight must not outlive this replica's leadership by more than that.
            let left = match lost {
                true => Duration::ZERO,
                false => elector.config.duration.saturating_sub(last_renewal.elapsed()),
            };
            if tokio::time::timeout(left, &mut work).await.is_err() {
                tracing::warn!("the controller did not stop before the lease could pass on; aborting it");
                work.abort();
                let _ = work.await;
            }
        }
        elector.release().await;
        if shutting_down {
            return;
        }
    }
}
