//! The SQS intake against moto's SQS: delete only after commit, messages kept on a store
//! failure, poison recorded once and left for the dead-letter queue (or deleted after
//! `max_receives` without one), and `firebreak serve` polling a configured queue.
//!
//! Bodies are real EventBridge fixtures (GuardDuty, Security Hub); poison is a real fixture cut
//! in half. Waits are bounded polls of observable state (store rows, queue attributes, metric
//! counters), never sleeps that assume a speed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use firebreak::config::SqsQueueConfig;
use firebreak::finding::{ParserChoice, parse_input};
use firebreak::ingest::sqs::{SqsPoller, SqsSource};
use firebreak::ingest::{Intake, IntakeConfig};
use firebreak::store::Store;
use firebreak::store::sqlite::SqliteStore;
use firebreak::telemetry::metrics::Metrics;
use sqlx::Connection;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::fixtures::{self, GD_TOR_IAM};
use crate::support::aws_proxy::{AwsProxy, BoxFuture, Probe};
use crate::support::moto;

const GD_BACKDOOR: &str = "guardduty/eventbridge-guardduty-finding-backdoor-c2-dns.json";
const SH_IMPORTED: &str = "securityhub/eventbridge-imported-afsbp-ec2-7.json";

/// A store in a temp dir, an Intake over it, and an SQS client on moto.
struct Rig {
    _dir: tempfile::TempDir,
    url: String,
    sqs: Client,
    intake: Intake,
    metrics: Arc<Metrics>,
}

impl Rig {
    async fn new() -> Rig {
        Rig::with(|_| {}).await
    }

    /// A rig whose intake is configured by `tweak` on the defaults.
    async fn with(tweak: impl FnOnce(&mut firebreak::config::Config)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let store = Arc::new(SqliteStore::open(&url).await.unwrap());
        let metrics = Arc::new(Metrics::new());
        let mut cfg = firebreak::config::Config::default();
        tweak(&mut cfg);
        let (intake, _writer) = Intake::start(
            store,
            IntakeConfig::from_config(&cfg, Arc::clone(&metrics)),
            Arc::new(Notify::new()),
        );
        let sqs = moto::aws().await.sqs();
        Rig {
            _dir: dir,
            url,
            sqs,
            intake,
            metrics,
        }
    }

    async fn queue(&self, name: &str, attributes: &[(QueueAttributeName, String)]) -> String {
        let mut req = self.sqs.create_queue().queue_name(name);
        for (k, v) in attributes {
            req = req.attributes(k.clone(), v.clone());
        }
        req.send().await.unwrap().queue_url.unwrap()
    }

    /// A queue whose redrive policy moves messages to a new DLQ after `max` receives; returns
    /// (queue URL, DLQ URL).
    async fn queue_with_dlq(&self, name: &str, max: u32) -> (String, String) {
        let dlq = self.queue(&format!("{name}-dlq"), &[]).await;
        let arn = self
            .attribute(&dlq, QueueAttributeName::QueueArn)
            .await
            .unwrap();
        let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max});
        let queue = self
            .queue(
                name,
                &[(QueueAttributeName::RedrivePolicy, policy.to_string())],
            )
            .await;
        (queue, dlq)
    }

    async fn attribute(&self, queue: &str, name: QueueAttributeName) -> Option<String> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(name.clone())
            .send()
            .await
            .unwrap();
        out.attributes.and_then(|a| a.get(&name).cloned())
    }

    /// Messages on the queue, visible or in flight.
    async fn depth(&self, queue: &str) -> u64 {
        let mut n = 0;
        for a in [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ] {
            n += self
                .attribute(queue, a)
                .await
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        n
    }

    async fn send(&self, queue: &str, body: Vec<u8>) -> String {
        self.sqs
            .send_message()
            .queue_url(queue)
            .message_body(String::from_utf8(body).unwrap())
            .send()
            .await
            .unwrap()
            .message_id
            .unwrap()
    }

    /// Starts a poller with test-sized timings; stop it with [`Running::stop`].
    fn poll(&self, queue: &str, tune: impl FnOnce(&mut SqsQueueConfig)) -> Running {
        self.poll_via(&self.sqs, queue, tune)
    }

    /// [`Rig::poll`] with the poller's SQS calls sent through `sqs` (a client on a proxy).
    fn poll_via(
        &self,
        sqs: &Client,
        queue: &str,
        tune: impl FnOnce(&mut SqsQueueConfig),
    ) -> Running {
        let mut cfg = SqsQueueConfig {
            queue_url: queue.to_owned(),
            wait_seconds: 1,
            visibility_timeout_seconds: 2,
            poison_retry_seconds: 1,
            ..SqsQueueConfig::default()
        };
        tune(&mut cfg);
        let source = SqsSource::from_config(0, &cfg).unwrap();
        let poller = SqsPoller::new(
            sqs.clone(),
            source,
            self.intake.clone(),
            Arc::clone(&self.metrics),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(poller.run(async {
            let _ = rx.await;
        }));
        Running { stop: tx, task }
    }

    async fn count(&self, sql: &str) -> i64 {
        let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    async fn execute(&self, sql: &'static str) {
        let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the poller stops after its batch")
            .unwrap();
    }
}

/// Polls `check` until it holds (or fails the test after 60 s, naming `what`).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first half of a real fixture: truncated JSON, every record rejected.
fn truncated(rel: &str) -> Vec<u8> {
    let mut b = fixtures::bytes(rel);
    b.truncate(b.len() / 2);
    b
}

/// How many rejected rows one parse of `body` yields (a truncated pretty-printed document is
/// read as JSON lines, one rejection per line): what "recorded once" amounts to.
fn rejections_of(body: &[u8]) -> i64 {
    let report = parse_input("sqs:test", body, ParserChoice::Auto);
    assert!(report.findings.is_empty());
    i64::try_from(report.rejected.len()).unwrap()
}

/// Counts rows of the store at `url` on a connection of its own: only committed rows are
/// visible there.
async fn committed_rows(url: &str, sql: &str) -> i64 {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// `server.max_records_per_request` caps HTTP requests only: an SQS message with more records
/// is still stored whole and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_message_is_not_capped_by_the_records_per_request_limit() {
    let rig = Rig::with(|c| c.server.max_records_per_request = 1).await;
    let queue = rig.queue("not-capped-by-records", &[]).await;
    // Two real EventBridge GuardDuty events in one body (a JSON array of the two fixtures).
    let two: Vec<serde_json::Value> = [GD_TOR_IAM, GD_BACKDOOR]
        .iter()
        .map(|f| serde_json::from_slice(&fixtures::bytes(f)).unwrap())
        .collect();
    rig.send(&queue, serde_json::to_vec(&two).unwrap()).await;
    let running = rig.poll(&queue, |_| {});
    until("the message is deleted", || async {
        rig.metrics.sqs_message_count("deleted") == 1
    })
    .await;
    running.stop().await;
    assert_eq!(rig.count("SELECT COUNT(*) FROM findings").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_message_deleted_only_after_commit() {
    let rig = Rig::new().await;
    let queue = rig.queue("deleted-after-commit", &[]).await;
    rig.send(&queue, fixtures::bytes(GD_TOR_IAM)).await;

    // The poller reaches SQS through a proxy that, when a deletion arrives and before moto
    // sees it, counts the committed findings: a poller that deleted first would find none.
    let url = rig.url.clone();
    let probe = Arc::new(Probe::new(
        &["DeleteMessage", "DeleteMessageBatch"],
        move || -> BoxFuture<'static, i64> {
            let url = url.clone();
            Box::pin(async move { committed_rows(&url, "SELECT COUNT(*) FROM findings").await })
        },
    ));
    let proxy = AwsProxy::start(moto::endpoint(), probe.clone()).await;
    let sqs = moto::aws_at(&proxy.endpoint, "testing", "testing")
        .await
        .sqs();

    let running = rig.poll_via(&sqs, &queue, |_| {});
    until("the message is deleted", || async {
        rig.metrics.sqs_message_count("deleted") == 1
    })
    .await;
    running.stop().await;

    let deletions = probe.seen();
    assert!(
        !deletions.is_empty(),
        "the deletion went through the proxy: {:?}",
        proxy.seen()
    );
    for (operation, committed) in &deletions {
        assert_eq!(
            *committed, 1,
            "{operation} arrived when {committed} finding(s) were committed"
        );
    }

    assert_eq!(rig.depth(&queue).await, 0, "the queue is empty");
    assert_eq!(
        rig.count(
            "SELECT COUNT(*) FROM findings WHERE intake = 'sqs:deleted-after-commit' \
             AND source = 'guardduty' AND rule = 'UnauthorizedAccess:IAMUser/TorIPCaller'"
        )
        .await,
        1
    );
    assert_eq!(rig.count("SELECT COUNT(*) FROM rejected").await, 0);
    assert_eq!(rig.metrics.sqs_message_count("received"), 1);
    assert_eq!(rig.metrics.sqs_error_count("commit"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_findings_record_their_queue_as_intake() {
    let rig = Rig::new().await;
    let queue = rig.queue("intake-of-findings", &[]).await;
    rig.send(&queue, fixtures::bytes(GD_TOR_IAM)).await;
    let running = rig.poll(&queue, |_| {});
    until("the finding is stored", || async {
        rig.count("SELECT COUNT(*) FROM findings").await == 1
    })
    .await;
    running.stop().await;

    // The finding the engine claims (what playbooks match, `match.intake`) names the queue,
    // as the store's intake column does.
    let store = SqliteStore::open(&rig.url).await.unwrap();
    let claimed = store
        .claim_findings("test", Duration::from_secs(60), 10, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].finding.source, "guardduty");
    assert_eq!(claimed[0].finding.intake, "sqs:intake-of-findings");
    assert_eq!(
        rig.count("SELECT COUNT(*) FROM findings WHERE intake = 'sqs:intake-of-findings'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_store_failure_leaves_the_message_on_the_queue() {
    let rig = Rig::new().await;
    let queue = rig.queue("store-failure", &[]).await;
    // A real failure inside the store's transaction: every finding insert aborts.
    rig.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON findings \
         BEGIN SELECT RAISE(ABORT, 'disk full drill'); END",
    )
    .await;
    let body = fixtures::bytes(GD_TOR_IAM);
    let id = rig.send(&queue, body.clone()).await;

    let running = rig.poll(&queue, |_| {});
    until("a commit fails", || async {
        rig.metrics.sqs_error_count("commit") >= 1
    })
    .await;
    running.stop().await;
    assert_eq!(rig.metrics.sqs_message_count("deleted"), 0);
    assert_eq!(rig.count("SELECT COUNT(*) FROM findings").await, 0);

    // Not deleted: it is received again once its visibility timeout ran out.
    let again = rig
        .sqs
        .receive_message()
        .queue_url(&queue)
        .wait_time_seconds(10)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(again.len(), 1, "the message is back on the queue");
    assert_eq!(again[0].message_id.as_deref(), Some(id.as_str()));
    assert_eq!(again[0].body.as_deref().map(str::as_bytes), Some(&body[..]));

    // Once the store works again the same message is recorded and only then deleted.
    rig.execute("DROP TRIGGER refuse").await;
    let running = rig.poll(&queue, |_| {});
    until(
        "the message is deleted after the store recovered",
        || async { rig.metrics.sqs_message_count("deleted") == 1 },
    )
    .await;
    running.stop().await;
    assert_eq!(rig.count("SELECT COUNT(*) FROM findings").await, 1);
    assert_eq!(rig.depth(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_visibility_is_extended_while_the_commit_waits() {
    let rig = Rig::new().await;
    let queue = rig.queue("visibility-extended", &[]).await;
    // Another writer holds the database, so the store's commit waits (up to its busy timeout).
    let mut blocker = sqlx::SqliteConnection::connect(&rig.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    rig.send(&queue, fixtures::bytes(GD_TOR_IAM)).await;

    let running = rig.poll(&queue, |c| c.visibility_timeout_seconds = 2);
    until("the poller holds the message", || async {
        rig.metrics.sqs_message_count("received") == 1
    })
    .await;
    // Well past the 2 s visibility timeout the message is still hidden: it was extended.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let stolen = rig
        .sqs
        .receive_message()
        .queue_url(&queue)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert!(stolen.is_empty(), "another consumer got the message");
    assert_eq!(rig.metrics.sqs_message_count("deleted"), 0);

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    until("the message is deleted after the commit", || async {
        rig.metrics.sqs_message_count("deleted") == 1
    })
    .await;
    running.stop().await;
    assert_eq!(rig.count("SELECT COUNT(*) FROM findings").await, 1);
    assert_eq!(rig.metrics.sqs_error_count("change_visibility"), 0);
    assert_eq!(rig.metrics.sqs_message_count("received"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_poison_is_recorded_once_and_reaches_the_dead_letter_queue() {
    let rig = Rig::new().await;
    let (queue, dlq) = rig.queue_with_dlq("poison-redrive", 3).await;
    let poison = truncated(GD_TOR_IAM);
    let id = rig.send(&queue, poison.clone()).await;

    let running = rig.poll(&queue, |_| {});
    until("the poison message is in the DLQ", || async {
        rig.depth(&dlq).await == 1
    })
    .await;
    running.stop().await;

    // Recorded exactly once although it was received several times.
    let rows = rig
        .count(&format!(
            "SELECT COUNT(*) FROM rejected WHERE intake = 'sqs:poison-redrive' \
             AND source = 'sqs:poison-redrive/{id}'"
        ))
        .await;
    assert_eq!(rows, rejections_of(&poison));
    assert_eq!(rig.count("SELECT COUNT(*) FROM rejected").await, rows);
    assert_eq!(rig.count("SELECT COUNT(*) FROM findings").await, 0);
    // Never deleted by the poller: the queue's redrive policy moved it.
    assert_eq!(rig.metrics.sqs_message_count("deleted"), 0);
    assert_eq!(rig.depth(&queue).await, 0);
    // Not a hot loop: received no more often than the redrive policy allows.
    let received = rig.metrics.sqs_message_count("poison");
    assert!((1..=3).contains(&received), "received {received} times");

    let moved = rig
        .sqs
        .receive_message()
        .queue_url(&dlq)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(moved[0].message_id.as_deref(), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_poison_without_a_redrive_policy_is_deleted_after_max_receives() {
    let rig = Rig::new().await;
    let queue = rig.queue("poison-no-redrive", &[]).await;
    let poison = truncated(SH_IMPORTED);
    rig.send(&queue, poison.clone()).await;

    let running = rig.poll(&queue, |c| c.max_receives = 2);
    until("the poison message is deleted", || async {
        rig.metrics.sqs_message_count("poison_deleted") == 1
    })
    .await;
    running.stop().await;

    assert_eq!(rig.metrics.sqs_message_count("poison"), 2);
    assert_eq!(
        rig.count("SELECT COUNT(*) FROM rejected").await,
        rejections_of(&poison)
    );
    assert_eq!(rig.depth(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_batch_with_one_poison_stores_and_deletes_the_good_ones() {
    let rig = Rig::new().await;
    let (queue, _dlq) = rig.queue_with_dlq("batch-one-poison", 5).await;
    let poison = truncated(GD_BACKDOOR);
    let bodies = [
        fixtures::bytes(GD_TOR_IAM),
        fixtures::bytes(GD_BACKDOOR),
        poison.clone(),
        fixtures::bytes(SH_IMPORTED),
    ];
    let mut batch = rig.sqs.send_message_batch().queue_url(&queue);
    for (i, b) in bodies.iter().enumerate() {
        batch = batch.entries(
            SendMessageBatchRequestEntry::builder()
                .id(format!("e{i}"))
                .message_body(String::from_utf8(b.clone()).unwrap())
                .build()
                .unwrap(),
        );
    }
    let sent = batch.send().await.unwrap();
    assert_eq!(sent.successful.len(), 4);
    let ids: HashMap<String, String> = sent
        .successful
        .into_iter()
        .map(|e| (e.id, e.message_id))
        .collect();

    let running = rig.poll(&queue, |_| {});
    until("the good messages are deleted", || async {
        rig.metrics.sqs_message_count("deleted") == 3
    })
    .await;
    running.stop().await;

    assert_eq!(rig.count("SELECT COUNT(*) FROM findings").await, 3);
    assert_eq!(
        rig.count(&format!(
            "SELECT COUNT(*) FROM rejected WHERE source = 'sqs:batch-one-poison/{}'",
            ids["e2"]
        ))
        .await,
        rejections_of(&poison)
    );
    assert_eq!(
        rig.count("SELECT COUNT(*) FROM rejected").await,
        rejections_of(&poison)
    );
    assert_eq!(
        rig.depth(&queue).await,
        1,
        "only the poison message is left"
    );
}

fn write_config(dir: &std::path::Path, queue: &str) -> std::path::PathBuf {
    let path = dir.join("firebreak.yaml");
    std::fs::write(
        &path,
        format!(
            "aws:\n  region: us-east-1\n  endpoint_url: \"{}\"\ningest:\n  sqs:\n    - queue_url: \"{queue}\"\n      wait_seconds: 1\n      visibility_timeout_seconds: 5\n",
            moto::endpoint()
        ),
    )
    .unwrap();
    path
}

/// Runs `firebreak serve` with `env` until it printed `ready_line`; returns the child and the
/// stderr lines seen so far (the rest is drained in the background).
fn serve(
    dir: &std::path::Path,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, Vec<String>) {
    // The shipped playbooks, planned only: this is about intake, not actions.
    let playbooks = concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    cmd.args(["serve", "--dry-run", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(["--playbooks", playbooks])
        .env_clear()
        .env(
            "FIREBREAK_STORE__URL",
            format!("sqlite://{}", dir.join("ledger.db").display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                let done = line.starts_with("note: listening on ");
                seen.push(line);
                if done {
                    break;
                }
            }
            other => panic!("serve exited before listening: {other:?}\n{seen:#?}"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, seen)
}

fn sigterm(child: &mut std::process::Child) -> std::process::ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_polls_a_configured_queue_and_stops_on_sigterm() {
    let rig = Rig::new().await;
    let queue = rig.queue("serve-intake", &[]).await;
    rig.send(&queue, fixtures::bytes(GD_TOR_IAM)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &queue);
    // Credentials for the child come from its environment, the SDK's default chain.
    let (mut child, lines) = serve(
        dir.path(),
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SQS intake: polling 1 queue(s) (serve-intake)")),
        "{lines:#?}"
    );
    until("the queue is drained", || async {
        rig.depth(&queue).await == 0
    })
    .await;
    assert!(sigterm(&mut child).success());

    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let intake: String = sqlx::query_scalar("SELECT intake FROM findings")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(intake, "sqs:serve-intake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_aws_credentials_says_the_sqs_intake_is_off() {
    let rig = Rig::new().await;
    let queue = rig.queue("serve-no-credentials", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &queue);
    // No credentials anywhere: empty environment, no HOME, no instance metadata.
    let (mut child, lines) = serve(
        dir.path(),
        &config,
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    for said in ["AWS actions plan only", "SQS intake OFF for 1 queue(s)"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("no AWS credentials found") && l.contains(said)),
            "{said}: {lines:#?}"
        );
    }
    assert!(sigterm(&mut child).success());
}
