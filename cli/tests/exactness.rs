//! Differential property suite: exit 0 means the sink holds exactly what the
//! source sent.
//!
//! Each case generates a dataset nobody picked by hand (nested values, unicode,
//! full-precision and huge numbers, exponents, late and type-changing fields,
//! sparse records, wide records of more fields than a table gets columns (the
//! rest in its `_extra` object), keys repeated on later pages), serves it from a real HTTP
//! server on 127.0.0.1 with a random pagination style, random page sizes,
//! empty pages where the style still says there is more and, sometimes, one
//! malformed or truncated answer; reads it with the `http` source through the
//! pipeline into a DuckDB file, with a checkpoint store, in sink batches of a
//! random number of records, in half the cases also full at a random number
//! of bytes. Invariants:
//! - a failed run names the page, and every record before its checkpoint is
//!   in DuckDB (the checkpoint is never ahead of the sink);
//! - the run after it (resuming from the checkpoint) succeeds, and DuckDB then
//!   holds, for every key, the last record the source sent for it, value for
//!   value under the documented type rules (`docs/reliability.md`).
//!
//! Kill points: the same cases through the real binary, killed with SIGKILL
//! once its checkpoint passed a random share of the records (or at once), one
//! or two times, then run until it ends: after each kill every record before
//! the checkpoint is in DuckDB (as sent, or a later version of its key), and
//! the run that ends exits 0 with DuckDB equal to the source. A quarter of
//! them run with the command's own batches (the sink's rows and bytes), the
//! rest with a random `--batch-size`.
//!
//! Database sources: generated rows in a real SQLite file, PostgreSQL and
//! MariaDB table (typed columns where the values allow, JSON columns for
//! nested and mixed values), read with random fetch sizes and batches as in
//! the HTTP cases: DuckDB then holds every row exactly as the database does
//! (JSON values with their JSON type, JSON `null` apart from SQL NULL).
//!
//! `SLUICEGATE_EXACTNESS_SEED` (default 1) and `SLUICEGATE_EXACTNESS_CASES`
//! (default 24 HTTP cases, 6 killed runs, 8 tables per database) choose the
//! cases; `scripts/exactness.sh MINUTES` runs new seeds for as long as asked.
//! A failure prints the seed that reproduces it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use sluicegate_adapters_db::{DbSourceConfig, Provider};
use sluicegate_adapters_http::{HttpSource, HttpSourceConfig};
use sluicegate_core::{
    BuildContext, CheckpointStore, Factory, MemoryBudget, MemoryCheckpointStore, Sink, Source,
    StreamTarget, parse_section,
};
use sluicegate_engine::{Pipeline, PipelineOptions};
use sluicegate_examples::dbserver::{self, DbKind};
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
/// One case in five is wide: 70 to 100 fields, each in a sixth of the
/// records, more than the DuckDB sink gives a table columns by default (64:
/// the others go into its `_extra` column).
fn records(rng: &mut fastrand::Rng, n: usize) -> Vec<Map<String, Value>> {
    let (width, presence) = if rng.u8(0..5) == 0 {
        (rng.usize(70..100), 6)
    } else {
        (rng.usize(3..10), 4)
    };
    let fields: Vec<(String, Profile, usize)> = (0..width)
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
                let present = if presence == 4 {
                    rng.u8(0..4) != 0
                } else {
                    rng.u8(0..presence) == 0
                };
                if id >= *from && present {
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
    /// Whether the broken answer is a truncated body (else malformed JSON).
    truncate: bool,
    /// How long each answer takes (the kill-point cases slow the API down so
    /// a run can be killed in its middle).
    delay: std::sync::Mutex<std::time::Duration>,
}

impl Api {
    fn body(&self, page: usize, envelope: impl FnOnce(String) -> String) -> Option<String> {
        let rows = self.pages.get(page).map_or(&[][..], Vec::as_slice);
        self.once_broken(page, envelope(serde_json::to_string(rows).unwrap()))
    }

    /// The body, or — the first time the broken page is asked for — a
    /// truncated one (cut in its middle, served as complete: `truncate`) or
    /// malformed JSON (`None`).
    fn once_broken(&self, page: usize, body: String) -> Option<String> {
        if self.broken != Some(page) || self.broke.swap(true, Ordering::SeqCst) {
            return Some(body);
        }
        self.truncate.then(|| {
            let mut cut = body.len() / 2;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body[..cut].to_owned()
        })
    }
}

fn json_text(body: Option<String>) -> Response {
    let body = body.unwrap_or_else(|| r#"{"results": [{"id": 1} {"id": 2}]}"#.to_owned());
    ([("content-type", "application/json")], body).into_response()
}

type Q = Query<HashMap<String, usize>>;

async fn by_page(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    let delay = *api.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
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
            let body = format!(
                r#"{{"total": {total}, "items": {}}}"#,
                serde_json::to_string(rows).unwrap()
            );
            json_text(api.once_broken(page, body))
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

/// A case: the API, its source section, the records in served order, and
/// how the pipeline gathers them into the sink's batches.
struct Case {
    api: Arc<Api>,
    served: Vec<Map<String, Value>>,
    section: Value,
    batching: Batching,
}

/// The most records and (sometimes) the most leased bytes of a sink batch: a
/// batch full at its bytes before its rows ends where no row count would.
#[derive(Debug, Clone, Copy)]
struct Batching {
    rows: usize,
    bytes: Option<usize>,
}

impl Batching {
    /// Drawn after everything else a case draws, so that a seed's data stays
    /// the same whatever this draws.
    fn draw(rng: &mut fastrand::Rng) -> Self {
        Self {
            rows: rng.usize(1..100),
            bytes: rng.bool().then(|| rng.usize(1..32 * 1024)),
        }
    }
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
            truncate: rng.bool(),
            delay: std::sync::Mutex::default(),
        }),
        served,
        section,
        batching: Batching::draw(rng),
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
    into_duckdb(source, db, store, case.batching, &ctx).await
}

/// Syncs `source` through the pipeline into table `records` (keyed on `id`)
/// of the DuckDB file `db`, in batches as `batching` says.
async fn into_duckdb(
    source: Arc<dyn Source>,
    db: &std::path::Path,
    store: Arc<MemoryCheckpointStore>,
    batching: Batching,
    ctx: &BuildContext,
) -> sluicegate_core::Result<()> {
    let sink = DuckDbSink::open(&DuckDbSinkConfig::new(db.display().to_string()), ctx)?;
    let writer = sink
        .open(StreamTarget::new("exact", "records", Some("id".into())))
        .await?;
    Pipeline::new("exact", "records", source, writer)
        .budget(MemoryBudget::from_mb(16))
        .checkpoints(store)
        .options(
            PipelineOptions::default()
                .with_batch_rows(batching.rows)
                .with_batch_bytes(batching.bytes)
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

/// Whether DuckDB's row (cells of `columns`) holds `record` exactly: each
/// field in its column, or, without one, in the row's `_extra` object with
/// the value sent (nulls left out).
fn row_holds(
    columns: &Columns,
    row: &[Option<String>],
    record: &Map<String, Value>,
) -> Result<(), String> {
    let mut extra = Map::new();
    for ((name, ty), cell) in columns.iter().zip(row) {
        if name == "_extra" {
            if let Some(cell) = cell {
                extra = serde_json::from_str(cell)
                    .map_err(|e| format!("_extra holds {cell:?}, not an object: {e}"))?;
            }
            continue;
        }
        let v = record.get(name).unwrap_or(&Value::Null);
        holds(ty, cell.as_deref(), v).map_err(|e| format!("field {name}: {e}"))?;
    }
    for (field, v) in record {
        if columns.iter().any(|(n, _)| n == field) {
            continue;
        }
        match (v, extra.remove(field)) {
            (Value::Null, None) => {}
            (v, Some(e)) if &e == v => {}
            (v, e) => {
                return Err(format!(
                    "field {field} has no column and _extra holds {e:?} for {v}"
                ));
            }
        }
    }
    if let Some(field) = extra.keys().next() {
        return Err(format!("_extra holds {field}, which the record does not"));
    }
    Ok(())
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
        row_holds(&columns, row, record).map_err(|e| format!("id {id}, {e}"))?;
    }
    Ok(())
}

/// After a run was killed with its checkpoint at `done` served records: every
/// record before the checkpoint is in DuckDB, as that record or as a later
/// version of its key (the sink may be ahead of the checkpoint, never behind).
fn compare_killed(
    db: &std::path::Path,
    served: &[Map<String, Value>],
    done: usize,
) -> Result<(), String> {
    let mut versions: BTreeMap<i64, Vec<&Map<String, Value>>> = BTreeMap::new();
    for (i, r) in served.iter().enumerate() {
        let id = r["id"].as_i64().unwrap();
        let list = versions.entry(id).or_default();
        if i < done {
            list.clear(); // only the last version before the checkpoint counts
        } else if list.is_empty() {
            continue; // a key first sent after the checkpoint
        }
        list.push(r);
    }
    let (columns, rows) = table(db);
    for (id, candidates) in versions.iter().filter(|(_, c)| !c.is_empty()) {
        let Some(row) = rows.get(id) else {
            return Err(format!("id {id}, before the checkpoint, is missing"));
        };
        let errors: Vec<String> = candidates
            .iter()
            .filter_map(|r| row_holds(&columns, row, r).err())
            .collect();
        if errors.len() == candidates.len() {
            return Err(format!(
                "id {id}, before the checkpoint: {}",
                errors.join("; ")
            ));
        }
    }
    Ok(())
}

/// Checks one case; how many of its rows hold fields in `_extra`.
async fn check(seed: u64) -> Result<usize, String> {
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
        return Ok(0);
    }
    compare(&db, &case.served, case.served.len())?;
    Ok(rows_with_extra(&db))
}

/// The rows of the table whose `_extra` is not NULL (0 without the column).
fn rows_with_extra(db: &std::path::Path) -> usize {
    let (columns, rows) = table(db);
    columns
        .iter()
        .position(|(name, _)| name == "_extra")
        .map_or(0, |i| rows.values().filter(|r| r[i].is_some()).count())
}

#[tokio::test]
async fn exit_zero_means_the_sink_holds_exactly_what_the_source_sent() {
    let seeds = seeds(24);
    let cases = seeds.end - seeds.start;
    let mut extra = 0;
    for s in seeds {
        match check(s).await {
            Ok(rows) => extra += rows,
            Err(e) => panic!(
                "seed {s} (SLUICEGATE_EXACTNESS_SEED={s} SLUICEGATE_EXACTNESS_CASES=1 reproduces it): {e}"
            ),
        }
    }
    // The wide cases reach `_extra` (a run of a few cases may have none).
    assert!(
        cases < 20 || extra >= 50,
        "only {extra} rows with fields in _extra in {cases} cases"
    );
}

// ---------------------------------------------------------------- kill points

/// The real binary's command for a case's configuration in `dir`.
/// The command for a killed case's runs: `--batch-size batch`, or without
/// it (the sink's own batches) when `batch` is `None`.
fn binary(dir: &std::path::Path, batch: Option<usize>) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.current_dir(dir)
        .args(["sync-api", "--key", "exact", "--streaming", "--apply"])
        .args(["--config", "sluicegate.yaml"]);
    if let Some(batch) = batch {
        cmd.args(["--batch-size", &batch.to_string()]);
    }
    cmd.env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .env_remove("SLUICEGATE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// One case through the real binary, killed with SIGKILL at random moments
/// (one or two times) and then run again until it ends: after every kill the
/// checkpoint is not ahead of DuckDB; a failed run names the page; the run
/// that ends exits 0, clears the checkpoint and leaves DuckDB equal to the
/// last record of every key.
async fn check_killed(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let case = case(&mut rng);
    // Slow enough that a run lasts long enough to be killed in its middle.
    *case.api.delay.lock().unwrap() = std::time::Duration::from_millis(rng.u64(5..30));
    let url = serve(case.api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut section = case.section.clone();
    section["endPoint"] = json!(format!("{url}/api"));
    section["type"] = json!("http");
    std::fs::write(
        dir.path().join("sluicegate.yaml"),
        format!(
            "version: 1\nsinks:\n  warehouse: {{ type: duckdb, path: exact.duckdb }}\nsyncs:\n  - key: exact\n    sink: warehouse\n    table: records\n    keyField: id\n    source: {section}\n"
        ),
    )
    .unwrap();
    let db = dir.path().join("exact.duckdb");
    let batch = (rng.u8(0..4) != 0).then(|| rng.usize(1..80));
    for kill in 0..rng.usize(1..3) {
        // Killed once the checkpoint passed a random share of the records (0:
        // at once, before anything committed), a random moment later.
        let share = if rng.u8(0..4) == 0 { 0.0 } else { rng.f64() };
        let target = (share * case.served.len() as f64) as usize;
        let later = std::time::Duration::from_millis(rng.u64(0..40));
        let mut child = binary(dir.path(), batch).spawn().unwrap();
        let started = std::time::Instant::now();
        let ended = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            let done =
                common::checkpoint(dir.path(), "exact").map_or(0, |p| records_done(&case, &p));
            if done >= target || started.elapsed().as_secs() > 60 {
                break false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        tokio::time::sleep(later).await;
        child.kill().unwrap_or_default();
        let _ = child.wait();
        if let Some(position) = common::checkpoint(dir.path(), "exact") {
            let done = records_done(&case, &position);
            compare_killed(&db, &case.served, done).map_err(|e| {
                format!(
                    "after kill {} (checkpoint past {target} records, then {later:?}; the run had ended: {ended}): {e}",
                    kill + 1
                )
            })?;
        }
    }
    // Then run to the end (a broken page fails one run, naming the page).
    for attempt in 0.. {
        let out = tokio::task::spawn_blocking({
            let mut cmd = binary(dir.path(), batch);
            move || cmd.output().unwrap()
        })
        .await
        .unwrap();
        if out.status.success() {
            break;
        }
        let stderr = common::text(&out.stderr);
        if attempt > 0 || case.api.broken.is_none() || !stderr.contains("page") {
            return Err(format!(
                "run {} after the kills failed: {stderr}",
                attempt + 1
            ));
        }
        if let Some(position) = common::checkpoint(dir.path(), "exact") {
            compare_killed(&db, &case.served, records_done(&case, &position))
                .map_err(|e| format!("after the failed run: {e}"))?;
        }
    }
    if common::checkpoint(dir.path(), "exact").is_some() {
        return Err("a complete run left a checkpoint".into());
    }
    compare(&db, &case.served, case.served.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_anywhere_resumes_to_exactly_what_the_source_sent() {
    for s in seeds(6) {
        if let Err(e) = check_killed(s).await {
            panic!(
                "seed {s} (SLUICEGATE_EXACTNESS_SEED={s} SLUICEGATE_EXACTNESS_CASES=1 reproduces it): {e}"
            );
        }
    }
}

// ---------------------------------------------------------------- database sources

/// The databases a case reads from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Db {
    Sqlite,
    Postgres,
    Mariadb,
}

/// How a generated field is stored in the source table.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stored {
    /// Integers within 64 bits: `BIGINT` (`INTEGER` in SQLite).
    Int,
    /// Fractions a double holds (neither huge nor subnormal): `DOUBLE`.
    Double,
    /// Strings only: text.
    Text,
    /// Anything else (nested, mixed types, booleans, huge numbers): a JSON
    /// column (PostgreSQL `json`, MariaDB `LONGTEXT` and SQLite `TEXT` named in
    /// `jsonColumns`), each value its JSON text, JSON `null` a value.
    Json,
}

fn stored_as<'a>(mut values: impl Iterator<Item = &'a Value>) -> Stored {
    let double = |n: &serde_json::Number| {
        n.as_i64().is_none()
            && integer(&n.to_string()).is_none()
            && n.as_f64()
                .is_some_and(|x| x == 0.0 || (1e-300..1e300).contains(&x.abs()))
    };
    let Some(first) = values.find(|v| !v.is_null()) else {
        return Stored::Text;
    };
    let kind = match first {
        Value::Number(n) if n.as_i64().is_some() => Stored::Int,
        Value::Number(n) if double(n) => Stored::Double,
        Value::String(_) => Stored::Text,
        _ => return Stored::Json,
    };
    let same = values.all(|v| match (v, kind) {
        (Value::Null, _) => true,
        (Value::Number(n), Stored::Int) => n.as_i64().is_some(),
        (Value::Number(n), Stored::Double) => double(n),
        (Value::String(_), Stored::Text) => true,
        _ => false,
    });
    if same { kind } else { Stored::Json }
}

/// A SQL string literal of `text` for `db` (MariaDB's take backslash escapes).
fn sql_text(db: Db, text: &str) -> String {
    let text = if db == Db::Mariadb {
        text.replace('\\', "\\\\")
    } else {
        text.to_owned()
    };
    format!("'{}'", text.replace('\'', "''"))
}

/// The statements that create table `records` holding `rows` in `db`, and the
/// fields stored as JSON.
fn table_sql(db: Db, rows: &[Map<String, Value>]) -> (String, Vec<(String, Stored)>) {
    let mut names: Vec<String> = Vec::new();
    for row in rows {
        for name in row.keys() {
            if name != "id" && !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let fields: Vec<(String, Stored)> = names
        .into_iter()
        .map(|name| {
            let stored = stored_as(rows.iter().filter_map(|r| r.get(&name)));
            (name, stored)
        })
        .collect();
    let column = |(name, stored): &(String, Stored)| {
        let ty = match (db, stored) {
            (Db::Postgres, Stored::Int) | (Db::Mariadb, Stored::Int) => "BIGINT",
            (Db::Sqlite, Stored::Int) => "INTEGER",
            (Db::Postgres, Stored::Double) => "DOUBLE PRECISION",
            (Db::Mariadb, Stored::Double) => "DOUBLE",
            (Db::Sqlite, Stored::Double) => "REAL",
            (Db::Postgres, Stored::Text) | (Db::Sqlite, Stored::Text | Stored::Json) => "TEXT",
            (Db::Postgres, Stored::Json) => "json",
            (Db::Mariadb, Stored::Text | Stored::Json) => "LONGTEXT",
        };
        format!("{name} {ty}")
    };
    let mut sql = format!(
        "DROP TABLE IF EXISTS records; CREATE TABLE records (id BIGINT PRIMARY KEY{}){};",
        fields
            .iter()
            .map(|f| format!(", {}", column(f)))
            .collect::<String>(),
        if db == Db::Mariadb {
            " DEFAULT CHARSET=utf8mb4"
        } else {
            ""
        }
    );
    // SQLite's own text-to-double conversion is not always correctly rounded
    // (`44e-249`): its rows are inserted with bound values (`sqlite_insert`).
    let literal_rows = if db == Db::Sqlite { &[][..] } else { rows };
    for chunk in literal_rows.chunks(50) {
        let values: Vec<String> = chunk
            .iter()
            .map(|row| {
                let mut cells = vec![row["id"].to_string()];
                for (name, stored) in &fields {
                    cells.push(match (row.get(name), stored) {
                        (None, _) => "NULL".to_owned(),
                        (Some(Value::Null), Stored::Json) => sql_text(db, "null"),
                        (Some(Value::Null), _) => "NULL".to_owned(),
                        (Some(Value::String(s)), Stored::Text) => sql_text(db, s),
                        (Some(v), Stored::Json) => sql_text(db, &v.to_string()),
                        (Some(v), _) => v.to_string(),
                    });
                }
                format!("({})", cells.join(", "))
            })
            .collect();
        sql.push_str(&format!(
            "INSERT INTO records VALUES {};",
            values.join(", ")
        ));
    }
    (sql, fields)
}

/// Inserts `rows` into SQLite's `records` with bound values: integers and
/// doubles as themselves (exactly), text and JSON text as text.
fn sqlite_insert(
    conn: &rusqlite::Connection,
    rows: &[Map<String, Value>],
    fields: &[(String, Stored)],
) -> rusqlite::Result<()> {
    use rusqlite::types::Value as V;
    let marks = vec!["?"; fields.len() + 1].join(", ");
    let mut insert = conn.prepare(&format!("INSERT INTO records VALUES ({marks})"))?;
    for row in rows {
        let mut values = vec![V::Integer(row["id"].as_i64().unwrap())];
        for (name, stored) in fields {
            values.push(match (row.get(name), stored) {
                (None, _) => V::Null,
                (Some(Value::Null), Stored::Json) => V::Text("null".into()),
                (Some(Value::Null), _) => V::Null,
                (Some(Value::Number(n)), Stored::Int) => V::Integer(n.as_i64().unwrap()),
                (Some(Value::Number(n)), Stored::Double) => V::Real(n.as_f64().unwrap()),
                (Some(Value::String(s)), Stored::Text) => V::Text(s.clone()),
                (Some(v), _) => V::Text(v.to_string()),
            });
        }
        insert.execute(rusqlite::params_from_iter(values))?;
    }
    Ok(())
}

/// Whether DuckDB holds exactly the table's rows: typed columns under the
/// number rules, JSON columns as the same JSON value (JSON `null` as `null`,
/// SQL NULL as NULL), and a field without a column (a table past the sink's
/// 64 columns) as a member of the row's `_extra` object, the same value.
fn compare_db(
    db: &std::path::Path,
    rows: &[Map<String, Value>],
    fields: &[(String, Stored)],
) -> Result<(), String> {
    let (columns, got) = table(db);
    if got.len() != rows.len() {
        return Err(format!(
            "{} rows in DuckDB, {} in the source",
            got.len(),
            rows.len()
        ));
    }
    for row in rows {
        let id = row["id"].as_i64().unwrap();
        let cells = got.get(&id).ok_or_else(|| format!("id {id} is missing"))?;
        let extra: Map<String, Value> = columns
            .iter()
            .position(|(n, _)| n == "_extra")
            .and_then(|i| cells[i].as_deref())
            .map(|c| serde_json::from_str(c).unwrap())
            .unwrap_or_default();
        for (name, stored) in fields {
            let at = columns.iter().position(|(n, _)| n == name);
            let v = row.get(name);
            let Some(i) = at else {
                let e = extra.get(name);
                let ok = match (stored, v, e) {
                    (Stored::Json, None, None) => true,
                    (Stored::Json, Some(v), Some(e)) => v == e,
                    (_, None | Some(Value::Null), None) => true,
                    (Stored::Double, Some(v), Some(e)) => {
                        v.as_f64().map(f64::to_bits) == e.as_f64().map(f64::to_bits)
                    }
                    (_, Some(v), Some(e)) => v == e,
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "id {id}, field {name} ({stored:?} in the source): _extra holds {e:?} for {v:?}"
                    ));
                }
                continue;
            };
            let (ty, cell) = (columns[i].1.as_str(), cells[i].as_deref());
            let ok = match (stored, v) {
                (Stored::Json, None) => cell.is_none(),
                (Stored::Json, Some(v)) => {
                    ty == "JSON"
                        && cell.map(|c| serde_json::from_str::<Value>(c).ok())
                            == Some(Some(v.clone()))
                }
                (_, None) => cell.is_none(),
                (_, Some(v)) => holds(ty, cell, v).is_ok(),
            };
            if !ok {
                return Err(format!(
                    "id {id}, field {name} ({stored:?} in the source): {ty} column holds {cell:?} for {v:?}"
                ));
            }
        }
    }
    Ok(())
}

async fn check_db(seed: u64, kind: Db) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = rng.usize(1..300);
    let rows = records(&mut rng, n);
    let (sql, fields) = table_sql(kind, &rows);
    let dir = tempfile::tempdir().unwrap();
    let (provider, url) = match kind {
        Db::Sqlite => {
            let path = dir.path().join("source.db");
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(&sql)
                .map_err(|e| format!("SQLite refused the table: {e}"))?;
            sqlite_insert(&conn, &rows, &fields)
                .map_err(|e| format!("SQLite refused the data: {e}"))?;
            (Provider::Sqlite, path.display().to_string())
        }
        Db::Postgres => {
            let url = dbserver::postgres().fresh_database("exactness").await;
            dbserver::execute(DbKind::Postgres, &url, &sql).await;
            (Provider::Postgres, url)
        }
        Db::Mariadb => {
            let url = dbserver::mariadb().fresh_database("exactness").await;
            dbserver::execute(DbKind::Mariadb, &url, &sql).await;
            (Provider::Mysql, url)
        }
    };
    let json_columns: Vec<&str> = fields
        .iter()
        .filter(|(_, s)| *s == Stored::Json && kind != Db::Postgres)
        .map(|(n, _)| n.as_str())
        .collect();
    let section = json!({
        "connectionString": url,
        "table": "records",
        "orderBy": "id",
        "fetchSize": rng.usize(1..80),
        "jsonColumns": json_columns,
    });
    let db = dir.path().join("exact.duckdb");
    let ctx = BuildContext::new("exact", false);
    let run = async {
        let factory = sluicegate_adapters_db::factory(provider);
        let config: DbSourceConfig = parse_section(section, "source")?;
        factory.validate(&config, &ctx)?;
        let source = factory.build(config, &ctx).await?;
        let store = Arc::new(MemoryCheckpointStore::default());
        into_duckdb(source, &db, store, Batching::draw(&mut rng), &ctx).await
    };
    run.await.map_err(|e| format!("the sync failed: {e}"))?;
    compare_db(&db, &rows, &fields)
}

/// The seeds and case count of a run (`SLUICEGATE_EXACTNESS_SEED`,
/// `SLUICEGATE_EXACTNESS_CASES`, or the defaults).
fn seeds(default_cases: u64) -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
    let seed: u64 = var("SLUICEGATE_EXACTNESS_SEED").unwrap_or(1);
    seed..seed + var("SLUICEGATE_EXACTNESS_CASES").unwrap_or(default_cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_read_lands_in_duckdb_exactly_as_the_database_holds_it() {
    for s in seeds(8) {
        for kind in [Db::Sqlite, Db::Postgres, Db::Mariadb] {
            if let Err(e) = check_db(s, kind).await {
                panic!(
                    "{kind:?}, seed {s} (SLUICEGATE_EXACTNESS_SEED={s} SLUICEGATE_EXACTNESS_CASES=1 reproduces it): {e}"
                );
            }
        }
    }
}
