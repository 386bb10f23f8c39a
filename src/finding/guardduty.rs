//! Amazon GuardDuty findings, in every shape they travel in.
//!
//! Owns the mapping of a GuardDuty finding onto a canonical [`Finding`](super::Finding):
//! severity number → severity, finding type → class (the [`CLASS_BY_TYPE`] table, documented in
//! `docs/parsers.md`), `resource` → typed resources. Accepted shapes:
//! - a bare finding (camelCase, as in an EventBridge `detail`), or a JSON list of them;
//! - the EventBridge envelope (`detail-type: "GuardDuty Finding"`, `source: "aws.guardduty"`);
//! - the `GetFindings` answer (`{"Findings": [...]}`, PascalCase as boto3 and the CLI print it).
//!
//! Every key is looked up in camelCase, then PascalCase. A bad finding inside `Findings` is
//! rejected with its pointer (`/Findings/3/Severity`); its siblings are still parsed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::{join, kind};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// Amazon GuardDuty findings: bare, listed, EventBridge envelope or GetFindings answer.
pub struct GuardDuty;

/// How a [`CLASS_BY_TYPE`] pattern matches a finding type.
#[derive(Debug, Clone, Copy)]
pub enum TypeMatch {
    /// The type starts with the pattern.
    Prefix(&'static str),
    /// The type contains the pattern anywhere.
    Contains(&'static str),
}

impl TypeMatch {
    fn matches(self, finding_type: &str) -> bool {
        match self {
            TypeMatch::Prefix(p) => finding_type.starts_with(p),
            TypeMatch::Contains(p) => finding_type.contains(p),
        }
    }
}

/// Finding type → class; the first matching row wins. Types matching no row are
/// [`Class::Other`].
pub const CLASS_BY_TYPE: &[(TypeMatch, Class)] = &[
    (TypeMatch::Prefix("CryptoCurrency:"), Class::Cryptomining),
    (
        TypeMatch::Prefix("Impact:EC2/BitcoinDomainRequest"),
        Class::Cryptomining,
    ),
    (
        TypeMatch::Contains("InstanceCredentialExfiltration"),
        Class::CredentialExposure,
    ),
    (
        TypeMatch::Prefix("UnauthorizedAccess:IAMUser/"),
        Class::CredentialExposure,
    ),
    (
        TypeMatch::Prefix("CredentialAccess:"),
        Class::CredentialExposure,
    ),
    (
        TypeMatch::Prefix("Policy:Kubernetes/ExposedDashboard"),
        Class::ExposedDashboard,
    ),
    (
        TypeMatch::Prefix("Policy:Kubernetes/KubeflowDashboardExposed"),
        Class::ExposedDashboard,
    ),
    (
        TypeMatch::Prefix("Policy:S3/BucketBlockPublicAccessDisabled"),
        Class::PublicStorage,
    ),
    (
        TypeMatch::Prefix("Policy:S3/BucketAnonymousAccessGranted"),
        Class::PublicStorage,
    ),
    (
        TypeMatch::Prefix("Policy:S3/BucketPublicAccessGranted"),
        Class::PublicStorage,
    ),
    (
        TypeMatch::Prefix("Policy:S3/AccountBlockPublicAccessDisabled"),
        Class::PublicStorage,
    ),
    // Every other Policy finding reports a configuration that weakens security.
    (TypeMatch::Prefix("Policy:"), Class::Misconfiguration),
    // Threat purposes describing activity: something is happening now.
    (TypeMatch::Prefix("Backdoor:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Behavior:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("DefenseEvasion:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Discovery:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Execution:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Exfiltration:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Impact:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("InitialAccess:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("PenTest:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Persistence:"), Class::RuntimeThreat),
    (
        TypeMatch::Prefix("PrivilegeEscalation:"),
        Class::RuntimeThreat,
    ),
    (TypeMatch::Prefix("Recon:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Stealth:"), Class::RuntimeThreat),
    (TypeMatch::Prefix("Trojan:"), Class::RuntimeThreat),
    (
        TypeMatch::Prefix("UnauthorizedAccess:"),
        Class::RuntimeThreat,
    ),
];

/// The class of a GuardDuty finding type, from [`CLASS_BY_TYPE`].
#[must_use]
pub fn class_for_type(finding_type: &str) -> Class {
    CLASS_BY_TYPE
        .iter()
        .find(|(m, _)| m.matches(finding_type))
        .map_or(Class::Other, |&(_, c)| c)
}

/// Maps GuardDuty's 0–10 severity number onto Firebreak's scale (GuardDuty: 1.0–3.9 low,
/// 4.0–6.9 medium, 7.0–8.9 high, 9.0–10.0 critical). `None` outside 0–10.
#[must_use]
pub fn severity_for_score(score: f64) -> Option<Severity> {
    if !(0.0..=10.0).contains(&score) {
        return None;
    }
    Some(if score < 4.0 {
        Severity::Low
    } else if score < 7.0 {
        Severity::Medium
    } else if score < 9.0 {
        Severity::High
    } else {
        Severity::Critical
    })
}

/// Kubernetes workload `type` as GuardDuty writes it (`pods`) → object kind (`Pod`).
fn workload_kind(workload_type: &str) -> String {
    const KINDS: &[(&str, &str)] = &[
        ("pods", "Pod"),
        ("deployments", "Deployment"),
        ("replicasets", "ReplicaSet"),
        ("statefulsets", "StatefulSet"),
        ("daemonsets", "DaemonSet"),
        ("jobs", "Job"),
        ("cronjobs", "CronJob"),
        ("replicationcontrollers", "ReplicationController"),
    ];
    KINDS
        .iter()
        .find(|(plural, _)| plural.eq_ignore_ascii_case(workload_type))
        .map_or_else(|| workload_type.to_owned(), |(_, k)| (*k).to_owned())
}

/// Why a finding was rejected: JSON pointer and reason.
type Reject = (String, String);

/// A JSON object whose keys may be camelCase or PascalCase, with the pointer it sits at.
#[derive(Clone, Copy)]
struct Obj<'a> {
    value: &'a Value,
    pascal: bool,
}

impl<'a> Obj<'a> {
    /// Looks `camel` up, then its PascalCase form. Returns the value and the key that matched.
    fn get(self, camel: &str) -> Option<(&'a Value, String)> {
        if let Some(v) = self.value.get(camel) {
            return Some((v, camel.to_owned()));
        }
        let pascal = pascal_case(camel);
        self.value.get(&pascal).map(|v| (v, pascal))
    }

    /// The key as this record spells it, for pointers to missing fields.
    fn spelled(self, camel: &str) -> String {
        if self.pascal {
            pascal_case(camel)
        } else {
            camel.to_owned()
        }
    }

    /// A non-empty string, or `None` when absent, null or not a string.
    fn str(self, camel: &str) -> Option<&'a str> {
        self.get(camel)
            .and_then(|(v, _)| v.as_str())
            .filter(|s| !s.is_empty())
    }

    /// A required non-empty string.
    fn req_str(self, base: &str, camel: &str) -> Result<&'a str, Reject> {
        match self.get(camel) {
            Some((Value::String(s), _)) if !s.is_empty() => Ok(s),
            Some((Value::String(_), key)) => Err((join(base, &key), "must not be empty".into())),
            Some((other, key)) => Err((
                join(base, &key),
                format!("expected a string, found {}", kind(other)),
            )),
            None => Err((
                join(base, &self.spelled(camel)),
                "required field is missing".into(),
            )),
        }
    }

    /// A required object, with its pointer.
    fn req_obj(self, base: &str, camel: &str) -> Result<(Obj<'a>, String), Reject> {
        match self.get(camel) {
            Some((v @ Value::Object(_), key)) => Ok((
                Obj {
                    value: v,
                    pascal: self.pascal,
                },
                join(base, &key),
            )),
            Some((other, key)) => Err((
                join(base, &key),
                format!("expected an object, found {}", kind(other)),
            )),
            None => Err((
                join(base, &self.spelled(camel)),
                "required field is missing".into(),
            )),
        }
    }

    /// An optional object (absent or null is `None`; anything else not an object is too).
    fn obj(self, camel: &str) -> Option<Obj<'a>> {
        self.get(camel)
            .filter(|(v, _)| v.is_object())
            .map(|(value, _)| Obj {
                value,
                pascal: self.pascal,
            })
    }
}

/// `accountId` → `AccountId`.
fn pascal_case(camel: &str) -> String {
    let mut chars = camel.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Keys only a GuardDuty finding has (camelCase; PascalCase is tried too).
fn looks_like_finding(v: &Value) -> bool {
    if !v.is_object() {
        return false;
    }
    let o = Obj {
        value: v,
        pascal: false,
    };
    o.get("type").is_some_and(|(t, _)| t.is_string())
        && o.get("service").is_some()
        && o.get("resource").is_some()
        // A Security Hub ASFF finding (even one from GuardDuty) has a product ARN.
        && o.get("productArn").is_none()
}

/// Whether `v` is the EventBridge envelope of a GuardDuty finding.
fn is_envelope(v: &Value) -> bool {
    v.get("detail-type").and_then(Value::as_str) == Some("GuardDuty Finding")
        || (v.get("source").and_then(Value::as_str) == Some("aws.guardduty")
            && v.get("detail").is_some())
}

/// The `Findings` array of a GetFindings answer, with its key.
fn findings_array(v: &Value) -> Option<(&Vec<Value>, &'static str)> {
    ["Findings", "findings"]
        .into_iter()
        .find_map(|k| v.get(k).and_then(Value::as_array).map(|a| (a, k)))
}

/// Whether `service.additionalInfo` marks the finding as a GuardDuty-generated sample. In the
/// GetFindings answer `AdditionalInfo` is `{"Value": "<JSON text>", "Type": "default"}`.
fn is_sample(finding: Obj<'_>) -> bool {
    let Some(info) = finding.obj("service").and_then(|s| s.obj("additionalInfo")) else {
        return false;
    };
    if info
        .get("sample")
        .is_some_and(|(v, _)| v == &Value::Bool(true))
    {
        return true;
    }
    info.value
        .get("Value")
        .and_then(Value::as_str)
        .filter(|text| text.contains("sample"))
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .is_some_and(|inner| inner.get("sample") == Some(&Value::Bool(true)))
}

/// The typed resources of a finding's `resource`, by `resourceType`.
fn resources(
    resource: Obj<'_>,
    base: &str,
    account: Option<&str>,
    region: Option<&str>,
) -> Result<Vec<ResourceRef>, Reject> {
    let account = account.map(str::to_owned);
    let region = region.map(str::to_owned);
    let resource_type = resource.req_str(base, "resourceType")?;
    let mut out = Vec::new();
    match resource_type {
        "AccessKey" => {
            let (details, at) = resource.req_obj(base, "accessKeyDetails")?;
            let access_key_id = details.req_str(&at, "accessKeyId")?;
            let user = details.str("userName");
            out.push(ResourceRef::AwsIamAccessKey {
                account: account.clone(),
                user: user.map(str::to_owned),
                access_key_id: access_key_id.to_owned(),
            });
            // Only an IAM user is a user to act on; a role session's "userName" is a role.
            let user_type = details.str("userType");
            if let Some(user) = user.filter(|_| user_type.is_none_or(|t| t == "IAMUser")) {
                out.push(ResourceRef::AwsIamUser {
                    account,
                    user: user.to_owned(),
                });
            }
        }
        "Instance" => {
            let (details, at) = resource.req_obj(base, "instanceDetails")?;
            out.push(ResourceRef::AwsEc2Instance {
                account,
                region,
                instance_id: details.req_str(&at, "instanceId")?.to_owned(),
            });
        }
        "EKSCluster" => {
            let (details, at) = resource.req_obj(base, "eksClusterDetails")?;
            let cluster = details.req_str(&at, "name")?;
            let workload = resource
                .obj("kubernetesDetails")
                .and_then(|k| k.obj("kubernetesWorkloadDetails"));
            match workload.and_then(|w| Some((w, w.str("name")?))) {
                Some((w, name)) => out.push(ResourceRef::Kubernetes {
                    cluster: Some(cluster.to_owned()),
                    namespace: w.str("namespace").map(str::to_owned),
                    kind: w
                        .str("type")
                        .map_or_else(|| "Pod".to_owned(), workload_kind),
                    name: name.to_owned(),
                    container: None,
                }),
                None => out.push(ResourceRef::Kubernetes {
                    cluster: Some(cluster.to_owned()),
                    namespace: None,
                    kind: "Cluster".to_owned(),
                    name: cluster.to_owned(),
                    container: None,
                }),
            }
        }
        "S3Bucket" => {
            let at = join(base, &resource.spelled("s3BucketDetails"));
            let buckets = match resource.get("s3BucketDetails") {
                Some((Value::Array(items), _)) => items,
                Some((other, _)) => {
                    return Err((at, format!("expected an array, found {}", kind(other))));
                }
                None => return Err((at, "required field is missing".into())),
            };
            for (i, bucket) in buckets.iter().enumerate() {
                let b = Obj {
                    value: bucket,
                    pascal: resource.pascal,
                };
                out.push(ResourceRef::AwsS3Bucket {
                    account: account.clone(),
                    region: region.clone(),
                    bucket: b.req_str(&format!("{at}/{i}"), "name")?.to_owned(),
                });
            }
        }
        // Other resource types (Lambda, RDS, ECS, …) carry no typed reference yet; the native
        // record is still in `fields`.
        _ => {}
    }
    Ok(out)
}

/// Builds the finding for one GuardDuty finding object at pointer `base`.
fn draft(v: &Value, base: &str) -> Result<FindingDraft, Reject> {
    if !v.is_object() {
        return Err((
            base.to_owned(),
            format!("expected a GuardDuty finding object, found {}", kind(v)),
        ));
    }
    let pascal = v.get("Type").is_some() || v.get("SchemaVersion").is_some();
    let f = Obj { value: v, pascal };

    let finding_type = f.req_str(base, "type")?;
    let severity = match f.get("severity") {
        Some((Value::Number(n), key)) => {
            n.as_f64().and_then(severity_for_score).ok_or_else(|| {
                (
                    join(base, &key),
                    "expected a number from 0 to 10".to_owned(),
                )
            })?
        }
        Some((other, key)) => {
            return Err((
                join(base, &key),
                format!("expected a number from 0 to 10, found {}", kind(other)),
            ));
        }
        None => {
            return Err((
                join(base, &f.spelled("severity")),
                "required field is missing".into(),
            ));
        }
    };
    let (time, time_key) = match f.get("updatedAt").or_else(|| f.get("createdAt")) {
        Some((Value::String(s), key)) => (s.as_str(), key),
        Some((other, key)) => {
            return Err((
                join(base, &key),
                format!("expected an RFC 3339 timestamp, found {}", kind(other)),
            ));
        }
        None => {
            return Err((
                join(base, &f.spelled("updatedAt")),
                "required field is missing (neither updatedAt nor createdAt is set)".into(),
            ));
        }
    };
    let observed_at = DateTime::parse_from_rfc3339(time)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            (
                join(base, &time_key),
                "not an RFC 3339 timestamp (expected e.g. 2023-03-22T21:28:07.748Z)".to_owned(),
            )
        })?;
    let account = f.str("accountId");
    let region = f.str("region");
    let (resource, resource_at) = f.req_obj(base, "resource")?;
    let resources = resources(resource, &resource_at, account, region)?;

    let mut labels = BTreeMap::new();
    labels.insert("guardduty.type".to_owned(), finding_type.to_owned());
    if let Some(account) = account {
        labels.insert("account".to_owned(), account.to_owned());
    }
    if let Some(region) = region {
        labels.insert("region".to_owned(), region.to_owned());
    }
    if let Some(detector) = f.obj("service").and_then(|s| s.str("detectorId")) {
        labels.insert("guardduty.detector_id".to_owned(), detector.to_owned());
    }
    if is_sample(f) {
        labels.insert("sample".to_owned(), "true".to_owned());
    }

    Ok(FindingDraft {
        source: "guardduty",
        rule: finding_type.to_owned(),
        title: f.str("title").unwrap_or(finding_type).to_owned(),
        severity,
        class: class_for_type(finding_type),
        resources,
        labels,
        fields: v.clone(),
        observed_at,
    })
}

impl GuardDuty {
    fn parse_one(&self, doc: &Document, v: &Value, base: &str, out: &mut ParseReport) {
        out.accept(doc, self.id(), draft(v, base));
    }
}

impl Parser for GuardDuty {
    fn id(&self) -> &'static str {
        "guardduty"
    }

    fn summary(&self) -> &'static str {
        "Amazon GuardDuty findings (bare, EventBridge envelope, GetFindings answer)"
    }

    fn sniff(&self, doc: &Value) -> bool {
        is_envelope(doc)
            || findings_array(doc).is_some_and(|(items, _)| items.iter().any(looks_like_finding))
            || looks_like_finding(doc)
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        let v = &doc.value;
        if is_envelope(v) {
            match v.get("detail") {
                Some(detail @ Value::Object(_)) => self.parse_one(doc, detail, "/detail", out),
                Some(other) => out.reject(
                    doc,
                    self.id(),
                    "/detail",
                    format!("expected the finding object, found {}", kind(other)),
                ),
                None => out.reject(doc, self.id(), "/detail", "required field is missing"),
            }
        } else if let Some((items, key)) = findings_array(v) {
            for (i, item) in items.iter().enumerate() {
                self.parse_one(doc, item, &format!("/{key}/{i}"), out);
            }
        } else if v.is_object()
            && !["type", "severity", "resource", "service", "schemaVersion"]
                .into_iter()
                .any(|k| {
                    (Obj {
                        value: v,
                        pascal: false,
                    })
                    .get(k)
                    .is_some()
                })
        {
            out.reject(
                doc,
                self.id(),
                "",
                "not a GuardDuty finding: expected a finding (type, severity, resource, \
                 service), an EventBridge \"GuardDuty Finding\" event or a GetFindings answer \
                 ({\"Findings\": [...]})",
            );
        } else {
            self.parse_one(doc, v, "", out);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn scores_map_onto_guardduty_bands() {
        for (score, s) in [
            (0.0, Severity::Low),
            (2.0, Severity::Low),
            (3.9, Severity::Low),
            (4.0, Severity::Medium),
            (5.0, Severity::Medium),
            (6.9, Severity::Medium),
            (7.0, Severity::High),
            (8.9, Severity::High),
            (9.0, Severity::Critical),
            (10.0, Severity::Critical),
        ] {
            assert_eq!(severity_for_score(score), Some(s), "{score}");
        }
        assert_eq!(severity_for_score(-1.0), None);
        assert_eq!(severity_for_score(10.5), None);
        assert_eq!(severity_for_score(f64::NAN), None);
    }

    #[test]
    fn types_map_onto_classes() {
        for (t, c) in [
            ("CryptoCurrency:EC2/BitcoinTool.B!DNS", Class::Cryptomining),
            ("CryptoCurrency:Runtime/BitcoinTool.B", Class::Cryptomining),
            (
                "UnauthorizedAccess:IAMUser/TorIPCaller",
                Class::CredentialExposure,
            ),
            (
                "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
                Class::CredentialExposure,
            ),
            (
                "CredentialAccess:Kubernetes/MaliciousIPCaller",
                Class::CredentialExposure,
            ),
            (
                "Policy:Kubernetes/ExposedDashboard",
                Class::ExposedDashboard,
            ),
            (
                "Policy:S3/BucketBlockPublicAccessDisabled",
                Class::PublicStorage,
            ),
            (
                "Policy:S3/BucketAnonymousAccessGranted",
                Class::PublicStorage,
            ),
            ("Policy:S3/BucketPublicAccessGranted", Class::PublicStorage),
            (
                "Policy:IAMUser/RootCredentialUsage",
                Class::Misconfiguration,
            ),
            (
                "Policy:Kubernetes/AnonymousAccessGranted",
                Class::Misconfiguration,
            ),
            (
                "PrivilegeEscalation:Kubernetes/PrivilegedContainer",
                Class::RuntimeThreat,
            ),
            ("Backdoor:EC2/C&CActivity.B!DNS", Class::RuntimeThreat),
            ("Trojan:EC2/DropPoint!DNS", Class::RuntimeThreat),
            (
                "Recon:IAMUser/MaliciousIPCaller.Custom",
                Class::RuntimeThreat,
            ),
            ("UnauthorizedAccess:EC2/SSHBruteForce", Class::RuntimeThreat),
            ("Execution:Runtime/NewBinaryExecuted", Class::RuntimeThreat),
            ("SomethingNew:EC2/Unknown", Class::Other),
        ] {
            assert_eq!(class_for_type(t), c, "{t}");
        }
    }

    #[test]
    fn workload_types_become_kinds() {
        assert_eq!(workload_kind("pods"), "Pod");
        assert_eq!(workload_kind("deployments"), "Deployment");
        assert_eq!(workload_kind("Widget"), "Widget");
    }

    #[test]
    fn keys_are_found_in_either_casing() {
        let v = serde_json::json!({"AccountId": "1", "detectorId": "d"});
        let o = Obj {
            value: &v,
            pascal: true,
        };
        assert_eq!(o.str("accountId"), Some("1"));
        assert_eq!(o.str("detectorId"), Some("d"));
        assert_eq!(o.spelled("severity"), "Severity");
    }
}
