//! The `duckdb` sink against a real DuckDB database file.

use std::path::Path;

use serde_json::{Value, json};
use std::sync::Arc;

use sluicegate_core::{
    Batch, BuildContext, JsonFields, JsonRows, MemoryBudget, Sink, StreamTarget, into_record,
};
use sluicegate_sinks_duckdb::{DuckDbSink, DuckDbSinkConfig};

fn ctx(dir: &Path, dry_run: bool) -> BuildContext {
    BuildContext::new("", dry_run)
        .with_template_scope(json!({}))
        .with_base_dir(dir.to_path_buf())
}

/// The tests' sink configuration: `test.duckdb`, 32 MiB, one thread.
fn config() -> DuckDbSinkConfig {
    DuckDbSinkConfig {
        memory_limit_mb: Some(32),
        ..DuckDbSinkConfig::new("test.duckdb")
    }
}

fn sink(dir: &Path, dry_run: bool) -> DuckDbSink {
    DuckDbSink::open(&config(), &ctx(dir, dry_run)).unwrap()
}

fn target(table: &str, key: Option<&str>) -> StreamTarget {
    StreamTarget::new(table, table, key.map(str::to_owned))
}

async fn batch(records: Vec<Value>) -> Batch {
    let budget = MemoryBudget::unlimited();
    Batch::new(
        records.into_iter().map(into_record).collect(),
        budget.acquire(1024).await.unwrap(),
    )
}

fn query(dir: &Path, sql: &str) -> Vec<Vec<Value>> {
    let conn = duckdb::Connection::open(dir.join("test.duckdb")).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let n = row.as_ref().column_count();
        out.push(
            (0..n)
                .map(|i| match row.get_ref(i).unwrap() {
                    duckdb::types::ValueRef::Null => Value::Null,
                    duckdb::types::ValueRef::Boolean(b) => json!(b),
                    duckdb::types::ValueRef::BigInt(i) => json!(i),
                    duckdb::types::ValueRef::HugeInt(i) => json!(i.to_string()),
                    duckdb::types::ValueRef::Double(f) => json!(f),
                    duckdb::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                    other => json!(format!("{other:?}")),
                })
                .collect(),
        );
    }
    out
}

#[tokio::test]
async fn creates_the_table_and_upserts_on_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("people", Some("id"))).await.unwrap();
    let ack = w
        .write(
            batch(vec![
                json!({"id": 1, "name": "a"}),
                json!({"id": 2, "name": "b"}),
                json!({"id": 3, "name": "c"}),
            ])
            .await,
        )
        .await
        .unwrap();
    assert_eq!((ack.rows, ack.inserted, ack.updated), (3, 3, 0));
    let ack = w
        .write(
            batch(vec![
                json!({"id": 2, "name": "B"}),
                json!({"id": 4, "name": "d"}),
            ])
            .await,
        )
        .await
        .unwrap();
    assert_eq!((ack.rows, ack.inserted, ack.updated), (2, 1, 1));
    let summary = w.finish().await.unwrap();
    assert_eq!(summary.total_rows, Some(4));
    drop(sink);
    assert_eq!(
        query(dir.path(), "SELECT id, name FROM people ORDER BY id"),
        vec![
            vec![json!(1), json!("a")],
            vec![json!(2), json!("B")],
            vec![json!(3), json!("c")],
            vec![json!(4), json!("d")]
        ]
    );
}

#[tokio::test]
async fn rerunning_the_same_data_leaves_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let sink = sink(dir.path(), false);
        let mut w = sink.open(target("t", Some("id"))).await.unwrap();
        w.write(batch((0..100).map(|i| json!({"id": i, "v": i * 2})).collect()).await)
            .await
            .unwrap();
        w.finish().await.unwrap();
    }
    assert_eq!(
        query(
            dir.path(),
            "SELECT count(*), count(DISTINCT id), sum(v)::BIGINT FROM t"
        ),
        vec![vec![json!(100), json!(100), json!(9900)]]
    );
}

#[tokio::test]
async fn new_fields_become_columns_and_nested_values_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("orders", Some("id"))).await.unwrap();
    w.write(
        batch(vec![
            json!({"id": 1, "shipping": {"method": "express"}, "tags": ["a", "b"]}),
        ])
        .await,
    )
    .await
    .unwrap();
    w.write(
        batch(vec![
            json!({"id": 2, "coupon": "SAVE5", "shipping": {"method": "pickup"}, "tags": []}),
        ])
        .await,
    )
    .await
    .unwrap();
    w.finish().await.unwrap();
    drop(sink);
    let types = query(
        dir.path(),
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'orders' ORDER BY ordinal_position",
    );
    assert_eq!(
        types,
        vec![
            vec![json!("id"), json!("BIGINT")],
            vec![json!("shipping"), json!("JSON")],
            vec![json!("tags"), json!("JSON")],
            vec![json!("coupon"), json!("VARCHAR")],
        ]
    );
    assert_eq!(
        query(
            dir.path(),
            "SELECT id, shipping->>'method', json_array_length(tags)::BIGINT, coupon FROM orders ORDER BY id"
        ),
        vec![
            vec![json!(1), json!("express"), json!(2), Value::Null],
            vec![json!(2), json!("pickup"), json!(0), json!("SAVE5")]
        ]
    );
}

#[tokio::test]
async fn columns_widen_when_values_stop_fitting() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("w", Some("id"))).await.unwrap();
    w.write(batch(vec![json!({"id": 1, "n": 5, "flag": true})]).await)
        .await
        .unwrap();
    w.write(batch(vec![json!({"id": 2, "n": 2.5, "flag": "maybe"})]).await)
        .await
        .unwrap();
    w.finish().await.unwrap();
    drop(sink);
    assert_eq!(
        query(dir.path(), "SELECT n, flag FROM w ORDER BY id"),
        vec![
            vec![json!(5.0), json!("true")],
            vec![json!(2.5), json!("maybe")]
        ]
    );
}

#[tokio::test]
async fn fields_declared_json_keep_each_values_json_type_and_null_apart_from_sql_null() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let declared = Some(Arc::new(JsonFields::new(["doc"])));
    for (table, key) in [("appended", None), ("upserted", Some("id"))] {
        let mut w = sink.open(target(table, key)).await.unwrap();
        // Scalars first, so nothing but the declaration says the column is JSON;
        // row 4 has SQL NULL (the field left out), row 3 the JSON `null`.
        let first = batch(vec![
            json!({"id": 1, "doc": "123"}),
            json!({"id": 2, "doc": 123}),
            json!({"id": 3, "doc": null}),
            json!({"id": 4}),
        ])
        .await
        .with_json_fields(declared.clone());
        w.write(first).await.unwrap();
        let second = batch(vec![
            json!({"id": 5, "doc": true}),
            json!({"id": 6, "doc": "true"}),
            json!({"id": 7, "doc": {"a": [1, "1", null]}}),
            json!({"id": 8, "doc": "{\"a\": 1}"}),
            json!({"id": 9, "doc": 0.42451918914251396}),
        ])
        .await
        .with_json_fields(declared.clone());
        w.write(second).await.unwrap();
        w.finish().await.unwrap();
    }
    drop(sink);
    for table in ["appended", "upserted"] {
        assert_eq!(
            query(
                dir.path(),
                &format!(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = '{table}' AND column_name = 'doc'"
                )
            ),
            vec![vec![json!("JSON")]]
        );
        let docs: Vec<Value> = query(
            dir.path(),
            &format!("SELECT doc::VARCHAR FROM {table} ORDER BY id"),
        )
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
        assert_eq!(
            docs,
            vec![
                json!("\"123\""),
                json!("123"),
                json!("null"),
                Value::Null,
                json!("true"),
                json!("\"true\""),
                json!("{\"a\":[1,\"1\",null]}"),
                json!("\"{\\\"a\\\": 1}\""),
                json!("0.42451918914251396"),
            ],
            "{table}"
        );
    }
}

#[tokio::test]
async fn a_column_widened_to_json_opens_again_after_a_kill_before_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = DuckDbSinkConfig {
        // Nothing is checkpointed: the batches stay in the write-ahead log.
        settings: [("checkpoint_threshold".to_owned(), "10GB".to_owned())].into(),
        ..config()
    };
    let sink = DuckDbSink::open(&config, &ctx(dir.path(), false)).unwrap();
    let mut w = sink.open(target("w", Some("id"))).await.unwrap();
    w.write(batch(vec![json!({"id": 1, "v": 5, "n": 1})]).await)
        .await
        .unwrap();
    // `v` widens from BIGINT to JSON (and `n` to DOUBLE) with a column added.
    w.write(
        batch(vec![
            json!({"id": 2, "v": {"a": [1]}, "n": 2.5, "late": "x"}),
        ])
        .await,
    )
    .await
    .unwrap();
    // What a SIGKILL now leaves: the file and its log as they are.
    let killed = dir.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    for name in ["test.duckdb", "test.duckdb.wal"] {
        std::fs::copy(dir.path().join(name), killed.join(name)).unwrap();
    }
    drop(w);
    drop(sink);
    assert_eq!(
        query(&killed, "SELECT id, v::VARCHAR, n, late FROM w ORDER BY id"),
        vec![
            vec![json!(1), json!("5"), json!(1.0), Value::Null],
            vec![json!(2), json!("{\"a\":[1]}"), json!(2.5), json!("x")],
        ]
    );
    assert_eq!(
        query(
            &killed,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'w' ORDER BY ordinal_position"
        ),
        vec![
            vec![json!("id"), json!("BIGINT")],
            vec![json!("v"), json!("JSON")],
            vec![json!("n"), json!("DOUBLE")],
            vec![json!("late"), json!("VARCHAR")],
        ]
    );
}

#[tokio::test]
async fn a_batch_larger_than_one_append_chunk_lands_whole_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let records: Vec<Value> = (0..5000)
        .map(|i| json!({"id": i, "name": format!("n{i}"), "half": (i % 2 == 0).then_some(i)}))
        .collect();
    for (table, key) in [("appended", None), ("upserted", Some("id"))] {
        let mut w = sink.open(target(table, key)).await.unwrap();
        w.write(batch(records.clone()).await).await.unwrap();
        w.finish().await.unwrap();
    }
    drop(sink);
    for table in ["appended", "upserted"] {
        assert_eq!(
            query(
                dir.path(),
                &format!("SELECT count(*), sum(id), count(half), max(name) FROM {table}")
            ),
            vec![vec![
                json!(5000),
                json!("12497500"),
                json!(2500),
                json!("n999")
            ]],
            "{table}"
        );
        assert_eq!(
            query(
                dir.path(),
                &format!(
                    "SELECT id, name, half FROM {table} WHERE id IN (2047, 2048, 4999) ORDER BY id"
                )
            ),
            vec![
                vec![json!(2047), json!("n2047"), Value::Null],
                vec![json!(2048), json!("n2048"), json!(2048)],
                vec![json!(4999), json!("n4999"), Value::Null],
            ]
        );
    }
}

#[tokio::test]
async fn a_first_batch_of_json_text_goes_straight_into_the_columns_of_a_table_made_for_it() {
    // The table is created from the batch's first records, so the batch needs
    // no map per record; a field only later in the batch gets its column in the
    // batch's transaction, and that batch goes into columns too.
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let budget = MemoryBudget::unlimited();
    let text = |late: bool| {
        let mut rows = JsonRows::new();
        for i in 0..5000 {
            let mut record = json!({"id": i, "name": format!("n{i}")});
            if late && i == 3000 {
                record["late"] = json!(true);
            }
            rows.push(record.to_string().as_bytes()).unwrap();
        }
        rows
    };
    for (table, late, as_columns) in [("fits", false, 1), ("late", true, 2), ("again", false, 3)] {
        let mut w = sink.open(target(table, Some("id"))).await.unwrap();
        let lease = budget.acquire(1024).await.unwrap();
        w.write(Batch::from_json(text(late), lease)).await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(sink.batches_as_columns(), as_columns, "{table}");
    }
    drop(sink);
    for table in ["fits", "late", "again"] {
        assert_eq!(
            query(
                dir.path(),
                &format!("SELECT count(*), sum(id), max(name) FROM {table}")
            ),
            vec![vec![json!(5000), json!("12497500"), json!("n999")]],
            "{table}"
        );
    }
    assert_eq!(
        query(dir.path(), "SELECT id FROM late WHERE late"),
        vec![vec![json!(3000)]]
    );
}

#[tokio::test]
async fn a_database_whose_creation_was_killed_is_created_again_and_other_files_are_left_alone() {
    // What a SIGKILL during DuckDB's creation of the file leaves: an empty
    // file, zeros, or the main header without the rest.
    let mut header = vec![0u8; 4096];
    header[8..12].copy_from_slice(b"DUCK");
    for leftover in [Vec::new(), vec![0u8; 4096], header] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test.duckdb"), &leftover).unwrap();
        // A dry run writes nothing: the file stays as it was.
        let dry = sink(dir.path(), true);
        let mut w = dry.open(target("t", Some("id"))).await.unwrap();
        w.write(batch(vec![json!({"id": 1})]).await).await.unwrap();
        w.finish().await.unwrap();
        drop(dry);
        assert_eq!(
            std::fs::read(dir.path().join("test.duckdb")).unwrap(),
            leftover
        );
        let sink = sink(dir.path(), false);
        let mut w = sink.open(target("t", Some("id"))).await.unwrap();
        w.write(batch(vec![json!({"id": 1})]).await).await.unwrap();
        w.finish().await.unwrap();
        drop(sink);
        assert_eq!(
            query(dir.path(), "SELECT id FROM t"),
            vec![vec![json!(1)]],
            "{} bytes",
            leftover.len()
        );
    }
    // Another program's file of that name is an error, and untouched.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.duckdb"), "not a database\n").unwrap();
    let err = DuckDbSink::open(&config(), &ctx(dir.path(), false))
        .err()
        .expect("not a DuckDB file");
    assert!(
        err.to_string().contains("not a valid DuckDB database"),
        "{err}"
    );
    assert!(!err.to_string().contains("another process"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("test.duckdb")).unwrap(),
        "not a database\n"
    );
}

#[tokio::test]
async fn identifiers_from_data_are_quoted_and_case_collisions_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink
        .open(target("odd \"table\"; DROP TABLE x", Some("id")))
        .await
        .unwrap();
    w.write(
        batch(vec![
            json!({"id": 1, "we\"ird col": 1, "Name": "upper", "name": "lower"}),
        ])
        .await,
    )
    .await
    .unwrap();
    w.finish().await.unwrap();
    drop(sink);
    assert_eq!(
        query(
            dir.path(),
            r#"SELECT "we""ird col", "Name", "name_2" FROM "odd ""table""; DROP TABLE x""#
        ),
        vec![vec![json!(1), json!("upper"), json!("lower")]]
    );
}

#[tokio::test]
async fn duplicate_keys_in_a_batch_keep_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("d", Some("id"))).await.unwrap();
    let ack = w
        .write(
            batch(vec![
                json!({"id": "x", "v": 1}),
                json!({"id": "y", "v": 2}),
                json!({"id": "x", "v": 3}),
            ])
            .await,
        )
        .await
        .unwrap();
    assert_eq!((ack.rows, ack.duplicates), (2, 1));
    w.finish().await.unwrap();
    drop(sink);
    assert_eq!(
        query(dir.path(), "SELECT id, v FROM d ORDER BY id"),
        vec![vec![json!("x"), json!(3)], vec![json!("y"), json!(2)]]
    );
}

#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<sluicegate_core::Rejected>>);

impl sluicegate_core::RunObserver for Collect {
    fn rejected(&self, _sync_key: &str, rejected: sluicegate_core::Rejected) {
        self.0.lock().unwrap().push(rejected);
    }
}

#[tokio::test]
async fn records_without_a_key_or_with_unusable_field_names_are_rejected_alone() {
    for dry_run in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), dry_run);
        let observer = std::sync::Arc::new(Collect::default());
        let mut t = target("k", Some("id"));
        t.observer = observer.clone();
        let mut w = sink.open(t).await.unwrap();
        let ack = w
            .write(
                batch(vec![
                    json!({"id": 1}),
                    json!({"name": "no key"}),
                    json!({"id": null}),
                    json!({"id": 4, "": "empty name"}),
                    json!({"id": 5, "a\u{0}b": 2}),
                    json!({"id": 6}),
                ])
                .await,
            )
            .await
            .unwrap();
        assert_eq!(
            (ack.inserted, ack.failed),
            (2, 4),
            "dry run {dry_run}: {ack:?}"
        );
        let rejected = observer.0.lock().unwrap().clone();
        let reasons: Vec<String> = rejected.iter().map(|r| r.reason.clone()).collect();
        assert_eq!(rejected.len(), 4, "{reasons:?}");
        assert!(
            reasons[0].starts_with("a field name is empty"),
            "{reasons:?}"
        );
        assert_eq!(rejected[0].key.as_deref(), Some("4"));
        assert!(
            reasons[2].contains("no value for the key field 'id'"),
            "{reasons:?}"
        );
        assert_eq!(
            rejected[2].record["name"],
            json!("no key"),
            "the record travels with it"
        );
        w.finish().await.unwrap();
        drop(sink);
        if !dry_run {
            assert_eq!(
                query(dir.path(), "SELECT id FROM k ORDER BY id"),
                vec![vec![json!(1)], vec![json!(6)]]
            );
        }
    }
}

#[tokio::test]
async fn a_failing_batch_is_rolled_back_entirely() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = duckdb::Connection::open(dir.path().join("test.duckdb")).unwrap();
        conn.execute_batch("CREATE TABLE ev (id BIGINT, \"at\" TIMESTAMP); INSERT INTO ev VALUES (1, '2024-01-01 00:00:00')")
            .unwrap();
    }
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("ev", Some("id"))).await.unwrap();
    let err = w
        .write(
            batch(vec![
                json!({"id": 2, "at": "2024-02-02T00:00:00"}),
                json!({"id": 3, "at": "not a time"}),
            ])
            .await,
        )
        .await
        .unwrap_err();
    assert_eq!(err.context_value("table"), Some("ev"));
    // The writer still works after the failure.
    w.write(batch(vec![json!({"id": 4, "at": "2024-03-03 00:00:00"})]).await)
        .await
        .unwrap();
    w.finish().await.unwrap();
    drop(sink);
    assert_eq!(
        query(dir.path(), "SELECT id FROM ev ORDER BY id"),
        vec![vec![json!(1)], vec![json!(4)]]
    );
}

#[tokio::test]
async fn a_dry_run_never_creates_or_changes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sink = sink(dir.path(), true);
        let mut w = sink.open(target("p", Some("id"))).await.unwrap();
        let ack = w
            .write(batch(vec![json!({"id": 1}), json!({"id": 2})]).await)
            .await
            .unwrap();
        assert_eq!((ack.inserted, ack.updated), (2, 0));
        w.finish().await.unwrap();
    }
    assert!(
        !dir.path().join("test.duckdb").exists(),
        "a dry run must not create the file"
    );

    {
        let sink = sink(dir.path(), false);
        let mut w = sink.open(target("p", Some("id"))).await.unwrap();
        w.write(batch(vec![json!({"id": 1, "v": "old"})]).await)
            .await
            .unwrap();
        w.finish().await.unwrap();
    }
    let before = std::fs::read(dir.path().join("test.duckdb")).unwrap();
    {
        let sink = sink(dir.path(), true);
        let mut w = sink.open(target("p", Some("id"))).await.unwrap();
        let ack = w
            .write(
                batch(vec![
                    json!({"id": 1, "v": "new", "extra": 1}),
                    json!({"id": 2}),
                ])
                .await,
            )
            .await
            .unwrap();
        assert_eq!(
            (ack.inserted, ack.updated),
            (1, 1),
            "one new key, one existing"
        );
        w.finish().await.unwrap();
    }
    assert_eq!(
        std::fs::read(dir.path().join("test.duckdb")).unwrap(),
        before,
        "file unchanged"
    );
    assert_eq!(
        query(dir.path(), "SELECT id, v FROM p"),
        vec![vec![json!(1), json!("old")]]
    );
}

#[tokio::test]
async fn first_loads_in_any_key_order_never_duplicate() {
    // Increasing batches take the append path, the rest the upsert path; the
    // table must end up with each key once and the latest values either way.
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("o", Some("id"))).await.unwrap();
    let batches = [
        vec![json!({"id": 10, "v": "a"}), json!({"id": 20, "v": "a"})],
        vec![json!({"id": 30, "v": "a"}), json!({"id": 40, "v": "a"})],
        vec![json!({"id": 5, "v": "b"}), json!({"id": 20, "v": "b"})],
        vec![json!({"id": 50, "v": "b"}), json!({"id": 45, "v": "b"})],
        vec![json!({"id": 60, "v": "c"}), json!({"id": 60, "v": "d"})],
        vec![json!({"id": "70", "v": "e"})],
    ];
    let mut inserted = 0;
    for b in batches {
        inserted += w.write(batch(b).await).await.unwrap().inserted;
    }
    assert_eq!(inserted, 9);
    assert_eq!(w.finish().await.unwrap().total_rows, Some(9));
    drop(sink);
    assert_eq!(
        query(
            dir.path(),
            "SELECT id::VARCHAR, v FROM o ORDER BY id::BIGINT"
        ),
        [
            ("5", "b"),
            ("10", "a"),
            ("20", "b"),
            ("30", "a"),
            ("40", "a"),
            ("45", "b"),
            ("50", "b"),
            ("60", "d"),
            ("70", "e")
        ]
        .iter()
        .map(|(k, v)| vec![json!(k), json!(v)])
        .collect::<Vec<_>>()
    );
}

/// Records parsed from JSON text, as every source delivers them.
async fn parsed_batch(lines: &[String]) -> Batch {
    batch(
        lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect(),
    )
    .await
}

#[tokio::test]
async fn every_double_arrives_as_the_same_double_top_level_and_nested() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("doubles", Some("id"))).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut want = Vec::new();
    let mut lines = Vec::new();
    for id in 0..2000 {
        // Full-precision doubles over many magnitudes, written shortest.
        let x = f64::from_bits(rng.u64(0x3000_0000_0000_0000..0x4400_0000_0000_0000))
            * if rng.bool() { 1.0 } else { -1.0 };
        want.push(x);
        lines.push(format!(
            r#"{{"id": {id}, "x": {x:?}, "nested": {{"x": {x:?}}}}}"#
        ));
    }
    w.write(parsed_batch(&lines).await).await.unwrap();
    w.finish().await.unwrap();
    drop(sink);
    let rows = query(
        dir.path(),
        "SELECT x, CAST(nested->>'x' AS VARCHAR) FROM doubles ORDER BY id",
    );
    let mut wrong = Vec::new();
    for (row, x) in rows.iter().zip(&want) {
        let top = row[0].as_f64().unwrap();
        let nested: f64 = row[1].as_str().unwrap().parse().unwrap();
        if top.to_bits() != x.to_bits() || nested.to_bits() != x.to_bits() {
            wrong.push((x, top, nested));
        }
    }
    assert_eq!(rows.len(), 2000);
    assert!(
        wrong.is_empty(),
        "{} of 2000 changed: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
}

/// DuckDB compresses runs of equal values and -0.0 == 0.0, so it cannot keep
/// the sign of a zero next to other zeros; the sink stores every zero as 0.0
/// (a documented rule) instead of letting the neighbours decide.
#[tokio::test]
async fn zeros_are_stored_as_positive_zero_whatever_their_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("zeros", Some("id"))).await.unwrap();
    let lines: Vec<String> = ["0.0", "-0.0", "0.0", "-0.0", "1.5", "-0.0"]
        .iter()
        .enumerate()
        .map(|(id, z)| format!(r#"{{"id": {id}, "z": {z}}}"#))
        .collect();
    w.write(parsed_batch(&lines).await).await.unwrap();
    w.finish().await.unwrap();
    drop(sink);
    let rows = query(
        dir.path(),
        "SELECT CAST(z AS VARCHAR) FROM zeros ORDER BY id",
    );
    let got: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(got, ["0.0", "0.0", "0.0", "0.0", "1.5", "0.0"]);
}

#[tokio::test]
async fn integers_beyond_64_bits_stay_exact_and_never_widen_their_neighbours_to_double() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("numbers", Some("id"))).await.unwrap();
    let lines: Vec<String> = [
        r#"{"id": 0, "big": 9223372036854775807, "huge": 1, "mix": 1.5, "fine": 1.5, "far": 1}"#,
        r#"{"id": 1, "big": 170141183460469231731687303715884105727, "huge": 1234567890123456789012345678901234567890, "mix": 9007199254740993, "fine": 3, "far": 1e400}"#,
        r#"{"id": 2, "big": -170141183460469231731687303715884105728, "huge": -5, "mix": 2, "fine": -9007199254740992, "far": 2.5}"#,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    w.write(parsed_batch(&lines).await).await.unwrap();
    // A later batch: an existing BIGINT column with a value beyond 2^53 meets a fraction.
    let mut w2 = sink.open(target("later", Some("id"))).await.unwrap();
    w2.write(parsed_batch(&[r#"{"id": 0, "n": 1152921504606846977}"#.to_owned()]).await)
        .await
        .unwrap();
    w2.write(parsed_batch(&[r#"{"id": 1, "n": 0.25}"#.to_owned()]).await)
        .await
        .unwrap();
    w.finish().await.unwrap();
    w2.finish().await.unwrap();
    drop(sink);
    let types = query(
        dir.path(),
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_name = 'numbers' ORDER BY ordinal_position",
    );
    assert_eq!(
        types,
        [
            [json!("id"), json!("BIGINT")],
            [json!("big"), json!("HUGEINT")],
            [json!("huge"), json!("VARCHAR")],
            [json!("mix"), json!("VARCHAR")],
            [json!("fine"), json!("DOUBLE")],
            [json!("far"), json!("VARCHAR")],
        ]
    );
    let rows = query(
        dir.path(),
        "SELECT CAST(big AS VARCHAR), huge, mix, fine, far FROM numbers ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            [
                json!("9223372036854775807"),
                json!("1"),
                json!("1.5"),
                json!(1.5),
                json!("1")
            ],
            [
                json!("170141183460469231731687303715884105727"),
                json!("1234567890123456789012345678901234567890"),
                json!("9007199254740993"),
                json!(3.0),
                json!("1e+400")
            ],
            [
                json!("-170141183460469231731687303715884105728"),
                json!("-5"),
                json!("2"),
                json!(-9007199254740992.0),
                json!("2.5")
            ],
        ]
    );
    let rows = query(
        dir.path(),
        "SELECT CAST(n AS VARCHAR) FROM later ORDER BY id",
    );
    assert_eq!(rows, [[json!("1152921504606846977")], [json!("0.25")]]);
}

/// Wide, sparse records (600 distinct fields, about 25 per record, nested
/// values among them) at the default settings: the first load and a re-sync of
/// the same keys into the existing table both complete. With DuckDB's default
/// 256 KiB blocks and a fixed 16 MiB limit, this failed at a checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_sparse_records_load_and_re_sync_at_default_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = ctx(dir.path(), false);
    ctx.base_dir = dir.path().to_path_buf();
    let sink = DuckDbSink::open(&DuckDbSinkConfig::new("test.duckdb"), &ctx).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let records: Vec<Value> = (0..6000u64)
        .map(|id| {
            let mut r = serde_json::Map::new();
            r.insert("id".into(), json!(id));
            for _ in 0..25 {
                let f = rng.usize(0..600);
                let v = match f % 4 {
                    0 => json!(rng.i64(..)),
                    1 => json!(format!("text {} {}", id, "x".repeat(rng.usize(0..40)))),
                    2 => json!(rng.f64()),
                    _ => json!({"a": id, "b": [f, "y"]}),
                };
                r.insert(format!("field_{f:03}"), v);
            }
            Value::Object(r)
        })
        .collect();
    for pass in 0..2 {
        let mut w = sink.open(target("wide", Some("id"))).await.unwrap();
        for chunk in records.chunks(1000) {
            let ack = w.write(batch(chunk.to_vec()).await).await.unwrap();
            if pass == 1 {
                assert_eq!(ack.updated, 1000, "a re-sync replaces every row");
            }
        }
        let summary = w.finish().await.unwrap();
        assert_eq!(summary.total_rows, Some(6000));
    }
    drop(sink);
    // `id`, 63 fields, and `_extra` with the rest (default `maxColumns`).
    let columns = query(
        dir.path(),
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'wide'",
    );
    assert_eq!(columns, vec![vec![json!(65)]]);
    let block = query(dir.path(), "SELECT block_size FROM pragma_database_size()");
    assert_eq!(
        block,
        vec![vec![json!(65536)]],
        "new files get 64 KiB blocks"
    );
    // Every row is its record, value for value.
    let rows = rows_as_records(dir.path(), "wide");
    assert_eq!(rows.len(), records.len());
    for (row, record) in rows.iter().zip(&records) {
        assert!(same(row, record), "{row} is not {record}");
    }
}

/// The rows of `table` by `id` as the records they came from: the columns
/// that are not null, and the fields in `_extra`.
fn rows_as_records(dir: &Path, table: &str) -> Vec<Value> {
    query(
        dir,
        &format!("SELECT to_json(t)::VARCHAR FROM {table} t ORDER BY id"),
    )
    .into_iter()
    .map(|row| {
        let mut row: serde_json::Map<String, Value> =
            serde_json::from_str(row[0].as_str().unwrap()).unwrap();
        let extra = row.remove("_extra");
        row.retain(|_, v| !v.is_null());
        if let Some(Value::Object(extra)) = extra {
            for (field, value) in extra {
                assert!(row.insert(field.clone(), value).is_none(), "{field} twice");
            }
        }
        Value::Object(row)
    })
    .collect()
}

/// Whether two values are equal, numbers as the doubles they are when
/// either is one (DuckDB prints a `DOUBLE` column's value in its own form).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            x.as_f64() == y.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// A checkpoint store that refuses its commits after the first `commits`: the
/// run stops right after DuckDB committed a batch and before the store did —
/// what a kill between the two commits leaves.
struct StopAfterCommits {
    inner: sluicegate_core::MemoryCheckpointStore,
    left: std::sync::atomic::AtomicU64,
}

impl sluicegate_core::CheckpointStore for StopAfterCommits {
    fn load(
        &self,
        sync_key: &str,
        stream: &str,
    ) -> sluicegate_core::Result<Option<sluicegate_core::Position>> {
        self.inner.load(sync_key, stream)
    }
    fn commit(
        &self,
        sync_key: &str,
        stream: &str,
        position: &sluicegate_core::Position,
    ) -> sluicegate_core::Result<()> {
        use std::sync::atomic::Ordering;
        if self.left.load(Ordering::SeqCst) == 0 {
            return Err(sluicegate_core::Error::new(
                sluicegate_core::ErrorKind::Checkpoint,
                "stopped here",
            ));
        }
        self.left.fetch_sub(1, Ordering::SeqCst);
        self.inner.commit(sync_key, stream, position)
    }
    fn clear(&self, sync_key: &str, stream: &str) -> sluicegate_core::Result<()> {
        self.inner.clear(sync_key, stream)
    }
}

/// Appends without a key resume exactly once: DuckDB commits each batch's
/// position with its rows, and a resumed run continues after it, even when the
/// checkpoint store is a batch behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_stopped_between_the_two_commits_resumes_exactly_once() {
    use sluicegate_core::CheckpointStore;
    use sluicegate_engine::{Pipeline, PipelineOptions};
    use sluicegate_testkit::doubles::{VecSource, numbered_records};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let store = Arc::new(StopAfterCommits {
        inner: sluicegate_core::MemoryCheckpointStore::default(),
        left: AtomicU64::new(4),
    });
    let source = Arc::new(VecSource::new(numbered_records(1000), 100));
    let options = PipelineOptions::default().with_batch_rows(100);
    let run = |store: Arc<StopAfterCommits>| {
        let (sink, source, options) = (&sink, source.clone(), options.clone());
        async move {
            let writer = sink.open(target("events", None)).await.unwrap();
            let mut pipeline = Pipeline::new("events", "events", source, writer)
                .options(options)
                .checkpoints(store);
            let resumed = pipeline.resume_point().await.unwrap();
            (
                resumed,
                pipeline.exactly_once_resume(),
                pipeline.run().await,
            )
        }
    };
    let (resumed, exactly_once, result) = run(store.clone()).await;
    assert_eq!(resumed, None);
    assert!(exactly_once, "the DuckDB sink keeps positions");
    let err = result.expect_err("the fifth commit of the store fails");
    assert!(err.to_string().contains("stopped here"), "{err}");
    let in_store = store.inner.load("events", "events").unwrap().unwrap();
    store.left.store(u64::MAX, Ordering::SeqCst);
    let (resumed, _, result) = run(store.clone()).await;
    let resumed = resumed.expect("resumes");
    assert_ne!(
        resumed, in_store,
        "after the sink's position, a batch past the store's"
    );
    result.unwrap();
    drop(sink);
    assert_eq!(
        query(
            dir.path(),
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events"
        ),
        vec![vec![json!(1000), json!(1000), json!(0), json!(999)]],
        "every record once"
    );
    // The stream completed: the next run starts from the beginning.
    let sink = self::sink(dir.path(), false);
    let writer = sink.open(target("events", None)).await.unwrap();
    let mut pipeline = Pipeline::new("events", "events", source, writer).checkpoints(store);
    assert_eq!(pipeline.resume_point().await.unwrap(), None);
}

/// A stream's position is one row: each batch appends its row and deletes the
/// stream's rows before it (rows kept until the end spread over a row group per
/// checkpoint, and deleting them at the end ran out of DuckDB's memory at 10M
/// rows); rows an older version left per batch are read (the highest wins) and
/// go with the next batch.
#[tokio::test]
async fn a_stream_keeps_one_position_row_and_older_rows_are_read_then_dropped() {
    use sluicegate_core::{Position, SinkPosition};
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = duckdb::Connection::open(dir.path().join("test.duckdb")).unwrap();
        conn.execute_batch(
            "CREATE TABLE _sluicegate_positions (sync_key VARCHAR, stream VARCHAR, seq UBIGINT, position VARCHAR, complete BOOLEAN);
             INSERT INTO _sluicegate_positions VALUES
               ('events', 'events', 1, '{\"page\":1}', false),
               ('events', 'events', 3, '{\"page\":3}', false),
               ('events', 'events', 2, '{\"page\":2}', false),
               ('other', 'other', 7, '{\"page\":9}', false);",
        )
        .unwrap();
    }
    let sink = sink(dir.path(), false);
    let mut w = sink.open(target("events", Some("id"))).await.unwrap();
    let ext = w.extension().unwrap();
    assert_eq!(
        ext.committed_position().await.unwrap(),
        SinkPosition::After(Position::new(json!({"page": 3})))
    );
    for page in 4..8_u64 {
        let records = (page * 10..page * 10 + 10)
            .map(|i| json!({"id": i}))
            .collect();
        let b = batch(records)
            .await
            .with_position(Some(Position::new(json!({"page": page}))));
        w.write(b).await.unwrap();
    }
    // Stopped before the end: one row, the last batch's.
    drop(w);
    drop(sink);
    assert_eq!(
        query(
            dir.path(),
            "SELECT seq::BIGINT, position, complete FROM _sluicegate_positions WHERE sync_key = 'events' ORDER BY seq",
        ),
        vec![vec![json!(7), json!("{\"page\":7}"), json!(false)]]
    );
    let sink = self::sink(dir.path(), false);
    let mut w = sink.open(target("events", Some("id"))).await.unwrap();
    assert_eq!(
        w.extension().unwrap().committed_position().await.unwrap(),
        SinkPosition::After(Position::new(json!({"page": 7})))
    );
    w.finish().await.unwrap();
    drop(sink);
    assert_eq!(
        query(
            dir.path(),
            "SELECT sync_key, seq::BIGINT, position, complete FROM _sluicegate_positions ORDER BY sync_key"
        ),
        vec![
            vec![json!("events"), json!(8), Value::Null, json!(true)],
            vec![
                json!("other"),
                json!(7),
                json!("{\"page\":9}"),
                json!(false)
            ],
        ],
        "one row for the finished stream; other streams untouched"
    );
}

/// A value longer than DuckDB's default limit (a 40 MiB string, and a nested
/// value holding one) loads at default settings: the sink raises DuckDB's limit
/// for it instead of failing at the commit or the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_larger_than_duckdbs_default_memory_load_at_default_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path(), false);
    let sink = DuckDbSink::open(&DuckDbSinkConfig::new("test.duckdb"), &ctx).unwrap();
    let long = "é".repeat(20 << 20); // 40 MiB of UTF-8
    let mut writer = sink.open(target("blobs", Some("id"))).await.unwrap();
    writer
        .write(
            batch(vec![
                json!({"id": 1, "body": long.clone(), "nested": {"html": "<p>"}}),
            ])
            .await,
        )
        .await
        .unwrap();
    writer
        .write(
            batch(vec![
                json!({"id": 2, "body": "short", "nested": {"html": long.clone()}}),
            ])
            .await,
        )
        .await
        .unwrap();
    writer.finish().await.unwrap();
    let working = sink.capabilities().working_memory_bytes();
    assert!(
        working > 120 << 20,
        "the raised limit is part of the sink's working memory: {working}"
    );
    drop(sink);
    let got = query(
        dir.path(),
        "SELECT id, length(body), body = repeat('é', 20971520), nested->>'html' = repeat('é', 20971520) FROM blobs ORDER BY id",
    );
    assert_eq!(
        got,
        vec![
            vec![json!(1), json!(20 << 20), json!(true), json!(false)],
            vec![json!(2), json!(5), json!(false), json!(true)],
        ]
    );
}

/// A first load checkpoints on the sink's schedule (a quarter of DuckDB's
/// pool, at least 8 MiB of committed rows in memory), not DuckDB's (16 MB of
/// write-ahead log): the log never grows far beyond what one checkpoint covers,
/// so the rows committed in between fit DuckDB's pool instead of spilling.
#[tokio::test]
async fn a_long_first_load_checkpoints_before_the_pool_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let sink = DuckDbSink::open(
        &DuckDbSinkConfig::new("test.duckdb"),
        &ctx(dir.path(), false),
    )
    .unwrap();
    let wal = dir.path().join("test.duckdb.wal");
    let mut w = sink.open(target("orders", Some("id"))).await.unwrap();
    let mut largest_wal = 0;
    for b in 0..60_u64 {
        let records: Vec<Value> = (b * 5000..(b + 1) * 5000)
            .map(|i| {
                let status = ["paid", "shipped", "new"][(i % 3) as usize];
                json!({
                    "id": i,
                    "status": status,
                    "note": format!("order {i} of a long first load"),
                    "total": i as f64 * 0.25,
                })
            })
            .collect();
        w.write(batch(records).await).await.unwrap();
        largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    w.finish().await.unwrap();
    drop(sink);
    // 300,000 rows of about 60 bytes: DuckDB's own schedule lets the log
    // reach 16 MB before it checkpoints.
    assert!(largest_wal > 0, "the log was never seen");
    assert!(
        largest_wal < 12 << 20,
        "the write-ahead log reached {largest_wal} bytes"
    );
    assert_eq!(
        query(
            dir.path(),
            "SELECT count(*), count(DISTINCT id) FROM orders"
        ),
        vec![vec![json!(300_000), json!(300_000)]]
    );
    // Row groups of at most 32,768 rows (DuckDB's default would make 3 of
    // 122,880). Checkpoints after appends do not vacuum, so each leaves its
    // last group partly filled (rows appended later start a new one): one such
    // group per checkpoint (about 110,000 rows apart here, and one at the end).
    let groups = query(
        dir.path(),
        "SELECT count(*), max(n), count(*) FILTER (WHERE n < 32768) FROM \
         (SELECT row_group_id, sum(count)::BIGINT AS n FROM pragma_storage_info('orders') \
          WHERE column_id = 0 AND segment_type <> 'VALIDITY' GROUP BY row_group_id)",
    );
    let [total, largest, partial] = [0, 1, 2].map(|i| groups[0][i].as_u64().unwrap());
    assert_eq!(largest, 32_768, "{groups:?}");
    assert!(
        (2..=4).contains(&partial) && total <= 300_000_u64.div_ceil(32_768) + partial,
        "{groups:?}"
    );
}

/// The rows a re-sync replaced leave the file at its checkpoints (row groups
/// whose rows were all deleted are dropped; checkpoints after upserts may
/// also vacuum, those after appends do not): the file does not keep a second
/// copy of the table. DuckDB 1.5.6 keeps 7,232 deleted rows of 40,000 here.
#[tokio::test]
async fn a_re_sync_leaves_few_deleted_rows_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sink = DuckDbSink::open(
        &DuckDbSinkConfig::new("test.duckdb"),
        &ctx(dir.path(), false),
    )
    .unwrap();
    for pass in 0..2 {
        let mut w = sink.open(target("orders", Some("id"))).await.unwrap();
        for b in 0..8_u64 {
            let records: Vec<Value> = (b * 5000..(b + 1) * 5000)
                .map(|i| json!({"id": i, "note": format!("order {i}, pass {pass}")}))
                .collect();
            let ack = w.write(batch(records).await).await.unwrap();
            assert_eq!(ack.updated, if pass == 0 { 0 } else { 5000 });
        }
        w.finish().await.unwrap();
    }
    drop(sink);
    // Rows stored in the row groups, deleted ones included, against the live ones.
    let stored = query(
        dir.path(),
        "SELECT sum(n)::BIGINT, (SELECT count(*) FROM orders), (SELECT count(*) FROM orders WHERE note LIKE '%pass 1') \
         FROM (SELECT row_group_id, max(count) AS n FROM pragma_storage_info('orders') GROUP BY 1)",
    );
    let row = &stored[0];
    assert_eq!((&row[1], &row[2]), (&json!(40_000), &json!(40_000)));
    let kept = row[0].as_i64().unwrap();
    assert!(
        (40_000..=48_000).contains(&kept),
        "{kept} rows stored for 40,000 live ones"
    );
}

/// Every key the writer lists, page by page.
async fn listed_keys(ext: &mut dyn sluicegate_core::WriterExtension) -> (Vec<String>, usize) {
    let (mut keys, mut pages, mut page) = (Vec::new(), 0, None);
    loop {
        let listed = ext.target_keys(page.take()).await.unwrap();
        pages += 1;
        keys.extend(listed.keys);
        match listed.next {
            Some(next) => page = Some(next),
            None => return (keys, pages),
        }
    }
}

#[tokio::test]
async fn keys_are_listed_in_pages_and_removed_hard_or_soft() {
    use sluicegate_core::DeleteMode;
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let mut writer = sink.open(target("items", Some("id"))).await.unwrap();
    // Keys written in an order unlike their order as numbers or as text.
    let records: Vec<Value> = (0..25_000u64)
        .map(|i| json!({"id": (i * 7_919) % 25_000, "v": i}))
        .collect();
    for chunk in records.chunks(5_000) {
        writer.write(batch(chunk.to_vec()).await).await.unwrap();
    }
    let ext = writer.extension().unwrap();
    assert_eq!(ext.delete_modes(), [DeleteMode::Hard, DeleteMode::Soft]);
    let (mut keys, _) = listed_keys(ext).await;
    keys.sort_by_key(|k| k.parse::<u64>().unwrap());
    let expected: Vec<String> = (0..25_000).map(|i: u64| i.to_string()).collect();
    assert_eq!(keys, expected, "every key once, as text");

    let hard: Vec<String> = ["0", "9999", "10000", "24999"].map(str::to_owned).into();
    assert_eq!(ext.delete_keys(&hard, DeleteMode::Hard).await.unwrap(), 4);
    let soft: Vec<String> = ["5", "6"].map(str::to_owned).into();
    assert_eq!(ext.delete_keys(&soft, DeleteMode::Soft).await.unwrap(), 2);
    assert_eq!(
        ext.delete_keys(&soft, DeleteMode::Soft).await.unwrap(),
        0,
        "marked rows are not marked again"
    );
    let (keys, _) = listed_keys(ext).await;
    assert_eq!(keys.len(), 25_000 - 6);
    assert!(!keys.contains(&"5".to_owned()) && !keys.contains(&"9999".to_owned()));
    // A soft-deleted key written again is live again.
    writer
        .write(batch(vec![json!({"id": 5, "v": -1})]).await)
        .await
        .unwrap();
    writer.finish().await.unwrap();
    assert_eq!(
        query(
            dir.path(),
            "SELECT id, v, _deleted_at IS NULL FROM items WHERE id IN (5, 6, 9999) ORDER BY id"
        ),
        [
            vec![json!(5), json!(-1), json!(true)],
            vec![
                json!(6),
                json!((0..25_000u64).find(|i| i * 7_919 % 25_000 == 6).unwrap()),
                json!(false)
            ],
        ]
    );
}

/// Records of `width` fields besides `id` (ids from `first`).
fn wide(first: u64, rows: u64, width: usize) -> Vec<Value> {
    (first..first + rows)
        .map(|id| {
            let mut r = serde_json::Map::new();
            r.insert("id".into(), json!(id));
            for f in 0..width {
                r.insert(format!("f{f:03}"), json!(id * 1000 + f as u64));
            }
            Value::Object(r)
        })
        .collect()
}

/// A sink whose tables get a column for every field (up to 1,000).
fn sink_of_wide_tables(dir: &Path) -> DuckDbSink {
    let config = DuckDbSinkConfig {
        max_columns: 1000,
        ..config()
    };
    DuckDbSink::open(&config, &ctx(dir, false)).unwrap()
}

#[tokio::test]
async fn under_a_containers_limit_a_table_too_wide_for_it_stops_its_stream_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    // `maxColumns` raised: by default the table would stop at 64 columns.
    let sink = sink_of_wide_tables(dir.path());
    let limit = Some(128 << 20);
    // 100 columns plan 48 MiB + 24 outside DuckDB's pool: written.
    let mut narrow = sink
        .open(target("narrow", Some("id")).with_memory_limit(limit))
        .await
        .unwrap();
    narrow.write(batch(wide(0, 50, 100)).await).await.unwrap();
    // 600 more columns in a later batch of the same stream: refused, with
    // the figures, and nothing of that batch is written.
    let err = narrow
        .write(batch(wide(50, 50, 700)).await)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), sluicegate_core::ErrorKind::MemoryLimit);
    let text = err.to_string();
    assert!(
        text.contains("701 columns at once")
            && text.contains("more than the 128 MiB this process may use"),
        "{text}"
    );
    drop(narrow);
    // Another stream of the same sink is not affected.
    let mut other = sink
        .open(target("other", Some("id")).with_memory_limit(limit))
        .await
        .unwrap();
    other.write(batch(wide(0, 10, 5)).await).await.unwrap();
    other.finish().await.unwrap();
    drop(sink);
    assert_eq!(
        query(dir.path(), "SELECT count(*), max(id) FROM narrow"),
        vec![vec![json!(50), json!(49)]]
    );
    let columns = query(
        dir.path(),
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'narrow'",
    );
    assert_eq!(columns, vec![vec![json!(101)]], "no column added");
    assert_eq!(
        query(dir.path(), "SELECT count(*) FROM other"),
        vec![vec![json!(10)]]
    );
    // Without a limit, the same wide batch is written.
    let sink = sink_of_wide_tables(dir.path());
    let mut free = sink.open(target("narrow", Some("id"))).await.unwrap();
    free.write(batch(wide(50, 50, 700)).await).await.unwrap();
    free.finish().await.unwrap();
    drop(sink);
    assert_eq!(
        query(dir.path(), "SELECT count(*) FROM narrow"),
        vec![vec![json!(100)]]
    );
}

#[tokio::test]
async fn by_default_fields_past_64_columns_go_into_extra_and_fit_a_container() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), false);
    let limit = Some(128 << 20);
    let mut w = sink
        .open(target("wide", Some("id")).with_memory_limit(limit))
        .await
        .unwrap();
    w.write(batch(wide(0, 50, 40)).await).await.unwrap();
    // The batch refused above with every field a column: written, its
    // fields past the 64th column in `_extra`.
    let late = wide(50, 50, 700);
    w.write(batch(late.clone()).await).await.unwrap();
    w.finish().await.unwrap();
    drop(sink);
    let columns = query(
        dir.path(),
        "SELECT count(*), max(column_index::BIGINT) FILTER (column_name = '_extra'), string_agg(data_type, ',') FILTER (column_name = '_extra') FROM duckdb_columns() WHERE table_name = 'wide'",
    );
    // `id` and 63 of the fields, then `_extra`, the last column.
    assert_eq!(columns, vec![vec![json!(65), json!(65), json!("JSON")]]);
    assert_eq!(
        query(
            dir.path(),
            "SELECT count(*), count(_extra), min(id) FILTER (_extra IS NOT NULL) FROM wide"
        ),
        vec![vec![json!(100), json!(50), json!(50)]]
    );
    // Each row is its record: the columns it has and the fields in `_extra`.
    let rows = rows_as_records(dir.path(), "wide");
    let extra = query(
        dir.path(),
        "SELECT len(json_keys(_extra))::BIGINT FROM wide WHERE id = 50",
    );
    assert_eq!(extra, vec![vec![json!(700 - 63)]]);
    assert_eq!(&rows[50..], &late[..]);
}

/// A table whose `_extra` column is someone else's (another type, or the
/// name in another case) has no room for the sink's: a field past
/// `maxColumns` stops the stream with an error naming the column, nothing of
/// the batch written and no `_extra_2` added (which would read back as a
/// field's column, another one added on every run). Fields that have columns
/// still go in.
#[tokio::test]
async fn a_table_whose_extra_column_is_someone_elses_stops_fields_past_its_most_columns() {
    for (declared, name) in [("_extra VARCHAR", "_extra"), ("\"_Extra\" JSON", "_Extra")] {
        let dir = tempfile::tempdir().unwrap();
        duckdb::Connection::open(dir.path().join("test.duckdb"))
            .unwrap()
            .execute_batch(&format!("CREATE TABLE t (id BIGINT, a BIGINT, {declared})"))
            .unwrap();
        let config = DuckDbSinkConfig {
            max_columns: 3,
            ..config()
        };
        let sink = DuckDbSink::open(&config, &ctx(dir.path(), false)).unwrap();
        let mut w = sink.open(target("t", Some("id"))).await.unwrap();
        let past = w
            .write(batch(vec![json!({"id": 1, "a": 1, "b": "x"})]).await)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            past.contains(&format!("the table's column {name} ("))
                && past.contains("rename or drop the column"),
            "{past}"
        );
        // As JSON text too.
        let mut text = JsonRows::new();
        text.push(br#"{"id":2,"a":2,"b":"y"}"#).unwrap();
        let lease = MemoryBudget::unlimited().acquire(1024).await.unwrap();
        let past = w
            .write(Batch::from_json(text, lease))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            past.contains(&format!("the table's column {name} (")),
            "{past}"
        );
        let ack = w
            .write(batch(vec![json!({"id": 3, "a": 3})]).await)
            .await
            .unwrap();
        assert_eq!(ack.inserted, 1);
        w.finish().await.unwrap();
        drop(sink);
        let columns = query(
            dir.path(),
            "SELECT column_name FROM information_schema.columns WHERE table_name = 't' ORDER BY ordinal_position",
        );
        assert_eq!(
            columns,
            vec![vec![json!("id")], vec![json!("a")], vec![json!(name)]]
        );
        assert_eq!(
            query(dir.path(), "SELECT id, a FROM t"),
            vec![vec![json!(3), json!(3)]]
        );
    }
}

/// A dry run decodes its batches into records (maps, whose memory grows with
/// the rows), a real run parses them into columns: the dry run asks for
/// smaller batches, bounded by rows alone; the real run's are bounded by
/// bytes as well.
#[test]
fn a_dry_run_asks_for_smaller_batches_than_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let real = sink(dir.path(), false).capabilities();
    let dry = sink(dir.path(), true).capabilities();
    assert!(
        dry.preferred_batch_rows.unwrap() < real.preferred_batch_rows.unwrap(),
        "{dry:?} {real:?}"
    );
    assert_eq!(dry.preferred_batch_bytes, None);
    assert!(real.preferred_batch_bytes.is_some());
}
