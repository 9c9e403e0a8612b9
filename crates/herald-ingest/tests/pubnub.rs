//! The PubNub source against a small local server implementing the documented subscribe v2 endpoint
//! (`GET /v2/subscribe/{sub_key}/{channels}/0?tt=&tr=` answering `{"t":{"t","r"},"m":[{"c","d","p"}]}`;
//! PubNub's hosted service can't be reached from CI), and a real `redis-server` for the leader lock.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{collect, eventually, take, Node, RedisServer};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    /// (timetoken, channel, message JSON)
    messages: Vec<(u64, String, String)>,
    /// Request targets seen (path and query).
    requests: Vec<String>,
    /// Answer this many requests with 500.
    fail_next: usize,
    last: u64,
}

/// The subscribe endpoint, as documented: a handshake (`tt=0`) answers the current timetoken at once;
/// a poll answers the messages after `tt` (up to 100), or nothing after half a second.
struct FakePubNub {
    port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePubNub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePubNub {
    async fn start() -> FakePubNub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        FakePubNub { port, state, task }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn publish(&self, channel: &str, message: serde_json::Value) {
        let mut state = self.state.lock();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 / 100;
        state.last = now.max(state.last + 1);
        let tt = state.last;
        state.messages.push((tt, channel.to_owned(), message.to_string()));
    }

    fn uuids(&self) -> Vec<String> {
        let mut uuids: Vec<String> = self
            .state
            .lock()
            .requests
            .iter()
            .filter_map(|r| r.split("uuid=").nth(1).map(|u| u.split('&').next().unwrap().to_owned()))
            .collect();
        uuids.sort();
        uuids.dedup();
        uuids
    }
}

async fn serve(mut socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let target = text.split_whitespace().nth(1).unwrap_or("").to_owned();
    let tt: u64 = target.split("tt=").nth(1).and_then(|t| t.split('&').next()).and_then(|t| t.parse().ok()).unwrap_or(0);
    // The requested channels (`user.*` matches `user.<anything>`).
    let channels: Vec<String> = target
        .strip_prefix("/v2/subscribe/sub-key/")
        .and_then(|rest| rest.split_once("/0?"))
        .map(|(list, _)| list.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let wanted = |channel: &str| channels.iter().any(|c| c == channel || c.strip_suffix('*').is_some_and(|p| channel.starts_with(p)));
    let failing = {
        let mut s = state.lock();
        s.requests.push(target.clone());
        let failing = s.fail_next > 0;
        s.fail_next = s.fail_next.saturating_sub(1);
        failing
    };
    let (status, body) = if failing {
        ("500 Internal Server Error", r#"{"error":true}"#.to_owned())
    } else if !target.starts_with("/v2/subscribe/sub-key/") || channels.is_empty() {
        ("400 Bad Request", r#"{"error":"unexpected request"}"#.to_owned())
    } else if tt == 0 {
        let now = state.lock().last.max(1);
        ("200 OK", json!({"t": {"t": now.to_string(), "r": 1}, "m": []}).to_string())
    } else {
        let mut waited = 0;
        loop {
            let found: Vec<(u64, String, String)> =
                state.lock().messages.iter().filter(|m| m.0 > tt && wanted(&m.1)).take(100).cloned().collect();
            if !found.is_empty() || waited >= 25 {
                let next = found.last().map_or(tt, |m| m.0);
                let m: Vec<serde_json::Value> = found
                    .iter()
                    .map(|(t, c, d)| json!({"a":"1","f":0,"i":"backend","p":{"t":t.to_string(),"r":1},"k":"sub-key","c":c,"d":serde_json::from_str::<serde_json::Value>(d).unwrap()}))
                    .collect();
                break ("200 OK", json!({"t": {"t": next.to_string(), "r": 1}, "m": m}).to_string());
            }
            waited += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let response =
        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

fn config(origin: &str, lock: &str, uuid: &str) -> String {
    format!(
        r#"
[[sources]]
name = "pn"
app = "app-id"
[sources.pubnub]
origin = "{origin}"
subscribe_key = "sub-key"
channels = ["user.*"]
uuid = "{uuid}"
lock_url = "{lock}"
lock_ttl = 1
timeout = 5

[[sources.rules]]
origin = "user.{{user_id}}.sync"
user = "{{user_id}}"
event = "{{type}}"
keep = ["type", "n"]
origin_device = "device_id"
"#
    )
}

fn msg(n: u64) -> serde_json::Value {
    json!({"type":"progress_update","device_id":"phone","n":n})
}

fn numbers(frames: &[serde_json::Value]) -> Vec<u64> {
    frames.iter().map(|f| f["n"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_relayed_and_errors_resume_from_the_same_timetoken() {
    let redis = RedisServer::start().await;
    let pubnub = FakePubNub::start().await;
    let node = Node::start(&config(&pubnub.origin(), &redis.url(), "node-1"));
    let (phone, tv) = (node.device("u1", "phone"), node.device("u1", "tv"));
    eventually(10, "subscribed (past the handshake)", || async { (pubnub.state.lock().requests.len() >= 2).then_some(()) }).await;
    for n in 1..=3 {
        pubnub.publish("user.u1.sync", msg(n));
    }
    assert_eq!(numbers(&collect(&tv, 3, 10).await), vec![1, 2, 3]);
    pubnub.state.lock().fail_next = 3;
    for n in 4..=5 {
        pubnub.publish("user.u1.sync", msg(n));
    }
    assert_eq!(numbers(&collect(&tv, 2, 20).await), vec![4, 5], "after three failed polls, from where it stopped");
    pubnub.publish("user.u1.sync", json!({"type":"progress_update","device_id":"tv","n":6}));
    assert_eq!(numbers(&collect(&phone, 1, 10).await), vec![6], "the phone got only the tv's change");
    assert!(take(&tv).await.is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_leads_and_the_next_resumes_from_the_saved_cursor() {
    let redis = RedisServer::start().await;
    let pubnub = FakePubNub::start().await;
    let first = Node::start(&config(&pubnub.origin(), &redis.url(), "node-1"));
    let first_tv = first.device("u1", "tv");
    eventually(10, "node-1 leads", || async { (pubnub.uuids() == ["node-1"]).then_some(()) }).await;
    let second = Node::start(&config(&pubnub.origin(), &redis.url(), "node-2"));
    let second_tv = second.device("u1", "tv");
    for n in 1..=3 {
        pubnub.publish("user.u1.sync", msg(n));
    }
    assert_eq!(numbers(&collect(&first_tv, 3, 10).await), vec![1, 2, 3]);
    assert_eq!(pubnub.uuids(), ["node-1"], "only the leader subscribes");
    assert!(take(&second_tv).await.is_empty());
    // The leader stops (releasing the lock); what is published meanwhile is not lost.
    first.stop().await;
    for n in 4..=5 {
        pubnub.publish("user.u1.sync", msg(n));
    }
    assert_eq!(numbers(&collect(&second_tv, 2, 15).await), vec![4, 5], "resumed after 3, not from the start nor from now");
    assert_eq!(pubnub.uuids(), ["node-1", "node-2"]);
    second.stop().await;
}

/// The channel lists of the polls (not handshakes) made since the last call, as requested.
fn polled_channel_lists(pubnub: &FakePubNub, from: &mut usize) -> Vec<String> {
    let state = pubnub.state.lock();
    let lists = state.requests[*from..]
        .iter()
        .filter_map(|r| r.strip_prefix("/v2/subscribe/sub-key/").and_then(|rest| rest.split_once("/0?")).map(|(list, _)| list.to_owned()))
        .collect();
    *from = state.requests.len();
    lists
}

fn interest_config(origin: &str, lock: &str, uuid: &str) -> String {
    config(origin, lock, uuid)
        .replace(r#"channels = ["user.*"]"#, "user_channels = [\"user.{user}.sync\"]\ninterest_refresh = 0.1\nmax_users = 2")
}

/// A connection of `node` signed in as `user` from `device`: its id and outbox.
fn signed_in(node: &Node, user: &str, device: &str) -> (herald_core::SocketId, herald_core::Outbox) {
    let (id, outbox) = node.hub().connect().unwrap();
    node.hub().sign_in(id, user, Some(device)).unwrap();
    (id, outbox)
}

/// Polls `check` on the channel lists polled since `seen` until it holds for one of them.
async fn polls(pubnub: &FakePubNub, seen: &mut usize, what: &str, check: impl Fn(&str) -> bool) {
    eventually(10, what, || {
        let found = polled_channel_lists(pubnub, seen).iter().any(|l| check(l));
        async move { found.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_follows_the_users_connected_to_the_cluster() {
    let redis = RedisServer::start().await;
    let pubnub = FakePubNub::start().await;
    let leader = Node::start(&interest_config(&pubnub.origin(), &redis.url(), "node-1"));
    eventually(10, "node-1 leads", || async { leader.up().then_some(()) }).await;
    let standby = Node::start(&interest_config(&pubnub.origin(), &redis.url(), "node-2"));
    let mut seen = 0;
    // Nobody connected: no channel to subscribe to, so no request at all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(polled_channel_lists(&pubnub, &mut seen).is_empty(), "no poll without users");

    // u1 signs in on the leader: its channel is polled and its messages relayed (not others').
    let (phone, _phone_box) = signed_in(&leader, "u1", "phone");
    let (tv, tv_box) = signed_in(&leader, "u1", "tv");
    polls(&pubnub, &mut seen, "user.u1.sync polled", |l| l == "user.u1.sync").await;
    pubnub.publish("user.u9.sync", msg(99));
    pubnub.publish("user.u1.sync", msg(1));
    assert_eq!(numbers(&collect(&tv_box, 1, 10).await), vec![1]);

    // u2 signs in on the other node: the leader adds its channel (cluster-wide, through Redis).
    let _u2 = standby.device("u2", "phone");
    polls(&pubnub, &mut seen, "u1 and u2 polled", |l| l == "user.u1.sync,user.u2.sync").await;

    // A third user, over max_users = 2: two are subscribed for, the third is counted as dropped.
    let (u3, _u3_box) = signed_in(&leader, "u3", "phone");
    let mut conn = redis.conn().await;
    let key = "herald:ingest:pn:leader:users";
    eventually(10, "three users in the interest set", || {
        let mut conn = conn.clone();
        async move { (redis::cmd("ZCARD").arg(key).query_async::<usize>(&mut conn).await.ok()? == 3).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lists = polled_channel_lists(&pubnub, &mut seen);
    assert!(lists.iter().all(|l| l.split(',').count() <= 2), "at most max_users users: {lists:?}");
    leader.hub().disconnect(u3);
    polls(&pubnub, &mut seen, "back to u1 and u2", |l| l == "user.u1.sync,user.u2.sync").await;

    // u2's node stops: its users expire (three refreshes) and the leader drops the channel.
    standby.stop().await;
    polls(&pubnub, &mut seen, "u2 dropped with its node", |l| l == "user.u1.sync").await;

    // u1 leaves: nothing left to poll for.
    leader.hub().disconnect(phone);
    leader.hub().disconnect(tv);
    eventually(10, "the interest set empty", || {
        let mut conn = conn.clone();
        async move { (redis::cmd("ZCARD").arg(key).query_async::<usize>(&mut conn).await.ok()? == 0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    polled_channel_lists(&pubnub, &mut seen);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(polled_channel_lists(&pubnub, &mut seen), Vec::<String>::new(), "no poll once nobody is connected");
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    leader.stop().await;
}
