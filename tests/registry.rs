//! The registry client against the real registries of the test environment: Gitea over HTTPS
//! with an idpbuilder-style certificate (self-signed, CA:TRUE, served as the server certificate)
//! trusted through that certificate alone, and the CNCF distribution registry with htpasswd.
//! skopeo (Go's TLS stack and registry client) judges what we pushed.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use imagebuild::oci::{self, BaseImage, Blob, BlobLocation, BuiltImage, Descriptor, Digest};
use imagebuild::reference::ImageRef;
use imagebuild::registry::{
    Credentials, PushReport, RegistryClient, RegistryConfig, RegistryError, TrustConfig,
    fetch_base, no_progress, push_image,
};

// ---------------------------------------------------------------- clients

/// A configuration trusting only `ca` (labelled with the variable naming it) with credentials.
fn trusting(host: &str, ca: &Path, ca_label: &str, user: &str, password: &str) -> RegistryConfig {
    let pem = std::fs::read(ca).expect("read CA");
    let mut config = RegistryConfig::new(host);
    config.trust = TrustConfig::from_pem(&pem, ca_label).expect("CA");
    config.credentials = Some(Credentials::new(user, password, "the test environment"));
    config
}

fn gitea_config(env: &common::TestEnv) -> RegistryConfig {
    let ca = "IMAGEBUILD_TEST_GITEA_CA";
    trusting(
        &env.gitea,
        &env.gitea_ca,
        ca,
        &env.gitea_user,
        &env.gitea_password,
    )
}

fn gitea(env: &common::TestEnv) -> RegistryClient {
    RegistryClient::new(gitea_config(env)).expect("Gitea client")
}

fn registry_config(env: &common::TestEnv) -> RegistryConfig {
    let ca = "IMAGEBUILD_TEST_REGISTRY_CA";
    trusting(
        &env.registry,
        &env.registry_ca,
        ca,
        &env.registry_user,
        &env.registry_password,
    )
}

fn registry(env: &common::TestEnv) -> RegistryClient {
    RegistryClient::new(registry_config(env)).expect("registry client")
}

/// `owner/name` in Gitea, unique per call.
fn gitea_repo(env: &common::TestEnv, prefix: &str) -> String {
    format!("{}/{}", env.gitea_owner, common::unique_name(prefix))
}

/// `name` in the distribution registry, unique per call.
fn registry_repo(prefix: &str) -> String {
    format!("imagebuild/{}", common::unique_name(prefix))
}

// ---------------------------------------------------------------- images

/// A small real image: one gzip layer holding one file, a config whose diff_ids match.
struct TestImage {
    _dir: tempfile::TempDir,
    image: BuiltImage,
}

/// A gzip layer with `files` (name, content), written to `dir`; returns the blob and diff_id.
fn layer(dir: &Path, files: &[(&str, &[u8])]) -> (Blob, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, *content)
            .expect("tar entry");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let path = dir.join(Digest::of(&gz).hex());
    std::fs::write(&path, &gz).expect("write layer");
    let blob = Blob {
        descriptor: Descriptor::of(oci::MEDIA_TYPE_LAYER_GZIP, &gz),
        location: BlobLocation::File(path),
    };
    (blob, Digest::of(&tar))
}

/// Config JSON with fields in a deliberately non-alphabetical order (order must survive).
fn config_json(diff_ids: &[Digest]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"os":"linux","architecture":"amd64","config":{{"Env":["Z=1","A=2"],"Cmd":["/hello"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    )
    .into_bytes()
}

fn manifest_bytes(config: &Descriptor, layers: &[Descriptor]) -> Bytes {
    let manifest = oci::Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_IMAGE_MANIFEST.to_owned()),
        config: config.clone(),
        layers: layers.to_vec(),
        annotations: Default::default(),
    };
    Bytes::from(serde_json::to_vec(&manifest).expect("manifest json"))
}

fn assemble(layers: Vec<Blob>, diff_ids: &[Digest], base: Option<BaseImage>) -> BuiltImage {
    let config_bytes = Bytes::from(config_json(diff_ids));
    let config = Blob {
        descriptor: Descriptor::of(oci::MEDIA_TYPE_IMAGE_CONFIG, &config_bytes),
        location: BlobLocation::Bytes(config_bytes),
    };
    let layer_descriptors: Vec<Descriptor> = layers.iter().map(|l| l.descriptor.clone()).collect();
    let manifest = manifest_bytes(&config.descriptor, &layer_descriptors);
    BuiltImage {
        platform: None,
        manifest_digest: Digest::of(&manifest),
        manifest,
        manifest_media_type: oci::MEDIA_TYPE_IMAGE_MANIFEST.to_owned(),
        config,
        layers,
        base,
    }
}

/// An image whose single layer holds `content` (unique content gives unique blobs).
fn test_image(content: &str) -> TestImage {
    let dir = tempfile::tempdir().expect("tempdir");
    let (blob, diff_id) = layer(dir.path(), &[("hello.txt", content.as_bytes())]);
    let image = assemble(vec![blob], &[diff_id], None);
    TestImage { _dir: dir, image }
}

fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Pushes `image` under `tag_names`, without a base client or progress.
async fn push(
    client: &RegistryClient,
    repository: &str,
    image: &BuiltImage,
    tag_names: &[&str],
) -> Result<PushReport, RegistryError> {
    push_image(
        client,
        repository,
        image,
        &tags(tag_names),
        None,
        no_progress(),
    )
    .await
}

// ---------------------------------------------------------------- skopeo, the judge

/// `skopeo inspect --raw` of `reference`, trusting `ca` only, with `user:password`.
fn skopeo_raw(env: &common::TestEnv, reference: &str, ca: &Path, creds: &str) -> Vec<u8> {
    let certs = env.cert_dir(ca);
    let out = common::output(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(certs.path())
            .args(["--creds", creds])
            .arg(format!("docker://{reference}")),
    );
    assert!(
        out.status.success(),
        "skopeo inspect {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn assert_message_hides(err: &RegistryError, secret: &str) {
    assert!(
        !err.to_string().contains(secret),
        "message leaks a secret: {err}"
    );
    assert!(
        !format!("{err:?}").contains(secret),
        "Debug leaks a secret: {err:?}"
    );
}

// ---------------------------------------------------------------- Gitea: push and read back

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_image_pushed_over_https_reads_back_identically_with_skopeo() {
    let env = common::env();
    let repo = gitea_repo(env, "roundtrip");
    let test = test_image(&common::unique_name("content"));
    let report = push(&gitea(env), &repo, &test.image, &["v1"])
        .await
        .expect("push to Gitea");
    assert_eq!(report.manifest_digest, test.image.manifest_digest);
    assert_eq!(report.blobs_uploaded, 2);
    assert_eq!(report.bytes_uploaded, test.image.size());
    let raw = skopeo_raw(
        env,
        &format!("{}/{repo}:v1", env.gitea),
        &env.gitea_ca,
        &env.gitea_creds(),
    );
    assert_eq!(Digest::of(&raw), test.image.manifest_digest);
    assert_eq!(raw, test.image.manifest.to_vec());
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_second_push_of_the_same_image_uploads_nothing() {
    let env = common::env();
    let client = gitea(env);
    let repo = gitea_repo(env, "idempotent");
    let test = test_image(&common::unique_name("content"));
    push(&client, &repo, &test.image, &["v1"])
        .await
        .expect("first push");
    let second = push(&client, &repo, &test.image, &["v1"])
        .await
        .expect("second push");
    assert_eq!(second.bytes_uploaded, 0);
    assert_eq!((second.blobs_uploaded, second.blobs_skipped), (0, 2));
    assert_eq!(second.manifest_digest, test.image.manifest_digest);
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_tags_are_listed_added_without_upload_and_deleted() {
    let env = common::env();
    let client = gitea(env);
    let repo = gitea_repo(env, "tags");
    let test = test_image(&common::unique_name("content"));
    push(&client, &repo, &test.image, &["v1"])
        .await
        .expect("push");
    let digest = client.tag(&repo, "v1", "v2").await.expect("tag v2");
    assert_eq!(digest, test.image.manifest_digest);
    let mut listed = client.list_tags(&repo).await.expect("list");
    listed.sort();
    assert_eq!(listed, ["v1", "v2"]);
    client.delete_tag(&repo, "v2").await.expect("delete v2");
    assert_eq!(client.list_tags(&repo).await.expect("list"), ["v1"]);
    client
        .delete_tag(&repo, "v2")
        .await
        .expect("deleting again is fine");
    assert_eq!(
        client.head_manifest(&repo, "v1").await.expect("head"),
        Some(digest)
    );
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_large_blob_goes_up_in_chunks() {
    let env = common::env();
    let mut config = gitea_config(env);
    config.max_request_body = 256 * 1024;
    let client = RegistryClient::new(config).expect("client");
    let repo = gitea_repo(env, "chunked");
    let dir = tempfile::tempdir().expect("tempdir");
    // Incompressible content so that the gzip layer spans several chunks.
    let noise: Vec<u8> = (0..1_000_000u32).map(|_| fastrand::u8(..)).collect();
    let (blob, diff_id) = layer(dir.path(), &[("noise.bin", &noise)]);
    assert!(blob.descriptor.size > 3 * 256 * 1024);
    let image = assemble(vec![blob], &[diff_id], None);
    let report = push(&client, &repo, &image, &["big"])
        .await
        .expect("chunked push");
    assert_eq!(report.bytes_uploaded, image.size());
    let layer_digest = &image.layers[0].descriptor.digest;
    let fetched = client
        .get_blob(&repo, layer_digest)
        .await
        .expect("get")
        .collect_bytes(10 << 20)
        .await
        .expect("verified download");
    assert_eq!(fetched.len() as u64, image.layers[0].descriptor.size);
}

// ---------------------------------------------------------------- Gitea: errors users hit

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_wrong_password_is_unauthorized_naming_user_and_source_only() {
    let env = common::env();
    let mut config = gitea_config(env);
    let wrong = "wrong:p@ssword-that-must-not-leak";
    config.credentials = Some(Credentials::new(
        &env.gitea_user,
        wrong,
        "Secret gitea/gitea-credential",
    ));
    let client = RegistryClient::new(config).expect("client");
    let test = test_image("x");
    let err = push(&client, &gitea_repo(env, "denied"), &test.image, &["v1"])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err}");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(message.contains(&env.gitea_user), "{message}");
    assert!(
        message.contains("Secret gitea/gitea-credential"),
        "{message}"
    );
    assert_message_hides(&err, wrong);
    assert_message_hides(&err, &env.gitea_password);
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_unknown_owner_is_reported_with_what_to_create() {
    let env = common::env();
    let owner = common::unique_name("nosuchowner");
    let test = test_image("x");
    let err = push(&gitea(env), &format!("{owner}/app"), &test.image, &["v1"])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "OwnerNotFound", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("owner `{owner}` does not exist on {}", env.gitea)),
        "{err}"
    );
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_upper_case_name_is_invalid_with_a_lower_case_suggestion() {
    let env = common::env();
    let test = test_image("x");
    let repo = format!("{}/Hello", env.gitea_owner);
    let err = push(&gitea(env), &repo, &test.image, &["v1"])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidName", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("use `{}/hello`", env.gitea_owner)),
        "{err}"
    );
    let parsed = ImageRef::parse(&format!("{}/{repo}:v1", env.gitea)).unwrap_err();
    assert!(parsed.to_string().contains("lower case"), "{parsed}");
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_refusing_a_name_the_grammar_allows_is_invalid_name() {
    // `a__b` is valid per the distribution grammar; Gitea's pattern refuses it (NAME_INVALID).
    let env = common::env();
    let test = test_image("x");
    let repo = format!("{}/a__b", env.gitea_owner);
    let err = push(&gitea(env), &repo, &test.image, &["v1"])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidName", "{err}");
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_with_the_wrong_ca_is_an_untrusted_certificate_naming_the_ca() {
    let env = common::env();
    let mut config = gitea_config(env);
    let other_ca = std::fs::read(&env.registry_ca).expect("registry CA");
    config.trust = TrustConfig::from_pem(&other_ca, "--ca-file registry-ca.crt").expect("pem");
    let err = gitea_client_error(config).await;
    assert_eq!(err.reason(), "TlsUntrustedCertificate", "{err}");
    assert!(
        err.to_string().contains("--ca-file registry-ca.crt"),
        "{err}"
    );
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_without_a_ca_is_untrusted_with_a_hint_where_the_ca_is() {
    let env = common::env();
    let mut config = gitea_config(env);
    config.trust = TrustConfig::system();
    let err = gitea_client_error(config).await;
    assert_eq!(err.reason(), "TlsUntrustedCertificate", "{err}");
    assert!(err.to_string().contains("idpbuilder-cert"), "{err}");
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_reached_by_a_name_outside_its_certificate_is_a_hostname_mismatch() {
    let env = common::env();
    let port = env.gitea.rsplit(':').next().expect("port");
    let mut config = gitea_config(env);
    config.endpoint = Some(format!("https://localhost:{port}"));
    let err = gitea_client_error(config).await;
    assert_eq!(err.reason(), "TlsHostnameMismatch", "{err}");
    assert!(err.to_string().contains("cnoe.localtest.me"), "{err}");
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_accepts_our_credentials_at_the_api_root() {
    // Gitea refuses basic credentials on `/v2/` itself; the token flow must take over.
    gitea(common::env())
        .ping()
        .await
        .expect("GET /v2/ with credentials");
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_in_insecure_mode_is_reached_and_flagged() {
    let env = common::env();
    let mut config = gitea_config(env);
    config.trust = TrustConfig::insecure();
    let client = RegistryClient::new(config).expect("client");
    assert!(client.is_insecure());
    client.ping().await.expect("insecure reaches Gitea");
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn an_unreachable_port_is_reported_quickly() {
    let env = common::env();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let host = env.gitea.rsplit_once(':').expect("host:port").0;
    let mut config = gitea_config(env);
    config.host = format!("{host}:{port}");
    let started = Instant::now();
    let err = gitea_client_error(config).await;
    assert_eq!(err.reason(), "Unreachable", "{err}");
    assert!(err.is_transient());
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
}

async fn gitea_client_error(config: RegistryConfig) -> RegistryError {
    RegistryClient::new(config)
        .expect("client")
        .ping()
        .await
        .unwrap_err()
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_anonymous_pull_of_a_public_image_uses_a_token() {
    let env = common::env();
    let repo = gitea_repo(env, "anonymous");
    let test = test_image(&common::unique_name("content"));
    push(&gitea(env), &repo, &test.image, &["v1"])
        .await
        .expect("push");
    let mut config = gitea_config(env);
    config.credentials = None;
    let anonymous = RegistryClient::new(config).expect("client");
    let manifest = anonymous
        .get_manifest(&repo, "v1")
        .await
        .expect("anonymous pull");
    assert_eq!(manifest.digest, test.image.manifest_digest);
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_accepts_the_access_token_as_password() {
    let env = common::env();
    let mut config = gitea_config(env);
    config.credentials = Some(Credentials::new(&env.gitea_user, &env.gitea_token, "token"));
    let client = RegistryClient::new(config).expect("client");
    let test = test_image(&common::unique_name("content"));
    push(&client, &gitea_repo(env, "token"), &test.image, &["v1"])
        .await
        .expect("push with token");
}

// ---------------------------------------------------------------- Gitea: base images and mounts

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_base_image_is_fetched_with_its_config_field_order_kept() {
    let env = common::env();
    let client = gitea(env);
    let repo = gitea_repo(env, "base");
    let test = test_image(&common::unique_name("base"));
    push(&client, &repo, &test.image, &["1"])
        .await
        .expect("push base");
    let reference = ImageRef::parse(&format!("{}/{repo}:1", env.gitea)).expect("ref");
    let base = fetch_base(&client, &reference, None)
        .await
        .expect("fetch base");
    assert_eq!(base.manifest_digest, test.image.manifest_digest);
    assert_eq!(base.repository, format!("{}/{repo}", env.gitea));
    assert_eq!(base.registry, env.gitea);
    let original = match &test.image.config.location {
        BlobLocation::Bytes(b) => b.clone(),
        other => panic!("config bytes expected, got {other:?}"),
    };
    assert_eq!(
        serde_json::to_vec(&base.config).expect("json"),
        original.to_vec()
    );
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_base_index_resolves_to_the_wanted_platform_or_lists_what_exists() {
    let env = common::env();
    let client = gitea(env);
    let repo = gitea_repo(env, "index");
    let test = test_image(&common::unique_name("indexed"));
    push(&client, &repo, &test.image, &[])
        .await
        .expect("push platform image by digest");
    let mut entry = Descriptor::of(oci::MEDIA_TYPE_IMAGE_MANIFEST, &test.image.manifest);
    entry.platform = Some(oci::Platform::linux_amd64());
    let index = oci::Index {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_IMAGE_INDEX.to_owned()),
        manifests: vec![entry],
        annotations: Default::default(),
    };
    let index_bytes = Bytes::from(serde_json::to_vec(&index).expect("index json"));
    client
        .put_manifest(&repo, "multi", index_bytes, oci::MEDIA_TYPE_IMAGE_INDEX)
        .await
        .expect("push index");
    let reference = ImageRef::parse(&format!("{}/{repo}:multi", env.gitea)).expect("ref");
    let base = fetch_base(&client, &reference, None)
        .await
        .expect("amd64 from index");
    assert_eq!(base.manifest_digest, test.image.manifest_digest);
    let arm: oci::Platform = "linux/arm64".parse().expect("platform");
    let err = fetch_base(&client, &reference, Some(&arm))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NoMatchingPlatform");
    assert!(err.to_string().contains("it has: linux/amd64"), "{err}");
}

/// Pushes a base image to `repo` on `client` and returns it as the builder would see it.
async fn pushed_base(client: &RegistryClient, repo: &str, base_test: &TestImage) -> BaseImage {
    push(client, repo, &base_test.image, &["1"])
        .await
        .expect("push base");
    let reference = ImageRef::parse(&format!("{}/{repo}:1", client.host())).expect("ref");
    fetch_base(client, &reference, None)
        .await
        .expect("fetch base")
}

/// An image with the base's layer (located in the base repository) plus one new layer.
fn image_on(base: BaseImage, dir: &Path) -> BuiltImage {
    let base_layer = Blob {
        descriptor: base.manifest.layers[0].clone(),
        location: BlobLocation::Base,
    };
    let base_diff_id: Digest = base.config["rootfs"]["diff_ids"][0]
        .as_str()
        .expect("diff id")
        .parse()
        .expect("digest");
    let (own, own_diff_id) = layer(dir, &[("app.txt", common::unique_name("app").as_bytes())]);
    assemble(
        vec![base_layer, own],
        &[base_diff_id, own_diff_id],
        Some(base),
    )
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_base_layers_are_mounted_from_the_base_repository() {
    let env = common::env();
    let client = gitea(env);
    let base_test = test_image(&common::unique_name("base"));
    let base = pushed_base(&client, &gitea_repo(env, "mount-base"), &base_test).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = image_on(base, dir.path());
    let repo = gitea_repo(env, "mount-app");
    let report = push(&client, &repo, &image, &["v1"])
        .await
        .expect("push app");
    assert_eq!(report.blobs_mounted, 1, "{report:?}");
    assert_eq!(report.blobs_uploaded, 2, "{report:?}");
    let raw = skopeo_raw(
        env,
        &format!("{}/{repo}:v1", env.gitea),
        &env.gitea_ca,
        &env.gitea_creds(),
    );
    assert_eq!(Digest::of(&raw), image.manifest_digest);
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn gitea_mount_blob_reports_whether_it_mounted() {
    let env = common::env();
    let client = gitea(env);
    let from = gitea_repo(env, "mount-from");
    let test = test_image(&common::unique_name("content"));
    push(&client, &from, &test.image, &["v1"])
        .await
        .expect("push");
    let to = gitea_repo(env, "mount-to");
    let layer = &test.image.layers[0].descriptor.digest;
    assert!(client.mount_blob(&to, layer, &from).await.expect("mount"));
    assert!(client.blob_exists(&to, layer).await.expect("exists"));
    let unknown = Digest::of(common::unique_name("absent").as_bytes());
    assert!(
        !client
            .mount_blob(&to, &unknown, &from)
            .await
            .expect("declined mount")
    );
}

// ---------------------------------------------------------------- the distribution registry

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn distribution_image_pushed_reads_back_identically_with_skopeo() {
    let env = common::env();
    let client = registry(env);
    let repo = registry_repo("roundtrip");
    let test = test_image(&common::unique_name("content"));
    let report = push(&client, &repo, &test.image, &["v1"])
        .await
        .expect("push");
    assert_eq!(report.blobs_uploaded, 2);
    let raw = skopeo_raw(
        env,
        &format!("{}/{repo}:v1", env.registry),
        &env.registry_ca,
        &env.registry_creds(),
    );
    assert_eq!(Digest::of(&raw), test.image.manifest_digest);
    let second = push(&client, &repo, &test.image, &["v1"])
        .await
        .expect("second push");
    assert_eq!((second.bytes_uploaded, second.blobs_skipped), (0, 2));
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn distribution_tags_are_listed_added_and_deleted_by_digest() {
    let env = common::env();
    let client = registry(env);
    let repo = registry_repo("tags");
    let test = test_image(&common::unique_name("content"));
    push(&client, &repo, &test.image, &["v1"])
        .await
        .expect("push");
    client.tag(&repo, "v1", "v2").await.expect("tag");
    let mut listed = client.list_tags(&repo).await.expect("list");
    listed.sort();
    assert_eq!(listed, ["v1", "v2"]);
    client.delete_tag(&repo, "v2").await.expect("delete");
    // The distribution registry deletes the manifest, so every tag of it goes.
    assert_eq!(client.head_manifest(&repo, "v2").await.expect("head"), None);
    client
        .delete_tag(&repo, "v2")
        .await
        .expect("deleting again is fine");
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn distribution_large_blob_goes_up_in_chunks() {
    let env = common::env();
    let mut config = registry_config(env);
    config.max_request_body = 128 * 1024;
    let client = RegistryClient::new(config).expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let noise: Vec<u8> = (0..600_000u32).map(|_| fastrand::u8(..)).collect();
    let (blob, diff_id) = layer(dir.path(), &[("noise.bin", &noise)]);
    let image = assemble(vec![blob], &[diff_id], None);
    let repo = registry_repo("chunked");
    push(&client, &repo, &image, &["big"])
        .await
        .expect("chunked push");
    let raw = skopeo_raw(
        env,
        &format!("{}/{repo}:big", env.registry),
        &env.registry_ca,
        &env.registry_creds(),
    );
    assert_eq!(Digest::of(&raw), image.manifest_digest);
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn distribution_wrong_password_is_unauthorized() {
    let env = common::env();
    let mut config = registry_config(env);
    let wrong = "not-the-password";
    config.credentials = Some(Credentials::new(
        &env.registry_user,
        wrong,
        "--password-stdin",
    ));
    let err = RegistryClient::new(config)
        .expect("client")
        .ping()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unauthorized", "{err}");
    assert!(err.to_string().contains("--password-stdin"), "{err}");
    assert_message_hides(&err, wrong);
}

#[tokio::test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
async fn base_layers_on_another_registry_are_streamed_across() {
    let env = common::env();
    let source = registry(env);
    let base_test = test_image(&common::unique_name("base"));
    let base = pushed_base(&source, &registry_repo("copy-base"), &base_test).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = image_on(base, dir.path());
    let repo = gitea_repo(env, "copy-app");
    let report = push_image(
        &gitea(env),
        &repo,
        &image,
        &tags(&["v1"]),
        Some(&source),
        no_progress(),
    )
    .await
    .expect("push with a base from the other registry");
    assert_eq!(report.blobs_copied, 1, "{report:?}");
    let raw = skopeo_raw(
        env,
        &format!("{}/{repo}:v1", env.gitea),
        &env.gitea_ca,
        &env.gitea_creds(),
    );
    assert_eq!(Digest::of(&raw), image.manifest_digest);
}

// ---------------------------------------------------------------- measurement

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Throughput and memory of large blob uploads and downloads (not a pass/fail test):
/// `IMAGEBUILD_BENCH_MIB=512 cargo test --release --test registry -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn measure_large_blob_transfers() {
    let env = common::env();
    let mib: u64 = std::env::var("IMAGEBUILD_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mib {
            fastrand::fill(&mut chunk);
            file.write_all(&chunk).expect("write");
        }
    }
    let mut hasher = oci::Sha256::default();
    let mut reader = std::fs::File::open(&path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let blob = Blob {
        descriptor: Descriptor {
            media_type: oci::MEDIA_TYPE_LAYER_GZIP.to_owned(),
            digest: hasher.finish(),
            size: mib << 20,
            platform: None,
            annotations: Default::default(),
        },
        location: BlobLocation::File(path),
    };
    let cases = [
        (
            "gitea, one request",
            gitea_config(env),
            gitea_repo(env, "bench"),
        ),
        (
            "gitea, 64 MiB chunks",
            gitea_config(env),
            gitea_repo(env, "bench"),
        ),
        (
            "distribution, one request",
            registry_config(env),
            registry_repo("bench"),
        ),
        (
            "distribution, 64 MiB chunks",
            registry_config(env),
            registry_repo("bench"),
        ),
    ];
    for (label, mut config, repo) in cases {
        if label.contains("chunks") {
            config.max_request_body = 64 << 20;
        }
        let client = RegistryClient::new(config).expect("client");
        let started = Instant::now();
        client
            .push_blob(&repo, &blob, no_progress())
            .await
            .expect("push");
        let up = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut stream = client
            .get_blob(&repo, &blob.descriptor.digest)
            .await
            .expect("get");
        let mut received = 0u64;
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            received += chunk.expect("verified chunk").len() as u64;
        }
        let down = started.elapsed().as_secs_f64();
        assert_eq!(received, blob.descriptor.size);
        eprintln!(
            "{label}: {mib} MiB up {up:.1}s ({:.0} MiB/s), down+verify {down:.1}s ({:.0} MiB/s), peak RSS {} MiB",
            mib as f64 / up,
            mib as f64 / down,
            peak_rss_mib()
        );
    }
}
