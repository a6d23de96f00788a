//! Mapping source rows to target fields with templates (`cute`'s `mapping`,
//! `preMapping` and `filterExpression`, in Jinja syntax).
//!
//! For each row the scope holds `row` (the source record), `var` (the
//! `preMapping` results), and `env`/`config` (the process environment). Each
//! `mapping` item renders its `fieldName` and its `expression`; the result is a
//! *flat* record: `{"name.en": "Mug", "tags.en[]": "a|b", ...}` whose keys follow
//! `cute`'s forms and whose values are strings, converted to typed fields later by the
//! upsert toolkit (`sluicegate-upsert`). An expression that renders to nothing (empty or
//! only whitespace) means "no value": the key is left out, unless the item has
//! `overwriteNull: true`, in which case it is kept as `null` and clears the field.
//!
//! `filterExpression` keeps a row only when it renders `true` (case-insensitive).
//! Missing row fields render as nothing, also through chains (`row.a.b.c`), since
//! fields that appear only in some rows are normal. Template syntax errors and
//! unknown filters or functions are configuration errors found when the mapping is
//! built, before any request.
//!
//! Helpers beyond minijinja's built-in filters (`lower`, `upper`, `trim`, `join`,
//! `replace`, `default`, `tojson`, `round`, ...): the filters `to_int`,
//! `slug` (`normalize_string`), `pascal_case` (`to_pascal_case`), `url_last_segment`,
//! and the function `switch(value, k1, v1, k2, v2, ..., default)`.

use std::sync::Arc;

use minijinja::value::Rest;
use minijinja::{
    Environment, ErrorKind as TemplateErrorKind, UndefinedBehavior, Value as TplValue,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use sluicegate_core::{
    Batch, Error, ErrorKind, Record, Rejected, Result, Stage, approx_record_size,
};

/// The mapping section of a sync entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MappingConfig {
    /// Variables rendered before the mapping, available as `var.<name>`.
    #[serde(default)]
    pub pre_mapping: Vec<PreMappingItem>,
    /// The target fields.
    #[serde(default)]
    pub mapping: Vec<MappingItem>,
    /// Keep a row only if this renders `true`.
    #[serde(default)]
    pub filter_expression: Option<String>,
}

/// One `preMapping` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PreMappingItem {
    /// The variable name (`var.<name>`).
    pub var_name: String,
    /// Its template.
    pub expression: String,
}

/// One `mapping` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MappingItem {
    /// Template of the target key (`name.en`, `tags.en[]`, `location.en.lat`).
    pub field_name: String,
    /// Template of the value.
    pub expression: String,
    /// Clear the target field when the value renders empty (default: leave it).
    #[serde(default)]
    pub overwrite_null: bool,
}

impl MappingItem {
    /// A mapping of `field_name` to the template `expression`.
    pub fn new(field_name: impl Into<String>, expression: impl Into<String>) -> Self {
        Self {
            field_name: field_name.into(),
            expression: expression.into(),
            overwrite_null: false,
        }
    }
}

/// A compiled mapping.
///
/// `preMapping` and `filterExpression`, in Jinja syntax).
///
/// For each row the scope holds `row` (the source record), `var` (the
/// `preMapping` results), and `env`/`config` (the process environment). Each
/// `mapping` item renders its `fieldName` and its `expression`; the result is a
/// *flat* record: `{"name.en": "Mug", "tags.en[]": "a|b", ...}` whose keys follow
/// `cute`'s forms and whose values are strings, converted to typed fields later by the
/// upsert toolkit (`sluicegate-upsert`). An expression that renders to nothing (empty or
/// only whitespace) means "no value": the key is left out, unless the item has
/// `overwriteNull: true`, in which case it is kept as `null` and clears the field.
///
/// `filterExpression` keeps a row only when it renders `true` (case-insensitive).
/// Missing row fields render as nothing, also through chains (`row.a.b.c`), since
/// fields that appear only in some rows are normal. Template syntax errors and
/// unknown filters or functions are configuration errors found when the mapping is
/// built, before any request.
///
/// Helpers beyond minijinja's built-in filters (`lower`, `upper`, `trim`, `join`,
/// `replace`, `default`, `tojson`, `round`, ...): the filters `to_int`,
/// `slug` (`normalize_string`), `pascal_case` (`to_pascal_case`), `url_last_segment`,
/// and the function `switch(value, k1, v1, k2, v2, ..., default)`.
pub struct Mapper {
    env: Arc<Environment<'static>>,
    pre: Vec<(String, String)>,
    fields: Vec<(String, String, bool)>,
    filter: Option<String>,
    /// The scope's fixed part (`env`, `config`), converted to template values
    /// once: every row shares it instead of copying the environment.
    base_scope: Vec<(String, TplValue)>,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper")
            .field("fields", &self.fields.len())
            .finish()
    }
}

fn helpers(env: &mut Environment<'static>) {
    env.add_filter("to_int", |v: TplValue| -> Result<i64, minijinja::Error> {
        if let Ok(i) = i64::try_from(v.clone()) {
            return Ok(i);
        }
        let text = v.to_string();
        let t = text.trim();
        t.parse::<i64>()
            .or_else(|_| t.parse::<f64>().map(|f| f.trunc() as i64))
            .map_err(|_| {
                minijinja::Error::new(
                    TemplateErrorKind::InvalidOperation,
                    format!("to_int: '{t}' is not a number"),
                )
            })
    });
    let slug = |v: String| -> String {
        let mut out = String::with_capacity(v.len());
        for c in v.trim().chars() {
            if c.is_alphanumeric() {
                out.extend(c.to_lowercase());
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
        }
        out.trim_end_matches('-').to_owned()
    };
    env.add_filter("slug", slug);
    env.add_filter("normalize_string", slug);
    let pascal = |v: String| -> String {
        v.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut cs = w.chars();
                match cs.next() {
                    Some(first) => first
                        .to_uppercase()
                        .chain(cs.flat_map(char::to_lowercase))
                        .collect(),
                    None => String::new(),
                }
            })
            .collect()
    };
    env.add_filter("pascal_case", pascal);
    env.add_filter("to_pascal_case", pascal);
    env.add_filter("url_last_segment", |v: String| -> String {
        let path = v.split(['?', '#']).next().unwrap_or_default();
        path.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    env.add_function(
        "switch",
        |value: TplValue, rest: Rest<TplValue>| -> TplValue {
            let mut pairs = rest.chunks_exact(2);
            for pair in pairs.by_ref() {
                if pair[0] == value || pair[0].to_string() == value.to_string() {
                    return pair[1].clone();
                }
            }
            pairs
                .remainder()
                .first()
                .cloned()
                .unwrap_or(TplValue::from(""))
        },
    );
}

fn template_error(what: &str, name: &str, err: &minijinja::Error) -> Error {
    let detail = err.detail().map(|d| format!(": {d}")).unwrap_or_default();
    Error::new(
        ErrorKind::Config,
        format!("{what} {name}: {}{detail}", err.kind()),
    )
}

impl Mapper {
    /// Compiles the templates, checking syntax and that every filter and function
    /// used exists. `env_scope` is `{env: {...}, config: {...}}`.
    pub fn new(config: &MappingConfig, env_scope: &Value) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        helpers(&mut env);
        let mut add = |name: String, source: &str| -> Result<String> {
            env.add_template_owned(name.clone(), source.to_owned())
                .map_err(|e| template_error("invalid template", &name, &e))?;
            Ok(name)
        };
        let mut pre = Vec::new();
        for (i, item) in config.pre_mapping.iter().enumerate() {
            pre.push((
                item.var_name.clone(),
                add(format!("preMapping[{i}].expression"), &item.expression)?,
            ));
        }
        let mut fields = Vec::new();
        for (i, item) in config.mapping.iter().enumerate() {
            let name = add(format!("mapping[{i}].fieldName"), &item.field_name)?;
            let expr = add(format!("mapping[{i}].expression"), &item.expression)?;
            fields.push((name, expr, item.overwrite_null));
        }
        let filter = match &config.filter_expression {
            Some(f) => Some(add("filterExpression".to_owned(), f)?),
            None => None,
        };
        let base_scope = env_scope
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), sluicegate_templates::template_value(v)))
                    .collect()
            })
            .unwrap_or_default();
        let mapper = Self {
            env: Arc::new(env),
            pre,
            fields,
            filter,
            base_scope,
        };
        mapper.check_names()?;
        Ok(mapper)
    }

    /// Renders every template against an empty row: unknown filters, functions
    /// and tests surface here rather than on the first real row.
    fn check_names(&self) -> Result<()> {
        let empty_row = sluicegate_templates::template_value_of_map(&Record::new());
        let scope = self.scope(&empty_row, &Map::new());
        let names = self
            .pre
            .iter()
            .map(|(_, t)| t)
            .chain(self.fields.iter().flat_map(|(n, e, _)| [n, e]))
            .chain(self.filter.iter());
        for name in names {
            if let Err(e) = self.render(name, &scope)
                && matches!(
                    e.kind(),
                    TemplateErrorKind::UnknownFilter
                        | TemplateErrorKind::UnknownFunction
                        | TemplateErrorKind::UnknownTest
                        | TemplateErrorKind::UnknownMethod
                )
            {
                return Err(template_error("invalid template", name, &e));
            }
        }
        Ok(())
    }

    /// The scope a row's templates see; `row` is converted once per row by
    /// the caller, the fixed part is shared.
    fn scope(&self, row: &TplValue, vars: &Map<String, Value>) -> TplValue {
        let fixed = self.base_scope.iter().map(|(k, v)| (k.as_str(), v.clone()));
        let vars = sluicegate_templates::template_value_of_map(vars);
        TplValue::from_iter(fixed.chain([("row", row.clone()), ("var", vars)]))
    }

    fn render(
        &self,
        name: &str,
        scope: &TplValue,
    ) -> std::result::Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(scope)
    }

    /// Maps one row: `None` when the filter drops it, otherwise the flat record.
    pub fn map(&self, row: &Record) -> Result<Option<Record>> {
        let row = sluicegate_templates::template_value_of_map(row);
        let mut vars = Map::new();
        for (var, name) in &self.pre {
            let value = self
                .render(name, &self.scope(&row, &vars))
                .map_err(|e| template_error("cannot render", name, &e))?;
            vars.insert(var.clone(), Value::String(value));
        }
        let scope = self.scope(&row, &vars);
        if let Some(filter) = &self.filter {
            let keep = self
                .render(filter, &scope)
                .map_err(|e| template_error("cannot render", filter, &e))?;
            if !keep.trim().eq_ignore_ascii_case("true") {
                return Ok(None);
            }
        }
        let mut out = Record::new();
        for (key_tpl, expr_tpl, overwrite_null) in &self.fields {
            let key = self
                .render(key_tpl, &scope)
                .map_err(|e| template_error("cannot render", key_tpl, &e))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(Error::new(
                    ErrorKind::Decode,
                    format!("{key_tpl} rendered an empty field name"),
                ));
            }
            let value = self
                .render(expr_tpl, &scope)
                .map_err(|e| template_error("cannot render", expr_tpl, &e))?;
            let value = value.trim();
            if !value.is_empty() {
                out.insert(key.to_owned(), Value::String(value.to_owned()));
            } else if *overwrite_null {
                out.insert(key.to_owned(), Value::Null);
            }
        }
        Ok(Some(out))
    }

    /// Maps every record of a batch in place. Filtered rows are dropped; rows whose
    /// templates fail to render are taken out and returned as rejected, so one bad
    /// row does not stop the batch. Declarations of JSON fields and field types are dropped
    /// (the new fields are rendered text). The caller adjusts the batch's lease to
    /// [`MapOutcome::bytes`].
    pub fn map_batch(&self, batch: &mut Batch) -> MapOutcome {
        // The mapped fields are rendered text, not the source's JSON columns.
        batch.forget_json_fields();
        batch.forget_field_types();
        let records = std::mem::take(batch.records_mut());
        let mut mapped = Vec::with_capacity(records.len());
        let mut outcome = MapOutcome::default();
        for record in records {
            match self.map(&record) {
                Ok(Some(out)) => mapped.push(out),
                Ok(None) => outcome.filtered += 1,
                Err(e) => outcome.rejected.push(Rejected {
                    stage: Stage::Map,
                    key: None,
                    reason: e.to_string(),
                    record,
                }),
            }
        }
        outcome.bytes = mapped.iter().map(approx_record_size).sum();
        *batch.records_mut() = mapped;
        outcome
    }
}

/// What [`Mapper::map_batch`] did.
#[derive(Debug, Default)]
pub struct MapOutcome {
    /// Rows the filter dropped.
    pub filtered: u64,
    /// Approximate bytes of the mapped records.
    pub bytes: usize,
    /// Rows whose templates failed to render.
    pub rejected: Vec<Rejected>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluicegate_core::into_record;

    fn config(v: Value) -> MappingConfig {
        serde_json::from_value(v).unwrap()
    }

    fn scope() -> Value {
        json!({"env": {"REGION": "eu"}, "config": {"Cute__Prefix": "P"}})
    }

    #[test]
    fn maps_fields_with_vars_filters_and_helpers() {
        let m = Mapper::new(
            &config(json!({
                "preMapping": [{"varName": "full", "expression": "{{ row.first }} {{ row.last }}"}],
                "filterExpression": "{{ (row.status | lower) == 'active' }}",
                "mapping": [
                    {"fieldName": "id.en", "expression": "{{ row.id }}"},
                    {"fieldName": "name.en", "expression": "{{ var.full }}"},
                    {"fieldName": "tags.en[]", "expression": "{{ row.tags | join('|') }}"},
                    {"fieldName": "slug.{{ 'en' }}", "expression": "{{ var.full | slug }}"},
                    {"fieldName": "region.en", "expression": "{{ env.REGION }}-{{ config.Cute__Prefix }}"},
                    {"fieldName": "kind.en", "expression": "{{ switch(row.type, 'a', 'Alpha', 'b', 'Beta', 'Other') }}"},
                    {"fieldName": "phone.en", "expression": "{{ row.phone }}", "overwriteNull": true},
                    {"fieldName": "fax.en", "expression": "{{ row.fax }}"},
                ],
            })),
            &scope(),
        )
        .unwrap();
        let row = into_record(
            json!({"id": 7, "first": "Ada", "last": "Lovelace", "status": "Active", "tags": ["x", "y"], "type": "b"}),
        );
        let out = m.map(&row).unwrap().unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "id.en": "7", "name.en": "Ada Lovelace", "tags.en[]": "x|y", "slug.en": "ada-lovelace",
                "region.en": "eu-P", "kind.en": "Beta", "phone.en": null,
            })
        );
        let inactive = into_record(json!({"id": 8, "status": "gone"}));
        assert!(m.map(&inactive).unwrap().is_none());
    }

    #[test]
    fn missing_fields_render_empty_even_through_chains() {
        let m = Mapper::new(
            &config(json!({"mapping": [{"fieldName": "city.en", "expression": "{{ row.address.city }}"}]})),
            &scope(),
        )
        .unwrap();
        assert_eq!(
            m.map(&into_record(json!({"id": 1})))
                .unwrap()
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn syntax_errors_and_unknown_filters_are_config_errors() {
        let err = Mapper::new(
            &config(json!({"mapping": [{"fieldName": "a.en", "expression": "{{ row.x "}]})),
            &scope(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("mapping[0].expression"), "{err}");
        let err = Mapper::new(
            &config(
                json!({"mapping": [{"fieldName": "a.en", "expression": "{{ row.x | shout }}"}]}),
            ),
            &scope(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown filter"), "{err}");
    }

    #[test]
    fn helper_filters() {
        let m = Mapper::new(
            &config(json!({"mapping": [
                {"fieldName": "n.en", "expression": "{{ row.n | to_int }}"},
                {"fieldName": "p.en", "expression": "{{ row.s | pascal_case }}"},
                {"fieldName": "u.en", "expression": "{{ row.u | url_last_segment }}"},
            ]})),
            &scope(),
        )
        .unwrap();
        let out = m
            .map(&into_record(
                json!({"n": "42.9", "s": "hello big world", "u": "https://x.test/a/b/c/?q=1"}),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"n.en": "42", "p.en": "HelloBigWorld", "u.en": "c"})
        );
    }
}
