//! The Centrifugo encodings of what the engine delivers: a publication becomes a `pub` push (with its
//! offset, publisher and tags), presence changes become `join`/`leave` pushes, and a gap in a
//! channel's stream becomes an `unsubscribe` push with code 2500, on which clients subscribe again
//! and recover what they missed.
//!
//! Channel names: a user's deliveries travel with the Pusher front's channel name
//! (`#server-to-user-{id}`); Centrifugo clients know them as their personal channel `#{id}`.

use bytes::Bytes;
use herald_core::{ChannelEvent, Codec, DataKind, Publication};

use crate::codes;
use crate::protocol::{ClientInfo, Pub, Push};
use crate::{json, protobuf};

/// The prefix with which user deliveries travel in the engine (the Pusher front's).
pub const ENGINE_USER_PREFIX: &str = "#server-to-user-";
/// The prefix of a personal channel as Centrifugo clients see it.
pub const PERSONAL_PREFIX: &str = "#";

/// The channel name a Centrifugo client knows for an engine channel.
pub fn client_channel(channel: &str) -> std::borrow::Cow<'_, str> {
    match channel.strip_prefix(ENGINE_USER_PREFIX) {
        Some(user) => std::borrow::Cow::Owned(format!("{PERSONAL_PREFIX}{user}")),
        None => std::borrow::Cow::Borrowed(channel),
    }
}

/// The client-side form of a publication.
pub fn to_pub(p: &Publication) -> Pub {
    Pub {
        data: p.data.clone(),
        offset: p.position.as_ref().map_or(0, |pos| pos.offset),
        info: p.publisher.as_ref().map(|info| ClientInfo {
            user: info.user_id.to_string(),
            client: String::new(),
            conn_info: (!info.info.is_empty() && json::is_json(&info.info)).then(|| info.info.clone()),
            chan_info: None,
        }),
        tags: p.tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// The push a channel event becomes, if any.
fn event_push(event: &ChannelEvent) -> Option<Push> {
    let member = |user: &str, info: Option<&Bytes>| ClientInfo {
        user: user.to_string(),
        client: user.to_string(),
        conn_info: info.filter(|i| !i.is_empty() && json::is_json(i)).cloned(),
        chan_info: None,
    };
    match event {
        ChannelEvent::MemberAdded(m) => Some(Push::Join(member(&m.user_id, Some(&m.info)))),
        ChannelEvent::MemberRemoved { user_id } => Some(Push::Leave(member(user_id, None))),
        ChannelEvent::Gap { .. } => {
            let (code, reason) = codes::UNSUBSCRIBE_INSUFFICIENT_STATE;
            Some(Push::Unsubscribe { code, reason: reason.into() })
        }
        _ => None,
    }
}

/// JSON frames (text WebSocket messages).
#[derive(Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn publication(&self, p: &Publication) -> Option<Bytes> {
        // JSON clients can't take binary payloads; text that is not JSON goes as a JSON string.
        if p.kind == DataKind::Binary && !json::is_json(&p.data) {
            return None;
        }
        Some(json::encode_push(&client_channel(&p.channel), &Push::Pub(to_pub(p))))
    }

    fn event(&self, channel: &str, event: &ChannelEvent) -> Option<Bytes> {
        Some(json::encode_push(&client_channel(channel), &event_push(event)?))
    }
}

/// JSON frames of unidirectional WebSocket connections: the push objects without the `push` wrapper.
#[derive(Debug, Default)]
pub struct UniJsonCodec;

impl Codec for UniJsonCodec {
    fn publication(&self, p: &Publication) -> Option<Bytes> {
        if p.kind == DataKind::Binary && !json::is_json(&p.data) {
            return None;
        }
        Some(json::encode_uni_push(&client_channel(&p.channel), &Push::Pub(to_pub(p))))
    }

    fn event(&self, channel: &str, event: &ChannelEvent) -> Option<Bytes> {
        // A unidirectional client can't subscribe again: a gap has no push for it.
        match event {
            ChannelEvent::Gap { .. } => None,
            other => Some(json::encode_uni_push(&client_channel(channel), &event_push(other)?)),
        }
    }
}

/// Protobuf frames (binary WebSocket messages, varint-delimited). Every payload goes as bytes.
#[derive(Debug, Default)]
pub struct ProtobufCodec;

impl Codec for ProtobufCodec {
    fn publication(&self, p: &Publication) -> Option<Bytes> {
        Some(protobuf::encode_push(&client_channel(&p.channel), &Push::Pub(to_pub(p))))
    }

    fn event(&self, channel: &str, event: &ChannelEvent) -> Option<Bytes> {
        Some(protobuf::encode_push(&client_channel(channel), &event_push(event)?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::{Member, PublisherInfo, StreamPosition};

    use super::*;

    #[test]
    fn publications_and_events_as_pushes() {
        let c = JsonCodec;
        let mut p = Publication::new("news", "", Bytes::from_static(b"{\"a\":1}"), DataKind::Json);
        p.position = Some(StreamPosition { offset: 4, epoch: Arc::from("e") });
        p.publisher = Some(PublisherInfo { user_id: Arc::from("u1"), info: Bytes::from_static(b"{\"n\":1}") });
        assert_eq!(
            &c.publication(&p).unwrap()[..],
            br#"{"push":{"channel":"news","pub":{"data":{"a":1},"offset":4,"info":{"user":"u1","client":"","conn_info":{"n":1}}}}}"#
        );
        let user = Publication::new("#server-to-user-42", "e", Bytes::from_static(b"hi"), DataKind::Text);
        assert_eq!(&c.publication(&user).unwrap()[..], br##"{"push":{"channel":"#42","pub":{"data":"hi"}}}"##);
        assert_eq!(c.publication(&Publication::new("c", "", Bytes::from_static(&[0xff, 0]), DataKind::Binary)), None);
        let join = ChannelEvent::MemberAdded(Member { user_id: Arc::from("u"), info: Bytes::new() });
        assert_eq!(&c.event("room", &join).unwrap()[..], br#"{"push":{"channel":"room","join":{"info":{"user":"u","client":"u"}}}}"#);
        let gap = ChannelEvent::Gap { position: StreamPosition { offset: 9, epoch: Arc::from("e") } };
        assert_eq!(
            &c.event("room", &gap).unwrap()[..],
            br#"{"push":{"channel":"room","unsubscribe":{"code":2500,"reason":"insufficient state"}}}"#
        );
        assert_eq!(c.event("room", &ChannelEvent::Count { subscribers: 3 }), None);
    }
}
