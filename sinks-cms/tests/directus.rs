//! The `directus` sink against a real Directus (see `sluicegate_examples::directus`):
//! the keyed-sink conformance suite, and Directus's quirks.

use std::path::Path;
use std::sync::{Arc, Mutex};

use reqwest::Method;
use serde_json::json;
use sluicegate_core::{
    Batch, BatchAck, BuildContext, MemoryBudget, Record, Rejected, RunObserver, Sink, StreamTarget,
    into_record, parse_section,
};
use sluicegate_examples::directus::{Directus, directus};
use sluicegate_sinks_cms::{DirectusSink, DirectusSinkConfig};
use sluicegate_testkit::{CountFn, SinkCase, check_sink};

fn sink(dir: &Path, server: &Directus, dry_run: bool) -> DirectusSink {
    std::fs::write(dir.join("token"), format!("{}\n", server.token)).unwrap();
    let section = json!({"url": server.url, "tokenFile": "token"});
    let config: DirectusSinkConfig = parse_section(section, "sinks.directus").unwrap();
    let mut ctx = BuildContext::new("", dry_run);
    ctx.base_dir = dir.to_path_buf();
    DirectusSink::new(config, &ctx).unwrap()
}

#[derive(Default)]
struct Collect(Mutex<Vec<Rejected>>);

impl RunObserver for Collect {
    fn rejected(&self, _sync_key: &str, rejected: Rejected) {
        self.0.lock().unwrap().push(rejected);
    }
}

async fn write(
    sink: &DirectusSink,
    collection: &str,
    records: Vec<Record>,
    observer: Arc<Collect>,
) -> BatchAck {
    let mut target = StreamTarget::new("products", collection, Some("sku".into()));
    target.observer = observer;
    let mut writer = sink.open(target).await.unwrap();
    let budget = MemoryBudget::unlimited();
    let ack = writer
        .write(Batch::new(records, budget.acquire(1).await.unwrap()))
        .await
        .unwrap();
    writer.finish().await.unwrap();
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directus_sink_passes_the_testkit_suite() {
    let server = directus();
    server
        .fresh_collection("conformance", &[("name", "string"), ("price", "decimal")])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let real = Arc::new(sink(dir.path(), server, false));
    let dry = Arc::new(sink(dir.path(), server, true));
    // Plain field names as keys; prices become Directus decimals ("12.00").
    let make = |id: u64, version: u64| {
        into_record(json!({
            "sku": format!("SKU-{id:04}"),
            "name": format!("Product {id} v{version}"),
            "price": (id * 10 + version).to_string(),
        }))
    };
    let count: CountFn = Arc::new(move |collection: String| {
        Box::pin(async move { directus().items(&collection).await.len() as u64 })
    });
    // Longer than the column (varchar 255): Directus refuses it.
    let invalid = into_record(json!({"sku": "SKU-9999", "name": "x".repeat(300)}));
    let case = SinkCase::new("directus", real, dry, "conformance", "sku", make)
        .compares_content()
        .invalid(invalid)
        .count_with(count);
    check_sink(case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_round_trip_and_an_item_deleted_mid_run_is_created_again() {
    let server = directus();
    let collection = "quirks";
    server
        .fresh_collection(
            collection,
            &[
                ("name", "string"),
                ("price", "decimal"),
                ("stock", "integer"),
                ("active", "boolean"),
                ("tags", "json"),
            ],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), server, false);
    // Source types straight through (a record that was not mapped).
    let record = |sku: &str, price: f64| {
        into_record(
            json!({"sku": sku, "name": "Mug", "price": price, "stock": 3,
                           "active": true, "tags": ["red", "blue"]}),
        )
    };
    let rejected = Arc::new(Collect::default());
    let ack = write(
        &sink,
        collection,
        vec![record("a", 9.5), record("b", 1.0)],
        rejected.clone(),
    )
    .await;
    assert_eq!(
        (ack.inserted, ack.failed),
        (2, 0),
        "{:?}",
        rejected.0.lock().unwrap()
    );
    let items = server.items(collection).await;
    assert_eq!(items[0]["price"], "9.50", "Directus keeps decimals as text");
    assert_eq!(items[0]["tags"], json!(["red", "blue"]));
    assert_eq!(items[0]["active"], true);

    // "9.50" read back equals 9.5: unchanged, nothing written.
    let ack = write(
        &sink,
        collection,
        vec![record("a", 9.5), record("b", 1.0)],
        Arc::default(),
    )
    .await;
    assert_eq!((ack.unchanged, ack.updated, ack.inserted), (2, 0, 0));

    // A new sink caches the collection on its first batch; then "a" is deleted
    // by someone else. Its changed record is looked up by id, found gone, and
    // created again: the change is not lost.
    let sink = self::sink(dir.path(), server, false);
    let mut writer = sink
        .open(StreamTarget::new(
            "products",
            collection,
            Some("sku".into()),
        ))
        .await
        .unwrap();
    let budget = MemoryBudget::unlimited();
    let ack = writer
        .write(Batch::new(
            vec![record("b", 1.0)],
            budget.acquire(1).await.unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(ack.unchanged, 1);
    let id = items[0]["id"].as_u64().unwrap();
    server
        .call(Method::DELETE, &format!("/items/{collection}/{id}"), None)
        .await;
    let ack = writer
        .write(Batch::new(
            vec![record("a", 12.0)],
            budget.acquire(1).await.unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(
        (ack.inserted, ack.updated, ack.failed),
        (1, 0, 0),
        "{ack:?}"
    );
    let items = server.items(collection).await;
    let a: Vec<&serde_json::Value> = items.iter().filter(|i| i["sku"] == "a").collect();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["price"], "12.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_collection_and_a_wrong_token_say_what_to_do() {
    let server = directus();
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), server, false);
    let mut writer = sink
        .open(StreamTarget::new(
            "products",
            "no_such_collection",
            Some("sku".into()),
        ))
        .await
        .unwrap();
    let budget = MemoryBudget::unlimited();
    let err = writer
        .write(Batch::new(
            vec![into_record(json!({"sku": "a"}))],
            budget.acquire(1).await.unwrap(),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("collection 'no_such_collection' does not exist"),
        "{err}"
    );

    let wrong = Directus {
        url: server.url.clone(),
        token: "not-the-token".into(),
    };
    let sink = self::sink(dir.path(), &wrong, false);
    let mut writer = sink
        .open(StreamTarget::new("products", "quirks", Some("sku".into())))
        .await
        .unwrap();
    let err = writer
        .write(Batch::new(
            vec![into_record(json!({"sku": "a"}))],
            budget.acquire(1).await.unwrap(),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Directus refused the token"), "{err}");
    assert!(
        !err.contains("not-the-token"),
        "the token is never shown: {err}"
    );
}
