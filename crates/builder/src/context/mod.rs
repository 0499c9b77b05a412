//! Build contexts: a local directory, a mounted PVC or ConfigMap-like items become one
//! validated, sorted [`FileTree`] that the layer writer turns into a tar stream.
//!
//! Everything that could make an image unsafe or irreproducible is refused here, before any
//! byte is written: special files, names that are not UTF-8 or hold control characters,
//! paths that climb out, duplicate target paths, archives with hard links or devices, and
//! contexts over the configured limits.
//!
//! Symlinks are stored as symlinks and never followed, whatever their target: an absolute one
//! or a relative one that climbs out of the context both resolve inside the image, as Docker
//! and BuildKit store them. No entry is ever placed below a symlink.

mod archive;
mod dir;
mod dockerignore;
mod fingerprint;
mod items;
pub mod tar_entry;
#[cfg(test)]
mod tests;
mod tree;

use crate::failure::{Category, FailureKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use dockerignore::{ExcludeRules, dockerignore_patterns};
pub use items::{ARCHIVE_EXTENSIONS, archive_stem};
pub(crate) use tree::segment_problem;
// The PVC context receiver (imagebuild's transfer module) unpacks a tar stream with the same
// rules.
pub use tree::{MODE_SYMLINK, TreeBuilder, escaped, normalised_file_mode, path_problem};

use crate::oci::Digest;

/// Name of the ignore file honoured at the context root.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// How a context is read and what it may hold.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Patterns in `.dockerignore` syntax; applied after the `.dockerignore` file's own, so
    /// they have the last word.
    pub exclude: Vec<String>,
    /// Read `.dockerignore` at the context root (for items: an item whose path is
    /// `.dockerignore`). The file itself stays in the image unless a pattern excludes it.
    pub honour_dockerignore: bool,
    /// Refuse a context whose regular files add up to more bytes than this.
    pub max_bytes: Option<u64>,
    /// Refuse a context with more entries (files, directories, symlinks) than this.
    pub max_entries: Option<u64>,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            exclude: Vec::new(),
            honour_dockerignore: true,
            max_bytes: None,
            max_entries: None,
        }
    }
}

/// One file from a ConfigMap-like source.
///
/// `path` is relative to the image's `destinationPath`, `/`-separated, with no `..`, no empty
/// or `.` segments and no leading `/`. `mode` (permission bits, at most `0o7777`) defaults to
/// `0o644`.
///
/// With `archive: true` the data is a tar or gzip-compressed tar (recognised by its content)
/// that is unpacked under the directory named by `path` with its archive extension stripped:
/// key `site.tar.gz` at its default path `site.tar.gz` lands under `site/`; an explicit path
/// `www/` lands under `www/`, and `.` at the root. Unpacking applies every rule of a directory
/// context (no `..`, no absolute names, no hard links or devices, symlinks that stay inside,
/// limits against archive bombs), modes are normalised to `0644`/`0755` and `mode` must be
/// unset. Use [`ContextItem::from_key`] to derive `path` and check the key's extension.
///
/// Unpacked archive contents are held in memory: set [`ContextOptions::max_bytes`] to bound
/// what a small compressed archive may expand to.
#[derive(Debug, Clone)]
pub struct ContextItem {
    /// Where the item comes from, for messages, e.g. `ConfigMap hello-src key index.html`.
    pub source: String,
    /// Target path relative to `destinationPath`.
    pub path: String,
    /// Permission bits; `None` means `0o644`.
    pub mode: Option<u32>,
    /// The file's bytes (or the archive's, with `archive`).
    pub data: Bytes,
    /// Unpack `data` as a tar archive instead of storing it as one file.
    pub archive: bool,
}

/// What a tree entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File { size: u64, content: Content },
    Symlink { target: String },
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// On disk; read when the layer is written, never held in memory.
    Path(PathBuf),
    /// In memory (ConfigMap data, unpacked archives).
    Bytes(Bytes),
}

/// One validated entry of a [`FileTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context root: `/`-separated, no leading or trailing `/`, valid UTF-8
    /// without control characters, no `.` or `..` segments.
    pub path: String,
    /// Permission bits as they go into the tar header.
    pub mode: u32,
    /// Directory, file or symlink.
    pub kind: EntryKind,
}

/// A validated build context: entries sorted by the byte order of their paths, parents
/// before children, every directory on the way present.
#[derive(Debug, Clone)]
pub struct FileTree {
    entries: Vec<Entry>,
    total_bytes: u64,
    walk_time: Duration,
}

impl FileTree {
    /// Walks a local directory (or mounted volume) without following symlinks. Regular files
    /// are referenced by path and only read when the layer is written.
    pub fn from_dir(root: &Path, opts: &ContextOptions) -> Result<Self, ContextError> {
        let started = Instant::now();
        let entries = dir::walk(root, opts)?;
        Ok(Self::new(entries, started.elapsed()))
    }

    /// Builds a tree from ConfigMap-like items, unpacking archives; see [`ContextItem`].
    pub fn from_items(
        items: Vec<ContextItem>,
        opts: &ContextOptions,
    ) -> Result<Self, ContextError> {
        let started = Instant::now();
        let entries = items::collect(items, opts)?;
        Ok(Self::new(entries, started.elapsed()))
    }

    fn new(entries: Vec<Entry>, walk_time: Duration) -> Self {
        let total_bytes = entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        Self {
            entries,
            total_bytes,
            walk_time,
        }
    }

    /// Entries in tar order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of entries (files, directories, symlinks).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree has no entries (the layer then holds only `destinationPath`).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of the sizes of the regular files.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Time spent reading and validating the context.
    pub fn walk_time(&self) -> Duration {
        self.walk_time
    }

    /// A digest of the tree's content: paths, kinds, modes, file content digests and link
    /// targets, in tree order. Stable across machines; it reads every file once.
    pub fn fingerprint(&self) -> Result<Digest, ContextError> {
        fingerprint::of(&self.entries)
    }
}

/// Why a context cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the context {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "{location} is a {kind}: only regular files, directories and symlinks can go into an \
         image; remove it or exclude it"
    )]
    SpecialFile {
        location: String,
        kind: &'static str,
    },
    #[error("the name {name} in {location} {reason}; rename it or exclude it")]
    InvalidName {
        location: String,
        /// The name with unprintable bytes escaped.
        name: String,
        reason: &'static str,
    },
    #[error("{origin}: the path `{path}` {reason}")]
    InvalidPath {
        origin: String,
        path: String,
        reason: String,
    },
    #[error("`{path}` comes from both {first} and {second}; give one of them another path")]
    Duplicate {
        path: String,
        first: String,
        second: String,
    },
    #[error(
        "the context has more than {limit} entries (reached at {location}); exclude files or \
         raise the limit"
    )]
    TooManyEntries { limit: u64, location: String },
    #[error(
        "the context holds more than {limit} bytes (reached at {location}); exclude files or \
         raise the limit"
    )]
    TooLarge { limit: u64, location: String },
    #[error("{origin}: {reason}")]
    Archive { origin: String, reason: String },
    /// An entry of an uploaded context that cannot go into an image; `location` names it and
    /// the claim it is in.
    #[error("{location} {reason}")]
    UploadEntry { location: String, reason: String },
    #[error("{origin}: the archive entry {entry} {reason}")]
    ArchiveEntry {
        origin: String,
        entry: String,
        reason: String,
    },
    #[error("{origin}: invalid pattern `{pattern}`: {reason}")]
    Pattern {
        origin: String,
        pattern: String,
        reason: String,
    },
    #[error("{origin}: a .dockerignore must be UTF-8 text")]
    NotText { origin: String },
    #[error("{} changed while the context was read; build again", path.display())]
    Changed { path: PathBuf },
}

impl ContextError {
    /// CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } | Self::TooManyEntries { .. } => "ContextTooLarge",
            _ => "InvalidContext",
        }
    }

    /// Every context failure is the input's; one that changed while it was read may pass.
    pub fn category(&self) -> Category {
        match self {
            Self::Changed { .. } => Category::transient(FailureKind::Input),
            _ => Category::permanent(FailureKind::Input),
        }
    }
}
