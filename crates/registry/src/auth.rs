//! Registry authentication: credentials, `WWW-Authenticate` challenges and bearer tokens.
//!
//! Basic credentials are sent up front on every request to the registry they belong to (Gitea
//! accepts them everywhere, and since 1.22 advertises a token realm built from its ROOT_URL, which
//! a client on the in-cluster HTTP endpoint may not reach). A 401 with a Bearer challenge makes us
//! fetch a token for that scope and try once more.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

/// A username and password (or token) for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (Gitea: the user, not the lower-case owner of image paths).
    pub username: String,
    /// Password or access token; never shown in messages or Debug output.
    pub password: String,
    /// Where they came from, for messages, e.g. `Secret gitea/gitea-credential` or `--username`.
    pub source: String,
}

impl Credentials {
    /// Credentials labelled with where they came from.
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            source: source.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// One challenge of a `WWW-Authenticate` header, e.g.
/// `Bearer realm="https://h/v2/token",service="container_registry",scope="*"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lower-cased scheme: `bearer`, `basic`.
    pub scheme: String,
    /// Parameters with lower-cased names.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// The first Bearer challenge with a realm in any of the headers' values.
    pub fn bearer<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
        values
            .into_iter()
            .flat_map(parse_challenges)
            .find(|c| c.scheme == "bearer" && c.params.contains_key("realm"))
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235: challenges separated by commas, each a scheme
/// followed by `name=value` or `name="quoted value"` parameters).
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut challenges: Vec<Challenge> = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        let after = rest[token_end..].trim_start_matches([' ', '\t']);
        if token.is_empty() {
            break;
        }
        if let Some(value_part) = after.strip_prefix('=') {
            let (value, remaining) = parse_param_value(value_part.trim_start());
            if let Some(current) = challenges.last_mut() {
                current.params.insert(token.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else {
            challenges.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
            rest = after;
        }
    }
    challenges
}

/// A quoted string (with `\` escapes) or a token; returns the value and what follows it.
fn parse_param_value(s: &str) -> (String, &str) {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = s.find(',').unwrap_or(s.len());
        (s[..end].trim().to_owned(), &s[end..])
    }
}

/// What a request needs the registry to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Access {
    Pull,
    Push,
    Delete,
}

/// The token scope for an action on a repository, as the distribution token spec names it.
pub(crate) fn scope(repository: &str, access: Access) -> String {
    let actions = match access {
        Access::Pull => "pull",
        Access::Push => "pull,push",
        Access::Delete => "delete",
    };
    format!("repository:{repository}:{actions}")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitea_bearer_challenge_is_parsed() {
        let c = Challenge::bearer([
            r#"Bearer realm="https://gitea.cnoe.localtest.me:8443/v2/token",service="container_registry",scope="*""#,
        ])
        .expect("bearer");
        assert_eq!(
            c.param("realm"),
            Some("https://gitea.cnoe.localtest.me:8443/v2/token")
        );
        assert_eq!(c.param("service"), Some("container_registry"));
        assert_eq!(c.param("scope"), Some("*"));
    }

    #[test]
    fn docker_hub_challenge_with_commas_in_scope_is_parsed() {
        let c = Challenge::bearer([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        ])
        .expect("bearer");
        assert_eq!(
            c.param("scope"),
            Some("repository:library/alpine:pull,push")
        );
    }

    #[test]
    fn several_challenges_in_one_header_are_separated() {
        let all = parse_challenges(
            r#"Basic realm="Gitea Package API", Bearer realm="/v2/token",service=x"#,
        );
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].scheme, "basic");
        assert_eq!(all[0].params["realm"], "Gitea Package API");
        assert_eq!(all[1].scheme, "bearer");
        assert_eq!(all[1].params["service"], "x");
    }

    #[test]
    fn escaped_quotes_and_unquoted_values_are_read() {
        let all = parse_challenges(r#"bearer Realm="a\"b", error=invalid_token"#);
        assert_eq!(all[0].params["realm"], "a\"b");
        assert_eq!(all[0].params["error"], "invalid_token");
    }

    #[test]
    fn basic_only_challenge_has_no_bearer() {
        assert!(Challenge::bearer([r#"Basic realm="registry""#]).is_none());
    }

    #[test]
    fn credentials_debug_never_shows_the_password() {
        let c = Credentials::new("giteaAdmin", "s3cr:t@pw", "Secret gitea/gitea-credential");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr:t@pw"), "{shown}");
        assert!(shown.contains("giteaAdmin"));
    }

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
