//! Trivy, Trivy Operator, kube-bench, kube-hunter and Kubernetes Event parsers against real
//! scanner output (`tests/fixtures/findings/`), and the YAML decoding they rely on.
//!
//! Variants with no published sample (a `trivy image` report, an unmasked AWS key id, a
//! kube-hunter "Dashboard Exposed", an events.k8s.io/v1 Event, malformed records) are derived
//! here from a real fixture by changing only the fields that differ; each test says which.

use chrono::{DateTime, Utc};
use firebreak::finding::{
    Class, Finding, ParseReport, ParserChoice, ResourceRef, Severity, parse_input,
};
use serde_json::{Value, json};

use crate::fixtures::bytes;

const TRIVY_FS: &str = "trivy/trivy-fs-misconfig-and-secrets.json";
const TRIVY_K8S: &str = "trivy/trivy-k8s-cluster-report-eks.json";
const TRIVY_SECRET: &str = "trivy/trivy-secret-aws-access-key-id.json";
const OPERATOR_SECRET_YAML: &str = "trivy-operator/exposedsecretreport-docs.yaml";
const OPERATOR_SECRET_JSON: &str = "trivy-operator/exposedsecretreport.json";
const OPERATOR_CONFIG: &str = "trivy-operator/configauditreport.json";
const KUBE_BENCH_FULL: &str = "kube-bench/kube-bench-cis-1.6-full-run.json";
const KUBE_BENCH_ARRAY: &str = "kube-bench/kube-bench-controls-array.json";
const KUBE_HUNTER: &str = "kube-hunter/kube-hunter-report.json";
const EVENT: &str = "k8s-event/event-v1-started-container.json";

/// AWS's documented example access key id and secret access key.
const EXAMPLE_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn json_fixture(rel: &str) -> Value {
    serde_json::from_slice(&bytes(rel)).unwrap()
}

fn parse_bytes(name: &str, input: &[u8]) -> ParseReport {
    parse_input(name, input, ParserChoice::Auto)
}

fn parse_value(name: &str, v: &Value) -> ParseReport {
    parse_bytes(name, &serde_json::to_vec(v).unwrap())
}

fn clean(report: &ParseReport) -> &[Finding] {
    assert!(report.rejected.is_empty(), "{:#?}", report.rejected);
    &report.findings
}

fn by_rule<'a>(findings: &'a [Finding], rule: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.rule == rule)
        .unwrap_or_else(|| panic!("no finding with rule {rule}"))
}

fn k8s(namespace: Option<&str>, kind: &str, name: &str) -> ResourceRef {
    ResourceRef::Kubernetes {
        cluster: None,
        namespace: namespace.map(str::to_owned),
        kind: kind.to_owned(),
        name: name.to_owned(),
        container: None,
    }
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

// --- Trivy -------------------------------------------------------------------------------------

#[test]
fn trivy_image_vulnerability_is_a_vulnerability_on_the_image() {
    // No `trivy image` report is published under a usable licence: derived from the real
    // `trivy fs` report by changing only ArtifactType and ArtifactName (the image is the one
    // the real `trivy k8s` fixture scanned).
    let mut v = json_fixture(TRIVY_FS);
    v["ArtifactType"] = json!("container_image");
    v["ArtifactName"] = json!("gcr.io/google_samples/gb-redis-follower:v2");
    let report = parse_value("image.json", &v);
    let findings = clean(&report);
    let f = by_rule(findings, "CVE-2021-33503");
    assert_eq!(f.source, "trivy");
    assert_eq!(f.class, Class::Vulnerability);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(
        f.resources,
        [ResourceRef::Image {
            reference: "gcr.io/google_samples/gb-redis-follower:v2".into(),
            digest: None,
        }]
    );
    assert!(
        f.title.starts_with("CVE-2021-33503 in urllib3 1.26.3: "),
        "{}",
        f.title
    );
    assert_eq!(f.labels["fixed_version"], "1.26.5");
    assert_eq!(f.labels["trivy.target"], "requirements.txt");
    // The Dockerfile check and both secrets are still there, on the same image.
    assert_eq!(by_rule(findings, "DS002").class, Class::Misconfiguration);
    assert_eq!(
        findings.iter().filter(|f| f.rule == "github-pat").count(),
        2
    );
}

#[test]
fn trivy_k8s_report_findings_name_the_workload_its_cluster_and_image() {
    let report = parse_bytes(TRIVY_K8S, &bytes(TRIVY_K8S));
    let findings = clean(&report);
    let cluster = "arn:aws:eks:us-east-1:576036489467:cluster/monitoring-test-cluster";
    let vuln = by_rule(findings, "CVE-2020-27350");
    assert_eq!(vuln.class, Class::Vulnerability);
    assert_eq!(
        vuln.resources,
        [
            ResourceRef::Kubernetes {
                cluster: Some(cluster.into()),
                namespace: Some("default".into()),
                kind: "Deployment".into(),
                name: "redis-follower".into(),
                container: None,
            },
            ResourceRef::Image {
                reference: "gcr.io/google_samples/gb-redis-follower:v2".into(),
                digest: None,
            },
        ]
    );
    let misconfig = by_rule(findings, "KSV001");
    assert_eq!(misconfig.class, Class::Misconfiguration);
    assert_eq!(misconfig.resources.len(), 1);
    assert_eq!(misconfig.labels["cluster"], cluster);
}

#[test]
fn trivy_aws_key_secret_keeps_the_key_id_and_never_the_secret() {
    // Trivy masked the key in its golden file; derived by putting AWS's documented example key
    // id where the mask is (in `Match` and in the cause line of `Code`), nothing else changed.
    let mut v = json_fixture(TRIVY_SECRET);
    let masked = "export AWS_ACCESS_KEY_ID=********************";
    let unmasked = format!("export AWS_ACCESS_KEY_ID={EXAMPLE_KEY_ID}");
    let secret = &mut v["Results"][0]["Secrets"][0];
    assert_eq!(secret["Match"], masked);
    secret["Match"] = json!(unmasked);
    for line in secret["Code"]["Lines"].as_array_mut().unwrap() {
        for key in ["Content", "Highlighted"] {
            if line[key] == masked {
                line[key] = json!(unmasked);
            }
        }
    }
    let report = parse_value("secret.json", &v);
    let findings = clean(&report);
    let f = by_rule(findings, "aws-access-key-id");
    assert_eq!(f.class, Class::CredentialExposure);
    assert_eq!(f.severity, Severity::Critical);
    assert!(f.resources.contains(&ResourceRef::AwsIamAccessKey {
        account: None,
        user: None,
        access_key_id: EXAMPLE_KEY_ID.into(),
    }));
    assert_eq!(
        f.labels["secret_hash"],
        firebreak::redact::secret_hash(&unmasked)
    );
    for key in ["Match", "Code"] {
        assert!(f.fields.get(key).is_none(), "{key} kept: {}", f.fields);
    }
    // The other secret of the file is a custom rule: no key id, no resource.
    assert!(by_rule(findings, "mysecret").resources.is_empty());

    // Nothing of the matched lines, nor the GitHub token in the context lines, leaves.
    let out = serde_json::to_string(&report).unwrap();
    for needle in [
        unmasked.as_str(),
        // The token in the fixture's context lines, spelled in two parts so the source holds
        // no credential-shaped literal.
        &format!("{}_{}", "ghp", "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        "echo ********",
        "GITHUB_PAT",
    ] {
        assert!(!out.contains(needle), "{needle} leaked into {out}");
    }
}

#[test]
fn same_secret_in_two_findings_shares_its_secret_hash() {
    let report = parse_bytes(TRIVY_FS, &bytes(TRIVY_FS));
    let findings = clean(&report);
    let hashes: Vec<&str> = findings
        .iter()
        .filter(|f| f.rule == "github-pat")
        .map(|f| f.labels["secret_hash"].as_str())
        .collect();
    // `ENV GITHUB_PAT=*****` and `GITHUB_PAT=*****` are different matches.
    assert_eq!(hashes.len(), 2);
    assert_ne!(hashes[0], hashes[1]);
    // Parsing again gives the same hashes: they link findings across reports.
    let again = parse_bytes(TRIVY_FS, &bytes(TRIVY_FS));
    assert_eq!(
        again.findings[3].labels["secret_hash"],
        findings[3].labels["secret_hash"]
    );
}

// --- Trivy Operator ----------------------------------------------------------------------------

#[test]
fn trivy_operator_yaml_report_parses_like_json() {
    let yaml = bytes(OPERATOR_SECRET_YAML);
    let report = parse_bytes(OPERATOR_SECRET_YAML, &yaml);
    let findings = clean(&report);
    assert_eq!(findings.len(), 2);
    let f = &findings[0];
    assert_eq!(f.source, "trivy-operator");
    assert_eq!(f.rule, "stripe-access-token");
    assert_eq!(f.class, Class::CredentialExposure);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.observed_at, time("2022-06-29T14:29:37Z"));
    assert_eq!(
        f.resources,
        [
            ResourceRef::Kubernetes {
                cluster: None,
                namespace: Some("default".into()),
                kind: "ReplicaSet".into(),
                name: "app-67b77f5965".into(),
                container: Some("app".into()),
            },
            ResourceRef::Image {
                reference: "index.docker.io/myimagewithsecret:v1.2.3".into(),
                digest: None,
            },
        ]
    );
    assert!(f.fields.get("match").is_none());

    // The same document as JSON gives the same findings (ids aside).
    let text = std::str::from_utf8(&yaml).unwrap();
    let as_json: Value = serde_saphyr::from_str(text).unwrap();
    let from_json = parse_value("as.json", &as_json);
    let strip = |fs: &[Finding]| -> Vec<Value> {
        fs.iter()
            .map(|f| {
                let mut v = serde_json::to_value(f).unwrap();
                v["id"] = Value::Null;
                v
            })
            .collect()
    };
    assert_eq!(strip(clean(&from_json)), strip(findings));
}

#[test]
fn trivy_operator_secret_value_never_reaches_the_output() {
    // The operator masked the value; derived by putting AWS's documented example secret where
    // the mask is in `match`, nothing else changed.
    let mut v = json_fixture(OPERATOR_SECRET_JSON);
    let secret = &mut v["report"]["secrets"][0];
    let matched = secret["match"].as_str().unwrap().to_owned();
    assert!(matched.contains("****"));
    let unmasked = format!("AWS_secret_KEY=\"{EXAMPLE_SECRET}\"");
    secret["match"] = json!(unmasked);
    let report = parse_value("operator-secret.json", &v);
    let f = &clean(&report)[0];
    assert_eq!(f.rule, "aws-secret-access-key");
    assert_eq!(f.class, Class::CredentialExposure);
    assert_eq!(
        f.labels["secret_hash"],
        firebreak::redact::secret_hash(&unmasked)
    );
    // An AWS rule, but the match holds no access key id: no key resource.
    assert!(
        !f.resources
            .iter()
            .any(|r| matches!(r, ResourceRef::AwsIamAccessKey { .. }))
    );
    let out = serde_json::to_string(&report).unwrap();
    assert!(!out.contains(EXAMPLE_SECRET), "{out}");
    assert!(!out.contains("wJalrXUtnFEMI"), "{out}");
}

#[test]
fn trivy_operator_list_keeps_good_reports_when_one_check_is_malformed() {
    // A `kubectl get configauditreports -o json` list, derived from the real report: the same
    // report twice, the second with its first check's severity broken.
    let good = json_fixture(OPERATOR_CONFIG);
    let mut bad = good.clone();
    bad["report"]["checks"][0]["severity"] = json!("SEVERE");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [good, bad]});
    let report = parse_value("list.json", &list);
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    let r = &report.rejected[0];
    assert_eq!(r.parser, "trivy-operator");
    assert_eq!(r.pointer, "/items/1/report/checks/0/severity");
    assert!(!r.reason.contains("SEVERE"), "{}", r.reason);
    assert_eq!(report.findings.len(), 13 + 12);
    let f = by_rule(&report.findings, "KSV014");
    assert_eq!(f.class, Class::Misconfiguration);
    assert_eq!(
        f.resources,
        [k8s(
            Some("default"),
            "ReplicaSet",
            "nginx-deployment-965685897"
        )]
    );
}

// --- YAML decoding -----------------------------------------------------------------------------

#[test]
fn yaml_alias_bomb_is_rejected_with_a_reason_instead_of_expanding() {
    // "Billion laughs": nine levels of nine aliases, 9^9 (387 million) strings once expanded.
    let mut yaml = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(",");
        yaml.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    let report = parse_bytes("bomb.yaml", yaml.as_bytes());
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    let reason = &report.rejected[0].reason;
    assert!(reason.starts_with("invalid YAML"), "{reason}");
    assert!(reason.contains("too large or too complex"), "{reason}");
    assert!(!reason.contains("lol"), "{reason}");
}

#[test]
fn malformed_yaml_is_rejected_with_its_line() {
    // The real YAML report with one line broken: `tag: v1.2.3` opens a flow sequence it
    // never closes.
    let text = String::from_utf8(bytes(OPERATOR_SECRET_YAML)).unwrap();
    let broken = text.replace("    tag: v1.2.3\n", "    tag: [v1.2.3\n");
    assert_ne!(broken, text);
    let report = parse_bytes("broken.yaml", broken.as_bytes());
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    let r = &report.rejected[0];
    let line = r.line.expect("a YAML error has a line");
    // Line 26 is broken; the parser notices on it or on the next line.
    assert!((26..=27).contains(&line), "line {line}: {}", r.reason);
    assert!(
        r.reason
            .starts_with(&format!("invalid YAML at line {line} column ")),
        "{}",
        r.reason
    );
    assert!(!r.reason.contains("myimagewithsecret"), "{}", r.reason);
}

#[test]
fn deeply_nested_input_is_rejected_without_overflowing_the_stack() {
    let depth = 10_000;
    let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let report = parse_bytes("deep.json", json.as_bytes());
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);

    // The same in YAML, as flow sequences and as block mappings.
    let flow = format!("report: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let report = parse_bytes("deep-flow.yaml", flow.as_bytes());
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    assert!(report.rejected[0].reason.starts_with("invalid YAML"));

    let mut block = String::new();
    for level in 0..1_000 {
        block.push_str(&" ".repeat(level));
        block.push_str("k:\n");
    }
    let report = parse_bytes("deep-block.yaml", block.as_bytes());
    assert!(report.findings.is_empty());
    assert_eq!(report.rejected.len(), 1, "{:#?}", report.rejected);
    assert!(report.rejected[0].reason.starts_with("invalid YAML"));
}

// --- kube-bench --------------------------------------------------------------------------------

#[test]
fn kube_bench_fail_and_warn_become_findings_and_pass_is_counted() {
    let report = parse_bytes(KUBE_BENCH_FULL, &bytes(KUBE_BENCH_FULL));
    let findings = clean(&report);
    // Totals in the file: 36 FAIL, 49 WARN, 37 PASS, 0 INFO.
    assert_eq!(findings.len(), 36 + 49);
    assert_eq!(report.skipped, 37);
    assert!(findings.iter().all(|f| f.source == "kube-bench"));

    let anonymous_api = by_rule(findings, "1.2.1");
    assert!(
        anonymous_api.title.contains("--anonymous-auth"),
        "{}",
        anonymous_api.title
    );
    assert_eq!(anonymous_api.class, Class::Misconfiguration);
    assert_eq!(anonymous_api.labels["status"], "WARN");
    assert_eq!(anonymous_api.severity, Severity::Low);
    assert_eq!(anonymous_api.resources, [k8s(None, "Node", "master")]);

    let anonymous_kubelet = by_rule(findings, "4.2.1");
    assert_eq!(anonymous_kubelet.labels["status"], "FAIL");
    assert_eq!(anonymous_kubelet.severity, Severity::Medium);
    assert_eq!(anonymous_kubelet.resources, [k8s(None, "Node", "node")]);
    assert_eq!(anonymous_kubelet.labels["kube-bench.benchmark"], "1.6");

    // Cluster-wide policies are about the cluster, not a node.
    let policy = findings
        .iter()
        .find(|f| f.labels["kube-bench.node_type"] == "policies")
        .unwrap();
    assert_eq!(policy.resources, [k8s(None, "Cluster", "policies")]);
}

#[test]
fn kube_bench_bare_controls_array_is_read_too() {
    let report = parse_bytes(KUBE_BENCH_ARRAY, &bytes(KUBE_BENCH_ARRAY));
    let findings = clean(&report);
    assert_eq!(findings.len(), 4);
    assert_eq!(report.skipped, 20);
    assert!(findings.iter().all(|f| f.labels["status"] == "FAIL"));
}

// --- kube-hunter -------------------------------------------------------------------------------

#[test]
fn kube_hunter_dashboard_exposed_is_exposed_dashboard_on_the_service() {
    // No published report has KHV029: derived from the report's real KHV002 entry (API server
    // at 10.0.0.1:443) by changing only vid, vulnerability, description and evidence to those
    // kube-hunter's DashboardExposed event carries.
    let mut v = json_fixture(KUBE_HUNTER);
    let entry = &mut v["vulnerabilities"][6];
    assert_eq!(entry["vid"], "KHV002");
    entry["vid"] = json!("KHV029");
    entry["vulnerability"] = json!("Dashboard Exposed");
    entry["description"] = json!("All operations on the cluster are exposed");
    entry["evidence"] = json!("nodes: 10.1.1.1 10.2.2.0");
    let report = parse_value("dashboard.json", &v);
    let findings = clean(&report);
    let f = by_rule(findings, "KHV029");
    assert_eq!(f.class, Class::ExposedDashboard);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(
        f.resources,
        [
            ResourceRef::Kubernetes {
                cluster: Some("10.0.0.1".into()),
                namespace: None,
                kind: "Service".into(),
                name: "10.0.0.1:443".into(),
                container: None,
            },
            ResourceRef::Host {
                name: "10.0.0.1".into()
            },
        ]
    );

    // When the evidence names the dashboard's service, the resource does too.
    let entry = &mut v["vulnerabilities"][6];
    entry["evidence"] = json!("kubernetes-dashboard service answered without authentication");
    let report = parse_value("dashboard.json", &v);
    let f = by_rule(clean(&report), "KHV029");
    assert!(matches!(
        &f.resources[0],
        ResourceRef::Kubernetes { kind, name, .. } if kind == "Service" && name == "kubernetes-dashboard"
    ));
}

#[test]
fn kube_hunter_token_read_is_credential_exposure_without_its_evidence() {
    let report = parse_bytes(KUBE_HUNTER, &bytes(KUBE_HUNTER));
    let findings = clean(&report);
    assert_eq!(findings.len(), 8);
    let token = by_rule(findings, "KHV050");
    assert_eq!(token.class, Class::CredentialExposure);
    assert_eq!(token.severity, Severity::Low);
    assert!(token.fields.get("evidence").is_none(), "{}", token.fields);
    assert_eq!(
        token.labels["secret_hash"],
        firebreak::redact::secret_hash("TOKEN")
    );
    assert_eq!(token.resources, [k8s(None, "Pod", "kube-hunter-5pmjs")]);

    // No vid ("None"): the vulnerability name is the rule.
    let secrets = by_rule(findings, "Access to pod's secrets");
    assert_eq!(secrets.class, Class::CredentialExposure);
    let net_raw = by_rule(findings, "CAP_NET_RAW Enabled");
    assert_eq!(net_raw.class, Class::Misconfiguration);

    let pods = by_rule(findings, "KHV052");
    assert_eq!(pods.class, Class::Misconfiguration);
    assert_eq!(
        pods.resources,
        [ResourceRef::Host {
            name: "10.0.1.1".into()
        }]
    );
}

#[test]
fn malformed_element_in_a_list_is_rejected_with_its_pointer_and_siblings_kept() {
    // The real kube-hunter report with one entry's severity replaced by a number.
    let mut v = json_fixture(KUBE_HUNTER);
    v["vulnerabilities"][3]["severity"] = json!(7);
    let report = parse_value("hunter.json", &v);
    assert_eq!(report.findings.len(), 7);
    assert_eq!(report.rejected.len(), 1);
    let r = &report.rejected[0];
    assert_eq!(r.parser, "kube-hunter");
    assert_eq!(r.pointer, "/vulnerabilities/3/severity");
    assert_eq!(r.reason, "expected a string, found a number");

    // The real trivy k8s report with one vulnerability's id removed.
    let mut v = json_fixture(TRIVY_K8S);
    let total = parse_value("k8s.json", &v).findings.len();
    v["Vulnerabilities"][0]["Results"][0]["Vulnerabilities"][2]
        .as_object_mut()
        .unwrap()
        .remove("VulnerabilityID");
    let report = parse_value("k8s.json", &v);
    assert_eq!(report.findings.len(), total - 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(
        report.rejected[0].pointer,
        "/Vulnerabilities/0/Results/0/Vulnerabilities/2/VulnerabilityID"
    );
    assert_eq!(report.rejected[0].reason, "required field is missing");
}

// --- Kubernetes Events -------------------------------------------------------------------------

#[test]
fn k8s_event_resource_comes_from_involved_object() {
    let report = parse_bytes(EVENT, &bytes(EVENT));
    let findings = clean(&report);
    assert_eq!(findings.len(), 1);
    let f = &findings[0];
    assert_eq!(f.source, "k8s-event");
    assert_eq!(f.rule, "Started");
    assert_eq!(f.title, "Started container");
    assert_eq!(f.severity, Severity::Info);
    assert_eq!(f.class, Class::Other);
    assert_eq!(f.observed_at, time("2020-07-28T19:14:54Z"));
    assert_eq!(
        f.resources,
        [
            ResourceRef::Kubernetes {
                cluster: None,
                namespace: Some("apiserversource-example".into()),
                kind: "Pod".into(),
                name: "busybox".into(),
                container: Some("busybox".into()),
            },
            ResourceRef::Host {
                name: "gke-knative-auto-cluster-default-pool-23c23c4f-xdj0".into()
            },
        ]
    );
    assert_eq!(f.labels["k8s.event.reporter"], "kubelet");
}

#[test]
fn events_k8s_io_event_reads_regarding_and_note() {
    // Derived from the real core/v1 Event by renaming the fields events.k8s.io/v1 renamed
    // (involvedObject → regarding, message → note, source → deprecatedSource,
    // firstTimestamp/lastTimestamp → deprecated*), and making it a Warning.
    let mut v = json_fixture(EVENT);
    let o = v.as_object_mut().unwrap();
    o.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    for (old, new) in [
        ("involvedObject", "regarding"),
        ("message", "note"),
        ("source", "deprecatedSource"),
        ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"),
    ] {
        let value = o.remove(old).unwrap();
        o.insert(new.into(), value);
    }
    o.insert("type".into(), json!("Warning"));
    let report = parse_value("event.json", &v);
    let f = &clean(&report)[0];
    assert_eq!(f.title, "Started container");
    assert_eq!(f.severity, Severity::Medium);
    assert_eq!(f.observed_at, time("2020-07-28T19:14:54Z"));
    assert!(matches!(
        &f.resources[0],
        ResourceRef::Kubernetes { name, .. } if name == "busybox"
    ));
}

#[test]
fn event_list_keeps_good_events_when_one_is_malformed() {
    // An EventList of the real Event and a copy without its involvedObject.name.
    let good = json_fixture(EVENT);
    let mut bad = good.clone();
    bad["involvedObject"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let list = json!({"apiVersion": "v1", "kind": "EventList", "items": [good, bad]});
    let report = parse_value("events.json", &list);
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].parser, "k8s-event");
    assert_eq!(report.rejected[0].pointer, "/items/1/involvedObject/name");
}
