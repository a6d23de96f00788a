//! The fault suite of the `http` source: the example shop API on 127.0.0.1
//! behind a fault-injecting proxy (`sluicegate_examples::faults`). Each fault
//! either is recovered (every record read exactly once, in order) or fails the
//! read with a clear error naming the page — after emitting only whole pages
//! before it, so a checkpointed run resumes without losing or repeating records.
//! The table in `docs/reliability.md` lists the same cases.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sluicegate_adapters_http::{HttpSource, HttpSourceConfig};
use sluicegate_core::{BuildContext, MemoryBudget, ReadRequest, Source, parse_section};
use sluicegate_examples::faults::{FaultKind, FaultProxy, FaultRule};
use sluicegate_examples::shop::{ShopConfig, ShopServer};

/// Customers served (one per five orders), in pages of `PAGE`.
const RECORDS: u64 = 1000;
const PAGE: u64 = 100;

struct Run {
    /// Customer ids read, in order.
    ids: Vec<u64>,
    /// The error that ended the read, if any.
    error: Option<String>,
    retries: u64,
    elapsed: Duration,
    injected: u64,
}

async fn read_through(rules: Vec<FaultRule>, extra: serde_json::Value) -> Run {
    let shop = ShopServer::start(
        ShopConfig {
            orders: RECORDS * 5,
            ..ShopConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let proxy = FaultProxy::start(shop.addr(), rules).await.unwrap();
    let mut section = json!({
        "endPoint": format!("{}/api/customers", proxy.url()),
        "resultsJsonPath": "$.data",
        "pagination": {"skipKey": "offset", "limitKey": "limit", "pageSize": PAGE, "totalPath": "$.meta.total"},
        "retry": {"maxAttempts": 4, "initialBackoffMs": 10, "maxBackoffMs": 50},
        "timeoutSecs": 1,
    });
    for (k, v) in extra.as_object().unwrap() {
        section[k] = v.clone();
    }
    let config: HttpSourceConfig = parse_section(section, "source").unwrap();
    let source = HttpSource::new(&config, &BuildContext::new("customers", false)).unwrap();
    let request = ReadRequest::new("customers", MemoryBudget::new(8 << 20));
    let started = Instant::now();
    let mut stream = source.read(request.clone());
    let (mut ids, mut error) = (Vec::new(), None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(batch) => ids.extend(batch.records().iter().map(|r| r["id"].as_u64().unwrap())),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Run {
        ids,
        error,
        retries: request.stats.snapshot().retries,
        elapsed: started.elapsed(),
        injected: proxy.injected(),
    }
}

fn all_ids() -> Vec<u64> {
    (1..=RECORDS).collect()
}

/// The third page's request.
const THIRD_PAGE: &str = "offset=200&";

fn status(code: u16, headers: &[(&str, &str)]) -> FaultKind {
    FaultKind::Status(
        code,
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

async fn assert_recovered(kind: FaultKind, times: u32) -> Run {
    let run = read_through(
        vec![FaultRule::new(THIRD_PAGE, kind.clone(), times)],
        json!({}),
    )
    .await;
    assert_eq!(run.error, None, "{kind:?}");
    assert_eq!(run.ids, all_ids(), "every record once, in order: {kind:?}");
    assert_eq!(run.injected, u64::from(times), "{kind:?}");
    assert!(
        run.retries >= u64::from(times),
        "{kind:?}: {} retries",
        run.retries
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_waits_that_long_then_reads_everything() {
    let run = assert_recovered(status(429, &[("retry-after", "1")]), 1).await;
    assert!(run.elapsed >= Duration::from_secs(1), "{:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_only_a_rate_limit_reset_header_waits_for_the_reset() {
    let run = assert_recovered(status(429, &[("x-ratelimit-reset", "1")]), 1).await;
    assert!(run.elapsed >= Duration::from_secs(1), "{:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_500_502_503_504_are_retried() {
    for code in [500, 502, 503, 504] {
        assert_recovered(status(code, &[]), 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_timeout_is_abandoned_and_retried() {
    let run = assert_recovered(FaultKind::Slow(Duration::from_secs(3)), 1).await;
    assert!(
        run.elapsed < Duration::from_secs(3),
        "the slow answer was not waited for: {:?}",
        run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_is_retried() {
    assert_recovered(FaultKind::Reset, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_fetched_again() {
    assert_recovered(FaultKind::Truncate, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_that_never_succeed_fail_with_the_last_status_after_max_attempts() {
    let run = read_through(
        vec![FaultRule::new(THIRD_PAGE, status(503, &[]), 10)],
        json!({}),
    )
    .await;
    let error = run.error.expect("the read fails");
    assert!(
        error.contains("giving up after 4 attempts") && error.contains("503"),
        "{error}"
    );
    assert!(error.contains("page=3"), "{error}");
    assert_eq!(
        run.ids,
        (1..=200).collect::<Vec<_>>(),
        "the pages before it, once"
    );
}

async fn assert_fails_at_third_page(kind: FaultKind, expected: &[&str]) {
    let run = read_through(vec![FaultRule::new(THIRD_PAGE, kind.clone(), 1)], json!({})).await;
    let error = run
        .error
        .unwrap_or_else(|| panic!("{kind:?} must fail the read"));
    for part in expected {
        assert!(error.contains(part), "{kind:?}: `{part}` not in: {error}");
    }
    assert!(error.contains("page=3"), "{error}");
    assert_eq!(
        run.ids,
        (1..=200).collect::<Vec<_>>(),
        "whole pages before it, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_fails_naming_the_page_and_what_came() {
    assert_fails_at_third_page(
        FaultKind::MalformedJson,
        &["offset=200", "application/json", "{\"data\": [{\"id\": 1"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_page_served_as_200_fails_naming_the_content_type() {
    assert_fails_at_third_page(FaultKind::Html, &["text/html", "<html><body><h1>Down"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_page_before_the_total_fails_instead_of_ending_early() {
    assert_fails_at_third_page(
        FaultKind::Body(json!({"data": [], "meta": {"total": RECORDS}}).to_string()),
        &["has no records, but the API's total is 1000 and only 200 were read"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_served_again_under_the_next_offset_is_a_pagination_loop() {
    // The second page's records, served again for the third page's request.
    let shop = ShopServer::start(
        ShopConfig {
            orders: RECORDS * 5,
            ..ShopConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let second = reqwest::get(format!("{}/api/customers?offset=100&limit=100", shop.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_fails_at_third_page(
        FaultKind::Body(second),
        &["pagination loop: page 3", "same records as page 2"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_cannot_be_verified_is_refused() {
    // TLS verification is always on: a self-signed server is not trusted.
    let addr = sluicegate_examples::tls::serve_self_signed(r#"{"data":[{"id":1}]}"#)
        .await
        .unwrap();
    let section = json!({
        "endPoint": format!("https://127.0.0.1:{}/api/customers", addr.port()),
        "resultsJsonPath": "$.data",
        "pagination": {"type": "single"},
        "retry": {"maxAttempts": 1},
    });
    let config: HttpSourceConfig = parse_section(section, "source").unwrap();
    let source = HttpSource::new(&config, &BuildContext::new("customers", false)).unwrap();
    let request = ReadRequest::new("customers", MemoryBudget::new(8 << 20));
    let mut stream = source.read(request);
    let error = match stream.next().await {
        Some(Err(e)) => e.to_string(),
        other => panic!("a self-signed server must be refused, got {other:?}"),
    };
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}
