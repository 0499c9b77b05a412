//! Fetching what the builder needs of a base image: its platform-specific manifests and configs,
//! for one platform or for several.

use super::client::RegistryClient;
use super::error::RegistryError;
use super::manifest::FetchedManifest;
use crate::oci::{self, Base, BaseImage, BaseIndex, Descriptor, Index, Manifest, Platform};
use crate::reference::ImageRef;

/// Which platforms of a base image a build stands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    /// `spec.platform` or nothing: one image (default linux/amd64 from an index); a base that
    /// is a single manifest gives that manifest.
    One(Option<Platform>),
    /// Neither field, on a base that may be an index: every platform it has.
    Every,
    /// `spec.platforms`: exactly these, each found in the base.
    These(Vec<Platform>),
}

/// Fetches what the build needs of the base `image`: one image for [`Platforms::One`] (or for
/// [`Platforms::Every`] on a single-manifest base), else each chosen child of its index.
/// Attestation manifests, `unknown/unknown` entries and nested indexes are never chosen.
pub async fn fetch_bases(
    client: &RegistryClient,
    image: &ImageRef,
    platforms: &Platforms,
) -> Result<Base, RegistryError> {
    let wanted = match platforms {
        Platforms::One(platform) => {
            return fetch_base(client, image, platform.as_ref())
                .await
                .map(Base::Image);
        }
        Platforms::Every => None,
        Platforms::These(list) => Some(list),
    };
    let top = client
        .get_manifest(&image.repository, &image.reference())
        .await?;
    let index = BaseIndex {
        digest: top.digest.clone(),
        media_type: top.media_type.clone(),
        name: image.to_string(),
    };
    if !top.is_index() {
        let single = image_of(client, image, top, None).await?;
        let Some(wanted) = wanted else {
            return Ok(Base::Image(single));
        };
        let own = platform_of_config(&single.config);
        let missing = wanted
            .iter()
            .find(|w| !own.as_ref().is_some_and(|p| matches(p, w)));
        if let Some(missing) = missing {
            return Err(RegistryError::NoMatchingPlatform {
                image: image.to_string(),
                wanted: missing.to_string(),
                available: own.iter().map(Platform::to_string).collect(),
                field: "platforms",
            });
        }
        let child = BaseImage {
            platform: own,
            ..single
        };
        return Ok(Base::Index {
            index,
            children: vec![child],
        });
    }
    let listed: Index = parse(image, &top, "image index")?;
    let eligible: Vec<&Descriptor> = listed.manifests.iter().filter(|d| is_runnable(d)).collect();
    let chosen: Vec<&Descriptor> = match wanted {
        None => eligible.clone(),
        Some(list) => list
            .iter()
            .map(|w| {
                eligible
                    .iter()
                    .copied()
                    .find(|d| d.platform.as_ref().is_some_and(|p| matches(p, w)))
                    .ok_or_else(|| RegistryError::NoMatchingPlatform {
                        image: image.to_string(),
                        wanted: w.to_string(),
                        available: platform_names(&eligible),
                        field: "platforms",
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if chosen.is_empty() {
        return Err(unsupported(
            image,
            "its index lists no image for a runnable platform (only attestations or unknown/unknown)",
        ));
    }
    let mut children = Vec::with_capacity(chosen.len());
    for descriptor in chosen {
        let fetched = client
            .get_manifest(&image.repository, descriptor.digest.as_str())
            .await?;
        if fetched.is_index() {
            return Err(unsupported(image, "its index points to another index"));
        }
        children.push(image_of(client, image, fetched, descriptor.platform.clone()).await?);
    }
    Ok(Base::Index { index, children })
}

/// What `imagebuild inspect` shows of a pushed image.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The digest the reference resolves to.
    pub digest: oci::Digest,
    pub media_type: String,
    /// Each image it holds: for an index every entry in order (attestations and other entries
    /// marked by `runnable: false`), for a single image the image itself with the platform its
    /// config names.
    pub images: Vec<InspectedImage>,
}

/// One image of an [`Inspected`] reference.
#[derive(Debug, Clone)]
pub struct InspectedImage {
    pub platform: Option<Platform>,
    pub digest: oci::Digest,
    /// False for attestations, `unknown/unknown` entries and nested indexes.
    pub runnable: bool,
}

/// Reads what `image` resolves to and the platforms it offers, without downloading layers.
pub async fn inspect(
    client: &RegistryClient,
    image: &ImageRef,
) -> Result<Inspected, RegistryError> {
    let top = client
        .get_manifest(&image.repository, &image.reference())
        .await?;
    let images = if top.is_index() {
        let listed: Index = parse(image, &top, "image index")?;
        listed
            .manifests
            .iter()
            .map(|d| InspectedImage {
                platform: d.platform.clone(),
                digest: d.digest.clone(),
                runnable: is_runnable(d),
            })
            .collect()
    } else {
        let digest = top.digest.clone();
        let base = image_of(client, image, top.clone(), None).await?;
        vec![InspectedImage {
            platform: platform_of_config(&base.config),
            digest,
            runnable: true,
        }]
    };
    Ok(Inspected {
        digest: top.digest,
        media_type: top.media_type,
        images,
    })
}

/// Where a base reference points now, next to the digest a build recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseState {
    /// It still gives what the build stood on; `top` is what the reference itself names now (an
    /// index, for a one-platform build from one), so the next check can stop at a HEAD.
    Unchanged { top: oci::Digest },
    /// It gives something else now: `now` is what a build would record.
    Moved { now: oci::Digest },
    /// The registry does not have it any more.
    Missing,
}

/// Whether base `image` still resolves to `recorded` for a build asking `platforms`, at the cost
/// of one HEAD. `known_top` is what an earlier check found the reference to name while it still
/// resolved to `recorded`. Only when the HEAD names something else is the manifest read (a GET,
/// no layers): to see whether a one-platform build's child of an index moved too, and so that a
/// registry whose HEAD digest differs from the bytes it serves never causes a rebuild per check.
pub async fn check_base(
    client: &RegistryClient,
    image: &ImageRef,
    platforms: &Platforms,
    recorded: &oci::Digest,
    known_top: Option<&oci::Digest>,
) -> Result<BaseState, RegistryError> {
    let Some(top) = client
        .head_manifest(&image.repository, &image.reference())
        .await?
    else {
        return Ok(BaseState::Missing);
    };
    if &top == recorded || known_top == Some(&top) {
        return Ok(BaseState::Unchanged { top });
    }
    let fetched = client
        .get_manifest(&image.repository, &image.reference())
        .await?;
    let chosen = match platforms {
        Platforms::One(platform) if fetched.is_index() => {
            let index: Index = parse(image, &fetched, "image index")?;
            let wanted = platform.clone().unwrap_or_else(Platform::linux_amd64);
            choose_platform(image, &index, &wanted)?.digest.clone()
        }
        _ => fetched.digest,
    };
    if &chosen == recorded {
        Ok(BaseState::Unchanged { top })
    } else {
        Ok(BaseState::Moved { now: chosen })
    }
}

/// An index entry a container can run: an image manifest with a real platform, not an
/// attestation.
fn is_runnable(descriptor: &Descriptor) -> bool {
    let image_manifest = [
        oci::MEDIA_TYPE_IMAGE_MANIFEST,
        oci::MEDIA_TYPE_DOCKER_MANIFEST,
    ]
    .contains(&descriptor.media_type.as_str());
    let attestation = descriptor
        .annotations
        .contains_key(oci::ANNOTATION_DOCKER_REFERENCE_TYPE);
    let real_platform = descriptor
        .platform
        .as_ref()
        .is_some_and(|p| p.os != "unknown" && p.architecture != "unknown");
    image_manifest && real_platform && !attestation
}

fn platform_names(descriptors: &[&Descriptor]) -> Vec<String> {
    descriptors
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(Platform::to_string)
        .collect()
}

/// `os`, `architecture` and `variant` of an image config.
fn platform_of_config(config: &serde_json::Value) -> Option<Platform> {
    let field = |name: &str| config.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    Some(Platform {
        os: field("os")?,
        architecture: field("architecture")?,
        variant: field("variant"),
    })
}

/// Whether `have` is what `wanted` asks for: a wanted platform without variant matches any
/// variant (`linux/arm64` matches `linux/arm64/v8`).
fn matches(have: &Platform, wanted: &Platform) -> bool {
    have.os == wanted.os
        && have.architecture == wanted.architecture
        && (wanted.variant.is_none() || have.variant == wanted.variant)
}

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
    image_of(client, image, fetched, None).await
}

/// The image of one fetched manifest, with its config read and verified.
async fn image_of(
    client: &RegistryClient,
    image: &ImageRef,
    fetched: FetchedManifest,
    platform: Option<Platform>,
) -> Result<BaseImage, RegistryError> {
    let manifest: Manifest = parse(image, &fetched, "image manifest")?;
    check_image_manifest(image, &fetched, &manifest)?;
    let config_bytes = client
        .get_blob_bytes(&image.repository, &manifest.config.digest, MAX_CONFIG_SIZE)
        .await?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| unsupported(image, &format!("its config is not JSON: {e}")))?;
    Ok(BaseImage {
        platform,
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
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| matches(p, wanted)))
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
            field: "platform",
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

    #[test]
    fn attestations_unknown_platforms_and_nested_indexes_are_never_chosen() {
        let mut listed = index();
        listed.manifests.push(
            serde_json::from_value(serde_json::json!({
                "mediaType": oci::MEDIA_TYPE_IMAGE_MANIFEST, "size": 1,
                "digest": format!("sha256:{}", "4".repeat(64)),
                "platform": {"os": "linux", "architecture": "amd64"},
                "annotations": {oci::ANNOTATION_DOCKER_REFERENCE_TYPE: "attestation-manifest"}
            }))
            .expect("descriptor"),
        );
        listed.manifests.push(
            serde_json::from_value(serde_json::json!({
                "mediaType": oci::MEDIA_TYPE_IMAGE_INDEX, "size": 1,
                "digest": format!("sha256:{}", "5".repeat(64)),
                "platform": {"os": "linux", "architecture": "s390x"}
            }))
            .expect("descriptor"),
        );
        let runnable: Vec<&Descriptor> =
            listed.manifests.iter().filter(|d| is_runnable(d)).collect();
        assert_eq!(platform_names(&runnable), ["linux/arm64/v8", "linux/amd64"]);
    }

    #[test]
    fn a_missing_platform_of_platforms_names_that_field() {
        let err = RegistryError::NoMatchingPlatform {
            image: "reg.example/o/base:1".into(),
            wanted: "linux/s390x".into(),
            available: vec!["linux/amd64".into()],
            field: "platforms",
        };
        assert!(
            err.to_string()
                .ends_with("it has: linux/amd64; set `platforms` to some of these"),
            "{err}"
        );
    }

    #[test]
    fn the_platform_of_a_single_manifest_base_is_read_from_its_config() {
        let config = serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"});
        let platform = platform_of_config(&config).expect("platform");
        assert_eq!(platform.to_string(), "linux/arm/v7");
        assert!(matches(&platform, &"linux/arm".parse().expect("platform")));
        assert!(!matches(
            &platform,
            &"linux/arm/v6".parse().expect("platform")
        ));
    }
}
