//! `aws.iam.rotate-access-key`: replaces the finding's access key with a new one, delivered to
//! the key's consumers, and deactivates the old key.
//!
//! Apply, in order: delete undelivered keys left by an interrupted earlier attempt; make room
//! (IAM allows two keys per user: an *Inactive* other key is deleted, an active one is never
//! touched and the rotation is refused, naming it); create the new key; write it to the
//! Kubernetes Secret and/or the Secrets Manager secret of `deliver:`; check that it works
//! (STS `GetCallerIdentity` signed with it, retried while IAM propagates the new key); roll the
//! Deployments in the Secret's namespace whose pod template uses the Secret (a pod-template
//! annotation, as `kubectl rollout restart` does); deactivate the old key. Deleting the old key
//! is a separate step (`aws.iam.delete-access-key` with `after:` a grace period) so that a
//! rollback within the grace period can still reactivate it.
//!
//! Crash safety. The secret access key is returned once, when the key is created; a key whose
//! secret was not delivered is useless. Before creating, apply tags the user with the ids of the
//! keys that exist (`firebreak.io/rotation/<old key id>`), and removes the tag once the new key
//! is delivered and verified. A later attempt (plans are made again after a crash) that finds
//! the tag treats a key that is neither in it, nor the old key, nor the key the delivery target
//! holds, as an undelivered orphan: it deletes it and creates a new one. When the delivery
//! target already holds a working key of the user other than the old one, no key is created:
//! the rotation carries on from delivery.
//!
//! Secrets. The new secret lives only in memory (`Redacted`) on its way to the delivery
//! targets; plans, outcomes and errors name the new key by its id and where it went, never its
//! secret.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_iam::types::{StatusType, Tag};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{KeyRef, KeyState, check_account, key_path, key_user, list_keys, set_status};
use crate::action::aws::{client_for, connected_for, error_code, not_connected_plan, sdk_error};
use crate::action::kubernetes::{
    EVENTS_CREATE, Involved, kube_error, record_event, render_problems, undo_of,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::aws::Aws;
use crate::redact::Redacted;

/// The pod-template annotation that rolls a Deployment: when the key was delivered.
pub const ROTATED_AT: &str = "firebreak.io/rotated-at";
/// The pod-template annotation naming the key id the rolled pods get.
pub const ROTATED_KEY: &str = "firebreak.io/rotated-key";
/// Prefix of the user tag that records the keys before a rotation (see the module docs).
const BASELINE_TAG: &str = "firebreak.io/rotation/";
/// IAM's limit of access keys per user.
const MAX_KEYS: usize = 2;
/// How many times the new key is tried before the rotation gives up (IAM propagates a new key
/// within seconds).
const VERIFY_ATTEMPTS: u32 = 6;

/// `aws.iam.rotate-access-key`.
pub struct AwsIamRotateAccessKey;

/// `with:` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Where the new key goes (at least one).
    deliver: Deliver,
    /// Whether rollback also deletes the new key (its consumers then have no working key until
    /// they get the old one back).
    #[serde(default)]
    delete_new_key_on_rollback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deliver {
    #[serde(default)]
    kubernetes_secret: Option<KubeTarget>,
    #[serde(default)]
    secrets_manager: Option<SecretsManagerTarget>,
}

/// A Kubernetes Secret holding the key id and secret under two data keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubeTarget {
    namespace: String,
    name: String,
    #[serde(default = "default_id_key")]
    access_key_id_key: String,
    #[serde(default = "default_secret_key")]
    secret_access_key_key: String,
    /// Roll the Deployments in the namespace whose pod template uses the Secret.
    #[serde(default = "yes")]
    roll_workloads: bool,
}

/// A Secrets Manager secret; its value becomes `{"AccessKeyId": …, "SecretAccessKey": …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsManagerTarget {
    secret_id: String,
}

fn default_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_owned()
}

fn default_secret_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_owned()
}

fn yes() -> bool {
    true
}

fn check_params(params: &Value) -> Result<Params, Vec<ParamProblem>> {
    let p = typed_params::<Params>(params)?;
    if p.deliver.kubernetes_secret.is_none() && p.deliver.secrets_manager.is_none() {
        return Err(vec![ParamProblem {
            path: "deliver".to_owned(),
            message: "names no delivery target: the new key would reach nobody".to_owned(),
            hint: Some("set deliver.kubernetes_secret and/or deliver.secrets_manager".to_owned()),
        }]);
    }
    Ok(p)
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    check_params(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

/// A key id and its secret as a delivery target holds them.
#[derive(Debug, Clone)]
struct Held {
    id: String,
    secret: Redacted<String>,
}

/// A Deployment using the Secret, and which key its pod template was last rolled for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Workload {
    name: String,
    rotated_key: Option<String>,
}

/// The Kubernetes Secret target as read.
#[derive(Debug, Clone)]
struct KubeState {
    exists: bool,
    held: Option<Held>,
    workloads: Vec<Workload>,
}

/// The Secrets Manager target as read.
#[derive(Debug, Clone)]
struct SecretsManagerState {
    held: Option<Held>,
}

/// Everything rotation depends on, read live.
#[derive(Debug, Clone)]
struct State {
    user: String,
    keys: Vec<KeyState>,
    /// The old key's status; `None` when it no longer exists.
    old_status: Option<String>,
    /// The keys recorded before an interrupted attempt created one, if one was interrupted.
    baseline: Option<Vec<String>>,
    kube: Option<KubeState>,
    secrets_manager: Option<SecretsManagerState>,
}

impl State {
    /// The key the delivery targets already hold, if it is a key of the user other than the
    /// old one (a rotation that got as far as delivery).
    fn delivered(&self, old: &str) -> Option<&Held> {
        let held = [
            self.kube.as_ref().and_then(|k| k.held.as_ref()),
            self.secrets_manager.as_ref().and_then(|s| s.held.as_ref()),
        ];
        held.into_iter()
            .flatten()
            .find(|h| h.id != old && self.keys.iter().any(|k| k.id == h.id))
    }

    /// Keys created by an interrupted attempt whose secret was never delivered.
    fn orphans(&self, old: &str) -> Vec<String> {
        let Some(baseline) = &self.baseline else {
            return Vec::new();
        };
        let delivered = self.delivered(old).map(|h| h.id.clone());
        self.keys
            .iter()
            .filter(|k| {
                k.id != old && !baseline.contains(&k.id) && Some(&k.id) != delivered.as_ref()
            })
            .map(|k| k.id.clone())
            .collect()
    }

    /// What plans record and `apply` compares: ids and statuses, never a secret.
    fn observed(&self, old: &str) -> Value {
        json!({
            "user": self.user,
            "access_key_id": old,
            "old_status": self.old_status,
            "keys": self.keys,
            "interrupted_attempt_baseline": self.baseline,
            "kubernetes_secret": self.kube.as_ref().map(|k| json!({
                "exists": k.exists,
                "access_key_id": k.held.as_ref().map(|h| h.id.clone()),
                "workloads": k.workloads,
            })),
            "secrets_manager": self.secrets_manager.as_ref().map(|s| json!({
                "access_key_id": s.held.as_ref().map(|h| h.id.clone()),
            })),
        })
    }
}

/// What rotation will do, worked out from the state.
#[derive(Debug, Clone, Default)]
struct Steps {
    orphans: Vec<String>,
    make_room: Option<String>,
    /// `None`: a new key is created; `Some(id)`: the targets already hold key `id`.
    existing: Option<String>,
    deliver_kube: bool,
    deliver_secrets_manager: bool,
    roll: Vec<String>,
    deactivate_old: bool,
}

impl Steps {
    fn is_empty(&self) -> bool {
        self.orphans.is_empty()
            && self.make_room.is_none()
            && self.existing.is_some()
            && !self.deliver_kube
            && !self.deliver_secrets_manager
            && self.roll.is_empty()
            && !self.deactivate_old
    }
}

fn work_out(state: &State, key: &KeyRef, params: &Params) -> Result<Steps, ActionError> {
    let old = key.access_key_id.as_str();
    let existing = state.delivered(old).map(|h| h.id.clone());
    if state.old_status.is_none() && existing.is_none() {
        return Err(ActionError::NotApplicable(format!(
            "access key {old} is not a key of IAM user {} any more (deleted?), and no delivery \
             target holds a replacement; nothing to rotate",
            state.user
        )));
    }
    let orphans = state.orphans(old);
    let mut make_room = None;
    if existing.is_none() {
        let others: Vec<&KeyState> = state
            .keys
            .iter()
            .filter(|k| k.id != old && !orphans.contains(&k.id))
            .collect();
        if others.len() + 1 >= MAX_KEYS {
            match others.iter().find(|k| !k.active()) {
                Some(inactive) => make_room = Some(inactive.id.clone()),
                None => {
                    let ids: Vec<&str> = others.iter().map(|k| k.id.as_str()).collect();
                    return Err(ActionError::NotApplicable(format!(
                        "IAM user {} already has {MAX_KEYS} access keys: the exposed key {old} \
                         and the active key {}; Firebreak does not delete an active key it did \
                         not create, so there is no room for a new one. Deactivate or delete {} \
                         (after checking who uses it), then run again",
                        state.user,
                        ids.join(", "),
                        ids.join(", ")
                    )));
                }
            }
        }
    }
    let holds = |held: Option<&Held>| match (&existing, held) {
        (Some(id), Some(h)) => &h.id == id,
        _ => false,
    };
    let deliver_kube = params.deliver.kubernetes_secret.is_some()
        && !holds(state.kube.as_ref().and_then(|k| k.held.as_ref()));
    let deliver_secrets_manager = params.deliver.secrets_manager.is_some()
        && !holds(state.secrets_manager.as_ref().and_then(|s| s.held.as_ref()));
    let roll = match (&params.deliver.kubernetes_secret, &state.kube) {
        (Some(t), Some(k)) if t.roll_workloads => k
            .workloads
            .iter()
            .filter(|w| existing.is_none() || w.rotated_key != existing)
            .map(|w| w.name.clone())
            .collect(),
        _ => Vec::new(),
    };
    Ok(Steps {
        orphans,
        make_room,
        existing,
        deliver_kube,
        deliver_secrets_manager,
        roll,
        deactivate_old: state.old_status.as_deref() == Some("Active"),
    })
}

/// Whether a pod spec mounts or references the Secret `name`.
fn uses_secret(spec: &PodSpec, name: &str) -> bool {
    let volumes = spec.volumes.iter().flatten().any(|v| {
        v.secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some(name))
            || v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.secret.as_ref().is_some_and(|s| s.name == name))
            })
    });
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.env_from
                .iter()
                .flatten()
                .any(|e| e.secret_ref.as_ref().is_some_and(|s| s.name == name))
                || c.env.iter().flatten().any(|e| {
                    e.value_from
                        .as_ref()
                        .and_then(|v| v.secret_key_ref.as_ref())
                        .is_some_and(|r| r.name == name)
                })
        });
    volumes || containers
}

fn held_in(data: &BTreeMap<String, ByteString>, id_key: &str, secret_key: &str) -> Option<Held> {
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    Some(Held {
        id: text(id_key)?,
        secret: Redacted::new(text(secret_key).unwrap_or_default()),
    })
}

async fn read_kube(client: &kube::Client, t: &KubeTarget) -> Result<KubeState, ActionError> {
    let shown = format!("Secret {}/{}", t.namespace, t.name);
    let secret = Api::<Secret>::namespaced(client.clone(), &t.namespace)
        .get_opt(&t.name)
        .await
        .map_err(|e| kube_error(&format!("reading {shown}"), e))?;
    let held = secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| held_in(d, &t.access_key_id_key, &t.secret_access_key_key));
    let mut workloads = Vec::new();
    if t.roll_workloads {
        let list = Api::<Deployment>::namespaced(client.clone(), &t.namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_error(&format!("listing Deployments in {}", t.namespace), e))?;
        for d in list.items {
            let template = &d.spec.template;
            if !template
                .spec
                .as_ref()
                .is_some_and(|s| uses_secret(s, &t.name))
            {
                continue;
            }
            workloads.push(Workload {
                name: d.metadata.name.clone().unwrap_or_default(),
                rotated_key: template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.annotations.as_ref())
                    .and_then(|a| a.get(ROTATED_KEY).cloned()),
            });
        }
        workloads.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(KubeState {
        exists: secret.is_some(),
        held,
        workloads,
    })
}

async fn read_secrets_manager(
    aws: &Aws,
    t: &SecretsManagerTarget,
) -> Result<SecretsManagerState, ActionError> {
    let what = format!("reading Secrets Manager secret {}", t.secret_id);
    let sm = aws.secretsmanager();
    sm.describe_secret()
        .secret_id(&t.secret_id)
        .send()
        .await
        .map_err(|e| {
            if error_code(&e) == Some("ResourceNotFoundException") {
                ActionError::NotApplicable(format!(
                    "Secrets Manager secret {} does not exist; create it (the rotation writes \
                     its value)",
                    t.secret_id
                ))
            } else {
                sdk_error(&what, &e)
            }
        })?;
    let value = match sm.get_secret_value().secret_id(&t.secret_id).send().await {
        Ok(v) => v.secret_string().map(|s| Redacted::new(s.to_owned())),
        // A secret without a value yet.
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => None,
        Err(e) => return Err(sdk_error(&what, &e)),
    };
    let held = value.and_then(|v| {
        let doc: Value = serde_json::from_str(v.expose()).ok()?;
        Some(Held {
            id: doc["AccessKeyId"].as_str()?.to_owned(),
            secret: Redacted::new(
                doc["SecretAccessKey"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        })
    });
    Ok(SecretsManagerState { held })
}

/// The user's baseline tag of an interrupted rotation of `old`, if there is one.
async fn read_baseline(
    aws: &Aws,
    user: &str,
    old: &str,
) -> Result<Option<Vec<String>>, ActionError> {
    let tags = aws
        .iam()
        .list_user_tags()
        .user_name(user)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("reading the tags of IAM user {user}"), &e))?;
    let name = format!("{BASELINE_TAG}{old}");
    Ok(tags
        .tags()
        .iter()
        .find(|t| t.key() == name)
        .map(|t| t.value().split_whitespace().map(str::to_owned).collect()))
}

async fn read_state(
    aws: &Aws,
    key: &KeyRef,
    params: &Params,
    kube: Option<&kube::Client>,
) -> Result<State, ActionError> {
    let old = key.access_key_id.as_str();
    let Some(user) = key_user(aws, key).await? else {
        return Err(ActionError::NotApplicable(format!(
            "access key {old} does not exist in this account, so its user is unknown; name the \
             user in the finding, or rotate by hand"
        )));
    };
    let Some(keys) = list_keys(aws, &user).await? else {
        return Err(ActionError::NotApplicable(format!(
            "IAM user {user} does not exist"
        )));
    };
    let old_status = keys.iter().find(|k| k.id == old).map(|k| k.status.clone());
    let baseline = read_baseline(aws, &user, old).await?;
    let kube_state = match (&params.deliver.kubernetes_secret, kube) {
        (Some(t), Some(c)) => Some(read_kube(c, t).await?),
        (Some(_), None) => {
            return Err(ActionError::Permanent(
                "deliver.kubernetes_secret is set, but no Kubernetes cluster is configured"
                    .to_owned(),
            ));
        }
        (None, _) => None,
    };
    let sm_state = match &params.deliver.secrets_manager {
        Some(t) => Some(read_secrets_manager(aws, t).await?),
        None => None,
    };
    Ok(State {
        user,
        keys,
        old_status,
        baseline,
        kube: kube_state,
        secrets_manager: sm_state,
    })
}

/// The Kubernetes client, when the step delivers to a Secret: `Ok(Err(why))` when none is
/// connected.
fn kube_client(
    ctx: &ActionCtx,
    params: &Params,
) -> Result<Result<Option<kube::Client>, String>, ActionError> {
    if params.deliver.kubernetes_secret.is_none() {
        return Ok(Ok(None));
    }
    Ok(crate::action::kubernetes::connection(ctx, None)?.map(Some))
}

fn targets_shown(params: &Params) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = &params.deliver.kubernetes_secret {
        out.push(format!("Kubernetes Secret {}/{}", t.namespace, t.name));
    }
    if let Some(t) = &params.deliver.secrets_manager {
        out.push(format!("Secrets Manager {}", t.secret_id));
    }
    out
}

impl AwsIamRotateAccessKey {
    fn draft(key: &KeyRef, params: &Params, state: &State, steps: &Steps) -> PlanDraft {
        let old = &key.access_key_id;
        let user = &state.user;
        let new_key = steps
            .existing
            .clone()
            .unwrap_or_else(|| "(new key, created at apply)".to_owned());
        let observed = state.observed(old);
        let target = key.target();
        if steps.is_empty() {
            return PlanDraft {
                other_targets: Vec::new(),
                target,
                summary: format!(
                    "access key {old} of IAM user {user} is already rotated: {} hold key {new_key} \
                     and the old key is {}",
                    targets_shown(params).join(" and "),
                    state.old_status.as_deref().unwrap_or("deleted")
                ),
                before: json!({"old_status": state.old_status, "new_access_key_id": new_key}),
                after: json!({"old_status": state.old_status, "new_access_key_id": new_key}),
                observed,
                changes: Vec::new(),
                noop: true,
            };
        }
        let mut changes = Vec::new();
        for id in &steps.orphans {
            changes.push(Change {
                op: "delete".into(),
                path: key_path(user, id),
                from: Some(
                    json!({"reason": "created by an interrupted rotation, never delivered"}),
                ),
                to: None,
            });
        }
        if let Some(id) = &steps.make_room {
            changes.push(Change {
                op: "delete".into(),
                path: key_path(user, id),
                from: Some(json!({"status": "Inactive", "reason": "makes room for the new key"})),
                to: None,
            });
        }
        if steps.existing.is_none() {
            changes.push(Change {
                op: "create".into(),
                path: format!("iam/users/{user}/access-keys"),
                from: None,
                to: Some(json!({"access_key_id": new_key, "status": "Active"})),
            });
        }
        if steps.deliver_kube
            && let Some(t) = &params.deliver.kubernetes_secret
        {
            let from = state
                .kube
                .as_ref()
                .and_then(|k| k.held.as_ref())
                .map(|h| json!({ t.access_key_id_key.clone(): h.id }));
            changes.push(Change {
                op: if state.kube.as_ref().is_some_and(|k| k.exists) {
                    "update".into()
                } else {
                    "create".into()
                },
                path: format!(
                    "v1/namespaces/{}/secrets/{}: data[{}], data[{}]",
                    t.namespace, t.name, t.access_key_id_key, t.secret_access_key_key
                ),
                from,
                to: Some(json!({ t.access_key_id_key.clone(): new_key })),
            });
        }
        if steps.deliver_secrets_manager
            && let Some(t) = &params.deliver.secrets_manager
        {
            let from = state
                .secrets_manager
                .as_ref()
                .and_then(|s| s.held.as_ref())
                .map(|h| json!({"AccessKeyId": h.id}));
            changes.push(Change {
                op: "update".into(),
                path: format!("secretsmanager/{}: SecretString", t.secret_id),
                from,
                to: Some(json!({"AccessKeyId": new_key})),
            });
        }
        if let Some(t) = &params.deliver.kubernetes_secret {
            for name in &steps.roll {
                changes.push(Change {
                    op: "update".into(),
                    path: format!(
                        "apps/v1/namespaces/{}/deployments/{name}: \
                         spec.template.metadata.annotations[{ROTATED_KEY}]",
                        t.namespace
                    ),
                    from: None,
                    to: Some(json!(new_key)),
                });
            }
        }
        if steps.deactivate_old {
            changes.push(Change {
                op: "update".into(),
                path: format!("{}: Status", key_path(user, old)),
                from: Some(json!("Active")),
                to: Some(json!("Inactive")),
            });
        }
        let mut summary = format!(
            "rotate access key {old} of IAM user {user}: {} key {new_key}, deliver it to {}, \
             verify it works",
            if steps.existing.is_some() {
                "carry on with the already delivered"
            } else {
                "create"
            },
            targets_shown(params).join(" and "),
        );
        if !steps.roll.is_empty() {
            summary.push_str(&format!(", roll Deployment(s) {}", steps.roll.join(", ")));
        }
        if steps.deactivate_old {
            summary.push_str(
                ", then deactivate the old key (a rollback within the grace period reactivates \
                 it; the new key stays)",
            );
        }
        if let Some(id) = &steps.make_room {
            summary.push_str(&format!(
                "; first deletes the Inactive key {id} to make room"
            ));
        }
        if !steps.orphans.is_empty() {
            summary.push_str(&format!(
                "; first deletes {} left undelivered by an interrupted attempt",
                steps.orphans.join(", ")
            ));
        }
        PlanDraft {
            other_targets: Vec::new(),
            target,
            summary,
            before: json!({"old_status": state.old_status, "keys": state.keys}),
            after: json!({
                "old_status": if steps.deactivate_old { Some("Inactive") } else { state.old_status.as_deref() },
                "new_access_key_id": new_key,
                "delivered_to": targets_shown(params),
                "rolled": steps.roll,
            }),
            observed,
            changes,
            noop: false,
        }
    }
}

async fn delete_key(aws: &Aws, user: &str, id: &str) -> Result<(), ActionError> {
    match aws
        .iam()
        .delete_access_key()
        .user_name(user)
        .access_key_id(id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some("NoSuchEntity") => Ok(()),
        Err(e) => Err(sdk_error(
            &format!("deleting access key {id} of {user}"),
            &e,
        )),
    }
}

async fn tag_baseline(
    aws: &Aws,
    user: &str,
    old: &str,
    keys: &[String],
) -> Result<(), ActionError> {
    let tag = Tag::builder()
        .key(format!("{BASELINE_TAG}{old}"))
        .value(keys.join(" "))
        .build()
        .map_err(|e| ActionError::Permanent(format!("building the rotation tag: {e}")))?;
    aws.iam()
        .tag_user()
        .user_name(user)
        .tags(tag)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("tagging IAM user {user}"), &e))?;
    Ok(())
}

async fn untag_baseline(aws: &Aws, user: &str, old: &str) -> Result<(), ActionError> {
    aws.iam()
        .untag_user()
        .user_name(user)
        .tag_keys(format!("{BASELINE_TAG}{old}"))
        .send()
        .await
        .map_err(|e| sdk_error(&format!("untagging IAM user {user}"), &e))?;
    Ok(())
}

async fn create_key(aws: &Aws, user: &str) -> Result<Held, ActionError> {
    let out = aws
        .iam()
        .create_access_key()
        .user_name(user)
        .send()
        .await
        .map_err(|e| {
            let what = format!("creating an access key for IAM user {user}");
            if error_code(&e) == Some("LimitExceeded") {
                // Room was made before creating, so the key filling it is most likely one this
                // rotation created whose answer was lost (and the SDK retried): the next
                // attempt finds it through the baseline tag and deletes it.
                ActionError::Retryable(format!(
                    "{what}: the user's two keys are taken, probably by a key whose creation \
                     answer was lost; the next attempt deletes it"
                ))
            } else {
                sdk_error(&what, &e)
            }
        })?;
    let key = out.access_key().ok_or_else(|| {
        ActionError::Permanent("CreateAccessKey answered without a key".to_owned())
    })?;
    Ok(Held {
        id: key.access_key_id().to_owned(),
        secret: Redacted::new(key.secret_access_key().to_owned()),
    })
}

/// Writes the key to the Secret (creating it if needed); returns the Secret's uid.
async fn deliver_kube(
    client: &kube::Client,
    t: &KubeTarget,
    held: &Held,
) -> Result<String, ActionError> {
    let api = Api::<Secret>::namespaced(client.clone(), &t.namespace);
    let shown = format!("Secret {}/{}", t.namespace, t.name);
    let mut data = BTreeMap::new();
    data.insert(
        t.access_key_id_key.clone(),
        ByteString(held.id.as_bytes().to_vec()),
    );
    data.insert(
        t.secret_access_key_key.clone(),
        ByteString(held.secret.expose().as_bytes().to_vec()),
    );
    let exists = api
        .get_opt(&t.name)
        .await
        .map_err(|e| kube_error(&format!("reading {shown}"), e))?
        .is_some();
    let written = if exists {
        api.patch(
            &t.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "data": data })),
        )
        .await
        .map_err(|e| kube_error(&format!("writing the new key to {shown}"), e))?
    } else {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(t.name.clone()),
                namespace: Some(t.namespace.clone()),
                ..kube::api::ObjectMeta::default()
            },
            data: Some(data),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        };
        api.create(&kube::api::PostParams::default(), &secret)
            .await
            .map_err(|e| kube_error(&format!("creating {shown}"), e))?
    };
    Ok(written.metadata.uid.unwrap_or_default())
}

async fn deliver_secrets_manager(
    aws: &Aws,
    t: &SecretsManagerTarget,
    held: &Held,
) -> Result<(), ActionError> {
    let value = Redacted::new(
        json!({"AccessKeyId": held.id, "SecretAccessKey": held.secret.expose()}).to_string(),
    );
    aws.secretsmanager()
        .put_secret_value()
        .secret_id(&t.secret_id)
        .secret_string(value.expose())
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                &format!(
                    "writing the new key to Secrets Manager secret {}",
                    t.secret_id
                ),
                &e,
            )
        })?;
    Ok(())
}

/// Checks that `held` authenticates as `user` (STS `GetCallerIdentity` signed with it),
/// retrying while IAM propagates a new key.
async fn verify(aws: &Aws, user: &str, held: &Held) -> Result<(), ActionError> {
    let creds = Credentials::new(
        held.id.clone(),
        held.secret.expose().clone(),
        None,
        None,
        "firebreak-rotated-key",
    );
    let conf = aws_sdk_sts::config::Builder::from(aws.sdk_config())
        .credentials_provider(creds)
        .build();
    let sts = aws_sdk_sts::Client::from_conf(conf);
    let mut last = String::new();
    for attempt in 0..VERIFY_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match sts.get_caller_identity().send().await {
            Ok(me) => {
                let arn = me.arn().unwrap_or_default();
                if arn.ends_with(&format!("/{user}")) {
                    return Ok(());
                }
                return Err(ActionError::Permanent(format!(
                    "the new access key {} authenticates as {arn}, not as IAM user {user}",
                    held.id
                )));
            }
            Err(e) => {
                let code = error_code(&e).unwrap_or_default().to_owned();
                // Not propagated yet: retry; anything else is the SDK's verdict.
                if code != "InvalidClientTokenId" && code != "SignatureDoesNotMatch" {
                    return Err(sdk_error(
                        &format!("checking the new access key {}", held.id),
                        &e,
                    ));
                }
                last = code;
            }
        }
    }
    Err(ActionError::Retryable(format!(
        "the new access key {} was not accepted by STS after {VERIFY_ATTEMPTS} tries ({last})",
        held.id
    )))
}

/// Rolls the Deployment's pods (a pod-template annotation); returns its uid.
async fn roll(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    new_key: &str,
) -> Result<String, ActionError> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        ROTATED_AT: now, ROTATED_KEY: new_key,
    }}}}});
    let rolled = Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| kube_error(&format!("rolling Deployment {namespace}/{name}"), e))?;
    Ok(rolled.metadata.uid.unwrap_or_default())
}

/// Records a Kubernetes Event on an object the rotation changed (best-effort).
async fn event(
    client: &kube::Client,
    kind: &str,
    namespace: &str,
    name: &str,
    uid: String,
    message: &str,
) {
    let (api_version, kind) = match kind {
        "Secret" => ("v1", "Secret"),
        _ => ("apps/v1", "Deployment"),
    };
    let involved = Involved {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
        uid,
    };
    record_event(client, &involved, "aws.iam.rotate-access-key", message).await;
}

/// `e` with every occurrence of the secret masked: a peer's error text should never carry it,
/// but an error message is not where to find out that one does.
fn masked(e: ActionError, held: &Held) -> ActionError {
    let secret = held.secret.expose();
    if secret.is_empty() {
        return e;
    }
    let mask = |m: String| m.replace(secret.as_str(), crate::redact::MASK);
    match e {
        ActionError::Retryable(m) => ActionError::Retryable(mask(m)),
        ActionError::Permanent(m) => ActionError::Permanent(mask(m)),
        ActionError::Drift(m) => ActionError::Drift(mask(m)),
        ActionError::NotApplicable(m) => ActionError::NotApplicable(mask(m)),
    }
}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    /// The account the finding named (its role, if `aws.accounts` lists it, signs rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    user: String,
    old_access_key_id: String,
    new_access_key_id: String,
    #[serde(default)]
    delete_new_key: bool,
}

impl Action for AwsIamRotateAccessKey {
    fn kind(&self) -> &'static str {
        "aws.iam.rotate-access-key"
    }

    fn summary(&self) -> &'static str {
        "replace an IAM access key: create a new one, deliver it (Kubernetes Secret, Secrets \
         Manager), verify it, roll the workloads, deactivate the old one"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("aws", "sts:GetCallerIdentity"),
            Permission::new("aws", "iam:GetAccessKeyLastUsed"),
            Permission::new("aws", "iam:ListAccessKeys"),
            Permission::new("aws", "iam:CreateAccessKey"),
            Permission::new("aws", "iam:UpdateAccessKey"),
            Permission::new("aws", "iam:DeleteAccessKey"),
            Permission::new("aws", "iam:ListUserTags"),
            Permission::new("aws", "iam:TagUser"),
            Permission::new("aws", "iam:UntagUser"),
            Permission::new("aws", "secretsmanager:DescribeSecret"),
            Permission::new("aws", "secretsmanager:GetSecretValue"),
            Permission::new("aws", "secretsmanager:PutSecretValue"),
            Permission::new("kubernetes", "core/secrets:get"),
            Permission::new("kubernetes", "core/secrets:create"),
            Permission::new("kubernetes", "core/secrets:patch"),
            Permission::new("kubernetes", "apps/deployments:list"),
            Permission::new("kubernetes", "apps/deployments:patch"),
            EVENTS_CREATE,
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "deliver:\n  kubernetes_secret:\n    namespace: payments\n    name: aws-credentials\n    \
         access_key_id_key: AWS_ACCESS_KEY_ID\n    secret_access_key_key: AWS_SECRET_ACCESS_KEY\n    \
         roll_workloads: true\n  secrets_manager:\n    secret_id: payments/aws-credentials\n\
         delete_new_key_on_rollback: false\n"
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        check_params(params).err().unwrap_or_default()
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let params = params_of(&input)?;
            let key = KeyRef::of(input.finding)?;
            let what = format!(
                "rotate access key {} and deliver the new key to {}",
                key.access_key_id,
                targets_shown(&params).join(" and ")
            );
            let aws = match client_for(ctx, key.account.as_deref()).await? {
                Ok(a) => a,
                Err(why) => return Ok(not_connected_plan(self, key.target(), &what, &why)),
            };
            let aws = &aws;
            let kube = match kube_client(ctx, &params)? {
                Ok(k) => k,
                Err(why) => return Ok(not_connected_plan(self, key.target(), &what, &why)),
            };
            check_account(aws, key.account.as_deref()).await?;
            let state = read_state(aws, &key, &params, kube.as_ref()).await?;
            let steps = work_out(&state, &key, &params)?;
            Ok(Self::draft(&key, &params, &state, &steps).finish(self))
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
            let key = KeyRef::of(input.finding)?;
            let old = key.access_key_id.as_str();
            let aws = &connected_for(ctx, key.account.as_deref()).await?;
            let kube = kube_client(ctx, &params)?.map_err(|why| {
                ActionError::Permanent(format!("cannot change the cluster: {why}"))
            })?;
            check_account(aws, key.account.as_deref()).await?;
            let state = read_state(aws, &key, &params, kube.as_ref()).await?;
            if state.observed(old) != plan.observed {
                return Err(ActionError::Drift(format!(
                    "the keys of IAM user {} or the delivery targets changed since planning",
                    state.user
                )));
            }
            let steps = work_out(&state, &key, &params)?;
            let user = state.user.clone();
            let new_id = steps.existing.clone();
            if plan.noop || steps.is_empty() {
                return Ok(Outcome {
                    action: self.kind().to_owned(),
                    target: plan.target.clone(),
                    result: "unchanged".to_owned(),
                    detail: json!({
                        "user": user, "old_access_key_id": old, "new_access_key_id": new_id,
                        "old_status": state.old_status, "delivered_to": targets_shown(&params),
                    }),
                    undo: None,
                });
            }
            for id in &steps.orphans {
                delete_key(aws, &user, id).await?;
            }
            if let Some(id) = &steps.make_room {
                delete_key(aws, &user, id).await?;
            }
            let (held, created) = match state.delivered(old) {
                Some(h) => {
                    // Carry on only with a key that works; one that does not is not ours to
                    // delete (someone else may hold its right secret): say so.
                    verify(aws, &user, h).await.map_err(|e| {
                        masked(
                            ActionError::Permanent(format!(
                                "the delivery target holds access key {} of IAM user {user}, \
                                 which does not work ({e}); put a working key there, or delete \
                                 key {} if nobody uses it, then run again",
                                h.id, h.id
                            )),
                            h,
                        )
                    })?;
                    (h.clone(), false)
                }
                None => {
                    let remaining: Vec<String> = state
                        .keys
                        .iter()
                        .map(|k| k.id.clone())
                        .filter(|id| {
                            !steps.orphans.contains(id) && Some(id) != steps.make_room.as_ref()
                        })
                        .collect();
                    tag_baseline(aws, &user, old, &remaining).await?;
                    (create_key(aws, &user).await?, true)
                }
            };
            if steps.deliver_kube
                && let (Some(t), Some(c)) = (&params.deliver.kubernetes_secret, &kube)
            {
                let uid = deliver_kube(c, t, &held)
                    .await
                    .map_err(|e| masked(e, &held))?;
                let message = format!(
                    "Firebreak wrote the new access key {} of IAM user {user} here (rotation of \
                     exposed key {old})",
                    held.id
                );
                event(c, "Secret", &t.namespace, &t.name, uid, &message).await;
            }
            if steps.deliver_secrets_manager
                && let Some(t) = &params.deliver.secrets_manager
            {
                deliver_secrets_manager(aws, t, &held)
                    .await
                    .map_err(|e| masked(e, &held))?;
            }
            verify(aws, &user, &held)
                .await
                .map_err(|e| masked(e, &held))?;
            if created || state.baseline.is_some() {
                untag_baseline(aws, &user, old).await?;
            }
            if let (Some(t), Some(c)) = (&params.deliver.kubernetes_secret, &kube) {
                for name in &steps.roll {
                    let uid = roll(c, &t.namespace, name, &held.id).await?;
                    let message = format!(
                        "Firebreak rolled this Deployment so its pods read the new access key {} \
                         from Secret {} (rotation of exposed key {old})",
                        held.id, t.name
                    );
                    event(c, "Deployment", &t.namespace, name, uid, &message).await;
                }
            }
            if steps.deactivate_old {
                set_status(aws, &user, old, StatusType::Inactive).await?;
            }
            let undo = Undo {
                account: key.account.clone(),
                user: user.clone(),
                old_access_key_id: old.to_owned(),
                new_access_key_id: held.id.clone(),
                delete_new_key: params.delete_new_key_on_rollback,
            };
            Ok(Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: "applied".to_owned(),
                detail: json!({
                    "user": user,
                    "old_access_key_id": old,
                    "old_status": if steps.deactivate_old { Some("Inactive") } else { state.old_status.as_deref() },
                    "new_access_key_id": held.id,
                    "created": created,
                    "verified": true,
                    "delivered_to": targets_shown(&params),
                    "rolled": steps.roll,
                    "deleted_orphans": steps.orphans,
                    "deleted_to_make_room": steps.make_room,
                }),
                undo: serde_json::to_value(undo).ok(),
            })
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
            let aws = &connected_for(ctx, undo.account.as_deref()).await?;
            let keys = list_keys(aws, &undo.user).await?.unwrap_or_default();
            match keys.iter().find(|k| k.id == undo.old_access_key_id) {
                None => {
                    return Err(ActionError::Permanent(format!(
                        "the old access key {} of IAM user {} was deleted (the grace period is \
                         over); it cannot be reactivated. The new key {} stays",
                        undo.old_access_key_id, undo.user, undo.new_access_key_id
                    )));
                }
                Some(k) if !k.active() => {
                    set_status(aws, &undo.user, &undo.old_access_key_id, StatusType::Active)
                        .await?;
                }
                Some(_) => {}
            }
            if undo.delete_new_key {
                delete_key(aws, &undo.user, &undo.new_access_key_id).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(id: &str, status: &str) -> KeyState {
        KeyState {
            id: id.to_owned(),
            status: status.to_owned(),
        }
    }

    fn held(id: &str) -> Held {
        Held {
            id: id.to_owned(),
            secret: Redacted::new(String::new()),
        }
    }

    fn state(keys: Vec<KeyState>, baseline: Option<&[&str]>, in_secret: Option<&str>) -> State {
        State {
            user: "svc".to_owned(),
            old_status: keys
                .iter()
                .find(|k| k.id == "OLD")
                .map(|k| k.status.clone()),
            keys,
            baseline: baseline.map(|b| b.iter().map(|s| (*s).to_owned()).collect()),
            kube: Some(KubeState {
                exists: true,
                held: in_secret.map(held),
                workloads: vec![Workload {
                    name: "billing".to_owned(),
                    rotated_key: None,
                }],
            }),
            secrets_manager: None,
        }
    }

    fn params() -> Params {
        check_params(&json!({"deliver": {"kubernetes_secret": {"namespace": "p", "name": "s"}}}))
            .unwrap()
    }

    fn old_key() -> KeyRef {
        KeyRef {
            account: None,
            user: Some("svc".to_owned()),
            access_key_id: "OLD".to_owned(),
        }
    }

    #[test]
    fn a_fresh_rotation_creates_delivers_rolls_and_deactivates() {
        let s = state(vec![key("OLD", "Active")], None, Some("OLD"));
        let steps = work_out(&s, &old_key(), &params()).unwrap();
        assert_eq!(steps.existing, None);
        assert!(steps.deliver_kube && steps.deactivate_old);
        assert_eq!(steps.roll, ["billing"]);
        assert!(steps.orphans.is_empty() && steps.make_room.is_none());
    }

    #[test]
    fn an_undelivered_key_of_an_interrupted_attempt_is_an_orphan() {
        let keys = vec![key("OLD", "Active"), key("LOST", "Active")];
        let s = state(keys, Some(&["OLD"]), Some("OLD"));
        let steps = work_out(&s, &old_key(), &params()).unwrap();
        assert_eq!(steps.orphans, ["LOST"]);
        assert_eq!(steps.existing, None, "a new key is created in its place");
        assert_eq!(steps.make_room, None);
    }

    #[test]
    fn a_delivered_key_is_carried_on_with_and_never_an_orphan() {
        let keys = vec![key("OLD", "Active"), key("NEW", "Active")];
        let s = state(keys, Some(&["OLD"]), Some("NEW"));
        let steps = work_out(&s, &old_key(), &params()).unwrap();
        assert!(steps.orphans.is_empty());
        assert_eq!(steps.existing.as_deref(), Some("NEW"));
        assert!(!steps.deliver_kube, "the Secret holds it already");
        assert!(steps.deactivate_old);
    }

    #[test]
    fn without_a_baseline_an_unknown_second_key_is_never_deleted() {
        let keys = vec![key("OLD", "Active"), key("THEIRS", "Active")];
        let s = state(keys, None, Some("OLD"));
        let e = work_out(&s, &old_key(), &params()).unwrap_err();
        assert!(e.to_string().contains("the active key THEIRS"), "{e}");
        let keys = vec![key("OLD", "Active"), key("THEIRS", "Inactive")];
        let s = state(keys, None, Some("OLD"));
        let steps = work_out(&s, &old_key(), &params()).unwrap();
        assert_eq!(steps.make_room.as_deref(), Some("THEIRS"));
    }

    #[test]
    fn a_finished_rotation_has_nothing_left_to_do() {
        let keys = vec![key("OLD", "Inactive"), key("NEW", "Active")];
        let mut s = state(keys, None, Some("NEW"));
        if let Some(k) = s.kube.as_mut() {
            k.workloads[0].rotated_key = Some("NEW".to_owned());
        }
        assert!(work_out(&s, &old_key(), &params()).unwrap().is_empty());
    }

    #[test]
    fn observed_state_never_holds_a_secret() {
        let mut s = state(vec![key("OLD", "Active")], None, None);
        if let Some(k) = s.kube.as_mut() {
            k.held = Some(Held {
                id: "OLD".to_owned(),
                secret: Redacted::new("very-secret-value".to_owned()),
            });
        }
        assert!(!s.observed("OLD").to_string().contains("very-secret-value"));
    }

    #[test]
    fn an_error_never_carries_the_secret() {
        let h = Held {
            id: "NEW".to_owned(),
            secret: Redacted::new("s3cr3t-value-xyz".to_owned()),
        };
        let e = masked(
            ActionError::Permanent("peer said: s3cr3t-value-xyz is invalid".to_owned()),
            &h,
        );
        assert!(!e.to_string().contains("s3cr3t-value-xyz"), "{e}");
        assert!(e.to_string().contains("[REDACTED]"));
    }

    #[test]
    fn a_rotation_must_deliver_somewhere() {
        let problems = check_params(&json!({"deliver": {}})).unwrap_err();
        assert_eq!(problems[0].path, "deliver");
        let ok = check_params(&json!({"deliver": {"secrets_manager": {"secret_id": "x"}}}));
        assert!(ok.is_ok());
    }
}
