//! The ledger: findings, rejected input, executions and their steps, and the audit trail.
//!
//! State lives here; channels elsewhere are only wake-up hints. Every write that acknowledges
//! input (HTTP 202, SQS delete) happens after the transaction holding it committed. The
//! [`Store`] trait is what the engine and the service use; [`open`] picks the backend from the
//! store URL: [`sqlite::SqliteStore`] is the embedded default and, with `sqlite::memory:`, the
//! ephemeral store of `firebreak run --no-store`; [`postgres::PostgresStore`] is shared by
//! several replicas.
//!
//! The audit trail is append-only and hash-chained: each record's hash covers its content and
//! the previous record's hash, and the head hash is kept separately, so `verify` detects an
//! edited, removed, inserted or reordered record.

mod any;
mod common;
pub mod postgres;
pub mod sqlite;

pub use any::{AnyStore, open, open_with, url_has_password};

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::finding::{Finding, Rejection};

/// Why the store failed.
///
/// The text may quote the store URL (with its password) or a value the database echoed:
/// `Display` and `Debug` scrub it ([`crate::redact::scrub`]), so a `StoreError` can be logged or
/// printed as it is.
#[derive(thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {}", crate::redact::Scrubbed(.0))]
    Database(#[from] sqlx::Error),
    /// A stored value could not be decoded (corruption or a bug).
    #[error("corrupt record in {table}: {}", crate::redact::scrub(.reason))]
    Corrupt {
        /// Table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store URL is not one we can open.
    #[error(
        "unsupported store url `{}`: expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB",
        crate::redact::scrub(.0)
    )]
    UnsupportedUrl(String),
    /// The caller's lease on an execution was taken over (another worker claimed it after the
    /// lease ran out, or it was cancelled): the write was refused and nothing changed. The caller
    /// must stop working on the execution.
    #[error(
        "lease lost on execution {execution_id}: another worker owns it now (or it was cancelled); the write was refused"
    )]
    LeaseLost {
        /// The execution.
        execution_id: String,
    },
    /// `store.password_file` cannot be used: unreadable, empty, or beside a URL that cannot
    /// take it. Names the file, never its content.
    #[error("store.password_file {}: {reason}", .path.display())]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A migration failed.
    #[error("migration {name} failed: {}", crate::redact::Scrubbed(.source))]
    Migration {
        /// Migration name.
        name: &'static str,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
}

impl std::fmt::Debug for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreError")
            .field(&self.to_string())
            .finish()
    }
}

/// A batch of input from one intake, written in one transaction.
#[derive(Debug, Default)]
pub struct IngestBatch {
    /// How it arrived (`http:<token-name>`, `sqs:<queue-name>`, `cli`).
    pub intake: String,
    /// Parsed findings.
    pub findings: Vec<Finding>,
    /// Rejected records.
    pub rejected: Vec<Rejection>,
    /// Rejected records counted but not kept (past an intake's per-payload limit): audited in
    /// the count, no row each.
    pub rejected_omitted: usize,
    /// Only engines claiming with this scope work on these findings (`firebreak run` uses its
    /// own); `None` is the service's shared queue.
    pub scope: Option<String>,
    /// Recorded by a dry run: stored and audited, but never deduplicated against and never the
    /// original a later real finding is counted on, so a rehearsal cannot suppress the real run.
    pub dry_run: bool,
    /// The findings already encoded for the store ([`prepare_finding`]), one per finding, or
    /// empty to have the store encode them. Intakes encode in the submitting task, so the one
    /// writer that commits for everybody only binds what others prepared.
    pub prepared: Vec<PreparedFinding>,
}

/// A finding encoded for the ledger: its stored body and that body's content hash, which the
/// batch's `findings.received` audit record lists.
#[derive(Debug, Clone)]
pub struct PreparedFinding {
    /// The canonical finding as JSON.
    pub body: String,
    /// `sha256:<hex>` of `body`.
    pub sha256: String,
}

/// Encodes `f` as it is stored and audited.
///
/// # Errors
/// The finding cannot be serialised (a bug).
pub fn prepare_finding(f: &Finding) -> Result<PreparedFinding, StoreError> {
    let body = serde_json::to_string(f).map_err(|e| StoreError::Corrupt {
        table: "findings",
        reason: e.to_string(),
    })?;
    let sha256 = body_hash(&body);
    Ok(PreparedFinding { body, sha256 })
}

/// The content hash of a stored finding body, as `findings.received` lists it.
#[must_use]
pub fn body_hash(body: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body.as_bytes())))
}

/// What the store did with one finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The stored finding's id (for a duplicate: the original's id).
    pub id: String,
    /// True when the finding was a duplicate within the dedup window and was counted, not stored.
    pub duplicate: bool,
}

/// A finding claimed for matching.
#[derive(Debug, Clone)]
pub struct ClaimedFinding {
    /// The finding.
    pub finding: Finding,
    /// When it was received (Unix ms).
    pub received_at: i64,
}

/// One execution [`Store::record_matches`] recorded or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchRecord {
    /// Execution id.
    pub id: String,
    /// The lease, when it was created now and leased to the caller.
    pub lease: Option<Lease>,
}

/// One playbook's verdict on a finding, as [`Store::record_matches`] records it.
#[derive(Debug, Clone)]
pub struct MatchInput<'a> {
    /// Playbook name.
    pub playbook: &'a str,
    /// The playbook revision (sha256 of its text) the execution is pinned to.
    pub revision: &'a str,
    /// The file it was loaded from.
    pub file: &'a str,
    /// Its exact text (stored once per revision).
    pub source: &'a str,
    /// `matched` (it acts) or `skipped` (excluded, `when` error).
    pub state: ExecState,
    /// Why, for a skipped match.
    pub reason: Option<String>,
}

/// A stored playbook revision: the exact text an execution started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookRevision {
    /// `sha256:<hex>` of `source`.
    pub revision: String,
    /// Playbook name.
    pub name: String,
    /// The file it was loaded from.
    pub file: String,
    /// The YAML text.
    pub source: String,
}

/// Proof that a worker holds an execution: the lease owner and the fencing token its claim
/// received. Every write about the execution carries it, and the store refuses a write whose
/// token is no longer current ([`StoreError::LeaseLost`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The execution.
    pub execution_id: String,
    /// Its finding.
    pub finding_id: String,
    /// The worker holding it.
    pub owner: String,
    /// The fencing token of the claim (bumped by every claim).
    pub fence: i64,
}

/// States of an execution (one playbook run for one finding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    /// Created; steps not started.
    Matched,
    /// Every step planned (dry-run ends here).
    Planned,
    /// Waiting for approval.
    PendingApproval,
    /// Steps being applied.
    Applying,
    /// Waiting for a step's timer (`after:`); claimed again when it is due.
    Scheduled,
    /// Every step applied.
    Applied,
    /// A step failed.
    Failed,
    /// Cancelled (approval denied, PR closed).
    Cancelled,
    /// Approval expired.
    Expired,
    /// Not run (kill switch, guard, exclusion).
    Skipped,
}

impl ExecState {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ExecState::Matched => "matched",
            ExecState::Planned => "planned",
            ExecState::PendingApproval => "pending_approval",
            ExecState::Applying => "applying",
            ExecState::Scheduled => "scheduled",
            ExecState::Applied => "applied",
            ExecState::Failed => "failed",
            ExecState::Cancelled => "cancelled",
            ExecState::Expired => "expired",
            ExecState::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [
            ExecState::Matched,
            ExecState::Planned,
            ExecState::PendingApproval,
            ExecState::Applying,
            ExecState::Scheduled,
            ExecState::Applied,
            ExecState::Failed,
            ExecState::Cancelled,
            ExecState::Expired,
            ExecState::Skipped,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// Whether no further work happens in this state.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ExecState::Planned
                | ExecState::Applied
                | ExecState::Failed
                | ExecState::Cancelled
                | ExecState::Expired
                | ExecState::Skipped
        )
    }
}

/// An execution claimed for work.
#[derive(Debug, Clone)]
pub struct ClaimedExecution {
    /// Execution id.
    pub id: String,
    /// The claim: every write about the execution carries it.
    pub lease: Lease,
    /// The playbook revision the execution is pinned to (`None`: recorded before revisions
    /// were pinned; the playbook in force by name is used).
    pub revision: Option<String>,
    /// The finding.
    pub finding: Finding,
    /// Playbook name.
    pub playbook: String,
    /// Current state.
    pub state: ExecState,
    /// Steps recorded so far, by index.
    pub steps: Vec<StepRow>,
    /// When the finding was received (Unix ms), for finding-to-action latency.
    pub received_at: i64,
}

/// A stored execution with its steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionRow {
    /// Execution id.
    pub id: String,
    /// Playbook.
    pub playbook: String,
    /// State.
    pub state: ExecState,
    /// Why it is in that state, when recorded.
    pub reason: Option<String>,
    /// Steps recorded, by index.
    pub steps: Vec<StepRow>,
}

/// A recorded step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    /// Step index.
    pub idx: u32,
    /// Action kind.
    pub action: String,
    /// `planned`, `planned_only` (no client to apply with), `scheduled`, `applying`, `applied`,
    /// `failed` or `skipped`.
    pub status: String,
    /// The plan, when made.
    pub plan: Option<Value>,
    /// The outcome, when applied.
    pub outcome: Option<Value>,
    /// Error text (scrubbed).
    pub error: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// For a `scheduled` step: when it is due (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
}

/// What the guards are asked before a step of an execution changes something.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    /// Its playbook (limits are per playbook).
    pub playbook: &'a str,
    /// The keys of every resource the step about to apply changes (its plan's
    /// [`crate::action::Plan::changed_targets`]; for a message, what it is about).
    pub targets: &'a [String],
    /// Blast radius: distinct targets per rolling hour.
    pub max_targets_per_hour: Option<u32>,
    /// Rate limit: executions per rolling hour.
    pub max_runs_per_hour: Option<u32>,
    /// No second action on the same target within this time.
    pub cooldown: Option<Duration>,
    /// The playbook says a person must approve first (`approval:`): without a recorded
    /// approval the execution is held, whatever its limits.
    pub requires_approval: bool,
}

/// Why a guard stopped an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "guard", rename_all = "snake_case")]
pub enum GuardDenial {
    /// `max_targets_per_hour` distinct targets were already acted on.
    BlastRadius {
        /// The limit.
        limit: u32,
    },
    /// `max_runs_per_hour` executions already acted.
    RateLimit {
        /// The limit.
        limit: u32,
    },
    /// The same target was acted on less than `cooldown` ago.
    Cooldown {
        /// The cooldown, in seconds.
        seconds: u64,
    },
    /// The playbook requires approval and none is recorded.
    ApprovalRequired,
}

impl GuardDenial {
    /// The bounded reason code used in metrics.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            GuardDenial::BlastRadius { .. } => "blast_radius",
            GuardDenial::RateLimit { .. } => "rate_limit",
            GuardDenial::Cooldown { .. } => "cooldown",
            GuardDenial::ApprovalRequired => "approval_required",
        }
    }
}

impl std::fmt::Display for GuardDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuardDenial::BlastRadius { limit } => write!(
                f,
                "blast radius: the playbook already acted on {limit} distinct targets in the last hour (guards.max_targets_per_hour)"
            ),
            GuardDenial::RateLimit { limit } => write!(
                f,
                "rate limit: the playbook already acted {limit} times in the last hour (guards.max_runs_per_hour)"
            ),
            GuardDenial::Cooldown { seconds } => write!(
                f,
                "cooldown: the playbook acted on this target less than {seconds}s ago (guards.cooldown)"
            ),
            GuardDenial::ApprovalRequired => write!(
                f,
                "approval required: the playbook asks for approval before it acts (approval:); \
                 approve with `firebreak approvals approve` (GitHub pull-request approval is not wired yet)"
            ),
        }
    }
}

/// An execution waiting for a person (held by a guard, or awaiting approval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingApproval {
    /// Execution id.
    pub execution_id: String,
    /// Finding id.
    pub finding_id: String,
    /// Playbook.
    pub playbook: String,
    /// Why it waits.
    pub reason: Option<String>,
    /// When it was created (Unix ms).
    pub created_at: i64,
}

/// What an execution asks a person to approve: the plan of every step, and the hash over them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalRequest {
    /// `sha256:<hex>` over every step's plan ([`crate::engine::approval::plan_hash`]).
    pub plan_hash: String,
    /// Each step's plan (`{step, action, plan}`), or why it could not be planned
    /// (`{step, action, error}`).
    pub plans: Value,
    /// Approvals needed from distinct allowed reviewers.
    pub min: u32,
    /// Allowed reviewers as configured (users, `@org/team`).
    pub reviewers: Vec<String>,
    /// Where it is asked: `github:owner/repo`, or `None` for the CLI only.
    pub channel: Option<String>,
    /// When it expires (Unix ms).
    pub expires_at: i64,
    /// Merging the approval pull request counts as an approval by whoever merged it.
    #[serde(default)]
    pub merge_approves: bool,
}

/// A stored approval request with its votes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalRow {
    /// The execution.
    pub execution_id: String,
    /// Its finding.
    pub finding_id: String,
    /// Its playbook.
    pub playbook: String,
    /// The request.
    #[serde(flatten)]
    pub request: ApprovalRequest,
    /// The approval pull request, once opened.
    pub pr_number: Option<i64>,
    /// Its head commit when it shows the current revision.
    pub head_sha: Option<String>,
    /// 1 for the first plan, + 1 each time the plan changed before it was applied.
    pub revision: i64,
    /// `pending`, `changes_requested`, `approved`, `expired` or `cancelled`.
    pub state: String,
    /// Votes for the current plan hash.
    pub votes: Vec<Vote>,
}

/// One reviewer's verdict on one plan hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vote {
    /// Who (a GitHub login, or the operator's name).
    pub by: String,
    /// Through which channel: `github-review:<id>`, `github-merge:<pr>`, `cli`.
    pub via: String,
    /// `approved` or `changes_requested`.
    pub verdict: String,
    /// When (Unix ms).
    pub at: i64,
}

/// What a vote did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum VoteOutcome {
    /// Counted; not enough approvals yet.
    Counted {
        /// Approvals for the current plan.
        approvals: u32,
        /// Needed.
        min: u32,
    },
    /// The plan is approved: the execution is released to apply it.
    Approved,
    /// Changes were requested: the execution stays held.
    ChangesRequested,
    /// The vote names another plan than the current one: ignored.
    Stale {
        /// The current plan hash.
        current: String,
    },
    /// No request waits for a vote (unknown, approved, expired or cancelled): ignored.
    NotPending,
}

/// One audit event to append.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What happened: `findings.received` (one per ingest batch: `detail.findings` lists each
    /// stored finding's `id` and `sha256`, the content hash of its stored body),
    /// `finding.deduplicated`, `execution.matched`,
    /// `step.planned`, `step.applied`, `step.failed`, `execution.state`, `kill_switch`, ….
    pub kind: String,
    /// Related finding.
    pub finding_id: Option<String>,
    /// Related execution.
    pub execution_id: Option<String>,
    /// Details (scrubbed before storing).
    pub detail: Value,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain (1-based, no gaps).
    pub seq: i64,
    /// When (Unix ms).
    pub at: i64,
    /// Kind.
    pub kind: String,
    /// Related finding.
    pub finding_id: Option<String>,
    /// Related execution.
    pub execution_id: Option<String>,
    /// Details.
    pub detail: Value,
    /// Hash of the previous record (`genesis` for the first).
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// The hash of the first record's predecessor.
pub const GENESIS: &str = "genesis";

/// The chain hash of a record: SHA-256 over the previous hash and the record's content.
#[must_use]
pub fn audit_hash(
    prev_hash: &str,
    seq: i64,
    at: i64,
    kind: &str,
    finding_id: Option<&str>,
    execution_id: Option<&str>,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash,
        &seq.to_string(),
        &at.to_string(),
        kind,
        finding_id.unwrap_or(""),
        execution_id.unwrap_or(""),
        detail,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: i64,
    /// Problems, each naming the record (empty: the chain is intact).
    pub problems: Vec<String>,
}

/// Filters for listing audit records.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only records after this sequence number.
    pub after_seq: Option<i64>,
    /// Only this finding: the records naming it, and the `findings.received` record of the
    /// batch that stored it.
    pub finding_id: Option<String>,
    /// At most this many.
    pub limit: Option<i64>,
}

/// The ledger operations the engine and the service need.
pub trait Store: Send + Sync + 'static {
    /// Records a batch in one transaction: new findings (state `new`), duplicates within
    /// `dedup_window` counted on the original, rejected records, and their audit lines.
    /// Returns one receipt per finding, in order. Only after this returns may input be acked.
    fn record(
        &self,
        batch: IngestBatch,
        dedup_window: Duration,
    ) -> impl Future<Output = Result<Vec<Receipt>, StoreError>> + Send;

    /// Claims up to `limit` findings in state `new` (or whose lease expired) for `owner`,
    /// only those recorded with `scope` (`None`: the service's shared queue, which also adopts
    /// a run's real findings left unfinished for 15 minutes, e.g. after the run was killed).
    fn claim_findings(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
        scope: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ClaimedFinding>, StoreError>> + Send;

    /// Marks a claimed finding matched and creates one execution per playbook, each pinned to
    /// the playbook revision it matched with (the revision's text is stored once). Idempotent:
    /// an existing execution for the same finding and playbook is kept. With `lease`, up to
    /// `lease.max` of the executions it creates in state `matched` are leased to that owner in
    /// the same transaction (with a fencing token), so the caller can advance them without
    /// claiming them again. Returns one record per playbook, in order.
    fn record_matches(
        &self,
        finding_id: &str,
        matches: &[MatchInput<'_>],
        lease: Option<LeaseRequest<'_>>,
    ) -> impl Future<Output = Result<Vec<MatchRecord>, StoreError>> + Send;

    /// The stored text of a playbook revision an execution is pinned to.
    fn playbook_revision(
        &self,
        revision: &str,
    ) -> impl Future<Output = Result<Option<PlaybookRevision>, StoreError>> + Send;

    /// Claims up to `limit` executions that still have work (non-final state, lease free or
    /// expired, not waiting for a timer or a lock) whose finding was recorded with `scope`.
    /// Every claim bumps the execution's fencing token. While the kill switch is on nothing
    /// is claimed: waiting executions keep their state and due times.
    fn claim_executions(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
        scope: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ClaimedExecution>, StoreError>> + Send;

    /// Executions of findings in `scope` that could still advance now or soon (`matched` or
    /// `applying`, e.g. waiting for a target lock).
    fn waiting_in_scope(&self, scope: &str)
    -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Hands the real (not dry-run) findings of `scope` to the service's shared queue, so what
    /// still waits (a scheduled step, a held execution) is carried out by `serve`. Returns how
    /// many executions were still unfinished.
    fn release_scope(&self, scope: &str) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Every execution of a finding with its steps, oldest first (for reports).
    fn executions_of(
        &self,
        finding_id: &str,
    ) -> impl Future<Output = Result<Vec<ExecutionRow>, StoreError>> + Send;

    /// One execution with its steps, and the id of its finding (for `firebreak rollback`);
    /// `None` when no execution has that id.
    fn execution(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<Option<(String, ExecutionRow)>, StoreError>> + Send;

    /// Upserts a step record and appends its audit line, in one transaction. Refused with
    /// [`StoreError::LeaseLost`] unless `lease` is still current.
    fn save_step(
        &self,
        lease: &Lease,
        step: &StepRow,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets an execution's state (and releases its lease when final), with an audit line.
    /// Refused with [`StoreError::LeaseLost`] unless `lease` is still current.
    fn set_execution_state(
        &self,
        lease: &Lease,
        state: ExecState,
        reason: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the lease on an execution, and the target locks it holds, to `duration` from
    /// now (the database's clock). [`StoreError::LeaseLost`] when another worker took it over.
    fn renew(
        &self,
        lease: &Lease,
        duration: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Releases a claimed execution without changing its state or its due times (the kill
    /// switch is on), with an audit line. It is claimed again after `resume`.
    fn park(
        &self,
        lease: &Lease,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Cancels an execution that has not finished (an operator's decision: e.g. its playbook
    /// was removed), whoever holds it: the state becomes `cancelled`, its fencing token is
    /// bumped so a worker still holding it stops, and the decision is audited with who and
    /// why. Returns false when the execution is unknown or already finished.
    fn cancel(
        &self,
        execution_id: &str,
        by: &str,
        reason: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Appends an audit record.
    fn audit(
        &self,
        event: AuditEvent,
    ) -> impl Future<Output = Result<AuditRecord, StoreError>> + Send;

    /// Lists audit records in chain order.
    fn audit_list(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;

    /// Recomputes the whole chain and reports every break.
    fn audit_verify(&self) -> impl Future<Output = Result<VerifyReport, StoreError>> + Send;

    /// Reads a flag (`kill_switch`).
    fn flag(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets a flag, with an audit line naming who and why.
    fn set_flag(
        &self,
        name: &str,
        on: bool,
        by: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checks the store answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many findings wait to be matched and executions wait for work (queue depth).
    fn backlog(&self) -> impl Future<Output = Result<(i64, i64), StoreError>> + Send;

    /// How many executions are in each state that still has work or waits (`matched`,
    /// `applying`, `scheduled`, `pending_approval`), every one of them listed.
    fn waiting_executions(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// Duplicates counted for a finding.
    fn duplicates(&self, finding_id: &str) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Asks the playbook's guards, atomically, whether a step may change `admission.targets`;
    /// when it may, records each target as acted on by the execution (the first admission of
    /// an execution also counts as a run) and sets it `applying` (audited), in the same
    /// transaction. Targets the execution already acted on pass again (a resumed or later
    /// step is not counted twice), and an execution a person approved passes every limit. A
    /// denial is audited; the state is then the caller's.
    fn admit(
        &self,
        lease: &Lease,
        admission: &Admission<'_>,
    ) -> impl Future<Output = Result<Option<GuardDenial>, StoreError>> + Send;

    /// Takes the locks on every key in `keys` for the execution `lease` holds, until
    /// `duration` passes, all or none. Returns false when another execution holds any of them.
    /// Taking locks the execution already holds extends them; [`Store::renew`] keeps them.
    fn lock_targets(
        &self,
        lease: &Lease,
        keys: &[String],
        duration: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases every target lock the execution `lease` holds.
    fn unlock_targets(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the lock on `key` for `owner` (an operator's rollback, not an engine) until
    /// `lease` passes. Returns false when another owner holds it. Taking a lock one already
    /// holds extends it.
    fn lock_target(
        &self,
        key: &str,
        owner: &str,
        execution_id: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases `owner`'s lock on `key` (a no-op when it holds none).
    fn unlock_target(
        &self,
        key: &str,
        owner: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Releases a claimed execution without changing its state, to be claimed again no
    /// earlier than `wake_at` (Unix ms).
    fn defer_execution(
        &self,
        lease: &Lease,
        wake_at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Schedules step `step.idx` (saved as `scheduled` with `due_at`): a durable timer row, the
    /// execution set `scheduled` and released until then, and an audit line, in one transaction.
    fn schedule_step(
        &self,
        lease: &Lease,
        step: &StepRow,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A stored finding, by id.
    fn finding(
        &self,
        finding_id: &str,
    ) -> impl Future<Output = Result<Option<Finding>, StoreError>> + Send;

    /// The evidence bundle recorded under `sha256` (as an outcome's `detail.evidence.sha256`
    /// names it), if any.
    fn evidence(
        &self,
        sha256: &str,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Holds the execution `lease` holds for approval of `request` (state `pending_approval`,
    /// lease released): a new request, or a new revision of the plan when the execution has
    /// one already (votes for the old plan no longer count). Audited. Returns the revision.
    fn request_approval(
        &self,
        lease: &Lease,
        request: &ApprovalRequest,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The approval request of an execution, with the votes for its current plan.
    fn approval(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<Option<ApprovalRow>, StoreError>> + Send;

    /// The approval request shown by pull request `pr_number` on `channel`
    /// (`github:owner/repo`), whatever its state.
    fn approval_for_pr(
        &self,
        channel: &str,
        pr_number: i64,
    ) -> impl Future<Output = Result<Option<ApprovalRow>, StoreError>> + Send;

    /// Whether a GitHub webhook delivery id was recorded as handled.
    fn delivery_seen(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a GitHub webhook delivery id as handled; `false` when it was recorded before (a
    /// redelivery or a replay, to be ignored).
    fn first_delivery(
        &self,
        id: &str,
        event: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Approval requests still waiting for votes (`pending`, `changes_requested`), oldest first.
    fn open_approvals(&self) -> impl Future<Output = Result<Vec<ApprovalRow>, StoreError>> + Send;

    /// Records where revision `revision` of a request is shown: its pull request and head
    /// commit. Ignored when the request has moved to another revision since.
    fn set_approval_pr(
        &self,
        execution_id: &str,
        revision: i64,
        pr_number: i64,
        head_sha: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A reviewer's verdict on plan `plan_hash` of an execution (the caller has checked the
    /// reviewer may vote). Counted only for the current plan of a request still waiting; once
    /// `min` distinct reviewers approved it, the execution is released to apply it. Audited
    /// with who, through which channel, and the hash.
    fn vote(
        &self,
        execution_id: &str,
        plan_hash: &str,
        vote: &Vote,
    ) -> impl Future<Output = Result<VoteOutcome, StoreError>> + Send;

    /// Expires every request still waiting whose time is up at `now`: the request and the
    /// execution end `expired` (audited). Returns them (to comment on and close their PRs).
    fn expire_approvals(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<Vec<ApprovalRow>, StoreError>> + Send;

    /// Ends a request still waiting as `cancelled` and cancels its execution (its pull request
    /// was closed unmerged, or an operator denied it), audited with who, how and why. Returns
    /// false when nothing was waiting.
    fn close_approval(
        &self,
        execution_id: &str,
        by: &str,
        via: &str,
        reason: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Executions waiting for a person, oldest first.
    fn pending_approvals(
        &self,
    ) -> impl Future<Output = Result<Vec<PendingApproval>, StoreError>> + Send;

    /// Decides a pending execution: approve (it runs, past its guards) or deny (cancelled).
    /// Returns false when the execution is not pending. Audited with who and why.
    fn decide(
        &self,
        execution_id: &str,
        approve: bool,
        by: &str,
        reason: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// What [`Store::record_matches`] may lease to its caller.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    /// The worker.
    pub owner: &'a str,
    /// How long the lease lasts unless renewed.
    pub duration: Duration,
    /// At most this many new executions (what the worker can start now).
    pub max: usize,
}

/// A store in memory, gone when dropped (`firebreak run --no-store`): the same implementation
/// and migrations as the embedded default, nothing written to disk.
///
/// # Errors
/// The database cannot be created (out of memory).
pub async fn memory() -> Result<sqlite::SqliteStore, StoreError> {
    sqlite::SqliteStore::open(MEMORY_URL).await
}

/// The URL of an in-memory store.
pub const MEMORY_URL: &str = "sqlite::memory:";

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Scrubs and serialises audit details.
#[must_use]
pub fn audit_detail(detail: &Value) -> String {
    let mut d = detail.clone();
    crate::redact::scrub_json(&mut d);
    crate::action::canonical_json(&d)
}
