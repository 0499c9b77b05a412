//! The controller's endpoint for PersistentVolumeClaim contexts: `PUT /contexts/{id}` with
//! `Authorization: Bearer <token>` and a tar stream as the body (see [`crate::transfer`]).
//!
//! A build registers the upload it expects ([`Uploads::register`]) before it creates the reader
//! Pod, and hands the Pod the id and a random token. The token is good for one upload of that
//! one context into that one directory: it is consumed by the first authenticated request and
//! forgotten when the build stops waiting. It grants nothing else — no registry credential or
//! Secret ever goes to the reader Pod's namespace.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::put;
use futures::TryStreamExt;
use ring::rand::SecureRandom;
use tokio::sync::oneshot;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::transfer::{self, Counts, ReceiveError, ReceiveOptions};

/// Where uploads go, below the controller's context URL.
pub const UPLOAD_PATH: &str = "/contexts";

/// What an upload came to.
pub type Outcome = Result<Counts, ReceiveError>;

/// The uploads the controller is waiting for, shared by the endpoint and the builds.
#[derive(Clone, Default)]
pub struct Uploads {
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

struct Pending {
    /// SHA-256 of the token: compared instead of the token, so the comparison's timing tells
    /// nothing about the token itself.
    token_digest: [u8; 32],
    into: PathBuf,
    options: ReceiveOptions,
    done: oneshot::Sender<Outcome>,
}

/// One expected upload; forgotten (its token no longer accepted) when dropped.
pub struct Expected {
    id: String,
    token: String,
    outcome: oneshot::Receiver<Outcome>,
    uploads: Uploads,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why an upload request was turned away before any byte was read.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Unknown,
    WrongToken,
}

impl Uploads {
    /// Registers an upload that unpacks into `into` (a directory that does not exist yet).
    pub fn register(&self, into: PathBuf, options: ReceiveOptions) -> Result<Expected, io::Error> {
        let id = random_hex(16)?;
        let token = random_hex(32)?;
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            token_digest: digest(&token),
            into,
            options,
            done,
        };
        self.lock().insert(id.clone(), pending);
        Ok(Expected {
            id,
            token,
            outcome,
            uploads: self.clone(),
        })
    }

    /// Takes the upload `id` out if `token` is its token: one upload per token.
    fn take(&self, id: &str, token: &str) -> Result<Pending, Refusal> {
        let mut pending = self.lock();
        let entry = pending.get(id).ok_or(Refusal::Unknown)?;
        if entry.token_digest != digest(token) {
            return Err(Refusal::WrongToken);
        }
        pending.remove(id).ok_or(Refusal::Unknown)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        super::lock(&self.pending)
    }
}

impl Expected {
    /// The path to PUT the context to, e.g. `/contexts/3f2a...`.
    pub fn path(&self) -> String {
        format!("{UPLOAD_PATH}/{}", self.id)
    }

    /// The one-time token for the reader Pod.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Waits for the upload to end; `None` if the endpoint dropped it without an outcome.
    pub async fn outcome(&mut self) -> Option<Outcome> {
        (&mut self.outcome).await.ok()
    }

    /// The outcome if the upload has already ended.
    pub fn try_outcome(&mut self) -> Option<Outcome> {
        self.outcome.try_recv().ok()
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.uploads.lock().remove(&self.id);
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

fn random_hex(bytes: usize) -> Result<String, io::Error> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| io::Error::other("the system's random number generator failed"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves uploads on an already bound listener until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, uploads: Uploads) -> io::Result<()> {
    let app = Router::new()
        .route(&format!("{UPLOAD_PATH}/{{id}}"), put(receive))
        // Contexts are large; transfer::receive enforces the controller's own limits.
        .layer(DefaultBodyLimit::disable())
        .with_state(uploads);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving PersistentVolumeClaim context uploads");
    }
    axum::serve(listener, app).await
}

async fn receive(
    State(uploads): State<Uploads>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let pending = match uploads.take(&id, token) {
        Ok(pending) => pending,
        Err(Refusal::Unknown) => {
            return (
                StatusCode::NOT_FOUND,
                format!("no context upload {id} is expected (its build may have ended)\n"),
            );
        }
        Err(Refusal::WrongToken) => {
            tracing::warn!(upload = %id, "context upload with a wrong token refused");
            return (
                StatusCode::UNAUTHORIZED,
                "the token does not match this upload\n".into(),
            );
        }
    };
    let stream = body.into_data_stream().map_err(io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let Pending {
        into,
        options,
        done,
        ..
    } = pending;
    let received = tokio::task::spawn_blocking(move || {
        let reader = WhileAwaited {
            inner: reader,
            build: &done,
        };
        (transfer::receive(reader, &into, &options), done)
    })
    .await;
    let (outcome, done) = match received {
        Ok(received) => received,
        Err(join) => {
            let error = io::Error::other(join.to_string());
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"));
        }
    };
    let reply = match &outcome {
        Ok(counts) => (
            StatusCode::OK,
            format!(
                "received {} entries, {} bytes\n",
                counts.entries, counts.bytes
            ),
        ),
        Err(error @ ReceiveError::Refused(_)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("{error}\n"))
        }
        Err(error @ ReceiveError::Interrupted(_)) => {
            (StatusCode::BAD_REQUEST, format!("{error}\n"))
        }
        Err(error @ ReceiveError::Write { .. }) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"))
        }
    };
    // The build hears the outcome before the reader Pod does, so a Pod that fails after a
    // refusal never hides the refusal's message.
    let _ = done.send(outcome);
    reply
}

/// Reads the upload only while its build still waits for it: a build that timed out or whose
/// ImageBuild is gone has removed its scratch directory, and nothing may be written there again.
struct WhileAwaited<'a, R> {
    inner: R,
    build: &'a oneshot::Sender<Outcome>,
}

impl<R: std::io::Read> std::io::Read for WhileAwaited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.build.is_closed() {
            return Err(io::Error::other(
                "the build stopped waiting for this context",
            ));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ReceiveOptions {
        ReceiveOptions {
            context: crate::context::ContextOptions::default(),
            origin: "PersistentVolumeClaim ns/src".into(),
            sub_path: String::new(),
        }
    }

    #[test]
    fn a_token_is_good_for_one_upload_of_its_own_context() {
        let uploads = Uploads::default();
        let dir = tempfile::tempdir().unwrap();
        let expected = uploads
            .register(dir.path().join("context"), options())
            .unwrap();
        let id = expected.path().rsplit('/').next().unwrap().to_owned();
        assert_eq!(
            uploads.take(&id, "not-the-token").err(),
            Some(Refusal::WrongToken)
        );
        assert!(uploads.take(&id, expected.token()).is_ok());
        assert_eq!(
            uploads.take(&id, expected.token()).err(),
            Some(Refusal::Unknown)
        );
    }

    #[test]
    fn a_token_is_forgotten_when_its_build_stops_waiting() {
        let uploads = Uploads::default();
        let expected = uploads.register("/nowhere".into(), options()).unwrap();
        let id = expected.path().rsplit('/').next().unwrap().to_owned();
        let token = expected.token().to_owned();
        drop(expected);
        assert_eq!(uploads.take(&id, &token).err(), Some(Refusal::Unknown));
    }

    /// The endpoint on a loopback port, and its base URL.
    async fn endpoint() -> (Uploads, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let uploads = Uploads::default();
        tokio::spawn(serve(listener, uploads.clone()));
        (uploads, url)
    }

    #[tokio::test]
    async fn a_sent_directory_arrives_whole_and_the_build_hears_of_it() {
        let (uploads, url) = endpoint().await;
        let claim = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(claim.path().join("app/sub")).unwrap();
        std::fs::write(claim.path().join("app/sub/b.txt"), "b\n").unwrap();
        std::fs::write(claim.path().join("outside.txt"), "no\n").unwrap();
        let work = tempfile::tempdir().unwrap();
        let into = work.path().join("context");
        let mut expected = uploads.register(into.clone(), options()).unwrap();
        let sent = transfer::send(transfer::SendRequest {
            claim_root: claim.path().to_owned(),
            sub_path: Some("app".into()),
            url: format!("{url}{}", expected.path()),
            token: expected.token().to_owned(),
        })
        .await
        .expect("sent");
        let received = expected
            .outcome()
            .await
            .expect("an outcome")
            .expect("received");
        assert_eq!(sent, received);
        assert_eq!(
            std::fs::read_to_string(into.join("sub/b.txt")).unwrap(),
            "b\n"
        );
        assert!(!into.join("outside.txt").exists());
    }

    #[tokio::test]
    async fn a_sender_with_the_wrong_token_is_turned_away_and_nothing_is_written() {
        let (uploads, url) = endpoint().await;
        let claim = tempfile::tempdir().unwrap();
        std::fs::write(claim.path().join("a.txt"), "a\n").unwrap();
        let work = tempfile::tempdir().unwrap();
        let expected = uploads
            .register(work.path().join("context"), options())
            .unwrap();
        let error = transfer::send(transfer::SendRequest {
            claim_root: claim.path().to_owned(),
            sub_path: None,
            url: format!("{url}{}", expected.path()),
            token: "0".repeat(64),
        })
        .await
        .expect_err("refused");
        assert!(error.to_string().contains("HTTP 401"), "{error}");
        assert!(!work.path().join("context").exists());
    }

    #[test]
    fn an_upload_stops_reading_once_its_build_stops_waiting() {
        use std::io::Read;
        let (done, outcome) = oneshot::channel::<Outcome>();
        let mut reader = WhileAwaited {
            inner: &b"tar bytes"[..],
            build: &done,
        };
        let mut buf = [0u8; 3];
        assert_eq!(reader.read(&mut buf).unwrap(), 3);
        drop(outcome);
        let error = reader.read(&mut buf).expect_err("stopped");
        assert!(error.to_string().contains("stopped waiting"), "{error}");
    }

    #[test]
    fn tokens_are_long_random_and_never_printed() {
        let uploads = Uploads::default();
        let a = uploads.register("/a".into(), options()).unwrap();
        let b = uploads.register("/b".into(), options()).unwrap();
        assert_eq!(a.token().len(), 64);
        assert_ne!(a.token(), b.token());
        assert!(!format!("{a:?}").contains(a.token()));
    }
}
