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

/// The Secret `creds` a case gives its ImageBuild.
#[derive(Clone, Copy)]
enum Given {
    /// None: the chart's profile for Gitea gives the push its credentials.
    Nothing,
    /// `kubernetes.io/basic-auth` with Gitea's user and password.
    BasicAuth,
    /// `kubernetes.io/dockerconfigjson` with entries for these hosts (Gitea's credentials for
    /// Gitea, the stand-in's own for the stand-in).
    DockerConfig { gitea: bool, stand_in: bool },
}

/// One controller build: an ImageBuild pushing to Gitea from the stand-in's base, in a
/// namespace holding Secret `ca` (trusting both) and the `creds` the case gives.
struct Case {
    stand_in: RecordingRegistry,
    ns: ctl::Namespace,
    image: String,
    /// The ImageBuild once settled.
    ib: Value,
}

impl Case {
    fn run(prefix: &str, mode: Mode, given: Given) -> Self {
        let env = common::env();
        drop(
            ctl::shared_controller()
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let stand_in = RecordingRegistry::start(mode);
        let ns = ctl::namespace(prefix);
        let dir = tempfile::tempdir().expect("tempdir");
        let gitea_ca = std::fs::read(&env.gitea_ca).expect("gitea ca");
        let bundle = stand_in.write_ca_bundle(&gitea_ca, dir.path());
        create_secret(
            &ns,
            "ca",
            None,
            &[("ca.crt", &format!("@{}", bundle.display()))],
        );
        let credentials = match given {
            Given::Nothing => "",
            Given::BasicAuth => {
                create_secret(
                    &ns,
                    "creds",
                    Some("kubernetes.io/basic-auth"),
                    &[
                        ("username", &env.gitea_user),
                        ("password", &env.gitea_password),
                    ],
                );
                "credentialsSecret: creds, "
            }
            Given::DockerConfig {
                gitea,
                stand_in: own,
            } => {
                let mut auths = serde_json::Map::new();
                if gitea {
                    let entry = serde_json::json!({"username": env.gitea_user, "password": env.gitea_password});
                    auths.insert(format!("https://{}", env.gitea), entry);
                }
                if own {
                    let entry =
                        serde_json::json!({"username": MIRROR_USER, "password": MIRROR_PASSWORD});
                    auths.insert(format!("https://{}", stand_in.host), entry);
                }
                let json = serde_json::json!({ "auths": auths }).to_string();
                create_secret(
                    &ns,
                    "creds",
                    Some("kubernetes.io/dockerconfigjson"),
                    &[(".dockerconfigjson", &json)],
                );
                "credentialsSecret: creds, "
            }
        };
        let image = env.gitea_image(&common::unique_name(prefix));
        env.kubectl_apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: src, namespace: {ns}}}\ndata: {{app.txt: hello}}\n---\n\
             apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: app, namespace: {ns}}}\n\
             spec:\n  context: {{configMaps: [{{name: src}}]}}\n  image: {image}\n  from: {base}\n\
             \x20 registry: {{{credentials}caSecret: {{name: ca, key: ca.crt}}}}\n",
            ns = &*ns,
            base = stand_in.base_ref(),
        ));
        let ib = ctl::wait_settled(&ns, "app", SETTLE);
        Self {
            stand_in,
            ns,
            image,
            ib,
        }
    }

    /// Fails unless the build is Ready on the stand-in's base and Gitea serves its digest.
    fn assert_ready_on_the_stand_ins_base(&self) {
        let (ready, reason, message) = ctl::ready(&self.ib).expect("Ready condition");
        assert_eq!(ready, "True", "{reason}: {message}");
        assert_eq!(
            self.ib["status"]["baseDigest"].as_str(),
            Some(self.stand_in.base_digest.as_str()),
            "the base came from the stand-in"
        );
        assert_eq!(
            ctl::registry_digest(common::env(), &self.image, "latest").as_deref(),
            self.ib["status"]["digest"].as_str(),
            "Gitea serves the pushed image"
        );
    }
}

/// `kubectl create secret generic NAME [--type TYPE] --from-literal/--from-file ...`; a value
/// starting with `@` is a file.
fn create_secret(ns: &str, name: &str, kind: Option<&str>, data: &[(&str, &str)]) {
    let mut args = vec![
        "create".to_owned(),
        "secret".into(),
        "generic".into(),
        name.into(),
    ];
    args.extend(["-n".to_owned(), ns.to_owned()]);
    if let Some(kind) = kind {
        args.push(format!("--type={kind}"));
    }
    for (key, value) in data {
        args.push(match value.strip_prefix('@') {
            Some(path) => format!("--from-file={key}={path}"),
            None => format!("--from-literal={key}={value}"),
        });
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::env().kubectl(&args);
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

/// Fails unless every request to the stand-in's registry carried `allowed` (its own entry, or
/// a token when `tokens`) and nothing else.
fn assert_only_its_own_credentials(seen: &[Seen], tokens: bool) {
    let own = basic(MIRROR_USER, MIRROR_PASSWORD);
    assert!(
        seen.iter().any(|s| s.path.contains("/manifests/")),
        "no manifest request: {seen:#?}"
    );
    let other: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.server == "registry")
        .filter(|s| {
            let auth = s.authorization.as_deref().unwrap_or_default();
            let token = tokens && (auth.is_empty() || auth.starts_with("Bearer "));
            auth != own && !token
        })
        .collect();
    assert!(
        other.is_empty(),
        "the stand-in received other credentials than its own: {other:#?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_basic_auth_secret_is_not_sent_to_a_base_image_on_another_host() {
    let case = Case::run("cred-basic", Mode::Anonymous, Given::BasicAuth);
    case.assert_ready_on_the_stand_ins_base();
    assert_all_anonymous(&case.stand_in.seen());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_dockerconfigjson_sends_each_host_its_own_entry() {
    let both = Given::DockerConfig {
        gitea: true,
        stand_in: true,
    };
    let case = Case::run("cred-docker", Mode::Anonymous, both);
    case.assert_ready_on_the_stand_ins_base();
    assert_only_its_own_credentials(&case.stand_in.seen(), false);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_dockerconfigjson_without_an_entry_for_the_base_host_pulls_it_anonymously() {
    let gitea_only = Given::DockerConfig {
        gitea: true,
        stand_in: false,
    };
    let case = Case::run("cred-noentry", Mode::Anonymous, gitea_only);
    case.assert_ready_on_the_stand_ins_base();
    assert_all_anonymous(&case.stand_in.seen());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_dockerconfigjson_without_an_entry_for_the_target_fails_naming_the_hosts_it_holds() {
    let env = common::env();
    let base_only = Given::DockerConfig {
        gitea: false,
        stand_in: true,
    };
    let case = Case::run("cred-notarget", Mode::Anonymous, base_only);
    let (ready, reason, message) = ctl::ready(&case.ib).expect("Ready condition");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "SecretInvalid"),
        "{message}"
    );
    let secret = format!("Secret {}/creds", &*case.ns);
    for needle in [&secret, &env.gitea, &case.stand_in.host] {
        assert!(
            message.contains(needle.as_str()),
            "`{needle}` missing from: {message}"
        );
    }
    assert!(!message.contains(MIRROR_PASSWORD), "{message}");
    assert_eq!(
        ctl::registry_digest(env, &case.image, "latest"),
        None,
        "nothing was pushed"
    );
    assert_eq!(
        case.stand_in.seen(),
        Vec::new(),
        "nothing was fetched either"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn profile_credentials_stay_with_the_profiles_host() {
    let case = Case::run("cred-profile", Mode::Anonymous, Given::Nothing);
    case.assert_ready_on_the_stand_ins_base();
    assert_all_anonymous(&case.stand_in.seen());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_token_realm_on_a_foreign_host_is_asked_without_credentials() {
    let both = Given::DockerConfig {
        gitea: true,
        stand_in: true,
    };
    let case = Case::run("cred-realm", Mode::ForeignRealm, both);
    case.assert_ready_on_the_stand_ins_base();
    let seen = case.stand_in.seen();
    let realm: Vec<&Seen> = seen.iter().filter(|s| s.server == "realm").collect();
    assert!(
        !realm.is_empty(),
        "the token came from the realm: {seen:#?}"
    );
    assert!(
        realm.iter().all(|s| s.authorization.is_none()),
        "the foreign realm was sent credentials: {realm:#?}"
    );
    assert_only_its_own_credentials(&seen, true);
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
