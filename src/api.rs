//! The `ImageBuild` custom resource (imagebuild.dev/v1alpha1): what users write and what the
//! controller reports. Doc comments here become `kubectl explain` text; the CEL rules make the API
//! server refuse bad specs before the controller ever sees them.

// kube's printcolumn(...) arguments repeat `type_ = "string"` on purpose.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "imagebuild.dev";
/// Annotation whose change forces a rebuild (its value is part of the context digest).
pub const REBUILD_ANNOTATION: &str = "imagebuild.dev/rebuild";
/// Finalizer added when `deletionPolicy: Delete`, so pushed tags are removed before the object goes.
pub const FINALIZER: &str = "imagebuild.dev/delete-tags";

/// An image built from files in a ConfigMap or PersistentVolumeClaim and pushed to a registry.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "imagebuild.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    plural = "imagebuilds",
    shortname = "ib",
    namespaced,
    status = "ImageBuildStatus",
    doc = "An image built from files in a ConfigMap or PersistentVolumeClaim and pushed to a registry; the digest is written to status.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.shortDigest"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.platform) && has(self.platforms))").message("set platform (one image) or platforms (an image index), not both"))]
pub struct ImageBuildSpec {
    /// Where the files of the image come from: ConfigMaps or one PersistentVolumeClaim, in this
    /// ImageBuild's namespace.
    pub context: BuildContext,

    /// Base image the files are added on top of, as `host/owner/name:tag` or `...@sha256:...`.
    /// Omitted: an image holding only the context files (scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')").message("from must be a lower-case image reference with its registry host, e.g. gitea.cnoe.localtest.me:8443/giteaadmin/base:1"))]
    pub from: Option<String>,

    /// Destination repository with its registry host and no tag, all lower case,
    /// e.g. `gitea.cnoe.localtest.me:8443/giteaadmin/hello`.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+$')").message("image must be a lower-case repository with its registry host and no tag, e.g. gitea.cnoe.localtest.me:8443/giteaadmin/hello"))]
    pub image: String,

    /// Tags to push. Default: `[latest]`.
    #[serde(default = "default_tags")]
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'))").message("each tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"))]
    pub tags: Vec<Tag>,

    /// Directory inside the image where the context files land. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')").message("destinationPath must be an absolute path without `..`"))]
    pub destination_path: Option<String>,

    /// Files to leave out, in `.dockerignore` syntax (`!` re-includes). A `.dockerignore` at the
    /// root of the context is honoured as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub exclude: Vec<Pattern>,

    /// One platform, one plain image manifest: `os/arch[/variant]` of a scratch image, or the
    /// platform chosen from the base's index (default linux/amd64). Not together with
    /// `platforms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$')").message("platform must look like linux/amd64 or linux/arm64/v8"))]
    pub platform: Option<String>,

    /// Several platforms, one image index: each `os/arch[/variant]` must be in the base image
    /// (or, on scratch, is made as given). The context layer is built and uploaded once and
    /// shared by every child. Omitted with a base image and no `platform`: every platform of
    /// the base's index (a single-manifest base gives a single manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$'))").message("each of platforms must look like linux/amd64 or linux/arm64/v8"))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q == p))").message("platforms must not repeat a platform"))]
    pub platforms: Option<Vec<PlatformName>>,

    /// OCI image configuration: what runs when a container starts from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ImageConfig>,

    /// Annotations written into the image manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// How to reach the registry. Omitted: the controller's registry profile for the image's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySettings>,

    /// What happens to the pushed tags when this ImageBuild is deleted. Default `Retain`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How long one build and push may take, as a duration like `90s` or `10m`. Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) > duration('0s')").message("timeout must be a positive duration such as 90s, 10m or 1h30m"))]
    pub timeout: Option<String>,

    /// Layer compression: `gzip` (default, readable everywhere) or `zstd`.
    #[serde(default)]
    pub compression: Compression,

    /// How the files are laid out in layers: `auto` (default: one layer under 64 MiB, else up
    /// to 16 layers cut at file boundaries so that one changed file changes one layer) or
    /// `single` (one layer whatever the size).
    #[serde(default, skip_serializing_if = "Layers::is_auto")]
    pub layers: Layers,
}

/// A tag name.
pub type Tag = String;
/// `os/arch[/variant]`, e.g. `linux/arm64`.
pub type PlatformName = String;
/// A `.dockerignore` pattern.
pub type Pattern = String;

fn default_tags() -> Vec<Tag> {
    vec!["latest".to_owned()]
}

/// Exactly one source of files.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMaps) != has(self.persistentVolumeClaim)").message("context needs exactly one of configMaps or persistentVolumeClaim"))]
pub struct BuildContext {
    /// ConfigMaps in this namespace whose keys become files; merged in order. A target path may
    /// appear only once across all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub config_maps: Option<Vec<ConfigMapSource>>,

    /// A PersistentVolumeClaim in this namespace, mounted read-only by a short-lived reader Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
}

/// One ConfigMap of the context.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// Name of the ConfigMap (same namespace as the ImageBuild).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Which keys to use and where they land. Omitted: every key of `data` and `binaryData`, as a
    /// file named after the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub items: Option<Vec<KeyToPath>>,
}

/// One key of a ConfigMap placed as a file.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyToPath {
    /// Key in the ConfigMap's `data` or `binaryData`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Relative path of the file under `destinationPath`. Default: the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')").message("path must be relative and must not contain `..`"))]
    pub path: Option<String>,
    /// File mode bits (0 to 0777, e.g. 0755 as 493). Default: 0644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub mode: Option<i32>,
    /// Unpack this key (a `.tar`, `.tar.gz` or `.tgz` archive) into the directory `path`, with the
    /// extension stripped when `path` is the default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archive: bool,
}

/// A PersistentVolumeClaim holding the context.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the claim (same namespace as the ImageBuild).
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the volume to use as the context root. Default: the volume's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')").message("subPath must be relative and must not contain `..`"))]
    pub sub_path: Option<String>,
}

/// The OCI image configuration fields users set.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// Command run when a container starts. Replaces the base image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Arguments to the entrypoint. Replaces the base image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Environment variables; a name already set by the base image is overridden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User (name or uid[:gid]) the container runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports the image listens on, as `8080/tcp` or `53/udp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 11)))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[0-9]{1,5}(/(tcp|udp|sctp))?$'))").message("exposedPorts entries look like 8080/tcp"))]
    pub exposed_ports: Vec<String>,
    /// Image labels; merged over the base image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One environment variable of the image.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct EnvVar {
    /// Variable name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// Per-build registry access, overriding the controller's registry profile.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySettings {
    /// Secret in this namespace with the registry credentials: type
    /// `kubernetes.io/dockerconfigjson` or `kubernetes.io/basic-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("credentialsSecret must be the name of a Secret in this namespace (no namespace prefix)"))]
    pub credentials_secret: Option<String>,
    /// Secret key in this namespace holding the PEM certificate(s) to trust for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Skip TLS verification. An explicit opt-in: shown in status and as a Warning event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// A key of a Secret in the ImageBuild's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret. Default `ca.crt`.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// What to do with pushed tags when the ImageBuild is deleted.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the image in the registry.
    #[default]
    Retain,
    /// Remove the pushed tags from the registry.
    Delete,
}

/// Layer compression.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, readable by every runtime.
    #[default]
    Gzip,
    /// zstd: smaller and faster; needs containerd 1.5+ or a recent CRI-O.
    Zstd,
}

/// How the files are laid out in layers.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Layers {
    /// One layer under 64 MiB of files, else up to 16 content-defined layers.
    #[default]
    Auto,
    /// One layer whatever the size.
    Single,
}

impl Layers {
    /// Whether this is the default (left out when a spec is serialised, so adding the field
    /// changed no existing spec's digest).
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

/// Where a build stands.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Building,
    Pushing,
    Succeeded,
    Failed,
}

/// What the controller observed and did.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    /// Pending, Building, Pushing, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True once the image is in the registry for the current inputs; False with a
    /// reason and a message saying what to fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Manifest digest as the registry reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// First 12 hex digits of the digest, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_digest: Option<String>,
    /// `image@digest`, ready for a Pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    /// Tags pushed for `digest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Hash of the resolved inputs; while it is unchanged nothing is rebuilt or uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_digest: Option<String>,
    /// Digest of the base image used: its manifest, or its index when the image is an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_digest: Option<String>,
    /// When `digest` names an image index: each child's platform and manifest digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformDigest>,
    /// Workloads whose containers this controller set to `imageRef`: Deployments,
    /// StatefulSets and DaemonSets of this namespace labelled `imagebuild.dev/rollout: "true"`
    /// that name this ImageBuild in their `imagebuild.dev/images` annotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<Rollout>,
    /// Bytes of config and layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// When the current build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the current build finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Builds attempted for the current inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// When a build that failed for a passing reason (registry unavailable, timeout) is tried
    /// again. Absent after a failure that needs a change to the inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Time>,
    /// True when TLS verification was skipped for the registry (`registry.insecure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// One child of a pushed image index.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlatformDigest {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The child's manifest digest.
    pub digest: String,
}

/// One container of a workload running this ImageBuild's image.
#[derive(
    KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// The workload's name, in the ImageBuild's namespace.
    pub name: String,
    /// The container (or init container) whose `image` is `imageRef`.
    pub container: String,
    /// The manifest digest the container runs.
    pub digest: String,
}

impl ImageBuildSpec {
    /// `destinationPath`, defaulted.
    pub fn destination_path(&self) -> &str {
        self.destination_path.as_deref().unwrap_or("/")
    }
}
