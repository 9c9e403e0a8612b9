//! Publishing an event to channels: shared by the HTTP API and the in-process Rust API.
//!
//! Validation happens here once (names, sizes, encrypted-channel rules); each channel's frame is encoded
//! once and the same bytes go to every subscriber.

use bytes::Bytes;
use std::time::Duration;

use herald_core::{DataKind, HistoryError, HistoryOptions, Hub, Publication, SocketId};

use crate::channel::{is_valid_name_within, Access, ChannelKind, USER_CHANNEL_PREFIX};

/// Channels one publish may name by default (Pusher's; per app: `AppLimits::max_channels_per_publish`).
pub const MAX_CHANNELS_PER_EVENT: usize = 100;
/// Longest event name by default (Pusher's; per app: `AppLimits::max_event_name`).
pub const MAX_EVENT_NAME: usize = 200;

/// One event to publish.
#[derive(Debug, Clone)]
pub struct Trigger<'a> {
    /// Event name.
    pub name: &'a str,
    /// Event data, relayed verbatim as a JSON string.
    pub data: &'a str,
    /// Target channels (including `#server-to-user-{id}`).
    pub channels: &'a [String],
    /// The connection that must not receive it (the originating device).
    pub socket_id: Option<SocketId>,
}

/// Why a publish was refused. Nothing was delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No channel was named.
    #[error("no channels given")]
    NoChannels,
    /// More channels than the app allows per publish ([`MAX_CHANNELS_PER_EVENT`] by default).
    #[error("too many channels: {0} (more than the app's max_channels_per_publish)")]
    TooManyChannels(usize),
    /// A channel name is not valid.
    #[error("invalid channel name {0:?}")]
    InvalidChannel(String),
    /// The event name is empty or longer than the app allows ([`MAX_EVENT_NAME`] by default).
    #[error("invalid event name (1 to max_event_name bytes; {MAX_EVENT_NAME} unless the app says otherwise)")]
    InvalidName,
    /// `data` is larger than the app allows.
    #[error("event data is {size} bytes, limit {limit}")]
    DataTooLarge {
        /// Size of the data.
        size: usize,
        /// The app's limit.
        limit: usize,
    },
    /// An encrypted channel was sent something that is not a `{nonce, ciphertext}` envelope.
    #[error("data for encrypted channel {0:?} must be an encrypted envelope with nonce and ciphertext")]
    Plaintext(String),
    /// The channel keeps history and its store could not take the event (nothing was delivered).
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Encrypted channels must be triggered one at a time (each has its own key).
    #[error("encrypted channels cannot be triggered together with other channels")]
    EncryptedMulti,
}

/// Checks that `data` is an end-to-end encrypted envelope, so plaintext never reaches subscribers.
fn is_encrypted_envelope(data: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope {
        nonce: String,
        ciphertext: String,
    }
    serde_json::from_str::<Envelope>(data).is_ok_and(|e| !e.nonce.is_empty() && !e.ciphertext.is_empty())
}

/// Validates a trigger against the app's limits without delivering anything.
pub fn validate(hub: &Hub, t: &Trigger<'_>) -> Result<(), PublishError> {
    if t.channels.is_empty() {
        return Err(PublishError::NoChannels);
    }
    let limits = &hub.app().limits;
    if t.channels.len() > limits.max_channels_per_publish {
        return Err(PublishError::TooManyChannels(t.channels.len()));
    }
    if t.name.is_empty() || t.name.len() > limits.max_event_name {
        return Err(PublishError::InvalidName);
    }
    let limit = limits.max_event_size;
    if t.data.len() > limit {
        return Err(PublishError::DataTooLarge { size: t.data.len(), limit });
    }
    for channel in t.channels {
        if !is_valid_name_within(channel, limits.max_channel_name) {
            return Err(PublishError::InvalidChannel(channel.chars().take(200).collect()));
        }
        if ChannelKind::of(channel).access == Access::Encrypted {
            if t.channels.len() > 1 {
                return Err(PublishError::EncryptedMulti);
            }
            if !is_encrypted_envelope(t.data) {
                return Err(PublishError::Plaintext(channel.clone()));
            }
        }
    }
    Ok(())
}

/// What a Pusher `cache-` channel keeps: its last event, replayed to new subscribers for 30 minutes
/// (Pusher's cache channels), as a channel history of size 1.
pub const CACHE_HISTORY: HistoryOptions = HistoryOptions { size: 1, ttl: Duration::from_secs(30 * 60) };

/// The history `channel` keeps: the app's rules first, then Pusher's cache channels.
pub fn history_options(hub: &Hub, channel: &str) -> Option<HistoryOptions> {
    hub.history_options(channel).or_else(|| ChannelKind::of(channel).cache.then_some(CACHE_HISTORY))
}

/// Validates and delivers a trigger. Returns how many connections on this node it was queued to
/// (publications on channels with history are delivered as they come back from the history, in offset
/// order, and not counted here).
pub async fn trigger(hub: &Hub, t: &Trigger<'_>) -> Result<usize, PublishError> {
    validate(hub, t)?;
    let mut delivered = 0;
    let data = Bytes::copy_from_slice(t.data.as_bytes());
    for channel in t.channels {
        let mut publication = Publication::new(channel.as_str(), t.name, data.clone(), DataKind::Text);
        publication.except = t.socket_id;
        if let Some(user) = channel.strip_prefix(USER_CHANNEL_PREFIX) {
            delivered += hub.publish_to_user(user, &publication);
            continue;
        }
        match history_options(hub, channel) {
            Some(options) => match hub.publish_with_history(&publication, options).await {
                Ok(_) => {}
                Err(HistoryError::TooManyChannels { .. }) => {
                    // At the app's cap of channels with history: published, just not kept.
                    metrics::counter!("herald_history_skipped_total", "app" => hub.app().id.clone()).increment(1);
                    delivered += hub.publish(&publication);
                }
                Err(e) => return Err(PublishError::History(e)),
            },
            None => delivered += hub.publish(&publication),
        }
    }
    metrics::counter!("herald_publishes_total").increment(1);
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::App;

    fn t<'a>(channels: &'a [String], data: &'a str) -> Trigger<'a> {
        Trigger { name: "e", data, channels, socket_id: None }
    }

    #[test]
    fn validates_channels_names_sizes_and_encryption() {
        let hub = Hub::new(App::dev());
        let one = vec!["news".to_string()];
        assert_eq!(validate(&hub, &t(&one, "{}")), Ok(()));
        assert_eq!(validate(&hub, &t(&[], "{}")), Err(PublishError::NoChannels));
        let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        assert_eq!(validate(&hub, &t(&many, "{}")), Err(PublishError::TooManyChannels(101)));
        let bad = vec!["bad name".to_string()];
        assert!(matches!(validate(&hub, &t(&bad, "{}")), Err(PublishError::InvalidChannel(_))));
        let big = "x".repeat(10 * 1024 + 1);
        assert!(matches!(validate(&hub, &t(&one, &big)), Err(PublishError::DataTooLarge { .. })));
        let enc = vec!["private-encrypted-a".to_string()];
        assert!(matches!(validate(&hub, &t(&enc, r#"{"secret":"plain"}"#)), Err(PublishError::Plaintext(_))));
        assert_eq!(validate(&hub, &t(&enc, r#"{"nonce":"bm9uY2U=","ciphertext":"Y2lwaGVy"}"#)), Ok(()));
        let mixed = vec!["private-encrypted-a".to_string(), "news".to_string()];
        assert_eq!(validate(&hub, &t(&mixed, r#"{"nonce":"a","ciphertext":"b"}"#)), Err(PublishError::EncryptedMulti));
        let no_name = Trigger { name: "", ..t(&one, "{}") };
        assert_eq!(validate(&hub, &no_name), Err(PublishError::InvalidName));
    }

    #[tokio::test]
    async fn caches_last_event_of_cache_channels() {
        let hub = Hub::new(App::dev());
        let ch = vec!["cache-score".to_string()];
        assert_eq!(trigger(&hub, &t(&ch, "1")).await, Ok(0));
        assert_eq!(trigger(&hub, &t(&ch, "2")).await, Ok(0));
        let kept = hub.history("cache-score", None, 10).await.unwrap().publications;
        assert_eq!(kept.len(), 1, "a cache channel keeps its last event");
        assert_eq!((&*kept[0].channel, &*kept[0].event, &kept[0].data[..]), ("cache-score", "e", &b"2"[..]));
    }
}
