//! The multi-replica store: PostgreSQL, shared by every `firebreak serve` replica.
//!
//! Same semantics as [`super::sqlite::SqliteStore`], statement for statement where it can be:
//! - Write transactions run side by side; what must be taken one at a time is:
//!   - appends to the audit chain: a transaction's audit records are kept in memory and appended
//!     when it commits, after locking the chain's head row (`meta.audit_head`, `FOR UPDATE`),
//!     held only for the append and the commit ([`Write`]), so the chain is one sequence;
//!   - an ingest batch, which takes the head row first, so deduplication sees every batch
//!     committed before it;
//!   - a playbook's guards and a target's lock, behind transaction-scoped advisory locks on
//!     their keys ([`lock_keys`]), so guards count what committed before them;
//!   - writes about one execution, behind its row (fenced writes, cancel, approvals).
//!
//!   Rows are locked `FOR NO KEY UPDATE`, as an `UPDATE` locks them, so a foreign-key check of
//!   another transaction (`FOR KEY SHARE`: an ingest batch counting a duplicate of a finding
//!   whose matches are being recorded) never waits for them.
//! - Claims (`claim_findings`, `claim_executions`) take no advisory lock: they pick rows with
//!   `FOR UPDATE SKIP LOCKED`, so replicas claiming at once take disjoint rows without waiting.
//!   A fenced write locks the execution's row (`FOR NO KEY UPDATE`) before it checks the token, so a
//!   claim cannot move the lease under it.
//! - Lease, lock and audit times come from the database's clock (`clock_timestamp()`), never
//!   from a replica's.
//! - `audit_verify` reads the chain, the finding bodies and the head in one REPEATABLE READ
//!   snapshot.
//! - A batch that stores findings, a resume (flag off) and an approval `NOTIFY` the
//!   `firebreak_work` channel when they commit; [`PostgresStore::watch`] wakes the local engine
//!   on it. Polling stays the fallback: a notification missed while the listening connection was
//!   down is found by the next poll.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};

use super::common::{
    Entry, Link, ROWS_PER_INSERT, audit_record, corrupt, decode_finding, insert_rows,
    listed_findings, ms, outcome_json, received_detail, step_event,
};
use super::{
    Admission, ApprovalRequest, ApprovalRow, AuditEvent, AuditQuery, AuditRecord, ClaimedExecution,
    ClaimedFinding, ExecState, ExecutionRow, GENESIS, GuardDenial, IngestBatch, Lease,
    LeaseRequest, MatchInput, MatchRecord, PendingApproval, PlaybookRevision, PreparedFinding,
    Receipt, StepRow, Store, StoreError, VerifyReport, Vote, VoteOutcome, audit_detail, audit_hash,
    body_hash, prepare_finding,
};
use crate::finding::Finding;

/// Migrations, in order; applied ones are recorded in `schema_migrations` with their sha256.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_urgency",
        include_str!("../../migrations/postgres/0002_urgency.sql"),
    ),
    (
        "0003_audit_head_row",
        include_str!("../../migrations/postgres/0003_audit_head_row.sql"),
    ),
];

/// The first key of the transaction-scoped advisory locks ([`lock_keys`]) that serialise the
/// writes that must see each other (a playbook's guards, a target lock): ASCII "fbk".
const KEYED_LOCKS: i32 = 0x0066_626b;

/// The advisory lock held while migrating, so replicas starting together migrate once.
const MIGRATE_LOCK: i64 = 0x0066_6972_6562_6d67;

/// The channel a replica is woken on when another one commits work (`LISTEN`/`NOTIFY`).
const WORK_CHANNEL: &str = "firebreak_work";

/// Milliseconds since the Unix epoch on the database's clock.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    pool: PgPool,
}

/// Real (not dry-run) findings a `firebreak run` recorded under its own scope and did not hand
/// over are taken by the service's shared queue after this long: a run killed mid-way leaves
/// no remediation behind. Leases still keep two engines off the same item.
const ORPHANED_RUN_AFTER: Duration = Duration::from_secs(15 * 60);

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// Sends a wake-up on [`WORK_CHANNEL`], delivered when the transaction commits.
async fn notify_work(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WORK_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// The database's clock, in Unix milliseconds.
async fn db_now(conn: &mut PgConnection) -> Result<i64, StoreError> {
    let sql = format!("SELECT {DB_NOW_MS}");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await?)
}

impl PostgresStore {
    /// The recorded steps of an execution, by index.
    async fn steps_of(&self, execution_id: &str) -> Result<Vec<StepRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, action, status, plan, outcome, error, attempts, due_at FROM steps WHERE execution_id = $1 ORDER BY idx",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
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

    /// A write transaction ([`Write`]): its audit records are appended when it commits.
    async fn write(&self) -> Result<Write, StoreError> {
        Ok(Write {
            tx: self.pool.begin().await?,
            audit: Vec::new(),
        })
    }

    /// Wakes `wake` whenever a replica (this one included) commits work on the database,
    /// until the returned task is aborted. Returns once the channel is listened to.
    ///
    /// # Errors
    /// The listening connection cannot be opened.
    pub async fn watch(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WORK_CHANNEL).await?;
        let pool = self.pool.clone();
        Ok(tokio::spawn(async move {
            loop {
                // `try_recv` answers `None` when the connection dropped; it reconnects on the
                // next call. Whatever was missed meanwhile, the engine looks once.
                match listener.try_recv().await {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %crate::redact::Scrubbed(&e), "LISTEN connection lost; polling until it is back");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(mut fresh) = PgListener::connect_with(&pool).await
                            && fresh.listen(WORK_CHANNEL).await.is_ok()
                        {
                            listener = fresh;
                            wake.notify_one();
                        }
                    }
                }
            }
        }))
    }

    /// Connects to the database at `url` (`postgres://…` or `postgresql://…`), with `password`
    /// (from `store.password_file`) when given, and migrates it.
    ///
    /// # Errors
    /// Unsupported URL, unreachable server, failed migration.
    pub async fn open(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let opts = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::UnsupportedUrl(url.to_owned()))?;
        let opts = match password {
            Some(p) => opts.password(p),
            None => opts,
        };
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = migrate_locked(&mut conn).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await?;
    result
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    for (name, sql) in MIGRATIONS {
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        let done: Option<String> =
            sqlx::query_scalar("SELECT sha256 FROM schema_migrations WHERE name = $1")
                .bind(*name)
                .fetch_optional(&mut *conn)
                .await?;
        match done {
            Some(applied) if applied == checksum => continue,
            Some(_) => {
                return Err(corrupt(
                    "schema_migrations",
                    format!("migration {name} was applied with other content than this build's"),
                ));
            }
            None => {}
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::Migration { name, source })?;
        let now = db_now(&mut tx).await?;
        sqlx::query("INSERT INTO schema_migrations (name, sha256, applied_at) VALUES ($1, $2, $3)")
            .bind(*name)
            .bind(&checksum)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// A write transaction. Its audit records are kept in memory and appended when it commits, as
/// its last statements: appending starts by locking the chain's head row ([`lock_head`]), held
/// from then until the commit. Writes from every replica therefore run side by side and only
/// their appends to the one chain are taken one at a time, for three round trips each (lock the
/// head, insert the records and move the head, commit), not for the whole transaction.
struct Write {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    audit: Vec<Entry>,
}

impl std::ops::Deref for Write {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl Write {
    /// Adds an audit record, appended to the chain when the transaction commits.
    fn log(&mut self, event: &AuditEvent) {
        self.audit.push(Entry::from(event));
    }

    /// Adds an audit record about one execution of one finding.
    fn about(&mut self, kind: &str, finding_id: &str, execution_id: &str, detail: Value) {
        self.log(&AuditEvent {
            kind: kind.to_owned(),
            finding_id: Some(finding_id.to_owned()),
            execution_id: Some(execution_id.to_owned()),
            detail,
        });
    }

    /// Appends the transaction's audit records to the chain and commits. Returns each record's
    /// `(seq, at, prev_hash, hash)`.
    async fn commit(mut self) -> Result<Vec<Link>, StoreError> {
        let links = if self.audit.is_empty() {
            Vec::new()
        } else {
            let (head, at) = lock_head(&mut self.tx).await?;
            append_audit_after(&mut self.tx, head, at, &self.audit).await?
        };
        self.tx.commit().await?;
        Ok(links)
    }
}

/// Locks the chain's head row (`meta.audit_head`, kept apart from the chain so that deleting
/// the newest records is detected) until the transaction ends, and reads it with the
/// database's clock: `((seq, hash), now)`. `FOR UPDATE` waits for an appender that holds the
/// row and then reads the head it committed, so every append starts from the newest head.
async fn lock_head(conn: &mut PgConnection) -> Result<((i64, String), i64), StoreError> {
    let sql = format!("SELECT value, {DB_NOW_MS} FROM meta WHERE key = 'audit_head' FOR UPDATE");
    let row: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_optional(&mut *conn)
        .await?;
    let Some((value, now)) = row else {
        return Err(corrupt(
            "meta",
            "the audit chain's head (audit_head) is missing: it was removed",
        ));
    };
    let head = value
        .split_once(':')
        .and_then(|(seq, hash)| Some((seq.parse::<i64>().ok()?, hash.to_owned())))
        .ok_or_else(|| {
            corrupt(
                "meta",
                "the audit chain's head (audit_head) is not SEQ:HASH",
            )
        })?;
    Ok((head, now))
}

/// Appends `entries` after `head` (locked by [`lock_head`] earlier in the same transaction),
/// all stamped `at`: the hashes computed in memory, multi-row inserts, the last of them moving
/// the head in the same statement. Returns each record's `(seq, at, prev_hash, hash)`.
async fn append_audit_after(
    conn: &mut PgConnection,
    (mut seq, mut prev_hash): (i64, String),
    at: i64,
    entries: &[Entry],
) -> Result<Vec<Link>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
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
    let chunks: Vec<&[(&Entry, &Link)]> = rows.chunks(ROWS_PER_INSERT).collect();
    let head = format!("{seq}:{prev_hash}");
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(if last {
            "WITH appended AS (INSERT INTO audit (seq, at, kind, finding_id, execution_id, detail, prev_hash, hash) "
        } else {
            "INSERT INTO audit (seq, at, kind, finding_id, execution_id, detail, prev_hash, hash) "
        });
        q.push_values(chunk.iter(), |mut b, (e, (seq, at, prev, hash))| {
            b.push_bind(*seq)
                .push_bind(*at)
                .push_bind(e.kind.as_str())
                .push_bind(e.finding_id.as_deref())
                .push_bind(e.execution_id.as_deref())
                .push_bind(e.detail.as_str())
                .push_bind(prev.as_str())
                .push_bind(hash.as_str());
        });
        if last {
            q.push(") UPDATE meta SET value = ")
                .push_bind(head.as_str())
                .push(" WHERE key = 'audit_head'");
        }
        q.build().execute(&mut *conn).await?;
    }
    Ok(chain)
}

/// Takes, in one order (sorted), the transaction-scoped advisory lock of each key: writes that
/// must see each other's effects (a playbook's guards, a target's lock) take the same key and
/// run one after the other, while every other write runs beside them. Taken first in a
/// transaction, before any row lock, so no two transactions wait on each other in a circle.
async fn lock_keys(conn: &mut PgConnection, keys: &[String]) -> Result<(), StoreError> {
    let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(KEYED_LOCKS)
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// For each fingerprint in `findings`, the earliest real (not dry-run) finding stored with it
/// since `since`, looked up in chunks rather than one statement per finding.
async fn originals_since(
    conn: &mut PgConnection,
    findings: &[Finding],
    since: i64,
) -> Result<HashMap<String, String>, StoreError> {
    let mut fps: Vec<&str> = findings.iter().map(|f| f.fingerprint.0.as_str()).collect();
    fps.sort_unstable();
    fps.dedup();
    let mut out = HashMap::new();
    for chunk in fps.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT fingerprint, id FROM findings WHERE NOT dry_run AND received_at >= ",
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
/// The row stays locked (`FOR NO KEY UPDATE`), so no claim can move the lease until the transaction
/// ends.
async fn fenced(conn: &mut PgConnection, lease: &Lease) -> Result<(), StoreError> {
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT 1::bigint FROM executions WHERE id = $1 AND lease_owner = $2 AND fence = $3 FOR NO KEY UPDATE",
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
async fn release_locks(conn: &mut PgConnection, lease: &Lease) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM locks WHERE execution_id = $1 AND owner = $2")
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
    conn: &mut PgConnection,
    r: &sqlx::postgres::PgRow,
) -> Result<ApprovalRow, StoreError> {
    let execution_id: String = r.try_get("execution_id")?;
    let plan_hash: String = r.try_get("plan_hash")?;
    let plans: String = r.try_get("plans")?;
    let reviewers: String = r.try_get("reviewers")?;
    let votes: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT \"by\", via, verdict, at FROM approval_votes WHERE execution_id = $1 AND plan_hash = $2 \
         ORDER BY at, \"by\"",
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
    conn: &mut PgConnection,
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
    conn: &mut Write,
    execution_id: &str,
    finding_id: &str,
    step: &StepRow,
) -> Result<(), StoreError> {
    let now = db_now(conn).await?;
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&sha256)
        .bind(execution_id)
        .bind(i64::from(step.idx))
        .bind(finding_id)
        .bind(&step.action)
        .bind(now)
        .bind(i64::try_from(body.len()).unwrap_or(i64::MAX))
        .bind(&body)
        .execute(&mut **conn)
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
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
    .execute(&mut **conn)
    .await?;
    if step.status != "scheduled" {
        sqlx::query(
            "UPDATE schedules SET fired_at = $1 WHERE execution_id = $2 AND idx = $3 AND fired_at IS NULL",
        )
        .bind(now)
        .bind(execution_id)
        .bind(i64::from(step.idx))
        .execute(&mut **conn)
        .await?;
    }
    conn.log(&step_event(
        execution_id,
        finding_id,
        step,
        plan_hash.as_deref(),
    ));
    Ok(())
}

/// Sets an execution's state (releasing its lease when final) with an audit line, inside an
/// open transaction.
async fn set_state(
    conn: &mut Write,
    execution_id: &str,
    finding_id: &str,
    state: ExecState,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    let release = state.is_final();
    sqlx::query(
        "UPDATE executions SET state = $1, reason = $2, updated_at = $3, \
           lease_owner = CASE WHEN $4 THEN NULL ELSE lease_owner END, \
           lease_until = CASE WHEN $5 THEN NULL ELSE lease_until END WHERE id = $6",
    )
    .bind(state.as_str())
    .bind(reason)
    .bind(db_now(conn).await?)
    .bind(release)
    .bind(release)
    .bind(execution_id)
    .execute(&mut **conn)
    .await?;
    conn.log(&AuditEvent {
        kind: "execution.state".into(),
        finding_id: Some(finding_id.to_owned()),
        execution_id: Some(execution_id.to_owned()),
        detail: serde_json::json!({ "state": state.as_str(), "reason": reason }),
    });
    Ok(())
}

impl Store for PostgresStore {
    async fn record(
        &self,
        mut batch: IngestBatch,
        dedup_window: Duration,
    ) -> Result<Vec<Receipt>, StoreError> {
        // Statements per batch, not per finding: every statement is a round trip to the
        // server, so rows are written with multi-row INSERTs and the audit chain is extended in
        // memory from one read of its head.
        // An ingest batch takes the chain's head first and keeps it until it commits: batches
        // are stored one at a time, so deduplication sees every batch committed before it.
        let mut tx = self.write().await?;
        let (head, now) = lock_head(&mut tx).await?;
        let dedup = !dedup_window.is_zero() && !batch.dry_run;
        let mut originals = if dedup {
            originals_since(&mut tx, &batch.findings, now - ms(dedup_window)).await?
        } else {
            HashMap::new()
        };
        // The batch's `findings.received` record comes first among its audit records, so its
        // sequence number is known before the findings that point at it are inserted.
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
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
                "INSERT INTO duplicates (finding_id, count, last_seen_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (finding_id) DO UPDATE SET count = duplicates.count + excluded.count, last_seen_at = excluded.last_seen_at \
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
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
        append_audit_after(&mut tx, head, now, &events).await?;
        if !fresh.is_empty() {
            notify_work(&mut tx).await?;
        }
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
        // No write lock: replicas claiming at once skip each other's rows.
        let sql = format!(
            "WITH now AS (SELECT {DB_NOW_MS} AS ms) \
             UPDATE findings SET lease_owner = $1, lease_until = (SELECT ms FROM now) + $2 WHERE id IN ( \
               SELECT id FROM findings WHERE state = 'new' \
               AND (scope IS NOT DISTINCT FROM $3 OR ($3::text IS NULL AND NOT dry_run \
                    AND received_at < (SELECT ms FROM now) - $4)) \
               AND (lease_until IS NULL OR lease_until < (SELECT ms FROM now)) \
               ORDER BY urgency DESC, received_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING body, received_at"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(ms(lease))
            .bind(scope)
            .bind(ms(ORPHANED_RUN_AFTER))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
        let mut tx = self.write().await?;
        // The finding's row, locked: a worker that claimed it after this one's lease ran out
        // records its matches after this one's, and sees them.
        sqlx::query("SELECT 1::bigint FROM findings WHERE id = $1 FOR NO KEY UPDATE")
            .bind(finding_id)
            .execute(&mut *tx)
            .await?;
        let now = db_now(&mut tx).await?;
        let mut ids = Vec::with_capacity(matches.len());
        let mut leased_count = 0usize;
        for m in matches {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM executions WHERE finding_id = $1 AND playbook = $2",
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
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (revision) DO NOTHING",
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
                   lease_owner, lease_until, fence, playbook_rev) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
            tx.about(
                "execution.matched",
                finding_id,
                &id,
                serde_json::json!({
                    "playbook": m.playbook,
                    "revision": acts.then_some(m.revision),
                    "state": m.state.as_str(),
                    "reason": m.reason,
                }),
            );
            let lease = leased.map(|l| Lease {
                execution_id: id.clone(),
                finding_id: finding_id.to_owned(),
                owner: l.owner.to_owned(),
                fence: 1,
            });
            ids.push(MatchRecord { id, lease });
        }
        sqlx::query("UPDATE findings SET state = 'matched', lease_owner = NULL, lease_until = NULL WHERE id = $1")
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
            "SELECT revision, name, file, source FROM playbook_revisions WHERE revision = $1",
        )
        .bind(revision)
        .fetch_optional(&self.pool)
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
            // Every claim bumps the fencing token: a worker whose lease ran out and was taken
            // over here has its later writes refused. No write lock: replicas claiming at once
            // skip each other's rows, and a row a fenced write holds is skipped until it commits.
            let sql = format!(
                "WITH now AS (SELECT {DB_NOW_MS} AS ms) \
                 UPDATE executions SET lease_owner = $1, lease_until = (SELECT ms FROM now) + $2, \
                   fence = fence + 1 WHERE id IN ( \
                   SELECT e.id FROM executions e JOIN findings f ON f.id = e.finding_id \
                   WHERE e.state IN ('matched', 'applying', 'scheduled') \
                   AND (f.scope IS NOT DISTINCT FROM $3 OR ($3::text IS NULL AND NOT f.dry_run \
                        AND f.received_at < (SELECT ms FROM now) - $4)) \
                   AND (e.lease_until IS NULL OR e.lease_until < (SELECT ms FROM now)) \
                   AND (e.wake_at IS NULL OR e.wake_at <= (SELECT ms FROM now)) \
                   AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'flag:kill_switch' AND value = 'on') \
                   ORDER BY f.urgency DESC, e.created_at, e.id LIMIT $5 FOR UPDATE OF e SKIP LOCKED) \
                 RETURNING id, finding_id, playbook, state, fence, playbook_rev"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(ms(lease))
                .bind(scope)
                .bind(ms(ORPHANED_RUN_AFTER))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let finding_id: String = row.try_get("finding_id")?;
            let state: String = row.try_get("state")?;
            let (body, received_at): (String, i64) =
                sqlx::query_as("SELECT body, received_at FROM findings WHERE id = $1")
                    .bind(&finding_id)
                    .fetch_one(&self.pool)
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
             WHERE f.scope = $1 AND e.state IN ('matched', 'applying')",
        )
        .bind(scope)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn release_scope(&self, scope: &str) -> Result<i64, StoreError> {
        let mut tx = self.write().await?;
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions e JOIN findings f ON f.id = e.finding_id \
             WHERE f.scope = $1 AND NOT f.dry_run \
             AND e.state IN ('matched', 'applying', 'scheduled', 'pending_approval')",
        )
        .bind(scope)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE findings SET scope = NULL WHERE scope = $1 AND NOT dry_run")
            .bind(scope)
            .execute(&mut *tx)
            .await?;
        if unfinished > 0 {
            tx.log(&AuditEvent {
                kind: "run.handed_over".into(),
                finding_id: None,
                execution_id: None,
                detail: serde_json::json!({ "scope": scope, "executions": unfinished }),
            });
        }
        tx.commit().await?;
        Ok(unfinished)
    }

    async fn executions_of(&self, finding_id: &str) -> Result<Vec<ExecutionRow>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, playbook, state, reason FROM executions WHERE finding_id = $1 ORDER BY created_at, id",
        )
        .bind(finding_id)
        .fetch_all(&self.pool)
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
            "SELECT finding_id, playbook, state, reason FROM executions WHERE id = $1",
        )
        .bind(execution_id)
        .fetch_optional(&self.pool)
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
        let until = db_now(&mut tx).await? + ms(duration);
        let renewed = sqlx::query(
            "UPDATE executions SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND fence = $4",
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
        sqlx::query("UPDATE locks SET until = $1 WHERE execution_id = $2 AND owner = $3")
            .bind(until)
            .bind(&lease.execution_id)
            .bind(&lease.owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn park(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        fenced(&mut tx, lease).await?;
        let state: String = sqlx::query_scalar(
            "UPDATE executions SET lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE id = $2 \
             RETURNING state",
        )
        .bind(db_now(&mut tx).await?)
        .bind(&lease.execution_id)
        .fetch_one(&mut *tx)
        .await?;
        release_locks(&mut tx, lease).await?;
        tx.about(
            "execution.parked",
            &lease.finding_id,
            &lease.execution_id,
            serde_json::json!({ "state": state, "reason": reason }),
        );
        tx.commit().await?;
        Ok(())
    }

    async fn cancel(&self, execution_id: &str, by: &str, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT finding_id, state FROM executions WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(execution_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((finding_id, state)) = row else {
            return Ok(false);
        };
        if ExecState::parse(&state).is_none_or(ExecState::is_final) {
            return Ok(false);
        }
        let now = db_now(&mut tx).await?;
        // A new fencing token: a worker still holding the execution has its next write refused.
        sqlx::query("UPDATE executions SET fence = fence + 1, wake_at = NULL WHERE id = $1")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM locks WHERE execution_id = $1")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE schedules SET fired_at = $1 WHERE execution_id = $2 AND fired_at IS NULL",
        )
        .bind(now)
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        tx.about(
            "execution.cancelled",
            &finding_id,
            execution_id,
            serde_json::json!({ "by": by, "reason": reason, "state_before": state }),
        );
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
        let mut tx = self.write().await?;
        tx.log(&event);
        let entry = Entry::from(&event);
        let (seq, at, prev_hash, hash) = tx
            .commit()
            .await?
            .pop()
            .ok_or_else(|| corrupt("audit", "appending one record returned none"))?;
        Ok(audit_record(entry, (seq, at, prev_hash, hash)))
    }

    async fn audit_list(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, finding_id, execution_id, detail, prev_hash, hash FROM audit \
             WHERE seq > $1 AND ($2::text IS NULL OR finding_id = $3 \
               OR seq = (SELECT audit_seq FROM findings WHERE id = $4)) ORDER BY seq LIMIT $5",
        )
        .bind(query.after_seq.unwrap_or(0))
        .bind(&query.finding_id)
        .bind(&query.finding_id)
        .bind(&query.finding_id)
        .bind(query.limit.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
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
        // One snapshot for the chain, the finding bodies and the head: appends committed by
        // other replicas meanwhile are not half-seen.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT seq, at, kind, finding_id, execution_id, detail, prev_hash, hash FROM audit ORDER BY seq",
        )
        .fetch_all(&mut *tx)
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
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "SELECT id, body FROM findings WHERE id IN (",
            );
            let mut sep = q.separated(", ");
            for (_, id, _) in chunk {
                sep.push_bind(id.as_str());
            }
            q.push(")");
            let bodies: HashMap<String, String> = q
                .build_query_as::<(String, String)>()
                .fetch_all(&mut *tx)
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
                .fetch_optional(&mut *tx)
                .await?;
        match (head, last) {
            (Some(head), Some((seq, hash))) if head != format!("{seq}:{hash}") => problems.push(format!(
                "the newest record is {seq}, but the recorded head is {}: records after it were removed or the head was edited",
                head.split(':').next().unwrap_or("?")
            )),
            (Some(head), None) if head != format!("0:{GENESIS}") => problems.push("the audit trail is empty but a head was recorded: records were removed".into()),
            (None, Some(_)) => problems.push("records exist but no head was recorded: the head was removed".into()),
            _ => {}
        }
        tx.commit().await?;
        Ok(VerifyReport {
            records: i64::try_from(rows.len()).unwrap_or(i64::MAX),
            problems,
        })
    }

    async fn flag(&self, name: &str) -> Result<bool, StoreError> {
        let v: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(format!("flag:{name}"))
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.as_deref() == Some("on"))
    }

    async fn set_flag(&self, name: &str, on: bool, by: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(format!("flag:{name}"))
            .bind(if on { "on" } else { "off" })
            .execute(&mut *tx)
            .await?;
        tx.log(&AuditEvent {
            kind: format!("flag.{name}"),
            finding_id: None,
            execution_id: None,
            detail: serde_json::json!({ "on": on, "by": by }),
        });
        if !on {
            notify_work(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn backlog(&self) -> Result<(i64, i64), StoreError> {
        let findings: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM findings WHERE state = 'new'")
            .fetch_one(&self.pool)
            .await?;
        let executions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions WHERE state IN ('matched', 'applying')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((findings, executions))
    }

    async fn waiting_executions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM executions \
             WHERE state IN ('matched', 'applying', 'scheduled', 'pending_approval') GROUP BY state",
        )
        .fetch_all(&self.pool)
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
            sqlx::query_scalar("SELECT count FROM duplicates WHERE finding_id = $1")
                .bind(finding_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.unwrap_or(0))
    }

    async fn admit(
        &self,
        lease: &Lease,
        a: &Admission<'_>,
    ) -> Result<Option<GuardDenial>, StoreError> {
        let mut tx = self.write().await?;
        // A playbook's guards count what its admissions committed: one at a time per playbook.
        lock_keys(&mut tx, &[format!("guard:{}", a.playbook)]).await?;
        fenced(&mut tx, lease).await?;
        let (eid, fid) = (lease.execution_id.as_str(), lease.finding_id.as_str());
        let now = db_now(&mut tx).await?;
        let admitted: Vec<String> =
            sqlx::query_scalar("SELECT target FROM acted WHERE execution_id = $1")
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
            sqlx::query_as("SELECT approved_by, state FROM executions WHERE id = $1")
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
                        "SELECT COUNT(*) FROM acted WHERE playbook = $1 AND target = $2 AND at > $3 AND execution_id != $4",
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
                    "SELECT DISTINCT target FROM acted WHERE playbook = $1 AND at > $2",
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
                    "SELECT COUNT(DISTINCT execution_id) FROM acted WHERE playbook = $1 AND at > $2",
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
                        "INSERT INTO acted (execution_id, playbook, target, at) VALUES ($1, $2, $3, $4) \
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
                    tx.about("guard.waived",
                        fid,
                        eid,
                        serde_json::json!({ "playbook": a.playbook, "targets": fresh, "approved_by": by }));
                }
            }
            Some(d) => {
                tx.about(
                    "guard.denied",
                    fid,
                    eid,
                    serde_json::json!({
                        "playbook": a.playbook,
                        "targets": a.targets,
                        "reason": d.to_string(),
                        "limit": d,
                    }),
                );
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
        let mut tx = self.write().await?;
        let lock_keys_of: Vec<String> = keys.iter().map(|k| format!("target:{k}")).collect();
        lock_keys(&mut tx, &lock_keys_of).await?;
        fenced(&mut tx, lease).await?;
        let now = db_now(&mut tx).await?;
        for key in keys {
            // Held by another execution and not expired: busy. A lock of the same execution
            // (held by a worker whose lease this one took over) is taken over.
            let busy: Option<i64> = sqlx::query_scalar(
                "SELECT 1::bigint FROM locks WHERE key = $1 AND execution_id != $2 AND until >= $3",
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
                "INSERT INTO locks (key, owner, execution_id, until) VALUES ($1, $2, $3, $4) \
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
        let mut tx = self.write().await?;
        release_locks(&mut tx, lease).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_target(
        &self,
        key: &str,
        owner: &str,
        execution_id: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        let now = db_now(&mut w).await?;
        let taken = sqlx::query(
            "INSERT INTO locks (key, owner, execution_id, until) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, execution_id = excluded.execution_id, \
               until = excluded.until WHERE locks.until < $5 OR (locks.owner = excluded.owner AND locks.execution_id = excluded.execution_id)",
        )
        .bind(key)
        .bind(owner)
        .bind(execution_id)
        .bind(now + ms(lease))
        .bind(now)
        .execute(&mut *w)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(taken == 1)
    }

    async fn unlock_target(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM locks WHERE key = $1 AND owner = $2")
            .bind(key)
            .bind(owner)
            .execute(&mut *w)
            .await?;
        w.commit().await?;
        Ok(())
    }

    async fn defer_execution(&self, lease: &Lease, wake_at: i64) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let now = db_now(&mut w).await?;
        let deferred = sqlx::query(
            "UPDATE executions SET wake_at = $1, lease_owner = NULL, lease_until = NULL, updated_at = $2 \
             WHERE id = $3 AND lease_owner = $4 AND fence = $5",
        )
        .bind(wake_at)
        .bind(now)
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
        w.commit().await?;
        Ok(())
    }

    async fn schedule_step(&self, lease: &Lease, step: &StepRow) -> Result<(), StoreError> {
        let (execution_id, finding_id) = (lease.execution_id.as_str(), lease.finding_id.as_str());
        let mut tx = self.write().await?;
        fenced(&mut tx, lease).await?;
        let due = match step.due_at {
            Some(due) => due,
            None => db_now(&mut tx).await?,
        };
        sqlx::query(
            "INSERT INTO schedules (execution_id, idx, action, due_at, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (execution_id, idx) DO NOTHING",
        )
        .bind(execution_id)
        .bind(i64::from(step.idx))
        .bind(&step.action)
        .bind(due)
        .bind(db_now(&mut tx).await?)
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
            "UPDATE executions SET wake_at = $1, lease_owner = NULL, lease_until = NULL WHERE id = $2",
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
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM evidence WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
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
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM findings WHERE id = $1")
            .bind(finding_id)
            .fetch_optional(&self.pool)
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
        let mut tx = self.write().await?;
        fenced(&mut tx, lease).await?;
        let now = db_now(&mut tx).await?;
        let revision: i64 = sqlx::query_scalar(
            "INSERT INTO approval_requests (execution_id, plan_hash, plans, min_approvals, reviewers, \
               channel, revision, state, expires_at, created_at, updated_at, merge_approves) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, 'pending', $7, $8, $9, $10) \
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
             lease_until = NULL WHERE id = $1",
        )
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        release_locks(&mut tx, lease).await?;
        tx.about(
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
        );
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
        let mut conn = self.pool.acquire().await?;
        Ok(
            approval_rows(&mut conn, "WHERE a.execution_id = $1", Some(execution_id))
                .await?
                .pop(),
        )
    }

    async fn approval_for_pr(
        &self,
        channel: &str,
        pr_number: i64,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT execution_id FROM approval_requests WHERE channel = $1 AND pr_number = $2 \
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
            approval_rows(&mut conn, "WHERE a.execution_id = $1", Some(&id))
                .await?
                .pop(),
        )
    }

    async fn delivery_seen(&self, id: &str) -> Result<bool, StoreError> {
        let seen: Option<i64> =
            sqlx::query_scalar("SELECT 1::bigint FROM github_deliveries WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(seen.is_some())
    }

    async fn first_delivery(&self, id: &str, event: &str) -> Result<bool, StoreError> {
        let mut w = self.write().await?;
        let now = db_now(&mut w).await?;
        let inserted = sqlx::query(
            "INSERT INTO github_deliveries (id, event, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(event)
        .bind(now)
        .execute(&mut *w)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(inserted == 1)
    }

    async fn open_approvals(&self) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
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
        let mut tx = self.write().await?;
        let finding: Option<String> = sqlx::query_scalar(
            "UPDATE approval_requests SET pr_number = $1, head_sha = $2, updated_at = $3 \
             WHERE execution_id = $4 AND revision = $5 \
             RETURNING (SELECT finding_id FROM executions WHERE id = approval_requests.execution_id)",
        )
        .bind(pr_number)
        .bind(head_sha)
        .bind(db_now(&mut tx).await?)
        .bind(execution_id)
        .bind(revision)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(finding_id) = finding {
            tx.about(
                "approval.published",
                &finding_id,
                execution_id,
                serde_json::json!({
                    "revision": revision,
                    "pr_number": pr_number,
                    "head_sha": head_sha,
                }),
            );
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
        let mut tx = self.write().await?;
        // The execution's row first, as every write about one execution takes it: one order.
        sqlx::query("SELECT 1::bigint FROM executions WHERE id = $1 FOR NO KEY UPDATE")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        let req: Option<(String, i64, String, String)> = sqlx::query_as(
            "SELECT a.plan_hash, a.min_approvals, a.state, e.finding_id FROM approval_requests a \
             JOIN executions e ON e.id = a.execution_id WHERE a.execution_id = $1 FOR NO KEY UPDATE OF a",
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
            tx.log(&ignored("no approval request", None));
            tx.commit().await?;
            return Ok(VoteOutcome::NotPending);
        };
        if !matches!(state.as_str(), "pending" | "changes_requested") {
            tx.log(&ignored(
                &format!("the request is {state}"),
                Some(finding_id),
            ));
            tx.commit().await?;
            return Ok(VoteOutcome::NotPending);
        }
        if current != plan_hash {
            tx.log(&ignored(
                &format!("stale: the current plan is {current}"),
                Some(finding_id),
            ));
            tx.commit().await?;
            return Ok(VoteOutcome::Stale { current });
        }
        sqlx::query(
            "INSERT INTO approval_votes (execution_id, plan_hash, \"by\", via, verdict, at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (execution_id, plan_hash, \"by\") DO UPDATE SET \
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
            "SELECT \"by\", verdict FROM approval_votes WHERE execution_id = $1 AND plan_hash = $2 ORDER BY at, \"by\"",
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
            "UPDATE approval_requests SET state = $1, updated_at = $2 WHERE execution_id = $3",
        )
        .bind(new_state)
        .bind(db_now(&mut tx).await?)
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        tx.about(
            "approval.vote",
            &finding_id,
            execution_id,
            serde_json::json!({
                "by": vote.by, "via": vote.via, "verdict": vote.verdict,
                "plan_hash": plan_hash, "approvals": approvals, "min": min,
            }),
        );
        if outcome == VoteOutcome::Approved {
            let by = approvers.join(", ");
            sqlx::query(
                "UPDATE executions SET approved_by = $1, wake_at = NULL, lease_owner = NULL, \
                 lease_until = NULL WHERE id = $2",
            )
            .bind(&by)
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
            tx.about(
                "approval.granted",
                &finding_id,
                execution_id,
                serde_json::json!({ "by": approvers, "plan_hash": plan_hash, "via": vote.via }),
            );
            set_state(
                &mut tx,
                execution_id,
                &finding_id,
                ExecState::Matched,
                Some(&format!("plan {plan_hash} approved by {by}")),
            )
            .await?;
            notify_work(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn expire_approvals(&self, now: i64) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut tx = self.write().await?;
        // The executions' rows first, as every write about one execution takes them.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT e.id FROM executions e JOIN approval_requests a ON a.execution_id = e.id \
             WHERE a.state IN ('pending', 'changes_requested') AND a.expires_at <= $1 \
             ORDER BY e.id FOR NO KEY UPDATE OF e",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let due: Vec<(String, String)> = sqlx::query_as(
            "UPDATE approval_requests SET state = 'expired', updated_at = $1 \
             WHERE state IN ('pending', 'changes_requested') AND expires_at <= $2 \
               AND execution_id = ANY($3) \
             RETURNING execution_id, (SELECT finding_id FROM executions WHERE id = approval_requests.execution_id)",
        )
        .bind(now)
        .bind(now)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        for (execution_id, finding_id) in &due {
            sqlx::query("UPDATE executions SET fence = fence + 1 WHERE id = $1")
                .bind(execution_id)
                .execute(&mut *tx)
                .await?;
            tx.about(
                "approval.expired",
                finding_id,
                execution_id,
                serde_json::json!({ "at": now }),
            );
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
        let mut out = Vec::with_capacity(due.len());
        let mut conn = self.pool.acquire().await?;
        for (execution_id, _) in &due {
            out.extend(
                approval_rows(&mut conn, "WHERE a.execution_id = $1", Some(execution_id)).await?,
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
        let mut tx = self.write().await?;
        // The execution's row first, as every write about one execution takes it: one order.
        sqlx::query("SELECT 1::bigint FROM executions WHERE id = $1 FOR NO KEY UPDATE")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        let closed: Option<String> = sqlx::query_scalar(
            "UPDATE approval_requests SET state = 'cancelled', updated_at = $1 \
             WHERE execution_id = $2 AND state IN ('pending', 'changes_requested') \
             RETURNING (SELECT finding_id FROM executions WHERE id = approval_requests.execution_id)",
        )
        .bind(db_now(&mut tx).await?)
        .bind(execution_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(finding_id) = closed else {
            return Ok(false);
        };
        sqlx::query("UPDATE executions SET fence = fence + 1 WHERE id = $1")
            .bind(execution_id)
            .execute(&mut *tx)
            .await?;
        tx.about(
            "approval.cancelled",
            &finding_id,
            execution_id,
            serde_json::json!({ "by": by, "via": via, "reason": reason }),
        );
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
        .fetch_all(&self.pool)
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
        let mut tx = self.write().await?;
        let finding: Option<String> = sqlx::query_scalar(
            "SELECT finding_id FROM executions WHERE id = $1 AND state = 'pending_approval' FOR NO KEY UPDATE",
        )
        .bind(execution_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(finding_id) = finding else {
            return Ok(false);
        };
        tx.log(&AuditEvent {
            kind: if approve {
                "approval.granted"
            } else {
                "approval.denied"
            }
            .into(),
            finding_id: Some(finding_id.clone()),
            execution_id: Some(execution_id.to_owned()),
            detail: serde_json::json!({ "by": by, "reason": reason, "via": "cli" }),
        });
        let why = format!(
            "{} by {by}: {reason}",
            if approve { "approved" } else { "denied" }
        );
        if approve {
            sqlx::query("UPDATE executions SET approved_by = $1, wake_at = NULL, lease_owner = NULL, lease_until = NULL WHERE id = $2")
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
            notify_work(&mut tx).await?;
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
