//! `k8stail taps`: the FlowTaps of a namespace or of the cluster, like `kubectl get flowtaps`.

use super::KubeArgs;
use crate::k8s::client::{self, explain};
use crate::k8s::flowtap::FlowTap;
use crate::{Error, Result};
use clap::Args;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use std::io::Write;

/// Arguments of `k8stail taps`.
#[derive(Args, Debug)]
pub struct TapsArgs {
    /// Namespace to list (default: the kubeconfig context's namespace).
    #[arg(short, long, value_name = "NAMESPACE", conflicts_with = "all_namespaces",
          add = clap_complete::engine::ArgValueCompleter::new(super::complete::complete_namespace))]
    pub namespace: Option<String>,

    /// List FlowTaps in all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

pub(super) async fn taps(kube: &KubeArgs, args: &TapsArgs, out: &mut dyn Write) -> Result<()> {
    let config = client::config(kube.kubeconfig.as_deref(), kube.context.as_deref()).await?;
    let default_ns = config.default_namespace.clone();
    let client = kube::Client::try_from(config).map_err(|e| Error::kube_config("the client configuration", e))?;
    let api: Api<FlowTap> = if args.all_namespaces {
        Api::all(client)
    } else {
        Api::namespaced(client, args.namespace.as_deref().unwrap_or(&default_ns))
    };
    let list = api.list(&ListParams::default()).await.map_err(|e| match e {
        kube::Error::Api(ref s) if s.code == 404 => Error::CrdMissing,
        e => explain(e, "you need `list` on flowtaps.logsocket.dev to list taps"),
    })?;
    let mut rows = vec![];
    for tap in &list.items {
        let status = tap.status.clone().unwrap_or_default();
        rows.push(vec![
            tap.namespace().unwrap_or_default(),
            tap.name_any(),
            tap.spec.flow_ref.kind.to_string(),
            tap.spec.flow_ref.name.clone(),
            status.listeners.to_string(),
            rates_cell(&status.sessions, tap.spec.listener_rate),
            tap.spec.persistent.to_string(),
            status.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "-".into()),
            status
                .stage
                .as_ref()
                .map(|s| format!("{:?}({})", s.name, age(s.since.0, Timestamp::now())))
                .unwrap_or_else(|| "-".into()),
            cost_cell(status.cost.as_ref()),
            bus_cell(status.bus.as_ref()),
            tap.creation_timestamp()
                .map(|t| age(t.0, Timestamp::now()))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    if rows.is_empty() {
        // Like kubectl: the note goes to stderr so piped output stays empty.
        eprintln!("No FlowTaps found.");
        return Ok(());
    }
    let header = [
        "NAMESPACE",
        "NAME",
        "FLOW KIND",
        "FLOW",
        "LISTENERS",
        "RATES",
        "PERSISTENT",
        "PHASE",
        "STAGE",
        "COST",
        "BUS",
        "AGE",
    ];
    write_table(out, &header, &rows).map_err(Error::Output)
}

/// The listeners' rates (records per second, sampled at the relay; `all` without one), each
/// once with how many listeners have it, e.g. `2×100/s,all`; `≤L/s` when the FlowTap limits
/// its listeners and none listens; `-` otherwise.
fn rates_cell(sessions: &[crate::k8s::flowtap::Session], tap_limit: Option<u32>) -> String {
    if sessions.is_empty() {
        return tap_limit.map_or("-".into(), |l| format!("≤{l}/s"));
    }
    let mut counts: std::collections::BTreeMap<Option<u32>, usize> = Default::default();
    for s in sessions {
        *counts
            .entry(crate::protocol::query::effective_rate(s.rate, tap_limit))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(rate, n)| {
            let r = rate.map_or("all".to_owned(), |r| format!("{r}/s"));
            if n > 1 {
                format!("{n}×{r}")
            } else {
                r
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `2.5rec/s,800B/s`: what the relay last measured for the tap (`-` before any record).
fn cost_cell(cost: Option<&crate::k8s::flowtap::TapCost>) -> String {
    match cost {
        None => "-".into(),
        Some(c) => format!("{:.1}rec/s,{}B/s", c.records_per_second, c.bytes_per_second),
    }
}

/// `embedded`, `nats 12..340` (the stream's first and last message), or `-` when no relay
/// with listeners has reported it.
fn bus_cell(bus: Option<&crate::k8s::flowtap::BusStatus>) -> String {
    match bus {
        None => "-".into(),
        Some(b) => match (b.first_seq, b.last_seq) {
            (Some(first), Some(last)) => format!("{} {first}..{last}", b.kind),
            _ => b.kind.clone(),
        },
    }
}

fn write_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        s.push('\n');
        s
    };
    out.write_all(line(header.to_vec()).as_bytes())?;
    for row in rows {
        out.write_all(line(row.iter().map(String::as_str).collect()).as_bytes())?;
    }
    out.flush()
}

/// Age in kubectl's short form: `45s`, `3m`, `5h`, `2d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let secs = (now.as_second() - since.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_column_shows_the_kind_and_the_streams_messages() {
        use crate::k8s::flowtap::BusStatus;
        assert_eq!(bus_cell(None), "-");
        let embedded = BusStatus {
            kind: "embedded".into(),
            ..Default::default()
        };
        assert_eq!(bus_cell(Some(&embedded)), "embedded");
        let nats = BusStatus {
            kind: "nats".into(),
            stream: Some("LOGSOCKET_flow_shop_web".into()),
            first_seq: Some(12),
            last_seq: Some(340),
            problem: None,
        };
        assert_eq!(bus_cell(Some(&nats)), "nats 12..340");
    }

    #[test]
    fn age_is_printed_in_the_largest_readable_unit() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        assert_eq!(age(t0, at(5)), "5s");
        assert_eq!(age(t0, at(119)), "119s");
        assert_eq!(age(t0, at(600)), "10m");
        assert_eq!(age(t0, at(3 * 3600)), "3h");
        assert_eq!(age(t0, at(3 * 86400)), "3d");
        assert_eq!(age(at(10), t0), "0s", "clock skew never gives a negative age");
    }
}
