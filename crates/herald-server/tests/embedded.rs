//! The embedding pattern of `examples/embedded.rs`: an application's own axum router with Herald's
//! merged in, publishing in-process, then draining with `Herald::drain`.

mod common;

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::Client;
use herald_pusher::{PusherConfig, Trigger, TriggerError};
use herald_server::{AppConfig, Herald};
use serde_json::Value;

async fn announce(State(herald): State<Herald>) -> String {
    let channels = ["news".to_string()];
    let t = Trigger { name: "headline", data: r#"{"title":"hi"}"#, channels: &channels, socket_id: None };
    herald.trigger("app-id", &t).await.unwrap().to_string()
}

#[tokio::test]
async fn application_router_publishes_in_process_and_drains() {
    let herald = Herald::new(vec![AppConfig::dev()], PusherConfig::default());
    let app = Router::new().route("/announce", post(announce)).with_state(herald.clone()).merge(herald.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = herald.shutdown_token();
    let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await });

    let mut reader = Client::connect(addr, "app-key").await;
    reader.subscribe("news").await;

    // The application's own route triggers through Herald without HTTP signing.
    let (status, delivered) =
        common::http_raw(addr, "POST /announce HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(delivered, Value::from(1));
    let ev = reader.expect("headline").await;
    assert_eq!(ev["channel"], "news");
    assert_eq!(ev["data"], r#"{"title":"hi"}"#);

    // Herald's HTTP API and ops routes are mounted too.
    let (status, _) = common::http_raw(addr, "GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);

    // In-process errors are typed.
    let none: [String; 0] = [];
    let bad = Trigger { name: "x", data: "{}", channels: &none, socket_id: None };
    assert!(matches!(herald.trigger("no-such-app", &bad).await, Err(TriggerError::UnknownApp(_))));
    assert!(matches!(herald.trigger("app-id", &bad).await, Err(TriggerError::Publish(_))));

    // Drain: the client is asked to reconnect elsewhere.
    herald.drain(Duration::from_secs(5)).await;
    assert_eq!(reader.closed().await, 4200);
    server.await.unwrap().unwrap();
}
