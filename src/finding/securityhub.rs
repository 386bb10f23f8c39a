//! Security Hub ASFF findings (bare, Findings list, EventBridge envelopes). (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// Security Hub ASFF findings (bare, Findings list, EventBridge envelopes).
pub struct SecurityHub;

impl Parser for SecurityHub {
    fn id(&self) -> &'static str {
        "securityhub"
    }

    fn summary(&self) -> &'static str {
        "Security Hub ASFF findings (bare, Findings list, EventBridge envelopes)"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
