//! imagebuild: files from a ConfigMap, a PVC or a directory become a reproducible OCI image in a
//! registry. The builder (`context`, `layer`, `image`, `layout`) knows nothing of Kubernetes; the
//! `registry` module moves bytes; `build` joins them for one build; the `controller` writes what
//! happened to the ImageBuild status.

pub mod api;
pub mod build;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transfer;
pub mod yaml;

// The builder and the registry client are crates of their own (crates/): the compiler keeps
// Kubernetes out of both and HTTP out of the builder. Their modules keep their paths here.
pub use imagebuild_builder::{context, failure, image, layer, layout, oci, reference};
pub use imagebuild_registry as registry;
