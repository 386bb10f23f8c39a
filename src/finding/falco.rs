//! Falco runtime alerts: `json_output` lines and Falcosidekick payloads.
//!
//! Owns the mapping of one Falco alert onto a canonical [`Finding`](super::Finding): priority →
//! severity, rule/tags → class (the [`CLASS_BY_RULE`] and [`CLASS_BY_TAG`] tables, documented in
//! `docs/parsers.md`), `output_fields` → typed resources. Falcosidekick POSTs the same JSON as
//! Falco's `json_output` (plus `uuid`, and custom fields merged into `output_fields`), so one
//! parser reads both. This is the hot path of the runtime sensor: no regex, one clone per event
//! (the record kept in `fields`), nothing echoed from the payload into rejection reasons.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::{kind, opt_obj, opt_str, req_str};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// Falco `json_output` events and Falcosidekick payloads.
pub struct Falco;

/// Rule-name substrings (matched case-insensitively) that decide the class; first match wins.
/// Rules matching nothing here or in [`CLASS_BY_TAG`] are [`Class::RuntimeThreat`]: Falco is a
/// runtime sensor, so shells, sensitive reads, K8s API contact and the like are runtime threats.
pub const CLASS_BY_RULE: &[(&str, Class)] = &[
    ("miner", Class::Cryptomining),
    ("mining", Class::Cryptomining),
    ("stratum", Class::Cryptomining),
    ("aws credentials", Class::CredentialExposure),
    ("cloud credentials", Class::CredentialExposure),
    ("private keys or passwords", Class::CredentialExposure),
];

/// Rule tags (matched case-insensitively, whole tag) that decide the class when no rule-name
/// substring did. `T1496` is MITRE ATT&CK "Resource Hijacking", which Falco's ruleset puts only
/// on its miner rules.
pub const CLASS_BY_TAG: &[(&str, Class)] = &[
    ("T1496", Class::Cryptomining),
    ("cryptomining", Class::Cryptomining),
    ("mitre_cryptomining", Class::Cryptomining),
];

/// `output_fields` keys that may carry the cluster name (Falcosidekick custom fields are merged
/// into `output_fields`), in order of preference.
const CLUSTER_FIELDS: &[&str] = &["k8s.cluster.name", "cluster.name", "cluster"];

/// Keys of which a Falco alert has at least one (`time` is too common to count).
const FALCO_KEYS: &[&str] = &["output", "priority", "rule", "output_fields"];

/// Maps a Falco priority (case-insensitive) onto Firebreak's scale.
#[must_use]
pub fn severity_for_priority(priority: &str) -> Option<Severity> {
    const TABLE: &[(&str, Severity)] = &[
        ("emergency", Severity::Critical),
        ("alert", Severity::Critical),
        ("critical", Severity::Critical),
        ("error", Severity::High),
        ("warning", Severity::Medium),
        ("notice", Severity::Low),
        ("informational", Severity::Info),
        ("info", Severity::Info),
        ("debug", Severity::Info),
    ];
    TABLE
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(priority))
        .map(|&(_, s)| s)
}

/// The class of a Falco rule, from [`CLASS_BY_RULE`], then [`CLASS_BY_TAG`], else runtime-threat.
#[must_use]
pub fn class_for_rule(rule: &str, tags: &[&str]) -> Class {
    let lower = rule.to_ascii_lowercase();
    if let Some(&(_, class)) = CLASS_BY_RULE
        .iter()
        .find(|(needle, _)| lower.contains(needle))
    {
        return class;
    }
    for (tag, class) in CLASS_BY_TAG {
        if tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            return *class;
        }
    }
    Class::RuntimeThreat
}

/// Strips Falco's `"<time>: <Priority> "` prefix from `output`, leaving the message.
/// Both time formats are handled (`13:44:05.478445995` and ISO 8601).
#[must_use]
pub fn strip_output_prefix(output: &str) -> &str {
    let Some((time, rest)) = output.split_once(": ") else {
        return output;
    };
    let looks_like_time = time.len() >= 8
        && time.starts_with(|c: char| c.is_ascii_digit())
        && time
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ':' | '.' | '-' | '+' | 'T' | 'Z'));
    if !looks_like_time {
        return output;
    }
    match rest.split_once(' ') {
        Some((word, text)) if severity_for_priority(word).is_some() => text,
        _ => rest,
    }
}

/// A string from `output_fields`, ignoring null, empty and Falco's `<NA>` placeholder.
fn field<'a>(fields: Option<&'a Value>, key: &str) -> Option<&'a str> {
    fields?
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty() && *s != "<NA>")
}

/// The typed resources an alert is about: pod first (the primary resource), then image, then host.
fn resources(output_fields: Option<&Value>, hostname: Option<&str>) -> Vec<ResourceRef> {
    let mut out = Vec::with_capacity(3);
    if let (Some(name), Some(namespace)) = (
        field(output_fields, "k8s.pod.name"),
        field(output_fields, "k8s.ns.name"),
    ) {
        out.push(ResourceRef::Kubernetes {
            cluster: CLUSTER_FIELDS
                .iter()
                .find_map(|k| field(output_fields, k))
                .map(str::to_owned),
            namespace: Some(namespace.to_owned()),
            kind: "Pod".to_owned(),
            name: name.to_owned(),
            container: field(output_fields, "container.name").map(str::to_owned),
        });
    }
    if let Some(repository) = field(output_fields, "container.image.repository") {
        let reference = match field(output_fields, "container.image.tag") {
            Some(tag) => format!("{repository}:{tag}"),
            None => repository.to_owned(),
        };
        out.push(ResourceRef::Image {
            reference,
            digest: field(output_fields, "container.image.digest").map(str::to_owned),
        });
    }
    if let Some(name) = hostname.filter(|h| !h.is_empty()) {
        out.push(ResourceRef::Host {
            name: name.to_owned(),
        });
    }
    out
}

/// Why a record was rejected: JSON pointer and reason.
type Reject = (String, String);

/// Builds the finding for one Falco record, or says which field is wrong.
fn draft(v: &Value) -> Result<FindingDraft, Reject> {
    if !v.is_object() {
        return Err((
            String::new(),
            format!("expected a Falco alert object, found {}", kind(v)),
        ));
    }
    let rule = req_str(v, "", "rule")?;
    let output = req_str(v, "", "output")?;
    let priority = req_str(v, "", "priority")?;
    let severity = severity_for_priority(priority).ok_or_else(|| {
        (
            "/priority".to_owned(),
            "unknown priority; expected one of Emergency, Alert, Critical, Error, Warning, \
             Notice, Informational, Debug"
                .to_owned(),
        )
    })?;
    let time = req_str(v, "", "time")?;
    let observed_at = DateTime::parse_from_rfc3339(time)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            (
                "/time".to_owned(),
                "not an RFC 3339 timestamp (expected e.g. 2023-05-25T13:44:05.478445995Z)"
                    .to_owned(),
            )
        })?;
    let output_fields = opt_obj(v, "", "output_fields")?;
    let hostname = opt_str(v, "", "hostname")?;
    let source = opt_str(v, "", "source")?;
    let tags: Vec<&str> = match v.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_str().ok_or_else(|| {
                    (
                        format!("/tags/{i}"),
                        format!("expected a string, found {}", kind(t)),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err((
                "/tags".to_owned(),
                format!("expected an array of strings, found {}", kind(other)),
            ));
        }
    };

    let mut labels = BTreeMap::new();
    labels.insert("priority".to_owned(), priority.to_owned());
    if let Some(source) = source.filter(|s| !s.is_empty()) {
        labels.insert("falco.source".to_owned(), source.to_owned());
    }
    if let Some(hostname) = hostname.filter(|h| !h.is_empty()) {
        labels.insert("hostname".to_owned(), hostname.to_owned());
    }
    for tag in &tags {
        labels.insert(format!("tag.{tag}"), "true".to_owned());
    }

    Ok(FindingDraft {
        source: "falco",
        class: class_for_rule(rule, &tags),
        rule: rule.to_owned(),
        title: strip_output_prefix(output).to_owned(),
        severity,
        resources: resources(output_fields, hostname),
        labels,
        fields: Value::Null, // the caller moves the record in
        observed_at,
    })
}

impl Parser for Falco {
    fn id(&self) -> &'static str {
        "falco"
    }

    fn summary(&self) -> &'static str {
        "Falco json_output events and Falcosidekick payloads"
    }

    fn sniff(&self, doc: &Value) -> bool {
        // `output` plus `priority` or `rule`: no other supported format has an `output` key.
        doc.get("output").is_some() && (doc.get("priority").is_some() || doc.get("rule").is_some())
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        let v = &doc.value;
        if v.is_object() && !FALCO_KEYS.iter().any(|k| v.get(*k).is_some()) {
            out.reject(
                doc,
                self.id(),
                "",
                "not a Falco alert: expected the keys output, priority, rule, time and \
                 output_fields",
            );
            return;
        }
        let draft = draft(v).map(|mut d| {
            // The record is not needed again: move it into the finding instead of copying it.
            d.fields = std::mem::take(&mut doc.value);
            d
        });
        out.accept(doc, self.id(), draft);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_onto_severities() {
        for (p, s) in [
            ("Emergency", Severity::Critical),
            ("Alert", Severity::Critical),
            ("Critical", Severity::Critical),
            ("Error", Severity::High),
            ("Warning", Severity::Medium),
            ("Notice", Severity::Low),
            ("Informational", Severity::Info),
            ("Info", Severity::Info),
            ("Debug", Severity::Info),
            ("CRITICAL", Severity::Critical),
        ] {
            assert_eq!(severity_for_priority(p), Some(s), "{p}");
        }
        assert_eq!(severity_for_priority("Severe"), None);
    }

    #[test]
    fn miner_rules_are_cryptomining() {
        for rule in [
            "Detect outbound connections to common miner pool ports",
            "Detect crypto miners using the Stratum protocol",
        ] {
            assert_eq!(class_for_rule(rule, &[]), Class::Cryptomining, "{rule}");
        }
        assert_eq!(
            class_for_rule("Some custom rule", &["mitre_impact", "T1496"]),
            Class::Cryptomining
        );
    }

    #[test]
    fn credential_rules_are_credential_exposure() {
        for rule in ["Find AWS Credentials", "Search Private Keys or Passwords"] {
            assert_eq!(
                class_for_rule(rule, &[]),
                Class::CredentialExposure,
                "{rule}"
            );
        }
    }

    #[test]
    fn other_rules_are_runtime_threats() {
        for rule in [
            "Terminal shell in container",
            "Read sensitive file untrusted",
            "Contact K8S API Server From Container",
        ] {
            assert_eq!(
                class_for_rule(rule, &["mitre_credential_access", "T1555"]),
                Class::RuntimeThreat,
                "{rule}"
            );
        }
    }

    #[test]
    fn output_prefix_is_stripped_in_both_time_formats() {
        assert_eq!(
            strip_output_prefix("13:44:05.478445995: Critical A shell was spawned"),
            "A shell was spawned"
        );
        assert_eq!(
            strip_output_prefix("2023-05-25T13:44:05.478445995+0000: Notice Unexpected x"),
            "Unexpected x"
        );
        assert_eq!(strip_output_prefix("note: keep me"), "note: keep me");
        assert_eq!(strip_output_prefix("no prefix"), "no prefix");
    }
}
