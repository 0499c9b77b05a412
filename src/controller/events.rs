//! Kubernetes Events with the note kept: kube's `Recorder` folds every event with the same
//! object, type, reason and action into one series that keeps its first note, so a second
//! `TagRestored` or `Pushed` within minutes would show the first one's text. Here an event
//! repeats into a series only when its note is the same too; a new note is a new event.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::lock;

/// Series older than this are not continued (kube's own cache forgets them after 6 minutes).
const KEEP: Duration = Duration::from_secs(600);

/// Publishes events; one `Recorder` (and so one series) per object, type, reason and note.
/// Clones share their series.
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
    series: Arc<Mutex<HashMap<SeriesKey, (Recorder, Instant)>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    uid: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    type_: String,
    reason: String,
    action: String,
    note: u64,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Publishes an event about `regarding` (`action`: what the controller was doing); a
    /// failure to record is logged, never fatal.
    pub async fn note(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(crate::failure::truncate(&note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.publish(&event, regarding).await {
            tracing::warn!(%error, "could not record event");
        }
    }

    /// Publishes `event` about `regarding`: a repeat of the same note continues its series.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let mut hasher = DefaultHasher::new();
        event.note.hash(&mut hasher);
        let key = SeriesKey {
            uid: regarding.uid.clone(),
            kind: regarding.kind.clone(),
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            type_: match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            },
            reason: event.reason.clone(),
            action: event.action.clone(),
            note: hasher.finish(),
        };
        let recorder = {
            let mut series = lock(&self.series);
            let now = Instant::now();
            series.retain(|_, (_, used)| now.duration_since(*used) < KEEP);
            let entry = series.entry(key).or_insert_with(|| {
                (
                    Recorder::new(self.client.clone(), self.reporter.clone()),
                    now,
                )
            });
            entry.1 = now;
            entry.0.clone()
        };
        recorder.publish(event, regarding).await
    }
}
