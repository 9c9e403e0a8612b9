//! Embedding Herald in an axum application.
//!
//! The application owns the HTTP server: it mounts Herald's router (Pusher WebSocket + HTTP API,
//! `/up`, `/metrics`) next to its own routes, and publishes from Rust in-process, with no HTTP round
//! trip and no signature. Unmodified pusher-js clients connect to it as to any Pusher server.
//!
//! ```text
//! cargo run -p herald-server --example embedded            # listens on 127.0.0.1:6050 (EMBEDDED_ADDR)
//! curl -X POST localhost:6050/orders/42/ship               # pusher-js on channel "orders" gets "order-shipped"
//! ```
//!
//! SIGTERM or Ctrl-C stops it gracefully (stop accepting, clients told to reconnect, drain).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use herald_pusher::{PusherConfig, Trigger};
use herald_server::{AppConfig, Herald};

/// The application's own handler: ships an order, then tells every browser watching `orders`.
async fn ship(State(herald): State<Herald>, Path(id): Path<u64>) -> (StatusCode, Json<serde_json::Value>) {
    let data = serde_json::json!({ "id": id, "status": "shipped" }).to_string();
    let channels = ["orders".to_string()];
    let event = Trigger { name: "order-shipped", data: &data, channels: &channels, socket_id: None };
    match herald.trigger("app-id", &event).await {
        Ok(delivered) => (StatusCode::OK, Json(serde_json::json!({ "delivered": delivered }))),
        Err(e) => (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e.to_string() }))),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The dev app (app-id / app-key / app-secret); a real application builds its `AppConfig`s (the
    // engine's `App` and the Pusher front's `PusherApp`: key, secret, switches) from its own config.
    let herald = Herald::new(vec![AppConfig::dev()], PusherConfig::default());

    let app = Router::new().route("/orders/{id}/ship", post(ship)).with_state(herald.clone()).merge(herald.router());

    // Not 6001, so it runs beside a `herald` started with the defaults.
    let addr = std::env::var("EMBEDDED_ADDR").unwrap_or_else(|_| "127.0.0.1:6050".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("embedded herald on http://{addr}");

    // Herald's accept loop (header/idle deadlines, socket cap, TCP_NODELAY) serving the whole app.
    // SIGTERM (what `docker stop` and systemd send) or Ctrl-C stops accepting; then Herald drains its
    // sockets for up to 10 s.
    herald.clone().serve_router(listener, app, stop_signal()?, Duration::from_secs(10)).await?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (handlers registered now, before serving).
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
