//! The per-account AWS API rate limit and the SDK's retries on throttling, against moto.
//!
//! A proxy in front of moto notes when each request reaches it (and may answer IAM's real
//! `Throttling` error, status 400, for the first calls of an operation): the spacing between
//! an account's requests is asserted as a lower bound (at least one period of the configured
//! rate, less a tolerance for scheduling), never as a speed. Which requests waited is read from
//! the limiter's count and from `firebreak_aws_rate_limited_total{account}`.
//!
//! moto switches accounts on AssumeRole (the role need not exist), so accounts of
//! `aws.accounts` are real, separate accounts here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use firebreak::clients::aws::Aws;
use firebreak::config::{AwsAccountConfig, AwsConfig};
use firebreak::telemetry::metrics::Metrics;

use crate::support::aws_proxy::{
    AwsProxy, BoxFuture, Interceptor, ProxyRequest, ProxyResponse, Throttle,
};
use crate::support::moto;

/// Notes every request's operation and arrival time; answers IAM's `Throttling` error to the
/// first `times` calls of `operation`.
struct Stamps {
    operation: String,
    times: usize,
    refused: AtomicUsize,
    seen: Mutex<Vec<(String, Instant)>>,
}

impl Stamps {
    fn new(operation: &str, times: usize) -> Self {
        Self {
            operation: operation.to_owned(),
            times,
            refused: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> Vec<(String, Instant)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Interceptor for Stamps {
    fn intercept<'a>(
        &'a self,
        req: &'a ProxyRequest,
        _upstream: &'a str,
    ) -> BoxFuture<'a, Option<ProxyResponse>> {
        Box::pin(async move {
            let op = req.operation.clone().unwrap_or_default();
            self.seen.lock().unwrap().push((op.clone(), Instant::now()));
            if op == self.operation
                && self
                    .refused
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n < self.times).then_some(n + 1)
                    })
                    .is_ok()
            {
                return Some(ProxyResponse::query_error(
                    400,
                    "Throttling",
                    "Rate exceeded",
                ));
            }
            None
        })
    }
}

/// AWS configuration at `endpoint` with the given limit and accounts, static test credentials.
async fn limited(
    endpoint: &str,
    per_second: u32,
    burst: u32,
    accounts: BTreeMap<String, AwsAccountConfig>,
) -> Aws {
    let cfg = AwsConfig {
        region: "us-east-1".to_owned(),
        endpoint_url: endpoint.to_owned(),
        accounts,
        rate_limit_per_second: per_second,
        rate_limit_burst: burst,
        ..AwsConfig::default()
    };
    Aws::with_credentials(
        &cfg,
        Credentials::new("testing", "testing", None, None, "moto-test"),
    )
    .await
}

/// `aws.accounts.<account>`: its role (moto acts in `account` with it).
fn role(account: &str) -> AwsAccountConfig {
    AwsAccountConfig {
        role_arn: format!("arn:aws:iam::{account}:role/moto-admin"),
        ..AwsAccountConfig::default()
    }
}

#[tokio::test]
async fn an_accounts_requests_retries_included_are_spaced_by_its_rate_limit() {
    const PER_SECOND: u32 = 2;
    let stamps = Arc::new(Stamps::new("CreateUser", 2));
    let proxy = AwsProxy::start(moto::endpoint(), stamps.clone()).await;
    let aws = limited(&proxy.endpoint, PER_SECOND, 1, BTreeMap::new()).await;
    let metrics = Arc::new(Metrics::new());
    aws.report_to(Arc::clone(&metrics));

    // A create throttled twice (the SDK retries it), then three reads at once.
    let iam = aws.iam();
    let name = format!("paced-{}", ulid::Ulid::new());
    iam.create_user().user_name(&name).send().await.unwrap();
    let (r1, r2, r3) = tokio::join!(
        iam.get_user().user_name(&name).send(),
        iam.get_user().user_name(&name).send(),
        iam.get_user().user_name(&name).send(),
    );
    for r in [r1, r2, r3] {
        assert_eq!(r.unwrap().user().unwrap().user_name(), name);
    }

    let seen = stamps.seen();
    let ops: Vec<&str> = seen.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "CreateUser",
            "CreateUser",
            "CreateUser",
            "GetUser",
            "GetUser",
            "GetUser"
        ]
    );
    // AWS never saw two requests of the account closer than one period (less a tolerance for
    // the proxy's own scheduling): retries and concurrent calls included.
    let period = Duration::from_secs(1) / PER_SECOND;
    let tolerance = period / 4;
    for pair in seen.windows(2) {
        let gap = pair[1].1.duration_since(pair[0].1);
        assert!(
            gap + tolerance >= period,
            "{} followed {} after {gap:?}, under the period of {period:?}",
            pair[1].0,
            pair[0].0
        );
    }
    // Each read came within one period of the one before it: all three waited, and were
    // counted on the base credentials' account.
    let waited = aws.rate_limited();
    assert!(waited >= 3, "{waited}");
    assert_eq!(metrics.aws_rate_limited_count("base"), waited);
    let text = metrics.render();
    assert!(
        text.contains(&format!(
            "firebreak_aws_rate_limited_total{{account=\"base\"}} {waited}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn accounts_do_not_share_a_budget_and_an_account_may_have_its_own_rate() {
    const A: &str = "111111111111";
    const B: &str = "222222222222";
    const UNLIMITED: &str = "333333333333";
    let mut own = role(UNLIMITED);
    own.rate_limit_per_second = Some(0);
    let aws = limited(
        moto::endpoint(),
        1,
        1,
        BTreeMap::from([
            (A.to_owned(), role(A)),
            (B.to_owned(), role(B)),
            (UNLIMITED.to_owned(), own),
        ]),
    )
    .await;
    let metrics = Arc::new(Metrics::new());
    aws.report_to(Arc::clone(&metrics));
    let a = aws.for_account(A).await.unwrap();
    let b = aws.for_account(B).await.unwrap();
    let unlimited = aws.for_account(UNLIMITED).await.unwrap();

    // First use of each: its role is assumed with the base credentials, so three AssumeRole
    // calls in a row pass the base budget of one per second (two of them waited), while each
    // account's own first call finds its budget untouched.
    for account in [&a, &b, &unlimited] {
        account.iam().list_users().send().await.unwrap();
    }
    assert_eq!(aws.rate_limited(), 2);
    assert_eq!(
        (a.rate_limited(), b.rate_limited(), unlimited.rate_limited()),
        (0, 0, 0)
    );

    // A spends its budget: its next call right after waits...
    a.iam().list_users().send().await.unwrap();
    a.iam().list_users().send().await.unwrap();
    assert_eq!(a.rate_limited(), 1);
    // ...and B's call right after A's does not: a shared budget would have made it wait.
    b.iam().list_users().send().await.unwrap();
    assert_eq!(b.rate_limited(), 0);
    // An account with its own rate of 0 is not limited, whatever the default.
    for _ in 0..5 {
        unlimited.iam().list_users().send().await.unwrap();
    }
    assert_eq!(unlimited.rate_limited(), 0);
    // None of that was paid by the base credentials.
    assert_eq!(aws.rate_limited(), 2);

    assert_eq!(metrics.aws_rate_limited_count(A), 1);
    assert_eq!(metrics.aws_rate_limited_count(B), 0);
    assert_eq!(metrics.aws_rate_limited_count("base"), 2);
    let text = metrics.render();
    assert!(
        text.contains(&format!(
            "firebreak_aws_rate_limited_total{{account=\"{A}\"}} 1"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn the_sqs_intake_does_not_wait_for_the_rate_limit() {
    let aws = limited(moto::endpoint(), 1, 1, BTreeMap::new()).await;
    let sqs = aws.sqs();
    for _ in 0..3 {
        sqs.list_queues().send().await.unwrap();
    }
    assert_eq!(aws.rate_limited(), 0);
    // The same configuration's IAM calls are limited.
    let iam = aws.iam();
    iam.list_users().send().await.unwrap();
    iam.list_users().send().await.unwrap();
    assert_eq!(aws.rate_limited(), 1);
}

#[tokio::test]
async fn the_default_limit_is_ten_per_second_after_a_burst_of_five() {
    let stamps = Arc::new(Stamps::new("none", 0));
    let proxy = AwsProxy::start(moto::endpoint(), stamps.clone()).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    let iam = aws.iam();
    // Seven calls at once: five pass at once, the sixth and seventh wait for their turn.
    let calls = (0..7).map(|_| iam.list_users().send());
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    assert!(aws.rate_limited() >= 1, "{}", aws.rate_limited());
    let mut at: Vec<Instant> = stamps.seen().iter().map(|(_, t)| *t).collect();
    at.sort();
    // The seventh left at least two periods of 100 ms after the burst (less a tolerance).
    let spread = at[6].duration_since(at[0]);
    assert!(spread >= Duration::from_millis(150), "{spread:?}");
}

#[tokio::test]
async fn a_call_throttled_four_times_succeeds_on_its_fifth_attempt() {
    let throttle = Arc::new(Throttle::new("ListUsers", 4));
    let proxy = AwsProxy::start(moto::endpoint(), throttle.clone()).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    aws.iam().list_users().send().await.unwrap();
    assert_eq!(throttle.refused(), 4);
    assert_eq!(throttle.forwarded(), 1);
}

#[tokio::test]
async fn a_call_throttled_on_every_attempt_fails_after_five_attempts() {
    let throttle = Arc::new(Throttle::new("ListUsers", usize::MAX));
    let proxy = AwsProxy::start(moto::endpoint(), throttle.clone()).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    let err = aws.iam().list_users().send().await.unwrap_err();
    let code = err.as_service_error().and_then(|e| {
        use aws_sdk_iam::error::ProvideErrorMetadata as _;
        e.code().map(str::to_owned)
    });
    assert_eq!(code.as_deref(), Some("Throttling"), "{err:?}");
    assert_eq!(throttle.refused(), 5);
    assert_eq!(throttle.forwarded(), 0);
}

/// `firebreak serve` counts its waits on `/metrics`: a key deactivation (an account check, a
/// read and a write) under a limit of one call per second waits at least once, and the page
/// says so for the base credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_the_waits_of_the_base_credentials_on_metrics() {
    let observer = moto::aws().await;
    let user = format!("served-{}", ulid::Ulid::new().to_string().to_lowercase());
    let (key_id, _) = crate::aws_iam::user_with_key(&observer, &user).await;

    let pbs = tempfile::tempdir().unwrap();
    std::fs::write(
        pbs.path().join("deactivate.yaml"),
        "name: deactivate\nmatch: {class: credential-exposure}\nsteps:\n  - action: aws.iam.deactivate-access-key\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svc = crate::service::start_with(
        dir.path(),
        pbs.path(),
        60,
        &[
            ("FIREBREAK_AWS__ENDPOINT_URL", moto::endpoint()),
            ("FIREBREAK_AWS__REGION", "us-east-1"),
            ("FIREBREAK_AWS__RATE_LIMIT_PER_SECOND", "1"),
            ("FIREBREAK_AWS__RATE_LIMIT_BURST", "1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    let client = reqwest::Client::new();
    let line = crate::aws_iam::trufflehog_line(&user, &key_id);
    assert_eq!(
        crate::service::post(&client, &svc.addr, line.into_bytes()).await,
        reqwest::StatusCode::ACCEPTED
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::aws_iam::keys(&observer, &user).await[&key_id] != "Inactive" {
        assert!(Instant::now() < deadline, "the key was not deactivated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let page = client
        .get(format!("http://{}/metrics", svc.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let waited: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("firebreak_aws_rate_limited_total{account=\"base\"} "))
        .unwrap_or_else(|| panic!("no waits of the base account in:\n{page}"))
        .trim()
        .parse()
        .unwrap();
    assert!(waited >= 1, "{page}");
}
