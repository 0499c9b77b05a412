//! Reading a context from a local directory or a mounted volume, without following symlinks.

use std::ffi::OsStr;
use std::fs::{self, FileType, Metadata};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::tree::{self, MODE_EXECUTABLE, MODE_SYMLINK, TreeBuilder};
use super::{
    Content, ContextError, ContextOptions, DOCKERIGNORE, Entry, EntryKind, ExcludeRules,
    dockerignore_patterns,
};

/// Walks `root` into sorted, validated entries.
pub fn walk(root: &Path, opts: &ContextOptions) -> Result<Vec<Entry>, ContextError> {
    let meta = fs::metadata(root).map_err(|source| io_error(root, source))?;
    if !meta.is_dir() {
        return Err(ContextError::NotADirectory(root.to_owned()));
    }
    let rules = exclude_rules(root, opts)?;
    let mut walker = Walker {
        root,
        rules,
        tree: TreeBuilder::new(opts),
    };
    walker.directory(root, "")?;
    Ok(walker.tree.finish())
}

/// `.dockerignore` patterns first, then the caller's, so the caller's win.
fn exclude_rules(root: &Path, opts: &ContextOptions) -> Result<ExcludeRules, ContextError> {
    let mut rules = ExcludeRules::default();
    if opts.honour_dockerignore {
        let path = root.join(DOCKERIGNORE);
        let is_file = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        if is_file {
            let text = fs::read_to_string(&path).map_err(|source| io_error(&path, source))?;
            rules.extend(DOCKERIGNORE, dockerignore_patterns(&text))?;
        }
    }
    rules.extend("exclude", opts.exclude.iter().map(String::as_str))?;
    Ok(rules)
}

struct Walker<'a> {
    root: &'a Path,
    rules: ExcludeRules,
    tree: TreeBuilder,
}

impl Walker<'_> {
    /// Adds the children of `dir` (whose path relative to the root is `rel`), depth first.
    fn directory(&mut self, dir: &Path, rel: &str) -> Result<(), ContextError> {
        let mut children: Vec<(std::ffi::OsString, PathBuf)> = fs::read_dir(dir)
            .map_err(|source| io_error(dir, source))?
            .map(|e| e.map(|e| (e.file_name(), e.path())))
            .collect::<Result<_, _>>()
            .map_err(|source| io_error(dir, source))?;
        // Sorted so that the first problem reported is the same on every run.
        children.sort();
        for (name, path) in children {
            self.child(&name, &path, rel)?;
        }
        Ok(())
    }

    fn child(&mut self, name: &OsStr, path: &Path, parent: &str) -> Result<(), ContextError> {
        let name = self.valid_name(name, parent)?;
        let rel = if parent.is_empty() {
            name.to_owned()
        } else {
            format!("{parent}/{name}")
        };
        let meta = fs::symlink_metadata(path).map_err(|source| io_error(path, source))?;
        let excluded = self.rules.excludes(&rel);
        if excluded && !(meta.is_dir() && self.rules.has_exceptions()) {
            return Ok(());
        }
        if let Some(reason) = tree::segment_problem(name) {
            return Err(ContextError::InvalidName {
                location: self.shown(parent),
                name: tree::escaped(name),
                reason,
            });
        }
        let file_type = meta.file_type();
        if file_type.is_dir() {
            if !excluded {
                self.insert_dir(&rel, path)?;
            }
            return self.directory(path, &rel);
        }
        let entry = if file_type.is_file() {
            file_entry(rel, path, &meta)
        } else if file_type.is_symlink() {
            self.symlink_entry(rel, path)?
        } else {
            return Err(ContextError::SpecialFile {
                location: path.display().to_string(),
                kind: special_kind(file_type),
            });
        };
        self.tree.insert(entry, &path.display().to_string())
    }

    /// The name as UTF-8, or a refusal that shows it escaped.
    fn valid_name<'n>(&self, name: &'n OsStr, parent: &str) -> Result<&'n str, ContextError> {
        name.to_str().ok_or_else(|| ContextError::InvalidName {
            location: self.shown(parent),
            name: format!("{name:?}"),
            reason: "is not valid UTF-8",
        })
    }

    fn insert_dir(&mut self, rel: &str, path: &Path) -> Result<(), ContextError> {
        let entry = Entry {
            path: rel.to_owned(),
            mode: MODE_EXECUTABLE,
            kind: EntryKind::Directory,
        };
        self.tree.insert(entry, &path.display().to_string())
    }

    fn symlink_entry(&self, rel: String, path: &Path) -> Result<Entry, ContextError> {
        let target = fs::read_link(path).map_err(|source| io_error(path, source))?;
        let location = path.display().to_string();
        let target = target.to_str().ok_or_else(|| ContextError::InvalidName {
            location: location.clone(),
            name: format!("{:?}", target.as_os_str()),
            reason: "is a symlink target that is not valid UTF-8",
        })?;
        if let Some(reason) = tree::link_target_problem(target) {
            return Err(ContextError::InvalidName {
                location,
                name: tree::escaped(target),
                reason,
            });
        }
        Ok(Entry {
            path: rel,
            mode: MODE_SYMLINK,
            kind: EntryKind::Symlink {
                target: target.to_owned(),
            },
        })
    }

    /// The directory holding a name, for messages.
    fn shown(&self, parent: &str) -> String {
        self.root.join(parent).display().to_string()
    }
}

fn file_entry(rel: String, path: &Path, meta: &Metadata) -> Entry {
    Entry {
        path: rel,
        mode: tree::normalised_file_mode(meta.permissions().mode()),
        kind: EntryKind::File {
            size: meta.len(),
            content: Content::Path(path.to_owned()),
        },
    }
}

fn special_kind(file_type: FileType) -> &'static str {
    if file_type.is_socket() {
        "socket"
    } else if file_type.is_fifo() {
        "named pipe (fifo)"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

fn io_error(path: &Path, source: std::io::Error) -> ContextError {
    ContextError::Io {
        path: path.to_owned(),
        source,
    }
}
