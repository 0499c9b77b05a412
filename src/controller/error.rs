//! Everything that can stop a reconcile, written once: the message (what to fix), the condition
//! reason and metric label, and whether trying again without a change can help.

use crate::build::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "ConfigMap {namespace}/{name} named in spec.context.configMaps does not exist: create it or fix the name"
    )]
    ConfigMapNotFound { namespace: String, name: String },

    #[error(
        "key `{key}` named in spec.context.configMaps[{name}].items is not in ConfigMap {namespace}/{name} (it has: {available})"
    )]
    ConfigMapKeyMissing {
        namespace: String,
        name: String,
        key: String,
        available: String,
    },

    #[error("Secret {namespace}/{name} ({purpose}) does not exist: create it or fix {field}")]
    SecretNotFound {
        namespace: String,
        name: String,
        purpose: &'static str,
        field: String,
    },

    #[error("Secret {namespace}/{name} ({purpose}) has no usable key {key}: {hint}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        purpose: &'static str,
        key: String,
        hint: String,
    },

    #[error("{field}: {message}")]
    InvalidSpec {
        field: &'static str,
        message: String,
    },

    #[error(
        "spec.context.persistentVolumeClaim is not supported by this controller version yet: use spec.context.configMaps"
    )]
    PvcUnsupported,

    #[error(
        "build did not finish within {after} (spec.timeout): raise the timeout or make the context smaller"
    )]
    Timeout { after: String },

    #[error(transparent)]
    Build(#[from] BuildError),

    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ConfigMapNotFound { .. } => "ConfigMapNotFound",
            Self::ConfigMapKeyMissing { .. } => "ConfigMapKeyMissing",
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyMissing { .. } => "SecretInvalid",
            Self::InvalidSpec { .. } => "InvalidSpec",
            Self::PvcUnsupported => "PvcUnsupported",
            Self::Timeout { .. } => "Timeout",
            Self::Build(e) => e.reason(),
            Self::Kube(_) => "KubernetesApiError",
        }
    }

    /// Whether retrying with the same inputs may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Kube(_) => true,
            Self::Build(e) => e.is_transient(),
            _ => false,
        }
    }
}
