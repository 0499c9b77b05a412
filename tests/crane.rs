//! crane (go-containerregistry), a second client's judgement of what imagebuild pushes:
//! `crane validate --remote` reads a two-platform index in the test Gitea, every child, config
//! and layer, and checks every digest, size and diffID.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TestEnv;

/// The crane benches/run.sh installs; the two share the binary.
const CRANE_VERSION: &str = "v0.20.6";

/// crane, installed once per machine as benches/run.sh does it: `go install` from the Go module
/// proxy into the environment's tool cache (`$IMAGEBUILD_TESTENV_CACHE`, else
/// `~/.cache/imagebuild-testenv`), under a lock so test binaries running at once build it once.
fn crane(env: &TestEnv) -> PathBuf {
    let cache = std::env::var_os("IMAGEBUILD_TESTENV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/imagebuild-testenv")
        });
    let bin = cache.join(format!("crane-{CRANE_VERSION}/bin"));
    let crane = bin.join("crane");
    if crane.is_file() {
        return crane;
    }
    std::fs::create_dir_all(&bin).expect("crane's directory");
    let lock = std::fs::File::create(cache.join(format!("crane-{CRANE_VERSION}/.install.lock")))
        .expect("install lock");
    lock.lock().expect("take the install lock");
    if !crane.is_file() {
        let out = common::output(
            env.cmd("timeout")
                .args(["900", "go", "install"])
                .arg(format!(
                    "github.com/google/go-containerregistry/cmd/crane@{CRANE_VERSION}"
                ))
                .env("GOBIN", &bin),
        );
        assert!(
            out.status.success(),
            "go install crane {CRANE_VERSION} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    crane
}

/// crane that trusts Gitea's certificate (Go reads it as a root from SSL_CERT_FILE; a CA:true
/// certificate may be its own leaf) and is logged in to Gitea in a Docker config of its own.
struct Crane {
    bin: PathBuf,
    ca: PathBuf,
    docker_config: tempfile::TempDir,
}

impl Crane {
    /// Installs crane if need be and logs in to Gitea, the password on stdin.
    fn for_gitea(env: &TestEnv) -> Crane {
        let crane = Crane {
            bin: crane(env),
            ca: env.gitea_ca.clone(),
            docker_config: tempfile::tempdir().expect("tempdir"),
        };
        let login = common::output_with_stdin(
            &mut crane.cmd(&[
                "auth",
                "login",
                &env.gitea,
                "-u",
                &env.gitea_user,
                "--password-stdin",
            ]),
            env.gitea_password.as_bytes(),
        );
        assert!(
            login.status.success(),
            "crane auth login {}: {}",
            env.gitea,
            String::from_utf8_lossy(&login.stderr)
        );
        crane
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("SSL_CERT_FILE", &self.ca)
            .env("DOCKER_CONFIG", self.docker_config.path())
            .args(args);
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        common::output(&mut self.cmd(args))
    }

    /// `crane ARGS`; fails the test unless it succeeds. Returns stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "crane {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A context with a nested file, an executable and a symlink.
fn write_context(root: &Path) {
    std::fs::create_dir_all(root.join("site")).expect("dirs");
    std::fs::write(root.join("site/index.html"), "<h1>crane</h1>").expect("index");
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho run\n").expect("run.sh");
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::symlink("site/index.html", root.join("home.html")).expect("symlink");
}

/// `imagebuild build -f FILE --context CONTEXT --push` to Gitea (its certificate, the password on
/// stdin), FILE being an ImageBuild of `image:latest` with the spec lines `extra`. Returns what it
/// prints: `image@digest`.
fn push_build(env: &TestEnv, work: &Path, image: &str, extra: &str, context: &Path) -> String {
    let file = work.join("imagebuild.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: crane}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {image}\n  tags: [latest]\n  destinationPath: /app\n  config: {{entrypoint: [/app/run.sh]}}\n{extra}"
        ),
    )
    .expect("ImageBuild file");
    env.push_build_to_gitea(&file, context)
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn crane_validates_a_two_platform_index_and_each_child() {
    let env = common::env();
    let crane = Crane::for_gitea(env);
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    write_context(&context);
    let image = env.gitea_image(&common::unique_name("crane-multi"));
    let image_ref = push_build(
        env,
        work.path(),
        &image,
        "  platforms: [linux/amd64, linux/arm64]\n",
        &context,
    );
    let (_, digest) = image_ref.split_once('@').expect("image@digest");

    // crane sees the index we printed, by tag and by digest.
    assert_eq!(
        crane.run(&["digest", &format!("{image}:latest")]).trim(),
        digest
    );
    let index: serde_json::Value =
        serde_json::from_str(&crane.run(&["manifest", &image_ref])).expect("index JSON");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );

    // Without --platform, validate reads the index and every child in it.
    for reference in [image_ref.clone(), format!("{image}:latest")] {
        let out = crane.run(&["validate", "--remote", &reference]);
        assert!(out.contains(&format!("PASS: {reference}")), "{out}");
    }
    // With --platform, the child of that platform, which must say so in its config.
    for arch in ["amd64", "arm64"] {
        let platform = format!("linux/{arch}");
        let out = crane.run(&["validate", "--platform", &platform, "--remote", &image_ref]);
        assert!(
            out.contains(&format!("PASS: {image_ref}")),
            "{platform}: {out}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&crane.run(&["config", "--platform", &platform, &image_ref]))
                .expect("config JSON");
        assert_eq!(config["architecture"], arch, "{config}");
    }
}
