//! Pusher v7 frames: parsing what clients send and encoding what the server sends.
//!
//! Server events carry `data` as a JSON *string* by convention; HTTP-published `data` strings are relayed
//! verbatim and client-event `data` as the JSON value that arrived ([`Data::Raw`]). Each outgoing frame
//! is encoded once into [`Bytes`] and shared by every recipient.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A frame a client sent.
#[derive(Debug, Deserialize)]
pub struct Incoming {
    /// The event name.
    pub event: String,
    /// The channel, for client events.
    #[serde(default)]
    pub channel: Option<String>,
    /// The payload, kept as raw JSON.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// Why a JSON text was refused where the protocol wants an object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// Valid or not, the text is not a JSON object (serde would accept an array for a struct).
    #[error("expected a JSON object")]
    NotAnObject,
    /// The object does not have the expected fields or types.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Decodes `text` as `T`, which the protocol defines as a JSON *object*. serde's derived structs also
/// accept arrays (`["bob"]` would decode as `{"id":"bob"}`); this refuses anything but an object.
pub fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, ObjectError> {
    if !text.trim_start().starts_with('{') {
        return Err(ObjectError::NotAnObject);
    }
    Ok(serde_json::from_str(text)?)
}

impl Incoming {
    /// Parses a text frame (a JSON object with an `event`).
    pub fn parse(text: &str) -> Result<Incoming, ObjectError> {
        object(text)
    }

    /// Decodes `data` as `T`, accepting both an object and a JSON string holding one (some clients
    /// double-encode). Anything but an object is refused.
    pub fn data_as<T: DeserializeOwned>(&self) -> Option<T> {
        let raw = self.data.as_deref()?.get();
        if raw.starts_with('"') {
            let inner: String = serde_json::from_str(raw).ok()?;
            return object(&inner).ok();
        }
        object(raw).ok()
    }
}

/// `pusher:subscribe` data.
#[derive(Debug, Deserialize)]
pub struct SubscribeData {
    /// The channel.
    pub channel: String,
    /// `key:signature` for private and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// Presence member data as a JSON string (the exact signed text); `null` is accepted.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// `pusher:unsubscribe` data.
#[derive(Debug, Deserialize)]
pub struct UnsubscribeData {
    /// The channel.
    pub channel: String,
}

/// `pusher:signin` data.
#[derive(Debug, Deserialize)]
pub struct SigninData {
    /// `key:signature` over `socket_id::user::user_data`.
    pub auth: String,
    /// The signed user data: a JSON object with a string `id`.
    pub user_data: String,
}

/// Presence `channel_data` as the auth endpoint produced it.
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    /// The user's id; numbers are accepted and turned into strings.
    pub user_id: serde_json::Value,
    /// Anything the backend attached.
    #[serde(default)]
    pub user_info: Option<Box<RawValue>>,
}

/// The `data` of an outgoing frame.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// No `data` field.
    None,
    /// Encoded as a JSON string containing this text.
    Str(&'a str),
    /// Inserted as-is (must be valid JSON).
    Raw(&'a RawValue),
}

impl Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::None => s.serialize_none(),
            Data::Str(text) => s.serialize_str(text),
            Data::Raw(raw) => raw.serialize(s),
        }
    }
}

#[derive(Serialize)]
struct Outgoing<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Data::is_none")]
    data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

impl Data<'_> {
    fn is_none(&self) -> bool {
        matches!(self, Data::None)
    }
}

/// Encodes one frame.
pub fn frame(event: &str, channel: Option<&str>, data: Data<'_>, user_id: Option<&str>) -> Bytes {
    let out = Outgoing { event, channel, data, user_id };
    Bytes::from(serde_json::to_vec(&out).expect("frames always serialise"))
}

/// Encodes a frame whose `data` is the JSON text of `value`, as a string (the Pusher convention).
pub fn frame_json<T: Serialize>(event: &str, channel: Option<&str>, value: &T) -> Bytes {
    let text = serde_json::to_string(value).expect("values always serialise");
    frame(event, channel, Data::Str(&text), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_string_and_raw_data() {
        assert_eq!(&frame("e", Some("c"), Data::Str("{\"a\":1}"), None)[..], br#"{"event":"e","channel":"c","data":"{\"a\":1}"}"#);
        let raw = RawValue::from_string("{\"x\":[1,2]}".into()).unwrap();
        assert_eq!(
            &frame("client-e", Some("private-c"), Data::Raw(&raw), Some("u1"))[..],
            br#"{"event":"client-e","channel":"private-c","data":{"x":[1,2]},"user_id":"u1"}"#
        );
        assert_eq!(
            &frame("pusher:cache_miss", Some("cache-a"), Data::None, None)[..],
            br#"{"event":"pusher:cache_miss","channel":"cache-a"}"#
        );
        assert_eq!(&frame_json("pusher:pong", None, &serde_json::json!({}))[..], br#"{"event":"pusher:pong","data":"{}"}"#);
    }

    #[test]
    fn parses_object_or_string_data() {
        let f = Incoming::parse(r#"{"event":"pusher:subscribe","data":{"channel":"a","auth":"k:s","channel_data":null}}"#).unwrap();
        let d: SubscribeData = f.data_as().unwrap();
        assert_eq!((d.channel.as_str(), d.auth.as_deref(), d.channel_data), ("a", Some("k:s"), None));
        let f = Incoming::parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"b\"}"}"#).unwrap();
        assert_eq!(f.data_as::<SubscribeData>().unwrap().channel, "b");
        assert!(Incoming::parse("not json").is_err());
        assert!(Incoming::parse(r#"{"data":1}"#).is_err(), "event is required");
    }

    #[test]
    fn arrays_are_not_objects() {
        assert!(Incoming::parse(r#"["pusher:ping"]"#).is_err());
        let f = Incoming::parse(r#"{"event":"pusher:subscribe","data":["a"]}"#).unwrap();
        assert!(f.data_as::<SubscribeData>().is_none());
        assert!(object::<ChannelData>("[1,2]").is_err());
        assert_eq!(object::<ChannelData>(r#" {"user_id":"1"}"#).unwrap().user_id, "1");
    }
}
