//! Shared harness of the integration tests: the real test environment that
//! `tests/env/up.sh` provides (etcd + kube-apiserver, Gitea over HTTPS with
//! idpbuilder's kind of certificate, a second registry, kubectl and Helm).
//!
//! `env()` starts the environment when it is absent or unhealthy (up.sh takes
//! a file lock, so parallel test binaries do not race) and reads the variables
//! that up.sh writes to `target/testenv/env.sh`.
#![allow(dead_code)]

pub mod contexts;
pub mod targets;
pub mod tls_server;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The running test environment, as described by `target/testenv/env.sh`.
#[derive(Debug)]
pub struct TestEnv {
    /// State directory (`IMAGEBUILD_TESTENV_DIR`): certificates, logs, data.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Pinned Kubernetes version, e.g. `v1.34.4`; kubectl and the API server match it.
    pub k8s_version: String,
    pub helm_version: String,
    /// `https://127.0.0.1:PORT`
    pub apiserver: String,
    /// Gitea's registry host and port, e.g. `gitea.cnoe.localtest.me:18443`.
    pub gitea: String,
    /// Gitea's certificate (self-signed, CA:TRUE, also the server certificate).
    pub gitea_ca: PathBuf,
    pub gitea_user: String,
    /// The owner in image paths: the user name in lower case (`giteaadmin`).
    pub gitea_owner: String,
    pub gitea_password: String,
    pub gitea_token: String,
    /// The second registry (CNCF distribution), e.g. `registry.imagebuild.test:15000`.
    pub registry: String,
    pub registry_ca: PathBuf,
    pub registry_user: String,
    pub registry_password: String,
    /// Every variable env.sh exports (PATH and KUBECONFIG included).
    pub vars: BTreeMap<String, String>,
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn state_dir() -> PathBuf {
    std::env::var_os("IMAGEBUILD_TESTENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/testenv"))
}

/// The test environment, started on first use in this test binary.
pub fn env() -> &'static TestEnv {
    static ENV: OnceLock<Result<TestEnv, String>> = OnceLock::new();
    match ENV.get_or_init(start_and_load) {
        Ok(env) => env,
        Err(e) => panic!("test environment unavailable: {e}"),
    }
}

fn start_and_load() -> Result<TestEnv, String> {
    let scripts = repo_root().join("tests/env");
    let healthy = Command::new("bash")
        .arg(scripts.join("up.sh"))
        .arg("--check")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running up.sh --check: {e}"))?
        .success();
    if !healthy {
        // The first run on a machine builds Kubernetes, Gitea and Helm: minutes.
        // Progress goes to stderr, which the test runner shows on failure.
        let out = Command::new("bash")
            .arg(scripts.join("up.sh"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running up.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tests/env/up.sh failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    TestEnv::load(&state_dir().join("env.sh"))
}

impl TestEnv {
    /// Reads env.sh the way a shell does: sources it and dumps the environment.
    pub fn load(env_sh: &Path) -> Result<TestEnv, String> {
        let vars = source_vars(&[env_sh])?;
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .ok_or_else(|| format!("{} does not set {k}", env_sh.display()))
        };
        Ok(TestEnv {
            dir: get("IMAGEBUILD_TESTENV_DIR")?.into(),
            kubeconfig: get("KUBECONFIG")?.into(),
            k8s_version: get("IMAGEBUILD_TEST_K8S_VERSION")?,
            helm_version: get("IMAGEBUILD_TEST_HELM_VERSION")?,
            apiserver: get("IMAGEBUILD_TEST_APISERVER")?,
            gitea: get("IMAGEBUILD_TEST_GITEA")?,
            gitea_ca: get("IMAGEBUILD_TEST_GITEA_CA")?.into(),
            gitea_user: get("IMAGEBUILD_TEST_GITEA_USER")?,
            gitea_owner: get("IMAGEBUILD_TEST_GITEA_OWNER")?,
            gitea_password: get("IMAGEBUILD_TEST_GITEA_PASSWORD")?,
            gitea_token: get("IMAGEBUILD_TEST_GITEA_TOKEN")?,
            registry: get("IMAGEBUILD_TEST_REGISTRY")?,
            registry_ca: get("IMAGEBUILD_TEST_REGISTRY_CA")?.into(),
            registry_user: get("IMAGEBUILD_TEST_REGISTRY_USER")?,
            registry_password: get("IMAGEBUILD_TEST_REGISTRY_PASSWORD")?,
            vars,
        })
    }

    /// A command with the environment's variables applied; a bare program
    /// name is looked up in env.sh's PATH (so `kubectl` is the pinned one).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let program = program.as_ref();
        let resolved = if Path::new(program).components().count() == 1 {
            self.which(program).unwrap_or_else(|| program.into())
        } else {
            program.into()
        };
        let mut cmd = Command::new(resolved);
        cmd.envs(&self.vars).stdin(Stdio::null());
        cmd
    }

    fn which(&self, program: &OsStr) -> Option<PathBuf> {
        let path = self.vars.get("PATH")?;
        std::env::split_paths(path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    }

    /// Runs kubectl and returns its stdout; fails the test with stderr otherwise.
    pub fn kubectl(&self, args: &[&str]) -> String {
        run_ok(self.cmd("kubectl").args(args))
    }

    /// Runs kubectl and returns the whole output, success or not.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        output(self.cmd("kubectl").args(args))
    }

    /// Runs kubectl with `input` on stdin (e.g. `apply -f -`), whole output.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        output_with_stdin(self.cmd("kubectl").args(args), input.as_bytes())
    }

    /// Runs kubectl with `input` on stdin; fails the test unless it succeeds.
    pub fn kubectl_apply(&self, input: &str) -> String {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], input);
        check(out, "kubectl apply -f -")
    }

    /// `user:password` for Gitea (the password contains ':' and '@').
    pub fn gitea_creds(&self) -> String {
        format!("{}:{}", self.gitea_user, self.gitea_password)
    }

    pub fn registry_creds(&self) -> String {
        format!("{}:{}", self.registry_user, self.registry_password)
    }

    /// `host:port/owner/name` in Gitea's registry.
    pub fn gitea_image(&self, name: &str) -> String {
        format!("{}/{}/{}", self.gitea, self.gitea_owner, name)
    }

    /// A directory holding `ca.crt` = `ca`, the layout skopeo's --cert-dir expects.
    pub fn cert_dir(&self, ca: &Path) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(ca, dir.path().join("ca.crt")).expect("copy CA");
        dir
    }

    /// The manifest bytes `reference` serves (`skopeo inspect --raw`, trusting `ca`, logging in
    /// as `creds` = `user:password`), or `None` when skopeo cannot read it.
    pub fn raw_manifest(&self, ca: &Path, creds: &str, reference: &str) -> Option<Vec<u8>> {
        let out = self.skopeo_inspect((ca, creds), reference, None, "--raw");
        out.status.success().then_some(out.stdout)
    }

    /// The config blob of the image `reference` serves (`skopeo inspect --config`, trusting
    /// `ca`, logging in as `creds`); of an index, the child skopeo picks for `arch`.
    pub fn served_config(
        &self,
        (ca, creds): (&Path, &str),
        reference: &str,
        arch: Option<&str>,
    ) -> serde_json::Value {
        let out = self.skopeo_inspect((ca, creds), reference, arch, "--config");
        assert!(
            out.status.success(),
            "skopeo inspect --config {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("config json")
    }

    /// `skopeo [--override-arch ARCH] inspect WHAT --raw` of `reference`, trusting `ca`, logging
    /// in as `creds`.
    fn skopeo_inspect(
        &self,
        (ca, creds): (&Path, &str),
        reference: &str,
        arch: Option<&str>,
        what: &str,
    ) -> Output {
        let certs = self.cert_dir(ca);
        let mut skopeo = self.cmd("skopeo");
        if let Some(arch) = arch {
            skopeo.args(["--override-arch", arch]);
        }
        let mut args = vec!["inspect", what];
        if what != "--raw" {
            args.push("--raw");
        }
        output(skopeo.args(args).args([
            "--cert-dir",
            &certs.path().to_string_lossy(),
            "--creds",
            creds,
            &format!("docker://{reference}"),
        ]))
    }

    /// Pulls `reference` with skopeo (trusting `ca`, logging in as `creds` = `user:password`)
    /// and unpacks it with umoci; returns the directory whose `bundle/rootfs` holds the files.
    pub fn pull_and_unpack(&self, ca: &Path, creds: &str, reference: &str) -> tempfile::TempDir {
        self.pull_and_unpack_arch(ca, creds, reference, None)
    }

    /// [`TestEnv::pull_and_unpack`] of the child of an index skopeo picks for a machine of
    /// `arch` (`--override-arch`), or for this machine.
    pub fn pull_and_unpack_arch(
        &self,
        ca: &Path,
        creds: &str,
        reference: &str,
        arch: Option<&str>,
    ) -> tempfile::TempDir {
        let certs = self.cert_dir(ca);
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = dir.path().join("layout");
        let mut skopeo = self.cmd("skopeo");
        if let Some(arch) = arch {
            skopeo.args(["--override-arch", arch]);
        }
        run_ok(skopeo.args([
            "copy",
            "--src-cert-dir",
            &certs.path().to_string_lossy(),
            "--src-creds",
            creds,
            &format!("docker://{reference}"),
            &format!("oci:{}:pulled", layout.display()),
        ]));
        run_ok(self.cmd("umoci").args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:pulled", layout.display()),
            &dir.path().join("bundle").to_string_lossy(),
        ]));
        dir
    }
}

impl TestEnv {
    /// PUTs `body` as the manifest `reference` of `repo` (`host/owner/name`) with curl, trusting
    /// `ca`, logging in as `creds` = `user:password` (given to curl on stdin, never on its
    /// command line). For what imagebuild does not make itself, such as a base index.
    pub fn put_manifest(
        &self,
        (ca, creds): (&Path, &str),
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &str,
    ) {
        let (host, path) = repo.split_once('/').expect("host/path");
        let curl_config = format!(
            "user = \"{}\"\n",
            creds.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let put = output_with_stdin(
            self.cmd("curl")
                .args(["-sS", "-f", "-K", "-", "--cacert"])
                .arg(ca)
                .args([
                    "-X",
                    "PUT",
                    "-H",
                    &format!("Content-Type: {media_type}"),
                    "--data-binary",
                    body,
                    &format!("https://{host}/v2/{path}/manifests/{reference}"),
                ]),
            curl_config.as_bytes(),
        );
        assert!(
            put.status.success(),
            "PUT {repo}:{reference}: {}",
            String::from_utf8_lossy(&put.stderr)
        );
    }
}

/// Each child of an image index as (`os/arch[/variant]`, manifest digest), in index order.
pub fn index_children(index: &serde_json::Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .expect("an index has manifests")
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut platform = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or(""),
                p["architecture"].as_str().unwrap_or("")
            );
            if let Some(variant) = p["variant"].as_str() {
                platform.push('/');
                platform.push_str(variant);
            }
            (platform, m["digest"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

/// `status.platforms` of an ImageBuild as (platform, digest) pairs.
pub fn status_platforms(ib: &serde_json::Value) -> Vec<(String, String)> {
    ib["status"]["platforms"]
        .as_array()
        .expect("status.platforms")
        .iter()
        .map(|p| {
            (
                p["platform"].as_str().unwrap_or("").to_owned(),
                p["digest"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The platforms of an image index, in order.
pub fn index_platforms(index: &serde_json::Value) -> Vec<String> {
    index_children(index).into_iter().map(|(p, _)| p).collect()
}

impl TestEnv {
    /// `imagebuild build -f FILE --context CONTEXT --push` to the test Gitea (its certificate,
    /// the password on stdin, a layer record in FILE's directory rather than the user's).
    /// Returns what it prints: `image@digest`.
    pub fn push_build_to_gitea(&self, file: &Path, context: &Path) -> String {
        let records = file.parent().unwrap_or(Path::new(".")).join("layer-cache");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagebuild"));
        cmd.env("IMAGEBUILD_CACHE_DIR", records)
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["build", "-f"])
            .arg(file)
            .arg("--context")
            .arg(context)
            .args(["--push", "--ca-file"])
            .arg(&self.gitea_ca)
            .args(["--username", &self.gitea_user, "--password-stdin"]);
        let out = output_with_stdin(&mut cmd, self.gitea_password.as_bytes());
        assert!(
            out.status.success(),
            "imagebuild build -f {} --push failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The variables a shell has after sourcing `files` in order (PATH, KUBECONFIG and the
/// `IMAGEBUILD_` ones).
pub fn source_vars(files: &[&Path]) -> Result<BTreeMap<String, String>, String> {
    let mut script = String::new();
    for i in 1..=files.len() {
        script.push_str(&format!("source \"${i}\" && "));
    }
    script.push_str("env -0");
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .args(files)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("sourcing {files:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sourcing {files:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            (k == "PATH" || k == "KUBECONFIG" || k.starts_with("IMAGEBUILD_"))
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// Namespace YAML that enforces the `restricted` Pod Security level.
pub fn restricted_namespace_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
         pod-security.kubernetes.io/enforce: restricted\n    \
         pod-security.kubernetes.io/enforce-version: latest\n"
    )
}

/// A namespace for one test, deleted when the test ends (pass or fail), so that controllers of
/// later test binaries, which watch every namespace, do not inherit its objects.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// A plain namespace named after `prefix`.
    pub fn create(prefix: &str) -> Namespace {
        let name = unique_name(prefix);
        env().kubectl(&["create", "namespace", &name]);
        Namespace { name }
    }

    /// A namespace that enforces the `restricted` Pod Security level.
    pub fn restricted(prefix: &str) -> Namespace {
        let name = unique_name(prefix);
        let yaml = restricted_namespace_yaml(&name);
        let out = env().kubectl_stdin(&["apply", "--server-side", "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Namespace { name }
    }
}

impl std::ops::Deref for Namespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = env().kubectl_output(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A name unique to this process and call, valid as a Kubernetes name and an
/// image name (lower case, digits, '-').
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion, capturing its output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)))
}

pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a command and returns stdout; fails the test with stderr otherwise.
pub fn run_ok(cmd: &mut Command) -> String {
    let what = describe(cmd);
    check(output(cmd), &what)
}

fn check(out: Output, what: &str) -> String {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tests/env/restart.sh ARGS` (kill, stop or start components of the environment), for
/// at most three minutes; returns how long it took, or what it printed when it failed.
pub fn restart_components(args: &[&str]) -> Result<std::time::Duration, String> {
    let started = std::time::Instant::now();
    let out = Command::new("timeout")
        .arg("180")
        .arg("bash")
        .arg(repo_root().join("tests/env/restart.sh"))
        .args(args)
        .env("IMAGEBUILD_TESTENV_DIR", state_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running restart.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "restart.sh {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(started.elapsed())
}

/// The pid of a running component of the environment (`etcd`, `apiserver`, `gitea`, ...), from
/// the pid file up.sh keeps, if that process is still alive.
pub fn component_pid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(state_dir().join("run").join(format!("{name}.pid"))).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Starts every stopped component of the environment again when dropped, pass or fail: the test
/// binaries that run later share it.
pub struct ComponentsRestored;

impl Drop for ComponentsRestored {
    fn drop(&mut self) {
        if let Err(e) = restart_components(&["start"]) {
            eprintln!("could not restore the test environment: {e}");
        }
    }
}
