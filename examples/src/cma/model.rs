//! The emulator's data: spaces, environments, locales, content types, entries
//! and bulk actions, with Contentful's version rules and validation.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

/// Why a request failed, shaped like the CMA's error bodies.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `sys.id` of the error (`NotFound`, `VersionMismatch`, ...).
    pub id: &'static str,
    /// The message.
    pub message: String,
    /// `details`, for validation errors.
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(status: u16, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn not_found() -> Self {
        Self::new(404, "NotFound", "The resource could not be found.")
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid_query(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidQuery", message)
    }

    pub(crate) fn validation(errors: Vec<Value>) -> Self {
        Self {
            status: 422,
            id: "ValidationFailed",
            message: "Validation error".to_owned(),
            details: Some(json!({ "errors": errors })),
        }
    }

    pub(crate) fn version_mismatch() -> Self {
        Self::new(
            409,
            "VersionMismatch",
            "The version number you supplied is not the current version of the entry.",
        )
    }
}

pub(crate) fn link(link_type: &str, id: &str) -> Value {
    json!({"sys": {"type": "Link", "linkType": link_type, "id": id}})
}

/// One environment of a space.
#[derive(Debug, Default)]
pub(crate) struct Environment {
    pub(crate) locales: Vec<(String, bool)>,
    pub(crate) content_types: BTreeMap<String, Value>,
    pub(crate) entries: BTreeMap<String, Value>,
    pub(crate) bulk_actions: HashMap<String, Value>,
}

impl Environment {
    pub(crate) fn default_locale(&self) -> &str {
        self.locales
            .iter()
            .find(|(_, d)| *d)
            .map_or("en-US", |(c, _)| c.as_str())
    }

    pub(crate) fn locale_codes(&self) -> Vec<&str> {
        self.locales.iter().map(|(c, _)| c.as_str()).collect()
    }

    /// The active version of a content type.
    pub(crate) fn content_type(&self, id: &str) -> Option<&Value> {
        self.content_types.get(id)
    }
}

fn field_error(
    name: &str,
    path: Vec<Value>,
    details: impl Into<String>,
    value: Option<&Value>,
) -> Value {
    let mut e = json!({"name": name, "path": path, "details": details.into()});
    if let Some(v) = value {
        e["value"] = v.clone();
    }
    e
}

/// Checks a value against a field's type (on save, like the CMA does).
fn check_type(field: &Value, value: &Value, path: Vec<Value>, errors: &mut Vec<Value>) {
    let kind = field["type"].as_str().unwrap_or("Symbol");
    let ok = match kind {
        "Symbol" => value.as_str().is_some_and(|s| s.chars().count() <= 256),
        "Text" => value.as_str().is_some_and(|s| s.chars().count() <= 50_000),
        "Integer" => value.as_i64().is_some(),
        "Number" => value.is_number(),
        "Boolean" => value.is_boolean(),
        "Date" => value
            .as_str()
            .is_some_and(|s| s.len() >= 10 && s.as_bytes()[4] == b'-'),
        "Location" => value["lat"].is_number() && value["lon"].is_number(),
        "Object" => value.is_object() || value.is_array(),
        "RichText" => value["nodeType"] == "document",
        "Link" => value["sys"]["type"] == "Link" && value["sys"]["id"].is_string(),
        "Array" => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(json!(i));
                    check_type(&field["items"], item, p, errors);
                }
                true
            }
            None => false,
        },
        _ => true,
    };
    if !ok {
        let details = if kind == "Symbol" && value.is_string() {
            "Symbol is longer than 256 characters".to_owned()
        } else {
            format!("The type of \"value\" is incorrect, expected type: {kind}")
        };
        errors.push(field_error(
            if kind == "Symbol" && value.is_string() {
                "size"
            } else {
                "type"
            },
            path,
            details,
            Some(value),
        ));
    }
}

/// Validates and normalizes entry fields on save: unknown fields and locales are
/// refused, `null` locale values and empty fields are dropped.
pub(crate) fn clean_fields(
    env: &Environment,
    content_type: &Value,
    fields: &Value,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let Some(fields) = fields.as_object() else {
        if fields.is_null() {
            return Ok(out);
        }
        return Err(ApiError::bad_request("fields must be an object"));
    };
    let defs = content_type["fields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let locales = env.locale_codes();
    let mut errors = Vec::new();
    for (name, locales_value) in fields {
        let Some(def) = defs.iter().find(|d| d["id"] == name.as_str()) else {
            errors.push(field_error(
                "unknown",
                vec![json!("fields"), json!(name)],
                "The property is not allowed here.",
                None,
            ));
            continue;
        };
        let Some(values) = locales_value.as_object() else {
            if !locales_value.is_null() {
                errors.push(field_error(
                    "type",
                    vec![json!("fields"), json!(name)],
                    "Field values must be keyed by locale",
                    None,
                ));
            }
            continue;
        };
        let mut kept = Map::new();
        for (locale, value) in values {
            if !locales.contains(&locale.as_str()) {
                errors.push(field_error(
                    "unknown",
                    vec![json!("fields"), json!(name), json!(locale)],
                    format!("Locale {locale} does not exist"),
                    None,
                ));
                continue;
            }
            if value.is_null() {
                continue;
            }
            if def["localized"] != true && locale != env.default_locale() {
                errors.push(field_error(
                    "unknown",
                    vec![json!("fields"), json!(name), json!(locale)],
                    "This field is not localized",
                    None,
                ));
                continue;
            }
            check_type(
                def,
                value,
                vec![json!("fields"), json!(name), json!(locale)],
                &mut errors,
            );
            kept.insert(locale.clone(), value.clone());
        }
        if !kept.is_empty() {
            out.insert(name.clone(), Value::Object(kept));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Checks what publishing needs: required fields present in the default locale.
pub(crate) fn check_publishable(env: &Environment, entry: &Value) -> Result<(), ApiError> {
    let ct_id = entry["sys"]["contentType"]["sys"]["id"]
        .as_str()
        .unwrap_or_default();
    let Some(ct) = env.content_type(ct_id) else {
        return Err(ApiError::validation(vec![
            json!({"name": "notResolvable", "details": "content type missing"}),
        ]));
    };
    let default = env.default_locale();
    let mut errors = Vec::new();
    for def in ct["fields"].as_array().into_iter().flatten() {
        if def["required"] == true {
            let id = def["id"].as_str().unwrap_or_default();
            if entry["fields"][id][default].is_null() {
                errors.push(field_error(
                    "required",
                    vec![json!("fields"), json!(id), json!(default)],
                    "Required field is missing",
                    None,
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}
