//! Kubernetes Events. (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// Kubernetes Events.
pub struct K8sEvent;

impl Parser for K8sEvent {
    fn id(&self) -> &'static str {
        "k8s-event"
    }

    fn summary(&self) -> &'static str {
        "Kubernetes Events"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
