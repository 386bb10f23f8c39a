//! Kubernetes containment actions: `kubernetes.scale-to-zero`, `kubernetes.isolate-pod`,
//! `kubernetes.capture-evidence`, `kubernetes.delete-pod`, `kubernetes.secure-dashboard`,
//! `kubernetes.label`, `kubernetes.annotate` and `kubernetes.cordon-node`.
//!
//! Owns what the actions share: finding the pod (or object) a finding is about, picking the
//! cluster's client from the context, the plan shown when no cluster is connected, turning
//! kube-rs errors into retryable or permanent [`ActionError`]s, and the Kubernetes Event every
//! mutating action's apply records on the object it changed ([`record_event`], best-effort).
//! Clients are never built here; they come from [`ActionCtx::kube`] (`crate::clients::kube`).
//!
//! Plans observe what the change depends on (identity by uid, the fields the action sets), not
//! `resourceVersion`, which moves with every status update a controller or the kubelet writes:
//! a plan's hash stays the same while nothing relevant changed, and `apply` compares the same
//! fields to decide drift. Each write still carries the `resourceVersion` `apply` just read, so
//! a change between that read and the write is a 409 conflict (retried), not a lost update.
//!
//! Permissions are written `group/resource[/subresource]:verb`, with `core` for the core group.

mod cordon_node;
mod delete_pod;
mod evidence;
mod isolate_pod;
mod metadata;
mod scale_to_zero;
mod secure_dashboard;

pub use cordon_node::KubernetesCordonNode;
pub use delete_pod::KubernetesDeletePod;
pub use evidence::{KubernetesCaptureEvidence, take_evidence_bundle};
pub use isolate_pod::KubernetesIsolatePod;
pub use metadata::{KubernetesAnnotate, KubernetesLabel};
pub use scale_to_zero::KubernetesScaleToZero;
pub use secure_dashboard::KubernetesSecureDashboard;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Action, ActionCtx, ActionError, ParamProblem, Plan, PlanDraft};
use crate::clients::kube::ClusterError;
use crate::finding::{Finding, ResourceRef};

/// The pod a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodRef {
    /// The cluster the finding names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// The first Kubernetes pod (with its namespace) among the finding's resources.
    pub(crate) fn of(finding: &Finding) -> Result<Self, ActionError> {
        finding
            .resources
            .iter()
            .find_map(|r| match r {
                ResourceRef::Kubernetes {
                    cluster,
                    namespace: Some(namespace),
                    kind,
                    name,
                    ..
                } if kind.eq_ignore_ascii_case("pod") => Some(Self {
                    cluster: cluster.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                }),
                _ => None,
            })
            .ok_or_else(|| {
                ActionError::NotApplicable(
                    "the finding names no Kubernetes pod with its namespace".to_owned(),
                )
            })
    }

    /// `namespace/name`.
    pub(crate) fn shown(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The stable key of a Kubernetes object (also the lock key), as findings key resources.
pub(crate) fn object_key(cluster: Option<&str>, namespace: &str, kind: &str, name: &str) -> String {
    ResourceRef::Kubernetes {
        cluster: cluster.map(str::to_owned),
        namespace: Some(namespace.to_owned()),
        kind: kind.to_owned(),
        name: name.to_owned(),
        container: None,
    }
    .key()
}

/// The client for `cluster`: `Ok(Err(why))` when no cluster is connected (plans still describe
/// the change), `Err` when the finding names a cluster Firebreak must not act on.
pub(crate) fn connection(
    ctx: &ActionCtx,
    cluster: Option<&str>,
) -> Result<Result<kube::Client, String>, ActionError> {
    let Some(kube) = &ctx.kube else {
        return Ok(Err(
            "no Kubernetes cluster is configured (kubernetes.url, in-cluster or kubeconfig)"
                .to_owned(),
        ));
    };
    match kube.client(cluster) {
        Ok(c) => Ok(Ok(c.clone())),
        Err(e @ ClusterError::NotConnected(_)) => Ok(Err(e.to_string())),
        Err(e @ ClusterError::UnknownCluster(..)) => Err(ActionError::NotApplicable(e.to_string())),
    }
}

/// The client `apply` and `rollback` need: without one they fail (permanently).
pub(crate) fn connected(
    ctx: &ActionCtx,
    cluster: Option<&str>,
) -> Result<kube::Client, ActionError> {
    connection(ctx, cluster)?
        .map_err(|why| ActionError::Permanent(format!("cannot change the cluster: {why}")))
}

/// The plan when no cluster is connected: what would be done, said plainly; the engine records
/// it as planned only (nothing can apply it until a cluster is configured).
pub(crate) fn not_connected_plan(
    action: &dyn Action,
    target: String,
    what: &str,
    why: &str,
) -> Plan {
    PlanDraft {
        other_targets: Vec::new(),
        target,
        summary: format!(
            "{what}: NOT CONNECTED, {why}; nothing was read, and it is only planned until a cluster \
             is configured"
        ),
        observed: json!({ "cluster_connected": false }),
        before: Value::Null,
        after: Value::Null,
        changes: Vec::new(),
        noop: false,
    }
    .finish(action)
    .not_connected(why)
}

/// A kube-rs error as an action error: conflicts, throttling, server errors and transport
/// failures are retryable; everything else (not found, forbidden, invalid) is permanent.
pub(crate) fn kube_error(what: &str, e: kube::Error) -> ActionError {
    match e {
        kube::Error::Api(s) => {
            let message = format!("{what}: {} ({} {})", s.message, s.code, s.reason);
            if s.code == 409 || s.code == 429 || s.code >= 500 {
                ActionError::Retryable(message)
            } else {
                ActionError::Permanent(message)
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            ActionError::Retryable(format!("{what}: {e}"))
        }
        other => ActionError::Permanent(format!("{what}: {other}")),
    }
}

/// The problems of typed parameters, rendered as one message.
pub(crate) fn render_problems(problems: &[ParamProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            if p.path.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.path, p.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The undo record of an outcome, typed.
pub(crate) fn undo_of<T: serde::de::DeserializeOwned>(
    outcome: &super::Outcome,
) -> Result<Option<T>, ActionError> {
    outcome
        .undo
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            ActionError::Permanent(format!("the outcome's undo record is unreadable: {e}"))
        })
}

/// The permission every mutating action needs for [`record_event`].
pub(crate) const EVENTS_CREATE: super::Permission =
    super::Permission::new("kubernetes", "core/events:create");

/// The reason of the Events Firebreak records.
pub const EVENT_REASON: &str = "FirebreakRemediation";

/// The object an Event is about (`involvedObject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Involved {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects (their Events go to the `default` namespace, as the
    /// kubelet does for Nodes).
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// Records what Firebreak did as a core/v1 Event on `object` (reason [`EVENT_REASON`], source
/// component `firebreak`, `action` the action kind), so `kubectl describe` shows it next to
/// the object. Best-effort: an Event that cannot be written is logged, never an error of the
/// action that already changed the cluster.
pub(crate) async fn record_event(
    client: &kube::Client,
    object: &Involved,
    action: &str,
    message: &str,
) {
    let namespace = object.namespace.as_deref().unwrap_or("default");
    let now = chrono::Utc::now();
    // Named `<object>.<unix nanos in hex>`, as client-go's recorder names Events.
    let nanos = now.timestamp_nanos_opt().unwrap_or_default();
    let mut message = crate::redact::scrub(message).into_owned();
    // The events.k8s.io API caps a note at 1 kB; keep core Events within it too.
    if message.len() > 1024 {
        let mut cut = 1021;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{}.{nanos:x}", object.name), "namespace": namespace},
        "involvedObject": {
            "apiVersion": object.api_version,
            "kind": object.kind,
            "namespace": object.namespace,
            "name": object.name,
            "uid": object.uid,
        },
        "reason": EVENT_REASON,
        "message": message,
        "type": "Warning",
        "action": action,
        "source": {"component": "firebreak"},
        "reportingComponent": "firebreak",
        "reportingInstance": "firebreak",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    });
    let result = match serde_json::from_value::<DynamicObject>(event) {
        Ok(obj) => {
            let ar = ApiResource::erase::<k8s_openapi::api::core::v1::Event>(&());
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar)
                .create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = result {
        tracing::warn!(
            action,
            kind = %object.kind,
            object = %object.name,
            error = %crate::redact::scrub(&error),
            "could not record a Kubernetes Event for the change (the change itself was made)"
        );
    }
}

/// A Kubernetes object a finding names, of a kind the generic actions know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ObjectRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub kind: String,
    pub name: String,
}

/// The kinds [`ObjectRef`] resolves: (kind, API resource, namespaced).
pub(crate) fn known_kind(kind: &str) -> Option<(ApiResource, bool)> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net};
    let (ar, namespaced) = match kind.to_ascii_lowercase().as_str() {
        "pod" => (ApiResource::erase::<core::Pod>(&()), true),
        "service" => (ApiResource::erase::<core::Service>(&()), true),
        "configmap" => (ApiResource::erase::<core::ConfigMap>(&()), true),
        "serviceaccount" => (ApiResource::erase::<core::ServiceAccount>(&()), true),
        "node" => (ApiResource::erase::<core::Node>(&()), false),
        "namespace" => (ApiResource::erase::<core::Namespace>(&()), false),
        "deployment" => (ApiResource::erase::<apps::Deployment>(&()), true),
        "statefulset" => (ApiResource::erase::<apps::StatefulSet>(&()), true),
        "daemonset" => (ApiResource::erase::<apps::DaemonSet>(&()), true),
        "replicaset" => (ApiResource::erase::<apps::ReplicaSet>(&()), true),
        "ingress" => (ApiResource::erase::<net::Ingress>(&()), true),
        "networkpolicy" => (ApiResource::erase::<net::NetworkPolicy>(&()), true),
        _ => return None,
    };
    Some((ar, namespaced))
}

impl ObjectRef {
    /// The first Kubernetes object among the finding's resources whose kind is known (a
    /// namespaced kind needs its namespace).
    pub(crate) fn of(finding: &Finding) -> Result<Self, ActionError> {
        finding
            .resources
            .iter()
            .find_map(|r| match r {
                ResourceRef::Kubernetes {
                    cluster,
                    namespace,
                    kind,
                    name,
                    ..
                } => {
                    let (ar, namespaced) = known_kind(kind)?;
                    if namespaced && namespace.is_none() {
                        return None;
                    }
                    Some(Self {
                        cluster: cluster.clone(),
                        namespace: namespace.clone().filter(|_| namespaced),
                        kind: ar.kind,
                        name: name.clone(),
                    })
                }
                _ => None,
            })
            .ok_or_else(|| {
                ActionError::NotApplicable(
                    "the finding names no Kubernetes object of a known kind (Pod, Deployment, \
                     StatefulSet, DaemonSet, ReplicaSet, Service, Ingress, Node, Namespace, …) \
                     with its namespace"
                        .to_owned(),
                )
            })
    }

    /// `Kind namespace/name` or `Kind name`.
    pub(crate) fn shown(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// The lock key.
    pub(crate) fn key(&self) -> String {
        ResourceRef::Kubernetes {
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            container: None,
        }
        .key()
    }

    /// A dynamic API for the object's kind (and namespace).
    pub(crate) fn api(&self, client: &kube::Client) -> Result<Api<DynamicObject>, ActionError> {
        let (ar, _) = known_kind(&self.kind).ok_or_else(|| {
            ActionError::Permanent(format!("unknown Kubernetes kind {}", self.kind))
        })?;
        Ok(match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        })
    }

    /// The API path shown in plans, e.g. `apps/v1/namespaces/web/deployments/api`.
    pub(crate) fn path(&self) -> String {
        let Some((ar, _)) = known_kind(&self.kind) else {
            return self.shown();
        };
        match &self.namespace {
            Some(ns) => format!(
                "{}/namespaces/{ns}/{}/{}",
                ar.api_version, ar.plural, self.name
            ),
            None => format!("{}/{}/{}", ar.api_version, ar.plural, self.name),
        }
    }

    /// The Event target for the object as read (`uid` from the server).
    pub(crate) fn involved(&self, uid: &str) -> Involved {
        let api_version = known_kind(&self.kind).map_or_else(String::new, |(ar, _)| ar.api_version);
        Involved {
            api_version,
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: uid.to_owned(),
        }
    }
}

/// The pod as an Event target.
impl PodRef {
    pub(crate) fn involved(&self, uid: &str) -> Involved {
        Involved {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            namespace: Some(self.namespace.clone()),
            name: self.name.clone(),
            uid: uid.to_owned(),
        }
    }
}

/// The parameters of a step, typed and checked, or a permanent error naming every problem.
pub(crate) fn checked_params<T: serde::de::DeserializeOwned>(
    params: &Value,
    check: impl Fn(&T) -> Vec<ParamProblem>,
) -> Result<T, ActionError> {
    let p = super::typed_params::<T>(params)
        .map_err(|p| ActionError::Permanent(render_problems(&p)))?;
    let problems = check(&p);
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(ActionError::Permanent(render_problems(&problems)))
    }
}

/// `validate` for typed parameters with a semantic check.
pub(crate) fn validate_with<T: serde::de::DeserializeOwned>(
    params: &Value,
    check: impl Fn(&T) -> Vec<ParamProblem>,
) -> Vec<ParamProblem> {
    match super::typed_params::<T>(params) {
        Ok(p) => check(&p),
        Err(problems) => problems,
    }
}

/// A DNS-1123 label (namespace names, Service names).
pub(crate) fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (most object names, Node names).
pub(crate) fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}
