//! The canonical [`Finding`] and the parsers that build it from each scanner's native format.
//!
//! This module knows what bytes *mean*; how they arrive is [`crate::ingest`]'s business. Each
//! scanner format is one file with a [`Parser`] implementation and one line in [`PARSERS`].
//! Parsers never keep secret material: a leaked key's id is kept, its secret never (see
//! [`crate::redact`]).
//!
//! A payload may hold many records. A bad record becomes a [`Rejection`] naming the source, the
//! record index and the JSON pointer of the offending field; its good siblings are still parsed.

mod falco;
mod github;
mod gitleaks;
mod guardduty;
mod input;
mod k8s_event;
mod kube_bench;
mod kube_hunter;
mod model;
mod prowler;
mod securityhub;
mod trivy;
mod trivy_operator;
mod trufflehog;

pub use input::{Document, decode};
pub use model::{Class, Finding, FindingDraft, Fingerprint, ResourceRef, Severity};

use serde::Serialize;
use serde_json::Value;

pub use falco::Falco;
pub use github::{EVENTS as GITHUB_EVENTS, Github, GithubEvent, parse_event as parse_github_event};
pub use gitleaks::Gitleaks;
pub use guardduty::GuardDuty;
pub use k8s_event::K8sEvent;
pub use kube_bench::KubeBench;
pub use kube_hunter::KubeHunter;
pub use prowler::Prowler;
pub use securityhub::SecurityHub;
pub use trivy::Trivy;
pub use trivy_operator::TrivyOperator;
pub use trufflehog::Trufflehog;

/// Every scanner format Firebreak understands, in a stable order. Sniffing asks each in turn and
/// the first that recognises a record parses it, so each `sniff` must be specific to its format
/// (a test checks that exactly one parser claims each fixture).
pub static PARSERS: &[&dyn Parser] = &[
    &Falco,
    &GuardDuty,
    &SecurityHub,
    &Prowler,
    &Trivy,
    &TrivyOperator,
    &KubeBench,
    &KubeHunter,
    &Gitleaks,
    &Trufflehog,
    &Github,
    &K8sEvent,
];

/// One scanner format.
pub trait Parser: Sync {
    /// Stable id, used in routes (`/v1/findings/{id}`), flags (`--parser`) and `Finding::source`.
    fn id(&self) -> &'static str;
    /// One line for `firebreak parsers list`.
    fn summary(&self) -> &'static str;
    /// Whether this looks like one of our documents. Cheap: looks at keys, not the whole record.
    fn sniff(&self, doc: &Value) -> bool;
    /// Parses one decoded document, which may hold several records. The document is the
    /// parser's to consume: a parser that keeps the whole record as `fields` may move it out
    /// instead of copying it (it is not looked at again).
    fn parse(&self, doc: &mut Document, out: &mut ParseReport);
    /// The `source` values this parser can put on findings besides its own id (Security Hub
    /// findings keep the product that produced them: `guardduty`, `inspector`, `prowler`, …).
    /// Playbooks may name any of them in `match.source`.
    fn sources(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Every `source` a finding can carry: parser ids and the extra sources parsers declare.
pub fn known_sources() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = PARSERS
        .iter()
        .flat_map(|p| std::iter::once(p.id()).chain(p.sources().iter().copied()))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Looks up a parser by id.
pub fn parser(id: &str) -> Option<&'static dyn Parser> {
    PARSERS.iter().copied().find(|p| p.id() == id)
}

/// The parser whose `sniff` accepts `doc`, or `None`.
pub fn sniff(doc: &Value) -> Option<&'static dyn Parser> {
    PARSERS.iter().copied().find(|p| p.sniff(doc))
}

/// A record that could not become a finding, and exactly why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Where the input came from: a file path, `stdin`, or a route.
    pub source: String,
    /// The parser that tried (or `auto` when none recognised the record).
    pub parser: String,
    /// 0-based index of the record in the input (array element or JSON line).
    pub index: usize,
    /// 1-based line of the record in the input, when the input was JSON lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// JSON pointer to the offending field inside the record (empty for the whole record).
    pub pointer: String,
    /// What is wrong, without echoing the payload.
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": record {} ({})", self.index, self.parser)?;
        if !self.pointer.is_empty() {
            write!(f, " at {}", self.pointer)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What parsing an input produced: the findings and the records that were rejected.
#[derive(Debug, Default, Serialize)]
pub struct ParseReport {
    /// Canonical findings, in input order.
    pub findings: Vec<Finding>,
    /// Records that could not be parsed.
    pub rejected: Vec<Rejection>,
    /// Records that were recognised and deliberately not turned into findings (e.g. a passed
    /// check), counted so nothing disappears silently.
    pub skipped: usize,
}

impl ParseReport {
    /// Records on every finding how it arrived (`http:<token-name>`, `sqs:<queue-name>`,
    /// `cli`): the intake calls this after parsing, before the findings are stored.
    #[must_use]
    pub fn with_intake(mut self, intake: &str) -> Self {
        for f in &mut self.findings {
            intake.clone_into(&mut f.intake);
        }
        self
    }

    /// Keeps a parsed record as a finding, or rejects it at the pointer its parser named.
    pub fn accept(
        &mut self,
        doc: &Document,
        parser: &str,
        record: Result<FindingDraft, (String, String)>,
    ) {
        match record {
            Ok(d) => self.findings.push(d.build()),
            Err((pointer, reason)) => self.reject(doc, parser, &pointer, reason),
        }
    }

    /// Records a rejection for `doc`'s record at `pointer`.
    pub fn reject(
        &mut self,
        doc: &Document,
        parser: &str,
        pointer: &str,
        reason: impl Into<String>,
    ) {
        self.rejected.push(Rejection {
            source: doc.source.clone(),
            parser: parser.to_owned(),
            index: doc.index,
            line: doc.line,
            pointer: pointer.to_owned(),
            reason: crate::redact::scrub(&reason.into()).into_owned(),
        });
    }
}

/// Which parser to use for an input.
#[derive(Clone, Copy)]
pub enum ParserChoice {
    /// Sniff each document.
    Auto,
    /// Always this one.
    Fixed(&'static dyn Parser),
}

impl std::fmt::Debug for ParserChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(p) => f.write_str(p.id()),
        }
    }
}

impl ParserChoice {
    /// `auto` or a parser id; the error lists the valid ids.
    pub fn from_id(id: &str) -> Result<Self, String> {
        if id == "auto" {
            return Ok(Self::Auto);
        }
        parser(id).map(Self::Fixed).ok_or_else(|| {
            let ids: Vec<&str> = PARSERS.iter().map(|p| p.id()).collect();
            let mut msg = format!(
                "unknown parser `{id}`; expected `auto` or one of {}",
                ids.join(", ")
            );
            if let Some(s) = crate::error::did_you_mean(id, ids.iter().copied()) {
                msg.push_str(&format!(" (did you mean `{s}`?)"));
            }
            msg
        })
    }
}

/// Parses a whole input: decodes it into documents and runs the chosen parser on each.
pub fn parse_input(source: &str, bytes: &[u8], choice: ParserChoice) -> ParseReport {
    parse_input_allowed(source, bytes, choice, &|_| Ok(()))
}

/// Says whether a parser may be used for an input: `Err(reason)` refuses it.
pub type ParserPermit<'a> = dyn Fn(&'static dyn Parser) -> Result<(), String> + Sync + 'a;

/// Like [`parse_input`], for an input that may use only the parsers `allowed` permits (a scoped
/// ingest token): a record whose parser (the fixed one, or the one sniffing picks) is refused
/// is rejected with `allowed`'s reason, naming that parser, instead of being parsed. Its
/// siblings are still parsed.
pub fn parse_input_allowed(
    source: &str,
    bytes: &[u8],
    choice: ParserChoice,
    allowed: &ParserPermit<'_>,
) -> ParseReport {
    let mut report = ParseReport::default();
    let mut documents = decode(source, bytes, &mut report);
    // Nearly every record becomes one finding: grow the vector once, not by doubling.
    report.findings.reserve(documents.len());
    let parse =
        |p: &'static dyn Parser, doc: &mut Document, report: &mut ParseReport| match allowed(p) {
            Ok(()) => p.parse(doc, report),
            Err(reason) => report.reject(doc, p.id(), "", reason),
        };
    for doc in &mut documents {
        match choice {
            ParserChoice::Fixed(p) => parse(p, doc, &mut report),
            ParserChoice::Auto => match sniff(&doc.value) {
                Some(p) => parse(p, doc, &mut report),
                None => {
                    let tried: Vec<&str> = PARSERS.iter().map(|p| p.id()).collect();
                    report.reject(
                        doc,
                        "auto",
                        "",
                        format!(
                            "no parser recognised this record (tried {})",
                            tried.join(", ")
                        ),
                    );
                }
            },
        }
    }
    report
}

/// Helpers for parsers: typed access to a JSON record that reports the pointer on failure.
pub(crate) mod access {
    use serde_json::Value;

    /// A field error: JSON pointer and reason.
    pub type FieldError = (String, String);

    /// Appends an RFC 6901 escaped key to a pointer.
    pub fn join(base: &str, key: &str) -> String {
        let escaped = key.replace('~', "~0").replace('/', "~1");
        format!("{base}/{escaped}")
    }

    /// A required string field.
    pub fn req_str<'a>(v: &'a Value, base: &str, key: &str) -> Result<&'a str, FieldError> {
        match v.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(Value::String(_)) => Err((join(base, key), "must not be empty".into())),
            Some(other) => Err((
                join(base, key),
                format!("expected a string, found {}", kind(other)),
            )),
            None => Err((join(base, key), "required field is missing".into())),
        }
    }

    /// An optional string field; a present non-string is an error.
    pub fn opt_str<'a>(v: &'a Value, base: &str, key: &str) -> Result<Option<&'a str>, FieldError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err((
                join(base, key),
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    /// An optional object field; a present non-object is an error.
    pub fn opt_obj<'a>(
        v: &'a Value,
        base: &str,
        key: &str,
    ) -> Result<Option<&'a Value>, FieldError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(o @ Value::Object(_)) => Ok(Some(o)),
            Some(other) => Err((
                join(base, key),
                format!("expected an object, found {}", kind(other)),
            )),
        }
    }

    /// The JSON type name of a value, for messages.
    pub fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}
