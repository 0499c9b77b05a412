//! What can go wrong reading a build's inputs from the cluster: every message names the object
//! and field to fix.

use crate::context::ContextError;
use crate::failure::{Category, FailureKind};
use crate::registry::AccessError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
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

    #[error(transparent)]
    Access(#[from] AccessError),

    /// A ConfigMap key that cannot be a file of the context.
    #[error(transparent)]
    Context(#[from] ContextError),

    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl ClusterError {
    /// CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ConfigMapNotFound { .. } => "ConfigMapNotFound",
            Self::ConfigMapKeyMissing { .. } => "ConfigMapKeyMissing",
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyMissing { .. } | Self::Access(_) => "SecretInvalid",
            Self::Context(e) => e.reason(),
            Self::Kube(_) => "KubernetesApiError",
        }
    }

    /// What kind of failure this is, and whether retrying with the same inputs may succeed.
    pub fn category(&self) -> Category {
        match self {
            Self::Context(e) => e.category(),
            Self::Kube(_) => Category::transient(FailureKind::Network),
            _ => Category::permanent(FailureKind::Input),
        }
    }
}
