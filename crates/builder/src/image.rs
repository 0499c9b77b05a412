//! Image assembly: our layer plus an OCI config and manifest, on scratch or on a base image.
//!
//! On a base image the base's config is edited in place, keeping its field order and every
//! field we do not know: our diffID and a history entry are appended, and only the config
//! fields the spec sets change (env merges by name, labels merge, ports add). Base layers are
//! referenced, never re-tarred. JSON is compact and serialised in a fixed order, so the same
//! inputs give the same manifest digest.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::layer::LayerBlob;
use crate::oci::{
    self, BaseImage, BaseIndex, Blob, BlobLocation, BuiltImage, BuiltIndex, Descriptor, Digest,
    Platform,
};

/// What goes into the image config and manifest besides the layer.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// For scratch images (default linux/amd64); with a base image the base's platform wins.
    pub platform: Option<Platform>,
    /// `Entrypoint`; on a base image, setting it without `cmd` drops the base's `Cmd`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// Merged by name into the base's `Env`; a later duplicate name wins.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`, e.g. `65532` or `app:app`.
    pub user: Option<String>,
    /// `8080/tcp`, `53/udp` or `8080` (meaning tcp).
    pub exposed_ports: Vec<String>,
    /// Config labels, merged into the base's.
    pub labels: BTreeMap<String, String>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// Creation time in seconds since the epoch (`SOURCE_DATE_EPOCH`); default 0.
    pub created: Option<i64>,
}

/// Why an image could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the base image {repository} has an unusable config: {reason}")]
    BaseConfig { repository: String, reason: String },
    #[error("exposedPorts entry `{0}` is not a port: use 8080, 8080/tcp, 53/udp or 9/sctp")]
    Port(String),
    #[error("env name `{0}` is not valid: it must be non-empty and contain no `=`")]
    EnvName(String),
    #[error("created time {0} is out of range")]
    Created(i64),
    #[error("cannot serialise the image {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// `created_by` of the history entry for our layer.
const CREATED_BY: &str = "imagebuild";

/// Assembles config and manifest for `layers` (in order, one history entry each) on `base`
/// (or scratch).
pub fn assemble(
    base: Option<&BaseImage>,
    layers: &[LayerBlob],
    spec: &ImageSpec,
) -> Result<BuiltImage, ImageError> {
    let created = created(spec.created)?;
    let config = match base {
        Some(base) => config_on_base(base, layers, spec, &created)?,
        None => scratch_config(layers, spec, &created)?,
    };
    let config_bytes =
        Bytes::from(
            serde_json::to_vec(&config).map_err(|source| ImageError::Json {
                what: "config",
                source,
            })?,
        );
    let config_blob = Blob {
        descriptor: Descriptor::of(oci::MEDIA_TYPE_IMAGE_CONFIG, &config_bytes),
        location: BlobLocation::Bytes(config_bytes),
    };

    let base_layers = base
        .map(|b| b.manifest.layers.iter())
        .into_iter()
        .flatten()
        .map(|d| Blob {
            descriptor: d.clone(),
            location: BlobLocation::Base,
        });
    let ours = layers.iter().map(|layer| Blob {
        descriptor: layer.descriptor.clone(),
        location: layer.location.clone(),
    });
    let layers: Vec<Blob> = base_layers.chain(ours).collect();

    let manifest = oci::Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_IMAGE_MANIFEST.to_owned()),
        config: config_blob.descriptor.clone(),
        layers: layers.iter().map(|l| l.descriptor.clone()).collect(),
        annotations: spec.annotations.clone(),
    };
    let manifest_bytes =
        Bytes::from(
            serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
                what: "manifest",
                source,
            })?,
        );
    Ok(BuiltImage {
        platform: None,
        manifest_digest: Digest::of(&manifest_bytes),
        manifest: manifest_bytes,
        manifest_media_type: oci::MEDIA_TYPE_IMAGE_MANIFEST.to_owned(),
        config: config_blob,
        layers,
        base: base.cloned(),
    })
}

/// What the children of an index stand on.
#[derive(Debug, Clone, Copy)]
pub enum Children<'a> {
    /// The chosen platforms of a base image, each with its platform set.
    Base {
        index: &'a BaseIndex,
        images: &'a [BaseImage],
    },
    /// Scratch images, one per platform.
    Scratch(&'a [Platform]),
}

/// Assembles one image per platform around the same `layers`, and the index that lists them.
///
/// Each child is what [`assemble`] makes of its base child (config edited in place, so its
/// `os`, `architecture` and `variant` stay), and the index copies each child's platform. On a
/// base, the index keeps the base's media-type family (OCI index or Docker manifest list) and
/// names the base in the `org.opencontainers.image.base.*` annotations.
pub fn assemble_index(
    children: Children<'_>,
    layers: &[LayerBlob],
    spec: &ImageSpec,
) -> Result<BuiltIndex, ImageError> {
    // The platform comes from each base child; `spec.platform` is the single-image field.
    let child_spec = ImageSpec {
        platform: None,
        ..spec.clone()
    };
    let (built, media_type, annotations) = match children {
        Children::Base { index, images } => {
            let built = images
                .iter()
                .map(|base| {
                    let mut child = assemble(Some(base), layers, &child_spec)?;
                    child.platform = base.platform.clone();
                    Ok(child)
                })
                .collect::<Result<Vec<_>, ImageError>>()?;
            let media_type = if index.media_type == oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST {
                oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST
            } else {
                oci::MEDIA_TYPE_IMAGE_INDEX
            };
            let annotations = BTreeMap::from([
                (
                    oci::ANNOTATION_BASE_DIGEST.to_owned(),
                    index.digest.to_string(),
                ),
                (oci::ANNOTATION_BASE_NAME.to_owned(), index.name.clone()),
            ]);
            (built, media_type, annotations)
        }
        Children::Scratch(platforms) => {
            let built = platforms
                .iter()
                .map(|platform| {
                    let spec = ImageSpec {
                        platform: Some(platform.clone()),
                        ..child_spec.clone()
                    };
                    let mut child = assemble(None, layers, &spec)?;
                    child.platform = Some(platform.clone());
                    Ok(child)
                })
                .collect::<Result<Vec<_>, ImageError>>()?;
            (built, oci::MEDIA_TYPE_IMAGE_INDEX, BTreeMap::new())
        }
    };
    let index = oci::Index {
        schema_version: 2,
        media_type: Some(media_type.to_owned()),
        manifests: built
            .iter()
            .map(|child| Descriptor {
                media_type: child.manifest_media_type.clone(),
                digest: child.manifest_digest.clone(),
                size: child.manifest.len() as u64,
                platform: child.platform.clone(),
                annotations: BTreeMap::new(),
            })
            .collect(),
        annotations,
    };
    let bytes = Bytes::from(
        serde_json::to_vec(&index).map_err(|source| ImageError::Json {
            what: "index",
            source,
        })?,
    );
    Ok(BuiltIndex {
        digest: Digest::of(&bytes),
        manifest: bytes,
        media_type: media_type.to_owned(),
        children: built,
    })
}

/// RFC 3339 in UTC, e.g. `1970-01-01T00:00:00Z`.
fn created(seconds: Option<i64>) -> Result<String, ImageError> {
    let seconds = seconds.unwrap_or(0);
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .map_err(|_| ImageError::Created(seconds))
}

fn diff_ids_of(layers: &[LayerBlob]) -> impl Iterator<Item = Value> + '_ {
    layers.iter().map(|layer| json!(layer.diff_id.as_str()))
}

fn diff_ids(layers: &[LayerBlob]) -> Value {
    Value::Array(diff_ids_of(layers).collect())
}

fn history_entry(created: &str) -> Value {
    json!({ "created": created, "created_by": CREATED_BY })
}

fn scratch_config(
    layers: &[LayerBlob],
    spec: &ImageSpec,
    created: &str,
) -> Result<Value, ImageError> {
    let platform = spec.platform.clone().unwrap_or_else(Platform::linux_amd64);
    let mut config = Map::new();
    apply_runtime_config(&mut config, spec)?;
    let mut image = Map::new();
    image.insert("created".into(), json!(created));
    image.insert("architecture".into(), json!(platform.architecture));
    image.insert("os".into(), json!(platform.os));
    if let Some(variant) = &platform.variant {
        image.insert("variant".into(), json!(variant));
    }
    image.insert("config".into(), Value::Object(config));
    image.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids(layers) }),
    );
    let history: Vec<Value> = layers.iter().map(|_| history_entry(created)).collect();
    image.insert("history".into(), Value::Array(history));
    Ok(Value::Object(image))
}

fn config_on_base(
    base: &BaseImage,
    layers: &[LayerBlob],
    spec: &ImageSpec,
    created: &str,
) -> Result<Value, ImageError> {
    let unusable = |reason: &str| ImageError::BaseConfig {
        repository: base.repository.clone(),
        reason: reason.to_owned(),
    };
    let mut image = base.config.clone();
    let fields = image
        .as_object_mut()
        .ok_or_else(|| unusable("it is not a JSON object"))?;
    warn_on_platform_mismatch(fields, spec);
    fields.insert("created".into(), json!(created));

    let diff_ids = fields
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| unusable("it has no rootfs.diff_ids"))?;
    if diff_ids.len() != base.manifest.layers.len() {
        return Err(unusable(&format!(
            "it lists {} diff_ids but its manifest has {} layers",
            diff_ids.len(),
            base.manifest.layers.len()
        )));
    }
    diff_ids.extend(diff_ids_of(layers));

    let history = fields.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    if let Some(entries) = history.as_array_mut() {
        entries.extend(layers.iter().map(|_| history_entry(created)));
    }

    let config = fields.entry("config").or_insert_with(|| json!({}));
    if !config.is_object() {
        *config = json!({});
    }
    if let Some(config) = config.as_object_mut() {
        // As a Dockerfile's ENTRYPOINT does: a new entrypoint drops the base's CMD.
        if spec.entrypoint.is_some() && spec.cmd.is_none() {
            // shift_remove: removing must not reorder the remaining fields.
            config.shift_remove("Cmd");
        }
        apply_runtime_config(config, spec)?;
    }
    Ok(image)
}

fn warn_on_platform_mismatch(fields: &Map<String, Value>, spec: &ImageSpec) {
    let Some(wanted) = &spec.platform else { return };
    let field = |name: &str| fields.get(name).and_then(Value::as_str);
    let same = field("os") == Some(wanted.os.as_str())
        && field("architecture") == Some(wanted.architecture.as_str())
        && (wanted.variant.is_none() || field("variant") == wanted.variant.as_deref());
    if !same {
        tracing::warn!(
            wanted = %wanted,
            base_os = field("os").unwrap_or(""),
            base_architecture = field("architecture").unwrap_or(""),
            "the base image's platform differs from the requested one; keeping the base's"
        );
    }
}

/// Sets the runtime config fields the spec gives, leaving every other field as it is.
fn apply_runtime_config(
    config: &mut Map<String, Value>,
    spec: &ImageSpec,
) -> Result<(), ImageError> {
    if let Some(user) = &spec.user {
        config.insert("User".into(), json!(user));
    }
    if !spec.exposed_ports.is_empty() {
        let ports: Vec<String> = spec
            .exposed_ports
            .iter()
            .map(|p| normalised_port(p))
            .collect::<Result<_, _>>()?;
        if let Some(exposed) = object_field(config, "ExposedPorts") {
            for port in ports {
                exposed.entry(port).or_insert_with(|| json!({}));
            }
        }
    }
    if !spec.env.is_empty() {
        merge_env(config, &spec.env)?;
    }
    if let Some(entrypoint) = &spec.entrypoint {
        config.insert("Entrypoint".into(), json!(entrypoint));
    }
    if let Some(cmd) = &spec.cmd {
        config.insert("Cmd".into(), json!(cmd));
    }
    if let Some(dir) = &spec.working_dir {
        config.insert("WorkingDir".into(), json!(dir));
    }
    if !spec.labels.is_empty()
        && let Some(labels) = object_field(config, "Labels")
    {
        for (key, value) in &spec.labels {
            labels.insert(key.clone(), json!(value));
        }
    }
    Ok(())
}

/// The object under `key`, created in place (or replacing a `null`) when missing.
fn object_field<'a>(
    config: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let value = config.entry(key).or_insert_with(|| json!({}));
    if !value.is_object() {
        *value = json!({});
    }
    value.as_object_mut()
}

/// Replaces variables of the same name in place and appends new ones.
fn merge_env(config: &mut Map<String, Value>, env: &[(String, String)]) -> Result<(), ImageError> {
    if let Some((name, _)) = env.iter().find(|(n, _)| n.is_empty() || n.contains('=')) {
        return Err(ImageError::EnvName(name.clone()));
    }
    let value = config.entry("Env").or_insert_with(|| json!([]));
    if !value.is_array() {
        *value = json!([]);
    }
    let Some(vars) = value.as_array_mut() else {
        return Ok(());
    };
    for (name, val) in env {
        let assignment = json!(format!("{name}={val}"));
        let prefix = format!("{name}=");
        let existing = vars.iter_mut().find(|v| {
            v.as_str()
                .is_some_and(|s| s.starts_with(&prefix) || s == name)
        });
        match existing {
            Some(slot) => *slot = assignment,
            None => vars.push(assignment),
        }
    }
    Ok(())
}

/// `8080` → `8080/tcp`; checks the number and the protocol.
fn normalised_port(port: &str) -> Result<String, ImageError> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid_number = number.parse::<u16>().is_ok_and(|n| n > 0);
    let valid_protocol = matches!(protocol, "tcp" | "udp" | "sctp");
    if valid_number && valid_protocol {
        Ok(format!("{number}/{protocol}"))
    } else {
        Err(ImageError::Port(port.to_owned()))
    }
}

#[cfg(test)]
mod tests;
