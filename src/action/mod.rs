//! Actions: the things Firebreak does to the world, each with a read-only plan.
//!
//! Every action is one `impl Action` in its family file plus one line in [`ACTIONS`]. The engine
//! calls [`Action::plan`] (reads only), renders the [`Plan`] (CLI, PR body and audit all render the
//! same value), and only then [`Action::apply`], which re-reads live state and refuses with
//! [`ActionError::Drift`] if it changed since planning. A second apply of the same plan is a no-op.

mod aws;
pub mod github;
pub mod iam_policy;
mod kubernetes;
mod notify;
pub mod rbac;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::finding::Finding;

pub use aws::{
    AwsIamDeactivateAccessKey, AwsIamDeleteAccessKey, AwsIamQuarantineUser, AwsIamRotateAccessKey,
    AwsS3BlockPublicAccess, AwsSecurityHubUpdateFinding,
};
pub use github::{GithubOpenPullRequest, GithubResolveSecretAlert};
pub use kubernetes::{
    EVENT_REASON, KubernetesAnnotate, KubernetesCaptureEvidence, KubernetesCordonNode,
    KubernetesDeletePod, KubernetesIsolatePod, KubernetesLabel, KubernetesScaleToZero,
    KubernetesSecureDashboard, take_evidence_bundle,
};
pub use notify::NotifyWebhook;

/// Every action, in a stable order. `actions list`, the generated permission files and the
/// docs read this.
pub static ACTIONS: &[&dyn Action] = &[
    &NotifyWebhook,
    &KubernetesScaleToZero,
    &KubernetesIsolatePod,
    &KubernetesCaptureEvidence,
    &KubernetesDeletePod,
    &KubernetesSecureDashboard,
    &KubernetesLabel,
    &KubernetesAnnotate,
    &KubernetesCordonNode,
    &AwsS3BlockPublicAccess,
    &AwsSecurityHubUpdateFinding,
    &AwsIamDeactivateAccessKey,
    &AwsIamRotateAccessKey,
    &AwsIamDeleteAccessKey,
    &AwsIamQuarantineUser,
    &GithubOpenPullRequest,
    &GithubResolveSecretAlert,
];

/// Looks up an action by kind.
pub fn action(kind: &str) -> Option<&'static dyn Action> {
    ACTIONS.iter().copied().find(|a| a.kind() == kind)
}

/// A boxed future, so actions stay object-safe in the static registry.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One permission an action needs, in the terms of the system that grants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// `aws`, `kubernetes`, `github` or `network`.
    pub system: Cow<'static, str>,
    /// The grant, e.g. `iam:UpdateAccessKey`, `apps/deployments/scale:patch`, `POST <url>`.
    pub grant: Cow<'static, str>,
}

impl Permission {
    /// A permission for the static registry.
    #[must_use]
    pub const fn new(system: &'static str, grant: &'static str) -> Self {
        Self {
            system: Cow::Borrowed(system),
            grant: Cow::Borrowed(grant),
        }
    }
}

/// A problem with a step's `with:` parameters, found when the playbook is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    /// Dotted path below `with`, e.g. `url`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
}

/// One change a plan would make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `create`, `update`, `delete` or `send`.
    pub op: String,
    /// What changes: an object path, a field, a URL.
    pub path: String,
    /// The value before, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The value after, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// What an action would do, computed without changing anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The action kind.
    pub action: String,
    /// The target, as a stable key (also the lock key).
    pub target: String,
    /// Every other resource this plan changes, as stable keys (a rotation changes the key, the
    /// Secret it delivers to and each Deployment it rolls). Guards count and the engine locks
    /// [`Plan::changed_targets`]: the target and these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_targets: Vec<String>,
    /// One sentence a reviewer reads first.
    pub summary: String,
    /// The live state read while planning (what `apply` re-checks for drift).
    pub observed: Value,
    /// The relevant state before.
    pub before: Value,
    /// The relevant state after.
    pub after: Value,
    /// Each change, in order.
    pub changes: Vec<Change>,
    /// Whether `rollback` can undo it.
    pub reversible: bool,
    /// The permissions `apply` uses.
    pub permissions: Vec<Permission>,
    /// True when the target is already in the desired state: apply does nothing.
    pub noop: bool,
    /// Why nothing was read and nothing can apply this plan (no cluster, no AWS credentials):
    /// the engine records the step as planned only instead of applying it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_connected: Option<String>,
    /// SHA-256 of everything above (stable across runs for the same inputs and state).
    pub hash: String,
}

/// The parts of a plan an action fills in; [`PlanDraft::finish`] adds metadata and the hash.
#[derive(Debug, Clone, Default)]
pub struct PlanDraft {
    /// See [`Plan::target`].
    pub target: String,
    /// See [`Plan::other_targets`] (duplicates and the target itself are dropped).
    pub other_targets: Vec<String>,
    /// See [`Plan::summary`].
    pub summary: String,
    /// See [`Plan::observed`].
    pub observed: Value,
    /// See [`Plan::before`].
    pub before: Value,
    /// See [`Plan::after`].
    pub after: Value,
    /// See [`Plan::changes`].
    pub changes: Vec<Change>,
    /// See [`Plan::noop`].
    pub noop: bool,
}

impl PlanDraft {
    /// Completes the plan for `action`, scrubbing secrets and computing the hash.
    #[must_use]
    pub fn finish(self, action: &dyn Action) -> Plan {
        let target = crate::redact::scrub(&self.target).into_owned();
        let mut other_targets: Vec<String> = Vec::with_capacity(self.other_targets.len());
        for t in &self.other_targets {
            let t = crate::redact::scrub(t).into_owned();
            if t != target && !other_targets.contains(&t) {
                other_targets.push(t);
            }
        }
        let mut plan = Plan {
            action: action.kind().to_owned(),
            target,
            other_targets,
            summary: crate::redact::scrub(&self.summary).into_owned(),
            observed: self.observed,
            before: self.before,
            after: self.after,
            changes: self.changes,
            reversible: action.reversible(),
            permissions: action.permissions().to_vec(),
            noop: self.noop,
            not_connected: None,
            hash: String::new(),
        };
        for v in [&mut plan.observed, &mut plan.before, &mut plan.after] {
            crate::redact::scrub_json(v);
        }
        for c in &mut plan.changes {
            c.path = crate::redact::scrub(&c.path).into_owned();
            for v in [c.from.as_mut(), c.to.as_mut()].into_iter().flatten() {
                crate::redact::scrub_json(v);
            }
        }
        plan.hash = plan.compute_hash();
        plan
    }
}

impl Plan {
    /// The same plan, marked as made without a client (`why`): it can only be planned.
    #[must_use]
    pub fn not_connected(mut self, why: &str) -> Plan {
        self.not_connected = Some(crate::redact::scrub(why).into_owned());
        self.hash = self.compute_hash();
        self
    }

    /// Every resource this plan changes: the target first, then the others, each once.
    pub fn changed_targets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.target.as_str()).chain(self.other_targets.iter().map(String::as_str))
    }

    /// SHA-256 over the canonical JSON of every field except `hash`.
    #[must_use]
    pub fn compute_hash(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.remove("hash");
        }
        let canonical = canonical_json(&v);
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        )
    }
}

/// JSON with object keys sorted at every level, so equal values hash equally.
#[must_use]
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).unwrap_or_default(),
                        canonical_json(&map[k])
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// What applying a plan did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The action kind.
    pub action: String,
    /// The target key.
    pub target: String,
    /// `applied`, or `unchanged` when the target was already in the desired state.
    pub result: String,
    /// Details worth keeping (ids created, HTTP status…), secrets scrubbed.
    pub detail: Value,
    /// What `rollback` needs, when the action is reversible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Value>,
}

/// Why an action failed. The engine decides retry vs give up from the variant alone.
///
/// The text often quotes an SDK or HTTP error, which may echo input: `Display` and `Debug`
/// scrub it ([`crate::redact::scrub`]), so an `ActionError` can be logged or stored as it is.
#[derive(thiserror::Error)]
pub enum ActionError {
    /// Worth retrying with backoff (throttling, timeouts, 5xx, conflicts).
    #[error("{} (retryable)", crate::redact::scrub(.0))]
    Retryable(String),
    /// Retrying will not help (validation, permission denied, 4xx).
    #[error("{}", crate::redact::scrub(.0))]
    Permanent(String),
    /// The target changed since the plan was made; plan again.
    #[error("target changed since it was planned: {}", crate::redact::scrub(.0))]
    Drift(String),
    /// The action cannot act on this finding (no suitable target, missing resource type).
    #[error("not applicable: {}", crate::redact::scrub(.0))]
    NotApplicable(String),
}

impl std::fmt::Debug for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (variant, text) = match self {
            ActionError::Retryable(t) => ("Retryable", t),
            ActionError::Permanent(t) => ("Permanent", t),
            ActionError::Drift(t) => ("Drift", t),
            ActionError::NotApplicable(t) => ("NotApplicable", t),
        };
        f.debug_tuple(variant)
            .field(&crate::redact::scrub(text))
            .finish()
    }
}

impl ActionError {
    /// Whether the engine may retry.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, ActionError::Retryable(_))
    }
}

/// Everything an action may use: injected clients, settings and time. No globals.
#[derive(Clone)]
pub struct ActionCtx {
    /// HTTP client for webhooks (timeouts set).
    pub http: reqwest::Client,
    /// Named webhook endpoints from configuration (`notify.webhooks`).
    pub webhooks: Arc<std::collections::BTreeMap<String, crate::config::WebhookEndpoint>>,
    /// Per-request timeout for outbound HTTP.
    pub http_timeout: Duration,
    /// Kubernetes clients, built once (`crate::clients::kube::Kube::load`); `None` when no
    /// cluster was set up, in which case `kubernetes.*` actions only plan.
    pub kube: Option<crate::clients::kube::Kube>,
    /// AWS configuration, built once (`crate::clients::aws::Aws::load`); `None` when AWS was not
    /// set up, in which case `aws.*` actions only plan.
    pub aws: Option<crate::clients::aws::Aws>,
    /// The GitHub client, built once (`crate::clients::github::GitHub::load`); `None` when no
    /// token or App is configured, in which case `github.*` actions only plan.
    pub github: Option<crate::clients::github::GitHub>,
}

impl ActionCtx {
    /// A context from configuration.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS backend unavailable).
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, reqwest::Error> {
        let timeout = Duration::from_secs(cfg.notify.timeout_seconds.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // Never follow redirects: a webhook body must not be re-sent to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("firebreak/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            webhooks: Arc::new(cfg.notify.webhooks.clone()),
            http_timeout: timeout,
            kube: None,
            aws: None,
            github: None,
        })
    }

    /// The same context with Kubernetes clients.
    #[must_use]
    pub fn with_kube(mut self, kube: crate::clients::kube::Kube) -> Self {
        self.kube = Some(kube);
        self
    }

    /// The same context with AWS clients.
    #[must_use]
    pub fn with_aws(mut self, aws: crate::clients::aws::Aws) -> Self {
        self.aws = Some(aws);
        self
    }

    /// The same context with the GitHub client.
    #[must_use]
    pub fn with_github(mut self, github: crate::clients::github::GitHub) -> Self {
        self.github = Some(github);
        self
    }
}

/// The input of one step: the finding, the playbook and the step's parameters.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The finding being remediated.
    pub finding: &'a Finding,
    /// Playbook name.
    pub playbook: &'a str,
    /// 0-based index of the step in the playbook.
    pub step: usize,
    /// The step's `with:` parameters (validated at load).
    pub params: &'a Value,
    /// The execution the step belongs to (what `firebreak rollback` takes), when it has one
    /// (an action's own tests call it without).
    pub execution: Option<&'a str>,
}

impl StepInput<'_> {
    /// A key that is the same for every retry of this step for this finding, for idempotency.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.finding.fingerprint.0.as_bytes());
        h.update([0]);
        h.update(self.finding.id.to_string().as_bytes());
        h.update([0]);
        h.update(self.playbook.as_bytes());
        h.update([0]);
        h.update(self.step.to_le_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// One kind of remediation.
pub trait Action: Send + Sync {
    /// Stable kind, as playbooks name it (`notify.webhook`).
    fn kind(&self) -> &'static str;
    /// One line for `actions list`.
    fn summary(&self) -> &'static str;
    /// Whether `rollback` can undo `apply`.
    fn reversible(&self) -> bool;
    /// Whether `apply` takes the lock on the plan's target, so that no other action changes the
    /// same target at the same time. True for everything that changes a resource; an action
    /// that only sends a message may opt out.
    fn locks_target(&self) -> bool {
        true
    }
    /// The permissions `apply` needs (least privilege files are generated from these).
    fn permissions(&self) -> &'static [Permission];
    /// An example `with:` block in YAML (docs and the registry test use it).
    fn example(&self) -> &'static str;
    /// The JSON Schema of the `with:` parameters, from the type `validate` reads them into
    /// (the action reference, `docs/actions.md`, is generated from it).
    fn params_schema(&self) -> schemars::Schema;
    /// Checks `with:` parameters at load time; every problem is returned.
    fn validate(&self, params: &Value) -> Vec<ParamProblem>;
    /// Works out what `apply` would do. Reads only; never writes.
    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>>;
    /// Carries out `plan`. Idempotent: applying an already-applied plan changes nothing.
    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>>;
    /// Undoes `outcome`, when reversible.
    fn rollback<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>>;
}

/// Deserialises typed parameters from a `with:` value, turning serde errors into problems with
/// the field path. Used by actions' `validate` and at the start of `plan`.
///
/// # Errors
/// Every problem found (serde stops at the first).
pub fn typed_params<T: serde::de::DeserializeOwned>(
    params: &Value,
) -> Result<T, Vec<ParamProblem>> {
    let params = if params.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        params.clone()
    };
    serde_path_to_error::deserialize::<_, T>(params).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![ParamProblem {
            path,
            message: e.into_inner().to_string(),
            hint: None,
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn registry_kinds_are_unique_and_namespaced() {
        let mut kinds: Vec<&str> = ACTIONS.iter().map(|a| a.kind()).collect();
        assert!(kinds.iter().all(|k| k.contains('.')), "{kinds:?}");
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), ACTIONS.len());
    }
}
