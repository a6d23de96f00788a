#![doc = include_str!("../README.md")]

// The crate's documentation is its README; this comment is for readers of the
// source: endpoints, headers and credentials are rendered here, and the
// engine's mappings convert values with [`template_value`]. The scope always
// holds `env` (the process environment) and `config` (the same map; the name
// `cute` configurations use, e.g. `{{ config.Cute__ApiKey }}`), built by
// `sluicegate_core::template_scope_from_env`.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

use sluicegate_core::{Error, ErrorKind, Result};

/// A set of named, compiled templates sharing one environment.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// An empty set with strict undefined-variable checks and no HTML escaping.
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        Self { env }
    }

    /// Compiles and adds a template; a syntax error is a configuration error.
    pub fn add(&mut self, name: &str, source: &str) -> Result<()> {
        self.env
            .add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|e| template_error("invalid template", name, e))
    }

    /// Renders a template added before with `add`.
    pub fn render(&self, name: &str, scope: &Value) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| template_error("unknown template", name, e))?;
        template
            .render(template_value(scope))
            .map_err(|e| template_error("cannot render template", name, e))
    }
}

/// A JSON value as a template value. Numbers keep their exact text in
/// `serde_json` (every digit of a big integer or a long decimal), which its
/// `Serialize` hands to other formats as a private map; here they become
/// template integers (up to 128 bits) or floats, and only a number no float
/// holds (`1e400`) stays text.
pub fn template_value(value: &Value) -> minijinja::Value {
    use minijinja::Value as V;
    match value {
        Value::Null => V::from(()),
        Value::Bool(b) => V::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                V::from(i)
            } else if let Some(u) = n.as_u64() {
                V::from(u)
            } else {
                let text = n.to_string();
                if let Ok(i) = text.parse::<i128>() {
                    V::from(i)
                } else if let Ok(u) = text.parse::<u128>() {
                    V::from(u)
                } else if let Some(f) = n.as_f64() {
                    V::from(f)
                } else {
                    V::from(text)
                }
            }
        }
        Value::String(s) => V::from(s.as_str()),
        Value::Array(items) => V::from(items.iter().map(template_value).collect::<Vec<_>>()),
        Value::Object(map) => template_value_of_map(map),
    }
}

/// A JSON object as a template value (see [`template_value`]), without
/// copying it into a [`Value`] first.
pub fn template_value_of_map(map: &serde_json::Map<String, Value>) -> minijinja::Value {
    minijinja::Value::from_iter(map.iter().map(|(k, v)| (k.as_str(), template_value(v))))
}

fn template_error(what: &str, name: &str, err: minijinja::Error) -> Error {
    let detail = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    Error::new(ErrorKind::Config, format!("{what} {name}: {detail}"))
}

/// Compiles and renders one template (for values rendered once, like endpoints).
pub fn render_template(name: &str, source: &str, scope: &Value) -> Result<String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_owned());
    }
    let mut templates = Templates::new();
    templates.add(name, source)?;
    templates.render(name, scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_env_values() {
        let scope = json!({"env": {"PORT": "8080"}, "config": {}});
        let url = render_template("endPoint", "http://127.0.0.1:{{ env.PORT }}/x", &scope).unwrap();
        assert_eq!(url, "http://127.0.0.1:8080/x");
    }

    #[test]
    fn undefined_variables_are_errors() {
        let scope = json!({"env": {}, "config": {}});
        let err = render_template("endPoint", "http://{{ env.MISSING }}/", &scope).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("cannot render template endPoint"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_are_config_errors() {
        let err = render_template("h", "{{ env.X ", &json!({})).unwrap_err();
        assert!(err.to_string().starts_with("invalid template h"), "{err}");
    }

    #[test]
    fn plain_strings_pass_through() {
        assert_eq!(render_template("x", "plain", &json!({})).unwrap(), "plain");
    }
}
