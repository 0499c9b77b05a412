//! Everything that can stop a reconcile, written once: the message (what to fix), the condition
//! reason and metric label, and whether trying again without a change can help.

use crate::build::BuildError;
use crate::cluster::ClusterError;
use crate::failure::{Category, FailureKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] ClusterError),

    #[error("{field}: {message}")]
    InvalidSpec {
        field: &'static str,
        message: String,
    },

    #[error(
        "spec.context.persistentVolumeClaim needs reader Pods, which this controller runs without \
         (flags --context-listen and --reader-image; chart value pvcContexts.enabled): turn them \
         on or use spec.context.configMaps"
    )]
    PvcUnsupported,

    #[error(
        "PersistentVolumeClaim {namespace}/{name} named in spec.context.persistentVolumeClaim \
         does not exist: create it or fix claimName (claims are not watched; the build is tried \
         again with backoff)"
    )]
    ClaimNotFound { namespace: String, name: String },

    #[error(
        "the reader Pod {namespace}/{pod} for PersistentVolumeClaim {claim} did not start within \
         {after}: {why}"
    )]
    ReaderPodPending {
        namespace: String,
        pod: String,
        claim: String,
        after: String,
        why: String,
    },

    #[error("the reader Pod {namespace}/{pod} for PersistentVolumeClaim {claim} failed: {message}")]
    ReaderPodFailed {
        namespace: String,
        pod: String,
        claim: String,
        message: String,
    },

    #[error("the files of PersistentVolumeClaim {claim} cannot go into an image: {source}")]
    ContextUploadInvalid {
        claim: String,
        source: crate::context::ContextError,
    },

    #[error(
        "the upload of PersistentVolumeClaim {claim} from the reader Pod {pod} failed: {message}"
    )]
    ContextUploadFailed {
        claim: String,
        pod: String,
        message: String,
    },

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
            Self::Cluster(e) => e.reason(),
            Self::InvalidSpec { .. } => "InvalidSpec",
            Self::PvcUnsupported => "PvcUnsupported",
            Self::ClaimNotFound { .. } => "ClaimNotFound",
            Self::ReaderPodPending { .. } => "ReaderPodPending",
            Self::ReaderPodFailed { .. } => "ReaderPodFailed",
            Self::ContextUploadInvalid { .. } => "ContextUploadInvalid",
            Self::ContextUploadFailed { .. } => "ContextUploadFailed",
            Self::Timeout { .. } => "Timeout",
            Self::Build(e) => e.reason(),
            Self::Kube(_) => "KubernetesApiError",
        }
    }

    /// What kind of failure this is, and whether retrying with the same inputs may succeed.
    pub fn category(&self) -> Category {
        use FailureKind::*;
        match self {
            Self::Build(e) => e.category(),
            Self::Cluster(e) => e.category(),
            Self::InvalidSpec { .. } | Self::PvcUnsupported | Self::ContextUploadInvalid { .. } => {
                Category::permanent(Input)
            }
            // Claims and their files are not watched: trying again is how a fix is noticed.
            Self::ClaimNotFound { .. } => Category::transient(Input),
            Self::ReaderPodPending { .. }
            | Self::ReaderPodFailed { .. }
            | Self::ContextUploadFailed { .. } => Category::transient(Other),
            Self::Timeout { .. } | Self::Kube(_) => Category::transient(Network),
        }
    }

    /// Whether a request to the Kubernetes API failed (directly, or while the cluster adapter
    /// read ConfigMaps or Secrets).
    pub fn is_api_unavailable(&self) -> bool {
        matches!(self, Self::Kube(_) | Self::Cluster(ClusterError::Kube(_)))
    }

    /// Whether retrying with the same inputs may succeed.
    pub fn is_transient(&self) -> bool {
        self.category().transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_api_request_is_retried_not_recorded_wherever_it_happened() {
        let direct = Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded);
        let while_reading_inputs = Error::Cluster(ClusterError::Kube(
            kube::Error::LinesCodecMaxLineLengthExceeded,
        ));
        for error in [&direct, &while_reading_inputs] {
            assert!(error.is_api_unavailable(), "{error}");
            assert_eq!(error.reason(), "KubernetesApiError");
            assert!(error.is_transient());
        }
        let missing = Error::Cluster(ClusterError::ConfigMapNotFound {
            namespace: "ns".into(),
            name: "src".into(),
        });
        assert!(!missing.is_api_unavailable());
        assert!(!missing.is_transient());
    }
}
