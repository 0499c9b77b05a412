//! Which credentials go to which registry host: the one access policy of the controller and the
//! command line.
//!
//! A build talks to up to two hosts: its target (`spec.image`, or the reference a command names)
//! and its base image's. Credentials belong to hosts, never to builds:
//!
//! - credentials given for the build as a user name and password (a `kubernetes.io/basic-auth`
//!   Secret, `--username/--password-stdin`) are for the target host only;
//! - a dockerconfigjson is read per host, by Docker's matching rules; a host without an entry
//!   gets nothing from it (and a target without one is an error that names the hosts it holds);
//! - a host those leave open gets its registry profile's credentials, if it has a profile;
//! - everything else is anonymous.
//!
//! Hosts are compared in their canonical form, so `index.docker.io` and `docker.io` are one host.
//! Which token realm may see credentials is decided where tokens are fetched
//! ([`super::auth::token::token_endpoints`]): only the registry's own host or endpoint.

use std::fmt;

use base64::Engine;

use super::auth::Credentials;
use super::{RegistryClient, RegistryConfig, RegistryError, TrustConfig};
use crate::reference::DEFAULT_REGISTRY;

/// Names Docker gives its Hub besides `docker.io`, in image references and in `auths` keys.
const DOCKER_HUB_ALIASES: [&str; 3] = [
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// The form of a registry host that comparisons use: lower case, Docker Hub's aliases folded
/// into `docker.io`.
pub fn canonical_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DEFAULT_REGISTRY.to_owned()
    } else {
        host
    }
}

/// PEM certificates to trust for a registry, and where they came from.
#[derive(Clone)]
pub struct CaBundle {
    pub pem: Vec<u8>,
    /// e.g. `Secret default/idpbuilder-cert key ca.crt` or `--ca-file ca.pem`.
    pub source: String,
}

/// How to reach one registry host: where, what to trust, who to be.
#[derive(Clone)]
pub struct RegistryAccess {
    pub host: String,
    pub endpoint: Option<String>,
    pub ca: Option<CaBundle>,
    /// Sent to `host` only.
    pub credentials: Option<Credentials>,
    pub insecure: bool,
}

impl RegistryAccess {
    /// Anonymous access over HTTPS with the system's trusted CAs.
    pub fn anonymous(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            endpoint: None,
            ca: None,
            credentials: None,
            insecure: false,
        }
    }

    /// A number that differs between accesses that differ in anything (host, endpoint, CA,
    /// credentials, TLS mode): a key for keeping clients. In memory only; never shown.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.host.hash(&mut hasher);
        self.endpoint.hash(&mut hasher);
        self.ca.as_ref().map(|ca| &ca.pem).hash(&mut hasher);
        self.credentials
            .as_ref()
            .map(|c| (&c.username, &c.password, &c.source))
            .hash(&mut hasher);
        self.insecure.hash(&mut hasher);
        hasher.finish()
    }

    /// A client for this host.
    pub fn client(&self) -> Result<RegistryClient, RegistryError> {
        let mut config = RegistryConfig::new(&self.host);
        config.endpoint = self.endpoint.clone();
        config.credentials = self.credentials.clone();
        config.trust = match (&self.ca, self.insecure) {
            (_, true) => TrustConfig::insecure(),
            (Some(ca), false) => TrustConfig::from_pem(&ca.pem, ca.source.clone())?,
            (None, false) => TrustConfig::system(),
        };
        RegistryClient::new(config)
    }
}

/// Credentials given for one build or command, before they are matched to hosts.
#[derive(Clone, Debug)]
pub enum GivenCredentials {
    /// A user name and password: for the target host only.
    ForTarget(Credentials),
    /// A Docker config: one entry per registry.
    PerHost(DockerConfig),
}

/// Where the credentials for one host come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialChoice {
    /// These, given for the build.
    Given(Credentials),
    /// The host's registry profile's, if it has one; otherwise none.
    Profile,
}

/// The access policy of one build: its target host and what was given for it.
#[derive(Clone, Debug)]
pub struct CredentialPolicy {
    target_host: String,
    given: Option<GivenCredentials>,
}

impl CredentialPolicy {
    /// The policy of a build that pushes to `target_host`.
    pub fn new(target_host: &str, given: Option<GivenCredentials>) -> Self {
        Self {
            target_host: canonical_host(target_host),
            given,
        }
    }

    /// Whether `host` is the build's target host.
    pub fn is_target(&self, host: &str) -> bool {
        canonical_host(host) == self.target_host
    }

    /// Where `host`'s credentials come from. Fails only when a Docker config has no entry for
    /// the target host: pushing anonymously would hide the real mistake.
    pub fn choose(&self, host: &str) -> Result<CredentialChoice, AccessError> {
        let host = canonical_host(host);
        match &self.given {
            Some(GivenCredentials::ForTarget(credentials)) if host == self.target_host => {
                Ok(CredentialChoice::Given(credentials.clone()))
            }
            Some(GivenCredentials::PerHost(config)) => match config.credentials_for(&host) {
                Some(credentials) => Ok(CredentialChoice::Given(credentials)),
                None if host == self.target_host => Err(AccessError::NoEntryForTarget {
                    origin: config.source.clone(),
                    host,
                    hosts: config.hosts(),
                }),
                None => Ok(CredentialChoice::Profile),
            },
            _ => Ok(CredentialChoice::Profile),
        }
    }

    /// The credentials sent to `host`, given its profile's (`None` without a profile or without
    /// credentials in it).
    pub fn credentials_for(
        &self,
        host: &str,
        profile: Option<&Credentials>,
    ) -> Result<Option<Credentials>, AccessError> {
        Ok(match self.choose(host)? {
            CredentialChoice::Given(credentials) => Some(credentials),
            CredentialChoice::Profile => profile.cloned(),
        })
    }
}

/// The `auths` of a Docker config (`.dockerconfigjson`), by canonical host.
#[derive(Clone)]
pub struct DockerConfig {
    /// Where it came from, for messages, e.g. `Secret team-a/pull-creds`.
    source: String,
    /// Canonical host and credentials, in the file's order.
    entries: Vec<(String, Credentials)>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("source", &self.source)
            .field("hosts", &self.hosts())
            .finish()
    }
}

impl DockerConfig {
    /// Reads `{"auths": {KEY: {"username", "password"} | {"auth": base64(user:password)}}}`.
    /// An entry without usable credentials (e.g. only an identity token) is left out.
    pub fn parse(json: &str, source: &str) -> Result<Self, AccessError> {
        let invalid = |detail: &str| AccessError::InvalidDockerConfig {
            origin: source.to_owned(),
            detail: detail.to_owned(),
        };
        // serde_json's messages quote no input, so they cannot leak a password.
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| invalid(&format!("it is not JSON ({e})")))?;
        let auths = value
            .get("auths")
            .and_then(|a| a.as_object())
            .ok_or_else(|| invalid("it has no `auths` object"))?;
        let entries = auths
            .iter()
            .filter_map(|(key, entry)| {
                let (username, password) = entry_credentials(entry)?;
                let credentials = Credentials::new(username, password, source);
                Some((host_of_key(key), credentials))
            })
            .collect();
        Ok(Self {
            source: source.to_owned(),
            entries,
        })
    }

    /// The credentials of the first entry whose key names `host`.
    pub fn credentials_for(&self, host: &str) -> Option<Credentials> {
        let host = canonical_host(host);
        self.entries
            .iter()
            .find(|(key, _)| *key == host)
            .map(|(_, credentials)| credentials.clone())
    }

    /// The hosts it has credentials for.
    pub fn hosts(&self) -> Vec<String> {
        self.entries.iter().map(|(host, _)| host.clone()).collect()
    }
}

/// The host an `auths` key names, as Docker reads it: `https://index.docker.io/v1/`,
/// `http://host:port/`, `host:port` and `host:port/path` all name their `host[:port]`.
fn host_of_key(key: &str) -> String {
    let key = key.trim();
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or_default();
    canonical_host(host)
}

/// `username` and `password`, or the `auth` field decoded (the password keeps its colons).
fn entry_credentials(entry: &serde_json::Value) -> Option<(String, String)> {
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Some((username.to_owned(), password.to_owned()));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(field("auth")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some((username.to_owned(), password.to_owned()))
}

/// Credentials that cannot be matched to the registry a build needs them for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "{origin} (.dockerconfigjson) has no auths entry with a username and password for the target registry {host} (it has entries for: {}); add one for {host}, or use a kubernetes.io/basic-auth Secret",
        list_or_none(hosts)
    )]
    NoEntryForTarget {
        origin: String,
        host: String,
        hosts: Vec<String>,
    },
    #[error(
        "{origin} (.dockerconfigjson) cannot be read: {detail}; expected {{\"auths\": {{\"host:port\": {{\"username\": ..., \"password\": ...}}}}}}"
    )]
    InvalidDockerConfig { origin: String, detail: String },
}

fn list_or_none(hosts: &[String]) -> String {
    if hosts.is_empty() {
        "none".to_owned()
    } else {
        hosts.join(", ")
    }
}

#[cfg(test)]
mod tests;
