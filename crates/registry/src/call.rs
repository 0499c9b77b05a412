//! One request to a registry, described so that it can be sent again (retries, a fresh token),
//! and what came back.

use std::sync::Mutex;

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::auth::Access;
use super::error::Operation;

/// A response read whole.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One request to the registry, described so that it can be sent again.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub url: Url,
    /// Repository the request is about (auth scope and messages); empty for the registry root.
    pub repository: &'a str,
    pub access: Access,
    pub operation: Operation,
    /// Tag or digest, for messages.
    pub reference: Option<String>,
    pub headers: HeaderMap,
    pub body: CallBody,
    pub timeout: CallTimeout,
    /// Size of the request body, for "too large" messages.
    pub body_size: Option<u64>,
}

impl<'a> Call<'a> {
    pub fn new(
        method: Method,
        url: Url,
        repository: &'a str,
        access: Access,
        operation: Operation,
    ) -> Self {
        Self {
            method,
            url,
            repository,
            access,
            operation,
            reference: None,
            headers: HeaderMap::new(),
            body: CallBody::Empty,
            timeout: CallTimeout::Request,
            body_size: None,
        }
    }

    pub fn reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Limit only the wait for the response headers: the caller reads the body as a stream.
    pub fn streamed_response(mut self) -> Self {
        self.timeout = CallTimeout::Stream;
        self
    }

    pub fn bytes(mut self, body: Bytes) -> Self {
        self.body_size = Some(body.len() as u64);
        self.timeout = CallTimeout::Upload(body.len() as u64);
        self.body = CallBody::Bytes(body);
        self
    }

    /// `size` bytes of blob data streamed from a file or another registry: can be sent once.
    pub fn octets(mut self, body: reqwest::Body, size: u64) -> Self {
        self.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        // An explicit length keeps the body from going out chunked, which proxies may refuse.
        self.headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        self.body_size = Some(size);
        self.timeout = CallTimeout::Upload(size);
        self.body = CallBody::Stream(Mutex::new(Some(body)));
        self
    }

    /// Blob data still being produced, at most `at_most` bytes: sent without a length (as
    /// HTTP/1.1 chunks or HTTP/2 frames); can be sent once.
    pub fn octets_of_unknown_length(mut self, body: reqwest::Body, at_most: u64) -> Self {
        self.timeout = CallTimeout::Upload(at_most);
        self.body = CallBody::Stream(Mutex::new(Some(body)));
        self
    }
}

/// How long a [`Call`] may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallTimeout {
    /// The whole exchange within [`Timeouts::request`].
    Request,
    /// Sending this many bytes, at no less than [`Timeouts::min_transfer_rate`].
    Upload(u64),
    /// Only the wait for response headers; the body is read as a stream with idle timeouts.
    Stream,
}

/// The body of a [`Call`].
pub(crate) enum CallBody {
    Empty,
    Bytes(Bytes),
    Stream(Mutex<Option<reqwest::Body>>),
}

impl CallBody {
    pub(crate) fn replayable(&self) -> bool {
        !matches!(self, CallBody::Stream(_))
    }
}
