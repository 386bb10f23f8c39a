//! A webhook receiver on loopback: records every request (method, path, headers, body) and
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! answers with a status code the test chooses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// HTTP method.
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Headers, names lowercased (the last value wins).
    pub headers: BTreeMap<String, String>,
    /// The raw body, as text.
    pub body: String,
}

impl Received {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Clone)]
struct Shared {
    requests: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// How long each answer waits (milliseconds).
    delay_ms: Arc<AtomicU64>,
    /// While `true`, answers wait until it turns `false` (the request is already recorded).
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

/// A running receiver; it stops when the test's runtime ends.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shared: Shared,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0` that answers 200.
    pub async fn start() -> Self {
        let shared = Shared {
            requests: Arc::new(Mutex::new(Vec::new())),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            held: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver serves");
        });
        Self {
            base: format!("http://{addr}"),
            shared,
        }
    }

    /// Makes every later request get `status`.
    pub fn respond_with(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Makes every later answer wait `delay` (a slow peer).
    pub fn delay_answers(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Holds every answer (requests are still recorded at once) until [`Self::release`].
    pub fn hold(&self) {
        self.shared.held.send_replace(true);
    }

    /// Lets held and later answers go.
    pub fn release(&self) {
        self.shared.held.send_replace(false);
    }

    /// A URL on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().expect("lock").clone()
    }
}

async fn record(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared.requests.lock().expect("lock").push(Received {
        method: method.to_string(),
        uri: uri.to_string(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut held = shared.held.subscribe();
    let _ = held.wait_for(|h| !*h).await;
    let status = StatusCode::from_u16(shared.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // A body that must never reach an error message.
    (status, "receiver-body-SHOULD-NOT-LEAK")
}
