//! `firebreak rollback` as a user runs it: a real `firebreak run` of the shipped
//! stop-cryptominer playbook isolates a miner's pod and scales its Deployment to zero in the
//! Kubernetes emulator, then the rollback restores both, audited, once (again only with
//! `--force`, idempotently).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use firebreak::store::Store;
use firebreak::store::sqlite::SqliteStore;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

use crate::kube_actions::{fake_secret, falco_miner_alert, policy, seed_kubecon, seed_workload};
use crate::support::kube_api::KubeApi;
use crate::support::receiver::Receiver;

/// Runs the binary with `--config config` and a clean environment, from the crate root (so
/// `--playbooks playbooks` is the shipped set), on the blocking pool: the emulator and the
/// receiver keep serving on the test's runtime meanwhile.
async fn firebreak(config: &Path, args: &[&str]) -> Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .arg("--config")
            .arg(&config)
            .args(&args)
            .env_clear()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run firebreak")
    })
    .await
    .expect("join")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The miner of the Falco finding: `default/kubecon`, owned by ReplicaSet `miner-5d8f` of
/// Deployment `miner` at 3 replicas (as in the stop-cryptominer engine test).
fn seed_miner(api: &KubeApi) {
    let owners = seed_workload(api, "default", "miner", "miner-5d8f", 3);
    seed_kubecon(api, owners, &fake_secret());
}

fn replicas(api: &KubeApi) -> Option<i32> {
    api.get::<Deployment>("default", "miner")
        .and_then(|d| d.spec.replicas)
}

/// A configuration with a store in `dir`, the emulator as the cluster and the receiver as the
/// `security` webhook the shipped playbooks notify.
fn write_config(dir: &Path, api: &KubeApi, receiver: &Receiver) -> PathBuf {
    let path = dir.join("firebreak.yaml");
    std::fs::write(
        &path,
        format!(
            "store:\n  url: \"sqlite://{}\"\nkubernetes:\n  url: \"{}\"\nnotify:\n  webhooks:\n    security:\n      url: \"{}\"\n",
            dir.join("ledger.db").display(),
            api.base,
            receiver.url("/security")
        ),
    )
    .expect("write config");
    path
}

async fn audit(config: &Path) -> Vec<Value> {
    let o = firebreak(config, &["audit", "list", "--format", "json"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("audit JSON")
}

/// A real `firebreak run` of the shipped playbooks on the Falco miner finding, against the
/// emulator seeded with the miner: returns the peers, the directory holding store and config,
/// the config and the stop-cryptominer execution id (read from the run's text output).
struct Scaled {
    api: KubeApi,
    _receiver: Receiver,
    dir: tempfile::TempDir,
    config: PathBuf,
    id: String,
}

async fn scaled_miner() -> Scaled {
    let api = KubeApi::start().await;
    seed_miner(&api);
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &api, &receiver);
    let finding = dir.path().join("falco-miner.json");
    std::fs::write(&finding, falco_miner_alert()).expect("write finding");
    let run = firebreak(
        &config,
        &[
            "run",
            "--playbooks",
            "playbooks",
            "--finding",
            &finding.to_string_lossy(),
        ],
    )
    .await;
    assert_eq!(code(&run), 0, "{}\n{}", stdout(&run), stderr(&run));
    assert_eq!(replicas(&api), Some(0), "the run scaled the miner to zero");
    assert!(policy(&api).is_some(), "the run isolated the miner's pod");
    // The text report names the execution next to its playbook.
    let out = stdout(&run);
    let id = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("playbook stop-cryptominer (execution ")
        })
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no execution id in:\n{out}"))
        .to_owned();
    Scaled {
        api,
        _receiver: receiver,
        dir,
        config,
        id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_a_scaled_miner_once_audited_and_again_only_with_force() {
    // The directory holds the store and the configuration: keep it to the end.
    let Scaled {
        api,
        dir: _dir,
        config,
        id,
        ..
    } = scaled_miner().await;

    // A dry run says what it would undo, and changes and records nothing.
    let before = audit(&config).await.len();
    let writes = api.writes();
    let dry = firebreak(&config, &["rollback", &id, "--dry-run"]).await;
    assert_eq!(code(&dry), 0, "{}", stderr(&dry));
    let text = stdout(&dry);
    assert!(
        text.contains("kubernetes.scale-to-zero") && text.contains("would undo"),
        "{text}"
    );
    assert!(text.contains("\"previous_replicas\":3"), "{text}");
    assert!(text.contains("kubernetes.isolate-pod"), "{text}");
    assert!(
        text.contains("kubernetes.capture-evidence") && text.contains("not reversible"),
        "{text}"
    );
    assert_eq!(replicas(&api), Some(0));
    assert!(policy(&api).is_some());
    assert_eq!(
        api.writes(),
        writes,
        "a dry run writes nothing to the cluster"
    );
    assert_eq!(
        audit(&config).await.len(),
        before,
        "a dry run audits nothing"
    );

    // The real rollback restores the replicas and lifts the isolation, undoing the last step
    // first.
    let back = firebreak(&config, &["rollback", &id, "--by", "alice"]).await;
    assert_eq!(code(&back), 0, "{}\n{}", stdout(&back), stderr(&back));
    assert_eq!(replicas(&api), Some(3), "replicas restored");
    assert!(policy(&api).is_none(), "isolation lifted");
    let text = stdout(&back);
    let notify = text.find("notify.webhook").expect("notify step listed");
    let scale = text
        .find("kubernetes.scale-to-zero")
        .expect("scale step listed");
    let isolate = text
        .find("kubernetes.isolate-pod")
        .expect("isolate step listed");
    assert!(
        notify < scale && scale < isolate,
        "last step first:\n{text}"
    );
    let trail = audit(&config).await;
    let steps: Vec<&Value> = trail
        .iter()
        .filter(|r| r["kind"] == "rollback.step")
        .collect();
    assert_eq!(steps.len(), 2, "one record per undone step: {steps:#?}");
    for (step, action) in steps
        .iter()
        .zip(["kubernetes.scale-to-zero", "kubernetes.isolate-pod"])
    {
        assert_eq!(step["execution_id"], id.as_str());
        assert_eq!(step["detail"]["action"], action);
        assert_eq!(step["detail"]["result"], "ok");
        assert_eq!(step["detail"]["by"], "alice");
    }
    let done: Vec<&Value> = trail
        .iter()
        .filter(|r| r["kind"] == "rollback.done")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["detail"]["by"], "alice");
    assert_eq!(done[0]["detail"]["undone"], 2);
    assert_eq!(done[0]["detail"]["failed"], 0);
    assert!(done[0]["finding_id"].is_string());

    // A second rollback is refused: a person should know it already happened.
    let again = firebreak(&config, &["rollback", &id]).await;
    assert_eq!(code(&again), 2, "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already rolled back") && stderr(&again).contains("--force"),
        "{}",
        stderr(&again)
    );

    // With --force it runs again and, nothing having changed, changes nothing.
    let writes = api.writes();
    let forced = firebreak(
        &config,
        &[
            "rollback", &id, "--force", "--by", "bob", "--format", "json",
        ],
    )
    .await;
    assert_eq!(code(&forced), 0, "{}", stderr(&forced));
    let doc: Value = serde_json::from_str(&stdout(&forced)).expect("JSON");
    assert_eq!(doc["execution_id"], id.as_str());
    assert_eq!(doc["playbook"], "stop-cryptominer");
    let scale = doc["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["action"] == "kubernetes.scale-to-zero"))
        .expect("scale step");
    assert_eq!(scale["status"], "undone");
    assert_eq!(scale["undo"]["previous_replicas"], 3);
    assert_eq!(replicas(&api), Some(3));
    assert!(policy(&api).is_none());
    assert_eq!(api.writes(), writes, "a second rollback is a no-op");

    let verify = firebreak(&config, &["audit", "verify"]).await;
    assert_eq!(code(&verify), 0, "{}", stdout(&verify));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_of_an_unknown_execution_is_a_usage_error_with_a_hint() {
    let api = KubeApi::start().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &api, &receiver);
    let o = firebreak(&config, &["rollback", "01HZZZZZZZZZZZZZZZZZZZZZZZ"]).await;
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(
        err.contains("no execution 01HZZZZZZZZZZZZZZZZZZZZZZZ") && err.contains("hint:"),
        "{err}"
    );
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_reports_a_target_locked_by_another_engine_and_leaves_it() {
    let Scaled {
        api,
        dir,
        config,
        id,
        ..
    } = scaled_miner().await;
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let target = "k8s:/default/Deployment/miner/";
    let store = SqliteStore::open(&url).await.expect("open store");
    assert!(
        store
            .lock_target(
                target,
                "another-engine",
                "other-execution",
                Duration::from_secs(300)
            )
            .await
            .expect("lock")
    );

    let locked = firebreak(&config, &["rollback", &id, "--by", "alice"]).await;
    assert_eq!(code(&locked), 1, "{}\n{}", stdout(&locked), stderr(&locked));
    assert!(stdout(&locked).contains("LOCKED"), "{}", stdout(&locked));
    assert_eq!(replicas(&api), Some(0), "a locked target is left alone");
    let trail = audit(&config).await;
    let step = trail
        .iter()
        .find(|r| r["kind"] == "rollback.step")
        .expect("the attempt is audited");
    assert_eq!(step["detail"]["result"], "failed");
    assert!(
        step["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("lock")),
        "{step}"
    );

    // Once the other engine is done, a forced rollback finishes the job.
    store
        .unlock_target(target, "another-engine")
        .await
        .expect("unlock");
    let again = firebreak(&config, &["rollback", &id, "--force"]).await;
    assert_eq!(code(&again), 0, "{}\n{}", stdout(&again), stderr(&again));
    assert_eq!(replicas(&api), Some(3));
}
