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
