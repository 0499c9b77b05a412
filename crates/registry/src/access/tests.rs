use super::*;

const GITEA: &str = "gitea.cnoe.localtest.me:8443";
const MIRROR: &str = "mirror.example:5000";
const HUB: &str = "docker.io";

/// What a build was given, in the table's words.
#[derive(Clone, Copy, Debug)]
enum Given {
    Nothing,
    /// A basic-auth Secret or `--username`.
    Basic,
    /// A dockerconfigjson with entries for these hosts (keyed as `docker login` writes them).
    Docker(&'static [&'static str]),
}

fn credentials(label: &str) -> Credentials {
    Credentials::new(format!("user-{label}"), format!("pw-{label}"), label)
}

fn docker_config(hosts: &[&str]) -> DockerConfig {
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|host| {
            let key = if *host == HUB {
                "https://index.docker.io/v1/".to_owned()
            } else {
                format!("https://{host}")
            };
            let user = format!("user-docker-{host}");
            let password = format!("pw-docker-{host}");
            (
                key,
                serde_json::json!({"username": user, "password": password}),
            )
        })
        .collect();
    let json = serde_json::json!({ "auths": auths }).to_string();
    DockerConfig::parse(&json, "Secret ns/docker").expect("config")
}

/// Who receives what, named by the password sent: `-` for nothing, `error` when the build
/// cannot start.
fn sent(policy: &CredentialPolicy, host: &str, profiles: &[&str]) -> String {
    let profile = profiles
        .contains(&host)
        .then(|| credentials(&format!("profile-{host}")));
    match policy.credentials_for(host, profile.as_ref()) {
        Ok(Some(c)) => c.password,
        Ok(None) => "-".to_owned(),
        Err(_) => "error".to_owned(),
    }
}

#[test]
fn each_host_receives_only_its_own_credentials() {
    // target, base, given, hosts with a profile => sent to the target, sent to the base
    type Row = (
        &'static str,
        &'static str,
        Given,
        &'static [&'static str],
        &'static str,
        &'static str,
    );
    let table: &[Row] = &[
        // A basic-auth Secret is for the target alone.
        (GITEA, MIRROR, Given::Basic, &[], "pw-basic", "-"),
        (GITEA, HUB, Given::Basic, &[], "pw-basic", "-"),
        (GITEA, GITEA, Given::Basic, &[], "pw-basic", "pw-basic"),
        (GITEA, MIRROR, Given::Basic, &[GITEA], "pw-basic", "-"),
        // The base's own profile still serves the base.
        (
            GITEA,
            MIRROR,
            Given::Basic,
            &[MIRROR],
            "pw-basic",
            "pw-profile-mirror.example:5000",
        ),
        // A dockerconfigjson is read per host.
        (
            GITEA,
            MIRROR,
            Given::Docker(&[GITEA, MIRROR]),
            &[],
            "pw-docker-gitea.cnoe.localtest.me:8443",
            "pw-docker-mirror.example:5000",
        ),
        (
            GITEA,
            MIRROR,
            Given::Docker(&[GITEA]),
            &[],
            "pw-docker-gitea.cnoe.localtest.me:8443",
            "-",
        ),
        (
            GITEA,
            HUB,
            Given::Docker(&[GITEA, HUB]),
            &[],
            "pw-docker-gitea.cnoe.localtest.me:8443",
            "pw-docker-docker.io",
        ),
        (
            GITEA,
            MIRROR,
            Given::Docker(&[GITEA]),
            &[MIRROR],
            "pw-docker-gitea.cnoe.localtest.me:8443",
            "pw-profile-mirror.example:5000",
        ),
        // No entry for the target: the build stops before anything is sent.
        (
            GITEA,
            MIRROR,
            Given::Docker(&[MIRROR]),
            &[GITEA],
            "error",
            "pw-docker-mirror.example:5000",
        ),
        // Profiles: each host its own.
        (
            GITEA,
            MIRROR,
            Given::Nothing,
            &[GITEA],
            "pw-profile-gitea.cnoe.localtest.me:8443",
            "-",
        ),
        (
            GITEA,
            MIRROR,
            Given::Nothing,
            &[GITEA, MIRROR],
            "pw-profile-gitea.cnoe.localtest.me:8443",
            "pw-profile-mirror.example:5000",
        ),
        (
            GITEA,
            GITEA,
            Given::Nothing,
            &[GITEA],
            "pw-profile-gitea.cnoe.localtest.me:8443",
            "pw-profile-gitea.cnoe.localtest.me:8443",
        ),
        (GITEA, HUB, Given::Nothing, &[], "-", "-"),
    ];
    for (target, base, given, profiles, to_target, to_base) in table {
        let given_credentials = match given {
            Given::Nothing => None,
            Given::Basic => Some(GivenCredentials::ForTarget(credentials("basic"))),
            Given::Docker(hosts) => Some(GivenCredentials::PerHost(docker_config(hosts))),
        };
        let policy = CredentialPolicy::new(target, given_credentials);
        let row = format!("target {target}, base {base}, {given:?}, profiles {profiles:?}");
        assert_eq!(
            sent(&policy, target, profiles),
            *to_target,
            "to the target: {row}"
        );
        assert_eq!(
            sent(&policy, base, profiles),
            *to_base,
            "to the base: {row}"
        );
    }
}

#[test]
fn docker_hub_is_one_host_under_all_its_names() {
    for key in [
        "https://index.docker.io/v1/",
        "index.docker.io",
        "docker.io",
        "registry-1.docker.io",
        "https://registry-1.docker.io",
    ] {
        let json = format!(r#"{{"auths":{{"{key}":{{"username":"u","password":"p"}}}}}}"#);
        let config = DockerConfig::parse(&json, "Secret ns/hub").expect("config");
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert!(
                config.credentials_for(host).is_some(),
                "key {key} must serve {host}"
            );
        }
        assert!(config.credentials_for("ghcr.io").is_none(), "key {key}");
    }
}

#[test]
fn auths_keys_match_by_host_and_port() {
    let json = r#"{"auths":{"http://reg.example:5000/":{"auth":"dXNlcjpwOmFAc3M="},"other.example/some/path":{"username":"o","password":"q"}}}"#;
    let config = DockerConfig::parse(json, "Secret ns/x").expect("config");
    let found = config.credentials_for("reg.example:5000").expect("entry");
    // "user:p:a@ss" in base64: the password keeps its colons.
    assert_eq!(
        (found.username.as_str(), found.password.as_str()),
        ("user", "p:a@ss")
    );
    assert!(
        config.credentials_for("reg.example").is_none(),
        "another port is another host"
    );
    assert!(config.credentials_for("other.example").is_some());
    assert_eq!(found.source, "Secret ns/x");
}

#[test]
fn missing_target_entry_names_the_secret_and_the_hosts_it_holds() {
    let config = docker_config(&[MIRROR, HUB]);
    let policy = CredentialPolicy::new(GITEA, Some(GivenCredentials::PerHost(config)));
    let error = policy.choose(GITEA).expect_err("no entry for the target");
    let message = error.to_string();
    for needle in ["Secret ns/docker", GITEA, MIRROR, "docker.io"] {
        assert!(message.contains(needle), "{needle} missing from: {message}");
    }
    assert!(!message.contains("pw-"), "no password in: {message}");
}

#[test]
fn unreadable_docker_config_says_why_without_echoing_it() {
    for json in [r#"{"auths": "#, r#"{"other": {}}"#, "hunter2"] {
        let error = DockerConfig::parse(json, "Secret ns/bad").expect_err(json);
        let message = error.to_string();
        assert!(message.contains("Secret ns/bad"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn entries_without_a_password_are_not_credentials() {
    let json =
        r#"{"auths":{"reg.example":{"identitytoken":"abc"},"b.example":{"auth":"bm9jb2xvbg=="}}}"#;
    let config = DockerConfig::parse(json, "Secret ns/x").expect("config");
    assert!(config.hosts().is_empty(), "{:?}", config.hosts());
}

#[test]
fn hosts_compare_in_canonical_form() {
    assert_eq!(canonical_host("Index.Docker.IO"), "docker.io");
    assert_eq!(canonical_host("Gitea.CNOE.localtest.me:8443"), GITEA);
    let policy = CredentialPolicy::new(
        "index.docker.io",
        Some(GivenCredentials::ForTarget(credentials("basic"))),
    );
    assert!(policy.is_target("docker.io"));
    assert_eq!(
        policy.choose("docker.io"),
        Ok(CredentialChoice::Given(credentials("basic")))
    );
}
