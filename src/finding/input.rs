//! Splitting raw input into JSON documents: one document, an array of records, concatenated
//! documents, or JSON lines. A line that is not JSON is rejected on its own; its siblings stay.
//!
//! Input that looks like YAML (`kubectl get -o yaml`, a `---`-separated stream) is read with
//! serde-saphyr into the same JSON values, one document per YAML document, under a tight
//! [`yaml_options`] budget so an alias bomb or a deeply nested input fails fast instead of
//! exhausting memory or the stack. Anything else keeps the JSON path and its JSON error messages.

use serde_json::Value;

use super::ParseReport;

/// One record-bearing JSON document from an input.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where the input came from (path, `stdin`, route).
    pub source: String,
    /// 0-based record index in the input.
    pub index: usize,
    /// 1-based line, for line-oriented input.
    pub line: Option<usize>,
    /// The decoded JSON.
    pub value: Value,
}

/// Decodes `bytes` into documents. Top-level arrays are split into one document per element.
/// Problems with the input as a whole (not text, empty, not JSON) are recorded in `report`.
pub fn decode(source: &str, bytes: &[u8], report: &mut ParseReport) -> Vec<Document> {
    let whole = |report: &mut ParseReport, reason: String| {
        report.rejected.push(super::Rejection {
            source: source.to_owned(),
            parser: "auto".to_owned(),
            index: 0,
            line: None,
            pointer: String::new(),
            reason,
        });
    };
    if bytes.contains(&0) {
        whole(report, "input is binary data, not JSON text".into());
        return Vec::new();
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        whole(report, "input is not valid UTF-8 text".into());
        return Vec::new();
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        whole(report, "input is empty: expected JSON or JSON lines".into());
        return Vec::new();
    }

    if looks_like_yaml(text) {
        return decode_yaml(source, text, report);
    }

    // Fast path: one or more whole JSON documents.
    let mut values = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let stream_error = loop {
        match stream.next() {
            Some(Ok(v)) => values.push(v),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    let Some(err) = stream_error else {
        return split(source, values, None);
    };

    // Line-oriented fallback: each non-empty line is a record of its own.
    let mut docs = Vec::new();
    let mut bad = Vec::new();
    let mut parsed_any = false;
    let mut index = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => {
                parsed_any = true;
                docs.push(Document {
                    source: source.to_owned(),
                    index,
                    line: Some(n + 1),
                    value: v,
                });
            }
            Err(e) => bad.push((index, n + 1, e)),
        }
        index += 1;
    }
    if !parsed_any {
        // Not line-oriented: report the first error of the whole document, with its position.
        whole(
            report,
            format!(
                "invalid JSON at line {} column {}: {}",
                err.line(),
                err.column(),
                describe(&err)
            ),
        );
        return Vec::new();
    }
    for (index, line, e) in bad {
        report.rejected.push(super::Rejection {
            source: source.to_owned(),
            parser: "auto".to_owned(),
            index,
            line: Some(line),
            pointer: String::new(),
            reason: format!("invalid JSON at column {}: {}", e.column(), describe(&e)),
        });
    }
    docs
}

/// serde_json's message without its trailing position (we print our own) and without echoing
/// any of the payload.
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of input (truncated?)".to_owned(),
        Category::Syntax => {
            let msg = e.to_string();
            msg.split(" at line ")
                .next()
                .unwrap_or("syntax error")
                .to_owned()
        }
        Category::Data | Category::Io => "invalid data".to_owned(),
    }
}

/// Whether `text` should be read as YAML: its first meaningful line (after blank lines and `#`
/// comments) is a document marker (`---`, `%YAML`) or a block-mapping `key:` line such as
/// `apiVersion: v1`. JSON input (first character `{` or `[`) never is, so random text keeps
/// getting the JSON error message.
fn looks_like_yaml(text: &str) -> bool {
    let Some(first) = text
        .lines()
        .map(str::trim_end)
        .find(|l| !l.trim_start().is_empty() && !l.trim_start().starts_with('#'))
    else {
        return false;
    };
    if first.starts_with("---") || first.starts_with("%YAML") {
        return true;
    }
    // A block mapping starts at column 0 with a plain key followed by `:` and a space or the
    // end of the line: `apiVersion: v1`, `report:`.
    let Some((key, rest)) = first.split_once(':') else {
        return false;
    };
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        && (rest.is_empty() || rest.starts_with(' '))
}

/// The limits YAML input is parsed under. Scanner reports have no anchors or aliases to speak of
/// and are a few levels deep, so the limits are far below serde-saphyr's defaults: a "billion
/// laughs" alias bomb trips the alias limits after a few thousand replayed events, and nesting
/// beyond 64 levels is refused before it can threaten the stack. Node and event counts stay high
/// enough for a cluster-wide `VulnerabilityReportList`.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 100_000,
            max_recorded_anchor_bytes: 4 * 1024 * 1024,
            max_merge_keys: 100,
            max_depth: 64,
            flow_nesting_limit: 64,
            max_documents: 10_000,
            max_nodes: 5_000_000,
            max_events: 10_000_000,
            max_inclusion_depth: 0,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 10_000,
            max_replay_stack_depth: 8,
            max_alias_expansions_per_anchor: 1_000,
        },
        with_snippet: false,
    }
}

/// Decodes a YAML stream: one document per YAML document (top-level sequences split like JSON
/// arrays). A syntax error or a budget breach rejects the whole input with its line and column;
/// the reason never quotes the input.
fn decode_yaml(source: &str, text: &str, report: &mut ParseReport) -> Vec<Document> {
    match serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options()) {
        Ok(values) => {
            if values.is_empty() {
                report.rejected.push(super::Rejection {
                    source: source.to_owned(),
                    parser: "auto".to_owned(),
                    index: 0,
                    line: None,
                    pointer: String::new(),
                    reason: "YAML input holds no document".to_owned(),
                });
            }
            split(source, values, None)
        }
        Err(e) => {
            use serde_saphyr::MessageFormatter as _;
            let message = serde_saphyr::UserMessageFormatter.format_message(&e);
            // The formatter's text may in principle quote a scalar: keep it short, on one
            // line, and scrubbed.
            let message: String = message
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let message = crate::redact::scrub(&message);
            let (line, reason) = match e.location() {
                Some(at) => (
                    usize::try_from(at.line()).ok(),
                    format!(
                        "invalid YAML at line {} column {}: {message}",
                        at.line(),
                        at.column()
                    ),
                ),
                None => (None, format!("invalid YAML: {message}")),
            };
            report.rejected.push(super::Rejection {
                source: source.to_owned(),
                parser: "auto".to_owned(),
                index: 0,
                line,
                pointer: String::new(),
                reason,
            });
            Vec::new()
        }
    }
}

fn split(source: &str, values: Vec<Value>, line: Option<usize>) -> Vec<Document> {
    let mut docs = Vec::new();
    for v in values {
        match v {
            Value::Array(items) => {
                for item in items {
                    docs.push(Document {
                        source: source.to_owned(),
                        index: docs.len(),
                        line,
                        value: item,
                    });
                }
            }
            other => docs.push(Document {
                source: source.to_owned(),
                index: docs.len(),
                line,
                value: other,
            }),
        }
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> (Vec<Document>, ParseReport) {
        let mut r = ParseReport::default();
        let d = decode("test", input.as_bytes(), &mut r);
        (d, r)
    }

    #[test]
    fn arrays_and_lines_become_records() {
        assert_eq!(run("[{\"a\":1},{\"b\":2}]").0.len(), 2);
        assert_eq!(run("{\"a\":1}\n{\"b\":2}\n").0.len(), 2);
        assert_eq!(run("{\n \"a\": 1\n}\n{\n \"b\": 2\n}").0.len(), 2);
    }

    #[test]
    fn a_bad_line_is_rejected_alone() {
        let (docs, r) = run("{\"a\":1}\n{\"b\":\n{\"c\":3}\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].line, Some(2));
        assert_eq!(r.rejected[0].index, 1);
    }

    #[test]
    fn whole_input_problems_are_named() {
        assert!(run("").1.rejected[0].reason.contains("empty"));
        assert!(
            run("{\"a\":\n  1,").1.rejected[0]
                .reason
                .contains("truncated")
        );
        let mut r = ParseReport::default();
        decode("bin", &[0x7f, b'E', b'L', b'F', 0, 1], &mut r);
        assert!(r.rejected[0].reason.contains("binary"));
    }

    #[test]
    fn yaml_documents_become_records() {
        let (docs, r) = run("apiVersion: v1\nkind: A\n---\napiVersion: v1\nkind: B\n");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value["kind"], "B");
        assert_eq!(docs[1].index, 1);
        let (docs, _) = run("# a comment\n---\n- a: 1\n- b: 2\n");
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn yaml_errors_name_the_line() {
        let (docs, r) = run("apiVersion: v1\nkind: [unclosed\nmetadata: {}\n");
        assert!(docs.is_empty());
        assert_eq!(r.rejected.len(), 1);
        let reason = &r.rejected[0].reason;
        assert!(reason.starts_with("invalid YAML at line "), "{reason}");
        assert!(r.rejected[0].line.is_some());
    }

    #[test]
    fn text_that_is_not_yaml_like_keeps_the_json_error() {
        let (_, r) = run("hello world\n");
        assert!(r.rejected[0].reason.starts_with("invalid JSON"), "{r:?}");
        assert!(!looks_like_yaml("{\"a\": 1}"));
        assert!(!looks_like_yaml("http://example.com"));
        assert!(looks_like_yaml("\n# c\napiVersion: v1"));
        assert!(looks_like_yaml("report:\n  x: 1"));
    }
}
