//! Herald's bus relay: consume events that a backend publishes to a bus (Redis Streams, a PostgreSQL
//! outbox table, NATS JetStream, PubNub), map them with configured rules, and publish them through the
//! engine to channels or to every device of a user, except the device the change came from.
//!
//! Delivery is at-least-once from the bus and at-most-once to clients within the idempotency window: a
//! source acks a message only after the engine accepted it ([`herald_core::Hub::publish_confirmed`],
//! [`herald_core::Hub::publish_to_user_confirmed`]), and each publication carries an idempotency key (by
//! default the bus's message id), so a message redelivered after a crash is accepted without being
//! delivered twice. Every node of a cluster may run the same sources: consumer groups, durable
//! consumers, row locks or a leader lock give each message to one node, and the engine fans it out to
//! the others.
//!
//! This crate sits beside the fronts: it knows JSON (bus messages are JSON objects) but nothing of any
//! client protocol, except the name of the Pusher front's user channel that user publications carry
//! ([`relay::USER_CHANNEL_PREFIX`]).

pub mod backoff;
pub mod config;
pub mod health;
pub mod mapping;
pub mod pattern;
pub mod relay;
mod sources;
pub mod template;

use std::sync::Arc;

use herald_core::Engine;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{validate_all, IngestConfigError, RuleConfig, SourceConfig, SourceKind};
pub use health::SourceHealth;
pub use mapping::{BusMessage, Mapped, Rules, Skip, Target};
pub use relay::{Outcome, Relay};

/// The running sources.
#[derive(Debug, Default, Clone)]
pub struct Ingest {
    sources: Vec<Arc<SourceHealth>>,
}

impl Ingest {
    /// Starts one task per source on `tasks`, each stopped by `shutdown`. Fails on a bad config (an
    /// unknown app, a bad rule); an unreachable bus is not an error: the source retries.
    pub fn start(
        sources: &[SourceConfig],
        engine: &Arc<Engine>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Ingest, IngestConfigError> {
        validate_all(sources, |app| engine.by_id(app).is_some())?;
        let mut started = Vec::with_capacity(sources.len());
        for source in sources {
            let rules = source.validate()?;
            let hub = engine.by_id(&source.app).cloned().ok_or_else(|| IngestConfigError::Invalid(format!("no app {:?}", source.app)))?;
            let kind = source.kind()?;
            let health = Arc::new(SourceHealth::new(&source.name, kind.name()));
            let relay = Relay::with_health(&source.name, hub, rules, source.max_message_bytes, health.clone());
            let token = shutdown.clone();
            match kind {
                #[cfg(feature = "redis-streams")]
                SourceKind::RedisStreams => {
                    let config = source.redis_streams.clone().expect("kind() checked it is set");
                    tasks.spawn(sources::redis_streams::run(config, relay, health.clone(), token));
                }
                #[cfg(feature = "postgres")]
                SourceKind::Postgres => {
                    let config = source.postgres.clone().expect("kind() checked it is set");
                    tasks.spawn(sources::postgres::run(config, relay, health.clone(), token, tasks.clone()));
                }
                #[cfg(feature = "nats")]
                SourceKind::Nats => {
                    let config = source.nats.clone().expect("kind() checked it is set");
                    tasks.spawn(sources::nats::run(config, relay, health.clone(), token));
                }
                #[cfg(feature = "pubnub")]
                SourceKind::PubNub => {
                    let config = source.pubnub.clone().expect("kind() checked it is set");
                    tasks.spawn(sources::pubnub::run(config, relay, health.clone(), token));
                }
                #[allow(unreachable_patterns)]
                other => {
                    let _ = (relay, token);
                    return Err(IngestConfigError::Invalid(format!("source {:?}: no {} source in this build", source.name, other.name())));
                }
            }
            started.push(health);
        }
        Ok(Ingest { sources: started })
    }

    /// Each source's health.
    pub fn sources(&self) -> &[Arc<SourceHealth>] {
        &self.sources
    }

    /// Every source reaches its bus.
    pub fn healthy(&self) -> bool {
        self.sources.iter().all(|s| s.is_up())
    }
}
