//! The OCI vocabulary shared by the builder, the image layout and the registry client:
//! digests, descriptors, manifests, indexes, and the hand-over types between them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub const MEDIA_TYPE_IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Annotation that names a tag in an OCI image layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Index annotation: the digest of the base image the children were built on.
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// Index annotation: the base image's reference as the spec names it.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
/// Index entry annotation BuildKit puts on attestation manifests (with `unknown/unknown`).
pub const ANNOTATION_DOCKER_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// A content digest, always `sha256:<64 lower-case hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a sha256 digest (expected sha256: followed by 64 lower-case hex digits)")]
pub struct InvalidDigest(pub String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    /// Wraps a raw 32-byte SHA-256 output.
    pub fn from_sha256(raw: &[u8]) -> Self {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in raw {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }

    /// The hex part, as used in `blobs/sha256/<hex>`.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 12 hex digits, for people.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| InvalidDigest(s.to_owned()))?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidDigest(s.to_owned()))
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = InvalidDigest;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An incremental SHA-256 that yields a [`Digest`].
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.0.finish().as_ref())
    }
}

/// OS and architecture of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Self {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a platform: expected os/arch or os/arch/variant, e.g. linux/amd64")]
pub struct InvalidPlatform(pub String);

impl FromStr for Platform {
    type Err = InvalidPlatform;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(InvalidPlatform(s.to_owned()));
        }
        match parts.as_slice() {
            [os, arch] => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*variant).into()),
            }),
            _ => Err(InvalidPlatform(s.to_owned())),
        }
    }
}

/// A content descriptor (OCI image spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Descriptor {
    /// The descriptor of `bytes` as a blob of `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            platform: None,
            annotations: std::collections::BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI, or Docker schema 2 which has the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// An image index (OCI) or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A base image as fetched from a registry: what the builder needs to stack a layer on it.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// The platform its index entry names; `None` for a base that is a single manifest.
    pub platform: Option<Platform>,
    /// Where it came from, e.g. `gitea.example:8443/owner/base` (no tag); blobs are mounted from here.
    pub repository: String,
    /// Registry host (with port) of `repository`.
    pub registry: String,
    /// Digest of the platform-specific manifest.
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    /// The config exactly as served, parsed with field order preserved.
    pub config: serde_json::Value,
}

/// The base image's top-level manifest when the build makes an index: what the index's base
/// annotations name.
#[derive(Debug, Clone)]
pub struct BaseIndex {
    /// Digest of what `from` resolves to (an index, or a single manifest).
    pub digest: Digest,
    pub media_type: String,
    /// `from` as written.
    pub name: String,
}

/// What a build stands on.
// One value per build, moved a few times: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Base {
    /// One image (a single-manifest base, or one platform chosen from an index).
    Image(BaseImage),
    /// Several platforms of the base, in order, each with its platform set.
    Index {
        index: BaseIndex,
        children: Vec<BaseImage>,
    },
}

/// Where the bytes of one blob of a built image can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// A file on local disk holding exactly the blob.
    File(PathBuf),
    /// Held in memory (configs, small blobs).
    Bytes(bytes::Bytes),
    /// A layer of the base image, in the base's repository (`BaseImage::repository`).
    Base,
    /// Already in the target repository (seen there before the build, so it was not built
    /// again); there is no local copy.
    Target,
}

/// One blob of a built image and where to read it.
#[derive(Debug, Clone)]
pub struct Blob {
    pub descriptor: Descriptor,
    pub location: BlobLocation,
}

/// A complete single-platform image ready to be written to a layout or pushed.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The platform it stands for in an index; `None` for an image built alone.
    pub platform: Option<Platform>,
    /// The manifest exactly as it will be sent; its digest is the image digest.
    pub manifest: bytes::Bytes,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// The config blob (also the first entry the registry needs).
    pub config: Blob,
    /// Layers in manifest order (base layers first).
    pub layers: Vec<Blob>,
    /// The base image the layers marked [`BlobLocation::Base`] come from.
    pub base: Option<BaseImage>,
}

impl BuiltImage {
    /// Config plus layer bytes: what `status.size` reports.
    pub fn size(&self) -> u64 {
        self.config.descriptor.size + self.layers.iter().map(|l| l.descriptor.size).sum::<u64>()
    }

    /// Config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// An image index for several platforms: each child is a whole image, and the children share
/// the context layer (one blob, one diffID).
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    /// The index exactly as it will be sent; its digest is the image's digest.
    pub manifest: bytes::Bytes,
    pub digest: Digest,
    pub media_type: String,
    /// In index order, each with its platform set.
    pub children: Vec<BuiltImage>,
}

/// What a build makes: one image, or an index of images for several platforms.
// One value per build, moved a few times: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Built {
    Image(BuiltImage),
    Index(BuiltIndex),
}

impl From<BuiltImage> for Built {
    fn from(image: BuiltImage) -> Self {
        Self::Image(image)
    }
}

impl Built {
    /// The digest tags point at: the image's manifest, or the index.
    pub fn digest(&self) -> &Digest {
        match self {
            Self::Image(image) => &image.manifest_digest,
            Self::Index(index) => &index.digest,
        }
    }

    /// The top-level manifest's bytes.
    pub fn manifest(&self) -> &bytes::Bytes {
        match self {
            Self::Image(image) => &image.manifest,
            Self::Index(index) => &index.manifest,
        }
    }

    /// The top-level manifest's media type.
    pub fn media_type(&self) -> &str {
        match self {
            Self::Image(image) => &image.manifest_media_type,
            Self::Index(index) => &index.media_type,
        }
    }

    /// The one image, or the children of the index.
    pub fn images(&self) -> &[BuiltImage] {
        match self {
            Self::Image(image) => std::slice::from_ref(image),
            Self::Index(index) => &index.children,
        }
    }

    /// As [`Built::images`], to change where blobs are read from.
    pub fn images_mut(&mut self) -> &mut [BuiltImage] {
        match self {
            Self::Image(image) => std::slice::from_mut(image),
            Self::Index(index) => &mut index.children,
        }
    }

    /// Bytes of configs and layers, each blob counted once (children share the context
    /// layer and often base layers).
    pub fn size(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.images()
            .iter()
            .flat_map(BuiltImage::blobs)
            .filter(|b| seen.insert(&b.descriptor.digest))
            .map(|b| b.descriptor.size)
            .sum()
    }

    /// Each child's platform and manifest digest; empty for a single image.
    pub fn platforms(&self) -> Vec<(Platform, Digest)> {
        match self {
            Self::Image(_) => Vec::new(),
            Self::Index(index) => index
                .children
                .iter()
                .filter_map(|c| Some((c.platform.clone()?, c.manifest_digest.clone())))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn digest_parse_refuses_upper_case_and_other_algorithms() {
        assert!("sha512:abcd".parse::<Digest>().is_err());
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(upper.parse::<Digest>().is_err());
    }

    #[test]
    fn platform_round_trips() {
        let p: Platform = "linux/arm64/v8".parse().expect("valid");
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
    }
}
