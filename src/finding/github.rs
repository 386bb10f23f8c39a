//! GitHub secret-scanning alerts (webhook and REST). (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// GitHub secret-scanning alerts (webhook and REST).
pub struct Github;

impl Parser for Github {
    fn id(&self) -> &'static str {
        "github"
    }

    fn summary(&self) -> &'static str {
        "GitHub secret-scanning alerts (webhook and REST)"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
