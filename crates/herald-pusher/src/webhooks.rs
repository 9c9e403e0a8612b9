//! Pusher webhooks: `POST {url}` with `{"time_ms":..., "events":[...]}`, `Content-Type:
//! application/json`, `X-Pusher-Key` and `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app
//! secret), as the Pusher server SDKs verify them.
//!
//! Events come from the places that decide them once per cluster (see `events::announce`): channel
//! occupied/vacated and member added/removed from engine or cluster transitions, `client_event` from the
//! session that received it, `cache_miss` from the subscribe that missed, `subscription_count` with each
//! count change. Each app with targets has one bounded queue (policy: when full, new events are dropped
//! and counted in `herald_webhooks_dropped_total`) and one sender task that batches what is queued,
//! filters it per target, and retries failed deliveries with backoff before giving up (counted too).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_core::{App, Engine};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// Events queued per app before new ones are dropped.
const QUEUE: usize = 10_000;
/// Most events in one request.
const MAX_BATCH: usize = 100;
/// How long the sender waits for more events before posting a batch.
const LINGER: Duration = Duration::from_millis(50);
/// Delivery attempts per batch and target.
const ATTEMPTS: u32 = 4;

/// Where one app's webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `http://` URL to POST to.
    pub url: String,
    /// Event names this target wants (`channel_occupied`, `member_added`, ...); empty means all.
    pub event_types: Vec<String>,
}

impl WebhookTarget {
    fn accepts(&self, name: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == name)
    }
}

/// The webhook senders of every app that has targets.
pub struct Webhooks {
    queues: HashMap<String, mpsc::Sender<Value>>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

impl Webhooks {
    /// Starts one sender task per app with targets (tracked by `tasks`, flushing and stopping on
    /// `shutdown`).
    pub fn start(
        engine: &Engine,
        targets: &HashMap<String, Vec<WebhookTarget>>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Webhooks> {
        let http: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut queues = HashMap::new();
        for hub in engine.hubs() {
            let Some(app_targets) = targets.get(&hub.app().id).filter(|t| !t.is_empty()) else { continue };
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.insert(hub.app().id.clone(), tx);
            tasks.spawn(send_loop(hub.app().clone(), app_targets.clone(), rx, http.clone(), shutdown.clone()));
        }
        Arc::new(Webhooks { queues })
    }

    /// Whether app `app_id` has any webhook target (so callers can skip building events).
    pub fn enabled(&self, app_id: &str) -> bool {
        self.queues.contains_key(app_id)
    }

    /// Queues one event (`{"name":..., "channel":..., ...}`) for app `app_id`.
    pub fn emit(&self, app_id: &str, event: Value) {
        let Some(queue) = self.queues.get(app_id) else { return };
        if queue.try_send(event).is_err() {
            metrics::counter!("herald_webhooks_dropped_total", "reason" => "queue_full").increment(1);
        }
    }
}

async fn send_loop(app: App, targets: Vec<WebhookTarget>, mut rx: mpsc::Receiver<Value>, http: HttpClient, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = shutdown.cancelled() => {
                // Flush what is already queued, then stop.
                rx.close();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if n == 0 {
            return;
        }
        // Let a burst gather into one request.
        if batch.len() < MAX_BATCH && !shutdown.is_cancelled() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        for target in &targets {
            let events: Vec<&Value> = batch.iter().filter(|e| target.accepts(e["name"].as_str().unwrap_or(""))).collect();
            if events.is_empty() {
                continue;
            }
            let body = json!({ "time_ms": time_ms, "events": events }).to_string();
            deliver(&http, &app, target, body, events.len(), &shutdown).await;
        }
        batch.clear();
    }
}

/// Posts one batch, retrying with backoff (shorter once shutting down).
async fn deliver(http: &HttpClient, app: &App, target: &WebhookTarget, body: String, count: usize, shutdown: &CancellationToken) {
    let mut mac = Hmac::<Sha256>::new_from_slice(app.secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let body = Bytes::from(body);
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        let request = hyper::Request::post(&target.url)
            .header("content-type", "application/json")
            .header("x-pusher-key", &app.key)
            .header("x-pusher-signature", &signature)
            .body(Full::new(body.clone()));
        let outcome = match request {
            Ok(req) => match tokio::time::timeout(Duration::from_secs(5), http.request(req)).await {
                Ok(Ok(res)) => {
                    let status = res.status();
                    let _ = res.into_body().collect().await;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("status {status}"))
                    }
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                metrics::counter!("herald_webhooks_sent_total").increment(count as u64);
                return;
            }
            Err(e) if attempt == ATTEMPTS || shutdown.is_cancelled() => {
                warn!(url = %target.url, error = %e, events = count, "webhook delivery failed; dropping the batch");
                metrics::counter!("herald_webhooks_dropped_total", "reason" => "delivery_failed").increment(count as u64);
                return;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}
