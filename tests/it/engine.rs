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

#[tokio::test]
async fn the_kill_switch_in_the_store_stops_every_apply() {
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
    assert!(rx.requests().is_empty());
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.kind == "execution.state" && a.detail["state"] == "skipped")
            .count(),
        3
    );
    assert!(
        audit
            .iter()
            .any(|a| a.detail["reason"] == "kill switch is on")
    );
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

#[tokio::test]
async fn concurrent_workers_apply_each_execution_exactly_once() {
    let rx = Receiver::start().await;
    let (_d, store) = store().await;
    ingest(&store, 40).await;
    let pbs = playbooks(&notify_playbook(&rx.url("/hook"), ""));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let w = worker(
            &store,
            Arc::clone(&pbs),
            RunOptions::default(),
            &format!("w{i}"),
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
