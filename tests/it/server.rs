//! The service over real HTTP: the axum router on 127.0.0.1, a real SQLite store in a temp
//! directory, real scanner fixtures posted unchanged (or derived from a real fixture where no
//! sample exists, saying which fields change).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use firebreak::config::{Config, ParserScope, TokenConfig, TokenName};
use firebreak::ingest::{Intake, IntakeConfig};
use firebreak::redact::Redacted;
use firebreak::server::{AppState, router, serve_http};
use firebreak::store::sqlite::SqliteStore;
use firebreak::store::{AuditQuery, Store};
use firebreak::telemetry::metrics::Metrics;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::{Notify, oneshot};

use crate::fixtures::{self, FALCO_SHELL, GD_TOR_IAM};

const TOKEN: &str = "test-ingest-token-4f1c2e";

/// A running service and its store.
struct Service {
    base: String,
    url: String,
    store: Arc<SqliteStore>,
    state: AppState<SqliteStore>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl Service {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::default();
        // A plain token (allowed on every parser, named `token-1`), as a single-source setup
        // configures it.
        cfg.server.tokens = vec![TokenConfig::plain(0, Redacted::new(TOKEN.to_owned()))];
        tweak(&mut cfg);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let store = Arc::new(SqliteStore::open(&url).await.unwrap());
        let metrics = Arc::new(Metrics::new());
        let (intake, _writer) = Intake::start(
            Arc::clone(&store),
            IntakeConfig::from_config(&cfg, Arc::clone(&metrics)),
            Arc::new(Notify::new()),
        );
        let state = AppState::new(intake, Arc::clone(&store), metrics, &cfg.server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = firebreak::server::HttpLimits::from_config(&cfg.server);
        tokio::spawn(serve_http(
            listener,
            router(state.clone()),
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            base,
            url,
            store,
            state,
            http: reqwest::Client::new(),
            _dir: dir,
            _stop: stop,
        }
    }

    async fn post(&self, parser: &str, body: Vec<u8>) -> reqwest::Response {
        self.post_as(TOKEN, parser, body).await
    }

    async fn post_as(&self, token: &str, parser: &str, body: Vec<u8>) -> reqwest::Response {
        self.post_with(parser, body, Some(&format!("Bearer {token}")))
            .await
    }

    async fn post_with(
        &self,
        parser: &str,
        body: Vec<u8>,
        authorization: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/findings/{parser}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// Findings waiting to be matched: everything stored, as no engine runs here.
    async fn stored(&self) -> i64 {
        self.store.backlog().await.unwrap().0
    }
}

/// Derived from the real Falco fixture: Falcosidekick posts Falco's json_output plus a `uuid`,
/// with its custom fields (here `cluster`) merged into `output_fields`. `pod` renames the pod so
/// each copy is a distinct finding.
fn sidekick(pod: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixtures::bytes(FALCO_SHELL)).unwrap();
    v["uuid"] = json!("5c8ab45b-0a6b-4a3c-8a83-5e6a64b0f5d1");
    v["output_fields"]["cluster"] = json!("prod-eu");
    v["output_fields"]["k8s.pod.name"] = json!(pod);
    serde_json::to_vec(&v).unwrap()
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.unwrap()
}

/// The token a Falcosidekick is given in the scoped-token tests.
const SIDEKICK_TOKEN: &str = "sidekick-token-51f0a9";

/// A `server.tokens` entry as a scoped configuration writes it.
fn scoped(name: &str, token: &str, parsers: &[&str]) -> TokenConfig {
    TokenConfig {
        name: TokenName(name.to_owned()),
        token: Some(Redacted::new(token.to_owned())),
        token_env: None,
        parsers: parsers
            .iter()
            .map(|p| ParserScope((*p).to_owned()))
            .collect(),
        rate_limit: None,
    }
}

/// A service with a Falcosidekick token allowed on `falco` and `auto` only, beside the plain one.
async fn with_sidekick_token() -> Service {
    Service::start(|c| {
        c.server
            .tokens
            .push(scoped("falcosidekick", SIDEKICK_TOKEN, &["falco", "auto"]));
    })
    .await
}

#[tokio::test]
async fn falco_fixture_posted_as_is_is_stored_before_202_with_a_receipt() {
    let svc = Service::start(|_| {}).await;
    let resp = svc.post("falco", fixtures::bytes(FALCO_SHELL)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body = json_of(resp).await;
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["duplicates"], 0);
    assert_eq!(body["rejected"], json!([]));
    let id = body["receipts"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["receipts"][0]["duplicate"], false);

    assert_eq!(svc.stored().await, 1);
    let audit = svc.store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit[0].kind, "findings.received");
    assert_eq!(audit[0].detail["findings"][0]["id"], id.as_str());
    assert_eq!(audit[0].detail["intake"], "http:token-1");
}

#[tokio::test]
async fn falcosidekick_and_eventbridge_payloads_are_accepted_unchanged() {
    let svc = Service::start(|_| {}).await;
    let resp = svc.post("auto", sidekick("kubecon")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(resp).await["accepted"], 1);

    // An EventBridge API destination posts the event envelope as it is.
    let resp = svc.post("guardduty", fixtures::bytes(GD_TOR_IAM)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(resp).await["accepted"], 1);
    let resp = svc.post("auto", fixtures::bytes(GD_TOR_IAM)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        json_of(resp).await["duplicates"],
        1,
        "same finding as above"
    );

    assert_eq!(svc.stored().await, 2);
}

#[tokio::test]
async fn missing_or_wrong_token_gets_401_without_detail_and_stores_nothing() {
    let svc = Service::start(|_| {}).await;
    for auth in [
        None,
        Some("Bearer not-the-token"),
        Some(&*format!("Bearer {TOKEN}x")),
        Some(&*format!("Basic {TOKEN}")),
        Some("Bearer"),
    ] {
        let resp = svc
            .post_with("falco", fixtures::bytes(FALCO_SHELL), auth)
            .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        assert_eq!(resp.text().await.unwrap(), "", "no detail for {auth:?}");
    }
    // Authentication comes before anything else: an unknown parser is not revealed either.
    let resp = svc.post_with("nope", b"{}".to_vec(), None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(svc.stored().await, 0);
    assert!(
        svc.store
            .audit_list(AuditQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn without_configured_tokens_every_ingest_request_is_refused() {
    let svc = Service::start(|c| c.server.tokens.clear()).await;
    for auth in [None, Some("Bearer "), Some("Bearer anything")] {
        let resp = svc
            .post_with("falco", fixtures::bytes(FALCO_SHELL), auth)
            .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(svc.stored().await, 0);
}

#[tokio::test]
async fn unknown_parser_gets_404_naming_the_valid_ids() {
    let svc = Service::start(|_| {}).await;
    let resp = svc.post("falcoo", fixtures::bytes(FALCO_SHELL)).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = json_of(resp).await;
    let ids: Vec<&str> = body["parsers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ids.contains(&"auto") && ids.contains(&"falco") && ids.contains(&"guardduty"));
    assert_eq!(body["did_you_mean"], "falco");
    assert_eq!(svc.stored().await, 0);
}

#[tokio::test]
async fn body_over_the_limit_gets_413_and_stores_nothing() {
    let svc = Service::start(|c| c.server.max_body_bytes = 256).await;
    let body = fixtures::bytes(FALCO_SHELL);
    assert!(body.len() > 256);
    let resp = svc.post("falco", body).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_of(resp).await["max_body_bytes"], 256);
    assert_eq!(svc.stored().await, 0);
}

#[tokio::test]
async fn an_all_garbage_body_gets_422_naming_the_reason_without_echoing_it() {
    let svc = Service::start(|_| {}).await;
    // A token-shaped marker, assembled at run time (no credential-shaped literal committed).
    let marker = format!("{}_{}", "ghp", "0123456789abcdefghijklmnopqrstuvwxyzAB");
    let garbage = format!("this is not json {marker}\nnor is {marker} this\n");
    let resp = svc.post("auto", garbage.into_bytes()).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&marker), "payload echoed: {text}");
    assert!(!text.contains("not json"), "payload echoed: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["accepted"], 0);
    let reason = body["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("invalid JSON"), "{reason}");

    // A Falco record missing its rule (derived from the real fixture): rejected at `/rule`.
    let mut v: Value = serde_json::from_slice(&fixtures::bytes(FALCO_SHELL)).unwrap();
    v.as_object_mut().unwrap().remove("rule");
    let resp = svc.post("falco", serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = json_of(resp).await;
    assert_eq!(body["rejected"][0]["pointer"], "/rule");
    assert_eq!(body["rejected"][0]["index"], 0);

    assert_eq!(svc.stored().await, 0);
}

/// A body of a hundred thousand tiny broken records costs a count, not a row and an answer
/// line each: the first 100 are kept with their reasons, the rest counted, and the service
/// goes on accepting findings.
#[tokio::test]
async fn a_flood_of_broken_records_is_answered_and_stored_as_a_bounded_summary() {
    let records = 100_000;
    // Exactly at the records cap: taken (one more would be refused whole, see below).
    let svc = Service::start(|c| c.server.max_records_per_request = records).await;
    let body = "{}\n".repeat(records).into_bytes();
    let resp = svc.post("auto", body).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 64 * 1024, "answer of {} bytes", text.len());
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["rejected_total"], records);
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 100);
    assert_eq!(answer["rejected"][99]["index"], 99);

    let mut conn = sqlx::SqliteConnection::connect(&svc.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 100);
    let audit = svc.store.audit_list(AuditQuery::default()).await.unwrap();
    let summary = audit.iter().find(|r| r.kind == "input.rejected").unwrap();
    assert_eq!(summary.detail["records"], records);
    assert_eq!(summary.detail["kept"], 100);

    let resp = svc.post("falco", fixtures::bytes(FALCO_SHELL)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

/// `n` copies of the real Falco fixture (one JSON line each; copies of one alert are still
/// `n` records, deduplicated only once stored).
fn falco_lines(n: usize) -> Vec<u8> {
    let line = String::from_utf8(fixtures::bytes(FALCO_SHELL)).unwrap();
    format!("{}\n", line.trim()).repeat(n).into_bytes()
}

#[tokio::test]
async fn a_request_over_the_records_cap_gets_413_naming_limit_and_count_and_stores_nothing() {
    let svc = Service::start(|c| c.server.max_records_per_request = 3).await;

    let resp = svc.post("falco", falco_lines(4)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("shell"), "payload echoed: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["max_records_per_request"], 3);
    assert_eq!(body["records"], 4);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("max_records_per_request") && error.contains('4') && error.contains('3'),
        "{error}"
    );

    // Rejected records count too: two good lines and two broken ones are four records.
    let good = String::from_utf8(falco_lines(2)).unwrap();
    let line = good.lines().next().unwrap();
    let mixed = format!("{good}{}\n{}\n", &line[..line.len() / 2], &line[..10]);
    let resp = svc.post("falco", mixed.into_bytes()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_of(resp).await["records"], 4);

    // Nothing of either request was stored: no finding, no rejected record, no audit line.
    assert_eq!(svc.stored().await, 0);
    let mut conn = sqlx::SqliteConnection::connect(&svc.url).await.unwrap();
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rejected, 0);
    let audit = svc.store.audit_list(AuditQuery::default()).await.unwrap();
    assert!(
        !audit
            .iter()
            .any(|r| r.kind == "findings.received" || r.kind.starts_with("input.")),
        "{audit:#?}"
    );

    // At the cap the request is taken.
    let resp = svc.post("falco", falco_lines(3)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(resp).await["receipts"].as_array().unwrap().len(), 3);
    assert_eq!(svc.stored().await, 1);
}

#[tokio::test]
async fn by_default_a_request_of_more_than_ten_thousand_records_gets_413() {
    // The body limit raised so that only the records cap applies.
    let svc = Service::start(|c| c.server.max_body_bytes = 64 * 1024 * 1024).await;
    let resp = svc.post("falco", falco_lines(10_001)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = json_of(resp).await;
    assert_eq!(body["max_records_per_request"], 10_000);
    assert_eq!(body["records"], 10_001);
    assert_eq!(svc.stored().await, 0);
}

#[tokio::test]
async fn a_bad_record_is_rejected_while_its_good_sibling_is_accepted() {
    let svc = Service::start(|_| {}).await;
    let good = String::from_utf8(fixtures::bytes(FALCO_SHELL)).unwrap();
    let lines = format!("{}\n{{\"broken\": \n", good.trim());
    let resp = svc.post("falco", lines.into_bytes()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body = json_of(resp).await;
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["line"], 2);
    assert_eq!(svc.stored().await, 1);
}

#[tokio::test]
async fn posting_the_same_finding_twice_returns_a_duplicate_receipt_with_the_same_id() {
    let svc = Service::start(|_| {}).await;
    let first = json_of(svc.post("falco", fixtures::bytes(FALCO_SHELL)).await).await;
    let resp = svc.post("falco", fixtures::bytes(FALCO_SHELL)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let second = json_of(resp).await;
    assert_eq!(second["accepted"], 0);
    assert_eq!(second["duplicates"], 1);
    assert_eq!(second["receipts"][0]["duplicate"], true);
    assert_eq!(second["receipts"][0]["id"], first["receipts"][0]["id"]);
    assert_eq!(svc.stored().await, 1);
    let id = first["receipts"][0]["id"].as_str().unwrap();
    assert_eq!(svc.store.duplicates(id).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_are_all_acknowledged_and_share_commits() {
    let svc = Arc::new(Service::start(|_| {}).await);
    let (tasks, per_task) = (16, 13);
    let requests = tasks * per_task;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let svc = Arc::clone(&svc);
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_task {
                let resp = svc.post("falco", sidekick(&format!("pod-{t}-{i}"))).await;
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
                let body = json_of(resp).await;
                assert_eq!(body["accepted"], 1);
                ids.push(body["receipts"][0]["id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = HashSet::new();
    for h in handles {
        ids.extend(h.await.unwrap());
    }
    // Every request got its own finding's receipt back from the shared commits.
    assert_eq!(ids.len(), requests);
    assert_eq!(svc.stored().await, i64::try_from(requests).unwrap());

    let commits = svc.state.metrics.commits();
    assert!(commits >= 1);
    assert!(
        commits < u64::try_from(requests).unwrap(),
        "{commits} commits for {requests} requests: no group commit"
    );
    let page = svc.get("/metrics").await.text().await.unwrap();
    assert!(
        page.contains(&format!("firebreak_ingest_batch_size_count {commits}")),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_with_retry_after_and_stores_only_what_it_acknowledged() {
    let svc = Arc::new(Service::start(|c| c.server.queue_capacity = 1).await);
    let (tasks, per_task) = (16, 13);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let svc = Arc::clone(&svc);
        handles.push(tokio::spawn(async move {
            let (mut accepted, mut busy) = (0_i64, 0_i64);
            for i in 0..per_task {
                let resp = svc.post("falco", sidekick(&format!("pod-{t}-{i}"))).await;
                match resp.status() {
                    StatusCode::ACCEPTED => accepted += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        let wait: u64 = resp.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert!(wait >= 1);
                        busy += 1;
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
            (accepted, busy)
        }));
    }
    let (mut accepted, mut busy) = (0, 0);
    for h in handles {
        let (a, b) = h.await.unwrap();
        accepted += a;
        busy += b;
    }
    assert!(
        busy >= 1,
        "no 429 with a one-job queue under 16 concurrent clients"
    );
    assert_eq!(
        svc.stored().await,
        accepted,
        "stored exactly what was acknowledged"
    );
}

/// The queue is bounded by bytes too: with room for one finding's worth of bytes, concurrent
/// clients get 429 although the queue has room for a thousand requests, and exactly what was
/// acknowledged is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_of_bytes_answers_429_and_stores_only_what_it_acknowledged() {
    let svc = Arc::new(
        Service::start(|c| {
            c.server.queue_capacity = 1024;
            c.server.queue_bytes = 2048;
        })
        .await,
    );
    let mut handles = Vec::new();
    for t in 0..16 {
        let svc = Arc::clone(&svc);
        handles.push(tokio::spawn(async move {
            let (mut accepted, mut busy) = (0_i64, 0_i64);
            for i in 0..13 {
                let resp = svc.post("falco", sidekick(&format!("pod-{t}-{i}"))).await;
                match resp.status() {
                    StatusCode::ACCEPTED => accepted += 1,
                    StatusCode::TOO_MANY_REQUESTS => busy += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (accepted, busy)
        }));
    }
    let (mut accepted, mut busy) = (0, 0);
    for h in handles {
        let (a, b) = h.await.unwrap();
        accepted += a;
        busy += b;
    }
    assert!(busy >= 1, "no 429 with room for one finding's bytes");
    assert!(accepted >= 1);
    assert_eq!(svc.stored().await, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_tokens_rate_limit_get_429_with_retry_after_and_other_tokens_go_on() {
    // One request a second per token by default; `eventbridge` has its own override of 2.
    let svc = Service::start(|c| {
        c.server.rate_limit_per_token = 1;
        c.server.tokens = vec![
            scoped("sidekick", SIDEKICK_TOKEN, &["*"]),
            scoped("other", "other-token-7d1e", &["*"]),
            TokenConfig {
                rate_limit: Some(2),
                ..scoped("eventbridge", "eventbridge-token-0b2a", &["*"])
            },
        ];
    })
    .await;
    // Two requests at once with one token: one fits its budget, the other gets 429 (however
    // slow the machine, both are checked long before a second has passed).
    let (a, b) = tokio::join!(
        svc.post_as(SIDEKICK_TOKEN, "falco", sidekick("pod-a")),
        svc.post_as(SIDEKICK_TOKEN, "falco", sidekick("pod-b")),
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS]
    );
    let refused = if a.status() == StatusCode::TOO_MANY_REQUESTS {
        a
    } else {
        b
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(
        json_of(refused).await["error"]
            .as_str()
            .unwrap()
            .contains("token")
    );
    // Another token posting to the same route has its own budget.
    let other = svc
        .post_as("other-token-7d1e", "falco", sidekick("pod-c"))
        .await;
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    // A token's own `rate_limit` overrides the server-wide one.
    let (c, d) = tokio::join!(
        svc.post_as("eventbridge-token-0b2a", "auto", sidekick("pod-d")),
        svc.post_as("eventbridge-token-0b2a", "auto", sidekick("pod-e")),
    );
    assert_eq!(c.status(), StatusCode::ACCEPTED);
    assert_eq!(d.status(), StatusCode::ACCEPTED);
    assert_eq!(svc.stored().await, 4);
}

#[tokio::test]
async fn a_store_failure_answers_503_with_a_request_id_and_no_payload() {
    let svc = Service::start(|_| {}).await;
    // Break the real database under the running service.
    let mut conn = sqlx::SqliteConnection::connect(&svc.url).await.unwrap();
    sqlx::query("ALTER TABLE findings RENAME TO findings_gone")
        .execute(&mut conn)
        .await
        .unwrap();
    let resp = svc.post("falco", fixtures::bytes(FALCO_SHELL)).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("Terminal shell"), "payload echoed: {text}");
    assert!(
        !text.contains("findings_gone"),
        "internal detail leaked: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["request_id"].as_str().unwrap().len(), 26);
}

#[tokio::test]
async fn healthz_is_ok_and_readyz_waits_for_the_ready_flag() {
    let svc = Service::start(|_| {}).await;
    let resp = svc.get("/healthz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");

    let resp = svc.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(resp).await;
    assert_eq!(body["ready"], false);
    assert!(body["reason"].as_str().unwrap().contains("playbooks"));

    svc.state.ready.store(true, Ordering::Release);
    let resp = svc.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_export_firebreak_families_with_bounded_labels() {
    let svc = Service::start(|_| {}).await;
    assert_eq!(
        svc.post("falco", fixtures::bytes(FALCO_SHELL))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let _ = svc.post_with("falco", Vec::new(), None).await;
    let resp = svc.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let page = resp.text().await.unwrap();
    for line in [
        "firebreak_findings_received_total{source=\"falco\"} 1",
        "firebreak_http_requests_total{route=\"/v1/findings/{parser}\",status=\"202\"} 1",
        "firebreak_http_requests_total{route=\"/v1/findings/{parser}\",status=\"401\"} 1",
        "firebreak_ingest_batch_size_count 1",
        "firebreak_queue_depth",
    ] {
        assert!(page.contains(line), "missing `{line}` in:\n{page}");
    }
    // No resource names or ids in labels.
    assert!(!page.contains("kubecon"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn findings_grouped_into_one_commit_keep_the_token_they_arrived_with() {
    let svc = Arc::new(
        Service::start(|c| {
            c.server.tokens = vec![
                scoped("sidekick", SIDEKICK_TOKEN, &["falco", "auto"]),
                scoped("other", "other-token-7d1e", &["*"]),
            ];
        })
        .await,
    );
    let mut handles = Vec::new();
    for t in 0..8 {
        let svc = Arc::clone(&svc);
        let (name, token, route) = if t % 2 == 0 {
            ("sidekick", SIDEKICK_TOKEN, "falco")
        } else {
            ("other", "other-token-7d1e", "auto")
        };
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..5 {
                let resp = svc
                    .post_as(token, route, sidekick(&format!("pod-{t}-{i}")))
                    .await;
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
                let id = json_of(resp).await["receipts"][0]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                out.push((id, format!("http:{name}")));
            }
            out
        }));
    }
    let mut expected = Vec::new();
    for h in handles {
        expected.extend(h.await.unwrap());
    }
    let audit = svc.store.audit_list(AuditQuery::default()).await.unwrap();
    for (id, intake) in expected {
        let rec = audit
            .iter()
            .find(|r| {
                r.kind == "findings.received"
                    && r.detail["findings"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|f| f["id"] == id.as_str()))
            })
            .unwrap();
        assert_eq!(rec.detail["intake"], intake.as_str());
    }
}

const TRUFFLEHOG: &str = "trufflehog/trufflehog-v3-git-aws-canary.jsonl";

#[tokio::test]
async fn a_falcosidekick_token_cannot_post_guardduty_or_trufflehog_to_their_routes() {
    let svc = with_sidekick_token().await;
    for (parser, fixture) in [("guardduty", GD_TOR_IAM), ("trufflehog", TRUFFLEHOG)] {
        let resp = svc
            .post_as(SIDEKICK_TOKEN, parser, fixtures::bytes(fixture))
            .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{parser}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains(SIDEKICK_TOKEN), "token echoed: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["token"], "falcosidekick");
        assert_eq!(body["parser"], parser);
        assert_eq!(body["allowed"], json!(["falco", "auto"]));
    }
    assert_eq!(svc.stored().await, 0);
    // The plain token of the same service may post them.
    let resp = svc.post("guardduty", fixtures::bytes(GD_TOR_IAM)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn on_auto_a_record_sniffed_for_a_parser_the_token_may_not_use_is_rejected() {
    let svc = with_sidekick_token().await;
    for (parser, fixture) in [("guardduty", GD_TOR_IAM), ("trufflehog", TRUFFLEHOG)] {
        let resp = svc
            .post_as(SIDEKICK_TOKEN, "auto", fixtures::bytes(fixture))
            .await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{parser}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains(SIDEKICK_TOKEN), "token echoed: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        let rejected = body["rejected"].as_array().unwrap();
        assert!(!rejected.is_empty());
        for r in rejected {
            assert_eq!(r["parser"], parser);
            assert_eq!(
                r["reason"],
                format!(
                    "token `falcosidekick` may not post {parser} records (it may post: falco, auto)"
                )
            );
        }
    }
    assert_eq!(svc.stored().await, 0);

    // A Falco record and a GuardDuty record in one body (JSON lines of the real fixtures):
    // the Falco one is accepted, the GuardDuty one rejected beside it.
    let falco: Value = serde_json::from_slice(&fixtures::bytes(FALCO_SHELL)).unwrap();
    let gd: Value = serde_json::from_slice(&fixtures::bytes(GD_TOR_IAM)).unwrap();
    let lines = format!("{falco}\n{gd}\n");
    let resp = svc
        .post_as(SIDEKICK_TOKEN, "auto", lines.into_bytes())
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body = json_of(resp).await;
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["parser"], "guardduty");
    assert_eq!(svc.stored().await, 1);
}

#[tokio::test]
async fn a_falcosidekick_token_posts_the_real_falco_fixture_and_its_findings_name_it() {
    let svc = with_sidekick_token().await;
    let resp = svc
        .post_as(SIDEKICK_TOKEN, "falco", fixtures::bytes(FALCO_SHELL))
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = svc
        .post_as(SIDEKICK_TOKEN, "auto", sidekick("kubecon-2"))
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(resp).await["accepted"], 1);
    let resp = svc.post("auto", sidekick("kubecon-3")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // What the engine claims (and playbooks match) names the token, as the store's column does.
    let claimed = svc
        .store
        .claim_findings("test", std::time::Duration::from_secs(60), 10, None)
        .await
        .unwrap();
    let mut intakes: Vec<&str> = claimed.iter().map(|c| c.finding.intake.as_str()).collect();
    intakes.sort_unstable();
    assert_eq!(
        intakes,
        ["http:falcosidekick", "http:falcosidekick", "http:token-1"]
    );
    let mut conn = sqlx::SqliteConnection::connect(&svc.url).await.unwrap();
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM findings WHERE intake != json_extract(body, '$.intake')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(mismatched, 0);
}

/// A raw TCP client that sends `bytes` and then nothing: a slowloris connection.
async fn silent_client(addr: &str, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // an answer (408, 400): read on until the close
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off_and_never_hold_the_service() {
    let svc = Service::start(|c| {
        c.server.header_read_timeout_seconds = 1;
        c.server.request_timeout_seconds = 1;
        c.server.max_connections = 16;
    })
    .await;
    let addr = svc.base.trim_start_matches("http://").to_owned();
    // Half-sent headers without a token, as a slowloris attack sends them.
    let mut slow = Vec::new();
    for _ in 0..12 {
        slow.push(silent_client(&addr, b"POST /v1/findings/auto HTTP/1.1\r\nHost: x\r\n").await);
    }
    // Over the cap: closed at once.
    let mut over = Vec::new();
    for _ in 0..8 {
        over.push(silent_client(&addr, b"GET /healthz HTTP/1.1\r\n").await);
    }
    let mut closed_at_once = 0;
    for s in &mut over {
        if closed_within(s, std::time::Duration::from_millis(500)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 4,
        "connections over the cap are closed: {closed_at_once} of 8"
    );
    // The health endpoint still answers: the slow connections cannot hold their slots.
    let health = svc.http.get(format!("{}/healthz", svc.base)).send().await;
    let ok = match health {
        Ok(r) => r.status() == StatusCode::OK,
        Err(_) => false,
    };
    let ok = ok || {
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        svc.http
            .get(format!("{}/healthz", svc.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    };
    assert!(ok, "/healthz answers while slow clients come and go");
    for s in &mut slow {
        assert!(
            closed_within(s, std::time::Duration::from_secs(5)).await,
            "a client that never finishes its headers is disconnected"
        );
    }

    // A body that stops half-way: 408 after the request timeout, nothing recorded.
    let body = fixtures::bytes(FALCO_SHELL);
    let head = format!(
        "POST /v1/findings/auto HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut half = silent_client(&addr, head.as_bytes()).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        half.write_all(&body[..body.len() / 2]).await.unwrap();
        let mut answer = vec![0u8; 256];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), half.read(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let findings: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM findings")
        .fetch_one(&mut sqlx::SqliteConnection::connect(&svc.url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(findings, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_within_its_bound_whatever_slow_clients_do() {
    let cfg = Config::default();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap(),
    );
    let metrics = Arc::new(Metrics::new());
    let (intake, _writer) = Intake::start(
        Arc::clone(&store),
        IntakeConfig::from_config(&cfg, Arc::clone(&metrics)),
        Arc::new(Notify::new()),
    );
    let state = AppState::new(intake, store, metrics, &cfg.server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let limits = firebreak::server::HttpLimits {
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..firebreak::server::HttpLimits::from_config(&cfg.server)
    };
    let server = tokio::spawn(serve_http(listener, router(state), limits, async move {
        let _ = stopped.await;
    }));
    // Connections that sent a request line and then stall (the header timeout is 5 s).
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(silent_client(&addr, b"POST /v1/findings/auto HTTP/1.1\r\n").await);
    }
    let _ = stop.send(());
    let done = tokio::time::timeout(std::time::Duration::from_secs(4), server).await;
    assert!(
        matches!(done, Ok(Ok(Ok(())))),
        "serve_http returns within its shutdown bound: {done:?}"
    );
}
