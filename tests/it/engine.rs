//! The durable engine: findings in the store become executions whose steps are applied once,
//! recorded and audited; kill switch, exclusions, dry-run and concurrent workers.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use firebreak::action::ActionCtx;
use firebreak::config::Config;
use firebreak::engine::RunOptions;
use firebreak::engine::worker::{Round, Worker, WorkerOptions};
use firebreak::playbook::{PlaybookSet, load_str};
use firebreak::store::sqlite::SqliteStore;
use firebreak::store::{AuditQuery, IngestBatch, Store};

use crate::fixtures::{self, FALCO_SHELL};
use crate::support::receiver::Receiver;

const HOUR: Duration = Duration::from_secs(3600);

fn playbooks(yaml: &str) -> Arc<RwLock<Arc<PlaybookSet>>> {
    let (pb, _) = load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(RwLock::new(Arc::new(PlaybookSet::new(vec![pb]))))
}

fn notify_playbook(url: &str, extra: &str) -> String {
    format!(
        "name: notify\nmatch: {{class: runtime-threat}}\n{extra}steps:\n  - action: notify.webhook\n    with: {{url: \"{url}\"}}\n"
    )
}

async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
        .await
        .unwrap();
    (dir, Arc::new(s))
}

fn worker(
    store: &Arc<SqliteStore>,
    pbs: Arc<RwLock<Arc<PlaybookSet>>>,
    run: RunOptions,
    owner: &str,
) -> Worker<SqliteStore> {
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let opts = WorkerOptions {
        owner: owner.into(),
        lease: HOUR,
        run: RunOptions {
            retry_base: Duration::from_millis(1),
            ..run
        },
        ..WorkerOptions::default()
    };
    Worker::new(Arc::clone(store), pbs, ctx, opts)
}

async fn drain(w: &Worker<SqliteStore>) {
    while w.round().await.unwrap() != Round::default() {}
}

async fn ingest(store: &SqliteStore, n: usize) {
    let findings = (0..n).map(|_| fixtures::finding(FALCO_SHELL)).collect();
    store
        .record(
            IngestBatch {
                intake: "test".into(),
                findings,
                rejected: vec![],
                ..IngestBatch::default()
            },
            Duration::ZERO,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stored_finding_is_matched_applied_once_and_audited_in_order() {
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    ingest(&store, 1).await;
    let w = worker(
        &store,
        playbooks(&notify_playbook(&rx.url("/hook"), "")),
        RunOptions::default(),
        "w1",
    );
    drain(&w).await;
    assert_eq!(rx.requests().len(), 1);
    drain(&w).await;
    assert_eq!(
        rx.requests().len(),
        1,
        "a second round applies nothing again"
    );
    let kinds: Vec<String> = store
        .audit_list(AuditQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "findings.received",
            "execution.matched",
            "execution.state",
            "step.applying",
            "step.applied",
            "execution.state"
        ]
    );
    let report = store.audit_verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A critical finding posted behind a flood of low-severity ones is acted on first: the
/// store hands out work most urgent first, then oldest.
#[tokio::test]
async fn a_critical_finding_behind_a_flood_of_low_ones_is_acted_on_first() {
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    // Derived from the real Falco event: only `severity` differs between the flood and the
    // critical one.
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut f = fixtures::finding(FALCO_SHELL);
        f.severity = firebreak::finding::Severity::Low;
        flood.push(f);
    }
    let mut critical = fixtures::finding(FALCO_SHELL);
    critical.severity = firebreak::finding::Severity::Critical;
    for findings in [flood, vec![critical.clone()]] {
        store
            .record(
                IngestBatch {
                    intake: "test".into(),
                    findings,
                    ..IngestBatch::default()
                },
                Duration::ZERO,
            )
            .await
            .unwrap();
    }
    let w = Worker::new(
        Arc::clone(&store),
        playbooks(&notify_playbook(&rx.url("/hook"), "")),
        ActionCtx::from_config(&Config::default()).unwrap(),
        WorkerOptions {
            owner: "w".into(),
            lease: HOUR,
            concurrency: 1,
            ..WorkerOptions::default()
        },
    );
    w.round().await.unwrap();
    let sent = rx.requests();
    assert_eq!(sent.len(), 1, "one execution at a time");
    assert!(
        sent[0].body.contains(&critical.id.to_string()),
        "the first action is the critical finding's: {}",
        sent[0].body
    );
}

#[tokio::test]
async fn the_kill_switch_parks_executions_and_resume_continues_each_once() {
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    store.set_flag("kill_switch", true, "test").await.unwrap();
    ingest(&store, 3).await;
    let w = worker(
        &store,
        playbooks(&notify_playbook(&rx.url("/hook"), "")),
        RunOptions::default(),
        "w1",
    );
    drain(&w).await;
    drain(&w).await;
    assert!(rx.requests().is_empty());
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.kind == "execution.parked")
            .count(),
        3,
        "each execution is parked once (a paused store is not claimed again)"
    );
    assert!(
        audit.iter().all(|a| a.detail["state"] != "skipped"),
        "the kill switch never finalises an execution"
    );
    assert_eq!(
        store.waiting_executions().await.unwrap()[0],
        ("matched".to_owned(), 3),
        "parked executions keep their state"
    );

    store.set_flag("kill_switch", false, "test").await.unwrap();
    drain(&w).await;
    drain(&w).await;
    assert_eq!(rx.requests().len(), 3, "after resume each acts once");
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.kind == "execution.state" && a.detail["state"] == "applied")
            .count(),
        3
    );
    let report = store.audit_verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Runs the whole (durable) test database through `sql` (simulating time passing).
async fn execute(dir: &tempfile::TempDir, sql: &str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.path().join("l.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn scalar(dir: &tempfile::TempDir, sql: &str) -> Option<i64> {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.path().join("l.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_optional(&mut conn)
        .await
        .unwrap()
        .flatten()
}

#[tokio::test]
async fn pausing_mid_playbook_and_during_a_24h_timer_keeps_state_and_due_time_and_every_step_runs_once()
 {
    let rx = Receiver::start().await;
    let (dir, store) = store().await;
    ingest(&store, 1).await;
    let yaml = format!(
        "name: three\nmatch: {{class: runtime-threat}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{a}\"}}\n  - action: notify.webhook\n    with: {{url: \"{b}\"}}\n  - action: notify.webhook\n    after: 24h\n    with: {{url: \"{c}\"}}\n",
        a = rx.url("/a"),
        b = rx.url("/b"),
        c = rx.url("/c"),
    );
    let w = worker(&store, playbooks(&yaml), RunOptions::default(), "w1");
    let paths = || {
        rx.requests()
            .iter()
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>()
    };

    // Pause while step 1 is being applied: it finishes, step 2 is not started.
    rx.hold();
    let running = {
        let w = w.clone();
        tokio::spawn(async move { drain(&w).await })
    };
    while rx.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.set_flag("kill_switch", true, "test").await.unwrap();
    rx.release();
    running.await.unwrap();
    drain(&w).await;
    assert_eq!(paths(), ["/a"], "paused before step 2");
    assert_eq!(
        store.waiting_executions().await.unwrap()[1],
        ("applying".to_owned(), 1),
        "parked mid-playbook, state kept"
    );

    // Resume: step 2 runs, step 3 is scheduled 24 h out.
    store.set_flag("kill_switch", false, "test").await.unwrap();
    drain(&w).await;
    assert_eq!(paths(), ["/a", "/b"]);
    let due = scalar(&dir, "SELECT due_at FROM steps WHERE idx = 2")
        .await
        .unwrap();
    assert!(due > firebreak::store::now_ms() + 23 * 3_600_000);

    // Paused during the timer: the due time is kept; and once it has passed (24 h later,
    // simulated by moving the timer), nothing runs while paused.
    store.set_flag("kill_switch", true, "test").await.unwrap();
    drain(&w).await;
    assert_eq!(
        scalar(&dir, "SELECT due_at FROM steps WHERE idx = 2").await,
        Some(due),
        "pausing keeps the due time"
    );
    let past = firebreak::store::now_ms() - 1;
    execute(
        &dir,
        &format!(
            "UPDATE steps SET due_at = {past} WHERE idx = 2; UPDATE schedules SET due_at = {past}; \
             UPDATE executions SET wake_at = {past};"
        ),
    )
    .await;
    drain(&w).await;
    assert_eq!(paths(), ["/a", "/b"], "a due timer waits while paused");

    store.set_flag("kill_switch", false, "test").await.unwrap();
    drain(&w).await;
    drain(&w).await;
    assert_eq!(paths(), ["/a", "/b", "/c"], "every step ran once");
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.last().unwrap().detail["state"], "applied");
    let report = store.audit_verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn an_excluded_match_is_recorded_as_skipped_with_its_reason() {
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    ingest(&store, 1).await;
    let pb = notify_playbook(&rx.url("/hook"), "exclude:\n  - namespace: [default]\n");
    let w = worker(&store, playbooks(&pb), RunOptions::default(), "w1");
    drain(&w).await;
    assert!(rx.requests().is_empty());
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let matched = audit
        .iter()
        .find(|a| a.kind == "execution.matched")
        .unwrap();
    assert_eq!(matched.detail["state"], "skipped");
    assert!(
        matched.detail["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exclude[0]")
    );
}

#[tokio::test]
async fn dry_run_records_plans_and_sends_nothing() {
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    ingest(&store, 1).await;
    let w = worker(
        &store,
        playbooks(&notify_playbook(&rx.url("/hook"), "")),
        RunOptions {
            dry_run: true,
            ..RunOptions::default()
        },
        "w1",
    );
    drain(&w).await;
    assert!(rx.requests().is_empty());
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let planned = audit.iter().find(|a| a.kind == "step.planned").unwrap();
    assert!(
        planned.detail["plan_hash"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sha256:")
    );
    assert_eq!(audit.last().unwrap().detail["state"], "planned");
}

#[tokio::test]
async fn a_failed_step_is_recorded_and_the_execution_fails() {
    let rx = Receiver::start().await;
    rx.respond_with(400);
    let (_d, store) = store().await;
    ingest(&store, 1).await;
    let w = worker(
        &store,
        playbooks(&notify_playbook(&rx.url("/hook"), "")),
        RunOptions::default(),
        "w1",
    );
    drain(&w).await;
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let failed = audit.iter().find(|a| a.kind == "step.failed").unwrap();
    assert!(
        failed.detail["error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{failed:?}"
    );
    assert_eq!(audit.last().unwrap().detail["state"], "failed");
}

fn leased_worker(
    store: &Arc<SqliteStore>,
    pbs: Arc<RwLock<Arc<PlaybookSet>>>,
    owner: &str,
    lease: Duration,
    concurrency: usize,
) -> Worker<SqliteStore> {
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let opts = WorkerOptions {
        owner: owner.into(),
        lease,
        concurrency,
        poll: Duration::from_millis(20),
        run: RunOptions {
            retry_base: Duration::from_millis(1),
            ..RunOptions::default()
        },
        ..WorkerOptions::default()
    };
    Worker::new(Arc::clone(store), pbs, ctx, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_with_leases_shorter_than_the_action_apply_every_step_once() {
    // Each webhook answers after 2.5 s; leases last 1 s. Without renewal the other engine
    // would take the execution over mid-apply and send it again.
    let rx = Receiver::start().await;
    rx.delay_answers(Duration::from_millis(2_500));
    let (_d, store) = store().await;
    ingest(&store, 6).await;
    let pbs = playbooks(&notify_playbook(&rx.url("/hook"), ""));
    let engines: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|owner| leased_worker(&store, Arc::clone(&pbs), owner, Duration::from_secs(1), 3))
        .collect();
    let mut tasks = Vec::new();
    for w in engines {
        tasks.push(tokio::spawn(async move {
            // Keep looking for work until everything is done (a taken-over execution would be
            // claimable again after its lease).
            for _ in 0..5 {
                drain(&w).await;
                tokio::time::sleep(Duration::from_millis(1_100)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = rx.requests();
    assert_eq!(sent.len(), 6, "each step sent exactly once");
    let keys: HashSet<String> = sent
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 6);
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.iter().filter(|a| a.kind == "step.applied").count(), 6);
    assert!(audit.iter().all(|a| a.kind != "lease.lost"));
    let report = store.audit_verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn concurrent_workers_with_short_leases_apply_each_execution_exactly_once() {
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    ingest(&store, 40).await;
    let pbs = playbooks(&notify_playbook(&rx.url("/hook"), ""));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let w = leased_worker(
            &store,
            Arc::clone(&pbs),
            &format!("w{i}"),
            Duration::from_secs(1),
            4,
        );
        tasks.push(tokio::spawn(async move { drain(&w).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = rx.requests();
    assert_eq!(sent.len(), 40);
    let keys: HashSet<String> = sent
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 40, "one delivery per execution");
}

#[tokio::test]
async fn a_worker_holds_leases_on_no_more_executions_than_it_can_run() {
    let rx = Receiver::start().await;
    rx.hold();
    let (dir, store) = store().await;
    ingest(&store, 6).await;
    let w = leased_worker(
        &store,
        playbooks(&notify_playbook(&rx.url("/hook"), "")),
        "w1",
        HOUR,
        2,
    );
    let stop = Arc::new(tokio::sync::Notify::new());
    let running = {
        let (w, stop) = (w.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            w.run(Arc::new(tokio::sync::Notify::new()), stop.notified_owned())
                .await;
        })
    };
    while rx.requests().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.requests().len(), 2, "two slots, two actions in flight");
    assert_eq!(
        scalar(
            &dir,
            "SELECT COUNT(*) FROM executions WHERE lease_owner IS NOT NULL"
        )
        .await,
        Some(2),
        "the other four wait unleased, claimable by any engine"
    );
    rx.release();
    while rx.requests().len() < 6 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.notify_one();
    running.await.unwrap();
}

#[tokio::test]
async fn an_execution_finishes_on_its_pinned_playbook_after_an_edit_and_a_rename() {
    use firebreak::engine::reload::{Reload, Reloader};
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    let pdir = tempfile::tempdir().unwrap();
    let original = format!(
        "name: twostep\nmatch: {{class: runtime-threat}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{a}\"}}\n  - action: notify.webhook\n    after: 1s\n    with: {{url: \"{b}\"}}\n",
        a = rx.url("/first"),
        b = rx.url("/second"),
    );
    std::fs::write(pdir.path().join("twostep.yaml"), &original).unwrap();
    let shared = Arc::new(RwLock::new(Arc::new(
        firebreak::playbook::load_dir(pdir.path()).unwrap(),
    )));
    let mut reloader = Reloader::new(pdir.path(), Arc::clone(&shared));
    ingest(&store, 1).await;
    let w = worker(&store, Arc::clone(&shared), RunOptions::default(), "w1");
    drain(&w).await;
    assert_eq!(rx.requests().len(), 1);

    // While step 2 is scheduled, the file is edited (step 2 now posts elsewhere) and renamed
    // (a new name, in a new file): the old playbook is no longer loaded at all.
    std::fs::remove_file(pdir.path().join("twostep.yaml")).unwrap();
    std::fs::write(
        pdir.path().join("renamed.yaml"),
        original
            .replace("name: twostep", "name: renamed")
            .replace("/second", "/edited"),
    )
    .unwrap();
    assert!(matches!(reloader.check(), Reload::Swapped { playbooks: 1 }));
    assert_eq!(shared.read().unwrap().playbooks()[0].name, "renamed");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    drain(&w).await;
    let uris: Vec<String> = rx.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(
        uris,
        ["/first", "/second"],
        "the scheduled step ran as the playbook said when the execution started"
    );
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.last().unwrap().detail["state"], "applied");
    let matched = audit
        .iter()
        .find(|a| a.kind == "execution.matched")
        .unwrap();
    assert_eq!(
        matched.detail["revision"],
        firebreak::playbook::revision_of(&original)
    );
}

#[test]
fn a_valid_change_is_swapped_in_and_an_invalid_one_keeps_the_old_set() {
    use firebreak::engine::reload::{Reload, Reloader};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("a.yaml", &notify_playbook("http://127.0.0.1:9/x", ""));
    let shared = Arc::new(RwLock::new(Arc::new(
        firebreak::playbook::load_dir(dir.path()).unwrap(),
    )));
    let mut reloader = Reloader::new(dir.path(), Arc::clone(&shared));
    assert!(matches!(reloader.check(), Reload::Unchanged));

    write(
        "b.yaml",
        &notify_playbook("http://127.0.0.1:9/y", "").replace("name: notify", "name: second"),
    );
    assert!(matches!(reloader.check(), Reload::Swapped { playbooks: 2 }));
    assert_eq!(shared.read().unwrap().playbooks().len(), 2);

    write("c.yaml", "name: broken\nmatch: {class: nope}\nsteps: []\n");
    match reloader.check() {
        Reload::Rejected(ds) => assert!(
            ds.iter().any(|d| d.message.contains("unknown class")),
            "{ds:?}"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let names: Vec<String> = shared
        .read()
        .unwrap()
        .playbooks()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        names,
        ["notify", "second"],
        "the previous set stays in force"
    );
}
