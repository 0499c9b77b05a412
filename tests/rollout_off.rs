//! `--rollouts=false` (Helm `rollout.enabled: false`): the controller builds as always but never
//! touches an opted-in workload. A binary of its own, so no controller with rollouts on runs
//! beside it.

mod common;
mod controller_support;

use std::time::Duration;

use controller_support as ctl;

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn with_rollouts_off_a_labelled_deployment_is_left_as_it_is() {
    let env = common::env();
    let controller =
        ctl::ControllerProcess::start(&common::unique_name("rollouts-off"), &["--rollouts=false"]);
    controller.wait_ready();
    let ns = ctl::namespace("e2e-rollouts-off");
    let image = env.gitea_image(&common::unique_name("off"));
    env.kubectl_apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: site-src, namespace: {ns}}}
data: {{index.html: "off"}}
---
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {{name: site, namespace: {ns}}}
spec:
  context: {{configMaps: [{{name: site-src}}]}}
  image: {image}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  labels: {{imagebuild.dev/rollout: "true"}}
  annotations: {{imagebuild.dev/images: site=site}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: site, image: "busybox:1"}}]
"#
    ));
    let ib = ctl::wait_settled(&ns, "site", Duration::from_secs(120));
    assert_eq!(ctl::ready(&ib).map(|r| r.0).as_deref(), Some("True"));
    // Time for a write that should not come.
    std::thread::sleep(Duration::from_secs(3));
    let web: serde_json::Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "deployment",
        "web",
        "-n",
        &ns,
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("deployment json");
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1"
    );
    let managers: Vec<&serde_json::Value> = web["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| &m["manager"])
        .collect();
    assert!(
        !managers.contains(&&serde_json::json!("imagebuild-rollout")),
        "{managers:?}"
    );
    assert!(ctl::get_ib(&ns, "site")["status"]["rollouts"].is_null());
    assert!(
        ctl::events(&ns, "web")
            .iter()
            .all(|(_, reason, _, _)| reason != "RolloutFailed"),
    );
    assert!(
        controller.log_text().contains("rollouts are off"),
        "the controller does not say rollouts are off"
    );
}
