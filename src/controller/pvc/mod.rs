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
//! timeout (the build task is aborted and [`pod::ReaderPod`]'s drop deletes it), and deletion of
//! the ImageBuild (its ownerReference lets the garbage collector delete it, and the fetch
//! notices).
//!
//! - `settings`: the controller's reader flags, checked, and the settings reader Pods are
//!   made with;
//! - `pod`: the reader Pod's specification, and the guard that deletes it;
//! - `pod_status`: what a reader Pod's status says (started, failed and why, why not started);
//! - `fetch`: the claim of one fetch, and the wait for its upload while the Pod is watched.

mod fetch;
mod pod;
mod pod_status;
mod settings;

use std::path::Path;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{Api, ResourceExt};
use tokio::time::Instant;

use self::fetch::{ClaimSource, Fetch, start_allowance};
use self::pod::{ReaderPod, reader_pod, remove_earlier_readers};
pub use self::settings::{ReaderConfigError, ReaderFlags, ReaderSettings, Readers};
use super::error::Error;
use super::reconcile::Shared;
use crate::api::{ImageBuild, PvcSource};
use crate::build::BuildError;

/// Where the claim is mounted in the reader Pod.
pub const CLAIM_MOUNT: &str = "/claim";

/// Label on every reader Pod: the UID of the ImageBuild it reads for.
pub const UID_LABEL: &str = "imagebuild.dev/imagebuild-uid";

/// Label on every reader Pod: the name of its ImageBuild, when it fits a label value.
pub const NAME_LABEL: &str = "imagebuild.dev/imagebuild";

/// The reader Pod's user and group (`restricted` wants a non-root user; 65532 is distroless'
/// "nonroot").
pub const READER_USER: i64 = 65532;

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
        .register(into.to_owned(), source.receive_options(ib, &shared.config))
        .map_err(|e| Error::Build(BuildError::Internal(e.to_string())))?;
    let timeout = shared
        .config
        .build_timeout(ib.spec.timeout.as_deref())
        .limit;
    let pod = reader_pod(ib, &source, &readers.settings, &expected, timeout)?;
    let reader = ReaderPod::create(pods, &pod).await?;
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

#[cfg(test)]
mod tests;
