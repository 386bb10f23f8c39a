//! Effect once under crashes: `firebreak serve` is killed with SIGKILL at random points while it
//! works through multi-step playbooks against the Kubernetes emulator and moto, and restarted
//! on the same ledger. Afterwards every execution is applied once or cleanly failed, no change
//! happened twice, and the audit trail verifies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use firebreak::store::sqlite::SqliteStore;
use firebreak::store::{AuditQuery, Store};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::aws_iam::trufflehog_line;
use crate::fixtures::{self, FALCO_SHELL};
use crate::kube_actions::{meta, owner, selector, template};
use crate::service::{post, start_with};
use crate::support::kube_api::KubeApi;
use crate::support::moto;

/// Kill points: the issue asks for at least 20.
const KILLS: usize = 22;
/// Pods with a shell (Falco) and leaked keys (trufflehog).
const PODS: usize = 8;
const KEYS: usize = 6;

/// A real Falco event about pod `name` (derived: only `output_fields.k8s.pod.name` changes).
fn falco_about(name: &str) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixtures::bytes(FALCO_SHELL)).expect("fixture");
    v["output_fields"]["k8s.pod.name"] = serde_json::Value::String(name.to_owned());
    serde_json::to_vec(&v).expect("json")
}

/// Deployment `app` (3 replicas) → ReplicaSet → pod `app-pod` in `default`.
fn seed_chain(api: &KubeApi, app: &str) {
    let d = api.seed(&Deployment {
        metadata: meta("default", app, app),
        spec: DeploymentSpec {
            replicas: Some(3),
            selector: selector(app),
            template: template(app),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    });
    let mut rs_meta = meta("default", &format!("{app}-rs"), app);
    rs_meta.owner_references = Some(vec![owner("Deployment", "apps/v1", &d)]);
    let rs = api.seed(&ReplicaSet {
        metadata: rs_meta,
        spec: ReplicaSetSpec {
            replicas: Some(3),
            selector: selector(app),
            template: Some(template(app)),
            ..ReplicaSetSpec::default()
        },
        ..ReplicaSet::default()
    });
    let mut pod_meta = meta("default", &format!("{app}-pod"), app);
    pod_meta.owner_references = Some(vec![owner("ReplicaSet", "apps/v1", &rs)]);
    api.seed(&Pod {
        metadata: pod_meta,
        spec: template(app).spec,
        ..Pod::default()
    });
}

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_of_multi_step_playbooks_never_doubles_an_effect() {
    let api = KubeApi::start().await;
    // A slow API server (every write takes 40 ms), so kills land inside steps too.
    api.delay_writes(Duration::from_millis(40));
    let aws = moto::aws().await;
    let iam = aws.iam();
    let tag = ulid::Ulid::new().to_string().to_lowercase()[20..].to_owned();

    let apps: Vec<String> = (0..PODS).map(|i| format!("miner-{tag}-{i}")).collect();
    for app in &apps {
        seed_chain(&api, app);
    }
    let mut keys: Vec<(String, String)> = Vec::new();
    for i in 0..KEYS {
        let user = format!("leaky-{tag}-{i}");
        iam.create_user().user_name(&user).send().await.unwrap();
        let key = iam
            .create_access_key()
            .user_name(&user)
            .send()
            .await
            .unwrap();
        keys.push((user, key.access_key().unwrap().access_key_id().to_owned()));
    }

    let pbs = tempfile::tempdir().unwrap();
    std::fs::write(
        pbs.path().join("contain-pod.yaml"),
        "name: contain-pod\nmatch: {source: [falco]}\nsteps:\n  - action: kubernetes.capture-evidence\n  - action: kubernetes.isolate-pod\n  - action: kubernetes.scale-to-zero\n  - action: kubernetes.label\n    with: {set: {firebreak.dev/contained: \"yes\"}}\n",
    )
    .unwrap();
    std::fs::write(
        pbs.path().join("contain-key.yaml"),
        "name: contain-key\nmatch: {source: [trufflehog]}\nsteps:\n  - action: aws.iam.quarantine-user\n    with: {mode: deny-all}\n  - action: aws.iam.deactivate-access-key\n",
    )
    .unwrap();

    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for i in 0..PODS.max(KEYS) {
        if let Some(app) = apps.get(i) {
            bodies.push(falco_about(&format!("{app}-pod")));
        }
        if let Some((user, key)) = keys.get(i) {
            bodies.push(trufflehog_line(user, key).into_bytes());
        }
    }
    let total = bodies.len();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let env = [
        ("FIREBREAK_KUBERNETES__URL", api.base.as_str()),
        ("FIREBREAK_AWS__ENDPOINT_URL", moto::endpoint()),
        ("FIREBREAK_AWS__REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let seed = u64::from(std::process::id()) ^ 0x5eed;
    eprintln!("kill points seeded with {seed}");
    let mut rng = Lcg(seed);
    let client = reqwest::Client::new();
    let mut pending = bodies.into_iter();
    let mut next = pending.next();
    for _ in 0..KILLS {
        let mut svc = start_with(dir.path(), pbs.path(), 1, &env);
        // A finding or two arrives, then the process dies somewhere in its work.
        for _ in 0..2 {
            if let Some(body) = next.take() {
                if post(&client, &svc.addr, body.clone()).await == reqwest::StatusCode::ACCEPTED {
                    next = pending.next();
                } else {
                    next = Some(body);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        svc.child.kill().expect("kill -9");
        let _ = svc.child.wait();
    }

    // The last restart posts what is left and runs until every execution is finished.
    let mut svc = start_with(dir.path(), pbs.path(), 1, &env);
    while let Some(body) = next.take() {
        assert_eq!(
            post(&client, &svc.addr, body).await,
            reqwest::StatusCode::ACCEPTED
        );
        next = pending.next();
    }
    let store = SqliteStore::open(&url).await.unwrap();
    let started = Instant::now();
    let finals = loop {
        let audit = store.audit_list(AuditQuery::default()).await.unwrap();
        let mut state: HashMap<String, String> = HashMap::new();
        for r in audit.iter().filter(|r| r.kind == "execution.state") {
            state.insert(
                r.execution_id.clone().unwrap_or_default(),
                r.detail["state"].as_str().unwrap_or_default().to_owned(),
            );
        }
        let done = state
            .values()
            .filter(|s| matches!(s.as_str(), "applied" | "failed"))
            .count();
        if done == total {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {done}/{total} executions finished: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = svc.child.kill();
    let _ = svc.child.wait();

    // Every execution applied once or cleanly failed (a failure names its reason).
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let mut applied_steps: HashMap<(String, i64), usize> = HashMap::new();
    for r in audit.iter().filter(|r| r.kind == "step.applied") {
        *applied_steps
            .entry((
                r.execution_id.clone().unwrap_or_default(),
                r.detail["step"].as_i64().unwrap_or(-1),
            ))
            .or_default() += 1;
    }
    assert!(
        applied_steps.values().all(|n| *n == 1),
        "a step was recorded applied twice: {applied_steps:?}"
    );
    for (execution, state) in &finals {
        let steps = applied_steps.keys().filter(|(e, _)| e == execution).count();
        match state.as_str() {
            "applied" => {
                let (_, row) = store.execution(execution).await.unwrap().unwrap();
                assert_eq!(steps, row.steps.len(), "{execution}: every step applied");
            }
            _ => {
                let failed = audit.iter().any(|r| {
                    r.execution_id.as_deref() == Some(execution) && r.kind == "step.failed"
                });
                assert!(failed, "{execution} failed without a failed step");
            }
        }
    }
    let applied = finals.values().filter(|s| *s == "applied").count();
    // How many kills landed inside a step: it was saved `applying` more than once.
    let mut applying: HashMap<(String, i64), usize> = HashMap::new();
    for r in audit.iter().filter(|r| r.kind == "step.applying") {
        *applying
            .entry((
                r.execution_id.clone().unwrap_or_default(),
                r.detail["step"].as_i64().unwrap_or(-1),
            ))
            .or_default() += 1;
    }
    let interrupted = applying.values().filter(|n| **n > 1).count();
    eprintln!(
        "{applied}/{total} executions applied, the rest cleanly failed; {interrupted} step(s) \
         interrupted mid-apply and resumed"
    );
    assert!(
        interrupted > 0,
        "no kill landed inside a step: the test proved nothing"
    );
    assert!(applied * 10 >= total * 9, "{finals:?}");

    // No doubled effect in the cluster: each Deployment is at zero and remembers the 3 replicas
    // it had (a second apply after a crash would have recorded 0, so rollback could not restore
    // it), each pod is isolated by its policy and labelled. (A write may reach the server twice:
    // apply is at least once; what matters is that the second changes nothing.)
    for app in &apps {
        let d = api.get::<Deployment>("default", app).unwrap();
        assert_eq!(d.spec.replicas, Some(0), "{app}");
        let annotations = d.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations
                .get("firebreak.dev/previous-replicas")
                .map(String::as_str),
            Some("3"),
            "{app}: the replicas before containment are kept"
        );
        let pod = format!("{app}-pod");
        assert!(
            api.get::<NetworkPolicy>("default", &format!("firebreak-isolate-{pod}"))
                .is_some()
        );
        let labels = api
            .get::<Pod>("default", &pod)
            .unwrap()
            .metadata
            .labels
            .unwrap_or_default();
        assert_eq!(
            labels.get("firebreak.dev/contained").map(String::as_str),
            Some("yes")
        );
    }
    // ... and in AWS: one quarantine policy, the leaked key inactive, no key created.
    for (user, key) in &keys {
        let policies = iam
            .list_user_policies()
            .user_name(user)
            .send()
            .await
            .unwrap();
        assert_eq!(policies.policy_names(), ["firebreak-quarantine"], "{user}");
        let listed = iam.list_access_keys().user_name(user).send().await.unwrap();
        let listed = listed.access_key_metadata();
        assert_eq!(listed.len(), 1, "{user}: no key was created");
        assert_eq!(listed[0].access_key_id(), Some(key.as_str()));
        assert_eq!(
            listed[0].status().map(|s| s.as_str()),
            Some("Inactive"),
            "{user}"
        );
    }
    let report = store.audit_verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
