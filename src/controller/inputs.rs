//! Resolving what an ImageBuild asks for into a build plan: the files of its ConfigMaps, the
//! registry access for its hosts (from its own namespace, or the controller's registry profiles),
//! and the context digest that says whether anything changed since the last push.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Client, ResourceExt};

use super::config::ControllerConfig;
use super::error::Error;
use super::secrets::SecretCache;
use crate::api::{ImageBuild, PvcSource, REBUILD_ANNOTATION};
use crate::build::BuildHosts;
use crate::cluster::{self, HostAccess, SecretSource, SecretsRead};
use crate::context::ContextItem;
use crate::oci::Sha256;
use crate::registry::{CredentialPolicy, RegistryAccess};

/// Where the files of a build are, once resolved.
#[derive(Debug, Clone)]
pub enum ResolvedContext {
    /// Read from ConfigMaps.
    Files(Vec<ContextItem>),
    /// In a claim, read by a reader Pod when the build runs. Its files are not watched: a change
    /// of the spec or of the `imagebuild.dev/rebuild` annotation rebuilds.
    Claim(PvcSource),
}

/// Everything a build needs, resolved from the cluster.
pub struct ResolvedInputs {
    pub context: ResolvedContext,
    pub target: RegistryAccess,
    /// Access for the base image's host when it differs from the target's.
    pub base: Option<RegistryAccess>,
    /// Hash of files, spec, rebuild annotation and the registry settings' versions; written to
    /// `status.contextDigest` (the API's name for it).
    pub inputs_digest: String,
}

/// Reads the ConfigMaps and Secrets the ImageBuild names.
pub async fn resolve(
    ib: &ImageBuild,
    client: &Client,
    config: &ControllerConfig,
    secrets: &SecretCache,
) -> Result<ResolvedInputs, Error> {
    let namespace = ib.namespace().unwrap_or_default();
    let spec = &ib.spec;
    let mut digest = InputsDigest::default();
    digest.add("spec", &serde_json::to_vec(spec).unwrap_or_default());
    let rebuild = ib
        .annotations()
        .get(REBUILD_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    digest.add("rebuild", rebuild.as_bytes());

    let context = match (
        &spec.context.config_maps,
        &spec.context.persistent_volume_claim,
    ) {
        (Some(sources), None) => {
            let files = cluster::read_config_maps(client, &namespace, sources).await?;
            for file in &files {
                digest.add(&file.path, &file.data);
                digest.add(
                    "mode",
                    format!("{:?}/{}", file.mode, file.archive).as_bytes(),
                );
            }
            ResolvedContext::Files(files)
        }
        (None, Some(claim)) => ResolvedContext::Claim(claim.clone()),
        _ => {
            return Err(Error::InvalidSpec {
                field: "spec.context",
                message: "exactly one of configMaps or persistentVolumeClaim must be set".into(),
            });
        }
    };
    let hosts = BuildHosts::of(spec)?;
    let secrets = CachedSecrets {
        cache: secrets,
        client,
    };
    let mut read = SecretsRead::default();
    let policy = cluster::credential_policy(
        &namespace,
        spec.registry.as_ref(),
        &hosts.target,
        &secrets,
        &mut read,
    )
    .await?;
    let target = access_of(ib, &hosts.target, &policy, config, &secrets, &mut read).await?;
    let base = match &hosts.base {
        Some(host) => Some(access_of(ib, host, &policy, config, &secrets, &mut read).await?),
        None => None,
    };
    for (purpose, version) in read.iter() {
        digest.add(purpose, version.as_bytes());
    }
    Ok(ResolvedInputs {
        context,
        target,
        base,
        inputs_digest: digest.finish(),
    })
}

/// Registry access for the ImageBuild's target host alone (used when deleting tags, when the
/// context may already be gone).
pub async fn registry_access(
    ib: &ImageBuild,
    client: &Client,
    config: &ControllerConfig,
    secrets: &SecretCache,
) -> Result<RegistryAccess, Error> {
    let host = BuildHosts::of(&ib.spec)?.target;
    let secrets = CachedSecrets {
        cache: secrets,
        client,
    };
    let mut read = SecretsRead::default();
    let namespace = ib.namespace().unwrap_or_default();
    let settings = ib.spec.registry.as_ref();
    let policy =
        cluster::credential_policy(&namespace, settings, &host, &secrets, &mut read).await?;
    access_of(ib, &host, &policy, config, &secrets, &mut read).await
}

/// Registry access for one host of an ImageBuild's build.
async fn access_of(
    ib: &ImageBuild,
    host: &str,
    policy: &CredentialPolicy,
    config: &ControllerConfig,
    secrets: &CachedSecrets<'_>,
    read: &mut SecretsRead,
) -> Result<RegistryAccess, Error> {
    let namespace = ib.namespace().unwrap_or_default();
    let of = HostAccess {
        namespace: &namespace,
        settings: ib.spec.registry.as_ref(),
        profile: config.profile(host),
    };
    Ok(cluster::host_access(host, of, policy, secrets, read).await?)
}

/// Secrets from the controller's cache, read from the API server when the watch says the
/// stored copy is stale.
struct CachedSecrets<'a> {
    cache: &'a SecretCache,
    client: &'a Client,
}

impl SecretSource for CachedSecrets<'_> {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        self.cache.get(self.client, namespace, name).await
    }
}

/// Incremental hash of labelled inputs; labels and lengths are framed so that moving bytes
/// between fields changes the digest.
#[derive(Default)]
struct InputsDigest(Sha256);

impl InputsDigest {
    fn add(&mut self, label: &str, bytes: &[u8]) {
        for part in [label.as_bytes(), bytes] {
            self.0.update(&(part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }
    fn finish(self) -> String {
        self.0.finish().to_string()
    }
}
