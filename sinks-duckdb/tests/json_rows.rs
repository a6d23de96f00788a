//! Differential property test: batches that arrive as JSON text (parsed
//! straight into columns when they fit the table) leave the table exactly as
//! the same batches decoded into records do.
//!
//! Each case generates batches nobody picked by hand: integers of every width,
//! doubles, exponents (`1E5`, `1e-7`), numbers beyond every type, unicode and
//! escaped strings, nested values written with whitespace and escapes, nulls,
//! missing and late fields, fields that change type, keys repeated or out of
//! order (whole batches in random order too), records without a key, keys that are strings, fields the source
//! declares JSON (as a database source does for its JSON columns: every value,
//! `null` too, stored as JSON text). Every batch is written
//! both ways into two database files, and a third time as JSON text parsed
//! ahead by the writer's preparer one batch early (as the pipeline does, so
//! against the table as it was before the batch ahead of it); then the tables
//! must have the same columns, types and rows. `SLUICEGATE_JSON_ROWS_SEED` (default 1) and
//! `SLUICEGATE_JSON_ROWS_CASES` (default 40) choose the cases.

mod common;

use std::sync::Arc;

use common::{env_number, sink_with, table};
use serde_json::{Map, Value};
use sluicegate_core::{Batch, JsonFields, JsonRows, MemoryBudget, Sink, StreamTarget, into_record};
use sluicegate_sinks_duckdb::DuckDbSink;

// ---------------------------------------------------------------- the data

/// A number's text as a source might write it.
fn number(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..10) {
        0 => rng.i64(-1000..1000).to_string(),
        1 => rng.i64(..).to_string(),
        2 => [
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "-0",
        ][rng.usize(0..4)]
        .to_owned(),
        3 => format!("{}{:030}", rng.u8(1..9), rng.u64(..)),
        4 | 5 => {
            let x = f64::from_bits(rng.u64(0x3000_0000_0000_0000..0x4400_0000_0000_0000));
            format!("{:?}", if rng.bool() { x } else { -x })
        }
        6 => format!("{}E{}", rng.u16(1..999), rng.i16(-30..30)),
        7 => format!("{}.{}e+{}", rng.u8(1..9), rng.u16(..), rng.u8(0..20)),
        8 => ["1e400", "-2E+999", "1e-400", "0.0", "-0.0"][rng.usize(0..5)].to_owned(),
        _ => format!("{}.{:03}", rng.i32(-5000..5000), rng.u16(0..1000)),
    }
}

fn string(rng: &mut fastrand::Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Zürich",
        "日本語",
        "😀",
        "\"",
        "\\",
        "/",
        "\n",
        "\t",
        "\u{1}",
        "\u{7f}",
        " ",
        "",
        "null",
        "1e5",
        "{\"a\":1}",
        "Ω≈ç√",
    ];
    (0..rng.usize(0..6))
        .map(|_| PIECES[rng.usize(0..PIECES.len())])
        .collect()
}

/// A value of `kind` (a field keeps its kind, so most batches fit the table).
fn value(rng: &mut fastrand::Rng, kind: u8, depth: u32) -> Value {
    let text = match kind {
        0 => number(rng),
        1 => rng.i64(-100_000..100_000).to_string(),
        2 => format!("{:?}", rng.f64() * 1000.0),
        3 => serde_json::to_string(&string(rng)).unwrap(),
        4 => rng.bool().to_string(),
        5 if depth < 3 => {
            let items: Vec<Value> = (0..rng.usize(0..4))
                .map(|_| {
                    let kind = rng.u8(0..7);
                    value(rng, kind, depth + 1)
                })
                .collect();
            return Value::Array(items);
        }
        6 if depth < 3 => {
            let mut map = Map::new();
            for _ in 0..rng.usize(0..4) {
                let (name, kind) = (string(rng), rng.u8(0..7));
                map.insert(name, value(rng, kind, depth + 1));
            }
            return Value::Object(map);
        }
        _ => "null".to_owned(),
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// JSON text of `v` written with random whitespace, escapes and exponent
/// spellings: what different servers send for the same value.
fn write(v: &Value, rng: &mut fastrand::Rng, out: &mut String) {
    let space = |rng: &mut fastrand::Rng, out: &mut String| {
        out.push_str(["", "", "", " ", "\n  ", "\t"][rng.usize(0..6)]);
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let text = n.as_str();
            match rng.u8(0..3) {
                0 => out.push_str(&text.replace("e+", "E")),
                1 => out.push_str(&text.replace("e+", "e").replace('e', "E")),
                _ => out.push_str(text),
            }
        }
        Value::String(s) => write_string(s, rng, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(rng, out);
                write(item, rng, out);
            }
            space(rng, out);
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(rng, out);
                write_string(k, rng, out);
                space(rng, out);
                out.push(':');
                space(rng, out);
                write(item, rng, out);
            }
            space(rng, out);
            out.push('}');
        }
    }
}

fn write_string(s: &str, rng: &mut fastrand::Rng, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if rng.bool() => out.push_str("\\/"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if !c.is_ascii() && rng.bool() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One case: batches of (record text) for a stream with or without a key.
struct Case {
    key: Option<&'static str>,
    /// Fields the source declares JSON.
    declared: Vec<String>,
    batches: Vec<Vec<String>>,
    /// The sink's `maxColumns`: in some cases a few, so that later fields go
    /// into the table's `_extra` column.
    max_columns: usize,
}

fn case(rng: &mut fastrand::Rng) -> Case {
    let fields = rng.usize(1..12);
    let mut kinds: Vec<u8> = (0..fields).map(|_| rng.u8(0..8)).collect();
    let string_keys = rng.u8(0..4) == 0;
    let key = (rng.u8(0..5) != 0).then_some("id");
    // Some streams send each batch's records in any order (an API sorted by
    // another field).
    let shuffled = rng.u8(0..4) == 0;
    let declared: Vec<String> = if rng.u8(0..3) == 0 {
        (0..fields + 1)
            .filter(|_| rng.bool())
            .map(|f| format!("f{f}"))
            .collect()
    } else {
        Vec::new()
    };
    let mut next_id: i64 = rng.i64(-50..50);
    let mut batches = Vec::new();
    for b in 0..rng.usize(2..9) {
        // Later batches sometimes change a field's kind or add a field.
        if b > 0 && rng.u8(0..6) == 0 {
            let f = rng.usize(0..kinds.len());
            kinds[f] = rng.u8(0..8);
        }
        if b > 0 && rng.u8(0..6) == 0 {
            kinds.push(rng.u8(0..8));
        }
        let mut texts = Vec::new();
        for _ in 0..rng.usize(0..40) {
            let mut record = Map::new();
            let id = match rng.u8(0..200) {
                0 => next_id - rng.i64(0..5), // repeated or out of order
                _ => {
                    next_id += rng.i64(1..4);
                    next_id
                }
            };
            let id_value = if string_keys {
                Value::String(format!("k{id:06}"))
            } else {
                Value::from(id)
            };
            if rng.u16(0..400) != 0 {
                record.insert("id".to_owned(), id_value);
            }
            for (f, kind) in kinds.iter().enumerate() {
                if rng.u8(0..5) != 0 {
                    record.insert(format!("f{f}"), value(rng, *kind, 0));
                }
            }
            if rng.u16(0..400) == 0 {
                record.insert("F0".to_owned(), Value::from(1)); // a case-colliding name
            }
            if rng.u16(0..300) == 0 {
                // The sink's own column name: always in `_extra`.
                let kind = rng.u8(0..8);
                record.insert("_extra".to_owned(), value(rng, kind, 0));
            }
            let mut text = String::new();
            write(&Value::Object(record), rng, &mut text);
            texts.push(text);
        }
        if shuffled {
            rng.shuffle(&mut texts);
        }
        batches.push(texts);
    }
    let max_columns = if rng.u8(0..3) == 0 {
        rng.usize(1..6)
    } else {
        sluicegate_sinks_duckdb::config::DEFAULT_MAX_COLUMNS
    };
    Case {
        key,
        declared,
        batches,
        max_columns,
    }
}

// ---------------------------------------------------------------- the check

/// How a case's batches reach the writer.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// Decoded into records.
    Records,
    /// As JSON text.
    Text,
    /// As JSON text, each batch prepared by the writer's preparer before the
    /// batch ahead of it is written, as the pipeline does (so against the
    /// table as it was one batch earlier).
    TextPreparedAhead,
}

async fn write_case(sink: &DuckDbSink, case: &Case, form: Form) {
    let budget = MemoryBudget::unlimited();
    let target = StreamTarget::new("t", "t", case.key.map(str::to_owned));
    let mut writer = sink.open(target).await.unwrap();
    let preparer = match form {
        Form::TextPreparedAhead => Some(writer.extension().unwrap().preparer().unwrap()),
        _ => None,
    };
    let declared = Arc::new(JsonFields::new(case.declared.iter().cloned()));
    let mut batches = Vec::new();
    for texts in &case.batches {
        let lease = budget.acquire(1024).await.unwrap();
        let batch = if form == Form::Records {
            let records = texts
                .iter()
                .map(|t| into_record(serde_json::from_str(t).unwrap()))
                .collect();
            Batch::new(records, lease)
        } else {
            let mut rows = JsonRows::new();
            for text in texts {
                rows.push(text.as_bytes()).unwrap();
            }
            Batch::from_json(rows, lease)
        };
        batches.push(batch.with_json_fields(Some(declared.clone())));
    }
    let mut batches = batches.into_iter().peekable();
    if let (Some(preparer), Some(first)) = (&preparer, batches.peek_mut()) {
        preparer.prepare(first);
    }
    while let Some(batch) = batches.next() {
        if let (Some(preparer), Some(next)) = (&preparer, batches.peek_mut()) {
            preparer.prepare(next);
        }
        writer.write(batch).await.unwrap();
    }
    writer.finish().await.unwrap();
}

#[tokio::test]
async fn json_text_and_records_leave_the_same_table() {
    let seed = env_number("SLUICEGATE_JSON_ROWS_SEED", 1);
    let cases = env_number("SLUICEGATE_JSON_ROWS_CASES", 40);
    let (mut as_columns, mut batches) = (0, 0);
    let (mut declared_as_columns, mut declared_batches) = (0, 0);
    let (mut extra_as_columns, mut extra_batches, mut extra_rows) = (0, 0, 0);
    let (mut prepared_ahead, mut used_ahead) = (0, 0);
    for n in 0..cases {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(n));
        let case = case(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        let records = sink_with(dir.path(), "records.duckdb", case.max_columns);
        let text = sink_with(dir.path(), "text.duckdb", case.max_columns);
        let ahead = sink_with(dir.path(), "ahead.duckdb", case.max_columns);
        write_case(&records, &case, Form::Records).await;
        write_case(&text, &case, Form::Text).await;
        write_case(&ahead, &case, Form::TextPreparedAhead).await;
        assert_eq!(records.batches_as_columns(), 0);
        assert_eq!(text.batches_prepared_ahead(), (0, 0));
        let (prepared, used) = ahead.batches_prepared_ahead();
        assert!(used <= prepared);
        prepared_ahead += prepared;
        used_ahead += used;
        as_columns += text.batches_as_columns();
        batches += case.batches.len() as u64;
        if !case.declared.is_empty() {
            declared_as_columns += text.batches_as_columns();
            declared_batches += case.batches.len() as u64;
        }
        if case.max_columns < 6 {
            extra_as_columns += text.batches_as_columns();
            extra_batches += case.batches.len() as u64;
        }
        drop((records, text, ahead));
        let expected = table(&dir.path().join("records.duckdb"));
        let got = table(&dir.path().join("text.duckdb"));
        assert_eq!(
            table(&dir.path().join("ahead.duckdb")),
            expected,
            "case {n} of seed {seed} (SLUICEGATE_JSON_ROWS_SEED={seed}): the table written from JSON text prepared ahead differs; batches: {:#?}",
            case.batches
        );
        if let Some(extra) = expected.0.iter().position(|(name, _)| name == "_extra") {
            extra_rows += expected.1.iter().filter(|r| r[extra].is_some()).count();
        }
        assert_eq!(
            got, expected,
            "case {n} of seed {seed} (SLUICEGATE_JSON_ROWS_SEED={seed}): the table written from JSON text differs; batches: {:#?}",
            case.batches
        );
    }
    // The comparison means something only if the columns path was taken often.
    assert!(
        as_columns * 4 >= batches,
        "only {as_columns} of {batches} batches went straight into columns"
    );
    assert!(
        extra_as_columns * 5 >= extra_batches && extra_rows >= 100,
        "only {extra_as_columns} of {extra_batches} batches with fields in `_extra` went straight into columns ({extra_rows} rows with `_extra`)"
    );
    // Both ways of a batch prepared ahead: written as prepared, and parsed
    // again because the batch before it changed the table.
    assert!(
        used_ahead * 5 >= batches && prepared_ahead > used_ahead,
        "of {batches} batches, {prepared_ahead} were prepared ahead and {used_ahead} written so"
    );
    assert!(
        declared_as_columns * 5 >= declared_batches,
        "only {declared_as_columns} of {declared_batches} batches with declared JSON fields went straight into columns"
    );
}
