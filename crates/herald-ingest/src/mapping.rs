//! Mapping rules: which bus messages a source relays, and as what. A message (a JSON object) is matched
//! against the rules in order (origin pattern, `when` fields); the first rule that matches turns it into
//! a target (a channel or a user), an event name, the client payload (renamed, dropped, kept-only and
//! set fields), the device to exclude and an idempotency key. A message no rule matches, or that a rule
//! can't be applied to, is a [`Skip`] with a reason: the source counts it and acks it (or dead-letters
//! it), so a bad message never blocks the ones behind it.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::config::{IngestConfigError, RuleConfig};
use crate::pattern::Pattern;
use crate::template::{Scope, Template};

/// Longest user id or channel name produced.
pub const MAX_TARGET: usize = 200;

/// One message as a source read it.
#[derive(Debug, Clone, Copy)]
pub struct BusMessage<'a> {
    /// Its stream, subject or channel (what rules' `origin` patterns match).
    pub origin: &'a str,
    /// The bus's id for it (stream entry id, row id, stream sequence, timetoken).
    pub id: &'a str,
    /// The message: a JSON object.
    pub payload: &'a [u8],
}

/// Where a mapped message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Subscribers of a channel.
    Channel(String),
    /// Every connection signed in as a user.
    User(String),
}

/// What a rule made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// Where it goes.
    pub target: Target,
    /// The event name.
    pub event: String,
    /// The client payload: a JSON object's text.
    pub data: Bytes,
    /// The device whose connections must not receive it.
    pub except_device: Option<String>,
    /// The idempotency key.
    pub idempotency_key: String,
}

/// Why a message is not relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No rule matched.
    Unmatched,
    /// Not JSON, or not a JSON object.
    NotAnObject,
    /// A template needed a field the message lacks (or has as an object, array or null).
    MissingField(String),
    /// The target channel or user id is empty, too long or has characters names can't have.
    BadTarget,
    /// The message or the payload made of it is larger than allowed.
    TooLarge,
}

impl Skip {
    /// The reason's name in metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::Unmatched => "unmatched",
            Skip::NotAnObject => "not_an_object",
            Skip::MissingField(_) => "missing_field",
            Skip::BadTarget => "bad_target",
            Skip::TooLarge => "too_large",
        }
    }
}

#[derive(Debug)]
enum TargetTemplate {
    Channel(Template),
    User(Template),
}

#[derive(Debug)]
struct Rule {
    origin: Pattern,
    when: Vec<(String, String)>,
    target: TargetTemplate,
    event: Template,
    event_names: BTreeMap<String, String>,
    rename: Vec<(String, String)>,
    drop: Vec<String>,
    keep: Option<Vec<String>>,
    set: Vec<(String, Value)>,
    origin_device: Option<String>,
    idempotency_key: Template,
}

/// A source's compiled rules.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// A field value as a `when` condition compares it.
fn as_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

/// A channel name or user id a front can use: printable ASCII without spaces, 1 to [`MAX_TARGET`].
fn valid_target(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TARGET && name.bytes().all(|b| b.is_ascii_graphic())
}

impl Rules {
    /// Compiles `rules`; errors name the rule (1-based).
    pub fn compile(rules: &[RuleConfig]) -> Result<Rules, IngestConfigError> {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(r).map_err(|e| IngestConfigError::Invalid(format!("rule {}: {e}", i + 1))))
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules: compiled })
    }

    /// Maps one message; `max_data` bounds the payload produced.
    pub fn map(&self, message: &BusMessage<'_>, max_data: usize) -> Result<Mapped, Skip> {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(message.payload) else {
            return Err(Skip::NotAnObject);
        };
        for rule in &self.rules {
            let Some(captures) = rule.origin.matches(message.origin) else { continue };
            let applies =
                rule.when.iter().all(|(field, want)| fields.get(field).and_then(as_text).is_some_and(|have| have == want.as_str()));
            if applies {
                return rule.apply(message, &captures, fields, max_data);
            }
        }
        Err(Skip::Unmatched)
    }
}

impl Rule {
    fn compile(r: &RuleConfig) -> Result<Rule, IngestConfigError> {
        let bad = |why: &str| IngestConfigError::Invalid(why.to_owned());
        let target = match (&r.channel, &r.user) {
            (Some(channel), None) => TargetTemplate::Channel(Template::parse(channel)?),
            (None, Some(user)) => TargetTemplate::User(Template::parse(user)?),
            _ => return Err(bad("give exactly one of channel or user")),
        };
        let mut targets: Vec<&String> = r.rename.values().collect();
        targets.sort();
        if targets.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("two fields renamed to the same name"));
        }
        Ok(Rule {
            origin: r.origin.as_deref().map_or_else(|| Ok(Pattern::any()), Pattern::parse)?,
            when: r.when.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            target,
            event: Template::parse(&r.event)?,
            event_names: r.event_names.clone(),
            rename: r.rename.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            drop: r.drop.clone(),
            keep: r.keep.clone(),
            set: r.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            origin_device: r.origin_device.clone(),
            idempotency_key: Template::parse(r.idempotency_key.as_deref().unwrap_or("{$origin}:{$id}"))?,
        })
    }

    fn apply(
        &self,
        message: &BusMessage<'_>,
        captures: &[(&str, &str)],
        fields: Map<String, Value>,
        max_data: usize,
    ) -> Result<Mapped, Skip> {
        let scope = Scope { id: message.id, origin: message.origin, captures, fields: &fields };
        let missing = |m: crate::template::Missing| Skip::MissingField(m.0);
        let target = match &self.target {
            TargetTemplate::Channel(t) => Target::Channel(t.render(&scope).map_err(missing)?),
            TargetTemplate::User(t) => Target::User(t.render(&scope).map_err(missing)?),
        };
        let (Target::Channel(name) | Target::User(name)) = &target;
        if !valid_target(name) {
            return Err(Skip::BadTarget);
        }
        let event = self.event.render(&scope).map_err(missing)?;
        let event = self.event_names.get(&event).cloned().unwrap_or(event);
        if !valid_target(&event) {
            return Err(Skip::BadTarget);
        }
        let idempotency_key = self.idempotency_key.render(&scope).map_err(missing)?;
        let except_device = match &self.origin_device {
            // A message without the field came from no particular device: everyone gets it.
            Some(field) => fields.get(field).and_then(as_text).map(|d| d.into_owned()).filter(|d| valid_target(d)),
            None => None,
        };
        let mut payload = fields;
        for (from, to) in &self.rename {
            if let Some(value) = payload.remove(from) {
                payload.insert(to.clone(), value);
            }
        }
        for field in &self.drop {
            payload.remove(field);
        }
        if let Some(keep) = &self.keep {
            payload.retain(|name, _| keep.contains(name));
        }
        for (name, value) in &self.set {
            payload.insert(name.clone(), value.clone());
        }
        let data = serde_json::to_vec(&Value::Object(payload)).map_err(|_| Skip::NotAnObject)?;
        if data.len() > max_data {
            return Err(Skip::TooLarge);
        }
        Ok(Mapped { target, event, data: Bytes::from(data), except_device, idempotency_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The seeds' rules, as in `examples/relay/seed-sync.toml`.
    pub(crate) fn seed_rules() -> Rules {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/relay/seed-sync.toml")).unwrap();
        let file: toml::Value = toml::from_str(&text).unwrap();
        let sources: Vec<crate::config::SourceConfig> = file["sources"].clone().try_into().unwrap();
        sources[0].validate().unwrap()
    }

    fn map(rules: &Rules, origin: &str, msg: Value) -> Result<(Mapped, Value), Skip> {
        let payload = serde_json::to_vec(&msg).unwrap();
        let mapped = rules.map(&BusMessage { origin, id: "1-0", payload: &payload }, 10_000)?;
        let data = serde_json::from_slice(&mapped.data).unwrap();
        Ok((mapped, data))
    }

    #[test]
    fn the_seed_messages_map_to_the_client_payloads() {
        let rules = seed_rules();
        let ts = json!({"seconds": 1700000000, "nanos": 5});
        let (m, data) = map(
            &rules,
            "sync",
            json!({"type":"progress_update","user_id":"u1","device_id":"device-a","content_id":"c1",
                   "position_seconds":1234,"duration_seconds":7200,"timestamp":ts}),
        )
        .unwrap();
        assert_eq!(
            (m.target, m.event.as_str(), m.except_device.as_deref()),
            (Target::User("u1".into()), "progress_update", Some("device-a"))
        );
        assert_eq!(data, json!({"type":"progress_update","content_id":"c1","position":1234,"duration":7200}));
        assert_eq!(m.idempotency_key, "sync:1-0");

        let (m, data) = map(
            &rules,
            "sync",
            json!({"type":"watchlist_update","user_id":"u1","device_id":"device-b","content_id":"c2",
                   "operation":"add","unique_tag":"t-1","timestamp":ts}),
        )
        .unwrap();
        assert_eq!((m.event.as_str(), m.except_device.as_deref()), ("watchlist_update", Some("device-b")));
        assert_eq!(data, json!({"type":"watchlist_update","content_id":"c2","action":"add"}));

        let (m, data) = map(
            &rules,
            "sync",
            json!({"type":"device_handoff","user_id":"u1","device_id":"device-a","command":"play",
                   "target_device":"device-c","timestamp":ts}),
        )
        .unwrap();
        assert_eq!(m.event, "device_command");
        assert_eq!(data, json!({"type":"device_command","command":"play","target_device":"device-c"}));
    }

    #[test]
    fn unmatched_and_invalid_messages_are_skipped_with_a_reason() {
        let rules = seed_rules();
        assert_eq!(map(&rules, "sync", json!({"type":"other","user_id":"u1"})).unwrap_err(), Skip::Unmatched);
        assert_eq!(map(&rules, "sync", json!([1, 2])).unwrap_err(), Skip::NotAnObject);
        assert_eq!(rules.map(&BusMessage { origin: "sync", id: "1", payload: b"{not json" }, 100).unwrap_err(), Skip::NotAnObject);
        assert_eq!(map(&rules, "sync", json!({"type":"progress_update"})).unwrap_err(), Skip::MissingField("user_id".into()));
        assert_eq!(map(&rules, "sync", json!({"type":"progress_update","user_id":""})).unwrap_err(), Skip::BadTarget);
        assert_eq!(map(&rules, "sync", json!({"type":"progress_update","user_id":"a b"})).unwrap_err(), Skip::BadTarget);
        let big = json!({"type":"progress_update","user_id":"u","content_id":"x".repeat(20_000)});
        assert_eq!(map(&rules, "sync", big).unwrap_err(), Skip::TooLarge);
    }

    #[test]
    fn origin_captures_channels_and_fixed_events() {
        let rule = RuleConfig {
            origin: Some("user.{user_id}.sync".into()),
            channel: Some("private-user.{user_id}".into()),
            event: "{kind}".into(),
            idempotency_key: Some("{event_id}".into()),
            ..RuleConfig::default()
        };
        let rules = Rules::compile(&[rule]).unwrap();
        let (m, data) = map(&rules, "user.u7.sync", json!({"kind": "k", "event_id": 42, "x": 1})).unwrap();
        assert_eq!((m.target, m.event.as_str(), m.idempotency_key.as_str()), (Target::Channel("private-user.u7".into()), "k", "42"));
        assert_eq!((data, m.except_device), (json!({"kind":"k","event_id":42,"x":1}), None));
        assert_eq!(map(&rules, "user.u7.devices", json!({"kind": "k"})).unwrap_err(), Skip::Unmatched);
    }

    #[test]
    fn bad_rules_are_refused() {
        let both = RuleConfig { channel: Some("a".into()), user: Some("b".into()), event: "e".into(), ..RuleConfig::default() };
        assert!(Rules::compile(&[both]).unwrap_err().to_string().starts_with("rule 1:"));
        let none = RuleConfig { event: "e".into(), ..RuleConfig::default() };
        assert!(Rules::compile(&[none]).is_err());
        let clash = RuleConfig {
            user: Some("{u}".into()),
            event: "e".into(),
            rename: [("a".to_string(), "c".to_string()), ("b".to_string(), "c".to_string())].into(),
            ..RuleConfig::default()
        };
        assert!(Rules::compile(&[clash]).is_err());
    }
}
