//! docs/wiring.md, checked: its Falcosidekick and Trivy Operator settings deliver real payloads
//! that `firebreak serve` accepts, its CI jobs post real Prowler and gitleaks reports with
//! their scoped tokens, its EventBridge pattern matches the real GuardDuty and Security
//! Hub events (which the parsers read), its queue policy and configuration blocks are valid, and
//! the permissions and events it lists are what the code uses.

use std::path::Path;

use serde_json::Value;

use crate::fixtures;
use crate::service::{TOKEN, start_configured, start_with};

fn guide() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/wiring.md")).unwrap()
}

/// The fenced blocks of the guide whose info string's second word is `name`.
fn blocks(name: &str) -> Vec<String> {
    let text = guide();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.split_whitespace().nth(1) == Some(name) => {
                current = Some(String::new());
            }
            (Some(body), Some("")) => {
                out.push(std::mem::take(body));
                current = None;
            }
            (Some(body), _) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    assert!(!out.is_empty(), "no `{name}` block in docs/wiring.md");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falcosidekick_as_the_guide_sets_it_delivers_to_firebreak() {
    let env: Vec<(String, String)> = blocks("falcosidekick")[0]
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let get = |k: &str| &env.iter().find(|(n, _)| n == k).unwrap().1;
    // The address is the deployed Service (deploy/kustomize: Service firebreak, port 8080, in
    // namespace firebreak).
    let address = get("WEBHOOK_ADDRESS");
    let path = address
        .strip_prefix("http://firebreak.firebreak.svc:8080")
        .unwrap();
    let service = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kustomize/service.yaml"
    ))
    .unwrap();
    assert!(service.contains("  name: firebreak\n") && service.contains("      port: 8080\n"));

    let dir = tempfile::tempdir().unwrap();
    let playbooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let svc = start_with(dir.path(), &playbooks, 60, &[]);
    // Falcosidekick's custom headers: `key:value,key:value`.
    let mut request = reqwest::Client::new().post(format!("http://{}{path}", svc.addr));
    for header in get("WEBHOOK_CUSTOMHEADERS").split(',') {
        let (k, v) = header.split_once(':').unwrap();
        request = request.header(k, v.replace("${FIREBREAK_TOKEN}", TOKEN));
    }
    // The real Falco event as Falcosidekick delivered it (fixtures/SOURCES.md).
    let answer = request
        .body(fixtures::bytes(fixtures::FALCO_K8S_API))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
}

/// Whether `event` matches an EventBridge pattern of the subset the guide uses: every key of
/// the pattern lists the values the event's field may have; nested objects match nested.
fn matches(pattern: &Value, event: &Value) -> bool {
    pattern
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, want)| match want {
            Value::Array(values) => values.contains(&event[k]),
            Value::Object(_) => matches(want, &event[k]),
            other => panic!("not an EventBridge pattern: {other}"),
        })
}

#[test]
fn the_eventbridge_rule_matches_the_real_guardduty_and_security_hub_events() {
    let pattern: Value = serde_json::from_str(&blocks("eventbridge-pattern")[0]).unwrap();
    for rel in [
        fixtures::GD_TOR_IAM,
        "guardduty/eventbridge-guardduty-finding-backdoor-c2-dns.json",
        "securityhub/eventbridge-imported-afsbp-ec2-7.json",
    ] {
        let event: Value = serde_json::from_slice(&fixtures::bytes(rel)).unwrap();
        assert!(matches(&pattern, &event), "{rel}");
        // What the rule delivers, `parser: auto` reads.
        assert!(!fixtures::findings(rel).is_empty(), "{rel}");
    }
    let custom_action: Value = serde_json::from_slice(&fixtures::bytes(
        "securityhub/eventbridge-custom-action-guardduty-iam-consolelogin.json",
    ))
    .unwrap();
    assert!(
        !matches(&pattern, &custom_action),
        "custom actions are not sent"
    );
}

#[test]
fn the_queue_policy_and_every_configuration_block_of_the_guide_are_valid() {
    let policy: Value = serde_json::from_str(&blocks("queue-policy")[0]).unwrap();
    assert_eq!(policy["Version"], "2012-10-17");
    let st = &policy["Statement"][0];
    assert_eq!(st["Principal"]["Service"], "events.amazonaws.com");
    assert_eq!(st["Action"], "sqs:SendMessage");
    let configs = blocks("firebreak-config");
    let env: Vec<(String, String)> = [
        "FIREBREAK_TOKEN_FALCOSIDEKICK",
        "FIREBREAK_TOKEN_CI_PROWLER",
        "FIREBREAK_TOKEN_CI_GITLEAKS",
        "FIREBREAK_GITHUB_TOKEN",
        "FIREBREAK_GITHUB_WEBHOOK_SECRET",
    ]
    .iter()
    .map(|k| ((*k).to_owned(), format!("value-of-{k}")))
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut queue_url = None;
    for (i, block) in configs.iter().enumerate() {
        let file = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&file, block).unwrap();
        let config = firebreak::config::load(Some(&file), &env, &[])
            .unwrap_or_else(|e| panic!("block {i}: {e:?}\n{block}"));
        if let Some(q) = config.ingest.sqs.first() {
            queue_url = Some(q.queue_url.clone());
        }
    }
    // The policy's queue is the configured queue: https://sqs.REGION.amazonaws.com/ACCOUNT/NAME.
    let url = queue_url.expect("a queue in the guide's configuration");
    let parts: Vec<&str> = url.trim_start_matches("https://").split('/').collect();
    let region = parts[0].split('.').nth(1).unwrap();
    assert_eq!(
        st["Resource"],
        format!("arn:aws:sqs:{region}:{}:{}", parts[1], parts[2])
    );
    let source = st["Condition"]["ArnEquals"]["aws:SourceArn"]
        .as_str()
        .unwrap();
    assert!(source.starts_with(&format!("arn:aws:events:{region}:{}:rule/", parts[1])));
}

#[test]
fn the_guide_lists_the_sqs_permissions_the_poller_uses_and_the_github_app_events() {
    // The SQS operations of the poller's source (src/ingest/sqs.rs) and the IAM action each is
    // authorised by (batch operations by their single-message action).
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/ingest/sqs.rs")).unwrap();
    let mut used: Vec<&str> = [
        (".receive_message()", "sqs:ReceiveMessage"),
        (".delete_message()", "sqs:DeleteMessage"),
        (".delete_message_batch()", "sqs:DeleteMessage"),
        (
            ".change_message_visibility()",
            "sqs:ChangeMessageVisibility",
        ),
        (
            ".change_message_visibility_batch()",
            "sqs:ChangeMessageVisibility",
        ),
        (".get_queue_attributes()", "sqs:GetQueueAttributes"),
    ]
    .iter()
    .filter(|(call, _)| source.contains(call))
    .map(|(_, action)| *action)
    .collect();
    used.sort_unstable();
    used.dedup();
    let listed: Vec<String> = blocks("sqs-permissions")[0]
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, used);

    // The events the guide names are the GitHub App's (deploy/github-app.md, generated).
    let app = firebreak::action::github::app::github_app_markdown();
    let events_line = app.lines().find(|l| l.starts_with("Events: ")).unwrap();
    let text = guide();
    for event in [
        "pull_request",
        "pull_request_review",
        "secret_scanning_alert",
    ] {
        assert!(events_line.contains(&format!("`{event}`")), "{event}");
        assert!(text.contains(&format!("`{event}`")), "{event}");
    }
}

/// `KEY=value` lines of a guide block.
fn env_block(name: &str) -> Vec<(String, String)> {
    blocks(name)[0]
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trivy_operator_as_the_guide_sets_it_delivers_its_reports_to_firebreak() {
    let env = env_block("trivy-operator");
    let get = |k: &str| &env.iter().find(|(n, _)| n == k).unwrap().1;
    let path = get("OPERATOR_WEBHOOK_BROADCAST_URL")
        .strip_prefix("http://firebreak.firebreak.svc:8080")
        .unwrap()
        .to_owned();
    assert_eq!(get("OPERATOR_SEND_DELETED_REPORTS"), "false");

    let dir = tempfile::tempdir().unwrap();
    let playbooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let svc = start_with(dir.path(), &playbooks, 60, &[]);
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        // The operator's custom headers: `key:value,key:value`.
        let mut request = client.post(format!("http://{}{path}", svc.addr));
        for header in get("OPERATOR_WEBHOOK_BROADCAST_CUSTOM_HEADERS").split(',') {
            let (k, v) = header.split_once(':').unwrap();
            request = request.header(k, v.replace("$(FIREBREAK_TOKEN)", TOKEN));
        }
        request
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    // The real report objects (fixtures/SOURCES.md), each as the operator posts one.
    for rel in [
        "trivy-operator/vulnerabilityreport.json",
        "trivy-operator/configauditreport.json",
        "trivy-operator/exposedsecretreport.json",
    ] {
        let answer = post(fixtures::bytes(rel)).await.unwrap();
        assert_eq!(answer.status().as_u16(), 202, "{rel}");
    }
    // With deleted reports sent, the operator wraps each report: nothing reads that.
    let report: Value =
        serde_json::from_slice(&fixtures::bytes("trivy-operator/vulnerabilityreport.json"))
            .unwrap();
    let wrapped = serde_json::json!({"verb": "update", "operatorObject": report});
    let answer = post(serde_json::to_vec(&wrapped).unwrap()).await.unwrap();
    assert_eq!(answer.status().as_u16(), 422);
}

/// The `curl` line of a CI block: its route, its header (with `token` for the variable) and the
/// report file it posts.
fn curl_of(block: &str, token: &str) -> (String, (String, String), String) {
    let line = block.lines().find(|l| l.starts_with("curl ")).unwrap();
    let url = line.rsplit(' ').next().unwrap();
    let route = url
        .strip_prefix("https://firebreak.example.com")
        .unwrap()
        .to_owned();
    let header = line.split('"').nth(1).unwrap();
    let (k, v) = header.split_once(": ").unwrap();
    let file = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix('@'))
        .unwrap()
        .to_owned();
    (
        route,
        (k.to_owned(), v.replace("${FIREBREAK_TOKEN}", token)),
        file,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ci_jobs_of_the_guide_post_real_prowler_and_gitleaks_reports_with_their_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // The guide's token configuration, as the service loads it.
    let config_block = blocks("firebreak-config")
        .into_iter()
        .find(|b| b.contains("ci-prowler"))
        .unwrap();
    let config = dir.path().join("firebreak.yaml");
    std::fs::write(&config, config_block).unwrap();
    let (prowler_token, gitleaks_token) = ("prowler-ci-token-41d7", "gitleaks-ci-token-8c02");
    let playbooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let svc = start_configured(
        dir.path(),
        &config,
        &playbooks,
        &[
            ("FIREBREAK_TOKEN_CI_PROWLER", prowler_token),
            ("FIREBREAK_TOKEN_CI_GITLEAKS", gitleaks_token),
            // Dry-run: the shipped playbooks only plan what these findings match.
            ("FIREBREAK_ENGINE__DRY_RUN", "true"),
        ],
    );
    let client = reqwest::Client::new();
    let post = |route: &str, header: &(String, String), body: Vec<u8>| {
        client
            .post(format!("http://{}{route}", svc.addr))
            .header(&header.0, &header.1)
            .body(body)
            .send()
    };
    // Each job's report file is the scanner's real output (fixtures/SOURCES.md).
    for (name, token, fixture, other_route) in [
        (
            "prowler-ci",
            prowler_token,
            "prowler/prowler-5-example-output-aws.ocsf.json",
            "/v1/findings/gitleaks",
        ),
        (
            "gitleaks-ci",
            gitleaks_token,
            "gitleaks/gitleaks-v8-report-aws-access-token.json",
            "/v1/findings/prowler",
        ),
    ] {
        let block = &blocks(name)[0];
        let (route, header, file) = curl_of(block, token);
        // The scanner command writes the file the curl line posts.
        let scan = block.lines().next().unwrap();
        match name {
            "prowler-ci" => {
                assert!(scan.contains("--output-formats json-ocsf"), "{scan}");
                assert_eq!(file, "out/prowler.ocsf.json");
                assert!(fixture.ends_with(".ocsf.json"));
            }
            _ => {
                assert!(scan.contains(&format!("--report-path {file}")), "{scan}");
            }
        }
        let answer = post(&route, &header, fixtures::bytes(fixture))
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 202, "{name}");
        // The job's token may post to its own route only.
        let answer = post(other_route, &header, fixtures::bytes(fixture))
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 403, "{name} on {other_route}");
        // A report with no findings (the real report with its array emptied) is accepted too.
        let mut empty: Value = serde_json::from_slice(&fixtures::bytes(fixture)).unwrap();
        empty.as_array_mut().unwrap().clear();
        let answer = post(&route, &header, serde_json::to_vec(&empty).unwrap())
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 202, "{name}: an empty report");
    }
    assert!(!svc.log_text().contains(prowler_token));
    assert!(!svc.log_text().contains(gitleaks_token));
}
