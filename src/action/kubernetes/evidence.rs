//! `kubernetes.capture-evidence`: a redacted evidence bundle of a pod, before anyone touches it.
//!
//! The bundle holds the pod's metadata, spec and status (container statuses included), the
//! recent logs of each container (`tail_lines` and `limit_bytes` per container), the Events
//! about the pod (field selector `involvedObject.name`/`involvedObject.namespace`) and what the
//! node it runs on reports about itself. It writes nothing to the cluster, so it is not
//! reversible and needs no rollback.
//!
//! Where it goes: actions have no store access, so the bundle travels in the [`Outcome`]
//! (`detail.evidence.bundle`, next to its `sha256` over the bundle's canonical JSON). When the
//! engine records the step, the store moves the bundle into its `evidence` table under that
//! hash ([`take_evidence_bundle`]); the step and its audit line keep the reference, so the
//! audit trail names exactly the evidence that was kept. Without a store (`firebreak run
//! --no-store`) the bundle is in the printed outcome.
//!
//! Redaction, before hashing: every literal environment variable value in the pod spec is
//! masked (names and `valueFrom` references are kept), the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation (a copy of the spec with
//! those values) is masked, and every string in the bundle (arguments, logs, Event messages)
//! goes through [`crate::redact::scrub`]. Secrets are never read.

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    PodRef, checked_params, connected, connection, kube_error, not_connected_plan, object_key,
    validate_with,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, canonical_json,
};
use crate::redact::MASK;

/// `kubernetes.capture-evidence`.
pub struct KubernetesCaptureEvidence;

/// Default lines of log kept per container.
const DEFAULT_TAIL_LINES: i64 = 500;
/// Default bytes of log kept per container.
const DEFAULT_LIMIT_BYTES: i64 = 256 * 1024;
/// Upper bounds, so one bundle stays a reasonable audit record.
const MAX_TAIL_LINES: i64 = 100_000;
const MAX_LIMIT_BYTES: i64 = 10 * 1024 * 1024;
const MAX_EVENTS: usize = 1_000;

/// `with:` parameters (shared with `kubernetes.delete-pod`, which captures first).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvidenceParams {
    /// Lines of log kept per container (the newest).
    #[serde(default = "default_tail_lines")]
    pub tail_lines: i64,
    /// Bytes of log kept per container, after `tail_lines`.
    #[serde(default = "default_limit_bytes")]
    pub limit_bytes: i64,
    /// Also the logs of each container's previous instance (after a restart).
    #[serde(default)]
    pub previous_logs: bool,
    /// Events about the pod kept, newest first.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
}

impl Default for EvidenceParams {
    fn default() -> Self {
        Self {
            tail_lines: DEFAULT_TAIL_LINES,
            limit_bytes: DEFAULT_LIMIT_BYTES,
            previous_logs: false,
            max_events: default_max_events(),
        }
    }
}

fn default_tail_lines() -> i64 {
    DEFAULT_TAIL_LINES
}
fn default_limit_bytes() -> i64 {
    DEFAULT_LIMIT_BYTES
}
fn default_max_events() -> usize {
    100
}

impl EvidenceParams {
    /// Problems, with paths relative to `prefix` (`""` or `evidence.`).
    pub(crate) fn check(&self, prefix: &str) -> Vec<ParamProblem> {
        let mut problems = Vec::new();
        if !(1..=MAX_TAIL_LINES).contains(&self.tail_lines) {
            problems.push(ParamProblem {
                path: format!("{prefix}tail_lines"),
                message: format!("{} is out of range", self.tail_lines),
                hint: Some(format!(
                    "between 1 and {MAX_TAIL_LINES} lines per container"
                )),
            });
        }
        if !(1..=MAX_LIMIT_BYTES).contains(&self.limit_bytes) {
            problems.push(ParamProblem {
                path: format!("{prefix}limit_bytes"),
                message: format!("{} is out of range", self.limit_bytes),
                hint: Some(format!(
                    "between 1 and {MAX_LIMIT_BYTES} bytes per container"
                )),
            });
        }
        if self.max_events > MAX_EVENTS {
            problems.push(ParamProblem {
                path: format!("{prefix}max_events"),
                message: format!("{} is out of range", self.max_events),
                hint: Some(format!("at most {MAX_EVENTS}")),
            });
        }
        problems
    }

    /// What the plan says will be kept.
    pub(crate) fn describe(&self) -> String {
        format!(
            "pod spec and status, the last {} line(s) (at most {} bytes) of each container's log{}, \
             up to {} Events about the pod and its node's info",
            self.tail_lines,
            self.limit_bytes,
            if self.previous_logs {
                " and of its previous instance"
            } else {
                ""
            },
            self.max_events
        )
    }
}

/// A captured, redacted bundle and its content hash.
#[derive(Debug, Clone)]
pub(crate) struct Bundle {
    pub sha256: String,
    pub body: Value,
}

impl Bundle {
    /// The `detail.evidence` value of an outcome: the hash first, then the bundle.
    pub(crate) fn detail(&self) -> Value {
        json!({
            "sha256": self.sha256,
            "bytes": canonical_json(&self.body).len(),
            "bundle": self.body,
        })
    }
}

/// Removes the evidence bundle from an outcome (as JSON) and returns it. The store keeps
/// bundles apart from steps and audit lines, which keep `detail.evidence.sha256` (and `bytes`).
pub fn take_evidence_bundle(outcome: &mut Value) -> Option<Value> {
    outcome
        .pointer_mut("/detail/evidence")?
        .as_object_mut()?
        .remove("bundle")
}

/// Masks literal env values in every container list of a pod spec (JSON).
fn mask_env(spec: &mut Value) {
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) else {
                continue;
            };
            for var in env {
                if let Some(v) = var.get_mut("value")
                    && v.is_string()
                {
                    *v = Value::String(MASK.to_owned());
                }
            }
        }
    }
}

/// The pod as it goes into the bundle: redacted, without managedFields.
fn pod_evidence(pod: &Pod) -> Value {
    let mut v = serde_json::to_value(pod).unwrap_or_default();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(a) = meta
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
            .and_then(|a| a.get_mut("kubectl.kubernetes.io/last-applied-configuration"))
        {
            *a = Value::String(MASK.to_owned());
        }
    }
    if let Some(spec) = v.get_mut("spec") {
        mask_env(spec);
    }
    v
}

/// Container names of a pod, in spec order (init containers first).
fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .map(|c| c.name.clone())
        })
        .collect()
}

/// The pod, or `None` when it does not exist.
pub(crate) async fn read_pod(
    client: &kube::Client,
    pod: &PodRef,
) -> Result<Option<Pod>, ActionError> {
    Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .get_opt(&pod.name)
        .await
        .map_err(|e| kube_error(&format!("reading pod {}", pod.shown()), e))
}

async fn logs(
    client: &kube::Client,
    pod: &PodRef,
    container: &str,
    p: &EvidenceParams,
    previous: bool,
) -> Value {
    let lp = LogParams {
        container: Some(container.to_owned()),
        tail_lines: Some(p.tail_lines),
        limit_bytes: Some(p.limit_bytes),
        timestamps: true,
        previous,
        ..LogParams::default()
    };
    match Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .logs(&pod.name, &lp)
        .await
    {
        Ok(text) => {
            let truncated = i64::try_from(text.len()).unwrap_or(i64::MAX) >= p.limit_bytes;
            json!({"text": text, "bytes": text.len(), "truncated": truncated})
        }
        // A container that never started has no log: say so in the bundle, keep capturing.
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// Captures the bundle of `pod` (already read as `live`). Reads only.
pub(crate) async fn capture(
    client: &kube::Client,
    pod: &PodRef,
    live: &Pod,
    p: &EvidenceParams,
) -> Result<Bundle, ActionError> {
    let mut container_logs = serde_json::Map::new();
    for name in container_names(live) {
        let mut entry = json!({"current": logs(client, pod, &name, p, false).await});
        if p.previous_logs {
            entry["previous"] = logs(client, pod, &name, p, true).await;
        }
        container_logs.insert(name, entry);
    }
    let selector = format!(
        "involvedObject.name={},involvedObject.namespace={}",
        pod.name, pod.namespace
    );
    let mut events = Api::<Event>::namespaced(client.clone(), &pod.namespace)
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|e| kube_error(&format!("listing Events of pod {}", pod.shown()), e))?
        .items;
    events.sort_by(|a, b| {
        let at = |e: &Event| {
            serde_json::to_value(e.last_timestamp.as_ref().or(e.first_timestamp.as_ref()))
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        at(b).cmp(&at(a))
    });
    events.truncate(p.max_events);
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "type": e.type_, "reason": e.reason, "message": e.message, "count": e.count,
                "firstTimestamp": e.first_timestamp, "lastTimestamp": e.last_timestamp,
                "source": e.source, "reportingComponent": e.reporting_component,
                "involvedObject": {"kind": e.involved_object.kind, "uid": e.involved_object.uid},
            })
        })
        .collect();
    let node_name = live.spec.as_ref().and_then(|s| s.node_name.clone());
    let node = match &node_name {
        None => Value::Null,
        Some(name) => match Api::<Node>::all(client.clone()).get_opt(name).await {
            Ok(Some(n)) => json!({
                "name": name,
                "uid": n.metadata.uid,
                "labels": n.metadata.labels,
                "unschedulable": n.spec.as_ref().and_then(|s| s.unschedulable),
                "taints": n.spec.as_ref().and_then(|s| s.taints.clone()),
                "nodeInfo": n.status.as_ref().and_then(|s| s.node_info.clone()),
                "addresses": n.status.as_ref().and_then(|s| s.addresses.clone()),
                "conditions": n.status.as_ref().and_then(|s| s.conditions.as_ref()).map(|cs| {
                    cs.iter().map(|c| json!({"type": c.type_, "status": c.status})).collect::<Vec<_>>()
                }),
            }),
            Ok(None) => json!({"name": name, "error": "the node does not exist"}),
            Err(e) => json!({"name": name, "error": e.to_string()}),
        },
    };
    let mut body = json!({
        "kind": "firebreak.dev/EvidenceBundle",
        "version": 1,
        "captured_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "pod": pod_evidence(live),
        "logs": container_logs,
        "log_limits": {"tail_lines": p.tail_lines, "limit_bytes": p.limit_bytes},
        "events": events,
        "node": node,
    });
    crate::redact::scrub_json(&mut body);
    let sha256 = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_json(&body).as_bytes()))
    );
    Ok(Bundle { sha256, body })
}

impl Action for KubernetesCaptureEvidence {
    fn kind(&self) -> &'static str {
        "kubernetes.capture-evidence"
    }

    fn summary(&self) -> &'static str {
        "keep a redacted evidence bundle of a pod (spec, container statuses, logs, Events, node)"
    }

    fn reversible(&self) -> bool {
        false
    }

    fn locks_target(&self) -> bool {
        // Reads only: another action may change the pod meanwhile.
        false
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("kubernetes", "core/pods:get"),
            Permission::new("kubernetes", "core/pods/log:get"),
            Permission::new("kubernetes", "core/events:list"),
            Permission::new("kubernetes", "core/nodes:get"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "tail_lines: 500          # newest log lines kept per container\nlimit_bytes: 262144      # and at most this many bytes\nprevious_logs: false     # also the previous (restarted) instance's log\nmax_events: 100\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(EvidenceParams)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        validate_with::<EvidenceParams>(params, |p| p.check(""))
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let params = checked_params::<EvidenceParams>(input.params, |p| p.check(""))?;
            let pod = PodRef::of(input.finding)?;
            let target = object_key(pod.cluster.as_deref(), &pod.namespace, "Pod", &pod.name);
            let what = format!(
                "capture evidence of pod {}: {}",
                pod.shown(),
                params.describe()
            );
            let client = match connection(ctx, pod.cluster.as_deref())? {
                Ok(c) => c,
                Err(why) => return Ok(not_connected_plan(self, target, &what, &why)),
            };
            let live = read_pod(&client, &pod).await?.ok_or_else(|| {
                ActionError::NotApplicable(format!("pod {} does not exist", pod.shown()))
            })?;
            let containers = container_names(&live);
            let node = live.spec.as_ref().and_then(|s| s.node_name.clone());
            Ok(PlanDraft {
                other_targets: Vec::new(),
                target,
                summary: format!("{what}; nothing in the cluster changes"),
                observed: json!({
                    "pod": {"namespace": pod.namespace, "name": pod.name, "uid": live.metadata.uid},
                    "containers": containers,
                    "node": node,
                }),
                before: Value::Null,
                after: json!({"evidence": {"containers": containers, "log_limits": {
                    "tail_lines": params.tail_lines, "limit_bytes": params.limit_bytes}}}),
                changes: vec![Change {
                    op: "create".into(),
                    path: format!(
                        "evidence bundle of v1/namespaces/{}/pods/{}",
                        pod.namespace, pod.name
                    ),
                    from: None,
                    to: Some(json!({"containers": containers, "node": node})),
                }],
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
            let params = checked_params::<EvidenceParams>(input.params, |p| p.check(""))?;
            let pod = PodRef::of(input.finding)?;
            let client = connected(ctx, pod.cluster.as_deref())?;
            let live = read_pod(&client, &pod).await?.ok_or_else(|| {
                ActionError::Permanent(format!(
                    "pod {} is gone: no evidence left to capture",
                    pod.shown()
                ))
            })?;
            if plan.observed["pod"]["uid"] != json!(live.metadata.uid) {
                return Err(ActionError::Drift(format!(
                    "pod {} was replaced since planning",
                    pod.shown()
                )));
            }
            let bundle = capture(&client, &pod, &live, &params).await?;
            tracing::info!(pod = %pod.shown(), sha256 = %bundle.sha256, "evidence captured");
            Ok(Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: "applied".to_owned(),
                detail: json!({"pod": pod.shown(), "evidence": bundle.detail()}),
                undo: None,
            })
        })
    }

    fn rollback<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        // Nothing in the cluster was changed; the evidence is kept.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_with_their_paths() {
        let p = KubernetesCaptureEvidence.validate(&json!({"tail_lines": 0, "limit_bytes": -1}));
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["tail_lines", "limit_bytes"]);
        let p = KubernetesCaptureEvidence.validate(&json!({"tail_line": 5}));
        assert!(p[0].message.contains("unknown field"), "{p:?}");
        assert!(KubernetesCaptureEvidence.validate(&Value::Null).is_empty());
    }

    #[test]
    fn literal_env_values_are_masked_and_references_kept() {
        let mut spec = json!({"containers": [{"name": "a", "env": [
            {"name": "DB_URL", "value": "anything"},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]}]});
        mask_env(&mut spec);
        assert_eq!(spec["containers"][0]["env"][0]["value"], MASK);
        assert_eq!(
            spec["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["name"],
            "s"
        );
    }
}
