//! Writing what happened to `status`, whole, with server-side apply under one field manager, and
//! the matching Kubernetes Events. A Warning event is sent only when the condition changes, so a
//! failure that repeats does not flood the namespace.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
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
        message: truncate(&readiness.message, 1024),
        last_transition_time: transition,
        observed_generation: ib.metadata.generation,
    };
    ImageBuildStatus {
        phase: Some(phase),
        observed_generation: ib.metadata.generation,
        conditions: vec![condition],
        ..previous
    }
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
    api.patch_status(&ib.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
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
    recorder: &Recorder,
    ib: &ImageBuild,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(&note, 1000)),
        action: "Build".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &ib.object_ref(&())).await {
        tracing::warn!(%error, "could not record event");
    }
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
