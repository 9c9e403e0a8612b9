//! Property tests of every Centrifugo decoder: JSON command frames, protobuf command frames, the
//! unidirectional connect request and tokens. Any input gives commands or a clean error, never a
//! panic; protobuf commands survive encode → decode; a frame cut anywhere is only an error; a token
//! changed anywhere never verifies.
//!
//! Cases per property: 512, or `PROPTEST_CASES`. Nothing is persisted.

use herald_centrifugo::protobuf::{self, wire};
use herald_centrifugo::protocol::Method;
use herald_centrifugo::{json, CentrifugoApp, Verifier};
use proptest::prelude::*;
use prost::Message;

fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { base.cases } else { 512 };
    ProptestConfig { cases, failure_persistence: None, ..base }
}

/// Text shaped like JSON commands, often subtly wrong.
fn near_command() -> impl Strategy<Value = String> {
    let method = prop::sample::select(vec![
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "rpc",
        "send",
        "refresh",
        "sub_refresh",
        "x",
    ]);
    let value = prop_oneof![
        Just("{}".to_string()),
        Just("null".to_string()),
        Just("[]".to_string()),
        "[a-z0-9\"{}:,\\[\\] ]{0,40}",
        ("[a-z]{0,8}", any::<i64>())
            .prop_map(|(c, n)| format!("{{\"channel\":\"{c}\",\"offset\":{n},\"limit\":{n},\"data\":{{\"a\":{n}}}}}")),
        any::<u64>().prop_map(|n| format!("{{\"since\":{{\"offset\":\"{n}\",\"epoch\":1}},\"subs\":{{\"a\":{{\"recover\":true}}}}}}")),
    ];
    let id = prop_oneof![
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("4294967296".to_string()),
        any::<u32>().prop_map(|n| n.to_string())
    ];
    prop::collection::vec((id, method, value), 0..4)
        .prop_map(|cmds| cmds.into_iter().map(|(id, m, v)| format!("{{\"id\":{id},\"{m}\":{v}}}")).collect::<Vec<_>>().join("\n"))
}

fn command() -> impl Strategy<Value = wire::Command> {
    let text = "[a-z:#\\-]{0,12}";
    prop_oneof![
        (any::<u32>(), text, any::<u64>(), text, any::<bool>()).prop_map(|(id, channel, offset, epoch, recover)| wire::Command {
            id,
            subscribe: Some(wire::SubscribeRequest { channel, offset, epoch, recover, ..Default::default() }),
            ..Default::default()
        }),
        (any::<u32>(), text, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(id, channel, data)| wire::Command {
            id,
            publish: Some(wire::PublishRequest { channel, data: data.into() }),
            ..Default::default()
        }),
        (any::<u32>(), text).prop_map(|(id, token)| wire::Command {
            id,
            connect: Some(wire::ConnectRequest { token, ..Default::default() }),
            ..Default::default()
        }),
        (any::<u32>(), text, any::<i32>(), any::<bool>()).prop_map(|(id, channel, limit, reverse)| wire::Command {
            id,
            history: Some(wire::HistoryRequest { channel, limit, reverse, since: None }),
            ..Default::default()
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn json_frames_decode_or_fail_cleanly(text in prop_oneof![".{0,200}", near_command()]) {
        let (commands, error) = json::decode_frame(&text);
        prop_assert!(commands.len() <= json::MAX_COMMANDS_PER_FRAME);
        if error.is_none() {
            prop_assert_eq!(commands.len(), text.split('\n').filter(|l| !l.trim().is_empty()).count());
        }
        let _ = json::decode_connect_request(&text);
    }

    #[test]
    fn protobuf_frames_of_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let (commands, _) = protobuf::decode_frame(&bytes);
        prop_assert!(commands.len() <= json::MAX_COMMANDS_PER_FRAME);
    }

    #[test]
    fn protobuf_commands_round_trip_and_cut_frames_only_fail(cmds in prop::collection::vec(command(), 1..5), cut in any::<prop::sample::Index>()) {
        let mut frame = Vec::new();
        for c in &cmds {
            c.encode_length_delimited(&mut frame).unwrap();
        }
        let (decoded, error) = protobuf::decode_frame(&frame);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded.len(), cmds.len());
        for (d, c) in decoded.iter().zip(&cmds) {
            prop_assert_eq!(d.id, c.id);
            match (&d.method, c) {
                (Method::Subscribe(s), wire::Command { subscribe: Some(w), .. }) => {
                    prop_assert_eq!((&s.channel, s.offset, &s.epoch, s.recover), (&w.channel, w.offset, &w.epoch, w.recover));
                }
                (Method::Publish { channel, data }, wire::Command { publish: Some(w), .. }) => {
                    prop_assert_eq!((channel, data), (&w.channel, &w.data));
                }
                (Method::Connect(r), wire::Command { connect: Some(w), .. }) => prop_assert_eq!(&r.token, &w.token),
                (Method::History(h), wire::Command { history: Some(w), .. }) => prop_assert_eq!((h.limit, h.reverse), (w.limit, w.reverse)),
                (other, _) => prop_assert!(false, "decoded {:?}", other),
            }
        }
        let at = cut.index(frame.len());
        let (partial, _) = protobuf::decode_frame(&frame[..at]);
        prop_assert!(partial.len() <= cmds.len());
    }

    #[test]
    fn tokens_changed_anywhere_never_verify(garbage in ".{0,300}", flip in any::<prop::sample::Index>(), with in any::<char>()) {
        let verifier = Verifier::new(&CentrifugoApp::dev()).unwrap();
        prop_assert!(verifier.connect(&garbage, 0).is_err());
        prop_assert!(verifier.subscribe(&garbage, 0).is_err());
        let valid = valid_token();
        prop_assert_eq!(verifier.connect(&valid, 0).map(|c| c.user), Ok("u".to_string()));
        let mut chars: Vec<char> = valid.chars().collect();
        let i = flip.index(chars.len());
        if chars[i] != with {
            chars[i] = with;
            let changed: String = chars.into_iter().collect();
            // Base64url has spare bits: a change in the last character may decode to the same bytes.
            if i + 1 != valid.len() {
                prop_assert!(verifier.connect(&changed, 0).is_err(), "{} verified", changed);
            }
        }
    }
}

/// An HS256 token for `{"sub":"u"}` signed with the dev app's secret.
fn valid_token() -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(b"app-secret");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &serde_json::json!({ "sub": "u" }), &key).expect("encodes")
}
