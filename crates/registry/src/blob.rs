//! Blobs: existence checks, uploads (monolithic, or chunked under the ingress body limit),
//! cross-repository mounts, and verified streaming downloads.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Progress;
use super::auth::Access;
use super::call::Call;
use super::client::RegistryClient;
use super::error::{Operation, RegistryError};
use crate::oci::{Blob, BlobLocation, Descriptor, Digest, Sha256};

/// The smallest piece an upload is split into after a 413 (an ingress body limit).
const MIN_UPLOAD_PIECE: u64 = 1 << 20;

/// How one upload attempt goes: in an existing session or a new one, in pieces of at most
/// `piece` bytes.
struct Attempt {
    session: Option<Url>,
    piece: u64,
}

/// What an upload sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushedBlob {
    /// Bytes sent in the successful attempt (0 when the registry already had the blob).
    pub uploaded_bytes: u64,
}

/// A layer skipped because the target held it when the build started, gone by the push.
pub(crate) fn vanished_from_target(repository: &str, blob: &Blob) -> RegistryError {
    RegistryError::MissingBlobSource {
        repository: repository.to_owned(),
        digest: blob.descriptor.digest.clone(),
        detail: "the repository held this layer when the build started but no longer does; \
                 build again"
            .to_owned(),
    }
}

/// Size of the pieces a request body is streamed in.
const STREAM_CHUNK: usize = 256 * 1024;

/// A blob's bytes as they arrive from the registry. The digest is checked when the stream ends:
/// a mismatch is its last item, so read it to the end before trusting the bytes.
pub struct BlobStream {
    size: Option<u64>,
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
}

impl BlobStream {
    /// The size the registry announced, if it did.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The stream as an [`AsyncRead`]; a registry error becomes an `io::Error` wrapping it.
    pub fn into_async_read(self) -> impl AsyncRead + Send + Unpin {
        tokio_util::io::StreamReader::new(self.map_err(io::Error::other))
    }

    /// Reads everything (at most `limit` bytes) and checks the digest.
    pub async fn collect_bytes(mut self, limit: u64) -> Result<Bytes, RegistryError> {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            if (all.len() + chunk.len()) as u64 > limit {
                return Err(RegistryError::UnsupportedImage {
                    image: "blob".to_owned(),
                    detail: format!("it is larger than the {limit} bytes expected"),
                });
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish()
    }
}

/// Where the bytes of an upload come from; opened afresh for every attempt.
pub(crate) enum BlobSource<'a> {
    File(&'a Path),
    Bytes(&'a Bytes),
    /// The same blob in another repository, possibly on another registry.
    Remote {
        client: &'a RegistryClient,
        repository: &'a str,
    },
}

/// Outcome of starting an upload with a mount request.
pub(crate) enum UploadStart {
    Mounted,
    Session(Url),
}

type SharedReader = Arc<tokio::sync::Mutex<Box<dyn AsyncRead + Send + Unpin>>>;

/// Where a failing source leaves its own error, so that it is reported instead of the broken
/// upload it caused.
type SourceError = Arc<Mutex<Option<RegistryError>>>;

impl RegistryClient {
    /// Whether `repository` has the blob `digest`.
    pub async fn blob_exists(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let call = self.blob_call(Method::HEAD, repository, digest, Operation::BlobExists);
        let response = self.send(&call).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.explain_head(&call, response).await),
        }
    }

    /// Asks the registry to link blob `digest` of `from_repository` into `repository` without
    /// uploading it. `false` when the registry declined (the blob must then be uploaded).
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from_repository: &str,
    ) -> Result<bool, RegistryError> {
        match self
            .start_upload(repository, Some((digest, from_repository)))
            .await?
        {
            UploadStart::Mounted => Ok(true),
            UploadStart::Session(session) => {
                self.cancel_upload(repository, session).await;
                Ok(false)
            }
        }
    }

    /// Uploads `blob` from its file or bytes (always: check [`Self::blob_exists`] first to skip).
    /// Blobs larger than the configured request limit go up in chunks. Transient failures
    /// restart the upload from the file.
    pub async fn push_blob(
        &self,
        repository: &str,
        blob: &Blob,
        progress: Arc<dyn Progress>,
    ) -> Result<PushedBlob, RegistryError> {
        let source = match &blob.location {
            BlobLocation::File(path) => BlobSource::File(path),
            BlobLocation::Bytes(bytes) => BlobSource::Bytes(bytes),
            BlobLocation::Base => {
                return Err(RegistryError::MissingBlobSource {
                    repository: repository.to_owned(),
                    digest: blob.descriptor.digest.clone(),
                    detail: "it is a base-image layer with no local copy; mount or copy it from the base repository".to_owned(),
                });
            }
            BlobLocation::Target => return Err(vanished_from_target(repository, blob)),
        };
        self.upload(repository, &blob.descriptor, source, progress, None)
            .await
    }

    /// Streams blob `digest` of `repository`, verifying its digest at the end.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<BlobStream, RegistryError> {
        let call = self
            .blob_call(Method::GET, repository, digest, Operation::GetBlob)
            .streamed_response();
        let response = self.send(&call).await?;
        if !response.status().is_success() {
            return Err(self.error_from(&call, response).await);
        }
        Ok(self.verified_stream(response, digest.clone()))
    }

    fn blob_call<'a>(
        &self,
        method: Method,
        repository: &'a str,
        digest: &Digest,
        operation: Operation,
    ) -> Call<'a> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        Call::new(method, url, repository, Access::Pull, operation).reference(digest.as_str())
    }

    /// A whole small blob (a config), verified, retrying broken transfers.
    pub(crate) async fn get_blob_bytes(
        &self,
        repository: &str,
        digest: &Digest,
        limit: u64,
    ) -> Result<Bytes, RegistryError> {
        self.with_retries(|| async move {
            self.get_blob(repository, digest)
                .await?
                .collect_bytes(limit)
                .await
        })
        .await
    }

    /// Copies blob `descriptor` from `source_repository` on `source` into `repository` here,
    /// streaming it through without storing it.
    pub(crate) async fn copy_blob(
        &self,
        repository: &str,
        descriptor: &Descriptor,
        source: &RegistryClient,
        source_repository: &str,
        progress: Arc<dyn Progress>,
        session: Option<Url>,
    ) -> Result<PushedBlob, RegistryError> {
        let source = BlobSource::Remote {
            client: source,
            repository: source_repository,
        };
        self.upload(repository, descriptor, source, progress, session)
            .await
    }

    /// `POST /v2/<name>/blobs/uploads/`, optionally asking for a mount.
    pub(crate) async fn start_upload(
        &self,
        repository: &str,
        mount: Option<(&Digest, &str)>,
    ) -> Result<UploadStart, RegistryError> {
        let mut url = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from);
        }
        let call = Call::new(
            Method::POST,
            url,
            repository,
            Access::Push,
            Operation::StartUpload,
        );
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::CREATED if mount.is_some() => Ok(UploadStart::Mounted),
            StatusCode::ACCEPTED => Ok(UploadStart::Session(
                self.resolve_location(response.headers(), Operation::StartUpload)?,
            )),
            _ => Err(self.error_from(&call, response).await),
        }
    }

    /// Best effort: an abandoned session only costs the registry a little until it expires.
    pub(crate) async fn cancel_upload(&self, repository: &str, session: Url) {
        let call = Call::new(
            Method::DELETE,
            session,
            repository,
            Access::Push,
            Operation::UploadChunk,
        );
        if let Err(error) = self.send_once(&call).await {
            tracing::debug!(%error, "could not cancel an upload session");
        }
    }

    /// Uploads with retries: each attempt opens the source again and, except for a session
    /// handed in for the first attempt, starts a new upload session.
    async fn upload(
        &self,
        repository: &str,
        descriptor: &Descriptor,
        source: BlobSource<'_>,
        progress: Arc<dyn Progress>,
        mut session: Option<Url>,
    ) -> Result<PushedBlob, RegistryError> {
        let mut attempt = 0u32;
        let mut auth_retried = false;
        let mut piece = self.max_request_body();
        loop {
            attempt += 1;
            let sent = Arc::new(AtomicU64::new(0));
            let result = self
                .upload_attempt(
                    repository,
                    descriptor,
                    &source,
                    &progress,
                    &sent,
                    Attempt {
                        session: session.take(),
                        piece,
                    },
                )
                .await;
            let error = match result {
                Ok(()) => {
                    return Ok(PushedBlob {
                        uploaded_bytes: sent.load(Ordering::Relaxed),
                    });
                }
                Err(error) => error,
            };
            let sent = sent.load(Ordering::Relaxed);
            progress.rewind(sent);
            // A 401 in the middle of sending means the token expired; the failed request
            // fetched a new one, so go again once.
            let token_expired =
                matches!(error, RegistryError::Unauthorized { .. }) && sent > 0 && !auth_retried;
            // An ingress in front of the registry may limit request bodies below our limit
            // (ingress-nginx's proxy-body-size): send smaller pieces, halving down to a floor.
            let refused_piece = match &error {
                RegistryError::BodyTooLarge { .. } => Some(piece.min(descriptor.size)),
                _ => None,
            };
            if let Some(refused) = refused_piece
                && refused / 2 >= MIN_UPLOAD_PIECE
            {
                piece = refused / 2;
                tracing::debug!(registry = %self.host(), %repository, digest = %descriptor.digest, piece, "request body refused as too large; uploading in smaller pieces");
            } else if token_expired {
                auth_retried = true;
            } else if self.should_retry(&error, attempt) {
                let delay = self.retry_policy().delay(attempt, error.retry_after());
                tracing::debug!(registry = %self.host(), %repository, digest = %descriptor.digest, attempt, ?delay, %error, "retrying blob upload");
                tokio::time::sleep(delay).await;
            } else {
                return Err(error);
            }
            // The answer to a completed upload can be lost; then there is nothing to resend.
            if self
                .blob_exists(repository, &descriptor.digest)
                .await
                .unwrap_or(false)
            {
                return Ok(PushedBlob {
                    uploaded_bytes: sent,
                });
            }
        }
    }

    async fn upload_attempt(
        &self,
        repository: &str,
        descriptor: &Descriptor,
        source: &BlobSource<'_>,
        progress: &Arc<dyn Progress>,
        sent: &Arc<AtomicU64>,
        Attempt { session, piece }: Attempt,
    ) -> Result<(), RegistryError> {
        let session = match session {
            Some(session) => session,
            None => match self.start_upload(repository, None).await? {
                UploadStart::Session(session) => session,
                UploadStart::Mounted => return Ok(()),
            },
        };
        let source_error: SourceError = Arc::default();
        let reader = open_source(source, descriptor, &source_error).await?;
        let body = UploadBody {
            reader: Arc::new(tokio::sync::Mutex::new(reader)),
            progress: progress.clone(),
            sent: sent.clone(),
        };
        let result = if descriptor.size <= piece {
            self.put_whole(repository, descriptor, session, &body).await
        } else {
            self.put_chunked(repository, descriptor, session, &body, piece)
                .await
        };
        // A failing source (e.g. the base registry) explains the failure better than the
        // broken upload request it caused.
        match (result, source_error.lock().ok().and_then(|mut e| e.take())) {
            (Err(_), Some(source_failure)) => Err(source_failure),
            (result, _) => result,
        }
    }

    /// One `PUT <session>?digest=` carrying the whole blob.
    async fn put_whole(
        &self,
        repository: &str,
        descriptor: &Descriptor,
        session: Url,
        body: &UploadBody,
    ) -> Result<(), RegistryError> {
        let size = descriptor.size;
        let url = with_digest(session, &descriptor.digest);
        let call = upload_call(
            Method::PUT,
            url,
            repository,
            descriptor,
            Operation::FinishUpload,
        )
        .octets(body.stream(size), size);
        self.expect_created(&call).await
    }

    /// `PATCH` pieces of at most `piece` bytes with `Content-Range: start-end` (no `bytes `
    /// prefix: Gitea refuses it), then an empty `PUT ?digest=`.
    async fn put_chunked(
        &self,
        repository: &str,
        descriptor: &Descriptor,
        mut session: Url,
        body: &UploadBody,
        piece: u64,
    ) -> Result<(), RegistryError> {
        let size = descriptor.size;
        let mut offset = 0u64;
        while offset < size {
            let len = piece.min(size - offset);
            let range = format!("{}-{}", offset, offset + len - 1);
            let content_range = HeaderValue::from_str(&range)
                .map_err(|e| self.invalid_response(Operation::UploadChunk, &e.to_string()))?;
            let call = upload_call(
                Method::PATCH,
                session.clone(),
                repository,
                descriptor,
                Operation::UploadChunk,
            )
            .header(HeaderName::from_static("content-range"), content_range)
            .octets(body.stream(len), len);
            let response = self.send_once(&call).await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(self.error_from(&call, response).await);
            }
            session = self.resolve_location(response.headers(), Operation::UploadChunk)?;
            offset += len;
        }
        let url = with_digest(session, &descriptor.digest);
        let call = upload_call(
            Method::PUT,
            url,
            repository,
            descriptor,
            Operation::FinishUpload,
        );
        self.expect_created(&call).await
    }

    pub(crate) async fn expect_created(&self, call: &Call<'_>) -> Result<(), RegistryError> {
        let response = self.send_once(call).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.error_from(call, response).await)
        }
    }

    fn verified_stream(&self, response: reqwest::Response, expected: Digest) -> BlobStream {
        struct State {
            body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
            hasher: Sha256,
        }
        let size = response.content_length();
        let client = self.clone();
        let idle = self.timeouts().idle;
        let start = State {
            body: Box::pin(response.bytes_stream()),
            hasher: Sha256::default(),
        };
        let stream = futures::stream::unfold(Some(start), move |state| {
            let client = client.clone();
            let expected = expected.clone();
            async move {
                let mut state = state?;
                match tokio::time::timeout(idle, state.body.next()).await {
                    Err(_) => Some((Err(client.timeout(Operation::GetBlob, idle)), None)),
                    Ok(Some(Ok(chunk))) => {
                        state.hasher.update(&chunk);
                        Some((Ok(chunk), Some(state)))
                    }
                    Ok(Some(Err(e))) => Some((
                        Err(client.transport_error(e, Operation::GetBlob, None)),
                        None,
                    )),
                    Ok(None) => {
                        let actual = state.hasher.finish();
                        if actual == expected {
                            None
                        } else {
                            Some((
                                Err(RegistryError::DigestMismatch {
                                    host: client.host().to_owned(),
                                    what: "a downloaded blob".to_owned(),
                                    expected: expected.to_string(),
                                    actual: actual.to_string(),
                                }),
                                None,
                            ))
                        }
                    }
                }
            }
        });
        BlobStream {
            size,
            inner: Box::pin(stream),
        }
    }
}

/// The reader of one upload attempt, shared by the chunks it is sent in.
struct UploadBody {
    reader: SharedReader,
    progress: Arc<dyn Progress>,
    sent: Arc<AtomicU64>,
}

impl UploadBody {
    /// A request body of the next `len` bytes of the reader.
    fn stream(&self, len: u64) -> reqwest::Body {
        let reader = self.reader.clone();
        let progress = self.progress.clone();
        let sent = self.sent.clone();
        let stream = futures::stream::try_unfold(len, move |remaining| {
            let reader = reader.clone();
            let progress = progress.clone();
            let sent = sent.clone();
            async move {
                if remaining == 0 {
                    return Ok::<_, io::Error>(None);
                }
                let want = remaining.min(STREAM_CHUNK as u64) as usize;
                let mut buf = BytesMut::with_capacity(want);
                let n = reader.lock().await.read_buf(&mut buf).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the blob source ended before its declared size",
                    ));
                }
                progress.add(n as u64);
                sent.fetch_add(n as u64, Ordering::Relaxed);
                Ok(Some((buf.freeze(), remaining - n as u64)))
            }
        });
        reqwest::Body::wrap_stream(stream)
    }
}

async fn open_source(
    source: &BlobSource<'_>,
    descriptor: &Descriptor,
    source_error: &SourceError,
) -> Result<Box<dyn AsyncRead + Send + Unpin>, RegistryError> {
    match source {
        BlobSource::File(path) => open_file(path, descriptor.size),
        BlobSource::Bytes(bytes) => {
            if bytes.len() as u64 != descriptor.size {
                return Err(RegistryError::MissingBlobSource {
                    repository: String::new(),
                    digest: descriptor.digest.clone(),
                    detail: format!(
                        "it holds {} bytes but its descriptor says {}",
                        bytes.len(),
                        descriptor.size
                    ),
                });
            }
            Ok(Box::new(io::Cursor::new((*bytes).clone())))
        }
        BlobSource::Remote { client, repository } => {
            let stream = client.get_blob(repository, &descriptor.digest).await?;
            let slot = source_error.clone();
            // Keep the source's own error; the upload only sees an io::Error.
            let recorded = stream.map_err(move |e| {
                let message = e.to_string();
                if let Ok(mut s) = slot.lock() {
                    s.get_or_insert(e);
                }
                io::Error::other(message)
            });
            Ok(Box::new(tokio_util::io::StreamReader::new(recorded)))
        }
    }
}

/// Opens a blob file and checks it still has the size its descriptor promises.
fn open_file(path: &Path, size: u64) -> Result<Box<dyn AsyncRead + Send + Unpin>, RegistryError> {
    let local = |source: io::Error| RegistryError::LocalFile {
        path: path.display().to_string(),
        source,
    };
    // Opening is quick; doing it synchronously keeps the error typed and the code simple.
    let file = std::fs::File::open(path).map_err(local)?;
    let actual = file.metadata().map_err(local)?.len();
    if actual != size {
        return Err(local(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it has {actual} bytes but the image says {size}: was it changed after the build?"
            ),
        )));
    }
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

/// A request of the upload session at `url` for `descriptor`'s blob.
fn upload_call<'a>(
    method: Method,
    url: Url,
    repository: &'a str,
    descriptor: &Descriptor,
    operation: Operation,
) -> Call<'a> {
    Call::new(method, url, repository, Access::Push, operation)
        .reference(descriptor.digest.as_str())
}

/// Adds `digest=` to an upload URL, keeping any query it already has (distribution's `_state`).
pub(crate) fn with_digest(mut url: Url, digest: &Digest) -> Url {
    url.query_pairs_mut().append_pair("digest", digest.as_str());
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_appended_to_an_existing_query() {
        let url = Url::parse("https://r.example/v2/o/a/blobs/uploads/u?_state=abc").expect("url");
        let d = Digest::of(b"");
        assert_eq!(
            with_digest(url, &d).as_str(),
            format!(
                "https://r.example/v2/o/a/blobs/uploads/u?_state=abc&digest=sha256%3A{}",
                d.hex()
            )
        );
    }

    #[test]
    fn a_changed_file_is_refused_before_upload() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("layer.tar.gz");
        std::fs::write(&path, b"12345").expect("write");
        let err = open_file(&path, 4).err().expect("size mismatch");
        assert_eq!(err.reason(), "LocalFileError");
        assert!(err.to_string().contains("layer.tar.gz"), "{err}");
    }
}
