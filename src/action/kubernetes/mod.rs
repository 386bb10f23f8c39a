//! Kubernetes containment actions: `kubernetes.scale-to-zero` and `kubernetes.isolate-pod`.
//!
//! Owns what the actions share: finding the pod a finding is about, picking the cluster's
//! client from the context, the plan shown when no cluster is connected, and turning kube-rs
//! errors into retryable or permanent [`ActionError`]s. Clients are never built here; they come
//! from [`ActionCtx::kube`] (`crate::clients::kube`).
//!
//! Plans observe what the change depends on (identity by uid, the fields the action sets), not
//! `resourceVersion`, which moves with every status update a controller or the kubelet writes:
//! a plan's hash stays the same while nothing relevant changed, and `apply` compares the same
//! fields to decide drift. Each write still carries the `resourceVersion` `apply` just read, so
//! a change between that read and the write is a 409 conflict (retried), not a lost update.
//!
//! Permissions are written `group/resource[/subresource]:verb`, with `core` for the core group.

mod isolate_pod;
mod scale_to_zero;

pub use isolate_pod::KubernetesIsolatePod;
pub use scale_to_zero::KubernetesScaleToZero;

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

/// The plan when no cluster is connected: what would be done, said plainly, and that applying
/// fails until a cluster is configured.
pub(crate) fn not_connected_plan(
    action: &dyn Action,
    target: String,
    what: &str,
    why: &str,
) -> Plan {
    PlanDraft {
        target,
        summary: format!(
            "{what}: NOT CONNECTED, {why}; nothing was read, and applying fails until a cluster \
             is configured"
        ),
        observed: json!({ "cluster_connected": false }),
        before: Value::Null,
        after: Value::Null,
        changes: Vec::new(),
        noop: false,
    }
    .finish(action)
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
