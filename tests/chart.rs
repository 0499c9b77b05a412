//! The Helm chart (charts/imagebuild): its CRD copy, lint, what it renders (security context,
//! RBAC, flags, config) and what its values schema refuses. Helm and kubectl are the pinned ones
//! from the shared test environment.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};

use imagebuild::controller::config::ControllerConfig;

const RELEASE: &str = "imagebuild";
const NAMESPACE: &str = "imagebuild-system";

fn chart_dir() -> PathBuf {
    common::repo_root().join("charts/imagebuild")
}

fn helm() -> Command {
    common::env().cmd("helm")
}

/// `helm template` with extra arguments; the raw output, success or not.
fn helm_template(extra: &[&str]) -> Output {
    let mut cmd = helm();
    cmd.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE])
        .args(extra);
    common::output(&mut cmd)
}

/// The rendered objects, each as JSON.
fn render(extra: &[&str]) -> Vec<Value> {
    let out = helm_template(extra);
    assert!(
        out.status.success(),
        "helm template {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_documents(&String::from_utf8_lossy(&out.stdout))
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    imagebuild::yaml::documents(yaml)
        .into_iter()
        .map(|doc| doc.expect("rendered YAML parses"))
        .collect()
}

/// The one rendered object of `kind`; fails the test when there is none or several.
fn the<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn controller_container(objects: &[Value]) -> &Value {
    &the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn args(objects: &[Value]) -> Vec<String> {
    controller_container(objects)["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

fn values_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp values file");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).expect("write values file");
    file
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn crd_copies_match_what_the_binary_generates() {
    let out = common::output(Command::new(env!("CARGO_BIN_EXE_imagebuild")).arg("crd"));
    assert!(out.status.success(), "imagebuild crd failed");
    let generated = String::from_utf8(out.stdout).expect("CRD is UTF-8");
    for copy in [
        "crds/imagebuild.dev_imagebuilds.yaml",
        "charts/imagebuild/crds/imagebuild.dev_imagebuilds.yaml",
    ] {
        let on_disk = std::fs::read_to_string(common::repo_root().join(copy)).expect(copy);
        assert!(
            on_disk == generated,
            "{copy} differs from `imagebuild crd`; regenerate it: cargo run -q -- crd > {copy}"
        );
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn helm_lint_strict_passes() {
    let out = common::output(helm().args(["lint", "--strict"]).arg(chart_dir()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm lint --strict failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 chart(s) failed"), "{stdout}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn controller_pod_meets_the_restricted_pod_security_level() {
    let objects = render(&[]);
    let pod = &the(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0]["securityContext"];

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["runAsNonRoot"], true);
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(container["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(container["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn cluster_role_grants_exactly_the_verbs_the_controller_uses() {
    let objects = render(&[]);
    let rules = &the(&objects, "ClusterRole")["rules"];
    assert_eq!(
        rules,
        &json!([
            rule(
                &["imagebuild.dev"],
                &["imagebuilds"],
                &["get", "list", "watch", "patch"]
            ),
            rule(
                &["imagebuild.dev"],
                &["imagebuilds/status"],
                &["get", "patch"]
            ),
            rule(
                &["imagebuild.dev"],
                &["imagebuilds/finalizers"],
                &["update"]
            ),
            rule(&[""], &["configmaps"], &["get", "list", "watch"]),
            rule(&[""], &["secrets"], &["get", "list", "watch"]),
            rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
            rule(&[""], &["pods"], &["list", "watch", "create", "delete"]),
            rule(&[""], &["persistentvolumeclaims"], &["get"]),
            rule(&["events.k8s.io"], &["events"], &["list"]),
            rule(
                &["apps"],
                &["deployments", "statefulsets", "daemonsets"],
                &["get", "list", "watch", "patch"]
            ),
        ])
    );
}

/// The rules that name workloads of group `apps`.
fn workload_rules(objects: &[Value]) -> Vec<Value> {
    the(objects, "ClusterRole")["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| {
            r["apiGroups"]
                .as_array()
                .is_some_and(|g| g.contains(&json!("apps")))
        })
        .cloned()
        .collect()
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rollouts_get_exactly_get_list_watch_patch_on_the_three_workload_kinds_and_the_flag_on() {
    let objects = render(&[]);
    assert_eq!(
        workload_rules(&objects),
        vec![rule(
            &["apps"],
            &["deployments", "statefulsets", "daemonsets"],
            &["get", "list", "watch", "patch"]
        )]
    );
    assert!(args(&objects).contains(&"--rollouts=true".to_owned()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn without_rollouts_the_controller_has_no_rights_on_workloads_and_is_told_so() {
    let objects = render(&["--set", "rollout.enabled=false"]);
    assert_eq!(workload_rules(&objects), Vec::<Value>::new());
    assert!(args(&objects).contains(&"--rollouts=false".to_owned()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn cluster_role_grants_nothing_on_pods_without_pvc_contexts() {
    let objects = render(&["--set", "pvcContexts.enabled=false"]);
    let rules = the(&objects, "ClusterRole")["rules"]
        .as_array()
        .expect("rules");
    let on_pods: Vec<&Value> = rules
        .iter()
        .filter(|r| {
            r["resources"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|x| x.as_str().is_some_and(|s| s.starts_with("pods")))
            })
        })
        .collect();
    assert!(on_pods.is_empty(), "rules on pods: {on_pods:?}");
    assert_eq!(
        rules.len(),
        7,
        "the six of every install and the workloads' one"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn controller_receives_pvc_contexts_on_its_own_pod_address_with_its_own_image_as_reader() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let objects = render(&["--set", &format!("image.digest={digest}")]);
    let args = args(&objects);
    let image = format!("gitea.cnoe.localtest.me:8443/giteaadmin/imagebuild@{digest}");
    assert_eq!(controller_container(&objects)["image"], image.as_str());
    for flag in [
        "--context-listen=0.0.0.0:8081".to_owned(),
        format!("--reader-image={image}"),
        "--reader-image-pull-policy=IfNotPresent".to_owned(),
    ] {
        assert!(args.contains(&flag), "missing {flag} in {args:?}");
    }
    let resources = args
        .iter()
        .find_map(|a| a.strip_prefix("--reader-resources="))
        .expect("--reader-resources");
    let resources: Value = serde_json::from_str(resources).expect("JSON");
    assert_eq!(resources["limits"]["memory"], "64Mi");
    assert_eq!(
        controller_container(&objects)["ports"][1],
        json!({"name": "context", "containerPort": 8081, "protocol": "TCP"})
    );
    let env = &controller_container(&objects)["env"];
    let pod_ip = env
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn without_pvc_contexts_the_controller_gets_no_reader_flags() {
    let objects = render(&["--set", "pvcContexts.enabled=false"]);
    let args = args(&objects);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--context-listen") || a.starts_with("--reader")),
        "{args:?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn cluster_role_is_bound_to_the_controller_service_account() {
    let objects = render(&[]);
    let binding = the(&objects, "ClusterRoleBinding");
    let account = &the(&objects, "ServiceAccount")["metadata"]["name"];
    assert_eq!(
        binding["roleRef"]["name"],
        the(&objects, "ClusterRole")["metadata"]["name"]
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}])
    );
    assert_eq!(
        the(&objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        *account
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn leader_election_role_grants_only_its_lease_in_the_release_namespace() {
    let objects = render(&[]);
    let role = the(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        role["rules"],
        json!([
            rule(&["coordination.k8s.io"], &["leases"], &["create"]),
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [RELEASE],
                "verbs": ["get", "update"],
            },
        ])
    );
    assert_eq!(
        the(&objects, "RoleBinding")["roleRef"]["name"],
        role["metadata"]["name"]
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn leader_election_runs_with_the_lease_the_role_names() {
    let args = args(&render(&[]));
    assert!(args.contains(&"--leader-elect".to_owned()), "{args:?}");
    assert!(
        args.contains(&format!("--lease-name={RELEASE}")),
        "{args:?}"
    );
    assert!(
        args.contains(&format!("--lease-namespace={NAMESPACE}")),
        "{args:?}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn leader_election_is_forced_on_with_two_replicas() {
    let objects = render(&[
        "--set",
        "replicaCount=2",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert_eq!(the(&objects, "Deployment")["spec"]["replicas"], 2);
    assert!(args(&objects).contains(&"--leader-elect".to_owned()));
    the(&objects, "Role");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn leader_election_can_be_turned_off_with_one_replica() {
    let objects = render(&["--set", "leaderElection.enabled=false"]);
    assert!(!args(&objects).contains(&"--leader-elect".to_owned()));
    assert!(!kinds(&objects).contains(&"Role".to_owned()));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn registry_checks_run_every_ten_minutes_by_default_and_zero_turns_them_off() {
    let flag = |objects: &[Value]| {
        args(objects)
            .into_iter()
            .find(|a| a.starts_with("--registry-check-interval="))
    };
    assert_eq!(
        flag(&render(&[])).as_deref(),
        Some("--registry-check-interval=10m")
    );
    assert_eq!(
        flag(&render(&["--set", "registryCheckInterval=0"])).as_deref(),
        Some("--registry-check-interval=0")
    );
    assert_eq!(
        flag(&render(&["--set", "registryCheckInterval=90s"])).as_deref(),
        Some("--registry-check-interval=90s")
    );
    let refused = helm_template(&["--set", "registryCheckInterval=often"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("registryCheckInterval"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn deployment_runs_the_controller_with_config_listen_address_and_work_dir() {
    let objects = render(&["--set", "concurrency=7"]);
    let args = args(&objects);
    assert_eq!(args[0], "controller");
    for flag in [
        "--config=/etc/imagebuild/config.yaml",
        "--listen=0.0.0.0:8080",
        "--concurrency=7",
        "--work-dir=/work",
        "--registry-check-interval=10m",
    ] {
        assert!(
            args.contains(&flag.to_owned()),
            "missing {flag} in {args:?}"
        );
    }
    let pod = &the(&objects, "Deployment")["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .contains(&json!({"name": "work", "emptyDir": {}}))
    );
    let mounts = &pod["containers"][0]["volumeMounts"];
    assert!(
        mounts
            .as_array()
            .expect("mounts")
            .contains(&json!({"name": "work", "mountPath": "/work"}))
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn deployment_passes_pod_identity_log_settings_and_tmpdir_as_env() {
    let objects = render(&["--set", "logLevel=debug", "--set", "logFormat=text"]);
    let env = controller_container(&objects)["env"].clone();
    let by_name = |name: &str| {
        env.as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        by_name("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        by_name("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(by_name("RUST_LOG")["value"], "debug");
    assert_eq!(by_name("IMAGEBUILD_LOG_FORMAT")["value"], "text");
    assert_eq!(by_name("TMPDIR")["value"], "/work");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn probes_check_health_and_readiness_on_the_http_port() {
    let objects = render(&[]);
    let container = controller_container(&objects);
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    assert_eq!(
        container["ports"][0],
        json!({"name": "http", "containerPort": 8080, "protocol": "TCP"})
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn config_map_holds_the_idpbuilder_registry_profile_by_default() {
    let objects = render(&[]);
    let config_map = the(&objects, "ConfigMap");
    let text = config_map["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml");
    let config: Value = imagebuild::yaml::from_str(text).expect("config.yaml parses");
    assert_eq!(
        config,
        json!({
            "registries": [{
                "host": "gitea.cnoe.localtest.me:8443",
                "endpoint": "https://gitea.cnoe.localtest.me:8443",
                "caSecret": {"namespace": "default", "name": "idpbuilder-cert", "key": "ca.crt"},
                "credentialsSecret": {
                    "namespace": "gitea", "name": "gitea-credential",
                    "usernameKey": "username", "passwordKey": "password",
                },
                "insecure": false,
            }],
            "maxContextBytes": 2147483648u64,
            "defaultTimeout": "10m",
        })
    );
    let volumes = &the(&objects, "Deployment")["spec"]["template"]["spec"]["volumes"];
    assert!(volumes.as_array().expect("volumes").contains(
        &json!({"name": "config", "configMap": {"name": config_map["metadata"]["name"]}})
    ));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rendered_config_is_accepted_by_the_controller() {
    let objects = render(&[]);
    let text = the(&objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml")
        .to_owned();
    let file = values_file(&text);
    let config =
        ControllerConfig::load(Some(file.path())).expect("the controller reads config.yaml");
    let profile = config
        .profile("gitea.cnoe.localtest.me:8443")
        .expect("the idpbuilder profile");
    assert_eq!(
        profile.ca_secret.as_ref().map(|s| s.name.as_str()),
        Some("idpbuilder-cert")
    );
    assert_eq!(config.max_context_bytes, 2 << 30);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn a_config_change_rolls_the_controller_pods() {
    let checksum = |objects: &[Value]| {
        the(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum/config annotation")
            .to_owned()
    };
    let before = checksum(&render(&[]));
    let after = checksum(&render(&["--set", "defaultTimeout=20m"]));
    assert_eq!(before.len(), 64, "a SHA-256 in hex: {before}");
    assert_ne!(before, after);
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn malformed_registry_profile_is_refused_naming_the_field() {
    // The CA Secret lacks its name: the controller could not find it.
    let values = values_file(
        "registries:\n  - host: registry.example:5000\n    caSecret: {namespace: default, key: ca.crt}\n",
    );
    let out = helm_template(&["-f", values.path().to_str().expect("UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "helm template accepted a profile without caSecret.name"
    );
    assert!(
        stderr.contains("/registries/0/caSecret") && stderr.contains("name"),
        "error does not name the field: {stderr}"
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn registry_host_with_a_scheme_is_refused() {
    let values = values_file("registries:\n  - host: https://registry.example\n");
    let out = helm_template(&["-f", values.path().to_str().expect("UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "helm template accepted a host with a scheme"
    );
    assert!(stderr.contains("/registries/0/host"), "{stderr}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn misspelt_value_is_refused() {
    let out = helm_template(&["--set", "replicaCont=2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "helm template accepted replicaCont");
    assert!(stderr.contains("replicaCont"), "{stderr}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn service_exposes_metrics_port() {
    let objects = render(&[]);
    let service = the(&objects, "Service");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "http", "protocol": "TCP"}])
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn service_monitor_is_rendered_only_when_enabled() {
    assert!(!kinds(&render(&[])).contains(&"ServiceMonitor".to_owned()));
    let objects = render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.interval=15s",
    ]);
    let monitor = the(&objects, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}])
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        the(&objects, "Service")["spec"]["selector"]
    );
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn rendered_chart_is_accepted_by_the_api_server_in_a_restricted_namespace() {
    let env = common::env();
    // Pod Security admission enforces, and warns about, the restricted level in this namespace;
    // a Deployment that would violate it draws a warning even in a dry run.
    let namespace = "imagebuild-chart-restricted";
    env.kubectl_apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    \
         pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/warn: restricted\n"
    ));
    let mut template = helm();
    template
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", namespace]);
    let rendered = common::run_ok(&mut template);
    let out = env.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &rendered);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "API server refused the chart: {stderr}"
    );
    assert!(!stderr.contains("PodSecurity"), "{stderr}");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn install_notes_say_how_to_apply_an_example_and_watch_it() {
    let mut install = helm();
    install.args(["install", RELEASE]).arg(chart_dir()).args([
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
    ]);
    let notes = common::run_ok(&mut install);
    let notes = notes.split("NOTES:").nth(1).expect("helm prints NOTES");
    assert!(
        notes.contains("kubectl apply -f examples/hello-site/imagebuild.yaml"),
        "{notes}"
    );
    assert!(notes.contains("kubectl get ib"), "{notes}");
    assert!(notes.contains("Secret default/idpbuilder-cert"), "{notes}");
}
