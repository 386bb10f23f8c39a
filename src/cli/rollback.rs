//! `firebreak rollback EXECUTION_ID`: undo what an execution applied, from the store named by
//! `store.url`, with the clients `firebreak run` would use.

use std::time::Duration;

use super::{Format, RollbackArgs, output};
use crate::action::ActionCtx;
use crate::config::Config;
use crate::engine::rollback::{self, RollbackOptions};
use crate::error::Exit;
use crate::store::{ExecutionRow, Store};

/// Runs the command. Exit 0 when every reversible step was undone, 1 when an undo failed (or
/// its target was locked), 2 usage: unknown execution, a repeated rollback without `--force`,
/// an unusable store or configuration.
pub fn rollback(args: &RollbackArgs, config: &Config) -> Exit {
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    runtime.block_on(run(args, config))
}

async fn run(args: &RollbackArgs, config: &Config) -> Exit {
    let url = crate::redact::scrub(&config.store.url).into_owned();
    let store = match super::open_store(config).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (finding_id, execution) = match store.execution(&args.execution).await {
        Ok(Some(x)) => x,
        Ok(None) => {
            output::error(
                &format!("no execution {} in the store {url}", args.execution),
                Some(
                    "`firebreak run` prints each execution id next to its playbook \
                     (`--format json`: `execution_id`)",
                ),
            );
            return Exit::Usage;
        }
        Err(e) => {
            output::error(&format!("cannot read the execution: {e}"), None);
            return Exit::Failure;
        }
    };
    match rollback::already_rolled_back(&store, &finding_id, &execution.id).await {
        Ok(false) => {}
        Ok(true) if args.dry_run => output::note(
            "the audit trail already records a rollback of this execution (a real one needs --force)",
        ),
        Ok(true) if args.force => output::note(
            "the audit trail already records a rollback of this execution; rolling back again (--force)",
        ),
        Ok(true) => {
            output::error(
                &format!(
                    "execution {} was already rolled back (see `firebreak audit list --finding {finding_id}`)",
                    execution.id
                ),
                Some(
                    "rolling back is idempotent: run again with --force to undo whatever was applied since",
                ),
            );
            return Exit::Usage;
        }
        Err(e) => {
            output::error(&format!("cannot read the audit trail: {e}"), None);
            return Exit::Failure;
        }
    }
    let ctx = match ActionCtx::from_config(config) {
        Ok(c) => c,
        Err(e) => {
            output::error(&format!("cannot set up the HTTP client: {e}"), None);
            return Exit::Usage;
        }
    };
    // A dry run reads only the store: no cluster or cloud is contacted.
    let ctx = if !args.dry_run && applied_with_prefix(&execution, "kubernetes.") {
        ctx.with_kube(super::kube_clients(config).await)
    } else {
        ctx
    };
    let ctx = if !args.dry_run && applied_with_prefix(&execution, "aws.") {
        ctx.with_aws(super::aws_clients(config).await)
    } else {
        ctx
    };
    let github = if !args.dry_run && applied_with_prefix(&execution, "github.") {
        super::github_client(config, true).await
    } else {
        None
    };
    let ctx = match github {
        Some(gh) => ctx.with_github(gh),
        None => ctx,
    };
    let opts = RollbackOptions {
        by: args.by.clone().unwrap_or_else(default_by),
        dry_run: args.dry_run,
        lease: Duration::from_secs(config.engine.lease_seconds.max(1)),
    };
    let report = match rollback::rollback(&store, &ctx, &finding_id, &execution, &opts).await {
        Ok(r) => r,
        Err(e) => {
            output::error(
                &format!("store {url}: {e}"),
                Some("what was undone before the failure is in the audit trail"),
            );
            return Exit::Failure;
        }
    };
    match args.format {
        Format::Json => output::json(&report),
        Format::Table => output::rollback_table(&report),
    }
    if report.any_failed() {
        Exit::Failure
    } else {
        Exit::Ok
    }
}

/// Whether an applied step of `execution` uses an action of the family `prefix`.
fn applied_with_prefix(execution: &ExecutionRow, prefix: &str) -> bool {
    execution
        .steps
        .iter()
        .any(|s| s.status == "applied" && s.action.starts_with(prefix))
}

/// Who rolls back when `--by` is not given: the login name, else `cli`.
fn default_by() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "cli".into())
}
