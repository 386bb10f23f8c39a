//! What the SQLite and PostgreSQL stores share that does not touch a database: row sizes of
//! multi-row inserts, the `findings.received` audit detail and its checks, finding and outcome
//! encoding, and the corruption error.

use std::time::Duration;

use serde_json::Value;

use super::{AuditEvent, AuditRecord, PreparedFinding, StepRow, StoreError, audit_detail};
use crate::finding::Finding;

/// Rows per multi-row INSERT: 12 columns × 400 rows stays well below SQLite's limit of 32,766
/// bound variables (and PostgreSQL's of 65,535).
pub(super) const ROWS_PER_INSERT: usize = 400;

/// A row or record the store cannot read back as it wrote it.
pub(super) fn corrupt(table: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.into(),
    }
}

/// A stored finding body back as a [`Finding`].
pub(super) fn decode_finding(body: &str) -> Result<Finding, StoreError> {
    serde_json::from_str(body).map_err(|e| corrupt("findings", e.to_string()))
}

/// `d` in whole milliseconds, the stores' unit of time.
pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A step's outcome as stored: scrubbed like every detail, except its `undo` record, which is
/// kept exactly as the action returned it (rollback must get back what apply saved; actions
/// keep secrets out of it by construction).
pub(super) fn outcome_json(outcome: &Value) -> String {
    let mut o = outcome.clone();
    let undo = o.as_object_mut().and_then(|m| m.remove("undo"));
    crate::redact::scrub_json(&mut o);
    if let (Some(undo), Some(map)) = (undo, o.as_object_mut()) {
        map.insert("undo".into(), undo);
    }
    crate::action::canonical_json(&o)
}

/// The `(seq, id, sha256)` of each finding a `findings.received` record lists; a detail that
/// does not have that shape is reported.
pub(super) fn listed_findings(
    seq: i64,
    detail: &str,
    problems: &mut Vec<String>,
) -> Vec<(i64, String, String)> {
    #[derive(serde::Deserialize)]
    struct Received {
        findings: Vec<Stored>,
    }
    #[derive(serde::Deserialize)]
    struct Stored {
        id: String,
        sha256: String,
    }
    match serde_json::from_str::<Received>(detail) {
        Ok(r) => r
            .findings
            .into_iter()
            .map(|f| (seq, f.id, f.sha256))
            .collect(),
        Err(_) => {
            problems.push(format!(
                "record {seq}: findings.received does not list its findings"
            ));
            Vec::new()
        }
    }
}

/// Rows in the next multi-row INSERT of `remaining` rows: one of a few fixed sizes, so the
/// connection's statement cache holds every shape the ingest path uses (a different row count
/// would otherwise be a new statement for SQLite to prepare on nearly every batch). 13 columns
/// × 256 rows stays well below SQLite's limit of 32,766 bound variables.
pub(super) fn insert_rows(remaining: usize) -> usize {
    [256, 64, 16, 4, 1]
        .into_iter()
        .find(|&n| n <= remaining)
        .unwrap_or(remaining)
}

/// The detail of a batch's `findings.received` record, in canonical JSON (keys sorted, as
/// [`audit_detail`] renders): the intake, and each stored finding's id and body hash in insert
/// order. Built directly rather than through a `Value`, as it is rendered inside the writer.
pub(super) fn received_detail(
    intake: &str,
    dry_run: bool,
    fresh: &[(&Finding, String, PreparedFinding)],
) -> Result<String, StoreError> {
    #[derive(serde::Serialize)]
    struct Received<'a> {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
        findings: Vec<Stored<'a>>,
        intake: std::borrow::Cow<'a, str>,
    }
    #[derive(serde::Serialize)]
    struct Stored<'a> {
        id: &'a str,
        sha256: &'a str,
    }
    serde_json::to_string(&Received {
        dry_run,
        findings: fresh
            .iter()
            .map(|(_, id, p)| Stored {
                id,
                sha256: &p.sha256,
            })
            .collect(),
        intake: crate::redact::scrub(intake),
    })
    .map_err(|e| corrupt("audit", e.to_string()))
}

/// The audit record of a step saved in state `step.status` (`step.planned`, `step.applied`, …),
/// the same on every backend.
pub(super) fn step_event(
    execution_id: &str,
    finding_id: &str,
    step: &StepRow,
    plan_hash: Option<&str>,
) -> AuditEvent {
    AuditEvent {
        kind: format!("step.{}", step.status),
        finding_id: Some(finding_id.to_owned()),
        execution_id: Some(execution_id.to_owned()),
        detail: serde_json::json!({
            "step": step.idx,
            "action": step.action,
            "plan_hash": plan_hash,
            "summary": step.plan.as_ref().and_then(|p| p.get("summary")).cloned(),
            "outcome": step.outcome,
            "error": step.error,
            "attempts": step.attempts,
            "due_at": step.due_at,
        }),
    }
}

/// An appended record's `(seq, at, prev_hash, hash)`.
pub(super) type Link = (i64, i64, String, String);

/// An audit record about to be appended: its detail already scrubbed and rendered.
pub(super) struct Entry {
    pub(super) kind: String,
    pub(super) finding_id: Option<String>,
    pub(super) execution_id: Option<String>,
    pub(super) detail: String,
}

impl From<&AuditEvent> for Entry {
    fn from(e: &AuditEvent) -> Self {
        Entry {
            kind: e.kind.clone(),
            finding_id: e.finding_id.clone(),
            execution_id: e.execution_id.clone(),
            detail: audit_detail(&e.detail),
        }
    }
}

/// The record `entry` became once appended as `link`.
pub(super) fn audit_record(entry: Entry, (seq, at, prev_hash, hash): Link) -> AuditRecord {
    AuditRecord {
        seq,
        at,
        kind: entry.kind,
        finding_id: entry.finding_id,
        execution_id: entry.execution_id,
        detail: serde_json::from_str(&entry.detail).unwrap_or(Value::Null),
        prev_hash,
        hash,
    }
}
