//! Content models of keyed sinks, and converting mapped (flat) records into
//! typed, localized fields.
//!
//! A flat record's keys follow `cute`'s forms: `field.locale` for a scalar,
//! `field.locale[]` for an array, `field.locale.lat` / `field.locale.lon` for a
//! location, and `sys.id` for an explicit entry id. Values are strings (or `null`
//! to clear a field). [`convert`] turns them into `{field: {locale: value}}` by the
//! target field's type:
//!
//! | type | from the string |
//! |---|---|
//! | Symbol, Text, Date | as it is (Date must start with `YYYY-MM-DD`) |
//! | Integer, Number | parsed; not a number is an error for that record |
//! | Boolean | `true`/`false`, `yes`/`no`, `1`/`0` (any case) |
//! | Link | `{"sys": {"type": "Link", "linkType": <field's link type>, "id": <value>}}` |
//! | Array | split on `\|` if present, else on `,`, items trimmed; Link items become links |
//! | Location | `{"lat": .., "lon": ..}` from the `.lat` and `.lon` keys |
//! | Object | parsed as JSON |
//! | RichText | a document with one paragraph holding the text |
//!
//! Unlike `cute`, an empty value never becomes `0` or an error: it means "no value"
//! (see the engine's mapping). A key naming a field the content type does
//! not have is an error naming the fields it has, instead of being dropped.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sluicegate_core::{
    ContentModel, EntryFields, Error, ErrorKind, FieldDef, FieldKind, Record, Result,
};

/// A field of the model by id, or an error naming the fields it has.
fn field_or_error<'m>(model: &'m ContentModel, id: &str, key: &str) -> Result<&'m FieldDef> {
    model.field(id).ok_or_else(|| {
        let known: Vec<&str> = model.fields.iter().map(|f| f.id.as_str()).collect();
        Error::config(format!(
            "mapping key '{key}' names field '{id}', which content type '{}' does not have (fields: {})",
            model.name,
            known.join(", ")
        ))
    })
}

/// A converted record: its fields and, if mapped, its explicit id.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The fields set by the mapping.
    pub fields: EntryFields,
    /// An id from a `sys.id` mapping.
    pub id: Option<String>,
}

/// Where a flat key points.
enum KeyForm<'a> {
    Scalar(&'a str, &'a str),
    Array(&'a str, &'a str),
    Lat(&'a str, &'a str),
    Lon(&'a str, &'a str),
}

/// Parses a flat key; a key without a locale (`field`, `field[]`,
/// `field.lat`) names `default_locale`.
fn parse_key<'a>(key: &'a str, default_locale: &'a str) -> Option<KeyForm<'a>> {
    let split = |rest: &'a str| match rest.split_once('.') {
        Some((field, locale)) => (!locale.contains('.')).then_some((field, locale)),
        None => Some((rest, default_locale)),
    };
    if let Some(rest) = key.strip_suffix("[]") {
        let (field, locale) = split(rest)?;
        return Some(KeyForm::Array(field, locale));
    }
    if let Some(rest) = key.strip_suffix(".lat") {
        let (field, locale) = split(rest)?;
        return Some(KeyForm::Lat(field, locale));
    }
    if let Some(rest) = key.strip_suffix(".lon") {
        let (field, locale) = split(rest)?;
        return Some(KeyForm::Lon(field, locale));
    }
    let (field, locale) = split(key)?;
    (!field.is_empty()).then_some(KeyForm::Scalar(field, locale))
}

/// A value of a source type (number, boolean, array, object) that fits `field`
/// as it is, or as its text for text fields.
fn typed_value(field: &FieldDef, value: &Value) -> Option<Value> {
    Some(match (field.kind, value) {
        (FieldKind::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => value.clone(),
        (FieldKind::Number, Value::Number(_)) | (FieldKind::Boolean, Value::Bool(_)) => {
            value.clone()
        }
        (FieldKind::Symbol | FieldKind::Text, Value::Number(_) | Value::Bool(_)) => {
            Value::String(value.to_string())
        }
        (FieldKind::Object, _) => value.clone(),
        (FieldKind::Array, Value::Array(items))
            if items.iter().all(Value::is_string)
                && field
                    .items
                    .as_ref()
                    .is_none_or(|(k, _)| *k != FieldKind::Link) =>
        {
            value.clone()
        }
        _ => return None,
    })
}

fn value_error(key: &str, kind: FieldKind, text: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("mapping key '{key}': '{text}' is not a valid {kind:?} ({why})"),
    )
}

fn link(link_type: Option<&str>, id: &str) -> Value {
    json!({"sys": {"type": "Link", "linkType": link_type.unwrap_or("Entry"), "id": id}})
}

fn scalar(field: &FieldDef, key: &str, text: &str) -> Result<Value> {
    let kind = field.kind;
    Ok(match kind {
        FieldKind::Symbol | FieldKind::Text => Value::String(text.to_owned()),
        FieldKind::Date => {
            let b = text.as_bytes();
            let ok = b.len() >= 10
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[5..7].iter().all(u8::is_ascii_digit)
                && b[7] == b'-'
                && b[8..10].iter().all(u8::is_ascii_digit);
            if !ok {
                return Err(value_error(
                    key,
                    kind,
                    text,
                    "expected YYYY-MM-DD[Thh:mm[:ss][zone]]",
                ));
            }
            Value::String(text.to_owned())
        }
        FieldKind::Integer => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|e| value_error(key, kind, text, &e.to_string()))?,
        FieldKind::Number => {
            let n: f64 = text
                .parse()
                .map_err(|_| value_error(key, kind, text, "not a number"))?;
            serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| value_error(key, kind, text, "not finite"))?
        }
        FieldKind::Boolean => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => return Err(value_error(key, kind, text, "expected true or false")),
        },
        FieldKind::Link => link(field.link_type.as_deref(), text),
        FieldKind::Object => {
            serde_json::from_str(text).map_err(|e| value_error(key, kind, text, &e.to_string()))?
        }
        FieldKind::RichText => json!({
            "nodeType": "document", "data": {},
            "content": [{"nodeType": "paragraph", "data": {}, "content": [
                {"nodeType": "text", "value": text, "marks": [], "data": {}}
            ]}]
        }),
        FieldKind::Array => array(field, text),
        FieldKind::Location => {
            return Err(value_error(
                key,
                kind,
                text,
                "map locations with the .lat and .lon key forms",
            ));
        }
    })
}

fn array(field: &FieldDef, text: &str) -> Value {
    let sep = if text.contains('|') { '|' } else { ',' };
    let items = text.split(sep).map(str::trim).filter(|s| !s.is_empty());
    match &field.items {
        Some((FieldKind::Link, link_type)) => {
            Value::Array(items.map(|id| link(link_type.as_deref(), id)).collect())
        }
        _ => Value::Array(items.map(|s| Value::String(s.to_owned())).collect()),
    }
}

/// Converts a flat mapped record into typed fields of `model`.
///
/// typed, localized fields.
///
/// A flat record's keys follow `cute`'s forms: `field.locale` for a scalar,
/// `field.locale[]` for an array, `field.locale.lat` / `field.locale.lon` for a
/// location, and `sys.id` for an explicit entry id. Values are strings (or `null`
/// to clear a field). [`convert`] turns them into `{field: {locale: value}}` by the
/// target field's type:
///
/// | type | from the string |
/// |---|---|
/// | Symbol, Text, Date | as it is (Date must start with `YYYY-MM-DD`) |
/// | Integer, Number | parsed; not a number is an error for that record |
/// | Boolean | `true`/`false`, `yes`/`no`, `1`/`0` (any case) |
/// | Link | `{"sys": {"type": "Link", "linkType": <field's link type>, "id": <value>}}` |
/// | Array | split on `\|` if present, else on `,`, items trimmed; Link items become links |
/// | Location | `{"lat": .., "lon": ..}` from the `.lat` and `.lon` keys |
/// | Object | parsed as JSON |
/// | RichText | a document with one paragraph holding the text |
///
/// Unlike `cute`, an empty value never becomes `0` or an error: it means "no value"
/// (see the engine's mapping). A key naming a field the content type does
/// not have is an error naming the fields it has, instead of being dropped.
pub fn convert(model: &ContentModel, flat: &Record) -> Result<Converted> {
    let mut fields = EntryFields::new();
    let mut id = None;
    let mut locations: BTreeMap<(String, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for (key, value) in flat {
        if key.eq_ignore_ascii_case("sys.id") {
            id = value.as_str().map(str::to_owned);
            continue;
        }
        let form = parse_key(key, model.default_locale()).ok_or_else(|| {
            Error::config(format!(
                "mapping key '{key}' is not of the form field[.locale], field[.locale][], field[.locale].lat or field[.locale].lon"
            ))
        })?;
        let (field_id, locale) = match form {
            KeyForm::Scalar(f, l)
            | KeyForm::Array(f, l)
            | KeyForm::Lat(f, l)
            | KeyForm::Lon(f, l) => (f, l),
        };
        let field = field_or_error(model, field_id, key)?;
        if !model.locales.iter().any(|l| l == locale) {
            return Err(Error::config(format!(
                "mapping key '{key}' names locale '{locale}', which the target does not have (locales: {})",
                model.locales.join(", ")
            )));
        }
        if !field.localized && locale != model.default_locale() {
            return Err(Error::config(format!(
                "mapping key '{key}': field '{field_id}' is not localized; use the default locale '{}'",
                model.default_locale()
            )));
        }
        let number_text;
        let text = match value {
            Value::Null => None,
            Value::String(s) => Some(s.as_str()),
            Value::Number(n) if matches!(form, KeyForm::Lat(..) | KeyForm::Lon(..)) => {
                number_text = n.to_string();
                Some(number_text.as_str())
            }
            other => {
                // A record that was not mapped keeps its source types.
                let typed = typed_value(field, other).ok_or_else(|| {
                    Error::decode(format!(
                        "mapping key '{key}' has the value {other}, which does not fit a {:?} field",
                        field.kind
                    ))
                })?;
                let slot = fields
                    .entry(field_id.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = slot {
                    map.insert(locale.to_owned(), typed);
                }
                continue;
            }
        };
        let slot = fields
            .entry(field_id.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let converted = match (form, text) {
            (_, None) => Value::Null,
            (KeyForm::Lat(..) | KeyForm::Lon(..), Some(t)) => {
                let n: f64 = t
                    .parse()
                    .map_err(|_| value_error(key, FieldKind::Location, t, "not a number"))?;
                let entry = locations
                    .entry((field_id.to_owned(), locale.to_owned()))
                    .or_default();
                if key.ends_with(".lat") {
                    entry.0 = Some(n);
                } else {
                    entry.1 = Some(n);
                }
                continue;
            }
            (KeyForm::Array(..), Some(t)) => array(field, t),
            (KeyForm::Scalar(..), Some(t)) => scalar(field, key, t)?,
        };
        if let Value::Object(map) = slot {
            map.insert(locale.to_owned(), converted);
        }
    }
    for ((field_id, locale), (lat, lon)) in locations {
        let (Some(lat), Some(lon)) = (lat, lon) else {
            return Err(Error::config(format!(
                "location field '{field_id}.{locale}' needs both .lat and .lon mapped"
            )));
        };
        if let Some(Value::Object(map)) = fields.get_mut(&field_id) {
            map.insert(locale, json!({"lat": lat, "lon": lon}));
        }
    }
    Ok(Converted { fields, id })
}

/// The comparable form of a field value: rich text compares by its text (a
/// mapping writes plain text into rich-text fields, and a document whose text is
/// unchanged must not be rewritten), numbers by value (`1` equals `1.0`).
pub fn comparable(kind: FieldKind, value: &Value) -> Value {
    match (kind, value) {
        (FieldKind::RichText, Value::Object(_)) => Value::String(rich_text_plain(value)),
        (FieldKind::Integer | FieldKind::Number, Value::Number(n)) => {
            n.as_f64().map_or(Value::Null, |f| json!(f))
        }
        (_, Value::String(s)) if s.is_empty() => Value::Null,
        (_, Value::Array(items)) if items.is_empty() => Value::Null,
        _ => value.clone(),
    }
}

/// The text of a rich-text document, paragraphs joined by newlines.
fn rich_text_plain(doc: &Value) -> String {
    fn walk(node: &Value, out: &mut String) {
        if let Some(text) = node.get("value").and_then(Value::as_str) {
            out.push_str(text);
        }
        if let Some(children) = node.get("content").and_then(Value::as_array) {
            for child in children {
                walk(child, out);
            }
            if node.get("nodeType").and_then(Value::as_str) == Some("paragraph") {
                out.push('\n');
            }
        }
    }
    let mut out = String::new();
    walk(doc, &mut out);
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_core::into_record;

    fn model() -> ContentModel {
        let f = |id: &str, kind, localized| FieldDef {
            id: id.into(),
            kind,
            localized,
            link_type: None,
            items: None,
        };
        let mut fields = vec![
            f("id", FieldKind::Symbol, false),
            f("name", FieldKind::Symbol, true),
            f("price", FieldKind::Number, false),
            f("stock", FieldKind::Integer, false),
            f("active", FieldKind::Boolean, false),
            f("released", FieldKind::Date, false),
            f("where", FieldKind::Location, false),
            f("extra", FieldKind::Object, false),
            f("body", FieldKind::RichText, false),
        ];
        let mut category = f("category", FieldKind::Link, false);
        category.link_type = Some("Entry".into());
        fields.push(category);
        let mut tags = f("tags", FieldKind::Array, false);
        tags.items = Some((FieldKind::Symbol, None));
        fields.push(tags);
        let mut related = f("related", FieldKind::Array, false);
        related.items = Some((FieldKind::Link, Some("Entry".into())));
        fields.push(related);
        ContentModel {
            name: "product".into(),
            display_field: Some("name".into()),
            fields,
            locales: vec!["en".into(), "nl".into()],
        }
    }

    #[test]
    fn converts_every_key_form_and_type() {
        let flat = into_record(json!({
            "sys.id": "prod-1",
            "id.en": "1", "name.en": "Mug", "name.nl": "Beker", "price.en": "12.5", "stock.en": "3",
            "active.en": "Yes", "released.en": "2024-05-01T10:00:00Z",
            "where.en.lat": "52.1", "where.en.lon": "4.3", "extra.en": "{\"a\": [1]}", "body.en": "Hello",
            "category.en": "cat-9", "tags.en[]": "red | blue", "related.en[]": "a,b", "stock.nl": null,
        }));
        let mut m = model();
        m.fields
            .iter_mut()
            .find(|f| f.id == "stock")
            .unwrap()
            .localized = true;
        let c = convert(&m, &flat).unwrap();
        assert_eq!(c.id.as_deref(), Some("prod-1"));
        let f = Value::Object(c.fields);
        assert_eq!(f["name"], json!({"en": "Mug", "nl": "Beker"}));
        assert_eq!(f["price"]["en"], json!(12.5));
        assert_eq!(f["stock"], json!({"en": 3, "nl": null}));
        assert_eq!(f["active"]["en"], json!(true));
        assert_eq!(f["where"]["en"], json!({"lat": 52.1, "lon": 4.3}));
        assert_eq!(f["extra"]["en"], json!({"a": [1]}));
        assert_eq!(rich_text_plain(&f["body"]["en"]), "Hello");
        assert_eq!(
            f["category"]["en"],
            json!({"sys": {"type": "Link", "linkType": "Entry", "id": "cat-9"}})
        );
        assert_eq!(f["tags"]["en"], json!(["red", "blue"]));
        assert_eq!(f["related"]["en"][1]["sys"]["id"], json!("b"));
    }

    #[test]
    fn mistakes_name_the_key_and_what_is_allowed() {
        let err = convert(&model(), &into_record(json!({"nmae.en": "x"}))).unwrap_err();
        assert!(
            err.to_string().contains(
                "names field 'nmae', which content type 'product' does not have (fields: id, name,"
            ),
            "{err}"
        );
        let err = convert(&model(), &into_record(json!({"name.fr": "x"}))).unwrap_err();
        assert!(err.to_string().contains("locale 'fr'"), "{err}");
        let err = convert(&model(), &into_record(json!({"price.nl": "1"}))).unwrap_err();
        assert!(err.to_string().contains("is not localized"), "{err}");
        let err = convert(&model(), &into_record(json!({"stock.en": "many"}))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(
            err.to_string().contains("'many' is not a valid Integer"),
            "{err}"
        );
        let err = convert(&model(), &into_record(json!({"where.en.lat": "1"}))).unwrap_err();
        assert!(
            err.to_string().contains("needs both .lat and .lon"),
            "{err}"
        );
    }

    #[test]
    fn keys_without_a_locale_name_the_default_and_source_types_pass_through() {
        // A record that was not mapped: field names as keys, source types as values.
        let raw = into_record(json!({
            "id": "sku-1", "name": "Mug", "price": 12.5, "stock": 3, "active": false,
            "where.lat": 52.1, "where.lon": 4.3, "extra": {"a": [1]}, "tags": ["red", "blue"],
        }));
        let f = Value::Object(convert(&model(), &raw).unwrap().fields);
        assert_eq!(f["id"], json!({"en": "sku-1"}));
        assert_eq!(f["price"], json!({"en": 12.5}));
        assert_eq!(f["stock"], json!({"en": 3}));
        assert_eq!(f["active"], json!({"en": false}));
        assert_eq!(f["where"], json!({"en": {"lat": 52.1, "lon": 4.3}}));
        assert_eq!(f["extra"], json!({"en": {"a": [1]}}));
        assert_eq!(f["tags"], json!({"en": ["red", "blue"]}));
        // Text forms still convert by the field's type.
        let f = Value::Object(
            convert(
                &model(),
                &into_record(json!({"stock": "4", "tags[]": "a|b"})),
            )
            .unwrap()
            .fields,
        );
        assert_eq!(f["stock"], json!({"en": 4}));
        assert_eq!(f["tags"], json!({"en": ["a", "b"]}));
        // A value that does not fit says so.
        for bad in [
            json!({"stock": 2.5}),
            json!({"price": true}),
            json!({"related": ["a"]}),
        ] {
            let err = convert(&model(), &into_record(bad.clone())).unwrap_err();
            assert!(err.to_string().contains("does not fit"), "{bad}: {err}");
        }
    }

    #[test]
    fn comparable_forms() {
        let doc = json!({"nodeType": "document", "content": [{"nodeType": "paragraph", "content": [
            {"nodeType": "text", "value": "Hi "}, {"nodeType": "text", "value": "there", "marks": [{"type": "bold"}]}]}]});
        assert_eq!(comparable(FieldKind::RichText, &doc), json!("Hi there"));
        assert_eq!(
            comparable(FieldKind::Number, &json!(1)),
            comparable(FieldKind::Number, &json!(1.0))
        );
        assert_eq!(comparable(FieldKind::Symbol, &json!("")), Value::Null);
    }
}
