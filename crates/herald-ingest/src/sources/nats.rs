//! NATS JetStream: a durable pull consumer shared by every Herald node (the server hands each message
//! to one of them), explicit acks.
//!
//! The loop fetches up to `batch` messages (waiting up to a second for the first), relays what has
//! arrived together ([`Relay::relay_batch`]: one target's in order, different targets concurrently) and
//! acks each only if the engine accepted it (delivered or a repeat) or it is skipped; a message the
//! engine refuses, and the later ones of its target, are nak'ed with a delay (redelivered after a
//! second), and the rest of the batch is left to redeliver after `ack_wait`. A
//! node that dies mid-batch never acks: the server redelivers its messages to a live node after
//! `ack_wait`, and their idempotency keys (by default subject and stream sequence) keep clients from
//! seeing them twice. The stream must exist (the backend owns it); the consumer is created if missing.
//! NATS unreachable: the source is down on `/up`; the client reconnects by itself and the loop retries
//! with backoff. (async-nats runs its connection in a task of its own, ended when the client is
//! dropped at shutdown.)

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{seconds, NatsConfig};
use crate::health::SourceHealth;
use crate::mapping::BusMessage;
use crate::relay::Relay;

/// How long a fetch waits for its first message.
const FETCH_WAIT: Duration = Duration::from_secs(1);

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
    let mut consumer: Option<PullConsumer> = None;
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
            fetch(&current, &config, &relay, &health, timeout, &shutdown).await
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

async fn connect(config: &NatsConfig, timeout: Duration, ack_wait: Duration) -> Result<PullConsumer, StepError> {
    let connect = async_nats::ConnectOptions::new().connection_timeout(timeout).request_timeout(Some(timeout)).connect(config.url.as_str());
    let client = tokio::time::timeout(timeout * 2, connect).await.map_err(|_| StepError::Timeout)?.map_err(nats)?;
    let js = async_nats::jetstream::new(client);
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
    stream.get_or_create_consumer(&config.durable, consumer_config).await.map_err(nats)
}

async fn fetch(
    consumer: &PullConsumer,
    config: &NatsConfig,
    relay: &Relay,
    health: &SourceHealth,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), StepError> {
    let request = consumer.fetch().max_messages(config.batch).expires(FETCH_WAIT).messages();
    let messages = tokio::time::timeout(timeout, request).await.map_err(|_| StepError::Timeout)?.map_err(nats)?;
    health.up();
    // What has arrived of the batch so far, relayed together (see `Relay::relay_batch`).
    let mut chunks = messages.ready_chunks(config.batch);
    loop {
        let next = tokio::select! {
            // Unacked messages of this batch are redelivered after ack_wait.
            _ = shutdown.cancelled() => return Ok(()),
            next = tokio::time::timeout(FETCH_WAIT + timeout, chunks.next()) => next,
        };
        let chunk = match next {
            Err(_) => return Err(StepError::Timeout),
            Ok(None) => return Ok(()),
            Ok(Some(chunk)) => chunk,
        };
        let mut received = Vec::with_capacity(chunk.len());
        for message in chunk {
            // An error ends the step; what was not acked is redelivered after ack_wait.
            received.push(message.map_err(nats)?);
        }
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
                // Refused, or behind a refused one of its target: redelivered after a second.
                Some(Err(e)) => {
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    refused = refused.or(Some(e));
                }
                None => {
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
        }
        if let Some(e) = refused {
            return Err(StepError::Engine(e));
        }
    }
}
