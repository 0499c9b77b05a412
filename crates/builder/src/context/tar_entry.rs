//! The one rule set for reading an entry of a tar stream someone else wrote: ConfigMap archives
//! (`archive.rs`) and the contexts reader Pods upload (imagebuild's `transfer::receive`) both
//! read their entries here, so a name, a link or a special file is accepted or refused the same
//! way whichever road the files took.
//!
//! - An entry is a regular file, a directory or a symlink; hard links, devices, fifos and sparse
//!   files are refused unless excluded.
//! - Its name is a relative UTF-8 path of plain segments. Leading `./` (and `.//`) is dropped,
//!   as `tar -C dir .` writes it; `..`, absolute names and control characters are refused.
//! - A symlink's target is kept as written and never followed: relative or absolute, inside the
//!   context or climbing out of it, it resolves inside the image (Docker and BuildKit store such
//!   links the same way). Only an empty target or one with a control character is refused.
//! - PAX headers carry metadata only and are skipped.
//!
//! What stays with the callers: where the entry lands (a prefix directory, exclusions), and how
//! its data is read (into memory, or to disk by a receiver that never writes through a link,
//! which the [`TreeBuilder`](super::TreeBuilder) guarantees by refusing an entry below a link).

use std::io::Read;

use tar::EntryType;

use super::tree;

/// What one tar entry holds, its name checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEntry {
    /// Nothing to store: a PAX header, or the archive's root directory (`./`).
    Nothing,
    Directory {
        name: String,
    },
    /// A regular file of `size` bytes; its data follows in the stream.
    File {
        name: String,
        mode: u32,
        size: u64,
    },
    Symlink {
        name: String,
        target: String,
    },
    /// A hard link, device, fifo or sparse file: refused with `reason` ("is a named pipe
    /// (fifo); ...") unless an exclusion drops it first, as in a directory context.
    Special {
        name: String,
        reason: String,
    },
}

impl TarEntry {
    /// The checked name, `None` for [`TarEntry::Nothing`].
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Nothing => None,
            Self::Directory { name }
            | Self::File { name, .. }
            | Self::Symlink { name, .. }
            | Self::Special { name, .. } => Some(name),
        }
    }
}

/// Why an entry cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TarEntryError {
    /// The entry cannot go into an image. `reason` completes "the entry `name` ...".
    #[error("{} {reason}", name.shown(""))]
    Refused { name: EntryName, reason: String },
    /// The stream is not a readable tar stream.
    #[error("{0}")]
    Unreadable(#[source] std::io::Error),
}

/// An entry's name as it was in the stream, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryName {
    Text(String),
    /// Not valid UTF-8.
    Bytes(Vec<u8>),
}

impl EntryName {
    /// The name quoted for people, below `prefix` (a directory, or `""`); unprintable bytes are
    /// escaped.
    pub fn shown(&self, prefix: &str) -> String {
        let joined = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            }
        };
        match self {
            Self::Text(name) => tree::escaped(&joined(name)),
            Self::Bytes(raw) => format!("\"{}\"", joined(&raw.escape_ascii().to_string())),
        }
    }
}

/// Reads the header of `entry` under the rules above. File data is left in the stream.
pub fn read<R: Read>(entry: &tar::Entry<'_, R>) -> Result<TarEntry, TarEntryError> {
    let kind = entry.header().entry_type();
    if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
        return Ok(TarEntry::Nothing);
    }
    let raw = entry.path_bytes();
    let Some(name) = entry_name(&raw)? else {
        return Ok(TarEntry::Nothing);
    };
    let refused = |reason: String| TarEntryError::Refused {
        name: EntryName::Text(name.clone()),
        reason,
    };
    match kind {
        EntryType::Regular | EntryType::Continuous => {
            let mode = entry.header().mode().map_err(TarEntryError::Unreadable)?;
            Ok(TarEntry::File {
                mode,
                size: entry.size(),
                name,
            })
        }
        EntryType::Directory => Ok(TarEntry::Directory { name }),
        EntryType::Symlink => {
            let raw = entry
                .link_name_bytes()
                .ok_or_else(|| refused("is a symlink without a target".into()))?;
            let target = std::str::from_utf8(&raw).map_err(|_| {
                refused(format!(
                    "is a symlink whose target \"{}\" is not valid UTF-8",
                    raw.escape_ascii()
                ))
            })?;
            if let Some(problem) = tree::link_target_problem(target) {
                return Err(refused(format!("is a symlink that {problem}")));
            }
            Ok(TarEntry::Symlink {
                target: target.to_owned(),
                name,
            })
        }
        other => Ok(TarEntry::Special {
            reason: special_kind(other),
            name,
        }),
    }
}

/// The entry's name relative to the stream's root; `None` for the root itself.
fn entry_name(raw: &[u8]) -> Result<Option<String>, TarEntryError> {
    let name = std::str::from_utf8(raw).map_err(|_| TarEntryError::Refused {
        name: EntryName::Bytes(raw.to_vec()),
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
        Some(problem) => Err(TarEntryError::Refused {
            name: EntryName::Text(name.to_owned()),
            reason: problem,
        }),
        None => Ok(Some(name.to_owned())),
    }
}

fn special_kind(kind: EntryType) -> String {
    let what = match kind {
        EntryType::Link => "a hard link; archive the file itself instead",
        EntryType::Char => "a character device",
        EntryType::Block => "a block device",
        EntryType::Fifo => "a named pipe (fifo)",
        EntryType::GNUSparse => "a sparse file",
        _ => "of a kind that cannot go into an image",
    };
    format!("is {what}; only regular files, directories and symlinks can go into an image")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-entry tar stream written header by header, so hostile names get through.
    fn stream(name: &[u8], kind: EntryType, link: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(0);
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn read_one(name: &[u8], kind: EntryType, link: &[u8]) -> Result<TarEntry, String> {
        let data = stream(name, kind, link);
        let mut archive = tar::Archive::new(&data[..]);
        let mut entries = archive.entries().map_err(|e| e.to_string())?;
        let entry = entries
            .next()
            .ok_or("no entry")?
            .map_err(|e| e.to_string())?;
        read(&entry).map_err(|e| e.to_string())
    }

    #[test]
    fn names_are_normalised_and_the_root_is_nothing() {
        let file = |name: &str| TarEntry::File {
            name: name.into(),
            mode: 0o644,
            size: 0,
        };
        let cases: [(&[u8], TarEntry); 5] = [
            (b"a.txt", file("a.txt")),
            (b"./a.txt", file("a.txt")),
            (b".//a/b.txt", file("a/b.txt")),
            (b"././c", file("c")),
            (b"./", TarEntry::Nothing),
        ];
        for (name, expected) in cases {
            let kind = if name.ends_with(b"/") {
                EntryType::Directory
            } else {
                EntryType::Regular
            };
            assert_eq!(read_one(name, kind, b""), Ok(expected), "{name:?}");
        }
    }

    #[test]
    fn names_that_climb_out_or_are_absolute_or_not_text_are_refused_naming_them() {
        let cases: [(&[u8], &str); 4] = [
            (b"../evil", "\"../evil\" has a `.` or `..` segment"),
            (b"a/../../b", "\"a/../../b\" has a `.` or `..` segment"),
            (b"/etc/passwd", "\"/etc/passwd\" is absolute"),
            (
                b"bad-\xff",
                "\"bad-\\xff\" has a name that is not valid UTF-8",
            ),
        ];
        for (name, words) in cases {
            let message = read_one(name, EntryType::Regular, b"").expect_err("refused");
            assert!(message.starts_with(words), "{message}");
        }
    }

    #[test]
    fn symlinks_keep_their_target_wherever_it_points() {
        for target in ["../../etc/passwd", "/etc/passwd", "sibling", "../up"] {
            assert_eq!(
                read_one(b"app/link", EntryType::Symlink, target.as_bytes()),
                Ok(TarEntry::Symlink {
                    name: "app/link".into(),
                    target: target.into()
                })
            );
        }
        let message = read_one(b"empty", EntryType::Symlink, b"").expect_err("empty target");
        assert!(message.contains("without a target"), "{message}");
    }

    #[test]
    fn special_files_and_hard_links_are_marked_with_the_reason_to_refuse_them() {
        let cases = [
            (EntryType::Link, "hard link"),
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "named pipe (fifo)"),
        ];
        for (kind, words) in cases {
            let read = read_one(b"thing", kind, b"target");
            let Ok(TarEntry::Special { name, reason }) = read else {
                panic!("{kind:?}: {read:?}");
            };
            assert_eq!(name, "thing");
            assert!(reason.contains(words), "{reason}");
        }
    }
}
