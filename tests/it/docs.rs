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
fn the_action_reference_shows_what_each_action_plans_on_a_real_finding_without_access() {
    // Every action but one (no fixture holds an exposed dashboard) shows the plan it makes for
    // its example step on a real finding, and that plan says it read nothing.
    let page = read("docs/actions.md");
    for a in firebreak::action::ACTIONS {
        let start = page.find(&format!("\n## {}\n", a.kind())).unwrap();
        let section = &page[start + 1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let plan = section
            .split_once("### Its plan, without access")
            .map(|(_, rest)| rest);
        if a.kind() == "kubernetes.secure-dashboard" {
            assert!(plan.is_none(), "a new fixture? show its plan");
            continue;
        }
        let plan = plan.unwrap_or_else(|| panic!("{}: no plan shown", a.kind()));
        assert!(
            plan.contains("NOT CONNECTED") || plan.contains("NOT CONFIGURED"),
            "{}: {plan}",
            a.kind()
        );
        assert!(plan.contains("tests/fixtures/findings/"), "{}", a.kind());
    }
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

/// Every test a page cites (in backticks) as `module::name`, or `module::backend::name` for a
/// store conformance test, as its path components.
fn citations(text: &str) -> Vec<Vec<String>> {
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|quoted| quoted.split("::").map(str::to_owned).collect::<Vec<_>>())
        .filter(|parts| (2..=3).contains(&parts.len()) && parts.iter().all(|p| word(p)))
        .collect()
}

/// Whether `tests/it/{module}.rs` defines the test the path names.
fn is_test(parts: &[String]) -> bool {
    let Ok(source) = std::fs::read_to_string(repo(&format!("tests/it/{}.rs", parts[0]))) else {
        return false;
    };
    let name = &parts[parts.len() - 1];
    if parts.len() == 3 {
        // `conformance!(…)` runs each listed body once per backend module.
        return ["sqlite", "postgres"].contains(&parts[1].as_str())
            && source
                .split_once("conformance!(")
                .is_some_and(|(_, list)| list.contains(&format!("\n    {name},\n")));
    }
    source
        .split_once(&format!("fn {name}()"))
        .is_some_and(|(before, _)| {
            let before = before.trim_end();
            let before = before.strip_suffix("async").unwrap_or(before).trim_end();
            // An attribute closes right before it: #[test], #[tokio::test], #[tokio::test(…)].
            before.ends_with(']')
        })
}

#[test]
fn every_test_the_docs_cite_exists() {
    let mut cited = 0;
    for page in ["docs/operations.md", "docs/security-model.md"] {
        let found = citations(&read(page));
        assert!(found.len() >= 5, "{page}: only {} citations", found.len());
        for parts in found {
            assert!(
                is_test(&parts),
                "{page} cites `{}`, which is not a test in tests/it/{}.rs",
                parts.join("::"),
                parts[0]
            );
            cited += 1;
        }
    }
    assert!(cited > 40, "{cited}");
}

#[test]
fn every_claim_of_the_security_model_names_a_test() {
    // A claim is one list item (a line starting `- ` and the lines continuing it).
    let text = read("docs/security-model.md");
    let mut items: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("- ") {
            items.push(rest.to_owned());
        } else if line.starts_with("  ") && !items.is_empty() {
            let last = items.len() - 1;
            items[last].push_str(line);
        } else if line.trim().is_empty() || line.starts_with('#') {
            items.push(String::new());
        }
    }
    let claims: Vec<&String> = items.iter().filter(|i| !i.is_empty()).collect();
    assert!(claims.len() >= 20, "{}", claims.len());
    for claim in claims {
        assert!(!citations(claim).is_empty(), "no test named for: {claim}");
    }
}

/// The metric families `/metrics` serves, each with its type, as the registry renders them. A
/// family with labels is rendered once it has a sample, so one is recorded in each; the count
/// of families registered in the source makes sure none is left out.
fn exported_metrics() -> Vec<(String, String)> {
    let m = firebreak::telemetry::metrics::Metrics::new();
    m.received("falco", 1);
    m.rejected("falco", 1);
    m.deduplicated("falco");
    m.http_request("/v1/findings/{parser}", 202);
    m.commit(1, 0.01, true);
    m.set_queue_depth(1);
    m.set_executions(&[("pending_approval".to_owned(), 1)]);
    m.matched("stop-cryptominer");
    m.step("notify.webhook", "applied");
    m.finding_to_action(0.5);
    m.guard_drop("kill_switch");
    m.lease_lost();
    m.playbook_reload("swapped");
    m.sqs_messages("received", 1);
    m.sqs_error("receive");
    m.aws_rate_limited("base");
    let page = m.render();
    let families: Vec<(String, String)> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect();
    let registered = read("src/telemetry/metrics.rs")
        .matches("registry.register(")
        .count();
    assert_eq!(
        families.len(),
        registered,
        "a new metric family: record a sample of it here, and document it in docs/operations.md"
    );
    families
}

#[test]
fn the_operations_page_names_every_exported_metric_and_only_those() {
    let exported = exported_metrics();
    assert!(exported.len() >= 15, "{exported:?}");
    // The names a scrape shows: counters with `_total`, histograms with their series.
    let mut known = Vec::new();
    let mut documented_as = Vec::new();
    for (name, kind) in &exported {
        match kind.as_str() {
            "counter" => {
                known.push(format!("{name}_total"));
                documented_as.push(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["", "_bucket", "_count", "_sum"] {
                    known.push(format!("{name}{suffix}"));
                }
                documented_as.push(name.clone());
            }
            _ => {
                known.push(name.clone());
                documented_as.push(name.clone());
            }
        }
    }
    let page = read("docs/operations.md");
    for name in &documented_as {
        assert!(
            page.contains(&format!("| `{name}` |")),
            "docs/operations.md does not document `{name}`"
        );
    }
    let mut named = 0;
    for (i, _) in page.match_indices("firebreak_") {
        // A metric name starts a word (`…_by_firebreak_serve` is a test's name).
        if page[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let word: String = page[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if word == "firebreak_" {
            continue; // the prefix itself
        }
        assert!(
            known.contains(&word),
            "docs/operations.md names `{word}`, which the service does not export"
        );
        named += 1;
    }
    assert!(named >= documented_as.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_copied_with_vacuum_into_while_serving_verifies() {
    use sqlx::Connection;

    let rx = crate::support::receiver::Receiver::start().await;
    let playbooks = crate::service::playbook_dir(&rx.url("/hook"));
    let dir = tempfile::tempdir().unwrap();
    let svc = crate::service::start_with(dir.path(), playbooks.path(), 60, &[]);
    let client = reqwest::Client::new();
    let mut events = crate::service::events(40).into_iter();
    for body in events.by_ref().take(20) {
        assert_eq!(
            crate::service::post(&client, &svc.addr, body).await,
            reqwest::StatusCode::ACCEPTED
        );
    }
    // Keep posting while the copy is taken: the service keeps writing to its WAL.
    let addr = svc.addr.clone();
    let rest: Vec<Vec<u8>> = events.collect();
    let posting = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for body in rest {
            assert_eq!(
                crate::service::post(&client, &addr, body).await,
                reqwest::StatusCode::ACCEPTED
            );
        }
    });
    let copy = dir.path().join("backup.db");
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&ledger).await.unwrap();
    sqlx::query("VACUUM INTO ?")
        .bind(copy.display().to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    posting.await.unwrap();

    let verify = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "verify", "--format", "json"])
        .env_clear()
        .env(
            "FIREBREAK_STORE__URL",
            format!("sqlite://{}", copy.display()),
        )
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    // The copy holds at least the audit records of the first 20 findings, acknowledged before.
    assert!(
        report["records"].as_u64().is_some_and(|n| n >= 20),
        "{report}"
    );
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
}
