//! The local image store: one OCI image layout (by default `$XDG_DATA_HOME/imagebuild`) where
//! `imagebuild build` keeps what it built, each image under its full name
//! (`host/owner/name:tag`, the `org.opencontainers.image.ref.name` of its `index.json` entry),
//! with blobs shared between names.
//!
//! The lock rule: commands that change the store (`add`, `tag`, `remove`) hold the store's lock
//! file exclusively; commands that use its blobs (`images`, `save` for the whole archive, a push
//! of a stored image for the whole upload through [`Store::read_lock`]) hold it shared. So two
//! commands may write at once, readers do not wait for each other, and `rmi` never deletes a
//! blob while another command is reading it. Blobs go in through a temporary file and a rename,
//! `index.json` is replaced by a rename, and `rmi` removes only blobs no remaining name needs.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::layout::{self, LayoutError};
use crate::oci::{ANNOTATION_REF_NAME, Built, Descriptor, Digest};
use crate::reference::{ImageRef, ReferenceError};

/// Environment variable naming the store directory (tests, or a store per project).
pub const STORE_ENV: &str = "IMAGEBUILD_STORE";
const LOCK_FILE: &str = "lock";
/// Layers being built: inside the store, so finished blobs are on the same file system.
const SCRATCH_DIR: &str = "tmp";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no place for the local image store: set {STORE_ENV}, XDG_DATA_HOME or HOME (or use --output DIR or --push)"
    )]
    NoLocation,
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("`{reference}` is not an image name: {source}")]
    Name {
        reference: String,
        source: ReferenceError,
    },
    #[error("`{reference}` names a digest; local images have names like host/owner/name:tag")]
    DigestName { reference: String },
    #[error("no local image `{name}` (in {}); `imagebuild images` lists them", store.display())]
    NotFound { name: String, store: PathBuf },
}

impl StoreError {
    /// Whether the user named something the store does not hold or cannot hold.
    pub fn is_input(&self) -> bool {
        matches!(self, Self::Name { .. } | Self::DigestName { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// The full name an image is stored under: `host/owner/name:tag`, `latest` when no tag is
/// given, Docker Hub when no host is (as `docker` reads names).
pub fn image_name(reference: &str) -> Result<String, StoreError> {
    let parsed = ImageRef::parse(reference).map_err(|source| StoreError::Name {
        reference: reference.to_owned(),
        source,
    })?;
    if parsed.digest.is_some() {
        return Err(StoreError::DigestName {
            reference: reference.to_owned(),
        });
    }
    let tag = parsed.tag.as_deref().unwrap_or("latest");
    Ok(format!("{}/{}:{tag}", parsed.registry, parsed.repository))
}

/// One name in the store and what it points at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredImage {
    pub name: String,
    pub digest: String,
    /// Bytes of configs and layers, each blob counted once.
    pub size: u64,
    /// The image's creation time (RFC 3339) as its config records it.
    pub created: Option<String>,
    /// `os/arch[/variant]` of each image (several for an image index).
    pub platforms: Vec<String>,
}

/// What `rmi` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    pub digest: Digest,
    /// Blobs no remaining name needed, now deleted.
    pub blobs_deleted: usize,
    pub bytes_freed: u64,
}

/// The local image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A hold on the store's lock file, released when dropped: exclusive while `index.json` is
/// changed and unused blobs deleted, shared while blobs are read (see the module's lock rule).
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] fs::File);

/// How a [`StoreLock`] holds the lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockMode {
    /// Readers: many at once; writers wait.
    Shared,
    /// A writer alone.
    Exclusive,
}

impl Store {
    /// `$IMAGEBUILD_STORE`, else `$XDG_DATA_HOME/imagebuild`, else
    /// `~/.local/share/imagebuild`.
    pub fn default_location() -> Result<PathBuf, StoreError> {
        let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = set(STORE_ENV) {
            return Ok(PathBuf::from(dir));
        }
        if let Some(dir) = set("XDG_DATA_HOME") {
            return Ok(PathBuf::from(dir).join("imagebuild"));
        }
        set("HOME")
            .map(|home| PathBuf::from(home).join(".local/share/imagebuild"))
            .ok_or(StoreError::NoLocation)
    }

    /// The store at its default location.
    pub fn open_default() -> Result<Self, StoreError> {
        Ok(Self::open(Self::default_location()?))
    }

    /// The store at `root` (created on its first write).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh directory for a build's layer, removed when dropped.
    pub fn scratch(&self) -> Result<tempfile::TempDir, StoreError> {
        let dir = self.root.join(SCRATCH_DIR);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&dir)
            .map_err(io("create a directory in", &dir))
    }

    /// Stores `built` under each of `names` (full names; a name already there moves to it).
    /// The image's blobs must be in files or bytes (base layers fetched).
    pub fn add(&self, built: &Built, names: &[String]) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        layout::write(&self.root, built, names)?;
        Ok(())
    }

    /// The images of the store, one per name, in the order they were stored.
    pub fn images(&self) -> Result<Vec<StoredImage>, StoreError> {
        let _reading = self.read_lock()?;
        let index = layout::read_index(&self.root)?;
        index
            .manifests
            .iter()
            .filter_map(|entry| entry.annotations.get(ANNOTATION_REF_NAME))
            .map(|name| self.describe(name))
            .collect()
    }

    /// A shared lock on the store: `add`, `tag` and `remove` wait until it is dropped, other
    /// readers do not. Hold it for as long as blobs of the store are used (a push's upload).
    pub fn read_lock(&self) -> Result<StoreLock, StoreError> {
        self.lock_as(LockMode::Shared)
    }

    /// The image stored as `name` (a full name or anything [`image_name`] completes). Its
    /// layers are files of the store, so the caller holds a [`Store::read_lock`] (`_reading`)
    /// for as long as it uses them.
    pub fn read(&self, name: &str, _reading: &StoreLock) -> Result<Built, StoreError> {
        let name = image_name(name)?;
        self.entry(&name)?;
        Ok(layout::read(&self.root, Some(&name))?)
    }

    /// Whether `reference` names an image in the store.
    pub fn contains(&self, reference: &str) -> bool {
        image_name(reference).is_ok_and(|name| self.entry(&name).is_ok())
    }

    /// Gives the image named `source` the name `target` as well; returns its digest.
    pub fn tag(&self, source: &str, target: &str) -> Result<Digest, StoreError> {
        let (source, target) = (image_name(source)?, image_name(target)?);
        let _lock = self.lock()?;
        let mut index = layout::read_index(&self.root)?;
        let mut entry = find(&index.manifests, &source)
            .cloned()
            .ok_or_else(|| self.not_found(&source))?;
        entry
            .annotations
            .insert(ANNOTATION_REF_NAME.to_owned(), target.clone());
        index.manifests.retain(|d| name_of(d) != Some(&target));
        let digest = entry.digest.clone();
        index.manifests.push(entry);
        layout::replace_index(&self.root, &index)?;
        Ok(digest)
    }

    /// Removes the name `name`, then every blob no remaining name needs.
    pub fn remove(&self, name: &str) -> Result<Removed, StoreError> {
        let name = image_name(name)?;
        let _lock = self.lock()?;
        let mut index = layout::read_index(&self.root)?;
        let digest = find(&index.manifests, &name)
            .map(|d| d.digest.clone())
            .ok_or_else(|| self.not_found(&name))?;
        index.manifests.retain(|d| name_of(d) != Some(&name));
        // What the remaining names need is worked out before anything changes, so a damaged
        // manifest stops the removal instead of deleting blobs still in use.
        let keep = self.referenced(&index.manifests)?;
        layout::replace_index(&self.root, &index)?;
        let (blobs_deleted, bytes_freed) = self.delete_blobs_except(&keep)?;
        Ok(Removed {
            name,
            digest,
            blobs_deleted,
            bytes_freed,
        })
    }

    /// Writes the image named `name` as an OCI archive: a tar of a layout holding it alone.
    /// Blobs are streamed from their files, under a shared lock until the archive is whole.
    pub fn save(&self, name: &str, archive: &Path) -> Result<Digest, StoreError> {
        let name = image_name(name)?;
        let _reading = self.read_lock()?;
        let index = layout::read_index(&self.root)?;
        let entry = find(&index.manifests, &name)
            .cloned()
            .ok_or_else(|| self.not_found(&name))?;
        let mut seen = HashSet::new();
        let blobs: Vec<Descriptor> = layout::blobs_of(&self.root, &entry)?
            .into_iter()
            .filter(|d| seen.insert(d.digest.clone()))
            .collect();
        let mut one = index.clone();
        one.manifests = vec![entry.clone()];
        let index_bytes = serde_json::to_vec(&one).map_err(|e| StoreError::Io {
            action: "write the index of",
            path: archive.to_owned(),
            source: e.into(),
        })?;
        let dir = archive
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let temp = tempfile::NamedTempFile::new_in(dir).map_err(io("write into", dir))?;
        let mut tar = tar::Builder::new(temp);
        let write = io("write", archive);
        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(&write)?;
        append_bytes(&mut tar, "index.json", &index_bytes).map_err(&write)?;
        // Directory entries too: some readers (oci-image-tool) look for them.
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = entry_header(0);
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut header, dir, std::io::empty())
                .map_err(&write)?;
        }
        for blob in &blobs {
            let path = self.blob_path(&blob.digest);
            let file = fs::File::open(&path).map_err(io("read", &path))?;
            let size = file.metadata().map_err(io("read", &path))?.len();
            let mut header = entry_header(size);
            let name = format!("blobs/sha256/{}", blob.digest.hex());
            tar.append_data(&mut header, name, file).map_err(&write)?;
        }
        let temp = tar.into_inner().map_err(&write)?;
        temp.persist(archive).map_err(|e| StoreError::Io {
            action: "write",
            path: archive.to_owned(),
            source: e.error,
        })?;
        Ok(entry.digest)
    }

    fn describe(&self, name: &str) -> Result<StoredImage, StoreError> {
        let built = layout::read(&self.root, Some(name))?;
        let configs: Vec<serde_json::Value> = built
            .images()
            .iter()
            .filter_map(|image| match &image.config.location {
                crate::oci::BlobLocation::Bytes(bytes) => serde_json::from_slice(bytes).ok(),
                _ => None,
            })
            .collect();
        let text = |config: &serde_json::Value, key: &str| {
            config.get(key).and_then(|v| v.as_str()).map(str::to_owned)
        };
        let platforms = configs
            .iter()
            .filter_map(|config| {
                let mut platform =
                    format!("{}/{}", text(config, "os")?, text(config, "architecture")?);
                if let Some(variant) = text(config, "variant") {
                    platform = format!("{platform}/{variant}");
                }
                Some(platform)
            })
            .collect();
        Ok(StoredImage {
            name: name.to_owned(),
            digest: built.digest().to_string(),
            size: built.size(),
            created: configs.first().and_then(|c| text(c, "created")),
            platforms,
        })
    }

    fn entry(&self, name: &str) -> Result<Descriptor, StoreError> {
        let index = layout::read_index(&self.root)?;
        find(&index.manifests, name)
            .cloned()
            .ok_or_else(|| self.not_found(name))
    }

    fn not_found(&self, name: &str) -> StoreError {
        StoreError::NotFound {
            name: name.to_owned(),
            store: self.root.clone(),
        }
    }

    /// The exclusive lock of a change.
    fn lock(&self) -> Result<StoreLock, StoreError> {
        self.lock_as(LockMode::Exclusive)
    }

    /// Waits for the store's lock file in `mode` (creating the store and the file if need be).
    fn lock_as(&self, mode: LockMode) -> Result<StoreLock, StoreError> {
        fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let path = self.root.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let locked = match mode {
            LockMode::Shared => file.lock_shared(),
            LockMode::Exclusive => file.lock(),
        };
        locked.map_err(io("lock", &path))?;
        Ok(StoreLock(file))
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// Digests of every blob the entries need.
    fn referenced(&self, entries: &[Descriptor]) -> Result<BTreeSet<String>, StoreError> {
        let mut keep = BTreeSet::new();
        for entry in entries {
            for blob in layout::blobs_of(&self.root, entry)? {
                keep.insert(blob.digest.hex().to_owned());
            }
        }
        Ok(keep)
    }

    /// Deletes the blobs not in `keep`; leaves anything that is not a blob (temporary files)
    /// alone. Returns how many it deleted and their bytes.
    fn delete_blobs_except(&self, keep: &BTreeSet<String>) -> Result<(usize, u64), StoreError> {
        let dir = self.root.join("blobs").join("sha256");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(io("read", &dir)(e)),
        };
        let (mut count, mut bytes) = (0, 0);
        for entry in entries {
            let entry = entry.map_err(io("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_blob || keep.contains(&name) {
                continue;
            }
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io("delete", &path))?;
            count += 1;
            bytes += size;
        }
        Ok((count, bytes))
    }
}

fn name_of(descriptor: &Descriptor) -> Option<&String> {
    descriptor.annotations.get(ANNOTATION_REF_NAME)
}

/// The entry named `name` (the last one, should a name appear twice).
fn find<'a>(entries: &'a [Descriptor], name: &str) -> Option<&'a Descriptor> {
    entries
        .iter()
        .rfind(|d| name_of(d).is_some_and(|n| n == name))
}

fn entry_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append_bytes(
    tar: &mut tar::Builder<tempfile::NamedTempFile>,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = entry_header(bytes.len() as u64);
    tar.append_data(&mut header, name, bytes)
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
