//! The `contentful` sink, driven by the upsert action, against the CMA emulator
//! served on 127.0.0.1.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sluicegate_core::{
    Batch, BatchAck, BuildContext, MemoryBudget, Record, Rejected, RunObserver, RunStats, Sink,
    StreamTarget, into_record, parse_section,
};
use sluicegate_examples::cma::{CmaConfig, CmaFault, CmaServer};
use sluicegate_sinks_cms::{ContentfulSink, ContentfulSinkConfig};

const TOKEN: &str = "test-token-123";

fn product_type() -> Value {
    json!({
        "sys": {"id": "product"}, "name": "Product", "displayField": "name",
        "fields": [
            {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
            {"id": "name", "name": "Name", "type": "Symbol", "localized": true},
            {"id": "price", "name": "Price", "type": "Number"},
            {"id": "notes", "name": "Notes", "type": "Text"},
            {"id": "tags", "name": "Tags", "type": "Array", "items": {"type": "Symbol"}},
        ],
    })
}

async fn emulator(rate_limit: Option<u32>, faults: Vec<CmaFault>) -> CmaServer {
    let config = CmaConfig {
        token: TOKEN.into(),
        locales: vec![("en-US".into(), true), ("nl".into(), false)],
        content_types: vec![product_type()],
        rate_limit: Some(rate_limit.unwrap_or(1000)),
        faults,
        ..CmaConfig::default()
    };
    CmaServer::start(config, "127.0.0.1:0").await.unwrap()
}

#[derive(Default)]
struct Collect(Mutex<Vec<Rejected>>);

impl RunObserver for Collect {
    fn rejected(&self, _sync_key: &str, rejected: Rejected) {
        self.0.lock().unwrap().push(rejected);
    }
}

fn sink(dir: &Path, server: &CmaServer, dry_run: bool, extra: Value) -> ContentfulSink {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut section = json!({"spaceId": "space1", "baseUrl": server.url(), "tokenFile": "token"});
    for (k, v) in extra.as_object().unwrap() {
        section[k] = v.clone();
    }
    let config: ContentfulSinkConfig = parse_section(section, "sinks.cms").unwrap();
    let ctx = BuildContext::new("", dry_run)
        .with_template_scope(json!({"env": {}, "config": {}}))
        .with_base_dir(dir.to_path_buf());
    ContentfulSink::new(config, &ctx).unwrap()
}

fn products(n: u64, price: f64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            into_record(json!({
                "sku.en-US": format!("SKU-{i:04}"), "name.en-US": format!("Product {i}"),
                "price.en-US": price.to_string(), "tags.en-US[]": "a|b",
            }))
        })
        .collect()
}

async fn sync(
    sink: &ContentfulSink,
    records: Vec<Record>,
    observer: Arc<Collect>,
) -> (BatchAck, Arc<RunStats>, u64) {
    let mut target = StreamTarget::new("products", "product", Some("sku.en-US".into()));
    target.observer = observer;
    let stats = target.stats.clone();
    let mut writer = sink.open(target).await.unwrap();
    let budget = MemoryBudget::unlimited();
    let mut total = BatchAck::default();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let chunk: Vec<Record> = records.by_ref().take(100).collect();
        let ack = writer
            .write(Batch::new(chunk, budget.acquire(1).await.unwrap()))
            .await
            .unwrap();
        total.add(&ack);
    }
    let summary = writer.finish().await.unwrap();
    (total, stats, summary.published)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_publishes_then_leaves_unchanged_entries_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = emulator(None, Vec::new()).await;
    let (ack, _, published) = sync(
        &sink(dir.path(), &server, false, json!({})),
        products(250, 9.5),
        Arc::default(),
    )
    .await;
    assert_eq!(
        (ack.inserted, ack.updated, ack.unchanged, ack.failed),
        (250, 0, 0, 0)
    );
    assert_eq!(published, 250);
    let entries = server.entries();
    assert_eq!(entries.len(), 250);
    assert!(
        entries
            .values()
            .all(|e| e["sys"]["publishedVersion"] == json!(1) && e["sys"]["version"] == json!(2))
    );
    let one = entries
        .values()
        .find(|e| e["fields"]["sku"]["en-US"] == "SKU-0007")
        .unwrap();
    assert_eq!(one["fields"]["tags"]["en-US"], json!(["a", "b"]));

    let before = server.counts();
    let (ack, stats, published) = sync(
        &sink(dir.path(), &server, false, json!({})),
        products(250, 9.5),
        Arc::default(),
    )
    .await;
    assert_eq!((ack.inserted, ack.updated, ack.unchanged), (0, 0, 250));
    assert_eq!(published, 0);
    let after = server.counts();
    assert_eq!(
        after.writes, before.writes,
        "a re-sync of unchanged data writes nothing"
    );
    let requests = after.requests - before.requests;
    assert!(
        requests <= 4,
        "model (2 requests) + prefetch (count + one page): {requests}"
    );
    assert_eq!(stats.snapshot().requests, requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_keeps_what_the_mapping_does_not_touch() {
    let dir = tempfile::tempdir().unwrap();
    let server = emulator(None, Vec::new()).await;
    sync(
        &sink(dir.path(), &server, false, json!({})),
        products(20, 1.0),
        Arc::default(),
    )
    .await;
    let id = server
        .entries()
        .into_iter()
        .find(|(_, e)| e["fields"]["sku"]["en-US"] == "SKU-0003")
        .map(|(id, _)| id)
        .unwrap();
    // An editor adds a note and a Dutch name.
    server.edit_entry(&id, |e| {
        e["fields"]["notes"] = json!({"en-US": "edited by hand"});
        e["fields"]["name"]["nl"] = json!("Product drie");
    });

    let mut records = products(20, 1.0);
    records[3] = into_record(
        json!({"sku.en-US": "SKU-0003", "name.en-US": "Product three", "price.en-US": "1", "tags.en-US[]": "a|b"}),
    );
    let before = server.counts();
    let (ack, _, _) = sync(
        &sink(dir.path(), &server, false, json!({"prefetch": "never"})),
        records,
        Arc::default(),
    )
    .await;
    assert_eq!((ack.updated, ack.unchanged), (1, 19));
    assert_eq!(
        server.counts().writes - before.writes,
        2,
        "one PUT and one bulk publish action, nothing else"
    );
    let entry = &server.entries()[&id];
    assert_eq!(
        entry["fields"]["name"],
        json!({"en-US": "Product three", "nl": "Product drie"})
    );
    assert_eq!(entry["fields"]["notes"], json!({"en-US": "edited by hand"}));
    // created 1, published 2, edited 3, updated 4, published 5 (publishedVersion 4).
    assert_eq!(
        (
            entry["sys"]["version"].clone(),
            entry["sys"]["publishedVersion"].clone()
        ),
        (json!(5), json!(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = emulator(None, Vec::new()).await;
    let (ack, _, published) = sync(
        &sink(dir.path(), &server, true, json!({})),
        products(30, 1.0),
        Arc::default(),
    )
    .await;
    assert_eq!((ack.inserted, published), (30, 0));
    assert_eq!(server.counts().writes, 0);
    assert!(server.entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_entry_is_reported_with_the_api_message_and_the_rest_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let server = emulator(None, Vec::new()).await;
    let mut records = products(10, 1.0);
    records[4] = into_record(json!({"sku.en-US": "SKU-0004", "name.en-US": "x".repeat(300)}));
    let observer = Arc::new(Collect::default());
    let (ack, _, published) = sync(
        &sink(dir.path(), &server, false, json!({})),
        records,
        observer.clone(),
    )
    .await;
    assert_eq!((ack.inserted, ack.failed), (9, 1));
    assert_eq!(published, 9);
    let rejected = observer.0.lock().unwrap();
    assert_eq!(rejected[0].key.as_deref(), Some("SKU-0004"));
    assert!(
        rejected[0].reason.contains("422 ValidationFailed"),
        "{}",
        rejected[0].reason
    );
    assert!(
        rejected[0]
            .reason
            .contains("fields.name.en-US: Symbol is longer than 256 characters"),
        "{}",
        rejected[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let faults = vec![
        CmaFault {
            method: Some("PUT".into()),
            path_contains: "/entries/".into(),
            status: 429,
            times: 3,
        },
        CmaFault {
            method: Some("GET".into()),
            path_contains: "/entries".into(),
            status: 500,
            times: 2,
        },
        CmaFault {
            method: Some("POST".into()),
            path_contains: "/bulk_actions".into(),
            status: 503,
            times: 1,
        },
    ];
    let server = emulator(Some(40), faults).await;
    let (ack, stats, published) = sync(
        &sink(dir.path(), &server, false, json!({})),
        products(60, 1.0),
        Arc::default(),
    )
    .await;
    assert_eq!((ack.inserted, ack.failed, published), (60, 0, 60));
    let snap = stats.snapshot();
    // 3 × 429 and 2 × 500 retried; the 503 answering the bulk publish (a POST)
    // is not repeated: that chunk is published entry by entry instead.
    assert!(snap.retries >= 5, "{snap:?}");
    assert_eq!(snap.statuses.get(&503).copied(), Some(1), "{snap:?}");
    // Counted as each write and publish succeeded (what progress shows).
    assert_eq!((snap.entries_written, snap.entries_published), (60, 60));
    assert_eq!(
        snap.statuses.get(&429).copied().unwrap_or(0),
        3,
        "only the injected 429s: the pacer keeps under 40/s"
    );
    assert_eq!(server.entries().len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contentful_sink_passes_the_testkit_suite() {
    use sluicegate_testkit::{CountFn, SinkCase, check_sink};
    let server = Arc::new(emulator(None, Vec::new()).await);
    let dir = tempfile::tempdir().unwrap();
    let real = Arc::new(sink(dir.path(), &server, false, json!({})));
    let dry = Arc::new(sink(dir.path(), &server, true, json!({})));
    let make = |id: u64, version: u64| {
        into_record(json!({
            "sku.en-US": format!("SKU-{id:04}"),
            "name.en-US": format!("Product {id} v{version}"),
            "price.en-US": (id * 10 + version).to_string(),
        }))
    };
    // The emulator's entries of the content type are the sink's table.
    let entries = server.clone();
    let count: CountFn = Arc::new(move |content_type: String| {
        let n = entries
            .entries()
            .values()
            .filter(|e| e["sys"]["contentType"]["sys"]["id"] == content_type.as_str())
            .count() as u64;
        Box::pin(async move { n })
    });
    let invalid = into_record(json!({"sku.en-US": "SKU-9999", "name.en-US": "x".repeat(300)}));
    let case = SinkCase::new("contentful", real, dry, "product", "sku.en-US", make)
        .compares_content()
        .invalid(invalid)
        .count_with(count);
    check_sink(case).await;
}
