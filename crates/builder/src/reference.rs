//! Image references (`host[:port]/path[:tag][@digest]`) as users write them in `from`, `image`
//! and on the command line, validated per the distribution reference grammar with messages that
//! say how to fix them.

use std::fmt;

use crate::oci::Digest;

/// The registry of references that name no host, as Docker does (`alpine` is `docker.io/library/alpine`).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The Hub's older name, which Docker rewrites to [`DEFAULT_REGISTRY`] in references.
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";

/// Tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Longest repository name (`host/path`) registries accept.
const MAX_NAME_LEN: usize = 255;

/// Longest tag the grammar allows.
const MAX_TAG_LEN: usize = 128;

/// Why a string is not a valid image reference, repository or tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing was given.
    #[error("the image reference is empty: expected host[:port]/owner/name[:tag]")]
    Empty,
    /// Only a host was given.
    #[error(
        "`{reference}` has no repository path after the registry host: expected host[:port]/owner/name"
    )]
    MissingRepository { reference: String },
    /// The host or port part is malformed.
    #[error("`{host}` in `{reference}` is not a valid registry host[:port]")]
    InvalidHost { reference: String, host: String },
    /// The repository has upper-case letters; the lower-case form is suggested.
    #[error(
        "repository `{repository}` must be lower case (registries refuse upper-case names): use `{suggestion}`"
    )]
    UpperCase {
        repository: String,
        suggestion: String,
    },
    /// The repository path breaks the grammar.
    #[error(
        "repository `{repository}` is not valid: {reason} (components are lower-case letters and digits, \
         separated by `.`, `_`, `__` or dashes, joined by `/`)"
    )]
    InvalidRepository { repository: String, reason: String },
    /// Host and path together exceed 255 characters.
    #[error(
        "`{reference}` is longer than {MAX_NAME_LEN} characters without its tag; use a shorter repository name"
    )]
    NameTooLong { reference: String },
    /// The tag breaks the grammar.
    #[error(
        "tag `{tag}` is not valid: a tag is 1 to 128 letters, digits, `_`, `.` or `-`, and starts with a letter, digit or `_`"
    )]
    InvalidTag { tag: String },
    /// The part after `@` is not a sha256 digest.
    #[error(
        "`{digest}` in `{reference}` is not a digest: expected sha256: followed by 64 lower-case hex digits"
    )]
    InvalidDigest { reference: String, digest: String },
    /// A tag or digest where only a repository may be named.
    #[error(
        "`{reference}` names a tag or digest, but a repository without one is expected here (e.g. `{repository}`); list tags separately"
    )]
    TagNotAllowed {
        reference: String,
        repository: String,
    },
}

/// A parsed image reference: where an image lives and which version of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `gitea.cnoe.localtest.me:8443`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `giteaadmin/hello`.
    pub repository: String,
    /// Tag, if one was given.
    pub tag: Option<String>,
    /// Digest, if one was given (it wins over the tag when fetching).
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `host[:port]/path[:tag][@digest]`. A reference without a host means Docker Hub, as
    /// with `docker pull` (`alpine:3` is `docker.io/library/alpine:3`).
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_and_tag, digest) = split_digest(s)?;
        let (name, tag) = split_tag(name_and_tag);
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        let repo = RepositoryRef::parse_name(s, name)?;
        Ok(Self {
            registry: repo.registry,
            repository: repo.repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The repository without tag or digest, e.g. `gitea.example:8443/owner/app`.
    pub fn repository_ref(&self) -> RepositoryRef {
        RepositoryRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
        }
    }

    /// The same repository pinned to `digest` (tag dropped), e.g. for `status.imageRef`.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A repository without tag or digest, as `spec.image` names the destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepositoryRef {
    /// Registry host with optional port.
    pub registry: String,
    /// Repository path inside the registry.
    pub repository: String,
}

impl RepositoryRef {
    /// Parses `host[:port]/path`, refusing a tag or digest (tags are given separately).
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let image = ImageRef::parse(s)?;
        if image.tag.is_some() || image.digest.is_some() {
            return Err(ReferenceError::TagNotAllowed {
                reference: s.trim().to_owned(),
                repository: format!("{}/{}", image.registry, image.repository),
            });
        }
        Ok(image.repository_ref())
    }

    /// This repository at `tag`.
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef, ReferenceError> {
        validate_tag(tag)?;
        Ok(ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// Splits `name` (no tag, no digest) into host and path; `whole` is the input for messages.
    fn parse_name(whole: &str, name: &str) -> Result<Self, ReferenceError> {
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first.to_owned(), rest.to_owned()),
            _ if looks_like_host(name) => {
                return Err(ReferenceError::MissingRepository {
                    reference: whole.to_owned(),
                });
            }
            Some(_) => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
            None => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        validate_host(whole, &registry)?;
        // Docker's normalisation: the Hub's legacy name is `docker.io`, and its official images
        // live under `library/` (`docker.io/alpine` is `docker.io/library/alpine`).
        let registry = if registry.eq_ignore_ascii_case(LEGACY_DEFAULT_REGISTRY) {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        let path = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        validate_repository(&path)?;
        if registry.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong {
                reference: whole.to_owned(),
            });
        }
        Ok(Self {
            registry,
            repository: path,
        })
    }

    /// The first path component: the owner (user or organisation) on Gitea.
    pub fn owner(&self) -> &str {
        owner_of(&self.repository)
    }
}

impl fmt::Display for RepositoryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

impl std::str::FromStr for RepositoryRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The first component of a repository path (the Gitea owner).
pub fn owner_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

/// Checks a tag against the grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && tag.len() <= MAX_TAG_LEN {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

/// Checks a repository path (`owner/name`) against the distribution grammar.
pub fn validate_repository(path: &str) -> Result<(), ReferenceError> {
    let invalid = |reason: &str| ReferenceError::InvalidRepository {
        repository: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.is_empty() {
        return Err(invalid("it is empty"));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        let lower = path.to_ascii_lowercase();
        // Only suggest the lower-case form when that alone fixes the name.
        if validate_repository(&lower).is_ok() {
            return Err(ReferenceError::UpperCase {
                repository: path.to_owned(),
                suggestion: lower,
            });
        }
    }
    for component in path.split('/') {
        validate_path_component(component).map_err(|reason| invalid(&reason))?;
    }
    Ok(())
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn validate_path_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("it has an empty path component (`//`, or a leading or trailing `/`)".into());
    }
    if let Some(bad) = component
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("`{component}` contains `{bad}`"));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let starts_and_ends_alnum = component.starts_with(alnum) && component.ends_with(alnum);
    if !starts_and_ends_alnum {
        return Err(format!(
            "`{component}` must start and end with a letter or digit"
        ));
    }
    let bad_separator = component
        .split(alnum)
        .filter(|sep| !sep.is_empty())
        .find(|sep| {
            !(*sep == "." || *sep == "_" || *sep == "__" || sep.bytes().all(|b| b == b'-'))
        });
    match bad_separator {
        Some(sep) => Err(format!("`{component}` has the separator `{sep}`")),
        None => Ok(()),
    }
}

/// Docker's rule: the first component is a host if it has a `.` or `:`, or is `localhost`.
fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn validate_host(whole: &str, host: &str) -> Result<(), ReferenceError> {
    let invalid = || ReferenceError::InvalidHost {
        reference: whole.to_owned(),
        host: host.to_owned(),
    };
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [IPv6]:port
        let (addr, after) = rest.split_once(']').ok_or_else(invalid)?;
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| invalid())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(invalid)?),
        };
        (None, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(invalid());
    }
    if let Some(name) = name {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !name.split('.').all(label_ok) {
            return Err(invalid());
        }
    }
    Ok(())
}

fn split_digest(s: &str) -> Result<(&str, Option<Digest>), ReferenceError> {
    match s.split_once('@') {
        None => Ok((s, None)),
        Some((name, digest)) => {
            let parsed = digest
                .parse::<Digest>()
                .map_err(|_| ReferenceError::InvalidDigest {
                    reference: s.to_owned(),
                    digest: digest.to_owned(),
                })?;
            Ok((name, Some(parsed)))
        }
    }
}

/// The tag is after the last `:` that follows the last `/` (a `:` before it is a port).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_slash..].rfind(':') {
        Some(i) => (&s[..last_slash + i], Some(&s[last_slash + i + 1..])),
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parsed(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageRef::parse(s).expect(s);
        (
            r.registry,
            r.repository,
            r.tag,
            r.digest.map(|d| d.to_string()),
        )
    }

    #[test]
    fn references_split_into_registry_repository_tag_and_digest() {
        // input, registry, repository, tag, digest
        type Row<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let table: &[Row] = &[
            (
                "gitea.cnoe.localtest.me:8443/giteaadmin/hello:v1",
                "gitea.cnoe.localtest.me:8443",
                "giteaadmin/hello",
                Some("v1"),
                None,
            ),
            (
                "gitea.cnoe.localtest.me:8443/giteaadmin/hello",
                "gitea.cnoe.localtest.me:8443",
                "giteaadmin/hello",
                None,
                None,
            ),
            (
                "localhost:5000/a/b/c:1.0",
                "localhost:5000",
                "a/b/c",
                Some("1.0"),
                None,
            ),
            ("localhost/app", "localhost", "app", None, None),
            (
                "127.0.0.1:5000/app:x",
                "127.0.0.1:5000",
                "app",
                Some("x"),
                None,
            ),
            ("[::1]:5000/app", "[::1]:5000", "app", None, None),
            ("alpine", "docker.io", "library/alpine", None, None),
            (
                "alpine:3.20",
                "docker.io",
                "library/alpine",
                Some("3.20"),
                None,
            ),
            (
                "bitnami/nginx:1",
                "docker.io",
                "bitnami/nginx",
                Some("1"),
                None,
            ),
            (
                "docker.io/alpine:3",
                "docker.io",
                "library/alpine",
                Some("3"),
                None,
            ),
            (
                "index.docker.io/library/nginx:1.27",
                "docker.io",
                "library/nginx",
                Some("1.27"),
                None,
            ),
            (
                "reg.example/my_app/web-ui__x",
                "reg.example",
                "my_app/web-ui__x",
                None,
                None,
            ),
        ];
        for (input, registry, repository, tag, digest) in table {
            assert_eq!(
                parsed(input),
                (
                    registry.to_string(),
                    repository.to_string(),
                    tag.map(str::to_owned),
                    digest.map(str::to_owned)
                ),
                "{input}"
            );
        }
    }

    #[test]
    fn a_digest_may_follow_a_tag() {
        let r = ImageRef::parse(&format!("reg.example:5000/o/app:v1@{DIGEST}")).expect("valid");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(DIGEST));
        assert_eq!(r.reference(), DIGEST);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "gitea.cnoe.localtest.me:8443/giteaadmin/hello:v1".to_owned(),
            format!("reg.example/o/app@{DIGEST}"),
            format!("reg.example/o/app:t@{DIGEST}"),
        ] {
            assert_eq!(ImageRef::parse(&s).expect("valid").to_string(), s);
        }
    }

    #[test]
    fn reference_defaults_to_latest() {
        let r = ImageRef::parse("reg.example/o/app").expect("valid");
        assert_eq!(r.reference(), "latest");
    }

    #[test]
    fn upper_case_repository_suggests_the_lower_case_name() {
        let err = ImageRef::parse("gitea.cnoe.localtest.me:8443/giteaAdmin/Hello").unwrap_err();
        assert_eq!(
            err,
            ReferenceError::UpperCase {
                repository: "giteaAdmin/Hello".into(),
                suggestion: "giteaadmin/hello".into()
            }
        );
        assert!(err.to_string().contains("use `giteaadmin/hello`"), "{err}");
    }

    #[test]
    fn upper_case_host_is_allowed() {
        assert!(ImageRef::parse("Registry.Example:5000/o/app").is_ok());
    }

    #[test]
    fn empty_reference_is_refused() {
        assert_eq!(ImageRef::parse("  ").unwrap_err(), ReferenceError::Empty);
    }

    #[test]
    fn host_without_repository_is_refused() {
        let err = ImageRef::parse("reg.example:5000").unwrap_err();
        assert!(
            matches!(err, ReferenceError::MissingRepository { .. }),
            "{err:?}"
        );
        let err = ImageRef::parse("reg.example:5000/").unwrap_err();
        assert!(
            matches!(err, ReferenceError::InvalidRepository { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn bad_tags_are_refused() {
        for bad in [
            "reg.example/o/app:",
            "reg.example/o/app:-x",
            "reg.example/o/app:a+b",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(err, ReferenceError::InvalidTag { .. }),
                "{bad}: {err:?}"
            );
        }
        let long = format!("reg.example/o/app:{}", "a".repeat(129));
        assert!(matches!(
            ImageRef::parse(&long).unwrap_err(),
            ReferenceError::InvalidTag { .. }
        ));
    }

    #[test]
    fn bad_repository_components_are_refused() {
        for bad in [
            "reg.example/o//app",
            "reg.example/o/app-",
            "reg.example/o/_app",
            "reg.example/o/a...b",
            "reg.example/o/a___b",
            "reg.example/o/a b",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(err, ReferenceError::InvalidRepository { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn bad_hosts_and_ports_are_refused() {
        for bad in [
            "reg.example:port/o/app",
            "reg..example/o/app",
            "-reg.example/o/app",
            "[::1/app",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(err, ReferenceError::InvalidHost { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn bad_digest_is_refused() {
        let err = ImageRef::parse("reg.example/o/app@sha256:abc").unwrap_err();
        assert!(
            matches!(err, ReferenceError::InvalidDigest { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn overlong_names_are_refused() {
        let long = format!("reg.example/{}", "a".repeat(250));
        assert!(matches!(
            ImageRef::parse(&long).unwrap_err(),
            ReferenceError::NameTooLong { .. }
        ));
    }

    #[test]
    fn repository_form_refuses_a_tag_and_names_the_repository() {
        let err = RepositoryRef::parse("reg.example/o/app:v1").unwrap_err();
        assert!(matches!(err, ReferenceError::TagNotAllowed { .. }));
        assert!(err.to_string().contains("`reg.example/o/app`"), "{err}");
        let repo = RepositoryRef::parse("reg.example/o/app").expect("valid");
        assert_eq!(repo.to_string(), "reg.example/o/app");
        assert_eq!(repo.owner(), "o");
    }

    #[test]
    fn tag_validator_accepts_the_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b"] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }
}
