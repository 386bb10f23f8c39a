//! `firebreak bench`: throughput of the hot paths, measured on this machine with real input.
//!
//! Benchmarks take a real scanner file, replicate its records to the requested count, and time
//! the same functions the service uses (no special bench-only code path). Numbers go to stdout;
//! run a release build (`cargo run --release -- bench …`) for meaningful figures.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Format, input, output};
use crate::error::Exit;
use crate::finding::{ParseReport, ParserChoice, decode, parse_input};
use crate::playbook::{Decision, load_dir};

/// One measured benchmark.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// What was measured.
    pub name: String,
    /// Records processed per iteration.
    pub records: usize,
    /// Iterations timed (after one warm-up).
    pub iterations: u32,
    /// Best iteration, in seconds.
    pub best_seconds: f64,
    /// Median iteration, in seconds.
    pub median_seconds: f64,
    /// Records per second at the median.
    pub per_second: f64,
}

fn time<F: FnMut() -> usize>(name: &str, iterations: u32, mut f: F) -> BenchResult {
    let records = f(); // warm-up
    let mut times: Vec<Duration> = (0..iterations.max(1))
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2].as_secs_f64();
    BenchResult {
        name: name.to_owned(),
        records,
        iterations: iterations.max(1),
        best_seconds: times[0].as_secs_f64(),
        median_seconds: median,
        per_second: if median > 0.0 {
            records as f64 / median
        } else {
            0.0
        },
    }
}

/// Builds a JSON-lines input of `n` records by repeating the records of `bytes`.
fn replicate(source: &str, bytes: &[u8], n: usize) -> Result<Vec<u8>, String> {
    let mut scratch = ParseReport::default();
    let docs = decode(source, bytes, &mut scratch);
    if docs.is_empty() {
        return Err(format!("{source}: no JSON records to replicate"));
    }
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(&d.value).unwrap_or_default())
        .collect();
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(lines[i % lines.len()].as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// Reads FILE and replicates its records to `records` JSON lines; errors are reported here.
fn replicated_input(file: &str, records: usize) -> Result<(String, Vec<u8>), Exit> {
    let report = |e: String| {
        output::error(&e, None);
        Exit::Usage
    };
    let (source, bytes) = input::read(file).map_err(report)?;
    let data = replicate(&source, &bytes, records).map_err(report)?;
    Ok((source, data))
}

/// `firebreak bench parse FILE`: decode + parse + build (scrub, fingerprint) of N records.
pub fn parse(file: &str, records: usize, chunk: usize, iterations: u32, format: Format) -> Exit {
    let (source, data) = match replicated_input(file, records) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let probe = parse_input(&source, &data, ParserChoice::Auto);
    if !probe.rejected.is_empty() {
        output::error(
            &format!(
                "{}: {} record(s) rejected; benchmark a file that parses cleanly",
                source,
                probe.rejected.len()
            ),
            None,
        );
        return Exit::Failure;
    }
    let parser = probe
        .findings
        .first()
        .map_or_else(|| "auto".to_owned(), |f| f.source.clone());
    // Bodies as the service sees them: `chunk` records per parse (a request body is at most
    // `server.max_body_bytes`). `--chunk 0` parses all records as one input, which measures
    // holding every finding in memory at once as well.
    let bodies: Vec<&[u8]> = if chunk == 0 {
        vec![&data[..]]
    } else {
        let mut out = Vec::new();
        let (mut start, mut lines) = (0, 0);
        for (i, b) in data.iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                if lines == chunk {
                    out.push(&data[start..=i]);
                    (start, lines) = (i + 1, 0);
                }
            }
        }
        if start < data.len() {
            out.push(&data[start..]);
        }
        out
    };
    let per = if chunk == 0 {
        "one input".to_owned()
    } else {
        format!("{chunk} per body")
    };
    let result = time(
        &format!("parse {source} ({parser}, auto-detect, one thread, {per})"),
        iterations,
        || {
            bodies
                .iter()
                .map(|body| {
                    let r = parse_input("bench", body, ParserChoice::Auto);
                    r.findings.len() + r.skipped
                })
                .sum()
        },
    );
    report(&[result], format);
    Exit::Ok
}

/// `firebreak bench match DIR FILE`: playbook evaluation of N findings against a directory.
pub fn matching(
    dir: &std::path::Path,
    file: &str,
    records: usize,
    iterations: u32,
    format: Format,
) -> Exit {
    let set = match load_dir(dir) {
        Ok(s) => s,
        Err(_) => {
            output::error(
                &format!(
                    "{}: playbooks do not load; run `firebreak playbooks check`",
                    dir.display()
                ),
                None,
            );
            return Exit::Usage;
        }
    };
    let (source, data) = match replicated_input(file, records) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let findings = parse_input(&source, &data, ParserChoice::Auto).findings;
    let name = format!(
        "match {} finding(s) against {} playbook(s)",
        findings.len(),
        set.playbooks().len()
    );
    let result = time(&name, iterations, || {
        let mut acted = 0;
        for f in &findings {
            acted += set
                .evaluate(f)
                .iter()
                .filter(|e| e.decision == Decision::Act)
                .count();
        }
        std::hint::black_box(acted);
        findings.len()
    });
    report(&[result], format);
    Exit::Ok
}

fn report(results: &[BenchResult], format: Format) {
    match format {
        Format::Json => output::json(results),
        Format::Table => output::bench_table(results),
    }
}

/// Percentile (0..=100) of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The result of `bench ingest`.
#[derive(Debug, Serialize)]
pub struct IngestResult {
    /// The store's backend: `sqlite` or `postgres`.
    pub store: &'static str,
    /// Requests sent.
    pub requests: usize,
    /// Findings in each request body (JSON lines).
    pub findings_per_request: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// 202 answers.
    pub accepted: usize,
    /// Other answers.
    pub refused: usize,
    /// Durable findings per second over the whole run.
    pub findings_per_second: f64,
    /// Store commits made (group commit shares them).
    pub commits: u64,
    /// Median request latency, ms.
    pub p50_ms: f64,
    /// 99th percentile request latency, ms.
    pub p99_ms: f64,
    /// Resident memory of this process after the run, MiB (server and clients together).
    pub rss_mib: Option<f64>,
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `firebreak bench ingest FILE`: durable HTTP ingest through the real router, intake and a
/// SQLite store (WAL, `synchronous=FULL`) in a temporary directory (or the store at `store_url`),
/// with `concurrency` clients
/// posting one record per request.
pub fn ingest(
    store_url: Option<&str>,
    file: &str,
    requests: usize,
    concurrency: usize,
    per_request: usize,
    rate: f64,
    format: Format,
) -> Exit {
    use std::sync::Arc;

    use crate::config::Config;
    use crate::ingest::{Intake, IntakeConfig};
    use crate::redact::Redacted;
    use crate::server::{AppState, router, serve_http};
    use crate::telemetry::metrics::Metrics;

    let (source, bytes) = match input::read(file) {
        Ok(x) => x,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
    };
    let mut scratch = ParseReport::default();
    let docs = decode(&source, &bytes, &mut scratch);
    let Some(doc) = docs.first() else {
        output::error(&format!("{source}: no JSON record to post"), None);
        return Exit::Usage;
    };
    // `per_request` copies of the record as JSON lines: one POST carries that many findings
    // (Falcosidekick posts one; a forwarder or EventBridge batch posts many).
    let line = serde_json::to_vec(&doc.value).unwrap_or_default();
    let mut body = Vec::with_capacity((line.len() + 1) * per_request.max(1));
    for _ in 0..per_request.max(1) {
        body.extend_from_slice(&line);
        body.push(b'\n');
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let dir = std::env::temp_dir().join(format!("firebreak-bench-{}", ulid::Ulid::new()));
    let result = rt.block_on(async {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let url = store_url.map_or_else(
            || format!("sqlite://{}", dir.join("bench.db").display()),
            str::to_owned,
        );
        let store = Arc::new(
            crate::store::open(&url)
                .await
                .map_err(|e| crate::redact::scrub(&e.to_string()).into_owned())?,
        );
        let backend = store.backend();
        let mut config = Config::default();
        config.server.tokens = vec![crate::config::TokenConfig::plain(
            0,
            Redacted::new("bench".to_owned()),
        )];
        config.store.dedup_window_seconds = 0; // every request is a distinct finding to store
        let metrics = Arc::new(Metrics::new());
        let wake = Arc::new(tokio::sync::Notify::new());
        let (intake, writer) = Intake::start(
            Arc::clone(&store),
            IntakeConfig::from_config(&config, Arc::clone(&metrics)),
            wake,
        );
        let state = AppState::new(intake, store, Arc::clone(&metrics), &config.server);
        state
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let limits = crate::server::HttpLimits {
            max_connections: concurrency.max(1) * 2,
            ..crate::server::HttpLimits::from_config(&crate::config::ServerConfig::default())
        };
        let server = tokio::spawn(serve_http(listener, router(state), limits, async {
            let _ = stop_rx.await;
        }));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("http://{addr}/v1/findings/{}", "auto");
        let body = axum::body::Bytes::from(body);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (client, url, body, next) =
                (client.clone(), url.clone(), body.clone(), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut ok, mut refused) = (0usize, 0usize);
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    if rate > 0.0 {
                        // Paced: request n is due n/rate seconds after the start.
                        #[allow(clippy::cast_precision_loss)]
                        let due = start + Duration::from_secs_f64(n as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .bearer_auth("bench")
                        .body(body.clone())
                        .send()
                        .await;
                    lat.push(t.elapsed());
                    match r {
                        Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => ok += 1,
                        _ => refused += 1,
                    }
                }
                (lat, ok, refused)
            }));
        }
        let mut lat = Vec::new();
        let (mut accepted, mut refused) = (0, 0);
        for t in tasks {
            if let Ok((l, o, r)) = t.await {
                lat.extend(l);
                accepted += o;
                refused += r;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        let _ = server.await;
        let _ = writer.await;
        lat.sort();
        #[allow(clippy::cast_precision_loss)]
        let per_second = if elapsed > 0.0 {
            (accepted * per_request.max(1)) as f64 / elapsed
        } else {
            0.0
        };
        Ok::<IngestResult, String>(IngestResult {
            store: backend,
            requests,
            findings_per_request: per_request.max(1),
            concurrency,
            accepted,
            refused,
            findings_per_second: per_second,
            commits: metrics.commits(),
            p50_ms: percentile(&lat, 50.0).as_secs_f64() * 1e3,
            p99_ms: percentile(&lat, 99.0).as_secs_f64() * 1e3,
            rss_mib: rss_mib(),
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    finish("ingest", result, format, output::ingest_bench)
}

/// The result of `bench action`.
#[derive(Debug, Serialize)]
pub struct ActionResult {
    /// Findings submitted, one at a time.
    pub findings: usize,
    /// Actions that reached the receiver.
    pub applied: usize,
    /// Median time from submitting a finding to the receiver getting its webhook, ms.
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// Median time from submitting to the durable ack of the finding (the ingest share), ms.
    pub ack_p50_ms: f64,
    /// Median time from the durable ack (the finding is received) to its action, ms.
    pub engine_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub engine_p99_ms: f64,
    /// Resident memory with store, intake, engine and receiver up but idle, MiB.
    pub idle_rss_mib: Option<f64>,
    /// Resident memory after the run, MiB.
    pub loaded_rss_mib: Option<f64>,
}

/// `firebreak bench action FILE`: finding-to-first-action latency through the real intake,
/// store and engine worker, with `notify.webhook` posting to a receiver on loopback.
pub fn action(file: &str, findings: usize, format: Format) -> Exit {
    use std::sync::{Arc, RwLock};

    use crate::action::ActionCtx;
    use crate::config::Config;
    use crate::engine::worker::{Worker, WorkerOptions};
    use crate::finding::ParserChoice;
    use crate::ingest::{Intake, IntakeConfig};
    use crate::store::sqlite::SqliteStore;
    use crate::telemetry::metrics::Metrics;

    let (_, bytes) = match input::read(file) {
        Ok(x) => x,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let dir = std::env::temp_dir().join(format!("firebreak-bench-{}", ulid::Ulid::new()));
    let result = rt.block_on(async {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // The local peer: every POST is one applied action.
        let (hit_tx, mut hit_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let app = axum::Router::new().fallback(move || {
            let hit_tx = hit_tx.clone();
            async move {
                let _ = hit_tx.send(Instant::now());
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let peer = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let store = Arc::new(
            SqliteStore::open(&format!("sqlite://{}", dir.join("bench.db").display()))
                .await
                .map_err(|e| e.to_string())?,
        );
        let mut config = Config::default();
        config.store.dedup_window_seconds = 0; // every submission is a new finding to act on
        let yaml = format!(
            "name: bench\nmatch: {{class: [credential-exposure, exposed-dashboard, cryptomining, public-storage, runtime-threat, misconfiguration, vulnerability, other]}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"http://{peer}/hook\"}}\n"
        );
        let (pb, _) = crate::playbook::load_str(std::path::Path::new("bench.yaml"), &yaml)
            .map_err(|ds| format!("{ds:?}"))?;
        let set = Arc::new(RwLock::new(Arc::new(crate::playbook::PlaybookSet::new(
            vec![pb],
        ))));
        let metrics = Arc::new(Metrics::new());
        let wake = Arc::new(tokio::sync::Notify::new());
        let (intake, writer) = Intake::start(
            Arc::clone(&store),
            IntakeConfig::from_config(&config, Arc::clone(&metrics)),
            Arc::clone(&wake),
        );
        let ctx = ActionCtx::from_config(&config).map_err(|e| e.to_string())?;
        let worker = Worker::new(Arc::clone(&store), set, ctx, WorkerOptions::default())
            .with_metrics(Arc::clone(&metrics));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let engine_task = tokio::spawn(async move {
            worker
                .run(wake, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle_rss = rss_mib();

        let mut total = Vec::with_capacity(findings);
        let mut acks = Vec::with_capacity(findings);
        let mut engine = Vec::with_capacity(findings);
        for _ in 0..findings {
            let t = Instant::now();
            let submitted = intake
                .submit("bench".into(), ParserChoice::Auto, &bytes)
                .await
                .map_err(|e| e.to_string())?;
            if submitted.accepted() == 0 {
                return Err(format!("{file}: no finding to act on"));
            }
            let acked = Instant::now();
            acks.push(acked.duration_since(t));
            // Wait for this finding's action (and any extra from a multi-record file).
            for _ in 0..submitted.accepted() {
                match tokio::time::timeout(Duration::from_secs(10), hit_rx.recv()).await {
                    Ok(Some(at)) => {
                        if total.len() < acks.len() {
                            total.push(at.duration_since(t));
                            engine.push(at.saturating_duration_since(acked));
                        }
                    }
                    _ => return Err("no action reached the receiver within 10 s".into()),
                }
            }
        }
        let loaded_rss = rss_mib();
        let _ = stop_tx.send(());
        let _ = engine_task.await;
        drop(intake);
        let _ = writer.await;
        total.sort();
        acks.sort();
        engine.sort();
        Ok::<ActionResult, String>(ActionResult {
            findings,
            applied: total.len(),
            p50_ms: percentile(&total, 50.0).as_secs_f64() * 1e3,
            p99_ms: percentile(&total, 99.0).as_secs_f64() * 1e3,
            ack_p50_ms: percentile(&acks, 50.0).as_secs_f64() * 1e3,
            engine_p50_ms: percentile(&engine, 50.0).as_secs_f64() * 1e3,
            engine_p99_ms: percentile(&engine, 99.0).as_secs_f64() * 1e3,
            idle_rss_mib: idle_rss,
            loaded_rss_mib: loaded_rss,
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    finish("action", result, format, output::action_bench)
}

/// Prints a benchmark's result as JSON or with its table printer; a failure is exit 1.
fn finish<T: Serialize>(
    name: &str,
    result: Result<T, String>,
    format: Format,
    table: fn(&T),
) -> Exit {
    match result {
        Ok(r) => {
            match format {
                Format::Json => output::json(&r),
                Format::Table => table(&r),
            }
            Exit::Ok
        }
        Err(e) => {
            output::error(&format!("{name} benchmark failed: {e}"), None);
            Exit::Failure
        }
    }
}
