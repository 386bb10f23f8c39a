//! kube-hunter JSON. (Being written.)

use serde_json::Value;

use super::{Document, ParseReport, Parser};

/// kube-hunter JSON.
pub struct KubeHunter;

impl Parser for KubeHunter {
    fn id(&self) -> &'static str {
        "kube-hunter"
    }

    fn summary(&self) -> &'static str {
        "kube-hunter JSON"
    }

    fn sniff(&self, _doc: &Value) -> bool {
        false
    }

    fn parse(&self, doc: &Document, out: &mut ParseReport) {
        out.reject(doc, self.id(), "", "not yet implemented");
    }
}
