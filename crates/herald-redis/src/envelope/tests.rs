//! The envelope codec's tests: round trips, property tests, and refusals of what Redis may hand us.

use super::*;
use proptest::prelude::*;

fn decoded(b: Bytes) -> Option<(u128, Remote)> {
    decode(b).ok().map(|e| (e.node(), e.into_message()))
}

fn full() -> Publication {
    let mut p = Publication::new("presence-room", "client-move", Bytes::from_static(b"{\"x\":1}"), DataKind::Json);
    p.except = Some(SocketId::random());
    p.except_device = Some(Arc::from("phone"));
    p.publisher = Some(PublisherInfo { user_id: Arc::from("u1"), info: Bytes::from_static(b"{\"name\":\"A\"}") });
    p.position = Some(StreamPosition { offset: 42, epoch: Arc::from("ab12") });
    p.tags = vec![(Arc::from("k"), Arc::from("v"))];
    p
}

/// A subscribe with every optional field set (overrides both ways, some left unset).
fn full_subscribe() -> UserAction {
    UserAction::Subscribe {
        channel: Arc::from("c"),
        data: Some(Bytes::from_static(b"{}")),
        info: Some(Bytes::from_static(b"{\"role\":\"admin\"}")),
        recover_since: Some(StreamPosition { offset: 7, epoch: Arc::from("ep") }),
        overrides: SubscribeOverrides {
            presence: Some(true),
            join_leave: Some(false),
            force_push_join_leave: None,
            force_recovery: Some(true),
            force_positioning: None,
        },
    }
}

#[test]
fn round_trip() {
    for message in [
        Remote::Publish { publication: full() },
        Remote::Publish { publication: Publication::new("c", "e", Bytes::new(), DataKind::Text) },
        Remote::Publish { publication: Publication::new("c", "", Bytes::from_static(&[0xff, 0]), DataKind::Binary) },
        Remote::Event { event: ChannelEvent::MemberAdded(Member { user_id: Arc::from("u"), info: Bytes::new() }), except: None },
        Remote::Event { event: ChannelEvent::MemberRemoved { user_id: Arc::from("u") }, except: Some(SocketId::random()) },
        Remote::Event { event: ChannelEvent::Count { subscribers: 7 }, except: None },
        Remote::Terminate,
        Remote::Command(UserCommand {
            only: Some(SocketId::random()),
            except: vec![SocketId::random(), SocketId::random()],
            action: UserAction::Disconnect { code: 4000, reason: Arc::from("bye") },
        }),
        Remote::Command(UserCommand::all(UserAction::Unsubscribe { channel: Arc::from("news") })),
        Remote::Command(UserCommand::all(UserAction::subscribe("news", Some(Bytes::from_static(b"{}"))))),
        Remote::Command(UserCommand::all(UserAction::subscribe("news", None))),
        Remote::Command(UserCommand::all(full_subscribe())),
        Remote::Command(UserCommand::all(UserAction::Refresh { expire_at: Some(1_900_000_000), expired: false })),
        Remote::Command(UserCommand::all(UserAction::Refresh { expire_at: None, expired: true })),
    ] {
        assert_eq!(decoded(encode(7, &message)), Some((7, message)));
    }
}

fn deliver(data: &'static [u8], kind: DataKind) -> BytesMut {
    BytesMut::from(&encode(1, &Remote::Publish { publication: Publication::new("c", "e", Bytes::from_static(data), kind) })[..])
}

#[test]
fn garbage_is_refused_with_a_reason() {
    assert_eq!(decode(Bytes::from_static(b"hello")), Err(EnvelopeError::Short(5)));
    let mut wrong = deliver(b"", DataKind::Text);
    wrong[0] = 9;
    assert_eq!(decode(wrong.freeze()), Err(EnvelopeError::Version(9)));
    let mut kind = deliver(b"", DataKind::Text);
    kind[1] = 7;
    assert_eq!(decode(kind.freeze()), Err(EnvelopeError::Kind(7)));
    let mut long = deliver(b"", DataKind::Text);
    long[18..22].copy_from_slice(&1000u32.to_be_bytes());
    assert_eq!(decode(long.freeze()), Err(EnvelopeError::Truncated));
    let mut trailing = BytesMut::from(&encode(1, &Remote::Terminate)[..]);
    trailing.put_u8(b'x');
    assert_eq!(decode(trailing.freeze()), Err(EnvelopeError::Trailing(1)));
}

#[test]
fn commands_beyond_the_bounds_are_refused() {
    let long =
        Remote::Command(UserCommand::all(UserAction::Unsubscribe { channel: Arc::from("x".repeat(herald_core::MAX_COMMAND_TEXT + 1)) }));
    assert_eq!(decode(encode(1, &long)), Err(EnvelopeError::Bounds));
    let many = UserCommand {
        only: None,
        except: vec![SocketId::random(); herald_core::MAX_EXCEPT + 1],
        action: UserAction::Refresh { expire_at: None, expired: true },
    };
    assert_eq!(decode(encode(1, &Remote::Command(many))), Err(EnvelopeError::Bounds));
    let mut flag =
        BytesMut::from(&encode(1, &Remote::Command(UserCommand::all(UserAction::Refresh { expire_at: None, expired: true })))[..]);
    let last = flag.len() - 1;
    flag[last] = 2;
    assert_eq!(decode(flag.freeze()), Err(EnvelopeError::Flag(2)));
}

#[test]
fn subscribe_tails_round_trip_and_an_older_nodes_subscribe_still_decodes() {
    let overrides = SubscribeOverrides { force_positioning: Some(false), ..Default::default() };
    for action in [
        UserAction::Subscribe {
            channel: Arc::from("c"),
            data: None,
            info: Some(Bytes::new()),
            recover_since: None,
            overrides: SubscribeOverrides::default(),
        },
        UserAction::Subscribe {
            channel: Arc::from("c"),
            data: None,
            info: None,
            recover_since: Some(StreamPosition { offset: 0, epoch: Arc::from("") }),
            overrides: SubscribeOverrides::default(),
        },
        UserAction::Subscribe { channel: Arc::from("c"), data: None, info: None, recover_since: None, overrides },
    ] {
        let message = Remote::Command(UserCommand::all(action));
        assert_eq!(decoded(encode(5, &message)), Some((5, message)));
    }
    // A version 2 subscribe as nodes wrote it before the tail: header, no `only`, none spared,
    // kind 2, channel "news", data `{}`.
    let mut old = BytesMut::new();
    old.put_u8(2);
    old.put_u8(4);
    old.put_u128(9);
    old.put_u8(0);
    old.put_u16(0);
    old.put_u8(2);
    put_bytes(&mut old, b"news");
    old.put_u8(1);
    put_bytes(&mut old, b"{}");
    let expected = Remote::Command(UserCommand::all(UserAction::subscribe("news", Some(Bytes::from_static(b"{}")))));
    assert_eq!(decoded(old.clone().freeze()), Some((9, expected.clone())));
    assert_eq!(encode(9, &expected), old.freeze(), "a plain subscribe is still written the old way");
}

#[test]
fn subscribe_tails_out_of_bounds_or_saying_nothing_are_refused() {
    let with = |info: Option<Bytes>, epoch: &str| {
        Remote::Command(UserCommand::all(UserAction::Subscribe {
            channel: Arc::from("c"),
            data: None,
            info,
            recover_since: Some(StreamPosition { offset: 1, epoch: Arc::from(epoch) }),
            overrides: SubscribeOverrides::default(),
        }))
    };
    let big_info = with(Some(Bytes::from(vec![b'1'; herald_core::MAX_COMMAND_DATA + 1])), "e");
    assert_eq!(decode(encode(1, &big_info)), Err(EnvelopeError::Bounds));
    let long_epoch = with(None, &"e".repeat(herald_core::MAX_COMMAND_TEXT + 1));
    assert_eq!(decode(encode(1, &long_epoch)), Err(EnvelopeError::Bounds));
    assert!(decode(encode(1, &with(Some(Bytes::from(vec![b'1'; herald_core::MAX_COMMAND_DATA])), "e"))).is_ok());

    // The tail of a plain subscribe: no info, no position, no override.
    let mut empty = BytesMut::from(&encode(1, &Remote::Command(UserCommand::all(UserAction::subscribe("c", None))))[..]);
    empty.put_slice(&[0, 0, 0, 0]);
    assert_eq!(decode(empty.freeze()), Err(EnvelopeError::Trailing(4)));
    let overrides = |set: u8, values: u8| {
        let mut b = BytesMut::from(&encode(1, &Remote::Command(UserCommand::all(UserAction::subscribe("c", None))))[..]);
        b.put_slice(&[0, 0, set, values]);
        decode(b.freeze())
    };
    assert_eq!(overrides(1 << 5, 0), Err(EnvelopeError::Flag(1 << 5)), "a sixth override");
    assert_eq!(overrides(1, 2), Err(EnvelopeError::Flag(1)), "a value for an override not set");
    assert!(overrides(0b11, 0b10).is_ok());
    // Cut anywhere in the tail: refused.
    let full = encode(1, &Remote::Command(UserCommand::all(full_subscribe())));
    let plain = encode(1, &Remote::Command(UserCommand::all(UserAction::subscribe("c", Some(Bytes::from_static(b"{}"))))));
    for len in plain.len() + 1..full.len() {
        assert!(decode(full.slice(..len)).is_err(), "cut at {len}");
    }
}

#[test]
fn text_that_is_not_utf8_is_refused() {
    assert_eq!(decode(deliver(&[0xff, 0xfe, 0xfd], DataKind::Text).freeze()), Err(EnvelopeError::NotUtf8));
    assert_eq!(decode(deliver(&[0xc3], DataKind::Json).freeze()), Err(EnvelopeError::NotUtf8));
    assert!(decode(deliver(&[0xff, 0xfe, 0xfd], DataKind::Binary).freeze()).is_ok(), "binary data is opaque");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Any bytes: no panic, and what is accepted is exactly what `encode` would write.
    #[test]
    fn decode_never_panics_and_accepts_only_canonical_envelopes(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        if let Ok(envelope) = decode(Bytes::from(bytes.clone())) {
            prop_assert_eq!(&encode(envelope.node(), &envelope.into_message())[..], &bytes[..]);
        }
    }

    /// Real envelopes with one byte changed or cut short: never a panic, and anything accepted is
    /// canonical.
    #[test]
    fn decode_of_mutated_envelopes_never_panics(at in 0usize..200, value in any::<u8>(), cut in 0usize..200) {
        let command = Remote::Command(UserCommand {
            only: Some(SocketId::random()),
            except: vec![SocketId::random()],
            action: full_subscribe(),
        });
        let message = if at % 2 == 0 { Remote::Publish { publication: full() } } else { command };
        let mut bytes = BytesMut::from(&encode(9, &message)[..]);
        let at = at % bytes.len();
        bytes[at] = value;
        bytes.truncate(bytes.len() - cut.min(bytes.len()));
        let bytes = bytes.freeze();
        if let Ok(envelope) = decode(bytes.clone()) {
            prop_assert_eq!(encode(envelope.node(), &envelope.into_message()), bytes);
        }
    }

    /// Publications with arbitrary fields survive the trip.
    #[test]
    fn publications_round_trip(
        channel in "[a-z-]{1,20}", event in ".{0,12}", text in ".{0,40}",
        offset in any::<u64>(), device in proptest::option::of("[a-z]{1,8}"),
    ) {
        let mut p = Publication::new(channel, event, Bytes::from(text), DataKind::Text);
        p.except_device = device.map(Arc::from);
        p.position = Some(StreamPosition { offset, epoch: Arc::from("e") });
        let message = Remote::Publish { publication: p };
        prop_assert_eq!(decoded(encode(3, &message)), Some((3, message)));
    }
}
