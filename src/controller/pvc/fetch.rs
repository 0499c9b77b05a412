//! One fetch: the claim and subPath it reads, checked, and the wait for the upload while the
//! reader Pod is watched for failure, deletion, or a start that does not come.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use super::pod::ReaderPod;
use super::pod_status::{ReaderState, container_state, pod_says_why_waiting, reader_state};
use crate::api::{ImageBuild, PvcSource};
use crate::context::{ContextError, ContextOptions, path_problem};
use crate::controller::config::ControllerConfig;
use crate::controller::error::Error;
use crate::controller::reconcile::Shared;
use crate::controller::upload::{Expected, Outcome};
use crate::transfer::{ReceiveError, ReceiveOptions};

/// How long a reader Pod that broke its upload off gets to report why before the build says so
/// itself.
const FAILURE_REPORT_WAIT: Duration = Duration::from_secs(20);

/// The claim and subPath of one fetch, checked.
pub(super) struct ClaimSource {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) sub_path: Option<String>,
}

impl ClaimSource {
    pub(super) fn new(namespace: &str, claim: &PvcSource) -> Result<Self, Error> {
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
    pub(super) fn receive_options(
        &self,
        ib: &ImageBuild,
        config: &ControllerConfig,
    ) -> ReceiveOptions {
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
pub(super) fn start_allowance(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    timeout.saturating_sub(margin)
}

/// One fetch in progress.
pub(super) struct Fetch<'a> {
    pub(super) shared: &'a Shared,
    pub(super) reader: &'a ReaderPod,
    pub(super) source: &'a ClaimSource,
    pub(super) timeout: Duration,
}

type PodEvents = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send>,
>;

impl Fetch<'_> {
    /// Waits for the upload, watching the reader Pod for failure, deletion, or a start that
    /// does not come by `start_by`.
    pub(super) async fn wait(
        &self,
        expected: &mut Expected,
        start_by: Instant,
    ) -> Result<(), Error> {
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
    async fn settle(&self, outcome: Option<Outcome>, events: &mut PodEvents) -> Result<(), Error> {
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
