//! Where a large context is cut into layers, so that one changed file changes one layer.
//!
//! The tree's entries are already sorted by path. Each entry has a weight, the bytes it takes in
//! the tar (a 512-byte header plus its padded content), and a number drawn from its path (the
//! first 64 bits of the path's SHA-256). A layer ends after an entry when that number, scaled to
//! `[0, 1)`, is below `weight / target`: a file of `target` bytes or more always ends its layer,
//! and a run of small files ends one about every `target` bytes.
//!
//! Whether a layer ends after an entry depends on that entry alone (its path and size), never
//! on what came before it. So adding, removing or changing one file changes the layer that holds
//! it and nothing else, unless the change flips that file's own decision: then it splits its
//! layer in two, or joins it with the next one ("two at a boundary").
//!
//! `target` is the smallest power of two, from 4 MiB, that makes the tree at most
//! [`MAX_LAYERS`] layers on average (the total divided by 16). Rounding to a power of two keeps
//! it the same while the context grows or shrinks within a factor of two; when it does change,
//! the cuts of the larger target are a subset of those of the smaller one. Should the draw give
//! more than [`MAX_LAYERS`] layers, the last one takes all the entries past the fifteenth cut, so
//! a change early in the tree still leaves the first layers alone.

use std::ops::Range;

use crate::context::{EntryKind, FileTree};

/// Contexts with this many bytes of files or more are split; smaller ones are one layer, with
/// the digests they had before layers were split.
pub const SPLIT_FROM: u64 = 64 << 20;

/// The most layers a context is split into.
pub const MAX_LAYERS: usize = 16;

/// The smallest target layer size, as a power of two (4 MiB).
const MIN_TARGET_BITS: u32 = 22;

/// How a context is laid out in layers (`spec.layers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layering {
    /// One layer under [`SPLIT_FROM`], else up to [`MAX_LAYERS`] content-defined layers.
    #[default]
    Auto,
    /// One layer whatever the size.
    Single,
}

/// The entries of each layer, as ranges of `tree.entries()` in order; never empty (an empty
/// tree is one empty range: the layer then holds only `destinationPath`).
pub fn plan(tree: &FileTree, layering: Layering) -> Vec<Range<usize>> {
    if layering == Layering::Single || tree.total_bytes() < SPLIT_FROM {
        return std::iter::once(0..tree.len()).collect();
    }
    split(
        tree.entries()
            .iter()
            .map(|e| (e.path.as_str(), weight(&e.kind))),
    )
}

/// The layers of entries given as `(path, tar bytes)` in tree order, whatever their total.
pub fn split<'a>(
    entries: impl ExactSizeIterator<Item = (&'a str, u64)> + Clone,
) -> Vec<Range<usize>> {
    let count = entries.len();
    let bits = target_bits(entries.clone().map(|(_, w)| w).sum());
    let mut layers = Vec::new();
    let mut start = 0;
    for (i, (path, weight)) in entries.enumerate() {
        let last = i + 1 == count;
        if last || layers.len() + 1 == MAX_LAYERS {
            break;
        }
        if ends_layer(path, weight, bits) {
            layers.push(start..i + 1);
            start = i + 1;
        }
    }
    layers.push(start..count);
    layers
}

/// Bytes the entry takes in the tar stream.
pub fn weight(kind: &EntryKind) -> u64 {
    let content = match kind {
        EntryKind::File { size, .. } => size.div_ceil(512) * 512,
        _ => 0,
    };
    512 + content
}

/// `log2` of the target layer size for a tree of `total` tar bytes.
fn target_bits(total: u64) -> u32 {
    let per_layer = total.div_ceil(MAX_LAYERS as u64).max(1);
    per_layer
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_TARGET_BITS)
}

/// Whether the layer ends after the entry at `path` of `weight` bytes, with a target of
/// `2^bits` bytes: `draw / 2^64 < weight / 2^bits`, in integers.
fn ends_layer(path: &str, weight: u64, bits: u32) -> bool {
    let digest = ring::digest::digest(&ring::digest::SHA256, path.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    let draw = u64::from_be_bytes(first);
    (draw >> (64 - bits)) < weight
}

#[cfg(test)]
mod tests;
