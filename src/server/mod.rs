//! The long-running service's HTTP surface: the axum [`router`] and [`serve_http`].
//!
//! Owns the shared [`AppState`], the operational endpoints (`/healthz`, `/readyz`, `/metrics`),
//! the per-route request counter and graceful shutdown. The ingest route itself (auth, limits,
//! status mapping) is [`crate::ingest::http`]; this module only mounts it.
//!
//! It must not parse findings, touch the store except to ping it, or hold state of its own:
//! everything a request needs is in [`AppState`], so tests drive the router in-process.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::json;

use crate::config::ServerConfig;
use crate::ingest::Intake;
use crate::ingest::http::{IngestTokens, findings_route};
use crate::store::Store;
use crate::telemetry::metrics::{self, Metrics};

/// Everything a request handler may use. Cheap to clone (all shared).
pub struct AppState<S> {
    /// The front door to the store writer.
    pub intake: Intake,
    /// The store (readiness pings only).
    pub store: Arc<S>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Accepted bearer tokens for the ingest route, with their scopes and rate limits (empty:
    /// refuse all).
    pub tokens: Arc<IngestTokens>,
    /// Set once the service can do its job (playbooks loaded); `/readyz` is 503 until then.
    pub ready: Arc<AtomicBool>,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// The GitHub webhook (`POST /v1/github`), when `github.webhook_secret_env` is set.
    pub github: Option<Arc<crate::ingest::github::GithubHook<S>>>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            intake: self.intake.clone(),
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.metrics),
            tokens: Arc::clone(&self.tokens),
            ready: Arc::clone(&self.ready),
            max_body_bytes: self.max_body_bytes,
            github: self.github.clone(),
        }
    }
}

impl<S> std::fmt::Debug for AppState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("tokens", &self.tokens.len())
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<S: Store> AppState<S> {
    /// State for `server` settings (tokens with their scopes and rate limits, body limit); not
    /// ready until `ready` is set.
    #[must_use]
    pub fn new(
        intake: Intake,
        store: Arc<S>,
        metrics: Arc<Metrics>,
        server: &ServerConfig,
    ) -> Self {
        Self {
            intake,
            store,
            metrics,
            tokens: Arc::new(IngestTokens::from_config(server)),
            ready: Arc::new(AtomicBool::new(false)),
            max_body_bytes: usize::try_from(server.max_body_bytes).unwrap_or(usize::MAX),
            github: None,
        }
    }

    /// The same state, serving GitHub webhooks with `hook`.
    #[must_use]
    pub fn with_github(mut self, hook: crate::ingest::github::GithubHook<S>) -> Self {
        self.github = Some(Arc::new(hook));
        self
    }
}

/// The service's routes: `POST /v1/findings/{parser}`, `POST /v1/github`, `GET /healthz`,
/// `GET /readyz`, `GET /metrics`. Logs an error when no ingest token is configured (the route then refuses
/// every request with 401).
pub fn router<S: Store>(state: AppState<S>) -> Router {
    if state.tokens.is_empty() {
        tracing::error!(
            "no server.tokens configured: POST /v1/findings/* refuses every request with 401; \
             set FIREBREAK_SERVER__TOKENS to accept findings"
        );
    }
    let metrics = Arc::clone(&state.metrics);
    Router::new()
        .route(
            crate::ingest::http::ROUTE,
            counted(
                &metrics,
                crate::ingest::http::ROUTE,
                findings_route::<S>(state.max_body_bytes),
            ),
        )
        .route(
            crate::ingest::github::ROUTE,
            counted(
                &metrics,
                crate::ingest::github::ROUTE,
                crate::ingest::github::github_route::<S>(state.max_body_bytes),
            ),
        )
        .route("/healthz", counted(&metrics, "/healthz", get(healthz)))
        .route("/readyz", counted(&metrics, "/readyz", get(readyz::<S>)))
        .route(
            "/metrics",
            counted(&metrics, "/metrics", get(render_metrics::<S>)),
        )
        .with_state(state)
}

/// How the HTTP server protects itself from slow, idle and numerous clients.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A client must send a request's headers within this (from its first byte, and while a
    /// kept-alive connection waits for the next request); else the connection is closed.
    pub header_read_timeout: std::time::Duration,
    /// A request (its body included) must be handled within this; else 408.
    pub request_timeout: std::time::Duration,
    /// Connections served at once; a connection over it is closed at once (its client may
    /// retry), so the process never runs out of file descriptors.
    pub max_connections: usize,
    /// After shutdown is asked, in-flight requests get this long; then the connections are
    /// dropped, whatever clients do.
    pub shutdown_timeout: std::time::Duration,
}

impl HttpLimits {
    /// The limits of `server` settings.
    #[must_use]
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: std::time::Duration::from_secs(
                server.header_read_timeout_seconds.max(1),
            ),
            request_timeout: std::time::Duration::from_secs(server.request_timeout_seconds.max(1)),
            max_connections: server.max_connections.max(1),
            shutdown_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, within `limits`: a header read
/// timeout (slowloris), a per-request timeout (slow bodies), a connection cap; then stops
/// accepting, lets in-flight requests finish for at most `limits.shutdown_timeout`, and
/// returns.
///
/// # Errors
/// Never in practice: a failed accept (e.g. out of file descriptors) is logged and retried.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "too many connections; closing this one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    let req = req.map(axum::body::Body::new);
                    match tokio::time::timeout(limits.request_timeout, router.oneshot(req)).await {
                        Ok(answered) => answered,
                        Err(_) => Ok((
                            StatusCode::REQUEST_TIMEOUT,
                            [(header::CONNECTION, HeaderValue::from_static("close"))],
                            "request not received in time\n",
                        )
                            .into_response()),
                    }
                }
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!("connections still open after the shutdown bound; dropping them");
        }
    }
    Ok(())
}

/// Which route a counted request belongs to.
#[derive(Clone)]
struct RouteLabel {
    metrics: Arc<Metrics>,
    route: &'static str,
}

/// Wraps `route` so every answer is counted in `firebreak_http_requests_total{route,status}`.
fn counted<S: Clone + Send + Sync + 'static>(
    metrics: &Arc<Metrics>,
    route: &'static str,
    method_router: MethodRouter<S>,
) -> MethodRouter<S> {
    let label = RouteLabel {
        metrics: Arc::clone(metrics),
        route,
    };
    method_router.layer(middleware::from_fn_with_state(label, count_status))
}

async fn count_status(State(label): State<RouteLabel>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    label
        .metrics
        .http_request(label.route, response.status().as_u16());
    response
}

/// `GET /healthz`: the process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers, the intake writer runs and the service said it is ready.
/// How long `/readyz` waits for the store to answer a ping.
const READINESS_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

async fn readyz<S: Store>(State(state): State<AppState<S>>) -> Response {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response()
    };
    if !state.ready.load(Ordering::Acquire) {
        return not_ready("starting: playbooks not loaded yet");
    }
    if !state.intake.is_running() {
        return not_ready("intake writer stopped");
    }
    // Bounded well below a probe's usual timeout: a database that does not answer (its pool
    // waits up to 10 s for a connection) makes this 503, not a timed-out probe.
    match tokio::time::timeout(READINESS_PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store ping failed");
            return not_ready("store unavailable");
        }
        Err(_) => {
            tracing::warn!("readiness: store ping did not answer in time");
            return not_ready("store unavailable");
        }
    }
    (StatusCode::OK, axum::Json(json!({ "ready": true }))).into_response()
}

/// `GET /metrics`: every `firebreak_*` family, OpenMetrics text.
async fn render_metrics<S: Store>(State(state): State<AppState<S>>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}
