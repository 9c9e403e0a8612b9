//! The PostgreSQL outbox source against a cluster of the test's own (initdb + pg_ctl on a free port):
//! rows reach the user's other devices and are deleted, rows another transaction holds are skipped and
//! relayed once it is gone, invalid rows are skipped and deleted, and an outage is survived.

mod common;

use common::{collect, eventually, take, Node, Postgres};
use serde_json::json;

const DDL: &str = "CREATE TABLE herald_outbox (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)";

fn config(url: &str) -> String {
    format!(
        r#"
[[sources]]
name = "outbox"
app = "app-id"
[sources.postgres]
url = "{url}"
batch = 10
poll = 0.2
timeout = 2

[[sources.rules]]
origin = "user.{{user_id}}.sync"
when = {{ type = "progress_update" }}
user = "{{user_id}}"
event = "{{type}}"
rename = {{ position_seconds = "position" }}
keep = ["type", "position"]
origin_device = "device_id"
"#
    )
}

fn progress(device: &str, position: u64) -> String {
    json!({"type":"progress_update","device_id":device,"position_seconds":position}).to_string()
}

async fn insert(client: &tokio_postgres::Client, channel: &str, payload: &str) {
    client.execute("INSERT INTO herald_outbox (channel, payload) VALUES ($1, $2::text::jsonb)", &[&channel, &payload]).await.unwrap();
    client.batch_execute("NOTIFY herald_outbox").await.unwrap();
}

async fn rows(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM herald_outbox", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reach_the_users_other_devices_and_are_deleted() {
    let pg = Postgres::start();
    let client = pg.client().await;
    client.batch_execute(DDL).await.unwrap();
    let node = Node::start(&config(&pg.url()));
    let (a, b) = (node.device("u1", "phone"), node.device("u1", "tv"));
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    for position in 1..=25 {
        insert(&client, "user.u1.sync", &progress("phone", position)).await;
    }
    let got = collect(&b, 25, 10).await;
    let positions: Vec<u64> = got.iter().map(|v| v["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=25).collect::<Vec<_>>(), "every row once, in id order");
    assert_eq!(got[0], json!({"type":"progress_update","position":1}));
    eventually(10, "rows deleted", || {
        let client = &client;
        async move { (rows(client).await == 0).then_some(()) }
    })
    .await;
    insert(&client, "user.u1.sync", &progress("tv", 99)).await;
    let marker = eventually(10, "the phone gets the tv's change", || async { Some(take(&a).await).filter(|f| !f.is_empty()) }).await;
    assert_eq!(marker, vec![json!({"type":"progress_update","position":99})], "and none of its own");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_held_by_another_transaction_are_skipped_then_relayed_once_it_is_gone() {
    let pg = Postgres::start();
    let client = pg.client().await;
    client.batch_execute(DDL).await.unwrap();
    for position in 1..=3 {
        insert(&client, "user.u1.sync", &progress("phone", position)).await;
    }
    // Another node claimed the first two rows and is still working on them.
    let mut other = pg.client().await;
    let held = other.transaction().await.unwrap();
    let locked = held.query("SELECT id FROM herald_outbox ORDER BY id LIMIT 2 FOR UPDATE SKIP LOCKED", &[]).await.unwrap();
    assert_eq!(locked.len(), 2);
    // tv signs in before the source starts: row 3, relayed before it, would reach nobody and be deleted.
    let (node, [b]) = Node::start_with_devices(&config(&pg.url()), [("u1", "tv")]);
    let first = collect(&b, 1, 10).await;
    assert_eq!(first, vec![json!({"type":"progress_update","position":3})], "the free row only");
    // That node dies: its transaction is rolled back and its rows are claimed here.
    drop(held);
    drop(other);
    let rest = collect(&b, 2, 10).await;
    let positions: Vec<u64> = rest.iter().map(|v| v["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, vec![1, 2]);
    eventually(10, "rows deleted", || {
        let client = &client;
        async move { (rows(client).await == 0).then_some(()) }
    })
    .await;
    assert!(take(&b).await.is_empty(), "nothing twice");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rows_are_skipped_and_an_outage_is_survived() {
    let pg = Postgres::start();
    let client = pg.client().await;
    client.batch_execute(DDL).await.unwrap();
    let node = Node::start(&config(&pg.url()));
    let b = node.device("u1", "tv");
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    insert(&client, "user.u1.sync", r#"{"type":"other"}"#).await;
    insert(&client, "elsewhere", &progress("phone", 1)).await;
    insert(&client, "user.u1.sync", r#"[1,2]"#).await;
    insert(&client, "user.u1.sync", &progress("phone", 2)).await;
    let got = collect(&b, 1, 10).await;
    assert_eq!(got, vec![json!({"type":"progress_update","position":2})], "the good row behind three bad ones");
    eventually(10, "bad rows deleted too", || {
        let client = &client;
        async move { (rows(client).await == 0).then_some(()) }
    })
    .await;
    drop(client);
    pg.stop();
    eventually(10, "source down", || async { (!node.up()).then_some(()) }).await;
    assert!(!b.is_closed(), "connections stay up during the outage");
    pg.restart();
    eventually(20, "source up again", || async { node.up().then_some(()) }).await;
    let client = pg.client().await;
    insert(&client, "user.u1.sync", &progress("phone", 3)).await;
    let got = collect(&b, 1, 10).await;
    assert_eq!(got, vec![json!({"type":"progress_update","position":3})]);
    node.stop().await;
}
