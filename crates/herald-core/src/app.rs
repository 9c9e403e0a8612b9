//! An application: the tenant every connection, channel and publish belongs to.

use crate::history::HistoryOptions;
use crate::outbox::OutboxLimits;

/// One tenant as the engine sees it: its id, whether it is enabled, its limits and history rules.
/// Credentials and protocol switches belong to each front's own per-app settings, which name the app
/// by this id.
#[derive(Debug, Clone)]
pub struct App {
    /// The app's id: fronts find its hub by it, and cluster state and metrics are keyed by it.
    pub id: String,
    /// A disabled app refuses new connections.
    pub enabled: bool,
    /// Limits applied to this app.
    pub limits: AppLimits,
    /// Which channels keep history (the first rule whose prefix matches wins).
    pub history: Vec<HistoryRule>,
}

/// Channels whose name starts with `prefix` keep a history of `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    /// Channel name prefix (empty: every channel).
    pub prefix: String,
    /// How much history.
    pub options: HistoryOptions,
}

/// Per-app limits. Every one is enforced with a clear error to the offending client only.
#[derive(Debug, Clone)]
pub struct AppLimits {
    /// Concurrent connections; `None` is unlimited.
    pub max_connections: Option<usize>,
    /// Channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
    /// Distinct users in one presence channel.
    pub max_presence_members: usize,
    /// Bytes of one presence member's `user_info`.
    pub max_presence_member_size: usize,
    /// Bytes of one event's `data` (HTTP publish or client event).
    pub max_event_size: usize,
    /// Client events one connection may send per second.
    pub client_events_per_second: u32,
    /// Outbound queue bounds for every connection of this app.
    pub outbox: OutboxLimits,
    /// Channels that keep history at once; a new one beyond it is published without history (counted).
    pub max_history_channels: usize,
    /// Longest channel name, in bytes (Pusher's 164).
    pub max_channel_name: usize,
    /// Longest event name, in bytes (Pusher's 200).
    pub max_event_name: usize,
    /// Channels one publish may name (Pusher's 100).
    pub max_channels_per_publish: usize,
    /// Connections one signed-in user may have on this node; `None` is unlimited. A sign-in beyond it
    /// is refused and that connection closed.
    pub max_connections_per_user: Option<usize>,
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            max_connections: None,
            max_channels_per_connection: 100,
            max_presence_members: 100,
            max_presence_member_size: 1024,
            max_event_size: 10 * 1024,
            client_events_per_second: 10,
            outbox: OutboxLimits::default(),
            max_history_channels: 10_000,
            max_channel_name: 164,
            max_event_name: 200,
            max_channels_per_publish: 100,
            max_connections_per_user: None,
        }
    }
}

impl App {
    /// The development app: id `app-id`, enabled, default limits, no history.
    pub fn dev() -> Self {
        App { id: "app-id".into(), enabled: true, limits: AppLimits::default(), history: Vec::new() }
    }

    /// The history `channel` keeps under this app's rules, if any.
    pub fn history_for(&self, channel: &str) -> Option<HistoryOptions> {
        self.history.iter().find(|rule| channel.starts_with(&rule.prefix)).map(|rule| rule.options)
    }
}
