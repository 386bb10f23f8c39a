//! Rolling back an execution: undo its applied, reversible steps, last first.
//!
//! What a step did is read from the store (its recorded [`Outcome`] and the outcome's `undo`),
//! never re-derived from the playbook, so a playbook edited or removed since still rolls back
//! what was done. Each undo holds the locks of every resource the step changed (as applying
//! does), so a rollback never races an engine acting on the same target; a lock held by someone
//! else is reported, not waited for. Every undo attempt and the rollback as a whole are audited. Steps that were not
//! applied, and applied steps whose action cannot be undone (evidence kept, a message sent),
//! are left as they are and reported so. Nothing here prints.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::action::{ActionCtx, Outcome, action};
use crate::store::{AuditEvent, AuditQuery, ExecutionRow, Store, StoreError};

/// The audit kind of one undone (or failed) step.
pub const STEP_KIND: &str = "rollback.step";
/// The audit kind of a finished rollback.
pub const DONE_KIND: &str = "rollback.done";

/// How a rollback behaves.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// Who asked (recorded in the audit trail).
    pub by: String,
    /// Only say what would be undone; change nothing, audit nothing.
    pub dry_run: bool,
    /// How long the target lock is held around one undo.
    pub lease: Duration,
}

/// What happened (or, in a dry run, would happen) to one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStatus {
    /// Dry run: the step would be undone.
    WouldUndo,
    /// Undone (or already undone: rollbacks are idempotent).
    Undone,
    /// The undo failed.
    Failed,
    /// Another owner holds the target's lock; nothing was done.
    Locked,
    /// Applied, but the action cannot be undone; left as is.
    NotReversible,
    /// Never applied (planned, failed, skipped, scheduled): nothing to undo.
    NotApplied,
}

impl RollbackStatus {
    /// Whether the step counts as a failed rollback (exit 1).
    #[must_use]
    pub fn is_failure(self) -> bool {
        matches!(self, RollbackStatus::Failed | RollbackStatus::Locked)
    }
}

/// One step of a rollback report.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackStep {
    /// The step's index in the execution (0-based).
    pub idx: u32,
    /// Action kind.
    pub action: String,
    /// The target key, when the step recorded an outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What happened.
    pub status: RollbackStatus,
    /// The step's recorded status, for a step that was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_status: Option<String>,
    /// What the outcome recorded for undoing it (secrets scrubbed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<Value>,
    /// Why the undo failed (scrubbed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything a rollback did, steps in the order they were handled (last step first).
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// The execution.
    pub execution_id: String,
    /// Its finding.
    pub finding_id: String,
    /// Its playbook.
    pub playbook: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Who asked.
    pub by: String,
    /// Each step, last first.
    pub steps: Vec<RollbackStep>,
}

impl RollbackReport {
    /// How many steps ended in `status`.
    #[must_use]
    pub fn count(&self, status: RollbackStatus) -> usize {
        self.steps.iter().filter(|s| s.status == status).count()
    }

    /// Whether any undo failed or found its target locked.
    #[must_use]
    pub fn any_failed(&self) -> bool {
        self.steps.iter().any(|s| s.status.is_failure())
    }
}

/// Whether the audit trail already holds a finished rollback of `execution_id`.
///
/// # Errors
/// Store failures.
pub async fn already_rolled_back<S: Store>(
    store: &S,
    finding_id: &str,
    execution_id: &str,
) -> Result<bool, StoreError> {
    let records = store
        .audit_list(AuditQuery {
            finding_id: Some(finding_id.to_owned()),
            ..AuditQuery::default()
        })
        .await?;
    Ok(records
        .iter()
        .any(|r| r.kind == DONE_KIND && r.execution_id.as_deref() == Some(execution_id)))
}

/// Rolls back `execution` (of finding `finding_id`): undoes every applied step whose action
/// is reversible, last step first, each under its target's lock, audited one record per
/// undo attempt and one `rollback.done`. With `opts.dry_run` nothing is changed or audited.
///
/// # Errors
/// Store failures (what was audited before stays audited).
pub async fn rollback<S: Store>(
    store: &S,
    ctx: &ActionCtx,
    finding_id: &str,
    execution: &ExecutionRow,
    opts: &RollbackOptions,
) -> Result<RollbackReport, StoreError> {
    let owner = format!("rollback-{}", ulid::Ulid::new());
    let mut steps = Vec::with_capacity(execution.steps.len());
    let mut ordered: Vec<_> = execution.steps.iter().collect();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.idx));
    for row in ordered {
        let mut step = RollbackStep {
            idx: row.idx,
            action: row.action.clone(),
            target: None,
            status: RollbackStatus::NotApplied,
            step_status: None,
            undo: None,
            error: None,
        };
        if row.status != "applied" {
            step.step_status = Some(row.status.clone());
            steps.push(step);
            continue;
        }
        let outcome = row
            .outcome
            .clone()
            .map(serde_json::from_value::<Outcome>)
            .transpose();
        let outcome = match outcome {
            Ok(Some(o)) => o,
            Ok(None) | Err(_) => {
                step.status = RollbackStatus::Failed;
                step.error = Some("the store holds no readable outcome for this step".into());
                steps.push(step);
                continue;
            }
        };
        step.target = Some(outcome.target.clone());
        step.undo = outcome.undo.as_ref().map(undo_summary);
        let Some(act) = action(&row.action) else {
            step.status = RollbackStatus::Failed;
            step.error = Some(format!(
                "unknown action `{}`: this Firebreak cannot undo it",
                row.action
            ));
            steps.push(step);
            continue;
        };
        if !act.reversible() {
            step.status = RollbackStatus::NotReversible;
            steps.push(step);
            continue;
        }
        if opts.dry_run {
            step.status = RollbackStatus::WouldUndo;
            steps.push(step);
            continue;
        }
        let locks = act.locks_target();
        // Every resource the step's plan changed is locked while it is undone, under a holder of
        // its own: an engine advancing the same execution never shares a rollback's lock.
        let mut keys = vec![outcome.target.clone()];
        if let Some(others) = row
            .plan
            .as_ref()
            .and_then(|p| p.get("other_targets"))
            .and_then(Value::as_array)
        {
            keys.extend(others.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        let holder = format!("rollback:{}", execution.id);
        let mut held: Vec<&str> = Vec::new();
        let mut busy = false;
        if locks {
            for key in &keys {
                if store.lock_target(key, &owner, &holder, opts.lease).await? {
                    held.push(key);
                } else {
                    busy = true;
                    break;
                }
            }
        }
        let (status, error) = if busy {
            for key in held.drain(..) {
                store.unlock_target(key, &owner).await?;
            }
            (
                RollbackStatus::Locked,
                Some(
                    "another engine holds the target's lock; nothing was done (try again shortly)"
                        .to_owned(),
                ),
            )
        } else {
            let undone = act.rollback(ctx, &outcome).await;
            for key in held.drain(..) {
                store.unlock_target(key, &owner).await?;
            }
            match undone {
                Ok(()) => (RollbackStatus::Undone, None),
                Err(e) => (
                    RollbackStatus::Failed,
                    Some(crate::redact::scrub(&e.to_string()).into_owned()),
                ),
            }
        };
        step.status = status;
        step.error = error;
        tracing::info!(action = %step.action, target = %outcome.target, status = ?step.status, "rollback step");
        store
            .audit(AuditEvent {
                kind: STEP_KIND.into(),
                finding_id: Some(finding_id.to_owned()),
                execution_id: Some(execution.id.clone()),
                detail: serde_json::json!({
                    "by": opts.by,
                    "idx": step.idx,
                    "action": step.action,
                    "target": outcome.target,
                    "result": if step.status == RollbackStatus::Undone { "ok" } else { "failed" },
                    "error": step.error,
                }),
            })
            .await?;
        steps.push(step);
    }
    let report = RollbackReport {
        execution_id: execution.id.clone(),
        finding_id: finding_id.to_owned(),
        playbook: execution.playbook.clone(),
        dry_run: opts.dry_run,
        by: opts.by.clone(),
        steps,
    };
    if !opts.dry_run {
        store
            .audit(AuditEvent {
                kind: DONE_KIND.into(),
                finding_id: Some(finding_id.to_owned()),
                execution_id: Some(execution.id.clone()),
                detail: serde_json::json!({
                    "by": opts.by,
                    "playbook": report.playbook,
                    "undone": report.count(RollbackStatus::Undone),
                    "failed": report.count(RollbackStatus::Failed)
                        + report.count(RollbackStatus::Locked),
                    "not_reversible": report.count(RollbackStatus::NotReversible),
                    "not_applied": report.count(RollbackStatus::NotApplied),
                }),
            })
            .await?;
    }
    Ok(report)
}

/// The outcome's `undo` record, secrets scrubbed.
fn undo_summary(undo: &Value) -> Value {
    let mut v = undo.clone();
    crate::redact::scrub_json(&mut v);
    v
}
