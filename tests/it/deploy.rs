//! deploy/: the Dockerfile, the kustomize base and the Helm chart, checked without docker,
//! kustomize or helm (none can be installed here): every manifest is parsed into the
//! `k8s-openapi` types (a field those types do not know fails the test), the chart's templates
//! are rendered by a renderer of exactly the subset they use, and what the manifests say is
//! checked against the binary: the generated RBAC, the routes the server serves, the flags
//! `firebreak serve` takes and the configuration keys it loads.
//!
//! Generated files here (`deploy/kustomize/rbac.yaml`, the playbooks ConfigMaps, the chart's
//! ClusterRole) are rewritten by running these tests with `FIREBREAK_UPDATE_DEPLOY=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::service::{TOKEN, start_with};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The documents of a YAML stream, as JSON values; documents holding only comments are skipped.
fn docs(what: &str, text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let has_content = current
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
            if has_content {
                let v: Value = serde_saphyr::from_str(&current)
                    .unwrap_or_else(|e| panic!("{what}: not YAML: {e}\n{current}"));
                out.push(v);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    out
}

/// `doc` as the Kubernetes type `K`. The type is written back and must equal the document: a
/// field `K` does not know (a typo, a wrong level) would be dropped, so it fails here.
fn typed<K: DeserializeOwned + serde::Serialize>(what: &str, doc: &Value) -> K {
    let k: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid {}: {e}", std::any::type_name::<K>()));
    let back = serde_json::to_value(&k).unwrap();
    assert_eq!(
        &back, doc,
        "{what}: fields the Kubernetes API does not know (they were dropped)"
    );
    k
}

/// The Prometheus Operator's ServiceMonitor (not in k8s-openapi): the fields the manifests use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Read through Debug and serde only.
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ServiceMonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

/// Every object of one way to deploy (kustomize base or rendered chart), typed.
#[derive(Default)]
struct Manifests {
    namespace: Option<Namespace>,
    service_account: Option<ServiceAccount>,
    cluster_role: Option<ClusterRole>,
    binding: Option<ClusterRoleBinding>,
    config_maps: BTreeMap<String, ConfigMap>,
    deployment: Option<Deployment>,
    service: Option<Service>,
    network_policy: Option<NetworkPolicy>,
    pdb: Option<PodDisruptionBudget>,
    service_monitor: Option<ServiceMonitor>,
}

impl Manifests {
    fn add(&mut self, what: &str, doc: &Value) {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        match (api, kind) {
            ("v1", "Namespace") => self.namespace = Some(typed(what, doc)),
            ("v1", "ServiceAccount") => self.service_account = Some(typed(what, doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_role = Some(typed(what, doc));
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.binding = Some(typed(what, doc));
            }
            ("v1", "ConfigMap") => {
                let cm: ConfigMap = typed(what, doc);
                let name = cm.metadata.name.clone().unwrap();
                self.config_maps.insert(name, cm);
            }
            ("apps/v1", "Deployment") => self.deployment = Some(typed(what, doc)),
            ("v1", "Service") => self.service = Some(typed(what, doc)),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                self.network_policy = Some(typed(what, doc));
            }
            ("policy/v1", "PodDisruptionBudget") => self.pdb = Some(typed(what, doc)),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                self.service_monitor = Some(
                    serde_json::from_value(doc.clone())
                        .unwrap_or_else(|e| panic!("{what}: ServiceMonitor: {e}")),
                );
            }
            other => panic!("{what}: unexpected object {other:?}"),
        }
    }

    fn container(&self) -> Container {
        let d = self.deployment.as_ref().expect("a Deployment");
        let spec = d.spec.template.spec.clone().unwrap();
        assert_eq!(spec.containers.len(), 1);
        spec.containers[0].clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Generated files.

/// The ClusterRole document of `firebreak actions rbac`.
fn generated_cluster_role() -> String {
    let rbac = firebreak::action::rbac::kubernetes_rbac();
    let doc = rbac
        .split("\n---\n")
        .find(|d| d.contains("\nkind: ClusterRole\n"))
        .unwrap()
        .trim_end();
    format!(
        "# Generated from `firebreak actions rbac` (the ClusterRole of deploy/rbac.yaml). Do not\n\
         # edit: tests/it/deploy.rs checks it (FIREBREAK_UPDATE_DEPLOY=1 rewrites it).\n{doc}\n"
    )
}

/// The shipped playbooks as a ConfigMap, one key per file, with `namespace_line` (if any) in
/// its metadata. For the Helm chart (`helm`), the `{{` of the playbooks' own (minijinja)
/// templates is written as `{{ "{{" }}`, which Helm renders back to `{{`.
fn generated_playbooks_configmap(namespace_line: &str, helm: bool) -> String {
    let mut out = String::from(
        "# Generated from playbooks/*.yaml. Do not edit: tests/it/deploy.rs checks it\n\
         # (FIREBREAK_UPDATE_DEPLOY=1 rewrites it).\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: firebreak-playbooks\n",
    );
    out.push_str(namespace_line);
    out.push_str("  labels:\n    app.kubernetes.io/name: firebreak\ndata:\n");
    for (name, text) in shipped_playbooks() {
        out.push_str(&format!("  {name}: |\n"));
        for line in text.lines() {
            if line.is_empty() {
                out.push('\n');
            } else if helm {
                out.push_str(&format!("    {}\n", line.replace("{{", "{{ \"{{\" }}")));
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

/// playbooks/*.yaml: file name → text, in name order.
fn shipped_playbooks() -> BTreeMap<String, String> {
    std::fs::read_dir(repo("playbooks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_generated_deploy_files_are_current() {
    let files = [
        (
            "deploy/kustomize/rbac.yaml",
            firebreak::action::rbac::kubernetes_rbac(),
        ),
        (
            "deploy/helm/firebreak/templates/clusterrole.yaml",
            generated_cluster_role(),
        ),
        (
            "deploy/kustomize/playbooks.yaml",
            generated_playbooks_configmap("", false),
        ),
        (
            "deploy/helm/firebreak/templates/playbooks-configmap.yaml",
            generated_playbooks_configmap("  namespace: {{ .Release.Namespace }}\n", true),
        ),
    ];
    let update = std::env::var_os("FIREBREAK_UPDATE_DEPLOY").is_some();
    let mut stale = Vec::new();
    for (rel, want) in files {
        let have = std::fs::read_to_string(repo(rel)).unwrap_or_default();
        if have != want {
            if update {
                std::fs::write(repo(rel), want).unwrap();
            } else {
                stale.push(rel);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {stale:?}\nhint: run the deploy tests with FIREBREAK_UPDATE_DEPLOY=1"
    );
}

// ---------------------------------------------------------------------------------------------
// kustomize.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: String,
    resources: Vec<String>,
    images: Vec<KustomizeImage>,
    patches: Vec<KustomizePatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_name: String,
    new_tag: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KustomizePatch {
    path: String,
}

/// The kustomize base, typed; its kustomization names every file of the directory.
fn kustomize() -> (Kustomization, Manifests) {
    let k: Kustomization = serde_saphyr::from_str(&read("deploy/kustomize/kustomization.yaml"))
        .unwrap_or_else(|e| panic!("kustomization.yaml: {e}"));
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let mut named: Vec<String> = k
        .resources
        .iter()
        .chain(k.patches.iter().map(|p| &p.path))
        .cloned()
        .collect();
    named.push("kustomization.yaml".into());
    named.sort();
    let mut present: Vec<String> = std::fs::read_dir(repo("deploy/kustomize"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(named, present, "every file is a resource or a patch");
    let mut m = Manifests::default();
    for rel in &k.resources {
        let what = format!("deploy/kustomize/{rel}");
        for doc in docs(&what, &read(&what)) {
            m.add(&what, &doc);
        }
    }
    (k, m)
}

#[test]
fn the_kustomize_base_parses_into_the_kubernetes_types_and_patches_in_irsa() {
    let (k, m) = kustomize();
    assert_eq!(k.namespace, "firebreak");
    assert_eq!(
        m.namespace.as_ref().unwrap().metadata.name.as_deref(),
        Some("firebreak")
    );
    // The IRSA patch is a ServiceAccount patch on the base's ServiceAccount.
    let patch = &k.patches[0].path;
    let docs = docs(patch, &read(&format!("deploy/kustomize/{patch}")));
    assert_eq!(docs.len(), 1);
    let sa: ServiceAccount = typed(patch, &docs[0]);
    assert_eq!(
        sa.metadata.name,
        m.service_account.as_ref().unwrap().metadata.name
    );
    let arn = &sa.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"];
    assert!(arn.starts_with("arn:aws:iam::") && arn.ends_with(":role/firebreak"));
    // The image is the one the Deployment names, at the crate's version.
    assert_eq!(k.images.len(), 1);
    assert_eq!(
        m.container().image.as_deref(),
        Some(k.images[0].name.as_str())
    );
    assert_eq!(k.images[0].new_name, "firebreak");
    assert_eq!(k.images[0].new_tag, env!("CARGO_PKG_VERSION"));
    assert!(m.service_monitor.is_some() && m.pdb.is_some() && m.network_policy.is_some());
    check_deployment("kustomize", &m, "firebreak", &BTreeMap::new());
}

// ---------------------------------------------------------------------------------------------
// Helm: a renderer of exactly the subset the chart uses.

/// Renders a chart template with `values`: `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`,
/// `{{ if .Values.x }}` / `{{ if not .Values.x }}` … `{{ end }}`, a string constant
/// (`{{ "{{" }}`, how text that holds `{{` is written) and `{{-` / `-}}` trimming as Go
/// templates do. Anything else fails the test: keep the chart within this subset.
fn render(name: &str, template: &str, values: &Value, namespace: &str) -> String {
    enum Tok {
        Text(String),
        Action(String),
    }
    let mut toks = Vec::new();
    let mut rest = template;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_owned();
        if trim_next {
            text = text.trim_start().to_owned();
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("{name}: unclosed {{{{"));
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end().to_owned();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-') {
            trim_next = true;
            action = a;
        }
        toks.push(Tok::Text(text));
        toks.push(Tok::Action(action.trim().to_owned()));
        rest = &after[end + 2..];
    }
    toks.push(Tok::Text(if trim_next {
        rest.trim_start().to_owned()
    } else {
        rest.to_owned()
    }));

    let lookup = |path: &str| -> Value {
        if path == ".Release.Namespace" {
            return json!(namespace);
        }
        let keys = path
            .strip_prefix(".Values.")
            .unwrap_or_else(|| panic!("{name}: unsupported template value {path}"));
        let mut v = values;
        for k in keys.split('.') {
            v = v
                .get(k)
                .unwrap_or_else(|| panic!("{name}: {path} is not in values.yaml"));
        }
        v.clone()
    };
    let truthy = |v: &Value| match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    };
    let mut out = String::new();
    let mut emitting: Vec<bool> = Vec::new();
    for tok in toks {
        let on = emitting.iter().all(|b| *b);
        match tok {
            Tok::Text(t) => {
                if on {
                    out.push_str(&t);
                }
            }
            Tok::Action(a) => {
                if let Some(cond) = a.strip_prefix("if ") {
                    let value = match cond.trim().strip_prefix("not ") {
                        Some(p) => !truthy(&lookup(p.trim())),
                        None => truthy(&lookup(cond.trim())),
                    };
                    emitting.push(value);
                } else if let Some(literal) = a
                    .strip_prefix('"')
                    .and_then(|l| l.strip_suffix('"'))
                    .filter(|l| !l.contains(['"', '\\']))
                {
                    if on {
                        out.push_str(literal);
                    }
                } else if a == "end" {
                    emitting
                        .pop()
                        .unwrap_or_else(|| panic!("{name}: end without if"));
                } else if on {
                    match lookup(&a) {
                        Value::String(s) => out.push_str(&s),
                        v @ (Value::Number(_) | Value::Bool(_)) => out.push_str(&v.to_string()),
                        v => panic!("{name}: {a} is not a scalar: {v}"),
                    }
                }
            }
        }
    }
    assert!(emitting.is_empty(), "{name}: if without end");
    out
}

/// The chart rendered with values.yaml merged with `set` (dotted keys), typed.
fn helm(set: &[(&str, Value)], namespace: &str) -> Manifests {
    let chart: Value = serde_saphyr::from_str(&read("deploy/helm/firebreak/Chart.yaml")).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "firebreak");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let mut values: Value =
        serde_saphyr::from_str(&read("deploy/helm/firebreak/values.yaml")).unwrap();
    for (key, v) in set {
        let mut at = &mut values;
        for k in key.split('.') {
            at = at
                .get_mut(k)
                .unwrap_or_else(|| panic!("{key} is not in values.yaml"));
        }
        *at = v.clone();
    }
    let mut m = Manifests::default();
    let mut names: Vec<PathBuf> = std::fs::read_dir(repo("deploy/helm/firebreak/templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in docs(&what, &render(&what, &text, &values, namespace)) {
            m.add(&what, &doc);
        }
    }
    m
}

#[test]
fn the_renderer_trims_and_branches_as_go_templates_do() {
    let values = json!({"a": {"on": true, "off": "", "name": "x"}});
    let t = "k:\n{{- if .Values.a.on }}\n  on: {{ .Values.a.name }}\n{{- end }}\n{{- if .Values.a.off }}\n  off: 1\n{{- end }}\n{{- if not .Values.a.off }}\n  ns: {{ .Release.Namespace }}\n{{- end }}\nz: 1\n";
    assert_eq!(
        render("t", t, &values, "sec"),
        "k:\n  on: x\n  ns: sec\nz: 1\n"
    );
}

#[test]
fn the_helm_chart_renders_into_the_kubernetes_types_with_defaults_and_with_every_option() {
    let m = helm(&[], "security");
    assert!(m.service_monitor.is_none(), "off by default");
    assert!(
        m.service_account
            .as_ref()
            .unwrap()
            .metadata
            .annotations
            .is_none()
    );
    assert!(m.namespace.is_none(), "Helm creates the release namespace");
    let c = m.container();
    assert_eq!(
        c.image.as_deref(),
        Some(format!("firebreak:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    check_deployment("helm defaults", &m, "security", &BTreeMap::new());
    let volumes = m
        .deployment
        .as_ref()
        .unwrap()
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap();
    let data = volumes.iter().find(|v| v.name == "data").unwrap();
    assert!(data.empty_dir.is_some() && data.persistent_volume_claim.is_none());

    let role = "arn:aws:iam::111122223333:role/firebreak";
    let m = helm(
        &[
            ("serviceAccount.roleArn", json!(role)),
            ("aws.region", json!("eu-west-1")),
            ("github.existingSecret", json!("firebreak-github")),
            ("store.existingSecret", json!("firebreak-store")),
            ("persistence.existingClaim", json!("firebreak-ledger")),
            ("serviceMonitor.enabled", json!(true)),
        ],
        "security",
    );
    let sa = m.service_account.as_ref().unwrap();
    assert_eq!(
        sa.metadata.annotations.as_ref().unwrap()["eks.amazonaws.com/role-arn"],
        role
    );
    let sm = m.service_monitor.as_ref().expect("enabled");
    assert_eq!(sm.spec.endpoints[0].path, "/metrics");
    assert_eq!(sm.spec.endpoints[0].port, "http");
    assert_eq!(
        sm.spec.selector.match_labels,
        m.service.as_ref().unwrap().metadata.labels
    );
    let config = check_deployment(
        "helm with every option",
        &m,
        "security",
        &BTreeMap::from([("github", "firebreak-github"), ("store", "firebreak-store")]),
    );
    assert_eq!(config.aws.region, "eu-west-1");
    assert!(config.github.token.is_some() && config.github.webhook_secret.is_some());
    assert_eq!(config.store.url, "value-of-firebreak-store/url");
    let volumes = m
        .deployment
        .as_ref()
        .unwrap()
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap();
    let data = volumes.iter().find(|v| v.name == "data").unwrap();
    assert!(data.empty_dir.is_none());
    assert_eq!(
        data.persistent_volume_claim.as_ref().unwrap().claim_name,
        "firebreak-ledger"
    );
}

#[test]
fn the_chart_and_the_kustomize_base_deploy_the_same_objects() {
    let (k, base) = kustomize();
    let chart = helm(
        &[
            ("serviceMonitor.enabled", json!(true)),
            ("image.repository", json!(k.images[0].new_name)),
            ("image.tag", json!(k.images[0].new_tag)),
        ],
        &k.namespace,
    );
    // As kustomize emits them: in its namespace, its image rewritten.
    let placed = |v: Value| -> Value {
        let mut v = v;
        if v["kind"] != "ClusterRole" && v["kind"] != "ClusterRoleBinding" {
            v["metadata"]["namespace"] = json!(k.namespace);
        }
        v
    };
    let same = |what: &str, a: Value, b: Value| assert_eq!(placed(a), b, "{what}");
    let js = |v: &dyn erased::Ser| v.json();
    same(
        "ServiceAccount",
        js(&base.service_account),
        js(&chart.service_account),
    );
    same(
        "ClusterRole",
        js(&base.cluster_role),
        js(&chart.cluster_role),
    );
    same("ClusterRoleBinding", js(&base.binding), js(&chart.binding));
    same("Service", js(&base.service), js(&chart.service));
    same(
        "NetworkPolicy",
        js(&base.network_policy),
        js(&chart.network_policy),
    );
    same("PodDisruptionBudget", js(&base.pdb), js(&chart.pdb));
    same(
        "playbooks ConfigMap",
        js(&base.config_maps.get("firebreak-playbooks")),
        js(&chart.config_maps.get("firebreak-playbooks")),
    );
    let mut d = js(&base.deployment);
    d["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!(format!("{}:{}", k.images[0].new_name, k.images[0].new_tag));
    let mut c = js(&chart.deployment);
    c["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("imagePullPolicy");
    same("Deployment", d, c);
}

/// Object-safe `Serialize` to JSON, so the comparisons above can take any of the typed fields.
mod erased {
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for Option<T> {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self.as_ref().expect("present in both")).unwrap()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What both say, checked against the binary.

/// The Deployment of `m` (in `namespace`): non-root with a read-only root filesystem, probes on
/// the served port, every secret from an existing Secret (`secrets` names the optional ones
/// expected), RBAC equal to the generated one, and a configuration that `firebreak serve`
/// loads. Returns that configuration.
fn check_deployment(
    what: &str,
    m: &Manifests,
    namespace: &str,
    secrets: &BTreeMap<&str, &str>,
) -> firebreak::config::Config {
    let d = m.deployment.as_ref().unwrap();
    let pod = d.spec.template.spec.as_ref().unwrap();
    let c = m.container();

    // Non-root, read-only root filesystem, no privilege escalation, no capabilities.
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true), "{what}");
    assert_eq!(psc.run_as_user, Some(65532), "{what}: distroless's nonroot");
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true), "{what}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let resources = c.resources.as_ref().unwrap();
    assert!(
        resources.requests.is_some() && resources.limits.is_some(),
        "{what}"
    );

    // The ServiceAccount it runs as is the one the generated binding names.
    let sa = m.service_account.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name, "{what}");
    let binding = m.binding.as_ref().unwrap();
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    if let Some(ns) = &sa.metadata.namespace {
        assert_eq!(ns, namespace, "{what}");
    }
    assert_eq!(subject.namespace.as_deref(), Some(namespace), "{what}");
    let role = m.cluster_role.as_ref().unwrap();
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let generated: ClusterRole = typed(
        "firebreak actions rbac",
        &docs("rbac", &firebreak::action::rbac::kubernetes_rbac())[1],
    );
    assert_eq!(
        role, &generated,
        "{what}: the ClusterRole is the generated one"
    );

    // Probes on the container's `http` port, at the routes the server serves
    // (the_probe_and_metrics_paths_are_served_by_firebreak_serve).
    let port = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .unwrap();
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into())
        );
    }
    let svc = m.service.as_ref().unwrap();
    let sp = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(
        sp.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
    );
    assert_eq!(
        svc.spec.as_ref().unwrap().selector,
        d.spec.selector.match_labels,
        "{what}: the Service selects the pods"
    );

    // Every environment variable is a Secret reference, or (`*_ENV`) the name of one that is.
    let env = c.env.clone().unwrap_or_default();
    let mut process_env: Vec<(String, String)> = Vec::new();
    let mut secret_names = BTreeMap::new();
    for e in &env {
        if let Some(v) = &e.value {
            assert!(
                e.name.ends_with("_ENV")
                    && env.iter().any(|o| &o.name == v && o.value_from.is_some()),
                "{what}: {} has an inline value",
                e.name
            );
            process_env.push((e.name.clone(), v.clone()));
        } else {
            let r = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: {} is not from a Secret", e.name));
            secret_names.insert(r.name.clone(), ());
            process_env.push((e.name.clone(), format!("value-of-{}/{}", r.name, r.key)));
        }
    }
    for secret in secrets.values() {
        assert!(
            secret_names.contains_key(*secret),
            "{what}: {secret} is used"
        );
    }

    // The arguments are flags of `firebreak serve` and name the mounted configuration, which
    // `firebreak serve` loads (the same loader) with that environment.
    let args = c.args.clone().unwrap();
    let help = firebreak_help(&["serve", "--help"]);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "{what}: {flag} is not a serve flag"
        );
    }
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let mounts = c.volume_mounts.clone().unwrap();
    let mount = mounts
        .iter()
        .find(|vm| config_path.starts_with(&format!("{}/", vm.mount_path)))
        .unwrap();
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let cm = &m.config_maps[&volume.config_map.as_ref().unwrap().name];
    let key = &config_path[mount.mount_path.len() + 1..];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, &cm.data.as_ref().unwrap()[key]).unwrap();
    let config = firebreak::config::load(Some(&file), &process_env, &[])
        .unwrap_or_else(|e| panic!("{what}: the configuration does not load: {e:?}"));
    let listen_port: i32 = config
        .server
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        listen_port, port.container_port,
        "{what}: it listens on the container port"
    );
    assert!(
        !config.server.listen.starts_with("127."),
        "{what}: reachable from the Service"
    );
    assert!(
        config.notify.webhooks.contains_key("security"),
        "{what}: the shipped playbooks notify `endpoint: security`"
    );
    assert_eq!(config.server.tokens.len(), 1);

    // The playbooks ConfigMap is mounted where the image looks for playbooks, and the ledger
    // volume where the image keeps it.
    let (playbooks_dir, store_url) = dockerfile_env();
    let pm = mounts
        .iter()
        .find(|vm| vm.mount_path == playbooks_dir)
        .unwrap();
    let pv = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == pm.name)
        .unwrap();
    let playbooks = &m.config_maps[&pv.config_map.as_ref().unwrap().name];
    let data: BTreeMap<String, String> = playbooks.data.clone().unwrap().into_iter().collect();
    assert_eq!(data, shipped_playbooks(), "{what}: the shipped playbooks");
    let ledger_dir = Path::new(store_url.strip_prefix("sqlite://").unwrap())
        .parent()
        .unwrap();
    assert!(
        mounts
            .iter()
            .any(|vm| Path::new(&vm.mount_path) == ledger_dir),
        "{what}: the ledger's directory is a writable volume"
    );
    // One replica, replaced by Recreate (the SQLite ledger has a single writer).
    assert_eq!(d.spec.replicas, Some(1), "{what}");
    assert_eq!(
        d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "{what}"
    );
    // The NetworkPolicy lets in the container port only, and lets out DNS, 443 and 6443.
    let np = m.network_policy.as_ref().unwrap().spec.as_ref().unwrap();
    let ports = |rules: Vec<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>| {
        rules
            .into_iter()
            .flatten()
            .map(|p| {
                let n = match p.port.unwrap() {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n,
                    other => panic!("{what}: named port {other:?}"),
                };
                (p.protocol.unwrap(), n)
            })
            .collect::<Vec<_>>()
    };
    let ingress = ports(
        np.ingress
            .clone()
            .unwrap()
            .into_iter()
            .map(|r| r.ports.unwrap())
            .collect(),
    );
    assert_eq!(ingress, [("TCP".to_owned(), port.container_port)], "{what}");
    let mut egress = ports(
        np.egress
            .clone()
            .unwrap()
            .into_iter()
            .map(|r| r.ports.unwrap())
            .collect(),
    );
    egress.sort();
    let want: Vec<(String, i32)> = [("TCP", 53), ("TCP", 443), ("TCP", 6443), ("UDP", 53)]
        .iter()
        .map(|(p, n)| ((*p).to_owned(), *n))
        .collect();
    assert_eq!(egress, want, "{what}");
    // NetworkPolicy and PodDisruptionBudget select these pods.
    let labels = d.spec.selector.match_labels.clone();
    assert_eq!(
        m.network_policy
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels,
        labels
    );
    assert_eq!(
        m.pdb
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .selector
            .as_ref()
            .unwrap()
            .match_labels,
        labels
    );
    config
}

fn firebreak_help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The Dockerfile's instructions as (instruction, arguments) of the final stage, and all of them.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (ins, args) = current.split_once(' ').unwrap();
        out.push((ins.to_owned(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// `FIREBREAK_PLAYBOOKS__DIR` and `FIREBREAK_STORE__URL` as the image sets them.
fn dockerfile_env() -> (String, String) {
    let env: String = dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "ENV")
        .map(|(_, a)| a)
        .collect::<Vec<_>>()
        .join(" ");
    let get = |k: &str| {
        env.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("ENV {k}"))
            .to_owned()
    };
    (get("FIREBREAK_PLAYBOOKS__DIR"), get("FIREBREAK_STORE__URL"))
}

#[test]
fn the_dockerfile_ships_the_release_build_as_nonroot_with_an_entrypoint_the_binary_has() {
    let ins = dockerfile();
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(froms.len(), 2, "builder and runtime");
    // The builder is the toolchain Cargo.toml asks for, building the release from Cargo.lock.
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        froms[0],
        &format!("rust:{rust_version}-bookworm AS builder")
    );
    assert!(
        ins.iter()
            .any(|(i, a)| i == "RUN" && a.starts_with("cargo build --release --locked")),
        "the release build, locked"
    );
    // The runtime: distroless, as nonroot, the release binary as entrypoint.
    assert!(froms[1].starts_with("gcr.io/distroless/") && froms[1].ends_with(":nonroot"));
    let runtime = &ins[ins.iter().rposition(|(i, _)| i == "FROM").unwrap()..];
    assert!(runtime.iter().any(|(i, a)| i == "USER" && a == "nonroot"));
    assert!(
        runtime
            .iter()
            .any(|(i, a)| i == "COPY"
                && a == "--from=builder /src/target/release/firebreak /firebreak"),
        "the binary is the release build"
    );
    let entry: Vec<String> =
        serde_json::from_str(&runtime.iter().find(|(i, _)| i == "ENTRYPOINT").unwrap().1).unwrap();
    assert_eq!(entry, ["/firebreak", "serve"]);
    let top = firebreak_help(&["--help"]);
    assert!(
        top.lines().any(|l| l.trim_start().starts_with("serve ")),
        "{top}"
    );
    let cmd: Vec<String> =
        serde_json::from_str(&runtime.iter().find(|(i, _)| i == "CMD").unwrap().1).unwrap();
    let serve_help = firebreak_help(&["serve", "--help"]);
    for flag in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(serve_help.contains(flag.as_str()), "{flag}");
    }
    // Every file it copies from the build context exists, and the context leaves target/ out.
    for (_, a) in ins
        .iter()
        .filter(|(i, a)| i == "COPY" && !a.starts_with("--from"))
    {
        let parts: Vec<&str> = a.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo(src).exists(), "COPY {src}");
        }
    }
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target"));
    // Its environment is configuration `firebreak serve` loads.
    let (playbooks, store) = dockerfile_env();
    let env = vec![
        ("FIREBREAK_PLAYBOOKS__DIR".to_owned(), playbooks.clone()),
        ("FIREBREAK_STORE__URL".to_owned(), store.clone()),
    ];
    let config = firebreak::config::load(None, &env, &[]).unwrap();
    assert_eq!(config.playbooks.dir, playbooks);
    assert_eq!(config.store.url, store);
}

#[test]
fn the_playbooks_configmap_mounted_as_a_volume_loads_the_shipped_playbooks() {
    // A ConfigMap volume: each key a symlink to `..data/KEY`, `..data` a symlink to a
    // timestamped directory holding the files.
    let (_, m) = kustomize();
    let dir = tempfile::tempdir().unwrap();
    let stamp = dir.path().join("..2026_12_03_00_00_00.000000000");
    std::fs::create_dir(&stamp).unwrap();
    let data = m.config_maps["firebreak-playbooks"].data.clone().unwrap();
    for (key, text) in &data {
        std::fs::write(stamp.join(key), text).unwrap();
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
    }
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), dir.path().join("..data")).unwrap();
    let set = firebreak::playbook::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:#?}"));
    let shipped = firebreak::playbook::load_dir(&repo("playbooks")).unwrap();
    let names = |s: &firebreak::playbook::PlaybookSet| -> Vec<String> {
        s.playbooks().iter().map(|p| p.name.clone()).collect()
    };
    assert_eq!(names(&set), names(&shipped));
    assert_eq!(set.playbooks().len(), data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_and_metrics_paths_are_served_by_firebreak_serve() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start_with(dir.path(), &repo("playbooks"), 60, &[]);
    let client = reqwest::Client::new();
    let (_, m) = kustomize();
    let c = m.container();
    let mut paths = vec![
        c.liveness_probe.unwrap().http_get.unwrap().path.unwrap(),
        c.readiness_probe.unwrap().http_get.unwrap().path.unwrap(),
    ];
    paths.extend(
        m.service_monitor
            .unwrap()
            .spec
            .endpoints
            .into_iter()
            .map(|e| e.path),
    );
    for path in paths {
        let status = client
            .get(format!("http://{}{path}", svc.addr))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200, "{path}");
    }
    // The token the Deployment passes is accepted on the ingest route.
    let answer = client
        .post(format!("http://{}/v1/findings/falco", svc.addr))
        .bearer_auth(TOKEN)
        .body(crate::fixtures::bytes(crate::fixtures::FALCO_SHELL))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
}

// ---------------------------------------------------------------------------------------------
// AWS trust policies.

#[test]
fn the_trust_policy_examples_are_json_policies_for_the_deployed_service_account() {
    let rbac = docs("rbac", &firebreak::action::rbac::kubernetes_rbac());
    let sa: ServiceAccount = typed("rbac", &rbac[0]);
    let subject = format!(
        "system:serviceaccount:{}:{}",
        sa.metadata.namespace.unwrap(),
        sa.metadata.name.unwrap()
    );
    let policy = |rel: &str| -> Value {
        let v: Value = serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(v["Version"], "2012-10-17", "{rel}");
        assert!(
            v["Statement"].as_array().is_some_and(|s| !s.is_empty()),
            "{rel}"
        );
        v
    };
    let irsa = policy("deploy/aws/irsa-trust-policy.json");
    let st = &irsa["Statement"][0];
    assert_eq!(st["Action"], "sts:AssumeRoleWithWebIdentity");
    let cond = st["Condition"]["StringEquals"].as_object().unwrap();
    let sub = cond.iter().find(|(k, _)| k.ends_with(":sub")).unwrap().1;
    assert_eq!(sub, &json!(subject));
    assert!(
        cond.iter()
            .any(|(k, v)| k.ends_with(":aud") && v == "sts.amazonaws.com")
    );

    let cross = policy("deploy/aws/cross-account-trust-policy.json");
    let st = &cross["Statement"][0];
    assert_eq!(st["Action"], "sts:AssumeRole");
    // The external id of config/default.yaml's aws.accounts example.
    let external = st["Condition"]["StringEquals"]["sts:ExternalId"]
        .as_str()
        .unwrap();
    assert!(read("config/default.yaml").contains(&format!("external_id: \"{external}\"")));
    let assume = policy("deploy/aws/assume-role-policy.json");
    let st = &assume["Statement"][0];
    assert_eq!(st["Action"], "sts:AssumeRole");
    assert!(
        read("config/default.yaml").contains(&format!("role_arn: {}", st["Resource"])),
        "the role of the aws.accounts example"
    );
}
