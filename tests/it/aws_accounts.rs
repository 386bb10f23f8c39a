//! Multi-account clients against moto: an account of `aws.accounts` is acted on through its
//! role (STS AssumeRole with the base credentials), any other account with the base
//! credentials, and plans say which.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_credential_types::Credentials;
use firebreak::action::{StepInput, action};
use firebreak::clients::aws::{AccountError, Aws, Identity};
use firebreak::config::{AwsAccountConfig, AwsConfig};
use serde_json::json;

use crate::aws_s3::{bucket_name, ctx, parse_one, s3_8_record, seed_public_bucket};
use crate::support::aws_proxy::{AwsProxy, Throttle};
use crate::support::moto;

/// The account of the real S3.8 finding (`AwsAccountId`).
const FINDING_ACCOUNT: &str = "111111111111";

async fn role(base: &Aws) -> (String, String) {
    let name = format!("firebreak-{}", ulid::Ulid::new());
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]});
    let out = base
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
    let cfg = AwsConfig {
        region: "us-east-1".to_owned(),
        endpoint_url: moto::endpoint().to_owned(),
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
    let (name, role_arn) = role(&moto::aws().await).await;
    let aws = aws_with_accounts(BTreeMap::from([(
        FINDING_ACCOUNT.to_owned(),
        AwsAccountConfig {
            role_arn: role_arn.clone(),
            external_id: Some("firebreak-test".to_owned()),
            session_name: "firebreak-it".to_owned(),
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
        Some(format!("arn:aws:sts::123456789012:assumed-role/{name}/firebreak-it").as_str())
    );

    let other = aws.for_account("999999999999").await.unwrap();
    assert_eq!(other.identity(), &Identity::Base);
    let who = other.sts().get_caller_identity().send().await.unwrap();
    assert!(
        !who.arn().unwrap_or_default().contains("assumed-role"),
        "{:?}",
        who.arn()
    );

    // The S3 action on the S3.8 finding (account 111111111111) acts through the role and
    // says so in its plan.
    let bucket = bucket_name("fb-assumed");
    seed_public_bucket(&moto::aws().await.s3(), &bucket).await;
    let finding = parse_one(&s3_8_record(&bucket));
    let params = json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "lock",
        step: 0,
        params: &params,
    };
    let ctx = ctx(aws);
    let plan = action("aws.s3.block-public-access")
        .unwrap()
        .plan(&ctx, input)
        .await
        .unwrap();
    let credentials = plan.observed["credentials"].as_str().unwrap();
    assert!(credentials.contains(&role_arn), "{credentials}");
    assert!(plan.summary.contains(&role_arn), "{}", plan.summary);
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
    let (_, role_arn) = role(&moto::aws().await).await;
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
