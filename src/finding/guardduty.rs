//! GuardDuty. (Being written.)
use super::{Document, ParseReport, Parser};
use serde_json::Value;
/// GuardDuty findings.
pub struct GuardDuty;
impl Parser for GuardDuty {
    fn id(&self) -> &'static str {
        "guardduty"
    }
    fn summary(&self) -> &'static str {
        "GuardDuty findings"
    }
    fn sniff(&self, _doc: &Value) -> bool {
        false
    }
    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
