//! `firebreak audit list|show|verify|export`, `firebreak approvals list|approve|deny` and
//! `firebreak pause|resume`: the ledger from the command line. They open the store named by
//! `store.url`.

use super::{Format, output};
use crate::config::Config;
use crate::error::Exit;
use crate::store::AnyStore;
use crate::store::{AuditQuery, Store};

/// Opens the store named by `store.url` on a fresh runtime and runs `f` with it. Runtime and
/// open failures are reported here (exit 2), so each command only handles its own work.
fn with_store<F, Fut>(config: &Config, f: F) -> Exit
where
    F: FnOnce(AnyStore) -> Fut,
    Fut: std::future::Future<Output = Exit>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"), None);
            return Exit::Usage;
        }
    };
    rt.block_on(async {
        match super::open_store(config).await {
            Ok(store) => f(store).await,
            Err(code) => code,
        }
    })
}

/// A failed read of the audit trail.
fn read_failed(e: &crate::store::StoreError) -> Exit {
    output::error(&format!("cannot read the audit trail: {e}"), None);
    Exit::Failure
}

/// `audit list`.
pub fn list(
    config: &Config,
    finding: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
    format: Format,
) -> Exit {
    with_store(config, |store| async move {
        match store
            .audit_list(AuditQuery {
                after_seq: after,
                finding_id: finding,
                limit,
            })
            .await
        {
            Ok(records) => {
                match format {
                    Format::Json => output::json(&records),
                    Format::Table => output::audit_table(&records),
                }
                Exit::Ok
            }
            Err(e) => read_failed(&e),
        }
    })
}

/// `audit show SEQ`.
pub fn show(config: &Config, seq: i64) -> Exit {
    with_store(config, |store| async move {
        match store
            .audit_list(AuditQuery {
                after_seq: Some(seq - 1),
                finding_id: None,
                limit: Some(1),
            })
            .await
        {
            Ok(records) if records.first().is_some_and(|r| r.seq == seq) => {
                output::json(&records[0]);
                Exit::Ok
            }
            Ok(_) => {
                output::error(
                    &format!("no audit record {seq}"),
                    Some("`firebreak audit list` shows the records"),
                );
                Exit::Failure
            }
            Err(e) => read_failed(&e),
        }
    })
}

/// `audit evidence SHA256`: the stored bundle as JSON (already redacted when it was stored).
pub fn evidence(config: &Config, sha256: &str) -> Exit {
    let sha256 = sha256.trim().to_owned();
    with_store(config, |store| async move {
        match store.evidence(&sha256).await {
            Ok(Some(bundle)) => {
                output::json(&bundle);
                Exit::Ok
            }
            Ok(None) => {
                output::error(
                    &format!(
                        "no evidence bundle {sha256} in {}",
                        crate::redact::scrub(&config.store.url)
                    ),
                    Some(
                        "the digest is in the capture step's audit record: \
                         `firebreak audit list --finding ID`",
                    ),
                );
                Exit::Failure
            }
            Err(e) => read_failed(&e),
        }
    })
}

/// `audit verify`: exit 0 when the chain is intact, 1 when it is not.
pub fn verify(config: &Config, format: Format) -> Exit {
    with_store(config, |store| async move {
        match store.audit_verify().await {
            Ok(report) => {
                let ok = report.problems.is_empty();
                match format {
                    Format::Json => output::json(&report),
                    Format::Table => output::verify_report(&report),
                }
                if ok { Exit::Ok } else { Exit::Failure }
            }
            Err(e) => read_failed(&e),
        }
    })
}

/// `audit export --jsonl`: every record, one JSON object per line, in chain order.
pub fn export(config: &Config) -> Exit {
    with_store(config, |store| async move {
        match store.audit_list(AuditQuery::default()).await {
            Ok(records) => {
                output::json_lines(&records);
                Exit::Ok
            }
            Err(e) => read_failed(&e),
        }
    })
}

/// Who is at the command line, for the audit trail.
fn cli_user() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// `approvals list`.
pub fn approvals(config: &Config, format: Format) -> Exit {
    with_store(config, |store| async move {
        match store.pending_approvals().await {
            Ok(rows) => {
                match format {
                    Format::Json => output::json(&rows),
                    Format::Table => output::approvals_table(&rows),
                }
                Exit::Ok
            }
            Err(e) => {
                output::error(&format!("cannot read pending approvals: {e}"), None);
                Exit::Failure
            }
        }
    })
}

/// `approvals show EXECUTION`: the request of an execution held for approval.
pub fn approval_show(config: &Config, execution: &str, format: Format) -> Exit {
    with_store(config, |store| async move {
        match store.approval(execution).await {
            Ok(Some(row)) => {
                match format {
                    Format::Json => output::json(&row),
                    Format::Table => output::approval_show(&row),
                }
                Exit::Ok
            }
            Ok(None) => {
                output::error(
                    &format!("execution {execution} has no approval request"),
                    Some("`firebreak approvals list` shows what is waiting"),
                );
                Exit::Failure
            }
            Err(e) => read_failed(&e),
        }
    })
}

/// `approvals approve EXECUTION --reason … [--plan-hash H] [--by NAME]`: a vote for the exact
/// plan of an execution that asks first, or break-glass past the guards of one a guard held.
pub fn approve(
    config: &Config,
    execution: &str,
    reason: &str,
    plan_hash: Option<&str>,
    by: Option<String>,
) -> Exit {
    with_store(config, |store| async move {
        let request = match store.approval(execution).await {
            Ok(r) => r,
            Err(e) => return read_failed(&e),
        };
        let Some(request) = request else {
            return decided(&store, execution, true, reason).await;
        };
        let Some(hash) = plan_hash else {
            output::error(
                &format!(
                    "execution {execution} waits for approval of plan {} (revision {})",
                    request.request.plan_hash, request.revision
                ),
                Some("review it with `firebreak approvals show ID`, then pass --plan-hash"),
            );
            return Exit::Usage;
        };
        let who = by.unwrap_or_else(cli_user);
        let vote = crate::store::Vote {
            by: who.clone(),
            via: format!("cli: {reason}"),
            verdict: "approved".into(),
            at: crate::store::now_ms(),
        };
        match store.vote(execution, hash, &vote).await {
            Ok(crate::store::VoteOutcome::Approved) => {
                output::note(&format!(
                    "approved by {who}: plan {hash} is applied when an engine next claims it, \
                     after it is planned again and found unchanged (audited)"
                ));
                Exit::Ok
            }
            Ok(crate::store::VoteOutcome::Counted { approvals, min }) => {
                output::note(&format!(
                    "approval recorded ({approvals} of {min} needed for plan {hash}; audited)"
                ));
                Exit::Ok
            }
            Ok(crate::store::VoteOutcome::Stale { current }) => {
                output::error(
                    &format!(
                        "plan {hash} is not the current plan of execution {execution}: it is {current}"
                    ),
                    Some("the plan changed: review it again with `firebreak approvals show ID`"),
                );
                Exit::Failure
            }
            Ok(_) => {
                output::error(
                    &format!("execution {execution} is not waiting for approval"),
                    Some("`firebreak approvals list` shows what is waiting"),
                );
                Exit::Failure
            }
            Err(e) => {
                output::error(&format!("cannot record the approval: {e}"), None);
                Exit::Failure
            }
        }
    })
}

/// `approvals deny EXECUTION --reason …`: cancels what is held (exit 1 when nothing is).
pub fn deny(config: &Config, execution: &str, reason: &str) -> Exit {
    with_store(config, |store| async move {
        match store
            .close_approval(execution, &cli_user(), "cli", reason)
            .await
        {
            Ok(true) => {
                output::note("denied: the execution is cancelled (audited)");
                Exit::Ok
            }
            Ok(false) => decided(&store, execution, false, reason).await,
            Err(e) => {
                output::error(&format!("cannot record the decision: {e}"), None);
                Exit::Failure
            }
        }
    })
}

/// Approves or denies an execution a guard held: exit 1 when it is not waiting.
async fn decided<S: Store>(store: &S, execution: &str, approve: bool, reason: &str) -> Exit {
    match store.decide(execution, approve, &cli_user(), reason).await {
        Ok(true) => {
            output::note(if approve {
                "approved: the execution runs when an engine next claims it (audited)"
            } else {
                "denied: the execution is cancelled (audited)"
            });
            Exit::Ok
        }
        Ok(false) => {
            output::error(
                &format!("execution {execution} is not waiting for approval"),
                Some("`firebreak approvals list` shows what is waiting"),
            );
            Exit::Failure
        }
        Err(e) => {
            output::error(&format!("cannot record the decision: {e}"), None);
            Exit::Failure
        }
    }
}

/// `cancel`: an operator stops an unfinished execution for good (audited).
pub fn cancel(config: &Config, execution: &str, reason: &str) -> Exit {
    with_store(config, |store| async move {
        match store.cancel(execution, &cli_user(), reason).await {
            Ok(true) => {
                output::note(
                    "cancelled: no further step runs; a worker still holding it stops at its next \
                     write (audited). What it applied stays: `firebreak rollback` undoes it",
                );
                Exit::Ok
            }
            Ok(false) => {
                output::error(
                    &format!("execution {execution} is unknown or already finished"),
                    Some("`firebreak audit list` shows executions and their states"),
                );
                Exit::Failure
            }
            Err(e) => {
                output::error(&format!("cannot cancel: {e}"), None);
                Exit::Failure
            }
        }
    })
}

/// `pause` / `resume`: sets the kill switch in the store (every engine sharing it obeys).
pub fn kill_switch(config: &Config, on: bool, reason: Option<String>) -> Exit {
    with_store(config, |store| async move {
        let user = cli_user();
        let by = match reason {
            Some(r) => format!("{user}: {r}"),
            None => user,
        };
        match store.set_flag("kill_switch", on, &by).await {
            Ok(()) => {
                output::note(if on {
                    "paused: every engine on this store parks its executions before their next \
                     step until `firebreak resume` (audited)"
                } else {
                    "resumed: parked executions continue (audited)"
                });
                Exit::Ok
            }
            Err(e) => {
                output::error(&format!("cannot set the kill switch: {e}"), None);
                Exit::Failure
            }
        }
    })
}
