//! One way to open a store from a URL: [`open`] returns an [`AnyStore`], which is the SQLite
//! or the PostgreSQL backend behind the same [`Store`] trait. Nothing outside `store/` names a
//! backend type.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::{
    Admission, ApprovalRequest, ApprovalRow, AuditEvent, AuditQuery, AuditRecord, ClaimedExecution,
    ClaimedFinding, ExecState, ExecutionRow, GuardDenial, IngestBatch, Lease, LeaseRequest,
    MatchInput, MatchRecord, PendingApproval, PlaybookRevision, Receipt, StepRow, Store,
    StoreError, VerifyReport, Vote, VoteOutcome,
};
use crate::finding::Finding;
use crate::redact::Redacted;

/// The store a URL names: `sqlite://PATH` or `sqlite::memory:` (embedded), or
/// `postgres://…` / `postgresql://…` (shared by several replicas).
#[derive(Debug)]
pub enum AnyStore {
    /// SQLite, embedded.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PostgresStore),
}

impl AnyStore {
    /// Wakes `wake` whenever any replica on the same PostgreSQL database commits work
    /// (`LISTEN`/`NOTIFY`), until the returned task is aborted; `None` for SQLite, where the
    /// engine's own wake-ups and polling are all there is.
    ///
    /// # Errors
    /// The listening connection cannot be opened.
    pub async fn watch(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        match self {
            AnyStore::Sqlite(_) => Ok(None),
            AnyStore::Postgres(s) => s.watch(wake).await.map(Some),
        }
    }

    /// The backend's name (`sqlite`, `postgres`), for logs and readiness.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

/// Opens (and migrates) the store `url` names.
///
/// # Errors
/// An unsupported URL, an unreachable database, a failed migration. The error's text never
/// holds the URL's password ([`StoreError`] scrubs it).
pub async fn open(url: &str) -> Result<AnyStore, StoreError> {
    open_with(url, None).await
}

/// Opens (and migrates) the store `url` names, with the PostgreSQL password read from
/// `password_file` (`store.password_file`) when one is given: the file's content, one trailing
/// newline removed, set on the connection options (never written into the URL). Every command
/// that opens the configured store comes through here.
///
/// # Errors
/// As [`open`]; also a password file with a URL that is not `postgres://` or that already holds
/// a password, and a password file that cannot be read or is empty (the error names the file,
/// never its content).
pub async fn open_with(url: &str, password_file: Option<&Path>) -> Result<AnyStore, StoreError> {
    let is_postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let password = match password_file {
        None => None,
        Some(path) if !is_postgres => {
            return Err(StoreError::PasswordFile {
                path: path.to_owned(),
                reason: "store.password_file is only for a postgres:// store.url".to_owned(),
            });
        }
        Some(path) if url_has_password(url) => {
            return Err(StoreError::PasswordFile {
                path: path.to_owned(),
                reason: "store.url already holds a password; keep one of the two".to_owned(),
            });
        }
        Some(path) => Some(read_password(path)?),
    };
    if is_postgres {
        Ok(AnyStore::Postgres(
            PostgresStore::open(url, password.as_ref().map(|p| p.expose().as_str())).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(AnyStore::Sqlite(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Whether a `postgres://` URL carries a password: `USER:PASSWORD@` before the host, or a
/// `password=` query parameter.
#[must_use]
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, query) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = query.split_once('?').is_some_and(|(_, q)| {
        q.split(['&', '#'])
            .any(|kv| kv.split('=').next() == Some("password"))
    });
    in_userinfo || in_query
}

/// The password in `path`: its content without one trailing newline (`\n` or `\r\n`).
fn read_password(path: &Path) -> Result<Redacted<String>, StoreError> {
    let fail = |reason: String| StoreError::PasswordFile {
        path: path.to_owned(),
        reason,
    };
    let mut text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    Ok(Redacted::new(text))
}

macro_rules! delegate {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Store for AnyStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    match self {
                        AnyStore::Sqlite(s) => s.$name($($arg),*).await,
                        AnyStore::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

delegate! {
    fn record(&self, batch: IngestBatch, dedup_window: Duration) -> Vec<Receipt>;
    fn claim_findings(&self, owner: &str, lease: Duration, limit: u32, scope: Option<&str>) -> Vec<ClaimedFinding>;
    fn record_matches(&self, finding_id: &str, matches: &[MatchInput<'_>], lease: Option<LeaseRequest<'_>>) -> Vec<MatchRecord>;
    fn playbook_revision(&self, revision: &str) -> Option<PlaybookRevision>;
    fn claim_executions(&self, owner: &str, lease: Duration, limit: u32, scope: Option<&str>) -> Vec<ClaimedExecution>;
    fn waiting_in_scope(&self, scope: &str) -> i64;
    fn release_scope(&self, scope: &str) -> i64;
    fn executions_of(&self, finding_id: &str) -> Vec<ExecutionRow>;
    fn execution(&self, execution_id: &str) -> Option<(String, ExecutionRow)>;
    fn save_step(&self, lease: &Lease, step: &StepRow) -> ();
    fn set_execution_state(&self, lease: &Lease, state: ExecState, reason: Option<&str>) -> ();
    fn renew(&self, lease: &Lease, duration: Duration) -> ();
    fn park(&self, lease: &Lease, reason: &str) -> ();
    fn cancel(&self, execution_id: &str, by: &str, reason: &str) -> bool;
    fn audit(&self, event: AuditEvent) -> AuditRecord;
    fn audit_list(&self, query: AuditQuery) -> Vec<AuditRecord>;
    fn audit_verify(&self) -> VerifyReport;
    fn flag(&self, name: &str) -> bool;
    fn set_flag(&self, name: &str, on: bool, by: &str) -> ();
    fn ping(&self) -> ();
    fn backlog(&self) -> (i64, i64);
    fn waiting_executions(&self) -> Vec<(String, i64)>;
    fn duplicates(&self, finding_id: &str) -> i64;
    fn admit(&self, lease: &Lease, admission: &Admission<'_>) -> Option<GuardDenial>;
    fn lock_targets(&self, lease: &Lease, keys: &[String], duration: Duration) -> bool;
    fn unlock_targets(&self, lease: &Lease) -> ();
    fn lock_target(&self, key: &str, owner: &str, execution_id: &str, lease: Duration) -> bool;
    fn unlock_target(&self, key: &str, owner: &str) -> ();
    fn defer_execution(&self, lease: &Lease, wake_at: i64) -> ();
    fn schedule_step(&self, lease: &Lease, step: &StepRow) -> ();
    fn finding(&self, finding_id: &str) -> Option<Finding>;
    fn evidence(&self, sha256: &str) -> Option<Value>;
    fn request_approval(&self, lease: &Lease, request: &ApprovalRequest) -> i64;
    fn approval(&self, execution_id: &str) -> Option<ApprovalRow>;
    fn approval_for_pr(&self, channel: &str, pr_number: i64) -> Option<ApprovalRow>;
    fn delivery_seen(&self, id: &str) -> bool;
    fn first_delivery(&self, id: &str, event: &str) -> bool;
    fn open_approvals(&self) -> Vec<ApprovalRow>;
    fn set_approval_pr(&self, execution_id: &str, revision: i64, pr_number: i64, head_sha: &str) -> ();
    fn vote(&self, execution_id: &str, plan_hash: &str, vote: &Vote) -> VoteOutcome;
    fn expire_approvals(&self, now: i64) -> Vec<ApprovalRow>;
    fn close_approval(&self, execution_id: &str, by: &str, via: &str, reason: &str) -> bool;
    fn pending_approvals(&self) -> Vec<PendingApproval>;
    fn decide(&self, execution_id: &str, approve: bool, by: &str, reason: &str) -> bool;
}
