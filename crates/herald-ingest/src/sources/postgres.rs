//! A PostgreSQL outbox: the backend inserts a row in its own transaction (so a change and its event
//! commit together) and `NOTIFY`s; Herald claims rows, relays them and deletes them.
//!
//! One transaction per batch: `SELECT ... ORDER BY id LIMIT batch FOR UPDATE SKIP LOCKED` (rows another
//! node holds are skipped, so each row goes to one node), relay each row, `DELETE` the accepted and
//! skipped ones, `COMMIT`. A node that dies mid-batch holds no lock any more (its transaction is
//! rolled back): its rows are claimed again, and their idempotency keys (by default the origin and
//! row id) keep clients from seeing them twice. If the engine refuses a row, the rows before it are
//! deleted and committed, and the loop backs off before trying it again.
//!
//! Woken by `LISTEN` (the backend's `NOTIFY` after commit), with a poll every `poll` seconds as the
//! fallback (a notification is lost while the connection is down). A full batch is followed at once
//! by the next. PostgreSQL unreachable: the source is down on `/up` and reconnects with backoff.
//!
//! Expected table (names configurable): `id bigint` (increasing), `channel text` (the origin rules
//! match), `payload` (`text`, `json` or `jsonb`: a JSON object), `created_at timestamptz` (the relay
//! latency's start).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{self, Backoff};
use crate::config::{seconds, PostgresConfig};
use crate::health::SourceHealth;
use crate::mapping::BusMessage;
use crate::relay::{Outcome, Relay};

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres call timed out")]
    Timeout,
    #[error("engine refused a publication: {0}")]
    Engine(herald_core::ConfirmError),
}

struct Outbox {
    config: PostgresConfig,
    relay: Relay,
    health: Arc<SourceHealth>,
    timeout: Duration,
    poll: Duration,
    select: String,
    delete: String,
}

/// Runs the source until `shutdown`; the connection's driver runs on `tasks`.
pub(crate) async fn run(config: PostgresConfig, relay: Relay, health: Arc<SourceHealth>, shutdown: CancellationToken, tasks: TaskTracker) {
    let table = &config.table;
    let outbox = Outbox {
        select: format!(
            "SELECT id, channel, payload::text, extract(epoch from created_at)::float8 FROM {table} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        delete: format!("DELETE FROM {table} WHERE id = ANY($1)"),
        timeout: seconds("timeout", config.timeout).unwrap_or(Duration::from_secs(5)),
        poll: seconds("poll", config.poll).unwrap_or(Duration::from_secs(1)),
        config,
        relay,
        health,
    };
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let session = shutdown.child_token();
        let woken = Arc::new(Notify::new());
        let result = match outbox.connect(&session, &tasks, woken.clone()).await {
            Ok(mut client) => {
                outbox.health.up();
                backoff.reset();
                outbox.consume(&mut client, &woken, &shutdown, &mut backoff).await
            }
            Err(e) => Err(e),
        };
        // Ends this connection's driver.
        session.cancel();
        match result {
            Ok(()) => break,
            Err(e) => {
                outbox.health.down(&e);
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
        }
    }
    tracing::info!(source = outbox.relay.source(), "postgres source stopped");
}

impl Outbox {
    async fn timed<T>(&self, call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, StepError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StepError::Timeout),
        }
    }

    /// Connects, starts the connection's driver (which turns notifications into `woken`), LISTENs.
    async fn connect(&self, session: &CancellationToken, tasks: &TaskTracker, woken: Arc<Notify>) -> Result<Client, StepError> {
        let (client, mut connection) = self.timed(tokio_postgres::connect(&self.config.url, NoTls)).await?;
        let source = self.relay.source().to_owned();
        let session = session.clone();
        tasks.spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = session.cancelled() => break,
                    message = std::future::poll_fn(|cx| connection.poll_message(cx)) => message,
                };
                match message {
                    Some(Ok(AsyncMessage::Notification(_))) => woken.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(source = %source, error = %e, "postgres connection ended");
                        // Wake the consumer so its next call finds the connection closed.
                        woken.notify_one();
                        break;
                    }
                    None => {
                        woken.notify_one();
                        break;
                    }
                }
            }
        });
        self.timed(client.batch_execute(&format!("LISTEN {}", self.config.notify))).await?;
        Ok(client)
    }

    /// Claims and relays batches until shutdown (`Ok`) or a connection error.
    async fn consume(
        &self,
        client: &mut Client,
        woken: &Notify,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), StepError> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.batch(client).await {
                Ok(n) if n >= self.config.batch => continue,
                Ok(_) => {
                    backoff.reset();
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = woken.notified() => {}
                        _ = tokio::time::sleep(self.poll) => {}
                    }
                }
                Err(StepError::Engine(e)) => {
                    tracing::warn!(source = self.relay.source(), error = %e, "engine refused a publication; retrying after backoff");
                    if !backoff::sleep(backoff.delay(), shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One transaction: claim, relay, delete what may be forgotten, commit. Returns the rows claimed.
    async fn batch(&self, client: &mut Client) -> Result<usize, StepError> {
        let tx = self.timed(client.transaction()).await?;
        let rows = self.timed(tx.query(self.select.as_str(), &[&(self.config.batch as i64)])).await?;
        let claimed = rows.len();
        let mut done: Vec<i64> = Vec::with_capacity(claimed);
        let mut refused = None;
        let mut claimed_rows = Vec::with_capacity(claimed);
        for row in &rows {
            let (id, origin, payload, created): (i64, Option<String>, Option<String>, Option<f64>) =
                match (row.try_get(0), row.try_get(1), row.try_get(2), row.try_get(3)) {
                    (Ok(id), Ok(origin), Ok(payload), Ok(created)) => (id, origin, payload, created),
                    (Ok(id), ..) => (id, None, None, None),
                    _ => continue,
                };
            let sent_at = created.and_then(|secs| Duration::try_from_secs_f64(secs).ok()).and_then(|d| UNIX_EPOCH.checked_add(d));
            claimed_rows.push((id, id.to_string(), origin, payload, sent_at.filter(|t| *t <= SystemTime::now())));
        }
        // Relayed together (see `Relay::relay_batch`): rows of one target in id order.
        let messages: Vec<(BusMessage<'_>, Option<SystemTime>)> = claimed_rows
            .iter()
            .map(|(_, id_text, origin, payload, sent_at)| {
                let message = BusMessage {
                    origin: origin.as_deref().unwrap_or(""),
                    id: id_text,
                    payload: payload.as_deref().unwrap_or("").as_bytes(),
                };
                (message, *sent_at)
            })
            .collect();
        let outcomes = self.relay.relay_batch(&messages).await;
        for ((id, ..), outcome) in claimed_rows.iter().zip(outcomes) {
            match outcome {
                Some(Ok(Outcome::Repeat)) => {
                    // Claimed again: its earlier claim published it but did not delete it (a node
                    // killed before its commit, or a failed commit).
                    self.relay.health().redelivered();
                    done.push(*id);
                }
                Some(Ok(Outcome::Delivered | Outcome::Skipped(_))) => done.push(*id),
                Some(Err(e)) => refused = refused.or(Some(e)),
                // Behind a refused row of its target: kept, claimed again in order with it.
                None => {}
            }
        }
        if !done.is_empty() {
            self.timed(tx.execute(self.delete.as_str(), &[&done])).await?;
        }
        self.timed(tx.commit()).await?;
        if let Some(last) = done.iter().max() {
            self.relay.health().position(*last as f64);
        }
        match refused {
            Some(e) => Err(StepError::Engine(e)),
            None => Ok(claimed),
        }
    }
}
