//! One value's binary form, as PostgreSQL sends it, converted: into a
//! [`Value`] ([`decode`]), straight into JSON text ([`write_value`]), and the
//! text forms both share (`numeric` digit by digit, dates and timestamps in
//! ISO 8601, UUIDs), which the Arrow columns' decoder uses too.

use std::error::Error as StdError;
use std::fmt::Write as _;

use base64::Engine as _;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::types as wire;
use serde_json::{Number, Value};
use sluicegate_core::FieldType;
use tokio_postgres::types::{FromSql, Kind, Type};

type BoxError = Box<dyn StdError + Sync + Send>;
/// One value's binary bytes, as the server sent them.
pub(super) struct Raw<'a>(pub(super) &'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        Ok(Raw(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Writes one value as the JSON text of what [`decode`] makes of it; the
/// common types directly, without a [`Value`] in between.
pub(super) fn write_value(
    ty: &Type,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), BoxError> {
    match *ty {
        Type::BOOL => {
            out.extend_from_slice(if wire::bool_from_sql(raw)? {
                b"true"
            } else {
                b"false"
            });
        }
        Type::INT2 => serde_json::to_writer(out, &wire::int2_from_sql(raw)?)?,
        Type::INT4 => serde_json::to_writer(out, &wire::int4_from_sql(raw)?)?,
        Type::INT8 => serde_json::to_writer(out, &wire::int8_from_sql(raw)?)?,
        Type::OID => serde_json::to_writer(out, &wire::oid_from_sql(raw)?)?,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::XML => {
            serde_json::to_writer(out, wire::text_from_sql(raw)?)?;
        }
        // Digits, signs, points, colons, `NaN`/`infinity`: nothing to escape.
        Type::NUMERIC => quoted(out, |out| write_numeric(raw, out))?,
        Type::DATE => quoted(out, |out| {
            write_date(wire::date_from_sql(raw)?, out);
            Ok(())
        })?,
        Type::TIMESTAMP => quoted(out, |out| {
            write_timestamp(wire::timestamp_from_sql(raw)?, b"", out);
            Ok(())
        })?,
        Type::TIMESTAMPTZ => quoted(out, |out| {
            write_timestamp(wire::timestamp_from_sql(raw)?, b"Z", out);
            Ok(())
        })?,
        Type::UUID => quoted(out, |out| {
            write_uuid(wire::uuid_from_sql(raw)?, out);
            Ok(())
        })?,
        Type::FLOAT8 => serde_json::to_writer(out, &float(wire::float8_from_sql(raw)?))?,
        Type::JSON => compact_json(raw, out),
        Type::JSONB => match raw.split_first() {
            Some((1, body)) => compact_json(body, out),
            _ => return Err("unknown jsonb version".into()),
        },
        _ => serde_json::to_writer(out, &decode(ty, raw)?)?,
    }
    Ok(())
}

/// Writes what `write` writes between double quotes: a JSON string, for text
/// that needs no escaping.
pub(super) fn quoted(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), BoxError>,
) -> std::result::Result<(), BoxError> {
    out.push(b'"');
    write(out)?;
    out.push(b'"');
    Ok(())
}

/// Copies JSON text (the server checked it) without the whitespace between
/// tokens, so that a sink finds it as compact as `serde_json` writes it.
pub(super) fn compact_json(text: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else if b == b'"' {
            in_string = true;
        }
        out.push(b);
    }
}

/// The type a sink may store a column's values as (see [`FieldType`]):
/// `numeric(p,s)` with 0 ≤ s ≤ p (not a bare `numeric`, whose values have
/// any scale), `date`, `timestamp`, `timestamptz`; their values are written
/// in the forms [`FieldType`] documents (see [`decode`]).
pub(super) fn field_type(ty: &Type, modifier: i32) -> Option<FieldType> {
    match *ty {
        // The modifier is ((precision << 16) | scale) + 4 (the scale as 11
        // signed bits since PostgreSQL 15); -1 without one.
        Type::NUMERIC if modifier >= 4 => {
            let m = modifier - 4;
            let precision = u16::try_from((m >> 16) & 0xffff).ok()?;
            let scale = m & 0x7ff;
            // A negative scale (its sign bit) or one above the precision.
            let scale = u16::try_from(scale)
                .ok()
                .filter(|s| *s <= 0x3ff && *s <= precision)?;
            (precision > 0).then_some(FieldType::Decimal { precision, scale })
        }
        Type::DATE => Some(FieldType::Date),
        Type::TIMESTAMP => Some(FieldType::Timestamp),
        Type::TIMESTAMPTZ => Some(FieldType::TimestampUtc),
        _ => None,
    }
}

/// Whether values of `ty` are JSON (`json`, `jsonb`, or a domain over one).
pub(super) fn is_json(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Domain(base) => is_json(base),
        _ => *ty == Type::JSON || *ty == Type::JSONB,
    }
}

/// One column value converted to JSON.
pub(super) struct PgValue(pub(super) Value);

impl<'a> FromSql<'a> for PgValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        decode(ty, raw).map(PgValue)
    }

    fn from_sql_null(_ty: &Type) -> std::result::Result<Self, BoxError> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Converts one binary-format value of type `ty`:
///
/// | PostgreSQL | JSON |
/// |---|---|
/// | `smallint`, `integer`, `bigint`, `oid` | number (exact) |
/// | `real`, `double precision` | number; `NaN`/`Infinity` as strings |
/// | `numeric` | string with every digit (`"12345678901234567890.0001"`) |
/// | `boolean` | boolean |
/// | `text`, `varchar`, `char(n)`, `name`, `citext`, enums, `xml` | string |
/// | `json`, `jsonb` | the JSON value itself, the field declared JSON (SQL NULL: the field is left out) |
/// | `uuid` | string (`"a0ee…"`) |
/// | `bytea` | base64 string |
/// | `date` | `"2024-02-29"` |
/// | `timestamp` | `"2024-02-29T13:45:00.5"` (no zone) |
/// | `timestamptz` | `"2024-02-29T12:45:00.5Z"` (UTC) |
/// | `time` / `timetz` | `"13:45:00.5"` / `"13:45:00.5+01:00"` |
/// | `interval` | ISO 8601 (`"P1Y2M3DT4H5M6.5S"`) |
/// | `inet`, `cidr`, `macaddr` | string |
/// | arrays | arrays (nested for several dimensions) |
/// | domains | as their base type |
pub(super) fn decode(ty: &Type, raw: &[u8]) -> std::result::Result<Value, BoxError> {
    match ty.kind() {
        Kind::Array(element) => return array(element, raw),
        Kind::Domain(base) => return decode(base, raw),
        Kind::Enum(_) => return Ok(Value::String(wire::text_from_sql(raw)?.to_owned())),
        Kind::Simple => {}
        _ => return Err(unsupported(ty)),
    }
    Ok(match *ty {
        Type::BOOL => Value::Bool(wire::bool_from_sql(raw)?),
        Type::INT2 => Value::from(wire::int2_from_sql(raw)?),
        Type::INT4 => Value::from(wire::int4_from_sql(raw)?),
        Type::INT8 => Value::from(wire::int8_from_sql(raw)?),
        Type::OID => Value::from(wire::oid_from_sql(raw)?),
        Type::FLOAT4 => {
            let v = wire::float4_from_sql(raw)?;
            // Through the shortest decimal form: 1.1f32 stays 1.1, not 1.100000023841858.
            float(v.to_string().parse::<f64>().unwrap_or(f64::from(v)))
        }
        Type::FLOAT8 => float(wire::float8_from_sql(raw)?),
        Type::NUMERIC => Value::String(numeric(raw)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::XML => {
            Value::String(wire::text_from_sql(raw)?.to_owned())
        }
        Type::CHAR => Value::String(char::from(wire::char_from_sql(raw)? as u8).to_string()),
        Type::JSON => serde_json::from_slice(raw)?,
        Type::JSONB => match raw.split_first() {
            Some((1, body)) => serde_json::from_slice(body)?,
            _ => return Err("unknown jsonb version".into()),
        },
        Type::UUID => Value::String(uuid(wire::uuid_from_sql(raw)?)),
        Type::BYTEA => Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
        Type::DATE => Value::String(date(wire::date_from_sql(raw)?)),
        Type::TIMESTAMP => Value::String(timestamp(wire::timestamp_from_sql(raw)?, "")),
        Type::TIMESTAMPTZ => Value::String(timestamp(wire::timestamp_from_sql(raw)?, "Z")),
        Type::TIME => Value::String(time_of_day(wire::time_from_sql(raw)?)),
        Type::TIMETZ => Value::String(timetz(raw)?),
        Type::INTERVAL => Value::String(interval(raw)?),
        Type::INET | Type::CIDR => {
            let inet = wire::inet_from_sql(raw)?;
            let full = if inet.addr().is_ipv4() { 32 } else { 128 };
            if *ty == Type::INET && inet.netmask() == full {
                Value::String(inet.addr().to_string())
            } else {
                Value::String(format!("{}/{}", inet.addr(), inet.netmask()))
            }
        }
        Type::MACADDR => {
            let m = wire::macaddr_from_sql(raw)?;
            Value::String(
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            )
        }
        _ if ty.name() == "citext" => Value::String(wire::text_from_sql(raw)?.to_owned()),
        _ => return Err(unsupported(ty)),
    })
}

pub(super) fn unsupported(ty: &Type) -> BoxError {
    format!(
        "type {} has no lossless conversion to JSON; cast it in the query (for example col::text or to_jsonb(col))",
        ty.name()
    )
    .into()
}

pub(super) fn float(v: f64) -> Value {
    Number::from_f64(v).map_or_else(
        || {
            Value::String(if v.is_nan() {
                "NaN".into()
            } else if v > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            })
        },
        Value::Number,
    )
}

pub(super) fn array(element: &Type, raw: &[u8]) -> std::result::Result<Value, BoxError> {
    let array = wire::array_from_sql(raw)?;
    let dims: Vec<usize> = array
        .dimensions()
        .map(|d| Ok(usize::try_from(d.len).unwrap_or(0)))
        .collect()?;
    let values: Vec<Value> = array
        .values()
        .map(|v| match v {
            None => Ok(Value::Null),
            Some(raw) => decode(element, raw).map_err(|e| {
                // FallibleIterator wants its error type back.
                Box::<dyn StdError + Sync + Send>::from(e.to_string())
            }),
        })
        .collect()?;
    if dims.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    let mut values = values.into_iter();
    Ok(nest(&dims, &mut values))
}

/// Reshapes the flat element list into nested arrays of the given dimensions.
pub(super) fn nest(dims: &[usize], values: &mut impl Iterator<Item = Value>) -> Value {
    match dims.split_first() {
        Some((&len, [])) => Value::Array(values.take(len).collect()),
        Some((&len, rest)) => Value::Array((0..len).map(|_| nest(rest, values)).collect()),
        None => Value::Null,
    }
}

/// `numeric` in the binary format: base-10000 digits, a weight and a scale,
/// printed with exactly `dscale` fractional digits as PostgreSQL does.
pub(super) fn numeric(raw: &[u8]) -> std::result::Result<String, BoxError> {
    let mut out = Vec::new();
    write_numeric(raw, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes `numeric`'s text (see [`numeric`]) into `out`.
pub(super) fn write_numeric(raw: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), BoxError> {
    let word = |i: usize| -> std::result::Result<i16, BoxError> {
        raw.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = usize::try_from(word(0)?).unwrap_or(0);
    let weight = i32::from(word(2)?);
    let sign = word(4)? as u16;
    let dscale = word(6)? as u16 as usize;
    let special: &[u8] = match sign {
        0xC000 => b"NaN",
        0xD000 => b"Infinity",
        0xF000 => b"-Infinity",
        _ => b"",
    };
    if !special.is_empty() {
        out.extend_from_slice(special);
        return Ok(());
    }
    let digits = raw.get(8..8 + 2 * ndigits).ok_or("truncated numeric")?;
    if digits
        .chunks_exact(2)
        .any(|d| !(0..10_000).contains(&i16::from_be_bytes([d[0], d[1]])))
    {
        return Err("a numeric digit outside 0..9999".into());
    }
    // The base-10000 digit at `i` (0 is the first), 0 beyond those sent.
    let digit = |i: i32| -> u64 {
        usize::try_from(i)
            .ok()
            .filter(|&i| i < ndigits)
            .map_or(0, |i| {
                u64::from(u16::from_be_bytes([digits[2 * i], digits[2 * i + 1]]))
            })
    };
    if sign == 0x4000 {
        out.push(b'-');
    }
    if weight < 0 {
        out.push(b'0');
    } else {
        push_padded(out, digit(0), 1);
        for i in 1..=weight {
            push_padded(out, digit(i), 4);
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let mut left = dscale;
        let mut i = weight + 1;
        while left > 0 {
            let d = digit(i);
            let group = [d / 1000, d / 100 % 10, d / 10 % 10, d % 10].map(|x| b'0' + x as u8);
            let take = left.min(4);
            out.extend_from_slice(&group[..take]);
            left -= take;
            i += 1;
        }
    }
    Ok(())
}

/// What `write` writes (ASCII), as a string: the value a record holds where
/// the JSON-text path writes the same text into the row.
pub(super) fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    write(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
pub(super) fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in buf.len() - start..width {
        out.push(b'0');
    }
    out.extend_from_slice(&buf[start..]);
}

pub(super) fn uuid(b: [u8; 16]) -> String {
    text(|out| write_uuid(b, out))
}

/// Writes a UUID in its canonical form: lower-case hex, grouped 8-4-4-4-12.
pub(super) fn write_uuid(b: [u8; 16], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0xf)]);
    }
}

/// `.ffffff` without trailing zeros, or nothing for whole seconds.
pub(super) fn fraction(micros: i64) -> String {
    text(|out| write_fraction(micros, out))
}

/// Writes [`fraction`]'s text into `out`.
pub(super) fn write_fraction(micros: i64, out: &mut Vec<u8>) {
    if micros == 0 {
        return;
    }
    let (mut m, mut digits) = (micros.unsigned_abs(), 6);
    while m % 10 == 0 {
        m /= 10;
        digits -= 1;
    }
    out.push(b'.');
    push_padded(out, m, digits);
}

/// The proleptic Gregorian date `days` after 2000-01-01, for every day
/// PostgreSQL can hold (4714 BC to 5874897 AD), where `chrono` stops at
/// ±262143 years: year, month, day (Howard Hinnant's `civil_from_days`).
pub(super) fn civil(days: i64) -> (i64, u32, u32) {
    // Shift to days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD`; astronomical years (0 is 1 BC), with a sign and at least four
/// digits outside 0..=9999 (ISO 8601's expanded form, as `chrono` writes it).
#[cfg(test)]
pub(super) fn ymd(days: i64) -> String {
    text(|out| write_ymd(days, out))
}

/// Writes `ymd`'s text into `out`.
pub(super) fn write_ymd(days: i64, out: &mut Vec<u8>) {
    let (year, month, day) = civil(days);
    if year < 0 {
        out.push(b'-');
    } else if year > 9999 {
        out.push(b'+');
    }
    push_padded(out, year.unsigned_abs(), 4);
    out.push(b'-');
    push_padded(out, u64::from(month), 2);
    out.push(b'-');
    push_padded(out, u64::from(day), 2);
}

pub(super) fn date(days: i32) -> String {
    text(|out| write_date(days, out))
}

/// Writes [`date`]'s text into `out`.
pub(super) fn write_date(days: i32, out: &mut Vec<u8>) {
    match days {
        i32::MAX => out.extend_from_slice(b"infinity"),
        i32::MIN => out.extend_from_slice(b"-infinity"),
        d => write_ymd(i64::from(d), out),
    }
}

pub(super) fn timestamp(micros: i64, zone: &str) -> String {
    text(|out| write_timestamp(micros, zone.as_bytes(), out))
}

/// Writes [`timestamp`]'s text into `out`.
pub(super) fn write_timestamp(micros: i64, zone: &[u8], out: &mut Vec<u8>) {
    match micros {
        i64::MAX => out.extend_from_slice(b"infinity"),
        i64::MIN => out.extend_from_slice(b"-infinity"),
        m => {
            let days = m.div_euclid(86_400_000_000);
            let of_day = m.rem_euclid(86_400_000_000);
            let secs = (of_day / 1_000_000).unsigned_abs();
            write_ymd(days, out);
            out.push(b'T');
            push_padded(out, secs / 3600, 2);
            out.push(b':');
            push_padded(out, secs / 60 % 60, 2);
            out.push(b':');
            push_padded(out, secs % 60, 2);
            write_fraction(of_day % 1_000_000, out);
            out.extend_from_slice(zone);
        }
    }
}

pub(super) fn time_of_day(micros: i64) -> String {
    let secs = micros / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}{}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        fraction(micros % 1_000_000)
    )
}

pub(super) fn timetz(raw: &[u8]) -> std::result::Result<String, BoxError> {
    let (time, zone) = raw.split_at_checked(8).ok_or("truncated timetz")?;
    let micros = wire::time_from_sql(time)?;
    let zone: [u8; 4] = zone.try_into().map_err(|_| "truncated timetz")?;
    // Stored as seconds west of UTC.
    let east = -i32::from_be_bytes(zone);
    let sign = if east < 0 { '-' } else { '+' };
    let e = east.abs();
    let mut out = format!(
        "{}{sign}{:02}:{:02}",
        time_of_day(micros),
        e / 3600,
        e / 60 % 60
    );
    if e % 60 != 0 {
        let _ = write!(out, ":{:02}", e % 60);
    }
    Ok(out)
}

/// ISO 8601, as PostgreSQL's `intervalstyle = iso_8601` prints it.
pub(super) fn interval(raw: &[u8]) -> std::result::Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("interval must be 16 bytes".into());
    }
    let micros = i64::from_be_bytes(raw[0..8].try_into()?);
    let days = i32::from_be_bytes(raw[8..12].try_into()?);
    let months = i32::from_be_bytes(raw[12..16].try_into()?);
    if micros == 0 && days == 0 && months == 0 {
        return Ok("PT0S".into());
    }
    let mut out = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (n, unit) in [(years, 'Y'), (months, 'M'), (days, 'D')] {
        if n != 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    if micros != 0 {
        out.push('T');
        let hours = micros / 3_600_000_000;
        let minutes = micros / 60_000_000 % 60;
        let seconds = micros / 1_000_000 % 60;
        let sub = micros % 1_000_000;
        if hours != 0 {
            let _ = write!(out, "{hours}H");
        }
        if minutes != 0 {
            let _ = write!(out, "{minutes}M");
        }
        if seconds != 0 || sub != 0 {
            let sign = if micros < 0 && seconds == 0 { "-" } else { "" };
            let _ = write!(out, "{sign}{seconds}{}S", fraction(sub));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn typed_columns_are_declared_when_a_sink_can_hold_them() {
        let numeric = |p: i32, s: i32| field_type(&Type::NUMERIC, ((p << 16) | (s & 0x7ff)) + 4);
        assert_eq!(
            numeric(12, 2),
            Some(FieldType::Decimal {
                precision: 12,
                scale: 2
            })
        );
        assert_eq!(
            numeric(1000, 0),
            Some(FieldType::Decimal {
                precision: 1000,
                scale: 0
            })
        );
        assert_eq!(numeric(5, -2), None, "negative scale");
        assert_eq!(numeric(2, 5), None, "scale above the precision");
        assert_eq!(field_type(&Type::NUMERIC, -1), None, "any scale");
        assert_eq!(field_type(&Type::DATE, -1), Some(FieldType::Date));
        assert_eq!(field_type(&Type::TIMESTAMP, 6), Some(FieldType::Timestamp));
        assert_eq!(
            field_type(&Type::TIMESTAMPTZ, -1),
            Some(FieldType::TimestampUtc)
        );
        assert_eq!(field_type(&Type::TEXT, -1), None);
    }

    use super::*;

    fn numeric_bytes(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale as i16] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_keep_every_digit() {
        // 12345678901234567890.000100 = [1234][5678][9012][3456][7890].[0001]
        let raw = numeric_bytes(6, 4, 0, 6, &[1234, 5678, 9012, 3456, 7890, 1]);
        assert_eq!(numeric(&raw).unwrap(), "12345678901234567890.000100");
        // -0.00042 with scale 5: weight -1, digits [0004][2000]? no: 0.00042 = [0004].[2000] at weight -1
        let raw = numeric_bytes(2, -1, 0x4000, 5, &[4, 2000]);
        assert_eq!(numeric(&raw).unwrap(), "-0.00042");
        // 0.000000001 (weight -3: first group is 10^-12..10^-9... ) = group index -3 → [1000]? use 1e-9
        let raw = numeric_bytes(1, -3, 0, 9, &[1000]);
        assert_eq!(numeric(&raw).unwrap(), "0.000000001");
        let raw = numeric_bytes(1, 1, 0, 0, &[7]);
        assert_eq!(numeric(&raw).unwrap(), "70000");
        let raw = numeric_bytes(0, 0, 0, 2, &[]);
        assert_eq!(numeric(&raw).unwrap(), "0.00");
        assert_eq!(
            numeric(&numeric_bytes(0, 0, 0xC000, 0, &[])).unwrap(),
            "NaN"
        );
    }

    #[test]
    fn dates_match_chrono_wherever_chrono_reaches() {
        let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
        let mut d: i64 = -95_000_000;
        while d < 95_000_000 {
            let want = (epoch + chrono::TimeDelta::days(d))
                .format("%Y-%m-%d")
                .to_string();
            assert_eq!(ymd(d), want, "day {d}");
            d += 9_973;
        }
        for d in -800..800 {
            let want = (epoch + chrono::TimeDelta::days(d))
                .format("%Y-%m-%d")
                .to_string();
            assert_eq!(ymd(d), want, "day {d}");
        }
    }

    #[test]
    fn times_print_like_postgres_iso_output() {
        assert_eq!(timestamp(0, "Z"), "2000-01-01T00:00:00Z");
        assert_eq!(timestamp(-1, ""), "1999-12-31T23:59:59.999999");
        assert_eq!(timestamp(500_000, ""), "2000-01-01T00:00:00.5");
        assert_eq!(date(-1), "1999-12-31");
        // Beyond chrono's ±262143 years: PostgreSQL's extremes, no panic.
        assert_eq!(date(2_147_483_494 - 2_451_545 - 1), "+5874897-12-31");
        assert_eq!(
            date(-2_451_545),
            "-4713-11-24",
            "4714 BC, the first day PostgreSQL holds"
        );
        assert_eq!(timestamp(i64::MAX - 1, ""), "+294277-01-09T04:00:54.775806");
        assert_eq!(date(i32::MAX), "infinity");
        assert_eq!(time_of_day(86_400_000_000), "24:00:00");
        let mut raw = 3_600_000_000i64.to_be_bytes().to_vec();
        raw.extend_from_slice(&(-19_800i32).to_be_bytes());
        assert_eq!(timetz(&raw).unwrap(), "01:00:00+05:30");
    }

    /// A small deterministic generator (xorshift), for values no one picked.
    fn draws(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    /// The text a row's value gets on the JSON-text path.
    fn written(ty: &Type, raw: &[u8]) -> String {
        let mut out = Vec::new();
        write_value(ty, raw, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn written_timestamps_dates_and_uuids_match_independent_formatting() {
        let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        for draw in draws(0x9e37_79b9_7f4a_7c15).take(20_000) {
            // About 7500 BC to 11500 AD: signed and five-digit years too.
            let micros = (draw % 600_000_000_000_000_000) as i64 - 300_000_000_000_000_000;
            let at = epoch + chrono::TimeDelta::microseconds(micros);
            let sub = at.and_utc().timestamp_subsec_micros();
            let fraction = if sub == 0 {
                String::new()
            } else {
                format!(".{sub:06}").trim_end_matches('0').to_owned()
            };
            let want = format!("{}{fraction}", at.format("%Y-%m-%dT%H:%M:%S"));
            let raw = micros.to_be_bytes();
            assert_eq!(
                written(&Type::TIMESTAMP, &raw),
                format!("\"{want}\""),
                "{micros}"
            );
            assert_eq!(
                written(&Type::TIMESTAMPTZ, &raw),
                format!("\"{want}Z\""),
                "{micros}"
            );
            let days = micros.div_euclid(86_400_000_000) as i32;
            let want = (epoch.date() + chrono::TimeDelta::days(i64::from(days))).format("%Y-%m-%d");
            assert_eq!(
                written(&Type::DATE, &days.to_be_bytes()),
                format!("\"{want}\"")
            );
            let bytes: [u8; 16] =
                (u128::from(draw) << 64 | u128::from(draw.rotate_left(17))).to_be_bytes();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let want = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            assert_eq!(written(&Type::UUID, &bytes), format!("\"{want}\""));
        }
        assert_eq!(
            written(&Type::TIMESTAMP, &i64::MAX.to_be_bytes()),
            "\"infinity\""
        );
        assert_eq!(
            written(&Type::DATE, &i32::MIN.to_be_bytes()),
            "\"-infinity\""
        );
    }

    #[test]
    fn written_numerics_match_the_digit_by_digit_formatting() {
        // PostgreSQL's own rule, written out with `format!`: base-10000
        // digits around the point, then exactly `dscale` fractional digits.
        fn oracle(weight: i16, negative: bool, dscale: u16, digits: &[i16]) -> String {
            let d = |i: i32| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| digits.get(i))
                    .copied()
                    .unwrap_or(0)
            };
            let mut s = String::from(if negative { "-" } else { "" });
            if weight < 0 {
                s.push('0');
            } else {
                s += &d(0).to_string();
                for i in 1..=i32::from(weight) {
                    s += &format!("{:04}", d(i));
                }
            }
            if dscale > 0 {
                let mut f = String::new();
                let mut i = i32::from(weight) + 1;
                while f.len() < usize::from(dscale) {
                    f += &format!("{:04}", d(i));
                    i += 1;
                }
                f.truncate(usize::from(dscale));
                s = format!("{s}.{f}");
            }
            s
        }
        let mut draw = draws(0x2545_f491_4f6c_dd1d);
        let mut next = |n: u64| draw.next().unwrap() % n;
        for _ in 0..20_000 {
            let ndigits = next(12) as i16;
            let weight = next(16) as i16 - 8;
            let negative = next(2) == 1;
            let dscale = next(40) as u16;
            let digits: Vec<i16> = (0..ndigits).map(|_| next(10_000) as i16).collect();
            let raw = numeric_bytes(
                ndigits,
                weight,
                if negative { 0x4000 } else { 0 },
                dscale,
                &digits,
            );
            let want = oracle(weight, negative, dscale, &digits);
            assert_eq!(numeric(&raw).unwrap(), want);
            assert_eq!(written(&Type::NUMERIC, &raw), format!("\"{want}\""));
        }
        let bad = numeric_bytes(1, 0, 0, 0, &[10_000]);
        assert!(numeric(&bad).is_err(), "a digit past 9999 is refused");
        assert!(
            numeric(&numeric_bytes(3, 0, 0, 0, &[1])).is_err(),
            "truncated"
        );
    }

    #[test]
    fn intervals_are_iso_8601() {
        let raw = |micros: i64, days: i32, months: i32| {
            let mut b = micros.to_be_bytes().to_vec();
            b.extend_from_slice(&days.to_be_bytes());
            b.extend_from_slice(&months.to_be_bytes());
            b
        };
        assert_eq!(
            interval(&raw(14_706_500_000, 3, 14)).unwrap(),
            "P1Y2M3DT4H5M6.5S"
        );
        assert_eq!(interval(&raw(0, 0, 0)).unwrap(), "PT0S");
        assert_eq!(interval(&raw(-500_000, 0, 0)).unwrap(), "PT-0.5S");
        assert_eq!(interval(&raw(0, -1, 0)).unwrap(), "P-1D");
    }
}
