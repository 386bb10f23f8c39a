//! The engine: claims work from the [`Store`] under a fenced lease, matches findings, and runs
//! each execution's steps, recording every transition. `firebreak serve` runs it continuously;
//! `firebreak run` drives the same worker round by round (see [`super::recorded`]), on the
//! configured store or, with `--no-store`, on an in-memory one.
//!
//! **What "once" means.** A step is saved as `applying` (with its plan) before `apply` is called
//! and as `applied` after; a step recorded `applied` is never applied again. A step found
//! `applying` after a crash is planned again against live state and applied again unless that
//! plan is a no-op: apply is at-least-once, and actions are idempotent (a second apply of a done
//! change changes nothing; `notify.webhook` sends the same `Idempotency-Key`), so the effect
//! happens once.
//!
//! **Fenced leases.** Every claim bumps the execution's fencing token; the worker renews the
//! lease (and the target locks it holds) every third of the lease while it works, and every
//! store write about the execution carries the owner and the token. A worker that lost its
//! lease (it stalled past the lease and another worker claimed the execution) has its writes
//! refused, logs it, records it in the audit trail (`lease.lost`, and `step.refused` with the
//! outcome of a step it applied) and stops working on the execution; if it cannot renew before its lease runs out, it abandons the step it is applying
//! rather than act without a lease. A worker claims no more executions than it can start now.
//!
//! **Guards**, in the order they are checked: the kill switch before every step (while it is on,
//! the execution is parked: released with its state and due times kept, and claimed again after
//! `firebreak resume`); then, before a step that changes something, the playbook's approval
//! requirement, cooldown, blast radius and rate limit over every resource the step's plan
//! changes, decided atomically by [`Store::admit`] (an execution over a limit is held for a
//! person or skipped, as `guards.on_limit` says, and audited either way); then a lock on each of
//! those resources, so one action at a time changes a resource (the loser is deferred, not
//! failed). A step with `after:` becomes a durable timer: the execution is parked as `scheduled`
//! with its due time in the store, and any engine running when it is due carries on.
//!
//! **Pinned revisions.** An execution runs the playbook revision it matched with (its text is in
//! the store): a reload, an edit, a rename or a removal of the file never changes its steps.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::approval::{ApprovalChannel, plan_all, plan_hash};
use super::{RunOptions, backoff};
use crate::action::ActionCtx;
use crate::action::{ActionError, Outcome, Plan, StepInput};
use crate::finding::Finding;
use crate::playbook::{
    ApprovalSpec, Decision, OnFailure, OnLimit, Playbook, PlaybookSet, Step, load_str,
};
use crate::store::{
    Admission, ApprovalRequest, AuditEvent, ClaimedExecution, ExecState, GuardDenial, Lease,
    LeaseRequest, MatchInput, StepRow, Store, StoreError, now_ms,
};
use crate::telemetry::metrics::Metrics;

/// The reason recorded on an execution the kill switch parked.
pub const KILL_SWITCH_REASON: &str = "kill switch is on";

/// How often an engine expires and republishes approval requests.
const TEND_EVERY: Duration = Duration::from_secs(5);

/// How long an execution waits before trying again for a target another action holds.
const LOCK_RETRY: Duration = Duration::from_millis(250);

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Lease owner name (unique per process).
    pub owner: String,
    /// How long a claim is held without renewal before another worker may take it over.
    pub lease: Duration,
    /// Findings claimed for matching per round.
    pub batch: u32,
    /// How often to look for work when nothing wakes the worker.
    pub poll: Duration,
    /// Executions advanced at once (`engine.concurrency`): the global cap on actions in flight,
    /// and the most executions the worker holds leases on.
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

/// The engine worker. Cheap to clone: clones share the store, the playbooks and the caches.
pub struct Worker<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Worker<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S: Store> {
    store: Arc<S>,
    playbooks: SharedPlaybooks,
    ctx: ActionCtx,
    opts: WorkerOptions,
    metrics: OnceLock<Arc<Metrics>>,
    /// Where approval requests are shown (a GitHub pull request), when configured.
    channel: OnceLock<Arc<dyn ApprovalChannel>>,
    /// Pinned playbook revisions no longer in force, compiled once from their stored text.
    pinned: Mutex<HashMap<String, Arc<Playbook>>>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Findings matched.
    pub findings: usize,
    /// Executions advanced.
    pub executions: usize,
}

/// The playbook an execution runs: the one in force (same revision), or its pinned revision.
enum Resolved {
    Current(Arc<PlaybookSet>, usize),
    Pinned(Arc<Playbook>),
}

impl Deref for Resolved {
    type Target = Playbook;
    fn deref(&self) -> &Playbook {
        match self {
            Resolved::Current(set, i) => &set.playbooks()[*i],
            Resolved::Pinned(pb) => pb,
        }
    }
}

/// How a step attempt ended.
enum StepResult {
    /// Planned/applied (`true`) or failed (`false`), recorded.
    Done(bool),
    /// Planned, but nothing can apply it (no cluster, no AWS credentials): recorded as
    /// `planned_only`, with why.
    PlannedOnly(String),
    /// Another action holds a target: nothing recorded, try again shortly.
    TargetBusy,
    /// A guard held or skipped the execution: its new state and why.
    Held(ExecState, String),
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
            inner: Arc::new(Inner {
                store,
                playbooks,
                ctx,
                opts,
                metrics: OnceLock::new(),
                channel: OnceLock::new(),
                pinned: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Records matches, steps, guard drops and finding-to-action latency in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        let _ = self.inner.metrics.set(metrics);
        self
    }

    /// Shows approval requests on `channel` (opens, updates and comments on pull requests).
    #[must_use]
    pub fn with_approval_channel(self, channel: Arc<dyn ApprovalChannel>) -> Self {
        let _ = self.inner.channel.set(channel);
        self
    }

    fn store(&self) -> &S {
        &self.inner.store
    }

    fn opts(&self) -> &WorkerOptions {
        &self.inner.opts
    }

    fn metric(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = self.inner.metrics.get() {
            f(m);
        }
    }

    fn playbooks(&self) -> Arc<PlaybookSet> {
        match self.inner.playbooks.read() {
            Ok(p) => Arc::clone(&p),
            // A panic while swapping cannot leave a half-written Arc; keep using it.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Runs until `shutdown` resolves, waking on `wake` or every `poll`. Executions are
    /// claimed only as slots free up (`concurrency`), so none waits with its lease ticking.
    /// On shutdown, in-flight executions are finished (the caller bounds how long).
    pub async fn run(&self, wake: Arc<Notify>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let cap = self.opts().concurrency.max(1);
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut tended = Instant::now()
            .checked_sub(TEND_EVERY)
            .unwrap_or_else(Instant::now);
        loop {
            let free = cap.saturating_sub(inflight.len());
            let mut busy = false;
            if free > 0 {
                match self.claim(free).await {
                    Ok((findings, claimed)) => {
                        busy = findings > 0 || !claimed.is_empty();
                        for exec in claimed {
                            let w = self.clone();
                            inflight.spawn(async move { w.advance_logged(exec).await });
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "engine claim failed; retrying after the poll interval");
                    }
                }
            }
            if busy && inflight.len() < cap {
                continue; // more may be waiting: claim again before sleeping
            }
            if inflight.is_empty() {
                self.update_gauges().await;
            }
            if tended.elapsed() >= TEND_EVERY {
                tended = Instant::now();
                if let Err(e) = self.tend_approvals().await {
                    tracing::warn!(error = %e, "cannot tend approval requests; trying again later");
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "an execution task ended abnormally; its lease will expire and it is claimed again");
                    }
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(self.opts().poll) => {}
            }
        }
        while inflight.join_next().await.is_some() {}
    }

    async fn update_gauges(&self) {
        if self.inner.metrics.get().is_none() {
            return;
        }
        match self.store().waiting_executions().await {
            Ok(counts) => self.metric(|m| m.set_executions(&counts)),
            Err(e) => tracing::warn!(error = %e, "cannot count executions for metrics"),
        }
    }

    /// One round: match claimed findings, claim executions up to `concurrency`, and advance
    /// them all to the point where they finish or wait (used by `firebreak run` and tests).
    ///
    /// # Errors
    /// Store failures (the round is retried later; leases make that safe).
    pub async fn round(&self) -> Result<Round, StoreError> {
        let (findings, claimed) = self.claim(self.opts().concurrency.max(1)).await?;
        let round = Round {
            findings,
            executions: claimed.len(),
        };
        let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(claimed)
            .map(|exec| self.advance_fenced(exec))
            .buffer_unordered(self.opts().concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect::<Result<(), StoreError>>()?;
        Ok(round)
    }

    /// Matches findings (leasing the executions they create, up to `capacity`), then claims
    /// executions that wait for work, up to what is left of `capacity`.
    async fn claim(&self, capacity: usize) -> Result<(usize, Vec<ClaimedExecution>), StoreError> {
        let opts = self.opts();
        // The configured kill switch: match (nothing acts), but lease and claim nothing.
        let capacity = if opts.run.kill_switch { 0 } else { capacity };
        let set = self.playbooks();
        let mut fresh: Vec<ClaimedExecution> = Vec::new();
        let mut found = self
            .store()
            .claim_findings(&opts.owner, opts.lease, opts.batch, opts.scope.as_deref())
            .await?;
        // The store hands out the most urgent first; match (and lease the executions of) the
        // batch in that order too, so a critical finding's work is the first to start.
        found.sort_by(|a, b| {
            b.finding
                .severity
                .cmp(&a.finding.severity)
                .then(a.received_at.cmp(&b.received_at))
        });
        let findings = found.len();
        for claimed in found {
            let f = &claimed.finding;
            let span = tracing::debug_span!("match", finding = %f.id, source = %f.source);
            let evaluations = span.in_scope(|| set.evaluate(f));
            let file_names: Vec<String> = evaluations
                .iter()
                .map(|ev| ev.playbook.file.display().to_string())
                .collect();
            let inputs: Vec<MatchInput<'_>> = evaluations
                .iter()
                .zip(&file_names)
                .map(|(ev, file)| {
                    let (state, reason) = match &ev.decision {
                        Decision::Act => {
                            self.metric(|m| m.matched(&ev.playbook.name));
                            (ExecState::Matched, None)
                        }
                        Decision::Excluded(r) | Decision::WhenError(r) => {
                            (ExecState::Skipped, Some(r.clone()))
                        }
                    };
                    MatchInput {
                        playbook: &ev.playbook.name,
                        revision: &ev.playbook.revision,
                        file,
                        source: &ev.playbook.source,
                        state,
                        reason,
                    }
                })
                .collect();
            let room = capacity.saturating_sub(fresh.len());
            let lease = (room > 0).then_some(LeaseRequest {
                owner: &opts.owner,
                duration: opts.lease,
                max: room,
            });
            let recorded = self
                .store()
                .record_matches(&f.id.to_string(), &inputs, lease)
                .await?;
            for (m, input) in recorded.into_iter().zip(&inputs) {
                if let Some(lease) = m.lease {
                    fresh.push(ClaimedExecution {
                        id: m.id,
                        lease,
                        revision: Some(input.revision.to_owned()),
                        finding: claimed.finding.clone(),
                        playbook: input.playbook.to_owned(),
                        state: ExecState::Matched,
                        steps: Vec::new(),
                        received_at: claimed.received_at,
                    });
                }
            }
        }
        let room = capacity.saturating_sub(fresh.len());
        if room > 0 {
            fresh.extend(
                self.store()
                    .claim_executions(
                        &opts.owner,
                        opts.lease,
                        u32::try_from(room).unwrap_or(u32::MAX),
                        opts.scope.as_deref(),
                    )
                    .await?,
            );
        }
        Ok((findings, fresh))
    }

    /// [`Self::advance_fenced`] for a spawned task: errors are logged (the lease expires and the
    /// execution is claimed again).
    async fn advance_logged(&self, exec: ClaimedExecution) {
        let id = exec.id.clone();
        if let Err(e) = self.advance_fenced(exec).await {
            tracing::error!(execution = %id, error = %e, "advancing an execution failed; it is claimed again after its lease");
        }
    }

    /// Advances `exec` while keeping its lease: renewed every third of the lease; when it is
    /// lost (refused renewal or write), work on the execution stops at once.
    async fn advance_fenced(&self, exec: ClaimedExecution) -> Result<(), StoreError> {
        // One span per execution; steps get child spans (never a guard held across an await:
        // the futures are instrumented).
        let span = tracing::info_span!(
            "execution",
            finding = %exec.finding.id,
            source = %exec.finding.source,
            rule = %exec.finding.rule,
            playbook = %exec.playbook,
            execution = %exec.id,
        );
        let lease = exec.lease.clone();
        let work = self.advance(exec).instrument(span.clone());
        let keep = self.keep_lease(&lease).instrument(span.clone());
        let result = tokio::select! {
            biased;
            lost = keep => Err(lost),
            done = work => done,
        };
        match result {
            Err(StoreError::LeaseLost { .. }) => {
                self.metric(|m| m.lease_lost());
                let event = AuditEvent {
                    kind: "lease.lost".into(),
                    finding_id: Some(lease.finding_id.clone()),
                    execution_id: Some(lease.execution_id.clone()),
                    detail: serde_json::json!({ "owner": lease.owner, "fence": lease.fence }),
                };
                let audited = self.store().audit(event).await;
                span.in_scope(|| {
                    if let Err(e) = &audited {
                        tracing::warn!(error = %e, "cannot record the lost lease in the audit trail");
                    }
                    tracing::warn!(
                        owner = %lease.owner,
                        fence = lease.fence,
                        "lease lost: another worker took this execution over (or it was cancelled); \
                         this worker's write was refused and it stops working on it"
                    );
                });
                Ok(())
            }
            other => other,
        }
    }

    /// Renews `lease` until it is lost; returns why. A renewal the store cannot answer is
    /// retried, but once the lease would have run out the worker gives up rather than act
    /// without one.
    async fn keep_lease(&self, lease: &Lease) -> StoreError {
        let period = self.opts().lease;
        let every = (period / 3).max(Duration::from_millis(10));
        let mut valid_until = Instant::now() + period;
        loop {
            tokio::time::sleep(every).await;
            let asked = Instant::now();
            match self.store().renew(lease, period).await {
                Ok(()) => valid_until = asked + period,
                Err(lost @ StoreError::LeaseLost { .. }) => return lost,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease; trying again");
                }
            }
            if Instant::now() + every >= valid_until {
                tracing::warn!("the lease could not be renewed in time; abandoning the execution");
                return StoreError::LeaseLost {
                    execution_id: lease.execution_id.clone(),
                };
            }
        }
    }

    /// The playbook `exec` runs: the one in force if it is the same revision, else the pinned
    /// revision from the store. `Ok(Err(why))` when neither can be had.
    async fn resolve(
        &self,
        exec: &ClaimedExecution,
    ) -> Result<Result<Resolved, String>, StoreError> {
        let set = self.playbooks();
        let current = set.playbooks().iter().position(|p| {
            p.name == exec.playbook && exec.revision.as_ref().is_none_or(|r| *r == p.revision)
        });
        if let Some(i) = current {
            return Ok(Ok(Resolved::Current(set, i)));
        }
        let Some(rev) = &exec.revision else {
            return Ok(Err(format!(
                "playbook {} is no longer loaded (and the execution predates pinned revisions)",
                exec.playbook
            )));
        };
        if let Some(pb) = self.pinned(rev) {
            return Ok(Ok(Resolved::Pinned(pb)));
        }
        let Some(stored) = self.store().playbook_revision(rev).await? else {
            return Ok(Err(format!(
                "the pinned revision {rev} of playbook {} is not in the store",
                exec.playbook
            )));
        };
        match load_str(std::path::Path::new(&stored.file), &stored.source) {
            Ok((pb, _)) if pb.revision == *rev => {
                tracing::info!(playbook = %exec.playbook, revision = %rev, "running the execution's pinned playbook revision (the file changed since it started)");
                let pb = Arc::new(pb);
                if let Ok(mut cache) = self.inner.pinned.lock() {
                    cache.insert(rev.clone(), Arc::clone(&pb));
                }
                Ok(Ok(Resolved::Pinned(pb)))
            }
            Ok(_) => Ok(Err(format!(
                "the stored text of revision {rev} does not hash to it (edited in the store)"
            ))),
            Err(ds) => Ok(Err(format!(
                "the pinned revision {rev} of playbook {} no longer compiles: {}",
                exec.playbook,
                ds.first().map(ToString::to_string).unwrap_or_default()
            ))),
        }
    }

    fn pinned(&self, rev: &str) -> Option<Arc<Playbook>> {
        self.inner
            .pinned
            .lock()
            .ok()
            .and_then(|c| c.get(rev).map(Arc::clone))
    }

    /// Why nothing may act now, if the kill switch is on (configured or in the store).
    async fn paused(&self) -> Result<Option<&'static str>, StoreError> {
        if self.opts().run.kill_switch || self.store().flag("kill_switch").await? {
            return Ok(Some(KILL_SWITCH_REASON));
        }
        Ok(None)
    }

    async fn advance(&self, exec: ClaimedExecution) -> Result<(), StoreError> {
        let lease = &exec.lease;
        let dry_run = self.opts().run.dry_run;
        let pb = match self.resolve(&exec).await? {
            Ok(pb) => pb,
            Err(why) => {
                tracing::warn!(%why, "cannot run the execution's playbook");
                return self
                    .store()
                    .set_execution_state(lease, ExecState::Failed, Some(&why))
                    .await;
            }
        };
        let started = exec
            .steps
            .iter()
            .any(|s| matches!(s.status.as_str(), "applied" | "applying" | "scheduled"));
        let asks = !matches!(pb.approval, ApprovalSpec::None);
        if asks && !dry_run && !started && !self.approved_as_planned(&exec, &pb).await? {
            return Ok(()); // held for approval of the plan as it is now
        }
        let mut failed = false;
        let mut planned_only: Option<String> = None;
        let mut first_action = exec.steps.iter().all(|s| s.status != "applied");
        for (i, step) in pb.steps.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            let previous = exec.steps.iter().find(|s| s.idx == idx);
            if previous.is_some_and(|s| {
                s.status == "applied"
                    || s.status == "planned_only"
                    || s.status == "skipped"
                    || (dry_run && s.status == "planned")
            }) {
                continue; // never applied (or planned) twice
            }
            if let Some(why) = step.skipped_for(&exec.finding) {
                let row = StepRow {
                    idx,
                    action: step.action.kind().to_owned(),
                    status: "skipped".into(),
                    plan: None,
                    outcome: None,
                    error: Some(why),
                    attempts: 0,
                    due_at: None,
                };
                self.store().save_step(lease, &row).await?;
                self.metric(|m| m.step(&row.action, "skipped"));
                continue;
            }
            // The kill switch parks, checked before every step: state and due times are kept.
            if let Some(why) = self.paused().await? {
                self.metric(|m| m.guard_drop("kill_switch"));
                tracing::info!(
                    step = idx,
                    "kill switch is on: execution parked until `firebreak resume`"
                );
                return self.store().park(lease, why).await;
            }
            if let (Some(after), false) = (step.after, dry_run) {
                match previous {
                    Some(s) if s.status == "scheduled" => {
                        let due = s.due_at.unwrap_or(0);
                        if due > now_ms() {
                            return self.store().defer_execution(lease, due).await;
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
                        tracing::info!(step = idx, action = %row.action, due_at = due, "step scheduled");
                        return self.store().schedule_step(lease, &row).await;
                    }
                }
            }
            let input = StepInput {
                finding: &exec.finding,
                playbook: &pb.name,
                step: i,
                params: &step.params,
                execution: Some(&exec.id),
            };
            let span = tracing::info_span!("step", idx, action = step.action.kind());
            match self
                .run_step(lease, &pb, idx, step, input)
                .instrument(span)
                .await?
            {
                StepResult::Done(true) => {
                    if first_action && !dry_run {
                        first_action = false;
                        #[allow(clippy::cast_precision_loss)] // milliseconds, far below 2^52
                        let seconds = (now_ms() - exec.received_at).max(0) as f64 / 1000.0;
                        self.metric(|m| m.finding_to_action(seconds));
                    }
                }
                StepResult::Done(false) => {
                    failed = true;
                    if step.on_failure == OnFailure::Stop {
                        break;
                    }
                }
                StepResult::PlannedOnly(why) => {
                    planned_only.get_or_insert(why);
                }
                StepResult::TargetBusy => {
                    let wake = now_ms() + i64::try_from(LOCK_RETRY.as_millis()).unwrap_or(250);
                    return self.store().defer_execution(lease, wake).await;
                }
                StepResult::Held(state, reason) => {
                    return self
                        .store()
                        .set_execution_state(lease, state, Some(&reason))
                        .await;
                }
            }
        }
        let (end, reason) = match (failed, dry_run, planned_only) {
            (true, _, _) => (ExecState::Failed, None),
            (false, true, _) => (ExecState::Planned, None),
            (false, false, Some(why)) => (ExecState::Planned, Some(format!("planned only: {why}"))),
            (false, false, None) => (ExecState::Applied, None),
        };
        self.store()
            .set_execution_state(lease, end, reason.as_deref())
            .await?;
        if asks && !dry_run {
            let text = match end {
                ExecState::Applied => "applied: every step of the approved plan was applied",
                ExecState::Failed => {
                    "failed: a step of the approved plan failed (see the audit trail)"
                }
                _ => "planned only: nothing could apply the approved plan here",
            };
            self.tell(&exec.id, text).await;
        }
        Ok(())
    }

    /// For a playbook that asks first: plans every step now and compares the hash with the
    /// approved one. `true` when it is the plan that was approved; otherwise the execution is
    /// held with a request for this plan (a new revision when the approved plan drifted) and
    /// the request is published on the approval channel.
    async fn approved_as_planned(
        &self,
        exec: &ClaimedExecution,
        pb: &Playbook,
    ) -> Result<bool, StoreError> {
        let ApprovalSpec::Github(gh) = &pb.approval else {
            return Ok(true);
        };
        let plans = plan_all(&self.inner.ctx, &exec.finding, pb).await;
        let hash = plan_hash(&plans);
        let current = self.store().approval(&exec.id).await?;
        let mut note = None;
        if let Some(req) = current.as_ref().filter(|r| r.state == "approved") {
            if req.request.plan_hash == hash {
                tracing::info!(plan_hash = %hash, "the approved plan is still the plan: applying it");
                return Ok(true);
            }
            tracing::warn!(approved = %req.request.plan_hash, now = %hash, "the plan changed since it was approved: asking again");
            self.store()
                .audit(AuditEvent {
                    kind: "approval.drifted".into(),
                    finding_id: Some(exec.lease.finding_id.clone()),
                    execution_id: Some(exec.id.clone()),
                    detail: serde_json::json!({
                        "approved_plan_hash": req.request.plan_hash,
                        "plan_hash": hash,
                    }),
                })
                .await?;
            note = Some(
                "drifted: live state changed after this plan was approved, so nothing was \
                 applied. This is the plan as it is now; approve it to apply it.",
            );
        }
        let request = ApprovalRequest {
            plan_hash: hash,
            plans,
            min: gh.min.value,
            reviewers: gh.reviewers.value.clone(),
            channel: Some(format!("github:{}", gh.repo.value)),
            expires_at: now_ms() + i64::try_from(gh.expires.0).unwrap_or(i64::MAX / 2_000) * 1_000,
            merge_approves: gh.merge_counts_as_approval,
        };
        self.store().request_approval(&exec.lease, &request).await?;
        self.publish(&exec.id, &exec.finding, note).await;
        Ok(false)
    }

    /// Publishes the current revision of an execution's approval request on the channel (when
    /// one is configured) and records where. A failure is logged: the request stays held and
    /// is published again by [`Self::tend_approvals`].
    pub async fn publish(&self, execution_id: &str, finding: &Finding, note: Option<&str>) {
        let Some(channel) = self.inner.channel.get() else {
            return;
        };
        let row = match self.store().approval(execution_id).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the approval request to publish it");
                return;
            }
        };
        match channel.publish(&row, finding, note).await {
            Ok((number, head)) => {
                if let Err(e) = self
                    .store()
                    .set_approval_pr(execution_id, row.revision, number, &head)
                    .await
                {
                    tracing::warn!(error = %e, "cannot record where the approval request is shown");
                }
            }
            Err(why) => {
                tracing::warn!(execution = %execution_id, %why, "cannot publish the approval request; trying again later");
            }
        }
    }

    /// Durable upkeep of approval requests, run by every engine now and then: expires those
    /// whose time is up (audited; their pull requests are commented on and closed) and
    /// publishes again those whose current revision is not shown yet (a failed publish, a crash
    /// between holding and publishing).
    ///
    /// # Errors
    /// Store failures.
    pub async fn tend_approvals(&self) -> Result<(), StoreError> {
        let expired = self.store().expire_approvals(now_ms()).await?;
        let Some(channel) = self.inner.channel.get() else {
            return Ok(());
        };
        for row in expired {
            tracing::info!(execution = %row.execution_id, "approval expired");
            if row.pr_number.is_some()
                && let Err(why) = channel
                    .close(&row, "expired: not approved in time; nothing was applied")
                    .await
            {
                tracing::warn!(execution = %row.execution_id, %why, "cannot close the expired approval request");
            }
        }
        for row in self.store().open_approvals().await? {
            if row.head_sha.is_some() {
                continue;
            }
            if let Some(finding) = self.store().finding(&row.finding_id).await? {
                self.publish(&row.execution_id, &finding, None).await;
            }
        }
        Ok(())
    }

    /// Says `text` on the approval channel of an execution's request (best-effort).
    async fn tell(&self, execution_id: &str, text: &str) {
        let Some(channel) = self.inner.channel.get() else {
            return;
        };
        match self.store().approval(execution_id).await {
            Ok(Some(row)) if row.pr_number.is_some() => {
                if let Err(why) = channel.comment(&row, text).await {
                    tracing::warn!(execution = %execution_id, %why, "cannot comment on the approval request");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the approval request"),
        }
    }

    /// Plans, guards, locks, records, applies and records one step. The locks on what the plan
    /// changes are held while it applies.
    async fn run_step(
        &self,
        lease: &Lease,
        pb: &Playbook,
        idx: u32,
        step: &Step,
        input: StepInput<'_>,
    ) -> Result<StepResult, StoreError> {
        let mut locked = false;
        let result = self
            .plan_and_apply(lease, pb, idx, step, input, &mut locked)
            .await;
        if locked {
            self.store().unlock_targets(lease).await?;
        }
        result
    }

    #[allow(clippy::too_many_lines)] // one loop: plan, guard, lock, record, apply, record
    async fn plan_and_apply(
        &self,
        lease: &Lease,
        pb: &Playbook,
        idx: u32,
        step: &Step,
        input: StepInput<'_>,
        locked: &mut bool,
    ) -> Result<StepResult, StoreError> {
        let opts = &self.opts().run;
        let ctx = &self.inner.ctx;
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
            let plan = match step.action.plan(ctx, input).await {
                Ok(p) => p,
                Err(e) if e.is_retryable() && row.attempts < opts.max_attempts => {
                    backoff(opts, row.attempts).await;
                    continue;
                }
                Err(e) => return self.fail(lease, row, None, &e).await,
            };
            row.plan = Some(serde_json::to_value(&plan).unwrap_or_default());
            if let (Some(why), false) = (&plan.not_connected, opts.dry_run) {
                // Nothing can apply it: say so, as its own outcome, rather than fail an apply
                // that could never work.
                row.status = "planned_only".into();
                self.store().save_step(lease, &row).await?;
                self.metric(|m| m.step(&kind, "planned_only"));
                tracing::info!(action = %kind, %why, "planned only: no client to apply with");
                return Ok(StepResult::PlannedOnly(why.clone()));
            }
            if opts.dry_run {
                row.status = "planned".into();
                self.store().save_step(lease, &row).await?;
                self.metric(|m| m.step(&kind, "planned"));
                return Ok(StepResult::Done(true));
            }
            if !plan.noop {
                let targets = guard_targets(step, &plan, input.finding);
                if let Some(held) = self.admitted(lease, pb, &targets).await? {
                    return Ok(held);
                }
                if step.action.locks_target() {
                    let keys: Vec<String> = plan.changed_targets().map(str::to_owned).collect();
                    if !self
                        .store()
                        .lock_targets(lease, &keys, self.opts().lease)
                        .await?
                    {
                        tracing::info!(action = %kind, target = %plan.target, "another action holds a target; trying again shortly");
                        self.metric(|m| m.guard_drop("target_locked"));
                        return Ok(StepResult::TargetBusy);
                    }
                    *locked = true;
                }
            }
            row.status = "applying".into();
            self.store().save_step(lease, &row).await?;
            match step.action.apply(ctx, input, &plan).await {
                Ok(outcome) => return self.applied(lease, row, outcome).await,
                Err(ActionError::Drift(why)) if !replanned => {
                    tracing::info!(action = %kind, why = %crate::redact::scrub(&why), "target drifted since planning; planning again");
                    replanned = true;
                }
                Err(e) if e.is_retryable() && row.attempts < opts.max_attempts => {
                    backoff(opts, row.attempts).await;
                }
                Err(e) => return self.fail(lease, row, Some(plan), &e).await,
            }
        }
    }

    /// Asks the playbook's guards whether the step may change `targets`; the new state and
    /// why when it was held or skipped.
    async fn admitted(
        &self,
        lease: &Lease,
        pb: &Playbook,
        targets: &[String],
    ) -> Result<Option<StepResult>, StoreError> {
        let g = &pb.guards;
        let admission = Admission {
            playbook: &pb.name,
            targets,
            max_targets_per_hour: g.max_targets_per_hour,
            max_runs_per_hour: g.max_runs_per_hour,
            cooldown: g.cooldown.map(|c| Duration::from_secs(c.0)),
            requires_approval: !matches!(pb.approval, ApprovalSpec::None),
        };
        let Some(denial) = self.store().admit(lease, &admission).await? else {
            return Ok(None);
        };
        self.metric(|m| m.guard_drop(denial.code()));
        // An approval the playbook asks for is always waited for, never skipped.
        let (state, what) = match (&denial, g.on_limit) {
            (GuardDenial::ApprovalRequired, _) | (_, OnLimit::Hold) => {
                (ExecState::PendingApproval, "held for approval")
            }
            (_, OnLimit::Skip) => (ExecState::Skipped, "skipped"),
        };
        tracing::warn!(playbook = %pb.name, guard = denial.code(), "{what}: {denial}");
        Ok(Some(StepResult::Held(state, format!("{what}: {denial}"))))
    }

    async fn applied(
        &self,
        lease: &Lease,
        mut row: StepRow,
        outcome: Outcome,
    ) -> Result<StepResult, StoreError> {
        row.status = "applied".into();
        row.outcome = Some(serde_json::to_value(&outcome).unwrap_or_default());
        match self.store().save_step(lease, &row).await {
            Ok(()) => {}
            Err(lost @ StoreError::LeaseLost { .. }) => {
                // The change was made, but another worker owns the execution now: the audit
                // trail still learns what this worker did.
                self.stale_result(lease, &row).await;
                return Err(lost);
            }
            Err(e) => return Err(e),
        }
        self.metric(|m| m.step(&row.action, "applied"));
        Ok(StepResult::Done(true))
    }

    /// Records, outside the execution's (lost) lease, what a step applied by this worker did.
    async fn stale_result(&self, lease: &Lease, row: &StepRow) {
        let event = AuditEvent {
            kind: "step.refused".into(),
            finding_id: Some(lease.finding_id.clone()),
            execution_id: Some(lease.execution_id.clone()),
            detail: serde_json::json!({
                "owner": lease.owner,
                "fence": lease.fence,
                "refused": format!("step.{}", row.status),
                "step": row.idx,
                "action": row.action,
                "outcome": row.outcome,
            }),
        };
        if let Err(e) = self.store().audit(event).await {
            tracing::warn!(error = %e, "cannot record the refused step result in the audit trail");
        }
    }

    async fn fail(
        &self,
        lease: &Lease,
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
        self.store().save_step(lease, &row).await?;
        self.metric(|m| m.step(&row.action, "failed"));
        Ok(StepResult::Done(false))
    }
}

/// The targets guards count for a step: every resource its plan changes; for a message (which
/// changes no resource), the finding's resource it is about.
fn guard_targets(step: &Step, plan: &Plan, finding: &Finding) -> Vec<String> {
    if step.action.locks_target() {
        plan.changed_targets().map(str::to_owned).collect()
    } else {
        vec![finding.primary_resource().map_or_else(
            || finding.fingerprint.0.clone(),
            crate::finding::ResourceRef::key,
        )]
    }
}
