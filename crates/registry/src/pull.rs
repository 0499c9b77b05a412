//! Fetching what the builder needs of a base image: its platform-specific manifest and config.

use super::client::RegistryClient;
use super::error::RegistryError;
use super::manifest::FetchedManifest;
use crate::oci::{self, BaseImage, Index, Manifest, Platform};
use crate::reference::ImageRef;

/// Largest image config we accept (real ones are a few KiB).
const MAX_CONFIG_SIZE: u64 = 16 * 1024 * 1024;

/// Fetches the base image `image` for `platform` (default linux/amd64): resolves an index to the
/// matching manifest, then reads and verifies the config. `client` must be for `image.registry`.
pub async fn fetch_base(
    client: &RegistryClient,
    image: &ImageRef,
    platform: Option<&Platform>,
) -> Result<BaseImage, RegistryError> {
    let wanted = platform.cloned().unwrap_or_else(Platform::linux_amd64);
    let top = client
        .get_manifest(&image.repository, &image.reference())
        .await?;
    let fetched = if top.is_index() {
        let index: Index = parse(image, &top, "image index")?;
        let chosen = choose_platform(image, &index, &wanted)?;
        let manifest = client
            .get_manifest(&image.repository, chosen.digest.as_str())
            .await?;
        if manifest.is_index() {
            return Err(unsupported(image, "its index points to another index"));
        }
        manifest
    } else {
        top
    };
    let manifest: Manifest = parse(image, &fetched, "image manifest")?;
    check_image_manifest(image, &fetched, &manifest)?;
    let config_bytes = client
        .get_blob_bytes(&image.repository, &manifest.config.digest, MAX_CONFIG_SIZE)
        .await?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| unsupported(image, &format!("its config is not JSON: {e}")))?;
    Ok(BaseImage {
        repository: image.repository_ref().to_string(),
        registry: image.registry.clone(),
        manifest_digest: fetched.digest,
        manifest,
        config,
    })
}

/// The index entry for `wanted`. A wanted platform without variant matches any variant (as
/// `linux/arm64` matches `linux/arm64/v8`); entries without a platform are attestations etc.
fn choose_platform<'a>(
    image: &ImageRef,
    index: &'a Index,
    wanted: &Platform,
) -> Result<&'a oci::Descriptor, RegistryError> {
    let matches = |p: &Platform| {
        p.os == wanted.os
            && p.architecture == wanted.architecture
            && (wanted.variant.is_none() || p.variant == wanted.variant)
    };
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(matches))
        .ok_or_else(|| RegistryError::NoMatchingPlatform {
            image: image.to_string(),
            wanted: wanted.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(Platform::to_string)
                .collect(),
        })
}

fn check_image_manifest(
    image: &ImageRef,
    fetched: &FetchedManifest,
    manifest: &Manifest,
) -> Result<(), RegistryError> {
    let known = [
        oci::MEDIA_TYPE_IMAGE_MANIFEST,
        oci::MEDIA_TYPE_DOCKER_MANIFEST,
    ];
    if !known.contains(&fetched.media_type.as_str()) {
        return Err(unsupported(
            image,
            &format!(
                "its manifest has media type `{}`, not an OCI or Docker image manifest",
                fetched.media_type
            ),
        ));
    }
    if manifest.schema_version != 2 {
        return Err(unsupported(
            image,
            &format!(
                "manifest schema version {} is not supported",
                manifest.schema_version
            ),
        ));
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(
    image: &ImageRef,
    fetched: &FetchedManifest,
    what: &str,
) -> Result<T, RegistryError> {
    serde_json::from_slice(&fetched.bytes)
        .map_err(|e| unsupported(image, &format!("its {what} cannot be read: {e}")))
}

fn unsupported(image: &ImageRef, detail: &str) -> RegistryError {
    RegistryError::UnsupportedImage {
        image: image.to_string(),
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": oci::MEDIA_TYPE_IMAGE_MANIFEST, "size": 1,
                 "digest": format!("sha256:{}", "1".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": oci::MEDIA_TYPE_IMAGE_MANIFEST, "size": 1,
                 "digest": format!("sha256:{}", "2".repeat(64)),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": oci::MEDIA_TYPE_IMAGE_MANIFEST, "size": 1,
                 "digest": format!("sha256:{}", "3".repeat(64)),
                 "platform": {"os": "unknown", "architecture": "unknown"}}
            ]
        }))
        .expect("index")
    }

    fn image() -> ImageRef {
        ImageRef::parse("reg.example/o/base:1").expect("ref")
    }

    #[test]
    fn platform_is_chosen_by_os_and_architecture() {
        let index = index();
        let chosen = choose_platform(&image(), &index, &Platform::linux_amd64()).expect("amd64");
        assert!(chosen.digest.as_str().ends_with(&"2".repeat(64)));
    }

    #[test]
    fn wanted_platform_without_variant_matches_any_variant() {
        let index = index();
        let arm: Platform = "linux/arm64".parse().expect("platform");
        let chosen = choose_platform(&image(), &index, &arm).expect("arm64");
        assert!(chosen.digest.as_str().ends_with(&"1".repeat(64)));
    }

    #[test]
    fn missing_platform_lists_what_exists() {
        let index = index();
        let s390x: Platform = "linux/s390x".parse().expect("platform");
        let err = choose_platform(&image(), &index, &s390x).unwrap_err();
        assert_eq!(err.reason(), "NoMatchingPlatform");
        assert_eq!(
            err.to_string(),
            "`reg.example/o/base:1` has no image for platform linux/s390x; it has: \
             linux/arm64/v8, linux/amd64; set `platform` to one of these"
        );
    }
}
