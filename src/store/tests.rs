//! The local image store in a temporary directory: names, sharing, removal, archives, and two
//! writers at once.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::context::{ContextItem, ContextOptions, FileTree};
use crate::image::{self, ImageSpec};
use crate::layer::{self, LayerOptions};
use crate::oci::BuiltImage;

/// A fresh directory under the target directory's `tmp` (where cargo keeps integration tests'
/// `CARGO_TARGET_TMPDIR`), found from this test binary's place in `target/debug/deps`.
fn scratch_dir() -> tempfile::TempDir {
    let exe = std::env::current_exe().expect("test binary");
    let target = exe.ancestors().nth(3).expect("target directory");
    let tmp = target.join("tmp");
    fs::create_dir_all(&tmp).expect("target/tmp");
    tempfile::tempdir_in(tmp).expect("tempdir")
}

/// A scratch image of one file holding `content`, its layer in a scratch directory of `store`.
fn image(store: &Store, content: &'static str) -> (tempfile::TempDir, Built) {
    let item = ContextItem {
        source: "test".into(),
        path: "hello.txt".into(),
        mode: None,
        data: Bytes::from_static(content.as_bytes()),
        archive: false,
    };
    let tree = FileTree::from_items(vec![item], &ContextOptions::default()).expect("tree");
    let scratch = store.scratch().expect("scratch");
    let layer = layer::build_layer(&tree, &LayerOptions::default(), scratch.path()).expect("layer");
    let built: BuiltImage =
        image::assemble(None, std::slice::from_ref(&layer), &ImageSpec::default()).expect("image");
    (scratch, Built::Image(built))
}

/// The image named `name`, read under a read lock of `store`.
fn read(store: &Store, name: &str) -> Built {
    let reading = store.read_lock().expect("read lock");
    store.read(name, &reading).expect("read")
}

fn names(store: &Store) -> Vec<String> {
    store
        .images()
        .expect("images")
        .into_iter()
        .map(|i| i.name)
        .collect()
}

fn blob_count(store: &Store) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .expect("blobs")
        .count()
}

#[test]
fn names_are_completed_as_docker_reads_them() {
    assert_eq!(
        image_name("gitea.example:8443/me/app").expect("name"),
        "gitea.example:8443/me/app:latest"
    );
    assert_eq!(
        image_name("gitea.example:8443/me/app:v1").expect("name"),
        "gitea.example:8443/me/app:v1"
    );
    assert_eq!(
        image_name("alpine:3").expect("name"),
        "docker.io/library/alpine:3"
    );
    let digest = format!("gitea.example/me/app@sha256:{}", "a".repeat(64));
    assert!(matches!(
        image_name(&digest),
        Err(StoreError::DigestName { .. })
    ));
}

#[test]
fn a_stored_image_is_listed_under_each_name_with_its_digest_size_and_platform() {
    let dir = scratch_dir();
    let store = Store::open(dir.path().join("store"));
    let (_scratch, built) = image(&store, "hello\n");
    let tags = [
        "h.example/me/app:v1".to_owned(),
        "h.example/me/app:v2".to_owned(),
    ];
    store.add(&built, &tags).expect("add");
    let images = store.images().expect("images");
    assert_eq!(images.len(), 2);
    for (image, name) in images.iter().zip(&tags) {
        assert_eq!(&image.name, name);
        assert_eq!(image.digest, built.digest().to_string());
        assert_eq!(image.size, built.size());
        assert_eq!(image.platforms, ["linux/amd64"]);
        assert_eq!(image.created.as_deref(), Some("1970-01-01T00:00:00Z"));
    }
    let read = read(&store, "h.example/me/app:v2");
    assert_eq!(read.digest(), built.digest());
}

#[test]
fn an_empty_store_lists_nothing_and_names_what_it_lacks() {
    let dir = scratch_dir();
    let store = Store::open(dir.path().join("never-written"));
    assert!(store.images().expect("images").is_empty());
    let missing = store
        .remove("h.example/me/app:v1")
        .expect_err("nothing to remove");
    assert_eq!(
        missing.to_string(),
        format!(
            "no local image `h.example/me/app:v1` (in {}); `imagebuild images` lists them",
            store.root().display()
        )
    );
}

#[test]
fn tag_adds_a_name_for_the_same_digest_and_moves_an_existing_one() {
    let dir = scratch_dir();
    let store = Store::open(dir.path());
    let (_a, first) = image(&store, "one\n");
    let (_b, second) = image(&store, "two\n");
    store
        .add(&first, &["h.example/me/a:1".into()])
        .expect("add");
    store
        .add(&second, &["h.example/me/b:1".into()])
        .expect("add");
    let digest = store
        .tag("h.example/me/a:1", "h.example/other/c")
        .expect("tag");
    assert_eq!(&digest, first.digest());
    store
        .tag("h.example/me/b:1", "h.example/other/c")
        .expect("tag");
    assert_eq!(
        names(&store),
        [
            "h.example/me/a:1",
            "h.example/me/b:1",
            "h.example/other/c:latest"
        ]
    );
    assert_eq!(read(&store, "h.example/other/c").digest(), second.digest());
}

#[test]
fn rmi_keeps_blobs_another_name_uses_and_deletes_the_rest() {
    let dir = scratch_dir();
    let store = Store::open(dir.path());
    let (_a, first) = image(&store, "one\n");
    let (_b, second) = image(&store, "two\n");
    store
        .add(
            &first,
            &["h.example/me/a:1".into(), "h.example/me/a:2".into()],
        )
        .expect("add");
    store
        .add(&second, &["h.example/me/b:1".into()])
        .expect("add");
    // Two images: a manifest, a config and a layer each.
    assert_eq!(blob_count(&store), 6);

    let removed = store.remove("h.example/me/a:1").expect("rmi");
    assert_eq!(removed.blobs_deleted, 0, "a:2 still needs them");
    assert_eq!(&removed.digest, first.digest());
    assert_eq!(blob_count(&store), 6);

    let removed = store.remove("h.example/me/a:2").expect("rmi");
    assert_eq!(removed.blobs_deleted, 3);
    assert_eq!(
        removed.bytes_freed,
        first.size() + first.manifest().len() as u64
    );
    assert_eq!(blob_count(&store), 3);
    assert_eq!(names(&store), ["h.example/me/b:1"]);
    // What is left still reads whole.
    read(&store, "h.example/me/b:1");
}

#[test]
fn save_writes_an_archive_of_a_layout_holding_that_image_alone() {
    let dir = scratch_dir();
    let store = Store::open(dir.path().join("store"));
    let (_a, first) = image(&store, "one\n");
    let (_b, second) = image(&store, "two\n");
    store
        .add(&first, &["h.example/me/a:1".into()])
        .expect("add");
    store
        .add(&second, &["h.example/me/b:1".into()])
        .expect("add");
    let archive = dir.path().join("a.tar");
    store.save("h.example/me/a:1", &archive).expect("save");

    let unpacked = dir.path().join("unpacked");
    tar::Archive::new(fs::File::open(&archive).expect("archive"))
        .unpack(&unpacked)
        .expect("unpack");
    let alone = Store::open(&unpacked);
    assert_eq!(names(&alone), ["h.example/me/a:1"]);
    assert_eq!(read(&alone, "h.example/me/a:1").digest(), first.digest());
    assert_eq!(blob_count(&alone), 3, "the other image's blobs stay out");
}

#[test]
fn two_writers_at_once_lose_no_name() {
    let dir = scratch_dir();
    let store = Store::open(dir.path());
    let (_a, built) = image(&store, "shared\n");
    store
        .add(&built, &["h.example/me/app:0".into()])
        .expect("add");
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let store = store.clone();
            let built = built.clone();
            std::thread::spawn(move || {
                for n in 0..20 {
                    let name = format!("h.example/me/app:w{writer}-{n}");
                    if n % 2 == 0 {
                        store.tag("h.example/me/app:0", &name).expect("tag");
                    } else {
                        store.add(&built, &[name]).expect("add");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    assert_eq!(names(&store).len(), 41);
}

#[test]
fn rmi_waits_until_a_reader_of_the_image_lets_go() {
    let dir = scratch_dir();
    let store = Store::open(dir.path());
    let (_a, built) = image(&store, "pushed\n");
    store
        .add(&built, &["h.example/me/app:1".into()])
        .expect("add");
    // What a push of the stored image holds for its whole upload.
    let reading = store.read_lock().expect("read lock");
    store.read("h.example/me/app:1", &reading).expect("read");

    let remover = {
        let store = store.clone();
        std::thread::spawn(move || store.remove("h.example/me/app:1"))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!remover.is_finished(), "rmi went ahead during the upload");
    assert_eq!(blob_count(&store), 3, "the image's blobs are all there");

    drop(reading);
    let removed = remover.join().expect("remover").expect("rmi");
    assert_eq!(removed.blobs_deleted, 3);
    assert_eq!(blob_count(&store), 0);
    assert!(names(&store).is_empty());
}
