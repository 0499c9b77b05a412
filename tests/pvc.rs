//! PersistentVolumeClaim contexts end to end, on the real single-node cluster
//! (tests/env/node-up.sh): the controller runs as the chart's Pod (release `imagebuild-e2e` in a
//! namespace that enforces the `restricted` Pod Security level) from the image imagebuild built
//! of itself (hack/controller-image.sh, pushed to the test Gitea); reader Pods stream claims to
//! it; the node pulls the pushed image and runs it.
//!
//! The release watches every namespace, as the host-run controllers of other test binaries do,
//! so it runs only while a test of this binary runs: scaled to 0 when the last one ends, and by a
//! watchdog if this process dies. `IMAGEBUILD_TEST_CONTROLLER_IMAGE=host/owner/imagebuild@sha256:…`
//! skips building the image.

mod cluster;
mod common;
mod controller_support;

use std::io::BufReader;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use cluster::{Namespace, Node, RESTRICTED_CONTAINER, RESTRICTED_POD, node};
use common::{env, output, run_ok, unique_name};
use controller_support::{get_ib, ready};

const RELEASE: &str = "imagebuild-e2e";
const RELEASE_NS: &str = "imagebuild-e2e";
/// Selects reader Pods.
const READERS: &str = "app.kubernetes.io/component=context-reader";
const SETTLE: Duration = Duration::from_secs(240);
const POD_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// The in-cluster controller

/// The controller image, built and pushed once per process (or given).
fn controller_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Ok(image) = std::env::var("IMAGEBUILD_TEST_CONTROLLER_IMAGE") {
            return image;
        }
        let started = Instant::now();
        let script = common::repo_root().join("hack/controller-image.sh");
        let out = output(env().cmd("bash").arg(&script).stderr(Stdio::inherit()));
        assert!(out.status.success(), "hack/controller-image.sh failed");
        let image = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        eprintln!(
            "controller image {image} built and pushed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        image
    })
}

/// Tests of this binary that need the controller right now, and whether the release exists.
static USERS: Mutex<(u32, bool)> = Mutex::new((0, false));

/// Keeps the in-cluster controller running while held.
struct Controller;

fn controller() -> Controller {
    let image = controller_image();
    let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
    if users.0 == 0 {
        if users.1 {
            scale(1);
        } else {
            install(image);
            watchdog();
            users.1 = true;
        }
        run_ok(env().cmd("kubectl").args([
            "-n",
            RELEASE_NS,
            "rollout",
            "status",
            &format!("deployment/{RELEASE}"),
            "--timeout=180s",
        ]));
    }
    users.0 += 1;
    Controller
}

impl Drop for Controller {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
        users.0 -= 1;
        if users.0 == 0 {
            scale(0);
            let _ = output(env().cmd("kubectl").args([
                "-n",
                RELEASE_NS,
                "wait",
                "--for=delete",
                "pod",
                "-l",
                &format!("app.kubernetes.io/instance={RELEASE}"),
                "--timeout=60s",
            ]));
        }
    }
}

fn install(image: &str) {
    let env = env();
    env.kubectl_apply(&common::restricted_namespace_yaml(RELEASE_NS));
    let (repository, digest) = image
        .split_once('@')
        .unwrap_or_else(|| panic!("{image} is not pinned by digest"));
    let profile = serde_json::json!([{
        "host": env.gitea,
        "caSecret": {"namespace": "default", "name": "idpbuilder-cert", "key": "ca.crt"},
        "credentialsSecret": {"namespace": "gitea", "name": "gitea-credential"},
    }]);
    // Throttled readers make a large claim take long enough to time out or delete mid-upload.
    let reader_resources = serde_json::json!({
        "requests": {"cpu": "10m", "memory": "16Mi"},
        "limits": {"cpu": "100m", "memory": "64Mi"},
    });
    let chart = common::repo_root().join("charts/imagebuild");
    run_ok(env.cmd("helm").args([
        "upgrade",
        "--install",
        RELEASE,
        &chart.to_string_lossy(),
        "--namespace",
        RELEASE_NS,
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.digest={digest}"),
        "--set-json",
        &format!("registries={profile}"),
        "--set-json",
        &format!("pvcContexts.reader.resources={reader_resources}"),
        "--set",
        "replicaCount=1",
        "--set",
        "logFormat=text",
        "--set-json",
        "logLevel=\"info,imagebuild=debug\"",
    ]));
}

fn scale(replicas: u32) {
    let _ = output(env().cmd("kubectl").args([
        "-n",
        RELEASE_NS,
        "scale",
        &format!("deployment/{RELEASE}"),
        &format!("--replicas={replicas}"),
    ]));
}

/// Scales the release to 0 when this process ends, however it ends.
fn watchdog() {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; kubectl -n {RELEASE_NS} scale deployment/{RELEASE} --replicas=0 >/dev/null 2>&1",
        pid = std::process::id()
    );
    let _ = env()
        .cmd("bash")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

// ---------------------------------------------------------------------------------------------
// One test's world

/// A test namespace with the controller running; the namespace goes first when dropped.
struct Case {
    ns: Namespace,
    node: &'static Node,
    _controller: Controller,
}

fn case(prefix: &str) -> Case {
    let node = node();
    let controller = controller();
    Case {
        ns: Namespace::restricted(prefix),
        node,
        _controller: controller,
    }
}

impl Case {
    /// A claim (the default StorageClass) filled by a Job running `script` with the claim at /data.
    fn claim_filled_by_job(&self, claim: &str, script: &str) {
        self.ns.apply(&format!(
            r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 2Gi}}}}
"#
        ));
        self.job_on_claim(claim, &format!("fill-{claim}"), script);
    }

    /// Runs `script` in a Job named `job` with the claim at /data, and waits for it to succeed.
    fn job_on_claim(&self, claim: &str, job: &str, script: &str) {
        self.ns.apply(&format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {job}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext: {RESTRICTED_POD}
      containers:
      - name: fill
        image: {image}
        command: [sh, -euc, {script:?}]
        securityContext: {RESTRICTED_CONTAINER}
        resources: {{limits: {{cpu: 500m, memory: 64Mi}}}}
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]
"#,
            image = self.node.busybox()
        ));
        self.ns.wait_for(
            &format!("job/{job}"),
            "{.status.succeeded}",
            &["1"],
            POD_TIMEOUT,
        );
    }

    /// An ImageBuild of `claim` (below `sub_path`) into a fresh Gitea repository.
    fn image_build(&self, name: &str, claim: &str, sub_path: &str, extra: &str) -> String {
        let image = self.node.env.gitea_image(&unique_name("pvc"));
        format!(
            r#"
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {{name: {name}}}
spec:
  context:
    persistentVolumeClaim: {{claimName: {claim}, subPath: {sub_path}}}
  image: {image}
  tags: [e2e]
{extra}
"#
        )
    }

    fn settled(&self, name: &str, timeout: Duration) -> Value {
        controller_support::wait_settled(&self.ns.name, name, timeout)
    }

    /// Fails the test unless every Pod named is gone within `timeout`.
    fn assert_gone(&self, pods: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for pod in pods {
            while self.ns.get(&format!("pod/{pod}")).is_some() {
                assert!(
                    Instant::now() < deadline,
                    "reader Pod {pod} still exists:\n{}",
                    self.ns.describe(&format!("pod/{pod}"))
                );
                sleep(Duration::from_millis(250));
            }
        }
    }

    /// A claim whose 1.8 GiB file takes a reader throttled to 100m CPU more than 10 s to send
    /// (about a second of CPU, mostly the kernel's copying).
    fn large_claim(&self, claim: &str) {
        self.claim_filled_by_job(
            claim,
            "mkdir -p /data/big && dd if=/dev/zero of=/data/big/zero.bin bs=1M count=1800 2>/dev/null",
        );
    }
}

/// Every version of the reader Pods the API server reports, from before the build starts (a
/// reader may live for a second only).
struct ReaderWatch {
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl ReaderWatch {
    fn start(ns: &Namespace) -> ReaderWatch {
        let mut child = env()
            .cmd("kubectl")
            .args([
                "-n", &ns.name, "get", "pods", "-l", READERS, "--watch", "-o", "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for pod in stream.into_iter::<Value>().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(pod);
            }
        });
        // The watch must be established before the ImageBuild exists.
        sleep(Duration::from_secs(1));
        ReaderWatch { child, seen }
    }

    fn pods(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Names of the reader Pods seen so far, in the order they appeared.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for pod in self.pods() {
            if let Some(name) = pod["metadata"]["name"].as_str()
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_owned());
            }
        }
        names
    }

    /// Waits until a reader's container runs; returns its name.
    fn wait_running(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self
                .pods()
                .into_iter()
                .find(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object());
            if let Some(pod) = running {
                return pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no reader Pod ran: {:#?}",
                self.pods()
            );
            sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ReaderWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn condition(ib: &Value) -> (String, String, String) {
    ready(ib).unwrap_or_else(|| panic!("no Ready condition: {ib:#}"))
}

/// Fails the test unless the ImageBuild succeeded; returns its status.imageRef.
fn succeeded(ib: &Value) -> String {
    let (status, reason, message) = condition(ib);
    assert_eq!(status, "True", "{reason}: {message}\n{ib:#}");
    ib["status"]["imageRef"]
        .as_str()
        .expect("status.imageRef")
        .to_owned()
}

/// The last layer's digest of a manifest in Gitea.
fn pushed_layer(image_ref: &str) -> String {
    let env = env();
    let raw = env
        .raw_manifest(&env.gitea_ca, &env.gitea_creds(), image_ref)
        .unwrap_or_else(|| panic!("skopeo cannot read {image_ref}"));
    let manifest: Value = serde_json::from_slice(&raw).expect("manifest");
    last_layer(&manifest)
}

fn last_layer(manifest: &Value) -> String {
    manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["digest"].as_str())
        .expect("a layer")
        .to_owned()
}

/// The last layer's digest of `imagebuild build -f FILE --context DIR` on this machine.
fn local_layer(spec: &str, dir: &Path) -> String {
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("imagebuild.yaml");
    std::fs::write(&file, spec).expect("spec file");
    let layout = work.path().join("layout");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_imagebuild"))
            .args(["build", "-f"])
            .arg(&file)
            .arg("--context")
            .arg(dir)
            .arg("--output")
            .arg(&layout)
            .env_remove("SOURCE_DATE_EPOCH"),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index");
    let digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let blob = layout.join("blobs/sha256").join(&digest[7..]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob).expect("manifest blob")).expect("manifest");
    last_layer(&manifest)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn chart_controller_pod_is_running_and_ready_on_the_node() {
    let node = node();
    let _controller = controller();
    let pods = env().kubectl(&[
        "-n",
        RELEASE_NS,
        "get",
        "pods",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "json",
    ]);
    let pods: Value = serde_json::from_str(&pods).expect("pods");
    let pod = &pods["items"][0];
    assert_eq!(pod["status"]["phase"], "Running", "{pod:#}");
    let ready = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("Ready condition");
    assert_eq!(ready["status"], "True", "{pod:#}");
    assert_eq!(pod["spec"]["nodeName"], node.name());
    // The image imagebuild built of itself, pulled from Gitea by digest.
    let image = controller_image();
    let digest = image.split_once('@').map(|(_, d)| d).unwrap_or_default();
    let image_id = pod["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap_or_default();
    assert!(image_id.ends_with(digest), "{image_id} is not {image}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn image_built_from_a_claim_runs_in_a_deployment_and_shows_the_claims_files() {
    let case = case("pvc-run");
    case.claim_filled_by_job(
        "site",
        "mkdir -p /data/app/sub && echo 'hello from the claim' > /data/app/hello.txt \
         && echo nested > /data/app/sub/b.txt && echo outside > /data/outside.txt",
    );
    let started = Instant::now();
    case.ns.apply(&case.image_build(
        "site",
        "site",
        "app",
        &format!(
            "  from: {}\n  destinationPath: /srv\n  timeout: 3m",
            case.node.busybox()
        ),
    ));
    let image_ref = succeeded(&case.settled("site", SETTLE));
    let built = started.elapsed();

    case.ns.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: site}}
spec:
  selector: {{matchLabels: {{app: site}}}}
  template:
    metadata: {{labels: {{app: site}}}}
    spec:
      automountServiceAccountToken: false
      securityContext: {RESTRICTED_POD}
      containers:
      - name: site
        image: {image_ref}
        command: [sh, -c, "cat /srv/hello.txt /srv/sub/b.txt; ls /srv; sleep 3600"]
        securityContext: {RESTRICTED_CONTAINER}
        resources: {{limits: {{cpu: 100m, memory: 32Mi}}}}
"#
    ));
    let deadline = Instant::now() + POD_TIMEOUT;
    let log = loop {
        let log = case.ns.log("deployment/site");
        if log.contains("hello from the claim") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no output from the built image:\n{}",
            case.ns.describe("deployment/site")
        );
        sleep(Duration::from_millis(250));
    };
    let running = started.elapsed();
    assert_eq!(log, "hello from the claim\nnested\nhello.txt\nsub\n");
    let pods = case.ns.list("pods", "app=site");
    let pod_image = pods[0]["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap_or_default();
    let digest = image_ref.split_once('@').map(|(_, d)| d).unwrap_or("?");
    assert!(
        pod_image.ends_with(digest),
        "{pod_image} is not {image_ref}"
    );
    eprintln!(
        "apply -> Ready=True {:.1} s; apply -> Pod of the built image running {:.1} s",
        built.as_secs_f64(),
        running.as_secs_f64()
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn layer_from_a_claim_equals_the_layer_of_a_local_build_of_the_same_files() {
    let case = case("pvc-layer");
    case.claim_filled_by_job(
        "files",
        "cd /data && mkdir -p ctx/bin ctx/empty ctx/conf.d && printf 'a\\nb\\n' > ctx/a.txt \
         && printf '#!/bin/sh\\necho run\\n' > ctx/bin/run && chmod 755 ctx/bin/run \
         && printf 'k=v\\n' > ctx/conf.d/app.conf && ln -s ../a.txt ctx/bin/a \
         && printf 'notes\\n' > ctx/README.md",
    );
    let spec = case.image_build("files", "files", "ctx", "  exclude: [\"*.md\"]");
    case.ns.apply(&spec);
    let image_ref = succeeded(&case.settled("files", SETTLE));

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for sub in ["bin", "empty", "conf.d"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::write(root.join("a.txt"), "a\nb\n").unwrap();
    std::fs::write(root.join("bin/run"), "#!/bin/sh\necho run\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("conf.d/app.conf"), "k=v\n").unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("bin/a")).unwrap();
    std::fs::write(root.join("README.md"), "notes\n").unwrap();

    assert_eq!(pushed_layer(&image_ref), local_layer(&spec, root));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn config_map_context_builds_with_the_controller_in_its_pod() {
    let case = case("pvc-cm");
    let image = case.node.env.gitea_image(&unique_name("cm"));
    case.ns.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: web}}
data: {{index.html: "<h1>from a ConfigMap</h1>\n"}}
---
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {{name: web}}
spec:
  context: {{configMaps: [{{name: web}}]}}
  image: {image}
  tags: [e2e]
"#
    ));
    let ib = case.settled("web", SETTLE);
    let image_ref = succeeded(&ib);
    assert!(
        image_ref.starts_with(&format!("{image}@sha256:")),
        "{image_ref}"
    );
    // Built by the in-cluster controller, not by a host-run one.
    let events = controller_support::events(&case.ns.name, "web");
    assert!(
        events
            .iter()
            .any(|(_, _, _, instance)| instance.starts_with(RELEASE)),
        "{events:?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn reader_pod_holds_no_credential_and_is_gone_after_success() {
    let case = case("pvc-cred");
    case.claim_filled_by_job("src", "mkdir -p /data/s && echo x > /data/s/x.txt");
    let watch = ReaderWatch::start(&case.ns);
    case.ns
        .apply(&case.image_build("cred", "src", "s", "  timeout: 3m"));
    succeeded(&case.settled("cred", SETTLE));

    let pods = watch.pods();
    let pod = pods.first().expect("a reader Pod was seen");
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false, "{spec:#}");
    let volumes = spec["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1, "only the claim: {volumes:#?}");
    assert_eq!(volumes[0]["persistentVolumeClaim"]["readOnly"], true);
    assert!(spec["imagePullSecrets"].is_null(), "{spec:#}");
    for container in spec["containers"].as_array().expect("containers") {
        assert!(container["envFrom"].is_null(), "{container:#}");
        for var in container["env"].as_array().into_iter().flatten() {
            assert!(var["valueFrom"].is_null(), "env from a reference: {var}");
        }
        let mounts = container["volumeMounts"].as_array().expect("mounts");
        assert_eq!(mounts.len(), 1, "{mounts:#?}");
        assert_eq!(mounts[0]["readOnly"], true);
        assert!(container["resources"]["limits"]["cpu"].is_string());
        assert!(container["resources"]["limits"]["memory"].is_string());
    }
    let text = pod.to_string();
    for secret_word in ["secret", "serviceAccountToken", "kube-api-access"] {
        assert!(!text.contains(secret_word), "{secret_word} in {pod:#}");
    }
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ImageBuild");
    case.assert_gone(&watch.names(), Duration::from_secs(30));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn fifo_in_the_claim_fails_the_build_naming_it_and_the_reader_is_gone() {
    let case = case("pvc-fifo");
    case.claim_filled_by_job(
        "src",
        "mkdir -p /data/app && echo ok > /data/app/ok.txt && mkfifo /data/app/queue",
    );
    let watch = ReaderWatch::start(&case.ns);
    case.ns.apply(&case.image_build("fifo", "src", "app", ""));
    let ib = case.settled("fifo", SETTLE);
    let (status, reason, message) = condition(&ib);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ContextUploadInvalid"),
        "{message}"
    );
    assert!(
        message.contains("\"app/queue\"") && message.contains("named pipe"),
        "{message}"
    );
    case.assert_gone(&watch.names(), Duration::from_secs(30));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn symlink_leaving_the_claim_is_stored_as_a_link_like_a_local_build() {
    // "Stored as symlinks and never followed": inside the image the link resolves within the
    // image, so the reader sends it and the controller stores it as it is.
    let case = case("pvc-link");
    case.claim_filled_by_job(
        "src",
        "mkdir -p /data/app && printf 'hi\\n' > /data/app/index.html \
         && ln -s ../../etc/passwd /data/app/passwd",
    );
    let spec = case.image_build("link", "src", "app", "");
    case.ns.apply(&spec);
    let image_ref = succeeded(&case.settled("link", SETTLE));

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("index.html"), "hi\n").unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", dir.path().join("passwd")).unwrap();
    assert_eq!(pushed_layer(&image_ref), local_layer(&spec, dir.path()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn reader_pod_is_gone_after_the_build_times_out() {
    let case = case("pvc-timeout");
    case.large_claim("big");
    let watch = ReaderWatch::start(&case.ns);
    case.ns
        .apply(&case.image_build("slow", "big", "big", "  timeout: 8s"));
    let ib = case.settled("slow", SETTLE);
    let (status, reason, message) = condition(&ib);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Timeout"),
        "{message}"
    );
    // The attempt that timed out; a retry may already have started another reader.
    let attempt: Vec<String> = watch.names().into_iter().take(1).collect();
    assert!(!attempt.is_empty(), "no reader Pod was seen");
    case.assert_gone(&attempt, Duration::from_secs(30));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn reader_pod_is_gone_after_its_image_build_is_deleted_mid_build() {
    let case = case("pvc-delete");
    case.large_claim("big");
    let watch = ReaderWatch::start(&case.ns);
    case.ns
        .apply(&case.image_build("doomed", "big", "big", "  timeout: 5m"));
    let reader = watch.wait_running(POD_TIMEOUT);
    assert_eq!(
        get_ib(&case.ns.name, "doomed")["status"]["phase"],
        "Building"
    );
    case.ns
        .kubectl(&["delete", "imagebuild", "doomed", "--wait=false"]);
    case.assert_gone(&[reader], Duration::from_secs(60));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn missing_claim_fails_at_once_naming_it_without_a_reader() {
    let case = case("pvc-missing");
    let watch = ReaderWatch::start(&case.ns);
    let started = Instant::now();
    case.ns
        .apply(&case.image_build("lost", "no-such-claim", "app", "  timeout: 5m"));
    let ib = case.settled("lost", SETTLE);
    let (status, reason, message) = condition(&ib);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ClaimNotFound"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{}/no-such-claim", case.ns.name)),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(watch.names().is_empty(), "{:?}", watch.names());
}

/// The claim's volume is bound to another node (as a ReadWriteOnce claim in use elsewhere is):
/// the reader cannot be scheduled.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn unschedulable_reader_fails_within_the_timeout_saying_why() {
    let case = case("pvc-pending");
    let pv = unique_name("pvc-elsewhere");
    let _pv = ClusterObject(format!("pv/{pv}"));
    let ns = &case.ns.name;
    env().kubectl_apply(&format!(
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 16Mi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {{path: /nonexistent/{pv}}}
  claimRef: {{namespace: {ns}, name: elsewhere}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [another-node]}}]
"#
    ));
    case.ns.apply(&format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: elsewhere}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: {pv}
  resources: {{requests: {{storage: 16Mi}}}}
"#
    ));
    case.ns.wait_for(
        "pvc/elsewhere",
        "{.status.phase}",
        &["Bound"],
        Duration::from_secs(60),
    );
    let watch = ReaderWatch::start(&case.ns);
    let started = Instant::now();
    case.ns
        .apply(&case.image_build("stuck", "elsewhere", "app", "  timeout: 20s"));
    let ib = case.settled("stuck", Duration::from_secs(60));
    let took = started.elapsed();
    let (status, reason, message) = condition(&ib);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ReaderPodPending"),
        "{message}"
    );
    assert!(
        message.contains("Unschedulable") && message.contains("PersistentVolume's node affinity"),
        "{message}"
    );
    assert!(
        took < Duration::from_secs(25),
        "failed after {took:?}, timeout is 20s"
    );
    let attempt: Vec<String> = watch.names().into_iter().take(1).collect();
    case.assert_gone(&attempt, Duration::from_secs(30));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn read_write_once_claim_in_use_by_a_running_pod_still_builds() {
    let case = case("pvc-rwo");
    case.claim_filled_by_job(
        "busy",
        "mkdir -p /data/app && echo shared > /data/app/s.txt",
    );
    case.ns.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: holder}}
spec:
  automountServiceAccountToken: false
  securityContext: {RESTRICTED_POD}
  containers:
  - name: hold
    image: {image}
    command: [sleep, "3600"]
    securityContext: {RESTRICTED_CONTAINER}
    resources: {{limits: {{cpu: 50m, memory: 16Mi}}}}
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: busy}}}}]
"#,
        image = case.node.busybox()
    ));
    case.ns
        .wait_for("pod/holder", "{.status.phase}", &["Running"], POD_TIMEOUT);
    case.ns
        .apply(&case.image_build("shared", "busy", "app", ""));
    succeeded(&case.settled("shared", SETTLE));
}

/// A cluster-scoped object deleted when dropped.
struct ClusterObject(String);

impl Drop for ClusterObject {
    fn drop(&mut self) {
        let _ = output(env().cmd("kubectl").args([
            "delete",
            &self.0,
            "--ignore-not-found",
            "--wait=false",
        ]));
    }
}

/// The layers (digest, size) of a manifest in Gitea.
fn pushed_layers(image_ref: &str) -> Vec<(String, u64)> {
    let env = env();
    common::contexts::served_layers(&env.gitea_ca, &env.gitea_creds(), image_ref)
}

/// The bytes the Ready message says were uploaded.
fn uploaded(ib: &Value) -> u64 {
    common::contexts::bytes_uploaded(&condition(ib).2)
}

/// A claim of about 85 MB is several layers; after one of its files changes, a rebuild uploads
/// the one new layer (two if the file moved a cut) and the new config, nothing else.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn one_changed_file_in_a_large_claim_uploads_one_layer() {
    let case = case("pvc-layers");
    case.claim_filled_by_job(
        "large",
        "mkdir -p /data/ctx/media && for i in 0 1 2 3 4 5 6 7 8 9; do \
         dd if=/dev/urandom of=/data/ctx/media/clip-$i.bin bs=1M count=7 2>/dev/null; done \
         && for d in $(seq 10 29); do mkdir -p /data/ctx/src/d$d; for f in $(seq 10 29); do \
         yes \"line $d $f of the claim\" | head -c 40000 > /data/ctx/src/d$d/f$f.txt; done; done",
    );
    case.ns
        .apply(&case.image_build("large", "large", "ctx", "  timeout: 5m"));
    let first = case.settled("large", SETTLE);
    let first_ref = succeeded(&first);
    let before = pushed_layers(&first_ref);
    assert!(before.len() >= 2, "{} layers", before.len());

    case.job_on_claim(
        "large",
        "edit-large",
        "echo one more line >> /data/ctx/src/d17/f13.txt",
    );
    case.ns.kubectl(&[
        "annotate",
        "imagebuild",
        "large",
        "imagebuild.dev/rebuild=1",
    ]);
    let second = controller_support::wait_for(&case.ns.name, "large", SETTLE, |ib| {
        ib["status"]["completionTime"] != first["status"]["completionTime"]
            && ib["status"]["phase"] == "Succeeded"
    });
    let second_ref = succeeded(&second);
    assert_ne!(second_ref, first_ref);
    let after = pushed_layers(&second_ref);
    let new: Vec<&(String, u64)> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!((1..=2).contains(&new.len()), "new layers: {new:?}");
    let new_bytes: u64 = new.iter().map(|(_, size)| size).sum();
    let sent = uploaded(&second);
    assert!(
        sent >= new_bytes && sent < new_bytes + 16_384,
        "{sent} bytes uploaded for {new_bytes} bytes of new layers"
    );
    let total: u64 = after.iter().map(|(_, size)| size).sum();
    eprintln!(
        "claim rebuild after one changed file: {} of {} layers new, {sent} of {total} bytes uploaded",
        new.len(),
        after.len()
    );
}
