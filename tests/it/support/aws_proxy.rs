//! A proxy in front of moto that can answer some AWS calls itself: fault injection (throttling
//! the first N calls of an operation) and shims for operations moto lacks (Security Hub
//! `BatchUpdateFindings`). Every other request is forwarded to moto unchanged, `Host` header
//! included, so SigV4 signatures still verify when moto enforces IAM.
//!
//! The operation of a request is read the way AWS routes it: the `X-Amz-Target` header (JSON
//! protocols), the `Action` form field (query protocols: IAM, STS, SQS), or, for REST
//! protocols, left to the interceptor to match on method and path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// Headers as sent.
    pub headers: HeaderMap,
    /// The raw body.
    pub body: Bytes,
    /// The operation (`CreateAccessKey`, `SecurityHubAPIService.GetFindings`), when the
    /// request names one in `X-Amz-Target` or an `Action` form/query field.
    pub operation: Option<String>,
}

/// An answer the proxy gives instead of forwarding.
#[derive(Debug, Clone)]
pub struct ProxyResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: String,
}

impl ProxyResponse {
    /// A query-protocol (IAM, STS) error document, as AWS sends it.
    pub fn query_error(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            content_type: "text/xml".to_owned(),
            body: format!(
                "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>\
                 <Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
                 <RequestId>firebreak-proxy</RequestId></ErrorResponse>"
            ),
        }
    }

    /// A REST-XML (S3) error document, as S3 sends it.
    pub fn s3_error(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            content_type: "application/xml".to_owned(),
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>{message}</Message><RequestId>firebreak-proxy</RequestId></Error>"
            ),
        }
    }

    /// A JSON-protocol error (`__type` and `message`), as the REST-JSON services send it.
    pub fn json_error(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            content_type: "application/json".to_owned(),
            body: serde_json::json!({ "__type": code, "message": message }).to_string(),
        }
    }
}

/// A boxed future (interceptors may call moto themselves).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides, per request, whether to answer it here (`Some`) or forward it to moto (`None`).
pub trait Interceptor: Send + Sync + 'static {
    /// Looks at one request; `upstream` is moto's endpoint, for shims that call it.
    fn intercept<'a>(
        &'a self,
        req: &'a ProxyRequest,
        upstream: &'a str,
    ) -> BoxFuture<'a, Option<ProxyResponse>>;
}

/// Throttles the first `times` calls of `operation` with the service's throttling error, then
/// forwards; counts how many calls of it reached moto.
pub struct Throttle {
    /// The operation to throttle (`CreateAccessKey`).
    pub operation: String,
    /// How many calls to refuse before letting them through.
    pub times: usize,
    refused: AtomicUsize,
    forwarded: AtomicUsize,
}

impl Throttle {
    /// Throttles the first `times` calls of `operation`.
    pub fn new(operation: &str, times: usize) -> Self {
        Self {
            operation: operation.to_owned(),
            times,
            refused: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
        }
    }

    /// Calls refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Calls of the operation forwarded to moto so far.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }
}

impl Interceptor for Throttle {
    fn intercept<'a>(
        &'a self,
        req: &'a ProxyRequest,
        _upstream: &'a str,
    ) -> BoxFuture<'a, Option<ProxyResponse>> {
        Box::pin(async move {
            let op = req.operation.as_deref()?;
            if op != self.operation && !op.ends_with(&format!(".{}", self.operation)) {
                return None;
            }
            // fetch_update so that concurrent calls each take one refusal at most.
            if self
                .refused
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < self.times).then_some(n + 1)
                })
                .is_ok()
            {
                return Some(
                    if req.operation.as_deref().is_some_and(|o| o.contains('.')) {
                        ProxyResponse::json_error(400, "ThrottlingException", "Rate exceeded")
                    } else {
                        ProxyResponse::query_error(400, "Throttling", "Rate exceeded")
                    },
                );
            }
            self.forwarded.fetch_add(1, Ordering::SeqCst);
            None
        })
    }
}

/// S3's `ExpectedBucketOwner` check, which moto does not make: a request to a bucket whose
/// `x-amz-expected-bucket-owner` header names another account than the bucket's owner is
/// refused with 403 `AccessDenied`, as S3 refuses it (S3 User Guide, "Verifying bucket
/// ownership with bucket owner condition"); a request without the header is not checked. The
/// owners are the test's to declare (moto's S3 does not say which account owns a bucket);
/// buckets not declared are forwarded unchecked. Requests are path-style (`/{bucket}?…`), as
/// Firebreak sends them to an endpoint override.
pub struct BucketOwners {
    owners: Vec<(String, String)>,
    refused: AtomicUsize,
}

impl BucketOwners {
    /// `owners`: (bucket, owning account id) pairs.
    pub fn new(owners: &[(&str, &str)]) -> Self {
        Self {
            owners: owners
                .iter()
                .map(|(b, a)| ((*b).to_owned(), (*a).to_owned()))
                .collect(),
            refused: AtomicUsize::new(0),
        }
    }

    /// Requests refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Interceptor for BucketOwners {
    fn intercept<'a>(
        &'a self,
        req: &'a ProxyRequest,
        _upstream: &'a str,
    ) -> BoxFuture<'a, Option<ProxyResponse>> {
        Box::pin(async move {
            let expected = req
                .headers
                .get("x-amz-expected-bucket-owner")?
                .to_str()
                .ok()?;
            let bucket = req.uri.trim_start_matches('/').split(['/', '?']).next()?;
            let (_, owner) = self.owners.iter().find(|(b, _)| b == bucket)?;
            if owner == expected {
                return None;
            }
            self.refused.fetch_add(1, Ordering::SeqCst);
            Some(ProxyResponse::s3_error(
                403,
                "AccessDenied",
                "Access Denied",
            ))
        })
    }
}

/// Before forwarding each call whose operation ends with one of `operations`, runs `probe` and
/// keeps what it returned, in order: the world as it was when the call arrived (for example,
/// whether a row was already committed when a message was deleted). Forwards every call.
pub struct Probe<T> {
    operations: Vec<String>,
    probe: Box<dyn Fn() -> BoxFuture<'static, T> + Send + Sync>,
    seen: Mutex<Vec<(String, T)>>,
}

impl<T: Send + 'static> Probe<T> {
    /// Probes calls of `operations` (`DeleteMessageBatch` matches `AmazonSQS.DeleteMessageBatch`).
    pub fn new(
        operations: &[&str],
        probe: impl Fn() -> BoxFuture<'static, T> + Send + Sync + 'static,
    ) -> Self {
        Self {
            operations: operations.iter().map(|o| (*o).to_owned()).collect(),
            probe: Box::new(probe),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Each probed call's operation and what the probe found, in arrival order.
    pub fn seen(&self) -> Vec<(String, T)>
    where
        T: Clone,
    {
        self.seen.lock().unwrap().clone()
    }
}

impl<T: Send + 'static> Interceptor for Probe<T> {
    fn intercept<'a>(
        &'a self,
        req: &'a ProxyRequest,
        _upstream: &'a str,
    ) -> BoxFuture<'a, Option<ProxyResponse>> {
        Box::pin(async move {
            let op = req.operation.as_deref()?;
            let name = op.rsplit('.').next().unwrap_or(op);
            if self.operations.iter().any(|o| o == name) {
                let found = (self.probe)().await;
                self.seen.lock().unwrap().push((name.to_owned(), found));
            }
            None
        })
    }
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    interceptor: Arc<dyn Interceptor>,
    seen: Mutex<Vec<String>>,
    requests: Mutex<Vec<ProxyRequest>>,
}

/// A running proxy; it stops when the test's runtime ends.
pub struct AwsProxy {
    /// `http://127.0.0.1:PORT`: give this to the SDK as `endpoint_url`.
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl AwsProxy {
    /// Starts a proxy to `upstream` (moto's endpoint) on `127.0.0.1:0`.
    pub async fn start(upstream: &str, interceptor: Arc<dyn Interceptor>) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            interceptor,
            seen: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, shared }
    }

    /// Every operation the proxy saw, in order (requests with no named operation appear as
    /// `METHOD path`).
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Every request the proxy saw, in order, with its headers (what reached the wire).
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

fn operation_of(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Option<String> {
    if let Some(t) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return Some(t.to_owned());
    }
    let form = |text: &str| {
        text.split('&').find_map(|kv| {
            kv.strip_prefix("Action=")
                .map(|a| a.split('&').next().unwrap_or(a).to_owned())
        })
    };
    if let Some(a) = uri.query().and_then(form) {
        return Some(a);
    }
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        return std::str::from_utf8(body).ok().and_then(form);
    }
    None
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = operation_of(&headers, &uri, &body);
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    shared.seen.lock().unwrap().push(
        operation
            .clone()
            .unwrap_or_else(|| format!("{method} {path}")),
    );
    let req = ProxyRequest {
        method: method.clone(),
        uri: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        operation,
    };
    shared.requests.lock().unwrap().push(req.clone());
    if let Some(answer) = shared.interceptor.intercept(&req, &shared.upstream).await {
        return Response::builder()
            .status(answer.status)
            .header("content-type", answer.content_type)
            .header("x-amzn-requestid", "firebreak-proxy")
            .body(Body::from(answer.body))
            .unwrap();
    }
    let mut forward = shared
        .client
        .request(method, format!("{}{path}", shared.upstream))
        .body(body);
    for (name, value) in &headers {
        // Host is kept as the client sent it (it is part of the SigV4 signature); hop-by-hop
        // and length headers are the HTTP client's business.
        if name == "content-length" || name == "connection" || name == "transfer-encoding" {
            continue;
        }
        forward = forward.header(name, value);
    }
    match forward.send().await {
        Ok(r) => {
            let mut out = Response::builder().status(r.status().as_u16());
            for (name, value) in r.headers() {
                if name == "content-length" || name == "transfer-encoding" || name == "connection" {
                    continue;
                }
                out = out.header(name, value);
            }
            let bytes = r.bytes().await.unwrap_or_default();
            out.body(Body::from(bytes)).unwrap()
        }
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(format!("proxy: moto unreachable: {e}")))
            .unwrap(),
    }
}
