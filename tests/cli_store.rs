//! The command line's own workflow: `imagebuild build DIR -t REF` with flags, the local image
//! store (`images`, `tag`, `rmi`, `save`, `push NAME`), `delete`, JSON output and completions.
//! The builds are scratch images, so everything up to the push runs without a network; the
//! suites against the real registries are `#[ignore]`d like the rest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

/// A scratch directory under target/ (plain `cargo test` writes nowhere else).
fn work_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// imagebuild with its local store (and layer cache) in `work`.
fn imagebuild(work: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"));
    cmd.env_remove("SOURCE_DATE_EPOCH")
        .env("IMAGEBUILD_STORE", store_of(work))
        .env("IMAGEBUILD_CACHE_DIR", work.join("cache"));
    cmd
}

fn store_of(work: &Path) -> PathBuf {
    work.join("store")
}

fn run(work: &Path, args: &[&str]) -> Output {
    common::output_with_stdin(imagebuild(work).args(args), b"")
}

fn run_stdin(work: &Path, args: &[&str], stdin: &str) -> Output {
    common::output_with_stdin(imagebuild(work).args(args), stdin.as_bytes())
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "imagebuild failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A site with a file left out by `.dockerignore` and one by `--exclude`/`exclude`.
fn write_context(root: &Path) {
    std::fs::create_dir_all(root.join("assets")).expect("dirs");
    std::fs::write(root.join("index.html"), "<h1>flags</h1>").expect("index");
    std::fs::write(root.join("assets/app.js"), "console.log(1)").expect("js");
    std::fs::write(root.join("notes.md"), "left out by exclude").expect("notes");
    std::fs::write(root.join("secret.env"), "left out by .dockerignore").expect("secret");
    std::fs::write(root.join(".dockerignore"), "*.env\n").expect("dockerignore");
}

fn image_build_file(dir: &Path, spec: &str) -> PathBuf {
    let path = dir.join("imagebuild.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: flags}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n{spec}"
        ),
    )
    .expect("write imagebuild.yaml");
    path
}

fn args_of(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The same image described by flags and by an ImageBuild file.
struct SameImage {
    flags: Vec<String>,
    spec: &'static str,
}

fn combinations() -> Vec<SameImage> {
    vec![
        SameImage {
            flags: args_of(&["-t", "h.example/me/site:v1"]),
            spec: "  image: h.example/me/site\n  tags: [v1]\n",
        },
        SameImage {
            flags: args_of(&[
                "-t",
                "h.example/me/site:v1",
                "-t",
                "h.example/me/site:v2",
                "--exclude",
                "*.md",
                "--destination-path",
                "/srv/www",
                "--entrypoint",
                r#"["/bin/server","--root","/srv/www"]"#,
                "--env",
                "MODE=prod",
                "--user",
                "65532",
                "--workdir",
                "/srv",
                "--port",
                "8080/tcp",
                "--label",
                "team=web",
                "--annotation",
                "org.opencontainers.image.source=https://git.example/site",
            ]),
            spec: "  image: h.example/me/site\n  tags: [v1, v2]\n  exclude: ['*.md']\n  destinationPath: /srv/www\n  annotations: {org.opencontainers.image.source: 'https://git.example/site'}\n  config:\n    entrypoint: [/bin/server, --root, /srv/www]\n    env: [{name: MODE, value: prod}]\n    user: '65532'\n    workingDir: /srv\n    exposedPorts: [8080/tcp]\n    labels: {team: web}\n",
        },
        SameImage {
            flags: args_of(&[
                "-t",
                "h.example/me/site",
                "--platform",
                "linux/amd64",
                "--platform",
                "linux/arm64",
            ]),
            spec: "  image: h.example/me/site\n  platforms: [linux/amd64, linux/arm64]\n",
        },
        SameImage {
            flags: args_of(&["-t", "h.example/me/site", "--platform", "linux/arm64"]),
            spec: "  image: h.example/me/site\n  platform: linux/arm64\n",
        },
    ]
}

#[test]
fn a_build_from_flags_has_the_digest_of_the_same_image_build_file() {
    let work = work_dir();
    let context = work.path().join("site");
    write_context(&context);
    let context_arg = context.to_str().expect("utf8");
    for (n, same) in combinations().iter().enumerate() {
        let file = image_build_file(work.path(), same.spec);
        let layout = work.path().join(format!("layout-{n}"));
        let from_file = stdout_ok(&run(
            work.path(),
            &[
                "build",
                "-f",
                file.to_str().expect("utf8"),
                "--context",
                context_arg,
                "--output",
                layout.to_str().expect("utf8"),
            ],
        ));
        let mut args = vec!["build", context_arg];
        args.extend(same.flags.iter().map(String::as_str));
        let from_flags = stdout_ok(&run(work.path(), &args));
        assert_eq!(from_flags, from_file, "flags {:?}", same.flags);
        assert!(from_flags.starts_with("sha256:"), "{from_flags}");
    }
}

#[test]
fn flags_given_with_a_file_override_it() {
    let work = work_dir();
    let context = work.path().join("site");
    write_context(&context);
    let file = image_build_file(
        work.path(),
        "  image: h.example/me/site\n  tags: [old]\n  config: {user: '1'}\n",
    );
    let expected_file = image_build_file(
        &work.path().join("expected").tap_create(),
        "  image: h.example/other/site\n  tags: [new]\n  config: {user: '2'}\n",
    );
    let context_arg = context.to_str().expect("utf8");
    let overridden = stdout_ok(&run(
        work.path(),
        &[
            "build",
            "-f",
            file.to_str().expect("utf8"),
            context_arg,
            "-t",
            "h.example/other/site:new",
            "--user",
            "2",
        ],
    ));
    let expected = stdout_ok(&run(
        work.path(),
        &[
            "build",
            "-f",
            expected_file.to_str().expect("utf8"),
            "--context",
            context_arg,
            "--output",
            work.path().join("layout").to_str().expect("utf8"),
        ],
    ));
    assert_eq!(overridden, expected);
    let names = stdout_ok(&run(work.path(), &["images", "--quiet"]));
    assert!(names.contains("h.example/other/site:new"), "{names}");
}

trait CreateDir {
    fn tap_create(self) -> Self;
}

impl CreateDir for PathBuf {
    fn tap_create(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}

/// The store's `images --output-format json`.
fn images_json(work: &Path) -> Vec<serde_json::Value> {
    let out = stdout_ok(&run(work, &["images", "--output-format", "json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn stored_names(work: &Path) -> Vec<String> {
    images_json(work)
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_owned())
        .collect()
}

fn blob_count(work: &Path) -> usize {
    std::fs::read_dir(store_of(work).join("blobs/sha256"))
        .expect("blobs")
        .count()
}

#[test]
fn a_build_without_push_is_kept_in_the_store_and_listed() {
    let work = work_dir();
    let context = work.path().join("site");
    write_context(&context);
    let out = run(
        work.path(),
        &[
            "build",
            context.to_str().expect("utf8"),
            "-t",
            "h.example/me/site:v1",
            "-t",
            "h.example/me/site:v2",
            "--output-format",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout_ok(&out)).expect("json");
    assert_eq!(
        report["refs"],
        serde_json::json!(["h.example/me/site:v1", "h.example/me/site:v2"])
    );
    let digest = report["digest"].as_str().expect("digest");
    let images = images_json(work.path());
    assert_eq!(images.len(), 2);
    for image in &images {
        assert_eq!(image["digest"], digest);
        assert_eq!(image["size"], report["size"]);
        assert_eq!(image["platforms"], serde_json::json!(["linux/amd64"]));
        assert_eq!(image["created"], "1970-01-01T00:00:00Z");
    }
    let table = stdout_ok(&run(work.path(), &["images"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(lines[1].starts_with("h.example/me/site:v1  "), "{table}");
    assert!(lines[1].contains(&digest[..19]), "{table}");
    assert!(lines[1].ends_with("linux/amd64"), "{table}");
}

#[test]
fn quiet_prints_the_digest_alone() {
    let work = work_dir();
    let context = work.path().join("site");
    write_context(&context);
    let out = run(
        work.path(),
        &[
            "build",
            context.to_str().expect("utf8"),
            "-t",
            "h.example/me/site",
            "--quiet",
        ],
    );
    let digest = stdout_ok(&out);
    assert!(
        digest.starts_with("sha256:") && !digest.contains('\n'),
        "{digest}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Builds `content` as a one-file scratch image under `tags`; returns its digest.
fn build_file_image(work: &Path, content: &str, tags: &[&str]) -> String {
    let context = work.join(format!("ctx-{}", content.len()));
    std::fs::create_dir_all(&context).expect("mkdir");
    std::fs::write(context.join("file.txt"), content).expect("write");
    let mut args = vec!["build", context.to_str().expect("utf8"), "--quiet"];
    for tag in tags {
        args.extend(["-t", tag]);
    }
    stdout_ok(&run(work, &args))
}

#[test]
fn tag_and_rmi_work_on_names_and_rmi_keeps_blobs_another_name_uses() {
    let work = work_dir();
    let first = build_file_image(work.path(), "one", &["h.example/me/a:1"]);
    let second = build_file_image(work.path(), "second", &["h.example/me/b:1"]);
    assert_eq!(blob_count(work.path()), 6);

    let tagged = stdout_ok(&run(work.path(), &["tag", "h.example/me/a:1", "2"]));
    assert_eq!(tagged, first);
    let tagged = stdout_ok(&run(
        work.path(),
        &["tag", "h.example/me/a:1", "other.example/you/c:latest"],
    ));
    assert_eq!(tagged, first);
    assert_eq!(
        stored_names(work.path()),
        [
            "h.example/me/a:1",
            "h.example/me/b:1",
            "h.example/me/a:2",
            "other.example/you/c:latest"
        ]
    );

    let removed = stdout_ok(&run(work.path(), &["rmi", "h.example/me/a:1"]));
    assert_eq!(removed, format!("untagged h.example/me/a:1 ({first})"));
    assert_eq!(blob_count(work.path()), 6, "a:2 and c still use them");
    stdout_ok(&run(work.path(), &["rmi", "h.example/me/a:2"]));
    stdout_ok(&run(work.path(), &["rmi", "other.example/you/c"]));
    assert_eq!(blob_count(work.path()), 3, "only b's blobs are left");
    assert_eq!(stored_names(work.path()), ["h.example/me/b:1"]);
    let _ = second;

    let out = run(work.path(), &["rmi", "h.example/me/a:1"]);
    assert_eq!(out.status.code(), Some(4), "a name not there is not found");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("imagebuild: no local image `h.example/me/a:1`"),
        "{stderr}"
    );
}

#[test]
fn save_writes_an_oci_archive_of_the_one_image() {
    let work = work_dir();
    let digest = build_file_image(work.path(), "one", &["h.example/me/a:1"]);
    build_file_image(work.path(), "second", &["h.example/me/b:1"]);
    let archive = work.path().join("a.tar");
    let saved = stdout_ok(&run(
        work.path(),
        &[
            "save",
            "h.example/me/a:1",
            "-o",
            archive.to_str().expect("utf8"),
        ],
    ));
    assert_eq!(saved, digest);
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    let tar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar");
    assert!(tar.success());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "h.example/me/a:1"
    );
    let blobs = std::fs::read_dir(unpacked.join("blobs/sha256"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 3, "manifest, config, layer of this image alone");
}

/// Two `imagebuild build` processes into one store at once.
fn build_concurrently(work: &Path) -> Vec<String> {
    let contexts: Vec<PathBuf> = (0..2)
        .map(|n| {
            let dir = work.join(format!("ctx{n}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            // Large enough that the two builds overlap.
            let content = format!("{n}").repeat(8 << 20);
            std::fs::write(dir.join("big.txt"), content).expect("write");
            std::fs::write(dir.join("shared.txt"), "shared").expect("write");
            dir
        })
        .collect();
    let children: Vec<_> = contexts
        .iter()
        .enumerate()
        .map(|(n, dir)| {
            imagebuild(work)
                .args(["build", "--quiet", "-t"])
                .arg(format!("h.example/me/app{n}:v1"))
                .args(["-t", &format!("h.example/me/app{n}:v2")])
                .arg(dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn imagebuild")
        })
        .collect();
    children
        .into_iter()
        .map(|child| stdout_ok(&child.wait_with_output().expect("wait")))
        .collect()
}

#[test]
fn two_builds_at_once_into_one_store_keep_every_name() {
    let work = work_dir();
    let digests = build_concurrently(work.path());
    let mut names = stored_names(work.path());
    names.sort();
    assert_eq!(
        names,
        [
            "h.example/me/app0:v1",
            "h.example/me/app0:v2",
            "h.example/me/app1:v1",
            "h.example/me/app1:v2"
        ]
    );
    for image in images_json(work.path()) {
        assert!(digests.contains(&image["digest"].as_str().expect("digest").to_owned()));
    }
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    let work = work_dir();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_ok(&run(work.path(), &["completion", shell]));
        assert!(script.contains("imagebuild"), "{shell}");
        for word in ["images", "rmi", "delete", "output-format"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
}

#[test]
fn build_without_a_directory_or_file_says_what_to_give() {
    let work = work_dir();
    let out = run(work.path(), &["build", "-t", "h.example/me/a:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "imagebuild: name the directory to build (imagebuild build DIR -t REF) or an ImageBuild file (-f FILE)"
    );
    let context = work.path().join("ctx");
    std::fs::create_dir_all(&context).expect("mkdir");
    let out = run(work.path(), &["build", context.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name the image with -t host/owner/name:tag"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- Against the real environment ----

use common::targets::Target;

fn gitea(env: &common::TestEnv) -> Target {
    Target::gitea(env)
}

fn distribution(env: &common::TestEnv) -> Target {
    Target::distribution(env)
}

/// The CLI's registry commands against one target.
trait Commands {
    /// Runs a registry command with this target's CA and credentials.
    fn run(&self, work: &Path, args: &[&str]) -> Output;
    fn tags(&self, work: &Path, repository: &str) -> Vec<String>;
}

impl Commands for Target {
    fn run(&self, work: &Path, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.flags());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_stdin(work, &all, &self.password)
    }

    fn tags(&self, work: &Path, repository: &str) -> Vec<String> {
        let out = stdout_ok(&self.run(work, &["list", repository, "--output-format", "json"]));
        let list: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(list["repository"], repository);
        list["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .map(|t| t.as_str().expect("tag").to_owned())
            .collect()
    }
}

/// Builds into the store, pushes the stored image, deletes one tag, then the other.
fn stored_image_is_pushed_and_its_tags_deleted(target: Target) {
    let env = common::env();
    let work = work_dir();
    let repository = target.repo(&common::unique_name("store"));
    let digest = build_file_image(
        work.path(),
        "pushed from the store",
        &[&format!("{repository}:v1")],
    );
    stdout_ok(&run(
        work.path(),
        &["tag", &format!("{repository}:v1"), "v2"],
    ));
    for tag in ["v1", "v2"] {
        let pushed = stdout_ok(&target.run(work.path(), &["push", &format!("{repository}:{tag}")]));
        assert_eq!(pushed, format!("{repository}@{digest}"));
    }
    let creds = format!("{}:{}", target.user, target.password);
    let served = env
        .raw_manifest(&target.ca, &creds, &format!("{repository}:v2"))
        .expect("v2 is served");
    assert_eq!(
        format!("sha256:{}", common_sha256(&served)),
        digest,
        "the registry serves the stored digest"
    );
    let mut tags = target.tags(work.path(), &repository);
    tags.sort();
    assert_eq!(tags, ["v1", "v2"]);

    let deleted = stdout_ok(&target.run(work.path(), &["delete", &format!("{repository}:v1")]));
    assert_eq!(deleted, format!("deleted {repository}:v1"));
    assert!(
        env.raw_manifest(&target.ca, &creds, &format!("{repository}:v1"))
            .is_none(),
        "v1 is gone"
    );
    // The distribution registry deletes by digest, which takes v2 with it; Gitea keeps v2.
    if env
        .raw_manifest(&target.ca, &creds, &format!("{repository}:v2"))
        .is_some()
    {
        let deleted =
            stdout_ok(&target.run(work.path(), &["delete", &format!("{repository}@{digest}")]));
        assert_eq!(deleted, format!("deleted {repository}@{digest}"));
    }
    assert!(
        env.raw_manifest(&target.ca, &creds, &format!("{repository}:v2"))
            .is_none()
    );
    let out = target.run(work.path(), &["delete", &format!("{repository}:v1")]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn common_sha256(bytes: &[u8]) -> String {
    let out = common::output_with_stdin(&mut std::process::Command::new("sha256sum"), bytes);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum")
        .to_owned()
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_stored_image_is_pushed_to_gitea_and_delete_removes_its_tags() {
    stored_image_is_pushed_and_its_tags_deleted(gitea(common::env()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_stored_image_is_pushed_to_the_distribution_registry_and_delete_removes_it() {
    stored_image_is_pushed_and_its_tags_deleted(distribution(common::env()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_store_after_concurrent_builds_tags_and_removals_is_a_valid_oci_layout() {
    let work = work_dir();
    build_concurrently(work.path());
    stdout_ok(&run(
        work.path(),
        &["tag", "h.example/me/app0:v1", "h.example/me/copy:1"],
    ));
    stdout_ok(&run(work.path(), &["rmi", "h.example/me/app0:v1"]));
    stdout_ok(&run(work.path(), &["rmi", "h.example/me/app1:v1"]));
    stdout_ok(&run(work.path(), &["rmi", "h.example/me/app1:v2"]));
    let archive = work.path().join("copy.tar");
    stdout_ok(&run(
        work.path(),
        &[
            "save",
            "h.example/me/copy:1",
            "-o",
            archive.to_str().expect("utf8"),
        ],
    ));
    // The archive unpacked is a layout too (Debian's oci-image-tool rc1 fails walking any tar
    // with "end of walk", so it judges the unpacked directory).
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar");
    assert!(untar.success());
    // Debian's oci-image-tool calls a layout directory `--type image`.
    for layout in [store_of(work.path()), unpacked] {
        let out = std::process::Command::new("oci-image-tool")
            .args(["validate", "--type", "image"])
            .arg(&layout)
            .output()
            .expect("oci-image-tool (tests/env/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "oci-image-tool on {}: {}{}",
            layout.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_flag_build_pushed_to_gitea_reports_as_json_what_the_registry_serves() {
    let env = common::env();
    let target = gitea(env);
    let work = work_dir();
    let context = work.path().join("site");
    write_context(&context);
    let repository = target.repo(&common::unique_name("flags"));
    let out = target.run(
        work.path(),
        &[
            "build",
            context.to_str().expect("utf8"),
            "-t",
            &format!("{repository}:v1"),
            "-t",
            &format!("{repository}:v2"),
            "--env",
            "MODE=prod",
            "--push",
            "--output-format",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout_ok(&out)).expect("json");
    assert_eq!(
        report["refs"],
        serde_json::json!([format!("{repository}:v1"), format!("{repository}:v2")])
    );
    let creds = format!("{}:{}", target.user, target.password);
    for tag in ["v1", "v2"] {
        let served = env
            .raw_manifest(&target.ca, &creds, &format!("{repository}:{tag}"))
            .expect("served");
        assert_eq!(
            format!("sha256:{}", common_sha256(&served)),
            report["digest"]
        );
    }
    assert!(
        !store_of(work.path()).exists(),
        "a push leaves the local store alone"
    );
}
