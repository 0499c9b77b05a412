//! Proves that each part of the test environment (tests/env/up.sh) is real:
//! the pinned Kubernetes API server with CEL validation and Pod Security
//! admission, Gitea's registry over HTTPS with idpbuilder's kind of
//! certificate, the second registry, the mirrored idpbuilder Secrets, Helm.

mod common;

use common::{env, output, output_with_stdin, run_ok, unique_name};
use std::path::Path;
use std::time::{Duration, Instant};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// Kubernetes

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn kubectl_version_shows_pinned_server_and_client_version() {
    let env = env();
    let out = env.kubectl(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("kubectl version JSON");
    assert_eq!(
        v["serverVersion"]["gitVersion"],
        env.k8s_version.as_str(),
        "{out}"
    );
    assert_eq!(
        v["clientVersion"]["gitVersion"],
        env.k8s_version.as_str(),
        "{out}"
    );
    let minor = env.k8s_version.split('.').nth(1).unwrap();
    assert_eq!(v["serverVersion"]["minor"], minor, "{out}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn cel_validation_rule_of_a_crd_refuses_a_bad_object() {
    let env = env();
    let group = format!("{}.testenv.imagebuild.dev", unique_name("cel"));
    let crd = format!("widgets.{group}");
    env.kubectl_apply(&format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: "{crd}"}}
spec:
  group: "{group}"
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.minReplicas <= self.maxReplicas"
              message: "minReplicas must not exceed maxReplicas"
            properties:
              minReplicas: {{type: integer}}
              maxReplicas: {{type: integer}}
"#
    ));
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{crd}"),
        "--timeout=60s",
    ]);

    let widget = |name: &str, min: i64, max: i64| {
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: {name}, namespace: default}}\nspec: {{minReplicas: {min}, maxReplicas: {max}}}\n"
        )
    };
    // A good object is accepted (retried while discovery catches up with the new group).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.kubectl_stdin(&["create", "-f", "-"], &widget("good", 1, 3));
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "good Widget refused: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = env.kubectl_stdin(&["create", "-f", "-"], &widget("bad", 5, 2));
    assert!(!out.status.success(), "bad Widget was accepted");
    let err = stderr(&out);
    assert!(
        err.contains("minReplicas must not exceed maxReplicas"),
        "unexpected error: {err}"
    );
    assert!(
        err.contains("Invalid value"),
        "not a validation error: {err}"
    );

    env.kubectl(&["delete", "crd", &crd, "--wait=false"]);
}

/// Creates a namespace enforcing the `restricted` Pod Security level, with the
/// `default` ServiceAccount that pods need. kube-controller-manager may make
/// that one at the same moment, so server-side apply (an upsert) is used.
fn restricted_namespace() -> String {
    let env = env();
    let ns = unique_name("psa");
    let out = env.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: default, namespace: {ns}}}
automountServiceAccountToken: false
"#
        ),
    );
    assert!(out.status.success(), "namespace {ns}: {}", stderr(&out));
    ns
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn restricted_pod_security_refuses_a_privileged_pod() {
    let env = env();
    let ns = restricted_namespace();
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: privileged, namespace: {ns}}}
spec:
  containers:
  - name: c
    image: registry.k8s.io/pause:3.10
    securityContext: {{privileged: true}}
"#
    );
    let out = env.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &pod);
    assert!(
        !out.status.success(),
        "privileged pod admitted in a restricted namespace"
    );
    let err = stderr(&out);
    assert!(
        err.contains(r#"violates PodSecurity "restricted:latest""#),
        "unexpected error: {err}"
    );
    assert!(err.contains("privileged"), "unexpected error: {err}");
    env.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn restricted_pod_security_admits_a_compliant_pod() {
    let env = env();
    let ns = restricted_namespace();
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: compliant, namespace: {ns}}}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    seccompProfile: {{type: RuntimeDefault}}
  containers:
  - name: c
    image: registry.k8s.io/pause:3.10
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
"#
    );
    let out = env.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &pod);
    assert!(
        out.status.success(),
        "compliant pod refused: {}",
        stderr(&out)
    );
    env.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn idpbuilder_secrets_are_mirrored_into_the_api_server() {
    let env = env();
    let get = |ns: &str, name: &str, key: &str| {
        let jsonpath = format!("{{.data.{}}}", key.replace('.', "\\."));
        let b64 = env.kubectl(&[
            "-n",
            ns,
            "get",
            "secret",
            name,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ]);
        let out = output_with_stdin(
            std::process::Command::new("base64").arg("-d"),
            b64.as_bytes(),
        );
        assert!(out.status.success(), "{ns}/{name} {key} is not base64");
        String::from_utf8(out.stdout).unwrap()
    };
    let ca = std::fs::read_to_string(&env.gitea_ca).unwrap();
    assert_eq!(get("default", "idpbuilder-cert", "ca.crt"), ca);
    assert_eq!(get("ingress-nginx", "idpbuilder-cert", "tls.crt"), ca);
    assert_eq!(get("gitea", "gitea-credential", "username"), env.gitea_user);
    assert_eq!(
        get("gitea", "gitea-credential", "password"),
        env.gitea_password
    );
    assert_eq!(get("gitea", "gitea-credential", "token"), env.gitea_token);
    assert_eq!(env.gitea_user, "giteaAdmin");
    assert!(
        env.gitea_password.contains(':') && env.gitea_password.contains('@'),
        "the password should contain ':' and '@' like idpbuilder's"
    );
}

// ---------------------------------------------------------------------------
// Gitea

/// `openssl x509` of a PEM file, as text.
fn x509_text(pem: &Path, args: &[&str]) -> String {
    run_ok(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-in"])
            .arg(pem)
            .args(args),
    )
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn gitea_certificate_is_made_like_idpbuilders() {
    let env = env();
    let text = x509_text(&env.gitea_ca, &["-text"]);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );
    assert!(
        text.contains("DNS:cnoe.localtest.me, DNS:*.cnoe.localtest.me"),
        "{text}"
    );
    assert!(!text.contains("IP Address"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    let subject = x509_text(&env.gitea_ca, &["-subject"]);
    let issuer = x509_text(&env.gitea_ca, &["-issuer"]);
    assert_eq!(
        subject.trim_start_matches("subject="),
        issuer.trim_start_matches("issuer=")
    );

    // Gitea serves exactly this certificate as its server certificate.
    let (host, port) = env.gitea.split_once(':').unwrap();
    let connect = format!("127.0.0.1:{port}");
    let served = output_with_stdin(
        std::process::Command::new("openssl").args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            host,
        ]),
        b"",
    );
    let served = String::from_utf8_lossy(&served.stdout);
    let begin = served
        .find("-----BEGIN CERTIFICATE-----")
        .expect("server sent a certificate");
    let end = served.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let dir = tempfile::tempdir().unwrap();
    let served_pem = dir.path().join("served.pem");
    std::fs::write(&served_pem, &served[begin..end]).unwrap();
    assert_eq!(
        x509_text(&served_pem, &["-fingerprint", "-sha256"]),
        x509_text(&env.gitea_ca, &["-fingerprint", "-sha256"])
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn gitea_anonymous_v2_answers_401_with_bearer_challenge() {
    let env = env();
    // curl (OpenSSL) trusting only the generated certificate; no -k.
    let out = output(
        env.cmd("curl")
            .args(["-sS", "-i", "--max-time", "20", "--cacert"])
            .arg(&env.gitea_ca)
            .arg(format!("https://{}/v2/", env.gitea)),
    );
    assert!(out.status.success(), "curl failed: {}", stderr(&out));
    let response = String::from_utf8_lossy(&out.stdout);
    let status = response.lines().next().unwrap_or_default();
    assert!(status.contains(" 401"), "expected 401, got: {response}");
    let challenge = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_else(|| panic!("no WWW-Authenticate header: {response}"));
    assert!(
        challenge.contains(&format!(r#"Bearer realm="https://{}/v2/token""#, env.gitea)),
        "unexpected challenge: {challenge}"
    );
    assert!(
        challenge.contains(r#"service="container_registry""#),
        "unexpected challenge: {challenge}"
    );
}

// ---------------------------------------------------------------------------
// Both registries: a blob and a manifest pushed with skopeo, read back.

fn sha256_hex(data: &[u8]) -> String {
    let out = output_with_stdin(&mut std::process::Command::new("sha256sum"), data);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

struct Layout {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    manifest_digest: String,
    layer_digest: String,
}

/// Writes a one-layer OCI image layout by hand (tar + gzip + JSON), with
/// content unique to this call so every push uploads a new blob.
fn make_layout(tag: &str) -> Layout {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("hello.txt"),
        format!("hello from {}\n", unique_name("layer")),
    )
    .unwrap();
    let tar = dir.path().join("layer.tar");
    run_ok(
        std::process::Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("hello.txt"),
    );
    let tar_bytes = std::fs::read(&tar).unwrap();
    let gz = output_with_stdin(
        std::process::Command::new("gzip").args(["-n", "-c"]),
        &tar_bytes,
    );
    assert!(gz.status.success());
    let layer = gz.stdout;

    let blobs = dir.path().join("oci/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar_bytes))]},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let oci = dir.path().join("oci");
    std::fs::write(oci.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(oci.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Layout {
        _dir: dir,
        path: oci,
        manifest_digest,
        layer_digest,
    }
}

/// Pushes with `skopeo copy`, then reads the manifest back with
/// `skopeo inspect --raw` and the layer blob with curl, and compares digests.
fn push_and_read_back(host: &str, repo: &str, ca: &Path, creds: &str) {
    let env = env();
    let tag = "v1";
    let layout = make_layout(tag);
    let certs = env.cert_dir(ca);
    let reference = format!("docker://{host}/{repo}:{tag}");
    // --insecure-policy: skip the signature policy file (/etc/containers/policy.json);
    // TLS is verified against the given CA only.
    let out = output(
        env.cmd("skopeo")
            .args(["--insecure-policy", "copy", "--dest-cert-dir"])
            .arg(certs.path())
            .args(["--dest-creds", creds])
            .arg(format!("oci:{}:{tag}", layout.path.display()))
            .arg(&reference),
    );
    assert!(
        out.status.success(),
        "skopeo copy to {reference} failed: {}",
        stderr(&out)
    );

    let out = output(
        env.cmd("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(certs.path())
            .args(["--creds", creds])
            .arg(&reference),
    );
    assert!(
        out.status.success(),
        "skopeo inspect {reference} failed: {}",
        stderr(&out)
    );
    assert_eq!(
        format!("sha256:{}", sha256_hex(&out.stdout)),
        layout.manifest_digest
    );

    let out = output(
        env.cmd("curl")
            .args(["-fsS", "-L", "--max-time", "30", "--cacert"])
            .arg(ca)
            .args(["-u", creds])
            .arg(format!(
                "https://{host}/v2/{repo}/blobs/{}",
                layout.layer_digest
            )),
    );
    assert!(out.status.success(), "blob GET failed: {}", stderr(&out));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&out.stdout)),
        layout.layer_digest
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn skopeo_push_to_gitea_reads_back_the_same_manifest_and_blob() {
    let env = env();
    let repo = format!("{}/{}", env.gitea_owner, unique_name("testenv"));
    push_and_read_back(&env.gitea, &repo, &env.gitea_ca, &env.gitea_creds());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn skopeo_push_to_second_registry_reads_back_the_same_manifest_and_blob() {
    let env = env();
    let repo = format!("testenv/{}", unique_name("push"));
    push_and_read_back(
        &env.registry,
        &repo,
        &env.registry_ca,
        &env.registry_creds(),
    );
}

// ---------------------------------------------------------------------------
// Helm

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn helm_version_reports_pinned_version() {
    let env = env();
    let out = run_ok(
        env.cmd("helm")
            .args(["version", "--template", "{{.Version}}"]),
    );
    assert_eq!(out.trim(), env.helm_version);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn helm_installs_a_chart_into_the_api_server() {
    let env = env();
    let name = unique_name("helm");
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: testenv-probe\nversion: 0.1.0\nkubeVersion: \">=1.30.0-0\"\n",
    )
    .unwrap();
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n",
    )
    .unwrap();
    run_ok(
        env.cmd("helm")
            .args([
                "install",
                name.as_str(),
                "--namespace",
                name.as_str(),
                "--create-namespace",
            ])
            .arg(&chart),
    );
    let kube = env.kubectl(&[
        "-n",
        &name,
        "get",
        "configmap",
        &name,
        "-o",
        "jsonpath={.data.kube}",
    ]);
    assert_eq!(kube, env.k8s_version);
    run_ok(
        env.cmd("helm")
            .args(["uninstall", &name, "--namespace", &name]),
    );
    env.kubectl(&["delete", "namespace", &name, "--wait=false"]);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rbac_limits_a_service_account_token_until_a_role_grants_access() {
    let env = env();
    let ns = unique_name("rbac");
    env.kubectl(&["create", "namespace", &ns]);
    env.kubectl(&["-n", &ns, "create", "serviceaccount", "reader"]);
    // TokenRequest: needs the service-account signing key flags.
    let token = env.kubectl(&["-n", &ns, "create", "token", "reader", "--duration=10m"]);
    let ca = env.dir.join("pki/ca.crt");
    let as_reader = || {
        env.cmd("kubectl")
            .args(["--kubeconfig=/dev/null", "--server", &env.apiserver])
            .arg(format!("--certificate-authority={}", ca.display()))
            .args(["--token", token.trim(), "-n", &ns, "get", "configmaps"])
            .output()
            .unwrap()
    };
    let out = as_reader();
    assert!(
        !out.status.success(),
        "a bare service account may list configmaps"
    );
    assert!(
        stderr(&out).contains("forbidden"),
        "unexpected error: {}",
        stderr(&out)
    );

    env.kubectl(&[
        "-n",
        &ns,
        "create",
        "role",
        "read-cm",
        "--verb=list",
        "--resource=configmaps",
    ]);
    let subject = format!("--serviceaccount={ns}:reader");
    env.kubectl(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        &subject,
    ]);
    // The authorizer sees the new binding through its informer: allow a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = as_reader();
    while !out.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        out = as_reader();
    }
    assert!(
        out.status.success(),
        "the role did not grant access: {}",
        stderr(&out)
    );
    env.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
