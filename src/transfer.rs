//! The tar stream that carries a PersistentVolumeClaim context from its reader Pod to the
//! controller.
//!
//! The sender (`imagebuild send-context`, in the reader Pod) walks a directory without following
//! symlinks and writes every entry as it finds it: directories, regular files, symlinks, and the
//! header of any fifo or device, so that the controller can name it when it refuses it. The
//! receiver (the controller) trusts nothing in the stream: it unpacks with the rules of a local
//! directory context — no `..`, no absolute names, no hard links, devices, fifos or sockets,
//! symlinks that stay inside, no entry below a symlink or file, size and entry limits — into a
//! fresh directory, where the ordinary builder (`FileTree::from_dir`) takes over. Exclusions
//! (`spec.exclude` and the context's `.dockerignore`, which the sender sends first) are applied
//! while unpacking, so an excluded special file fails neither here nor in a local build.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tar::{EntryType, Header};
use tokio::sync::mpsc;

use crate::context::{
    Content, ContextError, ContextOptions, DOCKERIGNORE, Entry, EntryKind, ExcludeRules,
    TreeBuilder, dockerignore_patterns, escaped, link_target_problem, normalised_file_mode,
    path_problem, symlink_stays_inside,
};

/// Environment variable that hands `imagebuild send-context` its one-time upload token (not a
/// flag, so it never shows in a process list).
pub const TOKEN_ENV: &str = "IMAGEBUILD_CONTEXT_TOKEN";

/// Entries one upload may hold: each costs the controller memory while the tree is checked, and
/// the chart's default memory limit (256 MiB) must hold them.
pub const MAX_ENTRIES: u64 = 250_000;

/// Largest `.dockerignore` read into memory to learn the exclusions.
const MAX_DOCKERIGNORE: u64 = 1 << 20;

/// Bytes the sender collects before handing a chunk to the HTTP body.
const CHUNK: usize = 256 * 1024;

/// Mode of the directories and files the receiver creates before it sets their final mode.
const PRIVATE_FILE: u32 = 0o600;

// ---------------------------------------------------------------------------------------------
// Sender

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

/// What was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Directories, files, symlinks and special files written to the stream.
    pub entries: u64,
    /// Bytes of regular files.
    pub bytes: u64,
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

// ---------------------------------------------------------------------------------------------
// Receiver

/// How the controller unpacks one upload.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// `spec.exclude`, `.dockerignore` and the limits: the build's own context options.
    pub context: ContextOptions,
    /// Where the files come from, for messages, e.g. `PersistentVolumeClaim default/src`.
    pub origin: String,
    /// The subPath, so messages show paths as they are in the claim.
    pub sub_path: String,
}

/// Why an upload could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The files cannot go into an image: the message names the path and what to do.
    #[error(transparent)]
    Refused(#[from] ContextError),
    /// The stream ended early or is not a tar stream.
    #[error("the upload broke off: {0}")]
    Interrupted(#[source] io::Error),
    /// The controller's work directory could not take the files.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Unpacks the tar stream `from` into the new directory `into`; see the module documentation
/// for what is refused. Returns what was written.
pub fn receive(
    from: impl Read,
    into: &Path,
    options: &ReceiveOptions,
) -> Result<Counts, ReceiveError> {
    fs::create_dir_all(into).map_err(|source| ReceiveError::Write {
        path: into.to_owned(),
        source,
    })?;
    let mut limits = options.context.clone();
    limits.max_entries = Some(limits.max_entries.unwrap_or(MAX_ENTRIES).min(MAX_ENTRIES));
    let mut unpacker = Unpacker {
        into,
        options,
        tree: TreeBuilder::new(&limits),
        rules: None,
        counts: Counts::default(),
    };
    let mut archive = tar::Archive::new(from);
    for entry in archive.entries().map_err(ReceiveError::Interrupted)? {
        let entry = entry.map_err(ReceiveError::Interrupted)?;
        unpacker.entry(entry)?;
    }
    Ok(unpacker.counts)
}

struct Unpacker<'a> {
    into: &'a Path,
    options: &'a ReceiveOptions,
    tree: TreeBuilder,
    /// Known once the first entry has arrived (a `.dockerignore` comes first if there is one).
    rules: Option<ExcludeRules>,
    counts: Counts,
}

impl Unpacker<'_> {
    fn entry(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<(), ReceiveError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let Some(name) = self.name(&raw)? else {
            return Ok(());
        };
        let mode = entry.header().mode().map_err(ReceiveError::Interrupted)?;
        if self.rules.is_none() {
            let dockerignore = name == DOCKERIGNORE
                && kind == EntryType::Regular
                && self.options.context.honour_dockerignore;
            let text = if dockerignore {
                Some(self.read_dockerignore(&mut entry)?)
            } else {
                None
            };
            self.rules = Some(self.exclude_rules(text.as_deref())?);
            if let Some(text) = text {
                // Written even when a pattern excludes it: the builder reads it from disk.
                return self.write_file(&name, mode, &mut text.as_bytes(), text.len() as u64);
            }
        }
        let excluded = self.rules.as_ref().is_some_and(|r| r.excludes(&name));
        let walked_anyway = self.rules.as_ref().is_some_and(|r| r.has_exceptions());
        match kind {
            EntryType::Directory if excluded && !walked_anyway => Ok(()),
            EntryType::Directory => self.directory(&name),
            _ if excluded => Ok(()),
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                self.write_file(&name, mode, &mut entry, size)
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.symlink(&name, target.as_deref())
            }
            other => Err(ContextError::SpecialFile {
                location: self.location(&name),
                kind: special_kind(other),
            }
            .into()),
        }
    }

    /// The entry's path relative to the context root, checked; `None` for the root itself.
    fn name(&self, raw: &[u8]) -> Result<Option<String>, ReceiveError> {
        let name = std::str::from_utf8(raw).map_err(|_| ContextError::InvalidName {
            location: self.options.origin.clone(),
            name: format!("\"{}\"", raw.escape_ascii()),
            reason: "is not valid UTF-8",
        })?;
        let mut name = name.trim_end_matches('/');
        while let Some(rest) = name.strip_prefix("./") {
            name = rest;
        }
        if name.is_empty() || name == "." {
            return Ok(None);
        }
        match path_problem(name) {
            Some(reason) => Err(ContextError::InvalidPath {
                origin: self.options.origin.clone(),
                path: escaped(name),
                reason,
            }
            .into()),
            None => Ok(Some(name.to_owned())),
        }
    }

    /// Shows `name` as it is in the claim, and where it is.
    fn location(&self, name: &str) -> String {
        let sub = &self.options.sub_path;
        let path = if sub.is_empty() {
            name.to_owned()
        } else {
            format!("{sub}/{name}")
        };
        format!("{} in {}", escaped(&path), self.options.origin)
    }

    fn read_dockerignore(
        &self,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<String, ReceiveError> {
        if entry.size() > MAX_DOCKERIGNORE {
            return Err(ContextError::TooLarge {
                limit: MAX_DOCKERIGNORE,
                location: self.location(DOCKERIGNORE),
            }
            .into());
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(ReceiveError::Interrupted)?;
        String::from_utf8(data).map_err(|_| {
            ContextError::NotText {
                origin: self.location(DOCKERIGNORE),
            }
            .into()
        })
    }

    /// `.dockerignore` patterns first, then `spec.exclude`, as a local build applies them.
    fn exclude_rules(&self, dockerignore: Option<&str>) -> Result<ExcludeRules, ReceiveError> {
        let mut rules = ExcludeRules::default();
        if let Some(text) = dockerignore {
            rules.extend(DOCKERIGNORE, dockerignore_patterns(text))?;
        }
        let exclude = &self.options.context.exclude;
        rules.extend("exclude", exclude.iter().map(String::as_str))?;
        Ok(rules)
    }

    /// Records the entry (duplicates, limits, parents that must be directories) and creates its
    /// parent directories: every one is a directory this upload made, never a symlink.
    fn admit(&mut self, name: &str, mode: u32, kind: EntryKind) -> Result<PathBuf, ReceiveError> {
        let entry = Entry {
            path: name.to_owned(),
            mode,
            kind,
        };
        self.tree.insert(entry, &self.location(name))?;
        self.counts.entries += 1;
        let path = self.into.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| ReceiveError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        Ok(path)
    }

    fn directory(&mut self, name: &str) -> Result<(), ReceiveError> {
        let path = self.admit(name, 0o755, EntryKind::Directory)?;
        match fs::create_dir(&path) {
            Ok(()) => Ok(()),
            // Implied by an earlier entry below it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            Err(source) => Err(ReceiveError::Write { path, source }),
        }
    }

    fn write_file(
        &mut self,
        name: &str,
        mode: u32,
        data: &mut impl Read,
        size: u64,
    ) -> Result<(), ReceiveError> {
        let kind = EntryKind::File {
            size,
            content: Content::Bytes(Bytes::new()),
        };
        let path = self.admit(name, normalised_file_mode(mode), kind)?;
        let written = |source| ReceiveError::Write {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(written)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut copied: u64 = 0;
        loop {
            let n = data.read(&mut buf).map_err(ReceiveError::Interrupted)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(written)?;
            copied += n as u64;
        }
        if copied != size {
            return Err(ReceiveError::Interrupted(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} is cut short", self.location(name)),
            )));
        }
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(normalised_file_mode(mode)),
        )
        .map_err(written)?;
        self.counts.bytes += size;
        Ok(())
    }

    fn symlink(&mut self, name: &str, target: Option<&[u8]>) -> Result<(), ReceiveError> {
        let location = self.location(name);
        let invalid = |name: String, reason| ContextError::InvalidName {
            location: location.clone(),
            name,
            reason,
        };
        let raw = target.unwrap_or_default();
        let target = std::str::from_utf8(raw).map_err(|_| {
            invalid(
                format!("\"{}\"", raw.escape_ascii()),
                "is a symlink target that is not valid UTF-8",
            )
        })?;
        if let Some(reason) = link_target_problem(target) {
            return Err(invalid(escaped(target), reason).into());
        }
        if !symlink_stays_inside(name, target) {
            return Err(ContextError::SymlinkEscapes {
                location,
                target: target.to_owned(),
            }
            .into());
        }
        let kind = EntryKind::Symlink {
            target: target.to_owned(),
        };
        let path = self.admit(name, 0o777, kind)?;
        std::os::unix::fs::symlink(target, &path)
            .map_err(|source| ReceiveError::Write { path, source })
    }
}

fn special_kind(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Fifo => "named pipe (fifo)",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Link => "hard link (the sender never sends one)",
        EntryType::GNUSparse => "sparse file entry",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests;
