//! The Kubernetes API emulator, driven through kube-rs as Firebreak drives a real cluster:
//! Status errors, optimistic concurrency, patches, the scale subresource, selectors, watch
//! and pod logs.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{
    Api, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};

use crate::support::kube_api::KubeApi;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    let app = labels(&[("app", name)]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(app.clone()),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(app.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(app),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("nginx:1.27".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn pod(name: &str, pod_labels: &[(&str, &str)], node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(labels(pod_labels)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[tokio::test]
async fn get_of_a_missing_object_is_a_not_found_status() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let err = deployments.get("nope").await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!(status.code, 404);
    assert_eq!(status.reason, "NotFound");
    assert!(status.is_not_found());
    assert!(deployments.get_opt("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn create_sets_server_metadata_and_a_second_create_already_exists() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let created = deployments
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(created.metadata.resource_version.is_some());
    let err = deployments
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
    assert_eq!(api.writes(), 2);
}

#[tokio::test]
async fn an_update_with_a_stale_resource_version_is_a_conflict() {
    let api = KubeApi::start().await;
    api.seed(&deployment("web", 2));
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let old = deployments.get("web").await.unwrap();
    let mut first = old.clone();
    first.spec.replicas = Some(3);
    let updated = deployments
        .replace("web", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        old.metadata.resource_version
    );
    assert_eq!(updated.metadata.generation, Some(2));
    let mut stale = old.clone();
    stale.spec.replicas = Some(5);
    let err = deployments
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    // A merge patch carrying the stale resourceVersion is refused too.
    let patch = serde_json::json!({"metadata": {"resourceVersion": old.metadata.resource_version}, "spec": {"replicas": 9}});
    let err = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    assert_eq!(
        api.get::<Deployment>("default", "web")
            .unwrap()
            .spec
            .replicas,
        Some(3)
    );
}

#[tokio::test]
async fn merge_patch_sets_and_removes_fields() {
    let api = KubeApi::start().await;
    api.seed(&deployment("web", 2));
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let patch =
        serde_json::json!({"metadata": {"annotations": {"a": "1"}, "labels": {"app": null}}});
    let d = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(d.metadata.annotations.unwrap()["a"], "1");
    assert!(!d.metadata.labels.unwrap_or_default().contains_key("app"));
}

#[tokio::test]
async fn strategic_merge_patch_merges_containers_by_name() {
    let api = KubeApi::start().await;
    api.seed(&deployment("web", 2));
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "nginx:1.28"},
        {"name": "sidecar", "image": "busybox"}
    ]}}}});
    let d = deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let containers = d.spec.template.spec.unwrap().containers;
    let images: Vec<_> = containers
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_deref()))
        .collect();
    assert_eq!(
        images,
        [("app", Some("nginx:1.28")), ("sidecar", Some("busybox"))]
    );
}

#[tokio::test]
async fn server_side_apply_creates_then_updates_and_records_the_manager() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let d = deployment("applied", 1);
    let params = PatchParams::apply("firebreak");
    let created = deployments
        .patch("applied", &params, &Patch::Apply(&d))
        .await
        .unwrap();
    let fields = created.metadata.managed_fields.unwrap();
    assert_eq!(fields[0].manager.as_deref(), Some("firebreak"));
    assert_eq!(fields[0].operation.as_deref(), Some("Apply"));
    let mut again = d.clone();
    again.spec.replicas = Some(4);
    let updated = deployments
        .patch("applied", &params, &Patch::Apply(&again))
        .await
        .unwrap();
    assert_eq!(updated.spec.replicas, Some(4));
    assert_eq!(updated.metadata.managed_fields.unwrap().len(), 1);
}

#[tokio::test]
async fn the_scale_subresource_reads_and_updates_spec_replicas() {
    let api = KubeApi::start().await;
    api.seed(&deployment("web", 3));
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    let patch = serde_json::json!({"spec": {"replicas": 0}});
    let scaled = deployments
        .patch_scale("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(0));
    assert_eq!(
        api.get::<Deployment>("default", "web")
            .unwrap()
            .spec
            .replicas,
        Some(0)
    );
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors() {
    let api = KubeApi::start().await;
    api.seed(&pod("a", &[("app", "web"), ("tier", "front")], "node-1"));
    api.seed(&pod("b", &[("app", "web")], "node-2"));
    api.seed(&pod("c", &[("app", "db")], "node-1"));
    let pods: Api<Pod> = Api::namespaced(api.client(), "default");
    let names = |l: kube::api::ObjectList<Pod>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    };
    let cases = [
        ("app=web", vec!["a", "b"]),
        ("app!=web", vec!["c"]),
        ("app in (db, cache)", vec!["c"]),
        ("tier", vec!["a"]),
        ("!tier,app=web", vec!["b"]),
    ];
    for (selector, want) in cases {
        let l = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        assert!(l.metadata.resource_version.is_some());
        assert_eq!(names(l), want, "{selector}");
    }
    let l = pods
        .list(&ListParams::default().fields("spec.nodeName=node-1,metadata.name!=c"))
        .await
        .unwrap();
    assert_eq!(names(l), ["a"]);
    let err = pods
        .list(&ListParams::default().fields("spec.image=x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400),
        "{err:?}"
    );
}

#[tokio::test]
async fn watch_streams_added_and_modified_events_from_a_resource_version() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let rv = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = deployments
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    api.seed(&deployment("web", 1));
    api.seed(&deployment("web", 2));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream stays open")
            .unwrap();
        match event {
            WatchEvent::Added(d) => seen.push(("ADDED", d.spec.replicas)),
            WatchEvent::Modified(d) => seen.push(("MODIFIED", d.spec.replicas)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [("ADDED", Some(1)), ("MODIFIED", Some(2))]);
}

#[tokio::test]
async fn pod_logs_honour_tail_lines_and_limit_bytes() {
    let api = KubeApi::start().await;
    api.seed(&pod("a", &[], "node-1"));
    api.set_logs("default", "a", "one\ntwo\nthree\n");
    let pods: Api<Pod> = Api::namespaced(api.client(), "default");
    let tail = pods
        .logs(
            "a",
            &LogParams {
                tail_lines: Some(2),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, "two\nthree\n");
    let limited = pods
        .logs(
            "a",
            &LogParams {
                limit_bytes: Some(5),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(limited, "one\nt");
    assert_eq!(api.writes(), 0, "reads are not writes");
}

#[tokio::test]
async fn discovery_lists_the_served_groups_and_resources() {
    let api = KubeApi::start().await;
    let client = api.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert!(names.contains(&"apps"), "{names:?}");
    let apps = client.list_api_group_resources("apps/v1").await.unwrap();
    assert!(
        apps.resources
            .iter()
            .any(|r| r.name == "deployments/scale" && r.kind == "Scale")
    );
    let core = client.list_core_api_resources("v1").await.unwrap();
    assert!(core.resources.iter().any(|r| r.name == "pods"));
}
