//! Prowler JSON-OCSF output. (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// Prowler JSON-OCSF output.
pub struct Prowler;

impl Parser for Prowler {
    fn id(&self) -> &'static str {
        "prowler"
    }

    fn summary(&self) -> &'static str {
        "Prowler JSON-OCSF output"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
