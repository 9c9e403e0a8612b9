//! Input from Redis is untrusted: anyone who can PUBLISH to the Redis can put bytes on a node's
//! channels. Bad envelopes are dropped and counted; nothing reaches a subscriber or a cache channel.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{eventually, frames, frames_until, raw, Node, RedisServer};
use herald_core::{App, HistoryOptions, MemberJoin};

/// A header as a foreign node would write it: version 2, `kind`, node 0x42.
fn header(kind: u8) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(2);
    b.put_u8(kind);
    b.put_u128(0x42);
    b
}

fn field(b: &mut BytesMut, bytes: &[u8]) {
    b.put_u32(bytes.len() as u32);
    b.put_slice(bytes);
}

/// A publish envelope (`kind` 0, or 1 to retain) whose text `data` is `data`, otherwise well formed.
fn publish(kind: u8, data: &[u8]) -> BytesMut {
    let mut b = header(kind);
    field(&mut b, b"ch");
    field(&mut b, b"e");
    b.put_u8(0); // text
    field(&mut b, data);
    b.put_slice(&[0, 0, 0, 0]); // no except, device, publisher, position
    b.put_u16(0); // no tags
    b
}

fn garbage() -> Vec<Bytes> {
    let mut version = publish(0, b"ok");
    version[0] = 1;
    let mut terminate_with_tail = header(2);
    terminate_with_tail.put_slice(b"{}");
    let mut bad_flag = publish(0, b"ok");
    let flag_at = bad_flag.len() - 6;
    bad_flag[flag_at] = 2;
    vec![
        publish(0, &[0xff, 0xfe, 0xfd]).freeze(),
        // As the history script would send it: a position, then an envelope whose text is not UTF-8.
        [&b"7:ep:"[..], &publish(0, &[0xff, 0xfe, 0xfd])[..]].concat().into(),
        // A position prefix that is not one.
        Bytes::from_static(b"7:"),
        publish(1, b"ok").freeze(),
        publish(0, b"ok").freeze().slice(..25),
        Bytes::from_static(b"hello"),
        Bytes::new(),
        version.freeze(),
        header(7).freeze(),
        bad_flag.freeze(),
        terminate_with_tail.freeze(),
    ]
}

#[tokio::test]
async fn bad_envelopes_from_redis_are_dropped_and_counted_and_valid_ones_still_flow() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = Node::start(&url, "herald", Duration::from_secs(10), App::dev()).await;
    let b = Node::start(&url, "herald", Duration::from_secs(10), App::dev()).await;
    let (id, outbox) = a.hub().connect().unwrap();
    let member = MemberJoin { user_id: Arc::from("alice"), info: Bytes::from_static(b"{}") };
    a.hub().subscribe(id, "presence-room", Some(member)).unwrap();
    a.hub().subscribe(id, "cache-room", None).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { a.broker.subscriptions() == 2 }).await);

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let garbage = garbage();
    for channel in ["herald:app-id:c:presence-room", "herald:app-id:c:cache-room"] {
        for payload in &garbage {
            let receivers: i64 = redis::cmd("PUBLISH").arg(channel).arg(&payload[..]).query_async(&mut conn).await.unwrap();
            assert_eq!(receivers, 1, "node A is subscribed to {channel}");
        }
    }

    // A valid publish from another node, after the garbage (Redis keeps the order).
    let frame = Bytes::from_static(b"{\"event\":\"ok\"}");
    b.hub().publish_raw("presence-room", &frame, None);
    let cached = HistoryOptions { size: 1, ttl: Duration::from_secs(60) };
    b.hub().publish_with_history(&raw("cache-room", &frame), cached).await.unwrap();
    // The garbage was sent first: a frame made of it would come before these.
    let got = frames_until(&outbox, 2, Duration::from_secs(5)).await;
    assert_eq!(got, [frame.clone(), frame.clone()], "the valid frames and nothing from the garbage");
    assert_eq!(frames(&outbox, 200).await, Vec::<Bytes>::new(), "nothing after them");
    assert_eq!(a.broker.stats().bad_envelopes.load(Ordering::Relaxed), 2 * garbage.len() as u64);
    let kept = a.hub().history("cache-room", None, 10).await.unwrap().publications;
    assert_eq!(kept.iter().map(|p| p.data.clone()).collect::<Vec<_>>(), vec![frame], "only the valid one is kept");
    assert!(a.hub().is_subscribed(id, "presence-room"));
    redis.stop().await;
}
