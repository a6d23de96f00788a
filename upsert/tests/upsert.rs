//! The upsert bulk action against the in-memory keyed sink: what it writes, what
//! it leaves alone, how many requests it makes, and that its cache stays bounded.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sluicegate_core::{
    Batch, ContentModel, FieldDef, FieldKind, MemoryBudget, Record, Rejected, RunObserver,
    SinkWriter, Stage, StreamTarget, into_record,
};
use sluicegate_testkit::doubles::MemoryKeyedSink;
use sluicegate_upsert::{CacheConfig, Prefetch, UpsertOptions, UpsertWriter};

fn model() -> ContentModel {
    let f = |id: &str, kind, localized| FieldDef {
        id: id.into(),
        kind,
        localized,
        link_type: None,
        items: None,
    };
    ContentModel {
        name: "product".into(),
        display_field: Some("name".into()),
        fields: vec![
            f("sku", FieldKind::Symbol, false),
            f("name", FieldKind::Symbol, true),
            f("price", FieldKind::Number, false),
            f("notes", FieldKind::Text, false),
        ],
        locales: vec!["en".into(), "nl".into()],
    }
}

#[derive(Default)]
struct Collect {
    rejected: Mutex<Vec<Rejected>>,
    changes: Mutex<Vec<String>>,
}

impl RunObserver for Collect {
    fn wants_changes(&self) -> bool {
        true
    }
    fn change(&self, _sync_key: &str, line: &str) {
        self.changes.lock().unwrap().push(line.to_owned());
    }
    fn rejected(&self, _sync_key: &str, rejected: Rejected) {
        self.rejected.lock().unwrap().push(rejected);
    }
}

fn options(dry_run: bool, max_entries: u64, prefetch: Prefetch) -> UpsertOptions {
    UpsertOptions::new(dry_run, true)
        .with_cache(CacheConfig::new(max_entries, 1 << 20))
        .with_prefetch(prefetch)
}

fn writer(
    sink: &Arc<MemoryKeyedSink>,
    opts: UpsertOptions,
    observer: Arc<Collect>,
) -> UpsertWriter<MemoryKeyedSink> {
    let mut target = StreamTarget::new("products", "product", Some("sku.en".into()));
    target.observer = observer;
    UpsertWriter::new(sink.clone(), target, opts).unwrap()
}

/// Flat mapped records `{sku.en, name.en, price.en}` for skus `from..to`.
fn flat(from: u64, to: u64, price: f64) -> Vec<Record> {
    (from..to)
        .map(|i| into_record(json!({"sku.en": format!("S{i:05}"), "name.en": format!("Product {i}"), "price.en": price.to_string()})))
        .collect()
}

async fn run(
    w: &mut UpsertWriter<MemoryKeyedSink>,
    records: Vec<Record>,
    batch: usize,
) -> sluicegate_core::BatchAck {
    let budget = MemoryBudget::unlimited();
    let mut total = sluicegate_core::BatchAck::default();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let chunk: Vec<Record> = records.by_ref().take(batch).collect();
        let ack = w
            .write(Batch::new(chunk, budget.acquire(1).await.unwrap()))
            .await
            .unwrap();
        total.add(&ack);
    }
    total
}

#[tokio::test]
async fn a_second_sync_of_unchanged_data_makes_no_writes() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let obs = Arc::new(Collect::default());
    let mut w = writer(&sink, options(false, 10_000, Prefetch::Never), obs.clone());
    let ack = run(&mut w, flat(0, 500, 9.5), 100).await;
    assert_eq!(
        (ack.rows, ack.inserted, ack.updated, ack.unchanged),
        (500, 500, 0, 0)
    );
    assert_eq!(sink.counts().creates, 500);
    assert_eq!(sink.counts().publishes, 500);
    let summary = Box::new(w).finish().await.unwrap();
    assert_eq!(summary.published, 500);

    // A new writer (a new run): empty cache, so keys are looked up in chunks.
    let before = sink.counts();
    let mut w = writer(&sink, options(false, 10_000, Prefetch::Never), obs.clone());
    let ack = run(&mut w, flat(0, 500, 9.5), 100).await;
    assert_eq!((ack.inserted, ack.updated, ack.unchanged), (0, 0, 500));
    let after = sink.counts();
    assert_eq!(
        after.creates + after.updates + after.publishes,
        before.creates + before.updates + before.publishes,
        "no writes"
    );
    assert_eq!(
        after.key_lookups - before.key_lookups,
        10,
        "500 keys in lookups of 50"
    );

    // The same writer again: everything answered by the cache, no request at all.
    let before = sink.counts();
    let ack = run(&mut w, flat(0, 500, 9.5), 100).await;
    assert_eq!(ack.unchanged, 500);
    assert_eq!(sink.counts(), before);
    let cache = Box::new(w).finish().await.unwrap().cache.unwrap();
    assert_eq!((cache.hits, cache.misses), (500, 500));
}

#[tokio::test]
async fn an_update_changes_only_mapped_fields_and_keeps_the_rest() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let seeded = sink.seed(
        serde_json::from_value(json!({
            "sku": {"en": "S00001"}, "name": {"en": "Old", "nl": "Oud"}, "price": {"en": 1.0}, "notes": {"en": "keep me"},
        }))
        .unwrap(),
        Some(json!({"tags": [{"sys": {"type": "Link", "linkType": "Tag", "id": "summer"}}]})),
    );
    let obs = Arc::new(Collect::default());
    let mut w = writer(&sink, options(false, 100, Prefetch::Never), obs.clone());
    let ack = run(&mut w, flat(1, 3, 1.0), 10).await;
    assert_eq!((ack.inserted, ack.updated, ack.unchanged), (1, 1, 0));
    let entry = &sink.entries()[&seeded];
    assert_eq!(
        Value::Object(entry.fields.clone()),
        json!({"sku": {"en": "S00001"}, "name": {"en": "Product 1", "nl": "Oud"}, "price": {"en": 1.0}, "notes": {"en": "keep me"}})
    );
    assert_eq!(
        entry.metadata,
        Some(json!({"tags": [{"sys": {"type": "Link", "linkType": "Tag", "id": "summer"}}]}))
    );
    let changes = obs.changes.lock().unwrap().clone();
    assert!(
        changes.contains(&"'product' 'S00001' is updated".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"  field 'name.en' changed from 'Old' to 'Product 1'".to_owned()),
        "{changes:?}"
    );
    assert!(
        !changes.iter().any(|c| c.contains("price")),
        "1 and 1.0 are equal: {changes:?}"
    );
}

#[tokio::test]
async fn a_dry_run_classifies_but_writes_nothing() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let mut w = writer(
        &sink,
        options(false, 100, Prefetch::Never),
        Arc::new(Collect::default()),
    );
    run(&mut w, flat(0, 10, 1.0), 10).await;
    let before = sink.counts();
    let obs = Arc::new(Collect::default());
    let mut w = writer(&sink, options(true, 100, Prefetch::Never), obs.clone());
    let mut records = flat(0, 15, 1.0);
    records[3] = into_record(json!({"sku.en": "S00003", "name.en": "Renamed", "price.en": "1"}));
    let ack = run(&mut w, records, 100).await;
    assert_eq!((ack.inserted, ack.updated, ack.unchanged), (5, 1, 9));
    let after = sink.counts();
    assert_eq!(
        (after.creates, after.updates, after.publishes),
        (before.creates, before.updates, before.publishes)
    );
    let changes = obs.changes.lock().unwrap().clone();
    assert!(
        changes.contains(&"'product' 'S00003' will be updated".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"'product' 'S00014' will be created".to_owned()),
        "{changes:?}"
    );
}

#[tokio::test]
async fn the_cache_stays_bounded_and_results_stay_right() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let mut w = writer(
        &sink,
        options(false, 100, Prefetch::Never),
        Arc::new(Collect::default()),
    );
    run(&mut w, flat(0, 2000, 1.0), 200).await;
    let cache = Box::new(w).finish().await.unwrap().cache.unwrap();
    assert!(cache.entries <= 100, "{cache:?}");
    assert!(cache.evictions >= 1900, "{cache:?}");

    let mut w = writer(
        &sink,
        options(false, 100, Prefetch::Never),
        Arc::new(Collect::default()),
    );
    let mut records = flat(0, 2000, 1.0);
    records[1500] = into_record(json!({"sku.en": "S01500", "name.en": "Changed", "price.en": "1"}));
    let ack = run(&mut w, records, 200).await;
    assert_eq!((ack.inserted, ack.updated, ack.unchanged), (0, 1, 1999));
    assert_eq!(sink.entries().len(), 2000);
}

#[tokio::test]
async fn a_target_that_fits_the_cache_is_prefetched_and_new_keys_need_no_lookups() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let mut w = writer(
        &sink,
        options(false, 1000, Prefetch::Auto),
        Arc::new(Collect::default()),
    );
    run(&mut w, flat(0, 300, 1.0), 100).await;

    let before = sink.counts();
    let mut w = writer(
        &sink,
        options(false, 1000, Prefetch::Auto),
        Arc::new(Collect::default()),
    );
    let ack = run(&mut w, flat(0, 400, 1.0), 100).await;
    assert_eq!((ack.inserted, ack.unchanged), (100, 300));
    let after = sink.counts();
    assert_eq!(
        after.key_lookups, before.key_lookups,
        "no lookups by key after the prefetch"
    );
    assert_eq!(after.id_lookups, before.id_lookups);
    assert_eq!(
        after.pages - before.pages,
        4,
        "one count request and three pages of 100"
    );
    assert!(
        Box::new(w)
            .finish()
            .await
            .unwrap()
            .cache
            .unwrap()
            .prefetched
    );
}

#[tokio::test]
async fn bad_records_are_rejected_and_the_rest_goes_on() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let obs = Arc::new(Collect::default());
    let mut w = writer(&sink, options(false, 100, Prefetch::Never), obs.clone());
    let records = vec![
        into_record(json!({"sku.en": "A", "name.en": "ok", "price.en": "1"})),
        into_record(json!({"sku.en": "B", "name.en": "bad price", "price.en": "cheap"})),
        into_record(json!({"name.en": "no key"})),
        into_record(json!({"sku.en": "C", "name.en": "INVALID"})),
        into_record(
            json!({"sku.en": "A", "name.en": "dup with conflict", "notes.en": "fills a gap"}),
        ),
    ];
    let ack = run(&mut w, records, 10).await;
    assert_eq!(
        (ack.rows, ack.inserted, ack.failed, ack.duplicates),
        (2, 1, 3, 1)
    );
    let rejected = obs.rejected.lock().unwrap().clone();
    let stages: Vec<(Stage, Option<String>)> =
        rejected.iter().map(|r| (r.stage, r.key.clone())).collect();
    assert_eq!(
        stages,
        [
            (Stage::Convert, Some("B".into())),
            (Stage::Convert, None),
            (Stage::Write, Some("C".into()))
        ],
        "a record that does not convert is still named by its key when it has one"
    );
    assert!(
        rejected[0].reason.contains("'cheap' is not a valid Number"),
        "{}",
        rejected[0].reason
    );
    assert!(
        rejected[1]
            .reason
            .contains("no value for the key field 'sku'")
    );
    assert!(rejected[2].reason.contains("validation failed"));
    assert_eq!(
        rejected[2].record["name.en"],
        json!("INVALID"),
        "the record travels with its rejection"
    );
    let a = sink
        .entries()
        .into_values()
        .find(|e| e.fields["sku"]["en"] == json!("A"))
        .unwrap();
    assert_eq!(
        a.fields["name"]["en"],
        json!("dup with conflict"),
        "the last record of a key wins"
    );
    assert_eq!(a.fields["notes"]["en"], json!("fills a gap"));
    assert!(
        a.fields.get("price").is_none(),
        "whole: nothing of the earlier record is kept"
    );
}

#[tokio::test]
async fn a_refused_publish_is_a_failed_record_and_the_next_run_publishes_it() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let obs = Arc::new(Collect::default());
    let records = flat(0, 10, 1.0);
    let mut w = writer(&sink, options(false, 100, Prefetch::Never), obs.clone());
    run(&mut w, records[..6].to_vec(), 5).await;
    sink.refuse_publishing(true);
    let ack = run(&mut w, records[6..].to_vec(), 5).await;
    assert_eq!((ack.inserted, ack.failed), (0, 4), "{ack:?}");
    let rejected = obs.rejected.lock().unwrap().clone();
    let keys: Vec<(Stage, Option<String>)> =
        rejected.iter().map(|r| (r.stage, r.key.clone())).collect();
    let want: Vec<(Stage, Option<String>)> = (6..10)
        .map(|i| (Stage::Publish, Some(format!("S{i:05}"))))
        .collect();
    assert_eq!(keys, want);
    // The same writer meets the records again: still not live, so they are
    // published again (and refused again), never called unchanged.
    let ack = run(&mut w, records[6..].to_vec(), 5).await;
    assert_eq!((ack.unchanged, ack.failed), (0, 4), "{ack:?}");

    // The platform accepts them now: a new run with unchanged fields publishes
    // them, and only them, with and without a prefetched cache.
    sink.refuse_publishing(false);
    let before = sink.counts();
    let mut w = writer(&sink, options(false, 100, Prefetch::Auto), obs.clone());
    let ack = run(&mut w, records.clone(), 5).await;
    assert_eq!(
        (ack.updated, ack.unchanged, ack.failed),
        (4, 6, 0),
        "{ack:?}"
    );
    let after = sink.counts();
    assert_eq!(
        (
            after.publishes - before.publishes,
            after.updates,
            after.creates
        ),
        (4, before.updates, before.creates),
        "published without a write"
    );
    assert!(sink.entries().values().all(|e| !e.publish_pending));
    let ack = run(&mut w, records, 5).await;
    assert_eq!(ack.unchanged, 10);
}

#[tokio::test]
async fn relieving_memory_empties_the_cache_and_results_stay_right() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let mut w = writer(
        &sink,
        options(false, 1000, Prefetch::Auto),
        Arc::new(Collect::default()),
    );
    run(&mut w, flat(0, 300, 1.0), 100).await;
    let relief = w.extension().unwrap().relieve_memory().await.unwrap();
    assert_eq!(relief.cache_entries, 300, "every cached entry dropped");
    assert!(relief.cache_bytes > 0);

    // The cache was prefetched (it held the whole target); after the relief a
    // miss must be looked up again, not taken for a new entry.
    let before = sink.counts();
    let ack = run(&mut w, flat(0, 300, 2.0), 100).await;
    assert_eq!(
        (ack.inserted, ack.updated),
        (0, 300),
        "no duplicates created"
    );
    let after = sink.counts();
    assert_eq!(after.creates, before.creates);
    assert!(after.key_lookups > before.key_lookups, "looked up again");
    assert_eq!(sink.entries().len(), 300);
}

#[tokio::test]
async fn a_mapping_naming_a_locale_the_target_lacks_fails_once_before_any_write() {
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let obs = Arc::new(Collect::default());
    let mut w = writer(&sink, options(false, 100, Prefetch::Never), obs.clone());
    let records = vec![
        into_record(json!({"sku.en": "A", "name.en": "ok"})),
        into_record(json!({"sku.en": "B", "name.fr": "pas de locale"})),
    ];
    let budget = MemoryBudget::unlimited();
    let err = w
        .write(Batch::new(records, budget.acquire(1).await.unwrap()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("names locale 'fr', which the target does not have (locales: en, nl)"),
        "{err}"
    );
    assert!(obs.rejected.lock().unwrap().is_empty(), "not per record");
    assert!(sink.entries().is_empty(), "nothing written");
}

#[tokio::test]
async fn the_target_keys_come_page_by_page_and_removed_keys_leave_the_target() {
    use sluicegate_core::{DeleteMode, WriterExtension};
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let mut w = writer(
        &sink,
        options(false, 10_000, Prefetch::Never),
        Arc::default(),
    );
    run(&mut w, flat(0, 250, 1.0), 100).await;
    // The in-memory sink answers pages of 100.
    let mut keys = Vec::new();
    let mut page = None;
    let mut pages = 0;
    loop {
        let listed = w.target_keys(page.take()).await.unwrap();
        pages += 1;
        keys.extend(listed.keys);
        match listed.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    keys.sort();
    let expected: Vec<String> = (0..250).map(|i| format!("S{i:05}")).collect();
    assert_eq!(keys, expected);

    let gone = [
        "S00003".to_owned(),
        "S00150".to_owned(),
        "S00249".to_owned(),
    ];
    assert_eq!(w.delete_keys(&gone, DeleteMode::Archive).await.unwrap(), 3);
    assert_eq!(sink.entries().len(), 247);
    assert_eq!(sink.archived().len(), 3);
    assert_eq!(
        w.delete_keys(&gone[..1], DeleteMode::Hard).await.unwrap(),
        0,
        "already out"
    );
    // A key written again after its entry was removed is created anew.
    let ack = run(&mut w, flat(150, 151, 1.0), 10).await;
    assert_eq!(ack.inserted, 1);
}
