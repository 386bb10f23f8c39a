//! The `firebreak` binary as a user runs it: exit codes, stdout/stderr, bad input.

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::fixtures::{self, FALCO_K8S_API, FALCO_SHELL, GD_TROJAN};
use crate::support::receiver::Receiver;

/// Runs the binary with a clean environment plus `env`, feeding `stdin`.
fn firebreak_with(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    // Each invocation gets a ledger of its own unless the test names one: `run` records into
    // the store by default, and tests must not share one through the working directory.
    let ledger = tempfile::tempdir().expect("tempdir");
    let store_url = format!("sqlite://{}", ledger.path().join("firebreak.db").display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    cmd.args(args).env_clear();
    if !env.iter().any(|(k, _)| *k == "FIREBREAK_STORE__URL") {
        cmd.env("FIREBREAK_STORE__URL", &store_url);
    }
    cmd.envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn firebreak");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    child.wait_with_output().expect("wait for firebreak")
}

fn firebreak(args: &[&str]) -> Output {
    firebreak_with(args, &[], b"")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixture(rel: &str) -> String {
    fixtures::path(rel).to_string_lossy().into_owned()
}

/// A playbook directory with one playbook notifying `url` about runtime threats.
fn playbook_dir(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("notify.yaml"),
        format!(
            "name: notify-runtime\nmatch:\n  class: runtime-threat\n  severity: \">= high\"\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{url}\"}}\n"
        ),
    )
    .expect("write playbook");
    dir
}

#[test]
fn findings_parse_prints_a_table_and_exits_zero() {
    let o = firebreak(&["findings", "parse", &fixture(FALCO_SHELL)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("critical") && out.contains("Terminal shell in container"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("1 finding(s), 0 rejected"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn findings_parse_json_is_one_document() {
    let o = firebreak(&["findings", "parse", "--format", "json", &fixture(GD_TROJAN)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stdout is JSON");
    assert_eq!(doc["findings"][0]["rule"], "Trojan:EC2/DropPoint!DNS");
    assert_eq!(doc["findings"][0]["source"], "guardduty");
    assert_eq!(doc["rejected"], serde_json::json!([]));
}

#[test]
fn findings_from_stdin_with_a_bad_line_keep_the_good_ones() {
    // Two real Falco lines around a truncated copy of one of them.
    let line = String::from_utf8(fixtures::bytes(FALCO_SHELL)).expect("utf8");
    let line = line.trim_end();
    let input = format!("{line}\n{}\n{line}\n", &line[..line.len() / 2]);
    let o = firebreak_with(
        &["findings", "parse", "--format", "json", "-"],
        &[],
        input.as_bytes(),
    );
    assert_eq!(code(&o), 1, "a rejected record exits 1");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stdout is JSON");
    assert_eq!(doc["findings"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["rejected"][0]["line"], 2);
    assert_eq!(doc["rejected"][0]["source"], "stdin");
}

/// `server.max_records_per_request` caps HTTP requests, not a file given to `firebreak run`.
#[test]
fn run_reads_a_file_of_more_records_than_the_per_request_cap() {
    let dir = playbook_dir("http://127.0.0.1:9/hook");
    let pdir = dir.path().to_string_lossy().into_owned();
    let input = [FALCO_SHELL, FALCO_K8S_API]
        .iter()
        .map(|f| {
            String::from_utf8(fixtures::bytes(f))
                .expect("utf8")
                .trim()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let o = firebreak_with(
        &[
            "run",
            "--playbooks",
            &pdir,
            "--finding",
            "-",
            "--dry-run",
            "--format",
            "json",
        ],
        &[("FIREBREAK_SERVER__MAX_RECORDS_PER_REQUEST", "1")],
        input.as_bytes(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stdout is JSON");
    assert_eq!(doc["findings"].as_array().map(Vec::len), Some(2), "{doc}");
}

#[test]
fn binary_empty_missing_and_directory_inputs_get_clear_errors() {
    let bin = firebreak_with(
        &["findings", "parse", "-"],
        &[],
        &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0],
    );
    assert_eq!(code(&bin), 1);
    assert!(
        stderr(&bin).contains("stdin") && stderr(&bin).contains("binary"),
        "{}",
        stderr(&bin)
    );

    let empty = firebreak_with(&["findings", "parse", "-"], &[], b"");
    assert_eq!(code(&empty), 1);
    assert!(stderr(&empty).contains("empty"), "{}", stderr(&empty));

    let missing = firebreak(&["findings", "parse", "/nonexistent/findings.json"]);
    assert_eq!(code(&missing), 2);
    assert!(
        stderr(&missing).contains("cannot read /nonexistent/findings.json"),
        "{}",
        stderr(&missing)
    );

    let dir = firebreak(&["findings", "parse", "tests"]);
    assert_eq!(code(&dir), 2);
    assert!(stderr(&dir).contains("is a directory"), "{}", stderr(&dir));

    for o in [&bin, &empty, &missing, &dir] {
        assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
    }
}

#[test]
fn unknown_parser_is_a_usage_error_with_a_hint() {
    let o = firebreak(&[
        "findings",
        "parse",
        "--parser",
        "falko",
        &fixture(FALCO_SHELL),
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("unknown parser `falko`")
            && stderr(&o).contains("did you mean `falco`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn forcing_the_wrong_parser_rejects_instead_of_panicking() {
    let o = firebreak(&[
        "findings",
        "parse",
        "--parser",
        "falco",
        &fixture(GD_TROJAN),
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("rejected:"), "{}", stderr(&o));
}

#[test]
fn playbooks_check_exit_codes() {
    let ok = firebreak(&["playbooks", "check", "playbooks"]);
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("ok  alert-cryptomining"),
        "{}",
        stdout(&ok)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("x.yaml"),
        "name: x\nmatch: {class: other}\nsteps: [{action: nope}]\n",
    )
    .expect("write");
    let bad = firebreak(&["playbooks", "check", &dir.path().to_string_lossy()]);
    assert_eq!(code(&bad), 1);
    assert!(
        stderr(&bad).contains("x.yaml:3:18: steps[0].action: unknown action `nope`"),
        "{}",
        stderr(&bad)
    );

    let json = firebreak(&[
        "playbooks",
        "check",
        "--format",
        "json",
        &dir.path().to_string_lossy(),
    ]);
    assert_eq!(code(&json), 1);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    assert_eq!(doc["problems"][0]["path"], "steps[0].action");
    assert_eq!(doc["problems"][0]["line"], 3);

    let missing = firebreak(&["playbooks", "check", "/nonexistent/dir"]);
    assert_eq!(code(&missing), 2);
    assert!(
        stderr(&missing).contains("cannot read playbook directory"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn playbooks_schema_prints_the_committed_schema() {
    let o = firebreak(&["playbooks", "schema"]);
    assert_eq!(code(&o), 0);
    let printed: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/schema.json"),
        )
        .expect("schema"),
    )
    .expect("JSON");
    assert_eq!(printed, committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_dry_run_plans_without_sending_and_prints_one_json_document() {
    let receiver = Receiver::start().await;
    let dir = playbook_dir(&receiver.url("/hook"));
    let pdir = dir.path().to_string_lossy().into_owned();
    let finding = fixture(FALCO_SHELL);
    let o = tokio::task::spawn_blocking(move || {
        firebreak(&[
            "run",
            "--playbooks",
            &pdir,
            "--finding",
            &finding,
            "--dry-run",
            "--format",
            "json",
        ])
    })
    .await
    .expect("join");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: serde_json::Value =
        serde_json::from_str(&stdout(&o)).expect("stdout is one JSON document");
    assert_eq!(doc["dry_run"], true);
    let exec = &doc["executions"][0];
    assert_eq!(exec["playbook"], "notify-runtime");
    assert_eq!(exec["finding_id"], doc["findings"][0]["id"]);
    let step = &exec["steps"][0];
    assert_eq!(step["action"], "notify.webhook");
    assert_eq!(step["status"], "planned");
    assert!(
        step["plan"]["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{step}"
    );
    assert!(step["outcome"].is_null());
    assert!(
        receiver.requests().is_empty(),
        "dry-run must not send anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_and_exit_code_reflects_step_failures() {
    let receiver = Receiver::start().await;
    let dir = playbook_dir(&receiver.url("/hook"));
    let pdir = dir.path().to_string_lossy().into_owned();
    let finding = fixture(FALCO_SHELL);
    let (p2, f2) = (pdir.clone(), finding.clone());
    let o = tokio::task::spawn_blocking(move || {
        firebreak(&["run", "--playbooks", &p2, "--finding", &f2])
    })
    .await
    .expect("join");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("applied"), "{}", stdout(&o));
    assert_eq!(receiver.requests().len(), 1);

    receiver.respond_with(400);
    let o = tokio::task::spawn_blocking(move || {
        firebreak(&[
            "run",
            "--playbooks",
            &pdir,
            "--finding",
            &finding,
            "--format",
            "json",
        ])
    })
    .await
    .expect("join");
    assert_eq!(code(&o), 1, "a failed step exits 1");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(doc["executions"][0]["steps"][0]["status"], "failed");
    assert!(
        doc["executions"][0]["steps"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
}

#[test]
fn run_with_the_kill_switch_parks_every_execution_and_sends_nothing() {
    let dir = playbook_dir("http://127.0.0.1:9/never");
    let o = firebreak_with(
        &[
            "run",
            "--playbooks",
            &dir.path().to_string_lossy(),
            "--finding",
            &fixture(FALCO_SHELL),
            "--format",
            "json",
        ],
        &[("FIREBREAK_ENGINE__KILL_SWITCH", "true")],
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    // Parked, not finalised: the step is reported paused (the service continues it after
    // `firebreak resume`); the webhook at port 9 was never called (it would fail the step).
    assert_eq!(
        doc["executions"][0]["steps"][0]["status"], "paused",
        "{doc}"
    );
    assert!(doc["executions"][0]["steps"][0]["plan"].is_null(), "{doc}");
    assert!(stderr(&o).contains("kill switch"), "{}", stderr(&o));
}

#[test]
fn run_refuses_invalid_playbooks_and_bad_config_with_exit_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("x.yaml"),
        "name: x\nmatch: {class: [nope]}\nsteps: [{action: notify.webhook}]\n",
    )
    .expect("write");
    let o = firebreak(&[
        "run",
        "--playbooks",
        &dir.path().to_string_lossy(),
        "--finding",
        &fixture(FALCO_SHELL),
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("x.yaml:2:16: match.class: unknown class `nope`"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("nothing was run"), "{}", stderr(&o));

    let o = firebreak_with(
        &["run", "--finding", &fixture(FALCO_SHELL), "--dry-run"],
        &[("FIREBREAK_ENGNE__DRY_RUN", "true")],
        b"",
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("FIREBREAK_ENGNE__DRY_RUN"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_reads_well_for_every_subcommand() {
    let top = firebreak(&["--help"]);
    assert_eq!(code(&top), 0);
    insta::assert_snapshot!("help_top", stdout(&top));
    let run = firebreak(&["run", "--help"]);
    insta::assert_snapshot!("help_run", stdout(&run));
    for sub in [
        vec!["findings", "parse", "--help"],
        vec!["playbooks", "check", "--help"],
        vec!["playbooks", "test", "--help"],
        vec!["playbooks", "schema", "--help"],
        vec!["parsers", "list", "--help"],
        vec!["actions", "list", "--help"],
        vec!["rollback", "--help"],
    ] {
        let o = firebreak(&sub);
        assert_eq!(code(&o), 0, "{sub:?}");
        assert!(
            stdout(&o).contains("Usage: firebreak"),
            "{sub:?}: {}",
            stdout(&o)
        );
    }
    let rollback = firebreak(&["rollback", "--help"]);
    insta::assert_snapshot!("help_rollback", stdout(&rollback));
    let usage = firebreak(&["run"]);
    assert_eq!(code(&usage), 2, "missing required flag is a usage error");
}

#[test]
fn actions_and_parsers_list_as_json() {
    let a = firebreak(&["actions", "list", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&a)).expect("JSON");
    assert_eq!(doc[0]["kind"], "notify.webhook");
    assert_eq!(doc[0]["reversible"], false);
    let p = firebreak(&["parsers", "list", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&p)).expect("JSON");
    let ids: Vec<&str> = doc
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str())
        .collect();
    let registry: Vec<&str> = firebreak::finding::PARSERS.iter().map(|p| p.id()).collect();
    assert_eq!(ids, registry, "listed in registry order");
    assert_eq!(&ids[..2], ["falco", "guardduty"]);
}

#[test]
fn playbooks_test_shows_matches_and_dry_run_plans() {
    let dir = playbook_dir("http://127.0.0.1:9/never");
    let o = firebreak(&[
        "playbooks",
        "test",
        &dir.path().to_string_lossy(),
        &fixture(FALCO_SHELL),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("playbook notify-runtime") && out.contains("planned"),
        "{out}"
    );
    assert!(out.contains("plan hash: sha256:"), "{out}");
    // A finding no playbook matches says so.
    let o = firebreak(&[
        "playbooks",
        "test",
        &dir.path().to_string_lossy(),
        &fixture(FALCO_K8S_API),
    ]);
    assert!(stdout(&o).contains("no playbook matched"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_secret_never_reaches_stdout_stderr_or_the_webhook() {
    // AWS's documented example secret, planted in the command line of a real Falco event
    // (derived from the fixture by changing only output_fields.proc.cmdline and output).
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let mut event: serde_json::Value =
        serde_json::from_slice(&fixtures::bytes(FALCO_SHELL)).expect("fixture JSON");
    let cmdline = format!("sh -c export aws_secret_access_key={SECRET}");
    event["output_fields"]["proc.cmdline"] = serde_json::Value::String(cmdline.clone());
    let output = event["output"].as_str().unwrap_or_default().replace(
        "cmdline=sh -c clear; (bash || ash || sh)",
        &format!("cmdline={cmdline}"),
    );
    event["output"] = serde_json::Value::String(output);
    let input = serde_json::to_vec(&event).expect("serialise");

    let receiver = Receiver::start().await;
    let dir = playbook_dir(&receiver.url("/hook"));
    let pdir = dir.path().to_string_lossy().into_owned();
    let outputs = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for args in [
            vec!["findings", "parse", "-"],
            vec!["findings", "parse", "--format", "json", "-"],
            vec!["run", "--playbooks", &pdir, "--finding", "-", "-vv"],
            vec![
                "run",
                "--playbooks",
                &pdir,
                "--finding",
                "-",
                "--format",
                "json",
                "--log-format",
                "json",
                "-vv",
            ],
        ] {
            all.push(firebreak_with(&args, &[], &input));
        }
        all
    })
    .await
    .expect("join");
    for o in &outputs {
        assert!(code(o) == 0, "{}", stderr(o));
        assert!(
            !stdout(o).contains(SECRET),
            "secret on stdout: {}",
            stdout(o)
        );
        assert!(
            !stderr(o).contains(SECRET),
            "secret on stderr: {}",
            stderr(o)
        );
    }
    assert!(
        stdout(&outputs[0]).contains("Terminal shell in container"),
        "the finding itself is kept"
    );
    let sent = receiver.requests();
    assert_eq!(sent.len(), 2, "both runs notified");
    for r in sent {
        assert!(
            !r.body.contains(SECRET),
            "secret sent to the webhook: {}",
            r.body
        );
    }
}

#[test]
fn bench_parse_and_match_report_throughput() {
    let o = firebreak(&[
        "bench",
        "parse",
        &fixture(FALCO_SHELL),
        "--records",
        "500",
        "--iterations",
        "1",
        "--format",
        "json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(doc[0]["records"], 500);
    assert!(
        doc[0]["per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{doc}"
    );
    let o = firebreak(&[
        "bench",
        "match",
        "playbooks",
        &fixture(FALCO_SHELL),
        "--records",
        "200",
        "--iterations",
        "1",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("records/s"), "{}", stdout(&o));
    let o = firebreak(&[
        "bench",
        "ingest",
        &fixture(FALCO_SHELL),
        "--requests",
        "200",
        "--concurrency",
        "8",
        "--format",
        "json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(doc["accepted"], 200, "{doc}");
    assert!(
        doc["commits"]
            .as_u64()
            .is_some_and(|c| (1..=200).contains(&c)),
        "{doc}"
    );
    let o = firebreak(&["bench", "parse", "/nonexistent.json"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn pause_resume_and_audit_commands_share_the_store_and_detect_tampering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ledger.db");
    let url = format!("sqlite://{}", db.display());
    let env = [("FIREBREAK_STORE__URL", url.as_str())];
    let o = firebreak_with(&["pause", "--reason", "incident drill"], &env, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("paused"), "{}", stderr(&o));
    let o = firebreak_with(&["resume"], &env, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let o = firebreak_with(&["audit", "list", "--format", "json"], &env, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let records: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(records[0]["kind"], "flag.kill_switch");
    assert_eq!(records[0]["detail"]["on"], true);
    assert!(
        records[0]["detail"]["by"]
            .as_str()
            .is_some_and(|b| b.contains("incident drill"))
    );
    assert_eq!(records[1]["detail"]["on"], false);

    let o = firebreak_with(&["audit", "export", "--jsonl"], &env, b"");
    assert_eq!(stdout(&o).lines().count(), 2);
    let o = firebreak_with(&["audit", "show", "2"], &env, b"");
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("\"seq\": 2"), "{}", stdout(&o));

    let o = firebreak_with(&["audit", "verify"], &env, b"");
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("chain intact"), "{}", stdout(&o));

    // Edit the database file behind Firebreak's back.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open db");
        sqlx::query("UPDATE audit SET detail = '{\"on\":false}' WHERE seq = 1")
            .execute(&mut conn)
            .await
            .expect("tamper");
    });
    let o = firebreak_with(&["audit", "verify"], &env, b"");
    assert_eq!(code(&o), 1, "tampering exits 1");
    assert!(stdout(&o).contains("TAMPERED: record 1"), "{}", stdout(&o));
}

/// `firebreak run` against a named store; returns the parsed JSON document and the exit code.
fn run_in_store(pb: &Path, store: &str, extra: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let dir = pb.to_string_lossy();
    let finding = fixture(FALCO_SHELL);
    let mut args = vec![
        "run",
        "--playbooks",
        &dir,
        "--finding",
        &finding,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("FIREBREAK_STORE__URL", store));
    let o = firebreak_with(&args, &env, b"");
    let doc = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    (code(&o), doc)
}

fn audit_kinds(store: &str) -> Vec<Value> {
    let o = firebreak_with(
        &["audit", "list", "--format", "json"],
        &[("FIREBREAK_STORE__URL", store)],
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_str::<Vec<Value>>(&stdout(&o)).expect("audit JSON")
}

#[test]
fn run_records_its_findings_and_plans_in_the_store_and_a_dry_run_never_dedups_a_later_one() {
    let pb = playbook_dir("http://127.0.0.1:9/never");
    let ledger = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}", ledger.path().join("l.db").display());
    for _ in 0..2 {
        let (code, doc) = run_in_store(pb.path(), &store, &["--dry-run"], &[]);
        assert_eq!(code, 0);
        assert_eq!(doc["executions"][0]["steps"][0]["status"], "planned");
        assert!(doc.get("duplicates").is_none(), "{doc}");
    }
    let audit = audit_kinds(&store);
    let received: Vec<&Value> = audit
        .iter()
        .filter(|a| a["kind"] == "findings.received")
        .collect();
    assert_eq!(received.len(), 2, "both rehearsals are recorded");
    assert!(received.iter().all(|a| a["detail"]["dry_run"] == true));
    assert_eq!(
        audit.iter().filter(|a| a["kind"] == "step.planned").count(),
        2
    );

    // --no-store leaves the ledger alone.
    let before = audit.len();
    let (code, _) = run_in_store(pb.path(), &store, &["--dry-run", "--no-store"], &[]);
    assert_eq!(code, 0);
    assert_eq!(audit_kinds(&store).len(), before);
}

#[test]
fn a_real_run_held_by_a_cooldown_is_listed_and_approved_from_the_cli() {
    let pb = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        pb.path().join("guarded.yaml"),
        "name: guarded\nmatch: {class: runtime-threat}\nguards: {cooldown: 1h}\nsteps:\n  - action: notify.webhook\n    with: {url: \"http://127.0.0.1:9/closed\"}\n",
    )
    .expect("write playbook");
    let ledger = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}", ledger.path().join("l.db").display());
    let env = [("FIREBREAK_STORE__DEDUP_WINDOW_SECONDS", "0")];
    let (first, doc) = run_in_store(pb.path(), &store, &[], &env);
    assert_eq!(first, 1, "the webhook port is closed: the step fails");
    assert_eq!(doc["executions"][0]["steps"][0]["status"], "failed");

    let (second, doc) = run_in_store(pb.path(), &store, &[], &env);
    assert_eq!(second, 0, "held is not a failure");
    let reason = doc["not_acted"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("held for approval: cooldown"), "{doc}");

    let list = firebreak_with(
        &["approvals", "list", "--format", "json"],
        &[("FIREBREAK_STORE__URL", &store)],
        b"",
    );
    let pending: Vec<Value> = serde_json::from_str(&stdout(&list)).expect("JSON");
    assert_eq!(pending.len(), 1);
    let id = pending[0]["execution_id"].as_str().expect("id").to_owned();
    let approve = firebreak_with(
        &["approvals", "approve", &id, "--reason", "on-call confirmed"],
        &[("FIREBREAK_STORE__URL", &store)],
        b"",
    );
    assert_eq!(code(&approve), 0, "{}", stderr(&approve));
    let again = firebreak_with(
        &["approvals", "deny", &id, "--reason", "changed my mind"],
        &[("FIREBREAK_STORE__URL", &store)],
        b"",
    );
    assert_eq!(code(&again), 1, "already decided");
    assert!(stderr(&again).contains("not waiting"), "{}", stderr(&again));
    let audit = audit_kinds(&store);
    assert!(
        audit.iter().any(
            |a| a["kind"] == "approval.granted" && a["detail"]["reason"] == "on-call confirmed"
        )
    );
    assert!(
        audit.iter().any(|a| a["kind"] == "run.handed_over"),
        "the held execution was handed to the service"
    );
}

#[test]
fn cancel_stops_a_scheduled_execution_for_good_and_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let env = [("FIREBREAK_STORE__URL", url.as_str())];
    let pbs = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        pbs.path().join("later.yaml"),
        "name: later\nmatch: {class: runtime-threat}\nsteps:\n  - action: notify.webhook\n    after: 1h\n    with: {url: \"http://127.0.0.1:9/later\"}\n",
    )
    .expect("write");
    let o = firebreak_with(
        &[
            "run",
            "--playbooks",
            &pbs.path().to_string_lossy(),
            "--finding",
            &fixture(FALCO_SHELL),
            "--format",
            "json",
        ],
        &env,
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(doc["executions"][0]["steps"][0]["status"], "scheduled");
    let id = doc["executions"][0]["execution_id"].as_str().expect("id");

    let o = firebreak_with(&["cancel", id, "--reason", "playbook retired"], &env, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = firebreak_with(&["cancel", id, "--reason", "again"], &env, b"");
    assert_eq!(code(&o), 1, "a finished execution: {}", stderr(&o));
    assert!(stderr(&o).contains("already finished"), "{}", stderr(&o));

    let o = firebreak_with(&["audit", "list", "--format", "json"], &env, b"");
    let records: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let records = records.as_array().expect("array");
    let cancelled = records
        .iter()
        .find(|r| r["kind"] == "execution.cancelled")
        .expect("audited");
    assert_eq!(cancelled["detail"]["reason"], "playbook retired");
    assert_eq!(cancelled["detail"]["state_before"], "scheduled");
    assert_eq!(
        records.last().expect("last")["detail"]["state"],
        "cancelled"
    );
    let o = firebreak_with(&["audit", "verify"], &env, b"");
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

#[test]
fn the_store_wide_kill_switch_parks_a_recorded_run_but_not_a_no_store_run_which_says_so() {
    // The webhook's port is closed: a step that runs fails (exit 1), so running is visible.
    let pb = playbook_dir("http://127.0.0.1:9/closed");
    let ledger = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}", ledger.path().join("l.db").display());
    let env = [("FIREBREAK_STORE__URL", store.as_str())];
    let o = firebreak_with(&["pause", "--reason", "drill"], &env, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let (recorded, doc) = run_in_store(pb.path(), &store, &[], &[]);
    assert_eq!(recorded, 0, "{doc}");
    assert_eq!(
        doc["executions"][0]["steps"][0]["status"], "paused",
        "{doc}"
    );

    let o = firebreak_with(
        &[
            "run",
            "--no-store",
            "--playbooks",
            &pb.path().to_string_lossy(),
            "--finding",
            &fixture(FALCO_SHELL),
        ],
        &env,
        b"",
    );
    assert_eq!(code(&o), 1, "it ran (and the closed port failed the step)");
    assert!(
        stderr(&o).contains("no store-wide kill switch (`firebreak pause`) applies to it"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn approvals_show_the_plan_and_approve_only_the_exact_plan_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let env = [("FIREBREAK_STORE__URL", url.as_str())];
    let pbs = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        pbs.path().join("asks.yaml"),
        "name: asks\nmatch: {class: runtime-threat}\napproval: {github: {repo: org/infra, reviewers: [alice]}}\nsteps:\n  - action: notify.webhook\n    with: {url: \"http://127.0.0.1:9/hook\"}\n",
    )
    .expect("write");
    let o = firebreak_with(
        &[
            "run",
            "--playbooks",
            &pbs.path().to_string_lossy(),
            "--finding",
            &fixture(FALCO_SHELL),
            "--format",
            "json",
        ],
        &env,
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = firebreak_with(&["approvals", "list", "--format", "json"], &env, b"");
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let id = list[0]["execution_id"].as_str().expect("held").to_owned();

    let o = firebreak_with(&["approvals", "show", &id], &env, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("1. notify.webhook: "), "{}", stdout(&o));
    let o = firebreak_with(&["approvals", "show", &id, "--format", "json"], &env, b"");
    let shown: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let hash = shown["plan_hash"].as_str().expect("hash").to_owned();
    assert!(stdout(&firebreak_with(&["approvals", "show", &id], &env, b"")).contains(&hash));

    let o = firebreak_with(&["approvals", "approve", &id, "--reason", "ok"], &env, b"");
    assert_eq!(code(&o), 2, "the plan hash is required: {}", stderr(&o));
    assert!(stderr(&o).contains(&hash), "{}", stderr(&o));
    let o = firebreak_with(
        &[
            "approvals",
            "approve",
            &id,
            "--reason",
            "ok",
            "--plan-hash",
            "sha256:0",
        ],
        &env,
        b"",
    );
    assert_eq!(code(&o), 1, "a stale hash is refused: {}", stderr(&o));
    let o = firebreak_with(
        &[
            "approvals",
            "approve",
            &id,
            "--reason",
            "reviewed",
            "--plan-hash",
            &hash,
            "--by",
            "alice",
        ],
        &env,
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("approved by alice"), "{}", stderr(&o));

    let audit = audit_kinds(&url);
    let granted = audit
        .iter()
        .find(|a| a["kind"] == "approval.granted")
        .expect("audited");
    assert_eq!(granted["detail"]["plan_hash"], hash.as_str());
    assert_eq!(granted["detail"]["by"][0], "alice");
    let vote = audit
        .iter()
        .find(|a| a["kind"] == "approval.vote")
        .expect("audited");
    assert_eq!(vote["detail"]["via"], "cli: reviewed");
}
