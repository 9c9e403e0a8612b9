//! Pusher error and close codes, and the mapping from engine errors to them.
//!
//! 4000-4099: do not reconnect; 4100-4199: reconnect with backoff; 4200-4299: reconnect now;
//! 4300-4399: other errors, sent only in `pusher:error` frames (pusher-js treats a *close* with
//! code >= 4300 as "never reconnect").

use herald_core::{ConnectError, Disconnect, SubscribeError};

/// The app key in the URL is unknown.
pub const APP_NOT_FOUND: u16 = 4001;
/// The app is disabled.
pub const APP_DISABLED: u16 = 4003;
/// The app is over its connection quota.
pub const OVER_QUOTA: u16 = 4004;
/// The request path is not `/app/{key}`.
pub const PATH_NOT_FOUND: u16 = 4005;
/// The `protocol` parameter is not a number.
pub const INVALID_VERSION: u16 = 4006;
/// The protocol version is not supported.
pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
/// No `protocol` parameter.
pub const NO_PROTOCOL: u16 = 4008;
/// The connection was terminated by the app's backend (do not reconnect automatically).
pub const TERMINATED: u16 = 4009;
/// The connection could not keep up with its messages (reconnect with backoff).
pub const OVER_CAPACITY: u16 = 4100;
/// The server is restarting or draining (reconnect now).
pub const RECONNECT_NOW: u16 = 4200;
/// No pong arrived after a ping.
pub const PONG_TIMEOUT: u16 = 4201;
/// Generic protocol error in a `pusher:error` frame (bad JSON, unknown event, oversized event, ...).
pub const GENERIC_ERROR: u16 = 4300;
/// A client event was refused by the per-connection rate limit.
pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;
/// A client sent a WebSocket frame larger than the server accepts (standard close code).
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// The close code and reason for a refused connection.
pub fn connect_error(e: &ConnectError) -> (u16, String) {
    match e {
        ConnectError::AppDisabled => (APP_DISABLED, "App is disabled".into()),
        ConnectError::OverQuota { .. } => (OVER_QUOTA, "App is over its connection quota".into()),
        other => (APP_DISABLED, other.to_string()),
    }
}

/// The close code and reason for an engine-requested disconnect.
pub fn disconnect(reason: Disconnect) -> (u16, &'static str) {
    match reason {
        Disconnect::SlowConsumer => (OVER_CAPACITY, "Over capacity: client too slow to read its messages"),
        Disconnect::Terminated => (TERMINATED, "Connection terminated by the server"),
        Disconnect::Shutdown => (RECONNECT_NOW, "Server is shutting down, reconnect"),
        Disconnect::NoPong => (PONG_TIMEOUT, "Pong reply not received in time"),
        _ => (RECONNECT_NOW, "Reconnect"),
    }
}

/// The `pusher:subscription_error` type, HTTP-like status and message for a refused subscription.
pub fn subscribe_error(e: &SubscribeError) -> (&'static str, u16, String) {
    match e {
        SubscribeError::TooManyChannels { .. } => ("LimitReached", 400, e.to_string()),
        SubscribeError::TooManyMembers { .. } => ("LimitReached", 403, e.to_string()),
        SubscribeError::MemberInfoTooLarge { .. } => ("LimitReached", 413, e.to_string()),
        _ => ("ServerError", 500, e.to_string()),
    }
}
