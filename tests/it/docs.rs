//! docs/: the generated reference pages equal what `firebreak docs generate` writes now, and
//! the hand-written operations and security-model pages name only what exists (metrics the
//! service exports, tests that prove each claim).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn firebreak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(args)
        .env_clear()
        .output()
        .expect("run firebreak")
}

const GENERATED: [&str; 3] = ["playbooks.md", "actions.md", "parsers.md"];

#[test]
fn the_generated_reference_pages_are_current() {
    // Generate into a copy of docs/ (parsers.md keeps its hand-written prose around the
    // generated tables) and compare with what is committed.
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(repo("docs/parsers.md"), out.path().join("parsers.md")).unwrap();
    let run = firebreak(&["docs", "generate", "--out", out.path().to_str().unwrap()]);
    assert!(run.status.success(), "{run:?}");
    let mut stale = Vec::new();
    for page in GENERATED {
        let want = std::fs::read_to_string(out.path().join(page)).unwrap();
        if read(&format!("docs/{page}")) != want {
            stale.push(format!("docs/{page}"));
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {stale:?}\nhint: run `cargo run -- docs generate` (writes docs/) and commit the result"
    );
}

#[test]
fn docs_generate_check_names_a_stale_page_and_the_command_that_fixes_it() {
    let out = tempfile::tempdir().unwrap();
    for page in GENERATED {
        std::fs::copy(repo(&format!("docs/{page}")), out.path().join(page)).unwrap();
    }
    let dir = out.path().to_str().unwrap();
    let clean = firebreak(&["docs", "generate", "--out", dir, "--check"]);
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");

    // An action's section edited by hand is stale; --check changes nothing and says so.
    let edited = read("docs/actions.md").replace("## notify.webhook", "## notify.webhook (edited)");
    std::fs::write(out.path().join("actions.md"), &edited).unwrap();
    let check = firebreak(&["docs", "generate", "--out", dir, "--check"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("actions.md"), "{stderr}");
    assert!(!stderr.contains("playbooks.md"), "{stderr}");
    assert!(
        stderr.contains(&format!("hint: run `firebreak docs generate --out {dir}`")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("actions.md")).unwrap(),
        edited
    );
}

#[test]
fn docs_generate_refuses_a_parsers_page_without_its_markers() {
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("parsers.md"), "# Parsers\n").unwrap();
    let run = firebreak(&["docs", "generate", "--out", out.path().to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(String::from_utf8_lossy(&run.stderr).contains("BEGIN GENERATED"));
    assert!(!out.path().join("actions.md").exists(), "nothing written");
}

#[test]
fn the_action_reference_documents_every_parameter_each_action_accepts() {
    // The parameter tables come from the types `validate` reads: a key the page lists is
    // accepted, and an unknown key is refused, for every action.
    let page = read("docs/actions.md");
    for a in firebreak::action::ACTIONS {
        assert!(
            page.contains(&format!("\n## {}\n", a.kind())),
            "{}",
            a.kind()
        );
        let schema = serde_json::to_value(a.params_schema()).unwrap();
        if let Some(props) = schema["properties"].as_object() {
            for key in props.keys() {
                assert!(
                    page.contains(&format!("| `{key}` |")),
                    "{}: {key} not documented",
                    a.kind()
                );
            }
        }
        let problems = a.validate(&serde_json::json!({"no_such_key": 1}));
        assert!(
            problems.iter().any(|p| p.message.contains("no_such_key")),
            "{}: an unknown key is refused: {problems:?}",
            a.kind()
        );
    }
}
