//! Security Hub (ASFF) and Prowler (OCSF, ASFF) parsers against real scanner output
//! (`tests/fixtures/findings/securityhub/`, `tests/fixtures/findings/prowler/`).
//!
//! Variants with no published sample (a `{"Findings": [...]}` list holding a malformed element,
//! an EventBridge `Imported` event around a given finding, a PASS Prowler result, a GuardDuty
//! ASFF finding of another type) are derived here from a real fixture by changing only the
//! fields that differ; each test says which.

use std::path::Path;

use firebreak::finding::{
    Class, Finding, PARSERS, ParseReport, ParserChoice, ResourceRef, Severity, decode,
    known_sources, parse_input,
};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/findings");

/// AWS's documented example secret access key.
const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(rel)).unwrap()
}

fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(rel)).unwrap()
}

fn parse_value(name: &str, v: &Value) -> ParseReport {
    parse_input(
        name,
        serde_json::to_string(v).unwrap().as_bytes(),
        ParserChoice::Auto,
    )
}

fn parse_fixture(rel: &str) -> ParseReport {
    parse_input(rel, &fixture_bytes(rel), ParserChoice::Auto)
}

fn only_finding(report: &ParseReport) -> &Finding {
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
    &report.findings[0]
}

fn label<'a>(f: &'a Finding, key: &str) -> Option<&'a str> {
    f.labels.get(key).map(String::as_str)
}

const CRYPTO: &str = "securityhub/guardduty-origin-asff-cryptocurrency-bitcointool-b-dns.json";
const S3_8: &str = "securityhub/asff-afsbp-s3-8-bucket-block-public-access.json";
const PROWLER_ASFF: &str = "prowler/prowler-3.3.0-asff-iam-rotate-and-s3-public-access-block.json";
const PROWLER_OCSF: &str = "prowler/prowler-4.2.1-json-ocsf-iam-roles.json";
const PROWLER_OCSF_EXAMPLE: &str = "prowler/prowler-5-example-output-aws.ocsf.json";

#[test]
fn guardduty_origin_crypto_asff_keeps_guardduty_source_type_and_cryptomining_class() {
    let report = parse_fixture(CRYPTO);
    let f = only_finding(&report);
    assert_eq!(f.source, "guardduty");
    assert_eq!(f.rule, "CryptoCurrency:EC2/BitcoinTool.B!DNS");
    assert_eq!(f.class, Class::Cryptomining);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(
        f.resources,
        [ResourceRef::AwsEc2Instance {
            account: Some("123456789012".into()),
            region: Some("eu-west-1".into()),
            instance_id: "i-99999999".into(),
        }]
    );
    assert_eq!(label(f, "parser"), Some("securityhub"));
    assert_eq!(label(f, "product"), Some("GuardDuty"));
    assert_eq!(label(f, "sample"), Some("true"));
    assert_eq!(label(f, "account"), Some("123456789012"));
    assert_eq!(label(f, "region"), Some("eu-west-1"));
}

#[test]
fn guardduty_origin_asff_uses_guardduty_class_table() {
    let report =
        parse_fixture("securityhub/guardduty-origin-asff-instance-credential-exfiltration.json");
    let f = only_finding(&report);
    assert_eq!(
        f.rule,
        "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration"
    );
    assert_eq!(f.class, Class::CredentialExposure);
    assert!(f.resources.iter().any(|r| matches!(
        r,
        ResourceRef::AwsIamAccessKey { access_key_id, user: Some(u), .. }
            if access_key_id == "GeneratedFindingAccessKeyId" && u == "GeneratedFindingUserName"
    )));

    // The GetFindings answer: four findings, one of which lacks the threat purpose in `Types`.
    let report = parse_fixture("securityhub/guardduty-origin-asff-getfindings-4.json");
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    let rules: Vec<(&str, Class)> = report
        .findings
        .iter()
        .map(|f| (f.rule.as_str(), f.class))
        .collect();
    assert_eq!(
        rules,
        [
            (
                "DefenseEvasion:EC2/UnusualDNSResolver",
                Class::RuntimeThreat
            ),
            ("Recon:EC2/Portscan", Class::RuntimeThreat),
            ("UnauthorizedAccess:EC2/SSHBruteForce", Class::RuntimeThreat),
            ("Discovery:IAMUser/AnomalousBehavior", Class::RuntimeThreat),
        ]
    );
    // An assumed role's key: the key is kept, the role name is not made an IAM user.
    assert!(
        !report.findings[3]
            .resources
            .iter()
            .any(|r| matches!(r, ResourceRef::AwsIamUser { .. }))
    );
}

#[test]
fn guardduty_origin_asff_of_an_exposed_dashboard_type_is_classed_like_guardduty() {
    // Derived from the real crypto ASFF finding: only `Types` changes, to the ASFF form of
    // `Policy:Kubernetes/ExposedDashboard` (no published ASFF sample of that type).
    let mut v = fixture_json(CRYPTO);
    v["Types"] =
        json!(["Software and Configuration Checks/Kubernetes/Policy:Kubernetes-ExposedDashboard"]);
    let report = parse_value("dashboard", &v);
    let f = only_finding(&report);
    assert_eq!(f.rule, "Policy:Kubernetes/ExposedDashboard");
    assert_eq!(f.class, Class::ExposedDashboard);
}

#[test]
fn fsbp_s3_8_is_public_storage_on_bucket_example() {
    let report = parse_fixture(S3_8);
    let f = only_finding(&report);
    assert_eq!(f.source, "securityhub");
    assert_eq!(f.rule, "S3.8");
    assert_eq!(f.class, Class::PublicStorage);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(
        f.resources,
        [ResourceRef::AwsS3Bucket {
            account: Some("111111111111".into()),
            region: Some("us-east-1".into()),
            bucket: "example".into(),
        }]
    );
    assert_eq!(label(f, "control"), Some("S3.8"));
    assert_eq!(
        label(f, "standard"),
        Some("aws-foundational-security-best-practices/v/1.0.0")
    );
    assert_eq!(label(f, "compliance"), Some("FAILED"));
    assert_eq!(label(f, "workflow"), Some("NEW"));
    assert_eq!(
        label(f, "generator"),
        Some("aws-foundational-security-best-practices/v/1.0.0/S3.8")
    );
}

#[test]
fn fsbp_iam_key_controls_are_misconfigurations_on_the_user() {
    for (rel, control, user) in [
        (
            "securityhub/asff-afsbp-iam3-access-keys-not-rotated.json",
            "IAM.3",
            "test-admin2",
        ),
        (
            "securityhub/asff-afsbp-iam8-unused-credentials.json",
            "IAM.8",
            "sharrtest",
        ),
    ] {
        let report = parse_fixture(rel);
        let f = only_finding(&report);
        assert_eq!(f.rule, control);
        assert_eq!(f.class, Class::Misconfiguration, "{rel}");
        assert_eq!(
            f.resources,
            [ResourceRef::AwsIamUser {
                account: Some("111111111111".into()),
                user: user.into(),
            }]
        );
    }
}

#[test]
fn fsbp_s3_1_on_the_account_has_no_resource_but_the_account_label() {
    let report = parse_fixture("securityhub/asff-afsbp-s3-1-account-block-public-access.json");
    let f = only_finding(&report);
    assert_eq!(f.rule, "S3.1");
    assert_eq!(f.class, Class::PublicStorage);
    assert!(f.resources.is_empty());
    assert_eq!(label(f, "account"), Some("111111111111"));
}

#[test]
fn passed_controls_are_counted_as_skipped_not_findings() {
    for rel in [
        "securityhub/asff-afsbp-s3-2-public-read-passed.json",
        "securityhub/asff-afsbp-s3-3-public-write-passed.json",
    ] {
        let report = parse_fixture(rel);
        assert!(report.findings.is_empty(), "{rel}");
        assert!(report.rejected.is_empty(), "{rel}: {:#?}", report.rejected);
        assert_eq!(report.skipped, 1, "{rel}");
    }
}

#[test]
fn archived_records_and_resolved_or_suppressed_workflows_are_skipped() {
    // Derived from the real S3.8 finding: only RecordState / Workflow.Status change.
    for (key, value) in [
        ("RecordState", json!("ARCHIVED")),
        ("Workflow", json!({"Status": "RESOLVED"})),
        ("Workflow", json!({"Status": "SUPPRESSED"})),
    ] {
        let mut v = fixture_json(S3_8);
        v[key] = value;
        let report = parse_value("settled", &v);
        assert!(report.findings.is_empty(), "{key}");
        assert_eq!(report.skipped, 1, "{key}");
    }
    // WARNING and NOT_AVAILABLE are still findings.
    for status in ["WARNING", "NOT_AVAILABLE"] {
        let mut v = fixture_json(S3_8);
        v["Compliance"]["Status"] = json!(status);
        assert_eq!(only_finding(&parse_value("open", &v)).rule, "S3.8");
    }
}

#[test]
fn malformed_element_in_findings_list_is_rejected_with_pointer_and_siblings_kept() {
    // A BatchImportFindings body built from two real findings; the second has a numeric
    // Severity.Label (the only change).
    let mut bad = fixture_json(S3_8);
    bad["Severity"]["Label"] = json!(70);
    let body = json!({"Findings": [fixture_json(CRYPTO), bad, fixture_json(S3_8)]});
    let report = parse_value("batch.json", &body);
    assert_eq!(report.findings.len(), 2, "{:#?}", report.rejected);
    assert_eq!(report.rejected.len(), 1);
    let r = &report.rejected[0];
    assert_eq!(r.pointer, "/Findings/1/Severity/Label");
    assert_eq!(r.parser, "securityhub");
    assert!(r.reason.contains("found a number"), "{}", r.reason);
    assert_eq!(report.findings[0].source, "guardduty");
    assert_eq!(report.findings[1].rule, "S3.8");
}

#[test]
fn rejections_name_the_field_without_echoing_it() {
    // Derived from the real S3.8 finding: an unknown label carrying a secret, and a bad time.
    let mut v = fixture_json(S3_8);
    v["Severity"]["Label"] = json!(format!("aws_secret_access_key={EXAMPLE_SECRET}"));
    let report = parse_value("bad-label", &v);
    assert_eq!(report.rejected[0].pointer, "/Severity/Label");
    assert!(!report.rejected[0].reason.contains("wJalr"));

    let mut v = fixture_json(S3_8);
    v["UpdatedAt"] = json!("last tuesday");
    let report = parse_value("bad-time", &v);
    assert_eq!(report.rejected[0].pointer, "/UpdatedAt");
    assert!(!report.rejected[0].reason.contains("tuesday"));

    let mut v = fixture_json(S3_8);
    v.as_object_mut().unwrap().remove("GeneratorId");
    let report = parse_value("no-generator", &v);
    assert_eq!(report.rejected[0].pointer, "/GeneratorId");
}

#[test]
fn eventbridge_imported_envelope_parses_its_findings() {
    let report = parse_fixture("securityhub/eventbridge-imported-afsbp-ec2-7.json");
    let f = only_finding(&report);
    assert_eq!(f.source, "securityhub");
    assert_eq!(f.rule, "EC2.7");
    assert_eq!(f.severity, Severity::Info);
    assert_eq!(f.class, Class::Misconfiguration);

    // The same real event around the GuardDuty crypto finding instead (only `detail.findings`
    // changes): pointers are relative to the event.
    let mut event = fixture_json("securityhub/eventbridge-imported-afsbp-ec2-7.json");
    let mut bad = fixture_json(CRYPTO);
    bad["Severity"] = json!({"Normalized": 400});
    event["detail"]["findings"] = json!([fixture_json(CRYPTO), bad]);
    let report = parse_value("event", &event);
    assert_eq!(report.findings.len(), 1);
    assert_eq!(
        report.findings[0].rule,
        "CryptoCurrency:EC2/BitcoinTool.B!DNS"
    );
    assert_eq!(
        report.rejected[0].pointer,
        "/detail/findings/1/Severity/Normalized"
    );
}

#[test]
fn eventbridge_custom_action_guardduty_finding_uses_normalized_severity_and_user() {
    let report =
        parse_fixture("securityhub/eventbridge-custom-action-guardduty-iam-consolelogin.json");
    let f = only_finding(&report);
    assert_eq!(f.source, "guardduty");
    assert_eq!(f.rule, "UnauthorizedAccess:IAMUser/ConsoleLogin");
    assert_eq!(f.class, Class::CredentialExposure);
    // No Label: Normalized 50 → medium.
    assert_eq!(f.severity, Severity::Medium);
    // `AWS::IAM::AccessKey:null` names no key; the user is kept.
    assert_eq!(
        f.resources,
        [ResourceRef::AwsIamUser {
            account: Some("644160558196".into()),
            user: "kapil".into(),
        }]
    );
}

#[test]
fn prowler_asff_keeps_prowler_source_and_its_check_ids() {
    let report = parse_fixture(PROWLER_ASFF);
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    assert_eq!(report.skipped, 1, "the PASSED bucket-level check");
    let got: Vec<(&str, &str, Class)> = report
        .findings
        .iter()
        .map(|f| (f.source.as_str(), f.rule.as_str(), f.class))
        .collect();
    assert_eq!(
        got,
        [
            (
                "prowler",
                "iam_rotate_access_key_90_days",
                Class::Misconfiguration
            ),
            (
                "prowler",
                "iam_rotate_access_key_90_days",
                Class::Misconfiguration
            ),
            (
                "prowler",
                "s3_account_level_public_access_blocks",
                Class::PublicStorage
            ),
            (
                "prowler",
                "s3_bucket_level_public_access_block",
                Class::PublicStorage
            ),
        ]
    );
    // root is not an IAM user to act on; `dams` is; an account id is not a bucket.
    assert!(report.findings[0].resources.is_empty());
    assert_eq!(
        report.findings[1].resources,
        [ResourceRef::AwsIamUser {
            account: Some("123456789012".into()),
            user: "dams".into(),
        }]
    );
    assert!(report.findings[2].resources.is_empty());
    assert_eq!(
        report.findings[3].resources,
        [ResourceRef::AwsS3Bucket {
            account: Some("123456789012".into()),
            region: Some("eu-west-1".into()),
            bucket: "aws-logs-123456789012-eu-west-1".into(),
        }]
    );
    assert_eq!(label(&report.findings[0], "product"), Some("Prowler"));
}

#[test]
fn prowler_ocsf_fail_results_are_findings_and_pass_is_counted() {
    let report = parse_fixture(PROWLER_OCSF);
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    // Three FAIL results; the third is muted (`status: Suppressed`) and only counted.
    assert_eq!(report.findings.len(), 2);
    assert_eq!(report.skipped, 1);
    let f = &report.findings[0];
    assert_eq!(f.source, "prowler");
    assert_eq!(
        f.rule,
        "iam_role_administratoraccess_policy_permissive_trust_relationship"
    );
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.class, Class::Misconfiguration);
    // An IAM role has no typed resource: its ARN is a label.
    assert!(f.resources.is_empty());
    assert_eq!(
        label(f, "resource_arn"),
        Some("arn:aws:iam::123456789012:role/myAdministratorExecutionRole")
    );
    assert_eq!(label(f, "account"), Some("123456789012"));
    assert_eq!(label(f, "region"), Some("us-east-1"));
    assert_eq!(
        f.observed_at.to_rfc3339(),
        "2024-06-03T14:15:19.382075+00:00"
    );

    // The same real results with the first turned into PASS and the second into MANUAL (only
    // `status_code` changes).
    let mut v = fixture_json(PROWLER_OCSF);
    v[0]["status_code"] = json!("PASS");
    v[1]["status_code"] = json!("MANUAL");
    let report = parse_value("ocsf", &v);
    assert!(report.findings.is_empty());
    assert_eq!(report.skipped, 3);
}

#[test]
fn prowler_published_example_with_integer_times_parses() {
    // Prowler's own example output (Prowler 5, OCSF 1.4.0, `datetime` profile): `time` and
    // `finding_info.created_time` are integer epoch seconds (1739539623) beside `*_dt` strings
    // without an offset, written in the scanning machine's local time (14:27:03, UTC+1): the
    // integer is the instant.
    let report = parse_fixture(PROWLER_OCSF_EXAMPLE);
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    assert_eq!(report.findings.len(), 2, "the two FAIL results");
    assert_eq!(report.skipped, 3, "the three MANUAL results");
    let f = &report.findings[0];
    assert_eq!(f.rule, "accessanalyzer_enabled");
    assert_eq!(f.severity, Severity::Low);
    assert_eq!(f.observed_at.to_rfc3339(), "2025-02-14T13:27:03+00:00");
}

/// The first real Prowler 4.2.1 result with only its time fields replaced: `event_time` and
/// `finding_info.created_time` (ISO strings in Prowler 4.2.1) removed, then `time`,
/// `time_dt`, `finding_info.created_time` and `finding_info.created_time_dt` set as given
/// (`None`: left out).
fn prowler_with_times(
    time: Option<Value>,
    time_dt: Option<&str>,
    created_time: Option<Value>,
    created_time_dt: Option<&str>,
) -> Value {
    let mut v = fixture_json(PROWLER_OCSF)[0].clone();
    v.as_object_mut().unwrap().remove("event_time");
    let info = v["finding_info"].as_object_mut().unwrap();
    info.remove("created_time");
    if let Some(t) = created_time {
        info.insert("created_time".into(), t);
    }
    if let Some(t) = created_time_dt {
        info.insert("created_time_dt".into(), json!(t));
    }
    if let Some(t) = time {
        v["time"] = t;
    }
    if let Some(t) = time_dt {
        v["time_dt"] = json!(t);
    }
    v
}

fn prowler_observed_at(v: &Value) -> String {
    only_finding(&parse_value("ocsf", v))
        .observed_at
        .to_rfc3339()
}

#[test]
fn prowler_ocsf_times_are_epoch_seconds_or_milliseconds_with_or_without_dt() {
    // 2024-06-03T14:15:19Z = 1717424119 s.
    let at = "2024-06-03T14:15:19+00:00";
    let at_ms = "2024-06-03T14:15:19.382+00:00";
    let dt = Some("2024-06-03T14:15:19.382075");
    // Integer seconds (as Prowler writes), with and without the `*_dt` strings.
    for (time_dt, created_dt) in [(None, None), (dt, dt)] {
        let v = prowler_with_times(
            Some(json!(1_717_424_119)),
            time_dt,
            Some(json!(1_717_424_119)),
            created_dt,
        );
        assert_eq!(prowler_observed_at(&v), at, "{time_dt:?}");
    }
    // Integer milliseconds (as OCSF specifies), with and without the `*_dt` strings.
    for (time_dt, created_dt) in [(None, None), (dt, dt)] {
        let v = prowler_with_times(
            Some(json!(1_717_424_119_382_i64)),
            time_dt,
            Some(json!(1_717_424_119_382_i64)),
            created_dt,
        );
        assert_eq!(prowler_observed_at(&v), at_ms, "{time_dt:?}");
    }
    // Only `finding_info.created_time` (no `time` at all), seconds and milliseconds.
    let v = prowler_with_times(None, None, Some(json!(1_717_424_119)), None);
    assert_eq!(prowler_observed_at(&v), at);
    let v = prowler_with_times(None, None, Some(json!(1_717_424_119_382_i64)), None);
    assert_eq!(prowler_observed_at(&v), at_ms);
    // Only the `*_dt` strings: read as written (no offset: UTC), with or without an offset.
    let v = prowler_with_times(None, dt, None, None);
    assert_eq!(prowler_observed_at(&v), "2024-06-03T14:15:19.382075+00:00");
    let v = prowler_with_times(None, None, None, Some("2024-06-03T16:15:19.5+02:00"));
    assert_eq!(prowler_observed_at(&v), "2024-06-03T14:15:19.500+00:00");
    // The integer wins over its `*_dt` sibling: it names an instant, the string has no offset.
    let v = prowler_with_times(
        Some(json!(1_717_424_119)),
        Some("2024-06-03T16:15:19"),
        None,
        None,
    );
    assert_eq!(prowler_observed_at(&v), at);
}

#[test]
fn prowler_ocsf_time_of_the_wrong_type_is_rejected_at_its_pointer() {
    let secs = || Some(json!(1_717_424_119));
    for (v, pointer) in [
        // `time` is OCSF timestamp_t (an integer): a string is refused.
        (
            prowler_with_times(Some(json!("2024-06-03T14:15:19")), None, None, None),
            "/time",
        ),
        // A fraction is not an epoch integer.
        (
            prowler_with_times(Some(json!(1_717_424_119.5)), None, None, None),
            "/time",
        ),
        (
            prowler_with_times(Some(json!(-5)), None, None, None),
            "/time",
        ),
        // A `*_dt` string that is no date-time, even beside a good `time`.
        (
            prowler_with_times(secs(), None, None, Some("yesterday")),
            "/finding_info/created_time_dt",
        ),
        (
            prowler_with_times(None, None, Some(json!(true)), None),
            "/finding_info/created_time",
        ),
    ] {
        let report = parse_value("ocsf", &v);
        assert!(report.findings.is_empty(), "{pointer}");
        assert_eq!(report.rejected.len(), 1, "{pointer}");
        assert_eq!(report.rejected[0].pointer, pointer);
        assert_eq!(report.rejected[0].source, "ocsf");
        assert_eq!(report.rejected[0].parser, "prowler");
    }
    // `*_dt` is datetime_t (a string): a number is refused, even beside a good `time`.
    let mut v = prowler_with_times(secs(), None, None, None);
    v["time_dt"] = json!(1_717_424_119);
    let report = parse_value("ocsf", &v);
    assert_eq!(report.rejected[0].pointer, "/time_dt");
    assert!(
        report.rejected[0]
            .reason
            .contains("expected an RFC 3339 date-time string"),
        "{}",
        report.rejected[0].reason
    );
    // No time at all.
    let v = prowler_with_times(None, None, None, None);
    let report = parse_value("ocsf", &v);
    assert_eq!(report.rejected[0].pointer, "/time");
    assert!(
        report.rejected[0]
            .reason
            .contains("required field is missing")
    );
}

#[test]
fn prowler_ocsf_fields_of_the_wrong_type_are_rejected_at_their_pointer() {
    // Each OCSF field the parser reads, given a value of another JSON type than the schema's
    // (derived from the real Prowler 4.2.1 result; only that field changes).
    for (pointer, junk) in [
        ("/severity_id", json!("4")),
        ("/status", json!(3)),
        ("/cloud", json!("aws")),
        ("/cloud/account", json!("123456789012")),
        ("/cloud/account/uid", json!(123_456_789_012_u64)),
        ("/cloud/region", json!(["us-east-1"])),
        ("/cloud/provider", json!(1)),
        ("/resources/0", json!("arn:aws:iam::123456789012:role/x")),
        ("/resources/0/uid", json!(7)),
        ("/resources/0/region", json!(false)),
        ("/resources/0/type", json!({})),
        ("/finding_info/title", json!(1)),
        ("/metadata/product", json!("Prowler")),
    ] {
        let mut v = fixture_json(PROWLER_OCSF)[0].clone();
        *v.pointer_mut(pointer).unwrap() = junk;
        let report = parse_input(
            "ocsf",
            serde_json::to_string(&v).unwrap().as_bytes(),
            ParserChoice::Fixed(firebreak::finding::parser("prowler").unwrap()),
        );
        assert!(
            report.findings.is_empty(),
            "{pointer}: {:#?}",
            report.findings
        );
        assert_eq!(report.rejected.len(), 1, "{pointer}");
        assert_eq!(report.rejected[0].pointer, pointer);
    }
}

#[test]
fn prowler_ocsf_bad_record_is_rejected_alone() {
    // Derived from the real output: the second result's severity becomes a number.
    let mut v = fixture_json(PROWLER_OCSF);
    v[1]["severity"] = json!(4);
    let report = parse_value("ocsf", &v);
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.skipped, 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].index, 1);
    assert_eq!(report.rejected[0].pointer, "/severity");
    assert_eq!(report.rejected[0].parser, "prowler");
}

#[test]
fn no_secret_material_reaches_findings_labels_or_fields() {
    // Real findings with AWS's example secret written into free text (Description, a product
    // field, a resource tag), as a careless integration might.
    let secret = format!("aws_secret_access_key={EXAMPLE_SECRET}");
    let mut asff = fixture_json(CRYPTO);
    asff["Description"] = json!(format!("found {secret}"));
    asff["ProductFields"]["custom/evidence"] = json!(secret.clone());
    asff["Title"] = json!(format!("leak {secret}"));
    let mut ocsf = fixture_json(PROWLER_OCSF);
    ocsf[0]["status_detail"] = json!(secret.clone());
    ocsf[0]["finding_info"]["title"] = json!(secret.clone());
    for (name, v) in [("asff", asff), ("ocsf", ocsf)] {
        let report = parse_value(name, &v);
        assert!(!report.findings.is_empty(), "{name}");
        let out = serde_json::to_string(&report).unwrap();
        assert!(!out.contains(EXAMPLE_SECRET), "{name}: {out}");
    }
}

#[test]
fn sniffing_claims_asff_but_not_guardduty_getfindings() {
    let sh = PARSERS.iter().find(|p| p.id() == "securityhub").unwrap();
    let prowler = PARSERS.iter().find(|p| p.id() == "prowler").unwrap();
    // A real GuardDuty GetFindings answer (SchemaVersion, no ProductArn) is not ASFF.
    let gd = fixture_json("guardduty/getfindings-trojan-droppoint-dns.json");
    assert!(!sh.sniff(&gd));
    assert!(!sh.sniff(&gd["Findings"][0]));
    assert!(sh.sniff(&fixture_json(CRYPTO)));
    assert!(!prowler.sniff(&fixture_json(CRYPTO)));
    assert!(prowler.sniff(&fixture_json(PROWLER_OCSF)[0]));
    assert!(!sh.sniff(&fixture_json(PROWLER_OCSF)[0]));
}

#[test]
fn every_securityhub_and_prowler_fixture_is_claimed_once_and_parses_cleanly() {
    // The registry test checks this for every fixture directory; this one keeps these two
    // directories checked on their own.
    let sources = known_sources();
    for dir in ["securityhub", "prowler"] {
        let mut files: Vec<_> = std::fs::read_dir(Path::new(FIXTURES).join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let rel = format!("{dir}/{file}");
            let expected = if file.contains("asff") {
                "securityhub"
            } else {
                dir
            };
            let bytes = std::fs::read(&path).unwrap();
            let mut scratch = ParseReport::default();
            for doc in decode(&rel, &bytes, &mut scratch) {
                let claimed: Vec<&str> = PARSERS
                    .iter()
                    .filter(|p| p.sniff(&doc.value))
                    .map(|p| p.id())
                    .collect();
                assert_eq!(claimed, [expected], "{rel} record {}", doc.index);
            }
            let report = parse_fixture(&rel);
            assert!(report.rejected.is_empty(), "{rel}: {:#?}", report.rejected);
            assert!(!report.findings.is_empty() || report.skipped > 0, "{rel}");
            for f in &report.findings {
                assert!(sources.contains(&f.source.as_str()), "{rel}: {}", f.source);
            }
        }
    }
}

#[test]
fn garbage_shaped_like_asff_never_panics() {
    // Derived from the real S3.8 finding: each top-level field in turn replaced by values of
    // every JSON type.
    let base = fixture_json(S3_8);
    let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
    for key in keys {
        for junk in [
            json!(null),
            json!(true),
            json!(-1),
            json!(1e300),
            json!("x"),
            json!([]),
            json!([1, {"Type": 2}]),
            json!({}),
        ] {
            let mut v = base.clone();
            v[key.as_str()] = junk;
            let report = parse_value("junk", &v);
            assert_eq!(
                report.findings.len() + report.rejected.len() + report.skipped,
                1,
                "{key}"
            );
        }
    }
}
