//! The Contentful dialect of the API client: its content type, rate-limit
//! headers and error bodies.

use reqwest::Method;
use serde_json::Value;
use sluicegate_core::Error;

use super::config::{ContentfulSinkConfig, Resolved};
use crate::api::{ApiClient, ApiError, Dialect};

/// A client of one space environment.
pub(crate) fn cma_client(
    resolved: &Resolved,
    config: &ContentfulSinkConfig,
) -> Result<ApiClient, Error> {
    let (space, environment) = (&resolved.space_id, &resolved.environment_id);
    let mut base = resolved.base_url.clone();
    let path = format!(
        "{}/spaces/{space}/environments/{environment}/",
        base.path().trim_end_matches('/')
    );
    base.set_path(&path);
    ApiClient::new(
        // The CMA's default rate until the first response says otherwise.
        config.client_settings(base, resolved.token.clone(), 7),
        Dialect {
            content_type: "application/vnd.contentful.management.v1+json",
            limit_header: Some("x-contentful-ratelimit-second-limit"),
            reset_header: "x-contentful-ratelimit-reset",
            parse_error: api_error,
        },
    )
}

fn api_error(method: &Method, path: &str, status: u16, body: &[u8]) -> ApiError {
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
    ApiError::Api {
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
