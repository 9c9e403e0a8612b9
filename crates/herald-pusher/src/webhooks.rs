//! Pusher webhooks: `POST {url}` with `{"time_ms":..., "events":[...]}`, `Content-Type:
//! application/json`, `X-Pusher-Key` and `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app
//! secret), as the Pusher server SDKs verify them.
//!
//! Events come from the places that decide them once per cluster (see `events::announce`): channel
//! occupied/vacated and member added/removed from engine or cluster transitions, `client_event` from the
//! session that received it, `cache_miss` from the subscribe that missed, `subscription_count` with each
//! count change.
//!
//! Targets are served independently, so one slow or broken receiver cannot delay another: each target
//! has its own bounded queue of the events it accepts (policy: when full, new events are dropped and
//! counted in `herald_webhooks_dropped_total{reason="queue_full"}`) and its own sender task (tracked,
//! watching shutdown) that batches what is queued and retries failed deliveries with backoff before
//! giving up (counted too). Each exchange, request and the whole response body, must finish within
//! [`EXCHANGE_TIMEOUT`], and at most [`MAX_RESPONSE_BODY`] bytes of a response are read: a receiver
//! that trickles or floods its response is dropped (its connection closed, counted in
//! `herald_webhooks_abandoned_total`); the status it answered still decides the delivery.
//!
//! Health, per app: `herald_webhooks_sent_total` (events delivered), `herald_webhooks_failed_total`
//! (requests that failed: no answer in time, or an unsuccessful status), `herald_webhooks_retried_total`
//! (requests retried after a failure), `herald_webhooks_dropped_total{reason}` (events given up: queue
//! full, delivery failed after every attempt, shutdown) and the gauge `herald_webhooks_queue_depth`
//! (events waiting in the app's queues).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics::Gauge;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::PusherApp;

/// Request headers a webhook target may not set (Herald sets them, or they frame the request).
pub const RESERVED_HEADERS: [&str; 6] =
    ["content-type", "content-length", "host", "transfer-encoding", "x-pusher-key", "x-pusher-signature"];

/// Events queued per target before new ones are dropped.
const QUEUE: usize = 10_000;
/// Most events in one request.
const MAX_BATCH: usize = 100;
/// How long the sender waits for more events before posting a batch.
const LINGER: Duration = Duration::from_millis(50);
/// Delivery attempts per batch and target.
const ATTEMPTS: u32 = 4;
/// Longest exchange with a receiver: connecting, sending the request and reading the whole response.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most response-body bytes read from a receiver before its connection is dropped.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Where one app's webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `http://` URL to POST to.
    pub url: String,
    /// Event names this target wants (`channel_occupied`, `member_added`, ...); empty means all.
    pub event_types: Vec<String>,
    /// Extra request headers (e.g. an authorization for the receiver); none of [`RESERVED_HEADERS`].
    pub headers: Vec<(String, String)>,
}

impl WebhookTarget {
    fn accepts(&self, name: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == name)
    }
}

/// One target's queue.
struct Queue {
    target: WebhookTarget,
    tx: mpsc::Sender<Value>,
    /// The app's `herald_webhooks_queue_depth` (shared by its targets).
    depth: Gauge,
}

/// The webhook senders of every app that has targets.
pub struct Webhooks {
    queues: HashMap<String, Vec<Queue>>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The HTTP client of every sender: `TCP_NODELAY` (a request is one small write; Nagle would hold it
/// for a delayed ACK) and a connect timeout within the exchange's.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(EXCHANGE_TIMEOUT));
    Client::builder(TokioExecutor::new()).build(connector)
}

impl Webhooks {
    /// Starts one sender task per target of every app in `apps` (tracked by `tasks`, flushing and
    /// stopping on `shutdown`). Each app's secret signs its requests.
    pub fn start<'a>(
        apps: impl IntoIterator<Item = &'a PusherApp>,
        targets: &HashMap<String, Vec<WebhookTarget>>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Webhooks> {
        let http = http_client();
        let mut queues = HashMap::new();
        for app in apps {
            let Some(app_targets) = targets.get(&app.id).filter(|t| !t.is_empty()) else { continue };
            let app = Arc::new(app.clone());
            let mut app_queues = Vec::with_capacity(app_targets.len());
            let depth = metrics::gauge!("herald_webhooks_queue_depth", "app" => app.id.clone());
            for target in app_targets {
                let (tx, rx) = mpsc::channel(QUEUE);
                tasks.spawn(send_loop(app.clone(), target.clone(), rx, depth.clone(), http.clone(), shutdown.clone()));
                app_queues.push(Queue { target: target.clone(), tx, depth: depth.clone() });
            }
            queues.insert(app.id.clone(), app_queues);
        }
        Arc::new(Webhooks { queues })
    }

    /// Whether app `app_id` has any webhook target (so callers can skip building events).
    pub fn enabled(&self, app_id: &str) -> bool {
        self.queues.contains_key(app_id)
    }

    /// Queues one event (`{"name":..., "channel":..., ...}`) for every target of app `app_id` that
    /// accepts it.
    pub fn emit(&self, app_id: &str, event: Value) {
        let Some(queues) = self.queues.get(app_id) else { return };
        let name = event["name"].as_str().unwrap_or("");
        let accepting: Vec<&Queue> = queues.iter().filter(|q| q.target.accepts(name)).collect();
        let Some((last, others)) = accepting.split_last() else { return };
        for queue in others {
            enqueue(app_id, queue, event.clone());
        }
        enqueue(app_id, last, event);
    }
}

fn enqueue(app_id: &str, queue: &Queue, event: Value) {
    if queue.tx.try_send(event).is_ok() {
        queue.depth.increment(1.0);
    } else {
        metrics::counter!("herald_webhooks_dropped_total", "app" => app_id.to_string(), "reason" => "queue_full").increment(1);
    }
}

/// Serves one target: batches its queue and delivers each batch.
async fn send_loop(
    app: Arc<PusherApp>,
    target: WebhookTarget,
    mut rx: mpsc::Receiver<Value>,
    depth: Gauge,
    http: HttpClient,
    shutdown: CancellationToken,
) {
    // Pusher's default is one event per request; batching is the app's opt-in.
    let max_batch = if app.batch_webhooks { MAX_BATCH } else { 1 };
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, max_batch) => n,
            _ = shutdown.cancelled() => {
                // Flush what is already queued, then stop.
                rx.close();
                rx.recv_many(&mut batch, max_batch).await
            }
        };
        if n == 0 {
            return;
        }
        // Let a burst gather into one request.
        if batch.len() < max_batch && !shutdown.is_cancelled() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        depth.decrement(batch.len() as f64);
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let body = json!({ "time_ms": time_ms, "events": batch }).to_string();
        let delivered = deliver(&http, &app, &target, body, batch.len(), &shutdown).await;
        batch.clear();
        if !delivered && shutdown.is_cancelled() {
            // Shutting down and the target is failing: drop the rest rather than hold the drain.
            rx.close();
            let mut dropped = 0;
            while rx.try_recv().is_ok() {
                dropped += 1;
            }
            depth.decrement(dropped as f64);
            metrics::counter!("herald_webhooks_dropped_total", "app" => app.id.clone(), "reason" => "shutdown").increment(dropped);
            return;
        }
    }
}

/// One POST; an error (no answer, or an unsuccessful status) is worth retrying. The status decides
/// the outcome; the response body is read (so the connection can be
/// reused) within what is left of [`EXCHANGE_TIMEOUT`] and up to [`MAX_RESPONSE_BODY`] bytes, else the
/// connection is dropped.
async fn exchange(http: &HttpClient, app: &PusherApp, request: hyper::Request<Full<Bytes>>) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    let response = match tokio::time::timeout_at(deadline, http.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out".into()),
    };
    let status = response.status();
    let abandoned = match tokio::time::timeout_at(deadline, Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Some("body_too_large"),
        Ok(Err(_)) => Some("body_error"),
        Err(_) => Some("body_timeout"),
    };
    // Dropping the unfinished body (above) closes the connection instead of returning it to the pool.
    if let Some(reason) = abandoned {
        metrics::counter!("herald_webhooks_abandoned_total", "app" => app.id.clone(), "reason" => reason).increment(1);
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Posts one batch, retrying with backoff (no retry once shutting down). Returns whether it was
/// delivered.
async fn deliver(
    http: &HttpClient,
    app: &PusherApp,
    target: &WebhookTarget,
    body: String,
    count: usize,
    shutdown: &CancellationToken,
) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(app.secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let body = Bytes::from(body);
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        let mut request = hyper::Request::post(&target.url);
        for (name, value) in &target.headers {
            request = request.header(name, value);
        }
        let request = request
            .header("content-type", "application/json")
            .header("x-pusher-key", &app.key)
            .header("x-pusher-signature", &signature)
            .body(Full::new(body.clone()));
        let outcome = match request {
            Ok(req) => exchange(http, app, req).await,
            Err(e) => Err(e.to_string()),
        };
        let e = match outcome {
            Ok(()) => {
                metrics::counter!("herald_webhooks_sent_total", "app" => app.id.clone()).increment(count as u64);
                return true;
            }
            Err(e) => e,
        };
        metrics::counter!("herald_webhooks_failed_total", "app" => app.id.clone()).increment(1);
        if attempt == ATTEMPTS || shutdown.is_cancelled() {
            warn!(url = %target.url, error = %e, events = count, "webhook delivery failed; dropping the batch");
            metrics::counter!("herald_webhooks_dropped_total", "app" => app.id.clone(), "reason" => "delivery_failed")
                .increment(count as u64);
            return false;
        }
        metrics::counter!("herald_webhooks_retried_total", "app" => app.id.clone()).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => {}
        }
        backoff *= 2;
    }
    false
}
