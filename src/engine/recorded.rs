//! `firebreak run` with a store: the manual run goes through the same ledger, guards, locks
//! and audit trail as the service.
//!
//! The run records its findings under a scope of its own (so a running service never picks
//! them up, and a dry run's findings are never applied by anyone), drives a [`Worker`] limited
//! to that scope until nothing of it can advance now, then hands whatever still waits — a
//! step scheduled for later, an execution held for approval — to the service's shared queue,
//! and builds its report from what the store recorded.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::worker::{KILL_SWITCH_REASON, Round, Worker, WorkerOptions};
use super::{Duplicate, Execution, NotActed, RunReport, StepReport, StepStatus};
use crate::action::ActionCtx;
use crate::playbook::PlaybookSet;
use crate::store::{ExecState, ExecutionRow, IngestBatch, StepRow, Store, StoreError};

/// How often the run looks again while an execution waits for a lock another engine holds.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Records `batch` under a fresh scope and runs it to the point where nothing can advance now.
/// `progress` is called with the number of findings matched in each round.
///
/// # Errors
/// Store failures. What was committed before stays recorded and audited.
pub async fn run<S: Store>(
    store: Arc<S>,
    set: Arc<PlaybookSet>,
    ctx: ActionCtx,
    mut batch: IngestBatch,
    dedup_window: Duration,
    mut opts: WorkerOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<RunReport, StoreError> {
    let scope = format!("run:{}", ulid::Ulid::new());
    batch.scope = Some(scope.clone());
    batch.dry_run = opts.run.dry_run;
    let ids: Vec<String> = batch.findings.iter().map(|f| f.id.to_string()).collect();
    let receipts = store.record(batch, dedup_window).await?;
    opts.scope = Some(scope.clone());
    let playbooks = Arc::new(RwLock::new(Arc::clone(&set)));
    let bound = opts.lease.saturating_mul(2);
    let worker = Worker::new(Arc::clone(&store), playbooks, ctx, opts);

    let started = Instant::now();
    loop {
        let round = worker.round().await?;
        progress(round.findings);
        if round != Round::default() {
            continue;
        }
        // Nothing claimable: done, unless an execution waits briefly for a target lock.
        let waiting = store.waiting_in_scope(&scope).await?;
        if waiting == 0 || started.elapsed() > bound {
            break;
        }
        tokio::time::sleep(IDLE_POLL).await;
    }
    let handed_over = store.release_scope(&scope).await?;
    if handed_over > 0 {
        tracing::info!(
            executions = handed_over,
            "unfinished work (scheduled steps, held executions) handed over to the service"
        );
    }

    let mut report = RunReport::default();
    for (id, receipt) in ids.iter().zip(receipts) {
        if receipt.duplicate {
            report.duplicates.push(Duplicate {
                finding_id: id.clone(),
                original_id: receipt.id,
            });
            continue;
        }
        for row in store.executions_of(id).await? {
            add_execution(&mut report, &set, id, row);
        }
    }
    Ok(report)
}

fn add_execution(report: &mut RunReport, set: &PlaybookSet, finding_id: &str, row: ExecutionRow) {
    // The kill switch stops an execution that would have acted: report its steps as skipped,
    // as the in-memory run does, rather than as a match that did not act.
    let killed =
        row.state == ExecState::Skipped && row.reason.as_deref() == Some(KILL_SWITCH_REASON);
    let acted = killed
        || matches!(
            row.state,
            ExecState::Planned
                | ExecState::Applied
                | ExecState::Failed
                | ExecState::Scheduled
                | ExecState::Applying
        );
    if !acted {
        report.not_acted.push(NotActed {
            finding_id: finding_id.to_owned(),
            playbook: row.playbook,
            reason: row
                .reason
                .unwrap_or_else(|| format!("execution is {}", row.state.as_str())),
        });
        return;
    }
    let playbook = set.playbooks().iter().find(|p| p.name == row.playbook);
    let kinds: Vec<&str> = playbook
        .map(|p| p.steps.iter().map(|s| s.action.kind()).collect())
        .unwrap_or_default();
    let approval = playbook.and_then(|p| p.approval.describe());
    let mut steps: Vec<StepReport> = row.steps.into_iter().map(step_report).collect();
    // Steps never reached (an earlier one failed and stopped the playbook).
    for kind in kinds.iter().skip(steps.len()) {
        steps.push(StepReport {
            action: (*kind).to_owned(),
            status: if row.state == ExecState::Failed || killed {
                StepStatus::Skipped
            } else {
                StepStatus::Scheduled
            },
            plan: None,
            outcome: None,
            error: if killed {
                Some("kill switch is on: nothing is planned or applied".to_owned())
            } else {
                (row.state == ExecState::Failed).then(|| "an earlier step failed".to_owned())
            },
            attempts: 0,
            due_at: None,
        });
    }
    report.executions.push(Execution {
        finding_id: finding_id.to_owned(),
        playbook: row.playbook,
        steps,
        approval,
    });
}

fn step_report(s: StepRow) -> StepReport {
    let status = match s.status.as_str() {
        "planned" => StepStatus::Planned,
        "applied" => StepStatus::Applied,
        "scheduled" => StepStatus::Scheduled,
        "skipped" => StepStatus::Skipped,
        _ => StepStatus::Failed, // `failed`, or `applying` left by an interrupted apply
    };
    StepReport {
        action: s.action,
        status,
        plan: s.plan.and_then(|p| serde_json::from_value(p).ok()),
        outcome: s.outcome.and_then(|o| serde_json::from_value(o).ok()),
        error: s.error,
        attempts: s.attempts,
        due_at: s.due_at,
    }
}
