//! The `imagebuild` command: the controller, and the build / images / push / list / tag / delete
//! workflow for use outside the cluster. Each subcommand is a thin call into the library.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use imagebuild::cli::{self, OutputFlags, RegistryFlags};
use imagebuild::controller;
use imagebuild::controller::pvc::{ReaderFlags, ReaderSettings};
use imagebuild::transfer;

#[derive(Parser)]
#[command(
    name = "imagebuild",
    version,
    about = "Files in, OCI image in the registry out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ImageBuild controller (in-cluster config or KUBECONFIG).
    Controller(ControllerArgs),
    /// Build DIR (or the ImageBuild in FILE) with the controller's builder; keep the image in
    /// the local store, write an OCI layout, or push.
    Build(BuildArgs),
    /// List the images of the local store.
    Images,
    /// Push an image of the local store, or an OCI image layout, to a registry.
    Push {
        /// A local image (host/owner/name:tag), or an OCI image layout directory (optionally
        /// LAYOUT:TAG to pick one of several tags).
        source: String,
        /// Destination, e.g. gitea.cnoe.localtest.me:8443/giteaadmin/hello:latest (default for
        /// a local image: its own name).
        reference: Option<String>,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// List the tags of a repository.
    List {
        /// Repository, e.g. gitea.cnoe.localtest.me:8443/giteaadmin/hello
        repository: String,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Show the digest an image reference resolves to and the platform of each image it
    /// holds (one line each: platform, then manifest digest).
    Inspect {
        /// Image, e.g. host/owner/app:latest or host/owner/app@sha256:...
        reference: String,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Give a local image another name; or add a tag to an image already in the registry,
    /// without uploading anything.
    Tag {
        /// Existing image: a local name, or host/owner/app:latest or host/owner/app@sha256:...
        reference: String,
        /// The new tag (for a local image also a whole name, host/owner/name:tag).
        new_tag: String,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Remove a name from the local store, and the blobs no other name uses.
    Rmi {
        /// Local image, e.g. gitea.cnoe.localtest.me:8443/giteaadmin/hello:latest
        reference: String,
    },
    /// Write a local image as an OCI archive (a tar of an OCI image layout).
    Save {
        /// Local image, e.g. gitea.cnoe.localtest.me:8443/giteaadmin/hello:latest
        reference: String,
        /// The archive to write.
        #[arg(short = 'o', long = "output", value_name = "FILE.tar")]
        archive: PathBuf,
    },
    /// Delete a tag (or, with @sha256:..., a manifest) from a registry.
    Delete {
        /// e.g. host/owner/app:old or host/owner/app@sha256:...
        reference: String,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Print a shell completion script: imagebuild completion bash > /etc/bash_completion.d/imagebuild
    Completion { shell: clap_complete::Shell },
    /// Print the ImageBuild CustomResourceDefinition YAML.
    Crd,
    /// Send a directory to the controller as a build context (what reader Pods of
    /// PersistentVolumeClaim contexts run; the one-time token comes in IMAGEBUILD_CONTEXT_TOKEN).
    SendContext(SendContextArgs),
}

#[derive(Args)]
struct SendContextArgs {
    /// Where the claim is mounted.
    #[arg(long)]
    dir: PathBuf,
    /// The context root inside it (spec.context.persistentVolumeClaim.subPath).
    #[arg(long)]
    sub_path: Option<String>,
    /// The controller's upload URL for this context.
    #[arg(long)]
    to: String,
}

#[derive(Args)]
struct ControllerArgs {
    /// Configuration file with registry profiles (the Helm chart renders it).
    #[arg(long, env = "IMAGEBUILD_CONFIG")]
    config: Option<PathBuf>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Only the replica holding the Lease builds.
    #[arg(long)]
    leader_elect: bool,
    #[arg(long, default_value = "imagebuild-controller")]
    lease_name: String,
    /// Namespace of the Lease (default: the Pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of this replica in the Lease and in events (default: the Pod name or host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Builds running at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// How often each Succeeded ImageBuild's base image and tags are checked in the registry
    /// (HEAD requests, spread over the interval): a moved base is built on, a lost tag pushed
    /// again. `0` turns the checks off.
    #[arg(long, default_value = "10m", value_parser = check_interval)]
    registry_check_interval: CheckInterval,
    /// Scratch directory for layers being built.
    #[arg(long, env = "IMAGEBUILD_WORK_DIR", default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Address where reader Pods send PersistentVolumeClaim contexts, e.g. 0.0.0.0:8081.
    /// Without it, ImageBuilds with a persistentVolumeClaim context fail with PvcUnsupported.
    #[arg(long, env = "IMAGEBUILD_CONTEXT_LISTEN")]
    context_listen: Option<SocketAddr>,
    /// The upload endpoint's URL as reader Pods reach it (default: http://$POD_IP:<port of
    /// --context-listen>, this very replica).
    #[arg(long, env = "IMAGEBUILD_CONTEXT_URL")]
    context_url: Option<String>,
    /// This Pod's IP address (the chart passes status.podIP).
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<IpAddr>,
    /// Image of reader Pods: the controller's own image (its entrypoint is imagebuild).
    #[arg(long, env = "IMAGEBUILD_READER_IMAGE")]
    reader_image: Option<String>,
    #[arg(long, default_value = "IfNotPresent")]
    reader_image_pull_policy: String,
    /// Resource requests and limits of reader Pods, as JSON
    /// (default {"requests":{"cpu":"10m","memory":"16Mi"},"limits":{"cpu":"500m","memory":"64Mi"}}).
    #[arg(long, env = "IMAGEBUILD_READER_RESOURCES")]
    reader_resources: Option<String>,
    /// Set the images of opted-in Deployments, StatefulSets and DaemonSets to each new digest
    /// (label imagebuild.dev/rollout="true", annotation imagebuild.dev/images). With
    /// --rollouts=false workloads are neither watched nor written.
    #[arg(long, env = "IMAGEBUILD_ROLLOUTS", default_value_t = true, action = clap::ArgAction::Set)]
    rollouts: bool,
}

#[derive(Args)]
struct BuildArgs {
    /// The directory whose files make the image's layer.
    dir: Option<PathBuf>,
    /// File with the ImageBuild (and, optionally, its ConfigMaps as further YAML documents);
    /// flags given with it override it.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Directory to use as the build context instead of the ConfigMaps in FILE.
    #[arg(long)]
    context: Option<PathBuf>,
    #[command(flatten)]
    spec: cli::SpecFlags,
    /// Write an OCI image layout here (instead of the local store).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Push to the image's registry (instead of the local store).
    #[arg(long)]
    push: bool,
    /// Build the layer even when an unchanged --context directory was pushed before (by
    /// default a push skips it when the registry still holds it; the record of pushed layers
    /// is kept in $IMAGEBUILD_CACHE_DIR, else $XDG_CACHE_HOME/imagebuild or ~/.cache/imagebuild).
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// `--registry-check-interval`: a duration, or `None` for `0`.
#[derive(Clone, Debug)]
struct CheckInterval(Option<std::time::Duration>);

fn check_interval(text: &str) -> Result<CheckInterval, String> {
    if text.trim_end_matches(['s', 'm', 'h']) == "0" {
        return Ok(CheckInterval(None));
    }
    imagebuild::controller::config::parse_duration(text)
        .map(|d| CheckInterval(Some(d)))
        .ok_or_else(|| {
            format!("`{text}` is not a duration like 30s, 10m or 1h (0 turns checks off)")
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Controller(_)) {
        "info"
    } else {
        "warn"
    };
    imagebuild::telemetry::init(level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("imagebuild: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cli.output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("imagebuild: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command, out: OutputFlags) -> Result<(), cli::Failure> {
    match command {
        Command::Controller(args) => {
            let identity = args.identity.unwrap_or_else(cli::host_name);
            let readers = ReaderSettings::from_flags(ReaderFlags {
                context_listen: args.context_listen,
                context_url: args.context_url,
                pod_ip: args.pod_ip,
                reader_image: args.reader_image,
                pull_policy: args.reader_image_pull_policy,
                resources: args.reader_resources,
            })
            .map_err(|e| cli::Failure::input(e.to_string()))?;
            let options = controller::Options {
                config: args.config,
                listen: args.listen,
                leader_elect: args.leader_elect,
                lease_name: args.lease_name,
                lease_namespace: args.lease_namespace,
                identity,
                concurrency: args.concurrency,
                work_dir: args.work_dir,
                readers,
                registry_check_interval: args.registry_check_interval.0,
                rollouts: args.rollouts,
            };
            controller::run(options)
                .await
                .map_err(cli::Failure::from_start)
        }
        Command::Build(args) => {
            let request = cli::BuildRequest {
                file: args.file,
                dir: args.dir,
                context: args.context,
                spec: args.spec,
                output: args.output,
                push: args.push,
                cache: !args.no_cache,
            };
            cli::build(request, &args.registry, &out).await
        }
        Command::Images => cli::images(&out),
        Command::Push {
            source,
            reference,
            registry,
        } => cli::push(&source, reference.as_deref(), &registry, &out).await,
        Command::List {
            repository,
            registry,
        } => cli::list(&repository, &registry, &out).await,
        Command::Inspect {
            reference,
            registry,
        } => cli::inspect(&reference, &registry).await,
        Command::Tag {
            reference,
            new_tag,
            registry,
        } => cli::tag(&reference, &new_tag, &registry, &out).await,
        Command::Rmi { reference } => cli::remove_image(&reference, &out),
        Command::Save { reference, archive } => cli::save(&reference, &archive, &out),
        Command::Delete {
            reference,
            registry,
        } => cli::delete(&reference, &registry, &out).await,
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "imagebuild",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Crd => cli::print_crd(),
        Command::SendContext(args) => send_context(args).await,
    }
}

async fn send_context(args: SendContextArgs) -> Result<(), cli::Failure> {
    let token = std::env::var(transfer::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| cli::Failure::input(transfer::SendError::NoToken.to_string()))?;
    let request = transfer::SendRequest {
        claim_root: args.dir,
        sub_path: args.sub_path,
        url: args.to,
        token,
    };
    let counts = transfer::send(request).await.map_err(|e| cli::Failure {
        code: cli::exit::OTHER,
        message: e.to_string(),
    })?;
    eprintln!(
        "imagebuild: sent {} entries, {} bytes",
        counts.entries, counts.bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_check_interval_takes_durations_and_zero_for_off() {
        assert_eq!(
            check_interval("10m").map(|c| c.0),
            Ok(Some(std::time::Duration::from_secs(600)))
        );
        for off in ["0", "0s", "0m"] {
            assert_eq!(check_interval(off).map(|c| c.0), Ok(None), "{off}");
        }
        let refused = check_interval("often").map(|c| c.0);
        assert!(refused.is_err_and(|e| e.contains("`often`")));
    }
}
