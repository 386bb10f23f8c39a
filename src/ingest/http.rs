//! The HTTP intake route: `POST /v1/findings/{parser}`.
//!
//! Owns the transport checks, in this order: bearer-token authentication against the
//! `server.tokens` entries (constant time, 401 without detail), the route's parser id (`auto` or
//! one of `crate::finding::PARSERS`, else 404 naming the valid ids), the token's scope (a route
//! the token may not post to: 403 naming the token's *name* and the parser), the token's rate
//! limit (429 with `Retry-After`), the body size limit (413), then hands the raw bytes to
//! [`Intake::submit_allowed`](super::Intake::submit_allowed) with the intake `http:<token-name>`
//! and the token's scope (on `auto`, a record whose sniffed parser the token may not use is
//! rejected with a reason), and maps the outcome to a status: 202 after the commit, 413 when
//! the body holds more records than `server.max_records_per_request` (nothing stored), 422 when
//! every record was rejected, 429 when the queue is full, 503 with `Retry-After: 5` when the store
//! failed.
//!
//! Bodies are taken as bytes, exactly as senders post them (Falco `json_output`, Falcosidekick's
//! webhook, an EventBridge API destination, JSON lines): what they mean is
//! [`crate::finding`]'s business. Nothing here ever echoes a payload or a token back or logs it.

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
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::time::Instant;

use super::{IntakeError, Submitted};
use crate::config::{ANY_PARSER, ServerConfig};
use crate::finding::{PARSERS, Parser, ParserChoice, Rejection};
use crate::server::AppState;
use crate::store::{Receipt, Store};

/// The route template, also the `route` label of `firebreak_http_requests_total`.
pub const ROUTE: &str = "/v1/findings/{parser}";

/// The method router for [`ROUTE`], with the body limit applied.
pub fn findings_route<S: Store>(max_body_bytes: usize) -> MethodRouter<AppState<S>> {
    post(post_findings::<S>).layer(DefaultBodyLimit::max(max_body_bytes))
}

/// The ingest tokens the route accepts (`server.tokens`): for each, its name, scope and rate
/// limit. Tokens are kept only as SHA-256 digests.
#[derive(Debug, Default)]
pub struct IngestTokens {
    tokens: Vec<IngestToken>,
}

/// One accepted token: who posts with it, and where it may post.
#[derive(Debug)]
pub struct IngestToken {
    name: String,
    /// SHA-256 of the token: compared instead of the token, so neither its content nor its
    /// length shows in the comparison's timing.
    digest: [u8; 32],
    /// The `parsers` entries: parser ids, `auto`, `*`.
    parsers: Vec<String>,
    limiter: RateLimiter,
}

impl IngestToken {
    /// The entry's name (`server.tokens[].name`, `token-N` for a plain token).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this token may post to `/v1/findings/{route}` (`auto` or a parser id).
    #[must_use]
    pub fn allows_route(&self, route: &str) -> bool {
        self.parsers.iter().any(|p| p == ANY_PARSER || p == route)
    }

    /// Whether records this token posts may be parsed by `parser` (on `auto`: the parser that
    /// sniffing picked); the refusal names the token and the parser, never the token's value.
    ///
    /// # Errors
    /// The reason a record is rejected.
    pub fn permit(&self, parser: &'static dyn Parser) -> Result<(), String> {
        if self
            .parsers
            .iter()
            .any(|p| p == ANY_PARSER || p == parser.id())
        {
            Ok(())
        } else {
            Err(format!(
                "token `{}` may not post {} records (it may post: {})",
                self.name,
                parser.id(),
                self.parsers.join(", ")
            ))
        }
    }

    /// Takes one request from this token's rate budget.
    ///
    /// # Errors
    /// How long to wait when over the limit.
    pub fn check_rate(&self) -> Result<(), Duration> {
        self.limiter.check()
    }
}

impl IngestTokens {
    /// The tokens of `server.tokens`, each with its own rate limit (its `rate_limit`, else
    /// `server.rate_limit_per_token`). An entry whose token is not set (its `token_env` was not
    /// read: configuration not built by [`crate::config::load`]) is left out, with an error log.
    #[must_use]
    pub fn from_config(server: &ServerConfig) -> Self {
        let tokens = server
            .tokens
            .iter()
            .filter_map(|t| {
                let Some(secret) = t.token.as_ref() else {
                    tracing::error!(
                        token = %t.name,
                        "server.tokens entry has no token (token_env not read); it is not accepted"
                    );
                    return None;
                };
                Some(IngestToken {
                    name: t.name.0.clone(),
                    digest: Sha256::digest(secret.expose().as_bytes()).into(),
                    parsers: t.parsers.iter().map(|p| p.0.clone()).collect(),
                    limiter: RateLimiter::new(t.rate_limit.unwrap_or(server.rate_limit_per_token)),
                })
            })
            .collect();
        Self { tokens }
    }

    /// Whether no token is accepted (the route then refuses everything with 401).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many tokens are accepted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The token `headers` carry as `Authorization: Bearer <token>`, if it is one of ours.
    ///
    /// Every configured token is compared (no early exit), on SHA-256 digests, and the match is
    /// selected without branching, so timing says neither whether nor which token matched.
    #[must_use]
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<&IngestToken> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .filter(|t| !t.is_empty())?;
        let given = Sha256::digest(given.as_bytes());
        // 1 + the index of the matching token; 0: none.
        let mut found: u64 = 0;
        for (i, token) in self.tokens.iter().enumerate() {
            let hit = token.digest.as_slice().ct_eq(given.as_slice());
            found.conditional_assign(&(i as u64 + 1), hit);
        }
        let index = usize::try_from(found.checked_sub(1)?).ok()?;
        self.tokens.get(index)
    }
}

/// A token bucket: `per_second` requests a second, bursts of up to `per_second`; 0 = no limit.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    bucket: Mutex<Option<Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests a second; 0 = no limit.
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            bucket: Mutex::new(None),
        }
    }

    /// Takes one request's token, or says how long until one is available (by Tokio's clock,
    /// so paused time in tests drives it).
    ///
    /// # Errors
    /// The wait (at least one second, as `Retry-After` counts whole seconds) when over the limit.
    pub fn check(&self) -> Result<(), Duration> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_second);
        // A poisoned lock only means another request panicked mid-update; the bucket is still
        // a plausible number, so keep limiting rather than failing open or closed.
        let mut guard = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = guard.get_or_insert(Bucket {
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
    /// The first rejected records, with where and why.
    rejected: Vec<RejectionView>,
    /// Every rejected record, listed or not.
    rejected_total: usize,
}

/// Every way the route answers other than 202.
#[derive(Debug)]
enum IngestError {
    /// Missing or wrong token: 401, no detail.
    Unauthorized,
    /// The route names no parser: 404 with the valid ids.
    UnknownParser { did_you_mean: Option<&'static str> },
    /// The token may not post to this route: 403 naming the token (by name) and the parser.
    Forbidden {
        token: String,
        parser: &'static str,
        allowed: Vec<String>,
    },
    /// Over the token's rate limit: 429.
    RateLimited(Duration),
    /// Over `server.max_body_bytes`: 413.
    TooLarge(usize),
    /// More records than `server.max_records_per_request`: 413 naming the limit and the count.
    TooManyRecords { records: usize, limit: usize },
    /// The body could not be read: 400.
    BadBody,
    /// Every record was rejected: 422 with the first rejections and their total.
    AllRejected(Vec<RejectionView>, usize),
    /// The intake queue is full: 429.
    Busy(Duration),
    /// The store failed or the service is stopping: 503, generic, with the request id.
    Unavailable { request_id: String },
}

/// What a 503 (the store failed, or the service is stopping) asks senders to wait before they
/// post again: long enough for a database failover or restart not to be hammered, short enough
/// that a finding waits seconds, not minutes.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

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
            IngestError::Forbidden {
                token,
                parser,
                allowed,
            } => (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "error": format!(
                        "token `{token}` may not post to /v1/findings/{parser}"
                    ),
                    "token": token,
                    "parser": parser,
                    "allowed": allowed,
                })),
            )
                .into_response(),
            IngestError::RateLimited(wait) => retry_after(
                StatusCode::TOO_MANY_REQUESTS,
                wait,
                "rate limit for this token exceeded",
            ),
            IngestError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({
                    "error": "request body too large",
                    "max_body_bytes": limit,
                })),
            )
                .into_response(),
            IngestError::TooManyRecords { records, limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({
                    "error": format!(
                        "too many records in one request: {records}, over the limit of {limit} \
                         (server.max_records_per_request); nothing was stored, send them in \
                         smaller requests"
                    ),
                    "records": records,
                    "max_records_per_request": limit,
                })),
            )
                .into_response(),
            IngestError::BadBody => (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "the request body could not be read" })),
            )
                .into_response(),
            IngestError::AllRejected(rejected, total) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": "no record in the body could be parsed",
                    "accepted": 0,
                    "rejected": rejected,
                    "rejected_total": total,
                })),
            )
                .into_response(),
            IngestError::Busy(wait) => {
                retry_after(StatusCode::TOO_MANY_REQUESTS, wait, "intake queue is full")
            }
            IngestError::Unavailable { request_id } => {
                let secs = UNAVAILABLE_RETRY_AFTER.as_secs();
                let mut resp = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "error": "findings could not be stored; nothing was accepted, retry later",
                        "request_id": request_id,
                        "retry_after_seconds": secs,
                    })),
                )
                    .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                resp
            }
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
    let Some(token) = state.tokens.authenticate(&headers) else {
        return Err(IngestError::Unauthorized);
    };
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
    let name = token.name();
    if !token.allows_route(source) {
        tracing::warn!(
            token = name,
            parser = source,
            "token may not post to this parser; answering 403"
        );
        return Err(IngestError::Forbidden {
            token: name.to_owned(),
            parser: source,
            allowed: token.parsers.clone(),
        });
    }
    token.check_rate().map_err(IngestError::RateLimited)?;

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

    let intake = format!("http:{name}");
    let permit = |p: &'static dyn Parser| token.permit(p);
    match state
        .intake
        .submit_allowed(intake, choice, &body, &permit)
        .await
    {
        Ok(submitted) => answer(submitted),
        Err(IntakeError::Busy { retry_after }) => {
            tracing::warn!(token = name, source, "intake queue full; answering 429");
            Err(IngestError::Busy(retry_after))
        }
        Err(IntakeError::TooManyRecords { records, limit }) => {
            tracing::warn!(
                token = name,
                source,
                records,
                limit,
                "too many records in one request; answering 413"
            );
            Err(IngestError::TooManyRecords { records, limit })
        }
        Err(e) => {
            let request_id = ulid::Ulid::new().to_string();
            tracing::error!(
                %request_id,
                token = name,
                source,
                error = %e,
                "findings not stored; answering 503"
            );
            Err(IngestError::Unavailable { request_id })
        }
    }
}

fn answer(submitted: Submitted) -> Result<(StatusCode, Json<Accepted>), IngestError> {
    let rejected: Vec<RejectionView> = submitted.rejected.iter().map(RejectionView::from).collect();
    if submitted.receipts.is_empty() && !rejected.is_empty() {
        return Err(IngestError::AllRejected(rejected, submitted.rejected_total));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: submitted.accepted(),
            duplicates: submitted.duplicates(),
            receipts: submitted.receipts,
            rejected,
            rejected_total: submitted.rejected_total,
        }),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::{ParserScope, TokenConfig, TokenName};
    use crate::redact::Redacted;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn tokens(entries: &[(&str, &str, &[&str])]) -> IngestTokens {
        let server = ServerConfig {
            tokens: entries
                .iter()
                .map(|(name, secret, parsers)| TokenConfig {
                    name: TokenName((*name).to_owned()),
                    token: Some(Redacted::new((*secret).to_owned())),
                    token_env: None,
                    parsers: parsers
                        .iter()
                        .map(|p| ParserScope((*p).to_owned()))
                        .collect(),
                    rate_limit: None,
                })
                .collect(),
            ..ServerConfig::default()
        };
        IngestTokens::from_config(&server)
    }

    #[test]
    fn only_a_configured_bearer_token_is_authenticated_and_named() {
        let t = tokens(&[("one", "s3cret-one", &["*"]), ("two", "two", &["falco"])]);
        let who = |h: &HeaderMap| t.authenticate(h).map(IngestToken::name);
        assert_eq!(who(&bearer("Bearer s3cret-one")), Some("one"));
        assert_eq!(who(&bearer("bearer two")), Some("two"));
        assert_eq!(who(&bearer("Bearer s3cret-on")), None);
        assert_eq!(who(&bearer("Basic s3cret-one")), None);
        assert_eq!(who(&bearer("Bearer ")), None);
        assert_eq!(who(&HeaderMap::new()), None);
        assert_eq!(
            IngestTokens::default()
                .authenticate(&bearer("Bearer s3cret-one"))
                .map(IngestToken::name),
            None
        );
        // The token's value is kept only as a digest.
        assert!(!format!("{t:?}").contains("s3cret-one"));
    }

    #[test]
    fn a_token_is_scoped_to_its_parsers() {
        let t = tokens(&[("sidekick", "a", &["falco", "auto"]), ("all", "b", &["*"])]);
        let sidekick = t.authenticate(&bearer("Bearer a")).unwrap();
        let all = t.authenticate(&bearer("Bearer b")).unwrap();
        let falco = crate::finding::parser("falco").unwrap();
        let guardduty = crate::finding::parser("guardduty").unwrap();
        assert!(sidekick.allows_route("falco") && sidekick.allows_route("auto"));
        assert!(!sidekick.allows_route("guardduty"));
        assert!(sidekick.permit(falco).is_ok());
        let why = sidekick.permit(guardduty).unwrap_err();
        assert_eq!(
            why,
            "token `sidekick` may not post guardduty records (it may post: falco, auto)"
        );
        assert!(all.allows_route("trufflehog") && all.permit(guardduty).is_ok());
    }

    #[test]
    fn token_without_a_value_is_not_accepted() {
        let server = ServerConfig {
            tokens: vec![TokenConfig {
                token: None,
                token_env: Some("UNREAD".into()),
                ..TokenConfig::plain(0, Redacted::new(String::new()))
            }],
            ..ServerConfig::default()
        };
        assert!(IngestTokens::from_config(&server).is_empty());
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let limiter = RateLimiter::new(2);
        let t0 = Instant::now();
        assert!(limiter.check_at(t0).is_ok());
        assert!(limiter.check_at(t0).is_ok());
        assert_eq!(limiter.check_at(t0), Err(Duration::from_secs(1)));
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.check_at(later).is_ok());
        assert!(limiter.check_at(later).is_err());
    }

    #[test]
    fn zero_means_no_rate_limit() {
        let limiter = RateLimiter::new(0);
        for _ in 0..1000 {
            assert!(limiter.check().is_ok());
        }
    }
}
