//! kube-bench JSON. (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// kube-bench JSON.
pub struct KubeBench;

impl Parser for KubeBench {
    fn id(&self) -> &'static str {
        "kube-bench"
    }

    fn summary(&self) -> &'static str {
        "kube-bench JSON"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
