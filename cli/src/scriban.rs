//! `cute`'s templates are Scriban; Sluicegate renders Jinja. This module
//! rewrites the Scriban constructs `cute` configurations use, so a `cute`
//! configuration runs unchanged (see [`crate::cute`]).

/// Rewrites a `cute` (Scriban) template into the Jinja syntax Sluicegate renders,
/// for the constructs `cute` configurations use: pipes into Scriban's builtins
/// (`row.name | string.downcase`, `row.tags | array.join '|'`), `cute.*` helpers,
/// `{{ if }} / {{ else if }} / {{ else }} / {{ end }}` and `{{ for }}` blocks, and
/// `&&`, `||`, `!`. Anything else is left as it is (and, if it is not valid Jinja,
/// reported as a template error before any request).
pub fn scriban_to_jinja(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut blocks: Vec<&'static str> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = rest[start + 2..start + 2 + len].trim();
        rest = &rest[start + 4 + len..];
        if let Some(cond) = inner.strip_prefix("if ") {
            blocks.push("if");
            out.push_str(&format!("{{% if {} %}}", scriban_expr(cond)));
        } else if let Some(cond) = inner.strip_prefix("else if ") {
            out.push_str(&format!("{{% elif {} %}}", scriban_expr(cond)));
        } else if inner == "else" {
            out.push_str("{% else %}");
        } else if let Some(head) = inner.strip_prefix("for ") {
            blocks.push("for");
            out.push_str(&format!("{{% for {} %}}", scriban_expr(head)));
        } else if inner == "end" {
            let block = blocks.pop().unwrap_or("if");
            out.push_str(&format!("{{% end{block} %}}"));
        } else {
            out.push_str(&format!("{{{{ {} }}}}", scriban_expr(inner)));
        }
    }
    out.push_str(rest);
    out
}

/// Splits on `sep` outside quotes.
fn split_outside_quotes(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == sep => {
                parts.push(String::new());
                continue;
            }
            None => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

/// Translates one Scriban expression (operators and pipes).
fn scriban_expr(expr: &str) -> String {
    // Logical operators first (`||` must not be taken for pipes).
    let mut text = String::new();
    let mut quote: Option<char> = None;
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                text.push(c);
            }
            None => match (c, next) {
                ('\'' | '"', _) => {
                    quote = Some(c);
                    text.push(c);
                }
                ('&', Some('&')) => {
                    text.push_str(" and ");
                    i += 1;
                }
                ('|', Some('|')) => {
                    text.push_str(" or ");
                    i += 1;
                }
                ('!', n) if n != Some('=') => text.push_str("not "),
                _ => text.push(c),
            },
        }
        i += 1;
    }
    // Then pipes: `value | fn arg1 arg2` → `value | fn(arg1, arg2)`, inside
    // parentheses too.
    collapse_spaces(&translate_pipes(&text))
}

/// Collapses runs of spaces outside quotes.
fn collapse_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == ' ' && out.ends_with(' ') => continue,
            None => {}
        }
        out.push(c);
    }
    out
}

fn translate_pipes(text: &str) -> String {
    // Parenthesised groups are translated on their own and set aside behind
    // markers, so their pipes do not split the outer expression.
    let mut out = String::new();
    let mut groups: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut group = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            if depth > 0 {
                group.push(c)
            } else {
                out.push(c)
            }
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            if depth > 0 {
                group.push(c)
            } else {
                out.push(c)
            }
            continue;
        }
        match c {
            '(' => {
                if depth > 0 {
                    group.push(c);
                }
                depth += 1;
            }
            ')' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push_str(&format!("\u{1}{}\u{1}", groups.len()));
                    groups.push(format!("({})", translate_pipes(&group)));
                    group.clear();
                } else {
                    group.push(c);
                }
            }
            _ if depth > 0 => group.push(c),
            _ => out.push(c),
        }
    }
    let parts = split_outside_quotes(&out, '|');
    let mut result = parts[0].trim_end().to_owned();
    for part in &parts[1..] {
        let words = split_outside_quotes(part.trim(), ' ');
        let words: Vec<&str> = words
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty())
            .collect();
        let Some((name, rest)) = words.split_first() else {
            continue;
        };
        // Arguments run until the first operator; the rest follows the call.
        let operators = [
            "==", "!=", "<", ">", "<=", ">=", "and", "or", "+", "-", "*", "/", "~", "not",
        ];
        let cut = rest
            .iter()
            .position(|w| operators.contains(w))
            .unwrap_or(rest.len());
        let (args, tail) = rest.split_at(cut);
        let filter = match *name {
            "string.downcase" => "lower",
            "string.upcase" => "upper",
            "string.capitalize" => "capitalize",
            "string.strip" => "trim",
            "string.size" | "array.size" => "length",
            "string.replace" => "replace",
            "array.join" => "join",
            "object.to_json" | "cute.to_json" => "tojson",
            "cute.to_int" | "math.to_int" => "to_int",
            "cute.normalize_string" => "slug",
            "cute.to_pascal_case" => "pascal_case",
            "cute.url_last_segment" => "url_last_segment",
            other => other,
        };
        if args.is_empty() {
            result.push_str(&format!(" | {filter}"));
        } else {
            result.push_str(&format!(" | {filter}({})", args.join(", ")));
        }
        if !tail.is_empty() {
            result.push(' ');
            result.push_str(&tail.join(" "));
        }
    }
    for (i, g) in groups.iter().enumerate() {
        result = result.replace(&format!("\u{1}{i}\u{1}"), g);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use serde_json::json;
    use sluicegate_core::into_record;
    use sluicegate_engine::{Mapper, MappingConfig};

    #[test]
    fn cute_templates_become_jinja() {
        assert_eq!(
            scriban_to_jinja("{{ row.tags | array.join '|' }}"),
            "{{ row.tags | join('|') }}"
        );
        assert_eq!(
            scriban_to_jinja("{{ (row.status | string.downcase) == 'active' }}"),
            "{{ (row.status | lower) == 'active' }}"
        );
        assert_eq!(
            scriban_to_jinja("{{ row.a && !row.b || row.c != 1 }}"),
            "{{ row.a and not row.b or row.c != 1 }}"
        );
        assert_eq!(
            scriban_to_jinja("{{ if row.x }}yes{{ else if row.y }}maybe{{ else }}no{{ end }}"),
            "{% if row.x %}yes{% elif row.y %}maybe{% else %}no{% endif %}"
        );
        assert_eq!(
            scriban_to_jinja("Bearer {{ config.Cute__Key }}"),
            "Bearer {{ config.Cute__Key }}"
        );
        assert_eq!(
            scriban_to_jinja("{{ row.n | string.replace 'a' 'b' }}"),
            "{{ row.n | replace('a', 'b') }}"
        );
    }

    #[test]
    fn the_cute_documentation_example_maps() {
        let config: MappingConfig = serde_json::from_value(json!({
            "preMapping": [{"varName": "full", "expression": scriban_to_jinja("{{ row.first }} {{ row.last }}")}],
            "filterExpression": scriban_to_jinja("{{ (row.status | string.downcase) == 'active' }}"),
            "mapping": [
                {"fieldName": "name.en", "expression": scriban_to_jinja("{{ var.full }}")},
                {"fieldName": "tags.en[]", "expression": scriban_to_jinja("{{ row.tags | array.join '|' }}")},
            ],
        }))
        .unwrap();
        let m = Mapper::new(&config, &json!({})).unwrap();
        let out = m
            .map(&into_record(
                json!({"first": "Ada", "last": "L", "status": "ACTIVE", "tags": ["x", "y"]}),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"name.en": "Ada L", "tags.en[]": "x|y"})
        );
        assert!(
            m.map(&into_record(json!({"status": "gone"})))
                .unwrap()
                .is_none()
        );
    }
}
