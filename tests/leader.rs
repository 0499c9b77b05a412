//! Two controller replicas with leader election: only the Lease holder builds, and when it is
//! killed the other takes over within the lease time.

mod common;
mod controller_support;

use std::time::{Duration, Instant};

use controller_support as ctl;

/// The chart's Role lets the controller touch only the release's Lease.
const LEASE: &str = ctl::RELEASE;

fn lease_holder() -> String {
    let out = common::env().kubectl_output(&[
        "get",
        "lease",
        LEASE,
        "-n",
        ctl::RELEASE_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn only_the_leader_builds_and_a_killed_leader_is_replaced_within_the_lease_time() {
    let env = common::env();
    // A Lease left by an earlier run would make the first replica wait for it to expire.
    env.kubectl(&[
        "delete",
        "lease",
        LEASE,
        "-n",
        ctl::RELEASE_NAMESPACE,
        "--ignore-not-found",
    ]);
    let args = ["--leader-elect", "--lease-name", LEASE];
    let mut a = ctl::ControllerProcess::start("replica-a", &args);
    a.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let b = ctl::ControllerProcess::start("replica-b", &args);
    b.wait_ready();
    assert_eq!(lease_holder(), "replica-a");

    let ns = ctl::namespace("e2e-leader");
    let image = env.gitea_image(&common::unique_name("leader"));
    let build = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata: {{a.txt: {name}}}\n---\napiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: {name}}}]}}\n  image: {image}\n  tags: [{name}]\n"
        )
    };
    env.kubectl_apply(&build("first"));
    ctl::wait_settled(&ns, "first", Duration::from_secs(120));
    let reporters: Vec<String> = ctl::events(&ns, "first").into_iter().map(|e| e.3).collect();
    assert!(
        !reporters.is_empty() && reporters.iter().all(|r| r == "replica-a"),
        "{reporters:?}"
    );

    let killed = Instant::now();
    a.kill();
    let deadline = killed + Duration::from_secs(40);
    while lease_holder() != "replica-b" {
        assert!(
            Instant::now() < deadline,
            "replica-b did not take over; log:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let handover = killed.elapsed();
    println!(
        "leader handover after SIGKILL: {:.1} s",
        handover.as_secs_f64()
    );
    assert!(
        handover <= Duration::from_secs(15 + 2 + 5),
        "handover took {handover:?}"
    );

    env.kubectl_apply(&build("second"));
    ctl::wait_settled(&ns, "second", Duration::from_secs(120));
    let reporters: Vec<String> = ctl::events(&ns, "second")
        .into_iter()
        .map(|e| e.3)
        .collect();
    assert!(
        !reporters.is_empty() && reporters.iter().all(|r| r == "replica-b"),
        "{reporters:?}"
    );
}
