//! Registry authentication: credentials, `WWW-Authenticate` challenges and token scopes.
//!
//! Basic credentials are sent up front on every request to the registry they belong to (Gitea
//! accepts them everywhere, and since 1.22 advertises a token realm built from its ROOT_URL, which
//! a client on the in-cluster HTTP endpoint may not reach). A 401 with a Bearer challenge makes us
//! fetch a token for that scope and try once more; how tokens are fetched, where from, and how
//! long they are kept is in [`token`].

pub(crate) mod token;

use std::collections::BTreeMap;
use std::fmt;

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

use super::call::Call;
use super::client::RegistryClient;
use super::endpoint::same_origin;

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

/// What a request carries to say who we are.
pub(crate) enum Auth<'a> {
    Anonymous,
    Basic(&'a Credentials),
    Bearer(String),
}

impl RegistryClient {
    /// Which credentials go with `call`: none unless it goes to our own endpoint.
    pub(crate) fn auth_for(&self, call: &Call<'_>) -> Auth<'_> {
        if !same_origin(&call.url, self.endpoint()) {
            return Auth::Anonymous;
        }
        if let Some(token) = self.tokens().get(call.repository, call.access) {
            return Auth::Bearer(token);
        }
        match self.credentials() {
            Some(c) => Auth::Basic(c),
            None => Auth::Anonymous,
        }
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

/// The first Bearer challenge (with a realm) among a response's `WWW-Authenticate` headers.
pub(crate) fn bearer_challenge(headers: &HeaderMap) -> Option<Challenge> {
    Challenge::bearer(
        headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
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
}
