//! Turning engine transitions into the Pusher events subscribers see.

use std::fmt::Write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{ChannelChange, ChannelEvent, Engine, EngineListener, Hub, Member, SocketId, Transition};
use parking_lot::Mutex;

use crate::app::Apps;
use crate::channel::{Access, ChannelKind};
use crate::webhooks::Webhooks;
use serde_json::json;

/// Member info as stored in the engine: the raw JSON of `user_info`, or `null` when there was none.
pub(crate) fn info_json(info: &[u8]) -> &str {
    match std::str::from_utf8(info) {
        Ok(text) if !text.is_empty() => text,
        _ => "null",
    }
}

/// The `data` of `pusher_internal:subscription_succeeded` on a presence channel.
pub(crate) fn presence_data(members: &[Member]) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let mut ids = String::new();
    let mut hash = String::new();
    for (i, m) in members.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let id = quote(&m.user_id);
        let _ = write!(ids, "{sep}{id}");
        let _ = write!(hash, "{sep}{id}:{}", info_json(&m.info));
    }
    format!(r#"{{"presence":{{"ids":[{ids}],"hash":{{{hash}}},"count":{}}}}}"#, members.len())
}

/// Channels with more subscribers than this get their `subscription_count` coalesced (at most one per
/// [`COUNT_INTERVAL`]): sending every change to every subscriber would cost O(n²) frames while a big
/// live stream fills up. Smaller channels get every change at once.
pub(crate) const COUNT_IMMEDIATE_UP_TO: usize = 100;
/// How often coalesced counts are sent.
pub(crate) const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// An app id and one of its channels.
type AppChannel = (Arc<str>, Arc<str>);

/// Announces channel changes: Pusher events to subscribers (on every node, through the hub) and
/// webhooks. Shared by every session and by the engine's own announcements (reaped nodes).
pub(crate) struct Announcer {
    pub(crate) webhooks: Arc<Webhooks>,
    /// Which apps want subscription counts.
    apps: Arc<Apps>,
    /// Latest count of big channels waiting for the next flush; bounded by the number of channels.
    deferred: Mutex<HashMap<AppChannel, usize>>,
}

impl Announcer {
    pub(crate) fn new(webhooks: Arc<Webhooks>, apps: Arc<Apps>) -> Announcer {
        Announcer { webhooks, apps, deferred: Mutex::new(HashMap::new()) }
    }

    /// Queues the webhooks of a change and sends the new subscription count if the app wants it.
    /// (Member added/removed events reach subscribers from the engine itself, in every front's form.)
    pub(crate) fn announce(&self, hub: &Hub, change: &ChannelChange) {
        let channel = &*change.channel;
        let app = hub.app().id.as_str();
        let hooks = &self.webhooks;
        let hooked = hooks.enabled(app);
        if hooked {
            for t in &change.transitions {
                let event = match t {
                    Transition::Occupied => json!({ "name": "channel_occupied", "channel": channel }),
                    Transition::Vacated => json!({ "name": "channel_vacated", "channel": channel }),
                    Transition::MemberAdded(m) => json!({ "name": "member_added", "channel": channel, "user_id": &*m.user_id }),
                    Transition::MemberRemoved { user_id } => {
                        json!({ "name": "member_removed", "channel": channel, "user_id": &**user_id })
                    }
                    _ => continue,
                };
                hooks.emit(app, event);
            }
        }
        if !hooked && !self.counts(app) {
            return;
        }
        let key = (Arc::from(app), change.channel.clone());
        if change.subscribers > COUNT_IMMEDIATE_UP_TO {
            self.deferred.lock().insert(key, change.subscribers);
        } else {
            self.deferred.lock().remove(&key);
            self.send_count(hub, channel, change.subscribers);
        }
    }

    /// The count to the channel's subscribers (apps that enable it; not presence channels, which have
    /// member counts) and to webhooks.
    fn send_count(&self, hub: &Hub, channel: &str, subscribers: usize) {
        let app = hub.app().id.as_str();
        if self.webhooks.enabled(app) {
            self.webhooks.emit(app, json!({ "name": "subscription_count", "channel": channel, "subscription_count": subscribers }));
        }
        let counted = subscribers > 0 && ChannelKind::of(channel).access != Access::Presence;
        if counted && self.counts(app) {
            hub.publish_event(channel, &ChannelEvent::Count { subscribers }, None);
        }
    }

    /// Whether app `app_id` sends subscription counts to subscribers.
    fn counts(&self, app_id: &str) -> bool {
        self.apps.by_id(app_id).is_some_and(|app| app.enable_subscription_count)
    }

    /// Sends the coalesced counts.
    pub(crate) fn flush(&self, engine: &Engine) {
        let due = std::mem::take(&mut *self.deferred.lock());
        for ((app, channel), subscribers) in due {
            if let Some(hub) = engine.by_id(&app) {
                self.send_count(hub, &channel, subscribers);
            }
        }
    }
}

impl EngineListener for Announcer {
    fn on_change(&self, hub: &Hub, change: &ChannelChange, _actor: Option<SocketId>) {
        self.announce(hub, change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    #[test]
    fn presence_payload_shape() {
        let members = vec![
            Member { user_id: Arc::from("1"), info: Bytes::from(r#"{"name":"A"}"#) },
            Member { user_id: Arc::from("2"), info: Bytes::new() },
        ];
        let v: serde_json::Value = serde_json::from_str(&presence_data(&members)).unwrap();
        assert_eq!(v["presence"]["count"], 2);
        assert_eq!(v["presence"]["ids"], serde_json::json!(["1", "2"]));
        assert_eq!(v["presence"]["hash"]["1"]["name"], "A");
        assert!(v["presence"]["hash"]["2"].is_null());
        assert_eq!(presence_data(&[]), r#"{"presence":{"ids":[],"hash":{},"count":0}}"#);
    }
}
