//! The real single-node cluster (tests/env/node-up.sh) as the end-to-end tests use it: the node
//! started when it is not up, its variables, and throw-away namespaces that enforce the
//! `restricted` Pod Security level.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::common::Namespace;
use crate::common::{self, TestEnv, env};

/// The node's variables (target/testenv/node.sh) on top of the environment's.
pub struct Node {
    pub env: &'static TestEnv,
    vars: BTreeMap<String, String>,
    /// How long node-up.sh took in this process, if it had to start the node.
    pub started_in: Option<Duration>,
}

impl Node {
    pub fn var(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .unwrap_or_else(|| panic!("node.sh does not set {k}"))
    }
    pub fn busybox(&self) -> &str {
        self.var("IMAGEBUILD_TEST_BUSYBOX_IMAGE")
    }
    pub fn kubectl_image(&self) -> &str {
        self.var("IMAGEBUILD_TEST_KUBECTL_IMAGE")
    }
    pub fn name(&self) -> &str {
        self.var("IMAGEBUILD_TEST_NODE_NAME")
    }
}

/// The node, started when it is not up (node-up.sh holds a machine-wide lock, so test binaries
/// running at once do not race).
pub fn node() -> &'static Node {
    static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
    match NODE.get_or_init(start_node) {
        Ok(n) => n,
        Err(e) => panic!("test node unavailable: {e}"),
    }
}

fn start_node() -> Result<Node, String> {
    let env = env();
    let script = common::repo_root().join("tests/env/node-up.sh");
    let up = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running node-up.sh --check: {e}"))?
        .success();
    let mut started_in = None;
    if !up {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running node-up.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tests/env/node-up.sh failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        started_in = Some(started.elapsed());
        eprintln!("node-up.sh took {:.1} s", started.elapsed().as_secs_f64());
    }
    let vars = common::source_vars(&[&env.dir.join("env.sh"), &env.dir.join("node.sh")])?;
    Ok(Node {
        env,
        vars,
        started_in,
    })
}

/// The Pod securityContext the `restricted` level asks for.
pub const RESTRICTED_POD: &str = "{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}";
/// The container securityContext the `restricted` level asks for.
pub const RESTRICTED_CONTAINER: &str =
    "{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}";

/// Commands in a test's namespace (the guard itself is the harness's [`Namespace`]).
impl Namespace {
    pub fn apply(&self, yaml: &str) {
        let out = env().kubectl_stdin(&["apply", "-n", &self.name, "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply in {}: {}\n{yaml}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        env().kubectl(&all)
    }

    /// `kubectl get -o json` of one object, `None` when it does not exist.
    pub fn get(&self, object: &str) -> Option<Value> {
        let out = env().kubectl_output(&["-n", &self.name, "get", object, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("object JSON"))
    }

    /// The items of `kubectl get KIND -l SELECTOR`.
    pub fn list(&self, kind: &str, selector: &str) -> Vec<Value> {
        let text = self.kubectl(&["get", kind, "-l", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&text).expect("list JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn jsonpath(&self, object: &str, path: &str) -> String {
        let out = env().kubectl_output(&[
            "-n",
            &self.name,
            "get",
            object,
            "-o",
            &format!("jsonpath={path}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls until `jsonpath` of `object` equals one of `want`; returns it.
    pub fn wait_for(&self, object: &str, path: &str, want: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.jsonpath(object, path);
            if want.contains(&got.as_str()) {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "{object} in {}: {path} is {got:?}, not one of {want:?} after {timeout:?}\n{}",
                    self.name,
                    self.describe(object)
                );
            }
            sleep(Duration::from_millis(250));
        }
    }

    pub fn describe(&self, object: &str) -> String {
        let out = env().kubectl_output(&["-n", &self.name, "describe", object]);
        let events = env().kubectl_output(&[
            "-n",
            &self.name,
            "get",
            "events",
            "--sort-by=.lastTimestamp",
        ]);
        format!(
            "{}\n{}\nevents:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&events.stdout)
        )
    }

    pub fn log(&self, object: &str) -> String {
        let out = env().kubectl_output(&["-n", &self.name, "logs", object]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for a Pod to finish; fails the test (with its description and log) unless it
    /// Succeeded. Returns its log.
    pub fn pod_succeeds(&self, pod: &str, timeout: Duration) -> String {
        let obj = format!("pod/{pod}");
        let phase = self.wait_for(&obj, "{.status.phase}", &["Succeeded", "Failed"], timeout);
        let log = self.log(&obj);
        assert_eq!(
            phase,
            "Succeeded",
            "pod {pod} failed; log:\n{log}\n{}",
            self.describe(&obj)
        );
        log
    }
}
