//! The sender: `imagebuild send-context` in the reader Pod walks the context without following
//! symlinks and streams every entry it finds as tar to the controller.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tar::{EntryType, Header};
use tokio::sync::mpsc;

use crate::context::{DOCKERIGNORE, path_problem};

use super::{Counts, TOKEN_ENV};

/// Bytes the sender collects before handing a chunk to the HTTP body.
const CHUNK: usize = 256 * 1024;

/// What the sender sends: a directory of a mounted claim, and where.
pub struct SendRequest {
    /// Where the claim is mounted (read-only) in the reader Pod.
    pub claim_root: PathBuf,
    /// `spec.context.persistentVolumeClaim.subPath`: the context root inside the claim.
    pub sub_path: Option<String>,
    /// The controller's upload URL for this one context.
    pub url: String,
    /// The one-time token that authorises this upload.
    pub token: String,
}

/// Why the sender stopped. Paths are shown relative to the claim's root.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("subPath `{sub_path}` {reason}")]
    SubPath { sub_path: String, reason: String },
    #[error(
        "{shown} is a socket: only regular files, directories and symlinks can go into an \
         image; remove it from the claim"
    )]
    Socket { shown: String },
    #[error(
        "cannot read {shown}: {source} (the reader runs as user 65532: files must be readable \
         by it)"
    )]
    Read { shown: String, source: io::Error },
    #[error("{shown} changed while it was read; build again")]
    Changed { shown: String },
    #[error("{TOKEN_ENV} is not set: send-context runs in reader Pods the controller creates")]
    NoToken,
    #[error("cannot send the context to {url}: {detail}")]
    Upload { url: String, detail: String },
    #[error("the controller refused the context (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// The context root inside the claim: `sub_path` below `claim_root`, every component a real
/// directory (a symlink on the way could lead out of the claim).
pub fn context_root(claim_root: &Path, sub_path: Option<&str>) -> Result<PathBuf, SendError> {
    let Some(sub_path) = sub_path.map(|s| s.trim_end_matches('/')) else {
        return Ok(claim_root.to_owned());
    };
    if sub_path.is_empty() {
        return Ok(claim_root.to_owned());
    }
    let refuse = |reason: String| SendError::SubPath {
        sub_path: sub_path.to_owned(),
        reason,
    };
    if let Some(problem) = path_problem(sub_path) {
        return Err(refuse(problem));
    }
    let mut dir = claim_root.to_owned();
    for (i, component) in sub_path.split('/').enumerate() {
        dir.push(component);
        let shown = sub_path
            .split('/')
            .take(i + 1)
            .collect::<Vec<_>>()
            .join("/");
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(format!(
                    "leads through the symlink `{shown}`; name the directory it points to"
                )));
            }
            Ok(_) => return Err(refuse(format!("names `{shown}`, which is not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(refuse(format!(
                    "does not exist in the claim (`{shown}` is missing)"
                )));
            }
            Err(e) => return Err(refuse(format!("cannot be read at `{shown}`: {e}"))),
        }
    }
    Ok(dir)
}

/// Writes the tar stream of `root` to `out`: the root's `.dockerignore` first (the receiver needs
/// the exclusions before anything else), then everything depth first in byte order of names.
/// `shown` prefixes paths in messages (the subPath).
pub fn write_tree(root: &Path, shown: &str, out: impl Write) -> Result<Counts, SendError> {
    let mut walker = Walker {
        tar: tar::Builder::new(out),
        shown,
        counts: Counts::default(),
    };
    let ignore = root.join(DOCKERIGNORE);
    if let Ok(meta) = fs::symlink_metadata(&ignore)
        && meta.is_file()
    {
        walker.file(&ignore, DOCKERIGNORE, &meta)?;
    }
    walker.directory(root, "")?;
    let counts = walker.counts;
    let mut out = walker
        .tar
        .into_inner()
        .map_err(|e| walker_write_error(&e))?;
    out.flush().map_err(|e| walker_write_error(&e))?;
    Ok(counts)
}

/// A failed write to the stream: the controller stopped reading (it says why in its answer).
fn walker_write_error(e: &io::Error) -> SendError {
    SendError::Upload {
        url: "the controller".into(),
        detail: e.to_string(),
    }
}

struct Walker<'a, W: Write> {
    tar: tar::Builder<W>,
    shown: &'a str,
    counts: Counts,
}

impl<W: Write> Walker<'_, W> {
    fn shown(&self, rel: &str) -> String {
        match (self.shown.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_owned(),
            (false, true) => self.shown.to_owned(),
            (false, false) => format!("{}/{rel}", self.shown),
        }
    }

    fn read_error(&self, rel: &str, source: io::Error) -> SendError {
        SendError::Read {
            shown: self.shown(rel),
            source,
        }
    }

    fn directory(&mut self, dir: &Path, rel: &str) -> Result<(), SendError> {
        let mut children: Vec<(std::ffi::OsString, PathBuf)> = fs::read_dir(dir)
            .map_err(|e| self.read_error(rel, e))?
            .map(|e| e.map(|e| (e.file_name(), e.path())))
            .collect::<Result<_, _>>()
            .map_err(|e| self.read_error(rel, e))?;
        children.sort();
        for (name, path) in children {
            let child = if rel.is_empty() {
                PathBuf::from(&name)
            } else {
                Path::new(rel).join(&name)
            };
            // Names travel as bytes; the receiver decides whether they are acceptable.
            let child_rel = String::from_utf8_lossy(child.as_os_str().as_bytes()).into_owned();
            if rel.is_empty() && name == DOCKERIGNORE {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(|e| self.read_error(&child_rel, e))?;
            let file_type = meta.file_type();
            if file_type.is_dir() {
                let header = header(EntryType::Directory, meta.mode(), 0);
                self.append(header, &child, io::empty(), &child_rel)?;
                self.directory(&path, &child_rel)?;
            } else if file_type.is_file() {
                self.file_at(&path, &child, &child_rel, &meta)?;
            } else if file_type.is_symlink() {
                self.symlink(&path, &child, &child_rel)?;
            } else if file_type.is_socket() {
                return Err(SendError::Socket {
                    shown: self.shown(&child_rel),
                });
            } else {
                let kind = if file_type.is_fifo() {
                    EntryType::Fifo
                } else if file_type.is_char_device() {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                self.append(
                    header(kind, meta.mode(), 0),
                    &child,
                    io::empty(),
                    &child_rel,
                )?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, rel: &str, meta: &Metadata) -> Result<(), SendError> {
        self.file_at(path, Path::new(rel), rel, meta)
    }

    /// A regular file, opened and checked to be the very file the walk saw (not a symlink
    /// swapped in since), with exactly the size in its header.
    fn file_at(
        &mut self,
        path: &Path,
        name: &Path,
        rel: &str,
        meta: &Metadata,
    ) -> Result<(), SendError> {
        let file = File::open(path).map_err(|e| self.read_error(rel, e))?;
        let opened = file.metadata().map_err(|e| self.read_error(rel, e))?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) || !opened.is_file() {
            return Err(SendError::Changed {
                shown: self.shown(rel),
            });
        }
        let size = meta.len();
        let data = Exactly {
            inner: file,
            left: size,
        };
        self.append(
            header(EntryType::Regular, meta.mode(), size),
            name,
            data,
            rel,
        )?;
        self.counts.bytes += size;
        Ok(())
    }

    fn symlink(&mut self, path: &Path, name: &Path, rel: &str) -> Result<(), SendError> {
        let target = fs::read_link(path).map_err(|e| self.read_error(rel, e))?;
        let mut header = header(EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut header, name, &target)
            .map_err(|e| self.append_error(rel, e))?;
        self.counts.entries += 1;
        Ok(())
    }

    fn append(
        &mut self,
        mut header: Header,
        name: &Path,
        data: impl Read,
        rel: &str,
    ) -> Result<(), SendError> {
        self.tar
            .append_data(&mut header, name, data)
            .map_err(|e| self.append_error(rel, e))?;
        self.counts.entries += 1;
        Ok(())
    }

    /// A failed append: the file could not be read, or shrank, or the stream is gone.
    fn append_error(&self, rel: &str, e: io::Error) -> SendError {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => SendError::Changed {
                shown: self.shown(rel),
            },
            io::ErrorKind::BrokenPipe => walker_write_error(&e),
            _ => self.read_error(rel, e),
        }
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & 0o7777);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// Reads exactly `left` bytes: a file that grew is cut at its size when the walk saw it, one
/// that shrank is an `UnexpectedEof` error (the archive would be corrupt otherwise).
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Feeds the HTTP body from the blocking walk, a chunk at a time.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the controller stopped receiving the context",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// Streams the context to the controller: the walk runs on a blocking thread and feeds the
/// request body; a walk that fails breaks the upload off, so a partial context is never taken
/// for a whole one.
pub async fn send(request: SendRequest) -> Result<Counts, SendError> {
    let root = context_root(&request.claim_root, request.sub_path.as_deref())?;
    let shown = request
        .sub_path
        .clone()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let walker = tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = write_tree(&root, &shown, out);
        if result.is_err() {
            let _ = tx.blocking_send(Err(io::Error::other("the sender stopped")));
        }
        result
    });
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let response = http_client(&request.url)?
        .put(&request.url)
        .bearer_auth(&request.token)
        .body(body)
        .send()
        .await;
    let walked = walker
        .await
        .map_err(|e| SendError::Internal(e.to_string()))?;
    match response {
        // The controller's answer says best what was wrong with the stream.
        Ok(response) if !response.status().is_success() => {
            let status = response.status().as_u16();
            let message = response.text().await.unwrap_or_default();
            Err(SendError::Refused {
                status,
                message: message.trim().to_owned(),
            })
        }
        Ok(_) => walked,
        Err(e) => {
            let upload = SendError::Upload {
                url: request.url.clone(),
                detail: crate::failure::error_chain(&e),
            };
            match walked {
                // The walk stopped because the request did: the request's error says why.
                Ok(_) | Err(SendError::Upload { .. }) => Err(upload),
                Err(walk) => Err(walk),
            }
        }
    }
}

/// A plain HTTP client (the upload goes to the controller's Pod inside the cluster); rustls is
/// configured without roots because reqwest wants a TLS back end even for `http://`.
fn http_client(url: &str) -> Result<reqwest::Client, SendError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SendError::Internal(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!(
            "imagebuild-send-context/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| SendError::Upload {
            url: url.to_owned(),
            detail: crate::failure::error_chain(&e),
        })
}
