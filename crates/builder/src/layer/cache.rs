//! A local record of layers already built from a directory, so that pushing the same files
//! again is a walk and a few existence checks instead of a rebuild.
//!
//! The key is what a walk sees without reading any file: paths, modes, kinds, link targets,
//! and for every file its size, device, inode, mtime and ctime (ctime cannot be set back by
//! hand), plus the layer options and this program's version. The value is the layer's
//! descriptor and diffID, never its bytes: a hit is used only when the target repository
//! still holds the blob, and anything else builds the layer as usual.
//!
//! Files changed within the last two seconds make the tree uncacheable: a write in the same
//! clock tick as the read that built the layer would leave every stat field the same.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Compression, LayerBlob, LayerOptions, LayerStats};
use crate::context::{Content, EntryKind, FileTree};
use crate::oci::{BlobLocation, Descriptor, Digest, Sha256};

/// Files whose mtime or ctime is this recent make a tree uncacheable.
const SETTLE_TIME: Duration = Duration::from_secs(2);

/// The cache directory's layout version; bump it when the entry format changes.
const FORMAT: &str = "imagebuild-layer-cache-v1";

/// Layers already built, in a directory of small JSON files (`layers/<key>.json`).
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
}

/// What a cache entry remembers of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedLayer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

impl CachedLayer {
    /// The layer as the image assembler takes it, located in the target repository.
    pub fn into_layer_blob(self) -> LayerBlob {
        LayerBlob {
            descriptor: self.descriptor,
            diff_id: self.diff_id,
            uncompressed_size: self.uncompressed_size,
            location: BlobLocation::Target,
            stats: LayerStats::default(),
        }
    }
}

impl LayerCache {
    /// A cache kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$IMAGEBUILD_CACHE_DIR`, else `$XDG_CACHE_HOME/imagebuild`, else
    /// `$HOME/.cache/imagebuild`; `None` when none of them is set.
    pub fn user_default() -> Option<Self> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        var("IMAGEBUILD_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| Path::new(&d).join("imagebuild")))
            .or_else(|| var("HOME").map(|d| Path::new(&d).join(".cache/imagebuild")))
            .map(Self::new)
    }

    /// The key of `tree` built with `options`, or `None` when it cannot be trusted: a file
    /// that cannot be examined, or one changed too recently.
    pub fn key(tree: &FileTree, options: &LayerOptions) -> Option<Digest> {
        Self::key_at(tree, options, SystemTime::now())
    }

    /// [`Self::key`] as seen at `now`.
    fn key_at(tree: &FileTree, options: &LayerOptions, now: SystemTime) -> Option<Digest> {
        let settled_before = now.checked_sub(SETTLE_TIME)?;
        let settled_before = settled_before.duration_since(UNIX_EPOCH).ok()?;
        let mut hash = Sha256::default();
        let mut field = |bytes: &[u8]| {
            hash.update(&(bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(FORMAT.as_bytes());
        field(env!("CARGO_PKG_VERSION").as_bytes());
        field(options.destination_path.as_bytes());
        field(compression_label(options.compression).as_bytes());
        field(&options.source_date_epoch.unwrap_or(0).to_le_bytes());
        for entry in tree.entries() {
            field(entry.path.as_bytes());
            field(&entry.mode.to_le_bytes());
            match &entry.kind {
                EntryKind::Directory => field(b"d"),
                EntryKind::Symlink { target } => {
                    field(b"l");
                    field(target.as_bytes());
                }
                EntryKind::File { size, content } => {
                    field(b"f");
                    field(&size.to_le_bytes());
                    match content {
                        Content::Path(path) => field(&file_identity(path, settled_before)?),
                        Content::Bytes(bytes) => field(Digest::of(bytes).as_str().as_bytes()),
                    }
                }
            }
        }
        Some(hash.finish())
    }

    /// The layer recorded under `key`, if any (an unreadable entry is a miss).
    pub fn get(&self, key: &Digest) -> Option<CachedLayer> {
        let path = self.entry_path(key);
        let text = fs::read(&path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(layer) => Some(layer),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "ignoring an unreadable layer cache entry");
                None
            }
        }
    }

    /// Records `layer` under `key`. Best effort: a cache that cannot be written only costs a
    /// rebuild next time.
    pub fn put(&self, key: &Digest, layer: &LayerBlob) {
        let entry = CachedLayer {
            descriptor: layer.descriptor.clone(),
            diff_id: layer.diff_id.clone(),
            uncompressed_size: layer.uncompressed_size,
        };
        if let Err(error) = self.write_entry(key, &entry) {
            tracing::debug!(dir = %self.dir.display(), %error, "could not record the layer in the cache");
        }
    }

    fn write_entry(&self, key: &Digest, entry: &CachedLayer) -> std::io::Result<()> {
        let dir = self.dir.join("layers");
        fs::create_dir_all(&dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(&dir)?;
        serde_json::to_writer(temp.as_file_mut(), entry)?;
        temp.persist(self.entry_path(key))?;
        Ok(())
    }

    fn entry_path(&self, key: &Digest) -> PathBuf {
        self.dir.join("layers").join(format!("{}.json", key.hex()))
    }
}

fn compression_label(compression: Compression) -> String {
    match compression {
        Compression::Gzip { level } => format!("gzip-{level}"),
        Compression::Zstd { level } => format!("zstd-{level}"),
    }
}

/// Device, inode, size, mtime and ctime of `path` (not following a final symlink), or `None`
/// when it cannot be examined or changed after `settled_before` (seconds since the epoch).
fn file_identity(path: &Path, settled_before: Duration) -> Option<Vec<u8>> {
    let meta = fs::symlink_metadata(path).ok()?;
    let mtime = timestamp(meta.mtime(), meta.mtime_nsec())?;
    let ctime = timestamp(meta.ctime(), meta.ctime_nsec())?;
    if mtime >= settled_before || ctime >= settled_before {
        return None;
    }
    let mut identity = Vec::with_capacity(48);
    for value in [meta.dev(), meta.ino(), meta.size()] {
        identity.extend_from_slice(&value.to_le_bytes());
    }
    for value in [mtime, ctime] {
        identity.extend_from_slice(&value.as_nanos().to_le_bytes());
    }
    Some(identity)
}

/// A file time as a duration since the epoch (`None` before 1970).
fn timestamp(secs: i64, nanos: i64) -> Option<Duration> {
    Some(Duration::new(
        u64::try_from(secs).ok()?,
        u32::try_from(nanos).ok()?,
    ))
}

#[cfg(test)]
mod tests;
