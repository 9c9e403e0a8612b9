//! The protobuf encoding of the client protocol (`centrifuge-protobuf` WebSocket subprotocol):
//! binary frames holding varint-length-delimited `Command`s (client) and `Reply`s (server). The
//! messages are declared here with prost's derive, field numbers as in Centrifugo's `client.proto`
//! (protocol v2); fields Herald does not use are left out (prost skips unknown fields when decoding).
//! A server ping is an empty `Reply`, a client's pong an empty `Command`.

use std::collections::HashMap;

use bytes::{Buf, Bytes};
use prost::Message;

use crate::json::{DecodeError, MAX_COMMANDS_PER_FRAME};
use crate::protocol::{self as p, Command, Method, Push, Reply};

/// The messages of `client.proto` that Herald reads and writes.
#[allow(missing_docs)]
pub mod wire {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Error {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(bool, tag = "3")]
        pub temporary: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Command {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "4")]
        pub connect: Option<ConnectRequest>,
        #[prost(message, optional, tag = "5")]
        pub subscribe: Option<SubscribeRequest>,
        #[prost(message, optional, tag = "6")]
        pub unsubscribe: Option<ChannelRequest>,
        #[prost(message, optional, tag = "7")]
        pub publish: Option<PublishRequest>,
        #[prost(message, optional, tag = "8")]
        pub presence: Option<ChannelRequest>,
        #[prost(message, optional, tag = "9")]
        pub presence_stats: Option<ChannelRequest>,
        #[prost(message, optional, tag = "10")]
        pub history: Option<HistoryRequest>,
        #[prost(message, optional, tag = "11")]
        pub ping: Option<Empty>,
        #[prost(message, optional, tag = "12")]
        pub send: Option<DataOnly>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<RpcRequest>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<TokenOnly>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<SubRefreshRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ChannelRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DataOnly {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TokenOnly {
        #[prost(string, tag = "1")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ConnectRequest {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub data: bytes::Bytes,
        #[prost(map = "string, message", tag = "3")]
        pub subs: HashMap<String, SubscribeRequest>,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "5")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubscribeRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
        #[prost(bool, tag = "3")]
        pub recover: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(uint64, tag = "7")]
        pub offset: u64,
        #[prost(bytes = "bytes", tag = "8")]
        pub data: bytes::Bytes,
        #[prost(bool, tag = "9")]
        pub positioned: bool,
        #[prost(bool, tag = "10")]
        pub recoverable: bool,
        #[prost(bool, tag = "11")]
        pub join_leave: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PublishRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub data: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamPosition {
        #[prost(uint64, tag = "1")]
        pub offset: u64,
        #[prost(string, tag = "2")]
        pub epoch: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistoryRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(int32, tag = "7")]
        pub limit: i32,
        #[prost(message, optional, tag = "8")]
        pub since: Option<StreamPosition>,
        #[prost(bool, tag = "9")]
        pub reverse: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RpcRequest {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: bytes::Bytes,
        #[prost(string, tag = "2")]
        pub method: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubRefreshRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Reply {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "2")]
        pub error: Option<Error>,
        #[prost(message, optional, tag = "4")]
        pub push: Option<Push>,
        #[prost(message, optional, tag = "5")]
        pub connect: Option<ConnectResult>,
        #[prost(message, optional, tag = "6")]
        pub subscribe: Option<SubscribeResult>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<Empty>,
        #[prost(message, optional, tag = "8")]
        pub publish: Option<Empty>,
        #[prost(message, optional, tag = "9")]
        pub presence: Option<PresenceResult>,
        #[prost(message, optional, tag = "10")]
        pub presence_stats: Option<PresenceStatsResult>,
        #[prost(message, optional, tag = "11")]
        pub history: Option<HistoryResult>,
        #[prost(message, optional, tag = "12")]
        pub ping: Option<Empty>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<DataOnly>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<RefreshResult>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<SubRefreshResult>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Push {
        #[prost(string, tag = "2")]
        pub channel: String,
        #[prost(message, optional, tag = "4")]
        pub r#pub: Option<Publication>,
        #[prost(message, optional, tag = "5")]
        pub join: Option<InfoOnly>,
        #[prost(message, optional, tag = "6")]
        pub leave: Option<InfoOnly>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<Unsubscribe>,
        #[prost(message, optional, tag = "8")]
        pub message: Option<DataOnly>,
        #[prost(message, optional, tag = "9")]
        pub subscribe: Option<Subscribe>,
        #[prost(message, optional, tag = "11")]
        pub disconnect: Option<Disconnect>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ClientInfo {
        #[prost(string, tag = "1")]
        pub user: String,
        #[prost(string, tag = "2")]
        pub client: String,
        #[prost(bytes = "bytes", tag = "3")]
        pub conn_info: bytes::Bytes,
        #[prost(bytes = "bytes", tag = "4")]
        pub chan_info: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InfoOnly {
        #[prost(message, optional, tag = "1")]
        pub info: Option<ClientInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Publication {
        #[prost(bytes = "bytes", tag = "4")]
        pub data: bytes::Bytes,
        #[prost(message, optional, tag = "5")]
        pub info: Option<ClientInfo>,
        #[prost(uint64, tag = "6")]
        pub offset: u64,
        #[prost(map = "string, string", tag = "7")]
        pub tags: HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Unsubscribe {
        #[prost(uint32, tag = "2")]
        pub code: u32,
        #[prost(string, tag = "3")]
        pub reason: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Subscribe {
        #[prost(bool, tag = "1")]
        pub recoverable: bool,
        #[prost(string, tag = "4")]
        pub epoch: String,
        #[prost(uint64, tag = "5")]
        pub offset: u64,
        #[prost(bool, tag = "6")]
        pub positioned: bool,
        #[prost(bytes = "bytes", tag = "7")]
        pub data: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Disconnect {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub reason: String,
        #[prost(bool, tag = "3")]
        pub reconnect: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ConnectResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
        #[prost(bytes = "bytes", tag = "5")]
        pub data: bytes::Bytes,
        #[prost(map = "string, message", tag = "6")]
        pub subs: HashMap<String, SubscribeResult>,
        #[prost(uint32, tag = "7")]
        pub ping: u32,
        #[prost(bool, tag = "8")]
        pub pong: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubscribeResult {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
        #[prost(bool, tag = "3")]
        pub recoverable: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(message, repeated, tag = "7")]
        pub publications: Vec<Publication>,
        #[prost(bool, tag = "8")]
        pub recovered: bool,
        #[prost(uint64, tag = "9")]
        pub offset: u64,
        #[prost(bool, tag = "10")]
        pub positioned: bool,
        #[prost(bytes = "bytes", tag = "11")]
        pub data: bytes::Bytes,
        #[prost(bool, tag = "12")]
        pub was_recovering: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PresenceResult {
        #[prost(map = "string, message", tag = "1")]
        pub presence: HashMap<String, ClientInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PresenceStatsResult {
        #[prost(uint32, tag = "1")]
        pub num_clients: u32,
        #[prost(uint32, tag = "2")]
        pub num_users: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistoryResult {
        #[prost(message, repeated, tag = "1")]
        pub publications: Vec<Publication>,
        #[prost(string, tag = "2")]
        pub epoch: String,
        #[prost(uint64, tag = "3")]
        pub offset: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RefreshResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubRefreshResult {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
    }
}

fn opt(b: Bytes) -> Option<Bytes> {
    (!b.is_empty()).then_some(b)
}

fn subscribe_request(channel: String, s: wire::SubscribeRequest) -> p::SubscribeRequest {
    p::SubscribeRequest {
        channel,
        token: s.token,
        recover: s.recover,
        epoch: s.epoch,
        offset: s.offset,
        data: opt(s.data),
        positioned: s.positioned,
        recoverable: s.recoverable,
        join_leave: s.join_leave,
    }
}

fn command(c: wire::Command) -> Result<Command, DecodeError> {
    let id = c.id;
    let method = if let Some(r) = c.connect {
        let mut subs: Vec<_> = r.subs.into_iter().map(|(ch, s)| (ch.clone(), subscribe_request(ch, s))).collect();
        subs.sort_by(|a, b| a.0.cmp(&b.0));
        Method::Connect(p::ConnectRequest { token: r.token, data: opt(r.data), subs, name: r.name, version: r.version })
    } else if let Some(s) = c.subscribe {
        let channel = s.channel.clone();
        Method::Subscribe(subscribe_request(channel, s))
    } else if let Some(u) = c.unsubscribe {
        Method::Unsubscribe { channel: u.channel }
    } else if let Some(r) = c.publish {
        Method::Publish { channel: r.channel, data: r.data }
    } else if let Some(r) = c.presence {
        Method::Presence { channel: r.channel }
    } else if let Some(r) = c.presence_stats {
        Method::PresenceStats { channel: r.channel }
    } else if let Some(h) = c.history {
        Method::History(p::HistoryRequest {
            channel: h.channel,
            limit: h.limit,
            since: h.since.map(|s| (s.offset, s.epoch)),
            reverse: h.reverse,
        })
    } else if let Some(r) = c.rpc {
        Method::Rpc { method: r.method, data: r.data }
    } else if let Some(s) = c.send {
        Method::Send { data: s.data }
    } else if let Some(r) = c.refresh {
        Method::Refresh { token: r.token }
    } else if let Some(r) = c.sub_refresh {
        Method::SubRefresh { channel: r.channel, token: r.token }
    } else if id == 0 || c.ping.is_some() {
        Method::Pong
    } else {
        return Err(DecodeError::UnknownMethod { id });
    };
    Ok(Command { id, method })
}

/// Reads the varint-delimited commands of one binary frame, in order. Stops at the first bad one.
pub fn decode_frame(mut frame: &[u8]) -> (Vec<Command>, Option<DecodeError>) {
    let mut commands = Vec::new();
    while frame.has_remaining() {
        if commands.len() == MAX_COMMANDS_PER_FRAME {
            return (commands, Some(DecodeError::TooMany));
        }
        let decoded = wire::Command::decode_length_delimited(&mut frame).map_err(|e| DecodeError::Invalid(e.to_string())).and_then(command);
        match decoded {
            Ok(c) => commands.push(c),
            Err(e) => return (commands, Some(e)),
        }
    }
    (commands, None)
}

fn info(i: &p::ClientInfo) -> wire::ClientInfo {
    wire::ClientInfo {
        user: i.user.clone(),
        client: i.client.clone(),
        conn_info: i.conn_info.clone().unwrap_or_default(),
        chan_info: i.chan_info.clone().unwrap_or_default(),
    }
}

fn publication(pb: &p::Pub) -> wire::Publication {
    wire::Publication {
        data: pb.data.clone(),
        info: pb.info.as_ref().map(info),
        offset: pb.offset,
        tags: pb.tags.iter().cloned().collect::<HashMap<_, _>>(),
    }
}

fn subscribe_result(s: &p::SubscribeResult) -> wire::SubscribeResult {
    wire::SubscribeResult {
        expires: s.expires,
        ttl: s.ttl,
        recoverable: s.recoverable,
        epoch: s.epoch.clone(),
        publications: s.publications.iter().map(publication).collect(),
        recovered: s.recovered,
        offset: s.offset,
        positioned: s.positioned,
        data: s.data.clone().unwrap_or_default(),
        was_recovering: s.was_recovering,
    }
}

fn delimited(reply: &wire::Reply) -> Bytes {
    Bytes::from(reply.encode_length_delimited_to_vec())
}

/// One reply, varint-delimited.
pub fn encode_reply(id: u32, reply: &Reply) -> Bytes {
    let mut r = wire::Reply { id, ..Default::default() };
    match reply {
        Reply::Error(e) => r.error = Some(wire::Error { code: e.code, message: e.message.into(), temporary: e.temporary }),
        Reply::Connect(c) => {
            r.connect = Some(wire::ConnectResult {
                client: c.client.clone(),
                version: c.version.clone(),
                expires: c.expires,
                ttl: c.ttl,
                data: c.data.clone().unwrap_or_default(),
                subs: c.subs.iter().map(|(ch, s)| (ch.clone(), subscribe_result(s))).collect(),
                ping: c.ping,
                pong: c.pong,
            })
        }
        Reply::Subscribe(s) => r.subscribe = Some(subscribe_result(s)),
        Reply::Unsubscribe => r.unsubscribe = Some(wire::Empty {}),
        Reply::Publish => r.publish = Some(wire::Empty {}),
        Reply::Presence(members) => {
            r.presence = Some(wire::PresenceResult { presence: members.iter().map(|m| (m.client.clone(), info(m))).collect() })
        }
        Reply::PresenceStats { num_clients, num_users } => {
            r.presence_stats = Some(wire::PresenceStatsResult { num_clients: *num_clients, num_users: *num_users })
        }
        Reply::History { publications, epoch, offset } => {
            r.history = Some(wire::HistoryResult {
                publications: publications.iter().map(publication).collect(),
                epoch: epoch.clone(),
                offset: *offset,
            })
        }
        Reply::Rpc { data } => r.rpc = Some(wire::DataOnly { data: data.clone() }),
        Reply::Refresh { client, version, expires, ttl } => {
            r.refresh = Some(wire::RefreshResult { client: client.clone(), version: version.clone(), expires: *expires, ttl: *ttl })
        }
        Reply::SubRefresh { expires, ttl } => r.sub_refresh = Some(wire::SubRefreshResult { expires: *expires, ttl: *ttl }),
    }
    delimited(&r)
}

/// One push on `channel`, varint-delimited.
pub fn encode_push(channel: &str, push: &Push) -> Bytes {
    let mut w = wire::Push { channel: channel.to_string(), ..Default::default() };
    match push {
        Push::Pub(pb) => w.r#pub = Some(publication(pb)),
        Push::Join(i) => w.join = Some(wire::InfoOnly { info: Some(info(i)) }),
        Push::Leave(i) => w.leave = Some(wire::InfoOnly { info: Some(info(i)) }),
        Push::Unsubscribe { code, reason } => w.unsubscribe = Some(wire::Unsubscribe { code: *code, reason: reason.clone() }),
        Push::Subscribe(s) => {
            w.subscribe = Some(wire::Subscribe {
                recoverable: s.recoverable,
                epoch: s.epoch.clone(),
                offset: s.offset,
                positioned: s.positioned,
                data: s.data.clone().unwrap_or_default(),
            })
        }
        Push::Disconnect { code, reason } => {
            w.disconnect = Some(wire::Disconnect { code: *code, reason: reason.clone(), reconnect: *code < 3500 })
        }
        Push::Message { data } => w.message = Some(wire::DataOnly { data: data.clone() }),
    }
    delimited(&wire::Reply { push: Some(w), ..Default::default() })
}

/// The server's ping: an empty reply, delimited.
pub const PING: &[u8] = &[0];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes;

    #[test]
    fn commands_round_trip_and_bad_frames_are_refused() {
        let mut frame = Vec::new();
        let connect =
            wire::Command { id: 1, connect: Some(wire::ConnectRequest { token: "t".into(), ..Default::default() }), ..Default::default() };
        connect.encode_length_delimited(&mut frame).unwrap();
        let sub = wire::SubscribeRequest { channel: "c".into(), recover: true, offset: 4, epoch: "e".into(), ..Default::default() };
        wire::Command { id: 2, subscribe: Some(sub), ..Default::default() }.encode_length_delimited(&mut frame).unwrap();
        wire::Command::default().encode_length_delimited(&mut frame).unwrap();
        let (cmds, err) = decode_frame(&frame);
        assert_eq!(err, None);
        assert_eq!(cmds.len(), 3);
        assert!(matches!(&cmds[1].method, Method::Subscribe(s) if s.channel == "c" && s.recover && s.offset == 4));
        assert_eq!(cmds[2].method, Method::Pong);
        assert!(matches!(decode_frame(&[0x05, 0x01]).1, Some(DecodeError::Invalid(_))));
        assert!(matches!(
            decode_frame(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).1,
            Some(DecodeError::Invalid(_))
        ));
        let unknown = wire::Command { id: 9, ..Default::default() }.encode_length_delimited_to_vec();
        assert_eq!(decode_frame(&unknown).1, Some(DecodeError::UnknownMethod { id: 9 }));
    }

    #[test]
    fn replies_decode_as_client_proto() {
        let bytes = encode_reply(3, &Reply::Error(codes::PERMISSION_DENIED));
        let r = wire::Reply::decode_length_delimited(&bytes[..]).unwrap();
        assert_eq!((r.id, r.error.unwrap().code), (3, 103));
        let pb = p::Pub { data: Bytes::from_static(b"\x00\x01"), offset: 2, ..Default::default() };
        let r = wire::Reply::decode_length_delimited(&encode_push("ch", &Push::Pub(pb))[..]).unwrap();
        let push = r.push.unwrap();
        assert_eq!(push.channel, "ch");
        assert_eq!(push.r#pub.unwrap().offset, 2);
        assert_eq!(wire::Reply::decode_length_delimited(PING).unwrap(), wire::Reply::default());
    }
}
