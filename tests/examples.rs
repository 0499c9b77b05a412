//! Every manifest under examples/ parses, every ImageBuild in them is one the controller can read
//! (no misspelt or unknown fields), and the test API server accepts them (CRD schema and CEL
//! rules) in a server-side dry run.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

use imagebuild::api::ImageBuild;

/// One YAML document of an example file.
struct Manifest {
    file: PathBuf,
    object: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!("{} {} in {}", self.kind(), self.name(), self.file.display())
    }
}

/// The example files, and the example directories that are kustomizations (their files are
/// kustomize's input; what they stand for is `kubectl kustomize DIR`).
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        if dir.join("kustomization.yaml").is_file() {
            found.push(dir.to_path_buf());
            return;
        }
        for entry in std::fs::read_dir(dir).expect("read examples dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&common::repo_root().join("examples"), &mut found);
    found.sort();
    assert!(!found.is_empty(), "no examples found");
    found
}

/// `kubectl kustomize DIR` with the pinned kubectl.
fn kustomize(dir: &Path) -> String {
    common::run_ok(common::env().cmd("kubectl").arg("kustomize").arg(dir))
}

fn manifests() -> Vec<Manifest> {
    let mut all = Vec::new();
    for file in example_files() {
        let text = if file.is_dir() {
            kustomize(&file)
        } else {
            std::fs::read_to_string(&file).expect("read example")
        };
        for doc in imagebuild::yaml::documents(&text) {
            let object = doc.unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
            all.push(Manifest {
                file: file.clone(),
                object,
            });
        }
    }
    all
}

fn imagebuilds() -> Vec<Manifest> {
    let found: Vec<Manifest> = manifests()
        .into_iter()
        .filter(|m| m.kind() == "ImageBuild")
        .collect();
    assert!(found.len() >= 4, "expected ImageBuilds in every example");
    found
}

/// Paths in `written` that `read` lacks: fields serde skipped because no type has them.
fn unknown_fields(written: &Value, read: &Value, at: &str, found: &mut Vec<String>) {
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (key, value) in w {
                let path = format!("{at}.{key}");
                match r.get(key) {
                    Some(read_value) => unknown_fields(value, read_value, &path, found),
                    None => found.push(path),
                }
            }
        }
        (Value::Array(w), Value::Array(r)) => {
            for (i, (wv, rv)) in w.iter().zip(r).enumerate() {
                unknown_fields(wv, rv, &format!("{at}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn every_example_file_parses_and_every_object_has_kind_and_name() {
    for manifest in manifests() {
        assert!(
            !manifest.kind().is_empty() && !manifest.name().is_empty(),
            "an object without kind or name in {}",
            manifest.file.display()
        );
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn every_imagebuild_example_deserializes_without_unknown_fields() {
    for manifest in imagebuilds() {
        let build: ImageBuild = serde_json::from_value(manifest.object.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.describe()));
        let read = serde_json::to_value(&build).expect("serialize ImageBuild");
        let mut unknown = Vec::new();
        unknown_fields(
            &manifest.object["spec"],
            &read["spec"],
            "spec",
            &mut unknown,
        );
        assert!(
            unknown.is_empty(),
            "{}: fields the controller ignores: {unknown:?}",
            manifest.describe()
        );
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn every_configmap_item_of_an_example_exists_in_its_configmap() {
    let all = manifests();
    for build in all.iter().filter(|m| m.kind() == "ImageBuild") {
        let sources = build.object["spec"]["context"]["configMaps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for source in sources {
            let name = source["name"].as_str().expect("configMaps[].name");
            let config_map = all
                .iter()
                .find(|m| m.kind() == "ConfigMap" && m.name() == name && m.file == build.file)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: ConfigMap {name} is not in the same file",
                        build.describe()
                    )
                });
            for item in source["items"].as_array().cloned().unwrap_or_default() {
                let key = item["key"].as_str().expect("items[].key");
                let data = &config_map.object["data"];
                let binary = &config_map.object["binaryData"];
                assert!(
                    data.get(key).is_some() || binary.get(key).is_some(),
                    "{}: ConfigMap {name} has no key {key}",
                    build.describe()
                );
            }
        }
    }
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn hello_site_is_a_scratch_image_with_two_tags_and_a_nested_file() {
    let build = imagebuilds()
        .into_iter()
        .find(|m| m.name() == "hello-site")
        .expect("the hello-site ImageBuild");
    let spec = &build.object["spec"];
    assert_eq!(
        spec["image"],
        "gitea.cnoe.localtest.me:8443/giteaadmin/hello-site"
    );
    assert_eq!(spec["tags"], serde_json::json!(["latest", "v1"]));
    assert!(spec.get("from").is_none());
    let items = spec["context"]["configMaps"][0]["items"]
        .as_array()
        .expect("items");
    assert!(items.iter().any(|i| i["path"] == "assets/app.js"));
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn kustomize_writes_the_hashed_configmap_name_into_the_imagebuild_and_a_new_one_per_edit() {
    let names = |dir: &Path| {
        let text = kustomize(dir);
        let objects: Vec<Value> = imagebuild::yaml::documents(&text)
            .into_iter()
            .map(|d| d.expect("kustomize output parses"))
            .collect();
        let of = |kind: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind} in {text}"))
        };
        let generated = of("ConfigMap")["metadata"]["name"]
            .as_str()
            .expect("ConfigMap name")
            .to_owned();
        let named = of("ImageBuild")["spec"]["context"]["configMaps"][0]["name"]
            .as_str()
            .expect("configMaps[0].name")
            .to_owned();
        (generated, named)
    };
    let example = common::repo_root().join("examples/kustomize");
    let (generated, named) = names(&example);
    assert!(
        generated.starts_with("site-src-") && generated.len() > "site-src-".len(),
        "not a hash-suffixed name: {generated}"
    );
    assert_eq!(
        named, generated,
        "the ImageBuild names the generated ConfigMap"
    );

    // An edited file is a new ConfigMap name, and so a new ImageBuild spec: a rebuild.
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&example).expect("example dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, copy.path().join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(copy.path().join("index.html"), "<h1>edited</h1>\n").expect("edit");
    let (edited, named_after_edit) = names(copy.path());
    assert_ne!(edited, generated);
    assert_eq!(named_after_edit, edited);
}

/// The kinds a bare API server serves; Argo CD's objects are checked by the other tests only.
fn served_by_test_api_server(manifest: &Manifest) -> bool {
    let api_version = manifest.object["apiVersion"].as_str().unwrap_or_default();
    let namespaced_elsewhere = manifest.object["metadata"].get("namespace").is_some();
    ["v1", "apps/v1", "imagebuild.dev/v1alpha1"].contains(&api_version) && !namespaced_elsewhere
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn api_server_accepts_every_example_in_a_dry_run() {
    let env = common::env();
    let crd = common::repo_root().join("crds/imagebuild.dev_imagebuilds.yaml");
    env.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crd.to_str().expect("UTF-8 path"),
    ]);
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/imagebuilds.imagebuild.dev",
    ]);
    let mut checked = 0;
    for manifest in manifests().iter().filter(|m| served_by_test_api_server(m)) {
        let yaml = serde_saphyr::to_string(&manifest.object).expect("to YAML");
        let out = env.kubectl_stdin(
            &[
                "apply",
                "--dry-run=server",
                "--namespace",
                "default",
                "-f",
                "-",
            ],
            &yaml,
        );
        assert!(
            out.status.success(),
            "the API server refused {}: {}",
            manifest.describe(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} objects checked");
}
