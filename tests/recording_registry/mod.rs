//! A stand-in registry for the credential tests: an HTTPS server on loopback, under a name of
//! its own (`mirror.imagebuild.test`, which tests/env maps to 127.0.0.1), that serves one small
//! base image anonymously and records the `Authorization` header of every request it receives.
//! In token mode it asks for a Bearer token from a realm on another host
//! (`auth.imagebuild.test`), a second listener that records what it is sent too.
//!
//! Its certificate is idpbuilder's kind (self-signed, CA:true, used as the server certificate);
//! a build trusts it by adding `cert_pem` to its CA bundle. It stops when dropped, and by itself
//! after ten minutes, so a failing test never leaves it running.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;

/// The name the stand-in registry serves under.
pub const MIRROR_HOST: &str = "mirror.imagebuild.test";
/// The name of the foreign token realm.
pub const AUTH_HOST: &str = "auth.imagebuild.test";
/// The token the realm hands out and the registry accepts.
const TOKEN: &str = "stand-in-token";
/// The repository and tag the base image is served under (any repository serves it).
pub const BASE_PATH: &str = "library/base:1";
/// The file the base image holds.
pub const BASE_FILE: &str = "base.txt";

/// One request as the stand-in saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `registry` or `realm`.
    pub server: &'static str,
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

impl Seen {
    /// Whether the request carried credentials (basic auth), as opposed to nothing or a token.
    pub fn has_basic(&self) -> bool {
        self.authorization
            .as_deref()
            .is_some_and(|a| a.to_ascii_lowercase().starts_with("basic "))
    }
}

/// The `Authorization` value basic auth gives `user:password`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// How the stand-in asks for authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything is served to anyone.
    Anonymous,
    /// A 401 with a Bearer challenge whose realm is on [`AUTH_HOST`], until the token is shown.
    ForeignRealm,
}

/// A running stand-in registry (and, in token mode, its realm).
pub struct RecordingRegistry {
    /// `mirror.imagebuild.test:PORT`
    pub host: String,
    /// The certificate(s) to trust for it and its realm (PEM).
    pub cert_pem: String,
    /// The digest of the base image's manifest.
    pub base_digest: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Image {
    manifest: Bytes,
    manifest_digest: String,
    blobs: Vec<(String, Bytes)>,
}

struct Shared {
    image: Image,
    mode: Mode,
    realm: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingRegistry {
    pub fn start(mode: Mode) -> Self {
        let names = [MIRROR_HOST.to_owned(), AUTH_HOST.to_owned()];
        let (cert_pem, tls) = crate::common::tls_server::server_tls(&names, false, false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("stand-in runtime");
        let registry = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind stand-in");
        let realm = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind realm");
        let host = format!(
            "{MIRROR_HOST}:{}",
            registry.local_addr().expect("addr").port()
        );
        let realm_url = format!(
            "https://{AUTH_HOST}:{}/token",
            realm.local_addr().expect("addr").port()
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let image = base_image();
        let base_digest = image.manifest_digest.clone();
        let shared = Arc::new(Shared {
            image,
            mode,
            realm: realm_url,
            seen: seen.clone(),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        for (listener, server) in [(registry, "registry"), (realm, "realm")] {
            let shared = shared.clone();
            let serve = crate::common::tls_server::serve(listener, acceptor.clone(), move |req| {
                let answer = handle(req, &shared, server);
                async move { Ok::<_, Infallible>(answer) }
            });
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(600), serve).await;
            });
        }
        Self {
            host,
            cert_pem,
            base_digest,
            seen,
            runtime: Some(runtime),
        }
    }

    /// The base image's reference, e.g. `mirror.imagebuild.test:41234/library/base:1`.
    pub fn base_ref(&self) -> String {
        format!("{}/{BASE_PATH}", self.host)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A PEM file trusting both `other_pem` (e.g. Gitea's certificate) and the stand-in.
    pub fn ca_bundle_with(&self, other_pem: &[u8]) -> Vec<u8> {
        let mut bundle = other_pem.to_vec();
        if !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(self.cert_pem.as_bytes());
        bundle
    }

    /// Writes [`Self::ca_bundle_with`] to a file in `dir`.
    pub fn write_ca_bundle(&self, other_pem: &[u8], dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca-bundle.pem");
        let mut file = std::fs::File::create(&path).expect("bundle file");
        file.write_all(&self.ca_bundle_with(other_pem))
            .expect("write bundle");
        path
    }
}

impl Drop for RecordingRegistry {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(status: u16, headers: &[(&str, &str)], body: Bytes) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .header("content-length", body.len().to_string())
        .body(Full::new(body).boxed())
        .expect("response")
}

fn handle(req: Request<Incoming>, shared: &Shared, server: &'static str) -> Response<Body> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push(Seen {
            server,
            method: method.clone(),
            path: path.clone(),
            authorization: authorization.clone(),
        });
    }
    if server == "realm" {
        return respond(
            200,
            &[("content-type", "application/json")],
            Bytes::from(format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#)),
        );
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return respond(404, &[], Bytes::new());
    };
    let has_token = authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
    if shared.mode == Mode::ForeignRealm && !has_token {
        let challenge = format!(
            r#"Bearer realm="{}",service="stand-in",scope="repository:library/base:pull""#,
            shared.realm
        );
        return respond(
            401,
            &[
                ("www-authenticate", &challenge),
                ("content-type", "application/json"),
            ],
            Bytes::from_static(
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
            ),
        );
    }
    let head = method == "HEAD";
    let body = |bytes: &Bytes| if head { Bytes::new() } else { bytes.clone() };
    if rest.is_empty() {
        return respond(200, &[], Bytes::new());
    }
    let image = &shared.image;
    if let Some((_, reference)) = rest.rsplit_once("/manifests/")
        && (reference == "1" || reference == image.manifest_digest)
    {
        return respond(
            200,
            &[
                ("content-type", "application/vnd.oci.image.manifest.v1+json"),
                ("docker-content-digest", &image.manifest_digest),
            ],
            body(&image.manifest),
        );
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/")
        && let Some((_, blob)) = image.blobs.iter().find(|(d, _)| d == digest)
    {
        return respond(
            200,
            &[
                ("content-type", "application/octet-stream"),
                ("docker-content-digest", digest),
            ],
            body(blob),
        );
    }
    respond(
        404,
        &[("content-type", "application/json")],
        Bytes::from_static(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#),
    )
}

fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A linux/amd64 image with one layer holding [`BASE_FILE`].
fn base_image() -> Image {
    let mut tar = tar::Builder::new(Vec::new());
    let content = b"from the stand-in registry\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, BASE_FILE, &content[..])
        .expect("tar entry");
    let layer_tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar).expect("gzip");
    let layer = Bytes::from(gz.finish().expect("gzip"));
    let config = Bytes::from(
        serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_tar)]},
        })
        .to_string(),
    );
    let manifest = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha256(&layer), "size": layer.len()}],
        })
        .to_string(),
    );
    Image {
        manifest_digest: sha256(&manifest),
        manifest,
        blobs: vec![(sha256(&config), config), (sha256(&layer), layer)],
    }
}
