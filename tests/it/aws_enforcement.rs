//! Least privilege, proven: moto enforcing IAM, a `firebreak` user holding ONLY the generated
//! `deploy/iam-policy.json` policy, and every AWS action planned, applied, applied again and
//! rolled back signed as that user. A control per action removes one permission it declares
//! and shows the action is then denied, so the test fails if the policy (or moto's checking)
//! stops mattering.
//!
//! Each action is one row of [`SCENARIOS`]: how to set up its target (as the admin) and which
//! of its permissions the control removes.
//!
//! Security Hub `BatchUpdateFindings` is answered by the shim in front of moto
//! (`support::securityhub_shim`), which checks the caller's IAM policies itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use firebreak::action::{ActionCtx, Outcome, StepInput, action};
use firebreak::clients::aws::Aws;
use firebreak::config::Config;
use firebreak::finding::Finding;
use serde_json::{Value, json};

use crate::aws_s3::{bucket_name, parse_one, s3_8_record, seed_public_bucket};
use crate::support::aws_proxy::AwsProxy;
use crate::support::moto::{self, Moto};
use crate::support::securityhub_shim::{BatchUpdateFindings, import_findings};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The peers of one run: moto enforcing IAM, the proxy with the shim, and the admin.
struct Env {
    _moto: Moto,
    proxy: AwsProxy,
    /// Signs as the admin, straight to moto.
    admin: Aws,
}

/// One action under the generated policy.
struct Scenario {
    /// The action kind.
    action: &'static str,
    /// Its `with:` parameters.
    params: fn() -> Value,
    /// Creates the target as the admin and returns the finding about it.
    setup: for<'a> fn(&'a Env) -> BoxFuture<'a, Finding>,
    /// A permission the action declares and needs on this path: without it, apply is denied.
    needs: &'static str,
}

fn no_params() -> Value {
    json!({})
}

fn resolved() -> Value {
    json!({"status": "RESOLVED"})
}

fn public_bucket(env: &Env) -> BoxFuture<'_, Finding> {
    Box::pin(async move {
        let bucket = bucket_name("fb-enforced");
        seed_public_bucket(&env.admin.s3(), &bucket).await;
        parse_one(&s3_8_record(&bucket))
    })
}

fn hub_finding(env: &Env) -> BoxFuture<'_, Finding> {
    Box::pin(async move {
        // The real S3.8 finding with a unique Id and bucket (only those change).
        let mut rec = s3_8_record(&bucket_name("fb-enforced-hub"));
        let id = rec["Id"].as_str().unwrap().to_owned();
        rec["Id"] = json!(format!("{id}-{}", ulid::Ulid::new()));
        import_findings(&env.admin.securityhub(), std::slice::from_ref(&rec)).await;
        parse_one(&rec)
    })
}

fn deny_all() -> Value {
    json!({"mode": "deny-all"})
}

/// The Secrets Manager secret the rotation scenario delivers to (created by the first run,
/// given the exposed key of each run).
const ROTATED_SECRET: &str = "firebreak-enforced/aws-credentials";

fn rotate_params() -> Value {
    json!({"deliver": {"secrets_manager": {"secret_id": ROTATED_SECRET}}})
}

/// A fresh IAM user with one access key (its id and secret), and the (derived, real)
/// trufflehog finding about it.
async fn leaked_key(
    env: &Env,
    prefix: &str,
) -> (String, String, firebreak::redact::Redacted<String>, Finding) {
    let user = format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase());
    let (key, secret) = crate::aws_iam::user_with_key(&env.admin, &user).await;
    let finding = crate::aws_iam::trufflehog_finding(&user, &key);
    (user, key, secret, finding)
}

fn exposed_key(env: &Env) -> BoxFuture<'_, Finding> {
    Box::pin(async move { leaked_key(env, "fb-exposed").await.3 })
}

fn rotated_key(env: &Env) -> BoxFuture<'_, Finding> {
    Box::pin(async move {
        // The consumer the rotation delivers to holds the exposed key (each run's own).
        let (_, key, secret, finding) = leaked_key(env, "fb-rotated").await;
        crate::aws_iam::sm_holding(env.admin.clone(), ROTATED_SECRET, &key, &secret).await;
        finding
    })
}

fn retired_key(env: &Env) -> BoxFuture<'_, Finding> {
    Box::pin(async move {
        let (user, key, _, finding) = leaked_key(env, "fb-retired").await;
        env.admin
            .iam()
            .update_access_key()
            .user_name(&user)
            .access_key_id(&key)
            .status(aws_sdk_iam::types::StatusType::Inactive)
            .send()
            .await
            .unwrap();
        finding
    })
}

fn compromised_user(env: &Env) -> BoxFuture<'_, Finding> {
    Box::pin(async move {
        let user = format!("fb-tor-{}", ulid::Ulid::new().to_string().to_lowercase());
        let (key, _) = crate::aws_iam::user_with_key(&env.admin, &user).await;
        crate::aws_iam::guardduty_finding(&user, &key)
    })
}

/// Every AWS action, with how to exercise it.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        action: "aws.s3.block-public-access",
        params: no_params,
        setup: public_bucket,
        needs: "s3:PutBucketPublicAccessBlock",
    },
    Scenario {
        action: "aws.securityhub.update-finding",
        params: resolved,
        setup: hub_finding,
        needs: "securityhub:BatchUpdateFindings",
    },
    Scenario {
        action: "aws.iam.deactivate-access-key",
        params: no_params,
        setup: exposed_key,
        needs: "iam:UpdateAccessKey",
    },
    Scenario {
        action: "aws.iam.rotate-access-key",
        params: rotate_params,
        setup: rotated_key,
        needs: "iam:CreateAccessKey",
    },
    Scenario {
        action: "aws.iam.delete-access-key",
        params: no_params,
        setup: retired_key,
        needs: "iam:DeleteAccessKey",
    },
    Scenario {
        action: "aws.iam.quarantine-user",
        params: deny_all,
        setup: compromised_user,
        needs: "iam:PutUserPolicy",
    },
];

/// Starts moto with IAM enforcement and spends its unchecked requests on an admin.
async fn env() -> Env {
    let (moto, admin) = moto::enforcing().await;
    let shim = BatchUpdateFindings::enforcing(admin.securityhub(), admin.iam());
    let proxy = AwsProxy::start(&moto.endpoint, Arc::new(shim)).await;
    Env {
        _moto: moto,
        proxy,
        admin,
    }
}

/// A user holding only `policy` (inline, in moto's spelling), and an `Aws` signing as it
/// through the proxy.
async fn principal(env: &Env, name: &str, policy: &Value) -> Aws {
    let policy = &as_moto_spells(policy.clone());
    let iam = env.admin.iam();
    iam.create_user().user_name(name).send().await.unwrap();
    iam.put_user_policy()
        .user_name(name)
        .policy_name("firebreak")
        .policy_document(policy.to_string())
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    moto::aws_at(
        &env.proxy.endpoint,
        key.access_key_id(),
        key.secret_access_key(),
    )
    .await
}

/// IAM actions that moto 5.2 checks under another name than AWS (a moto gap). S3's bucket-level
/// Public Access Block operations need `s3:GetBucketPublicAccessBlock` and
/// `s3:PutBucketPublicAccessBlock` on AWS (DeletePublicAccessBlock needs the Put permission, see
/// the S3 API reference). moto's `ACTION_MAP` (moto/s3/responses.py) keys them as
/// `public_access_block` while the query string is `?publicAccessBlock`, so it never matches
/// and moto checks the method's default bucket action instead: GET `s3:ListBucket`, PUT
/// `s3:CreateBucket`, DELETE `s3:DeleteBucket`. Translating (never adding) keeps the user's
/// policy the generated one, as moto can check it.
const MOTO_SPELLING: &[(&str, &[&str])] = &[
    ("s3:GetBucketPublicAccessBlock", &["s3:ListBucket"]),
    (
        "s3:PutBucketPublicAccessBlock",
        &["s3:CreateBucket", "s3:DeleteBucket"],
    ),
];

/// The policy as moto must be told it: each action in AWS's spelling, replaced by moto's
/// spelling where they differ ([`MOTO_SPELLING`]); nothing is added.
fn as_moto_spells(mut doc: Value) -> Value {
    for st in doc["Statement"].as_array_mut().unwrap() {
        let actions: Vec<Value> = st["Action"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|a| {
                let a = a.as_str().unwrap();
                match MOTO_SPELLING.iter().find(|(aws, _)| *aws == a) {
                    Some((_, moto)) => moto.iter().map(|m| json!(m)).collect::<Vec<_>>(),
                    None => vec![json!(a)],
                }
            })
            .collect();
        st["Action"] = Value::Array(actions);
    }
    doc
}

/// The generated policy without `grant`.
fn without(grant: &str) -> Value {
    let mut doc = firebreak::action::iam_policy::aws_policy_document();
    for st in doc["Statement"].as_array_mut().unwrap() {
        st["Action"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a.as_str() != Some(grant));
    }
    doc
}

fn ctx(aws: Aws) -> ActionCtx {
    ActionCtx::from_config(&Config::default())
        .unwrap()
        .with_aws(aws)
}

/// Runs a test body on a thread with a 16 MiB stack (Security Hub findings are deep, see
/// `aws_securityhub`).
fn big_stack<F: Future<Output = ()>>(body: impl FnOnce() -> F + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body());
        })
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn every_aws_action_works_with_only_the_generated_iam_policy() {
    big_stack(|| async {
        let env = env().await;
        let policy: Value =
            serde_json::from_str(&firebreak::action::iam_policy::aws_iam_policy()).unwrap();
        let ctx = ctx(principal(&env, "firebreak", &policy).await);
        let covered: Vec<&str> = SCENARIOS.iter().map(|s| s.action).collect();
        for a in firebreak::action::ACTIONS {
            if a.permissions().iter().any(|p| p.system == "aws") {
                assert!(covered.contains(&a.kind()), "{} has no scenario", a.kind());
            }
        }
        for s in SCENARIOS {
            let finding = (s.setup)(&env).await;
            let params = (s.params)();
            let input = StepInput {
                finding: &finding,
                playbook: "least-privilege",
                step: 0,
                params: &params,
                execution: None,
            };
            let a = action(s.action).unwrap();
            let plan = a
                .plan(&ctx, input)
                .await
                .unwrap_or_else(|e| panic!("{}: plan: {e}", s.action));
            assert!(!plan.noop, "{}: {plan:#?}", s.action);
            let outcome: Outcome = a
                .apply(&ctx, input, &plan)
                .await
                .unwrap_or_else(|e| panic!("{}: apply: {e}", s.action));
            assert_eq!(outcome.result, "applied", "{}", s.action);
            let again = a.plan(&ctx, input).await.unwrap();
            assert!(again.noop, "{}: {again:#?}", s.action);
            let second = a.apply(&ctx, input, &again).await.unwrap();
            assert_eq!(second.result, "unchanged", "{}", s.action);
            a.rollback(&ctx, &outcome)
                .await
                .unwrap_or_else(|e| panic!("{}: rollback: {e}", s.action));
        }
    });
}

#[test]
fn an_action_is_denied_without_a_permission_it_declares() {
    big_stack(|| async {
        let env = env().await;
        for (i, s) in SCENARIOS.iter().enumerate() {
            let declared = action(s.action)
                .unwrap()
                .permissions()
                .iter()
                .any(|p| p.grant == s.needs);
            assert!(declared, "{} does not declare {}", s.action, s.needs);
            let ctx = ctx(principal(&env, &format!("firebreak-less-{i}"), &without(s.needs)).await);
            let finding = (s.setup)(&env).await;
            let params = (s.params)();
            let input = StepInput {
                finding: &finding,
                playbook: "least-privilege",
                step: 0,
                params: &params,
                execution: None,
            };
            let a = action(s.action).unwrap();
            let plan = a.plan(&ctx, input).await.unwrap();
            let err = a
                .apply(&ctx, input, &plan)
                .await
                .expect_err(&format!("{} without {} must be denied", s.action, s.needs));
            assert!(
                err.to_string().contains("AccessDenied"),
                "{} without {}: {err}",
                s.action,
                s.needs
            );
        }
    });
}
