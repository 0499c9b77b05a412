//! The command-line workflow: `build`, `push`, `list`, `tag`, `delete`, the local image store's
//! `images`, `rmi` and `save`, `crd`. Registry flags, reading an ImageBuild file, and turning
//! every failure into one line and an exit code.

mod local;
mod progress;
mod size;
mod spec_flags;

pub use local::{images, remove_image, save};
use progress::{LayerProgress, ProgressLine, ProgressMode, UploadProgress};
pub use spec_flags::{SpecFlagError, SpecFlags};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::api::ImageBuild;
use crate::build::{BuildError, BuildHosts, BuildJob, CaBundle, ContextSource, RegistryAccess};
use crate::cluster::ClusterError;
use crate::context::ContextItem;
use crate::controller::StartError;
use crate::layer::LayerCache;
use crate::reference::{ImageRef, RepositoryRef};
use crate::registry::{CredentialPolicy, Credentials, GivenCredentials, canonical_host};
use crate::store::{Store, StoreError};

/// Exit codes, one per kind of failure, so scripts can tell them apart.
pub mod exit {
    /// Bad input: flags, files, spec.
    pub const INPUT: u8 = 2;
    /// The registry refused the credentials or the permission.
    pub const AUTH: u8 = 3;
    /// Repository owner, image or tag does not exist.
    pub const NOT_FOUND: u8 = 4;
    /// TLS: untrusted certificate, host-name mismatch, expired.
    pub const TLS: u8 = 5;
    /// Host unreachable, time-outs, registry unavailable after retries.
    pub const NETWORK: u8 = 6;
    /// Anything else.
    pub const OTHER: u8 = 1;

    /// The exit code of a kind of failure.
    pub fn of(kind: crate::failure::FailureKind) -> u8 {
        use crate::failure::FailureKind::*;
        match kind {
            Input => INPUT,
            Auth => AUTH,
            NotFound => NOT_FOUND,
            Tls => TLS,
            Network => NETWORK,
            Other => OTHER,
        }
    }
}

/// A failed command: one line for stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: exit::INPUT,
            message: message.into(),
        }
    }

    pub fn from_start(error: StartError) -> Self {
        Self {
            code: exit::OTHER,
            message: error.to_string(),
        }
    }
}

impl From<BuildError> for Failure {
    fn from(error: BuildError) -> Self {
        Self {
            code: exit::of(error.category().kind),
            message: error.to_string(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        let code = if error.is_input() {
            exit::INPUT
        } else if error.is_not_found() {
            exit::NOT_FOUND
        } else {
            exit::OTHER
        };
        Self {
            code,
            message: error.to_string(),
        }
    }
}

impl From<SpecFlagError> for Failure {
    fn from(error: SpecFlagError) -> Self {
        Self::input(error.to_string())
    }
}

/// How a command reports: notes and progress on stderr, the result on stdout.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputFlags {
    /// Print only the result (digest, reference, names): no notes, no progress.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// `json` prints the result of build, images and list as one JSON document, for scripts.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
}

/// `--output-format`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

impl OutputFlags {
    /// A line on stderr for a person watching, unless `--quiet`.
    pub fn note(&self, message: std::fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("imagebuild: {message}");
        }
    }

    pub fn json(&self) -> bool {
        self.output_format == OutputFormat::Json
    }

    /// Progress of an upload of at most `total` bytes on stderr: redrawn on a terminal, plain
    /// lines otherwise, nothing with `--quiet`. Call its `finish` when the upload is done.
    fn upload_progress(&self, total: u64) -> Arc<UploadProgress> {
        Arc::new(UploadProgress::new(self.progress_line(), total))
    }

    /// Progress of a build's layers on stderr, as [`OutputFlags::upload_progress`] shows it.
    fn layer_progress(&self) -> Arc<LayerProgress> {
        Arc::new(LayerProgress::new(self.progress_line()))
    }

    fn progress_line(&self) -> ProgressLine {
        ProgressLine::stderr(ProgressMode::for_stderr(self.quiet))
    }
}

/// Prints `value` as JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
        code: exit::OTHER,
        message: format!("cannot write the result as JSON: {e}"),
    })?;
    println!("{text}");
    Ok(())
}

/// What `build --output-format json` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildReport {
    /// The image's (or index's) digest.
    pub digest: String,
    /// Bytes of configs and layers, each blob counted once.
    pub size: u64,
    /// `host/owner/name:tag` for each tag.
    pub refs: Vec<String>,
}

impl From<ClusterError> for Failure {
    fn from(error: ClusterError) -> Self {
        Self {
            code: exit::of(error.category().kind),
            message: error.to_string(),
        }
    }
}

/// How to reach a registry from the command line.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryFlags {
    /// PEM file with the certificate(s) to trust (e.g. idpbuilder's certificate).
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// User name for the registry.
    #[arg(long, global = true, env = "IMAGEBUILD_USERNAME")]
    pub username: Option<String>,
    /// Read the password from standard input.
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// Skip TLS verification (explicit opt-in; a warning is printed).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Read the CA and credentials from the current kube context, as the controller does
    /// (idpbuilder: Secrets default/idpbuilder-cert and gitea/gitea-credential).
    #[arg(long, global = true)]
    pub from_cluster: bool,
}

impl RegistryFlags {
    /// The registries of a command whose target (where it pushes, or what it reads) is on
    /// `target_host`: `--username` is for that host alone, `--from-cluster` reads the cluster's
    /// profile for that host alone, and `--ca-file` / `--insecure` apply to every host.
    pub async fn registries(&self, target_host: &str) -> Result<Registries, Failure> {
        let given = match (&self.username, self.password_stdin) {
            (Some(username), _) => Some(GivenCredentials::ForTarget(Credentials {
                username: username.clone(),
                password: read_password(self.password_stdin)?,
                source: "--username/--password-stdin".into(),
            })),
            (None, true) => return Err(Failure::input("--password-stdin needs --username")),
            (None, false) => None,
        };
        let ca = match &self.ca_file {
            Some(path) => Some(CaBundle {
                pem: std::fs::read(path).map_err(|e| {
                    Failure::input(format!("cannot read --ca-file {}: {e}", path.display()))
                })?,
                source: format!("--ca-file {}", path.display()),
            }),
            None => None,
        };
        let profile = match self.from_cluster {
            true => Some(from_cluster(target_host).await?),
            false => None,
        };
        Ok(Registries {
            policy: CredentialPolicy::new(target_host, given),
            ca,
            insecure: self.insecure,
            profile,
        })
    }

    /// Access for the one host of a command that talks to a single registry.
    pub async fn access(&self, host: &str) -> Result<RegistryAccess, Failure> {
        self.registries(host).await?.access(host)
    }
}

/// The registries a command may talk to, under the access policy of its target.
pub struct Registries {
    policy: CredentialPolicy,
    /// `--ca-file`: a CA is not a secret, so it is trusted for every host.
    ca: Option<CaBundle>,
    insecure: bool,
    /// What `--from-cluster` read for the target host.
    profile: Option<RegistryAccess>,
}

impl Registries {
    /// Access for `host`: the target's, or a base image's on another host.
    pub fn access(&self, host: &str) -> Result<RegistryAccess, Failure> {
        let profile = self
            .profile
            .as_ref()
            .filter(|p| canonical_host(&p.host) == canonical_host(host));
        let credentials = self
            .policy
            .credentials_for(host, profile.and_then(|p| p.credentials.as_ref()))
            .map_err(|e| Failure::input(e.to_string()))?;
        let access = RegistryAccess {
            host: host.to_owned(),
            endpoint: None,
            ca: self
                .ca
                .clone()
                .or_else(|| profile.and_then(|p| p.ca.clone())),
            credentials,
            insecure: self.insecure || profile.is_some_and(|p| p.insecure),
        };
        if access.insecure {
            eprintln!("imagebuild: warning: TLS verification is OFF for {host} (--insecure)");
        }
        Ok(access)
    }
}

fn read_password(password_stdin: bool) -> Result<String, Failure> {
    if !password_stdin {
        return Err(Failure::input(
            "--username needs --password-stdin (the password is read from standard input)",
        ));
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .map_err(|e| {
            Failure::input(format!("cannot read the password from standard input: {e}"))
        })?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(Failure::input("--password-stdin: standard input was empty"));
    }
    Ok(password)
}

/// CA and credentials for `host` from the current kube context's Secrets (registry profiles'
/// defaults). The endpoint stays the public host: this runs outside the cluster.
async fn from_cluster(host: &str) -> Result<RegistryAccess, Failure> {
    let client = kube::Client::try_default().await.map_err(|e| Failure {
        code: exit::NETWORK,
        message: format!(
            "--from-cluster: cannot reach the Kubernetes API of the current kube context: {e}"
        ),
    })?;
    // idpbuilder's Secrets, for whatever host and port this cluster's Gitea is published on.
    let mut profiles = crate::cluster::idpbuilder_profiles();
    let profile = profiles
        .first_mut()
        .ok_or_else(|| Failure::input("--from-cluster: no idpbuilder registry profile"))?;
    profile.host = host.to_owned();
    let mut access = crate::cluster::profile_access(host, profile, &client).await?;
    access.endpoint = None;
    Ok(access)
}

/// An ImageBuild file: the ImageBuild and any ConfigMaps beside it.
pub struct BuildFile {
    pub image_build: ImageBuild,
    pub config_maps: Vec<ConfigMap>,
}

/// Reads a multi-document YAML file holding one ImageBuild and its ConfigMaps.
pub fn read_build_file(path: &Path) -> Result<BuildFile, Failure> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::input(format!("cannot read {shown}: {e}")))?;
    let mut image_builds = Vec::new();
    let mut config_maps = Vec::new();
    for (index, document) in crate::yaml::documents(&text).into_iter().enumerate() {
        let value = document.map_err(|e| {
            // The user-facing wording: no hints about the parser's Rust options.
            let e = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
            Failure::input(format!("{shown}: document {}: {e}", index + 1))
        })?;
        let kind = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let parse_error = |e: serde_json::Error| {
            Failure::input(format!("{shown}: {kind} (document {}): {e}", index + 1))
        };
        match kind.as_str() {
            "ImageBuild" => {
                image_builds.push(serde_json::from_value::<ImageBuild>(value).map_err(parse_error)?)
            }
            "ConfigMap" => {
                config_maps.push(serde_json::from_value::<ConfigMap>(value).map_err(parse_error)?)
            }
            _ => {}
        }
    }
    match image_builds.len() {
        1 => Ok(BuildFile {
            image_build: image_builds.remove(0),
            config_maps,
        }),
        0 => Err(Failure::input(format!("{shown} holds no ImageBuild"))),
        n => Err(Failure::input(format!(
            "{shown} holds {n} ImageBuilds; put one per file"
        ))),
    }
}

impl BuildFile {
    /// The context: `--context DIR`, or the ConfigMaps the ImageBuild names, found in the file.
    pub fn context(&self, dir: Option<&Path>) -> Result<ContextSource, Failure> {
        if let Some(dir) = dir {
            return Ok(ContextSource::Directory(dir.to_path_buf()));
        }
        let spec = &self.image_build.spec;
        let Some(sources) = &spec.context.config_maps else {
            return Err(Failure::input(
                "spec.context is not configMaps: pass the files with --context DIR",
            ));
        };
        let mut files: Vec<ContextItem> = Vec::new();
        for source in sources {
            let cm = self
                .config_maps
                .iter()
                .find(|cm| cm.metadata.name.as_deref() == Some(source.name.as_str()))
                .ok_or_else(|| {
                    Failure::input(format!(
                        "ConfigMap {} named in spec.context.configMaps is not in the file: add it, or pass --context DIR",
                        source.name
                    ))
                })?;
            files.extend(crate::cluster::config_map_files(
                "",
                cm,
                source.items.as_deref(),
            )?);
        }
        Ok(ContextSource::Files(files))
    }
}

/// The host name, for the Lease identity outside a Pod.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "imagebuild".into())
}

/// `imagebuild crd`.
pub fn print_crd() -> Result<(), Failure> {
    let yaml = crate::crd::yaml().map_err(|e| Failure {
        code: exit::OTHER,
        message: format!("cannot render the CRD: {e}"),
    })?;
    print!("{yaml}");
    Ok(())
}

/// What `imagebuild build` was asked to do.
pub struct BuildRequest {
    /// `-f FILE`: an ImageBuild file.
    pub file: Option<PathBuf>,
    /// `DIR`: the context directory.
    pub dir: Option<PathBuf>,
    /// `--context DIR`, the older spelling of `DIR`.
    pub context: Option<PathBuf>,
    /// The spec flags (`-t`, `--from`, ...), over the file's spec when there is one.
    pub spec: SpecFlags,
    pub output: Option<PathBuf>,
    pub push: bool,
    /// Whether a push may skip building a layer recorded in the user's layer cache.
    pub cache: bool,
}

impl BuildRequest {
    /// The spec to build (the file's with the flags over it, or the flags' alone) and where
    /// its files come from.
    pub fn spec_and_source(&self) -> Result<(crate::api::ImageBuildSpec, ContextSource), Failure> {
        let dir = match (&self.dir, &self.context) {
            (Some(_), Some(_)) => {
                return Err(Failure::input(
                    "give the context directory once: as DIR or as --context DIR",
                ));
            }
            (dir, context) => dir.as_deref().or(context.as_deref()),
        };
        match &self.file {
            Some(path) => {
                let file = read_build_file(path)?;
                let source = file.context(dir)?;
                Ok((self.spec.apply(Some(file.image_build.spec))?, source))
            }
            None => {
                let dir = dir.ok_or_else(|| {
                    Failure::input(
                        "name the directory to build (imagebuild build DIR -t REF) or an ImageBuild file (-f FILE)",
                    )
                })?;
                Ok((
                    self.spec.apply(None)?,
                    ContextSource::Directory(dir.to_owned()),
                ))
            }
        }
    }
}

/// `host/owner/name:tag` for each tag of `spec`.
fn image_refs(spec: &crate::api::ImageBuildSpec) -> Result<Vec<String>, Failure> {
    spec.tags
        .iter()
        .map(|tag| Ok(crate::store::image_name(&format!("{}:{tag}", spec.image))?))
        .collect()
}

/// `imagebuild build`: the controller's builder on local inputs; keeps the image in the local
/// store (or writes `--output`, or pushes); prints the digest (with `--push`, `image@digest`).
pub async fn build(
    request: BuildRequest,
    flags: &RegistryFlags,
    out: &OutputFlags,
) -> Result<(), Failure> {
    let (spec, source) = request.spec_and_source()?;
    let hosts = BuildHosts::of(&spec)?;
    let (target, base) = if request.push || spec.from.is_some() {
        let registries = flags.registries(&hosts.target).await?;
        let base = hosts
            .base
            .as_deref()
            .map(|host| registries.access(host))
            .transpose()?;
        (registries.access(&hosts.target)?, base)
    } else {
        (RegistryAccess::anonymous(&hosts.target), None)
    };
    let refs = image_refs(&spec)?;
    // Without --output or --push the image goes to the local store; its layer is written in
    // the store's scratch directory, on the file system of its blobs.
    let store = match (&request.output, request.push) {
        (None, false) => Some(Store::open_default()?),
        _ => None,
    };
    let scratch = match &store {
        Some(store) => store.scratch()?,
        None => tempfile::tempdir().map_err(BuildError::WorkDir)?,
    };
    let work_dir = match &request.output {
        Some(dir) => crate::layout::blobs_dir(dir).map_err(BuildError::from)?,
        None => scratch.path().to_path_buf(),
    };
    let layers = out.layer_progress();
    let job = BuildJob {
        spec,
        source,
        target,
        base,
        work_dir,
        max_context_bytes: None,
        source_date_epoch: source_date_epoch()?,
        // A layout needs the layer's bytes, so only a push alone may skip building it.
        upload_while_building: request.push,
        progress: layers.clone(),
        layer_cache: (request.cache && request.push && request.output.is_none())
            .then(LayerCache::user_default)
            .flatten(),
    };
    let mut prepared = crate::build::build_image(&job).await?;
    layers.finish();
    let report = BuildReport {
        digest: prepared.image.digest().to_string(),
        size: prepared.image.size(),
        refs,
    };
    if let Some(dir) = &request.output {
        crate::build::fetch_base_layers(&mut prepared, &job.work_dir).await?;
        crate::layout::write(dir, &prepared.image, &job.spec.tags).map_err(BuildError::from)?;
        out.note(format_args!(
            "wrote {} ({} bytes) to {}",
            job.spec.tags.join(", "),
            report.size,
            dir.display()
        ));
    }
    if let Some(store) = &store {
        crate::build::fetch_base_layers(&mut prepared, &job.work_dir).await?;
        store.add(&prepared.image, &report.refs)?;
        out.note(format_args!(
            "stored {} ({} bytes) in {}",
            report.refs.join(", "),
            report.size,
            store.root().display()
        ));
    }
    let mut result = report.digest.clone();
    if request.push {
        if prepared.layers_reused > 0 {
            out.note(format_args!(
                "{} of {} layers unchanged since they were pushed; not compressed or uploaded again (--no-cache builds them)",
                prepared.layers_reused, prepared.layers
            ));
        }
        let uploads = out.upload_progress(prepared.image.size());
        let pushed = crate::build::push_image(&job, prepared, uploads.clone()).await?;
        uploads.finish();
        let overlap = match pushed.uploaded_while_building {
            0 => String::new(),
            n => format!(", {n} of them while the layer was written"),
        };
        out.note(format_args!(
            "pushed {} as {} ({} bytes uploaded{overlap})",
            job.spec.image,
            pushed.tags.join(", "),
            pushed.bytes_uploaded
        ));
        result = pushed.image_ref;
    }
    if out.json() {
        print_json(&report)
    } else {
        println!("{result}");
        Ok(())
    }
}

/// Whether `arg` (`DIR` or `DIR:TAG`) names an OCI image layout directory rather than an image
/// of the local store.
fn is_layout(arg: &str) -> bool {
    let (dir, _) = split_layout_arg(arg);
    Path::new(dir).join("oci-layout").is_file()
}

/// `imagebuild push LAYOUT[:TAG] REF` (an OCI image layout) or `imagebuild push NAME [REF]` (an
/// image of the local store, to its own name by default).
pub async fn push(
    source: &str,
    destination: Option<&str>,
    flags: &RegistryFlags,
    out: &OutputFlags,
) -> Result<(), Failure> {
    // A stored image's blobs stay in the store while `_reading` is held: to the end of the upload.
    let (image, destination, _reading) = if is_layout(source) {
        let destination = destination.ok_or_else(|| {
            Failure::input(format!(
                "{source} is an OCI image layout; name where to push it: imagebuild push {source} host/owner/name:tag"
            ))
        })?;
        let (dir, tag) = split_layout_arg(source);
        let image = crate::layout::read(Path::new(dir), tag).map_err(BuildError::from)?;
        (image, destination.to_owned(), None)
    } else if Path::new(split_layout_arg(source).0).is_dir() {
        return Err(Failure::input(format!(
            "{source} is a directory but not an OCI image layout (it has no oci-layout file)"
        )));
    } else {
        let store = Store::open_default()?;
        let reading = store.read_lock()?;
        let image = store.read(source, &reading)?;
        let destination = match destination {
            Some(destination) => destination.to_owned(),
            None => crate::store::image_name(source)?,
        };
        (image, destination, Some(reading))
    };
    let reference = ImageRef::parse(&destination).map_err(BuildError::from)?;
    let tags: Vec<String> = reference.tag.iter().cloned().collect();
    let tags = if tags.is_empty() && reference.digest.is_none() {
        vec!["latest".to_owned()]
    } else {
        tags
    };
    let client = client_for(flags, &reference.registry).await?;
    client.prefetch_push_token(&reference.repository).await;
    let uploads = out.upload_progress(image.size());
    let report = crate::registry::push(
        &client,
        &reference.repository,
        &image,
        &tags,
        None,
        uploads.clone(),
    )
    .await
    .map_err(BuildError::from)?;
    uploads.finish();
    out.note(format_args!(
        "{} bytes uploaded, {} blobs already there",
        report.bytes_uploaded, report.blobs_skipped
    ));
    println!(
        "{}/{}@{}",
        reference.registry, reference.repository, report.manifest_digest
    );
    Ok(())
}

/// A client for `host` with the access the flags give it.
async fn client_for(
    flags: &RegistryFlags,
    host: &str,
) -> Result<crate::registry::RegistryClient, Failure> {
    Ok(flags
        .access(host)
        .await?
        .client()
        .map_err(BuildError::from)?)
}

/// What `list --output-format json` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TagList {
    /// `host/owner/name`.
    pub repository: String,
    pub tags: Vec<String>,
}

/// `imagebuild list REPO`: one tag a line.
pub async fn list(
    repository: &str,
    flags: &RegistryFlags,
    out: &OutputFlags,
) -> Result<(), Failure> {
    let repository = RepositoryRef::parse(repository).map_err(BuildError::from)?;
    let client = client_for(flags, &repository.registry).await?;
    let tags = client
        .list_tags(&repository.repository)
        .await
        .map_err(BuildError::from)?;
    if out.json() {
        return print_json(&TagList {
            repository: format!("{}/{}", repository.registry, repository.repository),
            tags,
        });
    }
    for tag in tags {
        println!("{tag}");
    }
    Ok(())
}

/// `imagebuild tag SOURCE TARGET`: in the local store when it holds SOURCE (TARGET a full name,
/// or a tag of SOURCE's repository); else in the registry, the same manifest under the tag
/// TARGET without re-uploading. Prints the digest.
pub async fn tag(
    reference: &str,
    new_tag: &str,
    flags: &RegistryFlags,
    out: &OutputFlags,
) -> Result<(), Failure> {
    if let Some(store) = Store::open_default().ok().filter(|s| s.contains(reference)) {
        return local::tag(&store, reference, new_tag, out);
    }
    let reference = ImageRef::parse(reference).map_err(BuildError::from)?;
    let client = client_for(flags, &reference.registry).await?;
    let digest = client
        .tag(&reference.repository, &reference.reference(), new_tag)
        .await
        .map_err(BuildError::from)?;
    println!("{digest}");
    Ok(())
}

/// `imagebuild delete REF`: removes a tag (or, for `@sha256:...`, the manifest) from its
/// registry; prints what it removed. The distribution registry deletes only by digest, so
/// there every tag of that manifest goes with it.
pub async fn delete(
    reference: &str,
    flags: &RegistryFlags,
    out: &OutputFlags,
) -> Result<(), Failure> {
    let reference = ImageRef::parse(reference).map_err(BuildError::from)?;
    let client = client_for(flags, &reference.registry).await?;
    let repository = format!("{}/{}", reference.registry, reference.repository);
    let not_found = |what: &str| Failure {
        code: exit::NOT_FOUND,
        message: format!(
            "{repository}{what} is not in the registry; `imagebuild list {repository}` shows its tags"
        ),
    };
    match (&reference.digest, &reference.tag) {
        (Some(digest), _) => {
            client
                .delete_manifest(&reference.repository, digest.as_str())
                .await
                .map_err(|e| match e {
                    crate::registry::RegistryError::ImageNotFound { .. } => {
                        not_found(&format!("@{digest}"))
                    }
                    e => BuildError::from(e).into(),
                })?;
            println!("deleted {repository}@{digest}");
        }
        (None, tag) => {
            let tag = tag.as_deref().unwrap_or("latest");
            let digest = client
                .head_manifest(&reference.repository, tag)
                .await
                .map_err(BuildError::from)?
                .ok_or_else(|| not_found(&format!(":{tag}")))?;
            client
                .delete_tag(&reference.repository, tag)
                .await
                .map_err(BuildError::from)?;
            out.note(format_args!("{repository}:{tag} pointed at {digest}"));
            println!("deleted {repository}:{tag}");
        }
    }
    Ok(())
}

/// `imagebuild inspect REF`: the digest and media type REF resolves to, then one line per image
/// it holds: platform and manifest digest (entries no container runs, such as attestations, are
/// marked).
pub async fn inspect(reference: &str, flags: &RegistryFlags) -> Result<(), Failure> {
    let reference = ImageRef::parse(reference).map_err(BuildError::from)?;
    let client = client_for(flags, &reference.registry).await?;
    let inspected = crate::registry::inspect(&client, &reference)
        .await
        .map_err(BuildError::from)?;
    println!(
        "{}/{}@{} {}",
        reference.registry, reference.repository, inspected.digest, inspected.media_type
    );
    for image in &inspected.images {
        let platform = image
            .platform
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let note = if image.runnable {
            ""
        } else {
            " (not runnable)"
        };
        println!("{platform} {}{note}", image.digest);
    }
    Ok(())
}

/// `dir` or `dir:tag` (a directory that exists wins over a `:` in its name).
fn split_layout_arg(arg: &str) -> (&str, Option<&str>) {
    if Path::new(arg).is_dir() {
        return (arg, None);
    }
    match arg.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') => (dir, Some(tag)),
        _ => (arg, None),
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, as reproducible-builds.org defines it.
fn source_date_epoch() -> Result<Option<i64>, Failure> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => value.trim().parse().map(Some).map_err(|_| {
            Failure::input(format!(
                "SOURCE_DATE_EPOCH `{value}` is not a number of seconds"
            ))
        }),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_profile(host: &str) -> RegistryAccess {
        RegistryAccess {
            host: host.to_owned(),
            endpoint: None,
            ca: Some(CaBundle {
                pem: b"profile ca".to_vec(),
                source: "Secret default/idpbuilder-cert key ca.crt".into(),
            }),
            credentials: Some(Credentials::new(
                "giteaAdmin",
                "gitea-pw",
                "Secret gitea/gitea-credential",
            )),
            insecure: false,
        }
    }

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        let input: Failure = BuildError::from(crate::reference::ReferenceError::Empty).into();
        assert_eq!(input.code, exit::INPUT);
        let other: Failure = BuildError::Internal("x".into()).into();
        assert_eq!(other.code, exit::OTHER);
        let missing: Failure = ClusterError::SecretNotFound {
            namespace: "gitea".into(),
            name: "gitea-credential".into(),
            purpose: "registry credentials",
            field: "--from-cluster".into(),
        }
        .into();
        assert_eq!(missing.code, exit::INPUT);
    }

    #[test]
    fn from_cluster_credentials_and_ca_serve_the_target_host_alone() {
        let registries = Registries {
            policy: CredentialPolicy::new("gitea.example:8443", None),
            ca: None,
            insecure: false,
            profile: Some(cluster_profile("gitea.example:8443")),
        };
        let target = registries.access("gitea.example:8443").expect("target");
        assert_eq!(
            target.credentials.map(|c| c.password).as_deref(),
            Some("gitea-pw")
        );
        assert!(target.ca.is_some());
        let base = registries.access("docker.io").expect("base");
        assert!(base.credentials.is_none(), "the base's host gets nothing");
        assert!(
            base.ca.is_none(),
            "the base's host is trusted by the system's CAs"
        );
    }

    #[test]
    fn a_ca_file_is_trusted_for_every_host_and_a_username_for_the_target_only() {
        let given = Credentials::new("me", "my-pw", "--username/--password-stdin");
        let registries = Registries {
            policy: CredentialPolicy::new(
                "gitea.example:8443",
                Some(GivenCredentials::ForTarget(given)),
            ),
            ca: Some(CaBundle {
                pem: b"file ca".to_vec(),
                source: "--ca-file ca.pem".into(),
            }),
            insecure: false,
            profile: None,
        };
        let base = registries.access("mirror.example").expect("base");
        assert!(base.credentials.is_none());
        assert_eq!(
            base.ca.map(|c| c.source).as_deref(),
            Some("--ca-file ca.pem")
        );
        let target = registries.access("gitea.example:8443").expect("target");
        assert_eq!(
            target.credentials.map(|c| c.password).as_deref(),
            Some("my-pw")
        );
    }

    const IMAGE_BUILD: &str = "apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {name: hello}
spec:
  context: {configMaps: [{name: site}]}
  image: gitea.cnoe.localtest.me:8443/giteaadmin/hello
";

    /// `text` written to a temporary file, read as a build file; the file stays for the message.
    fn read(text: &str) -> (tempfile::NamedTempFile, Result<BuildFile, Failure>) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write build file");
        let read = read_build_file(file.path());
        (file, read)
    }

    fn refusal(text: &str) -> (String, String) {
        let (file, read) = read(text);
        let shown = file.path().display().to_string();
        match read {
            Ok(_) => panic!("{text} was accepted"),
            Err(failure) => {
                assert_eq!(failure.code, exit::INPUT);
                (shown, failure.message)
            }
        }
    }

    #[test]
    fn the_image_build_and_its_config_maps_are_read_whatever_their_order() {
        let text = format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: site}}\n\
             data: {{index.html: hi, enabled: on, mode: 0644}}\n---\n{IMAGE_BUILD}"
        );
        let (_file, read) = read(&text);
        let build = read.unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(build.image_build.metadata.name.as_deref(), Some("hello"));
        assert_eq!(build.config_maps.len(), 1);
        let data = build.config_maps[0].data.as_ref().expect("data");
        // Plain scalars that YAML 1.1 would turn into a boolean or an octal number stay text.
        assert_eq!(data["enabled"], "on");
        assert_eq!(data["mode"], "0644");
    }

    #[test]
    fn a_syntax_error_names_the_file_and_the_document() {
        let (shown, message) = refusal(&format!("{IMAGE_BUILD}---\nkind: [ConfigMap\n"));
        assert!(
            message.starts_with(&format!("{shown}: document 2: ")),
            "{message}"
        );
    }

    #[test]
    fn an_invalid_object_names_the_file_its_kind_and_the_document() {
        let text = format!("{IMAGE_BUILD}---\nkind: ConfigMap\ndata: [not, a, map]\n");
        let (shown, message) = refusal(&text);
        assert!(
            message.starts_with(&format!("{shown}: ConfigMap (document 2): ")),
            "{message}"
        );
    }

    #[test]
    fn a_file_without_exactly_one_image_build_is_refused() {
        let (shown, message) = refusal("kind: ConfigMap\nmetadata: {name: site}\n");
        assert_eq!(message, format!("{shown} holds no ImageBuild"));
        let (shown, message) = refusal(&format!("{IMAGE_BUILD}---\n{IMAGE_BUILD}"));
        assert_eq!(
            message,
            format!("{shown} holds 2 ImageBuilds; put one per file")
        );
    }
}
