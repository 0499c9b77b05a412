//! imagebuild: files from a ConfigMap, a PVC or a directory become a reproducible OCI image in a
//! registry. The builder (`context`, `layer`, `image`, `layout`) knows nothing of Kubernetes; the
//! `registry` module moves bytes; `build` joins them for one build; the `controller` writes what
//! happened to the ImageBuild status.

pub mod api;
pub mod build;
pub mod cli;
pub mod cluster;
pub mod context;
pub mod controller;
pub mod crd;
pub mod failure;
pub mod image;
pub mod layer;
pub mod layout;
pub mod metrics;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod server;
pub mod telemetry;
pub mod transfer;
pub mod yaml;
