//! Controller configuration: registry profiles and limits, read from the file the Helm chart
//! renders (`--config`). A profile says how to reach one registry host and which Secrets to use.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use crate::cluster::IDPBUILDER_HOST;
use crate::cluster::{RegistryProfile, idpbuilder_profiles};
use crate::registry::canonical_host;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerConfig {
    /// Registry profiles, matched by the host of `spec.image` / `spec.from`.
    #[serde(default = "idpbuilder_profiles")]
    pub registries: Vec<RegistryProfile>,
    /// Largest context (sum of file sizes) a build may have.
    #[serde(default = "default_max_context_bytes")]
    pub max_context_bytes: u64,
    /// Timeout of a build when `spec.timeout` is not set, e.g. `10m`.
    #[serde(default = "default_timeout")]
    pub default_timeout: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            registries: idpbuilder_profiles(),
            max_context_bytes: default_max_context_bytes(),
            default_timeout: default_timeout(),
        }
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read controller configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    // The user-facing wording: no hints about the parser's Rust options.
    #[error(
        "controller configuration {path} is not valid: {}",
        .source.render_with_formatter(&serde_saphyr::UserMessageFormatter)
    )]
    Parse {
        path: String,
        // Boxed: the error with its location is large, and a config error is rare.
        source: Box<serde_saphyr::Error>,
    },
    #[error(
        "controller configuration {path}: defaultTimeout `{value}` is not a duration like 90s or 10m"
    )]
    Timeout { path: String, value: String },
}

impl ControllerConfig {
    /// Reads and checks the file; `None` gives the idpbuilder defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: Self = crate::yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown.clone(),
            source: Box::new(source),
        })?;
        if parse_duration(&config.default_timeout).is_none() {
            return Err(ConfigError::Timeout {
                path: shown,
                value: config.default_timeout,
            });
        }
        Ok(config)
    }

    /// The defaults with idpbuilder's profile applied to `host` (idpbuilder can publish Gitea on
    /// another name or port).
    pub fn idpbuilder_for(host: &str) -> Self {
        let mut config = Self::default();
        for profile in &mut config.registries {
            profile.host = host.to_owned();
        }
        config
    }

    /// The profile for a registry host, if any (hosts compared as Docker does: `index.docker.io`
    /// is `docker.io`, case does not matter).
    pub fn profile(&self, host: &str) -> Option<&RegistryProfile> {
        let host = canonical_host(host);
        self.registries
            .iter()
            .find(|p| canonical_host(&p.host) == host)
    }

    pub fn default_timeout(&self) -> Duration {
        parse_duration(&self.default_timeout).unwrap_or(Duration::from_secs(600))
    }

    /// How long a build with `spec.timeout` may take: that timeout when it parses, else the
    /// configured default (the API server's schema refuses malformed ones anyway).
    pub fn build_timeout(&self, spec_timeout: Option<&str>) -> BuildTimeout {
        let text = spec_timeout.unwrap_or(&self.default_timeout).to_owned();
        let limit = parse_duration(&text).unwrap_or_else(|| self.default_timeout());
        BuildTimeout { limit, text }
    }
}

/// A build's time limit, and how it was written (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildTimeout {
    pub limit: Duration,
    pub text: String,
}

fn default_max_context_bytes() -> u64 {
    2 << 30
}
fn default_timeout() -> String {
    "10m".into()
}
/// Parses Go-style durations as the CRD accepts them: `90s`, `10m`, `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = &rest[len..];
    }
    (!total.is_zero()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_crd_syntax_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("m"), None);
    }

    #[test]
    fn no_file_means_the_idpbuilder_profile() {
        let config = ControllerConfig::load(None).expect("defaults");
        let profile = config.profile(IDPBUILDER_HOST).expect("idpbuilder profile");
        let creds = profile.credentials_secret.as_ref().expect("credentials");
        assert_eq!(
            (creds.namespace.as_str(), creds.name.as_str()),
            ("gitea", "gitea-credential")
        );
    }

    #[test]
    fn a_build_takes_its_own_timeout_else_the_default() {
        let config = ControllerConfig::default();
        let own = config.build_timeout(Some("90s"));
        assert_eq!(
            (own.limit, own.text.as_str()),
            (Duration::from_secs(90), "90s")
        );
        let default = config.build_timeout(None);
        assert_eq!(
            (default.limit, default.text.as_str()),
            (Duration::from_secs(600), "10m")
        );
    }

    #[test]
    fn profiles_match_hosts_as_docker_names_them() {
        let mut config = ControllerConfig::idpbuilder_for("index.docker.io");
        assert!(config.profile("docker.io").is_some());
        assert!(config.profile("registry-1.docker.io").is_some());
        assert!(config.profile("ghcr.io").is_none());
        config.registries[0].host = "Gitea.Example:8443".into();
        assert!(config.profile("gitea.example:8443").is_some());
        assert!(config.profile("gitea.example").is_none(), "another port");
    }

    #[test]
    fn unknown_fields_in_a_profile_are_refused() {
        let err = crate::yaml::from_str::<ControllerConfig>("registries: [{host: a, cert: b}]")
            .expect_err("unknown field");
        assert!(err.to_string().contains("cert"), "{err}");
    }

    #[test]
    fn a_file_that_does_not_parse_is_named_with_the_line_at_fault() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), "registries: []\nregistries: []\n").expect("write config");
        let err = ControllerConfig::load(Some(file.path())).expect_err("duplicate key");
        let message = err.to_string();
        let shown = file.path().display().to_string();
        assert!(
            message.starts_with(&format!("controller configuration {shown} is not valid: ")),
            "{message}"
        );
        assert!(
            message.contains("registries") && message.contains("line 2"),
            "{message}"
        );
        assert!(!message.contains("Options"), "{message}");
    }
}
