//! Pushing a built image: every blob the registry lacks (uploaded, mounted from the base
//! repository, or copied from the base registry), then the manifest under each tag. The manifest
//! goes last, so a failure leaves no tag pointing at an incomplete image.
//!
//! An index goes up in the order Gitea 1.24 needs: each child's blobs and its manifest by
//! digest, one child after the other (so the layer they share is uploaded once and found by the
//! next), then the index under each tag.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::Progress;
use super::blob::UploadStart;
use super::client::RegistryClient;
use super::error::RegistryError;
use crate::oci::{BaseImage, Blob, BlobLocation, Built, BuiltImage, Digest};
use crate::reference::validate_tag;

/// Blob transfers running at once: enough to overlap a small config with a large layer, few
/// enough not to crowd a laptop's registry.
const PARALLEL_BLOBS: usize = 2;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The manifest digest as the registry reported it.
    pub manifest_digest: Digest,
    /// Blobs sent from local files or memory.
    pub blobs_uploaded: usize,
    /// Bytes sent, uploads and copies together.
    pub bytes_uploaded: u64,
    /// Blobs the repository already had.
    pub blobs_skipped: usize,
    /// Base layers linked from the base repository on the same registry.
    pub blobs_mounted: usize,
    /// Base layers streamed from the base repository (another registry, or a refused mount).
    pub blobs_copied: usize,
}

/// How one blob reached the registry.
enum BlobOutcome {
    Skipped,
    Uploaded(u64),
    Mounted,
    Copied(u64),
}

/// Pushes `image` to `repository` on `client` and tags it with each of `tags` (none: the
/// manifest is stored by digest only). `base_client` reaches the base image's registry when it is
/// not `client`'s.
pub async fn push_image(
    client: &RegistryClient,
    repository: &str,
    image: &BuiltImage,
    tags: &[String],
    base_client: Option<&RegistryClient>,
    progress: Arc<dyn Progress>,
) -> Result<PushReport, RegistryError> {
    for tag in tags {
        validate_tag(tag)?;
    }
    // The futures are built up front (not in a `map` closure over borrowed blobs) so that the
    // compiler can prove the whole push future Send; a controller runs it on a work-stealing runtime.
    let transfers: Vec<_> = unique_blobs(image)
        .into_iter()
        .map(|blob| {
            push_one(
                client,
                repository,
                image,
                blob,
                base_client,
                progress.clone(),
            )
        })
        .collect();
    let outcomes: Vec<BlobOutcome> = futures::stream::iter(transfers)
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect()
        .await?;
    let manifest_digest = put_manifest_everywhere(client, repository, image, tags).await?;
    let report = summarise(manifest_digest, &outcomes);
    tracing::info!(
        registry = %client.host(),
        %repository,
        digest = %report.manifest_digest,
        uploaded = report.blobs_uploaded,
        copied = report.blobs_copied,
        mounted = report.blobs_mounted,
        skipped = report.blobs_skipped,
        bytes = report.bytes_uploaded,
        "pushed image"
    );
    Ok(report)
}

/// Pushes `built` (one image, or an index and its children) to `repository` and tags the top
/// manifest with each of `tags`.
pub async fn push(
    client: &RegistryClient,
    repository: &str,
    built: &Built,
    tags: &[String],
    base_client: Option<&RegistryClient>,
    progress: Arc<dyn Progress>,
) -> Result<PushReport, RegistryError> {
    let index = match built {
        Built::Image(image) => {
            return push_image(client, repository, image, tags, base_client, progress).await;
        }
        Built::Index(index) => index,
    };
    for tag in tags {
        validate_tag(tag)?;
    }
    let mut report = summarise(index.digest.clone(), &[]);
    for child in &index.children {
        let pushed = push_image(
            client,
            repository,
            child,
            &[],
            base_client,
            progress.clone(),
        )
        .await?;
        report.blobs_uploaded += pushed.blobs_uploaded;
        report.bytes_uploaded += pushed.bytes_uploaded;
        report.blobs_skipped += pushed.blobs_skipped;
        report.blobs_mounted += pushed.blobs_mounted;
        report.blobs_copied += pushed.blobs_copied;
    }
    put_everywhere(
        client,
        repository,
        (&index.manifest, &index.media_type, &index.digest),
        tags,
    )
    .await?;
    tracing::info!(
        registry = %client.host(),
        %repository,
        digest = %index.digest,
        children = index.children.len(),
        bytes = report.bytes_uploaded,
        "pushed image index"
    );
    Ok(report)
}

/// Config and layers, each digest once (identical layers may repeat).
fn unique_blobs(image: &BuiltImage) -> Vec<&Blob> {
    let mut seen = std::collections::HashSet::new();
    image
        .blobs()
        .filter(|b| seen.insert(b.descriptor.digest.clone()))
        .collect()
}

async fn push_one(
    client: &RegistryClient,
    repository: &str,
    image: &BuiltImage,
    blob: &Blob,
    base_client: Option<&RegistryClient>,
    progress: Arc<dyn Progress>,
) -> Result<BlobOutcome, RegistryError> {
    let digest = &blob.descriptor.digest;
    // `Target`: the build found this blob in the repository moments ago; asking again would
    // double the requests of a push that uploads nothing. Should it vanish in between, the
    // manifest is refused and the build runs again.
    if blob.location == BlobLocation::Target || client.blob_exists(repository, digest).await? {
        return Ok(BlobOutcome::Skipped);
    }
    match &blob.location {
        BlobLocation::Target => Err(super::blob::vanished_from_target(repository, blob)),
        BlobLocation::File(_) | BlobLocation::Bytes(_) => {
            let pushed = client.push_blob(repository, blob, progress).await?;
            Ok(BlobOutcome::Uploaded(pushed.uploaded_bytes))
        }
        BlobLocation::Base => {
            let base = image
                .base
                .as_ref()
                .ok_or_else(|| RegistryError::MissingBlobSource {
                    repository: repository.to_owned(),
                    digest: digest.clone(),
                    detail: "it is marked as a base-image layer but the image records no base"
                        .to_owned(),
                })?;
            transfer_base_layer(client, repository, blob, base, base_client, progress).await
        }
    }
}

/// Mounts a base layer from the base repository when both live on this registry (copying it
/// through when the registry declines), else streams it over from the base registry.
async fn transfer_base_layer(
    client: &RegistryClient,
    repository: &str,
    blob: &Blob,
    base: &BaseImage,
    base_client: Option<&RegistryClient>,
    progress: Arc<dyn Progress>,
) -> Result<BlobOutcome, RegistryError> {
    let descriptor = &blob.descriptor;
    let base_path = base_repository_path(base);
    if base.registry == client.host() {
        let start = client
            .start_upload(repository, Some((&descriptor.digest, base_path)))
            .await?;
        return match start {
            UploadStart::Mounted => Ok(BlobOutcome::Mounted),
            UploadStart::Session(session) => {
                let pushed = client
                    .copy_blob(
                        repository,
                        descriptor,
                        client,
                        base_path,
                        progress,
                        Some(session),
                    )
                    .await?;
                Ok(BlobOutcome::Copied(pushed.uploaded_bytes))
            }
        };
    }
    let source = base_client
        .filter(|c| c.host() == base.registry)
        .ok_or_else(|| RegistryError::MissingBlobSource {
            repository: repository.to_owned(),
            digest: descriptor.digest.clone(),
            detail: format!(
                "it is a layer of the base image on {}, and no client for that registry was given",
                base.registry
            ),
        })?;
    let pushed = client
        .copy_blob(repository, descriptor, source, base_path, progress, None)
        .await?;
    Ok(BlobOutcome::Copied(pushed.uploaded_bytes))
}

/// `owner/base` of `registry/owner/base`.
fn base_repository_path(base: &BaseImage) -> &str {
    base.repository
        .strip_prefix(&base.registry)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(&base.repository)
}

/// Puts the manifest under every tag (or by digest when there are none), checking that the
/// registry's digest is the one the image was built with.
async fn put_manifest_everywhere(
    client: &RegistryClient,
    repository: &str,
    image: &BuiltImage,
    tags: &[String],
) -> Result<Digest, RegistryError> {
    let manifest = (
        &image.manifest,
        image.manifest_media_type.as_str(),
        &image.manifest_digest,
    );
    put_everywhere(client, repository, manifest, tags).await
}

/// Puts a manifest (`bytes`, media type, digest) under every tag, or by digest when there are
/// none, checking the registry's digest against ours.
async fn put_everywhere(
    client: &RegistryClient,
    repository: &str,
    (bytes, media_type, expected): (&bytes::Bytes, &str, &Digest),
    tags: &[String],
) -> Result<Digest, RegistryError> {
    let digest_reference = [expected.to_string()];
    let references = if tags.is_empty() {
        &digest_reference[..]
    } else {
        tags
    };
    for reference in references {
        let digest = client
            .put_manifest(repository, reference, bytes.clone(), media_type)
            .await?;
        if digest != *expected {
            return Err(RegistryError::DigestMismatch {
                host: client.host().to_owned(),
                what: format!("manifest of `{repository}` (as built)"),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
    }
    Ok(expected.clone())
}

fn summarise(manifest_digest: Digest, outcomes: &[BlobOutcome]) -> PushReport {
    let mut report = PushReport {
        manifest_digest,
        blobs_uploaded: 0,
        bytes_uploaded: 0,
        blobs_skipped: 0,
        blobs_mounted: 0,
        blobs_copied: 0,
    };
    for outcome in outcomes {
        match outcome {
            BlobOutcome::Skipped => report.blobs_skipped += 1,
            BlobOutcome::Mounted => report.blobs_mounted += 1,
            BlobOutcome::Uploaded(bytes) => {
                report.blobs_uploaded += 1;
                report.bytes_uploaded += bytes;
            }
            BlobOutcome::Copied(bytes) => {
                report.blobs_copied += 1;
                report.bytes_uploaded += bytes;
            }
        }
    }
    report
}
