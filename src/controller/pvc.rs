//! PersistentVolumeClaim contexts: a short-lived reader Pod in the ImageBuild's namespace mounts
//! the claim read-only and streams its files to the controller, which holds no claim itself.
//!
//! The reader runs the controller's own image (`imagebuild send-context`), passes the
//! `restricted` Pod Security level, has no ServiceAccount token and no Secret: what it holds is a
//! one-time token that lets it upload this one context to the controller's upload endpoint
//! ([`super::upload`]). The files land in the build's scratch directory and the ordinary
//! builder takes them from there, so the layer is the one a local build of the same files gives.
//!
//! The reader Pod is deleted when the fetch ends in any way: success, failure, the build's
//! timeout (the build task is aborted and [`ReaderPod`]'s drop deletes it), and deletion of the
//! ImageBuild (its ownerReference lets the garbage collector delete it, and the fetch notices).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceRequirements};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use super::config::ControllerConfig;
use super::error::Error;
use super::reconcile::Shared;
use super::upload::{Expected, Uploads};
use crate::api::{ImageBuild, PvcSource};
use crate::build::BuildError;
use crate::context::{ContextError, ContextOptions, path_problem};
use crate::transfer::{ReceiveError, ReceiveOptions, TOKEN_ENV};

/// Where the claim is mounted in the reader Pod.
pub const CLAIM_MOUNT: &str = "/claim";

/// Label on every reader Pod: the UID of the ImageBuild it reads for.
pub const UID_LABEL: &str = "imagebuild.dev/imagebuild-uid";

/// Label on every reader Pod: the name of its ImageBuild, when it fits a label value.
pub const NAME_LABEL: &str = "imagebuild.dev/imagebuild";

/// The reader Pod's user and group (`restricted` wants a non-root user; 65532 is distroless'
/// "nonroot").
pub const READER_USER: i64 = 65532;

/// How long a reader Pod that broke its upload off gets to report why before the build says so
/// itself.
const FAILURE_REPORT_WAIT: Duration = Duration::from_secs(20);

/// How reader Pods are made (flags of `imagebuild controller`).
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// Where the upload endpoint listens.
    pub listen: SocketAddr,
    /// The endpoint's URL as reader Pods reach it, without a trailing `/`.
    pub url: String,
    /// The reader image; its entrypoint must be `imagebuild` (the controller's own image).
    pub image: String,
    pub pull_policy: String,
    pub resources: ResourceRequirements,
}

/// Reader settings and the uploads the endpoint is waiting for.
pub struct Readers {
    pub settings: ReaderSettings,
    pub uploads: Uploads,
}

/// The reader flags as given.
#[derive(Debug, Clone, Default)]
pub struct ReaderFlags {
    pub context_listen: Option<SocketAddr>,
    pub context_url: Option<String>,
    pub pod_ip: Option<IpAddr>,
    pub reader_image: Option<String>,
    pub pull_policy: String,
    pub resources: Option<String>,
}

/// Reader flags that do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum ReaderConfigError {
    #[error("--reader-image needs --context-listen (where reader Pods send the files)")]
    NoListen,
    #[error("--context-listen needs --reader-image (the image of reader Pods)")]
    NoImage,
    #[error(
        "--context-listen needs --context-url, or the POD_IP environment variable to derive it \
         (the chart sets it)"
    )]
    NoUrl,
    #[error("--context-url `{0}` is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("--reader-resources is not a ResourceRequirements JSON object: {0}")]
    BadResources(serde_json::Error),
}

impl ReaderSettings {
    /// Settings from the flags; `None` when PersistentVolumeClaim contexts are off.
    pub fn from_flags(flags: ReaderFlags) -> Result<Option<Self>, ReaderConfigError> {
        let Some(listen) = flags.context_listen else {
            return match flags.reader_image {
                Some(_) => Err(ReaderConfigError::NoListen),
                None => Ok(None),
            };
        };
        let image = flags.reader_image.ok_or(ReaderConfigError::NoImage)?;
        let url = match (flags.context_url, flags.pod_ip) {
            (Some(url), _) => url,
            // The Pod's own address, not a Service: the token lives in this replica's memory.
            (None, Some(ip)) => format!("http://{}", SocketAddr::new(ip, listen.port())),
            (None, None) => return Err(ReaderConfigError::NoUrl),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ReaderConfigError::BadUrl(url));
        }
        let resources = match flags.resources {
            Some(text) => serde_json::from_str(&text).map_err(ReaderConfigError::BadResources)?,
            None => default_resources(),
        };
        Ok(Some(Self {
            listen,
            url: url.trim_end_matches('/').to_owned(),
            image,
            pull_policy: flags.pull_policy,
            resources,
        }))
    }
}

/// Enough for walking a directory and streaming it: the sender holds a few 256 KiB chunks.
fn default_resources() -> ResourceRequirements {
    serde_json::from_value(json!({
        "requests": {"cpu": "10m", "memory": "16Mi"},
        "limits": {"cpu": "500m", "memory": "64Mi"},
    }))
    .unwrap_or_default()
}

/// Copies the files of `claim` (below its `subPath`) into the directory `into`.
pub async fn fetch_context(
    shared: &Shared,
    ib: &ImageBuild,
    claim: &PvcSource,
    into: &Path,
) -> Result<(), Error> {
    let readers = shared.readers.as_ref().ok_or(Error::PvcUnsupported)?;
    let namespace = ib.namespace().unwrap_or_default();
    let source = ClaimSource::new(&namespace, claim)?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &namespace);
    if claims.get_opt(&claim.claim_name).await?.is_none() {
        return Err(Error::ClaimNotFound {
            namespace,
            name: claim.claim_name.clone(),
        });
    }
    let pods: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    remove_earlier_readers(&pods, ib).await?;

    let mut expected = readers
        .uploads
        .expect(into.to_owned(), source.receive_options(ib, &shared.config))
        .map_err(|e| Error::Build(BuildError::Internal(e.to_string())))?;
    let timeout = shared
        .config
        .build_timeout(ib.spec.timeout.as_deref())
        .limit;
    let pod = reader_pod(ib, &source, &readers.settings, &expected, timeout)?;
    let created = pods.create(&PostParams::default(), &pod).await?;
    let reader = ReaderPod {
        api: pods,
        name: created.name_any(),
        armed: true,
    };
    tracing::info!(pod = %reader.name, claim = %source, "reader Pod created");
    let start_by = Instant::now() + start_allowance(timeout);
    let outcome = Fetch {
        shared,
        reader: &reader,
        source: &source,
        timeout,
    }
    .wait(&mut expected, start_by)
    .await;
    reader.delete().await;
    outcome
}

/// The claim and subPath of one fetch, checked.
struct ClaimSource {
    namespace: String,
    name: String,
    sub_path: Option<String>,
}

impl ClaimSource {
    fn new(namespace: &str, claim: &PvcSource) -> Result<Self, Error> {
        let sub_path = claim
            .sub_path
            .as_deref()
            .map(|s| s.trim_end_matches('/'))
            .filter(|s| !s.is_empty() && *s != ".");
        if let Some(problem) = sub_path.and_then(path_problem) {
            return Err(Error::InvalidSpec {
                field: "spec.context.persistentVolumeClaim.subPath",
                message: format!("the path {problem}"),
            });
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: claim.claim_name.clone(),
            sub_path: sub_path.map(str::to_owned),
        })
    }

    /// The build's own context options: its excludes and the controller's size limit.
    fn receive_options(&self, ib: &ImageBuild, config: &ControllerConfig) -> ReceiveOptions {
        ReceiveOptions {
            context: ContextOptions {
                exclude: ib.spec.exclude.clone(),
                honour_dockerignore: true,
                max_bytes: Some(config.max_context_bytes),
                max_entries: None,
            },
            origin: format!("PersistentVolumeClaim {}/{}", self.namespace, self.name),
            sub_path: self.sub_path.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ClaimSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        match &self.sub_path {
            Some(sub) => write!(f, " (subPath {sub})"),
            None => Ok(()),
        }
    }
}

/// How long a reader may take to start: the timeout less a margin, so that a Pod stuck in
/// Pending fails the build with its reason before the build's own timeout says only "timeout".
fn start_allowance(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    timeout.saturating_sub(margin)
}

/// The reader Pod of one fetch.
fn reader_pod(
    ib: &ImageBuild,
    source: &ClaimSource,
    settings: &ReaderSettings,
    expected: &Expected,
    timeout: Duration,
) -> Result<Pod, Error> {
    let uid = ib.uid().unwrap_or_default();
    let name = ib.name_any();
    let mut labels = json!({
        "app.kubernetes.io/name": "imagebuild",
        "app.kubernetes.io/component": "context-reader",
        "app.kubernetes.io/managed-by": "imagebuild-controller",
        UID_LABEL: uid,
    });
    if name.len() <= 63 {
        labels[NAME_LABEL] = json!(name);
    }
    let mut args = vec![
        "send-context".to_owned(),
        "--dir".into(),
        CLAIM_MOUNT.into(),
    ];
    if let Some(sub) = &source.sub_path {
        args.extend(["--sub-path".into(), sub.clone()]);
    }
    args.extend([
        "--to".into(),
        format!("{}{}", settings.url, expected.path()),
    ]);
    let owner = ib.controller_owner_ref(&());
    // Room for "-ctx-" and the five random characters generateName adds.
    let prefix: String = name.chars().take(40).collect();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-ctx-", prefix.trim_end_matches(['-', '.'])),
            "namespace": source.namespace,
            "labels": labels,
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "activeDeadlineSeconds": timeout.as_secs().max(1),
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": READER_USER,
                "runAsGroup": READER_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "send-context",
                "image": settings.image,
                "imagePullPolicy": settings.pull_policy,
                "args": args,
                "env": [
                    {"name": TOKEN_ENV, "value": expected.token()},
                    {"name": "RUST_LOG", "value": "warn"},
                ],
                "resources": settings.resources,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": READER_USER,
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [{"name": "claim", "mountPath": CLAIM_MOUNT, "readOnly": true}],
            }],
            // The whole claim, read-only: a subPath mount would make the kubelet create a
            // missing directory in the user's volume; the sender resolves the subPath instead.
            "volumes": [{
                "name": "claim",
                "persistentVolumeClaim": {"claimName": source.name, "readOnly": true},
            }],
        },
    });
    serde_json::from_value(pod).map_err(|e| {
        Error::Build(BuildError::Internal(format!(
            "reader Pod specification: {e}"
        )))
    })
}

/// Readers of an earlier attempt (a controller that restarted mid-build) are not waited for.
async fn remove_earlier_readers(pods: &Api<Pod>, ib: &ImageBuild) -> Result<(), Error> {
    let selector = format!("{UID_LABEL}={}", ib.uid().unwrap_or_default());
    let earlier = pods.list(&ListParams::default().labels(&selector)).await?;
    for pod in earlier {
        delete_pod(pods, &pod.name_any()).await;
    }
    Ok(())
}

/// A reader Pod that is deleted when this value goes away, also when the build task is aborted.
struct ReaderPod {
    api: Api<Pod>,
    name: String,
    armed: bool,
}

impl ReaderPod {
    async fn delete(mut self) {
        self.armed = false;
        delete_pod(&self.api, &self.name).await;
    }
}

impl Drop for ReaderPod {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The fetch was cut short (timeout, panic): nobody awaits any more, so delete in the
        // background.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (api, name) = (self.api.clone(), std::mem::take(&mut self.name));
            runtime.spawn(async move { delete_pod(&api, &name).await });
        }
    }
}

async fn delete_pod(api: &Api<Pod>, name: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(1),
        ..DeleteParams::background()
    };
    for attempt in 1..=3 {
        match api.delete(name, &params).await {
            Ok(_) => {
                tracing::debug!(pod = name, "reader Pod deleted");
                return;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(error) => {
                tracing::warn!(pod = name, attempt, %error, "cannot delete the reader Pod");
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
        }
    }
}

/// Where a reader Pod is in its life, as far as the fetch cares.
#[derive(Debug, PartialEq, Eq)]
enum ReaderState {
    /// Not started yet (unscheduled, pulling, mounting...).
    Waiting,
    /// Its container has started.
    Started,
    Succeeded,
    Failed(String),
}

fn reader_state(pod: &Pod) -> ReaderState {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    match phase {
        "Succeeded" => ReaderState::Succeeded,
        "Failed" => ReaderState::Failed(failure_message(pod)),
        _ => {
            let started =
                container_state(pod).is_some_and(|s| s.running.is_some() || s.terminated.is_some());
            if started {
                ReaderState::Started
            } else {
                ReaderState::Waiting
            }
        }
    }
}

fn container_state(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()
}

/// Why a reader Pod failed: the sender's own message (its termination message, or the end of
/// its log), else the Pod's reason (DeadlineExceeded, Evicted...).
fn failure_message(pod: &Pod) -> String {
    if let Some(done) = container_state(pod).and_then(|s| s.terminated.as_ref()) {
        let message = done.message.as_deref().unwrap_or_default().trim();
        if !message.is_empty() {
            return last_chars(message, 1024);
        }
        let reason = done.reason.as_deref().unwrap_or("Error");
        return format!("{reason} (exit code {})", done.exit_code);
    }
    let status = pod.status.as_ref();
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("Failed");
    match status.and_then(|s| s.message.as_deref()) {
        Some(message) => format!("{reason}: {message}"),
        None => reason.to_owned(),
    }
}

fn last_chars(text: &str, limit: usize) -> String {
    let count = text.chars().count();
    if count <= limit {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - limit).collect();
    format!("...{tail}")
}

/// What the Pod itself says about why it has not started, if anything.
fn pod_says_why_waiting(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let reason = c.reason.as_deref().unwrap_or("Unschedulable");
        return Some(match c.message.as_deref() {
            Some(message) => format!("{reason}: {message}"),
            None => reason.to_owned(),
        });
    }
    let waiting = container_state(pod)?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    if reason.is_empty() || reason == "ContainerCreating" || reason == "PodInitializing" {
        return None;
    }
    Some(match waiting.message.as_deref() {
        Some(message) => format!("{reason}: {message}"),
        None => reason.to_owned(),
    })
}

/// One fetch in progress.
struct Fetch<'a> {
    shared: &'a Shared,
    reader: &'a ReaderPod,
    source: &'a ClaimSource,
    timeout: Duration,
}

type PodEvents = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send>,
>;

impl Fetch<'_> {
    /// Waits for the upload, watching the reader Pod for failure, deletion, or a start that
    /// does not come by `start_by`.
    async fn wait(&self, expected: &mut Expected, start_by: Instant) -> Result<(), Error> {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.reader.name));
        let mut events: PodEvents =
            Box::pin(watcher(self.reader.api.clone(), config).default_backoff());
        let mut last: Option<Pod> = None;
        let mut listed = false;
        let start_timer = tokio::time::sleep_until(start_by);
        tokio::pin!(start_timer);
        loop {
            let started = last
                .as_ref()
                .is_some_and(|p| reader_state(p) != ReaderState::Waiting);
            tokio::select! {
                outcome = expected.outcome() => return self.settle(outcome, &mut events).await,
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                        listed = true;
                        match reader_state(&pod) {
                            ReaderState::Failed(message) => return Err(self.failed(expected, message)),
                            ReaderState::Succeeded => return self.succeeded(expected, &mut events).await,
                            ReaderState::Waiting | ReaderState::Started => last = Some(pod),
                        }
                    }
                    Some(Ok(watcher::Event::Init)) => listed = false,
                    // A re-list without the Pod: it was deleted while the watch was down.
                    Some(Ok(watcher::Event::InitDone)) if !listed => return Err(self.gone()),
                    Some(Ok(watcher::Event::InitDone)) => {}
                    Some(Ok(watcher::Event::Delete(_))) => return Err(self.gone()),
                    Some(Err(error)) => tracing::debug!(%error, "watching the reader Pod; retrying"),
                    None => return Err(self.gone()),
                },
                () = &mut start_timer, if !started => return Err(self.pending(last.as_ref()).await),
            }
        }
    }

    /// The endpoint's verdict on the upload.
    async fn settle(
        &self,
        outcome: Option<super::upload::Outcome>,
        events: &mut PodEvents,
    ) -> Result<(), Error> {
        match outcome {
            Some(Ok(counts)) => {
                tracing::info!(claim = %self.source, entries = counts.entries, bytes = counts.bytes, "context received");
                Ok(())
            }
            Some(Err(ReceiveError::Refused(source))) => Err(self.invalid(source)),
            // The sender broke off: its Pod says why (a socket, an unreadable file...).
            Some(Err(ReceiveError::Interrupted(error))) => {
                match self.failure_report(events).await {
                    Some(message) => Err(self.pod_failed(message)),
                    None => Err(self.upload_failed(error.to_string())),
                }
            }
            Some(Err(error @ ReceiveError::Write { .. })) => {
                Err(self.upload_failed(error.to_string()))
            }
            None => Err(self.upload_failed("the upload endpoint dropped the upload".into())),
        }
    }

    /// The Pod failed: a refusal by the endpoint, if there was one, says more.
    fn failed(&self, expected: &mut Expected, message: String) -> Error {
        match expected.try_outcome() {
            Some(Err(ReceiveError::Refused(source))) => self.invalid(source),
            _ => self.pod_failed(message),
        }
    }

    /// The Pod ended well, so the endpoint has its outcome (it answers the sender after it
    /// records the outcome).
    async fn succeeded(
        &self,
        expected: &mut Expected,
        events: &mut PodEvents,
    ) -> Result<(), Error> {
        match expected.try_outcome() {
            Some(outcome) => self.settle(Some(outcome), events).await,
            None => Err(self.pod_failed(
                "the reader ended without sending the context (was --context-url right?)".into(),
            )),
        }
    }

    /// Waits a little for the reader Pod to fail and returns its message.
    async fn failure_report(&self, events: &mut PodEvents) -> Option<String> {
        let deadline = Instant::now() + FAILURE_REPORT_WAIT;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
            if let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event
                && let ReaderState::Failed(message) = reader_state(&pod)
            {
                return Some(message);
            }
        }
        None
    }

    /// The reader did not start in time: say why, from the Pod or its Warning events.
    async fn pending(&self, pod: Option<&Pod>) -> Error {
        let why = match pod.and_then(pod_says_why_waiting) {
            Some(why) => why,
            None => match self.latest_warning().await {
                Some(why) => why,
                None => match pod
                    .and_then(container_state)
                    .and_then(|s| s.waiting.as_ref())
                {
                    Some(_) => "its container is still being created (ContainerCreating)".into(),
                    None => "it was not scheduled, and no reason was reported".into(),
                },
            },
        };
        Error::ReaderPodPending {
            namespace: self.source.namespace.clone(),
            pod: self.reader.name.clone(),
            claim: self.source.to_string(),
            after: format!("{}s", start_allowance(self.timeout).as_secs()),
            why,
        }
    }

    /// The most recent Warning event about the reader Pod (FailedMount, FailedScheduling...).
    async fn latest_warning(&self) -> Option<String> {
        let events: Api<Event> =
            Api::namespaced(self.shared.client.clone(), &self.source.namespace);
        let params = ListParams::default().fields(&format!(
            "regarding.kind=Pod,regarding.name={}",
            self.reader.name
        ));
        let list = match events.list(&params).await {
            Ok(list) => list,
            Err(error) => {
                tracing::debug!(%error, "cannot list the reader Pod's events");
                return None;
            }
        };
        let when = |e: &Event| {
            e.series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        };
        let latest = list
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .max_by_key(when)?;
        let reason = latest.reason.unwrap_or_else(|| "Warning".into());
        Some(match latest.note {
            Some(note) => format!("{reason}: {note}"),
            None => reason,
        })
    }

    fn gone(&self) -> Error {
        self.pod_failed("it was deleted before it sent the context".into())
    }

    fn pod_failed(&self, message: String) -> Error {
        Error::ReaderPodFailed {
            namespace: self.source.namespace.clone(),
            pod: self.reader.name.clone(),
            claim: self.source.to_string(),
            message,
        }
    }

    fn upload_failed(&self, message: String) -> Error {
        Error::ContextUploadFailed {
            claim: self.source.to_string(),
            pod: self.reader.name.clone(),
            message,
        }
    }

    fn invalid(&self, source: ContextError) -> Error {
        Error::ContextUploadInvalid {
            claim: self.source.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
