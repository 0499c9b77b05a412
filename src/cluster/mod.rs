//! The cluster adapter: what the controller and the command line's `--from-cluster` read from
//! Kubernetes, in the builder's and the registry client's terms. ConfigMaps become context
//! items; Secrets and registry profiles become registry access under the one credential policy
//! ([`crate::registry::access`]). Neither the builder nor the registry client knows Kubernetes;
//! this is where the two meet it.

mod config_maps;
mod error;
mod profiles;
mod registries;

pub use config_maps::{config_map_files, read_config_maps};
pub use error::ClusterError;
pub use profiles::{
    CredentialsSecretRef, IDPBUILDER_HOST, NamespacedKeyRef, RegistryProfile, idpbuilder_profiles,
};
pub use registries::{
    HostAccess, SecretSource, SecretsRead, credential_policy, host_access, profile_access,
};
