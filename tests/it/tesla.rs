//! The 2018 Tesla breach, replayed end to end: `firebreak serve` as a process, with the shipped
//! playbooks (`playbooks/`) and the shipped configuration (`config/default.yaml`, with only the
//! peers' addresses layered on top), against moto (IAM, S3, SQS, Security Hub behind the
//! `BatchUpdateFindings` shim), the Kubernetes emulator and the GitHub emulator.
//!
//! The story, as the findings arrive (all derived from real scanner output, see each helper):
//! - kube-hunter finds the Kubernetes Dashboard exposed without authentication (HTTP);
//! - trufflehog finds the AWS key the workload's pods read from a Secret (HTTP);
//! - Falco sees a shell in one pod and another pod, of the `miner` Deployment, mining
//!   cryptocurrency (HTTP);
//! - Security Hub reports the telemetry bucket open to the public, through EventBridge → SQS.
//!
//! The test asserts the end state of every peer, not exit codes: the Dashboard is closed and a
//! pull request in the manifests repository keeps its Service closed in Git; the key rotated
//! (the Secret holds a new key that works, the exposed one is Inactive, and deleted once its
//! grace period is over); the miner's pod cut off the network and its Deployment at zero
//! replicas; the bucket's Public Access Block on and its Security Hub finding resolved; the
//! isolation of the shell's pod (a shipped playbook that asks for approval) waits for its pull
//! request to be approved by a member of the reviewing team, then applies; and the audit chain
//! verifies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::aws_iam::{caller, keys, seed_consumers, trufflehog_line, user_with_key};
use crate::aws_s3::{MOTO_ACCOUNT, bucket_name, pab, s3_8_record, seed_public_bucket};
use crate::aws_securityhub::workflow;
use crate::fixtures::{self, FALCO_SHELL};
use crate::kube_actions::{
    binding, dash_args, dash_service, dashboard_report, fake_secret, falco_miner_alert, pod,
    policy, seed_dashboard, seed_kubecon, seed_workload,
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
/// The manifests repository the shipped secure-exposed-dashboard proposes its fix to, and the
/// Service's manifest there.
const GITOPS: &str = "deploy";
const DASHBOARD_MANIFEST: &str = "apps/kubernetes-dashboard/service.yaml";
/// The Dashboard's Service as the cluster runs it (`seed_dashboard`), as a GitOps repository
/// holds it: the Service of the Dashboard's recommended manifest (v2.7.0) with `type: NodePort`,
/// its `nodePort` and `externalTrafficPolicy` added, and comments, which the PR must keep.
const DASHBOARD_SERVICE: &str = "\
# Kubernetes Dashboard v2.7.0 (recommended.yaml), exposed for the ops team.
kind: Service
apiVersion: v1
metadata:
  labels:
    k8s-app: kubernetes-dashboard
  name: kubernetes-dashboard
  namespace: kubernetes-dashboard
spec:
  type: NodePort # reachable from the office network
  ports:
    - port: 443
      targetPort: 8443
      nodePort: 30443
  externalTrafficPolicy: Cluster
  selector:
    k8s-app: kubernetes-dashboard
";
/// The label `kubernetes.isolate-pod` puts on the pod it isolates.
const ISOLATED_LABEL: &str = "firebreak.dev/isolated";
/// The miner's pod, of the Deployment `miner` (the shell is in another pod, `kubecon`).
const MINER_POD: &str = "miner-5d8f-x7k2p";

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

/// Falco's miner alert (see `falco_miner_alert`, itself derived from the real shell alert) for
/// the miner's pod: only the pod's name changes, in `output_fields` and in `output`.
fn miner_alert() -> Vec<u8> {
    let mut alert: Value = serde_json::from_slice(&falco_miner_alert()).unwrap();
    alert["output_fields"]["k8s.pod.name"] = MINER_POD.into();
    let output = alert["output"]
        .as_str()
        .unwrap()
        .replace("k8s.pod=kubecon", &format!("k8s.pod={MINER_POD}"));
    alert["output"] = output.into();
    serde_json::to_vec(&alert).unwrap()
}

/// The miner's Deployment → ReplicaSet → Pod chain, and the shell's pod `default/kubecon` (the
/// real Falco alert's) on its own.
fn seed_miner(api: &KubeApi) {
    let owners = seed_workload(api, "default", "miner", "miner-5d8f", 3);
    api.seed(&pod("default", MINER_POD, "miner", owners));
    seed_kubecon(api, vec![], &fake_secret());
}

/// The NetworkPolicy isolating the miner's pod, once it exists and selects that pod by the
/// label Firebreak put on it.
fn miner_isolation(api: &KubeApi) -> Option<NetworkPolicy> {
    let np: NetworkPolicy = api.get("default", &format!("firebreak-isolate-{MINER_POD}"))?;
    let label = api
        .get::<Pod>("default", MINER_POD)?
        .metadata
        .labels?
        .get(ISOLATED_LABEL)
        .cloned()?;
    let selects = np
        .spec
        .as_ref()?
        .pod_selector
        .as_ref()?
        .match_labels
        .clone()?;
    (selects == std::collections::BTreeMap::from([(ISOLATED_LABEL.to_owned(), label)]))
        .then_some(np)
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

/// Stops the service as an operator would (SIGTERM) and waits for it to exit cleanly.
async fn stop(svc: &mut Service) {
    let pid = svc.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let asked = Instant::now();
    let status = loop {
        if let Some(s) = svc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "serve did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}\n{}", svc.log_text());
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
    github.create_repo(
        OWNER,
        GITOPS,
        "main",
        &[
            (DASHBOARD_MANIFEST, DASHBOARD_SERVICE),
            ("README.md", "# deploy\n"),
        ],
    );
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
    let env = [
        ("FIREBREAK_SERVER__TOKENS", TOKEN),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("FIREBREAK_GITHUB_TOKEN", bot_token.as_str()),
        ("FIREBREAK_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    let mut svc = start_configured(dir.path(), &config, &playbooks, &env);
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
    post(&client, &svc, "falco", miner_alert()).await;
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
        // Isolated and scaled to zero (isolation comes first in the playbook).
        if seen.miner.is_none()
            && miner_isolation(&kube).is_some()
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
    let new_key = new_key.clone();
    let held: Secret = kube.get("payments", "aws-credentials").unwrap();
    let data = held.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!(text("AWS_ACCESS_KEY_ID"), new_key);
    let arn = caller(
        moto::endpoint(),
        &new_key,
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

    // The miner's pod: every ingress and egress denied (no rule allows any).
    let isolation = miner_isolation(&kube).unwrap().spec.unwrap();
    assert_eq!(
        isolation.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    assert!(isolation.ingress.is_none() && isolation.egress.is_none());

    // The Dashboard, in Git: a pull request against the manifests repository makes its Service
    // ClusterIP, changing only those lines (the comments stay), and says what else to change.
    let gitops = loop {
        assert!(t0.elapsed() < deadline, "no GitOps pull request opened");
        if let Some(p) = github.pulls(OWNER, GITOPS).first() {
            break p.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let branch = gitops["head"]["ref"].as_str().unwrap();
    assert!(
        branch.starts_with("firebreak/secure-exposed-dashboard-"),
        "{branch}"
    );
    assert_eq!(gitops["base"]["ref"], "main");
    assert_eq!(gitops["state"], "open");
    assert_eq!(
        gitops["title"],
        "Keep the Kubernetes Dashboard closed: its Service becomes ClusterIP"
    );
    assert_eq!(
        github
            .file(OWNER, GITOPS, branch, DASHBOARD_MANIFEST)
            .as_deref(),
        Some(
            DASHBOARD_SERVICE
                .replace(
                    "  type: NodePort # reachable from the office network\n",
                    "  type: ClusterIP # reachable from the office network\n"
                )
                .replace("      nodePort: 30443\n", "")
                .replace("  externalTrafficPolicy: Cluster\n", "")
                .as_str()
        )
    );
    assert_eq!(
        github
            .file(OWNER, GITOPS, "main", DASHBOARD_MANIFEST)
            .as_deref(),
        Some(DASHBOARD_SERVICE),
        "the base branch changes only when a person merges"
    );
    let body = gitops["body"].as_str().unwrap();
    for line in [
        "kube-hunter found the Kubernetes Dashboard exposed without authentication",
        "(`KHV029`: Dashboard Exposed",
        "`secure-exposed-dashboard`): its Service is ClusterIP, it runs without skip-login arguments and its",
        "GitOps would expose it again at its next sync: this pull request makes the Service",
        "`--enable-skip-login`) and remove its cluster-admin ClusterRoleBinding in this",
    ] {
        assert!(body.contains(line), "{line:?} not in the PR body:\n{body}");
    }

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
    // What the two playbooks that changed the most did, step by step, in order: the miner is
    // isolated before it is scaled, the Dashboard's fix proposed in Git before the team is told.
    let steps = |playbook: &'static str| {
        sqlx::query_as::<_, (String, String)>(
            "SELECT s.action, s.status FROM steps s JOIN executions e ON e.id = s.execution_id \
             WHERE e.playbook = ? ORDER BY s.idx",
        )
        .bind(playbook)
    };
    let applied_steps = |actions: &[&str]| -> Vec<(String, String)> {
        actions
            .iter()
            .map(|a| ((*a).to_owned(), "applied".to_owned()))
            .collect()
    };
    assert_eq!(
        steps("stop-cryptominer")
            .fetch_all(&mut conn)
            .await
            .unwrap(),
        applied_steps(&[
            "kubernetes.capture-evidence",
            "kubernetes.isolate-pod",
            "kubernetes.scale-to-zero",
            "notify.webhook"
        ])
    );
    assert_eq!(
        steps("secure-exposed-dashboard")
            .fetch_all(&mut conn)
            .await
            .unwrap(),
        applied_steps(&[
            "kubernetes.secure-dashboard",
            "github.open-pull-request",
            "notify.webhook"
        ])
    );
    let scheduled: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT action, due_at, created_at FROM schedules WHERE fired_at IS NULL")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    let (action, due_at, created_at) = &scheduled[0];
    assert_eq!(action, "aws.iam.delete-access-key");
    // 24 h after the rotation (the due time is taken a moment before the row is written).
    let day = 24 * 3600 * 1000;
    assert!(
        (day - 60_000..=day).contains(&(due_at - created_at)),
        "due {due_at}, created {created_at}"
    );

    // The GitOps pull request names the finding it is about.
    let dashboard_finding: String =
        sqlx::query_scalar("SELECT id FROM findings WHERE source = 'kube-hunter'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(
        body.contains(&format!("Finding `{dashboard_finding}`.")),
        "{body}"
    );

    // Every playbook with a notify step told the security team once: all but
    // isolate-runtime-threat, whose notification is alert-runtime-threat's.
    let told = security.requests().len();
    assert_eq!(told, executions.len() - 1);

    // ---- The grace period is over: the exposed key is deleted. ----
    // Waiting 24 h is not a test. The timer lives in the store (the step's due time, the
    // schedule and the execution's wake-up time), so the service is stopped, the due time moved
    // to now in the store, and `serve` started again on the same ledger: the restarted service
    // finds the timer due and deletes the key. That also shows the timer survives a restart.
    drop(conn);
    stop(&mut svc).await;
    let mut conn = sqlx::SqliteConnection::connect(&ledger).await.unwrap();
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let mut moved = 0;
    for sql in [
        "UPDATE schedules SET due_at = ? WHERE fired_at IS NULL",
        "UPDATE steps SET due_at = ? WHERE status = 'scheduled'",
        "UPDATE executions SET wake_at = ? WHERE state = 'scheduled'",
    ] {
        moved += sqlx::query(sql)
            .bind(now_ms)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected();
    }
    assert_eq!(moved, 3, "one schedule, one step, one execution");
    drop(conn);
    let svc = start_configured(dir.path(), &config, &playbooks, &env);
    github.set_webhook(&format!("http://{}/v1/github", svc.addr), WEBHOOK_SECRET);
    let restarted = Instant::now();
    while keys(&direct, &user).await.contains_key(&old_key) {
        assert!(
            restarted.elapsed() < deadline,
            "the exposed key was not deleted after the restart\n{}",
            svc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the new key is left, and the workload's Secret still holds it, working.
    let left = keys(&direct, &user).await;
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        [(new_key.clone(), "Active".to_owned())]
    );
    let held: Secret = kube.get("payments", "aws-credentials").unwrap();
    let data = held.data.unwrap();
    assert_eq!(
        String::from_utf8(data["AWS_ACCESS_KEY_ID"].0.clone()).unwrap(),
        new_key
    );
    let arn = caller(
        moto::endpoint(),
        &new_key,
        &firebreak::redact::Redacted::new(
            String::from_utf8(data["AWS_SECRET_ACCESS_KEY"].0.clone()).unwrap(),
        ),
    )
    .await;
    assert!(arn.ends_with(&format!(":user/{user}")), "{arn}");
    let mut conn = sqlx::SqliteConnection::connect(&ledger).await.unwrap();
    let mut rotation = String::new();
    while rotation != "applied" {
        assert!(restarted.elapsed() < deadline, "rotation: {rotation}");
        rotation = sqlx::query_scalar(
            "SELECT state FROM executions WHERE playbook = 'rotate-exposed-aws-key'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unfired: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schedules WHERE fired_at IS NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(unfired, 0);
    drop(conn);
    // Nothing ran twice after the restart: no second notification.
    assert_eq!(security.requests().len(), told);

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
