//! The `github.*` actions against the GitHub emulator, through octocrab as in production:
//! `github.open-pull-request` (branch, commit, PR; comments kept; idempotent; drift; rollback),
//! `github.resolve-secret-alert` (revoked, rollback reopens), token and GitHub App
//! authentication, least privilege from the generated `deploy/github-app.md`, and no secret in
//! any plan, outcome or output.

use firebreak::action::{ActionCtx, ActionError, Outcome, Plan, StepInput, action};
use firebreak::clients::github::{GitHub, GithubAuth};
use firebreak::config::{Config, GithubAppConfig, GithubConfig};
use firebreak::finding::Finding;
use firebreak::redact::Redacted;
use serde_json::{Value, json};

use crate::fixtures;
use crate::support::github_api::{AlertSeed, GithubApi, generate_app_key};

const OWNER: &str = "org";
const REPO: &str = "deploy";
const FILE: &str = "apps/default/kubecon.yaml";
const BOT: &str = "firebreak-bot";

/// The GitOps manifest of the workload the Falco fixture names (pod default/kubecon): comments
/// at the top, after values and between keys, quoted strings, a flow list.
const MANIFEST: &str = "\
# kubecon demo workload: owned by team platform (#platform on Slack).
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kubecon
  namespace: default
  labels: {app: kubecon, tier: \"web\"}
spec:
  # Three replicas across zones; HPA takes over in prod.
  replicas: 3 # keep >= 2 for the PDB
  selector:
    matchLabels:
      app: kubecon
  template:
    metadata:
      labels:
        app: kubecon
    spec:
      hostNetwork: true   # needed for the demo only
      containers:
        - name: web
          image: 'ghcr.io/org/kubecon:1.4.2'
          args: [\"--port=8080\"]
";

fn api_repo(api: &GithubApi) {
    api.add_org(OWNER);
    api.create_repo(
        OWNER,
        REPO,
        "main",
        &[(FILE, MANIFEST), ("README.md", "# deploy\n")],
    );
}

async fn token_github(api: &GithubApi, login: &str) -> (GitHub, String) {
    let token = api.user_token(login);
    let cfg = GithubConfig {
        base_url: api.base.clone(),
        token: Some(Redacted::new(token.clone())),
        ..GithubConfig::default()
    };
    (GitHub::load(&cfg).await.unwrap().unwrap(), token)
}

fn ctx_with(gh: GitHub) -> ActionCtx {
    ActionCtx::from_config(&Config::default())
        .unwrap()
        .with_github(gh)
}

fn no_github() -> ActionCtx {
    ActionCtx::from_config(&Config::default()).unwrap()
}

/// The real Falco fixture: pod default/kubecon.
fn falco() -> Finding {
    fixtures::finding(fixtures::FALCO_SHELL)
}

fn pr_params() -> Value {
    json!({
        "repo": "{{ 'org' }}/deploy",
        "path": "apps/{{ target.namespace }}/{{ target.name }}.yaml",
        "set": {"spec.replicas": 0},
        "remove": ["spec.template.spec.hostNetwork"],
        "labels": ["firebreak"],
    })
}

fn input<'a>(finding: &'a Finding, params: &'a Value) -> StepInput<'a> {
    StepInput {
        finding,
        playbook: "stop-cryptominer",
        step: 2,
        params,
        execution: None,
    }
}

async fn plan(ctx: &ActionCtx, kind: &str, i: StepInput<'_>) -> Result<Plan, ActionError> {
    action(kind).unwrap().plan(ctx, i).await
}

async fn apply(ctx: &ActionCtx, kind: &str, i: StepInput<'_>, p: &Plan) -> Outcome {
    action(kind)
        .unwrap()
        .apply(ctx, i, p)
        .await
        .unwrap_or_else(|e| panic!("{kind}: apply: {e}"))
}

const OPEN_PR: &str = "github.open-pull-request";
const RESOLVE: &str = "github.resolve-secret-alert";

#[tokio::test]
async fn open_pull_request_plan_reads_only_and_shows_the_diff() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let ctx = ctx_with(gh);
    let f = falco();
    let params = pr_params();
    let p = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    assert_eq!(api.writes(), Vec::<String>::new(), "planning wrote");
    assert!(!p.noop);
    assert_eq!(p.target, "github:org/deploy/apps/default/kubecon.yaml#");
    assert!(
        p.summary.starts_with("open a pull request in org/deploy"),
        "{}",
        p.summary
    );
    let diff = p.after["diff"].as_str().unwrap();
    assert!(
        diff.contains("-  replicas: 3 # keep >= 2 for the PDB"),
        "{diff}"
    );
    assert!(
        diff.contains("+  replicas: 0 # keep >= 2 for the PDB"),
        "{diff}"
    );
    assert!(diff.contains("-      hostNetwork: true"), "{diff}");
    assert_eq!(p.before["values"]["spec.replicas"], "3");
    let ops: Vec<String> = p
        .changes
        .iter()
        .map(|c| format!("{} {}", c.op, c.path))
        .collect();
    assert!(
        ops.iter()
            .any(|c| c.starts_with("create org/deploy branch firebreak/stop-cryptominer-")),
        "{ops:#?}"
    );
    assert!(
        ops.iter()
            .any(|c| c.starts_with("create org/deploy pull request")),
        "{ops:#?}"
    );
    assert!(api.branches(OWNER, REPO) == ["main"]);
}

#[tokio::test]
async fn open_pull_request_apply_creates_branch_commit_and_pr_keeping_comments() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let ctx = ctx_with(gh);
    let f = falco();
    let params = pr_params();
    let p = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    let o = apply(&ctx, OPEN_PR, input(&f, &params), &p).await;
    assert_eq!(o.result, "applied");

    let branch = p.after["branch"].as_str().unwrap().to_owned();
    assert!(
        api.branches(OWNER, REPO).contains(&branch),
        "{branch} missing"
    );
    let pulls = api.pulls(OWNER, REPO);
    assert_eq!(pulls.len(), 1);
    let pr = &pulls[0];
    assert_eq!(pr["state"], "open");
    assert_eq!(
        pr["user"]["login"], BOT,
        "PR authored by Firebreak's identity"
    );
    assert_eq!(pr["head"]["ref"], branch.as_str());
    assert_eq!(pr["base"]["ref"], "main");
    assert_eq!(pr["labels"][0]["name"], "firebreak");
    assert_eq!(o.detail["pull_request"], pr["number"]);
    let body = pr["body"].as_str().unwrap();
    assert!(body.contains("stop-cryptominer"), "{body}");
    assert!(body.contains("set `spec.replicas` to `0`"), "{body}");
    let log = api.log(OWNER, REPO, &branch);
    assert_eq!(log[0].2, BOT, "commit by Firebreak: {log:?}");
    assert_eq!(log.len(), 2, "one commit on top of main: {log:?}");

    // The file on the branch is the base file with exactly the two edits: every comment kept.
    let edited = api.file(OWNER, REPO, &branch, FILE).unwrap();
    assert_eq!(
        edited,
        MANIFEST
            .replace(
                "replicas: 3 # keep >= 2 for the PDB",
                "replicas: 0 # keep >= 2 for the PDB"
            )
            .replace("      hostNetwork: true   # needed for the demo only\n", "")
    );
    assert_eq!(api.file(OWNER, REPO, "main", FILE).unwrap(), MANIFEST);
    insta::assert_snapshot!("open_pull_request_diff", p.after["diff"].as_str().unwrap());
}

#[tokio::test]
async fn a_second_run_updates_the_same_pull_request() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let ctx = ctx_with(gh);
    let f = falco();
    let params = pr_params();
    let first = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    apply(&ctx, OPEN_PR, input(&f, &params), &first).await;
    let writes = api.writes().len();

    // Run again: nothing left to do, nothing written.
    let again = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    assert!(again.noop, "{again:#?}");
    assert!(
        again.summary.contains("pull request #1"),
        "{}",
        again.summary
    );
    let o = apply(&ctx, OPEN_PR, input(&f, &params), &again).await;
    assert_eq!(o.result, "unchanged");
    assert_eq!(api.writes().len(), writes, "a no-op run wrote");

    // The same step with another value: one more commit on the same branch, the same PR.
    let mut changed = params.clone();
    changed["set"]["spec.replicas"] = json!(1);
    let third = plan(&ctx, OPEN_PR, input(&f, &changed)).await.unwrap();
    assert!(
        third.summary.starts_with("update pull request #1"),
        "{}",
        third.summary
    );
    apply(&ctx, OPEN_PR, input(&f, &changed), &third).await;
    let pulls = api.pulls(OWNER, REPO);
    assert_eq!(pulls.len(), 1, "a second PR was opened");
    assert_eq!(pulls[0]["commits"], 2);
    let branch = first.after["branch"].as_str().unwrap();
    assert!(
        api.file(OWNER, REPO, branch, FILE)
            .unwrap()
            .contains("replicas: 1 # keep >= 2 for the PDB")
    );
    assert!(
        api.pulls(OWNER, REPO)[0]["title"]
            .as_str()
            .unwrap()
            .contains("set spec.replicas to 1")
    );
}

#[tokio::test]
async fn a_missing_file_or_yaml_path_is_a_plan_error_and_nothing_is_written() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let ctx = ctx_with(gh);
    let f = falco();

    let mut missing_file = pr_params();
    missing_file["path"] = json!("apps/{{ target.namespace }}/nope.yaml");
    let e = plan(&ctx, OPEN_PR, input(&f, &missing_file))
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::Permanent(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("org/deploy: apps/default/nope.yaml does not exist on branch main"),
        "{msg}"
    );

    let mut missing_path = pr_params();
    missing_path["set"] = json!({"spec.strategy.rollingUpdate.maxSurge": 0});
    let msg = plan(&ctx, OPEN_PR, input(&f, &missing_path))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("org/deploy:apps/default/kubecon.yaml"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.strategy.rollingUpdate.maxSurge does not exist"),
        "{msg}"
    );

    let mut undefined = pr_params();
    undefined["path"] = json!("apps/{{ target.cluster }}.yaml");
    let msg = plan(&ctx, OPEN_PR, input(&f, &undefined))
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("with.path: the template"), "{msg}");

    // Apply refuses the same way, before writing anything.
    let good = plan(&ctx, OPEN_PR, input(&f, &pr_params())).await.unwrap();
    let e = action(OPEN_PR)
        .unwrap()
        .apply(&ctx, input(&f, &missing_path), &good)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_eq!(api.writes(), Vec::<String>::new());
    assert!(api.pulls(OWNER, REPO).is_empty());
}

#[tokio::test]
async fn apply_refuses_with_drift_when_the_base_file_changed_since_planning() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let ctx = ctx_with(gh);
    let f = falco();
    let params = pr_params();
    let p = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    api.push_as(
        "alice",
        OWNER,
        REPO,
        "main",
        FILE,
        &MANIFEST.replace("replicas: 3", "replicas: 5"),
    );
    let e = action(OPEN_PR)
        .unwrap()
        .apply(&ctx, input(&f, &params), &p)
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::Drift(_)), "{e}");
    assert!(api.writes().is_empty(), "{:?}", api.writes());
    // Planned again, it proposes the change against the new file.
    let again = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    assert!(
        again.after["diff"]
            .as_str()
            .unwrap()
            .contains("-  replicas: 5")
    );
}

#[tokio::test]
async fn rollback_closes_the_pull_request_and_deletes_the_branch() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let ctx = ctx_with(gh);
    let f = falco();
    let params = pr_params();
    let p = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    let o = apply(&ctx, OPEN_PR, input(&f, &params), &p).await;
    let a = action(OPEN_PR).unwrap();
    a.rollback(&ctx, &o).await.unwrap();
    let pr = &api.pulls(OWNER, REPO)[0];
    assert_eq!(pr["state"], "closed");
    assert_eq!(pr["merged"], false);
    assert_eq!(api.branches(OWNER, REPO), ["main"]);
    // Twice is fine: nothing left to undo.
    let writes = api.writes().len();
    a.rollback(&ctx, &o).await.unwrap();
    assert_eq!(
        api.writes().len(),
        writes + 1,
        "only the (refused) branch delete"
    );
    assert_eq!(api.file(OWNER, REPO, "main", FILE).unwrap(), MANIFEST);

    // A merged PR is not silently "rolled back".
    let p = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    let o = apply(&ctx, OPEN_PR, input(&f, &params), &p).await;
    let n = o.detail["pull_request"].as_u64().unwrap();
    api.merge_pull_as("alice", OWNER, REPO, n);
    let e = a.rollback(&ctx, &o).await.unwrap_err();
    assert!(e.to_string().contains("was merged"), "{e}");
}

#[tokio::test]
async fn without_github_access_the_actions_only_plan() {
    let f = falco();
    let params = pr_params();
    let p = plan(&no_github(), OPEN_PR, input(&f, &params))
        .await
        .unwrap();
    assert!(p.not_connected.is_some(), "{p:#?}");
    assert!(p.summary.contains("NOT CONNECTED"), "{}", p.summary);
    let e = action(OPEN_PR)
        .unwrap()
        .apply(&no_github(), input(&f, &params), &p)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no GitHub access is configured"),
        "{e}"
    );
}

// ---- GitHub App authentication ----

const APP_ID: u64 = 424242;
const INSTALLATION: u64 = 77;

fn app_config(api: &GithubApi, pem: &str) -> GithubConfig {
    GithubConfig {
        base_url: api.base.clone(),
        app: Some(GithubAppConfig {
            id: APP_ID,
            installation_id: INSTALLATION,
            private_key_env: Some("FB_TEST_KEY".into()),
            private_key_file: None,
            private_key: Some(Redacted::new(pem.to_owned())),
        }),
        ..GithubConfig::default()
    }
}

fn app_permissions() -> Vec<(String, String)> {
    firebreak::action::github::app::app_manifest()["default_permissions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn register(api: &GithubApi, public: &[u8], perms: &[(String, String)]) {
    let perms: Vec<(&str, &str)> = perms
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    api.register_app(APP_ID, "firebreak-app", OWNER, public, INSTALLATION, &perms);
}

#[tokio::test]
async fn app_authentication_uses_an_installation_token_minted_from_a_verified_jwt() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (pem, public) = generate_app_key();
    register(&api, &public, &app_permissions());
    let gh = GitHub::load(&app_config(&api, &pem))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gh.login(), "firebreak-app[bot]");
    assert!(gh.is_own_login("Firebreak-App[bot]"));
    assert_eq!(
        gh.auth(),
        GithubAuth::App {
            app_id: APP_ID,
            installation_id: INSTALLATION
        }
    );
    assert_eq!(api.calls("GET", "/app"), 1, "identity from GET /app (JWT)");
    assert_eq!(
        api.calls(
            "POST",
            &format!("/app/installations/{INSTALLATION}/access_tokens")
        ),
        1
    );
    let ctx = ctx_with(gh);
    let f = falco();
    let params = pr_params();
    let p = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    apply(&ctx, OPEN_PR, input(&f, &params), &p).await;
    assert_eq!(
        api.pulls(OWNER, REPO)[0]["user"]["login"],
        "firebreak-app[bot]"
    );
    // Every repository call carried the installation token: none was refused.
    let refused: Vec<_> = api
        .all_calls()
        .into_iter()
        .filter(|(_, p, s)| *s == 401 || (*s == 403 && !p.ends_with("/user")))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");

    // Another key (not the App's) is refused at the JWT check, and says so without the key.
    let (other, _) = generate_app_key();
    let e = GitHub::load(&app_config(&api, &other)).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("GET /app"), "{msg}");
    assert!(
        msg.contains("A JSON web token could not be decoded"),
        "{msg}"
    );
    assert!(
        !msg.contains("PRIVATE KEY") && !msg.contains(&other[40..80]),
        "{msg}"
    );
    let wrong_installation = GithubConfig {
        app: Some(GithubAppConfig {
            installation_id: 5,
            ..app_config(&api, &pem).app.unwrap()
        }),
        ..app_config(&api, &pem)
    };
    let msg = GitHub::load(&wrong_installation)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("access_tokens") && msg.contains("404"),
        "{msg}"
    );
}

#[tokio::test]
async fn installation_tokens_are_renewed_before_they_expire_and_after_a_revocation() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (pem, public) = generate_app_key();
    register(&api, &public, &app_permissions());
    let mint = format!("/app/installations/{INSTALLATION}/access_tokens");
    // Tokens that live 20 s are inside octocrab's 30 s renewal margin: each call mints anew.
    api.set_installation_token_ttl(std::time::Duration::from_secs(20));
    let gh = GitHub::load(&app_config(&api, &pem))
        .await
        .unwrap()
        .unwrap();
    let ctx = ctx_with(gh.clone());
    let f = falco();
    let params = pr_params();
    let before = api.calls("POST", &mint);
    plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    assert!(
        api.calls("POST", &mint) > before + 1,
        "a token close to expiry was reused"
    );
    // Long-lived tokens are reused...
    api.set_installation_token_ttl(std::time::Duration::from_secs(3600));
    plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    let minted = api.calls("POST", &mint);
    plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    assert_eq!(
        api.calls("POST", &mint),
        minted,
        "a valid token was not reused"
    );
    // ...and a revoked one is replaced on the 401, without failing the call.
    api.revoke_installation_tokens();
    plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    assert_eq!(api.calls("POST", &mint), minted + 1);
}

#[tokio::test]
async fn the_generated_app_permissions_are_enough_for_every_github_action_and_needed() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (pem, public) = generate_app_key();
    let all = app_permissions();
    register(&api, &public, &all);
    let gh = GitHub::load(&app_config(&api, &pem))
        .await
        .unwrap()
        .unwrap();
    let ctx = ctx_with(gh);
    let number = api.add_alert(OWNER, REPO, aws_alert());
    let secret_finding = alert_finding(OWNER, REPO, number);
    let f = falco();
    let pr = pr_params();
    let empty = json!({});
    let covered: Vec<&str> = firebreak::action::ACTIONS
        .iter()
        .filter(|a| a.permissions().iter().any(|p| p.system == "github"))
        .map(|a| a.kind())
        .collect();
    assert_eq!(covered, [OPEN_PR, RESOLVE]);
    for (kind, i) in [
        (OPEN_PR, input(&f, &pr)),
        (RESOLVE, input(&secret_finding, &empty)),
    ] {
        let p = plan(&ctx, kind, i).await.unwrap();
        let o = apply(&ctx, kind, i, &p).await;
        assert_eq!(o.result, "applied", "{kind}");
        action(kind).unwrap().rollback(&ctx, &o).await.unwrap();
    }

    // Without `contents: write` GitHub refuses the branch, and the error says what is missing.
    let api = GithubApi::start().await;
    api_repo(&api);
    let less: Vec<(String, String)> = all
        .iter()
        .map(|(k, v)| {
            if k == "contents" {
                (k.clone(), "read".to_owned())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    register(&api, &public, &less);
    let ctx = ctx_with(
        GitHub::load(&app_config(&api, &pem))
            .await
            .unwrap()
            .unwrap(),
    );
    let p = plan(&ctx, OPEN_PR, input(&f, &pr)).await.unwrap();
    let e = action(OPEN_PR)
        .unwrap()
        .apply(&ctx, input(&f, &pr), &p)
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::Permanent(_)), "{e}");
    assert!(
        e.to_string()
            .contains("Resource not accessible by integration (HTTP 403)"),
        "{e}"
    );
}

#[test]
fn committed_github_app_md_equals_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/github-app.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        committed,
        firebreak::action::github::app::github_app_markdown(),
        "deploy/github-app.md is stale: run `firebreak actions github-app > deploy/github-app.md`"
    );
    for p in [
        "contents",
        "pull_requests",
        "secret_scanning_alerts",
        "metadata",
    ] {
        assert!(committed.contains(&format!("(`{p}`)")), "{p}");
    }
    for e in [
        "pull_request",
        "pull_request_review",
        "secret_scanning_alert",
    ] {
        assert!(committed.contains(&format!("`{e}`")), "{e}");
    }
}

// ---- github.resolve-secret-alert ----

fn aws_alert() -> AlertSeed {
    AlertSeed {
        secret_type: "aws_access_key_id".into(),
        display: "Amazon AWS Access Key ID".into(),
        secret: "AKIAIOSFODNN7EXAMPLE".into(),
        validity: "active".into(),
        path: Some("config/prod.env".into()),
    }
}

/// The finding of the real `secret_scanning_alert` webhook fixture, derived: only the
/// repository (owner, name) and the alert number changed to the emulator's.
fn alert_finding(owner: &str, repo: &str, number: u64) -> Finding {
    let mut v: Value = serde_json::from_slice(&fixtures::bytes(
        "github/secret_scanning_alert-reopened.json",
    ))
    .unwrap();
    v["alert"]["number"] = json!(number);
    v["repository"]["name"] = json!(repo);
    v["repository"]["full_name"] = json!(format!("{owner}/{repo}"));
    v["repository"]["owner"]["login"] = json!(owner);
    let report = firebreak::finding::parse_input(
        "alert.json",
        &serde_json::to_vec(&v).unwrap(),
        firebreak::finding::ParserChoice::Auto,
    );
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    report.findings.into_iter().next().unwrap()
}

#[tokio::test]
async fn resolve_secret_alert_ends_revoked_and_rollback_reopens_it() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let number = api.add_alert(OWNER, REPO, aws_alert());
    let (gh, _) = token_github(&api, BOT).await;
    let ctx = ctx_with(gh);
    let f = alert_finding(OWNER, REPO, number);
    let params = json!({});
    let i = StepInput {
        finding: &f,
        playbook: "rotate-exposed-aws-key",
        step: 3,
        params: &params,
        execution: None,
    };
    let p = plan(&ctx, RESOLVE, i).await.unwrap();
    assert!(api.writes().is_empty());
    assert!(!p.noop);
    assert_eq!(p.target, format!("github:org/deploy/#{number}"));
    assert!(p.summary.contains("(now open) as revoked"), "{}", p.summary);
    let o = apply(&ctx, RESOLVE, i, &p).await;
    assert_eq!(o.result, "applied");
    let alert = api.alert(OWNER, REPO, number);
    assert_eq!(alert["state"], "resolved");
    assert_eq!(alert["resolution"], "revoked");
    assert_eq!(alert["resolved_by"]["login"], BOT);
    let comment = alert["resolution_comment"].as_str().unwrap();
    assert!(comment.contains("rotate-exposed-aws-key"), "{comment}");
    assert!(comment.contains(&f.id.to_string()), "{comment}");

    let again = plan(&ctx, RESOLVE, i).await.unwrap();
    assert!(again.noop, "{again:#?}");
    let writes = api.writes().len();
    assert_eq!(apply(&ctx, RESOLVE, i, &again).await.result, "unchanged");
    assert_eq!(api.writes().len(), writes);

    action(RESOLVE).unwrap().rollback(&ctx, &o).await.unwrap();
    let alert = api.alert(OWNER, REPO, number);
    assert_eq!(alert["state"], "open");
    assert_eq!(alert["resolution"], Value::Null);

    // Resolved by a person meanwhile as something else: apply sees the drift.
    let p = plan(&ctx, RESOLVE, i).await.unwrap();
    let (human, _) = token_github(&api, "alice").await;
    human
        .octocrab()
        .patch::<Value, _, _>(
            format!("/repos/{OWNER}/{REPO}/secret-scanning/alerts/{number}"),
            Some(&json!({"state": "resolved", "resolution": "used_in_tests"})),
        )
        .await
        .unwrap();
    let e = action(RESOLVE)
        .unwrap()
        .apply(&ctx, i, &p)
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::Drift(_)), "{e}");
}

#[tokio::test]
async fn resolve_secret_alert_needs_an_alert_in_the_finding() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let f = falco();
    let e = plan(&ctx_with(gh), RESOLVE, input(&f, &json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::NotApplicable(_)), "{e}");
}

// ---- conformance ----

/// Every `github.*` action on the emulator: planning writes nothing; apply, then a second plan
/// is a no-op and a second apply writes nothing; rollback works; the token appears in no plan,
/// outcome or error.
#[tokio::test]
async fn conformance_every_github_action_plans_without_writes_or_secrets() {
    let kinds: Vec<&str> = firebreak::action::ACTIONS
        .iter()
        .map(|a| a.kind())
        .filter(|k| k.starts_with("github."))
        .collect();
    assert_eq!(kinds, [OPEN_PR, RESOLVE]);
    for kind in kinds {
        let api = GithubApi::start().await;
        api_repo(&api);
        let number = api.add_alert(OWNER, REPO, aws_alert());
        let (gh, token) = token_github(&api, BOT).await;
        let ctx = ctx_with(gh.clone());
        let (f, params) = match kind {
            OPEN_PR => (falco(), pr_params()),
            _ => (alert_finding(OWNER, REPO, number), json!({})),
        };
        let a = action(kind).unwrap();
        assert!(a.validate(&params).is_empty(), "{kind}");
        let i = input(&f, &params);
        let p = a.plan(&ctx, i).await.unwrap();
        assert!(
            api.writes().is_empty(),
            "{kind}: plan wrote {:?}",
            api.writes()
        );
        let o = a.apply(&ctx, i, &p).await.unwrap();
        let again = a.plan(&ctx, i).await.unwrap();
        assert!(again.noop, "{kind}: {again:#?}");
        let writes = api.writes().len();
        let second = a.apply(&ctx, i, &again).await.unwrap();
        assert_eq!(second.result, "unchanged", "{kind}");
        assert_eq!(api.writes().len(), writes, "{kind}: second apply wrote");
        a.rollback(&ctx, &o).await.unwrap();
        let shown = format!(
            "{}{}{}{}{:?}{:?}",
            serde_json::to_string(&p).unwrap(),
            serde_json::to_string(&o).unwrap(),
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&second).unwrap(),
            gh,
            ctx.github,
        );
        assert!(!shown.contains(&token), "{kind}: the token leaked");
        assert!(
            !shown.contains("AKIAIOSFODNN7EXAMPLE") || kind == OPEN_PR,
            "{kind}"
        );
        // The same plan fails cleanly with a bad token, and the error does not echo it.
        let bad = GithubConfig {
            base_url: api.base.clone(),
            token: Some(Redacted::new(format!("{token}x"))),
            ..GithubConfig::default()
        };
        let msg = GitHub::load(&bad).await.unwrap_err().to_string();
        assert!(msg.contains("Bad credentials (HTTP 401)"), "{msg}");
        assert!(!msg.contains(&token), "{msg}");
    }
}

/// `firebreak run` with GitHub configured from the environment: the plan reaches the emulator
/// (not "NOT CONNECTED"), and neither the token nor the private key shows in stdout or stderr,
/// whatever the log level; without GitHub access it says so once and only plans.
#[tokio::test]
async fn firebreak_run_reads_github_secrets_from_the_environment_and_never_prints_them() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let token = api.user_token(BOT);
    let (pem, public) = generate_app_key();
    register(&api, &public, &app_permissions());
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("playbooks");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("p.yaml"),
        "name: permanent\nmatch: {source: [falco]}\nsteps:\n  - action: github.open-pull-request\n    with:\n      repo: org/deploy\n      path: \"apps/{{ target.namespace }}/{{ target.name }}.yaml\"\n      set: { spec.replicas: 0 }\n",
    )
    .unwrap();
    let run = |envs: Vec<(&'static str, String)>| {
        let args = vec![
            "-vvv".to_owned(),
            "run".to_owned(),
            "--dry-run".to_owned(),
            "--no-store".to_owned(),
            "--format".to_owned(),
            "json".to_owned(),
            "--playbooks".to_owned(),
            pdir.display().to_string(),
            "--finding".to_owned(),
            fixtures::path(fixtures::FALCO_SHELL).display().to_string(),
        ];
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
                .args(&args)
                .env_clear()
                .envs(envs)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap()
        })
    };
    let base = api.base.clone();
    let with_token = run(vec![
        ("FIREBREAK_GITHUB__BASE_URL", base.clone()),
        ("FIREBREAK_GITHUB__TOKEN_ENV", "FB_GH_TOKEN".into()),
        ("FB_GH_TOKEN", token.clone()),
    ])
    .await
    .unwrap();
    let key_file = dir.path().join("app.pem");
    std::fs::write(&key_file, &pem).unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "github:\n  base_url: \"{base}\"\n  app:\n    id: {APP_ID}\n    installation_id: {INSTALLATION}\n    private_key_file: \"{}\"\n",
            key_file.display()
        ),
    )
    .unwrap();
    let with_app = run(vec![("FIREBREAK_CONFIG_FILE", cfg.display().to_string())])
        .await
        .unwrap();
    let without = run(vec![]).await.unwrap();
    for (what, out) in [("token", &with_token), ("app", &with_app)] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("open a pull request in org/deploy"),
            "{what}: {stdout}"
        );
        assert!(!stdout.contains("NOT CONNECTED"), "{what}: {stdout}");
        for secret in [token.as_str(), &pem[40..90], "PRIVATE KEY"] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{what}: leaked"
            );
        }
    }
    assert_eq!(api.pulls(OWNER, REPO).len(), 0, "a dry run opened a PR");
    let stdout = String::from_utf8_lossy(&without.stdout);
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stdout.contains("NOT CONNECTED"), "{stdout}");
    assert!(stderr.contains("GitHub actions plan only"), "{stderr}");

    // A token variable that is not set is a configuration error naming it, not a value.
    let missing = run(vec![("FIREBREAK_GITHUB__TOKEN_ENV", "FB_NOT_SET".into())])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("github.token_env") && stderr.contains("FB_NOT_SET is not set"),
        "{stderr}"
    );
}

#[tokio::test]
async fn base_title_and_body_are_templated_from_the_finding() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let (gh, _) = token_github(&api, BOT).await;
    let main = api.log(OWNER, REPO, "main")[0].0.clone();
    gh.octocrab()
        .repos(OWNER, REPO)
        .create_ref(
            &octocrab::params::repos::Reference::Branch("release".into()),
            main,
        )
        .await
        .unwrap();
    let ctx = ctx_with(gh);
    let f = falco();
    let mut params = pr_params();
    params["base"] = json!("release");
    params["title"] = json!("Stop {{ target.name }} ({{ finding.rule }})");
    params["body"] = json!("Seen by {{ finding.source }} in {{ target.namespace }}.");
    params["set"]["metadata.labels.quarantined"] = json!("{{ playbook }}");
    let p = plan(&ctx, OPEN_PR, input(&f, &params)).await.unwrap();
    apply(&ctx, OPEN_PR, input(&f, &params), &p).await;
    let pr = &api.pulls(OWNER, REPO)[0];
    assert_eq!(pr["base"]["ref"], "release");
    assert_eq!(pr["title"], "Stop kubecon (Terminal shell in container)");
    assert!(
        pr["body"]
            .as_str()
            .unwrap()
            .starts_with("Seen by falco in default."),
        "{}",
        pr["body"]
    );
    let branch = p.after["branch"].as_str().unwrap();
    let file = api.file(OWNER, REPO, branch, FILE).unwrap();
    // Adding a key to a flow mapping rewrites that one line (yamlpatch re-emits the mapping);
    // every other line, comments included, stays as it was.
    assert_eq!(
        file,
        MANIFEST
            .replace(
                "labels: {app: kubecon, tier: \"web\"}",
                "labels: { app: kubecon, tier: web, quarantined: stop-cryptominer }"
            )
            .replace("replicas: 3 #", "replicas: 0 #")
            .replace("      hostNetwork: true   # needed for the demo only\n", "")
    );
}

#[tokio::test]
async fn resolve_secret_alert_rollback_restores_an_earlier_resolution_and_takes_a_comment() {
    let api = GithubApi::start().await;
    api_repo(&api);
    let number = api.add_alert(OWNER, REPO, aws_alert());
    let (gh, _) = token_github(&api, BOT).await;
    gh.octocrab()
        .patch::<Value, _, _>(
            format!("/repos/{OWNER}/{REPO}/secret-scanning/alerts/{number}"),
            Some(&json!({"state": "resolved", "resolution": "false_positive", "resolution_comment": "test key"})),
        )
        .await
        .unwrap();
    let ctx = ctx_with(gh);
    let f = alert_finding(OWNER, REPO, number);
    let params = json!({"comment": "Rotated in CHG-1234"});
    let p = plan(&ctx, RESOLVE, input(&f, &params)).await.unwrap();
    assert!(
        p.summary.contains("now resolved as false_positive"),
        "{}",
        p.summary
    );
    let o = apply(&ctx, RESOLVE, input(&f, &params), &p).await;
    let alert = api.alert(OWNER, REPO, number);
    assert_eq!(alert["resolution"], "revoked");
    assert_eq!(alert["resolution_comment"], "Rotated in CHG-1234");
    action(RESOLVE).unwrap().rollback(&ctx, &o).await.unwrap();
    let alert = api.alert(OWNER, REPO, number);
    assert_eq!(
        (
            &alert["state"],
            &alert["resolution"],
            &alert["resolution_comment"]
        ),
        (
            &json!("resolved"),
            &json!("false_positive"),
            &json!("test key")
        )
    );
}
