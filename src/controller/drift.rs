//! Keeping the registry as declared. Every `--registry-check-interval`, each Succeeded
//! ImageBuild is looked at in the registry: a HEAD of its base reference and one of each tag. A
//! base that moved is built on again; a tag that is missing or points elsewhere is put back.
//!
//! Each ImageBuild has its own moment in the interval, derived from its uid, so a thousand of
//! them are checked one after another over the interval rather than all at once; checks share a
//! limit of their own (the controller's concurrency). What a check found is kept in memory only:
//! the registry is the truth, and a restarted controller simply looks again within an interval.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use crate::api::{ImageBuild, ImageBuildStatus};
use crate::build::{self, BuildError};
use crate::oci::Digest;
use crate::reference::{ImageRef, RepositoryRef};
use crate::registry::{BaseState, RegistryAccess, RegistryClient, check_base};

use super::lock;

/// The condition a check writes: `True` when the registry serves what status says, `False` when
/// the base reference is gone, `Unknown` when the registry could not be asked.
pub const CONDITION: &str = "RegistryInSync";

/// The schedule and the limit of registry checks, and what earlier checks found.
pub struct Checks {
    interval: Option<Duration>,
    slots: Semaphore,
    entries: Mutex<Entries>,
    /// Clients by access, so checks reuse connections (and tokens) instead of a TLS handshake
    /// each; dropped when unused for an hour.
    clients: Mutex<HashMap<u64, (RegistryClient, Instant)>>,
}

/// Clients unused this long are dropped.
const CLIENT_IDLE: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Entries {
    by_uid: HashMap<String, Entry>,
    pruned: Option<Instant>,
}

struct Entry {
    /// When the next check is due.
    due: SystemTime,
    /// Checks in a row that could not reach the registry.
    failures: u32,
    /// What the base reference named when it last resolved to the recorded base digest (an
    /// index, for a one-platform build from one): the next check stops at the HEAD.
    base_top: Option<(String, Digest)>,
    touched: Instant,
}

/// What one check found (and, for tags it could put back, did).
#[derive(Debug)]
pub enum Finding {
    /// The base and every tag are as status says.
    InSync,
    /// The base reference gives another image now: build on it.
    BaseMoved { old: String, new: Digest },
    /// The base reference is gone from its registry; the image stays as it is.
    BaseMissing,
    /// These tags pointed elsewhere or nowhere, and point to `status.digest` again.
    TagsRestored(Vec<Misplaced>),
    /// These tags are wrong and the registry lost the image itself: build it again (the same
    /// inputs give the same digest) and push every tag.
    ImageLost(Vec<Misplaced>),
}

/// What a check found, and why the base could not be looked at when it could not: the tags are
/// checked (and put back) even then, since they live on the target, which may well be reachable.
#[derive(Debug)]
pub struct Checked {
    pub finding: Finding,
    pub base_unknown: Option<BuildError>,
}

/// A tag that did not point to `status.digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    pub tag: String,
    /// What it pointed to instead; `None` when it was missing.
    pub was: Option<Digest>,
}

impl Misplaced {
    /// "tag latest of REPO (missing) points to DIGEST again" and the like.
    pub fn note(&self, image: &str, digest: &str) -> String {
        let before = match &self.was {
            None => "was missing".to_owned(),
            Some(other) => format!("pointed to {other}, pushed by someone else"),
        };
        format!(
            "tag {} of {image} {before}; it points to {digest} again",
            self.tag
        )
    }
}

/// What the RegistryInSync condition should say after a check, and the Warning event that goes
/// with it when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    status: &'static str,
    reason: &'static str,
    message: String,
    warning: bool,
}

impl Sync {
    /// The registry serves every tag at `digest` (and the base is where it was).
    pub fn in_sync(digest: &str) -> Self {
        Self {
            status: "True",
            reason: "InSync",
            message: format!("the registry serves every tag at {digest}"),
            warning: false,
        }
    }

    /// The registry could not be asked; nothing is known.
    pub fn unknown(reason: &'static str, message: String) -> Self {
        Self {
            status: "Unknown",
            reason,
            message,
            warning: true,
        }
    }

    /// The base reference `from` is gone; the image stays as built.
    pub fn base_missing(from: &str) -> Self {
        Self {
            status: "False",
            reason: "BaseImageNotFound",
            message: format!(
                "spec.from {from} is no longer in its registry; the image stays as built on \
                 status.baseDigest until it is back or spec.from changes"
            ),
            warning: true,
        }
    }

    pub fn condition(&self) -> super::status::Wanted<'_> {
        super::status::Wanted {
            type_: CONDITION,
            status: self.status,
            reason: self.reason,
            message: self.message.clone(),
        }
    }

    /// The Warning event to send when the condition changed to this.
    pub fn warning(&self) -> Option<(&'static str, String)> {
        self.warning.then(|| (self.reason, self.message.clone()))
    }
}

impl Checks {
    /// `interval` `None` turns checks off.
    pub fn new(interval: Option<Duration>, concurrency: usize) -> Self {
        Self {
            interval,
            slots: Semaphore::new(concurrency.max(1)),
            entries: Mutex::new(Entries::default()),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `access`, kept from an earlier check when the access is the same.
    fn client(&self, access: &RegistryAccess) -> Result<RegistryClient, BuildError> {
        let key = access.fingerprint();
        let now = Instant::now();
        let mut clients = lock(&self.clients);
        clients.retain(|_, (_, used)| now.duration_since(*used) < CLIENT_IDLE);
        if let Some((client, used)) = clients.get_mut(&key) {
            *used = now;
            return Ok(client.clone());
        }
        let client = access.client()?;
        clients.insert(key, (client.clone(), now));
        Ok(client)
    }

    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    /// How long until the ImageBuild `uid` is due for a check; `None` when it is due now (or
    /// checks are off: then callers never ask).
    pub fn wait(&self, uid: &str) -> Option<Duration> {
        let interval = self.interval?;
        let now = SystemTime::now();
        let mut entries = lock(&self.entries);
        entries.prune(interval);
        let entry = entries
            .by_uid
            .entry(uid.to_owned())
            .or_insert_with(|| Entry {
                // First seen (a new ImageBuild, or a restart): its own moment in the next interval.
                due: next_moment(uid, interval, now),
                failures: 0,
                base_top: None,
                touched: Instant::now(),
            });
        entry.touched = Instant::now();
        entry.due.duration_since(now).ok().filter(|d| !d.is_zero())
    }

    /// Runs `check` under the checks' limit.
    pub async fn limited<T>(&self, check: impl Future<Output = T>) -> Option<T> {
        let _slot = self.slots.acquire().await.ok()?;
        Some(check.await)
    }

    /// Records a check that reached the registry; returns the wait until the next one.
    pub fn done(&self, uid: &str) -> Duration {
        self.schedule(uid, |entry, interval, now| {
            entry.failures = 0;
            next_moment(uid, interval, now)
        })
    }

    /// Records a check that could not reach the registry; it is tried again with backoff,
    /// never later than the regular moment.
    pub fn failed(&self, uid: &str) -> Duration {
        self.schedule(uid, |entry, interval, now| {
            entry.failures = entry.failures.saturating_add(1);
            let retry = now + super::reconcile::backoff(entry.failures);
            retry.min(next_moment(uid, interval, now))
        })
    }

    /// What the base reference named when it last resolved to `recorded`.
    pub fn base_top(&self, uid: &str, recorded: &str) -> Option<Digest> {
        let entries = lock(&self.entries);
        let (for_digest, top) = entries.by_uid.get(uid)?.base_top.as_ref()?;
        (for_digest == recorded).then(|| top.clone())
    }

    pub fn remember_base_top(&self, uid: &str, recorded: &str, top: Digest) {
        if let Some(entry) = lock(&self.entries).by_uid.get_mut(uid) {
            entry.base_top = Some((recorded.to_owned(), top));
        }
    }

    /// Forgets a deleted ImageBuild.
    pub fn forget(&self, uid: &str) {
        lock(&self.entries).by_uid.remove(uid);
    }

    fn schedule(
        &self,
        uid: &str,
        next: impl FnOnce(&mut Entry, Duration, SystemTime) -> SystemTime,
    ) -> Duration {
        let Some(interval) = self.interval else {
            return Duration::MAX;
        };
        let now = SystemTime::now();
        let mut entries = lock(&self.entries);
        let entry = entries
            .by_uid
            .entry(uid.to_owned())
            .or_insert_with(|| Entry {
                due: now,
                failures: 0,
                base_top: None,
                touched: Instant::now(),
            });
        entry.due = next(entry, interval, now);
        entry.touched = Instant::now();
        entry
            .due
            .duration_since(now)
            .unwrap_or(Duration::from_secs(1))
    }
}

impl Entries {
    /// Drops entries of ImageBuilds not seen for three intervals (every Succeeded ImageBuild is
    /// seen at least once an interval, for its check): deleted ones. At most once an interval.
    fn prune(&mut self, interval: Duration) {
        let now = Instant::now();
        if self
            .pruned
            .is_some_and(|at| now.duration_since(at) < interval)
        {
            return;
        }
        self.pruned = Some(now);
        let stale = interval.saturating_mul(3).max(Duration::from_secs(3600));
        self.by_uid
            .retain(|_, entry| now.duration_since(entry.touched) < stale);
    }
}

/// The first moment after `after` that is `uid`'s moment in the interval: the interval is cut
/// into the same slots for everyone, and each uid has its own fixed offset into them.
fn next_moment(uid: &str, interval: Duration, after: SystemTime) -> SystemTime {
    let period = interval.as_millis().max(1);
    let mut hasher = DefaultHasher::new();
    uid.hash(&mut hasher);
    let offset = u128::from(hasher.finish()) % period;
    let now = after
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // The next multiple of the period, shifted by the offset, strictly after now.
    let mut at = (now + period - offset) / period * period + offset;
    if at <= now {
        at += period;
    }
    let at = u64::try_from(at).unwrap_or(u64::MAX);
    UNIX_EPOCH + Duration::from_millis(at)
}

/// Looks at the registry for a Succeeded ImageBuild: its base reference first (a moved base
/// means a new build, whatever the tags say), then each tag, which is put back at once when the
/// registry still holds the image.
pub async fn check(
    ib: &ImageBuild,
    uid: &str,
    checks: &Checks,
    target: &RegistryAccess,
    base: Option<&RegistryAccess>,
) -> Result<Checked, BuildError> {
    let checked = |finding| Checked {
        finding,
        base_unknown: None,
    };
    let Some(status) = ib.status.as_ref() else {
        return Ok(checked(Finding::InSync));
    };
    let Some(digest) = status.digest.as_deref() else {
        return Ok(checked(Finding::InSync));
    };
    let digest: Digest = digest
        .parse()
        .map_err(|_| BuildError::Internal(format!("status.digest `{digest}` is not a digest")))?;
    let repository = RepositoryRef::parse(&ib.spec.image)?.repository;
    let client = checks.client(target)?;
    let base_unknown = match check_base_of(ib, status, uid, checks, target, base).await {
        Ok(Some(finding)) => return Ok(checked(finding)),
        Ok(None) => None,
        Err(error) => Some(error),
    };
    let finding = check_tags(&client, &repository, status, &digest).await?;
    Ok(Checked {
        finding,
        base_unknown,
    })
}

/// Each tag against `digest`; wrong ones are put back when the registry still holds the image.
async fn check_tags(
    client: &RegistryClient,
    repository: &str,
    status: &ImageBuildStatus,
    digest: &Digest,
) -> Result<Finding, BuildError> {
    let mut misplaced = Vec::new();
    for tag in &status.tags {
        match client.head_manifest(repository, tag).await? {
            Some(found) if &found == digest => {}
            was => misplaced.push(Misplaced {
                tag: tag.clone(),
                was,
            }),
        }
    }
    if misplaced.is_empty() {
        return Ok(Finding::InSync);
    }
    // Re-tagging needs the image itself, and for an index every child, still in the registry.
    let mut held = client.head_manifest(repository, digest.as_str()).await? == Some(digest.clone());
    for child in &status.platforms {
        if !held {
            break;
        }
        held = client
            .head_manifest(repository, &child.digest)
            .await?
            .is_some();
    }
    if !held {
        return Ok(Finding::ImageLost(misplaced));
    }
    for wrong in &misplaced {
        client.tag(repository, digest.as_str(), &wrong.tag).await?;
    }
    Ok(Finding::TagsRestored(misplaced))
}

/// `Some` when the base reference no longer gives `status.baseDigest`.
async fn check_base_of(
    ib: &ImageBuild,
    status: &ImageBuildStatus,
    uid: &str,
    checks: &Checks,
    target: &RegistryAccess,
    base: Option<&RegistryAccess>,
) -> Result<Option<Finding>, BuildError> {
    let (Some(from), Some(recorded)) = (ib.spec.from.as_deref(), status.base_digest.as_deref())
    else {
        return Ok(None);
    };
    let image = ImageRef::parse(from)?;
    if image.digest.is_some() {
        // Pinned by digest: it cannot move.
        return Ok(None);
    }
    let Ok(recorded_digest) = recorded.parse::<Digest>() else {
        return Ok(None);
    };
    let client = checks.client(&build::access_for_base(target, base, &image.registry))?;
    let platforms = build::wanted_platforms(&ib.spec)?;
    let known_top = checks.base_top(uid, recorded);
    match check_base(
        &client,
        &image,
        &platforms,
        &recorded_digest,
        known_top.as_ref(),
    )
    .await?
    {
        BaseState::Unchanged { top } => {
            checks.remember_base_top(uid, recorded, top);
            Ok(None)
        }
        BaseState::Moved { now } => Ok(Some(Finding::BaseMoved {
            old: recorded.to_owned(),
            new: now,
        })),
        BaseState::Missing => Ok(Some(Finding::BaseMissing)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn each_imagebuild_has_one_fixed_moment_per_interval() {
        let start = at(1_700_000_000_000);
        let first = next_moment("uid-a", MINUTE, start);
        assert!(first > start && first <= start + MINUTE);
        // From any time before that moment, the same moment; from the moment on, the next one.
        assert_eq!(
            next_moment("uid-a", MINUTE, start + Duration::from_millis(1)),
            first
        );
        assert_eq!(next_moment("uid-a", MINUTE, first), first + MINUTE);
        assert_eq!(
            next_moment("uid-a", MINUTE, first + Duration::from_millis(1)),
            first + MINUTE
        );
    }

    #[test]
    fn a_thousand_imagebuilds_are_spread_over_the_interval() {
        let start = at(1_700_000_000_000);
        // Ten buckets of six seconds: each gets about a hundred, none more than twice that.
        let mut buckets = [0usize; 10];
        for i in 0..1000 {
            let moment = next_moment(&format!("0b8f3c2e-uid-{i}"), MINUTE, start);
            let offset = moment.duration_since(start).unwrap_or_default();
            let bucket = (offset.as_millis() * 10 / MINUTE.as_millis()) as usize;
            buckets[bucket.min(9)] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 50 && n < 200), "{buckets:?}");
    }

    #[test]
    fn a_new_imagebuild_waits_for_its_moment_and_a_failed_check_is_retried_sooner() {
        let checks = Checks::new(Some(Duration::from_secs(600)), 4);
        let first = checks.wait("uid-b");
        assert!(first.is_some_and(|w| w <= Duration::from_secs(600)));
        let retry = checks.failed("uid-b");
        assert!(retry <= Duration::from_secs(7), "{retry:?}");
        let next = checks.done("uid-b");
        assert!(next <= Duration::from_secs(600));
        assert!(Checks::new(None, 4).wait("uid-b").is_none());
    }

    #[test]
    fn the_base_top_is_kept_for_the_recorded_digest_only() {
        let checks = Checks::new(Some(MINUTE), 1);
        checks.wait("uid-c");
        let top = Digest::of(b"index");
        checks.remember_base_top("uid-c", "sha256:child", top.clone());
        assert_eq!(checks.base_top("uid-c", "sha256:child"), Some(top));
        assert_eq!(checks.base_top("uid-c", "sha256:other"), None);
        checks.forget("uid-c");
        assert_eq!(checks.base_top("uid-c", "sha256:child"), None);
    }

    #[test]
    fn notes_say_what_a_tag_pointed_to() {
        let missing = Misplaced {
            tag: "latest".into(),
            was: None,
        };
        assert_eq!(
            missing.note("r.test/o/app", "sha256:aa"),
            "tag latest of r.test/o/app was missing; it points to sha256:aa again"
        );
        let moved = Misplaced {
            tag: "v1".into(),
            was: Some(Digest::of(b"x")),
        };
        assert!(
            moved
                .note("r.test/o/app", "sha256:aa")
                .contains("pointed to sha256:")
        );
    }
}
