//! Keeping the registry as declared, against the real Gitea: a controller that checks every
//! Succeeded ImageBuild every few seconds puts back a tag deleted through Gitea's API or
//! overwritten by another push, builds again on a base image that was pushed anew, and leaves
//! Ready alone (RegistryInSync=Unknown) while Gitea is stopped; 200 Ready ImageBuilds are checked
//! spread over the interval with no more checks in flight than the limit, and the requests per
//! check are reported (`cargo test --test drift -- --ignored --nocapture` prints the figures).

mod common;
mod controller_support;
mod robustness;

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::TestEnv;
use controller_support as ctl;
use robustness::Controller;
use serde_json::Value;

/// One controller at a time: each test runs its own, with its own interval.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const SETTLE: Duration = Duration::from_secs(120);

fn controller(interval: &str) -> Controller {
    Controller::start(
        &common::unique_name("drift"),
        |_| {},
        &["--registry-check-interval", interval, "--concurrency", "4"],
    )
}

fn site(ns: &str, name: &str, image: &str, body: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}-src, namespace: {ns}}}\ndata: {{index.html: {body:?}}}\n---\napiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: {name}-src}}]}}\n  image: {image}\n  tags: [latest, v1]\n{extra_spec}\n"
    )
}

/// A ConfigMap + ImageBuild `name` (tags latest and v1) in a new namespace, applied and Ready:
/// the namespace, the image repository and the ImageBuild as it is then.
fn ready_site(name: &str, body: &str, extra_spec: &str) -> (ctl::Namespace, String, Value) {
    let env = common::env();
    let ns = ctl::namespace(&format!("drift-{name}"));
    let image = env.gitea_image(&common::unique_name(name));
    env.kubectl_apply(&site(&ns.name, name, &image, body, extra_spec));
    let ib = ctl::wait_for(&ns.name, name, SETTLE, |ib| ready_digest(ib).is_some());
    (ns, image, ib)
}

fn ready_digest(ib: &Value) -> Option<String> {
    let ready = ctl::ready(ib)?;
    (ready.0 == "True" && ib["status"]["phase"] == "Succeeded")
        .then(|| ib["status"]["digest"].as_str().map(str::to_owned))
        .flatten()
}

/// The RegistryInSync condition's (status, reason, message).
fn in_sync(ib: &Value) -> Option<(String, String, String)> {
    let c = ib["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "RegistryInSync")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Waits until the registry serves `image:tag` as `want` (`None`: not at all).
fn wait_for_tag(env: &TestEnv, image: &str, tag: &str, want: Option<&str>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let served = ctl::registry_digest(env, image, tag);
        if served.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{image}:{tag} is {served:?} after {timeout:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Reasons and notes of the events about ImageBuild `name`.
fn event_notes(ns: &str, name: &str, reason: &str) -> Vec<String> {
    ctl::events(ns, name)
        .into_iter()
        .filter(|e| e.1 == reason)
        .map(|e| e.2)
        .collect()
}

/// Deletes `image:tag` the way a user does in Gitea's UI: the package version, through Gitea's
/// API with the admin's token.
fn delete_in_gitea(env: &TestEnv, image: &str, tag: &str) {
    let name = image.rsplit('/').next().expect("image name");
    let url = format!(
        "https://{}/api/v1/packages/{}/container/{name}/{tag}",
        env.gitea, env.gitea_owner
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
        ])
        .arg("--cacert")
        .arg(&env.gitea_ca)
        .args(["-H", &format!("Authorization: token {}", env.gitea_token)])
        .arg(&url)
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        code,
        "204",
        "DELETE {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes a scratch image holding `file` = `text` to `image:tag` with the CLI (another client
/// pushing, as far as the controller knows). Returns the pushed digest.
fn push_other(
    env: &TestEnv,
    work: &Path,
    image: &str,
    tag: &str,
    file: &str,
    text: &str,
) -> String {
    let context = work.join(format!("ctx-{tag}-{}", common::unique_name("c")));
    std::fs::create_dir_all(&context).expect("context dir");
    std::fs::write(context.join(file), text).expect("context file");
    let yaml = work.join(format!("{}.yaml", common::unique_name("other")));
    std::fs::write(
        &yaml,
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: other}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {image}\n  tags: [\"{tag}\"]\n"
        ),
    )
    .expect("ImageBuild file");
    let pushed = env.push_build_to_gitea(&yaml, &context);
    pushed
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .expect("image@digest")
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_tag_deleted_in_gitea_or_overwritten_by_another_push_points_to_the_digest_again() {
    let _serial = serial();
    let env = common::env();
    let _controller = controller("3s");
    let (ns, image, ib) = ready_site("kept", "kept", "");
    let digest = ready_digest(&ib).expect("digest");
    assert_eq!(in_sync(&ib).map(|c| c.0).as_deref(), Some("True"), "{ib:#}");

    // Deleted through Gitea's API: Gitea drops the manifest with the tag, so it comes back from
    // a build of the same inputs, with the same digest.
    // (Gitea answered 204; the next check may put the tag back before a HEAD of ours could see
    // it gone, so the proof that it was gone is the event below.)
    delete_in_gitea(env, &image, "v1");
    let started = Instant::now();
    wait_for_tag(env, &image, "v1", Some(&digest), Duration::from_secs(60));
    let restored_in = started.elapsed();
    wait_for_tag(env, &image, "latest", Some(&digest), Duration::from_secs(5));
    let ib = ctl::wait_for(&ns.name, "kept", SETTLE, |ib| ready_digest(ib).is_some());
    assert_eq!(ready_digest(&ib).as_deref(), Some(digest.as_str()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while event_notes(&ns.name, "kept", "TagRestored").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let notes = event_notes(&ns.name, "kept", "TagRestored");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("tag v1") && n.contains("was missing") && n.contains(&digest)),
        "{notes:?}"
    );

    // Overwritten by someone else's push: put back by re-tagging, and the event names what the
    // tag pointed to.
    let work = tempfile::tempdir().expect("tempdir");
    let other = push_other(env, work.path(), &image, "latest", "index.html", "not ours");
    assert_ne!(other, digest);
    let started_overwrite = Instant::now();
    wait_for_tag(
        env,
        &image,
        "latest",
        Some(&digest),
        Duration::from_secs(60),
    );
    let overwrite_in = started_overwrite.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pointed = |notes: &[String]| {
        notes
            .iter()
            .any(|n| n.contains("tag latest") && n.contains(&format!("pointed to {other}")))
    };
    while !pointed(&event_notes(&ns.name, "kept", "TagRestored")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let notes = event_notes(&ns.name, "kept", "TagRestored");
    assert!(pointed(&notes), "{notes:?}");
    let ib = ctl::get_ib(&ns.name, "kept");
    assert_eq!(ready_digest(&ib).as_deref(), Some(digest.as_str()));
    eprintln!(
        "with a 3 s interval: deleted tag back in {restored_in:.1?}, overwritten tag back in {overwrite_in:.1?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn an_image_is_built_again_on_a_base_that_was_pushed_anew() {
    let _serial = serial();
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let base = env.gitea_image(&common::unique_name("movingbase"));
    let first = push_other(env, work.path(), &base, "1", "base.txt", "first base");
    let _controller = controller("3s");
    let ns = ctl::namespace("drift-base");
    let image = env.gitea_image(&common::unique_name("onbase"));
    env.kubectl_apply(&site(
        &ns.name,
        "onbase",
        &image,
        "app",
        &format!("  from: {base}:1"),
    ));
    let ib = ctl::wait_for(&ns.name, "onbase", SETTLE, |ib| ready_digest(ib).is_some());
    let old_digest = ready_digest(&ib).expect("digest");
    assert_eq!(ib["status"]["baseDigest"].as_str(), Some(first.as_str()));

    let second = push_other(env, work.path(), &base, "1", "base.txt", "second base");
    assert_ne!(first, second);
    let started = Instant::now();
    let ib = ctl::wait_for(&ns.name, "onbase", Duration::from_secs(90), |ib| {
        ib["status"]["baseDigest"].as_str() == Some(second.as_str()) && ready_digest(ib).is_some()
    });
    let rebuilt_in = started.elapsed();
    let new_digest = ready_digest(&ib).expect("digest");
    assert_ne!(new_digest, old_digest, "{ib:#}");
    // The registry serves the new image under every tag, and it stands on the new base.
    for tag in ["latest", "v1"] {
        assert_eq!(
            ctl::registry_digest(env, &image, tag).as_deref(),
            Some(new_digest.as_str())
        );
    }
    let unpacked = ctl::pull_and_unpack(env, &format!("{image}@{new_digest}"));
    let rootfs = unpacked.path().join("bundle/rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("base.txt")).expect("base.txt"),
        "second base"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("index.html")).expect("index.html"),
        "app"
    );
    let notes = event_notes(&ns.name, "onbase", "BaseImageChanged");
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&first) && n.contains(&second)),
        "{notes:?}"
    );
    eprintln!("with a 3 s interval: rebuilt on the new base in {rebuilt_in:.1?}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn while_gitea_is_stopped_ready_stays_and_registry_in_sync_is_unknown_until_it_is_back() {
    let _serial = serial();
    let env = common::env();
    let _controller = controller("2s");
    let (ns, _image, ib) = ready_site("outage", "outage", "");
    let digest = ready_digest(&ib).expect("digest");
    let completed = ib["status"]["completionTime"].clone();

    let _restore = common::ComponentsRestored;
    common::restart_components(&["stop", "gitea"]).expect("stop Gitea");
    let ib = ctl::wait_for(&ns.name, "outage", Duration::from_secs(60), |ib| {
        in_sync(ib).is_some_and(|c| c.0 == "Unknown")
    });
    let (_, reason, message) = in_sync(&ib).expect("condition");
    assert_eq!(
        ready_digest(&ib).as_deref(),
        Some(digest.as_str()),
        "{ib:#}"
    );
    assert_eq!(ib["status"]["completionTime"], completed, "no build ran");
    assert!(
        message.contains(env.gitea.split(':').next().expect("host")),
        "{reason}: {message}"
    );
    // It stays that way while Gitea is down: never a failed build.
    std::thread::sleep(Duration::from_secs(6));
    let ib = ctl::get_ib(&ns.name, "outage");
    assert_eq!(
        ready_digest(&ib).as_deref(),
        Some(digest.as_str()),
        "{ib:#}"
    );

    common::restart_components(&["start"]).expect("start Gitea");
    let ib = ctl::wait_for(&ns.name, "outage", Duration::from_secs(120), |ib| {
        in_sync(ib).is_some_and(|c| c.0 == "True")
    });
    assert_eq!(ready_digest(&ib).as_deref(), Some(digest.as_str()));
    assert_eq!(ib["status"]["completionTime"], completed, "no build ran");
    eprintln!(
        "Gitea stopped: RegistryInSync Unknown ({reason}: {message}); back to True after restart"
    );
}

/// The value of `name` (a counter or gauge, summed over its labels) in a text exposition.
fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Lines of Gitea's log that record a HEAD of a manifest.
fn gitea_manifest_heads() -> usize {
    let log = common::env().dir.join("logs/gitea.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("completed HEAD /v2/") && l.contains("/manifests/"))
        .count()
}

/// apiserver_request_total over all labels.
fn api_requests() -> f64 {
    let text = common::env().kubectl(&["get", "--raw", "/metrics"]);
    metric_sum(&text, "apiserver_request_total")
}

/// CPU seconds (user + system) of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn two_hundred_ready_imagebuilds_are_checked_spread_over_the_interval() {
    const BUILDS: usize = 200;
    const CONCURRENCY: f64 = 4.0;
    const WINDOW: Duration = Duration::from_secs(30);
    let _serial = serial();
    let env = common::env();
    let controller = controller("10s");
    let ns = ctl::namespace("drift-load");
    let mut manifests = String::new();
    for i in 0..BUILDS {
        let image = env.gitea_image(&common::unique_name(&format!("check{i}")));
        manifests.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}-src, namespace: {}}}\ndata: {{index.html: \"check {i}\"}}\n---\napiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: c{i}, namespace: {}}}\nspec:\n  context: {{configMaps: [{{name: c{i}-src}}]}}\n  image: {image}\n---\n",
            ns.name, ns.name
        ));
    }
    let out = env.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &manifests);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let list: Value = serde_json::from_str(&env.kubectl(&[
            "get",
            "imagebuilds",
            "-n",
            &ns.name,
            "-o",
            "json",
        ]))
        .expect("list");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ready = items.iter().filter(|ib| ready_digest(ib).is_some()).count();
        if ready == BUILDS {
            break;
        }
        assert!(Instant::now() < deadline, "only {ready} of {BUILDS} Ready");
        std::thread::sleep(Duration::from_secs(1));
    }
    // Every Succeeded ImageBuild in the cluster is checked, those of earlier suites too.
    let all: Value =
        serde_json::from_str(&env.kubectl(&["get", "imagebuilds", "-A", "-o", "json"]))
            .expect("list all");
    let checked_builds = all["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|ib| ib["status"]["phase"] == "Succeeded")
                .count()
        })
        .unwrap_or(BUILDS);

    // Let the first round of checks (each at its moment within the first interval) start.
    std::thread::sleep(Duration::from_secs(10));
    let pid = controller.pid().expect("controller pid");
    let checks_at = |m: &str| metric_sum(m, "imagebuild_registry_checks_total");
    let first = controller.metrics();
    let (checks0, heads0, api0, cpu0) = (
        checks_at(&first),
        gitea_manifest_heads(),
        api_requests(),
        cpu_seconds(pid),
    );
    let unreachable0 = first
        .lines()
        .filter(|l| l.starts_with("imagebuild_registry_checks_total{result=\"unreachable\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>();
    let started = Instant::now();
    let mut per_second: Vec<f64> = Vec::new();
    let mut last = checks0;
    let mut next_second = started + Duration::from_secs(1);
    let mut peak_in_flight = 0.0_f64;
    while started.elapsed() < WINDOW {
        let metrics = controller.metrics();
        peak_in_flight =
            peak_in_flight.max(metric_sum(&metrics, "imagebuild_registry_checks_in_flight"));
        if Instant::now() >= next_second {
            let now = checks_at(&metrics);
            per_second.push(now - last);
            last = now;
            next_second += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let last_metrics = controller.metrics();
    let checks = checks_at(&last_metrics) - checks0;
    let heads = (gitea_manifest_heads() - heads0) as f64;
    let api = api_requests() - api0;
    let cpu = cpu_seconds(pid) - cpu0;
    let seconds = started.elapsed().as_secs_f64();
    let mean = per_second.iter().sum::<f64>() / per_second.len().max(1) as f64;
    let busiest = per_second.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{checked_builds} Succeeded ImageBuilds ({BUILDS} of this test), interval 10 s, \
         concurrency 4, over {seconds:.1} s: {checks:.0} checks ({:.2} per ImageBuild per 10 s), \
         {mean:.1}/s on average, busiest second {busiest:.0}; peak in flight {peak_in_flight}; \
         per check: {:.2} manifest HEADs at Gitea, {:.2} API server requests, {:.2} ms controller CPU; \
         unreachable before the window {unreachable0}",
        checks / checked_builds as f64 * 10.0 / seconds,
        heads / checks.max(1.0),
        api / checks.max(1.0),
        cpu * 1000.0 / checks.max(1.0),
    );
    let per_interval = checks / checked_builds as f64 * 10.0 / seconds;
    assert!(
        (0.8..=1.3).contains(&per_interval),
        "each ImageBuild should be checked once per interval; got {per_interval:.2}"
    );
    assert!(
        busiest <= 3.0 * mean.max(1.0),
        "checks are not spread: per second {per_second:?}"
    );
    assert!(
        peak_in_flight <= CONCURRENCY,
        "{peak_in_flight} checks in flight with concurrency {CONCURRENCY}"
    );
    assert!(controller.healthy());
}
