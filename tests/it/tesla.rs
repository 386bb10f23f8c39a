//! The 2018 Tesla breach, replayed end to end: `firebreak serve` as a process, with the shipped
//! playbooks (`playbooks/`) and the shipped configuration (`config/default.yaml`, with only the
//! peers' addresses layered on top), against moto (IAM, S3, SQS, Security Hub behind the
//! `BatchUpdateFindings` shim), the Kubernetes emulator and the GitHub emulator.
//!
//! The story, as the findings arrive (all derived from real scanner output, see each helper):
//! - kube-hunter finds the Kubernetes Dashboard exposed without authentication (HTTP);
//! - trufflehog finds the AWS key the workload's pods read from a Secret (HTTP);
//! - Falco sees a shell in a pod and that pod mining cryptocurrency (HTTP);
//! - Security Hub reports the telemetry bucket open to the public, through EventBridge → SQS.
//!
//! The test asserts the end state of every peer, not exit codes: the Dashboard is closed, the
//! key rotated (the Secret holds a new key that works, the exposed one is Inactive), the miner's
//! Deployment is at zero replicas, the bucket's Public Access Block is on and its Security Hub
//! finding resolved; the isolation of the pod (a shipped playbook that asks for approval) waits
//! for its pull request to be approved by a member of the reviewing team, then applies; and the
//! audit chain verifies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::aws_iam::{caller, keys, seed_consumers, trufflehog_line, user_with_key};
use crate::aws_s3::{MOTO_ACCOUNT, bucket_name, pab, s3_8_record, seed_public_bucket};
use crate::aws_securityhub::workflow;
use crate::fixtures::{self, FALCO_SHELL};
use crate::kube_actions::{
    binding, dash_args, dash_service, dashboard_report, fake_secret, falco_miner_alert, meta,
    owner, policy, seed_dashboard, seed_kubecon, selector, template,
};
use crate::service::{Service, TOKEN, start_configured};
use crate::support::aws_proxy::AwsProxy;
use crate::support::github_api::{GithubApi, ReviewState};
use crate::support::kube_api::KubeApi;
use crate::support::moto;
use crate::support::receiver::Receiver;
use crate::support::securityhub_shim::{BatchUpdateFindings, import_findings};

const WEBHOOK_SECRET: &str = "tesla-replay-webhook-secret";
/// The shipped isolate-runtime-threat asks `@org/security` on `org/infra`.
const OWNER: &str = "org";
const REPO: &str = "infra";
const TEAM: &str = "security";
/// A member of `@org/security`.
const REVIEWER: &str = "alice";

/// The real EventBridge `Security Hub Findings - Imported` event
/// (`securityhub/eventbridge-imported-afsbp-ec2-7.json`) carrying `record` instead of its own
/// finding: only the account, the resources and `detail.findings` change, as EventBridge would
/// deliver the S3.8 finding to the SQS queue.
fn eventbridge_imported(record: &Value) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixtures::bytes(
        "securityhub/eventbridge-imported-afsbp-ec2-7.json",
    ))
    .unwrap();
    v["account"] = json!(MOTO_ACCOUNT);
    v["resources"] = json!([record["ProductArn"]]);
    v["detail"]["findings"] = json!([record]);
    serde_json::to_vec(&v).unwrap()
}

/// The miner's Deployment → ReplicaSet chain owning the Falco findings' pod `default/kubecon`.
fn seed_miner(api: &KubeApi) {
    let d = api.seed(&Deployment {
        metadata: meta("default", "miner", "miner"),
        spec: DeploymentSpec {
            replicas: Some(3),
            selector: selector("miner"),
            template: template("miner"),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    });
    let mut rs_meta = meta("default", "miner-5d8f", "miner");
    rs_meta.owner_references = Some(vec![owner("Deployment", "apps/v1", &d)]);
    let rs = api.seed(&ReplicaSet {
        metadata: rs_meta,
        spec: ReplicaSetSpec {
            replicas: Some(3),
            selector: selector("miner"),
            template: Some(template("miner")),
            ..ReplicaSetSpec::default()
        },
        ..ReplicaSet::default()
    });
    seed_kubecon(
        api,
        vec![owner("ReplicaSet", "apps/v1", &rs)],
        &fake_secret(),
    );
}

/// Posts a scanner's output to `POST /v1/findings/{parser}` as that scanner's sender would.
async fn post(client: &reqwest::Client, svc: &Service, parser: &str, body: Vec<u8>) {
    let answer = client
        .post(format!("http://{}/v1/findings/{parser}", svc.addr))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202, "{parser}: {answer:?}");
}

/// When each containment was first seen in place, from the first finding sent.
#[derive(Debug, Default)]
struct Seen {
    dashboard: Option<Duration>,
    key: Option<Duration>,
    miner: Option<Duration>,
    bucket: Option<Duration>,
}

impl Seen {
    fn all(&self) -> bool {
        self.dashboard.is_some()
            && self.key.is_some()
            && self.miner.is_some()
            && self.bucket.is_some()
    }
}

/// Deserialising a full ASFF finding with the Security Hub SDK (to read the bucket finding's
/// workflow) takes more than a test thread's 2 MiB of stack in a debug build: the replay runs on
/// a multi-threaded runtime (the peers serve while the test blocks on the service starting)
/// whose threads, and the one driving it, have 16 MiB.
#[test]
fn the_tesla_breach_replayed_is_contained_on_every_system_and_the_audit_chain_verifies() {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_stack_size(16 << 20)
                .enable_all()
                .build()
                .unwrap()
                .block_on(replay());
        })
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

async fn replay() {
    // ---- The peers, seeded as Tesla's cluster and account were. ----
    let direct = moto::aws().await;
    let proxy = AwsProxy::start(
        moto::endpoint(),
        Arc::new(BatchUpdateFindings::new(direct.securityhub())),
    )
    .await;
    let user = format!("telemetry-{}", ulid::Ulid::new().to_string().to_lowercase());
    let (old_key, old_secret) = user_with_key(&direct, &user).await;
    let s3 = direct.s3();
    let bucket = bucket_name("tesla-telemetry");
    seed_public_bucket(&s3, &bucket).await;
    let s3_8 = s3_8_record(&bucket);
    let s3_8_id = s3_8["Id"].as_str().unwrap().to_owned();
    import_findings(&direct.securityhub(), std::slice::from_ref(&s3_8)).await;
    let sqs = direct.sqs();
    let queue = sqs
        .create_queue()
        .queue_name(format!("tesla-findings-{}", ulid::Ulid::new()))
        .attributes(QueueAttributeName::VisibilityTimeout, "5")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    let kube = KubeApi::start().await;
    seed_dashboard(&kube, &fake_secret());
    seed_consumers(&kube, &old_key, &old_secret);
    seed_miner(&kube);

    let github = GithubApi::start().await;
    github.add_org(OWNER);
    github.create_repo(OWNER, REPO, "main", &[("README.md", "# infra\n")]);
    github.add_team_member(OWNER, TEAM, REVIEWER, "member");
    let bot_token = github.user_token("firebreak-bot");
    let security = Receiver::start().await;

    // ---- Firebreak as deployed: shipped playbooks and defaults, the peers' addresses. ----
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("firebreak.yaml");
    std::fs::write(
        &config,
        format!(
            "aws:\n  region: us-east-1\n  endpoint_url: \"{aws}\"\n\
             ingest:\n  sqs:\n    - queue_url: \"{queue}\"\n      parser: securityhub\n      wait_seconds: 1\n      visibility_timeout_seconds: 5\n\
             kubernetes:\n  url: \"{kube}\"\n\
             github:\n  base_url: \"{gh}\"\n  token_env: FIREBREAK_GITHUB_TOKEN\n  webhook_secret_env: FIREBREAK_GITHUB_WEBHOOK_SECRET\n  poll_seconds: 2\n\
             notify:\n  webhooks:\n    security:\n      url: \"{hook}\"\n",
            aws = proxy.endpoint,
            kube = kube.base,
            gh = github.base,
            hook = security.url("/security"),
        ),
    )
    .unwrap();
    let playbooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let svc = start_configured(
        dir.path(),
        &config,
        &playbooks,
        &[
            ("FIREBREAK_SERVER__TOKENS", TOKEN),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("FIREBREAK_GITHUB_TOKEN", &bot_token),
            ("FIREBREAK_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    );
    github.set_webhook(&format!("http://{}/v1/github", svc.addr), WEBHOOK_SECRET);

    // ---- The breach, as the scanners report it. ----
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    post(&client, &svc, "kube-hunter", dashboard_report()).await;
    post(
        &client,
        &svc,
        "trufflehog",
        trufflehog_line(&user, &old_key).into_bytes(),
    )
    .await;
    post(&client, &svc, "falco", fixtures::bytes(FALCO_SHELL)).await;
    post(&client, &svc, "falco", falco_miner_alert()).await;
    sqs.send_message()
        .queue_url(&queue)
        .message_body(String::from_utf8(eventbridge_imported(&s3_8)).unwrap())
        .send()
        .await
        .unwrap();

    // ---- Containment, observed on the peers. ----
    let mut seen = Seen::default();
    // Well inside nextest's 120 s kill (.config/nextest.toml), so a failure says what is missing.
    let deadline = Duration::from_secs(40);
    while !seen.all() {
        assert!(
            t0.elapsed() < deadline,
            "not contained after {deadline:?}: {seen:?}\n{}",
            svc.log_text()
        );
        if seen.dashboard.is_none()
            && dash_service(&kube)["spec"]["type"] == "ClusterIP"
            && !dash_args(&kube).iter().any(|a| a == "--enable-skip-login")
            && binding(&kube, "kubernetes-dashboard-admin").is_none()
        {
            seen.dashboard = Some(t0.elapsed());
        }
        if seen.key.is_none()
            && keys(&direct, &user).await.get(&old_key).map(String::as_str) == Some("Inactive")
        {
            seen.key = Some(t0.elapsed());
        }
        if seen.miner.is_none()
            && kube
                .get::<Deployment>("default", "miner")
                .and_then(|d| d.spec.replicas)
                == Some(0)
        {
            seen.miner = Some(t0.elapsed());
        }
        if seen.bucket.is_none() && pab(&s3, &bucket).await == Some([true; 4]) {
            seen.bucket = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = [seen.dashboard, seen.key, seen.miner, seen.bucket]
        .into_iter()
        .flatten()
        .max()
        .unwrap();
    eprintln!("tesla replay: first finding to last automatic containment: {last:?} ({seen:?})");

    // The key: the workload's Secret holds a new key that works, the exposed one is Inactive.
    let now = keys(&direct, &user).await;
    assert_eq!(now.len(), 2, "{now:?}");
    let (new_key, status) = now.iter().find(|(id, _)| **id != old_key).unwrap();
    assert_eq!(status, "Active");
    let held: Secret = kube.get("payments", "aws-credentials").unwrap();
    let data = held.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!(&text("AWS_ACCESS_KEY_ID"), new_key);
    let arn = caller(
        moto::endpoint(),
        new_key,
        &firebreak::redact::Redacted::new(text("AWS_SECRET_ACCESS_KEY")),
    )
    .await;
    assert!(arn.ends_with(&format!(":user/{user}")), "{arn}");
    let rolled = kube
        .get::<Deployment>("payments", "billing")
        .unwrap()
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert!(
        !rolled.is_empty(),
        "the workload was rolled onto the new key"
    );

    // The bucket: its Security Hub finding is resolved, and the queue is empty.
    let mut resolved = false;
    while !resolved {
        assert!(t0.elapsed() < deadline, "S3.8 never resolved");
        resolved = workflow(&direct.securityhub(), &s3_8_id).await.0 == "RESOLVED";
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The shell in the pod: isolation waits for a person on GitHub; nothing isolated before.
    let number = loop {
        assert!(t0.elapsed() < deadline, "no approval pull request opened");
        if let Some(p) = github.pulls(OWNER, REPO).first() {
            break p["number"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(policy(&kube).is_none(), "nothing isolated before approval");
    let approved_at = Instant::now();
    github
        .submit_review(OWNER, REPO, number, REVIEWER, ReviewState::Approved, "")
        .unwrap();
    github.settle().await;
    while policy(&kube).is_none() {
        assert!(
            approved_at.elapsed() < deadline,
            "not isolated after approval\n{}",
            svc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "tesla replay: approval to isolation: {:?}; first finding to isolation: {:?}",
        approved_at.elapsed(),
        t0.elapsed()
    );

    // The outcome is commented on the pull request.
    while github.comments(OWNER, REPO, number).is_empty() {
        assert!(approved_at.elapsed() < deadline, "no outcome comment");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The ledger: how each finding arrived, and what each playbook did with it.
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&ledger).await.unwrap();
    let intakes: Vec<(String, String)> =
        sqlx::query_as("SELECT source, intake FROM findings ORDER BY source, rule")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let queue_name = queue.rsplit('/').next().unwrap();
    let http = "http:token-1".to_owned();
    assert_eq!(
        intakes,
        [
            ("falco".to_owned(), http.clone()),
            ("falco".to_owned(), http.clone()),
            ("kube-hunter".to_owned(), http.clone()),
            ("securityhub".to_owned(), format!("sqs:{queue_name}")),
            ("trufflehog".to_owned(), http),
        ]
    );
    let executions: Vec<(String, String)> =
        sqlx::query_as("SELECT playbook, state FROM executions ORDER BY playbook")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let applied = |p: &str| (p.to_owned(), "applied".to_owned());
    assert_eq!(
        executions,
        [
            applied("alert-cryptomining"),
            applied("alert-runtime-threat"),
            applied("isolate-runtime-threat"),
            applied("lock-public-bucket"),
            // Waits for its grace period: deleting the exposed key is scheduled in 24 h.
            ("rotate-exposed-aws-key".to_owned(), "scheduled".to_owned()),
            applied("secure-exposed-dashboard"),
            applied("stop-cryptominer"),
        ]
    );
    let scheduled: Vec<String> =
        sqlx::query_scalar("SELECT action FROM schedules WHERE fired_at IS NULL")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(scheduled, ["aws.iam.delete-access-key"]);

    // Every playbook with a notify step told the security team once: all but
    // isolate-runtime-threat, whose notification is alert-runtime-threat's.
    assert_eq!(security.requests().len(), executions.len() - 1);

    // The audit chain, verified by the CLI on the service's ledger.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "verify"])
        .env_clear()
        .env(
            "FIREBREAK_STORE__URL",
            format!("sqlite://{}", dir.path().join("ledger.db").display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("chain intact"), "{stdout}");
}
