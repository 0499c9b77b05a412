//! How long the controller's watches pause after the API server fails them.
//!
//! kube's default (client-go's reflector backoff: 0.8 s doubling to 30 s, reset only after 120 s
//! without an error) suits one watch. The controller merges its three watches (ImageBuilds,
//! ConfigMaps, Secrets) into one trigger stream with one backoff, so after an API server restart
//! each watch's single expected error (410 Expired when it re-watches from its old
//! resourceVersion) lengthened the pause of all three: a ConfigMap changed 20 s after the restart
//! was seen 100 s later. This backoff stays short and starts over as soon as any watch delivers.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const FIRST: Duration = Duration::from_millis(250);
const LONGEST: Duration = Duration::from_secs(5);

/// Doubles from 250 ms up to 5 s; back to 250 ms on reset (the trigger stream resets it on every
/// event it delivers).
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(LONGEST);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_five_seconds() {
        let delays: Vec<u64> = WatchBackoff::default()
            .take(7)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn a_delivered_event_starts_the_pauses_over() {
        let mut backoff = WatchBackoff::default();
        backoff.by_ref().take(5).for_each(drop);
        backoff.reset();
        assert_eq!(backoff.next(), Some(FIRST));
    }
}
