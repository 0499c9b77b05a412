//! Builds through a fault-injecting proxy between the controller and Gitea: every ImageBuild
//! ends Ready with the digest a clean build gives (the CLI's, with no registry in the way), Gitea
//! serves exactly that digest under exactly the requested tags, and nothing is lost, whatever
//! the proxy does (5xx, 429 with Retry-After, resets mid-body, stalls, truncated responses), when
//! the registry is down in the middle of uploads, and when the controller is SIGKILLed again and
//! again in the middle of builds.
//!
//! `IMAGEBUILD_FAULT_BUILDS` sets the number of builds of the random-failure scenario (default
//! 20; the soak in the README runs 50).

mod common;
mod controller_support;
mod fault_proxy;
mod robustness;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use controller_support as ctl;
use fault_proxy::{CertSpec, Fault, FaultProxy, Plan};
use robustness::Controller;

const SETTLE: Duration = Duration::from_secs(420);

/// The proxy and the one controller of this binary (scenarios take turns: controllers of one
/// cluster all reconcile every ImageBuild).
struct Rig {
    proxy: FaultProxy,
    controller: Controller,
}

fn rig() -> MutexGuard<'static, Rig> {
    static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();
    RIG.get_or_init(|| Mutex::new(start_rig()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn start_rig() -> Rig {
    let env = common::env();
    let ca = std::fs::read(&env.gitea_ca).expect("gitea ca");
    let gitea_name = env.gitea.split(':').next().expect("host").to_owned();
    let proxy = FaultProxy::start(
        &env.gitea,
        &ca,
        CertSpec::for_names(&["localhost", &gitea_name]),
        Plan {
            lifetime: Duration::from_secs(1800),
            ..Plan::default()
        },
    );
    // The controller trusts the proxy's certificate through a Secret, as it would Gitea's.
    let secret = common::unique_name("fault-proxy-ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = robustness::write_file(dir.path(), "ca.crt", &proxy.cert_pem);
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        &secret,
        "-n",
        ctl::RELEASE_NAMESPACE,
        &format!("--from-file=ca.crt={}", pem.display()),
    ]);
    let endpoint = format!("https://localhost:{}", proxy.port());
    let controller = Controller::start(
        &common::unique_name("faults"),
        |config| {
            let profile = &mut config["registries"][0];
            profile["endpoint"] = endpoint.clone().into();
            profile["caSecret"] = serde_yaml::to_value(BTreeMap::from([
                ("namespace", ctl::RELEASE_NAMESPACE.to_owned()),
                ("name", secret.clone()),
                ("key", "ca.crt".to_owned()),
            ]))
            .expect("yaml");
        },
        &["--concurrency", "4"],
    );
    Rig { proxy, controller }
}

/// One build: its files (deterministic from the seed) and the ImageBuild.
struct Build {
    name: String,
    image: String,
    files: BTreeMap<String, Vec<u8>>,
}

impl Build {
    fn new(prefix: &str, seed: u64) -> Self {
        let env = common::env();
        let mut rng = fastrand::Rng::with_seed(seed);
        // Incompressible, so the layer is a real upload (about 200 KiB) that can break mid-body.
        let mut big = vec![0u8; 200 << 10];
        rng.fill(&mut big);
        let files = BTreeMap::from([
            (
                "index.html".to_owned(),
                format!("build {seed}").into_bytes(),
            ),
            ("data.bin".to_owned(), big),
        ]);
        Self {
            name: format!("{prefix}-{seed}"),
            image: env.gitea_image(&common::unique_name(prefix)),
            files,
        }
    }

    fn spec(&self) -> String {
        format!("  image: {}\n  tags: [latest, v1]\n", self.image)
    }

    fn manifests(&self, ns: &str) -> String {
        use base64::Engine;
        let data: String = self
            .files
            .iter()
            .map(|(k, v)| {
                format!(
                    "  {k}: {}\n",
                    base64::engine::general_purpose::STANDARD.encode(v)
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}-src, namespace: {ns}}}\nbinaryData:\n{data}---\napiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: {name}-src}}]}}\n{spec}---\n",
            name = self.name,
            spec = self.spec()
        )
    }

    /// The digest of the same build made by the CLI into a layout: no registry, no faults.
    fn clean_digest(&self, work: &Path) -> String {
        let dir = work.join(&self.name);
        let context = dir.join("ctx");
        std::fs::create_dir_all(&context).expect("dir");
        for (k, v) in &self.files {
            std::fs::write(context.join(k), v).expect("file");
        }
        let file = robustness::write_file(
            &dir,
            "ib.yaml",
            &format!(
                "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {}}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n{}",
                self.name,
                self.spec()
            ),
        );
        let layout = dir.join("layout");
        common::run_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
                .env_remove("SOURCE_DATE_EPOCH")
                .args(["build", "-f"])
                .arg(&file)
                .arg("--context")
                .arg(&context)
                .arg("--output")
                .arg(&layout),
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                .expect("index json");
        index["manifests"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    }
}

/// Server-side apply: client-side apply would copy the data into an annotation, over its limit.
fn apply(manifests: &str) {
    let out = common::env().kubectl_stdin(&["apply", "--server-side", "-f", "-"], manifests);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tags Gitea lists for `image`.
fn tags(image: &str) -> Vec<String> {
    let env = common::env();
    let certs = env.cert_dir(&env.gitea_ca);
    let out = common::run_ok(env.cmd("skopeo").args([
        "list-tags",
        "--cert-dir",
        &certs.path().to_string_lossy(),
        "--creds",
        &env.gitea_creds(),
        &format!("docker://{image}"),
    ]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("tags json");
    let mut tags: Vec<String> = json["Tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

/// Waits for every build to be Ready and checks digest, tags and content against a clean build.
/// Returns the attempts each took.
fn assert_all_ready_with_clean_digests(ns: &str, builds: &[Build]) -> Vec<u64> {
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let deadline = Instant::now() + SETTLE;
    let mut attempts = Vec::new();
    for build in builds {
        let left = deadline.saturating_duration_since(Instant::now());
        let ib = ctl::wait_for(ns, &build.name, left, |ib| {
            ib["status"]["phase"] == "Succeeded"
                && ib["status"]["observedGeneration"] == ib["metadata"]["generation"]
        });
        let digest = ib["status"]["digest"].as_str().expect("digest").to_owned();
        assert_eq!(
            digest,
            build.clean_digest(work.path()),
            "{}: not the clean build's digest",
            build.name
        );
        for tag in ["latest", "v1"] {
            assert_eq!(
                ctl::registry_digest(env, &build.image, tag).as_deref(),
                Some(digest.as_str()),
                "{}: Gitea serves another manifest for {tag}",
                build.name
            );
        }
        assert_eq!(tags(&build.image), ["latest", "v1"], "{}: tags", build.name);
        attempts.push(ib["status"]["attempts"].as_u64().unwrap_or(1));
    }
    // Every blob arrives intact: skopeo verifies each digest as it copies.
    for build in builds.iter().step_by(5) {
        let digest = ctl::registry_digest(env, &build.image, "latest").expect("digest");
        drop(ctl::pull_and_unpack(
            env,
            &format!("{}@{digest}", build.image),
        ));
    }
    attempts
}

fn builds_requested() -> u64 {
    std::env::var("IMAGEBUILD_FAULT_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn random_registry_failures_at_20_percent_lose_nothing() {
    let rig = rig();
    let started = Instant::now();
    let ns = controller_support::namespace("faults-random");
    let n = builds_requested();
    let builds: Vec<Build> = (0..n).map(|i| Build::new("random", i)).collect();
    let before = rig.proxy.stats.injected();
    rig.proxy.set_plan(|p| {
        p.rate = 0.2;
        p.faults = Fault::ALL.to_vec();
        p.stall = Duration::from_secs(3);
    });
    let manifests: String = builds.iter().map(|b| b.manifests(&ns)).collect();
    apply(&manifests);
    let attempts = assert_all_ready_with_clean_digests(&ns, &builds);
    rig.proxy.set_plan(|p| p.rate = 0.0);
    let after = rig.proxy.stats.injected();
    let injected: BTreeMap<&String, u64> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0)))
        .collect();
    eprintln!(
        "{n} builds Ready under 20% faults in {:?}; injected {injected:?}; attempts {attempts:?}; {} requests",
        started.elapsed(),
        rig.proxy
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(injected.values().sum::<u64>() > 0, "no fault was injected");
    assert!(rig.controller.healthy());
}

#[test]
fn a_registry_outage_in_the_middle_of_uploads_ends_with_the_same_digests() {
    let rig = rig();
    let started = Instant::now();
    let ns = controller_support::namespace("faults-outage");
    let builds: Vec<Build> = (0..6).map(|i| Build::new("outage", 100 + i)).collect();
    let manifests: String = builds.iter().map(|b| b.manifests(&ns)).collect();
    apply(&manifests);
    // Let the uploads begin, then the registry is gone (refused and broken connections) for 8 s.
    let requests = &rig.proxy.stats.requests;
    let start = requests.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while requests.load(std::sync::atomic::Ordering::Relaxed) < start + 5
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    rig.proxy.set_plan(|p| {
        p.rate = 1.0;
        p.faults = vec![Fault::ServiceUnavailable, Fault::ResetMidBody];
    });
    std::thread::sleep(Duration::from_secs(8));
    rig.proxy.set_plan(|p| p.rate = 0.0);
    assert_all_ready_with_clean_digests(&ns, &builds);
    eprintln!(
        "8 s registry outage mid-upload: 6 builds Ready with clean digests in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_controller_killed_again_and_again_mid_build_ends_with_clean_digests() {
    let mut rig = rig();
    let started = Instant::now();
    let ns = controller_support::namespace("faults-kill");
    let builds: Vec<Build> = (0..8).map(|i| Build::new("killed", 200 + i)).collect();
    // Slow uploads (stalls) keep builds in flight when the controller dies.
    rig.proxy.set_plan(|p| {
        p.rate = 0.3;
        p.faults = vec![Fault::Stall];
        p.stall = Duration::from_secs(2);
    });
    let manifests: String = builds.iter().map(|b| b.manifests(&ns)).collect();
    apply(&manifests);
    let mut kills = 0;
    for round in 0..4 {
        // The first kill comes early: on a quiet machine small builds finish within seconds.
        let pause = if round == 0 { 600 } else { 2500 };
        std::thread::sleep(Duration::from_millis(pause));
        let in_flight = builds
            .iter()
            .filter(|b| ctl::get_ib(&ns, &b.name)["status"]["phase"] != "Succeeded")
            .count();
        if in_flight == 0 {
            break;
        }
        rig.controller.restart();
        kills += 1;
    }
    rig.proxy.set_plan(|p| p.rate = 0.0);
    assert!(kills > 0, "every build finished before the first kill");
    assert_all_ready_with_clean_digests(&ns, &builds);
    let log = rig.controller.log_text();
    assert!(!log.contains("panicked"), "controller panicked");
    eprintln!(
        "controller SIGKILLed {kills} times mid-build; all {} builds Ready with clean digests in {:?}",
        builds.len(),
        started.elapsed()
    );
}
