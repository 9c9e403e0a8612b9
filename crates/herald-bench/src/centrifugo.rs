//! The Centrifugo client protocol v2 side of the bench (JSON and protobuf): connection and
//! subscription JWTs (HS256 with the app's HMAC secret, as a backend would make them), the connect
//! and subscribe commands, and reading replies and pushes.
//!
//! Only what the bench needs is decoded: replies to its own commands (to see errors) and server
//! pings. Publications are not decoded; the bench finds the send time in each pushed reply's bytes,
//! as it does in a Pusher frame.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

/// The subprotocol that selects protobuf.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The few protobuf messages of `centrifugal/protocol`'s `client.proto` the bench sends or reads.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Command {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "4")]
        pub connect: Option<ConnectRequest>,
        #[prost(message, optional, tag = "5")]
        pub subscribe: Option<SubscribeRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ConnectRequest {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(string, tag = "4")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubscribeRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Error {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub message: String,
    }

    /// A reply, with only the fields the bench looks at (prost skips the others).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Reply {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "2")]
        pub error: Option<Error>,
    }
}

/// The encoding a Centrifugo connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON text frames (replies newline-separated).
    Json,
    /// Varint-delimited protobuf in binary frames.
    Protobuf,
}

fn jwt(secret: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).context("signing a JWT")
}

fn expiry() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 24 * 3600
}

/// A connection token for `user` (HS256, valid for a day).
pub fn connection_token(secret: &str, user: &str) -> anyhow::Result<String> {
    jwt(secret, &serde_json::json!({ "sub": user, "exp": expiry() }))
}

/// A subscription token for `user` on `channel`: lets the client subscribe whatever the channel's
/// options (the dev app allows no client-side subscription without one).
pub fn subscription_token(secret: &str, user: &str, channel: &str) -> anyhow::Result<String> {
    jwt(secret, &serde_json::json!({ "sub": user, "channel": channel, "exp": expiry() }))
}

/// The connect command (id 1).
pub fn connect(encoding: Encoding, token: String) -> Message {
    match encoding {
        Encoding::Json => Message::text(serde_json::json!({ "id": 1, "connect": { "token": token, "name": "herald-bench" } }).to_string()),
        Encoding::Protobuf => {
            let connect = wire::ConnectRequest { token, name: "herald-bench".into() };
            Message::Binary(wire::Command { id: 1, connect: Some(connect), subscribe: None }.encode_length_delimited_to_vec().into())
        }
    }
}

/// The subscribe command (id 2) for `channel` with a subscription token.
pub fn subscribe(encoding: Encoding, channel: &str, token: String) -> Message {
    match encoding {
        Encoding::Json => Message::text(serde_json::json!({ "id": 2, "subscribe": { "channel": channel, "token": token } }).to_string()),
        Encoding::Protobuf => {
            let subscribe = wire::SubscribeRequest { channel: channel.to_string(), token };
            Message::Binary(wire::Command { id: 2, connect: None, subscribe: Some(subscribe) }.encode_length_delimited_to_vec().into())
        }
    }
}

/// The answer to a server ping: an empty command.
pub fn pong(encoding: Encoding) -> Message {
    match encoding {
        Encoding::Json => Message::text("{}"),
        Encoding::Protobuf => Message::Binary(Bytes::from_static(&[0])),
    }
}

/// One reply of a frame: a server ping, the reply to command `id` (possibly an error), or a push
/// (raw bytes, for the bench's timestamp).
pub enum Item<'a> {
    /// An empty reply: the server's ping.
    Ping,
    /// The reply to one of the bench's commands.
    Reply(u32, Option<(u32, String)>),
    /// A push (publication, join, ...): its bytes.
    Push(&'a [u8]),
}

/// The replies in one frame, in order. `payload` is the frame's text or binary data.
pub fn items(encoding: Encoding, payload: &[u8]) -> anyhow::Result<Vec<Item<'_>>> {
    let mut out = Vec::new();
    match encoding {
        Encoding::Json => {
            for line in payload.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
                // Pushes are not parsed: only replies with an id are.
                if line.starts_with(b"{\"push\"") {
                    out.push(Item::Push(line));
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(line).context("a JSON reply")?;
                match v["id"].as_u64() {
                    Some(id) => {
                        let error = v["error"]
                            .is_object()
                            .then(|| (v["error"]["code"].as_u64().unwrap_or(0) as u32, v["error"]["message"].to_string()));
                        out.push(Item::Reply(id as u32, error));
                    }
                    None if v.as_object().is_some_and(|o| o.is_empty()) => out.push(Item::Ping),
                    None => out.push(Item::Push(line)),
                }
            }
        }
        Encoding::Protobuf => {
            let mut rest = payload;
            while !rest.is_empty() {
                let len = prost::encoding::decode_varint(&mut rest).map_err(|e| anyhow!("bad length prefix: {e}"))? as usize;
                if len > rest.len() {
                    bail!("truncated reply");
                }
                let (reply, tail) = rest.split_at(len);
                rest = tail;
                if reply.is_empty() {
                    out.push(Item::Ping);
                    continue;
                }
                // Fields are encoded in tag order, so a reply with an id starts with field 1 (0x08);
                // a push (no id) is not decoded at all.
                if reply[0] != 0x08 {
                    out.push(Item::Push(reply));
                    continue;
                }
                let decoded = wire::Reply::decode(reply).context("a protobuf reply")?;
                out.push(Item::Reply(decoded.id, decoded.error.map(|e| (e.code, e.message))));
            }
        }
    }
    Ok(out)
}

/// The text or binary data of a message of this encoding, if it is one.
pub fn payload(encoding: Encoding, message: &Message) -> Option<&[u8]> {
    match (encoding, message) {
        (Encoding::Json, Message::Text(t)) => Some(t.as_bytes()),
        (Encoding::Protobuf, Message::Binary(b)) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_frames_split_into_replies_pings_and_pushes() {
        let frame = b"{\"id\":1,\"connect\":{\"client\":\"c\"}}\n{}\n{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":{\"ts\":42}}}}\n{\"id\":2,\"error\":{\"code\":103,\"message\":\"permission denied\"}}";
        let items = items(Encoding::Json, frame).unwrap();
        assert!(matches!(items[0], Item::Reply(1, None)));
        assert!(matches!(items[1], Item::Ping));
        assert!(matches!(items[2], Item::Push(p) if crate::stats::sent_at_bytes(p) == Some(42)));
        assert!(matches!(&items[3], Item::Reply(2, Some((103, _)))));
        assert_eq!(items.len(), 4);
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Publication {
        #[prost(bytes = "vec", tag = "4")]
        data: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Push {
        #[prost(string, tag = "2")]
        channel: String,
        #[prost(message, optional, tag = "4")]
        publication: Option<Publication>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PushReply {
        #[prost(message, optional, tag = "4")]
        push: Option<Push>,
    }

    #[test]
    fn protobuf_frames_split_into_replies_pings_and_pushes() {
        let mut frame = Vec::new();
        frame.push(0); // an empty reply: a ping
        let error = wire::Error { code: 109, message: "token expired".into() };
        frame.extend(wire::Reply { id: 1, error: Some(error) }.encode_length_delimited_to_vec());
        let data = br#"{"ts":7,"pad":"xx"}"#.to_vec();
        let push = PushReply { push: Some(Push { channel: "c".into(), publication: Some(Publication { data }) }) };
        frame.extend(push.encode_length_delimited_to_vec());
        let items = items(Encoding::Protobuf, &frame).unwrap();
        assert!(matches!(items[0], Item::Ping));
        assert!(matches!(&items[1], Item::Reply(1, Some((109, m))) if m == "token expired"));
        assert!(matches!(items[2], Item::Push(p) if crate::stats::sent_at_bytes(p) == Some(7)));
        assert_eq!(items.len(), 3);
        assert!(super::items(Encoding::Protobuf, &[5, 1]).is_err(), "a truncated reply is an error, not a panic");
    }

    #[test]
    fn commands_encode_as_the_protocol_says() {
        let Message::Text(connect) = connect(Encoding::Json, "t".into()) else { panic!("text") };
        let v: serde_json::Value = serde_json::from_str(connect.as_str()).unwrap();
        assert_eq!((v["id"].as_u64(), v["connect"]["token"].as_str()), (Some(1), Some("t")));
        let Message::Binary(sub) = subscribe(Encoding::Protobuf, "news", "s".into()) else { panic!("binary") };
        let command = wire::Command::decode_length_delimited(&sub[..]).unwrap();
        assert_eq!(command.id, 2);
        assert_eq!(command.subscribe.unwrap(), wire::SubscribeRequest { channel: "news".into(), token: "s".into() });
        let token = subscription_token("secret", "u", "news").unwrap();
        let key = jsonwebtoken::DecodingKey::from_secret(b"secret");
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &jsonwebtoken::Validation::default()).unwrap().claims;
        assert_eq!((claims["sub"].as_str(), claims["channel"].as_str()), (Some("u"), Some("news")));
    }
}
