//! kube-bench JSON (`kube-bench --json`): CIS Kubernetes Benchmark results.
//!
//! Accepts both shapes kube-bench has written: a full run, `{"Controls": [...], "Totals": {...}}`,
//! and the older bare array of controls (which the decoder splits into one document per
//! control). Every `tests[].results[]` entry with status `FAIL` or `WARN` becomes one
//! misconfiguration finding; `PASS` and `INFO` are counted as skipped. A bad result is rejected at
//! its JSON pointer and its siblings are still read. kube-bench reports carry no time, so
//! `observed_at` is the Unix epoch, meaning "not reported" (see `docs/parsers-k8s.md`).

use std::collections::BTreeMap;

use chrono::DateTime;
use serde_json::Value;

use super::access::{join, kind, opt_str, req_str};
use super::trivy::{Reject, contains_ignore_case, expect_object, opt_array};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// kube-bench JSON output.
pub struct KubeBench;

/// `node_type` values whose checks are about the cluster as a whole, not one node.
const CLUSTER_WIDE: &[&str] = &["policies", "managedservices"];

/// Maps a result's status and `scored` flag onto a severity; `None` means "not a finding"
/// (`PASS`, `INFO`). Unknown statuses are an error.
#[must_use]
pub fn severity_for(status: &str, scored: bool) -> Option<Option<Severity>> {
    match status {
        "FAIL" if scored => Some(Some(Severity::Medium)),
        "FAIL" | "WARN" => Some(Some(Severity::Low)),
        "PASS" | "INFO" => Some(None),
        _ => None,
    }
}

/// The class of a failed check: one about the dashboard is exposed-dashboard, anything else
/// misconfiguration (anonymous auth included: the fix is a setting).
#[must_use]
pub fn class_for(test_desc: &str) -> Class {
    if contains_ignore_case(test_desc, "dashboard") {
        Class::ExposedDashboard
    } else {
        Class::Misconfiguration
    }
}

/// What every result of one control shares.
struct Control {
    resource: ResourceRef,
    labels: BTreeMap<String, String>,
}

impl Control {
    fn result(&self, r: &Value, at: &str) -> Result<Option<FindingDraft>, Reject> {
        expect_object(r, at, "result")?;
        let status = req_str(r, at, "status")?;
        let scored = match r.get("scored") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err((
                    join(at, "scored"),
                    format!("expected a boolean, found {}", kind(other)),
                ));
            }
        };
        let severity = match severity_for(status, scored) {
            Some(Some(s)) => s,
            Some(None) => return Ok(None),
            None => {
                return Err((
                    join(at, "status"),
                    "unknown status; expected one of FAIL, WARN, PASS, INFO".to_owned(),
                ));
            }
        };
        let number = req_str(r, at, "test_number")?;
        let desc = req_str(r, at, "test_desc")?;
        let mut labels = self.labels.clone();
        labels.insert("status".to_owned(), status.to_owned());
        labels.insert("scored".to_owned(), scored.to_string());
        Ok(Some(FindingDraft {
            source: "kube-bench",
            rule: number.to_owned(),
            title: desc.to_owned(),
            severity,
            class: class_for(desc),
            resources: vec![self.resource.clone()],
            labels,
            fields: r.clone(),
            // Not reported by kube-bench.
            observed_at: DateTime::UNIX_EPOCH,
        }))
    }
}

impl KubeBench {
    /// Reads one control (`{"id", "node_type", "tests": [...]}`) at `at`.
    fn control(
        &self,
        doc: &Document,
        c: &Value,
        at: &str,
        out: &mut ParseReport,
    ) -> Result<(), Reject> {
        expect_object(c, at, "control")?;
        let node_type = req_str(c, at, "node_type")?;
        let tests = opt_array(c, at, "tests")?;
        let resource = ResourceRef::Kubernetes {
            cluster: None,
            namespace: None,
            kind: if CLUSTER_WIDE.contains(&node_type) {
                "Cluster"
            } else {
                "Node"
            }
            .to_owned(),
            name: node_type.to_owned(),
            container: None,
        };
        let mut labels = BTreeMap::new();
        labels.insert("kube-bench.node_type".to_owned(), node_type.to_owned());
        for (key, label) in [
            ("version", "kube-bench.benchmark"),
            ("id", "kube-bench.control"),
            ("detected_version", "kube-bench.detected_version"),
        ] {
            if let Some(value) = opt_str(c, at, key)?.filter(|v| !v.is_empty()) {
                labels.insert(label.to_owned(), value.to_owned());
            }
        }
        for (j, test) in tests.iter().enumerate() {
            let test_at = format!("{at}/tests/{j}");
            let results = expect_object(test, &test_at, "test group")
                .and_then(|()| opt_array(test, &test_at, "results"));
            let results = match results {
                Ok(r) => r,
                Err((pointer, reason)) => {
                    out.reject(doc, self.id(), &pointer, reason);
                    continue;
                }
            };
            let mut control = Control {
                resource: resource.clone(),
                labels: labels.clone(),
            };
            match opt_str(test, &test_at, "section") {
                Ok(Some(section)) if !section.is_empty() => {
                    control
                        .labels
                        .insert("kube-bench.section".to_owned(), section.to_owned());
                }
                Ok(_) => {}
                Err((pointer, reason)) => {
                    out.reject(doc, self.id(), &pointer, reason);
                    continue;
                }
            }
            for (k, result) in results.iter().enumerate() {
                match control.result(result, &format!("{test_at}/results/{k}")) {
                    Ok(Some(draft)) => out.findings.push(draft.build()),
                    Ok(None) => out.skipped += 1,
                    Err((pointer, reason)) => out.reject(doc, self.id(), &pointer, reason),
                }
            }
        }
        Ok(())
    }
}

impl Parser for KubeBench {
    fn id(&self) -> &'static str {
        "kube-bench"
    }

    fn summary(&self) -> &'static str {
        "kube-bench JSON (CIS Kubernetes Benchmark): full runs and control arrays"
    }

    fn sniff(&self, doc: &Value) -> bool {
        // A full run has `Controls` (and `Totals`); a bare control has `node_type` and `tests`.
        doc.get("Controls").is_some_and(Value::is_array)
            || (doc.get("node_type").is_some() && doc.get("tests").is_some())
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        let v = &doc.value;
        if v.get("Controls").is_some() {
            let controls = match opt_array(v, "", "Controls") {
                Ok(c) => c,
                Err((pointer, reason)) => return out.reject(doc, self.id(), &pointer, reason),
            };
            for (i, control) in controls.iter().enumerate() {
                if let Err((pointer, reason)) =
                    self.control(doc, control, &format!("/Controls/{i}"), out)
                {
                    out.reject(doc, self.id(), &pointer, reason);
                }
            }
            return;
        }
        if let Err((pointer, reason)) = self.control(doc, v, "", out) {
            out.reject(doc, self.id(), &pointer, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_onto_severities() {
        assert_eq!(severity_for("FAIL", true), Some(Some(Severity::Medium)));
        assert_eq!(severity_for("FAIL", false), Some(Some(Severity::Low)));
        assert_eq!(severity_for("WARN", true), Some(Some(Severity::Low)));
        assert_eq!(severity_for("PASS", true), Some(None));
        assert_eq!(severity_for("INFO", false), Some(None));
        assert_eq!(severity_for("BROKEN", false), None);
    }

    #[test]
    fn dashboard_checks_are_exposed_dashboard() {
        assert_eq!(
            class_for("Ensure that the Kubernetes dashboard is not exposed (Manual)"),
            Class::ExposedDashboard
        );
        assert_eq!(
            class_for("Ensure that the --anonymous-auth argument is set to false (Manual)"),
            Class::Misconfiguration
        );
    }
}
