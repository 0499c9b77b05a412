//! A tiny scripted HTTP/1.1 server (optionally over TLS) for unit tests of retries, auth and
//! TLS handling. Each request is recorded and answered by a handler closure.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A running test server; stops when dropped.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Plain HTTP on 127.0.0.1.
    pub async fn http(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start(None, Arc::new(handler)).await
    }

    /// HTTPS on 127.0.0.1 serving `cert_pem` with `key_pem`.
    pub async fn https(
        cert_pem: &str,
        key_pem: &str,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start(Some(acceptor), Arc::new(handler)).await
    }

    async fn start(acceptor: Option<tokio_rustls::TlsAcceptor>, handler: Arc<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let handler = handler.clone();
                let recorded = recorded.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve(tls, handler, recorded).await;
                            }
                        }
                        None => serve(tcp, handler, recorded).await,
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:<port>` or with another scheme / host name.
    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    handler: Arc<Handler>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut stream = BufReader::new(stream);
    // A TLS ClientHello on a plain port gets the answer a plain HTTP server would give.
    if stream
        .fill_buf()
        .await
        .is_ok_and(|b| b.first() == Some(&0x16))
    {
        let _ = stream
            .get_mut()
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    while let Some(request) = read_request(&mut stream).await {
        let reply = handler(&request);
        let head_only = request.method == "HEAD";
        recorded.lock().expect("lock").push(request);
        let mut out = format!("HTTP/1.1 {} Scripted\r\n", reply.status);
        let has_length = reply
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        if !has_length {
            out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
        }
        for (name, value) in &reply.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&reply.body);
        }
        if stream.get_mut().write_all(&bytes).await.is_err() {
            return;
        }
        let _ = stream.get_mut().flush().await;
    }
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> Option<Recorded> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut request = Recorded {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        request.body = read_chunked(stream).await?;
    } else if let Some(len) = request.header("content-length") {
        let len: usize = len.parse().ok()?;
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.ok()?;
        request.body = body;
    }
    Some(request)
}

async fn read_chunked<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        stream.read_line(&mut size_line).await.ok()?;
        let size = usize::from_str_radix(size_line.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; size + 2];
        stream.read_exact(&mut chunk).await.ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}
