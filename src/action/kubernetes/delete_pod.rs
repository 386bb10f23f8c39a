//! `kubernetes.delete-pod`: keeps the evidence, then deletes the pod.
//!
//! The evidence bundle of `kubernetes.capture-evidence` is captured first and travels in the
//! outcome (the pod's logs die with it). Owner guards: a pod owned by a DaemonSet or a
//! StatefulSet is refused unless `allow_owner_kinds` names that kind. Their controllers
//! recreate the pod at once with the same identity (a StatefulSet: the same name and volumes;
//! a DaemonSet: on the same node), so deleting does not remove a compromise that lives in the
//! volume or on the node, and it can break a StatefulSet's quorum; contain such pods with
//! `kubernetes.isolate-pod` instead. The delete carries the planned uid as a precondition, so a
//! pod recreated under the same name is never deleted by mistake. A pod that is already gone,
//! or terminating (deleted with a grace period that has not run out), is a no-op. Not
//! reversible.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use serde::Deserialize;
use serde_json::{Value, json};

use super::evidence::{EvidenceParams, capture, read_pod};
use super::{
    EVENTS_CREATE, PodRef, checked_params, connected, connection, kube_error, not_connected_plan,
    object_key, record_event, validate_with,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput,
};

/// `kubernetes.delete-pod`.
pub struct KubernetesDeletePod;

/// Owner kinds refused unless allowed.
const GUARDED_OWNERS: &[&str] = &["DaemonSet", "StatefulSet"];
/// Owner kinds `allow_owner_kinds` may name.
const OWNER_KINDS: &[&str] = &["DaemonSet", "StatefulSet", "ReplicaSet", "Job", "Node"];

/// `with:` parameters.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Seconds the pod gets to stop; the pod's own `terminationGracePeriodSeconds` when unset,
    /// 0 to kill at once.
    #[serde(default)]
    grace_period_seconds: Option<u32>,
    /// Owner kinds whose pods may be deleted although their controller recreates them at once
    /// (`DaemonSet`, `StatefulSet`).
    #[serde(default)]
    allow_owner_kinds: Vec<String>,
    /// What the evidence bundle keeps.
    #[serde(default)]
    evidence: EvidenceParams,
}

fn check(p: &Params) -> Vec<ParamProblem> {
    let mut problems = p.evidence.check("evidence.");
    for (i, k) in p.allow_owner_kinds.iter().enumerate() {
        if !OWNER_KINDS.contains(&k.as_str()) {
            problems.push(ParamProblem {
                path: format!("allow_owner_kinds[{i}]"),
                message: format!("`{k}` is not an owner kind"),
                hint: Some(format!("expected one of {}", OWNER_KINDS.join(", "))),
            });
        }
    }
    if p.grace_period_seconds.is_some_and(|g| g > 86_400) {
        problems.push(ParamProblem {
            path: "grace_period_seconds".into(),
            message: "more than a day".into(),
            hint: Some("0 kills at once; leave it out for the pod's own grace period".into()),
        });
    }
    problems
}

/// The controller owner of the pod, as `(kind, name)`.
fn owner(pod: &Pod) -> Option<(String, String)> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.name.clone()))
}

/// Refuses a pod whose owner is guarded and not allowed.
fn guard(pod: &PodRef, live: &Pod, p: &Params) -> Result<(), ActionError> {
    let Some((kind, name)) = owner(live) else {
        return Ok(());
    };
    if GUARDED_OWNERS.contains(&kind.as_str()) && !p.allow_owner_kinds.contains(&kind) {
        let why = if kind == "StatefulSet" {
            "recreates it at once with the same name and volumes (whatever is in the volume \
             stays), and deleting a member can break the set's quorum"
        } else {
            "recreates it at once on the same node (whatever is on the node stays)"
        };
        return Err(ActionError::NotApplicable(format!(
            "pod {} is owned by {kind} {name}, which {why}; not deleting it. Contain it with \
             kubernetes.isolate-pod, or allow it with `allow_owner_kinds: [{kind}]`",
            pod.shown()
        )));
    }
    Ok(())
}

impl Action for KubernetesDeletePod {
    fn kind(&self) -> &'static str {
        "kubernetes.delete-pod"
    }

    fn summary(&self) -> &'static str {
        "capture a pod's evidence, then delete it (DaemonSet and StatefulSet pods only when allowed)"
    }

    fn reversible(&self) -> bool {
        false
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("kubernetes", "core/pods:get"),
            Permission::new("kubernetes", "core/pods/log:get"),
            Permission::new("kubernetes", "core/events:list"),
            Permission::new("kubernetes", "core/nodes:get"),
            Permission::new("kubernetes", "core/pods:delete"),
            EVENTS_CREATE,
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "grace_period_seconds: 0   # kill at once; leave out for the pod's own grace period\nallow_owner_kinds: []     # DaemonSet / StatefulSet pods are refused unless named here\nevidence: {tail_lines: 1000, limit_bytes: 1048576}\n"
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
            let pod = PodRef::of(input.finding)?;
            let target = object_key(pod.cluster.as_deref(), &pod.namespace, "Pod", &pod.name);
            let client = match connection(ctx, pod.cluster.as_deref())? {
                Ok(c) => c,
                Err(why) => {
                    let what = format!("capture evidence of pod {} and delete it", pod.shown());
                    return Ok(not_connected_plan(self, target, &what, &why));
                }
            };
            let live = read_pod(&client, &pod)
                .await?
                .filter(|p| p.metadata.deletion_timestamp.is_none());
            let Some(live) = live else {
                return Ok(PlanDraft {
                    other_targets: Vec::new(),
                    target,
                    summary: format!("pod {} is already gone (or terminating)", pod.shown()),
                    observed: json!({"pod": {"namespace": pod.namespace, "name": pod.name, "uid": null}}),
                    before: json!({"exists": false}),
                    after: json!({"exists": false}),
                    changes: Vec::new(),
                    noop: true,
                }
                .finish(self));
            };
            guard(&pod, &live, &params)?;
            let owner = owner(&live).map(|(k, n)| format!("{k} {n}"));
            let grace = params.grace_period_seconds.map_or_else(
                || "its own grace period".to_owned(),
                |g| format!("a grace period of {g}s"),
            );
            Ok(PlanDraft {
                other_targets: Vec::new(),
                target,
                summary: format!(
                    "capture evidence of pod {} ({}), then delete it with {grace}{}",
                    pod.shown(),
                    params.evidence.describe(),
                    owner.as_ref().map_or_else(
                        || " (a standalone pod: nothing recreates it)".to_owned(),
                        |o| format!(" ({o} recreates it)")
                    )
                ),
                observed: json!({
                    "pod": {"namespace": pod.namespace, "name": pod.name, "uid": live.metadata.uid},
                    "owner": owner,
                }),
                before: json!({"exists": true, "uid": live.metadata.uid}),
                after: json!({"exists": false}),
                changes: vec![
                    Change {
                        op: "create".into(),
                        path: format!(
                            "evidence bundle of v1/namespaces/{}/pods/{}",
                            pod.namespace, pod.name
                        ),
                        from: None,
                        to: None,
                    },
                    Change {
                        op: "delete".into(),
                        path: format!("v1/namespaces/{}/pods/{}", pod.namespace, pod.name),
                        from: Some(json!({"uid": live.metadata.uid, "owner": owner})),
                        to: None,
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
            let pod = PodRef::of(input.finding)?;
            let client = connected(ctx, pod.cluster.as_deref())?;
            let planned_uid = plan.observed["pod"]["uid"].as_str().map(str::to_owned);
            let outcome = |result: &str, detail: Value| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail,
                undo: None,
            };
            let live = read_pod(&client, &pod)
                .await?
                .filter(|p| p.metadata.deletion_timestamp.is_none());
            let Some(live) = live else {
                // Gone or terminating already: deleted by an earlier attempt, or planned so.
                return Ok(outcome(
                    "unchanged",
                    json!({"pod": pod.shown(), "deleted": false}),
                ));
            };
            let uid = live.metadata.uid.clone().unwrap_or_default();
            if plan.noop || planned_uid.as_deref() != Some(uid.as_str()) {
                return Err(ActionError::Drift(format!(
                    "pod {} is a different pod (uid {uid}) than the one planned",
                    pod.shown()
                )));
            }
            guard(&pod, &live, &params)?;
            let bundle = capture(&client, &pod, &live, &params.evidence).await?;
            let dp = DeleteParams {
                grace_period_seconds: params.grace_period_seconds,
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match Api::<Pod>::namespaced(client.clone(), &pod.namespace)
                .delete(&pod.name, &dp)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    return Ok(outcome(
                        "unchanged",
                        json!({"pod": pod.shown(), "deleted": false, "evidence": bundle.detail()}),
                    ));
                }
                Err(e) => return Err(kube_error(&format!("deleting pod {}", pod.shown()), e)),
            }
            record_event(
                &client,
                &pod.involved(&uid),
                self.kind(),
                &format!(
                    "Firebreak deleted this pod after capturing its evidence ({}); playbook {}",
                    bundle.sha256, input.playbook
                ),
            )
            .await;
            Ok(outcome(
                "applied",
                json!({"pod": pod.shown(), "uid": uid, "deleted": true, "evidence": bundle.detail()}),
            ))
        })
    }

    fn rollback<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async {
            Err(ActionError::Permanent(
                "a deleted pod cannot be restored; its controller (if any) has recreated it"
                    .to_owned(),
            ))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_with_their_paths() {
        let p = KubernetesDeletePod.validate(&json!({
            "allow_owner_kinds": ["StatefulSet", "Deploymnet"],
            "evidence": {"tail_lines": 0},
        }));
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["evidence.tail_lines", "allow_owner_kinds[1]"]);
        assert!(KubernetesDeletePod.validate(&Value::Null).is_empty());
    }
}
