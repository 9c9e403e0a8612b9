//! Property tests: every decoder of client input in the Pusher front (frames, their `data`, presence
//! `channel_data`, subscription and HTTP API signatures, channel names, publishes, HTTP API bodies)
//! returns a value or a clean error for any input, and never panics.
//!
//! Inputs are random text and bytes, and near-valid structures: JSON with random fields and types,
//! truncated and mutated frames, huge and malformed numbers, deep nesting. Cases per property: 512, or
//! `PROPTEST_CASES`. Nothing is persisted: a failure prints the minimal input, which becomes a named
//! regression test; `PROPTEST_RNG_SEED` repeats a run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::{App, Engine, Hub, SocketId};
use herald_pusher::auth::{self, RequestAuthError};
use herald_pusher::channel::{is_valid_name, Access, ChannelKind, MAX_CHANNEL_NAME, USER_CHANNEL_PREFIX};
use herald_pusher::publish::{self, Trigger, MAX_CHANNELS_PER_EVENT, MAX_EVENT_NAME};
use herald_pusher::wire::{self, ChannelData, Incoming, SigninData, SubscribeData, UnsubscribeData};
use herald_pusher::{Pusher, PusherApp, PusherConfig};
use proptest::prelude::*;
use proptest::sample::Index;

/// 512 cases per property unless `PROPTEST_CASES` says otherwise; no regression files are written.
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { base.cases } else { 512 };
    ProptestConfig { cases, failure_persistence: None, ..base }
}

/// A JSON-ish value, rendered to text by [`Json::render`] so that numbers and escapes can be malformed.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    /// A number literal, valid or not (`1e999999`, `01`, `NaN`, 400 digits).
    Num(String),
    /// A string, escaped correctly.
    Str(String),
    /// A string body inserted verbatim between quotes (`\ud800`, `\x`, raw control characters).
    Esc(String),
    Arr(Vec<Json>),
    /// Keys may repeat.
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn render(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Num(n) => n.clone(),
            Json::Str(s) => serde_json::to_string(s).unwrap(),
            Json::Esc(s) => format!("\"{s}\""),
            Json::Arr(items) => format!("[{}]", items.iter().map(Json::render).collect::<Vec<_>>().join(",")),
            Json::Obj(fields) => format!(
                "{{{}}}",
                fields.iter().map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.render())).collect::<Vec<_>>().join(",")
            ),
        }
    }

    /// In an object, the value of `name` if that key appears exactly once (a derived struct refuses a
    /// repeated known field; unknown fields may repeat).
    fn field(&self, name: &str) -> Option<&Json> {
        let Json::Obj(fields) = self else { return None };
        let mut found = fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        let first = found.next();
        found.next().is_none().then_some(first).flatten()
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        (1usize..400).prop_map(|n| "9".repeat(n)),
        (any::<bool>(), 1u32..1_000_000).prop_map(|(neg, e)| format!("1e{}{e}", if neg { "-" } else { "" })),
        prop::sample::select(vec!["-0", "0.0", "1.", ".5", "01", "+1", "-", "1e", "NaN", "Infinity", "-Infinity", "0x10", "1_000"])
            .prop_map(str::to_string),
    ]
}

fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z:_#.-]{0,12}",
        ".{0,20}",
        prop::sample::select(vec!["", "news", "private-a", "presence-room", "#server-to-user-1", "pusher:subscribe", "1234.5678"])
            .prop_map(str::to_string),
    ]
}

fn escape_body() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![r"\ud800", r"\udc00x", r"\u12", r"\x41", r"\", "\u{0}", "\n", r"\uD83D\uDE00", r#"\""#])
            .prop_map(str::to_string),
        "[\\\\\"a-z0-9u]{0,10}",
    ]
}

/// Field names a Pusher decoder looks for, plus noise.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["event", "channel", "data", "auth", "channel_data", "user_data", "user_id", "user_info", "id"])
            .prop_map(str::to_string),
        1 => short_text(),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Num),
        short_text().prop_map(Json::Str),
        escape_body().prop_map(Json::Esc),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(Json::Obj),
        ]
    })
}

/// An object (random fields and types), or that object's text as a JSON string (double encoding).
fn data_value() -> impl Strategy<Value = Json> {
    let obj = || prop::collection::vec((key(), json()), 0..5).prop_map(Json::Obj);
    prop_oneof![
        3 => obj(),
        2 => obj().prop_map(|o| Json::Str(o.render())),
        1 => json(),
        1 => json().prop_map(|v| Json::Str(v.render())),
    ]
}

/// A frame-shaped object: usually an `event`, and random other fields.
fn frame() -> impl Strategy<Value = Json> {
    let event = prop_oneof![4 => short_text().prop_map(Json::Str), 1 => json()];
    (event, prop::option::of(json()), prop::option::of(data_value()), prop::collection::vec((key(), json()), 0..3), any::<bool>()).prop_map(
        |(event, channel, data, extra, with_event)| {
            let mut fields = Vec::new();
            if with_event {
                fields.push(("event".to_string(), event));
            }
            if let Some(c) = channel {
                fields.push(("channel".into(), c));
            }
            if let Some(d) = data {
                fields.push(("data".into(), d));
            }
            fields.extend(extra);
            Json::Obj(fields)
        },
    )
}

/// Runs every decoder the session applies to a frame's text.
fn decode_all(text: &str) {
    if let Ok(frame) = Incoming::parse(text) {
        let _ = frame.data_as::<SubscribeData>();
        let _ = frame.data_as::<UnsubscribeData>();
        let _ = frame.data_as::<SigninData>();
        if let Some(sub) = frame.data_as::<SubscribeData>() {
            if let Some(cd) = sub.channel_data.as_deref() {
                let _ = wire::object::<ChannelData>(cd);
            }
        }
        if let Some(data) = frame.data.as_deref() {
            let _ = wire::object::<ChannelData>(data.get());
        }
    }
    let _ = wire::object::<ChannelData>(text);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn api_bodies_get_a_json_answer_never_a_dropped_connection(
        events in prop_oneof![
            6 => event_body().prop_map(|e| (false, e)),
            3 => prop::collection::vec(event_body(), 0..4).prop_map(|b| (true, Json::Obj(vec![("batch".into(), Json::Arr(b))]))),
            1 => prop::collection::vec(event_body(), 9..12).prop_map(|b| (true, Json::Obj(vec![("batch".into(), Json::Arr(b))]))),
            1 => json().prop_map(|j| (false, j)),
            1 => json().prop_map(|j| (true, j)),
        ],
        garbage in prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 0..100)),
    ) {
        let (batch, body) = events;
        let body = garbage.unwrap_or_else(|| body.render().into_bytes());
        let path = if batch { "/apps/app-id/batch_events" } else { "/apps/app-id/events" };
        let (status, answer) = signed_post(path, &body);
        prop_assert!((200..500).contains(&status), "status {} for {}", status, String::from_utf8_lossy(&body));
        let answer: Result<serde_json::Value, _> = serde_json::from_slice(&answer);
        prop_assert!(answer.is_ok_and(|a| a.is_object()), "not a JSON object answer ({}) for {}", status, String::from_utf8_lossy(&body));
    }

    #[test]
    fn frame_decoders_never_panic_on_random_text(text in ".{0,200}") {
        decode_all(&text);
    }

    #[test]
    fn frame_decoders_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        decode_all(&String::from_utf8_lossy(&bytes));
        // Bytes after a valid prefix, as a frame cut and spliced on the wire would arrive.
        decode_all(&format!("{{\"event\":\"pusher:subscribe\",\"data\":{}", String::from_utf8_lossy(&bytes)));
    }

    #[test]
    fn incoming_parse_accepts_only_objects_with_a_string_event(frame in frame()) {
        let text = frame.render();
        decode_all(&text);
        if let Ok(parsed) = Incoming::parse(&text) {
            prop_assert!(matches!(frame, Json::Obj(_)), "accepted a non-object: {text}");
            match frame.field("event") {
                Some(Json::Str(e)) => prop_assert_eq!(&parsed.event, e),
                Some(Json::Esc(_)) => {}
                other => prop_assert!(false, "accepted event {other:?} in {text}"),
            }
            if let Some(c) = frame.field("channel") {
                prop_assert!(matches!(c, Json::Str(_) | Json::Esc(_) | Json::Null), "accepted channel {c:?} in {text}");
            }
        }
    }

    #[test]
    fn incoming_parse_accepts_well_formed_frames(
        event in "[a-z:_-]{1,40}",
        channel in prop::option::of("[a-z-]{1,20}"),
        data in prop::option::of(json()),
        // Depth-4 values are well inside serde_json's recursion limit.
    ) {
        let mut fields = vec![("event".to_string(), Json::Str(event.clone()))];
        if let Some(c) = &channel {
            fields.push(("channel".into(), Json::Str(c.clone())));
        }
        // Only well-formed data: no malformed numbers or escapes.
        if let Some(d) = data.filter(well_formed) {
            fields.push(("data".into(), d));
        }
        let text = Json::Obj(fields).render();
        let parsed = Incoming::parse(&text);
        prop_assert!(parsed.is_ok(), "refused {text}: {parsed:?}");
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.event, event);
        prop_assert_eq!(parsed.channel, channel);
    }

    #[test]
    fn data_as_decodes_only_objects_with_the_right_field_types(data in data_value(), event in short_text()) {
        let text = Json::Obj(vec![("event".into(), Json::Str(event)), ("data".into(), data.clone())]).render();
        let Ok(frame) = Incoming::parse(&text) else { return Ok(()) };
        let subscribe = frame.data_as::<SubscribeData>();
        let unsubscribe = frame.data_as::<UnsubscribeData>();
        let signin = frame.data_as::<SigninData>();
        match &data {
            // An object: decodes iff the fields have the right types (checked where types are known).
            Json::Obj(_) => {
                if let Some(sub) = &subscribe {
                    let channel = data.field("channel");
                    prop_assert!(matches!(channel, Some(Json::Str(_) | Json::Esc(_))), "subscribe without a string channel: {text}");
                    if let Some(Json::Str(c)) = channel {
                        prop_assert_eq!(&sub.channel, c);
                    }
                    for optional in ["auth", "channel_data"] {
                        if let Some(v) = data.field(optional) {
                            prop_assert!(matches!(v, Json::Str(_) | Json::Esc(_) | Json::Null), "{optional} {v:?} accepted: {text}");
                        }
                    }
                }
                if signin.is_some() {
                    for required in ["auth", "user_data"] {
                        prop_assert!(matches!(data.field(required), Some(Json::Str(_) | Json::Esc(_))), "signin without {required}: {text}");
                    }
                }
                if unsubscribe.is_some() {
                    prop_assert!(matches!(data.field("channel"), Some(Json::Str(_) | Json::Esc(_))), "unsubscribe without a channel: {text}");
                }
            }
            // A string: decodes only if its content is an object (double-encoded data).
            Json::Str(inner) => {
                if subscribe.is_some() || unsubscribe.is_some() || signin.is_some() {
                    prop_assert!(inner.trim_start().starts_with('{'), "decoded string data that is not an object: {text}");
                }
            }
            // Arrays, numbers, booleans and null are never decoded as an object (`["a"]` is not `{"channel":"a"}`).
            _ => prop_assert!(subscribe.is_none() && unsubscribe.is_none() && signin.is_none(), "decoded non-object data: {text}"),
        }
    }

    #[test]
    fn well_formed_subscribe_data_decodes(
        channel in ".{0,30}",
        auth in prop::option::of(".{0,30}"),
        channel_data in prop::option::of(".{0,30}"),
        nulls in any::<bool>(),
        double_encoded in any::<bool>(),
        extra in prop::collection::vec(("x_[a-z]{1,6}", json()), 0..3),
    ) {
        let mut fields = vec![("channel".to_string(), Json::Str(channel.clone()))];
        let optional = |v: &Option<String>| v.clone().map(Json::Str).or(nulls.then_some(Json::Null));
        if let Some(a) = optional(&auth) {
            fields.push(("auth".into(), a));
        }
        if let Some(cd) = optional(&channel_data) {
            fields.push(("channel_data".into(), cd));
        }
        let extra: BTreeMap<String, Json> = extra.into_iter().filter(|(_, v)| well_formed(v)).collect();
        fields.extend(extra);
        let obj = Json::Obj(fields);
        let data = if double_encoded { Json::Str(obj.render()) } else { obj };
        let text = Json::Obj(vec![("event".into(), Json::Str("pusher:subscribe".into())), ("data".into(), data)]).render();
        let frame = Incoming::parse(&text).unwrap();
        let sub = frame.data_as::<SubscribeData>();
        prop_assert!(sub.is_some(), "refused {text}");
        let sub = sub.unwrap();
        prop_assert_eq!(sub.channel, channel);
        prop_assert_eq!(sub.auth, auth);
        prop_assert_eq!(sub.channel_data, channel_data);
    }

    #[test]
    fn channel_data_requires_an_object_with_user_id(value in json()) {
        let text = value.render();
        if wire::object::<ChannelData>(&text).is_ok() {
            prop_assert!(value.field("user_id").is_some(), "accepted {text}");
        }
    }

    #[test]
    fn truncated_frames_are_refused(frame in frame(), cut in any::<Index>()) {
        let text = frame.render();
        let boundaries: Vec<usize> = (0..text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        let at = boundaries[cut.index(boundaries.len())];
        let prefix = &text[..at];
        decode_all(prefix);
        prop_assert!(Incoming::parse(prefix).is_err(), "accepted a truncated frame {prefix:?}");
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in frame(),
        edits in prop::collection::vec((any::<Index>(), 0u8..3, prop::sample::select(vec!["", "{", "}", "[", "\"", "\\", ",", ":", "\u{0}", "é", "\u{fffd}", "1e9999"])), 1..6),
    ) {
        let mut text = frame.render();
        for (at, op, piece) in edits {
            let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let i = boundaries[at.index(boundaries.len())];
            match op {
                0 => text.insert_str(i, piece),
                1 => {
                    let end = boundaries.iter().copied().find(|&j| j > i).unwrap_or(i);
                    text.replace_range(i..end, piece);
                }
                _ => text.truncate(i),
            }
        }
        decode_all(&text);
    }

    #[test]
    fn deep_nesting_is_refused_cleanly(depth in 0usize..1000, kind in 0u8..4, closed in any::<bool>()) {
        let (open, close, leaf) = match kind {
            0 => ("[", "]", ""),
            1 => ("{\"a\":", "}", "1"),
            2 => ("{\"user_id\":", "}", "\"u\""),
            _ => ("[{\"x\":", "}]", "null"),
        };
        let nested = format!("{}{leaf}{}", open.repeat(depth), if closed { close.repeat(depth) } else { String::new() });
        let text = format!("{{\"event\":\"e\",\"data\":{nested}}}");
        decode_all(&text);
        decode_all(&format!("{{\"event\":\"e\",\"data\":{}}}", serde_json::to_string(&nested).unwrap()));
        decode_all(&nested);
        let channel_data = format!("{{\"user_id\":\"u\",\"user_info\":{nested}}}");
        let _ = wire::object::<ChannelData>(&channel_data);
    }

    #[test]
    fn verify_token_never_panics(key in ".{0,20}", secret in ".{0,20}", message in ".{0,60}", token in ".{0,80}") {
        // A random token essentially never verifies; what matters here is that nothing panics.
        let _ = auth::verify_token(&key, &secret, &message, &token);
        let _ = auth::verify(&secret, &message, &token);
    }

    #[test]
    fn verify_token_accepts_its_signature_only(
        key in "[^:]{0,20}",
        secret in ".{0,20}",
        message in ".{0,60}",
        hexish in "[0-9a-fA-FxX:]{0,70}",
    ) {
        let signature = auth::sign(&secret, &message);
        let token = format!("{key}:{signature}");
        let verifies = |message: &str, token: &str| auth::verify_token(&key, &secret, message, token);
        prop_assert!(verifies(&message, &token), "own token refused");
        prop_assert!(verifies(&message, &format!("{key}:{}", signature.to_uppercase())), "upper-case hex refused");
        prop_assert!(!verifies(&message, &format!("{key}x:{signature}")), "another key accepted");
        prop_assert!(!verifies(&message, &token[..token.len() - 1]), "a cut signature accepted");
        prop_assert!(!verifies(&format!("{message}!"), &token), "a token for another message accepted");
        if !hexish.eq_ignore_ascii_case(&signature) {
            prop_assert!(!verifies(&message, &format!("{key}:{hexish}")), "random hex accepted");
        }
    }

    #[test]
    fn verify_request_refuses_random_requests(
        method in ".{0,10}",
        path in ".{0,40}",
        pairs in prop::collection::vec((query_key(), query_value()), 0..8),
        separator in prop::sample::select(vec!["&", ";", "&&", "=&"]),
        junk in ".{0,30}",
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(separator) + &junk;
        let result = auth::verify_request("app-key", "app-secret", &method, &path, &query, &body);
        // Signatures are random text here: no request can verify.
        prop_assert!(result.is_err(), "{query:?} verified");
    }

    #[test]
    fn verify_request_accepts_correctly_signed_requests(
        method in "[A-Z]{1,7}",
        path in "/[ -~]{0,40}",
        params in prop::collection::btree_map("[a-z][a-z0-9_]{0,9}", ".{0,20}", 0..5),
        body in prop::collection::vec(any::<u8>(), 0..64),
        skew in 0u64..=auth::MAX_CLOCK_SKEW_SECS - 5,
        past in any::<bool>(),
    ) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let ts = if past { now - skew } else { now + skew };
        let mut signed: BTreeMap<String, String> =
            params.into_iter().filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5").collect();
        signed.insert("auth_key".into(), "app-key".into());
        signed.insert("auth_timestamp".into(), ts.to_string());
        signed.insert("auth_version".into(), "1.0".into());
        if !body.is_empty() {
            signed.insert("body_md5".into(), auth::body_md5(&body));
        }
        let to_sign = signed.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let signature = auth::sign("app-secret", &format!("{method}\n{path}\n{to_sign}"));
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let query = signed.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&")
            + &format!("&auth_signature={signature}");
        prop_assert_eq!(auth::verify_request("app-key", "app-secret", &method, &path, &query, &body), Ok(()));
        prop_assert_eq!(
            auth::verify_request("app-key", "app-secret", &format!("{method}X"), &path, &query, &body),
            Err(RequestAuthError::BadSignature)
        );
        prop_assert_eq!(auth::verify_request("other-key", "app-secret", &method, &path, &query, &body), Err(RequestAuthError::WrongKey));
        if !body.is_empty() {
            let mut changed = body.clone();
            changed[0] ^= 1;
            prop_assert_eq!(
                auth::verify_request("app-key", "app-secret", &method, &path, &query, &changed),
                Err(RequestAuthError::BodyMismatch)
            );
        }
    }

    #[test]
    fn channel_name_checks_never_panic(name in channel_name()) {
        let kind = ChannelKind::of(&name);
        let _ = kind.allows_client_events();
        if is_valid_name(&name) {
            prop_assert!(!name.is_empty());
            match name.strip_prefix(USER_CHANNEL_PREFIX) {
                Some(user) => prop_assert!(!user.is_empty() && user.len() <= MAX_CHANNEL_NAME),
                None => {
                    prop_assert!(name.len() <= MAX_CHANNEL_NAME, "accepted {} bytes", name.len());
                    prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=@,.;".contains(&b)), "accepted {name:?}");
                }
            }
        }
        let expected = if name.starts_with("private-encrypted-") {
            Access::Encrypted
        } else if name.starts_with("private-") {
            Access::Private
        } else if name.starts_with("presence-") {
            Access::Presence
        } else if name.starts_with(USER_CHANNEL_PREFIX) {
            Access::User
        } else {
            Access::Public
        };
        prop_assert_eq!(kind.access, expected, "{:?}", name);
    }

    #[test]
    fn names_from_the_allowed_alphabet_are_valid(prefix in channel_prefix(), rest in "[A-Za-z0-9_=@,.;-]{1,164}") {
        let name: String = format!("{prefix}{rest}").chars().take(MAX_CHANNEL_NAME).collect();
        prop_assert!(is_valid_name(&name), "{:?}", name);
        if prefix != USER_CHANNEL_PREFIX {
            let too_long = format!("{name}{}", "x".repeat(MAX_CHANNEL_NAME + 1 - name.len()));
            prop_assert!(!is_valid_name(&too_long), "accepted {} bytes", too_long.len());
        }
    }

    #[test]
    fn publish_never_panics(
        name in prop_oneof![".{0,20}", "[a-z]{190,210}"],
        data in prop_oneof![json().prop_map(|j| j.render()), ".{0,50}", (10_230usize..10_250).prop_map(|n| "x".repeat(n))],
        channels in prop::collection::vec(channel_name(), 0..4),
        many in prop_oneof![Just(0usize), MAX_CHANNELS_PER_EVENT - 1..MAX_CHANNELS_PER_EVENT + 2],
        socket_id in prop::option::of(any::<(u64, u64)>()),
    ) {
        let hub = Hub::new(App::dev());
        let mut channels = channels;
        channels.extend((0..many).map(|i| format!("c{i}")));
        let trigger = Trigger { name: &name, data: &data, channels: &channels, socket_id: socket_id.map(|(h, l)| SocketId::from_parts(h, l)) };
        let validated = publish::validate(&hub, &trigger);
        let published = futures_util::FutureExt::now_or_never(publish::trigger(&hub, &trigger)).expect("memory publishing does not wait");
        prop_assert_eq!(validated.is_ok(), published.is_ok());
        if published.is_ok() {
            prop_assert!((1..=MAX_CHANNELS_PER_EVENT).contains(&channels.len()));
            prop_assert!(!name.is_empty() && name.len() <= MAX_EVENT_NAME);
            prop_assert!(data.len() <= hub.app().limits.max_event_size);
            prop_assert!(channels.iter().all(|c| is_valid_name(c)));
        }
    }
}

/// A Pusher front with the dev app on 127.0.0.1, serving for the rest of the test process.
fn api_server() -> SocketAddr {
    static SERVER: OnceLock<(tokio::runtime::Runtime, SocketAddr)> = OnceLock::new();
    let (_, addr) = SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let addr = runtime.block_on(async {
            let engine = Arc::new(Engine::new([App::dev()]));
            let front = Pusher::new(engine, vec![PusherApp::dev()], PusherConfig::default(), Default::default(), Default::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, front.router()).await });
            addr
        });
        (runtime, addr)
    });
    *addr
}

/// Sends a correctly signed `POST path` with `body` and returns the status and body of the answer.
fn signed_post(path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let query = format!("auth_key=app-key&auth_timestamp={ts}&auth_version=1.0&body_md5={}", auth::body_md5(body));
    let signature = auth::sign("app-secret", &format!("POST\n{path}\n{query}"));
    let head = format!(
        "POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(api_server()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    // A handler that panics drops the connection: no status line arrives.
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|t| t.get(..3)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(Vec::new(), |i| response[i + 4..].to_vec());
    (status, body)
}

/// An `events` body: the documented fields with random types and values, and noise.
fn event_body() -> impl Strategy<Value = Json> {
    // Mostly the documented types, so that many bodies get past decoding to validation and delivery.
    let name = prop_oneof![8 => "[a-z-]{1,20}".prop_map(Json::Str), 1 => json()];
    let data = prop_oneof![
        6 => short_text().prop_map(Json::Str),
        2 => json(),
        1 => (10_230usize..10_250).prop_map(|n| Json::Str("x".repeat(n))),
    ];
    let channel = prop_oneof![8 => channel_name().prop_map(Json::Str), 1 => json()];
    let channels = prop_oneof![
        8 => prop::collection::vec(channel_name().prop_map(Json::Str), 0..4).prop_map(Json::Arr),
        1 => (99usize..102).prop_map(|n| Json::Arr((0..n).map(|i| Json::Str(format!("c{i}"))).collect())),
        1 => json(),
    ];
    let socket_id = prop_oneof![8 => "[0-9.]{0,24}".prop_map(Json::Str), 1 => json()];
    let info = prop_oneof![
        8 => prop::sample::select(vec!["user_count", "subscription_count", "user_count,subscription_count", ",,"]).prop_map(|s| Json::Str(s.into())),
        1 => json(),
    ];
    let field =
        |name: &'static str, p: f64, value: BoxedStrategy<Json>| prop::option::weighted(p, value.prop_map(move |v| (name.to_string(), v)));
    (
        field("name", 0.95, name.boxed()),
        field("data", 0.95, data.boxed()),
        field("channel", 0.5, channel.boxed()),
        field("channels", 0.5, channels.boxed()),
        field("socket_id", 0.3, socket_id.boxed()),
        field("info", 0.3, info.boxed()),
        prop::collection::vec(
            prop_oneof![4 => "x_[a-z]{1,5}", 1 => key()].prop_flat_map(|k| json().prop_map(move |v| (k.clone(), v))),
            0..2,
        ),
    )
        .prop_map(|(a, b, c, d, e, f, extra)| Json::Obj([a, b, c, d, e, f].into_iter().flatten().chain(extra).collect()))
}

/// Parsing well-formed output of this file's own generator: no malformed numbers or escapes anywhere.
fn well_formed(v: &Json) -> bool {
    match v {
        Json::Esc(_) => false,
        Json::Num(n) => serde_json::from_str::<serde_json::Value>(n).is_ok(),
        Json::Arr(items) => items.iter().all(well_formed),
        Json::Obj(fields) => fields.iter().all(|(_, v)| well_formed(v)),
        Json::Null | Json::Bool(_) | Json::Str(_) => true,
    }
}

fn query_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["auth_key", "AUTH_KEY", "auth_signature", "auth_timestamp", "auth_version", "body_md5", "info", "", "%"])
            .prop_map(str::to_string),
        "[a-z_%]{1,10}",
    ]
}

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["app-key", "1.0", "%", "%zz", "%ff%fe", "+", "18446744073709551615", "-1", "99999999999999999999", ""])
            .prop_map(str::to_string),
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9a-f]{64}",
        ".{0,20}",
    ]
}

fn channel_prefix() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "private-",
        "private-encrypted-",
        "presence-",
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
        USER_CHANNEL_PREFIX,
    ])
}

fn channel_name() -> impl Strategy<Value = String> {
    prop_oneof![
        (channel_prefix(), ".{0,20}").prop_map(|(p, r)| format!("{p}{r}")),
        (channel_prefix(), "[a-z0-9_=@,.;-]{0,20}").prop_map(|(p, r)| format!("{p}{r}")),
        (channel_prefix(), 150usize..200).prop_map(|(p, n)| format!("{p}{}", "a".repeat(n))),
        ".{0,10}",
    ]
}

/// Inputs far beyond what the properties generate: they must be refused cleanly too.
#[test]
fn oversized_inputs_are_refused_cleanly() {
    let long_name = "e".repeat(1 << 20);
    let frame = Incoming::parse(&format!("{{\"event\":\"{long_name}\"}}")).unwrap();
    assert_eq!(frame.event.len(), 1 << 20);
    let digits = "9".repeat(100_000);
    decode_all(&format!("{{\"event\":\"e\",\"data\":{{\"channel\":{digits}}}}}"));
    decode_all(&format!("{{\"event\":\"e\",\"data\":{digits}e99999999999999999999}}"));
    // serde_json skips raw and ignored values without recursing, so deep `data` is kept as raw JSON
    // (bounded by the frame size limit) but never decoded as an object; typed values stop at its
    // recursion limit.
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    for deep in [&deep_array, &deep_object] {
        if let Ok(frame) = Incoming::parse(&format!("{{\"event\":\"e\",\"data\":{deep}}}")) {
            assert!(frame.data_as::<SubscribeData>().is_none());
            assert!(frame.data_as::<SigninData>().is_none());
        }
        assert!(wire::object::<ChannelData>(&format!("{{\"user_id\":{deep}}}")).is_err(), "beyond serde_json's recursion limit");
        let _ = wire::object::<ChannelData>(&format!("{{\"user_id\":\"u\",\"user_info\":{deep}}}"));
    }
    let query = "auth_key=app-key&".repeat(50_000);
    assert!(auth::verify_request("app-key", "app-secret", "POST", "/", &query, b"{}").is_err());
}
