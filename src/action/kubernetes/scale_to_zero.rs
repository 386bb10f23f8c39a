//! `kubernetes.scale-to-zero`: scales the workload that owns a pod to zero replicas.
//!
//! The owner is found through controller ownerReferences: Pod → ReplicaSet → Deployment, Pod →
//! StatefulSet, or Pod → ReplicaSet without an owner. DaemonSets (one pod per node, no replica
//! count), other owners and standalone pods are refused with a message naming
//! `kubernetes.isolate-pod`. The previous replica count is stored on the workload in the
//! `firebreak.dev/previous-replicas` annotation before scaling (through the `scale`
//! subresource), so rollback restores it even when the outcome record was lost.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    EVENTS_CREATE, Involved, PodRef, connected, connection, kube_error, not_connected_plan,
    object_key, record_event, render_problems, undo_of,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};

/// Where the replica count before scaling is kept, on the workload.
pub const PREVIOUS_REPLICAS: &str = "firebreak.dev/previous-replicas";

/// `kubernetes.scale-to-zero`.
pub struct KubernetesScaleToZero;

/// `with:` parameters: none.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {}

/// The kinds of workload this action scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum WorkloadKind {
    Deployment,
    StatefulSet,
    ReplicaSet,
}

impl WorkloadKind {
    fn name(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::ReplicaSet => "ReplicaSet",
        }
    }

    fn api_resource(self) -> ApiResource {
        match self {
            Self::Deployment => ApiResource::erase::<Deployment>(&()),
            Self::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Self::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
        }
    }
}

/// The owning workload as read live.
#[derive(Debug, Clone, PartialEq)]
struct Workload {
    kind: WorkloadKind,
    namespace: String,
    name: String,
    uid: String,
    resource_version: String,
    replicas: i64,
    annotation: Option<String>,
    /// How the pod leads to it, e.g. `["ReplicaSet web-7dc9", "Deployment web"]`.
    chain: Vec<String>,
}

impl Workload {
    fn shown(&self) -> String {
        format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
    }

    /// What the plan records and `apply` compares (no resourceVersion: see the module docs).
    fn observed(&self, pod: &PodRef) -> Value {
        json!({
            "pod": {"namespace": pod.namespace, "name": pod.name},
            "owners": self.chain,
            "workload": {
                "kind": self.kind.name(), "namespace": self.namespace, "name": self.name,
                "uid": self.uid,
            },
            "replicas": self.replicas,
            "annotation": self.annotation,
        })
    }
}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    kind: WorkloadKind,
    namespace: String,
    name: String,
    uid: String,
    previous_replicas: i64,
}

fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs.into_iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

fn refuse(pod: &PodRef, why: &str) -> ActionError {
    ActionError::NotApplicable(format!(
        "pod {} {why}, so it cannot be scaled to zero; contain the pod with \
         kubernetes.isolate-pod instead",
        pod.shown()
    ))
}

/// Follows controller ownerReferences from the pod to the workload to scale.
async fn resolve(client: &kube::Client, pod: &PodRef) -> Result<Workload, ActionError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let p = pods
        .get_opt(&pod.name)
        .await
        .map_err(|e| kube_error(&format!("reading pod {}", pod.shown()), e))?
        .ok_or_else(|| ActionError::NotApplicable(format!("pod {} does not exist", pod.shown())))?;
    let Some(owner) = controller(p.metadata.owner_references.as_ref()) else {
        return Err(refuse(pod, "has no owning workload (a standalone pod)"));
    };
    let mut chain = vec![format!("{} {}", owner.kind, owner.name)];
    let (kind, name) = match owner.kind.as_str() {
        "StatefulSet" => (WorkloadKind::StatefulSet, owner.name.clone()),
        "ReplicaSet" => {
            let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &pod.namespace);
            let rs = sets
                .get_opt(&owner.name)
                .await
                .map_err(|e| kube_error(&format!("reading ReplicaSet {}", owner.name), e))?
                .ok_or_else(|| {
                    ActionError::NotApplicable(format!(
                        "ReplicaSet {}/{} owning pod {} does not exist",
                        pod.namespace,
                        owner.name,
                        pod.shown()
                    ))
                })?;
            match controller(rs.metadata.owner_references.as_ref()) {
                None => (WorkloadKind::ReplicaSet, owner.name.clone()),
                Some(o) if o.kind == "Deployment" => {
                    chain.push(format!("Deployment {}", o.name));
                    (WorkloadKind::Deployment, o.name.clone())
                }
                Some(o) => {
                    return Err(refuse(
                        pod,
                        &format!(
                            "belongs to ReplicaSet {} owned by {} {}, which this action does \
                             not scale",
                            owner.name, o.kind, o.name
                        ),
                    ));
                }
            }
        }
        "DaemonSet" => {
            return Err(refuse(
                pod,
                &format!(
                    "belongs to DaemonSet {}, which runs one pod per node and has no replica \
                     count",
                    owner.name
                ),
            ));
        }
        other => {
            return Err(refuse(
                pod,
                &format!(
                    "is owned by {other} {}, which this action does not scale (Deployment, \
                     StatefulSet, ReplicaSet)",
                    owner.name
                ),
            ));
        }
    };
    read_workload(client, kind, &pod.namespace, &name, chain).await
}

async fn read_workload(
    client: &kube::Client,
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
    chain: Vec<String>,
) -> Result<Workload, ActionError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
    let what = format!("{} {namespace}/{name}", kind.name());
    let obj = api
        .get_opt(name)
        .await
        .map_err(|e| kube_error(&format!("reading {what}"), e))?
        .ok_or_else(|| ActionError::NotApplicable(format!("{what} does not exist")))?;
    Ok(Workload {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        // The API's default for an unset spec.replicas is 1.
        replicas: obj.data["spec"]["replicas"].as_i64().unwrap_or(1),
        annotation: obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PREVIOUS_REPLICAS).cloned()),
        chain,
    })
}

fn api_for(client: &kube::Client, kind: WorkloadKind, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &kind.api_resource())
}

/// Sets `spec.replicas` through the scale subresource, only if the object is still at
/// `resource_version`.
async fn scale(
    client: &kube::Client,
    w: &Workload,
    resource_version: &str,
    replicas: i64,
) -> Result<(), ActionError> {
    let patch =
        json!({"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": replicas}});
    api_for(client, w.kind, &w.namespace)
        .patch_scale(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| kube_error(&format!("scaling {}", w.shown()), e))?;
    Ok(())
}

/// Sets (or, with `None`, removes) the annotation; returns the new resourceVersion.
async fn annotate(
    client: &kube::Client,
    w: &Workload,
    resource_version: &str,
    value: Option<String>,
) -> Result<String, ActionError> {
    let patch = json!({"metadata": {
        "resourceVersion": resource_version,
        "annotations": {PREVIOUS_REPLICAS: value},
    }});
    let obj = api_for(client, w.kind, &w.namespace)
        .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| kube_error(&format!("annotating {}", w.shown()), e))?;
    Ok(obj.metadata.resource_version.unwrap_or_default())
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    typed_params::<Params>(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

impl KubernetesScaleToZero {
    fn draft(pod: &PodRef, w: &Workload) -> PlanDraft {
        let target = object_key(pod.cluster.as_deref(), &w.namespace, w.kind.name(), &w.name);
        let path = format!(
            "{}/namespaces/{}/{}s/{}",
            w.kind.api_resource().api_version,
            w.namespace,
            w.kind.name().to_ascii_lowercase(),
            w.name
        );
        if w.replicas == 0 {
            return PlanDraft {
                other_targets: Vec::new(),
                target,
                summary: format!(
                    "{} (owner of pod {}) is already scaled to zero",
                    w.shown(),
                    pod.shown()
                ),
                observed: w.observed(pod),
                before: json!({"replicas": 0}),
                after: json!({"replicas": 0}),
                changes: Vec::new(),
                noop: true,
            };
        }
        PlanDraft {
            other_targets: Vec::new(),
            target,
            summary: format!(
                "scale {} (owner of pod {}) from {} replica(s) to 0, keeping {} in the {} \
                 annotation",
                w.shown(),
                pod.shown(),
                w.replicas,
                w.replicas,
                PREVIOUS_REPLICAS
            ),
            observed: w.observed(pod),
            before: json!({"replicas": w.replicas, "annotations": {PREVIOUS_REPLICAS: w.annotation}}),
            after: json!({"replicas": 0, "annotations": {PREVIOUS_REPLICAS: w.replicas.to_string()}}),
            changes: vec![
                Change {
                    op: "update".into(),
                    path: format!("{path}: metadata.annotations[{PREVIOUS_REPLICAS}]"),
                    from: w.annotation.clone().map(Value::String),
                    to: Some(Value::String(w.replicas.to_string())),
                },
                Change {
                    op: "update".into(),
                    path: format!("{path}/scale: spec.replicas"),
                    from: Some(json!(w.replicas)),
                    to: Some(json!(0)),
                },
            ],
            noop: false,
        }
    }
}

impl Action for KubernetesScaleToZero {
    fn kind(&self) -> &'static str {
        "kubernetes.scale-to-zero"
    }

    fn summary(&self) -> &'static str {
        "scale the workload owning a pod (Deployment, StatefulSet, ReplicaSet) to zero replicas"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("kubernetes", "core/pods:get"),
            Permission::new("kubernetes", "apps/replicasets:get"),
            Permission::new("kubernetes", "apps/replicasets:patch"),
            Permission::new("kubernetes", "apps/replicasets/scale:patch"),
            Permission::new("kubernetes", "apps/deployments:get"),
            Permission::new("kubernetes", "apps/deployments:patch"),
            Permission::new("kubernetes", "apps/deployments/scale:patch"),
            Permission::new("kubernetes", "apps/statefulsets:get"),
            Permission::new("kubernetes", "apps/statefulsets:patch"),
            Permission::new("kubernetes", "apps/statefulsets/scale:patch"),
            EVENTS_CREATE,
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "{}                       # no parameters: the pod comes from the finding\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        typed_params::<Params>(params).err().unwrap_or_default()
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            params_of(&input)?;
            let pod = PodRef::of(input.finding)?;
            let client = match connection(ctx, pod.cluster.as_deref())? {
                Ok(c) => c,
                Err(why) => {
                    let target =
                        object_key(pod.cluster.as_deref(), &pod.namespace, "Pod", &pod.name);
                    let what = format!("scale the workload owning pod {} to zero", pod.shown());
                    return Ok(not_connected_plan(self, target, &what, &why));
                }
            };
            let w = resolve(&client, &pod).await?;
            Ok(Self::draft(&pod, &w).finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let pod = PodRef::of(input.finding)?;
            let client = connected(ctx, pod.cluster.as_deref())?;
            let live = resolve(&client, &pod).await?;
            let planned = &plan.observed;
            let planned_replicas = planned["replicas"].as_i64();
            if planned["workload"] != live.observed(&pod)["workload"] {
                return Err(ActionError::Drift(format!(
                    "pod {} is now owned by {} (uid {}), planned against {}",
                    pod.shown(),
                    live.shown(),
                    live.uid,
                    planned["workload"]
                )));
            }
            let outcome = |result: &str, undo: Option<Undo>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({
                    "workload": live.shown(),
                    "previous_replicas": undo.as_ref().map(|u| u.previous_replicas),
                    "replicas": 0,
                }),
                undo: undo.and_then(|u| serde_json::to_value(u).ok()),
            };
            if live.replicas == 0 {
                // Already applied (a retry after a crash), or planned as a no-op.
                let ours = planned_replicas
                    .is_some_and(|n| live.annotation.as_deref() == Some(n.to_string().as_str()));
                if plan.noop || ours {
                    return Ok(outcome("unchanged", None));
                }
                return Err(ActionError::Drift(format!(
                    "{} was scaled to zero by someone else since planning",
                    live.shown()
                )));
            }
            if plan.noop || Some(live.replicas) != planned_replicas {
                return Err(ActionError::Drift(format!(
                    "{} has {} replica(s) now, planned with {}",
                    live.shown(),
                    live.replicas,
                    planned_replicas.map_or_else(|| "?".to_owned(), |n| n.to_string())
                )));
            }
            let rv = annotate(
                &client,
                &live,
                &live.resource_version,
                Some(live.replicas.to_string()),
            )
            .await?;
            scale(&client, &live, &rv, 0).await?;
            record_event(
                &client,
                &Involved {
                    api_version: "apps/v1".into(),
                    kind: live.kind.name().into(),
                    namespace: Some(live.namespace.clone()),
                    name: live.name.clone(),
                    uid: live.uid.clone(),
                },
                self.kind(),
                &format!(
                    "Firebreak scaled this {} from {} replica(s) to 0 (pod {}; playbook {}); \
                     the count before is kept in the {PREVIOUS_REPLICAS} annotation",
                    live.kind.name(),
                    live.replicas,
                    pod.shown(),
                    input.playbook
                ),
            )
            .await;
            let undo = Undo {
                cluster: pod.cluster.clone(),
                kind: live.kind,
                namespace: live.namespace.clone(),
                name: live.name.clone(),
                uid: live.uid.clone(),
                previous_replicas: live.replicas,
            };
            Ok(outcome("applied", Some(undo)))
        })
    }

    fn rollback<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let Some(undo) = undo_of::<Undo>(outcome)? else {
                return Ok(());
            };
            let client = connected(ctx, undo.cluster.as_deref())?;
            let w = read_workload(&client, undo.kind, &undo.namespace, &undo.name, Vec::new())
                .await
                .map_err(|e| match e {
                    ActionError::NotApplicable(m) => {
                        ActionError::Permanent(format!("nothing to restore: {m}"))
                    }
                    other => other,
                })?;
            if w.uid != undo.uid {
                return Err(ActionError::Permanent(format!(
                    "{} was replaced since it was scaled (uid {} → {}); not restoring",
                    w.shown(),
                    undo.uid,
                    w.uid
                )));
            }
            let Some(annotation) = w.annotation.clone() else {
                // Restored already (the annotation is removed last).
                return Ok(());
            };
            let previous = annotation
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .unwrap_or(undo.previous_replicas);
            let mut rv = w.resource_version.clone();
            // Replicas changed by someone since: keep theirs, only drop the annotation.
            if w.replicas == 0 {
                scale(&client, &w, &rv, previous).await?;
                rv = read_workload(&client, w.kind, &w.namespace, &w.name, Vec::new())
                    .await?
                    .resource_version;
            }
            annotate(&client, &w, &rv, None).await?;
            Ok(())
        })
    }
}
