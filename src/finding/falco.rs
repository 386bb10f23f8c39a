//! Falco. (Being written.)
use super::{Document, ParseReport, Parser};
use serde_json::Value;
/// Falco json_output and Falcosidekick.
pub struct Falco;
impl Parser for Falco {
    fn id(&self) -> &'static str {
        "falco"
    }
    fn summary(&self) -> &'static str {
        "Falco json_output events and Falcosidekick payloads"
    }
    fn sniff(&self, doc: &Value) -> bool {
        doc.get("rule").is_some() && doc.get("output").is_some()
    }
    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
