//! Property tests of everything that reads bus input or config text: any message bytes, any origin
//! name, any pattern or template text give a mapping, a skip with a reason, or a config error, never a
//! panic; mapped payloads are JSON objects within the size bound.
//!
//! Cases per property: 512, or `PROPTEST_CASES`. Nothing is persisted.

use herald_ingest::mapping::{BusMessage, Rules};
use herald_ingest::pattern::Pattern;
use herald_ingest::template::{Scope, Template};
use herald_ingest::RuleConfig;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { base.cases } else { 512 };
    ProptestConfig { cases, failure_persistence: None, ..base }
}

fn rules() -> Rules {
    let rule = |origin: &str, user: Option<&str>, channel: Option<&str>| RuleConfig {
        origin: Some(origin.into()),
        user: user.map(Into::into),
        channel: channel.map(Into::into),
        event: "{type}".into(),
        rename: [("a".to_string(), "b".to_string())].into(),
        drop: vec!["c".into()],
        keep: Some(vec!["b".into(), "type".into(), "x".into()]),
        set: [("k".to_string(), serde_json::json!(1))].into(),
        origin_device: Some("device_id".into()),
        idempotency_key: Some("{$origin}:{$id}:{id}".into()),
        ..RuleConfig::default()
    };
    Rules::compile(&[rule("user.{user_id}.*", Some("{user_id}"), None), rule("*", None, Some("c-{meta.room}"))]).unwrap()
}

/// JSON-ish messages: objects with the fields rules read, of random types.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any::<String>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!({"room": "r1"})),
        Just(serde_json::json!([1, 2])),
    ];
    let fields =
        prop::collection::vec((prop::sample::select(vec!["type", "a", "c", "x", "id", "meta", "device_id", "user_id"]), value), 0..8);
    prop_oneof![
        fields.prop_map(|f| serde_json::to_vec(&f.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<serde_json::Map<_, _>>()).unwrap()),
        prop::collection::vec(any::<u8>(), 0..200),
        ".{0,200}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_message_maps_or_is_skipped(payload in message(), origin in ".{0,80}", id in ".{0,40}", max in 0usize..500) {
        let rules = rules();
        match rules.map(&BusMessage { origin: &origin, id: &id, payload: &payload }, max) {
            Ok(mapped) => {
                prop_assert!(mapped.data.len() <= max);
                let value: serde_json::Value = serde_json::from_slice(&mapped.data).unwrap();
                prop_assert!(value.is_object());
                prop_assert_eq!(&value["k"], &serde_json::json!(1));
                prop_assert!(value.get("c").is_none());
            }
            Err(skip) => prop_assert!(!skip.reason().is_empty()),
        }
    }

    #[test]
    fn any_pattern_parses_or_fails_and_matching_is_total(pattern in "[a-z.*{}_]{0,20}", origin in "[a-z.]{0,60}") {
        if let Ok(p) = Pattern::parse(&pattern) {
            if let Some(captures) = p.matches(&origin) {
                for (name, value) in captures {
                    prop_assert!(!value.is_empty());
                    prop_assert!(p.captures().any(|c| c == name));
                }
            }
        }
    }

    #[test]
    fn any_template_parses_or_fails_and_renders_bounded(text in ".{0,40}", value in ".{0,600}") {
        if let Ok(t) = Template::parse(&text) {
            let mut fields = serde_json::Map::new();
            fields.insert("a".into(), value.clone().into());
            let scope = Scope { id: "1", origin: "o", captures: &[("b", "x")], fields: &fields };
            if let Ok(out) = t.render(&scope) {
                prop_assert!(out.len() <= herald_ingest::template::MAX_RENDERED);
            }
        }
    }
}
