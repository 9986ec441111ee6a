//! Leader election on a real Lease: of several replicas exactly one leads; a stopping leader
//! hands over at once, a crashed one after the lease duration.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use log_socket::operator::lease::{run_elected, LeaseConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::cluster;
use testkit::poll::{eventually, eventually_within};

/// A replica whose "controller" records that it leads while it runs.
struct Replica {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Leaders {
    now: AtomicUsize,
    most_at_once: AtomicUsize,
    who: Mutex<Vec<String>>,
}

fn replica(client: &kube::Client, ns: &str, holder: &str, leaders: &Arc<Leaders>) -> Replica {
    replica_for(client, ns, holder, leaders, Duration::from_secs(3))
}

fn replica_for(client: &kube::Client, ns: &str, holder: &str, leaders: &Arc<Leaders>, duration: Duration) -> Replica {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = LeaseConfig {
        namespace: ns.into(),
        name: "log-socket".into(),
        holder: holder.into(),
        duration,
    };
    let (leaders, holder) = (leaders.clone(), holder.to_owned());
    let task = tokio::spawn(run_elected(
        client.clone(),
        config,
        async {
            let _ = stopped.await;
        },
        move |stop| {
            let (leaders, holder) = (leaders.clone(), holder.clone());
            async move {
                let n = leaders.now.fetch_add(1, Ordering::SeqCst) + 1;
                leaders.most_at_once.fetch_max(n, Ordering::SeqCst);
                leaders.who.lock().unwrap().push(holder);
                stop.cancelled().await;
                leaders.now.fetch_sub(1, Ordering::SeqCst);
            }
        },
    ));
    Replica { stop, task }
}

async fn holder(client: &kube::Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("log-socket")
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

/// The holder of every version of the Lease from now on, as the API server serves them.
async fn holders(client: &kube::Client, ns: &str) -> Arc<Mutex<Vec<Option<String>>>> {
    use futures::StreamExt;
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let api = Api::<Lease>::namespaced(client.clone(), ns);
    let from = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let seen: Arc<Mutex<Vec<Option<String>>>> = Default::default();
    let into = seen.clone();
    tokio::spawn(async move {
        let stream = api.watch(&WatchParams::default().timeout(120), &from).await.unwrap();
        futures::pin_mut!(stream);
        while let Some(Ok(WatchEvent::Modified(lease) | WatchEvent::Added(lease))) = stream.next().await {
            into.lock().unwrap().push(lease.spec.and_then(|s| s.holder_identity));
        }
    });
    seen
}

async fn until_led_by(client: &kube::Client, ns: &str, leaders: &Leaders, who: &str) {
    for _ in 0..300 {
        if holder(client, ns).await.as_deref() == Some(who)
            && leaders.who.lock().unwrap().last().map(String::as_str) == Some(who)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{who} never led; lease holder {:?}", holder(client, ns).await);
}

#[tokio::test]
async fn one_replica_leads_a_stopping_leader_hands_over_and_a_crashed_one_expires() {
    let client = cluster::client().await;
    let ns = cluster::namespace(&client, "lease").await;
    let leaders = Arc::new(Leaders::default());
    let a = replica(&client, &ns, "replica-a", &leaders);
    until_led_by(&client, &ns, &leaders, "replica-a").await;
    let lease_watch = holders(&client, &ns).await;
    let b = replica(&client, &ns, "replica-b", &leaders);
    let c = replica(&client, &ns, "replica-c", &leaders);
    // Several renewal rounds with three replicas competing: in every version of the Lease the
    // API server served meanwhile, the leader kept it (renewals change the Lease each second).
    eventually_within("four renewals", Duration::from_secs(30), || async {
        (lease_watch.lock().unwrap().len() >= 4).then_some(())
    })
    .await;
    assert!(
        lease_watch
            .lock()
            .unwrap()
            .iter()
            .all(|h| h.as_deref() == Some("replica-a")),
        "the leader keeps renewing: {:?}",
        lease_watch.lock().unwrap()
    );
    assert_eq!(leaders.now.load(Ordering::SeqCst), 1);

    // A graceful stop releases the lease: one of the others takes over.
    a.stop.send(()).unwrap();
    a.task.await.unwrap();
    eventually("replica-b or replica-c to hold the lease", || async {
        matches!(holder(&client, &ns).await.as_deref(), Some("replica-b" | "replica-c")).then_some(())
    })
    .await;
    let next = holder(&client, &ns).await.unwrap();
    until_led_by(&client, &ns, &leaders, &next).await;

    // A crash (no release): the other takes over once the lease expires.
    let (crashed, survivor) = if next == "replica-b" { (b, c) } else { (c, b) };
    crashed.task.abort();
    let _ = crashed.task.await;
    // Its controller dies with it (its stop channel is gone), without releasing the lease.
    eventually_within("no leader", Duration::from_secs(5), || async {
        (leaders.now.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    assert_eq!(leaders.now.load(Ordering::SeqCst), 0);
    assert_eq!(
        holder(&client, &ns).await.as_deref(),
        Some(next.as_str()),
        "not released"
    );
    let other = if next == "replica-b" { "replica-c" } else { "replica-b" };
    until_led_by(&client, &ns, &leaders, other).await;

    survivor.stop.send(()).unwrap();
    survivor.task.await.unwrap();
    assert_eq!(
        leaders.most_at_once.load(Ordering::SeqCst),
        1,
        "never two leaders at once"
    );
    assert_eq!(
        leaders.who.lock().unwrap().len(),
        3,
        "{:?}",
        leaders.who.lock().unwrap()
    );
    assert_eq!(holder(&client, &ns).await, None, "released on stop");
    drop(crashed.stop);
}

#[tokio::test]
async fn a_leader_whose_renewal_hangs_stops_leading_before_another_replica_starts() {
    let admin = cluster::client().await;
    let ns = cluster::namespace(&admin, "lease-hang").await;
    let leaders = Arc::new(Leaders::default());
    let hang = testkit::shedding::Shedding::default();
    let a_client = hang.client(cluster::env().config().await);
    let duration = Duration::from_secs(4);
    let a = replica_for(&a_client, &ns, "replica-a", &leaders, duration);
    until_led_by(&admin, &ns, &leaders, "replica-a").await;
    let b = replica_for(&admin, &ns, "replica-b", &leaders, duration);
    // replica-a's Lease requests never come back (a dead connection, a frozen API server on
    // its side): only its own deadline ends its renewal.
    hang.start("*", "/leases/", 0);
    until_led_by(&admin, &ns, &leaders, "replica-b").await;
    assert_eq!(
        leaders.most_at_once.load(Ordering::SeqCst),
        1,
        "replica-a's controller stopped before replica-b's started: {:?}",
        leaders.who.lock().unwrap()
    );
    assert!(hang.shed() >= 1, "a renewal hung");
    b.stop.send(()).unwrap();
    b.task.await.unwrap();
    a.task.abort();
    drop(a.stop);
}
