//! Typed columns for fields a source declared ([`FieldType`]): `DECIMAL(p,s)`,
//! `DATE`, `TIMESTAMP` and `TIMESTAMPTZ` instead of the text the values
//! travel as.
//!
//! A value goes into such a column only when the column holds it exactly and
//! DuckDB reads it back as the same text (the forms [`FieldType`] documents,
//! years 1 to 9999): a decimal with exactly the column's scale, no `-0`; a
//! valid date; a time of day below 24:00 with at most six fractional digits,
//! none trailing zero. A JSON number goes into a `DECIMAL` column when its
//! digits fit (numbers are stored by value, as in `DOUBLE` columns). Anything
//! else (`NaN`, `infinity`, year 10000, another scale, a boolean) makes the
//! column `VARCHAR`, its rows rewritten as the text they came as
//! ([`as_text`]), so every value stays exact.

use sluicegate_core::FieldType;

use crate::schema::ColumnType;

/// DuckDB's widest `DECIMAL`.
const MAX_PRECISION: u16 = 38;

/// A value of a typed column, as Arrow holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Typed {
    /// The decimal's digits without its point (scaled by the column's scale).
    Decimal(i128),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00 (UTC for `TIMESTAMPTZ`).
    Micros(i64),
}

/// The column type a declared field gets, when DuckDB has one that holds it
/// (`DECIMAL` up to 38 digits). A decimal of only fractional digits gets one
/// integer digit more: DuckDB writes `DECIMAL(5,5)`'s -0.5 as `-.50000`,
/// `DECIMAL(6,5)`'s as `-0.50000`, as the source does.
pub(crate) fn column_type(declared: FieldType) -> Option<ColumnType> {
    Some(match declared {
        FieldType::Decimal { precision, scale }
            if (1..=MAX_PRECISION).contains(&precision) && scale < precision =>
        {
            ColumnType::Decimal(precision as u8, scale as u8)
        }
        FieldType::Decimal { precision, scale }
            if (1..MAX_PRECISION).contains(&precision) && scale == precision =>
        {
            ColumnType::Decimal(precision as u8 + 1, scale as u8)
        }
        FieldType::Date => ColumnType::Date,
        FieldType::Timestamp => ColumnType::Timestamp,
        FieldType::TimestampUtc => ColumnType::TimestampTz,
        _ => return None,
    })
}

/// A string's value in a column of type `ty`, when the column holds it
/// exactly (see the module docs); `None` otherwise, and for columns that are
/// not typed.
pub(crate) fn parse_str(ty: &ColumnType, text: &str) -> Option<Typed> {
    match ty {
        ColumnType::Decimal(p, s) => decimal(text, *p, *s, true).map(Typed::Decimal),
        ColumnType::Date => date(text.as_bytes()).map(Typed::Date),
        ColumnType::Timestamp => timestamp(text.as_bytes()).map(Typed::Micros),
        ColumnType::TimestampTz => text
            .strip_suffix('Z')
            .and_then(|t| timestamp(t.as_bytes()))
            .map(Typed::Micros),
        _ => None,
    }
}

/// Whether a column of type `ty` holds `value` exactly (null: yes).
pub(crate) fn fits(ty: &ColumnType, value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::String(s) => parse_str(ty, s).is_some(),
        serde_json::Value::Number(n) => parse_number(ty, n.as_str()).is_some(),
        _ => false,
    }
}

/// A JSON number's value (its text) in a `DECIMAL` column, when its digits
/// fit the column; `None` otherwise.
pub(crate) fn parse_number(ty: &ColumnType, text: &str) -> Option<Typed> {
    match ty {
        ColumnType::Decimal(p, s) => decimal(text, *p, *s, false).map(Typed::Decimal),
        _ => None,
    }
}

/// The SQL expression giving the text of a typed column's values as they
/// came (for the column's widening to `VARCHAR`); `column` is quoted.
pub(crate) fn as_text(ty: &ColumnType, column: &str) -> String {
    match ty {
        ColumnType::Timestamp => format!("replace(CAST({column} AS VARCHAR), ' ', 'T')"),
        ColumnType::TimestampTz => {
            format!("replace(CAST(timezone('UTC', {column}) AS VARCHAR), ' ', 'T') || 'Z'")
        }
        _ => format!("CAST({column} AS VARCHAR)"),
    }
}

/// A decimal's digits scaled by `scale`, when it has at most `precision -
/// scale` integer digits and (`exact_scale`: exactly, else at most) `scale`
/// fractional ones; no exponent, no `+`, no leading zero, no `-0`.
fn decimal(text: &str, precision: u8, scale: u8, exact_scale: bool) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || (int.len() > 1 && int.starts_with('0')) {
        return None;
    }
    let frac = match frac {
        Some(f) if all_digits(f) => f,
        Some(_) => return None,
        None => "",
    };
    let scale = usize::from(scale);
    let fits_scale = if exact_scale {
        frac.len() == scale
    } else {
        frac.len() <= scale
    };
    let int_digits = if int == "0" { 0 } else { int.len() };
    if !fits_scale || int_digits > usize::from(precision) - scale {
        return None;
    }
    let mut value: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        value = value * 10 + i128::from(b - b'0');
    }
    for _ in frac.len()..scale {
        value *= 10;
    }
    if negative {
        if value == 0 && exact_scale {
            // DuckDB has no negative zero: it would read back as `0.00`.
            return None;
        }
        value = -value;
    }
    Some(value)
}

/// `n` ASCII digits as a number.
fn digits(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0u32, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// `YYYY-MM-DD`, years 1 to 9999: days since 1970-01-01.
fn date(text: &[u8]) -> Option<i32> {
    if text.len() != 10 || text[4] != b'-' || text[7] != b'-' {
        return None;
    }
    let (year, month, day) = (
        digits(&text[0..4])?,
        digits(&text[5..7])?,
        digits(&text[8..10])?,
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year == 0 || day == 0 || day > month_days {
        return None;
    }
    i32::try_from(days_from_civil(
        i64::from(year),
        i64::from(month),
        i64::from(day),
    ))
    .ok()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.f]` (one to six fractional digits, the last not
/// zero), years 1 to 9999: microseconds since 1970-01-01T00:00:00.
fn timestamp(text: &[u8]) -> Option<i64> {
    if text.len() < 19 || text[10] != b'T' || text[13] != b':' || text[16] != b':' {
        return None;
    }
    let days = i64::from(date(&text[..10])?);
    let (h, m, s) = (
        digits(&text[11..13])?,
        digits(&text[14..16])?,
        digits(&text[17..19])?,
    );
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut micros = 0i64;
    match &text[19..] {
        [] => {}
        [b'.', frac @ ..] if (1..=6).contains(&frac.len()) && frac.last() != Some(&b'0') => {
            micros = i64::from(digits(frac)?) * 10i64.pow(6 - frac.len() as u32);
        }
        _ => return None,
    }
    let seconds = days * 86_400 + i64::from(h * 3600 + m * 60 + s);
    Some(seconds * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_fit_with_their_exact_scale() {
        let money = ColumnType::Decimal(12, 2);
        assert_eq!(parse_str(&money, "-12.30"), Some(Typed::Decimal(-1230)));
        assert_eq!(parse_str(&money, "0.05"), Some(Typed::Decimal(5)));
        assert_eq!(
            parse_str(&money, "9999999999.99"),
            Some(Typed::Decimal(999_999_999_999))
        );
        for unfit in [
            "99999999999.99",
            "1.5",
            "1.500",
            "1",
            "01.50",
            "-0.00",
            "+1.50",
            "1e2",
            "NaN",
            "Infinity",
            "",
            ".50",
            "1.",
            "1.5a",
        ] {
            assert_eq!(parse_str(&money, unfit), None, "{unfit}");
        }
        let whole = ColumnType::Decimal(38, 0);
        let big = "9".repeat(38);
        assert_eq!(
            parse_str(&whole, &big),
            Some(Typed::Decimal(big.parse().unwrap()))
        );
        assert_eq!(parse_str(&whole, &"9".repeat(39)), None);
        assert_eq!(parse_str(&whole, "0"), Some(Typed::Decimal(0)));
        assert_eq!(parse_str(&whole, "1.0"), None);
        // Numbers by value: fewer fractional digits are fine.
        assert_eq!(parse_number(&money, "1.5"), Some(Typed::Decimal(150)));
        assert_eq!(parse_number(&money, "-0"), Some(Typed::Decimal(0)));
        assert_eq!(parse_number(&money, "1.234"), None);
        assert_eq!(parse_number(&money, "1e2"), None);
        assert_eq!(parse_number(&ColumnType::Date, "1"), None);
    }

    #[test]
    fn dates_and_timestamps_fit_in_their_written_form() {
        assert_eq!(
            parse_str(&ColumnType::Date, "1970-01-01"),
            Some(Typed::Date(0))
        );
        assert_eq!(
            parse_str(&ColumnType::Date, "2024-02-29"),
            Some(Typed::Date(19_782))
        );
        assert_eq!(
            parse_str(&ColumnType::Date, "0001-01-01"),
            Some(Typed::Date(-719_162))
        );
        assert_eq!(
            parse_str(&ColumnType::Date, "9999-12-31"),
            Some(Typed::Date(2_932_896))
        );
        for unfit in [
            "2023-02-29",
            "1900-02-29",
            "2024-13-01",
            "2024-04-31",
            "0000-01-01",
            "+10000-01-01",
            "-0001-01-01",
            "infinity",
            "2024-1-01",
            "2024-02-29 ",
        ] {
            assert_eq!(parse_str(&ColumnType::Date, unfit), None, "{unfit}");
        }
        let ts = ColumnType::Timestamp;
        assert_eq!(
            parse_str(&ts, "2024-02-29T13:45:00.5"),
            Some(Typed::Micros(1_709_214_300_500_000))
        );
        assert_eq!(
            parse_str(&ts, "1969-12-31T23:59:59.999999"),
            Some(Typed::Micros(-1))
        );
        assert_eq!(
            parse_str(&ts, "1970-01-01T00:00:00"),
            Some(Typed::Micros(0))
        );
        for unfit in [
            "2024-02-29T13:45:00.50",
            "2024-02-29T13:45:00.",
            "2024-02-29T13:45:00.1234567",
            "2024-02-29T24:00:00",
            "2024-02-29T13:60:00",
            "2024-02-29T13:45:60",
            "2024-02-29 13:45:00",
            "2024-02-29T13:45:00Z",
            "2024-02-29",
            "+294277-01-09T04:00:54.775806",
        ] {
            assert_eq!(parse_str(&ts, unfit), None, "{unfit}");
        }
        let tz = ColumnType::TimestampTz;
        assert_eq!(
            parse_str(&tz, "2024-02-29T12:45:00.5Z"),
            Some(Typed::Micros(1_709_210_700_500_000))
        );
        assert_eq!(parse_str(&tz, "2024-02-29T12:45:00.5"), None);
        assert_eq!(parse_str(&tz, "2024-02-29T12:45:00+01:00"), None);
        assert_eq!(parse_str(&ColumnType::Varchar, "2024-02-29"), None);
    }

    #[test]
    fn declared_types_map_to_columns_duckdb_has() {
        let decimal = |precision, scale| FieldType::Decimal { precision, scale };
        assert_eq!(
            column_type(decimal(12, 2)),
            Some(ColumnType::Decimal(12, 2))
        );
        assert_eq!(
            column_type(decimal(5, 5)),
            Some(ColumnType::Decimal(6, 5)),
            "room for the 0 before the point"
        );
        assert_eq!(column_type(decimal(38, 38)), None);
        assert_eq!(column_type(decimal(39, 2)), None, "wider than DuckDB's");
        assert_eq!(column_type(decimal(0, 0)), None);
        assert_eq!(column_type(decimal(2, 3)), None);
        assert_eq!(
            column_type(FieldType::TimestampUtc),
            Some(ColumnType::TimestampTz)
        );
    }
}
