//! Large contexts as several layers, against the real registries: what the registry holds after
//! a push (several layers, the files of the context, nothing else), what one changed file costs
//! (one new layer, its bytes uploaded), and that every path of the builder (no-op, upload while
//! writing, zstd, two platforms, fresh copies of the files) makes the same layers.

mod common;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use common::contexts::{
    assert_same_files, bytes_uploaded as uploaded, change_one_file, layer_list as layers,
    write_large_context,
};
use common::targets::Target;

/// `imagebuild ARGS` with the password on stdin and the layer cache in `cache`.
fn run(cache: &Path, args: &[&str], password: &str) -> Output {
    common::output_with_stdin(
        std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
            .env_remove("SOURCE_DATE_EPOCH")
            .env("IMAGEBUILD_CACHE_DIR", cache)
            .args(args),
        password.as_bytes(),
    )
}

/// What a successful command printed: (stdout trimmed, stderr).
fn ok(out: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "imagebuild failed ({}): {stderr}",
        out.status
    );
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr,
    )
}

/// `imagebuild build DIR -t REF --push EXTRA…` to `target`; returns (image@digest, stderr).
fn push(
    target: &Target,
    cache: &Path,
    dir: &Path,
    reference: &str,
    extra: &[&str],
) -> (String, String) {
    let mut args = vec![
        "build",
        dir.to_str().expect("utf8"),
        "-t",
        reference,
        "--push",
    ];
    args.extend_from_slice(extra);
    let flags = target.flags();
    args.extend(flags.iter().map(String::as_str));
    ok(run(cache, &args, &target.password))
}

/// The manifest (or index) `reference` serves, as JSON.
fn manifest(target: &Target, reference: &str) -> Value {
    let env = common::env();
    let raw = env
        .raw_manifest(&target.ca, &target.creds(), reference)
        .unwrap_or_else(|| panic!("skopeo cannot read {reference}"));
    serde_json::from_slice(&raw).expect("manifest JSON")
}

/// The repository part of `host/owner/name@sha256:…`, with the digest as a reference.
fn by_digest(repo: &str, image_ref: &str) -> String {
    let (_, digest) = image_ref.split_once('@').expect("image@digest");
    format!("{repo}@{digest}")
}

/// Files written, then at least two seconds old: the layer cache trusts only settled files.
fn settled_context(dir: &Path, seed: u64) {
    write_large_context(dir, seed);
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

fn one_changed_file_is_one_new_layer(target: Target) {
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let (context, cache) = (work.path().join("ctx"), work.path().join("cache"));
    settled_context(&context, 11);
    let repo = target.repo(&common::unique_name("layers"));
    let reference = format!("{repo}:v1");

    // Cold: several layers, uploaded while they are written, holding the context's files.
    let (first, log) = push(&target, &cache, &context, &reference, &[]);
    let before = layers(&manifest(&target, &by_digest(&repo, &first)));
    assert!((2..=16).contains(&before.len()), "{} layers", before.len());
    assert!(log.contains("while the layer was written"), "{log}");
    let total: u64 = before.iter().map(|(_, size)| size).sum();
    assert!(uploaded(&log) >= total, "{log}");
    let pulled = env.pull_and_unpack(&target.ca, &target.creds(), &by_digest(&repo, &first));
    assert_same_files(&context, &pulled.path().join("bundle/rootfs"));

    // Nothing changed: every layer is found, nothing is compressed or uploaded.
    let (again, log) = push(&target, &cache, &context, &reference, &[]);
    assert_eq!(again, first);
    let count = before.len();
    assert!(
        log.contains(&format!("{count} of {count} layers unchanged")),
        "{log}"
    );
    assert_eq!(uploaded(&log), 0, "{log}");

    // One file changed: one new layer (two if the file moved a cut), and only its bytes go up.
    change_one_file(&context, "one more line");
    let (second, log) = push(&target, &cache, &context, &reference, &[]);
    assert_ne!(second, first);
    let after = layers(&manifest(&target, &by_digest(&repo, &second)));
    let new: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!((1..=2).contains(&new.len()), "new layers: {new:?}");
    let new_bytes: u64 = new.iter().map(|(_, size)| size).sum();
    let sent = uploaded(&log);
    // The new layers and the new config, nothing else.
    assert!(
        sent >= new_bytes && sent < new_bytes + 16_384,
        "{sent} bytes sent for {new_bytes} bytes of new layers: {log}"
    );
    assert!(sent * 4 < total, "{sent} of {total} bytes sent again");
    let kept = after.len() - new.len();
    assert!(
        log.contains(&format!("{kept} of {} layers unchanged", after.len())),
        "{log}"
    );
    let pulled = env.pull_and_unpack(&target.ca, &target.creds(), &by_digest(&repo, &second));
    assert_same_files(&context, &pulled.path().join("bundle/rootfs"));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn one_changed_file_in_a_large_context_uploads_one_layer_to_gitea() {
    one_changed_file_is_one_new_layer(Target::gitea(common::env()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn one_changed_file_in_a_large_context_uploads_one_layer_to_the_distribution_registry() {
    one_changed_file_is_one_new_layer(Target::distribution(common::env()));
}

/// Two fresh copies of the same files (new inodes, new times) give the same image on their own,
/// and the second push finds every layer by its diffID: nothing compressed, nothing uploaded.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn two_fresh_copies_give_the_same_image_and_the_second_push_finds_every_layer() {
    let target = Target::gitea(common::env());
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    write_large_context(&a, 23);
    write_large_context(&b, 23);
    let cache = work.path().join("cache");
    let repo = target.repo(&common::unique_name("layers-copies"));
    let reference = format!("{repo}:latest");

    let layout = |dir: &Path, name: &str| {
        let out = work.path().join(name);
        let args = [
            "build",
            dir.to_str().expect("utf8"),
            "-t",
            &reference,
            "--output",
            out.to_str().expect("utf8"),
        ];
        // A fresh cache each: nothing is shared but the files' bytes.
        ok(run(&work.path().join(format!("cache-{name}")), &args, "")).0
    };
    assert_eq!(
        layout(&a, "layout-a"),
        layout(&b, "layout-b"),
        "same files, same image"
    );

    let (first, _) = push(&target, &cache, &a, &reference, &[]);
    let (second, log) = push(&target, &cache, &b, &reference, &[]);
    assert_eq!(second, first);
    let count = layers(&manifest(&target, &by_digest(&repo, &first))).len();
    assert!(
        log.contains(&format!("{count} of {count} layers unchanged")),
        "{log}"
    );
    assert_eq!(uploaded(&log), 0, "{log}");
}

/// zstd and two platforms: every child lists the same layers, as many as gzip would cut.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn both_children_of_a_two_platform_zstd_image_share_the_same_layers() {
    let target = Target::gitea(common::env());
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_large_context(&context, 31);
    let cache = work.path().join("cache");
    let repo = target.repo(&common::unique_name("layers-index"));
    let file = work.path().join("build.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: layers}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {repo}\n  tags: [latest]\n  compression: zstd\n  platforms: [linux/amd64, linux/arm64]\n"
        ),
    )
    .expect("ImageBuild file");
    let mut args = vec![
        "build",
        "-f",
        file.to_str().expect("utf8"),
        "--context",
        context.to_str().expect("utf8"),
        "--push",
    ];
    let flags = target.flags();
    args.extend(flags.iter().map(String::as_str));
    let (pushed, _) = ok(run(&cache, &args, &target.password));

    let index = manifest(&target, &by_digest(&repo, &pushed));
    let children = index["manifests"].as_array().expect("an index");
    assert_eq!(children.len(), 2);
    let lists: Vec<Vec<(String, u64)>> = children
        .iter()
        .map(|child| {
            let digest = child["digest"].as_str().expect("digest");
            let child = manifest(&target, &format!("{repo}@{digest}"));
            for layer in child["layers"].as_array().expect("layers") {
                assert_eq!(
                    layer["mediaType"],
                    "application/vnd.oci.image.layer.v1.tar+zstd"
                );
            }
            layers(&child)
        })
        .collect();
    assert!(lists[0].len() >= 2, "{} layers", lists[0].len());
    assert_eq!(lists[0], lists[1]);
}

/// `--layers single` (spec.layers: single) keeps the large context in one layer.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn single_keeps_a_large_context_in_one_layer() {
    let target = Target::gitea(common::env());
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_large_context(&context, 41);
    let repo = target.repo(&common::unique_name("layers-single"));
    let (pushed, _) = push(
        &target,
        &work.path().join("cache"),
        &context,
        &format!("{repo}:1"),
        &["--layers", "single"],
    );
    assert_eq!(
        layers(&manifest(&target, &by_digest(&repo, &pushed))).len(),
        1
    );
}
