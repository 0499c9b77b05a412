//! The reader Pod: its specification, and the guard that deletes it when the fetch ends in any
//! way (also when the build task is aborted).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext,
    PodSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::fetch::ClaimSource;
use super::settings::ReaderSettings;
use super::{CLAIM_MOUNT, NAME_LABEL, READER_USER, UID_LABEL};
use crate::api::ImageBuild;
use crate::build::BuildError;
use crate::controller::error::Error;
use crate::controller::upload::Expected;
use crate::transfer::TOKEN_ENV;

/// The volume of the claim in the reader Pod.
const CLAIM_VOLUME: &str = "claim";

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
    let mut labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "imagebuild"),
        ("app.kubernetes.io/component", "context-reader"),
        ("app.kubernetes.io/managed-by", "imagebuild-controller"),
        (UID_LABEL, &uid),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    if name.len() <= 63 {
        labels.insert(NAME_LABEL.to_owned(), name.clone());
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
    // The field is an int64: a timeout beyond it cannot be given to the API server.
    let deadline = timeout.as_secs().max(1);
    let active_deadline_seconds = i64::try_from(deadline).map_err(|_| {
        Error::Build(BuildError::Internal(format!(
            "reader Pod specification: activeDeadlineSeconds {deadline} is out of range"
        )))
    })?;
    // Room for "-ctx-" and the five random characters generateName adds.
    let prefix: String = name.chars().take(40).collect();
    let metadata = ObjectMeta {
        generate_name: Some(format!("{}-ctx-", prefix.trim_end_matches(['-', '.']))),
        namespace: Some(source.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(ib.controller_owner_ref(&()).into_iter().collect()),
        ..ObjectMeta::default()
    };
    let container = Container {
        name: "send-context".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.pull_policy.clone()),
        args: Some(args),
        env: Some(vec![
            env(TOKEN_ENV, expected.token()),
            env("RUST_LOG", "warn"),
        ]),
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(READER_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: CLAIM_VOLUME.into(),
            mount_path: CLAIM_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let spec = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        active_deadline_seconds: Some(active_deadline_seconds),
        termination_grace_period_seconds: Some(1),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(READER_USER),
            run_as_group: Some(READER_USER),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        // The whole claim, read-only: a subPath mount would make the kubelet create a missing
        // directory in the user's volume; the sender resolves the subPath instead.
        volumes: Some(vec![Volume {
            name: CLAIM_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: source.name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    Ok(Pod {
        metadata,
        spec: Some(spec),
        status: None,
    })
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// The container runtime's default seccomp profile, as the `restricted` level wants.
fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
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
