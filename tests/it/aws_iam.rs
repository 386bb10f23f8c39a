//! IAM containment actions against moto, from real scanner findings through playbooks and the
//! engine: plans write nothing, apply changes IAM (read back through the SDK), a second apply is
//! a no-op, rollback restores, refusals say why, and a rotated key's secret never shows up in a
//! plan, an outcome, the audit trail or a notification.
//!
//! moto creates access keys with ids of its own, so each test derives its finding from a real
//! fixture by replacing only the access key id, the user and the account (moto's account is
//! always 123456789012) with the ones moto created; nothing else of the sample changes.
//!
//! Each scenario is an `async fn` taking the `Aws` to act with, so the same body can run under
//! an IAM-enforced least-privilege principal as well as moto's default one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_sdk_iam::types::StatusType;
use firebreak::action::{ActionCtx, action};
use firebreak::clients::aws::Aws;
use firebreak::clients::kube::Kube;
use firebreak::config::{Config, WebhookEndpoint};
use firebreak::engine::worker::{Round, Worker, WorkerOptions};
use firebreak::engine::{RunOptions, RunReport, StepReport, StepStatus, run_in_memory as run};
use firebreak::finding::{Finding, ParserChoice, parse_input};
use firebreak::playbook::{PlaybookSet, load_str};
use firebreak::redact::Redacted;
use firebreak::store::sqlite::SqliteStore;
use firebreak::store::{AuditQuery, IngestBatch, Store};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, PodSpec, PodTemplateSpec, Secret, SecretEnvSource,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::{Value, json};

use crate::fixtures;
use crate::support::aws_proxy::{AwsProxy, Throttle};
use crate::support::kube_api::KubeApi;
use crate::support::moto;
use crate::support::receiver::Receiver;

const ACCOUNT: &str = "123456789012";
const TRUFFLEHOG_AWS: &str = "trufflehog/trufflehog-v3-git-aws-canary.jsonl";
const GITLEAKS_V8_AWS: &str = "gitleaks/gitleaks-v8-report-aws-access-token.json";

// ---------------------------------------------------------------------------------------------
// Findings derived from real fixtures.

fn parse(name: &str, bytes: &[u8]) -> Vec<Finding> {
    let report = parse_input(name, bytes, ParserChoice::Auto);
    assert!(report.rejected.is_empty(), "{name}: {:?}", report.rejected);
    report.findings
}

/// The real trufflehog AWS result with only the key id (`Redacted`, `Raw`), the account and
/// the user (`ExtraData`) replaced by moto's.
pub(crate) fn trufflehog_finding(user: &str, key_id: &str) -> Finding {
    let mut all = parse("trufflehog.jsonl", trufflehog_line(user, key_id).as_bytes());
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// The JSON line of [`trufflehog_finding`], as trufflehog writes it.
pub(crate) fn trufflehog_line(user: &str, key_id: &str) -> String {
    let text = String::from_utf8(fixtures::bytes(TRUFFLEHOG_AWS)).unwrap();
    let mut v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["Redacted"] = json!(key_id);
    // `Raw` is base64 of the key id; ByteString serialises as exactly that.
    v["Raw"] = serde_json::to_value(ByteString(key_id.as_bytes().to_vec())).unwrap();
    v["ExtraData"]["account"] = json!(ACCOUNT);
    v["ExtraData"]["arn"] = json!(format!("arn:aws:iam::{ACCOUNT}:user/{user}"));
    v.to_string()
}

/// The first result of the real gitleaks v8 report (rule `aws-access-token`) with only the
/// matched text replaced by moto's key id (that rule matches a key id; the sample's is a
/// placeholder). gitleaks names no user: the actions look it up.
fn gitleaks_finding(key_id: &str) -> Finding {
    let mut v: Value = serde_json::from_slice(&fixtures::bytes(GITLEAKS_V8_AWS)).unwrap();
    let mut leak = v[0].take();
    leak["Match"] = json!(key_id);
    leak["Secret"] = json!(key_id);
    let mut all = parse("gitleaks.json", json!([leak]).to_string().as_bytes());
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// The real GuardDuty `UnauthorizedAccess:IAMUser/TorIPCaller` event with only the access key,
/// the user and the account replaced by moto's.
pub(crate) fn guardduty_finding(user: &str, key_id: &str) -> Finding {
    let mut v: Value = serde_json::from_slice(&fixtures::bytes(fixtures::GD_TOR_IAM)).unwrap();
    v["account"] = json!(ACCOUNT);
    v["detail"]["accountId"] = json!(ACCOUNT);
    let details = &mut v["detail"]["resource"]["accessKeyDetails"];
    details["userName"] = json!(user);
    details["accessKeyId"] = json!(key_id);
    let mut all = parse("guardduty.json", v.to_string().as_bytes());
    assert_eq!(all.len(), 1);
    all.remove(0)
}

// ---------------------------------------------------------------------------------------------
// AWS helpers (all reads go through the SDK).

/// A fresh IAM user with one access key; returns the key id and its secret.
pub(crate) async fn user_with_key(aws: &Aws, user: &str) -> (String, Redacted<String>) {
    let iam = aws.iam();
    iam.create_user().user_name(user).send().await.unwrap();
    let key = iam
        .create_access_key()
        .user_name(user)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    (
        key.access_key_id().to_owned(),
        Redacted::new(key.secret_access_key().to_owned()),
    )
}

/// A Secrets Manager secret holding the key (its value as consumers read it), created or
/// overwritten.
pub(crate) async fn sm_holding(aws: Aws, secret_id: &str, key_id: &str, secret: &Redacted<String>) {
    let value = json!({"AccessKeyId": key_id, "SecretAccessKey": secret.expose()}).to_string();
    let sm = aws.secretsmanager();
    if sm
        .create_secret()
        .name(secret_id)
        .secret_string(&value)
        .send()
        .await
        .is_err()
    {
        sm.put_secret_value()
            .secret_id(secret_id)
            .secret_string(&value)
            .send()
            .await
            .unwrap();
    }
}

/// The user's keys as IAM lists them: id → status.
pub(crate) async fn keys(aws: &Aws, user: &str) -> BTreeMap<String, String> {
    aws.iam()
        .list_access_keys()
        .user_name(user)
        .send()
        .await
        .unwrap()
        .access_key_metadata()
        .iter()
        .map(|m| {
            (
                m.access_key_id().unwrap().to_owned(),
                m.status().unwrap().as_str().to_owned(),
            )
        })
        .collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn ctx(aws: &Aws) -> ActionCtx {
    ActionCtx::from_config(&Config::default())
        .unwrap()
        .with_aws(aws.clone())
}

fn playbook(action: &str, with: &str) -> Arc<PlaybookSet> {
    let yaml = format!(
        "name: contain\nmatch: {{class: credential-exposure}}\nsteps:\n  - action: {action}\n    with: {with}\n"
    );
    let (pb, _) = load_str(Path::new("contain.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(PlaybookSet::new(vec![pb]))
}

async fn step(
    set: &Arc<PlaybookSet>,
    ctx: &ActionCtx,
    finding: &Finding,
    dry_run: bool,
) -> StepReport {
    let opts = RunOptions {
        dry_run,
        retry_base: Duration::from_millis(1),
        ..RunOptions::default()
    };
    let report: RunReport = run(set, ctx, std::slice::from_ref(finding), &opts, &|| {})
        .await
        .unwrap();
    assert_eq!(report.executions.len(), 1, "{report:#?}");
    report.executions[0].steps[0].clone()
}

/// AWS configuration through a proxy that records every operation (to prove plans only read).
async fn recorded(aws_endpoint: &str) -> (AwsProxy, Aws) {
    let proxy = AwsProxy::start(aws_endpoint, Arc::new(Throttle::new("none", 0))).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    (proxy, aws)
}

fn writes(ops: &[String]) -> Vec<String> {
    ops.iter()
        .filter(|o| {
            let name = o.rsplit('.').next().unwrap_or_default();
            !["Get", "List", "Describe"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// aws.iam.deactivate-access-key

async fn deactivate_scenario(aws: Aws, observer: &Aws) {
    let user = unique("leaky");
    let (key_id, _) = user_with_key(observer, &user).await;
    let finding = trufflehog_finding(&user, &key_id);
    let set = playbook("aws.iam.deactivate-access-key", "{}");
    let ctx = ctx(&aws);

    let planned = step(&set, &ctx, &finding, true).await;
    assert_eq!(planned.status, StepStatus::Planned, "{planned:#?}");
    let plan = planned.plan.unwrap();
    assert!(!plan.noop);
    assert_eq!(plan.before["status"], "Active");
    assert_eq!(plan.after["status"], "Inactive");
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(
        plan.target,
        format!("aws:{ACCOUNT}:iam:access-key/{key_id}")
    );
    assert_eq!(
        keys(observer, &user).await[&key_id],
        "Active",
        "a plan changes nothing"
    );

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.unwrap();
    assert_eq!(outcome.result, "applied");
    assert_eq!(keys(observer, &user).await[&key_id], "Inactive");

    let second = step(&set, &ctx, &finding, false).await;
    assert!(second.plan.unwrap().noop);
    assert_eq!(second.outcome.unwrap().result, "unchanged");

    let deactivate = action("aws.iam.deactivate-access-key").unwrap();
    deactivate.rollback(&ctx, &outcome).await.unwrap();
    assert_eq!(keys(observer, &user).await[&key_id], "Active");
    deactivate.rollback(&ctx, &outcome).await.unwrap();
    assert_eq!(
        keys(observer, &user).await[&key_id],
        "Active",
        "rollback is idempotent"
    );
}

#[tokio::test]
async fn deactivate_access_key_from_a_trufflehog_finding_deactivates_once_and_rolls_back() {
    let aws = moto::aws().await;
    deactivate_scenario(aws.clone(), &aws).await;
}

#[tokio::test]
async fn a_plan_only_reads_and_a_finding_about_another_account_is_refused() {
    let observer = moto::aws().await;
    let (proxy, aws) = recorded(moto::endpoint()).await;
    let user = unique("leaky");
    let (key_id, _) = user_with_key(&observer, &user).await;
    let retired = unique("retired");
    let (retired_key, _) = user_with_key(&observer, &retired).await;
    observer
        .iam()
        .update_access_key()
        .user_name(&retired)
        .access_key_id(&retired_key)
        .status(StatusType::Inactive)
        .send()
        .await
        .unwrap();
    let secret_id = format!("{user}/aws-credentials");
    sm_holding(
        observer.clone(),
        &secret_id,
        &key_id,
        &Redacted::new("unused".to_owned()),
    )
    .await;
    let ctx = ctx(&aws);
    let rotate = format!("{{deliver: {{secrets_manager: {{secret_id: {secret_id}}}}}}}");
    let cases = [
        ("aws.iam.deactivate-access-key", "{}", (&user, &key_id)),
        ("aws.iam.quarantine-user", "{}", (&user, &key_id)),
        (
            "aws.iam.rotate-access-key",
            rotate.as_str(),
            (&user, &key_id),
        ),
        ("aws.iam.delete-access-key", "{}", (&retired, &retired_key)),
    ];
    for (kind, with, (u, k)) in cases {
        let planned = step(&playbook(kind, with), &ctx, &trufflehog_finding(u, k), true).await;
        assert_eq!(planned.status, StepStatus::Planned, "{kind}: {planned:#?}");
        assert!(!planned.plan.unwrap().noop, "{kind}");
    }
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    assert_eq!(
        writes(&seen),
        Vec::<String>::new(),
        "plans only read: {seen:?}"
    );

    let mut other = trufflehog_finding(&user, &key_id);
    for r in &mut other.resources {
        if let firebreak::finding::ResourceRef::AwsIamAccessKey { account, .. } = r {
            *account = Some("999999999999".to_owned());
        }
    }
    let report = step(
        &playbook("aws.iam.deactivate-access-key", "{}"),
        &ctx,
        &other,
        false,
    )
    .await;
    assert_eq!(report.status, StepStatus::Failed);
    let error = report.error.unwrap();
    assert!(error.contains("account 999999999999"), "{error}");
    assert_eq!(keys(&observer, &user).await[&key_id], "Active");
}

// ---------------------------------------------------------------------------------------------
// aws.iam.delete-access-key

async fn delete_scenario(aws: Aws, observer: &Aws) {
    let user = unique("old-key");
    let (key_id, _) = user_with_key(observer, &user).await;
    // gitleaks names no user: the action finds it through GetAccessKeyLastUsed.
    let finding = gitleaks_finding(&key_id);
    let set = playbook("aws.iam.delete-access-key", "{}");
    let ctx = ctx(&aws);

    let refused = step(&set, &ctx, &finding, false).await;
    assert_eq!(refused.status, StepStatus::Failed, "{refused:#?}");
    let error = refused.error.unwrap();
    assert!(error.contains("is Active"), "{error}");
    assert!(error.contains("never deletes an active key"), "{error}");
    assert_eq!(
        keys(observer, &user).await.len(),
        1,
        "an active key is never deleted"
    );

    observer
        .iam()
        .update_access_key()
        .user_name(&user)
        .access_key_id(&key_id)
        .status(StatusType::Inactive)
        .send()
        .await
        .unwrap();
    let plan = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert!(!plan.noop);
    assert!(!plan.reversible);
    assert_eq!(plan.changes[0].op, "delete");
    assert_eq!(
        keys(observer, &user).await.len(),
        1,
        "a plan deletes nothing"
    );

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    assert_eq!(applied.outcome.unwrap().result, "applied");
    assert!(keys(observer, &user).await.is_empty());

    let again = step(&set, &ctx, &finding, false).await;
    assert_eq!(again.status, StepStatus::Applied, "{again:#?}");
    assert!(again.plan.unwrap().noop);
    assert_eq!(again.outcome.unwrap().result, "unchanged");
}

#[tokio::test]
async fn delete_access_key_refuses_an_active_key_deletes_an_inactive_one_and_then_is_a_noop() {
    let aws = moto::aws().await;
    delete_scenario(aws.clone(), &aws).await;
}

// ---------------------------------------------------------------------------------------------
// aws.iam.quarantine-user

async fn inline_policy(aws: &Aws, user: &str) -> Option<Value> {
    match aws
        .iam()
        .get_user_policy()
        .user_name(user)
        .policy_name("firebreak-quarantine")
        .send()
        .await
    {
        Ok(out) => Some(
            serde_json::from_str(out.policy_document()).unwrap_or_else(|_| {
                let decoded: String = url_decode(out.policy_document());
                serde_json::from_str(&decoded).unwrap()
            }),
        ),
        Err(_) => None,
    }
}

/// Decodes the `%XX` escapes IAM puts in policy documents.
fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s.as_bytes()[i] == b'%'
            && let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(s.as_bytes()[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

async fn quarantine_revoke_sessions_scenario(aws: Aws, observer: &Aws) {
    let user = unique("stolen");
    let (key_id, _) = user_with_key(observer, &user).await;
    let finding = guardduty_finding(&user, &key_id);
    let set = playbook("aws.iam.quarantine-user", "{mode: revoke-sessions}");
    let ctx = ctx(&aws);

    let plan = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert!(!plan.noop);
    assert_eq!(plan.target, format!("aws:{ACCOUNT}:iam:user/{user}"));
    assert_eq!(plan.changes[0].op, "create");
    assert_eq!(
        inline_policy(observer, &user).await,
        None,
        "a plan writes nothing"
    );
    let again = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert_eq!(again.hash, plan.hash, "the same state plans the same hash");

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.unwrap();
    let policy = inline_policy(observer, &user).await.unwrap();
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Effect"], "Deny");
    assert_eq!(statement["Action"], "*");
    let cutoff = statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        .as_str()
        .unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(cutoff).is_ok(),
        "{cutoff}"
    );

    let second = step(&set, &ctx, &finding, false).await;
    assert!(second.plan.unwrap().noop);
    assert_eq!(second.outcome.unwrap().result, "unchanged");
    assert_eq!(inline_policy(observer, &user).await.unwrap(), policy);

    let quarantine = action("aws.iam.quarantine-user").unwrap();
    quarantine.rollback(&ctx, &outcome).await.unwrap();
    assert_eq!(inline_policy(observer, &user).await, None);
    quarantine.rollback(&ctx, &outcome).await.unwrap();
}

#[tokio::test]
async fn quarantine_user_revoke_sessions_from_a_guardduty_finding_and_rollback_removes_it() {
    let aws = moto::aws().await;
    quarantine_revoke_sessions_scenario(aws.clone(), &aws).await;
}

#[tokio::test]
async fn quarantine_user_does_not_overwrite_a_policy_firebreak_did_not_write() {
    let aws = moto::aws().await;
    let user = unique("stolen");
    let (key_id, _) = user_with_key(&aws, &user).await;
    let theirs = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Theirs", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]});
    aws.iam()
        .put_user_policy()
        .user_name(&user)
        .policy_name("firebreak-quarantine")
        .policy_document(theirs.to_string())
        .send()
        .await
        .unwrap();
    let ctx = ctx(&aws);
    let set = playbook("aws.iam.quarantine-user", "{mode: deny-all}");
    let report = step(&set, &ctx, &guardduty_finding(&user, &key_id), false).await;
    assert_eq!(report.status, StepStatus::Failed);
    assert!(report.error.unwrap().contains("did not write"));
    assert_eq!(inline_policy(&aws, &user).await.unwrap(), theirs);
}

/// The Sids of the user's quarantine statements, in order; empty when there is no policy.
async fn quarantine_sids(aws: &Aws, user: &str) -> Vec<String> {
    inline_policy(aws, user)
        .await
        .map(|p| {
            p["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["Sid"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

const DENY_ALL: &str = "FirebreakQuarantineDenyAll";
const REVOKE: &str = "FirebreakQuarantineRevokeOlderSessions";

/// A user quarantined outright (the contain playbook) whose key is then rotated (the rotation
/// playbook asks for revoke-sessions): the deny-all stays, unconditioned, and the revoke
/// statement joins it; rolling back either undoes only its own statement, so lifting the
/// deny-all still leaves the older sessions revoked. Deny-all after revoke-sessions keeps the
/// revoke statement too. The policy is read back from IAM: moto's IAM enforcement cannot show
/// the difference, as it ignores `DateLessThan` conditions (only `StringEquals` is evaluated in
/// moto 5.2) and so denies every request under either statement.
#[tokio::test]
async fn a_quarantine_never_weakens_and_rollback_undoes_only_its_own_statement() {
    let aws = moto::aws().await;
    let ctx = ctx(&aws);
    let deny = playbook("aws.iam.quarantine-user", "{mode: deny-all}");
    let revoke = playbook("aws.iam.quarantine-user", "{mode: revoke-sessions}");
    let quarantine = action("aws.iam.quarantine-user").unwrap();

    let user = unique("denied");
    let (key_id, _) = user_with_key(&aws, &user).await;
    let finding = guardduty_finding(&user, &key_id);
    let contained = step(&deny, &ctx, &finding, false).await;
    assert_eq!(contained.status, StepStatus::Applied, "{contained:#?}");
    assert_eq!(quarantine_sids(&aws, &user).await, [DENY_ALL]);

    let planned = step(&revoke, &ctx, &finding, true).await.plan.unwrap();
    assert!(!planned.noop);
    let rotated = step(&revoke, &ctx, &finding, false).await;
    assert_eq!(rotated.status, StepStatus::Applied, "{rotated:#?}");
    let policy = inline_policy(&aws, &user).await.unwrap();
    assert_eq!(quarantine_sids(&aws, &user).await, [DENY_ALL, REVOKE]);
    assert!(
        policy["Statement"][0].get("Condition").is_none(),
        "the deny-all is still unconditioned: {policy}"
    );
    assert!(
        planned.summary.contains("stays denied outright"),
        "the plan says so: {}",
        planned.summary
    );
    let again = step(&revoke, &ctx, &finding, false).await;
    assert_eq!(again.outcome.unwrap().result, "unchanged");

    quarantine
        .rollback(&ctx, rotated.outcome.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        quarantine_sids(&aws, &user).await,
        [DENY_ALL],
        "rolling back the revoke leaves the deny-all"
    );
    let rotated = step(&revoke, &ctx, &finding, false).await;
    assert_eq!(rotated.status, StepStatus::Applied, "{rotated:#?}");
    quarantine
        .rollback(&ctx, contained.outcome.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        quarantine_sids(&aws, &user).await,
        [REVOKE],
        "lifting the deny-all leaves the older sessions revoked"
    );
    quarantine
        .rollback(&ctx, rotated.outcome.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(inline_policy(&aws, &user).await, None, "nothing left");

    // The other order: revoke-sessions first, then deny-all.
    let user = unique("revoked");
    let (key_id, _) = user_with_key(&aws, &user).await;
    let finding = guardduty_finding(&user, &key_id);
    let revoked = step(&revoke, &ctx, &finding, false).await;
    let before = inline_policy(&aws, &user).await.unwrap();
    let contained = step(&deny, &ctx, &finding, false).await;
    assert_eq!(contained.status, StepStatus::Applied, "{contained:#?}");
    assert_eq!(quarantine_sids(&aws, &user).await, [DENY_ALL, REVOKE]);
    quarantine
        .rollback(&ctx, contained.outcome.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        inline_policy(&aws, &user).await.unwrap(),
        before,
        "rollback restores what was there"
    );
    quarantine
        .rollback(&ctx, revoked.outcome.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(inline_policy(&aws, &user).await, None);
}

/// Under IAM enforcement: requests signed with the user's key are allowed before the
/// quarantine and denied after it (deny-all), and allowed again after rollback.
#[tokio::test]
async fn quarantine_user_deny_all_denies_the_users_requests_under_iam_enforcement() {
    let (server, admin) = moto::enforcing().await;

    let user = unique("stolen");
    admin
        .iam()
        .create_user()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    admin
        .iam()
        .put_user_policy()
        .user_name(&user)
        .policy_name("reader")
        .policy_document(
            json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "iam:ListUsers", "Resource": "*"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let k = admin
        .iam()
        .create_access_key()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    let k = k.access_key().unwrap();
    let stolen = moto::aws_at(&server.endpoint, k.access_key_id(), k.secret_access_key()).await;
    stolen
        .iam()
        .list_users()
        .send()
        .await
        .expect("allowed before the quarantine");

    let ctx = ctx(&admin);
    let finding = guardduty_finding(&user, k.access_key_id());
    let set = playbook("aws.iam.quarantine-user", "{mode: deny-all}");
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let denied = stolen.iam().list_users().send().await.unwrap_err();
    // moto wraps the error in `<Errors>`, which the SDK does not parse: read status and body.
    let raw = denied.raw_response().expect("an HTTP answer");
    assert_eq!(raw.status().as_u16(), 403, "{denied:?}");
    let body = String::from_utf8_lossy(raw.body().bytes().unwrap_or_default()).into_owned();
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");

    let quarantine = action("aws.iam.quarantine-user").unwrap();
    quarantine
        .rollback(&ctx, &applied.outcome.unwrap())
        .await
        .unwrap();
    stolen
        .iam()
        .list_users()
        .send()
        .await
        .expect("allowed again after rollback");
}

// ---------------------------------------------------------------------------------------------
// aws.iam.rotate-access-key

const NS: &str = "payments";
const SECRET: &str = "aws-credentials";
const APP: &str = "billing";

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app.to_owned())])
}

/// A Secret holding `key_id`/`secret`, a Deployment whose pods read it through `envFrom`, and
/// an unrelated Deployment that does not.
pub(crate) fn seed_consumers(api: &KubeApi, key_id: &str, secret: &Redacted<String>) {
    api.seed(&Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                "AWS_ACCESS_KEY_ID".to_owned(),
                ByteString(key_id.as_bytes().to_vec()),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                ByteString(secret.expose().as_bytes().to_vec()),
            ),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    });
    for (name, uses) in [(APP, true), ("frontend", false)] {
        api.seed(&Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                labels: Some(labels(name)),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                replicas: Some(2),
                selector: LabelSelector {
                    match_labels: Some(labels(name)),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(name)),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: Some("ghcr.io/example/billing:1.4".into()),
                            env_from: uses.then(|| {
                                vec![EnvFromSource {
                                    secret_ref: Some(SecretEnvSource {
                                        name: SECRET.into(),
                                        optional: None,
                                    }),
                                    ..EnvFromSource::default()
                                }]
                            }),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        });
    }
}

/// The key id and secret the Secret holds now.
fn held(api: &KubeApi) -> (String, Redacted<String>) {
    let s: Secret = api.get(NS, SECRET).unwrap();
    let data = s.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    (
        text("AWS_ACCESS_KEY_ID"),
        Redacted::new(text("AWS_SECRET_ACCESS_KEY")),
    )
}

fn template_annotations(api: &KubeApi, name: &str) -> BTreeMap<String, String> {
    let d: Deployment = api.get(NS, name).unwrap();
    d.spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default()
}

/// Signs `GetCallerIdentity` with the key; returns the ARN it authenticates as.
pub(crate) async fn caller(endpoint: &str, key_id: &str, secret: &Redacted<String>) -> String {
    let aws = moto::aws_at(endpoint, key_id, secret.expose()).await;
    aws.sts()
        .get_caller_identity()
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

fn rotate_with() -> String {
    format!("{{deliver: {{kubernetes_secret: {{namespace: {NS}, name: {SECRET}}}}}}}")
}

fn kube_ctx(aws: &Aws, api: &KubeApi) -> ActionCtx {
    ctx(aws).with_kube(Kube::from_url(&api.base).unwrap())
}

fn assert_no_secret(what: &str, text: &str, secret: &Redacted<String>) {
    assert!(!secret.expose().is_empty());
    assert!(
        !text.contains(secret.expose().as_str()),
        "the new secret appears in {what}"
    );
}

async fn rotate_scenario(aws: Aws, observer: &Aws, endpoint: &str) {
    let user = unique("svc-billing");
    let (old, old_secret) = user_with_key(observer, &user).await;
    let api = KubeApi::start().await;
    seed_consumers(&api, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);
    let finding = trufflehog_finding(&user, &old);
    let secret_id = format!("{user}/aws-credentials");
    // As a consumer keeps it: the key and a field of its own, which the rotation keeps.
    observer
        .secretsmanager()
        .create_secret()
        .name(&secret_id)
        .secret_string(
            json!({"AccessKeyId": old, "SecretAccessKey": old_secret.expose(),
                "Region": "eu-west-1"})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let with = format!(
        "{{deliver: {{kubernetes_secret: {{namespace: {NS}, name: {SECRET}}}, secrets_manager: {{secret_id: {secret_id}}}}}}}"
    );
    let set = playbook("aws.iam.rotate-access-key", &with);

    let kube_writes = api.writes();
    let plan = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert!(!plan.noop, "{plan:#?}");
    assert_eq!(api.writes(), kube_writes, "a plan writes nothing");
    assert_eq!(
        keys(observer, &user).await.len(),
        1,
        "a plan creates no key"
    );
    assert!(
        plan.summary
            .contains(&format!("roll Deployment(s) {NS}/{APP}")),
        "{}",
        plan.summary
    );
    assert!(
        plan.other_targets
            .contains(&format!("k8s:/{NS}/Secret/{SECRET}/"))
            && plan
                .other_targets
                .contains(&format!("k8s:/{NS}/Deployment/{APP}/")),
        "the plan names what it changes besides the key: {:?}",
        plan.other_targets
    );
    assert!(!plan.summary.contains("frontend"));

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.clone().unwrap();
    let (new, new_secret) = held(&api);
    assert_ne!(new, old);
    assert_eq!(outcome.detail["new_access_key_id"], json!(new));
    assert_eq!(outcome.detail["verified"], true);
    let after = keys(observer, &user).await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[&old], "Inactive");
    assert_eq!(after[&new], "Active");
    assert!(
        caller(endpoint, &new, &new_secret)
            .await
            .ends_with(&format!("/{user}"))
    );
    assert_eq!(
        template_annotations(&api, APP).get("firebreak.io/rotated-key"),
        Some(&new)
    );
    assert!(template_annotations(&api, APP).contains_key("firebreak.io/rotated-at"));
    let stored = observer
        .secretsmanager()
        .get_secret_value()
        .secret_id(&secret_id)
        .send()
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();
    assert_eq!(stored["AccessKeyId"], json!(new));
    assert_eq!(
        stored["SecretAccessKey"].as_str(),
        Some(new_secret.expose().as_str()),
        "Secrets Manager holds the same new key"
    );
    assert_eq!(
        stored["Region"], "eu-west-1",
        "the consumer's own field stays"
    );
    assert!(
        template_annotations(&api, "frontend").is_empty(),
        "unrelated workload untouched"
    );
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(api.client(), NS);
    let events = events.list(&Default::default()).await.unwrap().items;
    let about = |name: &str| {
        events.iter().any(|e| {
            e.reason.as_deref() == Some("FirebreakRemediation")
                && e.involved_object.name.as_deref() == Some(name)
                && e.message.as_deref().is_some_and(|m| m.contains(&new))
        })
    };
    assert!(
        about(APP) && about(SECRET),
        "kubectl describe shows the rotation: {events:#?}"
    );
    let rendered = serde_json::to_string(&applied).unwrap();
    assert_no_secret("the step report", &rendered, &new_secret);

    let second = step(&set, &ctx, &finding, false).await;
    assert_eq!(second.status, StepStatus::Applied, "{second:#?}");
    assert!(second.plan.unwrap().noop);
    assert_eq!(second.outcome.unwrap().result, "unchanged");
    assert_eq!(
        keys(observer, &user).await.len(),
        2,
        "a second apply creates no key"
    );

    let rotate = action("aws.iam.rotate-access-key").unwrap();
    rotate.rollback(&ctx, &outcome).await.unwrap();
    let rolled_back = keys(observer, &user).await;
    assert_eq!(
        rolled_back[&old], "Active",
        "rollback reactivates the old key"
    );
    assert_eq!(rolled_back[&new], "Active", "the new key stays");

    // Rolled back within the grace period: the scheduled deletion refuses to delete the key.
    let delete = step(
        &playbook("aws.iam.delete-access-key", "{}"),
        &ctx,
        &finding,
        false,
    )
    .await;
    assert_eq!(delete.status, StepStatus::Failed, "{delete:#?}");
    assert!(
        delete
            .error
            .unwrap()
            .contains("never deletes an active key")
    );
    assert_eq!(keys(observer, &user).await.len(), 2);
}

#[tokio::test]
async fn rotate_access_key_delivers_a_working_key_rolls_the_deployment_and_rolls_back() {
    let aws = moto::aws().await;
    rotate_scenario(aws.clone(), &aws, moto::endpoint()).await;
}

#[tokio::test]
async fn rotate_refuses_when_another_active_key_leaves_no_room_and_deletes_an_inactive_one() {
    let aws = moto::aws().await;
    let user = unique("two-keys");
    let (old, old_secret) = user_with_key(&aws, &user).await;
    let other = aws
        .iam()
        .create_access_key()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    let other = other.access_key().unwrap().access_key_id().to_owned();
    let api = KubeApi::start().await;
    seed_consumers(&api, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);
    let finding = trufflehog_finding(&user, &old);
    let set = playbook("aws.iam.rotate-access-key", &rotate_with());

    let refused = step(&set, &ctx, &finding, false).await;
    assert_eq!(refused.status, StepStatus::Failed, "{refused:#?}");
    let error = refused.error.unwrap();
    assert!(
        error.contains(&format!("the active key {other}")),
        "{error}"
    );
    assert!(error.contains("does not delete an active key"), "{error}");
    assert_eq!(keys(&aws, &user).await.len(), 2);
    assert_eq!(held(&api).0, old, "nothing delivered");

    aws.iam()
        .update_access_key()
        .user_name(&user)
        .access_key_id(&other)
        .status(StatusType::Inactive)
        .send()
        .await
        .unwrap();
    let plan = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert!(
        plan.summary
            .contains(&format!("deletes the Inactive key {other}")),
        "{}",
        plan.summary
    );
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let after = keys(&aws, &user).await;
    let new = held(&api).0;
    assert!(!after.contains_key(&other), "the Inactive key made room");
    assert_eq!(after[&old], "Inactive");
    assert_eq!(after[&new], "Active");
}

/// A crash after CreateAccessKey and before delivery leaves a key nobody has the secret of.
/// The next attempt deletes it and creates one key: never two new keys.
#[tokio::test]
async fn a_rotation_interrupted_after_creating_a_key_deletes_the_orphan_and_creates_one_key() {
    let aws = moto::aws().await;
    let user = unique("crashed");
    let (old, old_secret) = user_with_key(&aws, &user).await;
    let api = KubeApi::start().await;
    seed_consumers(&api, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);
    let finding = trufflehog_finding(&user, &old);
    let set = playbook("aws.iam.rotate-access-key", &rotate_with());

    // What the interrupted attempt left: its baseline tag, and a key whose secret was lost.
    let tag = aws_sdk_iam::types::Tag::builder()
        .key(format!("firebreak.io/rotation/{old}"))
        .value(old.clone())
        .build()
        .unwrap();
    aws.iam()
        .tag_user()
        .user_name(&user)
        .tags(tag)
        .send()
        .await
        .unwrap();
    let orphan = aws
        .iam()
        .create_access_key()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    let orphan = orphan.access_key().unwrap().access_key_id().to_owned();

    let plan = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert!(plan.summary.contains(&orphan), "{}", plan.summary);
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let after = keys(&aws, &user).await;
    let (new, _) = held(&api);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(!after.contains_key(&orphan));
    assert_eq!(after[&new], "Active");
    assert_eq!(after[&old], "Inactive");
    let tags = aws
        .iam()
        .list_user_tags()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    assert!(
        tags.tags().is_empty(),
        "the baseline tag is removed once delivered"
    );
}

/// Refuses the first call of an operation with a non-retryable error: the attempt fails after
/// the key was created and before it was delivered, as a crash there would leave it.
struct FailOnce {
    operation: &'static str,
    failed: std::sync::atomic::AtomicBool,
}

impl crate::support::aws_proxy::Interceptor for FailOnce {
    fn intercept<'a>(
        &'a self,
        req: &'a crate::support::aws_proxy::ProxyRequest,
        _upstream: &'a str,
    ) -> crate::support::aws_proxy::BoxFuture<'a, Option<crate::support::aws_proxy::ProxyResponse>>
    {
        Box::pin(async move {
            let op = req.operation.as_deref()?;
            if op.ends_with(self.operation)
                && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Some(crate::support::aws_proxy::ProxyResponse::json_error(
                    400,
                    "ValidationException",
                    "simulated failure before delivery",
                ));
            }
            None
        })
    }
}

/// A rotation whose delivery failed after CreateAccessKey: the old key keeps working, and the
/// next run deletes the undeliverable key and delivers exactly one new key.
#[tokio::test]
async fn a_rotation_that_failed_before_delivery_leaves_the_old_key_active_and_the_retry_one_new_key()
 {
    let fail = Arc::new(FailOnce {
        operation: ".PutSecretValue",
        failed: std::sync::atomic::AtomicBool::new(false),
    });
    let proxy = AwsProxy::start(moto::endpoint(), fail).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    let observer = moto::aws().await;
    let user = unique("interrupted");
    let (old, old_secret) = user_with_key(&observer, &user).await;
    let secret_id = format!("{user}/aws-credentials");
    sm_holding(observer.clone(), &secret_id, &old, &old_secret).await;
    let set = playbook(
        "aws.iam.rotate-access-key",
        &format!("{{deliver: {{secrets_manager: {{secret_id: {secret_id}}}}}}}"),
    );
    let ctx = ctx(&aws);
    let finding = trufflehog_finding(&user, &old);

    let failed = step(&set, &ctx, &finding, false).await;
    assert_eq!(failed.status, StepStatus::Failed, "{failed:#?}");
    let first = keys(&observer, &user).await;
    assert_eq!(first.len(), 2, "the attempt created a key: {first:?}");
    assert_eq!(
        first[&old], "Active",
        "the old key is not touched before delivery"
    );
    let lost = first.keys().find(|k| **k != old).unwrap().clone();

    let retried = step(&set, &ctx, &finding, false).await;
    assert_eq!(retried.status, StepStatus::Applied, "{retried:#?}");
    let after = keys(&observer, &user).await;
    let stored = observer
        .secretsmanager()
        .get_secret_value()
        .secret_id(&secret_id)
        .send()
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();
    let new = stored["AccessKeyId"].as_str().unwrap().to_owned();
    assert_eq!(after.len(), 2, "never two new keys: {after:?}");
    assert!(!after.contains_key(&lost), "the undelivered key is deleted");
    assert_eq!(after[&new], "Active");
    assert_eq!(after[&old], "Inactive");
    let outcome = retried.outcome.unwrap();
    assert_eq!(outcome.detail["deleted_orphans"], json!([lost]));
}

/// A rotation that failed after delivering to Secrets Manager (the deactivation refused once):
/// the secret now holds the new key, not the exposed one, and is still recognised as the
/// key's consumer by the version Firebreak wrote, so the retry finishes the rotation with the
/// key it delivered instead of refusing or creating another.
#[tokio::test]
async fn a_rotation_that_failed_after_delivery_to_secrets_manager_finishes_on_retry() {
    let fail = Arc::new(FailOnce {
        operation: "UpdateAccessKey",
        failed: std::sync::atomic::AtomicBool::new(false),
    });
    let proxy = AwsProxy::start(moto::endpoint(), fail).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    let observer = moto::aws().await;
    let user = unique("half-done");
    let (old, old_secret) = user_with_key(&observer, &user).await;
    let secret_id = format!("{user}/aws-credentials");
    sm_holding(observer.clone(), &secret_id, &old, &old_secret).await;
    let set = playbook(
        "aws.iam.rotate-access-key",
        &format!("{{deliver: {{secrets_manager: {{secret_id: {secret_id}}}}}}}"),
    );
    let ctx = ctx(&aws);
    let finding = trufflehog_finding(&user, &old);

    let failed = step(&set, &ctx, &finding, false).await;
    assert_eq!(failed.status, StepStatus::Failed, "{failed:#?}");
    let stored = |v: aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput| {
        serde_json::from_str::<Value>(v.secret_string().unwrap()).unwrap()["AccessKeyId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let get = || {
        observer
            .secretsmanager()
            .get_secret_value()
            .secret_id(&secret_id)
            .send()
    };
    let delivered = stored(get().await.unwrap());
    assert_ne!(
        delivered, old,
        "the new key was delivered before the failure"
    );
    assert_eq!(keys(&observer, &user).await[&old], "Active");

    let retried = step(&set, &ctx, &finding, false).await;
    assert_eq!(retried.status, StepStatus::Applied, "{retried:#?}");
    assert_eq!(retried.outcome.unwrap().detail["created"], false);
    let after = keys(&observer, &user).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[&old], "Inactive");
    assert_eq!(after[&delivered], "Active");
    assert_eq!(stored(get().await.unwrap()), delivered);
}

/// Lets the first CreateAccessKey reach moto (the key is created) and then answers the client
/// with a 503, as a connection lost after the request landed would: the SDK retries, and a
/// second key is created.
struct LoseFirstAnswer {
    lost: std::sync::atomic::AtomicBool,
}

impl crate::support::aws_proxy::Interceptor for LoseFirstAnswer {
    fn intercept<'a>(
        &'a self,
        req: &'a crate::support::aws_proxy::ProxyRequest,
        upstream: &'a str,
    ) -> crate::support::aws_proxy::BoxFuture<'a, Option<crate::support::aws_proxy::ProxyResponse>>
    {
        Box::pin(async move {
            if req.operation.as_deref() != Some("CreateAccessKey")
                || self.lost.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return None;
            }
            let mut forward = reqwest::Client::new()
                .request(req.method.clone(), format!("{upstream}{}", req.uri))
                .body(req.body.clone());
            for (name, value) in &req.headers {
                forward = forward.header(name, value);
            }
            let landed = forward.send().await.unwrap();
            assert!(landed.status().is_success(), "{landed:?}");
            Some(crate::support::aws_proxy::ProxyResponse::query_error(
                503,
                "ServiceUnavailable",
                "the answer was lost",
            ))
        })
    }
}

/// The SDK retries a CreateAccessKey whose answer was lost and hits the two-key quota; the
/// engine's next attempt deletes the key nobody saw the secret of and creates one, so exactly
/// one new key remains.
#[tokio::test]
async fn a_create_access_key_retried_after_a_lost_answer_still_leaves_exactly_one_new_key() {
    let proxy = AwsProxy::start(
        moto::endpoint(),
        Arc::new(LoseFirstAnswer {
            lost: std::sync::atomic::AtomicBool::new(false),
        }),
    )
    .await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    let observer = moto::aws().await;
    let user = unique("lost-answer");
    let (old, old_secret) = user_with_key(&observer, &user).await;
    let api = KubeApi::start().await;
    seed_consumers(&api, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);
    let set = playbook("aws.iam.rotate-access-key", &rotate_with());
    let applied = step(&set, &ctx, &trufflehog_finding(&user, &old), false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let creates = proxy
        .seen()
        .iter()
        .filter(|o| *o == "CreateAccessKey")
        .count();
    assert_eq!(
        creates,
        3,
        "the SDK retried, then the engine: {:?}",
        proxy.seen()
    );
    assert_eq!(
        applied.attempts, 2,
        "the quota error was retried: {applied:#?}"
    );
    let after = keys(&observer, &user).await;
    let (new, _) = held(&api);
    assert_eq!(after.len(), 2, "exactly one new key: {after:?}");
    assert_eq!(after[&new], "Active");
    assert_eq!(after[&old], "Inactive");
    assert_eq!(
        applied.outcome.unwrap().detail["deleted_orphans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// CreateAccessKey throttled twice between Firebreak and moto: the SDK's retry carries the
/// rotation through and exactly one new key exists.
#[tokio::test]
async fn a_throttled_rotation_still_succeeds_with_exactly_one_new_key() {
    let throttle = Arc::new(Throttle::new("CreateAccessKey", 2));
    let proxy = AwsProxy::start(moto::endpoint(), throttle.clone()).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    let observer = moto::aws().await;
    let user = unique("throttled");
    let (old, old_secret) = user_with_key(&observer, &user).await;
    let api = KubeApi::start().await;
    seed_consumers(&api, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);
    let set = playbook("aws.iam.rotate-access-key", &rotate_with());
    let applied = step(&set, &ctx, &trufflehog_finding(&user, &old), false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    assert_eq!(throttle.refused(), 2);
    assert_eq!(throttle.forwarded(), 1);
    let after = keys(&observer, &user).await;
    assert_eq!(after.len(), 2, "exactly one new key: {after:?}");
    assert_eq!(after[&old], "Inactive");
    assert_eq!(after[&held(&api).0], "Active");
}

// ---------------------------------------------------------------------------------------------
// The shipped playbooks through the durable engine.

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("playbooks")
            .join(name),
    )
    .unwrap()
}

fn playbook_set(name: &str, yaml: &str) -> Arc<RwLock<Arc<PlaybookSet>>> {
    let (pb, _) = load_str(Path::new(name), yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(RwLock::new(Arc::new(PlaybookSet::new(vec![pb]))))
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

fn engine(
    store: &Arc<SqliteStore>,
    pbs: Arc<RwLock<Arc<PlaybookSet>>>,
    ctx: ActionCtx,
) -> Worker<SqliteStore> {
    let opts = WorkerOptions {
        owner: "w1".into(),
        lease: Duration::from_secs(3600),
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

async fn record(store: &SqliteStore, finding: Finding) {
    store
        .record(
            IngestBatch {
                intake: "test".into(),
                findings: vec![finding],
                rejected: vec![],
                ..IngestBatch::default()
            },
            Duration::ZERO,
        )
        .await
        .unwrap();
}

/// Everything the store holds about the run, as text: the audit trail and every step's plan,
/// outcome and error.
async fn store_text(store: &SqliteStore, finding_id: &str) -> String {
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let mut text = serde_json::to_string(&audit).unwrap();
    for e in store.executions_of(finding_id).await.unwrap() {
        for s in e.steps {
            text.push_str(&format!("{:?}{:?}{:?}", s.plan, s.outcome, s.error));
        }
    }
    text
}

/// A log sink for one test: every line the engine, the actions and the SDK log at debug level.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn rotation_through_the_engine(aws: Aws, observer: &Aws, endpoint: &str) {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    // This test's runtime is single-threaded: every task logs through this subscriber.
    let _logging = tracing::subscriber::set_default(subscriber);
    let user = unique("svc-billing");
    let (old, old_secret) = user_with_key(observer, &user).await;
    let api = KubeApi::start().await;
    seed_consumers(&api, &old, &old_secret);
    let rx = Receiver::start().await;
    let mut ctx = kube_ctx(&aws, &api);
    ctx.webhooks = Arc::new(BTreeMap::from([(
        "security".to_owned(),
        WebhookEndpoint {
            url: Redacted::new(rx.url("/security")),
        },
    )]));
    // The shipped playbook, with the grace period shortened for the test.
    let yaml = shipped("rotate-exposed-aws-key.yaml");
    assert!(yaml.contains("after: 24h"));
    let pbs = playbook_set(
        "rotate-exposed-aws-key.yaml",
        &yaml.replace("after: 24h", "after: 3s"),
    );
    let finding = trufflehog_finding(&user, &old);
    let finding_id = finding.id.to_string();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let store = Arc::new(open(&path).await);
    record(&store, finding).await;
    drain(&engine(&store, Arc::clone(&pbs), ctx.clone())).await;

    let (new, new_secret) = held(&api);
    assert_ne!(new, old, "the new key is in the Secret");
    assert!(
        caller(endpoint, &new, &new_secret)
            .await
            .ends_with(&format!("/{user}"))
    );
    assert_eq!(
        template_annotations(&api, APP).get("firebreak.io/rotated-key"),
        Some(&new),
        "the Deployment was rolled"
    );
    let after = keys(observer, &user).await;
    assert_eq!(after[&old], "Inactive");
    assert_eq!(after[&new], "Active");
    let policy = inline_policy(observer, &user).await.unwrap();
    assert!(policy["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"].is_string());
    assert_eq!(rx.requests().len(), 1, "the security team is told");
    assert_no_secret("the notification", &rx.requests()[0].body, &new_secret);
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let scheduled = audit.iter().find(|a| a.kind == "step.scheduled").unwrap();
    let due = scheduled.detail["due_at"].as_i64().unwrap();
    assert_eq!(
        store.waiting_executions().await.unwrap()[2],
        ("scheduled".to_owned(), 1)
    );

    // Restart: a new store handle and a new engine on the same database file.
    drop(store);
    let store = Arc::new(open(&path).await);
    let w = engine(&store, Arc::clone(&pbs), ctx.clone());
    drain(&w).await;
    if firebreak::store::now_ms() < due {
        assert!(
            keys(observer, &user).await.contains_key(&old),
            "not deleted before the grace period is over"
        );
    }
    if keys(observer, &user).await.contains_key(&old) {
        let wait = due - firebreak::store::now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap() + 100)).await;
        }
        drain(&w).await;
    }
    let after = keys(observer, &user).await;
    assert_eq!(
        after.len(),
        1,
        "the old key is deleted after the grace period: {after:?}"
    );
    assert_eq!(after[&new], "Active");
    let rows = store.executions_of(&finding_id).await.unwrap();
    let statuses: Vec<&str> = rows[0].steps.iter().map(|s| s.status.as_str()).collect();
    // The GitHub alert step is for findings from GitHub secret scanning: skipped here.
    assert_eq!(
        statuses,
        ["applied", "applied", "applied", "skipped", "applied"]
    );
    assert!(
        rows[0].steps[3]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("finding.source == \"github\"")),
        "{:?}",
        rows[0].steps[3]
    );
    assert_eq!(
        rows[0].state,
        firebreak::store::ExecState::Applied,
        "a skipped step is not a failure"
    );

    let text = store_text(&store, &finding_id).await;
    assert!(text.contains(&new), "the new key id is recorded");
    assert_no_secret("the store (audit, plans, outcomes)", &text, &new_secret);
    let logged = logs.text();
    assert!(
        logged.contains("firebreak::"),
        "the engine and actions logged"
    );
    assert_no_secret("the logs", &logged, &new_secret);
    let verify = store.audit_verify().await.unwrap();
    assert!(verify.problems.is_empty(), "{verify:?}");
}

#[tokio::test]
async fn the_rotation_playbook_delivers_rolls_deactivates_and_deletes_the_old_key_after_a_restart()
{
    let aws = moto::aws().await;
    rotation_through_the_engine(aws.clone(), &aws, moto::endpoint()).await;
}

/// A Secret `namespace/name` holding `key_id` under `id_key` and its secret under `secret_key`.
fn seed_secret(
    api: &KubeApi,
    (namespace, name): (&str, &str),
    (id_key, secret_key): (&str, &str),
    key_id: &str,
    secret: &Redacted<String>,
) {
    api.seed(&Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (id_key.to_owned(), ByteString(key_id.as_bytes().to_vec())),
            (
                secret_key.to_owned(),
                ByteString(secret.expose().as_bytes().to_vec()),
            ),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    });
}

/// A Deployment `namespace/name` whose pods read Secret `secret` through `envFrom`.
fn seed_reader(api: &KubeApi, namespace: &str, name: &str, secret: &str) {
    api.seed(&Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(name)),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels(name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(name)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(format!("ghcr.io/example/{name}:1.0")),
                        env_from: Some(vec![EnvFromSource {
                            secret_ref: Some(SecretEnvSource {
                                name: secret.into(),
                                optional: None,
                            }),
                            ..EnvFromSource::default()
                        }]),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    });
}

/// What a Secret holds now: (key id under `id_key`, secret under `secret_key`, annotations).
fn secret_in(
    api: &KubeApi,
    (namespace, name): (&str, &str),
    (id_key, secret_key): (&str, &str),
) -> (String, Redacted<String>, BTreeMap<String, String>) {
    let s: Secret = api.get(namespace, name).unwrap();
    let data = s.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    (
        text(id_key),
        Redacted::new(text(secret_key)),
        s.metadata.annotations.unwrap_or_default(),
    )
}

/// The shipped rotation playbook, as shipped, on three exposed keys of three users: two are
/// read from Secrets in two namespaces (spelled differently), one from nowhere Firebreak can
/// see. Each new key lands in its own key's Secret only and works as its own user, and the
/// Deployments reading each Secret are rolled; the key without a consumer is refused, the
/// security team is told, and nothing is written: no request reaches the cluster, no key is
/// created, no quarantine policy is put, the deletion never runs.
#[tokio::test]
async fn the_rotation_playbook_delivers_each_key_to_its_own_secret_only_and_refuses_and_alerts_without_one()
 {
    let aws = moto::aws().await;
    let api = KubeApi::start().await;
    let payments = ("payments", "aws-credentials");
    let upper = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY");
    let reports = ("reports", "s3-uploader");
    let lower = ("aws_access_key_id", "aws_secret_access_key");
    let (user_a, user_b, user_c) = (unique("svc-pay"), unique("svc-rep"), unique("laptop"));
    let (old_a, secret_a) = user_with_key(&aws, &user_a).await;
    let (old_b, secret_b) = user_with_key(&aws, &user_b).await;
    let (old_c, _) = user_with_key(&aws, &user_c).await;
    seed_secret(&api, payments, upper, &old_a, &secret_a);
    seed_secret(&api, reports, lower, &old_b, &secret_b);
    seed_reader(&api, payments.0, "billing", payments.1);
    seed_reader(&api, reports.0, "uploader", reports.1);
    let rx = Receiver::start().await;
    let mut ctx = kube_ctx(&aws, &api);
    ctx.webhooks = Arc::new(BTreeMap::from([(
        "security".to_owned(),
        WebhookEndpoint {
            url: Redacted::new(rx.url("/security")),
        },
    )]));
    let pbs = playbook_set(
        "rotate-exposed-aws-key.yaml",
        &shipped("rotate-exposed-aws-key.yaml"),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("ledger.db")).await);
    let w = engine(&store, pbs, ctx);
    for (user, key) in [(&user_a, &old_a), (&user_b, &old_b)] {
        record(&store, trufflehog_finding(user, key)).await;
    }
    drain(&w).await;

    for (user, old, secret, spelling, reader) in [
        (&user_a, &old_a, payments, upper, "billing"),
        (&user_b, &old_b, reports, lower, "uploader"),
    ] {
        let (new, new_secret, annotations) = secret_in(&api, secret, spelling);
        let after = keys(&aws, user).await;
        assert_eq!(after.len(), 2, "{user}: {after:?}");
        assert_eq!(after[old], "Inactive", "{user}");
        assert_eq!(
            after.get(&new).map(String::as_str),
            Some("Active"),
            "{secret:?} holds the new key of {user}, its own key's user"
        );
        assert!(
            caller(moto::endpoint(), &new, &new_secret)
                .await
                .ends_with(&format!("/{user}"))
        );
        assert_eq!(
            annotations.get("firebreak.io/rotated-from"),
            Some(old),
            "{secret:?}"
        );
        let d: Deployment = api.get(secret.0, reader).unwrap();
        let rolled = d.spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(rolled.get("firebreak.io/rotated-key"), Some(&new));
        assert_eq!(quarantine_sids(&aws, user).await, [REVOKE]);
    }
    assert_eq!(rx.requests().len(), 2, "the security team is told of each");

    // The key no Secret holds.
    let writes = api.writes();
    let finding = trufflehog_finding(&user_c, &old_c);
    let finding_id = finding.id.to_string();
    record(&store, finding).await;
    drain(&w).await;
    assert_eq!(api.writes(), writes, "nothing was written to the cluster");
    assert_eq!(
        keys(&aws, &user_c).await,
        BTreeMap::from([(old_c.clone(), "Active".to_owned())]),
        "no key was created, the exposed key is untouched"
    );
    assert_eq!(inline_policy(&aws, &user_c).await, None, "no quarantine");
    assert_eq!(rx.requests().len(), 3, "the security team is told");
    let rows = store.executions_of(&finding_id).await.unwrap();
    let steps = &rows[0].steps;
    let statuses: Vec<&str> = steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(statuses[..3], ["failed", "applied", "failed"], "{steps:#?}");
    assert!(
        steps[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("no consumer of access key {old_c} was found"))),
        "{steps:#?}"
    );
    assert!(
        steps[2]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("still Active")),
        "{steps:#?}"
    );
    assert!(
        steps.len() == 3 || steps[3].status != "applied" && steps[3].status != "scheduled",
        "the deletion never runs: {steps:#?}"
    );
    assert_eq!(
        secret_in(&api, payments, upper).0,
        keys(&aws, &user_a)
            .await
            .into_iter()
            .find(|(_, s)| s == "Active")
            .unwrap()
            .0,
        "the other Secrets are as the rotations left them"
    );
}

/// A rotation interrupted between its two consumers: it had created the new key (its baseline
/// tag still on the user) and written it to the first Secret (annotated as moved off the old
/// key), not yet to the second. The next attempt still sees both Secrets as the key's
/// consumers, carries on with the key already delivered (no key is created), writes the second
/// Secret and deactivates the old key.
#[tokio::test]
async fn a_rotation_interrupted_between_two_secrets_carries_on_with_the_delivered_key() {
    let aws = moto::aws().await;
    let api = KubeApi::start().await;
    let user = unique("two-secrets");
    let (old, old_secret) = user_with_key(&aws, &user).await;
    let first = ("payments", "aws-credentials");
    let second = ("reports", "aws-credentials");
    let upper = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY");
    // What the interrupted attempt left: its baseline tag, a new key, the first Secret moved.
    let tag = aws_sdk_iam::types::Tag::builder()
        .key(format!("firebreak.io/rotation/{old}"))
        .value(old.clone())
        .build()
        .unwrap();
    aws.iam()
        .tag_user()
        .user_name(&user)
        .tags(tag)
        .send()
        .await
        .unwrap();
    let created = aws
        .iam()
        .create_access_key()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    let created = created.access_key().unwrap();
    let (new, new_secret) = (
        created.access_key_id().to_owned(),
        Redacted::new(created.secret_access_key().to_owned()),
    );
    seed_secret(&api, first, upper, &new, &new_secret);
    let mut moved: Secret = api.get(first.0, first.1).unwrap();
    moved.metadata.annotations = Some(BTreeMap::from([(
        "firebreak.io/rotated-from".to_owned(),
        old.clone(),
    )]));
    api.seed(&moved);
    seed_secret(&api, second, upper, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);
    let set = playbook(
        "aws.iam.rotate-access-key",
        "{deliver: {kubernetes_secret: {}}}",
    );

    let plan = step(&set, &ctx, &trufflehog_finding(&user, &old), true)
        .await
        .plan
        .unwrap();
    assert!(
        plan.summary
            .contains(&format!("carry on with the already delivered key {new}")),
        "{}",
        plan.summary
    );
    let applied = step(&set, &ctx, &trufflehog_finding(&user, &old), false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    assert_eq!(applied.outcome.unwrap().detail["created"], false);
    let after = keys(&aws, &user).await;
    assert_eq!(after.len(), 2, "no key created: {after:?}");
    assert_eq!(after[&old], "Inactive");
    assert_eq!(after[&new], "Active");
    for secret in [first, second] {
        let (id, held_secret, annotations) = secret_in(&api, secret, upper);
        assert_eq!(id, new, "{secret:?}");
        assert_eq!(held_secret.expose(), new_secret.expose(), "{secret:?}");
        assert_eq!(annotations.get("firebreak.io/rotated-from"), Some(&old));
    }
    let tags = aws
        .iam()
        .list_user_tags()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    assert!(tags.tags().is_empty(), "the baseline tag is removed");
}

/// A playbook that names a fixed Secret (the shipped playbook once did): a key that Secret
/// does not hold is never written there; the rotation refuses, saying so, and writes nothing.
/// The key it does hold is rotated into it.
#[tokio::test]
async fn a_fixed_secret_is_a_constraint_never_a_destination_for_another_key() {
    let aws = moto::aws().await;
    let api = KubeApi::start().await;
    let (mine, theirs) = (unique("svc-billing"), unique("svc-other"));
    let (old, old_secret) = user_with_key(&aws, &mine).await;
    let (other, _) = user_with_key(&aws, &theirs).await;
    seed_consumers(&api, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);
    let set = playbook("aws.iam.rotate-access-key", &rotate_with());

    let writes = api.writes();
    let refused = step(&set, &ctx, &trufflehog_finding(&theirs, &other), false).await;
    assert_eq!(refused.status, StepStatus::Failed, "{refused:#?}");
    let error = refused.error.unwrap();
    assert!(
        error.contains(&format!("none of Secret {NS}/{SECRET}")),
        "{error}"
    );
    assert_eq!(api.writes(), writes, "nothing written to the cluster");
    assert_eq!(held(&api).0, old, "the Secret still holds its own key");
    assert_eq!(keys(&aws, &theirs).await.len(), 1, "no key created");

    let applied = step(&set, &ctx, &trufflehog_finding(&mine, &old), false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let (new, _) = held(&api);
    assert_eq!(keys(&aws, &mine).await[&new], "Active");
}

/// The real Trivy Operator ExposedSecretReport (a secret in the image of a workload in
/// namespace `default`), derived for an AWS key id: only the secret's `ruleID` and `match`
/// change (the sample's is a masked secret access key, which names no key id). The Secret that
/// holds the key is found (in `default`, and any other namespace: a Secret left with the old
/// key would stop working); a playbook that may only deliver to another namespace is refused,
/// as the workload where the key was found would be left behind.
#[tokio::test]
async fn a_key_found_in_a_workload_is_delivered_to_the_secrets_that_hold_it_and_never_narrowed_away()
 {
    let aws = moto::aws().await;
    let api = KubeApi::start().await;
    let user = unique("svc-nginx");
    let (old, old_secret) = user_with_key(&aws, &user).await;
    let mut report: Value =
        serde_json::from_slice(&fixtures::bytes("trivy-operator/exposedsecretreport.json"))
            .unwrap();
    report["report"]["secrets"][0]["ruleID"] = json!("aws-access-key-id");
    report["report"]["secrets"][0]["match"] = json!(format!("AWS_ACCESS_KEY_ID=\"{old}\""));
    let finding = parse("exposedsecretreport.json", report.to_string().as_bytes()).remove(0);
    assert!(
        finding.resources.iter().any(|r| matches!(r,
            firebreak::finding::ResourceRef::Kubernetes { namespace: Some(ns), .. } if ns == "default")),
        "{:?}",
        finding.resources
    );
    let in_default = ("default", "nginx-aws");
    let elsewhere = ("batch", "nightly-aws");
    let upper = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY");
    seed_secret(&api, in_default, upper, &old, &old_secret);
    seed_secret(&api, elsewhere, upper, &old, &old_secret);
    let ctx = kube_ctx(&aws, &api);

    let narrowed = playbook(
        "aws.iam.rotate-access-key",
        "{deliver: {kubernetes_secret: {namespace: batch}}}",
    );
    let writes = api.writes();
    let refused = step(&narrowed, &ctx, &finding, false).await;
    assert_eq!(refused.status, StepStatus::Failed, "{refused:#?}");
    let error = refused.error.unwrap();
    assert!(
        error.contains("found the key in ReplicaSet default/nginx-deployment-c868466d4"),
        "{error}"
    );
    assert_eq!(api.writes(), writes);
    assert_eq!(keys(&aws, &user).await.len(), 1);

    let set = playbook(
        "aws.iam.rotate-access-key",
        "{deliver: {kubernetes_secret: {}}}",
    );
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let (new, _, _) = secret_in(&api, in_default, upper);
    assert_ne!(new, old);
    assert_eq!(secret_in(&api, elsewhere, upper).0, new);
    assert_eq!(keys(&aws, &user).await[&new], "Active");
}

/// The contain playbook asks for approval: nothing happens until a person approves; then the
/// user is quarantined (deny-all) and the key GuardDuty saw is deactivated.
#[tokio::test]
async fn the_contain_playbook_waits_for_approval_then_quarantines_and_deactivates() {
    let aws = moto::aws().await;
    let user = unique("tor-user");
    let (key_id, _) = user_with_key(&aws, &user).await;
    let pbs = playbook_set(
        "contain-compromised-iam-user.yaml",
        &shipped("contain-compromised-iam-user.yaml"),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("ledger.db")).await);
    record(&store, guardduty_finding(&user, &key_id)).await;
    let w = engine(&store, pbs, ctx(&aws));
    drain(&w).await;
    assert_eq!(
        inline_policy(&aws, &user).await,
        None,
        "nothing before approval"
    );
    assert_eq!(keys(&aws, &user).await[&key_id], "Active");
    let pending = store.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 1);
    crate::support::approvals::approve_plan(&*store, &pending[0].execution_id).await;
    drain(&w).await;
    let policy = inline_policy(&aws, &user).await.unwrap();
    assert_eq!(policy["Statement"][0]["Sid"], "FirebreakQuarantineDenyAll");
    assert!(policy["Statement"][0].get("Condition").is_none());
    assert_eq!(keys(&aws, &user).await[&key_id], "Inactive");
}

// ---------------------------------------------------------------------------------------------
// Least privilege: the same scenarios signed by a principal that holds exactly the permissions
// the IAM actions declare, on a moto server that enforces IAM.

/// An IAM-enforcing moto with an admin (the observer) and a `firebreak` user whose only policy
/// allows what the `aws.iam.*` actions declare; returns the server and both configurations.
async fn least_privilege() -> (moto::Moto, Aws, Aws) {
    let (server, admin) = moto::enforcing().await;

    let mut grants: Vec<String> = firebreak::action::ACTIONS
        .iter()
        .filter(|a| a.kind().starts_with("aws.iam."))
        .flat_map(|a| a.permissions())
        .filter(|p| p.system == "aws")
        .map(|p| p.grant.to_string())
        .collect();
    grants.sort();
    grants.dedup();
    admin
        .iam()
        .create_user()
        .user_name("firebreak")
        .send()
        .await
        .unwrap();
    admin
        .iam()
        .put_user_policy()
        .user_name("firebreak")
        .policy_name("declared")
        .policy_document(
            json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": grants, "Resource": "*"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let k = admin
        .iam()
        .create_access_key()
        .user_name("firebreak")
        .send()
        .await
        .unwrap();
    let k = k.access_key().unwrap();
    let firebreak = moto::aws_at(&server.endpoint, k.access_key_id(), k.secret_access_key()).await;
    // The principal really is limited: it cannot create users.
    assert!(
        firebreak
            .iam()
            .create_user()
            .user_name("nope")
            .send()
            .await
            .is_err()
    );
    (server, admin, firebreak)
}

#[tokio::test]
async fn the_iam_actions_work_with_exactly_the_permissions_they_declare() {
    let (server, admin, firebreak) = least_privilege().await;
    deactivate_scenario(firebreak.clone(), &admin).await;
    delete_scenario(firebreak.clone(), &admin).await;
    quarantine_revoke_sessions_scenario(firebreak.clone(), &admin).await;
    rotate_scenario(firebreak.clone(), &admin, &server.endpoint).await;
    rotation_through_the_engine(firebreak.clone(), &admin, &server.endpoint).await;
}

/// The plans of every `aws.iam.*` action as `firebreak run --dry-run` prints them (text and
/// `--format json`), with the key's secret held by the Kubernetes Secret and the Secrets
/// Manager secret the rotation reads: the secret is never printed, and the dry-run changes
/// nothing in IAM, Secrets Manager or the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_dry_run_renders_every_iam_plan_without_the_secret_and_changes_nothing() {
    let aws = moto::aws().await;
    let user = unique("cli");
    let (key_id, secret) = user_with_key(&aws, &user).await;
    let retired = unique("cli-retired");
    let (retired_key, _) = user_with_key(&aws, &retired).await;
    aws.iam()
        .update_access_key()
        .user_name(&retired)
        .access_key_id(&retired_key)
        .status(StatusType::Inactive)
        .send()
        .await
        .unwrap();
    let secret_id = format!("{user}/aws-credentials");
    aws.secretsmanager()
        .create_secret()
        .name(&secret_id)
        .secret_string(
            json!({"AccessKeyId": key_id, "SecretAccessKey": secret.expose()}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let api = KubeApi::start().await;
    seed_consumers(&api, &key_id, &secret);
    let before = (keys(&aws, &user).await, keys(&aws, &retired).await);

    let dir = tempfile::tempdir().unwrap();
    let finding_file = |name: &str, user: &str, key: &str| {
        let text = String::from_utf8(fixtures::bytes(TRUFFLEHOG_AWS)).unwrap();
        let mut v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        // As in `trufflehog_finding`: only the key id, account and user are moto's.
        v["Redacted"] = json!(key);
        v["Raw"] = serde_json::to_value(ByteString(key.as_bytes().to_vec())).unwrap();
        v["ExtraData"]["account"] = json!(ACCOUNT);
        v["ExtraData"]["arn"] = json!(format!("arn:aws:iam::{ACCOUNT}:user/{user}"));
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{v}\n")).unwrap();
        path.display().to_string()
    };
    let active = finding_file("active.jsonl", &user, &key_id);
    let inactive = finding_file("inactive.jsonl", &retired, &retired_key);
    let cases = [
        ("aws.iam.deactivate-access-key", "{}".to_owned(), &active),
        (
            "aws.iam.rotate-access-key",
            format!(
                "{{deliver: {{kubernetes_secret: {{namespace: {NS}, name: {SECRET}}}, secrets_manager: {{secret_id: {secret_id}}}}}}}"
            ),
            &active,
        ),
        ("aws.iam.delete-access-key", "{}".to_owned(), &inactive),
        (
            "aws.iam.quarantine-user",
            "{mode: deny-all}".to_owned(),
            &active,
        ),
    ];
    let kinds: Vec<&str> = firebreak::action::ACTIONS
        .iter()
        .map(|a| a.kind())
        .filter(|k| k.starts_with("aws.iam."))
        .collect();
    assert_eq!(kinds.len(), cases.len(), "every aws.iam action has a case");
    for (kind, with, finding) in &cases {
        let pdir = dir.path().join(kind);
        std::fs::create_dir_all(&pdir).unwrap();
        std::fs::write(
            pdir.join("p.yaml"),
            format!("name: conformance\nmatch: {{class: [credential-exposure]}}\nsteps:\n  - action: {kind}\n    with: {with}\n"),
        )
        .unwrap();
        for format in ["table", "json"] {
            let args: Vec<String> = [
                "run",
                "--dry-run",
                "--no-store",
                "--format",
                format,
                "--playbooks",
                &pdir.display().to_string(),
                "--finding",
                finding,
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let base = api.base.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
                    .args(&args)
                    .env_clear()
                    .env("FIREBREAK_KUBERNETES__URL", base)
                    .env("FIREBREAK_AWS__REGION", "us-east-1")
                    .env("FIREBREAK_AWS__ENDPOINT_URL", moto::endpoint())
                    .env("AWS_ACCESS_KEY_ID", "testing")
                    .env("AWS_SECRET_ACCESS_KEY", "testing")
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{kind} {format}: {stdout}\n{stderr}");
            assert!(stdout.contains(kind), "{kind} {format}: no plan: {stdout}");
            assert!(
                !stdout.contains("NOT CONNECTED"),
                "{kind} {format}: the dry-run did not reach moto and the emulator: {stdout}"
            );
            for shown in [&stdout, &stderr] {
                assert_no_secret(&format!("{kind} {format}"), shown, &secret);
            }
        }
    }
    assert_eq!(api.writes(), 0, "the dry-runs wrote to the cluster");
    assert_eq!(
        (keys(&aws, &user).await, keys(&aws, &retired).await),
        before,
        "the dry-runs changed IAM"
    );
    assert_eq!(inline_policy(&aws, &user).await, None);
    let stored = aws
        .secretsmanager()
        .get_secret_value()
        .secret_id(&secret_id)
        .send()
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();
    assert_eq!(stored["AccessKeyId"], json!(key_id));
}

/// A console sign-in GuardDuty reported through Security Hub names the user and no access key:
/// the contain playbook quarantines the user, says the key step does not apply, and still
/// notifies.
#[tokio::test]
async fn the_contain_playbook_on_a_console_login_quarantines_and_still_notifies() {
    let aws = moto::aws().await;
    let user = unique("console");
    aws.iam()
        .create_user()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    // The real Security Hub event with only the account and the user replaced by moto's.
    let text = String::from_utf8(fixtures::bytes(
        "securityhub/eventbridge-custom-action-guardduty-iam-consolelogin.json",
    ))
    .unwrap()
    .replace("644160558196", ACCOUNT)
    .replace(
        "\"UserName\": \"kapil\"",
        &format!("\"UserName\": \"{user}\""),
    );
    let mut findings = parse("securityhub.json", text.as_bytes());
    assert_eq!(findings.len(), 1);
    let finding = findings.remove(0);
    let rx = Receiver::start().await;
    let mut ctx = ctx(&aws);
    ctx.webhooks = Arc::new(BTreeMap::from([(
        "security".to_owned(),
        WebhookEndpoint {
            url: Redacted::new(rx.url("/security")),
        },
    )]));
    let pbs = playbook_set(
        "contain-compromised-iam-user.yaml",
        &shipped("contain-compromised-iam-user.yaml"),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("ledger.db")).await);
    let finding_id = finding.id.to_string();
    record(&store, finding).await;
    let w = engine(&store, pbs, ctx);
    drain(&w).await;
    let pending = store.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 1, "approval is required");
    crate::support::approvals::approve_plan(&*store, &pending[0].execution_id).await;
    drain(&w).await;
    let policy = inline_policy(&aws, &user).await.unwrap();
    assert_eq!(policy["Statement"][0]["Sid"], "FirebreakQuarantineDenyAll");
    let rows = store.executions_of(&finding_id).await.unwrap();
    let steps = &rows[0].steps;
    assert_eq!(steps[0].status, "applied");
    assert_eq!(steps[1].status, "failed");
    assert!(
        steps[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("names no AWS access key")),
        "{steps:#?}"
    );
    assert_eq!(steps[2].status, "applied", "{steps:#?}");
    assert_eq!(rx.requests().len(), 1, "the security team is told");
}

/// The Secret Firebreak moved off the exposed key (its `firebreak.io/rotated-from`
/// annotation) holds another key of the user whose secret is wrong (a hand edit gone bad): the
/// rotation does not carry on with it, does not delete it and creates nothing; it says what to
/// fix. Needs IAM enforcement: only then does a wrong secret fail to authenticate.
#[tokio::test]
async fn rotation_refuses_to_carry_on_with_a_delivered_key_that_does_not_work() {
    let (server, admin, firebreak) = least_privilege().await;
    let user = unique("broken");
    let (old, _) = user_with_key(&admin, &user).await;
    let other = admin
        .iam()
        .create_access_key()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    let other = other.access_key().unwrap().access_key_id().to_owned();
    let api = KubeApi::start().await;
    let wrong = Redacted::new(["not", "the", "right", "secret"].join("-"));
    seed_consumers(&api, &other, &wrong);
    let mut moved: Secret = api.get(NS, SECRET).unwrap();
    moved.metadata.annotations = Some(BTreeMap::from([(
        "firebreak.io/rotated-from".to_owned(),
        old.clone(),
    )]));
    api.seed(&moved);
    let ctx = kube_ctx(&firebreak, &api);
    let set = playbook("aws.iam.rotate-access-key", &rotate_with());
    let report = step(&set, &ctx, &trufflehog_finding(&user, &old), false).await;
    assert_eq!(report.status, StepStatus::Failed, "{report:#?}");
    let error = report.error.unwrap();
    assert!(
        error.contains(&format!("holds access key {other}")),
        "{error}"
    );
    assert!(error.contains("does not work"), "{error}");
    assert_no_secret("the error", &error, &wrong);
    let after = keys(&admin, &user).await;
    assert_eq!(after.len(), 2, "nothing created or deleted: {after:?}");
    assert_eq!(after[&old], "Active", "the old key keeps working");
    assert_eq!(after[&other], "Active");
    drop(server);
}

/// An account listed in `aws.accounts` is acted on through its role: deactivating (and rolling
/// back) the key assumes the role, and the change lands.
#[tokio::test]
async fn the_iam_actions_act_through_the_role_of_a_configured_account() {
    let observer = moto::aws().await;
    let role = format!("firebreak-{}", ulid::Ulid::new());
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}, "Action": "sts:AssumeRole"}]});
    let role_arn = observer
        .iam()
        .create_role()
        .role_name(&role)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .arn()
        .to_owned();
    let counter = Arc::new(Throttle::new("AssumeRole", 0));
    let proxy = AwsProxy::start(moto::endpoint(), counter.clone()).await;
    let cfg = firebreak::config::AwsConfig {
        region: "us-east-1".to_owned(),
        endpoint_url: proxy.endpoint.clone(),
        accounts: BTreeMap::from([(
            ACCOUNT.to_owned(),
            firebreak::config::AwsAccountConfig {
                role_arn,
                ..firebreak::config::AwsAccountConfig::default()
            },
        )]),
        ..firebreak::config::AwsConfig::default()
    };
    let aws = Aws::with_credentials(
        &cfg,
        aws_credential_types::Credentials::new("testing", "testing", None, None, "moto-test"),
    )
    .await;
    deactivate_scenario(aws, &observer).await;
    assert!(
        counter.forwarded() >= 1,
        "the role was assumed: {:?}",
        proxy.seen()
    );
}

/// Deactivating many exposed keys through the engine costs one read and one write per key: the
/// account is asked once for the credentials (not twice per key), and apply trusts the plan
/// made right before it instead of reading the key again.
#[tokio::test]
async fn deactivating_many_keys_costs_a_read_and_a_write_per_key_and_one_account_check() {
    let aws = moto::aws().await;
    let (proxy, through) = recorded(moto::endpoint()).await;
    let ctx = ctx(&through);
    let set = playbook("aws.iam.deactivate-access-key", "{}");
    let mut findings = Vec::new();
    let mut exposed = Vec::new();
    for i in 0..10 {
        let user = unique(&format!("many-{i}"));
        let (key_id, _) = user_with_key(&aws, &user).await;
        findings.push(trufflehog_finding(&user, &key_id));
        exposed.push((user, key_id));
    }
    let before = proxy.seen().len();
    let report = run(
        &set,
        &ctx,
        &findings,
        &RunOptions {
            retry_base: Duration::from_millis(1),
            ..RunOptions::default()
        },
        &|| {},
    )
    .await
    .unwrap();
    assert!(!report.any_failed(), "{report:#?}");
    for (user, key_id) in &exposed {
        assert_eq!(keys(&aws, user).await[key_id], "Inactive");
    }
    let ops: Vec<String> = proxy.seen()[before..].to_vec();
    let count = |op: &str| ops.iter().filter(|o| o.ends_with(op)).count();
    assert_eq!(count("GetCallerIdentity"), 1, "{ops:#?}");
    assert_eq!(count("ListAccessKeys"), 10, "{ops:#?}");
    assert_eq!(count("UpdateAccessKey"), 10, "{ops:#?}");
    assert_eq!(ops.len(), 21, "{ops:#?}");
}
