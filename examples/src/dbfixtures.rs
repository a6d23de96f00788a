//! A table with every supported column type, per provider, and the records a
//! database source must read from it: shared by the source's tests and the
//! end-to-end tests into DuckDB.

use serde_json::{Value, json};

use crate::dbserver::DbKind;

/// Text that must survive every hop unchanged.
pub const NON_ASCII: &str = "Grüße, 東京 — naïve café 🚀 'quoted' \\ back";

/// SQL creating and filling `every_type` (rows 1..=2: all values, all NULLs).
pub fn every_type_sql(kind: DbKind) -> String {
    let text = NON_ASCII.replace('\'', "''");
    match kind {
        DbKind::Postgres => format!(
            r#"
DROP TABLE IF EXISTS every_type;
DROP TYPE IF EXISTS mood;
DROP DOMAIN IF EXISTS positive;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE every_type (
  id bigint PRIMARY KEY,
  small smallint, int_v integer, big bigint, real_v real, double_v double precision,
  price numeric(30,10), huge numeric, flag boolean,
  name_v text, code char(4), vc varchar(40),
  doc json, docb jsonb, uid uuid, bytes bytea,
  day date, ts timestamp(6), tstz timestamptz(6), tm time(6), tmtz timetz, span interval,
  ints integer[], texts text[], grid integer[][], mood_v mood, pos positive,
  ip inet, net cidr, mac macaddr
);
INSERT INTO every_type VALUES (
  1, -32768, 2147483647, 9223372036854775807, 1.1, 0.1,
  12345678901234567890.0123456789, -99999999999999999999999999999999999999.000000000000000000001, true,
  E'{text}', 'ab', 'x',
  '{{"a": [1, 2.5, null], "b": {{"c": "ü"}}}}', '{{"z": 1, "a": [true]}}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\xdeadbeef00',
  '2024-02-29', '2024-02-29 13:45:00.5', '2024-02-29 13:45:00.5+01', '23:59:59.999999', '01:00:00+05:30',
  '1 year 2 months 3 days 04:05:06.5',
  '{{1,NULL,3}}', '{{"a","b c","ü"}}', '{{{{1,2}},{{3,4}}}}', 'sad', 7,
  '192.168.0.1', '10.0.0.0/8', '08:00:2b:01:02:03'
);
INSERT INTO every_type (id) VALUES (2);
"#,
            text = text.replace('\\', "\\\\")
        ),
        DbKind::Mariadb => format!(
            r#"
DROP TABLE IF EXISTS every_type;
CREATE TABLE every_type (
  id BIGINT PRIMARY KEY,
  tiny TINYINT, small SMALLINT, medium MEDIUMINT, int_v INT, big BIGINT, ubig BIGINT UNSIGNED,
  flag BOOLEAN, price DECIMAL(38,10), float_v FLOAT, double_v DOUBLE, bits BIT(12), yr YEAR,
  name_v VARCHAR(100), txt TEXT, ch CHAR(3), en ENUM('a','b'), st SET('x','y'),
  doc JSON, bin VARBINARY(16), blob_v BLOB,
  day DATE, dt DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(3)
) CHARACTER SET utf8mb4;
SET time_zone = '+01:00';
INSERT INTO every_type VALUES (
  1, -128, -32768, 8388607, -2147483648, -9223372036854775808, 18446744073709551615,
  TRUE, 1234567890123456789012345678.0123456789, 1.5, 0.1, b'101010101010', 2024,
  '{text}', '{text}', 'abc', 'b', 'x,y',
  '{{"a": [1, 2.5, null]}}', X'DEADBEEF00', X'00FF',
  '2024-02-29', '2024-02-29 13:45:00.5', '2024-02-29 13:45:00.5', '-838:59:59.000'
);
INSERT INTO every_type (id) VALUES (2);
"#,
            text = text.replace('\\', "\\\\")
        ),
    }
}

/// The records a source reads from `every_type`, in key order.
pub fn every_type_records(kind: DbKind) -> Vec<Value> {
    match kind {
        DbKind::Postgres => {
            let full = json!({
                "id": 1, "small": -32768, "int_v": 2147483647, "big": 9223372036854775807i64,
                "real_v": 1.1, "double_v": 0.1,
                "price": "12345678901234567890.0123456789",
                "huge": "-99999999999999999999999999999999999999.000000000000000000001",
                "flag": true,
                "name_v": NON_ASCII, "code": "ab  ", "vc": "x",
                "doc": {"a": [1, 2.5, null], "b": {"c": "ü"}},
                "docb": {"a": [true], "z": 1},
                "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "bytes": "3q2+7wA=",
                "day": "2024-02-29", "ts": "2024-02-29T13:45:00.5",
                "tstz": "2024-02-29T12:45:00.5Z", "tm": "23:59:59.999999",
                "tmtz": "01:00:00+05:30", "span": "P1Y2M3DT4H5M6.5S",
                "ints": [1, null, 3], "texts": ["a", "b c", "ü"], "grid": [[1, 2], [3, 4]],
                "mood_v": "sad", "pos": 7,
                "ip": "192.168.0.1", "net": "10.0.0.0/8", "mac": "08:00:2b:01:02:03",
            });
            // SQL NULL in a JSON column is a field left out (JSON `null` is a value).
            let mut nulls = nulls_except_id(&full, 2);
            for json in ["doc", "docb"] {
                nulls.as_object_mut().expect("an object").remove(json);
            }
            vec![full.clone(), nulls]
        }
        DbKind::Mariadb => {
            let full = json!({
                "id": 1, "tiny": -128, "small": -32768, "medium": 8388607, "int_v": -2147483648i64,
                "big": -9223372036854775808i64, "ubig": 18446744073709551615u64,
                "flag": 1, "price": "1234567890123456789012345678.0123456789",
                "float_v": 1.5, "double_v": 0.1, "bits": 2730, "yr": 2024,
                "name_v": NON_ASCII, "txt": NON_ASCII, "ch": "abc", "en": "b", "st": "x,y",
                // MariaDB's JSON is LONGTEXT: text unless listed in jsonColumns.
                "doc": "{\"a\": [1, 2.5, null]}",
                "bin": "3q2+7wA=", "blob_v": "AP8=",
                "day": "2024-02-29", "dt": "2024-02-29T13:45:00.5",
                "ts": "2024-02-29T12:45:00.5Z", "tm": "-838:59:59",
            });
            vec![full.clone(), nulls_except_id(&full, 2)]
        }
    }
}

fn nulls_except_id(full: &Value, id: i64) -> Value {
    let mut row = full.clone();
    for (k, v) in row.as_object_mut().expect("an object") {
        *v = if k == "id" { json!(id) } else { Value::Null };
    }
    row
}
