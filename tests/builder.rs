//! The builder judged by tools that are not ours: umoci unpacks the image, skopeo inspects and
//! copies it (checking every digest), GNU tar lists the layer. No network needed.
//!
//! Needs `umoci`, `skopeo` and GNU `tar` (installed by tests/env/install-deps.sh, or
//! `apt-get install -y umoci skopeo`).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use imagebuild::context::{ContextOptions, FileTree};
use imagebuild::image::{self, ImageSpec};
use imagebuild::layer::{self, Compression, LayerOptions};
use imagebuild::layout;
use imagebuild::oci::{BlobLocation, BuiltImage};

const DESTINATION: &str = "/srv/www";
const TAG: &str = "v1";

fn long_dir() -> String {
    format!("long-{}", "x".repeat(110))
}

/// Text spanning several 1 MiB blocks, so the layer is several gzip members.
fn big_text() -> String {
    (0..120_000)
        .map(|i| format!("line {i} of a big file\n"))
        .collect()
}

/// Noise, so some blocks are stored rather than compressed.
fn noise() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(42);
    (0..1_500_000).map(|_| rng.u8(..)).collect()
}

/// A context with files, nested directories, an executable, a symlink, a long name, an
/// empty directory, and large files that make the layer span several blocks.
fn make_context(root: &Path) {
    let write = |rel: &str, content: &str, mode: u32| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, content).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    write("index.html", "<h1>hello</h1>\n", 0o600);
    write("assets/css/site.css", "h1 { color: red }\n", 0o644);
    write("bin/run.sh", "#!/bin/sh\necho run\n", 0o700);
    write(&format!("{}/file.txt", long_dir()), "long\n", 0o644);
    write("data/big.txt", &big_text(), 0o644);
    fs::write(root.join("data/noise.bin"), noise()).expect("noise");
    fs::create_dir_all(root.join("empty")).expect("mkdir");
    symlink("index.html", root.join("latest.html")).expect("symlink");
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install it with tests/env/install-deps.sh")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

struct Built {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    image: BuiltImage,
}

fn build(compression: Compression) -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let context = dir.path().join("context");
    make_context(&context);
    let layout_dir = dir.path().join("layout");
    let tree = FileTree::from_dir(&context, &ContextOptions::default()).expect("context");
    let blobs = layout::blobs_dir(&layout_dir).expect("blobs");
    let opts = LayerOptions {
        destination_path: DESTINATION.into(),
        compression,
        source_date_epoch: Some(1_700_000_000),
        threads: 2,
    };
    let layer = layer::build_layer(&tree, &opts, &blobs).expect("layer");
    let spec = ImageSpec {
        entrypoint: Some(vec!["/srv/www/bin/run.sh".into()]),
        env: vec![("MODE".into(), "test".into())],
        working_dir: Some(DESTINATION.into()),
        ..ImageSpec::default()
    };
    let image = image::assemble(None, std::slice::from_ref(&layer), &spec).expect("image");
    layout::write(&layout_dir, &image.clone().into(), &[TAG.into()]).expect("layout");
    Built {
        _dir: dir,
        layout: layout_dir,
        image,
    }
}

fn layer_path(built: &Built) -> &Path {
    match &built.image.layers[0].location {
        BlobLocation::File(path) => path,
        other => panic!("our layer is a file, not {other:?}"),
    }
}

fn image_ref(built: &Built) -> String {
    format!("{}:{TAG}", built.layout.display())
}

fn assert_unpacks_with_umoci(built: &Built) {
    let bundle = built._dir.path().join("bundle");
    let bundle_arg = bundle.display().to_string();
    run(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &image_ref(built),
            &bundle_arg,
        ],
    );
    let www = bundle.join("rootfs/srv/www");
    let mode = |rel: &str| {
        fs::symlink_metadata(www.join(rel))
            .expect("unpacked")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        fs::read_to_string(www.join("index.html")).expect("index"),
        "<h1>hello</h1>\n"
    );
    assert_eq!(
        fs::read_to_string(www.join("assets/css/site.css")).expect("css"),
        "h1 { color: red }\n"
    );
    assert_eq!(
        fs::read_to_string(www.join(format!("{}/file.txt", long_dir()))).expect("long"),
        "long\n"
    );
    assert_eq!(
        fs::read_to_string(www.join("data/big.txt")).expect("big"),
        big_text()
    );
    assert_eq!(
        fs::read(www.join("data/noise.bin")).expect("noise"),
        noise()
    );
    assert_eq!(mode("index.html"), 0o644, "0600 is normalised to 0644");
    assert_eq!(mode("bin/run.sh"), 0o755, "owner-executable becomes 0755");
    assert_eq!(mode("empty"), 0o755);
    assert!(
        fs::read_dir(www.join("empty"))
            .expect("empty dir")
            .next()
            .is_none()
    );
    assert_eq!(
        fs::read_link(www.join("latest.html")).expect("symlink"),
        PathBuf::from("index.html")
    );
}

fn assert_skopeo_agrees(built: &Built) {
    let oci_ref = format!("oci:{}", image_ref(built));
    let inspect: Value =
        serde_json::from_str(&run("skopeo", &["inspect", &oci_ref])).expect("inspect json");
    assert_eq!(inspect["Digest"], built.image.manifest_digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(
        inspect["Layers"][0],
        built.image.layers[0].descriptor.digest.as_str()
    );
    assert!(
        inspect["Env"]
            .as_array()
            .expect("env")
            .contains(&Value::from("MODE=test"))
    );
    // Copying reads every blob back and checks it against its digest.
    let copy = format!("dir:{}", built._dir.path().join("copy").display());
    run("skopeo", &["copy", "--quiet", &oci_ref, &copy]);
}

fn expected_listing() -> Vec<String> {
    let long = long_dir();
    [
        "srv/",
        "srv/www/",
        "srv/www/assets/",
        "srv/www/assets/css/",
        "srv/www/assets/css/site.css",
        "srv/www/bin/",
        "srv/www/bin/run.sh",
        "srv/www/data/",
        "srv/www/data/big.txt",
        "srv/www/data/noise.bin",
        "srv/www/empty/",
        "srv/www/index.html",
        "srv/www/latest.html",
        &format!("srv/www/{long}/"),
        &format!("srv/www/{long}/file.txt"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Names from `tar -tv` lines (the symlink's ` -> target` cut off).
fn listed_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(|line| {
            let name = line.split_whitespace().nth(5).expect("name column");
            name.to_owned()
        })
        .collect()
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_gzip_image_unpacks_with_umoci_exactly_as_the_context_was() {
    assert_unpacks_with_umoci(&build(Compression::default()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_gzip_image_is_accepted_by_skopeo_with_every_digest_right() {
    assert_skopeo_agrees(&build(Compression::default()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn gnu_tar_lists_the_gzip_layer_sorted_with_root_owner_and_fixed_mtime() {
    let built = build(Compression::default());
    let path = layer_path(&built).display().to_string();
    let listing = run("tar", &["--numeric-owner", "--utc", "-tvzf", &path]);
    assert_eq!(listed_names(&listing), expected_listing());
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "owner is root: {line}");
        assert!(
            line.contains("2023-11-14 22:13"),
            "mtime is the epoch: {line}"
        );
    }
    assert!(listing.contains("srv/www/latest.html -> index.html"));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_layer_spans_several_gzip_members_that_gzip_itself_accepts() {
    let built = build(Compression::default());
    assert!(built.image.layers[0].descriptor.size > 1 << 20);
    let path = layer_path(&built).display().to_string();
    run("gzip", &["--test", &path]);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_same_context_builds_the_same_image_twice() {
    let first = build(Compression::default());
    let second = build(Compression::default());
    assert_eq!(first.image.manifest_digest, second.image.manifest_digest);
}

/// umoci 0.4 (Debian 12) predates zstd layers, so skopeo and GNU tar judge them.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_zstd_image_is_accepted_by_skopeo_and_gnu_tar() {
    let built = build(Compression::Zstd { level: 3 });
    assert_skopeo_agrees(&built);
    let path = layer_path(&built).display().to_string();
    let listing = run("tar", &["--zstd", "-tvf", &path]);
    assert_eq!(listed_names(&listing), expected_listing());
}
