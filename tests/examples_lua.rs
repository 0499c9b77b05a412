//! The Argo CD health check of examples/argocd/health.lua, run by the real Lua interpreter
//! (`lua5.4`, installed by tests/env/install-deps.sh) on sample ImageBuild objects, the way
//! Argo CD runs it: the object as the global `obj`, only Argo CD's libraries available. Every
//! case also runs in gopher-lua (Lua 5.1, the engine Argo CD embeds) through tests/lua/gopher,
//! and the two must agree.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const DIGEST: &str = "sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const IMAGE: &str = "gitea.cnoe.localtest.me:8443/giteaadmin/hello-site";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn health_script() -> PathBuf {
    repo_root().join("examples/argocd/health.lua")
}

/// What Argo CD would show for `obj`.
#[derive(Debug, PartialEq, Eq)]
struct Health {
    status: String,
    message: String,
}

/// What Argo CD would show for `obj`, from the script run by both engines, which must agree:
/// lua5.4, and gopher-lua (Lua 5.1) as Argo CD embeds it.
fn health(obj: &Value) -> Health {
    let reference = health_lua54(obj);
    let argo = health_gopher(obj);
    assert_eq!(
        argo, reference,
        "gopher-lua (Argo CD's engine) differs from lua5.4"
    );
    argo
}

fn health_lua54(obj: &Value) -> Health {
    let out = Command::new("lua5.4")
        .arg("-e")
        .arg(format!("obj = {}", lua_literal(obj)))
        .arg(repo_root().join("tests/lua/argocd_health.lua"))
        .arg(health_script())
        .output()
        .expect("lua5.4 runs (install it with tests/env/install-deps.sh)");
    read_health("lua5.4", &out)
}

/// Runs the script in gopher-lua, Argo CD's Lua engine, through tests/lua/gopher.
fn health_gopher(obj: &Value) -> Health {
    use std::io::Write;
    let mut child = Command::new(gopher_health())
        .arg(health_script())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gopher-health runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(obj.to_string().as_bytes())
        .expect("write the object");
    let out = child.wait_with_output().expect("gopher-health ends");
    read_health("gopher-lua", &out)
}

/// tests/lua/gopher built once per test binary with `go build` (gopher-lua from the Go module
/// proxy, pinned in its go.mod and go.sum) into this test's target directory.
fn gopher_health() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gopher-health");
        let out = Command::new("timeout")
            .args(["600", "go", "build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(repo_root().join("tests/lua/gopher"))
            .output()
            .expect("go runs (Go is a prerequisite of the test environment)");
        assert!(
            out.status.success(),
            "go build tests/lua/gopher failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        binary
    })
}

fn read_health(engine: &str, out: &std::process::Output) -> Health {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "health.lua failed in {engine}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, message) = stdout
        .trim_end_matches('\n')
        .split_once('\n')
        .expect("status and message lines");
    Health {
        status: status.to_owned(),
        message: message.to_owned(),
    }
}

/// `value` as a Lua table constructor; JSON null becomes nil (an absent field, as in Argo CD).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for byte in s.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(byte as char),
            // Everything else byte by byte, so UTF-8 and control characters survive the shell-free
            // argument exactly.
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

fn imagebuild(generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "imagebuild.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "hello-site", "namespace": "default", "generation": generation},
        "spec": {
            "context": {"configMaps": [{"name": "hello-site"}]},
            "image": IMAGE,
            "tags": ["latest", "v1"],
        },
        "status": status,
    })
}

fn ready(status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "observedGeneration": generation,
    })
}

fn succeeded(observed: i64) -> Value {
    json!({
        "phase": "Succeeded",
        "observedGeneration": observed,
        "conditions": [ready("True", "Pushed", "pushed latest, v1", observed)],
        "digest": DIGEST,
        "imageRef": format!("{IMAGE}@{DIGEST}"),
        "tags": ["latest", "v1"],
    })
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn without_status_it_is_progressing_waiting_for_the_controller() {
    let h = health(&imagebuild(1, Value::Null));
    assert_eq!(h.status, "Progressing");
    assert!(h.message.starts_with("Waiting for the controller"), "{h:?}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn ready_for_the_current_generation_is_healthy_with_the_digest() {
    let h = health(&imagebuild(3, succeeded(3)));
    assert_eq!(h.status, "Healthy");
    assert!(h.message.contains(DIGEST), "{h:?}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn ready_for_an_older_generation_is_progressing() {
    let h = health(&imagebuild(4, succeeded(3)));
    assert_eq!(h.status, "Progressing");
    assert_eq!(
        h.message,
        "Waiting for the controller to observe generation 4"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn status_without_observed_generation_is_progressing() {
    let h = health(&imagebuild(1, json!({"phase": "Pending"})));
    assert_eq!(h.status, "Progressing");
    assert!(h.message.starts_with("Waiting for the controller"), "{h:?}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn failed_build_is_degraded_with_the_condition_message() {
    let message = "registry gitea.cnoe.localtest.me:8443 refused the credentials of \
                   Secret gitea/gitea-credential (401): check its username and password";
    let h = health(&imagebuild(
        2,
        json!({
            "phase": "Failed",
            "observedGeneration": 2,
            "conditions": [ready("False", "Unauthorized", message, 2)],
        }),
    ));
    assert_eq!(h.status, "Degraded");
    assert_eq!(h.message, message);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn building_pushing_and_pending_are_progressing_with_the_condition_message() {
    for phase in ["Pending", "Building", "Pushing"] {
        let message = format!("{phase} layer for {IMAGE}");
        let h = health(&imagebuild(
            5,
            json!({
                "phase": phase,
                "observedGeneration": 5,
                "conditions": [ready("False", phase, &message, 5)],
            }),
        ));
        assert_eq!(h.status, "Progressing", "phase {phase}");
        assert_eq!(h.message, message, "phase {phase}");
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn building_without_conditions_is_progressing_naming_the_phase() {
    let h = health(&imagebuild(
        1,
        json!({"phase": "Building", "observedGeneration": 1}),
    ));
    assert_eq!(h.status, "Progressing");
    assert_eq!(h.message, "Building");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn non_ascii_condition_messages_reach_argo_cd_intact() {
    let message = "Secret «gitea-credential» fehlt — bitte anlegen";
    let h = health(&imagebuild(
        1,
        json!({
            "phase": "Failed",
            "observedGeneration": 1,
            "conditions": [ready("False", "SecretMissing", message, 1)],
        }),
    ));
    assert_eq!(h.status, "Degraded");
    assert_eq!(h.message, message);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn argocd_cm_patch_embeds_health_lua_verbatim() {
    let patch = std::fs::read_to_string(repo_root().join("examples/argocd/argocd-cm-patch.yaml"))
        .expect("argocd-cm-patch.yaml");
    let patch: Value = imagebuild::yaml::from_str(&patch).expect("argocd-cm-patch.yaml parses");
    let script = std::fs::read_to_string(health_script()).expect("health.lua");
    assert_eq!(patch["kind"], "ConfigMap");
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    assert_eq!(
        patch["data"]["resource.customizations.health.imagebuild.dev_ImageBuild"]
            .as_str()
            .expect("the health key holds a string"),
        script,
        "argocd-cm-patch.yaml must embed examples/argocd/health.lua unchanged"
    );
}
