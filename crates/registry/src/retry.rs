//! When and how long to wait before trying a failed registry request again: exponential backoff
//! with full jitter, honouring the registry's `Retry-After`.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Ceiling of the first delay; each further delay's ceiling doubles.
    pub base_delay: Duration,
    /// Largest delay between two attempts.
    pub max_delay: Duration,
    /// Longest `Retry-After` we wait for; a registry asking for more fails the request at once.
    pub max_retry_after: Duration,
    /// Attempts when the host cannot be reached at all (DNS failure, connection refused).
    pub unreachable_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            unreachable_attempts: 2,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries (tests, one-shot probes).
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            unreachable_attempts: 1,
            ..Self::default()
        }
    }

    /// The largest delay after failed attempt number `attempt` (1-based): base·2^(attempt-1), capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay)
    }

    /// How long to wait after failed attempt `attempt`: the registry's `Retry-After` when it gave
    /// one, else a uniformly random delay up to [`Self::ceiling`] ("full jitter", so that many
    /// clients that failed together do not retry together).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait;
        }
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }

    /// Whether a `Retry-After` is short enough to wait for.
    pub fn accepts_retry_after(&self, retry_after: Option<Duration>) -> bool {
        retry_after.is_none_or(|d| d <= self.max_retry_after)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and ignored).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_ceilings_double_from_the_base() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(2), Duration::from_millis(400));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(4), Duration::from_millis(1600));
    }

    #[test]
    fn delay_ceilings_are_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(7), Duration::from_secs(10));
        assert_eq!(p.ceiling(1000), Duration::from_secs(10));
    }

    #[test]
    fn jittered_delays_stay_under_the_ceiling_and_vary() {
        let p = RetryPolicy::default();
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(3, None)).collect();
        assert!(delays.iter().all(|d| *d <= p.ceiling(3)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 20, "full jitter spreads delays");
    }

    #[test]
    fn retry_after_is_honoured_exactly() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn retry_after_longer_than_the_limit_is_not_waited_for() {
        let p = RetryPolicy::default();
        assert!(p.accepts_retry_after(Some(Duration::from_secs(60))));
        assert!(!p.accepts_retry_after(Some(Duration::from_secs(3600))));
        assert!(p.accepts_retry_after(None));
    }

    #[test]
    fn retry_after_header_is_read_as_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "12".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
