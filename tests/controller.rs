//! End to end: the chart installed into the real API server, the controller running with its
//! ServiceAccount, ImageBuilds applied with kubectl, images checked in the real Gitea.

mod common;
mod controller_support;

use std::time::Duration;

use controller_support as ctl;

const SETTLE: Duration = Duration::from_secs(120);

fn site_manifests(ns: &str, name: &str, image: &str, body: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-src, namespace: {ns}}}
data:
  index.html: "{body}"
  app.sh: "echo hi"
---
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {{name: {name}, namespace: {ns}}}
spec:
  context:
    configMaps:
      - name: {name}-src
        items:
          - {{key: index.html, path: site/index.html}}
          - {{key: app.sh, path: bin/app.sh, mode: 493}}
  image: {image}
  tags: [latest, v1]
  destinationPath: /srv
{extra_spec}
"#
    )
}

fn start() -> std::sync::MutexGuard<'static, ctl::ControllerProcess> {
    ctl::shared_controller()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_configmap_build_becomes_ready_with_the_digest_gitea_serves_and_the_files_inside() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-ready");
    let image = env.gitea_image(&common::unique_name("site"));
    env.kubectl_apply(&site_manifests(&ns, "site", &image, "<h1>hello</h1>", ""));

    let ib = ctl::wait_settled(&ns, "site", SETTLE);
    let (ready, reason, message) = ctl::ready(&ib).expect("Ready condition");
    assert_eq!(ready, "True", "{reason}: {message}");
    let digest = ib["status"]["digest"]
        .as_str()
        .expect("status.digest")
        .to_owned();
    for tag in ["latest", "v1"] {
        assert_eq!(
            ctl::registry_digest(env, &image, tag).as_deref(),
            Some(digest.as_str()),
            "tag {tag}"
        );
    }
    assert_eq!(ib["status"]["imageRef"], format!("{image}@{digest}"));
    assert_eq!(ib["status"]["shortDigest"], digest[7..19]);

    let bundle = ctl::pull_and_unpack(env, &format!("{image}@{digest}"));
    let rootfs = bundle.path().join("bundle/rootfs/srv");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("site/index.html")).expect("index.html"),
        "<h1>hello</h1>"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(rootfs.join("bin/app.sh"))
            .expect("app.sh")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);
    let events = ctl::events(&ns, "site");
    assert!(
        events
            .iter()
            .any(|(t, r, _, _)| t == "Normal" && r == "Pushed"),
        "{events:?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn editing_the_configmap_rebuilds_and_unchanged_inputs_upload_nothing() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-edit");
    let image = env.gitea_image(&common::unique_name("edit"));
    env.kubectl_apply(&site_manifests(&ns, "edit", &image, "one", ""));
    let first = ctl::wait_settled(&ns, "edit", SETTLE);
    let first_digest = first["status"]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();

    // Unchanged inputs: the object is not rebuilt, the digest and attempts stay.
    env.kubectl_apply(&site_manifests(&ns, "edit", &image, "one", ""));
    std::thread::sleep(Duration::from_secs(2));
    let again = ctl::get_ib(&ns, "edit");
    assert_eq!(again["status"]["digest"], first["status"]["digest"]);
    assert_eq!(
        again["status"]["completionTime"],
        first["status"]["completionTime"]
    );

    // A forced rebuild of the same inputs reproduces the digest and uploads nothing.
    env.kubectl(&[
        "annotate",
        "imagebuild",
        "edit",
        "-n",
        &ns,
        "imagebuild.dev/rebuild=1",
    ]);
    let rebuilt = ctl::wait_for(&ns, "edit", SETTLE, |ib| {
        ib["status"]["completionTime"] != first["status"]["completionTime"]
            && ib["status"]["phase"] == "Succeeded"
    });
    assert_eq!(rebuilt["status"]["digest"], first["status"]["digest"]);
    assert_eq!(
        ctl::ready(&rebuilt).map(|r| r.1).as_deref(),
        Some("UpToDate")
    );

    // An edited ConfigMap gives a new image.
    env.kubectl_apply(&site_manifests(&ns, "edit", &image, "two", ""));
    let edited = ctl::wait_for(&ns, "edit", SETTLE, |ib| {
        ib["status"]["phase"] == "Succeeded"
            && ib["status"]["digest"].as_str() != Some(first_digest.as_str())
    });
    let new_digest = edited["status"]["digest"].as_str().expect("digest");
    assert_eq!(
        ctl::registry_digest(env, &image, "latest").as_deref(),
        Some(new_digest)
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn deletion_policy_delete_removes_the_tags_from_gitea() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-delete");
    let image = env.gitea_image(&common::unique_name("gone"));
    env.kubectl_apply(&site_manifests(
        &ns,
        "gone",
        &image,
        "bye",
        "  deletionPolicy: Delete",
    ));
    let ib = ctl::wait_settled(&ns, "gone", SETTLE);
    assert_eq!(
        ctl::ready(&ib).map(|r| r.0).as_deref(),
        Some("True"),
        "{ib:#}"
    );
    assert!(ctl::registry_digest(env, &image, "latest").is_some());

    env.kubectl(&["delete", "imagebuild", "gone", "-n", &ns, "--timeout=60s"]);
    assert_eq!(
        ctl::registry_digest(env, &image, "latest"),
        None,
        "tag latest still served"
    );
    assert_eq!(
        ctl::registry_digest(env, &image, "v1"),
        None,
        "tag v1 still served"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn invalid_specs_are_refused_by_the_api_server_with_a_readable_message() {
    let env = common::env();
    let ns = ctl::namespace("e2e-invalid");
    let cases = [
        (
            "image: Gitea.example/Owner/App",
            "image must be a lower-case repository",
        ),
        ("image: gitea.example/owner/app:latest", "no tag"),
        (
            "image: gitea.example/owner/app\n  timeout: soon",
            "timeout must be a positive duration",
        ),
        (
            "image: gitea.example/owner/app\n  registry: {credentialsSecret: gitea/gitea-credential}",
            "no namespace prefix",
        ),
    ];
    for (spec, expected) in cases {
        let manifest = format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: bad, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: x}}]}}\n  {spec}\n"
        );
        let out = env.kubectl_stdin(&["apply", "-f", "-"], &manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {spec}");
        assert!(stderr.contains(expected), "{spec}: {stderr}");
    }
    let both = format!(
        "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: bad, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: x}}], persistentVolumeClaim: {{claimName: src}}}}\n  image: gitea.example/owner/app\n"
    );
    let out = env.kubectl_stdin(&["apply", "-f", "-"], &both);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("exactly one of configMaps or persistentVolumeClaim")
    );
}

/// Applies an ImageBuild expected to fail; returns (reason, message) and checks the Warning event.
fn expect_failure(ns: &str, name: &str, manifests: &str) -> (String, String) {
    let env = common::env();
    env.kubectl_apply(manifests);
    let ib = ctl::wait_settled(ns, name, SETTLE);
    let (ready, reason, message) = ctl::ready(&ib).expect("Ready condition");
    assert_eq!(ready, "False", "{ib:#}");
    let events = ctl::events(ns, name);
    assert!(
        events
            .iter()
            .any(|(t, r, _, _)| t == "Warning" && *r == reason),
        "{events:?}"
    );
    for secret in [&env.gitea_password, &env.gitea_token] {
        assert!(!message.contains(secret.as_str()), "secret in message");
    }
    (reason, message)
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_missing_configmap_fails_with_a_reason_that_names_it() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-nocm");
    let image = env.gitea_image("nocm");
    let (reason, message) = expect_failure(
        &ns,
        "nocm",
        &format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: nocm, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: absent}}]}}\n  image: {image}\n"
        ),
    );
    assert_eq!(reason, "ConfigMapNotFound");
    assert!(message.contains(&format!("{ns}/absent")), "{message}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_missing_credentials_secret_fails_with_a_reason_that_names_it() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-nosecret");
    let image = env.gitea_image(&common::unique_name("nosecret"));
    let manifests = site_manifests(
        &ns,
        "nosecret",
        &image,
        "x",
        "  registry: {credentialsSecret: my-creds}",
    );
    let (reason, message) = expect_failure(&ns, "nosecret", &manifests);
    assert_eq!(reason, "SecretNotFound");
    assert!(
        message.contains(&format!("{ns}/my-creds"))
            && message.contains("spec.registry.credentialsSecret"),
        "{message}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_secret_of_another_namespace_is_never_used() {
    // Same name as the idpbuilder credentials Secret, but in the ImageBuild's namespace: absent.
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-otherns");
    let image = env.gitea_image(&common::unique_name("otherns"));
    let manifests = site_manifests(
        &ns,
        "otherns",
        &image,
        "x",
        "  registry: {credentialsSecret: gitea-credential}",
    );
    let (reason, message) = expect_failure(&ns, "otherns", &manifests);
    assert_eq!(reason, "SecretNotFound");
    assert!(
        message.contains(&format!("{ns}/gitea-credential")),
        "{message}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_unknown_owner_fails_with_owner_not_found() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-owner");
    let image = format!("{}/nosuchowner/app", env.gitea);
    let (reason, message) =
        expect_failure(&ns, "owner", &site_manifests(&ns, "owner", &image, "x", ""));
    assert_eq!(reason, "OwnerNotFound", "{message}");
    assert!(message.contains("nosuchowner"), "{message}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_wrong_password_fails_with_unauthorized_naming_the_secret() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-auth");
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "wrong",
        "-n",
        &ns,
        "--type=kubernetes.io/basic-auth",
        &format!("--from-literal=username={}", env.gitea_user),
        "--from-literal=password=not:the@password",
    ]);
    let image = env.gitea_image(&common::unique_name("auth"));
    let manifests = site_manifests(
        &ns,
        "auth",
        &image,
        "x",
        "  registry: {credentialsSecret: wrong}",
    );
    let (reason, message) = expect_failure(&ns, "auth", &manifests);
    assert_eq!(reason, "Unauthorized", "{message}");
    assert!(message.contains(&format!("Secret {ns}/wrong")), "{message}");
    assert!(!message.contains("not:the@password"));

    // Fixing the Secret is the change that builds it again: the controller reads the new
    // password rather than the copy it used last time.
    let fixed = env.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: wrong, namespace: {ns}}}\ntype: kubernetes.io/basic-auth\nstringData: {{username: {}, password: '{}'}}\n",
            env.gitea_user, env.gitea_password
        ),
    );
    assert!(fixed.status.success(), "could not update the Secret");
    let ib = ctl::wait_for(&ns, "auth", SETTLE, |ib| {
        ctl::ready(ib).is_some_and(|r| r.0 == "True")
    });
    assert_eq!(
        ib["status"]["digest"].as_str(),
        ctl::registry_digest(env, &image, "latest").as_deref(),
        "{ib:#}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn metrics_count_builds_and_readyz_answers() {
    drop(start());
    let controller = start();
    let metrics = controller.metrics();
    assert!(metrics.contains("imagebuild_reconciles_total"), "{metrics}");
    assert_eq!(
        ctl::http_get(&controller.listen, "/healthz").map(|r| r.0),
        Some(200)
    );
}

/// An example file with its registry host pointed at the test Gitea, in namespace `ns`.
fn example_in(path: &str, ns: &str) -> String {
    let env = common::env();
    let text = std::fs::read_to_string(common::repo_root().join(path)).expect("example");
    text.replace("gitea.cnoe.localtest.me:8443", &env.gitea)
        .replace(
            "metadata:\n  name:",
            &format!("metadata:\n  namespace: {ns}\n  name:"),
        )
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_hello_site_example_builds_in_the_cluster_to_the_digest_of_a_local_build() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-example");
    env.kubectl_apply(&example_in("examples/hello-site/imagebuild.yaml", &ns));
    let ib = ctl::wait_settled(&ns, "hello-site", SETTLE);
    assert_eq!(
        ctl::ready(&ib).map(|r| r.0).as_deref(),
        Some("True"),
        "{ib:#}"
    );

    let local = common::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
            .env_remove("SOURCE_DATE_EPOCH")
            .args([
                "build",
                "-f",
                "examples/hello-site/imagebuild.yaml",
                "--output",
            ])
            .arg(tempfile::tempdir().expect("tempdir").path().join("oci"))
            .current_dir(common::repo_root()),
    );
    assert_eq!(ib["status"]["digest"].as_str(), Some(local.trim()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_app_on_base_example_builds_on_its_base_image() {
    let env = common::env();
    drop(start());
    // The base the example names: a tiny image pushed with the CLI.
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(work.path().join("ctx/bin")).expect("dirs");
    std::fs::write(work.path().join("ctx/bin/base-tool"), "base").expect("file");
    let spec = work.path().join("base.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: base}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {}\n  tags: ['1']\n",
            env.gitea_image("base")
        ),
    )
    .expect("base spec");
    common::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
            .envs(&env.vars)
            .args(["build", "--push", "--from-cluster", "-f"])
            .arg(&spec)
            .arg("--context")
            .arg(work.path().join("ctx")),
    );

    let ns = ctl::namespace("e2e-onbase");
    env.kubectl_apply(&example_in("examples/app-on-base/imagebuild.yaml", &ns));
    let ib = ctl::wait_settled(&ns, "app-on-base", SETTLE);
    assert_eq!(
        ctl::ready(&ib).map(|r| r.0).as_deref(),
        Some("True"),
        "{ib:#}"
    );
    assert!(
        ib["status"]["baseDigest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let bundle = ctl::pull_and_unpack(env, ib["status"]["imageRef"].as_str().expect("imageRef"));
    let rootfs = bundle.path().join("bundle/rootfs");
    assert!(rootfs.join("bin/base-tool").exists(), "the base's files");
    assert!(
        rootfs.join("app/bin/run.sh").exists(),
        "the example's files"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_build_over_its_timeout_fails_with_reason_timeout_and_is_retried_later() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-timeout");
    let image = env.gitea_image(&common::unique_name("slow"));
    let manifests = site_manifests(&ns, "slow", &image, "x", "  timeout: 1ms");
    let (reason, message) = expect_failure(&ns, "slow", &manifests);
    assert_eq!(reason, "Timeout", "{message}");
    assert!(message.contains("spec.timeout"), "{message}");
    let ib = ctl::get_ib(&ns, "slow");
    assert!(
        ib["status"]["nextRetryTime"].is_string(),
        "a passing failure is retried: {ib:#}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_permanent_failure_is_not_retried_until_the_inputs_change() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-permanent");
    let image = format!("{}/nosuchowner/app", env.gitea);
    expect_failure(&ns, "perm", &site_manifests(&ns, "perm", &image, "x", ""));
    let failed = ctl::get_ib(&ns, "perm");
    assert!(failed["status"]["nextRetryTime"].is_null(), "{failed:#}");
    std::thread::sleep(Duration::from_secs(6));
    let later = ctl::get_ib(&ns, "perm");
    assert_eq!(
        later["status"]["attempts"], failed["status"]["attempts"],
        "retried without a change"
    );
    assert_eq!(
        later["status"]["completionTime"],
        failed["status"]["completionTime"]
    );

    // Fixing the spec builds again, and succeeds.
    let fixed = env.gitea_image(&common::unique_name("perm"));
    env.kubectl_apply(&site_manifests(&ns, "perm", &fixed, "x", ""));
    let ib = ctl::wait_for(&ns, "perm", SETTLE, |ib| {
        ib["status"]["phase"] == "Succeeded"
    });
    assert_eq!(
        ib["status"]["imageRef"]
            .as_str()
            .map(|r| r.starts_with(&fixed)),
        Some(true)
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn creating_a_missing_configmap_triggers_the_build() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-latecm");
    let image = env.gitea_image(&common::unique_name("late"));
    let manifests = site_manifests(&ns, "late", &image, "late", "");
    let (config_map, image_build) = manifests.split_once("---").expect("two documents");
    let (reason, _) = expect_failure(&ns, "late", image_build);
    assert_eq!(reason, "ConfigMapNotFound");
    env.kubectl_apply(config_map);
    let ib = ctl::wait_for(&ns, "late", SETTLE, |ib| {
        ib["status"]["phase"] == "Succeeded"
    });
    assert_eq!(ctl::ready(&ib).map(|r| r.0).as_deref(), Some("True"));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_two_platform_build_reports_the_index_and_its_children_as_the_cli_builds_them() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-platforms");
    let image = env.gitea_image(&common::unique_name("multi"));
    let manifests = site_manifests(
        &ns,
        "multi",
        &image,
        "<h1>everywhere</h1>",
        "  platforms: [linux/amd64, linux/arm64]",
    );
    env.kubectl_apply(&manifests);
    let ib = ctl::wait_settled(&ns, "multi", SETTLE);
    let (ready, reason, message) = ctl::ready(&ib).expect("Ready condition");
    assert_eq!(ready, "True", "{reason}: {message}");
    let digest = ib["status"]["digest"].as_str().expect("status.digest");
    assert_eq!(
        ctl::registry_digest(env, &image, "latest").as_deref(),
        Some(digest)
    );

    // status.platforms lists the index's children, in its order.
    let raw = env
        .raw_manifest(
            &env.gitea_ca,
            &env.gitea_creds(),
            &format!("{image}@{digest}"),
        )
        .expect("index");
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("index json");
    let children = common::index_children(&index);
    let reported = common::status_platforms(&ib);
    assert_eq!(reported, children);
    assert_eq!(children[0].0, "linux/amd64");
    assert_eq!(children[1].0, "linux/arm64");

    // kubectl get still shows one short digest: the index's.
    let row = env.kubectl(&["get", "ib", "multi", "-n", &ns, "--no-headers"]);
    assert!(row.contains(&digest[7..19]), "{row}");

    // The command line builds the same inputs into the same index.
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("multi.yaml");
    std::fs::write(&file, &manifests).expect("file");
    let local = common::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["build", "-f"])
            .arg(&file)
            .arg("--output")
            .arg(work.path().join("oci")),
    );
    assert_eq!(local.trim(), digest);
}

/// An opted-in workload of `kind` with containers `[(name, image)]` and init containers, naming
/// its ImageBuilds in `images`.
fn workload_manifest(
    ns: &str,
    kind: &str,
    name: &str,
    images: &str,
    containers: &[(&str, &str)],
    init: &[(&str, &str)],
) -> String {
    let list = |items: &[(&str, &str)]| {
        items
            .iter()
            .map(|(c, i)| format!("{{name: {c}, image: \"{i}\"}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let service = if kind == "StatefulSet" {
        format!("serviceName: {name}")
    } else {
        String::new()
    };
    format!(
        r#"
apiVersion: apps/v1
kind: {kind}
metadata:
  name: {name}
  namespace: {ns}
  labels: {{imagebuild.dev/rollout: "true"}}
  annotations: {{imagebuild.dev/images: "{images}"}}
spec:
  {service}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{containers}]
      initContainers: [{init}]
"#,
        containers = list(containers),
        init = list(init),
    )
}

fn get_workload(ns: &str, kind: &str, name: &str) -> serde_json::Value {
    let text = common::env().kubectl(&[
        "get",
        kind,
        name,
        "-n",
        ns,
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    serde_json::from_str(&text).expect("workload json")
}

/// The image of container `container` (or init container) of a workload.
fn container_image(workload: &serde_json::Value, container: &str) -> Option<String> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| workload["spec"]["template"]["spec"][list].as_array())
        .flatten()
        .find(|c| c["name"] == container)
        .and_then(|c| c["image"].as_str())
        .map(str::to_owned)
}

/// Waits until the container of the workload runs `image`.
fn wait_image(ns: &str, kind: &str, name: &str, container: &str, image: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let workload = get_workload(ns, kind, name);
        if container_image(&workload, container).as_deref() == Some(image) {
            return workload;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind} {ns}/{name}: container {container} never ran {image}: {workload:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn image_ref(ib: &serde_json::Value) -> String {
    ib["status"]["imageRef"]
        .as_str()
        .expect("status.imageRef")
        .to_owned()
}

/// Waits until an event of `reason` about `name` exists; returns its note.
fn wait_event(ns: &str, name: &str, type_: &str, reason: &str) -> String {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let events = ctl::events(ns, name);
        if let Some((_, _, note, _)) = events.iter().find(|(t, r, _, _)| t == type_ && r == reason)
        {
            return note.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {type_} {reason} event about {name}: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rollout_sets_a_labelled_deployment_to_each_new_digest_by_server_side_apply() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-rollout");
    let image = env.gitea_image(&common::unique_name("roll"));
    env.kubectl_apply(&site_manifests(&ns, "roll", &image, "one", ""));
    env.kubectl_apply(&workload_manifest(
        &ns,
        "Deployment",
        "web",
        "site=roll",
        &[("site", "busybox:1"), ("sidecar", "sidecar:2")],
        &[],
    ));
    let first = ctl::wait_settled(&ns, "roll", SETTLE);
    let first_ref = image_ref(&first);
    let web = wait_image(&ns, "deployment", "web", "site", &first_ref);
    assert_eq!(
        container_image(&web, "sidecar").as_deref(),
        Some("sidecar:2"),
        "the other container is left alone"
    );
    // The image field, and nothing else, belongs to the rollout's field manager.
    let managed = web["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    let ours: Vec<&serde_json::Value> = managed
        .iter()
        .filter(|m| m["manager"] == "imagebuild-rollout")
        .collect();
    assert_eq!(ours.len(), 1, "{managed:#?}");
    assert_eq!(ours[0]["operation"], "Apply");
    let containers = &ours[0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
    assert_eq!(
        containers,
        &serde_json::json!({r#"k:{"name":"site"}"#: {".": {}, "f:image": {}, "f:name": {}}}),
        "{managed:#?}"
    );
    let ib = ctl::wait_for(&ns, "roll", SETTLE, |ib| {
        ib["status"]["rollouts"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    assert_eq!(
        ib["status"]["rollouts"],
        serde_json::json!([{"kind": "Deployment", "name": "web", "container": "site",
                            "digest": first["status"]["digest"]}])
    );
    let note = wait_event(&ns, "roll", "Normal", "RolledOut");
    assert!(
        note.contains("Deployment web") && note.contains(&first_ref),
        "{note}"
    );

    // A new build of edited files is rolled out too.
    env.kubectl_apply(&site_manifests(&ns, "roll", &image, "two", ""));
    let edited = ctl::wait_for(&ns, "roll", SETTLE, |ib| {
        ib["status"]["phase"] == "Succeeded"
            && ib["status"]["imageRef"].as_str() != Some(&first_ref)
    });
    let second_ref = image_ref(&edited);
    wait_image(&ns, "deployment", "web", "site", &second_ref);
    ctl::wait_for(&ns, "roll", SETTLE, |ib| {
        ib["status"]["rollouts"][0]["digest"] == edited["status"]["digest"]
    });
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rollout_reaches_statefulsets_init_containers_and_workloads_created_after_the_build() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-rollout-kinds");
    let image = env.gitea_image(&common::unique_name("kinds"));
    env.kubectl_apply(&site_manifests(&ns, "kinds", &image, "files", ""));
    let ib = ctl::wait_settled(&ns, "kinds", SETTLE);
    let reference = image_ref(&ib);

    // Both created after the build is Ready.
    env.kubectl_apply(&workload_manifest(
        &ns,
        "StatefulSet",
        "db",
        "data = kinds",
        &[("main", "busybox:1")],
        &[("data", "busybox:1")],
    ));
    env.kubectl_apply(&workload_manifest(
        &ns,
        "DaemonSet",
        "agent",
        "agent=kinds",
        &[("agent", "busybox:1")],
        &[],
    ));
    let db = wait_image(&ns, "statefulset", "db", "data", &reference);
    assert_eq!(container_image(&db, "main").as_deref(), Some("busybox:1"));
    wait_image(&ns, "daemonset", "agent", "agent", &reference);
    let digest = ib["status"]["digest"].clone();
    let ib = ctl::wait_for(&ns, "kinds", SETTLE, |ib| {
        ib["status"]["rollouts"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    });
    assert_eq!(
        ib["status"]["rollouts"],
        serde_json::json!([
            {"kind": "DaemonSet", "name": "agent", "container": "agent", "digest": digest},
            {"kind": "StatefulSet", "name": "db", "container": "data", "digest": digest},
        ])
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rollout_with_a_wrong_container_name_warns_on_both_objects_and_writes_nothing() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-rollout-typo");
    let image = env.gitea_image(&common::unique_name("typo"));
    env.kubectl_apply(&site_manifests(&ns, "typo", &image, "x", ""));
    let ib = ctl::wait_settled(&ns, "typo", SETTLE);
    assert_eq!(ctl::ready(&ib).map(|r| r.0).as_deref(), Some("True"));
    env.kubectl_apply(&workload_manifest(
        &ns,
        "Deployment",
        "web",
        // One right entry, one wrong: neither is written.
        "site=typo,stie=typo",
        &[("site", "busybox:1")],
        &[],
    ));
    let before = get_workload(&ns, "deployment", "web");
    let note = wait_event(&ns, "web", "Warning", "RolloutFailed");
    assert!(note.contains("\"stie\""), "{note}");
    let about_ib = wait_event(&ns, "typo", "Warning", "RolloutFailed");
    assert!(
        about_ib.contains("Deployment") && about_ib.contains("web"),
        "{about_ib}"
    );
    // Give a late write its chance to show.
    std::thread::sleep(Duration::from_secs(3));
    let after = get_workload(&ns, "deployment", "web");
    assert_eq!(
        container_image(&after, "site").as_deref(),
        Some("busybox:1")
    );
    assert_eq!(
        after["metadata"]["generation"],
        before["metadata"]["generation"]
    );
    let managers: Vec<&serde_json::Value> = after["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| &m["manager"])
        .collect();
    assert!(
        !managers.contains(&&serde_json::json!("imagebuild-rollout")),
        "{managers:?}"
    );
    assert_eq!(
        ctl::get_ib(&ns, "typo")["status"]["rollouts"],
        serde_json::Value::Null
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rollout_to_an_image_build_that_does_not_exist_warns_on_the_workload() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-rollout-missing");
    env.kubectl_apply(&workload_manifest(
        &ns,
        "Deployment",
        "web",
        "site=nowhere",
        &[("site", "busybox:1")],
        &[],
    ));
    let before = get_workload(&ns, "deployment", "web");
    let note = wait_event(&ns, "web", "Warning", "RolloutFailed");
    assert!(note.contains("\"nowhere\""), "{note}");
    let after = get_workload(&ns, "deployment", "web");
    assert_eq!(
        after["metadata"]["generation"],
        before["metadata"]["generation"]
    );
    assert_eq!(
        container_image(&after, "site").as_deref(),
        Some("busybox:1")
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rollout_follows_an_annotation_that_moves_a_container_to_another_image_build() {
    let env = common::env();
    drop(start());
    let ns = ctl::namespace("e2e-rollout-move");
    for (name, body) in [("one", "first"), ("two", "second")] {
        let image = env.gitea_image(&common::unique_name(name));
        env.kubectl_apply(&site_manifests(&ns, name, &image, body, ""));
    }
    let one = image_ref(&ctl::wait_settled(&ns, "one", SETTLE));
    let two = image_ref(&ctl::wait_settled(&ns, "two", SETTLE));
    let web = |images: &str| {
        workload_manifest(
            &ns,
            "Deployment",
            "web",
            images,
            &[("site", "busybox:1")],
            &[],
        )
    };
    env.kubectl_apply(&web("site=one"));
    wait_image(&ns, "deployment", "web", "site", &one);
    ctl::wait_for(&ns, "one", SETTLE, |ib| {
        ib["status"]["rollouts"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    });

    // kubectl's apply leaves the image to the rollout's manager (it did not change it).
    env.kubectl_apply(&web("site=two"));
    wait_image(&ns, "deployment", "web", "site", &two);
    ctl::wait_for(&ns, "two", SETTLE, |ib| {
        ib["status"]["rollouts"][0]["name"] == "web"
    });
    ctl::wait_for(&ns, "one", SETTLE, |ib| ib["status"]["rollouts"].is_null());
}
