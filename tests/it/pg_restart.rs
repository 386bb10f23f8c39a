//! PostgreSQL restarted during load (issue 13): two `firebreak serve` replicas on a private
//! cluster, a client posting continuously while the cluster crashes (`pg_ctl stop -m
//! immediate`) and comes back. Intake answers 503 while it is down, readiness returns by
//! itself, every acknowledged finding is stored once and acted on once, and a client that
//! retries what was refused gets everything accepted in the end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebreak::store::{AuditQuery, Store};

use crate::replicas::{assert_once_each, cli_verify, ready, replicas, wait_applied};
use crate::service::{TOKEN, events, playbook_dir};
use crate::support::pg::PrivateCluster;
use crate::support::receiver::Receiver;

/// What the client saw.
#[derive(Default)]
struct Seen {
    /// Event index → the receipt ids of its 202 answer.
    acked: HashMap<usize, Vec<String>>,
    /// When intake answered 503, in order.
    unavailable: Vec<Instant>,
    /// 429 answers (backed off and retried like 503).
    busy: usize,
    /// Answers other than 202/429/503, or no answer at all.
    other: Vec<String>,
}

/// Posts `bodies` round robin over `addrs` until each got a 202, as Falcosidekick would: a
/// refused event is re-posted later, after `Retry-After` (or 200 ms).
async fn client(addrs: Vec<String>, bodies: Vec<Vec<u8>>, seen: Arc<Mutex<Seen>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut pending: VecDeque<usize> = (0..bodies.len()).collect();
    let mut turn = 0;
    while let Some(i) = pending.pop_front() {
        let addr = &addrs[turn % addrs.len()];
        turn += 1;
        let answer = http
            .post(format!("http://{addr}/v1/findings/auto"))
            .bearer_auth(TOKEN)
            .body(bodies[i].clone())
            .send()
            .await;
        let mut backoff = None;
        match answer {
            Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                let body: serde_json::Value = r.json().await.expect("202 body");
                let ids = body["receipts"]
                    .as_array()
                    .map(|rs| {
                        rs.iter()
                            .filter_map(|r| r["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                seen.lock().expect("seen").acked.insert(i, ids);
            }
            Ok(r)
                if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                let wait = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::from_millis(200), Duration::from_secs);
                let mut s = seen.lock().expect("seen");
                if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    s.unavailable.push(Instant::now());
                } else {
                    s.busy += 1;
                }
                backoff = Some(wait);
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                seen.lock()
                    .expect("seen")
                    .other
                    .push(format!("{status}: {text}"));
                backoff = Some(Duration::from_millis(200));
            }
            Err(e) => {
                seen.lock().expect("seen").other.push(format!("{e}"));
                backoff = Some(Duration::from_millis(200));
            }
        }
        if let Some(wait) = backoff {
            // The same event again, later.
            pending.push_back(i);
            tokio::time::sleep(wait).await;
        } else {
            // A steady load rather than a burst, so the outage falls in the middle of it.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
}

/// Polls `/readyz` on every address until all answer `want`; panics after `limit`.
async fn wait_ready(
    http: &reqwest::Client,
    addrs: &[String],
    want: u16,
    limit: Duration,
    why: &str,
) {
    let start = Instant::now();
    loop {
        let mut all = true;
        for a in addrs {
            all &= ready(http, a).await.as_u16() == want;
        }
        if all {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{why}: /readyz never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_during_load_intake_backs_off_nothing_accepted_is_lost_work_resumes() {
    let Some(pg) = PrivateCluster::start() else {
        return;
    };
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&pg.url)
            .await
            .expect("the private cluster");
        sqlx::raw_sql("CREATE DATABASE firebreak")
            .execute(&mut conn)
            .await
            .expect("create database");
    }
    let url = format!("postgres://postgres@127.0.0.1:{}/firebreak", pg.port);
    let rx = Receiver::start().await;
    let pbs = playbook_dir(&rx.url("/hook"));
    let mut services = replicas(2, &url, pbs.path(), 5);
    let addrs: Vec<String> = services.iter().map(|s| s.addr.clone()).collect();
    let http = reqwest::Client::new();
    wait_ready(&http, &addrs, 200, Duration::from_secs(30), "at start").await;

    let n = 300;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load = tokio::spawn(client(addrs.clone(), events(n), Arc::clone(&seen)));

    // In the middle of the load, the database crashes.
    let start = Instant::now();
    while seen.lock().expect("seen").acked.len() < n / 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the load never got going: {}",
            services[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.stop_immediate();
    let stopped = Instant::now();
    let acked_at_stop = seen.lock().expect("seen").acked.len();
    wait_ready(
        &http,
        &addrs,
        503,
        Duration::from_secs(15),
        "while PostgreSQL is down",
    )
    .await;
    // Down until the client has been refused: an intake request waits up to the store pool's
    // 10 s acquire timeout for a connection before it answers 503, so a shorter outage is only
    // a slow 202. (`/readyz` bounds its own ping and says 503 at once.)
    while seen.lock().expect("seen").unavailable.is_empty() {
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "intake never answered 503 while PostgreSQL was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.start_again();
    let restarted = Instant::now();
    wait_ready(
        &http,
        &addrs,
        200,
        Duration::from_secs(60),
        "after PostgreSQL came back",
    )
    .await;
    let back = restarted.elapsed();

    // The client gets every event accepted in the end.
    let finished = tokio::time::timeout(Duration::from_secs(120), load).await;
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    assert!(
        matches!(finished, Ok(Ok(()))),
        "the client did not get every event accepted: {}/{n} acknowledged; logs:\n{}",
        seen.acked.len(),
        services[0].log_text()
    );
    assert_eq!(seen.acked.len(), n, "every event acknowledged in the end");
    assert!(
        seen.other.is_empty(),
        "unexpected answers: {:?}",
        seen.other
    );
    for s in &mut services {
        assert!(
            matches!(s.child.try_wait(), Ok(None)),
            "a replica exited: {}",
            s.log_text()
        );
    }
    let refused = match (seen.unavailable.first(), seen.unavailable.last()) {
        (Some(a), Some(b)) => b.duration_since(*a),
        _ => Duration::ZERO,
    };
    // Printed, never asserted (STYLE.md: speed is measured, not tested).
    eprintln!(
        "PostgreSQL down {:?} (stopped after {acked_at_stop}/{n} acknowledged): intake answered 503 {} time(s) over {refused:?} (429: {}); ready {back:?} after the restart",
        restarted.duration_since(stopped),
        seen.unavailable.len(),
        seen.busy
    );

    // Every acknowledged finding is stored once: each receipt id is listed by exactly one
    // `findings.received` record, and nothing else was stored.
    let store = firebreak::store::open(&url).await.expect("store");
    wait_applied(&store, n, Duration::from_secs(120), &services).await;
    let audit = store
        .audit_list(AuditQuery::default())
        .await
        .expect("audit");
    let mut listed: HashMap<String, usize> = HashMap::new();
    for a in audit.iter().filter(|a| a.kind == "findings.received") {
        for f in a.detail["findings"].as_array().into_iter().flatten() {
            *listed
                .entry(f["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    let receipts: HashSet<&String> = seen.acked.values().flatten().collect();
    assert_eq!(
        receipts.len(),
        n,
        "one stored finding per acknowledged event"
    );
    for id in &receipts {
        assert_eq!(
            listed.get(*id),
            Some(&1),
            "acknowledged finding {id} is listed once by findings.received"
        );
    }
    // A little time for a wrongly repeated step to show, then: acted on once each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(services);
    assert_once_each(&store, &rx, n).await;
    let verify = cli_verify(&url);
    assert!(
        verify.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
