//! Fields a source declares typed ([`FieldType`]: decimals, dates,
//! timestamps) land in `DECIMAL`, `DATE`, `TIMESTAMP` and `TIMESTAMPTZ`
//! columns, and every value reads back as exactly the text the source sent.
//!
//! Random cases (seeded): values across each type's range, written as a
//! database source writes them, with now and then one no typed column holds
//! (`NaN`, `Infinity`, `infinity`, years beyond 9999 or before 1, another
//! scale), nulls, escaped strings, late batches. Each case is written as
//! JSON text and as records into two files, and across two runs (the second
//! into the table the first left). Then: both tables are the same; each
//! column is typed unless one of its values did not fit (then `VARCHAR`);
//! and each row, read through the documented rendering, is the source's
//! record. `SLUICEGATE_TYPED_SEED` (default 1) and `SLUICEGATE_TYPED_CASES`
//! (default 30) choose the cases.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{columns, env_number, sink};
use serde_json::{Map, Value, json};
use sluicegate_core::{
    Batch, FieldType, FieldTypes, JsonRows, MemoryBudget, Sink, StreamTarget, into_record,
};
use sluicegate_sinks_duckdb::DuckDbSink;

// ---------------------------------------------------------------- the data

/// The proleptic Gregorian date `days` after 1970-01-01 as a source writes
/// it (four-digit years, a sign and more digits outside 0..=9999).
fn ymd(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let year = match year {
        0..=9999 => format!("{year:04}"),
        y if y < 0 => format!("-{:04}", -y),
        y => format!("+{y:04}"),
    };
    format!("{year}-{month:02}-{day:02}")
}

/// Days from 1970-01-01 to 0001-01-01 and past 9999-12-31.
const FIRST_DAY: i64 = -719_162;
const PAST_LAST_DAY: i64 = 2_932_897;

fn timestamp(rng: &mut fastrand::Rng, days: i64) -> String {
    let micros = match rng.u8(0..4) {
        0 => 0,
        1 => rng.i64(0..86_400) * 1_000_000,
        _ => rng.i64(0..86_400_000_000),
    };
    let secs = micros / 1_000_000;
    let mut text = format!(
        "{}T{:02}:{:02}:{:02}",
        ymd(days),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if micros % 1_000_000 != 0 {
        let fraction = format!(".{:06}", micros % 1_000_000);
        text.push_str(fraction.trim_end_matches('0'));
    }
    text
}

fn decimal(rng: &mut fastrand::Rng, precision: u16, scale: u16) -> String {
    let int_digits = rng.usize(0..=usize::from(precision - scale));
    let mut text = String::new();
    if rng.bool() {
        text.push('-');
    }
    if int_digits == 0 {
        text.push('0');
    } else {
        text.push(char::from(b'1' + rng.u8(0..9)));
        for _ in 1..int_digits {
            text.push(char::from(b'0' + rng.u8(0..10)));
        }
    }
    if scale > 0 {
        text.push('.');
        for _ in 0..scale {
            text.push(char::from(b'0' + rng.u8(0..10)));
        }
    }
    if text
        .trim_start_matches('-')
        .bytes()
        .all(|b| b == b'0' || b == b'.')
    {
        // PostgreSQL has no negative zero.
        text = text.trim_start_matches('-').to_owned();
    }
    text
}

/// A value of a field declared `ty`; `odd` picks one no typed column holds.
fn value(rng: &mut fastrand::Rng, ty: FieldType, odd: bool) -> Value {
    if rng.u8(0..10) == 0 {
        return Value::Null;
    }
    let days = rng.i64(FIRST_DAY..PAST_LAST_DAY);
    let text = match (ty, odd) {
        (FieldType::Decimal { precision, scale }, false) => decimal(rng, precision, scale),
        (FieldType::Decimal { .. }, true) => {
            ["NaN", "Infinity", "-Infinity", "1.5", "-0", "1e3"][rng.usize(0..6)].to_owned()
        }
        (FieldType::Date, false) => ymd(days),
        (FieldType::Timestamp, false) => timestamp(rng, days),
        (FieldType::TimestampUtc, false) => format!("{}Z", timestamp(rng, days)),
        (_, true) => {
            let far = match rng.u8(0..3) {
                0 => "infinity".to_owned(),
                1 => ymd(PAST_LAST_DAY + rng.i64(0..1_000_000)),
                _ => ymd(FIRST_DAY - 1 - rng.i64(0..1_000_000)),
            };
            match ty {
                FieldType::Date => far,
                FieldType::Timestamp if far.len() > 8 => format!("{far}T00:00:00"),
                FieldType::TimestampUtc if far.len() > 8 => format!("{far}T00:00:00Z"),
                _ => far,
            }
        }
        _ => unreachable!("the four declared types"),
    };
    Value::String(text)
}

struct Case {
    key: Option<&'static str>,
    types: Vec<(String, FieldType)>,
    /// Batches of records.
    batches: Vec<Vec<Value>>,
    /// The fields that got a value no typed column holds.
    odd: Vec<String>,
}

fn case(rng: &mut fastrand::Rng) -> Case {
    let kinds = [
        FieldType::Decimal {
            precision: 12,
            scale: 2,
        },
        FieldType::Decimal {
            precision: 38,
            scale: 10,
        },
        FieldType::Decimal {
            precision: 5,
            scale: 5,
        },
        FieldType::Decimal {
            precision: 18,
            scale: 0,
        },
        FieldType::Date,
        FieldType::Timestamp,
        FieldType::TimestampUtc,
    ];
    let types: Vec<(String, FieldType)> = (0..rng.usize(1..6))
        .map(|f| (format!("f{f}"), kinds[rng.usize(0..kinds.len())]))
        .collect();
    let key = (rng.u8(0..4) != 0).then_some("id");
    let mut odd = Vec::new();
    let mut id = 0;
    let mut batches = Vec::new();
    for _ in 0..rng.usize(2..7) {
        let mut batch = Vec::new();
        for _ in 0..rng.usize(0..30) {
            id += 1;
            let mut record = Map::new();
            record.insert("id".into(), json!(id));
            for (field, ty) in &types {
                if rng.u8(0..6) == 0 {
                    continue; // left out
                }
                let is_odd = rng.u8(0..40) == 0;
                let v = value(rng, *ty, is_odd);
                if is_odd && !v.is_null() && !odd.contains(field) {
                    odd.push(field.clone());
                }
                record.insert(field.clone(), v);
            }
            batch.push(Value::Object(record));
        }
        batches.push(batch);
    }
    Case {
        key,
        types,
        batches,
        odd,
    }
}

// ---------------------------------------------------------------- the check

/// Writes the batches (JSON text written with an escape now and then, or
/// records), `runs` writers one after the other (each one's share of the
/// batches).
async fn write_case(sink: &DuckDbSink, case: &Case, as_text: bool, rng: &mut fastrand::Rng) {
    let budget = MemoryBudget::unlimited();
    let declared = Arc::new(FieldTypes::new(case.types.iter().cloned()));
    let half = case.batches.len() / 2;
    for run in [&case.batches[..half], &case.batches[half..]] {
        let target = StreamTarget::new("t", "t", case.key.map(str::to_owned));
        let mut writer = sink.open(target).await.unwrap();
        for records in run {
            let lease = budget.acquire(1024).await.unwrap();
            let batch = if as_text {
                let mut rows = JsonRows::new();
                for record in records {
                    let mut text = record.to_string();
                    if rng.u8(0..30) == 0 {
                        // An escaped digit: the same value, another text.
                        text = text.replacen(":\"1", ":\"\\u0031", 1);
                    }
                    rows.push(text.as_bytes()).unwrap();
                }
                Batch::from_json(rows, lease)
            } else {
                let records = records.iter().cloned().map(into_record).collect();
                Batch::new(records, lease)
            };
            writer
                .write(batch.with_field_types(Some(declared.clone())))
                .await
                .unwrap();
        }
        writer.finish().await.unwrap();
    }
}

/// Each column (name, type), and each row as records read through the
/// documented rendering of typed columns, by id.
fn table(db: &Path) -> (Vec<(String, String)>, Vec<Value>) {
    let conn = duckdb::Connection::open(db).unwrap();
    let columns = columns(&conn);
    if columns.is_empty() {
        return (columns, Vec::new());
    }
    let select: Vec<String> = columns
        .iter()
        .map(|(name, ty)| {
            let q = format!("\"{name}\"");
            match ty.as_str() {
                "TIMESTAMP" => format!("replace(CAST({q} AS VARCHAR), ' ', 'T')"),
                "TIMESTAMP WITH TIME ZONE" => {
                    format!("replace(CAST(timezone('UTC', {q}) AS VARCHAR), ' ', 'T') || 'Z'")
                }
                _ => format!("CAST({q} AS VARCHAR)"),
            }
        })
        .collect();
    let sql = format!("SELECT {} FROM t ORDER BY id", select.join(", "));
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows = stmt
        .query_map([], |r| {
            let mut record = Map::new();
            for (i, (name, _)) in columns.iter().enumerate() {
                if let Some(text) = r.get::<_, Option<String>>(i)? {
                    let value = if name == "id" {
                        json!(text.parse::<i64>().unwrap())
                    } else {
                        Value::String(text)
                    };
                    record.insert(name.clone(), value);
                }
            }
            Ok(Value::Object(record))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (columns, rows)
}

#[tokio::test]
async fn declared_types_are_stored_typed_and_read_back_as_sent() {
    let seed = env_number("SLUICEGATE_TYPED_SEED", 1);
    let cases = env_number("SLUICEGATE_TYPED_CASES", 30);
    let (mut typed_columns, mut widened_columns, mut as_columns) = (0, 0, 0);
    for n in 0..cases {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(n));
        let case = case(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        let records = sink(dir.path(), "records.duckdb");
        let text = sink(dir.path(), "text.duckdb");
        write_case(&records, &case, false, &mut rng).await;
        write_case(&text, &case, true, &mut rng).await;
        as_columns += text.batches_as_columns();
        drop((records, text));
        let (columns, rows) = table(&dir.path().join("text.duckdb"));
        let from_records = table(&dir.path().join("records.duckdb"));
        let what = format!("case {n} of seed {seed} (SLUICEGATE_TYPED_SEED={seed})");
        assert_eq!(
            (&columns, &rows),
            (&from_records.0, &from_records.1),
            "{what}: JSON text and records differ"
        );
        // Every row as sent (nulls are left-out fields).
        let sent: Vec<Value> = case
            .batches
            .iter()
            .flatten()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().retain(|_, v| !v.is_null());
                r
            })
            .collect();
        assert_eq!(rows, sent, "{what}: {columns:?}");
        for (name, ty) in &columns {
            let Some((_, declared)) = case.types.iter().find(|(f, _)| f == name) else {
                continue;
            };
            if case.odd.contains(name) {
                assert_eq!(ty, "VARCHAR", "{what}: {name} got a value no {ty} holds");
                widened_columns += 1;
            } else {
                let want = match declared {
                    // Only fractional digits: one integer digit more.
                    FieldType::Decimal { precision, scale } if precision == scale => {
                        format!("DECIMAL({},{scale})", precision + 1)
                    }
                    FieldType::Decimal { precision, scale } => {
                        format!("DECIMAL({precision},{scale})")
                    }
                    FieldType::Date => "DATE".to_owned(),
                    FieldType::Timestamp => "TIMESTAMP".to_owned(),
                    _ => "TIMESTAMP WITH TIME ZONE".to_owned(),
                };
                assert_eq!(ty, &want, "{what}: {name}");
                typed_columns += 1;
            }
        }
    }
    // Meaningful only if both outcomes and the columns path were seen often.
    assert!(typed_columns >= 30, "{typed_columns} typed columns");
    assert!(widened_columns >= 5, "{widened_columns} widened columns");
    assert!(
        as_columns >= 30,
        "{as_columns} batches straight into columns"
    );
}

#[tokio::test]
async fn a_column_of_the_type_is_typed_only_for_a_field_declared_so() {
    // A table someone else made: a TIMESTAMP column. Undeclared values go in
    // as text DuckDB casts (another spelling too); declared ones as the type,
    // and a declared value the type cannot hold makes it the text they came as.
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = duckdb::Connection::open(dir.path().join("t.duckdb")).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id BIGINT, \"at\" TIMESTAMP); INSERT INTO t VALUES (1, '2024-01-01 00:00:00.25')",
        )
        .unwrap();
    }
    let sink = sink(dir.path(), "t.duckdb");
    let budget = MemoryBudget::unlimited();
    let batch = |records: Vec<Value>, lease| {
        Batch::new(records.into_iter().map(into_record).collect(), lease)
    };
    let mut w = sink
        .open(StreamTarget::new("t", "t", Some("id".into())))
        .await
        .unwrap();
    w.write(batch(
        vec![json!({"id": 2, "at": "2024-02-02 10:00:00"})],
        budget.acquire(1).await.unwrap(),
    ))
    .await
    .unwrap();
    let declared = Some(Arc::new(FieldTypes::new([("at", FieldType::Timestamp)])));
    w.write(
        batch(
            vec![json!({"id": 3, "at": "2024-03-03T10:00:00.5"})],
            budget.acquire(1).await.unwrap(),
        )
        .with_field_types(declared.clone()),
    )
    .await
    .unwrap();
    w.write(
        batch(
            vec![json!({"id": 4, "at": "infinity"})],
            budget.acquire(1).await.unwrap(),
        )
        .with_field_types(declared),
    )
    .await
    .unwrap();
    w.finish().await.unwrap();
    drop(sink);
    let (columns, rows) = table(&dir.path().join("t.duckdb"));
    assert_eq!(columns[1], ("at".to_owned(), "VARCHAR".to_owned()));
    assert_eq!(
        rows,
        [
            json!({"id": 1, "at": "2024-01-01T00:00:00.25"}),
            json!({"id": 2, "at": "2024-02-02T10:00:00"}),
            json!({"id": 3, "at": "2024-03-03T10:00:00.5"}),
            json!({"id": 4, "at": "infinity"}),
        ]
    );
}
