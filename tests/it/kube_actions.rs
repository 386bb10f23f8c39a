//! Kubernetes containment actions against the API emulator, from real Falco findings through
//! playbooks and the engine: plans write nothing, apply changes the cluster, a second apply is
//! a no-op, rollback restores, and what cannot be scaled is refused with a way out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

use firebreak::action::{ActionCtx, ActionError, Outcome, StepInput, action};
use firebreak::clients::github::GitHub;
use firebreak::clients::kube::Kube;
use firebreak::config::{Config, GithubConfig, WebhookEndpoint};
use firebreak::engine::{RunOptions, RunReport, StepReport, StepStatus, run_in_memory as run};
use firebreak::finding::Finding;
use firebreak::playbook::{PlaybookSet, load_str};
use firebreak::redact::Redacted;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::Value;

use crate::fixtures::{self, FALCO_K8S_API, FALCO_SHELL};
use crate::support::github_api::GithubApi;
use crate::support::kube_api::KubeApi;
use crate::support::receiver::Receiver;

const PREVIOUS: &str = "firebreak.dev/previous-replicas";
const ISOLATED: &str = "firebreak.dev/isolated";

fn ctx(api: &KubeApi) -> ActionCtx {
    ActionCtx::from_config(&Config::default())
        .unwrap()
        .with_kube(Kube::from_url(&api.base).unwrap())
}

fn playbooks(action: &str, with: &str) -> Arc<PlaybookSet> {
    let yaml = format!(
        "name: contain\nmatch: {{source: [falco]}}\nsteps:\n  - action: {action}\n    with: {with}\n"
    );
    let (pb, _) = load_str(Path::new("contain.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(PlaybookSet::new(vec![pb]))
}

async fn step(
    set: &Arc<PlaybookSet>,
    ctx: &ActionCtx,
    finding: &Finding,
    dry_run: bool,
) -> StepReport {
    let opts = RunOptions {
        dry_run,
        retry_base: std::time::Duration::from_millis(1),
        ..RunOptions::default()
    };
    let report: RunReport = run(set, ctx, std::slice::from_ref(finding), &opts, &|| {})
        .await
        .unwrap();
    assert_eq!(report.executions.len(), 1, "{report:#?}");
    report.executions[0].steps[0].clone()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(crate) fn meta(namespace: &str, name: &str, app: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels(&[("app", app)])),
        ..ObjectMeta::default()
    }
}

pub(crate) fn template(app: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&[("app", app)])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("devopps/falco-pod-delete:latest".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

pub(crate) fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(&[("app", app)])),
        ..LabelSelector::default()
    }
}

pub(crate) fn owner(kind: &str, api_version: &str, stored: &Value) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: stored["metadata"]["name"].as_str().unwrap().into(),
        uid: stored["metadata"]["uid"].as_str().unwrap().into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub(crate) fn pod(namespace: &str, name: &str, app: &str, owners: Vec<OwnerReference>) -> Pod {
    let mut m = meta(namespace, name, app);
    m.owner_references = (!owners.is_empty()).then_some(owners);
    Pod {
        metadata: m,
        spec: template(app).spec,
        ..Pod::default()
    }
}

/// Seeds Deployment `app` in `namespace` at `replicas` and its ReplicaSet `rs_name`; returns
/// the owner reference a pod of that ReplicaSet carries.
pub(crate) fn seed_workload(
    api: &KubeApi,
    namespace: &str,
    app: &str,
    rs_name: &str,
    replicas: i32,
) -> Vec<OwnerReference> {
    let d = api.seed(&Deployment {
        metadata: meta(namespace, app, app),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(app),
            template: template(app),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    });
    let mut rs_meta = meta(namespace, rs_name, app);
    rs_meta.owner_references = Some(vec![owner("Deployment", "apps/v1", &d)]);
    let rs = api.seed(&ReplicaSet {
        metadata: rs_meta,
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            selector: selector(app),
            template: Some(template(app)),
            ..ReplicaSetSpec::default()
        },
        ..ReplicaSet::default()
    });
    vec![owner("ReplicaSet", "apps/v1", &rs)]
}

/// The Deployment → ReplicaSet → Pod chain behind the Falco finding's pod
/// `openfaas-fn/falco-pod-delete-7dc9f5fbb8-gbfk7`.
fn seed_deployment_chain(api: &KubeApi, replicas: i32) {
    let (ns, app) = ("openfaas-fn", "falco-pod-delete");
    let owners = seed_workload(api, ns, app, "falco-pod-delete-7dc9f5fbb8", replicas);
    api.seed(&pod(ns, "falco-pod-delete-7dc9f5fbb8-gbfk7", app, owners));
}

fn deployment(api: &KubeApi) -> Deployment {
    api.get::<Deployment>("openfaas-fn", "falco-pod-delete")
        .unwrap()
}

fn annotation(d: &Deployment) -> Option<String> {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PREVIOUS).cloned())
}

#[tokio::test]
async fn scale_to_zero_scales_the_owning_deployment_and_rollback_restores_it() {
    let api = KubeApi::start().await;
    seed_deployment_chain(&api, 2);
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_K8S_API);
    let set = playbooks("kubernetes.scale-to-zero", "{}");

    let planned = step(&set, &ctx, &finding, true).await;
    assert_eq!(planned.status, StepStatus::Planned, "{planned:#?}");
    let plan = planned.plan.unwrap();
    assert_eq!(api.writes(), 0, "a plan writes nothing");
    assert!(!plan.noop);
    assert_eq!(plan.target, "k8s:/openfaas-fn/Deployment/falco-pod-delete/");
    assert_eq!(plan.before["replicas"], 2);
    assert_eq!(plan.after["replicas"], 0);
    assert_eq!(
        plan.observed["owners"],
        serde_json::json!([
            "ReplicaSet falco-pod-delete-7dc9f5fbb8",
            "Deployment falco-pod-delete"
        ])
    );
    assert_eq!(plan.changes.len(), 2);
    let again = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert_eq!(again.hash, plan.hash, "the same state plans the same hash");

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.unwrap();
    assert_eq!(outcome.result, "applied");
    let d = deployment(&api);
    assert_eq!(d.spec.replicas, Some(0));
    assert_eq!(annotation(&d).as_deref(), Some("2"));

    let writes = api.writes();
    let second = step(&set, &ctx, &finding, false).await;
    assert_eq!(second.status, StepStatus::Applied, "{second:#?}");
    assert!(second.plan.unwrap().noop);
    assert_eq!(second.outcome.unwrap().result, "unchanged");
    assert_eq!(api.writes(), writes, "a second apply writes nothing");

    let scale = action("kubernetes.scale-to-zero").unwrap();
    scale.rollback(&ctx, &outcome).await.unwrap();
    let d = deployment(&api);
    assert_eq!(d.spec.replicas, Some(2));
    assert_eq!(annotation(&d), None);
    scale.rollback(&ctx, &outcome).await.unwrap();
    assert_eq!(
        deployment(&api).spec.replicas,
        Some(2),
        "rollback is idempotent"
    );
}

#[tokio::test]
async fn scale_to_zero_refuses_a_daemonset_pod_and_names_isolate_pod() {
    let api = KubeApi::start().await;
    let ds = api.seed(&DaemonSet {
        metadata: meta("default", "node-agent", "agent"),
        spec: DaemonSetSpec {
            selector: selector("agent"),
            template: template("agent"),
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    });
    // The Falco finding's pod default/kubecon, here run by a DaemonSet.
    api.seed(&pod(
        "default",
        "kubecon",
        "agent",
        vec![owner("DaemonSet", "apps/v1", &ds)],
    ));
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_SHELL);
    let set = playbooks("kubernetes.scale-to-zero", "{}");
    let report = step(&set, &ctx, &finding, false).await;
    assert_eq!(report.status, StepStatus::Failed, "{report:#?}");
    let error = report.error.unwrap();
    assert!(error.contains("DaemonSet node-agent"), "{error}");
    assert!(error.contains("kubernetes.isolate-pod"), "{error}");
    assert_eq!(api.writes(), 0);
}

#[tokio::test]
async fn scale_to_zero_refuses_a_standalone_pod_and_names_isolate_pod() {
    let api = KubeApi::start().await;
    api.seed(&pod("default", "kubecon", "shell", vec![]));
    let ctx = ctx(&api);
    let set = playbooks("kubernetes.scale-to-zero", "{}");
    let report = step(&set, &ctx, &fixtures::finding(FALCO_SHELL), true).await;
    let error = report.error.unwrap();
    assert!(error.contains("standalone pod"), "{error}");
    assert!(error.contains("kubernetes.isolate-pod"), "{error}");
}

#[tokio::test]
async fn scale_to_zero_apply_reports_drift_when_replicas_changed_after_the_plan() {
    let api = KubeApi::start().await;
    seed_deployment_chain(&api, 2);
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_K8S_API);
    let scale = action("kubernetes.scale-to-zero").unwrap();
    let params = serde_json::json!({});
    let input = StepInput {
        finding: &finding,
        playbook: "contain",
        step: 0,
        params: &params,
        execution: None,
    };
    let plan = scale.plan(&ctx, input).await.unwrap();
    let mut d = deployment(&api);
    d.spec.replicas = Some(5);
    api.seed(&d);
    let writes = api.writes();
    let err = scale.apply(&ctx, input, &plan).await.unwrap_err();
    assert!(matches!(err, ActionError::Drift(_)), "{err:?}");
    assert_eq!(api.writes(), writes);
    assert_eq!(deployment(&api).spec.replicas, Some(5));
}

#[tokio::test]
async fn without_a_cluster_kubernetes_steps_are_planned_only_not_failed() {
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let set = playbooks("kubernetes.isolate-pod", "{}");
    let finding = fixtures::finding(FALCO_SHELL);
    let planned = step(&set, &ctx, &finding, true).await;
    let plan = planned.plan.unwrap();
    assert!(plan.summary.contains("NOT CONNECTED"), "{}", plan.summary);
    // Not a dry run: the step is planned only (its own outcome), never a failed apply.
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::PlannedOnly, "{applied:#?}");
    assert!(applied.error.is_none(), "{applied:#?}");
    let why = applied.plan.unwrap().not_connected.unwrap();
    assert!(why.contains("no Kubernetes cluster"), "{why}");
}

pub(crate) fn policy(api: &KubeApi) -> Option<NetworkPolicy> {
    api.get::<NetworkPolicy>("default", "firebreak-isolate-kubecon")
}

fn isolated_label(api: &KubeApi) -> Option<String> {
    api.get::<Pod>("default", "kubecon")
        .unwrap()
        .metadata
        .labels
        .and_then(|l| l.get(ISOLATED).cloned())
}

#[tokio::test]
async fn isolate_pod_denies_all_traffic_and_rollback_removes_policy_and_label() {
    let api = KubeApi::start().await;
    api.seed(&pod("default", "kubecon", "shell", vec![]));
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_SHELL);
    let set = playbooks("kubernetes.isolate-pod", "{}");

    let planned = step(&set, &ctx, &finding, true).await;
    assert_eq!(planned.status, StepStatus::Planned, "{planned:#?}");
    assert_eq!(api.writes(), 0, "a plan writes nothing");
    assert_eq!(planned.plan.unwrap().target, "k8s:/default/Pod/kubecon/");

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome: Outcome = applied.outcome.unwrap();
    let np = policy(&api).expect("the isolation policy exists");
    let spec = np.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    assert!(
        spec.ingress.is_none() && spec.egress.is_none(),
        "no rule: deny all"
    );
    let value = isolated_label(&api).expect("the pod is labelled");
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()[ISOLATED],
        value
    );

    let writes = api.writes();
    let second = step(&set, &ctx, &finding, false).await;
    assert_eq!(second.outcome.unwrap().result, "unchanged");
    assert_eq!(api.writes(), writes, "a second apply writes nothing");

    action("kubernetes.isolate-pod")
        .unwrap()
        .rollback(&ctx, &outcome)
        .await
        .unwrap();
    assert!(policy(&api).is_none());
    assert_eq!(isolated_label(&api), None);
}

#[tokio::test]
async fn isolate_pod_keeps_forensic_egress_and_namespaces_open() {
    let api = KubeApi::start().await;
    api.seed(&pod("default", "kubecon", "shell", vec![]));
    let ctx = ctx(&api);
    let set = playbooks(
        "kubernetes.isolate-pod",
        "{allow_egress_cidrs: [10.0.42.0/24], allow_namespaces: [forensics]}",
    );
    let applied = step(&set, &ctx, &fixtures::finding(FALCO_SHELL), false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let spec = serde_json::to_value(policy(&api).unwrap().spec.unwrap()).unwrap();
    assert_eq!(
        spec["egress"][0]["to"][0]["ipBlock"]["cidr"],
        "10.0.42.0/24"
    );
    assert_eq!(
        spec["egress"][0]["to"][1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "forensics"
    );
    assert_eq!(
        spec["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "forensics"
    );
}

#[test]
fn the_committed_rbac_is_what_the_actions_declare() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml");
    let committed = std::fs::read_to_string(path).expect("deploy/rbac.yaml");
    assert_eq!(
        committed,
        firebreak::action::rbac::kubernetes_rbac(),
        "deploy/rbac.yaml is stale: run `firebreak actions rbac > deploy/rbac.yaml`"
    );
}

// ---------------------------------------------------------------------------------------------
// capture-evidence, delete-pod, secure-dashboard, label, annotate, cordon-node, Events, and the
// conformance of every kubernetes.* action.

/// A value shaped like an AWS secret access key (40 characters of its alphabet), made at run
/// time so that no credential-shaped literal is committed.
pub(crate) fn fake_secret() -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+";
    (0..40)
        .map(|i| char::from(alphabet[(i * 17 + 5) % alphabet.len()]))
        .collect()
}

fn typed<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn playbook_yaml(matcher: &str, action: &str, with: &str) -> Arc<PlaybookSet> {
    let yaml = format!(
        "name: contain\nmatch: {matcher}\nsteps:\n  - action: {action}\n    with: {with}\n"
    );
    let (pb, _) = load_str(Path::new("contain.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    Arc::new(PlaybookSet::new(vec![pb]))
}

/// The Falco finding's pod `default/kubecon` on node `node-1`, with a credential in its
/// environment and in its log, a Secret next to it, an Event about it and one about another pod.
pub(crate) fn seed_kubecon(api: &KubeApi, owners: Vec<OwnerReference>, secret: &str) {
    let mut p = pod("default", "kubecon", "shell", owners);
    let spec = p.spec.as_mut().unwrap();
    spec.node_name = Some("node-1".into());
    spec.containers[0].env = Some(vec![typed(serde_json::json!(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": secret}
    ))]);
    spec.containers[0].args = Some(vec![format!("--password={secret}")]);
    api.seed(&p);
    api.seed::<k8s_openapi::api::core::v1::Node>(&typed(serde_json::json!({
        "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
        "spec": {},
        "status": {"nodeInfo": {
            "architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "containerd://1.7.0",
            "kernelVersion": "6.1.0", "kubeProxyVersion": "", "kubeletVersion": "v1.37.0",
            "machineID": "m", "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12",
            "systemUUID": "u",
        }},
    })));
    api.seed::<k8s_openapi::api::core::v1::Secret>(&typed(serde_json::json!({
        "metadata": {"name": "aws", "namespace": "default"},
        "stringData": {"secret": secret},
    })));
    for (name, pod_name, reason) in [
        ("kubecon.1", "kubecon", "Started"),
        ("other.1", "other", "Pulled"),
    ] {
        api.seed::<k8s_openapi::api::core::v1::Event>(&typed(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": pod_name},
            "reason": reason, "message": format!("{reason} container app"), "type": "Normal",
            "firstTimestamp": "2023-05-25T13:40:00Z", "lastTimestamp": "2023-05-25T13:40:00Z",
            "count": 1, "source": {"component": "kubelet"},
        })));
    }
    let log: String = (1..=5)
        .map(|i| format!("line {i}\n"))
        .chain(std::iter::once(format!(
            "export AWS_SECRET_ACCESS_KEY={secret}\n"
        )))
        .collect();
    api.set_logs("default", "kubecon", &log);
}

/// The Events Firebreak recorded (reason `FirebreakRemediation`), as JSON.
async fn firebreak_events(api: &KubeApi) -> Vec<k8s_openapi::api::core::v1::Event> {
    let events: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::all(api.client());
    events
        .list(&kube::api::ListParams::default().fields("reason=FirebreakRemediation"))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn capture_evidence_keeps_a_redacted_bundle_of_the_falco_pod_and_writes_nothing() {
    let api = KubeApi::start().await;
    let secret = fake_secret();
    seed_kubecon(&api, vec![], &secret);
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_SHELL);
    let set = playbooks("kubernetes.capture-evidence", "{tail_lines: 3}");

    let planned = step(&set, &ctx, &finding, true).await;
    assert_eq!(planned.status, StepStatus::Planned, "{planned:#?}");
    let plan = planned.plan.unwrap();
    assert!(!plan.reversible);
    assert!(plan.summary.contains("last 3 line(s)"), "{}", plan.summary);
    assert_eq!(plan.changes[0].op, "create");

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.unwrap();
    let evidence = &outcome.detail["evidence"];
    let bundle = &evidence["bundle"];
    assert_eq!(
        evidence["sha256"],
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                firebreak::action::canonical_json(bundle).as_bytes()
            ))
        ),
        "the outcome names the bundle by the hash of its content"
    );
    assert_eq!(bundle["pod"]["metadata"]["name"], "kubecon");
    assert_eq!(
        bundle["pod"]["spec"]["containers"][0]["env"][0]["value"],
        "[REDACTED]"
    );
    let log = bundle["logs"]["app"]["current"]["text"].as_str().unwrap();
    assert!(log.starts_with("line 4\nline 5\n"), "tail_lines 3: {log}");
    assert!(log.contains("AWS_SECRET_ACCESS_KEY=[REDACTED]"), "{log}");
    let events = bundle["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only the pod's own Events: {events:#?}");
    assert_eq!(events[0]["reason"], "Started");
    assert_eq!(bundle["node"]["nodeInfo"]["kubeletVersion"], "v1.37.0");
    let all = serde_json::to_string(&outcome).unwrap();
    assert!(
        !all.contains(&secret),
        "the credential leaked into the outcome"
    );
    assert_eq!(api.writes(), 0, "capturing evidence writes nothing");

    let second = step(&set, &ctx, &finding, false).await;
    assert_eq!(second.status, StepStatus::Applied);
    assert_eq!(api.writes(), 0, "a second capture writes nothing either");
    action("kubernetes.capture-evidence")
        .unwrap()
        .rollback(&ctx, &outcome)
        .await
        .unwrap();
    assert_eq!(api.writes(), 0);
}

#[tokio::test]
async fn delete_pod_keeps_evidence_then_deletes_and_a_second_apply_is_a_noop() {
    let api = KubeApi::start().await;
    seed_deployment_chain(&api, 2);
    let (ns, name) = ("openfaas-fn", "falco-pod-delete-7dc9f5fbb8-gbfk7");
    api.set_logs(ns, name, "GET /api/v1/namespaces 200\n");
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_K8S_API);
    let set = playbooks("kubernetes.delete-pod", "{grace_period_seconds: 0}");

    let planned = step(&set, &ctx, &finding, true).await;
    let plan = planned.plan.unwrap();
    assert_eq!(api.writes(), 0, "a plan writes nothing");
    assert!(!plan.reversible);
    assert!(
        plan.summary
            .contains("ReplicaSet falco-pod-delete-7dc9f5fbb8 recreates it"),
        "{}",
        plan.summary
    );
    assert_eq!(
        plan.changes
            .iter()
            .map(|c| c.op.as_str())
            .collect::<Vec<_>>(),
        ["create", "delete"]
    );

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.unwrap();
    assert_eq!(outcome.result, "applied");
    assert!(api.get::<Pod>(ns, name).is_none(), "the pod is deleted");
    assert_eq!(
        outcome.detail["evidence"]["bundle"]["logs"]["app"]["current"]["text"],
        "GET /api/v1/namespaces 200\n",
        "the log was kept before the pod went"
    );
    let events = firebreak_events(&api).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].involved_object.name.as_deref(), Some(name));
    assert_eq!(
        events[0]
            .source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("firebreak")
    );
    assert!(
        events[0]
            .message
            .as_deref()
            .unwrap()
            .contains(outcome.detail["evidence"]["sha256"].as_str().unwrap())
    );

    let writes = api.writes();
    let second = step(&set, &ctx, &finding, false).await;
    assert_eq!(second.status, StepStatus::Applied, "{second:#?}");
    assert!(second.plan.unwrap().noop);
    assert_eq!(second.outcome.unwrap().result, "unchanged");
    assert_eq!(api.writes(), writes, "a second apply writes nothing");
}

#[tokio::test]
async fn delete_pod_with_a_grace_period_leaves_it_terminating_and_does_not_delete_twice() {
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_SHELL);
    let set = playbooks("kubernetes.delete-pod", "{}");
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let p = api.get::<Pod>("default", "kubecon").unwrap();
    assert!(p.metadata.deletion_timestamp.is_some(), "Terminating");
    let writes = api.writes();
    let second = step(&set, &ctx, &finding, false).await;
    assert!(
        second.plan.unwrap().noop,
        "a terminating pod is not deleted again"
    );
    assert_eq!(api.writes(), writes);
}

#[tokio::test]
async fn delete_pod_refuses_a_statefulset_pod_unless_allowed() {
    let api = KubeApi::start().await;
    let sts = api.seed(&k8s_openapi::api::apps::v1::StatefulSet {
        metadata: meta("default", "db", "db"),
        spec: k8s_openapi::api::apps::v1::StatefulSetSpec {
            selector: selector("db"),
            template: template("db"),
            ..Default::default()
        },
        ..Default::default()
    });
    seed_kubecon(
        &api,
        vec![owner("StatefulSet", "apps/v1", &sts)],
        &fake_secret(),
    );
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_SHELL);
    let refused = step(
        &set_delete("{grace_period_seconds: 0}"),
        &ctx,
        &finding,
        false,
    )
    .await;
    assert_eq!(refused.status, StepStatus::Failed, "{refused:#?}");
    let error = refused.error.unwrap();
    assert!(error.contains("owned by StatefulSet db"), "{error}");
    assert!(error.contains("same name and volumes"), "{error}");
    assert!(
        error.contains("allow_owner_kinds: [StatefulSet]"),
        "{error}"
    );
    assert_eq!(api.writes(), 0);
    assert!(api.get::<Pod>("default", "kubecon").is_some());

    let allowed = step(
        &set_delete("{grace_period_seconds: 0, allow_owner_kinds: [StatefulSet]}"),
        &ctx,
        &finding,
        false,
    )
    .await;
    assert_eq!(allowed.status, StepStatus::Applied, "{allowed:#?}");
    assert!(api.get::<Pod>("default", "kubecon").is_none());
}

fn set_delete(with: &str) -> Arc<PlaybookSet> {
    playbooks("kubernetes.delete-pod", with)
}

#[tokio::test]
async fn label_and_annotate_set_and_remove_keys_and_rollback_restores_them() {
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_SHELL);
    let set = playbooks(
        "kubernetes.label",
        "{set: {firebreak.dev/quarantined: \"true\"}, remove: [app]}",
    );
    let planned = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert_eq!(api.writes(), 0);
    assert_eq!(planned.target, "k8s:/default/Pod/kubecon/");
    assert_eq!(planned.changes.len(), 2, "{:#?}", planned.changes);
    let applied = step(&set, &ctx, &finding, false).await;
    let outcome = applied.outcome.unwrap();
    let labels = api
        .get::<Pod>("default", "kubecon")
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(
        labels.get("firebreak.dev/quarantined").map(String::as_str),
        Some("true")
    );
    assert!(!labels.contains_key("app"));
    let writes = api.writes();
    let second = step(&set, &ctx, &finding, false).await;
    assert_eq!(second.outcome.unwrap().result, "unchanged");
    assert_eq!(api.writes(), writes, "a second apply writes nothing");
    action("kubernetes.label")
        .unwrap()
        .rollback(&ctx, &outcome)
        .await
        .unwrap();
    let labels = api
        .get::<Pod>("default", "kubecon")
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(labels.get("app").map(String::as_str), Some("shell"));
    assert!(!labels.contains_key("firebreak.dev/quarantined"));

    let set = playbooks(
        "kubernetes.annotate",
        "{set: {firebreak.dev/incident: \"shell in container, see #sec\"}}",
    );
    let outcome = step(&set, &ctx, &finding, false).await.outcome.unwrap();
    let note = |api: &KubeApi| {
        api.get::<Pod>("default", "kubecon")
            .unwrap()
            .metadata
            .annotations
            .and_then(|a| a.get("firebreak.dev/incident").cloned())
    };
    assert_eq!(note(&api).as_deref(), Some("shell in container, see #sec"));
    action("kubernetes.annotate")
        .unwrap()
        .rollback(&ctx, &outcome)
        .await
        .unwrap();
    assert_eq!(note(&api), None);
}

fn node(api: &KubeApi) -> k8s_openapi::api::core::v1::Node {
    api.get("", "node-1").unwrap()
}

#[tokio::test]
async fn cordon_node_cordons_the_pods_node_and_rollback_uncordons_only_what_it_cordoned() {
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    let ctx = ctx(&api);
    let finding = fixtures::finding(FALCO_SHELL);
    let set = playbooks("kubernetes.cordon-node", "{}");
    let planned = step(&set, &ctx, &finding, true).await.plan.unwrap();
    assert_eq!(api.writes(), 0);
    assert!(
        planned.summary.contains("runs pod default/kubecon"),
        "{}",
        planned.summary
    );
    let outcome = step(&set, &ctx, &finding, false).await.outcome.unwrap();
    assert_eq!(node(&api).spec.unwrap().unschedulable, Some(true));
    let writes = api.writes();
    let second = step(&set, &ctx, &finding, false).await;
    assert!(second.plan.unwrap().noop);
    assert_eq!(api.writes(), writes, "a second apply writes nothing");
    let cordon = action("kubernetes.cordon-node").unwrap();
    cordon.rollback(&ctx, &outcome).await.unwrap();
    assert_ne!(node(&api).spec.unwrap().unschedulable, Some(true));

    // Cordoned by someone else: a no-op, and its rollback leaves the node cordoned.
    let mut n = node(&api);
    n.spec.get_or_insert_default().unschedulable = Some(true);
    api.seed(&n);
    let by_them = step(&set, &ctx, &finding, false).await.outcome.unwrap();
    assert_eq!(by_them.result, "unchanged");
    cordon.rollback(&ctx, &by_them).await.unwrap();
    assert_eq!(node(&api).spec.unwrap().unschedulable, Some(true));
}

/// kube-hunter `KHV029` "Dashboard Exposed". No real report with it is among the fixtures, so
/// it is derived from the real report (`kube-hunter/kube-hunter-report.json`): its first
/// vulnerability, with only the fields that differ for KHV029 changed, as kube-hunter's
/// `DashboardExposed` and its `KubeDashboard` hunter ("Dashboard Hunting") report them.
fn dashboard_finding() -> Finding {
    let bytes = dashboard_report();
    let parsed = firebreak::finding::parse_input(
        "kube-hunter-khv029.json",
        &bytes,
        firebreak::finding::ParserChoice::Auto,
    );
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_eq!(parsed.findings.len(), 1);
    parsed.findings.into_iter().next().unwrap()
}

/// The derived KHV029 report (see [`dashboard_finding`]).
pub(crate) fn dashboard_report() -> Vec<u8> {
    let mut report: Value =
        serde_json::from_slice(&fixtures::bytes("kube-hunter/kube-hunter-report.json")).unwrap();
    let mut v = report["vulnerabilities"][0].clone();
    v["location"] = "10.0.1.1:30443".into();
    v["vid"] = "KHV029".into();
    v["category"] = "Initial Access // Exposed sensitive interfaces".into();
    v["severity"] = "high".into();
    v["vulnerability"] = "Dashboard Exposed".into();
    v["description"] = "All operations on the cluster are exposed".into();
    v["evidence"] = "nodes: node-1".into();
    v["avd_reference"] = "https://avd.aquasec.com/kube-hunter/khv029/".into();
    v["hunter"] = "Dashboard Hunting".into();
    report["vulnerabilities"] = Value::Array(vec![v]);
    serde_json::to_vec(&report).unwrap()
}

const DASH: &str = "kubernetes-dashboard";
const OAUTH: &str = "{auth: {mode: oauth2-proxy, auth_url: \"https://$host/oauth2/auth\", auth_signin: \"https://$host/oauth2/start?rd=$escaped_request_uri\"}}";

/// The Dashboard as its recommended manifest installs it, made insecure: a NodePort Service,
/// skip-login arguments, an Ingress without auth, and its ServiceAccount bound to
/// cluster-admin (plus a binding of another ServiceAccount that must stay).
pub(crate) fn seed_dashboard(api: &KubeApi, secret: &str) {
    api.seed::<k8s_openapi::api::core::v1::Namespace>(&typed(
        serde_json::json!({"metadata": {"name": DASH}}),
    ));
    api.seed::<k8s_openapi::api::core::v1::Service>(&typed(serde_json::json!({
        "metadata": {"name": DASH, "namespace": DASH, "labels": {"k8s-app": DASH}},
        "spec": {
            "type": "NodePort",
            "selector": {"k8s-app": DASH},
            "ports": [{"port": 443, "targetPort": 8443, "nodePort": 30443, "protocol": "TCP"}],
            "externalTrafficPolicy": "Cluster",
        },
    })));
    api.seed::<Deployment>(&typed(serde_json::json!({
        "metadata": {"name": DASH, "namespace": DASH, "labels": {"k8s-app": DASH}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"k8s-app": DASH}},
            "template": {
                "metadata": {"labels": {"k8s-app": DASH}},
                "spec": {
                    "serviceAccountName": DASH,
                    "containers": [{
                        "name": DASH,
                        "image": "kubernetesui/dashboard:v2.7.0",
                        "args": ["--auto-generate-certificates", "--namespace=kubernetes-dashboard",
                                 "--enable-skip-login", "--disable-settings-authorizer",
                                 format!("--password={secret}")],
                        "env": [{"name": "DB_PASSWORD", "value": secret}],
                    }],
                },
            },
        },
    })));
    api.seed::<k8s_openapi::api::networking::v1::Ingress>(&typed(serde_json::json!({
        "metadata": {"name": "dashboard", "namespace": DASH},
        "spec": {"rules": [{"host": "dash.example.com", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": DASH, "port": {"number": 443}}},
        }]}}]},
    })));
    for (name, sa) in [("kubernetes-dashboard-admin", DASH), ("ops-admin", "ops")] {
        api.seed::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(&typed(serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": DASH}],
        })));
    }
    api.seed::<k8s_openapi::api::core::v1::Secret>(&typed(serde_json::json!({
        "metadata": {"name": "dashboard-csrf", "namespace": DASH},
        "stringData": {"csrf": secret},
    })));
}

pub(crate) fn dash_service(api: &KubeApi) -> Value {
    serde_json::to_value(
        api.get::<k8s_openapi::api::core::v1::Service>(DASH, DASH)
            .unwrap(),
    )
    .unwrap()
}

pub(crate) fn dash_args(api: &KubeApi) -> Vec<String> {
    api.get::<Deployment>(DASH, DASH)
        .unwrap()
        .spec
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap()
}

fn dash_ingress_annotations(api: &KubeApi) -> BTreeMap<String, String> {
    api.get::<k8s_openapi::api::networking::v1::Ingress>(DASH, "dashboard")
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
}

pub(crate) fn binding(
    api: &KubeApi,
    name: &str,
) -> Option<k8s_openapi::api::rbac::v1::ClusterRoleBinding> {
    api.get("", name)
}

#[tokio::test]
async fn secure_dashboard_closes_a_kube_hunter_exposed_dashboard_and_rollback_restores_it() {
    let api = KubeApi::start().await;
    let secret = fake_secret();
    seed_dashboard(&api, &secret);
    let ctx = ctx(&api);
    let finding = dashboard_finding();
    assert_eq!(finding.class.to_string(), "exposed-dashboard");
    let set = playbook_yaml(
        "{class: [exposed-dashboard]}",
        "kubernetes.secure-dashboard",
        OAUTH,
    );

    let planned = step(&set, &ctx, &finding, true).await;
    assert_eq!(planned.status, StepStatus::Planned, "{planned:#?}");
    let plan = planned.plan.unwrap();
    assert_eq!(api.writes(), 0, "a plan writes nothing");
    assert_eq!(
        plan.target,
        "k8s:10.0.1.1/kubernetes-dashboard/Service/kubernetes-dashboard/"
    );
    let paths: Vec<&str> = plan.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(plan.changes.len(), 7, "{paths:#?}");
    let svc = &plan.changes[0];
    assert_eq!(svc.from.as_ref().unwrap()["type"], "NodePort");
    assert_eq!(svc.to.as_ref().unwrap()["type"], "ClusterIP");
    assert!(
        svc.to.as_ref().unwrap()["ports"][0]
            .get("nodePort")
            .is_none()
    );
    let args = &plan.changes[2];
    assert_eq!(
        args.to.as_ref().unwrap(),
        &serde_json::json!([
            "--auto-generate-certificates",
            "--namespace=kubernetes-dashboard",
            "--password=[REDACTED]"
        ]),
        "the plan shows the arguments kept, the credential among them masked"
    );
    assert!(
        paths.contains(
            &"rbac.authorization.k8s.io/v1/clusterrolebindings/kubernetes-dashboard-admin"
        ),
        "{paths:#?}"
    );
    assert!(!paths.iter().any(|p| p.contains("ops-admin")));

    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let outcome = applied.outcome.unwrap();
    let svc = dash_service(&api);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(svc["spec"]["ports"][0].get("nodePort").is_none());
    assert!(svc["spec"].get("externalTrafficPolicy").is_none());
    assert!(
        svc["metadata"]["annotations"]["firebreak.dev/previous-exposure"]
            .as_str()
            .unwrap()
            .contains("NodePort"),
        "the spec before is kept on the Service"
    );
    assert_eq!(
        dash_args(&api),
        [
            "--auto-generate-certificates".to_owned(),
            "--namespace=kubernetes-dashboard".to_owned(),
            format!("--password={secret}"),
        ],
        "the insecure arguments are gone, the others kept exactly"
    );
    let a = dash_ingress_annotations(&api);
    assert_eq!(
        a.get("nginx.ingress.kubernetes.io/auth-url")
            .map(String::as_str),
        Some("https://$host/oauth2/auth")
    );
    assert!(a.contains_key("nginx.ingress.kubernetes.io/auth-signin"));
    assert!(binding(&api, "kubernetes-dashboard-admin").is_none());
    assert!(binding(&api, "ops-admin").is_some(), "other bindings stay");
    let kinds: Vec<String> = firebreak_events(&api)
        .await
        .iter()
        .filter_map(|e| e.involved_object.kind.clone())
        .collect();
    for kind in ["Service", "Deployment", "Ingress"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "an Event on the {kind}: {kinds:?}"
        );
    }

    let writes = api.writes();
    let second = step(&set, &ctx, &finding, false).await;
    assert!(second.plan.unwrap().noop, "secured already");
    assert_eq!(second.outcome.unwrap().result, "unchanged");
    assert_eq!(api.writes(), writes, "a second apply writes nothing");

    action("kubernetes.secure-dashboard")
        .unwrap()
        .rollback(&ctx, &outcome)
        .await
        .unwrap();
    let svc = dash_service(&api);
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30443);
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
    assert!(
        svc["metadata"]["annotations"]
            .get("firebreak.dev/previous-exposure")
            .is_none()
    );
    assert_eq!(dash_args(&api).len(), 5);
    assert_eq!(
        dash_args(&api)[4],
        format!("--password={secret}"),
        "restored exactly, not as the scrubbed copy"
    );
    let a = dash_ingress_annotations(&api);
    assert!(
        !a.keys()
            .any(|k| k.starts_with("nginx.ingress.kubernetes.io/auth")),
        "{a:?}"
    );
    assert!(!a.contains_key("firebreak.dev/previous-exposure"));
    assert!(
        binding(&api, "kubernetes-dashboard-admin").is_some(),
        "binding recreated"
    );
}

#[tokio::test]
async fn secure_dashboard_basic_auth_annotates_the_ingress_for_ingress_nginx() {
    let api = KubeApi::start().await;
    seed_dashboard(&api, &fake_secret());
    let ctx = ctx(&api);
    let set = playbook_yaml(
        "{class: [exposed-dashboard]}",
        "kubernetes.secure-dashboard",
        "{auth: {mode: basic, secret: dashboard-htpasswd}, remove_cluster_admin_bindings: false}",
    );
    let applied = step(&set, &ctx, &dashboard_finding(), false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    let a = dash_ingress_annotations(&api);
    assert_eq!(a["nginx.ingress.kubernetes.io/auth-type"], "basic");
    assert_eq!(
        a["nginx.ingress.kubernetes.io/auth-secret"],
        "dashboard-htpasswd"
    );
    assert_eq!(
        a["nginx.ingress.kubernetes.io/auth-realm"],
        "Authentication Required"
    );
    assert!(
        binding(&api, "kubernetes-dashboard-admin").is_some(),
        "left as asked"
    );
}

#[tokio::test]
async fn secure_dashboard_without_auth_says_the_ingress_stays_open() {
    let api = KubeApi::start().await;
    seed_dashboard(&api, &fake_secret());
    let ctx = ctx(&api);
    let set = playbook_yaml(
        "{class: [exposed-dashboard]}",
        "kubernetes.secure-dashboard",
        "{}",
    );
    let plan = step(&set, &ctx, &dashboard_finding(), true)
        .await
        .plan
        .unwrap();
    assert!(
        plan.summary
            .contains("Ingress dashboard still serves it without authentication"),
        "{}",
        plan.summary
    );
}

/// The finding and `with:` each Kubernetes action is exercised with in the conformance test.
fn conformance_case(kind: &str) -> (Finding, Value) {
    let with = match kind {
        "kubernetes.secure-dashboard" => return (dashboard_finding(), serde_json::json!({})),
        "kubernetes.label" | "kubernetes.annotate" => {
            serde_json::json!({"set": {"firebreak.dev/quarantined": "true"}})
        }
        "kubernetes.delete-pod" => serde_json::json!({"grace_period_seconds": 0}),
        _ => serde_json::json!({}),
    };
    (fixtures::finding(FALCO_K8S_API), with)
}

/// Every `kubernetes.*` action in the registry, against an emulator seeded with a credential
/// (in a Secret, a pod's environment, its arguments and its log): planning writes nothing,
/// neither the plan (JSON, and as `firebreak run` prints it) nor the outcome holds the
/// credential, and a second apply writes nothing.
#[tokio::test]
async fn conformance_every_kubernetes_action_plans_without_writes_or_secrets() {
    let secret = fake_secret();
    let kinds: Vec<&str> = firebreak::action::ACTIONS
        .iter()
        .map(|a| a.kind())
        .filter(|k| k.starts_with("kubernetes."))
        .collect();
    assert!(kinds.len() >= 8, "{kinds:?}");
    for kind in kinds {
        let api = KubeApi::start().await;
        seed_deployment_chain(&api, 2);
        let (ns, name) = ("openfaas-fn", "falco-pod-delete-7dc9f5fbb8-gbfk7");
        let mut p: Pod = api.get(ns, name).unwrap();
        let spec = p.spec.as_mut().unwrap();
        spec.node_name = Some("node-1".into());
        spec.containers[0].env = Some(vec![typed(
            serde_json::json!({"name": "AWS_SECRET_ACCESS_KEY", "value": secret}),
        )]);
        api.seed(&p);
        api.set_logs(ns, name, &format!("aws_secret_access_key={secret}\n"));
        seed_kubecon(&api, vec![], &secret);
        seed_dashboard(&api, &secret);
        let ctx = ctx(&api);
        let (finding, with) = conformance_case(kind);
        let act = action(kind).unwrap();
        assert!(
            act.validate(&with).is_empty(),
            "{kind}: {:?}",
            act.validate(&with)
        );
        let input = StepInput {
            finding: &finding,
            playbook: "conformance",
            step: 0,
            params: &with,
            execution: None,
        };
        let plan = act
            .plan(&ctx, input)
            .await
            .unwrap_or_else(|e| panic!("{kind}: plan failed: {e}"));
        assert_eq!(api.writes(), 0, "{kind}: the plan wrote to the cluster");
        let json = serde_json::to_string(&plan).unwrap();
        let mut text = format!("plan: {}\n", plan.summary);
        for c in &plan.changes {
            text.push_str(&format!("{} {} {:?} {:?}\n", c.op, c.path, c.from, c.to));
        }
        for rendered in [&json, &text, &format!("{plan:?}")] {
            assert!(
                !rendered.contains(&secret),
                "{kind}: the plan shows the credential: {rendered}"
            );
        }
        assert!(
            !plan.permissions.is_empty(),
            "{kind} declares its permissions"
        );
        let outcome = act
            .apply(&ctx, input, &plan)
            .await
            .unwrap_or_else(|e| panic!("{kind}: apply failed: {e}"));
        assert!(
            !serde_json::to_string(&outcome).unwrap().contains(&secret),
            "{kind}: the outcome holds the credential"
        );
        if plan
            .changes
            .iter()
            .any(|c| c.op != "create" || !c.path.starts_with("evidence"))
        {
            assert!(
                !firebreak_events(&api).await.is_empty(),
                "{kind}: a mutating apply records a FirebreakRemediation Event"
            );
        }
        let writes = api.writes();
        let again = act.plan(&ctx, input).await.unwrap();
        let second = act.apply(&ctx, input, &again).await.unwrap();
        assert_eq!(
            api.writes(),
            writes,
            "{kind}: a second apply wrote ({})",
            second.result
        );
    }
}

fn shipped() -> Arc<PlaybookSet> {
    Arc::new(
        firebreak::playbook::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks")))
            .unwrap_or_else(|e| panic!("{e:#?}")),
    )
}

fn matching(set: &PlaybookSet, f: &Finding) -> Vec<String> {
    let mut names: Vec<String> = set
        .evaluate(f)
        .iter()
        .map(|e| e.playbook.name.clone())
        .collect();
    names.sort();
    names
}

/// Every leaked credential reaches a person: an AWS key whose id the scanner gave is rotated
/// (and that playbook notifies), one it redacted, a private key or another vendor's token is
/// alerted, and none gets both.
#[test]
fn leaked_credentials_are_rotated_when_they_can_be_and_alerted_otherwise() {
    let set = shipped();
    let rotated = fixtures::findings("trufflehog/trufflehog-v3-git-aws-canary.jsonl");
    assert!(!rotated.is_empty());
    for f in &rotated {
        assert_eq!(matching(&set, f), ["rotate-exposed-aws-key"], "{}", f.rule);
    }
    for rel in [
        "gitleaks/gitleaks-v8-report-aws-access-token.json",
        "gitleaks/gitleaks-v7-report-aws-access-key-redacted.json",
        "trivy/trivy-secret-aws-access-key-id.json",
        "github/secret_scanning_alert-reopened.json",
    ] {
        let found = fixtures::findings(rel);
        assert!(!found.is_empty(), "{rel}");
        for f in &found {
            assert_eq!(
                matching(&set, f),
                ["alert-leaked-credential"],
                "{rel}: {}",
                f.rule
            );
        }
    }
}

/// Falco's "Detect outbound connections to common miner pool ports". No real alert of that rule
/// is among the fixtures, so it is derived from the real `Terminal shell in container` alert
/// (same pod, same format), changing only the fields that differ for that rule.
fn falco_miner_finding() -> Finding {
    let bytes = falco_miner_alert();
    let parsed = firebreak::finding::parse_input(
        "falco-miner.json",
        &bytes,
        firebreak::finding::ParserChoice::Auto,
    );
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    parsed.findings.into_iter().next().unwrap()
}

/// The Falco alert behind [`falco_miner_finding`], as the bytes Falco writes.
pub(crate) fn falco_miner_alert() -> Vec<u8> {
    let mut alert: Value = serde_json::from_slice(&fixtures::bytes(FALCO_SHELL)).unwrap();
    alert["rule"] = "Detect outbound connections to common miner pool ports".into();
    alert["priority"] = "Critical".into();
    alert["tags"] = serde_json::json!(["container", "host", "mitre_impact", "network", "T1496"]);
    alert["output"] = "13:44:05.478445995: Critical Outbound connection to IP/Port flagged by https://cryptoioc.ch (ip=203.0.113.7 port=3333 k8s.ns=default k8s.pod=kubecon container=ee97d9c4186f image=docker.io/library/alpine)".into();
    serde_json::to_vec(&alert).unwrap()
}

#[test]
fn shipped_playbooks_pair_each_alert_with_its_containment_and_only_where_it_can_act() {
    let set = shipped();
    assert_eq!(
        matching(&set, &falco_miner_finding()),
        ["alert-cryptomining", "stop-cryptominer"]
    );
    // GuardDuty's BitcoinTool on an EC2 instance: no pod to stop, only the alert.
    assert_eq!(
        matching(
            &set,
            &fixtures::finding(
                "securityhub/guardduty-origin-asff-cryptocurrency-bitcointool-b-dns.json"
            )
        ),
        ["alert-cryptomining"]
    );
    assert_eq!(
        matching(&set, &fixtures::finding(FALCO_SHELL)),
        ["alert-runtime-threat", "isolate-runtime-threat"]
    );
    assert_eq!(
        matching(&set, &dashboard_finding()),
        ["secure-exposed-dashboard"]
    );
    let isolate = set
        .playbooks()
        .iter()
        .find(|p| p.name == "isolate-runtime-threat")
        .unwrap();
    assert!(
        !matches!(isolate.approval, firebreak::playbook::ApprovalSpec::None),
        "isolating a pod waits for a person"
    );
}

#[tokio::test]
async fn stop_cryptominer_keeps_evidence_isolates_the_pod_then_scales_the_miners_deployment_to_zero()
 {
    let api = KubeApi::start().await;
    let owners = seed_workload(&api, "default", "miner", "miner-5d8f", 3);
    seed_kubecon(&api, owners, &fake_secret());
    let ctx = ctx(&api);
    let set = shipped();
    let opts = RunOptions {
        retry_base: std::time::Duration::from_millis(1),
        ..RunOptions::default()
    };
    let report = run(&set, &ctx, &[falco_miner_finding()], &opts, &|| {})
        .await
        .unwrap();
    let stop = report
        .executions
        .iter()
        .find(|e| e.playbook == "stop-cryptominer")
        .unwrap();
    // Evidence first, then the pod cut off the network, then its Deployment scaled to zero: the
    // pod stops talking at once, while it terminates.
    let steps: Vec<(&str, StepStatus)> = stop
        .steps
        .iter()
        .map(|s| (s.action.as_str(), s.status))
        .collect();
    assert_eq!(
        steps[..3],
        [
            ("kubernetes.capture-evidence", StepStatus::Applied),
            ("kubernetes.isolate-pod", StepStatus::Applied),
            ("kubernetes.scale-to-zero", StepStatus::Applied),
        ],
        "{stop:#?}"
    );
    assert!(
        stop.steps[0].outcome.as_ref().unwrap().detail["evidence"]["sha256"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    // The policy denies all ingress and egress of the pod, and selects the label put on that
    // pod only (not the workload's `app: miner`): a replica started later is not isolated.
    let spec = policy(&api).unwrap().spec.unwrap();
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    assert!(spec.ingress.is_none() && spec.egress.is_none());
    let selects = spec.pod_selector.unwrap().match_labels.unwrap();
    assert_eq!(selects.keys().collect::<Vec<_>>(), [ISOLATED]);
    assert_eq!(Some(&selects[ISOLATED]), isolated_label(&api).as_ref());
    assert_eq!(
        api.get::<Deployment>("default", "miner")
            .unwrap()
            .spec
            .replicas,
        Some(0)
    );
}

/// The security team's webhook, as the shipped playbooks name it (`endpoint: security`).
fn with_security(mut ctx: ActionCtx, rx: &Receiver) -> ActionCtx {
    ctx.webhooks = Arc::new(BTreeMap::from([(
        "security".to_owned(),
        WebhookEndpoint {
            url: Redacted::new(rx.url("/security")),
        },
    )]));
    ctx
}

fn dashboard_steps(report: &RunReport) -> Vec<(String, StepStatus)> {
    report
        .executions
        .iter()
        .find(|e| e.playbook == "secure-exposed-dashboard")
        .unwrap()
        .steps
        .iter()
        .map(|s| (s.action.clone(), s.status))
        .collect()
}

/// The shipped secure-exposed-dashboard also proposes its fix to the GitOps repository (the
/// Tesla replay shows that pull request); where that cannot happen, the Dashboard is closed and
/// the team told all the same: without GitHub access the step is only planned, and with a
/// repository that does not hold the manifest it fails and nothing is written there.
#[tokio::test]
async fn secure_exposed_dashboard_closes_the_dashboard_and_tells_the_team_whatever_becomes_of_its_pull_request()
 {
    let actions = [
        "kubernetes.secure-dashboard",
        "github.open-pull-request",
        "notify.webhook",
    ];
    let rx = Receiver::start().await;

    // No GitHub access.
    let api = KubeApi::start().await;
    seed_dashboard(&api, &fake_secret());
    let without = with_security(ctx(&api), &rx);
    let report = run(
        &shipped(),
        &without,
        &[dashboard_finding()],
        &RunOptions::default(),
        &|| {},
    )
    .await
    .unwrap();
    let statuses = [
        StepStatus::Applied,
        StepStatus::PlannedOnly,
        StepStatus::Applied,
    ];
    let want: Vec<(String, StepStatus)> = actions
        .iter()
        .map(|a| (*a).to_owned())
        .zip(statuses)
        .collect();
    assert_eq!(dashboard_steps(&report), want, "{report:#?}");
    assert_eq!(dash_service(&api)["spec"]["type"], "ClusterIP");
    assert_eq!(rx.requests().len(), 1);

    // GitHub access, but the manifests repository does not hold the Service's manifest.
    let api = KubeApi::start().await;
    seed_dashboard(&api, &fake_secret());
    let gh = GithubApi::start().await;
    gh.add_org("org");
    gh.create_repo("org", "deploy", "main", &[("README.md", "# deploy\n")]);
    let github = GitHub::load(&GithubConfig {
        base_url: gh.base.clone(),
        token: Some(Redacted::new(gh.user_token("firebreak-bot"))),
        ..GithubConfig::default()
    })
    .await
    .unwrap()
    .unwrap();
    let with = with_security(ctx(&api), &rx).with_github(github);
    let report = run(
        &shipped(),
        &with,
        &[dashboard_finding()],
        &RunOptions::default(),
        &|| {},
    )
    .await
    .unwrap();
    let statuses = [StepStatus::Applied, StepStatus::Failed, StepStatus::Applied];
    let want: Vec<(String, StepStatus)> = actions
        .iter()
        .map(|a| (*a).to_owned())
        .zip(statuses)
        .collect();
    assert_eq!(dashboard_steps(&report), want, "{report:#?}");
    assert_eq!(dash_service(&api)["spec"]["type"], "ClusterIP");
    assert_eq!(rx.requests().len(), 2);
    assert!(gh.pulls("org", "deploy").is_empty());
    assert_eq!(gh.branches("org", "deploy"), ["main"]);
}

#[tokio::test]
async fn isolate_runtime_threat_is_held_for_approval_and_changes_nothing() {
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    let ctx = ctx(&api);
    let report = run(
        &shipped(),
        &ctx,
        &[fixtures::finding(FALCO_SHELL)],
        &RunOptions::default(),
        &|| {},
    )
    .await
    .unwrap();
    assert!(
        report
            .executions
            .iter()
            .all(|e| e.playbook != "isolate-runtime-threat"),
        "{report:#?}"
    );
    let isolate = report
        .not_acted
        .iter()
        .find(|e| e.playbook == "isolate-runtime-threat")
        .unwrap();
    assert!(
        isolate
            .reason
            .starts_with("approval required: 1 approval(s) of plan sha256:"),
        "{isolate:#?}"
    );
    assert!(policy(&api).is_none(), "nothing isolated before approval");
    // The report says why nothing was applied, and who must approve.
    let asks = isolate.approval.as_deref().unwrap_or_default();
    assert!(
        asks.contains("@org/security") && asks.contains("org/infra") && asks.contains("4h"),
        "{asks}"
    );
}

#[tokio::test]
async fn the_service_keeps_the_evidence_bundle_in_the_store_and_the_audit_trail_names_it() {
    use firebreak::engine::worker::{Round, Worker, WorkerOptions};
    use firebreak::store::sqlite::SqliteStore;
    use firebreak::store::{AuditQuery, IngestBatch, Store};

    let api = KubeApi::start().await;
    let secret = fake_secret();
    seed_kubecon(&api, vec![], &secret);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap(),
    );
    store
        .record(
            IngestBatch {
                intake: "test".into(),
                findings: vec![fixtures::finding(FALCO_SHELL)],
                ..IngestBatch::default()
            },
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    let set = Arc::new(RwLock::new(playbooks("kubernetes.capture-evidence", "{}")));
    let worker = Worker::new(
        Arc::clone(&store),
        set,
        ctx(&api),
        WorkerOptions {
            owner: "w1".into(),
            ..WorkerOptions::default()
        },
    );
    while worker.round().await.unwrap() != Round::default() {}

    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let applied = audit
        .iter()
        .find(|a| a.kind == "step.applied")
        .expect("the step is audited");
    let reference = &applied.detail["outcome"]["detail"]["evidence"];
    let sha256 = reference["sha256"].as_str().unwrap();
    assert!(
        reference.get("bundle").is_none(),
        "the audit line holds the reference only"
    );
    let bundle = store
        .evidence(sha256)
        .await
        .unwrap()
        .expect("the bundle is stored under the hash the audit names");
    assert_eq!(bundle["pod"]["metadata"]["name"], "kubecon");
    assert_eq!(
        sha256,
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                firebreak::action::canonical_json(&bundle).as_bytes()
            ))
        ),
        "the stored bundle is the one the hash names"
    );
    let everything = serde_json::to_string(&audit).unwrap() + &bundle.to_string();
    assert!(
        !everything.contains(&secret),
        "the credential reached the ledger"
    );
    assert!(store.audit_verify().await.unwrap().problems.is_empty());

    // A person reads the bundle back by the digest the audit names; an unknown digest is a
    // clear failure.
    let url = format!("sqlite://{}", dir.path().join("l.db").display());
    let cli = |digest: String| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
                .args(["audit", "evidence", &digest])
                .env("FIREBREAK_STORE__URL", url)
                .env("NO_COLOR", "1")
                .output()
                .unwrap()
        })
    };
    let shown = cli(sha256.to_owned()).await.unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let printed: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(printed, bundle);
    let missing = cli(format!("sha256:{}", "0".repeat(64))).await.unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no evidence bundle"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn an_event_the_cluster_refuses_does_not_fail_the_change() {
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    api.forbid_writes("events");
    let ctx = ctx(&api);
    let set = playbooks("kubernetes.isolate-pod", "{}");
    let applied = step(&set, &ctx, &fixtures::finding(FALCO_SHELL), false).await;
    assert_eq!(applied.status, StepStatus::Applied, "{applied:#?}");
    assert_eq!(applied.outcome.unwrap().result, "applied");
    assert!(policy(&api).is_some(), "the pod is isolated");
    assert!(firebreak_events(&api).await.is_empty());
}

/// The rendered plans of every `kubernetes.*` action as `firebreak run --dry-run` prints them
/// (text and `--format json`), against an emulator seeded with a credential: no credential in
/// either, and the dry-run writes nothing to the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cli_dry_run_renders_kubernetes_plans_without_secrets_or_writes() {
    let secret = fake_secret();
    let api = KubeApi::start().await;
    seed_deployment_chain(&api, 2);
    let (ns, name) = ("openfaas-fn", "falco-pod-delete-7dc9f5fbb8-gbfk7");
    let mut p: Pod = api.get(ns, name).unwrap();
    let spec = p.spec.as_mut().unwrap();
    spec.node_name = Some("node-1".into());
    spec.containers[0].env = Some(vec![typed(
        serde_json::json!({"name": "AWS_SECRET_ACCESS_KEY", "value": secret}),
    )]);
    spec.containers[0].args = Some(vec![format!("--password={secret}")]);
    api.seed(&p);
    seed_kubecon(&api, vec![], &secret);
    seed_dashboard(&api, &secret);
    let dir = tempfile::tempdir().unwrap();
    let finding_file = |rel: &str| fixtures::path(rel).display().to_string();
    let dashboard = dir.path().join("khv029.json");
    std::fs::write(&dashboard, dashboard_report()).unwrap();
    let kinds: Vec<&str> = firebreak::action::ACTIONS
        .iter()
        .map(|a| a.kind())
        .filter(|k| k.starts_with("kubernetes."))
        .collect();
    for kind in kinds {
        let (_, with) = conformance_case(kind);
        let (finding, matcher) = if kind == "kubernetes.secure-dashboard" {
            (
                dashboard.display().to_string(),
                "{class: [exposed-dashboard]}",
            )
        } else {
            (finding_file(FALCO_K8S_API), "{source: [falco]}")
        };
        let pdir = dir.path().join(kind);
        std::fs::create_dir_all(&pdir).unwrap();
        std::fs::write(
            pdir.join("p.yaml"),
            format!("name: conformance\nmatch: {matcher}\nsteps:\n  - action: {kind}\n    with: {with}\n"),
        )
        .unwrap();
        for format in ["table", "json"] {
            let args: Vec<String> = [
                "run",
                "--dry-run",
                "--no-store",
                "--format",
                format,
                "--playbooks",
                &pdir.display().to_string(),
                "--finding",
                &finding,
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let base = api.base.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
                    .args(&args)
                    .env_clear()
                    .env("FIREBREAK_KUBERNETES__URL", base)
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{kind} {format}: {stdout}\n{stderr}");
            assert!(
                stdout.contains(kind),
                "{kind} {format}: no plan printed: {stdout}"
            );
            assert!(
                !stdout.contains("NOT CONNECTED"),
                "{kind} {format}: the dry-run did not reach the emulator: {stdout}"
            );
            for shown in [&stdout, &stderr] {
                assert!(
                    !shown.contains(&secret),
                    "{kind} {format}: the credential is shown: {shown}"
                );
            }
        }
        assert_eq!(api.writes(), 0, "{kind}: the dry-run wrote to the cluster");
    }
}

#[tokio::test]
async fn secure_dashboard_and_delete_pod_refuse_to_apply_a_plan_the_cluster_moved_away_from() {
    let api = KubeApi::start().await;
    seed_dashboard(&api, &fake_secret());
    seed_kubecon(&api, vec![], &fake_secret());
    let ctx = ctx(&api);
    let dash = dashboard_finding();
    let with = serde_json::json!({});
    let input = StepInput {
        finding: &dash,
        playbook: "contain",
        step: 0,
        params: &with,
        execution: None,
    };
    let secure = action("kubernetes.secure-dashboard").unwrap();
    let plan = secure.plan(&ctx, input).await.unwrap();
    let mut svc: k8s_openapi::api::core::v1::Service = api.get(DASH, DASH).unwrap();
    svc.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
    api.seed(&svc);
    let err = secure.apply(&ctx, input, &plan).await.unwrap_err();
    assert!(matches!(err, ActionError::Drift(_)), "{err:?}");
    assert_eq!(api.writes(), 0);

    let shell = fixtures::finding(FALCO_SHELL);
    let with = serde_json::json!({"grace_period_seconds": 0});
    let input = StepInput {
        finding: &shell,
        playbook: "contain",
        step: 0,
        params: &with,
        execution: None,
    };
    let delete = action("kubernetes.delete-pod").unwrap();
    let plan = delete.plan(&ctx, input).await.unwrap();
    // The pod is replaced by another of the same name (a new uid).
    let old: Pod = api.get("default", "kubecon").unwrap();
    let inner: kube::Api<Pod> = kube::Api::namespaced(api.client(), "default");
    inner
        .delete(
            "kubecon",
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut again = old.clone();
    again.metadata.uid = None;
    again.metadata.resource_version = None;
    inner
        .create(&kube::api::PostParams::default(), &again)
        .await
        .unwrap();
    let writes = api.writes();
    let err = delete.apply(&ctx, input, &plan).await.unwrap_err();
    assert!(matches!(err, ActionError::Drift(_)), "{err:?}");
    assert_eq!(api.writes(), writes, "the new pod is not deleted");
    assert!(api.get::<Pod>("default", "kubecon").is_some());
}

/// A worker on a fresh durable store with one Falco finding, running `yaml`.
async fn engine_on(
    api: &KubeApi,
    yaml: &str,
) -> (
    tempfile::TempDir,
    Arc<firebreak::store::sqlite::SqliteStore>,
    firebreak::engine::worker::Worker<firebreak::store::sqlite::SqliteStore>,
) {
    use firebreak::engine::worker::{Worker, WorkerOptions};
    use firebreak::store::sqlite::SqliteStore;
    use firebreak::store::{IngestBatch, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap(),
    );
    store
        .record(
            IngestBatch {
                intake: "test".into(),
                findings: vec![fixtures::finding(FALCO_SHELL)],
                ..IngestBatch::default()
            },
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    let (pb, _) = load_str(Path::new("g.yaml"), yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    let set = Arc::new(RwLock::new(Arc::new(PlaybookSet::new(vec![pb]))));
    let worker = Worker::new(
        Arc::clone(&store),
        set,
        ctx(api),
        WorkerOptions {
            owner: "w1".into(),
            ..WorkerOptions::default()
        },
    );
    (dir, store, worker)
}

#[tokio::test]
async fn guards_count_and_the_engine_locks_every_resource_a_plan_changes() {
    use firebreak::engine::worker::Round;
    use firebreak::store::{AuditQuery, Store};
    const POLICY: &str = "k8s:/default/NetworkPolicy/firebreak-isolate-kubecon/";
    let isolate = |limit: u32| {
        format!(
            "name: isolate\nmatch: {{source: [falco]}}\nguards: {{max_targets_per_hour: {limit}}}\nsteps:\n  - action: kubernetes.isolate-pod\n"
        )
    };

    // Isolating one pod changes two resources (the pod's label and a NetworkPolicy): a blast
    // radius of one target holds it, although the finding names one pod.
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    let (_d, store, w) = engine_on(&api, &isolate(1)).await;
    while w.round().await.unwrap() != Round::default() {}
    assert!(policy(&api).is_none(), "held: nothing isolated");
    assert_eq!(api.writes(), 0);
    let pending = store.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("blast radius")),
        "{pending:?}"
    );

    // The NetworkPolicy is locked by another execution: the step waits for it, then acts.
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    let (_d, store, w) = engine_on(&api, &isolate(2)).await;
    assert!(
        store
            .lock_target(POLICY, "other-engine", "other-execution", HOUR)
            .await
            .unwrap()
    );
    while w.round().await.unwrap() != Round::default() {}
    assert!(
        policy(&api).is_none(),
        "waits while another holds the policy"
    );
    store.unlock_target(POLICY, "other-engine").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    while w.round().await.unwrap() != Round::default() {}
    assert!(policy(&api).is_some(), "acts once the lock is free");
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.last().unwrap().detail["state"], "applied");
    let acted: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|a| a.kind == "step.applied")
        .map(|a| &a.detail["outcome"]["target"])
        .collect();
    assert_eq!(acted, ["k8s:/default/Pod/kubecon/"]);
}

#[tokio::test]
async fn a_plan_that_drifted_after_its_approval_is_not_applied_and_is_asked_again() {
    use crate::support::approvals::approve_plan;
    use firebreak::engine::worker::Round;
    use firebreak::store::{AuditQuery, Store};
    let api = KubeApi::start().await;
    seed_kubecon(&api, vec![], &fake_secret());
    let yaml = "name: isolate\nmatch: {source: [falco]}\napproval: {github: {repo: org/infra, reviewers: [alice]}}\nsteps:\n  - action: kubernetes.isolate-pod\n";
    let (_d, store, w) = engine_on(&api, yaml).await;
    while w.round().await.unwrap() != Round::default() {}
    let id = store.pending_approvals().await.unwrap()[0]
        .execution_id
        .clone();
    let approved = approve_plan(&*store, &id).await;

    // Between the approval and the apply, someone isolates the pod by hand with another
    // policy spec: the plan is no longer the one approved.
    api.seed(&NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("firebreak-isolate-kubecon".into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        ..NetworkPolicy::default()
    });
    let writes = api.writes();
    while w.round().await.unwrap() != Round::default() {}
    assert_eq!(api.writes(), writes, "a drifted plan is not applied");
    let req = store.approval(&id).await.unwrap().unwrap();
    assert_eq!(req.state, "pending", "asked again");
    assert_eq!(req.revision, 2);
    assert_ne!(req.request.plan_hash, approved);
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    let drifted = audit.iter().find(|a| a.kind == "approval.drifted").unwrap();
    assert_eq!(drifted.detail["approved_plan_hash"], approved);

    // The new plan, approved, is applied.
    approve_plan(&*store, &id).await;
    while w.round().await.unwrap() != Round::default() {}
    let audit = store.audit_list(AuditQuery::default()).await.unwrap();
    assert_eq!(audit.last().unwrap().detail["state"], "applied");
    assert!(isolated_label(&api).is_some());
}
