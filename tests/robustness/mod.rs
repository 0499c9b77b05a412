//! Shared by the fault, restart, bad-input and security suites: a host-run controller with its
//! own configuration file (registry profiles through the fault proxy, a small context limit) and
//! kubeconfig (the API server, or a proxy in front of it), builds with known clean digests, a
//! record of status writes, and the checks every hostile case ends with (no secret anywhere,
//! nothing tagged).
#![allow(dead_code)]

pub mod builds;
pub mod status_log;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{self, TestEnv};
use crate::controller_support as ctl;

/// A controller process started with a configuration derived from the chart's; SIGKILLed on drop.
/// Everything but [`Controller::restart`] is the [`ctl::ControllerProcess`]'s.
pub struct Controller {
    process: ctl::ControllerProcess,
    pub config: PathBuf,
    kubeconfig: PathBuf,
    extra: Vec<String>,
}

impl std::ops::Deref for Controller {
    type Target = ctl::ControllerProcess;
    fn deref(&self) -> &Self::Target {
        &self.process
    }
}

impl std::ops::DerefMut for Controller {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.process
    }
}

impl Controller {
    /// Starts a controller whose config is the chart's with `edit` applied.
    pub fn start(identity: &str, edit: impl FnOnce(&mut Value), extra: &[&str]) -> Self {
        let kubeconfig = ctl::install_chart().kubeconfig.clone();
        Self::start_with_kubeconfig(identity, edit, extra, kubeconfig)
    }

    /// Starts a controller whose registry profile for the test Gitea goes to `endpoint` (a fault
    /// proxy), trusting `ca_pem` through a Secret as it would Gitea's certificate.
    pub fn start_with_registry_endpoint(
        identity: &str,
        endpoint: &str,
        ca_pem: &str,
        extra: &[&str],
    ) -> Self {
        let env = common::env();
        // The chart makes the namespace the Secret goes to.
        ctl::install_chart();
        let secret = common::unique_name("proxy-ca");
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = write_file(dir.path(), "ca.crt", ca_pem);
        env.kubectl(&[
            "create",
            "secret",
            "generic",
            &secret,
            "-n",
            ctl::RELEASE_NAMESPACE,
            &format!("--from-file=ca.crt={}", pem.display()),
        ]);
        Self::start(
            identity,
            |config| {
                let profile = &mut config["registries"][0];
                profile["endpoint"] = endpoint.into();
                profile["caSecret"] = serde_json::to_value(std::collections::BTreeMap::from([
                    ("namespace", ctl::RELEASE_NAMESPACE.to_owned()),
                    ("name", secret.clone()),
                    ("key", "ca.crt".to_owned()),
                ]))
                .expect("yaml");
            },
            extra,
        )
    }

    /// Like [`Controller::start`], reaching the API server through `kubeconfig`.
    pub fn start_with_kubeconfig(
        identity: &str,
        edit: impl FnOnce(&mut Value),
        extra: &[&str],
        kubeconfig: PathBuf,
    ) -> Self {
        let env = common::env();
        let installed = ctl::install_chart();
        let text = std::fs::read_to_string(&installed.config).expect("chart config");
        let mut config: Value = imagebuild::yaml::from_str(&text).expect("config yaml");
        edit(&mut config);
        let dir = env.dir.join("controller");
        let path = dir.join(format!("{identity}.config.yaml"));
        std::fs::write(&path, serde_saphyr::to_string(&config).expect("yaml")).expect("config");
        Self::spawn(
            identity,
            path,
            kubeconfig,
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn spawn(identity: &str, config: PathBuf, kubeconfig: PathBuf, extra: Vec<String>) -> Self {
        let process = ctl::ControllerProcess::spawn(identity, &config, &kubeconfig, &extra);
        process.wait_ready();
        Self {
            process,
            config,
            kubeconfig,
            extra,
        }
    }

    /// SIGKILL and start again with the same identity, configuration and log.
    pub fn restart(&mut self) {
        self.kill();
        let next = Self::spawn(
            &self.identity.clone(),
            self.config.clone(),
            self.kubeconfig.clone(),
            self.extra.clone(),
        );
        // The old value's drop finds its processes gone already.
        drop(std::mem::replace(self, next));
    }
}

/// Every password and token of the test environment (and the ServiceAccount token).
pub fn secrets(env: &TestEnv) -> Vec<String> {
    let mut all = vec![
        env.gitea_password.clone(),
        env.gitea_token.clone(),
        env.registry_password.clone(),
    ];
    let kubeconfig = ctl::install_chart().kubeconfig.clone();
    if let Ok(text) = std::fs::read_to_string(kubeconfig)
        && let Ok(json) = serde_json::from_str::<Value>(&text)
        && let Some(token) = json["users"][0]["user"]["token"].as_str()
    {
        all.push(token.to_owned());
    }
    all.retain(|s| s.len() >= 6);
    all
}

/// The secrets (by position, never their text) that occur in `text`.
pub fn leaked(text: &str, secrets: &[String]) -> Vec<usize> {
    secrets
        .iter()
        .enumerate()
        .filter(|(_, s)| text.contains(s.as_str()))
        .map(|(i, _)| i)
        .collect()
}

/// A YAML double-quoted string holding `text`.
pub fn yaml_quoted(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes PEM text to a file under `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// A copy of the controller's kubeconfig that reaches the API server at `server` (a proxy in
/// front of it) and trusts `ca_pem` there; same ServiceAccount token.
pub fn kubeconfig_via(server: &str, ca_pem: &str) -> PathBuf {
    use base64::Engine;
    let installed = ctl::install_chart();
    let text = std::fs::read_to_string(&installed.kubeconfig).expect("kubeconfig");
    let mut kubeconfig: Value = serde_json::from_str(&text).expect("kubeconfig json");
    let cluster = &mut kubeconfig["clusters"][0]["cluster"];
    cluster["server"] = server.into();
    cluster["certificate-authority-data"] = base64::engine::general_purpose::STANDARD
        .encode(ca_pem)
        .into();
    let path = common::env()
        .dir
        .join("controller")
        .join(format!("{}.kubeconfig", common::unique_name("via")));
    std::fs::write(&path, serde_json::to_vec_pretty(&kubeconfig).expect("json"))
        .expect("write kubeconfig");
    path
}
