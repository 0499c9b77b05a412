//! The tar stream that carries a PersistentVolumeClaim context from its reader Pod to the
//! controller.
//!
//! The sender (`imagebuild send-context`, in the reader Pod) walks a directory without following
//! symlinks and writes every entry as it finds it: directories, regular files, symlinks, and the
//! header of any fifo or device, so that the controller can name it when it refuses it. The
//! receiver (the controller) trusts nothing in the stream: it unpacks with the rules of a local
//! directory context — no `..`, no absolute names, no hard links, devices, fifos or sockets,
//! symlinks that stay inside, no entry below a symlink or file, size and entry limits — into a
//! fresh directory, where the ordinary builder (`FileTree::from_dir`) takes over. Exclusions
//! (`spec.exclude` and the context's `.dockerignore`, which the sender sends first) are applied
//! while unpacking, so an excluded special file fails neither here nor in a local build.

mod receive;
mod send;

pub use receive::{ReceiveError, ReceiveOptions, receive};
pub use send::{SendError, SendRequest, context_root, send, write_tree};

/// Environment variable that hands `imagebuild send-context` its one-time upload token (not a
/// flag, so it never shows in a process list).
pub const TOKEN_ENV: &str = "IMAGEBUILD_CONTEXT_TOKEN";

/// Entries one upload may hold: each costs the controller memory while the tree is checked, and
/// the chart's default memory limit (256 MiB) must hold them.
pub const MAX_ENTRIES: u64 = 250_000;

/// What was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Directories, files, symlinks and special files written to the stream.
    pub entries: u64,
    /// Bytes of regular files.
    pub bytes: u64,
}

#[cfg(test)]
mod tests;
