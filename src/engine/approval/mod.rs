//! Approval bound to the exact plan.
//!
//! An execution of a playbook with `approval:` is planned in full before anything is applied:
//! every step, read-only. The hash over those plans is stored with an approval request
//! ([`crate::store::Store::request_approval`]) and the execution is held. A vote names the hash
//! it approves ([`crate::store::Store::vote`]); `min` approvals of the current hash from
//! distinct allowed reviewers release the execution. Before it applies anything, the engine
//! plans again: if the hash differs (live state drifted since the approval), nothing is applied,
//! the request is updated with the new plan (a new revision) and asked again.
//!
//! Where a request is shown and answered is an [`ApprovalChannel`] (a GitHub pull request); the
//! CLI (`firebreak approvals approve ID --plan-hash H`) votes on the same request.

pub mod github;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::action::{ActionCtx, BoxFuture, StepInput, canonical_json};
use crate::finding::Finding;
use crate::playbook::Playbook;
use crate::store::ApprovalRow;

/// The hash of an execution's plan: SHA-256 over the canonical JSON of every step's plan.
#[must_use]
pub fn plan_hash(plans: &Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_json(plans).as_bytes()))
    )
}

/// Plans every step of `pb` for `finding`, read-only: `{step, action, plan}` per step,
/// `{step, action, skipped}` for a step whose `when` does not hold for the finding, or
/// `{step, action, error}` for a step that cannot be planned now (the error is part of what is
/// approved: it must still be the same when the plan is checked again).
pub async fn plan_all(ctx: &ActionCtx, finding: &Finding, pb: &Playbook) -> Value {
    let mut out = Vec::with_capacity(pb.steps.len());
    for (i, step) in pb.steps.iter().enumerate() {
        let input = StepInput {
            finding,
            playbook: &pb.name,
            step: i,
            params: &step.params,
            execution: None,
        };
        let mut entry = json!({ "step": i, "action": step.action.kind() });
        if let Some(after) = step.after {
            entry["after_seconds"] = json!(after.as_secs());
        }
        if let Some(why) = step.skipped_for(finding) {
            entry["skipped"] = Value::String(why);
        } else {
            match step.action.plan(ctx, input).await {
                Ok(plan) => entry["plan"] = serde_json::to_value(&plan).unwrap_or(Value::Null),
                Err(e) => {
                    entry["error"] =
                        Value::String(crate::redact::scrub(&e.to_string()).into_owned());
                }
            }
        }
        out.push(entry);
    }
    Value::Array(out)
}

/// The targets an execution's plan changes, in step order, each once.
#[must_use]
pub fn targets(plans: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in plans.as_array().into_iter().flatten() {
        let plan = &entry["plan"];
        let first = plan["target"].as_str().into_iter();
        let others = plan["other_targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        for t in first.chain(others) {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_owned());
            }
        }
    }
    out
}

/// Where approval requests are shown and answered (a GitHub pull request per request).
/// Failures are reported as text; the engine logs them and the request is published again
/// later (nothing is applied meanwhile).
pub trait ApprovalChannel: Send + Sync {
    /// Opens, or updates, what shows `row`'s current revision; returns its number and the
    /// identifier votes must name to count for this revision (a pull request's head commit).
    fn publish<'a>(
        &'a self,
        row: &'a ApprovalRow,
        finding: &'a Finding,
        note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(i64, String), String>>;

    /// Says what happened to `row` (applied, failed, drifted, expired) where it was asked.
    fn comment<'a>(
        &'a self,
        row: &'a ApprovalRow,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Closes what shows `row` (expired), saying why.
    fn close<'a>(
        &'a self,
        row: &'a ApprovalRow,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_hash_ignores_key_order_and_changes_with_any_step() {
        let a = json!([{"step": 0, "action": "x", "plan": {"hash": "sha256:1", "target": "t"}}]);
        let b = json!([{"plan": {"target": "t", "hash": "sha256:1"}, "action": "x", "step": 0}]);
        assert_eq!(plan_hash(&a), plan_hash(&b));
        let c = json!([{"step": 0, "action": "x", "plan": {"hash": "sha256:2", "target": "t"}}]);
        assert_ne!(plan_hash(&a), plan_hash(&c));
    }

    #[test]
    fn targets_lists_every_changed_resource_once_in_step_order() {
        let plans = json!([
            {"plan": {"target": "a", "other_targets": ["b", "c"]}},
            {"error": "cannot plan"},
            {"plan": {"target": "b"}},
        ]);
        assert_eq!(targets(&plans), ["a", "b", "c"]);
    }
}
