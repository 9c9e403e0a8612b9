//! The Pusher encoding of what the engine delivers: publications become `{"event","channel","data"}`
//! frames (text data as a JSON string, JSON data as the value, the presence sender as `user_id`), and
//! engine events become `pusher_internal:*` frames.

use bytes::Bytes;
use herald_core::{ChannelEvent, Codec, DataKind, Publication};
use serde_json::value::RawValue;

use crate::channel::{Access, ChannelKind};
use crate::events::info_json;
use crate::wire::{self, Data};

/// Encodes publications and engine events as Pusher v7 frames.
#[derive(Debug, Default)]
pub struct PusherCodec;

impl Codec for PusherCodec {
    fn publication(&self, p: &Publication) -> Option<Bytes> {
        let text = std::str::from_utf8(&p.data).ok()?;
        let user = p.publisher.as_ref().map(|info| &*info.user_id);
        match p.kind {
            DataKind::Text => Some(wire::frame(&p.event, Some(&p.channel), Data::Str(text), user)),
            DataKind::Json => {
                let raw = RawValue::from_string(text.to_owned()).ok()?;
                Some(wire::frame(&p.event, Some(&p.channel), Data::Raw(&raw), user))
            }
            // Pusher frames are text; binary publications have no Pusher form.
            _ => None,
        }
    }

    fn event(&self, channel: &str, event: &ChannelEvent) -> Option<Bytes> {
        let quote = |s: &str| serde_json::to_string(s).expect("strings serialise");
        let (name, data) = match event {
            ChannelEvent::MemberAdded(m) => {
                ("pusher_internal:member_added", format!(r#"{{"user_id":{},"user_info":{}}}"#, quote(&m.user_id), info_json(&m.info)))
            }
            ChannelEvent::MemberRemoved { user_id } => ("pusher_internal:member_removed", format!(r#"{{"user_id":{}}}"#, quote(user_id))),
            // Presence channels have member counts instead.
            ChannelEvent::Count { subscribers } if ChannelKind::of(channel).access != Access::Presence => {
                ("pusher_internal:subscription_count", format!(r#"{{"subscription_count":{subscribers}}}"#))
            }
            _ => return None,
        };
        Some(wire::frame(name, Some(channel), Data::Str(&data), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{Member, PublisherInfo};
    use std::sync::Arc;

    #[test]
    fn publications_and_events_as_pusher_frames() {
        let c = PusherCodec;
        let text = Publication::new("news", "e", Bytes::from_static(b"{\"a\":1}"), DataKind::Text);
        assert_eq!(&c.publication(&text).unwrap()[..], br#"{"event":"e","channel":"news","data":"{\"a\":1}"}"#);
        let mut json = Publication::new("presence-r", "client-m", Bytes::from_static(b"{\"x\":[1]}"), DataKind::Json);
        json.publisher = Some(PublisherInfo { user_id: Arc::from("u1"), info: Bytes::new() });
        assert_eq!(&c.publication(&json).unwrap()[..], br#"{"event":"client-m","channel":"presence-r","data":{"x":[1]},"user_id":"u1"}"#);
        let not_json = Publication::new("c", "e", Bytes::from_static(b"{nope"), DataKind::Json);
        assert_eq!(c.publication(&not_json), None, "invalid JSON from elsewhere is skipped, not relayed");
        assert_eq!(c.publication(&Publication::new("c", "e", Bytes::from_static(b"x"), DataKind::Binary)), None);
        let added = ChannelEvent::MemberAdded(Member { user_id: Arc::from("u"), info: Bytes::from_static(b"{\"n\":1}") });
        assert_eq!(
            &c.event("presence-r", &added).unwrap()[..],
            br#"{"event":"pusher_internal:member_added","channel":"presence-r","data":"{\"user_id\":\"u\",\"user_info\":{\"n\":1}}"}"#
        );
        assert_eq!(c.event("presence-r", &ChannelEvent::Count { subscribers: 2 }), None);
        assert!(c.event("news", &ChannelEvent::Count { subscribers: 2 }).is_some());
    }
}
