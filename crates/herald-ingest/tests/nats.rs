//! The NATS JetStream source against a real `nats-server -js` on a free port: messages reach the user's
//! other devices and are acked (a burst over many pull requests too, each user's in order), a dead consumer's unacked messages are redelivered without duplicates,
//! and a server restart is survived.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use common::{collect, eventually, take, NatsServer, Node};
use futures_util::StreamExt;
use serde_json::json;

fn config(url: &str) -> String {
    format!(
        r#"
[[sources]]
name = "bus"
app = "app-id"
[sources.nats]
url = "{url}"
stream = "SYNC"
durable = "herald"
batch = 10
ack_wait = 0.5
timeout = 1

[[sources.rules]]
origin = "sync.{{user_id}}"
user = "{{user_id}}"
event = "{{type}}"
rename = {{ position_seconds = "position" }}
keep = ["type", "position"]
origin_device = "device_id"
"#
    )
}

fn progress(device: &str, position: u64) -> bytes::Bytes {
    json!({"type":"progress_update","device_id":device,"position_seconds":position}).to_string().into()
}

async fn setup(url: &str) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    js.get_or_create_stream(stream::Config { name: "SYNC".into(), subjects: vec!["sync.>".into()], ..Default::default() }).await.unwrap();
    js
}

/// Publishes and waits for JetStream's ack; the stream sequence.
async fn publish(js: &jetstream::Context, subject: &str, payload: bytes::Bytes) -> u64 {
    js.publish(subject.to_owned(), payload).await.unwrap().await.unwrap().sequence
}

async fn unacked(js: &jetstream::Context) -> (u64, usize) {
    let mut consumer: jetstream::consumer::PullConsumer = js.get_stream("SYNC").await.unwrap().get_consumer("herald").await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_users_other_devices_and_are_acked() {
    let nats = NatsServer::start().await;
    let js = setup(&nats.url()).await;
    let node = Node::start(&config(&nats.url()));
    let (a, b) = (node.device("u1", "phone"), node.device("u1", "tv"));
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    for position in 1..=25 {
        publish(&js, "sync.u1", progress("phone", position)).await;
    }
    let got = collect(&b, 25, 10).await;
    let positions: Vec<u64> = got.iter().map(|v| v["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=25).collect::<Vec<_>>());
    eventually(10, "all acked", || {
        let js = &js;
        async move { (unacked(js).await == (0, 0)).then_some(()) }
    })
    .await;
    publish(&js, "sync.u1", progress("tv", 99)).await;
    let marker = eventually(10, "the phone gets the tv's change", || async { Some(take(&a).await).filter(|f| !f.is_empty()) }).await;
    assert_eq!(marker, vec![json!({"type":"progress_update","position":99})], "and none of its own");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_many_pulls_keeps_each_users_order_and_is_all_acked() {
    let nats = NatsServer::start().await;
    let js = setup(&nats.url()).await;
    let node = Node::start(&config(&nats.url()));
    let users = ["u1", "u2", "u3", "u4"];
    let tvs: Vec<_> = users.iter().map(|u| node.device(u, "tv")).collect();
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    // 200 messages, users interleaved, written without waiting for each ack: 20 pull requests of
    // `batch` (10), relayed in chunks while the next ones are prefetched.
    let mut acks = Vec::new();
    for position in 1..=50 {
        for user in users {
            acks.push(js.publish(format!("sync.{user}"), progress("phone", position)).await.unwrap());
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    for (user, tv) in users.iter().zip(&tvs) {
        let got = collect(tv, 50, 15).await;
        let positions: Vec<u64> = got.iter().map(|v| v["position"].as_u64().unwrap()).collect();
        assert_eq!(positions, (1..=50).collect::<Vec<_>>(), "{user}'s messages in bus order, each once");
    }
    eventually(10, "all acked", || {
        let js = &js;
        async move { (unacked(js).await == (0, 0)).then_some(()) }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_messages_are_redelivered_once() {
    let nats = NatsServer::start().await;
    let js = setup(&nats.url()).await;
    let mut sequences = Vec::new();
    for position in 1..=5 {
        sequences.push(publish(&js, "sync.u1", progress("phone", position)).await);
    }
    // Another node fetched all five, delivered the first two and died before acking.
    {
        let dead = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let config = pull::Config { durable_name: Some("herald".into()), ack_wait: Duration::from_millis(500), ..Default::default() };
        let consumer = dead.get_stream("SYNC").await.unwrap().get_or_create_consumer("herald", config).await.unwrap();
        let mut batch = consumer.fetch().max_messages(5).messages().await.unwrap();
        let mut n = 0;
        while let Some(message) = batch.next().await {
            message.unwrap();
            n += 1;
        }
        assert_eq!(n, 5);
    }
    // Signed in before the source starts: the redelivered messages are relayed to it, not to nobody.
    let (node, [b]) = Node::start_with_devices(&config(&nats.url()), [("u1", "tv")]);
    for (i, sequence) in sequences.iter().take(2).enumerate() {
        let mut p = herald_core::Publication::new(
            "#server-to-user-u1",
            "progress_update",
            format!("{}", i + 1).into(),
            herald_core::DataKind::Json,
        );
        p.except_device = Some("phone".into());
        node.hub().publish_to_user_confirmed("u1", &p, Some(&format!("sync.u1:{sequence}"))).await.unwrap();
    }
    let got = collect(&b, 5, 15).await;
    eventually(10, "all acked", || {
        let js = &js;
        async move { (unacked(js).await == (0, 0)).then_some(()) }
    })
    .await;
    publish(&js, "sync.u1", progress("phone", 99)).await;
    let after = eventually(10, "marker", || async { Some(take(&b).await).filter(|f| !f.is_empty()) }).await;
    assert_eq!(after.len(), 1, "no duplicate before the marker: {after:?}");
    let positions: Vec<u64> = got.iter().map(|v| v.as_u64().or_else(|| v["position"].as_u64()).unwrap()).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5], "two delivered before the crash, three redelivered; none twice");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived() {
    let nats = NatsServer::start().await;
    setup(&nats.url()).await;
    let node = Node::start(&config(&nats.url()));
    let b = node.device("u1", "tv");
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    let (port, store) = nats.kill().await;
    eventually(10, "source down", || async { (!node.up()).then_some(()) }).await;
    assert!(!b.is_closed(), "connections stay up during the outage");
    let nats = NatsServer::restart(port, store).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    eventually(20, "source up again", || async { node.up().then_some(()) }).await;
    publish(&js, "sync.u1", progress("phone", 3)).await;
    let got = collect(&b, 1, 15).await;
    assert_eq!(got, vec![json!({"type":"progress_update","position":3})]);
    node.stop().await;
}
