//! The client protocol v2 as Rust values, independent of the encoding: commands the session
//! handles and replies and pushes it sends. [`crate::json`] (and the protobuf encoding) translate
//! between these and the wire. `data` fields are the payload bytes as the client's encoding carries
//! them: JSON text for JSON clients, raw bytes for protobuf clients.

use bytes::Bytes;

use crate::codes::ErrorCode;

/// One command from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command id; replies carry it. 0 for commands without a reply (send, pong).
    pub id: u32,
    /// What the client asks.
    pub method: Method,
}

/// The request of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// An empty command: the answer to a server ping.
    Pong,
    /// Authenticate and open the session.
    Connect(ConnectRequest),
    /// Subscribe to a channel.
    Subscribe(SubscribeRequest),
    /// Unsubscribe from a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// Publish to a channel.
    Publish {
        /// The channel.
        channel: String,
        /// The payload.
        data: Bytes,
    },
    /// Who is in a channel.
    Presence {
        /// The channel.
        channel: String,
    },
    /// How many are in a channel.
    PresenceStats {
        /// The channel.
        channel: String,
    },
    /// A channel's history.
    History(HistoryRequest),
    /// A remote procedure call.
    Rpc {
        /// The method name.
        method: String,
        /// The payload.
        data: Bytes,
    },
    /// An asynchronous message to the server.
    Send {
        /// The payload.
        data: Bytes,
    },
    /// A new connection token.
    Refresh {
        /// The token.
        token: String,
    },
    /// A new subscription token.
    SubRefresh {
        /// The channel.
        channel: String,
        /// The token.
        token: String,
    },
}

/// `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The connection JWT.
    pub token: String,
    /// Custom data.
    pub data: Option<Bytes>,
    /// Server-side subscriptions to recover: channel → position.
    pub subs: Vec<(String, SubscribeRequest)>,
    /// Client name.
    pub name: String,
    /// Client version.
    pub version: String,
}

/// `subscribe` (also a recovering server-side subscription in `connect`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// The channel.
    pub channel: String,
    /// A subscription JWT.
    pub token: String,
    /// Recover from `offset`/`epoch`.
    pub recover: bool,
    /// The epoch recovered from.
    pub epoch: String,
    /// The offset recovered from.
    pub offset: u64,
    /// Custom data.
    pub data: Option<Bytes>,
    /// Ask to be positioned.
    pub positioned: bool,
    /// Ask for recoverability.
    pub recoverable: bool,
    /// Ask for join/leave pushes.
    pub join_leave: bool,
}

/// `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: String,
    /// Most publications to return (0: none, only the position; negative: all kept).
    pub limit: i32,
    /// Publications after this position.
    pub since: Option<(u64, String)>,
    /// Newest first.
    pub reverse: bool,
}

/// Who a publication, join or leave is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The user id.
    pub user: String,
    /// The client id.
    pub client: String,
    /// Connection info.
    pub conn_info: Option<Bytes>,
    /// Channel info.
    pub chan_info: Option<Bytes>,
}

/// A publication as a client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pub {
    /// The payload.
    pub data: Bytes,
    /// Its offset in the channel's stream (0: none).
    pub offset: u64,
    /// Who published.
    pub info: Option<ClientInfo>,
    /// Tags.
    pub tags: Vec<(String, String)>,
}

/// The result of `subscribe` (and of a server-side subscription).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeResult {
    /// The subscription expires (token expiry).
    pub expires: bool,
    /// Seconds until it does.
    pub ttl: u32,
    /// The subscription can recover.
    pub recoverable: bool,
    /// The stream's epoch.
    pub epoch: String,
    /// The stream's offset.
    pub offset: u64,
    /// Recovered publications.
    pub publications: Vec<Pub>,
    /// Whether recovery was complete.
    pub recovered: bool,
    /// The subscription is positioned.
    pub positioned: bool,
    /// The client asked to recover.
    pub was_recovering: bool,
    /// Custom data.
    pub data: Option<Bytes>,
}

/// The result of `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectResult {
    /// The client id.
    pub client: String,
    /// The server's version.
    pub version: String,
    /// The connection expires.
    pub expires: bool,
    /// Seconds until it does.
    pub ttl: u32,
    /// Server-side subscriptions.
    pub subs: Vec<(String, SubscribeResult)>,
    /// Seconds between server pings.
    pub ping: u32,
    /// The client must answer pings.
    pub pong: bool,
    /// Custom data.
    pub data: Option<Bytes>,
}

/// A reply to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// An error.
    Error(ErrorCode),
    /// `connect`.
    Connect(ConnectResult),
    /// `subscribe`.
    Subscribe(SubscribeResult),
    /// `unsubscribe`.
    Unsubscribe,
    /// `publish`.
    Publish,
    /// `presence`: every member.
    Presence(Vec<ClientInfo>),
    /// `presence_stats`.
    PresenceStats {
        /// Connections.
        num_clients: u32,
        /// Users.
        num_users: u32,
    },
    /// `history`.
    History {
        /// Publications.
        publications: Vec<Pub>,
        /// The stream's epoch.
        epoch: String,
        /// The stream's offset.
        offset: u64,
    },
    /// `rpc`.
    Rpc {
        /// The answer.
        data: Bytes,
    },
    /// `refresh`.
    Refresh {
        /// The client id.
        client: String,
        /// The server's version.
        version: String,
        /// The connection expires.
        expires: bool,
        /// Seconds until it does.
        ttl: u32,
    },
    /// `sub_refresh`.
    SubRefresh {
        /// The subscription expires.
        expires: bool,
        /// Seconds until it does.
        ttl: u32,
    },
}

/// A push: something the server sends without a command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Push {
    /// A publication.
    Pub(Pub),
    /// Someone joined.
    Join(ClientInfo),
    /// Someone left.
    Leave(ClientInfo),
    /// The server unsubscribed the client (code ≥ 2500: subscribe again).
    Unsubscribe {
        /// The code.
        code: u32,
        /// The reason.
        reason: String,
    },
    /// A server-side subscription.
    Subscribe(SubscribeResult),
    /// The server disconnects the client.
    Disconnect {
        /// The code.
        code: u32,
        /// The reason.
        reason: String,
    },
    /// An asynchronous message.
    Message {
        /// The payload.
        data: Bytes,
    },
}
