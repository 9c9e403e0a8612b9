//! The binary envelope of a message between nodes: who sent it and what to do: deliver a
//! publication, deliver an engine event, or terminate a user's connections.
//!
//! Layout (version 2): `version (1) | kind (1) | node (16) | body`, all integers big-endian, strings
//! and byte strings as `u32 length | bytes`, optional fields behind a `0`/`1` flag byte:
//! - publish (kind 0): `channel | event | data kind (1) | data | except socket? |
//!   except device? | publisher? (user | info) | position? (offset u64 | epoch) | tags (u16 count | key |
//!   value ...)`;
//! - event (kind 3): `except socket? | event kind (1) | member added: user | info; member removed: user;
//!   count: u64`;
//! - terminate (kind 2): nothing;
//! - user command (kind 4): `only socket? | except (u16 count | socket ...) | action kind (1) |
//!   disconnect (0): code u32 | reason; unsubscribe (1): channel; subscribe (2): channel | data? |
//!   [info? | recover_since? (offset u64 | epoch) | overrides set (1) | overrides values (1)];
//!   refresh (3): expire_at? u64 | expired flag`, within the engine's command bounds
//!   ([`herald_core::UserCommand::check`]). The subscribe's bracketed tail is written only when one
//!   of its fields is set (an older node's subscribe, without it, still decodes; an older node refuses
//!   one with it as trailing bytes rather than subscribe without what it asks); the override bytes
//!   are bit sets in the order presence, join_leave, force_push_join_leave, force_recovery,
//!   force_positioning, a value bit only where its override is set.
//!
//! The receiving node drops its own messages (Redis echoes a publish to every subscriber, the sender
//! included) by comparing `node`.
//!
//! Whatever arrives from Redis is untrusted input (anyone who can PUBLISH to the Redis can write it), so
//! [`decode`] only hands out an [`Envelope`] that passed every check: known version and kinds, flags of
//! 0 or 1, every length within the message, strings in UTF-8, text and JSON data in UTF-8 (fronts write
//! them as WebSocket text), nothing after the last field. Exactly the byte strings [`encode`] produces
//! are accepted, so a decoded envelope re-encodes to the same bytes.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_core::{
    ChannelEvent, DataKind, Member, Publication, PublisherInfo, Remote, SocketId, StreamPosition, SubscribeOverrides, UserAction,
    UserCommand,
};

const VERSION: u8 = 2;
const PUBLISH: u8 = 0;
const TERMINATE: u8 = 2;
const EVENT: u8 = 3;
const COMMAND: u8 = 4;
const HEADER: usize = 1 + 1 + 16;

/// A message from another node that passed validation; only [`decode`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    node: u128,
    message: Remote,
}

impl Envelope {
    /// The node that sent it.
    pub(crate) fn node(&self) -> u128 {
        self.node
    }

    /// What it asks this node to do.
    pub(crate) fn into_message(self) -> Remote {
        self.message
    }
}

/// Why bytes from Redis are not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    /// Shorter than the header.
    #[error("{0} bytes, shorter than the header")]
    Short(usize),
    /// A version this node does not speak.
    #[error("unknown version {0}")]
    Version(u8),
    /// An unknown message, data or event kind.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// A flag byte that is neither 0 nor 1.
    #[error("flag {0} is neither 0 nor 1")]
    Flag(u8),
    /// A field runs past the end of the message.
    #[error("a field runs past the end")]
    Truncated,
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A string (or text data) that is not valid UTF-8.
    #[error("a string is not valid UTF-8")]
    NotUtf8,
    /// A user command beyond the engine's bounds.
    #[error("a user command beyond the engine's bounds")]
    Bounds,
}

impl EnvelopeError {
    /// A short label for metrics.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            EnvelopeError::Short(_) => "short",
            EnvelopeError::Version(_) => "version",
            EnvelopeError::Kind(_) => "kind",
            EnvelopeError::Flag(_) => "flag",
            EnvelopeError::Truncated => "truncated",
            EnvelopeError::Trailing(_) => "trailing",
            EnvelopeError::NotUtf8 => "utf8",
            EnvelopeError::Bounds => "bounds",
        }
    }
}

fn put_bytes(b: &mut BytesMut, bytes: &[u8]) {
    b.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    b.put_slice(&bytes[..bytes.len().min(u32::MAX as usize)]);
}

fn put_socket(b: &mut BytesMut, socket: Option<SocketId>) {
    match socket {
        Some(id) => {
            let (hi, lo) = id.parts();
            b.put_u8(1);
            b.put_u64(hi);
            b.put_u64(lo);
        }
        None => b.put_u8(0),
    }
}

fn put_opt_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            b.put_u8(1);
            put_bytes(b, s.as_bytes());
        }
        None => b.put_u8(0),
    }
}

fn put_opt_bytes(b: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            b.put_u8(1);
            put_bytes(b, bytes);
        }
        None => b.put_u8(0),
    }
}

/// The overrides in envelope order.
fn override_slots(o: &mut SubscribeOverrides) -> [&mut Option<bool>; 5] {
    [&mut o.presence, &mut o.join_leave, &mut o.force_push_join_leave, &mut o.force_recovery, &mut o.force_positioning]
}

/// The overrides as two bit sets: which are set, and their values.
fn override_bits(overrides: &SubscribeOverrides) -> (u8, u8) {
    let mut copy = *overrides;
    let (mut set, mut values) = (0u8, 0u8);
    for (bit, slot) in override_slots(&mut copy).into_iter().enumerate() {
        if let Some(value) = *slot {
            set |= 1 << bit;
            values |= u8::from(value) << bit;
        }
    }
    (set, values)
}

fn data_kind(kind: DataKind) -> u8 {
    match kind {
        DataKind::Text => 0,
        DataKind::Json => 1,
        _ => 2,
    }
}

fn put_command(b: &mut BytesMut, command: &UserCommand) {
    put_socket(b, command.only);
    // The engine checked the bounds ([`UserCommand::check`]): fewer than `u16::MAX` spared.
    let except = &command.except[..command.except.len().min(u16::MAX as usize)];
    b.put_u16(except.len() as u16);
    for socket in except {
        let (hi, lo) = socket.parts();
        b.put_u64(hi);
        b.put_u64(lo);
    }
    match &command.action {
        UserAction::Disconnect { code, reason } => {
            b.put_u8(0);
            b.put_u32(*code);
            put_bytes(b, reason.as_bytes());
        }
        UserAction::Unsubscribe { channel } => {
            b.put_u8(1);
            put_bytes(b, channel.as_bytes());
        }
        UserAction::Subscribe { channel, data, info, recover_since, overrides } => {
            b.put_u8(2);
            put_bytes(b, channel.as_bytes());
            put_opt_bytes(b, data.as_deref());
            if info.is_some() || recover_since.is_some() || !overrides.is_empty() {
                put_opt_bytes(b, info.as_deref());
                match recover_since {
                    Some(position) => {
                        b.put_u8(1);
                        b.put_u64(position.offset);
                        put_bytes(b, position.epoch.as_bytes());
                    }
                    None => b.put_u8(0),
                }
                let (set, values) = override_bits(overrides);
                b.put_u8(set);
                b.put_u8(values);
            }
        }
        UserAction::Refresh { expire_at, expired } => {
            b.put_u8(3);
            match expire_at {
                Some(at) => {
                    b.put_u8(1);
                    b.put_u64(*at);
                }
                None => b.put_u8(0),
            }
            b.put_u8(u8::from(*expired));
        }
        _ => b.put_u8(u8::MAX),
    }
}

/// Encodes `message` from `node`.
pub(crate) fn encode(node: u128, message: &Remote) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + 64);
    b.put_u8(VERSION);
    match message {
        Remote::Publish { publication: p } => {
            b.put_u8(PUBLISH);
            b.put_u128(node);
            put_bytes(&mut b, p.channel.as_bytes());
            put_bytes(&mut b, p.event.as_bytes());
            b.put_u8(data_kind(p.kind));
            put_bytes(&mut b, &p.data);
            put_socket(&mut b, p.except);
            put_opt_str(&mut b, p.except_device.as_deref());
            match &p.publisher {
                Some(info) => {
                    b.put_u8(1);
                    put_bytes(&mut b, info.user_id.as_bytes());
                    put_bytes(&mut b, &info.info);
                }
                None => b.put_u8(0),
            }
            match &p.position {
                Some(position) => {
                    b.put_u8(1);
                    b.put_u64(position.offset);
                    put_bytes(&mut b, position.epoch.as_bytes());
                }
                None => b.put_u8(0),
            }
            b.put_u16(u16::try_from(p.tags.len()).unwrap_or(u16::MAX));
            for (key, value) in p.tags.iter().take(u16::MAX as usize) {
                put_bytes(&mut b, key.as_bytes());
                put_bytes(&mut b, value.as_bytes());
            }
        }
        Remote::Event { event, except } => {
            b.put_u8(EVENT);
            b.put_u128(node);
            put_socket(&mut b, *except);
            match event {
                ChannelEvent::MemberAdded(m) => {
                    b.put_u8(0);
                    put_bytes(&mut b, m.user_id.as_bytes());
                    put_bytes(&mut b, &m.info);
                }
                ChannelEvent::MemberRemoved { user_id } => {
                    b.put_u8(1);
                    put_bytes(&mut b, user_id.as_bytes());
                }
                ChannelEvent::Count { subscribers } => {
                    b.put_u8(2);
                    b.put_u64(*subscribers as u64);
                }
                _ => b.put_u8(u8::MAX),
            }
        }
        Remote::Command(command) => {
            b.put_u8(COMMAND);
            b.put_u128(node);
            put_command(&mut b, command);
        }
        _ => {
            b.put_u8(TERMINATE);
            b.put_u128(node);
        }
    }
    b.freeze()
}

/// Reads fields off an untrusted message, every read checked.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), EnvelopeError> {
        if self.0.remaining() < n {
            return Err(EnvelopeError::Truncated);
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    fn flag(&mut self) -> Result<bool, EnvelopeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(EnvelopeError::Flag(other)),
        }
    }

    fn bytes(&mut self) -> Result<Bytes, EnvelopeError> {
        self.need(4)?;
        let len = self.0.get_u32() as usize;
        self.need(len)?;
        Ok(self.0.split_to(len))
    }

    fn str(&mut self) -> Result<Arc<str>, EnvelopeError> {
        let bytes = self.bytes()?;
        std::str::from_utf8(&bytes).map(Arc::from).map_err(|_| EnvelopeError::NotUtf8)
    }

    fn socket(&mut self) -> Result<Option<SocketId>, EnvelopeError> {
        if !self.flag()? {
            return Ok(None);
        }
        let (hi, lo) = (self.u64()?, self.u64()?);
        Ok(Some(SocketId::from_parts(hi, lo)))
    }

    fn publication(&mut self) -> Result<Publication, EnvelopeError> {
        let channel = self.str()?;
        let event = self.str()?;
        let kind = match self.u8()? {
            0 => DataKind::Text,
            1 => DataKind::Json,
            2 => DataKind::Binary,
            other => return Err(EnvelopeError::Kind(other)),
        };
        let data = self.bytes()?;
        if kind != DataKind::Binary && std::str::from_utf8(&data).is_err() {
            return Err(EnvelopeError::NotUtf8);
        }
        let mut p = Publication::new(channel, event, data, kind);
        p.except = self.socket()?;
        p.except_device = if self.flag()? { Some(self.str()?) } else { None };
        p.publisher = if self.flag()? { Some(PublisherInfo { user_id: self.str()?, info: self.bytes()? }) } else { None };
        p.position = if self.flag()? { Some(StreamPosition { offset: self.u64()?, epoch: self.str()? }) } else { None };
        self.need(2)?;
        let tags = self.0.get_u16();
        for _ in 0..tags {
            let key = self.str()?;
            p.tags.push((key, self.str()?));
        }
        Ok(p)
    }

    fn command(&mut self) -> Result<UserCommand, EnvelopeError> {
        let only = self.socket()?;
        self.need(2)?;
        let count = usize::from(self.0.get_u16());
        if count > herald_core::MAX_EXCEPT {
            return Err(EnvelopeError::Bounds);
        }
        let mut except = Vec::with_capacity(count);
        for _ in 0..count {
            except.push(SocketId::from_parts(self.u64()?, self.u64()?));
        }
        let action = match self.u8()? {
            0 => {
                self.need(4)?;
                let code = self.0.get_u32();
                UserAction::Disconnect { code, reason: self.str()? }
            }
            1 => UserAction::Unsubscribe { channel: self.str()? },
            2 => self.subscribe()?,
            3 => UserAction::Refresh { expire_at: if self.flag()? { Some(self.u64()?) } else { None }, expired: self.flag()? },
            other => return Err(EnvelopeError::Kind(other)),
        };
        let command = UserCommand { only, except, action };
        command.check().map_err(|_| EnvelopeError::Bounds)?;
        Ok(command)
    }

    /// A subscribe action (the last field of its envelope: a tail follows only if bytes remain).
    fn subscribe(&mut self) -> Result<UserAction, EnvelopeError> {
        let channel = self.str()?;
        let data = if self.flag()? { Some(self.bytes()?) } else { None };
        if !self.0.has_remaining() {
            return Ok(UserAction::subscribe(channel, data));
        }
        let info = if self.flag()? { Some(self.bytes()?) } else { None };
        let recover_since = if self.flag()? { Some(StreamPosition { offset: self.u64()?, epoch: self.str()? }) } else { None };
        let (set, values) = (self.u8()?, self.u8()?);
        // Five overrides; a value only where set; a tail saying nothing is not what `encode` writes.
        if set >> 5 != 0 || values & !set != 0 {
            return Err(EnvelopeError::Flag(set));
        }
        if info.is_none() && recover_since.is_none() && set == 0 {
            return Err(EnvelopeError::Trailing(4));
        }
        let mut overrides = SubscribeOverrides::default();
        for (bit, slot) in override_slots(&mut overrides).into_iter().enumerate() {
            *slot = (set & (1 << bit) != 0).then_some(values & (1 << bit) != 0);
        }
        Ok(UserAction::Subscribe { channel, data, info, recover_since, overrides })
    }

    fn event(&mut self) -> Result<ChannelEvent, EnvelopeError> {
        Ok(match self.u8()? {
            0 => ChannelEvent::MemberAdded(Member { user_id: self.str()?, info: self.bytes()? }),
            1 => ChannelEvent::MemberRemoved { user_id: self.str()? },
            2 => ChannelEvent::Count { subscribers: usize::try_from(self.u64()?).unwrap_or(usize::MAX) },
            other => return Err(EnvelopeError::Kind(other)),
        })
    }
}

/// Decodes and validates an envelope received from Redis.
pub(crate) fn decode(mut b: Bytes) -> Result<Envelope, EnvelopeError> {
    if b.len() < HEADER {
        return Err(EnvelopeError::Short(b.len()));
    }
    let version = b.get_u8();
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let kind = b.get_u8();
    let node = b.get_u128();
    let mut r = Reader(b);
    let message = match kind {
        PUBLISH => Remote::Publish { publication: r.publication()? },
        EVENT => {
            let except = r.socket()?;
            Remote::Event { event: r.event()?, except }
        }
        TERMINATE => Remote::Terminate,
        COMMAND => Remote::Command(r.command()?),
        other => return Err(EnvelopeError::Kind(other)),
    };
    if r.0.has_remaining() {
        return Err(EnvelopeError::Trailing(r.0.remaining()));
    }
    Ok(Envelope { node, message })
}

#[cfg(test)]
mod tests {
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
        let long = Remote::Command(UserCommand::all(UserAction::Unsubscribe {
            channel: Arc::from("x".repeat(herald_core::MAX_COMMAND_TEXT + 1)),
        }));
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
}
