//! When the layer cache may answer, and when it must not.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::context::ContextOptions;
use crate::context::FileTree;
use crate::layer::build_layer;

/// A moment well after the test's files were written, so they count as settled.
fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(60)
}

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("index.html"), "<h1>hello</h1>\n").expect("write");
    fs::create_dir(dir.path().join("css")).expect("mkdir");
    fs::write(dir.path().join("css/site.css"), "body {}\n").expect("write");
    dir
}

fn walk(dir: &Path) -> FileTree {
    FileTree::from_dir(dir, &ContextOptions::default()).expect("walk")
}

fn key(dir: &Path, options: &LayerOptions) -> Option<Digest> {
    LayerCache::key_at(Part::whole(&walk(dir)), options, later())
}

#[test]
fn the_same_untouched_tree_has_the_same_key() {
    let dir = context();
    let options = LayerOptions::default();
    let first = key(dir.path(), &options).expect("key");
    assert_eq!(key(dir.path(), &options), Some(first));
}

#[test]
fn rewriting_a_file_with_the_same_size_and_mtime_changes_the_key() {
    let dir = context();
    let options = LayerOptions::default();
    let before = key(dir.path(), &options).expect("key");
    let file = dir.path().join("index.html");
    let mtime = fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    fs::write(&file, "<h1>HELLO</h1>\n").expect("write");
    fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
    assert_ne!(key(dir.path(), &options), Some(before));
}

#[test]
fn other_layer_options_have_another_key() {
    let dir = context();
    let default = key(dir.path(), &LayerOptions::default());
    let elsewhere = LayerOptions {
        destination_path: "/srv/www".into(),
        ..LayerOptions::default()
    };
    let zstd = LayerOptions {
        compression: Compression::Zstd { level: 3 },
        ..LayerOptions::default()
    };
    let dated = LayerOptions {
        source_date_epoch: Some(1_700_000_000),
        ..LayerOptions::default()
    };
    for other in [elsewhere, zstd, dated] {
        assert_ne!(key(dir.path(), &other), default, "{other:?}");
    }
}

#[test]
fn a_file_changed_just_now_makes_the_tree_uncacheable() {
    let dir = context();
    let tree = walk(dir.path());
    assert_eq!(
        LayerCache::key_at(
            Part::whole(&tree),
            &LayerOptions::default(),
            SystemTime::now()
        ),
        None
    );
}

#[test]
fn a_recorded_layer_is_found_under_its_key_and_located_in_the_target() {
    let dir = context();
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let cache = LayerCache::new(cache_dir.path());
    let options = LayerOptions::default();
    let tree = walk(dir.path());
    let key = LayerCache::key_at(Part::whole(&tree), &options, later()).expect("key");
    assert_eq!(cache.get(&key), None);

    let built = build_layer(&tree, &options, out.path()).expect("layer");
    cache.put(&key, &built, options.compression);
    let found = cache.get(&key).expect("cached").into_layer_blob();
    assert_eq!(found.descriptor, built.descriptor);
    assert_eq!(found.diff_id, built.diff_id);
    assert_eq!(found.uncompressed_size, built.uncompressed_size);
    assert_eq!(found.location, BlobLocation::Target);
}

#[test]
fn an_unreadable_entry_is_a_miss() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache = LayerCache::new(cache_dir.path());
    let key = Digest::of(b"some tree");
    fs::create_dir_all(cache_dir.path().join("layers")).expect("mkdir");
    fs::write(
        cache_dir.path().join(format!("layers/{}.json", key.hex())),
        "{not json",
    )
    .expect("write");
    assert_eq!(cache.get(&key), None);
}

#[test]
fn a_layer_is_known_by_its_diff_id_for_the_same_compression_only() {
    let dir = context();
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let cache = LayerCache::new(cache_dir.path());
    let options = LayerOptions::default();
    let built = build_layer(&walk(dir.path()), &options, out.path()).expect("layer");
    assert_eq!(cache.known(&built.diff_id, options.compression), None);
    cache.remember(&built, options.compression);
    let found = cache
        .known(&built.diff_id, options.compression)
        .expect("known");
    assert_eq!(found.descriptor, built.descriptor);
    let zstd = Compression::Zstd { level: 3 };
    assert_eq!(cache.known(&built.diff_id, zstd), None);
    // Another process (or a restarted controller) reads what this one wrote.
    let again = LayerCache::new(cache_dir.path()).with_memory(8);
    assert_eq!(
        again.known(&built.diff_id, options.compression),
        Some(found)
    );
}

#[test]
fn repositories_pushed_to_are_remembered_on_disk_and_in_memory() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache = LayerCache::new(cache_dir.path()).with_memory(8);
    assert!(!cache.pushed_to("registry.test/o/app"));
    cache.mark_pushed("registry.test/o/app");
    assert!(cache.pushed_to("registry.test/o/app"));
    assert!(!cache.pushed_to("registry.test/o/other"));
    assert!(LayerCache::new(cache_dir.path()).pushed_to("registry.test/o/app"));
}

#[test]
fn memory_keeps_at_most_its_capacity() {
    let dir = context();
    let out = tempfile::tempdir().expect("tempdir");
    let built =
        build_layer(&walk(dir.path()), &LayerOptions::default(), out.path()).expect("layer");
    let mut memory = Memory {
        capacity: 3,
        ..Memory::default()
    };
    let entry = CachedLayer {
        descriptor: built.descriptor.clone(),
        diff_id: built.diff_id.clone(),
        uncompressed_size: built.uncompressed_size,
    };
    for i in 0..10 {
        memory.insert(format!("e{i}"), entry.clone());
    }
    assert_eq!(memory.entries.len(), 3);
    assert!(memory.entries.contains_key("e9") && !memory.entries.contains_key("e6"));
}

#[test]
fn each_part_has_its_own_key() {
    let dir = context();
    let tree = walk(dir.path());
    let options = LayerOptions::default();
    let key_of = |entries: &std::ops::Range<usize>| {
        LayerCache::key_at(
            Part {
                tree: &tree,
                entries,
            },
            &options,
            later(),
        )
        .expect("key")
    };
    let whole = LayerCache::key_at(Part::whole(&tree), &options, later()).expect("key");
    let (first, second) = (key_of(&(0..2)), key_of(&(2..3)));
    assert_ne!(first, second);
    assert_ne!(first, whole);
    assert_eq!(key_of(&(0..3)), whole);
}
