//! Load: 200 ImageBuilds applied at once complete with bounded concurrency and none starved,
//! reading the shared registry Secrets once rather than per build;
//! the controller's peak memory and the API request rate are reported (about 30 s; part of
//! `bash tests/test.sh`; `cargo test --test load -- --ignored --nocapture` prints the figures).

mod common;
mod controller_support;
mod robustness;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const BUILDS: usize = 200;
const CONCURRENCY: usize = 4;

/// apiserver_request_total summed by (verb, resource, subresource).
fn api_requests() -> BTreeMap<String, f64> {
    let text = common::env().kubectl(&["get", "--raw", "/metrics"]);
    let mut sums = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let key = format!(
            "{} {}/{}",
            label("verb"),
            label("resource"),
            label("subresource")
        );
        *sums.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    sums
}

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One line per ImageBuild: name, phase, start time and status message.
fn describe(builds: &[&serde_json::Value]) -> String {
    builds
        .iter()
        .map(|ib| {
            let ready = ib["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            format!(
                "  {} {} started {} ({})",
                ib["metadata"]["name"].as_str().unwrap_or_default(),
                ib["status"]["phase"].as_str().unwrap_or_default(),
                ib["status"]["startTime"].as_str().unwrap_or_default(),
                ready
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many events each controller instance reported in `ns`.
fn event_reporters(ns: &str) -> BTreeMap<String, usize> {
    let list: serde_json::Value = serde_json::from_str(&common::env().kubectl(&[
        "get",
        "events.events.k8s.io",
        "-n",
        ns,
        "-o",
        "json",
    ]))
    .unwrap_or_default();
    let mut by = BTreeMap::new();
    for event in list["items"].as_array().into_iter().flatten() {
        let who = event["reportingInstance"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        *by.entry(who).or_insert(0) += 1;
    }
    by
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn two_hundred_imagebuilds_complete_with_bounded_concurrency() {
    let env = common::env();
    let controller = robustness::Controller::start(
        &common::unique_name("load"),
        |_| {},
        &["--concurrency", &CONCURRENCY.to_string()],
    );
    let ns = controller_support::namespace("load");
    let mut manifests = String::new();
    for i in 0..BUILDS {
        let image = env.gitea_image(&common::unique_name(&format!("load{i}")));
        manifests.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: b{i}-src, namespace: {ns}}}\ndata: {{index.html: \"build {i}\"}}\n---\napiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: b{i}, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: b{i}-src}}]}}\n  image: {image}\n---\n"
        ));
    }
    let before = api_requests();
    let started = Instant::now();
    let out = env.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &manifests);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut done: HashMap<String, Duration> = HashMap::new();
    let mut max_in_flight = 0;
    let mut max_gauge = 0.0_f64;
    // What the first poll over the limit saw, for the failure message.
    let mut over_limit: Option<String> = None;
    let mut polls = 0;
    while done.len() < BUILDS && started.elapsed() < Duration::from_secs(1200) {
        std::thread::sleep(Duration::from_secs(1));
        polls += 1;
        let list: serde_json::Value =
            serde_json::from_str(&env.kubectl(&["get", "imagebuilds", "-n", &ns, "-o", "json"]))
                .expect("list");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let building: Vec<&serde_json::Value> = items
            .iter()
            .filter(|ib| matches!(ib["status"]["phase"].as_str(), Some("Building" | "Pushing")))
            .collect();
        max_in_flight = max_in_flight.max(building.len());
        max_gauge = max_gauge.max(gauge(&controller.metrics(), "imagebuild_builds_in_flight"));
        if building.len() > CONCURRENCY && over_limit.is_none() {
            over_limit = Some(describe(&building));
        }
        for ib in &items {
            let name = ib["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match ib["status"]["phase"].as_str() {
                Some("Succeeded") => {
                    done.entry(name).or_insert_with(|| started.elapsed());
                }
                Some("Failed") => panic!("{name} failed: {:#}", ib["status"]),
                _ => {}
            }
        }
    }
    let total = started.elapsed();
    let after = api_requests();
    assert_eq!(
        done.len(),
        BUILDS,
        "only {} of {BUILDS} Ready in {total:?}",
        done.len()
    );
    assert!(
        max_in_flight <= CONCURRENCY,
        "{max_in_flight} builds in flight with --concurrency {CONCURRENCY} (the controller's own \
         gauge peaked at {max_gauge}); Building or Pushing then:\n{}\nevents by reporter: {:?}\n\
         controller processes: {}\ncontroller warnings:\n{}",
        over_limit.unwrap_or_default(),
        event_reporters(&ns),
        String::from_utf8_lossy(
            &std::process::Command::new("pgrep")
                .args(["-af", "imagebuild controller"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        ),
        controller
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(
        max_gauge <= CONCURRENCY as f64,
        "the controller counted {max_gauge} builds in flight with --concurrency {CONCURRENCY}"
    );
    let mut times: Vec<Duration> = done.values().copied().collect();
    times.sort();
    let delta: BTreeMap<&String, f64> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 1.0)
        .collect();
    let all: f64 = delta.values().sum();
    let peak = controller.peak_rss_kib().unwrap_or(0);
    eprintln!(
        "{BUILDS} builds Ready in {total:.1?} (median done at {:.1?}, last at {:.1?}); max in flight {max_in_flight} (controller gauge {max_gauge}); controller VmHWM {} MiB; API server requests {all:.0} in total ({:.1}/s, including the test's {polls} list polls and {} creates); by verb/resource: {delta:?}",
        times[BUILDS / 2],
        times[BUILDS - 1],
        peak / 1024,
        all / total.as_secs_f64(),
        2 * BUILDS,
    );
    // Every build uses the same two registry Secrets: they are read when they change, not per
    // build (was four reads per build).
    let secret_reads = delta
        .get(&"GET secrets/".to_owned())
        .copied()
        .unwrap_or(0.0);
    assert!(
        secret_reads <= 20.0,
        "{secret_reads} Secret reads for {BUILDS} builds"
    );
    assert!(controller.healthy());
}
