//! Rolling new digests out: Deployments, StatefulSets and DaemonSets labelled
//! `imagebuild.dev/rollout: "true"` name, in the annotation `imagebuild.dev/images`, the
//! ImageBuild each of their containers runs. After every reconcile of a Ready ImageBuild, the
//! containers that name it and do not run its `status.imageRef` get it by server-side apply
//! (field manager `imagebuild-rollout`, that one field and nothing else), and `status.rollouts`
//! lists the containers that run it.
//!
//! The workloads are watched (label-selected, so only opted-in ones are held in memory); a change
//! of one reconciles the ImageBuilds it names, so a workload created after the build, or one
//! whose annotation changed, is rolled out without waiting for the next build. Planning is pure
//! ([`plan`]); this module reads the caches, writes, and tells users through events.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use super::error::Error;
use super::events::Events;
use super::reconcile::{self, Shared};
use super::status;
use crate::api::{ImageBuild, Phase, Rollout};
use plan::{IMAGES_ANNOTATION, Offer, Problem, ROLLOUT_LABEL, WorkloadKind};

/// Field manager of the image writes; Argo CD's `ignoreDifferences.managedFieldsManagers`
/// names it.
pub const FIELD_MANAGER: &str = "imagebuild-rollout";

/// Event reason when a container was set to a new digest.
const ROLLED_OUT: &str = "RolledOut";
/// Event reason when a workload's annotation cannot be followed.
const ROLLOUT_FAILED: &str = "RolloutFailed";

/// Why a rollout could not be finished; the reconcile is tried again shortly.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("cannot read ImageBuild {namespace}/{name} before rolling it out: {source}")]
    ReadImageBuild {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot set the image of {kind} {namespace}/{name}: {source}")]
    Apply {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot write status.rollouts of ImageBuild {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// One watched workload kind and what its watch has seen.
struct WatchedKind {
    kind: WorkloadKind,
    resource: ApiResource,
    store: Store<DynamicObject>,
}

/// The opted-in workloads, as the watches see them, and the problems already reported.
pub struct Rollouts {
    kinds: Vec<WatchedKind>,
    image_builds: Store<ImageBuild>,
    /// The last problem reported per workload, so a reconcile that finds the same problem
    /// again does not repeat its events.
    reported: Mutex<HashMap<String, String>>,
    /// The ImageBuilds each workload named when last seen.
    named: Mutex<HashMap<String, Vec<String>>>,
}

/// A watch of one workload kind, to feed `Controller::watches_stream_with`.
pub type WorkloadStream =
    futures::stream::BoxStream<'static, Result<DynamicObject, watcher::Error>>;

impl Rollouts {
    /// Starts caching the opted-in workloads of every kind; returns the caches and, per kind,
    /// the stream of changed workloads with its resource (the controller maps each change to
    /// the ImageBuilds it names).
    pub fn watch(
        client: &Client,
        image_builds: Store<ImageBuild>,
    ) -> (Arc<Self>, Vec<(WorkloadStream, ApiResource)>) {
        let mut kinds = Vec::new();
        let mut streams = Vec::new();
        for kind in WorkloadKind::ALL {
            let gvk = GroupVersionKind::gvk("apps", "v1", kind.as_str());
            let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural());
            let writer = reflector::store::Writer::new(resource.clone());
            let store = writer.as_reader();
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            let selector = format!("{ROLLOUT_LABEL}=true");
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default().labels(&selector)),
            )
            .touched_objects()
            .boxed();
            streams.push((stream, resource.clone()));
            kinds.push(WatchedKind {
                kind,
                resource,
                store,
            });
        }
        let rollouts = Arc::new(Self {
            kinds,
            image_builds,
            reported: Mutex::new(HashMap::new()),
            named: Mutex::new(HashMap::new()),
        });
        (rollouts, streams)
    }

    /// The ImageBuilds (same namespace) a changed workload of `kind` names, and those it named
    /// before the change, so an ImageBuild it no longer names drops it from `status.rollouts`.
    /// Those that do not exist get a Warning event on the workload from `warn_missing`.
    pub fn image_builds_of(
        &self,
        kind: &str,
        workload: &DynamicObject,
    ) -> Vec<ObjectRef<ImageBuild>> {
        let namespace = workload.namespace().unwrap_or_default();
        let key = workload_key(kind, &namespace, &workload.name_any());
        let mut names = plan::named_image_builds(images_annotation(workload));
        let before = super::lock(&self.named).insert(key, names.clone());
        names.extend(before.unwrap_or_default());
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| ObjectRef::new(&name).within(&namespace))
            .collect()
    }

    /// Tells a changed workload what is wrong with its annotation: unreadable, or naming an
    /// ImageBuild that does not exist. (A wrong container name is found by the reconcile of
    /// the ImageBuild, which then tells both.)
    pub async fn warn_missing(
        self: Arc<Self>,
        recorder: Events,
        changes: impl Stream<Item = (DynamicObject, ApiResource)>,
    ) {
        // Before the ImageBuild cache has its first list, every ImageBuild looks missing. Polled
        // in short rounds: the store's readiness signal wakes only its latest waiter.
        loop {
            let ready = self.image_builds.wait_until_ready();
            match tokio::time::timeout(Duration::from_millis(200), ready).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
        futures::pin_mut!(changes);
        while let Some((workload, resource)) = changes.next().await {
            if workload.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let namespace = workload.namespace().unwrap_or_default();
            let annotation = images_annotation(&workload).unwrap_or_default();
            let problem = match plan::parse_images(annotation) {
                Err(error) => Some(Problem::Annotation(error)),
                Ok(entries) => entries
                    .into_iter()
                    .find(|e| {
                        let key = ObjectRef::new(&e.image_build).within(&namespace);
                        self.image_builds.get(&key).is_none()
                    })
                    .map(|e| Problem::NoSuchImageBuild {
                        image_build: e.image_build,
                    }),
            };
            // Apart from the reconcile's reports: a workload change that fixes the annotation's
            // names must not make a wrong container name be reported again.
            let key = format!(
                "{} (names)",
                workload_key(&resource.kind, &namespace, &workload.name_any())
            );
            match problem {
                Some(problem) => {
                    let note = problem.to_string();
                    if self.first_report(&key, &note) {
                        tracing::warn!(workload = %key, %note, "workload cannot be rolled out");
                        publish(
                            &recorder,
                            &workload.object_ref(&resource),
                            EventType::Warning,
                            ROLLOUT_FAILED,
                            note,
                        )
                        .await;
                    }
                }
                None => self.clear_report(&key),
            }
        }
    }

    /// Whether `note` is news for the workload `key` (and remembers it).
    fn first_report(&self, key: &str, note: &str) -> bool {
        let mut reported = super::lock(&self.reported);
        if reported.get(key).is_some_and(|last| last == note) {
            return false;
        }
        reported.insert(key.to_owned(), note.to_owned());
        true
    }

    fn clear_report(&self, key: &str) {
        super::lock(&self.reported).remove(key);
    }

    /// Opted-in workloads in `namespace` whose annotation names `image_build`.
    fn workloads_naming(
        &self,
        namespace: &str,
        image_build: &str,
    ) -> Vec<(&WatchedKind, Arc<DynamicObject>)> {
        let mut found = Vec::new();
        for watched in &self.kinds {
            for workload in watched.store.state() {
                if workload.namespace().as_deref() != Some(namespace)
                    || workload.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                if plan::named_image_builds(images_annotation(&workload))
                    .iter()
                    .any(|n| n == image_build)
                {
                    found.push((watched, workload));
                }
            }
        }
        found.sort_by_key(|(w, o)| (w.kind, o.name_any()));
        found
    }

    /// Rolls the current image of `ib` out to the workloads that name it and writes
    /// `status.rollouts`. Does nothing unless the ImageBuild, as the API server has it now, is
    /// Ready for its current generation.
    pub async fn roll_out(&self, ib: &ImageBuild, shared: &Shared) -> Result<(), RolloutError> {
        let namespace = ib.namespace().unwrap_or_default();
        let name = ib.name_any();
        let workloads = self.workloads_naming(&namespace, &name);
        let listed = ib.status.as_ref().is_some_and(|s| !s.rollouts.is_empty());
        if workloads.is_empty() && !listed {
            return Ok(());
        }
        // The reconcile's copy may be older than the build it just finished.
        let api: Api<ImageBuild> = Api::namespaced(shared.client.clone(), &namespace);
        let read_error = |source| RolloutError::ReadImageBuild {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        };
        let Some(current) = api.get_opt(&name).await.map_err(read_error)? else {
            return Ok(());
        };
        let Some((image_ref, digest)) = ready_image(&current) else {
            return Ok(());
        };

        let mut rollouts = Vec::new();
        let mut failure = None;
        for (watched, workload) in workloads {
            match self
                .roll_out_to(&current, &image_ref, &digest, watched, &workload, shared)
                .await
            {
                Ok(mut done) => rollouts.append(&mut done),
                Err(error) => failure = Some(error),
            }
        }
        rollouts.sort();
        let mut status = current.status.clone().unwrap_or_default();
        if status.rollouts != rollouts {
            status.rollouts = rollouts;
            status::write(&api, &current, &status)
                .await
                .map_err(|source| RolloutError::Status {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Sets the containers of one workload that name `ib` to `image_ref`; returns the
    /// containers that run it. A problem with the workload's annotation is reported on both
    /// objects and leaves the workload as it is.
    async fn roll_out_to(
        &self,
        ib: &ImageBuild,
        image_ref: &str,
        digest: &str,
        watched: &WatchedKind,
        workload: &DynamicObject,
        shared: &Shared,
    ) -> Result<Vec<Rollout>, RolloutError> {
        let namespace = workload.namespace().unwrap_or_default();
        let name = workload.name_any();
        let key = workload_key(watched.kind.as_str(), &namespace, &name);
        let json = serde_json::to_value(workload).unwrap_or_default();
        let own = ib.name_any();
        // Only this ImageBuild's containers change here; the others keep what they run (their
        // own ImageBuild's reconcile sets them), but each must still exist.
        let offer = |image_build: &str| {
            if image_build == own {
                Offer::Ready {
                    image_ref: image_ref.to_owned(),
                    digest: digest.to_owned(),
                }
            } else if self
                .image_builds
                .get(&ObjectRef::new(image_build).within(&namespace))
                .is_some()
            {
                Offer::NotReady
            } else {
                Offer::Missing
            }
        };
        let plan = match plan::plan(watched.kind, &json, offer) {
            Ok(plan) => plan,
            Err(problem) => {
                self.report(ib, watched, workload, &key, problem.to_string(), shared)
                    .await;
                return Ok(Vec::new());
            }
        };
        self.clear_report(&key);
        let mine: Vec<_> = plan
            .containers
            .iter()
            .filter(|c| c.image_build == own)
            .collect();
        if let Some(patch) = &plan.patch {
            let api = Api::<DynamicObject>::namespaced_with(
                shared.client.clone(),
                &namespace,
                &watched.resource,
            );
            let params = PatchParams::apply(FIELD_MANAGER).force();
            if let Err(source) = api.patch(&name, &params, &Patch::Apply(patch)).await {
                let error = RolloutError::Apply {
                    kind: watched.kind.as_str(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                };
                self.report(ib, watched, workload, &key, error.to_string(), shared)
                    .await;
                return Err(error);
            }
            let containers: Vec<&str> = mine.iter().map(|c| c.container.as_str()).collect();
            let note = format!(
                "{} {name}: {} set to {image_ref}",
                watched.kind.as_str(),
                containers.join(", ")
            );
            tracing::info!(workload = %key, image = %image_ref, "rolled out");
            status::event(&shared.recorder, ib, EventType::Normal, ROLLED_OUT, note).await;
        }
        Ok(mine
            .into_iter()
            .map(|c| Rollout {
                kind: watched.kind.as_str().to_owned(),
                name: name.clone(),
                container: c.container.clone(),
                digest: digest.to_owned(),
            })
            .collect())
    }

    /// A Warning event on the workload and on the ImageBuild, once per distinct problem.
    async fn report(
        &self,
        ib: &ImageBuild,
        watched: &WatchedKind,
        workload: &DynamicObject,
        key: &str,
        note: String,
        shared: &Shared,
    ) {
        if !self.first_report(key, &note) {
            return;
        }
        tracing::warn!(workload = %key, %note, "workload cannot be rolled out");
        let reference = workload.object_ref(&watched.resource);
        publish(
            &shared.recorder,
            &reference,
            EventType::Warning,
            ROLLOUT_FAILED,
            note.clone(),
        )
        .await;
        let about = format!("{key}: {note}");
        status::event(
            &shared.recorder,
            ib,
            EventType::Warning,
            ROLLOUT_FAILED,
            about,
        )
        .await;
    }
}

/// `status.imageRef` and `status.digest` when the ImageBuild is Ready for its current
/// generation.
fn ready_image(ib: &ImageBuild) -> Option<(String, String)> {
    let status = ib.status.as_ref()?;
    let ready = status.phase == Some(Phase::Succeeded)
        && status.observed_generation == ib.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    Some((status.image_ref.clone()?, status.digest.clone()?))
}

fn images_annotation(workload: &DynamicObject) -> Option<&str> {
    workload
        .metadata
        .annotations
        .as_ref()?
        .get(IMAGES_ANNOTATION)
        .map(String::as_str)
}

fn workload_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// Sends an event about any object; failures to record are logged, never fatal.
async fn publish(
    recorder: &Events,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    recorder
        .note(reference, type_, reason, "Rollout", note)
        .await;
}

/// The reconcile the controller runs: the ImageBuild's own ([`reconcile::reconcile`]), then,
/// when rollouts are on and it went well, the rollout of its image. A rollout that failed on
/// the way (the API server, a refused write) is tried again shortly; it never fails the build.
pub async fn reconcile_and_roll_out(
    ib: Arc<ImageBuild>,
    shared: Arc<Shared>,
    rollouts: Option<Arc<Rollouts>>,
) -> Result<Action, Error> {
    let action = reconcile::reconcile(ib.clone(), shared.clone()).await?;
    let Some(rollouts) = rollouts else {
        return Ok(action);
    };
    if ib.metadata.deletion_timestamp.is_some() {
        return Ok(action);
    }
    match rollouts.roll_out(&ib, &shared).await {
        Ok(()) => Ok(action),
        Err(error) => {
            tracing::warn!(%error, "rollout failed; trying again");
            Ok(Action::requeue(ROLLOUT_RETRY))
        }
    }
}

/// When a rollout that failed on the way is tried again.
const ROLLOUT_RETRY: Duration = Duration::from_secs(15);
