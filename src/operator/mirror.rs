//! Mirror mode: a managed sibling of the tapped flow that feeds the tap, so the tapped flow is
//! never written (for flows a GitOps tool owns).

use super::children::{cached, cached_or_read, delete_managed, ensure_managed};
use super::context::Context;
use super::output_name;
use super::status::FlowState;
use crate::k8s::flowtap::{FlowKind, FlowTap};
use crate::k8s::logging::{ClusterFlow, Flow};
use crate::Result;
use kube::api::Api;
use kube::ResourceExt;

/// Mirror mode: a managed sibling of the tapped flow, with its spec (match, filters, ...) and
/// the tap's output as its only output. Follows the flow; removed when the flow is gone.
pub(super) async fn ensure_mirror(tap: &FlowTap, output: &str, ctx: &Context) -> Result<FlowState> {
    let ns = tap.namespace().unwrap_or_default();
    let name = output_name(tap);
    let flow = &tap.spec.flow_ref.name;
    let synced = || ("MirrorSynced", format!("{name} was brought in line with {flow}"));
    let state = match tap.spec.flow_ref.kind {
        FlowKind::Flow => {
            let api = Api::<Flow>::namespaced(ctx.client.clone(), &ns);
            let Some(original) = cached_or_read(&ctx.flows, &api, &ns, flow).await? else {
                delete_managed(api, &name, tap, None).await?;
                return Ok(FlowState::Missing);
            };
            let mut spec = original.spec;
            spec.local_output_refs = Some(vec![output.to_owned()]);
            spec.global_output_refs = None;
            mirror_spec(&mut spec.other);
            let mut mirror = Flow::new(&name, spec);
            let existing = cached(&ctx.flows, &ns, &name);
            ensure_managed(api, existing, &mut mirror, tap, ctx, |f| &mut f.spec, synced()).await?
        }
        FlowKind::ClusterFlow => {
            let api = Api::<ClusterFlow>::namespaced(ctx.client.clone(), &ns);
            let Some(original) = cached_or_read(&ctx.cluster_flows, &api, &ns, flow).await? else {
                delete_managed(api, &name, tap, None).await?;
                return Ok(FlowState::Missing);
            };
            let mut spec = original.spec;
            spec.global_output_refs = Some(vec![output.to_owned()]);
            mirror_spec(&mut spec.other);
            let mut mirror = ClusterFlow::new(&name, spec);
            let existing = cached(&ctx.cluster_flows, &ns, &name);
            ensure_managed(api, existing, &mut mirror, tap, ctx, |f| &mut f.spec, synced()).await?
        }
    };
    let problems = state.status.and_then(|s| s.problems).unwrap_or_default();
    Ok(match (state.taken, problems.is_empty()) {
        (true, _) => FlowState::NameTaken(name),
        (false, false) => FlowState::Problems(problems),
        (false, true) => FlowState::Mirrored,
    })
}

/// Filters that pass every record through unchanged but act outside the pipeline: run again in
/// a mirror they would count the tenant's records twice (`prometheus`: dashboards and alerts
/// see double) or print them twice (`stdout`). The mirror drops them; its records are the same.
pub const MIRROR_DROPS_FILTERS: [&str; 2] = ["prometheus", "stdout"];

/// What a mirror takes from the flow's spec besides match and filters. It must not carry the
/// flow's custom fluentd label (two flows with one label would render a duplicate `<label>`
/// section), nor the filters of [`MIRROR_DROPS_FILTERS`].
fn mirror_spec(spec: &mut crate::k8s::logging::Other) {
    spec.remove("flowLabel");
    spec.remove("includeLabelInRouter");
    if let Some(serde_json::Value::Array(filters)) = spec.get_mut("filters") {
        // A filter is an object with one key, its plugin (`{"prometheus": {...}}`).
        filters.retain(|f| {
            !f.as_object()
                .is_some_and(|f| f.keys().any(|k| MIRROR_DROPS_FILTERS.contains(&k.as_str())))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_mirror_keeps_the_flows_filters_but_not_those_that_would_count_or_print_records_twice() {
        let mut spec: crate::k8s::logging::Other = serde_json::from_value(json!({
            "match": [{"select": {"labels": {"app": "web"}}}],
            "flowLabel": "@web",
            "includeLabelInRouter": true,
            "filters": [
                {"parser": {"parse": {"type": "json"}}},
                {"prometheus": {"metrics": [{"name": "records_total", "type": "counter"}]}},
                {"throttle": {"group_bucket_limit": 10}},
                {"stdout": {}},
                {"record_modifier": {"records": [{"tenant": "shop"}]}},
            ],
        }))
        .unwrap();
        mirror_spec(&mut spec);
        assert_eq!(
            serde_json::Value::Object(spec),
            json!({
                "match": [{"select": {"labels": {"app": "web"}}}],
                "filters": [
                    {"parser": {"parse": {"type": "json"}}},
                    {"throttle": {"group_bucket_limit": 10}},
                    {"record_modifier": {"records": [{"tenant": "shop"}]}},
                ],
            })
        );
    }
}
