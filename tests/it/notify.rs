//! `notify.webhook` against a real HTTP receiver on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use chrono::TimeZone as _;
use firebreak::action::{ActionCtx, ActionError, Outcome, Plan, StepInput, action};
use firebreak::config::{Config, WebhookEndpoint};
use firebreak::finding::{Class, Finding, FindingDraft, ResourceRef, Severity};
use firebreak::redact::Redacted;
use serde_json::{Value, json};

use crate::support::receiver::Receiver;

const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn finding(title: &str) -> Finding {
    FindingDraft {
        source: "test",
        rule: "AccessKeyLeaked".into(),
        title: title.into(),
        severity: Severity::High,
        class: Class::CredentialExposure,
        resources: vec![ResourceRef::AwsIamAccessKey {
            account: Some("123456789012".into()),
            user: Some("ci-bot".into()),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        }],
        labels: BTreeMap::new(),
        fields: json!({}),
        observed_at: chrono::Utc
            .with_ymd_and_hms(2025, 1, 2, 3, 4, 5)
            .single()
            .expect("valid time"),
    }
    .build()
}

fn ctx(endpoints: &[(&str, &str)]) -> ActionCtx {
    let mut cfg = Config::default();
    cfg.notify.timeout_seconds = 5;
    for (name, url) in endpoints {
        cfg.notify.webhooks.insert(
            (*name).to_owned(),
            WebhookEndpoint {
                url: Redacted::new((*url).to_owned()),
            },
        );
    }
    ActionCtx::from_config(&cfg).expect("http client")
}

fn input<'a>(finding: &'a Finding, params: &'a Value) -> StepInput<'a> {
    StepInput {
        finding,
        playbook: "leaked-key",
        step: 1,
        params,
        execution: None,
    }
}

async fn plan(ctx: &ActionCtx, input: StepInput<'_>) -> Result<Plan, ActionError> {
    action("notify.webhook")
        .expect("registered")
        .plan(ctx, input)
        .await
}

async fn apply(ctx: &ActionCtx, input: StepInput<'_>, plan: &Plan) -> Result<Outcome, ActionError> {
    action("notify.webhook")
        .expect("registered")
        .apply(ctx, input, plan)
        .await
}

#[tokio::test]
async fn plan_sends_nothing_and_shows_the_redacted_target() {
    let rx = Receiver::start().await;
    let f = finding("Access key used from a new country");
    let params = json!({ "url": rx.url("/services/T000/B000/SECRETPART?token=abc") });
    let ctx = ctx(&[]);

    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");

    assert!(rx.requests().is_empty(), "plan must not send");
    let port = rx.base.rsplit(':').next().expect("port");
    assert_eq!(plan.target, format!("http://127.0.0.1:{port}/…"));
    assert_eq!(
        plan.summary,
        format!("POST a JSON notification about AccessKeyLeaked to http://127.0.0.1:{port}/…")
    );
    assert!(!plan.noop);
    assert!(!plan.reversible);
    assert_eq!(plan.changes.len(), 1);
    let change = &plan.changes[0];
    assert_eq!(change.op, "send");
    assert_eq!(change.path, plan.target);
    let body = change.to.as_ref().expect("body");
    assert_eq!(body["finding"]["rule"], "AccessKeyLeaked");
    assert_eq!(body["finding"]["severity"], "high");
    assert_eq!(body["finding"]["class"], "credential-exposure");
    assert_eq!(body["playbook"], "leaked-key");
    assert_eq!(body["step"], 1);
    assert_eq!(
        body["idempotency_key"],
        input(&f, &params).idempotency_key()
    );
    assert_eq!(plan.permissions[0].system, "network");
}

#[tokio::test]
async fn plan_is_stable_for_the_same_input() {
    let rx = Receiver::start().await;
    let f = finding("t");
    let params = json!({ "url": rx.url("/hook") });
    let ctx = ctx(&[]);
    let a = plan(&ctx, input(&f, &params)).await.expect("plan");
    let b = plan(&ctx, input(&f, &params)).await.expect("plan");
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.hash, a.compute_hash());
}

#[tokio::test]
async fn apply_posts_once_with_finding_and_idempotency_key() {
    let rx = Receiver::start().await;
    let f = finding("Access key used from a new country");
    let params = json!({ "url": rx.url("/hook") });
    let ctx = ctx(&[]);
    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");

    let outcome = apply(&ctx, input(&f, &params), &plan).await.expect("apply");

    assert_eq!(outcome.result, "applied");
    assert_eq!(outcome.detail, json!({"status": 200}));
    assert_eq!(outcome.target, plan.target);
    let got = rx.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.uri, "/hook");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert!(
        req.header("user-agent")
            .is_some_and(|ua| ua.starts_with("firebreak/")),
        "{req:?}"
    );
    let key = input(&f, &params).idempotency_key();
    assert_eq!(req.header("idempotency-key"), Some(key.as_str()));
    let body = req.json();
    assert_eq!(body["idempotency_key"], key.as_str());
    assert_eq!(body["plan_hash"], plan.hash.as_str());
    assert_eq!(body["finding"]["id"], f.id.to_string());
    assert_eq!(body["finding"]["source"], "test");
    assert_eq!(
        body["finding"]["title"],
        "Access key used from a new country"
    );
    assert_eq!(
        body["finding"]["resources"][0]["access_key_id"],
        "AKIAIOSFODNN7EXAMPLE"
    );
    assert_eq!(body["finding"]["observed_at"], "2025-01-02T03:04:05Z");
    // What was sent is what the plan showed, plus the plan hash.
    let mut shown = plan.changes[0].to.clone().expect("body");
    shown["plan_hash"] = json!(plan.hash);
    assert_eq!(body, shown);
}

#[tokio::test]
async fn applying_twice_sends_the_same_idempotency_key() {
    let rx = Receiver::start().await;
    let f = finding("t");
    let params = json!({ "url": rx.url("/hook") });
    let ctx = ctx(&[]);
    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");

    apply(&ctx, input(&f, &params), &plan).await.expect("first");
    apply(&ctx, input(&f, &params), &plan)
        .await
        .expect("second");

    let got = rx.requests();
    assert_eq!(got.len(), 2);
    assert!(got[0].header("idempotency-key").is_some());
    assert_eq!(
        got[0].header("idempotency-key"),
        got[1].header("idempotency-key")
    );
    assert_eq!(got[0].body, got[1].body);
}

#[tokio::test]
async fn configured_endpoint_is_used_and_never_shown() {
    let rx = Receiver::start().await;
    let f = finding("t");
    let secret_url = rx.url("/services/T000/B000/SECRETPART");
    let ctx = ctx(&[("secops", &secret_url)]);
    let params = json!({ "endpoint": "secops" });

    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");
    assert_eq!(plan.target, "endpoint:secops");
    let outcome = apply(&ctx, input(&f, &params), &plan).await.expect("apply");

    assert_eq!(outcome.target, "endpoint:secops");
    let got = rx.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/services/T000/B000/SECRETPART");
    let rendered = format!(
        "{plan:?}{}{outcome:?}{}",
        serde_json::to_string(&plan).expect("json"),
        serde_json::to_string(&outcome).expect("json")
    );
    assert!(!rendered.contains("SECRETPART"), "{rendered}");
    assert!(!rendered.contains(&rx.base), "{rendered}");
}

#[tokio::test]
async fn unknown_endpoint_is_shown_in_the_plan_and_fails_apply_permanently() {
    let ctx = ctx(&[
        ("secops", "https://hooks.example.com/SECRETPART"),
        ("oncall", "https://hooks.example.com/OTHERSECRET"),
    ]);
    let f = finding("t");
    let params = json!({ "endpoint": "secop" });

    let plan = plan(&ctx, input(&f, &params))
        .await
        .expect("a plan, saying what is wrong");
    assert!(plan.summary.contains("NOT CONFIGURED"), "{}", plan.summary);
    assert!(
        plan.summary.contains("did you mean `secops`?"),
        "{}",
        plan.summary
    );
    assert_eq!(plan.target, "endpoint:secop");

    let err = apply(&ctx, input(&f, &params), &plan)
        .await
        .expect_err("unknown endpoint");
    assert!(matches!(err, ActionError::Permanent(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("secop"), "{msg}");
    assert!(msg.contains("oncall, secops"), "{msg}");
    assert!(msg.contains("did you mean `secops`?"), "{msg}");
    for text in [
        &msg,
        &plan.summary,
        &serde_json::to_string(&plan).unwrap_or_default(),
    ] {
        assert!(!text.contains("hooks.example.com"), "{text}");
    }
}

#[tokio::test]
async fn service_unavailable_is_retryable() {
    let rx = Receiver::start().await;
    rx.respond_with(503);
    let f = finding("t");
    let params = json!({ "url": rx.url("/hook") });
    let ctx = ctx(&[]);
    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");

    let err = apply(&ctx, input(&f, &params), &plan)
        .await
        .expect_err("503");

    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(rx.requests().len(), 1);
}

#[tokio::test]
async fn too_many_requests_is_retryable() {
    let rx = Receiver::start().await;
    rx.respond_with(429);
    let f = finding("t");
    let params = json!({ "url": rx.url("/hook") });
    let ctx = ctx(&[]);
    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");
    let err = apply(&ctx, input(&f, &params), &plan)
        .await
        .expect_err("429");
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn bad_request_is_permanent() {
    let rx = Receiver::start().await;
    rx.respond_with(400);
    let f = finding("t");
    let params = json!({ "url": rx.url("/hook") });
    let ctx = ctx(&[]);
    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");

    let err = apply(&ctx, input(&f, &params), &plan)
        .await
        .expect_err("400");

    assert!(matches!(err, ActionError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("400"), "{err}");
    assert!(!err.to_string().contains("SHOULD-NOT-LEAK"), "{err}");
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // Bind and drop a listener to get a port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let f = finding("t");
    let params = json!({ "url": format!("http://127.0.0.1:{port}/services/T000/B000/SECRETPART") });
    let ctx = ctx(&[]);
    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");

    let err = apply(&ctx, input(&f, &params), &plan)
        .await
        .expect_err("nothing listens");

    assert!(err.is_retryable(), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("SECRETPART"), "{err:?}");
}

#[tokio::test]
async fn token_in_url_path_never_appears_in_plan_outcome_or_errors() {
    let rx = Receiver::start().await;
    let f = finding("t");
    let params = json!({ "url": rx.url("/services/T000/B000/SECRETPART") });
    let ctx = ctx(&[]);

    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");
    let outcome = apply(&ctx, input(&f, &params), &plan).await.expect("apply");
    rx.respond_with(500);
    let retryable = apply(&ctx, input(&f, &params), &plan)
        .await
        .expect_err("500");
    rx.respond_with(404);
    let permanent = apply(&ctx, input(&f, &params), &plan)
        .await
        .expect_err("404");

    // The receiver did get the real URL.
    assert!(rx.requests().iter().all(|r| r.uri.ends_with("SECRETPART")));
    let outputs = [
        format!("{plan:?}"),
        serde_json::to_string(&plan).expect("json"),
        format!("{outcome:?}"),
        serde_json::to_string(&outcome).expect("json"),
        format!("{retryable} {retryable:?}"),
        format!("{permanent} {permanent:?}"),
    ];
    for out in outputs {
        assert!(!out.contains("SECRETPART"), "{out}");
        assert!(!out.contains("T000"), "{out}");
        assert!(!out.contains("SHOULD-NOT-LEAK"), "{out}");
    }
}

#[tokio::test]
async fn secret_in_finding_title_never_reaches_the_receiver() {
    let rx = Receiver::start().await;
    let f = finding(&format!(
        "Leaked credentials in CI log: aws_secret_access_key={AWS_SECRET}"
    ));
    let params = json!({ "url": rx.url("/hook") });
    let ctx = ctx(&[]);

    let plan = plan(&ctx, input(&f, &params)).await.expect("plan");
    let outcome = apply(&ctx, input(&f, &params), &plan).await.expect("apply");

    let got = rx.requests();
    assert_eq!(got.len(), 1);
    for out in [
        got[0].body.clone(),
        format!("{:?}", got[0].headers),
        serde_json::to_string(&plan).expect("json"),
        serde_json::to_string(&outcome).expect("json"),
    ] {
        assert!(!out.contains("wJalrXUtnFEMI"), "{out}");
    }
    assert!(
        got[0].json()["finding"]["title"]
            .as_str()
            .is_some_and(|t| t.contains("aws_secret_access_key=[REDACTED]")),
        "{}",
        got[0].body
    );
}

#[tokio::test]
async fn rollback_is_a_documented_no_op() {
    let a = action("notify.webhook").expect("registered");
    assert!(!a.reversible());
    let outcome = Outcome {
        action: "notify.webhook".into(),
        target: "endpoint:x".into(),
        result: "applied".into(),
        detail: json!({"status": 200}),
        undo: None,
    };
    a.rollback(&ctx(&[]), &outcome).await.expect("no-op");
}
