//! ConfigMaps as build contexts: each key (or each of `items`) is a file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};

use super::ClusterError;
use crate::api::ConfigMapSource;
use crate::context::ContextItem;

/// The files of the ConfigMaps `sources` names in `namespace`, in order.
pub async fn read_config_maps(
    client: &Client,
    namespace: &str,
    sources: &[ConfigMapSource],
) -> Result<Vec<ContextItem>, ClusterError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut files = Vec::new();
    for source in sources {
        let cm =
            api.get_opt(&source.name)
                .await?
                .ok_or_else(|| ClusterError::ConfigMapNotFound {
                    namespace: namespace.to_owned(),
                    name: source.name.clone(),
                })?;
        files.extend(config_map_files(namespace, &cm, source.items.as_deref())?);
    }
    Ok(files)
}

/// The files an ImageBuild takes from one ConfigMap (`items`, or every key).
pub fn config_map_files(
    namespace: &str,
    cm: &ConfigMap,
    items: Option<&[crate::api::KeyToPath]>,
) -> Result<Vec<ContextItem>, ClusterError> {
    let name = cm.name_any();
    let mut all: BTreeMap<&str, bytes::Bytes> = BTreeMap::new();
    for (key, value) in cm.data.iter().flatten() {
        all.insert(key, bytes::Bytes::copy_from_slice(value.as_bytes()));
    }
    for (key, value) in cm.binary_data.iter().flatten() {
        all.insert(key, bytes::Bytes::copy_from_slice(&value.0));
    }
    let file = |key: &str, data: bytes::Bytes, item: Option<&crate::api::KeyToPath>| {
        ContextItem::from_key(
            format!("ConfigMap {name} key {key}"),
            key,
            item.and_then(|i| i.path.as_deref()),
            item.and_then(|i| i.mode)
                .and_then(|m| u32::try_from(m).ok()),
            data,
            item.is_some_and(|i| i.archive),
        )
        .map_err(ClusterError::from)
    };
    match items {
        None => all.iter().map(|(k, v)| file(k, v.clone(), None)).collect(),
        Some(items) => items
            .iter()
            .map(|item| {
                let data = all.get(item.key.as_str()).cloned().ok_or_else(|| {
                    ClusterError::ConfigMapKeyMissing {
                        namespace: namespace.to_owned(),
                        name: name.clone(),
                        key: item.key.clone(),
                        available: all.keys().copied().collect::<Vec<_>>().join(", "),
                    }
                })?;
                file(&item.key, data, Some(item))
            })
            .collect(),
    }
}
