//! The reader Pod: its specification, and the guard that deletes it when the fetch ends in any
//! way (also when the build task is aborted).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::fetch::ClaimSource;
use super::settings::ReaderSettings;
use super::{CLAIM_MOUNT, NAME_LABEL, READER_USER, UID_LABEL};
use crate::api::ImageBuild;
use crate::build::BuildError;
use crate::controller::error::Error;
use crate::controller::upload::Expected;
use crate::transfer::TOKEN_ENV;

/// The reader Pod of one fetch.
pub(super) fn reader_pod(
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
pub(super) async fn remove_earlier_readers(pods: &Api<Pod>, ib: &ImageBuild) -> Result<(), Error> {
    let selector = format!("{UID_LABEL}={}", ib.uid().unwrap_or_default());
    let earlier = pods.list(&ListParams::default().labels(&selector)).await?;
    for pod in earlier {
        delete_pod(pods, &pod.name_any()).await;
    }
    Ok(())
}

/// A reader Pod that is deleted when this value goes away, also when the build task is aborted.
pub(super) struct ReaderPod {
    pub(super) api: Api<Pod>,
    pub(super) name: String,
    armed: bool,
}

impl ReaderPod {
    /// Creates `pod`; from then on, the returned value deletes it when it goes away.
    pub(super) async fn create(api: Api<Pod>, pod: &Pod) -> Result<Self, Error> {
        let created = api.create(&PostParams::default(), pod).await?;
        Ok(Self {
            name: created.name_any(),
            api,
            armed: true,
        })
    }

    /// Deletes the Pod and waits for the API server to accept it.
    pub(super) async fn delete(mut self) {
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
