//! imagebuild: files from a ConfigMap, a PVC or a directory become a reproducible OCI image in a
//! registry. The builder (`context`, `layer`, `image`, `layout`) knows nothing of Kubernetes; the
//! `registry` module moves bytes; the `controller` writes what happened to the ImageBuild status.

pub mod oci;
pub mod reference;
pub mod registry;
