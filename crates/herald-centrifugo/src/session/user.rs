//! What a session does with a user command ([`herald_core::UserCommand`]): the server API's
//! `disconnect`, `unsubscribe`, `subscribe` and `refresh` reach every connection of the user on every
//! node through the engine, and each connection's session turns them into Centrifugo's behaviour:
//! a close with the operator's code and reason (plus a `disconnect` push on unidirectional
//! connections, which have no close frame to read it from), an `unsubscribe` push with code 2000, a
//! `subscribe` push (a server-side subscription; publications follow), a new expiry.
//!
//! A server-side subscription joins like a client's ([`join`]), with the command's member info and
//! option overrides as its grant and its `recover_since` as the request's recovery position. The
//! `subscribe` push has no room for recovered publications (Centrifugo's protocol: position, flags
//! and data), so when recovery succeeds the push carries the recovered-from offset and the missed
//! publications follow it as ordinary publications, before any live one (as the client would have
//! received them), joined into as few frames as the encoding allows; when it fails, or when what
//! was missed would not fit in the connection's outbox, the push carries the stream's current
//! position with `recovered: false` and none follow (the client reloads, rather than being closed as
//! a slow consumer).

use bytes::Bytes;
use herald_core::{StreamPosition, UserAction};

use super::commands::{join, Grant, Release, State};
use super::{Ctx, Ending, Handled};
use crate::codec::{ENGINE_USER_PREFIX, PERSONAL_PREFIX};
use crate::codes;
use crate::protocol::{Push, SubscribeRequest, SubscribeResult};
use crate::{json, Encoding};

/// Longest close reason a WebSocket close frame carries (125 bytes of payload less the code).
const MAX_CLOSE_REASON: usize = 123;

/// Applies `action` as the session's work of the moment (it owns the state meanwhile, so the session
/// keeps writing deliveries and reading frames while a command waits on the cluster).
pub(super) async fn run(ctx: Ctx, mut state: Box<State>, action: UserAction) -> Handled {
    let ending = apply(&ctx, &mut state, action).await;
    (state, ending)
}

/// Applies `action` to this connection; `Some` when the session must end.
async fn apply(ctx: &Ctx, state: &mut State, action: UserAction) -> Option<Ending> {
    match action {
        UserAction::Disconnect { code, reason } => {
            // Centrifugo's disconnect codes are 3000-4999; anything else is its default API disconnect.
            let code = u16::try_from(code).ok().filter(|c| (3000..5000).contains(c)).unwrap_or(codes::FORCE_NO_RECONNECT.0);
            let reason = if reason.is_empty() { codes::FORCE_NO_RECONNECT.1.to_string() } else { close_reason(&reason) };
            // Written just before the close (the outbox is closed by then, so it can't go through it).
            let push = (ctx.encoding == Encoding::UniJson)
                .then(|| ctx.encoding.push("", &Push::Disconnect { code: u32::from(code), reason: reason.clone() }));
            Some(Ending::Custom(code, reason, push))
        }
        UserAction::Unsubscribe { channel } => {
            // The personal channel is the user's own delivery, not a subscription that can be left:
            // it stays (telling the client otherwise while its publications keep coming would lie).
            if state.subs.get(&*channel)?.personal {
                return None;
            }
            state.subs.remove(&*channel);
            if let Some(change) = ctx.hub.leave(ctx.id, &channel).await {
                ctx.hub.announce(&change, Some(ctx.id));
            }
            let (code, reason) = codes::UNSUBSCRIBE_SERVER;
            ctx.send(ctx.encoding.push(&channel, &Push::Unsubscribe { code, reason: reason.into() }));
            None
        }
        UserAction::Subscribe { channel, data, info, recover_since, overrides } => {
            if !state.connected
                || !crate::options::valid_channel(&channel)
                || state.subs.contains_key(&*channel)
                || channel.starts_with(ENGINE_USER_PREFIX)
                || channel.starts_with(PERSONAL_PREFIX)
            {
                return None;
            }
            let since = recover_since.as_ref();
            let request = SubscribeRequest {
                channel: channel.to_string(),
                recover: since.is_some(),
                offset: since.map_or(0, |p| p.offset),
                epoch: since.map_or_else(String::new, |p| p.epoch.to_string()),
                ..Default::default()
            };
            // Deliveries held until the subscribe push and the recovered publications are queued.
            let mut release = Release::new(ctx, &channel);
            match join(ctx, state, &request, Grant { info, expire_at: None, overrides }, &mut release).await {
                Ok(mut result) => {
                    // JSON clients take JSON data only.
                    result.data = data.filter(|d| ctx.encoding == Encoding::Protobuf || json::is_json(d));
                    let missed = std::mem::take(&mut result.publications);
                    let mut frames = Vec::new();
                    if let Some(StreamPosition { offset, .. }) = recover_since.filter(|_| result.recovered) {
                        // The push names the recovered-from offset; the missed publications follow.
                        let recovered = SubscribeResult { offset, ..result.clone() };
                        frames.push(ctx.encoding.push(&channel, &Push::Subscribe(recovered)));
                        frames.extend(missed.into_iter().map(|p| ctx.encoding.push(&channel, &Push::Pub(p))));
                        if !fits(ctx, &frames) {
                            // More than the outbox has room for: the client is told recovery failed (it
                            // reloads its state from the current position, `result`'s) instead of being
                            // closed as a slow consumer.
                            frames.clear();
                            result.recovered = false;
                        }
                    }
                    if frames.is_empty() {
                        frames.push(ctx.encoding.push(&channel, &Push::Subscribe(result)));
                    }
                    for frame in ctx.encoding.join(frames) {
                        ctx.send(frame);
                    }
                    drop(release);
                }
                Err(e) => {
                    tracing::debug!(%channel, code = e.code, "server-side subscription refused");
                    metrics::counter!("herald_errors_total", "kind" => "server_subscribe_refused").increment(1);
                }
            }
            None
        }
        UserAction::Refresh { expired: true, .. } => Some(Ending::Close(codes::CONNECTION_EXPIRED)),
        UserAction::Refresh { expire_at, .. } => {
            // Centrifugo's refresh: the new expiry, or none.
            state.expire_at = expire_at;
            None
        }
        _ => None,
    }
}

/// `reason` cut to what a close frame carries, at a character boundary.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Whether `frames` fit in what the connection's outbox has left, joined as [`Encoding::join`]
/// would send them.
fn fits(ctx: &Ctx, frames: &[Bytes]) -> bool {
    let limits = &ctx.hub.app().limits.outbox;
    let (queued, queued_bytes) = ctx.outbox.len();
    let bytes: usize = frames.iter().map(Bytes::len).sum::<usize>() + frames.len();
    let messages = if ctx.encoding.joins() { bytes.div_ceil(crate::MAX_JOINED_FRAME) + 1 } else { frames.len() };
    queued + messages <= limits.max_messages && queued_bytes + bytes <= limits.max_bytes
}

#[cfg(test)]
mod tests {
    use super::close_reason;

    #[test]
    fn close_reasons_fit_a_close_frame_at_a_character_boundary() {
        assert_eq!(close_reason("moved"), "moved");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && cut.chars().all(|c| c == 'é'));
        assert_eq!(cut.len(), 122);
    }
}
