//! Bearer tokens: the token endpoint's answer, where to ask for a token (and whether our
//! credentials may go there), and the cache of tokens by repository and access.
//!
//! Kept apart from the credentials and challenges in [`super`] because tokens carry their own
//! policy: credentials go only to the registry we were configured for, and tokens are reused
//! until shortly before they expire.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

use super::{Access, Challenge, Credentials, scope};
use crate::call::{Call, Fetched};
use crate::classify::{ResponseContext, classify_response, is_transient_status};
use crate::client::{RegistryClient, SMALL_BODY_LIMIT};
use crate::error::{Operation, RegistryError};
use crate::retry::retry_after;

/// The body of a token endpoint's answer (`token` or the OAuth2 name `access_token`).
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long it may be used.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // Distribution's default is 60 s when unspecified; renew a little early.
        let lifetime = Duration::from_secs(self.expires_in.unwrap_or(60).max(10) - 5);
        Some((token, lifetime))
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenResponse(<redacted>)")
    }
}

/// Bearer tokens by scope, forgotten when they expire.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        write!(f, "TokenCache({count} tokens)")
    }
}

impl TokenCache {
    /// A live token for `scope`. A push token also serves pulls of the same repository.
    pub fn get(&self, repository: &str, access: Access) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let mut candidates = vec![scope(repository, access)];
        if access == Access::Pull {
            candidates.push(scope(repository, Access::Push));
        }
        candidates.iter().find_map(|key| {
            tokens
                .get(key)
                .filter(|(_, expires)| *expires > Instant::now())
                .map(|(token, _)| token.clone())
        })
    }

    pub fn put(&self, repository: &str, access: Access, token: String, lifetime: Duration) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                scope(repository, access),
                (token, Instant::now() + lifetime),
            );
        }
    }

    pub fn forget(&self, repository: &str, access: Access) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(&scope(repository, access));
        }
    }
}

/// Where to ask for a token, and whether our credentials may go there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenEndpoint {
    pub url: Url,
    pub with_credentials: bool,
}

/// Decides where to fetch a token. Credentials go only to the registry we were configured for:
/// a realm on the registry's host (or its endpoint) is asked at our endpoint, where the
/// credentials belong and which we know we can reach; a realm elsewhere is asked with
/// credentials at our own endpoint under the realm's path first (Gitea behind a proxy advertises
/// its external URL), and anonymously at the realm itself as the fallback (Docker Hub).
pub(crate) fn token_endpoints(
    realm: &str,
    host: &str,
    endpoint: &Url,
    have_credentials: bool,
) -> Vec<TokenEndpoint> {
    let Ok(realm_url) = Url::parse(realm).or_else(|_| endpoint.join(realm)) else {
        return Vec::new();
    };
    let on_our_endpoint = {
        let mut url = endpoint.clone();
        url.set_path(realm_url.path());
        url.set_query(realm_url.query());
        url
    };
    let ours = authority(&realm_url) == host || authority(&realm_url) == authority(endpoint);
    if ours {
        return vec![TokenEndpoint {
            url: on_our_endpoint,
            with_credentials: have_credentials,
        }];
    }
    let mut endpoints = Vec::new();
    if have_credentials {
        endpoints.push(TokenEndpoint {
            url: on_our_endpoint,
            with_credentials: true,
        });
    }
    endpoints.push(TokenEndpoint {
        url: realm_url,
        with_credentials: false,
    });
    endpoints
}

/// `host[:port]` of a URL, the port only when it is not the scheme's default.
pub(crate) fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

impl RegistryClient {
    /// Fetches and caches a token for `call`'s repository and access as `challenge` asks.
    pub(crate) async fn fetch_token(
        &self,
        challenge: &Challenge,
        call: &Call<'_>,
    ) -> Result<(), RegistryError> {
        let Some(realm) = challenge.param("realm") else {
            return Err(self.invalid_response(Operation::Token, "Bearer challenge without realm"));
        };
        let scope = challenge
            .param("scope")
            .map(str::to_owned)
            .unwrap_or_else(|| super::scope(call.repository, call.access));
        let endpoints = token_endpoints(
            realm,
            self.host(),
            self.endpoint(),
            self.credentials().is_some(),
        );
        for endpoint in endpoints {
            let mut url = endpoint.url.clone();
            {
                let mut query = url.query_pairs_mut();
                if let Some(service) = challenge.param("service") {
                    query.append_pair("service", service);
                }
                query.append_pair("scope", &scope);
            }
            let credentials = self.credentials().filter(|_| endpoint.with_credentials);
            let fetched = self.get_token(&url, credentials).await?;
            match fetched.status.as_u16() {
                200 => {
                    let parsed: TokenResponse =
                        serde_json::from_slice(&fetched.body).map_err(|e| {
                            self.invalid_response(
                                Operation::Token,
                                &format!("token is not JSON: {e}"),
                            )
                        })?;
                    let (token, lifetime) = parsed.into_token().ok_or_else(|| {
                        self.invalid_response(Operation::Token, "no token in the answer")
                    })?;
                    self.tokens()
                        .put(call.repository, call.access, token, lifetime);
                    return Ok(());
                }
                // No token service at this address: try the next candidate.
                404 | 405 => continue,
                status => {
                    let ctx = self.context(call, Operation::Token, credentials);
                    return Err(classify_response(&ctx, status, None, &fetched.body));
                }
            }
        }
        let ctx = self.context(call, Operation::Token, self.credentials());
        Err(classify_response(
            &ctx,
            401,
            None,
            format!("no usable token endpoint for realm {realm}").as_bytes(),
        ))
    }

    /// Fetches a push token for `repository` ahead of the requests that need it, when the
    /// registry offers tokens: with many requests to come, one credential check at the token
    /// service costs less than a basic-credential check on each (Gitea hashes the password on
    /// every basic request, about 30 ms of its CPU; it checks a token in about 5). The token
    /// service is found the way a 401 would show it (an anonymous `GET /v2/`) and asked under the
    /// same rules as after a 401. Best effort: when anything fails, requests carry basic
    /// credentials as before.
    pub async fn prefetch_push_token(&self, repository: &str) {
        if self.credentials().is_none() || self.tokens().get(repository, Access::Push).is_some() {
            return;
        }
        let probe = Call::new(
            reqwest::Method::GET,
            self.url("/v2/"),
            "",
            Access::Pull,
            Operation::Ping,
        );
        let request = match self.build(&probe, super::Auth::Anonymous) {
            Ok(request) => request,
            Err(_) => return,
        };
        let challenge = match self.execute(&probe, request).await {
            Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                super::bearer_challenge(response.headers())
            }
            _ => None,
        };
        let Some(challenge) = challenge else {
            return;
        };
        let call = Call::new(
            reqwest::Method::HEAD,
            self.url("/v2/"),
            repository,
            Access::Push,
            Operation::Token,
        );
        if let Err(error) = self.fetch_token(&challenge, &call).await {
            tracing::debug!(registry = %self.host(), %error, "no push token ahead of time; basic credentials it is");
        }
    }

    /// One token request (basic credentials only when given), retrying transient failures; the
    /// caller decides what any other status means.
    async fn get_token(
        &self,
        url: &Url,
        credentials: Option<&Credentials>,
    ) -> Result<Fetched, RegistryError> {
        let timeout = self.timeouts().request;
        self.with_retries(|| async move {
            let mut request = self.http().get(url.clone()).timeout(timeout);
            if let Some(c) = credentials {
                request = request.basic_auth(&c.username, Some(&c.password));
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.transport_error(e, Operation::Token, Some(timeout)))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = self
                .read_body(response, SMALL_BODY_LIMIT, Operation::Token)
                .await?;
            if is_transient_status(status) {
                let ctx = ResponseContext {
                    host: self.host(),
                    repository: "",
                    operation: Operation::Token,
                    reference: None,
                    user: None,
                    credentials_source: None,
                    body_size: None,
                };
                return Err(classify_response(
                    &ctx,
                    status.as_u16(),
                    retry_after(&headers),
                    &body,
                ));
            }
            Ok(Fetched {
                status,
                headers,
                body,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_on_the_registry_host_is_asked_at_our_endpoint_with_credentials() {
        let endpoint =
            Url::parse("http://my-gitea-http.gitea.svc.cluster.local:3000").expect("url");
        let got = token_endpoints(
            "https://gitea.cnoe.localtest.me:8443/v2/token",
            "gitea.cnoe.localtest.me:8443",
            &endpoint,
            true,
        );
        assert_eq!(
            got,
            vec![TokenEndpoint {
                url: Url::parse("http://my-gitea-http.gitea.svc.cluster.local:3000/v2/token")
                    .expect("url"),
                with_credentials: true
            }]
        );
    }

    #[test]
    fn foreign_realm_never_receives_credentials() {
        let endpoint = Url::parse("https://registry-1.docker.io").expect("url");
        let got = token_endpoints("https://auth.docker.io/token", "docker.io", &endpoint, true);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].url.as_str(), "https://registry-1.docker.io/token");
        assert!(got[0].with_credentials);
        assert_eq!(got[1].url.as_str(), "https://auth.docker.io/token");
        assert!(!got[1].with_credentials);
    }

    #[test]
    fn relative_realm_resolves_against_the_endpoint() {
        let endpoint = Url::parse("https://reg.example:5000").expect("url");
        let got = token_endpoints("/v2/token", "reg.example:5000", &endpoint, false);
        assert_eq!(got[0].url.as_str(), "https://reg.example:5000/v2/token");
        assert!(!got[0].with_credentials);
    }

    #[test]
    fn push_token_serves_pulls_but_not_the_reverse() {
        let cache = TokenCache::default();
        cache.put("o/app", Access::Push, "t".into(), Duration::from_secs(60));
        assert_eq!(cache.get("o/app", Access::Pull).as_deref(), Some("t"));
        let cache = TokenCache::default();
        cache.put("o/app", Access::Pull, "t".into(), Duration::from_secs(60));
        assert_eq!(cache.get("o/app", Access::Push), None);
    }

    #[test]
    fn expired_tokens_are_not_used() {
        let cache = TokenCache::default();
        cache.put("o/app", Access::Pull, "t".into(), Duration::ZERO);
        assert_eq!(cache.get("o/app", Access::Pull), None);
    }
}
