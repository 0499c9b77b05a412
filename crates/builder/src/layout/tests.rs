//! Writing and reading OCI image layouts.

use bytes::Bytes;
use serde_json::Value;

use super::*;
use crate::context::{ContextItem, ContextOptions, FileTree};
use crate::image::{self, ImageSpec};
use crate::layer::{self, LayerOptions};

fn tree() -> FileTree {
    let item = ContextItem {
        source: "test".into(),
        path: "hello.txt".into(),
        mode: None,
        data: Bytes::from_static(b"hello\n"),
        archive: false,
    };
    FileTree::from_items(vec![item], &ContextOptions::default()).expect("tree")
}

/// Builds an image with its layer written straight into `dir`'s blobs.
fn build_into(dir: &Path) -> BuiltImage {
    let blobs = blobs_dir(dir).expect("blobs dir");
    let layer = layer::build_layer(&tree(), &LayerOptions::default(), &blobs).expect("layer");
    image::assemble(None, std::slice::from_ref(&layer), &ImageSpec::default()).expect("image")
}

/// [`super::write`] of a single image.
fn write(dir: &Path, image: &BuiltImage, tags: &[String]) -> Result<(), LayoutError> {
    super::write(dir, &Built::Image(image.clone()), tags)
}

/// [`super::read`] of a layout entry that must be a single image.
fn read(dir: &Path, tag: Option<&str>) -> Result<BuiltImage, LayoutError> {
    match super::read(dir, tag)? {
        Built::Image(image) => Ok(image),
        Built::Index(index) => panic!("expected one image, read an index {}", index.digest),
    }
}

/// A two-platform scratch index whose shared layer is written straight into `dir`'s blobs.
fn build_index_into(dir: &Path) -> Built {
    let blobs = blobs_dir(dir).expect("blobs dir");
    let layer = layer::build_layer(&tree(), &LayerOptions::default(), &blobs).expect("layer");
    let platforms: Vec<oci::Platform> = ["linux/amd64", "linux/arm64/v8"]
        .iter()
        .map(|p| p.parse().expect("platform"))
        .collect();
    let children = image::Children::Scratch(&platforms);
    Built::Index(
        image::assemble_index(
            children,
            std::slice::from_ref(&layer),
            &ImageSpec::default(),
        )
        .expect("index"),
    )
}

#[test]
fn an_index_layout_names_the_index_and_reads_back_with_every_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let built = build_index_into(dir.path());
    super::write(dir.path(), &built, &["v1".into()]).expect("write");
    let entry = &index(dir.path())["manifests"][0];
    assert_eq!(entry["mediaType"], oci::MEDIA_TYPE_IMAGE_INDEX);
    assert_eq!(entry["digest"], built.digest().as_str());
    let blobs = fs::read_dir(dir.path().join("blobs/sha256"))
        .expect("blobs")
        .count();
    assert_eq!(
        blobs, 6,
        "one shared layer, two configs, two manifests, the index"
    );

    let Built::Index(read_back) = super::read(dir.path(), Some("v1")).expect("read") else {
        panic!("expected an index");
    };
    assert_eq!(read_back.digest, *built.digest());
    let platforms: Vec<String> = read_back
        .children
        .iter()
        .map(|c| c.platform.as_ref().expect("platform").to_string())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(
        read_back.children[0].layers[0].descriptor, read_back.children[1].layers[0].descriptor,
        "the children share the context layer"
    );
}

fn index(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("index.json")).expect("index")).expect("json")
}

fn tags(dir: &Path) -> Vec<String> {
    index(dir)["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            m["annotations"][ANNOTATION_REF_NAME]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[test]
fn a_written_layout_reads_back_as_the_same_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = build_into(dir.path());
    write(dir.path(), &image, &["v1".into()]).expect("write");
    let read_back = read(dir.path(), Some("v1")).expect("read");
    assert_eq!(read_back.manifest, image.manifest);
    assert_eq!(read_back.manifest_digest, image.manifest_digest);
    assert_eq!(read_back.config.location, image.config.location);
    let BlobLocation::File(layer_path) = &read_back.layers[0].location else {
        panic!("layers are read as files")
    };
    assert!(layer_path.starts_with(dir.path().join("blobs/sha256")));
}

#[test]
fn the_layout_has_its_marker_file_and_one_index_entry_per_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = build_into(dir.path());
    write(dir.path(), &image, &["latest".into(), "v1".into()]).expect("write");
    let marker = fs::read_to_string(dir.path().join("oci-layout")).expect("oci-layout");
    assert_eq!(marker, r#"{"imageLayoutVersion":"1.0.0"}"#);
    assert_eq!(tags(dir.path()), ["latest", "v1"]);
    assert_eq!(
        index(dir.path())["manifests"][0]["digest"],
        image.manifest_digest.as_str()
    );
}

#[test]
fn writing_another_tag_keeps_the_others_and_replaces_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = build_into(dir.path());
    write(dir.path(), &image, &["a".into(), "b".into()]).expect("write");
    write(dir.path(), &image, &["b".into(), "c".into()]).expect("write again");
    assert_eq!(tags(dir.path()), ["a", "b", "c"]);
}

#[test]
fn a_layer_built_in_place_is_not_copied_and_every_blob_is_present() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = build_into(dir.path());
    write(dir.path(), &image, &["t".into()]).expect("write");
    let blobs: Vec<String> = fs::read_dir(dir.path().join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), 3, "config, layer, manifest: {blobs:?}");
    for digest in [
        &image.manifest_digest,
        &image.config.descriptor.digest,
        &image.layers[0].descriptor.digest,
    ] {
        assert!(blobs.contains(&digest.hex().to_owned()), "{digest}");
    }
}

#[test]
fn a_layer_from_elsewhere_is_copied_in() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let image = build_into(elsewhere.path());
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &image, &["t".into()]).expect("write");
    let layer = &image.layers[0].descriptor.digest;
    let copied = fs::read(dir.path().join("blobs/sha256").join(layer.hex())).expect("layer");
    assert_eq!(Digest::of(&copied), *layer);
}

#[test]
fn a_missing_base_layer_is_refused_naming_it_and_its_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut image = build_into(dir.path());
    let digest = Digest::of(b"base layer");
    image.layers.insert(
        0,
        Blob {
            descriptor: Descriptor {
                media_type: oci::MEDIA_TYPE_LAYER_GZIP.into(),
                digest: digest.clone(),
                size: 1,
                platform: None,
                annotations: BTreeMap::new(),
            },
            location: BlobLocation::Base,
        },
    );
    let message = write(dir.path(), &image, &["t".into()])
        .expect_err("missing base blob")
        .to_string();
    assert!(message.contains(digest.as_str()), "{message}");
}

#[test]
fn reading_an_unknown_tag_lists_the_available_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = build_into(dir.path());
    write(dir.path(), &image, &["v1".into(), "v2".into()]).expect("write");
    let message = read(dir.path(), Some("v3"))
        .expect_err("unknown")
        .to_string();
    assert!(
        message.contains("v3") && message.contains("v1, v2"),
        "{message}"
    );
}

#[test]
fn reading_without_a_tag_needs_a_single_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = build_into(dir.path());
    write(dir.path(), &image, &["only".into()]).expect("write");
    assert!(read(dir.path(), None).is_ok());
    write(dir.path(), &image, &["second".into()]).expect("write");
    assert!(matches!(
        read(dir.path(), None),
        Err(LayoutError::TagRequired { count: 2, .. })
    ));
}

#[test]
fn a_directory_without_a_layout_is_named_as_not_a_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = read(dir.path(), None).expect_err("not a layout");
    assert!(matches!(err, LayoutError::NotALayout { .. }), "{err}");
    assert!(err.to_string().contains("oci-layout"));
}

#[test]
fn a_damaged_manifest_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = build_into(dir.path());
    write(dir.path(), &image, &["t".into()]).expect("write");
    let path = dir
        .path()
        .join("blobs/sha256")
        .join(image.manifest_digest.hex());
    fs::write(&path, b"{}").expect("damage");
    let err = read(dir.path(), Some("t")).expect_err("damaged");
    assert!(matches!(err, LayoutError::DigestMismatch { .. }), "{err}");
}
