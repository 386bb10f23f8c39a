//! Trivy Operator report CRDs (JSON or YAML, single or List). (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// Trivy Operator report CRDs (JSON or YAML, single or List).
pub struct TrivyOperator;

impl Parser for TrivyOperator {
    fn id(&self) -> &'static str {
        "trivy-operator"
    }

    fn summary(&self) -> &'static str {
        "Trivy Operator report CRDs (JSON or YAML, single or List)"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
