//! Protocol-neutral publications: what a front (or an upstream consumer) publishes and what the engine
//! delivers, stores in history and carries between nodes. The engine never looks inside `data`; each
//! front encodes a publication to its own wire form.

use std::sync::Arc;

use bytes::Bytes;

use crate::ids::SocketId;

/// How a front should read a publication's `data` bytes. The engine only carries the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataKind {
    /// An opaque text (e.g. Pusher's HTTP `data` string, relayed verbatim as a JSON string).
    Text,
    /// The text of a JSON value (e.g. a client event's `data`, a Centrifugo publication).
    Json,
    /// Opaque binary (e.g. a protobuf payload); fronts that speak text refuse or encode it.
    Binary,
}

/// A place in a channel's stream: the offset (+1 per publication) and the stream's epoch, which
/// changes whenever the stream was lost, so a client can tell "a gap" from "no news".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The offset of the last publication (0: none yet).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: Arc<str>,
}

/// Who published (client events on presence channels carry the sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherInfo {
    /// The publishing user's id.
    pub user_id: Arc<str>,
    /// The user's info as the front encoded it (may be empty).
    pub info: Bytes,
}

/// One publication to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The channel.
    pub channel: Arc<str>,
    /// The event name (fronts without event names may leave it empty).
    pub event: Arc<str>,
    /// The payload, opaque to the engine.
    pub data: Bytes,
    /// How fronts read `data`.
    pub kind: DataKind,
    /// Who published, when known.
    pub publisher: Option<PublisherInfo>,
    /// Its place in the channel's stream, for channels with history.
    pub position: Option<StreamPosition>,
    /// A connection (on any node) that must not receive it: the originating socket.
    pub except: Option<SocketId>,
    /// A device (every connection of it, on any node) that must not receive it.
    pub except_device: Option<Arc<str>>,
    /// Key-value tags fronts may pass along (Centrifugo `tags`).
    pub tags: Vec<(Arc<str>, Arc<str>)>,
}

impl Publication {
    /// A publication of `data` as `event` on `channel`, with nothing else set.
    pub fn new(channel: impl Into<Arc<str>>, event: impl Into<Arc<str>>, data: Bytes, kind: DataKind) -> Publication {
        Publication {
            channel: channel.into(),
            event: event.into(),
            data,
            kind,
            publisher: None,
            position: None,
            except: None,
            except_device: None,
            tags: Vec::new(),
        }
    }
}
