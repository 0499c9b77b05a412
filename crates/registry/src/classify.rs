//! How an HTTP response becomes a [`RegistryError`]: the status, the operation that got it and
//! the distribution error codes in the body decide which error (and so which message, reason and
//! retry decision) the caller sees. The client's entry points ([`RegistryClient::error_from`],
//! [`RegistryClient::explain_head`], [`RegistryClient::classify`]) and the statuses that are
//! retried ([`is_transient_status`]) are here too.
//!
//! Kept apart from the error type in [`super::error`] because this is policy about registries'
//! answers (Gitea's 404 for an unknown owner, Docker Hub's 403 TOOMANYREQUESTS, ...), while the
//! error type only says what each failure means.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;

use super::auth::Credentials;
use super::call::Call;
use super::client::{RegistryClient, SMALL_BODY_LIMIT};
use super::error::{Operation, RegistryError};
use super::retry::retry_after;

impl RegistryClient {
    /// Turns an unexpected response into the error that explains it.
    pub(crate) async fn error_from(&self, call: &Call<'_>, response: Response) -> RegistryError {
        let status = response.status();
        let wait = retry_after(response.headers());
        let body = match tokio::time::timeout(
            Duration::from_secs(10),
            self.read_body(response, SMALL_BODY_LIMIT, call.operation),
        )
        .await
        {
            Ok(Ok(body)) => body,
            _ => Bytes::new(),
        };
        self.classify(call, status, wait, &body)
    }

    /// HEAD answers carry no body, so the registry's error code is missing: ask again with GET
    /// to learn it (e.g. Gitea's NAME_INVALID), falling back to the bare status.
    pub(crate) async fn explain_head(&self, call: &Call<'_>, response: Response) -> RegistryError {
        let status = response.status();
        let wait = retry_after(response.headers());
        let mut get = Call::new(
            Method::GET,
            call.url.clone(),
            call.repository,
            call.access,
            call.operation,
        );
        get.reference = call.reference.clone();
        get.headers = call.headers.clone();
        match self.send_read(&get, SMALL_BODY_LIMIT).await {
            Ok(fetched) if fetched.status == status => {
                self.classify(call, status, wait, &fetched.body)
            }
            _ => self.classify(call, status, wait, b""),
        }
    }

    /// Classifies a response whose body was already read.
    pub(crate) fn classify(
        &self,
        call: &Call<'_>,
        status: StatusCode,
        wait: Option<Duration>,
        body: &[u8],
    ) -> RegistryError {
        let ctx = self.context(call, call.operation, self.credentials());
        classify_response(&ctx, status.as_u16(), wait, body)
    }

    /// What classifying an answer to `call` needs to know; `credentials` are the ones that were
    /// sent (named in "refused" messages).
    pub(crate) fn context<'a>(
        &'a self,
        call: &'a Call<'_>,
        operation: Operation,
        credentials: Option<&'a Credentials>,
    ) -> ResponseContext<'a> {
        ResponseContext {
            host: self.host(),
            repository: call.repository,
            operation,
            reference: call.reference.as_deref(),
            user: credentials.map(|c| c.username.as_str()),
            credentials_source: credentials.map(|c| c.source.as_str()),
            body_size: call.body_size,
        }
    }
}

/// Statuses worth trying again: the registry or a proxy in front of it is overloaded or restarting.
pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
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
