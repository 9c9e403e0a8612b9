//! `[[apps.webhooks]]`: the schema, and the check that each target is plain http, names only
//! events Herald sends, and adds only valid headers Herald does not set itself, so a bad target
//! fails at start-up rather than at the first event.

use std::collections::HashMap;

use herald_pusher::webhooks::RESERVED_HEADERS;
use herald_pusher::WebhookTarget;
use serde::Deserialize;

use super::app::FileApp;
use super::ConfigError;

/// One `[[apps.webhooks]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhook {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
    /// Extra request headers, e.g. `headers = { Authorization = "Bearer ..." }`.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// Webhook events Herald sends.
const WEBHOOK_EVENTS: [&str; 7] =
    ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss", "subscription_count"];

/// Each app's webhook targets by app id (apps without webhooks are left out), validated.
pub(super) fn targets(apps: &[FileApp]) -> Result<HashMap<String, Vec<WebhookTarget>>, ConfigError> {
    let mut webhooks = HashMap::new();
    for app in apps {
        for hook in &app.webhooks {
            if !hook.url.starts_with("http://") {
                return Err(ConfigError::Invalid(format!(
                    "app {:?}: webhook url {:?} must be http:// (put a TLS proxy in front for https)",
                    app.id, hook.url
                )));
            }
            if let Some(bad) = hook.event_types.iter().find(|t| !WEBHOOK_EVENTS.contains(&t.as_str())) {
                return Err(ConfigError::Invalid(format!("app {:?}: unknown webhook event type {bad:?}", app.id)));
            }
            for (name, value) in &hook.headers {
                let valid = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                    && axum::http::HeaderValue::from_str(value).is_ok()
                    && !RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str());
                if !valid {
                    return Err(ConfigError::Invalid(format!(
                        "app {:?}: webhook header {name:?} is not a valid header, or one Herald sets itself ({})",
                        app.id,
                        RESERVED_HEADERS.join(", ")
                    )));
                }
            }
        }
        let targets: Vec<WebhookTarget> = app
            .webhooks
            .iter()
            .map(|h| WebhookTarget {
                url: h.url.clone(),
                event_types: h.event_types.clone(),
                headers: h.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
            .collect();
        if !targets.is_empty() {
            webhooks.insert(app.id.clone(), targets);
        }
    }
    Ok(webhooks)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::super::{Cli, Config};
    use super::*;

    #[test]
    fn webhooks_per_app_are_validated() {
        let ok = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n[[apps.webhooks]]\nurl = \"http://h/hook\"\nevent_types = [\"member_added\"]\n";
        let c = Config::resolve(parse(ok), &Cli::default()).unwrap();
        assert_eq!(
            c.pusher.webhooks["a"],
            vec![WebhookTarget { url: "http://h/hook".into(), event_types: vec!["member_added".into()], headers: vec![] }]
        );
        assert!(Config::resolve(parse(&ok.replace("member_added", "nope")), &Cli::default()).is_err());
        assert!(Config::resolve(parse(&ok.replace("http://", "https://")), &Cli::default()).is_err());
    }
}
