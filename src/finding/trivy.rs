//! Trivy JSON reports: `trivy fs`, `trivy image`, `trivy config`/`repo` and `trivy k8s`.
//!
//! Owns the mapping of every vulnerability, failed misconfiguration check and secret in a report
//! onto one canonical [`Finding`](super::Finding) each: Trivy severity → severity, check id and
//! title → class ([`misconfig_class`], documented in `docs/parsers-k8s.md`), artifact or
//! Kubernetes resource → typed resources. A report is one document holding many records; a bad
//! record is rejected at its JSON pointer and its siblings are still read.
//!
//! Secrets never leave this module: a secret record loses `Match` and `Code` (the matched line
//! and its context, which hold the secret; Trivy's masking is optional) and gains a
//! `secret_hash` label instead. An AWS access key *id* found in the match is kept as a resource.
//! The Trivy Operator parser reuses the severity, class and secret helpers.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde_json::{Map, Value};

use super::access::{join, kind, opt_str, req_str};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// Trivy JSON reports.
pub struct Trivy;

/// Why a record was rejected: JSON pointer and reason.
pub(super) type Reject = (String, String);

/// Keys of a secret record that carry the secret (or the lines around it): never kept.
pub(super) const SECRET_KEYS: &[&str] = &[
    "Match",
    "match",
    "Code",
    "code",
    "Highlighted",
    "highlighted",
    "Content",
    "content",
];

/// AVD ids (without the `AVD-` prefix) of the S3 checks that report public access: the
/// public-access-block settings, public ACLs and public buckets. The other S3 checks
/// (encryption 0088/0132, logging 0089, versioning 0090) are plain misconfigurations.
pub const PUBLIC_STORAGE_CHECKS: &[&str] = &[
    "AWS-0086", // block-public-acls
    "AWS-0087", // block-public-policy
    "AWS-0091", // ignore-public-acls
    "AWS-0092", // no-public-access-with-acl
    "AWS-0093", // no-public-buckets (restrict_public_buckets)
    "AWS-0094", // specify-public-access-block
];

/// An AWS access key id: not a secret (playbooks need it to find the key), unlike its secret.
#[allow(clippy::expect_used)] // a constant pattern, exercised by the unit tests below
static ACCESS_KEY_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b").expect("access key id pattern compiles")
});

/// Maps a Trivy severity (any case) onto Firebreak's scale. `UNKNOWN` (and the operator's
/// `NONE`) mean Trivy has no rating: info.
#[must_use]
pub fn severity_for(severity: &str) -> Option<Severity> {
    const TABLE: &[(&str, Severity)] = &[
        ("unknown", Severity::Info),
        ("none", Severity::Info),
        ("low", Severity::Low),
        ("medium", Severity::Medium),
        ("high", Severity::High),
        ("critical", Severity::Critical),
    ];
    TABLE
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(severity))
        .map(|&(_, s)| s)
}

/// The required severity field `key` of `v`, mapped.
pub(super) fn severity_at(v: &Value, base: &str, key: &str) -> Result<Severity, Reject> {
    let s = req_str(v, base, key)?;
    severity_for(s).ok_or_else(|| {
        (
            join(base, key),
            "unknown severity; expected one of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL".to_owned(),
        )
    })
}

/// The class of a failed misconfiguration check: dashboard checks are exposed-dashboard, the S3
/// public-access checks ([`PUBLIC_STORAGE_CHECKS`]) public-storage, everything else
/// misconfiguration.
#[must_use]
pub fn misconfig_class(id: &str, avd_id: Option<&str>, title: &str, description: &str) -> Class {
    let is_public_storage = [Some(id), avd_id].into_iter().flatten().any(|i| {
        let bare = i.strip_prefix("AVD-").unwrap_or(i);
        PUBLIC_STORAGE_CHECKS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(bare))
    });
    if is_public_storage {
        return Class::PublicStorage;
    }
    if contains_ignore_case(title, "dashboard")
        || contains_ignore_case(description, "kubernetes-dashboard")
    {
        return Class::ExposedDashboard;
    }
    Class::Misconfiguration
}

/// Case-insensitive substring test for an ASCII needle, without allocating.
pub(super) fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// What a secret record keeps: the record without [`SECRET_KEYS`], the `secret_hash` of its
/// match, and the AWS access key id it names (for AWS rules only).
pub(super) struct CleanSecret {
    /// The record, minus everything that holds the secret.
    pub fields: Value,
    /// `crate::redact::secret_hash` of the match, when there is one.
    pub secret_hash: Option<String>,
    /// An access key id (`AKIA…`/`ASIA…`) from the match or the cause lines of the code.
    pub access_key_id: Option<String>,
}

/// Strips a secret record (Trivy `Secrets[]` or Trivy Operator `report.secrets[]`).
/// `aws_rule` says whether the rule is about AWS keys, the only case where the match is
/// searched for an access key id.
pub(super) fn clean_secret(record: &Map<String, Value>, aws_rule: bool) -> CleanSecret {
    let matched = record
        .get("Match")
        .or_else(|| record.get("match"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty());
    let access_key_id = if aws_rule {
        let cause_lines = record
            .get("Code")
            .and_then(|c| c.get("Lines"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|l| l.get("IsCause").and_then(Value::as_bool) == Some(true))
            .filter_map(|l| l.get("Content").and_then(Value::as_str));
        matched
            .into_iter()
            .chain(cause_lines)
            .find_map(|text| ACCESS_KEY_ID.find(text))
            .map(|m| m.as_str().to_owned())
    } else {
        None
    };
    let fields = record
        .iter()
        .filter(|(k, _)| !SECRET_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<Map<String, Value>>();
    CleanSecret {
        fields: Value::Object(fields),
        secret_hash: matched.map(crate::redact::secret_hash),
        access_key_id,
    }
}

/// Whether a secret rule is about AWS keys (`aws-access-key-id`, `aws-secret-access-key`, …).
pub(super) fn is_aws_rule(rule: &str, category: Option<&str>) -> bool {
    rule.get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("aws-"))
        || category.is_some_and(|c| c.eq_ignore_ascii_case("AWS"))
}

/// The names of a secret record's fields: Trivy's JSON capitalises them (`RuleID`), the
/// Trivy Operator's custom resources do not (`ruleID`). Everything else about a secret record
/// is the same in both, and is read by [`secret_draft`].
pub(super) struct SecretFieldNames {
    pub rule: &'static str,
    pub severity: &'static str,
    pub category: &'static str,
    pub title: &'static str,
}

impl SecretFieldNames {
    /// Trivy JSON reports (`Results[].Secrets[]`).
    pub(super) const TRIVY: SecretFieldNames = SecretFieldNames {
        rule: "RuleID",
        severity: "Severity",
        category: "Category",
        title: "Title",
    };
    /// Trivy Operator `ExposedSecretReport`s (`report.secrets[]`).
    pub(super) const OPERATOR: SecretFieldNames = SecretFieldNames {
        rule: "ruleID",
        severity: "severity",
        category: "category",
        title: "title",
    };
}

/// Builds the finding for one secret record at `at`, whose fields are named by `names`.
///
/// `base(rule, title, severity, class)` makes the parser's draft (its source, resources and
/// labels); this adds what the record says: the AWS access key id it names, its `secret_hash`
/// and `category` labels, and its fields minus [`SECRET_KEYS`] (see [`clean_secret`]).
pub(super) fn secret_draft(
    v: &Value,
    at: &str,
    names: &SecretFieldNames,
    base: impl FnOnce(&str, &str, Severity, Class) -> FindingDraft,
) -> Result<FindingDraft, Reject> {
    let Some(record) = v.as_object() else {
        return Err((
            at.to_owned(),
            format!("expected a secret object, found {}", kind(v)),
        ));
    };
    let rule = req_str(v, at, names.rule)?;
    let severity = severity_at(v, at, names.severity)?;
    let category = opt_str(v, at, names.category)?;
    let title = opt_str(v, at, names.title)?
        .filter(|t| !t.is_empty())
        .unwrap_or(rule);
    let clean = clean_secret(record, is_aws_rule(rule, category));
    let mut d = base(rule, title, severity, Class::CredentialExposure);
    if let Some(id) = clean.access_key_id {
        d.resources.push(ResourceRef::AwsIamAccessKey {
            account: None,
            user: None,
            access_key_id: id,
        });
    }
    if let Some(hash) = clean.secret_hash {
        d.labels.insert("secret_hash".to_owned(), hash);
    }
    if let Some(category) = category.filter(|c| !c.is_empty()) {
        d.labels.insert("category".to_owned(), category.to_owned());
    }
    d.fields = clean.fields;
    Ok(d)
}

/// Parses an optional RFC 3339 timestamp field.
pub(super) fn opt_time(v: &Value, base: &str, key: &str) -> Result<Option<DateTime<Utc>>, Reject> {
    match opt_str(v, base, key)? {
        None | Some("") => Ok(None),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                (
                    join(base, key),
                    "not an RFC 3339 timestamp (expected e.g. 2023-03-24T08:34:18Z)".to_owned(),
                )
            }),
    }
}

/// An optional array field; a present non-array is an error. Null counts as absent (Trivy
/// writes `"Lines": null`).
pub(super) fn opt_array<'a>(v: &'a Value, base: &str, key: &str) -> Result<&'a [Value], Reject> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err((
            join(base, key),
            format!("expected an array, found {}", kind(other)),
        )),
    }
}

/// What every finding of one scanned thing shares.
struct Context<'a> {
    resources: Vec<ResourceRef>,
    labels: BTreeMap<String, String>,
    observed_at: DateTime<Utc>,
    /// Whether the report is a `trivy k8s` report (OS package targets name an image).
    k8s: bool,
    doc: &'a Document,
}

/// `image:tag (debian 10.4)` → `image:tag`: the image an OS-package target of a `trivy k8s`
/// report names.
fn image_of_target(target: &str) -> Option<&str> {
    let (image, rest) = target.rsplit_once(" (")?;
    rest.ends_with(')')
        .then_some(image)
        .filter(|i| !i.is_empty())
}

/// The digest of `repo@sha256:…`, from the first `Metadata.RepoDigests` entry.
fn repo_digest(report: &Value) -> Option<String> {
    let first = report
        .get("Metadata")?
        .get("RepoDigests")?
        .as_array()?
        .first()?
        .as_str()?;
    first.split_once('@').map(|(_, d)| d.to_owned())
}

impl Context<'_> {
    /// Reads every `Results[]` entry under `base` (`""` for a plain report, `/Resources/3` for a
    /// resource of a `trivy k8s` report).
    fn results(&self, holder: &Value, base: &str, out: &mut ParseReport) {
        let results = match opt_array(holder, base, "Results") {
            Ok(r) => r,
            Err((pointer, reason)) => return out.reject(self.doc, "trivy", &pointer, reason),
        };
        for (i, result) in results.iter().enumerate() {
            let at = format!("{base}/Results/{i}");
            if let Err((pointer, reason)) = self.result(result, &at, out) {
                out.reject(self.doc, "trivy", &pointer, reason);
            }
        }
    }

    /// One `Results[]` entry: its vulnerabilities, misconfigurations and secrets. An error in
    /// the entry itself is returned; errors in its records are recorded and skipped.
    fn result(&self, result: &Value, at: &str, out: &mut ParseReport) -> Result<(), Reject> {
        if !result.is_object() {
            return Err((
                at.to_owned(),
                format!("expected a result object, found {}", kind(result)),
            ));
        }
        let target = opt_str(result, at, "Target")?;
        let class = opt_str(result, at, "Class")?;
        let kind_ = opt_str(result, at, "Type")?;
        let vulns = opt_array(result, at, "Vulnerabilities")?;
        let misconfigs = opt_array(result, at, "Misconfigurations")?;
        let secrets = opt_array(result, at, "Secrets")?;

        let mut labels = self.labels.clone();
        for (key, value) in [
            ("trivy.target", target),
            ("trivy.class", class),
            ("trivy.type", kind_),
        ] {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                labels.insert(key.to_owned(), value.to_owned());
            }
        }
        let mut resources = self.resources.clone();
        if self.k8s
            && class == Some("os-pkgs")
            && let Some(image) = target.and_then(image_of_target)
        {
            resources.push(ResourceRef::Image {
                reference: image.to_owned(),
                digest: None,
            });
        }
        let shared = Shared {
            resources: &resources,
            labels: &labels,
            observed_at: self.observed_at,
        };

        for (j, item) in vulns.iter().enumerate() {
            let built = shared.vulnerability(item, &format!("{at}/Vulnerabilities/{j}"));
            self.emit(built, out);
        }
        for (j, item) in misconfigs.iter().enumerate() {
            let built = shared.misconfiguration(item, &format!("{at}/Misconfigurations/{j}"));
            self.emit(built, out);
        }
        for (j, item) in secrets.iter().enumerate() {
            let built = shared.secret(item, &format!("{at}/Secrets/{j}"));
            self.emit(built, out);
        }
        Ok(())
    }

    /// Records what building one record gave: a finding, a skip (`Ok(None)`, a passed check)
    /// or a rejection.
    fn emit(&self, built: Result<Option<FindingDraft>, Reject>, out: &mut ParseReport) {
        match built {
            Ok(Some(draft)) => out.findings.push(draft.build()),
            Ok(None) => out.skipped += 1,
            Err((pointer, reason)) => out.reject(self.doc, "trivy", &pointer, reason),
        }
    }
}

/// What the records of one result share.
struct Shared<'a> {
    resources: &'a [ResourceRef],
    labels: &'a BTreeMap<String, String>,
    observed_at: DateTime<Utc>,
}

impl Shared<'_> {
    fn draft(&self, rule: &str, title: String, severity: Severity, class: Class) -> FindingDraft {
        FindingDraft {
            source: "trivy",
            rule: rule.to_owned(),
            title,
            severity,
            class,
            resources: self.resources.to_vec(),
            labels: self.labels.clone(),
            fields: Value::Null,
            observed_at: self.observed_at,
        }
    }

    fn vulnerability(&self, v: &Value, at: &str) -> Result<Option<FindingDraft>, Reject> {
        expect_object(v, at, "vulnerability")?;
        let id = req_str(v, at, "VulnerabilityID")?;
        let severity = severity_at(v, at, "Severity")?;
        let pkg = opt_str(v, at, "PkgName")?.filter(|p| !p.is_empty());
        let installed = opt_str(v, at, "InstalledVersion")?.filter(|p| !p.is_empty());
        let fixed = opt_str(v, at, "FixedVersion")?.filter(|p| !p.is_empty());
        let title = opt_str(v, at, "Title")?.filter(|p| !p.is_empty());
        let mut d = self.draft(
            id,
            vuln_title(id, pkg, installed, title),
            severity,
            Class::Vulnerability,
        );
        for (key, value) in [
            ("package", pkg),
            ("installed_version", installed),
            ("fixed_version", fixed),
        ] {
            if let Some(value) = value {
                d.labels.insert(key.to_owned(), value.to_owned());
            }
        }
        d.fields = v.clone();
        Ok(Some(d))
    }

    fn misconfiguration(&self, v: &Value, at: &str) -> Result<Option<FindingDraft>, Reject> {
        expect_object(v, at, "misconfiguration")?;
        match opt_str(v, at, "Status")? {
            // Older reports list failures only and carry no status.
            None | Some("FAIL") => {}
            Some("PASS" | "EXCEPTION") => return Ok(None),
            Some(_) => {
                return Err((
                    join(at, "Status"),
                    "unknown status; expected FAIL, PASS or EXCEPTION".to_owned(),
                ));
            }
        }
        let id = req_str(v, at, "ID")?;
        let avd_id = opt_str(v, at, "AVDID")?.filter(|a| !a.is_empty());
        let severity = severity_at(v, at, "Severity")?;
        let title = opt_str(v, at, "Title")?.unwrap_or_default();
        let description = opt_str(v, at, "Description")?.unwrap_or_default();
        let class = misconfig_class(id, avd_id, title, description);
        let shown = if title.is_empty() { id } else { title };
        let mut d = self.draft(id, shown.to_owned(), severity, class);
        if let Some(avd_id) = avd_id {
            d.labels.insert("avd_id".to_owned(), avd_id.to_owned());
        }
        d.fields = v.clone();
        Ok(Some(d))
    }

    fn secret(&self, v: &Value, at: &str) -> Result<Option<FindingDraft>, Reject> {
        secret_draft(
            v,
            at,
            &SecretFieldNames::TRIVY,
            |rule, title, severity, class| self.draft(rule, title.to_owned(), severity, class),
        )
        .map(Some)
    }
}

/// `CVE-… in pkg 1.2.3: title`, leaving out what the record does not say.
pub(super) fn vuln_title(
    id: &str,
    pkg: Option<&str>,
    installed: Option<&str>,
    title: Option<&str>,
) -> String {
    let mut out = id.to_owned();
    if let Some(pkg) = pkg {
        out.push_str(" in ");
        out.push_str(pkg);
        if let Some(installed) = installed {
            out.push(' ');
            out.push_str(installed);
        }
    }
    if let Some(title) = title {
        out.push_str(": ");
        out.push_str(title);
    }
    out
}

/// Rejects a record that is not an object.
pub(super) fn expect_object(v: &Value, at: &str, what: &str) -> Result<(), Reject> {
    if v.is_object() {
        Ok(())
    } else {
        Err((
            at.to_owned(),
            format!("expected a {what} object, found {}", kind(v)),
        ))
    }
}

/// The keys of a `trivy k8s` report that hold scanned resources: `Resources` (current layout),
/// or `Vulnerabilities` and `Misconfigurations` (the layout before Trivy 0.40).
const K8S_RESOURCE_KEYS: &[&str] = &["Resources", "Vulnerabilities", "Misconfigurations"];

impl Trivy {
    fn report(&self, doc: &Document, out: &mut ParseReport) -> Result<(), Reject> {
        let v = &doc.value;
        if !v.is_object() {
            return Err((
                String::new(),
                format!("expected a Trivy report object, found {}", kind(v)),
            ));
        }
        // Reports have no per-record time; `CreatedAt` exists since Trivy 0.50. Without it the
        // finding says "not reported" with the Unix epoch (see docs/parsers-k8s.md).
        let observed_at = opt_time(v, "", "CreatedAt")?.unwrap_or(DateTime::UNIX_EPOCH);
        let mut labels = BTreeMap::new();

        if let Some(cluster) = v.get("ClusterName") {
            let cluster = match cluster {
                Value::String(s) if !s.is_empty() => Some(s.as_str()),
                Value::String(_) | Value::Null => None,
                other => {
                    return Err((
                        "/ClusterName".to_owned(),
                        format!("expected a string, found {}", kind(other)),
                    ));
                }
            };
            if let Some(cluster) = cluster {
                labels.insert("cluster".to_owned(), cluster.to_owned());
            }
            for key in K8S_RESOURCE_KEYS {
                let base = format!("/{key}");
                let resources = opt_array(v, "", key)?;
                for (r, resource) in resources.iter().enumerate() {
                    let at = format!("{base}/{r}");
                    match k8s_resource(resource, &at, cluster) {
                        Ok(res) => Context {
                            resources: vec![res],
                            labels: labels.clone(),
                            observed_at,
                            k8s: true,
                            doc,
                        }
                        .results(resource, &at, out),
                        Err((pointer, reason)) => out.reject(doc, self.id(), &pointer, reason),
                    }
                }
            }
            return Ok(());
        }

        let artifact = opt_str(v, "", "ArtifactName")?.filter(|a| !a.is_empty());
        let artifact_type = opt_str(v, "", "ArtifactType")?.filter(|a| !a.is_empty());
        let mut resources = Vec::new();
        if let (Some(name), Some("container_image")) = (artifact, artifact_type) {
            resources.push(ResourceRef::Image {
                reference: name.to_owned(),
                digest: repo_digest(v),
            });
        }
        if let Some(artifact) = artifact {
            labels.insert("trivy.artifact".to_owned(), artifact.to_owned());
        }
        if let Some(artifact_type) = artifact_type {
            labels.insert("trivy.artifact_type".to_owned(), artifact_type.to_owned());
        }
        Context {
            resources,
            labels,
            observed_at,
            k8s: false,
            doc,
        }
        .results(v, "", out);
        Ok(())
    }
}

/// The Kubernetes object one resource of a `trivy k8s` report is about.
fn k8s_resource(resource: &Value, at: &str, cluster: Option<&str>) -> Result<ResourceRef, Reject> {
    expect_object(resource, at, "resource")?;
    Ok(ResourceRef::Kubernetes {
        cluster: cluster.map(str::to_owned),
        namespace: opt_str(resource, at, "Namespace")?
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        kind: req_str(resource, at, "Kind")?.to_owned(),
        name: req_str(resource, at, "Name")?.to_owned(),
        container: None,
    })
}

impl Parser for Trivy {
    fn id(&self) -> &'static str {
        "trivy"
    }

    fn summary(&self) -> &'static str {
        "Trivy JSON reports (fs, image, config, repo, k8s): vulnerabilities, misconfigurations, secrets"
    }

    fn sniff(&self, doc: &Value) -> bool {
        // `SchemaVersion` with `Results` or `ArtifactName` (fs/image/config/repo), or a
        // `ClusterName` with resources (k8s): no other supported format uses these keys.
        let Some(o) = doc.as_object() else {
            return false;
        };
        (o.contains_key("SchemaVersion")
            && (o.contains_key("Results") || o.contains_key("ArtifactName")))
            || (o.contains_key("ClusterName")
                && K8S_RESOURCE_KEYS.iter().any(|k| o.contains_key(*k)))
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        if let Err((pointer, reason)) = self.report(doc, out) {
            out.reject(doc, self.id(), &pointer, reason);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn severities_map_onto_firebreak_scale() {
        for (s, want) in [
            ("UNKNOWN", Severity::Info),
            ("LOW", Severity::Low),
            ("MEDIUM", Severity::Medium),
            ("HIGH", Severity::High),
            ("CRITICAL", Severity::Critical),
            ("critical", Severity::Critical),
        ] {
            assert_eq!(severity_for(s), Some(want), "{s}");
        }
        assert_eq!(severity_for("SEVERE"), None);
    }

    #[test]
    fn s3_public_checks_are_public_storage_others_misconfiguration() {
        assert_eq!(
            misconfig_class(
                "AVD-AWS-0086",
                Some("AVD-AWS-0086"),
                "S3 Access block should block public ACL",
                ""
            ),
            Class::PublicStorage
        );
        assert_eq!(
            misconfig_class("AWS-0094", None, "", ""),
            Class::PublicStorage
        );
        assert_eq!(
            misconfig_class("AVD-AWS-0088", None, "Unencrypted S3 bucket.", ""),
            Class::Misconfiguration
        );
        assert_eq!(
            misconfig_class("KSV001", None, "Process can elevate its own privileges", ""),
            Class::Misconfiguration
        );
        assert_eq!(
            misconfig_class(
                "AVD-AZU-0041",
                None,
                "Ensure Kubernetes Dashboard Is Disabled",
                ""
            ),
            Class::ExposedDashboard
        );
    }

    #[test]
    fn access_key_id_is_found_only_for_aws_rules() {
        let record = serde_json::json!({"Match": "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"});
        let record = record.as_object().unwrap();
        let clean = clean_secret(record, true);
        assert_eq!(clean.access_key_id.as_deref(), Some("AKIAIOSFODNN7EXAMPLE"));
        assert!(clean.fields.get("Match").is_none());
        assert!(clean.secret_hash.unwrap().starts_with("sha256:"));
        assert_eq!(clean_secret(record, false).access_key_id, None);
        assert!(is_aws_rule("aws-access-key-id", None));
        assert!(is_aws_rule("custom", Some("AWS")));
        assert!(!is_aws_rule("github-pat", Some("GitHub")));
    }

    #[test]
    fn k8s_os_targets_name_their_image() {
        assert_eq!(
            image_of_target("gcr.io/google_samples/gb-redis-follower:v2 (debian 10.4)"),
            Some("gcr.io/google_samples/gb-redis-follower:v2")
        );
        assert_eq!(image_of_target("requirements.txt"), None);
    }
}
