//! The engine: for each finding, each matching playbook, each step: plan, then (unless dry-run)
//! apply, with retries for retryable errors and one re-plan on drift.
//!
//! There is one engine loop, [`worker::Worker`], over the [`crate::store::Store`] trait:
//! `firebreak serve` runs it continuously, `firebreak run` drives it round by round
//! ([`recorded::run`]) on the configured store or, with `--no-store`, on an in-memory store, so
//! retries, re-planning on drift, guards, locks, the kill switch and pinned playbook revisions
//! behave the same everywhere. This module holds the report types both render.

pub mod approval;
pub mod recorded;
pub mod reload;
pub mod rollback;
pub mod worker;

pub use recorded::run_in_memory;

use std::time::Duration;

use serde::Serialize;

use crate::action::{Outcome, Plan};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// The configured kill switch (`engine.kill_switch`): match and report, but park every
    /// execution before its next step (as the store-wide switch of `firebreak pause` does).
    pub kill_switch: bool,
    /// Attempts per step for retryable errors (at least 1).
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter.
    pub retry_base: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            kill_switch: false,
            max_attempts: 3,
            retry_base: Duration::from_millis(200),
        }
    }
}

/// The state a step ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Planned only (dry-run).
    Planned,
    /// Planned, but nothing can apply it: no cluster or no AWS credentials were found.
    PlannedOnly,
    /// Not run yet: the kill switch parked the execution; it continues after
    /// `firebreak resume` (with a store the service carries it out).
    Paused,
    /// Applied (or already in the desired state).
    Applied,
    /// Planning or applying failed.
    Failed,
    /// Not run (an earlier step failed).
    Skipped,
    /// Waiting for its timer (`after:`); the service carries it out when due.
    Scheduled,
}

/// What happened to one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Action kind.
    pub action: String,
    /// Final status.
    pub status: StepStatus,
    /// The plan, when one was made.
    pub plan: Option<Plan>,
    /// The outcome, when applied.
    pub outcome: Option<Outcome>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// How many apply/plan attempts were made.
    pub attempts: u32,
    /// For a scheduled step: when it is due (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
}

/// One playbook run against one finding.
#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    /// The finding.
    pub finding_id: String,
    /// The execution's id in the store (what `firebreak rollback` takes); `None` for a run
    /// without a store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The playbook.
    pub playbook: String,
    /// Steps in order.
    pub steps: Vec<StepReport>,
    /// What must happen before the playbook applies anything, when it asks first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// A playbook that matched but did not act, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NotActed {
    /// The finding.
    pub finding_id: String,
    /// The playbook.
    pub playbook: String,
    /// Why (exclusion, `when` error, held by a guard or for approval).
    pub reason: String,
    /// Who must approve before the playbook acts, when it asks first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// Everything a run did.
#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    /// Executions, in finding then playbook order.
    pub executions: Vec<Execution>,
    /// Matches that did not act.
    pub not_acted: Vec<NotActed>,
    /// Findings counted on an earlier one within the dedup window (only with a store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<Duplicate>,
}

/// A finding that was a duplicate of one already in the store, and was not acted on again.
#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    /// The finding as parsed now.
    pub finding_id: String,
    /// The stored finding it was counted on.
    pub original_id: String,
}

impl RunReport {
    /// Whether any step failed.
    #[must_use]
    pub fn any_failed(&self) -> bool {
        self.executions
            .iter()
            .flat_map(|e| &e.steps)
            .any(|s| s.status == StepStatus::Failed)
    }
}

pub(crate) async fn backoff(opts: &RunOptions, attempt: u32) {
    let base = opts
        .retry_base
        .saturating_mul(1 << attempt.min(10).saturating_sub(1));
    // Jitter: up to +50%, from the clock's sub-second nanos (no RNG dependency needed).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = base.mul_f64(f64::from(nanos % 500) / 1000.0);
    tokio::time::sleep(base + jitter).await;
}
