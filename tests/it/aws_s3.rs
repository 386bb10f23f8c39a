//! `aws.s3.block-public-access` against moto, from real Security Hub and Prowler findings
//! through a playbook and the engine: a plan writes nothing and shows what it removes, apply
//! closes the bucket, a second apply is a no-op, rollback reopens it as it was; state is read
//! back through the SDK.

use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::types::{
    AccessControlPolicy, Grant, Grantee, Permission as S3Permission, Type as GranteeType,
};
use firebreak::action::{ActionCtx, ActionError, StepInput, action};
use firebreak::clients::aws::Aws;
use firebreak::config::Config;
use firebreak::engine::{RunOptions, StepReport, StepStatus, run_in_memory as run};
use firebreak::finding::{Finding, ParserChoice, parse_input};
use firebreak::playbook::{PlaybookSet, load_str};
use serde_json::{Value, json};

use crate::fixtures;
use crate::support::aws_proxy::{AwsProxy, BucketOwners, ProxyRequest, Throttle};
use crate::support::moto;

/// Security Hub FSBP S3.8 (bucket-level Block Public Access off), FAILED, bucket `example`.
pub const SH_S3_8: &str = "securityhub/asff-afsbp-s3-8-bucket-block-public-access.json";
/// Prowler 3.3 ASFF output: two IAM and three S3 Block Public Access results.
pub const PROWLER_ASFF: &str =
    "prowler/prowler-3.3.0-asff-iam-rotate-and-s3-public-access-block.json";

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

/// A bucket name no other test uses.
pub fn bucket_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

/// moto's account (the account of every request signed with moto's test credentials).
pub const MOTO_ACCOUNT: &str = "123456789012";

/// The ASFF record of the real S3.8 fixture, derived for `bucket` in moto's account: only the
/// resource (its ARN and `ProductFields["Resources:0/Id"]`) and `AwsAccountId` change (the
/// sample's account is 111111111111; the actions refuse a finding about another account than
/// the one they act in), so the finding names a bucket of this test.
pub fn s3_8_record(bucket: &str) -> Value {
    s3_8_record_in(MOTO_ACCOUNT, bucket)
}

/// [`s3_8_record`] with the finding about `account`.
pub fn s3_8_record_in(account: &str, bucket: &str) -> Value {
    let mut v: Value = serde_json::from_slice(&fixtures::bytes(SH_S3_8)).unwrap();
    let arn = format!("arn:aws:s3:::{bucket}");
    v["Resources"][0]["Id"] = json!(arn);
    v["ProductFields"]["Resources:0/Id"] = json!(arn);
    v["AwsAccountId"] = json!(account);
    v
}

/// Parses one ASFF record (as the `securityhub` parser would from a scanner).
pub fn parse_one(record: &Value) -> Finding {
    let bytes = serde_json::to_vec(record).unwrap();
    let mut report = parse_input("test", &bytes, ParserChoice::Auto);
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.findings.len(), 1, "{report:?}");
    report.findings.remove(0)
}

pub fn ctx(aws: Aws) -> ActionCtx {
    ActionCtx::from_config(&Config::default())
        .unwrap()
        .with_aws(aws)
}

fn playbooks(yaml_steps: &str) -> Arc<PlaybookSet> {
    let yaml = format!("name: lock\nmatch: {{class: [public-storage]}}\nsteps:\n{yaml_steps}");
    let (pb, _) = load_str(Path::new("lock.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:#?}"));
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
        retry_base: std::time::Duration::from_millis(1),
        ..RunOptions::default()
    };
    let report = run(set, ctx, std::slice::from_ref(finding), &opts, &|| {})
        .await
        .unwrap();
    assert_eq!(report.executions.len(), 1, "{report:#?}");
    report.executions[0].steps[0].clone()
}

/// A bucket open to the public three ways, plus grants and statements that must stay.
pub async fn seed_public_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> String {
    s3.create_bucket().bucket(bucket).send().await.unwrap();
    let acl = s3.get_bucket_acl().bucket(bucket).send().await.unwrap();
    let owner = acl.owner().unwrap().clone();
    let owner_id = owner.id().unwrap().to_owned();
    let grant = |t: GranteeType, id: Option<&str>, uri: Option<&str>, p: S3Permission| {
        Grant::builder()
            .grantee(
                Grantee::builder()
                    .r#type(t)
                    .set_id(id.map(str::to_owned))
                    .set_uri(uri.map(str::to_owned))
                    .build()
                    .unwrap(),
            )
            .permission(p)
            .build()
    };
    let policy = AccessControlPolicy::builder()
        .owner(owner)
        .grants(grant(
            GranteeType::CanonicalUser,
            Some(&owner_id),
            None,
            S3Permission::FullControl,
        ))
        .grants(grant(
            GranteeType::Group,
            None,
            Some(ALL_USERS),
            S3Permission::Read,
        ))
        .grants(grant(
            GranteeType::Group,
            None,
            Some(AUTHENTICATED_USERS),
            S3Permission::Write,
        ))
        .grants(grant(
            GranteeType::Group,
            None,
            Some("http://acs.amazonaws.com/groups/s3/LogDelivery"),
            S3Permission::Write,
        ))
        .build();
    s3.put_bucket_acl()
        .bucket(bucket)
        .access_control_policy(policy)
        .send()
        .await
        .unwrap();
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
             "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")},
            {"Sid": "VpceOnly", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*"),
             "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}}},
            {"Sid": "AccountList", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
             "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}
        ]
    });
    s3.put_bucket_policy()
        .bucket(bucket)
        .policy(policy.to_string())
        .send()
        .await
        .unwrap();
    owner_id
}

/// The Public Access Block as (acls, ignore, policy, restrict); `None` when the bucket has none.
pub async fn pab(s3: &aws_sdk_s3::Client, bucket: &str) -> Option<[bool; 4]> {
    match s3.get_public_access_block().bucket(bucket).send().await {
        Ok(out) => {
            let c = out.public_access_block_configuration().unwrap();
            Some([
                c.block_public_acls().unwrap_or(false),
                c.ignore_public_acls().unwrap_or(false),
                c.block_public_policy().unwrap_or(false),
                c.restrict_public_buckets().unwrap_or(false),
            ])
        }
        Err(e) => {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
            assert_eq!(
                code.as_deref(),
                Some("NoSuchPublicAccessBlockConfiguration"),
                "{e:?}"
            );
            None
        }
    }
}

/// The grants as `(grantee uri or id, permission)`, sorted.
pub async fn grants(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<(String, String)> {
    let acl = s3.get_bucket_acl().bucket(bucket).send().await.unwrap();
    let mut out: Vec<(String, String)> = acl
        .grants()
        .iter()
        .map(|g| {
            let who = g.grantee().unwrap();
            (
                who.uri().or(who.id()).unwrap_or_default().to_owned(),
                g.permission().unwrap().as_str().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The Sids of the bucket policy's statements; `None` when it has no policy.
pub async fn policy_sids(s3: &aws_sdk_s3::Client, bucket: &str) -> Option<Vec<String>> {
    match s3.get_bucket_policy().bucket(bucket).send().await {
        Ok(out) => {
            let p: Value = serde_json::from_str(out.policy().unwrap()).unwrap();
            let mut sids: Vec<String> = p["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["Sid"].as_str().unwrap_or("").to_owned())
                .collect();
            sids.sort();
            Some(sids)
        }
        Err(e) => {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
            assert_eq!(code.as_deref(), Some("NoSuchBucketPolicy"), "{e:?}");
            None
        }
    }
}

fn public(grants: &[(String, String)]) -> Vec<&(String, String)> {
    grants
        .iter()
        .filter(|(who, _)| who == ALL_USERS || who == AUTHENTICATED_USERS)
        .collect()
}

#[tokio::test]
async fn block_public_access_closes_a_public_bucket_and_rollback_reopens_it() {
    // A secret built at run time: it must appear in no plan or outcome.
    let secret = format!("s3cr3t{}", ulid::Ulid::new());
    let aws = moto::aws_at(moto::endpoint(), "AKIAFIREBREAKTEST", &secret).await;
    let s3 = aws.s3();
    let bucket = bucket_name("fb-public");
    let owner_id = seed_public_bucket(&s3, &bucket).await;
    let before = grants(&s3, &bucket).await;
    assert_eq!(public(&before).len(), 2, "{before:?}");

    let ctx = ctx(aws.clone());
    let finding = parse_one(&s3_8_record(&bucket));
    let set = playbooks("  - action: aws.s3.block-public-access\n");

    let planned = step(&set, &ctx, &finding, true).await;
    assert_eq!(planned.status, StepStatus::Planned, "{planned:#?}");
    let plan = planned.plan.clone().unwrap();
    assert!(!plan.noop);
    assert!(
        plan.summary.contains("not in aws.accounts"),
        "{}",
        plan.summary
    );
    let deleted: Vec<&str> = plan
        .changes
        .iter()
        .filter(|c| c.op == "delete")
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(deleted.len(), 3, "{:#?}", plan.changes);
    assert!(
        deleted
            .iter()
            .any(|p| p.contains("Statement[0] (Sid PublicRead)")),
        "{deleted:?}"
    );
    let removed_statement = plan
        .changes
        .iter()
        .find(|c| c.path.contains("PublicRead"))
        .unwrap();
    assert_eq!(removed_statement.from.as_ref().unwrap()["Principal"], "*");
    assert!(
        plan.changes
            .iter()
            .any(|c| c.path.ends_with("?publicAccessBlock")
                && c.to.as_ref().unwrap()["block_public_policy"] == true)
    );
    // The plan wrote nothing.
    assert_eq!(pab(&s3, &bucket).await, None);
    assert_eq!(grants(&s3, &bucket).await, before);
    assert_eq!(policy_sids(&s3, &bucket).await.unwrap().len(), 3);

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.clone().unwrap();
    assert_eq!(outcome.result, "applied");
    assert_eq!(pab(&s3, &bucket).await, Some([true; 4]));
    let after = grants(&s3, &bucket).await;
    assert!(public(&after).is_empty(), "{after:?}");
    assert!(
        after.contains(&(owner_id.clone(), "FULL_CONTROL".to_owned())),
        "{after:?}"
    );
    assert!(
        after.iter().any(|(who, _)| who.ends_with("/LogDelivery")),
        "other grants stay: {after:?}"
    );
    assert_eq!(
        policy_sids(&s3, &bucket).await,
        Some(vec!["AccountList".to_owned(), "VpceOnly".to_owned()]),
        "the restricted and the account statements stay"
    );

    let second = step(&set, &ctx, &finding, false).await;
    assert_eq!(second.status, StepStatus::Applied, "{second:#?}");
    assert!(second.plan.as_ref().unwrap().noop);
    assert_eq!(second.outcome.as_ref().unwrap().result, "unchanged");

    for rendered in [
        serde_json::to_string(&planned).unwrap(),
        serde_json::to_string(&applied).unwrap(),
        serde_json::to_string(&second).unwrap(),
    ] {
        assert!(
            !rendered.contains(&secret),
            "a secret leaked into {rendered}"
        );
    }

    let block = action("aws.s3.block-public-access").unwrap();
    block.rollback(&ctx, &outcome).await.unwrap();
    assert_eq!(
        pab(&s3, &bucket).await,
        None,
        "the bucket had no block before"
    );
    assert_eq!(grants(&s3, &bucket).await, before);
    assert_eq!(
        policy_sids(&s3, &bucket).await,
        Some(vec![
            "AccountList".to_owned(),
            "PublicRead".to_owned(),
            "VpceOnly".to_owned()
        ])
    );
    block.rollback(&ctx, &outcome).await.unwrap();
    assert_eq!(grants(&s3, &bucket).await, before, "rollback is idempotent");
    assert_eq!(policy_sids(&s3, &bucket).await.unwrap().len(), 3);
}

#[tokio::test]
async fn block_public_access_deletes_a_policy_left_empty_and_restores_the_previous_block() {
    let aws = moto::aws().await;
    let s3 = aws.s3();
    // Prowler's real ASFF result for bucket `aws-logs-123456789012-eu-west-1` (FAILED), derived
    // for a bucket of this test: only the resource ARN (and its ProductFields copy) changes.
    let bucket = bucket_name("fb-prowler");
    let records: Vec<Value> = serde_json::from_slice(&fixtures::bytes(PROWLER_ASFF)).unwrap();
    let mut record = records
        .into_iter()
        .find(|r| {
            r["GeneratorId"] == "prowler-s3_bucket_level_public_access_block"
                && r["Compliance"]["Status"] == "FAILED"
        })
        .unwrap();
    let original = record["Resources"][0]["Id"].as_str().unwrap().to_owned();
    record["Resources"][0]["Id"] = json!(format!("arn:aws:s3:::{bucket}"));
    let text = record
        .to_string()
        .replace(original.trim_start_matches("arn:aws:s3:::"), &bucket);
    let finding = parse_one(&serde_json::from_str(&text).unwrap());

    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_public_access_block()
        .bucket(&bucket)
        .public_access_block_configuration(
            aws_sdk_s3::types::PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(false)
                .restrict_public_buckets(false)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let only_public = json!({"Version": "2012-10-17", "Statement": {
        "Sid": "Everyone", "Effect": "Allow", "Principal": {"AWS": "*"},
        "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")}});
    s3.put_bucket_policy()
        .bucket(&bucket)
        .policy(only_public.to_string())
        .send()
        .await
        .unwrap();

    let ctx = ctx(aws.clone());
    let set = playbooks("  - action: aws.s3.block-public-access\n");
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let plan = applied.plan.unwrap();
    assert!(
        plan.changes
            .iter()
            .any(|c| c.op == "delete" && c.path.ends_with("?policy"))
    );
    assert_eq!(
        policy_sids(&s3, &bucket).await,
        None,
        "nothing remained: deleted"
    );
    assert_eq!(pab(&s3, &bucket).await, Some([true; 4]));

    action("aws.s3.block-public-access")
        .unwrap()
        .rollback(&ctx, applied.outcome.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(pab(&s3, &bucket).await, Some([true, true, false, false]));
    assert_eq!(
        policy_sids(&s3, &bucket).await,
        Some(vec!["Everyone".to_owned()])
    );
}

#[tokio::test]
async fn block_public_access_apply_reports_drift_when_the_policy_changed_after_the_plan() {
    let aws = moto::aws().await;
    let s3 = aws.s3();
    let bucket = bucket_name("fb-drift");
    seed_public_bucket(&s3, &bucket).await;
    let ctx = ctx(aws.clone());
    let finding = parse_one(&s3_8_record(&bucket));
    let block = action("aws.s3.block-public-access").unwrap();
    let params = json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "lock",
        step: 0,
        params: &params,
        execution: None,
    };
    let plan = block.plan(&ctx, input).await.unwrap();
    s3.delete_bucket_policy()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let err = block.apply(&ctx, input, &plan).await.unwrap_err();
    assert!(matches!(err, ActionError::Drift(_)), "{err:?}");
    assert_eq!(pab(&s3, &bucket).await, None, "nothing was changed");
    assert_eq!(public(&grants(&s3, &bucket).await).len(), 2);
}

#[tokio::test]
async fn without_aws_block_public_access_is_planned_only_not_failed() {
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let finding = parse_one(&s3_8_record("example"));
    let set = playbooks("  - action: aws.s3.block-public-access\n");
    let plan = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert!(plan.summary.contains("NOT CONNECTED"), "{}", plan.summary);
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::PlannedOnly, "{applied:#?}");
    assert!(applied.error.is_none(), "{applied:#?}");
}

#[test]
fn the_committed_iam_policy_is_what_the_actions_declare() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/iam-policy.json");
    let committed = std::fs::read_to_string(path).expect("deploy/iam-policy.json");
    assert_eq!(
        committed,
        firebreak::action::iam_policy::aws_iam_policy(),
        "deploy/iam-policy.json is stale: run `firebreak actions iam-policy > deploy/iam-policy.json`"
    );
}

#[tokio::test]
async fn block_public_access_retried_after_an_interrupted_apply_finishes_and_keeps_the_undo() {
    let aws = moto::aws().await;
    let s3 = aws.s3();
    let bucket = bucket_name("fb-retry");
    seed_public_bucket(&s3, &bucket).await;
    let before = grants(&s3, &bucket).await;
    let ctx = ctx(aws.clone());
    let finding = parse_one(&s3_8_record(&bucket));
    let block = action("aws.s3.block-public-access").unwrap();
    let params = json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "lock",
        step: 0,
        params: &params,
        execution: None,
    };
    let plan = block.plan(&ctx, input).await.unwrap();
    // The first attempt wrote the ACL without the public grants (its first write) and died.
    let acl = s3.get_bucket_acl().bucket(&bucket).send().await.unwrap();
    let kept: Vec<Grant> = acl
        .grants()
        .iter()
        .filter(|g| {
            let uri = g.grantee().and_then(|w| w.uri()).unwrap_or_default();
            uri != ALL_USERS && uri != AUTHENTICATED_USERS
        })
        .cloned()
        .collect();
    s3.put_bucket_acl()
        .bucket(&bucket)
        .access_control_policy(
            AccessControlPolicy::builder()
                .owner(acl.owner().unwrap().clone())
                .set_grants(Some(kept))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let outcome = block.apply(&ctx, input, &plan).await.unwrap();
    assert_eq!(outcome.result, "applied");
    assert_eq!(pab(&s3, &bucket).await, Some([true; 4]));
    assert!(public(&grants(&s3, &bucket).await).is_empty());
    assert_eq!(outcome.detail["removed_statements"], 1, "{outcome:#?}");
    assert_eq!(
        outcome.detail["removed_grants"], 2,
        "the grants the first attempt removed are still recorded"
    );
    block.rollback(&ctx, &outcome).await.unwrap();
    assert_eq!(grants(&s3, &bucket).await, before);
    assert_eq!(policy_sids(&s3, &bucket).await.unwrap().len(), 3);
}

/// The S3 requests among `requests` (REST: no `Action` or `X-Amz-Target` names them).
fn s3_calls(requests: &[ProxyRequest]) -> Vec<&ProxyRequest> {
    requests.iter().filter(|r| r.operation.is_none()).collect()
}

/// Every S3 call of plan, apply and rollback, reads and writes alike, names the account the
/// credentials act in as the bucket's expected owner (`x-amz-expected-bucket-owner`, seen on
/// the wire by the proxy); STS is asked which account that is before the first S3 call, once
/// for these credentials, not once per phase. (moto does not check the header; the next test
/// shows what S3 does with it.)
#[tokio::test]
async fn every_s3_call_of_plan_apply_and_rollback_names_the_expected_bucket_owner() {
    let proxy = AwsProxy::start(moto::endpoint(), Arc::new(Throttle::new("none", 0))).await;
    let ctx = ctx(moto::aws_at(&proxy.endpoint, "testing", "testing").await);
    let bucket = bucket_name("fb-owner");
    seed_public_bucket(&moto::aws().await.s3(), &bucket).await;
    let finding = parse_one(&s3_8_record(&bucket));
    let block = action("aws.s3.block-public-access").unwrap();
    let params = json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "lock",
        step: 0,
        params: &params,
        execution: None,
    };
    let plan = block.plan(&ctx, input).await.unwrap();
    let planned = proxy.requests().len();
    let outcome = block.apply(&ctx, input, &plan).await.unwrap();
    let applied = proxy.requests().len();
    block.rollback(&ctx, &outcome).await.unwrap();
    let all = proxy.requests();
    assert_eq!(
        all.iter()
            .filter(|r| r.operation.as_deref() == Some("GetCallerIdentity"))
            .count(),
        1,
        "the account is asked once for these credentials"
    );
    for (phase, range, writes) in [
        ("plan", 0..planned, 0),
        ("apply", planned..applied, 3),
        ("rollback", applied..all.len(), 3),
    ] {
        let phase_requests = &all[range];
        if phase == "plan" {
            assert_eq!(
                phase_requests[0].operation.as_deref(),
                Some("GetCallerIdentity"),
                "{phase}: the account is checked first"
            );
        }
        let s3 = s3_calls(phase_requests);
        assert!(s3.len() >= 3, "{phase}: {s3:#?}");
        assert_eq!(
            s3.iter().filter(|r| r.method != "GET").count(),
            writes,
            "{phase}: {:?}",
            s3.iter()
                .map(|r| format!("{} {}", r.method, r.uri))
                .collect::<Vec<_>>()
        );
        for r in s3 {
            assert_eq!(
                r.headers
                    .get("x-amz-expected-bucket-owner")
                    .and_then(|v| v.to_str().ok()),
                Some(MOTO_ACCOUNT),
                "{phase}: {} {}",
                r.method,
                r.uri
            );
        }
    }
}

/// The finding names a bucket, but the bucket of that name belongs to another account (bucket
/// names are global; the scanner's account can reach it through a bucket policy). S3 refuses
/// every call that names the finding's account as the expected owner (the proxy does what S3
/// does and moto does not), so the plan fails saying so and apply writes nothing.
#[tokio::test]
async fn a_bucket_of_that_name_owned_by_another_account_is_never_touched() {
    let direct = moto::aws().await;
    let s3 = direct.s3();
    let bucket = bucket_name("fb-theirs");
    seed_public_bucket(&s3, &bucket).await;
    let before = grants(&s3, &bucket).await;
    let owners = Arc::new(BucketOwners::new(&[(bucket.as_str(), "210987654321")]));
    let proxy = AwsProxy::start(moto::endpoint(), owners.clone()).await;
    let ctx_through = ctx(moto::aws_at(&proxy.endpoint, "testing", "testing").await);
    let finding = parse_one(&s3_8_record(&bucket));
    let block = action("aws.s3.block-public-access").unwrap();
    let params = json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "lock",
        step: 0,
        params: &params,
        execution: None,
    };
    let err = block.plan(&ctx_through, input).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("AccessDenied"), "{text}");
    assert!(
        text.contains(&format!("expected owner: account {MOTO_ACCOUNT}")),
        "{text}"
    );
    assert!(owners.refused() >= 1);

    // A plan made where nobody checks the owner (straight to moto) is refused at apply too.
    let plan = block.plan(&ctx(direct.clone()), input).await.unwrap();
    assert!(!plan.noop);
    let err = block.apply(&ctx_through, input, &plan).await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let written: Vec<String> = s3_calls(&proxy.requests())
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    assert_eq!(written, Vec::<String>::new());
    assert_eq!(pab(&s3, &bucket).await, None);
    assert_eq!(
        grants(&s3, &bucket).await,
        before,
        "the bucket is as it was"
    );
}
