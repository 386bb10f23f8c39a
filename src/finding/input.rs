//! Splitting raw input into JSON documents: one document, an array of records, concatenated
//! documents, or JSON lines. A line that is not JSON is rejected on its own; its siblings stay.

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
}
