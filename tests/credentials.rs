//! Credentials reach only the registry they belong to. Every build here pushes to the real
//! Gitea and takes its base image from a stand-in registry on another host
//! (`tests/recording_registry`) that records the `Authorization` header of every request; each
//! test asserts exactly which of those requests carried credentials, and whose.

mod common;
mod controller_support;
mod recording_registry;

use std::time::Duration;

use common::TestEnv;
use controller_support as ctl;
use recording_registry::{Mode, RecordingRegistry, Seen, basic};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(120);
const MIRROR_USER: &str = "mirror-user";
const MIRROR_PASSWORD: &str = "mirror:p@ss";

fn start_controller() {
    drop(
        ctl::shared_controller()
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
}

/// A namespace holding Secret `ca` that trusts both Gitea and the stand-in.
fn namespace_trusting(env: &TestEnv, stand_in: &RecordingRegistry, prefix: &str) -> ctl::Namespace {
    let ns = ctl::namespace(prefix);
    let dir = tempfile::tempdir().expect("tempdir");
    let gitea_ca = std::fs::read(&env.gitea_ca).expect("gitea ca");
    let bundle = stand_in.write_ca_bundle(&gitea_ca, dir.path());
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "ca",
        "-n",
        &ns,
        &format!("--from-file=ca.crt={}", bundle.display()),
    ]);
    ns
}

fn create_basic_auth_secret(env: &TestEnv, ns: &str, name: &str) {
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        name,
        "-n",
        ns,
        "--type=kubernetes.io/basic-auth",
        &format!("--from-literal=username={}", env.gitea_user),
        &format!("--from-literal=password={}", env.gitea_password),
    ]);
}

/// A dockerconfigjson Secret with an entry for each of `hosts` (Gitea's credentials for Gitea,
/// the stand-in's own for any other host).
fn create_docker_config_secret(env: &TestEnv, ns: &str, name: &str, hosts: &[&str]) {
    let auths: serde_json::Map<String, Value> = hosts
        .iter()
        .map(|host| {
            let (user, password) = if *host == env.gitea {
                (env.gitea_user.as_str(), env.gitea_password.as_str())
            } else {
                (MIRROR_USER, MIRROR_PASSWORD)
            };
            (
                format!("https://{host}"),
                serde_json::json!({"username": user, "password": password}),
            )
        })
        .collect();
    let json = serde_json::json!({ "auths": auths }).to_string();
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        name,
        "-n",
        ns,
        "--type=kubernetes.io/dockerconfigjson",
        &format!("--from-literal=.dockerconfigjson={json}"),
    ]);
}

/// Applies a ConfigMap and an ImageBuild pushing to `image` from `base`, with `registry` as
/// its `spec.registry`; returns the settled ImageBuild.
fn build_in_cluster(ns: &str, image: &str, base: &str, registry: &str) -> Value {
    common::env().kubectl_apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: src, namespace: {ns}}}\ndata: {{app.txt: hello}}\n---\n\
         apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: app, namespace: {ns}}}\n\
         spec:\n  context: {{configMaps: [{{name: src}}]}}\n  image: {image}\n  from: {base}\n  registry: {registry}\n"
    ));
    ctl::wait_settled(ns, "app", SETTLE)
}

fn assert_ready_on_the_stand_ins_base(ib: &Value, stand_in: &RecordingRegistry) {
    let (ready, reason, message) = ctl::ready(ib).expect("Ready condition");
    assert_eq!(ready, "True", "{reason}: {message}");
    assert_eq!(
        ib["status"]["baseDigest"].as_str(),
        Some(stand_in.base_digest.as_str()),
        "the base came from the stand-in"
    );
}

/// Fails unless the stand-in was asked for the base at all, and no request carried anything
/// in `Authorization`.
fn assert_all_anonymous(seen: &[Seen]) {
    assert!(
        seen.iter().any(|s| s.path.contains("/manifests/")),
        "the stand-in was never asked for the base: {seen:#?}"
    );
    let with_auth: Vec<&Seen> = seen.iter().filter(|s| s.authorization.is_some()).collect();
    assert!(
        with_auth.is_empty(),
        "credentials went to the base's host: {with_auth:#?}"
    );
}

/// Fails when any request carried Gitea's password.
fn assert_no_gitea_password(env: &TestEnv, seen: &[Seen]) {
    let gitea = basic(&env.gitea_user, &env.gitea_password);
    let leaked: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.authorization.as_deref() == Some(gitea.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "Gitea's password reached the stand-in: {leaked:#?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_basic_auth_secret_is_not_sent_to_a_base_image_on_another_host() {
    let env = common::env();
    start_controller();
    let stand_in = RecordingRegistry::start(Mode::Anonymous);
    let ns = namespace_trusting(env, &stand_in, "cred-basic");
    create_basic_auth_secret(env, &ns, "creds");
    let image = env.gitea_image(&common::unique_name("cred-basic"));
    let ib = build_in_cluster(
        &ns,
        &image,
        &stand_in.base_ref(),
        "{credentialsSecret: creds, caSecret: {name: ca, key: ca.crt}}",
    );
    assert_ready_on_the_stand_ins_base(&ib, &stand_in);
    assert_all_anonymous(&stand_in.seen());
    // Gitea got them: the image is there.
    assert_eq!(
        ctl::registry_digest(env, &image, "latest").as_deref(),
        ib["status"]["digest"].as_str()
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_dockerconfigjson_sends_each_host_its_own_entry() {
    let env = common::env();
    start_controller();
    let stand_in = RecordingRegistry::start(Mode::Anonymous);
    let ns = namespace_trusting(env, &stand_in, "cred-docker");
    create_docker_config_secret(env, &ns, "creds", &[&env.gitea, &stand_in.host]);
    let image = env.gitea_image(&common::unique_name("cred-docker"));
    let ib = build_in_cluster(
        &ns,
        &image,
        &stand_in.base_ref(),
        "{credentialsSecret: creds, caSecret: {name: ca, key: ca.crt}}",
    );
    assert_ready_on_the_stand_ins_base(&ib, &stand_in);
    let seen = stand_in.seen();
    let own = basic(MIRROR_USER, MIRROR_PASSWORD);
    assert!(
        seen.iter().any(|s| s.path.contains("/manifests/")),
        "no manifest request: {seen:#?}"
    );
    let other: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.authorization.as_deref() != Some(own.as_str()))
        .collect();
    assert!(
        other.is_empty(),
        "every request to the stand-in carries its own entry, and only that: {other:#?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_dockerconfigjson_without_an_entry_for_the_base_host_pulls_it_anonymously() {
    let env = common::env();
    start_controller();
    let stand_in = RecordingRegistry::start(Mode::Anonymous);
    let ns = namespace_trusting(env, &stand_in, "cred-noentry");
    create_docker_config_secret(env, &ns, "creds", &[&env.gitea]);
    let image = env.gitea_image(&common::unique_name("cred-noentry"));
    let ib = build_in_cluster(
        &ns,
        &image,
        &stand_in.base_ref(),
        "{credentialsSecret: creds, caSecret: {name: ca, key: ca.crt}}",
    );
    assert_ready_on_the_stand_ins_base(&ib, &stand_in);
    assert_all_anonymous(&stand_in.seen());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_dockerconfigjson_without_an_entry_for_the_target_fails_naming_the_hosts_it_holds() {
    let env = common::env();
    start_controller();
    let stand_in = RecordingRegistry::start(Mode::Anonymous);
    let ns = namespace_trusting(env, &stand_in, "cred-notarget");
    create_docker_config_secret(env, &ns, "creds", &[&stand_in.host]);
    let image = env.gitea_image(&common::unique_name("cred-notarget"));
    let ib = build_in_cluster(
        &ns,
        &image,
        &stand_in.base_ref(),
        "{credentialsSecret: creds, caSecret: {name: ca, key: ca.crt}}",
    );
    let (ready, reason, message) = ctl::ready(&ib).expect("Ready condition");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "SecretInvalid"),
        "{message}"
    );
    for needle in [
        format!("Secret {ns}/creds"),
        env.gitea.clone(),
        stand_in.host.clone(),
    ] {
        assert!(
            message.contains(&needle),
            "`{needle}` missing from: {message}"
        );
    }
    assert!(!message.contains(MIRROR_PASSWORD), "{message}");
    assert_eq!(
        ctl::registry_digest(env, &image, "latest"),
        None,
        "nothing was pushed"
    );
    assert_eq!(stand_in.seen(), Vec::new(), "nothing was fetched either");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn profile_credentials_stay_with_the_profiles_host() {
    let env = common::env();
    start_controller();
    let stand_in = RecordingRegistry::start(Mode::Anonymous);
    let ns = namespace_trusting(env, &stand_in, "cred-profile");
    let image = env.gitea_image(&common::unique_name("cred-profile"));
    // No Secret of its own: the chart's profile for Gitea gives the push its credentials.
    let ib = build_in_cluster(
        &ns,
        &image,
        &stand_in.base_ref(),
        "{caSecret: {name: ca, key: ca.crt}}",
    );
    assert_ready_on_the_stand_ins_base(&ib, &stand_in);
    assert_all_anonymous(&stand_in.seen());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_token_realm_on_a_foreign_host_is_asked_without_credentials() {
    let env = common::env();
    start_controller();
    let stand_in = RecordingRegistry::start(Mode::ForeignRealm);
    let ns = namespace_trusting(env, &stand_in, "cred-realm");
    create_docker_config_secret(env, &ns, "creds", &[&env.gitea, &stand_in.host]);
    let image = env.gitea_image(&common::unique_name("cred-realm"));
    let ib = build_in_cluster(
        &ns,
        &image,
        &stand_in.base_ref(),
        "{credentialsSecret: creds, caSecret: {name: ca, key: ca.crt}}",
    );
    assert_ready_on_the_stand_ins_base(&ib, &stand_in);
    let seen = stand_in.seen();
    let realm: Vec<&Seen> = seen.iter().filter(|s| s.server == "realm").collect();
    assert!(
        !realm.is_empty(),
        "the token came from the realm: {seen:#?}"
    );
    assert!(
        realm.iter().all(|s| s.authorization.is_none()),
        "the foreign realm was sent credentials: {realm:#?}"
    );
    let own = basic(MIRROR_USER, MIRROR_PASSWORD);
    let bad: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.server == "registry")
        .filter(|s| {
            let auth = s.authorization.as_deref().unwrap_or_default();
            !(auth.is_empty() || auth == own || auth.starts_with("Bearer "))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "the registry saw foreign credentials: {bad:#?}"
    );
    assert_no_gitea_password(env, &seen);
}

/// An ImageBuild file for the CLI: `--context` supplies the files.
fn cli_build_file(dir: &std::path::Path, image: &str, base: &str) -> std::path::PathBuf {
    let file = dir.join("imagebuild.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: app}}\n\
             spec:\n  context: {{configMaps: [{{name: unused}}]}}\n  image: {image}\n  from: {base}\n"
        ),
    )
    .expect("write file");
    std::fs::create_dir_all(dir.join("ctx")).expect("ctx");
    std::fs::write(dir.join("ctx/app.txt"), "hello").expect("app.txt");
    file
}

/// Runs `imagebuild build --push` of [`cli_build_file`] with `flags`, `stdin` as its input.
fn cli_push(
    env: &TestEnv,
    stand_in: &RecordingRegistry,
    name: &str,
    flags: &[&str],
    stdin: &str,
) -> String {
    let work = tempfile::tempdir().expect("tempdir");
    let image = env.gitea_image(&common::unique_name(name));
    let file = cli_build_file(work.path(), &image, &stand_in.base_ref());
    let gitea_ca = std::fs::read(&env.gitea_ca).expect("gitea ca");
    let bundle = stand_in.write_ca_bundle(&gitea_ca, work.path());
    let bundle = bundle.to_string_lossy().into_owned();
    let file = file.to_string_lossy().into_owned();
    let ctx = work.path().join("ctx").to_string_lossy().into_owned();
    let mut args = vec![
        "build",
        "-f",
        &file,
        "--context",
        &ctx,
        "--push",
        "--no-cache",
        "--ca-file",
        &bundle,
    ];
    args.extend_from_slice(flags);
    let out = common::output_with_stdin(
        std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
            .envs(&env.vars)
            .args(&args),
        stdin.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "imagebuild {args:?} failed: {stderr}");
    assert!(
        !stderr.contains(&env.gitea_password),
        "a password in: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn cli_username_is_sent_to_the_target_only() {
    let env = common::env();
    let stand_in = RecordingRegistry::start(Mode::Anonymous);
    let pushed = cli_push(
        env,
        &stand_in,
        "cred-cli",
        &["--username", &env.gitea_user, "--password-stdin"],
        &env.gitea_password,
    );
    assert!(pushed.starts_with(&env.gitea), "{pushed}");
    assert_all_anonymous(&stand_in.seen());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn cli_from_cluster_credentials_are_sent_to_the_target_only() {
    let env = common::env();
    let stand_in = RecordingRegistry::start(Mode::Anonymous);
    let pushed = cli_push(env, &stand_in, "cred-cli-cluster", &["--from-cluster"], "");
    assert!(pushed.starts_with(&env.gitea), "{pushed}");
    assert_all_anonymous(&stand_in.seen());
}
