//! The fault suite of the `contentful` sink: the CMA emulator on 127.0.0.1
//! behind a fault-injecting proxy (`sluicegate_examples::faults`). Every fault is
//! recovered — the space ends holding each record exactly once, published — or
//! is reported per record with the API's answer and fixed by the next run. The
//! table in `docs/reliability.md` lists the same cases.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sluicegate_core::{
    Batch, BatchAck, BuildContext, MemoryBudget, Record, Rejected, RunObserver, Sink, StreamTarget,
    into_record, parse_section,
};
use sluicegate_examples::cma::{CmaConfig, CmaServer};
use sluicegate_examples::faults::{FaultKind, FaultProxy, FaultRule};
use sluicegate_sinks_cms::{ContentfulSink, ContentfulSinkConfig};

const TOKEN: &str = "fault-token-123";
const RECORDS: u64 = 60;

#[derive(Default)]
struct Collect(Mutex<Vec<Rejected>>);

impl RunObserver for Collect {
    fn rejected(&self, _sync_key: &str, rejected: Rejected) {
        self.0.lock().unwrap().push(rejected);
    }
}

async fn emulator() -> CmaServer {
    let product = json!({
        "sys": {"id": "product"}, "name": "Product", "displayField": "name",
        "fields": [
            {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
            {"id": "name", "name": "Name", "type": "Symbol"},
        ],
    });
    let config = CmaConfig {
        token: TOKEN.into(),
        content_types: vec![product],
        rate_limit: Some(1000),
        ..CmaConfig::default()
    };
    CmaServer::start(config, "127.0.0.1:0").await.unwrap()
}

fn sink(dir: &Path, url: &str) -> ContentfulSink {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let section = json!({"spaceId": "space1", "baseUrl": url, "tokenFile": "token",
                         "timeoutSecs": 1, "maxAttempts": 4});
    let config: ContentfulSinkConfig = parse_section(section, "sinks.cms").unwrap();
    let mut ctx = BuildContext::new("products", false);
    ctx.base_dir = dir.to_path_buf();
    ContentfulSink::new(config, &ctx).unwrap()
}

fn records() -> Vec<Record> {
    (0..RECORDS)
        .map(|i| {
            into_record(
                json!({"sku.en-US": format!("SKU-{i:03}"), "name.en-US": format!("Product {i}")}),
            )
        })
        .collect()
}

/// Syncs the records through the proxy in batches of 20.
async fn sync(dir: &Path, url: &str) -> (sluicegate_core::Result<BatchAck>, Vec<Rejected>) {
    let observer = Arc::new(Collect::default());
    let mut target = StreamTarget::new("products", "product", Some("sku.en-US".into()));
    target.observer = observer.clone();
    let sink = sink(dir, url);
    let result = async {
        let mut writer = sink.open(target).await?;
        let budget = MemoryBudget::unlimited();
        let mut total = BatchAck::default();
        for chunk in records().chunks(20) {
            let batch = Batch::new(chunk.to_vec(), budget.acquire(1).await?);
            total.add(&writer.write(batch).await?);
        }
        writer.finish().await?;
        Ok(total)
    }
    .await;
    let rejected = observer.0.lock().unwrap().clone();
    (result, rejected)
}

/// The space holds every record exactly once, published.
fn assert_exact(server: &CmaServer) {
    let entries = server.entries();
    let mut skus: Vec<String> = entries
        .values()
        .map(|e| e["fields"]["sku"]["en-US"].as_str().unwrap().to_owned())
        .collect();
    skus.sort();
    let want: Vec<String> = (0..RECORDS).map(|i| format!("SKU-{i:03}")).collect();
    assert_eq!(skus, want, "each record exactly once");
    for e in entries.values() {
        assert_eq!(
            e["sys"]["publishedVersion"],
            e["sys"]["version"].as_u64().unwrap() - 1,
            "{e}"
        );
    }
}

async fn assert_recovered(rule: FaultRule) -> Duration {
    let server = emulator().await;
    let proxy = FaultProxy::start(server.addr(), vec![rule.clone()])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (ack, rejected) = sync(dir.path(), &proxy.url()).await;
    let ack = ack.unwrap_or_else(|e| panic!("{rule:?}: {e}"));
    assert!(rejected.is_empty(), "{rule:?}: {rejected:?}");
    assert_eq!((ack.inserted, ack.failed), (RECORDS, 0), "{rule:?}");
    assert_eq!(proxy.injected(), u64::from(rule.times), "{rule:?}");
    assert_exact(&server);
    started.elapsed()
}

fn status(code: u16, headers: &[(&str, &str)]) -> FaultKind {
    FaultKind::Status(
        code,
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_the_reset_header_pauses_that_long_and_loses_nothing() {
    let rule = FaultRule::new(
        "/entries/",
        status(429, &[("x-contentful-ratelimit-reset", "1")]),
        2,
    )
    .method("PUT");
    let elapsed = assert_recovered(rule).await;
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_on_lookups_writes_and_publishing_are_retried() {
    for code in [500, 502, 503, 504] {
        assert_recovered(FaultRule::new("/entries?", status(code, &[]), 2).method("GET")).await;
        assert_recovered(FaultRule::new("/entries/", status(code, &[]), 2).method("PUT")).await;
        assert_recovered(FaultRule::new("/bulk_actions/", status(code, &[]), 1).method("POST"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_slower_than_the_timeout_is_retried_without_a_duplicate() {
    // The slow request reaches the emulator after the retry: it is refused as a
    // version conflict there, and the retry's entry is the only one.
    let elapsed = assert_recovered(
        FaultRule::new("/entries/", FaultKind::Slow(Duration::from_secs(3)), 1).method("PUT"),
    )
    .await;
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_are_retried() {
    assert_recovered(FaultRule::new("/entries", FaultKind::Reset, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_broke_off_is_recognised_as_done() {
    // The emulator created the entry; the client saw half an answer, asked again,
    // got "version mismatch" and found its own entry there.
    assert_recovered(FaultRule::new("/entries/", FaultKind::Truncate, 2).method("PUT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_answered_with_malformed_json_or_html_is_asked_again() {
    assert_recovered(FaultRule::new("/entries?", FaultKind::MalformedJson, 1).method("GET")).await;
    assert_recovered(FaultRule::new("/entries?", FaultKind::Html, 1).method("GET")).await;
    assert_recovered(FaultRule::new("/entries/", FaultKind::Html, 1).method("PUT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_publish_answered_with_html_falls_back_to_publishing_one_by_one() {
    // POST is not repeated blindly: the chunk is published entry by entry
    // (versioned PUTs) instead.
    assert_recovered(FaultRule::new("/bulk_actions/", FaultKind::Html, 1).method("POST")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failing_every_attempt_names_the_request_and_status() {
    let server = emulator().await;
    let rule = FaultRule::new("/entries?", status(503, &[]), 100).method("GET");
    let proxy = FaultProxy::start(server.addr(), vec![rule]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = sync(dir.path(), &proxy.url()).await;
    let err = result.expect_err("the lookup never succeeds").to_string();
    assert!(err.contains("GET") && err.contains("503"), "{err}");
    assert!(
        server.entries().is_empty(),
        "nothing written without a lookup"
    );
    // The next run, once the service is back, writes everything.
    let (result, _) = sync(dir.path(), &server.url()).await;
    result.unwrap();
    assert_exact(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bulk_publish_answer_is_not_sent_again_and_fails_nothing() {
    // The emulator runs the bulk action; its answer breaks off. The POST is not
    // repeated: the chunk is published entry by entry, the conflicts re-read, and
    // entries the lost action published count as published.
    assert_recovered(
        FaultRule::new("/bulk_actions/publish", FaultKind::Truncate, 3).method("POST"),
    )
    .await;
    // Lost answers of the one-by-one publishes too.
    let server = emulator().await;
    let rules = vec![
        FaultRule::new("/bulk_actions/publish", FaultKind::Truncate, 3).method("POST"),
        FaultRule::new("/published", FaultKind::Truncate, 10).method("PUT"),
    ];
    let proxy = FaultProxy::start(server.addr(), rules).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ack, rejected) = sync(dir.path(), &proxy.url()).await;
    let ack = ack.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!((ack.inserted, ack.failed), (RECORDS, 0));
    assert_exact(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_a_failed_record_and_the_next_run_publishes_it() {
    let server = emulator().await;
    let refused = status(422, &[]);
    let rules = vec![
        FaultRule::new("/bulk_actions/publish", refused.clone(), 100).method("POST"),
        FaultRule::new("/published", refused, 1000).method("PUT"),
    ];
    let proxy = FaultProxy::start(server.addr(), rules).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ack, rejected) = sync(dir.path(), &proxy.url()).await;
    let ack = ack.unwrap();
    assert_eq!(
        (ack.inserted, ack.updated, ack.failed),
        (0, 0, RECORDS),
        "written but not live is failed: {ack:?}"
    );
    assert_eq!(rejected.len() as u64, RECORDS);
    assert!(
        rejected
            .iter()
            .all(|r| r.stage == sluicegate_core::Stage::Publish && r.key.is_some()),
        "{rejected:?}"
    );
    assert_eq!(
        server.entries().len() as u64,
        RECORDS,
        "drafts were created"
    );
    // The cause is gone: the same records, fields unchanged, are published.
    let (ack, rejected) = sync(dir.path(), &server.url()).await;
    let ack = ack.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(
        (ack.inserted, ack.updated, ack.unchanged, ack.failed),
        (0, RECORDS, 0, 0),
        "{ack:?}"
    );
    assert_exact(&server);
    // And then nothing is left to do.
    let (ack, _) = sync(dir.path(), &server.url()).await;
    assert_eq!(ack.unwrap().unchanged, RECORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_size_refused_as_too_big_stays_smaller_for_the_stream() {
    // 60 entries of about 1 KB; the emulator refuses answers over 8 KB, as the
    // API does over 7 MB.
    let product = json!({
        "sys": {"id": "product"}, "name": "Product", "displayField": "name",
        "fields": [
            {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
            {"id": "name", "name": "Name", "type": "Text"},
        ],
    });
    let server = CmaServer::start(
        CmaConfig {
            token: TOKEN.into(),
            content_types: vec![product],
            rate_limit: Some(1000),
            max_response_bytes: 8_000,
            ..CmaConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u64| {
        into_record(
            json!({"sku.en-US": format!("SKU-{i:03}"), "name.en-US": format!("{i} {}", "x".repeat(1000))}),
        )
    };
    let run = |records: Vec<Record>| {
        let sink = sink(dir.path(), &server.url());
        async move {
            let mut target = StreamTarget::new("products", "product", Some("sku.en-US".into()));
            let stats = target.stats.clone();
            target.observer = Arc::new(Collect::default());
            let mut writer = sink.open(target).await.unwrap();
            let budget = MemoryBudget::unlimited();
            let mut total = BatchAck::default();
            for chunk in records.chunks(20) {
                let batch = Batch::new(chunk.to_vec(), budget.acquire(1).await.unwrap());
                total.add(&writer.write(batch).await.unwrap());
            }
            writer.finish().await.unwrap();
            (
                total,
                stats.snapshot().statuses.get(&400).copied().unwrap_or(0),
            )
        }
    };
    let (ack, _) = run((0..60).map(big).collect()).await;
    assert_eq!(ack.inserted, 60);
    // A new run reads the entries back (a prefetch of pages, then lookups).
    let (ack, refused) = run((0..60).map(big).collect()).await;
    assert_eq!(ack.unchanged, 60, "{ack:?}");
    // 1000 → 500 → … → 7: seven refusals, then every page fits.
    assert!(refused <= 8, "{refused} pages were refused as too big");
}
