//! `kubernetes.isolate-pod`: cuts a pod off the network, leaving it running for forensics.
//!
//! Creates the NetworkPolicy `firebreak-isolate-<pod>` selecting the label
//! `firebreak.dev/isolated=<value>` with policyTypes Ingress and Egress and no rules (deny all),
//! then labels the pod. The value is derived from the pod's uid: the same for every execution on
//! that pod, and different per pod, so one pod's forensic allowances never apply to another
//! isolated pod. `with: {allow_egress_cidrs, allow_namespaces}` opens egress to address ranges
//! and both directions to pods of the named namespaces (forensic tooling). The policy is
//! created before the label, so the pod is isolated the moment it is selected.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    EVENTS_CREATE, PodRef, connected, connection, kube_error, not_connected_plan, object_key,
    record_event, render_problems, undo_of,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};

/// The label that puts a pod under its isolation policy.
pub const ISOLATED_LABEL: &str = "firebreak.dev/isolated";
/// Marks the policies Firebreak owns (rollback deletes only those).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "firebreak");

/// `kubernetes.isolate-pod`.
pub struct KubernetesIsolatePod;

/// `with:` parameters.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Egress still allowed to these CIDRs (an evidence store, a forensics host).
    #[serde(default)]
    allow_egress_cidrs: Vec<String>,
    /// Namespaces whose pods may still reach the pod and be reached by it.
    #[serde(default)]
    allow_namespaces: Vec<String>,
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u8>().is_ok_and(|p| p <= max)
}

/// A DNS-1123 label, as namespace names are.
fn valid_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check(p: &Params) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    for (i, c) in p.allow_egress_cidrs.iter().enumerate() {
        if !valid_cidr(c) {
            problems.push(ParamProblem {
                path: format!("allow_egress_cidrs[{i}]"),
                message: format!("`{c}` is not a CIDR"),
                hint: Some("write an address range such as 10.0.42.0/24 or 2001:db8::/64".into()),
            });
        }
    }
    for (i, n) in p.allow_namespaces.iter().enumerate() {
        if !valid_namespace(n) {
            problems.push(ParamProblem {
                path: format!("allow_namespaces[{i}]"),
                message: format!("`{n}` is not a namespace name"),
                hint: Some(
                    "namespace names are lowercase letters, digits and `-` (at most 63)".into(),
                ),
            });
        }
    }
    problems
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    let p = typed_params::<Params>(input.params)
        .map_err(|p| ActionError::Permanent(render_problems(&p)))?;
    let problems = check(&p);
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(ActionError::Permanent(render_problems(&problems)))
    }
}

/// The label value for a pod: stable per pod uid.
fn label_value(uid: &str) -> String {
    hex::encode(&Sha256::digest(uid.as_bytes())[..8])
}

/// `firebreak-isolate-<pod>`, shortened with a hash when the name would pass 253 characters.
fn policy_name(pod: &str) -> String {
    let name = format!("firebreak-isolate-{pod}");
    if name.len() <= 253 {
        return name;
    }
    let hash = hex::encode(&Sha256::digest(pod.as_bytes())[..8]);
    let mut head = name;
    head.truncate(253 - 17);
    format!("{}-{hash}", head.trim_end_matches(['-', '.']))
}

fn desired_spec(value: &str, p: &Params) -> NetworkPolicySpec {
    let namespaces: Vec<NetworkPolicyPeer> = p
        .allow_namespaces
        .iter()
        .map(|n| NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    n.clone(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    let mut egress_peers: Vec<NetworkPolicyPeer> = p
        .allow_egress_cidrs
        .iter()
        .map(|c| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: c.clone(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    egress_peers.extend(namespaces.iter().cloned());
    NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                ISOLATED_LABEL.to_owned(),
                value.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
        ingress: (!namespaces.is_empty()).then(|| {
            vec![NetworkPolicyIngressRule {
                from: Some(namespaces),
                ports: None,
            }]
        }),
        egress: (!egress_peers.is_empty()).then(|| {
            vec![NetworkPolicyEgressRule {
                to: Some(egress_peers),
                ports: None,
            }]
        }),
    }
}

/// The live state the action depends on.
#[derive(Debug, Clone, PartialEq)]
struct Live {
    uid: String,
    label: Option<String>,
    /// The policy's spec as JSON, when the policy exists.
    policy: Option<Value>,
    policy_version: Option<String>,
}

impl Live {
    fn observed(&self, pod: &PodRef, policy: &str) -> Value {
        json!({
            "pod": {"namespace": pod.namespace, "name": pod.name, "uid": self.uid, "label": self.label},
            "policy": {"name": policy, "spec": self.policy},
        })
    }
}

async fn read(client: &kube::Client, pod: &PodRef, policy: &str) -> Result<Live, ActionError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let p = pods
        .get_opt(&pod.name)
        .await
        .map_err(|e| kube_error(&format!("reading pod {}", pod.shown()), e))?
        .ok_or_else(|| ActionError::NotApplicable(format!("pod {} does not exist", pod.shown())))?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &pod.namespace);
    let np = policies
        .get_opt(policy)
        .await
        .map_err(|e| kube_error(&format!("reading NetworkPolicy {policy}"), e))?;
    Ok(Live {
        uid: p.metadata.uid.clone().unwrap_or_default(),
        label: p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ISOLATED_LABEL).cloned()),
        policy: np
            .as_ref()
            .map(|n| serde_json::to_value(&n.spec).unwrap_or_default()),
        policy_version: np.and_then(|n| n.metadata.resource_version),
    })
}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    namespace: String,
    pod: String,
    pod_uid: String,
    policy: String,
    label: String,
}

impl Action for KubernetesIsolatePod {
    fn kind(&self) -> &'static str {
        "kubernetes.isolate-pod"
    }

    fn summary(&self) -> &'static str {
        "label a pod and deny all its ingress and egress with a NetworkPolicy (it keeps running)"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("kubernetes", "core/pods:get"),
            Permission::new("kubernetes", "core/pods:patch"),
            Permission::new("kubernetes", "networking.k8s.io/networkpolicies:get"),
            Permission::new("kubernetes", "networking.k8s.io/networkpolicies:create"),
            Permission::new("kubernetes", "networking.k8s.io/networkpolicies:update"),
            Permission::new("kubernetes", "networking.k8s.io/networkpolicies:delete"),
            EVENTS_CREATE,
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "# optional, for forensics; without them all ingress and egress is denied\nallow_egress_cidrs: [10.0.42.0/24]\nallow_namespaces: [forensics]\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        match typed_params::<Params>(params) {
            Ok(p) => check(&p),
            Err(problems) => problems,
        }
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let params = params_of(&input)?;
            let pod = PodRef::of(input.finding)?;
            let target = object_key(pod.cluster.as_deref(), &pod.namespace, "Pod", &pod.name);
            let policy = policy_name(&pod.name);
            let client = match connection(ctx, pod.cluster.as_deref())? {
                Ok(c) => c,
                Err(why) => {
                    let what = format!(
                        "isolate pod {} with NetworkPolicy {policy} (deny all ingress and egress)",
                        pod.shown()
                    );
                    return Ok(not_connected_plan(self, target, &what, &why));
                }
            };
            let live = read(&client, &pod, &policy).await?;
            let value = label_value(&live.uid);
            let spec = serde_json::to_value(desired_spec(&value, &params)).unwrap_or_default();
            let mut changes = Vec::new();
            let policy_path = format!(
                "networking.k8s.io/v1/namespaces/{}/networkpolicies/{policy}",
                pod.namespace
            );
            if live.policy.as_ref() != Some(&spec) {
                changes.push(Change {
                    op: if live.policy.is_some() {
                        "update"
                    } else {
                        "create"
                    }
                    .into(),
                    path: policy_path,
                    from: live.policy.clone(),
                    to: Some(spec.clone()),
                });
            }
            if live.label.as_deref() != Some(value.as_str()) {
                changes.push(Change {
                    op: "update".into(),
                    path: format!(
                        "v1/namespaces/{}/pods/{}: metadata.labels[{ISOLATED_LABEL}]",
                        pod.namespace, pod.name
                    ),
                    from: live.label.clone().map(Value::String),
                    to: Some(Value::String(value.clone())),
                });
            }
            let noop = changes.is_empty();
            let summary = if noop {
                format!(
                    "pod {} is already isolated by NetworkPolicy {policy}",
                    pod.shown()
                )
            } else {
                format!(
                    "isolate pod {}: NetworkPolicy {policy} denies all ingress and egress{}, \
                     selecting the label {ISOLATED_LABEL}={value} set on the pod",
                    pod.shown(),
                    if params.allow_egress_cidrs.is_empty() && params.allow_namespaces.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " except egress to [{}] and namespaces [{}]",
                            params.allow_egress_cidrs.join(", "),
                            params.allow_namespaces.join(", ")
                        )
                    }
                )
            };
            Ok(PlanDraft {
                // The pod gets a label and the NetworkPolicy is created: both are changed.
                other_targets: vec![object_key(
                    pod.cluster.as_deref(),
                    &pod.namespace,
                    "NetworkPolicy",
                    &policy,
                )],
                target,
                summary,
                observed: live.observed(&pod, &policy),
                before: json!({"label": live.label, "policy": live.policy}),
                after: json!({"label": value, "policy": spec}),
                changes,
                noop,
            }
            .finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let params = params_of(&input)?;
            let pod = PodRef::of(input.finding)?;
            let policy = policy_name(&pod.name);
            let client = connected(ctx, pod.cluster.as_deref())?;
            let live = read(&client, &pod, &policy).await?;
            let value = label_value(&live.uid);
            let spec = desired_spec(&value, &params);
            let spec_json = serde_json::to_value(&spec).unwrap_or_default();
            let planned = &plan.observed;
            if planned["pod"]["uid"] != json!(live.uid) {
                return Err(ActionError::Drift(format!(
                    "pod {} was replaced since planning (uid {} now)",
                    pod.shown(),
                    live.uid
                )));
            }
            let policy_done = live.policy.as_ref() == Some(&spec_json);
            let label_done = live.label.as_deref() == Some(value.as_str());
            let undo = Undo {
                cluster: pod.cluster.clone(),
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                pod_uid: live.uid.clone(),
                policy: policy.clone(),
                label: value.clone(),
            };
            let outcome = |result: &str| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({"pod": pod.shown(), "policy": policy, "label": format!("{ISOLATED_LABEL}={value}")}),
                undo: serde_json::to_value(&undo).ok(),
            };
            if policy_done && label_done {
                return Ok(outcome("unchanged"));
            }
            if (!policy_done && planned["policy"]["spec"] != json!(live.policy))
                || (!label_done && planned["pod"]["label"] != json!(live.label))
            {
                return Err(ActionError::Drift(format!(
                    "the label of pod {} or NetworkPolicy {policy} changed since planning",
                    pod.shown()
                )));
            }
            let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &pod.namespace);
            if !policy_done {
                let np = NetworkPolicy {
                    metadata: ObjectMeta {
                        name: Some(policy.clone()),
                        namespace: Some(pod.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY.0.to_owned(),
                            MANAGED_BY.1.to_owned(),
                        )])),
                        resource_version: live.policy_version.clone(),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                let what = format!("writing NetworkPolicy {}/{policy}", pod.namespace);
                if live.policy.is_some() {
                    policies
                        .replace(&policy, &PostParams::default(), &np)
                        .await
                        .map_err(|e| kube_error(&what, e))?;
                } else {
                    policies
                        .create(&PostParams::default(), &np)
                        .await
                        .map_err(|e| kube_error(&what, e))?;
                }
            }
            if !label_done {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
                let patch = json!({"metadata": {"labels": {ISOLATED_LABEL: value}}});
                pods.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| kube_error(&format!("labelling pod {}", pod.shown()), e))?;
            }
            record_event(
                &client,
                &pod.involved(&live.uid),
                self.kind(),
                &format!(
                    "Firebreak isolated this pod: NetworkPolicy {policy} denies its ingress and \
                     egress (label {ISOLATED_LABEL}={value}; playbook {})",
                    input.playbook
                ),
            )
            .await;
            Ok(outcome("applied"))
        })
    }

    fn rollback<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let Some(undo) = undo_of::<Undo>(outcome)? else {
                return Ok(());
            };
            let client = connected(ctx, undo.cluster.as_deref())?;
            let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &undo.namespace);
            let what = format!("NetworkPolicy {}/{}", undo.namespace, undo.policy);
            if let Some(np) = policies
                .get_opt(&undo.policy)
                .await
                .map_err(|e| kube_error(&format!("reading {what}"), e))?
            {
                let ours = np
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MANAGED_BY.0))
                    .is_some_and(|v| v == MANAGED_BY.1);
                if !ours {
                    return Err(ActionError::Permanent(format!(
                        "{what} is not managed by Firebreak (label {}={}); not deleting it",
                        MANAGED_BY.0, MANAGED_BY.1
                    )));
                }
                match policies
                    .delete(&undo.policy, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(kube_error(&format!("deleting {what}"), e)),
                }
            }
            let pods: Api<Pod> = Api::namespaced(client, &undo.namespace);
            let shown = format!("{}/{}", undo.namespace, undo.pod);
            let Some(p) = pods
                .get_opt(&undo.pod)
                .await
                .map_err(|e| kube_error(&format!("reading pod {shown}"), e))?
            else {
                return Ok(());
            };
            let labelled = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ISOLATED_LABEL))
                .is_some_and(|v| *v == undo.label);
            if p.metadata.uid.as_deref() == Some(undo.pod_uid.as_str()) && labelled {
                let patch = json!({"metadata": {"labels": {ISOLATED_LABEL: null}}});
                pods.patch(&undo.pod, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| kube_error(&format!("unlabelling pod {shown}"), e))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_with_their_paths() {
        let p = KubernetesIsolatePod.validate(&json!({
            "allow_egress_cidrs": ["10.0.0.0/8", "10.0.0.1", "::/129"],
            "allow_namespaces": ["forensics", "Bad_NS"],
        }));
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "allow_egress_cidrs[1]",
                "allow_egress_cidrs[2]",
                "allow_namespaces[1]"
            ]
        );
        assert!(KubernetesIsolatePod.validate(&Value::Null).is_empty());
    }

    #[test]
    fn policy_names_fit_the_api_limit() {
        assert_eq!(policy_name("web-1"), "firebreak-isolate-web-1");
        assert!(policy_name(&"a".repeat(253)).len() <= 253);
        assert_eq!(label_value("uid-1"), label_value("uid-1"));
        assert_ne!(label_value("uid-1"), label_value("uid-2"));
    }
}
