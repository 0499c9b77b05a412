//! The real single-node cluster of the test environment (tests/env/node-up.sh):
//! kubelet + containerd run Pods pulled from the test Gitea under the
//! `restricted` Pod Security level, PersistentVolumeClaims bind to the node's
//! hostPath provisioner, Jobs fill them, and Pods reach the API server through
//! the `kubernetes` Service with their ServiceAccount token.

mod cluster;
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::sleep;
use std::time::{Duration, Instant};

use cluster::{Namespace, Node, RESTRICTED_CONTAINER, RESTRICTED_POD, node};
use common::TestEnv;
use serde_json::{Value, json};

/// A Pod (restartPolicy Never) running `script` with busybox's sh.
fn busybox_pod(node: &Node, name: &str, script: &str, volumes: &str, mounts: &str) -> String {
    pod_with_image(name, node.busybox(), script, volumes, mounts)
}

/// A Pod (restartPolicy Never) running `script` with the `sh` of `image`.
fn pod_with_image(name: &str, image: &str, script: &str, volumes: &str, mounts: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {RESTRICTED_POD}
  containers:
  - name: main
    image: {image}
    command: [sh, -c, {script:?}]
    securityContext: {RESTRICTED_CONTAINER}
    resources: {{limits: {{cpu: 200m, memory: 64Mi}}}}
    volumeMounts: {mounts}
  volumes: {volumes}
"#
    )
}

const POD_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn node_is_ready_with_the_pinned_kubelet_and_containerd() {
    let node = node();
    let env = node.env;
    // Right after start-up the node lifecycle controller may not have lifted the not-ready
    // taint yet: give it the few seconds it takes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let n: serde_json::Value = loop {
        let out = env.kubectl(&["get", "node", node.name(), "-o", "json"]);
        let n: serde_json::Value = serde_json::from_str(&out).expect("node JSON");
        if n["spec"]["taints"].is_null() || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ready = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition");
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(
        n["status"]["nodeInfo"]["kubeletVersion"],
        env.k8s_version.as_str()
    );
    assert_eq!(
        n["status"]["nodeInfo"]["kubeProxyVersion"]
            .as_str()
            .unwrap_or(""),
        "",
        "kubeProxyVersion is no longer reported"
    );
    assert!(
        n["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{}",
        n["status"]["nodeInfo"]
    );
    assert!(
        n["spec"]["taints"].is_null(),
        "node keeps taints: {}",
        n["spec"]["taints"]
    );
    let ip = n["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .expect("InternalIP")["address"]
        .clone();
    assert_eq!(ip, node.var("IMAGEBUILD_TEST_NODE_IP"));
    // The default StorageClass is the node's provisioner.
    let sc = env.kubectl(&[
        "get",
        "storageclass",
        node.var("IMAGEBUILD_TEST_STORAGE_CLASS"),
        "-o",
        "jsonpath={.metadata.annotations.storageclass\\.kubernetes\\.io/is-default-class}",
    ]);
    assert_eq!(sc, "true");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn restricted_pod_runs_the_busybox_image_from_gitea() {
    let node = node();
    let ns = Namespace::restricted("node-pod");
    let script = r#"echo "hello from $(id -u):$(id -g)"; if touch /probe 2>/dev/null; then echo rootfs=rw; else echo rootfs=ro; fi; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; grep Seccomp: /proc/self/status"#;
    ns.apply(&busybox_pod(node, "hello", script, "[]", "[]"));
    let log = ns.pod_succeeds("hello", POD_TIMEOUT);
    assert!(log.contains("hello from 65532:65532"), "{log}");
    assert!(log.contains("rootfs=ro"), "{log}");
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    // 2 = SECCOMP_MODE_FILTER: the runtime's default profile is applied.
    assert!(log.contains("Seccomp:\t2"), "{log}");
    let image_id = ns.jsonpath("pod/hello", "{.status.containerStatuses[0].imageID}");
    assert!(
        image_id.starts_with(&format!("{}/", node.env.gitea)) && image_id.contains("@sha256:"),
        "image not pulled from Gitea: {image_id}"
    );
}

/// Pods reach Gitea by the same name and port as the host does: the node's
/// DNS answers `gitea.cnoe.localtest.me` with the node's address, where a
/// forwarder passes the connection on to Gitea. kubectl (Go's TLS) checks the
/// certificate with Gitea's own certificate as the only root, as the
/// controller will.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn pods_resolve_gitea_and_reach_it_with_its_certificate() {
    let node = node();
    let ns = Namespace::restricted("node-gitea");
    let (host, _) = node.env.gitea.split_once(':').unwrap();
    let ca = std::fs::read_to_string(&node.env.gitea_ca).unwrap();
    let ca_yaml: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: gitea-ca}}
data:
  ca.crt: |
{ca_yaml}---
apiVersion: v1
kind: Pod
metadata: {{name: gitea}}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {RESTRICTED_POD}
  containers:
  - name: lookup
    image: {busybox}
    command: [nslookup, {host}]
    securityContext: {RESTRICTED_CONTAINER}
    resources: {{limits: {{cpu: 200m, memory: 64Mi}}}}
  - name: https
    image: {kubectl}
    # A token, or kubectl asks for a user name; Gitea ignores it on /api/healthz.
    args: [--server=https://{gitea}, --certificate-authority=/gitea/ca.crt, --token=unused, get, --raw, /api/healthz]
    securityContext: {RESTRICTED_CONTAINER}
    resources: {{limits: {{cpu: 500m, memory: 128Mi}}}}
    volumeMounts: [{{name: ca, mountPath: /gitea}}, {{name: tmp, mountPath: /tmp}}]
  volumes:
  - {{name: ca, configMap: {{name: gitea-ca}}}}
  - {{name: tmp, emptyDir: {{}}}}
"#,
        busybox = node.busybox(),
        kubectl = node.kubectl_image(),
        gitea = node.env.gitea,
    ));
    let obj = "pod/gitea";
    let phase = ns.wait_for(
        obj,
        "{.status.phase}",
        &["Succeeded", "Failed"],
        POD_TIMEOUT,
    );
    let lookup = ns.kubectl(&["logs", obj, "-c", "lookup"]);
    let https = ns.kubectl(&["logs", obj, "-c", "https"]);
    assert_eq!(
        phase,
        "Succeeded",
        "{lookup}\n{https}\n{}",
        ns.describe(obj)
    );
    assert!(
        lookup.contains(&format!("Address: {}", node.var("IMAGEBUILD_TEST_NODE_IP"))),
        "{lookup}"
    );
    let health: serde_json::Value = serde_json::from_str(&https).expect("Gitea health JSON");
    assert_eq!(health["status"], "pass", "{https}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn pvc_binds_a_job_fills_it_and_a_second_pod_reads_it_back() {
    let node = node();
    let ns = Namespace::restricted("node-pvc");
    // No storageClassName: the default class (the node's provisioner) applies.
    ns.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
"#,
    );
    ns.wait_for(
        "pvc/data",
        "{.status.phase}",
        &["Bound"],
        Duration::from_secs(60),
    );
    let pv = ns.jsonpath("pvc/data", "{.spec.volumeName}");
    let path = node
        .env
        .kubectl(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"]);
    assert!(
        path.starts_with(node.var("IMAGEBUILD_TEST_VOLUMES_DIR")),
        "{path}"
    );

    ns.apply(&format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: fill}}
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
        command: [sh, -c, "echo one > /data/a.txt && mkdir -p /data/sub && echo two > /data/sub/b.txt && ls -R /data"]
        securityContext: {RESTRICTED_CONTAINER}
        resources: {{limits: {{cpu: 200m, memory: 64Mi}}}}
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
"#,
        image = node.busybox()
    ));
    ns.wait_for("job/fill", "{.status.succeeded}", &["1"], POD_TIMEOUT);

    ns.apply(&busybox_pod(
        node,
        "read",
        "cat /data/a.txt /data/sub/b.txt",
        "[{name: data, persistentVolumeClaim: {claimName: data, readOnly: true}}]",
        "[{name: data, mountPath: /data, readOnly: true}]",
    ));
    let log = ns.pod_succeeds("read", POD_TIMEOUT);
    assert_eq!(log, "one\ntwo\n");
    assert_eq!(
        std::fs::read_to_string(Path::new(&path).join("sub/b.txt")).unwrap(),
        "two\n"
    );

    // A released volume is deleted, directory and all.
    ns.kubectl(&["delete", "pod", "read", "--wait=true"]);
    ns.kubectl(&[
        "delete",
        "job",
        "fill",
        "--cascade=foreground",
        "--wait=true",
    ]);
    ns.kubectl(&["delete", "pvc", "data", "--wait=true"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&path).exists()
        || node
            .env
            .kubectl_output(&["get", "pv", &pv])
            .status
            .success()
    {
        assert!(
            Instant::now() < deadline,
            "released volume {pv} ({path}) not deleted"
        );
        sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn read_write_many_claim_is_shared_by_two_running_pods() {
    let node = node();
    let ns = Namespace::restricted("node-rwx");
    ns.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared}
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 16Mi}}
"#,
    );
    ns.wait_for(
        "pvc/shared",
        "{.status.phase}",
        &["Bound"],
        Duration::from_secs(60),
    );
    assert_eq!(
        ns.jsonpath("pvc/shared", "{.status.accessModes[0]}"),
        "ReadWriteMany"
    );
    let vol = "[{name: s, persistentVolumeClaim: {claimName: shared}}]";
    let mnt = "[{name: s, mountPath: /s}]";
    // The reader starts first and waits for the writer's file.
    ns.apply(&busybox_pod(
        node,
        "reader",
        "for i in $(seq 120); do [ -f /s/done ] && cat /s/msg && exit 0; sleep 1; done; exit 1",
        vol,
        mnt,
    ));
    ns.wait_for(
        "pod/reader",
        "{.status.phase}",
        &["Running", "Succeeded"],
        POD_TIMEOUT,
    );
    ns.apply(&busybox_pod(
        node,
        "writer",
        "echo shared-by-two > /s/msg && touch /s/done",
        vol,
        mnt,
    ));
    ns.pod_succeeds("writer", POD_TIMEOUT);
    assert_eq!(ns.pod_succeeds("reader", POD_TIMEOUT), "shared-by-two\n");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn pod_reaches_the_api_server_through_the_kubernetes_service_with_its_token() {
    let node = node();
    let ns = Namespace::restricted("node-api");
    let n = &ns.name;
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules:
- {{apiGroups: [""], resources: [pods], verbs: [get, list]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {n}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: whoami}}
spec:
  restartPolicy: Never
  serviceAccountName: reader
  securityContext: {RESTRICTED_POD}
  containers:
  - name: kubectl
    image: {image}
    # In-cluster configuration: KUBERNETES_SERVICE_HOST/PORT (the Service's
    # ClusterIP), the projected token and ca.crt; TLS is verified.
    args: [auth, whoami, -o, "jsonpath={{.status.userInfo.username}}{{\"\\n\"}}"]
    securityContext: {RESTRICTED_CONTAINER}
    resources: {{limits: {{cpu: 500m, memory: 128Mi}}}}
    volumeMounts: [{{name: tmp, mountPath: /tmp}}]
  - name: list
    image: {image}
    args: [get, pods, -o, name]
    securityContext: {RESTRICTED_CONTAINER}
    resources: {{limits: {{cpu: 500m, memory: 128Mi}}}}
    volumeMounts: [{{name: tmp, mountPath: /tmp}}]
  volumes: [{{name: tmp, emptyDir: {{}}}}]
"#,
        image = node.kubectl_image()
    ));
    let obj = "pod/whoami";
    let phase = ns.wait_for(
        obj,
        "{.status.phase}",
        &["Succeeded", "Failed"],
        POD_TIMEOUT,
    );
    let who = ns.kubectl(&["logs", obj, "-c", "kubectl"]);
    let list = ns.kubectl(&["logs", obj, "-c", "list"]);
    assert_eq!(phase, "Succeeded", "{who}\n{list}\n{}", ns.describe(obj));
    assert_eq!(who.trim(), format!("system:serviceaccount:{n}:reader"));
    assert!(list.lines().any(|l| l == "pod/whoami"), "{list}");
    // The Pod saw the Service's address, not the API server's own.
    let env_host = ns.jsonpath("svc/kubernetes", "{.spec.clusterIP}");
    assert!(
        env_host.is_empty(),
        "no kubernetes Service in a test namespace"
    );
    let cluster_ip = node.env.kubectl(&[
        "get",
        "svc",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(cluster_ip, "10.0.0.1");
}

/// kube-proxy sends a ClusterIP Service's traffic to its Pod (endpoints from
/// the EndpointSlice controller), from another Pod and from the serving Pod
/// itself (hairpin).
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn cluster_ip_service_reaches_its_pod_from_another_pod_and_itself() {
    let node = node();
    let ns = Namespace::restricted("node-svc");
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: www}}
data: {{index.html: "served-through-the-service\n"}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  automountServiceAccountToken: false
  securityContext: {RESTRICTED_POD}
  containers:
  - name: httpd
    image: {image}
    command: [httpd, -f, -p, "8080", -h, /www]
    securityContext: {RESTRICTED_CONTAINER}
    resources: {{limits: {{cpu: 200m, memory: 64Mi}}}}
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
    volumeMounts: [{{name: www, mountPath: /www}}]
  volumes: [{{name: www, configMap: {{name: www}}}}]
"#,
        image = node.busybox()
    ));
    ns.wait_for(
        "pod/web",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        &["True"],
        POD_TIMEOUT,
    );
    let ip = ns.jsonpath("svc/web", "{.spec.clusterIP}");
    assert!(ip.starts_with("10.0.0."), "{ip}");
    // kube-proxy may take a moment to program the new endpoint: retry.
    // (busybox's wget crashes with SIGSEGV in these Pods; nc does not.)
    let fetch = format!(
        "for i in $(seq 30); do printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 80 | grep -x served-through-the-service && exit 0; sleep 1; done; exit 1"
    );
    ns.apply(&busybox_pod(node, "client", &fetch, "[]", "[]"));
    assert_eq!(
        ns.pod_succeeds("client", POD_TIMEOUT),
        "served-through-the-service\n"
    );
    let hairpin = ns.kubectl(&["exec", "web", "--", "sh", "-c", &fetch]);
    assert_eq!(hairpin, "served-through-the-service\n");
}

// ---------------------------------------------------------------------------
// Multi-platform images

/// The media type of the indexes these tests make.
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The containerd namespace the tests pull into with ctr (the kubelet's is `k8s.io`).
const CTR_NAMESPACE: &str = "imagebuild-test";

/// A build context `work/NAME` holding one file, `file` = `text`.
fn one_file_context(work: &Path, name: &str, file: &str, text: &str) -> PathBuf {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).expect("context dir");
    std::fs::write(dir.join(file), text).expect("context file");
    dir
}

/// `imagebuild build -f FILE --context CONTEXT --push` to Gitea (trusting its certificate, the
/// password on stdin), FILE being an ImageBuild of `image:tag` that puts the context in /srv,
/// with the spec lines `extra`. Returns what the command prints: `image@digest`.
fn push_build(
    env: &TestEnv,
    work: &Path,
    image: &str,
    tag: &str,
    extra: &str,
    context: &Path,
) -> String {
    let file = work.join(format!("{tag}.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: node}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {image}\n  tags: [{tag}]\n  destinationPath: /srv\n{extra}"
        ),
    )
    .expect("ImageBuild file");
    env.push_build_to_gitea(&file, context)
}

/// The index entry of the pushed manifest `repo@digest` for `platform` (`os/arch`), its size
/// from the bytes Gitea serves.
fn index_entry(env: &TestEnv, pushed: &str, platform: &str) -> Value {
    let raw = env
        .raw_manifest(&env.gitea_ca, &env.gitea_creds(), pushed)
        .unwrap_or_else(|| panic!("skopeo cannot read {pushed}"));
    let (_, digest) = pushed.split_once('@').expect("image@digest");
    assert_eq!(imagebuild::oci::Digest::of(&raw).to_string(), digest);
    let (os, arch) = platform.split_once('/').expect("os/arch");
    json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": raw.len(),
        "platform": {"os": os, "architecture": arch},
    })
}

/// PUTs `index` as the manifest `repo:tag` (repo = host/owner/name) in Gitea with curl, the
/// credentials in a curl config on stdin. Returns the index digest.
fn put_index(env: &TestEnv, repo: &str, tag: &str, index: &Value) -> String {
    let body = index.to_string();
    let gitea = (env.gitea_ca.as_path(), env.gitea_creds());
    env.put_manifest((gitea.0, &gitea.1), repo, tag, OCI_INDEX, &body);
    imagebuild::oci::Digest::of(body.as_bytes()).to_string()
}

/// A base index in a fresh Gitea repository R, returned as `R:1`: a linux/amd64 child built on
/// the node's busybox (tag amd64) and a linux/arm64 child on scratch (tag arm64), each holding
/// /srv/arch.
fn base_index(node: &Node, work: &Path) -> String {
    let env = node.env;
    let repo = env.gitea_image(&common::unique_name("node-base"));
    let children = [
        (
            "amd64",
            format!("  from: {}\n  platform: linux/amd64\n", node.busybox()),
        ),
        ("arm64", "  platform: linux/arm64\n".to_owned()),
    ];
    let manifests: Vec<Value> = children
        .iter()
        .map(|(arch, extra)| {
            let context = one_file_context(work, arch, "arch", arch);
            let pushed = push_build(env, work, &repo, arch, extra, &context);
            index_entry(env, &pushed, &format!("linux/{arch}"))
        })
        .collect();
    put_index(
        env,
        &repo,
        "1",
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    );
    format!("{repo}:1")
}

/// ctr against the node's containerd in [`CTR_NAMESPACE`]. Dropping it removes the images it
/// pulled (`--sync`: their content and snapshots go too) and the namespace, pass or fail.
struct Ctr {
    env: &'static TestEnv,
    socket: String,
    pulled: Vec<String>,
}

impl Ctr {
    fn new(node: &'static Node) -> Ctr {
        Ctr {
            env: node.env,
            socket: node.var("IMAGEBUILD_TEST_CONTAINERD_SOCKET").to_owned(),
            pulled: Vec::new(),
        }
    }

    /// `ctr --address SOCKET -n NAMESPACE ARGS`, for at most three minutes.
    fn output(&self, args: &[&str]) -> Output {
        common::output(
            self.env
                .cmd("timeout")
                .args(["180", "ctr", "--address", &self.socket, "-n", CTR_NAMESPACE])
                .args(args),
        )
    }

    /// Runs ctr with `args`; fails the test unless it succeeds, with `secret` blanked out of
    /// the command and of what ctr printed. Returns stdout.
    fn run(&self, args: &[&str], secret: &str) -> Vec<u8> {
        let out = self.output(args);
        if !out.status.success() {
            let hide = |text: &str| {
                if secret.is_empty() {
                    text.to_owned()
                } else {
                    text.replace(secret, "***")
                }
            };
            panic!(
                "ctr {} failed ({}):\n{}{}",
                hide(&args.join(" ")),
                out.status,
                hide(&String::from_utf8_lossy(&out.stdout)),
                hide(&String::from_utf8_lossy(&out.stderr))
            );
        }
        out.stdout
    }

    /// Pulls the `platform` child of `reference` from Gitea (its certificate as the only root).
    /// ctr reads a password only from `--user user:password` or from a terminal, so the
    /// throw-away test Gitea's password goes on the command line; it is never printed.
    fn pull_from_gitea(&mut self, reference: &str, platform: &str) {
        let env = self.env;
        let ca = env.gitea_ca.to_string_lossy();
        let user = env.gitea_creds();
        self.pulled.push(reference.to_owned());
        self.run(
            &[
                "images",
                "pull",
                "--platform",
                platform,
                "--tlscacert",
                &ca,
                "--user",
                &user,
                reference,
            ],
            &env.gitea_password,
        );
    }

    /// The blob `digest` of containerd's content store, as JSON.
    fn content_json(&self, digest: &str) -> Value {
        let raw = self.run(&["content", "get", digest], "");
        assert_eq!(
            imagebuild::oci::Digest::of(&raw).to_string(),
            digest,
            "content store bytes"
        );
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{digest} is not JSON: {e}"))
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        for reference in &self.pulled {
            let out = self.output(&["images", "rm", "--sync", reference]);
            if !out.status.success() {
                eprintln!(
                    "ctr images rm {reference}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // Only an empty namespace goes; one still in use elsewhere stays.
        let _ = self.output(&["namespaces", "rm", CTR_NAMESPACE]);
    }
}

/// An image the CLI builds on a base index (no platform fields) is an index too, and the node
/// runs it: containerd picks its linux/amd64 child for the Pod (busybox's sh runs `cat`), the
/// Pod's imageID names the index, and ctr pulls the linux/arm64 child whose config says arm64.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_image_on_a_base_index_runs_its_amd64_child_and_ctr_pulls_its_arm64_child() {
    let node = node();
    let env = node.env;
    let work = tempfile::tempdir().expect("tempdir");
    let base = base_index(node, work.path());

    let hello = "hello from every platform\n";
    let context = one_file_context(work.path(), "app", "hello.txt", hello);
    let name = common::unique_name("node-multi");
    let image = env.gitea_image(&name);
    // The CRI names a container's image by its config digest and reports as imageID the first
    // repo digest containerd has for that config: a config of an earlier run (same inputs, same
    // config) would report that run's repository. A config of this run's own keeps it ours.
    let image_ref = push_build(
        env,
        work.path(),
        &image,
        "latest",
        &format!("  from: {base}\n  config: {{env: [{{name: TEST_RUN, value: {name}}}]}}\n"),
        &context,
    );
    let (repo, digest) = image_ref.split_once('@').expect("image@digest");
    assert_eq!(repo, image);

    let ns = Namespace::restricted("node-multi");
    ns.apply(&pod_with_image(
        "hello",
        &image_ref,
        "cat /srv/hello.txt",
        "[]",
        "[]",
    ));
    assert_eq!(ns.pod_succeeds("hello", POD_TIMEOUT), hello);
    let image_id = ns.jsonpath("pod/hello", "{.status.containerStatuses[0].imageID}");
    assert_eq!(image_id, image_ref, "the Pod's imageID names the index");

    let mut ctr = Ctr::new(node);
    ctr.pull_from_gitea(&image_ref, "linux/arm64");
    let index = ctr.content_json(digest);
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(
        common::index_platforms(&index),
        ["linux/amd64", "linux/arm64"]
    );
    let arm64 = index["manifests"][1]["digest"]
        .as_str()
        .expect("arm64 digest");
    let manifest = ctr.content_json(arm64);
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config = ctr.content_json(config_digest);
    assert_eq!(config["architecture"], "arm64", "{config}");
    assert_eq!(config["os"], "linux", "{config}");
}

// ---------------------------------------------------------------------------
// Incremental pulls

impl Ctr {
    /// The digests in containerd's content store (of every namespace: blobs are shared).
    fn content_digests(&self) -> std::collections::BTreeSet<String> {
        let out = self.run(&["content", "ls", "-q"], "");
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| l.starts_with("sha256:"))
            .collect()
    }
}

/// The layer digests and sizes of `repo@digest` as Gitea serves it.
fn gitea_layers(env: &TestEnv, image_ref: &str) -> Vec<(String, u64)> {
    common::contexts::served_layers(&env.gitea_ca, &env.gitea_creds(), image_ref)
}

/// After one file of a large context changed, the node fetches the new layer and nothing it
/// already holds: containerd's content store gains exactly the layers the new image does not
/// share with the old one.
#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn after_one_file_changed_the_node_pulls_only_the_new_layer() {
    let node = node();
    let env = node.env;
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("large");
    common::contexts::write_large_context(&context, 53);
    let image = env.gitea_image(&common::unique_name("node-layers"));

    let first = push_build(env, work.path(), &image, "v1", "", &context);
    let mut ctr = Ctr::new(node);
    ctr.pull_from_gitea(&first, "linux/amd64");
    let old = gitea_layers(env, &first);
    assert!(old.len() >= 2, "{} layers", old.len());

    common::contexts::change_one_file(&context, "changed for the node");
    let second = push_build(env, work.path(), &image, "v2", "", &context);
    let new = gitea_layers(env, &second);
    let changed: Vec<&(String, u64)> = new.iter().filter(|l| !old.contains(l)).collect();
    assert!((1..=2).contains(&changed.len()), "{changed:?}");

    let before = ctr.content_digests();
    let started = Instant::now();
    ctr.pull_from_gitea(&second, "linux/amd64");
    let seconds = started.elapsed().as_secs_f64();
    let fetched: Vec<&(String, u64)> = new
        .iter()
        .filter(|(digest, _)| !before.contains(digest))
        .collect();
    assert_eq!(fetched, changed, "the node fetched exactly the new layers");
    let bytes: u64 = fetched.iter().map(|(_, size)| size).sum();
    let total: u64 = new.iter().map(|(_, size)| size).sum();
    eprintln!(
        "node pull after one changed file: {} of {} layers, {bytes} of {total} bytes, {seconds:.2} s",
        fetched.len(),
        new.len()
    );
    assert!(ctr.content_digests().contains(&new[0].0));
}
