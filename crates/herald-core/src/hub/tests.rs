use super::*;
use crate::broker::{Remote, Topic};
use crate::change::Transition;
use crate::codec::{Codec, CodecId};
use crate::engine::Engine;
use crate::error::{ConnectError, SignInError, SubscribeError};
use crate::outbox::Disconnect;
use crate::outbox::{Drained, OutboxLimits};
use crate::publication::{DataKind, Publication, StreamPosition};
use crate::AppLimits;
use crate::Broker;
use std::sync::atomic::AtomicUsize;

fn hub_with(limits: AppLimits) -> Hub {
    Hub::new(App { limits, ..App::dev() })
}

fn hub() -> Hub {
    hub_with(AppLimits::default())
}

fn connect(hub: &Hub) -> (SocketId, Outbox) {
    hub.connect().unwrap()
}

async fn frames(outbox: &Outbox) -> Vec<Bytes> {
    let mut out = Vec::new();
    if !outbox.is_empty() {
        outbox.drain(&mut out).await;
    }
    out
}

fn join(user: &str) -> Option<MemberJoin> {
    Some(MemberJoin { user_id: Arc::from(user), info: Bytes::from(format!("{{\"name\":\"{user}\"}}")) })
}

#[tokio::test]
async fn publish_reaches_subscribers_except_the_excluded_one() {
    let hub = hub();
    let (a, oa) = connect(&hub);
    let (b, ob) = connect(&hub);
    let (_c, oc) = connect(&hub);
    hub.subscribe(a, "news", None).unwrap();
    hub.subscribe(b, "news", None).unwrap();
    let frame = Bytes::from("hello");
    assert_eq!(hub.publish_raw("news", &frame, Some(a)), 1);
    assert!(frames(&oa).await.is_empty());
    assert_eq!(frames(&ob).await, vec![frame.clone()]);
    assert!(frames(&oc).await.is_empty(), "not subscribed");
    assert_eq!(hub.publish_raw("nobody-here", &frame, None), 0);
}

#[tokio::test]
async fn occupied_and_vacated_transitions() {
    let hub = hub();
    let (a, _) = connect(&hub);
    let (b, _) = connect(&hub);
    let s = hub.subscribe(a, "c", None).unwrap();
    assert_eq!(s.change.transitions, vec![Transition::Occupied]);
    let s = hub.subscribe(b, "c", None).unwrap();
    assert!(s.change.transitions.is_empty());
    assert_eq!(s.change.subscribers, 2);
    assert!(hub.subscribe(b, "c", None).unwrap().already);
    assert_eq!(hub.channel("c"), Some(ChannelInfo { subscribers: 2, users: None }));
    assert!(hub.unsubscribe(a, "c").unwrap().transitions.is_empty());
    assert!(hub.unsubscribe(a, "c").is_none(), "second unsubscribe is a no-op");
    assert_eq!(hub.unsubscribe(b, "c").unwrap().transitions, vec![Transition::Vacated]);
    assert_eq!(hub.channel("c"), None);
    assert!(hub.channels("").is_empty());
}

#[tokio::test]
async fn a_channel_keeps_presence_once_a_member_joins_whoever_came_first() {
    let hub = hub();
    let (anonymous, _) = connect(&hub);
    let (alice, _) = connect(&hub);
    hub.subscribe(anonymous, "room", None).unwrap();
    assert_eq!(hub.members("room"), None);
    let s = hub.subscribe(alice, "room", join("alice")).unwrap();
    assert!(matches!(&s.change.transitions[..], [Transition::MemberAdded(m)] if &*m.user_id == "alice"), "{s:?}");
    assert_eq!(hub.members("room").map(|m| m.len()), Some(1));
    assert_eq!(hub.channel("room"), Some(ChannelInfo { subscribers: 2, users: Some(1) }));
    let left = hub.unsubscribe(alice, "room").unwrap();
    assert!(matches!(&left.transitions[..], [Transition::MemberRemoved { user_id }] if &**user_id == "alice"), "{left:?}");
}

#[tokio::test]
async fn presence_is_per_user_across_tabs() {
    let hub = hub();
    let (tab1, _) = connect(&hub);
    let (tab2, _) = connect(&hub);
    let (bob, _) = connect(&hub);
    let s = hub.subscribe(tab1, "presence-room", join("alice")).unwrap();
    assert!(matches!(&s.change.transitions[..], [Transition::Occupied, Transition::MemberAdded(m)] if &*m.user_id == "alice"));
    let s = hub.subscribe(tab2, "presence-room", join("alice")).unwrap();
    assert!(s.change.transitions.is_empty(), "second tab adds no member");
    assert_eq!(s.members.unwrap().len(), 1);
    hub.subscribe(bob, "presence-room", join("bob")).unwrap();
    assert_eq!(hub.channel("presence-room"), Some(ChannelInfo { subscribers: 3, users: Some(2) }));

    assert!(hub.disconnect(tab1)[0].transitions.is_empty(), "alice still has a tab");
    let changes = hub.disconnect(tab2);
    assert_eq!(changes[0].transitions, vec![Transition::MemberRemoved { user_id: Arc::from("alice") }]);
    let mut ids: Vec<_> = hub.members("presence-room").unwrap().into_iter().map(|m| m.user_id).collect();
    ids.sort();
    assert_eq!(ids, vec![Arc::from("bob")]);
    let changes = hub.disconnect(bob);
    assert_eq!(changes[0].transitions, vec![Transition::MemberRemoved { user_id: Arc::from("bob") }, Transition::Vacated]);
    assert_eq!(hub.connection_count(), 0);
}

#[tokio::test]
async fn limits_are_enforced_per_connection_and_channel() {
    let hub = hub_with(AppLimits {
        max_connections: Some(2),
        max_channels_per_connection: 2,
        max_presence_members: 1,
        max_presence_member_size: 20,
        ..AppLimits::default()
    });
    let (a, _) = connect(&hub);
    let (b, _) = connect(&hub);
    assert_eq!(hub.connect().map(|(id, _)| id), Err(ConnectError::OverQuota { limit: 2 }));
    hub.subscribe(a, "x", None).unwrap();
    hub.subscribe(a, "y", None).unwrap();
    assert_eq!(hub.subscribe(a, "z", None).unwrap_err(), SubscribeError::TooManyChannels { limit: 2 });
    assert_eq!(hub.channel("z"), None, "a refused subscribe leaves no empty channel behind");
    hub.subscribe(b, "presence-p", join("u1")).unwrap();
    let (c, _) = {
        hub.disconnect(a);
        connect(&hub)
    };
    assert_eq!(hub.subscribe(c, "presence-p", join("u2")).unwrap_err(), SubscribeError::TooManyMembers { limit: 1 });
    let big = MemberJoin { user_id: Arc::from("u3"), info: Bytes::from(vec![b'x'; 21]) };
    assert!(matches!(hub.subscribe(c, "presence-q", Some(big)), Err(SubscribeError::MemberInfoTooLarge { size: 21, .. })));
    assert_eq!(hub.channel("presence-q"), None);
}

#[tokio::test]
async fn disabled_app_refuses_connections() {
    let hub = Hub::new(App { enabled: false, ..App::dev() });
    assert_eq!(hub.connect().map(|(id, _)| id), Err(ConnectError::AppDisabled));
}

#[tokio::test]
async fn user_routing_reaches_every_device_but_the_sender() {
    let hub = hub();
    let (phone, o_phone) = connect(&hub);
    let (tv, o_tv) = connect(&hub);
    let (web, o_web) = connect(&hub);
    for s in [phone, tv, web] {
        hub.sign_in(s, "u1", None).unwrap();
    }
    assert_eq!(hub.sign_in(phone, "u2", None), Err(SignInError::AlreadySignedIn));
    let mut progress = Publication::new("#user-u1", "progress", Bytes::from("progress"), DataKind::Text);
    progress.except = Some(phone);
    assert_eq!(hub.publish_to_user("u1", &progress), 2);
    assert!(frames(&o_phone).await.is_empty());
    assert_eq!(frames(&o_tv).await.len(), 1);
    assert_eq!(frames(&o_web).await.len(), 1);

    hub.disconnect(tv);
    assert_eq!(hub.terminate_user("u1"), 2);
    let mut out = Vec::new();
    assert_eq!(o_phone.drain(&mut out).await, Drained::Closed(Disconnect::Terminated));
    assert_eq!(o_web.drain(&mut out).await, Drained::Closed(Disconnect::Terminated));
    hub.disconnect(phone);
    hub.disconnect(web);
    assert_eq!(hub.terminate_user("u1"), 0, "user entry is gone with the last device");
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_still_receive() {
    let hub = hub_with(AppLimits { outbox: OutboxLimits { max_messages: 3, ..OutboxLimits::default() }, ..AppLimits::default() });
    let (slow, o_slow) = connect(&hub);
    let (fast, o_fast) = connect(&hub);
    hub.subscribe(slow, "c", None).unwrap();
    hub.subscribe(fast, "c", None).unwrap();
    let mut received = 0;
    for i in 0..10 {
        hub.publish_raw("c", &Bytes::from(format!("m{i}")), None);
        received += frames(&o_fast).await.len();
    }
    assert_eq!(received, 10, "the fast subscriber got everything");
    let mut out = Vec::new();
    assert_eq!(o_slow.drain(&mut out).await, Drained::Closed(Disconnect::SlowConsumer));
}

#[test]
fn engine_finds_apps_by_id() {
    let engine = Engine::new([App::dev(), App { id: "2".into(), enabled: false, ..App::dev() }]);
    assert!(engine.by_id("app-id").unwrap().app().enabled);
    assert!(!engine.by_id("2").unwrap().app().enabled);
    assert!(engine.by_id("nope").is_none());
}

/// Occupied/Vacated (and MemberAdded/MemberRemoved) are decided once per real transition even when
/// connections on different threads subscribe and leave the same channel at the same time.
#[test]
fn transitions_stay_balanced_under_concurrent_subscribe_and_leave() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 20_000;
    let hub = Arc::new(hub());
    let counts: Vec<[usize; 4]> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let hub = hub.clone();
                scope.spawn(move || {
                    let (socket, _outbox) = hub.connect().unwrap();
                    // Two threads share each user, so member transitions race as well.
                    let user = format!("u{}", t % 2);
                    let mut n = [0usize; 4];
                    let mut tally = |change: &ChannelChange| {
                        for t in &change.transitions {
                            match t {
                                Transition::Occupied => n[0] += 1,
                                Transition::Vacated => n[1] += 1,
                                Transition::MemberAdded(_) => n[2] += 1,
                                Transition::MemberRemoved { .. } => n[3] += 1,
                            }
                        }
                    };
                    for i in 0..ROUNDS {
                        let (channel, member) = if i % 2 == 0 { ("presence-room", join(&user)) } else { ("room", None) };
                        tally(&hub.subscribe(socket, channel, member).unwrap().change);
                        tally(&hub.unsubscribe(socket, channel).unwrap());
                    }
                    hub.disconnect(socket);
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let total = counts.iter().fold([0usize; 4], |acc, n| [acc[0] + n[0], acc[1] + n[1], acc[2] + n[2], acc[3] + n[3]]);
    assert!(total[0] > 0 && total[2] > 0, "the channels were occupied and members added: {total:?}");
    assert_eq!(total[0], total[1], "every Occupied has its Vacated: {total:?}");
    assert_eq!(total[2], total[3], "every MemberAdded has its MemberRemoved: {total:?}");
    assert!(hub.channels("").is_empty(), "no channel is left behind");
}

/// A broker that only records prepares and releases.
#[derive(Default)]
struct Recorder {
    senders: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    released: AtomicUsize,
}

impl Broker for Recorder {
    fn publish(&self, _: &str, _: &Topic, _: Remote) {}
    fn interest_changed(&self, _: &str, _: Topic) {}
    fn prepare(&self, _: &str, _: &Topic) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.senders.lock().push(tx);
        Some(rx)
    }
    fn release(&self, _: &str, _: &Topic) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }
    fn healthy(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
}

#[tokio::test]
async fn prepared_interest_is_released_on_every_exit() {
    let engine = Engine::new(vec![App::dev()]);
    let recorder = Arc::new(Recorder::default());
    assert!(engine.attach(recorder.clone()));
    let hub = engine.by_id("app-id").unwrap().clone();
    let released = || recorder.released.load(Ordering::SeqCst);

    let mut interest = hub.prepare_channel("a").expect("no local subscriber: prepared");
    recorder.senders.lock().pop().unwrap().send(()).unwrap();
    assert!(interest.ready().await);
    drop(interest);
    assert_eq!(released(), 1, "dropped after use");

    let interest = hub.prepare_user("u").unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _interest = interest;
        panic!("a bug while subscribing");
    }));
    assert!(panicked.is_err());
    assert_eq!(released(), 2, "released while unwinding");

    let mut interest = hub.prepare_channel("b").unwrap();
    let task = tokio::spawn(async move { interest.ready().await });
    task.abort();
    let _ = task.await;
    assert_eq!(released(), 3, "released when the waiting task is cancelled");
}

#[tokio::test]
async fn a_users_other_devices_get_it_but_not_the_origin_device() {
    let hub = hub();
    // Two tabs on the laptop, one phone.
    let (tab1, o_tab1) = connect(&hub);
    let (tab2, o_tab2) = connect(&hub);
    let (phone, o_phone) = connect(&hub);
    hub.sign_in(tab1, "u1", Some("laptop")).unwrap();
    hub.sign_in(tab2, "u1", Some("laptop")).unwrap();
    hub.subscribe(phone, "stream-1", None).unwrap();
    hub.sign_in(phone, "u1", Some("phone")).unwrap();
    let mut change = Publication::new("#user-u1", "sync", Bytes::from("{}"), DataKind::Json);
    change.except_device = Some(Arc::from("laptop"));
    assert_eq!(hub.publish_to_user("u1", &change), 1, "only the phone");
    assert!(frames(&o_tab1).await.is_empty() && frames(&o_tab2).await.is_empty());
    assert_eq!(frames(&o_phone).await.len(), 1);
    // Channel publications honour the device too (set at sign-in, after the phone subscribed).
    let mut on_channel = Publication::new("stream-1", "pos", Bytes::from("1"), DataKind::Json);
    on_channel.except_device = Some(Arc::from("phone"));
    assert_eq!(hub.publish(&on_channel), 0);
}

/// Counts its encodings.
struct Counting(AtomicUsize, &'static str);

impl Codec for Counting {
    fn publication(&self, p: &Publication) -> Option<Bytes> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Some(Bytes::from(format!("{}:{}", self.1, String::from_utf8_lossy(&p.data))))
    }
    fn event(&self, channel: &str, _: &crate::change::ChannelEvent) -> Option<Bytes> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Some(Bytes::from(format!("{}:event:{channel}", self.1)))
    }
}

#[tokio::test]
async fn delivery_encodes_once_per_codec_per_publish() {
    let engine = Engine::new(vec![App::dev()]);
    let (a, b) = (Arc::new(Counting(AtomicUsize::new(0), "a")), Arc::new(Counting(AtomicUsize::new(0), "b")));
    let id_a: CodecId = engine.register_codec(a.clone()).unwrap();
    let id_b = engine.register_codec(b.clone()).unwrap();
    let hub = engine.by_id("app-id").unwrap().clone();
    let mut boxes = Vec::new();
    for codec in [id_a, id_a, id_a, id_b, id_b, CodecId::RAW] {
        let (id, outbox) = hub.connect_with(codec).unwrap();
        hub.subscribe(id, "room", None).unwrap();
        boxes.push(outbox);
    }
    let p = Publication::new("room", "e", Bytes::from("x"), DataKind::Json);
    assert_eq!(hub.publish(&p), 6);
    assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (1, 1), "one encoding per codec");
    let got: Vec<Vec<Bytes>> = futures_frames(&boxes).await;
    assert_eq!(got[0], vec![Bytes::from("a:x")]);
    assert_eq!(got[3], vec![Bytes::from("b:x")]);
    assert_eq!(got[5], vec![Bytes::from("x")], "raw subscribers get the data as it is");
    // The same frame, shared (one allocation): refcounted clones point at the same bytes.
    assert_eq!(got[0][0].as_ptr(), got[1][0].as_ptr());
    hub.publish_event("room", &crate::change::ChannelEvent::Count { subscribers: 6 }, None);
    assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (2, 2));
}

async fn futures_frames(boxes: &[Outbox]) -> Vec<Vec<Bytes>> {
    let mut out = Vec::new();
    for b in boxes {
        out.push(frames(b).await);
    }
    out
}

#[tokio::test]
async fn publications_with_history_get_consecutive_positions_and_can_be_recovered() {
    let hub = hub();
    let (id, outbox) = connect(&hub);
    hub.subscribe(id, "stream-1", None).unwrap();
    let options = crate::history::HistoryOptions { size: 2, ttl: std::time::Duration::from_secs(60) };
    let p = |n: u8| Publication::new("stream-1", "e", Bytes::from(vec![b'0' + n]), DataKind::Text);
    let first = hub.publish_with_history(&p(1), options).await.unwrap();
    let second = hub.publish_with_history(&p(2), options).await.unwrap();
    let third = hub.publish_with_history(&p(3), options).await.unwrap();
    assert_eq!((first.offset, second.offset, third.offset), (1, 2, 3));
    assert!(first.epoch == third.epoch);
    assert_eq!(frames(&outbox).await, vec![Bytes::from("1"), Bytes::from("2"), Bytes::from("3")], "delivered in order");
    let missed = hub.history("stream-1", Some(&second), 10).await.unwrap();
    assert!(missed.recovered);
    assert_eq!(missed.publications.iter().map(|p| p.data.clone()).collect::<Vec<_>>(), vec![Bytes::from("3")]);
    let trimmed = hub.history("stream-1", Some(&StreamPosition { offset: 0, epoch: first.epoch.clone() }), 10).await.unwrap();
    assert!(!trimmed.recovered, "the first publication was trimmed (size 2)");
    assert_eq!(hub.stream_position("stream-1").await.unwrap(), third);
}

#[tokio::test]
async fn a_gap_in_offsets_from_other_nodes_is_told_to_subscribers() {
    let engine = Engine::new(vec![App::dev()]);
    let counting = Arc::new(Counting(AtomicUsize::new(0), "c"));
    let codec = engine.register_codec(counting.clone()).unwrap();
    let hub = engine.by_id("app-id").unwrap().clone();
    let (id, outbox) = hub.connect_with(codec).unwrap();
    hub.subscribe(id, "stream-1", None).unwrap();
    let in_epoch = |epoch: &str, offset: u64| {
        let mut p = Publication::new("stream-1", "e", Bytes::from(offset.to_string()), DataKind::Text);
        p.position = Some(StreamPosition { offset, epoch: Arc::from(epoch) });
        Remote::Publish { publication: p }
    };
    let at = |offset: u64| in_epoch("ep", offset);
    let topic = Topic::Channel(Arc::from("stream-1"));
    hub.receive(&topic, at(1));
    hub.receive(&topic, at(2));
    hub.receive(&topic, at(4));
    let got = frames(&outbox).await;
    assert_eq!(got, vec![Bytes::from("c:1"), Bytes::from("c:2"), Bytes::from("c:event:stream-1"), Bytes::from("c:4")]);
    // A late offset is delivered without moving the last one back: 5 follows 4 with no second gap.
    hub.receive(&topic, at(3));
    hub.receive(&topic, at(5));
    assert_eq!(frames(&outbox).await, vec![Bytes::from("c:3"), Bytes::from("c:5")]);
    // A new epoch (the stream was lost, e.g. Redis restarted) is a gap too.
    hub.receive(&topic, in_epoch("ep2", 1));
    assert_eq!(frames(&outbox).await, vec![Bytes::from("c:event:stream-1"), Bytes::from("c:1")]);
}

#[tokio::test]
async fn a_confirmed_publish_is_delivered_once_per_idempotency_key() {
    let mut app = App::dev();
    app.history.push(crate::app::HistoryRule {
        prefix: "stream-".into(),
        options: crate::history::HistoryOptions { size: 10, ttl: std::time::Duration::from_secs(60) },
    });
    let hub = Hub::new(app);
    let (id, outbox) = connect(&hub);
    hub.subscribe(id, "stream-1", None).unwrap();
    hub.subscribe(id, "plain", None).unwrap();
    let p = Publication::new("stream-1", "e", Bytes::from("x"), DataKind::Text);
    let first = hub.publish_confirmed(&p, None, Some("k1")).await.unwrap();
    assert!(matches!(&first, crate::hub::Published::Delivered { position: Some(pos) } if pos.offset == 1), "{first:?}");
    assert_eq!(hub.publish_confirmed(&p, None, Some("k1")).await.unwrap(), crate::hub::Published::Repeat);
    assert_eq!(frames(&outbox).await.len(), 1, "a retry is not delivered again");
    let plain = Publication::new("plain", "e", Bytes::from("y"), DataKind::Text);
    assert_eq!(hub.publish_confirmed(&plain, None, None).await.unwrap(), crate::hub::Published::Delivered { position: None });
    assert_eq!(frames(&outbox).await, vec![Bytes::from("y")]);
    let long = "k".repeat(300);
    assert!(hub.publish_confirmed(&plain, None, Some(&long)).await.is_err(), "keys are bounded");
}

#[tokio::test]
async fn channels_have_their_own_latency_while_occupied() {
    let hub = hub();
    let front = hub.latency().front("test");
    let (a, oa) = connect(&hub);
    let (b, ob) = connect(&hub);
    hub.subscribe(a, "news", None).unwrap();
    hub.subscribe(b, "sport", None).unwrap();
    hub.publish_raw("news", &Bytes::from("1"), None);
    hub.publish_raw("news", &Bytes::from("2"), None);
    hub.publish_raw("sport", &Bytes::from("3"), None);
    for outbox in [&oa, &ob] {
        let (mut out, mut stamps) = (Vec::new(), Vec::new());
        outbox.drain_stamped(&mut out, Some(&mut stamps)).await;
        let now = Stamp::now();
        stamps.iter().for_each(|s| front.record_n(*s, now, 1));
        outbox.written();
    }
    assert_eq!(front.snapshot().count(), 3);
    assert_eq!(hub.channel_latency("news").map(|s| s.count()), Some(2));
    assert_eq!(hub.channel_latency("sport").map(|s| s.count()), Some(1));
    assert_eq!(hub.latency().channels().in_use(), 2);
    hub.unsubscribe(b, "sport");
    assert_eq!(hub.channel_latency("sport"), None, "gone with the channel");
    assert_eq!(hub.latency().channels().in_use(), 1, "its slot is given back");
    hub.latency().set_recording(false);
    hub.subscribe(b, "quiet", None).unwrap();
    assert_eq!(hub.channel_latency("quiet"), None, "no slot while recording is off");
}
