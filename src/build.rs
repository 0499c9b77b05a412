//! One build, the same for the controller and the command line: resolve the base image, turn the
//! context into a layer off the async runtime, assemble the image, and push it.

mod layers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::ImageBuildSpec;
use crate::context::{ContextError, ContextItem, ContextOptions, FileTree};
use crate::failure::{Category, FailureKind};
use crate::image::{Children, ImageError, ImageSpec, assemble, assemble_index};
use crate::layer::{Compression, LayerCache, LayerError, LayerOptions, Layering};
use crate::layout::LayoutError;
use crate::oci::{Base, BaseImage, Blob, BlobLocation, Built, Digest, InvalidPlatform, Platform};
use crate::reference::{ImageRef, ReferenceError, RepositoryRef};
pub use crate::registry::{CaBundle, RegistryAccess};
use crate::registry::{Platforms, Progress, RegistryClient, RegistryError, canonical_host};

/// Where the files come from.
#[derive(Debug, Clone)]
pub enum ContextSource {
    Files(Vec<ContextItem>),
    Directory(PathBuf),
}

/// One build as the controller or the command line asks for it.
pub struct BuildJob {
    pub spec: ImageBuildSpec,
    pub source: ContextSource,
    pub target: RegistryAccess,
    /// Access for the base image's host when it is not the target's (default: anonymous).
    pub base: Option<RegistryAccess>,
    /// Where the layer blob is written (a scratch directory, or a layout's `blobs/sha256`).
    pub work_dir: PathBuf,
    pub max_context_bytes: Option<u64>,
    /// `SOURCE_DATE_EPOCH`: file times and the image's creation time; default 0.
    pub source_date_epoch: Option<i64>,
    /// Layers built and pushed before (see [`LayerCache`]): a layer recorded there that the
    /// target repository still holds is neither compressed nor uploaded again. Only for pushes
    /// (a layout needs the bytes).
    pub layer_cache: Option<LayerCache>,
    /// Upload the layers to the target while they are written (the image will be pushed).
    /// Only for contexts of [`UPLOAD_WHILE_BUILDING_FROM`] bytes or more.
    pub upload_while_building: bool,
    /// Told about each layer as it is planned, written or found in the registry.
    pub progress: Arc<dyn BuildProgress>,
}

/// What a build reports while it turns the context into layers (the command line draws it; the
/// controller logs it). Every method has a no-op default.
pub trait BuildProgress: Send + Sync {
    /// The context will be `layers` layers holding `bytes` bytes of tar in all.
    fn layers_planned(&self, layers: usize, bytes: u64) {
        let _ = (layers, bytes);
    }
    /// Layer `index` (from 0) of `tar_bytes` bytes is ready: written and compressed, or
    /// (`reused`) found already in the target repository and not compressed again.
    fn layer_done(&self, index: usize, tar_bytes: u64, reused: bool) {
        let _ = (index, tar_bytes, reused);
    }
}

/// A [`BuildProgress`] that ignores everything.
pub struct NoBuildProgress;

impl BuildProgress for NoBuildProgress {}

/// A shareable no-op build progress hook.
pub fn no_build_progress() -> Arc<dyn BuildProgress> {
    Arc::new(NoBuildProgress)
}

/// Contexts from this size on go up while their layer is written; below it the upload after
/// the build is short, and a layer the registry already has is not sent again.
pub const UPLOAD_WHILE_BUILDING_FROM: u64 = 32 << 20;

/// How many compressed segments may wait for the upload (each about `layer::SEGMENT_SIZE`).
const UPLOAD_QUEUE: usize = 4;

/// A built image (or index), not yet pushed, with the clients that fetched its base.
pub struct Prepared {
    pub image: Built,
    /// Digest of what `from` resolved to: the base's manifest, or its index for an index.
    pub base_digest: Option<Digest>,
    base_client: Option<RegistryClient>,
    /// The target's client, when the build already talked to it (its token is reused).
    target_client: Option<RegistryClient>,
    /// Blob bytes already sent to the target while the layers were written.
    uploaded_while_building: u64,
    /// How many layers the context made.
    pub layers: usize,
    /// Of those, how many the target repository already held (not compressed again).
    pub layers_reused: usize,
}

/// What a push left in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: Digest,
    pub image_ref: String,
    pub tags: Vec<String>,
    pub base_digest: Option<Digest>,
    /// For an index: each child's platform and manifest digest.
    pub platforms: Vec<(Platform, Digest)>,
    pub size: u64,
    /// Blob bytes sent, including those sent while the layer was written.
    pub bytes_uploaded: u64,
    /// Of `bytes_uploaded`, those sent while the layer was written.
    pub uploaded_while_building: u64,
}

/// The registry hosts a build talks to, read as Docker reads references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildHosts {
    /// The host of `spec.image`.
    pub target: String,
    /// The host of `spec.from`, when that is another host than the target's.
    pub base: Option<String>,
}

impl BuildHosts {
    pub fn of(spec: &ImageBuildSpec) -> Result<Self, BuildError> {
        let target = RepositoryRef::parse(&spec.image)?.registry;
        let base = match spec.from.as_deref() {
            Some(from) => Some(ImageRef::parse(from)?.registry),
            None => None,
        };
        let base = base.filter(|host| canonical_host(host) != canonical_host(&target));
        Ok(Self { target, base })
    }
}

/// Fetches the base image (if any), builds the layer off the async runtime, and assembles the
/// image. Nothing is pushed.
pub async fn build_image(job: &BuildJob) -> Result<Prepared, BuildError> {
    let spec = &job.spec;
    // The destination is checked even when nothing is pushed: a layout tagged for a name no
    // registry accepts is a failure found late.
    RepositoryRef::parse(&spec.image)?;
    for tag in &spec.tags {
        crate::reference::validate_tag(tag)?;
    }
    let platforms = wanted_platforms(spec)?;
    let (base, base_client) = match &spec.from {
        Some(from) => {
            let reference = ImageRef::parse(from)?;
            let client = base_access(job, &reference.registry).client()?;
            let base = crate::registry::fetch_bases(&client, &reference, &platforms).await?;
            (Some(base), Some(client))
        }
        None => (None, None),
    };
    let context = context_options(spec, job.max_context_bytes);
    let layer_options = LayerOptions {
        destination_path: spec.destination_path().to_owned(),
        compression: compression(spec.compression),
        source_date_epoch: job.source_date_epoch,
        threads: 0,
    };
    let source = job.source.clone();
    let keyed = job.layer_cache.is_some();
    let layering = layering(spec.layers);
    let options = layer_options.clone();
    // The cache keys stat every file: part of the walk, off the async runtime too.
    let planned = blocking(move || {
        let tree = match source {
            ContextSource::Files(items) => FileTree::from_items(items, &context)?,
            ContextSource::Directory(dir) => FileTree::from_dir(&dir, &context)?,
        };
        Ok::<_, ContextError>(layers::Planned::new(tree, layering, &options, keyed))
    })
    .await?;
    let target_client = match (keyed, job.upload_while_building) {
        (false, false) => None,
        _ => Some(job.target.client()?),
    };
    if let Some(client) = &target_client {
        let repository = RepositoryRef::parse(&spec.image)?.repository;
        client.prefetch_push_token(&repository).await;
    }
    let made = layers::make(job, planned, layer_options, target_client.as_ref()).await?;
    let layers = made.blobs;
    let image_spec = image_spec(spec, job.source_date_epoch);
    let image = match (&base, &platforms) {
        (Some(Base::Image(base)), _) => assemble(Some(base), &layers, &image_spec)?.into(),
        (Some(Base::Index { index, children }), _) => {
            let children = Children::Base {
                index,
                images: children,
            };
            Built::Index(assemble_index(children, &layers, &image_spec)?)
        }
        (None, Platforms::These(list)) => Built::Index(assemble_index(
            Children::Scratch(list),
            &layers,
            &image_spec,
        )?),
        (None, _) => assemble(None, &layers, &image_spec)?.into(),
    };
    let base_digest = base.map(|base| match base {
        Base::Image(image) => image.manifest_digest,
        Base::Index { index, .. } => index.digest,
    });
    Ok(Prepared {
        image,
        base_digest,
        base_client,
        target_client,
        uploaded_while_building: made.uploaded,
        layers: layers.len(),
        layers_reused: made.reused,
    })
}

/// What `platform` and `platforms` ask of the base image (scratch: `These` makes an index,
/// anything else one image).
pub fn wanted_platforms(spec: &ImageBuildSpec) -> Result<Platforms, BuildError> {
    let one = spec
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    let listed = spec
        .platforms
        .as_ref()
        .map(|list| {
            list.iter()
                .map(|p| p.parse::<Platform>())
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(BuildError::Platforms)?;
    match (one, listed) {
        (Some(_), Some(_)) => Err(BuildError::PlatformConflict),
        (None, Some(list)) => Ok(Platforms::These(list)),
        (Some(one), None) => Ok(Platforms::One(Some(one))),
        (None, None) => Ok(Platforms::Every),
    }
}

/// Runs file-system work off the async runtime.
async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, BuildError>
where
    T: Send + 'static,
    E: Send + 'static,
    BuildError: From<E>,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BuildError::Internal(e.to_string()))?
        .map_err(BuildError::from)
}

/// Pushes a prepared image to `spec.image` under `spec.tags`.
pub async fn push_image(
    job: &BuildJob,
    prepared: Prepared,
    progress: Arc<dyn Progress>,
) -> Result<Pushed, BuildError> {
    let repository = RepositoryRef::parse(&job.spec.image)?;
    let client = match &prepared.target_client {
        Some(client) => client.clone(),
        None => job.target.client()?,
    };
    client.prefetch_push_token(&repository.repository).await;
    let base_client = prepared
        .base_client
        .as_ref()
        .filter(|base| base.host() != client.host());
    let report = crate::registry::push(
        &client,
        &repository.repository,
        &prepared.image,
        &job.spec.tags,
        base_client,
        progress,
    )
    .await?;
    if let Some(cache) = &job.layer_cache {
        cache.mark_pushed(&format!(
            "{}/{}",
            repository.registry, repository.repository
        ));
    }
    Ok(Pushed {
        image_ref: format!("{}@{}", job.spec.image, report.manifest_digest),
        digest: report.manifest_digest,
        tags: job.spec.tags.clone(),
        base_digest: prepared.base_digest.clone(),
        platforms: prepared.image.platforms(),
        size: prepared.image.size(),
        bytes_uploaded: report.bytes_uploaded + prepared.uploaded_while_building,
        uploaded_while_building: prepared.uploaded_while_building,
    })
}

/// Copies the base image's layers into an OCI layout's blobs, so the layout holds the whole
/// image (a pushed image needs them only in the registry).
pub async fn fetch_base_layers(
    prepared: &mut Prepared,
    blobs_dir: &Path,
) -> Result<(), BuildError> {
    let Some(client) = &prepared.base_client else {
        return Ok(());
    };
    for image in prepared.image.images_mut() {
        let Some(base) = image.base.clone() else {
            continue;
        };
        fetch_layers_of(client, &base, &mut image.layers, blobs_dir).await?;
    }
    Ok(())
}

/// Copies the base layers among `layers` into `blobs_dir` (once each) and points them there.
async fn fetch_layers_of(
    client: &RegistryClient,
    base: &BaseImage,
    layers: &mut [Blob],
    blobs_dir: &Path,
) -> Result<(), BuildError> {
    for layer in layers
        .iter_mut()
        .filter(|l| l.location == BlobLocation::Base)
    {
        let path = blobs_dir.join(layer.descriptor.digest.hex());
        if !path.exists() {
            let partial = blobs_dir.join(format!("{}.partial", layer.descriptor.digest.hex()));
            let stream = client
                .get_blob(&base.repository, &layer.descriptor.digest)
                .await?;
            let mut reader = stream.into_async_read();
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(BuildError::WorkDir)?;
            tokio::io::copy(&mut reader, &mut file)
                .await
                .map_err(BuildError::WorkDir)?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(BuildError::WorkDir)?;
        }
        layer.location = BlobLocation::File(path);
    }
    Ok(())
}

/// Removes `tags` of `repository` (`host/path`) from its registry.
pub async fn delete_tags(
    access: &RegistryAccess,
    repository: &str,
    tags: &[String],
) -> Result<(), BuildError> {
    let repository = RepositoryRef::parse(repository)?;
    let client = access.client()?;
    for tag in tags {
        client.delete_tag(&repository.repository, tag).await?;
    }
    Ok(())
}

/// The base image's registry: the target's access when it is the same host, else the access the
/// caller resolved for it (its own credentials only), else anonymous.
fn base_access(job: &BuildJob, host: &str) -> RegistryAccess {
    access_for_base(&job.target, job.base.as_ref(), host)
}

/// How to reach a base image on `host`: the target's access when it is the target's host, the
/// base access when it is for that host, else anonymous (no credential goes to another host).
pub fn access_for_base(
    target: &RegistryAccess,
    base: Option<&RegistryAccess>,
    host: &str,
) -> RegistryAccess {
    let host = canonical_host(host);
    if host == canonical_host(&target.host) {
        return target.clone();
    }
    base.filter(|b| canonical_host(&b.host) == host)
        .cloned()
        .unwrap_or_else(|| RegistryAccess::anonymous(&host))
}

fn context_options(spec: &ImageBuildSpec, max_bytes: Option<u64>) -> ContextOptions {
    ContextOptions {
        exclude: spec.exclude.clone(),
        honour_dockerignore: true,
        max_bytes,
        max_entries: None,
    }
}

fn layering(layers: crate::api::Layers) -> Layering {
    match layers {
        crate::api::Layers::Auto => Layering::Auto,
        crate::api::Layers::Single => Layering::Single,
    }
}

fn compression(c: crate::api::Compression) -> Compression {
    match c {
        crate::api::Compression::Gzip => Compression::Gzip {
            level: crate::layer::DEFAULT_GZIP_LEVEL,
        },
        crate::api::Compression::Zstd => Compression::Zstd {
            level: crate::layer::DEFAULT_ZSTD_LEVEL,
        },
    }
}

fn image_spec(spec: &ImageBuildSpec, created: Option<i64>) -> ImageSpec {
    let config = spec.config.clone().unwrap_or_default();
    ImageSpec {
        platform: spec.platform.as_deref().and_then(|p| p.parse().ok()),
        entrypoint: config.entrypoint,
        cmd: config.cmd,
        env: config.env.into_iter().map(|e| (e.name, e.value)).collect(),
        working_dir: config.working_dir,
        user: config.user,
        exposed_ports: config.exposed_ports,
        labels: config.labels,
        annotations: spec.annotations.clone(),
        created,
    }
}

/// Why a build failed: every message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Boxed: registry errors carry a lot of context, and results stay small.
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("spec.platform: {0}")]
    Platform(#[from] InvalidPlatform),
    #[error("spec.platforms: {0}")]
    Platforms(InvalidPlatform),
    #[error("set spec.platform (one image) or spec.platforms (an image index), not both")]
    PlatformConflict,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("cannot use the scratch directory for the build (--work-dir): {0}")]
    WorkDir(std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RegistryError> for BuildError {
    fn from(error: RegistryError) -> Self {
        Self::Registry(Box::new(error))
    }
}

impl BuildError {
    /// CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Context(e) => e.reason(),
            Self::Layer(_) => "LayerFailed",
            Self::Image(_) => "InvalidImageConfig",
            Self::Registry(e) => e.reason(),
            Self::Reference(_) => "InvalidName",
            Self::Platform(_) | Self::Platforms(_) | Self::PlatformConflict => "InvalidPlatform",
            Self::Layout(_) => "LayoutFailed",
            Self::WorkDir(_) | Self::Internal(_) => "InternalError",
        }
    }

    /// What kind of failure this is, and whether retrying with the same inputs may succeed.
    pub fn category(&self) -> Category {
        use FailureKind::*;
        match self {
            Self::Registry(e) => e.category(),
            Self::Context(e) => e.category(),
            // The files changed while they were read: reading them again is the fix.
            Self::Layer(LayerError::FileChanged { .. }) => Category::transient(Other),
            Self::Image(_)
            | Self::Reference(_)
            | Self::Platform(_)
            | Self::Platforms(_)
            | Self::PlatformConflict => Category::permanent(Input),
            Self::Layer(_) | Self::Layout(_) => Category::permanent(Other),
            Self::WorkDir(_) | Self::Internal(_) => Category::transient(Other),
        }
    }

    /// Whether retrying with the same inputs may succeed.
    pub fn is_transient(&self) -> bool {
        self.category().transient
    }
}
