//! Secrets and registry profiles as registry access: which CA each host is trusted with and
//! which credentials it receives, under the one credential policy
//! ([`crate::registry::CredentialPolicy`]).

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use super::{ClusterError, RegistryProfile};
use crate::api::RegistrySettings;
use crate::registry::{
    CaBundle, CredentialChoice, CredentialPolicy, Credentials, DockerConfig, GivenCredentials,
    RegistryAccess,
};

/// Where Secrets are read from: the controller's watch-backed cache, or the API server itself.
pub trait SecretSource: Sync {
    /// The Secret `namespace/name`, `None` when it does not exist.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Arc<Secret>>, kube::Error>> + Send;
}

/// Every read goes to the API server (the command line's `--from-cluster`).
impl SecretSource for Client {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }
}

/// The versions of the Secrets a resolution read, in the order it read them, so the controller
/// can tell when one of them changes.
#[derive(Debug, Default)]
pub struct SecretsRead(Vec<(&'static str, String)>);

impl SecretsRead {
    fn record(&mut self, purpose: &'static str, secret: &Secret) {
        self.0
            .push((purpose, secret.resource_version().unwrap_or_default()));
    }

    /// (purpose, resourceVersion) of each Secret read.
    pub fn iter(&self) -> impl Iterator<Item = &(&'static str, String)> {
        self.0.iter()
    }
}

/// What a build's own registry settings and the profile of one host say about that host.
pub struct HostAccess<'a> {
    /// The namespace of the ImageBuild: its own Secrets are read there only.
    pub namespace: &'a str,
    /// `spec.registry`.
    pub settings: Option<&'a RegistrySettings>,
    /// The controller's profile for the host, if it has one.
    pub profile: Option<&'a RegistryProfile>,
}

/// The access policy of a build pushing to `target_host`: what its own
/// `spec.registry.credentialsSecret` gives (same namespace only).
pub async fn credential_policy(
    namespace: &str,
    settings: Option<&RegistrySettings>,
    target_host: &str,
    secrets: &impl SecretSource,
    read: &mut SecretsRead,
) -> Result<CredentialPolicy, ClusterError> {
    let Some(name) = settings.and_then(|s| s.credentials_secret.as_ref()) else {
        return Ok(CredentialPolicy::new(target_host, None));
    };
    let secret = get_secret(
        secrets,
        namespace,
        name,
        "registry credentials",
        "spec.registry.credentialsSecret",
    )
    .await?;
    read.record("credentials", &secret);
    let given = given_credentials(&secret, namespace, name)?;
    Ok(CredentialPolicy::new(target_host, Some(given)))
}

/// Registry access for `host`: the build's own CA (same namespace only) overrides the profile's
/// for that host; credentials are whatever the policy sends there.
pub async fn host_access(
    host: &str,
    of: HostAccess<'_>,
    policy: &CredentialPolicy,
    secrets: &impl SecretSource,
    read: &mut SecretsRead,
) -> Result<RegistryAccess, ClusterError> {
    let HostAccess {
        namespace,
        settings,
        profile,
    } = of;
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
            namespace,
            &ca.name,
            "registry CA",
            "spec.registry.caSecret",
        )
        .await?;
        read.record("ca", &secret);
        access.ca = Some(ca_from(&secret, namespace, &ca.name, &ca.key)?);
    } else if let Some(profile) = profile {
        access.ca = profile_ca(profile, secrets, read).await?;
    }

    access.credentials = match (policy.choose(host)?, profile) {
        (CredentialChoice::Given(credentials), _) => Some(credentials),
        (CredentialChoice::Profile, Some(profile)) => {
            profile_credentials(profile, secrets, read).await?
        }
        (CredentialChoice::Profile, None) => None,
    };
    Ok(access)
}

/// Registry access for `host` from a registry profile alone, as `imagebuild ... --from-cluster`
/// uses it: the profile's CA and credentials, read from the API server.
pub async fn profile_access(
    host: &str,
    profile: &RegistryProfile,
    client: &Client,
) -> Result<RegistryAccess, ClusterError> {
    let mut read = SecretsRead::default();
    Ok(RegistryAccess {
        host: host.to_owned(),
        endpoint: profile.endpoint.clone(),
        ca: profile_ca(profile, client, &mut read).await?,
        credentials: profile_credentials(profile, client, &mut read).await?,
        insecure: profile.insecure,
    })
}

async fn profile_ca(
    profile: &RegistryProfile,
    secrets: &impl SecretSource,
    read: &mut SecretsRead,
) -> Result<Option<CaBundle>, ClusterError> {
    let Some(r) = &profile.ca_secret else {
        return Ok(None);
    };
    let field = format!("the caSecret of registry profile {}", profile.host);
    let secret = get_secret(secrets, &r.namespace, &r.name, "registry CA", &field).await?;
    read.record("ca", &secret);
    ca_from(&secret, &r.namespace, &r.name, &r.key).map(Some)
}

async fn profile_credentials(
    profile: &RegistryProfile,
    secrets: &impl SecretSource,
    read: &mut SecretsRead,
) -> Result<Option<Credentials>, ClusterError> {
    let Some(r) = &profile.credentials_secret else {
        return Ok(None);
    };
    let field = format!("the credentialsSecret of registry profile {}", profile.host);
    let secret = get_secret(
        secrets,
        &r.namespace,
        &r.name,
        "registry credentials",
        &field,
    )
    .await?;
    read.record("credentials", &secret);
    let value = |key: &str| secret_value(&secret, key);
    let missing = |key: &str| ClusterError::SecretKeyMissing {
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
    secrets: &impl SecretSource,
    namespace: &str,
    name: &str,
    purpose: &'static str,
    field: &str,
) -> Result<Arc<Secret>, ClusterError> {
    secrets
        .secret(namespace, name)
        .await?
        .ok_or_else(|| ClusterError::SecretNotFound {
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

fn ca_from(
    secret: &Secret,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<CaBundle, ClusterError> {
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .ok_or_else(|| ClusterError::SecretKeyMissing {
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
) -> Result<GivenCredentials, ClusterError> {
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
        _ => Err(ClusterError::SecretKeyMissing {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            purpose: "registry credentials",
            key: "username/password".to_owned(),
            hint: "use a kubernetes.io/basic-auth Secret (username, password) or a kubernetes.io/dockerconfigjson Secret".into(),
        }),
    }
}
