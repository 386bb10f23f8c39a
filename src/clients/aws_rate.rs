//! The per-account AWS API budget: every request an AWS client sends with one account's
//! credentials first takes a cell from that account's rate limiter (GCRA, the `governor`
//! crate), waiting asynchronously when there is none.
//!
//! The wait sits in the HTTP client, below the SDK: [`RateLimitedHttpClient`] wraps the SDK's
//! own default HTTPS client (the one every client would build anyway), so it sees every
//! attempt, retries included, after the request is signed and before it leaves. An SDK
//! interceptor could not wait without blocking a thread. A call that had to wait is counted on
//! its account (`firebreak_aws_rate_limited_total{account}`).
//!
//! This module only limits and counts; which account a client acts in, and its credentials,
//! are `super::aws`'s business.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_runtime_api::client::runtime_plugin::RuntimePlugin;
use aws_smithy_types::config_bag::ConfigBag;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::telemetry::metrics::Metrics;

/// Where a budget reports its waits: set once the service's metrics exist (the AWS
/// configuration is built before them), shared by every budget of one [`super::aws::Aws`].
pub type MetricsSlot = Arc<OnceLock<Arc<Metrics>>>;

/// One account's request budget.
pub struct AccountBudget {
    /// The `account` label: `base` for the base credentials, else the configured account id.
    account: String,
    /// `None`: no limit (a rate of 0).
    limiter: Option<DefaultDirectRateLimiter>,
    /// Requests that had to wait.
    waited: AtomicU64,
    metrics: MetricsSlot,
}

impl fmt::Debug for AccountBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountBudget")
            .field("account", &self.account)
            .field("limited", &self.limiter.is_some())
            .field("waited", &self.waited())
            .finish()
    }
}

impl AccountBudget {
    /// A budget of `per_second` requests (0 = no limit) with bursts of `burst` (0 is taken as
    /// 1) for `account`, reporting waits to `metrics` once it is set.
    #[must_use]
    pub fn new(account: &str, per_second: u32, burst: u32, metrics: MetricsSlot) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            account: account.to_owned(),
            limiter,
            waited: AtomicU64::new(0),
            metrics,
        }
    }

    /// Requests of this account that had to wait for the budget so far.
    #[must_use]
    pub fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }

    /// Takes one request's cell, waiting until there is one.
    async fn acquire(&self) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        if limiter.check().is_ok() {
            return;
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.metrics.get() {
            m.aws_rate_limited(&self.account);
        }
        tracing::debug!(
            account = %self.account,
            "AWS API rate limit of the account reached; the request waits"
        );
        limiter.until_ready().await;
    }
}

/// The SDK's default HTTPS client (the same one an SDK client builds when given none), or
/// `None` if this build has none (the `default-https-client` feature is always on here).
#[must_use]
pub fn sdk_default_http_client() -> Option<SharedHttpClient> {
    let plugin = aws_smithy_runtime::client::defaults::default_http_client_plugin_v2(
        BehaviorVersion::latest(),
    )?;
    plugin
        .runtime_components(&RuntimeComponentsBuilder::new("firebreak-aws-rate"))
        .http_client()
}

/// An HTTP client whose every request first passes an account's [`AccountBudget`].
#[derive(Clone, Debug)]
pub struct RateLimitedHttpClient {
    inner: SharedHttpClient,
    budget: Arc<AccountBudget>,
}

impl RateLimitedHttpClient {
    /// Wraps `inner` (shared, so every account uses one connection pool) with `budget`.
    #[must_use]
    pub fn new(inner: SharedHttpClient, budget: Arc<AccountBudget>) -> Self {
        Self { inner, budget }
    }
}

impl HttpClient for RateLimitedHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(RateLimitedConnector {
            inner: self.inner.http_connector(settings, components),
            budget: Arc::clone(&self.budget),
        })
    }

    fn validate_base_client_config(
        &self,
        runtime_components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner
            .validate_base_client_config(runtime_components, cfg)
    }

    fn validate_final_config(
        &self,
        runtime_components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner.validate_final_config(runtime_components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

#[derive(Debug)]
struct RateLimitedConnector {
    inner: SharedHttpConnector,
    budget: Arc<AccountBudget>,
}

impl HttpConnector for RateLimitedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        let budget = Arc::clone(&self.budget);
        HttpConnectorFuture::new(async move {
            budget.acquire().await;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_passes_then_requests_wait_and_are_counted() {
        let metrics = Arc::new(Metrics::new());
        let slot: MetricsSlot = Arc::new(OnceLock::new());
        let _ = slot.set(Arc::clone(&metrics));
        let budget = AccountBudget::new("210987654321", 1, 2, slot);
        budget.acquire().await;
        budget.acquire().await;
        assert_eq!(budget.waited(), 0);
        // The third within a second of the burst waits (about a second) for its cell.
        budget.acquire().await;
        assert_eq!(budget.waited(), 1);
        assert_eq!(metrics.aws_rate_limited_count("210987654321"), 1);
    }

    #[tokio::test]
    async fn a_rate_of_zero_never_waits() {
        let budget = AccountBudget::new("base", 0, 0, Arc::new(OnceLock::new()));
        for _ in 0..100 {
            budget.acquire().await;
        }
        assert_eq!(budget.waited(), 0);
    }

    #[test]
    fn the_sdk_default_client_is_available() {
        assert!(sdk_default_http_client().is_some());
    }
}
