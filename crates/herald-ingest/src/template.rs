//! Templates for what a rule produces from a message: a target channel (`stream-{stream_id}`), a user
//! (`{user_id}`), an event name (`{type}`), an idempotency key (`{$origin}:{$id}`). A `{name}` is
//! filled from the origin pattern's captures first, then from the message's top-level fields (or a
//! dotted path into nested objects: `{meta.user}`); strings as they are, numbers and booleans as
//! written. `{$id}` is the bus message's id and `{$origin}` its stream, subject or channel.

use serde_json::{Map, Value};

use crate::config::IngestConfigError;
use crate::pattern::is_name;

/// Longest value a template may produce; longer results are refused (the message is invalid).
pub const MAX_RENDERED: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{$id}`: the bus message id.
    Id,
    /// `{$origin}`: the stream, subject or channel.
    Origin,
    /// A capture or a field path.
    Var(Vec<String>),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is filled from.
pub struct Scope<'a> {
    /// The bus message's id.
    pub id: &'a str,
    /// Its stream, subject or channel.
    pub origin: &'a str,
    /// Captures of the rule's origin pattern.
    pub captures: &'a [(&'a str, &'a str)],
    /// The message (a JSON object).
    pub fields: &'a Map<String, Value>,
}

/// A template variable had no value (missing, or an object, array or null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl Template {
    /// Compiles `text`.
    pub fn parse(text: &str) -> Result<Template, IngestConfigError> {
        let bad = |why: &str| IngestConfigError::Invalid(format!("template {text:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or_else(|| bad("unclosed {"))?;
                let name = &after[..end];
                let part = match name {
                    "$id" => Part::Id,
                    "$origin" => Part::Origin,
                    _ => {
                        let path: Vec<String> = name.split('.').map(str::to_owned).collect();
                        if !path.iter().all(|p| is_name(p)) {
                            return Err(bad("a variable is {name}, {a.b}, {$id} or {$origin}"));
                        }
                        Part::Var(path)
                    }
                };
                parts.push(part);
                rest = &after[end + 1..];
            } else if rest.starts_with('}') {
                return Err(bad("unopened }"));
            } else {
                let end = rest.find(['{', '}']).unwrap_or(rest.len());
                parts.push(Part::Literal(rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
        if parts.is_empty() {
            return Err(bad("empty"));
        }
        Ok(Template { parts })
    }

    /// The template as one variable's name, if it is just `{name}` (e.g. `{user_id}`).
    pub fn is_var(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Var(_)])
    }

    /// Fills the template in; a variable without a value is [`Missing`].
    pub fn render(&self, scope: &Scope<'_>) -> Result<String, Missing> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Id => out.push_str(scope.id),
                Part::Origin => out.push_str(scope.origin),
                Part::Var(path) => {
                    let captured = (path.len() == 1).then(|| scope.captures.iter().find(|(n, _)| *n == path[0])).flatten();
                    match captured {
                        Some((_, value)) => out.push_str(value),
                        None => push_field(&mut out, scope.fields, path).ok_or_else(|| Missing(path.join(".")))?,
                    }
                }
            }
            if out.len() > MAX_RENDERED {
                return Err(Missing(format!("(longer than {MAX_RENDERED} bytes)")));
            }
        }
        Ok(out)
    }
}

fn push_field(out: &mut String, fields: &Map<String, Value>, path: &[String]) -> Option<()> {
    let (last, parents) = path.split_last()?;
    let mut object = fields;
    for name in parents {
        object = object.get(name)?.as_object()?;
    }
    match object.get(last)? {
        Value::String(s) => out.push_str(s),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, fields: Value) -> Result<String, Missing> {
        let fields = fields.as_object().unwrap().clone();
        let scope = Scope { id: "1-0", origin: "user.u9.sync", captures: &[("user_id", "u9")], fields: &fields };
        Template::parse(t).unwrap().render(&scope)
    }

    #[test]
    fn fills_captures_fields_and_specials() {
        let msg = serde_json::json!({"user_id": "u1", "n": 3, "ok": true, "meta": {"room": "r"}, "o": {}});
        assert_eq!(render("{user_id}", msg.clone()).unwrap(), "u9", "captures first");
        assert_eq!(render("stream-{n}-{ok}", msg.clone()).unwrap(), "stream-3-true");
        assert_eq!(render("{meta.room}", msg.clone()).unwrap(), "r");
        assert_eq!(render("{$origin}:{$id}", msg.clone()).unwrap(), "user.u9.sync:1-0");
        assert_eq!(render("{o}", msg.clone()), Err(Missing("o".into())));
        assert_eq!(render("{nope}", msg.clone()), Err(Missing("nope".into())));
        let long = serde_json::json!({"s": "x".repeat(MAX_RENDERED + 1)});
        assert!(render("{s}", long).is_err());
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["", "{", "a}", "{}", "{a..b}", "{$nope}", "{1}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
