//! The ImageBuild controller: watches ImageBuilds and, metadata-only, the ConfigMaps and Secrets
//! they reference; runs reconciles under a Lease when leader election is on; serves health,
//! readiness and metrics.

pub mod backoff;
pub mod config;
pub mod drift;
pub mod error;
pub mod events;
pub mod inputs;
pub mod leader;
pub mod pvc;
pub mod reconcile;
pub mod rollout;
pub mod secrets;
pub mod status;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ApiResource;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Semaphore;

use crate::api::ImageBuild;
use crate::metrics::Metrics;
use crate::reference::ImageRef;
use crate::registry::canonical_host;
use crate::server::{self, Health};
use config::{ConfigError, ControllerConfig};
use leader::{Elector, LeaseSettings};
use reconcile::Shared;

/// The layer cache's directory under the work directory.
const LAYER_CACHE_DIR: &str = "layer-cache";
/// Layer cache entries kept in memory (each a few hundred bytes).
const LAYER_CACHE_ENTRIES: usize = 20_000;

/// How the controller process runs (flags of `imagebuild controller`).
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub listen: SocketAddr,
    pub leader_elect: bool,
    pub lease_name: String,
    pub lease_namespace: Option<String>,
    pub identity: String,
    pub concurrency: u16,
    pub work_dir: PathBuf,
    /// Reader Pods for PersistentVolumeClaim contexts; `None` turns them off.
    pub readers: Option<pvc::ReaderSettings>,
    /// How often each Succeeded ImageBuild's base and tags are checked in the registry; `None`
    /// turns the checks off.
    pub registry_check_interval: Option<Duration>,
    /// Roll new digests out to opted-in workloads (and watch them); `false` leaves them alone.
    pub rollouts: bool,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Readers(#[from] pvc::ReaderConfigError),
    #[error("cannot serve context uploads on {addr}: {source}")]
    ContextListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve health and metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--leader-elect needs --lease-namespace or the POD_NAMESPACE environment variable")]
    LeaseNamespace,
    #[error("--work-dir {path} is not a writable directory: {source}")]
    WorkDir {
        path: String,
        source: std::io::Error,
    },
}

/// Runs until SIGTERM / Ctrl-C, or until leadership is lost.
pub async fn run(options: Options) -> Result<(), StartError> {
    let config = ControllerConfig::load(options.config.as_deref())?;
    std::fs::create_dir_all(&options.work_dir).map_err(|source| StartError::WorkDir {
        path: options.work_dir.display().to_string(),
        source,
    })?;
    let client = Client::try_default().await.map_err(StartError::Client)?;
    let metrics = Arc::new(Metrics::default());
    let health = Health::new(metrics.clone());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: options.listen,
            source,
        })?;
    tokio::spawn(server::serve(listener, health.clone()));
    let readers = match options.readers.clone() {
        Some(settings) => Some(serve_uploads(settings).await?),
        None => None,
    };

    let elector = if options.leader_elect {
        let namespace = options
            .lease_namespace
            .clone()
            .ok_or(StartError::LeaseNamespace)?;
        let elector = Elector::new(
            client.clone(),
            LeaseSettings {
                name: options.lease_name.clone(),
                namespace,
                identity: options.identity.clone(),
                lease_duration: Duration::from_secs(15),
                retry_period: Duration::from_secs(2),
            },
        );
        // A standby replica is healthy and ready: it serves nothing but waits its turn.
        health.set_ready(true);
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown_signal() => return Ok(()),
        }
        health.set_ready(false);
        Some(elector)
    } else {
        None
    };

    let shared = Arc::new(Shared {
        client: client.clone(),
        recorder: events::Events::new(
            client.clone(),
            Reporter {
                controller: "imagebuild-controller".into(),
                instance: Some(options.identity.clone()),
            },
        ),
        metrics,
        build_slots: Semaphore::new(usize::from(options.concurrency.max(1))),
        secrets: secrets::SecretCache::default(),
        work_dir: options.work_dir.clone(),
        layer_cache: crate::layer::LayerCache::new(options.work_dir.join(LAYER_CACHE_DIR))
            .with_memory(LAYER_CACHE_ENTRIES),
        config,
        readers,
        checks: drift::Checks::new(
            options.registry_check_interval,
            usize::from(options.concurrency.max(1)),
        ),
    });
    // The controller wants a Sync trigger; the lease renewal loop runs in its own task.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        match elector {
            Some(elector) => tokio::select! {
                () = elector.hold() => tracing::warn!("lost leadership; stopping"),
                () = shutdown_signal() => {}
            },
            None => shutdown_signal().await,
        }
        let _ = stop_tx.send(());
    });
    let stop = async move {
        let _ = stop_rx.await;
    };
    controller(client, shared, health, &options, stop).await;
    Ok(())
}

async fn controller(
    client: Client,
    shared: Arc<Shared>,
    health: Health,
    options: &Options,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let concurrency = options.concurrency;
    let builds: Api<ImageBuild> = Api::all(client.clone());
    let controller = Controller::new(builds, watcher::Config::default().any_semantic())
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(concurrency.saturating_mul(2).max(2)),
        )
        .trigger_backoff(backoff::WatchBackoff::default());
    let store = controller.store();
    let ready_store = store.clone();
    tokio::spawn(async move {
        // Polled in short rounds: the store's readiness signal wakes only its latest waiter, and
        // the controller's own runner waits on it too.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), ready_store.wait_until_ready())
                .await
            {
                Ok(Ok(())) => {
                    tracing::info!("ImageBuild cache synced; ready");
                    health.set_ready(true);
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    });

    let config_maps = watcher(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects();
    let secret_cache = shared.clone();
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .inspect_ok(move |event| secret_cache.secrets.observe(event))
    .touched_objects();
    let workloads = options
        .rollouts
        .then(|| rollout::Rollouts::watch(&client, store.clone()));
    if workloads.is_none() {
        tracing::info!(
            "rollouts are off (--rollouts=false): workloads are neither watched nor written"
        );
    }
    let cm_store = store.clone();
    let secret_store = store;
    let secret_shared = shared.clone();
    let controller = controller
        .watches_stream(config_maps, move |cm| {
            users_of_config_map(
                &cm_store,
                &cm.namespace().unwrap_or_default(),
                &cm.name_any(),
            )
        })
        .watches_stream(secrets, move |secret| {
            users_of_secret(
                &secret_store,
                &secret_shared.config,
                &secret.namespace().unwrap_or_default(),
                &secret.name_any(),
            )
        });
    let (controller, rollouts) = match workloads {
        Some((rollouts, streams)) => (
            watch_workloads(controller, &rollouts, streams, &shared),
            Some(rollouts),
        ),
        None => (controller, None),
    };
    controller
        .graceful_shutdown_on(stop)
        .run(
            move |ib, shared| rollout::reconcile_and_roll_out(ib, shared, rollouts.clone()),
            reconcile::error_policy,
            shared,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile ended with an error");
            }
        })
        .await;
}

/// Reconciles the ImageBuilds an opted-in workload names whenever it changes, and has the
/// workloads that name no existing ImageBuild told so.
fn watch_workloads(
    mut controller: Controller<ImageBuild>,
    rollouts: &Arc<rollout::Rollouts>,
    streams: Vec<(rollout::WorkloadStream, ApiResource)>,
    shared: &Arc<Shared>,
) -> Controller<ImageBuild> {
    let (changed, changes) = futures::channel::mpsc::unbounded();
    tokio::spawn(
        rollouts
            .clone()
            .warn_missing(shared.recorder.clone(), changes),
    );
    for (stream, resource) in streams {
        let changed = changed.clone();
        let kind = resource.clone();
        let stream = stream.inspect_ok(move |workload| {
            let _ = changed.unbounded_send((workload.clone(), kind.clone()));
        });
        let (rollouts, kind) = (rollouts.clone(), resource.kind.clone());
        controller = controller.watches_stream_with(
            stream,
            move |workload| rollouts.image_builds_of(&kind, &workload),
            resource,
        );
    }
    controller
}

/// ImageBuilds whose context names ConfigMap `namespace/name`.
fn users_of_config_map(
    store: &Store<ImageBuild>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<ImageBuild>> {
    store
        .state()
        .iter()
        .filter(|ib| ib.namespace().as_deref() == Some(namespace))
        .filter(|ib| {
            ib.spec
                .context
                .config_maps
                .iter()
                .flatten()
                .any(|source| source.name == name)
        })
        .map(|ib| ObjectRef::from_obj(ib.as_ref()))
        .collect()
}

/// ImageBuilds that read Secret `namespace/name`: through `spec.registry`, or through a
/// registry profile for the host they push to or pull from.
fn users_of_secret(
    store: &Store<ImageBuild>,
    config: &ControllerConfig,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<ImageBuild>> {
    let profile_hosts: Vec<String> = config
        .registries
        .iter()
        .filter(|p| {
            let ca = p
                .ca_secret
                .as_ref()
                .is_some_and(|s| s.namespace == namespace && s.name == name);
            let creds = p
                .credentials_secret
                .as_ref()
                .is_some_and(|s| s.namespace == namespace && s.name == name);
            ca || creds
        })
        .map(|p| canonical_host(&p.host))
        .collect();
    store
        .state()
        .iter()
        .filter(|ib| {
            let own = ib.namespace().as_deref() == Some(namespace)
                && ib.spec.registry.as_ref().is_some_and(|r| {
                    r.credentials_secret.as_deref() == Some(name)
                        || r.ca_secret.as_ref().is_some_and(|c| c.name == name)
                });
            // Read the way builds read them, so `from: alpine` maps to a docker.io profile.
            let hosts = [Some(ib.spec.image.as_str()), ib.spec.from.as_deref()];
            let via_profile = hosts
                .iter()
                .flatten()
                .filter_map(|r| ImageRef::parse(r).ok())
                .any(|r| profile_hosts.contains(&canonical_host(&r.registry)));
            own || via_profile
        })
        .map(|ib| ObjectRef::from_obj(ib.as_ref()))
        .collect()
}

/// Locks `mutex` even when a panic poisoned it: the maps the controller keeps behind locks are
/// consistent between any two statements.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the endpoint reader Pods send PersistentVolumeClaim contexts to.
async fn serve_uploads(settings: pvc::ReaderSettings) -> Result<pvc::Readers, StartError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::ContextListen {
            addr: settings.listen,
            source,
        })?;
    let uploads = upload::Uploads::default();
    tokio::spawn(upload::serve(listener, uploads.clone()));
    tracing::info!(url = %settings.url, image = %settings.image, "PersistentVolumeClaim contexts are read by reader Pods");
    Ok(pvc::Readers { settings, uploads })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
