//! Sending requests with retries: capped exponential backoff with full jitter,
//! `Retry-After` honoured, every attempt counted in the run's statistics.

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use sluicegate_core::{Error, Result, RunStats};
use sluicegate_http_client::Pacer;

use crate::auth::Auth;

use crate::config::RetryConfig;
use crate::error::{HttpError, is_retryable_status};

/// Makes sure rustls has a crypto provider (ring) before a client is built.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// When and how often to retry.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) max_retry_after: Duration,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        Self {
            max_attempts: c.max_attempts.max(1),
            initial: Duration::from_millis(c.initial_backoff_ms),
            max: Duration::from_millis(c.max_backoff_ms),
            max_retry_after: Duration::from_secs(c.max_retry_after_secs),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a random delay in `[0, min(max, initial * 2^(retry-1))]`.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)));
        let cap = exp.min(self.max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=cap_ms))
    }
}

/// Sends requests with the source's credentials, pacing and retries.
pub(crate) struct Requester {
    pub(crate) client: reqwest::Client,
    pub(crate) retry: RetryPolicy,
    pub(crate) pacer: Option<Arc<Pacer>>,
    pub(crate) auth: Auth,
}

impl Requester {
    /// Sends the request built by `build` until it answers 2xx, retrying
    /// 408/429/5xx and network failures; other statuses fail at once with the
    /// response body in the error. `url` is shown in messages (it holds no secret).
    /// The body of the returned response is not read yet.
    pub(crate) async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
        url: &str,
        stats: &RunStats,
    ) -> Result<reqwest::Response> {
        let mut attempt = 0;
        let mut reauthorized = false;
        loop {
            attempt += 1;
            if let Some(pacer) = &self.pacer {
                stats.add_rate_limit_wait(pacer.wait().await);
            }
            stats.add_request();
            if attempt > 1 {
                stats.add_retry();
            }
            let request = self.auth.apply(&self.client, build()).await?;
            let in_flight = stats.request_started();
            let sent = request.send().await;
            in_flight.finish();
            let (failure, retry_after) = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    stats.add_status(status);
                    if response.status().is_success() {
                        return Ok(response);
                    }
                    if status == 401 && !reauthorized && self.auth.invalidate().await {
                        // An expired OAuth token: fetch a new one and try again, once.
                        reauthorized = true;
                        attempt -= 1;
                        continue;
                    }
                    let retry_after = parse_retry_after(response.headers());
                    if status == 429 {
                        stats.add_rate_limited();
                    }
                    if let Some(pacer) = &self.pacer
                        && status == 429
                    {
                        pacer.pause(retry_after.unwrap_or(Duration::from_secs(1)));
                    }
                    let body = response.bytes().await.unwrap_or_default();
                    let failure = HttpError::status(url, status, &body);
                    if !is_retryable_status(status) {
                        return Err(Error::from(failure).with_context("attempt", attempt));
                    }
                    (failure, retry_after)
                }
                Err(source) if source.is_builder() => {
                    return Err(HttpError::Network {
                        url: url.to_owned(),
                        source,
                    }
                    .into());
                }
                Err(source) => (
                    HttpError::Network {
                        url: url.to_owned(),
                        source,
                    },
                    None,
                ),
            };
            if attempt >= self.retry.max_attempts {
                let err = Error::from(failure);
                return Err(Error::new(
                    err.kind(),
                    format!("giving up after {attempt} attempts: {err}"),
                )
                .retryable(true));
            }
            let delay = match retry_after {
                Some(wait) if wait > self.retry.max_retry_after => {
                    return Err(HttpError::RetryAfterTooLong {
                        url: url.to_owned(),
                        secs: wait.as_secs(),
                        max: self.retry.max_retry_after.as_secs(),
                    }
                    .into());
                }
                Some(wait) => wait,
                None => self.retry.backoff(attempt),
            };
            tracing::warn!(
                url,
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %failure,
                "request failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// How long the server asks to wait: `Retry-After` (seconds or an HTTP date),
/// else a rate-limit reset header (`RateLimit-Reset`, `X-RateLimit-Reset`:
/// seconds to wait, or a Unix time when the value is that large).
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let Some(value) = headers.get(RETRY_AFTER) else {
        let reset = ["ratelimit-reset", "x-ratelimit-reset"]
            .iter()
            .find_map(|name| {
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

    #[test]
    fn backoff_is_capped_full_jitter() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(60),
        };
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
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = parse_retry_after(&h).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 5;
        h.insert("x-ratelimit-reset", HeaderValue::from(at));
        let wait = parse_retry_after(&h).unwrap();
        assert!(
            wait <= Duration::from_secs(5) && wait >= Duration::from_secs(3),
            "{wait:?}"
        );
    }
}
