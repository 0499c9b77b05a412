//! The command-line workflow: `build`, `push`, `list`, `tag`, `crd`. Registry flags, reading an
//! ImageBuild file, and turning every failure into one line and an exit code.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;

use crate::api::ImageBuild;
use crate::build::{BuildError, CaBundle, ContextFile, ContextSource, RegistryAccess};
use crate::controller::StartError;
use crate::controller::error::Error as ControllerError;
use crate::registry::Credentials;

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
            code: error.exit_code(),
            message: error.to_string(),
        }
    }
}

impl From<ControllerError> for Failure {
    fn from(error: ControllerError) -> Self {
        match error {
            ControllerError::Build(e) => e.into(),
            other => Self {
                code: exit::INPUT,
                message: other.to_string(),
            },
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
    /// Registry access for `host`: from the cluster's Secrets, then overridden by flags.
    pub async fn access(&self, host: &str) -> Result<RegistryAccess, Failure> {
        let mut access = if self.from_cluster {
            from_cluster(host).await?
        } else {
            RegistryAccess {
                host: host.to_owned(),
                endpoint: None,
                ca: None,
                credentials: None,
                insecure: false,
            }
        };
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Failure::input(format!("cannot read --ca-file {}: {e}", path.display()))
            })?;
            access.ca = Some(CaBundle {
                pem,
                source: format!("--ca-file {}", path.display()),
            });
        }
        if let Some(username) = &self.username {
            access.credentials = Some(Credentials {
                username: username.clone(),
                password: self.read_password()?,
                source: "--username/--password-stdin".into(),
            });
        } else if self.password_stdin {
            return Err(Failure::input("--password-stdin needs --username"));
        }
        access.insecure |= self.insecure;
        if access.insecure {
            eprintln!("imagebuild: warning: TLS verification is OFF for {host} (--insecure)");
        }
        Ok(access)
    }

    fn read_password(&self) -> Result<String, Failure> {
        if !self.password_stdin {
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
    let config = crate::controller::config::ControllerConfig::default();
    let mut access = crate::controller::inputs::profile_access(host, &client, &config).await?;
    access.endpoint = None;
    Ok(access)
}

/// An ImageBuild file: the ImageBuild and any ConfigMaps beside it.
pub struct BuildFile {
    pub image_build: ImageBuild,
    pub config_maps: Vec<ConfigMap>,
}

#[derive(Deserialize)]
struct TypeMeta {
    kind: Option<String>,
}

/// Reads a multi-document YAML file holding one ImageBuild and its ConfigMaps.
pub fn read_build_file(path: &Path) -> Result<BuildFile, Failure> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::input(format!("cannot read {shown}: {e}")))?;
    let mut image_builds = Vec::new();
    let mut config_maps = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| Failure::input(format!("{shown}: document {}: {e}", index + 1)))?;
        if value.is_null() {
            continue;
        }
        let kind = serde_yaml::from_value::<TypeMeta>(value.clone())
            .ok()
            .and_then(|t| t.kind)
            .unwrap_or_default();
        let parse_error = |e: serde_yaml::Error| {
            Failure::input(format!("{shown}: {kind} (document {}): {e}", index + 1))
        };
        match kind.as_str() {
            "ImageBuild" => {
                image_builds.push(serde_yaml::from_value::<ImageBuild>(value).map_err(parse_error)?)
            }
            "ConfigMap" => {
                config_maps.push(serde_yaml::from_value::<ConfigMap>(value).map_err(parse_error)?)
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
        let mut files: Vec<ContextFile> = Vec::new();
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
            files.extend(crate::controller::inputs::config_map_files(
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
    pub file: PathBuf,
    pub context: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub push: bool,
}

pub async fn build(_request: BuildRequest, _flags: &RegistryFlags) -> Result<(), Failure> {
    Err(Failure::input("build: not wired yet"))
}

pub async fn push(_layout: &str, _reference: &str, _flags: &RegistryFlags) -> Result<(), Failure> {
    Err(Failure::input("push: not wired yet"))
}

pub async fn list(_repository: &str, _flags: &RegistryFlags) -> Result<(), Failure> {
    Err(Failure::input("list: not wired yet"))
}

pub async fn tag(_reference: &str, _new_tag: &str, _flags: &RegistryFlags) -> Result<(), Failure> {
    Err(Failure::input("tag: not wired yet"))
}
