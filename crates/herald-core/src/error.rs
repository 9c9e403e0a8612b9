//! Engine errors. Fronts map them to their protocol's codes; the engine never picks a wire code.

/// Why a new connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The app is switched off.
    #[error("app is disabled")]
    AppDisabled,
    /// The app already has its maximum number of connections.
    #[error("app is over its connection quota ({limit})")]
    OverQuota {
        /// The configured limit.
        limit: usize,
    },
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The connection is not (or no longer) registered.
    #[error("unknown connection")]
    UnknownConnection,
    /// The connection already has the maximum number of channels.
    #[error("too many channels for one connection (limit {limit})")]
    TooManyChannels {
        /// The configured limit.
        limit: usize,
    },
    /// The presence channel is full.
    #[error("presence channel is full (limit {limit} members)")]
    TooManyMembers {
        /// The configured limit.
        limit: usize,
    },
    /// The member's info is larger than allowed.
    #[error("presence member info is {size} bytes, limit {limit}")]
    MemberInfoTooLarge {
        /// Size of the rejected info.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// Why a user sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignInError {
    /// The connection is not (or no longer) registered.
    #[error("unknown connection")]
    UnknownConnection,
    /// The connection is already signed in as another user.
    #[error("connection is already signed in as another user")]
    AlreadySignedIn,
    /// The user already has as many connections as the app allows.
    #[error("user has too many connections (limit {limit})")]
    TooManyConnections {
        /// The app's `max_connections_per_user`.
        limit: usize,
    },
}
