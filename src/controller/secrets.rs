//! The Secrets builds read (registry CAs and credentials), kept between reconciles while the
//! controller's Secret watch says they have not changed. Without it every reconcile read every
//! Secret it names again: four reads per build, and a read per ImageBuild on each hourly resync.
//!
//! The watch carries metadata only, so this keeps the `resourceVersion` of every Secret it
//! has seen, and the contents of those a build has read. A Secret is served from here only
//! while its stored copy has the version the watch last reported; anything else (no watch yet,
//! a change, a deletion, a relist) means one fresh read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

type Key = (String, String);

#[derive(Default)]
pub struct SecretCache {
    /// The `resourceVersion` of every Secret the watch reported, by namespace and name.
    versions: Mutex<HashMap<Key, String>>,
    /// What a relist has reported so far; replaces `versions` when it is complete.
    relist: Mutex<Option<HashMap<Key, String>>>,
    /// Secrets read for builds.
    read: Mutex<HashMap<Key, Arc<Secret>>>,
}

// The maps stay consistent whatever panicked while holding them: at worst a stale version means
// one more read.
use super::lock;

fn key_of(meta: &PartialObjectMeta<Secret>) -> Key {
    (meta.namespace().unwrap_or_default(), meta.name_any())
}

impl SecretCache {
    /// Takes in one event of the Secret metadata watch.
    pub fn observe(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        match event {
            watcher::Event::Apply(meta) => {
                let version = meta.resource_version().unwrap_or_default();
                lock(&self.versions).insert(key_of(meta), version);
            }
            watcher::Event::Delete(meta) => {
                let key = key_of(meta);
                lock(&self.versions).remove(&key);
                lock(&self.read).remove(&key);
            }
            watcher::Event::Init => *lock(&self.relist) = Some(HashMap::new()),
            watcher::Event::InitApply(meta) => {
                if let Some(relist) = lock(&self.relist).as_mut() {
                    let version = meta.resource_version().unwrap_or_default();
                    relist.insert(key_of(meta), version);
                }
            }
            watcher::Event::InitDone => {
                if let Some(listed) = lock(&self.relist).take() {
                    lock(&self.read).retain(|key, _| listed.contains_key(key));
                    *lock(&self.versions) = listed;
                }
            }
        }
    }

    /// Secret `namespace/name`, from here when the watch vouches for the stored copy, else read
    /// from the API server (`None` when it does not exist).
    pub async fn get(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(secret) = self.current(&key) {
            return Ok(Some(secret));
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api.get_opt(name).await?.map(Arc::new);
        let mut read = lock(&self.read);
        match &secret {
            Some(secret) => read.insert(key, secret.clone()),
            None => read.remove(&key),
        };
        Ok(secret)
    }

    /// The stored copy of `key` when its version is the one the watch last reported.
    fn current(&self, key: &Key) -> Option<Arc<Secret>> {
        let version = lock(&self.versions).get(key).cloned()?;
        let read = lock(&self.read);
        let secret = read.get(key)?;
        (secret.resource_version().as_deref() == Some(version.as_str())).then(|| secret.clone())
    }

    /// Stores a Secret as read from the API server (tests).
    #[cfg(test)]
    fn remember(&self, secret: Secret) {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        lock(&self.read).insert(key, Arc::new(secret));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn meta(name: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("gitea".into()),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
    }

    fn watched(name: &str, version: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            metadata: meta(name, version),
            ..PartialObjectMeta::default()
        }
    }

    fn secret(name: &str, version: &str) -> Secret {
        Secret {
            metadata: meta(name, version),
            ..Secret::default()
        }
    }

    fn key(name: &str) -> Key {
        ("gitea".into(), name.into())
    }

    #[test]
    fn a_secret_is_reused_only_while_the_watch_reports_its_version() {
        let cache = SecretCache::default();
        cache.remember(secret("cred", "5"));
        // No watch event yet: nothing vouches for the copy.
        assert!(cache.current(&key("cred")).is_none());
        cache.observe(&watcher::Event::Apply(watched("cred", "5")));
        assert!(cache.current(&key("cred")).is_some());
        // Changed: read again.
        cache.observe(&watcher::Event::Apply(watched("cred", "6")));
        assert!(cache.current(&key("cred")).is_none());
        cache.remember(secret("cred", "6"));
        assert!(cache.current(&key("cred")).is_some());
        // Deleted: gone.
        cache.observe(&watcher::Event::Delete(watched("cred", "6")));
        assert!(cache.current(&key("cred")).is_none());
    }

    #[test]
    fn a_relist_forgets_secrets_it_no_longer_lists() {
        let cache = SecretCache::default();
        for name in ["kept", "gone"] {
            cache.remember(secret(name, "1"));
            cache.observe(&watcher::Event::Apply(watched(name, "1")));
        }
        cache.observe(&watcher::Event::Init);
        cache.observe(&watcher::Event::InitApply(watched("kept", "1")));
        // Until the relist is complete the last full picture holds.
        assert!(cache.current(&key("gone")).is_some());
        cache.observe(&watcher::Event::InitDone);
        assert!(cache.current(&key("kept")).is_some());
        assert!(cache.current(&key("gone")).is_none());
    }
}
