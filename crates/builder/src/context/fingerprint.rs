//! A content digest of a tree, independent of where and when it was read.

use std::fs::File;
use std::io::Read;

use super::{Content, ContextError, Entry, EntryKind};
use crate::oci::{Digest, Sha256};

/// Bumped if the encoding below ever changes, so old and new fingerprints never collide.
const FORMAT: &[u8] = b"imagebuild-tree-v1\n";

/// sha256 over one line per entry: `path NUL kind NUL mode NUL detail LF`, where detail is the
/// file content digest or the link target. Paths hold no control characters, so the encoding
/// is unambiguous.
pub fn of(entries: &[Entry]) -> Result<Digest, ContextError> {
    let mut hasher = Sha256::default();
    hasher.update(FORMAT);
    for entry in entries {
        let (kind, detail) = match &entry.kind {
            EntryKind::Directory => ("dir", String::new()),
            EntryKind::File { size, content } => ("file", content_digest(content, *size)?.into()),
            EntryKind::Symlink { target } => ("symlink", target.clone()),
        };
        let line = format!("{}\0{kind}\0{:o}\0{detail}\n", entry.path, entry.mode);
        hasher.update(line.as_bytes());
    }
    Ok(hasher.finish())
}

fn content_digest(content: &Content, size: u64) -> Result<Digest, ContextError> {
    match content {
        Content::Bytes(bytes) => Ok(Digest::of(bytes)),
        Content::Path(path) => {
            let io = |source| ContextError::Io {
                path: path.clone(),
                source,
            };
            let mut file = File::open(path).map_err(io)?;
            let mut hasher = Sha256::default();
            let mut buf = vec![0u8; 1 << 20];
            let mut read = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                read += n as u64;
            }
            if read != size {
                return Err(ContextError::Changed { path: path.clone() });
            }
            Ok(hasher.finish())
        }
    }
}
