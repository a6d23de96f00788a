//! Differential property suite: exit 0 means the sink holds exactly what the
//! source sent.
//!
//! Each case generates a dataset nobody picked by hand (nested values, unicode,
//! full-precision and huge numbers, exponents, late and type-changing fields,
//! sparse records, keys repeated on later pages), serves it from a real HTTP
//! server on 127.0.0.1 with a random pagination style, random page sizes,
//! empty pages where the style still says there is more and, sometimes, one
//! malformed answer; reads it with the `http` source through the pipeline into
//! a DuckDB file, with a checkpoint store. Invariants:
//! - a failed run names the page, and every record before its checkpoint is
//!   in DuckDB (the checkpoint is never ahead of the sink);
//! - the run after it (resuming from the checkpoint) succeeds, and DuckDB then
//!   holds, for every key, the last record the source sent for it, value for
//!   value under the documented type rules (`docs/reliability.md`).
//!
//! `SLUICEGATE_EXACTNESS_SEED` (default 1) and `SLUICEGATE_EXACTNESS_CASES`
//! (default 24) choose the cases; `scripts/exactness.sh MINUTES` runs new
//! seeds for as long as asked. A failure prints the seed that reproduces it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use sluicegate_adapters_http::{HttpSource, HttpSourceConfig};
use sluicegate_core::{
    BuildContext, CheckpointStore, MemoryBudget, MemoryCheckpointStore, Sink, StreamTarget,
    parse_section,
};
use sluicegate_engine::{Pipeline, PipelineOptions};
use sluicegate_sinks_duckdb::{DuckDbSink, DuckDbSinkConfig};

// ---------------------------------------------------------------- the data

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A JSON number as a source would send it: its text is what counts.
fn number(rng: &mut fastrand::Rng) -> Value {
    let text = match rng.u8(0..12) {
        0 => rng.i64(-1000..1000).to_string(),
        1 => rng.i64(..).to_string(),
        2 => [
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
        ][rng.usize(0..3)]
        .to_owned(),
        3 => format!(
            "{}{}",
            if rng.bool() { "-" } else { "" },
            rng.u128(1 << 64..u128::MAX >> 1)
        ),
        4 => format!("{}{:040}", rng.u8(1..9), rng.u64(..)),
        5..=7 => {
            let x = f64::from_bits(rng.u64(0x3000_0000_0000_0000..0x4400_0000_0000_0000));
            format!("{:?}", if rng.bool() { x } else { -x })
        }
        8 => format!("{}.{}", rng.u32(..), rng.u64(..)),
        9 => [
            "0.0",
            "-0.0",
            "1e-7",
            "5e-324",
            "1.7976931348623157e308",
            "1E+300",
            "-2.5E-3",
        ][rng.usize(0..7)]
        .to_owned(),
        10 => format!("{}e{}", rng.i32(-99..99), rng.i32(-300..300)),
        _ => "0.1000000000000000055511151231257827021181583404541015625".to_owned(),
    };
    parse(&text)
}

fn string(rng: &mut fastrand::Rng) -> Value {
    const PIECES: [&str; 14] = [
        "a",
        "Zürich",
        "東京",
        "🦀",
        "\"quoted\"",
        "back\\slash",
        "line\nbreak",
        "\t",
        " ",
        "مرحبا",
        "e\u{301}",
        "{\"not\": \"json\"}",
        "123",
        "",
    ];
    let n = rng.usize(0..4);
    Value::String((0..n).map(|_| PIECES[rng.usize(0..PIECES.len())]).collect())
}

fn value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    match rng.u8(0..if depth > 2 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 | 3 => number(rng),
        4 => string(rng),
        5 | 6 => Value::Object(
            (0..rng.usize(0..4))
                .map(|i| (format!("k{i}"), value(rng, depth + 1)))
                .collect(),
        ),
        _ => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| value(rng, depth + 1))
                .collect(),
        ),
    }
}

/// What kind of value a field usually holds.
#[derive(Clone, Copy)]
enum Profile {
    Numbers,
    Strings,
    Nested,
    Mixed,
}

fn field_value(rng: &mut fastrand::Rng, profile: Profile) -> Value {
    // Now and then a field changes type, or is null.
    if rng.u8(0..20) == 0 {
        return value(rng, 0);
    }
    if rng.u8(0..15) == 0 {
        return Value::Null;
    }
    match profile {
        Profile::Numbers => number(rng),
        Profile::Strings => string(rng),
        Profile::Nested => value(rng, 1),
        Profile::Mixed => value(rng, 0),
    }
}

/// Records with unique ids 0..n; some fields appear late, most are sparse.
fn records(rng: &mut fastrand::Rng, n: usize) -> Vec<Map<String, Value>> {
    let fields: Vec<(String, Profile, usize)> = (0..rng.usize(3..10))
        .map(|i| {
            let profile = [
                Profile::Numbers,
                Profile::Strings,
                Profile::Nested,
                Profile::Mixed,
            ][rng.usize(0..4)];
            let from = if rng.u8(0..4) == 0 {
                rng.usize(0..n.max(1))
            } else {
                0
            };
            (format!("f{i}"), profile, from)
        })
        .collect();
    (0..n)
        .map(|id| {
            let mut r = Map::new();
            r.insert("id".into(), json!(id));
            for (name, profile, from) in &fields {
                if id >= *from && rng.u8(0..4) != 0 {
                    r.insert(name.clone(), field_value(rng, *profile));
                }
            }
            r
        })
        .collect()
}

// ---------------------------------------------------------------- the API

#[derive(Debug, Clone, Copy, PartialEq)]
enum Style {
    PageNumber,
    Cursor,
    NextUrl,
    Link,
    Offset,
}

struct Api {
    style: Style,
    /// Pages as served (the offset style serves `flat` instead).
    pages: Vec<Vec<Map<String, Value>>>,
    flat: Vec<Map<String, Value>>,
    /// The page (0-based) answered once with broken JSON.
    broken: Option<usize>,
    broke: AtomicBool,
}

impl Api {
    fn body(&self, page: usize, envelope: impl FnOnce(String) -> String) -> Option<String> {
        if self.broken == Some(page) && !self.broke.swap(true, Ordering::SeqCst) {
            return None;
        }
        let rows = self.pages.get(page).map_or(&[][..], Vec::as_slice);
        Some(envelope(serde_json::to_string(rows).unwrap()))
    }
}

fn json_text(body: Option<String>) -> Response {
    let body = body.unwrap_or_else(|| r#"{"results": [{"id": 1} {"id": 2}]}"#.to_owned());
    ([("content-type", "application/json")], body).into_response()
}

type Q = Query<HashMap<String, usize>>;

async fn by_page(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    let page = q.get("page").copied().unwrap_or(0);
    let n = api.pages.len();
    // The next page's token (a page number or a URL), JSON null after the last.
    let next = |token: String| {
        if page + 1 < n {
            format!("\"{token}\"")
        } else {
            "null".to_owned()
        }
    };
    match api.style {
        Style::PageNumber => json_text(api.body(page, |rows| {
            format!(r#"{{"pages": {n}, "results": {rows}}}"#)
        })),
        Style::Cursor => json_text(api.body(page, |rows| {
            let next = next((page + 1).to_string());
            format!(r#"{{"data": {rows}, "next": {next}}}"#)
        })),
        Style::NextUrl => json_text(api.body(page, |rows| {
            let next = next(format!("/api?page={}", page + 1));
            format!(r#"{{"value": {rows}, "next": {next}}}"#)
        })),
        Style::Link => {
            let mut r = json_text(api.body(page, |rows| rows));
            if page + 1 < n {
                let link = format!("</api?page={}>; rel=\"next\"", page + 1);
                r.headers_mut().insert("link", link.parse().unwrap());
            }
            r
        }
        Style::Offset => {
            let offset = q.get("offset").copied().unwrap_or(0);
            let limit = q.get("limit").copied().unwrap_or(10);
            let page = offset / limit.max(1);
            let rows = &api.flat[offset.min(api.flat.len())..(offset + limit).min(api.flat.len())];
            let total = api.flat.len();
            let body =
                (api.broken != Some(page) || api.broke.swap(true, Ordering::SeqCst)).then(|| {
                    format!(
                        r#"{{"total": {total}, "items": {}}}"#,
                        serde_json::to_string(rows).unwrap()
                    )
                });
            json_text(body)
        }
    }
}

async fn serve(api: Arc<Api>) -> String {
    let app = Router::new().route("/api", get(by_page)).with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A case: the API, its source section, and the records in served order.
struct Case {
    api: Arc<Api>,
    served: Vec<Map<String, Value>>,
    section: Value,
}

fn case(rng: &mut fastrand::Rng) -> Case {
    let n = rng.usize(1..400);
    let base = records(rng, n);
    // Served order: every record once, plus later repeats of some keys with
    // other values (the later one must win).
    let mut served = base.clone();
    for _ in 0..rng.usize(0..n / 5 + 1) {
        let mut again = base[rng.usize(0..n)].clone();
        if let Some((_, v)) = again.iter_mut().nth(1) {
            *v = value(rng, 0);
        }
        served.push(again);
    }
    let style = [
        Style::PageNumber,
        Style::Cursor,
        Style::NextUrl,
        Style::Link,
        Style::Offset,
    ][rng.usize(0..5)];
    let concurrency = if rng.bool() { 1 } else { 3 };
    let page_size = rng.usize(1..60);
    let mut pages = Vec::new();
    if style != Style::Offset {
        // Pages of random sizes, some empty (while more follow).
        let mut rest = served.as_slice();
        while !rest.is_empty() {
            if rng.u8(0..6) == 0 {
                pages.push(Vec::new());
            }
            let take = rng.usize(1..page_size + 1).min(rest.len());
            pages.push(rest[..take].to_vec());
            rest = &rest[take..];
        }
    }
    let n_pages = if style == Style::Offset {
        served.len().div_ceil(page_size)
    } else {
        pages.len()
    };
    let broken = (rng.u8(0..3) == 0).then(|| rng.usize(0..n_pages));
    let (path, pagination) = match style {
        Style::PageNumber => (
            "results",
            json!({"type": "page_number", "pageKey": "page", "basePage": 0, "totalPagesPath": "pages"}),
        ),
        Style::Cursor => (
            "data",
            json!({"type": "cursor", "cursorPath": "next", "cursorParam": "page"}),
        ),
        Style::NextUrl => ("value", json!({"type": "next_url", "nextUrlPath": "next"})),
        Style::Link => ("", json!({"type": "link_header"})),
        Style::Offset => (
            "items",
            json!({"skipKey": "offset", "limitKey": "limit", "pageSize": page_size, "totalPath": "total"}),
        ),
    };
    let section = json!({
        "endPoint": "/api",
        "resultsJsonPath": path,
        "pagination": pagination,
        "concurrency": concurrency,
        "retry": {"maxAttempts": 2, "initialBackoffMs": 1, "maxBackoffMs": 2},
    });
    Case {
        api: Arc::new(Api {
            style,
            pages,
            flat: served.clone(),
            broken,
            broke: AtomicBool::new(false),
        }),
        served,
        section,
    }
}

// ---------------------------------------------------------------- the run

async fn run(
    url: &str,
    case: &Case,
    db: &std::path::Path,
    store: Arc<MemoryCheckpointStore>,
) -> sluicegate_core::Result<()> {
    let mut section = case.section.clone();
    section["endPoint"] = json!(format!("{url}/api"));
    let ctx = BuildContext::new("exact", false);
    let config: HttpSourceConfig = parse_section(section, "source")?;
    let source = Arc::new(HttpSource::new(&config, &ctx)?);
    let sink = DuckDbSink::open(&DuckDbSinkConfig::new(db.display().to_string()), &ctx)?;
    let writer = sink
        .open(StreamTarget::new("exact", "records", Some("id".into())))
        .await?;
    Pipeline::new("exact", "records", source, writer)
        .budget(MemoryBudget::from_mb(16))
        .checkpoints(store)
        .options(
            PipelineOptions::default()
                .with_batch_rows(37)
                .with_transform_rows(None),
        )
        .run()
        .await
        .map(|_| ())
}

/// How many served records a checkpoint position says are done.
fn records_done(case: &Case, position: &Value) -> usize {
    let pages_done = match case.api.style {
        Style::Offset => return position["offset"].as_u64().unwrap() as usize,
        Style::PageNumber => position["page"].as_u64().unwrap() as usize,
        Style::Cursor => position["cursor"].as_str().unwrap().parse().unwrap(),
        Style::NextUrl | Style::Link => {
            let url = position["url"].as_str().unwrap();
            url.rsplit_once("page=").unwrap().1.parse().unwrap()
        }
    };
    case.api.pages[..pages_done].iter().map(Vec::len).sum()
}

// ---------------------------------------------------------------- the comparison

/// Column names and DuckDB types, in order.
type Columns = Vec<(String, String)>;
/// Rows by id: every cell as text (doubles as `bits:N`), `None` for NULL.
type Rows = BTreeMap<i64, Vec<Option<String>>>;

/// DuckDB's table: its columns and rows.
fn table(db: &std::path::Path) -> (Columns, Rows) {
    let conn = duckdb::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'records' ORDER BY ordinal_position")
        .unwrap();
    let columns: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    if columns.is_empty() {
        return (columns, BTreeMap::new());
    }
    // Doubles are read as doubles; everything else as text.
    let list: Vec<String> = columns
        .iter()
        .map(|(name, ty)| {
            let q = format!("\"{}\"", name.replace('"', "\"\""));
            if ty == "DOUBLE" {
                q
            } else {
                format!("CAST({q} AS VARCHAR)")
            }
        })
        .collect();
    let mut stmt = conn
        .prepare(&format!("SELECT {} FROM records", list.join(", ")))
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut out = BTreeMap::new();
    let id_col = columns.iter().position(|(n, _)| n == "id").unwrap();
    while let Some(row) = rows.next().unwrap() {
        let cells: Vec<Option<String>> = (0..columns.len())
            .map(|i| match row.get_ref(i).unwrap() {
                duckdb::types::ValueRef::Null => None,
                duckdb::types::ValueRef::Double(f) => Some(format!("bits:{}", f.to_bits())),
                duckdb::types::ValueRef::Text(t) => Some(String::from_utf8(t.to_vec()).unwrap()),
                other => Some(format!("{other:?}")),
            })
            .collect();
        let id: i64 = cells[id_col].as_deref().unwrap().parse().unwrap();
        assert!(
            out.insert(id, cells).is_none(),
            "id {id} is in the table twice"
        );
    }
    (columns, out)
}

fn integer(text: &str) -> Option<i128> {
    text.parse().ok()
}

/// A number in a `VARCHAR` or `JSON` cell: its source text, or — for a value
/// stored while the column was `DOUBLE` (so one a double holds exactly: a
/// fraction, or an integer within ±2^53) — DuckDB's text of the same double.
fn same_number(stored: &str, n: &serde_json::Number) -> bool {
    if stored == n.to_string() {
        return true;
    }
    let text = n.to_string();
    let fits = match integer(&text) {
        Some(i) => i.unsigned_abs() <= 1 << 53,
        None => n.as_f64().is_some(),
    };
    let want = n.as_f64().map(|x| if x == 0.0 { 0.0 } else { x });
    fits && stored
        .parse::<f64>()
        .ok()
        .map(|x| if x == 0.0 { 0.0 } else { x })
        .map(f64::to_bits)
        == want.map(f64::to_bits)
}

/// Whether the stored cell is the source value under the type rules.
fn holds(ty: &str, cell: Option<&str>, v: &Value) -> Result<(), String> {
    let ok = match (v, cell) {
        (Value::Null, None) => true,
        (Value::Null, Some(_)) | (_, None) => false,
        (Value::Number(n), Some(c)) if ty == "BIGINT" || ty == "HUGEINT" => {
            integer(&n.to_string()).is_some() && integer(&n.to_string()) == integer(c)
        }
        (Value::Number(n), Some(c)) if ty == "DOUBLE" => {
            let want = n.as_f64().map(|x| if x == 0.0 { 0.0 } else { x });
            want.map(|x| format!("bits:{}", x.to_bits())).as_deref() == Some(c)
        }
        (Value::Bool(b), Some(c)) if ty == "BOOLEAN" => c == b.to_string(),
        (Value::String(s), Some(c)) if ty == "VARCHAR" => c == s,
        (Value::Number(n), Some(c)) if ty == "VARCHAR" || ty == "JSON" => same_number(c, n),
        (Value::Bool(b), Some(c)) if ty == "VARCHAR" => c == b.to_string(),
        (Value::Array(_) | Value::Object(_), Some(c)) if ty == "VARCHAR" || ty == "JSON" => {
            serde_json::from_str::<Value>(c).ok().as_ref() == Some(v)
        }
        (_, Some(c)) if ty == "JSON" => serde_json::from_str::<Value>(c).ok().as_ref() == Some(v),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{ty} column holds {cell:?} for {v}"))
    }
}

fn compare(db: &std::path::Path, served: &[Map<String, Value>], upto: usize) -> Result<(), String> {
    let mut want: BTreeMap<i64, &Map<String, Value>> = BTreeMap::new();
    for r in &served[..upto] {
        want.insert(r["id"].as_i64().unwrap(), r);
    }
    let (columns, rows) = table(db);
    for (id, record) in &want {
        let Some(row) = rows.get(id) else {
            return Err(format!("id {id} is missing"));
        };
        for ((name, ty), cell) in columns.iter().zip(row) {
            let v = record.get(name).unwrap_or(&Value::Null);
            holds(ty, cell.as_deref(), v).map_err(|e| format!("id {id}, field {name}: {e}"))?;
        }
        for field in record.keys() {
            if !columns.iter().any(|(n, _)| n == field) && !record[field].is_null() {
                return Err(format!("id {id}: field {field} has no column"));
            }
        }
    }
    Ok(())
}

async fn check(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let case = case(&mut rng);
    let url = serve(case.api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("exact.duckdb");
    let store = Arc::new(MemoryCheckpointStore::default());
    if let Err(e) = run(&url, &case, &db, store.clone()).await {
        let text = e.to_string();
        if case.api.broken.is_none() {
            return Err(format!("a run without faults failed: {text}"));
        }
        if !text.contains("page") {
            return Err(format!("the error does not name the page: {text}"));
        }
        // The checkpoint is never ahead of the sink.
        if let Some(position) = store.load("exact", "records").unwrap() {
            let done = records_done(&case, position.as_value());
            if db.exists() {
                compare(&db, &case.served, done)
                    .map_err(|e| format!("after the failed run, before its checkpoint: {e}"))?;
            } else if done > 0 {
                return Err("a checkpoint but no database".into());
            }
        }
        run(&url, &case, &db, store.clone())
            .await
            .map_err(|e| format!("the resumed run failed: {e}"))?;
    }
    if store.load("exact", "records").unwrap().is_some() {
        return Err("a complete run left a checkpoint".into());
    }
    if case.served.is_empty() {
        return Ok(());
    }
    compare(&db, &case.served, case.served.len())
}

#[tokio::test]
async fn exit_zero_means_the_sink_holds_exactly_what_the_source_sent() {
    let seed: u64 = std::env::var("SLUICEGATE_EXACTNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let cases: u64 = std::env::var("SLUICEGATE_EXACTNESS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    for s in seed..seed + cases {
        if let Err(e) = check(s).await {
            panic!(
                "seed {s} (SLUICEGATE_EXACTNESS_SEED={s} SLUICEGATE_EXACTNESS_CASES=1 reproduces it): {e}"
            );
        }
    }
}
