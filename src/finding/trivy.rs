//! Trivy JSON reports (fs, image, k8s). (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// Trivy JSON reports (fs, image, k8s).
pub struct Trivy;

impl Parser for Trivy {
    fn id(&self) -> &'static str {
        "trivy"
    }

    fn summary(&self) -> &'static str {
        "Trivy JSON reports (fs, image, k8s)"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
