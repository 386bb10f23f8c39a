//! kube-hunter JSON reports (`kube-hunter --report json`).
//!
//! Owns the mapping of each entry of `vulnerabilities` onto a canonical
//! [`Finding`](super::Finding): `vid` (or the vulnerability name) → rule, `severity` → severity,
//! vid/name/category → class ([`class_for`], documented in `docs/parsers-k8s.md`), `location` →
//! typed resources. `nodes` and `services` are the hunt's inventory, not findings.
//!
//! `evidence` can hold the very credential found (kube-hunter prints the service account token
//! it read), so credential findings drop it and keep only its `secret_hash`; any evidence is
//! scrubbed by [`FindingDraft::build`] and never quoted in a rejection. kube-hunter reports carry
//! no time: `observed_at` is the Unix epoch, meaning "not reported".

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::DateTime;
use serde_json::{Map, Value};

use super::access::{join, opt_str, req_str};
use super::trivy::{Reject, contains_ignore_case, expect_object, opt_array};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// kube-hunter JSON reports.
pub struct KubeHunter;

/// The kube-hunter ids of known-CVE findings (KHV022–KHV028: API server privilege escalation,
/// DoS, ping/reset floods, cluster-scoped access, vulnerable kubectl versions).
pub const CVE_VIDS: &[&str] = &[
    "KHV022", "KHV023", "KHV024", "KHV025", "KHV026", "KHV027", "KHV028",
];

/// The kube-hunter id of "Dashboard Exposed".
pub const DASHBOARD_VID: &str = "KHV029";

/// The class of a kube-hunter vulnerability; first match wins:
/// `KHV029`/"Dashboard Exposed" → exposed-dashboard; [`CVE_VIDS`] → vulnerability; a
/// "Credential Access" category or `KHV050` (service account token read) →
/// credential-exposure; anything else → misconfiguration (an exposed or over-permissive
/// setting, which is what a hunt finds).
#[must_use]
pub fn class_for(vid: Option<&str>, vulnerability: &str, category: &str) -> Class {
    if vid == Some(DASHBOARD_VID) || vulnerability.eq_ignore_ascii_case("Dashboard Exposed") {
        return Class::ExposedDashboard;
    }
    if vid.is_some_and(|v| CVE_VIDS.contains(&v)) {
        return Class::Vulnerability;
    }
    let credential_category = category
        .get(..17)
        .is_some_and(|c| c.eq_ignore_ascii_case("Credential Access"));
    if credential_category || vid == Some("KHV050") {
        return Class::CredentialExposure;
    }
    Class::Misconfiguration
}

/// Maps kube-hunter's severity (`low`, `medium`, `high`, `critical`, any case) onto Firebreak's
/// scale, whose names it shares. Stricter than [`Severity::from_str`], to keep what this parser
/// has always accepted: `info` is not a kube-hunter severity, and padded values (`" high"`),
/// which `from_str` trims, are rejected.
#[must_use]
pub fn severity_for(severity: &str) -> Option<Severity> {
    if severity.trim() != severity {
        return None;
    }
    Severity::from_str(severity)
        .ok()
        .filter(|&s| s != Severity::Info)
}

/// Where a finding is: `host:port` → the host; `Local to Pod (name)` → the pod kube-hunter ran in.
enum Location<'a> {
    Host(&'a str),
    Pod(&'a str),
    Other,
}

fn parse_location(location: &str) -> Location<'_> {
    if let Some(pod) = location
        .strip_prefix("Local to Pod (")
        .and_then(|rest| rest.strip_suffix(')'))
        .filter(|p| !p.is_empty())
    {
        return Location::Pod(pod);
    }
    let host = match location.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => location,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        Location::Host(host)
    } else {
        Location::Other
    }
}

/// The typed resources of one vulnerability.
fn resources(class: Class, location: &str, mentions_dashboard: bool) -> Vec<ResourceRef> {
    match (class, parse_location(location)) {
        (Class::ExposedDashboard, Location::Host(host)) => vec![
            ResourceRef::Kubernetes {
                cluster: Some(host.to_owned()),
                namespace: None,
                kind: "Service".to_owned(),
                name: if mentions_dashboard {
                    "kubernetes-dashboard".to_owned()
                } else {
                    location.to_owned()
                },
                container: None,
            },
            ResourceRef::Host {
                name: host.to_owned(),
            },
        ],
        (_, Location::Host(host)) => vec![ResourceRef::Host {
            name: host.to_owned(),
        }],
        (_, Location::Pod(pod)) => vec![ResourceRef::Kubernetes {
            cluster: None,
            namespace: None,
            kind: "Pod".to_owned(),
            name: pod.to_owned(),
            container: None,
        }],
        (_, Location::Other) => Vec::new(),
    }
}

/// Builds the finding for one entry of `vulnerabilities`.
fn draft(v: &Value, at: &str) -> Result<FindingDraft, Reject> {
    expect_object(v, at, "vulnerability")?;
    let name = req_str(v, at, "vulnerability")?;
    // kube-hunter writes the string "None" for vulnerabilities without an id.
    let vid = opt_str(v, at, "vid")?.filter(|id| !id.is_empty() && *id != "None");
    let severity_text = req_str(v, at, "severity")?;
    let severity = severity_for(severity_text).ok_or_else(|| {
        (
            join(at, "severity"),
            "unknown severity; expected one of low, medium, high".to_owned(),
        )
    })?;
    let location = opt_str(v, at, "location")?.unwrap_or_default();
    let category = opt_str(v, at, "category")?.unwrap_or_default();
    let description = opt_str(v, at, "description")?.unwrap_or_default();
    let evidence = opt_str(v, at, "evidence")?.unwrap_or_default();
    let hunter = opt_str(v, at, "hunter")?.unwrap_or_default();
    let class = class_for(vid, name, category);
    let mentions_dashboard = [location, description, evidence]
        .iter()
        .any(|t| contains_ignore_case(t, "kubernetes-dashboard"));

    let mut labels = BTreeMap::new();
    for (key, value) in [
        ("kube-hunter.location", location),
        ("kube-hunter.category", category),
        ("kube-hunter.hunter", hunter),
    ] {
        if !value.is_empty() {
            labels.insert(key.to_owned(), value.to_owned());
        }
    }
    let fields = if class == Class::CredentialExposure {
        // The evidence of a credential finding is the credential: keep its hash only.
        if !evidence.is_empty() {
            labels.insert(
                "secret_hash".to_owned(),
                crate::redact::secret_hash(evidence),
            );
        }
        let kept: Map<String, Value> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "evidence")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(kept)
    } else {
        v.clone()
    };
    Ok(FindingDraft {
        source: "kube-hunter",
        rule: vid.unwrap_or(name).to_owned(),
        title: name.to_owned(),
        severity,
        class,
        resources: resources(class, location, mentions_dashboard),
        labels,
        fields,
        // Not reported by kube-hunter.
        observed_at: DateTime::UNIX_EPOCH,
    })
}

impl Parser for KubeHunter {
    fn id(&self) -> &'static str {
        "kube-hunter"
    }

    fn summary(&self) -> &'static str {
        "kube-hunter JSON reports"
    }

    fn sniff(&self, doc: &Value) -> bool {
        // A top-level `vulnerabilities` list next to the hunt's `nodes` or `services`.
        doc.get("vulnerabilities").is_some()
            && (doc.get("nodes").is_some() || doc.get("services").is_some())
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        let v = &doc.value;
        if let Err((pointer, reason)) = expect_object(v, "", "kube-hunter report") {
            return out.reject(doc, self.id(), &pointer, reason);
        }
        let items = match opt_array(v, "", "vulnerabilities") {
            Ok(items) => items,
            Err((pointer, reason)) => return out.reject(doc, self.id(), &pointer, reason),
        };
        for (i, item) in items.iter().enumerate() {
            out.accept(
                doc,
                self.id(),
                draft(item, &format!("/vulnerabilities/{i}")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_table() {
        assert_eq!(
            class_for(Some("KHV029"), "Dashboard Exposed", "Remote Code Execution"),
            Class::ExposedDashboard
        );
        assert_eq!(
            class_for(
                Some("KHV027"),
                "kubectl Vulnerable To CVE-2019-1002101",
                "Remote Code Execution"
            ),
            Class::Vulnerability
        );
        assert_eq!(
            class_for(
                None,
                "Access to pod's secrets",
                "Credential Access // Access container service account"
            ),
            Class::CredentialExposure
        );
        assert_eq!(
            class_for(
                Some("KHV005"),
                "Access to API using service account token",
                "Discovery // Access the K8S API Server"
            ),
            Class::Misconfiguration
        );
    }

    #[test]
    fn severities_are_kube_hunters_four() {
        assert_eq!(severity_for("low"), Some(Severity::Low));
        assert_eq!(severity_for("Medium"), Some(Severity::Medium));
        assert_eq!(severity_for("HIGH"), Some(Severity::High));
        assert_eq!(severity_for("critical"), Some(Severity::Critical));
        for rejected in ["info", "Info", "", " high", "high\n", "severe"] {
            assert_eq!(severity_for(rejected), None, "{rejected:?}");
        }
    }

    #[test]
    fn locations_become_hosts_or_pods() {
        assert!(matches!(
            parse_location("10.0.1.1:10255"),
            Location::Host("10.0.1.1")
        ));
        assert!(matches!(
            parse_location("[fd00::1]:443"),
            Location::Host("fd00::1")
        ));
        assert!(matches!(
            parse_location("Local to Pod (kube-hunter-5pmjs)"),
            Location::Pod("kube-hunter-5pmjs")
        ));
        assert!(matches!(parse_location("somewhere else"), Location::Other));
    }
}
