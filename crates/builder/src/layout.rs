//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/<hex>`): written by
//! `imagebuild build --output`, read by `imagebuild push LAYOUT REF`, and judged by skopeo
//! and umoci in the tests. An entry of `index.json` names one image manifest, or an image
//! index whose children (one per platform) are in the same `blobs/`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::oci::{
    self, ANNOTATION_REF_NAME, Blob, BlobLocation, Built, BuiltImage, BuiltIndex, Descriptor,
    Digest, Index, Manifest,
};

const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";

/// Why a layout could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the base layer {digest} (from {repository}) is not in {}; fetch the base image's \
         layers into the layout first",
        dir.display()
    )]
    MissingBaseBlob {
        digest: Digest,
        repository: String,
        dir: PathBuf,
    },
    #[error(
        "the layer {digest} was not built (a registry already held it), so it cannot be \
         written to {}",
        dir.display()
    )]
    NotBuilt { digest: Digest, dir: PathBuf },
    #[error("{} is not an OCI image layout: {reason}", dir.display())]
    NotALayout { dir: PathBuf, reason: String },
    #[error("{} has no image tagged `{tag}`; it has: {available}", dir.display())]
    TagNotFound {
        dir: PathBuf,
        tag: String,
        available: String,
    },
    #[error("{} holds {count} images; name the tag to use (it has: {available})", dir.display())]
    TagRequired {
        dir: PathBuf,
        count: usize,
        available: String,
    },
    #[error("the blob {} does not match its digest {digest}; the layout is damaged", path.display())]
    DigestMismatch { path: PathBuf, digest: Digest },
    #[error("{what} in {} is not valid JSON: {source}", dir.display())]
    Json {
        what: String,
        dir: PathBuf,
        source: serde_json::Error,
    },
}

/// `dir/blobs/sha256`, created: where `build_layer` can write the layer straight into the
/// layout.
pub fn blobs_dir(dir: &Path) -> Result<PathBuf, LayoutError> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io("create", &blobs))?;
    Ok(blobs)
}

/// Writes `built` (an image, or an index and its children) into the layout at `dir` under
/// each of `tags` (one untagged entry when `tags` is empty). Entries of other tags already in
/// `index.json` are kept. Base layers must already be in the layout (the caller fetches them).
pub fn write(dir: &Path, built: &Built, tags: &[String]) -> Result<(), LayoutError> {
    let blobs = blobs_dir(dir)?;
    write_atomically(&dir.join(OCI_LAYOUT_FILE), OCI_LAYOUT_CONTENT.as_bytes())?;
    for image in built.images() {
        for blob in image.blobs() {
            write_blob(&blobs, blob, image)?;
        }
        write_atomically(&blobs.join(image.manifest_digest.hex()), &image.manifest)?;
    }
    if let Built::Index(index) = built {
        write_atomically(&blobs.join(index.digest.hex()), &index.manifest)?;
    }
    write_index(dir, built, tags)
}

/// Reads the image tagged `tag` (or the only image, when `tag` is `None`) from the layout at
/// `dir`: a single image, or an image index with every child. Manifests, indexes and configs
/// are checked against their digests; layers are referenced by path and checked by size (the
/// registry checks their digests on upload).
pub fn read(dir: &Path, tag: Option<&str>) -> Result<Built, LayoutError> {
    check_layout_file(dir)?;
    let index: Index = read_json(dir, &dir.join(INDEX_FILE), INDEX_FILE)?;
    let descriptor = pick(dir, &index, tag)?;
    let blobs = dir.join("blobs").join("sha256");
    if !is_index(&descriptor.media_type) {
        return read_image(dir, &blobs, descriptor).map(Built::Image);
    }
    let (bytes, listed) = read_listed_index(dir, &blobs, descriptor)?;
    let children = listed
        .manifests
        .iter()
        .map(|child| {
            if !is_image_manifest(&child.media_type) {
                return Err(LayoutError::NotALayout {
                    dir: dir.to_owned(),
                    reason: format!(
                        "the index {} lists {} of type {}; only image manifests can be children",
                        descriptor.digest, child.digest, child.media_type
                    ),
                });
            }
            read_image(dir, &blobs, child)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let media_type = listed
        .media_type
        .clone()
        .unwrap_or_else(|| descriptor.media_type.clone());
    Ok(Built::Index(BuiltIndex {
        manifest: bytes,
        digest: descriptor.digest.clone(),
        media_type,
        children,
    }))
}

/// One image manifest, its config and its layer files.
fn read_image(
    dir: &Path,
    blobs: &Path,
    descriptor: &Descriptor,
) -> Result<BuiltImage, LayoutError> {
    let manifest_bytes = read_blob(blobs, &descriptor.digest)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| LayoutError::Json {
            what: format!("the manifest {}", descriptor.digest),
            dir: dir.to_owned(),
            source,
        })?;
    let config_bytes = read_blob(blobs, &manifest.config.digest)?;
    let layers = manifest
        .layers
        .iter()
        .map(|d| layer_file(blobs, d))
        .collect::<Result<_, _>>()?;
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| descriptor.media_type.clone());
    Ok(BuiltImage {
        platform: descriptor.platform.clone(),
        manifest: manifest_bytes,
        manifest_digest: descriptor.digest.clone(),
        manifest_media_type: media_type,
        config: Blob {
            descriptor: manifest.config.clone(),
            location: BlobLocation::Bytes(config_bytes),
        },
        layers,
        base: None,
    })
}

fn is_image_manifest(media_type: &str) -> bool {
    [
        oci::MEDIA_TYPE_IMAGE_MANIFEST,
        oci::MEDIA_TYPE_DOCKER_MANIFEST,
    ]
    .contains(&media_type)
}

fn is_index(media_type: &str) -> bool {
    [
        oci::MEDIA_TYPE_IMAGE_INDEX,
        oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    ]
    .contains(&media_type)
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Puts one blob at `blobs/<hex>`, unless it is already there (a layer built in place).
fn write_blob(blobs: &Path, blob: &Blob, image: &BuiltImage) -> Result<(), LayoutError> {
    let target = blobs.join(blob.descriptor.digest.hex());
    match &blob.location {
        BlobLocation::Bytes(bytes) => write_atomically(&target, bytes),
        BlobLocation::File(source) => {
            if same_file(source, &target) || target.exists() {
                return Ok(());
            }
            copy_atomically(source, &target)
        }
        BlobLocation::Target if target.exists() => Ok(()),
        BlobLocation::Target => Err(LayoutError::NotBuilt {
            digest: blob.descriptor.digest.clone(),
            dir: blobs.to_owned(),
        }),
        BlobLocation::Base => {
            if target.exists() {
                return Ok(());
            }
            Err(LayoutError::MissingBaseBlob {
                digest: blob.descriptor.digest.clone(),
                repository: image
                    .base
                    .as_ref()
                    .map(|b| b.repository.clone())
                    .unwrap_or_else(|| "the base image".into()),
                dir: blobs.to_owned(),
            })
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// index.json: other tags' entries kept in order, then ours in the order given.
fn write_index(dir: &Path, built: &Built, tags: &[String]) -> Result<(), LayoutError> {
    let path = dir.join(INDEX_FILE);
    let mut manifests: Vec<Descriptor> = if path.exists() {
        let existing: Index = read_json(dir, &path, INDEX_FILE)?;
        existing
            .manifests
            .into_iter()
            .filter(|d| {
                d.annotations
                    .get(ANNOTATION_REF_NAME)
                    .is_some_and(|t| !tags.contains(t))
            })
            .collect()
    } else {
        Vec::new()
    };
    let entry = |tag: Option<&String>| Descriptor {
        media_type: built.media_type().to_owned(),
        digest: built.digest().clone(),
        size: built.manifest().len() as u64,
        platform: None,
        annotations: tag
            .map(|t| BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), t.clone())]))
            .unwrap_or_default(),
    };
    if tags.is_empty() {
        manifests.push(entry(None));
    }
    manifests.extend(tags.iter().map(|t| entry(Some(t))));
    replace_index(dir, &empty_index(manifests))
}

/// The layout's `index.json` (an empty index when the layout has none yet).
pub fn read_index(dir: &Path) -> Result<Index, LayoutError> {
    let path = dir.join(INDEX_FILE);
    if !path.exists() {
        return Ok(empty_index(Vec::new()));
    }
    read_json(dir, &path, INDEX_FILE)
}

/// Replaces the layout's `index.json` (through a temporary file, so readers see the old or the
/// new one whole). The blobs its entries name must be in the layout already.
pub fn replace_index(dir: &Path, index: &Index) -> Result<(), LayoutError> {
    let bytes = serde_json::to_vec(index).map_err(|source| LayoutError::Json {
        what: INDEX_FILE.into(),
        dir: dir.to_owned(),
        source,
    })?;
    write_atomically(&dir.join(INDEX_FILE), &bytes)
}

/// The image index `descriptor` names, read from the layout's `blobs` directory: its bytes
/// (checked against the digest) and what they say.
fn read_listed_index(
    dir: &Path,
    blobs: &Path,
    descriptor: &Descriptor,
) -> Result<(Bytes, Index), LayoutError> {
    let bytes = read_blob(blobs, &descriptor.digest)?;
    let listed = serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
        what: format!("the image index {}", descriptor.digest),
        dir: dir.to_owned(),
        source,
    })?;
    Ok((bytes, listed))
}

/// The descriptors of every blob `descriptor` needs (itself; for an index, its children; for
/// an image manifest, its config and layers), read from the layout at `dir`.
pub fn blobs_of(dir: &Path, descriptor: &Descriptor) -> Result<Vec<Descriptor>, LayoutError> {
    let blobs = dir.join("blobs").join("sha256");
    let mut found = vec![descriptor.clone()];
    if is_index(&descriptor.media_type) {
        let (_, listed) = read_listed_index(dir, &blobs, descriptor)?;
        for child in &listed.manifests {
            found.extend(blobs_of(dir, child)?);
        }
    } else if is_image_manifest(&descriptor.media_type) {
        let bytes = read_blob(&blobs, &descriptor.digest)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
                what: format!("the manifest {}", descriptor.digest),
                dir: dir.to_owned(),
                source,
            })?;
        found.push(manifest.config);
        found.extend(manifest.layers);
    }
    Ok(found)
}

fn empty_index(manifests: Vec<Descriptor>) -> Index {
    Index {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_IMAGE_INDEX.to_owned()),
        manifests,
        annotations: BTreeMap::new(),
    }
}

fn check_layout_file(dir: &Path) -> Result<(), LayoutError> {
    let path = dir.join(OCI_LAYOUT_FILE);
    let value: serde_json::Value = read_json(dir, &path, OCI_LAYOUT_FILE)?;
    match value.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(v) if v.starts_with("1.") => Ok(()),
        other => Err(LayoutError::NotALayout {
            dir: dir.to_owned(),
            reason: format!("unsupported imageLayoutVersion {other:?} (expected 1.0.0)"),
        }),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    path: &Path,
    what: &str,
) -> Result<T, LayoutError> {
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LayoutError::NotALayout {
            dir: dir.to_owned(),
            reason: format!("it has no {what}"),
        },
        _ => LayoutError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
        what: what.to_owned(),
        dir: dir.to_owned(),
        source,
    })
}

/// The index entry for `tag`, or the only entry.
fn pick<'a>(
    dir: &Path,
    index: &'a Index,
    tag: Option<&str>,
) -> Result<&'a Descriptor, LayoutError> {
    let tag_of = |d: &Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
    let available = || {
        let tags: Vec<String> = index.manifests.iter().filter_map(tag_of).collect();
        if tags.is_empty() {
            "no tags".to_owned()
        } else {
            tags.join(", ")
        }
    };
    let found = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .rfind(|d| tag_of(d).as_deref() == Some(tag))
            .ok_or_else(|| LayoutError::TagNotFound {
                dir: dir.to_owned(),
                tag: tag.to_owned(),
                available: available(),
            })?,
        None => match index.manifests.as_slice() {
            [only] => only,
            _ => {
                return Err(LayoutError::TagRequired {
                    dir: dir.to_owned(),
                    count: index.manifests.len(),
                    available: available(),
                });
            }
        },
    };
    if is_image_manifest(&found.media_type) || is_index(&found.media_type) {
        Ok(found)
    } else {
        Err(LayoutError::NotALayout {
            dir: dir.to_owned(),
            reason: format!(
                "the entry {} is a {}, not an image manifest or image index",
                found.digest, found.media_type
            ),
        })
    }
}

/// A small blob (manifest, config), checked against its digest.
fn read_blob(blobs: &Path, digest: &Digest) -> Result<Bytes, LayoutError> {
    let path = blobs.join(digest.hex());
    let bytes = fs::read(&path).map_err(io("read", &path))?;
    if Digest::of(&bytes) != *digest {
        return Err(LayoutError::DigestMismatch {
            path,
            digest: digest.clone(),
        });
    }
    Ok(Bytes::from(bytes))
}

fn layer_file(blobs: &Path, descriptor: &Descriptor) -> Result<Blob, LayoutError> {
    let path = blobs.join(descriptor.digest.hex());
    let len = fs::metadata(&path).map_err(io("read", &path))?.len();
    if len != descriptor.size {
        return Err(LayoutError::DigestMismatch {
            path,
            digest: descriptor.digest.clone(),
        });
    }
    Ok(Blob {
        descriptor: descriptor.clone(),
        location: BlobLocation::File(path),
    })
}

/// Writes through a temporary file in the same directory and renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io("write into", dir))?;
    temp.write_all(bytes).map_err(io("write", path))?;
    persist(temp, path)
}

fn copy_atomically(source: &Path, path: &Path) -> Result<(), LayoutError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io("write into", dir))?;
    let mut input = fs::File::open(source).map_err(io("read", source))?;
    std::io::copy(&mut input, &mut temp).map_err(io("copy", source))?;
    persist(temp, path)
}

fn persist(temp: tempfile::NamedTempFile, path: &Path) -> Result<(), LayoutError> {
    use std::os::unix::fs::PermissionsExt;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io("write", path))?;
    temp.persist(path).map_err(|e| LayoutError::Io {
        action: "write",
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests;
