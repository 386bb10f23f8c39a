//! `kubernetes.secure-dashboard`: stops exposing an unauthenticated Kubernetes Dashboard (or any
//! named web console).
//!
//! The console is found from the finding's Service or Deployment, or named by `with:
//! {namespace, service, deployment}` when the finding only names a cluster (kube-hunter's
//! `KHV029` names the host it reached); by default `kubernetes-dashboard/kubernetes-dashboard`,
//! as the Dashboard's own manifest installs it. Four changes, each shown in the plan:
//! - the Service, when of type LoadBalancer or NodePort (or with externalIPs), becomes a
//!   ClusterIP Service (node ports and load-balancer fields cleared, as the API requires);
//! - the Deployment's containers lose the arguments that switch authentication off
//!   (`--enable-skip-login`, `--disable-settings-authorizer`, `--enable-insecure-login`; `=false`
//!   forms are kept);
//! - the Ingresses routing to the Service get ingress-nginx authentication annotations when
//!   `auth` is given (`mode: oauth2-proxy` → `auth-url`/`auth-signin`; `mode: basic` →
//!   `auth-type`, `auth-secret`, `auth-realm`); without `auth` the plan says they stay open;
//! - ClusterRoleBindings binding the Deployment's ServiceAccount (and nothing else) to
//!   `cluster-admin` are deleted. A binding that also binds other subjects is left and named
//!   in the plan: removing one subject is an update, which the API's escalation check allows
//!   only to an identity that may bind `cluster-admin` itself — Firebreak is not given that.
//!
//! What each object looked like before is kept in the `firebreak.dev/previous-exposure`
//! annotation on the Service, Deployment and Ingress, and (with the deleted bindings) in the
//! outcome; rollback restores the Service fields, arguments and annotations that still hold
//! what Firebreak left, and recreates the deleted bindings (a real API server refuses that
//! unless Firebreak may bind `cluster-admin`; the error then names the binding kept in the
//! outcome to restore by hand). A NodePort restored gets its old port back only while it is
//! free. A second apply of a secured console changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    EVENTS_CREATE, Involved, checked_params, connected, connection, kube_error, not_connected_plan,
    object_key, record_event, undo_of, valid_dns_label, valid_dns_subdomain, validate_with,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput,
};
use crate::finding::ResourceRef;

/// Where the state before is kept on each changed object.
pub const PREVIOUS: &str = "firebreak.dev/previous-exposure";
/// The Dashboard's own namespace and names (its recommended manifest).
const DEFAULT_NAME: &str = "kubernetes-dashboard";
/// Arguments that switch the Dashboard's authentication off.
const INSECURE_ARGS: &[&str] = &[
    "--enable-skip-login",
    "--disable-settings-authorizer",
    "--enable-insecure-login",
];
/// The Service fields that expose it outside the cluster (cleared for ClusterIP).
const EXPOSURE_FIELDS: &[&str] = &[
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "allocateLoadBalancerNodePorts",
    "loadBalancerIP",
    "loadBalancerClass",
    "loadBalancerSourceRanges",
    "externalIPs",
];
const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// `kubernetes.secure-dashboard`.
pub struct KubernetesSecureDashboard;

/// How the Ingress authenticates.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", deny_unknown_fields)]
enum Auth {
    /// oauth2-proxy (or any external auth service) through ingress-nginx's auth-url.
    #[serde(rename = "oauth2-proxy")]
    OAuth2Proxy {
        /// `nginx.ingress.kubernetes.io/auth-url`, e.g. `https://$host/oauth2/auth`.
        auth_url: String,
        /// `nginx.ingress.kubernetes.io/auth-signin`, e.g. `https://$host/oauth2/start?rd=$escaped_request_uri`.
        auth_signin: String,
    },
    /// HTTP basic authentication from an htpasswd Secret in the Ingress's namespace.
    #[serde(rename = "basic")]
    Basic {
        /// The Secret (key `auth`, htpasswd format).
        secret: String,
        /// The realm shown by browsers.
        #[serde(default)]
        realm: Option<String>,
    },
}

impl Auth {
    fn annotations(&self) -> BTreeMap<String, String> {
        let pairs: Vec<(&str, String)> = match self {
            Auth::OAuth2Proxy {
                auth_url,
                auth_signin,
            } => vec![
                ("auth-url", auth_url.clone()),
                ("auth-signin", auth_signin.clone()),
            ],
            Auth::Basic { secret, realm } => vec![
                ("auth-type", "basic".to_owned()),
                ("auth-secret", secret.clone()),
                (
                    "auth-realm",
                    realm
                        .clone()
                        .unwrap_or_else(|| "Authentication Required".to_owned()),
                ),
            ],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (format!("{NGINX}{k}"), v))
            .collect()
    }
}

/// `with:` parameters.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The console's namespace (default: the finding's, else `kubernetes-dashboard`).
    #[serde(default)]
    namespace: Option<String>,
    /// Its Service (default: the finding's Service, else `kubernetes-dashboard`).
    #[serde(default)]
    service: Option<String>,
    /// Its Deployment (default: the finding's Deployment, else the Service's name).
    #[serde(default)]
    deployment: Option<String>,
    /// Ingresses to protect (default: every Ingress in the namespace routing to the Service).
    #[serde(default)]
    ingresses: Option<Vec<String>>,
    /// Authentication put in front of the Ingresses.
    #[serde(default)]
    auth: Option<Auth>,
    /// Arguments removed from the containers (default: the Dashboard's three).
    #[serde(default)]
    insecure_args: Option<Vec<String>>,
    /// Delete cluster-admin bindings of the console's ServiceAccount (default true).
    #[serde(default)]
    remove_cluster_admin_bindings: Option<bool>,
}

fn check(p: &Params) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    let mut name = |path: &str, v: &str, ok: bool| {
        if !ok {
            problems.push(ParamProblem {
                path: path.to_owned(),
                message: format!("`{v}` is not a valid Kubernetes name"),
                hint: Some("lowercase letters, digits and `-`".into()),
            });
        }
    };
    if let Some(n) = &p.namespace {
        name("namespace", n, valid_dns_label(n));
    }
    if let Some(n) = &p.service {
        name("service", n, valid_dns_label(n));
    }
    if let Some(n) = &p.deployment {
        name("deployment", n, valid_dns_subdomain(n));
    }
    for (i, n) in p.ingresses.iter().flatten().enumerate() {
        name(&format!("ingresses[{i}]"), n, valid_dns_subdomain(n));
    }
    match &p.auth {
        Some(Auth::OAuth2Proxy {
            auth_url,
            auth_signin,
        }) => {
            for (path, v) in [
                ("auth.auth_url", auth_url),
                ("auth.auth_signin", auth_signin),
            ] {
                if !(v.starts_with("https://") || v.starts_with("http://")) {
                    problems.push(ParamProblem {
                        path: path.into(),
                        message: format!("`{v}` is not an http(s) URL"),
                        hint: Some("e.g. https://$host/oauth2/auth".into()),
                    });
                }
            }
        }
        Some(Auth::Basic { secret, .. }) if !valid_dns_subdomain(secret) => {
            problems.push(ParamProblem {
                path: "auth.secret".into(),
                message: format!("`{secret}` is not a Secret name"),
                hint: Some("the htpasswd Secret in the Ingress's namespace".into()),
            });
        }
        _ => {}
    }
    for (i, a) in p.insecure_args.iter().flatten().enumerate() {
        if !a.starts_with("--") {
            problems.push(ParamProblem {
                path: format!("insecure_args[{i}]"),
                message: format!("`{a}` is not a flag"),
                hint: Some("flags start with --, e.g. --enable-skip-login".into()),
            });
        }
    }
    problems
}

/// The console the step is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Console {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    namespace: String,
    service: String,
    deployment: String,
}

impl Console {
    fn of(input: &StepInput<'_>, p: &Params) -> Result<Self, ActionError> {
        let named = input.finding.resources.iter().find_map(|r| match r {
            ResourceRef::Kubernetes {
                cluster,
                namespace,
                kind,
                name,
                ..
            } if (kind == "Service" && valid_dns_label(name))
                || (kind == "Deployment" && valid_dns_subdomain(name)) =>
            {
                Some((
                    cluster.clone(),
                    namespace.clone(),
                    kind.as_str(),
                    name.clone(),
                ))
            }
            _ => None,
        });
        let cluster = input.finding.resources.iter().find_map(|r| match r {
            ResourceRef::Kubernetes { cluster, .. } => cluster.clone(),
            _ => None,
        });
        // A finding about an exposed dashboard that names only its cluster or host (kube-hunter
        // reports the address it reached) gets the Dashboard's default names.
        let about_a_dashboard = input.finding.class == crate::finding::Class::ExposedDashboard;
        if named.is_none() && p.service.is_none() && p.deployment.is_none() && !about_a_dashboard {
            return Err(ActionError::NotApplicable(
                "the finding names no Service or Deployment of a web console; name them with \
                 `with: {namespace, service, deployment}`"
                    .into(),
            ));
        }
        let of_kind = |k: &str| named.as_ref().filter(|n| n.2 == k).map(|n| n.3.clone());
        let service = p
            .service
            .clone()
            .or_else(|| of_kind("Service"))
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let deployment = p
            .deployment
            .clone()
            .or_else(|| of_kind("Deployment"))
            .unwrap_or_else(|| service.clone());
        let namespace = p
            .namespace
            .clone()
            .or_else(|| named.as_ref().and_then(|n| n.1.clone()))
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        Ok(Self {
            cluster,
            namespace,
            service,
            deployment,
        })
    }

    fn shown(&self) -> String {
        format!("{}/{}", self.namespace, self.service)
    }
}

/// Whether `arg` switches authentication off per `flags` (`--flag`, `--flag=true`; not
/// `--flag=false`).
fn insecure(arg: &str, flags: &[String]) -> bool {
    flags.iter().any(|f| {
        arg == f
            || arg
                .strip_prefix(f.as_str())
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
    })
}

/// The live state the action depends on, as JSON (what the plan observes).
#[derive(Debug, Clone, Default)]
struct Live {
    service: Option<LiveService>,
    deployment: Option<LiveDeployment>,
    ingresses: Vec<LiveIngress>,
    bindings: Vec<ClusterRoleBinding>,
    /// Bindings to cluster-admin that also bind other subjects (left alone).
    shared_bindings: Vec<String>,
    service_account: Option<String>,
}

#[derive(Debug, Clone)]
struct LiveService {
    uid: String,
    rv: String,
    /// `type`, `ports` and [`EXPOSURE_FIELDS`] as they are.
    exposure: Value,
    previous: Option<String>,
}

#[derive(Debug, Clone)]
struct LiveDeployment {
    uid: String,
    rv: String,
    /// Container name → args.
    args: BTreeMap<String, Vec<String>>,
    previous: Option<String>,
}

#[derive(Debug, Clone)]
struct LiveIngress {
    name: String,
    uid: String,
    rv: String,
    /// The nginx auth annotations present.
    auth: BTreeMap<String, String>,
    previous: Option<String>,
}

fn exposure_of(spec: &Value) -> Value {
    let mut m = Map::new();
    m.insert(
        "type".into(),
        spec.get("type")
            .cloned()
            .unwrap_or_else(|| json!("ClusterIP")),
    );
    m.insert(
        "ports".into(),
        spec.get("ports").cloned().unwrap_or(Value::Null),
    );
    for f in EXPOSURE_FIELDS {
        if let Some(v) = spec.get(*f) {
            m.insert((*f).to_owned(), v.clone());
        }
    }
    Value::Object(m)
}

fn exposed(exposure: &Value) -> bool {
    matches!(exposure["type"].as_str(), Some("LoadBalancer" | "NodePort"))
        || exposure["externalIPs"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
}

/// The Service fields as a ClusterIP Service (for the plan's `to`).
fn cluster_ip(exposure: &Value) -> Value {
    let ports: Value = exposure["ports"]
        .as_array()
        .map(|ps| {
            Value::Array(
                ps.iter()
                    .map(|p| {
                        let mut p = p.clone();
                        if let Some(o) = p.as_object_mut() {
                            o.remove("nodePort");
                        }
                        p
                    })
                    .collect(),
            )
        })
        .unwrap_or(Value::Null);
    json!({"type": "ClusterIP", "ports": ports})
}

fn previous_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(PREVIOUS).cloned())
}

fn routes_to(ing: &Ingress, service: &str) -> bool {
    let Some(spec) = &ing.spec else {
        return false;
    };
    let default = spec
        .default_backend
        .as_ref()
        .and_then(|b| b.service.as_ref())
        .is_some_and(|s| s.name == service);
    default
        || spec.rules.iter().flatten().any(|r| {
            r.http.iter().any(|h| {
                h.paths.iter().any(|p| {
                    p.backend
                        .service
                        .as_ref()
                        .is_some_and(|s| s.name == service)
                })
            })
        })
}

async fn read(client: &kube::Client, c: &Console, p: &Params) -> Result<Live, ActionError> {
    let ns = &c.namespace;
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&c.service)
        .await
        .map_err(|e| kube_error(&format!("reading Service {ns}/{}", c.service), e))?;
    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&c.deployment)
        .await
        .map_err(|e| kube_error(&format!("reading Deployment {ns}/{}", c.deployment), e))?;
    if svc.is_none() && dep.is_none() {
        return Err(ActionError::NotApplicable(format!(
            "neither Service {ns}/{} nor Deployment {ns}/{} exists; name the console with \
             `with: {{namespace, service, deployment}}`",
            c.service, c.deployment
        )));
    }
    let mut live = Live::default();
    if let Some(s) = &svc {
        let spec = serde_json::to_value(&s.spec).unwrap_or_default();
        live.service = Some(LiveService {
            uid: s.metadata.uid.clone().unwrap_or_default(),
            rv: s.metadata.resource_version.clone().unwrap_or_default(),
            exposure: exposure_of(&spec),
            previous: previous_of(&s.metadata),
        });
    }
    if let Some(d) = &dep {
        let pod = d.spec.template.spec.as_ref();
        live.deployment = Some(LiveDeployment {
            uid: d.metadata.uid.clone().unwrap_or_default(),
            rv: d.metadata.resource_version.clone().unwrap_or_default(),
            args: pod
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| (c.name.clone(), c.args.clone().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
            previous: previous_of(&d.metadata),
        });
        live.service_account = Some(
            pod.and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
                .unwrap_or_else(|| "default".to_owned()),
        );
    }
    let ingresses = Api::<Ingress>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_error(&format!("listing Ingresses in {ns}"), e))?;
    for ing in ingresses.items {
        let name = ing.metadata.name.clone().unwrap_or_default();
        let wanted = match &p.ingresses {
            Some(names) => names.contains(&name),
            None => routes_to(&ing, &c.service),
        };
        if !wanted {
            continue;
        }
        live.ingresses.push(LiveIngress {
            uid: ing.metadata.uid.clone().unwrap_or_default(),
            rv: ing.metadata.resource_version.clone().unwrap_or_default(),
            auth: ing
                .metadata
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| k.starts_with(&format!("{NGINX}auth-")))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            previous: previous_of(&ing.metadata),
            name,
        });
    }
    if p.remove_cluster_admin_bindings.unwrap_or(true)
        && let Some(sa) = &live.service_account
    {
        let bindings = Api::<ClusterRoleBinding>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_error("listing ClusterRoleBindings", e))?;
        let is_sa = |s: &k8s_openapi::api::rbac::v1::Subject| {
            s.kind == "ServiceAccount" && s.name == *sa && s.namespace.as_deref() == Some(ns)
        };
        for b in bindings.items {
            if b.role_ref.kind != "ClusterRole" || b.role_ref.name != "cluster-admin" {
                continue;
            }
            let subjects = b.subjects.clone().unwrap_or_default();
            if !subjects.iter().any(is_sa) {
                continue;
            }
            if subjects.iter().all(is_sa) {
                live.bindings.push(b);
            } else {
                live.shared_bindings
                    .push(b.metadata.name.clone().unwrap_or_default());
            }
        }
    }
    Ok(live)
}

/// Annotations by key.
type Annotations = BTreeMap<String, String>;
/// Container name → (args before, args after).
type ArgChanges = BTreeMap<String, (Vec<String>, Vec<String>)>;

/// The changes the live state needs, computed the same way by plan and apply.
#[derive(Debug, Clone, Default)]
struct Work {
    /// The Service exposure to save (when it must become ClusterIP).
    service: Option<Value>,
    /// Container → (args before, args after), for containers with insecure args.
    args: ArgChanges,
    /// Ingress → (auth annotations before, to set).
    ingresses: BTreeMap<String, (Annotations, Annotations)>,
    /// Bindings to delete.
    bindings: Vec<ClusterRoleBinding>,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.service.is_none()
            && self.args.is_empty()
            && self.ingresses.is_empty()
            && self.bindings.is_empty()
    }
}

fn work(live: &Live, p: &Params) -> Work {
    let flags: Vec<String> = p
        .insecure_args
        .clone()
        .unwrap_or_else(|| INSECURE_ARGS.iter().map(|s| (*s).to_owned()).collect());
    let mut w = Work::default();
    if let Some(s) = &live.service
        && exposed(&s.exposure)
    {
        w.service = Some(s.exposure.clone());
    }
    if let Some(d) = &live.deployment {
        for (c, args) in &d.args {
            let kept: Vec<String> = args
                .iter()
                .filter(|a| !insecure(a, &flags))
                .cloned()
                .collect();
            if kept.len() != args.len() {
                w.args.insert(c.clone(), (args.clone(), kept));
            }
        }
    }
    if let Some(auth) = &p.auth {
        let want = auth.annotations();
        for ing in &live.ingresses {
            if want.iter().any(|(k, v)| ing.auth.get(k) != Some(v)) {
                w.ingresses
                    .insert(ing.name.clone(), (ing.auth.clone(), want.clone()));
            }
        }
    }
    w.bindings = live.bindings.clone();
    w
}

/// What the plan records and `apply` compares (scrubbed the same way a plan is).
fn observed(c: &Console, live: &Live) -> Value {
    let mut v = json!({
        "console": c,
        "service": live.service.as_ref().map(|s| json!({"uid": s.uid, "exposure": s.exposure})),
        "deployment": live.deployment.as_ref().map(|d| json!({"uid": d.uid, "args": d.args})),
        "ingresses": live.ingresses.iter().map(|i| json!({"name": i.name, "uid": i.uid, "auth": i.auth})).collect::<Vec<_>>(),
        "bindings": live.bindings.iter().map(|b| json!({"name": b.metadata.name, "uid": b.metadata.uid})).collect::<Vec<_>>(),
        "shared_bindings": live.shared_bindings,
        "service_account": live.service_account,
    });
    crate::redact::scrub_json(&mut v);
    v
}

fn binding_body(b: &ClusterRoleBinding) -> Value {
    json!({"roleRef": b.role_ref, "subjects": b.subjects})
}

fn draft(c: &Console, live: &Live, w: &Work, p: &Params) -> PlanDraft {
    let ns = &c.namespace;
    let svc_path = format!("v1/namespaces/{ns}/services/{}", c.service);
    let dep_path = format!("apps/v1/namespaces/{ns}/deployments/{}", c.deployment);
    let mut changes = Vec::new();
    let mut said = Vec::new();
    if let Some(before) = &w.service {
        said.push(format!(
            "Service {} from {} to ClusterIP",
            c.service,
            before["type"].as_str().unwrap_or("?")
        ));
        changes.push(Change {
            op: "update".into(),
            path: format!("{svc_path}: spec (type, ports, load balancer fields)"),
            from: Some(before.clone()),
            to: Some(cluster_ip(before)),
        });
        changes.push(Change {
            op: "update".into(),
            path: format!("{svc_path}: metadata.annotations[{PREVIOUS}]"),
            from: live
                .service
                .as_ref()
                .and_then(|s| s.previous.clone())
                .map(Value::String),
            to: Some(Value::String(before.to_string())),
        });
    }
    if !w.args.is_empty() {
        let before: BTreeMap<&String, &Vec<String>> =
            w.args.iter().map(|(k, (b, _))| (k, b)).collect();
        said.push(format!(
            "remove authentication-disabling arguments from Deployment {} ({})",
            c.deployment,
            w.args.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        for (container, (b, a)) in &w.args {
            changes.push(Change {
                op: "update".into(),
                path: format!("{dep_path}: spec.template.spec.containers[{container}].args"),
                from: Some(json!(b)),
                to: Some(json!(a)),
            });
        }
        changes.push(Change {
            op: "update".into(),
            path: format!("{dep_path}: metadata.annotations[{PREVIOUS}]"),
            from: live
                .deployment
                .as_ref()
                .and_then(|d| d.previous.clone())
                .map(Value::String),
            to: Some(Value::String(json!({"args": before}).to_string())),
        });
    }
    for (name, (before, set)) in &w.ingresses {
        said.push(format!("put authentication in front of Ingress {name}"));
        let mut after = before.clone();
        after.extend(set.clone());
        let path = format!("networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}");
        changes.push(Change {
            op: "update".into(),
            path: format!("{path}: metadata.annotations ({NGINX}auth-*)"),
            from: Some(json!(before)),
            to: Some(json!(after)),
        });
        changes.push(Change {
            op: "update".into(),
            path: format!("{path}: metadata.annotations[{PREVIOUS}]"),
            from: live
                .ingresses
                .iter()
                .find(|i| &i.name == name)
                .and_then(|i| i.previous.clone())
                .map(Value::String),
            to: Some(Value::String(json!({"auth": before}).to_string())),
        });
    }
    for b in &w.bindings {
        let name = b.metadata.name.clone().unwrap_or_default();
        said.push(format!("delete ClusterRoleBinding {name} (cluster-admin)"));
        changes.push(Change {
            op: "delete".into(),
            path: format!("rbac.authorization.k8s.io/v1/clusterrolebindings/{name}"),
            from: Some(binding_body(b)),
            to: None,
        });
    }
    let mut notes = Vec::new();
    if p.auth.is_none() && !live.ingresses.is_empty() {
        notes.push(format!(
            "Ingress {} still serves it without authentication (set `auth` to protect it)",
            live.ingresses
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !live.shared_bindings.is_empty() {
        notes.push(format!(
            "ClusterRoleBinding {} also binds other subjects to cluster-admin and is left for a \
             person to edit",
            live.shared_bindings.join(", ")
        ));
    }
    let summary = if w.is_empty() {
        format!("web console {} is already secured", c.shown())
    } else {
        format!("secure web console {}: {}", c.shown(), said.join("; "))
    };
    let summary = if notes.is_empty() {
        summary
    } else {
        format!("{summary}. Note: {}", notes.join("; "))
    };
    // Every object the plan changes besides the Service: guards count them, the engine locks them.
    let mut other_targets = Vec::new();
    if !w.args.is_empty() {
        other_targets.push(object_key(
            c.cluster.as_deref(),
            ns,
            "Deployment",
            &c.deployment,
        ));
    }
    for name in w.ingresses.keys() {
        other_targets.push(object_key(c.cluster.as_deref(), ns, "Ingress", name));
    }
    for b in &w.bindings {
        other_targets.push(
            ResourceRef::Kubernetes {
                cluster: c.cluster.clone(),
                namespace: None,
                kind: "ClusterRoleBinding".into(),
                name: b.metadata.name.clone().unwrap_or_default(),
                container: None,
            }
            .key(),
        );
    }
    PlanDraft {
        other_targets,
        target: object_key(c.cluster.as_deref(), ns, "Service", &c.service),
        summary,
        observed: observed(c, live),
        before: json!({
            "service": w.service,
            "args": w.args.iter().map(|(k, (b, _))| (k.clone(), json!(b))).collect::<Map<_, _>>(),
            "ingresses": w.ingresses.iter().map(|(k, (b, _))| (k.clone(), json!(b))).collect::<Map<_, _>>(),
            "bindings": w.bindings.iter().map(|b| b.metadata.name.clone()).collect::<Vec<_>>(),
        }),
        after: json!({
            "service": w.service.as_ref().map(cluster_ip),
            "args": w.args.iter().map(|(k, (_, a))| (k.clone(), json!(a))).collect::<Map<_, _>>(),
            "ingresses": w.ingresses.iter().map(|(k, (b, s))| {
                let mut a = b.clone();
                a.extend(s.clone());
                (k.clone(), json!(a))
            }).collect::<Map<_, _>>(),
            "bindings": Vec::<String>::new(),
        }),
        changes,
        noop: w.is_empty(),
    }
}

/// What `rollback` needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Undo {
    console: Option<Console>,
    /// Service uid and its exposure before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<(String, Value)>,
    /// Deployment uid and container → (args before, args left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deployment: Option<(String, ArgChanges)>,
    /// Ingress → (uid, auth annotations before, set).
    #[serde(default)]
    ingresses: BTreeMap<String, (String, Annotations, Annotations)>,
    /// The deleted bindings (roleRef, subjects, labels), to recreate.
    #[serde(default)]
    bindings: Vec<Value>,
}

fn merge_patch_service(rv: &str, before: &Value, annotation: Option<String>) -> Value {
    let mut spec = cluster_ip(before);
    if let Some(o) = spec.as_object_mut() {
        for f in EXPOSURE_FIELDS {
            o.insert((*f).to_owned(), Value::Null);
        }
    }
    json!({
        "metadata": {"resourceVersion": rv, "annotations": {PREVIOUS: annotation}},
        "spec": spec,
    })
}

async fn apply_work(
    client: &kube::Client,
    c: &Console,
    live: &Live,
    w: &Work,
) -> Result<(Undo, Vec<(Involved, String)>), ActionError> {
    let ns = &c.namespace;
    let mut undo = Undo {
        console: Some(c.clone()),
        ..Undo::default()
    };
    let mut touched = Vec::new();
    if let (Some(before), Some(s)) = (&w.service, &live.service) {
        let patch = merge_patch_service(&s.rv, before, Some(before.to_string()));
        Api::<Service>::namespaced(client.clone(), ns)
            .patch(&c.service, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| kube_error(&format!("making Service {ns}/{} ClusterIP", c.service), e))?;
        undo.service = Some((s.uid.clone(), before.clone()));
        touched.push((
            Involved {
                api_version: "v1".into(),
                kind: "Service".into(),
                namespace: Some(ns.clone()),
                name: c.service.clone(),
                uid: s.uid.clone(),
            },
            format!(
                "Firebreak changed this Service from {} to ClusterIP (previous spec in the {PREVIOUS} annotation)",
                before["type"].as_str().unwrap_or("?")
            ),
        ));
    }
    if let (false, Some(d)) = (w.args.is_empty(), &live.deployment) {
        let before: BTreeMap<&String, &Vec<String>> =
            w.args.iter().map(|(k, (b, _))| (k, b)).collect();
        let containers: Vec<Value> = w
            .args
            .iter()
            .map(|(name, (_, after))| json!({"name": name, "args": after}))
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": d.rv, "annotations": {PREVIOUS: json!({"args": before}).to_string()}},
            "spec": {"template": {"spec": {"containers": containers}}},
        });
        Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(
                &c.deployment,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(|e| {
                kube_error(
                    &format!("removing arguments of Deployment {ns}/{}", c.deployment),
                    e,
                )
            })?;
        undo.deployment = Some((d.uid.clone(), w.args.clone()));
        touched.push((
            Involved {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: Some(ns.clone()),
                name: c.deployment.clone(),
                uid: d.uid.clone(),
            },
            format!(
                "Firebreak removed authentication-disabling arguments from container(s) {}",
                w.args.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    for (name, (before, set)) in &w.ingresses {
        let Some(ing) = live.ingresses.iter().find(|i| &i.name == name) else {
            continue;
        };
        let mut annotations: Map<String, Value> =
            set.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        annotations.insert(PREVIOUS.into(), json!(json!({"auth": before}).to_string()));
        let patch = json!({"metadata": {"resourceVersion": ing.rv, "annotations": annotations}});
        Api::<Ingress>::namespaced(client.clone(), ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| kube_error(&format!("annotating Ingress {ns}/{name}"), e))?;
        undo.ingresses
            .insert(name.clone(), (ing.uid.clone(), before.clone(), set.clone()));
        touched.push((
            Involved {
                api_version: "networking.k8s.io/v1".into(),
                kind: "Ingress".into(),
                namespace: Some(ns.clone()),
                name: name.clone(),
                uid: ing.uid.clone(),
            },
            "Firebreak put authentication in front of this Ingress (ingress-nginx auth annotations)"
                .to_owned(),
        ));
    }
    let crbs = Api::<ClusterRoleBinding>::all(client.clone());
    for b in &w.bindings {
        let name = b.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: b.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match crbs.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => {
                return Err(kube_error(
                    &format!("deleting ClusterRoleBinding {name}"),
                    e,
                ));
            }
        }
        undo.bindings.push(json!({
            "metadata": {"name": name, "labels": b.metadata.labels, "annotations": b.metadata.annotations},
            "roleRef": b.role_ref,
            "subjects": b.subjects,
        }));
        if let Some(s) = &live.service {
            touched.push((
                Involved {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    namespace: Some(ns.clone()),
                    name: c.service.clone(),
                    uid: s.uid.clone(),
                },
                format!(
                    "Firebreak deleted ClusterRoleBinding {name}, which bound this console's \
                     ServiceAccount to cluster-admin"
                ),
            ));
        }
    }
    Ok((undo, touched))
}

impl Action for KubernetesSecureDashboard {
    fn kind(&self) -> &'static str {
        "kubernetes.secure-dashboard"
    }

    fn summary(&self) -> &'static str {
        "stop exposing an unauthenticated web console: Service to ClusterIP, drop skip-login \
         arguments, auth on its Ingress, delete its cluster-admin bindings"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("kubernetes", "core/services:get"),
            Permission::new("kubernetes", "core/services:patch"),
            Permission::new("kubernetes", "apps/deployments:get"),
            Permission::new("kubernetes", "apps/deployments:patch"),
            Permission::new("kubernetes", "networking.k8s.io/ingresses:list"),
            Permission::new("kubernetes", "networking.k8s.io/ingresses:patch"),
            Permission::new(
                "kubernetes",
                "rbac.authorization.k8s.io/clusterrolebindings:list",
            ),
            Permission::new(
                "kubernetes",
                "rbac.authorization.k8s.io/clusterrolebindings:delete",
            ),
            // Rollback only; a real API server also asks for `bind` on the ClusterRole, which
            // is deliberately not granted (see the module docs).
            Permission::new(
                "kubernetes",
                "rbac.authorization.k8s.io/clusterrolebindings:create",
            ),
            EVENTS_CREATE,
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "# namespace/service/deployment default to the finding's, else kubernetes-dashboard\nnamespace: kubernetes-dashboard\nauth:\n  mode: oauth2-proxy\n  auth_url: https://$host/oauth2/auth\n  auth_signin: https://$host/oauth2/start?rd=$escaped_request_uri\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        validate_with::<Params>(params, check)
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let params = checked_params::<Params>(input.params, check)?;
            let c = Console::of(&input, &params)?;
            let client = match connection(ctx, c.cluster.as_deref())? {
                Ok(client) => client,
                Err(why) => {
                    let target =
                        object_key(c.cluster.as_deref(), &c.namespace, "Service", &c.service);
                    let what = format!("secure web console {}", c.shown());
                    return Ok(not_connected_plan(self, target, &what, &why));
                }
            };
            let live = read(&client, &c, &params).await?;
            let w = work(&live, &params);
            Ok(draft(&c, &live, &w, &params).finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let params = checked_params::<Params>(input.params, check)?;
            let c = Console::of(&input, &params)?;
            let client = connected(ctx, c.cluster.as_deref())?;
            let live = read(&client, &c, &params).await?;
            let w = work(&live, &params);
            let outcome = |result: &str, undo: Option<Undo>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({
                    "console": c.shown(),
                    "service_to_cluster_ip": w.service.is_some(),
                    "containers_fixed": w.args.keys().collect::<Vec<_>>(),
                    "ingresses_protected": w.ingresses.keys().collect::<Vec<_>>(),
                    "bindings_deleted": w.bindings.iter().map(|b| b.metadata.name.clone()).collect::<Vec<_>>(),
                }),
                // Scrubbed like everything an outcome carries (it is printed and stored);
                // rollback takes exact values from the annotations on the objects.
                undo: undo
                    .and_then(|u| serde_json::to_value(u).ok())
                    .map(|mut v| {
                        crate::redact::scrub_json(&mut v);
                        v
                    }),
            };
            if w.is_empty() {
                return Ok(outcome("unchanged", None));
            }
            if plan.noop || observed(&c, &live) != plan.observed {
                return Err(ActionError::Drift(format!(
                    "web console {} changed since planning",
                    c.shown()
                )));
            }
            let (undo, touched) = apply_work(&client, &c, &live, &w).await?;
            for (object, message) in &touched {
                record_event(
                    &client,
                    object,
                    self.kind(),
                    &format!("{message} (playbook {})", input.playbook),
                )
                .await;
            }
            Ok(outcome("applied", Some(undo)))
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
            let Some(c) = &undo.console else {
                return Ok(());
            };
            let client = connected(ctx, c.cluster.as_deref())?;
            let ns = &c.namespace;
            if let Some((uid, before)) = &undo.service {
                let api = Api::<Service>::namespaced(client.clone(), ns);
                if let Some(s) = api
                    .get_opt(&c.service)
                    .await
                    .map_err(|e| kube_error(&format!("reading Service {ns}/{}", c.service), e))?
                {
                    let spec = serde_json::to_value(&s.spec).unwrap_or_default();
                    let ours = s.metadata.uid.as_deref() == Some(uid.as_str())
                        && !exposed(&exposure_of(&spec))
                        && previous_of(&s.metadata).is_some();
                    if ours {
                        let mut restore = before.clone();
                        if let Some(o) = restore.as_object_mut() {
                            for f in EXPOSURE_FIELDS {
                                o.entry((*f).to_owned()).or_insert(Value::Null);
                            }
                        }
                        let patch = json!({
                            "metadata": {"resourceVersion": s.metadata.resource_version, "annotations": {PREVIOUS: null}},
                            "spec": restore,
                        });
                        api.patch(&c.service, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map_err(|e| {
                                kube_error(&format!("restoring Service {ns}/{}", c.service), e)
                            })?;
                    }
                }
            }
            if let Some((uid, args)) = &undo.deployment {
                let api = Api::<Deployment>::namespaced(client.clone(), ns);
                if let Some(d) = api.get_opt(&c.deployment).await.map_err(|e| {
                    kube_error(&format!("reading Deployment {ns}/{}", c.deployment), e)
                })? && d.metadata.uid.as_deref() == Some(uid.as_str())
                    && previous_of(&d.metadata).is_some()
                {
                    let live: BTreeMap<String, Vec<String>> = d
                        .spec
                        .template
                        .spec
                        .as_ref()
                        .map(|s| {
                            s.containers
                                .iter()
                                .map(|c| (c.name.clone(), c.args.clone().unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default();
                    // The exact arguments before are in the annotation (the outcome's copy is
                    // scrubbed); what Firebreak left is compared scrubbed.
                    let saved: BTreeMap<String, Vec<String>> = previous_of(&d.metadata)
                        .and_then(|a| serde_json::from_str::<Value>(&a).ok())
                        .and_then(|v| serde_json::from_value(v["args"].clone()).ok())
                        .unwrap_or_default();
                    let scrubbed = |args: &Vec<String>| {
                        let mut v = json!(args);
                        crate::redact::scrub_json(&mut v);
                        v
                    };
                    let containers: Vec<Value> = args
                        .iter()
                        .filter(|(name, (_, left))| {
                            live.get(*name).map(scrubbed) == Some(json!(left))
                        })
                        .map(|(name, (before, _))| {
                            json!({"name": name, "args": saved.get(name).unwrap_or(before)})
                        })
                        .collect();
                    let patch = json!({
                        "metadata": {"resourceVersion": d.metadata.resource_version, "annotations": {PREVIOUS: null}},
                        "spec": {"template": {"spec": {"containers": containers}}},
                    });
                    api.patch(
                        &c.deployment,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                    .map_err(|e| {
                        kube_error(&format!("restoring Deployment {ns}/{}", c.deployment), e)
                    })?;
                }
            }
            let ingresses = Api::<Ingress>::namespaced(client.clone(), ns);
            for (name, (uid, before, set)) in &undo.ingresses {
                let Some(ing) = ingresses
                    .get_opt(name)
                    .await
                    .map_err(|e| kube_error(&format!("reading Ingress {ns}/{name}"), e))?
                else {
                    continue;
                };
                if ing.metadata.uid.as_deref() != Some(uid.as_str())
                    || previous_of(&ing.metadata).is_none()
                {
                    continue;
                }
                let current = ing.metadata.annotations.clone().unwrap_or_default();
                let mut annotations = Map::new();
                for (k, v) in set {
                    if current.get(k) == Some(v) {
                        annotations
                            .insert(k.clone(), before.get(k).map_or(Value::Null, |b| json!(b)));
                    }
                }
                annotations.insert(PREVIOUS.into(), Value::Null);
                let patch = json!({"metadata": {"resourceVersion": ing.metadata.resource_version, "annotations": annotations}});
                ingresses
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| kube_error(&format!("restoring Ingress {ns}/{name}"), e))?;
            }
            let crbs = Api::<ClusterRoleBinding>::all(client.clone());
            for body in &undo.bindings {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let binding: ClusterRoleBinding =
                    serde_json::from_value(body.clone()).map_err(|e| {
                        ActionError::Permanent(format!(
                            "the saved ClusterRoleBinding {name} is unreadable: {e}"
                        ))
                    })?;
                match crbs.create(&PostParams::default(), &binding).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {} // restored already
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        return Err(ActionError::Permanent(format!(
                            "recreating ClusterRoleBinding {name} was refused ({}): Firebreak may \
                             not bind cluster-admin; recreate it by hand from this outcome's undo.bindings",
                            s.message
                        )));
                    }
                    Err(e) => {
                        return Err(kube_error(
                            &format!("recreating ClusterRoleBinding {name}"),
                            e,
                        ));
                    }
                }
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
        let p = KubernetesSecureDashboard.validate(&json!({
            "namespace": "Bad_NS",
            "auth": {"mode": "oauth2-proxy", "auth_url": "ftp://x", "auth_signin": "https://x/start"},
            "insecure_args": ["enable-skip-login"],
        }));
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["namespace", "auth.auth_url", "insecure_args[0]"]);
        let p = KubernetesSecureDashboard.validate(&json!({"auth": {"mode": "digest"}}));
        assert!(p[0].path.starts_with("auth"), "{p:?}");
        let p = KubernetesSecureDashboard
            .validate(&json!({"auth": {"mode": "basic", "secret": "htpasswd", "realms": "x"}}));
        assert!(p[0].message.contains("unknown field"), "{p:?}");
        assert!(KubernetesSecureDashboard.validate(&Value::Null).is_empty());
        assert!(
            KubernetesSecureDashboard
                .validate(
                    &serde_saphyr::from_str::<Value>(KubernetesSecureDashboard.example()).unwrap()
                )
                .is_empty()
        );
    }

    #[test]
    fn only_enabling_forms_of_the_flags_are_insecure() {
        let flags: Vec<String> = INSECURE_ARGS.iter().map(|s| (*s).to_owned()).collect();
        assert!(insecure("--enable-skip-login", &flags));
        assert!(insecure("--enable-skip-login=true", &flags));
        assert!(!insecure("--enable-skip-login=false", &flags));
        assert!(!insecure("--enable-skip-login-x", &flags));
        assert!(!insecure("--auto-generate-certificates", &flags));
    }
}
