//! The configuration reference (`docs/configuration.md`) names every key that
//! the configuration types accept. The keys are taken from the types themselves:
//! each refuses an unknown key with the list of the keys it expects.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The keys a `deny_unknown_fields` type accepts, read from its refusal of an unknown one.
fn accepted_keys<T: DeserializeOwned>(base: Value) -> Vec<String> {
    let mut probe = base;
    probe
        .as_object_mut()
        .expect("an object")
        .insert("zzUnknownKey".into(), json!(1));
    let err = serde_json::from_value::<T>(probe)
        .err()
        .expect("an unknown key must be refused")
        .to_string();
    let list = err
        .split_once("expected one of ")
        .or_else(|| err.split_once("expected "))
        .unwrap_or_else(|| panic!("no list of expected keys in: {err}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn missing_from_reference(section: &str, keys: &[String]) -> Vec<String> {
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    assert!(!keys.is_empty(), "{section}: no keys found");
    keys.iter()
        // `key`, or a dotted form: `section.key`, `key.sub`.
        .filter(|k| {
            !(reference.contains(&format!("`{k}`"))
                || reference.contains(&format!("`{k}."))
                || reference.contains(&format!(".{k}`")))
        })
        .map(|k| format!("{section}.{k}"))
        .collect()
}

#[test]
fn the_configuration_reference_names_every_key() {
    let mut missing = Vec::new();
    let mut check = |section: &str, keys: Vec<String>| {
        missing.extend(missing_from_reference(section, &keys));
    };
    check(
        "syncs[]",
        accepted_keys::<sluicegate_cli::config_file::SyncEntry>(json!({})),
    );
    check(
        "tuning",
        accepted_keys::<sluicegate_cli::tuning::TuningConfig>(json!({})),
    );
    check(
        "cuteEntries",
        accepted_keys::<sluicegate_cli::config_file::CuteEntries>(json!({})),
    );
    check(
        "mapping",
        accepted_keys::<sluicegate_engine::MappingItem>(json!({})),
    );
    check(
        "preMapping",
        accepted_keys::<sluicegate_engine::PreMappingItem>(json!({})),
    );
    use sluicegate_adapters_http as http;
    check(
        "http source",
        accepted_keys::<http::HttpSourceConfig>(json!({})),
    );
    check("http retry", accepted_keys::<http::RetryConfig>(json!({})));
    check(
        "http fileCache",
        accepted_keys::<http::FileCacheConfig>(json!({})),
    );
    for kind in [
        "offset",
        "page_number",
        "cursor",
        "next_url",
        "link_header",
        "header_token",
    ] {
        check(
            &format!("pagination {kind}"),
            accepted_keys::<http::Pagination>(json!({"type": kind})),
        );
    }
    for kind in ["bearer", "basic", "api_key", "oauth2_client_credentials"] {
        check(
            &format!("auth {kind}"),
            accepted_keys::<http::AuthConfig>(json!({"type": kind})),
        );
    }
    use sluicegate_adapters_db as db;
    check(
        "database source",
        accepted_keys::<db::DbSourceConfig>(json!({})),
    );
    check(
        "database pagination",
        accepted_keys::<db::QueryPagination>(json!({})),
    );
    check(
        "duckdb sink",
        accepted_keys::<sluicegate_sinks_duckdb::DuckDbSinkConfig>(json!({})),
    );
    check(
        "contentful sink",
        accepted_keys::<sluicegate_sinks_cms::ContentfulSinkConfig>(json!({})),
    );
    check(
        "directus sink",
        accepted_keys::<sluicegate_sinks_cms::DirectusSinkConfig>(json!({})),
    );
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not name: {}",
        missing.join(", ")
    );
}
