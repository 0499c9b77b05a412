//! Registry profiles: how the controller reaches one registry host and which Secrets it uses
//! there (rendered by the Helm chart into the controller's configuration). `--from-cluster`
//! uses idpbuilder's.

use serde::Deserialize;

/// idpbuilder's registry host, used when no configuration file is given.
pub const IDPBUILDER_HOST: &str = "gitea.cnoe.localtest.me:8443";

/// How to reach one registry host.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryProfile {
    /// Host (and port) as written in image references.
    pub host: String,
    /// Where to connect instead, e.g. the in-cluster service `http://...svc.cluster.local:3000`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Secret key holding the PEM certificate(s) to trust for this host.
    #[serde(default)]
    pub ca_secret: Option<NamespacedKeyRef>,
    /// Secret holding a user name and password for this host (sent to this host only).
    #[serde(default)]
    pub credentials_secret: Option<CredentialsSecretRef>,
    /// Skip TLS verification for this host (reported in status and events).
    #[serde(default)]
    pub insecure: bool,
}

/// A key of a Secret in a given namespace.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedKeyRef {
    pub namespace: String,
    pub name: String,
    #[serde(default = "default_ca_key")]
    pub key: String,
}

/// A Secret with a user name and a password key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsSecretRef {
    pub namespace: String,
    pub name: String,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

/// idpbuilder's profile: Gitea with the certificate and credentials idpbuilder creates.
pub fn idpbuilder_profiles() -> Vec<RegistryProfile> {
    vec![RegistryProfile {
        host: IDPBUILDER_HOST.to_owned(),
        endpoint: None,
        ca_secret: Some(NamespacedKeyRef {
            namespace: "default".into(),
            name: "idpbuilder-cert".into(),
            key: default_ca_key(),
        }),
        credentials_secret: Some(CredentialsSecretRef {
            namespace: "gitea".into(),
            name: "gitea-credential".into(),
            username_key: default_username_key(),
            password_key: default_password_key(),
        }),
        insecure: false,
    }]
}

fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}
