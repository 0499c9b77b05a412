//! Behaviour of the client against scripted in-process servers: retries, authentication,
//! redirects, TLS trust, uploads and manifests. The real Gitea and distribution registry are
//! exercised by tests/registry.rs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::testserver::{Recorded, Reply, TestServer};
use super::tls::tests::{ca_and_leaf, self_signed_ca_cert};
use super::*;
use crate::oci::{self, Blob, BlobLocation, BuiltImage, Descriptor, Digest};

const USER: &str = "giteaAdmin";
const PASSWORD: &str = "pa:ss@w0rd-very-secret";
const SOURCE: &str = "Secret gitea/gitea-credential";

fn credentials() -> Credentials {
    Credentials::new(USER, PASSWORD, SOURCE)
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

fn config_for(server: &TestServer) -> RegistryConfig {
    let mut config = RegistryConfig::new(format!("127.0.0.1:{}", server.addr.port()));
    config.endpoint = Some(server.url("http", "127.0.0.1"));
    config.retry = fast_retry();
    config
}

fn client_for(server: &TestServer, credentials: Option<Credentials>) -> RegistryClient {
    let mut config = config_for(server);
    config.credentials = credentials;
    RegistryClient::new(config).expect("client")
}

/// Answers `replies` in order, then the last one forever.
fn script(replies: Vec<Reply>) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    let next = AtomicUsize::new(0);
    move |_| {
        let i = next.fetch_add(1, Ordering::SeqCst).min(replies.len() - 1);
        replies[i].clone()
    }
}

fn basic_header() -> String {
    use base64_encode as b64;
    format!("Basic {}", b64(format!("{USER}:{PASSWORD}").as_bytes()))
}

/// Standard base64, enough for test assertions (avoids a dev-dependency).
fn base64_encode(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn transient_server_errors_are_retried_until_success() {
    let server = TestServer::http(script(vec![
        Reply::status(503),
        Reply::status(502),
        Reply::status(200),
    ]))
    .await;
    client_for(&server, None)
        .ping()
        .await
        .expect("third attempt succeeds");
    assert_eq!(server.recorded().len(), 3);
}

#[tokio::test]
async fn retries_stop_after_the_configured_attempts() {
    let server = TestServer::http(script(vec![Reply::status(503)])).await;
    let err = client_for(&server, None).ping().await.unwrap_err();
    assert_eq!(err.reason(), "RegistryUnavailable");
    assert!(err.is_transient());
    assert_eq!(server.recorded().len(), 5);
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let server = TestServer::http(script(vec![
        Reply::status(429).header("Retry-After", "1"),
        Reply::status(200),
    ]))
    .await;
    let started = Instant::now();
    client_for(&server, None)
        .ping()
        .await
        .expect("second attempt");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_after_beyond_the_limit_fails_at_once() {
    let server = TestServer::http(script(vec![
        Reply::status(429).header("Retry-After", "3600"),
    ]))
    .await;
    let err = client_for(&server, None).ping().await.unwrap_err();
    assert_eq!(err.reason(), "RateLimited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(server.recorded().len(), 1);
}

#[tokio::test]
async fn unreachable_port_is_reported_after_quick_retries() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut config = RegistryConfig::new(format!("127.0.0.1:{port}"));
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    let err = RegistryClient::new(config)
        .expect("client")
        .ping()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unreachable");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn basic_credentials_go_up_front() {
    let server = TestServer::http(script(vec![Reply::status(200)])).await;
    client_for(&server, Some(credentials()))
        .ping()
        .await
        .expect("ping");
    let requests = server.recorded();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(basic_header().as_str())
    );
}

#[tokio::test]
async fn refused_credentials_fail_at_once_naming_user_and_source_but_not_the_password() {
    let server = TestServer::http(script(vec![
        Reply::status(401)
            .header("WWW-Authenticate", r#"Basic realm="Gitea Package API""#)
            .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#),
    ]))
    .await;
    let err = client_for(&server, Some(credentials()))
        .ping()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unauthorized");
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains(USER) && msg.contains(SOURCE), "{msg}");
    assert!(
        !msg.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD),
        "{msg}"
    );
    // One anonymous probe for a token challenge, then no retry.
    let requests = server.recorded();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("authorization"), None);
}

#[tokio::test]
async fn a_bare_401_to_basic_credentials_leads_to_the_token_flow() {
    // Gitea answers basic credentials on `/v2/` itself with a 401 without challenge.
    let server = TestServer::http(|r: &Recorded| {
        let auth = r.header("authorization").unwrap_or_default().to_owned();
        if r.target.starts_with("/v2/token") {
            return Reply::status(200).body(r#"{"token":"tok"}"#);
        }
        match auth.as_str() {
            "Bearer tok" => Reply::status(200),
            "" => Reply::status(401).header(
                "WWW-Authenticate",
                r#"Bearer realm="/v2/token",service="container_registry",scope="*""#,
            ),
            _ => Reply::status(401),
        }
    })
    .await;
    client_for(&server, Some(credentials()))
        .ping()
        .await
        .expect("token flow after the bare 401");
    let token_request = server
        .recorded()
        .into_iter()
        .find(|r| r.target.starts_with("/v2/token"))
        .expect("token request");
    assert_eq!(
        token_request.header("authorization"),
        Some(basic_header().as_str())
    );
}

/// A registry that demands a bearer token and hands it out at `/v2/token`.
fn token_registry(
    requests_for_token: Arc<AtomicUsize>,
) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    move |r: &Recorded| {
        if r.target.starts_with("/v2/token") {
            requests_for_token.fetch_add(1, Ordering::SeqCst);
            return Reply::status(200).body(r#"{"token":"tok-123","expires_in":300}"#);
        }
        if r.header("authorization") == Some("Bearer tok-123") {
            return Reply::status(200);
        }
        let host = r.header("host").unwrap_or_default();
        Reply::status(401).header(
            "WWW-Authenticate",
            &format!(
                r#"Bearer realm="http://{host}/v2/token",service="container_registry",scope="*""#
            ),
        )
    }
}

#[tokio::test]
async fn bearer_challenge_is_answered_with_a_token_once_and_cached() {
    let token_requests = Arc::new(AtomicUsize::new(0));
    let server = TestServer::http(token_registry(token_requests.clone())).await;
    let client = client_for(&server, Some(credentials()));
    client.ping().await.expect("first ping with token");
    client.ping().await.expect("second ping reuses the token");
    assert_eq!(token_requests.load(Ordering::SeqCst), 1);
    let requests = server.recorded();
    let token_request = requests
        .iter()
        .find(|r| r.target.starts_with("/v2/token"))
        .expect("token request");
    assert!(token_request.target.contains("service=container_registry"));
    assert_eq!(
        token_request.header("authorization"),
        Some(basic_header().as_str())
    );
    assert_eq!(
        requests.last().and_then(|r| r.header("authorization")),
        Some("Bearer tok-123")
    );
}

#[tokio::test]
async fn anonymous_clients_fetch_anonymous_tokens() {
    let server = TestServer::http(token_registry(Arc::default())).await;
    client_for(&server, None)
        .ping()
        .await
        .expect("anonymous token");
    let requests = server.recorded();
    let token_request = requests
        .iter()
        .find(|r| r.target.starts_with("/v2/token"))
        .expect("token");
    assert_eq!(token_request.header("authorization"), None);
}

#[tokio::test]
async fn a_realm_on_another_host_never_receives_credentials() {
    let foreign = TestServer::http(|r: &Recorded| {
        if r.target.starts_with("/token") {
            Reply::status(200).body(r#"{"access_token":"foreign-tok"}"#)
        } else {
            Reply::status(404)
        }
    })
    .await;
    let realm = format!("{}/token", foreign.url("http", "localhost"));
    let registry = TestServer::http(move |r: &Recorded| {
        if r.header("authorization") == Some("Bearer foreign-tok") {
            Reply::status(200)
        } else if r.target.starts_with("/token") {
            Reply::status(404)
        } else {
            Reply::status(401).header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}""#))
        }
    })
    .await;
    client_for(&registry, Some(credentials()))
        .ping()
        .await
        .expect("token from the realm");
    let foreign_requests = foreign.recorded();
    assert_eq!(foreign_requests.len(), 1);
    assert_eq!(foreign_requests[0].header("authorization"), None);
    // Our own endpoint was asked first under the realm's path, with credentials.
    assert!(
        registry
            .recorded()
            .iter()
            .any(|r| r.target.starts_with("/token") && r.header("authorization").is_some())
    );
}

#[tokio::test]
async fn a_cross_host_redirect_drops_credentials() {
    let content = b"layer bytes".to_vec();
    let digest = Digest::of(&content);
    let storage = {
        let content = content.clone();
        TestServer::http(move |_| Reply::status(200).body(content.clone())).await
    };
    let target = format!("{}/blob", storage.url("http", "localhost"));
    let registry = TestServer::http(move |_| Reply::status(307).header("Location", &target)).await;
    let client = client_for(&registry, Some(credentials()));
    let stream = client.get_blob("o/app", &digest).await.expect("blob");
    let bytes = stream.collect_bytes(1024).await.expect("verified");
    assert_eq!(&bytes[..], &content[..]);
    assert!(registry.recorded()[0].header("authorization").is_some());
    assert_eq!(storage.recorded()[0].header("authorization"), None);
}

// ---------------------------------------------------------------- downloads and manifests

#[tokio::test]
async fn a_blob_with_the_wrong_content_ends_in_a_digest_mismatch() {
    let server = TestServer::http(|_| Reply::status(200).body("tampered")).await;
    let client = client_for(&server, None);
    let mut stream = client
        .get_blob("o/app", &Digest::of(b"original"))
        .await
        .expect("stream");
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    let err = last.expect("items").unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch");
}

#[tokio::test]
async fn a_manifest_fetched_by_digest_must_match_it() {
    let server = TestServer::http(|_| {
        Reply::status(200)
            .header("Content-Type", oci::MEDIA_TYPE_IMAGE_MANIFEST)
            .body("{}")
    })
    .await;
    let client = client_for(&server, None);
    let wanted = Digest::of(b"something else");
    let err = client
        .get_manifest("o/app", wanted.as_str())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch");
    let by_tag = client.get_manifest("o/app", "v1").await.expect("by tag");
    assert_eq!(by_tag.digest, Digest::of(b"{}"));
    assert_eq!(by_tag.media_type, oci::MEDIA_TYPE_IMAGE_MANIFEST);
}

#[tokio::test]
async fn a_registry_digest_that_differs_from_the_bytes_sent_is_an_error() {
    let other = Digest::of(b"not what was sent");
    let server = TestServer::http(move |_| {
        Reply::status(201).header("Docker-Content-Digest", other.as_str())
    })
    .await;
    let err = client_for(&server, None)
        .put_manifest(
            "o/app",
            "v1",
            Bytes::from_static(b"{}"),
            oci::MEDIA_TYPE_IMAGE_MANIFEST,
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch");
}

#[tokio::test]
async fn tag_lists_follow_link_pagination() {
    let server = TestServer::http(|r: &Recorded| {
        if r.target.contains("last=b") {
            Reply::status(200).body(r#"{"name":"o/app","tags":["c"]}"#)
        } else {
            Reply::status(200)
                .header("Link", r#"</v2/o/app/tags/list?n=2&last=b>; rel="next""#)
                .body(r#"{"name":"o/app","tags":["a","b"]}"#)
        }
    })
    .await;
    let tags = client_for(&server, None)
        .list_tags("o/app")
        .await
        .expect("tags");
    assert_eq!(tags, ["a", "b", "c"]);
}

#[tokio::test]
async fn deleting_a_tag_falls_back_to_the_digest_where_tags_cannot_be_deleted() {
    let digest = Digest::of(b"manifest");
    let server = {
        let digest = digest.clone();
        TestServer::http(move |r: &Recorded| match r.method.as_str() {
            "DELETE" if r.target.ends_with("/v1") => Reply::status(400)
                .body(r#"{"errors":[{"code":"DIGEST_INVALID","message":"invalid digest"}]}"#),
            "HEAD" => Reply::status(200).header("Docker-Content-Digest", digest.as_str()),
            "DELETE" => Reply::status(202),
            _ => Reply::status(500),
        })
        .await
    };
    client_for(&server, None)
        .delete_tag("o/app", "v1")
        .await
        .expect("deleted");
    let last = server.recorded().pop().expect("requests");
    assert_eq!(last.method, "DELETE");
    assert!(last.target.ends_with(digest.as_str()), "{}", last.target);
}

#[tokio::test]
async fn deleting_a_missing_tag_is_not_an_error() {
    let server = TestServer::http(|_| Reply::status(404)).await;
    client_for(&server, None)
        .delete_tag("o/app", "gone")
        .await
        .expect("already gone");
}

// ---------------------------------------------------------------- uploads

/// Just enough of a registry for uploads: sessions, chunks, blobs, manifests.
#[derive(Default)]
struct FakeRegistry {
    blobs: HashMap<String, Vec<u8>>,
    sessions: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, Vec<u8>>,
    next_session: usize,
    /// Answer the next N final PUTs with 503.
    fail_puts: usize,
    /// Status for every upload start, instead of opening a session.
    refuse_start: Option<u16>,
}

impl FakeRegistry {
    fn handle(&mut self, r: &Recorded) -> Reply {
        let path = r.target.split('?').next().unwrap_or_default().to_owned();
        let query = r.target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        match (r.method.as_str(), path.as_str()) {
            ("HEAD", p) if p.contains("/blobs/") => {
                let digest = p.rsplit('/').next().unwrap_or_default();
                Reply::status(if self.blobs.contains_key(digest) {
                    200
                } else {
                    404
                })
            }
            ("POST", p) if p.ends_with("/blobs/uploads/") => {
                if let Some(status) = self.refuse_start {
                    return Reply::status(status);
                }
                self.next_session += 1;
                let id = format!("s{}", self.next_session);
                self.sessions.insert(id.clone(), Vec::new());
                // Relative, with a query already, as Gitea and distribution variously do.
                Reply::status(202).header(
                    "Location",
                    &format!("/v2/o/app/blobs/uploads/{id}?_state=x"),
                )
            }
            ("PATCH", p) => {
                let id = p.rsplit('/').next().unwrap_or_default().to_owned();
                let Some(data) = self.sessions.get_mut(&id) else {
                    return Reply::status(404);
                };
                // A streamed PATCH (length unknown when it started) has no range to check.
                let expected = format!("{}-{}", data.len(), data.len() + r.body.len() - 1);
                if r.header("content-range")
                    .is_some_and(|range| range != expected)
                {
                    return Reply::status(416);
                }
                data.extend_from_slice(&r.body);
                Reply::status(202).header(
                    "Location",
                    &format!("/v2/o/app/blobs/uploads/{id}?_state=y"),
                )
            }
            ("PUT", p) if p.contains("/blobs/uploads/") => {
                if self.fail_puts > 0 {
                    self.fail_puts -= 1;
                    return Reply::status(503);
                }
                let id = p.rsplit('/').next().unwrap_or_default().to_owned();
                let Some(mut data) = self.sessions.remove(&id) else {
                    return Reply::status(404);
                };
                data.extend_from_slice(&r.body);
                let digest = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("digest="))
                    .unwrap_or_default()
                    .replace("%3A", ":");
                if Digest::of(&data).as_str() != digest {
                    return Reply::status(400).body(
                        r#"{"errors":[{"code":"DIGEST_INVALID","message":"digest mismatch"}]}"#,
                    );
                }
                self.blobs.insert(digest, data);
                Reply::status(201)
            }
            ("PUT", p) if p.contains("/manifests/") => {
                self.manifests.insert(p.to_owned(), r.body.clone());
                Reply::status(201).header("Docker-Content-Digest", Digest::of(&r.body).as_str())
            }
            _ => Reply::status(404),
        }
    }
}

async fn fake_registry(state: FakeRegistry) -> (TestServer, Arc<Mutex<FakeRegistry>>) {
    let state = Arc::new(Mutex::new(state));
    let shared = state.clone();
    let server = TestServer::http(move |r: &Recorded| shared.lock().expect("lock").handle(r)).await;
    (server, state)
}

fn file_blob(dir: &std::path::Path, content: &[u8]) -> Blob {
    let path = dir.join(Digest::of(content).hex());
    std::fs::write(&path, content).expect("write blob");
    Blob {
        descriptor: Descriptor {
            media_type: oci::MEDIA_TYPE_LAYER_GZIP.to_owned(),
            digest: Digest::of(content),
            size: content.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
        location: BlobLocation::File(path),
    }
}

/// Counts bytes reported, net of rewinds.
#[derive(Default)]
struct CountingProgress(AtomicU64);

impl Progress for CountingProgress {
    fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::SeqCst);
    }
    fn rewind(&self, bytes: u64) {
        self.0.fetch_sub(bytes, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn large_blobs_go_up_in_chunks_with_bare_content_ranges() {
    let (server, state) = fake_registry(FakeRegistry::default()).await;
    let mut config = config_for(&server);
    config.max_request_body = 10;
    let client = RegistryClient::new(config).expect("client");
    let dir = tempfile::tempdir().expect("dir");
    let content: Vec<u8> = (0u8..25).collect();
    let blob = file_blob(dir.path(), &content);
    let pushed = client
        .push_blob("o/app", &blob, no_progress())
        .await
        .expect("pushed");
    assert_eq!(pushed.uploaded_bytes, 25);
    let ranges: Vec<String> = server
        .recorded()
        .iter()
        .filter(|r| r.method == "PATCH")
        .filter_map(|r| r.header("content-range").map(str::to_owned))
        .collect();
    assert_eq!(ranges, ["0-9", "10-19", "20-24"]);
    let final_put = server
        .recorded()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .expect("put");
    assert!(
        final_put.target.contains("_state=y&digest=sha256"),
        "{}",
        final_put.target
    );
    assert_eq!(
        state.lock().expect("lock").blobs[blob.descriptor.digest.as_str()],
        content
    );
}

/// Sends `segments` through a channel to [`RegistryClient::upload_segments`] and closes the
/// upload as `descriptor`.
async fn stream_upload(
    client: &RegistryClient,
    segments: &[&[u8]],
    descriptor: &Descriptor,
) -> Result<u64, RegistryError> {
    let (tx, rx) = tokio::sync::mpsc::channel(segments.len().max(1));
    for segment in segments {
        tx.send(Bytes::copy_from_slice(segment))
            .await
            .expect("queue");
    }
    drop(tx);
    let sent = Arc::new(AtomicU64::new(0));
    let upload = client.upload_segments("o/app", rx, sent.clone()).await?;
    client.finish_streamed("o/app", upload, descriptor).await?;
    Ok(sent.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_streamed_upload_sends_segments_as_they_come_and_closes_with_the_digest() {
    let (server, state) = fake_registry(FakeRegistry::default()).await;
    let client = client_for(&server, None);
    let content: Vec<u8> = (0u8..30).collect();
    let descriptor = file_blob(tempfile::tempdir().expect("dir").path(), &content).descriptor;
    let sent = stream_upload(
        &client,
        &[&content[..12], &content[12..13], &content[13..]],
        &descriptor,
    )
    .await
    .expect("uploaded");
    assert_eq!(sent, 30);
    let patches: Vec<Recorded> = server
        .recorded()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "one request for a blob under the limit");
    assert_eq!(
        patches[0].header("content-length"),
        None,
        "length unknown up front"
    );
    assert_eq!(
        state.lock().expect("lock").blobs[descriptor.digest.as_str()],
        content
    );
}

#[tokio::test]
async fn a_streamed_upload_splits_its_requests_at_the_request_size_limit() {
    let (server, state) = fake_registry(FakeRegistry::default()).await;
    let mut config = config_for(&server);
    config.max_request_body = 10;
    let client = RegistryClient::new(config).expect("client");
    let content: Vec<u8> = (0u8..25).collect();
    let descriptor = file_blob(tempfile::tempdir().expect("dir").path(), &content).descriptor;
    stream_upload(&client, &[&content[..7], &content[7..]], &descriptor)
        .await
        .expect("uploaded");
    let bodies: Vec<usize> = server
        .recorded()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.body.len())
        .collect();
    assert_eq!(bodies, [10, 10, 5]);
    assert_eq!(
        state.lock().expect("lock").blobs[descriptor.digest.as_str()],
        content
    );
}

#[tokio::test]
async fn a_streamed_upload_that_cannot_start_lets_go_of_its_producer() {
    let server = TestServer::http(script(vec![Reply::status(500)])).await;
    let client = client_for(&server, None);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Bytes::from_static(b"first")).await.expect("queue");
    let sent = Arc::new(AtomicU64::new(0));
    let error = client
        .upload_segments("o/app", rx, sent)
        .await
        .expect_err("the registry cannot take uploads");
    assert!(
        matches!(error, RegistryError::RegistryUnavailable { .. }),
        "{error:?}"
    );
    assert!(tx.is_closed(), "the producer is told to stop copying");
}

#[tokio::test]
async fn a_streamed_upload_of_the_wrong_size_is_not_closed() {
    let (server, state) = fake_registry(FakeRegistry::default()).await;
    let client = client_for(&server, None);
    let content = b"twelve bytes";
    let mut descriptor = file_blob(tempfile::tempdir().expect("dir").path(), content).descriptor;
    descriptor.size += 1;
    let error = stream_upload(&client, &[content], &descriptor)
        .await
        .expect_err("size mismatch");
    assert!(error.to_string().contains("12 bytes"), "{error}");
    assert!(state.lock().expect("lock").blobs.is_empty());
}

#[tokio::test]
async fn a_failed_upload_is_restarted_from_the_file_and_progress_rewound() {
    let (server, state) = fake_registry(FakeRegistry {
        fail_puts: 2,
        ..FakeRegistry::default()
    })
    .await;
    let client = client_for(&server, None);
    let dir = tempfile::tempdir().expect("dir");
    let blob = file_blob(dir.path(), b"some layer content");
    let progress = Arc::new(CountingProgress::default());
    client
        .push_blob("o/app", &blob, progress.clone())
        .await
        .expect("third attempt");
    assert_eq!(progress.0.load(Ordering::SeqCst), blob.descriptor.size);
    let starts = server
        .recorded()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(starts, 3, "each attempt opens a new session");
    assert!(
        state
            .lock()
            .expect("lock")
            .blobs
            .contains_key(blob.descriptor.digest.as_str())
    );
}

#[tokio::test]
async fn unknown_owner_on_upload_start_says_which_owner_to_create() {
    let (server, _) = fake_registry(FakeRegistry {
        refuse_start: Some(404),
        ..FakeRegistry::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let blob = file_blob(dir.path(), b"x");
    let err = client_for(&server, None)
        .push_blob("nobody/app", &blob, no_progress())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "OwnerNotFound");
    assert!(
        err.to_string().contains("owner `nobody` does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn a_body_too_large_for_the_proxy_is_reported_as_such() {
    let server = TestServer::http(|r: &Recorded| match r.method.as_str() {
        "POST" => Reply::status(202).header("Location", "/v2/o/app/blobs/uploads/s1"),
        "PUT" => {
            Reply::status(413).body("<html><title>413 Request Entity Too Large</title></html>")
        }
        _ => Reply::status(404),
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let blob = file_blob(dir.path(), b"pretend this is 1.5 GiB");
    let err = client_for(&server, None)
        .push_blob("o/app", &blob, no_progress())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "BodyTooLarge");
}

fn built_image(dir: &std::path::Path) -> BuiltImage {
    let layer = file_blob(dir, b"layer");
    let config_bytes = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let config = Blob {
        descriptor: Descriptor {
            media_type: oci::MEDIA_TYPE_IMAGE_CONFIG.to_owned(),
            digest: Digest::of(&config_bytes),
            size: config_bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
        location: BlobLocation::Bytes(config_bytes),
    };
    let manifest = oci::Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_IMAGE_MANIFEST.to_owned()),
        config: config.descriptor.clone(),
        layers: vec![layer.descriptor.clone()],
        annotations: Default::default(),
    };
    let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
    BuiltImage {
        platform: None,
        manifest_digest: Digest::of(&manifest),
        manifest,
        manifest_media_type: oci::MEDIA_TYPE_IMAGE_MANIFEST.to_owned(),
        config,
        layers: vec![layer],
        base: None,
    }
}

#[tokio::test]
async fn push_uploads_missing_blobs_then_tags_and_skips_them_the_second_time() {
    let (server, state) = fake_registry(FakeRegistry::default()).await;
    let client = client_for(&server, None);
    let dir = tempfile::tempdir().expect("dir");
    let image = built_image(dir.path());
    let tags = ["v1".to_owned(), "latest".to_owned()];
    let first = push_image(&client, "o/app", &image, &tags, None, no_progress())
        .await
        .expect("push");
    assert_eq!(first.manifest_digest, image.manifest_digest);
    assert_eq!((first.blobs_uploaded, first.blobs_skipped), (2, 0));
    assert_eq!(first.bytes_uploaded, image.size());
    assert_eq!(state.lock().expect("lock").manifests.len(), 2);
    let second = push_image(&client, "o/app", &image, &tags, None, no_progress())
        .await
        .expect("push");
    assert_eq!(
        (
            second.blobs_uploaded,
            second.blobs_skipped,
            second.bytes_uploaded
        ),
        (0, 2, 0)
    );
}

#[tokio::test]
async fn no_tag_is_written_when_a_blob_cannot_be_pushed() {
    let (server, state) = fake_registry(FakeRegistry {
        refuse_start: Some(403),
        ..FakeRegistry::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let image = built_image(dir.path());
    let err = push_image(
        &client_for(&server, None),
        "o/app",
        &image,
        &["v1".to_owned()],
        None,
        no_progress(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "Forbidden");
    assert!(state.lock().expect("lock").manifests.is_empty());
}

#[tokio::test]
async fn invalid_tags_are_refused_before_anything_is_sent() {
    let (server, _) = fake_registry(FakeRegistry::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let image = built_image(dir.path());
    let err = push_image(
        &client_for(&server, None),
        "o/app",
        &image,
        &["bad tag".to_owned()],
        None,
        no_progress(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "InvalidName");
    assert!(server.recorded().is_empty());
}

// ---------------------------------------------------------------- TLS

fn https_client(server: &TestServer, host_name: &str, trust: TrustConfig) -> RegistryClient {
    let mut config = RegistryConfig::new(format!("{host_name}:{}", server.addr.port()));
    config.trust = trust;
    config.retry = fast_retry();
    RegistryClient::new(config).expect("client")
}

/// Serves a self-signed CA:true certificate for `names` valid `from`..`until`, then pings it as
/// `connect_as` trusting that same certificate.
async fn ping_pinned(
    names: &[&str],
    from: (i32, u8, u8),
    until: (i32, u8, u8),
    connect_as: &str,
) -> Result<(), RegistryError> {
    let cert = self_signed_ca_cert(names, from, until);
    let server = TestServer::https(&cert.cert_pem, &cert.key_pem, |_| Reply::status(200)).await;
    let trust = TrustConfig::from_pem(cert.cert_pem.as_bytes(), "Secret default/idpbuilder-cert")
        .expect("pem");
    https_client(&server, connect_as, trust).ping().await
}

#[tokio::test]
async fn a_self_signed_ca_certificate_served_as_server_certificate_is_accepted_when_configured() {
    let names = ["localhost", "*.cnoe.localtest.me"];
    ping_pinned(&names, (2020, 1, 1), (2099, 1, 1), "localhost")
        .await
        .expect("pinned certificate accepted");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_untrusted_naming_the_ca_source() {
    let served = self_signed_ca_cert(&["localhost"], (2020, 1, 1), (2099, 1, 1));
    let configured = self_signed_ca_cert(&["localhost"], (2020, 1, 1), (2099, 1, 1));
    let server = TestServer::https(&served.cert_pem, &served.key_pem, |_| Reply::status(200)).await;
    let trust =
        TrustConfig::from_pem(configured.cert_pem.as_bytes(), "--ca-file ./ca.pem").expect("pem");
    let err = https_client(&server, "localhost", trust)
        .ping()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TlsUntrustedCertificate");
    assert!(err.to_string().contains("--ca-file ./ca.pem"), "{err}");
    assert_eq!(
        server.recorded().len(),
        0,
        "no request is sent over an untrusted connection"
    );
}

#[tokio::test]
async fn connecting_by_a_name_the_certificate_lacks_is_a_hostname_mismatch() {
    let err = ping_pinned(&["localhost"], (2020, 1, 1), (2099, 1, 1), "127.0.0.1")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TlsHostnameMismatch");
    assert!(err.to_string().contains("it names: localhost;"), "{err}");
}

#[tokio::test]
async fn an_expired_pinned_certificate_is_reported_as_expired() {
    let err = ping_pinned(&["localhost"], (2020, 1, 1), (2021, 1, 1), "localhost")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TlsCertificateExpired");
    assert!(err.to_string().contains("valid until 2021-01-01"), "{err}");
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_before_sending() {
    let server = TestServer::http(|_| Reply::status(201)).await;
    let huge = Bytes::from(vec![b' '; 10 * 1024 * 1024 + 1]);
    let err = client_for(&server, None)
        .put_manifest("o/app", "v1", huge, oci::MEDIA_TYPE_IMAGE_MANIFEST)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ManifestRejected");
    assert!(server.recorded().is_empty());
}

#[tokio::test]
async fn a_manifest_naming_a_missing_blob_is_not_mistaken_for_an_unknown_owner() {
    // Gitea's answer when a manifest references a blob it does not have.
    let server = TestServer::http(|_| {
        Reply::status(404).body(r#"{"errors":[{"code":"BLOB_UNKNOWN","message":""}]}"#)
    })
    .await;
    let err = client_for(&server, None)
        .put_manifest(
            "o/app",
            "v1",
            Bytes::from_static(b"{}"),
            oci::MEDIA_TYPE_IMAGE_MANIFEST,
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ManifestRejected", "{err}");
    assert!(
        err.to_string().contains("blob the registry does not have"),
        "{err}"
    );
}

#[tokio::test]
async fn a_ca_signed_server_certificate_is_accepted_with_the_ca_configured() {
    let (ca, leaf) = ca_and_leaf(&["localhost"]);
    let server = TestServer::https(&leaf.cert_pem, &leaf.key_pem, |_| Reply::status(200)).await;
    let trust = TrustConfig::from_pem(ca.cert_pem.as_bytes(), "ca").expect("pem");
    https_client(&server, "localhost", trust)
        .ping()
        .await
        .expect("chain verified");
}

#[tokio::test]
async fn without_a_ca_a_self_signed_registry_is_untrusted_with_a_hint() {
    let cert = self_signed_ca_cert(&["localhost"], (2020, 1, 1), (2099, 1, 1));
    let server = TestServer::https(&cert.cert_pem, &cert.key_pem, |_| Reply::status(200)).await;
    let err = https_client(&server, "localhost", TrustConfig::system())
        .ping()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TlsUntrustedCertificate");
    assert!(err.to_string().contains("idpbuilder-cert"), "{err}");
}

#[tokio::test]
async fn insecure_mode_accepts_any_certificate_and_says_so() {
    let cert = self_signed_ca_cert(&["other.example"], (2020, 1, 1), (2021, 1, 1));
    let server = TestServer::https(&cert.cert_pem, &cert.key_pem, |_| Reply::status(200)).await;
    let client = https_client(&server, "127.0.0.1", TrustConfig::insecure());
    assert!(client.is_insecure());
    client.ping().await.expect("insecure accepts");
}

#[tokio::test]
async fn https_to_a_plain_http_port_hints_at_http() {
    let server = TestServer::http(|_| Reply::status(200)).await;
    let err = https_client(&server, "localhost", TrustConfig::system())
        .ping()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TlsHandshakeFailed");
    assert!(err.to_string().contains("http://"), "{err}");
}

// ---------------------------------------------------------------- Send

/// The controller runs registry work on a multi-threaded runtime: every public future must be
/// `Send` (async closures inside, for one, would break this).
#[test]
fn every_public_operation_is_send() {
    fn send<T: Send>(_: T) {}
    let client = RegistryClient::new(RegistryConfig::new("reg.example")).expect("client");
    let dir = tempfile::tempdir().expect("dir");
    let image = built_image(dir.path());
    let digest = &image.manifest_digest;
    let reference = crate::reference::ImageRef::parse("reg.example/o/base:1").expect("ref");
    send(client.ping());
    send(client.blob_exists("o/a", digest));
    send(client.mount_blob("o/a", digest, "o/b"));
    send(client.push_blob("o/a", &image.layers[0], no_progress()));
    send(client.get_blob("o/a", digest));
    send(client.get_manifest("o/a", "v1"));
    send(client.head_manifest("o/a", "v1"));
    send(client.put_manifest(
        "o/a",
        "v1",
        image.manifest.clone(),
        oci::MEDIA_TYPE_IMAGE_MANIFEST,
    ));
    send(client.list_tags("o/a"));
    send(client.delete_tag("o/a", "v1"));
    send(client.tag("o/a", "v1", "v2"));
    send(push_image(
        &client,
        "o/a",
        &image,
        &[],
        Some(&client),
        no_progress(),
    ));
    send(fetch_base(&client, &reference, None));
}

/// A base tag whose manifest the test replaces: HEAD answers with `head_digest` (default: the
/// digest of the bytes), GET with the bytes, 404 when there are none.
#[derive(Default)]
struct MovingBase {
    manifest: Option<(Vec<u8>, &'static str)>,
    head_digest: Option<String>,
}

async fn moving_base() -> (TestServer, Arc<Mutex<MovingBase>>) {
    let state = Arc::new(Mutex::new(MovingBase::default()));
    let shared = state.clone();
    let server = TestServer::http(move |request| {
        let state = shared.lock().expect("state");
        let Some((bytes, media_type)) = &state.manifest else {
            return Reply::status(404);
        };
        let digest = state
            .head_digest
            .clone()
            .unwrap_or_else(|| Digest::of(bytes).to_string());
        let reply = Reply::status(200)
            .header("Content-Type", media_type)
            .header("Docker-Content-Digest", &digest);
        if request.method == "HEAD" {
            reply
        } else {
            reply.body(bytes.clone())
        }
    })
    .await;
    (server, state)
}

/// `o/base:1` on the scripted server.
fn base_tag(server: &TestServer) -> crate::reference::ImageRef {
    crate::reference::ImageRef::parse(&format!("127.0.0.1:{}/o/base:1", server.addr.port()))
        .expect("reference")
}

fn index_of(children: &[(&str, &Digest)]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .map(|(arch, digest)| {
            serde_json::json!({
                "mediaType": oci::MEDIA_TYPE_IMAGE_MANIFEST,
                "digest": digest.as_str(),
                "size": 100,
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_TYPE_IMAGE_INDEX,
        "manifests": manifests,
    }))
    .expect("index json")
}

#[tokio::test]
async fn a_base_check_is_one_head_until_the_base_moves() {
    let (server, state) = moving_base().await;
    let client = client_for(&server, None);
    let image = base_tag(&server);
    let first = br#"{"schemaVersion":2,"layers":[]}"#.to_vec();
    let recorded = Digest::of(&first);
    state.lock().expect("state").manifest = Some((first, oci::MEDIA_TYPE_IMAGE_MANIFEST));
    let every = Platforms::Every;

    let state_now = check_base(&client, &image, &every, &recorded, None).await;
    assert_eq!(
        state_now.expect("check"),
        BaseState::Unchanged {
            top: recorded.clone()
        }
    );
    assert_eq!(server.recorded().len(), 1, "one HEAD");

    let second = br#"{"schemaVersion":2,"layers":[{}]}"#.to_vec();
    let moved_to = Digest::of(&second);
    state.lock().expect("state").manifest = Some((second, oci::MEDIA_TYPE_IMAGE_MANIFEST));
    let state_now = check_base(&client, &image, &every, &recorded, None).await;
    assert_eq!(
        state_now.expect("check"),
        BaseState::Moved { now: moved_to }
    );

    state.lock().expect("state").manifest = None;
    let state_now = check_base(&client, &image, &every, &recorded, None).await;
    assert_eq!(state_now.expect("check"), BaseState::Missing);
}

#[tokio::test]
async fn a_one_platform_build_sees_its_child_not_the_index() {
    let (server, state) = moving_base().await;
    let client = client_for(&server, None);
    let image = base_tag(&server);
    let (amd, arm, arm2) = (
        Digest::of(b"amd64"),
        Digest::of(b"arm64"),
        Digest::of(b"arm64 again"),
    );
    let arm64 = Platforms::One(Some("linux/arm64".parse().expect("platform")));
    // The index moved (its amd64 child did), the arm64 child the build stood on did not.
    let index = index_of(&[("amd64", &Digest::of(b"amd64 new")), ("arm64", &arm)]);
    let top = Digest::of(&index);
    state.lock().expect("state").manifest = Some((index, oci::MEDIA_TYPE_IMAGE_INDEX));
    let found = check_base(&client, &image, &arm64, &arm, None).await;
    assert_eq!(
        found.expect("check"),
        BaseState::Unchanged { top: top.clone() }
    );
    // Knowing that index, the next check is a HEAD only.
    let before = server.recorded().len();
    let found = check_base(&client, &image, &arm64, &arm, Some(&top)).await;
    assert_eq!(found.expect("check"), BaseState::Unchanged { top });
    assert_eq!(server.recorded().len() - before, 1, "one HEAD");
    // Now the arm64 child moves.
    let index = index_of(&[("amd64", &amd), ("arm64", &arm2)]);
    state.lock().expect("state").manifest = Some((index, oci::MEDIA_TYPE_IMAGE_INDEX));
    let found = check_base(&client, &image, &arm64, &arm, None).await;
    assert_eq!(found.expect("check"), BaseState::Moved { now: arm2 });
}

#[tokio::test]
async fn a_head_digest_that_differs_from_the_bytes_is_not_a_moved_base() {
    let (server, state) = moving_base().await;
    let client = client_for(&server, None);
    let image = base_tag(&server);
    let bytes = br#"{"schemaVersion":2}"#.to_vec();
    let recorded = Digest::of(&bytes);
    let quirk = Digest::of(b"what HEAD says");
    *state.lock().expect("state") = MovingBase {
        manifest: Some((bytes, oci::MEDIA_TYPE_IMAGE_MANIFEST)),
        head_digest: Some(quirk.to_string()),
    };
    let found = check_base(&client, &image, &Platforms::Every, &recorded, None).await;
    assert_eq!(found.expect("check"), BaseState::Unchanged { top: quirk });
}

/// A registry that takes basic credentials everywhere (as Gitea does) and also hands out tokens
/// when `tokens`; anonymous requests get a Bearer challenge then.
fn basic_or_token_registry(tokens: bool) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    move |r: &Recorded| {
        if tokens && r.target.starts_with("/v2/token") {
            return Reply::status(200).body(r#"{"token":"tok-123","expires_in":300}"#);
        }
        match r.header("authorization") {
            Some(auth) if auth == basic_header() || (tokens && auth == "Bearer tok-123") => {
                Reply::status(404)
            }
            _ if tokens => {
                let host = r.header("host").unwrap_or_default();
                Reply::status(401).header(
                    "WWW-Authenticate",
                    &format!(r#"Bearer realm="http://{host}/v2/token",service="container_registry",scope="*""#),
                )
            }
            _ => Reply::status(401),
        }
    }
}

#[tokio::test]
async fn a_push_token_fetched_ahead_replaces_basic_credentials_on_later_requests() {
    let server = TestServer::http(basic_or_token_registry(true)).await;
    let client = client_for(&server, Some(credentials()));
    client.prefetch_push_token("o/app").await;
    let digest = crate::oci::Digest::of(b"blob");
    for _ in 0..3 {
        assert!(!client.blob_exists("o/app", &digest).await.expect("head"));
    }
    let requests = server.recorded();
    let basic: Vec<_> = requests
        .iter()
        .filter(|r| r.header("authorization") == Some(basic_header().as_str()))
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        basic.len(),
        1,
        "only the token request carries the password: {basic:?}"
    );
    assert!(basic[0].starts_with("/v2/token"), "{basic:?}");
    let heads = requests.iter().filter(|r| r.target.contains("/blobs/"));
    assert!(
        heads.clone().count() == 3
            && heads
                .into_iter()
                .all(|r| r.header("authorization") == Some("Bearer tok-123"))
    );
}

#[tokio::test]
async fn without_a_token_service_requests_keep_basic_credentials() {
    let server = TestServer::http(basic_or_token_registry(false)).await;
    let client = client_for(&server, Some(credentials()));
    client.prefetch_push_token("o/app").await;
    let digest = crate::oci::Digest::of(b"blob");
    assert!(!client.blob_exists("o/app", &digest).await.expect("head"));
    let last = server.recorded().pop().expect("a request");
    assert_eq!(last.header("authorization"), Some(basic_header().as_str()));
}
