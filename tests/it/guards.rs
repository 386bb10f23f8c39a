//! Guards and timers in the durable engine: cooldowns, blast-radius caps and rate limits are
//! decided in the store (held for a person or skipped, audited), break-glass approval releases a
//! held execution, target locks admit one owner, and a step with `after:` waits for its timer
//! across a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use firebreak::action::ActionCtx;
use firebreak::config::Config;
use firebreak::engine::RunOptions;
use firebreak::engine::worker::{Round, Worker, WorkerOptions};
use firebreak::playbook::{PlaybookSet, load_str};
use firebreak::store::sqlite::SqliteStore;
use firebreak::store::{AuditQuery, AuditRecord, IngestBatch, Store};

use crate::fixtures::{self, FALCO_K8S_API, FALCO_SHELL};
use crate::support::receiver::Receiver;

const HOUR: Duration = Duration::from_secs(3600);

fn playbooks(yaml: &str) -> Arc<RwLock<Arc<PlaybookSet>>> {
    let (pb, _) = load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(RwLock::new(Arc::new(PlaybookSet::new(vec![pb]))))
}

/// A playbook that notifies `url` for every runtime threat, with `guards`.
fn guarded(url: &str, guards: &str) -> String {
    format!(
        "name: guarded\nmatch: {{class: runtime-threat}}\nguards: {guards}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{url}\"}}\n"
    )
}

struct Ledger {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Arc<SqliteStore>,
}

impl Ledger {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let store = Arc::new(open(&path).await);
        Self {
            _dir: dir,
            path,
            store,
        }
    }

    async fn ingest(&self, rel: &str, copies: usize) {
        let findings = (0..copies).map(|_| fixtures::finding(rel)).collect();
        self.store
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

    async fn audit(&self) -> Vec<AuditRecord> {
        self.store.audit_list(AuditQuery::default()).await.unwrap()
    }
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

fn worker(store: &Arc<SqliteStore>, pbs: Arc<RwLock<Arc<PlaybookSet>>>) -> Worker<SqliteStore> {
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let opts = WorkerOptions {
        owner: "w1".into(),
        lease: HOUR,
        // One at a time, so that which execution a limit stops is deterministic.
        concurrency: 1,
        run: RunOptions {
            retry_base: Duration::from_millis(1),
            ..RunOptions::default()
        },
        ..WorkerOptions::default()
    };
    Worker::new(Arc::clone(store), pbs, ctx, opts)
}

async fn drain(w: &Worker<SqliteStore>) {
    while w.round().await.unwrap() != Round::default() {}
}

fn states(audit: &[AuditRecord], state: &str) -> Vec<AuditRecord> {
    audit
        .iter()
        .filter(|a| a.kind == "execution.state" && a.detail["state"] == state)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_cooldown_holds_a_second_action_on_the_same_target_until_a_person_approves_it() {
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let w = worker(
        &l.store,
        playbooks(&guarded(&rx.url("/hook"), "{cooldown: 1h}")),
    );
    l.ingest(FALCO_SHELL, 1).await;
    drain(&w).await;
    l.ingest(FALCO_SHELL, 1).await; // another alert about the same pod
    drain(&w).await;
    assert_eq!(
        rx.requests().len(),
        1,
        "the second alert is held, not acted on"
    );

    let pending = l.store.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("held for approval: cooldown")),
        "{pending:?}"
    );
    let audit = l.audit().await;
    let denied: Vec<_> = audit.iter().filter(|a| a.kind == "guard.denied").collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].detail["limit"]["guard"], "cooldown");
    assert_eq!(
        denied[0].execution_id.as_deref(),
        Some(pending[0].execution_id.as_str())
    );

    assert!(
        l.store
            .decide(
                &pending[0].execution_id,
                true,
                "cli:alice",
                "confirmed by on-call"
            )
            .await
            .unwrap()
    );
    drain(&w).await;
    assert_eq!(
        rx.requests().len(),
        2,
        "approval lets it pass the cooldown once"
    );
    let audit = l.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a.kind == "approval.granted" && a.detail["by"] == "cli:alice")
    );
    assert!(audit.iter().any(|a| a.kind == "guard.waived"));
    assert_eq!(states(&audit, "applied").len(), 2);
    assert!(l.store.pending_approvals().await.unwrap().is_empty());
    assert!(
        !l.store
            .decide(&pending[0].execution_id, false, "cli:bob", "too late")
            .await
            .unwrap(),
        "a decided execution cannot be decided again"
    );
    assert!(l.store.audit_verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn a_rate_limit_with_on_limit_skip_acts_that_many_times_and_skips_the_rest() {
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let w = worker(
        &l.store,
        playbooks(&guarded(
            &rx.url("/hook"),
            "{max_runs_per_hour: 2, on_limit: skip}",
        )),
    );
    l.ingest(FALCO_SHELL, 5).await;
    drain(&w).await;
    assert_eq!(rx.requests().len(), 2);
    let audit = l.audit().await;
    let skipped = states(&audit, "skipped");
    assert_eq!(skipped.len(), 3);
    assert!(
        skipped.iter().all(|a| a.detail["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("skipped: rate limit")),
        "{skipped:?}"
    );
    assert!(
        l.store.pending_approvals().await.unwrap().is_empty(),
        "skip does not hold"
    );
}

#[tokio::test]
async fn the_blast_radius_cap_counts_distinct_targets_and_holds_a_new_one() {
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let w = worker(
        &l.store,
        playbooks(&guarded(&rx.url("/hook"), "{max_targets_per_hour: 1}")),
    );
    l.ingest(FALCO_SHELL, 2).await;
    drain(&w).await;
    assert_eq!(
        rx.requests().len(),
        2,
        "the same target twice stays within a cap of one target"
    );
    l.ingest(FALCO_K8S_API, 1).await; // a different pod
    drain(&w).await;
    assert_eq!(rx.requests().len(), 2, "a second target is over the cap");
    let pending = l.store.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("blast radius"),
        "{pending:?}"
    );
    assert!(
        l.store
            .decide(
                &pending[0].execution_id,
                false,
                "cli:alice",
                "known test pod"
            )
            .await
            .unwrap()
    );
    drain(&w).await;
    assert_eq!(rx.requests().len(), 2, "a denied execution never acts");
    assert_eq!(states(&l.audit().await, "cancelled").len(), 1);
}

#[tokio::test]
async fn dry_run_is_not_limited_and_does_not_use_up_a_limit() {
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let pbs = playbooks(&guarded(&rx.url("/hook"), "{max_runs_per_hour: 1}"));
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let dry = Worker::new(
        Arc::clone(&l.store),
        Arc::clone(&pbs),
        ctx,
        WorkerOptions {
            owner: "dry".into(),
            run: RunOptions {
                dry_run: true,
                ..RunOptions::default()
            },
            ..WorkerOptions::default()
        },
    );
    l.ingest(FALCO_SHELL, 3).await;
    drain(&dry).await;
    assert_eq!(states(&l.audit().await, "planned").len(), 3);
    l.ingest(FALCO_SHELL, 1).await;
    drain(&worker(&l.store, pbs)).await;
    assert_eq!(
        rx.requests().len(),
        1,
        "the real run still has its one action"
    );
}

#[tokio::test]
async fn a_target_lock_admits_one_owner_until_it_is_released_or_expires() {
    let l = Ledger::new().await;
    l.ingest(FALCO_SHELL, 1).await;
    let s = &l.store;
    let key = "k8s:/default/Pod/kubecon/";
    assert!(s.lock_target(key, "a", "e1", HOUR).await.unwrap());
    assert!(
        s.lock_target(key, "a", "e1", HOUR).await.unwrap(),
        "re-entrant for its holder"
    );
    assert!(
        !s.lock_target(key, "b", "e2", HOUR).await.unwrap(),
        "held by a"
    );
    s.unlock_target(key, "b").await.unwrap();
    assert!(
        !s.lock_target(key, "b", "e2", HOUR).await.unwrap(),
        "only the holder unlocks"
    );
    s.unlock_target(key, "a").await.unwrap();
    assert!(s.lock_target(key, "b", "e2", Duration::ZERO).await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        s.lock_target(key, "c", "e3", HOUR).await.unwrap(),
        "an expired lock (its holder crashed) is free"
    );
}

#[tokio::test]
async fn a_scheduled_step_waits_for_its_timer_and_runs_after_a_restart() {
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let yaml = format!(
        "name: later\nmatch: {{class: runtime-threat}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{first}\"}}\n  - action: notify.webhook\n    after: 2s\n    with: {{url: \"{second}\"}}\n",
        first = rx.url("/now"),
        second = rx.url("/later")
    );
    let pbs = playbooks(&yaml);
    l.ingest(FALCO_SHELL, 1).await;
    drain(&worker(&l.store, Arc::clone(&pbs))).await;
    let paths = |rx: &Receiver| {
        rx.requests()
            .iter()
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&rx), ["/now"]);
    let audit = l.audit().await;
    let scheduled = audit.iter().find(|a| a.kind == "step.scheduled").unwrap();
    let due = scheduled.detail["due_at"].as_i64().unwrap();
    assert_eq!(states(&audit, "scheduled").len(), 1);
    assert_eq!(
        l.store.waiting_executions().await.unwrap(),
        [
            ("matched".to_owned(), 0),
            ("applying".to_owned(), 0),
            ("scheduled".to_owned(), 1),
            ("pending_approval".to_owned(), 0)
        ]
    );

    // Restart: a new store handle and a new engine on the same database file.
    let path = l.path.clone();
    drop(l.store);
    let store = Arc::new(open(&path).await);
    let w = worker(&store, Arc::clone(&pbs));
    drain(&w).await;
    assert_eq!(paths(&rx), ["/now"], "not due yet");
    let wait = due - firebreak::store::now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap() + 50)).await;
    }
    drain(&w).await;
    assert_eq!(paths(&rx), ["/now", "/later"]);
    drain(&w).await;
    assert_eq!(paths(&rx), ["/now", "/later"], "a fired timer fires once");
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.last().unwrap().detail["state"], "applied");
    let order: Vec<&str> = audit
        .iter()
        .filter(|a| a.kind.starts_with("step."))
        .map(|a| a.kind.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "step.applying",
            "step.applied",
            "step.scheduled",
            "step.applying",
            "step.applied"
        ]
    );
}

#[tokio::test]
async fn dry_run_plans_a_scheduled_step_at_once_without_a_timer() {
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let yaml = format!(
        "name: later\nmatch: {{class: runtime-threat}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{u}\"}}\n  - action: notify.webhook\n    after: 1d\n    with: {{url: \"{u}\"}}\n",
        u = rx.url("/x")
    );
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let w = Worker::new(
        Arc::clone(&l.store),
        playbooks(&yaml),
        ctx,
        WorkerOptions {
            run: RunOptions {
                dry_run: true,
                ..RunOptions::default()
            },
            ..WorkerOptions::default()
        },
    );
    l.ingest(FALCO_SHELL, 1).await;
    drain(&w).await;
    let audit = l.audit().await;
    assert_eq!(audit.iter().filter(|a| a.kind == "step.planned").count(), 2);
    assert!(!audit.iter().any(|a| a.kind == "step.scheduled"));
    assert!(rx.requests().is_empty());
}

/// A playbook that asks for approval before it notifies `url`.
fn needs_approval(url: &str, guards: &str) -> String {
    format!(
        "name: approved\nmatch: {{class: runtime-threat}}\nguards: {guards}\napproval: {{github: {{repo: org/infra, reviewers: [alice]}}}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{url}\"}}\n"
    )
}

#[tokio::test]
async fn a_playbook_that_asks_first_is_planned_in_full_held_and_applied_once_its_exact_plan_is_approved()
 {
    use crate::support::approvals::vote;
    use firebreak::store::VoteOutcome;
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    // Two steps, two approvals needed; `on_limit: skip` governs limits only: an approval the
    // playbook asks for is waited for.
    let yaml = format!(
        "name: approved\nmatch: {{class: runtime-threat}}\nguards: {{on_limit: skip}}\napproval: {{github: {{repo: org/infra, reviewers: [alice, bob], min: 2}}}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{a}\"}}\n  - action: notify.webhook\n    with: {{url: \"{b}\"}}\n",
        a = rx.url("/a"),
        b = rx.url("/b"),
    );
    let w = worker(&l.store, playbooks(&yaml));
    l.ingest(FALCO_SHELL, 1).await;
    drain(&w).await;
    assert!(rx.requests().is_empty(), "nothing acts before approval");
    let pending = l.store.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 1);
    let id = pending[0].execution_id.clone();
    let req = l.store.approval(&id).await.unwrap().unwrap();
    assert_eq!(req.state, "pending");
    assert_eq!(req.revision, 1);
    let plans = req.request.plans.as_array().unwrap();
    assert_eq!(plans.len(), 2, "every step is planned before holding");
    assert!(plans.iter().all(|p| p["plan"]["hash"].is_string()));
    let hash = req.request.plan_hash.clone();
    assert_eq!(
        hash,
        firebreak::engine::approval::plan_hash(&req.request.plans)
    );

    // A vote for another plan is ignored; one reviewer twice is still one approval.
    let stale = l
        .store
        .vote(&id, "sha256:other", &vote("alice", "approved"))
        .await
        .unwrap();
    assert_eq!(
        stale,
        VoteOutcome::Stale {
            current: hash.clone()
        }
    );
    for _ in 0..2 {
        let counted = l
            .store
            .vote(&id, &hash, &vote("alice", "approved"))
            .await
            .unwrap();
        assert_eq!(
            counted,
            VoteOutcome::Counted {
                approvals: 1,
                min: 2
            }
        );
    }
    drain(&w).await;
    assert!(rx.requests().is_empty(), "one approval of two: still held");
    assert_eq!(
        l.store
            .vote(&id, &hash, &vote("bob", "approved"))
            .await
            .unwrap(),
        VoteOutcome::Approved
    );
    drain(&w).await;
    drain(&w).await;
    let paths: Vec<String> = rx.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(paths, ["/a", "/b"], "approved: each step acts once");
    let audit = l.audit().await;
    let kinds: Vec<&str> = audit.iter().map(|a| a.kind.as_str()).collect();
    for kind in [
        "approval.requested",
        "approval.ignored",
        "approval.vote",
        "approval.granted",
    ] {
        assert!(kinds.contains(&kind), "{kind}: {kinds:?}");
    }
    let granted = audit.iter().find(|a| a.kind == "approval.granted").unwrap();
    assert_eq!(granted.detail["plan_hash"], hash);
    assert_eq!(granted.detail["by"], serde_json::json!(["alice", "bob"]));
    assert!(l.store.audit_verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn changes_requested_holds_a_plan_until_that_reviewer_approves_and_a_closed_request_cancels()
{
    use crate::support::approvals::vote;
    use firebreak::store::VoteOutcome;
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let w = worker(&l.store, playbooks(&needs_approval(&rx.url("/hook"), "{}")));
    l.ingest(FALCO_SHELL, 2).await;
    drain(&w).await;
    let pending = l.store.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 2);
    let (first, second) = (&pending[0].execution_id, &pending[1].execution_id);
    let hash = l
        .store
        .approval(first)
        .await
        .unwrap()
        .unwrap()
        .request
        .plan_hash;
    assert_eq!(
        l.store
            .vote(first, &hash, &vote("carol", "changes_requested"))
            .await
            .unwrap(),
        VoteOutcome::ChangesRequested
    );
    assert_eq!(
        l.store
            .vote(first, &hash, &vote("alice", "approved"))
            .await
            .unwrap(),
        VoteOutcome::ChangesRequested,
        "a request for changes blocks other approvals"
    );
    drain(&w).await;
    assert!(rx.requests().is_empty());
    assert_eq!(
        l.store
            .vote(first, &hash, &vote("carol", "approved"))
            .await
            .unwrap(),
        VoteOutcome::Approved
    );
    drain(&w).await;
    assert_eq!(rx.requests().len(), 1);

    assert!(
        l.store
            .close_approval(second, "bob", "github-pr-closed:7", "not now")
            .await
            .unwrap()
    );
    assert!(
        !l.store
            .close_approval(second, "bob", "cli", "again")
            .await
            .unwrap()
    );
    let hash2 = l
        .store
        .approval(second)
        .await
        .unwrap()
        .unwrap()
        .request
        .plan_hash;
    assert_eq!(
        l.store
            .vote(second, &hash2, &vote("alice", "approved"))
            .await
            .unwrap(),
        VoteOutcome::NotPending
    );
    drain(&w).await;
    assert_eq!(rx.requests().len(), 1, "a closed request never acts");
    let (_, row) = l.store.execution(second).await.unwrap().unwrap();
    assert_eq!(row.state, firebreak::store::ExecState::Cancelled);
}

#[tokio::test]
async fn an_approval_request_not_answered_in_time_expires_and_its_execution_never_acts() {
    use crate::support::approvals::vote;
    use firebreak::store::VoteOutcome;
    let rx = Receiver::start().await;
    let l = Ledger::new().await;
    let yaml = needs_approval(&rx.url("/hook"), "{}")
        .replace("reviewers: [alice]", "reviewers: [alice], expires: 1h");
    let w = worker(&l.store, playbooks(&yaml));
    l.ingest(FALCO_SHELL, 1).await;
    drain(&w).await;
    let id = l.store.pending_approvals().await.unwrap()[0]
        .execution_id
        .clone();
    let req = l.store.approval(&id).await.unwrap().unwrap();
    let now = firebreak::store::now_ms();
    assert!(
        (req.request.expires_at - now - 3_600_000).abs() < 60_000,
        "{req:?}"
    );
    // Not yet due: nothing expires.
    assert!(l.store.expire_approvals(now).await.unwrap().is_empty());
    // An hour later (the sweeper's clock): it expires, once.
    let expired = l.store.expire_approvals(now + 3_600_001).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state, "expired");
    assert!(
        l.store
            .expire_approvals(now + 7_200_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        l.store
            .vote(&id, &req.request.plan_hash, &vote("alice", "approved"))
            .await
            .unwrap(),
        VoteOutcome::NotPending
    );
    drain(&w).await;
    assert!(rx.requests().is_empty());
    let (_, row) = l.store.execution(&id).await.unwrap().unwrap();
    assert_eq!(row.state, firebreak::store::ExecState::Expired);
    assert!(l.audit().await.iter().any(|a| a.kind == "approval.expired"));
}

#[tokio::test]
async fn without_a_store_a_playbook_that_asks_for_approval_is_held_and_never_acts() {
    let rx = Receiver::start().await;
    let pbs = playbooks(&needs_approval(&rx.url("/hook"), "{}"));
    let set = Arc::clone(&pbs.read().unwrap());
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let finding = fixtures::finding(FALCO_SHELL);
    let report = firebreak::engine::run_in_memory(
        &set,
        &ctx,
        std::slice::from_ref(&finding),
        &RunOptions::default(),
        &|| {},
    )
    .await
    .unwrap();
    assert!(report.executions.is_empty(), "{report:#?}");
    assert_eq!(report.not_acted.len(), 1, "{report:#?}");
    assert!(
        report.not_acted[0].reason.contains("approval required"),
        "{report:#?}"
    );
    assert!(rx.requests().is_empty());
}
