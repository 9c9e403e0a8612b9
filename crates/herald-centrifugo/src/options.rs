//! Channel options with Centrifugo v5's names and meanings, for channels without a namespace
//! (`channel_options`) and for each namespace (`ns:channel`). Deserialised straight from an app's
//! `[apps.channel_options]` and `[[apps.namespaces]]` tables.

use std::borrow::Cow;
use std::time::Duration;

use herald_core::{HistoryOptions, SubscribeOverrides};
use serde::Deserialize;

use crate::ratelimit::PublishLimits;

/// The separator between a namespace and the rest of a channel name.
pub const NAMESPACE_SEPARATOR: char = ':';
/// The boundary after which a channel name lists the users allowed in it (`dialog#42,43`).
pub const USER_BOUNDARY: char = '#';
/// Separator of user ids after [`USER_BOUNDARY`].
pub const USER_SEPARATOR: char = ',';
/// Longest channel name accepted.
pub const MAX_CHANNEL_LENGTH: usize = 255;

/// Whether `channel` is a name a client, the server API or a peer node may use: not empty, at most
/// [`MAX_CHANNEL_LENGTH`] bytes, no control characters.
pub fn valid_channel(channel: &str) -> bool {
    !channel.is_empty() && channel.len() <= MAX_CHANNEL_LENGTH && !channel.chars().any(char::is_control)
}
/// Largest `history_size` accepted.
pub const MAX_HISTORY_SIZE: usize = 10_000;

/// What clients may do in a channel (Centrifugo v5 option names). Defaults are Centrifugo's: nothing
/// beyond subscribing with a token (or server-side).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelOptions {
    /// Keep presence (who is subscribed) for the channel.
    pub presence: bool,
    /// Send join/leave pushes to subscribers that ask for them.
    pub join_leave: bool,
    /// Send join/leave pushes to every subscriber.
    pub force_push_join_leave: bool,
    /// Publications kept in the channel's history (0: none).
    pub history_size: usize,
    /// How long the history lives after the last publication, e.g. `"300s"`, `"5m"` (0: none).
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Duration,
    /// Every subscription recovers (the client need not ask).
    pub force_recovery: bool,
    /// Subscriptions may ask to recover.
    pub allow_recovery: bool,
    /// Every subscription is positioned (the server tells it of gaps).
    pub force_positioning: bool,
    /// Subscriptions may ask to be positioned.
    pub allow_positioning: bool,
    /// Authenticated clients may subscribe without a subscription token.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe without a subscription token.
    pub allow_subscribe_for_anonymous: bool,
    /// Subscribers may publish.
    pub allow_publish_for_subscriber: bool,
    /// Any client may publish (without being subscribed).
    pub allow_publish_for_client: bool,
    /// Anonymous clients may publish (with one of the two above).
    pub allow_publish_for_anonymous: bool,
    /// Subscribers may ask for presence and presence stats.
    pub allow_presence_for_subscriber: bool,
    /// Any client may ask for presence.
    pub allow_presence_for_client: bool,
    /// Subscribers may ask for history.
    pub allow_history_for_subscriber: bool,
    /// Any client may ask for history.
    pub allow_history_for_client: bool,
    /// Channels of this namespace may list their users after `#` (`dialog#42,43`).
    pub allow_user_limited_channels: bool,
    /// Herald's own: push `{"viewer_count","peak_viewers"}` to the channel's subscribers when its
    /// subscriber count changes ([`crate::viewers`]).
    pub viewer_counts: bool,
    /// Herald's own: client publish rate limits here, instead of the app's `client_publish_limits`.
    pub client_publish_limits: Option<PublishLimits>,
}

impl ChannelOptions {
    /// These options with one subscription's overrides applied (borrowed when it has none).
    pub fn overridden(&self, overrides: &SubscribeOverrides) -> Cow<'_, ChannelOptions> {
        if overrides.is_empty() {
            return Cow::Borrowed(self);
        }
        let mut options = self.clone();
        let pairs = [
            (&mut options.presence, overrides.presence),
            (&mut options.join_leave, overrides.join_leave),
            (&mut options.force_push_join_leave, overrides.force_push_join_leave),
            (&mut options.force_recovery, overrides.force_recovery),
            (&mut options.force_positioning, overrides.force_positioning),
        ];
        for (option, value) in pairs {
            if let Some(value) = value {
                *option = value;
            }
        }
        Cow::Owned(options)
    }

    /// The history this channel keeps, if any.
    pub fn history(&self) -> Option<HistoryOptions> {
        (self.history_size > 0 && !self.history_ttl.is_zero()).then_some(HistoryOptions { size: self.history_size, ttl: self.history_ttl })
    }

    /// Checks the values (history bounds).
    pub fn validate(&self) -> Result<(), String> {
        if self.history_size > MAX_HISTORY_SIZE {
            return Err(format!("history_size must be at most {MAX_HISTORY_SIZE}"));
        }
        if (self.history_size > 0) == self.history_ttl.is_zero() {
            return Err("history_size and history_ttl must be set together".into());
        }
        if self.history_ttl > Duration::from_secs(30 * 86_400) {
            return Err("history_ttl must be at most 30 days".into());
        }
        self.client_publish_limits.as_ref().map_or(Ok(()), PublishLimits::validate)
    }
}

/// One `[[apps.namespaces]]` table: a name and its options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    /// The namespace: channels `name:...` use its options.
    pub name: String,
    /// Its options.
    #[serde(flatten)]
    pub options: ChannelOptions,
}

/// Parses `"300s"`, `"5m"`, `"1h"`, `"250ms"`, `"2d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("invalid duration {text:?} (e.g. \"300s\", \"5m\")"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("invalid duration unit in {text:?} (ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(seconds))
}

pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// The namespace part of a channel name (`""` without one).
pub fn namespace_of(channel: &str) -> &str {
    channel.split_once(NAMESPACE_SEPARATOR).map_or("", |(ns, _)| ns)
}

/// The users a user-limited channel lists (`dialog#42,43` → `["42", "43"]`), if it is one.
pub fn allowed_users(channel: &str) -> Option<impl Iterator<Item = &str>> {
    let (_, users) = channel.rsplit_once(USER_BOUNDARY)?;
    Some(users.split(USER_SEPARATOR).filter(|u| !u.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(namespace_of("chat:room"), "chat");
        assert_eq!(namespace_of("room"), "");
        assert_eq!(allowed_users("dialog#42,43").unwrap().collect::<Vec<_>>(), ["42", "43"]);
        assert!(allowed_users("room").is_none());
    }

    #[test]
    fn options_from_toml_like_json() {
        let o: ChannelOptions = serde_json::from_str(r#"{"history_size":10,"history_ttl":"300s","presence":true}"#).unwrap();
        assert_eq!(o.history(), Some(HistoryOptions { size: 10, ttl: Duration::from_secs(300) }));
        assert!(o.validate().is_ok());
        assert!(serde_json::from_str::<ChannelOptions>(r#"{"nope":1}"#).is_err());
        let bad = ChannelOptions { history_size: 5, ..Default::default() };
        assert!(bad.validate().is_err());
    }
}
