//! The embedded default store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! All writes go through one connection behind a mutex, in `BEGIN IMMEDIATE` transactions, so
//! the audit chain is appended in order and no transaction has to upgrade a read lock. Reads
//! use a small pool. Ingest batches are grouped by the caller (see `crate::ingest`), so many
//! concurrent requests share one commit.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::Mutex;

use super::common::{
    Entry, Link, ROWS_PER_INSERT, audit_record, corrupt, decode_finding, insert_rows,
    listed_findings, ms, outcome_json, received_detail, step_event,
};
use super::{
    Admission, ApprovalRequest, ApprovalRow, AuditEvent, AuditQuery, AuditRecord, ClaimedExecution,
    ClaimedFinding, ExecState, ExecutionRow, GENESIS, GuardDenial, IngestBatch, Lease,
    LeaseRequest, MatchInput, MatchRecord, PendingApproval, PlaybookRevision, PreparedFinding,
    Receipt, StepRow, Store, StoreError, VerifyReport, Vote, VoteOutcome, audit_detail, audit_hash,
    body_hash, now_ms, prepare_finding,
};
use crate::finding::Finding;

/// Migrations, in order; applied ones are recorded in `schema_migrations`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("migrations/sqlite_0001_init.sql")),
    (
        "0002_guards_schedules",
        include_str!("migrations/sqlite_0002_guards_schedules.sql"),
    ),
    (
        "0003_evidence",
        include_str!("migrations/sqlite_0003_evidence.sql"),
    ),
    (
        "0004_batch_audit",
        include_str!("migrations/sqlite_0004_batch_audit.sql"),
    ),
    (
        "0005_fenced_leases",
        include_str!("migrations/sqlite_0005_fenced_leases.sql"),
    ),
    (
        "0006_approvals",
        include_str!("migrations/sqlite_0006_approvals.sql"),
    ),
    (
        "0007_github_decisions",
        include_str!("migrations/sqlite_0007_github_decisions.sql"),
    ),
    (
        "0008_urgency",
        include_str!("migrations/sqlite_0008_urgency.sql"),
    ),
];

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: Mutex<SqliteConnection>,
    readers: SqlitePool,
    checkpointer: tokio::task::JoinHandle<()>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// Real (not dry-run) findings a `firebreak run` recorded under its own scope and did not hand
/// over are taken by the service's shared queue after this long: a run killed mid-way leaves
/// no remediation behind. Leases still keep two engines off the same item.
const ORPHANED_RUN_AFTER: Duration = Duration::from_secs(15 * 60);

/// How often the WAL is copied back into the database file, off the commit path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Above this many bytes the WAL is truncated (see [`SqliteStore::open_with`]).
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// How long a truncating checkpoint may wait for readers and the writer before it gives up
/// until the next tick: the longest it can hold up a commit.
const TRUNCATE_WAIT: Duration = Duration::from_millis(100);

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// Page size of a newly created database (an existing one keeps its own). A stored finding is
/// about 1.8 KB, so 4 KiB pages hold two and every commit writes a WAL frame (page plus header,
/// misaligned with the OS's pages) per two findings; with 16 KiB pages a commit writes fewer,
/// larger frames: ingest measured 52k -> 63k findings/s at 100 per POST, same `synchronous=FULL`.
const PAGE_SIZE: u32 = 16 * 1024;

fn options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    if !url.starts_with("sqlite:") {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|_| StoreError::UnsupportedUrl(url.to_owned()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .page_size(PAGE_SIZE)
        .foreign_keys(true))
}

impl SqliteStore {
    /// The recorded steps of an execution, by index.
    async fn steps_of(&self, execution_id: &str) -> Result<Vec<StepRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, action, status, plan, outcome, error, attempts, due_at FROM steps WHERE execution_id = ? ORDER BY idx",
        )
        .bind(execution_id)
        .fetch_all(&self.readers)
        .await?;
        let mut steps = Vec::with_capacity(rows.len());
        for s in rows {
            let plan: Option<String> = s.try_get("plan")?;
            let outcome: Option<String> = s.try_get("outcome")?;
            steps.push(StepRow {
                idx: u32::try_from(s.try_get::<i64, _>("idx")?).unwrap_or(u32::MAX),
                action: s.try_get("action")?,
                status: s.try_get("status")?,
                plan: plan.and_then(|p| serde_json::from_str(&p).ok()),
                outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
                error: s.try_get("error")?,
                attempts: u32::try_from(s.try_get::<i64, _>("attempts")?).unwrap_or(0),
                due_at: s.try_get("due_at")?,
            });
        }
        Ok(steps)
    }

    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`) and migrates it.
    ///
    /// # Errors
    /// Unsupported URL, unopenable file, failed migration.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, WAL_LIMIT_BYTES).await
    }

    /// [`Self::open`], keeping the write-ahead log near `wal_limit` bytes.
    ///
    /// Commits only append to the WAL (and fsync it); copying it back into the database file
    /// — SQLite's automatic checkpoint, which would otherwise run inside whichever commit
    /// crosses 1,000 pages — is done every 500 ms by a background task on its own connection
    /// (`PASSIVE`: it never waits for anyone). A passive checkpoint cannot shrink the file, and
    /// while readers keep the log in use SQLite never starts it over, so under continuous load
    /// it would grow without end: once the log holds more than `wal_limit` bytes the task asks
    /// for a `TRUNCATE` checkpoint, which waits at most 100 ms for readers and writers (the
    /// longest it can hold up a commit) and otherwise tries again on the next tick.
    ///
    /// # Errors
    /// Unsupported URL, unopenable file, failed migration.
    pub async fn open_with(url: &str, wal_limit: u64) -> Result<Self, StoreError> {
        let limit = i64::try_from(wal_limit).unwrap_or(i64::MAX);
        // When the log does start over, its file is cut back to the limit.
        let opts = options(url)?.pragma("journal_size_limit", limit.to_string());
        let mut writer = SqliteConnection::connect_with(&opts).await?;
        migrate(&mut writer).await?;
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(&mut writer)
            .await?;
        let mut checkpoint_conn =
            SqliteConnection::connect_with(&opts.clone().busy_timeout(TRUNCATE_WAIT)).await?;
        let page: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut checkpoint_conn)
            .await?;
        // WAL frames are a page plus a 24-byte header.
        let limit_frames = limit / (page + 24).max(1);
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        let checkpointer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = checkpoint(&mut checkpoint_conn, limit_frames).await {
                    tracing::warn!(error = %crate::redact::Scrubbed(&e), "WAL checkpoint failed; retrying");
                }
            }
        });
        Ok(Self {
            writer: Mutex::new(writer),
            readers,
            checkpointer,
        })
    }
}

/// One checkpoint tick: copy what it can without waiting; truncate the log when it is over
/// `limit_frames` frames long.
async fn checkpoint(conn: &mut SqliteConnection, limit_frames: i64) -> Result<(), sqlx::Error> {
    // (busy, frames in the log, frames copied)
    let (_, frames, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    if frames > limit_frames {
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await?;
        if busy != 0 {
            tracing::debug!(
                frames,
                "the WAL is over its limit but in use; truncating on the next tick"
            );
        }
    }
    Ok(())
}

async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)")
        .execute(&mut *conn)
        .await?;
    for (name, sql) in MIGRATIONS {
        let done: Option<String> =
            sqlx::query_scalar("SELECT name FROM schema_migrations WHERE name = ?")
                .bind(*name)
                .fetch_optional(&mut *conn)
                .await?;
        if done.is_some() {
            continue;
        }
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::Migration { name, source })?;
        sqlx::query("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)")
            .bind(*name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Appends an audit record about one execution of one finding, inside an open transaction.
async fn audit_about(
    conn: &mut SqliteConnection,
    kind: &str,
    finding_id: &str,
    execution_id: &str,
    detail: Value,
) -> Result<(), StoreError> {
    let event = AuditEvent {
        kind: kind.to_owned(),
        finding_id: Some(finding_id.to_owned()),
        execution_id: Some(execution_id.to_owned()),
        detail,
    };
    append_audit(conn, &event).await.map(|_| ())
}

/// Appends one audit record inside an open transaction.
async fn append_audit(
    conn: &mut SqliteConnection,
    event: &AuditEvent,
) -> Result<AuditRecord, StoreError> {
    let entry = Entry::from(event);
    let (seq, at, prev_hash, hash) = append_audit_many(conn, std::slice::from_ref(&entry))
        .await?
        .pop()
        .ok_or_else(|| corrupt("audit", "appending one record returned none"))?;
    Ok(audit_record(entry, (seq, at, prev_hash, hash)))
}

/// Appends `entries` in order inside an open transaction: one read of the chain's head, the
/// hashes computed in memory, multi-row inserts, and one update of the separately kept head.
/// Returns each record's `(seq, at, prev_hash, hash)`.
async fn append_audit_many(
    conn: &mut SqliteConnection,
    entries: &[Entry],
) -> Result<Vec<Link>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let head = audit_head(conn).await?;
    append_audit_after(conn, head, entries).await
}

/// The newest audit record's `(seq, hash)`, or `(0, genesis)` for an empty chain. Inside a
/// `BEGIN IMMEDIATE` transaction nobody else can move it until the commit.
async fn audit_head(conn: &mut SqliteConnection) -> Result<(i64, String), StoreError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(head.unwrap_or_else(|| (0, GENESIS.to_owned())))
}

/// [`append_audit_many`] after a head read earlier in the same transaction.
async fn append_audit_after(
    conn: &mut SqliteConnection,
    (mut seq, mut prev_hash): (i64, String),
    entries: &[Entry],
) -> Result<Vec<Link>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let at = now_ms();
    let mut chain = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let hash = audit_hash(
            &prev_hash,
            seq,
            at,
            &e.kind,
            e.finding_id.as_deref(),
            e.execution_id.as_deref(),
            &e.detail,
        );
        chain.push((
            seq,
            at,
            std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        ));
    }
    let rows: Vec<(&Entry, &Link)> = entries.iter().zip(&chain).collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit (seq, at, kind, finding_id, execution_id, detail, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, (e, (seq, at, prev, hash))| {
            b.push_bind(*seq)
                .push_bind(*at)
                .push_bind(e.kind.as_str())
                .push_bind(e.finding_id.as_deref())
                .push_bind(e.execution_id.as_deref())
                .push_bind(e.detail.as_str())
                .push_bind(prev.as_str())
                .push_bind(hash.as_str());
        });
        q.build().execute(&mut *conn).await?;
    }
    // The head is kept apart from the chain so that deleting the newest records is detected.
    sqlx::query("INSERT INTO meta (key, value) VALUES ('audit_head', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(format!("{seq}:{prev_hash}"))
        .execute(&mut *conn)
        .await?;
    Ok(chain)
}

/// For each fingerprint in `findings`, the earliest real (not dry-run) finding stored with it
/// since `since`, looked up in chunks rather than one statement per finding.
async fn originals_since(
    conn: &mut SqliteConnection,
    findings: &[Finding],
    since: i64,
) -> Result<HashMap<String, String>, StoreError> {
    let mut fps: Vec<&str> = findings.iter().map(|f| f.fingerprint.0.as_str()).collect();
    fps.sort_unstable();
    fps.dedup();
    let mut out = HashMap::new();
    for chunk in fps.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT fingerprint, id FROM findings WHERE dry_run = 0 AND received_at >= ",
        );
        q.push_bind(since).push(" AND fingerprint IN (");
        let mut sep = q.separated(", ");
        for fp in chunk {
            sep.push_bind((*fp).to_owned());
        }
        q.push(") ORDER BY received_at, id");
        let rows: Vec<(String, String)> = q.build_query_as().fetch_all(&mut *conn).await?;
        for (fp, id) in rows {
            out.entry(fp).or_insert(id);
        }
    }
    Ok(out)
}

/// Refuses, inside an open write transaction, a write from a worker whose lease on the
/// execution is no longer current (another worker claimed it since, or it was cancelled).
/// Nothing else can move the lease until the transaction ends.
async fn fenced(conn: &mut SqliteConnection, lease: &Lease) -> Result<(), StoreError> {
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM executions WHERE id = ? AND lease_owner = ? AND fence = ?",
    )
    .bind(&lease.execution_id)
    .bind(&lease.owner)
    .bind(lease.fence)
    .fetch_optional(&mut *conn)
    .await?;
    match current {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseLost {
            execution_id: lease.execution_id.clone(),
        }),
    }
}

/// Releases every target lock the execution `lease` holds, inside an open transaction.
async fn release_locks(conn: &mut SqliteConnection, lease: &Lease) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM locks WHERE execution_id = ? AND owner = ?")
        .bind(&lease.execution_id)
        .bind(&lease.owner)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The columns [`approval_row`] reads, joined with the execution.
const APPROVAL_COLUMNS: &str = "a.execution_id, e.finding_id, e.playbook, a.plan_hash, a.plans, \
    a.min_approvals, a.reviewers, a.channel, a.pr_number, a.head_sha, a.revision, a.state, \
    a.expires_at, a.merge_approves FROM approval_requests a JOIN executions e ON e.id = a.execution_id";

/// An approval request row, with the votes for its current plan.
async fn approval_row(
    conn: &mut SqliteConnection,
    r: &sqlx::sqlite::SqliteRow,
) -> Result<ApprovalRow, StoreError> {
    let execution_id: String = r.try_get("execution_id")?;
    let plan_hash: String = r.try_get("plan_hash")?;
    let plans: String = r.try_get("plans")?;
    let reviewers: String = r.try_get("reviewers")?;
    let votes: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT by, via, verdict, at FROM approval_votes WHERE execution_id = ? AND plan_hash = ? \
         ORDER BY at, by",
    )
    .bind(&execution_id)
    .bind(&plan_hash)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ApprovalRow {
        finding_id: r.try_get("finding_id")?,
        playbook: r.try_get("playbook")?,
        request: ApprovalRequest {
            plan_hash,
            plans: serde_json::from_str(&plans)
                .map_err(|e| corrupt("approval_requests", e.to_string()))?,
            min: u32::try_from(r.try_get::<i64, _>("min_approvals")?).unwrap_or(u32::MAX),
            reviewers: serde_json::from_str(&reviewers)
                .map_err(|e| corrupt("approval_requests", e.to_string()))?,
            channel: r.try_get("channel")?,
            expires_at: r.try_get("expires_at")?,
            merge_approves: r.try_get("merge_approves")?,
        },
        pr_number: r.try_get("pr_number")?,
        head_sha: r.try_get("head_sha")?,
        revision: r.try_get("revision")?,
        state: r.try_get("state")?,
        votes: votes
            .into_iter()
            .map(|(by, via, verdict, at)| Vote {
                by,
                via,
                verdict,
                at,
            })
            .collect(),
        execution_id,
    })
}

/// The approval requests `sql` (a `WHERE …` clause over [`APPROVAL_COLUMNS`]) selects.
async fn approval_rows(
    conn: &mut SqliteConnection,
    clause: &str,
    bind: Option<&str>,
) -> Result<Vec<ApprovalRow>, StoreError> {
    let sql = format!("SELECT {APPROVAL_COLUMNS} {clause}");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(b) = bind {
        q = q.bind(b.to_owned());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(approval_row(conn, r).await?);
    }
    Ok(out)
}

/// Upserts a step and appends its audit line, inside an open transaction. A step leaving
/// `scheduled` marks its timer fired.
async fn upsert_step(
    conn: &mut SqliteConnection,
    execution_id: &str,
    finding_id: &str,
    step: &StepRow,
) -> Result<(), StoreError> {
    let now = now_ms();
    // An evidence bundle in the outcome goes to the `evidence` table, content-addressed; the
    // step and its audit line keep the reference (sha256 and size).
    let mut outcome = step.outcome.clone();
    let bundle = outcome
        .as_mut()
        .and_then(crate::action::take_evidence_bundle);
    if let Some(bundle) = bundle {
        let body = audit_detail(&bundle);
        let sha256 = format!("sha256:{}", hex::encode(Sha256::digest(body.as_bytes())));
        sqlx::query(
            "INSERT INTO evidence (sha256, execution_id, step_idx, finding_id, action, recorded_at, bytes, body) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&sha256)
        .bind(execution_id)
        .bind(i64::from(step.idx))
        .bind(finding_id)
        .bind(&step.action)
        .bind(now)
        .bind(i64::try_from(body.len()).unwrap_or(i64::MAX))
        .bind(&body)
        .execute(&mut *conn)
        .await?;
        if let Some(reference) = outcome
            .as_mut()
            .and_then(|o| o.pointer_mut("/detail/evidence"))
            .and_then(Value::as_object_mut)
        {
            reference.insert("sha256".into(), Value::String(sha256));
            reference.insert("stored".into(), Value::String("evidence".into()));
        }
    }
    let step = &StepRow {
        outcome,
        ..step.clone()
    };
    let plan_hash = step
        .plan
        .as_ref()
        .and_then(|p| p.get("hash"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    sqlx::query(
        "INSERT INTO steps (execution_id, idx, action, status, plan, plan_hash, outcome, error, attempts, updated_at, due_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (execution_id, idx) DO UPDATE SET status = excluded.status, plan = excluded.plan, \
           plan_hash = excluded.plan_hash, outcome = excluded.outcome, error = excluded.error, \
           attempts = excluded.attempts, updated_at = excluded.updated_at, due_at = excluded.due_at",
    )
    .bind(execution_id)
    .bind(i64::from(step.idx))
    .bind(&step.action)
    .bind(&step.status)
    .bind(step.plan.as_ref().map(audit_detail))
    .bind(&plan_hash)
    .bind(step.outcome.as_ref().map(outcome_json))
    .bind(step.error.as_deref().map(|e| crate::redact::scrub(e).into_owned()))
    .bind(i64::from(step.attempts))
    .bind(now)
    .bind(step.due_at)
    .execute(&mut *conn)
    .await?;
    if step.status != "scheduled" {
        sqlx::query(
            "UPDATE schedules SET fired_at = ? WHERE execution_id = ? AND idx = ? AND fired_at IS NULL",
        )
        .bind(now)
        .bind(execution_id)
        .bind(i64::from(step.idx))
        .execute(&mut *conn)
        .await?;
    }
    append_audit(
        conn,
        &step_event(execution_id, finding_id, step, plan_hash.as_deref()),
    )
    .await?;
    Ok(())
}

/// Sets an execution's state (releasing its lease when final) with an audit line, inside an
/// open transaction.
async fn set_state(
    conn: &mut SqliteConnection,
    execution_id: &str,
    finding_id: &str,
    state: ExecState,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    let release = state.is_final();
    sqlx::query(
        "UPDATE executions SET state = ?, reason = ?, updated_at = ?, \
           lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END, \
           lease_until = CASE WHEN ? THEN NULL ELSE lease_until END WHERE id = ?",
    )
    .bind(state.as_str())
    .bind(reason)
    .bind(now_ms())
    .bind(release)
    .bind(release)
    .bind(execution_id)
    .execute(&mut *conn)
    .await?;
    append_audit(
        conn,
        &AuditEvent {
            kind: "execution.state".into(),
            finding_id: Some(finding_id.to_owned()),
            execution_id: Some(execution_id.to_owned()),
            detail: serde_json::json!({ "state": state.as_str(), "reason": reason }),
        },
    )
    .await?;
    Ok(())
}

impl Store for SqliteStore {
    async fn record(
        &self,
        mut batch: IngestBatch,
        dedup_window: Duration,
    ) -> Result<Vec<Receipt>, StoreError> {
        // Statements per batch, not per finding: with sqlx every statement is a round trip to
        // the connection's thread, so rows are written with multi-row INSERTs and the audit
        // chain is extended in memory from one read of its head.
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let dedup = !dedup_window.is_zero() && !batch.dry_run;
        let mut originals = if dedup {
            originals_since(&mut tx, &batch.findings, now - ms(dedup_window)).await?
        } else {
            HashMap::new()
        };
        // The batch's `findings.received` record comes first among its audit records, so its
        // sequence number is known before the findings that point at it are inserted.
        let head = audit_head(&mut tx).await?;
        let received_seq = head.0 + 1;
        let mut receipts = Vec::with_capacity(batch.findings.len());
        let mut fresh: Vec<(&Finding, String, PreparedFinding)> =
            Vec::with_capacity(batch.findings.len());
        let mut dup_counts: Vec<(String, i64)> = Vec::new();
        let mut events: Vec<Entry> = Vec::with_capacity(3);
        let mut prepared = std::mem::take(&mut batch.prepared).into_iter();
        let encoded = prepared.len() == batch.findings.len();
        for f in &batch.findings {
            let ready = if encoded { prepared.next() } else { None };
            if dedup {
                if let Some(original) = originals.get(&f.fingerprint.0) {
                    match dup_counts.iter_mut().find(|(id, _)| id == original) {
                        Some((_, n)) => *n += 1,
                        None => dup_counts.push((original.clone(), 1)),
                    }
                    receipts.push(Receipt {
                        id: original.clone(),
                        duplicate: true,
                    });
                    continue;
                }
                originals.insert(f.fingerprint.0.clone(), f.id.to_string());
            }
            let p = match ready {
                Some(p) => p,
                None => prepare_finding(f)?,
            };
            let id = f.id.to_string();
            receipts.push(Receipt {
                id: id.clone(),
                duplicate: false,
            });
            fresh.push((f, id, p));
        }
        let mut rest = fresh.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(insert_rows(rest.len()));
            rest = tail;
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO findings (id, fingerprint, source, rule, severity, class, intake, received_at, body, state, scope, dry_run, audit_seq) ",
            );
            q.push_values(chunk, |mut b, (f, id, p)| {
                b.push_bind(id.as_str())
                    .push_bind(f.fingerprint.0.as_str())
                    .push_bind(f.source.as_str())
                    .push_bind(f.rule.as_str())
                    .push_bind(f.severity.as_str())
                    .push_bind(f.class.as_str())
                    .push_bind(batch.intake.as_str())
                    .push_bind(now)
                    .push_bind(p.body.as_str())
                    .push_bind("new")
                    .push_bind(batch.scope.as_deref())
                    .push_bind(batch.dry_run)
                    .push_bind(received_seq);
            });
            q.build().execute(&mut *tx).await?;
        }
        if !fresh.is_empty() {
            events.push(Entry {
                kind: "findings.received".into(),
                finding_id: None,
                execution_id: None,
                detail: received_detail(&batch.intake, batch.dry_run, &fresh)?,
            });
        }
        for (original, n) in &dup_counts {
            let count: i64 = sqlx::query_scalar(
                "INSERT INTO duplicates (finding_id, count, last_seen_at) VALUES (?, ?, ?) \
                 ON CONFLICT (finding_id) DO UPDATE SET count = count + excluded.count, last_seen_at = excluded.last_seen_at \
                 RETURNING count",
            )
            .bind(original)
            .bind(*n)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            if count == *n {
                // One line per storm: the first duplicates say deduplication started.
                events.push(Entry::from(&AuditEvent {
                    kind: "finding.deduplicated".into(),
                    finding_id: Some(original.clone()),
                    execution_id: None,
                    detail: serde_json::json!({
                        "window_seconds": dedup_window.as_secs(),
                        "note": "further copies within the window are counted, not stored or acted on",
                    }),
                }));
            }
        }
        for chunk in batch.rejected.chunks(ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO rejected (received_at, intake, source, parser, record_index, line, pointer, reason) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(now)
                    .push_bind(batch.intake.clone())
                    .push_bind(r.source.clone())
                    .push_bind(r.parser.clone())
                    .push_bind(i64::try_from(r.index).unwrap_or(i64::MAX))
                    .push_bind(r.line.and_then(|l| i64::try_from(l).ok()))
                    .push_bind(r.pointer.clone())
                    .push_bind(r.reason.clone());
            });
            q.build().execute(&mut *tx).await?;
        }
        if !batch.rejected.is_empty() {
            let mut detail = serde_json::json!({
                "intake": batch.intake,
                "records": batch.rejected.len() + batch.rejected_omitted,
            });
            if batch.rejected_omitted > 0 {
                detail["kept"] = batch.rejected.len().into();
            }
            events.push(Entry::from(&AuditEvent {
                kind: "input.rejected".into(),
                finding_id: None,
                execution_id: None,
                detail,
            }));
        }
        append_audit_after(&mut tx, head, &events).await?;
        tx.commit().await?;
        Ok(receipts)
    }

    async fn claim_findings(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
        scope: Option<&str>,
    ) -> Result<Vec<ClaimedFinding>, StoreError> {
        let mut w = self.writer.lock().await;
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE findings SET lease_owner = ?, lease_until = ? WHERE id IN ( \
               SELECT id FROM findings WHERE state = 'new' \
               AND (scope IS ? OR (? IS NULL AND dry_run = 0 AND received_at < ?)) \
               AND (lease_until IS NULL OR lease_until < ?) \
               ORDER BY urgency DESC, received_at, id LIMIT ?) \
             RETURNING body, received_at",
        )
        .bind(owner)
        .bind(now + ms(lease))
        .bind(scope)
        .bind(scope)
        .bind(now - ms(ORPHANED_RUN_AFTER))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *w)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let body: String = row.try_get("body")?;
            out.push(ClaimedFinding {
                finding: decode_finding(&body)?,
                received_at: row.try_get("received_at")?,
            });
        }
        out.sort_by(|a, b| {
            a.received_at
                .cmp(&b.received_at)
                .then_with(|| a.finding.id.cmp(&b.finding.id))
        });
        Ok(out)
    }

    async fn record_matches(
        &self,
        finding_id: &str,
        matches: &[MatchInput<'_>],
        lease: Option<LeaseRequest<'_>>,
    ) -> Result<Vec<MatchRecord>, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let mut ids = Vec::with_capacity(matches.len());
        let mut leased_count = 0usize;
        for m in matches {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM executions WHERE finding_id = ? AND playbook = ?",
            )
            .bind(finding_id)
            .bind(m.playbook)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = existing {
                ids.push(MatchRecord { id, lease: None });
                continue;
            }
            let id = ulid::Ulid::new().to_string();
            let acts = m.state == ExecState::Matched;
            let leased = lease.filter(|l| acts && leased_count < l.max);
            if leased.is_some() {
                leased_count += 1;
            }
            if acts {
                sqlx::query(
                    "INSERT INTO playbook_revisions (revision, name, file, source, recorded_at) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (revision) DO NOTHING",
                )
                .bind(m.revision)
                .bind(m.playbook)
                .bind(m.file)
                .bind(m.source)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO executions (id, finding_id, playbook, state, reason, created_at, updated_at, \
                   lease_owner, lease_until, fence, playbook_rev) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(finding_id)
            .bind(m.playbook)
            .bind(m.state.as_str())
            .bind(&m.reason)
            .bind(now)
            .bind(now)
            .bind(leased.map(|l| l.owner))
            .bind(leased.map(|l| now + ms(l.duration)))
            .bind(i64::from(leased.is_some()))
            .bind(acts.then_some(m.revision))
            .execute(&mut *tx)
            .await?;
            audit_about(
                &mut tx,
                "execution.matched",
                finding_id,
                &id,
                serde_json::json!({
                    "playbook": m.playbook,
                    "revision": acts.then_some(m.revision),
                    "state": m.state.as_str(),
                    "reason": m.reason,
                }),
            )
            .await?;
            let lease = leased.map(|l| Lease {
                execution_id: id.clone(),
                finding_id: finding_id.to_owned(),
                owner: l.owner.to_owned(),
                fence: 1,
            });
            ids.push(MatchRecord { id, lease });
        }
        sqlx::query("UPDATE findings SET state = 'matched', lease_owner = NULL, lease_until = NULL WHERE id = ?")
            .bind(finding_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn playbook_revision(
        &self,
        revision: &str,
    ) -> Result<Option<PlaybookRevision>, StoreError> {
        let row: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT revision, name, file, source FROM playbook_revisions WHERE revision = ?",
        )
        .bind(revision)
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(|(revision, name, file, source)| PlaybookRevision {
            revision,
            name,
            file,
            source,
        }))
    }

    async fn claim_executions(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
        scope: Option<&str>,
    ) -> Result<Vec<ClaimedExecution>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = {
            let mut w = self.writer.lock().await;
            let now = now_ms();
            // Every claim bumps the fencing token: a worker whose lease ran out and was taken
            // over here has its later writes refused.
            sqlx::query(
                "UPDATE executions SET lease_owner = ?, lease_until = ?, fence = fence + 1 WHERE id IN ( \
                   SELECT e.id FROM executions e JOIN findings f ON f.id = e.finding_id \
                   WHERE e.state IN ('matched', 'applying', 'scheduled') \
                   AND (f.scope IS ? OR (? IS NULL AND f.dry_run = 0 AND f.received_at < ?)) \
                   AND (e.lease_until IS NULL OR e.lease_until < ?) AND (e.wake_at IS NULL OR e.wake_at <= ?) \
                   AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'flag:kill_switch' AND value = 'on') \
                   ORDER BY f.urgency DESC, e.created_at, e.id LIMIT ?) \
                 RETURNING id, finding_id, playbook, state, fence, playbook_rev",
            )
            .bind(owner)
            .bind(now + ms(lease))
            .bind(scope)
            .bind(scope)
            .bind(now - ms(ORPHANED_RUN_AFTER))
            .bind(now)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *w)
            .await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let finding_id: String = row.try_get("finding_id")?;
            let state: String = row.try_get("state")?;
            let (body, received_at): (String, i64) =
                sqlx::query_as("SELECT body, received_at FROM findings WHERE id = ?")
                    .bind(&finding_id)
                    .fetch_one(&self.readers)
                    .await?;
            let steps = self.steps_of(&id).await?;
            out.push(ClaimedExecution {
                lease: Lease {
                    execution_id: id.clone(),
                    finding_id,
                    owner: owner.to_owned(),
                    fence: row.try_get("fence")?,
                },
                revision: row.try_get("playbook_rev")?,
                id,
                finding: decode_finding(&body)?,
                playbook: row.try_get("playbook")?,
                state: ExecState::parse(&state)
                    .ok_or_else(|| corrupt("executions", format!("unknown state `{state}`")))?,
                steps,
                received_at,
            });
        }
        Ok(out)
    }

    async fn waiting_in_scope(&self, scope: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions e JOIN findings f ON f.id = e.finding_id \
             WHERE f.scope = ? AND e.state IN ('matched', 'applying')",
        )
        .bind(scope)
        .fetch_one(&self.readers)
        .await?)
    }

    async fn release_scope(&self, scope: &str) -> Result<i64, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions e JOIN findings f ON f.id = e.finding_id \
             WHERE f.scope = ? AND f.dry_run = 0 \
             AND e.state IN ('matched', 'applying', 'scheduled', 'pending_approval')",
        )
        .bind(scope)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE findings SET scope = NULL WHERE scope = ? AND dry_run = 0")
            .bind(scope)
            .execute(&mut *tx)
            .await?;
        if unfinished > 0 {
            append_audit(
                &mut tx,
                &AuditEvent {
                    kind: "run.handed_over".into(),
                    finding_id: None,
                    execution_id: None,
                    detail: serde_json::json!({ "scope": scope, "executions": unfinished }),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(unfinished)
    }

    async fn executions_of(&self, finding_id: &str) -> Result<Vec<ExecutionRow>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, playbook, state, reason FROM executions WHERE finding_id = ? ORDER BY created_at, id",
        )
        .bind(finding_id)
        .fetch_all(&self.readers)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, playbook, state, reason) in rows {
            let steps = self.steps_of(&id).await?;
            out.push(ExecutionRow {
                state: ExecState::parse(&state)
                    .ok_or_else(|| corrupt("executions", format!("unknown state `{state}`")))?,
                id,
                playbook,
                reason,
                steps,
            });
        }
        Ok(out)
    }

    async fn execution(
        &self,
        execution_id: &str,
    ) -> Result<Option<(String, ExecutionRow)>, StoreError> {
        let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT finding_id, playbook, state, reason FROM executions WHERE id = ?",
        )
        .bind(execution_id)
        .fetch_optional(&self.readers)
        .await?;
        let Some((finding_id, playbook, state, reason)) = row else {
            return Ok(None);
        };
        let steps = self.steps_of(execution_id).await?;
        let row = ExecutionRow {
            id: execution_id.to_owned(),
            playbook,
            state: ExecState::parse(&state)
                .ok_or_else(|| corrupt("executions", format!("unknown state `{state}`")))?,
            reason,
            steps,
        };
        Ok(Some((finding_id, row)))
    }

    async fn save_step(&self, lease: &Lease, step: &StepRow) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        fenced(&mut tx, lease).await?;
        upsert_step(&mut tx, &lease.execution_id, &lease.finding_id, step).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_execution_state(
        &self,
        lease: &Lease,
        state: ExecState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        fenced(&mut tx, lease).await?;
        set_state(
            &mut tx,
            &lease.execution_id,
            &lease.finding_id,
            state,
            reason,
        )
        .await?;
        if state.is_final() {
            release_locks(&mut tx, lease).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let until = now_ms() + ms(duration);
        let renewed = sqlx::query(
            "UPDATE executions SET lease_until = ? WHERE id = ? AND lease_owner = ? AND fence = ?",
        )
        .bind(until)
        .bind(&lease.execution_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if renewed == 0 {
            return Err(StoreError::LeaseLost {
                execution_id: lease.execution_id.clone(),
            });
        }
        sqlx::query("UPDATE locks SET until = ? WHERE execution_id = ? AND owner = ?")
            .bind(until)
            .bind(&lease.execution_id)
            .bind(&lease.owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn park(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        fenced(&mut tx, lease).await?;
        let state: String = sqlx::query_scalar(
            "UPDATE executions SET lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ? \
             RETURNING state",
        )
        .bind(now_ms())
        .bind(&lease.execution_id)
        .fetch_one(&mut *tx)
        .await?;
        release_locks(&mut tx, lease).await?;
        audit_about(
            &mut tx,
            "execution.parked",
            &lease.finding_id,
            &lease.execution_id,
            serde_json::json!({ "state": state, "reason": reason }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cancel(&self, execution_id: &str, by: &str, reason: &str) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT finding_id, state FROM executions WHERE id = ?")
                .bind(execution_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((finding_id, state)) = row else {
            return Ok(false);
        };
        if ExecState::parse(&state).is_none_or(ExecState::is_final) {
            return Ok(false);
        }
        let now = now_ms();
        // A new fencing token: a worker still holding the execution has its next write refused.
        sqlx::query("UPDATE executions SET fence = fence + 1, wake_at = NULL WHERE id = ?")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM locks WHERE execution_id = ?")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE schedules SET fired_at = ? WHERE execution_id = ? AND fired_at IS NULL",
        )
        .bind(now)
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        audit_about(
            &mut tx,
            "execution.cancelled",
            &finding_id,
            execution_id,
            serde_json::json!({ "by": by, "reason": reason, "state_before": state }),
        )
        .await?;
        let why = format!("cancelled by {by}: {reason}");
        set_state(
            &mut tx,
            execution_id,
            &finding_id,
            ExecState::Cancelled,
            Some(&why),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn audit(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let rec = append_audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn audit_list(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, finding_id, execution_id, detail, prev_hash, hash FROM audit \
             WHERE seq > ? AND (? IS NULL OR finding_id = ? \
               OR seq = (SELECT audit_seq FROM findings WHERE id = ?)) ORDER BY seq LIMIT ?",
        )
        .bind(query.after_seq.unwrap_or(0))
        .bind(&query.finding_id)
        .bind(&query.finding_id)
        .bind(&query.finding_id)
        .bind(query.limit.unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRecord {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    finding_id: r.try_get("finding_id")?,
                    execution_id: r.try_get("execution_id")?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
    }

    async fn audit_verify(&self) -> Result<VerifyReport, StoreError> {
        // One read transaction: the chain, the findings it lists and the head come from one
        // snapshot, so records committed while this runs can never look like tampering.
        let mut snap = self.readers.begin().await?;
        let rows = sqlx::query(
            "SELECT seq, at, kind, finding_id, execution_id, detail, prev_hash, hash FROM audit ORDER BY seq",
        )
        .fetch_all(&mut *snap)
        .await?;
        let mut problems = Vec::new();
        let mut expected_prev = GENESIS.to_owned();
        let mut expected_seq = 1i64;
        let mut last: Option<(i64, String)> = None;
        let mut listed: Vec<(i64, String, String)> = Vec::new();
        for r in &rows {
            let seq: i64 = r.try_get("seq")?;
            let detail: String = r.try_get("detail")?;
            let prev: String = r.try_get("prev_hash")?;
            let stored: String = r.try_get("hash")?;
            let finding_id: Option<String> = r.try_get("finding_id")?;
            let execution_id: Option<String> = r.try_get("execution_id")?;
            let kind: String = r.try_get("kind")?;
            if seq != expected_seq {
                problems.push(format!("record {seq}: expected record {expected_seq} here (records removed or inserted)"));
            }
            if prev != expected_prev {
                problems.push(format!("record {seq}: does not follow the previous record (chain broken: removed, inserted or reordered)"));
            }
            let computed = audit_hash(
                &prev,
                seq,
                r.try_get("at")?,
                &kind,
                finding_id.as_deref(),
                execution_id.as_deref(),
                &detail,
            );
            if computed != stored {
                problems.push(format!(
                    "record {seq}: content does not match its hash (edited)"
                ));
            }
            if kind == "findings.received" {
                listed.extend(listed_findings(seq, &detail, &mut problems));
            }
            expected_prev = stored.clone();
            expected_seq = seq + 1;
            last = Some((seq, stored));
        }
        // The chain covers each finding through the body hash its batch record lists.
        for chunk in listed.chunks(ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT id, body FROM findings WHERE id IN (",
            );
            let mut sep = q.separated(", ");
            for (_, id, _) in chunk {
                sep.push_bind(id.as_str());
            }
            q.push(")");
            let bodies: HashMap<String, String> = q
                .build_query_as::<(String, String)>()
                .fetch_all(&mut *snap)
                .await?
                .into_iter()
                .collect();
            for (seq, id, sha256) in chunk {
                match bodies.get(id) {
                    None => problems.push(format!(
                        "record {seq}: lists finding {id}, which is not stored (removed)"
                    )),
                    Some(body) if body_hash(body) != *sha256 => problems.push(format!(
                        "record {seq}: finding {id} does not match the hash recorded for it (edited)"
                    )),
                    Some(_) => {}
                }
            }
        }
        let head: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
                .fetch_optional(&mut *snap)
                .await?;
        snap.rollback().await?;
        match (head, last) {
            (Some(head), Some((seq, hash))) if head != format!("{seq}:{hash}") => problems.push(format!(
                "the newest record is {seq}, but the recorded head is {}: records after it were removed or the head was edited",
                head.split(':').next().unwrap_or("?")
            )),
            (Some(_), None) => problems.push("the audit trail is empty but a head was recorded: records were removed".into()),
            (None, Some(_)) => problems.push("records exist but no head was recorded: the head was removed".into()),
            _ => {}
        }
        Ok(VerifyReport {
            records: i64::try_from(rows.len()).unwrap_or(i64::MAX),
            problems,
        })
    }

    async fn flag(&self, name: &str) -> Result<bool, StoreError> {
        let v: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(format!("flag:{name}"))
            .fetch_optional(&self.readers)
            .await?;
        Ok(v.as_deref() == Some("on"))
    }

    async fn set_flag(&self, name: &str, on: bool, by: &str) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(format!("flag:{name}"))
            .bind(if on { "on" } else { "off" })
            .execute(&mut *tx)
            .await?;
        append_audit(
            &mut tx,
            &AuditEvent {
                kind: format!("flag.{name}"),
                finding_id: None,
                execution_id: None,
                detail: serde_json::json!({ "on": on, "by": by }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn backlog(&self) -> Result<(i64, i64), StoreError> {
        let findings: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM findings WHERE state = 'new'")
            .fetch_one(&self.readers)
            .await?;
        let executions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions WHERE state IN ('matched', 'applying')",
        )
        .fetch_one(&self.readers)
        .await?;
        Ok((findings, executions))
    }

    async fn waiting_executions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM executions \
             WHERE state IN ('matched', 'applying', 'scheduled', 'pending_approval') GROUP BY state",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(["matched", "applying", "scheduled", "pending_approval"]
            .into_iter()
            .map(|state| {
                let n = rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                (state.to_owned(), n)
            })
            .collect())
    }

    async fn duplicates(&self, finding_id: &str) -> Result<i64, StoreError> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT count FROM duplicates WHERE finding_id = ?")
                .bind(finding_id)
                .fetch_optional(&self.readers)
                .await?;
        Ok(n.unwrap_or(0))
    }

    async fn admit(
        &self,
        lease: &Lease,
        a: &Admission<'_>,
    ) -> Result<Option<GuardDenial>, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        fenced(&mut tx, lease).await?;
        let (eid, fid) = (lease.execution_id.as_str(), lease.finding_id.as_str());
        let now = now_ms();
        let admitted: Vec<String> =
            sqlx::query_scalar("SELECT target FROM acted WHERE execution_id = ?")
                .bind(eid)
                .fetch_all(&mut *tx)
                .await?;
        let first = admitted.is_empty();
        let mut fresh: Vec<&str> = Vec::new();
        for t in a.targets {
            if !admitted.contains(t) && !fresh.contains(&t.as_str()) {
                fresh.push(t);
            }
        }
        let (approved, state): (Option<String>, String) =
            sqlx::query_as("SELECT approved_by, state FROM executions WHERE id = ?")
                .bind(eid)
                .fetch_one(&mut *tx)
                .await?;
        let hour_ago = now - 3_600_000;
        let mut denial = None;
        if approved.is_none() && a.requires_approval {
            denial = Some(GuardDenial::ApprovalRequired);
        }
        if approved.is_none() && denial.is_none() && !fresh.is_empty() {
            if let Some(cooldown) = a.cooldown {
                for t in &fresh {
                    let recent: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM acted WHERE playbook = ? AND target = ? AND at > ? AND execution_id != ?",
                    )
                    .bind(a.playbook)
                    .bind(*t)
                    .bind(now - ms(cooldown))
                    .bind(eid)
                    .fetch_one(&mut *tx)
                    .await?;
                    if recent > 0 {
                        denial = Some(GuardDenial::Cooldown {
                            seconds: cooldown.as_secs(),
                        });
                        break;
                    }
                }
            }
            if let (None, Some(limit)) = (&denial, a.max_targets_per_hour) {
                let known: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT target FROM acted WHERE playbook = ? AND at > ?",
                )
                .bind(a.playbook)
                .bind(hour_ago)
                .fetch_all(&mut *tx)
                .await?;
                let unseen = fresh
                    .iter()
                    .filter(|t| !known.iter().any(|k| k == *t))
                    .count();
                if unseen > 0 && known.len() + unseen > usize::try_from(limit).unwrap_or(usize::MAX)
                {
                    denial = Some(GuardDenial::BlastRadius { limit });
                }
            }
            if let (None, Some(limit), true) = (&denial, a.max_runs_per_hour, first) {
                let runs: i64 = sqlx::query_scalar(
                    "SELECT COUNT(DISTINCT execution_id) FROM acted WHERE playbook = ? AND at > ?",
                )
                .bind(a.playbook)
                .bind(hour_ago)
                .fetch_one(&mut *tx)
                .await?;
                if runs >= i64::from(limit) {
                    denial = Some(GuardDenial::RateLimit { limit });
                }
            }
        }
        match &denial {
            None => {
                if state != ExecState::Applying.as_str() {
                    set_state(&mut tx, eid, fid, ExecState::Applying, None).await?;
                }
                for t in &fresh {
                    sqlx::query(
                        "INSERT INTO acted (execution_id, playbook, target, at) VALUES (?, ?, ?, ?) \
                         ON CONFLICT (execution_id, target) DO NOTHING",
                    )
                    .bind(eid)
                    .bind(a.playbook)
                    .bind(*t)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                if let (Some(by), false) = (approved, fresh.is_empty()) {
                    audit_about(
                        &mut tx,
                        "guard.waived",
                        fid,
                        eid,
                        serde_json::json!({ "playbook": a.playbook, "targets": fresh, "approved_by": by }),
                    )
                    .await?;
                }
            }
            Some(d) => {
                audit_about(
                    &mut tx,
                    "guard.denied",
                    fid,
                    eid,
                    serde_json::json!({
                        "playbook": a.playbook,
                        "targets": a.targets,
                        "reason": d.to_string(),
                        "limit": d,
                    }),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(denial)
    }

    async fn lock_targets(
        &self,
        lease: &Lease,
        keys: &[String],
        duration: Duration,
    ) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        fenced(&mut tx, lease).await?;
        let now = now_ms();
        for key in keys {
            // Held by another execution and not expired: busy. A lock of the same execution
            // (held by a worker whose lease this one took over) is taken over.
            let busy: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM locks WHERE key = ? AND execution_id != ? AND until >= ?",
            )
            .bind(key)
            .bind(&lease.execution_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if busy.is_some() {
                return Ok(false);
            }
        }
        for key in keys {
            sqlx::query(
                "INSERT INTO locks (key, owner, execution_id, until) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, \
                   execution_id = excluded.execution_id, until = excluded.until",
            )
            .bind(key)
            .bind(&lease.owner)
            .bind(&lease.execution_id)
            .bind(now + ms(duration))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn unlock_targets(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        release_locks(&mut w, lease).await
    }

    async fn lock_target(
        &self,
        key: &str,
        owner: &str,
        execution_id: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().await;
        let now = now_ms();
        let taken = sqlx::query(
            "INSERT INTO locks (key, owner, execution_id, until) VALUES (?, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, execution_id = excluded.execution_id, \
               until = excluded.until WHERE locks.until < ? OR (locks.owner = excluded.owner AND locks.execution_id = excluded.execution_id)",
        )
        .bind(key)
        .bind(owner)
        .bind(execution_id)
        .bind(now + ms(lease))
        .bind(now)
        .execute(&mut *w)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    async fn unlock_target(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        sqlx::query("DELETE FROM locks WHERE key = ? AND owner = ?")
            .bind(key)
            .bind(owner)
            .execute(&mut *w)
            .await?;
        Ok(())
    }

    async fn defer_execution(&self, lease: &Lease, wake_at: i64) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let deferred = sqlx::query(
            "UPDATE executions SET wake_at = ?, lease_owner = NULL, lease_until = NULL, updated_at = ? \
             WHERE id = ? AND lease_owner = ? AND fence = ?",
        )
        .bind(wake_at)
        .bind(now_ms())
        .bind(&lease.execution_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .execute(&mut *w)
        .await?
        .rows_affected();
        if deferred == 0 {
            return Err(StoreError::LeaseLost {
                execution_id: lease.execution_id.clone(),
            });
        }
        Ok(())
    }

    async fn schedule_step(&self, lease: &Lease, step: &StepRow) -> Result<(), StoreError> {
        let (execution_id, finding_id) = (lease.execution_id.as_str(), lease.finding_id.as_str());
        let due = step.due_at.unwrap_or_else(now_ms);
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        fenced(&mut tx, lease).await?;
        sqlx::query(
            "INSERT INTO schedules (execution_id, idx, action, due_at, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (execution_id, idx) DO NOTHING",
        )
        .bind(execution_id)
        .bind(i64::from(step.idx))
        .bind(&step.action)
        .bind(due)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        upsert_step(&mut tx, execution_id, finding_id, step).await?;
        let reason = format!("step {} ({}) is due at {due}", step.idx, step.action);
        set_state(
            &mut tx,
            execution_id,
            finding_id,
            ExecState::Scheduled,
            Some(&reason),
        )
        .await?;
        sqlx::query(
            "UPDATE executions SET wake_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
        )
        .bind(due)
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        release_locks(&mut tx, lease).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn evidence(&self, sha256: &str) -> Result<Option<Value>, StoreError> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM evidence WHERE sha256 = ?")
            .bind(sha256)
            .fetch_optional(&self.readers)
            .await?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| StoreError::Corrupt {
                table: "evidence",
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    async fn finding(&self, finding_id: &str) -> Result<Option<Finding>, StoreError> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM findings WHERE id = ?")
            .bind(finding_id)
            .fetch_optional(&self.readers)
            .await?;
        body.as_deref().map(decode_finding).transpose()
    }

    async fn request_approval(
        &self,
        lease: &Lease,
        request: &ApprovalRequest,
    ) -> Result<i64, StoreError> {
        let (execution_id, finding_id) = (lease.execution_id.as_str(), lease.finding_id.as_str());
        let plans = crate::action::canonical_json(&request.plans);
        let reviewers = serde_json::to_string(&request.reviewers)
            .map_err(|e| corrupt("approval_requests", e.to_string()))?;
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        fenced(&mut tx, lease).await?;
        let now = now_ms();
        let revision: i64 = sqlx::query_scalar(
            "INSERT INTO approval_requests (execution_id, plan_hash, plans, min_approvals, reviewers, \
               channel, revision, state, expires_at, created_at, updated_at, merge_approves) \
             VALUES (?, ?, ?, ?, ?, ?, 1, 'pending', ?, ?, ?, ?) \
             ON CONFLICT (execution_id) DO UPDATE SET plan_hash = excluded.plan_hash, \
               plans = excluded.plans, min_approvals = excluded.min_approvals, \
               reviewers = excluded.reviewers, channel = excluded.channel, head_sha = NULL, \
               merge_approves = excluded.merge_approves, \
               revision = approval_requests.revision + 1, state = 'pending', \
               expires_at = excluded.expires_at, updated_at = excluded.updated_at \
             RETURNING revision",
        )
        .bind(execution_id)
        .bind(&request.plan_hash)
        .bind(&plans)
        .bind(i64::from(request.min))
        .bind(&reviewers)
        .bind(&request.channel)
        .bind(request.expires_at)
        .bind(now)
        .bind(now)
        .bind(request.merge_approves)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE executions SET approved_by = NULL, wake_at = NULL, lease_owner = NULL, \
             lease_until = NULL WHERE id = ?",
        )
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        release_locks(&mut tx, lease).await?;
        audit_about(
            &mut tx,
            "approval.requested",
            finding_id,
            execution_id,
            serde_json::json!({
                "plan_hash": request.plan_hash,
                "revision": revision,
                "min": request.min,
                "reviewers": request.reviewers,
                "channel": request.channel,
                "expires_at": request.expires_at,
            }),
        )
        .await?;
        let reason = format!(
            "approval required: {} approval(s) of plan {} (revision {revision})",
            request.min, request.plan_hash
        );
        set_state(
            &mut tx,
            execution_id,
            finding_id,
            ExecState::PendingApproval,
            Some(&reason),
        )
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    async fn approval(&self, execution_id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        Ok(
            approval_rows(&mut conn, "WHERE a.execution_id = ?", Some(execution_id))
                .await?
                .pop(),
        )
    }

    async fn approval_for_pr(
        &self,
        channel: &str,
        pr_number: i64,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT execution_id FROM approval_requests WHERE channel = ? AND pr_number = ? \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(channel)
        .bind(pr_number)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        Ok(
            approval_rows(&mut conn, "WHERE a.execution_id = ?", Some(&id))
                .await?
                .pop(),
        )
    }

    async fn delivery_seen(&self, id: &str) -> Result<bool, StoreError> {
        let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM github_deliveries WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.readers)
            .await?;
        Ok(seen.is_some())
    }

    async fn first_delivery(&self, id: &str, event: &str) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().await;
        let inserted = sqlx::query(
            "INSERT INTO github_deliveries (id, event, received_at) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(event)
        .bind(now_ms())
        .execute(&mut *w)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn open_approvals(&self) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        approval_rows(
            &mut conn,
            "WHERE a.state IN ('pending', 'changes_requested') ORDER BY a.created_at, a.execution_id",
            None,
        )
        .await
    }

    async fn set_approval_pr(
        &self,
        execution_id: &str,
        revision: i64,
        pr_number: i64,
        head_sha: &str,
    ) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let finding: Option<String> = sqlx::query_scalar(
            "UPDATE approval_requests SET pr_number = ?, head_sha = ?, updated_at = ? \
             WHERE execution_id = ? AND revision = ? \
             RETURNING (SELECT finding_id FROM executions WHERE id = approval_requests.execution_id)",
        )
        .bind(pr_number)
        .bind(head_sha)
        .bind(now_ms())
        .bind(execution_id)
        .bind(revision)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(finding_id) = finding {
            audit_about(
                &mut tx,
                "approval.published",
                &finding_id,
                execution_id,
                serde_json::json!({
                    "revision": revision,
                    "pr_number": pr_number,
                    "head_sha": head_sha,
                }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn vote(
        &self,
        execution_id: &str,
        plan_hash: &str,
        vote: &Vote,
    ) -> Result<VoteOutcome, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let req: Option<(String, i64, String, String)> = sqlx::query_as(
            "SELECT a.plan_hash, a.min_approvals, a.state, e.finding_id FROM approval_requests a \
             JOIN executions e ON e.id = a.execution_id WHERE a.execution_id = ?",
        )
        .bind(execution_id)
        .fetch_optional(&mut *tx)
        .await?;
        let ignored = |why: &str, finding: Option<String>| AuditEvent {
            kind: "approval.ignored".into(),
            finding_id: finding,
            execution_id: Some(execution_id.to_owned()),
            detail: serde_json::json!({
                "by": vote.by, "via": vote.via, "verdict": vote.verdict,
                "plan_hash": plan_hash, "why": why,
            }),
        };
        let Some((current, min, state, finding_id)) = req else {
            append_audit(&mut tx, &ignored("no approval request", None)).await?;
            tx.commit().await?;
            return Ok(VoteOutcome::NotPending);
        };
        if !matches!(state.as_str(), "pending" | "changes_requested") {
            append_audit(
                &mut tx,
                &ignored(&format!("the request is {state}"), Some(finding_id)),
            )
            .await?;
            tx.commit().await?;
            return Ok(VoteOutcome::NotPending);
        }
        if current != plan_hash {
            append_audit(
                &mut tx,
                &ignored(
                    &format!("stale: the current plan is {current}"),
                    Some(finding_id),
                ),
            )
            .await?;
            tx.commit().await?;
            return Ok(VoteOutcome::Stale { current });
        }
        sqlx::query(
            "INSERT INTO approval_votes (execution_id, plan_hash, by, via, verdict, at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (execution_id, plan_hash, by) DO UPDATE SET \
               via = excluded.via, verdict = excluded.verdict, at = excluded.at",
        )
        .bind(execution_id)
        .bind(plan_hash)
        .bind(&vote.by)
        .bind(&vote.via)
        .bind(&vote.verdict)
        .bind(vote.at)
        .execute(&mut *tx)
        .await?;
        let votes: Vec<(String, String)> = sqlx::query_as(
            "SELECT by, verdict FROM approval_votes WHERE execution_id = ? AND plan_hash = ? ORDER BY at, by",
        )
        .bind(execution_id)
        .bind(plan_hash)
        .fetch_all(&mut *tx)
        .await?;
        let approvers: Vec<&str> = votes
            .iter()
            .filter(|(_, v)| v == "approved")
            .map(|(b, _)| b.as_str())
            .collect();
        let blocked = votes.iter().any(|(_, v)| v == "changes_requested");
        let min = u32::try_from(min).unwrap_or(u32::MAX);
        let approvals = u32::try_from(approvers.len()).unwrap_or(u32::MAX);
        let (new_state, outcome) = if blocked {
            ("changes_requested", VoteOutcome::ChangesRequested)
        } else if approvals >= min {
            ("approved", VoteOutcome::Approved)
        } else {
            ("pending", VoteOutcome::Counted { approvals, min })
        };
        sqlx::query(
            "UPDATE approval_requests SET state = ?, updated_at = ? WHERE execution_id = ?",
        )
        .bind(new_state)
        .bind(now_ms())
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        audit_about(
            &mut tx,
            "approval.vote",
            &finding_id,
            execution_id,
            serde_json::json!({
                "by": vote.by, "via": vote.via, "verdict": vote.verdict,
                "plan_hash": plan_hash, "approvals": approvals, "min": min,
            }),
        )
        .await?;
        if outcome == VoteOutcome::Approved {
            let by = approvers.join(", ");
            sqlx::query(
                "UPDATE executions SET approved_by = ?, wake_at = NULL, lease_owner = NULL, \
                 lease_until = NULL WHERE id = ?",
            )
            .bind(&by)
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
            audit_about(
                &mut tx,
                "approval.granted",
                &finding_id,
                execution_id,
                serde_json::json!({ "by": approvers, "plan_hash": plan_hash, "via": vote.via }),
            )
            .await?;
            set_state(
                &mut tx,
                execution_id,
                &finding_id,
                ExecState::Matched,
                Some(&format!("plan {plan_hash} approved by {by}")),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn expire_approvals(&self, now: i64) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let due: Vec<(String, String)> = sqlx::query_as(
            "UPDATE approval_requests SET state = 'expired', updated_at = ? \
             WHERE state IN ('pending', 'changes_requested') AND expires_at <= ? \
             RETURNING execution_id, (SELECT finding_id FROM executions WHERE id = approval_requests.execution_id)",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (execution_id, finding_id) in &due {
            sqlx::query("UPDATE executions SET fence = fence + 1 WHERE id = ?")
                .bind(execution_id)
                .execute(&mut *tx)
                .await?;
            audit_about(
                &mut tx,
                "approval.expired",
                finding_id,
                execution_id,
                serde_json::json!({ "at": now }),
            )
            .await?;
            set_state(
                &mut tx,
                execution_id,
                finding_id,
                ExecState::Expired,
                Some("not approved in time (approval.github.expires)"),
            )
            .await?;
        }
        tx.commit().await?;
        drop(w);
        let mut out = Vec::with_capacity(due.len());
        let mut conn = self.readers.acquire().await?;
        for (execution_id, _) in &due {
            out.extend(
                approval_rows(&mut conn, "WHERE a.execution_id = ?", Some(execution_id)).await?,
            );
        }
        Ok(out)
    }

    async fn close_approval(
        &self,
        execution_id: &str,
        by: &str,
        via: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let closed: Option<String> = sqlx::query_scalar(
            "UPDATE approval_requests SET state = 'cancelled', updated_at = ? \
             WHERE execution_id = ? AND state IN ('pending', 'changes_requested') \
             RETURNING (SELECT finding_id FROM executions WHERE id = approval_requests.execution_id)",
        )
        .bind(now_ms())
        .bind(execution_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(finding_id) = closed else {
            return Ok(false);
        };
        sqlx::query("UPDATE executions SET fence = fence + 1 WHERE id = ?")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        audit_about(
            &mut tx,
            "approval.cancelled",
            &finding_id,
            execution_id,
            serde_json::json!({ "by": by, "via": via, "reason": reason }),
        )
        .await?;
        set_state(
            &mut tx,
            execution_id,
            &finding_id,
            ExecState::Cancelled,
            Some(&format!("cancelled by {by} ({via}): {reason}")),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn pending_approvals(&self) -> Result<Vec<PendingApproval>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT id, finding_id, playbook, reason, created_at FROM executions \
             WHERE state = 'pending_approval' ORDER BY created_at, id",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(execution_id, finding_id, playbook, reason, created_at)| PendingApproval {
                    execution_id,
                    finding_id,
                    playbook,
                    reason,
                    created_at,
                },
            )
            .collect())
    }

    async fn decide(
        &self,
        execution_id: &str,
        approve: bool,
        by: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().await;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let finding: Option<String> = sqlx::query_scalar(
            "SELECT finding_id FROM executions WHERE id = ? AND state = 'pending_approval'",
        )
        .bind(execution_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(finding_id) = finding else {
            return Ok(false);
        };
        append_audit(
            &mut tx,
            &AuditEvent {
                kind: if approve {
                    "approval.granted"
                } else {
                    "approval.denied"
                }
                .into(),
                finding_id: Some(finding_id.clone()),
                execution_id: Some(execution_id.to_owned()),
                detail: serde_json::json!({ "by": by, "reason": reason, "via": "cli" }),
            },
        )
        .await?;
        let why = format!(
            "{} by {by}: {reason}",
            if approve { "approved" } else { "denied" }
        );
        if approve {
            sqlx::query("UPDATE executions SET approved_by = ?, wake_at = NULL, lease_owner = NULL, lease_until = NULL WHERE id = ?")
                .bind(by)
                .bind(execution_id)
                .execute(&mut *tx)
                .await?;
            set_state(
                &mut tx,
                execution_id,
                &finding_id,
                ExecState::Matched,
                Some(&why),
            )
            .await?;
        } else {
            set_state(
                &mut tx,
                execution_id,
                &finding_id,
                ExecState::Cancelled,
                Some(&why),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
