//! `firebreak serve` as a process: HTTP ingest to applied actions, graceful SIGTERM, and
//! recovery after `kill -9` with no step applied twice.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebreak::store::sqlite::SqliteStore;
use firebreak::store::{AuditQuery, Store};

use crate::fixtures::{self, FALCO_SHELL};
use crate::support::receiver::Receiver;

pub(crate) const TOKEN: &str = "test-token-123";

/// CPU seconds (user and system) process `pid` used so far, from `/proc/PID/stat`; 0 when gone.
pub(crate) fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

pub(crate) struct Service {
    pub(crate) child: Child,
    pub(crate) addr: String,
    /// Every line the service wrote to stderr so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// CPU seconds the service used so far (user and system), from `/proc`.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.child.id())
    }

    pub(crate) fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(text))
    }

    /// Returns once every thread of the service is stopped (after SIGSTOP).
    async fn wait_stopped(&self) {
        let tasks = format!("/proc/{}/task", self.child.id());
        let all_stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|dir| {
                dir.filter_map(Result::ok).all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                        // The state follows the command name in parentheses.
                        stat.rsplit_once(") ")
                            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                    })
                })
            })
        };
        let started = Instant::now();
        while !all_stopped() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the service did not stop after SIGSTOP"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything the service wrote to stderr so far, for failure messages.
    pub(crate) fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    }
}

impl Drop for Service {
    /// A failed test must not leave a stopped or running service behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(dir: &std::path::Path, playbooks: &std::path::Path) -> Service {
    start_with(dir, playbooks, 2, &[])
}

/// `firebreak serve` on the ledger in `dir` with `playbooks`, leases of `lease_seconds` and
/// `env` on top of a clean environment; returns once it listens.
pub(crate) fn start_with(
    dir: &std::path::Path,
    playbooks: &std::path::Path,
    lease_seconds: u32,
    env: &[(&str, &str)],
) -> Service {
    let mut cmd = serve_command(dir, playbooks);
    cmd.env("FIREBREAK_SERVER__TOKENS", TOKEN)
        .env("FIREBREAK_ENGINE__LEASE_SECONDS", lease_seconds.to_string())
        .envs(env.iter().copied());
    launch(cmd)
}

/// `firebreak serve` on the ledger in `dir` with `playbooks`, in a clean environment.
fn serve_command(dir: &std::path::Path, playbooks: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--playbooks"])
        .arg(playbooks)
        .env_clear()
        .env(
            "FIREBREAK_STORE__URL",
            format!("sqlite://{}", dir.join("ledger.db").display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Spawns `cmd` and returns once the service listens; its stderr is kept in the log.
fn launch(mut cmd: Command) -> Service {
    let mut child = cmd.spawn().expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut before = Vec::new();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("note: listening on ") {
                    break a.trim().to_owned();
                }
                before.push(line);
            }
            other => panic!("serve exited before listening: {other:?} after {before:#?}"),
        }
    };
    // Keep draining stderr so the service never blocks on a full pipe.
    let log = Arc::new(Mutex::new(before));
    let kept = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().expect("log").push(line);
        }
    });
    Service { child, addr, log }
}

pub(crate) fn playbook_dir(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("notify.yaml"),
        format!("name: notify\nmatch: {{class: runtime-threat}}\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{url}\"}}\n"),
    )
    .expect("write");
    dir
}

pub(crate) async fn post(
    client: &reqwest::Client,
    addr: &str,
    body: Vec<u8>,
) -> reqwest::StatusCode {
    client
        .post(format!("http://{addr}/v1/findings/auto"))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(reqwest::StatusCode::SERVICE_UNAVAILABLE)
}

/// Distinct copies of a real Falco event (derived: only `output_fields.k8s.pod.name` changes,
/// so each is a different pod and not deduplicated).
pub(crate) fn events(n: usize) -> Vec<Vec<u8>> {
    let base: serde_json::Value =
        serde_json::from_slice(&fixtures::bytes(FALCO_SHELL)).expect("fixture");
    (0..n)
        .map(|i| {
            let mut v = base.clone();
            v["output_fields"]["k8s.pod.name"] = serde_json::Value::String(format!("kubecon-{i}"));
            serde_json::to_vec(&v).expect("json")
        })
        .collect()
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_finding_is_acted_on_and_sigterm_stops_the_service_cleanly() {
    let rx = Receiver::start().await;
    let pbs = playbook_dir(&rx.url("/hook"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut svc = start(dir.path(), pbs.path());
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &svc.addr, events(1).remove(0)).await,
        reqwest::StatusCode::ACCEPTED
    );
    wait_for("the webhook", Duration::from_secs(20), || {
        rx.requests().len() == 1
    })
    .await;

    let pid = svc.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = svc.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "serve did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_restarted_service_resumes_and_applies_no_step_twice() {
    let rx = Receiver::start().await;
    let pbs = playbook_dir(&rx.url("/hook"));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let n = 60;

    let mut first = start(dir.path(), pbs.path());
    for body in events(n) {
        assert_eq!(
            post(&client, &first.addr, body).await,
            reqwest::StatusCode::ACCEPTED
        );
    }
    // Kill without warning while the engine is working through the acknowledged findings.
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();
    let delivered_before = rx.requests().len();
    eprintln!("delivered before kill -9: {delivered_before}/{n}");

    let mut second = start(dir.path(), pbs.path());
    // The restarted worker takes over unclaimed work at once and the killed process's claims
    // when their (2 s) leases expire; wait for everything.
    let store = SqliteStore::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .expect("store");
    let start_wait = Instant::now();
    loop {
        let audit = store
            .audit_list(AuditQuery::default())
            .await
            .expect("audit");
        let done = audit
            .iter()
            .filter(|a| a.kind == "execution.state" && a.detail["state"] == "applied")
            .count();
        if done == n {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(60),
            "only {done}/{n} executions applied (delivered before kill: {delivered_before})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = second.child.kill();
    let _ = second.child.wait();

    let audit = store
        .audit_list(AuditQuery::default())
        .await
        .expect("audit");
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.kind == "findings.received")
            .map(|a| a.detail["findings"].as_array().map_or(0, Vec::len))
            .sum::<usize>(),
        n,
        "every acknowledged finding was kept"
    );
    let mut applied: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for a in audit.iter().filter(|a| a.kind == "step.applied") {
        *applied
            .entry(a.execution_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(applied.len(), n, "every execution applied its step");
    assert!(
        applied.values().all(|c| *c == 1),
        "a step was recorded applied twice: {applied:?}"
    );
    // Deliveries retried after the crash carry the same idempotency key, so the receiver sees
    // each effect once.
    let keys: std::collections::HashSet<String> = rx
        .requests()
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), n);
    assert!(
        store
            .audit_verify()
            .await
            .expect("verify")
            .problems
            .is_empty()
    );
}

/// Whether some connection holds SQLite's write lock on `url` right now.
async fn write_locked(url: &str) -> bool {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::SqliteConnection::connect(url).await else {
        return true;
    };
    let locked = sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .is_err();
    if !locked {
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
    }
    locked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_engine_loses_its_lease_and_its_late_writes_are_refused_and_logged() {
    let rx = Receiver::start().await;
    rx.hold();
    let pbs = playbook_dir(&rx.url("/hook"));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let client = reqwest::Client::new();

    // Engine a sends the webhook, then stalls (SIGSTOP: a GC pause, a frozen VM) before the
    // answer reaches it, without holding the database's write lock.
    let mut a = start_with(dir.path(), pbs.path(), 1, &[]);
    assert_eq!(
        post(&client, &a.addr, events(1).remove(0)).await,
        reqwest::StatusCode::ACCEPTED
    );
    wait_for("a's webhook", Duration::from_secs(20), || {
        rx.requests().len() == 1
    })
    .await;
    loop {
        a.signal("-STOP");
        // kill returns once the signal is sent; a thread may still run (and take the write
        // lock) until the kernel stops it, so look only once every thread is stopped.
        a.wait_stopped().await;
        if !write_locked(&url).await {
            break;
        }
        a.signal("-CONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rx.release();

    // Engine b takes the execution over once a's 1 s lease ran out, and finishes it.
    let mut b = start_with(dir.path(), pbs.path(), 1, &[]);
    let store = SqliteStore::open(&url).await.expect("store");
    let applied = || async {
        store
            .audit_list(AuditQuery::default())
            .await
            .expect("audit")
            .iter()
            .any(|r| r.kind == "execution.state" && r.detail["state"] == "applied")
    };
    let started = Instant::now();
    while !applied().await {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "b never finished\n--- a:\n{}\n--- b:\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a wakes up: its lease is gone, so its writes are refused, and it says so.
    a.signal("-CONT");
    wait_for("a to log the lost lease", Duration::from_secs(20), || {
        a.logged("lease lost")
    })
    .await;
    for svc in [&mut a, &mut b] {
        let _ = svc.child.kill();
        let _ = svc.child.wait();
    }

    let audit = store
        .audit_list(AuditQuery::default())
        .await
        .expect("audit");
    let applied: Vec<_> = audit.iter().filter(|r| r.kind == "step.applied").collect();
    assert_eq!(applied.len(), 1, "one recorded result: b's");
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.kind == "execution.state" && r.detail["state"] == "applied")
            .count(),
        1
    );
    let lost: Vec<_> = audit.iter().filter(|r| r.kind == "lease.lost").collect();
    assert_eq!(
        lost.len(),
        1,
        "a's refusal is in the audit trail: {audit:#?}"
    );
    assert_eq!(lost[0].detail["fence"], 1, "a held the first claim");
    // Both deliveries (a's, and b's after taking over) carry the same idempotency key: the
    // apply was at least once, the effect once.
    let keys: std::collections::HashSet<String> = rx
        .requests()
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(rx.requests().len(), 2);
    assert_eq!(keys.len(), 1);
    assert!(
        store
            .audit_verify()
            .await
            .expect("verify")
            .problems
            .is_empty()
    );
}

/// Starts `serve` on `config` (a YAML file) and `playbooks`, with `env` besides the store URL.
pub(crate) fn start_configured(
    dir: &std::path::Path,
    config: &std::path::Path,
    playbooks: &std::path::Path,
    env: &[(&str, &str)],
) -> Service {
    let mut cmd = serve_command(dir, playbooks);
    cmd.arg("--config").arg(config).envs(env.iter().copied());
    launch(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbooks_match_on_the_token_a_finding_arrived_with() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Two senders, each with its own scoped token: the Falcosidekick token is read from the
    // environment, the other is written in the file.
    let config = dir.path().join("firebreak.yaml");
    std::fs::write(
        &config,
        "server:\n  tokens:\n    - name: falcosidekick\n      token_env: FIREBREAK_TOKEN_FALCOSIDEKICK\n      parsers: [falco, auto]\n    - name: lab\n      token: lab-token-3c9e\n      parsers: [\"*\"]\n",
    )
    .expect("write config");
    // One playbook per intake, each calling its own webhook path.
    let pbs = tempfile::tempdir().expect("tempdir");
    for (name, intake) in [
        ("from-sidekick", "http:falcosidekick"),
        ("from-lab", "http:lab"),
    ] {
        std::fs::write(
            pbs.path().join(format!("{name}.yaml")),
            format!(
                "name: {name}\nmatch:\n  class: runtime-threat\n  intake: \"{intake}\"\nsteps:\n  - action: notify.webhook\n    with: {{url: \"{}\"}}\n",
                rx.url(&format!("/{name}"))
            ),
        )
        .expect("write playbook");
    }
    let mut svc = start_configured(
        dir.path(),
        &config,
        pbs.path(),
        &[("FIREBREAK_TOKEN_FALCOSIDEKICK", "sidekick-token-8b1d")],
    );
    let client = reqwest::Client::new();
    // The real Falco event, once per sender (distinct pods, so neither is a duplicate).
    let mut bodies = events(2);
    for (token, body) in [
        ("sidekick-token-8b1d", bodies.remove(0)),
        ("lab-token-3c9e", bodies.remove(0)),
    ] {
        let status = client
            .post(format!("http://{}/v1/findings/auto", svc.addr))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .map(|r| r.status())
            .expect("post");
        assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    }
    wait_for("both webhooks", Duration::from_secs(20), || {
        rx.requests().len() >= 2
    })
    .await;
    // A webhook for a finding means the engine recorded every playbook that finding matched:
    // each finding matched exactly the playbook of its own intake.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .expect("ledger");
    let matched: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.playbook, f.intake FROM executions e JOIN findings f ON f.id = e.finding_id \
         ORDER BY e.playbook",
    )
    .fetch_all(&mut conn)
    .await
    .expect("executions");
    assert_eq!(
        matched,
        [
            ("from-lab".to_owned(), "http:lab".to_owned()),
            ("from-sidekick".to_owned(), "http:falcosidekick".to_owned()),
        ]
    );
    let mut hits: Vec<(String, String)> = rx
        .requests()
        .iter()
        .map(|r| {
            let pod = if r.body.contains("kubecon-0") {
                "kubecon-0"
            } else {
                "kubecon-1"
            };
            (r.uri.clone(), pod.to_owned())
        })
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            ("/from-lab".to_owned(), "kubecon-1".to_owned()),
            ("/from-sidekick".to_owned(), "kubecon-0".to_owned()),
        ]
    );
    let _ = svc.child.kill();
    let _ = svc.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_serve_says_so_and_kubernetes_steps_end_planned_only_not_failed() {
    let pbs = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        pbs.path().join("isolate.yaml"),
        "name: isolate\nmatch: {source: [falco]}\nsteps:\n  - action: kubernetes.isolate-pod\n",
    )
    .expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    // A clean environment: no kubernetes.url, no kubeconfig, not in a cluster.
    let mut svc = start_with(dir.path(), pbs.path(), 2, &[]);
    assert!(
        svc.logged("Kubernetes actions plan only"),
        "{:?}",
        svc.log.lock().expect("log")
    );
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &svc.addr, events(1).remove(0)).await,
        reqwest::StatusCode::ACCEPTED
    );
    let store = SqliteStore::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .expect("store");
    let started = Instant::now();
    let end = loop {
        let audit = store
            .audit_list(AuditQuery::default())
            .await
            .expect("audit");
        if let Some(end) = audit
            .iter()
            .rev()
            .find(|r| r.kind == "execution.state" && r.detail["state"] != "applying")
        {
            break end.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{audit:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = svc.child.kill();
    let _ = svc.child.wait();
    assert_eq!(end.detail["state"], "planned", "{end:?}");
    assert!(
        end.detail["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("planned only: no Kubernetes cluster")),
        "{end:?}"
    );
    let audit = store
        .audit_list(AuditQuery::default())
        .await
        .expect("audit");
    assert!(audit.iter().any(|r| r.kind == "step.planned_only"));
    assert!(audit.iter().all(|r| r.kind != "step.failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_while_slow_clients_hold_connections() {
    use tokio::io::AsyncWriteExt;
    let rx = Receiver::start().await;
    let pbs = playbook_dir(&rx.url("/hook"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut svc = start(dir.path(), pbs.path());
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&svc.addr)
            .await
            .expect("connect");
        s.write_all(b"POST /v1/findings/auto HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .expect("write");
        slow.push(s);
    }
    svc.signal("-TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = svc.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve did not stop after SIGTERM with slow clients connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    drop(slow);
}
