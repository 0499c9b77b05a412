//! A fault-injecting HTTPS proxy for tests: it sits on loopback between the controller (or the
//! CLI) and Gitea, terminates TLS with its own idpbuilder-style certificate (self-signed, CA:true,
//! used directly as the server certificate), forwards requests to Gitea over TLS, and injects
//! faults at a configurable rate: 5xx, 429 with Retry-After, connection resets mid-body, stalls,
//! truncated responses, and 413 for request bodies over a limit; it can also slow uploads down to
//! a given rate, and answer chosen PATCHes with a Kubernetes 409 Conflict when it stands in front
//! of the API server. It stops by itself at its deadline (and when dropped), so a failing test
//! never leaves it running.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpListener;

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 503 without forwarding.
    ServiceUnavailable,
    /// The request reaches Gitea, then the client sees a 502 (the work may have been done).
    BadGatewayAfterForward,
    /// 429 with `Retry-After: 1`.
    TooManyRequests,
    /// Half of Gitea's response body, then the connection breaks.
    ResetMidBody,
    /// The response is held for the stall duration, then the connection is closed unanswered.
    Stall,
    /// The response promises its full length and ends early.
    Truncated,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::ServiceUnavailable,
        Fault::BadGatewayAfterForward,
        Fault::TooManyRequests,
        Fault::ResetMidBody,
        Fault::Stall,
        Fault::Truncated,
    ];
}

/// What the proxy does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Probability (0..=1) that a request gets a fault.
    pub rate: f64,
    /// Faults chosen uniformly when one is injected.
    pub faults: Vec<Fault>,
    /// Requests with a larger body are refused with 413, like an ingress body limit.
    pub max_body: Option<u64>,
    /// How long a stall lasts.
    pub stall: Duration,
    /// The proxy stops by itself after this long.
    pub lifetime: Duration,
    /// Request bodies are forwarded at no more than this many bytes per second.
    pub upload_rate: Option<u64>,
    /// PATCHes answered with a Kubernetes 409 Conflict, the way the API server answers a write
    /// based on an outdated object; each rule is used once.
    pub conflict_once_on: Vec<ConflictRule>,
}

/// Which PATCH gets a 409 Conflict: its path, and a text its body contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRule {
    pub path: String,
    pub body_contains: String,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            rate: 0.0,
            faults: Fault::ALL.to_vec(),
            max_body: None,
            stall: Duration::from_secs(3),
            lifetime: Duration::from_secs(600),
            upload_rate: None,
            conflict_once_on: Vec::new(),
        }
    }
}

/// The proxy's certificate: DNS names and validity.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub names: Vec<String>,
    pub expired: bool,
    /// Serve a leaf certificate issued by a CA of the proxy's own (what webpki clients such as
    /// kube's accept) instead of a self-signed CA:true certificate (idpbuilder's kind).
    pub issued_by_ca: bool,
}

impl CertSpec {
    pub fn for_names(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|n| n.to_string()).collect(),
            expired: false,
            issued_by_ca: false,
        }
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub too_large: AtomicU64,
    /// Request body bytes forwarded upstream.
    pub bytes_up: AtomicU64,
    pub injected: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Stats {
    /// Injected faults by kind, e.g. `{"Stall": 3}`.
    pub fn injected(&self) -> std::collections::BTreeMap<String, u64> {
        self.injected.lock().map(|m| m.clone()).unwrap_or_default()
    }
    fn count(&self, kind: &str) {
        if let Ok(mut m) = self.injected.lock() {
            *m.entry(kind.to_owned()).or_default() += 1;
        }
    }
}

/// A running proxy; stops when dropped or at its deadline.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// The CA a client must trust to reach the proxy (PEM): its certificate, or its issuer.
    pub cert_pem: String,
    pub stats: Arc<Stats>,
    plan: Arc<Mutex<Plan>>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    upstream: String,
    upstream_origin: String,
    client: reqwest::Client,
    plan: Arc<Mutex<Plan>>,
    stats: Arc<Stats>,
}

impl FaultProxy {
    /// Starts a proxy to `https://{upstream}` whose certificate is pinned to `upstream_ca_pem`.
    pub fn start(upstream: &str, upstream_ca_pem: &[u8], cert: CertSpec, plan: Plan) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert_pem, server_config) =
            crate::common::tls_server::server_tls(&cert.names, cert.expired, cert.issued_by_ca);
        let client = upstream_client(upstream_ca_pem);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let stats = Arc::new(Stats::default());
        let lifetime = plan.lifetime;
        let plan = Arc::new(Mutex::new(plan));
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            upstream_origin: format!("https://{upstream}"),
            client,
            plan: plan.clone(),
            stats: stats.clone(),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        runtime.spawn(async move {
            let serve = crate::common::tls_server::serve(listener, acceptor, move |req| {
                let shared = shared.clone();
                async move { handle(req, &shared).await }
            });
            // Bounded in time: the proxy ends by itself.
            let _ = tokio::time::timeout(lifetime, serve).await;
        });
        Self {
            addr,
            cert_pem,
            stats,
            plan,
            runtime: Some(runtime),
        }
    }

    /// Changes what the proxy does from now on.
    pub fn set_plan(&self, update: impl FnOnce(&mut Plan)) {
        if let Ok(mut plan) = self.plan.lock() {
            update(&mut plan);
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: u16, headers: &[(&str, &str)], text: &str) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .body(
            Full::new(Bytes::from(text.to_owned()))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("response")
}

/// A body that yields `data` and then fails, which makes hyper abort the connection.
fn broken_body(data: Bytes) -> Body {
    let frames = futures::stream::iter(vec![
        Ok(Frame::data(data)),
        Err(std::io::Error::other("injected connection reset")),
    ]);
    BodyExt::boxed(StreamBody::new(frames))
}

/// Answers one request; an error drops the connection without an answer.
async fn handle(req: Request<Incoming>, shared: &Shared) -> Result<Response<Body>, std::io::Error> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let plan = shared.plan.lock().map(|p| p.clone()).unwrap_or_default();
    let length = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(limit), Some(length)) = (plan.max_body, length)
        && length > limit
    {
        shared.stats.too_large.fetch_add(1, Ordering::Relaxed);
        // Like ingress-nginx: the body is read and dropped, then 413 (the client sees the answer,
        // not a broken pipe).
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        return Ok(full(
            413,
            &[("Content-Type", "text/html")],
            "<html><head><title>413 Request Entity Too Large</title></head></html>",
        ));
    }
    let req = if req.method() == hyper::Method::PATCH && plan_has_conflict_for(shared, &req) {
        match conflict_or_forwardable(req, shared).await {
            Ok(answer) => return Ok(answer),
            Err(req) => req,
        }
    } else {
        req.map(BodyExt::boxed)
    };
    let fault = (!plan.faults.is_empty() && fastrand::f64() < plan.rate)
        .then(|| plan.faults[fastrand::usize(..plan.faults.len())]);
    if let Some(f) = fault {
        shared.stats.count(&format!("{f:?}"));
    }
    match fault {
        Some(Fault::ServiceUnavailable) => {
            return Ok(full(503, &[], "injected: service unavailable"));
        }
        Some(Fault::TooManyRequests) => {
            return Ok(full(429, &[("Retry-After", "1")], "injected: slow down"));
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(plan.stall).await;
            // No answer at all: the service fails, and hyper drops the connection.
            return Err(std::io::Error::other("injected stall"));
        }
        _ => {}
    }
    let head = req.method() == hyper::Method::HEAD;
    let upstream = match forward(req, shared, plan.upload_rate).await {
        Ok(r) => r,
        Err(e) => return Ok(full(502, &[], &format!("proxy: upstream failed: {e}"))),
    };
    match fault {
        Some(Fault::BadGatewayAfterForward) => Ok(full(502, &[], "injected: bad gateway")),
        Some(Fault::ResetMidBody) | Some(Fault::Truncated) => {
            let (parts, body) = upstream.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if head || bytes.is_empty() {
                // Nothing to cut short: the answer is lost altogether.
                return Err(std::io::Error::other("injected reset"));
            }
            let mut response = Response::from_parts(parts, ());
            // Keep the promised length: the client sees a short body, then the broken connection.
            response.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                bytes.len().to_string().parse().expect("length"),
            );
            let half = bytes.slice(..bytes.len() / 2);
            Ok(response.map(|()| broken_body(half)))
        }
        _ => Ok(upstream),
    }
}

type RequestBody = BoxBody<Bytes, hyper::Error>;

fn plan_has_conflict_for(shared: &Shared, req: &Request<Incoming>) -> bool {
    shared.plan.lock().is_ok_and(|plan| {
        plan.conflict_once_on
            .iter()
            .any(|rule| rule.path == req.uri().path())
    })
}

/// Reads the (small) body of a PATCH; answers 409 when a conflict rule matches it (using the
/// rule up), else hands the request back, body and all, to be forwarded.
async fn conflict_or_forwardable(
    req: Request<Incoming>,
    shared: &Shared,
) -> Result<Response<Body>, Request<RequestBody>> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let matched = shared.plan.lock().is_ok_and(|mut plan| {
        let rules = &mut plan.conflict_once_on;
        let found = rules
            .iter()
            .position(|r| r.path == parts.uri.path() && text.contains(&r.body_contains));
        found.map(|i| rules.remove(i)).is_some()
    });
    if !matched {
        let body = Full::new(bytes).map_err(|e: Infallible| match e {}).boxed();
        return Err(Request::from_parts(parts, body));
    }
    shared.stats.count("Conflict");
    Ok(conflict(parts.uri.path()))
}

/// The API server's answer to a write that lost a race: 409 with a `Status` of reason Conflict.
fn conflict(path: &str) -> Response<Body> {
    let name = path
        .trim_end_matches("/status")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("Operation cannot be fulfilled on imagebuilds.imagebuild.dev \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        "reason": "Conflict",
        "details": {"name": name, "group": "imagebuild.dev", "kind": "imagebuilds"},
        "code": 409,
    });
    full(
        409,
        &[("Content-Type", "application/json")],
        &status.to_string(),
    )
}

async fn forward(
    req: Request<RequestBody>,
    shared: &Shared,
    upload_rate: Option<u64>,
) -> Result<Response<Body>, reqwest::Error> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("https://{}{path}", shared.upstream);
    let mut request = shared.client.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST && name != hyper::header::CONNECTION {
            request = request.header(name, value);
        }
    }
    let stats = shared.stats.clone();
    let stream = BodyStream::new(body).filter_map(move |frame| {
        let stats = stats.clone();
        async move {
            match frame {
                Ok(f) => {
                    let data = f.into_data().ok()?;
                    if let Some(rate) = upload_rate.filter(|r| *r > 0) {
                        let secs = data.len() as f64 / rate as f64;
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                    stats
                        .bytes_up
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    Some(Ok::<_, hyper::Error>(data))
                }
                Err(e) => Some(Err(e)),
            }
        }
    });
    let response = request
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    let mut builder = Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        // Gitea names its own origin in Location and the token realm; point them back here.
        let value = value
            .to_str()
            .map(|v| v.replace(&shared.upstream_origin, ""))
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| value.clone());
        builder = builder.header(name, value);
    }
    let stream = response
        .bytes_stream()
        .map(|chunk| chunk.map(Frame::data).map_err(std::io::Error::other));
    Ok(builder
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}

/// A client to the upstream that trusts exactly its certificate (Gitea's is CA:true, used as
/// server certificate; for the API server, pass its serving certificate).
fn upstream_client(ca_pem: &[u8]) -> reqwest::Client {
    let pinned: Vec<CertificateDer<'static>> = rustls_pemfile_certs(ca_pem);
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(pinned)))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("upstream client")
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// Accepts exactly the pinned certificates (the test's own Gitea on loopback).
#[derive(Debug)]
struct Pinned(Vec<CertificateDer<'static>>);

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.0.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the pinned Gitea certificate".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
