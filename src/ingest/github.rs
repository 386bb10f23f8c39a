//! The GitHub webhook route: `POST /v1/github`.
//!
//! In this order: the body is read whole (413 over `server.max_body_bytes`); its HMAC-SHA256
//! under `github.webhook_secret` is checked against `X-Hub-Signature-256` in constant time
//! **before anything in it is read** (no secret configured: 404; a missing or wrong signature:
//! 401 without detail, nothing recorded); a delivery without `X-GitHub-Delivery` is 400; a
//! delivery id seen before (GitHub's redelivery, or a replay of a captured request) is
//! acknowledged and ignored. Then by `X-GitHub-Event`:
//! - `pull_request_review` (`submitted`) and `pull_request` (`closed`): a decision on an
//!   approval pull request, through [`GithubApprovals`] (reviews that do not count are ignored
//!   and audited there);
//! - `secret_scanning_alert`: a finding, through the `github` parser and the same intake as
//!   every other source (intake `github`), 202 after the commit. A webhook never carries the
//!   secret; for an `aws_access_key_id` alert (whose "secret" is a key *id*, not a secret) the
//!   alert is read from the REST API, so the finding names the key and a rotation can act on it
//!   ([`alert_as_found`]); no other alert's secret is ever read;
//! - anything else (`ping` included): 202, ignored.
//!
//! The delivery id is recorded after the delivery was handled, so a delivery whose handling
//! failed (503) is handled again when GitHub redelivers it; decisions and findings are
//! idempotent, so one handled twice by concurrent deliveries counts once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::IntakeError;
use crate::clients::github::{GitHub, error_text};
use crate::engine::approval::github::{GithubApprovals, PullSeen, ReviewSeen};
use crate::finding::ParserChoice;
use crate::redact::Redacted;
use crate::server::AppState;
use crate::store::Store;

/// The route, also the `route` label of `firebreak_http_requests_total`.
pub const ROUTE: &str = "/v1/github";

/// The intake name of findings that arrive through this route.
pub const INTAKE: &str = "github";

/// What the route needs: the webhook secret, and the approvals it decides on (when GitHub
/// access is configured).
pub struct GithubHook<S> {
    /// `github.webhook_secret`.
    pub secret: Redacted<String>,
    /// Decisions on approval pull requests; `None` without GitHub access (reviews are then
    /// acknowledged and ignored).
    pub approvals: Option<GithubApprovals<S>>,
    /// GitHub access, to read an alert's key id (see [`alert_as_found`]); `None` without.
    pub github: Option<GitHub>,
}

/// The method router for [`ROUTE`], with the body limit applied.
pub fn github_route<S: Store>(max_body_bytes: usize) -> MethodRouter<AppState<S>> {
    post(post_github::<S>).layer(DefaultBodyLimit::max(max_body_bytes))
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`, compared
/// in constant time.
#[must_use]
pub fn signed(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(hex_sig) = signature.and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn post_github<S: Store>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hook) = state.github.as_deref() else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"error": "GitHub webhooks are not configured (github.webhook_secret_env)"}),
        );
    };
    if !signed(
        hook.secret.expose().as_bytes(),
        &body,
        header(&headers, "x-hub-signature-256"),
    ) {
        tracing::warn!("GitHub webhook refused: missing or wrong X-Hub-Signature-256");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(delivery) = header(&headers, "x-github-delivery").map(str::to_owned) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "X-GitHub-Delivery is missing"}),
        );
    };
    let event = header(&headers, "x-github-event")
        .unwrap_or_default()
        .to_owned();
    match state.store.delivery_seen(&delivery).await {
        Ok(true) => {
            return answer(
                StatusCode::OK,
                json!({"ignored": "this delivery was handled before"}),
            );
        }
        Ok(false) => {}
        Err(e) => return unavailable(&e.to_string()),
    }
    let handled = match event.as_str() {
        "pull_request_review" | "pull_request" => decide(hook, &event, &body).await,
        "secret_scanning_alert" => {
            return alert(&state, &delivery, &event, &body).await;
        }
        _ => Ok(json!({"ignored": format!("event `{event}` is not one Firebreak acts on")})),
    };
    match handled {
        Ok(done) => match state.store.first_delivery(&delivery, &event).await {
            Ok(_) => answer(StatusCode::ACCEPTED, done),
            Err(e) => unavailable(&e.to_string()),
        },
        Err(why) => unavailable(&why),
    }
}

fn unavailable(why: &str) -> Response {
    tracing::error!(error = %crate::redact::scrub(why), "GitHub webhook not handled; GitHub redelivers it");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "5")],
        Json(json!({"error": "not handled; deliver again"})),
    )
        .into_response()
}

/// A pull request as a webhook payload shows it.
fn pull_of(payload: &Value) -> Option<PullSeen> {
    let pr = payload.get("pull_request")?;
    Some(PullSeen {
        repo: payload["repository"]["full_name"].as_str()?.to_owned(),
        number: pr["number"].as_u64()?,
        author: pr["user"]["login"].as_str().unwrap_or_default().to_owned(),
        state: pr["state"].as_str().unwrap_or_default().to_owned(),
        merged_by: (pr["merged"] == true)
            .then(|| pr["merged_by"]["login"].as_str().map(str::to_owned))
            .flatten(),
        head_sha: pr["head"]["sha"].as_str().unwrap_or_default().to_owned(),
    })
}

async fn decide<S: Store>(hook: &GithubHook<S>, event: &str, body: &[u8]) -> Result<Value, String> {
    let Some(approvals) = &hook.approvals else {
        return Ok(json!({"ignored": "no GitHub access is configured to decide approvals"}));
    };
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return Ok(json!({"ignored": "the payload is not JSON"}));
    };
    let Some(pull) = pull_of(&payload) else {
        return Ok(json!({"ignored": "the payload names no pull request"}));
    };
    let action = payload["action"].as_str().unwrap_or_default();
    match (event, action) {
        ("pull_request_review", "submitted") => {
            let r = &payload["review"];
            let review = ReviewSeen {
                id: r["id"].as_u64().unwrap_or_default(),
                user: r["user"]["login"].as_str().unwrap_or_default().to_owned(),
                state: r["state"].as_str().unwrap_or_default().to_owned(),
                commit_id: r["commit_id"].as_str().unwrap_or_default().to_owned(),
            };
            let outcome = approvals
                .review(&pull, &review)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({"review": review.id, "outcome": outcome}))
        }
        ("pull_request", "closed") => {
            let sender = payload["sender"]["login"].as_str().unwrap_or("github");
            approvals
                .closed(&pull, sender)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({"pull_request": pull.number, "closed": true}))
        }
        _ => Ok(json!({"ignored": format!("{event} {action} decides nothing")})),
    }
}

async fn alert<S: Store>(
    state: &AppState<S>,
    delivery: &str,
    event: &str,
    body: &[u8],
) -> Response {
    let choice = match ParserChoice::from_id("github") {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    let enriched = match state.github.as_deref().and_then(|h| h.github.as_ref()) {
        Some(gh) => alert_as_found(gh, body).await,
        None => None,
    };
    let body = enriched.as_deref().unwrap_or(body);
    match state.intake.submit(INTAKE.to_owned(), choice, body).await {
        Ok(submitted) => {
            if let Err(e) = state.store.first_delivery(delivery, event).await {
                return unavailable(&e.to_string());
            }
            let status = if submitted.receipts.is_empty() && !submitted.rejected.is_empty() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::ACCEPTED
            };
            answer(
                status,
                json!({
                    "accepted": submitted.accepted(),
                    "receipts": submitted.receipts,
                    "rejected": submitted.rejected_total,
                }),
            )
        }
        Err(IntakeError::Busy { retry_after }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after.as_secs().max(1).to_string())],
            Json(json!({"error": "busy; deliver again"})),
        )
            .into_response(),
        Err(IntakeError::TooManyRecords { records, limit }) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({
                "error": "too many records in one request (server.max_records_per_request)",
                "records": records,
                "max_records_per_request": limit,
            })),
        )
            .into_response(),
        Err(e) => unavailable(&e.to_string()),
    }
}

/// For a `secret_scanning_alert` delivery about an `aws_access_key_id` alert: the alert as
/// the REST API returns it (`[alert]`, which the `github` parser reads with the key id), so
/// the finding names the exposed key. `None` for every other secret type (their secret is never
/// read) and when the alert cannot be read (the webhook's own payload is used then).
pub async fn alert_as_found(gh: &GitHub, body: &[u8]) -> Option<Vec<u8>> {
    let payload: Value = serde_json::from_slice(body).ok()?;
    let alert = &payload["alert"];
    if alert["secret_type"] != "aws_access_key_id" {
        return None;
    }
    let number = alert["number"].as_u64()?;
    let repo = payload["repository"]["full_name"].as_str()?;
    let route = format!("/repos/{repo}/secret-scanning/alerts/{number}");
    match gh.octocrab().get::<Value, _, ()>(route, None::<&()>).await {
        Ok(mut found) if found["secret_type"] == "aws_access_key_id" => {
            // A repository's alert does not name its repository (an organisation's does): the
            // delivery says which one it is.
            found["repository"] = payload["repository"].clone();
            serde_json::to_vec(&[found]).ok()
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %error_text(&e), "cannot read the secret-scanning alert; recording the webhook's finding");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_signature_example_verifies_and_a_changed_byte_does_not() {
        // GitHub's docs: secret "It's a Secret to Everybody", payload "Hello, World!".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signed(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some(sig)
        ));
        assert!(!signed(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            Some(sig)
        ));
        assert!(!signed(b"another secret", b"Hello, World!", Some(sig)));
        assert!(!signed(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            None
        ));
        assert!(!signed(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha1=757107ea")
        ));
    }
}
