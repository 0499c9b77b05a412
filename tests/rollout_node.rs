//! Rollouts on the real single-node cluster (tests/env/node-up.sh): a Deployment opted in with
//! `imagebuild.dev/rollout` runs the image its ImageBuild pushed, by digest, and a ConfigMap edit
//! reaches a new running Pod. The controller runs on this host against the same API server
//! (tests/controller_support), the Pods on the node, pulled from the test Gitea.

mod cluster;
mod common;
mod controller_support;

use std::thread::sleep;
use std::time::{Duration, Instant};

use cluster::{Namespace, RESTRICTED_CONTAINER, RESTRICTED_POD, node};
use controller_support as ctl;

const SETTLE: Duration = Duration::from_secs(240);

fn site(image: &str, base: &str, body: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: site-src}}
data: {{index.html: "{body}"}}
---
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {{name: site}}
spec:
  context: {{configMaps: [{{name: site-src}}]}}
  from: {base}
  destinationPath: /srv
  image: {image}
  tags: [e2e]
"#
    )
}

/// The log of the Pod of `app` running `image`, once it printed `text`.
fn wait_pod_printing(ns: &Namespace, image: &str, text: &str) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        for pod in ns.list("pods", "app=site") {
            let runs = pod["spec"]["containers"][0]["image"] == image;
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            if runs {
                let log = ns.log(&format!("pod/{name}"));
                if log.contains(text) {
                    return name.to_owned();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no Pod of {image} printed {text:?}:\n{}",
            ns.describe("deployment/site")
        );
        sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rollout_a_configmap_edit_reaches_a_new_running_pod_by_digest() {
    let node = node();
    drop(
        ctl::shared_controller()
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let ns = Namespace::restricted("rollout-node");
    let image = node.env.gitea_image(&common::unique_name("rollout"));
    let started = Instant::now();
    ns.apply(&site(&image, node.busybox(), "first version"));
    ns.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: site
  labels: {{imagebuild.dev/rollout: "true"}}
  annotations: {{imagebuild.dev/images: site=site}}
spec:
  selector: {{matchLabels: {{app: site}}}}
  template:
    metadata: {{labels: {{app: site}}}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      securityContext: {RESTRICTED_POD}
      containers:
      - name: site
        image: {busybox}
        command: [sh, -c, "cat /srv/index.html; echo; sleep 3600"]
        securityContext: {RESTRICTED_CONTAINER}
        resources: {{limits: {{cpu: 100m, memory: 32Mi}}}}
"#,
        busybox = node.busybox()
    ));
    let first = ctl::wait_settled(&ns, "site", SETTLE);
    let first_ref = first["status"]["imageRef"]
        .as_str()
        .expect("imageRef")
        .to_owned();
    assert!(
        first_ref.starts_with(&format!("{image}@sha256:")),
        "{first_ref}"
    );
    let first_pod = wait_pod_printing(&ns, &first_ref, "first version");
    eprintln!(
        "apply -> Pod of the built image printing its file {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let edited = Instant::now();
    ns.apply(&site(&image, node.busybox(), "second version"));
    let second = ctl::wait_for(&ns, "site", SETTLE, |ib| {
        ib["status"]["phase"] == "Succeeded"
            && ib["status"]["imageRef"].as_str() != Some(&first_ref)
    });
    let rebuilt = edited.elapsed();
    let second_ref = second["status"]["imageRef"].as_str().expect("imageRef");
    let second_pod = wait_pod_printing(&ns, second_ref, "second version");
    assert_ne!(second_pod, first_pod);
    // The Pod runs exactly the digest: the node resolved nothing through a tag.
    let pods = ns.list("pods", "app=site");
    let pod = pods
        .iter()
        .find(|p| p["metadata"]["name"] == second_pod.as_str())
        .expect("the new Pod");
    let digest = second["status"]["digest"].as_str().expect("digest");
    let image_id = pod["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap_or_default();
    assert!(image_id.ends_with(digest), "{image_id} is not {digest}");
    eprintln!(
        "ConfigMap edit -> new digest {:.1} s -> new Pod printing the new file {:.1} s",
        rebuilt.as_secs_f64(),
        edited.elapsed().as_secs_f64()
    );
}
