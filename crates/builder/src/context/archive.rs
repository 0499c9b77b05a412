//! Unpacking a tar or tar.gz item into the tree, with the rules of a directory context.

use std::io::Read;

use bytes::Bytes;
use tar::EntryType;

use super::tree::{self, MODE_EXECUTABLE, MODE_SYMLINK, TreeBuilder};
use super::{Content, ContextError, ContextItem, Entry, EntryKind, ExcludeRules};

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
        let kind = entry.header().entry_type();
        // Global PAX headers carry metadata only (git archive writes one).
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw_name = entry.path_bytes().into_owned();
        let Some(name) = self.entry_name(&raw_name)? else {
            return Ok(());
        };
        let path = if self.dir.is_empty() {
            name.clone()
        } else {
            format!("{}/{name}", self.dir)
        };
        if self.rules.excludes(&path) {
            return Ok(());
        }
        let origin = format!("{} entry {}", self.item.source, tree::escaped(&name));
        let entry = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let mode = entry.header().mode().map_err(|e| self.unreadable(e))?;
                let data = self.read_data(&mut entry, &name)?;
                Entry {
                    path,
                    mode: tree::normalised_file_mode(mode),
                    kind: EntryKind::File {
                        size: data.len() as u64,
                        content: Content::Bytes(data),
                    },
                }
            }
            EntryType::Directory => Entry {
                path,
                mode: MODE_EXECUTABLE,
                kind: EntryKind::Directory,
            },
            EntryType::Symlink => self.symlink(&entry, path, &name)?,
            other => return Err(self.refused(&name, refusal(other))),
        };
        self.tree.insert(entry, &origin)
    }

    /// The entry's name relative to the archive root, `None` for the root itself.
    fn entry_name(&self, raw: &[u8]) -> Result<Option<String>, ContextError> {
        let name = std::str::from_utf8(raw).map_err(|_| ContextError::ArchiveEntry {
            origin: self.item.source.clone(),
            entry: format!("\"{}\"", raw.escape_ascii()),
            reason: "has a name that is not valid UTF-8".into(),
        })?;
        let mut name = name.trim_end_matches('/');
        while let Some(rest) = name.strip_prefix("./") {
            name = rest.trim_start_matches('/');
        }
        if name.is_empty() || name == "." {
            return Ok(None);
        }
        match tree::path_problem(name) {
            Some(problem) => Err(self.refused(name, problem)),
            None => Ok(Some(name.to_owned())),
        }
    }

    fn read_data(
        &self,
        entry: &mut tar::Entry<'_, impl Read>,
        name: &str,
    ) -> Result<Bytes, ContextError> {
        let size = entry.size();
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
            return Err(self.refused(name, "is cut short: the archive is truncated".into()));
        }
        Ok(Bytes::from(data))
    }

    fn symlink(
        &self,
        entry: &tar::Entry<'_, impl Read>,
        path: String,
        name: &str,
    ) -> Result<Entry, ContextError> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| self.refused(name, "is a symlink without a target".into()))?;
        let target = std::str::from_utf8(&raw).map_err(|_| {
            self.refused(name, "is a symlink whose target is not valid UTF-8".into())
        })?;
        if let Some(problem) = tree::link_target_problem(target) {
            return Err(self.refused(name, problem.into()));
        }
        if !tree::symlink_stays_inside(&path, target) {
            return Err(self.refused(
                name,
                format!("is a symlink to `{target}`, which leaves the context"),
            ));
        }
        Ok(Entry {
            path,
            mode: MODE_SYMLINK,
            kind: EntryKind::Symlink {
                target: target.to_owned(),
            },
        })
    }

    fn refused(&self, name: &str, reason: String) -> ContextError {
        ContextError::ArchiveEntry {
            origin: self.item.source.clone(),
            entry: tree::escaped(name),
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

fn refusal(kind: EntryType) -> String {
    let what = match kind {
        EntryType::Link => "a hard link; archive the file itself instead",
        EntryType::Char => "a character device",
        EntryType::Block => "a block device",
        EntryType::Fifo => "a named pipe (fifo)",
        EntryType::GNUSparse => "a sparse file",
        _ => "of a kind that cannot go into an image",
    };
    format!("is {what}; only regular files, directories and symlinks are allowed")
}
