//! Falco and GuardDuty parsers against real scanner output (`tests/fixtures/findings/`).
//!
//! Variants that have no published sample (a Falcosidekick payload, Falco miner rules, a
//! malformed record, GuardDuty types such as `Policy:Kubernetes/ExposedDashboard`) are derived
//! here from a real fixture by changing only the fields that differ; each test says which.

use std::path::{Path, PathBuf};

use firebreak::finding::{
    Class, Finding, ParseReport, ParserChoice, ResourceRef, Severity, parse_input,
};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/findings");

/// AWS's documented example secret access key.
const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn fixture_path(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(fixture_path(rel)).unwrap()
}

fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(rel)).unwrap()
}

fn parse_auto(name: &str, bytes: &[u8]) -> ParseReport {
    parse_input(name, bytes, ParserChoice::Auto)
}

fn parse_value(name: &str, v: &Value) -> ParseReport {
    parse_auto(name, serde_json::to_string(v).unwrap().as_bytes())
}

fn only_finding(report: &ParseReport) -> &Finding {
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
    &report.findings[0]
}

#[test]
fn falco_critical_shell_in_container_is_critical_runtime_threat_on_the_pod() {
    let report = parse_auto(
        "shell",
        &fixture_bytes("falco/terminal-shell-in-container.json"),
    );
    let f = only_finding(&report);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.class, Class::RuntimeThreat);
    assert_eq!(f.rule, "Terminal shell in container");
    assert!(
        f.title
            .starts_with("A shell was spawned in a container with an attached terminal"),
        "{}",
        f.title
    );
    assert_eq!(
        f.resources,
        [
            ResourceRef::Kubernetes {
                cluster: None,
                namespace: Some("default".into()),
                kind: "Pod".into(),
                name: "kubecon".into(),
                container: None,
            },
            ResourceRef::Image {
                reference: "docker.io/library/alpine".into(),
                digest: None,
            },
            ResourceRef::Host {
                name: "falco-xczjd".into(),
            },
        ]
    );
    assert_eq!(f.labels["priority"], "Critical");
    assert_eq!(f.labels["falco.source"], "syscall");
    assert_eq!(f.labels["tag.shell"], "true");
    assert_eq!(f.labels["hostname"], "falco-xczjd");
}

#[test]
fn falco_notice_is_low_severity_and_image_keeps_its_tag() {
    let report = parse_auto(
        "k8s-api",
        &fixture_bytes("falco/contact-k8s-api-server-from-container.json"),
    );
    let f = only_finding(&report);
    assert_eq!(f.severity, Severity::Low);
    assert_eq!(f.class, Class::RuntimeThreat);
    assert!(f.resources.contains(&ResourceRef::Image {
        reference: "devopps/falco-pod-delete:latest".into(),
        digest: None,
    }));
}

#[test]
fn falco_miner_rules_are_cryptomining() {
    // Derived: Falco publishes its miner alerts only as text, so the real json_output line of
    // another rule gets the miner rule's name; nothing else changes.
    for rule in [
        "Detect outbound connections to common miner pool ports",
        "Detect crypto miners using the Stratum protocol",
    ] {
        let mut v = fixture_json("falco/contact-k8s-api-server-from-container.json");
        v["rule"] = json!(rule);
        let report = parse_value("miner", &v);
        let f = only_finding(&report);
        assert_eq!(f.class, Class::Cryptomining, "{rule}");
        assert_eq!(f.rule, rule);
    }
}

#[test]
fn falcosidekick_payload_parses_like_json_output_and_names_the_cluster() {
    // Derived: Falcosidekick POSTs Falco's json_output plus a `uuid`, with its custom fields
    // (here `cluster`) merged into `output_fields`. Only those two keys are added.
    let mut v = fixture_json("falco/terminal-shell-in-container.json");
    v["uuid"] = json!("5c8ab45b-0a6b-4a3c-8a83-5e6a64b0f5d1");
    v["output_fields"]["cluster"] = json!("prod-eu");
    let report = parse_value("sidekick", &v);
    let f = only_finding(&report);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(
        f.resources[0],
        ResourceRef::Kubernetes {
            cluster: Some("prod-eu".into()),
            namespace: Some("default".into()),
            kind: "Pod".into(),
            name: "kubecon".into(),
            container: None,
        }
    );
}

#[test]
fn falco_record_missing_rule_is_rejected_at_rule() {
    // Derived: the real line with its `rule` key removed.
    let mut v = fixture_json("falco/terminal-shell-in-container.json");
    v.as_object_mut().unwrap().remove("rule");
    let report = parse_value("no-rule", &v);
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    assert_eq!(report.rejected[0].parser, "falco");
    assert_eq!(report.rejected[0].pointer, "/rule");
}

#[test]
fn falco_record_with_invalid_time_is_rejected_at_time_without_echoing_it() {
    // Derived: the real line with `time` replaced by a non-RFC 3339 value.
    let mut v = fixture_json("falco/terminal-shell-in-container.json");
    v["time"] = json!("yesterday-ish");
    let report = parse_value("bad-time", &v);
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected[0].pointer, "/time");
    assert!(!report.rejected[0].reason.contains("yesterday-ish"));
}

#[test]
fn truncated_falco_line_is_rejected_with_its_line_number_and_others_parsed() {
    // Derived: three JSON lines made of the two real lines, the middle one cut in half.
    let shell = String::from_utf8(fixture_bytes("falco/terminal-shell-in-container.json")).unwrap();
    let api = String::from_utf8(fixture_bytes(
        "falco/contact-k8s-api-server-from-container.json",
    ))
    .unwrap();
    let input = format!(
        "{}\n{}\n{}\n",
        shell.trim_end(),
        &api[..api.len() / 2],
        api.trim_end()
    );
    let report = parse_auto("falco.jsonl", input.as_bytes());
    assert_eq!(report.findings.len(), 2, "{:#?}", report.rejected);
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    assert_eq!(report.rejected[0].line, Some(2));
    assert_eq!(report.rejected[0].index, 1);
    assert!(report.findings.iter().all(|f| f.source == "falco"));
}

#[test]
fn no_secret_from_a_falco_command_line_reaches_the_output() {
    // Derived: the real shell alert, its command line (in `output` and in
    // `output_fields.proc.cmdline`) replaced by one carrying AWS's example secret key.
    let cmdline = format!("sh -c aws_secret_access_key={EXAMPLE_SECRET} aws s3 ls");
    let mut v = fixture_json("falco/terminal-shell-in-container.json");
    let output = v["output"].as_str().unwrap().replace(
        "cmdline=sh -c clear; (bash || ash || sh)",
        &format!("cmdline={cmdline}"),
    );
    assert!(output.contains(EXAMPLE_SECRET));
    v["output"] = json!(output);
    v["output_fields"]["proc.cmdline"] = json!(cmdline);
    let report = parse_value("secret", &v);
    let f = only_finding(&report);

    let serialized = serde_json::to_string(&report).unwrap();
    assert!(!serialized.contains(EXAMPLE_SECRET), "{serialized}");
    assert!(!format!("{report:?}").contains(EXAMPLE_SECRET));
    assert!(
        f.title.contains("aws_secret_access_key=[REDACTED]"),
        "{}",
        f.title
    );
}

#[test]
fn guardduty_cryptocurrency_type_is_cryptomining() {
    // Derived: the real EventBridge sample finding with its `type` changed to a crypto type.
    let mut v = fixture_json("guardduty/eventbridge-guardduty-finding-backdoor-c2-dns.json");
    v["detail"]["type"] = json!("CryptoCurrency:EC2/BitcoinTool.B!DNS");
    let report = parse_value("crypto", &v);
    let f = only_finding(&report);
    assert_eq!(f.class, Class::Cryptomining);
    assert_eq!(f.rule, "CryptoCurrency:EC2/BitcoinTool.B!DNS");
    assert_eq!(f.severity, Severity::Medium);
    assert_eq!(
        f.resources,
        [ResourceRef::AwsEc2Instance {
            account: Some("883606788610".into()),
            region: Some("us-east-1".into()),
            instance_id: "i-99999999".into(),
        }]
    );
}

#[test]
fn guardduty_tor_iam_caller_is_credential_exposure_on_the_access_key() {
    let report = parse_auto(
        "tor",
        &fixture_bytes("guardduty/eventbridge-guardduty-finding-iam-toripcaller.json"),
    );
    let f = only_finding(&report);
    assert_eq!(f.class, Class::CredentialExposure);
    assert_eq!(f.severity, Severity::Medium);
    assert_eq!(f.rule, "UnauthorizedAccess:IAMUser/TorIPCaller");
    assert_eq!(
        f.resources,
        [
            ResourceRef::AwsIamAccessKey {
                account: Some("883606788610".into()),
                user: Some("GeneratedFindingUserName".into()),
                access_key_id: "GeneratedFindingAccessKeyId".into(),
            },
            ResourceRef::AwsIamUser {
                account: Some("883606788610".into()),
                user: "GeneratedFindingUserName".into(),
            },
        ]
    );
    assert_eq!(f.labels["sample"], "true");
    assert_eq!(f.labels["guardduty.type"], f.rule);
    assert_eq!(
        f.labels["guardduty.detector_id"],
        "c0b018e3eb2130078632d999e41d4f02"
    );
}

#[test]
fn guardduty_severity_follows_guardduty_bands() {
    // Real: the Trojan GetFindings answer has Severity 8 (GuardDuty "high").
    let report = parse_auto(
        "trojan",
        &fixture_bytes("guardduty/getfindings-trojan-droppoint-dns.json"),
    );
    assert_eq!(only_finding(&report).severity, Severity::High);
    // The sample marker sits in the JSON text of AdditionalInfo.Value in this shape.
    assert_eq!(only_finding(&report).labels["sample"], "true");

    // Derived: the same finding with only its Severity number changed.
    for (score, expected) in [
        (json!(2.0), Severity::Low),
        (json!(6.9), Severity::Medium),
        (json!(9), Severity::Critical),
    ] {
        let mut v = fixture_json("guardduty/getfindings-trojan-droppoint-dns.json");
        v["Findings"][0]["Severity"] = score.clone();
        let report = parse_value("trojan-rescored", &v);
        assert_eq!(only_finding(&report).severity, expected, "{score}");
    }
}

#[test]
fn guardduty_eks_finding_targets_the_workload_in_its_cluster() {
    let report = parse_auto(
        "eks",
        &fixture_bytes("guardduty/getfindings-eks-privilegedcontainer-argocd.json"),
    );
    let f = only_finding(&report);
    assert_eq!(f.class, Class::RuntimeThreat);
    assert_eq!(
        f.resources,
        [ResourceRef::Kubernetes {
            cluster: Some("guardduty-blueprint".into()),
            namespace: Some("argocd".into()),
            kind: "Pod".into(),
            name: "privileged-pod".into(),
            container: None,
        }]
    );
    assert_eq!(f.labels["account"], "123456789012");
    assert!(!f.labels.contains_key("sample"), "a real finding");
}

#[test]
fn guardduty_exposed_dashboard_type_is_exposed_dashboard() {
    // Derived: no published sample of Policy:Kubernetes/ExposedDashboard exists; the real EKS
    // GetFindings answer gets that Type, nothing else changes.
    let mut v = fixture_json("guardduty/getfindings-eks-privilegedcontainer-argocd.json");
    v["Findings"][0]["Type"] = json!("Policy:Kubernetes/ExposedDashboard");
    let report = parse_value("dashboard", &v);
    assert_eq!(only_finding(&report).class, Class::ExposedDashboard);
}

#[test]
fn guardduty_bare_list_of_findings_yields_one_finding_each() {
    // Derived: a JSON list of two real bare findings (the `detail` of an EventBridge event and
    // a bare finding file).
    let list = json!([
        fixture_json("guardduty/eventbridge-guardduty-finding-backdoor-c2-dns.json")["detail"],
        fixture_json("guardduty/finding-recon-iamuser-maliciousipcaller-custom.json"),
    ]);
    let report = parse_value("list", &list);
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    let rules: Vec<&str> = report.findings.iter().map(|f| f.rule.as_str()).collect();
    assert_eq!(
        rules,
        [
            "Backdoor:EC2/C&CActivity.B!DNS",
            "Recon:IAMUser/MaliciousIPCaller.Custom"
        ]
    );
}

#[test]
fn getfindings_element_with_string_severity_is_rejected_and_siblings_kept() {
    // Derived: the real GetFindings element three times, the first with a string Severity.
    let real =
        fixture_json("guardduty/getfindings-trojan-droppoint-dns.json")["Findings"][0].clone();
    let mut bad = real.clone();
    bad["Severity"] = json!("HIGH");
    let v = json!({ "Findings": [bad, real.clone(), real] });
    let report = parse_value("getfindings", &v);
    assert_eq!(report.findings.len(), 2, "{:#?}", report.rejected);
    assert_eq!(report.rejected.len(), 1);
    let r = &report.rejected[0];
    assert_eq!(r.parser, "guardduty");
    assert_eq!(r.pointer, "/Findings/0/Severity");
    assert!(r.reason.contains("found a string"), "{}", r.reason);
    assert!(
        !r.reason.contains("HIGH"),
        "reason echoes the payload: {}",
        r.reason
    );
}

/// Every fixture file of one scanner directory, sorted.
fn fixture_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(FIXTURES).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn fixed_falco_parser_rejects_guardduty_records_with_a_reason() {
    let falco = ParserChoice::from_id("falco").unwrap();
    for path in fixture_files("guardduty") {
        let report = parse_input("gd", &std::fs::read(&path).unwrap(), falco);
        assert!(report.findings.is_empty(), "{}", path.display());
        assert!(!report.rejected.is_empty(), "{}", path.display());
        for r in &report.rejected {
            assert_eq!(r.parser, "falco");
            assert!(r.reason.contains("not a Falco alert"), "{r}");
        }
    }
}

#[test]
fn fixed_guardduty_parser_rejects_falco_records_with_a_reason() {
    let guardduty = ParserChoice::from_id("guardduty").unwrap();
    for path in fixture_files("falco") {
        let report = parse_input("falco", &std::fs::read(&path).unwrap(), guardduty);
        assert!(report.findings.is_empty(), "{}", path.display());
        assert_eq!(report.rejected.len(), 1, "{}", path.display());
        assert!(
            report.rejected[0]
                .reason
                .contains("not a GuardDuty finding"),
            "{}",
            report.rejected[0]
        );
    }
}
