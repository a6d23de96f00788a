//! The entries query language: `content_type`, `fields.X` and `sys.X` filters
//! with `[in]`, `[nin]`, `[ne]`, `[exists]`, `[lt]`, `[lte]`, `[gt]`, `[gte]`,
//! `order`, `select`, `skip`, `limit` (at most 1000) and `include` (ignored).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::model::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    In,
    Nin,
    Exists,
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug)]
struct Filter {
    path: Vec<String>,
    op: Op,
    values: Vec<String>,
    /// `values` as a set, for `[in]`/`[nin]` over many entries.
    set: std::collections::HashSet<String>,
}

/// A parsed entries query.
#[derive(Debug)]
pub(crate) struct EntryQuery {
    pub(crate) content_type: Option<String>,
    filters: Vec<Filter>,
    order: Vec<(Vec<String>, bool)>,
    select: Option<Vec<Vec<String>>>,
    pub(crate) skip: usize,
    pub(crate) limit: usize,
}

fn split_path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_owned).collect()
}

impl EntryQuery {
    pub(crate) fn parse(params: &[(String, String)]) -> Result<Self, ApiError> {
        let mut q = EntryQuery {
            content_type: None,
            filters: Vec::new(),
            order: Vec::new(),
            select: None,
            skip: 0,
            limit: 100,
        };
        let mut uses_fields = false;
        for (key, value) in params {
            match key.as_str() {
                "content_type" => q.content_type = Some(value.clone()),
                "skip" => {
                    q.skip = value.parse().map_err(|_| {
                        ApiError::invalid_query(format!(
                            "skip must be a non-negative integer, got '{value}'"
                        ))
                    })?
                }
                "limit" => {
                    q.limit = value.parse().map_err(|_| {
                        ApiError::invalid_query(format!(
                            "limit must be a non-negative integer, got '{value}'"
                        ))
                    })?;
                    if q.limit > 1000 {
                        return Err(ApiError::invalid_query("limit must be at most 1000"));
                    }
                }
                "include" | "locale" => {}
                "order" => {
                    for part in value.split(',').filter(|p| !p.is_empty()) {
                        let (desc, path) = match part.strip_prefix('-') {
                            Some(p) => (true, p),
                            None => (false, part),
                        };
                        uses_fields |= path.starts_with("fields.");
                        q.order.push((split_path(path), desc));
                    }
                }
                "select" => {
                    let mut paths = Vec::new();
                    for part in value.split(',').filter(|p| !p.is_empty()) {
                        let path = split_path(part);
                        if path.len() > 2 {
                            return Err(ApiError::invalid_query(format!(
                                "select: {part} is deeper than 2 levels, which is not supported"
                            )));
                        }
                        paths.push(path);
                    }
                    q.select = Some(paths);
                }
                k if k.starts_with("fields.")
                    || k.starts_with("sys.")
                    || k.starts_with("metadata.") =>
                {
                    let (path, op) = match k.split_once('[') {
                        Some((p, rest)) => {
                            let op = match rest.trim_end_matches(']') {
                                "in" => Op::In,
                                "nin" => Op::Nin,
                                "ne" => Op::Ne,
                                "exists" => Op::Exists,
                                "lt" => Op::Lt,
                                "lte" => Op::Lte,
                                "gt" => Op::Gt,
                                "gte" => Op::Gte,
                                other => {
                                    return Err(ApiError::invalid_query(format!(
                                        "unknown operator [{other}] in {k}"
                                    )));
                                }
                            };
                            (p, op)
                        }
                        None => (k, Op::Eq),
                    };
                    uses_fields |= path.starts_with("fields.");
                    let values = match op {
                        Op::In | Op::Nin => value.split(',').map(str::to_owned).collect(),
                        _ => vec![value.clone()],
                    };
                    q.filters.push(Filter {
                        path: split_path(path),
                        op,
                        set: values.iter().cloned().collect(),
                        values,
                    });
                }
                other => {
                    return Err(ApiError::invalid_query(format!(
                        "The query parameter \"{other}\" is not supported"
                    )));
                }
            }
        }
        if uses_fields && q.content_type.is_none() {
            return Err(ApiError::invalid_query(
                "You need to specify a content_type when filtering or ordering on fields",
            ));
        }
        Ok(q)
    }

    /// Filters, orders and pages `entries`; returns the total and the page.
    pub(crate) fn run(&self, entries: Vec<&Value>, default_locale: &str) -> (usize, Vec<Value>) {
        let mut matched: Vec<&Value> = entries
            .into_iter()
            .filter(|e| {
                self.content_type
                    .as_deref()
                    .is_none_or(|ct| e["sys"]["contentType"]["sys"]["id"] == ct)
            })
            .filter(|e| self.filters.iter().all(|f| matches(f, e, default_locale)))
            .collect();
        if self.order.is_empty() {
            matched.sort_by(|a, b| {
                a["sys"]["createdAt"]
                    .as_str()
                    .cmp(&b["sys"]["createdAt"].as_str())
                    .then_with(|| a["sys"]["id"].as_str().cmp(&b["sys"]["id"].as_str()))
            });
        } else {
            matched.sort_by(|a, b| {
                for (path, desc) in &self.order {
                    let ord = compare(
                        resolve(a, path, default_locale),
                        resolve(b, path, default_locale),
                    );
                    let ord = if *desc { ord.reverse() } else { ord };
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                a["sys"]["id"].as_str().cmp(&b["sys"]["id"].as_str())
            });
        }
        let total = matched.len();
        let page = matched
            .into_iter()
            .skip(self.skip)
            .take(self.limit)
            .map(|e| self.selected(e))
            .collect();
        (total, page)
    }

    fn selected(&self, entry: &Value) -> Value {
        let Some(paths) = &self.select else {
            return entry.clone();
        };
        let mut out = Map::new();
        let mut sys = Map::new();
        sys.insert("type".into(), entry["sys"]["type"].clone());
        sys.insert("id".into(), entry["sys"]["id"].clone());
        out.insert("sys".into(), Value::Object(sys));
        for path in paths {
            match path.as_slice() {
                [top] => {
                    out.insert(top.clone(), entry[top].clone());
                }
                [top, key] => {
                    let slot = out
                        .entry(top.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let (Value::Object(m), Some(v)) = (slot, entry[top].get(key)) {
                        m.insert(key.clone(), v.clone());
                    }
                }
                _ => {}
            }
        }
        Value::Object(out)
    }
}

/// The value a query path points at: `fields.X` reads the default locale.
fn resolve<'a>(entry: &'a Value, path: &[String], default_locale: &str) -> Option<&'a Value> {
    match path.first().map(String::as_str) {
        Some("fields") => {
            let mut v = entry.get("fields")?.get(path.get(1)?)?;
            v = match path.get(2) {
                Some(locale) => v.get(locale)?,
                None => v.get(default_locale)?,
            };
            for p in path.iter().skip(3) {
                v = v.get(p)?;
            }
            Some(v)
        }
        _ => {
            let mut v = entry;
            for p in path {
                v = v.get(p)?;
            }
            Some(v)
        }
    }
}

fn as_text(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(as_text).collect(),
        Value::Object(_) => v["sys"]["id"]
            .as_str()
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(x), Some(y)) => as_text(x).cmp(&as_text(y)),
    }
}

fn matches(f: &Filter, entry: &Value, default_locale: &str) -> bool {
    let value = resolve(entry, &f.path, default_locale);
    // The common case, a text value tested for (in)equality, without allocating.
    if let Some(Value::String(text)) = value {
        match f.op {
            Op::Eq => return f.values.first().is_some_and(|v| v == text),
            Op::Ne => return f.values.first().is_none_or(|v| v != text),
            Op::In => return f.set.contains(text),
            Op::Nin => return !f.set.contains(text),
            _ => {}
        }
    }
    let texts = value.map(as_text).unwrap_or_default();
    let first = f.values.first().map(String::as_str).unwrap_or_default();
    match f.op {
        Op::Eq => texts.iter().any(|t| t == first),
        Op::Ne => !texts.iter().any(|t| t == first),
        Op::In => texts.iter().any(|t| f.set.contains(t)),
        Op::Nin => !texts.iter().any(|t| f.set.contains(t)),
        Op::Exists => (value.is_some_and(|v| !v.is_null())) == (first == "true"),
        Op::Lt | Op::Lte | Op::Gt | Op::Gte => {
            let Some(v) = value else { return false };
            let ord = match (v.as_f64(), first.parse::<f64>()) {
                (Some(x), Ok(y)) => x.partial_cmp(&y),
                _ => as_text(v).first().map(|t| t.as_str().cmp(first)),
            };
            match ord {
                Some(o) => match f.op {
                    Op::Lt => o == Ordering::Less,
                    Op::Lte => o != Ordering::Greater,
                    Op::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                },
                None => false,
            }
        }
    }
}
