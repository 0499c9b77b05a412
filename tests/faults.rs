//! Builds through a fault-injecting proxy between the controller and Gitea: every ImageBuild
//! ends Ready with the digest a clean build gives (the CLI's, with no registry in the way), Gitea
//! serves exactly that digest under exactly the requested tags, and nothing is lost, whatever
//! the proxy does (5xx, 429 with Retry-After, resets mid-body, stalls, truncated responses), when
//! the registry is down in the middle of uploads, and when the controller is SIGKILLed again and
//! again in the middle of builds (then each generation also gets exactly one final status write).
//!
//! Every fourth build of the random-failure scenario is a two-platform build (an image index of
//! linux/amd64 and linux/arm64 children sharing one layer): it ends with the clean build's index
//! digest too, and Gitea serves that index with both children, every blob of each intact.
//!
//! `IMAGEBUILD_FAULT_BUILDS` sets the number of builds of the random-failure scenario (default
//! 20; the soak in the README runs 50).

mod common;
mod controller_support;
mod fault_proxy;
mod robustness;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use controller_support as ctl;
use fault_proxy::{CertSpec, Fault, FaultProxy, Plan};
use imagebuild::oci::Digest;
use robustness::Controller;
use robustness::builds::{Build, apply, assert_all_ready_with_clean_digests};
use robustness::status_log::{StatusLog, assert_one_final_write_per_generation};
use serde_json::Value;

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
    let controller = Controller::start_with_registry_endpoint(
        &common::unique_name("faults"),
        &format!("https://localhost:{}", proxy.port()),
        &proxy.cert_pem,
        &["--concurrency", "4"],
    );
    Rig { proxy, controller }
}

fn builds_requested() -> u64 {
    std::env::var("IMAGEBUILD_FAULT_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// Build `i` of the random-failure scenario: every fourth (1, 5, 9, ...) asks for two platforms.
fn random_build(i: u64) -> Build {
    let mut build = Build::new("random", i);
    if i % 4 == 1 {
        build.extra_spec = format!("  platforms: [{}]\n", PLATFORMS.join(", "));
    }
    build
}

fn is_two_platform(build: &Build) -> bool {
    build.extra_spec.contains("platforms:")
}

/// `reference`'s manifest as Gitea serves it (no proxy in the way), checked against `digest`.
fn served_manifest(reference: &str, digest: &str) -> Value {
    let env = common::env();
    let raw = env
        .raw_manifest(&env.gitea_ca, &env.gitea_creds(), reference)
        .unwrap_or_else(|| panic!("Gitea does not serve {reference}"));
    assert_eq!(Digest::of(&raw).to_string(), digest, "{reference}: digest");
    serde_json::from_slice(&raw).expect("manifest json")
}

/// The config blob of the image manifest `reference` (image@digest) as Gitea serves it.
fn served_config(reference: &str) -> Value {
    let env = common::env();
    env.served_config((&env.gitea_ca, &env.gitea_creds()), reference, None)
}

/// For two-platform builds already checked Ready with the clean index digest under both tags:
/// Gitea serves that digest as an OCI image index of linux/amd64 then linux/arm64,
/// status.platforms lists the same children, Gitea serves each child by its digest with its
/// architecture in its config, the children share one layer, and every blob of each child
/// arrives intact (skopeo verifies digests as it copies) and holds the build's files.
fn assert_served_as_two_platform_indexes(ns: &str, builds: &[&Build]) {
    for build in builds {
        let ib = ctl::get_ib(ns, &build.name);
        let digest = ib["status"]["digest"].as_str().expect("status.digest");
        let index = served_manifest(&format!("{}@{digest}", build.image), digest);
        assert_eq!(
            index["mediaType"], "application/vnd.oci.image.index.v1+json",
            "{}: not an index: {index:#}",
            build.name
        );
        let children = common::index_children(&index);
        let platforms: Vec<&str> = children.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(platforms, PLATFORMS, "{}: {index:#}", build.name);
        let reported = common::status_platforms(&ib);
        assert_eq!(reported, children, "{}: status.platforms", build.name);
        let mut layers = Vec::new();
        for (platform, child_digest) in &children {
            let child_ref = format!("{}@{child_digest}", build.image);
            let child = served_manifest(&child_ref, child_digest);
            assert_eq!(
                child["mediaType"], "application/vnd.oci.image.manifest.v1+json",
                "{}: {platform} child",
                build.name
            );
            let arch = platform.split_once('/').expect("os/arch").1;
            assert_eq!(
                served_config(&child_ref)["architecture"],
                arch,
                "{}: {platform} child's config",
                build.name
            );
            layers.push(child["layers"].clone());
            let bundle = ctl::pull_and_unpack(common::env(), &child_ref);
            for (name, content) in &build.files {
                let path = bundle.path().join("bundle/rootfs").join(name);
                assert!(
                    std::fs::read(&path).ok().as_ref() == Some(content),
                    "{}: {platform} child: {name} is not the build's file",
                    build.name
                );
            }
        }
        assert_eq!(
            layers[0], layers[1],
            "{}: the children share one layer",
            build.name
        );
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn random_registry_failures_at_20_percent_lose_nothing() {
    let rig = rig();
    let started = Instant::now();
    let ns = controller_support::namespace("faults-random");
    let n = builds_requested();
    let builds: Vec<Build> = (0..n).map(random_build).collect();
    let two_platform: Vec<&Build> = builds.iter().filter(|b| is_two_platform(b)).collect();
    let before = rig.proxy.stats.injected();
    rig.proxy.set_plan(|p| {
        p.rate = 0.2;
        p.faults = Fault::ALL.to_vec();
        p.stall = Duration::from_secs(3);
    });
    let manifests: String = builds.iter().map(|b| b.manifests(&ns)).collect();
    apply(&manifests);
    // The clean digest of a two-platform build is the index digest of the CLI's layout.
    let attempts = assert_all_ready_with_clean_digests(&ns, &builds);
    rig.proxy.set_plan(|p| p.rate = 0.0);
    assert_served_as_two_platform_indexes(&ns, &two_platform);
    let after = rig.proxy.stats.injected();
    let injected: BTreeMap<&String, u64> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0)))
        .collect();
    eprintln!(
        "{n} builds ({} of them two-platform indexes) Ready under 20% faults in {:?}; injected {injected:?}; attempts {attempts:?}; {} requests",
        two_platform.len(),
        started.elapsed(),
        rig.proxy
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(injected.values().sum::<u64>() > 0, "no fault was injected");
    assert!(
        n < 2 || !two_platform.is_empty(),
        "no two-platform build among {n}"
    );
    assert!(rig.controller.healthy());
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
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
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_controller_killed_again_and_again_mid_build_ends_with_clean_digests_written_once() {
    let mut rig = rig();
    let started = Instant::now();
    let ns = controller_support::namespace("faults-kill");
    let builds: Vec<Build> = (0..8).map(|i| Build::new("killed", 200 + i)).collect();
    let status_log = StatusLog::start(&ns);
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
    // A late write (a restarted controller redoing a finished build) would show up here.
    std::thread::sleep(Duration::from_secs(3));
    assert_one_final_write_per_generation(&status_log);
    let writes: Vec<usize> = status_log.writes().values().map(|w| w.writes).collect();
    eprintln!(
        "controller SIGKILLed {kills} times mid-build; all {} builds Ready with clean digests in {:?}; status writes per generation {writes:?}, one final each",
        builds.len(),
        started.elapsed()
    );
}
