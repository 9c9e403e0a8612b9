//! Centrifugo's error codes (in replies) and disconnect codes (close frames and disconnect pushes),
//! with their reasons, and the mapping from engine errors to them.
//!
//! Disconnect codes 3000-3499 make clients reconnect; 3500-3999 are terminal. centrifuge-js stops
//! reconnecting on a terminal code only when the close *reason* is non-empty, so every close here
//! carries its reason text.

use herald_core::{ConnectError, Disconnect, SubscribeError};

/// An error in a reply: `{"code","message"}`, `temporary` for errors worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    /// The code (100-199: Centrifugo's).
    pub code: u32,
    /// Its message.
    pub message: &'static str,
    /// The client may retry the command.
    pub temporary: bool,
}

const fn error(code: u32, message: &'static str, temporary: bool) -> ErrorCode {
    ErrorCode { code, message, temporary }
}

/// 100: something failed on the server.
pub const INTERNAL: ErrorCode = error(100, "internal server error", true);
/// 101: the request is not authorised.
pub const UNAUTHORIZED: ErrorCode = error(101, "unauthorized", false);
/// 102: the channel's namespace does not exist (or the name is invalid).
pub const UNKNOWN_CHANNEL: ErrorCode = error(102, "unknown channel", false);
/// 103: not allowed.
pub const PERMISSION_DENIED: ErrorCode = error(103, "permission denied", false);
/// 104: unknown method.
pub const METHOD_NOT_FOUND: ErrorCode = error(104, "method not found", false);
/// 105: already subscribed to the channel.
pub const ALREADY_SUBSCRIBED: ErrorCode = error(105, "already subscribed", false);
/// 106: a limit was reached.
pub const LIMIT_EXCEEDED: ErrorCode = error(106, "limit exceeded", false);
/// 107: malformed request.
pub const BAD_REQUEST: ErrorCode = error(107, "bad request", false);
/// 108: the feature is not available (e.g. history on a channel without it).
pub const NOT_AVAILABLE: ErrorCode = error(108, "not available", false);
/// 109: the token expired: get a new one.
pub const TOKEN_EXPIRED: ErrorCode = error(109, "token expired", false);
/// 110: the connection expired.
pub const EXPIRED: ErrorCode = error(110, "expired", false);
/// 111: rate limited.
pub const TOO_MANY_REQUESTS: ErrorCode = error(111, "too many requests", true);
/// 112: the position asked for is not in the stream.
pub const UNRECOVERABLE_POSITION: ErrorCode = error(112, "unrecoverable position", false);

/// A disconnect: code and reason (terminal when 3500-3999).
pub type DisconnectCode = (u16, &'static str);

/// 3001: the server is shutting down (reconnect).
pub const SHUTDOWN: DisconnectCode = (3001, "shutdown");
/// 3004: internal error (reconnect).
pub const SERVER_ERROR: DisconnectCode = (3004, "internal server error");
/// 3005: the connection's token expired and was not refreshed (reconnect with a new one).
pub const CONNECTION_EXPIRED: DisconnectCode = (3005, "connection expired");
/// 3006: a subscription's token expired and was not refreshed.
pub const SUB_EXPIRED: DisconnectCode = (3006, "subscription expired");
/// 3008: the client could not read its messages fast enough (reconnect).
pub const SLOW: DisconnectCode = (3008, "slow");
/// 3009: writing to the client failed.
pub const WRITE_ERROR: DisconnectCode = (3009, "write error");
/// 3010: the client's position in a stream is lost (reconnect and recover).
pub const INSUFFICIENT_STATE: DisconnectCode = (3010, "insufficient state");
/// 3011: the server asks the client to reconnect.
pub const FORCE_RECONNECT: DisconnectCode = (3011, "force reconnect");
/// 3012: no pong to the server's ping in time.
pub const NO_PONG: DisconnectCode = (3012, "no pong");
/// 3013: too many commands.
pub const TOO_MANY_REQUESTS_DISCONNECT: DisconnectCode = (3013, "too many requests");
/// 3500: the connection token is invalid (terminal).
pub const INVALID_TOKEN: DisconnectCode = (3500, "invalid token");
/// 3501: malformed protocol frames (terminal).
pub const BAD_REQUEST_DISCONNECT: DisconnectCode = (3501, "bad request");
/// 3502: no connect command in time (terminal).
pub const STALE: DisconnectCode = (3502, "stale");
/// 3503: the server disconnected the client and asks it not to reconnect (terminal).
pub const FORCE_NO_RECONNECT: DisconnectCode = (3503, "force disconnect");
/// 3504: a connection limit was reached (terminal).
pub const CONNECTION_LIMIT: DisconnectCode = (3504, "connection limit");
/// 3505: a channel limit was reached (terminal).
pub const CHANNEL_LIMIT: DisconnectCode = (3505, "channel limit");
/// 3506: the client's encoding can't carry the data (terminal).
pub const INAPPROPRIATE_PROTOCOL: DisconnectCode = (3506, "inappropriate protocol");
/// 3507: not allowed (terminal).
pub const PERMISSION_DENIED_DISCONNECT: DisconnectCode = (3507, "permission denied");
/// 3508: a feature that is not available (terminal).
pub const NOT_AVAILABLE_DISCONNECT: DisconnectCode = (3508, "not available");
/// 3509: too many errors (terminal).
pub const TOO_MANY_ERRORS: DisconnectCode = (3509, "too many errors");
/// 1009: a frame larger than the server accepts (WebSocket standard; the client stops).
pub const MESSAGE_TOO_BIG: DisconnectCode = (1009, "message size limit exceeded");

/// The unsubscribe push code that makes the client subscribe again, recovering (Centrifugo's
/// "insufficient state" for one subscription).
pub const UNSUBSCRIBE_INSUFFICIENT_STATE: (u32, &str) = (2500, "insufficient state");
/// The unsubscribe push code of a server-side unsubscribe (terminal for the subscription).
pub const UNSUBSCRIBE_SERVER: (u32, &str) = (2000, "server unsubscribe");

/// The disconnect for a refused connection.
pub fn connect_error(e: &ConnectError) -> DisconnectCode {
    match e {
        ConnectError::OverQuota { .. } => CONNECTION_LIMIT,
        ConnectError::AppDisabled => (3503, "app disabled"),
        _ => FORCE_NO_RECONNECT,
    }
}

/// The disconnect for an engine-requested close.
pub fn disconnect(reason: Disconnect) -> DisconnectCode {
    match reason {
        Disconnect::SlowConsumer => SLOW,
        Disconnect::Terminated => FORCE_NO_RECONNECT,
        Disconnect::Shutdown => SHUTDOWN,
        Disconnect::NoPong => NO_PONG,
        _ => FORCE_RECONNECT,
    }
}

/// The reply error for a refused subscription.
pub fn subscribe_error(e: &SubscribeError) -> ErrorCode {
    match e {
        SubscribeError::TooManyChannels { .. } | SubscribeError::TooManyMembers { .. } | SubscribeError::MemberInfoTooLarge { .. } => {
            LIMIT_EXCEEDED
        }
        _ => INTERNAL,
    }
}

/// Whether a disconnect code is terminal (the client should not reconnect).
pub fn is_terminal(code: u16) -> bool {
    (3500..4000).contains(&code) || (4500..5000).contains(&code)
}
