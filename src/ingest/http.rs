//! The HTTP intake route: `POST /v1/findings/{parser}`.
//!
//! Owns the transport checks, in this order: bearer-token authentication (constant time, 401
//! without detail), the route's parser id (`auto` or one of `crate::finding::PARSERS`, else 404
//! naming the valid ids), the per-source rate limit (429 with `Retry-After`), the body size
//! limit (413), then hands the raw bytes to [`Intake::submit`](super::Intake::submit) and maps
//! the outcome to a status: 202 after the commit, 422 when every record was rejected, 429 when
//! the queue is full, 503 when the store failed.
//!
//! Bodies are taken as bytes, exactly as senders post them (Falco `json_output`, Falcosidekick's
//! webhook, an EventBridge API destination, JSON lines): what they mean is
//! [`crate::finding`]'s business. Nothing here ever echoes a payload back or logs it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tokio::time::Instant;

use super::{IntakeError, Submitted};
use crate::finding::{PARSERS, ParserChoice, Rejection};
use crate::redact::Redacted;
use crate::server::AppState;
use crate::store::{Receipt, Store};

/// The route template, also the `route` label of `firebreak_http_requests_total`.
pub const ROUTE: &str = "/v1/findings/{parser}";

/// The method router for [`ROUTE`], with the body limit applied.
pub fn findings_route<S: Store>(max_body_bytes: usize) -> MethodRouter<AppState<S>> {
    post(post_findings::<S>).layer(DefaultBodyLimit::max(max_body_bytes))
}

/// Whether `headers` carry `Authorization: Bearer <token>` for one of `tokens`.
///
/// Every configured token is compared (no early exit), on SHA-256 digests so neither the
/// content nor the length of a token leaks through timing. No tokens: always false.
#[must_use]
pub fn authorized(tokens: &[Redacted<String>], headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    let given = Sha256::digest(given.as_bytes());
    let mut ok = Choice::from(0);
    for token in tokens {
        let want = Sha256::digest(token.expose().as_bytes());
        ok |= want.as_slice().ct_eq(given.as_slice());
    }
    bool::from(ok)
}

/// A token bucket per ingest source (the route's parser id): `per_second` requests a second,
/// bursts of up to `per_second`. Keys are parser ids or `auto`, so the map stays small.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests a second per source; 0 = no limit.
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's token for `source`, or says how long until one is available.
    ///
    /// # Errors
    /// The wait (at least one second, as `Retry-After` counts whole seconds) when over the limit.
    pub fn check(&self, source: &str) -> Result<(), Duration> {
        self.check_at(source, Instant::now())
    }

    fn check_at(&self, source: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_second);
        // A poisoned lock only means another request panicked mid-update; the bucket is still
        // a plausible number, so keep limiting rather than failing open or closed.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(source.to_owned()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Err(Duration::from_secs_f64(wait.ceil().max(1.0)))
        }
    }
}

/// One rejected record as the API reports it: where and why, never the record itself.
#[derive(Debug, Serialize)]
struct RejectionView {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    pointer: String,
    parser: String,
    reason: String,
}

impl From<&Rejection> for RejectionView {
    fn from(r: &Rejection) -> Self {
        Self {
            index: r.index,
            line: r.line,
            pointer: r.pointer.clone(),
            parser: r.parser.clone(),
            reason: r.reason.clone(),
        }
    }
}

/// The 202 body.
#[derive(Debug, Serialize)]
struct Accepted {
    accepted: usize,
    duplicates: usize,
    receipts: Vec<Receipt>,
    rejected: Vec<RejectionView>,
}

/// Every way the route answers other than 202.
#[derive(Debug)]
enum IngestError {
    /// Missing or wrong token: 401, no detail.
    Unauthorized,
    /// The route names no parser: 404 with the valid ids.
    UnknownParser { did_you_mean: Option<&'static str> },
    /// Over the per-source rate limit: 429.
    RateLimited(Duration),
    /// Over `server.max_body_bytes`: 413.
    TooLarge(usize),
    /// The body could not be read: 400.
    BadBody,
    /// Every record was rejected: 422 with the rejections.
    AllRejected(Vec<RejectionView>),
    /// The intake queue is full: 429.
    Busy(Duration),
    /// The store failed or the service is stopping: 503, generic, with the request id.
    Unavailable { request_id: String },
}

fn retry_after(status: StatusCode, wait: Duration, message: &str) -> Response {
    let secs = wait.as_secs().max(1);
    let mut resp = (
        status,
        Json(json!({ "error": message, "retry_after_seconds": secs })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        match self {
            IngestError::Unauthorized => {
                let mut resp = StatusCode::UNAUTHORIZED.into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                resp
            }
            IngestError::UnknownParser { did_you_mean } => {
                let mut valid: Vec<&str> = vec!["auto"];
                valid.extend(PARSERS.iter().map(|p| p.id()));
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({
                        "error": "unknown parser in /v1/findings/{parser}",
                        "parsers": valid,
                        "did_you_mean": did_you_mean,
                    })),
                )
                    .into_response()
            }
            IngestError::RateLimited(wait) => retry_after(
                StatusCode::TOO_MANY_REQUESTS,
                wait,
                "rate limit for this source exceeded",
            ),
            IngestError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({
                    "error": "request body too large",
                    "max_body_bytes": limit,
                })),
            )
                .into_response(),
            IngestError::BadBody => (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "the request body could not be read" })),
            )
                .into_response(),
            IngestError::AllRejected(rejected) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": "no record in the body could be parsed",
                    "accepted": 0,
                    "rejected": rejected,
                })),
            )
                .into_response(),
            IngestError::Busy(wait) => {
                retry_after(StatusCode::TOO_MANY_REQUESTS, wait, "intake queue is full")
            }
            IngestError::Unavailable { request_id } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": "findings could not be stored; nothing was accepted, retry later",
                    "request_id": request_id,
                })),
            )
                .into_response(),
        }
    }
}

/// `POST /v1/findings/{parser}`.
async fn post_findings<S: Store>(
    State(state): State<AppState<S>>,
    Path(parser): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), IngestError> {
    if !authorized(&state.tokens, &headers) {
        return Err(IngestError::Unauthorized);
    }
    let Ok(choice) = ParserChoice::from_id(&parser) else {
        let ids = std::iter::once("auto").chain(PARSERS.iter().map(|p| p.id()));
        return Err(IngestError::UnknownParser {
            did_you_mean: crate::error::did_you_mean(&parser, ids),
        });
    };
    // From here on `source` is one of a fixed set of ids, safe for labels and logs.
    let source = match choice {
        ParserChoice::Auto => "auto",
        ParserChoice::Fixed(p) => p.id(),
    };
    state
        .limiter
        .check(source)
        .map_err(IngestError::RateLimited)?;

    let limit = state.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::TooLarge(limit));
    }
    let body = Bytes::from_request(request, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            IngestError::TooLarge(limit)
        } else {
            IngestError::BadBody
        }
    })?;

    let intake = format!("http:/v1/findings/{source}");
    match state.intake.submit(intake, choice, &body).await {
        Ok(submitted) => answer(submitted),
        Err(IntakeError::Busy { retry_after }) => {
            tracing::warn!(source, "intake queue full; answering 429");
            Err(IngestError::Busy(retry_after))
        }
        Err(e) => {
            let request_id = ulid::Ulid::new().to_string();
            tracing::error!(%request_id, source, error = %e, "findings not stored; answering 503");
            Err(IngestError::Unavailable { request_id })
        }
    }
}

fn answer(submitted: Submitted) -> Result<(StatusCode, Json<Accepted>), IngestError> {
    let rejected: Vec<RejectionView> = submitted.rejected.iter().map(RejectionView::from).collect();
    if submitted.receipts.is_empty() && !rejected.is_empty() {
        return Err(IngestError::AllRejected(rejected));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: submitted.accepted(),
            duplicates: submitted.duplicates(),
            receipts: submitted.receipts,
            rejected,
        }),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn only_a_configured_bearer_token_is_authorized() {
        let tokens = vec![
            Redacted::new("s3cret-one".to_owned()),
            Redacted::new("two".into()),
        ];
        assert!(authorized(&tokens, &bearer("Bearer s3cret-one")));
        assert!(authorized(&tokens, &bearer("bearer two")));
        assert!(!authorized(&tokens, &bearer("Bearer s3cret-on")));
        assert!(!authorized(&tokens, &bearer("Basic s3cret-one")));
        assert!(!authorized(&tokens, &bearer("Bearer ")));
        assert!(!authorized(&tokens, &HeaderMap::new()));
        assert!(!authorized(&[], &bearer("Bearer s3cret-one")));
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let limiter = RateLimiter::new(2);
        let t0 = Instant::now();
        assert!(limiter.check_at("falco", t0).is_ok());
        assert!(limiter.check_at("falco", t0).is_ok());
        assert_eq!(limiter.check_at("falco", t0), Err(Duration::from_secs(1)));
        // Other sources have their own bucket.
        assert!(limiter.check_at("guardduty", t0).is_ok());
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.check_at("falco", later).is_ok());
        assert!(limiter.check_at("falco", later).is_err());
    }

    #[test]
    fn zero_means_no_rate_limit() {
        let limiter = RateLimiter::new(0);
        for _ in 0..1000 {
            assert!(limiter.check("falco").is_ok());
        }
    }
}
