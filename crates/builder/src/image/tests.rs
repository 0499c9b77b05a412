//! The config and manifest a registry and a runtime will see.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::layer::{LayerBlob, LayerStats};

fn layer() -> LayerBlob {
    LayerBlob {
        descriptor: Descriptor {
            media_type: oci::MEDIA_TYPE_LAYER_GZIP.into(),
            digest: Digest::of(b"compressed"),
            size: 10,
            platform: None,
            annotations: BTreeMap::new(),
        },
        diff_id: Digest::of(b"uncompressed"),
        uncompressed_size: 12,
        location: BlobLocation::File(PathBuf::from("/blobs/layer")),
        stats: LayerStats::default(),
    }
}

fn base() -> BaseImage {
    let base_layer = Descriptor {
        media_type: oci::MEDIA_TYPE_DOCKER_LAYER_GZIP.into(),
        digest: Digest::of(b"base layer"),
        size: 99,
        platform: None,
        annotations: BTreeMap::from([("keep".to_owned(), "me".to_owned())]),
    };
    // Field order as a real base has it; `os.version` and `ContainerConfig` are unknown to us.
    let config: Value = serde_json::from_str(
        r#"{
          "architecture": "arm64",
          "variant": "v8",
          "os": "linux",
          "os.version": "x",
          "config": {
            "Env": ["PATH=/usr/bin", "MODE=dev"],
            "Cmd": ["/bin/sh"],
            "Labels": {"base": "yes"},
            "ExposedPorts": {"80/tcp": {}},
            "StopSignal": "SIGTERM"
          },
          "ContainerConfig": {"Hostname": "abc"},
          "created": "2020-01-01T00:00:00Z",
          "rootfs": {"type": "layers", "diff_ids": ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},
          "history": [{"created_by": "base"}]
        }"#,
    )
    .expect("json");
    BaseImage {
        platform: None,
        repository: "registry.example/owner/base".into(),
        registry: "registry.example".into(),
        manifest_digest: Digest::of(b"base manifest"),
        manifest: oci::Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_TYPE_DOCKER_MANIFEST.into()),
            config: Descriptor {
                media_type: oci::MEDIA_TYPE_DOCKER_CONFIG.into(),
                digest: Digest::of(b"base config"),
                size: 1,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers: vec![base_layer],
            annotations: BTreeMap::new(),
        },
        config,
    }
}

fn config_of(image: &BuiltImage) -> Value {
    match &image.config.location {
        BlobLocation::Bytes(bytes) => serde_json::from_slice(bytes).expect("config json"),
        other => panic!("config should be in memory, is {other:?}"),
    }
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn scratch_config_is_compact_and_exactly_this() {
    let spec = ImageSpec {
        entrypoint: Some(vec!["/bin/app".into()]),
        env: vec![("MODE".into(), "prod".into())],
        exposed_ports: vec!["8080".into()],
        ..ImageSpec::default()
    };
    let image = assemble(None, &[layer()], &spec).expect("assemble");
    let BlobLocation::Bytes(bytes) = &image.config.location else {
        panic!("config in memory")
    };
    let expected = format!(
        concat!(
            r#"{{"created":"1970-01-01T00:00:00Z","architecture":"amd64","os":"linux","#,
            r#""config":{{"ExposedPorts":{{"8080/tcp":{{}}}},"Env":["MODE=prod"],"Entrypoint":["/bin/app"]}},"#,
            r#""rootfs":{{"type":"layers","diff_ids":["{}"]}},"#,
            r#""history":[{{"created":"1970-01-01T00:00:00Z","created_by":"imagebuild"}}]}}"#
        ),
        layer().diff_id
    );
    assert_eq!(std::str::from_utf8(bytes).expect("utf8"), expected);
}

#[test]
fn scratch_uses_the_requested_platform() {
    let spec = ImageSpec {
        platform: Some("linux/arm64/v8".parse().expect("platform")),
        created: Some(1_700_000_000),
        ..ImageSpec::default()
    };
    let config = config_of(&assemble(None, &[layer()], &spec).expect("assemble"));
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
}

#[test]
fn manifest_is_oci_and_its_digest_is_of_its_exact_bytes() {
    let mut spec = ImageSpec::default();
    spec.annotations
        .insert("org.opencontainers.image.source".into(), "here".into());
    let image = assemble(None, &[layer()], &spec).expect("assemble");
    assert_eq!(image.manifest_digest, Digest::of(&image.manifest));
    assert_eq!(image.manifest_media_type, oci::MEDIA_TYPE_IMAGE_MANIFEST);
    let manifest: Value = serde_json::from_slice(&image.manifest).expect("json");
    assert_eq!(
        keys(&manifest),
        [
            "schemaVersion",
            "mediaType",
            "config",
            "layers",
            "annotations"
        ]
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        oci::MEDIA_TYPE_IMAGE_CONFIG
    );
    assert_eq!(
        manifest["config"]["digest"],
        image.config.descriptor.digest.as_str()
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.source"],
        "here"
    );
    assert!(!image.manifest.contains(&b'\n'), "compact JSON");
}

#[test]
fn the_same_inputs_give_the_same_manifest_bytes() {
    let spec = ImageSpec {
        cmd: Some(vec!["serve".into()]),
        ..ImageSpec::default()
    };
    let a = assemble(Some(&base()), &[layer()], &spec).expect("a");
    let b = assemble(Some(&base()), &[layer()], &spec).expect("b");
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(a.manifest_digest, b.manifest_digest);
}

#[test]
fn on_a_base_the_layers_are_the_base_ones_then_ours_with_their_locations() {
    let image = assemble(Some(&base()), &[layer()], &ImageSpec::default()).expect("assemble");
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.layers[0].descriptor, base().manifest.layers[0]);
    assert_eq!(image.layers[0].location, BlobLocation::Base);
    assert_eq!(
        image.layers[1].location,
        BlobLocation::File("/blobs/layer".into())
    );
    assert!(image.base.is_some());
    assert_eq!(image.size(), 99 + 10 + image.config.descriptor.size);
}

#[test]
fn on_a_base_unknown_fields_and_their_order_are_kept() {
    let image = assemble(Some(&base()), &[layer()], &ImageSpec::default()).expect("assemble");
    let config = config_of(&image);
    assert_eq!(
        keys(&config),
        [
            "architecture",
            "variant",
            "os",
            "os.version",
            "config",
            "ContainerConfig",
            "created",
            "rootfs",
            "history"
        ]
    );
    assert_eq!(config["ContainerConfig"], json!({"Hostname": "abc"}));
    assert_eq!(config["config"]["StopSignal"], "SIGTERM");
    assert_eq!(
        config["architecture"], "arm64",
        "the base's platform is kept"
    );
}

#[test]
fn on_a_base_our_diff_id_and_history_entry_are_appended() {
    let image = assemble(Some(&base()), &[layer()], &ImageSpec::default()).expect("assemble");
    let config = config_of(&image);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(diff_ids.len(), 2);
    assert_eq!(diff_ids[1], layer().diff_id.as_str());
    let history = config["history"].as_array().expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["created_by"], "imagebuild");
}

#[test]
fn on_a_base_env_merges_by_name_labels_merge_and_ports_add() {
    let spec = ImageSpec {
        env: vec![("MODE".into(), "prod".into()), ("NEW".into(), "1".into())],
        exposed_ports: vec!["8080/tcp".into()],
        labels: BTreeMap::from([("app".to_owned(), "hello".to_owned())]),
        ..ImageSpec::default()
    };
    let config = config_of(&assemble(Some(&base()), &[layer()], &spec).expect("assemble"));
    assert_eq!(
        config["config"]["Env"],
        json!(["PATH=/usr/bin", "MODE=prod", "NEW=1"])
    );
    assert_eq!(
        config["config"]["Labels"],
        json!({"base": "yes", "app": "hello"})
    );
    assert_eq!(
        config["config"]["ExposedPorts"],
        json!({"80/tcp": {}, "8080/tcp": {}})
    );
    assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]), "untouched");
}

#[test]
fn on_a_base_a_new_entrypoint_drops_the_base_cmd_as_docker_does() {
    let spec = ImageSpec {
        entrypoint: Some(vec!["/bin/app".into()]),
        ..ImageSpec::default()
    };
    let config = config_of(&assemble(Some(&base()), &[layer()], &spec).expect("assemble"));
    assert_eq!(config["config"]["Entrypoint"], json!(["/bin/app"]));
    assert!(config["config"].get("Cmd").is_none());
    assert_eq!(
        keys(&config["config"]),
        ["Env", "Labels", "ExposedPorts", "StopSignal", "Entrypoint"]
    );
}

#[test]
fn a_base_whose_diff_ids_do_not_match_its_layers_is_refused() {
    let mut broken = base();
    broken.config["rootfs"]["diff_ids"] = json!([]);
    let err = assemble(Some(&broken), &[layer()], &ImageSpec::default()).expect_err("broken");
    let message = err.to_string();
    assert!(message.contains("registry.example/owner/base"), "{message}");
    assert!(message.contains("0 diff_ids"), "{message}");
}

#[test]
fn an_invalid_port_is_refused_naming_it() {
    let spec = ImageSpec {
        exposed_ports: vec!["http".into()],
        ..ImageSpec::default()
    };
    let err = assemble(None, &[layer()], &spec).expect_err("port");
    assert!(err.to_string().contains("`http`"));
}

#[test]
fn an_env_name_with_equals_is_refused() {
    let spec = ImageSpec {
        env: vec![("A=B".into(), "c".into())],
        ..ImageSpec::default()
    };
    assert!(matches!(
        assemble(None, &[layer()], &spec),
        Err(ImageError::EnvName(_))
    ));
}

fn platform(text: &str) -> Platform {
    text.parse().expect("platform")
}

/// `base()` as the children of a two-platform base index (OCI or Docker list).
fn base_index(media_type: &str) -> (BaseIndex, Vec<BaseImage>) {
    let amd64 = {
        let mut b = base();
        b.config["architecture"] = json!("amd64");
        b.config.as_object_mut().expect("object").remove("variant");
        b.manifest_digest = Digest::of(b"amd64 manifest");
        b.platform = Some(platform("linux/amd64"));
        b
    };
    let arm64 = BaseImage {
        platform: Some(platform("linux/arm64/v8")),
        ..base()
    };
    let index = BaseIndex {
        digest: Digest::of(b"base index"),
        media_type: media_type.to_owned(),
        name: "registry.example/owner/base:1".into(),
    };
    (index, vec![amd64, arm64])
}

fn index_json(built: &BuiltIndex) -> Value {
    serde_json::from_slice(&built.manifest).expect("index json")
}

#[test]
fn an_index_on_a_base_has_one_child_per_base_platform_sharing_our_layer() {
    let (index, images) = base_index(oci::MEDIA_TYPE_IMAGE_INDEX);
    let children = Children::Base {
        index: &index,
        images: &images,
    };
    let built = assemble_index(children, &[layer()], &ImageSpec::default()).expect("index");
    let json = index_json(&built);
    assert_eq!(json["mediaType"], oci::MEDIA_TYPE_IMAGE_INDEX);
    assert_eq!(
        json["annotations"],
        json!({
            oci::ANNOTATION_BASE_DIGEST: Digest::of(b"base index").as_str(),
            oci::ANNOTATION_BASE_NAME: "registry.example/owner/base:1",
        })
    );
    let entries = json["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2);
    for (entry, child) in entries.iter().zip(&built.children) {
        assert_eq!(entry["digest"], child.manifest_digest.as_str());
        assert_eq!(entry["size"], child.manifest.len());
        assert_eq!(entry["mediaType"], oci::MEDIA_TYPE_IMAGE_MANIFEST);
        let config = config_of(child);
        assert_eq!(entry["platform"]["architecture"], config["architecture"]);
        assert_eq!(entry["platform"]["os"], config["os"]);
        let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
        assert_eq!(diff_ids.last(), Some(&json!(layer().diff_id.as_str())));
        assert_eq!(
            child.layers.last().map(|l| &l.descriptor),
            Some(&layer().descriptor)
        );
    }
    assert_eq!(entries[1]["platform"]["variant"], "v8");
    assert_eq!(config_of(&built.children[1])["variant"], "v8");
}

#[test]
fn an_index_on_a_docker_manifest_list_stays_a_docker_manifest_list() {
    let (index, images) = base_index(oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST);
    let children = Children::Base {
        index: &index,
        images: &images,
    };
    let built = assemble_index(children, &[layer()], &ImageSpec::default()).expect("index");
    assert_eq!(built.media_type, oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST);
    assert_eq!(
        index_json(&built)["mediaType"],
        oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST
    );
}

#[test]
fn a_two_platform_scratch_index_has_a_fixed_digest() {
    // Golden: a change here changes the digest of every multi-platform scratch build.
    let platforms = [platform("linux/amd64"), platform("linux/arm64")];
    let spec = ImageSpec {
        entrypoint: Some(vec!["/app".into()]),
        ..ImageSpec::default()
    };
    let built = assemble_index(Children::Scratch(&platforms), &[layer()], &spec).expect("index");
    let architectures: Vec<Value> = built
        .children
        .iter()
        .map(|c| config_of(c)["architecture"].clone())
        .collect();
    assert_eq!(architectures, [json!("amd64"), json!("arm64")]);
    // The amd64 child is exactly the single-platform scratch image of the same inputs.
    let single = assemble(None, &[layer()], &spec).expect("image");
    assert_eq!(built.children[0].manifest_digest, single.manifest_digest);
    assert!(index_json(&built).get("annotations").is_none());
    assert_eq!(
        built.digest.as_str(),
        "sha256:66239ccd3069352859ab961b6bd3d2e755c4da1bb74f45b9f271118db902f15c"
    );
}

#[test]
fn several_layers_follow_the_base_in_order_each_with_its_diff_id_and_history() {
    let second = LayerBlob {
        descriptor: Descriptor {
            digest: Digest::of(b"compressed 2"),
            ..layer().descriptor
        },
        diff_id: Digest::of(b"uncompressed 2"),
        location: BlobLocation::Target,
        ..layer()
    };
    let image = assemble(
        Some(&base()),
        &[layer(), second.clone()],
        &ImageSpec::default(),
    )
    .expect("assemble");
    let digests: Vec<_> = image.layers.iter().map(|l| &l.descriptor.digest).collect();
    assert_eq!(
        digests,
        [
            &base().manifest.layers[0].digest,
            &layer().descriptor.digest,
            &second.descriptor.digest
        ]
    );
    assert_eq!(image.layers[2].location, BlobLocation::Target);
    let config = config_of(&image);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(diff_ids.len(), 3);
    assert_eq!(diff_ids[1], layer().diff_id.as_str());
    assert_eq!(diff_ids[2], second.diff_id.as_str());
    let before = base().config["history"].as_array().map_or(0, Vec::len);
    assert_eq!(
        config["history"].as_array().expect("history").len(),
        before + 2
    );

    let scratch =
        config_of(&assemble(None, &[layer(), second], &ImageSpec::default()).expect("scratch"));
    assert_eq!(
        scratch["rootfs"]["diff_ids"].as_array().expect("ids").len(),
        2
    );
    assert_eq!(scratch["history"].as_array().expect("history").len(), 2);
}
