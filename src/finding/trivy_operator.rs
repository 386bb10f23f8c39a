//! Trivy Operator reports: the `aquasecurity.github.io/v1alpha1` custom resources
//! (`VulnerabilityReport`, `ConfigAuditReport`, `ExposedSecretReport`, `RbacAssessmentReport`
//! and their cluster-scoped and infra variants), one object or a list, in JSON or YAML (the
//! decoder turns `kubectl get -o yaml` into the same values).
//!
//! Owns the mapping of each report entry onto a canonical [`Finding`](super::Finding); the
//! scanned workload comes from the operator's `trivy-operator.resource.*` labels. Severities,
//! check classes and secret handling are Trivy's ([`super::trivy`]): a secret's `match` is
//! never kept, only its `secret_hash`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::{join, kind, opt_obj, opt_str, req_str};
use super::trivy::{
    Reject, SecretFieldNames, expect_object, misconfig_class, opt_array, opt_time, secret_draft,
    severity_at, vuln_title,
};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef};

/// Trivy Operator report custom resources.
pub struct TrivyOperator;

/// The API group of every Trivy Operator resource.
const GROUP: &str = "aquasecurity.github.io/";

/// Report kinds this parser reads.
pub const REPORT_KINDS: &[&str] = &[
    "VulnerabilityReport",
    "ClusterVulnerabilityReport",
    "ConfigAuditReport",
    "ClusterConfigAuditReport",
    "ExposedSecretReport",
    "RbacAssessmentReport",
    "ClusterRbacAssessmentReport",
    "InfraAssessmentReport",
    "ClusterInfraAssessmentReport",
];

/// Labels the operator puts on a report to name the scanned object.
const LABEL_KIND: &str = "trivy-operator.resource.kind";
const LABEL_NAME: &str = "trivy-operator.resource.name";
const LABEL_NAMESPACE: &str = "trivy-operator.resource.namespace";
const LABEL_CONTAINER: &str = "trivy-operator.container.name";

/// Whether `v` is one Trivy Operator report object.
fn is_report(v: &Value) -> bool {
    v.get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|a| a.starts_with(GROUP))
        && v.get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("Report"))
}

/// Whether `v` is a list (`kind: List` or `<Kind>ReportList`) of them.
fn is_report_list(v: &Value) -> bool {
    let Some(k) = v.get("kind").and_then(Value::as_str) else {
        return false;
    };
    let group = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|a| a.starts_with(GROUP));
    match k {
        _ if k.ends_with("ReportList") => group,
        "List" => v
            .get("items")
            .and_then(Value::as_array)
            .and_then(|items| items.first())
            .is_some_and(is_report),
        _ => false,
    }
}

/// What every finding of one report shares.
struct Report {
    resources: Vec<ResourceRef>,
    labels: BTreeMap<String, String>,
    observed_at: DateTime<Utc>,
}

impl Report {
    fn draft(
        &self,
        rule: &str,
        title: &str,
        severity: super::Severity,
        class: Class,
    ) -> FindingDraft {
        FindingDraft {
            source: "trivy-operator",
            rule: rule.to_owned(),
            title: title.to_owned(),
            severity,
            class,
            resources: self.resources.clone(),
            labels: self.labels.clone(),
            fields: Value::Null,
            observed_at: self.observed_at,
        }
    }

    fn vulnerability(&self, v: &Value, at: &str) -> Result<Option<FindingDraft>, Reject> {
        expect_object(v, at, "vulnerability")?;
        let id = req_str(v, at, "vulnerabilityID")?;
        let severity = severity_at(v, at, "severity")?;
        let pkg = opt_str(v, at, "resource")?.filter(|s| !s.is_empty());
        let installed = opt_str(v, at, "installedVersion")?.filter(|s| !s.is_empty());
        let fixed = opt_str(v, at, "fixedVersion")?.filter(|s| !s.is_empty());
        let title = opt_str(v, at, "title")?.filter(|s| !s.is_empty());
        let shown = vuln_title(id, pkg, installed, title);
        let mut d = self.draft(id, &shown, severity, Class::Vulnerability);
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

    fn check(&self, v: &Value, at: &str) -> Result<Option<FindingDraft>, Reject> {
        expect_object(v, at, "check")?;
        match v.get("success") {
            Some(Value::Bool(true)) => return Ok(None),
            Some(Value::Bool(false)) => {}
            None => return Err((join(at, "success"), "required field is missing".to_owned())),
            Some(other) => {
                return Err((
                    join(at, "success"),
                    format!("expected a boolean, found {}", kind(other)),
                ));
            }
        }
        let id = req_str(v, at, "checkID")?;
        let severity = severity_at(v, at, "severity")?;
        let title = opt_str(v, at, "title")?.unwrap_or_default();
        let description = opt_str(v, at, "description")?.unwrap_or_default();
        let class = misconfig_class(id, None, title, description);
        let shown = if title.is_empty() { id } else { title };
        let mut d = self.draft(id, shown, severity, class);
        if let Some(category) = opt_str(v, at, "category")?.filter(|c| !c.is_empty()) {
            d.labels.insert("category".to_owned(), category.to_owned());
        }
        d.fields = v.clone();
        Ok(Some(d))
    }

    fn secret(&self, v: &Value, at: &str) -> Result<Option<FindingDraft>, Reject> {
        secret_draft(
            v,
            at,
            &SecretFieldNames::OPERATOR,
            |rule, title, severity, class| self.draft(rule, title, severity, class),
        )
        .map(Some)
    }
}

/// The scanned object, from the operator's labels on the report.
fn scanned_object(labels: Option<&Value>, at: &str) -> Result<ResourceRef, Reject> {
    let base = format!("{at}/metadata/labels");
    let Some(labels) = labels else {
        return Err((
            base,
            format!("required labels {LABEL_KIND} and {LABEL_NAME} are missing"),
        ));
    };
    let owned = |key| -> Result<Option<String>, Reject> {
        Ok(opt_str(labels, &base, key)?
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    };
    Ok(ResourceRef::Kubernetes {
        cluster: None,
        namespace: owned(LABEL_NAMESPACE)?,
        kind: req_str(labels, &base, LABEL_KIND)?.to_owned(),
        name: req_str(labels, &base, LABEL_NAME)?.to_owned(),
        container: owned(LABEL_CONTAINER)?,
    })
}

/// The scanned image, `registry/repository:tag` (and digest) from `report.artifact`.
fn scanned_image(report: &Value, at: &str) -> Result<Option<ResourceRef>, Reject> {
    let Some(artifact) = opt_obj(report, at, "artifact")? else {
        return Ok(None);
    };
    let art_at = join(at, "artifact");
    let Some(repository) = opt_str(artifact, &art_at, "repository")?.filter(|r| !r.is_empty())
    else {
        return Ok(None);
    };
    let server = match opt_obj(report, at, "registry")? {
        Some(registry) => opt_str(registry, &join(at, "registry"), "server")?,
        None => None,
    };
    let mut reference = match server.filter(|s| !s.is_empty()) {
        Some(server) => format!("{server}/{repository}"),
        None => repository.to_owned(),
    };
    if let Some(tag) = opt_str(artifact, &art_at, "tag")?.filter(|t| !t.is_empty()) {
        reference.push(':');
        reference.push_str(tag);
    }
    let digest = opt_str(artifact, &art_at, "digest")?
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    Ok(Some(ResourceRef::Image { reference, digest }))
}

impl TrivyOperator {
    /// Reads one report object at `at` (`""` or `/items/3`). Errors in the report as a whole
    /// are returned; errors in its entries are recorded and the other entries still read.
    fn report(
        &self,
        doc: &Document,
        v: &Value,
        at: &str,
        out: &mut ParseReport,
    ) -> Result<(), Reject> {
        expect_object(v, at, "Trivy Operator report")?;
        let report_kind = req_str(v, at, "kind")?;
        if !REPORT_KINDS.contains(&report_kind) {
            return Err((
                join(at, "kind"),
                format!(
                    "unsupported kind; expected one of {}",
                    REPORT_KINDS.join(", ")
                ),
            ));
        }
        let meta_at = join(at, "metadata");
        let metadata = opt_obj(v, at, "metadata")?;
        let labels = match metadata {
            Some(m) => opt_obj(m, &meta_at, "labels")?,
            None => None,
        };
        let object = scanned_object(labels, at)?;
        let report_at = join(at, "report");
        let report = match v.get("report") {
            Some(r @ Value::Object(_)) => r,
            None => return Err((report_at, "required field is missing".to_owned())),
            Some(other) => {
                return Err((
                    report_at,
                    format!("expected an object, found {}", kind(other)),
                ));
            }
        };
        let created = match metadata {
            Some(m) => opt_time(m, &meta_at, "creationTimestamp")?,
            None => None,
        };
        // No timestamp at all means "not reported": the Unix epoch (see docs/parsers-k8s.md).
        let observed_at = opt_time(report, &report_at, "updateTimestamp")?
            .or(created)
            .unwrap_or(DateTime::UNIX_EPOCH);

        let mut resources = vec![object];
        resources.extend(scanned_image(report, &report_at)?);
        let mut finding_labels = BTreeMap::new();
        finding_labels.insert("trivy-operator.report".to_owned(), report_kind.to_owned());
        if let Some(name) = metadata
            .map(|m| opt_str(m, &meta_at, "name"))
            .transpose()?
            .flatten()
            .filter(|n| !n.is_empty())
        {
            finding_labels.insert("trivy-operator.report_name".to_owned(), name.to_owned());
        }
        let ctx = Report {
            resources,
            labels: finding_labels,
            observed_at,
        };

        let vulns = opt_array(report, &report_at, "vulnerabilities")?;
        let checks = opt_array(report, &report_at, "checks")?;
        let secrets = opt_array(report, &report_at, "secrets")?;
        for (j, item) in vulns.iter().enumerate() {
            let built = ctx.vulnerability(item, &format!("{report_at}/vulnerabilities/{j}"));
            self.emit(doc, built, out);
        }
        for (j, item) in checks.iter().enumerate() {
            let built = ctx.check(item, &format!("{report_at}/checks/{j}"));
            self.emit(doc, built, out);
        }
        for (j, item) in secrets.iter().enumerate() {
            let built = ctx.secret(item, &format!("{report_at}/secrets/{j}"));
            self.emit(doc, built, out);
        }
        Ok(())
    }

    fn emit(
        &self,
        doc: &Document,
        built: Result<Option<FindingDraft>, Reject>,
        out: &mut ParseReport,
    ) {
        match built {
            Ok(Some(draft)) => out.findings.push(draft.build()),
            Ok(None) => out.skipped += 1,
            Err((pointer, reason)) => out.reject(doc, self.id(), &pointer, reason),
        }
    }
}

impl Parser for TrivyOperator {
    fn id(&self) -> &'static str {
        "trivy-operator"
    }

    fn summary(&self) -> &'static str {
        "Trivy Operator reports (vulnerability, config audit, exposed secret, RBAC), JSON or YAML"
    }

    fn sniff(&self, doc: &Value) -> bool {
        // The operator's API group is unique to it.
        is_report(doc) || is_report_list(doc)
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        let v = &doc.value;
        if is_report_list(v) {
            let items = match opt_array(v, "", "items") {
                Ok(items) => items,
                Err((pointer, reason)) => return out.reject(doc, self.id(), &pointer, reason),
            };
            for (i, item) in items.iter().enumerate() {
                if let Err((pointer, reason)) = self.report(doc, item, &format!("/items/{i}"), out)
                {
                    out.reject(doc, self.id(), &pointer, reason);
                }
            }
            return;
        }
        if let Err((pointer, reason)) = self.report(doc, v, "", out) {
            out.reject(doc, self.id(), &pointer, reason);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_and_single_reports_are_recognised() {
        let report =
            json!({"apiVersion": "aquasecurity.github.io/v1alpha1", "kind": "ConfigAuditReport"});
        assert!(is_report(&report));
        assert!(is_report_list(
            &json!({"apiVersion": "v1", "kind": "List", "items": [report]})
        ));
        assert!(is_report_list(
            &json!({"apiVersion": "aquasecurity.github.io/v1alpha1", "kind": "ConfigAuditReportList", "items": []})
        ));
        assert!(!is_report_list(
            &json!({"apiVersion": "v1", "kind": "List", "items": [{"kind": "Event"}]})
        ));
    }
}
