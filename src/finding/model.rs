//! The canonical finding and its parts. Built only by parsers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use ulid::Ulid;

/// How bad a finding is, on Firebreak's own scale. Each parser maps its scanner's scale onto it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational; nothing to fix.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Every level, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        Severity::ALL
            .into_iter()
            .find(|l| l.as_str() == lower)
            .ok_or_else(|| {
                let names = Severity::ALL.map(Severity::as_str);
                let mut msg = format!(
                    "unknown severity `{s}`; expected one of {}",
                    names.join(", ")
                );
                if let Some(m) = crate::error::did_you_mean(s, names) {
                    msg.push_str(&format!(" (did you mean `{m}`?)"));
                }
                msg
            })
    }
}

/// Firebreak's cross-scanner taxonomy: one playbook covers a threat whoever saw it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// A credential (access key, token, password) is exposed or used by someone else.
    CredentialExposure,
    /// A management console or dashboard is reachable without authentication.
    ExposedDashboard,
    /// Cryptocurrency mining.
    Cryptomining,
    /// Storage readable or writable by the public.
    PublicStorage,
    /// Suspicious behaviour at runtime (shells, sensitive reads, C2 traffic).
    RuntimeThreat,
    /// A configuration that weakens security.
    Misconfiguration,
    /// A known vulnerability in software.
    Vulnerability,
    /// Anything else.
    Other,
}

impl Class {
    /// Every class, in documentation order.
    pub const ALL: [Class; 8] = [
        Class::CredentialExposure,
        Class::ExposedDashboard,
        Class::Cryptomining,
        Class::PublicStorage,
        Class::RuntimeThreat,
        Class::Misconfiguration,
        Class::Vulnerability,
        Class::Other,
    ];

    /// The kebab-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Class::CredentialExposure => "credential-exposure",
            Class::ExposedDashboard => "exposed-dashboard",
            Class::Cryptomining => "cryptomining",
            Class::PublicStorage => "public-storage",
            Class::RuntimeThreat => "runtime-threat",
            Class::Misconfiguration => "misconfiguration",
            Class::Vulnerability => "vulnerability",
            Class::Other => "other",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Class::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let names = Class::ALL.map(Class::as_str);
                let mut msg = format!("unknown class `{s}`; expected one of {}", names.join(", "));
                if let Some(m) = crate::error::did_you_mean(s, names) {
                    msg.push_str(&format!(" (did you mean `{m}`?)"));
                }
                msg
            })
    }
}

/// A typed reference to something a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum ResourceRef {
    /// A Kubernetes object (a pod, a service, a deployment, a cluster).
    #[serde(rename = "kubernetes")]
    Kubernetes {
        /// Cluster name, when the scanner says which.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
        /// Namespace; absent for cluster-scoped objects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        /// Object kind, e.g. `Pod`.
        kind: String,
        /// Object name.
        name: String,
        /// Container name inside a pod, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// An IAM access key. Never carries the secret.
    #[serde(rename = "aws.iam.access_key")]
    AwsIamAccessKey {
        /// Account id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        /// IAM user name, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The access key id (`AKIA…`/`ASIA…`).
        access_key_id: String,
    },
    /// An IAM user.
    #[serde(rename = "aws.iam.user")]
    AwsIamUser {
        /// Account id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        /// User name.
        user: String,
    },
    /// An S3 bucket.
    #[serde(rename = "aws.s3.bucket")]
    AwsS3Bucket {
        /// Account id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        /// Region, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Bucket name.
        bucket: String,
    },
    /// An EC2 instance.
    #[serde(rename = "aws.ec2.instance")]
    AwsEc2Instance {
        /// Account id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        /// Region, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Instance id.
        instance_id: String,
    },
    /// A GitHub repository, or a file or alert inside one.
    #[serde(rename = "github.repository")]
    GithubRepository {
        /// Owner (user or organisation).
        owner: String,
        /// Repository name.
        repo: String,
        /// File path, when the finding is about one file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Secret-scanning alert number, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alert_number: Option<u64>,
    },
    /// A container image.
    #[serde(rename = "image")]
    Image {
        /// Image reference (`repo:tag`).
        #[serde(rename = "ref")]
        reference: String,
        /// Content digest, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// A host or node seen by a runtime sensor.
    #[serde(rename = "host")]
    Host {
        /// Host name.
        name: String,
    },
}

impl ResourceRef {
    /// The `type` tag, as playbooks name it.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceRef::Kubernetes { .. } => "kubernetes",
            ResourceRef::AwsIamAccessKey { .. } => "aws.iam.access_key",
            ResourceRef::AwsIamUser { .. } => "aws.iam.user",
            ResourceRef::AwsS3Bucket { .. } => "aws.s3.bucket",
            ResourceRef::AwsEc2Instance { .. } => "aws.ec2.instance",
            ResourceRef::GithubRepository { .. } => "github.repository",
            ResourceRef::Image { .. } => "image",
            ResourceRef::Host { .. } => "host",
        }
    }

    /// All resource type names, for validation and hints.
    pub const TYPE_NAMES: [&'static str; 8] = [
        "kubernetes",
        "aws.iam.access_key",
        "aws.iam.user",
        "aws.s3.bucket",
        "aws.ec2.instance",
        "github.repository",
        "image",
        "host",
    ];

    /// A stable key naming exactly this resource, for fingerprints and target locks.
    #[must_use]
    pub fn key(&self) -> String {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        match self {
            ResourceRef::Kubernetes {
                cluster,
                namespace,
                kind,
                name,
                container,
            } => format!(
                "k8s:{}/{}/{kind}/{name}/{}",
                o(cluster),
                o(namespace),
                o(container)
            ),
            ResourceRef::AwsIamAccessKey {
                account,
                access_key_id,
                ..
            } => {
                format!("aws:{}:iam:access-key/{access_key_id}", o(account))
            }
            ResourceRef::AwsIamUser { account, user } => {
                format!("aws:{}:iam:user/{user}", o(account))
            }
            ResourceRef::AwsS3Bucket { bucket, .. } => format!("aws:s3:{bucket}"),
            ResourceRef::AwsEc2Instance {
                account,
                region,
                instance_id,
            } => {
                format!("aws:{}:{}:ec2:{instance_id}", o(account), o(region))
            }
            ResourceRef::GithubRepository {
                owner,
                repo,
                path,
                alert_number,
            } => format!(
                "github:{owner}/{repo}/{}#{}",
                o(path),
                alert_number.map(|n| n.to_string()).unwrap_or_default()
            ),
            ResourceRef::Image { reference, digest } => format!("image:{reference}@{}", o(digest)),
            ResourceRef::Host { name } => format!("host:{name}"),
        }
    }

    /// The value of a selector attribute (`namespace`, `account`, `name`, …) on this resource,
    /// if the resource has that attribute. Used by the matcher's `resource:` selectors.
    #[must_use]
    pub fn attr(&self, name: &str) -> Option<String> {
        match (self, name) {
            (_, "type") => Some(self.type_name().to_owned()),
            (ResourceRef::Kubernetes { cluster, .. }, "cluster") => cluster.clone(),
            (ResourceRef::Kubernetes { namespace, .. }, "namespace") => namespace.clone(),
            (ResourceRef::Kubernetes { kind, .. }, "kind") => Some(kind.clone()),
            (ResourceRef::Kubernetes { name, .. }, "name") => Some(name.clone()),
            (ResourceRef::Kubernetes { container, .. }, "container") => container.clone(),
            (
                ResourceRef::AwsIamAccessKey { account, .. }
                | ResourceRef::AwsIamUser { account, .. }
                | ResourceRef::AwsS3Bucket { account, .. }
                | ResourceRef::AwsEc2Instance { account, .. },
                "account",
            ) => account.clone(),
            (ResourceRef::AwsIamAccessKey { user, .. }, "user") => user.clone(),
            (ResourceRef::AwsIamUser { user, .. }, "user" | "name") => Some(user.clone()),
            (ResourceRef::AwsIamAccessKey { access_key_id, .. }, "access_key_id" | "name") => {
                Some(access_key_id.clone())
            }
            (
                ResourceRef::AwsS3Bucket { region, .. }
                | ResourceRef::AwsEc2Instance { region, .. },
                "region",
            ) => region.clone(),
            (ResourceRef::AwsS3Bucket { bucket, .. }, "bucket" | "name") => Some(bucket.clone()),
            (ResourceRef::AwsEc2Instance { instance_id, .. }, "instance_id" | "name") => {
                Some(instance_id.clone())
            }
            (ResourceRef::GithubRepository { owner, .. }, "owner") => Some(owner.clone()),
            (ResourceRef::GithubRepository { repo, .. }, "repo" | "name") => Some(repo.clone()),
            (ResourceRef::GithubRepository { path, .. }, "path") => path.clone(),
            (ResourceRef::Image { reference, .. }, "ref" | "name") => Some(reference.clone()),
            (ResourceRef::Image { digest, .. }, "digest") => digest.clone(),
            (ResourceRef::Host { name }, "name") => Some(name.clone()),
            _ => None,
        }
    }

    /// Every attribute a `resource:` selector may name.
    pub const ATTRS: [&'static str; 16] = [
        "type",
        "cluster",
        "namespace",
        "kind",
        "name",
        "container",
        "account",
        "user",
        "access_key_id",
        "region",
        "bucket",
        "instance_id",
        "owner",
        "repo",
        "path",
        "ref",
    ];
}

/// The dedup key of a finding: SHA-256 over source, rule and resource keys, hex encoded.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    /// Computes the fingerprint. Resource order does not matter.
    #[must_use]
    pub fn compute(source: &str, rule: &str, resources: &[ResourceRef]) -> Self {
        Self::compute_with(source, rule, resources, None)
    }

    /// Like [`Fingerprint::compute`], with an extra identity (see the identity labels) so
    /// that findings without typed resources (a secret in a local file) are not all merged.
    #[must_use]
    pub fn compute_with(
        source: &str,
        rule: &str,
        resources: &[ResourceRef],
        identity: Option<String>,
    ) -> Self {
        let mut keys: Vec<String> = resources.iter().map(ResourceRef::key).collect();
        keys.sort();
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        h.update([0]);
        h.update(rule.as_bytes());
        for k in keys {
            h.update([0]);
            h.update(k.as_bytes());
        }
        if let Some(id) = identity {
            h.update([1]);
            h.update(id.as_bytes());
        }
        Fingerprint(hex_lower(&h.finalize()))
    }
}

/// Lower-case hex, written straight into the string (the `hex` crate's iterator costs more
/// than the SHA-256 before it, once per finding).
fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Labels that identify *what* a finding is about when it has no typed resource: a leaked
/// secret is the same incident wherever it is found (its hash), else its file or ARN.
const IDENTITY_LABELS: [&str; 3] = ["secret_hash", "file", "resource_arn"];

fn identity_label(labels: &BTreeMap<String, String>) -> Option<String> {
    IDENTITY_LABELS
        .iter()
        .find_map(|k| labels.get(*k).map(|v| format!("{k}={v}")))
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One thing a scanner saw, in Firebreak's canonical shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    /// Unique id of this finding (ULID, sortable by arrival).
    #[schemars(with = "String")]
    pub id: Ulid,
    /// Dedup key: source + rule + resources.
    pub fingerprint: Fingerprint,
    /// Parser id that built it (`falco`, `guardduty`, …).
    pub source: String,
    /// How it arrived: `http:<token-name>`, `sqs:<queue-name>` or `cli` (see
    /// [`crate::ingest`]). Set by the intake after parsing (empty until then, and then not
    /// serialised), stored with the finding and matched by `match.intake`. Not part of the
    /// fingerprint: the same finding arriving by two routes is one finding.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intake: String,
    /// The scanner's own rule or finding type id.
    pub rule: String,
    /// One-line human summary (secrets scrubbed).
    pub title: String,
    /// Severity on Firebreak's scale.
    pub severity: Severity,
    /// Cross-scanner class.
    pub class: Class,
    /// What the finding is about.
    pub resources: Vec<ResourceRef>,
    /// Flat string labels (scanner tags, cluster, account, region…).
    pub labels: BTreeMap<String, String>,
    /// The parsed native record (secrets scrubbed), addressable by playbooks.
    pub fields: Value,
    /// When the scanner observed it.
    pub observed_at: DateTime<Utc>,
}

impl Finding {
    /// The first Kubernetes resource, if any.
    #[must_use]
    pub fn primary_resource(&self) -> Option<&ResourceRef> {
        self.resources.first()
    }
}

/// Longest title kept; scanners sometimes put whole command lines or evidence in it.
pub const MAX_TITLE_CHARS: usize = 1_000;
/// Longest string kept inside `fields`.
pub const MAX_FIELD_CHARS: usize = 16 * 1024;

/// Truncates to `max` characters, marking the cut.
fn cap(mut s: String, max: usize) -> String {
    // No more bytes than `max` means no more characters: the common case costs no scan.
    if s.len() <= max {
        return s;
    }
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push_str("…[truncated]");
    }
    s
}

/// `text` with secrets masked; the same allocation when it is clean (nearly always).
fn scrubbed(text: String) -> String {
    match crate::redact::scrub(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(clean) => clean,
    }
}

fn cap_strings(v: &mut Value, max: usize) {
    match v {
        Value::String(s) if s.len() > max => *s = cap(std::mem::take(s), max),
        Value::Array(items) => items.iter_mut().for_each(|i| cap_strings(i, max)),
        Value::Object(map) => map.values_mut().for_each(|i| cap_strings(i, max)),
        _ => {}
    }
}

/// What a parser fills in; [`FindingDraft::build`] adds the id and fingerprint and scrubs text.
#[derive(Debug, Clone)]
pub struct FindingDraft {
    /// See [`Finding::source`].
    pub source: &'static str,
    /// See [`Finding::rule`].
    pub rule: String,
    /// See [`Finding::title`].
    pub title: String,
    /// See [`Finding::severity`].
    pub severity: Severity,
    /// See [`Finding::class`].
    pub class: Class,
    /// See [`Finding::resources`].
    pub resources: Vec<ResourceRef>,
    /// See [`Finding::labels`].
    pub labels: BTreeMap<String, String>,
    /// See [`Finding::fields`].
    pub fields: Value,
    /// See [`Finding::observed_at`].
    pub observed_at: DateTime<Utc>,
}

impl FindingDraft {
    /// Finishes the finding: scrubs free text and fields, computes the fingerprint, assigns an id.
    #[must_use]
    pub fn build(self) -> Finding {
        let identity = identity_label(&self.labels);
        let mut fields = self.fields;
        crate::redact::scrub_json(&mut fields);
        cap_strings(&mut fields, MAX_FIELD_CHARS);
        let labels = self
            .labels
            .into_iter()
            .map(|(k, v)| (k, scrubbed(v)))
            .collect();
        Finding {
            id: Ulid::new(),
            fingerprint: Fingerprint::compute_with(
                self.source,
                &self.rule,
                &self.resources,
                identity,
            ),
            source: self.source.to_owned(),
            intake: String::new(),
            title: cap(scrubbed(self.title), MAX_TITLE_CHARS),
            rule: self.rule,
            severity: self.severity,
            class: self.class,
            resources: self.resources,
            labels,
            fields,
            observed_at: self.observed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_orders_and_parses() {
        assert!(Severity::Critical > Severity::High);
        assert_eq!("HIGH".parse::<Severity>(), Ok(Severity::High));
        let err = "hgh".parse::<Severity>().err().unwrap_or_default();
        assert!(err.contains("did you mean `high`"), "{err}");
    }

    #[test]
    fn class_parses_with_hint() {
        assert_eq!("cryptomining".parse::<Class>(), Ok(Class::Cryptomining));
        let err = "cryptominig".parse::<Class>().err().unwrap_or_default();
        assert!(err.contains("did you mean `cryptomining`"), "{err}");
    }

    #[test]
    fn fingerprint_ignores_resource_order_but_not_content() {
        let a = ResourceRef::Host { name: "a".into() };
        let b = ResourceRef::Host { name: "b".into() };
        let f1 = Fingerprint::compute("falco", "r", &[a.clone(), b.clone()]);
        let f2 = Fingerprint::compute("falco", "r", &[b.clone(), a.clone()]);
        let f3 = Fingerprint::compute("falco", "r", &[a]);
        assert_eq!(f1, f2);
        assert_ne!(f1, f3);
    }

    #[test]
    fn resource_serialises_with_type_tag() {
        let r = ResourceRef::AwsIamAccessKey {
            account: Some("123456789012".into()),
            user: None,
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["type"], "aws.iam.access_key");
        assert_eq!(r.attr("account").as_deref(), Some("123456789012"));
        assert_eq!(r.attr("namespace"), None);
    }
}
