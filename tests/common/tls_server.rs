//! HTTPS servers of the tests' own (the fault proxy, the stand-in registry): their certificates
//! and the loop that serves TLS connections on loopback.

use std::future::Future;
use std::sync::Arc;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use tokio::net::TcpListener;

/// A server certificate for `names`: self-signed with CA:true and used as the server
/// certificate (idpbuilder's kind), or, with `issued_by_ca`, a leaf issued by a CA of its own
/// (what webpki clients such as kube's accept). Returns the PEM a client must trust (the
/// certificate, or its issuer) and the server configuration.
pub fn server_tls(
    names: &[String],
    expired: bool,
    issued_by_ca: bool,
) -> (String, rustls::ServerConfig) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::new(names.to_vec()).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = if expired {
        rcgen::date_time_ymd(2021, 1, 1)
    } else {
        rcgen::date_time_ymd(2099, 1, 1)
    };
    let (cert, trusted_pem) = if issued_by_ca {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test server CA");
        let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        (cert, ca_pem)
    } else {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed");
        let pem = cert.pem();
        (cert, pem)
    };
    let der = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("server config");
    (trusted_pem, config)
}

/// Accepts TLS connections on `listener` for ever, answering each request with `handle`; an
/// error from `handle` drops the connection unanswered.
pub async fn serve<H, F, B, E>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handle: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handle = Arc::new(handle);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| handle(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
