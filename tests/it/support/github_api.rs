//! A stateful emulator of the GitHub REST API (axum, in-process on `127.0.0.1:0`) that octocrab
//! talks to over plain HTTP as to api.github.com, and that sends signed webhooks the way GitHub
//! does.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//!
//! Faithful where Firebreak depends on it, following GitHub's REST description
//! (github/rest-api-description) and the real payloads in `tests/fixtures/findings/github/`:
//! - authentication: personal tokens (`Authorization: Bearer|token …`), and GitHub Apps: `GET /app`
//!   and `POST /app/installations/{id}/access_tokens` take only an RS256 JWT signed with the App's
//!   private key (checked against its public key; `iss` the App id, `exp` at most ten minutes
//!   ahead), and installation tokens (`ghs_…`) expire (`expires_at`) and carry the App's
//!   permissions: a call the permissions do not cover answers 403 "Resource not accessible by
//!   integration" with `X-Accepted-GitHub-Permissions`, as GitHub does;
//! - git: commits, branches and blobs are modelled (a branch is a ref to a commit holding a
//!   whole tree); refs get/list/create/update (fast-forward unless `force`)/delete; contents get
//!   (base64 wrapped at 60 columns) and create/update, with blob `sha` checks (409 on a stale
//!   `sha`, 422 when `sha` is missing for an existing file);
//! - pulls create/list (`state`, `head`, `base`)/get/update/merge, reviews, requested reviewers,
//!   issue comments, labels, team membership, secret-scanning alerts get/list/update;
//! - errors are GitHub's bodies (`message`, `documentation_url`, `status`); request bodies are
//!   checked like GitHub's schema validation: an unknown key (`"x" is not a permitted key.`), a
//!   missing required key (`"x" wasn't supplied.`) or a wrong type answers 422. Where GitHub's
//!   own leniency is not documented the emulator is strict (unknown keys fail everywhere);
//! - webhooks (`set_webhook`): `pull_request` (opened, closed, reopened, synchronize),
//!   `pull_request_review` (submitted) and `secret_scanning_alert` (created, resolved,
//!   reopened), each POSTed in order with `X-GitHub-Event`, `X-GitHub-Delivery` (a GUID that a
//!   redelivery keeps) and `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`.
//!   REST review states are upper case (`APPROVED`), webhook ones lower case, as on GitHub.
//!
//! Not modelled: pagination (every list is one page), rate limits, branch protection, merge
//! conflicts (every open PR is mergeable), the SHA-1 `X-Hub-Signature`, GraphQL. Blob and commit
//! ids are 40 hex digits of SHA-256, not git's SHA-1.
//!
//! Every request that is not a GET is recorded as a write (whatever its outcome), so a test can
//! prove that a plan wrote nothing; minting an installation token, seeding and test-side user
//! actions are not counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`, the `X-Hub-Signature-256` value.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A review state a user submits (`POST …/reviews` `event`, as the REST API names states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewState {
    /// `APPROVED`.
    Approved,
    /// `CHANGES_REQUESTED`.
    ChangesRequested,
    /// `COMMENTED`.
    Commented,
}

impl ReviewState {
    fn rest(self) -> &'static str {
        match self {
            ReviewState::Approved => "APPROVED",
            ReviewState::ChangesRequested => "CHANGES_REQUESTED",
            ReviewState::Commented => "COMMENTED",
        }
    }
}

/// One webhook delivery the emulator made (or dropped while deliveries were paused).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `X-GitHub-Delivery`.
    pub id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload's `action`.
    pub action: String,
    /// The raw body sent.
    pub body: Vec<u8>,
    /// `X-Hub-Signature-256`.
    pub signature: String,
    /// The receiver's answer; `None` when dropped or unreachable.
    pub status: Option<u16>,
    /// Not sent: deliveries were paused (a lost delivery).
    pub dropped: bool,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A secret-scanning alert to seed.
#[derive(Debug, Clone)]
pub struct AlertSeed {
    /// `secret_type`, e.g. `aws_access_key_id`.
    pub secret_type: String,
    /// `secret_type_display_name`.
    pub display: String,
    /// The secret GitHub found (returned by the REST API unless `hide_secret`).
    pub secret: String,
    /// `validity`: `active`, `inactive` or `unknown`.
    pub validity: String,
    /// Where it was found.
    pub path: Option<String>,
}

#[derive(Debug, Clone)]
struct Commit {
    tree: BTreeMap<String, String>,
    parents: Vec<String>,
    message: String,
    author: String,
    date: String,
}

#[derive(Debug, Clone)]
struct Review {
    id: u64,
    user: String,
    state: ReviewState,
    body: String,
    commit_id: String,
    submitted_at: String,
}

#[derive(Debug, Clone)]
struct Comment {
    id: u64,
    number: u64,
    user: String,
    body: String,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Clone)]
struct Pull {
    number: u64,
    id: u64,
    title: String,
    body: Option<String>,
    head: String,
    base: String,
    /// Who opened it.
    author: String,
    state: &'static str,
    draft: bool,
    maintainer_can_modify: bool,
    merged_at: Option<String>,
    merged_by: Option<String>,
    merge_commit_sha: Option<String>,
    /// Head sha when closed/merged (the branch may be deleted since).
    frozen_head: Option<String>,
    created_at: String,
    updated_at: String,
    closed_at: Option<String>,
    labels: Vec<String>,
    requested_reviewers: Vec<String>,
    requested_teams: Vec<String>,
    reviews: Vec<Review>,
}

#[derive(Debug, Clone)]
struct Alert {
    number: u64,
    seed: AlertSeed,
    state: &'static str,
    resolution: Option<String>,
    resolution_comment: Option<String>,
    resolved_by: Option<String>,
    resolved_at: Option<String>,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Clone)]
struct Repo {
    id: u64,
    owner: String,
    name: String,
    default_branch: String,
    refs: BTreeMap<String, String>,
    pulls: Vec<Pull>,
    /// Issue comments by id (PRs are issues).
    comments: Vec<Comment>,
    alerts: Vec<Alert>,
    created_at: String,
}

#[derive(Debug, Clone)]
struct App {
    id: u64,
    slug: String,
    owner: String,
    /// PKCS#1 `RSAPublicKey` DER.
    public_key: Vec<u8>,
    installation_id: u64,
    permissions: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Token {
    login: String,
    /// Installation tokens: permissions and expiry (unix seconds).
    installation: Option<(BTreeMap<String, String>, i64)>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    user_ids: HashMap<String, u64>,
    orgs: Vec<String>,
    tokens: HashMap<String, Token>,
    app: Option<App>,
    token_ttl_seconds: i64,
    repos: Vec<Repo>,
    commits: HashMap<String, Commit>,
    teams: HashMap<(String, String), Vec<(String, String)>>,
    writes: Vec<String>,
    calls: Vec<(String, String, u16)>,
    webhook: Option<(String, String)>,
    webhooks_paused: bool,
    deliveries: Vec<Delivery>,
}

struct Shared {
    base: String,
    inner: Mutex<Inner>,
    outgoing: mpsc::UnboundedSender<Delivery>,
    pending: AtomicUsize,
    settled: Notify,
}

/// A running emulator; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct GithubApi {
    /// `http://127.0.0.1:PORT` (the API is also served below `/api/v3`, as GitHub Enterprise
    /// Server serves it).
    pub base: String,
    shared: Arc<Shared>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn hash40(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..40].to_owned()
}

fn blob_sha(content: &str) -> String {
    hash40(&[&format!("blob {}", content.len()), content])
}

fn random_token(prefix: &str) -> String {
    let u = ulid::Ulid::new().to_string().to_ascii_lowercase();
    let v = ulid::Ulid::new().to_string();
    format!("{prefix}{u}{v}")[..prefix.len() + 36].to_owned()
}

fn guid() -> String {
    let h = hash40(&[&ulid::Ulid::new().to_string()]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A GitHub error body.
fn error(status: u16, message: &str, doc: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    (
        code,
        [("content-type", "application/json; charset=utf-8")],
        json!({
            "message": message,
            "documentation_url": format!("https://docs.github.com/rest/{doc}"),
            "status": status.to_string(),
        })
        .to_string(),
    )
        .into_response()
}

fn not_found(doc: &str) -> Response {
    error(404, "Not Found", doc)
}

/// 422 Validation Failed with one error object.
fn validation_failed(doc: &str, err: Value) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        [("content-type", "application/json; charset=utf-8")],
        json!({
            "message": "Validation Failed",
            "errors": [err],
            "documentation_url": format!("https://docs.github.com/rest/{doc}"),
            "status": "422",
        })
        .to_string(),
    )
        .into_response()
}

fn ok(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// The JSON types request bodies are checked against.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int,
    StrList,
    Obj,
    /// A string or null.
    OptStr,
}

/// Checks a request body like GitHub's schema validation: an object, no unknown keys, the
/// required ones present, each of its type.
fn check_body(body: &Value, fields: &[(&str, Ty, bool)], doc: &str) -> Result<(), Response> {
    let Some(obj) = body.as_object() else {
        return Err(error(400, "Problems parsing JSON", doc));
    };
    for key in obj.keys() {
        if !fields.iter().any(|(k, _, _)| k == key) {
            return Err(error(
                422,
                &format!("Invalid request.\n\n\"{key}\" is not a permitted key."),
                doc,
            ));
        }
    }
    for (key, ty, required) in fields {
        match obj.get(*key) {
            None if *required => {
                return Err(error(
                    422,
                    &format!("Invalid request.\n\n\"{key}\" wasn't supplied."),
                    doc,
                ));
            }
            None => {}
            Some(v) => {
                let (fits, name) = match ty {
                    Ty::Str => (v.is_string(), "string"),
                    Ty::Bool => (v.is_boolean(), "boolean"),
                    Ty::Int => (v.is_u64(), "integer"),
                    Ty::StrList => (
                        v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                        "array",
                    ),
                    Ty::Obj => (v.is_object(), "object"),
                    Ty::OptStr => (v.is_string() || v.is_null(), "string"),
                };
                if !fits {
                    let shown = if v.is_null() {
                        "nil".to_owned()
                    } else {
                        v.to_string()
                    };
                    return Err(error(
                        422,
                        &format!(
                            "Invalid request.\n\nFor 'properties/{key}', {shown} is not a {name}."
                        ),
                        doc,
                    ));
                }
            }
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Who is calling.
enum Caller {
    None,
    /// A bad or expired token.
    Bad,
    User(String),
    Installation(String, BTreeMap<String, String>),
    App,
    /// A JWT that does not verify: the message GitHub gives.
    BadJwt(String),
}

impl GithubApi {
    /// Starts the emulator on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
        let shared = Arc::new(Shared {
            base: base.clone(),
            inner: Mutex::new(Inner {
                next_id: 1000,
                token_ttl_seconds: 3600,
                ..Inner::default()
            }),
            outgoing: tx,
            pending: AtomicUsize::new(0),
            settled: Notify::new(),
        });
        let app = Router::new()
            .fallback(any(handle))
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        // One sender, so deliveries arrive in the order the events happened.
        let sender = Arc::clone(&shared);
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            while let Some(mut d) = rx.recv().await {
                let url = sender.inner.lock().unwrap().webhook.clone().map(|w| w.0);
                if let Some(url) = url {
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("user-agent", "GitHub-Hookshot/044aadd")
                        .header("x-github-event", &d.event)
                        .header("x-github-delivery", &d.id)
                        .header("x-github-hook-id", "292430182")
                        .header("x-hub-signature-256", &d.signature)
                        .body(d.body.clone())
                        .send()
                        .await;
                    d.status = sent.ok().map(|r| r.status().as_u16());
                }
                {
                    let mut inner = sender.inner.lock().unwrap();
                    if let Some(slot) = inner
                        .deliveries
                        .iter_mut()
                        .rev()
                        .find(|x| x.id == d.id && x.status.is_none() && !x.dropped)
                    {
                        slot.status = d.status;
                    }
                }
                sender.pending.fetch_sub(1, Ordering::SeqCst);
                sender.settled.notify_waiters();
            }
        });
        Self { base, shared }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    /// The API root as GitHub Enterprise Server serves it (`…/api/v3`).
    pub fn enterprise_base(&self) -> String {
        format!("{}/api/v3", self.base)
    }

    // ---- identities ----

    /// Marks `login` as an organisation (its repositories' owner type).
    pub fn add_org(&self, login: &str) {
        self.inner().orgs.push(login.to_owned());
    }

    /// A personal access token acting as `login`.
    pub fn user_token(&self, login: &str) -> String {
        let token = random_token("ghp_");
        self.inner().tokens.insert(
            token.clone(),
            Token {
                login: login.to_owned(),
                installation: None,
            },
        );
        token
    }

    /// Registers a GitHub App (`slug`, owned by `owner`) with its public key (PKCS#1 DER), one
    /// installation and its permissions (`("contents", "write")`, …; `metadata: read` is implied,
    /// as GitHub grants it to every App).
    pub fn register_app(
        &self,
        id: u64,
        slug: &str,
        owner: &str,
        public_key_pkcs1_der: &[u8],
        installation_id: u64,
        permissions: &[(&str, &str)],
    ) {
        let mut perms: BTreeMap<String, String> = permissions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        perms
            .entry("metadata".into())
            .or_insert_with(|| "read".into());
        self.inner().app = Some(App {
            id,
            slug: slug.to_owned(),
            owner: owner.to_owned(),
            public_key: public_key_pkcs1_der.to_vec(),
            installation_id,
            permissions: perms,
        });
    }

    /// Lifetime of installation tokens minted from now on (GitHub: one hour).
    pub fn set_installation_token_ttl(&self, ttl: Duration) {
        self.inner().token_ttl_seconds = i64::try_from(ttl.as_secs()).unwrap();
    }

    /// Revokes every installation token (as if they had expired).
    pub fn revoke_installation_tokens(&self) {
        self.inner().tokens.retain(|_, t| t.installation.is_none());
    }

    /// Adds `login` to `org`'s team `team` (`role`: `member` or `maintainer`).
    pub fn add_team_member(&self, org: &str, team: &str, login: &str, role: &str) {
        self.inner()
            .teams
            .entry((org.to_owned(), team.to_owned()))
            .or_default()
            .push((login.to_owned(), role.to_owned()));
    }

    // ---- repositories and git ----

    /// Creates `owner/name` with one commit on `default_branch` holding `files`.
    pub fn create_repo(
        &self,
        owner: &str,
        name: &str,
        default_branch: &str,
        files: &[(&str, &str)],
    ) {
        let mut inner = self.inner();
        let id = inner.id();
        let tree: BTreeMap<String, String> = files
            .iter()
            .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
            .collect();
        let sha = inner.commit(tree, Vec::new(), "Initial commit", owner);
        let mut refs = BTreeMap::new();
        refs.insert(format!("refs/heads/{default_branch}"), sha);
        inner.repos.push(Repo {
            id,
            owner: owner.to_owned(),
            name: name.to_owned(),
            default_branch: default_branch.to_owned(),
            refs,
            pulls: Vec::new(),
            comments: Vec::new(),
            alerts: Vec::new(),
            created_at: now(),
        });
    }

    /// A user (not Firebreak) pushes a commit to `branch` that sets `path` to `content` (a
    /// `synchronize` webhook follows for an open PR of that branch). Not counted as a write.
    pub fn push_as(
        &self,
        login: &str,
        owner: &str,
        repo: &str,
        branch: &str,
        path: &str,
        content: &str,
    ) {
        let mut inner = self.inner();
        let head = inner.repo(owner, repo).unwrap().refs[&format!("refs/heads/{branch}")].clone();
        let mut tree = inner.commits[&head].tree.clone();
        tree.insert(path.to_owned(), content.to_owned());
        let sha = inner.commit(tree, vec![head.clone()], &format!("Update {path}"), login);
        inner
            .repo_mut(owner, repo)
            .unwrap()
            .refs
            .insert(format!("refs/heads/{branch}"), sha.clone());
        inner.synchronize(&self.shared, owner, repo, branch, &head, &sha, login);
    }

    /// The content of `path` at `reference` (a branch or a commit sha).
    pub fn file(&self, owner: &str, repo: &str, reference: &str, path: &str) -> Option<String> {
        let inner = self.inner();
        let sha = inner.resolve(owner, repo, Some(reference))?;
        inner.commits[&sha].tree.get(path).cloned()
    }

    /// Branch names of `owner/repo`.
    pub fn branches(&self, owner: &str, repo: &str) -> Vec<String> {
        self.inner()
            .repo(owner, repo)
            .unwrap()
            .refs
            .keys()
            .filter_map(|r| r.strip_prefix("refs/heads/").map(str::to_owned))
            .collect()
    }

    /// `(sha, message, author)` of the commits on `branch`, newest first (first parents).
    pub fn log(&self, owner: &str, repo: &str, branch: &str) -> Vec<(String, String, String)> {
        let inner = self.inner();
        let mut out = Vec::new();
        let mut cur = inner.resolve(owner, repo, Some(branch));
        while let Some(sha) = cur {
            let c = &inner.commits[&sha];
            out.push((sha.clone(), c.message.clone(), c.author.clone()));
            cur = c.parents.first().cloned();
        }
        out
    }

    // ---- pulls ----

    /// Every pull request of `owner/repo`, as `GET /repos/{o}/{r}/pulls/{n}` returns it.
    pub fn pulls(&self, owner: &str, repo: &str) -> Vec<Value> {
        let mut inner = self.inner();
        let r = inner.repo(owner, repo).unwrap().clone();
        r.pulls
            .iter()
            .map(|p| inner.pull_json(&self.base, &r, p, true))
            .collect()
    }

    /// Submits a review as `login`, as GitHub's UI would (refused like GitHub for the PR's
    /// author approving or requesting changes on their own PR); sends `pull_request_review`.
    pub fn submit_review(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        login: &str,
        state: ReviewState,
        body: &str,
    ) -> Result<u64, String> {
        {
            let inner = self.inner();
            let p = inner
                .repo(owner, repo)
                .and_then(|r| r.pulls.iter().find(|p| p.number == number))
                .ok_or("no such pull request")?;
            if p.author.eq_ignore_ascii_case(login) && state != ReviewState::Commented {
                return Err(format!(
                    "Can not {} your own pull request",
                    if state == ReviewState::Approved {
                        "approve"
                    } else {
                        "request changes on"
                    }
                ));
            }
            if p.state != "open" {
                return Err("Pull request is closed".into());
            }
        }
        Ok(self.inject_review(owner, repo, number, login, state, body))
    }

    /// Records a review as `login` without GitHub's checks (a test of what Firebreak does with
    /// a review GitHub would not allow); sends `pull_request_review` `submitted`.
    pub fn inject_review(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        login: &str,
        state: ReviewState,
        body: &str,
    ) -> u64 {
        let mut inner = self.inner();
        let id = inner.id();
        let head = inner.pull_head(owner, repo, number);
        let review = Review {
            id,
            user: login.to_owned(),
            state,
            body: body.to_owned(),
            commit_id: head,
            submitted_at: now(),
        };
        let r = inner.repo_mut(owner, repo).unwrap();
        let p = r.pulls.iter_mut().find(|p| p.number == number).unwrap();
        p.reviews.push(review.clone());
        p.requested_reviewers
            .retain(|l| !l.eq_ignore_ascii_case(login));
        let repo_c = inner.repo(owner, repo).unwrap().clone();
        let pull = repo_c.pulls.iter().find(|p| p.number == number).unwrap();
        let mut review_json = inner.review_json(&self.base, &repo_c, pull, &review);
        review_json["state"] = json!(review.state.rest().to_ascii_lowercase());
        let payload = json!({
            "action": "submitted",
            "review": review_json,
            "pull_request": inner.pull_json(&self.base, &repo_c, pull, false),
            "repository": inner.repo_json(&self.base, &repo_c),
            "sender": inner.user_json(&self.base, login),
        });
        inner.emit(&self.shared, "pull_request_review", payload, &repo_c);
        id
    }

    /// `login` closes PR `number` without merging; sends `pull_request` `closed`.
    pub fn close_pull_as(&self, login: &str, owner: &str, repo: &str, number: u64) {
        let mut inner = self.inner();
        inner.set_pull_state(&self.shared, owner, repo, number, "closed", login);
    }

    /// `login` merges PR `number` (a merge commit on the base); sends `pull_request` `closed`
    /// with `merged: true`.
    pub fn merge_pull_as(&self, login: &str, owner: &str, repo: &str, number: u64) {
        let mut inner = self.inner();
        inner
            .merge(&self.shared, owner, repo, number, login)
            .unwrap();
    }

    /// The comments on PR `number`, as `GET …/issues/{n}/comments` returns them.
    pub fn comments(&self, owner: &str, repo: &str, number: u64) -> Vec<Value> {
        let mut inner = self.inner();
        let r = inner.repo(owner, repo).unwrap().clone();
        r.comments
            .iter()
            .filter(|c| c.number == number)
            .map(|c| inner.comment_json(&self.base, &r, c))
            .collect()
    }

    // ---- secret scanning ----

    /// Opens a secret-scanning alert; sends `secret_scanning_alert` `created`. Returns its number.
    pub fn add_alert(&self, owner: &str, repo: &str, seed: AlertSeed) -> u64 {
        let mut inner = self.inner();
        let r = inner.repo_mut(owner, repo).unwrap();
        let number = r.alerts.iter().map(|a| a.number).max().unwrap_or(0) + 1;
        let t = now();
        r.alerts.push(Alert {
            number,
            seed,
            state: "open",
            resolution: None,
            resolution_comment: None,
            resolved_by: None,
            resolved_at: None,
            created_at: t.clone(),
            updated_at: t,
        });
        let repo_c = r.clone();
        inner.alert_event(&self.shared, &repo_c, number, "created", owner);
        number
    }

    /// An alert as `GET /repos/{o}/{r}/secret-scanning/alerts/{n}` returns it.
    pub fn alert(&self, owner: &str, repo: &str, number: u64) -> Value {
        let mut inner = self.inner();
        let r = inner.repo(owner, repo).unwrap().clone();
        let a = r.alerts.iter().find(|a| a.number == number).unwrap();
        inner.alert_json(&self.base, &r, a, false)
    }

    // ---- accounting ----

    /// Every request that was not a GET, as `METHOD /path`, in order.
    pub fn writes(&self) -> Vec<String> {
        self.inner().writes.clone()
    }

    /// How many requests matched `method` and a path starting with `prefix`.
    pub fn calls(&self, method: &str, prefix: &str) -> usize {
        self.inner()
            .calls
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(prefix))
            .count()
    }

    /// Every request as `(method, path, status)`.
    pub fn all_calls(&self) -> Vec<(String, String, u16)> {
        self.inner().calls.clone()
    }

    // ---- webhooks ----

    /// Deliver webhooks to `url`, signed with `secret`.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.inner().webhook = Some((url.to_owned(), secret.to_owned()));
    }

    /// While paused, events are recorded as dropped deliveries and not sent (lost deliveries).
    pub fn pause_webhooks(&self, paused: bool) {
        self.inner().webhooks_paused = paused;
    }

    /// Every delivery, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner().deliveries.clone()
    }

    /// Waits until every queued delivery was answered (or failed).
    pub async fn settle(&self) {
        loop {
            let notified = self.shared.settled.notified();
            if self.shared.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Sends delivery `id` again, with the same GUID and body, as GitHub's "Redeliver" does.
    pub async fn redeliver(&self, id: &str) {
        let d = self
            .inner()
            .deliveries
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .unwrap();
        let d = Delivery {
            status: None,
            dropped: false,
            ..d
        };
        self.inner().deliveries.push(d.clone());
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        self.shared.outgoing.send(d).unwrap();
        self.settle().await;
    }
}

impl Inner {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn commit(
        &mut self,
        tree: BTreeMap<String, String>,
        parents: Vec<String>,
        message: &str,
        author: &str,
    ) -> String {
        let n = self.id().to_string();
        let mut parts: Vec<&str> = vec![&n, message, author];
        parts.extend(parents.iter().map(String::as_str));
        let sha = hash40(&parts);
        self.commits.insert(
            sha.clone(),
            Commit {
                tree,
                parents,
                message: message.to_owned(),
                author: author.to_owned(),
                date: now(),
            },
        );
        sha
    }

    fn repo(&self, owner: &str, name: &str) -> Option<&Repo> {
        self.repos
            .iter()
            .find(|r| r.owner.eq_ignore_ascii_case(owner) && r.name.eq_ignore_ascii_case(name))
    }

    fn repo_mut(&mut self, owner: &str, name: &str) -> Option<&mut Repo> {
        self.repos
            .iter_mut()
            .find(|r| r.owner.eq_ignore_ascii_case(owner) && r.name.eq_ignore_ascii_case(name))
    }

    /// A branch name, `heads/…`/`refs/heads/…` or a commit sha; `None` → the default branch.
    fn resolve(&self, owner: &str, repo: &str, reference: Option<&str>) -> Option<String> {
        let r = self.repo(owner, repo)?;
        let reference = reference.unwrap_or(&r.default_branch);
        let full = if reference.starts_with("refs/") {
            reference.to_owned()
        } else if reference.starts_with("heads/") || reference.starts_with("tags/") {
            format!("refs/{reference}")
        } else {
            format!("refs/heads/{reference}")
        };
        r.refs.get(&full).cloned().or_else(|| {
            self.commits
                .contains_key(reference)
                .then(|| reference.to_owned())
        })
    }

    fn pull_head(&self, owner: &str, repo: &str, number: u64) -> String {
        let r = self.repo(owner, repo).unwrap();
        let p = r.pulls.iter().find(|p| p.number == number).unwrap();
        p.frozen_head
            .clone()
            .or_else(|| r.refs.get(&format!("refs/heads/{}", p.head)).cloned())
            .unwrap_or_default()
    }

    fn user_id(&mut self, login: &str) -> u64 {
        if let Some(id) = self.user_ids.get(login) {
            return *id;
        }
        let id = self.id();
        self.user_ids.insert(login.to_owned(), id);
        id
    }

    fn user_json(&mut self, base: &str, login: &str) -> Value {
        let id = self.user_id(login);
        let kind = if login.ends_with("[bot]") {
            "Bot"
        } else if self.orgs.iter().any(|o| o.eq_ignore_ascii_case(login)) {
            "Organization"
        } else {
            "User"
        };
        let u = format!(
            "{base}/users/{}",
            login.replace('[', "%5B").replace(']', "%5D")
        );
        json!({
            "login": login,
            "id": id,
            "node_id": BASE64_STANDARD.encode(format!("04:User{id}")),
            "avatar_url": format!("{base}/avatars/u/{id}?v=4"),
            "gravatar_id": "",
            "url": u,
            "html_url": format!("{base}/{login}"),
            "followers_url": format!("{u}/followers"),
            "following_url": format!("{u}/following{{/other_user}}"),
            "gists_url": format!("{u}/gists{{/gist_id}}"),
            "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("{u}/subscriptions"),
            "organizations_url": format!("{u}/orgs"),
            "repos_url": format!("{u}/repos"),
            "events_url": format!("{u}/events{{/privacy}}"),
            "received_events_url": format!("{u}/received_events"),
            "type": kind,
            "user_view_type": "public",
            "site_admin": false,
        })
    }

    fn repo_json(&mut self, base: &str, r: &Repo) -> Value {
        let api = format!("{base}/repos/{}/{}", r.owner, r.name);
        let owner = self.user_json(base, &r.owner);
        let mut v = json!({
            "id": r.id,
            "node_id": BASE64_STANDARD.encode(format!("010:Repository{}", r.id)),
            "name": r.name,
            "full_name": format!("{}/{}", r.owner, r.name),
            "private": true,
            "owner": owner,
            "html_url": format!("{base}/{}/{}", r.owner, r.name),
            "description": null,
            "fork": false,
            "url": api,
        });
        let more = json!({
            "created_at": r.created_at,
            "updated_at": r.created_at,
            "pushed_at": r.created_at,
            "git_url": format!("git://{}/{}/{}.git", base.trim_start_matches("http://"), r.owner, r.name),
            "ssh_url": format!("git@{}:{}/{}.git", base.trim_start_matches("http://"), r.owner, r.name),
            "clone_url": format!("{base}/{}/{}.git", r.owner, r.name),
            "svn_url": format!("{base}/{}/{}", r.owner, r.name),
            "homepage": null,
            "size": 1,
            "stargazers_count": 0,
            "watchers_count": 0,
            "language": null,
            "has_issues": true,
            "has_projects": false,
            "has_downloads": true,
            "has_wiki": false,
            "has_pages": false,
            "has_discussions": false,
            "forks_count": 0,
            "mirror_url": null,
            "archived": false,
            "disabled": false,
            "open_issues_count": r.pulls.iter().filter(|p| p.state == "open").count(),
            "license": null,
            "allow_forking": false,
            "is_template": false,
            "web_commit_signoff_required": false,
            "custom_properties": {},
            "topics": [],
            "visibility": "private",
            "forks": 0,
            "open_issues": r.pulls.iter().filter(|p| p.state == "open").count(),
            "watchers": 0,
            "default_branch": r.default_branch,
            "permissions": {"admin": false, "maintain": false, "push": true, "triage": true, "pull": true},
        });
        for (k, val) in more.as_object().unwrap() {
            v[k] = val.clone();
        }
        for (k, path) in [
            ("forks_url", "/forks"),
            ("keys_url", "/keys{/key_id}"),
            ("collaborators_url", "/collaborators{/collaborator}"),
            ("teams_url", "/teams"),
            ("hooks_url", "/hooks"),
            ("issue_events_url", "/issues/events{/number}"),
            ("events_url", "/events"),
            ("assignees_url", "/assignees{/user}"),
            ("branches_url", "/branches{/branch}"),
            ("tags_url", "/tags"),
            ("blobs_url", "/git/blobs{/sha}"),
            ("git_tags_url", "/git/tags{/sha}"),
            ("git_refs_url", "/git/refs{/sha}"),
            ("trees_url", "/git/trees{/sha}"),
            ("statuses_url", "/statuses/{sha}"),
            ("languages_url", "/languages"),
            ("stargazers_url", "/stargazers"),
            ("contributors_url", "/contributors"),
            ("subscribers_url", "/subscribers"),
            ("subscription_url", "/subscription"),
            ("commits_url", "/commits{/sha}"),
            ("git_commits_url", "/git/commits{/sha}"),
            ("comments_url", "/comments{/number}"),
            ("issue_comment_url", "/issues/comments{/number}"),
            ("contents_url", "/contents/{+path}"),
            ("compare_url", "/compare/{base}...{head}"),
            ("merges_url", "/merges"),
            ("archive_url", "/{archive_format}{/ref}"),
            ("downloads_url", "/downloads"),
            ("issues_url", "/issues{/number}"),
            ("pulls_url", "/pulls{/number}"),
            ("milestones_url", "/milestones{/number}"),
            (
                "notifications_url",
                "/notifications{?since,all,participating}",
            ),
            ("labels_url", "/labels{/name}"),
            ("releases_url", "/releases{/id}"),
            ("deployments_url", "/deployments"),
        ] {
            v[k] = json!(format!("{api}{path}"));
        }
        v
    }

    fn label_json(&mut self, base: &str, r: &Repo, name: &str) -> Value {
        let id = hash40(&[&r.owner, &r.name, name]);
        json!({
            "id": u64::from_str_radix(&id[..12], 16).unwrap(),
            "node_id": BASE64_STANDARD.encode(format!("05:Label{id}")),
            "url": format!("{base}/repos/{}/{}/labels/{}", r.owner, r.name, name),
            "name": name,
            "color": "ededed",
            "default": false,
            "description": null,
        })
    }

    /// A pull request; `full` adds what `GET …/pulls/{n}` and webhooks have over list items.
    fn pull_json(&mut self, base: &str, r: &Repo, p: &Pull, full: bool) -> Value {
        let api = format!("{base}/repos/{}/{}", r.owner, r.name);
        let html = format!("{base}/{}/{}/pull/{}", r.owner, r.name, p.number);
        let head_sha = p
            .frozen_head
            .clone()
            .or_else(|| r.refs.get(&format!("refs/heads/{}", p.head)).cloned())
            .unwrap_or_default();
        let base_sha = r
            .refs
            .get(&format!("refs/heads/{}", p.base))
            .cloned()
            .unwrap_or_default();
        let repo = self.repo_json(base, r);
        let owner = self.user_json(base, &r.owner);
        let user = self.user_json(base, &p.author);
        let reviewers: Vec<Value> = p
            .requested_reviewers
            .clone()
            .iter()
            .map(|l| self.user_json(base, l))
            .collect();
        let teams: Vec<Value> = p
            .requested_teams
            .iter()
            .map(|t| {
                json!({"id": u64::from_str_radix(&hash40(&[t])[..8], 16).unwrap(), "node_id": "T_1", "url": format!("{base}/orgs/{}/teams/{t}", r.owner), "html_url": format!("{base}/orgs/{}/teams/{t}", r.owner), "name": t, "slug": t, "description": null, "privacy": "closed", "notification_setting": "notifications_enabled", "permission": "pull", "members_url": format!("{base}/orgs/{}/teams/{t}/members{{/member}}", r.owner), "repositories_url": format!("{base}/orgs/{}/teams/{t}/repos", r.owner), "parent": null})
            })
            .collect();
        let labels: Vec<Value> = p
            .labels
            .clone()
            .iter()
            .map(|l| self.label_json(base, r, l))
            .collect();
        let links = json!({
                "self": {"href": format!("{api}/pulls/{}", p.number)},
                "html": {"href": html},
                "issue": {"href": format!("{api}/issues/{}", p.number)},
                "comments": {"href": format!("{api}/issues/{}/comments", p.number)},
                "review_comments": {"href": format!("{api}/pulls/{}/comments", p.number)},
                "review_comment": {"href": format!("{api}/pulls/comments{{/number}}")},
                "commits": {"href": format!("{api}/pulls/{}/commits", p.number)},
                "statuses": {"href": format!("{api}/statuses/{head_sha}")},
        });
        let head_base = json!({
            "head": {"label": format!("{}:{}", r.owner, p.head), "ref": p.head, "sha": head_sha, "user": owner.clone(), "repo": repo.clone()},
            "base": {"label": format!("{}:{}", r.owner, p.base), "ref": p.base, "sha": base_sha, "user": owner, "repo": repo},
        });
        let mut v = json!({
            "url": format!("{api}/pulls/{}", p.number),
            "id": p.id,
            "node_id": BASE64_STANDARD.encode(format!("011:PullRequest{}", p.id)),
            "html_url": html,
            "diff_url": format!("{html}.diff"),
            "patch_url": format!("{html}.patch"),
            "issue_url": format!("{api}/issues/{}", p.number),
            "number": p.number,
            "state": p.state,
            "locked": false,
            "title": p.title,
            "user": user,
            "body": p.body,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
            "closed_at": p.closed_at,
            "merged_at": p.merged_at,
            "merge_commit_sha": p.merge_commit_sha,
            "assignee": null,
            "assignees": [],
            "requested_reviewers": reviewers,
            "requested_teams": teams,
            "labels": labels,
            "milestone": null,
            "draft": p.draft,
            "commits_url": format!("{api}/pulls/{}/commits", p.number),
            "review_comments_url": format!("{api}/pulls/{}/comments", p.number),
            "review_comment_url": format!("{api}/pulls/comments{{/number}}"),
            "comments_url": format!("{api}/issues/{}/comments", p.number),
            "statuses_url": format!("{api}/statuses/{head_sha}"),
            "head": head_base["head"].clone(),
            "base": head_base["base"].clone(),
            "_links": links,
            "author_association": if p.author.eq_ignore_ascii_case(&r.owner) { "OWNER" } else { "CONTRIBUTOR" },
            "auto_merge": null,
            "active_lock_reason": null,
        });
        if full {
            let merged_by = p.merged_by.clone().map(|l| self.user_json(base, &l));
            let (commits, changed) = self.diff_stats(r, p, &head_sha);
            let obj = v.as_object_mut().unwrap();
            obj.insert("merged".into(), json!(p.merged_at.is_some()));
            obj.insert(
                "mergeable".into(),
                if p.state == "open" {
                    json!(true)
                } else {
                    Value::Null
                },
            );
            obj.insert(
                "rebaseable".into(),
                if p.state == "open" {
                    json!(true)
                } else {
                    Value::Null
                },
            );
            obj.insert(
                "mergeable_state".into(),
                json!(if p.state == "open" {
                    "clean"
                } else {
                    "unknown"
                }),
            );
            obj.insert("merged_by".into(), merged_by.unwrap_or(Value::Null));
            obj.insert(
                "comments".into(),
                json!(r.comments.iter().filter(|c| c.number == p.number).count()),
            );
            obj.insert("review_comments".into(), json!(0));
            obj.insert(
                "maintainer_can_modify".into(),
                json!(p.maintainer_can_modify),
            );
            obj.insert("commits".into(), json!(commits));
            obj.insert("additions".into(), json!(changed));
            obj.insert("deletions".into(), json!(changed));
            obj.insert("changed_files".into(), json!(changed));
        }
        v
    }

    /// Commits on head not on base, and files that differ.
    fn diff_stats(&self, r: &Repo, p: &Pull, head: &str) -> (usize, usize) {
        let base = r.refs.get(&format!("refs/heads/{}", p.base)).cloned();
        let mut n = 0;
        let mut cur = Some(head.to_owned());
        while let Some(sha) = cur {
            if Some(&sha) == base.as_ref() || n > 1000 {
                break;
            }
            n += 1;
            cur = self
                .commits
                .get(&sha)
                .and_then(|c| c.parents.first().cloned());
        }
        let changed = match (
            base.and_then(|b| self.commits.get(&b)),
            self.commits.get(head),
        ) {
            (Some(b), Some(h)) => {
                let mut keys: Vec<&String> = b.tree.keys().chain(h.tree.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.iter()
                    .filter(|k| b.tree.get(**k) != h.tree.get(**k))
                    .count()
            }
            _ => 0,
        };
        (n, changed)
    }

    fn review_json(&mut self, base: &str, r: &Repo, p: &Pull, rv: &Review) -> Value {
        let html = format!(
            "{base}/{}/{}/pull/{}#pullrequestreview-{}",
            r.owner, r.name, p.number, rv.id
        );
        let pr = format!("{base}/repos/{}/{}/pulls/{}", r.owner, r.name, p.number);
        json!({
            "id": rv.id,
            "node_id": BASE64_STANDARD.encode(format!("017:PullRequestReview{}", rv.id)),
            "user": self.user_json(base, &rv.user),
            "body": rv.body,
            "state": rv.state.rest(),
            "html_url": html,
            "pull_request_url": pr,
            "author_association": if rv.user.eq_ignore_ascii_case(&r.owner) { "OWNER" } else { "MEMBER" },
            "_links": {"html": {"href": html}, "pull_request": {"href": pr}},
            "submitted_at": rv.submitted_at,
            "commit_id": rv.commit_id,
        })
    }

    fn comment_json(&mut self, base: &str, r: &Repo, c: &Comment) -> Value {
        let api = format!("{base}/repos/{}/{}", r.owner, r.name);
        json!({
            "url": format!("{api}/issues/comments/{}", c.id),
            "html_url": format!("{base}/{}/{}/pull/{}#issuecomment-{}", r.owner, r.name, c.number, c.id),
            "issue_url": format!("{api}/issues/{}", c.number),
            "id": c.id,
            "node_id": BASE64_STANDARD.encode(format!("012:IssueComment{}", c.id)),
            "user": self.user_json(base, &c.user),
            "created_at": c.created_at,
            "updated_at": c.updated_at,
            "author_association": if c.user.eq_ignore_ascii_case(&r.owner) { "OWNER" } else { "NONE" },
            "body": c.body,
            "reactions": {"url": format!("{api}/issues/comments/{}/reactions", c.id), "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0, "confused": 0, "heart": 0, "rocket": 0, "eyes": 0},
            "performed_via_github_app": null,
        })
    }

    /// An alert as REST returns it; `webhook` drops what the webhook's alert lacks.
    fn alert_json(&mut self, base: &str, r: &Repo, a: &Alert, hide_secret: bool) -> Value {
        let api = format!(
            "{base}/repos/{}/{}/secret-scanning/alerts/{}",
            r.owner, r.name, a.number
        );
        let head = r
            .refs
            .get(&format!("refs/heads/{}", r.default_branch))
            .cloned()
            .unwrap_or_default();
        let mut v = json!({
            "number": a.number,
            "created_at": a.created_at,
            "updated_at": a.updated_at,
            "url": api,
            "html_url": format!("{base}/{}/{}/security/secret-scanning/{}", r.owner, r.name, a.number),
            "locations_url": format!("{api}/locations"),
            "state": a.state,
            "resolution": a.resolution,
            "resolved_at": a.resolved_at,
            "resolved_by": a.resolved_by.as_ref().map(|l| self.user_json(base, l)),
            "secret_type": a.seed.secret_type,
            "secret_type_display_name": a.seed.display,
            "secret": a.seed.secret,
            "push_protection_bypassed_by": null,
            "push_protection_bypassed": false,
            "push_protection_bypassed_at": null,
            "push_protection_bypass_request_reviewer": null,
            "push_protection_bypass_request_reviewer_comment": null,
            "push_protection_bypass_request_comment": null,
            "push_protection_bypass_request_html_url": null,
            "resolution_comment": a.resolution_comment,
            "validity": a.seed.validity,
            "publicly_leaked": false,
            "multi_repo": false,
            "is_base64_encoded": false,
            "has_more_locations": false,
        });
        if let Some(path) = &a.seed.path {
            v["first_location_detected"] = json!({
                "path": path, "start_line": 1, "end_line": 1, "start_column": 1, "end_column": 20,
                "blob_sha": blob_sha(path), "blob_url": format!("{base}/repos/{}/{}/git/blobs/{}", r.owner, r.name, blob_sha(path)),
                "commit_sha": head, "commit_url": format!("{base}/repos/{}/{}/git/commits/{head}", r.owner, r.name),
            });
        }
        if hide_secret {
            v.as_object_mut().unwrap().shift_remove("secret");
        }
        v
    }

    /// Queues a signed delivery of `event` (unless no webhook is set).
    fn emit(&mut self, shared: &Shared, event: &str, mut payload: Value, _repo: &Repo) {
        let Some((_, secret)) = self.webhook.clone() else {
            return;
        };
        if let Some(app) = &self.app {
            payload["installation"] = json!({
                "id": app.installation_id,
                "node_id": BASE64_STANDARD.encode(format!("023:IntegrationInstallation{}", app.installation_id)),
            });
        }
        let body = serde_json::to_vec(&payload).unwrap();
        let d = Delivery {
            id: guid(),
            event: event.to_owned(),
            action: payload["action"].as_str().unwrap_or_default().to_owned(),
            signature: sign(&secret, &body),
            body,
            status: None,
            dropped: self.webhooks_paused,
        };
        self.deliveries.push(d.clone());
        if !d.dropped {
            shared.pending.fetch_add(1, Ordering::SeqCst);
            shared.outgoing.send(d).unwrap();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pull_event(
        &mut self,
        shared: &Shared,
        owner: &str,
        repo: &str,
        number: u64,
        action: &str,
        sender: &str,
        extra: &[(&str, Value)],
    ) {
        let base = shared.base.clone();
        let r = self.repo(owner, repo).unwrap().clone();
        let p = r.pulls.iter().find(|p| p.number == number).unwrap().clone();
        let mut payload = json!({
            "action": action,
            "number": number,
            "pull_request": self.pull_json(&base, &r, &p, true),
            "repository": self.repo_json(&base, &r),
            "sender": self.user_json(&base, sender),
        });
        for (k, v) in extra {
            payload[*k] = v.clone();
        }
        self.emit(shared, "pull_request", payload, &r);
    }

    #[allow(clippy::too_many_arguments)]
    fn synchronize(
        &mut self,
        shared: &Shared,
        owner: &str,
        repo: &str,
        branch: &str,
        before: &str,
        after: &str,
        sender: &str,
    ) {
        let open: Vec<u64> = self
            .repo(owner, repo)
            .unwrap()
            .pulls
            .iter()
            .filter(|p| p.state == "open" && p.head == branch)
            .map(|p| p.number)
            .collect();
        for n in open {
            self.pull_event(
                shared,
                owner,
                repo,
                n,
                "synchronize",
                sender,
                &[("before", json!(before)), ("after", json!(after))],
            );
        }
    }

    fn set_pull_state(
        &mut self,
        shared: &Shared,
        owner: &str,
        repo: &str,
        number: u64,
        state: &'static str,
        sender: &str,
    ) {
        let head = self.pull_head(owner, repo, number);
        let r = self.repo_mut(owner, repo).unwrap();
        let p = r.pulls.iter_mut().find(|p| p.number == number).unwrap();
        if p.state == state {
            return;
        }
        p.state = state;
        p.updated_at = now();
        if state == "closed" {
            p.closed_at = Some(now());
            p.frozen_head = Some(head);
        } else {
            p.closed_at = None;
            p.frozen_head = None;
        }
        let action = if state == "closed" {
            "closed"
        } else {
            "reopened"
        };
        self.pull_event(shared, owner, repo, number, action, sender, &[]);
    }

    fn merge(
        &mut self,
        shared: &Shared,
        owner: &str,
        repo: &str,
        number: u64,
        sender: &str,
    ) -> Result<String, &'static str> {
        let head = self.pull_head(owner, repo, number);
        let r = self.repo(owner, repo).unwrap();
        let p = r.pulls.iter().find(|p| p.number == number).unwrap();
        if p.state != "open" {
            return Err("Pull Request is not mergeable");
        }
        let base_ref = format!("refs/heads/{}", p.base);
        let base_sha = r.refs[&base_ref].clone();
        let message = format!("Merge pull request #{number} from {owner}/{}", p.head);
        let tree = self.commits[&head].tree.clone();
        let sha = self.commit(tree, vec![base_sha, head.clone()], &message, sender);
        let t = now();
        let r = self.repo_mut(owner, repo).unwrap();
        r.refs.insert(base_ref, sha.clone());
        let p = r.pulls.iter_mut().find(|p| p.number == number).unwrap();
        p.state = "closed";
        p.merged_at = Some(t.clone());
        p.closed_at = Some(t.clone());
        p.updated_at = t;
        p.merged_by = Some(sender.to_owned());
        p.merge_commit_sha = Some(sha.clone());
        p.frozen_head = Some(head);
        self.pull_event(shared, owner, repo, number, "closed", sender, &[]);
        Ok(sha)
    }

    fn alert_event(&mut self, shared: &Shared, r: &Repo, number: u64, action: &str, sender: &str) {
        let base = shared.base.clone();
        let a = r.alerts.iter().find(|a| a.number == number).unwrap();
        // The webhook's alert has neither the secret nor `state` (the action says it).
        let mut alert = self.alert_json(&base, r, a, true);
        alert.as_object_mut().unwrap().shift_remove("state");
        let payload = json!({
            "action": action,
            "alert": alert,
            "repository": self.repo_json(&base, r),
            "sender": self.user_json(&base, sender),
        });
        self.emit(shared, "secret_scanning_alert", payload, r);
    }
}

/// The permissions an installation token needs for a call: any one of the alternatives, each a
/// list of `(permission, level)`.
type Need = &'static [&'static [(&'static str, &'static str)]];

fn covered(perms: &BTreeMap<String, String>, need: Need) -> bool {
    need.iter().any(|alt| {
        alt.iter().all(|(p, level)| {
            perms
                .get(*p)
                .is_some_and(|have| have == "write" || have == level)
        })
    })
}

fn forbidden_for_integration(need: Need, doc: &str) -> Response {
    let accepted: Vec<String> = need
        .iter()
        .map(|alt| {
            alt.iter()
                .map(|(p, l)| format!("{p}={l}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let mut resp = error(403, "Resource not accessible by integration", doc);
    resp.headers_mut().insert(
        "x-accepted-github-permissions",
        HeaderValue::from_str(&accepted.join("; ")).unwrap(),
    );
    resp
}

fn caller(inner: &Inner, headers: &HeaderMap) -> Caller {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Caller::None;
    };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .or_else(|| auth.strip_prefix("token "))
        .unwrap_or("")
        .trim();
    if token.starts_with("eyJ") {
        return match verify_jwt(inner, token) {
            Ok(()) => Caller::App,
            Err(m) => Caller::BadJwt(m),
        };
    }
    match inner.tokens.get(token) {
        Some(Token {
            login,
            installation: None,
        }) => Caller::User(login.clone()),
        Some(Token {
            login,
            installation: Some((perms, exp)),
        }) => {
            if *exp <= chrono::Utc::now().timestamp() {
                Caller::Bad
            } else {
                Caller::Installation(login.clone(), perms.clone())
            }
        }
        None => Caller::Bad,
    }
}

/// Verifies an App JWT as GitHub does: RS256 signed by the App's key, `iss` the App id, issued
/// no later than now (60 s of drift allowed), expiring in the future and at most ten minutes
/// from now.
fn verify_jwt(inner: &Inner, token: &str) -> Result<(), String> {
    let app = inner
        .app
        .as_ref()
        .ok_or_else(|| "Integration not found".to_owned())?;
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| "A JSON web token could not be decoded".to_owned())?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err("A JSON web token could not be decoded".into());
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_rsa_der(&app.public_key);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|_| "A JSON web token could not be decoded".to_owned())?;
    let claims = data.claims;
    let now = chrono::Utc::now().timestamp();
    let iss_ok = match &claims["iss"] {
        Value::Number(n) => n.as_u64() == Some(app.id),
        Value::String(s) => s == &app.id.to_string(),
        _ => false,
    };
    if !iss_ok {
        return Err("Integration not found".into());
    }
    let iat = claims["iat"]
        .as_i64()
        .ok_or("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued")?;
    if iat > now + 60 {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing a time in the past".into(),
        );
    }
    let exp = claims["exp"].as_i64().ok_or(
        "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
    )?;
    if exp <= now {
        return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires".into());
    }
    if exp > now + 600 + 60 {
        return Err("'Expiration time' claim ('exp') is too far in the future".into());
    }
    Ok(())
}

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let response = route(&shared, &method, &uri, &headers, &body);
    let mut inner = shared.inner.lock().unwrap();
    // Minting an installation token changes nothing in a repository: not a write.
    let token_exchange = path.trim_start_matches("/api/v3").starts_with("/app/");
    if method != Method::GET && !token_exchange {
        inner.writes.push(format!("{method} {path}"));
    }
    inner
        .calls
        .push((method.to_string(), path, response.status().as_u16()));
    response
}

fn route(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    raw: &Bytes,
) -> Response {
    let base = shared.base.clone();
    let path = uri.path();
    let path = path.strip_prefix("/api/v3").unwrap_or(path);
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = query(uri);
    let body: Value = if raw.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(_) => {
                return error(
                    400,
                    "Problems parsing JSON",
                    "overview/resources-in-the-rest-api",
                );
            }
        }
    };
    let mut inner = shared.inner.lock().unwrap();
    let who = caller(&inner, headers);

    // GitHub App endpoints take only the App's JWT.
    if segs.first() == Some(&"app") {
        match who {
            Caller::App => {}
            Caller::BadJwt(m) => return error(401, &m, "apps/apps"),
            _ => {
                return error(401, "A JSON web token could not be decoded", "apps/apps");
            }
        }
        let app = inner.app.clone().unwrap();
        return match (method.clone(), segs.as_slice()) {
            (Method::GET, ["app"]) => {
                let owner = inner.user_json(&base, &app.owner);
                ok(
                    200,
                    json!({
                        "id": app.id,
                        "slug": app.slug,
                        "node_id": BASE64_STANDARD.encode(format!("03:Integration{}", app.id)),
                        "client_id": format!("Iv1.{}", &hash40(&[&app.slug])[..16]),
                        "owner": owner,
                        "name": app.slug,
                        "description": "",
                        "external_url": format!("{base}/apps/{}", app.slug),
                        "html_url": format!("{base}/apps/{}", app.slug),
                        "created_at": "2024-01-01T00:00:00Z",
                        "updated_at": "2024-01-01T00:00:00Z",
                        "permissions": app.permissions,
                        "events": ["pull_request", "pull_request_review", "secret_scanning_alert"],
                        "installations_count": 1,
                    }),
                )
            }
            (Method::POST, ["app", "installations", id, "access_tokens"]) => {
                if id.parse::<u64>().ok() != Some(app.installation_id) {
                    return not_found("apps/apps#create-an-installation-access-token-for-an-app");
                }
                let doc = "apps/apps#create-an-installation-access-token-for-an-app";
                let b = if body.is_null() { json!({}) } else { body };
                if let Err(r) = check_body(
                    &b,
                    &[
                        ("repositories", Ty::StrList, false),
                        ("repository_ids", Ty::Obj, false),
                        ("permissions", Ty::Obj, false),
                    ],
                    doc,
                ) {
                    return r;
                }
                let token = random_token("ghs_");
                let exp = chrono::Utc::now().timestamp() + inner.token_ttl_seconds;
                inner.tokens.insert(
                    token.clone(),
                    Token {
                        login: format!("{}[bot]", app.slug),
                        installation: Some((app.permissions.clone(), exp)),
                    },
                );
                let expires = chrono::DateTime::from_timestamp(exp, 0)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                ok(
                    201,
                    json!({
                        "token": token,
                        "expires_at": expires,
                        "permissions": app.permissions,
                        "repository_selection": "all",
                    }),
                )
            }
            _ => not_found("apps/apps"),
        };
    }

    let (login, perms) = match &who {
        Caller::User(l) => (l.clone(), None),
        Caller::Installation(l, p) => (l.clone(), Some(p.clone())),
        Caller::App => {
            return error(
                403,
                "A JSON web token cannot be used to access this resource",
                "apps/apps",
            );
        }
        Caller::None => {
            return error(
                401,
                "Requires authentication",
                "overview/resources-in-the-rest-api",
            );
        }
        Caller::Bad | Caller::BadJwt(_) => {
            return error(401, "Bad credentials", "overview/resources-in-the-rest-api");
        }
    };
    macro_rules! need {
        ($need:expr, $doc:expr) => {
            if let Some(p) = &perms
                && !covered(p, $need)
            {
                return forbidden_for_integration($need, $doc);
            }
        };
    }

    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["user"]) => {
            if perms.is_some() {
                return error(
                    403,
                    "Resource not accessible by integration",
                    "users/users#get-the-authenticated-user",
                );
            }
            ok(200, inner.user_json(&base, &login))
        }
        (Method::GET, ["orgs", org, "teams", team, "memberships", user]) => {
            need!(
                &[&[("members", "read")]],
                "teams/members#get-team-membership-for-a-user"
            );
            let m = inner
                .teams
                .get(&((*org).to_owned(), (*team).to_owned()))
                .and_then(|ms| {
                    ms.iter()
                        .find(|(l, _)| l.eq_ignore_ascii_case(user))
                        .cloned()
                });
            match m {
                Some((l, role)) => ok(
                    200,
                    json!({
                        "url": format!("{base}/organizations/1/team/{}/memberships/{l}", &hash40(&[team])[..6]),
                        "role": role,
                        "state": "active",
                    }),
                ),
                None => not_found("teams/members#get-team-membership-for-a-user"),
            }
        }
        (m, ["repos", owner, repo, rest @ ..]) => {
            let (owner, repo) = ((*owner).to_owned(), (*repo).to_owned());
            let Some(r) = inner.repo(&owner, &repo).cloned() else {
                return not_found("repos/repos#get-a-repository");
            };
            let (owner, repo) = (r.owner.clone(), r.name.clone());
            repo_route(
                shared,
                &mut inner,
                &login,
                perms.as_ref(),
                m,
                &owner,
                &repo,
                rest,
                &q,
                body,
            )
        }
        _ => not_found("rest"),
    }
}

#[allow(clippy::too_many_arguments)]
fn repo_route(
    shared: &Shared,
    inner: &mut Inner,
    login: &str,
    perms: Option<&BTreeMap<String, String>>,
    method: Method,
    owner: &str,
    repo: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
    body: Value,
) -> Response {
    let base = shared.base.clone();
    macro_rules! need {
        ($need:expr, $doc:expr) => {
            if let Some(p) = perms
                && !covered(p, $need)
            {
                return forbidden_for_integration($need, $doc);
            }
        };
    }
    macro_rules! check {
        ($fields:expr, $doc:expr) => {
            if let Err(r) = check_body(&body, $fields, $doc) {
                return r;
            }
        };
    }
    let r = inner.repo(owner, repo).unwrap().clone();
    match (method, rest) {
        (Method::GET, []) => {
            need!(&[&[("metadata", "read")]], "repos/repos#get-a-repository");
            ok(200, inner.repo_json(&base, &r))
        }
        // ---- git refs ----
        (Method::GET, ["git", "ref", reference @ ..]) => {
            need!(&[&[("contents", "read")]], "git/refs#get-a-reference");
            let name = format!("refs/{}", reference.join("/"));
            match r.refs.get(&name) {
                Some(sha) => ok(200, ref_json(&base, &r, &name, sha)),
                None => not_found("git/refs#get-a-reference"),
            }
        }
        (Method::GET, ["git", "matching-refs", prefix @ ..]) => {
            need!(
                &[&[("contents", "read")]],
                "git/refs#list-matching-references"
            );
            let prefix = format!("refs/{}", prefix.join("/"));
            ok(
                200,
                Value::Array(
                    r.refs
                        .iter()
                        .filter(|(n, _)| n.starts_with(&prefix))
                        .map(|(n, s)| ref_json(&base, &r, n, s))
                        .collect(),
                ),
            )
        }
        (Method::POST, ["git", "refs"]) => {
            let doc = "git/refs#create-a-reference";
            need!(&[&[("contents", "write")]], doc);
            check!(
                &[
                    ("ref", Ty::Str, true),
                    ("sha", Ty::Str, true),
                    ("key", Ty::Str, false)
                ],
                doc
            );
            let name = body["ref"].as_str().unwrap();
            let sha = body["sha"].as_str().unwrap();
            if !name.starts_with("refs/") || name.matches('/').count() < 2 {
                return error(
                    422,
                    "Reference name must start with 'refs/' and have at least two slashes.",
                    doc,
                );
            }
            if !inner.commits.contains_key(sha) {
                return error(422, "Object does not exist", doc);
            }
            if r.refs.contains_key(name) {
                return error(422, "Reference already exists", doc);
            }
            inner
                .repo_mut(owner, repo)
                .unwrap()
                .refs
                .insert(name.to_owned(), sha.to_owned());
            ok(201, ref_json(&base, &r, name, sha))
        }
        (Method::PATCH, ["git", "refs", reference @ ..]) => {
            let doc = "git/refs#update-a-reference";
            need!(&[&[("contents", "write")]], doc);
            check!(&[("sha", Ty::Str, true), ("force", Ty::Bool, false)], doc);
            let name = format!("refs/{}", reference.join("/"));
            let sha = body["sha"].as_str().unwrap().to_owned();
            let Some(old) = r.refs.get(&name).cloned() else {
                return error(422, "Reference does not exist", doc);
            };
            if !inner.commits.contains_key(&sha) {
                return error(422, "Object does not exist", doc);
            }
            let force = body["force"].as_bool().unwrap_or(false);
            if !force && !is_ancestor(inner, &old, &sha) {
                return error(422, "Update is not a fast forward", doc);
            }
            inner
                .repo_mut(owner, repo)
                .unwrap()
                .refs
                .insert(name.clone(), sha.clone());
            if let Some(branch) = name.strip_prefix("refs/heads/") {
                inner.synchronize(shared, owner, repo, branch, &old, &sha, login);
            }
            ok(200, ref_json(&base, &r, &name, &sha))
        }
        (Method::DELETE, ["git", "refs", reference @ ..]) => {
            let doc = "git/refs#delete-a-reference";
            need!(&[&[("contents", "write")]], doc);
            let name = format!("refs/{}", reference.join("/"));
            if inner
                .repo_mut(owner, repo)
                .unwrap()
                .refs
                .remove(&name)
                .is_none()
            {
                return error(422, "Reference does not exist", doc);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        // ---- contents ----
        (Method::GET, ["contents", path @ ..]) => {
            let doc = "repos/contents#get-repository-content";
            need!(&[&[("contents", "read")]], doc);
            let path = path.join("/");
            let reference = q.get("ref").map(String::as_str);
            let Some(sha) = inner.resolve(owner, repo, reference) else {
                return error(
                    404,
                    &format!(
                        "No commit found for the ref {}",
                        reference.unwrap_or_default()
                    ),
                    doc,
                );
            };
            let shown_ref = reference.unwrap_or(&r.default_branch).to_owned();
            let tree = inner.commits[&sha].tree.clone();
            if let Some(content) = tree.get(&path) {
                return ok(
                    200,
                    content_json(&base, &r, &shown_ref, &path, content, true),
                );
            }
            let prefix = format!("{path}/");
            let mut entries: Vec<Value> = Vec::new();
            let mut dirs: Vec<String> = Vec::new();
            for (p, c) in &tree {
                if let Some(rest) = p.strip_prefix(&prefix) {
                    match rest.split_once('/') {
                        None => entries.push(content_json(&base, &r, &shown_ref, p, c, false)),
                        Some((d, _)) if !dirs.contains(&d.to_owned()) => dirs.push(d.to_owned()),
                        _ => {}
                    }
                }
            }
            if entries.is_empty() && dirs.is_empty() {
                return not_found(doc);
            }
            for d in dirs {
                let full = format!("{prefix}{d}");
                let mut e = content_json(&base, &r, &shown_ref, &full, "", false);
                e["type"] = json!("dir");
                e["size"] = json!(0);
                e["download_url"] = Value::Null;
                entries.push(e);
            }
            ok(200, Value::Array(entries))
        }
        (Method::PUT, ["contents", path @ ..]) => {
            let doc = "repos/contents#create-or-update-file-contents";
            need!(&[&[("contents", "write")]], doc);
            let person = &[
                ("name", Ty::Str, true),
                ("email", Ty::Str, true),
                ("date", Ty::Str, false),
            ];
            check!(
                &[
                    ("message", Ty::Str, true),
                    ("content", Ty::Str, true),
                    ("sha", Ty::Str, false),
                    ("branch", Ty::Str, false),
                    ("committer", Ty::Obj, false),
                    ("author", Ty::Obj, false),
                ],
                doc
            );
            for who in ["committer", "author"] {
                if let Some(p) = body.get(who)
                    && let Err(resp) = check_body(p, person, doc)
                {
                    return resp;
                }
            }
            let path = path.join("/");
            let branch = body["branch"]
                .as_str()
                .unwrap_or(&r.default_branch)
                .to_owned();
            let Some(head) = r.refs.get(&format!("refs/heads/{branch}")).cloned() else {
                return error(404, &format!("Branch {branch} not found"), doc);
            };
            let Ok(bytes) =
                BASE64_STANDARD.decode(body["content"].as_str().unwrap().replace('\n', ""))
            else {
                return error(422, "content is not valid Base64", doc);
            };
            let Ok(content) = String::from_utf8(bytes) else {
                return error(
                    422,
                    "content is not valid UTF-8 (the emulator keeps text files only)",
                    doc,
                );
            };
            let mut tree = inner.commits[&head].tree.clone();
            let existing = tree.get(&path).map(|c| blob_sha(c));
            match (&existing, body["sha"].as_str()) {
                (Some(_), None) => {
                    return error(422, "Invalid request.\n\n\"sha\" wasn't supplied.", doc);
                }
                (Some(have), Some(given)) if have != given => {
                    return error(409, &format!("{path} does not match {given}"), doc);
                }
                (None, Some(given)) => {
                    return error(409, &format!("{path} does not match {given}"), doc);
                }
                _ => {}
            }
            tree.insert(path.clone(), content.clone());
            let message = body["message"].as_str().unwrap().to_owned();
            let sha = inner.commit(tree, vec![head.clone()], &message, login);
            inner
                .repo_mut(owner, repo)
                .unwrap()
                .refs
                .insert(format!("refs/heads/{branch}"), sha.clone());
            inner.synchronize(shared, owner, repo, &branch, &head, &sha, login);
            let c = inner.commits[&sha].clone();
            let mut content_v = content_json(&base, &r, &branch, &path, &content, false);
            let obj = content_v.as_object_mut().unwrap();
            obj.shift_remove("encoding");
            obj.shift_remove("content");
            let api = format!("{base}/repos/{owner}/{repo}");
            let person = json!({"name": login, "email": format!("{login}@users.noreply.github.com"), "date": c.date});
            ok(
                if existing.is_some() { 200 } else { 201 },
                json!({
                    "content": content_v,
                    "commit": {
                        "sha": sha,
                        "node_id": BASE64_STANDARD.encode(format!("06:Commit{sha}")),
                        "url": format!("{api}/git/commits/{sha}"),
                        "html_url": format!("{base}/{owner}/{repo}/commit/{sha}"),
                        "author": person,
                        "committer": person,
                        "message": message,
                        "tree": {"url": format!("{api}/git/trees/{}", hash40(&[&sha, "tree"])), "sha": hash40(&[&sha, "tree"])},
                        "parents": [{"url": format!("{api}/git/commits/{head}"), "html_url": format!("{base}/{owner}/{repo}/commit/{head}"), "sha": head}],
                        "verification": {"verified": false, "reason": "unsigned", "signature": null, "payload": null, "verified_at": null},
                    },
                }),
            )
        }
        // ---- pulls ----
        (Method::POST, ["pulls"]) => {
            let doc = "pulls/pulls#create-a-pull-request";
            need!(&[&[("pull_requests", "write")]], doc);
            check!(
                &[
                    ("title", Ty::Str, false),
                    ("head", Ty::Str, true),
                    ("head_repo", Ty::Str, false),
                    ("base", Ty::Str, true),
                    ("body", Ty::Str, false),
                    ("maintainer_can_modify", Ty::Bool, false),
                    ("draft", Ty::Bool, false),
                    ("issue", Ty::Int, false),
                ],
                doc
            );
            let head_spec = body["head"].as_str().unwrap();
            let head = match head_spec.split_once(':') {
                Some((o, b)) if o.eq_ignore_ascii_case(owner) => b.to_owned(),
                Some(_) => {
                    return validation_failed(
                        doc,
                        json!({"resource": "PullRequest", "field": "head", "code": "invalid"}),
                    );
                }
                None => head_spec.to_owned(),
            };
            let base_b = body["base"].as_str().unwrap().to_owned();
            let Some(head_sha) = r.refs.get(&format!("refs/heads/{head}")).cloned() else {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "field": "head", "code": "invalid"}),
                );
            };
            let Some(base_sha) = r.refs.get(&format!("refs/heads/{base_b}")).cloned() else {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "field": "base", "code": "invalid"}),
                );
            };
            let Some(title) = body["title"].as_str().map(str::to_owned) else {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "field": "title", "code": "missing_field"}),
                );
            };
            if head_sha == base_sha || is_ancestor(inner, &head_sha, &base_sha) {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "code": "custom", "message": format!("No commits between {base_b} and {head}")}),
                );
            }
            if r.pulls
                .iter()
                .any(|p| p.state == "open" && p.head == head && p.base == base_b)
            {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for {owner}:{head}.")}),
                );
            }
            let id = inner.id();
            let number = {
                let n_pulls = r.pulls.iter().map(|p| p.number).max().unwrap_or(0);
                n_pulls + 1
            };
            let t = now();
            inner.repo_mut(owner, repo).unwrap().pulls.push(Pull {
                number,
                id,
                title,
                body: body["body"].as_str().map(str::to_owned),
                head,
                base: base_b,
                author: login.to_owned(),
                state: "open",
                draft: body["draft"].as_bool().unwrap_or(false),
                maintainer_can_modify: body["maintainer_can_modify"].as_bool().unwrap_or(false),
                merged_at: None,
                merged_by: None,
                merge_commit_sha: None,
                frozen_head: None,
                created_at: t.clone(),
                updated_at: t,
                closed_at: None,
                labels: Vec::new(),
                requested_reviewers: Vec::new(),
                requested_teams: Vec::new(),
                reviews: Vec::new(),
            });
            inner.pull_event(shared, owner, repo, number, "opened", login, &[]);
            let r = inner.repo(owner, repo).unwrap().clone();
            let p = r.pulls.iter().find(|p| p.number == number).unwrap();
            ok(201, inner.pull_json(&base, &r, p, true))
        }
        (Method::GET, ["pulls"]) => {
            need!(
                &[&[("pull_requests", "read")]],
                "pulls/pulls#list-pull-requests"
            );
            let state = q.get("state").map_or("open", String::as_str);
            let head = q
                .get("head")
                .map(|h| h.split_once(':').map_or(h.as_str(), |(_, b)| b).to_owned());
            let base_f = q.get("base");
            let list: Vec<Pull> = r
                .pulls
                .iter()
                .filter(|p| state == "all" || p.state == state)
                .filter(|p| head.as_ref().is_none_or(|h| &p.head == h))
                .filter(|p| base_f.is_none_or(|b| &p.base == b))
                .rev()
                .cloned()
                .collect();
            let items: Vec<Value> = list
                .iter()
                .map(|p| inner.pull_json(&base, &r, p, false))
                .collect();
            ok(200, Value::Array(items))
        }
        (m, ["pulls", n, sub @ ..]) => {
            let Some(p) = n
                .parse::<u64>()
                .ok()
                .and_then(|n| r.pulls.iter().find(|p| p.number == n).cloned())
            else {
                return not_found("pulls/pulls#get-a-pull-request");
            };
            pull_route(
                shared, inner, login, perms, m, owner, repo, &r, p, sub, body,
            )
        }
        // ---- issues: comments and labels ----
        (Method::GET, ["issues", n, "comments"]) => {
            need!(
                &[&[("issues", "read")], &[("pull_requests", "read")]],
                "issues/comments#list-issue-comments"
            );
            let n = n.parse::<u64>().unwrap_or(0);
            if !r.pulls.iter().any(|p| p.number == n) {
                return not_found("issues/comments#list-issue-comments");
            }
            let items: Vec<Value> = r
                .comments
                .iter()
                .filter(|c| c.number == n)
                .map(|c| inner.comment_json(&base, &r, c))
                .collect();
            ok(200, Value::Array(items))
        }
        (Method::POST, ["issues", n, "comments"]) => {
            let doc = "issues/comments#create-an-issue-comment";
            need!(
                &[&[("issues", "write")], &[("pull_requests", "write")]],
                doc
            );
            check!(&[("body", Ty::Str, true)], doc);
            let n = n.parse::<u64>().unwrap_or(0);
            if !r.pulls.iter().any(|p| p.number == n) {
                return not_found(doc);
            }
            let id = inner.id();
            let t = now();
            let c = Comment {
                id,
                number: n,
                user: login.to_owned(),
                body: body["body"].as_str().unwrap().to_owned(),
                created_at: t.clone(),
                updated_at: t,
            };
            inner
                .repo_mut(owner, repo)
                .unwrap()
                .comments
                .push(c.clone());
            ok(201, inner.comment_json(&base, &r, &c))
        }
        (Method::PATCH, ["issues", "comments", id]) => {
            let doc = "issues/comments#update-an-issue-comment";
            need!(
                &[&[("issues", "write")], &[("pull_requests", "write")]],
                doc
            );
            check!(&[("body", Ty::Str, true)], doc);
            let id = id.parse::<u64>().unwrap_or(0);
            let rm = inner.repo_mut(owner, repo).unwrap();
            let Some(c) = rm.comments.iter_mut().find(|c| c.id == id) else {
                return not_found(doc);
            };
            c.body = body["body"].as_str().unwrap().to_owned();
            c.updated_at = now();
            let c = c.clone();
            ok(200, inner.comment_json(&base, &r, &c))
        }
        (Method::POST, ["issues", n, "labels"]) => {
            let doc = "issues/labels#add-labels-to-an-issue";
            need!(
                &[&[("issues", "write")], &[("pull_requests", "write")]],
                doc
            );
            // Either {"labels": [...]} or a bare array of names.
            let names: Vec<String> = match &body {
                Value::Array(a) if a.iter().all(Value::is_string) => {
                    a.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
                }
                _ => {
                    check!(&[("labels", Ty::StrList, true)], doc);
                    body["labels"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned())
                        .collect()
                }
            };
            let n = n.parse::<u64>().unwrap_or(0);
            let rm = inner.repo_mut(owner, repo).unwrap();
            let Some(p) = rm.pulls.iter_mut().find(|p| p.number == n) else {
                return not_found(doc);
            };
            for l in names {
                if !p.labels.contains(&l) {
                    p.labels.push(l);
                }
            }
            let labels = p.labels.clone();
            let r = inner.repo(owner, repo).unwrap().clone();
            ok(
                200,
                Value::Array(
                    labels
                        .iter()
                        .map(|l| inner.label_json(&base, &r, l))
                        .collect(),
                ),
            )
        }
        (Method::GET, ["issues", n, "labels"]) => {
            need!(
                &[&[("issues", "read")], &[("pull_requests", "read")]],
                "issues/labels#list-labels-for-an-issue"
            );
            let n = n.parse::<u64>().unwrap_or(0);
            let Some(p) = r.pulls.iter().find(|p| p.number == n) else {
                return not_found("issues/labels#list-labels-for-an-issue");
            };
            ok(
                200,
                Value::Array(
                    p.labels
                        .iter()
                        .map(|l| inner.label_json(&base, &r, l))
                        .collect(),
                ),
            )
        }
        // ---- secret scanning ----
        (Method::GET, ["secret-scanning", "alerts"]) => {
            need!(
                &[&[("secret_scanning_alerts", "read")]],
                "secret-scanning/secret-scanning#list-secret-scanning-alerts-for-a-repository"
            );
            let hide = q.get("hide_secret").is_some_and(|v| v == "true");
            let state = q.get("state");
            let items: Vec<Value> = r
                .alerts
                .iter()
                .rev()
                .filter(|a| state.is_none_or(|s| s == a.state))
                .map(|a| inner.alert_json(&base, &r, a, hide))
                .collect();
            ok(200, Value::Array(items))
        }
        (Method::GET, ["secret-scanning", "alerts", n]) => {
            let doc = "secret-scanning/secret-scanning#get-a-secret-scanning-alert";
            need!(&[&[("secret_scanning_alerts", "read")]], doc);
            let hide = q.get("hide_secret").is_some_and(|v| v == "true");
            match n
                .parse::<u64>()
                .ok()
                .and_then(|n| r.alerts.iter().find(|a| a.number == n))
            {
                Some(a) => ok(200, inner.alert_json(&base, &r, a, hide)),
                None => not_found(doc),
            }
        }
        (Method::PATCH, ["secret-scanning", "alerts", n]) => {
            let doc = "secret-scanning/secret-scanning#update-a-secret-scanning-alert";
            need!(&[&[("secret_scanning_alerts", "write")]], doc);
            check!(
                &[
                    ("state", Ty::Str, false),
                    ("resolution", Ty::OptStr, false),
                    ("resolution_comment", Ty::OptStr, false),
                    ("assignee", Ty::OptStr, false),
                    ("validity", Ty::Str, false),
                ],
                doc
            );
            let Some(n) = n
                .parse::<u64>()
                .ok()
                .filter(|n| r.alerts.iter().any(|a| a.number == *n))
            else {
                return not_found(doc);
            };
            let state = body["state"].as_str();
            if state.is_none() && body.get("assignee").is_none() && body.get("validity").is_none() {
                return error(
                    422,
                    "Invalid request.\n\nAt least one of state, assignee or validity must be supplied.",
                    doc,
                );
            }
            if let Some(s) = state
                && s != "open"
                && s != "resolved"
            {
                return error(
                    422,
                    &format!(
                        "Invalid request.\n\nFor 'properties/state', \"{s}\" is not a member of enum."
                    ),
                    doc,
                );
            }
            let resolution = body["resolution"].as_str();
            if state == Some("resolved") {
                match resolution {
                    Some("false_positive" | "wont_fix" | "revoked" | "used_in_tests") => {}
                    Some(other) => {
                        return error(
                            422,
                            &format!(
                                "Invalid request.\n\nFor 'properties/resolution', \"{other}\" is not a member of enum."
                            ),
                            doc,
                        );
                    }
                    None => {
                        return error(
                            422,
                            "Invalid request.\n\n\"resolution\" wasn't supplied.",
                            doc,
                        );
                    }
                }
            }
            let comment = body["resolution_comment"].as_str().map(str::to_owned);
            if comment.as_ref().is_some_and(|c| c.chars().count() > 270) {
                return error(
                    422,
                    "Invalid request.\n\nFor 'properties/resolution_comment', the string is longer than 270 characters.",
                    doc,
                );
            }
            let t = now();
            let rm = inner.repo_mut(owner, repo).unwrap();
            let a = rm.alerts.iter_mut().find(|a| a.number == n).unwrap();
            let mut action = None;
            match state {
                Some("resolved")
                    if a.state != "resolved" || a.resolution.as_deref() != resolution =>
                {
                    a.state = "resolved";
                    a.resolution = resolution.map(str::to_owned);
                    a.resolution_comment = comment;
                    a.resolved_by = Some(login.to_owned());
                    a.resolved_at = Some(t.clone());
                    a.updated_at = t;
                    action = Some("resolved");
                }
                Some("open") if a.state != "open" => {
                    a.state = "open";
                    a.resolution = None;
                    a.resolution_comment = comment;
                    a.resolved_by = None;
                    a.resolved_at = None;
                    a.updated_at = t;
                    action = Some("reopened");
                }
                _ => {}
            }
            let r = inner.repo(owner, repo).unwrap().clone();
            if let Some(action) = action {
                inner.alert_event(shared, &r, n, action, login);
            }
            let a = r.alerts.iter().find(|a| a.number == n).unwrap();
            ok(200, inner.alert_json(&base, &r, a, false))
        }
        _ => not_found("rest"),
    }
}

#[allow(clippy::too_many_arguments)]
fn pull_route(
    shared: &Shared,
    inner: &mut Inner,
    login: &str,
    perms: Option<&BTreeMap<String, String>>,
    method: Method,
    owner: &str,
    repo: &str,
    r: &Repo,
    p: Pull,
    sub: &[&str],
    body: Value,
) -> Response {
    let base = shared.base.clone();
    macro_rules! need {
        ($need:expr, $doc:expr) => {
            if let Some(p) = perms
                && !covered(p, $need)
            {
                return forbidden_for_integration($need, $doc);
            }
        };
    }
    macro_rules! check {
        ($fields:expr, $doc:expr) => {
            if let Err(r) = check_body(&body, $fields, $doc) {
                return r;
            }
        };
    }
    let n = p.number;
    let fresh = |inner: &mut Inner| {
        let r = inner.repo(owner, repo).unwrap().clone();
        let p = r.pulls.iter().find(|x| x.number == n).unwrap().clone();
        inner.pull_json(&base, &r, &p, true)
    };
    match (method, sub) {
        (Method::GET, []) => {
            need!(
                &[&[("pull_requests", "read")]],
                "pulls/pulls#get-a-pull-request"
            );
            ok(200, inner.pull_json(&base, r, &p, true))
        }
        (Method::PATCH, []) => {
            let doc = "pulls/pulls#update-a-pull-request";
            need!(&[&[("pull_requests", "write")]], doc);
            check!(
                &[
                    ("title", Ty::Str, false),
                    ("body", Ty::Str, false),
                    ("state", Ty::Str, false),
                    ("base", Ty::Str, false),
                    ("maintainer_can_modify", Ty::Bool, false),
                ],
                doc
            );
            if let Some(s) = body["state"].as_str()
                && s != "open"
                && s != "closed"
            {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "field": "state", "code": "invalid"}),
                );
            }
            if let Some(b) = body["base"].as_str()
                && !r.refs.contains_key(&format!("refs/heads/{b}"))
            {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "field": "base", "code": "invalid"}),
                );
            }
            if body["state"].as_str() == Some("open") && p.state == "closed" {
                if p.merged_at.is_some() {
                    return validation_failed(
                        doc,
                        json!({"resource": "PullRequest", "code": "custom", "message": "Cannot reopen a merged pull request"}),
                    );
                }
                if !r.refs.contains_key(&format!("refs/heads/{}", p.head)) {
                    return validation_failed(
                        doc,
                        json!({"resource": "PullRequest", "code": "custom", "message": "state cannot be changed. The head branch was deleted."}),
                    );
                }
            }
            {
                let rm = inner.repo_mut(owner, repo).unwrap();
                let pm = rm.pulls.iter_mut().find(|x| x.number == n).unwrap();
                if let Some(t) = body["title"].as_str() {
                    pm.title = t.to_owned();
                }
                if let Some(b) = body["body"].as_str() {
                    pm.body = Some(b.to_owned());
                }
                if let Some(b) = body["base"].as_str() {
                    pm.base = b.to_owned();
                }
                if let Some(m) = body["maintainer_can_modify"].as_bool() {
                    pm.maintainer_can_modify = m;
                }
                pm.updated_at = now();
            }
            match body["state"].as_str() {
                Some("closed") => inner.set_pull_state(shared, owner, repo, n, "closed", login),
                Some("open") => inner.set_pull_state(shared, owner, repo, n, "open", login),
                _ => {}
            }
            ok(200, fresh(inner))
        }
        (Method::PUT, ["merge"]) => {
            let doc = "pulls/pulls#merge-a-pull-request";
            need!(&[&[("contents", "write"), ("pull_requests", "write")]], doc);
            let b = if body.is_null() {
                json!({})
            } else {
                body.clone()
            };
            if let Err(resp) = check_body(
                &b,
                &[
                    ("commit_title", Ty::Str, false),
                    ("commit_message", Ty::Str, false),
                    ("sha", Ty::Str, false),
                    ("merge_method", Ty::Str, false),
                ],
                doc,
            ) {
                return resp;
            }
            let head = inner.pull_head(owner, repo, n);
            if let Some(sha) = b["sha"].as_str()
                && sha != head
            {
                return error(
                    409,
                    "Head branch was modified. Review and try the merge again.",
                    doc,
                );
            }
            match inner.merge(shared, owner, repo, n, login) {
                Ok(sha) => ok(
                    200,
                    json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}),
                ),
                Err(m) => error(405, m, doc),
            }
        }
        (Method::GET, ["reviews"]) => {
            need!(
                &[&[("pull_requests", "read")]],
                "pulls/reviews#list-reviews-for-a-pull-request"
            );
            let items: Vec<Value> = p
                .reviews
                .iter()
                .map(|rv| inner.review_json(&base, r, &p, rv))
                .collect();
            ok(200, Value::Array(items))
        }
        (m @ (Method::POST | Method::DELETE), ["requested_reviewers"]) => {
            let doc = "pulls/review-requests#request-reviewers-for-a-pull-request";
            need!(&[&[("pull_requests", "write")]], doc);
            check!(
                &[
                    ("reviewers", Ty::StrList, m == Method::DELETE),
                    ("team_reviewers", Ty::StrList, false)
                ],
                doc
            );
            let users: Vec<String> = body["reviewers"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            let teams: Vec<String> = body["team_reviewers"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            if m == Method::POST && users.iter().any(|u| u.eq_ignore_ascii_case(&p.author)) {
                return validation_failed(
                    doc,
                    json!({"resource": "PullRequest", "code": "custom", "message": "Review cannot be requested from pull request author."}),
                );
            }
            {
                let rm = inner.repo_mut(owner, repo).unwrap();
                let pm = rm.pulls.iter_mut().find(|x| x.number == n).unwrap();
                if m == Method::POST {
                    for u in users {
                        if !pm.requested_reviewers.contains(&u) {
                            pm.requested_reviewers.push(u);
                        }
                    }
                    for t in teams {
                        if !pm.requested_teams.contains(&t) {
                            pm.requested_teams.push(t);
                        }
                    }
                } else {
                    pm.requested_reviewers.retain(|u| !users.contains(u));
                    pm.requested_teams.retain(|t| !teams.contains(t));
                }
            }
            ok(if m == Method::POST { 201 } else { 200 }, fresh(inner))
        }
        _ => not_found("pulls/pulls"),
    }
}

fn is_ancestor(inner: &Inner, ancestor: &str, of: &str) -> bool {
    let mut stack = vec![of.to_owned()];
    let mut seen = 0;
    while let Some(sha) = stack.pop() {
        if sha == ancestor {
            return true;
        }
        seen += 1;
        if seen > 10_000 {
            return false;
        }
        if let Some(c) = inner.commits.get(&sha) {
            stack.extend(c.parents.iter().cloned());
        }
    }
    false
}

fn ref_json(base: &str, r: &Repo, name: &str, sha: &str) -> Value {
    let api = format!("{base}/repos/{}/{}", r.owner, r.name);
    json!({
        "ref": name,
        "node_id": BASE64_STANDARD.encode(format!("03:Ref{name}")),
        "url": format!("{api}/git/{name}"),
        "object": {"sha": sha, "type": "commit", "url": format!("{api}/git/commits/{sha}")},
    })
}

/// A file as the contents API shows it; `with_content` adds the base64 body (wrapped at 60
/// columns, as GitHub wraps it).
fn content_json(
    base: &str,
    r: &Repo,
    reference: &str,
    path: &str,
    content: &str,
    with_content: bool,
) -> Value {
    let api = format!("{base}/repos/{}/{}", r.owner, r.name);
    let sha = blob_sha(content);
    let name = path.rsplit('/').next().unwrap_or(path);
    let self_url = format!("{api}/contents/{path}?ref={reference}");
    let git_url = format!("{api}/git/blobs/{sha}");
    let html_url = format!("{base}/{}/{}/blob/{reference}/{path}", r.owner, r.name);
    let mut v = json!({
        "type": "file",
        "size": content.len(),
        "name": name,
        "path": path,
        "sha": sha,
        "url": self_url,
        "git_url": git_url,
        "html_url": html_url,
        "download_url": format!("{base}/raw/{}/{}/{reference}/{path}", r.owner, r.name),
        "_links": {"self": self_url, "git": git_url, "html": html_url},
    });
    if with_content {
        let encoded = BASE64_STANDARD.encode(content.as_bytes());
        let wrapped: Vec<&str> = encoded
            .as_bytes()
            .chunks(60)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let obj: &mut Map<String, Value> = v.as_object_mut().unwrap();
        obj.insert("encoding".into(), json!("base64"));
        obj.insert("content".into(), json!(format!("{}\n", wrapped.join("\n"))));
    }
    v
}

/// A fresh 2048-bit RSA key pair for a test App: the private key as PEM (PKCS#8) and the public
/// key as PKCS#1 `RSAPublicKey` DER (what [`GithubApi::register_app`] takes).
pub fn generate_app_key() -> (String, Vec<u8>) {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::signature::KeyPair as _;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: Pkcs8V1Der<'static> = kp.as_der().unwrap();
    let b64 = BASE64_STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (pem, kp.public_key().as_ref().to_vec())
}
