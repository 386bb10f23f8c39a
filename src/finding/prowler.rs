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

use super::access::{join, kind, opt_obj, opt_str, req_str};
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

/// An ISO 8601 date-time as Prowler writes it: RFC 3339, or without an offset (read as UTC),
/// with `T` or a space between date and time (both are OCSF `datetime_t`).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .into_iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .map(|t| t.and_utc())
        })
}

/// OCSF `timestamp_t` is epoch *milliseconds*; Prowler writes epoch *seconds*. An integer below
/// this is read as seconds (10^11 s is the year 5138), from it on as milliseconds (10^11 ms is
/// 1973-03-03, long before any scanner wrote OCSF).
const EPOCH_MILLIS_FROM: i64 = 100_000_000_000;

/// An epoch integer, in seconds or milliseconds by its magnitude (see [`EPOCH_MILLIS_FROM`]).
fn from_epoch(n: i64) -> Option<DateTime<Utc>> {
    if n < EPOCH_MILLIS_FROM {
        DateTime::from_timestamp(n, 0)
    } else {
        DateTime::from_timestamp_millis(n)
    }
}

/// How a time field is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeKind {
    /// OCSF `timestamp_t`: an integer (epoch seconds or milliseconds).
    Epoch,
    /// OCSF `timestamp_t` that Prowler 4.0–4.4 wrote as an ISO 8601 string before it followed the
    /// schema (`finding_info.created_time`): an integer or such a string.
    EpochOrLegacyText,
    /// OCSF `datetime_t` (the `*_dt` siblings of the `datetime` profile), or Prowler 4's own
    /// `event_time`: an RFC 3339 / ISO 8601 string.
    Text,
}

/// Reads the time field `key` of `v` (at pointer `base`): `None` when absent or null, an error
/// naming the pointer when it has the wrong type or cannot be read.
fn time_field(
    v: &Value,
    base: &str,
    key: &str,
    kind_of: TimeKind,
) -> Result<Option<DateTime<Utc>>, Reject> {
    let at = || join(base, key);
    let epoch = |n: &serde_json::Number| match n.as_i64() {
        Some(n) if n < 0 => Err((at(), "an epoch time must not be negative".to_owned())),
        Some(n) => from_epoch(n)
            .map(Some)
            .ok_or_else(|| (at(), "epoch time out of range".to_owned())),
        None => Err((
            at(),
            "expected a whole number (epoch seconds or milliseconds), found a fraction".to_owned(),
        )),
    };
    let text = |s: &str| {
        parse_time(s).map(Some).ok_or_else(|| {
            (
                at(),
                "not an RFC 3339 / ISO 8601 date-time (expected e.g. 2025-02-14T14:27:03.913874)"
                    .to_owned(),
            )
        })
    };
    match (v.get(key), kind_of) {
        (None | Some(Value::Null), _) => Ok(None),
        (Some(Value::Number(n)), TimeKind::Epoch | TimeKind::EpochOrLegacyText) => epoch(n),
        (Some(Value::String(s)), TimeKind::Text | TimeKind::EpochOrLegacyText) => text(s),
        (Some(other), TimeKind::Epoch) => Err((
            at(),
            format!(
                "expected an integer (OCSF timestamp_t: epoch milliseconds, or seconds as Prowler \
                 writes), found {}",
                kind(other)
            ),
        )),
        (Some(other), TimeKind::EpochOrLegacyText) => Err((
            at(),
            format!(
                "expected an integer (epoch seconds or milliseconds) or an ISO 8601 string, \
                 found {}",
                kind(other)
            ),
        )),
        (Some(other), TimeKind::Text) => Err((
            at(),
            format!(
                "expected an RFC 3339 date-time string, found {}",
                kind(other)
            ),
        )),
    }
}

/// When the result was observed: the first of `time`, `time_dt`, `finding_info.created_time`,
/// `finding_info.created_time_dt` and `event_time` (Prowler 4.0–4.4) that is set. The epoch
/// integer comes before its `*_dt` sibling: it is unambiguous, while Prowler writes `*_dt`
/// without an offset. Every one of them that is present is checked, so a wrong type is
/// rejected at its pointer even when another field would have been used.
fn observed_at(v: &Value, finding_info: Option<&Value>) -> Result<DateTime<Utc>, Reject> {
    let info = "/finding_info";
    let mut candidates = vec![
        time_field(v, "", "time", TimeKind::Epoch)?,
        time_field(v, "", "time_dt", TimeKind::Text)?,
    ];
    if let Some(fi) = finding_info {
        candidates.push(time_field(
            fi,
            info,
            "created_time",
            TimeKind::EpochOrLegacyText,
        )?);
        candidates.push(time_field(fi, info, "created_time_dt", TimeKind::Text)?);
    }
    candidates.push(time_field(v, "", "event_time", TimeKind::Text)?);
    candidates.into_iter().flatten().next().ok_or_else(|| {
        (
            "/time".to_owned(),
            "required field is missing (none of time, time_dt, finding_info.created_time, \
             finding_info.created_time_dt, event_time is set)"
                .to_owned(),
        )
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
    if opt_str(v, "", "status")? == Some("Suppressed") {
        return Ok(None);
    }
    let metadata = opt_obj(v, "", "metadata")?.ok_or_else(|| {
        (
            "/metadata".to_owned(),
            "required field is missing".to_owned(),
        )
    })?;
    let check = req_str(metadata, "/metadata", "event_code")?;
    let severity_id = match v.get("severity_id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.as_u64().and_then(severity_for_id),
        Some(other) => {
            return Err((
                "/severity_id".to_owned(),
                format!("expected an integer, found {}", kind(other)),
            ));
        }
    };
    let severity = match v.get("severity") {
        // OCSF's `Unknown`/`Other` names say nothing: `severity_id` may still.
        Some(Value::String(name)) => severity_for_name(name).or(severity_id).ok_or_else(|| {
            (
                "/severity".to_owned(),
                "unknown severity; expected one of Informational, Low, Medium, High, Critical"
                    .to_owned(),
            )
        })?,
        None | Some(Value::Null) => severity_id.ok_or_else(|| {
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
    let observed_at = observed_at(v, finding_info)?;

    let cloud = opt_obj(v, "", "cloud")?;
    let (account, region, provider) = match cloud {
        Some(c) => {
            let account = match opt_obj(c, "/cloud", "account")? {
                Some(a) => opt_str(a, "/cloud/account", "uid")?,
                None => None,
            };
            (
                account.filter(|s| !s.is_empty()),
                opt_str(c, "/cloud", "region")?.filter(|s| !s.is_empty()),
                opt_str(c, "/cloud", "provider")?,
            )
        }
        None => (None, None, None),
    };

    let mut labels = BTreeMap::new();
    let mut resources = Vec::new();
    match v.get("resources") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, r) in items.iter().enumerate() {
                let base = format!("/resources/{i}");
                if !r.is_object() {
                    return Err((base, format!("expected an object, found {}", kind(r))));
                }
                let Some(uid) = opt_str(r, &base, "uid")? else {
                    continue;
                };
                let r_region = opt_str(r, &base, "region")?.or(region);
                let r_type = opt_str(r, &base, "type")?;
                resources.extend(resource_from_arn(uid, account, r_region));
                if i == 0 {
                    labels.insert("resource_arn".to_owned(), uid.to_owned());
                    if let Some(t) = r_type {
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
    if let Some(product) = opt_obj(metadata, "/metadata", "product")?
        && let Some(name) = opt_str(product, "/metadata/product", "name")?
    {
        labels.insert("product".to_owned(), name.to_owned());
    }
    if let Some(account) = account {
        labels.insert("account".to_owned(), account.to_owned());
    }
    if let Some(region) = region {
        labels.insert("region".to_owned(), region.to_owned());
    }
    if let Some(provider) = provider {
        labels.insert("provider".to_owned(), provider.to_owned());
    }

    let title = match finding_info {
        Some(fi) => opt_str(fi, "/finding_info", "title")?,
        None => None,
    }
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
        assert!(parse_time("2024-06-03 14:15:19.5").is_some());
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn epoch_integers_are_seconds_or_milliseconds_by_magnitude() {
        let s = from_epoch(1_739_539_623).unwrap();
        assert_eq!(s.to_rfc3339(), "2025-02-14T13:27:03+00:00");
        let ms = from_epoch(1_739_539_623_913).unwrap();
        assert_eq!(ms.to_rfc3339(), "2025-02-14T13:27:03.913+00:00");
        // Either side of the boundary.
        assert_eq!(
            from_epoch(EPOCH_MILLIS_FROM - 1).unwrap().to_rfc3339(),
            "5138-11-16T09:46:39+00:00"
        );
        assert_eq!(
            from_epoch(EPOCH_MILLIS_FROM).unwrap().to_rfc3339(),
            "1973-03-03T09:46:40+00:00"
        );
    }

    #[test]
    fn time_fields_check_their_ocsf_type() {
        let v = serde_json::json!({
            "time": 1_739_539_623, "legacy": "2024-06-03T14:15:19", "dt": "2025-02-14T14:27:03",
            "float": 1.5, "neg": -1, "huge": i64::MAX,
        });
        let read = |key, k| time_field(&v, "/x", key, k);
        assert!(read("time", TimeKind::Epoch).unwrap().is_some());
        assert!(read("missing", TimeKind::Epoch).unwrap().is_none());
        assert_eq!(read("legacy", TimeKind::Epoch).unwrap_err().0, "/x/legacy");
        assert!(
            read("legacy", TimeKind::EpochOrLegacyText)
                .unwrap()
                .is_some()
        );
        assert!(read("time", TimeKind::EpochOrLegacyText).unwrap().is_some());
        assert!(read("dt", TimeKind::Text).unwrap().is_some());
        assert_eq!(read("time", TimeKind::Text).unwrap_err().0, "/x/time");
        for bad in ["float", "neg", "huge"] {
            let (at, why) = read(bad, TimeKind::Epoch).unwrap_err();
            assert_eq!(at, format!("/x/{bad}"), "{why}");
        }
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
