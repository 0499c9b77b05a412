//! Resolving what an ImageBuild asks for into a build plan: the files of its ConfigMaps, the
//! registry access for its hosts (from its own namespace, or the controller's registry profiles),
//! and the context digest that says whether anything changed since the last push.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};

use super::config::{ControllerConfig, RegistryProfile};
use super::error::Error;
use super::secrets::SecretCache;
use crate::api::{ImageBuild, PvcSource, REBUILD_ANNOTATION};
use crate::build::BuildError;
use crate::context::ContextItem;
use crate::oci::Sha256;
use crate::reference::{ImageRef, RepositoryRef};
use crate::registry::{
    CaBundle, CredentialChoice, CredentialPolicy, Credentials, DockerConfig, GivenCredentials,
    RegistryAccess,
};

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
    /// Hash of files, spec, rebuild annotation and the registry settings' versions.
    pub context_digest: String,
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
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let mut files = Vec::new();
            for source in sources {
                let cm =
                    api.get_opt(&source.name)
                        .await?
                        .ok_or_else(|| Error::ConfigMapNotFound {
                            namespace: namespace.clone(),
                            name: source.name.clone(),
                        })?;
                files.extend(config_map_files(&namespace, &cm, source.items.as_deref())?);
            }
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
    let target_host = RepositoryRef::parse(&spec.image)
        .map_err(BuildError::from)?
        .registry;
    let base_host = match spec.from.as_deref() {
        Some(from) => Some(ImageRef::parse(from).map_err(BuildError::from)?.registry),
        None => None,
    };
    let policy = credential_policy(ib, &target_host, client, secrets, &mut digest).await?;
    let target = access_for(
        ib,
        &target_host,
        &policy,
        client,
        secrets,
        config,
        &mut digest,
    )
    .await?;
    let base = match base_host {
        Some(host) if !policy.is_target(&host) => {
            Some(access_for(ib, &host, &policy, client, secrets, config, &mut digest).await?)
        }
        _ => None,
    };
    Ok(ResolvedInputs {
        context,
        target,
        base,
        context_digest: digest.finish(),
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
    let mut digest = InputsDigest::default();
    let host = RepositoryRef::parse(&ib.spec.image)
        .map_err(BuildError::from)?
        .registry;
    let policy = credential_policy(ib, &host, client, secrets, &mut digest).await?;
    access_for(ib, &host, &policy, client, secrets, config, &mut digest).await
}

/// The files an ImageBuild takes from one ConfigMap (`items`, or every key).
pub fn config_map_files(
    namespace: &str,
    cm: &ConfigMap,
    items: Option<&[crate::api::KeyToPath]>,
) -> Result<Vec<ContextItem>, Error> {
    let name = cm.name_any();
    let mut all: BTreeMap<&str, bytes::Bytes> = BTreeMap::new();
    for (key, value) in cm.data.iter().flatten() {
        all.insert(key, bytes::Bytes::copy_from_slice(value.as_bytes()));
    }
    for (key, value) in cm.binary_data.iter().flatten() {
        all.insert(key, bytes::Bytes::copy_from_slice(&value.0));
    }
    let file = |key: &str, data: bytes::Bytes, item: Option<&crate::api::KeyToPath>| {
        ContextItem::from_key(
            format!("ConfigMap {name} key {key}"),
            key,
            item.and_then(|i| i.path.as_deref()),
            item.and_then(|i| i.mode)
                .and_then(|m| u32::try_from(m).ok()),
            data,
            item.is_some_and(|i| i.archive),
        )
        .map_err(|e| Error::Build(e.into()))
    };
    match items {
        None => all.iter().map(|(k, v)| file(k, v.clone(), None)).collect(),
        Some(items) => items
            .iter()
            .map(|item| {
                let data = all.get(item.key.as_str()).cloned().ok_or_else(|| {
                    Error::ConfigMapKeyMissing {
                        namespace: namespace.to_owned(),
                        name: name.clone(),
                        key: item.key.clone(),
                        available: all.keys().copied().collect::<Vec<_>>().join(", "),
                    }
                })?;
                file(&item.key, data, Some(item))
            })
            .collect(),
    }
}

/// The access policy of an ImageBuild: its target host and the credentials its own
/// `spec.registry.credentialsSecret` gives (same namespace only).
async fn credential_policy(
    ib: &ImageBuild,
    target_host: &str,
    client: &Client,
    secrets: &SecretCache,
    digest: &mut InputsDigest,
) -> Result<CredentialPolicy, Error> {
    let Some(name) = ib
        .spec
        .registry
        .as_ref()
        .and_then(|s| s.credentials_secret.as_ref())
    else {
        return Ok(CredentialPolicy::new(target_host, None));
    };
    let namespace = ib.namespace().unwrap_or_default();
    let secret = get_secret(
        secrets,
        client,
        &namespace,
        name,
        "registry credentials",
        "spec.registry.credentialsSecret",
    )
    .await?;
    digest.add(
        "credentials",
        secret.resource_version().unwrap_or_default().as_bytes(),
    );
    let given = given_credentials(&secret, &namespace, name)?;
    Ok(CredentialPolicy::new(target_host, Some(given)))
}

/// Registry access for `host`: the ImageBuild's own CA (same namespace only) overrides the
/// controller's profile for that host; credentials are whatever the policy sends there.
async fn access_for(
    ib: &ImageBuild,
    host: &str,
    policy: &CredentialPolicy,
    client: &Client,
    secrets: &SecretCache,
    config: &ControllerConfig,
    digest: &mut InputsDigest,
) -> Result<RegistryAccess, Error> {
    let namespace = ib.namespace().unwrap_or_default();
    let profile = config.profile(host);
    let settings = ib.spec.registry.as_ref();
    let mut access = RegistryAccess {
        host: host.to_owned(),
        endpoint: profile.and_then(|p| p.endpoint.clone()),
        ca: None,
        credentials: None,
        insecure: settings.is_some_and(|s| s.insecure) || profile.is_some_and(|p| p.insecure),
    };

    if let Some(ca) = settings.and_then(|s| s.ca_secret.as_ref()) {
        let secret = get_secret(
            secrets,
            client,
            &namespace,
            &ca.name,
            "registry CA",
            "spec.registry.caSecret",
        )
        .await?;
        digest.add(
            "ca",
            secret.resource_version().unwrap_or_default().as_bytes(),
        );
        access.ca = Some(ca_from(&secret, &namespace, &ca.name, &ca.key)?);
    } else if let Some(profile) = profile {
        access.ca = profile_ca(profile, client, secrets, digest).await?;
    }

    access.credentials = match (policy.choose(host)?, profile) {
        (CredentialChoice::Given(credentials), _) => Some(credentials),
        (CredentialChoice::Profile, Some(profile)) => {
            profile_credentials(profile, client, secrets, digest).await?
        }
        (CredentialChoice::Profile, None) => None,
    };
    Ok(access)
}

/// Registry access for `host` from the controller's registry profile alone, as
/// `imagebuild ... --from-cluster` uses it. Without a profile for the host: no CA, no credentials.
pub async fn profile_access(
    host: &str,
    client: &Client,
    config: &ControllerConfig,
) -> Result<RegistryAccess, Error> {
    let mut digest = InputsDigest::default();
    // No watch feeds this one: every Secret is read from the API server.
    let secrets = SecretCache::default();
    let profile = config.profile(host);
    let (ca, credentials) = match profile {
        Some(p) => (
            profile_ca(p, client, &secrets, &mut digest).await?,
            profile_credentials(p, client, &secrets, &mut digest).await?,
        ),
        None => (None, None),
    };
    Ok(RegistryAccess {
        host: host.to_owned(),
        endpoint: profile.and_then(|p| p.endpoint.clone()),
        ca,
        credentials,
        insecure: profile.is_some_and(|p| p.insecure),
    })
}

async fn profile_ca(
    profile: &RegistryProfile,
    client: &Client,
    secrets: &SecretCache,
    digest: &mut InputsDigest,
) -> Result<Option<CaBundle>, Error> {
    let Some(r) = &profile.ca_secret else {
        return Ok(None);
    };
    let field = format!("the caSecret of registry profile {}", profile.host);
    let secret = get_secret(
        secrets,
        client,
        &r.namespace,
        &r.name,
        "registry CA",
        &field,
    )
    .await?;
    digest.add(
        "ca",
        secret.resource_version().unwrap_or_default().as_bytes(),
    );
    ca_from(&secret, &r.namespace, &r.name, &r.key).map(Some)
}

async fn profile_credentials(
    profile: &RegistryProfile,
    client: &Client,
    secrets: &SecretCache,
    digest: &mut InputsDigest,
) -> Result<Option<Credentials>, Error> {
    let Some(r) = &profile.credentials_secret else {
        return Ok(None);
    };
    let field = format!("the credentialsSecret of registry profile {}", profile.host);
    let secret = get_secret(
        secrets,
        client,
        &r.namespace,
        &r.name,
        "registry credentials",
        &field,
    )
    .await?;
    digest.add(
        "credentials",
        secret.resource_version().unwrap_or_default().as_bytes(),
    );
    let value = |key: &str| secret_value(&secret, key);
    let missing = |key: &str| Error::SecretKeyMissing {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        purpose: "registry credentials",
        key: key.to_owned(),
        hint: "the registry profile names this key".into(),
    };
    Ok(Some(Credentials {
        username: value(&r.username_key).ok_or_else(|| missing(&r.username_key))?,
        password: value(&r.password_key).ok_or_else(|| missing(&r.password_key))?,
        source: format!("Secret {}/{}", r.namespace, r.name),
    }))
}

async fn get_secret(
    secrets: &SecretCache,
    client: &Client,
    namespace: &str,
    name: &str,
    purpose: &'static str,
    field: &str,
) -> Result<Arc<Secret>, Error> {
    secrets
        .get(client, namespace, name)
        .await?
        .ok_or_else(|| Error::SecretNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            purpose,
            field: field.to_owned(),
        })
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn ca_from(secret: &Secret, namespace: &str, name: &str, key: &str) -> Result<CaBundle, Error> {
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .ok_or_else(|| Error::SecretKeyMissing {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            purpose: "registry CA",
            key: key.to_owned(),
            hint: "put the PEM certificate under that key".into(),
        })?;
    Ok(CaBundle {
        pem,
        source: format!("Secret {namespace}/{name} key {key}"),
    })
}

/// What an ImageBuild's own credentials Secret gives: a dockerconfigjson is read per host, a
/// user name and password (basic-auth or plain Secret) are for the target host only.
fn given_credentials(
    secret: &Secret,
    namespace: &str,
    name: &str,
) -> Result<GivenCredentials, Error> {
    let source = format!("Secret {namespace}/{name}");
    if let Some(json) = secret_value(secret, ".dockerconfigjson") {
        return Ok(GivenCredentials::PerHost(DockerConfig::parse(
            &json, &source,
        )?));
    }
    match (secret_value(secret, "username"), secret_value(secret, "password")) {
        (Some(username), Some(password)) => Ok(GivenCredentials::ForTarget(Credentials {
            username,
            password,
            source,
        })),
        _ => Err(Error::SecretKeyMissing {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            purpose: "registry credentials",
            key: "username/password".to_owned(),
            hint: "use a kubernetes.io/basic-auth Secret (username, password) or a kubernetes.io/dockerconfigjson Secret".into(),
        }),
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
