//! The reader Pod as the API server will see it, and how the fetch reads a Pod's status.

use std::time::Duration;

use serde_json::json;

use super::pod_status::{
    ReaderState, failure_message, last_chars, pod_says_why_waiting, reader_state,
};
use super::*;
use crate::controller::config::ControllerConfig;
use crate::controller::upload::{Expected, Uploads};
use crate::transfer::{ReceiveOptions, TOKEN_ENV};

fn image_build(yaml: &str) -> ImageBuild {
    crate::yaml::from_str(yaml).expect("ImageBuild")
}

fn hello() -> ImageBuild {
    image_build(
        r#"
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {name: hello, namespace: apps, uid: 6a1f0c55-1d0e-4f7e-9d55-0b4b7a7e2d10}
spec:
  context: {persistentVolumeClaim: {claimName: src, subPath: site/}}
  image: gitea.cnoe.localtest.me:8443/giteaadmin/hello
  timeout: 90s
"#,
    )
}

fn settings() -> ReaderSettings {
    ReaderSettings::from_flags(ReaderFlags {
        context_listen: Some("0.0.0.0:8081".parse().unwrap()),
        pod_ip: Some("10.244.0.7".parse().unwrap()),
        reader_image: Some("registry.example/imagebuild@sha256:abc".into()),
        pull_policy: "IfNotPresent".into(),
        ..ReaderFlags::default()
    })
    .unwrap()
    .unwrap()
}

/// The reader Pod of `ib` as JSON, with the upload it is for.
fn reader_pod_json(ib: &ImageBuild, settings: &ReaderSettings) -> (serde_json::Value, Expected) {
    let claim = ib.spec.context.persistent_volume_claim.clone().unwrap();
    let source = ClaimSource::new("apps", &claim).unwrap();
    let config = ControllerConfig::default();
    let expected = Uploads::default()
        .register("/tmp/x".into(), source.receive_options(ib, &config))
        .unwrap();
    let timeout = config.build_timeout(ib.spec.timeout.as_deref()).limit;
    let pod = reader_pod(ib, &source, settings, &expected, timeout).unwrap();
    (serde_json::to_value(pod).unwrap(), expected)
}

fn pod_json() -> (serde_json::Value, String) {
    let (pod, expected) = reader_pod_json(&hello(), &settings());
    (pod, expected.token().to_owned())
}

/// The whole Pod, field by field, as the reader Pod has always been sent to the API server
/// (captured from the `json!` template it was built from before it became typed structs).
#[test]
fn the_reader_pod_is_the_one_the_api_server_has_always_received() {
    let (pod, expected) = reader_pod_json(&hello(), &settings());
    let fixture = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "hello-ctx-",
            "labels": {
                "app.kubernetes.io/component": "context-reader",
                "app.kubernetes.io/managed-by": "imagebuild-controller",
                "app.kubernetes.io/name": "imagebuild",
                "imagebuild.dev/imagebuild": "hello",
                "imagebuild.dev/imagebuild-uid": "6a1f0c55-1d0e-4f7e-9d55-0b4b7a7e2d10"
            },
            "namespace": "apps",
            "ownerReferences": [{
                "apiVersion": "imagebuild.dev/v1alpha1",
                "controller": true,
                "kind": "ImageBuild",
                "name": "hello",
                "uid": "6a1f0c55-1d0e-4f7e-9d55-0b4b7a7e2d10"
            }]
        },
        "spec": {
            "activeDeadlineSeconds": 90,
            "automountServiceAccountToken": false,
            "containers": [{
                "args": [
                    "send-context", "--dir", "/claim", "--sub-path", "site",
                    "--to", format!("http://10.244.0.7:8081{}", expected.path())
                ],
                "env": [
                    {"name": "IMAGEBUILD_CONTEXT_TOKEN", "value": expected.token()},
                    {"name": "RUST_LOG", "value": "warn"}
                ],
                "image": "registry.example/imagebuild@sha256:abc",
                "imagePullPolicy": "IfNotPresent",
                "name": "send-context",
                "resources": {
                    "limits": {"cpu": "500m", "memory": "64Mi"},
                    "requests": {"cpu": "10m", "memory": "16Mi"}
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"}
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [{"mountPath": "/claim", "name": "claim", "readOnly": true}]
            }],
            "enableServiceLinks": false,
            "restartPolicy": "Never",
            "securityContext": {
                "runAsGroup": 65532,
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "terminationGracePeriodSeconds": 1,
            "volumes": [{
                "name": "claim",
                "persistentVolumeClaim": {"claimName": "src", "readOnly": true}
            }]
        }
    });
    assert_eq!(pod, fixture, "{pod:#}");
}

/// The edges of the template, as it has always filled them: a name too long for a label and
/// cut before a `-.` for generateName, no UID (so no owner), no subPath, a timeout under a
/// second, an empty pull policy and empty resources.
#[test]
fn the_reader_pod_at_the_edges_is_the_one_the_api_server_has_always_received() {
    let name = format!("{}-.{}", "x".repeat(38), "y".repeat(30));
    let ib = image_build(&format!(
        r#"
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {{name: {name}, namespace: apps}}
spec:
  context: {{persistentVolumeClaim: {{claimName: src}}}}
  image: gitea.cnoe.localtest.me:8443/giteaadmin/hello
  timeout: 500ms
"#
    ));
    let settings = ReaderSettings::from_flags(ReaderFlags {
        context_listen: Some("0.0.0.0:8081".parse().unwrap()),
        context_url: Some("https://ctx.example/".into()),
        reader_image: Some("img".into()),
        pull_policy: String::new(),
        resources: Some("{}".into()),
        ..ReaderFlags::default()
    })
    .unwrap()
    .unwrap();
    let (pod, expected) = reader_pod_json(&ib, &settings);
    let fixture = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-ctx-", "x".repeat(38)),
            "labels": {
                "app.kubernetes.io/component": "context-reader",
                "app.kubernetes.io/managed-by": "imagebuild-controller",
                "app.kubernetes.io/name": "imagebuild",
                "imagebuild.dev/imagebuild-uid": ""
            },
            "namespace": "apps",
            "ownerReferences": []
        },
        "spec": {
            "activeDeadlineSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{
                "args": [
                    "send-context", "--dir", "/claim",
                    "--to", format!("https://ctx.example{}", expected.path())
                ],
                "env": [
                    {"name": "IMAGEBUILD_CONTEXT_TOKEN", "value": expected.token()},
                    {"name": "RUST_LOG", "value": "warn"}
                ],
                "image": "img",
                "imagePullPolicy": "",
                "name": "send-context",
                "resources": {},
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"}
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [{"mountPath": "/claim", "name": "claim", "readOnly": true}]
            }],
            "enableServiceLinks": false,
            "restartPolicy": "Never",
            "securityContext": {
                "runAsGroup": 65532,
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "terminationGracePeriodSeconds": 1,
            "volumes": [{
                "name": "claim",
                "persistentVolumeClaim": {"claimName": "src", "readOnly": true}
            }]
        }
    });
    assert_eq!(pod, fixture, "{pod:#}");
}

#[test]
fn the_reader_pod_meets_the_restricted_level_with_limits() {
    let (pod, _) = pod_json();
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["runAsUser"], 65532);
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["activeDeadlineSeconds"], 90);
    assert_eq!(
        container["terminationMessagePolicy"],
        "FallbackToLogsOnError"
    );
}

#[test]
fn the_reader_pod_holds_no_credential_only_its_one_time_token() {
    let (pod, token) = pod_json();
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(
        spec["volumes"],
        json!([{"name": "claim", "persistentVolumeClaim": {"claimName": "src", "readOnly": true}}])
    );
    let env = &spec["containers"][0]["env"];
    assert_eq!(env[0], json!({"name": TOKEN_ENV, "value": token}));
    assert!(!pod.to_string().contains("secret"), "{pod:#}");
    assert_eq!(
        spec["containers"][0]["volumeMounts"],
        json!([{"name": "claim", "mountPath": "/claim", "readOnly": true}])
    );
}

#[test]
fn the_reader_sends_the_sub_path_to_this_replicas_address() {
    let (pod, _) = pod_json();
    let args: Vec<String> =
        serde_json::from_value(pod["spec"]["containers"][0]["args"].clone()).unwrap();
    assert_eq!(
        &args[..5],
        ["send-context", "--dir", "/claim", "--sub-path", "site"]
    );
    assert_eq!(args[5], "--to");
    assert!(
        args[6].starts_with("http://10.244.0.7:8081/contexts/"),
        "{}",
        args[6]
    );
}

#[test]
fn the_reader_pod_is_owned_by_its_image_build_and_labelled_with_it() {
    let (pod, _) = pod_json();
    let meta = &pod["metadata"];
    assert_eq!(meta["generateName"], "hello-ctx-");
    assert_eq!(meta["ownerReferences"][0]["kind"], "ImageBuild");
    assert_eq!(meta["ownerReferences"][0]["controller"], true);
    assert_eq!(
        meta["labels"][UID_LABEL],
        "6a1f0c55-1d0e-4f7e-9d55-0b4b7a7e2d10"
    );
    assert_eq!(meta["labels"][NAME_LABEL], "hello");
}

#[test]
fn a_sub_path_that_climbs_is_an_invalid_spec() {
    let claim = PvcSource {
        claim_name: "src".into(),
        sub_path: Some("a/../../b".into()),
    };
    let error = ClaimSource::new("apps", &claim).err().expect("refused");
    assert_eq!(error.reason(), "InvalidSpec");
}

#[test]
fn a_pending_reader_fails_before_the_build_timeout_says_only_timeout() {
    assert_eq!(
        start_allowance(Duration::from_secs(600)),
        Duration::from_secs(570)
    );
    assert_eq!(
        start_allowance(Duration::from_secs(20)),
        Duration::from_secs(18)
    );
    assert_eq!(
        start_allowance(Duration::from_secs(5)),
        Duration::from_secs(4)
    );
}

#[test]
fn reader_flags_need_an_image_and_a_url() {
    let flags = |listen: bool, image: bool, ip: bool| ReaderFlags {
        context_listen: listen.then(|| "0.0.0.0:8081".parse().unwrap()),
        reader_image: image.then(|| "img".into()),
        pod_ip: ip.then(|| "fd00::5".parse().unwrap()),
        pull_policy: "IfNotPresent".into(),
        ..ReaderFlags::default()
    };
    assert!(
        ReaderSettings::from_flags(flags(false, false, false))
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        ReaderSettings::from_flags(flags(true, false, true)),
        Err(ReaderConfigError::NoImage)
    ));
    assert!(matches!(
        ReaderSettings::from_flags(flags(true, true, false)),
        Err(ReaderConfigError::NoUrl)
    ));
    let v6 = ReaderSettings::from_flags(flags(true, true, true))
        .unwrap()
        .unwrap();
    assert_eq!(v6.url, "http://[fd00::5]:8081");
}

fn pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "r"}, "status": status})).unwrap()
}

#[test]
fn an_unschedulable_reader_says_why() {
    let p = pod(json!({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 node(s) had volume node affinity conflict."}]}));
    assert_eq!(reader_state(&p), ReaderState::Waiting);
    assert_eq!(
        pod_says_why_waiting(&p).unwrap(),
        "Unschedulable: 0/1 nodes are available: 1 node(s) had volume node affinity conflict."
    );
}

#[test]
fn a_reader_whose_image_cannot_be_pulled_says_so() {
    let p = pod(json!({"phase": "Pending", "containerStatuses": [{
        "name": "send-context", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}));
    assert_eq!(
        pod_says_why_waiting(&p).unwrap(),
        "ImagePullBackOff: Back-off pulling image \"x\""
    );
}

#[test]
fn a_failed_reader_reports_its_own_message() {
    let p = pod(json!({"phase": "Failed", "containerStatuses": [{
        "name": "send-context", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "reason": "Error",
            "message": "imagebuild: app/ctl.sock is a socket\n"}}}]}));
    assert_eq!(
        reader_state(&p),
        ReaderState::Failed("imagebuild: app/ctl.sock is a socket".into())
    );
    let deadline = pod(json!({"phase": "Failed", "reason": "DeadlineExceeded",
        "message": "Pod was active on the node longer than the specified deadline"}));
    assert_eq!(
        failure_message(&deadline),
        "DeadlineExceeded: Pod was active on the node longer than the specified deadline"
    );
}

#[test]
fn a_long_failure_message_keeps_its_end() {
    assert_eq!(last_chars("short", 5), "short");
    assert_eq!(last_chars("a log\nerror: é", 8), "...error: é");
    let log = format!("{}\nimagebuild: app/ctl.sock is a socket", "x".repeat(2000));
    let message = failure_message(&pod(json!({"phase": "Failed", "containerStatuses": [{
        "name": "send-context", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "message": log}}}]})));
    assert_eq!(message.chars().count(), 3 + 1024);
    assert!(message.starts_with("...x"), "{message}");
    assert!(message.ends_with("imagebuild: app/ctl.sock is a socket"));
}

#[test]
fn receive_options_carry_the_builds_excludes_and_the_size_limit() {
    let mut ib = hello();
    ib.spec.exclude = vec!["*.md".into()];
    let claim = ib.spec.context.persistent_volume_claim.clone().unwrap();
    let source = ClaimSource::new("apps", &claim).unwrap();
    let config = ControllerConfig::default();
    let options: ReceiveOptions = source.receive_options(&ib, &config);
    assert_eq!(options.context.exclude, ["*.md"]);
    assert_eq!(options.context.max_bytes, Some(config.max_context_bytes));
    assert_eq!(options.sub_path, "site");
    assert_eq!(source.to_string(), "apps/src (subPath site)");
}
