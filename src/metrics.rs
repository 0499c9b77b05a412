//! Prometheus metrics of the controller: builds by result, durations, bytes pushed, queue depth.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::failure::FailureKind;

/// Labels of a finished build: `result` is `Pushed`, `UpToDate` or the failure reason (the
/// condition's reason); `kind` is the failure kind (`input`, `auth`, `not_found`, `tls`,
/// `network`, `other`) or `none`, so alerts can tell a user's mistake from an outage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
    pub kind: &'static str,
}

/// All metrics, registered once at start-up.
pub struct Metrics {
    pub registry: Registry,
    pub builds: Family<ResultLabel, Counter>,
    pub build_duration: Histogram,
    pub bytes_pushed: Counter<u64, AtomicU64>,
    pub builds_in_flight: Gauge,
    pub queue_depth: Gauge,
    pub reconciles: Counter,
    pub registry_checks: Family<CheckLabel, Counter>,
    pub registry_checks_in_flight: Gauge,
}

/// Label of a registry check: `in_sync`, `tag_restored`, `base_changed`, `image_lost`,
/// `base_missing` or `unreachable` (the registry could not be asked).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imagebuild");
        let builds = Family::<ResultLabel, Counter>::default();
        let build_duration = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]);
        let bytes_pushed = Counter::<u64, AtomicU64>::default();
        let builds_in_flight = Gauge::default();
        let queue_depth = Gauge::default();
        let reconciles = Counter::default();
        registry.register("builds", "Builds finished, by result", builds.clone());
        registry.register(
            "build_duration_seconds",
            "Time from build start to pushed image",
            build_duration.clone(),
        );
        registry.register(
            "pushed_bytes",
            "Blob bytes uploaded to registries",
            bytes_pushed.clone(),
        );
        registry.register(
            "builds_in_flight",
            "Builds running now",
            builds_in_flight.clone(),
        );
        registry.register(
            "queue_depth",
            "Builds waiting for a free build slot",
            queue_depth.clone(),
        );
        registry.register("reconciles", "Reconcile calls", reconciles.clone());
        let registry_checks = Family::<CheckLabel, Counter>::default();
        let registry_checks_in_flight = Gauge::default();
        registry.register(
            "registry_checks",
            "Registry checks of Succeeded ImageBuilds, by what they found",
            registry_checks.clone(),
        );
        registry.register(
            "registry_checks_in_flight",
            "Registry checks running now",
            registry_checks_in_flight.clone(),
        );
        Self {
            registry,
            builds,
            build_duration,
            bytes_pushed,
            builds_in_flight,
            queue_depth,
            reconciles,
            registry_checks,
            registry_checks_in_flight,
        }
    }
}

impl Metrics {
    /// Counts a finished build under `result`, and the kind of its failure if it failed.
    pub fn build_finished(&self, result: &str, failure: Option<FailureKind>, seconds: f64) {
        self.builds
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
                kind: failure.map_or("none", FailureKind::label),
            })
            .inc();
        self.build_duration.observe(seconds);
    }

    /// Counts a registry check by what it found.
    pub fn registry_checked(&self, result: &'static str) {
        self.registry_checks
            .get_or_create(&CheckLabel { result })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_counted_by_result_and_failure_kind() {
        let metrics = Metrics::default();
        metrics.build_finished("Pushed", None, 1.0);
        metrics.build_finished("Unauthorized", Some(FailureKind::Auth), 0.5);
        let text = metrics.encode();
        assert!(
            text.contains("imagebuild_builds_total{result=\"Pushed\",kind=\"none\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imagebuild_builds_total{result=\"Unauthorized\",kind=\"auth\"} 1"),
            "{text}"
        );
    }
}
