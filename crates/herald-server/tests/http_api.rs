//! The Pusher HTTP API over real sockets: signatures, validation, queries.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn signatures_are_checked() {
    let server = start_dev().await;
    let body = json!({"name":"e","channel":"c","data":"{}"});
    let (status, _) = api(server.addr, "app-key", "wrong-secret", "POST", "/apps/app-id/events", "", Some(body.clone())).await;
    assert_eq!(status, 401);
    let (status, _) = api(server.addr, "other-key", "app-secret", "POST", "/apps/app-id/events", "", Some(body.clone())).await;
    assert_eq!(status, 401);
    let (status, err) = api(server.addr, "app-key", "app-secret", "POST", "/apps/nope/events", "", Some(body.clone())).await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("unknown app"));
    let (status, _) =
        http_raw(server.addr, "POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").await;
    assert_eq!(status, 401, "unsigned requests are refused");
}

#[tokio::test]
async fn validation_errors() {
    let server = start_dev().await;
    let post = |b| server.api("POST", "/apps/app-id/events", "", Some(b));
    assert_eq!(post(json!({"name":"e","data":"{}"})).await.0, 400, "no channel");
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    assert_eq!(post(json!({"name":"e","channels":many,"data":"{}"})).await.0, 400);
    assert_eq!(post(json!({"name":"e","channel":"c","data":"x".repeat(10 * 1024 + 1)})).await.0, 413);
    assert_eq!(post(json!({"name":"e","channel":"private-encrypted-x","data":"plain"})).await.0, 400);
    assert_eq!(post(json!({"name":"e","channel":"c","data":"{}","socket_id":"garbage"})).await.0, 400);
    let batch: Vec<_> = (0..11).map(|_| json!({"name":"e","channel":"c","data":"{}"})).collect();
    assert_eq!(server.api("POST", "/apps/app-id/batch_events", "", Some(json!({"batch":batch}))).await.0, 400);
    assert_eq!(server.api("GET", "/apps/app-id/channels/news/users", "", None).await.0, 400);
    assert_eq!(server.api("GET", "/apps/app-id/channels", "info=user_count", None).await.0, 400);
}

#[tokio::test]
async fn channel_queries_and_info() {
    let server = start_dev().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    a.subscribe_presence("presence-room", "alice").await;
    b.subscribe_presence("presence-room", "bob").await;
    a.expect("pusher_internal:member_added").await;

    let (_, r) = server.api("GET", "/apps/app-id/channels", "", None).await;
    assert_eq!(r, json!({"channels":{"news":{},"presence-room":{}}}));
    let (_, r) = server.api("GET", "/apps/app-id/channels", "filter_by_prefix=presence-&info=user_count", None).await;
    assert_eq!(r, json!({"channels":{"presence-room":{"user_count":2}}}));
    let (_, r) = server.api("GET", "/apps/app-id/channels/news", "info=subscription_count", None).await;
    assert_eq!(r, json!({"occupied":true,"subscription_count":2}));
    let (_, r) = server.api("GET", "/apps/app-id/channels/empty", "", None).await;
    assert_eq!(r, json!({"occupied":false}));
    let (_, r) = server.api("GET", "/apps/app-id/channels/presence-room", "info=user_count,subscription_count", None).await;
    assert_eq!(r, json!({"occupied":true,"subscription_count":2,"user_count":2}));

    let (status, r) = server
        .api(
            "POST",
            "/apps/app-id/events",
            "",
            Some(json!({"name":"e","channels":["news","presence-room"],"data":"{}","info":"subscription_count,user_count"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r, json!({"channels":{"news":{"subscription_count":2},"presence-room":{"subscription_count":2,"user_count":2}}}));
    let batch = json!({"batch":[{"name":"one","channel":"news","data":"1"},{"name":"two","channel":"news","data":"2","info":"subscription_count"}]});
    let (status, r) = server.api("POST", "/apps/app-id/batch_events", "", Some(batch)).await;
    assert_eq!((status, r), (200, json!({"batch":[{},{"subscription_count":2}]})));
    assert_eq!(a.expect("e").await["channel"], "news");
    assert_eq!(a.expect("e").await["channel"], "presence-room");
    a.expect("one").await;
    a.expect("two").await;
}
