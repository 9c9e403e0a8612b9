//! The JSON encoding of the client protocol: commands arrive newline-delimited in a text frame
//! (`{"id":1,"connect":{...}}\n{"id":2,"subscribe":{...}}`), each reply or push is one JSON object,
//! a server ping is `{}` and so is the client's pong. `data` fields are JSON values, carried as their
//! text and written back verbatim.

use bytes::Bytes;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::{
    ClientInfo, Command, ConnectRequest, ConnectResult, HistoryRequest, Method, Pub, Push, Reply, SubscribeRequest, SubscribeResult,
};

/// Most commands one frame may carry.
pub const MAX_COMMANDS_PER_FRAME: usize = 128;

/// Why a frame could not be read as commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A line is not a JSON command object.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// More than [`MAX_COMMANDS_PER_FRAME`] commands.
    #[error("too many commands in one frame")]
    TooMany,
    /// A command names no known method.
    #[error("unknown method")]
    UnknownMethod {
        /// The command's id.
        id: u32,
    },
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(default)]
    id: u32,
    #[serde(borrow)]
    connect: Option<RawConnect<'a>>,
    #[serde(borrow)]
    subscribe: Option<RawSubscribe<'a>>,
    unsubscribe: Option<Channel>,
    #[serde(borrow)]
    publish: Option<RawPublish<'a>>,
    presence: Option<Channel>,
    presence_stats: Option<Channel>,
    history: Option<RawHistory>,
    #[serde(borrow)]
    rpc: Option<RawRpc<'a>>,
    #[serde(borrow)]
    send: Option<RawSend<'a>>,
    refresh: Option<RawRefresh>,
    sub_refresh: Option<RawSubRefresh>,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize, Default)]
struct RawConnect<'a> {
    #[serde(default)]
    token: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    subs: std::collections::BTreeMap<String, RawSubscribe<'a>>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
}

#[derive(Deserialize, Default)]
struct RawSubscribe<'a> {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    epoch: String,
    #[serde(default, deserialize_with = "offset")]
    offset: u64,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    positioned: bool,
    #[serde(default)]
    recoverable: bool,
    #[serde(default)]
    join_leave: bool,
}

#[derive(Deserialize)]
struct RawPublish<'a> {
    #[serde(default)]
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawHistory {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i32,
    since: Option<RawPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct RawPosition {
    #[serde(default, deserialize_with = "offset")]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Deserialize)]
struct RawRpc<'a> {
    #[serde(default)]
    method: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawSend<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawRefresh {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct RawSubRefresh {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    token: String,
}

/// Offsets are numbers; a string of digits is accepted too (protobuf's JSON form of uint64).
fn offset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<'a> {
        Number(u64),
        Text(&'a str),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

fn data(raw: Option<&RawValue>) -> Option<Bytes> {
    raw.map(|r| Bytes::copy_from_slice(r.get().as_bytes()))
}

impl From<RawSubscribe<'_>> for SubscribeRequest {
    fn from(s: RawSubscribe<'_>) -> SubscribeRequest {
        SubscribeRequest {
            data: data(s.data),
            channel: s.channel,
            token: s.token,
            recover: s.recover,
            epoch: s.epoch,
            offset: s.offset,
            positioned: s.positioned,
            recoverable: s.recoverable,
            join_leave: s.join_leave,
        }
    }
}

/// Reads one command.
pub fn decode_command(line: &str) -> Result<Command, DecodeError> {
    let raw: RawCommand<'_> = serde_json::from_str(line).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let id = raw.id;
    let method = if let Some(c) = raw.connect {
        Method::Connect(ConnectRequest {
            token: c.token,
            data: data(c.data),
            subs: c.subs.into_iter().map(|(ch, s)| (ch, s.into())).collect(),
            name: c.name,
            version: c.version,
        })
    } else if let Some(s) = raw.subscribe {
        Method::Subscribe(s.into())
    } else if let Some(u) = raw.unsubscribe {
        Method::Unsubscribe { channel: u.channel }
    } else if let Some(p) = raw.publish {
        Method::Publish { channel: p.channel, data: data(p.data).unwrap_or_else(|| Bytes::from_static(b"null")) }
    } else if let Some(p) = raw.presence {
        Method::Presence { channel: p.channel }
    } else if let Some(p) = raw.presence_stats {
        Method::PresenceStats { channel: p.channel }
    } else if let Some(h) = raw.history {
        Method::History(HistoryRequest {
            channel: h.channel,
            limit: h.limit,
            since: h.since.map(|p| (p.offset, p.epoch)),
            reverse: h.reverse,
        })
    } else if let Some(r) = raw.rpc {
        Method::Rpc { method: r.method, data: data(r.data).unwrap_or_else(|| Bytes::from_static(b"null")) }
    } else if let Some(s) = raw.send {
        Method::Send { data: data(s.data).unwrap_or_else(|| Bytes::from_static(b"null")) }
    } else if let Some(r) = raw.refresh {
        Method::Refresh { token: r.token }
    } else if let Some(r) = raw.sub_refresh {
        Method::SubRefresh { channel: r.channel, token: r.token }
    } else if id == 0 {
        Method::Pong
    } else {
        return Err(DecodeError::UnknownMethod { id });
    };
    Ok(Command { id, method })
}

/// Reads the commands of one frame (newline-delimited), in order. Stops at the first bad one: the
/// commands before it and the error.
pub fn decode_frame(text: &str) -> (Vec<Command>, Option<DecodeError>) {
    let mut commands = Vec::new();
    for line in text.split('\n').map(str::trim).filter(|l| !l.is_empty()) {
        if commands.len() == MAX_COMMANDS_PER_FRAME {
            return (commands, Some(DecodeError::TooMany));
        }
        match decode_command(line) {
            Ok(command) => commands.push(command),
            Err(e) => return (commands, Some(e)),
        }
    }
    (commands, None)
}

/// A JSON payload written verbatim; bytes that are not JSON are written as a JSON string (text
/// published through the Pusher API, say), never as broken JSON.
struct Json<'a>(&'a [u8]);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = String::from_utf8_lossy(self.0);
        match serde_json::from_str::<&RawValue>(&text) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_str(&text),
        }
    }
}

/// Whether `bytes` is one JSON value (what JSON clients can receive as `data`).
pub fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|t| serde_json::from_str::<&RawValue>(t).is_ok())
}

/// Serialises the fields of a struct-like value, skipping defaults as protobuf's JSON form does.
struct Obj<'a>(Vec<(&'static str, Field<'a>)>);

enum Field<'a> {
    Str(&'a str),
    U64(u64),
    Bool(bool),
    Json(&'a [u8]),
    Info(&'a ClientInfo),
    Pubs(&'a [Pub]),
    Tags(&'a [(String, String)]),
    Obj(Obj<'a>),
    Map(Vec<(&'a str, Obj<'a>)>),
    Infos(&'a [ClientInfo]),
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Str(v) => s.serialize_str(v),
            Field::U64(v) => s.serialize_u64(*v),
            Field::Bool(v) => s.serialize_bool(*v),
            Field::Json(v) => Json(v).serialize(s),
            Field::Info(info) => info_obj(info).serialize(s),
            Field::Pubs(pubs) => s.collect_seq(pubs.iter().map(pub_obj)),
            Field::Tags(tags) => s.collect_map(tags.iter().map(|(k, v)| (k, v))),
            Field::Obj(o) => o.serialize(s),
            Field::Map(entries) => s.collect_map(entries.iter().map(|(k, v)| (k, v))),
            Field::Infos(infos) => s.collect_map(infos.iter().map(|i| (i.client.as_str(), info_obj(i)))),
        }
    }
}

impl Serialize for Obj<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'a> Obj<'a> {
    fn new() -> Obj<'a> {
        Obj(Vec::new())
    }
    fn str(mut self, k: &'static str, v: &'a str) -> Self {
        if !v.is_empty() {
            self.0.push((k, Field::Str(v)));
        }
        self
    }
    fn u64(mut self, k: &'static str, v: u64) -> Self {
        if v != 0 {
            self.0.push((k, Field::U64(v)));
        }
        self
    }
    fn bool(mut self, k: &'static str, v: bool) -> Self {
        if v {
            self.0.push((k, Field::Bool(v)));
        }
        self
    }
    fn json(mut self, k: &'static str, v: Option<&'a [u8]>) -> Self {
        if let Some(v) = v {
            self.0.push((k, Field::Json(v)));
        }
        self
    }
    fn field(mut self, k: &'static str, v: Field<'a>) -> Self {
        self.0.push((k, v));
        self
    }
}

fn info_obj(info: &ClientInfo) -> Obj<'_> {
    Obj::new()
        .field("user", Field::Str(&info.user))
        .field("client", Field::Str(&info.client))
        .json("conn_info", info.conn_info.as_deref())
        .json("chan_info", info.chan_info.as_deref())
}

fn pub_obj(p: &Pub) -> Obj<'_> {
    let mut o = Obj::new().field("data", Field::Json(&p.data)).u64("offset", p.offset);
    if let Some(info) = &p.info {
        o = o.field("info", Field::Info(info));
    }
    if !p.tags.is_empty() {
        o = o.field("tags", Field::Tags(&p.tags));
    }
    o
}

fn subscribe_obj(r: &SubscribeResult) -> Obj<'_> {
    let mut o = Obj::new()
        .bool("expires", r.expires)
        .u64("ttl", u64::from(r.ttl))
        .bool("recoverable", r.recoverable)
        .str("epoch", &r.epoch)
        .u64("offset", r.offset)
        .bool("recovered", r.recovered)
        .bool("positioned", r.positioned)
        .bool("was_recovering", r.was_recovering)
        .json("data", r.data.as_deref());
    if !r.publications.is_empty() {
        o = o.field("publications", Field::Pubs(&r.publications));
    }
    o
}

fn connect_obj(c: &ConnectResult) -> Obj<'_> {
    let subs = c.subs.iter().map(|(ch, s)| (ch.as_str(), subscribe_obj(s))).collect::<Vec<_>>();
    let mut o = Obj::new()
        .str("client", &c.client)
        .str("version", &c.version)
        .bool("expires", c.expires)
        .u64("ttl", u64::from(c.ttl))
        .u64("ping", u64::from(c.ping))
        .bool("pong", c.pong)
        .json("data", c.data.as_deref());
    if !subs.is_empty() {
        o = o.field("subs", Field::Map(subs));
    }
    o
}

fn to_bytes(value: &impl Serialize) -> Bytes {
    // Serialising these types can't fail: every key is a string and every payload is checked JSON.
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// One reply as JSON.
pub fn encode_reply(id: u32, reply: &Reply) -> Bytes {
    let (key, body) = match reply {
        Reply::Error(e) => {
            let err = Obj::new()
                .field("code", Field::U64(u64::from(e.code)))
                .field("message", Field::Str(e.message))
                .bool("temporary", e.temporary);
            ("error", err)
        }
        Reply::Connect(c) => ("connect", connect_obj(c)),
        Reply::Subscribe(s) => ("subscribe", subscribe_obj(s)),
        Reply::Unsubscribe => ("unsubscribe", Obj::new()),
        Reply::Publish => ("publish", Obj::new()),
        Reply::Presence(members) => ("presence", Obj::new().field("presence", Field::Infos(members))),
        Reply::PresenceStats { num_clients, num_users } => (
            "presence_stats",
            Obj::new().field("num_clients", Field::U64(u64::from(*num_clients))).field("num_users", Field::U64(u64::from(*num_users))),
        ),
        Reply::History { publications, epoch, offset } => {
            ("history", Obj::new().field("publications", Field::Pubs(publications)).str("epoch", epoch).u64("offset", *offset))
        }
        Reply::Rpc { data } => ("rpc", Obj::new().field("data", Field::Json(data))),
        Reply::Refresh { client, version, expires, ttl } => {
            ("refresh", Obj::new().str("client", client).str("version", version).bool("expires", *expires).u64("ttl", u64::from(*ttl)))
        }
        Reply::SubRefresh { expires, ttl } => ("sub_refresh", Obj::new().bool("expires", *expires).u64("ttl", u64::from(*ttl))),
    };
    let mut o = Obj::new();
    if id != 0 {
        o = o.field("id", Field::U64(u64::from(id)));
    }
    to_bytes(&o.field(key, Field::Obj(body)))
}

fn push_obj<'a>(channel: &'a str, push: &'a Push) -> Obj<'a> {
    let (key, body) = match push {
        Push::Pub(p) => ("pub", pub_obj(p)),
        Push::Join(info) => ("join", Obj::new().field("info", Field::Info(info))),
        Push::Leave(info) => ("leave", Obj::new().field("info", Field::Info(info))),
        Push::Unsubscribe { code, reason } => {
            ("unsubscribe", Obj::new().field("code", Field::U64(u64::from(*code))).field("reason", Field::Str(reason)))
        }
        Push::Subscribe(s) => ("subscribe", subscribe_obj(s)),
        Push::Disconnect { code, reason } => (
            "disconnect",
            Obj::new().field("code", Field::U64(u64::from(*code))).field("reason", Field::Str(reason)).bool("reconnect", *code < 3500),
        ),
        Push::Message { data } => ("message", Obj::new().field("data", Field::Json(data))),
    };
    Obj::new().str("channel", channel).field(key, Field::Obj(body))
}

/// One push on `channel` as JSON: `{"push":{"channel":...,"pub":{...}}}`.
pub fn encode_push(channel: &str, push: &Push) -> Bytes {
    to_bytes(&Obj::new().field("push", Field::Obj(push_obj(channel, push))))
}

/// One push as a unidirectional connection gets it: the push object itself,
/// `{"channel":...,"pub":{...}}`.
pub fn encode_uni_push(channel: &str, push: &Push) -> Bytes {
    to_bytes(&push_obj(channel, push))
}

/// The connect push of a unidirectional connection: `{"connect":{...}}`.
pub fn encode_uni_connect(result: &ConnectResult) -> Bytes {
    to_bytes(&Obj::new().field("connect", Field::Obj(connect_obj(result))))
}

/// Reads the connect request a unidirectional client sends first (or passes as `cf_connect`).
pub fn decode_connect_request(text: &str) -> Result<ConnectRequest, DecodeError> {
    let c: RawConnect<'_> = serde_json::from_str(text).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    Ok(ConnectRequest {
        token: c.token,
        data: data(c.data),
        subs: c.subs.into_iter().map(|(ch, s)| (ch, s.into())).collect(),
        name: c.name,
        version: c.version,
    })
}

/// The server's ping (and a client's pong): an empty object.
pub const PING: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes;

    #[test]
    fn commands_per_frame_in_order() {
        let frame = "{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"js\",\"subs\":{\"a\":{\"recover\":true,\"offset\":3,\"epoch\":\"e\"}}}}\n{\"id\":2,\"subscribe\":{\"channel\":\"news\",\"flag\":1,\"offset\":\"5\"}}\n{}";
        let (cmds, err) = decode_frame(frame);
        assert_eq!(err, None);
        assert_eq!(cmds.len(), 3);
        match &cmds[0].method {
            Method::Connect(c) => {
                assert_eq!(c.token, "t");
                assert_eq!(c.subs[0].0, "a");
                assert!(c.subs[0].1.recover && c.subs[0].1.offset == 3);
            }
            other => panic!("{other:?}"),
        }
        match &cmds[1].method {
            Method::Subscribe(s) => assert_eq!((s.channel.as_str(), s.offset), ("news", 5)),
            other => panic!("{other:?}"),
        }
        assert_eq!(cmds[2].method, Method::Pong);
    }

    #[test]
    fn bad_commands() {
        assert!(matches!(decode_frame("nope").1, Some(DecodeError::Invalid(_))));
        assert!(matches!(decode_frame("[1,2]").1, Some(DecodeError::Invalid(_))));
        assert_eq!(decode_frame("{\"id\":3,\"what\":{}}").1, Some(DecodeError::UnknownMethod { id: 3 }));
        let many = "{}\n".repeat(MAX_COMMANDS_PER_FRAME + 1);
        assert_eq!(decode_frame(&many).1, Some(DecodeError::TooMany));
    }

    #[test]
    fn replies_and_pushes() {
        let r = encode_reply(3, &Reply::Error(codes::PERMISSION_DENIED));
        assert_eq!(&r[..], br#"{"id":3,"error":{"code":103,"message":"permission denied"}}"#);
        let p = Push::Pub(Pub { data: Bytes::from_static(b"{\"a\":1}"), offset: 7, info: None, tags: vec![] });
        assert_eq!(&encode_push("news", &p)[..], br#"{"push":{"channel":"news","pub":{"data":{"a":1},"offset":7}}}"#);
        let text = Push::Pub(Pub { data: Bytes::from_static(b"plain text"), ..Default::default() });
        assert_eq!(&encode_push("c", &text)[..], br#"{"push":{"channel":"c","pub":{"data":"plain text"}}}"#);
        let c = Reply::Connect(ConnectResult { client: "1.2".into(), version: "v".into(), ping: 25, pong: true, ..Default::default() });
        assert_eq!(&encode_reply(1, &c)[..], br#"{"id":1,"connect":{"client":"1.2","version":"v","ping":25,"pong":true}}"#);
    }
}
