//! Writing what happened to `status`, whole, with server-side apply under one field manager, and
//! the matching Kubernetes Events. A Warning event is sent only when the condition changes, so a
//! failure that repeats does not flood the namespace.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use crate::api::{ImageBuild, ImageBuildStatus, Phase};

/// Field manager of every status write.
pub const FIELD_MANAGER: &str = "imagebuild-controller";

/// The `Ready` condition as it should read now.
pub struct Readiness<'a> {
    pub ready: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Builds the next status from the current one: the caller changes what it knows, and the Ready
/// condition keeps its transition time when it did not change.
pub fn next_status(ib: &ImageBuild, phase: Phase, readiness: Readiness<'_>) -> ImageBuildStatus {
    let previous = ib.status.clone().unwrap_or_default();
    let status_word = if readiness.ready { "True" } else { "False" };
    let old = previous.conditions.iter().find(|c| c.type_ == "Ready");
    let transition = match old {
        Some(c) if c.status == status_word => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: "Ready".into(),
        status: status_word.into(),
        reason: readiness.reason.into(),
        message: crate::failure::truncate(&readiness.message, 1024),
        last_transition_time: transition,
        observed_generation: ib.metadata.generation,
    };
    // Ready first; the other conditions (RegistryInSync) stay as they were.
    let mut conditions = vec![condition];
    conditions.extend(
        previous
            .conditions
            .iter()
            .filter(|c| c.type_ != "Ready")
            .cloned(),
    );
    ImageBuildStatus {
        phase: Some(phase),
        observed_generation: ib.metadata.generation,
        conditions,
        ..previous
    }
}

/// A condition other than Ready, as the controller wants it to read.
pub struct Wanted<'a> {
    pub type_: &'a str,
    pub status: &'a str,
    pub reason: &'a str,
    pub message: String,
}

/// `status` with the condition `wanted` set (its transition time kept when its status word did
/// not change), or `None` when it already reads that way.
pub fn with_condition(
    status: &ImageBuildStatus,
    generation: Option<i64>,
    wanted: Wanted<'_>,
) -> Option<ImageBuildStatus> {
    let message = crate::failure::truncate(&wanted.message, 1024);
    let old = status.conditions.iter().find(|c| c.type_ == wanted.type_);
    if old.is_some_and(|c| {
        c.status == wanted.status && c.reason == wanted.reason && c.message == message
    }) {
        return None;
    }
    let transition = match old {
        Some(c) if c.status == wanted.status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: wanted.type_.into(),
        status: wanted.status.into(),
        reason: wanted.reason.into(),
        message,
        last_transition_time: transition,
        observed_generation: generation,
    };
    let mut next = status.clone();
    match next.conditions.iter_mut().find(|c| c.type_ == wanted.type_) {
        Some(slot) => *slot = condition,
        None => next.conditions.push(condition),
    }
    Some(next)
}

/// Applies `status` to the object.
pub async fn write(
    api: &Api<ImageBuild>,
    ib: &ImageBuild,
    status: &ImageBuildStatus,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "apiVersion": "imagebuild.dev/v1alpha1",
        "kind": "ImageBuild",
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut pause = FIRST_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        match api
            .patch_status(&ib.name_any(), &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) if attempt < WRITE_ATTEMPTS && worth_retrying(&error) => {
                tracing::debug!(%error, attempt, "status write failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A status write is tried this many times before the reconcile gives up and is queued again.
/// Giving up on the final write of a finished push would leave `Pushing` showing while the
/// build waits for a slot to be done again, so a brief API server hiccup is waited out here.
const WRITE_ATTEMPTS: u32 = 5;
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Errors that say nothing about the write itself: the API server was busy, unreachable or
/// raced by another writer.
fn worth_retrying(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 409 | 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Whether the Ready condition would change (status, reason or message) with `status`.
pub fn condition_changed(ib: &ImageBuild, status: &ImageBuildStatus) -> bool {
    let ready = |s: Option<&ImageBuildStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    ready(ib.status.as_ref()) != ready(Some(status))
}

/// Sends an event about `ib`; failures to record are logged, never fatal.
pub async fn event(
    recorder: &super::events::Events,
    ib: &ImageBuild,
    type_: EventType,
    reason: &str,
    note: String,
) {
    recorder
        .note(&ib.object_ref(&()), type_, reason, "Build", note)
        .await;
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn busy_or_racing_api_servers_are_retried_and_refusals_are_not() {
        for code in [409, 429, 500, 503, 504] {
            assert!(worth_retrying(&api_error(code)), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!worth_retrying(&api_error(code)), "{code}");
        }
    }
}
