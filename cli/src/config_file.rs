//! The configuration file: `version`, named `sinks`, and `syncs` entries.
//!
//! ```yaml
//! version: 1
//! sinks:
//!   warehouse: { type: duckdb, path: shop.duckdb }
//! syncs:
//!   - key: products
//!     sink: warehouse
//!     table: products        # default: the key
//!     keyField: id           # upsert key; without it rows are appended
//!     source: { type: http, endPoint: "...", ... }
//! ```
//!
//! Only the shape of the file is checked here; each `source` and sink section
//! is parsed by its adapter's factory (see [`prepare`](crate::sync::prepare)).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use sluicegate_core::{Error, Result};

/// The configuration file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// A loaded configuration file.
#[derive(Debug)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Named sink sections (raw; parsed by the sink's factory).
    pub sinks: BTreeMap<String, Value>,
    /// Sync entries, in file order.
    pub syncs: Vec<SyncEntry>,
    /// Where `cute` sync entries are read from when a key is not in `syncs`.
    pub cute_entries: Option<CuteEntries>,
    /// Memory and stage knobs (see [`crate::tuning`]).
    pub tuning: crate::tuning::TuningConfig,
    /// Where run state (checkpoints, high-water marks, run locks) is kept.
    pub state: crate::pg_state::StateConfig,
    /// The file's text, to find the line a message is about.
    text: String,
}

/// The `cuteEntries` section: read sync entries `cute` keeps in a Contentful
/// space (content type `cuteContentSyncApi`) for keys the file does not define.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CuteEntries {
    /// The name of a `contentful` sink in `sinks`: the space to read from, and
    /// where those entries sync to.
    pub sink: String,
    /// The content type holding the entries.
    #[serde(default = "default_cute_content_type")]
    pub content_type: String,
}

fn default_cute_content_type() -> String {
    "cuteContentSyncApi".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    version: u32,
    #[serde(default)]
    sinks: BTreeMap<String, Value>,
    #[serde(default)]
    syncs: Vec<SyncEntry>,
    #[serde(default)]
    cute_entries: Option<CuteEntries>,
    #[serde(default)]
    tuning: crate::tuning::TuningConfig,
    #[serde(default)]
    state: crate::pg_state::StateConfig,
}

/// One `syncs` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncEntry {
    /// The key that `--key` selects.
    pub key: String,
    /// The name of a sink in `sinks`.
    pub sink: String,
    /// Target table (or content type); defaults to the key.
    #[serde(default, alias = "contentType")]
    pub table: Option<String>,
    /// Field that identifies a record, for upserts.
    #[serde(default, alias = "contentKeyField")]
    pub key_field: Option<String>,
    /// Variables rendered before the mapping (`var.<name>`).
    #[serde(default)]
    pub pre_mapping: Vec<sluicegate_engine::PreMappingItem>,
    /// Target fields and their templates; without it records pass unchanged.
    #[serde(default)]
    pub mapping: Vec<sluicegate_engine::MappingItem>,
    /// Keep a record only when this template renders `true`.
    #[serde(default)]
    pub filter_expression: Option<String>,
    /// Read only what changed since the last complete run (needs `keyField`):
    /// the cursor field, the first run's start and a lag; see
    /// `docs/configuration.md`.
    #[serde(default)]
    pub incremental: Option<sluicegate_engine::IncrementalConfig>,
    /// What happens to target rows or entries whose key a complete read did
    /// not send (needs `keyField`; not with `incremental`); see
    /// `docs/configuration.md`.
    #[serde(default)]
    pub deletes: Option<sluicegate_engine::DeletesConfig>,
    /// The source section (raw; parsed by the source's factory).
    pub source: Value,
}

impl SyncEntry {
    /// The target table.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or(&self.key)
    }

    /// The entry's mapping, if it has one.
    pub fn mapping(&self) -> Option<sluicegate_engine::MappingConfig> {
        (!self.mapping.is_empty()
            || !self.pre_mapping.is_empty()
            || self.filter_expression.is_some())
        .then(|| sluicegate_engine::MappingConfig {
            pre_mapping: self.pre_mapping.clone(),
            mapping: self.mapping.clone(),
            filter_expression: self.filter_expression.clone(),
        })
    }

    /// Where this entry's source section is, for error messages.
    pub fn source_path(&self) -> String {
        format!("syncs[{}].source", self.key)
    }
}

impl ConfigFile {
    /// Reads and checks the file's shape.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (pass --config FILE, or run where sluicegate.yaml is)"
            } else {
                ""
            };
            Error::config(format!("cannot read config file {}{hint}", path.display()))
                .with_source(e)
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` is used in messages and to resolve
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file = path.display();
        // serde_yaml's messages already name the key path and the line and column.
        let raw: RawFile =
            serde_yaml_ng::from_str(text).map_err(|err| Error::config(format!("{file}: {err}")))?;
        if raw.version != CONFIG_VERSION {
            return Err(Error::config(format!(
                "{file}: version {} is not supported (this sluicegate reads version {CONFIG_VERSION})",
                raw.version
            )));
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in raw.syncs.iter().enumerate() {
            if entry.key.trim().is_empty() {
                return Err(Error::config(format!(
                    "{file}: syncs[{i}].key must not be empty"
                )));
            }
            if !seen.insert(entry.key.as_str()) {
                return Err(Error::config(format!(
                    "{file}: sync key '{}' is defined twice",
                    entry.key
                )));
            }
            if !raw.sinks.contains_key(&entry.sink) {
                let known: Vec<&str> = raw.sinks.keys().map(String::as_str).collect();
                let message = format!(
                    "syncs[{}].sink: no sink named '{}' (sinks: {})",
                    entry.key,
                    entry.sink,
                    if known.is_empty() {
                        "none defined".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
                return Err(Error::config(match locate(text, &message) {
                    Some(line) => format!("{file}:{line}: {message}"),
                    None => format!("{file}: {message}"),
                }));
            }
            if entry.incremental.is_some() && entry.key_field.is_none() {
                let message = format!(
                    "syncs[{}].incremental: needs keyField: each window starts at the last run's \
                     high-water mark (minus the lag), so records at its edge are read again and \
                     must be upserted, not appended",
                    entry.key
                );
                return Err(Error::config(match locate(text, &message) {
                    Some(line) => format!("{file}:{line}: {message}"),
                    None => format!("{file}: {message}"),
                }));
            }
            if let Some(deletes) = entry
                .deletes
                .as_ref()
                .filter(|d| d.mode.delete_mode().is_some())
            {
                let problem = if entry.key_field.is_none() {
                    Some(
                        "needs keyField: keys are what a complete read is compared with".to_owned(),
                    )
                } else if entry.incremental.is_some() {
                    Some(
                        "cannot be combined with incremental: an incremental read sees only what \
                         changed, not everything the source still has"
                            .to_owned(),
                    )
                } else {
                    deletes.validate().err().map(|e| e.to_string())
                };
                if let Some(problem) = problem {
                    let message = format!("syncs[{}].deletes: {problem}", entry.key);
                    return Err(Error::config(match locate(text, &message) {
                        Some(line) => format!("{file}:{line}: {message}"),
                        None => format!("{file}: {message}"),
                    }));
                }
            }
            if !entry.source.is_object() {
                return Err(Error::config(format!(
                    "{file}: syncs[{}].source must be a mapping",
                    entry.key
                )));
            }
        }
        if let Some(cute) = &raw.cute_entries
            && !raw.sinks.contains_key(&cute.sink)
        {
            return Err(Error::config(format!(
                "{file}: cuteEntries.sink: no sink named '{}'",
                cute.sink
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            sinks: raw.sinks,
            syncs: raw.syncs,
            cute_entries: raw.cute_entries,
            tuning: raw.tuning,
            state: raw.state,
            text: text.to_owned(),
        })
    }

    /// `message` (which starts with a key path such as
    /// `syncs[orders].source.pagination: …`) prefixed with the file and, when it
    /// can be found, the line of the key it is about (`file:12: …`).
    pub fn at(&self, message: &str) -> String {
        let file = self.path.display();
        match locate(&self.text, message) {
            Some(line) => format!("{file}:{line}: {message}"),
            None => format!("{file}: {message}"),
        }
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        base_dir_of(&self.path)
    }

    /// The entries for the given keys (all entries if `keys` is empty), in the
    /// order asked for; an unknown key is an error listing the known ones.
    pub fn select(&self, keys: &[String]) -> Result<Vec<&SyncEntry>> {
        if keys.is_empty() {
            return Ok(self.syncs.iter().collect());
        }
        keys.iter()
            .map(|key| {
                self.syncs.iter().find(|e| &e.key == key).ok_or_else(|| {
                    let known: Vec<&str> = self.syncs.iter().map(|e| e.key.as_str()).collect();
                    Error::config(format!(
                        "{}: no sync entry with key '{key}' (keys: {})",
                        self.path.display(),
                        if known.is_empty() {
                            "none defined".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ))
                })
            })
            .collect()
    }
}

/// Splits an adapter section into its `type` and the rest.
pub fn split_type(section: &Value, path: &str) -> Result<(String, Value)> {
    let Some(map) = section.as_object() else {
        return Err(Error::config(format!("{path} must be a mapping")));
    };
    let Some(kind) = map.get("type") else {
        return Err(Error::config(format!("{path}: missing `type`")));
    };
    let Some(kind) = kind.as_str() else {
        return Err(Error::config(format!("{path}.type must be a string")));
    };
    let rest: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| k.as_str() != "type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((kind.to_owned(), Value::Object(rest)))
}

/// The 1-based line of the key a message is about: the message's leading key
/// path (`syncs[orders].source.pagination`) is followed through the YAML text —
/// an entry by its `key:` line, then each name as the next line that sets it —
/// and an ``unknown field `x` `` in the message is looked up after that. A
/// heuristic for messages: `None` when a step is not found.
pub fn locate(text: &str, message: &str) -> Option<usize> {
    let path = message.split(": ").next()?;
    let sections = ["syncs", "sinks", "cuteEntries", "tuning"];
    if !sections.iter().any(|section| path.starts_with(section)) || path.contains(' ') {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let sets = |line: &str, name: &str| {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        t.starts_with(&format!("{name}:"))
            || t.starts_with(&format!("\"{name}\":"))
            || line.contains(&format!("{{ {name}:"))
            || line.contains(&format!(", {name}:"))
            || line.contains(&format!("{{{name}:"))
    };
    let mut at = 0;
    let mut found = None;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.trim_end_matches(']'))),
            None => (segment, None),
        };
        // An array index or name without its own key: skip it.
        if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let step = (at..lines.len()).find(|&i| sets(lines[i], name))?;
        at = step;
        found = Some(step);
        if let Some(key) = index
            && !key.chars().all(|c| c.is_ascii_digit())
        {
            let entry = (at..lines.len()).find(|&i| {
                sets(lines[i], "key")
                    && lines[i]
                        .split_once("key:")
                        .is_some_and(|(_, v)| v.trim().trim_matches('"').trim_matches('\'') == key)
            })?;
            at = entry;
            found = Some(entry);
        }
    }
    if let Some(field) = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split('`').next())
        && let Some(i) = (at..lines.len()).find(|&i| sets(lines[i], field))
    {
        found = Some(i);
    }
    found.map(|i| i + 1)
}

/// The directory relative paths of the configuration file `path` resolve against
/// (and where `.sluicegate/` lives): the file's directory.
pub fn base_dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_located_on_the_line_of_their_key() {
        let text = "version: 1\nsinks:\n  warehouse: { type: duckdb, path: a.duckdb }\nsyncs:\n  - key: a\n    sink: warehouse\n    source:\n      type: http\n  - key: b\n    sink: warehouse\n    source:\n      type: http\n      pagination: { skipKye: offset }\n";
        assert_eq!(
            locate(
                text,
                "syncs[b].source.pagination: unknown field `skipKye`, expected one of"
            ),
            Some(13)
        );
        assert_eq!(
            locate(text, "syncs[b].source.type: unknown source type 'htp'"),
            Some(12)
        );
        assert_eq!(locate(text, "syncs[a].sink: no sink named 'x'"), Some(6));
        assert_eq!(
            locate(text, "sinks.warehouse.type: unknown sink type"),
            Some(3)
        );
        assert_eq!(locate(text, "syncs[c].sink: no sink"), None, "no entry c");
        assert_eq!(locate(text, "cannot read the file"), None);
    }

    fn parse(text: &str) -> Result<ConfigFile> {
        ConfigFile::parse(text, Path::new("conf/sluicegate.yaml"))
    }

    const GOOD: &str = "version: 1\nsinks:\n  wh: {type: duckdb, path: x.duckdb}\nsyncs:\n  - key: a\n    sink: wh\n    keyField: id\n    source: {type: http, endPoint: 'http://x'}\n  - key: b\n    sink: wh\n    contentType: bees\n    source: {type: http, endPoint: 'http://y'}\n";

    #[test]
    fn parses_entries_and_aliases() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.syncs.len(), 2);
        assert_eq!(c.syncs[0].table(), "a");
        assert_eq!(c.syncs[1].table(), "bees");
        assert_eq!(c.base_dir(), PathBuf::from("conf"));
        assert_eq!(c.select(&["b".into()]).unwrap()[0].key, "b");
    }

    #[test]
    fn mistakes_are_one_line_naming_where() {
        let err = parse(&GOOD.replace("keyField", "keyFeild"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("conf/sluicegate.yaml: syncs[0]: unknown field `keyFeild`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");

        let err = parse(&GOOD.replace("sink: wh\n    contentType", "sink: lake\n    contentType"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "conf/sluicegate.yaml:10: syncs[b].sink: no sink named 'lake' (sinks: wh)"
        );

        let err = parse(&GOOD.replace("version: 1", "version: 2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");

        let err = parse(&GOOD.replace("key: b", "key: a"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sync key 'a' is defined twice"), "{err}");

        let err = parse(GOOD)
            .unwrap()
            .select(&["zz".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "conf/sluicegate.yaml: no sync entry with key 'zz' (keys: a, b)"
        );

        let err = parse("version: 1\nsyncs: [\n").unwrap_err().to_string();
        assert!(
            err.contains("line"),
            "yaml syntax errors carry the position: {err}"
        );
    }

    #[test]
    fn split_type_separates_the_adapter_type() {
        let (kind, rest) =
            split_type(&serde_json::json!({"type": "http", "endPoint": "x"}), "s").unwrap();
        assert_eq!(kind, "http");
        assert_eq!(rest, serde_json::json!({"endPoint": "x"}));
        assert!(
            split_type(&serde_json::json!({"endPoint": "x"}), "s")
                .unwrap_err()
                .to_string()
                .contains("missing `type`")
        );
    }
}
