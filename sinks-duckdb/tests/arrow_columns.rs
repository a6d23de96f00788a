//! Differential property test: batches that arrive as Arrow columns (a
//! database's typed rows, taken into the table as they are when they fit it)
//! leave the table exactly as the records their source's decoder makes of
//! them do.
//!
//! Each case generates typed columns nobody picked by hand: integers of every
//! width, doubles (`-0.0`, subnormal, huge), unicode strings, JSON texts of a
//! declared JSON field (numbers with exponents, nested values with whitespace
//! and escapes, `null`), booleans, decimals of random precision and scale,
//! dates and timestamps from year 1 to 9999, nulls everywhere; keys that
//! increase, come in any order, repeat or are missing, integers or strings;
//! later batches that add a column or change a column's type. Every batch is
//! written both ways into two database files; then the tables must have the
//! same columns, types and rows. `SLUICEGATE_ARROW_SEED` (default 1) and
//! `SLUICEGATE_ARROW_CASES` (default 40) choose the cases.

mod common;

use std::sync::Arc;

use common::{env_number, sink, table};
use duckdb::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    StringArray, TimestampMicrosecondArray,
};
use duckdb::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde_json::{Map, Number, Value};
use sluicegate_core::{
    Batch, ColumnDecoder, ColumnRows, FieldType, FieldTypes, JsonFields, MemoryBudget, RecordBatch,
    Sink, StreamTarget,
};
use sluicegate_sinks_duckdb::DuckDbSink;

// ---------------------------------------------------------------- the data

/// A column's kind in a case.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Text,
    Json,
    Bool,
    Double,
    Decimal(u8, i8),
    Date,
    Timestamp,
    TimestampUtc,
}

fn kind(rng: &mut fastrand::Rng) -> Kind {
    match rng.u8(0..9) {
        0 => Kind::Int,
        1 => Kind::Text,
        2 => Kind::Json,
        3 => Kind::Bool,
        4 => Kind::Double,
        5 => {
            let precision = rng.u8(1..39);
            Kind::Decimal(precision, rng.i8(0..=precision.min(20) as i8))
        }
        6 => Kind::Date,
        7 => Kind::Timestamp,
        _ => Kind::TimestampUtc,
    }
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Int => DataType::Int64,
        Kind::Text | Kind::Json => DataType::Utf8,
        Kind::Bool => DataType::Boolean,
        Kind::Double => DataType::Float64,
        Kind::Decimal(p, s) => DataType::Decimal128(p, s),
        Kind::Date => DataType::Date32,
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::TimestampUtc => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// Days from 1970-01-01 to 0001-01-01 and to 9999-12-31.
const FIRST_DAY: i32 = -719_162;
const LAST_DAY: i32 = 2_932_896;
const DAY_MICROS: i64 = 86_400_000_000;

fn text(rng: &mut fastrand::Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Zürich",
        "日本語",
        "😀",
        "\"",
        "\\",
        "\n",
        " ",
        "null",
        "1e5",
        "",
    ];
    (0..rng.usize(0..5))
        .map(|_| PIECES[rng.usize(0..PIECES.len())])
        .collect()
}

/// A JSON value's text as a database might hold it (whitespace, escapes,
/// exponents).
fn json(rng: &mut fastrand::Rng, depth: u32) -> String {
    match rng.u8(0..if depth < 2 { 8 } else { 5 }) {
        0 => "null".into(),
        1 => ["true", "false"][rng.usize(0..2)].into(),
        2 => [
            "1E5",
            "-0",
            "1.50",
            "12345678901234567890123",
            "2.5e-7",
            "3",
            "-42",
        ][rng.usize(0..7)]
        .into(),
        3 => serde_json::to_string(&text(rng)).unwrap(),
        4 => r#""\u00e9\/""#.into(),
        5 => format!(
            "[{}]",
            (0..rng.usize(0..3))
                .map(|_| json(rng, depth + 1))
                .collect::<Vec<_>>()
                .join(if rng.bool() { ", " } else { "," })
        ),
        _ => format!(
            "{{{}}}",
            (0..rng.usize(0..3))
                .map(|i| format!("\"k{}\": {}", i % 2, json(rng, depth + 1)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn array(kind: Kind, rng: &mut fastrand::Rng, n: usize) -> ArrayRef {
    let null = |rng: &mut fastrand::Rng| rng.u8(0..5) == 0;
    match kind {
        Kind::Int => Arc::new(Int64Array::from_iter((0..n).map(|_| {
            (!null(rng)).then(|| match rng.u8(0..3) {
                0 => rng.i64(..),
                1 => [i64::MIN, i64::MAX, 0][rng.usize(0..3)],
                _ => rng.i64(-1000..1000),
            })
        }))),
        Kind::Text => Arc::new(StringArray::from_iter(
            (0..n).map(|_| (!null(rng)).then(|| text(rng))),
        )),
        Kind::Json => Arc::new(StringArray::from_iter(
            (0..n).map(|_| (!null(rng)).then(|| json(rng, 0))),
        )),
        Kind::Bool => Arc::new(BooleanArray::from_iter(
            (0..n).map(|_| (!null(rng)).then(|| rng.bool())),
        )),
        Kind::Double => Arc::new(Float64Array::from_iter((0..n).map(|_| {
            (!null(rng)).then(|| match rng.u8(0..4) {
                0 => [-0.0, 0.0, 5e-324, f64::MAX, 1.0, 0.1][rng.usize(0..6)],
                _ => {
                    let x = f64::from_bits(rng.u64(0x0010_0000_0000_0000..0x7fe0_0000_0000_0000));
                    if rng.bool() { x } else { -x }
                }
            })
        }))),
        Kind::Decimal(p, s) => {
            let bound = 10i128.pow(u32::from(p));
            Arc::new(
                Decimal128Array::from_iter((0..n).map(|_| {
                    (!null(rng)).then(|| match rng.u8(0..3) {
                        0 => bound - 1,
                        1 => rng.i64(-1000..1000) as i128,
                        _ => rng.i128(-bound + 1..bound),
                    })
                }))
                .with_precision_and_scale(p, s)
                .unwrap(),
            )
        }
        Kind::Date => Arc::new(Date32Array::from_iter(
            (0..n).map(|_| (!null(rng)).then(|| rng.i32(FIRST_DAY..=LAST_DAY))),
        )),
        Kind::Timestamp | Kind::TimestampUtc => {
            let values = TimestampMicrosecondArray::from_iter((0..n).map(|_| {
                (!null(rng)).then(|| {
                    let day = i64::from(rng.i32(FIRST_DAY..=LAST_DAY));
                    let micros = match rng.u8(0..3) {
                        0 => 0,
                        1 => rng.i64(0..86_400) * 1_000_000,
                        _ => rng.i64(0..DAY_MICROS),
                    };
                    day * DAY_MICROS + micros
                })
            }));
            if kind == Kind::TimestampUtc {
                Arc::new(values.with_timezone("UTC"))
            } else {
                Arc::new(values)
            }
        }
    }
}

// ---------------------------------------------------------------- records

/// The records a source would send for columns of these kinds, as the
/// PostgreSQL source's decoder makes them: typed values in the text forms
/// [`FieldType`] documents, JSON parsed (SQL NULL left out).
struct Decoder(Vec<(String, Kind)>);

fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn date_text(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn timestamp_text(micros: i64, zone: &str) -> String {
    let day = micros.div_euclid(DAY_MICROS);
    let of_day = micros.rem_euclid(DAY_MICROS);
    let secs = of_day / 1_000_000;
    let mut out = format!(
        "{}T{:02}:{:02}:{:02}",
        date_text(day),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let fraction = of_day % 1_000_000;
    if fraction != 0 {
        out.push_str(format!(".{fraction:06}").trim_end_matches('0'));
    }
    out + zone
}

fn decimal_text(v: i128, scale: i8) -> String {
    let digits = format!("{:0>width$}", v.unsigned_abs(), width = scale as usize + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale as usize);
    let sign = if v < 0 { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

impl ColumnDecoder for Decoder {
    fn records(
        &self,
        batch: &RecordBatch,
    ) -> sluicegate_core::Result<Vec<sluicegate_core::Record>> {
        let mut records = vec![Map::new(); batch.num_rows()];
        for (i, (name, kind)) in self.0.iter().enumerate() {
            let column = batch.column(i);
            let any = column.as_any();
            for (row, record) in records.iter_mut().enumerate() {
                if column.is_null(row) {
                    if *kind != Kind::Json {
                        record.insert(name.clone(), Value::Null);
                    }
                    continue;
                }
                let value = match kind {
                    Kind::Int => Value::from(any.downcast_ref::<Int64Array>().unwrap().value(row)),
                    Kind::Text => {
                        Value::from(any.downcast_ref::<StringArray>().unwrap().value(row))
                    }
                    Kind::Json => {
                        serde_json::from_str(any.downcast_ref::<StringArray>().unwrap().value(row))
                            .unwrap()
                    }
                    Kind::Bool => {
                        Value::from(any.downcast_ref::<BooleanArray>().unwrap().value(row))
                    }
                    Kind::Double => Value::Number(
                        Number::from_f64(any.downcast_ref::<Float64Array>().unwrap().value(row))
                            .unwrap(),
                    ),
                    Kind::Decimal(_, s) => Value::from(decimal_text(
                        any.downcast_ref::<Decimal128Array>().unwrap().value(row),
                        *s,
                    )),
                    Kind::Date => Value::from(date_text(i64::from(
                        any.downcast_ref::<Date32Array>().unwrap().value(row),
                    ))),
                    Kind::Timestamp | Kind::TimestampUtc => Value::from(timestamp_text(
                        any.downcast_ref::<TimestampMicrosecondArray>()
                            .unwrap()
                            .value(row),
                        if *kind == Kind::Timestamp { "" } else { "Z" },
                    )),
                };
                record.insert(name.clone(), value);
            }
        }
        Ok(records)
    }
}

// ---------------------------------------------------------------- cases

/// One case: batches of columns (with their kinds) for a stream with or
/// without a key.
struct Case {
    key: Option<&'static str>,
    batches: Vec<(Vec<(String, Kind)>, RecordBatch)>,
}

fn case(rng: &mut fastrand::Rng) -> Case {
    let mut kinds: Vec<Kind> = (0..rng.usize(1..8)).map(|_| kind(rng)).collect();
    let key = (rng.u8(0..5) != 0).then_some("id");
    let string_keys = rng.u8(0..4) == 0;
    let mut next_id = rng.i64(-50..50);
    let mut batches = Vec::new();
    for b in 0..rng.usize(1..7) {
        // Later batches sometimes change a column's type or add a column.
        if b > 0 && rng.u8(0..6) == 0 {
            let f = rng.usize(0..kinds.len());
            kinds[f] = kind(rng);
        }
        if b > 0 && rng.u8(0..6) == 0 {
            kinds.push(kind(rng));
        }
        let n = rng.usize(0..3000);
        let mut ids: Vec<i64> = (0..n)
            .map(|_| {
                next_id += rng.i64(1..4);
                next_id
            })
            .collect();
        match rng.u8(0..8) {
            0 => rng.shuffle(&mut ids),
            1 if n > 1 => ids[n - 1] = ids[0],
            _ => {}
        }
        let mut fields = vec![(
            "id".to_owned(),
            if string_keys { Kind::Text } else { Kind::Int },
        )];
        let mut arrays: Vec<ArrayRef> = vec![if string_keys {
            Arc::new(StringArray::from_iter(ids.iter().map(|i| {
                // A missing key, once in a while.
                (rng.u16(0..2000) != 0).then(|| format!("k{i:08}"))
            })))
        } else {
            Arc::new(Int64Array::from_iter(
                ids.iter().map(|i| (rng.u16(0..2000) != 0).then_some(*i)),
            ))
        }];
        for (f, kind) in kinds.iter().enumerate() {
            fields.push((format!("f{f}"), *kind));
            arrays.push(array(*kind, rng, n));
        }
        let schema = Schema::new(
            fields
                .iter()
                .map(|(name, kind)| Field::new(name, data_type(*kind), true))
                .collect::<Vec<_>>(),
        );
        let batch = RecordBatch::try_new(Arc::new(schema), arrays).unwrap();
        batches.push((fields, batch));
    }
    Case { key, batches }
}

async fn write_case(sink: &DuckDbSink, case: &Case, as_columns: bool) {
    let budget = MemoryBudget::unlimited();
    let target = StreamTarget::new("t", "t", case.key.map(str::to_owned));
    let mut writer = sink.open(target).await.unwrap();
    for (fields, columns) in &case.batches {
        let declared = Arc::new(JsonFields::new(
            fields
                .iter()
                .filter(|(_, k)| *k == Kind::Json)
                .map(|(n, _)| n.clone()),
        ));
        let types = Arc::new(FieldTypes::new(fields.iter().filter_map(|(n, k)| {
            let ty = match k {
                Kind::Decimal(p, s) => FieldType::Decimal {
                    precision: u16::from(*p),
                    scale: *s as u16,
                },
                Kind::Date => FieldType::Date,
                Kind::Timestamp => FieldType::Timestamp,
                Kind::TimestampUtc => FieldType::TimestampUtc,
                _ => return None,
            };
            Some((n.clone(), ty))
        })));
        let decoder = Arc::new(Decoder(fields.clone()));
        let rows = ColumnRows::new(columns.clone(), decoder);
        let lease = budget.acquire(1024).await.unwrap();
        let batch = if as_columns {
            Batch::from_columns(rows, lease)
        } else {
            Batch::new(rows.decode().unwrap(), lease)
        };
        writer
            .write(
                batch
                    .with_json_fields(Some(declared))
                    .with_field_types(Some(types)),
            )
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
}

#[tokio::test]
async fn arrow_columns_and_their_records_leave_the_same_table() {
    let seed = env_number("SLUICEGATE_ARROW_SEED", 1);
    let cases = env_number("SLUICEGATE_ARROW_CASES", 40);
    let (mut as_columns, mut batches, mut rows) = (0, 0, 0);
    for n in 0..cases {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(n));
        let case = case(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        let records = sink(dir.path(), "records.duckdb");
        let columns = sink(dir.path(), "columns.duckdb");
        write_case(&records, &case, false).await;
        write_case(&columns, &case, true).await;
        assert_eq!(records.batches_as_columns(), 0);
        as_columns += columns.batches_as_columns();
        batches += case.batches.len() as u64;
        rows += case
            .batches
            .iter()
            .map(|(_, b)| b.num_rows())
            .sum::<usize>();
        drop((records, columns));
        assert_eq!(
            table(&dir.path().join("columns.duckdb")),
            table(&dir.path().join("records.duckdb")),
            "case {n} of seed {seed} (SLUICEGATE_ARROW_SEED={seed}): the table written from columns differs; kinds: {:?}",
            case.batches.iter().map(|(f, _)| f).collect::<Vec<_>>()
        );
    }
    // The comparison means something only if the columns went in as they
    // are often (a table's first batch, a changed type, a repeated or
    // missing key take the record path).
    assert!(
        as_columns * 3 >= batches && rows > 10_000,
        "only {as_columns} of {batches} batches went in as columns ({rows} rows)"
    );
}
