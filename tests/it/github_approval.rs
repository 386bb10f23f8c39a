//! Approval through GitHub pull requests, bound to the exact plan, against the GitHub emulator
//! and its signed webhooks: the engine opens the pull request, reviews decide, and only an
//! approval of the plan as it is by an allowed reviewer applies it.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use firebreak::action::ActionCtx;
use firebreak::clients::github::GitHub;
use firebreak::clients::kube::Kube;
use firebreak::config::{Config, GithubConfig};
use firebreak::engine::RunOptions;
use firebreak::engine::approval::github::GithubApprovals;
use firebreak::engine::worker::{Round, Worker, WorkerOptions};
use firebreak::ingest::github::GithubHook;
use firebreak::ingest::{Intake, IntakeConfig};
use firebreak::playbook::{PlaybookSet, load_str};
use firebreak::redact::Redacted;
use firebreak::server::{AppState, router};
use firebreak::store::sqlite::SqliteStore;
use firebreak::store::{AuditQuery, AuditRecord, ExecState, IngestBatch, Store};
use firebreak::telemetry::metrics::Metrics;
use serde_json::Value;

use crate::fixtures::{self, FALCO_SHELL};
use crate::kube_actions::{fake_secret, seed_kubecon};
use crate::support::github_api::{GithubApi, ReviewState, sign};
use crate::support::kube_api::KubeApi;
use crate::support::receiver::Receiver;

const OWNER: &str = "org";
const REPO: &str = "infra";
const BOT: &str = "firebreak-bot";
const SECRET: &str = "webhook-secret-for-tests";

/// Firebreak on a durable store, asking on GitHub: the engine, the approvals, and the service's
/// router receiving the emulator's webhooks.
struct Rig {
    api: GithubApi,
    rx: Receiver,
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    worker: Worker<SqliteStore>,
    approvals: GithubApprovals<SqliteStore>,
    hook_url: String,
}

fn playbook(url: &str, approval: &str) -> Arc<RwLock<Arc<PlaybookSet>>> {
    let yaml = format!(
        "name: asks\nmatch: {{class: runtime-threat}}\napproval: {{github: {{repo: {OWNER}/{REPO}, {approval}}}}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{url}\"}}\n"
    );
    let (pb, _) = load_str(Path::new("asks.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(RwLock::new(Arc::new(PlaybookSet::new(vec![pb]))))
}

async fn bot(api: &GithubApi) -> GitHub {
    let cfg = GithubConfig {
        base_url: api.base.clone(),
        token: Some(Redacted::new(api.user_token(BOT))),
        ..GithubConfig::default()
    };
    GitHub::load(&cfg).await.unwrap().unwrap()
}

impl Rig {
    async fn start(approval: &str) -> Self {
        let api = GithubApi::start().await;
        api.add_org(OWNER);
        api.create_repo(OWNER, REPO, "main", &[("README.md", "# infra\n")]);
        let rx = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let pbs = playbook(&rx.url("/hook"), approval);
        let mut rig = Self::on(api, rx, dir, pbs, |c| c).await;
        rig.ingest().await;
        rig
    }

    /// Firebreak (engine, approvals, webhook route) on the ledger in `dir`: also a restart.
    async fn on(
        api: GithubApi,
        rx: Receiver,
        dir: tempfile::TempDir,
        pbs: Arc<RwLock<Arc<PlaybookSet>>>,
        with: impl FnOnce(ActionCtx) -> ActionCtx,
    ) -> Self {
        let store = Arc::new(
            SqliteStore::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
                .await
                .unwrap(),
        );
        let gh = bot(&api).await;
        let approvals = GithubApprovals::new(gh.clone(), Arc::clone(&store));
        let gh_hook = gh.clone();
        let ctx = ActionCtx::from_config(&Config::default())
            .unwrap()
            .with_github(gh);
        let ctx = with(ctx);
        let worker = Worker::new(
            Arc::clone(&store),
            pbs,
            ctx,
            WorkerOptions {
                owner: "w1".into(),
                run: RunOptions {
                    retry_base: Duration::from_millis(1),
                    ..RunOptions::default()
                },
                ..WorkerOptions::default()
            },
        )
        .with_approval_channel(Arc::new(approvals.clone()));
        let metrics = Arc::new(Metrics::new());
        let config = Config::default();
        let (intake, _writer) = Intake::start(
            Arc::clone(&store),
            IntakeConfig::from_config(&config, Arc::clone(&metrics)),
            Arc::new(tokio::sync::Notify::new()),
        );
        let state = AppState::new(intake, Arc::clone(&store), metrics, &config.server).with_github(
            GithubHook {
                secret: Redacted::new(SECRET.to_owned()),
                approvals: Some(approvals.clone()),
                github: Some(gh_hook),
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook_url = format!("http://{}/v1/github", listener.local_addr().unwrap());
        let app = router(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        api.set_webhook(&hook_url, SECRET);
        Self {
            api,
            rx,
            dir,
            store,
            worker,
            approvals,
            hook_url,
        }
    }

    async fn ingest(&mut self) {
        self.store
            .record(
                IngestBatch {
                    intake: "test".into(),
                    findings: vec![fixtures::finding(FALCO_SHELL)],
                    ..IngestBatch::default()
                },
                Duration::ZERO,
            )
            .await
            .unwrap();
    }

    async fn drain(&self) {
        while self.worker.round().await.unwrap() != Round::default() {}
    }

    fn pull(&self) -> Value {
        let pulls = self.api.pulls(OWNER, REPO);
        assert_eq!(pulls.len(), 1, "one approval pull request: {pulls:#?}");
        pulls[0].clone()
    }

    fn number(&self) -> u64 {
        self.pull()["number"].as_u64().unwrap()
    }

    async fn review(&self, login: &str, state: ReviewState) {
        self.api
            .submit_review(OWNER, REPO, self.number(), login, state, "")
            .unwrap();
        self.api.settle().await;
    }

    async fn execution(&self) -> (String, ExecState) {
        let audit = self.audit().await;
        let id = audit
            .iter()
            .find(|a| a.kind == "approval.requested")
            .and_then(|a| a.execution_id.clone())
            .expect("an approval request");
        let (_, row) = self.store.execution(&id).await.unwrap().unwrap();
        (id, row.state)
    }

    async fn audit(&self) -> Vec<AuditRecord> {
        self.store.audit_list(AuditQuery::default()).await.unwrap()
    }

    async fn ignored(&self) -> Vec<String> {
        self.audit()
            .await
            .iter()
            .filter(|a| a.kind == "approval.ignored")
            .map(|a| a.detail["why"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn comments(&self) -> Vec<String> {
        self.api
            .comments(OWNER, REPO, self.number())
            .iter()
            .map(|c| c["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_approved_by_an_allowed_reviewer_on_its_pull_request_is_applied_once() {
    let rig = Rig::start("reviewers: [alice]").await;
    rig.drain().await;
    assert!(rig.rx.requests().is_empty(), "nothing before approval");

    // The pull request shows the plan, names its hash, is labelled and asks the reviewers.
    let pull = rig.pull();
    let req = rig
        .store
        .approval(&rig.execution().await.0)
        .await
        .unwrap()
        .unwrap();
    let body = pull["body"].as_str().unwrap();
    assert!(body.contains(&req.request.plan_hash), "{body}");
    assert!(body.contains("notify.webhook"), "{body}");
    assert!(
        body.contains("<!-- firebreak:approval execution="),
        "{body}"
    );
    assert!(body.contains("### Evidence"), "{body}");
    assert!(
        body.contains("`firebreak audit list --finding "),
        "the evidence names where the finding and its trail are: {body}"
    );
    assert_eq!(pull["user"]["login"], BOT);
    let labels: Vec<&str> = pull["labels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(labels, ["firebreak", "firebreak:approval"]);
    assert_eq!(pull["requested_reviewers"][0]["login"], "alice");
    assert_eq!(req.head_sha.as_deref(), pull["head"]["sha"].as_str());

    rig.review("alice", ReviewState::Approved).await;
    rig.drain().await;
    rig.drain().await;
    assert_eq!(rig.rx.requests().len(), 1, "applied once");
    assert_eq!(rig.execution().await.1, ExecState::Applied);
    let granted = rig
        .audit()
        .await
        .into_iter()
        .find(|a| a.kind == "approval.granted")
        .unwrap();
    assert_eq!(granted.detail["by"][0], "alice");
    assert_eq!(granted.detail["plan_hash"], req.request.plan_hash);
    assert!(
        granted.detail["via"]
            .as_str()
            .unwrap()
            .starts_with("github-review:")
    );
    assert!(
        rig.comments().iter().any(|c| c.starts_with("applied")),
        "{:?}",
        rig.comments()
    );
    assert!(rig.store.audit_verify().await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_author_firebreak_itself_an_unlisted_user_and_too_few_approvals_never_apply() {
    let rig = Rig::start("reviewers: [alice, bob, \"@org/security\"], min: 2").await;
    rig.drain().await;
    let n = rig.number();
    // Firebreak opened the pull request: its own approval (which GitHub would refuse from the
    // author anyway) is ignored; so is one by a user nobody listed.
    rig.api
        .inject_review(OWNER, REPO, n, BOT, ReviewState::Approved, "");
    rig.review("mallory", ReviewState::Approved).await;
    rig.review("alice", ReviewState::Approved).await;
    rig.drain().await;
    assert!(rig.rx.requests().is_empty(), "one allowed approval of two");
    let ignored = rig.ignored().await;
    assert!(
        ignored
            .iter()
            .any(|w| w.contains("Firebreak's own identity")),
        "{ignored:?}"
    );
    assert!(
        ignored
            .iter()
            .any(|w| w.contains("mallory is not an allowed reviewer")),
        "{ignored:?}"
    );
    assert_eq!(rig.execution().await.1, ExecState::PendingApproval);

    // A member of the listed team makes it two.
    rig.api
        .add_team_member(OWNER, "security", "carol", "member");
    rig.review("carol", ReviewState::Approved).await;
    rig.drain().await;
    assert_eq!(rig.rx.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_requested_holds_and_a_closed_pull_request_cancels() {
    let rig = Rig::start("reviewers: [alice, bob]").await;
    rig.drain().await;
    rig.review("bob", ReviewState::ChangesRequested).await;
    rig.review("alice", ReviewState::Approved).await;
    rig.drain().await;
    assert!(rig.rx.requests().is_empty(), "changes requested holds it");
    rig.api.close_pull_as("bob", OWNER, REPO, rig.number());
    rig.api.settle().await;
    rig.drain().await;
    assert!(rig.rx.requests().is_empty());
    assert_eq!(rig.execution().await.1, ExecState::Cancelled);
    let cancelled = rig
        .audit()
        .await
        .into_iter()
        .find(|a| a.kind == "approval.cancelled")
        .unwrap();
    assert_eq!(cancelled.detail["by"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_expires_and_its_pull_request_is_commented_and_closed() {
    let rig = Rig::start("reviewers: [alice], expires: 1s").await;
    rig.drain().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    rig.worker.tend_approvals().await.unwrap();
    assert_eq!(rig.execution().await.1, ExecState::Expired);
    assert_eq!(rig.pull()["state"], "closed");
    assert!(
        rig.comments().iter().any(|c| c.starts_with("expired")),
        "{:?}",
        rig.comments()
    );
    // A late approval changes nothing.
    rig.api.inject_review(
        OWNER,
        REPO,
        rig.number(),
        "alice",
        ReviewState::Approved,
        "",
    );
    rig.api.settle().await;
    rig.drain().await;
    assert!(rig.rx.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_and_replayed_webhooks_change_nothing() {
    let rig = Rig::start("reviewers: [alice]").await;
    rig.drain().await;
    let http = reqwest::Client::new();
    // A forged approval: mallory writes a review payload naming alice, signed with a guess.
    rig.api.pause_webhooks(true);
    rig.review("alice", ReviewState::Approved).await;
    rig.api.pause_webhooks(false);
    let captured = rig.api.deliveries().last().unwrap().clone();
    for (sig, status) in [
        (Some(sign("not-the-secret", &captured.body)), 401),
        (None, 401),
        (Some("sha256=00".to_owned()), 401),
    ] {
        let mut req = http
            .post(&rig.hook_url)
            .header("x-github-event", "pull_request_review")
            .header("x-github-delivery", "forged-1")
            .body(captured.body.clone());
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), status);
    }
    rig.drain().await;
    assert!(rig.rx.requests().is_empty(), "nothing changed");
    assert!(rig.ignored().await.is_empty(), "nothing was even read");

    // The real delivery counts once; a replay of it (same GUID) is ignored.
    rig.api.redeliver(&captured.id).await;
    rig.api.redeliver(&captured.id).await;
    let statuses: Vec<Option<u16>> = rig
        .api
        .deliveries()
        .iter()
        .filter(|d| d.id == captured.id && !d.dropped)
        .map(|d| d.status)
        .collect();
    assert_eq!(statuses, [Some(202), Some(200)]);
    rig.drain().await;
    assert_eq!(rig.rx.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_pending_loses_nothing_and_a_missed_webhook_is_caught_by_polling() {
    let rig = Rig::start("reviewers: [alice]").await;
    rig.drain().await;
    let number = rig.number();
    let Rig {
        api,
        rx,
        dir,
        store,
        ..
    } = rig;
    drop(store);
    // Down: the approval's delivery is lost.
    api.pause_webhooks(true);
    api.submit_review(OWNER, REPO, number, "alice", ReviewState::Approved, "")
        .unwrap();
    api.settle().await;
    let pbs = playbook(&rx.url("/hook"), "reviewers: [alice]");
    let rig = Rig::on(api, rx, dir, pbs, |c| c).await;
    rig.api.pause_webhooks(false);
    rig.drain().await;
    assert!(
        rig.rx.requests().is_empty(),
        "the approval was never delivered"
    );
    rig.approvals.poll().await.unwrap();
    rig.approvals.poll().await.unwrap();
    rig.drain().await;
    assert_eq!(rig.rx.requests().len(), 1, "polling caught it, once");
    let votes = rig
        .audit()
        .await
        .iter()
        .filter(|a| a.kind == "approval.vote")
        .count();
    assert_eq!(votes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_after_approval_updates_the_pull_request_and_only_the_new_plan_approved_applies() {
    let kube = KubeApi::start().await;
    seed_kubecon(&kube, vec![], &fake_secret());
    let api = GithubApi::start().await;
    api.add_org(OWNER);
    api.create_repo(OWNER, REPO, "main", &[("README.md", "# infra\n")]);
    let yaml = format!(
        "name: isolate\nmatch: {{source: [falco]}}\napproval: {{github: {{repo: {OWNER}/{REPO}, reviewers: [alice]}}}}\nsteps:\n  - action: kubernetes.isolate-pod\n"
    );
    let (pb, _) = load_str(Path::new("isolate.yaml"), &yaml).unwrap();
    let pbs = Arc::new(RwLock::new(Arc::new(PlaybookSet::new(vec![pb]))));
    let rx = Receiver::start().await;
    let mut rig = Rig::on(api, rx, tempfile::tempdir().unwrap(), pbs, |c| {
        c.with_kube(Kube::from_url(&kube.base).unwrap())
    })
    .await;
    rig.ingest().await;
    rig.drain().await;
    let first = rig.pull();
    let first_head = first["head"]["sha"].as_str().unwrap().to_owned();

    rig.review("alice", ReviewState::Approved).await;
    // Between the approval and the apply, the pod is isolated by hand with another policy.
    kube.seed(&k8s_openapi::api::networking::v1::NetworkPolicy {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("firebreak-isolate-kubecon".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    let writes = kube.writes();
    rig.drain().await;
    assert_eq!(kube.writes(), writes, "the drifted plan is not applied");
    let (id, state) = rig.execution().await;
    assert_eq!(state, ExecState::PendingApproval);
    let req = rig.store.approval(&id).await.unwrap().unwrap();
    assert_eq!(req.revision, 2);

    // The same pull request now shows the new plan, in a new commit, and says why.
    let second = rig.pull();
    assert_eq!(second["number"], first["number"]);
    let second_head = second["head"]["sha"].as_str().unwrap().to_owned();
    assert_ne!(second_head, first_head);
    assert_eq!(req.head_sha.as_deref(), Some(second_head.as_str()));
    let body = second["body"].as_str().unwrap();
    assert!(body.contains(&req.request.plan_hash), "{body}");
    assert!(body.starts_with("> **drifted"), "{body}");
    assert!(
        rig.comments().iter().any(|c| c.starts_with("drifted")),
        "{:?}",
        rig.comments()
    );

    // alice's earlier approval was of the old commit: it does not carry over. Approving the
    // new commit applies the new plan.
    rig.drain().await;
    assert_eq!(kube.writes(), writes);
    rig.review("alice", ReviewState::Approved).await;
    rig.drain().await;
    assert_eq!(rig.execution().await.1, ExecState::Applied);
    assert!(kube.writes() > writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_scanning_alert_for_an_aws_key_ends_revoked_after_a_real_rotation() {
    use crate::aws_iam::{seed_consumers, user_with_key};
    use crate::support::github_api::AlertSeed;
    use crate::support::moto;
    use k8s_openapi::api::core::v1::Secret;

    // The exposed key: a real key on moto, read by a workload through a Kubernetes Secret.
    let aws = moto::aws().await;
    let user = format!("leaked-{}", ulid::Ulid::new().to_string().to_lowercase());
    let (old, secret) = user_with_key(&aws, &user).await;
    let kube = KubeApi::start().await;
    seed_consumers(&kube, &old, &secret);

    // GitHub finds it in a repository and tells Firebreak through the webhook.
    let api = GithubApi::start().await;
    api.add_org(OWNER);
    api.create_repo(OWNER, "app", "main", &[("README.md", "# app\n")]);
    let rx = Receiver::start().await;
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/rotate-exposed-aws-key.yaml");
    let (pb, _) = load_str(&shipped, &std::fs::read_to_string(&shipped).unwrap()).unwrap();
    let pbs = Arc::new(RwLock::new(Arc::new(PlaybookSet::new(vec![pb]))));
    let security = rx.url("/security");
    let rig = Rig::on(api, rx, tempfile::tempdir().unwrap(), pbs, |c| {
        let mut c = c
            .with_kube(Kube::from_url(&kube.base).unwrap())
            .with_aws(aws.clone());
        c.webhooks = Arc::new(std::collections::BTreeMap::from([(
            "security".to_owned(),
            firebreak::config::WebhookEndpoint {
                url: Redacted::new(security),
            },
        )]));
        c
    })
    .await;
    let number = rig.api.add_alert(
        OWNER,
        "app",
        AlertSeed {
            secret_type: "aws_access_key_id".into(),
            display: "Amazon AWS Access Key ID".into(),
            secret: old.clone(),
            validity: "active".into(),
            path: Some("deploy/.env".into()),
        },
    );
    rig.api.settle().await;
    rig.drain().await;

    // The key was rotated for real: the workload's Secret holds a new, active key; the exposed
    // one is inactive; and GitHub's alert is resolved as revoked, naming the execution.
    let listed = aws
        .iam()
        .list_access_keys()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    let keys: Vec<(String, String)> = listed
        .access_key_metadata()
        .iter()
        .map(|k| {
            (
                k.access_key_id().unwrap_or_default().to_owned(),
                k.status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let new = keys.iter().find(|(id, _)| *id != old).unwrap();
    assert_eq!(new.1, "Active");
    assert!(keys.iter().any(|(id, st)| *id == old && st == "Inactive"));
    let stored: Secret = kube.get("payments", "aws-credentials").unwrap();
    let data = stored.data.unwrap();
    assert_eq!(
        String::from_utf8(data["AWS_ACCESS_KEY_ID"].0.clone()).unwrap(),
        new.0,
        "the workload's Secret holds the new key"
    );
    let alert = rig.api.alert(OWNER, "app", number);
    assert_eq!(alert["state"], "resolved");
    assert_eq!(alert["resolution"], "revoked");
    let audit = rig.audit().await;
    let execution = audit
        .iter()
        .find(|a| a.kind == "execution.matched")
        .and_then(|a| a.execution_id.clone())
        .unwrap();
    assert!(
        alert["resolution_comment"]
            .as_str()
            .is_some_and(|c| c.contains(&execution)),
        "{alert}"
    );
    let (finding_id, row) = rig.store.execution(&execution).await.unwrap().unwrap();
    let statuses: Vec<&str> = row.steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["applied", "applied", "applied", "applied", "scheduled"]
    );
    // The finding came through the webhook, named the key through the REST API's alert.
    let finding = rig.store.finding(&finding_id).await.unwrap().unwrap();
    assert_eq!(finding.intake, "github");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_event_firebreak_does_not_act_on_is_acknowledged_and_ignored() {
    let rig = Rig::start("reviewers: [alice]").await;
    let body = br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#;
    let answer = reqwest::Client::new()
        .post(&rig.hook_url)
        .header("x-github-event", "ping")
        .header("x-github-delivery", "ping-1")
        .header("x-hub-signature-256", sign(SECRET, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    let doc: Value = answer.json().await.unwrap();
    assert!(doc["ignored"].as_str().unwrap().contains("ping"), "{doc}");
    let kinds: Vec<String> = rig.audit().await.into_iter().map(|a| a.kind).collect();
    assert_eq!(kinds, ["findings.received"], "only the test's own finding");
}

/// The approval's evidence links are the ones the scanner gave people: for a real GitHub
/// secret-scanning event, the repository's page first (not its owner's, not API URLs).
#[test]
fn evidence_links_are_the_scanners_pages_for_people_shallowest_first() {
    let f = crate::fixtures::finding("github/secret_scanning_alert-reopened.json");
    let links = firebreak::engine::approval::github::evidence_links(&f);
    assert_eq!(
        links.first().map(String::as_str),
        Some("https://github.com/Codertocat/Hello-World"),
        "{links:?}"
    );
    assert!(links.len() <= 3, "{links:?}");
    assert!(
        links.iter().all(|l| !l.contains("api.github.com")),
        "{links:?}"
    );
}
