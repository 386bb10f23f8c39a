//! A stateful emulator of the Kubernetes API server (axum, in-process on `127.0.0.1:0`) that
//! kube-rs talks to over plain HTTP as to a real cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//!
//! Faithful where Firebreak depends on it, following the Kubernetes API reference
//! (https://kubernetes.io/docs/reference/using-api/api-concepts/) where the behaviour is
//! documented:
//! - the server sets `metadata.uid`, `metadata.creationTimestamp`, `metadata.generation` and a
//!   global `metadata.resourceVersion` counter on every write;
//! - errors are `Status` objects (`kind: Status`, `code`, `reason` NotFound / AlreadyExists /
//!   Conflict / BadRequest / UnsupportedMediaType / MethodNotAllowed);
//! - PUT, PATCH and DELETE with a stale `resourceVersion` (in the body, or DeleteOptions
//!   preconditions) answer 409 Conflict; PUT without one is an unconditional update (allowed
//!   for every built-in type emulated here);
//! - PATCH: JSON merge patch (RFC 7386), a strategic-merge subset, and server-side apply;
//! - the `scale` subresource (`autoscaling/v1 Scale`) of deployments, replicasets and
//!   statefulsets; `pods/{name}/log` from a store the test fills;
//! - graceful deletion of pods bound to a node (marked Terminating, never removed: no kubelet);
//! - list with `labelSelector` and `fieldSelector`, and watch from a resourceVersion.
//!
//! Not modelled: controllers (nothing reconciles a Deployment into pods; tests seed the whole
//! chain), admission, defaulting beyond the metadata above, finalizers, garbage collection,
//! field-manager conflicts of server-side apply, JSON patch (415), protobuf, pagination
//! (`limit`/`continue` are ignored: every list is one page).
//!
//! Every POST, PUT, PATCH and DELETE request is counted (whatever its outcome), so a test can
//! prove that a plan wrote nothing. Seeding through [`KubeApi::seed`] is not counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// One resource type the emulator serves.
#[derive(Debug, Clone, Copy)]
struct ResourceType {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    scalable: bool,
}

const fn rt(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    scalable: bool,
) -> ResourceType {
    ResourceType {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        scalable,
    }
}

/// Every type served, by group (all at version v1).
const TYPES: &[ResourceType] = &[
    rt("", "pods", "pod", "Pod", true, false),
    rt("", "services", "service", "Service", true, false),
    rt("", "secrets", "secret", "Secret", true, false),
    rt("", "configmaps", "configmap", "ConfigMap", true, false),
    rt("", "events", "event", "Event", true, false),
    rt("", "namespaces", "namespace", "Namespace", false, false),
    rt("", "nodes", "node", "Node", false, false),
    rt(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        true,
        true,
    ),
    rt(
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        true,
    ),
    rt(
        "apps",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        true,
    ),
    rt("apps", "daemonsets", "daemonset", "DaemonSet", true, false),
    rt(
        "networking.k8s.io",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        false,
    ),
    rt(
        "networking.k8s.io",
        "ingresses",
        "ingress",
        "Ingress",
        true,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        false,
    ),
];

const GROUPS: &[&str] = &["apps", "networking.k8s.io", "rbac.authorization.k8s.io"];

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, as the API server names a resource in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        TYPES
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }
}

/// Where one object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    group: &'static str,
    plural: &'static str,
    /// Empty for cluster-scoped objects.
    namespace: String,
    name: String,
}

/// One change, kept for watches.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    group: &'static str,
    plural: &'static str,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    /// The last resourceVersion handed out (global, as etcd's revision).
    rv: u64,
    uid: u64,
    history: Vec<Event>,
    /// Pod logs by (namespace, pod).
    logs: HashMap<(String, String), String>,
    /// Resources (plural) whose writes are refused with 403, as RBAC refuses them.
    forbidden: Vec<String>,
}

#[derive(Clone)]
struct Emu {
    inner: Arc<Mutex<Inner>>,
    writes: Arc<AtomicU64>,
    /// How long each write waits before it is carried out (milliseconds): a slow API server.
    write_delay_ms: Arc<AtomicU64>,
    events: broadcast::Sender<Event>,
}

/// A running emulator; it stops when the test's runtime ends.
pub struct KubeApi {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    emu: Emu,
}

impl KubeApi {
    /// Starts an emulator on `127.0.0.1:0` with the `default` namespace.
    pub async fn start() -> Self {
        let (events, _) = broadcast::channel(1024);
        let emu = Emu {
            inner: Arc::new(Mutex::new(Inner::default())),
            writes: Arc::new(AtomicU64::new(0)),
            write_delay_ms: Arc::new(AtomicU64::new(0)),
            events,
        };
        let app = Router::new()
            .route("/version", get(version))
            .route("/api", get(api_versions))
            .route("/apis", get(api_groups))
            .route("/api/{*rest}", any(handle))
            .route("/apis/{*rest}", any(handle))
            .with_state(emu.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let api = Self {
            base: format!("http://{addr}"),
            emu,
        };
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.seed(&ns);
        api
    }

    /// A kube client for this emulator.
    pub fn client(&self) -> kube::Client {
        let uri: http::Uri = self.base.parse().unwrap();
        kube::Client::try_from(kube::Config::new(uri)).unwrap()
    }

    /// POST/PUT/PATCH/DELETE requests received so far.
    pub fn writes(&self) -> u64 {
        self.emu.writes.load(Ordering::SeqCst)
    }

    /// Makes every later write wait `delay` before it is carried out (a slow API server).
    pub fn delay_writes(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.emu.write_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Stores a typed object as is (creating or replacing it, with server-set metadata), without
    /// counting a write; returns it as stored.
    pub fn seed<K>(&self, obj: &K) -> Value
    where
        K: k8s_openapi::Resource + Serialize,
    {
        let t = type_of::<K>();
        let body = serde_json::to_value(obj).unwrap();
        let namespace = body["metadata"]["namespace"]
            .as_str()
            .unwrap_or(if t.namespaced { "default" } else { "" })
            .to_owned();
        let name = body["metadata"]["name"]
            .as_str()
            .expect("a seeded object has a name")
            .to_owned();
        let key = Key {
            group: t.group,
            plural: t.plural,
            namespace,
            name,
        };
        let mut inner = self.emu.inner.lock().unwrap();
        let existing = inner.objects.get(&key).cloned();
        let (obj, kind) = match existing {
            Some(old) => (inner.updated(t, &old, body), "MODIFIED"),
            None => (inner.created(t, &key, body), "ADDED"),
        };
        self.emu.store(&mut inner, t, key, Some(obj.clone()), kind);
        obj
    }

    /// The stored object, typed.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let t = type_of::<K>();
        let key = Key {
            group: t.group,
            plural: t.plural,
            namespace: if t.namespaced {
                namespace.to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        };
        let inner = self.emu.inner.lock().unwrap();
        inner
            .objects
            .get(&key)
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Refuses every write to `plural` (e.g. `events`) with 403 Forbidden, as the API server
    /// answers a client whose RBAC role lacks the verb.
    pub fn forbid_writes(&self, plural: &str) {
        self.emu
            .inner
            .lock()
            .unwrap()
            .forbidden
            .push(plural.to_owned());
    }

    /// Sets the text `pods/{name}/log` returns for a pod.
    pub fn set_logs(&self, namespace: &str, pod: &str, text: &str) {
        self.emu
            .inner
            .lock()
            .unwrap()
            .logs
            .insert((namespace.to_owned(), pod.to_owned()), text.to_owned());
    }
}

fn type_of<K: k8s_openapi::Resource>() -> &'static ResourceType {
    ResourceType::find(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
        .unwrap_or_else(|| panic!("the emulator does not serve {}", K::KIND))
}

impl Inner {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// A new object: server-set metadata on top of the client's.
    fn created(&mut self, t: &ResourceType, key: &Key, mut body: Value) -> Value {
        self.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uid);
        let rv = self.next_rv();
        let obj = object_mut(&mut body);
        obj.insert("apiVersion".into(), t.api_version().into());
        obj.insert("kind".into(), t.kind.into());
        let meta = object_mut(obj.entry("metadata").or_insert_with(|| json!({})));
        meta.insert("name".into(), key.name.clone().into());
        if t.namespaced {
            meta.insert("namespace".into(), key.namespace.clone().into());
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), uid.into());
        meta.insert("resourceVersion".into(), rv.to_string().into());
        meta.insert("generation".into(), 1.into());
        meta.insert(
            "creationTimestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .into(),
        );
        body
    }

    /// `new` replacing `old`: identity and server-set metadata kept, a new resourceVersion, and
    /// `generation` bumped when `spec` changed.
    fn updated(&mut self, t: &ResourceType, old: &Value, mut new: Value) -> Value {
        let rv = self.next_rv();
        let spec_changed = old.get("spec") != new.get("spec");
        let obj = object_mut(&mut new);
        obj.insert("apiVersion".into(), t.api_version().into());
        obj.insert("kind".into(), t.kind.into());
        let meta = object_mut(obj.entry("metadata").or_insert_with(|| json!({})));
        for k in ["name", "namespace", "uid", "creationTimestamp"] {
            match old["metadata"].get(k) {
                Some(v) => meta.insert(k.into(), v.clone()),
                None => meta.remove(k),
            };
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        meta.insert(
            "generation".into(),
            (generation + i64::from(spec_changed)).into(),
        );
        meta.insert("resourceVersion".into(), rv.to_string().into());
        new
    }
}

impl Emu {
    /// Stores (or, with `None`, removes) an object and tells watchers.
    fn store(
        &self,
        inner: &mut Inner,
        t: &ResourceType,
        key: Key,
        obj: Option<Value>,
        kind: &'static str,
    ) {
        let (object, rv) = match obj {
            Some(o) => {
                inner.objects.insert(key.clone(), o.clone());
                (o, inner.rv)
            }
            None => {
                let mut o = inner.objects.remove(&key).unwrap_or(Value::Null);
                // A DELETED event carries the object at the resourceVersion of its deletion.
                let rv = inner.next_rv();
                o["metadata"]["resourceVersion"] = rv.to_string().into();
                (o, rv)
            }
        };
        let event = Event {
            rv,
            group: t.group,
            plural: t.plural,
            namespace: key.namespace,
            kind,
            object,
        };
        inner.history.push(event.clone());
        let _ = self.events.send(event);
    }
}

fn object_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Errors as Status objects.

fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn details(t: &ResourceType, name: &str) -> Value {
    json!({"name": name, "group": t.group, "kind": t.plural})
}

fn not_found(t: &ResourceType, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", t.qualified()),
        details(t, name),
    )
}

fn conflict(t: &ResourceType, name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            t.qualified()
        ),
        details(t, name),
    )
}

fn bad_request(message: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}))
}

fn plain_not_found(path: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
        json!({}),
    )
}

// ---------------------------------------------------------------------------------------------
// Version and discovery.

async fn version() -> Response {
    axum::Json(json!({
        "major": "1",
        "minor": "37",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": "v1.37.0-firebreak-emulator",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }))
    .into_response()
}

async fn api_versions() -> Response {
    axum::Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }))
    .into_response()
}

fn group_json(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

async fn api_groups() -> Response {
    let groups: Vec<Value> = GROUPS.iter().map(|g| group_json(g)).collect();
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        .into_response()
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in TYPES
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut verbs = vec![
            "create", "delete", "get", "list", "patch", "update", "watch",
        ];
        if t.namespaced {
            verbs.push("deletecollection");
        }
        resources.push(json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": verbs,
        }));
        if t.scalable {
            resources.push(json!({
                "name": format!("{}/scale", t.plural), "singularName": "", "namespaced": true,
                "group": "autoscaling", "version": "v1", "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.plural == "pods" {
            resources.push(json!({
                "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod",
                "verbs": ["get"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

// ---------------------------------------------------------------------------------------------
// Requests on objects.

/// What a request path names.
struct Target {
    t: &'static ResourceType,
    /// Empty for cluster-scoped, or a cluster-wide list of a namespaced type.
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

enum Parsed {
    Discovery(Value),
    Object(Target),
    NotFound,
}

fn parse_path(path: &str) -> Parsed {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] if GROUPS.contains(group) => return Parsed::Discovery(group_json(group)),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Parsed::NotFound,
    };
    if version != "v1" || !(group.is_empty() || GROUPS.contains(&group)) {
        return Parsed::NotFound;
    }
    let find = |plural: &str| ResourceType::find(group, version, plural);
    let (t, namespace, rest) = match rest {
        [] => return Parsed::Discovery(resource_list(group, version)),
        ["namespaces", ns, plural, rest @ ..] if find(plural).is_some_and(|t| t.namespaced) => {
            (find(plural), (*ns).to_owned(), rest)
        }
        [plural, rest @ ..] => (find(plural), String::new(), rest),
    };
    let Some(t) = t else {
        return Parsed::NotFound;
    };
    let (name, subresource) = match rest {
        [] => (None, None),
        [name] => (Some((*name).to_owned()), None),
        [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Parsed::NotFound,
    };
    Parsed::Object(Target {
        t,
        namespace,
        name,
        subresource,
    })
}

fn query(uri: &Uri) -> HashMap<String, String> {
    let url = reqwest::Url::parse(&format!("http://x{uri}")).unwrap();
    url.query_pairs().into_owned().collect()
}

async fn handle(
    State(emu): State<Emu>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        emu.writes.fetch_add(1, Ordering::SeqCst);
        let delay = emu.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    let target = match parse_path(uri.path()) {
        Parsed::Discovery(v) if method == Method::GET => return axum::Json(v).into_response(),
        Parsed::Object(t) => t,
        Parsed::Discovery(_) | Parsed::NotFound => return plain_not_found(uri.path()),
    };
    if method != Method::GET
        && emu
            .inner
            .lock()
            .unwrap()
            .forbidden
            .iter()
            .any(|p| p == target.t.plural)
    {
        // The Status RBAC denials carry (reason Forbidden, code 403).
        let verb = match method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            _ => "delete",
        };
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{} is forbidden: User \"system:serviceaccount:firebreak:firebreak\" cannot {verb} \
                 resource \"{}\" in API group \"{}\"",
                target.t.qualified(),
                target.t.plural,
                target.t.group
            ),
            json!({"kind": target.t.plural, "group": target.t.group}),
        );
    }
    let q = query(&uri);
    if target.t.namespaced && target.namespace.is_empty() && target.name.is_some() {
        return plain_not_found(uri.path());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    match (&method, &target.name, target.subresource.as_deref()) {
        (&Method::GET, None, None) => {
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                watch(&emu, &target, &q)
            } else {
                list(&emu, &target, &q)
            }
        }
        (&Method::POST, None, None) => create(&emu, &target, &body),
        (&Method::GET, Some(name), None) => get_object(&emu, &target, name),
        (&Method::PUT, Some(name), None) => replace(&emu, &target, name, &body),
        (&Method::PATCH, Some(name), None) => patch(&emu, &target, name, &content_type, &q, &body),
        (&Method::DELETE, Some(name), None) => delete(&emu, &target, name, &body),
        (m, Some(name), Some("scale")) if target.t.scalable => {
            scale(&emu, &target, name, m, &content_type, &body)
        }
        (&Method::GET, Some(name), Some("log")) if target.t.plural == "pods" => {
            logs(&emu, &target, name, &q)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on {}", uri.path()),
            json!({}),
        ),
    }
}

fn key(target: &Target, name: &str) -> Key {
    Key {
        group: target.t.group,
        plural: target.t.plural,
        namespace: target.namespace.clone(),
        name: name.to_owned(),
    }
}

fn get_object(emu: &Emu, target: &Target, name: &str) -> Response {
    let inner = emu.inner.lock().unwrap();
    match inner.objects.get(&key(target, name)) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => not_found(target.t, name),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| bad_request("the request body is not a JSON object".into()))
}

fn create(emu: &Emu, target: &Target, body: &Bytes) -> Response {
    let obj = match parse_json(body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                target.t.kind
            ),
            json!({}),
        );
    };
    if let Some(ns) = obj["metadata"]["namespace"].as_str()
        && ns != target.namespace
    {
        return bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        );
    }
    let k = key(target, &name);
    let mut inner = emu.inner.lock().unwrap();
    if inner.objects.contains_key(&k) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", target.t.qualified()),
            details(target.t, &name),
        );
    }
    let stored = inner.created(target.t, &k, obj);
    emu.store(&mut inner, target.t, k, Some(stored.clone()), "ADDED");
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

/// Whether a resourceVersion the client sent (if any) matches the stored one.
fn stale(sent: &Value, stored: &Value) -> bool {
    match sent["metadata"]["resourceVersion"].as_str() {
        None | Some("") => false,
        Some(rv) => Some(rv) != stored["metadata"]["resourceVersion"].as_str(),
    }
}

fn replace(emu: &Emu, target: &Target, name: &str, body: &Bytes) -> Response {
    let obj = match parse_json(body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if obj["metadata"]["name"].as_str() != Some(name) {
        return bad_request("the name of the object does not match the name on the URL".into());
    }
    let k = key(target, name);
    let mut inner = emu.inner.lock().unwrap();
    let Some(old) = inner.objects.get(&k).cloned() else {
        return not_found(target.t, name);
    };
    if stale(&obj, &old) {
        return conflict(target.t, name);
    }
    let stored = inner.updated(target.t, &old, obj);
    emu.store(&mut inner, target.t, k, Some(stored.clone()), "MODIFIED");
    axum::Json(stored).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    let t = object_mut(target);
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Lists the strategic-merge subset merges by `name` instead of replacing: containers,
/// initContainers, ephemeralContainers, volumes and env (their patch merge key in the API
/// reference is `name`). Everything else is a JSON merge patch, and `$patch`/`$retainKeys`
/// directives are not supported.
const MERGE_BY_NAME: &[&str] = &[
    "containers",
    "initContainers",
    "ephemeralContainers",
    "volumes",
    "env",
];

fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    let t = object_mut(target);
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else if let (true, Value::Array(items), Some(Value::Array(existing))) =
            (MERGE_BY_NAME.contains(&k.as_str()), v, t.get_mut(k))
        {
            for item in items {
                match existing
                    .iter_mut()
                    .find(|e| e.get("name").is_some() && e.get("name") == item.get("name"))
                {
                    Some(e) => strategic_merge(e, item),
                    None => existing.push(item.clone()),
                }
            }
        } else {
            strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn patch(
    emu: &Emu,
    target: &Target,
    name: &str,
    content_type: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    let apply = content_type == "application/apply-patch+yaml";
    let patch: Value = if apply {
        // Server-side apply takes YAML (of which JSON, what kube-rs sends, is a subset).
        match std::str::from_utf8(body)
            .ok()
            .and_then(|t| serde_saphyr::from_str::<Value>(t).ok())
        {
            Some(v) if v.is_object() => v,
            _ => return bad_request("the apply patch is not a YAML/JSON object".into()),
        }
    } else {
        match parse_json(body) {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
    let k = key(target, name);
    let mut inner = emu.inner.lock().unwrap();
    let old = inner.objects.get(&k).cloned();
    let mut obj = match (&old, apply) {
        (Some(o), _) => o.clone(),
        // Server-side apply creates what does not exist; other patches do not.
        (None, true) => json!({"metadata": {"name": name}}),
        (None, false) => return not_found(target.t, name),
    };
    if let Some(o) = &old
        && stale(&patch, o)
    {
        return conflict(target.t, name);
    }
    match content_type {
        "application/merge-patch+json" => merge_patch(&mut obj, &patch),
        "application/strategic-merge-patch+json" => strategic_merge(&mut obj, &patch),
        "application/apply-patch+yaml" => {
            let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return bad_request(
                    "PATCH, application/apply-patch+yaml: fieldManager is required".into(),
                );
            };
            // Simplification: the applied configuration is merged like a merge patch; fields
            // the manager applied before and leaves out now are not removed, and conflicts
            // between managers are not detected. managedFields records the manager only.
            merge_patch(&mut obj, &patch);
            let entry = json!({
                "manager": manager, "operation": "Apply", "apiVersion": target.t.api_version(),
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "fieldsType": "FieldsV1", "fieldsV1": {},
            });
            let meta = object_mut(object_mut(&mut obj).entry("metadata").or_insert(json!({})));
            let fields = meta.entry("managedFields").or_insert(json!([]));
            if let Value::Array(list) = fields {
                list.retain(|e| e["manager"] != json!(manager) || e["operation"] != "Apply");
                list.push(entry);
            }
        }
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({other}); accepted: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                ),
                json!({}),
            );
        }
    }
    let (stored, kind) = match old {
        Some(o) => (inner.updated(target.t, &o, obj), "MODIFIED"),
        None => (inner.created(target.t, &k, obj), "ADDED"),
    };
    emu.store(&mut inner, target.t, k, Some(stored.clone()), kind);
    let code = if kind == "ADDED" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (code, axum::Json(stored)).into_response()
}

fn delete(emu: &Emu, target: &Target, name: &str, body: &Bytes) -> Response {
    let k = key(target, name);
    let mut inner = emu.inner.lock().unwrap();
    let Some(old) = inner.objects.get(&k).cloned() else {
        return not_found(target.t, name);
    };
    // DeleteOptions.preconditions: uid and resourceVersion must match when given.
    let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let pre = &options["preconditions"];
    for field in ["uid", "resourceVersion"] {
        if let Some(want) = pre[field].as_str()
            && Some(want) != old["metadata"][field].as_str()
        {
            return conflict(target.t, name);
        }
    }
    // Graceful pod deletion (API reference, "Termination of Pods"): a pod bound to a node and
    // deleted with a grace period above zero (DeleteOptions.gracePeriodSeconds, else the pod's
    // spec.terminationGracePeriodSeconds, default 30) is only marked, with
    // metadata.deletionTimestamp and deletionGracePeriodSeconds; the kubelet removes it once its
    // containers stopped. No kubelet runs here, so it stays Terminating. An unbound pod, or
    // gracePeriodSeconds 0, is removed at once.
    if target.t.plural == "pods" && old["spec"]["nodeName"].is_string() {
        let grace = options["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        if grace > 0 {
            if old["metadata"]["deletionTimestamp"].is_string() {
                return axum::Json(old).into_response();
            }
            let mut marked = old.clone();
            let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
            marked["metadata"]["deletionTimestamp"] =
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
            marked["metadata"]["deletionGracePeriodSeconds"] = grace.into();
            let stored = inner.updated(target.t, &old, marked);
            emu.store(&mut inner, target.t, k, Some(stored.clone()), "MODIFIED");
            return axum::Json(stored).into_response();
        }
    }
    emu.store(&mut inner, target.t, k, None, "DELETED");
    // Without finalizers the API server answers with the object as it was deleted (some
    // resources answer with a Success Status instead; kube-rs accepts both).
    axum::Json(old).into_response()
}

fn scale_of(obj: &Value) -> Value {
    let labels = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": labels},
    })
}

fn scale(
    emu: &Emu,
    target: &Target,
    name: &str,
    method: &Method,
    content_type: &str,
    body: &Bytes,
) -> Response {
    let k = key(target, name);
    let mut inner = emu.inner.lock().unwrap();
    let Some(old) = inner.objects.get(&k).cloned() else {
        return not_found(target.t, name);
    };
    let current = scale_of(&old);
    let new_scale = match *method {
        Method::GET => return axum::Json(current).into_response(),
        Method::PUT | Method::PATCH => {
            let sent = match parse_json(body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            if stale(&sent, &old) {
                return conflict(target.t, name);
            }
            if *method == Method::PUT {
                sent
            } else if matches!(
                content_type,
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            ) {
                let mut s = current;
                merge_patch(&mut s, &sent);
                s
            } else {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("unsupported patch type for scale: {content_type}"),
                    json!({}),
                );
            }
        }
        _ => {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "scale supports get, update and patch".into(),
                json!({}),
            );
        }
    };
    let Some(replicas) = new_scale["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: must be >= 0"),
            json!({}),
        );
    };
    let mut obj = old.clone();
    obj["spec"]["replicas"] = replicas.into();
    let stored = inner.updated(target.t, &old, obj);
    emu.store(&mut inner, target.t, k, Some(stored.clone()), "MODIFIED");
    axum::Json(scale_of(&stored)).into_response()
}

fn logs(emu: &Emu, target: &Target, name: &str, q: &HashMap<String, String>) -> Response {
    let inner = emu.inner.lock().unwrap();
    if !inner.objects.contains_key(&key(target, name)) {
        return not_found(target.t, name);
    }
    let text = inner
        .logs
        .get(&(target.namespace.clone(), name.to_owned()))
        .cloned()
        .unwrap_or_default();
    let mut out = match q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            lines[lines.len().saturating_sub(n)..].concat()
        }
        None => text,
    };
    // limitBytes caps what is returned after tailLines applied; a cut may split a line.
    if let Some(n) = q.get("limitBytes").and_then(|n| n.parse::<usize>().ok())
        && out.len() > n
    {
        let mut cut = n;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    ([(header::CONTENT_TYPE, "text/plain")], out).into_response()
}

// ---------------------------------------------------------------------------------------------
// List and watch, with selectors.

/// One requirement of a label selector.
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Splits at commas outside parentheses (`a in (x,y),b` is two requirements).
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let set = |v: &str| -> Result<Vec<String>, String> {
        let v = v.trim();
        let inner = v
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("expected a (set) in `{v}`"))?;
        Ok(inner.split(',').map(|x| x.trim().to_owned()).collect())
    };
    split_top(s)
        .into_iter()
        .map(|r| {
            if let Some(k) = r.strip_prefix('!') {
                Ok(LabelReq::NotExists(k.trim().to_owned()))
            } else if let Some((k, v)) = r.split_once("!=") {
                Ok(LabelReq::NotEq(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Ok(LabelReq::Eq(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = r.split_once(" notin ") {
                Ok(LabelReq::NotIn(k.trim().into(), set(v)?))
            } else if let Some((k, v)) = r.split_once(" in ") {
                Ok(LabelReq::In(k.trim().into(), set(v)?))
            } else if r.chars().all(|c| c.is_alphanumeric() || "-_./".contains(c)) {
                Ok(LabelReq::Exists(r))
            } else {
                Err(format!("unable to parse requirement: `{r}`"))
            }
        })
        .collect()
}

fn labels_match(obj: &Value, reqs: &[LabelReq]) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
        LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
    })
}

/// Field labels the API server supports per type (a subset of the reference's list; others
/// are refused with 400 as the real server does).
fn field_supported(t: &ResourceType, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match t.plural {
        "pods" => matches!(
            field,
            "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "status.phase"
                | "status.podIP"
        ),
        "events" => {
            field.starts_with("involvedObject.")
                || matches!(field, "reason" | "reportingComponent" | "source" | "type")
        }
        "secrets" => field == "type",
        _ => false,
    }
}

fn field_value(obj: &Value, field: &str) -> String {
    let v = field.split('.').fold(obj, |v, k| &v[k]);
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `(field, value, equal)` requirements.
fn parse_field_selector(t: &ResourceType, s: &str) -> Result<Vec<(String, String, bool)>, String> {
    split_top(s)
        .into_iter()
        .map(|r| {
            let (f, v, eq) = if let Some((f, v)) = r.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                (f, v, true)
            } else {
                return Err(format!("invalid selector: `{r}`; expected field=value"));
            };
            let f = f.trim();
            if !field_supported(t, f) {
                return Err(format!("field label not supported: {f}"));
            }
            Ok((f.to_owned(), v.trim().to_owned(), eq))
        })
        .collect()
}

fn fields_match(obj: &Value, reqs: &[(String, String, bool)]) -> bool {
    reqs.iter()
        .all(|(f, v, eq)| (field_value(obj, f) == *v) == *eq)
}

struct Filter {
    group: &'static str,
    plural: &'static str,
    namespace: String,
    labels: Vec<LabelReq>,
    fields: Vec<(String, String, bool)>,
}

impl Filter {
    fn new(target: &Target, q: &HashMap<String, String>) -> Result<Self, Response> {
        let labels = match q.get("labelSelector") {
            Some(s) => parse_label_selector(s).map_err(bad_request)?,
            None => Vec::new(),
        };
        let fields = match q.get("fieldSelector") {
            Some(s) => parse_field_selector(target.t, s).map_err(bad_request)?,
            None => Vec::new(),
        };
        Ok(Self {
            group: target.t.group,
            plural: target.t.plural,
            namespace: target.namespace.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, group: &str, plural: &str, namespace: &str, obj: &Value) -> bool {
        group == self.group
            && plural == self.plural
            && (self.namespace.is_empty() || self.namespace == namespace)
            && labels_match(obj, &self.labels)
            && fields_match(obj, &self.fields)
    }
}

fn list(emu: &Emu, target: &Target, q: &HashMap<String, String>) -> Response {
    let filter = match Filter::new(target, q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let inner = emu.inner.lock().unwrap();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|(k, v)| filter.matches(k.group, k.plural, &k.namespace, v))
        .map(|(_, v)| v.clone())
        .collect();
    axum::Json(json!({
        "apiVersion": target.t.api_version(),
        "kind": format!("{}List", target.t.kind),
        "metadata": {"resourceVersion": inner.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// Newline-delimited WatchEvents: from `resourceVersion` (exclusive) when given; when it is
/// unset or "0", synthetic ADDED events for every current object first, as the API reference
/// describes. Ends after `timeoutSeconds` (default 1800) or when the client goes away. An
/// object that stops matching a selector is not turned into a DELETED event (simplification).
fn watch(emu: &Emu, target: &Target, q: &HashMap<String, String>) -> Response {
    let filter = match Filter::new(target, q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let from = q
        .get("resourceVersion")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|rv| *rv > 0);
    let inner = emu.inner.lock().unwrap();
    // Subscribed while holding the lock: no event falls between the backlog and the live feed.
    let rx = emu.events.subscribe();
    let mut backlog: VecDeque<Bytes> = VecDeque::new();
    let last = match from {
        Some(rv) => {
            for e in inner.history.iter().filter(|e| e.rv > rv) {
                if filter.matches(e.group, e.plural, &e.namespace, &e.object) {
                    backlog.push_back(event_line(e.kind, &e.object));
                }
            }
            rv.max(inner.rv)
        }
        None => {
            for (k, v) in &inner.objects {
                if filter.matches(k.group, k.plural, &k.namespace, v) {
                    backlog.push_back(event_line("ADDED", v));
                }
            }
            inner.rv
        }
    };
    drop(inner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let stream = futures_util::stream::unfold(
        (backlog, rx, filter, last),
        move |(mut backlog, mut rx, filter, last)| async move {
            loop {
                if let Some(line) = backlog.pop_front() {
                    return Some((Ok::<_, std::io::Error>(line), (backlog, rx, filter, last)));
                }
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(e)) => {
                        if e.rv > last && filter.matches(e.group, e.plural, &e.namespace, &e.object)
                        {
                            backlog.push_back(event_line(e.kind, &e.object));
                        }
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
