//! `firebreak run` and `firebreak playbooks test`: parse, match, plan, apply.

use serde::Serialize;

use super::{Format, RunArgs, input, output};
use std::sync::Arc;
use std::time::Duration;

use crate::action::ActionCtx;
use crate::config::Config;
use crate::engine::worker::WorkerOptions;
use crate::engine::{self, RunOptions, RunReport};
use crate::error::Exit;
use crate::finding::{Finding, ParseReport, ParserChoice, Rejection, parse_input};
use crate::playbook::PlaybookSet;
use crate::playbook::{LoadError, load_dir};
use crate::store::IngestBatch;

/// The JSON document `run --format json` prints.
#[derive(Serialize)]
pub struct RunDocument<'a> {
    /// Whether anything was applied.
    pub dry_run: bool,
    /// Canonical findings.
    pub findings: &'a [Finding],
    /// Rejected records.
    pub rejected: &'a [Rejection],
    /// Executions and non-acting matches.
    #[serde(flatten)]
    pub report: &'a RunReport,
}

/// Runs the command. Exit 0 all good, 1 a step failed or input was rejected, 2 usage/config.
pub fn run(args: &RunArgs, config: &Config) -> Exit {
    let choice = match ParserChoice::from_id(&args.parser) {
        Ok(c) => c,
        Err(e) => {
            output::error(&e, Some("`firebreak parsers list` shows the parsers"));
            return Exit::Usage;
        }
    };
    let set = match load_dir(&args.playbooks) {
        Ok(set) => set,
        Err(err) => {
            let ds = match err {
                LoadError::Invalid(ds) => ds,
                LoadError::Unreadable(d) => vec![d],
            };
            output::diagnostics(&ds, Format::Table);
            output::error(
                "the playbooks have problems; nothing was run",
                Some("fix them, then check with `firebreak playbooks check`"),
            );
            return Exit::Usage;
        }
    };
    let (source, bytes) = match input::read(&args.finding) {
        Ok(x) => x,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
    };
    let parsed = parse_input(&source, &bytes, choice).with_intake(crate::ingest::CLI_INTAKE);
    let ctx = match ActionCtx::from_config(config) {
        Ok(c) => c,
        Err(e) => {
            output::error(&format!("cannot set up the HTTP client: {e}"), None);
            return Exit::Usage;
        }
    };
    let dry_run = args.dry_run || config.engine.dry_run;
    let opts = RunOptions {
        dry_run,
        kill_switch: config.engine.kill_switch,
        ..RunOptions::default()
    };
    if dry_run {
        output::note("dry-run: plans only, nothing will be changed");
    }
    if opts.kill_switch {
        output::note(
            "kill switch is on (engine.kill_switch): findings are matched, every execution is \
             parked before its first step",
        );
    }

    let progress = output::Progress::new(parsed.findings.len());
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let ctx = if super::uses_kubernetes(&set) {
        ctx.with_kube(runtime.block_on(super::kube_clients(config)))
    } else {
        ctx
    };
    let ctx = if super::uses_aws(&set) {
        ctx.with_aws(runtime.block_on(super::aws_clients(config)))
    } else {
        ctx
    };
    let github = super::uses_github(&set)
        .then(|| runtime.block_on(super::github_client(config, true)))
        .flatten();
    let ctx = match github {
        Some(gh) => ctx.with_github(gh),
        None => ctx,
    };
    let store_url = if args.no_store {
        output::note(
            "--no-store: an in-memory store for this run only; nothing is kept, and no store-wide \
             kill switch (`firebreak pause`) applies to it (engine.kill_switch still does)",
        );
        crate::store::MEMORY_URL.to_owned()
    } else {
        config.store.url.clone()
    };
    let recorded = runtime.block_on(recorded_run(
        config,
        &store_url,
        set,
        ctx,
        &parsed,
        opts,
        &|n| (0..n).for_each(|_| progress.tick()),
    ));
    let report = match recorded {
        Ok(report) => report,
        Err(e) => {
            progress.finish();
            output::error(
                &format!("store {}: {e}", crate::redact::scrub(&store_url)),
                Some("set store.url (or FIREBREAK_STORE__URL), or run with --no-store"),
            );
            return Exit::Usage;
        }
    };
    progress.finish();

    let doc = RunDocument {
        dry_run,
        findings: &parsed.findings,
        rejected: &parsed.rejected,
        report: &report,
    };
    match args.format {
        Format::Json => output::json(&doc),
        Format::Table => output::run_table(&doc),
    }
    if report.any_failed() || !parsed.rejected.is_empty() {
        Exit::Failure
    } else {
        Exit::Ok
    }
}

/// Errors of a recorded run: opening the store, or a write to it.
#[derive(Debug, thiserror::Error)]
enum RecordedError {
    #[error("cannot open: {0}")]
    Open(crate::store::StoreError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// Runs through the store at `url` (`store.url`, sharing history, dedup, guards, locks and
/// the audit trail with `firebreak serve`; or an in-memory store), on the engine the service
/// uses.
#[allow(clippy::too_many_arguments)] // the run's inputs, each used once
async fn recorded_run(
    config: &Config,
    url: &str,
    set: PlaybookSet,
    ctx: ActionCtx,
    parsed: &ParseReport,
    run: RunOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<RunReport, RecordedError> {
    // The configured password file belongs to the configured store, not to `--no-store`'s.
    let password_file = (url == config.store.url)
        .then_some(config.store.password_file.as_deref())
        .flatten();
    let store = Arc::new(
        crate::store::open_with(url, password_file)
            .await
            .map_err(RecordedError::Open)?,
    );
    let batch = IngestBatch {
        intake: crate::ingest::CLI_INTAKE.to_owned(),
        findings: parsed.findings.clone(),
        rejected: parsed.rejected.clone(),
        ..IngestBatch::default()
    };
    let opts = WorkerOptions {
        lease: Duration::from_secs(config.engine.lease_seconds.max(1)),
        concurrency: usize::try_from(config.engine.concurrency.max(1)).unwrap_or(1),
        run,
        ..WorkerOptions::default()
    };
    let mut report = engine::recorded::run(
        Arc::clone(&store),
        Arc::new(set),
        ctx,
        batch,
        Duration::from_secs(config.store.dedup_window_seconds),
        opts,
        progress,
    )
    .await?;
    if url == crate::store::MEMORY_URL {
        // The store is gone when the run ends: the report keeps the evidence.
        engine::recorded::inline_evidence(&*store, &mut report).await?;
    } else {
        output::note(&format!(
            "recorded in {} (`firebreak audit list` shows the trail)",
            crate::redact::scrub(url)
        ));
    }
    Ok(report)
}
