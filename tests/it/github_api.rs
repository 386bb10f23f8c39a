//! The GitHub emulator itself: signed webhooks the way GitHub sends them (checked against
//! GitHub's published signature example and the real payloads in `tests/fixtures/`), request
//! bodies refused like GitHub's schema validation, and response shapes octocrab's typed models
//! read.

use std::collections::BTreeSet;

use firebreak::clients::github::GitHub;
use firebreak::config::GithubConfig;
use firebreak::finding::{GithubEvent, ParserChoice, parse_github_event, parse_input};
use firebreak::redact::Redacted;
use hmac::{Hmac, Mac};
use octocrab::Octocrab;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::fixtures;
use crate::support::github_api::{AlertSeed, GithubApi, ReviewState, generate_app_key, sign};
use crate::support::receiver::Receiver;

const SECRET: &str = "webhook-secret-for-tests";

/// `owner/deploy` with one manifest, a branch `fix` one commit ahead, and a token for `login`.
async fn setup(login: &str) -> (GithubApi, Octocrab) {
    let api = GithubApi::start().await;
    api.add_org("org");
    api.create_repo("org", "deploy", "main", &[("apps/a.yaml", "a: 1\n")]);
    let token = api.user_token(login);
    api.push_as(login, "org", "deploy", "main", "apps/b.yaml", "b: 1\n");
    let octo = Octocrab::builder()
        .base_uri(api.base.as_str())
        .unwrap()
        .personal_token(token)
        .build()
        .unwrap();
    octo.repos("org", "deploy")
        .create_ref(
            &octocrab::params::repos::Reference::Branch("fix".into()),
            api.log("org", "deploy", "main")[0].0.clone(),
        )
        .await
        .unwrap();
    octo.repos("org", "deploy")
        .create_file("apps/c.yaml", "add c", "c: 1\n")
        .branch("fix")
        .send()
        .await
        .unwrap();
    (api, octo)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn fixture(rel: &str) -> Value {
    serde_json::from_slice(&fixtures::bytes(rel)).unwrap()
}

#[test]
fn webhook_signature_matches_githubs_published_example() {
    // GitHub's documentation ("Validating webhook deliveries") gives this secret, payload and
    // signature.
    assert_eq!(
        sign("It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

#[tokio::test]
async fn webhooks_are_signed_and_shaped_like_the_real_deliveries() {
    let (api, octo) = setup("firebreak-bot").await;
    let (_, public) = generate_app_key();
    api.register_app(9, "firebreak-app", "org", &public, 77, &[]);
    let rx = Receiver::start().await;
    api.set_webhook(&rx.url("/v1/github"), SECRET);

    let pr = octo
        .pulls("org", "deploy")
        .create("Fix", "fix", "main")
        .body("body")
        .send()
        .await
        .unwrap();
    api.submit_review(
        "org",
        "deploy",
        pr.number,
        "alice",
        ReviewState::Approved,
        "ok",
    )
    .unwrap();
    let n = api.add_alert(
        "org",
        "deploy",
        AlertSeed {
            secret_type: "aws_access_key_id".into(),
            display: "Amazon AWS Access Key ID".into(),
            secret: "AKIAIOSFODNN7EXAMPLE".into(),
            validity: "active".into(),
            path: Some("config/prod.env".into()),
        },
    );
    octo.patch::<Value, _, _>(
        format!("/repos/org/deploy/secret-scanning/alerts/{n}"),
        Some(&json!({"state": "resolved", "resolution": "revoked"})),
    )
    .await
    .unwrap();
    api.push_as(
        "firebreak-bot",
        "org",
        "deploy",
        "fix",
        "apps/c.yaml",
        "c: 2\n",
    );
    api.close_pull_as("alice", "org", "deploy", pr.number);
    api.settle().await;

    let got = rx.requests();
    let events: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            (
                r.header("x-github-event").unwrap().to_owned(),
                r.json()["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("pull_request", "opened"),
        ("pull_request_review", "submitted"),
        ("secret_scanning_alert", "created"),
        ("secret_scanning_alert", "resolved"),
        ("pull_request", "synchronize"),
        ("pull_request", "closed"),
    ]
    .iter()
    .map(|(e, a)| ((*e).to_owned(), (*a).to_owned()))
    .collect();
    assert_eq!(events, expected);
    let deliveries = api.deliveries();
    for (r, d) in got.iter().zip(&deliveries) {
        // Checked independently of the emulator's own signing code.
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(r.body.as_bytes());
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(r.header("x-hub-signature-256"), Some(want.as_str()));
        assert_eq!(r.header("x-github-delivery"), Some(d.id.as_str()));
        assert_eq!(d.id.len(), 36, "a GUID");
        assert_eq!(d.status, Some(200));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("user-agent")
                .unwrap()
                .starts_with("GitHub-Hookshot/")
        );
        assert_eq!(r.json()["installation"]["id"], 77);
        assert_eq!(d.json(), r.json());
        assert_eq!(d.action, r.json()["action"]);
    }

    // The shapes are the real ones: every key of the real payloads is there.
    let opened = got[0].json();
    let real = fixture("github/pull_request-opened.json");
    assert_eq!(keys(&opened), keys(&real));
    assert!(keys(&real["pull_request"]).is_subset(&keys(&opened["pull_request"])));
    assert!(keys(&real["repository"]).is_subset(&keys(&opened["repository"])));
    assert!(keys(&real["sender"]).is_subset(&keys(&opened["sender"])));
    let review = got[1].json();
    let real = fixture("github/pull_request_review-submitted-approved.json");
    assert_eq!(keys(&review), keys(&real));
    assert!(keys(&real["review"]).is_subset(&keys(&review["review"])));
    assert_eq!(
        review["review"]["state"], "approved",
        "webhook states are lower case"
    );
    let alert = got[2].json();
    let real = fixture("github/secret_scanning_alert-reopened.json");
    assert!(keys(&real["alert"]).is_subset(&keys(&alert["alert"])));
    assert!(
        alert["alert"].get("secret").is_none(),
        "no secret in a webhook"
    );
    assert_eq!(
        got[4].json()["after"],
        api.log("org", "deploy", "fix")[0].0.as_str()
    );

    // And Firebreak's own readers take them.
    match parse_github_event("pull_request_review", got[1].body.as_bytes()).unwrap() {
        GithubEvent::Review {
            reviewer_login,
            state,
            number,
            commit_id,
            ..
        } => {
            assert_eq!(
                (reviewer_login.as_str(), state.as_str()),
                ("alice", "approved")
            );
            assert_eq!(number, pr.number);
            assert_eq!(
                commit_id,
                opened["pull_request"]["head"]["sha"].as_str().unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
    match parse_github_event("pull_request", got[5].body.as_bytes()).unwrap() {
        GithubEvent::PullRequest {
            action,
            merged,
            author_login,
            ..
        } => assert_eq!(
            (action.as_str(), merged, author_login.as_str()),
            ("closed", false, "firebreak-bot")
        ),
        other => panic!("{other:?}"),
    }
    let report = parse_input("created.json", got[2].body.as_bytes(), ParserChoice::Auto);
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let key = report.findings[0]
        .resources
        .iter()
        .map(|r| r.key())
        .collect::<Vec<_>>();
    assert!(
        key.contains(&format!("github:org/deploy/config/prod.env#{n}")),
        "{key:?}"
    );
    let resolved = parse_input("resolved.json", got[3].body.as_bytes(), ParserChoice::Auto);
    assert!(
        resolved.findings.is_empty() && resolved.skipped == 1,
        "a resolved alert is no finding"
    );
}

#[tokio::test]
async fn lost_deliveries_are_recorded_and_a_redelivery_keeps_the_guid() {
    let (api, octo) = setup("firebreak-bot").await;
    let rx = Receiver::start().await;
    api.set_webhook(&rx.url("/v1/github"), SECRET);
    api.pause_webhooks(true);
    let pr = octo
        .pulls("org", "deploy")
        .create("Fix", "fix", "main")
        .send()
        .await
        .unwrap();
    api.settle().await;
    assert!(rx.requests().is_empty());
    let d = api.deliveries();
    assert!(d[0].dropped && d[0].status.is_none());
    api.pause_webhooks(false);
    api.redeliver(&d[0].id).await;
    api.redeliver(&d[0].id).await;
    let got = rx.requests();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(r.header("x-github-delivery"), Some(d[0].id.as_str()));
        assert_eq!(r.json()["number"], pr.number);
    }
}

async fn raw(
    api: &GithubApi,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let mut req =
        reqwest::Client::new().request(method.parse().unwrap(), format!("{}{path}", api.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if !body.is_null() {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn unknown_keys_wrong_shapes_and_stale_shas_fail_like_github() {
    let (api, _) = setup("firebreak-bot").await;
    let token = api.user_token("firebreak-bot");
    let t = Some(token.as_str());
    let put = "/repos/org/deploy/contents/apps/a.yaml";
    let content = "YTogMgo="; // "a: 2\n"
    let current = {
        let (_, v) = raw(&api, t, "GET", put, Value::Null).await;
        v["sha"].as_str().unwrap().to_owned()
    };
    let cases = [
        // octocrab's `commiter` (sic) would be refused by GitHub: it is not a permitted key.
        (
            json!({"message": "m", "content": content, "sha": current, "commiter": {"name": "x", "email": "x@y"}}),
            422,
            "Invalid request.\n\n\"commiter\" is not a permitted key.",
        ),
        (
            json!({"content": content, "sha": current}),
            422,
            "Invalid request.\n\n\"message\" wasn't supplied.",
        ),
        (
            json!({"message": "m", "content": content, "sha": current, "branch": 1}),
            422,
            "Invalid request.\n\nFor 'properties/branch', 1 is not a string.",
        ),
        (
            json!({"message": "m", "content": content}),
            422,
            "Invalid request.\n\n\"sha\" wasn't supplied.",
        ),
        (
            json!({"message": "m", "content": content, "sha": "0000000000000000000000000000000000000000"}),
            409,
            "apps/a.yaml does not match 0000000000000000000000000000000000000000",
        ),
        (
            json!({"message": "m", "content": "%%%", "sha": current}),
            422,
            "content is not valid Base64",
        ),
    ];
    for (body, status, message) in cases {
        let (s, v) = raw(&api, t, "PUT", put, body.clone()).await;
        assert_eq!(
            (s, v["message"].as_str().unwrap()),
            (status, message),
            "{body}"
        );
        assert_eq!(v["status"], status.to_string());
        assert!(
            v["documentation_url"]
                .as_str()
                .unwrap()
                .starts_with("https://docs.github.com/rest/")
        );
    }
    assert_eq!(
        api.file("org", "deploy", "main", "apps/a.yaml").unwrap(),
        "a: 1\n",
        "nothing changed"
    );
    let (s, _) = raw(
        &api,
        t,
        "PUT",
        put,
        json!({"message": "m", "content": content, "sha": current}),
    )
    .await;
    assert_eq!(s, 200);

    // Pull requests: one open PR per head and base; reopening a PR whose branch was deleted fails.
    let (s, _) = raw(
        &api,
        t,
        "POST",
        "/repos/org/deploy/pulls",
        json!({"title": "x", "head": "fix", "base": "main"}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = raw(
        &api,
        t,
        "POST",
        "/repos/org/deploy/pulls",
        json!({"title": "x", "head": "org:fix", "base": "main"}),
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str().unwrap()),
        (422, "Validation Failed")
    );
    assert_eq!(
        v["errors"][0]["message"],
        "A pull request already exists for org:fix."
    );
    let (s, v) = raw(
        &api,
        t,
        "PATCH",
        "/repos/org/deploy/pulls/1",
        json!({"state": "closed", "pull_number": 1}),
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str().unwrap()),
        (
            422,
            "Invalid request.\n\n\"pull_number\" is not a permitted key."
        )
    );
    let (s, v) = raw(
        &api,
        t,
        "POST",
        "/repos/org/deploy/git/refs",
        json!({"ref": "refs/heads/fix", "sha": api.log("org", "deploy", "main")[0].0}),
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str().unwrap()),
        (422, "Reference already exists")
    );
    let (s, v) = raw(
        &api,
        t,
        "PATCH",
        "/repos/org/deploy/git/refs/heads/fix",
        json!({"sha": api.log("org", "deploy", "main")[0].0}),
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str().unwrap()),
        (422, "Update is not a fast forward")
    );

    // Authentication.
    let (s, v) = raw(&api, None, "GET", "/repos/org/deploy", Value::Null).await;
    assert_eq!(
        (s, v["message"].as_str().unwrap()),
        (401, "Requires authentication")
    );
    let (s, v) = raw(
        &api,
        Some("ghp_nope"),
        "GET",
        "/repos/org/deploy",
        Value::Null,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str().unwrap()),
        (401, "Bad credentials")
    );
    let (s, _) = raw(&api, t, "GET", "/repos/org/nope", Value::Null).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn octocrab_typed_models_read_every_emulated_response() {
    let (api, octo) = setup("firebreak-bot").await;
    let repos = octo.repos("org", "deploy");
    let repo = repos.get().await.unwrap();
    assert_eq!(repo.default_branch.as_deref(), Some("main"));
    assert_eq!(repo.full_name.as_deref(), Some("org/deploy"));
    let mut content = repos
        .get_content()
        .path("apps/a.yaml")
        .r#ref("main")
        .send()
        .await
        .unwrap();
    let item = content.take_items().remove(0);
    assert_eq!(item.decoded_content().as_deref(), Some("a: 1\n"));
    let dir = repos.get_content().path("apps").send().await.unwrap();
    assert_eq!(dir.items.len(), 2);
    let pulls = octo.pulls("org", "deploy");
    let pr = pulls.create("Fix", "fix", "main").send().await.unwrap();
    let listed = pulls
        .list()
        .state(octocrab::params::State::Open)
        .head("org:fix")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.items[0].number, pr.number);
    let got = pulls.get(pr.number).await.unwrap();
    assert_eq!(got.mergeable, Some(true));
    api.add_team_member("org", "security", "alice", "member");
    api.submit_review(
        "org",
        "deploy",
        pr.number,
        "alice",
        ReviewState::ChangesRequested,
        "no",
    )
    .unwrap();
    api.submit_review(
        "org",
        "deploy",
        pr.number,
        "bob",
        ReviewState::Commented,
        "hm",
    )
    .unwrap();
    let err = api.submit_review(
        "org",
        "deploy",
        pr.number,
        "firebreak-bot",
        ReviewState::Approved,
        "",
    );
    assert_eq!(err.unwrap_err(), "Can not approve your own pull request");
    api.inject_review(
        "org",
        "deploy",
        pr.number,
        "firebreak-bot",
        ReviewState::Approved,
        "",
    );
    let reviews = pulls.list_reviews(pr.number).send().await.unwrap();
    let states: Vec<_> = reviews
        .items
        .iter()
        .map(|r| (r.user.as_ref().unwrap().login.clone(), r.state.unwrap()))
        .collect();
    use octocrab::models::pulls::ReviewState as S;
    assert_eq!(
        states,
        [
            ("alice".to_owned(), S::ChangesRequested),
            ("bob".to_owned(), S::Commented),
            ("firebreak-bot".to_owned(), S::Approved)
        ]
    );
    let issues = octo.issues("org", "deploy");
    issues
        .create_comment(pr.number, "Plan hash sha256:1")
        .await
        .unwrap();
    let comments = issues.list_comments(pr.number).send().await.unwrap();
    assert_eq!(
        comments.items[0].body.as_deref(),
        Some("Plan hash sha256:1")
    );
    assert_eq!(api.comments("org", "deploy", pr.number).len(), 1);
    let labels = issues
        .add_labels(pr.number, &["firebreak".to_owned()])
        .await
        .unwrap();
    assert_eq!(labels[0].name, "firebreak");
    let with_reviewers: octocrab::models::pulls::PullRequest = octo
        .post(
            format!("/repos/org/deploy/pulls/{}/requested_reviewers", pr.number),
            Some(&json!({"reviewers": ["carol"], "team_reviewers": ["security"]})),
        )
        .await
        .unwrap();
    assert_eq!(
        with_reviewers.requested_reviewers.unwrap()[0].login,
        "carol"
    );
    assert_eq!(with_reviewers.requested_teams.unwrap()[0].slug, "security");
    let member: Value = octo
        .get("/orgs/org/teams/security/memberships/alice", None::<&()>)
        .await
        .unwrap();
    assert_eq!(
        (member["role"].as_str(), member["state"].as_str()),
        (Some("member"), Some("active"))
    );
    let e = octo
        .get::<Value, _, _>("/orgs/org/teams/security/memberships/mallory", None::<&()>)
        .await
        .unwrap_err();
    assert_eq!(firebreak::clients::github::error_status(&e), Some(404));
    let merged = pulls.merge(pr.number).send().await.unwrap();
    assert!(merged.merged);
    assert_eq!(
        api.file("org", "deploy", "main", "apps/c.yaml").as_deref(),
        Some("c: 1\n")
    );

    let n = api.add_alert(
        "org",
        "deploy",
        AlertSeed {
            secret_type: "github_personal_access_token".into(),
            display: "GitHub Personal Access Token".into(),
            secret: "ghp_not_a_real_token_but_shaped_like_one00".into(),
            validity: "unknown".into(),
            path: None,
        },
    );
    let alerts = repos.secrets_scanning();
    let a = alerts.get_alert(u32::try_from(n).unwrap()).await.unwrap();
    assert_eq!(
        a.state,
        octocrab::models::repos::secret_scanning_alert::State::Open
    );
    let all = alerts.get_alerts().await.unwrap();
    assert_eq!(all.items.len(), 1);
    let hidden: Value = octo
        .get(
            format!("/repos/org/deploy/secret-scanning/alerts/{n}"),
            Some(&[("hide_secret", "true")]),
        )
        .await
        .unwrap();
    assert!(hidden.get("secret").is_none());
    let me = octo.current().user().await.unwrap();
    assert_eq!(me.login, "firebreak-bot");
}

#[tokio::test]
async fn github_enterprise_base_urls_with_a_path_work() {
    let api = GithubApi::start().await;
    let token = api.user_token("svc-firebreak");
    let cfg = GithubConfig {
        base_url: format!("{}/", api.enterprise_base()),
        token: Some(Redacted::new(token)),
        ..GithubConfig::default()
    };
    let gh = GitHub::load(&cfg).await.unwrap().unwrap();
    assert_eq!(gh.login(), "svc-firebreak");
    assert_eq!(api.calls("GET", "/api/v3/user"), 1);
    assert_eq!(gh.base_url(), api.enterprise_base());
}
