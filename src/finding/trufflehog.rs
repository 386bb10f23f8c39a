//! trufflehog v3 JSON / JSON lines. (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// trufflehog v3 JSON / JSON lines.
pub struct Trufflehog;

impl Parser for Trufflehog {
    fn id(&self) -> &'static str {
        "trufflehog"
    }

    fn summary(&self) -> &'static str {
        "trufflehog v3 JSON / JSON lines"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
