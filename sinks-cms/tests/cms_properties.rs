//! Property suite of the content-platform sinks: every failure is counted, kept and
//! delivered later, and nothing is published twice or lost.
//!
//! Each case generates records nobody picked by hand (unicode, numbers, keys
//! repeated within and across batches, records the platform refuses at write or
//! at publish), an earlier state of the space (entries from a previous run, some
//! of them drafts), and faults between the sink and the Contentful emulator on
//! 127.0.0.1: answers lost after the emulator acted (creates, updates, bulk
//! publishes, single publishes), connection resets, 5xx and 429 answers, an
//! editor changing entries while the run goes on (so cached versions go stale
//! and writes meet version conflicts), and random publish-chunk and batch sizes.
//! The faults stay within the retry budget (at most 8 per kind of request, 10
//! attempts), so the run must succeed. The `directus` sink gets the same with
//! lost create and update answers, 503s, resets and records Directus refuses.
//! Invariants, after the run:
//! - it ends without an error; `failed` equals the records reported refused,
//!   each with its key and the platform's message, and they are exactly the
//!   records the platform refuses;
//! - every key is in the space once, holding the last record sent for it;
//!   every key not refused is published at its current version;
//!
//! and after a second run once the cause is fixed (what `redrive` does): nothing
//! fails and every key is published at its current version, holding its record.
//!
//! `SLUICEGATE_CMS_PROPERTY_SEED` (default 1) and `SLUICEGATE_CMS_PROPERTY_CASES`
//! (default 12) choose the cases; `scripts/cms-properties.sh MINUTES` runs new
//! seeds for as long as asked. A failure prints the seed that reproduces it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sluicegate_core::{
    Batch, BatchAck, BuildContext, MemoryBudget, Record, Rejected, RunObserver, Sink, Stage,
    StreamTarget, into_record, parse_section,
};
use sluicegate_examples::cma::{CmaConfig, CmaServer};
use sluicegate_examples::faults::{FaultKind, FaultProxy, FaultRule};
use sluicegate_sinks_cms::{ContentfulSink, ContentfulSinkConfig};

const TOKEN: &str = "property-token";

#[derive(Default)]
struct Collect(Mutex<Vec<Rejected>>);

impl RunObserver for Collect {
    fn rejected(&self, _sync_key: &str, rejected: Rejected) {
        self.0.lock().unwrap().push(rejected);
    }
}

/// How the platform treats a key's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accepted,
    /// A name over 256 characters: refused at write (422).
    RefusedAtWrite,
    /// No name (a required field): written as a draft, refused at publish (422).
    RefusedAtPublish,
}

fn text(rng: &mut fastrand::Rng) -> String {
    const PIECES: [&str; 10] = [
        "a",
        "Zürich",
        "日本語",
        "🦀",
        "\"q\"",
        "back\\slash",
        "tab\t",
        "line\nbreak",
        " ",
        "ø",
    ];
    (0..rng.usize(1..6))
        .map(|_| PIECES[rng.usize(..PIECES.len())])
        .collect()
}

fn record(rng: &mut fastrand::Rng, key: &str, fate: Fate) -> Record {
    let mut r = json!({ "sku.en-US": key });
    match fate {
        Fate::Accepted => r["name.en-US"] = json!(text(rng)),
        Fate::RefusedAtWrite => r["name.en-US"] = json!("n".repeat(257 + rng.usize(..50))),
        Fate::RefusedAtPublish => {}
    }
    if rng.bool() {
        let price = match rng.u8(..3) {
            0 => rng.i64(-1000..1000).to_string(),
            1 => format!("{}", rng.f64() * 1e6),
            _ => "0.1".to_owned(),
        };
        r["price.en-US"] = json!(price);
    }
    if rng.u8(..4) == 0 {
        r["notes.en-US"] = json!(text(rng));
    }
    into_record(r)
}

fn product_type() -> Value {
    json!({
        "sys": {"id": "product"}, "name": "Product", "displayField": "name",
        "fields": [
            {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
            {"id": "name", "name": "Name", "type": "Symbol", "required": true},
            {"id": "price", "name": "Price", "type": "Number"},
            {"id": "notes", "name": "Notes", "type": "Text"},
            {"id": "extra", "name": "Extra", "type": "Symbol"},
        ],
    })
}

fn sink(dir: &Path, url: &str, publish_chunk: usize) -> ContentfulSink {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let section = json!({"spaceId": "space1", "baseUrl": url, "tokenFile": "token",
                         "timeoutSecs": 2, "maxAttempts": 10, "publishChunk": publish_chunk});
    let config: ContentfulSinkConfig = parse_section(section, "sinks.cms").unwrap();
    let mut ctx = BuildContext::new("products", false);
    ctx.base_dir = dir.to_path_buf();
    ContentfulSink::new(config, &ctx).unwrap()
}

/// Writes `batches` into `table` (keyed by `key_field`) through one writer of
/// `sink`; between batches, `between` runs.
async fn write_batches(
    sink: &dyn Sink,
    table: &str,
    key_field: &str,
    batches: Vec<Vec<Record>>,
    mut between: impl FnMut(usize),
) -> (sluicegate_core::Result<BatchAck>, Vec<Rejected>) {
    let observer = Arc::new(Collect::default());
    let mut target = StreamTarget::new("products", table, Some(key_field.into()));
    target.observer = observer.clone();
    let result = async {
        let mut writer = sink.open(target).await?;
        let budget = MemoryBudget::unlimited();
        let mut total = BatchAck::default();
        for (i, batch) in batches.into_iter().enumerate() {
            between(i);
            total.add(
                &writer
                    .write(Batch::new(batch, budget.acquire(1).await?))
                    .await?,
            );
        }
        writer.finish().await?;
        Ok(total)
    }
    .await;
    let rejected = observer.0.lock().unwrap().clone();
    (result, rejected)
}

/// Writes `batches` into the emulator's `product` type; between batches,
/// `between` runs.
async fn run(
    sink: &ContentfulSink,
    batches: Vec<Vec<Record>>,
    between: impl FnMut(usize),
) -> (sluicegate_core::Result<BatchAck>, Vec<Rejected>) {
    write_batches(sink, "product", "sku.en-US", batches, between).await
}

fn batches_of(rng: &mut fastrand::Rng, records: Vec<Record>) -> Vec<Vec<Record>> {
    let size = rng.usize(1..60);
    records.chunks(size).map(<[Record]>::to_vec).collect()
}

fn faults(rng: &mut fastrand::Rng) -> Vec<FaultRule> {
    let mut rules = Vec::new();
    for _ in 0..rng.usize(0..5) {
        let times = rng.u32(1..3);
        rules.push(match rng.u8(..8) {
            0 => FaultRule::new("/entries/", FaultKind::Truncate, times).method("PUT"),
            1 => FaultRule::new("/bulk_actions/publish", FaultKind::Truncate, times).method("POST"),
            2 => FaultRule::new("/published", FaultKind::Truncate, times).method("PUT"),
            3 => FaultRule::new("/entries?", FaultKind::Reset, times).method("GET"),
            4 => {
                FaultRule::new("/entries/", FaultKind::Status(503, Vec::new()), times).method("PUT")
            }
            5 => FaultRule::new(
                "/entries",
                FaultKind::Status(
                    429,
                    vec![("x-contentful-ratelimit-reset".into(), "1".into())],
                ),
                1,
            ),
            6 => FaultRule::new("/bulk_actions/", FaultKind::Status(502, Vec::new()), times),
            _ => FaultRule::new("/entries?", FaultKind::MalformedJson, times).method("GET"),
        });
    }
    rules
}

/// The space's entries by SKU; fails on a SKU held twice.
fn by_sku(server: &CmaServer) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in server.entries().into_values() {
        let sku = entry["fields"]["sku"]["en-US"]
            .as_str()
            .unwrap_or_else(|| panic!("an entry without a sku: {entry}"))
            .to_owned();
        assert!(
            out.insert(sku.clone(), entry).is_none(),
            "{sku} is in the space twice"
        );
    }
    out
}

fn live(entry: &Value) -> bool {
    entry["sys"]["publishedVersion"].as_u64().map(|p| p + 1) == entry["sys"]["version"].as_u64()
}

/// The entry holds the values the record sets (numbers compared as numbers).
fn holds(entry: &Value, record: &Record) -> Result<(), String> {
    for field in ["name", "price", "notes"] {
        let want = record.get(&format!("{field}.en-US"));
        let got = entry["fields"][field].get("en-US");
        let same = match (want, got) {
            // A field the record does not set keeps what the entry held.
            (None, _) => true,
            (Some(Value::String(w)), Some(Value::Number(g))) => w.parse::<f64>().ok() == g.as_f64(),
            (Some(w), Some(g)) => w == g,
            _ => false,
        };
        if !same {
            return Err(format!("{field}: sent {want:?}, the space holds {got:?}"));
        }
    }
    Ok(())
}

async fn case(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = CmaServer::start(
        CmaConfig {
            token: TOKEN.into(),
            content_types: vec![product_type()],
            rate_limit: Some(100_000),
            ..CmaConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = rng.usize(1..120);
    let fates: Vec<Fate> = (0..keys)
        .map(|_| match rng.u8(..10) {
            0 => Fate::RefusedAtWrite,
            1 => Fate::RefusedAtPublish,
            _ => Fate::Accepted,
        })
        .collect();
    let key = |i: usize| format!("K{i:03}");

    // An earlier run left some accepted keys in the space; some later edited by
    // someone (not live any more).
    let mut earlier: Vec<Record> = Vec::new();
    for (i, fate) in fates.iter().enumerate() {
        if *fate == Fate::Accepted && rng.u8(..3) == 0 {
            earlier.push(record(&mut rng, &key(i), Fate::Accepted));
        }
    }
    if !earlier.is_empty() {
        let (ack, _) = run(&sink(dir.path(), &server.url(), 100), vec![earlier], |_| {}).await;
        ack.unwrap();
        for (sku, entry) in by_sku(&server) {
            if rng.u8(..3) == 0 {
                let id = entry["sys"]["id"].as_str().unwrap().to_owned();
                server.edit_entry(&id, |e| e["fields"]["extra"] = json!({"en-US": sku}));
            }
        }
    }

    // This run's records: every key at least once, some several times.
    let mut records = Vec::new();
    for (i, &fate) in fates.iter().enumerate() {
        for _ in 0..(if rng.u8(..5) == 0 { rng.usize(2..4) } else { 1 }) {
            records.push(record(&mut rng, &key(i), fate));
        }
    }
    rng.shuffle(&mut records);
    let mut last: BTreeMap<String, Record> = BTreeMap::new();
    for r in &records {
        last.insert(r["sku.en-US"].as_str().unwrap().to_owned(), r.clone());
    }
    let batches = batches_of(&mut rng, records);
    let rules = faults(&mut rng);
    let proxy = FaultProxy::start(server.addr(), rules.clone())
        .await
        .unwrap();
    let sink_ = sink(dir.path(), &proxy.url(), rng.usize(1..=200));
    let edits: Vec<(usize, usize)> = (0..rng.usize(0..4))
        .map(|_| (rng.usize(0..batches.len()), rng.usize(0..keys)))
        .collect();
    let edited = Mutex::new(BTreeSet::new());
    let (ack, rejected) = run(&sink_, batches, |batch| {
        // An editor changes an unmapped field of entries the writer may hold
        // in its cache: its next write of them meets a version conflict.
        for &(at, k) in &edits {
            if at == batch
                && let Some(entry) = by_sku(&server).get(&key(k))
            {
                let id = entry["sys"]["id"].as_str().unwrap().to_owned();
                server.edit_entry(&id, |e| e["fields"]["extra"] = json!({"en-US": "edited"}));
                edited.lock().unwrap().insert(key(k));
            }
        }
    })
    .await;
    let context = format!("seed {seed}: {keys} keys, faults {rules:?}");
    let ack = ack.unwrap_or_else(|e| panic!("{context}: the run failed: {e}"));

    // Counted, kept, and exactly the refused ones.
    assert_eq!(ack.failed, rejected.len() as u64, "{context}: {ack:?}");
    let refused_keys: BTreeSet<String> = rejected
        .iter()
        .map(|r| {
            assert!(!r.reason.trim().is_empty(), "{context}: {r:?}");
            r.key
                .clone()
                .unwrap_or_else(|| panic!("{context}: no key: {r:?}"))
        })
        .collect();
    let want_refused: BTreeSet<String> = (0..keys)
        .filter(|&i| fates[i] != Fate::Accepted)
        .map(key)
        .collect();
    assert_eq!(refused_keys, want_refused, "{context}: {rejected:#?}");
    for r in &rejected {
        let i: usize = r.key.as_ref().unwrap()[1..].parse().unwrap();
        let stage = match fates[i] {
            Fate::RefusedAtWrite => Stage::Write,
            _ => Stage::Publish,
        };
        assert_eq!(r.stage, stage, "{context}: {r:?}");
    }
    let space = by_sku(&server);
    for (i, fate) in fates.iter().enumerate() {
        let k = key(i);
        match (fate, space.get(&k)) {
            (Fate::RefusedAtWrite, None) => {}
            (Fate::RefusedAtWrite, Some(e)) => {
                panic!("{context}: {k} was refused but is there: {e}")
            }
            (_, None) => panic!("{context}: {k} is missing"),
            (Fate::RefusedAtPublish, Some(e)) => {
                assert!(!live(e), "{context}: {k} cannot be live: {e}");
                holds(e, &last[&k]).unwrap_or_else(|d| panic!("{context}: {k}: {d}"));
            }
            // An entry the editor changed after its last write holds their
            // draft on top of the published version; the next run publishes it.
            (Fate::Accepted, Some(e)) if edited.lock().unwrap().contains(&k) => {
                assert!(
                    e["sys"]["publishedVersion"].is_u64(),
                    "{context}: {k} never published: {e}"
                );
                holds(e, &last[&k]).unwrap_or_else(|d| panic!("{context}: {k}: {d}"));
            }
            (Fate::Accepted, Some(e)) => {
                assert!(live(e), "{context}: {k} is not live: {e}");
                holds(e, &last[&k]).unwrap_or_else(|d| panic!("{context}: {k}: {d}"));
            }
        }
    }

    // The cause fixed (what `redrive --apply` sends): everything delivered.
    let fixed: Vec<Record> = (0..keys)
        .map(|i| match fates[i] {
            Fate::Accepted => last[&key(i)].clone(),
            _ => record(&mut rng, &key(i), Fate::Accepted),
        })
        .collect();
    let (ack, rejected) = run(
        &sink(dir.path(), &server.url(), 100),
        vec![fixed.clone()],
        |_| {},
    )
    .await;
    let ack = ack.unwrap_or_else(|e| panic!("{context}: the second run failed: {e}"));
    assert!(rejected.is_empty(), "{context}: {rejected:?}");
    assert_eq!(ack.failed, 0, "{context}");
    let space = by_sku(&server);
    assert_eq!(space.len(), keys, "{context}");
    for r in &fixed {
        let k = r["sku.en-US"].as_str().unwrap();
        let e = &space[k];
        assert!(
            live(e),
            "{context}: {k} is not live after the second run: {e}"
        );
        holds(e, r).unwrap_or_else(|d| panic!("{context}: {k}: {d}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_kept_and_delivered_later() {
    for s in seeds(1) {
        case(s).await;
    }
}

/// The seeds to run: `SLUICEGATE_CMS_PROPERTY_SEED` (default 1) on, one case in
/// `every` of `SLUICEGATE_CMS_PROPERTY_CASES` (default 12).
fn seeds(every: u64) -> std::ops::Range<u64> {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seed = var("SLUICEGATE_CMS_PROPERTY_SEED", 1);
    seed..seed + var("SLUICEGATE_CMS_PROPERTY_CASES", 12).div_ceil(every)
}

// ------------------------------------------------------------------ Directus

fn directus_sink(dir: &Path, url: &str, token: &str) -> sluicegate_sinks_cms::DirectusSink {
    std::fs::write(dir.join("directus-token"), format!("{token}\n")).unwrap();
    let section =
        json!({"url": url, "tokenFile": "directus-token", "timeoutSecs": 5, "maxAttempts": 10});
    let config: sluicegate_sinks_cms::DirectusSinkConfig =
        parse_section(section, "sinks.directus").unwrap();
    let mut ctx = BuildContext::new("products", false);
    ctx.base_dir = dir.to_path_buf();
    sluicegate_sinks_cms::DirectusSink::new(config, &ctx).unwrap()
}

async fn directus_run(
    sink: &sluicegate_sinks_cms::DirectusSink,
    collection: &str,
    batches: Vec<Vec<Record>>,
) -> (sluicegate_core::Result<BatchAck>, Vec<Rejected>) {
    write_batches(sink, collection, "sku", batches, |_| {}).await
}

async fn directus_case(seed: u64) {
    use sluicegate_examples::directus::directus;
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = directus();
    let collection = format!("props_{seed}");
    server
        .fresh_collection(&collection, &[("name", "string")])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let keys = rng.usize(1..60);
    let refused: Vec<bool> = (0..keys).map(|_| rng.u8(..8) == 0).collect();
    let key = |i: usize| format!("K{i:03}");
    let make = |rng: &mut fastrand::Rng, i: usize, bad: bool| {
        let name = if bad {
            "n".repeat(256 + rng.usize(..40))
        } else {
            text(rng)
        };
        into_record(json!({"sku": key(i), "name": name}))
    };
    let mut records = Vec::new();
    for (i, &bad) in refused.iter().enumerate() {
        for _ in 0..(if rng.u8(..5) == 0 { 2 } else { 1 }) {
            records.push(make(&mut rng, i, bad));
        }
    }
    rng.shuffle(&mut records);
    let mut last: BTreeMap<String, Record> = BTreeMap::new();
    for r in &records {
        last.insert(r["sku"].as_str().unwrap().to_owned(), r.clone());
    }
    let mut rules = Vec::new();
    for _ in 0..rng.usize(0..4) {
        let times = rng.u32(1..3);
        rules.push(match rng.u8(..5) {
            0 => FaultRule::new("/items/", FaultKind::Truncate, times).method("POST"),
            1 => FaultRule::new("/items/", FaultKind::Truncate, times).method("PATCH"),
            2 => FaultRule::new("/items/", FaultKind::Status(503, Vec::new()), times).method("GET"),
            3 => FaultRule::new("/items/", FaultKind::Reset, times).method("GET"),
            _ => {
                FaultRule::new("/items/", FaultKind::Status(503, Vec::new()), times).method("POST")
            }
        });
    }
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(addr, rules.clone()).await.unwrap();
    let batches = batches_of(&mut rng, records);
    let context = format!("directus seed {seed}: {keys} keys, faults {rules:?}");
    let (ack, rejected) = directus_run(
        &directus_sink(dir.path(), &proxy.url(), &server.token),
        &collection,
        batches,
    )
    .await;
    let ack = ack.unwrap_or_else(|e| panic!("{context}: the run failed: {e}"));
    assert_eq!(ack.failed, rejected.len() as u64, "{context}: {ack:?}");
    let got: BTreeSet<String> = rejected
        .iter()
        .map(|r| {
            r.key
                .clone()
                .unwrap_or_else(|| panic!("{context}: no key: {r:?}"))
        })
        .collect();
    let want: BTreeSet<String> = (0..keys).filter(|&i| refused[i]).map(key).collect();
    assert_eq!(got, want, "{context}: {rejected:#?}");
    let check = |items: Vec<Value>, fixed: &BTreeMap<String, Record>, all: bool| {
        let mut seen = BTreeSet::new();
        for item in &items {
            let sku = item["sku"].as_str().unwrap().to_owned();
            assert!(seen.insert(sku.clone()), "{context}: {sku} twice");
            assert_eq!(item["name"], fixed[&sku]["name"], "{context}: {sku}");
        }
        let want: BTreeSet<String> = (0..keys).filter(|&i| all || !refused[i]).map(key).collect();
        assert_eq!(seen, want, "{context}");
    };
    check(server.items(&collection).await, &last, false);
    // The cause fixed: the refused records with names that fit.
    let mut fixed = last.clone();
    for i in (0..keys).filter(|&i| refused[i]) {
        fixed.insert(key(i), make(&mut rng, i, false));
    }
    let (ack, rejected) = directus_run(
        &directus_sink(dir.path(), &server.url, &server.token),
        &collection,
        vec![fixed.values().cloned().collect()],
    )
    .await;
    let ack = ack.unwrap_or_else(|e| panic!("{context}: the second run failed: {e}"));
    assert!(
        rejected.is_empty() && ack.failed == 0,
        "{context}: {rejected:?}"
    );
    check(server.items(&collection).await, &fixed, true);
    server
        .try_call(
            reqwest::Method::DELETE,
            &format!("/collections/{collection}"),
            None,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directus_failures_are_counted_kept_and_delivered_later() {
    // Directus is slower: a third as many cases.
    for s in seeds(3) {
        directus_case(s).await;
    }
}
