#![doc = include_str!("../README.md")]

mod pace;
mod retry;

use std::time::Duration;

use sluicegate_core::{Error, Result};

pub use pace::Pacer;

/// RFC 3986's unreserved characters; everything else is percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `value` for a URL path segment or a query value: RFC 3986's
/// unreserved characters stay, every other byte of its UTF-8 becomes `%XX`.
pub fn encode_component(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, UNRESERVED).to_string()
}
pub use retry::{Attempt, GaveUp, RetryPolicy, retry_after, retrying};

/// A `reqwest` client for Sluicegate: TLS through rustls with the ring
/// provider (installed once per process), Sluicegate's user agent, and these
/// timeouts for a whole request and for connecting.
pub fn client(timeout: Duration, connect_timeout: Option<Duration>) -> Result<reqwest::Client> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("sluicegate/", env!("CARGO_PKG_VERSION")));
    if let Some(connect) = connect_timeout {
        builder = builder.connect_timeout(connect);
    }
    builder
        .build()
        .map_err(|e| Error::config("cannot build the HTTP client").with_source(e))
}
