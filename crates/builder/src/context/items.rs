//! Reading a context from ConfigMap-like items, unpacking the ones marked as archives.

use bytes::Bytes;

use super::tree::{self, MODE_REGULAR, TreeBuilder};
use super::{
    ContextError, ContextItem, ContextOptions, DOCKERIGNORE, Entry, EntryKind, ExcludeRules,
    archive, dockerignore_patterns,
};
use crate::context::Content;

/// Key endings that may be unpacked with `archive: true`, longest first.
pub const ARCHIVE_EXTENSIONS: [&str; 3] = [".tar.gz", ".tgz", ".tar"];

/// `site.tar.gz` → `Some("site")`; `None` when the name has no archive extension (or nothing
/// before it).
pub fn archive_stem(name: &str) -> Option<&str> {
    ARCHIVE_EXTENSIONS
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .filter(|stem| !stem.is_empty() && !stem.ends_with('/'))
}

impl ContextItem {
    /// An item for the ConfigMap-like key `key`: at `path`, or at the key's own name when
    /// `path` is `None`. With `archive`, the key must end in `.tar`, `.tar.gz` or `.tgz`.
    pub fn from_key(
        source: impl Into<String>,
        key: &str,
        path: Option<&str>,
        mode: Option<u32>,
        data: Bytes,
        archive: bool,
    ) -> Result<Self, ContextError> {
        let source = source.into();
        if archive && archive_stem(key).is_none() {
            return Err(ContextError::Archive {
                origin: source,
                reason: format!(
                    "`archive: true` needs a key ending in .tar, .tar.gz or .tgz, and `{key}` \
                     does not; rename the key or drop `archive`"
                ),
            });
        }
        Ok(Self {
            source,
            path: path.unwrap_or(key).to_owned(),
            mode,
            data,
            archive,
        })
    }
}

/// Collects items into sorted, validated entries.
pub fn collect(items: Vec<ContextItem>, opts: &ContextOptions) -> Result<Vec<Entry>, ContextError> {
    let rules = exclude_rules(&items, opts)?;
    let mut tree = TreeBuilder::new(opts);
    for item in items {
        if item.archive {
            let dir = archive_dir(&item)?;
            archive::unpack(&item, &dir, &rules, &mut tree)?;
        } else {
            add_file(item, &rules, &mut tree)?;
        }
    }
    Ok(tree.finish())
}

/// The `.dockerignore` item's patterns (if honoured), then the caller's.
fn exclude_rules(
    items: &[ContextItem],
    opts: &ContextOptions,
) -> Result<ExcludeRules, ContextError> {
    let mut rules = ExcludeRules::default();
    let ignore_file = items.iter().find(|i| !i.archive && i.path == DOCKERIGNORE);
    if let (true, Some(item)) = (opts.honour_dockerignore, ignore_file) {
        let text = std::str::from_utf8(&item.data).map_err(|_| ContextError::NotText {
            origin: item.source.clone(),
        })?;
        rules.extend(&item.source, dockerignore_patterns(text))?;
    }
    rules.extend("exclude", opts.exclude.iter().map(String::as_str))?;
    Ok(rules)
}

fn add_file(
    item: ContextItem,
    rules: &ExcludeRules,
    tree: &mut TreeBuilder,
) -> Result<(), ContextError> {
    if let Some(reason) = tree::path_problem(&item.path) {
        return Err(invalid_path(&item, reason));
    }
    if rules.excludes(&item.path) {
        return Ok(());
    }
    let mode = match item.mode {
        None => MODE_REGULAR,
        Some(mode) if mode <= 0o7777 => mode,
        Some(mode) => {
            return Err(ContextError::InvalidPath {
                origin: item.source,
                path: item.path,
                reason: format!(
                    "has mode {mode:#o}, which is not a permission mode (at most 0o7777)"
                ),
            });
        }
    };
    let entry = Entry {
        path: item.path,
        mode,
        kind: EntryKind::File {
            size: item.data.len() as u64,
            content: Content::Bytes(item.data),
        },
    };
    tree.insert(entry, &item.source)
}

/// The directory an archive item unpacks into: its path with the archive extension stripped;
/// `""` for the root.
fn archive_dir(item: &ContextItem) -> Result<String, ContextError> {
    if item.mode.is_some() {
        return Err(invalid_path(
            item,
            "unpacks an archive, so it cannot have a mode: the modes come from the archive".into(),
        ));
    }
    let path = item.path.strip_suffix('/').unwrap_or(&item.path);
    if path == "." {
        return Ok(String::new());
    }
    let dir = archive_stem(path).unwrap_or(path);
    match tree::path_problem(dir) {
        Some(reason) => Err(invalid_path(item, reason)),
        None => Ok(dir.to_owned()),
    }
}

fn invalid_path(item: &ContextItem, reason: String) -> ContextError {
    ContextError::InvalidPath {
        origin: item.source.clone(),
        path: item.path.clone(),
        reason,
    }
}
