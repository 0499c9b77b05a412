//! Security checks as a user or an auditor would run them: no password or token in anything the
//! controller writes (logs, events, statuses) after builds that succeed and fail, and the
//! controller's ServiceAccount can do exactly what the code needs and nothing more.

mod common;
mod controller_support;
mod robustness;

use std::time::Duration;

use controller_support as ctl;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(120);

/// Builds that put credentials to work: a good push, a wrong password, a dockerconfigjson.
fn builds_that_handle_credentials(ns: &str, wrong_password: &str) {
    let env = common::env();
    let good = env.gitea_image(&common::unique_name("sec-good"));
    let bad = env.gitea_image(&common::unique_name("sec-bad"));
    let docker = env.gitea_image(&common::unique_name("sec-docker"));
    let auth = serde_json::json!({"auths": {env.gitea.clone(): {
        "username": env.gitea_user, "password": env.gitea_password}}})
    .to_string();
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "wrong",
        "-n",
        ns,
        "--type=kubernetes.io/basic-auth",
        &format!("--from-literal=username={}", env.gitea_user),
        &format!("--from-literal=password={wrong_password}"),
    ]);
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "docker",
        "-n",
        ns,
        "--type=kubernetes.io/dockerconfigjson",
        &format!("--from-literal=.dockerconfigjson={auth}"),
    ]);
    let ib = |name: &str, image: &str, registry: &str| {
        format!(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: src}}]}}\n  image: {image}\n{registry}\n---\n"
        )
    };
    env.kubectl_apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: src, namespace: {ns}}}\ndata: {{a.txt: hello}}\n---\n{}{}{}",
        ib("good", &good, ""),
        ib("bad", &bad, "  registry: {credentialsSecret: wrong}"),
        ib("docker", &docker, "  registry: {credentialsSecret: docker}"),
    ));
    for (name, ready) in [("good", "True"), ("bad", "False"), ("docker", "True")] {
        let ib = ctl::wait_settled(ns, name, SETTLE);
        assert_eq!(
            ctl::ready(&ib).map(|r| r.0).as_deref(),
            Some(ready),
            "{name}: {ib:#}"
        );
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn no_password_or_token_appears_in_controller_logs_events_or_statuses() {
    let env = common::env();
    let wrong_password = "wr0ng:pass@word-7f3a";
    {
        let _controller = ctl::shared_controller()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
    }
    let ns = controller_support::namespace("security");
    builds_that_handle_credentials(&ns, wrong_password);

    let mut secrets = robustness::secrets(env);
    secrets.push(wrong_password.to_owned());
    // Gitea password and token, registry password, ServiceAccount token, the wrong password.
    assert_eq!(
        secrets.len(),
        5,
        "not every secret of the environment is known"
    );
    // Every controller log of this environment: this binary's and the suites' before it.
    let logs_dir = env.dir.join("controller");
    let mut scanned = Vec::new();
    for entry in std::fs::read_dir(&logs_dir)
        .expect("controller logs")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let found = robustness::leaked(&text, &secrets);
            assert!(found.is_empty(), "secret #{found:?} in {}", path.display());
            scanned.push(path);
        }
    }
    assert!(
        !scanned.is_empty(),
        "no controller logs in {}",
        logs_dir.display()
    );
    for kind in ["events.events.k8s.io", "events", "imagebuilds"] {
        let text = env.kubectl(&["get", kind, "-A", "-o", "json"]);
        let found = robustness::leaked(&text, &secrets);
        assert!(found.is_empty(), "secret #{found:?} in {kind}");
    }
    eprintln!(
        "scanned {} controller logs, all events and ImageBuilds",
        scanned.len()
    );
}

/// `kubectl auth can-i` as the controller's ServiceAccount.
fn can(sa: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let env = common::env();
    let who = format!("--as=system:serviceaccount:{}:{sa}", ctl::RELEASE_NAMESPACE);
    let (resource, sub) = resource
        .split_once('/')
        .map_or((resource, None), |(r, s)| (r, Some(s)));
    let mut args = vec!["auth", "can-i", verb, resource, "-n", ns, &who];
    let sub_flag;
    if let Some(sub) = sub {
        sub_flag = format!("--subresource={sub}");
        args.push(&sub_flag);
    }
    env.kubectl_output(&args).status.success()
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn the_service_account_may_do_exactly_what_the_controller_needs() {
    let env = common::env();
    let installed = ctl::install_chart();
    let values = common::run_ok(env.cmd("helm").args([
        "get",
        "values",
        ctl::RELEASE,
        "-n",
        ctl::RELEASE_NAMESPACE,
        "--all",
        "-o",
        "json",
    ]));
    let values: Value = serde_json::from_str(&values).expect("helm values");
    let pvc = values["pvcContexts"]["enabled"].as_bool().unwrap_or(false);
    let rollout = values["rollout"]["enabled"].as_bool().unwrap_or(false);
    let sa = &installed.service_account;
    let ns = "default";
    let mut needed = vec![
        // The reconciler watches ImageBuilds, patches the finalizer and the status.
        ("get", "imagebuilds.imagebuild.dev"),
        ("list", "imagebuilds.imagebuild.dev"),
        ("watch", "imagebuilds.imagebuild.dev"),
        ("patch", "imagebuilds.imagebuild.dev"),
        ("get", "imagebuilds.imagebuild.dev/status"),
        ("patch", "imagebuilds.imagebuild.dev/status"),
        ("update", "imagebuilds.imagebuild.dev/finalizers"),
        // Contexts and Secrets are read and watched, never written.
        ("get", "configmaps"),
        ("list", "configmaps"),
        ("watch", "configmaps"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "events.events.k8s.io"),
        ("patch", "events.events.k8s.io"),
    ];
    if pvc {
        needed.extend([
            ("create", "pods"),
            ("delete", "pods"),
            ("list", "pods"),
            ("watch", "pods"),
            ("get", "persistentvolumeclaims"),
            ("list", "events.events.k8s.io"),
        ]);
    }
    let workloads = ["deployments.apps", "statefulsets.apps", "daemonsets.apps"];
    if rollout {
        // Opted-in workloads are watched and get one image by server-side apply.
        for resource in workloads {
            needed.extend(["get", "list", "watch", "patch"].map(|verb| (verb, resource)));
        }
    }
    let mut refused = vec![
        ("create", "imagebuilds.imagebuild.dev"),
        ("update", "imagebuilds.imagebuild.dev"),
        ("delete", "imagebuilds.imagebuild.dev"),
        ("deletecollection", "imagebuilds.imagebuild.dev"),
        ("update", "imagebuilds.imagebuild.dev/status"),
        ("create", "configmaps"),
        ("update", "configmaps"),
        ("patch", "configmaps"),
        ("delete", "configmaps"),
        ("create", "secrets"),
        ("update", "secrets"),
        ("patch", "secrets"),
        ("delete", "secrets"),
        ("deletecollection", "secrets"),
        ("create", "pods/exec"),
        ("create", "pods/attach"),
        ("create", "pods/portforward"),
        ("get", "pods/log"),
        ("update", "pods"),
        ("patch", "pods"),
        ("create", "pods/eviction"),
        ("create", "serviceaccounts/token"),
        ("create", "serviceaccounts"),
        ("impersonate", "serviceaccounts"),
        ("impersonate", "users"),
        ("create", "persistentvolumeclaims"),
        ("delete", "persistentvolumeclaims"),
        ("get", "persistentvolumes"),
        ("get", "nodes"),
        ("create", "namespaces"),
        ("delete", "namespaces"),
        ("delete", "events.events.k8s.io"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("escalate", "clusterroles.rbac.authorization.k8s.io"),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
        (
            "create",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
        ),
        ("create", "certificatesigningrequests.certificates.k8s.io"),
        ("update", "leases.coordination.k8s.io"),
    ];
    if !pvc {
        refused.extend([("create", "pods"), ("get", "persistentvolumeclaims")]);
    }
    // Workloads are never created, replaced or deleted; without rollouts not even read.
    for resource in workloads {
        refused.extend(
            ["create", "update", "delete", "deletecollection"].map(|verb| (verb, resource)),
        );
        if !rollout {
            refused.extend(["get", "list", "watch", "patch"].map(|verb| (verb, resource)));
        }
    }
    refused.extend([
        ("patch", "replicasets.apps"),
        ("create", "deployments.apps/scale"),
    ]);
    let mut wrong = Vec::new();
    for (verb, resource) in &needed {
        if !can(sa, verb, resource, ns) {
            wrong.push(format!(
                "cannot {verb} {resource}, which the controller needs"
            ));
        }
    }
    for (verb, resource) in &refused {
        if can(sa, verb, resource, ns) {
            wrong.push(format!(
                "may {verb} {resource}, which the controller never does"
            ));
        }
    }
    assert!(wrong.is_empty(), "RBAC of {sa}:\n{}", wrong.join("\n"));
    eprintln!(
        "RBAC: {} verbs allowed, {} refused as expected",
        needed.len(),
        refused.len()
    );
}
