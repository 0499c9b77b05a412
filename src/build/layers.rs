//! The context's layers: planned from the tree, then each one found in the target repository or
//! written (and, for large contexts, uploaded while it is written).
//!
//! A layer is found without compressing it in one of two ways, both only when the target
//! repository still holds the blob: its part's stat key is in the layer cache (no file read), or
//! its diffID, hashed from the tar stream alone, is (a read and a hash; done only for a repository
//! this cache has pushed to). Everything else is compressed as usual.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{FutureExt, StreamExt};
use tokio::task::JoinHandle;

use super::{BuildError, BuildJob, UPLOAD_QUEUE, UPLOAD_WHILE_BUILDING_FROM, blocking};
use crate::context::FileTree;
use crate::layer::{CachedLayer, LayerBlob, LayerCache, LayerOptions, Part};
use crate::oci::Digest;
use crate::reference::RepositoryRef;
use crate::registry::RegistryClient;

/// How many existence checks run at once.
const CHECKS_AT_ONCE: usize = 4;

/// The tree, its layer plan and each part's cache key, from the walk.
pub(super) struct Planned {
    pub tree: Arc<FileTree>,
    pub parts: Vec<Range<usize>>,
    pub keys: Vec<Option<Digest>>,
}

impl Planned {
    /// Splits `tree` as `layering` says; with `keyed`, works out each part's cache key (a stat
    /// of every file, so call it off the async runtime).
    pub fn new(
        tree: FileTree,
        layering: crate::layer::Layering,
        options: &LayerOptions,
        keyed: bool,
    ) -> Self {
        let parts = crate::layer::plan(&tree, layering);
        let keys = parts
            .iter()
            .map(|entries| {
                keyed
                    .then(|| {
                        LayerCache::key(
                            Part {
                                tree: &tree,
                                entries,
                            },
                            options,
                        )
                    })
                    .flatten()
            })
            .collect();
        Self {
            tree: Arc::new(tree),
            parts,
            keys,
        }
    }

    fn part(&self, index: usize) -> Part<'_> {
        Part {
            tree: &self.tree,
            entries: &self.parts[index],
        }
    }
}

/// The layers, in order, and what making them cost.
pub(super) struct Layers {
    pub blobs: Vec<LayerBlob>,
    /// Layers found in the target repository rather than written.
    pub reused: usize,
    /// Blob bytes sent while layers were written.
    pub uploaded: u64,
}

/// Finds or writes every layer of `planned`. `client` is the target's, when the build talks to
/// it (a cache to consult or an upload to run); `repository` is the target repository's path.
pub(super) async fn make(
    job: &BuildJob,
    planned: Planned,
    options: LayerOptions,
    client: Option<&RegistryClient>,
) -> Result<Layers, BuildError> {
    let target = RepositoryRef::parse(&job.spec.image)?;
    let repository = target.repository.as_str();
    let count = planned.parts.len();
    let tar_bytes: Vec<u64> = (0..count).map(|i| planned.part(i).tar_bytes()).collect();
    job.progress.layers_planned(count, tar_bytes.iter().sum());

    let cache = job.layer_cache.as_ref().filter(|_| client.is_some());
    let mut found = match (cache, client) {
        (Some(cache), Some(client)) => by_key(cache, client, repository, &planned.keys).await?,
        _ => vec![None; count],
    };
    let by_diff_id = cache.filter(|c| c.pushed_to(&format!("{}/{repository}", target.registry)));
    let upload = client.filter(|_| {
        job.upload_while_building && planned.tree.total_bytes() >= UPLOAD_WHILE_BUILDING_FROM
    });

    let mut layers = Layers {
        blobs: Vec::with_capacity(count),
        reused: 0,
        uploaded: 0,
    };
    // Uploads made while writing, completing in the background; all done before the push.
    let mut finishing = Vec::new();
    for index in 0..count {
        let key = planned.keys[index].as_ref();
        let (layer, reused) = match found[index].take() {
            Some(known) => (known.into_layer_blob(), true),
            None => {
                let known = match (by_diff_id, client) {
                    (Some(cache), Some(client)) => {
                        by_diff(job, &planned, index, &options, cache, client, repository).await?
                    }
                    _ => None,
                };
                let reused = known.is_some();
                let layer = match known {
                    Some(known) => known.into_layer_blob(),
                    None => {
                        let (layer, sent, finish) =
                            write(job, &planned, index, &options, upload).await?;
                        layers.uploaded += sent;
                        finishing.extend(finish);
                        layer
                    }
                };
                if let Some(cache) = job.layer_cache.as_ref() {
                    match key {
                        Some(key) => cache.put(key, &layer, options.compression),
                        None => cache.remember(&layer, options.compression),
                    }
                }
                (layer, reused)
            }
        };
        job.progress.layer_done(index, tar_bytes[index], reused);
        layers.reused += usize::from(reused);
        layers.blobs.push(layer);
    }
    for task in finishing {
        task.await
            .map_err(|e| BuildError::Internal(format!("an upload task failed: {e}")))?;
    }
    tracing::debug!(layers = count, reused = layers.reused, image = %job.spec.image, "layers ready");
    Ok(layers)
}

/// The layers recorded under their parts' stat keys that the target repository still holds,
/// checked a few at a time.
async fn by_key(
    cache: &LayerCache,
    client: &RegistryClient,
    repository: &str,
    keys: &[Option<Digest>],
) -> Result<Vec<Option<CachedLayer>>, BuildError> {
    let checks: Vec<_> = keys
        .iter()
        .map(|key| key.as_ref().and_then(|key| cache.get(key)))
        .map(|found| {
            async move {
                let Some(found) = found else {
                    return Ok(None);
                };
                let held = client
                    .blob_exists(repository, &found.descriptor.digest)
                    .await?;
                Ok::<_, BuildError>(held.then_some(found))
            }
            .boxed()
        })
        .collect();
    futures::stream::iter(checks)
        .buffered(CHECKS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Hashes part `index`'s tar; the blob its diffID was compressed into, when the target
/// repository holds it.
async fn by_diff(
    job: &BuildJob,
    planned: &Planned,
    index: usize,
    options: &LayerOptions,
    cache: &LayerCache,
    client: &RegistryClient,
    repository: &str,
) -> Result<Option<CachedLayer>, BuildError> {
    let (tree, entries, opts) = (
        planned.tree.clone(),
        planned.parts[index].clone(),
        options.clone(),
    );
    let (diff_id, _) = blocking(move || {
        crate::layer::diff_id_of(
            Part {
                tree: &tree,
                entries: &entries,
            },
            &opts,
        )
    })
    .await?;
    let Some(found) = cache.known(&diff_id, options.compression) else {
        return Ok(None);
    };
    if !client
        .blob_exists(repository, &found.descriptor.digest)
        .await?
    {
        return Ok(None);
    }
    tracing::debug!(layer = index, digest = %found.descriptor.digest, image = %job.spec.image, "layer already in the repository (same diffID); not compressing it");
    Ok(Some(found))
}

/// Writes part `index`'s layer, uploading it to the target meanwhile when `client` is given;
/// returns it with the bytes sent on the way and the task that completes that upload (its last
/// request runs while the next layer is written). Should that upload fail, the push uploads the
/// finished file as usual (with retries).
async fn write(
    job: &BuildJob,
    planned: &Planned,
    index: usize,
    options: &LayerOptions,
    client: Option<&RegistryClient>,
) -> Result<(LayerBlob, u64, Option<JoinHandle<()>>), BuildError> {
    let (tree, entries, opts) = (
        planned.tree.clone(),
        planned.parts[index].clone(),
        options.clone(),
    );
    let out_dir = job.work_dir.clone();
    let build = move |copy| {
        let part = Part {
            tree: &tree,
            entries: &entries,
        };
        crate::layer::build_part(part, &opts, &out_dir, copy)
    };
    let Some(client) = client else {
        let layer = blocking(move || build(None)).await?;
        return Ok((layer, 0, None));
    };
    let repository = RepositoryRef::parse(&job.spec.image)?.repository;
    let (copy, segments) = tokio::sync::mpsc::channel(UPLOAD_QUEUE);
    let sent = Arc::new(AtomicU64::new(0));
    let (layer, upload) = tokio::join!(
        blocking(move || build(Some(copy))),
        client.upload_segments(&repository, segments, sent.clone()),
    );
    let sent = sent.load(Ordering::Relaxed);
    let client = client.clone();
    let finishing = match (&layer, upload) {
        (Ok(layer), Ok(upload)) => {
            let descriptor = layer.descriptor.clone();
            tokio::spawn(async move {
                if let Err(error) = client
                    .finish_streamed(&repository, upload, &descriptor)
                    .await
                {
                    tracing::debug!(%error, "the upload while building failed; the finished layer goes up from its file");
                }
            })
        }
        (Err(_), Ok(upload)) => {
            tokio::spawn(async move { client.cancel_streamed(&repository, upload).await })
        }
        (_, Err(error)) => {
            tracing::debug!(%error, "the upload while building failed; the finished layer goes up from its file");
            return Ok((layer?, sent, None));
        }
    };
    Ok((layer?, sent, Some(finishing)))
}
