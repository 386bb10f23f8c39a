//! Kubernetes Events: core/v1 `Event`, events.k8s.io/v1 `Event`, and lists of either
//! (`EventList`, `kind: List`), in JSON or YAML.
//!
//! Owns the mapping of one Event onto a canonical [`Finding`](super::Finding): `reason` → rule,
//! `type` → severity, the reporting component → class ([`class_for`], documented in
//! `docs/parsers-k8s.md`), `involvedObject`/`regarding` → the Kubernetes resource. Both API
//! versions are read with the same code: each field is looked up under its core/v1 name, then its
//! events.k8s.io/v1 name.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::{join, kind, opt_obj, opt_str, req_str};
use super::trivy::{Reject, contains_ignore_case, expect_object, opt_array, opt_time};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// Kubernetes Events.
pub struct K8sEvent;

/// API versions an Event is served under.
const EVENT_API_VERSIONS: &[&str] = &["v1", "events.k8s.io/v1", "events.k8s.io/v1beta1"];

/// Reporting components (matched case-insensitively as substrings) whose Events are security
/// findings, and their class; first match wins. Anything else is [`Class::Other`]: an Event is
/// a record of cluster activity, and most are routine.
pub const CLASS_BY_REPORTER: &[(&str, Class)] = &[
    ("falco", Class::RuntimeThreat),
    ("kyverno", Class::Misconfiguration),
    ("gatekeeper", Class::Misconfiguration),
];

/// The class of an Event from its reporting component and reason.
#[must_use]
pub fn class_for(reporter: &str, reason: &str) -> Class {
    CLASS_BY_REPORTER
        .iter()
        .find(|(needle, _)| {
            contains_ignore_case(reporter, needle) || contains_ignore_case(reason, needle)
        })
        .map_or(Class::Other, |&(_, class)| class)
}

/// Maps an Event `type` onto a severity; absent means Normal.
#[must_use]
pub fn severity_for(event_type: Option<&str>) -> Option<Severity> {
    match event_type {
        None | Some("" | "Normal") => Some(Severity::Info),
        Some("Warning") => Some(Severity::Medium),
        Some(_) => None,
    }
}

/// Whether `v` is one Event.
fn is_event(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("Event")
        && v.get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|a| EVENT_API_VERSIONS.contains(&a))
        && (v.get("involvedObject").is_some() || v.get("regarding").is_some())
}

/// Whether `v` is a list of Events (`EventList`, or a `List` whose first item is an Event).
fn is_event_list(v: &Value) -> bool {
    match v.get("kind").and_then(Value::as_str) {
        Some("EventList") => true,
        Some("List") => v
            .get("items")
            .and_then(Value::as_array)
            .and_then(|items| items.first())
            .is_some_and(is_event),
        _ => false,
    }
}

/// The first of `keys` present in `v` as a string, looked up in order.
fn first_str<'a>(v: &'a Value, base: &str, keys: &[&str]) -> Result<Option<&'a str>, Reject> {
    for key in keys {
        if let Some(s) = opt_str(v, base, key)?.filter(|s| !s.is_empty()) {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// `spec.containers{busybox}` → `busybox`.
fn container_of(field_path: &str) -> Option<&str> {
    [
        "spec.containers{",
        "spec.initContainers{",
        "spec.ephemeralContainers{",
    ]
    .iter()
    .find_map(|p| field_path.strip_prefix(p))
    .and_then(|rest| rest.strip_suffix('}'))
    .filter(|c| !c.is_empty())
}

/// When the Event last happened: the newest of the timestamps either API version carries.
fn observed_at(v: &Value, at: &str) -> Result<DateTime<Utc>, Reject> {
    let series = match opt_obj(v, at, "series")? {
        Some(s) => opt_time(s, &join(at, "series"), "lastObservedTime")?,
        None => None,
    };
    let mut newest = series;
    for key in [
        "lastTimestamp",
        "deprecatedLastTimestamp",
        "eventTime",
        "firstTimestamp",
        "deprecatedFirstTimestamp",
    ] {
        if newest.is_some() {
            break;
        }
        newest = opt_time(v, at, key)?;
    }
    if newest.is_none()
        && let Some(meta) = opt_obj(v, at, "metadata")?
    {
        newest = opt_time(meta, &join(at, "metadata"), "creationTimestamp")?;
    }
    // An Event with no time at all: "not reported", the Unix epoch (see docs/parsers-k8s.md).
    Ok(newest.unwrap_or(DateTime::UNIX_EPOCH))
}

/// Builds the finding for one Event at `at`.
fn draft(v: &Value, at: &str) -> Result<FindingDraft, Reject> {
    expect_object(v, at, "Event")?;
    let reason = req_str(v, at, "reason")?;
    let event_type = opt_str(v, at, "type")?;
    let severity = severity_for(event_type).ok_or_else(|| {
        (
            join(at, "type"),
            "unknown event type; expected Normal or Warning".to_owned(),
        )
    })?;
    let (object_key, object) = match (
        opt_obj(v, at, "involvedObject")?,
        opt_obj(v, at, "regarding")?,
    ) {
        (Some(o), _) => ("involvedObject", o),
        (None, Some(o)) => ("regarding", o),
        (None, None) => {
            return Err((
                join(at, "involvedObject"),
                "required field is missing (or `regarding` in events.k8s.io/v1)".to_owned(),
            ));
        }
    };
    let object_at = join(at, object_key);
    let resource = ResourceRef::Kubernetes {
        cluster: None,
        namespace: opt_str(object, &object_at, "namespace")?
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        kind: req_str(object, &object_at, "kind")?.to_owned(),
        name: req_str(object, &object_at, "name")?.to_owned(),
        container: opt_str(object, &object_at, "fieldPath")?
            .and_then(container_of)
            .map(str::to_owned),
    };
    let message = first_str(v, at, &["message", "note"])?;
    let source_at = join(at, "source");
    let source = match opt_obj(v, at, "source")? {
        Some(s) => Some((s, source_at)),
        None => opt_obj(v, at, "deprecatedSource")?.map(|s| (s, join(at, "deprecatedSource"))),
    };
    let (source_component, source_host) = match &source {
        Some((s, s_at)) => (opt_str(s, s_at, "component")?, opt_str(s, s_at, "host")?),
        None => (None, None),
    };
    let reporter = first_str(v, at, &["reportingComponent", "reportingController"])?
        .or(source_component.filter(|c| !c.is_empty()));

    let mut resources = vec![resource];
    if let Some(host) = source_host.filter(|h| !h.is_empty()) {
        resources.push(ResourceRef::Host {
            name: host.to_owned(),
        });
    }
    let mut labels = BTreeMap::new();
    labels.insert(
        "k8s.event.type".to_owned(),
        event_type
            .filter(|t| !t.is_empty())
            .unwrap_or("Normal")
            .to_owned(),
    );
    if let Some(reporter) = reporter {
        labels.insert("k8s.event.reporter".to_owned(), reporter.to_owned());
    }
    if let Some(count) = v.get("count").and_then(Value::as_u64) {
        labels.insert("k8s.event.count".to_owned(), count.to_string());
    }
    Ok(FindingDraft {
        source: "k8s-event",
        rule: reason.to_owned(),
        title: message.unwrap_or(reason).to_owned(),
        severity,
        class: class_for(reporter.unwrap_or_default(), reason),
        resources,
        labels,
        fields: v.clone(),
        observed_at: observed_at(v, at)?,
    })
}

impl Parser for K8sEvent {
    fn id(&self) -> &'static str {
        "k8s-event"
    }

    fn summary(&self) -> &'static str {
        "Kubernetes Events (core/v1 and events.k8s.io/v1), single or lists"
    }

    fn sniff(&self, doc: &Value) -> bool {
        is_event(doc) || is_event_list(doc)
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        let v = &doc.value;
        if is_event_list(v) {
            let items = match opt_array(v, "", "items") {
                Ok(items) => items,
                Err((pointer, reason)) => return out.reject(doc, self.id(), &pointer, reason),
            };
            for (i, item) in items.iter().enumerate() {
                out.accept(doc, self.id(), draft(item, &format!("/items/{i}")));
            }
            return;
        }
        if v.is_object() && v.get("kind").and_then(Value::as_str) != Some("Event") {
            let found = v.get("kind").map_or("no kind", kind);
            return out.reject(
                doc,
                self.id(),
                "/kind",
                format!(
                    "not a Kubernetes Event: expected kind Event, EventList or List (found {found})"
                ),
            );
        }
        out.accept(doc, self.id(), draft(v, ""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_onto_severities() {
        assert_eq!(severity_for(Some("Normal")), Some(Severity::Info));
        assert_eq!(severity_for(None), Some(Severity::Info));
        assert_eq!(severity_for(Some("Warning")), Some(Severity::Medium));
        assert_eq!(severity_for(Some("Error")), None);
    }

    #[test]
    fn reporters_decide_the_class() {
        assert_eq!(
            class_for("falco", "Terminal shell in container"),
            Class::RuntimeThreat
        );
        assert_eq!(
            class_for("kyverno-admission", "PolicyViolation"),
            Class::Misconfiguration
        );
        assert_eq!(class_for("kubelet", "Started"), Class::Other);
    }

    #[test]
    fn field_paths_name_containers() {
        assert_eq!(container_of("spec.containers{busybox}"), Some("busybox"));
        assert_eq!(container_of("spec.initContainers{init}"), Some("init"));
        assert_eq!(container_of("metadata"), None);
    }
}
