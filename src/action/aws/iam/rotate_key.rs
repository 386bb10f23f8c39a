//! `aws.iam.rotate-access-key`: replaces the finding's access key with a new one, delivered to
//! the key's consumers (only to them), and deactivates the old key.
//!
//! Consumers. A new key is written only where the exposed key is read from now: a Kubernetes
//! Secret whose data holds the exposed key id (decoded, under a data key such as
//! `AWS_ACCESS_KEY_ID`, with its secret under the matching key such as
//! `AWS_SECRET_ACCESS_KEY`), or the Secrets Manager secret `deliver.secrets_manager` names when
//! its value's `AccessKeyId` is the exposed key id. Secrets are searched in every namespace of
//! the cluster where the finding found the key (a pod, a Secret, an image in a workload; the
//! default cluster when it does not say), so that the Secret or the namespace it names is
//! covered; `deliver.kubernetes_secret.namespace` and `.name` narrow the search and never widen
//! it: a Secret named there that does not hold the key is not a consumer and gets nothing, and
//! a constraint that excludes where the finding found the key is refused. Every Secret found is
//! written (one left with the old key would stop working when it is deactivated), and the
//! rotation refuses, writing nothing, when it finds no consumer, when a named Secrets Manager
//! secret holds another key, or when a Secret holds the key in a form it does not rewrite
//! (inside a credentials file, say). A Secret Firebreak delivered to is annotated `firebreak.io/rotated-from: <old
//! key id>` in the same write, and a Secrets Manager value is written with a version id derived
//! from the old and new key ids, so that a later attempt (after a crash) recognises a consumer
//! it already moved to the new key.
//!
//! Apply, in order: delete undelivered keys left by an interrupted earlier attempt; make room
//! (IAM allows two keys per user: an *Inactive* other key is deleted, an active one is never
//! touched and the rotation is refused, naming it); create the new key; write it to each
//! consumer (a Secret only if it has not changed since it was read: the write carries its
//! `resourceVersion`); check that it works (STS `GetCallerIdentity` signed with it, retried
//! while IAM propagates the new key); roll the Deployments in each Secret's namespace whose pod
//! template uses the Secret (a pod-template annotation, as `kubectl rollout restart` does);
//! deactivate the old key. Deleting the old key is a separate step
//! (`aws.iam.delete-access-key` with `after:` a grace period) so that a rollback within the
//! grace period can still reactivate it.
//!
//! Crash safety. The secret access key is returned once, when the key is created; a key whose
//! secret was not delivered is useless. Before creating, apply tags the user with the ids of the
//! keys that exist (`firebreak.io/rotation/<old key id>`), and removes the tag once the new key
//! is delivered and verified. A later attempt (plans are made again after a crash) that finds
//! the tag treats a key that is neither in it, nor the old key, nor the key a consumer holds,
//! as an undelivered orphan: it deletes it and creates a new one. When a consumer already holds
//! a working key of the user other than the old one, no key is created: the rotation carries on
//! from delivery.
//!
//! Secrets. Secret values are read only to find the key id and to carry a delivered key on; the
//! new secret lives only in memory (`Redacted`) on its way to the consumers; plans, outcomes and
//! errors name keys by id and consumers by name, never a secret value.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_iam::types::{StatusType, Tag};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{KeyRef, KeyState, key_path, key_user, list_keys, set_status};
use crate::action::aws::{acting_in, error_code, not_connected_plan, sdk_error};
use crate::action::kubernetes::{
    EVENTS_CREATE, Involved, kube_error, object_key, record_event, render_problems, undo_of,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::aws::Aws;
use crate::finding::{Finding, ResourceRef};
use crate::redact::Redacted;

/// The pod-template annotation that rolls a Deployment: when the key was delivered.
pub const ROTATED_AT: &str = "firebreak.io/rotated-at";
/// The pod-template annotation naming the key id the rolled pods get (also on a Secret
/// Firebreak delivered to: the key id it wrote).
pub const ROTATED_KEY: &str = "firebreak.io/rotated-key";
/// The Secret annotation naming the exposed key id Firebreak moved the Secret off.
pub const ROTATED_FROM: &str = "firebreak.io/rotated-from";
/// Prefix of the user tag that records the keys before a rotation (see the module docs).
const BASELINE_TAG: &str = "firebreak.io/rotation/";
/// IAM's limit of access keys per user.
const MAX_KEYS: usize = 2;
/// How many times the new key is tried before the rotation gives up (IAM propagates a new key
/// within seconds).
const VERIFY_ATTEMPTS: u32 = 6;
/// Data keys of a key id and the data key of its secret beside it, as consumers spell them
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `aws_access_key_id`/`aws_secret_access_key`,
/// `AccessKeyId`/`SecretAccessKey`, `accesskey`/`secretkey`, …).
const PAIRS: &[(&str, &str)] = &[
    ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY"),
    ("access_key_id", "secret_access_key"),
    ("AccessKeyId", "SecretAccessKey"),
    ("accessKeyId", "secretAccessKey"),
    ("access-key-id", "secret-access-key"),
    ("ACCESS_KEY", "SECRET_KEY"),
    ("access_key", "secret_key"),
    ("AccessKey", "SecretKey"),
    ("accessKey", "secretKey"),
    ("accesskey", "secretkey"),
    ("access-key", "secret-key"),
];

/// `aws.iam.rotate-access-key`.
pub struct AwsIamRotateAccessKey;

/// `with:` parameters.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Where to look for the key's consumers (at least one).
    deliver: Deliver,
    /// Whether rollback also deletes the new key (its consumers then have no working key until
    /// they get the old one back).
    #[serde(default)]
    delete_new_key_on_rollback: bool,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Deliver {
    /// Kubernetes Secrets that hold the key (`{}`: wherever the finding found it, else every
    /// namespace).
    #[serde(default)]
    kubernetes_secret: Option<KubeScope>,
    /// A Secrets Manager secret, used only if it holds the key.
    #[serde(default)]
    secrets_manager: Option<SecretsManagerTarget>,
}

/// Kubernetes Secrets holding the key: found by searching, narrowed by these constraints.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct KubeScope {
    /// Only Secrets in this namespace.
    #[serde(default)]
    namespace: Option<String>,
    /// Only a Secret of this name.
    #[serde(default)]
    name: Option<String>,
    /// Only this data key counts as holding the key id (default: any).
    #[serde(default)]
    access_key_id_key: Option<String>,
    /// The data key of the secret (default: the one matching the id's data key).
    #[serde(default)]
    secret_access_key_key: Option<String>,
    /// Roll the Deployments in each Secret's namespace whose pod template uses it.
    #[serde(default = "yes")]
    roll_workloads: bool,
}

/// A Secrets Manager secret; its value is JSON with `AccessKeyId` and `SecretAccessKey`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SecretsManagerTarget {
    /// The secret's name or ARN.
    secret_id: String,
}

fn yes() -> bool {
    true
}

fn check_params(params: &Value) -> Result<Params, Vec<ParamProblem>> {
    let p = typed_params::<Params>(params)?;
    let mut problems = Vec::new();
    if p.deliver.kubernetes_secret.is_none() && p.deliver.secrets_manager.is_none() {
        problems.push(ParamProblem {
            path: "deliver".to_owned(),
            message: "names no place to look for the key's consumers: the new key would reach \
                      nobody"
                .to_owned(),
            hint: Some(
                "set deliver.kubernetes_secret: {} (the Secrets that hold the key) and/or \
                 deliver.secrets_manager"
                    .to_owned(),
            ),
        });
    }
    if let Some(k) = &p.deliver.kubernetes_secret {
        for (field, value) in [
            ("namespace", &k.namespace),
            ("name", &k.name),
            ("access_key_id_key", &k.access_key_id_key),
            ("secret_access_key_key", &k.secret_access_key_key),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                problems.push(ParamProblem {
                    path: format!("deliver.kubernetes_secret.{field}"),
                    message: "is empty".to_owned(),
                    hint: Some("leave it out to search without this constraint".to_owned()),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(problems)
    }
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    check_params(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

/// A key id and its secret as a consumer holds them.
#[derive(Debug, Clone)]
struct Held {
    id: String,
    secret: Redacted<String>,
}

/// Where the finding says the key was found in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    cluster: Option<String>,
    namespace: String,
    kind: String,
    name: String,
}

impl Location {
    /// The finding's first namespaced Kubernetes resource.
    fn of(finding: &Finding) -> Option<Self> {
        finding.resources.iter().find_map(|r| match r {
            ResourceRef::Kubernetes {
                cluster,
                namespace: Some(namespace),
                kind,
                name,
                ..
            } if !namespace.is_empty() => Some(Self {
                cluster: cluster.clone(),
                namespace: namespace.clone(),
                kind: kind.clone(),
                name: name.clone(),
            }),
            _ => None,
        })
    }

    fn shown(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Where Secrets are searched: every namespace of the finding's cluster, unless
/// `deliver.kubernetes_secret` narrows it. The finding's own location is never narrowed away:
/// a constraint that excludes where the key was found is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Scope {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Where the finding found the key, if in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    found_in: Option<String>,
}

impl Scope {
    /// The search scope, or why the finding's location and the constraints disagree.
    fn of(t: &KubeScope, location: Option<&Location>) -> Result<Self, ActionError> {
        if let Some(l) = location {
            let outside = match (&t.namespace, &t.name) {
                (Some(ns), _) if *ns != l.namespace => Some(("namespace", ns)),
                (_, Some(name)) if l.kind == "Secret" && *name != l.name => Some(("name", name)),
                _ => None,
            };
            if let Some((field, value)) = outside {
                return Err(ActionError::NotApplicable(format!(
                    "the finding found the key in {}, but this step may only deliver to {field} \
                     {value} (deliver.kubernetes_secret.{field}): where the key was found would \
                     be left with a key that stops working; rotate it by hand",
                    l.shown()
                )));
            }
        }
        Ok(Self {
            cluster: location.and_then(|l| l.cluster.clone()),
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            found_in: location.map(Location::shown),
        })
    }

    /// In words, for plans and refusals.
    fn shown(&self) -> String {
        let mut text = match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("Secret {ns}/{name}"),
            (Some(ns), None) => format!("the Secrets of namespace {ns}"),
            (None, Some(name)) => format!("the Secrets named {name} in every namespace"),
            (None, None) => "the Secrets of every namespace".to_owned(),
        };
        if let Some(c) = &self.cluster {
            text.push_str(&format!(" of cluster {c}"));
        }
        if let Some(f) = &self.found_in {
            text.push_str(&format!(" (the finding found the key in {f})"));
        }
        text
    }
}

/// A Deployment using a Secret, and which key its pod template was last rolled for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Workload {
    name: String,
    rotated_key: Option<String>,
}

/// A Kubernetes Secret that reads the key: it holds the exposed key id, or Firebreak moved it
/// off the exposed key to another key of the same user.
#[derive(Debug, Clone)]
struct KubeConsumer {
    namespace: String,
    name: String,
    /// As read; the delivery write is conditional on it.
    resource_version: Option<String>,
    id_key: String,
    secret_key: String,
    held: Held,
    /// Annotated `firebreak.io/rotated-from: <old key>`.
    moved: bool,
    workloads: Vec<Workload>,
}

impl KubeConsumer {
    fn shown(&self) -> String {
        format!("Kubernetes Secret {}/{}", self.namespace, self.name)
    }

    fn observed(&self) -> Value {
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "access_key_id_key": self.id_key,
            "secret_access_key_key": self.secret_key,
            "access_key_id": self.held.id,
            "moved_by_firebreak": self.moved,
            "workloads": self.workloads,
        })
    }
}

/// A Secret that holds the exposed key in a way Firebreak does not rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Unwritable {
    namespace: String,
    name: String,
    why: String,
}

/// The Secrets found.
#[derive(Debug, Clone)]
struct KubeState {
    scope: Scope,
    consumers: Vec<KubeConsumer>,
    unwritable: Vec<Unwritable>,
}

/// The Secrets Manager secret as read.
#[derive(Debug, Clone)]
struct SecretsManagerState {
    secret_id: String,
    /// The key its value holds.
    held: Option<Held>,
    /// Its current value, kept to rewrite only the key fields (never shown).
    value: Option<Redacted<String>>,
    /// Its current version is one Firebreak wrote when rotating the old key to `held`.
    moved: bool,
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
    fn is_users_key(&self, id: &str) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    /// The Secrets Manager secret, when it is a consumer: it holds the old key, or Firebreak
    /// moved it to another key of the user.
    fn sm_consumer<'a>(&'a self, old: &str) -> Option<&'a SecretsManagerState> {
        self.secrets_manager.as_ref().filter(|s| {
            s.held
                .as_ref()
                .is_some_and(|h| h.id == old || (s.moved && self.is_users_key(&h.id)))
        })
    }

    fn kube_consumers(&self) -> &[KubeConsumer] {
        self.kube.as_ref().map_or(&[], |k| k.consumers.as_slice())
    }

    /// What every consumer holds.
    fn helds<'a>(&'a self, old: &str) -> impl Iterator<Item = &'a Held> + 'a {
        let sm = self.sm_consumer(old).and_then(|s| s.held.as_ref());
        self.kube_consumers().iter().map(|c| &c.held).chain(sm)
    }

    /// The key a consumer already holds, if it is a key of the user other than the old one
    /// (a rotation that got as far as delivery).
    fn delivered<'a>(&'a self, old: &str) -> Option<&'a Held> {
        self.helds(old)
            .find(|h| h.id != old && self.is_users_key(&h.id))
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

    /// Every consumer, in words.
    fn consumers_shown(&self, old: &str) -> Vec<String> {
        self.kube_consumers()
            .iter()
            .map(KubeConsumer::shown)
            .chain(
                self.sm_consumer(old)
                    .map(|s| format!("Secrets Manager {}", s.secret_id)),
            )
            .collect()
    }

    /// What plans record and `apply` compares: ids, names and statuses, never a secret.
    fn observed(&self, old: &str) -> Value {
        json!({
            "user": self.user,
            "access_key_id": old,
            "old_status": self.old_status,
            "keys": self.keys,
            "interrupted_attempt_baseline": self.baseline,
            "kubernetes_secrets": self.kube.as_ref().map(|k| json!({
                "searched": k.scope,
                "consumers": k.consumers.iter().map(KubeConsumer::observed).collect::<Vec<_>>(),
                "unwritable": k.unwritable,
            })),
            "secrets_manager": self.secrets_manager.as_ref().map(|s| json!({
                "secret_id": s.secret_id,
                "access_key_id": s.held.as_ref().map(|h| h.id.clone()),
                "moved_by_firebreak": s.moved,
            })),
        })
    }
}

/// What rotation will do, worked out from the state.
#[derive(Debug, Clone, Default)]
struct Steps {
    orphans: Vec<String>,
    make_room: Option<String>,
    /// `None`: a new key is created; `Some(id)`: a consumer already holds key `id`.
    existing: Option<String>,
    /// The Secrets to write, as (namespace, name).
    deliver_kube: Vec<(String, String)>,
    deliver_secrets_manager: bool,
    /// The Deployments to roll, as (namespace, name).
    roll: Vec<(String, String)>,
    deactivate_old: bool,
}

impl Steps {
    fn is_empty(&self) -> bool {
        self.orphans.is_empty()
            && self.make_room.is_none()
            && self.existing.is_some()
            && self.deliver_kube.is_empty()
            && !self.deliver_secrets_manager
            && self.roll.is_empty()
            && !self.deactivate_old
    }
}

/// Refuses when the key's consumers cannot all be found and written: the new key would reach
/// nobody, or reach some consumers and leave others with a key about to stop working.
fn check_consumers(state: &State, old: &str) -> Result<(), ActionError> {
    let hint = "Firebreak delivers a new key only where the exposed key is read from now; rotate \
                it by hand, or say where it is read (deliver.kubernetes_secret, \
                deliver.secrets_manager)";
    if let Some(k) = &state.kube
        && !k.unwritable.is_empty()
    {
        let which: Vec<String> = k
            .unwritable
            .iter()
            .map(|u| format!("Secret {}/{} {}", u.namespace, u.name, u.why))
            .collect();
        return Err(ActionError::NotApplicable(format!(
            "access key {old} is read from a place Firebreak does not rewrite: {}; a rotation \
             would leave it with a key that stops working. Rotate it by hand",
            which.join("; ")
        )));
    }
    if let Some(s) = &state.secrets_manager
        && state.sm_consumer(old).is_none()
    {
        let holds = match &s.held {
            Some(h) => format!("holds access key {}", h.id),
            None => "holds no access key (no AccessKeyId in its value)".to_owned(),
        };
        return Err(ActionError::NotApplicable(format!(
            "Secrets Manager secret {} {holds}, not the exposed key {old}: it is not this key's \
             consumer, and deliver.secrets_manager only says where a consumer may be, never \
             where to put an unrelated key. {hint}",
            s.secret_id
        )));
    }
    if let Some(k) = &state.kube
        && k.consumers.is_empty()
        && (k.scope.name.is_some() || state.sm_consumer(old).is_none())
    {
        return Err(ActionError::NotApplicable(format!(
            "no consumer of access key {old} was found: none of {} holds it{}. {hint}",
            k.scope.shown(),
            if state.secrets_manager.is_some() {
                ""
            } else {
                " (and no Secrets Manager secret was named)"
            }
        )));
    }
    Ok(())
}

fn work_out(state: &State, key: &KeyRef) -> Result<Steps, ActionError> {
    let old = key.access_key_id.as_str();
    check_consumers(state, old)?;
    let existing = state.delivered(old).map(|h| h.id.clone());
    if state.old_status.is_none() && existing.is_none() {
        return Err(ActionError::NotApplicable(format!(
            "access key {old} is not a key of IAM user {} any more (deleted?), and no consumer \
             holds a replacement; nothing to rotate",
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
    let stale = |held: &Held| existing.as_ref() != Some(&held.id);
    let deliver_kube = state
        .kube_consumers()
        .iter()
        .filter(|c| stale(&c.held))
        .map(|c| (c.namespace.clone(), c.name.clone()))
        .collect();
    let deliver_secrets_manager = state
        .sm_consumer(old)
        .and_then(|s| s.held.as_ref())
        .is_some_and(stale);
    let mut roll: Vec<(String, String)> = Vec::new();
    for c in state.kube_consumers() {
        for w in &c.workloads {
            let due = existing.is_none() || w.rotated_key != existing;
            let entry = (c.namespace.clone(), w.name.clone());
            if due && !roll.contains(&entry) {
                roll.push(entry);
            }
        }
    }
    roll.sort();
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

/// A data value as text (Secret data is base64 on the wire; kube-rs decodes it), trimmed.
fn text_of(value: &ByteString) -> Option<String> {
    std::str::from_utf8(&value.0)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The data key of the secret beside the key id under `id_key`: the configured one, else the
/// first spelling of [`PAIRS`] that the Secret has.
fn secret_key_for(
    id_key: &str,
    configured: Option<&str>,
    data: &BTreeMap<String, ByteString>,
) -> Result<String, String> {
    if let Some(k) = configured {
        return if data.contains_key(k) {
            Ok(k.to_owned())
        } else {
            Err(format!(
                "has no data[{k}] beside data[{id_key}] for the secret (deliver.kubernetes_secret.secret_access_key_key)"
            ))
        };
    }
    let candidates: Vec<String> = PAIRS
        .iter()
        .filter(|(id, _)| id_key.contains(id))
        .map(|(id, secret)| id_key.replacen(id, secret, 1))
        .collect();
    candidates
        .iter()
        .find(|c| data.contains_key(c.as_str()))
        .cloned()
        .ok_or_else(|| {
            format!(
                "holds it under data[{id_key}] with no secret beside it (looked for {}); name the \
                 secret's data key in deliver.kubernetes_secret.secret_access_key_key",
                if candidates.is_empty() {
                    "a data key named like it".to_owned()
                } else {
                    candidates
                        .iter()
                        .map(|c| format!("data[{c}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        })
}

/// Whether (and how) a Secret reads `old`: `None` when it does not.
fn classify(
    secret: &Secret,
    old: &str,
    users_keys: &[KeyState],
    t: &KubeScope,
) -> Option<Result<KubeConsumer, Unwritable>> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let moved = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATED_FROM))
        .is_some_and(|from| from == old);
    let may_hold = |k: &str| t.access_key_id_key.as_deref().is_none_or(|want| want == k);
    let unwritable = |why: String| {
        Some(Err(Unwritable {
            namespace: namespace.clone(),
            name: name.clone(),
            why,
        }))
    };
    // The key id inside a longer value (a credentials file, a JSON document): not rewritten.
    let inside: Vec<&String> = data
        .iter()
        .filter(|(_, v)| text_of(v).is_some_and(|t| t != old && t.contains(old)))
        .map(|(k, _)| k)
        .collect();
    if !inside.is_empty() {
        return unwritable(format!(
            "holds it inside data[{}] (a credentials file or document, which Firebreak does not \
             rewrite)",
            inside
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("], data[")
        ));
    }
    let holding = |id: &dyn Fn(&str) -> bool| -> Vec<String> {
        data.iter()
            .filter(|(k, v)| may_hold(k) && text_of(v).is_some_and(|t| id(&t)))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let mut id_keys = holding(&|t| t == old);
    if id_keys.is_empty() && moved {
        id_keys = holding(&|t| t != old && users_keys.iter().any(|k| k.id == t));
    }
    match id_keys.as_slice() {
        [] => None,
        [id_key] => {
            let secret_key = match secret_key_for(id_key, t.secret_access_key_key.as_deref(), data)
            {
                Ok(k) => k,
                Err(why) => return unwritable(why),
            };
            let held = Held {
                id: data.get(id_key).and_then(text_of).unwrap_or_default(),
                secret: Redacted::new(data.get(&secret_key).and_then(text_of).unwrap_or_default()),
            };
            Some(Ok(KubeConsumer {
                namespace,
                name,
                resource_version: secret.metadata.resource_version.clone(),
                id_key: id_key.clone(),
                secret_key,
                held,
                moved,
                workloads: Vec::new(),
            }))
        }
        several => unwritable(format!(
            "holds it under more than one data key (data[{}]); name the one to rewrite in \
             deliver.kubernetes_secret.access_key_id_key",
            several.join("], data[")
        )),
    }
}

/// Finds the Secrets in `scope` that read `old`, and the Deployments using each.
async fn read_kube(
    client: &kube::Client,
    t: &KubeScope,
    scope: Scope,
    old: &str,
    users_keys: &[KeyState],
) -> Result<KubeState, ActionError> {
    let secrets: Vec<Secret> = match (&scope.namespace, &scope.name) {
        (Some(ns), Some(name)) => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| kube_error(&format!("reading Secret {ns}/{name}"), e))?
            .into_iter()
            .collect(),
        (Some(ns), None) => {
            Api::<Secret>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(|e| kube_error(&format!("listing the Secrets of namespace {ns}"), e))?
                .items
        }
        (None, name) => {
            let params = match name {
                Some(n) => ListParams::default().fields(&format!("metadata.name={n}")),
                None => ListParams::default(),
            };
            Api::<Secret>::all(client.clone())
                .list(&params)
                .await
                .map_err(|e| kube_error("listing the Secrets of every namespace", e))?
                .items
                .into_iter()
                .filter(|s| name.is_none() || s.metadata.name == *name)
                .collect()
        }
    };
    let mut consumers = Vec::new();
    let mut unwritable = Vec::new();
    for s in &secrets {
        match classify(s, old, users_keys, t) {
            Some(Ok(c)) => consumers.push(c),
            Some(Err(u)) => unwritable.push(u),
            None => {}
        }
    }
    consumers.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    unwritable.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    if t.roll_workloads {
        let namespaces: BTreeSet<String> = consumers.iter().map(|c| c.namespace.clone()).collect();
        for ns in namespaces {
            let list = Api::<Deployment>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .map_err(|e| kube_error(&format!("listing Deployments in {ns}"), e))?;
            for c in consumers.iter_mut().filter(|c| c.namespace == ns) {
                for d in &list.items {
                    let template = &d.spec.template;
                    if !template
                        .spec
                        .as_ref()
                        .is_some_and(|s| uses_secret(s, &c.name))
                    {
                        continue;
                    }
                    c.workloads.push(Workload {
                        name: d.metadata.name.clone().unwrap_or_default(),
                        rotated_key: template
                            .metadata
                            .as_ref()
                            .and_then(|m| m.annotations.as_ref())
                            .and_then(|a| a.get(ROTATED_KEY).cloned()),
                    });
                }
                c.workloads.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
    }
    Ok(KubeState {
        scope,
        consumers,
        unwritable,
    })
}

/// A Secrets Manager version id (`ClientRequestToken`) for writing `new` in place of `old`:
/// the same for every attempt, so a retried write is one version, and recognisable later.
fn delivery_token(old: &str, new: &str) -> String {
    let digest = Sha256::digest(format!("firebreak.io/rotation\0{old}\0{new}").as_bytes());
    let h = hex::encode(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

async fn read_secrets_manager(
    aws: &Aws,
    t: &SecretsManagerTarget,
    old: &str,
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
                    "Secrets Manager secret {} does not exist, so it cannot be where access key \
                     {old} is read from (deliver.secrets_manager)",
                    t.secret_id
                ))
            } else {
                sdk_error(&what, &e)
            }
        })?;
    let (value, version) = match sm.get_secret_value().secret_id(&t.secret_id).send().await {
        Ok(v) => (
            v.secret_string().map(|s| Redacted::new(s.to_owned())),
            v.version_id().map(str::to_owned),
        ),
        // A secret without a value yet.
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => (None, None),
        Err(e) => return Err(sdk_error(&what, &e)),
    };
    let held = value.as_ref().and_then(|v| {
        let doc: Value = serde_json::from_str(v.expose()).ok()?;
        Some(Held {
            id: doc["AccessKeyId"].as_str()?.trim().to_owned(),
            secret: Redacted::new(
                doc["SecretAccessKey"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        })
    });
    let moved = match (&held, &version) {
        (Some(h), Some(v)) => h.id != old && *v == delivery_token(old, &h.id),
        _ => false,
    };
    Ok(SecretsManagerState {
        secret_id: t.secret_id.clone(),
        held,
        value,
        moved,
    })
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
    location: Option<&Location>,
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
        (Some(t), Some(c)) => {
            let scope = Scope::of(t, location)?;
            Some(read_kube(c, t, scope, old, &keys).await?)
        }
        (Some(_), None) => {
            return Err(ActionError::Permanent(
                "deliver.kubernetes_secret is set, but no Kubernetes cluster is configured"
                    .to_owned(),
            ));
        }
        (None, _) => None,
    };
    let sm_state = match &params.deliver.secrets_manager {
        Some(t) => Some(read_secrets_manager(aws, t, old).await?),
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

/// The Kubernetes client, when the step looks for Secrets: the finding's cluster's, else the
/// default one; `Ok(Err(why))` when none is connected.
fn kube_client(
    ctx: &ActionCtx,
    params: &Params,
    location: Option<&Location>,
) -> Result<Result<Option<kube::Client>, String>, ActionError> {
    if params.deliver.kubernetes_secret.is_none() {
        return Ok(Ok(None));
    }
    let cluster = location.and_then(|l| l.cluster.as_deref());
    Ok(crate::action::kubernetes::connection(ctx, cluster)?.map(Some))
}

/// Where the step looks for consumers, in words (for a plan made without reading).
fn searched_shown(params: &Params, location: Option<&Location>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = &params.deliver.kubernetes_secret {
        out.push(match Scope::of(t, location) {
            Ok(scope) => format!("{} that hold it", scope.shown()),
            Err(e) => e.to_string(),
        });
    }
    if let Some(t) = &params.deliver.secrets_manager {
        out.push(format!("Secrets Manager {}, if it holds it", t.secret_id));
    }
    out
}

/// The stable keys of what the plan writes besides the key: Secrets, Deployments, the
/// Secrets Manager secret.
fn changed_targets(state: &State, steps: &Steps, account: Option<&str>) -> Vec<String> {
    let cluster = state.kube.as_ref().and_then(|k| k.scope.cluster.as_deref());
    let mut out: Vec<String> = steps
        .deliver_kube
        .iter()
        .map(|(ns, name)| object_key(cluster, ns, "Secret", name))
        .chain(
            steps
                .roll
                .iter()
                .map(|(ns, name)| object_key(cluster, ns, "Deployment", name)),
        )
        .collect();
    if steps.deliver_secrets_manager
        && let Some(s) = &state.secrets_manager
    {
        out.push(format!(
            "aws:{}:secretsmanager:secret/{}",
            account.unwrap_or_default(),
            s.secret_id
        ));
    }
    out
}

impl AwsIamRotateAccessKey {
    fn draft(key: &KeyRef, state: &State, steps: &Steps) -> PlanDraft {
        let old = &key.access_key_id;
        let user = &state.user;
        let new_key = steps
            .existing
            .clone()
            .unwrap_or_else(|| "(new key, created at apply)".to_owned());
        let observed = state.observed(old);
        let target = key.target();
        let consumers = state.consumers_shown(old);
        if steps.is_empty() {
            return PlanDraft {
                other_targets: Vec::new(),
                target,
                summary: format!(
                    "access key {old} of IAM user {user} is already rotated: {} hold key {new_key} \
                     and the old key is {}",
                    consumers.join(" and "),
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
        for c in state.kube_consumers().iter().filter(|c| {
            steps
                .deliver_kube
                .contains(&(c.namespace.clone(), c.name.clone()))
        }) {
            changes.push(Change {
                op: "update".into(),
                path: format!(
                    "v1/namespaces/{}/secrets/{}: data[{}], data[{}]",
                    c.namespace, c.name, c.id_key, c.secret_key
                ),
                from: Some(json!({ c.id_key.clone(): c.held.id })),
                to: Some(json!({ c.id_key.clone(): new_key })),
            });
        }
        if steps.deliver_secrets_manager
            && let Some(s) = state.sm_consumer(old)
        {
            changes.push(Change {
                op: "update".into(),
                path: format!("secretsmanager/{}: SecretString", s.secret_id),
                from: s.held.as_ref().map(|h| json!({"AccessKeyId": h.id})),
                to: Some(json!({"AccessKeyId": new_key})),
            });
        }
        for (ns, name) in &steps.roll {
            changes.push(Change {
                op: "update".into(),
                path: format!(
                    "apps/v1/namespaces/{ns}/deployments/{name}: \
                     spec.template.metadata.annotations[{ROTATED_KEY}]"
                ),
                from: None,
                to: Some(json!(new_key)),
            });
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
            "rotate access key {old} of IAM user {user}: {} key {new_key}, deliver it to {} \
             (where the key is read from now), verify it works",
            if steps.existing.is_some() {
                "carry on with the already delivered"
            } else {
                "create"
            },
            consumers.join(" and "),
        );
        if !steps.roll.is_empty() {
            let rolled: Vec<String> = steps
                .roll
                .iter()
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect();
            summary.push_str(&format!(", roll Deployment(s) {}", rolled.join(", ")));
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
        let rolled: Vec<String> = steps
            .roll
            .iter()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect();
        PlanDraft {
            other_targets: changed_targets(state, steps, key.account.as_deref()),
            target,
            summary,
            before: json!({"old_status": state.old_status, "keys": state.keys}),
            after: json!({
                "old_status": if steps.deactivate_old { Some("Inactive") } else { state.old_status.as_deref() },
                "new_access_key_id": new_key,
                "delivered_to": consumers,
                "rolled": rolled,
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

/// Writes the key to a consumer Secret, only if it is still as read (its `resourceVersion`),
/// and marks it as moved off `old`; returns the Secret's uid.
async fn deliver_kube(
    client: &kube::Client,
    c: &KubeConsumer,
    held: &Held,
    old: &str,
) -> Result<String, ActionError> {
    let api = Api::<Secret>::namespaced(client.clone(), &c.namespace);
    let mut data = BTreeMap::new();
    data.insert(c.id_key.clone(), ByteString(held.id.as_bytes().to_vec()));
    data.insert(
        c.secret_key.clone(),
        ByteString(held.secret.expose().as_bytes().to_vec()),
    );
    let mut metadata = json!({"annotations": {ROTATED_FROM: old, ROTATED_KEY: held.id}});
    if let Some(rv) = &c.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let written = api
        .patch(
            &c.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": metadata, "data": data})),
        )
        .await
        .map_err(|e| {
            kube_error(
                &format!(
                    "writing the new key to Secret {}/{} (only if unchanged since it was read)",
                    c.namespace, c.name
                ),
                e,
            )
        })?;
    Ok(written.metadata.uid.unwrap_or_default())
}

/// Writes the key to the Secrets Manager secret: its value with `AccessKeyId` and
/// `SecretAccessKey` replaced (other fields kept), as a version named by [`delivery_token`].
async fn deliver_secrets_manager(
    aws: &Aws,
    s: &SecretsManagerState,
    held: &Held,
    old: &str,
) -> Result<(), ActionError> {
    let mut doc = s
        .value
        .as_ref()
        .and_then(|v| serde_json::from_str::<Value>(v.expose()).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    doc["AccessKeyId"] = json!(held.id);
    doc["SecretAccessKey"] = json!(held.secret.expose());
    let value = Redacted::new(doc.to_string());
    aws.secretsmanager()
        .put_secret_value()
        .secret_id(&s.secret_id)
        .client_request_token(delivery_token(old, &held.id))
        .secret_string(value.expose())
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                &format!(
                    "writing the new key to Secrets Manager secret {}",
                    s.secret_id
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
        "replace an IAM access key where it is read from: find the Kubernetes Secrets (and the \
         named Secrets Manager secret) that hold it, create a new key, deliver it there only, \
         verify it, roll the workloads, deactivate the old one; refuse when no consumer is found"
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
            Permission::new("kubernetes", "core/secrets:list"),
            Permission::new("kubernetes", "core/secrets:patch"),
            Permission::new("kubernetes", "apps/deployments:list"),
            Permission::new("kubernetes", "apps/deployments:patch"),
            EVENTS_CREATE,
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "deliver:\n  kubernetes_secret: {}     # the Secrets that hold the key, where the finding \
         found it (else every namespace)\n  # kubernetes_secret:      # or narrowed (never a \
         destination for another key):\n  #   namespace: payments\n  #   name: aws-credentials\n  \
         #   access_key_id_key: AWS_ACCESS_KEY_ID\n  #   secret_access_key_key: \
         AWS_SECRET_ACCESS_KEY\n  #   roll_workloads: true\n  # secrets_manager: {secret_id: \
         payments/aws-credentials}   # only if it holds the key\ndelete_new_key_on_rollback: \
         false\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
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
            let location = Location::of(input.finding);
            let what = format!(
                "rotate access key {} and deliver the new key to {}",
                key.access_key_id,
                searched_shown(&params, location.as_ref()).join(" and ")
            );
            let aws = match key.planning_client(ctx).await? {
                Ok(a) => a,
                Err(why) => return Ok(not_connected_plan(self, key.target(), &what, &why)),
            };
            let kube = match kube_client(ctx, &params, location.as_ref())? {
                Ok(k) => k,
                Err(why) => return Ok(not_connected_plan(self, key.target(), &what, &why)),
            };
            let state = read_state(&aws, &key, &params, location.as_ref(), kube.as_ref()).await?;
            let steps = work_out(&state, &key)?;
            Ok(Self::draft(&key, &state, &steps).finish(self))
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
            let location = Location::of(input.finding);
            let old = key.access_key_id.as_str();
            let aws = &key.acting_client(ctx).await?;
            let kube = kube_client(ctx, &params, location.as_ref())?.map_err(|why| {
                ActionError::Permanent(format!("cannot change the cluster: {why}"))
            })?;
            let state = read_state(aws, &key, &params, location.as_ref(), kube.as_ref()).await?;
            if state.observed(old) != plan.observed {
                return Err(ActionError::Drift(format!(
                    "the keys of IAM user {} or their consumers changed since planning",
                    state.user
                )));
            }
            let steps = work_out(&state, &key)?;
            let user = state.user.clone();
            let new_id = steps.existing.clone();
            let consumers = state.consumers_shown(old);
            if plan.noop || steps.is_empty() {
                return Ok(Outcome {
                    action: self.kind().to_owned(),
                    target: plan.target.clone(),
                    result: "unchanged".to_owned(),
                    detail: json!({
                        "user": user, "old_access_key_id": old, "new_access_key_id": new_id,
                        "old_status": state.old_status, "delivered_to": consumers,
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
                                "a consumer holds access key {} of IAM user {user}, which does \
                                 not work ({e}); put a working key there, or delete key {} if \
                                 nobody uses it, then run again",
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
            if let Some(c) = &kube {
                for consumer in state.kube_consumers().iter().filter(|k| {
                    steps
                        .deliver_kube
                        .contains(&(k.namespace.clone(), k.name.clone()))
                }) {
                    let uid = deliver_kube(c, consumer, &held, old)
                        .await
                        .map_err(|e| masked(e, &held))?;
                    let message = format!(
                        "Firebreak wrote the new access key {} of IAM user {user} here, in place \
                         of the exposed key {old} this Secret held",
                        held.id
                    );
                    event(
                        c,
                        "Secret",
                        &consumer.namespace,
                        &consumer.name,
                        uid,
                        &message,
                    )
                    .await;
                }
            }
            if steps.deliver_secrets_manager
                && let Some(s) = state.sm_consumer(old)
            {
                deliver_secrets_manager(aws, s, &held, old)
                    .await
                    .map_err(|e| masked(e, &held))?;
            }
            verify(aws, &user, &held)
                .await
                .map_err(|e| masked(e, &held))?;
            if created || state.baseline.is_some() {
                untag_baseline(aws, &user, old).await?;
            }
            if let Some(c) = &kube {
                for (ns, name) in &steps.roll {
                    let uid = roll(c, ns, name, &held.id).await?;
                    let message = format!(
                        "Firebreak rolled this Deployment so its pods read the new access key {} \
                         (rotation of exposed key {old})",
                        held.id
                    );
                    event(c, "Deployment", ns, name, uid, &message).await;
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
            let rolled: Vec<String> = steps
                .roll
                .iter()
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect();
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
                    "delivered_to": consumers,
                    "rolled": rolled,
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
            let aws = &acting_in(ctx, undo.account.as_deref()).await?.0;
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

    fn consumer(in_secret: &str) -> KubeConsumer {
        KubeConsumer {
            namespace: "p".to_owned(),
            name: "s".to_owned(),
            resource_version: Some("1".to_owned()),
            id_key: "AWS_ACCESS_KEY_ID".to_owned(),
            secret_key: "AWS_SECRET_ACCESS_KEY".to_owned(),
            held: held(in_secret),
            moved: in_secret != "OLD",
            workloads: vec![Workload {
                name: "billing".to_owned(),
                rotated_key: None,
            }],
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
                scope: Scope::of(&KubeScope::default(), None).unwrap(),
                consumers: in_secret.map(consumer).into_iter().collect(),
                unwritable: Vec::new(),
            }),
            secrets_manager: None,
        }
    }

    fn old_key() -> KeyRef {
        KeyRef {
            account: None,
            user: Some("svc".to_owned()),
            access_key_id: "OLD".to_owned(),
        }
    }

    fn secret(data: &[(&str, &str)], moved_from: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("creds".to_owned()),
                namespace: Some("p".to_owned()),
                annotations: moved_from
                    .map(|m| BTreeMap::from([(ROTATED_FROM.to_owned(), m.to_owned())])),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_fresh_rotation_creates_delivers_rolls_and_deactivates() {
        let s = state(vec![key("OLD", "Active")], None, Some("OLD"));
        let steps = work_out(&s, &old_key()).unwrap();
        assert_eq!(steps.existing, None);
        assert_eq!(steps.deliver_kube, [("p".to_owned(), "s".to_owned())]);
        assert!(steps.deactivate_old);
        assert_eq!(steps.roll, [("p".to_owned(), "billing".to_owned())]);
        assert!(steps.orphans.is_empty() && steps.make_room.is_none());
    }

    #[test]
    fn without_a_consumer_nothing_is_rotated() {
        let s = state(vec![key("OLD", "Active")], None, None);
        let e = work_out(&s, &old_key()).unwrap_err();
        assert!(matches!(e, ActionError::NotApplicable(_)), "{e:?}");
        assert!(
            e.to_string().contains("no consumer of access key OLD"),
            "{e}"
        );
    }

    #[test]
    fn a_secrets_manager_secret_holding_another_key_is_no_destination() {
        let mut s = state(vec![key("OLD", "Active")], None, Some("OLD"));
        s.secrets_manager = Some(SecretsManagerState {
            secret_id: "payments/aws".to_owned(),
            held: Some(held("SOMEONE-ELSES")),
            value: None,
            moved: false,
        });
        let e = work_out(&s, &old_key()).unwrap_err();
        assert!(
            e.to_string().contains("holds access key SOMEONE-ELSES"),
            "{e}"
        );
    }

    #[test]
    fn an_undelivered_key_of_an_interrupted_attempt_is_an_orphan() {
        let keys = vec![key("OLD", "Active"), key("LOST", "Active")];
        let s = state(keys, Some(&["OLD"]), Some("OLD"));
        let steps = work_out(&s, &old_key()).unwrap();
        assert_eq!(steps.orphans, ["LOST"]);
        assert_eq!(steps.existing, None, "a new key is created in its place");
        assert_eq!(steps.make_room, None);
    }

    #[test]
    fn a_delivered_key_is_carried_on_with_and_never_an_orphan() {
        let keys = vec![key("OLD", "Active"), key("NEW", "Active")];
        let s = state(keys, Some(&["OLD"]), Some("NEW"));
        let steps = work_out(&s, &old_key()).unwrap();
        assert!(steps.orphans.is_empty());
        assert_eq!(steps.existing.as_deref(), Some("NEW"));
        assert!(steps.deliver_kube.is_empty(), "the Secret holds it already");
        assert!(steps.deactivate_old);
    }

    #[test]
    fn without_a_baseline_an_unknown_second_key_is_never_deleted() {
        let keys = vec![key("OLD", "Active"), key("THEIRS", "Active")];
        let s = state(keys, None, Some("OLD"));
        let e = work_out(&s, &old_key()).unwrap_err();
        assert!(e.to_string().contains("the active key THEIRS"), "{e}");
        let keys = vec![key("OLD", "Active"), key("THEIRS", "Inactive")];
        let s = state(keys, None, Some("OLD"));
        let steps = work_out(&s, &old_key()).unwrap();
        assert_eq!(steps.make_room.as_deref(), Some("THEIRS"));
    }

    #[test]
    fn a_finished_rotation_has_nothing_left_to_do() {
        let keys = vec![key("OLD", "Inactive"), key("NEW", "Active")];
        let mut s = state(keys, None, Some("NEW"));
        if let Some(k) = s.kube.as_mut() {
            k.consumers[0].workloads[0].rotated_key = Some("NEW".to_owned());
        }
        assert!(work_out(&s, &old_key()).unwrap().is_empty());
    }

    #[test]
    fn a_secret_is_a_consumer_only_while_it_holds_the_key_or_firebreak_moved_it() {
        let keys = [key("OLD", "Active"), key("NEW", "Active")];
        let any = KubeScope::default();
        let env = secret(
            &[
                ("AWS_ACCESS_KEY_ID", "OLD\n"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ],
            None,
        );
        let c = classify(&env, "OLD", &keys, &any).unwrap().unwrap();
        assert_eq!(
            (c.id_key.as_str(), c.secret_key.as_str()),
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        );
        assert!(!c.moved);
        let lower = secret(
            &[("aws_access_key_id", "OLD"), ("aws_secret_access_key", "s")],
            None,
        );
        let c = classify(&lower, "OLD", &keys, &any).unwrap().unwrap();
        assert_eq!(c.secret_key, "aws_secret_access_key");
        let other = secret(
            &[("AWS_ACCESS_KEY_ID", "NEW"), ("AWS_SECRET_ACCESS_KEY", "s")],
            None,
        );
        assert!(
            classify(&other, "OLD", &keys, &any).is_none(),
            "a Secret of another key is not a consumer, even of the same user"
        );
        let moved = secret(
            &[("AWS_ACCESS_KEY_ID", "NEW"), ("AWS_SECRET_ACCESS_KEY", "s")],
            Some("OLD"),
        );
        assert!(classify(&moved, "OLD", &keys, &any).unwrap().unwrap().moved);
        let moved_elsewhere = secret(
            &[
                ("AWS_ACCESS_KEY_ID", "NOT-THE-USERS"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ],
            Some("OLD"),
        );
        assert!(classify(&moved_elsewhere, "OLD", &keys, &any).is_none());
        let only = KubeScope {
            access_key_id_key: Some("PRIMARY_KEY_ID".to_owned()),
            ..KubeScope::default()
        };
        assert!(classify(&env, "OLD", &keys, &only).is_none());
    }

    #[test]
    fn a_secret_holding_the_key_in_a_form_not_rewritten_is_reported() {
        let keys = [key("OLD", "Active")];
        let any = KubeScope::default();
        let file = secret(
            &[(
                "credentials",
                "[default]\naws_access_key_id = OLD\naws_secret_access_key = s\n",
            )],
            None,
        );
        let u = classify(&file, "OLD", &keys, &any).unwrap().unwrap_err();
        assert!(u.why.contains("data[credentials]"), "{}", u.why);
        let lone = secret(&[("KEY", "OLD")], None);
        let u = classify(&lone, "OLD", &keys, &any).unwrap().unwrap_err();
        assert!(u.why.contains("no secret beside it"), "{}", u.why);
        let twice = secret(
            &[
                ("AWS_ACCESS_KEY_ID", "OLD"),
                ("BACKUP_AWS_ACCESS_KEY_ID", "OLD"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ],
            None,
        );
        let u = classify(&twice, "OLD", &keys, &any).unwrap().unwrap_err();
        assert!(u.why.contains("more than one data key"), "{}", u.why);
    }

    #[test]
    fn a_constraint_that_excludes_where_the_key_was_found_is_refused() {
        let found = Location {
            cluster: Some("prod".to_owned()),
            namespace: "payments".to_owned(),
            kind: "Secret".to_owned(),
            name: "creds".to_owned(),
        };
        let s = Scope::of(&KubeScope::default(), Some(&found)).unwrap();
        assert_eq!(
            (s.cluster.as_deref(), s.namespace, s.name),
            (Some("prod"), None, None),
            "every namespace of the finding's cluster"
        );
        let elsewhere = KubeScope {
            namespace: Some("billing".to_owned()),
            ..KubeScope::default()
        };
        let e = Scope::of(&elsewhere, Some(&found)).unwrap_err();
        assert!(
            e.to_string()
                .contains("may only deliver to namespace billing"),
            "{e}"
        );
        let other_name = KubeScope {
            name: Some("other".to_owned()),
            ..KubeScope::default()
        };
        assert!(Scope::of(&other_name, Some(&found)).is_err());
        let pod = Location {
            kind: "Pod".to_owned(),
            ..found
        };
        assert!(
            Scope::of(&other_name, Some(&pod)).is_ok(),
            "a pod reads Secrets of any name"
        );
        let s = Scope::of(&elsewhere, None).unwrap();
        assert_eq!(s.namespace.as_deref(), Some("billing"));
    }

    #[test]
    fn the_secrets_manager_version_names_the_rotation() {
        let t = delivery_token("AKIAOLD", "AKIANEW");
        assert_eq!(t.len(), 36);
        assert_eq!(t, delivery_token("AKIAOLD", "AKIANEW"));
        assert_ne!(t, delivery_token("AKIAOLD", "AKIAOTHER"));
    }

    #[test]
    fn observed_state_never_holds_a_secret() {
        let mut s = state(vec![key("OLD", "Active")], None, Some("OLD"));
        if let Some(k) = s.kube.as_mut() {
            k.consumers[0].held.secret = Redacted::new("very-secret-value".to_owned());
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
    fn a_rotation_must_look_somewhere() {
        let problems = check_params(&json!({"deliver": {}})).unwrap_err();
        assert_eq!(problems[0].path, "deliver");
        assert!(check_params(&json!({"deliver": {"kubernetes_secret": {}}})).is_ok());
        let ok = check_params(&json!({"deliver": {"secrets_manager": {"secret_id": "x"}}}));
        assert!(ok.is_ok());
        let empty = check_params(&json!({"deliver": {"kubernetes_secret": {"name": " "}}}));
        assert_eq!(empty.unwrap_err()[0].path, "deliver.kubernetes_secret.name");
    }
}
