//! The engine: for each finding, each matching playbook, each step: plan, then (unless dry-run)
//! apply, with retries for retryable errors and one re-plan on drift.
//!
//! This is the in-process engine behind `firebreak run` and `firebreak playbooks test`. The
//! durable, leased worker of `firebreak serve` drives the same [`execute_step`] so both paths
//! plan and apply identically.

pub mod recorded;
pub mod reload;
pub mod rollback;
pub mod worker;

use std::time::Duration;

use serde::Serialize;

use crate::action::{ActionCtx, ActionError, Outcome, Plan, StepInput};
use crate::finding::Finding;
use crate::playbook::{ApprovalSpec, Decision, OnFailure, PlaybookSet, Step};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Global kill switch: evaluate and report, but neither plan nor apply.
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
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Planned only (dry-run).
    Planned,
    /// Applied (or already in the desired state).
    Applied,
    /// Planning or applying failed.
    Failed,
    /// Not run (an earlier step failed, or the kill switch is on).
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
    /// Why (exclusion, `when` error).
    pub reason: String,
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

/// Runs every matching playbook for every finding, one finding at a time, steps in order.
/// `progress` is called after each finding.
pub async fn run(
    set: &PlaybookSet,
    ctx: &ActionCtx,
    findings: &[Finding],
    opts: &RunOptions,
    progress: &(dyn Fn() + Sync),
) -> RunReport {
    let mut report = RunReport::default();
    for finding in findings {
        let _span = tracing::info_span!("finding", id = %finding.id, source = %finding.source, rule = %finding.rule)
            .entered();
        let evaluations = set.evaluate(finding);
        drop(_span);
        for ev in evaluations {
            match ev.decision {
                Decision::Act => {
                    // Without a store there is nowhere to wait for an approval: a playbook that
                    // asks for one only plans here.
                    let needs_approval = !matches!(ev.playbook.approval, ApprovalSpec::None);
                    let held;
                    let opts = if needs_approval && !opts.dry_run && !opts.kill_switch {
                        held = RunOptions {
                            dry_run: true,
                            ..opts.clone()
                        };
                        tracing::warn!(playbook = %ev.playbook.name, "approval required: planned only (run with a store to hold it for `firebreak approvals approve`)");
                        &held
                    } else {
                        opts
                    };
                    let steps =
                        run_playbook(ctx, finding, &ev.playbook.name, &ev.playbook.steps, opts)
                            .await;
                    report.executions.push(Execution {
                        finding_id: finding.id.to_string(),
                        execution_id: None,
                        playbook: ev.playbook.name.clone(),
                        steps,
                        approval: ev.playbook.approval.describe(),
                    });
                }
                Decision::Excluded(reason) | Decision::WhenError(reason) => {
                    tracing::info!(finding = %finding.id, playbook = %ev.playbook.name, %reason, "playbook matched but will not act");
                    report.not_acted.push(NotActed {
                        finding_id: finding.id.to_string(),
                        playbook: ev.playbook.name.clone(),
                        reason,
                    });
                }
            }
        }
        progress();
    }
    report
}

async fn run_playbook(
    ctx: &ActionCtx,
    finding: &Finding,
    playbook: &str,
    steps: &[Step],
    opts: &RunOptions,
) -> Vec<StepReport> {
    let mut out = Vec::with_capacity(steps.len());
    let mut stopped: Option<String> = if opts.kill_switch {
        Some("kill switch is on: nothing is planned or applied".to_owned())
    } else {
        None
    };
    for (i, step) in steps.iter().enumerate() {
        if let Some(why) = &stopped {
            out.push(StepReport {
                action: step.action.kind().to_owned(),
                status: StepStatus::Skipped,
                plan: None,
                outcome: None,
                error: Some(why.clone()),
                attempts: 0,
                due_at: None,
            });
            continue;
        }
        let input = StepInput {
            finding,
            playbook,
            step: i,
            params: &step.params,
        };
        let report = execute_step(ctx, step, input, opts).await;
        if report.status == StepStatus::Failed && step.on_failure == OnFailure::Stop {
            stopped = Some(format!("step {} ({}) failed", i + 1, step.action.kind()));
        }
        out.push(report);
    }
    out
}

/// Plans one step and, unless dry-run, applies it. Retryable errors are retried with exponential
/// backoff and jitter; a drift error re-plans once.
pub async fn execute_step(
    ctx: &ActionCtx,
    step: &Step,
    input: StepInput<'_>,
    opts: &RunOptions,
) -> StepReport {
    let kind = step.action.kind();
    let mut attempts = 0;
    let mut replanned = false;
    let fail = |plan: Option<Plan>, e: &ActionError, attempts: u32| StepReport {
        action: kind.to_owned(),
        status: StepStatus::Failed,
        plan,
        outcome: None,
        error: Some(crate::redact::scrub(&e.to_string()).into_owned()),
        attempts,
        due_at: None,
    };
    loop {
        attempts += 1;
        let plan = match step.action.plan(ctx, input).await {
            Ok(p) => p,
            Err(e) if e.is_retryable() && attempts < opts.max_attempts.max(1) => {
                backoff(opts, attempts).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(action = kind, error = %e, "plan failed");
                return fail(None, &e, attempts);
            }
        };
        if opts.dry_run {
            return StepReport {
                action: kind.to_owned(),
                status: StepStatus::Planned,
                plan: Some(plan),
                outcome: None,
                error: None,
                attempts,
                due_at: None,
            };
        }
        match step.action.apply(ctx, input, &plan).await {
            Ok(outcome) => {
                tracing::info!(action = kind, target = %plan.target, result = %outcome.result, "step applied");
                return StepReport {
                    action: kind.to_owned(),
                    status: StepStatus::Applied,
                    plan: Some(plan),
                    outcome: Some(outcome),
                    error: None,
                    attempts,
                    due_at: None,
                };
            }
            Err(ActionError::Drift(why)) if !replanned => {
                tracing::info!(action = kind, why = %crate::redact::scrub(&why), "target drifted since planning; planning again");
                replanned = true;
            }
            Err(e) if e.is_retryable() && attempts < opts.max_attempts.max(1) => {
                tracing::info!(action = kind, attempt = attempts, error = %e, "retrying");
                backoff(opts, attempts).await;
            }
            Err(e) => {
                tracing::warn!(action = kind, error = %e, "apply failed");
                return fail(Some(plan), &e, attempts);
            }
        }
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
