//! The `http` source against a real HTTP server on 127.0.0.1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use serde_json::{Value, json};
use sluicegate_adapters_http::{HttpSource, HttpSourceConfig};
use sluicegate_core::{
    Batch, BuildContext, ErrorKind, MemoryBudget, ReadRequest, Source, parse_section,
};

/// What the test server does; shared with the handler.
#[derive(Default)]
struct Behaviour {
    total: u64,
    /// Fail the page at this offset with (status, times, retry-after).
    fail: Option<(u64, u16, u32, Option<u64>)>,
    failures_left: AtomicU32,
    /// Serve invalid JSON at this offset.
    garbage_at: Option<u64>,
    /// Serve a page at this offset whose second record is invalid JSON (the
    /// array itself is well formed).
    bad_record_at: Option<u64>,
    /// Serve a page at this offset whose second record has a string that is
    /// not UTF-8 (Latin-1 text; the syntax is fine).
    not_utf8_at: Option<u64>,
    /// Cap page sizes at this many records.
    cap: Option<u64>,
    /// Omit the total from the envelope.
    hide_total: bool,
    seen_auth: Mutex<Vec<Option<String>>>,
    requests: AtomicU32,
}

async fn items(
    State(b): State<Arc<Behaviour>>,
    Query(q): Query<HashMap<String, u64>>,
    headers: HeaderMap,
) -> Response {
    b.requests.fetch_add(1, Ordering::SeqCst);
    b.seen_auth.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    let offset = q.get("skip").copied().unwrap_or(0);
    let mut limit = q.get("take").copied().unwrap_or(10);
    if let Some(cap) = b.cap {
        limit = limit.min(cap);
    }
    if let Some((at, status, _, retry_after)) = b.fail
        && at == offset
        && b.failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        let mut r = (
            StatusCode::from_u16(status).unwrap(),
            "{\"error\":\"try later\"}",
        )
            .into_response();
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
        }
        return r;
    }
    if b.garbage_at == Some(offset) {
        return (StatusCode::OK, "{\"result\": {\"rows\": [1, 2,").into_response();
    }
    if b.bad_record_at == Some(offset) {
        let body = r#"{"result": {"rows": [{"id": 10}, {"id": 011}]}, "paging": {"total": 35}}"#;
        return (StatusCode::OK, body).into_response();
    }
    if b.not_utf8_at == Some(offset) {
        let body = &b"{\"result\": {\"rows\": [{\"id\": 30}, {\"id\": 31, \"name\": \"caf\xe9\"}]}, \"paging\": {\"total\": 35}}"[..];
        return (StatusCode::OK, body).into_response();
    }
    let end = (offset + limit).min(b.total);
    // Field `late` appears only from record 25 on.
    let rows: Vec<Value> = (offset..end)
        .map(|i| {
            if i >= 25 {
                json!({"id": i, "late": format!("v{i}")})
            } else {
                json!({"id": i})
            }
        })
        .collect();
    let body = if b.hide_total {
        json!({"result": {"rows": rows}})
    } else {
        json!({"result": {"rows": rows}, "paging": {"total": b.total}})
    };
    axum::Json(body).into_response()
}

async fn serve(behaviour: Behaviour) -> (String, Arc<Behaviour>) {
    let b = Arc::new(behaviour);
    b.failures_left
        .store(b.fail.map_or(0, |f| f.2), Ordering::SeqCst);
    let app = Router::new()
        .route("/items", get(items))
        .with_state(b.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, b)
}

fn ctx() -> BuildContext {
    BuildContext::new("items", false)
        .with_template_scope(json!({"env": {"TOKEN_FOR_TEST": "s3cret"}, "config": {}}))
}

fn source(url: &str, extra: Value) -> HttpSource {
    let mut section = json!({
        "endPoint": format!("{url}/items"),
        "resultsJsonPath": "result.rows",
        "pagination": {"skipKey": "skip", "limitKey": "take", "pageSize": 10, "totalPath": "$.paging.total"},
        "retry": {"maxAttempts": 3, "initialBackoffMs": 10, "maxBackoffMs": 50},
    });
    for (k, v) in extra.as_object().unwrap() {
        section[k] = v.clone();
    }
    let config: HttpSourceConfig = parse_section(section, "source").unwrap();
    HttpSource::new(&config, &ctx()).unwrap()
}

async fn read_all(source: &HttpSource) -> (sluicegate_core::Result<Vec<Batch>>, ReadRequest) {
    let request = ReadRequest::new("items", MemoryBudget::new(8 << 20));
    let result = source.read(request.clone()).try_collect().await;
    (result, request)
}

/// Reads with records asked for as JSON text (as a DuckDB sink asks).
async fn read_all_as_text(source: &HttpSource) -> sluicegate_core::Result<Vec<Batch>> {
    let request = ReadRequest::new("items", MemoryBudget::new(8 << 20)).with_json_rows(true);
    source.read(request).try_collect().await
}

fn ids(batches: &[Batch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| b.records().iter().map(|r| r["id"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn reads_every_page_until_the_total() {
    let (url, b) = serve(Behaviour {
        total: 35,
        ..Default::default()
    })
    .await;
    let (batches, request) = read_all(&source(&url, json!({}))).await;
    let batches = batches.unwrap();
    assert_eq!(ids(&batches), (0..35).collect::<Vec<_>>());
    assert_eq!(batches.len(), 4);
    assert_eq!(b.requests.load(Ordering::SeqCst), 4);
    assert_eq!(request.stats.snapshot().requests, 4);
    assert!(batches[3].records()[0].contains_key("late"));
}

#[tokio::test]
async fn a_server_capping_page_size_is_still_read_to_the_total() {
    let (url, _) = serve(Behaviour {
        total: 35,
        cap: Some(4),
        ..Default::default()
    })
    .await;
    let (batches, _) = read_all(&source(&url, json!({}))).await;
    assert_eq!(ids(&batches.unwrap()), (0..35).collect::<Vec<_>>());
}

#[tokio::test]
async fn without_a_total_a_short_page_ends_the_read() {
    let (url, b) = serve(Behaviour {
        total: 35,
        hide_total: true,
        ..Default::default()
    })
    .await;
    let (batches, _) = read_all(&source(
        &url,
        json!({"pagination": {"skipKey": "skip", "limitKey": "take", "pageSize": 10}}),
    ))
    .await;
    assert_eq!(ids(&batches.unwrap()).len(), 35);
    assert_eq!(b.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_and_nothing_is_lost() {
    let (url, b) = serve(Behaviour {
        total: 35,
        fail: Some((20, 503, 2, Some(0))),
        ..Default::default()
    })
    .await;
    let (batches, request) = read_all(&source(&url, json!({}))).await;
    assert_eq!(ids(&batches.unwrap()), (0..35).collect::<Vec<_>>());
    let stats = request.stats.snapshot();
    assert_eq!(stats.retries, 2);
    assert_eq!(stats.statuses.get(&503), Some(&2));
    assert_eq!(b.requests.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn retries_give_up_after_max_attempts_with_the_last_status() {
    let (url, _) = serve(Behaviour {
        total: 35,
        fail: Some((10, 502, 99, None)),
        ..Default::default()
    })
    .await;
    let (result, request) = read_all(&source(&url, json!({}))).await;
    let err = result.unwrap_err();
    assert!(
        err.to_string().starts_with("giving up after 3 attempts"),
        "{err}"
    );
    assert!(err.to_string().contains("answered 502"), "{err}");
    assert_eq!(err.context_value("page"), Some("2"));
    assert_eq!(request.stats.snapshot().requests, 4);
}

#[tokio::test]
async fn a_404_fails_at_once_with_the_body() {
    let (url, b) = serve(Behaviour {
        total: 35,
        fail: Some((0, 404, 1, None)),
        ..Default::default()
    })
    .await;
    let (result, _) = read_all(&source(&url, json!({}))).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Http);
    assert!(
        err.to_string()
            .contains("answered 404: {\"error\":\"try later\"}"),
        "{err}"
    );
    assert_eq!(b.requests.load(Ordering::SeqCst), 1, "4xx is not retried");
}

#[tokio::test]
async fn invalid_json_is_a_decode_error_naming_the_page() {
    let (url, _) = serve(Behaviour {
        total: 35,
        garbage_at: Some(10),
        ..Default::default()
    })
    .await;
    let (result, _) = read_all(&source(&url, json!({}))).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_eq!(err.context_value("page"), Some("2"));
    assert!(
        err.to_string()
            .contains("the response ended in the middle of the document (truncated body?)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_selector_matching_nothing_names_the_keys_found() {
    let (url, _) = serve(Behaviour {
        total: 5,
        ..Default::default()
    })
    .await;
    let (result, _) = read_all(&source(&url, json!({"resultsJsonPath": "$.data"}))).await;
    let err = result.unwrap_err();
    assert!(
        err.to_string().contains("'$.data' matched nothing"),
        "{err}"
    );
    assert!(
        err.to_string().contains("top-level keys: result, paging"),
        "{err}"
    );
}

#[tokio::test]
async fn templated_headers_are_sent_and_never_described() {
    let (url, b) = serve(Behaviour {
        total: 5,
        ..Default::default()
    })
    .await;
    // (Bearer auth from `auth.tokenEnv` reads the process environment; the CLI
    // tests cover it. Here the header is a template over the scope.)
    let config: HttpSourceConfig = parse_section(
        json!({
            "endPoint": format!("{url}/items"),
            "resultsJsonPath": "result.rows",
            "headers": {"Authorization": "Bearer {{ env.TOKEN_FOR_TEST }}"},
        }),
        "source",
    )
    .unwrap();
    let src = HttpSource::new(&config, &ctx()).unwrap();
    let (batches, _) = read_all(&src).await;
    assert_eq!(ids(&batches.unwrap()).len(), 5);
    assert_eq!(
        b.seen_auth.lock().unwrap().last().unwrap().as_deref(),
        Some("Bearer s3cret")
    );
    assert!(!src.describe().contains("s3cret"));
}

/// One retry budget per request: a server that closes every connection at
/// once is tried `retry.maxAttempts` times in all, not that many times per
/// page-level retry; a server that never answers fails after as many
/// time-outs, and the error says it was a time-out.
#[tokio::test]
async fn one_retry_budget_per_request_and_a_time_out_says_so() {
    use std::sync::atomic::AtomicU64;
    for silent in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if silent {
                    held.push(socket);
                }
            }
        });
        let src = source(&url, json!({"timeoutSecs": 1}));
        let started = std::time::Instant::now();
        let (result, _) = read_all(&src).await;
        let err = result.err().unwrap().to_string();
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "silent {silent}: {err}");
        assert!(err.contains("giving up after 3 attempts"), "{err}");
        if silent {
            assert!(err.contains("timed out"), "a time-out says so: {err}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn records_come_as_json_text_when_asked_and_equal_the_decoded_ones() {
    let (url, _) = serve(Behaviour {
        total: 35,
        ..Default::default()
    })
    .await;
    let source = source(&url, json!({}));
    let (decoded, _) = read_all(&source).await;
    let mut as_text = read_all_as_text(&source).await.unwrap();
    assert_eq!(as_text.len(), 4);
    for batch in &mut as_text {
        assert!(batch.json_rows().is_some(), "records handed on as text");
        assert!(batch.records().is_empty());
        batch.decode_records().unwrap();
    }
    let decoded = decoded.unwrap();
    let records = |batches: &[Batch]| -> Vec<Vec<_>> {
        batches.iter().map(|b| b.records().to_vec()).collect()
    };
    let positions =
        |batches: &[Batch]| -> Vec<_> { batches.iter().map(|b| b.position().cloned()).collect() };
    assert_eq!(records(&as_text), records(&decoded));
    assert_eq!(positions(&as_text), positions(&decoded));
}

#[tokio::test]
async fn as_json_text_a_broken_page_or_record_is_a_decode_error_naming_the_page() {
    let broken_page = Behaviour {
        total: 35,
        garbage_at: Some(10),
        ..Default::default()
    };
    let broken_record = Behaviour {
        total: 35,
        bad_record_at: Some(20),
        ..Default::default()
    };
    let not_utf8 = Behaviour {
        total: 35,
        not_utf8_at: Some(30),
        ..Default::default()
    };
    for (behaviour, page, says) in [
        (broken_page, "2", "truncated body"),
        (broken_record, "3", "a record is not valid JSON"),
        (
            not_utf8,
            "4",
            "a record is not valid JSON: its text is not UTF-8 (byte 24",
        ),
    ] {
        let url = serve(behaviour).await.0;
        let err = read_all_as_text(&source(&url, json!({})))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert_eq!(err.context_value("page"), Some(page));
        assert!(err.to_string().contains(says), "{err}");
        // Decoded, the same page fails too.
        if page != "2" {
            let (result, _) = read_all(&source(&url, json!({}))).await;
            let err = result.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode);
            assert_eq!(err.context_value("page"), Some(page));
            assert!(
                err.to_string().contains("a record is not valid JSON"),
                "{err}"
            );
        }
    }
}
