//! The only module that prints. stdout: data (tables, JSON). stderr: notes, errors, progress.

use std::io::{IsTerminal, Write};
use std::path::Path;

use serde::Serialize;

use super::Format;
use super::catalog::{ActionRow, ParserRow};
use super::run::RunDocument;
use crate::config::ConfigError;
use crate::engine::StepStatus;
use crate::error::Diagnostic;
use crate::finding::{Finding, ParseReport, Rejection};
use crate::playbook::Playbook;

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

// Write errors on stdout (e.g. a closed pipe in `| head`) are deliberately ignored: there is
// nobody left to tell, and the exit code still says how the command went.
macro_rules! outln {
    ($($arg:tt)*) => {{ let _ = writeln!(out(), $($arg)*); }};
}

/// Text that already ends in a newline (a generated file), on stdout as it is.
pub fn text(s: &str) {
    let _ = write!(out(), "{s}");
}

/// Pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => outln!("{s}"),
        Err(e) => error(&format!("cannot render JSON: {e}"), None),
    }
}

/// `error: …` and an optional `hint: …` on stderr.
pub fn error(message: &str, hint: Option<&str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {message}");
    if let Some(h) = hint {
        let _ = writeln!(err, "  hint: {h}");
    }
}

/// `note: …` on stderr.
pub fn note(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "note: {message}");
}

/// Configuration problems, each with its location, on stderr.
pub fn config_error(e: &ConfigError) {
    let mut err = std::io::stderr().lock();
    for d in &e.diagnostics {
        let _ = writeln!(err, "error: {d}");
    }
}

/// Playbook diagnostics: text on stderr, or a JSON document on stdout.
pub fn diagnostics(ds: &[Diagnostic], format: Format) {
    match format {
        Format::Json => json(&serde_json::json!({ "ok": false, "problems": ds })),
        Format::Table => {
            let mut err = std::io::stderr().lock();
            for d in ds {
                let _ = writeln!(err, "error: {d}");
            }
            let _ = writeln!(
                err,
                "{} problem{} found",
                ds.len(),
                if ds.len() == 1 { "" } else { "s" }
            );
        }
    }
}

/// The result of a clean `playbooks check`.
pub fn check_ok(dir: &Path, playbooks: &[Playbook], format: Format) {
    match format {
        Format::Json => {
            let names: Vec<serde_json::Value> = playbooks
                .iter()
                .map(|p| serde_json::json!({"name": p.name, "file": p.file, "enabled": p.enabled, "steps": p.steps.len()}))
                .collect();
            json(&serde_json::json!({ "ok": true, "playbooks": names, "problems": [] }));
        }
        Format::Table => {
            for p in playbooks {
                let kinds: Vec<&str> = p.steps.iter().map(|s| s.action.kind()).collect();
                outln!(
                    "ok  {:<28} {}{}",
                    p.name,
                    kinds.join(" -> "),
                    if p.enabled { "" } else { "  (disabled)" }
                );
            }
            note(&format!(
                "{} playbook(s) in {} are valid",
                playbooks.len(),
                dir.display()
            ));
        }
    }
}

/// Findings as a table on stdout.
pub fn findings_table(findings: &[Finding]) {
    if findings.is_empty() {
        return;
    }
    outln!(
        "{:<9} {:<19} {:<10} {:<28} {:<40} RESOURCE",
        "SEVERITY",
        "CLASS",
        "SOURCE",
        "RULE",
        "TITLE"
    );
    for f in findings {
        let resource = f.resources.first().map(|r| r.key()).unwrap_or_default();
        outln!(
            "{:<9} {:<19} {:<10} {:<28} {:<40} {}",
            f.severity.as_str(),
            f.class.as_str(),
            f.source,
            clip(&f.rule, 28),
            clip(&f.title, 40),
            resource
        );
    }
}

/// Rejected records on stderr, one per line.
pub fn rejections(rejected: &[Rejection]) {
    let mut err = std::io::stderr().lock();
    for r in rejected {
        let _ = writeln!(err, "rejected: {r}");
    }
}

/// The counts line after `findings parse`.
pub fn parse_summary(report: &ParseReport) {
    note(&format!(
        "{} finding(s), {} rejected, {} skipped (recognised but not findings)",
        report.findings.len(),
        report.rejected.len(),
        report.skipped
    ));
}

/// `parsers list` table.
pub fn parser_table(rows: &[ParserRow]) {
    outln!("{:<14} SUMMARY", "PARSER");
    for r in rows {
        outln!("{:<14} {}", r.id, r.summary);
    }
}

/// `actions list` table.
pub fn action_table(rows: &[ActionRow]) {
    outln!(
        "{:<34} {:<10} {:<60} PERMISSIONS",
        "ACTION",
        "REVERSIBLE",
        "SUMMARY"
    );
    for r in rows {
        let perms: Vec<String> = r
            .permissions
            .iter()
            .map(|p| format!("{}:{}", p.system, p.grant))
            .collect();
        outln!(
            "{:<34} {:<10} {:<60} {}",
            r.kind,
            if r.reversible { "yes" } else { "no" },
            r.summary,
            perms.join(", ")
        );
    }
}

/// `run` as text: per finding, the playbooks that matched, their steps and plans.
pub fn run_table(doc: &RunDocument<'_>) {
    for f in doc.findings {
        let execs: Vec<_> = doc
            .report
            .executions
            .iter()
            .filter(|e| e.finding_id == f.id.to_string())
            .collect();
        let idle: Vec<_> = doc
            .report
            .not_acted
            .iter()
            .filter(|e| e.finding_id == f.id.to_string())
            .collect();
        outln!(
            "finding {} [{} {}] {}: {}",
            f.id,
            f.severity,
            f.class,
            f.source,
            clip(&f.rule, 80)
        );
        let duplicate = doc
            .report
            .duplicates
            .iter()
            .any(|d| d.finding_id == f.id.to_string());
        if execs.is_empty() && idle.is_empty() && !duplicate {
            outln!("  no playbook matched");
        }
        for e in execs {
            match &e.execution_id {
                Some(id) => outln!("  playbook {} (execution {id})", e.playbook),
                None => outln!("  playbook {}", e.playbook),
            }
            if let Some(approval) = &e.approval {
                outln!("    asks first: {approval}");
            }
            for (i, s) in e.steps.iter().enumerate() {
                let status = match s.status {
                    StepStatus::Planned => "planned",
                    StepStatus::PlannedOnly => "PLANNED ONLY (nothing can apply it here)",
                    StepStatus::Paused => "PAUSED (kill switch)",
                    StepStatus::Applied => "applied",
                    StepStatus::Failed => "FAILED",
                    StepStatus::Skipped => "skipped",
                    StepStatus::Scheduled => "scheduled",
                };
                outln!("    {}. {:<28} {}", i + 1, s.action, status);
                if let Some(due) = s.due_at.and_then(chrono::DateTime::from_timestamp_millis) {
                    outln!(
                        "       due: {} (carried out by `firebreak serve` on the same store)",
                        due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                }
                if let Some(p) = &s.plan {
                    outln!(
                        "       plan: {}{}",
                        p.summary,
                        if p.noop { " (already done)" } else { "" }
                    );
                    for c in &p.changes {
                        outln!("       {} {}", c.op, c.path);
                    }
                    outln!("       plan hash: {}", p.hash);
                }
                if let Some(o) = &s.outcome {
                    outln!("       outcome: {} {}", o.result, o.detail);
                }
                if let Some(err) = &s.error {
                    outln!("       error: {err}");
                }
            }
        }
        if let Some(d) = doc
            .report
            .duplicates
            .iter()
            .find(|d| d.finding_id == f.id.to_string())
        {
            outln!(
                "  duplicate of finding {} (within store.dedup_window_seconds): not acted on again",
                d.original_id
            );
        }
        for n in idle {
            outln!(
                "  playbook {} matched but did not act: {}",
                n.playbook,
                n.reason
            );
            if let Some(approval) = &n.approval {
                outln!("    asks first: {approval}");
            }
        }
    }
    rejections(doc.rejected);
    let steps: Vec<_> = doc
        .report
        .executions
        .iter()
        .flat_map(|e| &e.steps)
        .collect();
    let count = |st: StepStatus| steps.iter().filter(|s| s.status == st).count();
    note(&format!(
        "{} finding(s), {} rejected, {} execution(s): {} step(s) planned, {} applied, {} failed, {} skipped{}{}{}",
        doc.findings.len(),
        doc.rejected.len(),
        doc.report.executions.len(),
        count(StepStatus::Planned),
        count(StepStatus::Applied),
        count(StepStatus::Failed),
        count(StepStatus::Skipped),
        match count(StepStatus::PlannedOnly) {
            0 => String::new(),
            n => format!(", {n} planned only (no client)"),
        },
        match count(StepStatus::Paused) {
            0 => String::new(),
            n => format!(", {n} paused (kill switch)"),
        },
        if doc.dry_run { " (dry-run)" } else { "" }
    ));
}

/// `rollback` as text: one line per step (last step first), then a summary on stderr.
pub fn rollback_table(report: &crate::engine::rollback::RollbackReport) {
    use crate::engine::rollback::RollbackStatus;
    outln!(
        "{} execution {} (playbook {}, finding {})",
        if report.dry_run {
            "would roll back"
        } else {
            "rolled back"
        },
        report.execution_id,
        report.playbook,
        report.finding_id
    );
    for s in &report.steps {
        let status = match s.status {
            RollbackStatus::WouldUndo => "would undo".to_owned(),
            RollbackStatus::Undone => "undone".to_owned(),
            RollbackStatus::Failed => "FAILED".to_owned(),
            RollbackStatus::Locked => "LOCKED".to_owned(),
            RollbackStatus::NotReversible => "not reversible: left as is".to_owned(),
            RollbackStatus::NotApplied => format!(
                "not applied ({}): nothing to undo",
                s.step_status.as_deref().unwrap_or("unknown")
            ),
        };
        outln!("  {}. {:<28} {}", s.idx + 1, s.action, status);
        if let Some(t) = &s.target {
            outln!("       target: {t}");
        }
        if matches!(s.status, RollbackStatus::WouldUndo) {
            match &s.undo {
                Some(undo) => outln!("       undo: {undo}"),
                None => outln!("       undo: nothing recorded (the target was already as wanted)"),
            }
        }
        if let Some(e) = &s.error {
            outln!("       error: {e}");
        }
    }
    let failed = report.count(RollbackStatus::Failed) + report.count(RollbackStatus::Locked);
    if report.dry_run {
        note(&format!(
            "dry-run: {} step(s) would be undone, {} not reversible, {} not applied; nothing was changed or recorded",
            report.count(RollbackStatus::WouldUndo),
            report.count(RollbackStatus::NotReversible),
            report.count(RollbackStatus::NotApplied),
        ));
    } else {
        note(&format!(
            "{} step(s) undone, {} failed, {} not reversible, {} not applied (audited as {})",
            report.count(RollbackStatus::Undone),
            failed,
            report.count(RollbackStatus::NotReversible),
            report.count(RollbackStatus::NotApplied),
            report.by
        ));
    }
}

/// One JSON object per line on stdout.
pub fn json_lines<T: Serialize>(items: &[T]) {
    let mut o = out();
    for item in items {
        if let Ok(s) = serde_json::to_string(item) {
            let _ = writeln!(o, "{s}");
        }
    }
}

/// Audit records as a table.
pub fn audit_table(records: &[crate::store::AuditRecord]) {
    outln!(
        "{:>6}  {:<24}  {:<22}  {:<26}  DETAIL",
        "SEQ",
        "AT",
        "KIND",
        "FINDING"
    );
    for r in records {
        let at = chrono::DateTime::from_timestamp_millis(r.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        outln!(
            "{:>6}  {:<24}  {:<22}  {:<26}  {}",
            r.seq,
            at,
            r.kind,
            r.finding_id.as_deref().unwrap_or("-"),
            clip(&r.detail.to_string(), 100)
        );
    }
}

/// Executions waiting for a person, as a table.
pub fn approvals_table(rows: &[crate::store::PendingApproval]) {
    if rows.is_empty() {
        note("nothing is waiting for approval");
        return;
    }
    outln!(
        "{:<26}  {:<24}  {:<24}  REASON",
        "EXECUTION",
        "SINCE",
        "PLAYBOOK"
    );
    for r in rows {
        let at = chrono::DateTime::from_timestamp_millis(r.created_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        outln!(
            "{:<26}  {:<24}  {:<24}  {}",
            r.execution_id,
            at,
            r.playbook,
            clip(r.reason.as_deref().unwrap_or("-"), 120)
        );
    }
}

/// `approvals show`: what an execution waits for, step by step, and the hash to approve.
pub fn approval_show(row: &crate::store::ApprovalRow) {
    outln!(
        "execution {} (playbook {}, finding {})",
        row.execution_id,
        row.playbook,
        row.finding_id
    );
    outln!(
        "  {} — revision {}, {} approval(s) needed from {}",
        row.state,
        row.revision,
        row.request.min,
        row.request.reviewers.join(", ")
    );
    if let (Some(channel), Some(pr)) = (&row.request.channel, row.pr_number) {
        outln!("  pull request: {channel}#{pr}");
    }
    if let Some(expires) = chrono::DateTime::from_timestamp_millis(row.request.expires_at) {
        outln!(
            "  expires: {}",
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    let targets = crate::engine::approval::targets(&row.request.plans);
    outln!("  changes: {}", targets.join(", "));
    for entry in row.request.plans.as_array().into_iter().flatten() {
        let step = entry["step"].as_u64().unwrap_or(0) + 1;
        let action = entry["action"].as_str().unwrap_or("?");
        match entry.get("plan") {
            Some(plan) => {
                outln!(
                    "  {step}. {action}: {}",
                    plan["summary"].as_str().unwrap_or_default()
                );
                for c in plan["changes"].as_array().into_iter().flatten() {
                    outln!(
                        "       {} {}",
                        c["op"].as_str().unwrap_or_default(),
                        c["path"].as_str().unwrap_or_default()
                    );
                }
            }
            None => outln!(
                "  {step}. {action}: not planned: {}",
                entry["error"]
                    .as_str()
                    .or_else(|| entry["skipped"].as_str())
                    .unwrap_or_default()
            ),
        }
    }
    for v in &row.votes {
        outln!("  {} by {} ({})", v.verdict, v.by, v.via);
    }
    outln!("  plan hash: {}", row.request.plan_hash);
}

/// The result of `audit verify`.
pub fn verify_report(report: &crate::store::VerifyReport) {
    if report.problems.is_empty() {
        outln!("ok: {} audit record(s), chain intact", report.records);
    } else {
        for p in &report.problems {
            outln!("TAMPERED: {p}");
        }
        note(&format!(
            "{} problem(s) in {} record(s)",
            report.problems.len(),
            report.records
        ));
    }
}

/// `bench ingest` results on stdout.
pub fn action_bench(r: &super::bench::ActionResult) {
    let mib = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |m| format!("{m:.1} MiB"));
    outln!(
        "finding -> first action applied: {} findings, {} actions\n  submitted -> applied: p50 {:.2} ms, p99 {:.2} ms\n  durable ack (received) -> applied, the engine's share: p50 {:.2} ms, p99 {:.2} ms\n  submitted -> durable ack: p50 {:.2} ms",
        r.findings,
        r.applied,
        r.p50_ms,
        r.p99_ms,
        r.engine_p50_ms,
        r.engine_p99_ms,
        r.ack_p50_ms
    );
    outln!(
        "RSS: idle {}, after the run {}",
        mib(r.idle_rss_mib),
        mib(r.loaded_rss_mib)
    );
}

/// The result of `bench ingest`.
pub fn ingest_bench(r: &super::bench::IngestResult) {
    outln!(
        "durable HTTP ingest ({}): {} requests of {} finding(s), {} clients\n  {} accepted, {} refused => {:.0} findings/s in {} commits; latency p50 {:.2} ms, p99 {:.2} ms; RSS {} MiB",
        if r.store == "postgres" {
            "PostgreSQL"
        } else {
            "SQLite WAL, synchronous=FULL"
        },
        r.requests,
        r.findings_per_request,
        r.concurrency,
        r.accepted,
        r.refused,
        r.findings_per_second,
        r.commits,
        r.p50_ms,
        r.p99_ms,
        r.rss_mib
            .map_or_else(|| "?".to_owned(), |m| format!("{m:.1}"))
    );
    if cfg!(debug_assertions) {
        note("this is a debug build: run `cargo run --release -- bench …` for real numbers");
    }
}

/// Benchmark results on stdout.
pub fn bench_table(results: &[super::bench::BenchResult]) {
    for r in results {
        outln!(
            "{}\n  {} records: median {:.3} ms, best {:.3} ms over {} runs => {:.0} records/s",
            r.name,
            r.records,
            r.median_seconds * 1e3,
            r.best_seconds * 1e3,
            r.iterations,
            r.per_second
        );
    }
    if cfg!(debug_assertions) {
        note("this is a debug build: run `cargo run --release -- bench …` for real numbers");
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A progress bar on stderr, shown only on a terminal and for long runs.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// A bar for `total` findings (hidden when stderr is not a terminal or total is small).
    #[must_use]
    pub fn new(total: usize) -> Self {
        if total < 50 || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} findings {elapsed}")
        {
            bar.set_style(style);
        }
        Self(Some(bar))
    }

    /// One finding done.
    pub fn tick(&self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
