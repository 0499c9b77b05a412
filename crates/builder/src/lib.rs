//! The builder of imagebuild: a file tree (from ConfigMap items, a directory or an upload)
//! becomes a deterministic tar, a compressed layer, an OCI image and an image layout. It knows
//! no Kubernetes and no HTTP: its manifest lists neither, so an import of either does not
//! compile.

pub mod context;
pub mod failure;
pub mod image;
pub mod layer;
pub mod layout;
pub mod oci;
pub mod reference;
