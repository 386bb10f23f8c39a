//! Kubernetes containment actions against the API emulator, from real Falco findings through
//! playbooks and the engine: plans write nothing, apply changes the cluster, a second apply is
//! a no-op, rollback restores, and what cannot be scaled is refused with a way out.

use std::collections::BTreeMap;
use std::path::Path;

use firebreak::action::{ActionCtx, ActionError, Outcome, StepInput, action};
use firebreak::clients::kube::Kube;
use firebreak::config::Config;
use firebreak::engine::{RunOptions, RunReport, StepReport, StepStatus, run};
use firebreak::finding::Finding;
use firebreak::playbook::{PlaybookSet, load_str};
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::Value;

use crate::fixtures::{self, FALCO_K8S_API, FALCO_SHELL};
use crate::support::kube_api::KubeApi;

const PREVIOUS: &str = "firebreak.dev/previous-replicas";
const ISOLATED: &str = "firebreak.dev/isolated";

fn ctx(api: &KubeApi) -> ActionCtx {
    ActionCtx::from_config(&Config::default())
        .unwrap()
        .with_kube(Kube::from_url(&api.base).unwrap())
}

fn playbooks(action: &str, with: &str) -> PlaybookSet {
    let yaml = format!(
        "name: contain\nmatch: {{source: [falco]}}\nsteps:\n  - action: {action}\n    with: {with}\n"
    );
    let (pb, _) = load_str(Path::new("contain.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:#?}"));
    PlaybookSet::new(vec![pb])
}

async fn step(set: &PlaybookSet, ctx: &ActionCtx, finding: &Finding, dry_run: bool) -> StepReport {
    let opts = RunOptions {
        dry_run,
        retry_base: std::time::Duration::from_millis(1),
        ..RunOptions::default()
    };
    let report: RunReport = run(set, ctx, std::slice::from_ref(finding), &opts, &|| {}).await;
    assert_eq!(report.executions.len(), 1, "{report:#?}");
    report.executions[0].steps[0].clone()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn meta(namespace: &str, name: &str, app: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels(&[("app", app)])),
        ..ObjectMeta::default()
    }
}

fn template(app: &str) -> PodTemplateSpec {
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

fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(&[("app", app)])),
        ..LabelSelector::default()
    }
}

fn owner(kind: &str, api_version: &str, stored: &Value) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: stored["metadata"]["name"].as_str().unwrap().into(),
        uid: stored["metadata"]["uid"].as_str().unwrap().into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn pod(namespace: &str, name: &str, app: &str, owners: Vec<OwnerReference>) -> Pod {
    let mut m = meta(namespace, name, app);
    m.owner_references = (!owners.is_empty()).then_some(owners);
    Pod {
        metadata: m,
        spec: template(app).spec,
        ..Pod::default()
    }
}

/// The Deployment → ReplicaSet → Pod chain behind the Falco finding's pod
/// `openfaas-fn/falco-pod-delete-7dc9f5fbb8-gbfk7`.
fn seed_deployment_chain(api: &KubeApi, replicas: i32) {
    let (ns, app) = ("openfaas-fn", "falco-pod-delete");
    let d = api.seed(&Deployment {
        metadata: meta(ns, app, app),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(app),
            template: template(app),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    });
    let mut rs_meta = meta(ns, "falco-pod-delete-7dc9f5fbb8", app);
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
    api.seed(&pod(
        ns,
        "falco-pod-delete-7dc9f5fbb8-gbfk7",
        app,
        vec![owner("ReplicaSet", "apps/v1", &rs)],
    ));
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
async fn without_a_cluster_kubernetes_steps_plan_and_say_not_connected() {
    let ctx = ActionCtx::from_config(&Config::default()).unwrap();
    let set = playbooks("kubernetes.isolate-pod", "{}");
    let finding = fixtures::finding(FALCO_SHELL);
    let planned = step(&set, &ctx, &finding, true).await;
    let plan = planned.plan.unwrap();
    assert!(plan.summary.contains("NOT CONNECTED"), "{}", plan.summary);
    let applied = step(&set, &ctx, &finding, false).await;
    assert_eq!(applied.status, StepStatus::Failed);
    assert!(applied.error.unwrap().contains("no Kubernetes cluster"));
}

fn policy(api: &KubeApi) -> Option<NetworkPolicy> {
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
