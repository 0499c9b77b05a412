//! One error type for everything that can go wrong between us and a registry. Each variant is a
//! message that says what to fix and a machine reason (Kubernetes condition reason, metric label).
//!
//! [`Operation`] names what a request was doing, for messages. Which HTTP answer becomes which
//! variant is decided in [`super::classify`].

use crate::failure::{Category, FailureKind};
use std::time::Duration;

use crate::oci::Digest;
use crate::reference::ReferenceError;

/// A failure talking to a registry. Messages name the host, repository, credential source and CA
/// label involved; they never contain a password or token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The client configuration itself is unusable (endpoint URL, TLS setup).
    #[error("registry configuration for {host} is invalid: {detail}")]
    InvalidConfig { host: String, detail: String },

    /// The configured CA bytes are not usable certificates.
    #[error("the CA from {ca} cannot be used: {detail}")]
    InvalidCa { ca: String, detail: String },

    /// A repository name or tag breaks the reference grammar (checked before sending).
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),

    /// 401: credentials missing or refused.
    #[error("{}", unauthorized_message(host, repository, user.as_deref(), credentials_source.as_deref(), detail))]
    Unauthorized {
        host: String,
        repository: String,
        user: Option<String>,
        credentials_source: Option<String>,
        detail: String,
    },

    /// 403: authenticated, but not allowed.
    #[error(
        "registry {host} denied {}access to `{repository}`{}: {detail}; give the user write access to the owner or use credentials that have it",
        user.as_deref().map(|u| format!("user `{u}` ")).unwrap_or_default(),
        credentials_source.as_deref().map(|s| format!(" (credentials from {s})")).unwrap_or_default()
    )]
    Forbidden {
        host: String,
        repository: String,
        user: Option<String>,
        credentials_source: Option<String>,
        detail: String,
    },

    /// Gitea: the owner (user or organisation) in the path does not exist.
    #[error(
        "owner `{owner}` does not exist on {host}: create the user or organisation, or fix `image` (repository `{repository}`)"
    )]
    OwnerNotFound {
        host: String,
        owner: String,
        repository: String,
    },

    /// The registry refused the repository name (NAME_INVALID).
    #[error(
        "registry {host} refused the repository name `{repository}`: {detail}; use a lower-case owner/name"
    )]
    InvalidName {
        host: String,
        repository: String,
        detail: String,
    },

    /// The repository does not exist.
    #[error("repository `{repository}` does not exist on {host}")]
    RepositoryNotFound { host: String, repository: String },

    /// No manifest under this tag or digest.
    #[error("image `{host}/{repository}:{reference}` not found: check the repository and tag")]
    ImageNotFound {
        host: String,
        repository: String,
        reference: String,
    },

    /// The repository lacks this blob.
    #[error("blob {digest} not found in `{repository}` on {host}")]
    BlobNotFound {
        host: String,
        repository: String,
        digest: Digest,
    },

    /// An index has no manifest for the wanted platform.
    #[error(
        "`{image}` has no image for platform {wanted}; it has: {}; set `{field}` to {}",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") },
        if *field == "platform" { "one of these" } else { "some of these" }
    )]
    NoMatchingPlatform {
        image: String,
        wanted: String,
        available: Vec<String>,
        /// The spec field that asked: `platform` or `platforms`.
        field: &'static str,
    },

    /// The registry refused a manifest (invalid, unsupported kind, unknown blobs).
    #[error("registry {host} rejected the manifest for `{repository}`: {detail}")]
    ManifestRejected {
        host: String,
        repository: String,
        detail: String,
    },

    /// An image we fetched cannot be used as a base (schema, media type, nesting).
    #[error("`{image}` is not a usable image: {detail}")]
    UnsupportedImage { image: String, detail: String },

    /// Bytes did not hash to the digest they were supposed to have.
    #[error("digest mismatch for {what} from {host}: expected {expected}, got {actual}")]
    DigestMismatch {
        host: String,
        what: String,
        expected: String,
        actual: String,
    },

    /// 413: a request body was too large for the registry or a proxy before it.
    #[error(
        "registry {host} refused a request body of {size} bytes as too large (413){}: {detail}",
        if *size > (1 << 30) { "; requests over 1 GiB are refused by many ingresses: lower the upload chunk size" } else { "" }
    )]
    BodyTooLarge {
        host: String,
        size: u64,
        detail: String,
    },

    /// The server certificate is not trusted by the configured CA (or the system's).
    #[error("{}", untrusted_message(host, ca, hint))]
    TlsUntrustedCertificate {
        host: String,
        /// Where the trusted certificates came from, or "the system roots".
        ca: String,
        hint: String,
    },

    /// The server certificate does not name the host we connected to.
    #[error(
        "the TLS certificate of {host} is not valid for the name `{server_name}`; it names: {}; connect by one of those names or use a certificate that includes `{server_name}`",
        if names.is_empty() { "no DNS or IP names".to_owned() } else { names.join(", ") }
    )]
    TlsHostnameMismatch {
        host: String,
        server_name: String,
        names: Vec<String>,
    },

    /// The server certificate is expired or not yet valid.
    #[error(
        "the TLS certificate of {host} is {detail}: renew the certificate (or check this machine's clock)"
    )]
    TlsCertificateExpired { host: String, detail: String },

    /// Any other TLS failure (protocol, plain HTTP on an HTTPS endpoint).
    #[error(
        "TLS handshake with {host} failed: {detail}{}",
        if *plain_http_hint { "; is the endpoint plain HTTP? then configure it as http://" } else { "" }
    )]
    TlsHandshake {
        host: String,
        detail: String,
        plain_http_hint: bool,
    },

    /// No connection at all: DNS failure, connection refused, no route.
    #[error(
        "cannot reach registry {host} at {endpoint}: {detail}; check the host name, port and that the registry is running"
    )]
    Unreachable {
        host: String,
        endpoint: String,
        detail: String,
    },

    /// A connection broke in the middle of a request or response.
    #[error("connection to {host} failed during {operation}: {detail}")]
    ConnectionFailed {
        host: String,
        operation: String,
        detail: String,
    },

    /// A request took longer than its time limit.
    #[error("{operation} on {host} timed out after {}s", timeout.as_secs())]
    Timeout {
        host: String,
        operation: String,
        timeout: Duration,
    },

    /// 5xx: the registry (or its proxy) failed; retried before giving up.
    #[error("registry {host} is unavailable ({status}) during {operation}: {detail}")]
    RegistryUnavailable {
        host: String,
        operation: String,
        status: u16,
        detail: String,
    },

    /// 429 (or Docker Hub's TOOMANYREQUESTS): slow down.
    #[error(
        "registry {host} is rate limiting requests (429) during {operation}{}",
        retry_after.map(|d| format!("; it asks to retry after {}s", d.as_secs())).unwrap_or_default()
    )]
    RateLimited {
        host: String,
        operation: String,
        retry_after: Option<Duration>,
    },

    /// A status the operation does not expect.
    #[error("registry {host} answered {operation} with {status}: {detail}")]
    UnexpectedResponse {
        host: String,
        operation: String,
        status: u16,
        detail: String,
    },

    /// A response we cannot read (missing header, bad JSON, oversized).
    #[error("registry {host} sent an invalid response to {operation}: {detail}")]
    InvalidResponse {
        host: String,
        operation: String,
        detail: String,
    },

    /// A blob of the image has no bytes we can send (or they do not match it).
    #[error("cannot push {digest} to `{repository}`: {detail}")]
    MissingBlobSource {
        repository: String,
        digest: Digest,
        detail: String,
    },

    /// A local blob file cannot be read.
    #[error("cannot read {path}: {source}")]
    LocalFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn unauthorized_message(
    host: &str,
    repository: &str,
    user: Option<&str>,
    source: Option<&str>,
    detail: &str,
) -> String {
    match (user, source) {
        (Some(user), Some(source)) => format!(
            "registry {host} refused the credentials of user `{user}` from {source} for `{repository}` ({detail}): \
             check the username and password (or token) there, and that the user may access this repository"
        ),
        (Some(user), None) => format!(
            "registry {host} refused the credentials of user `{user}` for `{repository}` ({detail}): check the username and password"
        ),
        _ => format!(
            "registry {host} requires authentication for `{repository}` ({detail}) and no credentials are configured for it: \
             provide credentials for {host}"
        ),
    }
}

fn untrusted_message(host: &str, ca: &str, hint: &str) -> String {
    let mut s = format!("the TLS certificate of {host} is not trusted by {ca}");
    if !hint.is_empty() {
        s.push_str(": ");
        s.push_str(hint);
    }
    s
}

impl RegistryError {
    /// CamelCase reason for Kubernetes conditions, events and metric labels.
    pub fn reason(&self) -> &'static str {
        use RegistryError::*;
        match self {
            InvalidConfig { .. } => "InvalidRegistryConfig",
            InvalidCa { .. } => "InvalidCA",
            InvalidReference(_) => "InvalidName",
            Unauthorized { .. } => "Unauthorized",
            Forbidden { .. } => "Forbidden",
            OwnerNotFound { .. } => "OwnerNotFound",
            InvalidName { .. } => "InvalidName",
            RepositoryNotFound { .. } => "RepositoryNotFound",
            ImageNotFound { .. } => "ImageNotFound",
            BlobNotFound { .. } => "BlobNotFound",
            NoMatchingPlatform { .. } => "NoMatchingPlatform",
            ManifestRejected { .. } => "ManifestRejected",
            UnsupportedImage { .. } => "UnsupportedImage",
            DigestMismatch { .. } => "DigestMismatch",
            BodyTooLarge { .. } => "BodyTooLarge",
            TlsUntrustedCertificate { .. } => "TlsUntrustedCertificate",
            TlsHostnameMismatch { .. } => "TlsHostnameMismatch",
            TlsCertificateExpired { .. } => "TlsCertificateExpired",
            TlsHandshake { .. } => "TlsHandshakeFailed",
            Unreachable { .. } => "Unreachable",
            ConnectionFailed { .. } => "ConnectionFailed",
            Timeout { .. } => "Timeout",
            RegistryUnavailable { .. } => "RegistryUnavailable",
            RateLimited { .. } => "RateLimited",
            UnexpectedResponse { .. } => "UnexpectedResponse",
            InvalidResponse { .. } => "InvalidResponse",
            MissingBlobSource { .. } => "MissingBlobSource",
            LocalFile { .. } => "LocalFileError",
        }
    }

    /// What kind of failure this is; only network failures pass by themselves.
    pub fn category(&self) -> Category {
        use FailureKind::*;
        use RegistryError::*;
        match self {
            InvalidConfig { .. } | InvalidReference(_) | InvalidName { .. } => {
                Category::permanent(Input)
            }
            Unauthorized { .. } | Forbidden { .. } => Category::permanent(Auth),
            OwnerNotFound { .. }
            | RepositoryNotFound { .. }
            | ImageNotFound { .. }
            | BlobNotFound { .. }
            | NoMatchingPlatform { .. } => Category::permanent(NotFound),
            InvalidCa { .. }
            | TlsUntrustedCertificate { .. }
            | TlsHostnameMismatch { .. }
            | TlsCertificateExpired { .. }
            | TlsHandshake { .. } => Category::permanent(Tls),
            Unreachable { .. }
            | ConnectionFailed { .. }
            | Timeout { .. }
            | RegistryUnavailable { .. }
            | RateLimited { .. } => Category::transient(Network),
            ManifestRejected { .. }
            | UnsupportedImage { .. }
            | DigestMismatch { .. }
            | BodyTooLarge { .. }
            | UnexpectedResponse { .. }
            | InvalidResponse { .. }
            | MissingBlobSource { .. }
            | LocalFile { .. } => Category::permanent(Other),
        }
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        self.category().transient
    }

    /// How long the registry asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What a request was doing, to classify a non-success status precisely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Ping,
    BlobExists,
    StartUpload,
    UploadChunk,
    FinishUpload,
    GetBlob,
    GetManifest,
    HeadManifest,
    PutManifest,
    ListTags,
    DeleteManifest,
    Token,
}

impl Operation {
    /// Words for messages, e.g. "blob upload".
    pub fn describe(self) -> &'static str {
        match self {
            Operation::Ping => "API version check",
            Operation::BlobExists => "blob existence check",
            Operation::StartUpload => "blob upload start",
            Operation::UploadChunk => "blob upload",
            Operation::FinishUpload => "blob upload completion",
            Operation::GetBlob => "blob download",
            Operation::GetManifest => "manifest download",
            Operation::HeadManifest => "manifest lookup",
            Operation::PutManifest => "manifest upload",
            Operation::ListTags => "tag listing",
            Operation::DeleteManifest => "manifest deletion",
            Operation::Token => "token request",
        }
    }
}
