//! gitleaks, trufflehog and GitHub secret-scanning parsers against real scanner output
//! (`tests/fixtures/findings/{gitleaks,trufflehog,github}`).
//!
//! The published samples carry sanitised secrets (`secretAWSsecret`, `REDACTED`, example ids).
//! Variants they lack (a real-looking secret access key, an unverified trufflehog result, a
//! resolved alert, a malformed record) are derived here from a real fixture by changing only the
//! fields that differ; each test says which. AWS's documented example key pair stands in for a
//! real leaked key.

use std::path::Path;

use firebreak::finding::{
    Class, Finding, ParseReport, ParserChoice, ResourceRef, Severity, decode, parse_input,
};
use firebreak::redact::secret_hash;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/findings");

/// The directories (= parser ids) these tests own.
const DIRS: [&str; 3] = ["gitleaks", "trufflehog", "github"];

/// Keys whose values are secret material in the raw scanner output: gitleaks v8 `Secret`,
/// `Match`; gitleaks v7 `offender`, `line` (the source line); trufflehog `Raw`, `RawV2`; GitHub
/// `secret`.
const SECRET_KEYS: [&str; 7] = [
    "Secret", "Match", "offender", "line", "Raw", "RawV2", "secret",
];

/// AWS's documented example access key id and secret access key.
const EXAMPLE_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(rel)).unwrap()
}

fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(rel)).unwrap()
}

/// The one JSON line of a JSON-lines fixture.
fn first_line(rel: &str) -> Value {
    let bytes = fixture_bytes(rel);
    let text = std::str::from_utf8(&bytes).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

fn parse_with(name: &str, bytes: &[u8], parser: &str) -> ParseReport {
    parse_input(name, bytes, ParserChoice::from_id(parser).unwrap())
}

fn parse_value(name: &str, v: &Value) -> ParseReport {
    parse_input(
        name,
        serde_json::to_string(v).unwrap().as_bytes(),
        ParserChoice::Auto,
    )
}

fn only_finding(report: &ParseReport) -> &Finding {
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
    &report.findings[0]
}

fn is_access_key_id(s: &str) -> bool {
    s.len() == 20
        && (s.starts_with("AKIA") || s.starts_with("ASIA"))
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Every string under a [`SECRET_KEYS`] key, anywhere in `v`.
fn secret_values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match child {
                    Value::String(s) if SECRET_KEYS.contains(&k.as_str()) => out.push(s.clone()),
                    _ => secret_values(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| secret_values(i, out)),
        _ => {}
    }
}

/// The secrets of a raw input that must never come out: every secret value except AWS access
/// key ids (kept on purpose as `access_key_id`) and gitleaks' `--redact` placeholder (already
/// not a secret; as a word it is part of every `[REDACTED]` mask).
fn secrets_of(bytes: &[u8]) -> Vec<String> {
    let mut scratch = ParseReport::default();
    let mut secrets = Vec::new();
    for doc in decode("secrets", bytes, &mut scratch) {
        secret_values(&doc.value, &mut secrets);
    }
    secrets.retain(|s| !s.trim().is_empty() && !is_access_key_id(s) && s != "REDACTED");
    secrets.sort();
    secrets.dedup();
    secrets
}

/// Asserts that no secret of `bytes` appears in the findings or rejections of `report`.
fn assert_no_secret_leaves(name: &str, bytes: &[u8], report: &ParseReport) {
    let findings = serde_json::to_string(&report.findings).unwrap();
    let rejections: Vec<String> = report
        .rejected
        .iter()
        .flat_map(|r| [r.reason.clone(), r.to_string()])
        .collect();
    for secret in secrets_of(bytes) {
        assert!(
            !findings.contains(&secret),
            "{name}: a secret is in the findings"
        );
        for r in &rejections {
            assert!(
                !r.contains(&secret),
                "{name}: a secret is in a rejection: {r}"
            );
        }
    }
}

fn fixture_files() -> Vec<String> {
    let mut out = Vec::new();
    for dir in DIRS {
        let mut files: Vec<String> = std::fs::read_dir(Path::new(FIXTURES).join(dir))
            .unwrap()
            .map(|e| format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

#[test]
fn no_secret_from_any_secret_scanner_fixture_reaches_findings_or_rejections() {
    let files = fixture_files();
    assert!(files.len() >= 11, "{files:?}");
    let mut checked = 0;
    for rel in files {
        let bytes = fixture_bytes(&rel);
        checked += secrets_of(&bytes).len();
        let auto = parse_input(&rel, &bytes, ParserChoice::Auto);
        assert!(auto.rejected.is_empty(), "{rel}: {:#?}", auto.rejected);
        assert_no_secret_leaves(&rel, &bytes, &auto);
        // Every parser forced onto every file: the rejections must not echo secrets either.
        for parser in DIRS {
            assert_no_secret_leaves(&rel, &bytes, &parse_with(&rel, &bytes, parser));
        }
    }
    // The fixtures do carry secret values (sanitised upstream, but secrets to the parsers).
    assert!(checked >= 5, "only {checked} secret values found");
}

#[test]
fn real_looking_secrets_in_derived_records_never_leave() {
    // Derived: the real gitleaks v8 record with AWS's example secret access key as the secret.
    let mut gitleaks = fixture_json("gitleaks/gitleaks-v8-report-aws-access-token.json");
    gitleaks[0]["Secret"] = json!(EXAMPLE_SECRET);
    gitleaks[0]["Match"] = json!(format!("aws_secret_access_key = \"{EXAMPLE_SECRET}\""));
    // Derived: the real trufflehog line with a RawV2 (key id followed by the secret key), as
    // trufflehog writes it for AWS.
    let mut trufflehog = first_line("trufflehog/trufflehog-v3-git-aws-canary.jsonl");
    trufflehog["RawV2"] = json!(format!("AKIAYVP4CIPPERUVIFXG{EXAMPLE_SECRET}"));
    // Derived: the real open REST alert as an `aws_secret_access_key` alert.
    let mut github = fixture_json("github/secret-scanning-alerts-rest-list.json")[1].clone();
    github["secret_type"] = json!("aws_secret_access_key");
    github["secret_type_display_name"] = json!("AWS Secret Access Key");
    github["secret"] = json!(EXAMPLE_SECRET);

    for (name, v) in [
        ("gitleaks", gitleaks),
        ("trufflehog", trufflehog),
        ("github", github),
    ] {
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(
            secrets_of(&bytes)
                .iter()
                .any(|s| s.contains(EXAMPLE_SECRET))
        );
        let report = parse_input(name, &bytes, ParserChoice::Auto);
        assert!(
            !report.findings.is_empty(),
            "{name}: {:#?}",
            report.rejected
        );
        assert_no_secret_leaves(name, &bytes, &report);
        let all = serde_json::to_string(&report).unwrap();
        assert!(!all.contains("wJalrXUtnFEMI"), "{name}: {all}");
        for f in &report.findings {
            assert!(f.labels["secret_hash"].starts_with("sha256:"), "{name}");
        }
    }
}

#[test]
fn gitleaks_aws_key_leak_is_credential_exposure_on_the_access_key() {
    // Derived: the real v8 `aws-access-token` record with AWS's example key id as the secret
    // (the fixture's secret was sanitised upstream to `secretAWSsecret`).
    let mut v = fixture_json("gitleaks/gitleaks-v8-report-aws-access-token.json")[0].clone();
    v["Secret"] = json!(EXAMPLE_KEY_ID);
    v["Match"] = json!(EXAMPLE_KEY_ID);
    let report = parse_value("gitleaks-aws", &v);
    let f = only_finding(&report);
    assert_eq!(f.source, "gitleaks");
    assert_eq!(f.class, Class::CredentialExposure);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.rule, "aws-access-token");
    assert_eq!(
        f.resources,
        [ResourceRef::AwsIamAccessKey {
            account: None,
            user: None,
            access_key_id: EXAMPLE_KEY_ID.into(),
        }]
    );
    assert_eq!(f.labels["secret_hash"], secret_hash(EXAMPLE_KEY_ID));
    assert_eq!(f.labels["file"], "/conf/aws.tf");
    assert_eq!(f.labels["line"], "2");
    assert!(f.fields.get("Secret").is_none() && f.fields.get("Match").is_none());
    assert_eq!(f.observed_at.to_rfc3339(), "2021-10-14T17:05:15+00:00");
}

#[test]
fn gitleaks_secret_access_key_without_an_id_names_no_key() {
    // Derived: the real v8 record with an `aws-secret-access-key`-style secret: the 40-char
    // secret, no key id anywhere.
    let mut v = fixture_json("gitleaks/gitleaks-v8-report-aws-access-token.json")[0].clone();
    v["RuleID"] = json!("aws-secret-access-key");
    v["Secret"] = json!(EXAMPLE_SECRET);
    v["Match"] = json!(format!("aws_secret_access_key = \"{EXAMPLE_SECRET}\""));
    let report = parse_value("gitleaks-secret-key", &v);
    let f = only_finding(&report);
    assert_eq!(f.class, Class::CredentialExposure);
    assert!(f.resources.is_empty(), "{:?}", f.resources);
    assert_eq!(f.labels["secret_hash"], secret_hash(EXAMPLE_SECRET));
}

#[test]
fn gitleaks_v8_report_reads_every_rule_and_drops_secret_and_match() {
    let report = parse_with(
        "v8",
        &fixture_bytes("gitleaks/gitleaks-v8-report-aws-access-token.json"),
        "gitleaks",
    );
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    let rules: Vec<&str> = report.findings.iter().map(|f| f.rule.as_str()).collect();
    assert_eq!(
        rules,
        [
            "aws-access-token",
            "aws-access-token",
            "RSA-PK",
            "generic-api-key"
        ]
    );
    let rsa = &report.findings[2];
    assert_eq!(rsa.title, "RSA private key found in conf/rsa.pk:57");
    assert_eq!(rsa.labels["tag.tag1"], "true");
    // A `dir` scan record: no commit date, so the time is marked unknown.
    assert_eq!(rsa.labels["observed_at"], "unknown");
    assert_eq!(rsa.observed_at.timestamp(), 0);
    for f in &report.findings {
        // The fixture's sanitised secret needs no AWS id: no key resource.
        assert!(f.resources.is_empty(), "{:?}", f.resources);
        assert!(f.fields.get("Secret").is_none() && f.fields.get("Match").is_none());
    }
}

#[test]
fn gitleaks_v7_redacted_report_hashes_no_placeholder() {
    let report = parse_with(
        "v7",
        &fixture_bytes("gitleaks/gitleaks-v7-report-aws-access-key-redacted.json"),
        "gitleaks",
    );
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    assert_eq!(report.findings.len(), 6);
    for f in &report.findings {
        assert_eq!(f.rule, "AWS Access Key");
        assert_eq!(f.class, Class::CredentialExposure);
        assert_eq!(f.labels["secret_redacted"], "true");
        assert!(!f.labels.contains_key("secret_hash"), "{:?}", f.labels);
        assert_eq!(f.labels["gitleaks.format"], "v7");
        assert_eq!(f.labels["tag.AWS"], "true");
        assert!(f.fields.get("offender").is_none() && f.fields.get("line").is_none());
        assert!(f.resources.is_empty(), "{:?}", f.resources);
    }
    assert_eq!(
        report.findings[0].labels["file"],
        "overlays/server/config/server-config.yml"
    );
    assert_eq!(
        report.findings[0].observed_at.to_rfc3339(),
        "2021-04-19T19:42:05+00:00"
    );
}

#[test]
fn gitleaks_record_with_a_github_link_names_the_repository_and_path() {
    // Derived: the real v8 record plus the `Link` gitleaks 8.16+ writes when the repository has
    // a GitHub remote.
    let mut v = fixture_json("gitleaks/gitleaks-v8-report-aws-access-token.json")[0].clone();
    v["Link"] = json!(
        "https://github.com/octo-org/infra/blob/74d53286c550630f80847d37f68aa3065554ac813544072ccd1278da71fafe31/conf/aws.tf#L2"
    );
    let report = parse_value("gitleaks-link", &v);
    let f = only_finding(&report);
    assert_eq!(
        f.resources,
        [ResourceRef::GithubRepository {
            owner: "octo-org".into(),
            repo: "infra".into(),
            path: Some("conf/aws.tf".into()),
            alert_number: None,
        }]
    );
}

#[test]
fn malformed_gitleaks_record_is_rejected_at_its_pointer_and_siblings_are_kept() {
    // Derived: the real v8 report with the second record's StartLine written as a string.
    let mut v = fixture_json("gitleaks/gitleaks-v8-report-aws-access-token.json");
    v[1]["StartLine"] = json!("2");
    let report = parse_value("bad-startline", &v);
    assert_eq!(report.findings.len(), 3);
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    let r = &report.rejected[0];
    assert_eq!(r.parser, "gitleaks");
    assert_eq!(r.index, 1);
    assert_eq!(r.pointer, "/StartLine");
    assert_eq!(r.reason, "expected an integer, found a string");
}

#[test]
fn forcing_gitleaks_on_a_trufflehog_file_rejects_every_record_with_a_reason() {
    let bytes = fixture_bytes("trufflehog/trufflehog-v3-git-aws-canary.jsonl");
    let report = parse_with("trufflehog.jsonl", &bytes, "gitleaks");
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1);
    let r = &report.rejected[0];
    assert_eq!(r.parser, "gitleaks");
    assert_eq!(r.index, 0);
    assert!(
        r.reason.starts_with("not a gitleaks finding"),
        "{}",
        r.reason
    );
    assert_no_secret_leaves("trufflehog.jsonl", &bytes, &report);
}

#[test]
fn each_secret_parser_forced_on_another_format_rejects_without_panicking() {
    for rel in fixture_files() {
        let bytes = fixture_bytes(&rel);
        let owner = rel.split('/').next().unwrap();
        for parser in DIRS.iter().filter(|p| **p != owner) {
            let report = parse_with(&rel, &bytes, parser);
            assert!(report.findings.is_empty(), "{parser} on {rel}");
            assert_eq!(report.skipped, 0, "{parser} on {rel}");
            assert!(!report.rejected.is_empty(), "{parser} on {rel}");
            assert!(
                report
                    .rejected
                    .iter()
                    .all(|r| r.parser == *parser && r.reason.starts_with("not a")),
                "{parser} on {rel}: {:#?}",
                report.rejected
            );
        }
    }
}

#[test]
fn trufflehog_verified_aws_key_is_critical_on_the_key_with_account_and_user() {
    let bytes = fixture_bytes("trufflehog/trufflehog-v3-git-aws-canary.jsonl");
    let report = parse_input("canary", &bytes, ParserChoice::Auto);
    let f = only_finding(&report);
    assert_eq!(f.source, "trufflehog");
    assert_eq!(f.rule, "AWS");
    assert_eq!(f.class, Class::CredentialExposure);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(
        f.resources,
        [
            ResourceRef::AwsIamAccessKey {
                account: Some("595918472158".into()),
                user: Some("canarytokens.com@@mirux23ppyky6hx3l6vclmhnj".into()),
                access_key_id: "AKIAYVP4CIPPERUVIFXG".into(),
            },
            ResourceRef::GithubRepository {
                owner: "trufflesecurity".into(),
                repo: "test_keys".into(),
                path: Some("keys".into()),
                alert_number: None,
            },
        ]
    );
    assert_eq!(f.labels["verified"], "true");
    assert_eq!(
        f.labels["secret_hash"],
        secret_hash("QUtJQVlWUDRDSVBQRVJVVklGWEc=")
    );
    assert_eq!(
        f.labels["commit"],
        "fbc14303ffbf8fb1c2c1914e8dda7d0121633aca"
    );
    assert_eq!(f.observed_at.to_rfc3339(), "2022-06-16T17:17:40+00:00");
    assert!(f.fields.get("Raw").is_none());
    assert_eq!(
        f.title,
        "AWS secret (verified) in trufflesecurity/test_keys keys:4"
    );
}

#[test]
fn trufflehog_unverified_result_is_high() {
    // Derived: the real line with Verified false (and no verification data, as trufflehog then
    // writes none).
    let mut v = first_line("trufflehog/trufflehog-v3-git-aws-canary.jsonl");
    v["Verified"] = json!(false);
    v["ExtraData"] = Value::Null;
    let report = parse_value("unverified", &v);
    let f = only_finding(&report);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.labels["verified"], "false");
    assert_eq!(
        f.resources[0],
        ResourceRef::AwsIamAccessKey {
            account: None,
            user: None,
            access_key_id: "AKIAYVP4CIPPERUVIFXG".into(),
        }
    );
}

#[test]
fn trufflehog_key_id_comes_from_raw_v2_when_redacted_is_absent() {
    // Derived: the real line without `Redacted`, and with the RawV2 trufflehog writes for AWS
    // (key id immediately followed by the secret key).
    let mut v = first_line("trufflehog/trufflehog-v3-git-aws-canary.jsonl");
    v.as_object_mut().unwrap().remove("Redacted");
    v["RawV2"] = json!(format!("AKIAYVP4CIPPERUVIFXG{EXAMPLE_SECRET}"));
    let report = parse_value("rawv2", &v);
    let f = only_finding(&report);
    assert!(matches!(
        &f.resources[0],
        ResourceRef::AwsIamAccessKey { access_key_id, .. } if access_key_id == "AKIAYVP4CIPPERUVIFXG"
    ));
    assert!(f.fields.get("RawV2").is_none());
}

#[test]
fn trufflehog_json_array_parses_like_json_lines() {
    // Derived: the real line inside a JSON array, as `jq -s` or some CI wrappers write it.
    let v = json!([first_line("trufflehog/trufflehog-v3-git-aws-canary.jsonl")]);
    let report = parse_value("array", &v);
    assert_eq!(only_finding(&report).rule, "AWS");
}

#[test]
fn trufflehog_bad_timestamp_is_rejected_at_its_pointer() {
    // Derived: the real line with an unreadable git timestamp.
    let mut v = first_line("trufflehog/trufflehog-v3-git-aws-canary.jsonl");
    v["SourceMetadata"]["Data"]["Git"]["timestamp"] = json!("last tuesday");
    let report = parse_value("bad-time", &v);
    assert!(report.findings.is_empty());
    assert_eq!(
        report.rejected[0].pointer,
        "/SourceMetadata/Data/Git/timestamp"
    );
}

#[test]
fn github_open_aws_alert_is_credential_exposure_on_key_and_repository() {
    let bytes = fixture_bytes("github/secret-scanning-alerts-rest-list.json");
    let report = parse_input("alerts", &bytes, ParserChoice::Auto);
    let f = only_finding(&report);
    // Alerts 2 and 4 are resolved.
    assert_eq!(report.skipped, 2);
    assert_eq!(f.source, "github");
    assert_eq!(f.rule, "aws_access_key_id");
    assert_eq!(f.class, Class::CredentialExposure);
    // GitHub says the key still works (`validity: active`).
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(
        f.resources,
        [
            ResourceRef::AwsIamAccessKey {
                account: None,
                user: None,
                access_key_id: EXAMPLE_KEY_ID.into(),
            },
            ResourceRef::GithubRepository {
                owner: "octocat".into(),
                repo: "Hello-World".into(),
                path: Some("config/aws-credentials.env".into()),
                alert_number: Some(3),
            },
        ]
    );
    assert_eq!(f.labels["secret_hash"], secret_hash(EXAMPLE_KEY_ID));
    assert!(f.fields.get("secret").is_none());
}

#[test]
fn github_resolved_alert_is_counted_as_skipped() {
    // Derived: the open REST alert with its state set to resolved.
    let mut v = fixture_json("github/secret-scanning-alerts-rest-list.json")[1].clone();
    v["state"] = json!("resolved");
    v["resolution"] = json!("revoked");
    let report = parse_value("resolved", &v);
    assert!(report.findings.is_empty());
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    assert_eq!(report.skipped, 1);

    // Derived: the real reopened webhook with action resolved.
    let mut hook = fixture_json("github/secret_scanning_alert-reopened.json");
    hook["action"] = json!("resolved");
    let report = parse_value("resolved-hook", &hook);
    assert!(report.findings.is_empty() && report.rejected.is_empty());
    assert_eq!(report.skipped, 1);
}

#[test]
fn github_alert_webhook_reopened_or_created_is_a_finding_on_the_repository() {
    let reopened = fixture_json("github/secret_scanning_alert-reopened.json");
    // Derived: the same payload with action created (same schema, see SOURCES.md).
    let mut created = reopened.clone();
    created["action"] = json!("created");
    for v in [reopened, created] {
        let report = parse_value("hook", &v);
        let f = only_finding(&report);
        assert_eq!(f.rule, "adafruit_io_key");
        assert_eq!(f.severity, Severity::High);
        assert_eq!(
            f.resources,
            [ResourceRef::GithubRepository {
                owner: "Codertocat".into(),
                repo: "Hello-World".into(),
                path: None,
                alert_number: Some(191),
            }]
        );
        assert_eq!(f.labels["github.action"], v["action"].as_str().unwrap());
    }
}

#[test]
fn github_alert_for_a_secret_access_key_names_no_key() {
    // Derived: the open REST alert as an `aws_secret_access_key` alert.
    let mut v = fixture_json("github/secret-scanning-alerts-rest-list.json")[1].clone();
    v["secret_type"] = json!("aws_secret_access_key");
    v["secret"] = json!(EXAMPLE_SECRET);
    let report = parse_value("secret-key-alert", &v);
    let f = only_finding(&report);
    assert_eq!(f.resources.len(), 1);
    assert_eq!(f.resources[0].type_name(), "github.repository");
}

#[test]
fn github_repo_level_alert_takes_the_repository_from_its_url() {
    // Derived: the open REST alert as the repository-level list returns it (no `repository`).
    let mut v = fixture_json("github/secret-scanning-alerts-rest-list.json")[1].clone();
    v.as_object_mut().unwrap().remove("repository");
    let report = parse_value("repo-level", &v);
    let f = only_finding(&report);
    assert!(f.resources.contains(&ResourceRef::GithubRepository {
        owner: "owner".into(),
        repo: "private-repo".into(),
        path: Some("config/aws-credentials.env".into()),
        alert_number: Some(3),
    }));
}

#[test]
fn github_pull_request_review_and_comment_webhooks_are_skipped_not_findings() {
    for rel in [
        "github/pull_request-opened.json",
        "github/pull_request-closed-merged.json",
        "github/pull_request-closed-not-merged.json",
        "github/pull_request_review-submitted-approved.json",
        "github/pull_request_review-submitted-commented.json",
        "github/issue_comment-created.json",
    ] {
        let report = parse_input(rel, &fixture_bytes(rel), ParserChoice::Auto);
        assert!(report.findings.is_empty(), "{rel}");
        assert!(report.rejected.is_empty(), "{rel}: {:#?}", report.rejected);
        assert_eq!(report.skipped, 1, "{rel}");
    }
}

#[test]
fn github_alert_without_number_is_rejected_at_its_pointer() {
    // Derived: the real reopened webhook without `alert.number`.
    let mut v = fixture_json("github/secret_scanning_alert-reopened.json");
    v["alert"].as_object_mut().unwrap().remove("number");
    let report = parse_value("no-number", &v);
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected[0].parser, "github");
    assert_eq!(report.rejected[0].pointer, "/alert/number");
}
