//! `aws.securityhub.update-finding` against moto behind the `BatchUpdateFindings` shim, from
//! the real Security Hub S3.8 finding (imported into moto as the scanner would), and the
//! shipped `lock-public-bucket` playbook end to end. State is read back with `GetFindings`.

use std::path::Path;
use std::sync::Arc;

use aws_sdk_securityhub::types::AwsSecurityFindingIdentifier;
use firebreak::action::{ActionCtx, StepInput, action};
use firebreak::config::{Config, WebhookEndpoint};
use firebreak::engine::{RunOptions, StepStatus, run_in_memory as run};
use firebreak::finding::Finding;
use firebreak::playbook::{PlaybookSet, load_str};
use firebreak::redact::Redacted;
use serde_json::{Value, json};

use crate::aws_s3::{
    bucket_name, grants, pab, parse_one, policy_sids, s3_8_record, seed_public_bucket,
};
use crate::fixtures;
use crate::support::aws_proxy::AwsProxy;
use crate::support::moto;
use crate::support::receiver::Receiver;
use crate::support::securityhub_shim::{BatchUpdateFindings, import_findings};

/// Runs a test body on a thread with a 16 MiB stack: deserialising a full ASFF finding with the
/// Security Hub SDK takes more than the 2 MiB of a test thread in a debug build.
pub(crate) fn big_stack<F: std::future::Future<Output = ()>>(
    body: impl FnOnce() -> F + Send + 'static,
) {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body());
        })
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// moto behind the proxy with the shim; the `Aws` signs with `secret` and goes through it.
async fn hub_peer(secret: &str) -> (AwsProxy, firebreak::clients::aws::Aws) {
    let direct = moto::aws().await;
    let proxy = AwsProxy::start(
        moto::endpoint(),
        Arc::new(BatchUpdateFindings::new(direct.securityhub())),
    )
    .await;
    let aws = moto::aws_at(&proxy.endpoint, "AKIAFIREBREAKTEST", secret).await;
    (proxy, aws)
}

/// The finding as Security Hub has it now: (workflow status, note text, note updated by).
pub(crate) async fn workflow(
    hub: &aws_sdk_securityhub::Client,
    id: &str,
) -> (String, Option<String>, Option<String>) {
    let out = hub.get_findings().send().await.unwrap();
    let f = out
        .findings()
        .iter()
        .find(|f| f.id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no finding {id} in {:?}", out.findings()));
    (
        f.workflow
            .as_ref()
            .and_then(|w| w.status())
            .map_or("NEW".to_owned(), |s| s.as_str().to_owned()),
        f.note.as_ref().and_then(|n| n.text()).map(str::to_owned),
        f.note
            .as_ref()
            .and_then(|n| n.updated_by())
            .map(str::to_owned),
    )
}

/// The real S3.8 finding with a unique finding `Id` (moto keeps one finding per `Id`) and a
/// unique bucket: only those change.
fn record(bucket: &str) -> Value {
    let mut v = s3_8_record(bucket);
    let id = v["Id"].as_str().unwrap().to_owned();
    v["Id"] = json!(format!("{id}-{}", ulid::Ulid::new()));
    v
}

fn set(yaml_steps: &str) -> Arc<PlaybookSet> {
    let yaml =
        format!("name: close-loop\nmatch: {{class: [public-storage]}}\nsteps:\n{yaml_steps}");
    let (pb, _) =
        load_str(Path::new("close-loop.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(PlaybookSet::new(vec![pb]))
}

fn opts(dry_run: bool) -> RunOptions {
    RunOptions {
        dry_run,
        retry_base: std::time::Duration::from_millis(1),
        ..RunOptions::default()
    }
}

#[test]
fn update_finding_sets_notified_with_a_note_naming_the_playbook_and_finding() {
    big_stack(|| async {
        let secret = format!("s3cr3t{}", ulid::Ulid::new());
        let (_proxy, aws) = hub_peer(&secret).await;
        let hub = moto::aws().await.securityhub();
        let rec = record(&bucket_name("fb-hub"));
        let id = rec["Id"].as_str().unwrap().to_owned();
        import_findings(&hub, std::slice::from_ref(&rec)).await;
        let finding: Finding = parse_one(&rec);
        let ctx = ActionCtx::from_config(&Config::default())
            .unwrap()
            .with_aws(aws);
        let set = set("  - action: aws.securityhub.update-finding\n    with: {status: NOTIFIED}\n");

        let planned = run(
            &set,
            &ctx,
            std::slice::from_ref(&finding),
            &opts(true),
            &|| {},
        )
        .await
        .unwrap();
        let step = &planned.executions[0].steps[0];
        assert_eq!(step.status, StepStatus::Planned, "{step:#?}");
        let plan = step.plan.as_ref().unwrap();
        assert!(!plan.noop);
        assert_eq!(plan.before["workflow_status"], "NEW");
        assert_eq!(plan.after["workflow_status"], "NOTIFIED");
        assert_eq!(workflow(&hub, &id).await.0, "NEW", "a plan writes nothing");

        let applied = run(
            &set,
            &ctx,
            std::slice::from_ref(&finding),
            &opts(false),
            &|| {},
        )
        .await
        .unwrap();
        let step = &applied.executions[0].steps[0];
        assert_eq!(step.status, StepStatus::Applied, "{step:#?}");
        assert_eq!(step.outcome.as_ref().unwrap().result, "applied");
        let (status, text, by) = workflow(&hub, &id).await;
        assert_eq!(status, "NOTIFIED");
        assert_eq!(by.as_deref(), Some("firebreak"));
        let text = text.unwrap();
        assert!(text.contains("close-loop"), "{text}");
        assert!(text.contains(&finding.id.to_string()), "{text}");

        let second = run(
            &set,
            &ctx,
            std::slice::from_ref(&finding),
            &opts(false),
            &|| {},
        )
        .await
        .unwrap();
        let step2 = &second.executions[0].steps[0];
        assert!(step2.plan.as_ref().unwrap().noop);
        assert_eq!(step2.outcome.as_ref().unwrap().result, "unchanged");

        for rendered in [&planned, &applied, &second].map(|r| serde_json::to_string(r).unwrap()) {
            assert!(
                !rendered.contains(&secret),
                "a secret leaked into {rendered}"
            );
        }
    })
}

#[test]
fn update_finding_of_a_finding_security_hub_does_not_have_is_not_applicable() {
    big_stack(|| async {
        let (_proxy, aws) = hub_peer("testing").await;
        let ctx = ActionCtx::from_config(&Config::default())
            .unwrap()
            .with_aws(aws);
        let finding = parse_one(&record("fb-absent"));
        let params = json!({"status": "RESOLVED"});
        let input = StepInput {
            finding: &finding,
            playbook: "close-loop",
            step: 0,
            params: &params,
            execution: None,
        };
        let err = action("aws.securityhub.update-finding")
            .unwrap()
            .plan(&ctx, input)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("Security Hub has no finding"),
            "{err}"
        );
    })
}

#[test]
fn the_shim_reports_unknown_findings_as_unprocessed_like_security_hub() {
    big_stack(|| async {
        let (_proxy, aws) = hub_peer("testing").await;
        let out = aws
            .securityhub()
            .batch_update_findings()
            .finding_identifiers(
                AwsSecurityFindingIdentifier::builder()
                    .id("no-such-finding")
                    .product_arn("arn:aws:securityhub:us-east-1::product/aws/securityhub")
                    .build(),
            )
            .workflow(
                aws_sdk_securityhub::types::WorkflowUpdate::builder()
                    .status(aws_sdk_securityhub::types::WorkflowStatus::Resolved)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert!(out.processed_findings().is_empty());
        let u = &out.unprocessed_findings()[0];
        assert_eq!(u.error_code(), Some("FindingNotFound"));
        assert_eq!(
            u.finding_identifier().unwrap().id(),
            Some("no-such-finding")
        );
    })
}

#[test]
fn update_finding_params_need_a_known_status() {
    let a = action("aws.securityhub.update-finding").unwrap();
    assert!(a.validate(&json!({"status": "NOTIFIED"})).is_empty());
    let problems = a.validate(&json!({"status": "DONE"}));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].hint.as_deref().unwrap().contains("RESOLVED"));
    assert!(!a.validate(&json!({})).is_empty());
}

/// The shipped playbook on the real S3.8 finding (and the real S3.2/S3.3 ones, which are
/// PASSED and derived here as FAILED: only `Compliance.Status`, and the workflow status Security
/// Hub resets with it, change): the bucket is closed,
/// the Security Hub finding resolved with a note, the team told.
#[test]
fn lock_public_bucket_playbook_closes_the_bucket_resolves_the_finding_and_notifies() {
    big_stack(|| async {
        let file = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/playbooks/lock-public-bucket.yaml"
        ));
        let text = std::fs::read_to_string(file).unwrap();
        let (pb, _) = load_str(file, &text).unwrap_or_else(|d| panic!("{d:#?}"));
        let lock = Arc::new(PlaybookSet::new(vec![pb]));
        for rel in [
            "securityhub/asff-afsbp-s3-2-public-read-passed.json",
            "securityhub/asff-afsbp-s3-3-public-write-passed.json",
        ] {
            let mut v: Value = serde_json::from_slice(&fixtures::bytes(rel)).unwrap();
            v["Compliance"]["Status"] = json!("FAILED");
            // Security Hub itself sets Workflow.Status back to NEW when a control's compliance
            // changes from PASSED to FAILED (the PASSED samples are RESOLVED), so that changes too.
            v["Workflow"]["Status"] = json!("NEW");
            let f = parse_one(&v);
            let report = run(
                &lock,
                &ActionCtx::from_config(&Config::default()).unwrap(),
                &[f],
                &opts(true),
                &|| {},
            )
            .await
            .unwrap();
            assert_eq!(report.executions.len(), 1, "{rel} matches: {report:#?}");
        }

        let dry = ActionCtx::from_config(&Config::default()).unwrap();
        let records: Vec<Value> =
            serde_json::from_slice(&fixtures::bytes(crate::aws_s3::PROWLER_ASFF)).unwrap();
        let prowler: Vec<Finding> = records
            .iter()
            .filter(|r| r["Compliance"]["Status"] == "FAILED")
            .map(parse_one)
            .collect();
        let report = run(&lock, &dry, &prowler, &opts(true), &|| {})
            .await
            .unwrap();
        let matched: Vec<&str> = report
            .executions
            .iter()
            .map(|e| {
                let f = prowler
                    .iter()
                    .find(|f| f.id.to_string() == e.finding_id)
                    .unwrap();
                f.rule.as_str()
            })
            .collect();
        assert_eq!(
            matched,
            ["s3_bucket_level_public_access_block"],
            "only the bucket-level S3 result matches (the account-level one names no bucket)"
        );
        let s3_1 =
            fixtures::finding("securityhub/asff-afsbp-s3-1-account-block-public-access.json");
        let report = run(&lock, &dry, &[s3_1], &opts(true), &|| {})
            .await
            .unwrap();
        assert!(report.executions.is_empty(), "{report:#?}");

        let (_proxy, aws) = hub_peer("testing").await;
        let direct = moto::aws().await;
        let (s3, hub) = (direct.s3(), direct.securityhub());
        let bucket = bucket_name("fb-shipped");
        seed_public_bucket(&s3, &bucket).await;
        let rec = record(&bucket);
        let id = rec["Id"].as_str().unwrap().to_owned();
        import_findings(&hub, std::slice::from_ref(&rec)).await;
        let receiver = Receiver::start().await;
        let mut cfg = Config::default();
        cfg.notify.webhooks.insert(
            "security".to_owned(),
            WebhookEndpoint {
                url: Redacted::new(receiver.url("/hook")),
            },
        );
        let ctx = ActionCtx::from_config(&cfg).unwrap().with_aws(aws);
        let finding = parse_one(&rec);
        let report = run(
            &lock,
            &ctx,
            std::slice::from_ref(&finding),
            &opts(false),
            &|| {},
        )
        .await
        .unwrap();
        assert_eq!(report.executions.len(), 1, "{report:#?}");
        let steps = &report.executions[0].steps;
        assert!(
            steps.iter().all(|s| s.status == StepStatus::Applied),
            "{steps:#?}"
        );
        assert_eq!(pab(&s3, &bucket).await, Some([true; 4]));
        assert!(
            grants(&s3, &bucket)
                .await
                .iter()
                .all(|(w, _)| !w.contains("/global/"))
        );
        assert_eq!(policy_sids(&s3, &bucket).await.unwrap().len(), 2);
        let (status, text, _) = workflow(&hub, &id).await;
        assert_eq!(status, "RESOLVED");
        assert!(text.unwrap().contains("lock-public-bucket"));
        assert_eq!(receiver.requests().len(), 1);
    })
}

/// `firebreak run` with the shipped playbooks and a store, AWS credentials from the
/// environment: the bucket is closed and the finding resolved, and the secret access key shows
/// nowhere: not on stdout or stderr, not in the audit trail, not in the notification.
#[test]
fn lock_public_bucket_through_the_cli_leaves_no_secret_in_output_audit_or_notification() {
    big_stack(|| async {
        let (proxy, _) = hub_peer("unused").await;
        let direct = moto::aws().await;
        let (s3, hub) = (direct.s3(), direct.securityhub());
        let bucket = bucket_name("fb-cli");
        seed_public_bucket(&s3, &bucket).await;
        let rec = record(&bucket);
        let id = rec["Id"].as_str().unwrap().to_owned();
        import_findings(&hub, std::slice::from_ref(&rec)).await;
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let finding_file = dir.path().join("finding.json");
        std::fs::write(&finding_file, rec.to_string()).unwrap();
        // Built at run time: never a committed credential.
        let secret: String = format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new())
            .chars()
            .take(40)
            .collect();
        let env: Vec<(String, String)> = vec![
            (
                "FIREBREAK_STORE__URL".into(),
                format!("sqlite://{}", dir.path().join("ledger.db").display()),
            ),
            ("FIREBREAK_AWS__REGION".into(), "us-east-1".into()),
            ("FIREBREAK_AWS__ENDPOINT_URL".into(), proxy.endpoint.clone()),
            (
                "FIREBREAK_NOTIFY__WEBHOOKS__SECURITY__URL".into(),
                receiver.url("/hook"),
            ),
            ("AWS_ACCESS_KEY_ID".into(), "firebreak-cli-test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.clone()),
        ];
        let firebreak = move |args: Vec<String>, env: Vec<(String, String)>| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"));
            cmd.args(args).env_clear().envs(env);
            cmd.output().unwrap()
        };
        let playbooks = concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks").to_owned();
        let args = vec![
            "run".to_owned(),
            "--playbooks".to_owned(),
            playbooks,
            "--finding".to_owned(),
            finding_file.display().to_string(),
            "--format".to_owned(),
            "json".to_owned(),
        ];
        let (f, e) = (firebreak, env.clone());
        let run_out = tokio::task::spawn_blocking(move || f(args, e))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&run_out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&run_out.stderr).into_owned();
        assert!(run_out.status.success(), "{stdout}\n{stderr}");
        let (f, e) = (firebreak, env.clone());
        let audit =
            tokio::task::spawn_blocking(move || f(vec!["audit".into(), "export".into()], e))
                .await
                .unwrap();
        let audit_text = String::from_utf8_lossy(&audit.stdout).into_owned();
        assert!(audit.status.success(), "{audit:?}");
        assert!(
            audit_text.contains("aws.s3.block-public-access"),
            "{audit_text}"
        );

        assert_eq!(pab(&s3, &bucket).await, Some([true; 4]));
        assert_eq!(workflow(&hub, &id).await.0, "RESOLVED");
        let hooks = receiver.requests();
        assert_eq!(hooks.len(), 1, "{stdout}\n{stderr}");
        for (what, text) in [
            ("stdout", stdout.as_str()),
            ("stderr", stderr.as_str()),
            ("audit", audit_text.as_str()),
            ("audit stderr", &String::from_utf8_lossy(&audit.stderr)),
            ("notification", hooks[0].body.as_str()),
        ] {
            assert!(
                !text.contains(&secret),
                "the secret leaked into {what}: {text}"
            );
        }
    });
}

#[test]
fn update_finding_apply_reports_drift_when_someone_changed_the_status_after_the_plan() {
    big_stack(|| async {
        let (_proxy, aws) = hub_peer("testing").await;
        let hub = moto::aws().await.securityhub();
        let rec = record(&bucket_name("fb-hub-drift"));
        let id = rec["Id"].as_str().unwrap().to_owned();
        import_findings(&hub, std::slice::from_ref(&rec)).await;
        let finding = parse_one(&rec);
        let ctx = ActionCtx::from_config(&Config::default())
            .unwrap()
            .with_aws(aws.clone());
        let params = json!({"status": "RESOLVED"});
        let input = StepInput {
            finding: &finding,
            playbook: "close-loop",
            step: 0,
            params: &params,
            execution: None,
        };
        let update = action("aws.securityhub.update-finding").unwrap();
        let plan = update.plan(&ctx, input).await.unwrap();
        // A person suppresses the finding in the console meanwhile.
        aws.securityhub()
            .batch_update_findings()
            .finding_identifiers(
                AwsSecurityFindingIdentifier::builder()
                    .id(&id)
                    .product_arn(rec["ProductArn"].as_str().unwrap())
                    .build(),
            )
            .workflow(
                aws_sdk_securityhub::types::WorkflowUpdate::builder()
                    .status(aws_sdk_securityhub::types::WorkflowStatus::Suppressed)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let err = update.apply(&ctx, input, &plan).await.unwrap_err();
        assert!(
            matches!(err, firebreak::action::ActionError::Drift(_)),
            "{err:?}"
        );
        assert_eq!(
            workflow(&hub, &id).await.0,
            "SUPPRESSED",
            "left as the person set it"
        );
    });
}
