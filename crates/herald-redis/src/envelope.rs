//! The binary envelope of a message between nodes: who sent it, what to do, and the opaque frame.
//!
//! Layout: `version (1) | kind (1) | node (16) | has_except (1) | except hi (8) | except lo (8) | frame`.
//! The receiving node drops its own messages (Redis echoes a publish to every subscriber, the sender
//! included) by comparing `node`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_core::{Remote, SocketId};

const VERSION: u8 = 1;
const DELIVER: u8 = 0;
const DELIVER_RETAIN: u8 = 1;
const TERMINATE: u8 = 2;
const HEADER: usize = 1 + 1 + 16 + 1 + 16;

/// Encodes `message` from `node`.
pub fn encode(node: u128, message: &Remote) -> Bytes {
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

/// Decodes an envelope; `None` if it is not one this version understands.
pub fn decode(mut b: Bytes) -> Option<(u128, Remote)> {
    if b.len() < HEADER || b[0] != VERSION {
        return None;
    }
    b.advance(1);
    let kind = b.get_u8();
    let node = b.get_u128();
    let has_except = b.get_u8() == 1;
    let (hi, lo) = (b.get_u64(), b.get_u64());
    let except = has_except.then(|| SocketId::from_parts(hi, lo));
    let message = match kind {
        DELIVER | DELIVER_RETAIN => Remote::Deliver { frame: b, except, retain: kind == DELIVER_RETAIN },
        TERMINATE => Remote::Terminate,
        _ => return None,
    };
    Some((node, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let except = SocketId::random();
        let m = Remote::Deliver { frame: Bytes::from_static(b"{\"event\":\"x\"}"), except: Some(except), retain: true };
        assert_eq!(decode(encode(7, &m)), Some((7, m)));
        assert_eq!(decode(encode(u128::MAX, &Remote::Terminate)), Some((u128::MAX, Remote::Terminate)));
        let plain = Remote::Deliver { frame: Bytes::new(), except: None, retain: false };
        assert_eq!(decode(encode(1, &plain)), Some((1, plain)));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode(Bytes::from_static(b"hello")), None);
        let mut wrong = BytesMut::from(&encode(1, &Remote::Terminate)[..]);
        wrong[0] = 9;
        assert_eq!(decode(wrong.freeze()), None);
    }
}
