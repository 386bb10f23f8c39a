//! `firebreak run`: the manual run drives the same [`Worker`] as the service, through the
//! same ledger, guards, locks and audit trail (with `--no-store`, an in-memory store).
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

/// Runs `findings` through the engine on a store of its own, in memory, gone when the run ends
/// (`firebreak run --no-store`): the same worker, retries, guards, locks and kill switch
/// (`opts.kill_switch`) as with a store; only nothing is kept. `progress` is called once per
/// finding matched.
///
/// # Errors
/// Store failures (of the in-memory database).
pub async fn run_in_memory(
    set: &Arc<PlaybookSet>,
    ctx: &ActionCtx,
    findings: &[crate::finding::Finding],
    opts: &super::RunOptions,
    progress: &(dyn Fn() + Sync),
) -> Result<RunReport, StoreError> {
    let store = Arc::new(crate::store::memory().await?);
    let batch = IngestBatch {
        intake: "cli".into(),
        findings: findings.to_vec(),
        ..IngestBatch::default()
    };
    let opts = WorkerOptions {
        run: opts.clone(),
        ..WorkerOptions::default()
    };
    let mut report = run(
        Arc::clone(&store),
        Arc::clone(set),
        ctx.clone(),
        batch,
        Duration::ZERO,
        opts,
        &|n| (0..n).for_each(|_| progress()),
    )
    .await?;
    inline_evidence(&*store, &mut report).await?;
    Ok(report)
}

/// Puts each evidence bundle a step stored back into its outcome (`detail.evidence.bundle`):
/// for a store that is gone when the run ends, the report is the only place it survives.
///
/// # Errors
/// Store failures.
pub async fn inline_evidence<S: Store>(
    store: &S,
    report: &mut RunReport,
) -> Result<(), StoreError> {
    for step in report.executions.iter_mut().flat_map(|e| &mut e.steps) {
        let Some(evidence) = step
            .outcome
            .as_mut()
            .and_then(|o| o.detail.get_mut("evidence"))
            .and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        let Some(sha256) = evidence
            .get("sha256")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        if let Some(bundle) = store.evidence(&sha256).await? {
            evidence.insert("bundle".into(), bundle);
        }
    }
    Ok(())
}

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
    let opts_kill_switch = opts.run.kill_switch;
    let playbooks = Arc::new(RwLock::new(Arc::clone(&set)));
    let bound = opts.lease.saturating_mul(2);
    let worker = Worker::new(Arc::clone(&store), playbooks, ctx, opts);

    let started = Instant::now();
    let configured_pause = opts_kill_switch;
    let paused = loop {
        let round = worker.round().await?;
        progress(round.findings);
        if round != Round::default() {
            continue;
        }
        // Nothing claimable: the kill switch parked what is left, or everything finished, or
        // an execution waits briefly for a target lock.
        if configured_pause || store.flag("kill_switch").await? {
            break true;
        }
        let waiting = store.waiting_in_scope(&scope).await?;
        if waiting == 0 || started.elapsed() > bound {
            break false;
        }
        tokio::time::sleep(IDLE_POLL).await;
    };
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
            add_execution(&mut report, &set, id, row, paused);
        }
    }
    Ok(report)
}

fn add_execution(
    report: &mut RunReport,
    set: &PlaybookSet,
    finding_id: &str,
    row: ExecutionRow,
    paused: bool,
) {
    // Parked by the kill switch: still `matched` or `applying`, its remaining steps not run.
    let parked = paused && matches!(row.state, ExecState::Matched | ExecState::Applying);
    let acted = parked
        || matches!(
            row.state,
            ExecState::Planned
                | ExecState::Applied
                | ExecState::Failed
                | ExecState::Scheduled
                | ExecState::Applying
        );
    let playbook = set.playbooks().iter().find(|p| p.name == row.playbook);
    if !acted {
        report.not_acted.push(NotActed {
            finding_id: finding_id.to_owned(),
            reason: row
                .reason
                .unwrap_or_else(|| format!("execution is {}", row.state.as_str())),
            approval: (row.state == ExecState::PendingApproval)
                .then(|| playbook.and_then(|p| p.approval.describe()))
                .flatten(),
            playbook: row.playbook,
        });
        return;
    }
    let kinds: Vec<&str> = playbook
        .map(|p| p.steps.iter().map(|s| s.action.kind()).collect())
        .unwrap_or_default();
    let approval = playbook.and_then(|p| p.approval.describe());
    let mut steps: Vec<StepReport> = row.steps.into_iter().map(step_report).collect();
    // Steps never reached: an earlier one failed and stopped the playbook, the kill switch
    // parked it, or they wait for a timer.
    for kind in kinds.iter().skip(steps.len()) {
        let (status, error) = if parked {
            (
                StepStatus::Paused,
                Some(format!(
                    "{KILL_SWITCH_REASON}: parked; it continues after `firebreak resume`"
                )),
            )
        } else if row.state == ExecState::Failed {
            (
                StepStatus::Skipped,
                Some("an earlier step failed".to_owned()),
            )
        } else {
            (StepStatus::Scheduled, None)
        };
        steps.push(StepReport {
            action: (*kind).to_owned(),
            status,
            plan: None,
            outcome: None,
            error,
            attempts: 0,
            due_at: None,
        });
    }
    report.executions.push(Execution {
        finding_id: finding_id.to_owned(),
        execution_id: Some(row.id),
        playbook: row.playbook,
        steps,
        approval,
    });
}

fn step_report(s: StepRow) -> StepReport {
    let status = match s.status.as_str() {
        "planned" => StepStatus::Planned,
        "planned_only" => StepStatus::PlannedOnly,
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
