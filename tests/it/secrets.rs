//! No secret in any output: an error that echoes a credential is logged scrubbed, and a URL from
//! configuration is printed with its password masked.
//!
//! Secrets are generated at run time (never a credential-shaped literal in the repository) and
//! the outputs are searched for them: the log lines a tracing subscriber wrote to a buffer, the
//! step's recorded error, the binary's stdout and stderr.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use aws_credential_types::Credentials;
use firebreak::action::ActionCtx;
use firebreak::clients::aws::Aws;
use firebreak::config::{AwsConfig, Config};
use firebreak::engine::{RunOptions, StepStatus, run_in_memory as run};
use firebreak::playbook::{PlaybookSet, load_str};
use firebreak::store::StoreError;
use firebreak::store::sqlite::SqliteStore;

use crate::support::aws_proxy::{AwsProxy, BoxFuture, Interceptor, ProxyRequest, ProxyResponse};
use crate::support::moto;

/// A string no output may hold: `prefix` and a fresh ULID, so each run's secret is new.
fn generated(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new())
}

/// Log lines written by the code under test, at info and above (the service's default level).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures the logs of this thread until the guard is dropped (the tests' runtimes are
    /// single-threaded, so every task logs here).
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Answers every AWS call with the `SignatureDoesNotMatch` error S3 sends, whose message quotes
/// the canonical request it expected, signed headers included: the caller's session token
/// (`x-amz-security-token`) comes back in the error text.
struct SignatureMismatch {
    echoed: Mutex<Vec<String>>,
}

impl Interceptor for SignatureMismatch {
    fn intercept<'a>(
        &'a self,
        req: &'a ProxyRequest,
        _upstream: &'a str,
    ) -> BoxFuture<'a, Option<ProxyResponse>> {
        Box::pin(async move {
            let header = |name: &str| {
                req.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let token = header("x-amz-security-token");
            self.echoed.lock().unwrap().push(token.clone());
            let message = format!(
                "The request signature we calculated does not match the signature you provided. \
                 Check your key and signing method. The Canonical String for this request should \
                 have been 'POST\n/\n\nhost:{}\nx-amz-date:{}\nx-amz-security-token:{token}\n\n\
                 host;x-amz-date;x-amz-security-token'",
                header("host"),
                header("x-amz-date"),
            );
            Some(ProxyResponse::query_error(
                403,
                "SignatureDoesNotMatch",
                &message,
            ))
        })
    }
}

#[tokio::test]
async fn an_action_error_echoing_a_session_token_is_logged_and_recorded_without_it() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let echo = Arc::new(SignatureMismatch {
        echoed: Mutex::new(Vec::new()),
    });
    let proxy = AwsProxy::start(moto::endpoint(), echo.clone()).await;
    // Temporary credentials, as an assumed role or an EKS pod identity has: the session token
    // travels in every request.
    let token = generated("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ");
    let aws = Aws::with_credentials(
        &AwsConfig {
            region: "us-east-1".to_owned(),
            endpoint_url: proxy.endpoint.clone(),
            ..AwsConfig::default()
        },
        Credentials::new(
            "ASIATESTTESTTESTTEST",
            "test",
            Some(token.clone()),
            None,
            "t",
        ),
    )
    .await;
    let ctx = ActionCtx::from_config(&Config::default())
        .unwrap()
        .with_aws(aws);
    let key_id = format!("AKIA{}", "SECRETSTESTKEY01");
    let finding = crate::aws_iam::trufflehog_finding("leaky", &key_id);
    let (pb, _) = load_str(
        Path::new("contain.yaml"),
        "name: contain\nmatch: {class: credential-exposure}\nsteps:\n  - action: aws.iam.deactivate-access-key\n",
    )
    .unwrap();
    let report = run(
        &std::sync::Arc::new(PlaybookSet::new(vec![pb])),
        &ctx,
        std::slice::from_ref(&finding),
        &RunOptions::default(),
        &|| {},
    )
    .await
    .unwrap();

    let step = &report.executions[0].steps[0];
    assert_eq!(step.status, StepStatus::Failed, "{step:#?}");
    assert!(
        echo.echoed.lock().unwrap().contains(&token),
        "the SDK sent the session token and the error quoted it back"
    );
    let error = step.error.clone().unwrap_or_default();
    assert!(error.contains("SignatureDoesNotMatch"), "{error}");
    assert!(!error.contains(&token), "the recorded error: {error}");
    let logged = logs.text();
    assert!(
        logged.contains("SignatureDoesNotMatch") && logged.contains("x-amz-security-token"),
        "the failure is logged: {logged}"
    );
    assert!(!logged.contains(&token), "the logs: {logged}");
}

#[tokio::test]
async fn a_store_error_naming_a_url_with_a_password_is_logged_without_it() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let password = generated("pw-");
    let url = format!("postgres://firebreak:{password}@db.internal:5432/ledger");
    let Err(e) = SqliteStore::open(&url).await else {
        panic!("a postgres URL is not a SQLite store");
    };
    assert!(matches!(e, StoreError::UnsupportedUrl(_)), "{e:?}");
    // As every log site writes an error, and as `{:?}` would.
    tracing::error!(error = %e, debug = ?e, "cannot open the store");
    let logged = logs.text();
    assert!(
        logged.contains("postgres://firebreak:[REDACTED]@db.internal:5432/ledger"),
        "the URL is named, its password masked: {logged}"
    );
    assert!(!logged.contains(&password), "{logged}");
}

/// Runs the binary with a clean environment plus `env`.
fn firebreak(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run firebreak")
}

#[test]
fn a_store_url_that_cannot_be_opened_is_printed_without_its_password() {
    let password = generated("pw-");
    let url = format!("postgres://firebreak:{password}@db.internal:5432/ledger");
    let playbooks = tempfile::tempdir().unwrap();
    std::fs::write(
        playbooks.path().join("contain.yaml"),
        "name: contain\nmatch: {class: runtime-threat}\nsteps:\n  - action: kubernetes.delete-pod\n  - action: aws.iam.deactivate-access-key\n",
    )
    .unwrap();
    let dir = playbooks.path().to_str().unwrap();
    let finding = crate::fixtures::path(crate::fixtures::FALCO_SHELL);
    let finding = finding.to_str().unwrap();
    // Other URLs from configuration may carry a password too: none may be printed either.
    let kube_url = format!("https://admin:{password}@127.0.0.1:9");
    let aws_url = format!("http://proxy:{password}@127.0.0.1:9");
    let env = [
        ("FIREBREAK_STORE__URL", url.as_str()),
        ("FIREBREAK_KUBERNETES__URL", kube_url.as_str()),
        ("FIREBREAK_AWS__ENDPOINT_URL", aws_url.as_str()),
    ];
    let commands: [&[&str]; 8] = [
        &["serve", "--listen", "127.0.0.1:0", "--playbooks", dir],
        &["run", "--playbooks", dir, "--finding", finding],
        &["audit", "verify"],
        &["audit", "list"],
        &["audit", "evidence", "sha256:00"],
        &["approvals", "list"],
        &["pause", "--reason", "drill"],
        &["rollback", "01J00000000000000000000000"],
    ];
    for args in commands {
        let out = firebreak(args, &env);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_ne!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            stderr.contains("postgres://firebreak:[REDACTED]@db.internal:5432/ledger"),
            "{args:?} names the store it could not open: {stderr}"
        );
        assert!(
            !stdout.contains(&password) && !stderr.contains(&password),
            "{args:?}: {stdout}\n{stderr}"
        );
    }
}
