//! One build, the same for the controller and the command line: resolve the base image, turn the
//! context into a layer off the async runtime, assemble the image, and push it.

use std::path::PathBuf;

/// One file of a ConfigMap-like context.
#[derive(Debug, Clone)]
pub struct ContextFile {
    /// Where it came from, for messages, e.g. `ConfigMap site key index.html`.
    pub source: String,
    /// Target path relative to `destinationPath`.
    pub path: String,
    pub mode: Option<u32>,
    pub data: bytes::Bytes,
    pub archive: bool,
}

/// Where the files come from.
#[derive(Debug, Clone)]
pub enum ContextSource {
    Files(Vec<ContextFile>),
    Directory(PathBuf),
}

/// PEM certificates to trust for a registry, and where they came from.
#[derive(Clone)]
pub struct CaBundle {
    pub pem: Vec<u8>,
    pub source: String,
}

/// A user name and password for one registry host.
#[derive(Clone)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
    /// Where they came from, e.g. `Secret gitea/gitea-credential`.
    pub source: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// How to reach one registry host.
#[derive(Clone)]
pub struct RegistryAccess {
    pub host: String,
    pub endpoint: Option<String>,
    pub ca: Option<CaBundle>,
    pub credentials: Option<RegistryCredentials>,
    pub insecure: bool,
}

/// One build as the controller or the command line asks for it.
pub struct BuildJob<'a> {
    pub spec: &'a crate::api::ImageBuildSpec,
    pub source: ContextSource,
    pub target: RegistryAccess,
    /// Access for the base image's host when it is not the target's.
    pub base: Option<RegistryAccess>,
    /// Scratch space for the layer; removed by the caller.
    pub work_dir: PathBuf,
    pub max_context_bytes: Option<u64>,
    pub source_date_epoch: Option<i64>,
}

/// A built image, not yet pushed.
pub struct Prepared {
    pub image: crate::oci::BuiltImage,
}

/// What a push left in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: crate::oci::Digest,
    pub image_ref: String,
    pub tags: Vec<String>,
    pub base_digest: Option<crate::oci::Digest>,
    pub size: u64,
    pub bytes_uploaded: u64,
}

pub async fn build_image(_job: &BuildJob<'_>) -> Result<Prepared, BuildError> {
    Err(BuildError::Unimplemented)
}

pub async fn push_image(_job: &BuildJob<'_>, _prepared: Prepared) -> Result<Pushed, BuildError> {
    Err(BuildError::Unimplemented)
}

pub async fn delete_tags(
    _access: &RegistryAccess,
    _repository: &str,
    _tags: &[String],
) -> Result<(), BuildError> {
    Err(BuildError::Unimplemented)
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("not implemented yet")]
    Unimplemented,
    #[error("cannot create a scratch directory for the build (--work-dir): {0}")]
    WorkDir(std::io::Error),
}

impl BuildError {
    /// Exit code of the command line for this failure.
    pub fn exit_code(&self) -> u8 {
        crate::cli::exit::OTHER
    }

    pub fn reason(&self) -> &'static str {
        "BuildFailed"
    }
    pub fn is_transient(&self) -> bool {
        false
    }
}
