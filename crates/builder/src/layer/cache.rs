//! A record of layers already built and pushed, so that a layer the target repository already
//! holds is neither compressed nor uploaded again. It answers two questions:
//!
//! - **By what a walk sees** (`layers/<key>.json`): the key of a layer ([`Part`]) is its paths,
//!   modes, kinds, link targets, the directories above it, and for every file its size, device,
//!   inode, mtime and ctime (ctime cannot be set back by hand), plus the layer options and this
//!   program's version. A hit costs no read of any file. Files changed within the last two
//!   seconds make the part uncacheable: a write in the same clock tick as the read that built the
//!   layer would leave every stat field the same.
//! - **By diffID** (`diff-ids/<compression>-<hex>.json`): the sha256 of a layer's uncompressed
//!   tar, which costs a read and a hash but no compression, finds the blob that tar was
//!   compressed into by this version with the same compression. Fresh copies of the same files
//!   (a new checkout, a claim's files fetched again) are found this way.
//!
//! The values are descriptors and diffIDs, never bytes: a hit is used only when the target
//! repository still holds the blob, and anything else builds the layer as usual. Repositories
//! pushed to are marked (`repositories/<hash>`), so that a push to a repository this cache has
//! never pushed to skips the diffID pass: nothing there can match.
//!
//! The command line keeps the cache in the user's cache directory; the controller keeps it in
//! its work directory and, bounded, in memory ([`LayerCache::with_memory`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Above, Compression, LayerBlob, LayerOptions, LayerStats, Part};
use crate::context::{Content, EntryKind};
use crate::oci::{BlobLocation, Descriptor, Digest, Sha256};

/// Files whose mtime or ctime is this recent make a tree uncacheable.
const SETTLE_TIME: Duration = Duration::from_secs(2);

/// The cache directory's layout version; bump it when the entry format changes.
const FORMAT: &str = "imagebuild-layer-cache-v2";

/// Layers already built, in a directory of small JSON files, and optionally in memory.
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
    memory: Option<Arc<Mutex<Memory>>>,
}

/// The entries and marks most recently used, at most `capacity` of each.
#[derive(Debug, Default)]
struct Memory {
    capacity: usize,
    entries: HashMap<String, CachedLayer>,
    order: VecDeque<String>,
    marks: HashSet<String>,
}

impl Memory {
    fn insert(&mut self, name: String, entry: CachedLayer) {
        if self.entries.insert(name.clone(), entry).is_none() {
            self.order.push_back(name);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }

    fn mark(&mut self, name: String) {
        if self.marks.len() >= self.capacity {
            self.marks.clear();
        }
        self.marks.insert(name);
    }
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
        Self {
            dir: dir.into(),
            memory: None,
        }
    }

    /// Also keeps up to `capacity` entries in memory, shared by the clones of this cache, and
    /// answers from there first.
    pub fn with_memory(mut self, capacity: usize) -> Self {
        self.memory = Some(Arc::new(Mutex::new(Memory {
            capacity,
            ..Memory::default()
        })));
        self
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

    /// The key of the layer of `part` built with `options`, or `None` when it cannot be
    /// trusted: a file that cannot be examined, or one changed too recently.
    pub fn key(part: Part<'_>, options: &LayerOptions) -> Option<Digest> {
        Self::key_at(part, options, SystemTime::now())
    }

    /// [`Self::key`] as seen at `now`.
    fn key_at(part: Part<'_>, options: &LayerOptions, now: SystemTime) -> Option<Digest> {
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
        let mut above = Above::new(part);
        for entry in part.entries() {
            for (dir, mode) in above.missing(&entry.path) {
                field(b"above");
                field(dir.as_bytes());
                field(&mode.to_le_bytes());
            }
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
        self.read(&format!("layers/{}.json", key.hex()))
    }

    /// Records `layer` under `key`, and under its diffID. Best effort: a cache that cannot be
    /// written only costs a rebuild next time.
    pub fn put(&self, key: &Digest, layer: &LayerBlob, compression: Compression) {
        self.write(&format!("layers/{}.json", key.hex()), layer);
        self.remember(layer, compression);
    }

    /// The blob a layer with this diffID was compressed into with `compression`, if recorded.
    pub fn known(&self, diff_id: &Digest, compression: Compression) -> Option<CachedLayer> {
        self.read(&diff_id_entry(diff_id, compression))
    }

    /// Records the blob `layer`'s tar was compressed into.
    pub fn remember(&self, layer: &LayerBlob, compression: Compression) {
        self.write(&diff_id_entry(&layer.diff_id, compression), layer);
    }

    /// Notes that layers were pushed to `repository` (`host/path`).
    pub fn mark_pushed(&self, repository: &str) {
        let name = repository_mark(repository);
        if let Some(memory) = &self.memory
            && let Ok(mut memory) = memory.lock()
        {
            memory.mark(name.clone());
        }
        let path = self.dir.join(&name);
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, repository));
        if let Err(error) = written {
            tracing::debug!(dir = %self.dir.display(), %error, "could not record the repository in the layer cache");
        }
    }

    /// Whether layers were pushed to `repository` through this cache (so the diffID pass may
    /// find them there).
    pub fn pushed_to(&self, repository: &str) -> bool {
        let name = repository_mark(repository);
        if let Some(memory) = &self.memory
            && let Ok(memory) = memory.lock()
            && memory.marks.contains(&name)
        {
            return true;
        }
        self.dir.join(name).exists()
    }

    fn read(&self, name: &str) -> Option<CachedLayer> {
        if let Some(memory) = &self.memory
            && let Ok(memory) = memory.lock()
            && let Some(found) = memory.entries.get(name)
        {
            return Some(found.clone());
        }
        let path = self.dir.join(name);
        let text = fs::read(&path).ok()?;
        match serde_json::from_slice::<CachedLayer>(&text) {
            Ok(layer) => {
                if let Some(memory) = &self.memory
                    && let Ok(mut memory) = memory.lock()
                {
                    memory.insert(name.to_owned(), layer.clone());
                }
                Some(layer)
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "ignoring an unreadable layer cache entry");
                None
            }
        }
    }

    fn write(&self, name: &str, layer: &LayerBlob) {
        let entry = CachedLayer {
            descriptor: layer.descriptor.clone(),
            diff_id: layer.diff_id.clone(),
            uncompressed_size: layer.uncompressed_size,
        };
        if let Some(memory) = &self.memory
            && let Ok(mut memory) = memory.lock()
        {
            memory.insert(name.to_owned(), entry.clone());
        }
        if let Err(error) = self.write_file(name, &entry) {
            tracing::debug!(dir = %self.dir.display(), %error, "could not record the layer in the cache");
        }
    }

    fn write_file(&self, name: &str, entry: &CachedLayer) -> std::io::Result<()> {
        let path = self.dir.join(name);
        let dir = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(temp.as_file_mut(), entry)?;
        temp.persist(&path)?;
        Ok(())
    }
}

/// `diff-ids/<version>-<compression>-<hex>.json`: the blob is this version's compression of
/// the tar, so an image made from it is the one a fresh build makes.
fn diff_id_entry(diff_id: &Digest, compression: Compression) -> String {
    format!(
        "diff-ids/{}-{}-{}.json",
        env!("CARGO_PKG_VERSION"),
        compression_label(compression),
        diff_id.hex()
    )
}

fn repository_mark(repository: &str) -> String {
    format!("repositories/{}", Digest::of(repository.as_bytes()).hex())
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
