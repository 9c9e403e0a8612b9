//! Wire encodings. Each front registers a [`Codec`] with the engine and connects its subscribers with
//! that codec's id; delivery encodes a publication (or a channel event) lazily, **once per codec per
//! publish**, and queues the same bytes to every subscriber of that codec. A channel with subscribers of
//! three encodings costs three encodings, never one per subscriber.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::change::ChannelEvent;
use crate::publication::Publication;

/// Encodes what the engine delivers into one front's wire frames. `None`: this encoding has no form
/// for it (the subscriber skips it).
pub trait Codec: Send + Sync + 'static {
    /// The frame of `publication`.
    fn publication(&self, publication: &Publication) -> Option<Bytes>;
    /// The frame of an engine event on `channel`.
    fn event(&self, channel: &str, event: &ChannelEvent) -> Option<Bytes>;
}

/// Which codec a subscriber uses: an index into the engine's codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CodecId(pub(crate) u8);

impl CodecId {
    /// The built-in [`RawCodec`], registered first in every engine.
    pub const RAW: CodecId = CodecId(0);
}

/// Codecs one engine can hold.
pub(crate) const MAX_CODECS: usize = 8;

/// The built-in codec: a publication's `data` as it is, and no frames for engine events. For tests and
/// in-process embedders that put finished frames in `data`.
#[derive(Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    fn publication(&self, publication: &Publication) -> Option<Bytes> {
        Some(publication.data.clone())
    }

    fn event(&self, _: &str, _: &ChannelEvent) -> Option<Bytes> {
        None
    }
}

/// The registered codecs (lock-free to read: delivery looks a codec up per publish).
pub(crate) struct Codecs {
    slots: [OnceLock<Arc<dyn Codec>>; MAX_CODECS],
    next: AtomicU8,
}

impl Codecs {
    pub(crate) fn new() -> Arc<Codecs> {
        let codecs = Codecs { slots: Default::default(), next: AtomicU8::new(0) };
        codecs.register(Arc::new(RawCodec));
        Arc::new(codecs)
    }

    /// Adds `codec`; `None` when all slots are taken.
    pub(crate) fn register(&self, codec: Arc<dyn Codec>) -> Option<CodecId> {
        let id = self.next.fetch_add(1, Ordering::AcqRel);
        let slot = self.slots.get(usize::from(id))?;
        slot.set(codec).ok()?;
        Some(CodecId(id))
    }

    pub(crate) fn get(&self, id: CodecId) -> Option<&Arc<dyn Codec>> {
        self.slots.get(usize::from(id.0))?.get()
    }
}

/// Frames of one delivery, encoded on first use per codec.
pub(crate) struct Encoded<'a, F> {
    codecs: &'a Codecs,
    frames: [Option<Option<Bytes>>; MAX_CODECS],
    encode: F,
}

impl<'a, F: Fn(&dyn Codec) -> Option<Bytes>> Encoded<'a, F> {
    pub(crate) fn new(codecs: &'a Codecs, encode: F) -> Self {
        Encoded { codecs, frames: Default::default(), encode }
    }

    /// The frame for subscribers of `codec` (encoded now if it is the first of them).
    pub(crate) fn frame(&mut self, codec: CodecId) -> Option<&Bytes> {
        let slot = self.frames.get_mut(usize::from(codec.0))?;
        if slot.is_none() {
            *slot = Some(self.codecs.get(codec).and_then(|c| (self.encode)(c.as_ref())));
        }
        slot.as_ref().and_then(Option::as_ref)
    }
}
