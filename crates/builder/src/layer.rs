//! File tree → deterministic tar stream → compressed layer blob, in one streaming pass that
//! computes the diffID (sha256 of the tar) and the blob digest (sha256 of the compressed
//! bytes) on the way, with bounded memory whatever the size of the context.
//!
//! The tar holds the parents of `destinationPath` and the destination itself as `0755`
//! directories, then the tree's entries under it, sorted by the byte order of their paths;
//! uid/gid 0, no owner names, one mtime for all (`SOURCE_DATE_EPOCH` or 0), GNU long names.
//! Compression: see `blocks` (independent 1 MiB gzip members or zstd frames, both cores).

mod blocks;
mod cache;
mod split;
mod tar_header;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::Seek;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::context::{Content, EntryKind, FileTree};
use crate::oci::{self, BlobLocation, Descriptor, Digest};
use tar_header::HeaderKind;

pub use blocks::{BLOCK_SIZE, SEGMENT_SIZE};
pub use cache::{CachedLayer, LayerCache};
pub use split::{Layering, MAX_LAYERS, SPLIT_FROM, plan};

/// The gzip level used unless one is asked for (libdeflate's scale, 0–12). Chosen with
/// `benches/builder.sh` and `benches/run.sh`: the largest speed-up that keeps the layer within 5%
/// of `gzip -6` both on the mixed benchmark context (+2.5%; level 6: +0.3%) and on real source
/// code (+4.8% on a 392 MB tar of Rust crates; level 3: +7.4%). Against level 6 it compresses
/// text about 40% faster and takes a cold 519 MB push from 5.0 s to 4.1 s. Changing it changes
/// every layer digest.
pub const DEFAULT_GZIP_LEVEL: u32 = 4;
/// The zstd level used unless one is asked for.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The largest mtime a tar header holds in octal: 8^11 - 1 (year 2242).
const MAX_MTIME: i64 = 0o77_777_777_777;

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (libdeflate levels 0–12; 0 stores without compressing).
    Gzip { level: u32 },
    /// zstd (levels 1–22); opt-in, some older runtimes cannot pull it.
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        Self::Gzip {
            level: DEFAULT_GZIP_LEVEL,
        }
    }
}

impl Compression {
    /// The OCI layer media type of blobs compressed this way.
    pub fn media_type(&self) -> &'static str {
        match self {
            Self::Gzip { .. } => oci::MEDIA_TYPE_LAYER_GZIP,
            Self::Zstd { .. } => oci::MEDIA_TYPE_LAYER_ZSTD,
        }
    }

    fn check(&self) -> Result<(), LayerError> {
        let valid = match *self {
            Self::Gzip { level } => level <= 12,
            Self::Zstd { level } => (1..=22).contains(&level),
        };
        if valid {
            Ok(())
        } else {
            Err(LayerError::Level(*self))
        }
    }
}

/// How to write a layer.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// Absolute directory in the image where the tree's root lands, e.g. `/` or `/srv/www`.
    pub destination_path: String,
    /// gzip (default) or zstd, with a level.
    pub compression: Compression,
    /// mtime of every entry (`SOURCE_DATE_EPOCH`); `None` means 0.
    pub source_date_epoch: Option<i64>,
    /// Compression threads; 0 means one per available core.
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            destination_path: "/".into(),
            compression: Compression::default(),
            source_date_epoch: None,
            threads: 0,
        }
    }
}

/// A layer blob written to disk.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// Media type per compression, digest and size of the compressed blob.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar: what the image config's `rootfs.diff_ids` lists.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    /// `File(out_dir/<hex of the digest>)` when written; `Target` when a cache showed the
    /// target repository already holds it.
    pub location: BlobLocation,
    /// Timings, for logs and metrics.
    pub stats: LayerStats,
}

impl LayerBlob {
    /// The blob's file, when it was written here.
    pub fn file(&self) -> Option<&Path> {
        match &self.location {
            BlobLocation::File(path) => Some(path),
            _ => None,
        }
    }
}

/// Where the time went while writing a layer.
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    /// Tar entries, including the directories of `destinationPath`.
    pub entries: u64,
    /// Reading and validating the context (before this layer was started).
    pub walk: Duration,
    /// Reading file contents from disk.
    pub read: Duration,
    /// Producing the tar stream, reads and hashing excluded.
    pub tar: Duration,
    /// Compressing, summed over the worker threads.
    pub compress: Duration,
    /// Hashing the uncompressed and the compressed stream.
    pub hash: Duration,
    /// Time the tar producer waited for the compressors (high: compression-bound).
    pub stalled: Duration,
    /// Wall time of the whole layer.
    pub total: Duration,
}

/// Why a layer could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("destinationPath `{path}` {reason}")]
    DestinationPath { path: String, reason: String },
    #[error("SOURCE_DATE_EPOCH {0} is out of range: a tar header holds 0 to {MAX_MTIME} seconds")]
    SourceDateEpoch(i64),
    #[error("{0:?} is not a valid compression level (gzip: 0-12, zstd: 1-22)")]
    Level(Compression),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} changed while the layer was written (its size differs from when the context was \
         read); build again",
        path.display()
    )]
    FileChanged { path: PathBuf },
    #[error("cannot write the layer: {source}")]
    Write { source: std::io::Error },
    #[error("cannot write the layer into {}: {source}", dir.display())]
    OutDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("compression failed: {0}")]
    Compress(String),
    #[error("internal error while writing the layer: {0}")]
    Internal(String),
}

/// Writes `tree` as a compressed layer into `out_dir/<hex>` (a temporary file in `out_dir`
/// renamed when complete, so `out_dir` can be an OCI layout's `blobs/sha256`). Blocking and
/// CPU-bound: call it from `spawn_blocking`.
pub fn build_layer(
    tree: &FileTree,
    opts: &LayerOptions,
    out_dir: &Path,
) -> Result<LayerBlob, LayerError> {
    write_layer(Part::whole(tree), opts, out_dir, None)
}

/// [`build_layer`], also sending the compressed bytes to `copy` in segments of at least
/// [`SEGMENT_SIZE`] as they are written (for an upload that runs meanwhile). Should the
/// receiver go away, the layer is still written whole.
pub fn build_layer_with_copy(
    tree: &FileTree,
    opts: &LayerOptions,
    out_dir: &Path,
    copy: tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<LayerBlob, LayerError> {
    write_layer(
        Part::whole(tree),
        opts,
        out_dir,
        Some(blocks::Tee::new(copy)),
    )
}

/// One layer of a tree split by [`plan`]: the entries in `entries`, with the directories above
/// them that earlier layers hold, so the layer stands on its own.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub tree: &'a FileTree,
    pub entries: &'a std::ops::Range<usize>,
}

impl<'a> Part<'a> {
    /// The whole tree as one part: the single layer.
    pub fn whole(tree: &'a FileTree) -> Self {
        const ALL: std::ops::Range<usize> = 0..usize::MAX;
        Self {
            tree,
            entries: &ALL,
        }
    }

    /// The part's entries (the range clamped to the tree).
    fn entries(&self) -> &'a [crate::context::Entry] {
        let all = self.tree.entries();
        let end = self.entries.end.min(all.len());
        &all[self.entries.start.min(end)..end]
    }

    /// Bytes of the part's tar stream before compression, without the directories added
    /// above it: what progress reports count.
    pub fn tar_bytes(&self) -> u64 {
        self.entries().iter().map(|e| split::weight(&e.kind)).sum()
    }
}

/// Writes one [`Part`] as a compressed layer, like [`build_layer`]; with `copy`, like
/// [`build_layer_with_copy`].
pub fn build_part(
    part: Part<'_>,
    opts: &LayerOptions,
    out_dir: &Path,
    copy: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
) -> Result<LayerBlob, LayerError> {
    write_layer(part, opts, out_dir, copy.map(blocks::Tee::new))
}

/// The diffID and uncompressed size the layer of `part` would have, from its tar stream alone:
/// no compression, nothing written. A layer already in the registry is recognised by it.
pub fn diff_id_of(part: Part<'_>, opts: &LayerOptions) -> Result<(Digest, u64), LayerError> {
    let destination = destination_dirs(&opts.destination_path)?;
    let mtime = mtime(opts.source_date_epoch)?;
    let output = blocks::hash_only(|sink| TarWriter { sink, mtime }.write(part, &destination))?;
    let diff_id = output.diff_id.ok_or_else(|| missing("diffID"))?;
    Ok((diff_id, output.uncompressed))
}

fn write_layer(
    part: Part<'_>,
    opts: &LayerOptions,
    out_dir: &Path,
    tee: Option<blocks::Tee>,
) -> Result<LayerBlob, LayerError> {
    let tree = part.tree;
    let started = Instant::now();
    let destination = destination_dirs(&opts.destination_path)?;
    let mtime = mtime(opts.source_date_epoch)?;
    opts.compression.check()?;
    let out_error = |source| LayerError::OutDir {
        dir: out_dir.to_owned(),
        source,
    };
    fs::create_dir_all(out_dir).map_err(out_error)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".layer-")
        .suffix(".partial")
        .tempfile_in(out_dir)
        .map_err(out_error)?;

    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut tar_time = Duration::ZERO;
    let output = blocks::run(opts.compression, threads, temp.as_file_mut(), tee, |sink| {
        let tar_started = Instant::now();
        let result = TarWriter { sink, mtime }.write(part, &destination);
        tar_time = tar_started.elapsed();
        result
    })?;

    let digest = output
        .digest
        .clone()
        .ok_or_else(|| missing("blob digest"))?;
    let diff_id = output.diff_id.clone().ok_or_else(|| missing("diffID"))?;
    let path = out_dir.join(digest.hex());
    finish_blob(temp.as_file_mut(), output.compressed).map_err(out_error)?;
    temp.persist(&path).map_err(|e| out_error(e.error))?;

    let stats = LayerStats {
        entries: (destination.len() + part.entries().len()) as u64,
        walk: tree.walk_time(),
        read: output.read,
        tar: tar_time.saturating_sub(output.read + output.hash + output.stalled),
        compress: output.compress,
        hash: output.hash,
        stalled: output.stalled,
        total: started.elapsed(),
    };
    tracing::debug!(digest = %digest, diff_id = %diff_id, ?stats, "layer written");
    Ok(LayerBlob {
        descriptor: Descriptor {
            media_type: opts.compression.media_type().to_owned(),
            digest,
            size: output.compressed,
            platform: None,
            annotations: Default::default(),
        },
        diff_id,
        uncompressed_size: output.uncompressed,
        location: BlobLocation::File(path),
        stats,
    })
}

/// Makes the blob readable by others (temporary files are private) and checks its length.
fn finish_blob(file: &mut File, expected: u64) -> std::io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    let len = file.stream_position()?;
    if len == expected {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "wrote {len} bytes but compressed {expected}"
        )))
    }
}

fn missing(what: &str) -> LayerError {
    LayerError::Internal(format!("the pipeline produced no {what}"))
}

/// `/srv/www` → `["srv", "srv/www"]`; `/` → `[]`.
fn destination_dirs(destination: &str) -> Result<Vec<String>, LayerError> {
    let problem = |reason: &str| LayerError::DestinationPath {
        path: destination.to_owned(),
        reason: reason.to_owned(),
    };
    let relative = destination
        .strip_prefix('/')
        .ok_or_else(|| problem("must be absolute, e.g. / or /srv/www"))?;
    let relative = relative.strip_suffix('/').unwrap_or(relative);
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(reason) = relative
        .split('/')
        .find_map(crate::context::segment_problem)
    {
        return Err(problem(reason));
    }
    Ok(relative
        .match_indices('/')
        .map(|(i, _)| relative[..i].to_owned())
        .chain(std::iter::once(relative.to_owned()))
        .collect())
}

fn mtime(source_date_epoch: Option<i64>) -> Result<u64, LayerError> {
    match source_date_epoch {
        None => Ok(0),
        Some(t) if (0..=MAX_MTIME).contains(&t) => Ok(t as u64),
        Some(t) => Err(LayerError::SourceDateEpoch(t)),
    }
}

/// Turns entries into tar bytes in the sink.
struct TarWriter<'a> {
    sink: &'a mut blocks::Sink,
    mtime: u64,
}

impl TarWriter<'_> {
    fn write(mut self, part: Part<'_>, destination: &[String]) -> Result<(), LayerError> {
        let mut header = Vec::with_capacity(4 * tar_header::BLOCK);
        for dir in destination {
            self.header(&mut header, dir, HeaderKind::Directory, 0o755)?;
        }
        let prefix = destination
            .last()
            .map(|d| format!("{d}/"))
            .unwrap_or_default();
        let mut above = Above::new(part);
        for entry in part.entries() {
            for (dir, mode) in above.missing(&entry.path) {
                let path = format!("{prefix}{dir}");
                self.header(&mut header, &path, HeaderKind::Directory, mode)?;
            }
            let path = format!("{prefix}{}", entry.path);
            match &entry.kind {
                EntryKind::Directory => {
                    self.header(&mut header, &path, HeaderKind::Directory, entry.mode)?;
                }
                EntryKind::Symlink { target } => {
                    let kind = HeaderKind::Symlink { target };
                    self.header(&mut header, &path, kind, entry.mode)?;
                }
                EntryKind::File { size, content } => {
                    let kind = HeaderKind::File { size: *size };
                    self.header(&mut header, &path, kind, entry.mode)?;
                    self.content(content, *size)?;
                    self.sink.write_zeros(tar_header::padding(*size))?;
                }
            }
        }
        self.sink.write(&tar_header::END_OF_ARCHIVE)
    }

    fn header(
        &mut self,
        buf: &mut Vec<u8>,
        path: &str,
        kind: HeaderKind<'_>,
        mode: u32,
    ) -> Result<(), LayerError> {
        buf.clear();
        tar_header::encode(buf, path, kind, mode, self.mtime);
        self.sink.write(buf)
    }

    fn content(&mut self, content: &Content, size: u64) -> Result<(), LayerError> {
        match content {
            Content::Bytes(bytes) => self.sink.write(bytes),
            Content::Path(path) => {
                let read_error = |source| LayerError::Read {
                    path: path.clone(),
                    source,
                };
                let mut file = File::open(path).map_err(read_error)?;
                let len = file.metadata().map_err(read_error)?.len();
                let copied = self.sink.copy_from(&mut file, size).map_err(read_error)?;
                if len != size || copied != size {
                    return Err(LayerError::FileChanged { path: path.clone() });
                }
                Ok(())
            }
        }
    }
}

/// The directories of the tree that come before a part and hold its entries: each goes into
/// the part's layer once, just before the first entry under it, with the tree's mode.
struct Above<'a> {
    earlier: &'a [crate::context::Entry],
    written: std::collections::HashSet<&'a str>,
}

impl<'a> Above<'a> {
    fn new(part: Part<'a>) -> Self {
        let all = part.tree.entries();
        Self {
            earlier: &all[..part.entries.start.min(all.len())],
            written: Default::default(),
        }
    }

    /// The ancestors of `path` that an earlier part holds and this one has not written yet,
    /// outermost first.
    fn missing(&mut self, path: &'a str) -> Vec<(&'a str, u32)> {
        if self.earlier.is_empty() {
            return Vec::new();
        }
        let mut missing = Vec::new();
        for (i, _) in path.match_indices('/') {
            let dir = &path[..i];
            if self.written.contains(dir) {
                continue;
            }
            let found = self
                .earlier
                .binary_search_by(|e| e.path.as_bytes().cmp(dir.as_bytes()));
            if let Ok(at) = found {
                self.written.insert(dir);
                missing.push((dir, self.earlier[at].mode));
            }
        }
        missing
    }
}
