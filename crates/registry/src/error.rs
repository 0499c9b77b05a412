//! One error type for everything that can go wrong between us and a registry. Each variant is a
//! message that says what to fix and a machine reason (Kubernetes condition reason, metric label).

use crate::failure::{Category, FailureKind};
use std::time::Duration;

use serde::Deserialize;

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
        "`{image}` has no image for platform {wanted}; it has: {}; set `platform` to one of these",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    NoMatchingPlatform {
        image: String,
        wanted: String,
        available: Vec<String>,
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

/// The distribution error body: `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
}

/// One entry of a distribution error body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

impl ErrorBody {
    /// Parses a response body; anything that is not the distribution shape yields no entries.
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// Whether any entry carries `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.errors.iter().any(|e| e.code == code)
    }

    /// `CODE: message (detail)` of each entry, or a short excerpt of a non-JSON body.
    pub fn describe(&self, raw: &[u8]) -> String {
        if self.errors.is_empty() {
            return excerpt(raw);
        }
        self.errors
            .iter()
            .map(|e| {
                let mut s = e.code.clone();
                if !e.message.is_empty() {
                    s.push_str(": ");
                    s.push_str(&e.message);
                }
                match &e.detail {
                    Some(serde_json::Value::Null) | None => {}
                    Some(serde_json::Value::String(d)) if !d.is_empty() => {
                        s.push_str(&format!(" ({d})"))
                    }
                    Some(d) => s.push_str(&format!(" ({d})")),
                }
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The first line of a body, shortened: enough to recognise an HTML error page or a proxy message.
fn excerpt(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.is_empty() {
        return "empty response body".to_owned();
    }
    crate::failure::truncate(line, 200)
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

/// Everything needed to turn an unexpected response into a [`RegistryError`].
pub(crate) struct ResponseContext<'a> {
    pub host: &'a str,
    pub repository: &'a str,
    pub operation: Operation,
    pub reference: Option<&'a str>,
    pub user: Option<&'a str>,
    pub credentials_source: Option<&'a str>,
    pub body_size: Option<u64>,
}

/// Classifies a non-success response by status, operation and distribution error codes.
pub(crate) fn classify_response(
    ctx: &ResponseContext<'_>,
    status: u16,
    retry_after: Option<Duration>,
    raw_body: &[u8],
) -> RegistryError {
    let body = ErrorBody::parse(raw_body);
    let detail = body.describe(raw_body);
    let host = ctx.host.to_owned();
    let repository = ctx.repository.to_owned();
    let operation = ctx.operation.describe().to_owned();
    if body.has_code("NAME_INVALID") {
        return RegistryError::InvalidName {
            host,
            repository,
            detail,
        };
    }
    if body.has_code("DIGEST_INVALID") {
        return RegistryError::DigestMismatch {
            host,
            what: format!("{operation} of `{repository}`"),
            expected: "the digest sent".to_owned(),
            actual: detail,
        };
    }
    match status {
        401 => RegistryError::Unauthorized {
            host,
            repository,
            user: ctx.user.map(str::to_owned),
            credentials_source: ctx.credentials_source.map(str::to_owned),
            detail,
        },
        403 if body.has_code("TOOMANYREQUESTS") => RegistryError::RateLimited {
            host,
            operation,
            retry_after,
        },
        403 => RegistryError::Forbidden {
            host,
            repository,
            user: ctx.user.map(str::to_owned),
            credentials_source: ctx.credentials_source.map(str::to_owned),
            detail,
        },
        404 => not_found(ctx, &body, detail),
        413 => RegistryError::BodyTooLarge {
            host,
            size: ctx.body_size.unwrap_or(0),
            detail,
        },
        429 => RegistryError::RateLimited {
            host,
            operation,
            retry_after,
        },
        400 | 415 | 501 if ctx.operation == Operation::PutManifest => {
            RegistryError::ManifestRejected {
                host,
                repository,
                detail: if status == 501 {
                    format!("the registry does not support this kind of manifest ({detail})")
                } else {
                    detail
                },
            }
        }
        500..=599 => RegistryError::RegistryUnavailable {
            host,
            operation,
            status,
            detail,
        },
        _ => RegistryError::UnexpectedResponse {
            host,
            operation,
            status,
            detail,
        },
    }
}

fn not_found(ctx: &ResponseContext<'_>, body: &ErrorBody, detail: String) -> RegistryError {
    let host = ctx.host.to_owned();
    let repository = ctx.repository.to_owned();
    match ctx.operation {
        // Gitea answers a manifest naming a blob it lacks with 404 BLOB_UNKNOWN: not an owner
        // problem (the owner exists, since the blobs went up to it).
        Operation::PutManifest
            if body.has_code("BLOB_UNKNOWN") || body.has_code("MANIFEST_BLOB_UNKNOWN") =>
        {
            RegistryError::ManifestRejected {
                host,
                repository,
                detail: format!(
                    "it references a blob the registry does not have ({detail}); build again"
                ),
            }
        }
        // Gitea answers 404 on upload start and manifest upload when the owner is unknown; a
        // distribution registry creates repositories on first push and never gets here.
        Operation::StartUpload | Operation::PutManifest => RegistryError::OwnerNotFound {
            host,
            owner: crate::reference::owner_of(ctx.repository).to_owned(),
            repository,
        },
        Operation::GetManifest | Operation::HeadManifest | Operation::DeleteManifest => {
            RegistryError::ImageNotFound {
                host,
                repository,
                reference: ctx.reference.unwrap_or("latest").to_owned(),
            }
        }
        Operation::GetBlob | Operation::BlobExists => match ctx.reference.map(str::parse) {
            Some(Ok(digest)) => RegistryError::BlobNotFound {
                host,
                repository,
                digest,
            },
            _ => RegistryError::RepositoryNotFound { host, repository },
        },
        Operation::ListTags => RegistryError::RepositoryNotFound { host, repository },
        _ if body.has_code("NAME_UNKNOWN") => {
            RegistryError::RepositoryNotFound { host, repository }
        }
        _ => RegistryError::UnexpectedResponse {
            host,
            operation: ctx.operation.describe().to_owned(),
            status: 404,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(operation: Operation) -> ResponseContext<'static> {
        ResponseContext {
            host: "gitea.cnoe.localtest.me:8443",
            repository: "nobody/app",
            operation,
            reference: Some("v1"),
            user: Some("giteaAdmin"),
            credentials_source: Some("Secret gitea/gitea-credential"),
            body_size: None,
        }
    }

    #[test]
    fn error_body_is_described_by_code_message_and_detail() {
        let raw = br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{"reason":"x"}}]}"#;
        let body = ErrorBody::parse(raw);
        assert_eq!(
            body.describe(raw),
            r#"MANIFEST_INVALID: manifest invalid ({"reason":"x"})"#
        );
    }

    #[test]
    fn non_json_body_is_described_by_its_first_line() {
        let raw = b"\n<html>\n<head><title>413 Request Entity Too Large</title></head>";
        assert_eq!(ErrorBody::parse(raw).describe(raw), "<html>");
    }

    #[test]
    fn name_invalid_code_is_invalid_name_whatever_the_status() {
        let raw = br#"{"errors":[{"code":"NAME_INVALID","message":""}]}"#;
        let err = classify_response(&ctx(Operation::StartUpload), 400, None, raw);
        assert_eq!(err.reason(), "InvalidName");
        assert!(!err.is_transient());
    }

    #[test]
    fn not_found_on_upload_start_is_an_unknown_owner() {
        let err = classify_response(&ctx(Operation::StartUpload), 404, None, b"Not found.");
        assert_eq!(err.reason(), "OwnerNotFound");
        assert_eq!(
            err.to_string(),
            "owner `nobody` does not exist on gitea.cnoe.localtest.me:8443: create the user or \
             organisation, or fix `image` (repository `nobody/app`)"
        );
    }

    #[test]
    fn not_found_on_manifest_get_is_image_not_found() {
        let raw = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let err = classify_response(&ctx(Operation::GetManifest), 404, None, raw);
        assert_eq!(err.reason(), "ImageNotFound");
        assert!(err.to_string().contains("nobody/app:v1"), "{err}");
    }

    #[test]
    fn unauthorized_names_user_and_credential_source() {
        let raw = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        let err = classify_response(&ctx(Operation::StartUpload), 401, None, raw);
        assert_eq!(err.reason(), "Unauthorized");
        let msg = err.to_string();
        assert!(msg.contains("`giteaAdmin`"), "{msg}");
        assert!(msg.contains("Secret gitea/gitea-credential"), "{msg}");
    }

    #[test]
    fn unauthorized_without_credentials_says_none_are_configured() {
        let mut c = ctx(Operation::GetManifest);
        c.user = None;
        c.credentials_source = None;
        let err = classify_response(&c, 401, None, b"");
        assert!(
            err.to_string().contains("no credentials are configured"),
            "{err}"
        );
    }

    #[test]
    fn server_errors_and_rate_limits_are_transient() {
        let unavailable = classify_response(&ctx(Operation::UploadChunk), 503, None, b"");
        assert_eq!(unavailable.reason(), "RegistryUnavailable");
        assert!(unavailable.is_transient());
        let limited = classify_response(
            &ctx(Operation::UploadChunk),
            429,
            Some(Duration::from_secs(3)),
            b"",
        );
        assert_eq!(limited.reason(), "RateLimited");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert!(limited.is_transient());
    }

    #[test]
    fn client_errors_are_permanent() {
        for (status, reason) in [
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (413, "BodyTooLarge"),
        ] {
            let err = classify_response(&ctx(Operation::UploadChunk), status, None, b"");
            assert_eq!(err.reason(), reason);
            assert!(!err.is_transient(), "{reason}");
        }
    }

    #[test]
    fn artifact_manifest_refusal_is_manifest_rejected() {
        let err = classify_response(&ctx(Operation::PutManifest), 501, None, b"");
        assert_eq!(err.reason(), "ManifestRejected");
        assert!(err.to_string().contains("does not support"), "{err}");
    }
}
