//! Unpacking a tar or tar.gz item into the tree. Which entries are accepted is decided in
//! [`tar_entry`], the rules uploaded PVC contexts are read with too.

use std::io::Read;

use super::tar_entry::{self, TarEntry, TarEntryError};
use super::tree::{self, MODE_EXECUTABLE, MODE_SYMLINK, TreeBuilder};
use super::{Content, ContextError, ContextItem, Entry, EntryKind, ExcludeRules};
use bytes::Bytes;

/// The largest read buffer reserved up front for one entry; bigger entries grow as they read.
const MAX_PREALLOCATION: u64 = 8 << 20;

/// Unpacks `item.data` under `dir` (`""` for the root) into `tree`.
pub fn unpack(
    item: &ContextItem,
    dir: &str,
    rules: &ExcludeRules,
    tree: &mut TreeBuilder,
) -> Result<(), ContextError> {
    let data = item.data.clone();
    if data.starts_with(&[0x1f, 0x8b]) {
        let reader = flate2::read::MultiGzDecoder::new(std::io::Cursor::new(data));
        Unpacker {
            item,
            dir,
            rules,
            tree,
        }
        .run(reader)
    } else {
        Unpacker {
            item,
            dir,
            rules,
            tree,
        }
        .run(std::io::Cursor::new(data))
    }
}

struct Unpacker<'a> {
    item: &'a ContextItem,
    dir: &'a str,
    rules: &'a ExcludeRules,
    tree: &'a mut TreeBuilder,
}

impl Unpacker<'_> {
    fn run(mut self, reader: impl Read) -> Result<(), ContextError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.unreadable(e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.unreadable(e))?;
            self.entry(entry)?;
        }
        Ok(())
    }

    fn entry(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<(), ContextError> {
        let read = tar_entry::read(&entry).map_err(|e| self.refused(e))?;
        let Some(name) = read.name() else {
            return Ok(());
        };
        let path = if self.dir.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.dir)
        };
        if self.rules.excludes(&path) {
            return Ok(());
        }
        let origin = format!("{} entry {}", self.item.source, tree::escaped(name));
        let (mode, kind) = match read {
            TarEntry::Nothing => return Ok(()),
            TarEntry::File { name, mode, size } => {
                let data = self.read_data(&mut entry, &name, size)?;
                let kind = EntryKind::File {
                    size,
                    content: Content::Bytes(data),
                };
                (tree::normalised_file_mode(mode), kind)
            }
            TarEntry::Directory { .. } => (MODE_EXECUTABLE, EntryKind::Directory),
            TarEntry::Symlink { target, .. } => (MODE_SYMLINK, EntryKind::Symlink { target }),
            TarEntry::Special { name, reason } => {
                return Err(self.refused_entry(tree::escaped(&name), reason));
            }
        };
        self.tree.insert(Entry { path, mode, kind }, &origin)
    }

    fn read_data(
        &self,
        entry: &mut tar::Entry<'_, impl Read>,
        name: &str,
        size: u64,
    ) -> Result<Bytes, ContextError> {
        // Refuse an archive bomb before reading it, not after.
        if let Some(left) = self.tree.bytes_left()
            && size > left
        {
            return Err(ContextError::TooLarge {
                limit: left,
                location: format!("{} entry {}", self.item.source, tree::escaped(name)),
            });
        }
        let mut data = Vec::with_capacity(size.min(MAX_PREALLOCATION) as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| self.unreadable(e))?;
        if data.len() as u64 != size {
            return Err(self.refused_entry(
                tree::escaped(name),
                "is cut short: the archive is truncated".into(),
            ));
        }
        Ok(Bytes::from(data))
    }

    fn refused(&self, error: TarEntryError) -> ContextError {
        match error {
            TarEntryError::Refused { name, reason } => self.refused_entry(name.shown(""), reason),
            TarEntryError::Unreadable(e) => self.unreadable(e),
        }
    }

    fn refused_entry(&self, entry: String, reason: String) -> ContextError {
        ContextError::ArchiveEntry {
            origin: self.item.source.clone(),
            entry,
            reason,
        }
    }

    fn unreadable(&self, e: std::io::Error) -> ContextError {
        ContextError::Archive {
            origin: self.item.source.clone(),
            reason: format!("is not a readable tar or tar.gz archive: {e}"),
        }
    }
}
