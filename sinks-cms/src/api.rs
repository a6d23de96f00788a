//! Calls to a content platform's API: paced to the rate limit (fixed, or learned
//! from a response header), bounded in concurrency, retried on 429 (after the
//! reset header), 5xx and network failures, with the API's error bodies turned
//! into messages by the platform's [`Dialect`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;
use sluicegate_core::{BuildContext, Error, ErrorKind, RunStats, Secret, field_error};
use sluicegate_http_client::{Attempt, Pacer, RetryPolicy, retry_after, retrying};
use tokio::sync::Semaphore;

/// A failed call: the API's status and error body, or a network failure.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ApiError {
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

impl ApiError {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            ApiError::Api { status, .. } => Some(*status),
            ApiError::Network { .. } => None,
        }
    }
}

impl From<ApiError> for Error {
    fn from(err: ApiError) -> Self {
        let kind = match err.status() {
            Some(401 | 403) => ErrorKind::Auth,
            Some(_) => ErrorKind::Http,
            None => ErrorKind::Network,
        };
        let retryable = matches!(err.status(), None | Some(429 | 500..=599));
        Error::new(kind, err.to_string()).retryable(retryable)
    }
}

/// Reads an access token from `token_file` (relative to the configuration
/// file) or else from the environment variable `token_env`.
pub(crate) fn read_token(
    token_file: Option<&str>,
    token_env: &str,
    ctx: &BuildContext,
) -> Result<Secret, Error> {
    match token_file {
        Some(file) => Secret::from_file(&ctx.base_dir.join(file))
            .map_err(|e| field_error("tokenFile", e.message())),
        None => Secret::from_env(token_env).map_err(|e| field_error("tokenEnv", e.message())),
    }
}

/// Opens a stream's writer on a content platform: the client counts its
/// requests on the stream's counters, and the upsert action drives `keyed`.
pub(crate) fn open_upsert<K: sluicegate_core::KeyedSink + 'static>(
    client: &ApiClient,
    keyed: K,
    target: sluicegate_core::StreamTarget,
    options: sluicegate_upsert::UpsertOptions,
) -> Result<Box<dyn sluicegate_core::SinkWriter>, Error> {
    client.count_into(target.stats.clone());
    Ok(Box::new(sluicegate_upsert::UpsertWriter::new(
        Arc::new(keyed),
        target,
        options,
    )?))
}

/// What differs between the platforms' APIs.
pub(crate) struct Dialect {
    /// The request body's content type.
    pub(crate) content_type: &'static str,
    /// A response header announcing the requests-per-second limit, learned by the pacer.
    pub(crate) limit_header: Option<&'static str>,
    /// A response header of a 429 saying how many seconds to wait.
    pub(crate) reset_header: &'static str,
    /// Turns an error response into an [`ApiError::Api`].
    pub(crate) parse_error: fn(&Method, &str, u16, &[u8]) -> ApiError,
}

/// How a client connects and paces itself.
pub(crate) struct Settings {
    /// The base URL that request paths are relative to (ends with `/`).
    pub(crate) base: Url,
    pub(crate) token: Secret,
    /// Requests per second: fixed, or `None` to start at `default_rate` and learn.
    pub(crate) rate_limit: Option<u32>,
    pub(crate) default_rate: u32,
    pub(crate) max_concurrency: usize,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Duration,
    /// How many processes share the platform's rate limit (the shards of a
    /// job): each paces at its part.
    pub(crate) rate_share: u32,
}

/// A client of one platform API: paced, bounded in concurrency, retried.
pub(crate) struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Secret,
    dialect: Dialect,
    pacer: Pacer,
    in_flight: Semaphore,
    retry: RetryPolicy,
    stats: Mutex<Option<Arc<RunStats>>>,
}

/// What every attempt of one call shares.
struct Call<'a> {
    method: &'a Method,
    shown_path: &'a str,
    stats: Option<&'a RunStats>,
}

/// An answer read whole: its status, headers and body.
#[derive(Clone, Copy)]
struct Answer<'a> {
    status: u16,
    headers: &'a reqwest::header::HeaderMap,
    bytes: &'a [u8],
}

impl Call<'_> {
    /// A network error of this call.
    fn network(&self, message: String) -> ApiError {
        ApiError::Network {
            method: self.method.to_string(),
            path: self.shown_path.to_owned(),
            message,
        }
    }
}

/// An optional request header.
pub(crate) type Headers = Vec<(&'static str, String)>;

impl ApiClient {
    pub(crate) fn new(settings: Settings, dialect: Dialect) -> Result<Self, Error> {
        let http = sluicegate_http_client::client(settings.timeout, None)?;
        Ok(Self {
            http,
            base: settings.base,
            token: settings.token,
            dialect,
            pacer: Pacer::new(
                settings.rate_limit.unwrap_or(settings.default_rate),
                settings.rate_limit.is_some(),
            )
            .shared_by(settings.rate_share),
            in_flight: Semaphore::new(settings.max_concurrency.max(1)),
            // Up to 250 ms × 2^(retry-1) between attempts, at most 10 s.
            retry: RetryPolicy::new(
                settings.max_attempts,
                Duration::from_millis(250),
                Duration::from_secs(10),
            ),
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

    /// The URL of a path relative to the base (`entries?...`).
    pub(crate) fn url(&self, relative: &str) -> Result<Url, Error> {
        self.base
            .join(relative)
            .map_err(|e| Error::config(format!("bad request path {relative}: {e}")))
    }

    /// Sends a request, retrying what may succeed later; returns the JSON body
    /// (`Null` for 204).
    ///
    /// Reads and versioned writes (GET, PUT, PATCH, DELETE) are asked again after
    /// a 429, a 5xx or a network failure. A POST (a bulk action, a create without
    /// an id) is not idempotent: it is sent again only when the server surely did
    /// not act on it (a 429, or a connection that was never made); after any
    /// other failure the caller finds out what happened (see the sinks).
    pub(crate) async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        headers: Headers,
    ) -> Result<Value, ApiError> {
        let path = url.path().to_owned();
        let shown_path = match url.query() {
            Some(q) if q.len() > 120 => format!("{path}?{}…", &q[..q.floor_char_boundary(120)]),
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let _permit = self.in_flight.acquire().await;
        let stats = self.stats();
        let stats = stats.as_deref();
        let call = Call {
            method: &method,
            shown_path: &shown_path,
            stats,
        };
        retrying(&self.retry, Some(&self.pacer), stats, |attempt| {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.token.expose())
                .header("content-type", self.dialect.content_type);
            for (name, value) in &headers {
                request = request.header(*name, value);
            }
            if let Some(body) = body {
                request = request.body(body.to_string());
            }
            self.attempt(request, &call, attempt)
        })
        .await
        .map_err(|gave_up| gave_up.error)
    }

    /// One attempt of a call: what its answer (or its failure) means.
    async fn attempt(
        &self,
        request: reqwest::RequestBuilder,
        call: &Call<'_>,
        attempt: u32,
    ) -> Attempt<Value, ApiError> {
        let Call { method, stats, .. } = *call;
        let repeatable = *method != Method::POST;
        let network = |message: String| call.network(message);
        let in_flight = stats.map(RunStats::request_started);
        let sent = request.send().await;
        drop(in_flight);
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let never_sent = e.is_connect();
                let err = network(e.to_string());
                if !repeatable && !never_sent {
                    return Attempt::Fail(err);
                }
                return Attempt::Again {
                    error: err,
                    wait: self.retry.backoff(attempt),
                };
            }
        };
        let status = response.status().as_u16();
        if let Some(s) = stats {
            s.add_status(status);
        }
        let headers = response.headers().clone();
        if let Some(limit) = self
            .dialect
            .limit_header
            .and_then(|name| header_u64(&headers, name))
        {
            self.pacer.learn(u32::try_from(limit).unwrap_or(u32::MAX));
        }
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                let err = network(format!("the answer broke off: {e}"));
                if !repeatable {
                    return Attempt::Fail(err);
                }
                return Attempt::Again {
                    error: err,
                    wait: self.retry.backoff(attempt),
                };
            }
        };
        let answer = Answer {
            status,
            headers: &headers,
            bytes: &bytes,
        };
        if (200..300).contains(&status) {
            self.answered_ok(call, &answer, attempt)
        } else {
            self.answered_error(call, &answer, attempt)
        }
    }

    /// A 2xx answer: its JSON body (`null` when empty). A body that is not
    /// JSON is asked for again where that is safe (reads, and versioned writes).
    fn answered_ok(
        &self,
        call: &Call<'_>,
        answer: &Answer<'_>,
        attempt: u32,
    ) -> Attempt<Value, ApiError> {
        let bytes = answer.bytes;
        if bytes.is_empty() {
            return Attempt::Done(Value::Null);
        }
        match serde_json::from_slice(bytes) {
            Ok(value) => Attempt::Done(value),
            Err(e) => {
                let served = answer
                    .headers
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type");
                let start: String = String::from_utf8_lossy(bytes)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(60)
                    .collect();
                let err = call.network(format!(
                    "answered {} but the body is not JSON ({e}; served as {served}, starting `{start}`)",
                    answer.status
                ));
                // A broken gateway or proxy: ask again where asking again is
                // safe.
                if *call.method != Method::GET && *call.method != Method::PUT {
                    return Attempt::Fail(err);
                }
                Attempt::Again {
                    error: err,
                    wait: self.retry.backoff(attempt),
                }
            }
        }
    }

    /// An error answer: 429 pauses every caller for the reset and asks again,
    /// 5xx asks again when the request is repeatable, anything else fails.
    fn answered_error(
        &self,
        call: &Call<'_>,
        answer: &Answer<'_>,
        attempt: u32,
    ) -> Attempt<Value, ApiError> {
        let Call {
            method,
            shown_path,
            stats,
        } = *call;
        let Answer {
            status,
            headers,
            bytes,
        } = *answer;
        let err = (self.dialect.parse_error)(method, shown_path, status, bytes);
        if status == 429 {
            let reset = retry_after(headers, &[self.dialect.reset_header])
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_secs(1));
            self.pacer.pause(reset);
            if let Some(s) = stats {
                s.add_rate_limited();
            }
            tracing::warn!(path = %shown_path, reset_secs = reset.as_secs(), "rate limited; pausing");
            // The pacer holds every caller back for the reset.
            Attempt::Again {
                error: err,
                wait: Duration::ZERO,
            }
        } else if status >= 500 && *method != Method::POST {
            Attempt::Again {
                error: err,
                wait: self.retry.backoff(attempt),
            }
        } else {
            Attempt::Fail(err)
        }
    }

    /// The client's retry policy (attempts per request, waits between them).
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
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
