//! AWS containment actions (`aws.*`).
//!
//! Owns what the actions share: picking the AWS configuration from the context, the plan shown
//! when AWS is not set up, and turning SDK errors into retryable or permanent [`ActionError`]s.
//! Clients are never configured here; they come from [`ActionCtx::aws`] (`crate::clients::aws`),
//! which also carries the endpoint override used against moto.
//!
//! Permissions are written as IAM actions (`iam:UpdateAccessKey`); `deploy/iam-policy.json` is
//! generated from them.

mod iam;
mod s3;
mod securityhub;

pub use iam::{
    AwsIamDeactivateAccessKey, AwsIamDeleteAccessKey, AwsIamQuarantineUser, AwsIamRotateAccessKey,
};
pub use s3::AwsS3BlockPublicAccess;
pub use securityhub::AwsSecurityHubUpdateFinding;

use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde_json::{Value, json};

use super::{Action, ActionCtx, ActionError, Plan, PlanDraft};
use crate::clients::aws::{Aws, Identity};

/// The AWS configuration `plan` reads with: `Ok(Err(why))` when AWS is not usable (plans still
/// describe the change, without reading).
pub(crate) fn connection(ctx: &ActionCtx) -> Result<&Aws, String> {
    let Some(aws) = &ctx.aws else {
        return Err("AWS is not configured for this run (aws.region, credentials)".to_owned());
    };
    match aws.unusable() {
        Some(why) => Err(why),
        None => Ok(aws),
    }
}

/// The AWS configuration to act on a resource of `account` with (plan): `Ok(Err(why))` when AWS
/// is not usable (plans still describe the change), `Err` when the account's role is
/// misconfigured. An account of `aws.accounts` gets its assumed role, any other account (or a
/// resource without one) the base credentials; [`credentials_note`] says which.
pub(crate) async fn client_for(
    ctx: &ActionCtx,
    account: Option<&str>,
) -> Result<Result<Aws, String>, ActionError> {
    let aws = match connection(ctx) {
        Ok(aws) => aws,
        Err(why) => return Ok(Err(why)),
    };
    match account {
        Some(account) => aws
            .for_account(account)
            .await
            .map(Ok)
            .map_err(|e| ActionError::Permanent(e.to_string())),
        None => Ok(Ok(aws.clone())),
    }
}

/// [`client_for`] for `apply` and `rollback`: without AWS they fail (permanently).
pub(crate) async fn connected_for(
    ctx: &ActionCtx,
    account: Option<&str>,
) -> Result<Aws, ActionError> {
    client_for(ctx, account)
        .await?
        .map_err(|why| ActionError::Permanent(format!("cannot change AWS: {why}")))
}

/// The AWS configuration `plan` reads a resource of `account` with, and the account it acts
/// in, checked against `account` ([`check_account`]); `Ok(Err(why))` when AWS is not usable
/// (the plan then says so without reading).
pub(crate) async fn planning_in(
    ctx: &ActionCtx,
    account: Option<&str>,
) -> Result<Result<(Aws, String), String>, ActionError> {
    let aws = match client_for(ctx, account).await? {
        Ok(aws) => aws,
        Err(why) => return Ok(Err(why)),
    };
    let connected = check_account(&aws, account).await?;
    Ok(Ok((aws, connected)))
}

/// [`planning_in`] for `apply` and `rollback`: without AWS they fail (permanently), and a
/// resource of another account than the credentials' is refused before anything is written.
pub(crate) async fn acting_in(
    ctx: &ActionCtx,
    account: Option<&str>,
) -> Result<(Aws, String), ActionError> {
    let aws = connected_for(ctx, account).await?;
    let connected = check_account(&aws, account).await?;
    Ok((aws, connected))
}

/// Refuses a resource of another account than the one the credentials act in (read with STS
/// `GetCallerIdentity`, once per credentials and [`crate::clients::aws::ACCOUNT_TTL`]:
/// [`Aws::account`]). A resource that names no account is taken to be in the connected
/// account. Returns the connected account id.
pub(crate) async fn check_account(aws: &Aws, account: Option<&str>) -> Result<String, ActionError> {
    let connected = aws.account().await.map_err(|e| {
        sdk_error(
            "reading the connected AWS account (sts:GetCallerIdentity)",
            &e,
        )
    })?;
    if connected.is_empty() {
        return Err(ActionError::Permanent(
            "sts:GetCallerIdentity named no account; refusing to act without knowing where"
                .to_owned(),
        ));
    }
    if let Some(named) = account.filter(|a| !a.is_empty())
        && named != connected
    {
        return Err(ActionError::NotApplicable(format!(
            "the finding is about AWS account {named}, but the credentials Firebreak acts with \
             ({}) are in account {connected}; list {named} with its role in aws.accounts, or \
             run with credentials for it",
            aws.identity()
        )));
    }
    Ok(connected)
}

/// Whose credentials act on `account`, in words, for a plan's `observed` and summary.
pub(crate) fn credentials_note(aws: &Aws, account: Option<&str>) -> String {
    match (aws.identity(), account) {
        (id @ Identity::AssumedRole { .. }, _) => id.to_string(),
        (Identity::Base, Some(account)) => {
            format!("the base credentials (account {account} is not in aws.accounts)")
        }
        (Identity::Base, None) => "the base credentials (the finding names no account)".to_owned(),
    }
}

/// The plan when AWS is not usable: what would be done, said plainly; the engine records it as
/// planned only (nothing can apply it until credentials are configured).
pub(crate) fn not_connected_plan(
    action: &dyn Action,
    target: String,
    what: &str,
    why: &str,
) -> Plan {
    PlanDraft {
        other_targets: Vec::new(),
        target,
        summary: format!(
            "{what}: NOT CONNECTED, {why}; nothing was read, and it is only planned until AWS \
             credentials are configured"
        ),
        observed: json!({ "aws_connected": false }),
        before: Value::Null,
        after: Value::Null,
        changes: Vec::new(),
        noop: false,
    }
    .finish(action)
    .not_connected(why)
}

/// Error codes AWS services use for throttling and transient failures.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalError",
    "InternalFailure",
    "InternalServiceError",
    "ServiceFailure",
];

/// An SDK error as an action error: throttling, 5xx, timeouts and transport failures are
/// retryable; everything else (not found, access denied, invalid input) is permanent. The
/// message is the SDK's own (service code and message); it may quote the request (a
/// `SignatureDoesNotMatch` quotes its signed headers), so [`ActionError`] scrubs it when shown.
pub(crate) fn sdk_error<E, R>(what: &str, e: &SdkError<E, R>) -> ActionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = format!("{what}: {}", DisplayErrorContext(e));
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ActionError::Retryable(message)
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            if RETRYABLE_CODES.contains(&code) {
                ActionError::Retryable(message)
            } else {
                ActionError::Permanent(message)
            }
        }
        _ => ActionError::Permanent(message),
    }
}

/// The AWS error code of an SDK error, if the service sent one (`NoSuchEntity`, …).
pub(crate) fn error_code<E, R>(e: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}
