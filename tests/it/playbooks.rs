//! Playbook loading, diagnostics and every documented matching construct.

use std::path::Path;

use firebreak::finding::{Finding, ResourceRef, Severity};
use firebreak::playbook::{Decision, LoadError, PlaybookSet, load_dir, load_str};

use crate::fixtures::{self, FALCO_K8S_API, FALCO_SHELL, GD_TOR_IAM, GD_TROJAN};

/// Compiles one playbook written inline (our own format, so writing it by hand is the point).
fn set(yaml: &str) -> PlaybookSet {
    match load_str(Path::new("inline.yaml"), yaml) {
        Ok((pb, _)) => PlaybookSet::new(vec![pb]),
        Err(ds) => panic!("playbook should load: {ds:#?}"),
    }
}

fn problems(yaml: &str) -> Vec<String> {
    match load_str(Path::new("inline.yaml"), yaml) {
        Ok(_) => panic!("playbook should not load"),
        Err(ds) => ds.iter().map(ToString::to_string).collect(),
    }
}

fn pb(matcher: &str) -> String {
    format!(
        "name: t\nmatch:\n{matcher}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"http://127.0.0.1:9/x\"}}\n"
    )
}

fn decision(set: &PlaybookSet, f: &Finding) -> Option<Decision> {
    set.evaluate(f).into_iter().next().map(|e| e.decision)
}

fn acts(matcher: &str, f: &Finding) -> bool {
    decision(&set(&pb(matcher)), f) == Some(Decision::Act)
}

#[test]
fn class_condition_matches_any_listed_class() {
    let shell = fixtures::finding(FALCO_SHELL);
    assert!(acts("  class: [runtime-threat, cryptomining]", &shell));
    assert!(acts("  class: runtime-threat", &shell));
    assert!(!acts("  class: [cryptomining]", &shell));
}

#[test]
fn source_condition_names_the_parser() {
    let shell = fixtures::finding(FALCO_SHELL);
    assert!(acts("  source: falco", &shell));
    assert!(!acts("  source: [guardduty]", &shell));
}

#[test]
fn intake_condition_matches_how_the_finding_arrived() {
    // The real Falco finding as each intake records it.
    let arrived = |intake: &str| {
        let mut f = fixtures::finding(FALCO_SHELL);
        intake.clone_into(&mut f.intake);
        f
    };
    let sidekick = arrived("http:falcosidekick");
    let queue = arrived("sqs:guardduty-findings");
    let cli = arrived("cli");
    // Exact text.
    assert!(acts("  intake: http:falcosidekick", &sidekick));
    assert!(!acts("  intake: http:falcosidekick", &queue));
    assert!(!acts("  intake: http:falcosidekick", &cli));
    // Any of a list, a glob, a regular expression.
    assert!(acts("  intake: [cli, \"sqs:*\"]", &queue));
    assert!(acts("  intake: [cli, \"sqs:*\"]", &cli));
    assert!(!acts("  intake: [cli, \"sqs:*\"]", &sidekick));
    assert!(acts("  intake: \"http:*\"", &sidekick));
    assert!(acts("  intake: \"re:(http|sqs):.*\"", &queue));
    assert!(!acts("  intake: \"re:(http|sqs):.*\"", &cli));
    // A finding that never went through an intake (parsed only) has an empty intake.
    assert!(!acts(
        "  intake: [cli, \"http:*\", \"sqs:*\"]",
        &fixtures::finding(FALCO_SHELL)
    ));
    // Together with the other conditions, and visible to CEL.
    assert!(acts(
        "  class: runtime-threat\n  intake: http:falcosidekick\n  when: 'finding.intake == \"http:falcosidekick\"'",
        &sidekick
    ));
    // A bad pattern is reported at its position.
    let errs = problems(&pb("  intake: \"re:(\""));
    assert!(
        errs.iter()
            .any(|e| e.contains("match.intake") && e.contains("invalid regular expression")),
        "{errs:#?}"
    );
}

#[test]
fn rule_condition_supports_exact_glob_and_regex() {
    let trojan = fixtures::finding(GD_TROJAN);
    assert_eq!(trojan.rule, "Trojan:EC2/DropPoint!DNS");
    assert!(acts("  rule: \"Trojan:EC2/DropPoint!DNS\"", &trojan));
    assert!(!acts("  rule: \"Trojan:EC2/DropPoint\"", &trojan));
    assert!(acts("  rule: \"Trojan:*\"", &trojan));
    assert!(!acts("  rule: \"CryptoCurrency:*\"", &trojan));
    assert!(acts(
        "  rule: \"re:^(Backdoor|Trojan):EC2/.*!DNS$\"",
        &trojan
    ));
    assert!(!acts("  rule: \"re:^Backdoor:.*\"", &trojan));
}

#[test]
fn severity_condition_compares_levels() {
    let shell = fixtures::finding(FALCO_SHELL);
    assert_eq!(shell.severity, Severity::Critical);
    assert!(acts("  severity: \">= high\"", &shell));
    assert!(acts("  severity: critical", &shell));
    assert!(!acts("  severity: high", &shell));
    assert!(!acts("  severity: \"< critical\"", &shell));
    let api = fixtures::finding(FALCO_K8S_API);
    assert_eq!(api.severity, Severity::Low);
    assert!(!acts("  severity: \">= high\"", &api));
    assert!(acts("  severity: \"<= medium\"", &api));
}

#[test]
fn resource_selector_needs_one_resource_matching_every_attribute() {
    let shell = fixtures::finding(FALCO_SHELL);
    assert!(acts(
        "  resource: {type: kubernetes, namespace: default, kind: Pod}",
        &shell
    ));
    assert!(acts(
        "  resource: {namespace: \"def*\", name: [other, kubecon]}",
        &shell
    ));
    assert!(!acts(
        "  resource: {type: kubernetes, namespace: kube-system}",
        &shell
    ));
    // An attribute no resource of the finding has never matches.
    assert!(!acts("  resource: {account: \"123456789012\"}", &shell));
    let tor = fixtures::finding(GD_TOR_IAM);
    assert!(acts(
        "  resource: {type: aws.iam.access_key, user: GeneratedFindingUserName}",
        &tor
    ));
}

#[test]
fn label_and_field_conditions_read_the_finding() {
    let shell = fixtures::finding(FALCO_SHELL);
    let key = shell.labels.keys().next().cloned().unwrap_or_default();
    let value = shell.labels.get(&key).cloned().unwrap_or_default();
    assert!(acts(
        &format!("  labels: {{\"{key}\": \"{value}\"}}"),
        &shell
    ));
    assert!(!acts(
        &format!("  labels: {{\"{key}\": \"not-{value}\"}}"),
        &shell
    ));
    assert!(!acts("  labels: {no-such-label: x}", &shell));
    // JSON pointer (keys with dots) and dotted paths both reach the native record.
    assert!(acts(
        "  fields: {\"/output_fields/k8s.pod.name\": kubecon}",
        &shell
    ));
    assert!(acts("  fields: {rule: \"Terminal*\"}", &shell));
    assert!(!acts(
        "  fields: {\"/output_fields/k8s.pod.name\": other}",
        &shell
    ));
    // Numbers compare by their text.
    assert!(acts(
        "  fields: {\"/output_fields/proc.tty\": 34816}",
        &shell
    ));
}

#[test]
fn when_expression_is_cel_over_the_finding() {
    let shell = fixtures::finding(FALCO_SHELL);
    assert!(acts(
        "  when: 'finding.resources.exists(r, r.type == \"kubernetes\" && r.namespace != \"kube-system\")'",
        &shell
    ));
    assert!(!acts(
        "  when: 'finding.resources.all(r, r.type == \"aws.s3.bucket\")'",
        &shell
    ));
    assert!(acts(
        "  when: 'finding.severity in [\"high\", \"critical\"] && finding.source == \"falco\"'",
        &shell
    ));
    assert!(acts(
        "  when: 'finding.fields.output_fields[\"proc.name\"].matches(\"^(sh|bash)$\")'",
        &shell
    ));
}

#[test]
fn when_evaluation_error_means_no_match_and_is_reported() {
    let shell = fixtures::finding(FALCO_SHELL);
    let s = set(&pb("  when: 'finding.fields.no_such_field == \"x\"'"));
    match decision(&s, &shell) {
        Some(Decision::WhenError(e)) => assert!(e.to_lowercase().contains("no_such_field"), "{e}"),
        other => panic!("expected a when error, got {other:?}"),
    }
}

#[test]
fn all_conditions_must_hold_together() {
    let shell = fixtures::finding(FALCO_SHELL);
    assert!(acts(
        "  class: runtime-threat\n  severity: critical\n  source: falco",
        &shell
    ));
    assert!(!acts(
        "  class: runtime-threat\n  severity: critical\n  source: guardduty",
        &shell
    ));
}

fn with_exclude(exclude: &str) -> PlaybookSet {
    set(&format!(
        "name: t\nmatch:\n  class: runtime-threat\nexclude:\n{exclude}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"http://127.0.0.1:9/x\"}}\n"
    ))
}

#[test]
fn exclusion_by_namespace_stops_the_playbook_and_says_why() {
    let shell = fixtures::finding(FALCO_SHELL);
    match decision(
        &with_exclude("  - namespace: [kube-system, default]"),
        &shell,
    ) {
        Some(Decision::Excluded(reason)) => assert!(reason.contains("exclude[0]"), "{reason}"),
        other => panic!("expected exclusion, got {other:?}"),
    }
    assert_eq!(
        decision(&with_exclude("  - namespace: [kube-system]"), &shell),
        Some(Decision::Act)
    );
}

#[test]
fn exclusion_entries_and_their_conditions() {
    let shell = fixtures::finding(FALCO_SHELL);
    // Within one entry every condition must hold.
    assert_eq!(
        decision(
            &with_exclude("  - namespace: default\n    rule: \"Other rule\""),
            &shell
        ),
        Some(Decision::Act)
    );
    // Any entry that applies excludes.
    assert!(matches!(
        decision(&with_exclude("  - namespace: nope\n  - rule: \"Terminal*\""), &shell),
        Some(Decision::Excluded(r)) if r.contains("exclude[1]")
    ));
    assert!(matches!(
        decision(
            &with_exclude("  - when: 'finding.severity == \"critical\"'"),
            &shell
        ),
        Some(Decision::Excluded(_))
    ));
}

#[test]
fn exclusion_that_cannot_be_evaluated_fails_closed() {
    let shell = fixtures::finding(FALCO_SHELL);
    match decision(
        &with_exclude("  - when: 'finding.fields.missing.deeper == 1'"),
        &shell,
    ) {
        Some(Decision::Excluded(reason)) => assert!(reason.contains("fail closed"), "{reason}"),
        other => panic!("expected fail-closed exclusion, got {other:?}"),
    }
    // A Kubernetes resource whose namespace is unknown cannot be checked against a namespace
    // exclusion: fail closed. (The canonical finding is Firebreak's own type; we edit it.)
    let mut no_ns = shell.clone();
    for r in &mut no_ns.resources {
        if let ResourceRef::Kubernetes { namespace, .. } = r {
            *namespace = None;
        }
    }
    match decision(&with_exclude("  - namespace: [kube-system]"), &no_ns) {
        Some(Decision::Excluded(reason)) => assert!(reason.contains("fail closed"), "{reason}"),
        other => panic!("expected fail-closed exclusion, got {other:?}"),
    }
}

#[test]
fn disabled_playbook_never_matches() {
    let shell = fixtures::finding(FALCO_SHELL);
    let s = set(&pb("  class: runtime-threat").replace("name: t\n", "name: t\nenabled: false\n"));
    assert!(s.evaluate(&shell).is_empty());
}

#[test]
fn playbooks_without_class_are_still_candidates() {
    let shell = fixtures::finding(FALCO_SHELL);
    let tor = fixtures::finding(GD_TOR_IAM);
    let s = set(&pb("  severity: \">= low\""));
    assert_eq!(decision(&s, &shell), Some(Decision::Act));
    assert_eq!(decision(&s, &tor), Some(Decision::Act));
}

#[test]
fn unknown_action_field_and_class_are_all_reported_with_positions_and_hints() {
    let yaml = "name: t\nmatch:\n  class: [cryptominig]\n  severity: \">= hgh\"\nsteps:\n  - action: notify.webhok\n";
    let ps = problems(yaml);
    assert_eq!(ps.len(), 3, "{ps:#?}");
    assert!(
        ps[0].starts_with("inline.yaml:3:10: match.class: unknown class `cryptominig`"),
        "{}",
        ps[0]
    );
    assert!(
        ps[0].contains("hint: did you mean `cryptomining`?"),
        "{}",
        ps[0]
    );
    assert!(
        ps[1].starts_with("inline.yaml:4:13: match.severity: unknown severity `hgh`"),
        "{}",
        ps[1]
    );
    assert!(
        ps[2].starts_with("inline.yaml:6:13: steps[0].action: unknown action `notify.webhok`"),
        "{}",
        ps[2]
    );
    assert!(
        ps[2].contains("did you mean `notify.webhook`?"),
        "{}",
        ps[2]
    );
}

#[test]
fn unknown_key_names_line_path_and_suggestion() {
    let ps = problems(
        "name: t\nmatch: {class: other}\nsteps:\n  - action: notify.webhook\n    wiht: {}\n",
    );
    assert_eq!(
        ps,
        vec!["inline.yaml:5:5: steps[0].wiht: unknown field `wiht`\n  hint: did you mean `with`?"]
    );
}

#[test]
fn duplicate_keys_bad_patterns_and_bad_cel_are_errors() {
    let dup =
        problems("name: t\nname: u\nmatch: {class: other}\nsteps: [{action: notify.webhook}]\n");
    assert!(dup[0].contains("duplicate key `name`"), "{dup:?}");
    let re = problems(&pb("  rule: \"re:(unclosed\""));
    assert!(
        re[0].contains("match.rule: invalid regular expression"),
        "{re:?}"
    );
    let cel = problems(&pb("  when: 'finding.severity == '"));
    assert!(cel[0].contains("match.when: invalid CEL"), "{cel:?}");
    let var = problems(&pb("  when: 'findng.severity == \"high\"'"));
    assert!(
        var[0].contains("unknown variable `findng`") && var[0].contains("did you mean `finding`"),
        "{var:?}"
    );
}

#[test]
fn a_match_without_conditions_is_refused() {
    let ps = problems(
        "name: t\nmatch: {}\nsteps: [{action: notify.webhook, with: {url: \"http://x/\"}}]\n",
    );
    assert!(ps[0].contains("`match` has no conditions"), "{ps:?}");
}

#[test]
fn wrong_types_and_bad_params_name_the_field() {
    let ps = problems(
        "name: t\nmatch: {class: other}\nsteps:\n  - action: notify.webhook\n    with: {url: 42}\n",
    );
    assert!(ps[0].contains("steps[0].with.url"), "{ps:?}");
    let ps = problems(
        "name: t\nmatch: {class: other}\nguards: {max_targets_per_hour: lots}\nsteps: [{action: notify.webhook, with: {url: \"http://x/\"}}]\n",
    );
    assert!(ps[0].contains("guards.max_targets_per_hour"), "{ps:?}");
}

#[test]
fn check_reports_every_problem_in_a_directory_at_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"))
    };
    write(
        "a.yaml",
        "name: a\nmatch: {class: cryptominig}\nsteps: [{action: notify.webhook, with: {url: \"http://x/\"}}]\n",
    );
    write(
        "b.yaml",
        "name: b\nmatch: {class: other}\nsteps: [{action: kubernetes.nope}]\n",
    );
    write(
        "c.yaml",
        "name: dup\nmatch: {class: other}\nsteps: [{action: notify.webhook, with: {url: \"http://x/\"}}]\n",
    );
    write("d.yml", "name: d\nmatch: [\n");
    write(
        "e.yaml",
        "name: dup\nmatch: {class: other}\nsteps: [{action: notify.webhook, with: {url: \"http://x/\"}}]\n",
    );
    write("notes.txt", "not a playbook");
    match load_dir(dir.path()) {
        Err(LoadError::Invalid(ds)) => {
            let files: Vec<String> = ds
                .iter()
                .map(|d| {
                    d.file
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(files, ["a.yaml", "b.yaml", "d.yml", "e.yaml"], "{ds:#?}");
            assert!(
                ds[3].message.contains("duplicate playbook name `dup`"),
                "{:?}",
                ds[3]
            );
            assert!(
                ds[3]
                    .hint
                    .as_deref()
                    .is_some_and(|h| h.contains("c.yaml:1")),
                "{:?}",
                ds[3]
            );
            assert!(ds.iter().all(|d| d.line.is_some()), "{ds:#?}");
        }
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn unreadable_or_empty_directory_is_its_own_error() {
    assert!(matches!(
        load_dir(Path::new("/nonexistent/playbooks")),
        Err(LoadError::Unreadable(_))
    ));
    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    match load_dir(empty.path()) {
        Err(LoadError::Invalid(ds)) => assert!(ds[0].message.contains("no playbooks found")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn shipped_playbooks_load() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks"));
    match load_dir(dir) {
        Ok(set) => assert!(!set.playbooks().is_empty()),
        Err(e) => panic!("shipped playbooks must load: {e:#?}"),
    }
}

#[test]
fn committed_schema_equals_generated_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks/schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null);
    assert_eq!(
        committed,
        firebreak::playbook::json_schema(),
        "playbooks/schema.json is stale: run `firebreak playbooks schema > playbooks/schema.json`"
    );
}

#[test]
fn every_action_example_loads_in_a_playbook() {
    for action in firebreak::action::ACTIONS {
        let with: String = action
            .example()
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect();
        let yaml = format!(
            "name: t\nmatch: {{class: other}}\nsteps:\n  - action: {}\n    with:\n{with}",
            action.kind()
        );
        if let Err(ds) = load_str(Path::new("example.yaml"), &yaml) {
            panic!("{}'s example does not load: {ds:#?}", action.kind());
        }
    }
}

#[test]
fn a_step_when_is_cel_checked_at_load_and_skips_the_step_for_findings_it_does_not_hold_for() {
    let bad = problems(
        "name: p\nmatch: {class: runtime-threat}\nsteps:\n  - action: notify.webhook\n    with: {url: \"https://example.com/x\"}\n    when: 'finding.source =='\n",
    );
    assert!(
        bad.iter()
            .any(|p| p.starts_with("inline.yaml:6:11: steps[0].when:")),
        "{bad:?}"
    );
    let loaded = set(
        "name: p\nmatch: {class: runtime-threat}\nsteps:\n  - action: notify.webhook\n    with: {url: \"https://example.com/x\"}\n    when: 'finding.source == \"github\"'\n  - action: notify.webhook\n    with: {url: \"https://example.com/y\"}\n    when: 'finding.labels[\"no-such-label\"] == \"x\"'\n  - action: notify.webhook\n    with: {url: \"https://example.com/z\"}\n    when: 'finding.source == \"falco\"'\n",
    );
    let pb = &loaded.playbooks()[0];
    let falco = fixtures::finding(FALCO_SHELL);
    let why = pb.steps[0]
        .skipped_for(&falco)
        .expect("not a GitHub finding");
    assert!(why.contains("is false"), "{why}");
    let why = pb.steps[1].skipped_for(&falco).expect("fails closed");
    assert!(why.contains("cannot be evaluated"), "{why}");
    assert_eq!(pb.steps[2].skipped_for(&falco), None);
}
