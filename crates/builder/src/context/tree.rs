//! The rules every context source shares: valid names, valid symlink targets, no
//! duplicates, implied parent directories, and the size limits.

use std::collections::BTreeMap;

use super::{ContextError, ContextOptions, Entry, EntryKind};

/// Mode of every directory and of files whose owner may execute them.
pub const MODE_EXECUTABLE: u32 = 0o755;
/// Mode of files whose owner may not execute them.
pub const MODE_REGULAR: u32 = 0o644;
/// Mode of symlinks (their own mode is meaningless on Linux).
pub const MODE_SYMLINK: u32 = 0o777;

/// The normalised mode of a file: executable by its owner or not.
pub fn normalised_file_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        MODE_EXECUTABLE
    } else {
        MODE_REGULAR
    }
}

/// Why a single path segment is not acceptable, if it is not.
pub fn segment_problem(segment: &str) -> Option<&'static str> {
    match segment {
        "" => Some("has an empty segment"),
        "." | ".." => Some("has a `.` or `..` segment"),
        s if s.chars().any(char::is_control) => Some("contains a control character"),
        _ => None,
    }
}

/// Checks a relative `/`-separated path; the error text completes "the path `x` ...".
pub fn path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("is empty".into());
    }
    if path.starts_with('/') {
        return Some("is absolute; paths are relative to destinationPath".into());
    }
    path.split('/')
        .find_map(segment_problem)
        .map(|p| format!("{p} (segments must be plain names)"))
}

/// A name shown to people: control characters and invalid UTF-8 escaped.
pub fn escaped(name: &str) -> String {
    format!("\"{}\"", name.escape_debug())
}

/// Why a symlink target cannot be stored, if it cannot.
pub fn link_target_problem(target: &str) -> Option<&'static str> {
    if target.is_empty() {
        Some("has an empty target")
    } else if target.chars().any(char::is_control) {
        Some("has a target with a control character")
    } else {
        None
    }
}

struct Node {
    entry: Entry,
    /// Where the entry came from, for duplicate messages; `None` for implied directories.
    origin: Option<String>,
}

/// Collects entries, enforcing uniqueness and limits, and yields them sorted.
pub struct TreeBuilder {
    nodes: BTreeMap<String, Node>,
    bytes: u64,
    max_bytes: Option<u64>,
    max_entries: Option<u64>,
}

impl TreeBuilder {
    pub fn new(opts: &ContextOptions) -> Self {
        Self {
            nodes: BTreeMap::new(),
            bytes: 0,
            max_bytes: opts.max_bytes,
            max_entries: opts.max_entries,
        }
    }

    /// Adds an entry whose path has been validated; `origin` says where it came from.
    pub fn insert(&mut self, entry: Entry, origin: &str) -> Result<(), ContextError> {
        self.add_parents(&entry.path, origin)?;
        if let Some(existing) = self.nodes.get_mut(&entry.path) {
            let both_dirs =
                existing.entry.kind == EntryKind::Directory && entry.kind == EntryKind::Directory;
            return match (&existing.origin, both_dirs) {
                (None, true) => {
                    existing.origin = Some(origin.to_owned());
                    Ok(())
                }
                (Some(_), true) => Ok(()),
                (first, false) => Err(ContextError::Duplicate {
                    path: entry.path.clone(),
                    first: first
                        .clone()
                        .unwrap_or_else(|| format!("a directory implied by {origin}")),
                    second: origin.to_owned(),
                }),
            };
        }
        self.count(&entry, origin)?;
        self.nodes.insert(
            entry.path.clone(),
            Node {
                entry,
                origin: Some(origin.to_owned()),
            },
        );
        Ok(())
    }

    pub fn finish(self) -> Vec<Entry> {
        self.nodes.into_values().map(|n| n.entry).collect()
    }

    fn add_parents(&mut self, path: &str, origin: &str) -> Result<(), ContextError> {
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            match self.nodes.get(parent) {
                Some(node) if node.entry.kind == EntryKind::Directory => {}
                Some(node) => {
                    return Err(ContextError::Duplicate {
                        path: parent.to_owned(),
                        first: node.origin.clone().unwrap_or_default(),
                        second: format!("{origin}, which needs it to be a directory"),
                    });
                }
                None => {
                    let dir = Entry {
                        path: parent.to_owned(),
                        mode: MODE_EXECUTABLE,
                        kind: EntryKind::Directory,
                    };
                    self.count(&dir, origin)?;
                    self.nodes.insert(
                        parent.to_owned(),
                        Node {
                            entry: dir,
                            origin: None,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn count(&mut self, entry: &Entry, origin: &str) -> Result<(), ContextError> {
        if let Some(limit) = self.max_entries
            && self.nodes.len() as u64 >= limit
        {
            return Err(ContextError::TooManyEntries {
                limit,
                location: origin.to_owned(),
            });
        }
        if let EntryKind::File { size, .. } = entry.kind {
            self.bytes = self.bytes.saturating_add(size);
            if let Some(limit) = self.max_bytes
                && self.bytes > limit
            {
                return Err(ContextError::TooLarge {
                    limit,
                    location: origin.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Room left under `max_bytes`, to bound reads before they happen.
    pub fn bytes_left(&self) -> Option<u64> {
        self.max_bytes.map(|m| m.saturating_sub(self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Content;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            mode: MODE_REGULAR,
            kind: EntryKind::File {
                size,
                content: Content::Bytes(bytes::Bytes::new()),
            },
        }
    }

    #[test]
    fn paths_with_climbing_absolute_or_empty_segments_are_refused() {
        assert!(path_problem("a/b.txt").is_none());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a/",
            "a\nb",
        ] {
            assert!(path_problem(bad).is_some(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn missing_parent_directories_are_implied_with_mode_0755() {
        let mut tree = TreeBuilder::new(&ContextOptions::default());
        tree.insert(file("a/b/c.txt", 1), "item c").expect("insert");
        let entries = tree.finish();
        let paths: Vec<(&str, u32)> = entries.iter().map(|e| (e.path.as_str(), e.mode)).collect();
        assert_eq!(paths, [("a", 0o755), ("a/b", 0o755), ("a/b/c.txt", 0o644)]);
    }

    #[test]
    fn a_file_where_a_directory_is_needed_names_both_sources() {
        let mut tree = TreeBuilder::new(&ContextOptions::default());
        tree.insert(file("a", 1), "key a").expect("insert");
        let err = tree.insert(file("a/b", 1), "key b").expect_err("conflict");
        let message = err.to_string();
        assert!(
            message.contains("key a") && message.contains("key b"),
            "{message}"
        );
    }

    #[test]
    fn entry_limit_counts_implied_directories() {
        let opts = ContextOptions {
            max_entries: Some(2),
            ..ContextOptions::default()
        };
        let mut tree = TreeBuilder::new(&opts);
        let err = tree
            .insert(file("a/b/c", 1), "key c")
            .expect_err("too many");
        assert!(matches!(err, ContextError::TooManyEntries { limit: 2, .. }));
    }
}
