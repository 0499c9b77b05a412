//! Manifests and tags: fetch (digest-verified), put (digest cross-checked), list, delete, re-tag.

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, LINK};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::auth::Access;
use super::call::Call;
use super::client::RegistryClient;
use super::error::{Operation, RegistryError};
use crate::oci::{self, Digest};
use crate::reference::validate_tag;

/// Registries refuse larger manifests (Gitea: 10 MiB); so do we, when reading.
pub(crate) const MAX_MANIFEST_SIZE: usize = 10 * 1024 * 1024;

/// Every manifest kind we can read.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// A manifest exactly as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes: their digest is the manifest's identity.
    pub bytes: Bytes,
    /// From `Content-Type`, else the manifest's own `mediaType`.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

impl FetchedManifest {
    /// Whether this is an index / manifest list rather than a single image.
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            oci::MEDIA_TYPE_IMAGE_INDEX | oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST
        )
    }
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct MediaTypeOnly {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl RegistryClient {
    /// Fetches a manifest by tag or digest. Fetched by digest, the bytes are verified against it.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let call =
            self.manifest_call(Method::GET, repository, reference, Operation::GetManifest)?;
        let fetched = self.send_read(&call, MAX_MANIFEST_SIZE).await?;
        if !fetched.status.is_success() {
            return Err(self.classify(&call, fetched.status, None, &fetched.body));
        }
        let digest = Digest::of(&fetched.body);
        if let Ok(expected) = reference.parse::<Digest>()
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                host: self.host().to_owned(),
                what: format!("manifest of `{repository}`"),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let media_type = media_type_of(&fetched.headers, &fetched.body);
        Ok(FetchedManifest {
            bytes: fetched.body,
            media_type,
            digest,
        })
    }

    /// The digest a tag points to, or `None` when the tag does not exist.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let call =
            self.manifest_call(Method::HEAD, repository, reference, Operation::HeadManifest)?;
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match content_digest(response.headers()) {
                Some(digest) => Ok(Some(digest)),
                // No digest header (rare): fall back to reading the manifest.
                None => Ok(Some(self.get_manifest(repository, reference).await?.digest)),
            },
            _ => Err(self.explain_head(&call, response).await),
        }
    }

    /// Stores `bytes` as a manifest under `reference` (a tag, or its digest) and returns its
    /// digest, after checking that the registry computed the same one from the bytes we sent.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::ManifestRejected {
                host: self.host().to_owned(),
                repository: repository.to_owned(),
                detail: format!(
                    "it has {} bytes; registries accept at most {MAX_MANIFEST_SIZE} (10 MiB)",
                    bytes.len()
                ),
            });
        }
        let ours = Digest::of(&bytes);
        let content_type =
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::ManifestRejected {
                host: self.host().to_owned(),
                repository: repository.to_owned(),
                detail: format!("`{media_type}` is not a valid media type"),
            })?;
        let call = self
            .manifest_call(Method::PUT, repository, reference, Operation::PutManifest)?
            .header(CONTENT_TYPE, content_type)
            .bytes(bytes);
        let response = self.send(&call).await?;
        if !response.status().is_success() {
            return Err(self.error_from(&call, response).await);
        }
        match content_digest(response.headers()) {
            Some(theirs) if theirs != ours => Err(RegistryError::DigestMismatch {
                host: self.host().to_owned(),
                what: format!("manifest pushed to `{repository}:{reference}`"),
                expected: ours.to_string(),
                actual: theirs.to_string(),
            }),
            _ => Ok(ours),
        }
    }

    /// All tags of `repository`, following `Link` pagination.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        let mut tags = Vec::new();
        let mut next = Some(self.url(&format!("/v2/{repository}/tags/list")));
        while let Some(url) = next.take() {
            let call = Call::new(
                Method::GET,
                url,
                repository,
                Access::Pull,
                Operation::ListTags,
            );
            let fetched = self.send_read(&call, MAX_MANIFEST_SIZE).await?;
            if !fetched.status.is_success() {
                return Err(self.classify(&call, fetched.status, None, &fetched.body));
            }
            let page: TagList = serde_json::from_slice(&fetched.body).map_err(|e| {
                self.invalid_response(Operation::ListTags, &format!("tag list is not JSON: {e}"))
            })?;
            tags.extend(page.tags.unwrap_or_default());
            next = self.next_page(&fetched.headers);
        }
        Ok(tags)
    }

    /// Removes `tag`. Gitea deletes by tag; the distribution registry only by digest, which
    /// removes every tag of that manifest. A tag that is already gone is not an error.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<(), RegistryError> {
        validate_tag(tag)?;
        match self.delete_manifest(repository, tag).await {
            Ok(()) => Ok(()),
            Err(RegistryError::ImageNotFound { .. }) => Ok(()),
            Err(by_tag) if refused_deletion_by_tag(&by_tag) => {
                let Some(digest) = self.head_manifest(repository, tag).await? else {
                    return Ok(());
                };
                match self.delete_manifest(repository, digest.as_str()).await {
                    Ok(()) | Err(RegistryError::ImageNotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Adds `new_tag` to the image at `existing_reference` (tag or digest) by putting the same
    /// manifest bytes under the new tag: no blob moves. Returns the manifest digest.
    pub async fn tag(
        &self,
        repository: &str,
        existing_reference: &str,
        new_tag: &str,
    ) -> Result<Digest, RegistryError> {
        validate_tag(new_tag)?;
        let manifest = self.get_manifest(repository, existing_reference).await?;
        self.put_manifest(repository, new_tag, manifest.bytes, &manifest.media_type)
            .await
    }

    /// Deletes the manifest at `reference`: a digest (every registry), or a tag where the
    /// registry deletes by tag (Gitea). [`Self::delete_tag`] works on both kinds.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(), RegistryError> {
        let call = self.manifest_call(
            Method::DELETE,
            repository,
            reference,
            Operation::DeleteManifest,
        )?;
        let response = self.send(&call).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.error_from(&call, response).await)
        }
    }

    fn manifest_call<'a>(
        &self,
        method: Method,
        repository: &'a str,
        reference: &str,
        operation: Operation,
    ) -> Result<Call<'a>, RegistryError> {
        if reference.parse::<Digest>().is_err() {
            validate_tag(reference)?;
        }
        let access = match method {
            Method::GET | Method::HEAD => Access::Pull,
            Method::DELETE => Access::Delete,
            _ => Access::Push,
        };
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let mut call = Call::new(method, url, repository, access, operation).reference(reference);
        if matches!(operation, Operation::GetManifest | Operation::HeadManifest) {
            call = call.header(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        }
        Ok(call)
    }

    /// The `rel="next"` target of a `Link` header, resolved against the endpoint.
    fn next_page(&self, headers: &HeaderMap) -> Option<Url> {
        let link = headers.get(LINK)?.to_str().ok()?;
        let target = next_link(link)?;
        self.endpoint().join(target).ok()
    }
}

/// `</v2/x/tags/list?n=100&last=b>; rel="next"` → `/v2/x/tags/list?n=100&last=b`.
fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().trim_matches(' ') == "rel=\"next\"" || p.trim() == "rel=next");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then_some(target)
    })
}

/// Distribution answers a DELETE by tag with 400/405 (`UNSUPPORTED`, `DIGEST_INVALID`).
fn refused_deletion_by_tag(error: &RegistryError) -> bool {
    matches!(
        error,
        RegistryError::UnexpectedResponse {
            status: 400 | 405,
            ..
        } | RegistryError::DigestMismatch { .. }
    )
}

fn content_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get(DOCKER_CONTENT_DIGEST)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The manifest's media type: the `Content-Type` header when it names a manifest kind, else the
/// body's `mediaType`, else guessed from its shape.
fn media_type_of(headers: &HeaderMap, body: &[u8]) -> String {
    let header = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .filter(|v| v.starts_with("application/vnd."));
    if let Some(header) = header {
        return header;
    }
    let parsed: Option<MediaTypeOnly> = serde_json::from_slice(body).ok();
    match parsed {
        Some(MediaTypeOnly {
            media_type: Some(t),
            ..
        }) => t,
        Some(MediaTypeOnly {
            manifests: Some(_), ..
        }) => oci::MEDIA_TYPE_IMAGE_INDEX.to_owned(),
        _ => oci::MEDIA_TYPE_IMAGE_MANIFEST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_others() {
        assert_eq!(
            next_link(r#"</v2/o/a/tags/list?n=2&last=b>; rel="next""#),
            Some("/v2/o/a/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next>; rel="next""#),
            Some("https://x/next")
        );
        assert_eq!(next_link(r#"<https://x/prev>; rel="prev""#), None);
    }

    #[test]
    fn media_type_prefers_the_header_then_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json; charset=utf-8"),
        );
        assert_eq!(media_type_of(&headers, b"{}"), oci::MEDIA_TYPE_IMAGE_INDEX);
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            media_type_of(&HeaderMap::new(), body),
            oci::MEDIA_TYPE_DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(&HeaderMap::new(), br#"{"manifests":[]}"#),
            oci::MEDIA_TYPE_IMAGE_INDEX
        );
    }
}
