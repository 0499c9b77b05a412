//! The receiver: the controller unpacks an uploaded context with the rules of a local directory
//! context, trusting nothing in the stream.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tar::EntryType;

use crate::context::{
    Content, ContextError, ContextOptions, DOCKERIGNORE, Entry, EntryKind, ExcludeRules,
    TreeBuilder, dockerignore_patterns, escaped, link_target_problem, normalised_file_mode,
    path_problem, symlink_stays_inside,
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
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let Some(name) = self.name(&raw)? else {
            return Ok(());
        };
        let mode = entry.header().mode().map_err(ReceiveError::Interrupted)?;
        if self.rules.is_none() {
            let dockerignore = name == DOCKERIGNORE
                && kind == EntryType::Regular
                && self.options.context.honour_dockerignore;
            let text = if dockerignore {
                Some(self.read_dockerignore(&mut entry)?)
            } else {
                None
            };
            self.rules = Some(self.exclude_rules(text.as_deref())?);
            if let Some(text) = text {
                // Written even when a pattern excludes it: the builder reads it from disk.
                return self.write_file(&name, mode, &mut text.as_bytes(), text.len() as u64);
            }
        }
        let excluded = self.rules.as_ref().is_some_and(|r| r.excludes(&name));
        let walked_anyway = self.rules.as_ref().is_some_and(|r| r.has_exceptions());
        match kind {
            EntryType::Directory if excluded && !walked_anyway => Ok(()),
            EntryType::Directory => self.directory(&name),
            _ if excluded => Ok(()),
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                self.write_file(&name, mode, &mut entry, size)
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.symlink(&name, target.as_deref())
            }
            other => Err(ContextError::SpecialFile {
                location: self.location(&name),
                kind: special_kind(other),
            }
            .into()),
        }
    }

    /// The entry's path relative to the context root, checked; `None` for the root itself.
    fn name(&self, raw: &[u8]) -> Result<Option<String>, ReceiveError> {
        let name = std::str::from_utf8(raw).map_err(|_| ContextError::InvalidName {
            location: self.options.origin.clone(),
            name: format!("\"{}\"", raw.escape_ascii()),
            reason: "is not valid UTF-8",
        })?;
        let mut name = name.trim_end_matches('/');
        while let Some(rest) = name.strip_prefix("./") {
            name = rest;
        }
        if name.is_empty() || name == "." {
            return Ok(None);
        }
        match path_problem(name) {
            Some(reason) => Err(ContextError::InvalidPath {
                origin: self.options.origin.clone(),
                path: escaped(name),
                reason,
            }
            .into()),
            None => Ok(Some(name.to_owned())),
        }
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

    fn symlink(&mut self, name: &str, target: Option<&[u8]>) -> Result<(), ReceiveError> {
        let location = self.location(name);
        let invalid = |name: String, reason| ContextError::InvalidName {
            location: location.clone(),
            name,
            reason,
        };
        let raw = target.unwrap_or_default();
        let target = std::str::from_utf8(raw).map_err(|_| {
            invalid(
                format!("\"{}\"", raw.escape_ascii()),
                "is a symlink target that is not valid UTF-8",
            )
        })?;
        if let Some(reason) = link_target_problem(target) {
            return Err(invalid(escaped(target), reason).into());
        }
        if !symlink_stays_inside(name, target) {
            return Err(ContextError::SymlinkEscapes {
                location,
                target: target.to_owned(),
            }
            .into());
        }
        let kind = EntryKind::Symlink {
            target: target.to_owned(),
        };
        let path = self.admit(name, 0o777, kind)?;
        std::os::unix::fs::symlink(target, &path)
            .map_err(|source| ReceiveError::Write { path, source })
    }
}

fn special_kind(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Fifo => "named pipe (fifo)",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Link => "hard link (the sender never sends one)",
        EntryType::GNUSparse => "sparse file entry",
        _ => "special file",
    }
}
