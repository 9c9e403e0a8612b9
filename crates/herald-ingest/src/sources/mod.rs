//! The bus consumers, one module per bus, each behind its cargo feature. Each runs as one task per
//! source: read a bounded batch, relay each message ([`crate::relay::Relay`]), ack what the engine
//! accepted, back off when the bus or the engine fails.

#[cfg(feature = "redis-streams")]
pub(crate) mod redis_streams;

#[cfg(feature = "postgres")]
pub(crate) mod postgres;

#[cfg(feature = "nats")]
pub(crate) mod nats;

#[cfg(feature = "pubnub")]
pub(crate) mod pubnub;
