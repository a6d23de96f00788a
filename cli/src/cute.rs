//! Running `cute` sync-api entries unchanged: an entry's YAML (kept in a
//! Contentful space, content type `cuteContentSyncApi`) becomes a sync entry.
//!
//! `cute` keeps everything in one flat document; the target keys
//! (`contentType`, `contentKeyField`), the mapping keys (`mapping`,
//! `preMapping`, `filterExpression`) become the entry's, everything else is the
//! source section (`type: http`, or a database source for
//! `sourceType: database`). `id` and `contentDisplayField` are ignored, as `cute`
//! ignores them. Keys neither side knows are refused with the usual message.

use crate::scriban::scriban_to_jinja;
use serde_json::{Map, Value};
use sluicegate_core::{BuildContext, Error, Result, parse_section, template_scope_from_env};
use sluicegate_sinks_cms::{ContentfulSinkConfig, fetch_cute_entry};

use crate::config_file::{ConfigFile, SyncEntry, split_type};

/// Turns a `cute` entry's YAML into a sync entry writing to `sink`.
pub fn translate(
    key: &str,
    yaml: &str,
    source_type: Option<&str>,
    sink: &str,
) -> Result<SyncEntry> {
    let at = format!("cute entry '{key}'");
    let doc: Value =
        serde_yaml_ng::from_str(yaml).map_err(|e| Error::config(format!("{at}: yaml: {e}")))?;
    let Value::Object(mut doc) = doc else {
        return Err(Error::config(format!("{at}: yaml must be a mapping")));
    };
    for ignored in ["id", "contentDisplayField"] {
        doc.remove(ignored);
    }
    // cute's templates are Scriban; render them with the Jinja equivalents.
    translate_templates(&mut doc);
    if doc.contains_key("enumerateForContentTypes") {
        return Err(Error::config(format!(
            "{at}: enumerateForContentTypes (parent/child enumeration) is not supported yet"
        )));
    }
    let mut entry = Map::new();
    entry.insert("key".into(), Value::String(key.to_owned()));
    entry.insert("sink".into(), Value::String(sink.to_owned()));
    for (from, to) in [
        ("contentType", "table"),
        ("contentKeyField", "keyField"),
        ("mapping", "mapping"),
        ("preMapping", "preMapping"),
        ("filterExpression", "filterExpression"),
    ] {
        if let Some(v) = doc.remove(from) {
            entry.insert(to.into(), v);
        }
    }
    if !entry.contains_key("table") {
        return Err(Error::config(format!("{at}: contentType is missing")));
    }
    let source_type = match source_type.map(str::to_ascii_lowercase).as_deref() {
        Some("database") => database_type(&at, &mut doc)?,
        _ => {
            // cute's current versions count pages in skipKey; say so explicitly.
            if let Some(Value::Object(p)) = doc.get_mut("pagination")
                && !p.contains_key("type")
                && !p.contains_key("skipMode")
            {
                p.insert("skipMode".into(), Value::String("page".into()));
            }
            "http"
        }
    };
    doc.insert("type".into(), Value::String(source_type.to_owned()));
    entry.insert("source".into(), Value::Object(doc));
    parse_section(Value::Object(entry), &at)
}

/// The source type for `cute`'s `provider` of a database entry; removes the
/// keys that only steer cute's .NET driver (`provider`, `stream`: reads always
/// stream here).
fn database_type(at: &str, doc: &mut Map<String, Value>) -> Result<&'static str> {
    doc.remove("stream");
    let provider = doc.remove("provider");
    let name = provider
        .as_ref()
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    match name.as_deref() {
        Some("postgresql" | "postgres" | "npgsql") => Ok("postgres"),
        Some("mysql" | "mariadb") => Ok("mysql"),
        Some("sqlite") => Ok("sqlite"),
        Some("sqlserver") => Err(Error::config(format!(
            "{at}: provider sqlserver is not supported; the database sources read postgresql, mysql and sqlite"
        ))),
        Some(other) => Err(Error::config(format!(
            "{at}: unknown provider '{other}'; use postgresql, mysql or sqlite"
        ))),
        None => Err(Error::config(format!(
            "{at}: sourceType database needs provider (postgresql, mysql or sqlite)"
        ))),
    }
}

/// Rewrites the template-valued keys of a `cute` document from Scriban to Jinja.
fn translate_templates(doc: &mut Map<String, Value>) {
    let text = |v: &mut Value| {
        if let Value::String(s) = v {
            *s = scriban_to_jinja(s);
        }
    };
    for key in [
        "endPoint",
        "filterExpression",
        "resultsSecret",
        "connectionString",
        "query",
    ] {
        if let Some(v) = doc.get_mut(key) {
            text(v);
        }
    }
    for key in ["headers", "formUrlEncodedContent"] {
        if let Some(Value::Object(map)) = doc.get_mut(key) {
            map.values_mut().for_each(text);
        }
    }
    for key in ["mapping", "preMapping"] {
        if let Some(Value::Array(items)) = doc.get_mut(key) {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                for field in ["fieldName", "expression"] {
                    if let Some(v) = item.get_mut(field) {
                        text(v);
                    }
                }
            }
        }
    }
}

/// Adds the `cute` entries for `keys` the file does not define, read from the
/// space of the `cuteEntries` sink.
pub async fn add_missing(config: &mut ConfigFile, keys: &[String], dry_run: bool) -> Result<()> {
    let Some(cute) = config.cute_entries.clone() else {
        return Ok(());
    };
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !config.syncs.iter().any(|e| &e.key == *k))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let path = format!("sinks.{}", cute.sink);
    let (kind, rest) = split_type(&config.sinks[&cute.sink], &path)?;
    if kind != "contentful" {
        return Err(Error::config(format!(
            "{}: cuteEntries.sink must be a contentful sink, '{}' is {kind}",
            config.path.display(),
            cute.sink
        )));
    }
    let sink_config: ContentfulSinkConfig = parse_section(rest, &path)?;
    let ctx = BuildContext::new("", dry_run)
        .with_template_scope(template_scope_from_env())
        .with_base_dir(config.base_dir());
    let mut added = Vec::new();
    for key in missing {
        let found = fetch_cute_entry(&sink_config, &ctx, &cute.content_type, key).await?;
        added.push(translate(
            key,
            &found.yaml,
            found.source_type.as_deref(),
            &cute.sink,
        )?);
    }
    config.syncs.extend(added);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "contentType: user\ncontentKeyField: id.en\ncontentDisplayField: name.en\nid: ignored\nendPoint: \"https://api.example.test/users?active=1\"\nresultsJsonPath: data.items\npagination: { skipKey: page, limitKey: per_page, pageSize: 100 }\nmapping:\n  - { fieldName: id.en, expression: \"{{ row.id }}\" }\n  - { fieldName: phone.en, expression: \"{{ row.phone }}\", overwriteNull: true }\n";

    #[test]
    fn a_cute_entry_becomes_a_sync_entry() {
        let e = translate("dataUser", YAML, Some("restapi"), "cms").unwrap();
        assert_eq!(e.key, "dataUser");
        assert_eq!(e.sink, "cms");
        assert_eq!(e.table(), "user");
        assert_eq!(e.key_field.as_deref(), Some("id.en"));
        assert_eq!(e.mapping.len(), 2);
        assert!(e.mapping[1].overwrite_null);
        assert_eq!(e.source["type"], "http");
        assert_eq!(e.source["resultsJsonPath"], "data.items");
        assert!(e.source.get("contentType").is_none() && e.source.get("id").is_none());
    }

    /// The example entry of `cute`'s documentation (with `tags.en[]` quoted: YAML
    /// does not allow `[]` in plain scalars inside `{ ... }`).
    const CUTE_DOCS: &str = r#"contentType: user
contentKeyField: id.en
endPoint: "https://api.example.test/users?active=1"
headers: { Accept: application/json, Authorization: "Bearer {{ config.Cute__ExampleApiKey }}" }
resultsJsonPath: data.items
pagination: { skipKey: page, limitKey: per_page, pageSize: 100, limitMax: 100 }
preMapping:
  - { varName: full, expression: "{{ row.first }} {{ row.last }}" }
filterExpression: "{{ (row.status | string.downcase) == 'active' }}"
mapping:
  - { fieldName: id.en,        expression: "{{ row.id }}" }
  - { fieldName: name.en,      expression: "{{ var.full }}" }
  - { fieldName: "tags.en[]",  expression: "{{ row.tags | array.join '|' }}" }
  - { fieldName: location.en.lat, expression: "{{ row.geo.lat }}" }
  - { fieldName: location.en.lon, expression: "{{ row.geo.lng }}" }
  - { fieldName: phone.en,     expression: "{{ row.phone }}", overwriteNull: true }
"#;

    #[test]
    fn the_cute_documentation_example_translates_and_compiles() {
        let e = translate("dataUser", CUTE_DOCS, Some("restapi"), "cms").unwrap();
        assert_eq!(
            e.filter_expression.as_deref(),
            Some("{{ (row.status | lower) == 'active' }}")
        );
        assert_eq!(e.mapping[2].expression, "{{ row.tags | join('|') }}");
        assert_eq!(
            e.source["pagination"]["skipMode"], "page",
            "cute counts pages"
        );
        let scope = serde_json::json!({"env": {}, "config": {"Cute__ExampleApiKey": "k"}});
        sluicegate_engine::Mapper::new(&e.mapping().unwrap(), &scope).unwrap();
    }

    #[test]
    fn database_entries_become_database_sources() {
        let yaml = r#"
contentType: product
contentKeyField: sku.en
provider: PostgreSQL
stream: true
connectionString: "Host=db;Username=u;Password={{ config.Cute__DbPassword }};Database=shop"
query: "SELECT * FROM products ORDER BY id OFFSET {{ skip }} ROWS FETCH NEXT {{ limit }} ROWS ONLY"
pagination: { skipKey: skip, limitKey: limit, limitMax: 500 }
mapping:
  - { fieldName: sku.en, expression: "{{ row.sku | string.upcase }}" }
"#;
        let e = translate("products", yaml, Some("database"), "cms").unwrap();
        assert_eq!(e.source["type"], "postgres");
        assert!(e.source.get("provider").is_none() && e.source.get("stream").is_none());
        assert!(
            e.source["pagination"].get("skipMode").is_none(),
            "database paging is an offset"
        );
        assert_eq!(e.mapping[0].expression, "{{ row.sku | upper }}");
        assert_eq!(
            e.source["connectionString"],
            "Host=db;Username=u;Password={{ config.Cute__DbPassword }};Database=shop"
        );
    }

    #[test]
    fn unsupported_parts_are_named() {
        let err = translate(
            "k",
            &format!("{YAML}enumerateForContentTypes: []\n"),
            None,
            "cms",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("enumerateForContentTypes"),
            "{err}"
        );
        let err = translate("k", YAML, Some("database"), "cms").unwrap_err();
        assert!(err.to_string().contains("needs provider"), "{err}");
        let sqlserver = format!("{YAML}provider: sqlserver\n");
        let err = translate("k", &sqlserver, Some("database"), "cms").unwrap_err();
        assert!(
            err.to_string().contains("sqlserver is not supported"),
            "{err}"
        );
        let err = translate("k", "endPoint: x\n", None, "cms").unwrap_err();
        assert!(err.to_string().contains("contentType is missing"), "{err}");
    }
}
