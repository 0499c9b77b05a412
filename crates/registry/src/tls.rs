//! Which server certificates a registry client accepts.
//!
//! idpbuilder serves a self-signed ECDSA certificate with `CA:true` directly as the server
//! certificate. webpki refuses a CA certificate as end-entity (`CaUsedAsEndEntity`) even when it is
//! the trusted root, so trusting the CA file alone is not enough. The answer here: verify normally
//! against the configured certificates as roots, and when that fails for a presented certificate
//! that *is* one of the configured ones (DER equality), accept it after checking the host name and
//! validity period ourselves. Handshake signatures are always verified.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::error::RegistryError;

/// Label used in messages when no CA is configured.
const SYSTEM_ROOTS: &str = "the system's trusted CAs";

/// Where to find idpbuilder's certificate, for hints.
const IDPBUILDER_HINT: &str =
    "for idpbuilder clusters it is Secret default/idpbuilder-cert, key ca.crt";

/// Which server certificates to accept.
#[derive(Clone)]
pub struct TrustConfig {
    roots: Roots,
}

#[derive(Clone)]
enum Roots {
    /// The operating system's CA bundle.
    System,
    /// Certificates from a PEM file or Secret, trusted as roots and pinned as server certificates.
    Pem {
        certs: Vec<CertificateDer<'static>>,
        label: String,
    },
    /// No verification at all: an explicit opt-in.
    Insecure,
}

impl fmt::Debug for TrustConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.roots {
            Roots::System => f.write_str("TrustConfig(system roots)"),
            Roots::Pem { certs, label } => {
                write!(
                    f,
                    "TrustConfig({} certificate(s) from {label})",
                    certs.len()
                )
            }
            Roots::Insecure => f.write_str("TrustConfig(insecure)"),
        }
    }
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self::system()
    }
}

impl TrustConfig {
    /// Trust the operating system's CA bundle (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    pub fn system() -> Self {
        Self {
            roots: Roots::System,
        }
    }

    /// Trust the certificates in `pem` (one or more `CERTIFICATE` blocks). `label` says where
    /// they came from, e.g. `Secret default/idpbuilder-cert key ca.crt` or `--ca-file ./ca.pem`,
    /// and is used in every message about them.
    pub fn from_pem(pem: &[u8], label: impl Into<String>) -> Result<Self, RegistryError> {
        let label = label.into();
        let invalid = |detail: String| RegistryError::InvalidCa {
            ca: label.clone(),
            detail,
        };
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("it is not valid PEM ({e})")))?;
        if certs.is_empty() {
            return Err(invalid(
                "it holds no PEM `CERTIFICATE` block; expected the registry's CA certificate"
                    .into(),
            ));
        }
        let mut store = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| invalid(format!("certificate {} cannot be parsed: {e}", i + 1)))?;
        }
        Ok(Self {
            roots: Roots::Pem { certs, label },
        })
    }

    /// Accept any certificate. Every client made with this logs a warning; callers should show
    /// [`Self::is_insecure`] in status and events.
    pub fn insecure() -> Self {
        Self {
            roots: Roots::Insecure,
        }
    }

    /// Whether certificate verification is switched off.
    pub fn is_insecure(&self) -> bool {
        matches!(self.roots, Roots::Insecure)
    }

    /// Where the trusted certificates come from, for messages.
    pub fn label(&self) -> &str {
        match &self.roots {
            Roots::System => SYSTEM_ROOTS,
            Roots::Pem { label, .. } => label,
            Roots::Insecure => "nothing (insecure mode accepts any certificate)",
        }
    }

    /// The rustls configuration for a client to `host` (host only for messages).
    pub(crate) fn client_config(&self, host: &str) -> Result<rustls::ClientConfig, RegistryError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match &self.roots {
            Roots::System => system_verifier(host, provider.clone())?,
            Roots::Pem { certs, label } => {
                Arc::new(PinningVerifier::new(certs, label, provider.clone())?)
            }
            Roots::Insecure => {
                tracing::warn!(
                    registry = host,
                    "TLS certificate verification is OFF for this registry (insecure: true): anyone on the network path can impersonate it"
                );
                Arc::new(AcceptAnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                })
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RegistryError::InvalidConfig {
                host: host.to_owned(),
                detail: format!("TLS setup failed: {e}"),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(config)
    }

    /// Turns a handshake failure into the error that says what to fix.
    pub(crate) fn classify(
        &self,
        host: &str,
        server_name: &str,
        error: &rustls::Error,
    ) -> RegistryError {
        let host = host.to_owned();
        let ca = self.label().to_owned();
        let untrusted = |hint: String| RegistryError::TlsUntrustedCertificate {
            host: host.clone(),
            ca: ca.clone(),
            hint,
        };
        let cert_error = match error {
            rustls::Error::InvalidCertificate(e) => e,
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                return RegistryError::TlsHandshake {
                    host,
                    detail: error.to_string(),
                    plain_http_hint: true,
                };
            }
            other => {
                return RegistryError::TlsHandshake {
                    host,
                    detail: other.to_string(),
                    plain_http_hint: false,
                };
            }
        };
        match cert_error {
            CertificateError::NotValidForName => RegistryError::TlsHostnameMismatch {
                host,
                server_name: server_name.to_owned(),
                names: Vec::new(),
            },
            CertificateError::NotValidForNameContext { presented, .. } => {
                RegistryError::TlsHostnameMismatch {
                    host,
                    server_name: server_name.to_owned(),
                    names: presented.iter().map(|n| readable_name(n)).collect(),
                }
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                RegistryError::TlsCertificateExpired {
                    host,
                    detail: expiry_detail(cert_error),
                }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                RegistryError::TlsCertificateExpired {
                    host,
                    detail: expiry_detail(cert_error),
                }
            }
            other if is_ca_used_as_end_entity(other) => untrusted(format!(
                "the server presents a CA certificate as its own certificate (as idpbuilder does), \
                 and it is not the configured one; configure exactly the certificate the server \
                 presents as the CA ({IDPBUILDER_HINT})"
            )),
            CertificateError::UnknownIssuer => untrusted(self.unknown_issuer_hint()),
            other => untrusted(format!("{other:?}")),
        }
    }

    fn unknown_issuer_hint(&self) -> String {
        match &self.roots {
            Roots::System => format!(
                "it is not signed by a CA this machine trusts; configure the registry's CA \
                 certificate ({IDPBUILDER_HINT}), or opt in to insecure mode to skip verification"
            ),
            Roots::Pem { .. } => "the server's certificate is neither one of the configured \
                 certificates nor signed by one; is this the right CA for this registry?"
                .to_owned(),
            Roots::Insecure => String::new(),
        }
    }
}

/// webpki lists names in Debug form (`DnsName("a.example")`, `IpAddress(10.0.0.1)`): keep the name.
fn readable_name(presented: &str) -> String {
    let inner = presented
        .strip_prefix("DnsName(")
        .or_else(|| presented.strip_prefix("IpAddress("))
        .and_then(|rest| rest.strip_suffix(')'));
    inner.unwrap_or(presented).trim_matches('"').to_owned()
}

fn is_ca_used_as_end_entity(error: &CertificateError) -> bool {
    matches!(error, CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity"))
}

fn expiry_detail(error: &CertificateError) -> String {
    let date = |t: &UnixTime| {
        jiff::Timestamp::from_second(t.as_secs() as i64)
            .map(|ts| ts.to_string())
            .unwrap_or_else(|_| format!("{}s after 1970", t.as_secs()))
    };
    match error {
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("expired (valid until {})", date(not_after))
        }
        CertificateError::NotValidYetContext { not_before, .. } => {
            format!("not valid yet (valid from {})", date(not_before))
        }
        CertificateError::NotValidYet => "not valid yet".to_owned(),
        _ => "expired".to_owned(),
    }
}

fn system_verifier(
    host: &str,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, RegistryError> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::debug!(%error, "skipping unreadable system CA certificate");
    }
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(RegistryError::InvalidConfig {
            host: host.to_owned(),
            detail: "no CA certificate configured and none found in the system store \
                     (e.g. /etc/ssl/certs): configure the registry's CA certificate"
                .to_owned(),
        });
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| RegistryError::InvalidConfig {
            host: host.to_owned(),
            detail: format!("cannot use the system CA certificates: {e}"),
        })
}

/// Normal chain verification against the configured certificates, plus acceptance of a
/// presented certificate that is exactly one of them (see the module doc).
#[derive(Debug)]
pub(crate) struct PinningVerifier {
    chain: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl PinningVerifier {
    pub(crate) fn new(
        certs: &[CertificateDer<'static>],
        label: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, RegistryError> {
        let mut store = RootCertStore::empty();
        for cert in certs {
            store
                .add(cert.clone())
                .map_err(|e| RegistryError::InvalidCa {
                    ca: label.to_owned(),
                    detail: e.to_string(),
                })?;
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .map_err(|e| RegistryError::InvalidCa {
                ca: label.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            chain,
            pinned: certs.to_vec(),
        })
    }

    fn verify_pinned(
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        check_validity_period(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }
}

/// notBefore <= now <= notAfter, with the same error shapes webpki uses.
fn check_validity_period(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let bad_encoding = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| bad_encoding())?;
    let to_unix = |secs: i64| UnixTime::since_unix_epoch(Duration::from_secs(secs.max(0) as u64));
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let t = now.as_secs() as i64;
    if t < not_before {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: now,
                not_before: to_unix(not_before),
            },
        ));
    }
    if t > not_after {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: now,
                not_after: to_unix(not_after),
            },
        ));
    }
    Ok(())
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                Self::verify_pinned(end_entity, server_name, now)
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Insecure mode: any certificate, any name. Handshake signatures are still checked, which
/// costs nothing and keeps the connection bound to the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Finds the rustls error inside a transport error (reqwest → hyper → io::Error → rustls::Error).
pub(crate) fn find_rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error::source() skips the wrapped error itself (and io errors nest), so step
        // into the wrapped error explicitly.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            current = Some(inner as &(dyn std::error::Error + 'static));
            continue;
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    /// A certificate and its key, as PEM, for test servers.
    pub(crate) struct TestCert {
        pub cert_pem: String,
        pub key_pem: String,
        pub der: CertificateDer<'static>,
    }

    /// idpbuilder's shape: ECDSA P-256, self-signed, CA:true, DNS SANs only.
    pub(crate) fn idpbuilder_cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> TestCert {
        self_signed_ca_cert(
            &["cnoe.localtest.me", "*.cnoe.localtest.me"],
            not_before,
            not_after,
        )
    }

    /// A self-signed CA:true ECDSA P-256 certificate for `names`, used as a server certificate.
    pub(crate) fn self_signed_ca_cert(
        names: &[&str],
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> TestCert {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).expect("self-signed");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A currently valid idpbuilder-style certificate.
    pub(crate) fn valid_idpbuilder_cert() -> TestCert {
        idpbuilder_cert((2020, 1, 1), (2099, 1, 1))
    }

    /// A CA and a leaf for `names` signed by it: the ordinary, non-pinned case.
    pub(crate) fn ca_and_leaf(names: &[&str]) -> (TestCert, TestCert) {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        (
            TestCert {
                cert_pem: ca_cert.pem(),
                key_pem: String::new(),
                der: ca_cert.der().clone(),
            },
            TestCert {
                cert_pem: leaf.pem(),
                key_pem: leaf_key.serialize_pem(),
                der: leaf.der().clone(),
            },
        )
    }

    fn verifier_for(pem: &str) -> PinningVerifier {
        let trust = TrustConfig::from_pem(pem.as_bytes(), "test CA").expect("pem");
        let Roots::Pem { certs, label } = &trust.roots else {
            panic!("pem roots expected")
        };
        PinningVerifier::new(
            certs,
            label,
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .expect("verifier")
    }

    fn verify(
        verifier: &PinningVerifier,
        presented: &CertificateDer<'static>,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let server_name = ServerName::try_from(name.to_owned()).expect("name");
        verifier.verify_server_cert(presented, &[], &server_name, &[], UnixTime::now())
    }

    fn cert_error(result: Result<ServerCertVerified, rustls::Error>) -> CertificateError {
        match result {
            Err(rustls::Error::InvalidCertificate(e)) => e,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn webpki_alone_refuses_the_idpbuilder_certificate() {
        // The reason this module exists: keep it visible if webpki ever changes.
        let cert = valid_idpbuilder_cert();
        let verifier = verifier_for(&cert.cert_pem);
        let err = verifier
            .chain
            .verify_server_cert(
                &cert.der,
                &[],
                &ServerName::try_from("gitea.cnoe.localtest.me").expect("name"),
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(format!("{err:?}").contains("CaUsedAsEndEntity"), "{err:?}");
    }

    #[test]
    fn pinned_idpbuilder_certificate_is_accepted_for_a_subdomain() {
        let cert = valid_idpbuilder_cert();
        let verifier = verifier_for(&cert.cert_pem);
        assert!(verify(&verifier, &cert.der, "gitea.cnoe.localtest.me").is_ok());
        assert!(verify(&verifier, &cert.der, "cnoe.localtest.me").is_ok());
    }

    #[test]
    fn pinned_certificate_is_refused_for_another_name_listing_its_names() {
        let cert = valid_idpbuilder_cert();
        let verifier = verifier_for(&cert.cert_pem);
        match cert_error(verify(&verifier, &cert.der, "other.example")) {
            CertificateError::NotValidForNameContext { presented, .. } => {
                assert!(presented.iter().any(|n| n.contains("*.cnoe.localtest.me")))
            }
            other => panic!("expected a name mismatch, got {other:?}"),
        }
        // A wildcard covers one label only (RFC 6125).
        assert!(verify(&verifier, &cert.der, "a.b.cnoe.localtest.me").is_err());
    }

    #[test]
    fn expired_pinned_certificate_is_refused() {
        let cert = idpbuilder_cert((2020, 1, 1), (2021, 1, 1));
        let verifier = verifier_for(&cert.cert_pem);
        assert!(matches!(
            cert_error(verify(&verifier, &cert.der, "gitea.cnoe.localtest.me")),
            CertificateError::ExpiredContext { .. }
        ));
    }

    #[test]
    fn not_yet_valid_pinned_certificate_is_refused() {
        let cert = idpbuilder_cert((2090, 1, 1), (2099, 1, 1));
        let verifier = verifier_for(&cert.cert_pem);
        assert!(matches!(
            cert_error(verify(&verifier, &cert.der, "gitea.cnoe.localtest.me")),
            CertificateError::NotValidYetContext { .. }
        ));
    }

    #[test]
    fn a_different_self_signed_certificate_is_refused() {
        let configured = valid_idpbuilder_cert();
        let presented = valid_idpbuilder_cert();
        let verifier = verifier_for(&configured.cert_pem);
        let err = verify(&verifier, &presented.der, "gitea.cnoe.localtest.me").unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn a_ca_signed_chain_is_accepted_by_normal_verification() {
        let (ca, leaf) = ca_and_leaf(&["registry.example"]);
        let verifier = verifier_for(&ca.cert_pem);
        assert!(verify(&verifier, &leaf.der, "registry.example").is_ok());
        assert!(matches!(
            cert_error(verify(&verifier, &leaf.der, "other.example")),
            CertificateError::NotValidForNameContext { .. }
        ));
    }

    #[test]
    fn pem_without_certificates_is_an_invalid_ca_naming_its_source() {
        let err = TrustConfig::from_pem(b"hello", "--ca-file ./ca.pem").unwrap_err();
        assert_eq!(err.reason(), "InvalidCA");
        assert!(err.to_string().contains("--ca-file ./ca.pem"), "{err}");
    }

    #[test]
    fn hostname_mismatch_error_lists_the_certificate_names() {
        let trust =
            TrustConfig::from_pem(valid_idpbuilder_cert().cert_pem.as_bytes(), "x").expect("pem");
        let err = trust.classify(
            "localhost:8443",
            "localhost",
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("localhost").expect("name"),
                presented: vec!["DnsName(\"cnoe.localtest.me\")".into()],
            }),
        );
        assert_eq!(err.reason(), "TlsHostnameMismatch");
        assert!(
            err.to_string().contains("it names: cnoe.localtest.me;"),
            "{err}"
        );
    }

    #[test]
    fn unknown_issuer_with_system_roots_hints_at_the_ca_secret() {
        let err = TrustConfig::system().classify(
            "gitea.cnoe.localtest.me:8443",
            "gitea.cnoe.localtest.me",
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(err.reason(), "TlsUntrustedCertificate");
        let msg = err.to_string();
        assert!(msg.contains("idpbuilder-cert"), "{msg}");
        assert!(msg.contains("insecure"), "{msg}");
    }

    #[test]
    fn insecure_trust_says_so() {
        assert!(TrustConfig::insecure().is_insecure());
        assert!(!TrustConfig::system().is_insecure());
    }
}
