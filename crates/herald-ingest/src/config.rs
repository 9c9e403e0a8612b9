//! What `[[sources]]` tables say: one bus source each, with its connection settings (one of
//! `[sources.redis_streams]`, `[sources.postgres]`, `[sources.nats]`, `[sources.pubnub]`) and its
//! mapping rules (`[[sources.rules]]`). Deserialized straight from Herald's TOML config; checked by
//! [`SourceConfig::validate`] at start-up so a bad rule fails there, naming the source.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::mapping::Rules;

/// A configuration problem, reported at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestConfigError {
    /// A value is out of range, inconsistent, or does not parse.
    #[error("{0}")]
    Invalid(String),
}

/// One `[[sources]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The source's name (in metrics, logs and `/up`); unique.
    pub name: String,
    /// The app whose connections receive what it relays.
    pub app: String,
    /// Largest bus message read, in bytes (64 KiB by default); larger ones are skipped as invalid.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// A Redis Streams consumer group.
    pub redis_streams: Option<RedisStreamsConfig>,
    /// A PostgreSQL outbox table.
    pub postgres: Option<PostgresConfig>,
    /// A NATS JetStream durable pull consumer.
    pub nats: Option<NatsConfig>,
    /// PubNub subscribe (v2 long-poll).
    pub pubnub: Option<PubNubConfig>,
    /// Mapping rules, tried in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_max_message() -> usize {
    64 * 1024
}

/// A Redis Streams source (`[sources.redis_streams]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamsConfig {
    /// Redis URL.
    pub url: String,
    /// Stream keys to consume.
    pub streams: Vec<String>,
    /// Consumer group (created with `MKSTREAM` if missing).
    pub group: String,
    /// This node's consumer name in the group [default: `herald-{hostname}-{pid}`]. A stable name lets
    /// a restarted node take its own pending entries back at once; otherwise another consumer claims
    /// them after `claim_idle`.
    pub consumer: Option<String>,
    /// Where a newly created group starts: `$` (new entries only, the default) or `0` (the whole
    /// stream).
    #[serde(default = "dollar")]
    pub start: String,
    /// The stream entry's field holding the message [default: `data`].
    #[serde(default = "data_field")]
    pub field: String,
    /// Entries read per call (1 to 10 000) [default: 100].
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Seconds a read waits for new entries [default: 2].
    #[serde(default = "two")]
    pub block: f64,
    /// Seconds an entry stays pending (read, not acked) before another consumer claims it [default: 30].
    #[serde(default = "thirty")]
    pub claim_idle: f64,
    /// Seconds each other Redis call may take [default: 5].
    #[serde(default = "five")]
    pub timeout: f64,
    /// A stream that unmatched and invalid entries are copied to (with the reason) before they are
    /// acked; without it they are only counted, logged and acked.
    pub dead_letter: Option<String>,
    /// The dead-letter stream's approximate length cap (`MAXLEN ~`) [default: 100 000].
    #[serde(default = "default_dead_letter_len")]
    pub dead_letter_maxlen: usize,
}

/// A PostgreSQL outbox source (`[sources.postgres]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (`host=... user=... dbname=...` or `postgresql://...`).
    pub url: String,
    /// The outbox table [default: `herald_outbox`]: `id bigserial`, `channel text` (the origin the
    /// rules match), `payload text|jsonb`, `created_at timestamptz` (see the README for the DDL).
    #[serde(default = "outbox_table")]
    pub table: String,
    /// `LISTEN` channel the backend `NOTIFY`s after inserting [default: `herald_outbox`].
    #[serde(default = "outbox_table")]
    pub notify: String,
    /// Rows claimed per transaction (1 to 10 000) [default: 100].
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Seconds between polls when no notification arrives [default: 1].
    #[serde(default = "one")]
    pub poll: f64,
    /// Seconds each statement may take [default: 5].
    #[serde(default = "five")]
    pub timeout: f64,
}

/// A NATS JetStream source (`[sources.nats]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream.
    pub stream: String,
    /// Durable consumer name (shared by every node: each message goes to one of them).
    pub durable: String,
    /// Subject filter of the consumer [default: every subject of the stream].
    pub filter: Option<String>,
    /// Messages fetched per pull (1 to 10 000) [default: 100].
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Seconds before an unacked message is redelivered [default: 30].
    #[serde(default = "thirty")]
    pub ack_wait: f64,
    /// Seconds each request may take [default: 5].
    #[serde(default = "five")]
    pub timeout: f64,
}

/// A PubNub source (`[sources.pubnub]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubNubConfig {
    /// Origin, e.g. `http://ps.pndsn.com` (`http://` only: put a TLS proxy in front for https).
    pub origin: String,
    /// Subscribe key.
    pub subscribe_key: String,
    /// Channels (wildcards such as `user.*` need the key's wildcard subscribe enabled).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Channel groups.
    #[serde(default)]
    pub channel_groups: Vec<String>,
    /// The `uuid` the subscriber announces [default: `herald`].
    #[serde(default = "herald")]
    pub uuid: String,
    /// Redis URL of the leader lock: one node in the cluster subscribes.
    pub lock_url: String,
    /// The lock's key [default: `herald:ingest:{source name}:leader`].
    pub lock_key: Option<String>,
    /// Seconds the lock lives without renewal [default: 10].
    #[serde(default = "ten")]
    pub lock_ttl: f64,
    /// Seconds a long-poll may take before it is retried [default: 310].
    #[serde(default = "default_long_poll")]
    pub timeout: f64,
    /// Interest: subscribe only to these channels of the users connected to the cluster, `{user}`
    /// standing for the user id (the seed's `subscribe_user_channel`, e.g. `user.{user}.sync`), in
    /// addition to `channels` and `channel_groups`. The list follows users as they sign in and leave
    /// (the long-poll restarts with the new list from the same timetoken).
    #[serde(default)]
    pub user_channels: Vec<String>,
    /// Most users subscribed for by `user_channels` (1 to 10 000) [default: 1000]. Over it, the users
    /// first in id order are kept, the rest are not subscribed for (logged, and counted in
    /// `herald_ingest_interest_dropped_users`): use a wildcard channel or channel groups at that scale
    /// (each user adds its channels to the subscribe URL).
    #[serde(default = "default_max_users")]
    pub max_users: usize,
    /// Seconds between refreshes of the connected users (every node writes its own to Redis, the
    /// leader reads them all) [default: 1]. A node's users expire after three refreshes without it.
    #[serde(default = "one")]
    pub interest_refresh: f64,
}

/// One `[[sources.rules]]` table: when it applies, and what it makes of a message.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Pattern over the stream, subject or channel (`*`, `{capture}`) [default: any].
    pub origin: Option<String>,
    /// Fields that must equal these values (strings; numbers and booleans compare as written).
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// Target channel template, e.g. `stream-{stream_id}`.
    pub channel: Option<String>,
    /// Target user template, e.g. `{user_id}`: every connection signed in as that user.
    pub user: Option<String>,
    /// Event name template: fixed (`progress_update`) or from a field (`{type}`).
    pub event: String,
    /// Event names renamed after the template is filled (`device_handoff = "device_command"`).
    #[serde(default)]
    pub event_names: BTreeMap<String, String>,
    /// Fields renamed, old name = new name (`position_seconds = "position"`).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Fields dropped (after renaming).
    #[serde(default)]
    pub drop: Vec<String>,
    /// If given, only these fields are kept (after renaming and dropping).
    pub keep: Option<Vec<String>>,
    /// Fields set to fixed values last (`type = "device_command"`).
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
    /// The field naming the device the change came from; that device's connections don't get it.
    pub origin_device: Option<String>,
    /// Idempotency key template [default: `{$origin}:{$id}`, the bus message's own id]; a redelivered
    /// message with the same key is acked and not delivered again.
    pub idempotency_key: Option<String>,
}

fn dollar() -> String {
    "$".into()
}
fn data_field() -> String {
    "data".into()
}
fn outbox_table() -> String {
    "herald_outbox".into()
}
fn herald() -> String {
    "herald".into()
}
fn default_batch() -> usize {
    100
}
fn default_dead_letter_len() -> usize {
    100_000
}
fn one() -> f64 {
    1.0
}
fn two() -> f64 {
    2.0
}
fn five() -> f64 {
    5.0
}
fn default_max_users() -> usize {
    1000
}
fn ten() -> f64 {
    10.0
}
fn thirty() -> f64 {
    30.0
}
fn default_long_poll() -> f64 {
    310.0
}

/// Most entries/rows/messages one read may take.
pub const MAX_BATCH: usize = 10_000;

/// `secs` as a duration above 0 and at most a day, or an error naming `key`.
pub(crate) fn seconds(key: &str, secs: f64) -> Result<Duration, IngestConfigError> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(86_400) => Ok(d),
        _ => Err(IngestConfigError::Invalid(format!("{key} must be a number of seconds above 0 and at most 86400, got {secs}"))),
    }
}

pub(crate) fn batch(key: &str, n: usize) -> Result<usize, IngestConfigError> {
    if n == 0 || n > MAX_BATCH {
        return Err(IngestConfigError::Invalid(format!("{key} must be 1 to {MAX_BATCH}, got {n}")));
    }
    Ok(n)
}

/// Which kind of bus a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `[sources.redis_streams]`.
    RedisStreams,
    /// `[sources.postgres]`.
    Postgres,
    /// `[sources.nats]`.
    Nats,
    /// `[sources.pubnub]`.
    PubNub,
}

impl SourceKind {
    /// The kind's name in config and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::RedisStreams => "redis_streams",
            SourceKind::Postgres => "postgres",
            SourceKind::Nats => "nats",
            SourceKind::PubNub => "pubnub",
        }
    }

    /// Whether this build has the source (its cargo feature).
    pub fn built(self) -> bool {
        match self {
            SourceKind::RedisStreams => cfg!(feature = "redis-streams"),
            SourceKind::Postgres => cfg!(feature = "postgres"),
            SourceKind::Nats => cfg!(feature = "nats"),
            SourceKind::PubNub => cfg!(feature = "pubnub"),
        }
    }
}

impl SourceConfig {
    /// The one bus table given.
    pub fn kind(&self) -> Result<SourceKind, IngestConfigError> {
        let given: Vec<SourceKind> = [
            (self.redis_streams.is_some(), SourceKind::RedisStreams),
            (self.postgres.is_some(), SourceKind::Postgres),
            (self.nats.is_some(), SourceKind::Nats),
            (self.pubnub.is_some(), SourceKind::PubNub),
        ]
        .into_iter()
        .filter_map(|(set, kind)| set.then_some(kind))
        .collect();
        match given.as_slice() {
            [kind] => Ok(*kind),
            _ => Err(IngestConfigError::Invalid(format!(
                "source {:?}: exactly one of [sources.redis_streams], [sources.postgres], [sources.nats], [sources.pubnub] is needed",
                self.name
            ))),
        }
    }

    /// Checks everything that can be checked without connecting; the error names the source.
    pub fn validate(&self) -> Result<Rules, IngestConfigError> {
        let name = &self.name;
        let named = |e: IngestConfigError| IngestConfigError::Invalid(format!("source {name:?}: {e}"));
        if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(IngestConfigError::Invalid(format!("source name {name:?} must be 1 to 100 of A-Z a-z 0-9 - _ .")));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 16 * 1024 * 1024 {
            return Err(named(IngestConfigError::Invalid("max_message_bytes must be 1 to 16777216".into())));
        }
        let kind = self.kind()?;
        if !kind.built() {
            return Err(named(IngestConfigError::Invalid(format!("this build has no {} source (cargo feature)", kind.name()))));
        }
        if self.rules.is_empty() {
            return Err(named(IngestConfigError::Invalid("no [[sources.rules]]".into())));
        }
        if let Some(r) = &self.redis_streams {
            if r.streams.is_empty() || r.streams.iter().any(|s| s.is_empty()) || r.group.is_empty() {
                return Err(named(IngestConfigError::Invalid("redis_streams needs streams and a group".into())));
            }
            if r.start != "$" && r.start != "0" {
                return Err(named(IngestConfigError::Invalid("redis_streams.start is \"$\" or \"0\"".into())));
            }
            batch("redis_streams.batch", r.batch).map_err(named)?;
            seconds("redis_streams.block", r.block).map_err(named)?;
            seconds("redis_streams.claim_idle", r.claim_idle).map_err(named)?;
            seconds("redis_streams.timeout", r.timeout).map_err(named)?;
            redis::Client::open(r.url.as_str())
                .map_err(|e| named(IngestConfigError::Invalid(format!("redis_streams.url is not a valid Redis URL ({})", e.category()))))?;
        }
        if let Some(p) = &self.postgres {
            let ident = |s: &str| !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !ident(&p.table) || !ident(&p.notify) {
                return Err(named(IngestConfigError::Invalid("postgres.table and postgres.notify are plain identifiers".into())));
            }
            batch("postgres.batch", p.batch).map_err(named)?;
            seconds("postgres.poll", p.poll).map_err(named)?;
            seconds("postgres.timeout", p.timeout).map_err(named)?;
        }
        if let Some(n) = &self.nats {
            if n.stream.is_empty() || n.durable.is_empty() {
                return Err(named(IngestConfigError::Invalid("nats needs a stream and a durable name".into())));
            }
            batch("nats.batch", n.batch).map_err(named)?;
            seconds("nats.ack_wait", n.ack_wait).map_err(named)?;
            seconds("nats.timeout", n.timeout).map_err(named)?;
        }
        if let Some(p) = &self.pubnub {
            if !p.origin.starts_with("http://") {
                return Err(named(IngestConfigError::Invalid("pubnub.origin must be http:// (put a TLS proxy in front for https)".into())));
            }
            if p.subscribe_key.is_empty() || (p.channels.is_empty() && p.channel_groups.is_empty() && p.user_channels.is_empty()) {
                return Err(named(IngestConfigError::Invalid(
                    "pubnub needs a subscribe_key and channels, channel_groups or user_channels".into(),
                )));
            }
            if let Some(bad) = p.user_channels.iter().find(|c| !c.contains("{user}")) {
                return Err(named(IngestConfigError::Invalid(format!("pubnub.user_channels: {bad:?} has no {{user}}"))));
            }
            if !(1..=10_000).contains(&p.max_users) {
                return Err(named(IngestConfigError::Invalid("pubnub.max_users must be 1 to 10000".into())));
            }
            seconds("pubnub.interest_refresh", p.interest_refresh).map_err(named)?;
            seconds("pubnub.lock_ttl", p.lock_ttl).map_err(named)?;
            seconds("pubnub.timeout", p.timeout).map_err(named)?;
            redis::Client::open(p.lock_url.as_str())
                .map_err(|e| named(IngestConfigError::Invalid(format!("pubnub.lock_url is not a valid Redis URL ({})", e.category()))))?;
        }
        Rules::compile(&self.rules).map_err(named)
    }
}

/// Checks every source and that names are unique and apps exist (`app_exists`).
pub fn validate_all(sources: &[SourceConfig], app_exists: impl Fn(&str) -> bool) -> Result<(), IngestConfigError> {
    let mut names = std::collections::HashSet::new();
    for source in sources {
        source.validate()?;
        if !names.insert(source.name.as_str()) {
            return Err(IngestConfigError::Invalid(format!("duplicate source name {:?}", source.name)));
        }
        if !app_exists(&source.app) {
            return Err(IngestConfigError::Invalid(format!("source {:?}: no app {:?}", source.name, source.app)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubnub(extra: &str) -> Result<Rules, IngestConfigError> {
        let text = format!(
            "name = 'pn'\napp = 'a'\n[pubnub]\norigin = 'http://x'\nsubscribe_key = 'k'\nlock_url = 'redis://127.0.0.1'\n{extra}\n\
             [[rules]]\nuser = '{{user_id}}'\nevent = 'e'\n"
        );
        let source: SourceConfig = toml::from_str(&text).unwrap();
        source.validate()
    }

    #[test]
    fn pubnub_interest_is_checked() {
        assert!(pubnub("user_channels = ['user.{user}.sync']").is_ok(), "user channels alone are enough");
        assert!(pubnub("").unwrap_err().to_string().contains("user_channels"), "something to subscribe to");
        assert!(pubnub("user_channels = ['user.sync']").unwrap_err().to_string().contains("{user}"));
        assert!(pubnub("user_channels = ['user.{user}.sync']\nmax_users = 0").unwrap_err().to_string().contains("max_users"));
        assert!(pubnub("user_channels = ['user.{user}.sync']\nmax_users = 10001").is_err());
        assert!(pubnub("user_channels = ['user.{user}.sync']\ninterest_refresh = 0").unwrap_err().to_string().contains("interest_refresh"));
    }
}
