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

/// `firebreak bench parse FILE`: decode + parse + build (scrub, fingerprint) of N records.
pub fn parse(file: &str, records: usize, iterations: u32, format: Format) -> Exit {
    let (source, bytes) = match input::read(file) {
        Ok(x) => x,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
    };
    let data = match replicate(&source, &bytes, records) {
        Ok(d) => d,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
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
    let result = time(
        &format!("parse {source} ({parser}, auto-detect, one thread)"),
        iterations,
        || {
            let r = parse_input("bench", &data, ParserChoice::Auto);
            r.findings.len() + r.skipped
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
    let (source, bytes) = match input::read(file) {
        Ok(x) => x,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
    };
    let data = match replicate(&source, &bytes, records) {
        Ok(d) => d,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
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
