//! The command line against the real registries: what `imagebuild build / push / list / tag`
//! leave in Gitea (trusting only idpbuilder's kind of certificate) and in the distribution
//! registry, judged by skopeo and umoci, and how each failure reads.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::TestEnv;

/// The digest of `examples/hello-site` built with no SOURCE_DATE_EPOCH: any change to the
/// layer or image format shows up here first.
const HELLO_SITE_DIGEST: &str =
    "sha256:4542d5fa9cb6464675e6d4f9e47f76293cbfa8951d5f73cd19d9465a01092466";

fn imagebuild() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"));
    cmd.env_remove("SOURCE_DATE_EPOCH");
    // The tests' record of pushed layers, not the user's.
    cmd.env("IMAGEBUILD_CACHE_DIR", layer_cache_dir());
    cmd
}

fn layer_cache_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("cache dir"))
        .path()
}

/// Runs imagebuild with `stdin`; returns the whole output.
fn run(args: &[&str], stdin: &str) -> Output {
    common::output_with_stdin(imagebuild().args(args), stdin.as_bytes())
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

/// Which registry a test pushes to.
use common::targets::Target;

fn gitea(env: &TestEnv) -> Target {
    Target::gitea(env)
}

fn distribution(env: &TestEnv) -> Target {
    Target::distribution(env)
}

/// What the CLI suite asks of a registry besides the shared target.
trait Served {
    /// The digest the registry serves for `reference`, read by skopeo.
    fn served_digest(&self, env: &TestEnv, reference: &str) -> String;
    /// Pulls `reference` with skopeo and unpacks it with umoci; returns the bundle directory.
    fn pull(&self, env: &TestEnv, reference: &str) -> tempfile::TempDir;
}

impl Served for Target {
    fn served_digest(&self, env: &TestEnv, reference: &str) -> String {
        let raw = env
            .raw_manifest(&self.ca, &self.creds(), reference)
            .unwrap_or_else(|| panic!("skopeo cannot read {reference}"));
        imagebuild::oci::Digest::of(&raw).to_string()
    }
    fn pull(&self, env: &TestEnv, reference: &str) -> tempfile::TempDir {
        env.pull_and_unpack(&self.ca, &self.creds(), reference)
    }
}

/// A context with a nested file, an executable, a symlink and a long name.
fn write_context(root: &Path) {
    std::fs::create_dir_all(root.join("site/assets")).expect("dirs");
    std::fs::write(root.join("site/index.html"), "<h1>cli</h1>").expect("index");
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho run\n").expect("run.sh");
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
    std::os::unix::fs::symlink("site/index.html", root.join("home.html")).expect("symlink");
    let long = "n".repeat(120);
    std::fs::write(root.join("site/assets").join(&long), "long").expect("long name");
    std::fs::write(root.join("notes.md"), "excluded").expect("notes");
}

fn image_build_file(dir: &Path, image: &str, extra: &str) -> PathBuf {
    let path = dir.join("imagebuild.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: cli}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {image}\n  tags: [latest, v1]\n  destinationPath: /app\n  exclude: ['*.md']\n  config:\n    entrypoint: [/app/run.sh]\n    env: [{{name: MODE, value: test}}]\n    workingDir: /app\n    user: '65532'\n{extra}"
        ),
    )
    .expect("write imagebuild.yaml");
    path
}

/// Builds FILE with CONTEXT into the layout LAYOUT; returns the printed digest.
fn build_layout(file: &Path, context: &Path, layout: &Path) -> String {
    stdout_ok(&run(
        &[
            "build",
            "-f",
            &file.to_string_lossy(),
            "--context",
            &context.to_string_lossy(),
            "--output",
            &layout.to_string_lossy(),
        ],
        "",
    ))
}

fn push_context(target: &Target, file: &Path, context: &Path) -> (String, String) {
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
    let out = run(&args, &target.password);
    let stdout = stdout_ok(&out);
    (stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// N of the note `pushed ... (N bytes uploaded...)` in a push's stderr (among progress lines).
fn bytes_uploaded(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains("bytes uploaded"))
        .and_then(|l| l.rsplit('(').next())
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in: {log}"))
}

fn pushed_image_holds_the_context(target: Target) {
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = target.repo(&common::unique_name("cli"));
    let file = image_build_file(work.path(), &image, "");
    let (image_ref, _) = push_context(&target, &file, &context);

    let (repo, digest) = image_ref.split_once('@').expect("image@digest on stdout");
    assert_eq!(repo, image);
    for tag in ["latest", "v1"] {
        assert_eq!(
            target.served_digest(env, &format!("{image}:{tag}")),
            digest,
            "tag {tag}"
        );
    }
    let bundle = target.pull(env, &image_ref);
    let app = bundle.path().join("bundle/rootfs/app");
    assert_eq!(
        std::fs::read_to_string(app.join("site/index.html")).expect("index"),
        "<h1>cli</h1>"
    );
    let mode = |p: &str| {
        std::fs::symlink_metadata(app.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("run.sh"), 0o755, "owner-executable files become 0755");
    assert_eq!(mode("site/index.html"), 0o644);
    assert_eq!(
        std::fs::read_link(app.join("home.html")).expect("symlink"),
        Path::new("site/index.html")
    );
    assert!(
        app.join("site/assets").join("n".repeat(120)).exists(),
        "long name"
    );
    assert!(!app.join("notes.md").exists(), "exclude pattern applied");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.path().join("bundle/config.json")).expect("runtime config"),
    )
    .expect("json");
    assert_eq!(config["process"]["args"][0], "/app/run.sh");
    assert_eq!(config["process"]["cwd"], "/app");
    assert_eq!(config["process"]["user"]["uid"], 65532);
    assert!(
        config["process"]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e == "MODE=test")
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_image_pushed_to_gitea_is_served_with_our_digest_and_holds_the_files_modes_symlinks_and_config()
 {
    pushed_image_holds_the_context(gitea(common::env()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_image_pushed_to_the_distribution_registry_is_served_with_our_digest_and_holds_the_files() {
    pushed_image_holds_the_context(distribution(common::env()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_example_builds_to_its_pinned_digest_every_time() {
    let work = tempfile::tempdir().expect("tempdir");
    let example = common::repo_root().join("examples/hello-site/imagebuild.yaml");
    for n in 0..2 {
        let out_dir = work.path().join(format!("oci{n}"));
        let out = run(
            &[
                "build",
                "-f",
                &example.to_string_lossy(),
                "--output",
                &out_dir.to_string_lossy(),
            ],
            "",
        );
        assert_eq!(stdout_ok(&out), HELLO_SITE_DIGEST);
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn build_to_a_layout_then_push_gives_the_digest_of_a_direct_push() {
    let env = common::env();
    let target = gitea(env);
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = target.repo(&common::unique_name("layout"));
    let file = image_build_file(work.path(), &image, "");
    let layout = work.path().join("oci");
    let built = build_layout(&file, &context, &layout);
    let mut args = vec![
        "push".to_owned(),
        format!("{}:v1", layout.display()),
        format!("{image}:v1"),
    ];
    args.extend(target.flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pushed = stdout_ok(&run(&args, &target.password));
    assert_eq!(pushed, format!("{image}@{built}"));
    let (direct, _) = push_context(&target, &file, &context);
    assert_eq!(direct, pushed);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_image_on_a_base_reuses_the_base_layers_and_a_second_push_uploads_nothing() {
    let env = common::env();
    let target = gitea(env);
    let work = tempfile::tempdir().expect("tempdir");
    // The base: an image of its own, pushed first.
    let base_ctx = work.path().join("base");
    std::fs::create_dir_all(base_ctx.join("bin")).expect("base dirs");
    std::fs::write(base_ctx.join("bin/tool"), "tool").expect("tool");
    let base = target.repo(&common::unique_name("base"));
    let base_file = image_build_file(&work.path().join("."), &base, "");
    let (base_ref, _) = push_context(&target, &base_file, &base_ctx);

    let app_dir = work.path().join("app");
    std::fs::create_dir_all(&app_dir).expect("app dir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = target.repo(&common::unique_name("onbase"));
    let file = image_build_file(&app_dir, &image, &format!("  from: {base}:v1\n"));
    let (first, first_log) = push_context(&target, &file, &context);
    let (second, second_log) = push_context(&target, &file, &context);
    assert_eq!(first, second, "same inputs, same digest");
    assert!(!first_log.contains("(0 bytes uploaded)"), "{first_log}");
    assert!(
        second_log.contains("(0 bytes uploaded)"),
        "second push uploaded blobs: {second_log}"
    );

    let manifest = |reference: &str| -> serde_json::Value {
        let raw = env
            .raw_manifest(&target.ca, &env.gitea_creds(), reference)
            .expect("manifest");
        serde_json::from_slice(&raw).expect("manifest json")
    };
    let base_layers = manifest(&base_ref)["layers"]
        .as_array()
        .expect("layers")
        .clone();
    let layers = manifest(&first)["layers"]
        .as_array()
        .expect("layers")
        .clone();
    assert_eq!(layers.len(), base_layers.len() + 1);
    assert_eq!(
        layers[..base_layers.len()],
        base_layers[..],
        "base layers unchanged"
    );
    let bundle = target.pull(env, &first);
    assert!(
        bundle.path().join("bundle/rootfs/app/bin/tool").exists(),
        "base files present"
    );
    assert!(
        bundle
            .path()
            .join("bundle/rootfs/app/site/index.html")
            .exists(),
        "our files present"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn pushing_an_unchanged_directory_again_builds_nothing_unless_the_registry_lost_the_layer() {
    let env = common::env();
    let target = gitea(env);
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    // Files changed in the last two seconds are never trusted to the cache.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let image = target.repo(&common::unique_name("cached"));
    let file = image_build_file(work.path(), &image, "");
    let not_built = "not compressed or uploaded again";

    let (first, first_log) = push_context(&target, &file, &context);
    assert!(!first_log.contains(not_built), "{first_log}");
    let (second, second_log) = push_context(&target, &file, &context);
    assert_eq!(second, first, "same files, same digest");
    assert!(second_log.contains(not_built), "{second_log}");
    assert!(second_log.contains("(0 bytes uploaded)"), "{second_log}");
    assert_eq!(
        target.served_digest(env, &format!("{image}:v1")),
        digest_part(&first)
    );

    // Another repository lacks the layer: it is built and uploaded, to the same digest.
    let elsewhere = target.repo(&common::unique_name("cached-elsewhere"));
    let other_dir = work.path().join("elsewhere");
    std::fs::create_dir_all(&other_dir).expect("dir");
    let other_file = image_build_file(&other_dir, &elsewhere, "");
    let (third, third_log) = push_context(&target, &other_file, &context);
    assert!(!third_log.contains(not_built), "{third_log}");
    assert!(!third_log.contains("(0 bytes uploaded)"), "{third_log}");
    assert_eq!(digest_part(&third), digest_part(&first));

    // A changed file is a new layer.
    std::fs::write(context.join("site/index.html"), "<h1>changed</h1>").expect("edit");
    let (fourth, fourth_log) = push_context(&target, &file, &context);
    assert!(!fourth_log.contains(not_built), "{fourth_log}");
    assert_ne!(digest_part(&fourth), digest_part(&first));
    let pulled = target.pull(env, &fourth);
    let index = pulled.path().join("bundle/rootfs/app/site/index.html");
    assert_eq!(
        std::fs::read_to_string(index).expect("index"),
        "<h1>changed</h1>"
    );
}

/// A large context goes up while its layer is written, and the registry serves exactly the
/// image a layout build describes.
fn large_context_uploads_while_building(target: Target) {
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    std::fs::create_dir_all(&context).expect("dir");
    // Incompressible and over the threshold, so the layer is about the file's size.
    let mut data = vec![0u8; 40 << 20];
    fastrand::Rng::with_seed(7).fill(&mut data);
    std::fs::write(context.join("media.bin"), &data).expect("write");
    let image = target.repo(&common::unique_name("streamed"));
    let file = image_build_file(work.path(), &image, "");

    let (image_ref, log) = push_context(&target, &file, &context);
    let built = build_layout(&file, &context, &work.path().join("layout"));
    assert_eq!(
        digest_part(&image_ref),
        built,
        "same image as the layout build"
    );
    assert_eq!(target.served_digest(env, &format!("{image}:latest")), built);
    let uploaded = bytes_uploaded(&log);
    assert!(log.contains("while the layer was written"), "{log}");
    assert!(
        uploaded < data.len() as u64 + (1 << 20),
        "the layer went up once, not again after the build: {log}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_large_context_goes_up_to_gitea_while_its_layer_is_written() {
    large_context_uploads_while_building(gitea(common::env()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_large_context_goes_up_to_the_distribution_registry_while_its_layer_is_written() {
    large_context_uploads_while_building(distribution(common::env()));
}

/// The digest of `host/repo@digest`.
fn digest_part(image_ref: &str) -> &str {
    image_ref.rsplit_once('@').map_or(image_ref, |(_, d)| d)
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn list_and_tag_work_without_uploading() {
    let env = common::env();
    let target = gitea(env);
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = target.repo(&common::unique_name("tags"));
    let file = image_build_file(work.path(), &image, "");
    let (image_ref, _) = push_context(&target, &file, &context);
    let digest = image_ref.split_once('@').expect("digest").1;

    let mut tag_args = vec!["tag".to_owned(), format!("{image}:v1"), "v2".into()];
    tag_args.extend(target.flags());
    let tag_args: Vec<&str> = tag_args.iter().map(String::as_str).collect();
    assert_eq!(stdout_ok(&run(&tag_args, &target.password)), digest);
    let mut list_args = vec!["list".to_owned(), image.clone()];
    list_args.extend(target.flags());
    let list_args: Vec<&str> = list_args.iter().map(String::as_str).collect();
    let tags = stdout_ok(&run(&list_args, &target.password));
    assert_eq!(tags.lines().collect::<Vec<_>>(), ["latest", "v1", "v2"]);
}

/// Runs a registry command expected to fail: (exit code, stderr).
fn failure(args: &[&str], stdin: &str) -> (i32, String) {
    let out = run(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {args:?}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line on stderr: {stderr}"
    );
    (out.status.code().expect("exit code"), stderr)
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn each_registry_failure_has_its_own_message_and_exit_code_and_shows_no_secret() {
    let env = common::env();
    let ca = env.gitea_ca.to_string_lossy().into_owned();
    let repo = format!("{}/{}/hello-site", env.gitea, env.gitea_owner);
    let user = env.gitea_user.as_str();
    let port = env.gitea.rsplit_once(':').expect("port").1;
    let other_ca = env.registry_ca.to_string_lossy().into_owned();

    let cases: Vec<(&str, Vec<String>, &str, i32, &str)> = vec![
        (
            "wrong password",
            vec![
                "list".into(),
                repo.clone(),
                "--ca-file".into(),
                ca.clone(),
                "--username".into(),
                user.into(),
                "--password-stdin".into(),
            ],
            "wr0ng:p@ss",
            3,
            "refused the credentials of user",
        ),
        (
            "unknown owner",
            vec![
                "list".into(),
                format!("{}/nosuchowner/app", env.gitea),
                "--ca-file".into(),
                ca.clone(),
                "--username".into(),
                user.into(),
                "--password-stdin".into(),
            ],
            env.gitea_password.as_str(),
            4,
            "does not exist",
        ),
        (
            "upper-case name",
            vec![
                "list".into(),
                format!("{}/GiteaAdmin/App", env.gitea),
                "--ca-file".into(),
                ca.clone(),
            ],
            "",
            2,
            "must be lower case",
        ),
        (
            "wrong CA",
            vec!["list".into(), repo.clone(), "--ca-file".into(), other_ca],
            " ",
            5,
            "not trusted",
        ),
        (
            "host-name mismatch",
            vec![
                "list".into(),
                format!("localhost:{port}/giteaadmin/app"),
                "--ca-file".into(),
                ca.clone(),
            ],
            "",
            5,
            "not valid for the name `localhost`",
        ),
        (
            "unreachable host",
            vec![
                "list".into(),
                "gitea.cnoe.localtest.me:1/giteaadmin/app".into(),
                "--ca-file".into(),
                ca.clone(),
            ],
            "",
            6,
            "cannot reach",
        ),
    ];
    for (what, args, stdin, code, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (exit, stderr) = failure(&args, stdin);
        assert_eq!(exit, code, "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        for secret in [
            env.gitea_password.as_str(),
            env.gitea_token.as_str(),
            "wr0ng:p@ss",
        ] {
            assert!(!stderr.contains(secret), "{what}: a secret in the message");
        }
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn from_cluster_reads_the_idpbuilder_secrets_of_the_current_context() {
    let env = common::env();
    let target = gitea(env);
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = target.repo(&common::unique_name("fromcluster"));
    let file = image_build_file(work.path(), &image, "");
    let out = common::output(imagebuild().envs(&env.vars).args([
        "build",
        "-f",
        &file.to_string_lossy(),
        "--context",
        &context.to_string_lossy(),
        "--push",
        "--from-cluster",
    ]));
    let image_ref = stdout_ok(&out);
    let listed =
        common::output(
            imagebuild()
                .envs(&env.vars)
                .args(["list", &image, "--from-cluster"]),
        );
    assert_eq!(
        stdout_ok(&listed).lines().collect::<Vec<_>>(),
        ["latest", "v1"]
    );
    assert!(image_ref.starts_with(&image));
}

// ---------------------------------------------------------------------------------------------
// Multi-platform images

/// The manifest `reference` serves, as JSON.
fn served_json(env: &TestEnv, target: &Target, reference: &str) -> serde_json::Value {
    let creds = format!("{}:{}", target.user, target.password);
    let raw = env
        .raw_manifest(&target.ca, &creds, reference)
        .unwrap_or_else(|| panic!("skopeo cannot read {reference}"));
    serde_json::from_slice(&raw).expect("manifest json")
}

/// The config of the `arch` child of `reference`, as skopeo picks it.
fn served_config(env: &TestEnv, target: &Target, reference: &str, arch: &str) -> serde_json::Value {
    let creds = format!("{}:{}", target.user, target.password);
    env.served_config((&target.ca, &creds), reference, Some(arch))
}

/// Pulls the `arch` child of `reference` as skopeo chooses it (--override-arch) and unpacks it.
fn pull_arch(env: &TestEnv, target: &Target, reference: &str, arch: &str) -> tempfile::TempDir {
    let creds = format!("{}:{}", target.user, target.password);
    env.pull_and_unpack_arch(&target.ca, &creds, reference, Some(arch))
}

/// PUTs `body` as the manifest `reference` of `repo` (host/owner/name).
fn put_manifest(target: &Target, repo: &str, reference: &str, media_type: &str, body: &str) {
    let creds = format!("{}:{}", target.user, target.password);
    common::env().put_manifest((&target.ca, &creds), repo, reference, media_type, body);
}

fn two_platform_scratch_build_is_an_index_every_child_of_which_runs_the_same_files(target: Target) {
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = target.repo(&common::unique_name("multi"));
    let file = image_build_file(
        work.path(),
        &image,
        "  platforms: [linux/amd64, linux/arm64]\n",
    );
    let (image_ref, log) = push_context(&target, &file, &context);
    let (_, digest) = image_ref.split_once('@').expect("image@digest");
    assert_eq!(
        target.served_digest(env, &format!("{image}:latest")),
        digest
    );

    let index = served_json(env, &target, &format!("{image}:latest"));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        common::index_platforms(&index),
        ["linux/amd64", "linux/arm64"]
    );
    // Every child is served by digest; they share the context layer, uploaded once.
    let mut layers = Vec::new();
    let mut config_bytes = 0;
    for (entry, arch) in index["manifests"]
        .as_array()
        .expect("children")
        .iter()
        .zip(["amd64", "arm64"])
    {
        let child_digest = entry["digest"].as_str().expect("digest");
        let child_ref = format!("{image}@{child_digest}");
        assert_eq!(target.served_digest(env, &child_ref), child_digest);
        let child = served_json(env, &target, &child_ref);
        layers.push(child["layers"].clone());
        config_bytes += child["config"]["size"].as_u64().expect("config size");
        assert_eq!(
            served_config(env, &target, &child_ref, arch)["architecture"],
            arch
        );
    }
    assert_eq!(layers[0], layers[1], "the children share one layer");
    let layer_size = layers[0][0]["size"].as_u64().expect("layer size");
    let uploaded = bytes_uploaded(&log);
    assert_eq!(
        uploaded,
        layer_size + config_bytes,
        "the layer went up once, with the two configs"
    );

    // skopeo picks the arm64 child for an arm64 machine, and it holds the files.
    let bundle = pull_arch(env, &target, &format!("{image}:latest"), "arm64");
    let rootfs = bundle.path().join("bundle/rootfs/app");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("site/index.html")).expect("index.html"),
        std::fs::read_to_string(context.join("site/index.html")).expect("context file")
    );

    // The same inputs give the same index in a layout, and push LAYOUT pushes it as it is.
    let layout = work.path().join("layout");
    assert_eq!(build_layout(&file, &context, &layout), digest);
    let copy = target.repo(&common::unique_name("multi-copy"));
    let mut args = vec![
        "push".to_owned(),
        format!("{}:v1", layout.display()),
        format!("{copy}:v1"),
    ];
    args.extend(target.flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pushed = stdout_ok(&run(&args, &target.password));
    assert_eq!(pushed, format!("{copy}@{digest}"));

    // inspect shows both platforms.
    let mut args = vec!["inspect".to_owned(), format!("{image}:latest")];
    args.extend(target.flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shown = stdout_ok(&run(&args, &target.password));
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines[0].ends_with("application/vnd.oci.image.index.v1+json"),
        "{shown}"
    );
    assert!(lines[1].starts_with("linux/amd64 sha256:"), "{shown}");
    assert!(lines[2].starts_with("linux/arm64 sha256:"), "{shown}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn gitea_serves_a_two_platform_index_and_every_child() {
    two_platform_scratch_build_is_an_index_every_child_of_which_runs_the_same_files(gitea(
        common::env(),
    ));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn distribution_serves_a_two_platform_index_and_every_child() {
    two_platform_scratch_build_is_an_index_every_child_of_which_runs_the_same_files(distribution(
        common::env(),
    ));
}

/// A base index in `target` as BuildKit pushes one: linux/amd64 and linux/arm64 children, and
/// an attestation manifest (`unknown/unknown`), listed as `media_type` (OCI index or Docker
/// manifest list). Returns `repo:1` and the index digest.
fn base_index(target: &Target, media_type: &str) -> (String, String) {
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let repo = target.repo(&common::unique_name("base-multi"));
    let mut entries = Vec::new();
    for (tag, platform) in [
        ("amd64", "linux/amd64"),
        ("arm64", "linux/arm64"),
        ("att", "linux/amd64"),
    ] {
        let context = work.path().join(tag);
        std::fs::create_dir_all(context.join("etc")).expect("dir");
        std::fs::write(context.join("etc/arch"), tag).expect("file");
        let file = work.path().join(format!("{tag}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: base}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {repo}\n  tags: [{tag}]\n  platform: {platform}\n  config: {{env: [{{name: BASE_ARCH, value: {tag}}}]}}\n"
            ),
        )
        .expect("spec");
        let (pushed, _) = push_context(target, &file, &context);
        let digest = pushed.split_once('@').expect("digest").1.to_owned();
        let raw = env
            .raw_manifest(
                &target.ca,
                &format!("{}:{}", target.user, target.password),
                &pushed,
            )
            .expect("child manifest");
        let (os, arch) = platform.split_once('/').expect("os/arch");
        let mut entry = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": raw.len(),
            "platform": {"os": os, "architecture": arch},
        });
        if tag == "att" {
            entry["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
            entry["annotations"] = serde_json::json!({
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": entries.first().map(|e: &serde_json::Value| e["digest"].clone()),
            });
        }
        entries.push(entry);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": entries,
    })
    .to_string();
    put_manifest(target, &repo, "1", media_type, &index);
    let digest = imagebuild::oci::Digest::of(index.as_bytes()).to_string();
    (format!("{repo}:1"), digest)
}

fn an_image_on_a_base_index_has_every_platform_of_it_and_no_attestation(media_type: &str) {
    let env = common::env();
    let target = gitea(env);
    let (base, base_digest) = base_index(&target, media_type);
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = target.repo(&common::unique_name("on-multi"));
    let file = image_build_file(work.path(), &image, &format!("  from: {base}\n"));
    let (image_ref, _) = push_context(&target, &file, &context);
    let (_, digest) = image_ref.split_once('@').expect("image@digest");

    let index = served_json(env, &target, &format!("{image}@{digest}"));
    assert_eq!(index["mediaType"], media_type);
    assert_eq!(
        common::index_platforms(&index),
        ["linux/amd64", "linux/arm64"],
        "{index:#}"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.base.digest"],
        base_digest.as_str()
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.base.name"],
        base.as_str()
    );
    for arch in ["amd64", "arm64"] {
        let config = served_config(env, &target, &format!("{image}@{digest}"), arch);
        assert_eq!(config["architecture"], arch);
        let env_vars = config["config"]["Env"].to_string();
        assert!(
            env_vars.contains(&format!("BASE_ARCH={arch}")),
            "{env_vars}"
        );
        assert!(env_vars.contains("MODE=test"), "{env_vars}");
        let bundle = pull_arch(env, &target, &format!("{image}@{digest}"), arch);
        let rootfs = bundle.path().join("bundle/rootfs");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/arch")).expect("base file"),
            arch
        );
        assert!(
            rootfs.join("app/site/index.html").exists(),
            "our files on {arch}"
        );
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_image_on_an_oci_base_index_has_every_platform_of_it_and_no_attestation() {
    an_image_on_a_base_index_has_every_platform_of_it_and_no_attestation(
        "application/vnd.oci.image.index.v1+json",
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_image_on_a_docker_manifest_list_is_a_docker_manifest_list() {
    an_image_on_a_base_index_has_every_platform_of_it_and_no_attestation(
        "application/vnd.docker.distribution.manifest.list.v2+json",
    );
}
