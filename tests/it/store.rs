//! The store conformance suite: dedup, leases, executions, steps, flags and the tamper-evident
//! audit chain. Every test body runs against both backends (`store::sqlite::*` on a real
//! database file in a temp directory, `store::postgres::*` on a database of its own on the
//! PostgreSQL server), opened through `firebreak::store::open` as the service opens them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use firebreak::finding::Finding;
use firebreak::store::{
    Admission, AnyStore, ApprovalRequest, AuditEvent, AuditQuery, ExecState, IngestBatch, Lease,
    LeaseRequest, MatchInput, StepRow, Store, StoreError, Vote, VoteOutcome,
};
use sqlx::Connection;

use crate::fixtures::{self, FALCO_SHELL, GD_TROJAN};
use crate::support::pg::TestDb;

const HOUR: Duration = Duration::from_secs(3600);

/// Which store a test body runs against.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// What keeps a test's database alive: its temp directory or its PostgreSQL database.
#[derive(Debug)]
struct Ledger {
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDb>,
}

async fn open(b: Backend) -> (Ledger, String, AnyStore) {
    let (ledger, url) = match b {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
            (
                Ledger {
                    _dir: Some(dir),
                    _db: None,
                },
                url,
            )
        }
        Backend::Postgres => {
            let db = TestDb::create().await;
            let url = db.url.clone();
            (
                Ledger {
                    _dir: None,
                    _db: Some(db),
                },
                url,
            )
        }
    };
    let store = firebreak::store::open(&url).await.unwrap();
    (ledger, url, store)
}

/// Runs each named body once per backend: `store::sqlite::NAME` and `store::postgres::NAME`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Postgres).await;
            })*
        }
    };
}

conformance!(
    two_reviewers_voting_through_two_handles_at_once_approve_once,
    the_kill_switch_and_a_due_timer_hold_across_two_handles,
    writers_on_two_handles_keep_one_verifiable_chain,
    guards_and_target_locks_hold_across_two_handles_admitting_at_once,
    a_new_finding_is_stored_and_audited,
    a_batch_is_audited_once_and_each_finding_finds_its_record,
    a_storm_of_identical_findings_becomes_one_finding_counted_duplicates_and_one_audit_line,
    a_zero_window_disables_dedup,
    rejected_records_are_kept_with_their_reason,
    leases_give_each_finding_to_one_worker_until_they_expire,
    a_write_from_a_worker_whose_lease_was_taken_over_is_refused,
    a_cancelled_execution_refuses_its_holder_and_is_never_claimed_again,
    executions_steps_and_states_round_trip_and_are_audited,
    flags_persist_and_are_audited,
    an_intact_audit_chain_verifies,
    the_most_urgent_finding_is_claimed_first,
    verify_on_a_live_store_never_reports_tampering_that_did_not_happen,
    verify_detects_an_edited_record,
    verify_detects_a_removed_record,
    verify_detects_reordered_records,
    verify_detects_removal_of_the_newest_records,
    verify_detects_an_edited_or_removed_finding,
    a_runs_findings_stay_its_own_until_handed_over_or_orphaned,
);

/// A fresh copy of a real fixture's finding (new id, same fingerprint).
fn copy_of(rel: &str) -> Finding {
    fixtures::finding(rel)
}

fn batch(findings: Vec<Finding>) -> IngestBatch {
    IngestBatch {
        intake: "test".into(),
        findings,
        rejected: Vec::new(),
        ..IngestBatch::default()
    }
}

async fn a_new_finding_is_stored_and_audited(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let f = copy_of(FALCO_SHELL);
    let receipts = store.record(batch(vec![f.clone()]), HOUR).await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].id, f.id.to_string());
    assert!(!receipts[0].duplicate);
    assert_eq!(store.backlog().await.unwrap(), (1, 0));
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.len(), 1, "one record for the batch");
    assert_eq!(audit[0].kind, "findings.received");
    assert_eq!(audit[0].detail["findings"][0]["id"], f.id.to_string());
    assert!(
        audit[0].detail["findings"][0]["sha256"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{}",
        audit[0].detail
    );
}

async fn a_batch_is_audited_once_and_each_finding_finds_its_record(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let findings: Vec<Finding> = (0..3).map(|_| copy_of(FALCO_SHELL)).collect();
    store
        .record(batch(findings.clone()), Duration::ZERO)
        .await
        .unwrap();
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let listed: Vec<&str> = audit[0].detail["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    let ids: Vec<String> = findings.iter().map(|f| f.id.to_string()).collect();
    assert_eq!(listed, ids);
    for id in &ids {
        let mine = store
            .audit_list(AuditQuery {
                finding_id: Some(id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].seq, audit[0].seq);
    }
}

async fn a_storm_of_identical_findings_becomes_one_finding_counted_duplicates_and_one_audit_line(
    b: Backend,
) {
    let (_d, _u, store) = open(b).await;
    let first = copy_of(FALCO_SHELL);
    let storm = 20_000;
    let mut all = vec![first.clone()];
    all.extend((1..storm).map(|_| copy_of(FALCO_SHELL)));
    for chunk in all.chunks(2_000) {
        let receipts = store.record(batch(chunk.to_vec()), HOUR).await.unwrap();
        assert!(
            receipts.iter().all(|r| r.id == first.id.to_string()),
            "every copy points at the original"
        );
    }
    assert_eq!(store.backlog().await.unwrap().0, 1, "one finding to act on");
    assert_eq!(
        store.duplicates(&first.id.to_string()).await.unwrap(),
        storm - 1
    );
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.kind == "finding.deduplicated")
            .count(),
        1
    );
    assert_eq!(audit.len(), 2, "received + one storm line: {audit:#?}");
}

async fn a_zero_window_disables_dedup(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let receipts = store
        .record(
            batch(vec![copy_of(FALCO_SHELL), copy_of(FALCO_SHELL)]),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(receipts.iter().all(|r| !r.duplicate));
    assert_ne!(receipts[0].id, receipts[1].id);
}

async fn rejected_records_are_kept_with_their_reason(b: Backend) {
    let (_d, url, store) = open(b).await;
    let report = firebreak::finding::parse_input(
        "stdin",
        b"{\"a\":1}\nnot json\n",
        firebreak::finding::ParserChoice::Auto,
    );
    assert_eq!(report.rejected.len(), 2);
    store
        .record(
            IngestBatch {
                intake: "test".into(),
                findings: vec![],
                rejected: report.rejected,
                ..IngestBatch::default()
            },
            HOUR,
        )
        .await
        .unwrap();
    let reasons = read_strings(&url, "SELECT reason FROM rejected ORDER BY id").await;
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons.iter().any(|r| r.contains("invalid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no parser recognised")),
        "{reasons:?}"
    );
}

async fn leases_give_each_finding_to_one_worker_until_they_expire(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let store = Arc::new(store);
    let findings: Vec<Finding> = (0..50).map(|_| copy_of(GD_TROJAN)).collect();
    store.record(batch(findings), Duration::ZERO).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..5 {
        let s = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .claim_findings(&format!("w{w}"), HOUR, 3, None)
                    .await
                    .unwrap();
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got.into_iter().map(|c| c.finding.id.to_string()));
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "a finding was claimed twice");
        }
    }
    assert_eq!(seen.len(), 50);
    // Leases held: nothing left. An expired lease is claimable again.
    assert!(
        store
            .claim_findings("late", HOUR, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    let (_d2, _u2, fresh) = open(b).await;
    fresh
        .record(batch(vec![copy_of(GD_TROJAN)]), HOUR)
        .await
        .unwrap();
    assert_eq!(
        fresh
            .claim_findings("a", Duration::ZERO, 10, None)
            .await
            .unwrap()
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        fresh
            .claim_findings("b", HOUR, 10, None)
            .await
            .unwrap()
            .len(),
        1,
        "expired lease reclaimed"
    );
}

/// A playbook's verdict as the engine records it (a fixed revision and text).
fn matched(playbook: &'static str, state: ExecState, reason: Option<&str>) -> MatchInput<'static> {
    MatchInput {
        playbook,
        revision: "sha256:0000",
        file: "t.yaml",
        source: "name: t",
        state,
        reason: reason.map(str::to_owned),
    }
}

async fn a_write_from_a_worker_whose_lease_was_taken_over_is_refused(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let f = copy_of(FALCO_SHELL);
    let fid = f.id.to_string();
    store.record(batch(vec![f]), HOUR).await.unwrap();
    store.claim_findings("w", HOUR, 10, None).await.unwrap();
    store
        .record_matches(&fid, &[matched("alert", ExecState::Matched, None)], None)
        .await
        .unwrap();
    // Worker a's lease runs out at once; worker b claims the execution after it.
    let a = store
        .claim_executions("a", Duration::ZERO, 10, None)
        .await
        .unwrap()
        .remove(0)
        .lease;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = store
        .claim_executions("b", HOUR, 10, None)
        .await
        .unwrap()
        .remove(0)
        .lease;
    assert_eq!(b.fence, a.fence + 1, "every claim bumps the fencing token");
    let step = StepRow {
        idx: 0,
        action: "notify.webhook".into(),
        status: "applied".into(),
        plan: None,
        outcome: None,
        error: None,
        attempts: 1,
        due_at: None,
    };
    let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseLost { .. }));
    assert!(lost(store.save_step(&a, &step).await), "a's step write");
    assert!(lost(
        store
            .set_execution_state(&a, ExecState::Applied, None)
            .await
    ));
    assert!(lost(store.renew(&a, HOUR).await));
    assert!(lost(store.defer_execution(&a, 0).await));
    assert!(lost(store.park(&a, "test").await));
    assert!(matches!(
        store.lock_targets(&a, &["k".to_owned()], HOUR).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // b's writes land; nothing a tried is in the ledger.
    store.renew(&b, HOUR).await.unwrap();
    assert!(
        store
            .lock_targets(&b, &["k".to_owned()], HOUR)
            .await
            .unwrap()
    );
    store.save_step(&b, &step).await.unwrap();
    store
        .set_execution_state(&b, ExecState::Applied, None)
        .await
        .unwrap();
    let audit = store
        .audit_list(AuditQuery {
            finding_id: Some(fid),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.iter().filter(|r| r.kind == "step.applied").count(), 1);
    assert!(audit.iter().all(|r| r.kind != "execution.parked"));
}

async fn a_cancelled_execution_refuses_its_holder_and_is_never_claimed_again(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let f = copy_of(FALCO_SHELL);
    let fid = f.id.to_string();
    store.record(batch(vec![f]), HOUR).await.unwrap();
    store.claim_findings("w", HOUR, 10, None).await.unwrap();
    let ids = store
        .record_matches(&fid, &[matched("alert", ExecState::Matched, None)], None)
        .await
        .unwrap();
    let held = store
        .claim_executions("a", HOUR, 10, None)
        .await
        .unwrap()
        .remove(0)
        .lease;
    assert!(
        store
            .cancel(&ids[0].id, "alice", "playbook retired")
            .await
            .unwrap()
    );
    assert!(matches!(
        store.renew(&held, HOUR).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(
        !store.cancel(&ids[0].id, "alice", "again").await.unwrap(),
        "a finished execution is not cancelled twice"
    );
    assert!(
        store
            .claim_executions("b", Duration::ZERO, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    let (_, row) = store.execution(&ids[0].id).await.unwrap().unwrap();
    assert_eq!(row.state, ExecState::Cancelled);
    assert_eq!(
        row.reason.as_deref(),
        Some("cancelled by alice: playbook retired")
    );
}

async fn executions_steps_and_states_round_trip_and_are_audited(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let f = copy_of(FALCO_SHELL);
    let fid = f.id.to_string();
    store.record(batch(vec![f]), HOUR).await.unwrap();
    let claimed = store.claim_findings("w", HOUR, 10, None).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let ids = store
        .record_matches(
            &fid,
            &[
                matched("alert", ExecState::Matched, None),
                matched("other", ExecState::Skipped, Some("exclude[0] applies")),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // Idempotent: recording the same matches again creates nothing new.
    let again = store
        .record_matches(&fid, &[matched("alert", ExecState::Matched, None)], None)
        .await
        .unwrap();
    assert_eq!(again[0], ids[0]);
    let execs = store.claim_executions("w", HOUR, 10, None).await.unwrap();
    assert_eq!(execs.len(), 1, "skipped executions have no work");
    assert_eq!(execs[0].playbook, "alert");
    let step = StepRow {
        idx: 0,
        action: "notify.webhook".into(),
        status: "applied".into(),
        plan: Some(
            serde_json::json!({"hash": "sha256:abc", "summary": "POST password=hunter2secret"}),
        ),
        outcome: Some(serde_json::json!({"result": "applied"})),
        error: None,
        attempts: 1,
        due_at: None,
    };
    assert_eq!(execs[0].id, ids[0].id);
    store.save_step(&execs[0].lease, &step).await.unwrap();
    store
        .set_execution_state(&execs[0].lease, ExecState::Applied, None)
        .await
        .unwrap();
    assert!(
        store
            .claim_executions("w2", Duration::ZERO, 10, None)
            .await
            .unwrap()
            .is_empty(),
        "final state has no work"
    );
    let audit = store
        .audit_list(AuditQuery {
            finding_id: Some(fid.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<&str> = audit.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "findings.received",
            "execution.matched",
            "execution.matched",
            "step.applied",
            "execution.state"
        ]
    );
    let text = serde_json::to_string(&audit).unwrap();
    assert!(
        !text.contains("hunter2secret"),
        "secrets are scrubbed in the audit trail"
    );
}

async fn flags_persist_and_are_audited(b: Backend) {
    let (_d, url, store) = open(b).await;
    assert!(!store.flag("kill_switch").await.unwrap());
    store
        .set_flag("kill_switch", true, "cli:alice")
        .await
        .unwrap();
    drop(store);
    let reopened = firebreak::store::open(&url).await.unwrap();
    assert!(reopened.flag("kill_switch").await.unwrap());
    let audit = reopened.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(
        audit.last().map(|a| a.kind.as_str()),
        Some("flag.kill_switch")
    );
}

async fn chain_of(b: Backend, n: usize) -> (Ledger, String, AnyStore) {
    let (d, url, store) = open(b).await;
    for i in 0..n {
        store
            .audit(AuditEvent {
                kind: "test".into(),
                finding_id: None,
                execution_id: None,
                detail: serde_json::json!({ "i": i }),
            })
            .await
            .unwrap();
    }
    (d, url, store)
}

/// Reads one text column straight from the store's database.
async fn read_strings(url: &str, sql: &'static str) -> Vec<String> {
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
    }
}

/// Runs `sql` on the store's database behind its back, as an attacker with database access.
async fn tamper(url: &str, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
}

/// Findings are handed out most urgent first, then oldest: a critical one recorded after
/// fifty low ones is the first claimed. (Derived from the real Falco event: only `severity`
/// differs.)
async fn the_most_urgent_finding_is_claimed_first(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let low: Vec<Finding> = (0..50)
        .map(|_| {
            let mut f = copy_of(FALCO_SHELL);
            f.severity = firebreak::finding::Severity::Low;
            f
        })
        .collect();
    store.record(batch(low), Duration::ZERO).await.unwrap();
    let mut critical = copy_of(FALCO_SHELL);
    critical.severity = firebreak::finding::Severity::Critical;
    store
        .record(batch(vec![critical.clone()]), Duration::ZERO)
        .await
        .unwrap();
    let first = store.claim_findings("w", HOUR, 1, None).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].finding.id, critical.id);
}

async fn an_intact_audit_chain_verifies(b: Backend) {
    let (_d, _u, store) = chain_of(b, 20).await;
    let report = store.audit_verify().await.unwrap();
    assert_eq!(report.records, 20);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// `audit verify` on a live store, while another task keeps appending batches (each adds
/// findings, a record and moves the head): it must never report tampering that did not happen.
async fn verify_on_a_live_store_never_reports_tampering_that_did_not_happen(b: Backend) {
    let (_d, _u, store) = open(b).await;
    let store = Arc::new(store);
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            loop {
                let findings = (0..20).map(|_| copy_of(FALCO_SHELL)).collect();
                store.record(batch(findings), Duration::ZERO).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    // Verify again and again until the chain has grown by 100 batches under it.
    let mut verified = 0;
    loop {
        let report = store.audit_verify().await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        verified += 1;
        if report.records >= 100 {
            break;
        }
    }
    writer.abort();
    assert!(verified > 1, "verified while the chain grew");
}

/// Under continuous writes and reads the write-ahead log stays near its limit instead of
/// growing with everything ever written (readers in the log keep SQLite from starting it over,
/// so only a truncating checkpoint bounds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_near_its_limit_under_continuous_load() {
    const LIMIT: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let store = Arc::new(
        firebreak::store::sqlite::SqliteStore::open_with(
            &format!("sqlite://{}", path.display()),
            LIMIT,
        )
        .await
        .unwrap(),
    );
    let wal = dir.path().join("ledger.db-wal");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.backlog().await.unwrap();
            }
        })
    };
    let mut written = 0u64;
    let mut largest = 0u64;
    // Write 12x the limit's worth of findings.
    while written < 12 * LIMIT {
        let findings: Vec<Finding> = (0..50).map(|_| copy_of(FALCO_SHELL)).collect();
        written += findings
            .iter()
            .map(|f| serde_json::to_vec(f).unwrap().len() as u64)
            .sum::<u64>();
        store.record(batch(findings), Duration::ZERO).await.unwrap();
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.unwrap();
    assert!(
        largest < 6 * LIMIT,
        "the WAL reached {largest} bytes after {written} bytes of findings"
    );
}

async fn verify_detects_an_edited_record(b: Backend) {
    let (_d, url, store) = chain_of(b, 10).await;
    tamper(&url, "UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 4").await;
    let report = store.audit_verify().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("record 4:") && p.contains("edited")),
        "{:?}",
        report.problems
    );
}

async fn verify_detects_a_removed_record(b: Backend) {
    let (_d, url, store) = chain_of(b, 10).await;
    tamper(&url, "DELETE FROM audit WHERE seq = 5").await;
    let report = store.audit_verify().await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.starts_with("record 6:")),
        "{:?}",
        report.problems
    );
}

async fn verify_detects_reordered_records(b: Backend) {
    let (_d, url, store) = chain_of(b, 10).await;
    // Swapped one row at a time: PostgreSQL checks the key after each row.
    tamper(&url, "UPDATE audit SET seq = -1 WHERE seq = 3").await;
    tamper(&url, "UPDATE audit SET seq = 3 WHERE seq = 7").await;
    tamper(&url, "UPDATE audit SET seq = 7 WHERE seq = -1").await;
    let report = store.audit_verify().await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("chain broken")),
        "{:?}",
        report.problems
    );
}

async fn verify_detects_removal_of_the_newest_records(b: Backend) {
    let (_d, url, store) = chain_of(b, 10).await;
    tamper(&url, "DELETE FROM audit WHERE seq > 8").await;
    let report = store.audit_verify().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("newest record is 8")),
        "{:?}",
        report.problems
    );
}

async fn verify_detects_an_edited_or_removed_finding(b: Backend) {
    let (_d, url, store) = open(b).await;
    let findings: Vec<Finding> = (0..3).map(|_| copy_of(FALCO_SHELL)).collect();
    store
        .record(batch(findings.clone()), Duration::ZERO)
        .await
        .unwrap();
    let report = store.audit_verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let (edited, removed) = (findings[0].id.to_string(), findings[2].id.to_string());
    tamper(
        &url,
        &format!(
            "UPDATE findings SET body = replace(body, 'Terminal', 'Harmless') WHERE id = '{edited}'"
        ),
    )
    .await;
    tamper(
        &url,
        &format!("DELETE FROM findings WHERE id = '{removed}'"),
    )
    .await;
    let report = store.audit_verify().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&edited) && p.contains("edited")),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&removed) && p.contains("removed")),
        "{:?}",
        report.problems
    );
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
}

#[tokio::test]
async fn an_unsupported_url_is_refused() {
    let err = firebreak::store::open("mysql://fb:hunter2@db/x")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unsupported store url"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password is never shown: {text}"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_error_does_not_show_the_password() {
    // Nothing listens on port 1.
    let err = firebreak::store::open("postgres://fb:hunter2@127.0.0.1:1/x")
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
}

async fn a_runs_findings_stay_its_own_until_handed_over_or_orphaned(b: Backend) {
    let (_d, url, store) = open(b).await;
    let scoped = |f: Finding, dry_run: bool| IngestBatch {
        intake: "cli:test".into(),
        findings: vec![f],
        scope: Some("run:a".into()),
        dry_run,
        ..IngestBatch::default()
    };
    store
        .record(scoped(copy_of(FALCO_SHELL), false), Duration::ZERO)
        .await
        .unwrap();
    store
        .record(scoped(copy_of(GD_TROJAN), true), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        store
            .claim_findings("svc", HOUR, 10, None)
            .await
            .unwrap()
            .is_empty(),
        "the service leaves a live run's findings alone"
    );
    assert!(
        store
            .claim_findings("other-run", Duration::ZERO, 10, Some("run:b"))
            .await
            .unwrap()
            .is_empty()
    );
    // The run was killed 16 minutes ago: its real finding is adopted, its rehearsal never.
    tamper(
        &url,
        "UPDATE findings SET received_at = received_at - 960000",
    )
    .await;
    let adopted = store.claim_findings("svc", HOUR, 10, None).await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].finding.source, "falco");
}

/// A second handle on the same database, as another replica (or process) opens it.
async fn second_handle(url: &str) -> AnyStore {
    firebreak::store::open(url).await.unwrap()
}

async fn writers_on_two_handles_keep_one_verifiable_chain(b: Backend) {
    let (_d, url, one) = open(b).await;
    let handles = [Arc::new(one), Arc::new(second_handle(&url).await)];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let store = Arc::clone(&handles[t % 2]);
        tasks.spawn(async move {
            for i in 0..20 {
                if i % 4 == 0 {
                    store
                        .record(batch(vec![copy_of(FALCO_SHELL)]), Duration::ZERO)
                        .await
                        .unwrap();
                } else {
                    store
                        .audit(AuditEvent {
                            kind: "test".into(),
                            finding_id: None,
                            execution_id: None,
                            detail: serde_json::json!({ "writer": t, "i": i }),
                        })
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let report = handles[1].audit_verify().await.unwrap();
    assert_eq!(
        report.records,
        8 * 20,
        "every append is one record, none lost"
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// `n` findings, each matched by `playbook` and leased to `owner`: their leases.
async fn leased_executions(store: &AnyStore, playbook: &'static str, n: usize) -> Vec<Lease> {
    let findings: Vec<Finding> = (0..n).map(|_| copy_of(GD_TROJAN)).collect();
    store.record(batch(findings), Duration::ZERO).await.unwrap();
    let claimed = store
        .claim_findings("w", HOUR, u32::try_from(n).unwrap(), None)
        .await
        .unwrap();
    let mut leases = Vec::new();
    for c in claimed {
        let rec = store
            .record_matches(
                &c.finding.id.to_string(),
                &[matched(playbook, ExecState::Matched, None)],
                Some(LeaseRequest {
                    owner: "w",
                    duration: HOUR,
                    max: 1,
                }),
            )
            .await
            .unwrap();
        leases.push(rec[0].lease.clone().unwrap());
    }
    leases
}

async fn guards_and_target_locks_hold_across_two_handles_admitting_at_once(b: Backend) {
    let (_d, url, one) = open(b).await;
    let leases = leased_executions(&one, "contain", 12).await;
    let handles = [Arc::new(one), Arc::new(second_handle(&url).await)];
    // Twelve executions, each on its own target, admitted at once through two handles under a
    // blast radius of 3 distinct targets per hour: exactly 3 pass.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, lease) in leases.iter().cloned().enumerate() {
        let store = Arc::clone(&handles[i % 2]);
        tasks.spawn(async move {
            let targets = [format!("target-{i}")];
            store
                .admit(
                    &lease,
                    &Admission {
                        playbook: "contain",
                        targets: &targets,
                        max_targets_per_hour: Some(3),
                        max_runs_per_hour: None,
                        cooldown: None,
                        requires_approval: false,
                    },
                )
                .await
                .unwrap()
        });
    }
    let mut admitted = 0;
    while let Some(denial) = tasks.join_next().await {
        if denial.unwrap().is_none() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "the blast radius is never overshot");
    // All twelve take the lock on one shared resource at once: exactly one holds it.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, lease) in leases.into_iter().enumerate() {
        let store = Arc::clone(&handles[i % 2]);
        tasks.spawn(async move {
            store
                .lock_targets(&lease, &["shared".to_owned()], HOUR)
                .await
                .unwrap()
        });
    }
    let mut holders = 0;
    while let Some(taken) = tasks.join_next().await {
        if taken.unwrap() {
            holders += 1;
        }
    }
    assert_eq!(holders, 1, "one execution at a time holds a target");
}

async fn the_kill_switch_and_a_due_timer_hold_across_two_handles(b: Backend) {
    let (_d, url, one) = open(b).await;
    let lease = leased_executions(&one, "rotate", 1).await.remove(0);
    // A step scheduled for a time already past: due now, for whichever handle claims first.
    one.schedule_step(
        &lease,
        &StepRow {
            idx: 1,
            action: "aws.iam.delete-access-key".into(),
            status: "scheduled".into(),
            plan: None,
            outcome: None,
            error: None,
            attempts: 0,
            due_at: Some(0),
        },
    )
    .await
    .unwrap();
    let two = second_handle(&url).await;
    // The kill switch set through one handle parks the work for every handle.
    two.set_flag("kill_switch", true, "cli:test").await.unwrap();
    for h in [&one, &two] {
        assert!(
            h.claim_executions("x", HOUR, 10, None)
                .await
                .unwrap()
                .is_empty()
        );
    }
    one.set_flag("kill_switch", false, "cli:test")
        .await
        .unwrap();
    // Both claim at once: the timer fires once.
    let (a, b2) = tokio::join!(
        one.claim_executions("a", HOUR, 10, None),
        two.claim_executions("b", HOUR, 10, None)
    );
    let claimed = a.unwrap().len() + b2.unwrap().len();
    assert_eq!(claimed, 1, "a due step is claimed by one handle");
}

#[tokio::test]
async fn postgres_wakes_a_watching_replica_when_another_stores_findings() {
    let db = TestDb::create().await;
    let one = firebreak::store::open(&db.url).await.unwrap();
    let two = second_handle(&db.url).await;
    let wake = Arc::new(tokio::sync::Notify::new());
    let watch = one
        .watch(Arc::clone(&wake))
        .await
        .unwrap()
        .expect("PostgreSQL is watched");
    two.record(batch(vec![copy_of(FALCO_SHELL)]), HOUR)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("woken by the other handle's commit");
    watch.abort();
}

async fn two_reviewers_voting_through_two_handles_at_once_approve_once(b: Backend) {
    let (_d, url, one) = open(b).await;
    let lease = leased_executions(&one, "approve", 1).await.remove(0);
    let plan = "sha256:plan";
    one.request_approval(
        &lease,
        &ApprovalRequest {
            plan_hash: plan.into(),
            plans: serde_json::json!([]),
            min: 2,
            reviewers: vec!["alice".into(), "bob".into()],
            channel: None,
            expires_at: i64::MAX,
            merge_approves: false,
        },
    )
    .await
    .unwrap();
    let two = second_handle(&url).await;
    let vote = |by: &str| Vote {
        by: by.into(),
        via: "cli".into(),
        verdict: "approved".into(),
        at: 1,
    };
    let eid = lease.execution_id.as_str();
    let (alice, bob) = (vote("alice"), vote("bob"));
    let (a, b2) = tokio::join!(one.vote(eid, plan, &alice), two.vote(eid, plan, &bob));
    let outcomes = [a.unwrap(), b2.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == VoteOutcome::Approved)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&VoteOutcome::Counted {
            approvals: 1,
            min: 2
        }),
        "{outcomes:?}"
    );
    let granted = one
        .audit_list(AuditQuery::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "approval.granted")
        .count();
    assert_eq!(granted, 1);
    let (_, row) = two.execution(eid).await.unwrap().unwrap();
    assert_eq!(row.state, ExecState::Matched, "released to apply");
}

#[tokio::test]
async fn postgres_refuses_a_database_migrated_with_other_content() {
    let db = TestDb::create().await;
    drop(firebreak::store::open(&db.url).await.unwrap());
    tamper(
        &db.url,
        "UPDATE schema_migrations SET sha256 = 'edited' WHERE name = '0001_init'",
    )
    .await;
    let err = firebreak::store::open(&db.url).await.unwrap_err();
    assert!(
        err.to_string().contains("applied with other content"),
        "{err}"
    );
}
