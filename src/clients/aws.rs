//! AWS SDK configuration: region, an optional endpoint override and credentials from the SDK's
//! default chain, built once and shared by every AWS client (SQS, IAM, S3, STS, Security Hub,
//! Secrets Manager: one method each).
//!
//! The default chain reads the process environment and `~/.aws` (environment variables,
//! profiles, web identity, ECS and EC2 instance roles); that is the SDK's business and the only
//! place Firebreak lets it happen. Tests pass static credentials and point `endpoint_url` at
//! moto instead. Whether credentials were found is probed once, with a bound, at [`Aws::load`]:
//! [`Aws::credentials`] tells the service whether AWS actions can run or only plan.
//!
//! Other accounts (`aws.accounts`) are reached through a role: [`Aws::for_account`] gives the
//! configuration for an account, with credentials from STS `AssumeRole` signed by the base
//! credentials, built once per account and shared (the SDK caches the assumed credentials and
//! refreshes them before they expire). An account not configured gets the base credentials.
//!
//! Each account has its own API budget (`aws.rate_limit_per_second`, an account's own
//! `rate_limit_per_second`; see [`super::aws_rate`]): the base credentials are one account,
//! each account of `aws.accounts` another, and every request signed with an account's
//! credentials passes its budget, STS `AssumeRole` calls (signed with the base credentials)
//! included. The SQS intake's calls are the exception: SQS allows far more requests than the
//! control-plane APIs remediation calls, and intake must not wait behind remediation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use aws_smithy_runtime_api::client::http::SharedHttpClient;

use super::aws_rate::{AccountBudget, MetricsSlot, RateLimitedHttpClient, sdk_default_http_client};
use crate::config::{AwsAccountConfig, AwsConfig};
use crate::telemetry::metrics::Metrics;

/// How long the credential probe may take: the default chain ends with the EC2 metadata
/// service, which on a machine outside AWS only fails after its own timeouts.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `account` label of the base credentials' budget.
pub const BASE_ACCOUNT_LABEL: &str = "base";

/// How many times one AWS call is tried (the first try included) when throttled or failing
/// transiently, before the error reaches the action (which the engine may retry again).
const MAX_ATTEMPTS: u32 = 5;

/// Whether the credential chain produced credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialStatus {
    /// Credentials were found (which ones is never shown).
    Found,
    /// No credentials: why (the chain's own message, which names no secret).
    Missing {
        /// What the chain reported.
        reason: String,
    },
}

impl CredentialStatus {
    /// Whether AWS calls can be signed.
    #[must_use]
    pub fn found(&self) -> bool {
        matches!(self, Self::Found)
    }
}

impl fmt::Display for CredentialStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Found => f.write_str("credentials found"),
            Self::Missing { reason } => write!(f, "no credentials ({reason})"),
        }
    }
}

/// Whose credentials an [`Aws`] signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The base credentials (the default chain, the profile, or the test's static ones).
    Base,
    /// A role of `account` assumed with the base credentials (`aws.accounts`).
    AssumedRole {
        /// The account id.
        account: String,
        /// The role assumed.
        role_arn: String,
    },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base => f.write_str("the base credentials"),
            Self::AssumedRole { account, role_arn } => {
                write!(f, "role {role_arn} assumed for account {account}")
            }
        }
    }
}

/// Why no configuration could be made for an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// `aws.accounts.<id>.role_arn` is empty or not an IAM role ARN.
    #[error(
        "aws.accounts.{account}.role_arn: `{role_arn}` is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
    )]
    BadRoleArn {
        /// The account id.
        account: String,
        /// What was configured.
        role_arn: String,
    },
}

/// The shared AWS SDK configuration and what the credential probe found.
#[derive(Clone)]
pub struct Aws {
    sdk: SdkConfig,
    credentials: CredentialStatus,
    identity: Identity,
    /// `aws.accounts`, shared by every clone.
    accounts: Arc<BTreeMap<String, AwsAccountConfig>>,
    /// The configuration per assumed account, built on first use and shared by every clone.
    assumed: Arc<Mutex<HashMap<String, Aws>>>,
    /// The account these credentials act in (STS `GetCallerIdentity`), asked once and shared
    /// by every clone; asked again after [`ACCOUNT_TTL`].
    account: Arc<tokio::sync::Mutex<Option<(String, std::time::Instant)>>>,
    /// The request budget of the account these credentials act in.
    budget: Arc<AccountBudget>,
    /// The SDK's default HTTP client without any budget (shared by every account's limited
    /// client, and used as is by the SQS intake). `None` only if the SDK has no default client.
    http: Option<SharedHttpClient>,
    /// `aws.rate_limit_per_second` and `aws.rate_limit_burst`, for the assumed accounts.
    rate: (u32, u32),
    /// Where every budget of this configuration reports its waits, once set.
    metrics: MetricsSlot,
}

/// How long the account the credentials act in is remembered before STS is asked again (a
/// profile or instance role whose credentials change keeps its account; this bounds how long a
/// change of account would go unnoticed).
pub const ACCOUNT_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl fmt::Debug for Aws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region())
            .field(
                "endpoint_url",
                &self.sdk.endpoint_url().map(crate::redact::scrub),
            )
            .field("credentials", &self.credentials)
            .field("identity", &self.identity)
            .field("accounts", &self.accounts.keys().collect::<Vec<_>>())
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Aws {
    /// Builds the configuration from `cfg` with credentials from the default chain, and probes
    /// the chain once (bounded by a few seconds).
    pub async fn load(cfg: &AwsConfig) -> Self {
        Self::build(cfg, None).await
    }

    /// Builds the configuration from `cfg` with fixed `credentials` (tests against moto; never
    /// read from configuration files).
    pub async fn with_credentials(cfg: &AwsConfig, credentials: Credentials) -> Self {
        Self::build(cfg, Some(credentials)).await
    }

    async fn build(cfg: &AwsConfig, credentials: Option<Credentials>) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if !cfg.region.trim().is_empty() {
            loader = loader.region(Region::new(cfg.region.trim().to_owned()));
        }
        if !cfg.endpoint_url.trim().is_empty() {
            loader = loader.endpoint_url(cfg.endpoint_url.trim());
        }
        if !cfg.profile.trim().is_empty() {
            loader = loader.profile_name(cfg.profile.trim());
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        // Throttling is normal under containment bursts: standard retry backs off exponentially
        // with jitter. (Adaptive mode's client-side rate limiter, measured against moto, held a
        // client at a few calls per second for many seconds after two throttled calls.)
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        let sdk = loader.load().await;
        let credentials = probe(&sdk).await;
        let metrics: MetricsSlot = Arc::default();
        let rate = (cfg.rate_limit_per_second, cfg.rate_limit_burst);
        let budget = Arc::new(AccountBudget::new(
            BASE_ACCOUNT_LABEL,
            rate.0,
            rate.1,
            Arc::clone(&metrics),
        ));
        let http = sdk_default_http_client();
        // Set after loading, so the credential chain itself (instance metadata, SSO) is not
        // counted; API calls, STS AssumeRole included, are.
        let sdk = limited(sdk, http.as_ref(), &budget);
        Self {
            sdk,
            credentials,
            identity: Identity::Base,
            accounts: Arc::new(cfg.accounts.clone()),
            assumed: Arc::new(Mutex::new(HashMap::new())),
            account: Arc::new(tokio::sync::Mutex::new(None)),
            budget,
            http,
            rate,
            metrics,
        }
    }

    /// Reports the waits of every account's budget (this configuration's and the assumed
    /// accounts', built before or after) as `firebreak_aws_rate_limited_total{account}` in
    /// `metrics`. Only the first call counts.
    pub fn report_to(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// How many requests of this configuration's account waited for its rate limit so far.
    #[must_use]
    pub fn rate_limited(&self) -> u64 {
        self.budget.waited()
    }

    /// The account these credentials act in: STS `GetCallerIdentity` once per configuration
    /// (per assumed role) and [`ACCOUNT_TTL`], not once per action. Concurrent first callers
    /// wait for one answer.
    ///
    /// # Errors
    /// The STS call failed.
    pub async fn account(
        &self,
    ) -> Result<
        String,
        aws_sdk_sts::error::SdkError<
            aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityError,
        >,
    > {
        let mut known = self.account.lock().await;
        if let Some((account, at)) = known.as_ref()
            && at.elapsed() < ACCOUNT_TTL
        {
            return Ok(account.clone());
        }
        let me = self.sts().get_caller_identity().send().await?;
        let account = me.account().unwrap_or_default().to_owned();
        if !account.is_empty() {
            *known = Some((account.clone(), std::time::Instant::now()));
        }
        Ok(account)
    }

    /// The configuration to act on resources of `account` with: for an account of
    /// `aws.accounts`, credentials from STS `AssumeRole` of its role (signed with the base
    /// credentials; STS is called when a client first signs a request), built once per account;
    /// for any other account, this configuration (the base credentials). [`Aws::identity`]
    /// says which.
    ///
    /// # Errors
    /// When the account's configured role ARN is not an IAM role ARN.
    pub async fn for_account(&self, account: &str) -> Result<Aws, AccountError> {
        let Some(role) = self.accounts.get(account) else {
            return Ok(self.clone());
        };
        if let Some(cached) = self
            .assumed
            .lock()
            .ok()
            .and_then(|m| m.get(account).cloned())
        {
            return Ok(cached);
        }
        let role_arn = role.role_arn.trim();
        if !role_arn.starts_with("arn:") || !role_arn.contains(":role/") {
            return Err(AccountError::BadRoleArn {
                account: account.to_owned(),
                role_arn: role_arn.to_owned(),
            });
        }
        let mut builder = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name(if role.session_name.trim().is_empty() {
                "firebreak"
            } else {
                role.session_name.trim()
            })
            .configure(&self.sdk);
        if let Some(id) = role.external_id.as_deref().filter(|id| !id.is_empty()) {
            builder = builder.external_id(id);
        }
        let provider = builder.build().await;
        let budget = Arc::new(AccountBudget::new(
            account,
            role.rate_limit_per_second.unwrap_or(self.rate.0),
            self.rate.1,
            Arc::clone(&self.metrics),
        ));
        let sdk = self
            .sdk
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build();
        let sdk = limited(sdk, self.http.as_ref(), &budget);
        let aws = Aws {
            sdk,
            // Assuming the role needs the base credentials; whether the role can be assumed
            // shows on the first call.
            credentials: self.credentials.clone(),
            identity: Identity::AssumedRole {
                account: account.to_owned(),
                role_arn: role_arn.to_owned(),
            },
            accounts: Arc::clone(&self.accounts),
            assumed: Arc::clone(&self.assumed),
            account: Arc::new(tokio::sync::Mutex::new(None)),
            budget,
            http: self.http.clone(),
            rate: self.rate,
            metrics: Arc::clone(&self.metrics),
        };
        if let Ok(mut m) = self.assumed.lock() {
            // Two concurrent first uses both build one; the first kept wins, both work.
            return Ok(m.entry(account.to_owned()).or_insert(aws).clone());
        }
        Ok(aws)
    }

    /// Whose credentials this configuration signs with.
    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// What the credential probe found.
    #[must_use]
    pub fn credentials(&self) -> &CredentialStatus {
        &self.credentials
    }

    /// The region clients use, if one was configured or found.
    #[must_use]
    pub fn region(&self) -> Option<&str> {
        self.sdk.region().map(Region::as_ref)
    }

    /// Why AWS clients cannot work, if they cannot: no region or no credentials.
    #[must_use]
    pub fn unusable(&self) -> Option<String> {
        if let CredentialStatus::Missing { reason } = &self.credentials {
            return Some(format!("no AWS credentials found: {reason}"));
        }
        if self.region().is_none() {
            return Some("no AWS region: set aws.region or AWS_REGION".to_owned());
        }
        None
    }

    /// The shared SDK configuration (for a client this module has no method for yet).
    #[must_use]
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk
    }

    /// An SQS client (the intake's): its calls do not pass the account's rate limit.
    #[must_use]
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let mut conf = aws_sdk_sqs::config::Builder::from(&self.sdk);
        if let Some(http) = &self.http {
            conf = conf.http_client(http.clone());
        }
        aws_sdk_sqs::Client::from_conf(conf.build())
    }

    /// An IAM client.
    #[must_use]
    pub fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk)
    }

    /// An S3 client. With an endpoint override (moto, MinIO) requests use path-style addressing,
    /// since a bucket name cannot be a subdomain of an IP address.
    #[must_use]
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk)
            .force_path_style(self.sdk.endpoint_url().is_some())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// An S3 client for a bucket in `region`: S3 answers for a bucket only in the bucket's own
    /// region (elsewhere a `PermanentRedirect`). `None`: the configured region.
    #[must_use]
    pub fn s3_in(&self, region: Option<&str>) -> aws_sdk_s3::Client {
        let mut conf = aws_sdk_s3::config::Builder::from(&self.sdk)
            .force_path_style(self.sdk.endpoint_url().is_some());
        if let Some(r) = region.map(str::trim).filter(|r| !r.is_empty()) {
            conf = conf.region(Region::new(r.to_owned()));
        }
        aws_sdk_s3::Client::from_conf(conf.build())
    }

    /// A Security Hub client for a finding of `region` (findings live in the region that
    /// recorded them, or the aggregation region). `None`: the configured region.
    #[must_use]
    pub fn securityhub_in(&self, region: Option<&str>) -> aws_sdk_securityhub::Client {
        let mut conf = aws_sdk_securityhub::config::Builder::from(&self.sdk);
        if let Some(r) = region.map(str::trim).filter(|r| !r.is_empty()) {
            conf = conf.region(Region::new(r.to_owned()));
        }
        aws_sdk_securityhub::Client::from_conf(conf.build())
    }

    /// An STS client.
    #[must_use]
    pub fn sts(&self) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::new(&self.sdk)
    }

    /// A Security Hub client.
    #[must_use]
    pub fn securityhub(&self) -> aws_sdk_securityhub::Client {
        aws_sdk_securityhub::Client::new(&self.sdk)
    }

    /// A Secrets Manager client.
    #[must_use]
    pub fn secretsmanager(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk)
    }
}

/// `sdk` with its requests passing `budget` before they are sent through `http` (unchanged when
/// there is no default HTTP client to wrap, which the enabled SDK features rule out).
fn limited(
    sdk: SdkConfig,
    http: Option<&SharedHttpClient>,
    budget: &Arc<AccountBudget>,
) -> SdkConfig {
    let Some(http) = http else {
        tracing::warn!(
            "the AWS SDK has no default HTTP client to rate-limit; AWS calls are not limited"
        );
        return sdk;
    };
    sdk.to_builder()
        .http_client(RateLimitedHttpClient::new(http.clone(), Arc::clone(budget)))
        .build()
}

/// Asks the configured provider for credentials once, within [`PROBE_TIMEOUT`].
async fn probe(sdk: &SdkConfig) -> CredentialStatus {
    let Some(provider) = sdk.credentials_provider() else {
        return CredentialStatus::Missing {
            reason: "no credentials provider is configured".to_owned(),
        };
    };
    match tokio::time::timeout(PROBE_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(_)) => CredentialStatus::Found,
        // The error's Display is the chain's summary; it names providers, never secrets.
        Ok(Err(e)) => CredentialStatus::Missing {
            reason: e.to_string(),
        },
        Err(_) => CredentialStatus::Missing {
            reason: format!(
                "the credential chain did not answer within {}s",
                PROBE_TIMEOUT.as_secs()
            ),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn moto_like() -> AwsConfig {
        AwsConfig {
            region: "us-east-1".to_owned(),
            endpoint_url: "http://127.0.0.1:1".to_owned(),
            ..AwsConfig::default()
        }
    }

    #[tokio::test]
    async fn static_credentials_are_found_and_never_shown() {
        let secret = ["not", "a", "real", "secret"].join("-");
        let creds = Credentials::new("AKIDEXAMPLE", secret.clone(), None, None, "static");
        let aws = Aws::with_credentials(&moto_like(), creds).await;
        assert!(aws.credentials().found(), "{:?}", aws.credentials());
        assert_eq!(aws.unusable(), None);
        assert_eq!(aws.region(), Some("us-east-1"));
        assert_eq!(aws.sdk_config().endpoint_url(), Some("http://127.0.0.1:1"));
        assert!(!format!("{aws:?}").contains(&secret));
    }
}
