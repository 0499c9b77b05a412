//! The receiver: the controller unpacks an uploaded context with the rules of a local directory
//! context, trusting nothing in the stream. Which entries are accepted is decided by the
//! builder's `context::tar_entry`, the rules ConfigMap archives are read with too.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::context::tar_entry::{self, EntryName, TarEntry, TarEntryError};
use crate::context::{
    Content, ContextError, ContextOptions, DOCKERIGNORE, Entry, EntryKind, ExcludeRules,
    MODE_SYMLINK, TreeBuilder, dockerignore_patterns, escaped, normalised_file_mode,
};

use super::{Counts, MAX_ENTRIES};

/// Largest `.dockerignore` read into memory to learn the exclusions.
const MAX_DOCKERIGNORE: u64 = 1 << 20;

/// Mode of the directories and files the receiver creates before it sets their final mode.
const PRIVATE_FILE: u32 = 0o600;

/// How the controller unpacks one upload.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// `spec.exclude`, `.dockerignore` and the limits: the build's own context options.
    pub context: ContextOptions,
    /// Where the files come from, for messages, e.g. `PersistentVolumeClaim default/src`.
    pub origin: String,
    /// The subPath, so messages show paths as they are in the claim.
    pub sub_path: String,
}

/// Why an upload could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The files cannot go into an image: the message names the path and what to do.
    #[error(transparent)]
    Refused(#[from] ContextError),
    /// The stream ended early or is not a tar stream.
    #[error("the upload broke off: {0}")]
    Interrupted(#[source] io::Error),
    /// The controller's work directory could not take the files.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Unpacks the tar stream `from` into the new directory `into`; see the module documentation
/// for what is refused. Returns what was written.
pub fn receive(
    from: impl Read,
    into: &Path,
    options: &ReceiveOptions,
) -> Result<Counts, ReceiveError> {
    fs::create_dir_all(into).map_err(|source| ReceiveError::Write {
        path: into.to_owned(),
        source,
    })?;
    let mut limits = options.context.clone();
    limits.max_entries = Some(limits.max_entries.unwrap_or(MAX_ENTRIES).min(MAX_ENTRIES));
    let mut unpacker = Unpacker {
        into,
        options,
        tree: TreeBuilder::new(&limits),
        rules: None,
        counts: Counts::default(),
    };
    let mut archive = tar::Archive::new(from);
    for entry in archive.entries().map_err(ReceiveError::Interrupted)? {
        let entry = entry.map_err(ReceiveError::Interrupted)?;
        unpacker.entry(entry)?;
    }
    Ok(unpacker.counts)
}

struct Unpacker<'a> {
    into: &'a Path,
    options: &'a ReceiveOptions,
    tree: TreeBuilder,
    /// Known once the first entry has arrived (a `.dockerignore` comes first if there is one).
    rules: Option<ExcludeRules>,
    counts: Counts,
}

impl Unpacker<'_> {
    fn entry(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<(), ReceiveError> {
        let read = tar_entry::read(&entry).map_err(|e| match e {
            TarEntryError::Refused { name, reason } => self.refused(&name, reason),
            TarEntryError::Unreadable(e) => ReceiveError::Interrupted(e),
        })?;
        let Some(name) = read.name().map(str::to_owned) else {
            return Ok(());
        };
        if self.rules.is_none() {
            let dockerignore = matches!(read, TarEntry::File { .. })
                && name == DOCKERIGNORE
                && self.options.context.honour_dockerignore;
            let text = if dockerignore {
                Some(self.read_dockerignore(&mut entry)?)
            } else {
                None
            };
            self.rules = Some(self.exclude_rules(text.as_deref())?);
            if let (Some(text), TarEntry::File { mode, .. }) = (text, &read) {
                // Written even when a pattern excludes it: the builder reads it from disk.
                return self.write_file(&name, *mode, &mut text.as_bytes(), text.len() as u64);
            }
        }
        let excluded = self.rules.as_ref().is_some_and(|r| r.excludes(&name));
        let walked_anyway = self.rules.as_ref().is_some_and(|r| r.has_exceptions());
        match read {
            TarEntry::Nothing => Ok(()),
            TarEntry::Directory { .. } if excluded && !walked_anyway => Ok(()),
            TarEntry::Directory { .. } => self.directory(&name),
            _ if excluded => Ok(()),
            TarEntry::File { mode, size, .. } => self.write_file(&name, mode, &mut entry, size),
            TarEntry::Symlink { target, .. } => self.symlink(&name, target),
            TarEntry::Special { reason, .. } => Err(self.refused(&EntryName::Text(name), reason)),
        }
    }

    fn refused(&self, name: &EntryName, reason: String) -> ReceiveError {
        ContextError::UploadEntry {
            location: format!(
                "{} in {}",
                name.shown(&self.options.sub_path),
                self.options.origin
            ),
            reason,
        }
        .into()
    }

    /// Shows `name` as it is in the claim, and where it is.
    fn location(&self, name: &str) -> String {
        let sub = &self.options.sub_path;
        let path = if sub.is_empty() {
            name.to_owned()
        } else {
            format!("{sub}/{name}")
        };
        format!("{} in {}", escaped(&path), self.options.origin)
    }

    fn read_dockerignore(
        &self,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<String, ReceiveError> {
        if entry.size() > MAX_DOCKERIGNORE {
            return Err(ContextError::TooLarge {
                limit: MAX_DOCKERIGNORE,
                location: self.location(DOCKERIGNORE),
            }
            .into());
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(ReceiveError::Interrupted)?;
        String::from_utf8(data).map_err(|_| {
            ContextError::NotText {
                origin: self.location(DOCKERIGNORE),
            }
            .into()
        })
    }

    /// `.dockerignore` patterns first, then `spec.exclude`, as a local build applies them.
    fn exclude_rules(&self, dockerignore: Option<&str>) -> Result<ExcludeRules, ReceiveError> {
        let mut rules = ExcludeRules::default();
        if let Some(text) = dockerignore {
            rules.extend(DOCKERIGNORE, dockerignore_patterns(text))?;
        }
        let exclude = &self.options.context.exclude;
        rules.extend("exclude", exclude.iter().map(String::as_str))?;
        Ok(rules)
    }

    /// Records the entry (duplicates, limits, parents that must be directories) and creates its
    /// parent directories: every one is a directory this upload made, never a symlink.
    fn admit(&mut self, name: &str, mode: u32, kind: EntryKind) -> Result<PathBuf, ReceiveError> {
        let entry = Entry {
            path: name.to_owned(),
            mode,
            kind,
        };
        self.tree.insert(entry, &self.location(name))?;
        self.counts.entries += 1;
        let path = self.into.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| ReceiveError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        Ok(path)
    }

    fn directory(&mut self, name: &str) -> Result<(), ReceiveError> {
        let path = self.admit(name, 0o755, EntryKind::Directory)?;
        match fs::create_dir(&path) {
            Ok(()) => Ok(()),
            // Implied by an earlier entry below it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            Err(source) => Err(ReceiveError::Write { path, source }),
        }
    }

    fn write_file(
        &mut self,
        name: &str,
        mode: u32,
        data: &mut impl Read,
        size: u64,
    ) -> Result<(), ReceiveError> {
        let kind = EntryKind::File {
            size,
            content: Content::Bytes(Bytes::new()),
        };
        let path = self.admit(name, normalised_file_mode(mode), kind)?;
        let written = |source| ReceiveError::Write {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(written)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut copied: u64 = 0;
        loop {
            let n = data.read(&mut buf).map_err(ReceiveError::Interrupted)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(written)?;
            copied += n as u64;
        }
        if copied != size {
            return Err(ReceiveError::Interrupted(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} is cut short", self.location(name)),
            )));
        }
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(normalised_file_mode(mode)),
        )
        .map_err(written)?;
        self.counts.bytes += size;
        Ok(())
    }

    /// Creates the link as it came, never following it: nothing is ever written below a link
    /// (the tree refuses such an entry), and files are created with `O_EXCL`.
    fn symlink(&mut self, name: &str, target: String) -> Result<(), ReceiveError> {
        let path = self.admit(
            name,
            MODE_SYMLINK,
            EntryKind::Symlink {
                target: target.clone(),
            },
        )?;
        std::os::unix::fs::symlink(&target, &path)
            .map_err(|source| ReceiveError::Write { path, source })
    }
}
