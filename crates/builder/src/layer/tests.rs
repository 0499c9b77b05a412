//! What a layer looks like from the outside: its tar entries, its gzip bytes, its digests.

use std::io::Read;

use bytes::Bytes;

use super::*;
use crate::context::{ContextItem, ContextOptions, FileTree};

fn item(path: &str, data: &[u8], mode: Option<u32>) -> ContextItem {
    ContextItem {
        source: format!("test item {path}"),
        path: path.into(),
        mode,
        data: Bytes::copy_from_slice(data),
        archive: false,
    }
}

fn tree(list: Vec<ContextItem>) -> FileTree {
    FileTree::from_items(list, &ContextOptions::default()).expect("tree")
}

fn small_tree() -> FileTree {
    tree(vec![
        item("index.html", b"<h1>hello</h1>\n", None),
        item("bin/run", b"#!/bin/sh\necho hi\n", Some(0o755)),
        item(&format!("deep/{}/name.txt", "n".repeat(120)), b"long", None),
    ])
}

fn build(tree: &FileTree, opts: &LayerOptions) -> (LayerBlob, tempfile::TempDir) {
    let out = tempfile::tempdir().expect("tempdir");
    let blob = build_layer(tree, opts, out.path()).expect("layer");
    (blob, out)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut tar)
        .expect("gunzip");
    tar
}

/// (path, mode, mtime, uid, gid, link target) of every entry.
type Listed = (String, u32, u64, u64, u64, Option<String>);

fn list(tar: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let h = e.header();
            (
                String::from_utf8(e.path_bytes().into_owned()).expect("utf8"),
                h.mode().expect("mode"),
                h.mtime().expect("mtime"),
                h.uid().expect("uid"),
                h.gid().expect("gid"),
                e.link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).expect("utf8")),
            )
        })
        .collect()
}

#[test]
fn golden_digest_pins_the_layer_format() {
    // If this fails, every image digest users have changes: bump it only on purpose.
    let opts = LayerOptions {
        destination_path: "/srv/www".into(),
        source_date_epoch: Some(1_700_000_000),
        ..LayerOptions::default()
    };
    let (blob, _out) = build(&small_tree(), &opts);
    assert_eq!(
        blob.diff_id.as_str(),
        "sha256:c7d545f9509de7933609ae528dc6b102b28d80b3864626b1213e2f5626f45f44"
    );
    assert_eq!(
        blob.descriptor.digest.as_str(),
        "sha256:dfbf80809650674ff126435740bdf7a6c8c3eaea0b2e5fb98e14f4d5c7fcd276"
    );
}

#[test]
fn the_same_tree_gives_the_same_digest_whatever_the_thread_count() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let tree = tree(vec![item("big", &big, None), item("small", b"x", None)]);
    let digests: Vec<Digest> = [1, 2, 3, 2]
        .into_iter()
        .map(|threads| {
            let opts = LayerOptions {
                threads,
                ..LayerOptions::default()
            };
            build(&tree, &opts).0.descriptor.digest
        })
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

#[test]
fn digests_are_of_the_compressed_and_uncompressed_bytes_and_name_the_file() {
    let (blob, out) = build(&small_tree(), &LayerOptions::default());
    let bytes = std::fs::read(blob.file().expect("layer file")).expect("read blob");
    assert_eq!(
        blob.file(),
        Some(out.path().join(blob.descriptor.digest.hex()).as_path())
    );
    assert_eq!(Digest::of(&bytes), blob.descriptor.digest);
    assert_eq!(bytes.len() as u64, blob.descriptor.size);
    let tar = gunzip(&bytes);
    assert_eq!(Digest::of(&tar), blob.diff_id);
    assert_eq!(tar.len() as u64, blob.uncompressed_size);
    assert_eq!(blob.descriptor.media_type, oci::MEDIA_TYPE_LAYER_GZIP);
}

#[test]
fn gzip_header_has_no_name_no_mtime_and_a_fixed_os_byte() {
    let (blob, _out) = build(&small_tree(), &LayerOptions::default());
    let bytes = std::fs::read(blob.file().expect("layer file")).expect("read blob");
    // ID1 ID2 CM=deflate FLG=0 (no name, no comment) MTIME=0 XFL=0 OS=255 (unknown)
    assert_eq!(bytes[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
}

#[test]
fn entries_are_sorted_under_the_destination_with_its_parents_first() {
    let opts = LayerOptions {
        destination_path: "/srv/www/".into(),
        ..LayerOptions::default()
    };
    let (blob, _out) = build(&small_tree(), &opts);
    let tar = gunzip(&std::fs::read(blob.file().expect("layer file")).expect("read"));
    let paths: Vec<String> = list(&tar).into_iter().map(|e| e.0).collect();
    let long = "n".repeat(120);
    assert_eq!(
        paths,
        [
            "srv/".to_owned(),
            "srv/www/".into(),
            "srv/www/bin/".into(),
            "srv/www/bin/run".into(),
            "srv/www/deep/".into(),
            format!("srv/www/deep/{long}/"),
            format!("srv/www/deep/{long}/name.txt"),
            "srv/www/index.html".into(),
        ]
    );
    assert_eq!(blob.stats.entries, 8);
}

#[test]
fn every_entry_has_root_owner_the_epoch_mtime_and_a_normalised_mode() {
    let opts = LayerOptions {
        source_date_epoch: Some(1_234_567_890),
        ..LayerOptions::default()
    };
    let (blob, _out) = build(&small_tree(), &opts);
    let tar = gunzip(&std::fs::read(blob.file().expect("layer file")).expect("read"));
    for (path, mode, mtime, uid, gid, _) in list(&tar) {
        assert_eq!((mtime, uid, gid), (1_234_567_890, 0, 0), "{path}");
        let expected = if path.ends_with('/') || path == "bin/run" {
            0o755
        } else {
            0o644
        };
        assert_eq!(mode, expected, "{path}");
    }
}

#[test]
fn without_source_date_epoch_every_mtime_is_zero() {
    let (blob, _out) = build(&small_tree(), &LayerOptions::default());
    let tar = gunzip(&std::fs::read(blob.file().expect("layer file")).expect("read"));
    assert!(list(&tar).iter().all(|e| e.2 == 0));
}

#[test]
fn a_layer_larger_than_a_block_is_several_gzip_members_that_decode_as_one() {
    let text: Vec<u8> = b"all work and no play makes jack a dull boy\n"
        .iter()
        .copied()
        .cycle()
        .take(3 * BLOCK_SIZE)
        .collect();
    let tree = tree(vec![item("text", &text, None)]);
    let (blob, _out) = build(&tree, &LayerOptions::default());
    let bytes = std::fs::read(blob.file().expect("layer file")).expect("read");
    let mut first_member = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut first_member)
        .expect("first member");
    assert_eq!(first_member.len(), BLOCK_SIZE);
    assert_eq!(gunzip(&bytes).len() as u64, blob.uncompressed_size);
}

#[test]
fn incompressible_data_costs_almost_nothing_extra() {
    let mut rng = fastrand::Rng::with_seed(7);
    let noise: Vec<u8> = (0..3 * BLOCK_SIZE).map(|_| rng.u8(..)).collect();
    let tree = tree(vec![item("noise.bin", &noise, None)]);
    let (blob, _out) = build(&tree, &LayerOptions::default());
    let overhead = blob.descriptor.size as f64 / blob.uncompressed_size as f64;
    assert!(
        overhead < 1.001,
        "stored blocks grew the data by {overhead}"
    );
    let tar = gunzip(&std::fs::read(blob.file().expect("layer file")).expect("read"));
    assert_eq!(Digest::of(&tar), blob.diff_id);
}

#[test]
fn zstd_layers_decode_and_say_so_in_their_media_type() {
    let opts = LayerOptions {
        compression: Compression::Zstd { level: 3 },
        ..LayerOptions::default()
    };
    let (blob, _out) = build(&small_tree(), &opts);
    let bytes = std::fs::read(blob.file().expect("layer file")).expect("read");
    let tar = zstd::stream::decode_all(&bytes[..]).expect("zstd");
    assert_eq!(Digest::of(&tar), blob.diff_id);
    assert_eq!(blob.descriptor.media_type, oci::MEDIA_TYPE_LAYER_ZSTD);
}

#[test]
fn an_empty_tree_gives_a_valid_empty_tar() {
    let (blob, _out) = build(&tree(vec![]), &LayerOptions::default());
    let tar = gunzip(&std::fs::read(blob.file().expect("layer file")).expect("read"));
    assert_eq!(tar, vec![0u8; 1024]);
}

#[test]
fn a_file_that_changed_since_the_walk_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("grows"), "short").expect("write");
    let tree = FileTree::from_dir(dir.path(), &ContextOptions::default()).expect("walk");
    std::fs::write(dir.path().join("grows"), "much longer now").expect("write");
    let out = tempfile::tempdir().expect("tempdir");
    let err = build_layer(&tree, &LayerOptions::default(), out.path()).expect_err("changed");
    assert!(matches!(err, LayerError::FileChanged { .. }), "{err}");
    assert!(err.to_string().contains("grows"));
    let leftovers = std::fs::read_dir(out.path()).expect("read_dir").count();
    assert_eq!(leftovers, 0, "no partial blob is left behind");
}

#[test]
fn a_relative_or_climbing_destination_is_refused() {
    let out = tempfile::tempdir().expect("tempdir");
    for bad in ["srv", "/srv/../etc", "/srv//www"] {
        let opts = LayerOptions {
            destination_path: bad.into(),
            ..LayerOptions::default()
        };
        let err = build_layer(&small_tree(), &opts, out.path()).expect_err(bad);
        assert!(
            matches!(err, LayerError::DestinationPath { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_negative_source_date_epoch_is_refused() {
    let opts = LayerOptions {
        source_date_epoch: Some(-1),
        ..LayerOptions::default()
    };
    let out = tempfile::tempdir().expect("tempdir");
    let err = build_layer(&small_tree(), &opts, out.path()).expect_err("negative");
    assert!(matches!(err, LayerError::SourceDateEpoch(-1)));
}

#[test]
fn an_out_of_range_level_is_refused() {
    let opts = LayerOptions {
        compression: Compression::Gzip { level: 13 },
        ..LayerOptions::default()
    };
    let out = tempfile::tempdir().expect("tempdir");
    let err = build_layer(&small_tree(), &opts, out.path()).expect_err("level");
    assert!(matches!(err, LayerError::Level(_)));
}

#[test]
fn files_on_disk_are_streamed_into_the_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content: Vec<u8> = (0..(BLOCK_SIZE * 2 + 123))
        .map(|i| (i % 97) as u8)
        .collect();
    std::fs::write(dir.path().join("data.bin"), &content).expect("write");
    let tree = FileTree::from_dir(dir.path(), &ContextOptions::default()).expect("walk");
    let (blob, _out) = build(&tree, &LayerOptions::default());
    let tar = gunzip(&std::fs::read(blob.file().expect("layer file")).expect("read"));
    let mut archive = tar::Archive::new(&tar[..]);
    let mut entry = archive
        .entries()
        .expect("entries")
        .next()
        .expect("one entry")
        .expect("entry");
    let mut read_back = Vec::new();
    entry.read_to_end(&mut read_back).expect("read");
    assert_eq!(read_back, content);
}

fn nested_tree() -> FileTree {
    tree(vec![
        item("a/b/c.txt", b"c", None),
        item("a/b/d.txt", b"d", None),
        item("a/e/f.txt", b"f", Some(0o600)),
        item("g.txt", b"g", None),
    ])
}

fn part_paths(tree: &FileTree, entries: &std::ops::Range<usize>, dest: &str) -> Vec<String> {
    let opts = LayerOptions {
        destination_path: dest.into(),
        ..LayerOptions::default()
    };
    let out = tempfile::tempdir().expect("tempdir");
    let part = Part { tree, entries };
    let blob = build_part(part, &opts, out.path(), None).expect("part");
    let bytes = fs::read(blob.file().expect("written")).expect("read");
    let tar = gunzip(&bytes);
    let (diff_id, size) = diff_id_of(part, &opts).expect("diff id");
    assert_eq!(
        diff_id, blob.diff_id,
        "hashing alone gives the written layer's diffID"
    );
    assert_eq!(size, tar.len() as u64);
    list(&tar).into_iter().map(|l| l.0).collect()
}

#[test]
fn a_part_holds_the_directories_above_its_entries_and_nothing_of_other_parts() {
    let tree = nested_tree();
    let paths: Vec<&str> = tree.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "a",
            "a/b",
            "a/b/c.txt",
            "a/b/d.txt",
            "a/e",
            "a/e/f.txt",
            "g.txt"
        ]
    );
    assert_eq!(part_paths(&tree, &(0..3), "/"), ["a/", "a/b/", "a/b/c.txt"]);
    assert_eq!(
        part_paths(&tree, &(3..6), "/"),
        ["a/", "a/b/", "a/b/d.txt", "a/e/", "a/e/f.txt"]
    );
    assert_eq!(part_paths(&tree, &(6..7), "/"), ["g.txt"]);
    assert_eq!(
        part_paths(&tree, &(5..7), "/srv"),
        ["srv/", "srv/a/", "srv/a/e/", "srv/a/e/f.txt", "srv/g.txt"]
    );
}

#[test]
fn the_whole_tree_as_one_part_is_the_single_layer() {
    let tree = nested_tree();
    let (single, _out) = build(&tree, &LayerOptions::default());
    let out = tempfile::tempdir().expect("tempdir");
    let whole = build_part(
        Part {
            tree: &tree,
            entries: &(0..tree.len()),
        },
        &LayerOptions::default(),
        out.path(),
        None,
    )
    .expect("part");
    assert_eq!(whole.descriptor, single.descriptor);
    assert_eq!(whole.diff_id, single.diff_id);
}

#[test]
fn a_directory_written_again_in_a_later_part_keeps_its_mode() {
    let tree = tree(vec![
        item("x/y.txt", b"y", None),
        item("x/z.txt", b"z", None),
    ]);
    let opts = LayerOptions::default();
    let out = tempfile::tempdir().expect("tempdir");
    let part = Part {
        tree: &tree,
        entries: &(2..3),
    };
    let blob = build_part(part, &opts, out.path(), None).expect("part");
    let tar = gunzip(&fs::read(blob.file().expect("written")).expect("read"));
    let listed = list(&tar);
    assert_eq!(listed[0].0, "x/");
    assert_eq!(listed[0].1, tree.entries()[0].mode);
}
