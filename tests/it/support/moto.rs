//! moto, the AWS peer (TEST-PEERS.md): one `python -m moto.server` per test process, started on
//! first use and gone when the process exits.
//!
//! nextest runs every test in its own process, so in practice each test that asks for moto gets
//! a fresh server (about half a second to start); tests still use disjoint queue names so they
//! would not collide under `cargo test` either. The server reads its stdin until EOF and then
//! exits, so it dies with the test process however that ends, `kill -9` included.
//!
//! The interpreter: `FIREBREAK_TEST_PYTHON` if set, else `.venv-moto/bin/python` in the
//! repository (what `.ci/run` creates) if it exists, else `python3`. When moto cannot be
//! started the test fails with a message saying how to install it; it is never skipped.

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use firebreak::clients::aws::Aws;
use firebreak::config::AwsConfig;

/// Runs moto's server, and exits when its stdin closes (that is, when the test process exits).
const LAUNCHER: &str = "\
import os, sys, threading
def watch():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
";

/// A running moto server of this test process; it exits when dropped or when the process ends.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    // Held so the stdin pipe stays open for the life of the server.
    child: Mutex<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();

/// The moto endpoint URL (`http://127.0.0.1:PORT`), starting the server on first use.
///
/// # Panics
/// When moto cannot be started: the test fails, with what to install.
pub fn endpoint() -> &'static str {
    match MOTO.get_or_init(|| start(&[])) {
        Ok(m) => &m.endpoint,
        Err(e) => panic!("{e}\n{HINT}"),
    }
}

const HINT: &str = "hint: the AWS tests need moto: run .ci/run, or \
    `python3 -m venv .venv-moto && .venv-moto/bin/pip install 'moto[server]>=5.1,<6'`, \
    or point FIREBREAK_TEST_PYTHON at a python that has it";

/// A moto server of the test's own, started with extra environment (e.g.
/// `INITIAL_NO_AUTH_ACTION_COUNT` for IAM enforcement, which is global to a server); it exits
/// when the returned value is dropped.
///
/// # Panics
/// When moto cannot be started: the test fails, with what to install.
pub fn spawn(env: &[(&str, &str)]) -> Moto {
    match start(env) {
        Ok(m) => m,
        Err(e) => panic!("{e}\n{HINT}"),
    }
}

/// A moto of the test's own that enforces IAM (SigV4 and policies), and the configuration of an
/// admin (`Action: *`) created with the server's unchecked first requests: the observer and
/// set-up principal of least-privilege tests. The server exits when the first value is dropped.
pub async fn enforcing() -> (Moto, Aws) {
    // The first four requests are not checked; the admin takes three of them.
    let server = spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]);
    let bootstrap = aws_at(&server.endpoint, "bootstrap", "unchecked").await;
    let iam = bootstrap.iam();
    let admin_policy =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
    iam.create_user().user_name("admin").send().await.unwrap();
    iam.put_user_policy()
        .user_name("admin")
        .policy_name("admin")
        .policy_document(admin_policy)
        .send()
        .await
        .unwrap();
    let out = iam
        .create_access_key()
        .user_name("admin")
        .send()
        .await
        .unwrap();
    let key = out.access_key().unwrap();
    let admin = aws_at(
        &server.endpoint,
        key.access_key_id(),
        key.secret_access_key(),
    )
    .await;
    (server, admin)
}

/// AWS configuration pointing at `endpoint` with the given static credentials (never the
/// environment).
pub async fn aws_at(endpoint: &str, access_key_id: &str, secret: &str) -> Aws {
    let cfg = AwsConfig {
        region: "us-east-1".to_owned(),
        endpoint_url: endpoint.to_owned(),
        ..AwsConfig::default()
    };
    let creds = Credentials::new(access_key_id, secret, None, None, "moto-test");
    Aws::with_credentials(&cfg, creds).await
}

/// AWS configuration pointing at moto, with static test credentials (never the environment).
pub async fn aws() -> Aws {
    aws_at(endpoint(), "testing", "testing").await
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FIREBREAK_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-moto/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn start(env: &[(&str, &str)]) -> Result<Moto, String> {
    let python = python();
    let mut last = String::new();
    // A port picked free can be taken before moto binds it; try a few.
    for _ in 0..3 {
        let port = free_port()?;
        let log =
            std::env::temp_dir().join(format!("firebreak-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut child = Command::new(&python)
            .args(["-c", LAUNCHER, "-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {} for moto: {e}", python.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut text = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
                let _ = std::fs::remove_file(&log);
                last = format!(
                    "moto ({} -m moto.server) exited with {status} before answering:\n{}",
                    python.display(),
                    text.trim()
                );
                break;
            }
            if TcpStream::connect_timeout(
                &format!("127.0.0.1:{port}")
                    .parse()
                    .map_err(|e| format!("{e}"))?,
                Duration::from_millis(200),
            )
            .is_ok()
            {
                // Its log only matters when moto fails to start; moto keeps the open file.
                let _ = std::fs::remove_file(&log);
                return Ok(Moto {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    child: Mutex::new(child),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                last = format!(
                    "moto ({} -m moto.server) did not answer on port {port} within 20 s (log: {})",
                    python.display(),
                    log.display()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Err(last)
}
