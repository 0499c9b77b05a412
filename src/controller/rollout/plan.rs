//! What a workload asks for and what to write to it, without an API server: the
//! `imagebuild.dev/images` annotation read into container/ImageBuild pairs, and, given the
//! workload as JSON and the digests of the ImageBuilds it names, the one server-side apply patch
//! that sets those containers' images (or the problem that stops any write).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// Label a workload carries to opt in.
pub const ROLLOUT_LABEL: &str = "imagebuild.dev/rollout";
/// Annotation naming, per container, the ImageBuild whose image it runs.
pub const IMAGES_ANNOTATION: &str = "imagebuild.dev/images";

/// One `<container>=<ImageBuild>` entry of the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAssignment {
    pub container: String,
    pub image_build: String,
}

/// Why an `imagebuild.dev/images` annotation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error(
        "annotation {IMAGES_ANNOTATION} is missing or empty; write <container>=<ImageBuild>[,...]"
    )]
    Empty,
    #[error(
        "annotation {IMAGES_ANNOTATION}: entry {position} ({entry:?}) is not <container>=<ImageBuild>"
    )]
    Entry { position: usize, entry: String },
    #[error(
        "annotation {IMAGES_ANNOTATION}: {name:?} in entry {position} is not a valid Kubernetes name"
    )]
    Name { position: usize, name: String },
    #[error("annotation {IMAGES_ANNOTATION} names container {container:?} twice")]
    Duplicate { container: String },
}

/// Reads `<container>=<ImageBuild>[,<container>=<ImageBuild>...]`; spaces around entries and
/// around `=` are ignored. Any bad entry refuses the whole annotation, so a workload is never
/// half rolled out.
pub fn parse_images(annotation: &str) -> Result<Vec<ImageAssignment>, AnnotationError> {
    if annotation.trim().is_empty() {
        return Err(AnnotationError::Empty);
    }
    let mut seen = BTreeSet::new();
    let mut assignments = Vec::new();
    for (index, entry) in annotation.split(',').enumerate() {
        let position = index + 1;
        let bad_entry = || AnnotationError::Entry {
            position,
            entry: entry.trim().to_owned(),
        };
        let (container, image_build) = entry.split_once('=').ok_or_else(bad_entry)?;
        let (container, image_build) = (container.trim(), image_build.trim());
        if container.is_empty() || image_build.is_empty() {
            return Err(bad_entry());
        }
        for name in [container, image_build] {
            if !is_dns_label(name) {
                return Err(AnnotationError::Name {
                    position,
                    name: name.to_owned(),
                });
            }
        }
        if !seen.insert(container.to_owned()) {
            return Err(AnnotationError::Duplicate {
                container: container.to_owned(),
            });
        }
        assignments.push(ImageAssignment {
            container: container.to_owned(),
            image_build: image_build.to_owned(),
        });
    }
    Ok(assignments)
}

/// Container names are DNS labels; ImageBuild names in practice are too (a dotted name would be
/// allowed by the API server but is refused here: it cannot be told from a typo).
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The workload kinds that can opt in, all in group `apps/v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 3] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        }
    }
}

/// What an ImageBuild named by a workload offers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Ready for its current generation: `status.imageRef` and `status.digest`.
    Ready { image_ref: String, digest: String },
    /// Exists but has no image for its current generation yet (building, failed): its
    /// containers keep the image they run.
    NotReady,
    /// No ImageBuild of that name in the workload's namespace.
    Missing,
}

/// One container set to an ImageBuild's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub container: String,
    pub image_build: String,
    /// The container's image after the write (or already).
    pub image: String,
    /// The digest it runs, when its ImageBuild is Ready.
    pub digest: Option<String>,
}

/// What to do with one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Every container the annotation names, with the image it should run.
    pub containers: Vec<ContainerImage>,
    /// The server-side apply patch, `None` when every image is already what it should be.
    pub patch: Option<Value>,
}

/// Why a workload is left untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error(
        "{IMAGES_ANNOTATION} names container {container:?}, which the Pod template does not have (it has {known})"
    )]
    NoSuchContainer { container: String, known: String },
    #[error(
        "{IMAGES_ANNOTATION} names ImageBuild {image_build:?}, which does not exist in this namespace"
    )]
    NoSuchImageBuild { image_build: String },
}

/// Plans the write to `workload` (a Deployment, StatefulSet or DaemonSet as JSON) given what each
/// ImageBuild offers. Every entry of the annotation is checked before anything is planned: one
/// wrong container or ImageBuild name means no write at all. The patch names every container of
/// the annotation (a server-side apply gives up the fields it leaves out), each with the image
/// it should run.
pub fn plan(
    kind: WorkloadKind,
    workload: &Value,
    offer: impl Fn(&str) -> Offer,
) -> Result<Plan, Problem> {
    let annotation = workload
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(IMAGES_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let assignments = parse_images(annotation)?;
    let pod_spec = workload
        .pointer("/spec/template/spec")
        .unwrap_or(&Value::Null);
    let current = container_images(pod_spec);

    let mut containers = Vec::new();
    let mut changes: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let mut changed = false;
    for assignment in &assignments {
        let Some((list, image_now)) = current.get(assignment.container.as_str()) else {
            let known: Vec<&str> = current.keys().copied().collect();
            return Err(Problem::NoSuchContainer {
                container: assignment.container.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        };
        let (image, digest) = match offer(&assignment.image_build) {
            Offer::Ready { image_ref, digest } => (image_ref, Some(digest)),
            Offer::NotReady => (image_now.to_string(), None),
            Offer::Missing => {
                return Err(Problem::NoSuchImageBuild {
                    image_build: assignment.image_build.clone(),
                });
            }
        };
        changed |= image != *image_now;
        changes
            .entry(list)
            .or_default()
            .push(json!({"name": assignment.container, "image": image}));
        containers.push(ContainerImage {
            container: assignment.container.clone(),
            image_build: assignment.image_build.clone(),
            image,
            digest,
        });
    }
    let patch = changed.then(|| {
        json!({
            "apiVersion": "apps/v1",
            "kind": kind.as_str(),
            "metadata": {"name": workload.pointer("/metadata/name").cloned().unwrap_or(Value::Null)},
            "spec": {"template": {"spec": changes}},
        })
    });
    Ok(Plan { containers, patch })
}

/// Container name → (list it is in, its image), init containers included.
fn container_images(pod_spec: &Value) -> BTreeMap<&str, (&'static str, &str)> {
    let mut images = BTreeMap::new();
    for list in ["initContainers", "containers"] {
        for container in pod_spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = container.get("name").and_then(Value::as_str) {
                let image = container
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                images.insert(name, (list, image));
            }
        }
    }
    images
}

/// The ImageBuild names an `imagebuild.dev/images` annotation mentions (none when it cannot be
/// read, or is absent).
pub fn named_image_builds(annotation: Option<&str>) -> Vec<String> {
    parse_images(annotation.unwrap_or_default())
        .map(|entries| entries.into_iter().map(|e| e.image_build).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(container: &str, image_build: &str) -> ImageAssignment {
        ImageAssignment {
            container: container.into(),
            image_build: image_build.into(),
        }
    }

    #[test]
    fn an_annotation_names_containers_and_image_builds() {
        assert_eq!(
            parse_images("site=hello"),
            Ok(vec![assignment("site", "hello")])
        );
        assert_eq!(
            parse_images("site=hello,init-data=data-1"),
            Ok(vec![
                assignment("site", "hello"),
                assignment("init-data", "data-1")
            ])
        );
    }

    #[test]
    fn spaces_around_entries_and_equals_signs_are_ignored() {
        assert_eq!(
            parse_images("  site = hello ,\n sidecar=proxy "),
            Ok(vec![
                assignment("site", "hello"),
                assignment("sidecar", "proxy")
            ])
        );
    }

    #[test]
    fn a_bad_entry_refuses_the_whole_annotation() {
        for (annotation, want) in [
            ("", AnnotationError::Empty),
            ("   ", AnnotationError::Empty),
            (
                "site",
                AnnotationError::Entry {
                    position: 1,
                    entry: "site".into(),
                },
            ),
            (
                "site=hello,=other",
                AnnotationError::Entry {
                    position: 2,
                    entry: "=other".into(),
                },
            ),
            (
                "site=hello,",
                AnnotationError::Entry {
                    position: 2,
                    entry: String::new(),
                },
            ),
            (
                "site=",
                AnnotationError::Entry {
                    position: 1,
                    entry: "site=".into(),
                },
            ),
            (
                "Site=hello",
                AnnotationError::Name {
                    position: 1,
                    name: "Site".into(),
                },
            ),
            (
                "site=hello=again",
                AnnotationError::Name {
                    position: 1,
                    name: "hello=again".into(),
                },
            ),
            (
                "site=a,site=b",
                AnnotationError::Duplicate {
                    container: "site".into(),
                },
            ),
        ] {
            assert_eq!(parse_images(annotation), Err(want), "{annotation:?}");
        }
    }

    fn deployment(annotation: &str, containers: Value, init: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default",
                "labels": {ROLLOUT_LABEL: "true"},
                "annotations": {IMAGES_ANNOTATION: annotation}},
            "spec": {"template": {"spec": {"containers": containers, "initContainers": init}}},
        })
    }

    const REF: &str = "registry.test/o/site@sha256:aaaa";

    fn ready(name: &str) -> Offer {
        match name {
            "site" | "data" => Offer::Ready {
                image_ref: REF.into(),
                digest: "sha256:aaaa".into(),
            },
            "building" => Offer::NotReady,
            _ => Offer::Missing,
        }
    }

    #[test]
    fn a_container_not_at_the_digest_gets_an_apply_patch_of_its_image_alone() {
        let web = deployment(
            "web=site",
            json!([{"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]},
                   {"name": "sidecar", "image": "proxy:2"}]),
            json!([]),
        );
        let plan = plan(WorkloadKind::Deployment, &web, ready).expect("plan");
        assert_eq!(
            plan.patch,
            Some(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"template": {"spec": {"containers": [{"name": "web", "image": REF}]}}},
            }))
        );
        assert_eq!(
            plan.containers,
            vec![ContainerImage {
                container: "web".into(),
                image_build: "site".into(),
                image: REF.into(),
                digest: Some("sha256:aaaa".into()),
            }]
        );
    }

    #[test]
    fn a_workload_already_at_the_digest_is_not_written() {
        let web = deployment(
            "web=site",
            json!([{"name": "web", "image": REF}]),
            json!([]),
        );
        let plan = plan(WorkloadKind::Deployment, &web, ready).expect("plan");
        assert_eq!(plan.patch, None);
        assert_eq!(plan.containers.len(), 1);
    }

    #[test]
    fn a_wrong_container_name_plans_no_write_at_all() {
        let web = deployment(
            "web=site,typo=site",
            json!([{"name": "web", "image": "nginx:1"}]),
            json!([]),
        );
        assert_eq!(
            plan(WorkloadKind::Deployment, &web, ready),
            Err(Problem::NoSuchContainer {
                container: "typo".into(),
                known: "web".into()
            })
        );
    }

    #[test]
    fn a_missing_image_build_plans_no_write_at_all() {
        let web = deployment(
            "web=site,other=nowhere",
            json!([{"name": "web", "image": "nginx:1"}, {"name": "other", "image": "x"}]),
            json!([]),
        );
        assert_eq!(
            plan(WorkloadKind::Deployment, &web, ready),
            Err(Problem::NoSuchImageBuild {
                image_build: "nowhere".into()
            })
        );
    }

    #[test]
    fn init_containers_are_set_in_their_own_list() {
        let web = deployment(
            "web=site,fetch=data",
            json!([{"name": "web", "image": REF}]),
            json!([{"name": "fetch", "image": "busybox"}]),
        );
        let plan = plan(WorkloadKind::StatefulSet, &web, ready).expect("plan");
        assert_eq!(
            plan.patch,
            Some(json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": "web"},
                "spec": {"template": {"spec": {
                    "containers": [{"name": "web", "image": REF}],
                    "initContainers": [{"name": "fetch", "image": REF}],
                }}},
            }))
        );
    }

    #[test]
    fn a_container_of_an_image_build_not_ready_keeps_its_image_in_the_patch() {
        let web = deployment(
            "web=site,sidecar=building",
            json!([{"name": "web", "image": "nginx:1"}, {"name": "sidecar", "image": "proxy:2"}]),
            json!([]),
        );
        let plan = plan(WorkloadKind::Deployment, &web, ready).expect("plan");
        assert_eq!(
            plan.patch
                .as_ref()
                .and_then(|p| p.pointer("/spec/template/spec/containers")),
            Some(&json!([{"name": "web", "image": REF}, {"name": "sidecar", "image": "proxy:2"}]))
        );
        assert_eq!(plan.containers[1].digest, None);
    }

    #[test]
    fn a_workload_without_the_annotation_is_a_problem_not_a_write() {
        let web = json!({"metadata": {"name": "web"}, "spec": {}});
        assert_eq!(
            plan(WorkloadKind::DaemonSet, &web, ready),
            Err(Problem::Annotation(AnnotationError::Empty))
        );
        assert!(named_image_builds(None).is_empty());
    }
}
