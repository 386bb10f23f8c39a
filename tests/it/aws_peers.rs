//! The AWS test peers themselves: moto behind the fault-injecting proxy.

use std::sync::Arc;

use crate::support::aws_proxy::{AwsProxy, Throttle};
use crate::support::moto;

/// A throttled call is retried by the SDK and lands once: the proxy refused it twice, moto saw
/// it once, and the user exists exactly once.
#[tokio::test]
async fn throttled_calls_are_retried_and_land_once() {
    let throttle = Arc::new(Throttle::new("CreateUser", 2));
    let proxy = AwsProxy::start(moto::endpoint(), throttle.clone()).await;
    let aws = moto::aws_at(&proxy.endpoint, "testing", "testing").await;
    let iam = aws.iam();
    let name = format!("throttled-{}", ulid::Ulid::new());
    iam.create_user().user_name(&name).send().await.unwrap();
    assert_eq!(throttle.refused(), 2);
    assert_eq!(throttle.forwarded(), 1);
    let creates = proxy.seen().iter().filter(|o| *o == "CreateUser").count();
    assert_eq!(creates, 3, "{:?}", proxy.seen());
    let users = moto::aws().await.iam().list_users().send().await.unwrap();
    let same = users
        .users()
        .iter()
        .filter(|u| u.user_name() == name)
        .count();
    assert_eq!(same, 1);
}
