//! Property tests of the cuts: random trees, one file inserted, removed or changed, and the
//! layers before and after compared as lists of (path, bytes). Hand-rolled over `fastrand` with
//! fixed seeds, so a failure names the seed that reproduces it.

use std::ops::Range;

use super::*;

const MIB: u64 = 1 << 20;

type Tree = Vec<(String, u64)>;

fn random_tree(rng: &mut fastrand::Rng) -> Tree {
    let files = rng.usize(200..3000);
    let mut paths: Vec<String> = (0..files).map(|_| random_path(rng)).collect();
    paths.sort();
    paths.dedup();
    paths.into_iter().map(|p| (p, random_weight(rng))).collect()
}

fn random_path(rng: &mut fastrand::Rng) -> String {
    format!(
        "d{}/s{}/f{:05}.txt",
        rng.u8(..6),
        rng.u8(..20),
        rng.u32(..100_000)
    )
}

/// Mostly source-sized files, some tens of megabytes, like real contexts.
fn random_weight(rng: &mut fastrand::Rng) -> u64 {
    match rng.u8(..100) {
        0 => rng.u64(8 * MIB..64 * MIB),
        1..=4 => rng.u64(MIB..8 * MIB),
        _ => 512 + rng.u64(0..40_000).div_ceil(512) * 512,
    }
}

fn layers_of(tree: &Tree) -> Vec<Range<usize>> {
    split(tree.iter().map(|(p, w)| (p.as_str(), *w)))
}

/// Each layer's content, to compare layers across two trees.
fn contents(tree: &Tree) -> Vec<Vec<(String, u64)>> {
    layers_of(tree)
        .into_iter()
        .map(|range| tree[range].to_vec())
        .collect()
}

fn bits_of(tree: &Tree) -> u32 {
    target_bits(tree.iter().map(|(_, w)| w).sum())
}

/// How many layers of `after` are not layers of `before`, when the comparison is meaningful:
/// same target size, and neither tree at the layer cap.
fn new_layers(before: &Tree, after: &Tree) -> Option<usize> {
    let (old, new) = (contents(before), contents(after));
    if bits_of(before) != bits_of(after) || old.len() == MAX_LAYERS || new.len() == MAX_LAYERS {
        return None;
    }
    Some(new.iter().filter(|layer| !old.contains(layer)).count())
}

/// Runs `change` on many random trees; checks that at most `most` layers are new each time,
/// and that the comparison was meaningful in most cases.
fn check(most: usize, change: impl Fn(&mut fastrand::Rng, &mut Tree)) {
    let mut compared = 0;
    for seed in 0..300 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let before = random_tree(&mut rng);
        let mut after = before.clone();
        change(&mut rng, &mut after);
        if let Some(new) = new_layers(&before, &after) {
            compared += 1;
            assert!(
                new <= most,
                "seed {seed}: {new} new layers (at most {most})"
            );
        }
    }
    assert!(
        compared > 250,
        "only {compared} of 300 trees kept their target size"
    );
}

#[test]
fn changing_one_file_changes_its_layer_and_at_most_one_more() {
    check(2, |rng, tree| {
        let i = rng.usize(..tree.len());
        tree[i].1 = random_weight(rng);
    });
}

#[test]
fn changing_a_file_but_not_its_size_changes_exactly_one_layer() {
    // Content is not part of the cut: the layer holding the file is the only one that differs.
    for seed in 0..100 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let tree = random_tree(&mut rng);
        let i = rng.usize(..tree.len());
        let layers = layers_of(&tree);
        let holding = layers.iter().filter(|r| r.contains(&i)).count();
        assert_eq!(holding, 1, "seed {seed}");
        assert_eq!(
            layers,
            layers_of(&tree.clone()),
            "seed {seed}: not deterministic"
        );
    }
}

#[test]
fn adding_one_file_changes_its_layer_and_at_most_one_more() {
    check(2, |rng, tree| {
        let path = loop {
            let path = random_path(rng);
            if tree.binary_search_by(|(p, _)| p.cmp(&path)).is_err() {
                break path;
            }
        };
        let at = tree.partition_point(|(p, _)| *p < path);
        tree.insert(at, (path, random_weight(rng)));
    });
}

#[test]
fn removing_one_file_changes_at_most_two_layers() {
    check(2, |rng, tree| {
        let i = rng.usize(..tree.len());
        tree.remove(i);
    });
}

#[test]
fn layers_cover_the_tree_in_order_and_are_at_most_sixteen() {
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let tree = random_tree(&mut rng);
        let layers = layers_of(&tree);
        assert!(layers.len() <= MAX_LAYERS, "seed {seed}");
        let mut next = 0;
        for range in &layers {
            assert_eq!(range.start, next, "seed {seed}: gap or overlap");
            assert!(!range.is_empty(), "seed {seed}: empty layer");
            next = range.end;
        }
        assert_eq!(next, tree.len(), "seed {seed}: entries left out");
    }
}

#[test]
fn the_cap_puts_the_rest_in_the_last_layer() {
    // Equal files whose draw gives more than sixteen layers for some names: find such a tree.
    let capped = (0..100)
        .map(|n| -> Tree {
            (0..4000)
                .map(|i| (format!("t{n}/f{i:04}"), 256 << 10))
                .collect()
        })
        .find(|tree| {
            let bits = bits_of(tree);
            let cuts = tree[..tree.len() - 1]
                .iter()
                .filter(|(p, w)| ends_layer(p, *w, bits))
                .count();
            cuts >= MAX_LAYERS
        })
        .expect("a tree the cap applies to");
    let bits = bits_of(&capped);
    let uncapped: Vec<usize> = (0..capped.len() - 1)
        .filter(|&i| ends_layer(&capped[i].0, capped[i].1, bits))
        .collect();
    let layers = layers_of(&capped);
    assert_eq!(layers.len(), MAX_LAYERS);
    for (layer, cut) in layers[..15].iter().zip(&uncapped) {
        assert_eq!(
            layer.end,
            cut + 1,
            "the first fifteen layers end where the draw says"
        );
    }
    assert_eq!(layers[15], uncapped[14] + 1..capped.len());
}

#[test]
fn the_target_is_a_sixteenth_of_the_tree_rounded_up_to_a_power_of_two() {
    assert_eq!(target_bits(0), MIN_TARGET_BITS);
    assert_eq!(target_bits(64 * MIB), 22);
    assert_eq!(target_bits(510 * MIB), 25);
    assert_eq!(target_bits(512 * MIB), 25);
    assert_eq!(target_bits(513 * MIB), 26);
}

#[test]
fn a_file_of_the_target_size_always_ends_its_layer() {
    for i in 0..1000 {
        assert!(ends_layer(&format!("file-{i}"), 1 << 25, 25));
    }
    let small = (0..1000)
        .filter(|i| ends_layer(&format!("file-{i}"), 1 << 15, 25))
        .count();
    assert!(small < 10, "{small} of 1000 small files ended a layer");
}

#[test]
fn small_trees_and_single_are_one_layer() {
    let items = (0..10)
        .map(|i| crate::context::ContextItem {
            source: format!("test item {i}"),
            path: format!("f{i}"),
            mode: None,
            data: bytes::Bytes::from_static(b"hello"),
            archive: false,
        })
        .collect();
    let tree = FileTree::from_items(items, &Default::default()).expect("tree");
    assert_eq!(plan(&tree, Layering::Auto), vec![0..10]);
    assert_eq!(plan(&tree, Layering::Single), vec![0..10]);
}
