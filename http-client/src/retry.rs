//! Retrying requests: one loop for every HTTP client of Sluicegate. Each attempt
//! waits for its slot at the [`Pacer`], is counted in the run's statistics, and
//! says what it came to ([`Attempt`]); the loop sleeps and tries again until the
//! attempt succeeds, fails for good or the [`RetryPolicy`]'s attempts are used.
//!
//! What is worth another attempt is the caller's decision (a POST is not
//! repeated blindly, an expired token is renewed first, ...); how often, how
//! long to wait between attempts, and what the server asked for
//! ([`retry_after`]) are decided here.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use sluicegate_core::RunStats;

use crate::pace::Pacer;

/// How often to try a request and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub max_attempts: u32,
    /// The longest wait before the first retry; doubled for each further one.
    pub initial: Duration,
    /// The longest wait before any retry.
    pub max: Duration,
}

impl RetryPolicy {
    /// `max_attempts` attempts (at least 1), waiting up to `initial`, doubled
    /// per retry, at most `max`.
    pub fn new(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial,
            max,
        }
    }

    /// The wait before retry number `retry` (1 for the second attempt): full
    /// jitter, a random delay in `[0, min(max, initial * 2^(retry-1))]`, so
    /// clients that failed together do not come back together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)));
        let cap = exp.min(self.max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=cap_ms))
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// It succeeded.
    Done(T),
    /// It failed in a way another attempt may not: try again after `wait`
    /// (unless the attempts are used up).
    Again {
        /// What went wrong (logged, and returned if no attempt is left).
        error: E,
        /// How long to wait first (the server's `Retry-After`, or
        /// [`RetryPolicy::backoff`]; zero when the pacer already holds every
        /// caller back).
        wait: Duration,
    },
    /// It must be sent again at once and does not count as an attempt (the
    /// credentials were renewed after a `401`).
    Renewed,
    /// It failed for good: another attempt would fail the same way, or would
    /// not be safe.
    Fail(E),
}

/// A request that did not succeed: its last error and the attempts made.
#[derive(Debug)]
pub struct GaveUp<E> {
    /// The last attempt's error.
    pub error: E,
    /// Attempts made.
    pub attempts: u32,
    /// Whether it stopped because the policy's attempts were used up (rather
    /// than on a failure no retry fixes).
    pub exhausted: bool,
}

/// Runs `attempt` (given the attempt's number, from 1) until it is done, fails
/// for good, or `policy`'s attempts are used up. Before each attempt it waits
/// for a slot at `pacer` and counts the request (and a retry, after the first)
/// into `stats`; between attempts it sleeps as the attempt asked.
pub async fn retrying<T, E, F, Fut>(
    policy: &RetryPolicy,
    pacer: Option<&Pacer>,
    stats: Option<&RunStats>,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    E: Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let mut number = 0;
    loop {
        number += 1;
        if let Some(pacer) = pacer {
            let waited = pacer.wait().await;
            if let Some(stats) = stats {
                stats.add_rate_limit_wait(waited);
            }
        }
        if let Some(stats) = stats {
            stats.add_request();
            if number > 1 {
                stats.add_retry();
            }
        }
        let (error, wait) = match attempt(number).await {
            Attempt::Done(value) => return Ok(value),
            Attempt::Fail(error) => {
                return Err(GaveUp {
                    error,
                    attempts: number,
                    exhausted: false,
                });
            }
            Attempt::Renewed => {
                number -= 1;
                continue;
            }
            Attempt::Again { error, wait } => (error, wait),
        };
        if number >= policy.max_attempts {
            return Err(GaveUp {
                error,
                attempts: number,
                exhausted: true,
            });
        }
        tracing::warn!(
            attempt = number,
            delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error = %error,
            "request failed, retrying"
        );
        tokio::time::sleep(wait).await;
    }
}

/// How long the server asks to wait: `Retry-After` (seconds or an HTTP date),
/// else the first of `reset_headers` present (seconds to wait, or a Unix time
/// when the value is that large). Sources pass the common rate-limit headers
/// (`RateLimit-Reset`, `X-RateLimit-Reset`); a platform adds its own.
pub fn retry_after(headers: &HeaderMap, reset_headers: &[&str]) -> Option<Duration> {
    let Some(value) = headers.get(RETRY_AFTER) else {
        let reset = reset_headers.iter().find_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return Some(Duration::from_secs(if reset > 1_000_000_000 {
            reset.saturating_sub(now)
        } else {
            reset
        }));
    };
    let value = value.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_is_capped_full_jitter() {
        let policy = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..200 {
            assert!(policy.backoff(1) <= Duration::from_millis(100));
            assert!(policy.backoff(3) <= Duration::from_millis(400));
            assert!(policy.backoff(9) <= Duration::from_millis(1000));
        }
        // Full jitter spreads delays: 200 draws are not all the same.
        let draws: std::collections::BTreeSet<_> = (0..200).map(|_| policy.backoff(5)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn retry_after_seconds_dates_and_reset_headers() {
        let resets = ["ratelimit-reset", "x-ratelimit-reset"];
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, &resets), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&h, &resets).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, &resets), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h, &resets), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&h, &[]), None, "only the headers asked for");
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 5;
        h.insert("x-ratelimit-reset", HeaderValue::from(at));
        let wait = retry_after(&h, &resets).unwrap();
        assert!(
            wait <= Duration::from_secs(5) && wait >= Duration::from_secs(3),
            "{wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_counted_retried_and_given_up() {
        let policy = RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(10));
        let stats = RunStats::default();
        let calls = AtomicU32::new(0);
        let out: Result<(), GaveUp<String>> = retrying(&policy, None, Some(&stats), |n| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                Attempt::Again {
                    error: format!("failure {n}"),
                    wait: Duration::from_millis(5),
                }
            }
        })
        .await;
        let gave_up = out.unwrap_err();
        assert_eq!(
            (gave_up.error.as_str(), gave_up.attempts, gave_up.exhausted),
            ("failure 3", 3, true)
        );
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        let snap = stats.snapshot();
        assert_eq!((snap.requests, snap.retries), (3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_free_and_a_failure_for_good_stops_at_once() {
        // One attempt allowed: the renewal must not use it up.
        let policy = RetryPolicy::new(1, Duration::ZERO, Duration::ZERO);
        let mut renewed = false;
        let out: Result<u32, GaveUp<&str>> = retrying(&policy, None, None, |n| {
            let first = !renewed;
            renewed = true;
            async move {
                if first {
                    Attempt::Renewed
                } else {
                    Attempt::Done(n)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 1, "the renewed attempt is still attempt 1");
        let out: Result<(), GaveUp<&str>> = retrying(
            &RetryPolicy::new(5, Duration::ZERO, Duration::ZERO),
            None,
            None,
            |_| async { Attempt::Fail("refused") },
        )
        .await;
        let gave_up = out.unwrap_err();
        assert_eq!((gave_up.attempts, gave_up.exhausted), (1, false));
    }
}
