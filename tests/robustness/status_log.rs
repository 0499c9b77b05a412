//! A record of every change to the ImageBuilds of one namespace, as a client watching them sees
//! it (`kubectl get imagebuilds --watch`), and what it says about status writes: how many each
//! generation got, and how many put it into its final state.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::common;

/// A running `kubectl get imagebuilds -n NS --watch`; stopped when dropped.
pub struct StatusLog {
    child: Child,
    objects: Arc<Mutex<Vec<Value>>>,
}

/// The status writes one generation of one ImageBuild received.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GenerationWrites {
    /// Every change of `status`.
    pub writes: usize,
    /// Changes after which the status was final: Succeeded, Ready=True, a digest, and
    /// observedGeneration equal to the generation.
    pub final_writes: usize,
    /// Changes that came after the first final one.
    pub after_final: usize,
}

impl StatusLog {
    /// Starts watching `ns` (before anything is applied there, to see every write).
    pub fn start(ns: &str) -> Self {
        let env = common::env();
        let mut child = env
            .cmd("kubectl")
            .args([
                "get",
                "imagebuilds",
                "-n",
                ns,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        let stdout = child.stdout.take().expect("watch output");
        let objects = Arc::new(Mutex::new(Vec::new()));
        let sink = objects.clone();
        std::thread::spawn(move || {
            let events = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for event in events.into_iter::<Value>().map_while(Result::ok) {
                if let Ok(mut all) = sink.lock() {
                    all.push(event["object"].clone());
                }
            }
        });
        // The watch lists the (empty) namespace first; give it that moment so no write is missed.
        std::thread::sleep(Duration::from_millis(1500));
        Self { child, objects }
    }

    /// Every object version seen so far, in order.
    pub fn objects(&self) -> Vec<Value> {
        self.objects.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// The status writes seen, by (name, generation).
    pub fn writes(&self) -> BTreeMap<(String, i64), GenerationWrites> {
        let mut last_status: BTreeMap<String, Value> = BTreeMap::new();
        let mut by_generation: BTreeMap<(String, i64), GenerationWrites> = BTreeMap::new();
        for ib in self.objects() {
            let name = ib["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let status = build_status(&ib["status"]);
            let previous = last_status.insert(name.clone(), status.clone());
            // A version that changed only metadata or spec is not a status write; one that
            // changed only what a registry check says (RegistryInSync) is not a build's.
            if previous.as_ref().unwrap_or(&Value::Null) == &status {
                continue;
            }
            let generation = ib["metadata"]["generation"].as_i64().unwrap_or_default();
            let entry = by_generation.entry((name, generation)).or_default();
            entry.writes += 1;
            if entry.final_writes > 0 {
                entry.after_final += 1;
            }
            if is_final(&ib) {
                entry.final_writes += 1;
            }
        }
        by_generation
    }

    /// The status versions `name` went through, one line each (for failure messages).
    pub fn history(&self, name: &str) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        let mut last = Value::Null;
        for ib in self.objects() {
            if ib["metadata"]["name"] != name || ib["status"] == last {
                continue;
            }
            last = ib["status"].clone();
            let ready = last["conditions"][0].clone();
            lines.push(format!(
                "generation {} observed {} {} {} {} attempts {} digest {}",
                ib["metadata"]["generation"],
                last["observedGeneration"],
                last["phase"],
                ready["status"],
                ready["reason"],
                last["attempts"],
                last["digest"],
            ));
        }
        lines
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `status` without the RegistryInSync condition, which registry checks write between builds.
fn build_status(status: &Value) -> Value {
    let mut status = status.clone();
    if let Some(conditions) = status["conditions"].as_array_mut() {
        conditions.retain(|c| c["type"] != "RegistryInSync");
    }
    status
}

/// Succeeded and Ready with a digest, for the generation it has now.
pub fn is_final(ib: &Value) -> bool {
    let status = &ib["status"];
    let ready = status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    status["phase"] == "Succeeded"
        && ready
        && status["digest"].is_string()
        && status["observedGeneration"] == ib["metadata"]["generation"]
}

/// Fails unless every generation seen got exactly one final status write and nothing after it.
pub fn assert_one_final_write_per_generation(log: &StatusLog) {
    let writes = log.writes();
    let wrong: Vec<_> = writes
        .iter()
        .filter(|(_, w)| w.final_writes != 1 || w.after_final != 0)
        .collect();
    let histories: Vec<_> = wrong
        .iter()
        .map(|((name, _), _)| (name, log.history(name)))
        .collect();
    assert!(
        wrong.is_empty(),
        "not exactly one final status write per generation: {wrong:?}\nhistories: {histories:#?}\nall: {writes:?}"
    );
}
