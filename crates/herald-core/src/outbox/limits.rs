//! The bounds of one connection's outbound queue and what happens beyond them: the settings an app
//! configures, apart from the queue's mechanics.

/// Bounds of one connection's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Frames waiting to be written.
    pub max_messages: usize,
    /// Bytes waiting to be written.
    pub max_bytes: usize,
    /// What happens when a push would exceed a bound.
    pub overflow: OverflowPolicy,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits { max_messages: 1000, max_bytes: 1 << 20, overflow: OverflowPolicy::DisconnectSlowConsumer }
    }
}

/// What a full outbox does with a new frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Drop the queue and close the connection with
    /// [`Disconnect::SlowConsumer`](crate::Disconnect::SlowConsumer); the client reconnects with backoff
    /// and recovers state from its backend. Counted in `herald_slow_consumer_disconnects_total`.
    DisconnectSlowConsumer,
}
