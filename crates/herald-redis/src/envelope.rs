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
mod tests;
