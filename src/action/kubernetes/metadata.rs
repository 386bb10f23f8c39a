//! `kubernetes.label` and `kubernetes.annotate`: set or remove keys on the finding's object.
//!
//! The object is the finding's first Kubernetes resource of a known kind (Pod, Deployment,
//! Service, Node, …). `with: {set: {key: value}, remove: [key]}`. The values before are kept in
//! the outcome, and rollback puts them back (restoring a removed key, removing an added one) —
//! only for keys that still hold what Firebreak wrote, so a later change by someone else is
//! kept. Label keys and values are checked against the API's syntax at load time.

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    EVENTS_CREATE, ObjectRef, checked_params, connected, connection, kube_error,
    not_connected_plan, record_event, undo_of, validate_with,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput,
};

/// Which metadata map an action edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Labels,
    Annotations,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Self::Labels => "labels",
            Self::Annotations => "annotations",
        }
    }
}

/// kubectl's copy of the applied spec (with its env values): never shown or edited.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `kubernetes.label`.
pub struct KubernetesLabel;
/// `kubernetes.annotate`.
pub struct KubernetesAnnotate;

/// `with:` parameters.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Keys to set, with their values.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Keys to remove.
    #[serde(default)]
    remove: Vec<String>,
}

/// `[prefix/]name`: prefix a DNS subdomain (≤ 253), name ≤ 63 alphanumerics with `-_.` inside.
fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(super::valid_dns_subdomain) && valid_name(name) && !name.is_empty()
}

/// ≤ 63 characters, alphanumerics with `-_.` inside (empty allowed: label values may be empty).
fn valid_name(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !v.starts_with(['-', '_', '.'])
        && !v.ends_with(['-', '_', '.'])
}

fn check(field: Field, p: &Params) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    if p.set.is_empty() && p.remove.is_empty() {
        problems.push(ParamProblem {
            path: String::new(),
            message: "nothing to do: neither `set` nor `remove` is given".into(),
            hint: Some("e.g. set: {firebreak.dev/quarantined: \"true\"}".into()),
        });
    }
    for (k, v) in &p.set {
        if !valid_key(k) {
            problems.push(ParamProblem {
                path: format!("set.{k}"),
                message: format!("`{k}` is not a valid {} key", field.key()),
                hint: Some("[prefix/]name: name up to 63 letters, digits, `-_.`".into()),
            });
        }
        if field == Field::Labels && !valid_name(v) {
            problems.push(ParamProblem {
                path: format!("set.{k}"),
                message: format!("`{v}` is not a valid label value"),
                hint: Some(
                    "up to 63 letters, digits, `-_.`, starting and ending alphanumeric".into(),
                ),
            });
        }
        if p.remove.contains(k) {
            problems.push(ParamProblem {
                path: "remove".into(),
                message: format!("`{k}` is both set and removed"),
                hint: None,
            });
        }
    }
    for (path, k) in p.set.keys().map(|k| (format!("set.{k}"), k)).chain(
        p.remove
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("remove[{i}]"), k)),
    ) {
        if k == LAST_APPLIED {
            problems.push(ParamProblem {
                path,
                message: format!(
                    "`{k}` holds a copy of the object's spec; Firebreak does not edit it"
                ),
                hint: Some("kubectl maintains it; change the object itself".into()),
            });
        }
    }
    for (i, k) in p.remove.iter().enumerate() {
        if !valid_key(k) {
            problems.push(ParamProblem {
                path: format!("remove[{i}]"),
                message: format!("`{k}` is not a valid {} key", field.key()),
                hint: None,
            });
        }
    }
    problems
}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    object: ObjectRef,
    uid: String,
    /// Each changed key: its value before (`None`: absent) and the value Firebreak left
    /// (`None`: removed).
    keys: BTreeMap<String, (Option<String>, Option<String>)>,
}

/// The changes `p` makes to `current`: key → (before, after).
fn diff(
    current: &BTreeMap<String, String>,
    p: &Params,
) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let mut out = BTreeMap::new();
    for (k, v) in &p.set {
        if current.get(k) != Some(v) {
            out.insert(k.clone(), (current.get(k).cloned(), Some(v.clone())));
        }
    }
    for k in &p.remove {
        if let Some(v) = current.get(k) {
            out.insert(k.clone(), (Some(v.clone()), None));
        }
    }
    out
}

async fn read(
    client: &kube::Client,
    object: &ObjectRef,
    field: Field,
) -> Result<(String, BTreeMap<String, String>), ActionError> {
    let obj = object
        .api(client)?
        .get_opt(&object.name)
        .await
        .map_err(|e| kube_error(&format!("reading {}", object.shown()), e))?
        .ok_or_else(|| ActionError::NotApplicable(format!("{} does not exist", object.shown())))?;
    let map = match field {
        Field::Labels => obj.metadata.labels,
        Field::Annotations => obj.metadata.annotations,
    };
    Ok((
        obj.metadata.uid.unwrap_or_default(),
        map.unwrap_or_default(),
    ))
}

/// A merge patch setting each key to its value (`None` removes it).
fn patch_of(field: Field, keys: &BTreeMap<String, Option<String>>) -> Value {
    let map: Map<String, Value> = keys
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
        .collect();
    json!({"metadata": {field.key(): map}})
}

async fn plan(
    action: &dyn Action,
    field: Field,
    ctx: &ActionCtx,
    input: StepInput<'_>,
) -> Result<Plan, ActionError> {
    let params = checked_params::<Params>(input.params, |p| check(field, p))?;
    let object = ObjectRef::of(input.finding)?;
    let client = match connection(ctx, object.cluster.as_deref())? {
        Ok(c) => c,
        Err(why) => {
            let what = format!("change the {} of {}", field.key(), object.shown());
            return Ok(not_connected_plan(action, object.key(), &what, &why));
        }
    };
    let (uid, current) = read(&client, &object, field).await?;
    let changes = diff(&current, &params);
    let before: BTreeMap<&String, &Option<String>> =
        changes.iter().map(|(k, (b, _))| (k, b)).collect();
    let after: BTreeMap<&String, &Option<String>> =
        changes.iter().map(|(k, (_, a))| (k, a)).collect();
    let summary = if changes.is_empty() {
        format!(
            "the {} of {} are already as asked",
            field.key(),
            object.shown()
        )
    } else {
        let keys: Vec<&str> = changes.keys().map(String::as_str).collect();
        format!(
            "{} {} on {}",
            if field == Field::Labels {
                "label"
            } else {
                "annotate"
            },
            keys.join(", "),
            object.shown()
        )
    };
    Ok(PlanDraft {
        other_targets: Vec::new(),
        target: object.key(),
        summary,
        observed: json!({"object": object, "uid": uid, "before": before}),
        before: json!(before),
        after: json!(after),
        changes: changes
            .iter()
            .map(|(k, (b, a))| Change {
                op: if a.is_some() { "update" } else { "delete" }.into(),
                path: format!("{}: metadata.{}[{k}]", object.path(), field.key()),
                from: b.clone().map(Value::String),
                to: a.clone().map(Value::String),
            })
            .collect(),
        noop: changes.is_empty(),
    }
    .finish(action))
}

async fn apply(
    action: &dyn Action,
    field: Field,
    ctx: &ActionCtx,
    input: StepInput<'_>,
    plan: &Plan,
) -> Result<Outcome, ActionError> {
    let params = checked_params::<Params>(input.params, |p| check(field, p))?;
    let object = ObjectRef::of(input.finding)?;
    let client = connected(ctx, object.cluster.as_deref())?;
    let (uid, current) = read(&client, &object, field).await?;
    if plan.observed["uid"] != json!(uid) {
        return Err(ActionError::Drift(format!(
            "{} was replaced since planning",
            object.shown()
        )));
    }
    let changes = diff(&current, &params);
    let outcome =
        |result: &str, keys: BTreeMap<String, (Option<String>, Option<String>)>| Outcome {
            action: action.kind().to_owned(),
            target: plan.target.clone(),
            result: result.to_owned(),
            detail: json!({"object": object.shown(), field.key(): keys}),
            undo: (!keys.is_empty())
                .then(|| {
                    serde_json::to_value(Undo {
                        object: object.clone(),
                        uid: uid.clone(),
                        keys: keys.clone(),
                    })
                    .ok()
                })
                .flatten(),
        };
    if changes.is_empty() {
        return Ok(outcome("unchanged", BTreeMap::new()));
    }
    // The keys to change must still hold what was planned.
    for (k, (before, _)) in &changes {
        // Compared as the plan keeps it: scrubbed.
        let mut live = json!(before);
        crate::redact::scrub_json(&mut live);
        if plan.observed["before"].get(k) != Some(&live) {
            return Err(ActionError::Drift(format!(
                "{} key {k} of {} changed since planning",
                field.key(),
                object.shown()
            )));
        }
    }
    let set: BTreeMap<String, Option<String>> = changes
        .iter()
        .map(|(k, (_, a))| (k.clone(), a.clone()))
        .collect();
    object
        .api(&client)?
        .patch(
            &object.name,
            &PatchParams::default(),
            &Patch::Merge(&patch_of(field, &set)),
        )
        .await
        .map_err(|e| {
            kube_error(
                &format!("changing the {} of {}", field.key(), object.shown()),
                e,
            )
        })?;
    let keys: Vec<&str> = changes.keys().map(String::as_str).collect();
    record_event(
        &client,
        &object.involved(&uid),
        action.kind(),
        &format!(
            "Firebreak changed the {} {} (playbook {})",
            field.key(),
            keys.join(", "),
            input.playbook
        ),
    )
    .await;
    Ok(outcome("applied", changes))
}

async fn rollback(field: Field, ctx: &ActionCtx, outcome: &Outcome) -> Result<(), ActionError> {
    let Some(undo) = undo_of::<Undo>(outcome)? else {
        return Ok(());
    };
    let client = connected(ctx, undo.object.cluster.as_deref())?;
    let (uid, current) = match read(&client, &undo.object, field).await {
        Ok(r) => r,
        Err(ActionError::NotApplicable(_)) => return Ok(()), // gone: nothing to restore
        Err(e) => return Err(e),
    };
    if uid != undo.uid {
        return Err(ActionError::Permanent(format!(
            "{} was replaced since it was changed; not restoring",
            undo.object.shown()
        )));
    }
    // Only keys still holding what Firebreak left.
    let restore: BTreeMap<String, Option<String>> = undo
        .keys
        .iter()
        .filter(|(k, (_, left))| current.get(*k) == left.as_ref())
        .map(|(k, (before, _))| (k.clone(), before.clone()))
        .filter(|(k, before)| current.get(k) != before.as_ref())
        .collect();
    if restore.is_empty() {
        return Ok(());
    }
    undo.object
        .api(&client)?
        .patch(
            &undo.object.name,
            &PatchParams::default(),
            &Patch::Merge(&patch_of(field, &restore)),
        )
        .await
        .map_err(|e| {
            kube_error(
                &format!("restoring the {} of {}", field.key(), undo.object.shown()),
                e,
            )
        })?;
    Ok(())
}

const LABEL_PERMISSIONS: &[Permission] = &[
    Permission::new("kubernetes", "core/pods:get"),
    Permission::new("kubernetes", "core/pods:patch"),
    Permission::new("kubernetes", "core/services:get"),
    Permission::new("kubernetes", "core/services:patch"),
    Permission::new("kubernetes", "core/nodes:get"),
    Permission::new("kubernetes", "core/nodes:patch"),
    Permission::new("kubernetes", "core/namespaces:get"),
    Permission::new("kubernetes", "core/namespaces:patch"),
    Permission::new("kubernetes", "core/configmaps:get"),
    Permission::new("kubernetes", "core/configmaps:patch"),
    Permission::new("kubernetes", "core/serviceaccounts:get"),
    Permission::new("kubernetes", "core/serviceaccounts:patch"),
    Permission::new("kubernetes", "apps/deployments:get"),
    Permission::new("kubernetes", "apps/deployments:patch"),
    Permission::new("kubernetes", "apps/statefulsets:get"),
    Permission::new("kubernetes", "apps/statefulsets:patch"),
    Permission::new("kubernetes", "apps/daemonsets:get"),
    Permission::new("kubernetes", "apps/daemonsets:patch"),
    Permission::new("kubernetes", "apps/replicasets:get"),
    Permission::new("kubernetes", "apps/replicasets:patch"),
    Permission::new("kubernetes", "networking.k8s.io/ingresses:get"),
    Permission::new("kubernetes", "networking.k8s.io/ingresses:patch"),
    Permission::new("kubernetes", "networking.k8s.io/networkpolicies:get"),
    Permission::new("kubernetes", "networking.k8s.io/networkpolicies:patch"),
    EVENTS_CREATE,
];

macro_rules! metadata_action {
    ($ty:ident, $field:expr, $kind:literal, $summary:literal, $example:literal) => {
        impl Action for $ty {
            fn kind(&self) -> &'static str {
                $kind
            }

            fn summary(&self) -> &'static str {
                $summary
            }

            fn reversible(&self) -> bool {
                true
            }

            fn permissions(&self) -> &'static [Permission] {
                LABEL_PERMISSIONS
            }

            fn example(&self) -> &'static str {
                $example
            }

            fn params_schema(&self) -> schemars::Schema {
                schemars::schema_for!(Params)
            }

            fn validate(&self, params: &Value) -> Vec<ParamProblem> {
                validate_with::<Params>(params, |p| check($field, p))
            }

            fn plan<'a>(
                &'a self,
                ctx: &'a ActionCtx,
                input: StepInput<'a>,
            ) -> BoxFuture<'a, Result<Plan, ActionError>> {
                Box::pin(plan(self, $field, ctx, input))
            }

            fn apply<'a>(
                &'a self,
                ctx: &'a ActionCtx,
                input: StepInput<'a>,
                plan: &'a Plan,
            ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
                Box::pin(apply(self, $field, ctx, input, plan))
            }

            fn rollback<'a>(
                &'a self,
                ctx: &'a ActionCtx,
                outcome: &'a Outcome,
            ) -> BoxFuture<'a, Result<(), ActionError>> {
                Box::pin(rollback($field, ctx, outcome))
            }
        }
    };
}

metadata_action!(
    KubernetesLabel,
    Field::Labels,
    "kubernetes.label",
    "set or remove labels on the finding's Kubernetes object (rollback restores the values before)",
    "set: {firebreak.dev/quarantined: \"true\"}\nremove: [app.kubernetes.io/exposed]\n"
);
metadata_action!(
    KubernetesAnnotate,
    Field::Annotations,
    "kubernetes.annotate",
    "set or remove annotations on the finding's Kubernetes object (rollback restores the values before)",
    "set: {firebreak.dev/incident: \"see the security channel\"}\nremove: []\n"
);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_label_values_are_checked() {
        let p = KubernetesLabel.validate(&json!({
            "set": {"ok.example/a": "yes", "bad key": "v", "b": "not valid!"},
            "remove": ["-x"],
        }));
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["set.b", "set.bad key", "remove[0]"]);
        assert!(
            KubernetesAnnotate
                .validate(&json!({"set": {"a": "any text at all!"}}))
                .is_empty()
        );
        assert!(!KubernetesAnnotate.validate(&json!({})).is_empty());
        let p = KubernetesAnnotate.validate(&json!({"remove": [LAST_APPLIED]}));
        assert_eq!(p[0].path, "remove[0]");
        assert!(p[0].message.contains("copy of the object's spec"), "{p:?}");
    }

    #[test]
    fn diff_lists_only_real_changes() {
        let current = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        let p = Params {
            set: BTreeMap::from([
                ("a".to_owned(), "1".to_owned()),
                ("c".to_owned(), "3".to_owned()),
            ]),
            remove: vec!["b".into(), "z".into()],
        };
        let d = diff(&current, &p);
        assert_eq!(d.len(), 2);
        assert_eq!(d["c"], (None, Some("3".to_owned())));
        assert_eq!(d["b"], (Some("2".to_owned()), None));
    }
}
