//! The per-host client and its request machinery: construction, accessors, sending a [`Call`]
//! with retries, reading bodies, and time limits and failures below HTTP (TLS, connections).
//!
//! What a request carries and how bearer tokens are fetched is in [`super::auth`]; which
//! [`RegistryError`] an unexpected answer becomes is in [`super::classify`].

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::token::TokenCache;
use super::auth::{Access, Auth, Credentials, bearer_challenge};
use super::call::{Call, CallBody, CallTimeout, Fetched};
use super::classify::is_transient_status;
use super::endpoint::endpoint_url;
use super::error::{Operation, RegistryError};
use super::retry::RetryPolicy;
use super::tls::{TrustConfig, find_rustls_error};
use super::{RegistryConfig, Timeouts};

/// Largest error or token body we read.
pub(crate) const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// A client for one registry host. Cheap to clone; clones share connections and tokens.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    host: String,
    endpoint: Url,
    http: reqwest::Client,
    trust: TrustConfig,
    credentials: Option<Credentials>,
    retry: RetryPolicy,
    timeouts: Timeouts,
    max_request_body: u64,
    tokens: TokenCache,
}

impl RegistryClient {
    /// A client for `config.host`. Fails when the endpoint or TLS configuration is unusable.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let endpoint = endpoint_url(&config.host, config.endpoint.as_deref())?;
        let tls = config.trust.client_config(&config.host)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(config.timeouts.connect)
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("imagebuild/", env!("CARGO_PKG_VERSION")))
            // reqwest drops Authorization when a redirect leaves the host (blob GETs may
            // redirect to storage), so credentials stay with the registry.
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| RegistryError::InvalidConfig {
                host: config.host.clone(),
                detail: format!("cannot create the HTTP client: {e}"),
            })?;
        if endpoint.scheme() == "http" && config.credentials.is_some() {
            tracing::debug!(registry = %config.host, %endpoint, "credentials will travel over plain HTTP");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                host: config.host,
                endpoint,
                http,
                trust: config.trust,
                credentials: config.credentials,
                retry: config.retry,
                timeouts: config.timeouts,
                max_request_body: config.max_request_body.max(1),
                tokens: TokenCache::default(),
            }),
        })
    }

    /// The registry host as in image references.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &Url {
        &self.inner.endpoint
    }

    /// Whether TLS verification is off for this client (show it in status and events).
    pub fn is_insecure(&self) -> bool {
        self.inner.trust.is_insecure()
    }

    /// Where the trusted CA certificates came from.
    pub fn trust_label(&self) -> &str {
        self.inner.trust.label()
    }

    /// Where the credentials came from, if any.
    pub fn credentials_source(&self) -> Option<&str> {
        self.inner.credentials.as_ref().map(|c| c.source.as_str())
    }

    /// Checks that the registry answers and accepts our credentials (`GET /v2/`).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let call = Call::new(
            Method::GET,
            self.url("/v2/"),
            "",
            Access::Pull,
            Operation::Ping,
        );
        let fetched = self.send_read(&call, SMALL_BODY_LIMIT).await?;
        if fetched.status.is_success() {
            Ok(())
        } else {
            Err(self.classify(&call, fetched.status, None, &fetched.body))
        }
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    pub(crate) fn timeouts(&self) -> &Timeouts {
        &self.inner.timeouts
    }

    pub(crate) fn max_request_body(&self) -> u64 {
        self.inner.max_request_body
    }

    /// The credentials configured for this host, if any.
    pub(crate) fn credentials(&self) -> Option<&Credentials> {
        self.inner.credentials.as_ref()
    }

    /// Bearer tokens fetched for this host, shared by clones.
    pub(crate) fn tokens(&self) -> &TokenCache {
        &self.inner.tokens
    }

    /// The HTTP client, for requests that are not [`Call`]s (token requests).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// An absolute URL on the endpoint for `path` (which starts with `/v2/`).
    pub(crate) fn url(&self, path: &str) -> Url {
        let mut url = self.inner.endpoint.clone();
        url.set_path(path);
        url
    }

    /// Resolves a `Location` header: Gitea sends paths, distribution absolute URLs.
    pub(crate) fn resolve_location(
        &self,
        headers: &HeaderMap,
        operation: Operation,
    ) -> Result<Url, RegistryError> {
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.invalid_response(operation, "no Location header"))?;
        self.inner.endpoint.join(location).map_err(|e| {
            self.invalid_response(operation, &format!("bad Location `{location}`: {e}"))
        })
    }

    pub(crate) fn invalid_response(&self, operation: Operation, detail: &str) -> RegistryError {
        RegistryError::InvalidResponse {
            host: self.inner.host.clone(),
            operation: operation.describe().to_owned(),
            detail: detail.to_owned(),
        }
    }

    /// Sends `call`, retrying transient failures. Returns any response that is not a 401 or a
    /// transient failure; the caller decides what its status means.
    pub(crate) async fn send(&self, call: &Call<'_>) -> Result<Response, RegistryError> {
        self.with_retries(|| self.send_once(call)).await
    }

    /// Sends `call` and reads its body (at most `limit` bytes), retrying transient failures,
    /// truncated bodies included.
    pub(crate) async fn send_read(
        &self,
        call: &Call<'_>,
        limit: usize,
    ) -> Result<Fetched, RegistryError> {
        self.with_retries(|| async move {
            let response = self.send_once(call).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = self.read_body(response, limit, call.operation).await?;
            Ok(Fetched {
                status,
                headers,
                body,
            })
        })
        .await
    }

    /// Runs `once` until it succeeds, fails permanently, or the retry policy gives up.
    ///
    /// `once` is a closure returning a future rather than an async closure: the futures of async
    /// closures cannot be shown to be `Send`, and the controller runs pushes on a multi-threaded
    /// runtime.
    pub(crate) async fn with_retries<T, F, Fut>(&self, mut once: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let policy = &self.inner.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let error = match once().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !self.should_retry(&error, attempt) {
                return Err(error);
            }
            let delay = policy.delay(attempt, error.retry_after());
            tracing::debug!(registry = %self.inner.host, attempt, ?delay, %error, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether attempt number `attempt`, which failed with `error`, may be followed by another.
    pub(crate) fn should_retry(&self, error: &RegistryError, attempt: u32) -> bool {
        let policy = &self.inner.retry;
        let limit = match error {
            RegistryError::Unreachable { .. } => policy.unreachable_attempts,
            e if e.is_transient() => policy.max_attempts,
            _ => 1,
        };
        attempt < limit && policy.accepts_retry_after(error.retry_after())
    }

    /// One request, plus one immediate repetition with a fresh token when the registry answers
    /// 401 with a Bearer challenge (and the body can be sent again).
    pub(crate) async fn send_once(&self, call: &Call<'_>) -> Result<Response, RegistryError> {
        // Refuse names the registry would refuse, with a message that suggests the fix.
        if !call.repository.is_empty() {
            crate::reference::validate_repository(call.repository)?;
        }
        let mut token_refreshed = false;
        let mut probed_anonymously = false;
        loop {
            let auth = if probed_anonymously && !token_refreshed {
                Auth::Anonymous
            } else {
                self.auth_for(call)
            };
            let used_token = matches!(auth, Auth::Bearer(_));
            let used_basic = matches!(auth, Auth::Basic(_));
            let request = self.build(call, auth)?;
            let response = self.execute(call, request).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                if used_token {
                    self.inner.tokens.forget(call.repository, call.access);
                }
                let challenge = bearer_challenge(response.headers());
                let replayable = call.body.replayable();
                match challenge {
                    Some(challenge) if !token_refreshed => {
                        token_refreshed = true;
                        self.fetch_token(&challenge, call).await?;
                        if replayable {
                            continue;
                        }
                    }
                    // Gitea refuses basic credentials on `/v2/` itself with a bare 401: ask
                    // without them to learn where tokens come from, as docker login does.
                    None if used_basic && replayable && !probed_anonymously => {
                        probed_anonymously = true;
                        continue;
                    }
                    _ => {}
                }
                return Err(self.error_from(call, response).await);
            }
            if is_transient_status(status) {
                return Err(self.error_from(call, response).await);
            }
            return Ok(response);
        }
    }

    pub(crate) async fn execute(
        &self,
        call: &Call<'_>,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let pending = request.send();
        let limit = self.limit_of(call.timeout);
        let result = match call.timeout {
            CallTimeout::Request | CallTimeout::Upload(_) => pending.await,
            // Streams without a total limit still get one for the response headers.
            CallTimeout::Stream => tokio::time::timeout(limit, pending)
                .await
                .map_err(|_| self.timeout(call.operation, limit))?,
        };
        result.map_err(|e| self.transport_error(e, call.operation, Some(limit)))
    }

    pub(crate) fn build(
        &self,
        call: &Call<'_>,
        auth: Auth<'_>,
    ) -> Result<reqwest::RequestBuilder, RegistryError> {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .headers(call.headers.clone());
        if call.timeout != CallTimeout::Stream {
            request = request.timeout(self.limit_of(call.timeout));
        }
        request = match auth {
            Auth::Anonymous => request,
            Auth::Basic(c) => request.basic_auth(&c.username, Some(&c.password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        let request = match &call.body {
            CallBody::Empty if call.method == Method::GET || call.method == Method::HEAD => request,
            // An explicit empty body gives `Content-Length: 0`, which some proxies require.
            CallBody::Empty => request.body(Bytes::new()),
            CallBody::Bytes(bytes) => request.body(bytes.clone()),
            CallBody::Stream(slot) => {
                let body = slot.lock().ok().and_then(|mut s| s.take()).ok_or_else(|| {
                    self.invalid_response(call.operation, "internal: streamed body sent twice")
                })?;
                request.body(body)
            }
        };
        Ok(request)
    }

    /// Reads a whole body of at most `limit` bytes.
    pub(crate) async fn read_body(
        &self,
        response: Response,
        limit: usize,
        operation: Operation,
    ) -> Result<Bytes, RegistryError> {
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(self.invalid_response(
                operation,
                &format!("the body is larger than the {limit} bytes allowed"),
            ));
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport_error(e, operation, None))?;
            if body.len() + chunk.len() > limit {
                return Err(self.invalid_response(
                    operation,
                    &format!("the body is larger than the {limit} bytes allowed"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    fn limit_of(&self, timeout: CallTimeout) -> Duration {
        match timeout {
            CallTimeout::Request | CallTimeout::Stream => self.inner.timeouts.request,
            CallTimeout::Upload(bytes) => self.inner.timeouts.for_upload(bytes),
        }
    }

    pub(crate) fn timeout(&self, operation: Operation, timeout: Duration) -> RegistryError {
        RegistryError::Timeout {
            host: self.inner.host.clone(),
            operation: operation.describe().to_owned(),
            timeout,
        }
    }

    /// Classifies a failure below HTTP: TLS, unreachable host, timeout, broken connection.
    pub(crate) fn transport_error(
        &self,
        error: reqwest::Error,
        operation: Operation,
        timeout: Option<Duration>,
    ) -> RegistryError {
        let host = self.inner.host.clone();
        tracing::trace!(?error, "transport error");
        if let Some(tls) = find_rustls_error(&error) {
            let server_name = self.inner.endpoint.host_str().unwrap_or_default();
            return self.inner.trust.classify(&host, server_name, tls);
        }
        if error.is_timeout() {
            return self.timeout(operation, timeout.unwrap_or(self.inner.timeouts.request));
        }
        let is_connect = error.is_connect();
        let detail = crate::failure::error_chain(&error.without_url());
        if is_connect {
            return RegistryError::Unreachable {
                host,
                endpoint: self.inner.endpoint.to_string(),
                detail,
            };
        }
        RegistryError::ConnectionFailed {
            host,
            operation: operation.describe().to_owned(),
            detail,
        }
    }
}
