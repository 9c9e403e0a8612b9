//! WebSocket plumbing shared by Herald's fronts (Pusher, Centrifugo).
//!
//! The engine (`herald-core`) knows no HTTP or WebSocket, and each front knows only its own wire
//! format; what lies between — accepting the HTTP upgrade by hand and the socket that a session and
//! delivering tasks share — is the same for every front, so it lives here once:
//!
//! - [`WsUpgrade`]: the RFC 6455 upgrade checks and the 101 answer (with an optional subprotocol),
//!   the upgraded stream handed to a tracked task;
//! - [`SharedSocket`]: the connection's socket behind a mutex that the session locks for one poll at a
//!   time and delivering tasks only `try_lock`, implementing the engine's
//!   [`DirectWrite`](herald_core::DirectWrite), and recording delivery latency into the histogram of
//!   the front that owns the connection.

mod socket;
mod upgrade;

pub use socket::{text, FrameKind, SharedSocket};
pub use upgrade::{Socket, WsUpgrade};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes tungstenite reads at a time (and keeps per connection): small, since every idle connection
/// keeps it and tungstenite grows it for larger frames.
pub const READ_BUFFER: usize = 256;
/// Queued outgoing bytes after which tungstenite writes without waiting for a flush.
pub const WRITE_BATCH: usize = 8192;

/// The WebSocket settings of a server connection: frames and messages up to `max_message` bytes, and
/// at most one write batch plus `outbox_bytes` (the connection's outbox bound, at least 64 KiB) waiting
/// in tungstenite's write buffer, so a client that never reads can't grow it without limit.
pub fn config(max_message: usize, outbox_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BATCH)
        .max_write_buffer_size(WRITE_BATCH.saturating_add(outbox_bytes.max(64 * 1024)))
}
