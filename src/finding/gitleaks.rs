//! gitleaks JSON reports. (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// gitleaks JSON reports.
pub struct Gitleaks;

impl Parser for Gitleaks {
    fn id(&self) -> &'static str {
        "gitleaks"
    }

    fn summary(&self) -> &'static str {
        "gitleaks JSON reports"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
