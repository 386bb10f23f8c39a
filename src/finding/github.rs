//! GitHub: secret-scanning alerts as findings, and the webhook events the approval workflow reads.
//!
//! As a [`Parser`] (documented in `docs/parsers-secrets.md`) this reads `secret_scanning_alert`
//! webhooks and the REST list of secret-scanning alerts (which `decode` splits into one alert
//! per document). An open alert becomes a `credential-exposure` finding on the repository; a
//! resolved one is counted as skipped. The secret itself (`secret`) is removed from `fields`
//! before the finding is built; only its hash is kept, and an AWS access key *id* becomes the
//! `aws.iam.access_key` resource. `pull_request`, `pull_request_review` and `issue_comment`
//! webhooks are recognised and counted as skipped: they are not findings.
//!
//! For the approval workflow (DESIGN.md §6), [`parse_event`] turns a webhook body plus its
//! `X-GitHub-Event` header into a typed [`GithubEvent`]. It does not verify the signature (the
//! HTTP layer does that first) and never echoes the payload in its errors.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::{join, kind, opt_obj, opt_str, req_str};
use super::gitleaks::{
    Reject, aws_access_key_id, github_repo_from_url, is_aws_rule, repo_path, req_u64, rfc3339,
    time_unknown,
};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// GitHub secret-scanning alerts (webhook and REST); other GitHub webhooks are skipped.
pub struct Github;

/// Webhook `action`s of `secret_scanning_alert` that mean the alert is open, used when the
/// payload's `alert` has no `state` (older payloads). Any other action is counted as skipped.
pub const OPEN_ALERT_ACTIONS: &[&str] = &["created", "reopened", "publicly_leaked", "validated"];

/// The webhook events [`parse_event`] understands (`X-GitHub-Event` values).
pub const EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_review",
    "issue_comment",
    "secret_scanning_alert",
];

/// Which GitHub document a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `secret_scanning_alert` webhook: `action`, `alert`, `repository`.
    AlertWebhook,
    /// `pull_request` webhook (or `pull_request_review_comment`): `action`, `pull_request`.
    PullRequest,
    /// `pull_request_review` webhook: `action`, `review`, `pull_request`.
    Review,
    /// `issue_comment` webhook: `action`, `comment`, `issue`.
    IssueComment,
    /// One alert of the REST list: `number`, `secret_type`, `html_url`.
    RestAlert,
}

impl Shape {
    fn of(v: &Value) -> Option<Self> {
        let obj = |k: &str| v.get(k).is_some_and(Value::is_object);
        let has_action = v.get("action").is_some_and(Value::is_string);
        if has_action
            && obj("repository")
            && obj("alert")
            && v["alert"].get("secret_type").is_some()
        {
            Some(Shape::AlertWebhook)
        } else if has_action && obj("review") && obj("pull_request") {
            Some(Shape::Review)
        } else if has_action && obj("pull_request") && obj("repository") {
            Some(Shape::PullRequest)
        } else if has_action && obj("comment") && obj("issue") {
            Some(Shape::IssueComment)
        } else if v.get("number").is_some()
            && v.get("secret_type").is_some()
            && v.get("html_url").is_some()
        {
            Some(Shape::RestAlert)
        } else {
            None
        }
    }
}

/// What to do with an alert.
enum Disposition {
    Finding,
    Skip,
}

/// Open alerts are findings; resolved ones are skipped. `alert.state` decides when present,
/// else the webhook `action` ([`OPEN_ALERT_ACTIONS`]).
fn disposition(alert: &Value, base: &str, action: Option<&str>) -> Result<Disposition, Reject> {
    match opt_str(alert, base, "state")? {
        Some("open") => Ok(Disposition::Finding),
        Some("resolved") => Ok(Disposition::Skip),
        Some(_) => Err((
            join(base, "state"),
            "unknown alert state; expected open or resolved".to_owned(),
        )),
        None => match action {
            Some(a) if OPEN_ALERT_ACTIONS.contains(&a) => Ok(Disposition::Finding),
            Some(_) => Ok(Disposition::Skip),
            None => Err((join(base, "state"), "required field is missing".to_owned())),
        },
    }
}

/// `owner/repo` of a webhook or REST `repository` object.
fn repository(repo: &Value, base: &str) -> Result<(String, String), Reject> {
    let name = req_str(repo, base, "name")?;
    let owner_base = join(base, "owner");
    let owner = opt_obj(repo, base, "owner")?
        .ok_or_else(|| (owner_base.clone(), "required field is missing".to_owned()))?;
    let login = req_str(owner, &owner_base, "login")?;
    Ok((login.to_owned(), name.to_owned()))
}

/// The finding for one open alert. `base` is the alert's pointer inside the record, `repo` its
/// repository, `fields` the record to keep (already without the secret).
fn alert_draft(
    alert: &Value,
    base: &str,
    (owner, repo): (String, String),
    action: Option<&str>,
    fields: Value,
) -> Result<FindingDraft, Reject> {
    let number = req_u64(alert, base, "number")?;
    let secret_type = req_str(alert, base, "secret_type")?;
    let display = opt_str(alert, base, "secret_type_display_name")?.filter(|s| !s.is_empty());
    let secret = opt_str(alert, base, "secret")?.filter(|s| !s.is_empty());
    let validity = opt_str(alert, base, "validity")?.filter(|s| !s.is_empty());
    let path = match opt_obj(alert, base, "first_location_detected")? {
        Some(loc) => {
            opt_str(loc, &join(base, "first_location_detected"), "path")?.and_then(repo_path)
        }
        None => None,
    };

    let mut labels = BTreeMap::new();
    labels.insert("secret_type".to_owned(), secret_type.to_owned());
    labels.insert("state".to_owned(), "open".to_owned());
    if let Some(secret) = secret {
        labels.insert("secret_hash".to_owned(), crate::redact::secret_hash(secret));
    }
    if let Some(validity) = validity {
        labels.insert("validity".to_owned(), validity.to_owned());
    }
    if let Some(action) = action {
        labels.insert("github.action".to_owned(), action.to_owned());
    }
    if alert.get("publicly_leaked") == Some(&Value::Bool(true)) {
        labels.insert("publicly_leaked".to_owned(), "true".to_owned());
    }

    let observed_at = match (
        opt_str(alert, base, "updated_at")?,
        opt_str(alert, base, "created_at")?,
    ) {
        (Some(t), _) if !t.is_empty() => rfc3339(t, &join(base, "updated_at"))?,
        (_, Some(t)) if !t.is_empty() => rfc3339(t, &join(base, "created_at"))?,
        _ => time_unknown(&mut labels),
    };

    let mut resources = Vec::new();
    // Only a value that *is* an access key id (the `aws_access_key_id` type) names a key; the
    // secret of `aws_secret_access_key` alerts never becomes a resource.
    if is_aws_rule(secret_type)
        && let Some(s) = secret
        && let Some(id) = aws_access_key_id(s.trim()).filter(|id| *id == s.trim())
    {
        resources.push(ResourceRef::AwsIamAccessKey {
            account: None,
            user: None,
            access_key_id: id.to_owned(),
        });
    }
    let title = format!(
        "{} exposed in {owner}/{repo} (secret-scanning alert #{number})",
        display.unwrap_or(secret_type)
    );
    resources.push(ResourceRef::GithubRepository {
        owner,
        repo,
        path,
        alert_number: Some(number),
    });

    Ok(FindingDraft {
        source: "github",
        rule: secret_type.to_owned(),
        title,
        severity: if validity == Some("active") {
            Severity::Critical
        } else {
            Severity::High
        },
        class: Class::CredentialExposure,
        resources,
        labels,
        fields,
        observed_at,
    })
}

/// Parses one record; `Ok(None)` means recognised and skipped.
fn draft(v: &Value) -> Result<Option<FindingDraft>, Reject> {
    let Some(shape) = Shape::of(v) else {
        return Err((
            String::new(),
            format!(
                "not a GitHub secret-scanning alert or webhook: expected a REST alert (number, \
                 secret_type, html_url) or a webhook (action with alert, pull_request, review \
                 or comment), found {}",
                if v.is_object() {
                    "an object without them"
                } else {
                    kind(v)
                }
            ),
        ));
    };
    match shape {
        Shape::PullRequest | Shape::Review | Shape::IssueComment => Ok(None),
        Shape::AlertWebhook => {
            let action = req_str(v, "", "action")?;
            let alert = &v["alert"];
            if matches!(
                disposition(alert, "/alert", Some(action))?,
                Disposition::Skip
            ) {
                return Ok(None);
            }
            let repo = repository(&v["repository"], "/repository")?;
            let mut fields = v.clone();
            if let Some(Value::Object(a)) = fields.get_mut("alert") {
                a.shift_remove("secret");
            }
            alert_draft(alert, "/alert", repo, Some(action), fields).map(Some)
        }
        Shape::RestAlert => {
            if matches!(disposition(v, "", None)?, Disposition::Skip) {
                return Ok(None);
            }
            // The organisation-level list names the repository; the repository-level one does
            // not, and its html_url (https://github.com/o/r/security/…) does.
            let repo = if let Some(r) = opt_obj(v, "", "repository")? {
                repository(r, "/repository")?
            } else {
                let url = req_str(v, "", "html_url")?;
                github_repo_from_url(url).ok_or_else(|| {
                    (
                        "/html_url".to_owned(),
                        "not a github.com URL naming the repository, and no repository object"
                            .to_owned(),
                    )
                })?
            };
            alert_draft(v, "", repo, None, super::gitleaks::without(v, &["secret"])).map(Some)
        }
    }
}

impl Parser for Github {
    fn id(&self) -> &'static str {
        "github"
    }

    fn summary(&self) -> &'static str {
        "GitHub secret-scanning alerts (webhook and REST); PR, review and comment webhooks skipped"
    }

    fn sniff(&self, doc: &Value) -> bool {
        Shape::of(doc).is_some()
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        match draft(&doc.value) {
            Ok(Some(d)) => out.findings.push(d.build()),
            Ok(None) => out.skipped += 1,
            Err((pointer, reason)) => out.reject(doc, self.id(), &pointer, reason),
        }
    }
}

/// A GitHub webhook the approval workflow acts on, reduced to what it needs. Built by
/// [`parse_event`]; never holds a secret (a comment body is scrubbed, an alert's secret dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubEvent {
    /// `pull_request`: opened, closed (merged or not), labeled, synchronize, …
    PullRequest {
        /// The webhook `action` (`opened`, `closed`, `synchronize`, …).
        action: String,
        /// Pull request number.
        number: u64,
        /// `owner/repo`.
        repo_full_name: String,
        /// Whether the PR was merged (`false` when GitHub sends null or omits it).
        merged: bool,
        /// The head commit (`pull_request.head.sha`).
        head_sha: String,
        /// Who opened the PR (`pull_request.user.login`).
        author_login: String,
        /// Label names.
        labels: Vec<String>,
    },
    /// `pull_request_review`: submitted, edited, dismissed.
    Review {
        /// The webhook `action` (`submitted`, `edited`, `dismissed`).
        action: String,
        /// Pull request number.
        number: u64,
        /// `owner/repo`.
        repo_full_name: String,
        /// Who reviewed (`review.user.login`).
        reviewer_login: String,
        /// `approved`, `changes_requested`, `commented`, `dismissed` (lowercased).
        state: String,
        /// When the review was submitted, when GitHub says.
        submitted_at: Option<DateTime<Utc>>,
        /// The commit the review is about.
        commit_id: String,
    },
    /// `issue_comment` (on an issue or a pull request).
    IssueComment {
        /// The webhook `action` (`created`, `edited`, `deleted`).
        action: String,
        /// Issue or pull request number.
        number: u64,
        /// `owner/repo`.
        repo_full_name: String,
        /// Whether the issue is a pull request.
        is_pull_request: bool,
        /// Who commented (`comment.user.login`).
        author_login: String,
        /// Comment id.
        comment_id: u64,
        /// Comment text, scrubbed of secret-looking material.
        body: String,
    },
    /// `secret_scanning_alert`: created, reopened, resolved, …
    SecretScanningAlert {
        /// The webhook `action`.
        action: String,
        /// Alert number.
        number: u64,
        /// `owner/repo`.
        repo_full_name: String,
        /// Secret type, e.g. `aws_access_key_id`.
        secret_type: String,
        /// `open` or `resolved`, when the payload says.
        state: Option<String>,
    },
}

/// Typed reads at a JSON pointer, with errors as `(pointer, reason)`.
struct Body<'a>(&'a Value);

impl<'a> Body<'a> {
    fn get(&self, pointer: &str) -> Option<&'a Value> {
        self.0.pointer(pointer).filter(|v| !v.is_null())
    }

    fn opt_str(&self, pointer: &str) -> Result<Option<&'a str>, Reject> {
        match self.get(pointer) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err((
                pointer.to_owned(),
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    fn str(&self, pointer: &str) -> Result<&'a str, Reject> {
        match self.opt_str(pointer)? {
            Some("") => Err((pointer.to_owned(), "must not be empty".to_owned())),
            Some(s) => Ok(s),
            None => Err((pointer.to_owned(), "missing".to_owned())),
        }
    }

    fn u64(&self, pointer: &str) -> Result<u64, Reject> {
        match self.get(pointer) {
            None => Err((pointer.to_owned(), "missing".to_owned())),
            Some(v) => v.as_u64().ok_or_else(|| {
                (
                    pointer.to_owned(),
                    format!("expected a non-negative integer, found {}", kind(v)),
                )
            }),
        }
    }

    fn bool_or_false(&self, pointer: &str) -> Result<bool, Reject> {
        match self.get(pointer) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err((
                pointer.to_owned(),
                format!("expected a boolean, found {}", kind(other)),
            )),
        }
    }
}

fn pull_request(b: &Body<'_>) -> Result<GithubEvent, Reject> {
    let labels = match b.get("/pull_request/labels") {
        None => Vec::new(),
        Some(Value::Array(items)) => (0..items.len())
            .map(|i| {
                b.str(&format!("/pull_request/labels/{i}/name"))
                    .map(str::to_owned)
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err((
                "/pull_request/labels".to_owned(),
                format!("expected an array, found {}", kind(other)),
            ));
        }
    };
    Ok(GithubEvent::PullRequest {
        action: b.str("/action")?.to_owned(),
        number: b.u64("/pull_request/number")?,
        repo_full_name: b.str("/repository/full_name")?.to_owned(),
        merged: b.bool_or_false("/pull_request/merged")?,
        head_sha: b.str("/pull_request/head/sha")?.to_owned(),
        author_login: b.str("/pull_request/user/login")?.to_owned(),
        labels,
    })
}

fn review(b: &Body<'_>) -> Result<GithubEvent, Reject> {
    let submitted_at = match b.opt_str("/review/submitted_at")? {
        Some(t) => Some(rfc3339(t, "/review/submitted_at")?),
        None => None,
    };
    Ok(GithubEvent::Review {
        action: b.str("/action")?.to_owned(),
        number: b.u64("/pull_request/number")?,
        repo_full_name: b.str("/repository/full_name")?.to_owned(),
        reviewer_login: b.str("/review/user/login")?.to_owned(),
        state: b.str("/review/state")?.to_ascii_lowercase(),
        submitted_at,
        commit_id: b.str("/review/commit_id")?.to_owned(),
    })
}

fn issue_comment(b: &Body<'_>) -> Result<GithubEvent, Reject> {
    Ok(GithubEvent::IssueComment {
        action: b.str("/action")?.to_owned(),
        number: b.u64("/issue/number")?,
        repo_full_name: b.str("/repository/full_name")?.to_owned(),
        is_pull_request: b.get("/issue/pull_request").is_some(),
        author_login: b.str("/comment/user/login")?.to_owned(),
        comment_id: b.u64("/comment/id")?,
        body: crate::redact::scrub(b.opt_str("/comment/body")?.unwrap_or_default()).into_owned(),
    })
}

fn secret_scanning_alert(b: &Body<'_>) -> Result<GithubEvent, Reject> {
    Ok(GithubEvent::SecretScanningAlert {
        action: b.str("/action")?.to_owned(),
        number: b.u64("/alert/number")?,
        repo_full_name: b.str("/repository/full_name")?.to_owned(),
        secret_type: b.str("/alert/secret_type")?.to_owned(),
        state: b.opt_str("/alert/state")?.map(str::to_owned),
    })
}

/// Parses a webhook body given its `X-GitHub-Event` header value.
///
/// # Errors
///
/// A message naming the event and the JSON pointer of the offending field, e.g.
/// `pull_request_review: /review/state: missing`; never any of the payload's values. An event
/// not in [`EVENTS`] or a body that is not a JSON object is an error too.
pub fn parse_event(event_name: &str, body: &[u8]) -> Result<GithubEvent, String> {
    let read: fn(&Body<'_>) -> Result<GithubEvent, Reject> = match event_name {
        "pull_request" => pull_request,
        "pull_request_review" => review,
        "issue_comment" => issue_comment,
        "secret_scanning_alert" => secret_scanning_alert,
        other => {
            // The header is caller-controlled: show it only when it looks like an event name.
            let shown = if !other.is_empty()
                && other.len() <= 64
                && other.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                format!("`{other}`")
            } else {
                "name".to_owned()
            };
            return Err(format!(
                "unsupported event {shown}; expected one of {}",
                EVENTS.join(", ")
            ));
        }
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{event_name}: body is not JSON (line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    if !value.is_object() {
        return Err(format!(
            "{event_name}: expected a JSON object, found {}",
            kind(&value)
        ));
    }
    read(&Body(&value)).map_err(|(pointer, reason)| format!("{event_name}: {pointer}: {reason}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/findings/github/",
                $name
            ))
            .unwrap()
        };
    }

    fn without(bytes: &[u8], pointer: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(bytes).unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn opened_pull_request_event_names_author_head_and_labels() {
        let event = parse_event("pull_request", &fixture!("pull_request-opened.json")).unwrap();
        assert_eq!(
            event,
            GithubEvent::PullRequest {
                action: "opened".into(),
                number: 2,
                repo_full_name: "Codertocat/Hello-World".into(),
                merged: false,
                head_sha: "ec26c3e57ca3a959ca5aad62de7213c562f8c821".into(),
                author_login: "Codertocat".into(),
                labels: vec!["bug".into()],
            }
        );
    }

    #[test]
    fn closed_pull_request_events_tell_merged_from_not_merged() {
        let merged =
            parse_event("pull_request", &fixture!("pull_request-closed-merged.json")).unwrap();
        let GithubEvent::PullRequest {
            action,
            merged,
            number,
            ..
        } = merged
        else {
            panic!("{merged:?}");
        };
        assert_eq!((action.as_str(), merged, number), ("closed", true, 117));

        let closed = parse_event(
            "pull_request",
            &fixture!("pull_request-closed-not-merged.json"),
        )
        .unwrap();
        assert!(
            matches!(&closed, GithubEvent::PullRequest { action, merged: false, .. } if action == "closed"),
            "{closed:?}"
        );
    }

    #[test]
    fn approved_review_event_names_reviewer_state_and_commit() {
        let event = parse_event(
            "pull_request_review",
            &fixture!("pull_request_review-submitted-approved.json"),
        )
        .unwrap();
        assert_eq!(
            event,
            GithubEvent::Review {
                action: "submitted".into(),
                number: 35,
                repo_full_name: "erwinmombay/github-owners-bot-test-repo".into(),
                reviewer_login: "erwinmombay".into(),
                state: "approved".into(),
                submitted_at: Some("2019-02-26T20:53:31Z".parse().unwrap()),
                commit_id: "9272f18514cbd3fa935b3ced62ae1c2bf6efa76d".into(),
            }
        );
    }

    #[test]
    fn commented_review_is_not_an_approval() {
        let event = parse_event(
            "pull_request_review",
            &fixture!("pull_request_review-submitted-commented.json"),
        )
        .unwrap();
        let GithubEvent::Review { state, .. } = &event else {
            panic!("{event:?}");
        };
        assert_eq!(state, "commented");
    }

    #[test]
    fn review_state_is_lowercased() {
        // Derived: the real approved review with the state spelled as the REST API spells it.
        let mut v: Value =
            serde_json::from_slice(&fixture!("pull_request_review-submitted-approved.json"))
                .unwrap();
        v["review"]["state"] = "APPROVED".into();
        let event = parse_event("pull_request_review", &serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(event, GithubEvent::Review { ref state, .. } if state == "approved"));
    }

    #[test]
    fn issue_comment_event_names_commenter_and_issue() {
        let event = parse_event("issue_comment", &fixture!("issue_comment-created.json")).unwrap();
        let GithubEvent::IssueComment {
            action,
            number,
            repo_full_name,
            is_pull_request,
            author_login,
            body,
            ..
        } = event
        else {
            panic!("{event:?}");
        };
        assert_eq!(action, "created");
        assert_eq!(number, 1);
        assert_eq!(repo_full_name, "Codertocat/Hello-World");
        assert!(!is_pull_request);
        assert_eq!(author_login, "Codertocat");
        assert!(body.starts_with("You are totally right!"), "{body}");
    }

    #[test]
    fn secret_scanning_alert_event_names_alert_and_type() {
        let event = parse_event(
            "secret_scanning_alert",
            &fixture!("secret_scanning_alert-reopened.json"),
        )
        .unwrap();
        assert_eq!(
            event,
            GithubEvent::SecretScanningAlert {
                action: "reopened".into(),
                number: 191,
                repo_full_name: "Codertocat/Hello-World".into(),
                secret_type: "adafruit_io_key".into(),
                state: None,
            }
        );
    }

    #[test]
    fn missing_review_state_error_names_event_and_pointer() {
        // Derived: the real approved review with `review.state` removed.
        let body = without(
            &fixture!("pull_request_review-submitted-approved.json"),
            "/review/state",
        );
        let err = parse_event("pull_request_review", &body).unwrap_err();
        assert_eq!(err, "pull_request_review: /review/state: missing");
    }

    #[test]
    fn wrongly_typed_field_error_names_the_type_not_the_value() {
        // Derived: the real opened PR with its number as a string.
        let mut v: Value = serde_json::from_slice(&fixture!("pull_request-opened.json")).unwrap();
        v["pull_request"]["number"] = "two".into();
        let err = parse_event("pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(
            err,
            "pull_request: /pull_request/number: expected a non-negative integer, found a string"
        );
    }

    #[test]
    fn unknown_event_and_bad_body_are_errors_without_payload() {
        let err = parse_event("push", b"{}").unwrap_err();
        assert!(err.starts_with("unsupported event `push`"), "{err}");
        assert!(err.contains("pull_request_review"), "{err}");
        let err = parse_event("x\ny<script>", b"{}").unwrap_err();
        assert!(!err.contains("script"), "{err}");
        let err = parse_event("pull_request", b"{\"action\": \"opened\", hunter2").unwrap_err();
        assert!(err.starts_with("pull_request: body is not JSON"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_event("pull_request", b"[1]").unwrap_err();
        assert_eq!(err, "pull_request: expected a JSON object, found an array");
    }

    #[test]
    fn webhook_shapes_are_told_apart() {
        for (file, shape) in [
            (fixture!("pull_request-opened.json"), Shape::PullRequest),
            (
                fixture!("pull_request_review-submitted-approved.json"),
                Shape::Review,
            ),
            (fixture!("issue_comment-created.json"), Shape::IssueComment),
            (
                fixture!("secret_scanning_alert-reopened.json"),
                Shape::AlertWebhook,
            ),
        ] {
            let v: Value = serde_json::from_slice(&file).unwrap();
            assert_eq!(Shape::of(&v), Some(shape));
        }
        let list: Vec<Value> =
            serde_json::from_slice(&fixture!("secret-scanning-alerts-rest-list.json")).unwrap();
        assert!(list.iter().all(|a| Shape::of(a) == Some(Shape::RestAlert)));
    }
}
