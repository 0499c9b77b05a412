//! The two registries of the test environment as a registry command sees them: where, which
//! owner, the CA to trust and the credentials to pass (`--password-stdin`).

use std::path::PathBuf;

use super::TestEnv;

pub struct Target {
    pub host: String,
    pub owner: String,
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
}

impl Target {
    /// The test Gitea (idpbuilder's kind of certificate), images under its admin's owner.
    pub fn gitea(env: &TestEnv) -> Self {
        Self {
            host: env.gitea.clone(),
            owner: env.gitea_owner.clone(),
            ca: env.gitea_ca.clone(),
            user: env.gitea_user.clone(),
            password: env.gitea_password.clone(),
        }
    }

    /// The second registry (the CNCF distribution registry, htpasswd), images under `tests`.
    pub fn distribution(env: &TestEnv) -> Self {
        Self {
            host: env.registry.clone(),
            owner: "tests".into(),
            ca: env.registry_ca.clone(),
            user: env.registry_user.clone(),
            password: env.registry_password.clone(),
        }
    }

    /// `host/owner/name`.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{}/{}", self.host, self.owner, name)
    }

    /// `--ca-file CA --username USER --password-stdin` (the password goes on stdin).
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--ca-file".into(),
            self.ca.to_string_lossy().into_owned(),
            "--username".into(),
            self.user.clone(),
            "--password-stdin".into(),
        ]
    }

    /// `user:password`, as skopeo takes them.
    pub fn creds(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}
