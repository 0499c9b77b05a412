//! Uploading a blob while it is still being written: its bytes go up as the body of one
//! `PATCH` of an upload session (one per request-size limit) as they arrive, and the session
//! is closed with the digest once it is known.
//!
//! Nothing here retries. A caller that sees this path fail (a registry or proxy that refuses
//! bodies without a length, a dropped connection) uploads the finished blob from its file the
//! usual way, with retries; the abandoned session expires on the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::{Mutex, mpsc};

use super::auth::Access;
use super::blob::{UploadStart, with_digest};
use super::call::Call;
use super::client::RegistryClient;
use super::error::{Operation, RegistryError};
use crate::oci::Descriptor;

/// An upload session that has received every byte and waits for the blob's digest.
#[derive(Debug)]
pub struct StreamedUpload {
    session: Url,
    size: u64,
}

/// The bytes not sent yet, shared by the request bodies of one upload.
struct Pending {
    segments: mpsc::Receiver<Bytes>,
    /// What did not fit in the previous request.
    carry: Option<Bytes>,
}

impl Pending {
    async fn next(&mut self) -> Option<Bytes> {
        match self.carry.take() {
            Some(bytes) => Some(bytes),
            None => self.segments.recv().await,
        }
    }
}

impl RegistryClient {
    /// Opens an upload session in `repository` and sends what arrives on `segments` until the
    /// sender is dropped, as streamed `PATCH` bodies of at most the request-size limit. `sent`
    /// counts the bytes handed to the connection, acknowledged or not. On failure `segments`
    /// is dropped, which tells the producer to stop copying.
    pub async fn upload_segments(
        &self,
        repository: &str,
        segments: mpsc::Receiver<Bytes>,
        sent: Arc<AtomicU64>,
    ) -> Result<StreamedUpload, RegistryError> {
        let mut session = match self.start_upload(repository, None).await? {
            UploadStart::Session(session) => session,
            UploadStart::Mounted => {
                return Err(self.invalid_response(
                    Operation::StartUpload,
                    "the registry answered a plain upload start as if it had mounted a blob",
                ));
            }
        };
        let pending = Arc::new(Mutex::new(Pending {
            segments,
            carry: None,
        }));
        let limit = self.max_request_body();
        let mut size = 0u64;
        loop {
            {
                let mut pending = pending.lock().await;
                match pending.next().await {
                    Some(bytes) => pending.carry = Some(bytes),
                    None => break,
                }
            }
            let in_request = Arc::new(AtomicU64::new(0));
            let body = request_body(pending.clone(), limit, in_request.clone(), sent.clone());
            let call = Call::new(
                Method::PATCH,
                session.clone(),
                repository,
                Access::Push,
                Operation::UploadChunk,
            )
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .octets_of_unknown_length(body, limit);
            let response = self.send_once(&call).await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(self.error_from(&call, response).await);
            }
            session = self.resolve_location(response.headers(), Operation::UploadChunk)?;
            size += in_request.load(Ordering::Relaxed);
        }
        Ok(StreamedUpload { session, size })
    }

    /// Closes `upload` as the blob `descriptor` (`PUT ?digest=`); the registry checks the
    /// digest of what it received.
    pub async fn finish_streamed(
        &self,
        repository: &str,
        upload: StreamedUpload,
        descriptor: &Descriptor,
    ) -> Result<(), RegistryError> {
        if upload.size != descriptor.size {
            return Err(self.invalid_response(
                Operation::FinishUpload,
                &format!(
                    "the streamed upload holds {} bytes but the blob has {}",
                    upload.size, descriptor.size
                ),
            ));
        }
        let call = Call::new(
            Method::PUT,
            with_digest(upload.session, &descriptor.digest),
            repository,
            Access::Push,
            Operation::FinishUpload,
        )
        .reference(descriptor.digest.as_str());
        self.expect_created(&call).await
    }

    /// Abandons `upload` (best effort; the registry expires it anyway).
    pub async fn cancel_streamed(&self, repository: &str, upload: StreamedUpload) {
        self.cancel_upload(repository, upload.session).await;
    }
}

/// A request body of at most `limit` bytes taken from `pending`; what does not fit stays
/// there for the next request.
fn request_body(
    pending: Arc<Mutex<Pending>>,
    limit: u64,
    in_request: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) -> reqwest::Body {
    let stream = futures::stream::unfold(limit, move |room| {
        let pending = pending.clone();
        let in_request = in_request.clone();
        let sent = sent.clone();
        async move {
            if room == 0 {
                return None;
            }
            let mut pending = pending.lock().await;
            let mut bytes = pending.next().await?;
            if bytes.len() as u64 > room {
                let rest = bytes.split_off(room as usize);
                pending.carry = Some(rest);
            }
            let n = bytes.len() as u64;
            in_request.fetch_add(n, Ordering::Relaxed);
            sent.fetch_add(n, Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(bytes), room - n))
        }
    });
    reqwest::Body::wrap_stream(stream)
}
