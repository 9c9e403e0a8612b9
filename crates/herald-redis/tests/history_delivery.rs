//! Channels with history on several nodes: every node, the publishing one included, delivers in offset
//! order (the append script broadcasts), and any node answers recovery from Redis.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{frames, next_alone, Node, RedisServer};
use herald_core::{App, DataKind, HistoryOptions, Publication};

#[tokio::test]
async fn history_publications_reach_every_node_in_offset_order_and_are_recoverable_anywhere() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = Node::start(&url, "herald", Duration::from_secs(10), App::dev()).await;
    let b = Node::start(&url, "herald", Duration::from_secs(10), App::dev()).await;
    let (ia, on_a) = a.hub().connect().unwrap();
    let (ib, on_b) = b.hub().connect().unwrap();
    a.hub().join(ia, "stream-1", None).await.unwrap();
    b.hub().join(ib, "stream-1", None).await.unwrap();
    let options = HistoryOptions { size: 100, ttl: Duration::from_secs(60) };
    let p = |n: usize| Publication::new("stream-1", "e", Bytes::from(n.to_string()), DataKind::Text);
    // Publishes through both nodes at once: the stream decides the order, and so every node delivers.
    let mut positions = Vec::new();
    for round in 0..10 {
        let (even, odd) = (p(2 * round), p(2 * round + 1));
        let (x, y) = tokio::join!(a.hub().publish_with_history(&even, options), b.hub().publish_with_history(&odd, options));
        positions.push(x.unwrap());
        positions.push(y.unwrap());
    }
    let mut offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    offsets.sort();
    assert_eq!(offsets, (1..=20).collect::<Vec<u64>>(), "one stream, consecutive offsets");
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (got_a.len() < 20 || got_b.len() < 20) && tokio::time::Instant::now() < deadline {
        got_a.extend(frames(&on_a, 50).await);
        got_b.extend(frames(&on_b, 50).await);
    }
    assert_eq!((got_a.len(), got_b.len()), (20, 20), "every node delivered all 20, the publishing node's own too");
    assert_eq!(got_a, got_b, "both nodes in the same order");
    // That order is the offset order (publication i carries the data "i").
    let mut by_offset: Vec<(u64, usize)> = positions.iter().enumerate().map(|(i, p)| (p.offset, i)).collect();
    by_offset.sort();
    let expected: Vec<Bytes> = by_offset.into_iter().map(|(_, i)| Bytes::from(i.to_string())).collect();
    assert_eq!(got_a, expected);

    // Recovery from either node.
    let fifth = positions.iter().find(|p| p.offset == 5).unwrap().clone();
    let missed = b.hub().history("stream-1", Some(&fifth), 100).await.unwrap();
    assert!(missed.recovered);
    assert_eq!(missed.publications.len(), 15);
    assert_eq!(missed.publications[0].position.as_ref().unwrap().offset, 6);
    assert_eq!(a.hub().stream_position("stream-1").await.unwrap().offset, 20);
    redis.stop().await;
}

#[tokio::test]
async fn idempotency_and_device_exclusion_hold_across_nodes() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = Node::start(&url, "herald", Duration::from_secs(10), App::dev()).await;
    let b = Node::start(&url, "herald", Duration::from_secs(10), App::dev()).await;
    // The user's phone on A, laptop on B; the change is made on the phone.
    let (phone, on_phone) = a.hub().connect().unwrap();
    let (laptop, on_laptop) = b.hub().connect().unwrap();
    a.hub().sign_in(phone, "u1", Some("phone")).unwrap();
    b.hub().sign_in(laptop, "u1", Some("laptop")).unwrap();
    a.hub().join(phone, "room", None).await.unwrap();
    b.hub().join(laptop, "room", None).await.unwrap();
    // Each node routes the user and the channel (the sign-ins' routing is not waited for by `join`).
    let routed = common::eventually(Duration::from_secs(5), || async { a.broker.subscriptions() >= 2 && b.broker.subscriptions() >= 2 });
    assert!(routed.await, "u1 and room routed to both nodes");
    let mut change = Publication::new("#user-u1", "sync", Bytes::from_static(b"{}"), DataKind::Json);
    change.except_device = Some("phone".into());
    assert_eq!(a.hub().publish_to_user("u1", &change), 0, "not to the phone, here");
    assert_eq!(next_alone(&on_laptop, 5000).await.as_deref(), Some(&b"{}"[..]), "the laptop, on the other node, gets it");
    // Idempotency is cluster-wide: a retry through the other node is accepted, not delivered.
    let p = Publication::new("room", "e", Bytes::from_static(b"once"), DataKind::Text);
    assert!(matches!(a.hub().publish_confirmed(&p, None, Some("req-1")).await.unwrap(), herald_core::Published::Delivered { .. }));
    assert_eq!(b.hub().publish_confirmed(&p, None, Some("req-1")).await.unwrap(), herald_core::Published::Repeat);
    assert_eq!(next_alone(&on_laptop, 5000).await.as_deref(), Some(&b"once"[..]), "the first, and nothing before it");
    assert_eq!(next_alone(&on_phone, 5000).await.as_deref(), Some(&b"once"[..]), "nothing before it either");
    assert_eq!(frames(&on_laptop, 300).await, Vec::<Bytes>::new(), "delivered once");
    assert_eq!(frames(&on_phone, 100).await, Vec::<Bytes>::new(), "delivered once");
    redis.stop().await;
}
