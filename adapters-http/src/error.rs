//! Errors of the HTTP source, converted into Sluicegate's error type.

use sluicegate_core::{Error, ErrorKind};

/// Largest part of an error response body quoted in a message.
const BODY_SNIPPET: usize = 500;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("request to {url} failed")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} asked to retry after {secs}s, more than retry.maxRetryAfterSecs ({max}s)")]
    RetryAfterTooLong { url: String, secs: u64, max: u64 },
    #[error(
        "resultsJsonPath '{path}' matched nothing in the response of {url} (top-level keys: {keys})"
    )]
    NoRecords {
        path: String,
        url: String,
        keys: String,
    },
}

impl HttpError {
    pub(crate) fn status(url: &str, status: u16, body: &[u8]) -> Self {
        HttpError::Status {
            url: url.to_owned(),
            status,
            body: snippet(body),
        }
    }
}

/// The start of a body, as lossy UTF-8 on one line.
pub(crate) fn snippet(body: &[u8]) -> String {
    let cut = &body[..body.len().min(BODY_SNIPPET)];
    let mut text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > BODY_SNIPPET {
        text.push('…');
    }
    if text.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    }
}

impl From<HttpError> for Error {
    fn from(err: HttpError) -> Self {
        let (kind, retryable) = match &err {
            HttpError::Network { .. } => (ErrorKind::Network, true),
            HttpError::Status {
                status: 401 | 403, ..
            } => (ErrorKind::Auth, false),
            HttpError::Status { status, .. } => (ErrorKind::Http, is_retryable_status(*status)),
            HttpError::RetryAfterTooLong { .. } => (ErrorKind::Http, true),
            HttpError::NoRecords { .. } => (ErrorKind::Decode, false),
        };
        let hint = match &err {
            HttpError::Status {
                status: 401 | 403, ..
            } => "; check the credentials (auth.tokenEnv) and their permissions",
            _ => "",
        };
        let message = format!("{err}{hint}");
        let error = Error::new(kind, message).retryable(retryable);
        match err {
            // reqwest's own text names the URL as sent, with query
            // credentials (`api_key` in the query): the message names the
            // request's URL without them instead.
            HttpError::Network { source, .. } => error.with_source(source.without_url()),
            _ => error,
        }
    }
}

/// 408, 429 and 5xx other than 501/505 may succeed when retried.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && !matches!(status, 501 | 505)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 422, 501, 505] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn status_errors_quote_the_body_on_one_line() {
        let err: Error =
            HttpError::status("http://x/a", 404, b"{\"error\":\n\"no such resource\"}").into();
        assert_eq!(err.kind(), ErrorKind::Http);
        assert_eq!(
            err.to_string(),
            "http://x/a answered 404: {\"error\": \"no such resource\"}"
        );
        let err: Error = HttpError::status("http://x/a", 401, b"").into();
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert!(
            err.to_string()
                .contains("(empty body); check the credentials")
        );
    }
}
