//! Prowler's JSON-OCSF output (`prowler -M json-ocsf`, OCSF Detection Findings).
//!
//! Owns the mapping of one OCSF Detection Finding written by Prowler onto a canonical
//! [`Finding`](super::Finding), and the Prowler check id → class table ([`CLASS_BY_CHECK`]),
//! which the Security Hub parser also uses for Prowler's ASFF output so that one check has one
//! class whichever format carried it. Prowler's ASFF output is read by
//! [`SecurityHub`](super::SecurityHub), not here.
//!
//! Only `FAIL` results become findings; `PASS` and `MANUAL` results and muted (`Suppressed`)
//! ones are counted in [`ParseReport::skipped`].

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::access::{join, kind, opt_obj, req_str};
use super::securityhub::resource_from_arn;
use super::{Class, Document, FindingDraft, ParseReport, Parser, Severity};

/// Prowler JSON-OCSF output (one OCSF Detection Finding per check result).
pub struct Prowler;

/// A Prowler check id pattern: it starts with `prefix` and contains one of `contains`.
#[derive(Debug, Clone, Copy)]
pub struct CheckMatch {
    /// Service prefix of the check id, e.g. `s3_`.
    pub prefix: &'static str,
    /// Words of which the check id must contain one.
    pub contains: &'static [&'static str],
}

/// Prowler check id → class; the first matching row wins. Any other check is
/// [`Class::Misconfiguration`]: Prowler checks report posture, not activity.
pub const CLASS_BY_CHECK: &[(CheckMatch, Class)] = &[
    (
        CheckMatch {
            prefix: "s3_",
            contains: &["public"],
        },
        Class::PublicStorage,
    ),
    // Keys not rotated, unused credentials: a weakened setting; nothing says a key leaked.
    (
        CheckMatch {
            prefix: "iam_",
            contains: &["access_key", "credentials"],
        },
        Class::Misconfiguration,
    ),
];

/// The class of a Prowler check id, from [`CLASS_BY_CHECK`].
#[must_use]
pub fn class_for_check(check: &str) -> Class {
    CLASS_BY_CHECK
        .iter()
        .find(|(m, _)| check.starts_with(m.prefix) && m.contains.iter().any(|w| check.contains(w)))
        .map_or(Class::Misconfiguration, |&(_, c)| c)
}

/// OCSF severity name (any case) → severity. `Fatal` is OCSF's level above critical.
fn severity_for_name(name: &str) -> Option<Severity> {
    const NAMES: &[(&str, Severity)] = &[
        ("informational", Severity::Info),
        ("low", Severity::Low),
        ("medium", Severity::Medium),
        ("high", Severity::High),
        ("critical", Severity::Critical),
        ("fatal", Severity::Critical),
    ];
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, s)| s)
}

/// OCSF `severity_id` → severity (1 informational … 5 critical, 6 fatal).
fn severity_for_id(id: u64) -> Option<Severity> {
    match id {
        1 => Some(Severity::Info),
        2 => Some(Severity::Low),
        3 => Some(Severity::Medium),
        4 => Some(Severity::High),
        5 | 6 => Some(Severity::Critical),
        _ => None,
    }
}

/// A timestamp as Prowler writes it: RFC 3339, or without an offset (Prowler 4 writes local
/// ISO 8601 without one, in UTC).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// Whether `v` is an OCSF finding written by Prowler.
fn is_prowler_ocsf(v: &Value) -> bool {
    v.get("metadata")
        .and_then(|m| m.get("product"))
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .is_some_and(|n| n.eq_ignore_ascii_case("prowler"))
        && v.get("finding_info").is_some_and(Value::is_object)
}

/// Why a record was rejected: JSON pointer and reason.
type Reject = (String, String);

fn draft(v: &Value) -> Result<Option<FindingDraft>, Reject> {
    let status = req_str(v, "", "status_code")?;
    match status {
        "FAIL" => {}
        "PASS" | "MANUAL" => return Ok(None),
        _ => {
            return Err((
                "/status_code".to_owned(),
                "unknown status; expected one of FAIL, PASS, MANUAL".to_owned(),
            ));
        }
    }
    // A muted result: Prowler keeps it in the output, marked suppressed.
    if v.get("status").and_then(Value::as_str) == Some("Suppressed") {
        return Ok(None);
    }
    let metadata = opt_obj(v, "", "metadata")?.ok_or_else(|| {
        (
            "/metadata".to_owned(),
            "required field is missing".to_owned(),
        )
    })?;
    let check = req_str(metadata, "/metadata", "event_code")?;
    let by_id = || {
        v.get("severity_id")
            .and_then(Value::as_u64)
            .and_then(severity_for_id)
    };
    let severity = match v.get("severity") {
        // OCSF's `Unknown`/`Other` names say nothing: `severity_id` may still.
        Some(Value::String(name)) => severity_for_name(name).or_else(by_id).ok_or_else(|| {
            (
                "/severity".to_owned(),
                "unknown severity; expected one of Informational, Low, Medium, High, Critical"
                    .to_owned(),
            )
        })?,
        None | Some(Value::Null) => by_id().ok_or_else(|| {
            (
                "/severity".to_owned(),
                "required field is missing (and severity_id is not 1 to 6)".to_owned(),
            )
        })?,
        Some(other) => {
            return Err((
                "/severity".to_owned(),
                format!("expected a string, found {}", kind(other)),
            ));
        }
    };
    let finding_info = opt_obj(v, "", "finding_info")?;
    let (time, at) = [
        (v.get("event_time"), "/event_time".to_owned()),
        (
            finding_info.and_then(|f| f.get("created_time")),
            "/finding_info/created_time".to_owned(),
        ),
        (v.get("time_dt"), "/time_dt".to_owned()),
    ]
    .into_iter()
    .find_map(|(t, at)| t.map(|t| (t, at)))
    .ok_or_else(|| {
        (
            "/event_time".to_owned(),
            "required field is missing (neither event_time nor finding_info.created_time is set)"
                .to_owned(),
        )
    })?;
    let observed_at = time.as_str().and_then(parse_time).ok_or_else(|| {
        (
            at,
            "not an ISO 8601 timestamp (expected e.g. 2024-06-03T14:15:19.382075)".to_owned(),
        )
    })?;

    let cloud = v.get("cloud");
    let account = cloud
        .and_then(|c| c.get("account"))
        .and_then(|a| a.get("uid"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let region = cloud
        .and_then(|c| c.get("region"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());

    let mut labels = BTreeMap::new();
    let mut resources = Vec::new();
    match v.get("resources") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, r) in items.iter().enumerate() {
                let uid = match r.get("uid") {
                    Some(Value::String(uid)) => uid.as_str(),
                    None | Some(Value::Null) => continue,
                    Some(other) => {
                        return Err((
                            join(&format!("/resources/{i}"), "uid"),
                            format!("expected a string, found {}", kind(other)),
                        ));
                    }
                };
                let r_region = r.get("region").and_then(Value::as_str).or(region);
                resources.extend(resource_from_arn(uid, account, r_region));
                if i == 0 {
                    labels.insert("resource_arn".to_owned(), uid.to_owned());
                    if let Some(t) = r.get("type").and_then(Value::as_str) {
                        labels.insert("resource_type".to_owned(), t.to_owned());
                    }
                }
            }
        }
        Some(other) => {
            return Err((
                "/resources".to_owned(),
                format!("expected an array, found {}", kind(other)),
            ));
        }
    }

    labels.insert("parser".to_owned(), "prowler".to_owned());
    labels.insert("status_code".to_owned(), status.to_owned());
    if let Some(product) = metadata
        .get("product")
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
    {
        labels.insert("product".to_owned(), product.to_owned());
    }
    if let Some(account) = account {
        labels.insert("account".to_owned(), account.to_owned());
    }
    if let Some(region) = region {
        labels.insert("region".to_owned(), region.to_owned());
    }
    if let Some(provider) = cloud
        .and_then(|c| c.get("provider"))
        .and_then(Value::as_str)
    {
        labels.insert("provider".to_owned(), provider.to_owned());
    }

    let title = finding_info
        .and_then(|f| f.get("title"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or(check);
    Ok(Some(FindingDraft {
        source: "prowler",
        rule: check.to_owned(),
        title: title.to_owned(),
        severity,
        class: class_for_check(check),
        resources,
        labels,
        fields: v.clone(),
        observed_at,
    }))
}

impl Parser for Prowler {
    fn id(&self) -> &'static str {
        "prowler"
    }

    fn summary(&self) -> &'static str {
        "Prowler JSON-OCSF output (its ASFF output is read by `securityhub`)"
    }

    fn sniff(&self, doc: &Value) -> bool {
        is_prowler_ocsf(doc)
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        if !doc.value.is_object() {
            out.reject(
                doc,
                self.id(),
                "",
                format!(
                    "expected a Prowler OCSF finding object, found {}",
                    kind(&doc.value)
                ),
            );
            return;
        }
        match draft(&doc.value) {
            Ok(Some(d)) => out.findings.push(d.build()),
            Ok(None) => out.skipped += 1,
            Err((pointer, reason)) => out.reject(doc, self.id(), &pointer, reason),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn checks_map_onto_classes() {
        for (check, class) in [
            ("s3_bucket_level_public_access_block", Class::PublicStorage),
            (
                "s3_account_level_public_access_blocks",
                Class::PublicStorage,
            ),
            ("s3_bucket_policy_public_write_access", Class::PublicStorage),
            ("iam_rotate_access_key_90_days", Class::Misconfiguration),
            ("iam_user_accesskey_unused", Class::Misconfiguration),
            (
                "iam_user_with_temporary_credentials",
                Class::Misconfiguration,
            ),
            ("s3_bucket_default_encryption", Class::Misconfiguration),
            (
                "iam_role_cross_account_readonlyaccess_policy",
                Class::Misconfiguration,
            ),
        ] {
            assert_eq!(class_for_check(check), class, "{check}");
        }
    }

    #[test]
    fn prowler_times_without_offset_are_utc() {
        let t = parse_time("2024-06-03T14:15:19.382075").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-06-03T14:15:19.382075+00:00");
        assert!(parse_time("2024-06-03T14:15:19Z").is_some());
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn ocsf_severities_map() {
        assert_eq!(severity_for_name("High"), Some(Severity::High));
        assert_eq!(severity_for_name("informational"), Some(Severity::Info));
        assert_eq!(severity_for_name("Unknown"), None);
        assert_eq!(severity_for_id(5), Some(Severity::Critical));
        assert_eq!(severity_for_id(0), None);
    }
}
