//! Registry tests: every real fixture is claimed by exactly one parser, parses with no
//! rejection, and its canonical findings are snapshotted. A fixture directory that no parser
//! claims fails here, so a new format cannot be added without its parser (and vice versa).

use std::path::{Path, PathBuf};

use firebreak::finding::{PARSERS, ParseReport, ParserChoice, decode, known_sources, parse_input};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/findings");

/// The parser expected for a fixture: its directory's name, except ASFF files written by other
/// tools, which the Security Hub parser reads (keeping the tool as the finding's `source`).
fn expected_parser(dir: &str, file: &str) -> String {
    if file.contains("asff") {
        "securityhub".to_owned()
    } else {
        dir.to_owned()
    }
}

fn fixture_files() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "fixture directory {name} is empty");
        out.extend(files.into_iter().map(|f| (name.clone(), f)));
    }
    out
}

fn redact_ids(report: &ParseReport) -> Value {
    let mut v = serde_json::to_value(&report.findings).unwrap();
    for f in v.as_array_mut().unwrap() {
        f["id"] = json!("[ulid]");
    }
    json!({ "findings": v, "skipped": report.skipped })
}

#[test]
fn every_fixture_is_claimed_by_exactly_one_parser_and_parses_cleanly() {
    let files = fixture_files();
    assert!(files.len() >= 7, "fixtures missing: {files:?}");
    let sources = known_sources();
    for (dir, path) in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let rel = format!("{dir}/{file}");
        let bytes = std::fs::read(&path).unwrap();
        let expected = expected_parser(&dir, &file);
        assert!(
            PARSERS.iter().any(|p| p.id() == expected),
            "{rel}: no parser `{expected}` for this fixture directory"
        );

        let mut scratch = ParseReport::default();
        for doc in decode(&rel, &bytes, &mut scratch) {
            let claimed: Vec<&str> = PARSERS
                .iter()
                .filter(|p| p.sniff(&doc.value))
                .map(|p| p.id())
                .collect();
            assert_eq!(
                claimed,
                [expected.as_str()],
                "{rel} record {}: formats must not overlap",
                doc.index
            );
        }
        assert!(
            scratch.rejected.is_empty(),
            "{rel}: {:#?}",
            scratch.rejected
        );

        let report = parse_input(&rel, &bytes, ParserChoice::Auto);
        assert!(report.rejected.is_empty(), "{rel}: {:#?}", report.rejected);
        assert!(
            !report.findings.is_empty() || report.skipped > 0,
            "{rel}: nothing found and nothing counted"
        );
        for f in &report.findings {
            assert!(
                sources.contains(&f.source.as_str()),
                "{rel}: undeclared source {}",
                f.source
            );
        }
        // Auto-detection and the explicit parser agree.
        let fixed = parse_input(&rel, &bytes, ParserChoice::from_id(&expected).unwrap());
        assert_eq!(fixed.findings.len(), report.findings.len(), "{rel}");
        let stem = file.split('.').next().unwrap_or(&file).to_owned();
        insta::assert_json_snapshot!(format!("{dir}__{stem}"), redact_ids(&report));
    }
}

#[test]
fn unknown_input_is_rejected_with_the_parsers_tried() {
    // A real fixture wrapped so that no format claims it.
    let bytes =
        std::fs::read(Path::new(FIXTURES).join("falco/terminal-shell-in-container.json")).unwrap();
    let inner: Value = serde_json::from_slice(&bytes).unwrap();
    let wrapped = serde_json::to_vec(&json!({ "wrapped": inner })).unwrap();
    let report = parse_input("wrapped.json", &wrapped, ParserChoice::Auto);
    assert!(report.findings.is_empty());
    let reason = &report.rejected[0].reason;
    for p in PARSERS {
        assert!(reason.contains(p.id()), "{reason}");
    }
}

/// Every way of breaking a value that the robustness test tries.
fn corruptions() -> Vec<(&'static str, Value)> {
    vec![
        ("number", json!(7)),
        ("null", Value::Null),
        ("array", json!([1, "x"])),
        ("object", json!({"unexpected": true})),
        ("long string", Value::String("A".repeat(64 << 10))),
        ("empty string", json!("")),
    ]
}

/// JSON pointers of every value in `v` down to `depth` levels (arrays: first element only).
fn pointers(v: &Value, base: String, depth: usize, out: &mut Vec<String>) {
    if depth == 0 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{base}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, depth - 1, out);
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                let p = format!("{base}/0");
                out.push(p.clone());
                pointers(first, p, depth - 1, out);
            }
        }
        _ => {}
    }
}

/// `v` with every array inside it emptied: the same shape, holding no records.
fn emptied(v: &Value) -> Value {
    match v {
        Value::Array(_) => json!([]),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, child)| (k.clone(), emptied(child)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a rejection at pointer `at` names the corrupted field `ptr`: the field itself, a
/// field inside it (a replaced object lacks a required member), or the object or record holding
/// it (the root `""` when no parser recognised the record any more).
fn names_the_field(at: &str, ptr: &str) -> bool {
    at == ptr || ptr.starts_with(&format!("{at}/")) || at.starts_with(&format!("{ptr}/"))
}

/// Fields whose value decides whether a record is a finding at all: GitHub webhooks with an
/// `action` Firebreak does not act on are skipped (and counted), whatever the action says.
const DECIDES_SKIPPING: &[&str] = &["/action"];

#[test]
fn corrupted_fixtures_are_rejected_or_parsed_never_panic_and_never_echo() {
    // Derived from every real fixture: each value down to three levels is replaced by a value of
    // the wrong type (or a 64 KiB string). Nothing is dropped silently: the parser either still
    // produces a finding (the field was optional), or rejects the record at a pointer naming the
    // corrupted field, or counts it as skipped as before (a record that is not a finding by
    // design), or — when the corruption is `null` (Go writes an empty list so) or an object in
    // place of an object — reads a clean report because no record is left, exactly as the same
    // field with its lists emptied reads. It never panics, and a rejection never echoes the
    // planted value.
    let mut cases = 0usize;
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for (dir, path) in fixture_files() {
        let rel = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
        let bytes = std::fs::read(&path).unwrap();
        let mut scratch = ParseReport::default();
        let docs = decode(&rel, &bytes, &mut scratch);
        for doc in docs.iter().take(1) {
            let parse =
                |v: &Value| parse_input(&rel, &serde_json::to_vec(v).unwrap(), ParserChoice::Auto);
            let original = parse(&doc.value);
            assert!(
                original.rejected.is_empty()
                    && (!original.findings.is_empty() || original.skipped > 0),
                "{rel}: the uncorrupted record reads cleanly"
            );
            let mut ptrs = Vec::new();
            pointers(&doc.value, String::new(), 3, &mut ptrs);
            for ptr in ptrs.iter().take(30) {
                for (what, bad) in corruptions() {
                    let mut v = doc.value.clone();
                    *v.pointer_mut(ptr).unwrap() = bad.clone();
                    let report = parse(&v);
                    cases += 1;
                    for r in &report.rejected {
                        assert!(
                            !r.reason.contains("AAAAAAAAAAAAAAAA"),
                            "{rel} {ptr} ({what}): reason echoes the payload"
                        );
                        assert!(
                            r.reason.len() < 2_000,
                            "{rel} {ptr} ({what}): reason too long"
                        );
                    }
                    let outcome = if !report.findings.is_empty() {
                        "parsed"
                    } else if report
                        .rejected
                        .iter()
                        .any(|r| names_the_field(&r.pointer, ptr) && !r.reason.is_empty())
                    {
                        "rejected at the field"
                    } else if report.skipped > 0
                        && (original.skipped > 0 || DECIDES_SKIPPING.contains(&ptr.as_str()))
                    {
                        "skipped"
                    } else if (bad.is_null()
                        || (bad.is_object()
                            && doc.value.pointer(ptr).is_some_and(Value::is_object)))
                        && report.rejected.is_empty()
                        && report.skipped == 0
                        && {
                            let mut clean = doc.value.clone();
                            *clean.pointer_mut(ptr).unwrap() =
                                emptied(doc.value.pointer(ptr).unwrap());
                            let r = parse(&clean);
                            r.findings.is_empty() && r.rejected.is_empty() && r.skipped == 0
                        }
                    {
                        "a clean report"
                    } else {
                        let rejected: Vec<(&str, &str)> = report
                            .rejected
                            .iter()
                            .map(|r| (r.pointer.as_str(), r.reason.as_str()))
                            .collect();
                        panic!(
                            "{rel} {ptr} ({what}): dropped silently: {} finding(s), \
                             rejections {rejected:?}, {} skipped",
                            report.findings.len(),
                            report.skipped
                        );
                    };
                    *outcomes.entry(outcome).or_default() += 1;
                }
            }
        }
    }
    assert!(cases > 300, "only {cases} corruptions tried");
    // Most corruptions are read or rejected at the field; the other outcomes are exceptions.
    assert!(
        outcomes["parsed"] + outcomes["rejected at the field"] > cases / 2,
        "{outcomes:?}"
    );
}

#[test]
fn a_multi_megabyte_field_is_handled_without_echo() {
    // The 8 MiB title/output of a real Falco event (derived: only `output` changed).
    let bytes =
        std::fs::read(Path::new(FIXTURES).join("falco/terminal-shell-in-container.json")).unwrap();
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["output"] = Value::String(format!(
        "13:44:05.478445995: Critical {}",
        "B".repeat(8 << 20)
    ));
    let report = parse_input(
        "huge.json",
        &serde_json::to_vec(&v).unwrap(),
        ParserChoice::Auto,
    );
    assert_eq!(report.findings.len(), 1, "{:?}", report.rejected);
    let f = &report.findings[0];
    assert!(
        f.title.len() < 4_000 && f.title.ends_with("[truncated]"),
        "title is capped"
    );
    let fields = serde_json::to_string(&f.fields).unwrap();
    assert!(
        fields.len() < 64 << 10,
        "field strings are capped: {} bytes",
        fields.len()
    );
    for r in &report.rejected {
        assert!(!r.reason.contains("BBBBBBBB"), "reason echoes the payload");
    }
}

#[test]
fn truncated_fixtures_are_rejected_with_a_reason() {
    for (dir, path) in fixture_files() {
        let rel = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
        let bytes = std::fs::read(&path).unwrap();
        if bytes.first().is_some_and(|b| !matches!(b, b'{' | b'[')) {
            continue; // YAML: covered by the YAML tests
        }
        // Cut inside the first record so no complete document remains.
        let cut = (bytes.len() / 2).min(200);
        let report = parse_input(&rel, &bytes[..cut], ParserChoice::Auto);
        assert!(report.findings.is_empty(), "{rel}");
        assert!(
            !report.rejected.is_empty(),
            "{rel}: truncated input must be rejected"
        );
        assert!(
            report.rejected.iter().all(|r| !r.reason.is_empty()),
            "{rel}"
        );
    }
}

#[test]
fn deeply_nested_input_is_rejected_without_overflowing_the_stack() {
    let depth = 100_000;
    let input = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let report = parse_input("deep.json", input.as_bytes(), ParserChoice::Auto);
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    let input = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let report = parse_input("deep.json", input.as_bytes(), ParserChoice::Auto);
    assert_eq!(report.rejected.len(), 1);
}
