//! Multi-account clients against moto: an account of `aws.accounts` is acted on through its
//! role (STS AssumeRole with the base credentials), any other account with the base
//! credentials, and plans say which. Whatever the credentials, an action acts only in the
//! account its finding names: the account the credentials (or the assumed role) are in is read
//! with STS and compared first, and a finding about another account is refused before any
//! write.
//!
//! moto switches accounts on AssumeRole: the credentials of a role ARN in another account act
//! in that account (moto's multi-account support; the role need not exist for moto to answer).
//! The tests create the role in its account anyway, as an administrator would.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_credential_types::Credentials;
use firebreak::action::{ActionError, StepInput, action};
use firebreak::clients::aws::{AccountError, Aws, Identity};
use firebreak::config::{AwsAccountConfig, AwsConfig};
use serde_json::json;

use crate::aws_s3::{
    MOTO_ACCOUNT, bucket_name, ctx, pab, parse_one, s3_8_record_in, seed_public_bucket,
};
use crate::support::aws_proxy::{AwsProxy, Throttle};
use crate::support::moto;
use crate::support::securityhub_shim::{BatchUpdateFindings, import_findings};

/// The account of the real S3.8 finding (`AwsAccountId`).
const FINDING_ACCOUNT: &str = "111111111111";

/// Configuration acting in `account` of moto (the base credentials assume a role there).
async fn in_account(account: &str) -> Aws {
    let admin = format!("arn:aws:iam::{account}:role/moto-admin");
    aws_with_accounts(BTreeMap::from([(
        account.to_owned(),
        AwsAccountConfig {
            role_arn: admin,
            ..AwsAccountConfig::default()
        },
    )]))
    .await
    .for_account(account)
    .await
    .unwrap()
}

/// A role in `account` that moto's base account may assume; its name and ARN.
async fn role_in(account: &str) -> (String, String) {
    let name = format!("firebreak-{}", ulid::Ulid::new());
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{MOTO_ACCOUNT}:root")},
        "Action": "sts:AssumeRole"}]});
    let out = in_account(account)
        .await
        .iam()
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .unwrap();
    (name, out.role().unwrap().arn().to_owned())
}

async fn aws_with_accounts(accounts: BTreeMap<String, AwsAccountConfig>) -> Aws {
    aws_at_with_accounts(moto::endpoint(), accounts).await
}

async fn aws_at_with_accounts(endpoint: &str, accounts: BTreeMap<String, AwsAccountConfig>) -> Aws {
    let cfg = AwsConfig {
        region: "us-east-1".to_owned(),
        endpoint_url: endpoint.to_owned(),
        accounts,
        ..AwsConfig::default()
    };
    Aws::with_credentials(
        &cfg,
        Credentials::new("testing", "testing", None, None, "moto-test"),
    )
    .await
}

#[tokio::test]
async fn a_configured_account_is_reached_through_its_assumed_role() {
    let (name, role_arn) = role_in(FINDING_ACCOUNT).await;
    let aws = aws_with_accounts(BTreeMap::from([(
        FINDING_ACCOUNT.to_owned(),
        AwsAccountConfig {
            role_arn: role_arn.clone(),
            external_id: Some("firebreak-test".to_owned()),
            session_name: "firebreak-it".to_owned(),
            ..AwsAccountConfig::default()
        },
    )]))
    .await;

    let assumed = aws.for_account(FINDING_ACCOUNT).await.unwrap();
    assert_eq!(
        assumed.identity(),
        &Identity::AssumedRole {
            account: FINDING_ACCOUNT.to_owned(),
            role_arn: role_arn.clone()
        }
    );
    let who = assumed.sts().get_caller_identity().send().await.unwrap();
    assert_eq!(
        who.arn(),
        Some(format!("arn:aws:sts::{FINDING_ACCOUNT}:assumed-role/{name}/firebreak-it").as_str())
    );

    let other = aws.for_account("999999999999").await.unwrap();
    assert_eq!(other.identity(), &Identity::Base);
    let who = other.sts().get_caller_identity().send().await.unwrap();
    assert!(
        !who.arn().unwrap_or_default().contains("assumed-role"),
        "{:?}",
        who.arn()
    );

    // The S3 action on the S3.8 finding (account 111111111111, as in the sample) acts through
    // the role, says so in its plan, and closes the bucket of that account.
    let bucket = bucket_name("fb-assumed");
    let theirs = in_account(FINDING_ACCOUNT).await.s3();
    seed_public_bucket(&theirs, &bucket).await;
    let finding = parse_one(&s3_8_record_in(FINDING_ACCOUNT, &bucket));
    let params = json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "lock",
        step: 0,
        params: &params,
        execution: None,
    };
    let ctx = ctx(aws);
    let block = action("aws.s3.block-public-access").unwrap();
    let plan = block.plan(&ctx, input).await.unwrap();
    let credentials = plan.observed["credentials"].as_str().unwrap();
    assert!(credentials.contains(&role_arn), "{credentials}");
    assert!(plan.summary.contains(&role_arn), "{}", plan.summary);
    assert!(
        plan.summary.contains(&format!(
            "in account {FINDING_ACCOUNT}, the bucket's expected owner"
        )),
        "{}",
        plan.summary
    );
    block.apply(&ctx, input, &plan).await.unwrap();
    assert_eq!(pab(&theirs, &bucket).await, Some([true; 4]));
}

/// The requests the proxy saw that change something: S3 writes (REST: any method but GET and
/// HEAD) and Security Hub `BatchUpdateFindings` (`GetFindings` is a POST to `/findings`).
fn writes(proxy: &AwsProxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.operation.is_none())
        .filter(|r| {
            if r.uri.starts_with("/findings") {
                r.uri.starts_with("/findings/batchupdate")
            } else {
                r.method != "GET" && r.method != "HEAD"
            }
        })
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect()
}

/// A finding about an account Firebreak has no role for is not acted on with the base
/// credentials of another account: S3 and Security Hub refuse it at plan and at apply, naming
/// both accounts, before any write (the proxy sees none).
#[test]
fn a_finding_about_another_account_is_refused_before_any_write() {
    crate::aws_securityhub::big_stack(|| async {
        let direct = moto::aws().await;
        let proxy = AwsProxy::start(
            moto::endpoint(),
            Arc::new(BatchUpdateFindings::new(direct.securityhub())),
        )
        .await;
        let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
        let ctx = ctx(aws);
        let bucket = bucket_name("fb-elsewhere");
        seed_public_bucket(&direct.s3(), &bucket).await;
        let elsewhere = "222222222222";
        let mut rec = s3_8_record_in(elsewhere, &bucket);
        rec["Id"] = json!(format!(
            "{}-{}",
            rec["Id"].as_str().unwrap(),
            ulid::Ulid::new()
        ));
        import_findings(&direct.securityhub(), std::slice::from_ref(&rec)).await;
        let finding = parse_one(&rec);
        // The same finding about moto's own account: its plans are what apply is handed.
        let mut own = rec.clone();
        own["AwsAccountId"] = json!(MOTO_ACCOUNT);
        let own = parse_one(&own);
        for (kind, params) in [
            ("aws.s3.block-public-access", json!({})),
            (
                "aws.securityhub.update-finding",
                json!({"status": "RESOLVED"}),
            ),
        ] {
            let a = action(kind).unwrap();
            let input = StepInput {
                finding: &finding,
                playbook: "elsewhere",
                step: 0,
                params: &params,
                execution: None,
            };
            let err = a.plan(&ctx, input).await.unwrap_err();
            assert!(
                matches!(err, ActionError::NotApplicable(_)),
                "{kind}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("account {elsewhere}"))
                    && text.contains(&format!("in account {MOTO_ACCOUNT}")),
                "{kind}: {text}"
            );
            let own_input = StepInput {
                finding: &own,
                ..input
            };
            let plan = a.plan(&ctx, own_input).await.unwrap();
            assert!(!plan.noop, "{kind}");
            let err = a.apply(&ctx, input, &plan).await.unwrap_err();
            assert!(
                matches!(err, ActionError::NotApplicable(_)),
                "{kind}: {err:?}"
            );
        }
        assert_eq!(writes(&proxy), Vec::<String>::new());
        assert_eq!(
            pab(&direct.s3(), &bucket).await,
            None,
            "the bucket is as it was"
        );
    });
}

/// `aws.accounts` maps the finding's account to a role that turns out to be in another
/// account (a copy-paste slip): the assumed credentials act in that other account, so the
/// finding is refused, although Firebreak did assume the role it was told to.
#[tokio::test]
async fn a_role_that_lands_in_another_account_than_the_findings_is_refused() {
    let (_, role_arn) = role_in(MOTO_ACCOUNT).await;
    let counter = Arc::new(Throttle::new("AssumeRole", 0));
    let proxy = AwsProxy::start(moto::endpoint(), counter.clone()).await;
    let aws = aws_at_with_accounts(
        &proxy.endpoint,
        BTreeMap::from([(
            FINDING_ACCOUNT.to_owned(),
            AwsAccountConfig {
                role_arn,
                ..AwsAccountConfig::default()
            },
        )]),
    )
    .await;
    let bucket = bucket_name("fb-slip");
    seed_public_bucket(&moto::aws().await.s3(), &bucket).await;
    let finding = parse_one(&s3_8_record_in(FINDING_ACCOUNT, &bucket));
    let params = json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "lock",
        step: 0,
        params: &params,
        execution: None,
    };
    let err = action("aws.s3.block-public-access")
        .unwrap()
        .plan(&ctx(aws), input)
        .await
        .unwrap_err();
    assert_eq!(counter.forwarded(), 1, "the role was assumed");
    let text = err.to_string();
    assert!(
        text.contains(&format!("account {FINDING_ACCOUNT}")) && text.contains(MOTO_ACCOUNT),
        "{text}"
    );
    assert!(
        proxy.requests().iter().all(|r| r.operation.is_some()),
        "no S3 call was made: {:?}",
        proxy.seen()
    );
}

#[tokio::test]
async fn a_role_arn_that_is_not_a_role_is_refused_with_its_config_path() {
    let aws = aws_with_accounts(BTreeMap::from([(
        FINDING_ACCOUNT.to_owned(),
        AwsAccountConfig {
            role_arn: "arn:aws:iam::111111111111:user/someone".to_owned(),
            ..AwsAccountConfig::default()
        },
    )]))
    .await;
    let err = aws.for_account(FINDING_ACCOUNT).await.unwrap_err();
    assert!(matches!(err, AccountError::BadRoleArn { .. }));
    assert!(
        err.to_string()
            .contains("aws.accounts.111111111111.role_arn"),
        "{err}"
    );
}

#[tokio::test]
async fn an_assumed_role_is_assumed_once_and_shared_by_every_client() {
    let (_, role_arn) = role_in(FINDING_ACCOUNT).await;
    // The proxy counts the AssumeRole calls reaching moto (a throttle that refuses none).
    let counter = Arc::new(Throttle::new("AssumeRole", 0));
    let proxy = AwsProxy::start(moto::endpoint(), counter.clone()).await;
    let cfg = AwsConfig {
        region: "us-east-1".to_owned(),
        endpoint_url: proxy.endpoint.clone(),
        accounts: BTreeMap::from([(
            FINDING_ACCOUNT.to_owned(),
            AwsAccountConfig {
                role_arn,
                ..AwsAccountConfig::default()
            },
        )]),
        ..AwsConfig::default()
    };
    let aws = Aws::with_credentials(
        &cfg,
        Credentials::new("testing", "testing", None, None, "moto-test"),
    )
    .await;
    for _ in 0..3 {
        let assumed = aws.clone().for_account(FINDING_ACCOUNT).await.unwrap();
        assumed.sts().get_caller_identity().send().await.unwrap();
        assumed.iam().list_users().send().await.unwrap();
    }
    assert_eq!(counter.forwarded(), 1, "{:?}", proxy.seen());
}
