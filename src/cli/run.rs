//! `firebreak run` and `firebreak playbooks test`: parse, match, plan, apply.

use serde::Serialize;

use super::{Format, RunArgs, input, output};
use crate::action::ActionCtx;
use crate::config::Config;
use crate::engine::{self, RunOptions, RunReport};
use crate::error::Exit;
use crate::finding::{Finding, ParserChoice, Rejection, parse_input};
use crate::playbook::{LoadError, load_dir};

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
    let parsed = parse_input(&source, &bytes, choice);
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
        output::note("kill switch is on (engine.kill_switch): no step will be planned or applied");
    }

    let progress = output::Progress::new(parsed.findings.len());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"), None);
            return Exit::Usage;
        }
    };
    let report = runtime.block_on(engine::run(&set, &ctx, &parsed.findings, &opts, &|| {
        progress.tick()
    }));
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
