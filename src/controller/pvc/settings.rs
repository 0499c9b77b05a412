//! How reader Pods are made: the reader flags of `imagebuild controller`, checked, and the
//! settings and upload endpoint the controller keeps for them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::controller::upload::Uploads;

/// How reader Pods are made (flags of `imagebuild controller`).
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// Where the upload endpoint listens.
    pub listen: SocketAddr,
    /// The endpoint's URL as reader Pods reach it, without a trailing `/`.
    pub url: String,
    /// The reader image; its entrypoint must be `imagebuild` (the controller's own image).
    pub image: String,
    pub pull_policy: String,
    pub resources: ResourceRequirements,
}

/// Reader settings and the uploads the endpoint is waiting for.
pub struct Readers {
    pub settings: ReaderSettings,
    pub uploads: Uploads,
}

/// The reader flags as given.
#[derive(Debug, Clone, Default)]
pub struct ReaderFlags {
    pub context_listen: Option<SocketAddr>,
    pub context_url: Option<String>,
    pub pod_ip: Option<IpAddr>,
    pub reader_image: Option<String>,
    pub pull_policy: String,
    pub resources: Option<String>,
}

/// Reader flags that do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum ReaderConfigError {
    #[error("--reader-image needs --context-listen (where reader Pods send the files)")]
    NoListen,
    #[error("--context-listen needs --reader-image (the image of reader Pods)")]
    NoImage,
    #[error(
        "--context-listen needs --context-url, or the POD_IP environment variable to derive it \
         (the chart sets it)"
    )]
    NoUrl,
    #[error("--context-url `{0}` is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("--reader-resources is not a ResourceRequirements JSON object: {0}")]
    BadResources(serde_json::Error),
}

impl ReaderSettings {
    /// Settings from the flags; `None` when PersistentVolumeClaim contexts are off.
    pub fn from_flags(flags: ReaderFlags) -> Result<Option<Self>, ReaderConfigError> {
        let Some(listen) = flags.context_listen else {
            return match flags.reader_image {
                Some(_) => Err(ReaderConfigError::NoListen),
                None => Ok(None),
            };
        };
        let image = flags.reader_image.ok_or(ReaderConfigError::NoImage)?;
        let url = match (flags.context_url, flags.pod_ip) {
            (Some(url), _) => url,
            // The Pod's own address, not a Service: the token lives in this replica's memory.
            (None, Some(ip)) => format!("http://{}", SocketAddr::new(ip, listen.port())),
            (None, None) => return Err(ReaderConfigError::NoUrl),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ReaderConfigError::BadUrl(url));
        }
        let resources = match flags.resources {
            Some(text) => serde_json::from_str(&text).map_err(ReaderConfigError::BadResources)?,
            None => default_resources(),
        };
        Ok(Some(Self {
            listen,
            url: url.trim_end_matches('/').to_owned(),
            image,
            pull_policy: flags.pull_policy,
            resources,
        }))
    }
}

/// Enough for walking a directory and streaming it: the sender holds a few 256 KiB chunks.
fn default_resources() -> ResourceRequirements {
    let cpu_and_memory = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(cpu_and_memory("10m", "16Mi")),
        limits: Some(cpu_and_memory("500m", "64Mi")),
        ..ResourceRequirements::default()
    }
}
