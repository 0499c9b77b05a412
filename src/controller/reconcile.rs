//! What one ImageBuild wants, and doing it: resolve inputs, short-circuit when nothing changed,
//! otherwise build and push under a build slot, and write the outcome to status and events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Semaphore;

use super::config::ControllerConfig;
use super::drift;
use super::error::Error;
use super::inputs::{self, ResolvedContext, ResolvedInputs};
use super::status::{self, Readiness};
use crate::api::{DeletionPolicy, FINALIZER, ImageBuild, Phase, PlatformDigest};
use crate::build::{self, BuildJob, ContextSource};
use crate::metrics::Metrics;

/// What every reconcile shares: clients, configuration, build slots, caches. (Not the build
/// context: that is the files of an ImageBuild.)
pub struct Shared {
    pub client: Client,
    pub config: ControllerConfig,
    pub recorder: super::events::Events,
    pub metrics: Arc<Metrics>,
    pub build_slots: Semaphore,
    /// Registry Secrets read, kept while the Secret watch says they are unchanged.
    pub secrets: super::secrets::SecretCache,
    pub work_dir: PathBuf,
    /// Layers pushed before, by diffID (in memory and in the work directory): a layer the
    /// target repository already holds is not compressed or uploaded again.
    pub layer_cache: crate::layer::LayerCache,
    /// Reader Pods for PersistentVolumeClaim contexts; `None` when they are off.
    pub readers: Option<super::pvc::Readers>,
    /// Registry checks of Succeeded ImageBuilds: their schedule, limit and findings.
    pub checks: drift::Checks,
}

/// Quiet re-check of a built image (nothing is uploaded when inputs are unchanged).
const RESYNC: Duration = Duration::from_secs(3600);

pub async fn reconcile(ib: Arc<ImageBuild>, shared: Arc<Shared>) -> Result<Action, Error> {
    shared.metrics.reconciles.inc();
    let api: Api<ImageBuild> =
        Api::namespaced(shared.client.clone(), &ib.namespace().unwrap_or_default());
    if ib.metadata.deletion_timestamp.is_some() {
        shared.checks.forget(&ib.uid().unwrap_or_default());
        return finalize(&ib, &api, &shared).await;
    }
    sync_finalizer(&ib, &api).await?;

    let inputs = match inputs::resolve(&ib, &shared.client, &shared.config, &shared.secrets).await {
        Ok(inputs) => inputs,
        // The API server did not answer: nothing is known about the inputs, so nothing is
        // recorded; the error policy tries again.
        Err(error) if error.is_api_unavailable() => return Err(error),
        Err(error) => return record_failure(&ib, &api, &shared, error, None).await,
    };
    if let Some(action) = wait_or_skip(&ib, &inputs.inputs_digest) {
        if shared.checks.enabled() && phase(&ib) == Some(Phase::Succeeded) {
            return keep_in_sync(&ib, &api, &shared, inputs).await;
        }
        return Ok(action);
    }
    // The cache can lag behind this controller's own last status write: a reconcile queued by
    // an earlier write of a build starts the moment that build ends, before the watch has
    // delivered its final status. Deciding on the cache would build a finished generation again
    // and write its final status twice; the API server's copy settles it.
    let current = api.get(&ib.name_any()).await?;
    match recheck(&ib, &current, &inputs.inputs_digest) {
        Recheck::Skip(action) => Ok(action),
        Recheck::Build => build(&current, &api, &shared, inputs, &[]).await,
    }
}

fn phase(ib: &ImageBuild) -> Option<Phase> {
    ib.status.as_ref().and_then(|s| s.phase)
}

/// A Succeeded ImageBuild whose inputs did not change: when its moment comes, the registry is
/// checked (see [`drift`]); a moved base or a lost image is built again, a wrong tag put back.
async fn keep_in_sync(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    shared: &Arc<Shared>,
    inputs: ResolvedInputs,
) -> Result<Action, Error> {
    let uid = ib.uid().unwrap_or_default();
    if let Some(wait) = shared.checks.wait(&uid) {
        return Ok(Action::requeue(wait));
    }
    let checking = async {
        shared.metrics.registry_checks_in_flight.inc();
        let found = drift::check(
            ib,
            &uid,
            &shared.checks,
            &inputs.target,
            inputs.base.as_ref(),
        )
        .await;
        shared.metrics.registry_checks_in_flight.dec();
        found
    };
    let Some(found) = shared.checks.limited(checking).await else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let image = &ib.spec.image;
    let digest = ib
        .status
        .as_ref()
        .and_then(|s| s.digest.clone())
        .unwrap_or_default();
    let (finding, base_unknown) = match found {
        Ok(checked) => (checked.finding, checked.base_unknown),
        Err(error) => {
            shared.metrics.registry_checked("unreachable");
            tracing::info!(%error, image, "registry check failed; Ready stays as it is");
            let message = format!(
                "could not check the registry (Ready stays as the last push left it; trying \
                 again): {error}"
            );
            let sync = drift::Sync::unknown(error.reason(), message);
            sync_condition(ib, api, shared, sync).await?;
            return Ok(Action::requeue(shared.checks.failed(&uid)));
        }
    };
    // The base's registry did not answer; the tags were checked all the same.
    let base_answered = base_unknown.is_none();
    let counted = |result: &'static str| {
        let result = if base_answered { result } else { "unreachable" };
        shared.metrics.registry_checked(result);
    };
    let (sync, next) = match base_unknown {
        None => (drift::Sync::in_sync(&digest), shared.checks.done(&uid)),
        Some(error) => {
            let from = ib.spec.from.clone().unwrap_or_default();
            tracing::info!(%error, image, %from, "base image check failed; Ready stays as it is");
            let message = format!(
                "could not check the base image {from} (Ready stays as the last push left it; \
                 trying again): {error}"
            );
            let sync = drift::Sync::unknown(error.reason(), message);
            (sync, shared.checks.failed(&uid))
        }
    };
    match finding {
        drift::Finding::InSync => {
            counted("in_sync");
            sync_condition(ib, api, shared, sync).await?;
            Ok(Action::requeue(next))
        }
        drift::Finding::BaseMissing => {
            counted("base_missing");
            let from = ib.spec.from.clone().unwrap_or_default();
            sync_condition(ib, api, shared, drift::Sync::base_missing(&from)).await?;
            Ok(Action::requeue(next))
        }
        drift::Finding::TagsRestored(tags) => {
            counted("tag_restored");
            for tag in &tags {
                let note = tag.note(image, &digest);
                tracing::info!(image, tag = %tag.tag, "tag restored");
                status::event(&shared.recorder, ib, EventType::Normal, "TagRestored", note).await;
            }
            sync_condition(ib, api, shared, sync).await?;
            Ok(Action::requeue(next))
        }
        drift::Finding::BaseMoved { old, new } => {
            counted("base_changed");
            let from = ib.spec.from.clone().unwrap_or_default();
            let note = format!("base image {from} moved from {old} to {new}; building on it");
            tracing::info!(image, %from, %old, %new, "base image moved");
            status::event(
                &shared.recorder,
                ib,
                EventType::Normal,
                "BaseImageChanged",
                note,
            )
            .await;
            build_again(ib, api, shared, inputs, &[]).await
        }
        drift::Finding::ImageLost(tags) => {
            counted("image_lost");
            tracing::info!(image, "the registry lost the image; building it again");
            build_again(ib, api, shared, inputs, &tags).await
        }
    }
}

/// A build that a registry check calls for, on the API server's current copy.
async fn build_again(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    shared: &Arc<Shared>,
    inputs: ResolvedInputs,
    restoring: &[drift::Misplaced],
) -> Result<Action, Error> {
    let current = api.get(&ib.name_any()).await?;
    if current.metadata.generation != ib.metadata.generation {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    build(&current, api, shared, inputs, restoring).await
}

/// Writes the RegistryInSync condition when it says something new.
async fn sync_condition(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    shared: &Shared,
    sync: drift::Sync,
) -> Result<(), Error> {
    let Some(previous) = ib.status.as_ref() else {
        return Ok(());
    };
    let Some(next) = status::with_condition(previous, ib.metadata.generation, sync.condition())
    else {
        return Ok(());
    };
    status::write(api, ib, &next).await?;
    if let Some((reason, note)) = sync.warning() {
        status::event(&shared.recorder, ib, EventType::Warning, reason, note).await;
    }
    Ok(())
}

/// What to do, on the API server's current copy of an ImageBuild, about a build its cached copy
/// calls for.
#[derive(Debug, PartialEq, Eq)]
enum Recheck {
    Build,
    Skip(Action),
}

fn recheck(cached: &ImageBuild, current: &ImageBuild, context_digest: &str) -> Recheck {
    if current.metadata.generation != cached.metadata.generation {
        // The inputs were resolved for an older spec; the watch brings the new one (and a
        // reconcile with it) shortly.
        return Recheck::Skip(Action::requeue(Duration::from_secs(1)));
    }
    match wait_or_skip(current, context_digest) {
        Some(action) => Recheck::Skip(action),
        None => Recheck::Build,
    }
}

/// `Some` when no build is due: inputs unchanged since success, or since a failure that needs a
/// change, or a retry that is not due yet.
fn wait_or_skip(ib: &ImageBuild, context_digest: &str) -> Option<Action> {
    let status = ib.status.as_ref()?;
    let same = status.context_digest.as_deref() == Some(context_digest)
        && status.observed_generation == ib.metadata.generation;
    if !same {
        return None;
    }
    match status.phase? {
        Phase::Succeeded => Some(Action::requeue(RESYNC)),
        Phase::Failed => match &status.next_retry_time {
            None => Some(Action::await_change()),
            Some(at) => {
                let left = at.0.duration_since(Timestamp::now());
                (left > SignedDuration::ZERO).then(|| {
                    Action::requeue(Duration::try_from(left).unwrap_or(Duration::from_secs(1)))
                })
            }
        },
        _ => None,
    }
}

async fn build(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    shared: &Arc<Shared>,
    inputs: ResolvedInputs,
    restoring: &[drift::Misplaced],
) -> Result<Action, Error> {
    let previous = ib.status.clone().unwrap_or_default();
    let attempts = if previous.context_digest.as_deref() == Some(&inputs.inputs_digest) {
        previous.attempts.unwrap_or(0) + 1
    } else {
        1
    };
    shared.metrics.queue_depth.inc();
    let slot = shared.build_slots.acquire().await;
    shared.metrics.queue_depth.dec();
    let Ok(_slot) = slot else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    shared.metrics.builds_in_flight.inc();
    let started = Instant::now();

    let mut status = status::next_status(
        ib,
        Phase::Building,
        Readiness {
            ready: false,
            reason: "Building",
            message: format!("building {} (attempt {attempts})", ib.spec.image),
        },
    );
    status.context_digest = Some(inputs.inputs_digest.clone());
    status.attempts = Some(attempts);
    status.start_time = Some(status::now());
    status.completion_time = None;
    status.next_retry_time = None;
    status.insecure = inputs.target.insecure;
    status::write(api, ib, &status).await?;
    if inputs.target.insecure {
        let note = format!(
            "TLS verification is off for {} (registry.insecure)",
            inputs.target.host
        );
        status::event(
            &shared.recorder,
            ib,
            EventType::Warning,
            "InsecureRegistry",
            note,
        )
        .await;
    }

    let timeout = shared.config.build_timeout(ib.spec.timeout.as_deref());
    let outcome = build_and_push(ib, api, shared, &inputs, &status, timeout.limit).await;
    shared.metrics.builds_in_flight.dec();
    let seconds = started.elapsed().as_secs_f64();
    let failure = match outcome {
        Ok(Some(pushed)) => Ok(pushed),
        Err(error) => Err(error),
        Ok(None) => Err(Error::Timeout {
            after: timeout.text,
        }),
    };
    let pushed = match failure {
        Ok(pushed) => pushed,
        Err(error) => {
            shared
                .metrics
                .build_finished(error.reason(), Some(error.category().kind), seconds);
            let attempt = Some((inputs.inputs_digest, attempts));
            return record_failure(ib, api, shared, error, attempt).await;
        }
    };

    let up_to_date = pushed.bytes_uploaded == 0;
    let reason = if up_to_date { "UpToDate" } else { "Pushed" };
    shared.metrics.build_finished(reason, None, seconds);
    shared.metrics.bytes_pushed.inc_by(pushed.bytes_uploaded);
    let message = format!(
        "{} pushed as {} ({} bytes uploaded)",
        pushed.image_ref,
        pushed.tags.join(", "),
        pushed.bytes_uploaded
    );
    let mut done = status::next_status(
        ib,
        Phase::Succeeded,
        Readiness {
            ready: true,
            reason,
            message: message.clone(),
        },
    );
    done.context_digest = Some(inputs.inputs_digest);
    done.attempts = Some(attempts);
    done.start_time = status.start_time.clone();
    done.completion_time = Some(status::now());
    done.next_retry_time = None;
    done.insecure = inputs.target.insecure;
    done.digest = Some(pushed.digest.to_string());
    done.short_digest = Some(pushed.digest.short().to_owned());
    done.image_ref = Some(pushed.image_ref.clone());
    done.tags = pushed.tags.clone();
    done.base_digest = pushed.base_digest.as_ref().map(ToString::to_string);
    done.platforms = pushed
        .platforms
        .iter()
        .map(|(platform, digest)| PlatformDigest {
            platform: platform.to_string(),
            digest: digest.to_string(),
        })
        .collect();
    done.size = Some(pushed.size);
    if shared.checks.enabled() {
        let sync = drift::Sync::in_sync(pushed.digest.as_str());
        if let Some(synced) =
            status::with_condition(&done, ib.metadata.generation, sync.condition())
        {
            done = synced;
        }
    }
    status::write(api, ib, &done).await?;
    status::event(&shared.recorder, ib, EventType::Normal, reason, message).await;
    for tag in restoring {
        let note = tag.note(&ib.spec.image, pushed.digest.as_str());
        status::event(&shared.recorder, ib, EventType::Normal, "TagRestored", note).await;
    }
    tracing::info!(image = %pushed.image_ref, bytes_uploaded = pushed.bytes_uploaded, seconds, "image pushed");
    Ok(Action::requeue(RESYNC))
}

/// Builds and pushes in a task of its own that owns everything it uses, so a timeout can abort
/// it and the reconcile future stays `Send` without borrowing across the build.
async fn build_and_push(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    shared: &Arc<Shared>,
    inputs: &ResolvedInputs,
    building: &crate::api::ImageBuildStatus,
    timeout: Duration,
) -> Result<Option<build::Pushed>, Error> {
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&shared.work_dir)
        .map_err(|e| Error::Build(build::BuildError::WorkDir(e)))?;
    let source = match &inputs.context {
        ResolvedContext::Files(files) => ContextSource::Files(files.clone()),
        ResolvedContext::Claim(_) => ContextSource::Directory(work.path().join("context")),
    };
    let job = BuildJob {
        spec: ib.spec.clone(),
        source,
        target: inputs.target.clone(),
        base: inputs.base.clone(),
        work_dir: work.path().to_path_buf(),
        max_context_bytes: Some(shared.config.max_context_bytes),
        source_date_epoch: None,
        // Contexts arrive as ConfigMap data or a fresh upload, so stat keys rarely hit; the
        // diffID map finds the layers a changed context shares with the last push.
        layer_cache: Some(shared.layer_cache.clone()),
        upload_while_building: true,
        progress: crate::build::no_build_progress(),
    };
    let (api, ib) = (api.clone(), ib.clone());
    let mut pushing = building.clone();
    pushing.phase = Some(Phase::Pushing);
    let claim = match &inputs.context {
        ResolvedContext::Claim(claim) => Some(claim.clone()),
        ResolvedContext::Files(_) => None,
    };
    let shared = shared.clone();
    let task = tokio::spawn(async move {
        if let (Some(claim), ContextSource::Directory(dir)) = (&claim, &job.source) {
            super::pvc::fetch_context(&shared, &ib, claim, dir).await?;
        }
        let prepared = build::build_image(&job).await?;
        status::write(&api, &ib, &pushing).await?;
        Ok::<_, Error>(build::push_image(&job, prepared, crate::registry::no_progress()).await?)
    });
    let abort = task.abort_handle();
    let outcome = match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result.map(Some),
        Ok(Err(join)) => Err(Error::Build(build::BuildError::Internal(join.to_string()))),
        Err(_) => {
            abort.abort();
            Ok(None)
        }
    };
    drop(work);
    outcome
}

/// Writes a failure to status (and a Warning event when the condition changed) and decides
/// when to look again.
async fn record_failure(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    shared: &Shared,
    error: Error,
    attempt: Option<(String, u32)>,
) -> Result<Action, Error> {
    let reason = error.reason();
    let message = error.to_string();
    let category = error.category();
    tracing::warn!(reason, kind = %category.kind, transient = category.transient, %message, "build failed");
    let mut status = status::next_status(
        ib,
        Phase::Failed,
        Readiness {
            ready: false,
            reason,
            message: message.clone(),
        },
    );
    let (digest, attempts) = attempt.unzip();
    status.context_digest = digest;
    status.attempts = attempts;
    status.completion_time = Some(status::now());
    let retry_in = category.transient.then(|| backoff(attempts.unwrap_or(1)));
    status.next_retry_time = retry_in.map(|d| {
        Time(
            Timestamp::now() + SignedDuration::try_from(d).unwrap_or(SignedDuration::from_secs(60)),
        )
    });
    let changed = status::condition_changed(ib, &status);
    status::write(api, ib, &status).await?;
    if changed || attempts.is_some() {
        status::event(&shared.recorder, ib, EventType::Warning, reason, message).await;
    }
    Ok(retry_in.map_or_else(Action::await_change, Action::requeue))
}

/// Capped exponential backoff with jitter: 5 s, 10 s, 20 s ... up to 5 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let base = 5u64.saturating_mul(1 << attempts.saturating_sub(1).min(6));
    let capped = base.min(300);
    Duration::from_millis(capped * 1000 + fastrand::u64(0..1000))
}

/// Keeps the finalizer present exactly when `deletionPolicy: Delete`.
async fn sync_finalizer(ib: &ImageBuild, api: &Api<ImageBuild>) -> Result<(), Error> {
    let wanted = ib.spec.deletion_policy == DeletionPolicy::Delete;
    let has = ib.finalizers().iter().any(|f| f == FINALIZER);
    if wanted == has {
        return Ok(());
    }
    let mut finalizers: Vec<String> = ib
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if wanted {
        finalizers.push(FINALIZER.to_owned());
    }
    set_finalizers(ib, api, finalizers).await
}

async fn set_finalizers(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    // resourceVersion makes the merge patch conditional: another writer's finalizer is never lost.
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": ib.resource_version()}
    });
    api.patch(
        &ib.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Deletion: with `deletionPolicy: Delete`, removes the pushed tags, then lets the object go.
async fn finalize(
    ib: &ImageBuild,
    api: &Api<ImageBuild>,
    shared: &Shared,
) -> Result<Action, Error> {
    if !ib.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let tags = ib
        .status
        .as_ref()
        .map(|s| s.tags.clone())
        .unwrap_or_default();
    if !tags.is_empty() {
        match delete_tags(ib, shared, &tags).await {
            Ok(()) => {
                let note = format!("deleted tags {} of {}", tags.join(", "), ib.spec.image);
                status::event(&shared.recorder, ib, EventType::Normal, "TagsDeleted", note).await;
            }
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                let note = format!("could not delete the pushed tags, leaving them: {error}");
                status::event(
                    &shared.recorder,
                    ib,
                    EventType::Warning,
                    error.reason(),
                    note,
                )
                .await;
            }
        }
    }
    let rest: Vec<String> = ib
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(ib, api, rest).await?;
    Ok(Action::await_change())
}

async fn delete_tags(ib: &ImageBuild, shared: &Shared, tags: &[String]) -> Result<(), Error> {
    let inputs = inputs::resolve(ib, &shared.client, &shared.config, &shared.secrets).await;
    // Deletion must work even when the context ConfigMaps are already gone: fall back to the
    // registry settings alone.
    let access = match inputs {
        Ok(inputs) => inputs.target,
        Err(_) => {
            inputs::registry_access(ib, &shared.client, &shared.config, &shared.secrets).await?
        }
    };
    build::delete_tags(&access, &ib.spec.image, tags).await?;
    Ok(())
}

pub fn error_policy(_ib: Arc<ImageBuild>, error: &Error, _shared: Arc<Shared>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(backoff(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_build(generation: i64, status: serde_json::Value) -> ImageBuild {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "imagebuild.dev/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "app", "namespace": "default", "generation": generation},
            "spec": {"context": {"configMaps": [{"name": "src"}]}, "image": "registry.test/o/app"},
            "status": status,
        }))
        .expect("ImageBuild")
    }

    #[test]
    fn a_build_the_cache_calls_for_is_skipped_when_the_api_server_has_it_succeeded() {
        let pushing = serde_json::json!({"phase": "Pushing", "observedGeneration": 1, "contextDigest": "sha256:c"});
        let succeeded = serde_json::json!({"phase": "Succeeded", "observedGeneration": 1, "contextDigest": "sha256:c"});
        let cached = image_build(1, pushing.clone());
        assert_eq!(
            recheck(&cached, &image_build(1, succeeded), "sha256:c"),
            Recheck::Skip(Action::requeue(RESYNC))
        );
        assert_eq!(
            recheck(&cached, &image_build(1, pushing), "sha256:c"),
            Recheck::Build
        );
    }

    #[test]
    fn a_build_for_a_spec_the_api_server_has_replaced_waits_for_the_new_spec() {
        let pushing = serde_json::json!({"phase": "Pushing", "observedGeneration": 1, "contextDigest": "sha256:c"});
        let recheck = recheck(
            &image_build(1, pushing.clone()),
            &image_build(2, pushing),
            "sha256:c",
        );
        assert_eq!(
            recheck,
            Recheck::Skip(Action::requeue(Duration::from_secs(1)))
        );
    }

    /// What the reconciler decides for a given status, without an API server: `build`, or the
    /// wait it schedules instead.
    #[test]
    fn each_status_leads_to_a_build_or_a_wait() {
        let past = "2000-01-01T00:00:00Z";
        let future = "2999-01-01T00:00:00Z";
        // phase, status digest, observed generation, next retry => build? / wait
        type Row = (
            &'static str,
            &'static str,
            i64,
            Option<&'static str>,
            Option<Action>,
        );
        let table: &[Row] = &[
            // Unchanged since success: a quiet re-check after an hour.
            (
                "Succeeded",
                "sha256:c",
                1,
                None,
                Some(Action::requeue(RESYNC)),
            ),
            // New inputs or a new generation: build, whatever the phase.
            ("Succeeded", "sha256:old", 1, None, None),
            ("Succeeded", "sha256:c", 0, None, None),
            ("Failed", "sha256:old", 1, None, None),
            // A failure that needs a change waits for one.
            ("Failed", "sha256:c", 1, None, Some(Action::await_change())),
            // A transient failure is retried when its time comes, not before.
            ("Failed", "sha256:c", 1, Some(past), None),
            // A build interrupted mid-way (a restart) is built again.
            ("Building", "sha256:c", 1, None, None),
            ("Pushing", "sha256:c", 1, None, None),
            ("Pending", "sha256:c", 1, None, None),
        ];
        for (phase, digest, observed, retry, want) in table {
            let mut status = serde_json::json!({"phase": phase, "observedGeneration": observed, "contextDigest": digest});
            if let Some(at) = retry {
                status["nextRetryTime"] = serde_json::json!(at);
            }
            let got = wait_or_skip(&image_build(1, status), "sha256:c");
            assert_eq!(
                &got, want,
                "{phase} {digest} generation {observed} retry {retry:?}"
            );
        }
        let waiting = serde_json::json!({"phase": "Failed", "observedGeneration": 1,
            "contextDigest": "sha256:c", "nextRetryTime": future});
        assert!(
            matches!(wait_or_skip(&image_build(1, waiting), "sha256:c"), Some(a) if a != Action::await_change()),
            "a retry that is not due yet is waited for"
        );
        assert_eq!(
            wait_or_skip(&image_build(1, serde_json::Value::Null), "sha256:c"),
            None,
            "no status yet: build"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped_at_five_minutes() {
        assert!(backoff(1) < Duration::from_secs(6));
        assert!(backoff(3) >= Duration::from_secs(20));
        assert!(backoff(30) <= Duration::from_secs(301));
    }
}
