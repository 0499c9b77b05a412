//! Talking to OCI registries: TLS trust (including idpbuilder's self-signed CA certificate),
//! authentication, blob and manifest transfer, tags, and retries of transient failures.
//!
//! A [`RegistryClient`] serves one registry host. Credentials and CA bytes are handed in by the
//! caller (the CLI reads files and flags, the controller reads Secrets); nothing here knows
//! Kubernetes.

pub mod access;
mod auth;
mod blob;
mod call;
mod classify;
mod client;
mod endpoint;
mod error;
mod manifest;
pub mod pull;
pub mod push;
mod retry;
mod streamed;
mod tls;

// The builder's vocabulary, as the registry client's own paths (`crate::oci`, ...).
use imagebuild_builder::{failure, oci, reference};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testserver;

use std::sync::Arc;
use std::time::Duration;

pub use access::{
    AccessError, CaBundle, CredentialChoice, CredentialPolicy, DockerConfig, GivenCredentials,
    RegistryAccess, canonical_host,
};
pub use auth::Credentials;
pub use blob::{BlobStream, PushedBlob};
pub use client::RegistryClient;
pub use error::RegistryError;
pub use manifest::FetchedManifest;
pub use pull::{
    BaseState, Inspected, InspectedImage, Platforms, check_base, fetch_base, fetch_bases, inspect,
};
pub use push::{PushReport, push, push_image};
pub use retry::RetryPolicy;
pub use streamed::StreamedUpload;
pub use tls::TrustConfig;

/// Largest request body sent in one request by default. Larger blobs are uploaded in chunks of
/// this size: the ingress in front of idpbuilder's Gitea refuses bodies over 1 GiB.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 900 * 1024 * 1024;

/// How to reach one registry host and what to trust and present there.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The host as written in image references, e.g. `gitea.cnoe.localtest.me:8443`.
    pub host: String,
    /// Where to connect, e.g. `http://my-gitea-http.gitea.svc.cluster.local:3000`; default
    /// `https://<host>`. Registries serve `/v2/` at the root, so it has no path.
    pub endpoint: Option<String>,
    /// Which server certificates to accept.
    pub trust: TrustConfig,
    /// Sent to this host only; `None` for anonymous access.
    pub credentials: Option<Credentials>,
    /// How transient failures are retried.
    pub retry: RetryPolicy,
    /// Time limits of requests.
    pub timeouts: Timeouts,
    /// Blobs larger than this are uploaded in chunks of at most this many bytes.
    pub max_request_body: u64,
}

impl RegistryConfig {
    /// Defaults for `host`: HTTPS, system CAs, anonymous, 5 attempts.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            endpoint: None,
            trust: TrustConfig::system(),
            credentials: None,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
        }
    }
}

/// Time limits of registry requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection, TLS included.
    pub connect: Duration,
    /// A whole request without a large body (manifests, existence checks, tokens).
    pub request: Duration,
    /// Longest wait for the next bytes of a blob download.
    pub idle: Duration,
    /// Slowest transfer rate (bytes per second) tolerated for uploads: an upload of `n` bytes
    /// may take `request + n / min_transfer_rate`.
    pub min_transfer_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            min_transfer_rate: 1024 * 1024,
        }
    }
}

impl Timeouts {
    /// Time allowed for a request that sends `bytes` of body.
    pub fn for_upload(&self, bytes: u64) -> Duration {
        self.request + Duration::from_secs(bytes / self.min_transfer_rate.max(1))
    }
}

/// Receives byte counts of blob transfers, e.g. to draw a progress line on a terminal.
pub trait Progress: Send + Sync {
    /// `bytes` more were sent.
    fn add(&self, bytes: u64);
    /// A failed attempt's `bytes` will be sent again.
    fn rewind(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn add(&self, _bytes: u64) {}
}

/// A shareable no-op progress hook.
pub fn no_progress() -> Arc<dyn Progress> {
    Arc::new(NoProgress)
}
