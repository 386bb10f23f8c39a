//! The durable engine behind `firebreak serve`: claims work from the [`Store`] under a lease,
//! matches findings, and runs each execution's steps, recording every transition.
//!
//! Exactly-once effect: a step is saved as `applying` (with its plan) before `apply` is called
//! and as `applied` after. A step already `applied` is never applied again. A step found
//! `applying` after a crash is planned again against live state and applied again; actions are
//! idempotent (a second apply of a done change is a no-op, and `notify.webhook` sends the same
//! `Idempotency-Key`), so the effect happens once.
//!
//! Guards, in the order they are checked: the kill switch (every execution), then — once, when
//! an execution first acts — the playbook's cooldown, blast radius and rate limit, decided
//! atomically by [`Store::admit`] (an execution over a limit is held for a person or skipped,
//! as `guards.on_limit` says, and audited either way); then, around each step's apply, a lock on
//! the plan's target so one action at a time touches it (the loser is deferred, not failed).
//! At most `concurrency` executions advance at once. A step with `after:` becomes a durable
//! timer: the execution is parked as `scheduled` with a wake-up time in the store, and any
//! engine that is running when it is due (a restarted one included) carries on.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tracing::Instrument;

use super::{RunOptions, backoff};
use crate::action::{ActionCtx, ActionError, Outcome, Plan, StepInput};
use crate::finding::Finding;
use crate::playbook::{ApprovalSpec, Decision, OnFailure, OnLimit, Playbook, PlaybookSet, Step};
use crate::store::{
    Admission, ClaimedExecution, ExecState, GuardDenial, StepRow, Store, StoreError, now_ms,
};

/// The reason recorded on an execution the kill switch stopped.
pub const KILL_SWITCH_REASON: &str = "kill switch is on";

/// How long an execution waits before trying again for a target another action holds.
const LOCK_RETRY: Duration = Duration::from_millis(250);
use crate::telemetry::metrics::Metrics;

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Lease owner name (unique per process).
    pub owner: String,
    /// How long a claim is held before another worker may take it over.
    pub lease: Duration,
    /// Items claimed per round.
    pub batch: u32,
    /// How often to look for work when nothing wakes the worker.
    pub poll: Duration,
    /// Executions advanced at once (`engine.concurrency`): the global cap on actions in flight.
    pub concurrency: usize,
    /// Retries, dry-run and the configured kill switch.
    pub run: RunOptions,
    /// Work only on findings recorded with this scope (`firebreak run` sets its own); `None`
    /// is the service's shared queue.
    pub scope: Option<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            owner: format!("firebreak-{}", ulid::Ulid::new()),
            lease: Duration::from_secs(60),
            batch: 64,
            poll: Duration::from_millis(500),
            concurrency: 8,
            run: RunOptions::default(),
            scope: None,
        }
    }
}

/// The playbooks in force; swapped whole on a valid reload.
pub type SharedPlaybooks = Arc<RwLock<Arc<PlaybookSet>>>;

/// The engine worker.
pub struct Worker<S: Store> {
    store: Arc<S>,
    playbooks: SharedPlaybooks,
    ctx: ActionCtx,
    opts: WorkerOptions,
    metrics: Option<Arc<Metrics>>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Findings matched.
    pub findings: usize,
    /// Executions advanced.
    pub executions: usize,
}

impl<S: Store> Worker<S> {
    /// A worker over `store`.
    pub fn new(
        store: Arc<S>,
        playbooks: SharedPlaybooks,
        ctx: ActionCtx,
        opts: WorkerOptions,
    ) -> Self {
        Self {
            store,
            playbooks,
            ctx,
            opts,
            metrics: None,
        }
    }

    /// Records matches, steps, guard drops and finding-to-action latency in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn metric(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }

    fn playbooks(&self) -> Arc<PlaybookSet> {
        match self.playbooks.read() {
            Ok(p) => Arc::clone(&p),
            // A panic while swapping cannot leave a half-written Arc; keep using it.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Runs until `shutdown` resolves, waking on `wake` or every `poll`. In-flight work is
    /// finished; claimed but unstarted work is left to expire its lease.
    pub async fn run(&self, wake: Arc<Notify>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            loop {
                match self.round().await {
                    Ok(r) if r == Round::default() => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "engine round failed; retrying after the poll interval");
                        break;
                    }
                }
            }
            if let Some(m) = &self.metrics {
                match self.store.waiting_executions().await {
                    Ok(counts) => m.set_executions(&counts),
                    Err(e) => tracing::warn!(error = %e, "cannot count executions for metrics"),
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.opts.poll) => {}
            }
        }
    }

    /// One round: match claimed findings, then advance claimed executions.
    ///
    /// # Errors
    /// Store failures (the round is retried later; leases make that safe).
    pub async fn round(&self) -> Result<Round, StoreError> {
        let mut round = Round::default();
        let set = self.playbooks();
        let mut fresh = Vec::new();
        for claimed in self
            .store
            .claim_findings(
                &self.opts.owner,
                self.opts.lease,
                self.opts.batch,
                self.opts.scope.as_deref(),
            )
            .await?
        {
            let f = &claimed.finding;
            let span = tracing::debug_span!("match", finding = %f.id, source = %f.source);
            let matches: Vec<(String, ExecState, Option<String>)> = span
                .in_scope(|| set.evaluate(f))
                .into_iter()
                .map(|ev| match ev.decision {
                    Decision::Act => {
                        self.metric(|m| m.matched(&ev.playbook.name));
                        (ev.playbook.name.clone(), ExecState::Matched, None)
                    }
                    Decision::Excluded(r) | Decision::WhenError(r) => {
                        (ev.playbook.name.clone(), ExecState::Skipped, Some(r))
                    }
                })
                .collect();
            // New executions come back leased to this worker: advance them in this round
            // without a second claim (one transaction less between a finding and its action).
            let recorded = self
                .store
                .record_matches(
                    &f.id.to_string(),
                    &matches,
                    Some((&self.opts.owner, self.opts.lease)),
                )
                .await?;
            for (m, (playbook, _, _)) in recorded.into_iter().zip(&matches) {
                if m.leased {
                    fresh.push(ClaimedExecution {
                        id: m.id,
                        finding: claimed.finding.clone(),
                        playbook: playbook.clone(),
                        state: ExecState::Matched,
                        steps: Vec::new(),
                        received_at: claimed.received_at,
                    });
                }
            }
            round.findings += 1;
        }
        let mut claimed = fresh;
        claimed.extend(
            self.store
                .claim_executions(
                    &self.opts.owner,
                    self.opts.lease,
                    self.opts.batch,
                    self.opts.scope.as_deref(),
                )
                .await?,
        );
        round.executions = claimed.len();
        let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(claimed)
            .map(|exec| {
                // One span per finding's execution; steps get child spans (never a guard held
                // across an await: the futures are instrumented).
                let span = tracing::info_span!(
                    "execution",
                    finding = %exec.finding.id,
                    source = %exec.finding.source,
                    rule = %exec.finding.rule,
                    playbook = %exec.playbook,
                    execution = %exec.id,
                );
                self.advance(&set, exec).instrument(span)
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect::<Result<(), StoreError>>()?;
        Ok(round)
    }

    /// Asks the playbook's guards whether `exec` may act; `false` when it was held or skipped.
    async fn admitted(&self, pb: &Playbook, exec: &ClaimedExecution) -> Result<bool, StoreError> {
        let fid = exec.finding.id.to_string();
        let target = target_key(&exec.finding);
        let g = &pb.guards;
        let admission = Admission {
            execution_id: &exec.id,
            finding_id: &fid,
            playbook: &pb.name,
            target: &target,
            max_targets_per_hour: g.max_targets_per_hour,
            max_runs_per_hour: g.max_runs_per_hour,
            cooldown: g.cooldown.map(|c| Duration::from_secs(c.0)),
            requires_approval: !matches!(pb.approval, ApprovalSpec::None),
        };
        let Some(denial) = self.store.admit(&admission).await? else {
            return Ok(true);
        };
        self.metric(|m| m.guard_drop(denial.code()));
        // An approval the playbook asks for is always waited for, never skipped.
        let (state, what) = match (&denial, g.on_limit) {
            (GuardDenial::ApprovalRequired, _) | (_, OnLimit::Hold) => {
                (ExecState::PendingApproval, "held for approval")
            }
            (_, OnLimit::Skip) => (ExecState::Skipped, "skipped"),
        };
        tracing::warn!(playbook = %pb.name, execution = %exec.id, guard = denial.code(), "{what}: {denial}");
        let reason = format!("{what}: {denial}");
        self.store
            .set_execution_state(&exec.id, &fid, state, Some(&reason))
            .await?;
        Ok(false)
    }

    async fn advance(&self, set: &PlaybookSet, exec: ClaimedExecution) -> Result<(), StoreError> {
        let fid = exec.finding.id.to_string();
        let Some(pb) = set.playbooks().iter().find(|p| p.name == exec.playbook) else {
            return self
                .store
                .set_execution_state(
                    &exec.id,
                    &fid,
                    ExecState::Skipped,
                    Some("playbook is no longer loaded"),
                )
                .await;
        };
        if self.opts.run.kill_switch || self.store.flag("kill_switch").await? {
            self.metric(|m| m.guard_drop("kill_switch"));
            return self
                .store
                .set_execution_state(&exec.id, &fid, ExecState::Skipped, Some(KILL_SWITCH_REASON))
                .await;
        }
        let mut applying = exec.state == ExecState::Applying;
        if exec.state == ExecState::Matched && !self.opts.run.dry_run {
            // Admission sets the execution `applying` in the same transaction.
            if !self.admitted(pb, &exec).await? {
                return Ok(());
            }
            applying = true;
        }
        if !applying && !self.opts.run.dry_run {
            self.store
                .set_execution_state(&exec.id, &fid, ExecState::Applying, None)
                .await?;
        }
        let mut failed = false;
        let mut first_action = exec.steps.iter().all(|s| s.status != "applied");
        for (i, step) in pb.steps.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            let previous = exec.steps.iter().find(|s| s.idx == idx);
            if previous.is_some_and(|s| {
                s.status == "applied" || (self.opts.run.dry_run && s.status == "planned")
            }) {
                continue; // never applied (or planned) twice
            }
            if let (Some(after), false) = (step.after, self.opts.run.dry_run) {
                match previous {
                    Some(s) if s.status == "scheduled" => {
                        let due = s.due_at.unwrap_or(0);
                        if due > now_ms() {
                            return self.store.defer_execution(&exec.id, due).await;
                        }
                    }
                    Some(s) if s.status == "applying" => {} // resumed after a crash: carry on
                    _ => {
                        let due = now_ms() + i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
                        let row = StepRow {
                            idx,
                            action: step.action.kind().to_owned(),
                            status: "scheduled".into(),
                            plan: None,
                            outcome: None,
                            error: None,
                            attempts: 0,
                            due_at: Some(due),
                        };
                        tracing::info!(execution = %exec.id, step = idx, action = %row.action, due_at = due, "step scheduled");
                        return self.store.schedule_step(&exec.id, &fid, &row).await;
                    }
                }
            }
            let input = StepInput {
                finding: &exec.finding,
                playbook: &pb.name,
                step: i,
                params: &step.params,
            };
            let span = tracing::info_span!("step", idx, action = step.action.kind());
            let ok = match self
                .run_step(&exec.id, &fid, idx, step, input)
                .instrument(span)
                .await?
            {
                StepResult::Done(ok) => ok,
                StepResult::TargetBusy => {
                    let wake = now_ms() + i64::try_from(LOCK_RETRY.as_millis()).unwrap_or(250);
                    return self.store.defer_execution(&exec.id, wake).await;
                }
            };
            if ok && first_action && !self.opts.run.dry_run {
                first_action = false;
                #[allow(clippy::cast_precision_loss)] // milliseconds, far below 2^52
                let seconds = (now_ms() - exec.received_at).max(0) as f64 / 1000.0;
                self.metric(|m| m.finding_to_action(seconds));
            }
            if !ok {
                failed = true;
                if step.on_failure == OnFailure::Stop {
                    break;
                }
            }
        }
        let end = match (failed, self.opts.run.dry_run) {
            (true, _) => ExecState::Failed,
            (false, true) => ExecState::Planned,
            (false, false) => ExecState::Applied,
        };
        self.store
            .set_execution_state(&exec.id, &fid, end, None)
            .await
    }

    /// Plans, records, applies and records one step, holding the lock on its target while it
    /// applies.
    async fn run_step(
        &self,
        exec_id: &str,
        fid: &str,
        idx: u32,
        step: &Step,
        input: StepInput<'_>,
    ) -> Result<StepResult, StoreError> {
        let mut locked = None;
        let result = self
            .plan_and_apply(exec_id, fid, idx, step, input, &mut locked)
            .await;
        if let Some(key) = locked {
            self.store.unlock_target(&key, &self.opts.owner).await?;
        }
        result
    }

    async fn plan_and_apply(
        &self,
        exec_id: &str,
        fid: &str,
        idx: u32,
        step: &Step,
        input: StepInput<'_>,
        locked: &mut Option<String>,
    ) -> Result<StepResult, StoreError> {
        let kind = step.action.kind().to_owned();
        let mut row = StepRow {
            idx,
            action: kind.clone(),
            status: String::new(),
            plan: None,
            outcome: None,
            error: None,
            attempts: 0,
            due_at: None,
        };
        let mut replanned = false;
        loop {
            row.attempts += 1;
            let plan = match step.action.plan(&self.ctx, input).await {
                Ok(p) => p,
                Err(e) if e.is_retryable() && row.attempts < self.opts.run.max_attempts => {
                    backoff(&self.opts.run, row.attempts).await;
                    continue;
                }
                Err(e) => return self.fail(exec_id, fid, row, None, &e).await,
            };
            if !self.opts.run.dry_run && step.action.locks_target() && locked.is_none() {
                if !self
                    .store
                    .lock_target(&plan.target, &self.opts.owner, exec_id, self.opts.lease)
                    .await?
                {
                    tracing::info!(action = %kind, target = %plan.target, "another action holds the target; trying again shortly");
                    self.metric(|m| m.guard_drop("target_locked"));
                    return Ok(StepResult::TargetBusy);
                }
                *locked = Some(plan.target.clone());
            }
            row.plan = Some(serde_json::to_value(&plan).unwrap_or_default());
            row.status = if self.opts.run.dry_run {
                "planned".into()
            } else {
                "applying".into()
            };
            self.store.save_step(exec_id, fid, &row).await?;
            if self.opts.run.dry_run {
                self.metric(|m| m.step(&kind, "planned"));
                return Ok(StepResult::Done(true));
            }
            match step.action.apply(&self.ctx, input, &plan).await {
                Ok(outcome) => return self.applied(exec_id, fid, row, outcome).await,
                Err(ActionError::Drift(why)) if !replanned => {
                    tracing::info!(action = %kind, why = %crate::redact::scrub(&why), "target drifted since planning; planning again");
                    replanned = true;
                }
                Err(e) if e.is_retryable() && row.attempts < self.opts.run.max_attempts => {
                    backoff(&self.opts.run, row.attempts).await;
                }
                Err(e) => return self.fail(exec_id, fid, row, Some(plan), &e).await,
            }
        }
    }

    async fn applied(
        &self,
        exec_id: &str,
        fid: &str,
        mut row: StepRow,
        outcome: Outcome,
    ) -> Result<StepResult, StoreError> {
        row.status = "applied".into();
        row.outcome = Some(serde_json::to_value(&outcome).unwrap_or_default());
        self.store.save_step(exec_id, fid, &row).await?;
        self.metric(|m| m.step(&row.action, "applied"));
        Ok(StepResult::Done(true))
    }

    async fn fail(
        &self,
        exec_id: &str,
        fid: &str,
        mut row: StepRow,
        plan: Option<Plan>,
        e: &ActionError,
    ) -> Result<StepResult, StoreError> {
        tracing::warn!(action = %row.action, error = %e, "step failed");
        row.status = "failed".into();
        if let Some(p) = plan {
            row.plan = Some(serde_json::to_value(&p).unwrap_or_default());
        }
        row.error = Some(crate::redact::scrub(&e.to_string()).into_owned());
        self.store.save_step(exec_id, fid, &row).await?;
        self.metric(|m| m.step(&row.action, "failed"));
        Ok(StepResult::Done(false))
    }
}

/// How a step attempt ended.
enum StepResult {
    /// Planned/applied (`true`) or failed (`false`), recorded.
    Done(bool),
    /// Another action holds the target: nothing recorded, try again shortly.
    TargetBusy,
}

/// The key guards count targets by: the finding's primary resource, else its fingerprint.
fn target_key(f: &Finding) -> String {
    f.primary_resource()
        .map_or_else(|| f.fingerprint.0.clone(), crate::finding::ResourceRef::key)
}
