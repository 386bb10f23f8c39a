//! `kubernetes.cordon-node`: marks a node unschedulable, so no new pod lands on it.
//!
//! The node is `with: {node}` when given, else the node the finding's pod runs on
//! (`spec.nodeName`), else a Node the finding names. Pods already on the node keep running (this
//! is not a drain). Firebreak marks what it cordoned with the `firebreak.dev/cordoned`
//! annotation; rollback uncordons only a node Firebreak cordoned and that is still marked so:
//! a node that was cordoned already (by a person, by a drain) stays cordoned.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    EVENTS_CREATE, Involved, ObjectRef, PodRef, checked_params, connected, connection, kube_error,
    not_connected_plan, object_key, record_event, undo_of, valid_dns_subdomain, validate_with,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput,
};

/// Marks a node Firebreak cordoned (the value says which playbook).
pub const CORDONED: &str = "firebreak.dev/cordoned";

/// `kubernetes.cordon-node`.
pub struct KubernetesCordonNode;

/// `with:` parameters.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The node to cordon; by default the node of the finding's pod.
    #[serde(default)]
    node: Option<String>,
}

fn check(p: &Params) -> Vec<ParamProblem> {
    match &p.node {
        Some(n) if !valid_dns_subdomain(n) => vec![ParamProblem {
            path: "node".into(),
            message: format!("`{n}` is not a node name"),
            hint: Some("node names are lowercase DNS names, e.g. ip-10-0-1-23.ec2.internal".into()),
        }],
        _ => Vec::new(),
    }
}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    node: String,
    uid: String,
}

/// How the node was found, for the plan.
struct Target {
    cluster: Option<String>,
    node: String,
    via: String,
}

/// The node named by the parameters, the finding's pod, or the finding.
async fn target(
    client: Option<&kube::Client>,
    input: &StepInput<'_>,
    p: &Params,
) -> Result<Target, ActionError> {
    let cluster = input.finding.resources.iter().find_map(|r| match r {
        crate::finding::ResourceRef::Kubernetes { cluster, .. } => cluster.clone(),
        _ => None,
    });
    if let Some(node) = &p.node {
        return Ok(Target {
            cluster,
            node: node.clone(),
            via: "named by the step".into(),
        });
    }
    if let Ok(pod) = PodRef::of(input.finding) {
        let Some(client) = client else {
            return Ok(Target {
                cluster: pod.cluster.clone(),
                node: format!("<node of pod {}>", pod.shown()),
                via: format!("the node of pod {}", pod.shown()),
            });
        };
        let live = Api::<Pod>::namespaced(client.clone(), &pod.namespace)
            .get_opt(&pod.name)
            .await
            .map_err(|e| kube_error(&format!("reading pod {}", pod.shown()), e))?
            .ok_or_else(|| {
                ActionError::NotApplicable(format!("pod {} does not exist", pod.shown()))
            })?;
        let node = live.spec.and_then(|s| s.node_name).ok_or_else(|| {
            ActionError::NotApplicable(format!(
                "pod {} is not scheduled on a node; name one with `with: {{node: …}}`",
                pod.shown()
            ))
        })?;
        return Ok(Target {
            via: format!("runs pod {}", pod.shown()),
            cluster: pod.cluster,
            node,
        });
    }
    match ObjectRef::of(input.finding) {
        Ok(o) if o.kind == "Node" => Ok(Target {
            cluster: o.cluster,
            node: o.name,
            via: "named by the finding".into(),
        }),
        _ => Err(ActionError::NotApplicable(
            "the finding names no pod or node; name the node with `with: {node: …}`".into(),
        )),
    }
}

struct LiveNode {
    uid: String,
    unschedulable: bool,
    mark: Option<String>,
}

async fn read_node(client: &kube::Client, name: &str) -> Result<Option<LiveNode>, ActionError> {
    let node = Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| kube_error(&format!("reading node {name}"), e))?;
    Ok(node.map(|n| LiveNode {
        uid: n.metadata.uid.unwrap_or_default(),
        unschedulable: n.spec.and_then(|s| s.unschedulable).unwrap_or(false),
        mark: n
            .metadata
            .annotations
            .and_then(|a| a.get(CORDONED).cloned()),
    }))
}

impl Action for KubernetesCordonNode {
    fn kind(&self) -> &'static str {
        "kubernetes.cordon-node"
    }

    fn summary(&self) -> &'static str {
        "mark the node of a pod (or a named node) unschedulable; its pods keep running"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("kubernetes", "core/pods:get"),
            Permission::new("kubernetes", "core/nodes:get"),
            Permission::new("kubernetes", "core/nodes:patch"),
            EVENTS_CREATE,
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "# node: ip-10-0-1-23.ec2.internal   # default: the node the finding's pod runs on\n{}\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        validate_with::<Params>(params, check)
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let params = checked_params::<Params>(input.params, check)?;
            let cluster = target(None, &input, &params).await?.cluster;
            let client = match connection(ctx, cluster.as_deref())? {
                Ok(c) => c,
                Err(why) => {
                    let t = target(None, &input, &params).await?;
                    let what = format!("cordon {} ({})", t.node, t.via);
                    let key = object_key(t.cluster.as_deref(), "", "Node", &t.node);
                    return Ok(not_connected_plan(self, key, &what, &why));
                }
            };
            let t = target(Some(&client), &input, &params).await?;
            let node = read_node(&client, &t.node).await?.ok_or_else(|| {
                ActionError::NotApplicable(format!("node {} does not exist", t.node))
            })?;
            let key = object_key(t.cluster.as_deref(), "", "Node", &t.node);
            let observed = json!({
                "node": t.node, "uid": node.uid, "unschedulable": node.unschedulable,
                "mark": node.mark,
            });
            if node.unschedulable {
                return Ok(PlanDraft {
                    other_targets: Vec::new(),
                    target: key,
                    summary: format!("node {} ({}) is already cordoned", t.node, t.via),
                    observed,
                    before: json!({"unschedulable": true}),
                    after: json!({"unschedulable": true}),
                    changes: Vec::new(),
                    noop: true,
                }
                .finish(self));
            }
            let path = format!("v1/nodes/{}", t.node);
            Ok(PlanDraft {
                other_targets: Vec::new(),
                target: key,
                summary: format!(
                    "cordon node {} ({}): no new pod is scheduled there; its pods keep running",
                    t.node, t.via
                ),
                observed,
                before: json!({"unschedulable": false, "annotations": {CORDONED: node.mark}}),
                after: json!({"unschedulable": true, "annotations": {CORDONED: input.playbook}}),
                changes: vec![
                    Change {
                        op: "update".into(),
                        path: format!("{path}: spec.unschedulable"),
                        from: Some(json!(false)),
                        to: Some(json!(true)),
                    },
                    Change {
                        op: "update".into(),
                        path: format!("{path}: metadata.annotations[{CORDONED}]"),
                        from: node.mark.map(Value::String),
                        to: Some(Value::String(input.playbook.to_owned())),
                    },
                ],
                noop: false,
            }
            .finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let params = checked_params::<Params>(input.params, check)?;
            let cluster = target(None, &input, &params).await?.cluster;
            let client = connected(ctx, cluster.as_deref())?;
            let t = target(Some(&client), &input, &params).await?;
            if plan.observed["node"] != json!(t.node) {
                return Err(ActionError::Drift(format!(
                    "the pod now runs on node {}, planned against {}",
                    t.node, plan.observed["node"]
                )));
            }
            let node = read_node(&client, &t.node)
                .await?
                .ok_or_else(|| ActionError::Permanent(format!("node {} is gone", t.node)))?;
            let undo = Undo {
                cluster: t.cluster.clone(),
                node: t.node.clone(),
                uid: node.uid.clone(),
            };
            let outcome = |result: &str, undo: Option<&Undo>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({"node": t.node, "unschedulable": true}),
                undo: undo.and_then(|u| serde_json::to_value(u).ok()),
            };
            if node.unschedulable {
                // Ours when we planned the change and the mark is ours (a retry); else someone
                // else cordoned it, and rollback must leave it cordoned.
                let ours = !plan.noop && node.mark.as_deref() == Some(input.playbook);
                return Ok(outcome("unchanged", ours.then_some(&undo)));
            }
            if plan.noop || plan.observed["uid"] != json!(node.uid) {
                return Err(ActionError::Drift(format!(
                    "node {} changed since planning (uncordoned, or replaced)",
                    t.node
                )));
            }
            let patch = json!({
                "metadata": {"annotations": {CORDONED: input.playbook}},
                "spec": {"unschedulable": true},
            });
            Api::<Node>::all(client.clone())
                .patch(&t.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| kube_error(&format!("cordoning node {}", t.node), e))?;
            record_event(
                &client,
                &Involved {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    namespace: None,
                    name: t.node.clone(),
                    uid: node.uid.clone(),
                },
                self.kind(),
                &format!(
                    "Firebreak cordoned this node ({}; playbook {})",
                    t.via, input.playbook
                ),
            )
            .await;
            Ok(outcome("applied", Some(&undo)))
        })
    }

    fn rollback<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let Some(undo) = undo_of::<Undo>(outcome)? else {
                // Firebreak did not cordon it: leave it as it is.
                return Ok(());
            };
            let client = connected(ctx, undo.cluster.as_deref())?;
            let Some(node) = read_node(&client, &undo.node).await? else {
                return Ok(());
            };
            if node.uid != undo.uid || node.mark.is_none() {
                // Replaced, or uncordoned and unmarked since: nothing of ours to undo.
                return Ok(());
            }
            let patch = json!({
                "metadata": {"annotations": {CORDONED: null}},
                "spec": {"unschedulable": null},
            });
            Api::<Node>::all(client)
                .patch(&undo.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| kube_error(&format!("uncordoning node {}", undo.node), e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_node_name_is_reported_at_its_path() {
        let p = KubernetesCordonNode.validate(&json!({"node": "Bad_Node"}));
        assert_eq!(p[0].path, "node");
        assert!(
            KubernetesCordonNode
                .validate(&json!({"node": "ip-10-0-1-23.ec2.internal"}))
                .is_empty()
        );
        assert!(KubernetesCordonNode.validate(&Value::Null).is_empty());
    }
}
