//! The architecture, held by the compiler: the builder's crate can reach no Kubernetes and no
//! HTTP crate, the registry client's no Kubernetes crate. An import of one of them there fails
//! to compile because the crate is not in that package's dependency tree; this test fails the
//! moment someone adds one to its manifest.

use std::process::Command;

/// Every crate in the normal (non-dev) dependency tree of `package`.
fn dependency_tree(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-f",
            "{p}",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_free_of(package: &str, forbidden: &[&str]) {
    let tree = dependency_tree(package);
    assert!(
        tree.iter().any(|c| c == package),
        "{package} not found: {tree:?}"
    );
    let found: Vec<&String> = tree
        .iter()
        .filter(|c| forbidden.contains(&c.as_str()))
        .collect();
    assert!(found.is_empty(), "{package} depends on {found:?}");
}

#[test]
fn the_builder_knows_no_kubernetes_and_no_http() {
    assert_free_of(
        "imagebuild-builder",
        &[
            "kube",
            "kube-client",
            "kube-runtime",
            "k8s-openapi",
            "reqwest",
            "hyper",
            "http",
            "axum",
            "rustls",
            "imagebuild-registry",
        ],
    );
}

#[test]
fn the_registry_client_knows_no_kubernetes() {
    assert_free_of(
        "imagebuild-registry",
        &[
            "kube",
            "kube-client",
            "kube-runtime",
            "k8s-openapi",
            "schemars",
        ],
    );
}
