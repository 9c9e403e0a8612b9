//! The binary envelope of a message between nodes: who sent it, what to do, and the frame.
//!
//! Layout: `version (1) | kind (1) | node (16) | has_except (1) | except hi (8) | except lo (8) | frame`.
//! The receiving node drops its own messages (Redis echoes a publish to every subscriber, the sender
//! included) by comparing `node`.
//!
//! Whatever arrives from Redis is untrusted input (anyone who can PUBLISH to the Redis can write it), so
//! [`decode`] only hands out an [`Envelope`] that passed every check: known version and kind, an
//! exclusion flag of 0 or 1 (and no exclusion id without it), no trailing bytes on a terminate, and a
//! frame that is valid UTF-8. The engine treats frames as opaque bytes; the UTF-8 rule is this crate's
//! because every front Herald has (Pusher) writes frames as WebSocket text. Exactly the byte strings
//! [`encode`] produces are accepted, so a decoded envelope re-encodes to the same bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_core::{Remote, SocketId};

const VERSION: u8 = 1;
const DELIVER: u8 = 0;
const DELIVER_RETAIN: u8 = 1;
const TERMINATE: u8 = 2;
const HEADER: usize = 1 + 1 + 16 + 1 + 16;

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

    /// What it asks this node to do; a `Deliver`'s frame is valid UTF-8.
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
    /// An unknown message kind.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// The exclusion flag is neither 0 nor 1.
    #[error("exclusion flag {0} is neither 0 nor 1")]
    ExceptFlag(u8),
    /// An exclusion id without the flag.
    #[error("an exclusion id without the flag")]
    StrayExcept,
    /// A terminate with bytes after the header.
    #[error("a terminate message with {0} trailing bytes")]
    Trailing(usize),
    /// A frame that is not valid UTF-8.
    #[error("the frame is not valid UTF-8")]
    NotUtf8,
}

impl EnvelopeError {
    /// A short label for metrics.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            EnvelopeError::Short(_) => "short",
            EnvelopeError::Version(_) => "version",
            EnvelopeError::Kind(_) => "kind",
            EnvelopeError::ExceptFlag(_) | EnvelopeError::StrayExcept => "except",
            EnvelopeError::Trailing(_) => "trailing",
            EnvelopeError::NotUtf8 => "utf8",
        }
    }
}

/// Encodes `message` from `node`.
pub(crate) fn encode(node: u128, message: &Remote) -> Bytes {
    let (kind, except, frame) = match message {
        Remote::Deliver { frame, except, retain } => (if *retain { DELIVER_RETAIN } else { DELIVER }, *except, &frame[..]),
        Remote::Terminate => (TERMINATE, None, &[][..]),
    };
    let mut b = BytesMut::with_capacity(HEADER + frame.len());
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u128(node);
    let (hi, lo) = except.map(SocketId::parts).unwrap_or((0, 0));
    b.put_u8(u8::from(except.is_some()));
    b.put_u64(hi);
    b.put_u64(lo);
    b.put_slice(frame);
    b.freeze()
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
    let flag = b.get_u8();
    let (hi, lo) = (b.get_u64(), b.get_u64());
    let except = match flag {
        1 => Some(SocketId::from_parts(hi, lo)),
        0 if (hi, lo) == (0, 0) => None,
        0 => return Err(EnvelopeError::StrayExcept),
        other => return Err(EnvelopeError::ExceptFlag(other)),
    };
    let message = match kind {
        DELIVER | DELIVER_RETAIN => {
            if std::str::from_utf8(&b).is_err() {
                return Err(EnvelopeError::NotUtf8);
            }
            Remote::Deliver { frame: b, except, retain: kind == DELIVER_RETAIN }
        }
        TERMINATE if except.is_some() => return Err(EnvelopeError::StrayExcept),
        TERMINATE if !b.is_empty() => return Err(EnvelopeError::Trailing(b.len())),
        TERMINATE => Remote::Terminate,
        other => return Err(EnvelopeError::Kind(other)),
    };
    Ok(Envelope { node, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(b: Bytes) -> Option<(u128, Remote)> {
        decode(b).ok().map(|e| (e.node(), e.into_message()))
    }

    #[test]
    fn round_trip() {
        let except = SocketId::random();
        let m = Remote::Deliver { frame: Bytes::from_static(b"{\"event\":\"x\"}"), except: Some(except), retain: true };
        assert_eq!(decoded(encode(7, &m)), Some((7, m)));
        assert_eq!(decoded(encode(u128::MAX, &Remote::Terminate)), Some((u128::MAX, Remote::Terminate)));
        let plain = Remote::Deliver { frame: Bytes::new(), except: None, retain: false };
        assert_eq!(decoded(encode(1, &plain)), Some((1, plain)));
    }

    fn header() -> BytesMut {
        BytesMut::from(&encode(1, &Remote::Deliver { frame: Bytes::new(), except: None, retain: false })[..])
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(decode(Bytes::from_static(b"hello")), Err(EnvelopeError::Short(5)));
        let mut wrong = header();
        wrong[0] = 9;
        assert_eq!(decode(wrong.freeze()), Err(EnvelopeError::Version(9)));
        let mut kind = header();
        kind[1] = 3;
        assert_eq!(decode(kind.freeze()), Err(EnvelopeError::Kind(3)));
        let mut flag = header();
        flag[18] = 2;
        assert_eq!(decode(flag.freeze()), Err(EnvelopeError::ExceptFlag(2)));
        let mut stray = header();
        stray[20] = 1;
        assert_eq!(decode(stray.freeze()), Err(EnvelopeError::StrayExcept));
        let mut terminate = BytesMut::from(&encode(1, &Remote::Terminate)[..]);
        terminate.put_u8(b'x');
        assert_eq!(decode(terminate.freeze()), Err(EnvelopeError::Trailing(1)));
    }

    #[test]
    fn a_frame_that_is_not_utf8_is_refused() {
        let mut bad = header();
        bad.put_slice(&[0xff, 0xfe, 0xfd]);
        assert_eq!(decode(bad.freeze()), Err(EnvelopeError::NotUtf8));
        let mut split = header();
        split.put_slice("é".as_bytes().split_at(1).0);
        assert_eq!(decode(split.freeze()), Err(EnvelopeError::NotUtf8));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Any bytes: no panic, and what is accepted is exactly what `encode` would write.
        #[test]
        fn decode_never_panics_and_accepts_only_canonical_envelopes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            if let Ok(envelope) = decode(Bytes::from(bytes.clone())) {
                prop_assert_eq!(&encode(envelope.node(), &envelope.into_message())[..], &bytes[..]);
            }
        }

        /// Near-valid bytes (a real header with fields and tail mutated), so the checks past the length
        /// are exercised too.
        #[test]
        fn decode_of_mutated_headers_never_panics(
            kind in 0u8..4,
            flag in 0u8..3,
            hi in prop_oneof![Just(0u64), any::<u64>()],
            tail in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut b = BytesMut::new();
            b.put_u8(VERSION);
            b.put_u8(kind);
            b.put_u128(42);
            b.put_u8(flag);
            b.put_u64(hi);
            b.put_u64(0);
            b.put_slice(&tail);
            let bytes = b.freeze();
            if let Ok(envelope) = decode(bytes.clone()) {
                prop_assert_eq!(encode(envelope.node(), &envelope.into_message()), bytes);
            }
        }
    }
}
