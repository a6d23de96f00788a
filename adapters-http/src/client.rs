//! Sending requests through the shared retry loop (`sluicegate-http-client`):
//! capped exponential backoff with full jitter, `Retry-After` honoured, every
//! attempt counted in the run's statistics, an expired OAuth token renewed once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluicegate_core::{Error, Result, RunStats};
use sluicegate_http_client::{Attempt, Pacer, retry_after, retrying};

use crate::auth::Auth;

use crate::config::RetryConfig;
use crate::error::{HttpError, is_retryable_status};

/// The rate-limit reset headers read when a response has no `Retry-After`.
const RESET_HEADERS: [&str; 2] = ["ratelimit-reset", "x-ratelimit-reset"];

/// When and how often to retry: the shared policy, and the longest
/// `Retry-After` the source accepts.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub(crate) policy: sluicegate_http_client::RetryPolicy,
    pub(crate) max_retry_after: Duration,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        Self {
            policy: sluicegate_http_client::RetryPolicy::new(
                c.max_attempts,
                Duration::from_millis(c.initial_backoff_ms),
                Duration::from_millis(c.max_backoff_ms),
            ),
            max_retry_after: Duration::from_secs(c.max_retry_after_secs),
        }
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
        // An expired token is renewed once per request.
        let renewed = AtomicBool::new(false);
        let renewed = &renewed;
        let sent = retrying(
            &self.retry.policy,
            self.pacer.as_deref(),
            Some(stats),
            |attempt| {
                let request = self.auth.apply(&self.client, build());
                async move {
                    let request = match request.await {
                        Ok(request) => request,
                        Err(e) => return Attempt::Fail(e),
                    };
                    let in_flight = stats.request_started();
                    let sent = request.send().await;
                    in_flight.finish();
                    match sent {
                        Ok(response) => self.answered(response, url, attempt, stats, renewed).await,
                        Err(source) if source.is_builder() => Attempt::Fail(
                            HttpError::Network {
                                url: url.to_owned(),
                                source,
                            }
                            .into(),
                        ),
                        Err(source) => Attempt::Again {
                            error: HttpError::Network {
                                url: url.to_owned(),
                                source,
                            }
                            .into(),
                            wait: self.retry.policy.backoff(attempt),
                        },
                    }
                }
            },
        )
        .await;
        sent.map_err(|gave_up| {
            if gave_up.exhausted {
                Error::new(
                    gave_up.error.kind(),
                    format!(
                        "giving up after {} attempts: {}",
                        gave_up.attempts, gave_up.error
                    ),
                )
                .retryable(true)
            } else {
                gave_up.error
            }
        })
    }

    /// What an answer means: success, a retry (after the server's
    /// `Retry-After` or a backoff), a renewed token, or a failure for good.
    async fn answered(
        &self,
        response: reqwest::Response,
        url: &str,
        attempt: u32,
        stats: &RunStats,
        renewed: &AtomicBool,
    ) -> Attempt<reqwest::Response, Error> {
        let status = response.status().as_u16();
        stats.add_status(status);
        if response.status().is_success() {
            return Attempt::Done(response);
        }
        if status == 401 && !renewed.load(Ordering::Relaxed) && self.auth.invalidate().await {
            // An expired OAuth token: fetch a new one and try again, once.
            renewed.store(true, Ordering::Relaxed);
            return Attempt::Renewed;
        }
        let wait = retry_after(response.headers(), &RESET_HEADERS);
        if status == 429 {
            stats.add_rate_limited();
            if let Some(pacer) = &self.pacer {
                pacer.pause(wait.unwrap_or(Duration::from_secs(1)));
            }
        }
        let body = response.bytes().await.unwrap_or_default();
        let failure = HttpError::status(url, status, &body);
        if !is_retryable_status(status) {
            return Attempt::Fail(Error::from(failure).with_context("attempt", attempt));
        }
        match wait {
            Some(wait) if wait > self.retry.max_retry_after => Attempt::Fail(
                HttpError::RetryAfterTooLong {
                    url: url.to_owned(),
                    secs: wait.as_secs(),
                    max: self.retry.max_retry_after.as_secs(),
                }
                .into(),
            ),
            Some(wait) => Attempt::Again {
                error: failure.into(),
                wait,
            },
            None => Attempt::Again {
                error: failure.into(),
                wait: self.retry.policy.backoff(attempt),
            },
        }
    }
}
