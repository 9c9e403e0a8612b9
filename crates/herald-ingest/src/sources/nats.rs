//! NATS JetStream: a durable pull consumer shared by every Herald node (the server hands each message
//! to one of them), explicit acks.
//!
//! The loop keeps one continuous pull open (async-nats' `stream()`: pull requests of `batch` messages,
//! the next one sent when half of the last has arrived, renewed every 30 s, idle heartbeat every 5 s)
//! so messages are pushed to Herald as they are written instead of waiting on the server for the next
//! fetch. It relays what has arrived, up to `batch` at once and without waiting for more
//! ([`Relay::relay_batch`]: one target's in order, different targets concurrently), while the stream
//! goes on receiving the next ones. Each message is acked only once the engine accepted it (delivered
//! or a repeat) or it is skipped; the ack is queued on the connection, not waited for. A message the
//! engine refuses, and the later ones of its target, are nak'ed with a delay (redelivered after a
//! second), and so is what was already prefetched; the loop backs off and opens a new pull.
//!
//! Bounded in flight: at most `batch` being relayed, at most ~1.5 × `batch` more requested ahead
//! (prefetch; when that is full the stream requests nothing more: backpressure to the server, nothing
//! dropped), and the consumer's `max_ack_pending` (10 × `batch`, every node together) caps what the
//! server hands out unacked. A node that dies mid-batch never acks: the server redelivers its messages
//! (relayed or only prefetched) to a live node after `ack_wait`, and their idempotency keys (by default
//! subject and stream sequence) keep clients from seeing them twice. The stream must exist (the
//! backend owns it); the consumer is created if missing. NATS unreachable (an error, the connection
//! lost, or two missed heartbeats): the source is down on `/up`; the loop reconnects with backoff. (async-nats runs its
//! connection and the pull requests in tasks of its own, ended when the client and the stream are
//! dropped, at shutdown or reconnection.)

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::AckKind;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{seconds, NatsConfig};
use crate::health::SourceHealth;
use crate::mapping::BusMessage;
use crate::relay::Relay;

/// How long each pull request of the stream stays open on the server (the client renews it).
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The server's idle heartbeat on an open pull request; two missed ones end the consume step.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the loop looks at the connection's state (a lost connection: down on `/up`, reconnect).
const CONNECTION_CHECK: Duration = Duration::from_millis(250);
/// When a nak'ed message comes back.
const NAK_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("nats call timed out")]
    Timeout,
    #[error("engine refused a publication: {0}")]
    Engine(herald_core::ConfirmError),
}

fn nats(e: impl std::fmt::Display) -> StepError {
    StepError::Nats(e.to_string())
}

/// Runs the source until `shutdown`.
pub(crate) async fn run(config: NatsConfig, relay: Relay, health: Arc<SourceHealth>, shutdown: CancellationToken) {
    let timeout = seconds("timeout", config.timeout).unwrap_or(Duration::from_secs(5));
    let ack_wait = seconds("ack_wait", config.ack_wait).unwrap_or(Duration::from_secs(30));
    let mut backoff = Backoff::default();
    let mut consumer: Option<(async_nats::Client, PullConsumer)> = None;
    while !shutdown.is_cancelled() {
        let step = async {
            let current = match &consumer {
                Some(c) => c.clone(),
                None => {
                    let c = connect(&config, timeout, ack_wait).await?;
                    consumer = Some(c.clone());
                    c
                }
            };
            consume(&current, &config, &relay, &health, &mut backoff, timeout, &shutdown).await
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            result = step => result,
        };
        match result {
            Ok(()) => {
                health.up();
                backoff.reset();
            }
            Err(StepError::Engine(e)) => {
                tracing::warn!(source = relay.source(), error = %e, "engine refused a publication; retrying after backoff");
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
            Err(e) => {
                health.down(&e);
                // Connect again: the stream or the consumer may have been re-created meanwhile.
                consumer = None;
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
        }
    }
    tracing::info!(source = relay.source(), "nats source stopped");
}

async fn connect(config: &NatsConfig, timeout: Duration, ack_wait: Duration) -> Result<(async_nats::Client, PullConsumer), StepError> {
    let connect = async_nats::ConnectOptions::new().connection_timeout(timeout).request_timeout(Some(timeout)).connect(config.url.as_str());
    let client = tokio::time::timeout(timeout * 2, connect).await.map_err(|_| StepError::Timeout)?.map_err(nats)?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&config.stream).await.map_err(nats)?;
    let consumer_config = pull::Config {
        durable_name: Some(config.durable.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        filter_subject: config.filter.clone().unwrap_or_default(),
        // Bounded: at most this many messages out unacked per consumer (every node together).
        max_ack_pending: (config.batch * 10) as i64,
        ..Default::default()
    };
    let consumer = stream.get_or_create_consumer(&config.durable, consumer_config).await.map_err(nats)?;
    Ok((client, consumer))
}

/// Consumes the pull stream until `shutdown` (`Ok`) or an error: relays what has arrived in bounded
/// chunks, one chunk at a time, while the stream keeps pulling the next messages.
async fn consume(
    (client, consumer): &(async_nats::Client, PullConsumer),
    config: &NatsConfig,
    relay: &Relay,
    health: &SourceHealth,
    backoff: &mut Backoff,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), StepError> {
    let request = consumer.stream().max_messages_per_batch(config.batch).expires(PULL_EXPIRES).heartbeat(HEARTBEAT).messages();
    let messages = tokio::time::timeout(timeout, request).await.map_err(|_| StepError::Timeout)?.map_err(nats)?;
    health.up();
    // Everything already arrived, up to `batch`, without waiting for more (see `Relay::relay_batch`).
    let mut chunks = messages.ready_chunks(config.batch);
    let mut check = tokio::time::interval(CONNECTION_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let chunk = tokio::select! {
            // Unacked messages (relayed or prefetched) are redelivered after ack_wait.
            _ = shutdown.cancelled() => return Ok(()),
            // A silent server also shows as a missed heartbeat (an error item), but only after 2 × HEARTBEAT.
            _ = check.tick() => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    return Err(StepError::Nats("disconnected".into()));
                }
                continue;
            }
            next = chunks.next() => next,
        };
        let Some(chunk) = chunk else {
            return Err(StepError::Nats("the pull stream ended".into()));
        };
        let mut received = Vec::with_capacity(chunk.len());
        let mut failed = None;
        for message in chunk {
            match message {
                Ok(message) => received.push(message),
                // Relay the chunk's messages, then reconnect.
                Err(e) => failed = failed.or(Some(nats(e))),
            }
        }
        if failed.is_none() {
            health.up();
        }
        if let Err(e) = relay_chunk(&received, relay).await {
            // Hand what was prefetched back now rather than after ack_wait: it is behind the refused one.
            while let Some(Some(more)) = chunks.next().now_or_never() {
                for message in more.into_iter().flatten() {
                    nak(&message).await;
                }
            }
            return Err(e);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        backoff.reset();
    }
}

/// Relays one chunk and acks each message the engine accepted (delivered or a repeat) or that is
/// skipped; naks the others (refused, or behind a refused one of its target), which come back after
/// [`NAK_DELAY`]. An ack is a publish on the client's connection: the loop does not wait for the
/// server's reply, only for the ack to be queued on the connection, in order, behind earlier ones.
async fn relay_chunk(received: &[async_nats::jetstream::Message], relay: &Relay) -> Result<(), StepError> {
    let meta: Vec<(String, Option<SystemTime>)> = received
        .iter()
        .map(|message| match message.info() {
            Ok(info) => {
                if info.delivered > 1 {
                    relay.health().redelivered();
                }
                relay.health().position(info.stream_sequence as f64);
                let nanos = u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0);
                let sent_at = UNIX_EPOCH.checked_add(Duration::from_nanos(nanos)).filter(|t| *t <= SystemTime::now());
                (info.stream_sequence.to_string(), sent_at)
            }
            Err(_) => (String::new(), None),
        })
        .collect();
    let bus: Vec<(BusMessage<'_>, Option<SystemTime>)> = received
        .iter()
        .zip(&meta)
        .map(|(message, (id, sent_at))| (BusMessage { origin: message.subject.as_str(), id, payload: &message.payload }, *sent_at))
        .collect();
    let outcomes = relay.relay_batch(&bus).await;
    let mut refused = None;
    for (message, outcome) in received.iter().zip(outcomes) {
        match outcome {
            Some(Ok(_)) => message.ack().await.map_err(nats)?,
            Some(Err(e)) => {
                nak(message).await;
                refused = refused.or(Some(e));
            }
            None => nak(message).await,
        }
    }
    match refused {
        Some(e) => Err(StepError::Engine(e)),
        None => Ok(()),
    }
}

/// Asks for a redelivery after [`NAK_DELAY`]; if that fails the server redelivers after `ack_wait`.
async fn nak(message: &async_nats::jetstream::Message) {
    let _ = message.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
}
