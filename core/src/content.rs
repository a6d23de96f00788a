//! Content models of keyed sinks: a target's fields and locales, and the typed,
//! localized fields of an entry (`{field: {locale: value}}`).
//!
//! Converting mapped (flat) records into these fields is the upsert toolkit's
//! work (`sluicegate-upsert`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Field types of a content model (Contentful's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldKind {
    /// Short text.
    Symbol,
    /// Long text.
    Text,
    /// Whole number.
    Integer,
    /// Decimal number.
    Number,
    /// True or false.
    Boolean,
    /// ISO 8601 date or date-time.
    Date,
    /// A reference to another entry or asset.
    Link,
    /// A list of symbols or links.
    Array,
    /// Latitude and longitude.
    Location,
    /// Any JSON.
    Object,
    /// A rich-text document.
    RichText,
}

/// One field of a content model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDef {
    /// Field id.
    pub id: String,
    /// Field type.
    pub kind: FieldKind,
    /// Whether values exist per locale (otherwise only the default locale).
    pub localized: bool,
    /// For links: `Entry` or `Asset`.
    pub link_type: Option<String>,
    /// For arrays: the item type (`Symbol` or `Link`) and the items' link type.
    pub items: Option<(FieldKind, Option<String>)>,
}

/// A target's fields and locales, read once per stream from the sink.
///
/// localized fields of an entry (`{field: {locale: value}}`).
///
/// Converting mapped (flat) records into these fields is the upsert toolkit's
/// work (`sluicegate-upsert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentModel {
    /// Content type (or collection) id.
    pub name: String,
    /// The field shown as an entry's title, if any.
    pub display_field: Option<String>,
    /// Fields by id, in model order.
    pub fields: Vec<FieldDef>,
    /// Locale codes; the default first.
    pub locales: Vec<String>,
}

impl ContentModel {
    /// The default locale.
    pub fn default_locale(&self) -> &str {
        self.locales.first().map_or("en-US", String::as_str)
    }

    /// A field by id.
    pub fn field(&self, id: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.id == id)
    }
}

/// Typed, localized fields: `{field: {locale: value}}`; a `null` value clears
/// that locale.
pub type EntryFields = Map<String, Value>;
