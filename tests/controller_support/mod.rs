//! Running the controller the way the chart does, against the test API server: the chart is
//! installed with Helm, and the controller process runs on this host with the chart's
//! ServiceAccount token and the configuration file the chart rendered (the test API server has
//! no nodes to run its Pod).
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, TestEnv};

pub const RELEASE_NAMESPACE: &str = "imagebuild-system";
pub const RELEASE: &str = "imagebuild";

/// What the installed chart gives the controller: a kubeconfig with the ServiceAccount's token
/// and the rendered configuration file.
pub struct Installed {
    pub kubeconfig: PathBuf,
    pub config: PathBuf,
    pub service_account: String,
}

/// Installs the chart once per test binary, with a registry profile for the test Gitea.
pub fn install_chart() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let env = common::env();
        let profile = serde_json::json!([{
            "host": env.gitea,
            "caSecret": {"namespace": "default", "name": "idpbuilder-cert", "key": "ca.crt"},
            "credentialsSecret": {"namespace": "gitea", "name": "gitea-credential",
                                   "usernameKey": "username", "passwordKey": "password"},
        }]);
        let chart = common::repo_root().join("charts/imagebuild");
        // Helm installs the chart's CRDs on the first install only; an environment kept from
        // an older checkout gets this checkout's schema (status fields included) here.
        let crd = chart.join("crds/imagebuild.dev_imagebuilds.yaml");
        env.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &crd.to_string_lossy(),
        ]);
        common::run_ok(env.cmd("helm").args([
            "upgrade",
            "--install",
            RELEASE,
            &chart.to_string_lossy(),
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--wait=false",
            "--set-json",
            &format!("registries={profile}"),
            // The controller runs on this host in these tests; no Pod of it may compete.
            "--set",
            "replicaCount=0",
        ]));
        let service_account = env
            .kubectl(&[
                "get",
                "serviceaccount",
                "-n",
                RELEASE_NAMESPACE,
                "-l",
                &format!("app.kubernetes.io/instance={RELEASE}"),
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .trim()
            .to_owned();
        assert!(
            !service_account.is_empty(),
            "the chart created no ServiceAccount"
        );
        let dir = env.dir.join("controller");
        std::fs::create_dir_all(&dir).expect("controller state dir");
        let config = dir.join("config.yaml");
        let rendered = env.kubectl(&[
            "get",
            "configmap",
            "-n",
            RELEASE_NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "json",
        ]);
        let maps: Value = serde_json::from_str(&rendered).expect("configmap list");
        let text = maps["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find_map(|cm| cm["data"]["config.yaml"].as_str())
            })
            .expect("the chart renders config.yaml into a ConfigMap");
        std::fs::write(&config, text).expect("write config");
        let kubeconfig = dir.join("kubeconfig");
        write_token_kubeconfig(env, &service_account, &kubeconfig);
        Installed {
            kubeconfig,
            config,
            service_account,
        }
    })
}

/// A kubeconfig that authenticates as the chart's ServiceAccount (token from TokenRequest).
fn write_token_kubeconfig(env: &TestEnv, service_account: &str, path: &Path) {
    let token = env.kubectl(&[
        "create",
        "token",
        service_account,
        "-n",
        RELEASE_NAMESPACE,
        "--duration",
        "4h",
    ]);
    let view: Value =
        serde_json::from_str(&env.kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]))
            .expect("kubeconfig json");
    let cluster = &view["clusters"][0]["cluster"];
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "controller", "user": {"token": token.trim()}}],
        "contexts": [{"name": "controller", "context": {"cluster": "test", "user": "controller"}}],
        "current-context": "controller",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&kubeconfig).expect("json"))
        .expect("write kubeconfig");
}

/// A controller process on this host behind a watchdog shell that ends it when the test binary
/// goes away; SIGKILLed when dropped.
pub struct ControllerProcess {
    child: Child,
    pub listen: String,
    pub identity: String,
    pub log: PathBuf,
}

impl ControllerProcess {
    /// The controller as the chart configures it (its rendered config and ServiceAccount).
    pub fn start(identity: &str, extra: &[&str]) -> Self {
        let installed = install_chart();
        // A fresh start begins a fresh log.
        let old_log = common::env()
            .dir
            .join("controller")
            .join(format!("{identity}.log"));
        let _ = std::fs::remove_file(old_log);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::spawn(identity, &installed.config, &installed.kubeconfig, &extra)
    }

    /// The controller with `config` and `kubeconfig`. Its log is appended to
    /// `<env>/controller/<identity>.log`, so a restarted controller keeps its predecessor's log
    /// for the secret scan.
    pub fn spawn(identity: &str, config: &Path, kubeconfig: &Path, extra: &[String]) -> Self {
        let env = common::env();
        let listen = format!("127.0.0.1:{}", free_port());
        let work = env.dir.join("controller").join(identity);
        std::fs::create_dir_all(&work).expect("work dir");
        let log = env.dir.join("controller").join(format!("{identity}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let binary = env!("CARGO_BIN_EXE_imagebuild");
        let script = format!(
            "\"$@\" & c=$!; trap 'kill -9 $c 2>/dev/null' EXIT TERM; while kill -0 {parent} 2>/dev/null && kill -0 $c 2>/dev/null; do sleep 0.3; done",
            parent = std::process::id()
        );
        let mut args: Vec<String> = vec![
            "-c".into(),
            script,
            "controller".into(),
            binary.into(),
            "controller".into(),
            "--config".into(),
            config.to_string_lossy().into(),
            "--listen".into(),
            listen.clone(),
            "--work-dir".into(),
            work.to_string_lossy().into(),
            "--identity".into(),
            identity.into(),
        ];
        args.extend(extra.iter().cloned());
        // A process group of its own: `kill` ends the watchdog, the controller and any `sleep`
        // together, even when the controller has not been forked yet.
        let child = Command::new("bash")
            .process_group(0)
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,imagebuild=debug")
            .env("POD_NAMESPACE", RELEASE_NAMESPACE)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start controller");
        Self {
            child,
            listen,
            identity: identity.into(),
            log,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_get(&self.listen, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "controller {} not ready; log:\n{}",
            self.identity,
            self.log_text()
        );
    }

    pub fn healthy(&self) -> bool {
        http_get(&self.listen, "/healthz").is_some_and(|(code, _)| code == 200)
    }

    /// The controller's own process id (the child of the watchdog shell).
    pub fn pid(&self) -> Option<u32> {
        let out = Command::new("pgrep")
            .args(["-P", &self.child.id().to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub fn metrics(&self) -> String {
        http_get(&self.listen, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would, to the whole group: the controller and its watchdog shell.
    pub fn kill(&mut self) {
        // Once the shell is reaped its id may be another process's: signal only a live group.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The one controller shared by the tests of a binary.
pub fn shared_controller() -> &'static std::sync::Mutex<ControllerProcess> {
    static SHARED: OnceLock<std::sync::Mutex<ControllerProcess>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let controller = ControllerProcess::start(&common::unique_name("ctrl"), &[]);
        controller.wait_ready();
        std::sync::Mutex::new(controller)
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A minimal HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

pub use crate::common::Namespace;

/// A namespace for one test, deleted when the test ends.
pub fn namespace(prefix: &str) -> Namespace {
    Namespace::create(prefix)
}

/// The ImageBuild as JSON.
pub fn get_ib(ns: &str, name: &str) -> Value {
    let text = common::env().kubectl(&["get", "imagebuild", name, "-n", ns, "-o", "json"]);
    serde_json::from_str(&text).expect("imagebuild json")
}

/// The Ready condition's (status, reason, message), if any.
pub fn ready(ib: &Value) -> Option<(String, String, String)> {
    let conditions = ib["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Waits until Ready is True or False for the current generation, returning the object.
pub fn wait_settled(ns: &str, name: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let ib = get_ib(ns, name);
        let current = ib["status"]["observedGeneration"] == ib["metadata"]["generation"];
        let phase = ib["status"]["phase"].as_str().unwrap_or_default();
        if current && (phase == "Succeeded" || phase == "Failed") {
            return ib;
        }
        if Instant::now() > deadline {
            panic!("{ns}/{name} did not settle in {timeout:?}: {ib:#}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `check` holds for the ImageBuild.
pub fn wait_for(ns: &str, name: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let ib = get_ib(ns, name);
        if check(&ib) {
            return ib;
        }
        if Instant::now() > deadline {
            panic!("{ns}/{name}: condition not reached in {timeout:?}: {ib:#}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The digest the registry serves for `image:tag` (sha256 of the manifest bytes).
pub fn registry_digest(env: &TestEnv, image: &str, tag: &str) -> Option<String> {
    let raw = env.raw_manifest(&env.gitea_ca, &env.gitea_creds(), &format!("{image}:{tag}"))?;
    Some(imagebuild::oci::Digest::of(&raw).to_string())
}

/// Pulls `image@digest` from Gitea and unpacks it; returns the bundle dir (rootfs inside).
pub fn pull_and_unpack(env: &TestEnv, image_ref: &str) -> tempfile::TempDir {
    env.pull_and_unpack(&env.gitea_ca, &env.gitea_creds(), image_ref)
}

/// Events about an object: (type, reason, note, reportingInstance).
pub fn events(ns: &str, name: &str) -> Vec<(String, String, String, String)> {
    let text = common::env().kubectl(&[
        "get",
        "events.events.k8s.io",
        "-n",
        ns,
        "--field-selector",
        &format!("regarding.name={name}"),
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&text).expect("events json");
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    (s("type"), s("reason"), s("note"), s("reportingInstance"))
                })
                .collect()
        })
        .unwrap_or_default()
}
