//! Idempotent publishes through the broker (what bus consumers use): the key is recorded and the
//! publication sent in one script, so a repeat is never delivered twice, on any node, and a key is
//! never recorded without its publication.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cli, next_alone as next, Node, RedisServer};
use herald_core::{App, DataKind, Publication, Published};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_is_delivered_once_on_every_node() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "once", Duration::from_secs(10), App::dev()).await;
    let b = Node::start(&redis.url(), "once", Duration::from_secs(10), App::dev()).await;
    let (here, here_box) = a.hub().connect().unwrap();
    let (there, there_box) = b.hub().connect().unwrap();
    a.hub().sign_in(here, "u1", Some("phone")).unwrap();
    b.hub().sign_in(there, "u1", Some("tv")).unwrap();
    // The sign-in already asked b's broker to route u1 here, and its subscriber may have done so
    // before this call (then there is nothing to prepare): wait only for what is still pending.
    if let Some(mut interest) = b.hub().prepare_user("u1") {
        assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "u1 routed to b");
    }
    assert!(b.hub().prepare_user("u1").is_none(), "b receives u1 from the other nodes");

    let publication = Publication::new("#server-to-user-u1", "e", Bytes::from_static(b"1"), DataKind::Json);
    let first = a.hub().publish_to_user_confirmed("u1", &publication, Some("k1")).await.unwrap();
    assert_eq!(first, Published::Delivered { position: None });
    assert_eq!(next(&here_box, 2000).await.as_deref(), Some(&b"1"[..]), "local delivery");
    assert_eq!(next(&there_box, 2000).await.as_deref(), Some(&b"1"[..]), "the other node");
    // The same key through either node: a repeat, delivered nowhere.
    assert_eq!(a.hub().publish_to_user_confirmed("u1", &publication, Some("k1")).await.unwrap(), Published::Repeat);
    assert_eq!(b.hub().publish_to_user_confirmed("u1", &publication, Some("k1")).await.unwrap(), Published::Repeat);
    // A channel publication with a key takes the same route.
    let (sub, sub_box) = b.hub().connect().unwrap();
    let mut interest = b.hub().prepare_channel("news").unwrap();
    b.hub().subscribe(sub, "news", None).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap());
    drop(interest);
    let news = Publication::new("news", "e", Bytes::from_static(b"2"), DataKind::Json);
    assert!(matches!(a.hub().publish_confirmed(&news, None, Some("k2")).await.unwrap(), Published::Delivered { .. }));
    assert_eq!(a.hub().publish_confirmed(&news, None, Some("k2")).await.unwrap(), Published::Repeat);
    let marker = Publication::new("#server-to-user-u1", "e", Bytes::from_static(b"3"), DataKind::Json);
    a.hub().publish_to_user_confirmed("u1", &marker, Some("k3")).await.unwrap();
    assert_eq!(next(&there_box, 2000).await.as_deref(), Some(&b"3"[..]), "nothing else arrived before the marker");
    assert_eq!(next(&here_box, 2000).await.as_deref(), Some(&b"3"[..]), "nor here");
    assert_eq!(next(&sub_box, 2000).await.as_deref(), Some(&b"2"[..]));
    assert_eq!(next(&sub_box, 300).await, None, "the repeat was not delivered");
    // Every key is in the app's idempotency set, the one the HTTP API's keys share.
    let members = cli(redis.port, &["ZRANGE", "{once:app-id}:idem", "0", "-1"]).await;
    for key in ["k1", "k2", "k3"] {
        assert!(members.lines().any(|l| l == key), "{key} in {members}");
    }
}
