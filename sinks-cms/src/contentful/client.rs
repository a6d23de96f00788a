//! Calls to the Contentful Management API: paced to the rate limit, bounded in
//! concurrency, retried on 429 (after `X-Contentful-RateLimit-Reset`), 5xx and
//! network failures, with the API's error bodies turned into messages.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;
use sluicegate_core::{Error, ErrorKind, Pacer, RunStats, Secret};
use tokio::sync::Semaphore;

use super::config::{ContentfulSinkConfig, Resolved};

/// A failed call: the API's status and error body, or a network failure.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CmaError {
    #[error("{method} {path} answered {status} {id}: {message}{details}")]
    Api {
        method: String,
        path: String,
        status: u16,
        id: String,
        message: String,
        details: String,
    },
    #[error("{method} {path} failed: {message}")]
    Network {
        method: String,
        path: String,
        message: String,
    },
}

impl CmaError {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            CmaError::Api { status, .. } => Some(*status),
            CmaError::Network { .. } => None,
        }
    }
}

impl From<CmaError> for Error {
    fn from(err: CmaError) -> Self {
        let kind = match err.status() {
            Some(401 | 403) => ErrorKind::Auth,
            Some(_) => ErrorKind::Http,
            None => ErrorKind::Network,
        };
        let retryable = matches!(err.status(), None | Some(429 | 500..=599));
        Error::new(kind, err.to_string()).retryable(retryable)
    }
}

/// A client of one space environment.
pub(crate) struct CmaClient {
    http: reqwest::Client,
    base: Url,
    token: Secret,
    pacer: Pacer,
    in_flight: Semaphore,
    max_attempts: u32,
    stats: Mutex<Option<Arc<RunStats>>>,
}

/// An optional request header.
pub(crate) type Headers = Vec<(&'static str, String)>;

impl CmaClient {
    pub(crate) fn new(resolved: &Resolved, config: &ContentfulSinkConfig) -> Result<Self, Error> {
        let (space, environment) = (&resolved.space_id, &resolved.environment_id);
        let timeout = Duration::from_secs(config.timeout_secs);
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut base = resolved.base_url.clone();
        let path = format!(
            "{}/spaces/{space}/environments/{environment}/",
            base.path().trim_end_matches('/')
        );
        base.set_path(&path);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("sluicegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::config("cannot build the HTTP client").with_source(e))?;
        Ok(Self {
            http,
            base,
            token: resolved.token.clone(),
            pacer: Pacer::new(config.rate_limit.unwrap_or(7), config.rate_limit.is_some()),
            in_flight: Semaphore::new(config.max_concurrency.max(1)),
            max_attempts: config.max_attempts.max(1),
            stats: Mutex::new(None),
        })
    }

    /// Counts requests into this run's statistics from now on.
    pub(crate) fn count_into(&self, stats: Arc<RunStats>) {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
    }

    fn stats(&self) -> Option<Arc<RunStats>> {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The URL of a path relative to the environment (`entries?...`).
    pub(crate) fn url(&self, relative: &str) -> Result<Url, Error> {
        self.base
            .join(relative)
            .map_err(|e| Error::config(format!("bad request path {relative}: {e}")))
    }

    /// Sends a request, retrying what may succeed later; returns the JSON body
    /// (`Null` for 204).
    pub(crate) async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        headers: Headers,
    ) -> Result<Value, CmaError> {
        let path = url.path().to_owned();
        let shown_path = match url.query() {
            Some(q) if q.len() > 120 => format!("{path}?{}…", &q[..q.floor_char_boundary(120)]),
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let _permit = self.in_flight.acquire().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pacer.wait().await;
            let stats = self.stats();
            if let Some(s) = &stats {
                s.add_request();
                if attempt > 1 {
                    s.add_retry();
                }
            }
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.token.expose())
                .header(
                    "content-type",
                    "application/vnd.contentful.management.v1+json",
                );
            for (name, value) in &headers {
                request = request.header(*name, value);
            }
            if let Some(body) = body {
                request = request.body(body.to_string());
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if let Some(s) = &stats {
                        s.add_status(status);
                    }
                    let headers = response.headers().clone();
                    if let Some(limit) = header_u64(&headers, "x-contentful-ratelimit-second-limit")
                    {
                        self.pacer.learn(u32::try_from(limit).unwrap_or(u32::MAX));
                    }
                    let bytes = response.bytes().await;
                    match bytes {
                        Ok(bytes) if (200..300).contains(&status) => {
                            if bytes.is_empty() {
                                return Ok(Value::Null);
                            }
                            return serde_json::from_slice(&bytes).map_err(|e| CmaError::Network {
                                method: method.to_string(),
                                path: shown_path.clone(),
                                message: format!("the response is not JSON: {e}"),
                            });
                        }
                        Ok(bytes) => {
                            let err = api_error(&method, &shown_path, status, &bytes);
                            if status == 429 {
                                let reset = header_u64(&headers, "x-contentful-ratelimit-reset")
                                    .unwrap_or(1)
                                    .max(1);
                                self.pacer.pause(Duration::from_secs(reset));
                                tracing::warn!(path = %shown_path, reset, "rate limited; pausing");
                                (err, None)
                            } else if status >= 500 {
                                (err, Some(backoff(attempt)))
                            } else {
                                return Err(err);
                            }
                        }
                        Err(e) => (
                            CmaError::Network {
                                method: method.to_string(),
                                path: shown_path.clone(),
                                message: e.to_string(),
                            },
                            Some(backoff(attempt)),
                        ),
                    }
                }
                Err(e) => (
                    CmaError::Network {
                        method: method.to_string(),
                        path: shown_path.clone(),
                        message: e.to_string(),
                    },
                    Some(backoff(attempt)),
                ),
            };
            let (err, delay) = failure;
            if attempt >= self.max_attempts {
                return Err(err);
            }
            if let Some(delay) = delay {
                tracing::warn!(error = %err, attempt, "request failed, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// GET a JSON body.
    pub(crate) async fn get(&self, relative: &str) -> Result<Value, Error> {
        let url = self.url(relative)?;
        Ok(self.call(Method::GET, url, None, Vec::new()).await?)
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Capped full-jitter backoff: up to 250 ms × 2^(attempt-1), at most 10 s.
fn backoff(attempt: u32) -> Duration {
    let cap = 250u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(10_000);
    Duration::from_millis(fastrand::u64(0..=cap))
}

fn api_error(method: &Method, path: &str, status: u16, body: &[u8]) -> CmaError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let id = parsed["sys"]["id"].as_str().unwrap_or("Error").to_owned();
    let message = parsed["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let details = match parsed["details"]["errors"].as_array() {
        Some(errors) if !errors.is_empty() => {
            let parts: Vec<String> = errors
                .iter()
                .take(5)
                .map(|e| {
                    let path: Vec<String> = e["path"]
                        .as_array()
                        .map(|p| {
                            p.iter()
                                .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    format!(
                        "{}: {}",
                        path.join("."),
                        e["details"]
                            .as_str()
                            .unwrap_or(e["name"].as_str().unwrap_or(""))
                    )
                })
                .collect();
            format!(" ({})", parts.join("; "))
        }
        _ => String::new(),
    };
    CmaError::Api {
        method: method.to_string(),
        path: path.to_owned(),
        status,
        id,
        message,
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_the_message_and_validation_details() {
        let body = br#"{"sys":{"type":"Error","id":"ValidationFailed"},"message":"Validation error","details":{"errors":[{"name":"size","path":["fields","name","en-US"],"details":"Symbol is longer than 256 characters"}]}}"#;
        let err = api_error(&Method::PUT, "/entries/x", 422, body);
        assert_eq!(
            err.to_string(),
            "PUT /entries/x answered 422 ValidationFailed: Validation error (fields.name.en-US: Symbol is longer than 256 characters)"
        );
    }
}
