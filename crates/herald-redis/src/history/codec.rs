//! The binary form of a publication in a Redis history stream.
//!
//! Layout (integers big-endian, every string and byte field prefixed by its length as a u32):
//! `version (1) | kind (1) | flags (1) | channel | event | data | [publisher user id | publisher info]
//! | [except device] | tag count (u32) | tags (key | value)...`; flag bit 0 says a publisher follows,
//! bit 1 an excluded device. The position is not stored (the entry's id is the offset, the stream's
//! meta holds the epoch), nor the excluded connection (meaningless once its client reconnects).
//!
//! What Redis returns is untrusted (anyone who can write to the Redis can write an entry), so
//! [`decode_publication`] checks everything: version, kind, flags, every length against what is left
//! (so a huge length or tag count allocates nothing), UTF-8 of every text, no trailing bytes. Exactly
//! the byte strings [`encode_publication`] produces are accepted.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::{DataKind, Publication, PublisherInfo};

const VERSION: u8 = 1;
const PUBLISHER: u8 = 1;
const EXCEPT_DEVICE: u8 = 2;

/// Why a publication cannot be encoded, or bytes from Redis are not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    /// A field's length or a count runs past the end.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A version this node does not read.
    #[error("unknown version {0}")]
    Version(u8),
    /// An unknown data kind.
    #[error("unknown data kind {0}")]
    Kind(u8),
    /// Flag bits this version does not define.
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    /// A text field that is not UTF-8.
    #[error("a text field is not valid UTF-8")]
    NotUtf8,
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A field longer than a u32 length (encoding only).
    #[error("a field is longer than 4 GiB")]
    TooLong,
    /// A data kind this codec does not know yet (encoding only).
    #[error("a data kind this codec does not know")]
    UnknownKind,
}

/// Encodes `publication` for a history stream.
pub(crate) fn encode_publication(publication: &Publication) -> Result<Bytes, CodecError> {
    let kind = match publication.kind {
        DataKind::Text => 0,
        DataKind::Json => 1,
        DataKind::Binary => 2,
        _ => return Err(CodecError::UnknownKind),
    };
    let mut flags = 0;
    if publication.publisher.is_some() {
        flags |= PUBLISHER;
    }
    if publication.except_device.is_some() {
        flags |= EXCEPT_DEVICE;
    }
    let tags: usize = publication.tags.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let publisher = publication.publisher.as_ref().map_or(0, |p| 8 + p.user_id.len() + p.info.len());
    let device = publication.except_device.as_ref().map_or(0, |d| 4 + d.len());
    let size = 3 + 12 + publication.channel.len() + publication.event.len() + publication.data.len() + publisher + device + 4 + tags;
    let mut b = BytesMut::with_capacity(size);
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u8(flags);
    put(&mut b, publication.channel.as_bytes())?;
    put(&mut b, publication.event.as_bytes())?;
    put(&mut b, &publication.data)?;
    if let Some(p) = &publication.publisher {
        put(&mut b, p.user_id.as_bytes())?;
        put(&mut b, &p.info)?;
    }
    if let Some(device) = &publication.except_device {
        put(&mut b, device.as_bytes())?;
    }
    b.put_u32(u32::try_from(publication.tags.len()).map_err(|_| CodecError::TooLong)?);
    for (k, v) in &publication.tags {
        put(&mut b, k.as_bytes())?;
        put(&mut b, v.as_bytes())?;
    }
    Ok(b.freeze())
}

fn put(b: &mut BytesMut, field: &[u8]) -> Result<(), CodecError> {
    b.put_u32(u32::try_from(field.len()).map_err(|_| CodecError::TooLong)?);
    b.put_slice(field);
    Ok(())
}

/// Reads fields off a byte string, checking every length.
struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, CodecError> {
        if self.bytes.len() - self.at < n {
            return Err(CodecError::Truncated(self.at));
        }
        let field = self.bytes.slice(self.at..self.at + n);
        self.at += n;
        Ok(field)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn bytes(&mut self) -> Result<Bytes, CodecError> {
        let n = self.u32()?;
        self.take(n)
    }

    fn text(&mut self) -> Result<Arc<str>, CodecError> {
        let b = self.bytes()?;
        std::str::from_utf8(&b).map(Arc::from).map_err(|_| CodecError::NotUtf8)
    }
}

/// Decodes and validates a publication read from a history stream (its `position` and `except` are
/// left unset).
pub(crate) fn decode_publication(bytes: Bytes) -> Result<Publication, CodecError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let kind = match r.u8()? {
        0 => DataKind::Text,
        1 => DataKind::Json,
        2 => DataKind::Binary,
        other => return Err(CodecError::Kind(other)),
    };
    let flags = r.u8()?;
    if flags & !(PUBLISHER | EXCEPT_DEVICE) != 0 {
        return Err(CodecError::Flags(flags));
    }
    let channel = r.text()?;
    let event = r.text()?;
    let data = r.bytes()?;
    let mut publication = Publication::new(channel, event, data, kind);
    if flags & PUBLISHER != 0 {
        let user_id = r.text()?;
        publication.publisher = Some(PublisherInfo { user_id, info: r.bytes()? });
    }
    if flags & EXCEPT_DEVICE != 0 {
        publication.except_device = Some(r.text()?);
    }
    let tags = r.u32()?;
    // Each tag takes at least 8 bytes: a count beyond what is left is refused before allocating.
    if tags > (r.bytes.len() - r.at) / 8 {
        return Err(CodecError::Truncated(r.at));
    }
    publication.tags.reserve_exact(tags);
    for _ in 0..tags {
        let key = r.text()?;
        publication.tags.push((key, r.text()?));
    }
    if r.at != r.bytes.len() {
        return Err(CodecError::Trailing(r.bytes.len() - r.at));
    }
    Ok(publication)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = Arc<str>> {
        "\\PC{0,12}".prop_map(|s: String| Arc::from(s.as_str()))
    }

    fn publication() -> impl Strategy<Value = Publication> {
        (
            text(),
            text(),
            proptest::collection::vec(any::<u8>(), 0..40),
            0u8..3,
            proptest::option::of((text(), proptest::collection::vec(any::<u8>(), 0..10))),
            proptest::option::of(text()),
            proptest::collection::vec((text(), text()), 0..4),
        )
            .prop_map(|(channel, event, data, kind, publisher, except_device, tags)| {
                let kind = [DataKind::Text, DataKind::Json, DataKind::Binary][kind as usize];
                let mut p = Publication::new(channel, event, Bytes::from(data), kind);
                p.publisher = publisher.map(|(user_id, info)| PublisherInfo { user_id, info: Bytes::from(info) });
                p.except_device = except_device;
                p.tags = tags;
                p
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_publication_round_trips(p in publication()) {
            let encoded = encode_publication(&p).unwrap();
            prop_assert_eq!(decode_publication(encoded).unwrap(), p);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes_the_same(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = decode_publication(Bytes::from(bytes.clone())) {
                prop_assert_eq!(&encode_publication(&p).unwrap()[..], &bytes[..]);
            }
        }

        #[test]
        fn a_damaged_publication_never_panics(p in publication(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut bytes = encode_publication(&p).unwrap().to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = decode_publication(Bytes::from(bytes.clone()));
            bytes.truncate(cut.index(bytes.len()));
            prop_assert!(decode_publication(Bytes::from(bytes)).is_err(), "a truncated publication is refused");
        }
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let p = Publication::new("c", "e", Bytes::from_static(b"d"), DataKind::Json);
        let good = encode_publication(&p).unwrap().to_vec();
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            decode_publication(Bytes::from(v))
        };
        assert_eq!(with(0, 9), Err(CodecError::Version(9)));
        assert_eq!(with(1, 3), Err(CodecError::Kind(3)));
        assert_eq!(with(2, 4), Err(CodecError::Flags(4)));
        assert_eq!(with(7, 0xff), Err(CodecError::NotUtf8));
        assert_eq!(with(3, 0xff), Err(CodecError::Truncated(7)), "a length past the end");
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_publication(Bytes::from(trailing)), Err(CodecError::Trailing(1)));
        let mut many_tags = good[..good.len() - 4].to_vec();
        many_tags.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode_publication(Bytes::from(many_tags)), Err(CodecError::Truncated(_))), "a huge tag count allocates nothing");
    }
}
