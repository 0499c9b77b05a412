//! What a reader Pod's status says: whether its container has started, whether it failed and
//! why, and why it has not started yet.

use k8s_openapi::api::core::v1::{ContainerState, Pod};

/// Where a reader Pod is in its life, as far as the fetch cares.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReaderState {
    /// Not started yet (unscheduled, pulling, mounting...).
    Waiting,
    /// Its container has started.
    Started,
    Succeeded,
    Failed(String),
}

/// Where `pod` is, from its phase and its container's state.
pub(super) fn reader_state(pod: &Pod) -> ReaderState {
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

/// The state of the Pod's (only) container, once the kubelet reports one.
pub(super) fn container_state(pod: &Pod) -> Option<&ContainerState> {
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
pub(super) fn failure_message(pod: &Pod) -> String {
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

/// The last `limit` characters of `text`, after `...` when cut: a termination message that
/// falls back to the log ends with the sender's error. (`crate::failure::truncate` keeps the
/// start, counted in bytes, so it does not fit here.)
pub(super) fn last_chars(text: &str, limit: usize) -> String {
    let count = text.chars().count();
    if count <= limit {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - limit).collect();
    format!("...{tail}")
}

/// What the Pod itself says about why it has not started, if anything.
pub(super) fn pod_says_why_waiting(pod: &Pod) -> Option<String> {
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
